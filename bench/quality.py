"""Quality benchmark (not a test): train seed configs on this machine, then measure FID/KID/IS,
precision/recall, the class histogram of the samples (and class accuracy for AC-GAN) beside the
floor that real held-out images reach.

  python bench/quality.py --configs mlp_gan_mnist dcgan_mnist acgan_mnist
  python bench/quality.py --configs dcgan_mnist --minutes 4 --evals 4 --torch_reference 32
  python bench/quality.py --configs dcgan_cifar10_32 dcgan_cifar10_32+da sngan_cifar10 \\
      --minutes 8 --cifar_root ../shared/data/cifar10-mini  # the real 4,000-image subset
  python bench/quality.py --configs dcgan_cifar10 --score_size 32  # 64x64, the 32x32 features

Each config trains on its own schedule (its epochs) unless --steps or --minutes says otherwise.
--minutes M gives every run the same wall-clock budget: it trains in --evals segments of M/evals
minutes (train.max_minutes), each resuming the last one's checkpoint, which is scored. Runs train
until the budget is spent, except those with an lr decay (optimizer.lr_decay), which keep their
epochs (the decay's length) and stop there if that comes first. Names with a "+" are a config
with the options of VARIANTS (e.g. dcgan_cifar10_32+da: with DiffAugment). MNIST configs read
data/mnist, or the package's 5,000 bundled digits when it is empty. Runs that keep an EMA
generator (train.ema_decay > 0) are scored twice: G's own weights and the EMA's. Runs use every
core, unless a reference runs beside them (then one thread each).

--torch_reference SIZE (32 when no size is given) trains the plain pytorch/examples DCGAN
(ngf = ndf = 64, logistic loss, real label 1, batch 64, Adam 2e-4 / 0.5) on the same images at
SIZE x SIZE in a second process *at the same time* as each config (one thread each, so both see
the same machine load) and stops it when paddlegan_lite's run ends: the same wall-clock minutes.
Whenever paddlegan_lite saves a checkpoint (--evals per run) the reference keeps a copy of its
generator, so the two are compared at the same minutes along the way too. Its samples are scored
with the same extractor (at SIZE: the same features only when SIZE is the config's image size),
in eval mode (running BatchNorm statistics, as ours) and in train mode (batch statistics, as
pytorch/examples draws them); needs `torch` (bench-only).

Prints a markdown table and the class histograms; writes <output_dir>/quality.json.
"""

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO_ROOT))

from paddlegan_lite.ops.process import configure_process_env  # noqa: E402

configure_process_env()  # before Paddle loads: MKL's fast path on AMD, allocator, quiet logs
from paddlegan_lite.config import EXTRACTORS, EvalConfig  # noqa: E402
from paddlegan_lite.runtime import cpu_model  # noqa: E402

CONFIGS = (
    "mlp_gan_mnist",
    "dcgan_mnist",
    "dcgan_mnist_64",
    "acgan_mnist",
    "dcgan_cifar10",
    "dcgan_cifar10_32",
    "sngan_cifar10",
    "sngan_cifar10_cond",
    "acgan_cifar10",
    "dcgan_cifar10_32_cond",
    "dcgan_cifar10_32_fast",
    "dcgan_cifar10_32_fast_cond",
)
DIFFAUGMENT = "train.diffaugment=color,translation,cutout"
R1 = ["train.r1_gamma=0.1", "train.r1_interval=4"]
# "<config>+<variant>": the config with these overrides (the rows of the README's CIFAR table)
VARIANTS = {
    "da": [DIFFAUGMENT],  # DiffAugment (Zhao et al. 2020)
    "sn": ["model.spectral_norm=d"],  # spectral norm on D (Miyato et al. 2018)
    "sn+da": ["model.spectral_norm=d", DIFFAUGMENT],
    "r1": R1,  # R1 on real images (Mescheder et al. 2018), lazy
    "sn+r1": ["model.spectral_norm=d", *R1],
    "ttur": ["optimizer.g.lr=1.0e-4", "optimizer.d.lr=4.0e-4"],  # Heusel et al. 2017
    "flip": ["data.hflip=true"],  # real images mirrored at random
    "dp": ["model.dual_projection=true"],  # conditional sngan: a dual projection D (Han 2021)
}
# pytorch/examples dcgan/main.py's defaults, as a bench/torch_reference.py config
EXAMPLES_DCGAN = {
    "seed": 0,
    "model": {"name": "dcgan", "nz": 100, "ngf": 64, "ndf": 64, "num_classes": 0, "init_std": 0.02},
    "train": {"loss": "vanilla", "real_label": 1.0, "batch_size": 64, "d_steps": 1},
    "optimizer": {
        "g": {"lr": 2e-4, "beta1": 0.5, "beta2": 0.999},
        "d": {"lr": 2e-4, "beta1": 0.5, "beta2": 0.999},
    },
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["dcgan_mnist"],
        help=f"from {', '.join(CONFIGS)}; +{'/+'.join(VARIANTS)} for a variant",
    )
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: the config's)")
    parser.add_argument("--minutes", type=float, default=0, help="wall-clock budget of each run")
    parser.add_argument("--evals", type=int, default=1, help="checkpoints evaluated per run")
    parser.add_argument("--num_samples", type=int, default=EvalConfig.num_samples)
    parser.add_argument("--extractor", default=EvalConfig.extractor, choices=EXTRACTORS)
    parser.add_argument("--inception_weights", default=None)
    parser.add_argument("--cifar_root", default=str(REPO_ROOT.parent / "shared/data/cifar10-mini"))
    parser.add_argument("--output_dir", default="bench_output")
    parser.add_argument(
        "--score_size",
        type=int,
        default=0,
        help="score samples area-resized to this side (32: a 64x64 config with the 32x32 "
        "configs' extractor, in one table)",
    )
    parser.add_argument(
        "--torch_reference", type=int, nargs="?", const=32, default=0, metavar="SIZE",
        help="see above",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--override", nargs="+", default=[], help="extra config overrides for every run"
    )
    parser.add_argument("--role", default="main", choices=("main", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in args.configs:
        base, _, variant = name.partition("+")
        if base not in CONFIGS or (variant and variant not in VARIANTS):
            parser.error(f"--configs {name}: not a config (+variant) this bench knows")
    if args.role == "torch":
        return run_torch_reference(Path(args.workdir))

    from paddlegan_lite.logger import setup_console_logging

    setup_console_logging()
    from paddlegan_lite.errors import UserError

    results = []
    for name in args.configs:
        try:
            results += bench_config(name, args)
        except UserError as exc:  # one config's missing data should not stop the others
            print(f"{name}: error: {exc}", flush=True)
    print(markdown_table(results))
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}")
    out = Path(args.output_dir) / "quality.json"
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"results: {out}")
    return 0


def bench_config(name: str, args) -> list[dict]:
    """Train one config (with the PyTorch reference beside it if asked), then score both."""
    cfg = run_config(name, args)
    shutil.rmtree(cfg.train.output_dir, ignore_errors=True)  # the bench's own run folder
    reference = None
    if args.torch_reference:
        size = args.torch_reference
        workdir = Path(args.output_dir) / f"{name}_pytorch_{size}px"
        reference = start_torch_reference(cfg, workdir, size, args)
    try:
        saved_at = train_run(cfg, args, reference)
    finally:
        if reference is not None:
            reference.stop()
    rows = []
    for step, weights, report in evaluate_run(Path(cfg.train.output_dir), args):
        row = {"config": name, "generator": f"paddlegan_lite ({weights})", "step": step}
        rows.append({**row, "train_seconds": saved_at[step], **report})
    if reference is not None:
        rows += reference.evaluate(cfg, args)
    return rows


def run_config(name: str, args):
    """configs/<name>.yaml with the bench's overrides: its own schedule unless --steps, --evals
    checkpoints kept, offline data, output under --output_dir."""
    from paddlegan_lite.config import load_config

    config, _, variant = name.partition("+")
    run_dir = Path(args.output_dir) / name
    overrides = [f"train.output_dir={run_dir}", "data.download=false"]
    overrides += VARIANTS.get(variant, [])
    if args.steps:
        overrides += ["train.epochs=0", f"train.max_steps={args.steps}"]
    if "cifar" in name:
        overrides.append(f"data.root={args.cifar_root}")
    if args.torch_reference:
        overrides.append("train.threads=1")  # the reference gets the other core
    path = REPO_ROOT / "configs" / f"{config}.yaml"
    # the runs save where train_run's segments end, and keep those checkpoints
    overrides += ["train.save_interval=1000000000", f"train.keep_checkpoints={args.evals + 1}"]
    if args.minutes:
        overrides.append(f"train.max_minutes={args.minutes / max(args.evals, 1)}")
        if not load_config(path, overrides + args.override).optimizer.lr_decay:
            # the budget alone ends the run; a run with an lr decay keeps its epochs, the
            # decay's length (its schedule may end sooner)
            overrides += ["train.epochs=0", "train.max_steps=0"]
    return load_config(path, overrides + args.override)


def steps_per_epoch(cfg) -> int:
    from paddlegan_lite.datasets import build_dataset

    dataset = build_dataset(cfg.data, cfg.model.image_size, cfg.model.channels, train=True)
    return len(dataset) // cfg.train.batch_size


def train_run(cfg, args, reference=None) -> dict:
    """Train; returns {step: seconds since the start} of every checkpoint, and asks the PyTorch
    reference (when there is one) for a snapshot at each. With --minutes the run is --evals
    segments, each resuming the last: the seconds count the segments' set-up too (a few seconds
    each, during which the reference trains on), so they never flatter paddlegan_lite."""
    from paddlegan_lite.checkpoint import list_step_dirs
    from paddlegan_lite.trainer import train

    evals = max(args.evals, 1)
    steps = 0 if args.minutes else args.steps or cfg.train.epochs * steps_per_epoch(cfg)
    saved_at, start = {}, time.perf_counter()
    ckpt_dir = Path(cfg.train.output_dir) / "checkpoints"
    for segment in range(1, evals + 1):
        part = copy.deepcopy(cfg)
        if not args.minutes:
            part.train.max_steps = max(1, steps * segment // evals)
        train(part, resume="auto" if segment > 1 else None)
        step = max(s for s, _ in list_step_dirs(ckpt_dir))
        if step not in saved_at:  # a run whose schedule ended adds no checkpoint
            saved_at[step] = time.perf_counter() - start
            if reference is not None:
                reference.snapshot(step)
    return saved_at


def evaluate_run(run_dir: Path, args):
    """(step, weights, report) for the newest args.evals checkpoints of the run, oldest first;
    checkpoints with an EMA generator are scored with G's own weights and with the EMA's."""
    from paddlegan_lite import eval_report
    from paddlegan_lite.checkpoint import list_step_dirs, load_checkpoint
    from paddlegan_lite.config import config_from_dict

    for step, path in sorted(list_step_dirs(run_dir / "checkpoints"))[-args.evals :]:
        has_ema = bool(load_checkpoint(path)[1].get("netG_ema"))
        for weights in ("raw", "ema") if has_ema else ("raw",):
            model = eval_report.load_checkpoint_model(path, device="auto", weights=weights)
            if args.score_size and args.score_size != model.image_shape[-1]:
                model = downsampled(model, args.score_size)
            report = score(model, config_from_dict(model.config).data, args)
            yield step, "EMA" if weights == "ema" else "G", report


def downsampled(model, side: int):
    """The model with its samples area-resized to side x side, so that a 64x64 generator (the
    flagship dcgan_cifar10) is scored against the 32x32 real images with the same extractor as
    the 32x32 configs (the classifier sees 32x32 images either way: extractors.CLASSIFIER_SIDE)."""
    import dataclasses

    import paddle
    import paddle.nn.functional as F

    def generate(z, labels):
        images = paddle.to_tensor(model.generate_fn(z, labels))
        return F.interpolate(images, size=[side, side], mode="area").numpy()

    info = {**model.info, "scored_at": side}
    shape = (model.image_shape[0], side, side)
    return dataclasses.replace(model, generate_fn=generate, image_shape=shape, info=info)


def score(model, data_cfg, args) -> dict:
    from paddlegan_lite import eval_report

    options = EvalConfig(
        extractor=args.extractor,
        num_samples=args.num_samples,
        inception_weights=args.inception_weights or "",
    )
    report = eval_report.run_eval(model, data_cfg, options)
    print(eval_report.format_report(report), flush=True)
    return report


# ---------------------------------------------------------------------- the PyTorch reference
class TorchReference:
    """The pytorch/examples DCGAN training in another process until `stop()`."""

    def __init__(self, workdir: Path, process: subprocess.Popen):
        self.workdir, self.process = workdir, process

    def snapshot(self, tag: int) -> None:
        """Ask for the reference's generator as it is now (it checks after every step)."""
        (self.workdir / f"snapshot_{tag}").touch()

    def stop(self) -> None:
        (self.workdir / "stop").touch()
        if self.process.wait(timeout=1800) != 0:
            raise SystemExit(f"the PyTorch reference failed: see {self.workdir / 'log.txt'}")

    def evaluate(self, cfg, args) -> list[dict]:
        """Score each snapshot's samples (eval- and train-mode BatchNorm) as paddlegan_lite's."""
        import numpy as np

        from paddlegan_lite.eval_report import LoadedModel

        info = json.loads((self.workdir / "result.json").read_text(encoding="utf-8"))
        rows = []
        for snap in info["snapshots"]:
            for mode in ("eval", "train"):
                images = np.load(self.workdir / f"images_{snap['tag']}_{mode}.npy")
                model = LoadedModel(
                    served_images(images),
                    EXAMPLES_DCGAN["model"]["nz"],
                    0,
                    tuple(images.shape[1:]),
                    {},
                    {"source": "pytorch/examples DCGAN", "path": str(self.workdir),
                     "step": snap["steps"]},
                )  # fmt: skip
                row = {
                    "config": f"pytorch/examples DCGAN ({images.shape[-1]}px)",
                    "generator": f"PyTorch {info['version']} ({mode} mode)",
                    "step": snap["steps"],
                    "train_seconds": snap["seconds"],
                }
                rows.append({**row, **score(model, cfg.data, args)})
        return rows


def served_images(images):
    """A generate_fn handing out precomputed images in order (the latents are the evaluator's,
    which the reference generated them from)."""
    served = [0]

    def generate(z, labels):
        start = served[0]
        served[0] += len(z)
        return images[start : start + len(z)]

    return generate


def start_torch_reference(cfg, workdir: Path, size: int, args) -> TorchReference:
    """Save the run's images at size x size and the eval latents, then start the reference."""
    import numpy as np

    from paddlegan_lite.datasets import build_dataset
    from paddlegan_lite.evaluation import latent_inputs

    workdir.mkdir(parents=True, exist_ok=True)
    for flag in ("stop", "training"):
        (workdir / flag).unlink(missing_ok=True)
    m = cfg.model
    dataset = build_dataset(cfg.data, size, m.channels, train=True)
    np.savez(workdir / "data.npz", images=dataset.images, labels=dataset.labels)
    z, _ = latent_inputs(args.num_samples, EXAMPLES_DCGAN["model"]["nz"], EvalConfig.seed)
    np.save(workdir / "z.npy", z)
    ref_cfg = {**EXAMPLES_DCGAN, "model": {**EXAMPLES_DCGAN["model"]}}
    ref_cfg["model"].update(channels=m.channels, image_size=size)
    (workdir / "config.json").write_text(json.dumps(ref_cfg), encoding="utf-8")
    cmd = [sys.executable, __file__, "--role", "torch", "--workdir", str(workdir)]
    log = open(workdir / "log.txt", "w", encoding="utf-8")
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    # both clocks start together: wait until the reference has its nets and data and trains
    while not (workdir / "training").exists():
        if process.poll() is not None:
            raise SystemExit(f"the PyTorch reference failed: see {workdir / 'log.txt'}")
        time.sleep(0.2)
    return TorchReference(workdir, process)


def run_torch_reference(workdir: Path) -> int:
    """The reference process: train until the stop file appears, then draw the eval images."""
    import numpy as np
    import torch

    sys.path.insert(0, str(BENCH_DIR))
    from torch_reference import ArrayDataset, TorchTrainer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # as Paddle's default
    cfg = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
    data = np.load(workdir / "data.npz")
    dataset = ArrayDataset(data["images"], data["labels"], cfg["model"]["channels"])
    trainer = TorchTrainer(cfg, dataset, workdir)
    snapshots, start = [], time.perf_counter()

    def after_step(step: int) -> bool:
        """Keep G's weights when a snapshot is asked for (a copy: the clock keeps running);
        True once the stop file is there."""
        for request in sorted(workdir.glob("snapshot_*")):
            request.unlink()
            weights = {k: v.clone() for k, v in trainer.netG.state_dict().items()}
            seconds = time.perf_counter() - start
            tag = request.name.split("_")[1]
            snapshots.append({"tag": tag, "steps": step, "seconds": seconds, "weights": weights})
        return (workdir / "stop").exists()

    (workdir / "training").touch()
    trainer.fit(10**9, log_interval=50, stop=after_step)
    after_step(trainer.steps_done)  # a request that came with the stop
    z = torch.from_numpy(np.load(workdir / "z.npy"))
    for snap in snapshots:  # samples drawn after training: drawing them costs it no time
        trainer.netG.load_state_dict(snap.pop("weights"))
        for mode in ("eval", "train"):
            trainer.netG.train(mode == "train")
            with torch.no_grad():
                images = torch.cat([trainer.netG(part) for part in z.split(250)]).numpy()
            np.save(workdir / f"images_{snap['tag']}_{mode}.npy", images)
    result = {"snapshots": snapshots, "version": torch.__version__}
    (workdir / "result.json").write_text(json.dumps(result), encoding="utf-8")
    return 0


# ---------------------------------------------------------------------- report
def markdown_table(results: list) -> str:
    head = (
        "| config | generator | data | steps | minutes | FID | floor | KID | IS | class acc "
        "| rarest class | precision | recall |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in results:
        g, f = r["generated"], r["floor"]
        lines.append(
            f"| {r['config']} | {r['generator']} | {short_source(r['data']['source'])} "
            f"| {r['step']} | {r['train_seconds'] / 60:.1f} | {g['fid']:.2f} | {f['fid']:.2f} "
            f"| {g['kid']:.3g} ± {g['kid_std']:.2g} | {_opt(g, 'is')} "
            f"| {_opt(g, 'class_acc', 3)} | {_opt(g, 'class_min_share')} "
            f"| {g['precision']:.3f} | {g['recall']:.3f} |"
        )
    lines += ["", "Classes the classifier sees in the samples (% per class 0..K-1):"]
    for r in results:
        if "class_hist" in r["generated"]:
            shares = " ".join(f"{100 * x:.0f}" for x in r["generated"]["class_hist"])
            lines.append(f"- {r['config']}, {r['generator']}: {shares}")
    return "\n".join(lines)


def _opt(values: dict, key: str, digits: int = 2) -> str:
    return f"{values[key]:.{digits}f}" if key in values else "-"


def short_source(source: str) -> str:
    from paddlegan_lite.datasets import BUNDLED_MNIST_SOURCE

    if source.startswith(BUNDLED_MNIST_SOURCE):
        return "MNIST 5k (bundled)"
    if "CIFAR-10" in source:
        return source.split(" from ")[0] + source[source.rfind(" (") :]
    return source


if __name__ == "__main__":
    sys.exit(main())
