"""Train a GAN from a YAML config: python tools/train.py -c configs/dcgan_mnist.yaml [-o k=v ...]"""

import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from paddlegan_lite.ops.process import configure_process_env

configure_process_env()  # before Paddle loads: MKL's fast path on AMD, allocator, quiet logs
from paddlegan_lite.cli import add_config_args, run_tool


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    parser.add_argument(
        "--resume",
        default=None,
        help="checkpoint folder to continue from, or a run folder (its newest complete "
        "checkpoint), or 'auto' for this run's newest",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and the checks' verdict (device, processes, memory), "
        "then exit without training",
    )
    args = parser.parse_args()

    from paddlegan_lite.config import load_config

    cfg = load_config(args.config, args.override)  # before Paddle loads: config errors are quick
    from paddlegan_lite.trainer import dry_run, train

    if args.dry_run:
        print(dry_run(cfg))
        return 0
    train(cfg, resume=args.resume)
    return 0


if __name__ == "__main__":
    run_tool(main)
