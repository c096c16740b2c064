"""Generate images from an exported model (tools/export_model.py) with Paddle Inference.

  python tools/infer.py --model_dir inference/dcgan_cifar10 --seeds 0-63 --output_dir gen/
  python tools/infer.py --model_dir inference/acgan_mnist --seeds 0-9 --labels 0-9 --grid grid.png
  python tools/infer.py --model_dir inference/dcgan_cifar10 --interpolate 3 7 --steps 30 --gif w.gif

Seed s always gives the same image: z = numpy.random.default_rng(s).standard_normal(nz), in any
batch. With --labels (conditional models), every seed is drawn with every label: files are
seed0003_label7.png, and the grid has one row per label and one column per seed. A conditional
model without --labels uses all its classes. A seed or label named twice is drawn once.

One call makes at most 10,000 images (MAX_IMAGES in paddlegan_lite/inference.py), and a grid may
take at most 512 MiB of memory (GRID_MAX_BYTES; the tool names the size when it refuses): split a
larger range over several calls. Files are written as each batch finishes.
Needs paddle, numpy, pillow and pyyaml only.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from paddlegan_lite.ops.process import configure_process_env

configure_process_env()  # before Paddle loads: MKL's fast path on AMD, allocator, quiet logs
from paddlegan_lite.cli import add_predictor_args, predictor_parser, run_tool
from paddlegan_lite.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = predictor_parser(__doc__)
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
    add_predictor_args(parser)
    return parser


def main() -> int:
    args = build_parser().parse_args()

    from paddlegan_lite.cli import check_output_dir, check_output_file
    from paddlegan_lite.inference import (
        MAX_IMAGES,
        Generator,
        count_unique,
        parse_int_list,
        parse_int_ranges,
        save_latent_walk,
        save_seed_images,
    )

    def unique_ints(text: str, what: str) -> list[int]:
        values = parse_int_list(text, what, MAX_IMAGES)
        named = sum(len(r) for r in parse_int_ranges(text, what))
        if named > len(values):
            print(f"note: {what} {text} names {named} values, {len(values)} distinct: each once")
        return values

    labels = unique_ints(args.labels, "--labels") if args.labels is not None else None
    if args.seeds is not None:
        seeds = unique_ints(args.seeds, "--seeds")
        if args.gif:
            raise UserError("--gif writes a latent walk: use it with --interpolate, not --seeds")
        if not (args.output_dir or args.grid):
            raise UserError("--seeds needs --output_dir (one PNG per image) and/or --grid")
    else:
        walk = [parse_int_ranges(s, "--interpolate") for s in args.interpolate]
        if any(count_unique(ranges) != 1 for ranges in walk):
            raise UserError(f"--interpolate takes two seeds, got {' '.join(args.interpolate)}")
        if args.grid:
            raise UserError("--grid shows --seeds images: for a walk use --gif or --output_dir")
        if not (args.output_dir or args.gif):
            raise UserError("--interpolate needs --output_dir (PNG frames) and/or --gif")
        if labels is not None and len(labels) != 1:
            raise UserError(f"--interpolate walks within one class: give one label, not {labels}")
    # every path is checked before the model loads, so a typo costs no generation
    if args.output_dir:
        check_output_dir(args.output_dir, "--output_dir")
    if args.grid:
        check_output_file(args.grid, (".png",), "--grid")
    if args.gif:
        check_output_file(args.gif, (".gif",), "--gif")
    gen = Generator(args.model_dir, args.device, args.batch_size, args.threads, not args.no_mkldnn)
    if gen.conditional and labels is None:
        if args.interpolate:
            raise UserError(
                f"--interpolate on a conditional model needs --labels with one "
                f"class (0-{gen.num_classes - 1})"
            )
        labels = list(range(gen.num_classes))

    if args.seeds is not None:
        written = save_seed_images(
            gen, seeds, labels, args.output_dir, args.grid, progress=progress_printer()
        )
    else:
        label = labels[0] if labels else None
        a, b = (ranges[0].start for ranges in walk)
        written = save_latent_walk(gen, a, b, args.steps, label, args.output_dir, args.gif)
    print(f"wrote {len(written)} file(s): {written[0]}{' ...' if len(written) > 1 else ''}")
    return 0


def progress_printer(every_seconds: float = 10.0):
    """A `progress(done, total)` that prints a line at most every `every_seconds`."""
    last = time.monotonic()

    def progress(done: int, total: int) -> None:
        nonlocal last
        if done < total and time.monotonic() - last >= every_seconds:
            print(f"{done:,}/{total:,} images", flush=True)
            last = time.monotonic()

    return progress


if __name__ == "__main__":
    run_tool(main)
