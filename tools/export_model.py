"""Export a trained generator for deployment (Paddle Inference model + infer_cfg.yml).

  python tools/export_model.py -c configs/dcgan_cifar10.yaml \\
      --checkpoint output/dcgan_cifar10/checkpoints/latest --output_dir inference/dcgan_cifar10

The model is built from the checkpoint's own saved config; -c (with its -o overrides) is only
checked against it. The export is reloaded with Paddle Inference and compared with the dynamic
graph (run on CPU in float32) on fixed noise; a difference beyond the tolerance fails the export.
With a GPU present, the GPU predictor is checked too, at a tolerance that allows for TF32.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from paddlegan_lite.ops.process import configure_process_env

configure_process_env()  # before Paddle loads: MKL's fast path on AMD, allocator, quiet logs
from paddlegan_lite.cli import add_config_args, check_output_dir, run_tool
from paddlegan_lite.errors import UserError


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser, required=False)
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint folder, or a run folder (its newest checkpoint is used); "
        "default: <train.output_dir of -c>/checkpoints/latest",
    )
    parser.add_argument(
        "--output_dir", default=None, help="folder to write; default: inference/<run name>"
    )
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="also write inference.onnx with paddle2onnx and check it with onnxruntime "
        "(skipped with a message where they are not installed)",
    )
    args = parser.parse_args()
    if args.output_dir:  # refused before Paddle loads (the default is checked once it is known)
        check_output_dir(args.output_dir, "--output_dir")

    from paddlegan_lite.config import load_config
    from paddlegan_lite.export import export_model

    if args.override and not args.config:
        raise UserError("-o needs -c: overrides apply to a config file")
    cfg = load_config(args.config, args.override) if args.config else None
    if args.checkpoint is None and cfg is None:
        raise UserError("give --checkpoint (or -c, to export its run's latest checkpoint)")
    checkpoint = args.checkpoint or Path(cfg.train.output_dir) / "checkpoints" / "latest"
    export_model(checkpoint, args.output_dir, cfg, onnx=args.onnx)
    return 0


if __name__ == "__main__":
    run_tool(main)
