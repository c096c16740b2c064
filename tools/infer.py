"""Generate images from an exported model (tools/export_model.py) with Paddle Inference.

  python tools/infer.py --model_dir inference/dcgan_cifar10 --seeds 0-63 --output_dir gen/
  python tools/infer.py --model_dir inference/acgan_mnist --seeds 0-9 --labels 0-9 --grid grid.png
  python tools/infer.py --model_dir inference/dcgan_cifar10 --interpolate 3 7 --steps 30 --gif w.gif

Seed s always gives the same image: z = numpy.random.default_rng(s).standard_normal(nz), in any
batch. With --labels (conditional models), every seed is drawn with every label: files are
seed0003_label7.png, and the grid has one row per label and one column per seed. A conditional
model without --labels uses all its classes. Needs paddle, numpy, pillow and pyyaml only.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import paddlegan_lite  # noqa: F401  (sets CPU math flags before Paddle loads)
from paddlegan_lite.cli import run_tool
from paddlegan_lite.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_dir", required=True, help="exported model folder")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--seeds", help="seeds to draw: 0-63, 1,5,9 or 0-3,10")
    what.add_argument(
        "--interpolate", nargs=2, metavar=("A", "B"), help="latent walk from seed A to seed B"
    )
    parser.add_argument(
        "--labels",
        help="classes for conditional models (0-9, 3 or 1,4): every seed with every label; "
        "--interpolate takes one",
    )
    parser.add_argument("--output_dir", help="write one PNG per image (or per walk frame) here")
    parser.add_argument("--grid", help="write all --seeds images as one PNG grid here")
    parser.add_argument("--steps", type=int, default=16, help="walk frames, ends included")
    parser.add_argument("--gif", help="write the walk as an animated GIF here")
    parser.add_argument("--batch_size", type=int, default=64, help="images per predictor run")
    parser.add_argument("--device", default="cpu", help="cpu (default), gpu or gpu:N")
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU math threads (0: Paddle's default, 1)"
    )
    parser.add_argument(
        "--no_mkldnn", action="store_true", help="CPU: plain kernels instead of oneDNN"
    )
    return parser


def main() -> int:
    args = build_parser().parse_args()

    from paddlegan_lite.inference import (
        Generator,
        parse_int_list,
        save_latent_walk,
        save_seed_images,
    )

    labels = parse_int_list(args.labels, "--labels") if args.labels is not None else None
    if args.seeds is not None:
        seeds = parse_int_list(args.seeds, "--seeds")
        if not (args.output_dir or args.grid):
            raise UserError("--seeds needs --output_dir (one PNG per image) and/or --grid")
    else:
        walk = [parse_int_list(s, "--interpolate") for s in args.interpolate]
        if any(len(seeds) != 1 for seeds in walk):
            raise UserError(f"--interpolate takes two seeds, got {' '.join(args.interpolate)}")
        if not (args.output_dir or args.gif):
            raise UserError("--interpolate needs --output_dir (PNG frames) and/or --gif")
        if labels is not None and len(labels) != 1:
            raise UserError(f"--interpolate walks within one class: give one label, not {labels}")
    gen = Generator(args.model_dir, args.device, args.batch_size, args.threads, not args.no_mkldnn)
    if gen.conditional and labels is None:
        if args.interpolate:
            raise UserError(
                f"--interpolate on a conditional model needs --labels with one "
                f"class (0-{gen.num_classes - 1})"
            )
        labels = list(range(gen.num_classes))

    if args.seeds is not None:
        written = save_seed_images(gen, seeds, labels, args.output_dir, args.grid)
    else:
        label = labels[0] if labels else None
        (a,), (b,) = walk
        written = save_latent_walk(gen, a, b, args.steps, label, args.output_dir, args.gif)
    print(f"wrote {len(written)} file(s): {written[0]}{' ...' if len(written) > 1 else ''}")
    return 0


if __name__ == "__main__":
    run_tool(main)
