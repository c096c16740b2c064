"""Measure a trained generator: FID, KID, IS, precision/recall (+ class accuracy for AC-GAN),
beside the floor that real held-out images reach.

  python tools/eval.py -c configs/acgan_mnist.yaml \\
      --checkpoint output/acgan_mnist/checkpoints/latest
  python tools/eval.py --model_dir inference/dcgan_cifar10 --data configs/dcgan_cifar10.yaml

The real images come from the data: section of --data (or -c, or else the model's own saved
config); data other than the model was trained on is evaluated with a warning. Features come
from a small classifier trained on the data's labels on first use and cached (default), or from
InceptionV3 with --extractor inception --inception_weights FILE.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import paddlegan_lite  # noqa: F401  (sets CPU math flags before Paddle loads)
from paddlegan_lite.cli import add_config_args, check_output_file, run_tool
from paddlegan_lite.errors import UserError


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser, required=False)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint folder, or a run folder (its newest)")
    source.add_argument("--model_dir", help="exported inference folder (tools/export_model.py)")
    parser.add_argument("--data", help="config file whose data: section names the real images")
    parser.add_argument("--num_samples", type=int, default=2000, help="generated images")
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0, help="seeds the generated z and labels")
    parser.add_argument("--extractor", choices=("classifier", "inception"), default="classifier")
    parser.add_argument("--inception_weights", help="FID InceptionV3 weights (.safetensors)")
    parser.add_argument(
        "--classifier_steps",
        type=int,
        default=None,
        help="training steps of a new classifier (default: its recipe's)",
    )
    parser.add_argument("--cache_dir", help="default: $PADDLEGAN_LITE_CACHE or ~/.cache/...")
    parser.add_argument(
        "--weights",
        choices=("auto", "ema", "raw"),
        default="auto",
        help="checkpoint generator: auto (EMA when the run kept one), ema, or raw (G's own)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, gpu or gpu:N")
    parser.add_argument("--output", help="JSON report (default: beside the model)")
    args = parser.parse_args()
    if args.output:  # refused now, not after the evaluation
        check_output_file(args.output, None, "--output")

    from paddlegan_lite import evaluation
    from paddlegan_lite.config import EvalConfig, config_from_dict, load_config
    from paddlegan_lite.extractors import CLASSIFIER_STEPS

    if args.num_samples < evaluation.MIN_SAMPLES or args.batch_size < 1:
        raise UserError(f"--num_samples must be >= {evaluation.MIN_SAMPLES} and --batch_size >= 1")
    if args.model_dir and args.weights != "auto":
        raise UserError("--weights picks a checkpoint's generator; an exported model has one")
    config_path = args.data or args.config
    if args.override and not config_path:
        raise UserError("-o needs -c or --data: overrides apply to a config file")
    from paddlegan_lite.runtime import use_cpu_threads

    use_cpu_threads()  # every physical core, as training (OMP_NUM_THREADS wins)
    if args.checkpoint:
        model = evaluation.load_checkpoint_model(args.checkpoint, args.device, args.weights)
    else:
        model = evaluation.load_model_dir(args.model_dir, args.device, args.batch_size)
    data_channels = None
    if config_path:
        data_config = load_config(config_path, args.override)
        data_cfg, data_channels = data_config.data, data_config.model.channels
    elif model.config:
        data_cfg = config_from_dict(model.config, source=model.info["path"]).data
    else:
        raise UserError(f"{model.info['path']} holds no config: name the data with --data")
    options = EvalConfig(
        extractor=args.extractor,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        inception_weights=args.inception_weights or "",
        classifier_steps=args.classifier_steps or CLASSIFIER_STEPS,
        cache_dir=args.cache_dir or "",
    )
    output = Path(args.output) if args.output else default_output(model.info)
    if not args.output:
        check_output_file(output, None, "the default --output")
    report = evaluation.run_eval(model, data_cfg, options, data_channels)
    print(evaluation.format_report(report))
    print(f"report: {evaluation.write_report(report, output)}")
    return 0


def default_output(info: dict) -> Path:
    """<run folder>/eval/step_<step>.json for checkpoints, <model_dir>/eval.json for exports."""
    path = Path(info["path"])
    if info["source"] == "model_dir":
        return path / "eval.json"
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return run_dir / "eval" / f"step_{info['step']:08d}.json"


if __name__ == "__main__":
    run_tool(main)
