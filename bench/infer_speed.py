"""Generation speed on CPU: the exported model (Paddle Inference) vs the dynamic-graph generator.

  python bench/infer_speed.py [--batch_size 64] [--repeats 20] [--threads 1 2]

Full-width generators of the shipped DCGAN CIFAR-10 and AC-GAN MNIST configs with their initial
weights (speed does not depend on the values). Latency is the median time of one batch-1 call,
throughput is images per second at --batch_size; both include copying the images back to numpy.
Prints a markdown table. The dynamic graph runs on one thread whatever is asked (measured: Paddle
3.3.1's CPU kernels there ignore OMP/MKL thread settings), so it has one row per model.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from paddlegan_lite.ops.process import configure_process_env  # noqa: E402

configure_process_env()  # before Paddle loads: MKL's fast path on AMD, allocator, quiet logs
from paddlegan_lite.runtime import cpu_model  # noqa: E402

# isort: split
import numpy as np  # noqa: E402
import paddle  # noqa: E402

from paddlegan_lite.config import config_to_dict, load_config  # noqa: E402
from paddlegan_lite.export import export_generator, run_dynamic  # noqa: E402
from paddlegan_lite.inference import Generator, seed_latents  # noqa: E402
from paddlegan_lite.models import build_models  # noqa: E402
from paddlegan_lite.ops import accelerate  # noqa: E402

CONFIGS = ("dcgan_cifar10", "acgan_mnist")


def median_seconds(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):  # first calls allocate and (oneDNN) pick kernels
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inputs(netG, batch: int):
    labels = np.arange(batch, dtype=np.int64) % netG.num_classes if netG.num_classes else None
    return seed_latents(range(batch), netG.nz), labels


def measure(run, netG, batch_size: int, repeats: int) -> tuple[float, float]:
    """(batch-1 latency in ms, images/s at batch_size) for run(z, labels)."""
    one, many = inputs(netG, 1), inputs(netG, batch_size)
    latency = median_seconds(lambda: run(*one), repeats * 5)
    throughput = batch_size / median_seconds(lambda: run(*many), repeats)
    return 1000 * latency, throughput


def bench_config(name: str, folder: Path, args) -> list[tuple]:
    cfg = load_config(REPO_ROOT / "configs" / f"{name}.yaml")
    paddle.seed(cfg.seed)
    netG, _ = build_models(cfg.model)
    netG.eval()
    export_generator(netG, folder / name, config_to_dict(cfg), {"checkpoint": None, "step": 0})
    accelerate(netG)  # exported plain; the dynamic-graph row times the fast CPU kernels, as eval
    label = f"{name} ({'x'.join(map(str, netG.image_shape))}, ngf={cfg.model.ngf})"
    rows = [
        (
            label,
            "dynamic graph",
            1,
            *measure(lambda z, y: run_dynamic(netG, z, y), netG, args.batch_size, args.repeats),
        )
    ]
    for threads in args.threads:
        for mkldnn in (True, False):
            gen = Generator(
                folder / name, batch_size=args.batch_size, cpu_threads=threads, mkldnn=mkldnn
            )
            path = "Paddle Inference, oneDNN" if mkldnn else "Paddle Inference, plain"
            rows.append(
                (label, path, threads, *measure(gen.run, netG, args.batch_size, args.repeats))
            )
    return rows


def print_table(rows: list[tuple], batch_size: int) -> None:
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); Paddle {paddle.__version__}\n")
    print(
        f"| model | path | threads | latency, batch 1 (ms) | images/s, batch {batch_size} "
        "| vs dynamic |"
    )
    print("|---|---|---:|---:|---:|---:|")
    baseline = {}
    for model, path, threads, latency, throughput in rows:
        baseline.setdefault(model, throughput)
        speedup = throughput / baseline[model]
        print(
            f"| {model} | {path} | {threads} | {latency:.2f} | {throughput:.0f} | {speedup:.2f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20, help="timed batches (x5 at batch 1)")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, os.cpu_count() or 1],
        help="Paddle Inference CPU thread counts to try",
    )
    args = parser.parse_args()
    args.threads = sorted(set(args.threads))
    paddle.set_device("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in CONFIGS:
            rows += bench_config(name, Path(folder), args)
    print_table(rows, args.batch_size)


if __name__ == "__main__":
    main()
