"""Training speed: paddlegan_lite's real trainer beside a PyTorch reference of the same nets.

  python bench/train_speed.py [--configs dcgan_mnist ...] [--reps 2] [--threads default 1 all]

For each seed config, one process runs `build_trainer(cfg, dataset).fit()` (data loading, logging,
metrics.jsonl and all) and another runs bench/torch_reference.py on the same images, batch and
step count; runs alternate (paddle, torch, paddle, torch, ...) so both see the same machine load.
Thread settings: `default` gives each framework its own default (ours: train.threads=0, every
physical core; PyTorch: torch's default, also every physical core), `1` and `all` set both to
one thread or to every physical core. OMP_NUM_THREADS is removed from the children's environment.
Images/s counts every step after the first log interval (the warm-up). Each run is a fresh
process, so peak RSS (VmHWM) is per framework and config. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO_ROOT))  # paddlegan_lite from this checkout (imported by workers only)

# config -> (warm-up steps = log interval, measured intervals): about 10-40 s per run here
STEPS = {
    "mlp_gan_mnist": (50, 8),
    "dcgan_mnist": (10, 4),
    "dcgan_mnist_64": (5, 4),
    "acgan_mnist": (5, 4),
    "dcgan_cifar10": (3, 2),
    "dcgan_cifar10_32": (10, 4),
}
THREAD_SETTINGS = ("default", "1", "all")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--reps", type=int, default=2, help="alternating runs per framework")
    parser.add_argument(
        "--threads",
        nargs="+",
        default=list(THREAD_SETTINGS),
        choices=THREAD_SETTINGS,
        help="thread settings to compare (see above)",
    )
    parser.add_argument("--cifar_root", default=str(REPO_ROOT.parent / "shared/data/cifar10-mini"))
    parser.add_argument("--role", default="main", choices=("main", "prepare", "paddle", "torch"))
    parser.add_argument("--thread_count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default="")
    parser.add_argument(
        "-o", "--override", nargs="+", default=[], help="extra config overrides for every run"
    )
    args = parser.parse_args()
    if args.role != "main":
        return run_role(args)
    with tempfile.TemporaryDirectory(prefix="train_speed_") as workdir:
        args.workdir = workdir
        rows = orchestrate(args)
    print(markdown_table(rows, args))
    return 0


# ---------------------------------------------------------------------------------- orchestration
def orchestrate(args) -> list[dict]:
    """Prepare each config once, then alternate paddle and torch runs `reps` times per thread
    setting; one row per (config, setting)."""
    from paddlegan_lite.runtime import physical_cores

    cores = physical_cores()
    counts = {"default": 0, "1": 1, "all": cores}  # 0: the framework's own default
    rows = {}
    for name in args.configs:
        info = child(args, "prepare", name, 0)
        info = {k: v for k, v in info.items() if k not in ("load", "rss_mb")}
        for setting in args.threads:
            rows[name, setting] = {
                "config": name, "setting": setting, "paddle": [], "torch": [], "load": [], **info
            }  # fmt: skip
    for rep in range(args.reps):
        for (name, setting), row in rows.items():
            for role in ("paddle", "torch"):
                result = child(args, role, name, counts[setting])
                row[role].append(result)
                row["load"].append(result["load"])
                print(
                    f"rep {rep} {name} threads={setting} {role}: {result['img_s']:.1f} img/s "
                    f"({result['threads']} threads), peak RSS {result['rss_mb']:.0f} MB, "
                    f"load {result['load']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
    return list(rows.values())


def child(args, role: str, name: str, threads: int) -> dict:
    """Run one role in a fresh process; its last stdout line is a JSON result."""
    cmd = [sys.executable, __file__, "--role", role, "--configs", name, "--workdir", args.workdir]
    cmd += ["--thread_count", str(threads), "--cifar_root", args.cifar_root]
    if args.override:
        cmd += ["-o", *args.override]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    if done.returncode:
        raise SystemExit(f"{role} {name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = os.getloadavg()[0]
    return result


def run_role(args) -> int:
    name = args.configs[0]
    work = Path(args.workdir) / name
    if args.role == "torch":
        result = run_torch(work, args.thread_count)
    else:
        from paddlegan_lite.ops.process import configure_process_env

        configure_process_env()  # before Paddle loads

        result = (
            prepare(name, work, args) if args.role == "prepare" else run_paddle(name, work, args)
        )
    result["rss_mb"] = peak_rss_mb()
    print(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------- paddle side
def bench_config(name: str, run_dir: Path, args):
    """The shipped config, capped at warm-up + measured steps, logging once per warm-up length."""
    from paddlegan_lite.config import load_config

    warmup, intervals = STEPS[name]
    overrides = [
        f"train.threads={args.thread_count}",
        "data.download=false",
        f"train.output_dir={run_dir}",
        "train.epochs=0",
        f"train.max_steps={warmup * (1 + intervals)}",
        f"train.log_interval={warmup}",
        "train.sample_interval=1000000",
        "train.save_interval=1000000",
    ]
    if "cifar" in name:
        overrides.append(f"data.root={args.cifar_root}")
    return load_config(REPO_ROOT / "configs" / f"{name}.yaml", overrides + args.override)


def build_data(cfg):
    from paddlegan_lite.datasets import build_dataset

    return build_dataset(cfg.data, cfg.model.image_size, cfg.model.channels, train=True)


def prepare(name: str, work: Path, args) -> dict:
    """Save the images and config for the torch side; measure loader speed, FLOPs, GEMM peak."""
    import numpy as np

    from paddlegan_lite.config import config_to_dict
    from paddlegan_lite.runtime import use_cpu_threads
    from paddlegan_lite.trainer import EpochBatchSampler, build_trainer

    cfg = bench_config(name, work / "prepare", args)
    threads, _ = use_cpu_threads(cfg.train.threads)
    dataset = build_data(cfg)
    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "data.npz", images=dataset.images, labels=dataset.labels)
    (work / "config.json").write_text(json.dumps(config_to_dict(cfg)), encoding="utf-8")
    trainer = build_trainer(cfg, dataset)
    sampler = EpochBatchSampler(len(dataset), cfg.train.batch_size, cfg.seed)
    return {
        "batch": cfg.train.batch_size,
        "loader_img_s": loader_images_per_sec(trainer, sampler),
        "gflop_step": step_flops(trainer) / 1e9,
        "gemm_gflop_s": gemm_gflops(),
        "data": dataset.source,
        "full_run_steps": shipped_run_steps(name, args, len(dataset)),
    }


def shipped_run_steps(name: str, args, num_images: int) -> int:
    """Steps of the shipped config's whole run (epochs or max_steps): its minutes at a speed."""
    from paddlegan_lite.config import load_config
    from paddlegan_lite.trainer import total_steps

    overrides = [f"data.root={args.cifar_root}"] if "cifar" in name else []
    cfg = load_config(REPO_ROOT / "configs" / f"{name}.yaml", overrides)
    return total_steps(cfg, num_images // cfg.train.batch_size)


def loader_images_per_sec(trainer, sampler) -> float:
    """The trainer's own DataLoader alone, one epoch (batches as the step receives them)."""
    start, images = time.perf_counter(), 0
    for real, _ in trainer.make_loader(sampler):
        images += real.shape[0]
    return images / (time.perf_counter() - start)


def step_flops(trainer) -> float:
    """GEMM FLOPs of one training step: 2 x MACs; G counts 3 passes (forward, input and weight
    gradients), D 8 (forward on real and fake + both gradients in the D step, forward + input
    gradient in the G step)."""
    batch = trainer.cfg.train.batch_size
    z, labels = trainer.sample_latent(batch)
    macs_g, fake = forward_macs(trainer.netG, z, labels)
    macs_d, _ = forward_macs(trainer.netD, fake.detach())
    return 2.0 * (3 * macs_g + 8 * macs_d)


def forward_macs(net, *inputs):
    """(multiply-accumulates of conv, transposed conv and linear layers, output) of one call."""
    from paddle import nn

    total = [0]

    def count(layer, args, out):
        if isinstance(layer, nn.Conv2DTranspose):  # every input pixel meets Cout x k x k weights
            total[0] += args[0].size * layer.weight.shape[1] * layer.weight[0, 0].size
        elif isinstance(layer, nn.Conv2D):
            total[0] += out.size * layer.weight[0].size
        elif isinstance(layer, nn.Linear):
            total[0] += out.size * layer.weight.shape[0]

    hooks = [
        sub.register_forward_post_hook(count)
        for sub in net.sublayers()
        if isinstance(sub, (nn.Conv2D, nn.Conv2DTranspose, nn.Linear))
    ]
    out = net(*[x for x in inputs if x is not None])
    for hook in hooks:
        hook.remove()
    return total[0], out


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 matmul rate of Paddle here (same threads and MKL path as training)."""
    import paddle

    a, b = paddle.randn([n, n]), paddle.randn([n, n])
    (a @ b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        (a @ b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def run_paddle(name: str, work: Path, args) -> dict:
    """The real trainer, then images/s over the rows of metrics.jsonl after the first."""
    from paddlegan_lite.runtime import use_cpu_threads
    from paddlegan_lite.trainer import build_trainer

    run_dir = work / f"paddle_{time.time_ns()}"
    cfg = bench_config(name, run_dir, args)
    threads, _ = use_cpu_threads(cfg.train.threads)  # as tools/train.py does
    trainer = build_trainer(cfg, build_data(cfg))
    cpu_marks = watch_cpu_time(trainer)
    trainer.fit()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    images = seconds = 0.0
    for prev, row in zip(rows, rows[1:]):  # the first row is the warm-up
        count = (row["step"] - prev["step"]) * cfg.train.batch_size
        images, seconds = images + count, seconds + count / row["images_per_sec"]
    import paddle

    cpu = cpu_marks[-1] - cpu_marks[0]
    return {
        "img_s": images / seconds,
        "img_cpu_s": images / cpu,
        "version": paddle.__version__,
        "threads": threads,
    }


def watch_cpu_time(trainer) -> list[float]:
    """Process CPU time at each log row: unlike wall time, it barely moves with machine load."""
    marks, log_metrics = [], trainer.log_metrics

    def logged(*args, **kwargs):
        values = log_metrics(*args, **kwargs)
        marks.append(time.process_time())
        return values

    trainer.log_metrics = logged
    return marks


# ---------------------------------------------------------------------------------- torch side
def run_torch(work: Path, threads: int) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(BENCH_DIR))
    from torch_reference import ArrayDataset, TorchTrainer

    if threads:
        torch.set_num_threads(threads)
    cfg = json.loads((work / "config.json").read_text(encoding="utf-8"))
    data = np.load(work / "data.npz")
    dataset = ArrayDataset(data["images"], data["labels"], cfg["model"]["channels"])
    run_dir = work / f"torch_{time.time_ns()}"
    run_dir.mkdir(parents=True)
    t = cfg["train"]
    rows = TorchTrainer(cfg, dataset, run_dir).fit(t["max_steps"], t["log_interval"])[1:]
    images, seconds = sum(r["images"] for r in rows), sum(r["seconds"] for r in rows)
    return {
        "img_s": images / seconds,
        "img_cpu_s": images / sum(r["cpu"] for r in rows),
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------- report
def peak_rss_mb() -> float:
    """VmHWM of this process: the resident-set high-water mark, in MB."""
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def best(runs: list[dict], key: str) -> float:
    """The fastest run: other jobs on a shared machine only ever slow a run down."""
    return max(r[key] for r in runs)


def peak_of(runs: list[dict]) -> float:
    return max(r["rss_mb"] for r in runs)


def markdown_table(rows: list[dict], args) -> str:
    from paddlegan_lite.runtime import cpu_flags, cpu_model, physical_cores

    paddle_v = rows[0]["paddle"][0]["version"]
    torch_v = rows[0]["torch"][0]["version"]
    vector = sorted(f for f in cpu_flags() if f == "avx2" or f.startswith("avx512"))
    header = [
        f"date {datetime.date.today()}; CPU {cpu_model()} ({physical_cores()} physical cores; "
        f"{' '.join(vector) or 'no AVX2'}); Python {platform.python_version()}; "
        f"paddlepaddle {paddle_v}; torch {torch_v}",
        f"best of {args.reps} alternating runs each; Paddle float32 GEMM peak "
        f"{max(r['gemm_gflop_s'] for r in rows):.0f} GFLOP/s (at our default threads)",
        f"command: python bench/train_speed.py {' '.join(sys.argv[1:])}".rstrip(),
        "",
        "| config | threads (ours / torch) | batch | paddlegan_lite img/s | PyTorch img/s | ratio "
        "| CPU-time ratio | full run at this speed (min) | loader img/s (x step) "
        "| peak RSS paddle / torch MB | load avg |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        p, t = best(r["paddle"], "img_s"), best(r["torch"], "img_s")
        cpu_ratio = best(r["paddle"], "img_cpu_s") / best(r["torch"], "img_cpu_s")
        threads = f"{r['setting']}: {r['paddle'][0]['threads']} / {r['torch'][0]['threads']}"
        minutes = r["full_run_steps"] * r["batch"] / p / 60
        rss = f"{peak_of(r['paddle']):.0f} / {peak_of(r['torch']):.0f}"
        loads = f"{min(r['load']):.1f}-{max(r['load']):.1f}"
        header.append(
            f"| {r['config']} | {threads} | {r['batch']} | {p:.1f} | {t:.1f} | {p / t:.2f}x "
            f"| {cpu_ratio:.2f}x | {minutes:.1f} ({r['full_run_steps']} steps) "
            f"| {r['loader_img_s']:.0f} ({r['loader_img_s'] / p:.0f}x) | {rss} | {loads} |"
        )
    spread = {
        f"{r['config']}/{r['setting']}": [round(x["img_s"], 1) for x in r["paddle"] + r["torch"]]
        for r in rows
    }
    header += ["", f"every run (paddle runs, then torch runs): {json.dumps(spread)}"]
    return "\n".join(header)


if __name__ == "__main__":
    raise SystemExit(main())
