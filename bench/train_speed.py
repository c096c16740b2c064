"""Training speed: paddlegan_lite's real trainer beside a PyTorch reference of the same nets.

  python bench/train_speed.py [--configs dcgan_mnist ...] [--reps 2] [--torch_threads N]

For each seed config, one process runs `build_trainer(cfg, dataset).fit()` (data loading, logging,
metrics.jsonl and all) and another runs bench/torch_reference.py on the same images, batch and
step count; runs alternate (paddle, torch, paddle, torch, ...) so both see the same machine load.
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
    "dcgan_mnist": (5, 4),
    "acgan_mnist": (5, 4),
    "dcgan_cifar10": (3, 2),
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--reps", type=int, default=2, help="alternating runs per framework")
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=-1,
        help="-1 (default): as many as Paddle uses; 0: PyTorch's own default",
    )
    parser.add_argument("--cifar_root", default=str(REPO_ROOT.parent / "shared/data/cifar10-mini"))
    parser.add_argument(
        "--prototype",
        nargs="*",
        default=[],
        choices=sorted(PROTOTYPES),
        help="trainer changes to try (patched in the paddle runs only, see PROTOTYPES)",
    )
    parser.add_argument("--role", default="main", choices=("main", "prepare", "paddle", "torch"))
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
    """Prepare each config once, then alternate paddle and torch runs `reps` times."""
    rows = {name: {"config": name, "paddle": [], "torch": [], "load": []} for name in args.configs}
    for name in args.configs:
        info = child(args, "prepare", name)
        rows[name].update({k: v for k, v in info.items() if k not in ("load", "rss_mb")})
    if args.torch_threads < 0:  # same cores for both, unless asked otherwise
        args.torch_threads = int(rows[args.configs[0]]["threads"])
    for rep in range(args.reps):
        for name in args.configs:
            for role in ("paddle", "torch"):
                result = child(args, role, name)
                rows[name][role].append(result)
                rows[name]["load"].append(result["load"])
                print(
                    f"rep {rep} {name} {role}: {result['img_s']:.1f} img/s, "
                    f"peak RSS {result['rss_mb']:.0f} MB, load {result['load']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
    return list(rows.values())


def child(args, role: str, name: str) -> dict:
    """Run one role in a fresh process; its last stdout line is a JSON result."""
    cmd = [sys.executable, __file__, "--role", role, "--configs", name, "--workdir", args.workdir]
    cmd += ["--torch_threads", str(args.torch_threads), "--cifar_root", args.cifar_root]
    if args.prototype:
        cmd += ["--prototype", *args.prototype]
    if args.override:
        cmd += ["-o", *args.override]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode:
        raise SystemExit(f"{role} {name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = os.getloadavg()[0]
    return result


def run_role(args) -> int:
    name = args.configs[0]
    work = Path(args.workdir) / name
    if args.role == "torch":
        result = run_torch(work, args.torch_threads)
    else:
        import paddlegan_lite  # noqa: F401  (CPU math set-up before Paddle loads)

        for proto in args.prototype:
            PROTOTYPES[proto]()
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
    from paddlegan_lite.trainer import EpochBatchSampler, build_trainer

    cfg = bench_config(name, work / "prepare", args)
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
        "threads": paddle_threads(),
    }


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


def paddle_threads() -> str:
    return os.environ.get("OMP_NUM_THREADS", "?")


def run_paddle(name: str, work: Path, args) -> dict:
    """The real trainer, then images/s over the rows of metrics.jsonl after the first."""
    from paddlegan_lite.trainer import build_trainer

    run_dir = work / f"paddle_{time.time_ns()}"
    cfg = bench_config(name, run_dir, args)
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
    return {"img_s": images / seconds, "img_cpu_s": images / cpu, "version": paddle.__version__}


def watch_cpu_time(trainer) -> list[float]:
    """Process CPU time at each log row: unlike wall time, it barely moves with machine load."""
    marks, log_metrics = [], trainer.log_metrics

    def logged(*args, **kwargs):
        values = log_metrics(*args, **kwargs)
        marks.append(time.process_time())
        return values

    trainer.log_metrics = logged
    return marks


# ---------------------------------------------------------------------------------- prototypes
def direct_batches() -> None:
    """GANTrainer.make_loader: with no workers, one vectorised `dataset.get_batch` per batch
    instead of DataLoader's per-item __getitem__ + collate (same values, same order)."""
    import paddle

    from paddlegan_lite.trainer import GANTrainer

    stock = GANTrainer.make_loader

    def make_loader(self, sampler):
        if self.cfg.data.num_workers or not hasattr(self.dataset, "get_batch"):
            return stock(self, sampler)
        return (
            tuple(paddle.to_tensor(a) for a in self.dataset.get_batch(indices))
            for indices in sampler
        )

    GANTrainer.make_loader = make_loader


def multi_tensor_adam() -> None:
    """build_optimizers: Adam(..., use_multi_tensor=True), one fused update for all parameters
    (same results to 4e-9 after 3 steps, same state_dict layout)."""
    import paddle

    class MultiTensorAdam(paddle.optimizer.Adam):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, use_multi_tensor=True, **kwargs)

    paddle.optimizer.Adam = MultiTensorAdam


PROTOTYPES = {"direct_batches": direct_batches, "multi_tensor_adam": multi_tensor_adam}


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
    paddle_v = rows[0]["paddle"][0]["version"]
    torch_run = rows[0]["torch"][0]
    header = [
        f"date {datetime.date.today()}; CPU {cpu_model()} ({os.cpu_count()} cores); "
        f"Python {platform.python_version()}; paddlepaddle {paddle_v}; "
        f"torch {torch_run['version']}",
        f"threads: paddle {rows[0]['threads']}, torch {torch_run['threads']}; "
        f"best of {args.reps} alternating runs each; Paddle float32 GEMM peak "
        f"{max(r['gemm_gflop_s'] for r in rows):.0f} GFLOP/s",
        f"command: python bench/train_speed.py {' '.join(sys.argv[1:])}".rstrip(),
        f"trainer prototypes patched in: {', '.join(args.prototype) or 'none'}",
        "",
        "| config | batch | paddlegan_lite img/s | PyTorch img/s | ratio | CPU-time ratio "
        "| % of GEMM peak | loader img/s (x step) | peak RSS paddle / torch MB | load avg |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        p, t = best(r["paddle"], "img_s"), best(r["torch"], "img_s")
        cpu_ratio = best(r["paddle"], "img_cpu_s") / best(r["torch"], "img_cpu_s")
        peak = 100 * r["gflop_step"] * p / r["batch"] / r["gemm_gflop_s"]
        rss = f"{peak_of(r['paddle']):.0f} / {peak_of(r['torch']):.0f}"
        loads = f"{min(r['load']):.1f}-{max(r['load']):.1f}"
        header.append(
            f"| {r['config']} | {r['batch']} | {p:.1f} | {t:.1f} | {p / t:.2f}x | {cpu_ratio:.2f}x "
            f"| {peak:.0f}% | {r['loader_img_s']:.0f} ({r['loader_img_s'] / p:.0f}x) | {rss} "
            f"| {loads} |"
        )
    spread = {r["config"]: [round(x["img_s"], 1) for x in r["paddle"] + r["torch"]] for r in rows}
    header += ["", f"every run (paddle runs, then torch runs): {json.dumps(spread)}"]
    return "\n".join(header)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
