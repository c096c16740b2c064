"""Measure a trained generator: FID, KID, IS, precision/recall (+ class accuracy for AC-GAN),
beside the floor that real held-out images reach.

  python tools/eval.py -c configs/acgan_mnist.yaml \\
      --checkpoint output/acgan_mnist/checkpoints/latest
  python tools/eval.py --model_dir inference/dcgan_cifar10 --data configs/dcgan_cifar10.yaml
  python tools/eval.py --checkpoint output/acgan_mnist -o eval.num_samples=5000 eval.seed=1

The real images and the eval options come from one config: the file named by -c (or --data, the
same thing), else the model's own saved config (the options the run trained with); -o sets
data.* and eval.* keys on top (eval.num_samples, batch_size, seed, extractor,
inception_weights, classifier_steps, cache_dir: see the README's config reference). Data other
than the model was trained on is evaluated with a warning. Features come from a small classifier
trained on the data's labels on first use and cached (the default), or from InceptionV3 with
-o eval.extractor=inception eval.inception_weights=FILE.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from paddlegan_lite.ops.process import configure_process_env

configure_process_env()  # before Paddle loads: MKL's fast path on AMD, allocator, quiet logs
from paddlegan_lite.cli import add_config_args, add_moved_flags, check_output_file, run_tool
from paddlegan_lite.config import WEIGHT_CHOICES
from paddlegan_lite.errors import UserError

# The flags this tool had before eval options moved to -o eval.*; refused with the new spelling.
MOVED_FLAGS = (
    "num_samples",
    "batch_size",
    "seed",
    "extractor",
    "inception_weights",
    "classifier_steps",
    "cache_dir",
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser, required=False, example="eval.num_samples=5000 data.root=~/data")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint folder, or a run folder (its newest)")
    source.add_argument("--model_dir", help="exported inference folder (tools/export_model.py)")
    parser.add_argument("--data", help="the same as -c: the config naming the real images")
    parser.add_argument(
        "--weights",
        choices=WEIGHT_CHOICES,
        default="auto",
        help="checkpoint generator: auto (EMA when the run kept one), ema, or raw (G's own)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, gpu or gpu:N")
    parser.add_argument("--output", help="JSON report (default: beside the model)")
    add_moved_flags(parser, {name: f"eval.{name}" for name in MOVED_FLAGS})
    args = parser.parse_args()
    if args.output:  # refused now, not after the evaluation
        check_output_file(args.output, None, "--output")
    if args.config and args.data:
        raise UserError("-c and --data name the same config: give one")
    if args.model_dir and args.weights != "auto":
        raise UserError("--weights picks a checkpoint's generator; an exported model has one")

    from paddlegan_lite.config import check_eval_options, check_overrides, load_config

    # checked before anything loads; with no config file they apply to the model's own, later
    check_overrides(
        args.override, ("data", "eval"), "the model comes from --checkpoint/--model_dir"
    )
    config_path = args.config or args.data
    cfg = load_config(config_path, args.override) if config_path else None
    if cfg is not None:
        check_eval_options(cfg.eval, config_path)

    from paddlegan_lite import eval_report
    from paddlegan_lite.runtime import use_cpu_threads

    use_cpu_threads()  # every physical core, as training (OMP_NUM_THREADS wins)
    if args.checkpoint:
        model = eval_report.load_checkpoint_model(args.checkpoint, args.device, args.weights)
    else:
        model = eval_report.load_model_dir(args.model_dir, args.device)
    data_channels = cfg.model.channels if cfg is not None else None
    if cfg is None:
        cfg = eval_report.model_config(model, args.override)
    output = Path(args.output) if args.output else eval_report.default_output(model.info)
    if not args.output:
        check_output_file(output, None, "the default --output")
    report = eval_report.run_eval(model, cfg.data, cfg.eval, data_channels)
    print(eval_report.format_report(report))
    print(f"report: {eval_report.write_report(report, output)}")
    return 0


if __name__ == "__main__":
    run_tool(main)
