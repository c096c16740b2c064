"""Checkpoints as safetensors + JSON folders, written under a temporary name and renamed into place
when complete and flushed, so a crash at any instant leaves the previous one intact. Loading reads
JSON and safetensors only: it never unpickles. What a checkpoint holds is train_state.py's
business: here it is a JSON dict and named dicts of arrays."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file
from safetensors.numpy import save as safetensors_bytes

from paddlegan_lite.errors import UserError
from paddlegan_lite.logger import log

FORMAT_VERSION = 1
STATE_FILE = "state.json"
LATEST = "latest"
# A folder `step_00001000/` holds one `<name>.safetensors` file per dict of arrays and state.json:
# the caller's JSON state plus `step`, `save_seq` (which orders saves) and `tensor_files` (the
# names, so a folder missing one is incomplete; checkpoints saved before that list existed are
# read as the .safetensors files they hold).
_STEP_DIR = re.compile(r"^step_(\d+)$")
_FILE_NAME = re.compile(r"^\w+$")  # a tensor file's name: no path separators, no dots
# What a save killed midway leaves: its folder being written (.tmp), a folder being pruned (also
# .tmp), the copy of a step being saved again (.old) or the new `latest` link; each names its pid.
_LEFTOVER = re.compile(r"^\.(tmp|old)-(step_\d+)-(\d+)$")
_LINK_TMP = re.compile(r"^\.\w+-(\d+)$")
_ACCUMULATOR = re.compile(r"^(moment1|moment2|moment2_max|beta1_pow_acc|beta2_pow_acc)_\d+$")
# Formats that `paddle.load`/`torch.load` unpickle; we name them instead of calling them corrupt.
_PICKLE_SUFFIXES = (".pdparams", ".pdopt", ".pdckpt", ".pkl", ".pickle", ".pt", ".pth", ".ckpt")
# Test hook: seconds to sleep between writing a checkpoint and renaming it into place, so tests
# can kill the process in that window.
_SAVE_DELAY_ENV = "PADDLEGAN_LITE_TEST_SAVE_DELAY"


class CheckpointError(UserError):
    """A checkpoint that is missing, incomplete, corrupt, unwritable or made for another model."""


# ------------------------------------------------------------------------------------------------
# Arrays in and out of layers and optimizers
# ------------------------------------------------------------------------------------------------


def layer_arrays(layer) -> dict[str, np.ndarray]:
    """A layer's parameters and buffers (BatchNorm statistics) as numpy arrays by name."""
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
    """Give `optimizer` the Adam state from `optimizer_arrays`, each checked against its param."""
    import paddle

    params = dict(layer.named_parameters())
    state = {}
    for key, value in arrays.items():
        name, _, suffix = key.partition("::")
        if name not in params:
            raise CheckpointError(f"optimizer state names parameter {name!r} the model lacks")
        _check_accumulator(key, suffix, value, params[name])
        state[f"{params[name].name}_{suffix}"] = paddle.to_tensor(value)
    optimizer.set_state_dict(state)


def load_layer_arrays(layer, arrays: dict[str, np.ndarray], what: str) -> None:
    """Set `layer`'s weights from arrays by structured name; names, shapes and dtypes must fit."""
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
        if arrays[name].dtype != _numpy_dtype(tensor, arrays[name].dtype):
            raise CheckpointError(
                f"{what} weight {name} is {arrays[name].dtype} in the checkpoint but "
                f"{_numpy_dtype(tensor, None)} in the model"
            )
    layer.set_state_dict({k: paddle.to_tensor(v) for k, v in arrays.items()})


def _split_accumulator_key(key: str, by_param_name: dict) -> tuple[str, str]:
    owners = [name for name in by_param_name if key.startswith(name + "_")]
    if owners:
        param_name = max(owners, key=len)  # the longest prefix is the owning parameter
        return param_name, key[len(param_name) + 1 :]
    raise CheckpointError(f"optimizer state {key!r} belongs to no parameter of the model")


def _check_accumulator(key: str, suffix: str, value: np.ndarray, param) -> None:
    # Paddle only checks these at the first optimizer step, deep inside training.
    kind = _ACCUMULATOR.match(suffix)
    if kind is None:
        raise CheckpointError(f"optimizer state {key!r} is not an Adam accumulator")
    shape = tuple(param.shape) if kind.group(1).startswith("moment") else (1,)
    dtype = _numpy_dtype(param, value.dtype)
    if value.shape != shape or value.dtype != dtype:
        raise CheckpointError(
            f"optimizer state {key} is {value.dtype} {value.shape} in the checkpoint; "
            f"the model needs {dtype} {shape}"
        )


def _numpy_dtype(tensor, unknown):
    """The numpy dtype of a Paddle tensor (`unknown` for types numpy lacks, such as bfloat16)."""
    try:
        return np.dtype(str(tensor.dtype).removeprefix("paddle."))
    except TypeError:
        return unknown


# ------------------------------------------------------------------------------------------------
# Saving
# ------------------------------------------------------------------------------------------------


def save_checkpoint(ckpt_dir: str | Path, step: int, state: dict, tensors: dict) -> Path:
    """Write `step_<step>/` atomically, point `latest` at it and return its path.

    `tensors` maps file names to dicts of numpy arrays; `state` must be JSON.
    Non-finite weights are refused; any OSError (disk full, no permission) becomes a
    CheckpointError, with every earlier checkpoint untouched.
    """
    ckpt_dir = Path(ckpt_dir)
    bad_names = [name for name in tensors if not _FILE_NAME.match(name)]
    if bad_names:
        raise ValueError(f"tensor file names must be plain words, got {bad_names}")
    _check_finite(step, tensors)
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create checkpoint folder {ckpt_dir}: {_why(exc)}") from None
    _remove_leftovers(ckpt_dir)
    final = ckpt_dir / f"step_{step:08d}"
    tmp = ckpt_dir / f".tmp-{final.name}-{os.getpid()}"
    record = dict(
        state,
        format=FORMAT_VERSION,
        step=step,
        save_seq=_next_save_seq(ckpt_dir),
        tensor_files=sorted(tensors),
    )
    try:
        _write_folder(tmp, record, tensors)
        time.sleep(float(os.environ.get(_SAVE_DELAY_ENV) or 0))  # 0 unless a test asks
        _move_into_place(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"cannot write checkpoint {final}: {_why(exc)}; the previous checkpoint is untouched"
        ) from None
    try:
        point_link(ckpt_dir / LATEST, final.name)
        _fsync_dir(ckpt_dir)
    except OSError as exc:
        raise CheckpointError(
            f"saved {final} but cannot update {ckpt_dir / LATEST}: {_why(exc)} "
            "(--resume auto still finds the new checkpoint)"
        ) from None
    return final


def point_link(link: Path, target_name: str) -> None:
    """Atomically make `link` a relative symlink to `target_name` in the same folder."""
    tmp = link.with_name(f".{link.name}-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target_name, tmp)
    os.replace(tmp, link)


def prune_checkpoints(ckpt_dir: str | Path, keep: int) -> None:
    """Delete all but the `keep` most recently saved checkpoints (never one a link points to).

    Each is first renamed to a leftover name, so a crash mid-delete leaves no half folder that
    looks like a checkpoint; the next save removes what is left.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return
    pinned = {os.path.realpath(p) for p in ckpt_dir.iterdir() if p.is_symlink()}
    found = _checkpoints(ckpt_dir)
    for _, step, path in found[: max(len(found) - keep, 0)]:
        if os.path.realpath(path) in pinned:
            continue
        doomed = ckpt_dir / f".tmp-step_{step:08d}-{os.getpid()}"
        try:
            shutil.rmtree(doomed, ignore_errors=True)
            os.rename(path, doomed)
        except OSError:
            continue  # pruning is housekeeping: a folder we cannot move stays
        shutil.rmtree(doomed, ignore_errors=True)


def _check_finite(step: int, tensors: dict) -> None:
    for name, arrays in tensors.items():
        for key, array in arrays.items():
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                raise CheckpointError(
                    f"refusing to save step {step}: {name} {key} holds nan or inf values; "
                    "the previous checkpoint is untouched"
                )


def _write_folder(folder: Path, record: dict, tensors: dict) -> None:
    """Every file of a checkpoint, each flushed to disk, then the folder entry itself."""
    state_bytes = json.dumps(record, indent=1).encode("utf-8")  # before touching the disk
    folder.mkdir()
    for name in record["tensor_files"]:
        _write_durably(folder / f"{name}.safetensors", safetensors_bytes(tensors[name]))
    _write_durably(folder / STATE_FILE, state_bytes)  # last: a folder with it is complete
    _fsync_dir(folder)


def _write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`. The same step saved again (a resume that stops at once) swaps the
    old copy out first and back if the swap fails; a crash between the two renames leaves it as
    `.old-*`, which `list_step_dirs` still finds and the next save puts back."""
    if not final.exists():
        os.rename(tmp, final)
        return
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(ckpt_dir: Path) -> None:
    """Delete what killed saves left behind, except the only copy of a step, which is restored."""
    for entry in ckpt_dir.iterdir():
        leftover, link = _LEFTOVER.match(entry.name), _LINK_TMP.match(entry.name)
        try:
            if leftover and not _pid_alive(int(leftover.group(3))):
                original = ckpt_dir / leftover.group(2)
                if leftover.group(1) == "old" and not original.exists():
                    os.rename(entry, original)
                else:
                    shutil.rmtree(entry, ignore_errors=True)
            elif link and entry.is_symlink() and not _pid_alive(int(link.group(1))):
                entry.unlink()
        except OSError:
            pass  # cleaning up is best effort; a leftover never looks like a checkpoint


def _pid_alive(pid: int) -> bool:
    """Whether another live process may still be writing a leftover named after `pid`."""
    if pid == os.getpid():
        return False  # ours, from an earlier save that raised: we save one at a time
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _next_save_seq(ckpt_dir: Path) -> int:
    return max((seq for seq, _, _ in _checkpoints(ckpt_dir)), default=0) + 1


# ------------------------------------------------------------------------------------------------
# Finding and loading
# ------------------------------------------------------------------------------------------------


def list_step_dirs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest save first.

    Complete means state.json and every tensor file read back whole. Besides `step_*` folders,
    this includes the `.old-step_N-*` copy of a step whose re-save was cut off (no `step_N`).
    """
    return [(step, path) for _, step, path in _checkpoints(Path(ckpt_dir))]


def find_latest(ckpt_dir: str | Path) -> Path | None:
    """The most recently saved complete checkpoint in `ckpt_dir`, or None.

    Chosen by the save counter in state.json rather than through the `latest` link alone, so a
    crash between renaming a folder into place and moving the link, or a link to a deleted or
    damaged folder, still gives the newest complete checkpoint.
    """
    ckpt_dir = Path(ckpt_dir)
    found = _checkpoints(ckpt_dir)
    best = found[-1][2].resolve() if found else None
    link = ckpt_dir / LATEST
    if link.is_symlink() and (best is None or link.resolve() != best):
        log.warning(
            f"{link} points to {os.readlink(link)}, which is not the newest complete checkpoint;"
            f" using {best.name if best else 'none'}"
        )
    return best


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder as given, or the newest one in a run folder or its checkpoints/."""
    path = Path(path).expanduser()
    if (path / STATE_FILE).is_file() or path.is_file():
        return path  # a file: load_checkpoint says what it is (a pickle, say) better than "none"
    folders = [path / "checkpoints", path]
    if path.name == "latest":  # a `latest` link whose target is gone: the newest complete one
        folders.append(path.parent)
    for folder in folders:
        found = find_latest(folder)
        if found is not None:
            return found
    raise CheckpointError(
        f"no checkpoint at {path} (expected a checkpoint folder such as "
        "output/<run>/checkpoints/latest, or a run folder holding one)"
    )


def load_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(state, {name: {key: array}}) from a checkpoint folder. Reads JSON and safetensors only."""
    path = _existing_folder(path)
    state = _read_state(path)
    tensors = {}
    for name in _tensor_files(path, state):
        file = path / f"{name}.safetensors"
        try:
            tensors[name] = load_file(str(file))
        # TypeError: a dtype numpy lacks (bfloat16): not something we wrote.
        except (OSError, SafetensorError, ValueError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path}: cannot read {file.name} ({exc})") from None
    return state, tensors


def read_step(path: str | Path) -> int:
    """The step a checkpoint folder was saved at (state.json only; tensors are not read)."""
    return int(_read_state(_existing_folder(path))["step"])


def _existing_folder(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if path.is_file():
        raise CheckpointError(_file_instead_of_folder(path))
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a checkpoint folder)")
    return path


def _checkpoints(ckpt_dir: Path) -> list[tuple[int, int, Path]]:
    """(save_seq, step, path) of every complete checkpoint, sorted oldest save first."""
    if not ckpt_dir.is_dir():
        return []
    entries = list(ckpt_dir.iterdir())
    names = {p.name for p in entries}
    found = []
    for path in entries:
        step = _checkpoint_step(path.name, names)
        if step is None or path.is_symlink():
            continue
        try:
            state = _read_complete_state(path)
        except CheckpointError:
            continue
        seq = state.get("save_seq", 0)  # 0: saved before the counter existed
        found.append((seq if _is_count(seq) else 0, step, path))
    return sorted(found, key=lambda item: item[:2])


def _checkpoint_step(name: str, names: set) -> int | None:
    match = _STEP_DIR.match(name)
    leftover = _LEFTOVER.match(name)
    if match is None and leftover and leftover.group(1) == "old" and leftover.group(2) not in names:
        match = _STEP_DIR.match(leftover.group(2))
    return int(match.group(1)) if match else None


def _read_complete_state(path: Path) -> dict:
    """state.json of a folder whose tensor files are all whole (headers match file sizes)."""
    state = _read_state(path)
    for name in _tensor_files(path, state):
        file = path / f"{name}.safetensors"
        try:
            with safe_open(str(file), "numpy"):
                pass
        except (OSError, SafetensorError) as exc:
            raise CheckpointError(f"{path}: {name}.safetensors is damaged ({exc})") from None
    return state


def _read_state(path: Path) -> dict:
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read {STATE_FILE} ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: {STATE_FILE} is not a paddlegan_lite state")
    if not _is_count(state.get("step")):
        raise CheckpointError(f"checkpoint {path}: {STATE_FILE} has no valid step")
    return state


def _tensor_files(path: Path, state: dict) -> list[str]:
    """The names of a checkpoint's tensor files: those state.json lists, else (saved before it
    listed them) every .safetensors file in the folder."""
    names = state.get("tensor_files")
    if names is None:
        return sorted(file.stem for file in path.glob("*.safetensors"))
    if not isinstance(names, list) or not all(
        isinstance(name, str) and _FILE_NAME.match(name) for name in names
    ):
        raise CheckpointError(f"checkpoint {path}: {STATE_FILE} has an invalid tensor_files list")
    return names


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _file_instead_of_folder(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError:
        head = b""
    # Pickle protocol 2+ starts with 0x80; torch-style zip archives hold a pickle inside.
    if path.suffix.lower() in _PICKLE_SUFFIXES or head[:1] == b"\x80" or head == b"PK":
        return (
            f"{path} is a pickle-based weight file; paddlegan_lite never loads those, because "
            "unpickling can run any code the file holds. If you trust it, convert it once: "
            f"python tools/convert_weights.py -c <config> --weights {path}"
        )
    return f"checkpoint {path} is a file; expected a checkpoint folder (step_*/ or latest)"


def _why(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (free some space, or set train.output_dir to another disk)"
    return reason


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
