"""Loader speed on an image folder of real JPEGs: the trainer's own `make_loader` at several
data.num_workers, images decoded, resized and scaled exactly as in training.

  python bench/loader_speed.py [--workers 0 1 2] [--sizes 32 64] [--epochs 2] [--batch 64]

The JPEGs are the real CIFAR-10 photos of the 4,000-image subset (../shared/data/cifar10-mini,
see its README), written once into a temporary folder of class subfolders: as they are (32 x 32)
and upscaled to 64 x 64 (bicubic), JPEG quality 95. Each epoch is a fresh `make_loader` iteration,
as in training, so worker start-up counts; the table gives the best epoch and the first batch's
wait. Prints the CPU model and load average: the rates depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from paddlegan_lite.ops.process import configure_process_env  # noqa: E402

configure_process_env()  # before Paddle loads: MKL's fast path on AMD, allocator, quiet logs

DEFAULT_CIFAR = REPO_ROOT.parent / "shared" / "data" / "cifar10-mini"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per setting (best kept)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--cifar_root", default=str(DEFAULT_CIFAR), help="cifar-10-python.tar.gz")
    args = parser.parse_args()

    from paddlegan_lite.runtime import cpu_model

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; load avg {load():.2f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="loader_speed_") as tmp:
        for size in args.sizes:
            folder = write_jpegs(Path(args.cifar_root), Path(tmp) / f"jpeg{size}", size)
            for workers in args.workers:
                rate, first = measure(folder, size, workers, args.batch, args.epochs)
                rows.append((size, workers, rate, first))
                print(f"  {size}x{size} workers={workers}: {rate:,.0f} images/s", flush=True)
    print()
    print(f"Image-folder loader, {args.batch}-image batches, CPU: {cpu_model()}")
    print()
    print("| JPEG size | data.num_workers | images/s (best epoch) | first batch s |")
    print("|---|---|---|---|")
    for size, workers, rate, first in rows:
        print(f"| {size} x {size} | {workers} | {rate:,.0f} | {first:.2f} |")
    print(f"\nload avg at the end: {load():.2f}")
    return 0


def load() -> float:
    return os.getloadavg()[0]


def write_jpegs(cifar_root: Path, folder: Path, size: int) -> Path:
    """The subset's training photos as JPEG files in folder/<class>/, size x size."""
    from PIL import Image

    from paddlegan_lite.datasets import load_cifar10

    cifar = load_cifar10(cifar_root, 32, 3, train=True, download=False)
    for name in cifar.class_names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(cifar.images, cifar.labels)):
        pil = Image.fromarray(image.transpose(1, 2, 0))
        if size != 32:
            pil = pil.resize((size, size), Image.Resampling.BICUBIC)
        pil.save(folder / cifar.class_names[label] / f"{i:05d}.jpg", quality=95)
    print(f"wrote {len(cifar.images)} JPEGs of {size} x {size} ({cifar.source})", flush=True)
    return folder


def measure(folder: Path, size: int, workers: int, batch: int, epochs: int):
    """(images/s of the best epoch, seconds to the first batch of that epoch)."""
    from paddlegan_lite.config import load_config
    from paddlegan_lite.datasets import build_dataset
    from paddlegan_lite.trainer import EpochBatchSampler, GANTrainer

    overrides = [
        "data.name=folder",
        f"data.root={folder}",
        f"data.num_workers={workers}",
        f"model.image_size={size}",
        f"train.batch_size={batch}",
    ]
    cfg = load_config(REPO_ROOT / "configs" / "dcgan_cifar10.yaml", overrides)
    dataset = build_dataset(cfg.data, size, 3)
    trainer = GANTrainer.__new__(GANTrainer)  # make_loader reads only cfg and dataset
    trainer.cfg, trainer.dataset = cfg, dataset
    sampler = EpochBatchSampler(len(dataset), batch, cfg.seed)
    best = (0.0, 0.0)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        start, first, images = time.perf_counter(), None, 0
        for real, _ in trainer.make_loader(sampler):
            images += real.shape[0]
            first = first or time.perf_counter() - start
        rate = images / (time.perf_counter() - start)
        best = max(best, (rate, first))
    return best


if __name__ == "__main__":
    sys.exit(main())
