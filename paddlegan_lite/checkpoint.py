"""Checkpoints as safetensors + JSON, written atomically; loading never unpickles.

A checkpoint is a folder `checkpoints/step_00001000/` holding `netG.safetensors`,
`netD.safetensors`, `optG.safetensors`, `optD.safetensors`, `extra.safetensors` (fixed noise)
and `state.json` (step, epoch, config, RNG seeds). It is written under a temporary name, flushed,
and renamed into place only when complete; `checkpoints/latest` is a symlink swapped atomically.
A process killed at any instant leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from paddlegan_lite.errors import UserError

FORMAT_VERSION = 1
STATE_FILE = "state.json"
TENSOR_FILES = ("netG", "netD", "optG", "optD", "extra")
_STEP_DIR = re.compile(r"^step_(\d+)$")
# Test hook: seconds to sleep between writing a checkpoint and renaming it into place, so tests
# can kill the process in that window.
_SAVE_DELAY_ENV = "PADDLEGAN_LITE_TEST_SAVE_DELAY"


class CheckpointError(UserError):
    """A checkpoint that is missing, incomplete, corrupt or made for another model."""


def layer_arrays(layer) -> dict[str, np.ndarray]:
    """A layer's parameters and buffers (BatchNorm statistics) as numpy arrays by structured name."""
    return {name: np.ascontiguousarray(t.numpy()) for name, t in layer.state_dict().items()}


def optimizer_arrays(optimizer, layer) -> dict[str, np.ndarray]:
    """Adam moments keyed `<param structured name>::<accumulator>`, not Paddle's run-local names.

    Paddle names accumulators after auto-generated parameter names (`linear_3.w_0_moment1_0`),
    which differ between processes that build layers in another order; structured names do not.
    """
    by_param_name = {p.name: name for name, p in layer.named_parameters()}
    arrays = {}
    for key, value in optimizer.state_dict().items():
        if not hasattr(value, "numpy"):
            continue  # LR scheduler dicts: our learning rates are constants from the config
        param_name, suffix = _split_accumulator_key(key, by_param_name)
        arrays[f"{by_param_name[param_name]}::{suffix}"] = np.ascontiguousarray(value.numpy())
    return arrays


def load_optimizer_arrays(optimizer, layer, arrays: dict[str, np.ndarray]) -> None:
    import paddle

    params = dict(layer.named_parameters())
    state = {}
    for key, value in arrays.items():
        name, _, suffix = key.partition("::")
        if name not in params:
            raise CheckpointError(f"optimizer state names parameter {name!r} the model lacks")
        state[f"{params[name].name}_{suffix}"] = paddle.to_tensor(value)
    optimizer.set_state_dict(state)


def load_layer_arrays(layer, arrays: dict[str, np.ndarray], what: str) -> None:
    import paddle

    expected = layer.state_dict()
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{what} weights do not fit the model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}): was the checkpoint made with another model config?"
        )
    for name, tensor in expected.items():
        if tuple(tensor.shape) != arrays[name].shape:
            raise CheckpointError(
                f"{what} weight {name} has shape {arrays[name].shape} in the checkpoint but "
                f"{tuple(tensor.shape)} in the model: another model config?"
            )
    layer.set_state_dict({k: paddle.to_tensor(v) for k, v in arrays.items()})


def save_checkpoint(ckpt_dir: str | Path, step: int, state: dict, tensors: dict) -> Path:
    """Write `step_<step>/` atomically, point `latest` at it and return its path.

    `tensors` maps each name in TENSOR_FILES to a dict of numpy arrays; `state` must be JSON.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:08d}"
    tmp = ckpt_dir / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name in TENSOR_FILES:
            save_file(tensors.get(name, {}), str(tmp / f"{name}.safetensors"))
            _fsync_file(tmp / f"{name}.safetensors")
        record = dict(state, format=FORMAT_VERSION, step=step)
        (tmp / STATE_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
        _fsync_file(tmp / STATE_FILE)
        _fsync_dir(tmp)
        delay = float(os.environ.get(_SAVE_DELAY_ENV, "0") or 0)
        if delay:
            time.sleep(delay)
        if final.exists():  # saving the same step again (e.g. Ctrl-C right after a save)
            old = ckpt_dir / f".old-{final.name}-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"cannot write checkpoint in {ckpt_dir}: {exc.strerror or exc} "
            "(the previous checkpoint is untouched)"
        ) from None
    point_link(ckpt_dir / "latest", final.name)
    _fsync_dir(ckpt_dir)
    return final


def point_link(link: Path, target_name: str) -> None:
    """Atomically make `link` a relative symlink to `target_name` in the same folder."""
    tmp = link.with_name(f".{link.name}-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target_name, tmp)
    os.replace(tmp, link)


def prune_checkpoints(ckpt_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` step folders (never one a link points to)."""
    ckpt_dir = Path(ckpt_dir)
    pinned = {os.path.realpath(p) for p in ckpt_dir.iterdir() if p.is_symlink()}
    steps = sorted(list_step_dirs(ckpt_dir), reverse=True)
    for _, path in steps[keep:]:
        if os.path.realpath(path) not in pinned:
            shutil.rmtree(path, ignore_errors=True)


def list_step_dirs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete step folder (renamed into place, so complete)."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for path in ckpt_dir.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and not path.is_symlink() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return found


def find_latest(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in `ckpt_dir`, or None."""
    ckpt_dir = Path(ckpt_dir)
    link = ckpt_dir / "latest"
    if link.is_symlink() and (link / STATE_FILE).is_file():
        return link.resolve()
    steps = list_step_dirs(ckpt_dir)
    return max(steps)[1] if steps else None


def load_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(state, tensors) from a checkpoint folder. Reads JSON and safetensors only."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a folder)")
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read {STATE_FILE} ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: {STATE_FILE} is not a paddlegan_lite state")
    tensors = {}
    for name in TENSOR_FILES:
        file = path / f"{name}.safetensors"
        try:
            tensors[name] = load_file(str(file))
        except (OSError, SafetensorError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: cannot read {file.name} ({exc})") from None
    return state, tensors


def _split_accumulator_key(key: str, by_param_name: dict) -> tuple[str, str]:
    owners = [name for name in by_param_name if key.startswith(name + "_")]
    if owners:
        param_name = max(owners, key=len)  # the longest prefix is the owning parameter
        return param_name, key[len(param_name) + 1 :]
    raise CheckpointError(f"optimizer state {key!r} belongs to no parameter of the model")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
