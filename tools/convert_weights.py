"""Turn a .pdparams file you trust into a paddlegan_lite checkpoint (safetensors + JSON).

  python tools/convert_weights.py -c configs/dcgan_mnist.yaml --weights netG.pdparams
  python tools/convert_weights.py -c configs/dcgan_mnist.yaml --weights epoch_10_checkpoint.pdparams

WARNING: reading a .pdparams file UNPICKLES it, and unpickling runs any code the file holds.
Only convert files you made yourself or trust completely. This tool is the one place where
paddlegan_lite unpickles; everything else reads the safetensors checkpoint it writes.

Input: one network's state_dict (`paddle.save(netG.state_dict(), path)`; --net says which net),
or a PaddleGAN-style checkpoint dict holding `netG` and/or `netD` state_dicts (other entries,
such as optimizer state and the epoch, are ignored: Adam starts afresh). Names and shapes must
fit the model that -c describes. A net missing from the input keeps its seeded initial weights.

Output: the first checkpoint of a run folder (train.output_dir of -c, or --output_dir), so that
  python tools/export_model.py -c <config> exports it, and
  python tools/train.py -c <config> --resume auto fine-tunes from it.
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
from paddlegan_lite.logger import log

NETS = {"netG": "generator", "netD": "discriminator"}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    parser.add_argument(
        "--weights", required=True, help="the .pdparams file to convert (it is UNPICKLED)"
    )
    parser.add_argument(
        "--net",
        choices=sorted(NETS),
        default="netG",
        help="which network a plain state_dict holds (default: netG)",
    )
    parser.add_argument(
        "--output_dir", default=None, help="run folder to write; default: train.output_dir of -c"
    )
    parser.add_argument(
        "--step", type=int, default=0, help="training step to record (default: 0, fresh run)"
    )
    args = parser.parse_args()

    from paddlegan_lite.config import load_config

    cfg = load_config(args.config, args.override)
    if args.output_dir:
        cfg.train.output_dir = args.output_dir
    if args.step < 0:
        raise UserError(f"--step must be >= 0, got {args.step}")
    # before the (slow, unpickling) read: a run folder that cannot be written is refused first
    where = "--output_dir" if args.output_dir else "train.output_dir"
    check_output_dir(cfg.train.output_dir, where)
    state_dicts = pick_state_dicts(read_trusted_pdparams(Path(args.weights)), args.net)
    path = write_checkpoint(cfg, state_dicts, args.step)
    kept = [f"{NETS[n]} left at its seeded initialisation" for n in NETS if n not in state_dicts]
    log.info(f"wrote {path} ({', '.join([*sorted(state_dicts), *kept])}); optimizer state fresh")
    return 0


def read_trusted_pdparams(path: Path):
    """paddle.load, which unpickles: the caller has said the file is trusted."""
    import paddle

    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return paddle.load(str(path), return_numpy=True)
    except Exception as exc:  # paddle.load fails in many ways on files that are not its own
        raise UserError(f"{path}: not a Paddle .pdparams file ({type(exc).__name__})") from None


def pick_state_dicts(obj, net: str) -> dict:
    """{"netG"/"netD": {name: array}} from a plain state_dict or a checkpoint dict of them."""
    import numpy as np

    if not isinstance(obj, dict):
        raise UserError(f"expected a dict of weights, the file holds a {type(obj).__name__}")
    nested = {name: obj[name] for name in NETS if isinstance(obj.get(name), dict)}
    found = nested or {net: obj}
    arrays = {}
    for name, state_dict in found.items():
        # Paddle adds bookkeeping entries such as `StructuredToParameterName@@`: not weights.
        arrays[name] = {
            key: np.ascontiguousarray(value.numpy() if hasattr(value, "numpy") else value)
            for key, value in state_dict.items()
            if hasattr(value, "shape")
        }
        if not arrays[name]:
            keys = ", ".join(map(str, list(obj)[:8]))
            raise UserError(f"no weight arrays found for {name} (top-level keys: {keys})")
    return arrays


def write_checkpoint(cfg, state_dicts: dict, step: int) -> Path:
    """Build the model of `cfg` as a run would (same seed), load the arrays (names and shapes
    checked) and save the training state as the run folder's first checkpoint."""
    import paddle

    from paddlegan_lite import checkpoint as ckpt
    from paddlegan_lite.models import build_models
    from paddlegan_lite.train_state import TrainState
    from paddlegan_lite.trainer import build_optimizers

    ckpt_dir = Path(cfg.train.output_dir) / "checkpoints"
    existing = ckpt.find_latest(ckpt_dir)
    if existing is not None:
        raise UserError(
            f"{ckpt_dir} already holds checkpoints ({existing.name}); "
            "convert into a new run folder with --output_dir"
        )
    paddle.seed(cfg.seed)  # a net missing from the input starts where a run's would
    netG, netD = build_models(cfg.model)
    for name, arrays in state_dicts.items():
        ckpt.load_layer_arrays({"netG": netG, "netD": netD}[name], arrays, NETS[name])
    # after loading: an EMA generator (train.ema_decay > 0) starts at the converted G
    state = TrainState.start(cfg, netG, netD, *build_optimizers(cfg, netG, netD))
    state.step = step
    return state.save(ckpt_dir)


if __name__ == "__main__":
    run_tool(main)
