"""Checkpoint files: atomic saves, keep-K pruning, `latest` fallbacks, leftovers of killed saves,
full disks, refused pickles (nothing unpickled, ever)."""

import errno
import json
import os
import pickle
import shutil
import subprocess

import numpy as np
import paddle
import pytest
from helpers import REPO_ROOT, Killed, pickle_payload

from paddlegan_lite import checkpoint as ckpt
from paddlegan_lite.checkpoint import (
    CheckpointError,
    find_latest,
    list_step_dirs,
    load_checkpoint,
    load_layer_arrays,
    load_optimizer_arrays,
    optimizer_arrays,
    prune_checkpoints,
    save_checkpoint,
)
from paddlegan_lite.config import load_config
from paddlegan_lite.trainer import build_trainer

TINY = ["model.ngf=8", "model.ndf=8", "model.image_size=32"]


def arrays(value: float) -> dict:
    """Tensors for every checkpoint file, netG filled with `value` (a few KB per file)."""
    return {
        "netG": {"w": np.full((32, 32), value, np.float32)},
        "netD": {"b": np.arange(1000, dtype=np.float32)},
        "optG": {"w::moment1_0": np.zeros((32, 32), np.float32)},
        "optD": {},
        "extra": {"fixed_z": np.ones((4, 5), np.float32)},
    }


def save(ckpt_dir, step, value=None):
    value = float(step) if value is None else value
    return save_checkpoint(ckpt_dir, step, {"epoch": 0, "config": {}}, arrays(value))


def saved_value(path) -> float:
    return float(load_checkpoint(path)[1]["netG"]["w"][0, 0])


def names(ckpt_dir) -> list:
    return sorted(p.name for p in ckpt_dir.iterdir())


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------------------------
# Saving, pruning, finding
# ------------------------------------------------------------------------------------------------


def test_round_trip_and_latest_link(tmp_path):
    path = save(tmp_path, 7)
    assert path == tmp_path / "step_00000007"
    assert os.readlink(tmp_path / "latest") == "step_00000007"  # relative: the run can move
    state, tensors = load_checkpoint(tmp_path / "latest")
    assert (state["step"], state["format"], state["save_seq"], state["epoch"]) == (7, 1, 1, 0)
    for name, expected in arrays(7.0).items():
        assert tensors[name].keys() == expected.keys()
        for key in expected:
            assert tensors[name][key].dtype == expected[key].dtype
            np.testing.assert_array_equal(tensors[name][key], expected[key])
    assert find_latest(tmp_path) == path.resolve()
    assert names(tmp_path) == ["latest", "step_00000007"]  # nothing temporary left


def test_prune_keeps_the_newest_k_and_linked_folders(tmp_path):
    for step in range(1, 7):
        save(tmp_path, step)
    os.symlink("step_00000001", tmp_path / "best")
    prune_checkpoints(tmp_path, 3)
    assert names(tmp_path) == [
        "best", "latest", "step_00000001", "step_00000004", "step_00000005", "step_00000006",
    ]  # fmt: skip
    assert [step for step, _ in list_step_dirs(tmp_path)] == [1, 4, 5, 6]


def test_newest_means_last_saved_not_highest_step(tmp_path):
    """A run resumed from an older checkpoint continues its own history: its saves are the
    newest even with lower step numbers, and pruning keeps them over the abandoned ones."""
    for step in (10, 20, 30):
        save(tmp_path, step)
    save(tmp_path, 15)
    assert find_latest(tmp_path).name == "step_00000015"
    prune_checkpoints(tmp_path, 2)
    assert names(tmp_path) == ["latest", "step_00000015", "step_00000030"]


@pytest.mark.parametrize("kill_at", ["_write_durably", "_move_into_place", "point_link"])
def test_killed_save_leaves_a_complete_checkpoint(tmp_path, monkeypatch, kill_at):
    """Death while writing files, before the rename, or between rename and link update."""
    save(tmp_path, 1)
    real, calls = getattr(ckpt, kill_at), []

    def dies_on_third_call(*args):
        calls.append(args)
        if len(calls) == 3 or kill_at != "_write_durably":
            raise Killed
        return real(*args)

    monkeypatch.setattr(ckpt, kill_at, dies_on_third_call)
    with pytest.raises(Killed):
        save(tmp_path, 2)
    monkeypatch.undo()
    survivor = 2 if kill_at == "point_link" else 1  # the rename had happened: step 2 is whole
    assert find_latest(tmp_path).name == f"step_{survivor:08d}"
    assert saved_value(find_latest(tmp_path)) == survivor
    save(tmp_path, 3)  # the next save clears what the dead one left
    assert names(tmp_path) == ["latest"] + [f"step_{s:08d}" for s in sorted({1, survivor, 3})]


def test_stale_leftovers_are_ignored_then_cleaned(tmp_path):
    save(tmp_path, 1)
    dead, live = dead_pid(), os.getppid()
    complete_copy = tmp_path / f".tmp-step_00000002-{dead}"
    shutil.copytree(tmp_path / "step_00000001", complete_copy)  # written, never renamed
    os.symlink("step_00000002", tmp_path / f".latest-{dead}")
    shutil.copytree(tmp_path / "step_00000001", tmp_path / f".tmp-step_00000009-{live}")
    assert find_latest(tmp_path).name == "step_00000001"
    assert [step for step, _ in list_step_dirs(tmp_path)] == [1]
    save(tmp_path, 3)
    # a live process's folder may still be in the middle of its save: left alone
    assert names(tmp_path) == [f".tmp-step_00000009-{live}", "latest", "step_00000001",
                               "step_00000003"]  # fmt: skip


@pytest.mark.parametrize(
    "damage",
    ["deleted", "tensor file missing", "tensor file truncated", "state garbage", "state missing"],
)
def test_latest_to_a_missing_or_partial_folder_falls_back(tmp_path, caplog, damage):
    for step in (1, 2, 3):
        save(tmp_path, step)
    folder = tmp_path / "step_00000003"
    if damage == "deleted":
        shutil.rmtree(folder)
    elif damage == "tensor file missing":
        (folder / "netD.safetensors").unlink()
    elif damage == "tensor file truncated":
        data = (folder / "netG.safetensors").read_bytes()
        (folder / "netG.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "state garbage":
        (folder / "state.json").write_text('{"format": 1, "st')
    else:
        (folder / "state.json").unlink()
    assert find_latest(tmp_path) == (tmp_path / "step_00000002").resolve()
    assert "latest points to step_00000003" in caplog.text
    save(tmp_path, 4)
    assert find_latest(tmp_path).name == "step_00000004"


def test_tensor_files_are_whatever_the_caller_names(tmp_path):
    """No GAN knowledge here: any dicts of arrays go to disk and come back, and state.json lists
    them so that a folder missing one is not a complete checkpoint."""
    tensors = {"classifier": {"fc.weight": np.eye(3, dtype=np.float32)}, "empty": {}}
    path = save_checkpoint(tmp_path, 1, {"note": "x"}, tensors)
    state, loaded = load_checkpoint(path)
    assert state["tensor_files"] == ["classifier", "empty"] and state["note"] == "x"
    assert loaded.keys() == tensors.keys() and loaded["empty"] == {}
    np.testing.assert_array_equal(loaded["classifier"]["fc.weight"], np.eye(3))
    with pytest.raises(ValueError, match="plain words"):
        save_checkpoint(tmp_path, 2, {}, {"../outside": {}})


def test_checkpoint_saved_before_state_json_listed_its_files_still_loads(tmp_path):
    """Such a folder (format 1 from before the list) holds its tensor files, each read back."""
    path = save(tmp_path, 1)
    state = json.loads((path / "state.json").read_text())
    del state["tensor_files"]
    (path / "state.json").write_text(json.dumps(state))
    (path / "netG_ema.safetensors").write_bytes((path / "optD.safetensors").read_bytes())  # empty
    assert find_latest(tmp_path).name == "step_00000001"
    tensors = load_checkpoint(path)[1]
    assert sorted(tensors) == sorted([*arrays(1.0), "netG_ema"]) and tensors["netG_ema"] == {}
    assert saved_value(path) == 1.0


@pytest.mark.parametrize("listed", ['"netG"', '["../netG"]', '["netG", 3]'])
def test_a_bad_tensor_files_list_is_refused(tmp_path, listed):
    path = save(tmp_path, 1)
    text = (path / "state.json").read_text()
    start = text.index('"tensor_files"')
    text = text[:start] + f'"tensor_files": {listed}' + text[text.index("]", start) + 1 :]
    (path / "state.json").write_text(text)
    with pytest.raises(CheckpointError, match="invalid tensor_files list"):
        load_checkpoint(path)
    assert find_latest(tmp_path) is None


def test_same_step_saved_again_is_replaced(tmp_path):
    save(tmp_path, 5, value=1.0)
    save(tmp_path, 5, value=2.0)
    assert saved_value(tmp_path / "latest") == 2.0
    assert names(tmp_path) == ["latest", "step_00000005"]


def test_replacement_cut_off_between_its_renames_keeps_the_step(tmp_path):
    save(tmp_path, 5, value=1.0)
    old = tmp_path / f".old-step_00000005-{dead_pid()}"
    os.rename(tmp_path / "step_00000005", old)  # as if killed before the new copy moved in
    assert find_latest(tmp_path) == old.resolve()
    assert list_step_dirs(tmp_path) == [(5, old)]
    save(tmp_path, 6)
    assert names(tmp_path) == ["latest", "step_00000005", "step_00000006"]  # put back
    assert saved_value(tmp_path / "step_00000005") == 1.0


def test_failed_replacement_puts_the_old_copy_back(tmp_path, monkeypatch):
    save(tmp_path, 5, value=1.0)
    real_rename, calls = os.rename, []

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", second_rename_fails)
    with pytest.raises(CheckpointError, match="Input/output error; the previous checkpoint"):
        save(tmp_path, 5, value=2.0)
    monkeypatch.undo()
    assert saved_value(tmp_path / "latest") == 1.0
    assert names(tmp_path) == ["latest", "step_00000005"]


# ------------------------------------------------------------------------------------------------
# Full disks, unwritable folders, non-finite weights
# ------------------------------------------------------------------------------------------------


def fill_disk_after(monkeypatch, folder, budget: int) -> None:
    """os.write to files under `folder` fails with ENOSPC once `budget` bytes are written."""
    real_write, left = os.write, [budget]

    def write(fd, data):
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder)):
            return real_write(fd, data)
        if left[0] == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = min(len(data), left[0])
        left[0] -= n
        return real_write(fd, bytes(memoryview(data)[:n]))

    monkeypatch.setattr(os, "write", write)


def test_disk_full_at_any_point_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save(tmp_path, 1)
    total = sum(p.stat().st_size for p in (tmp_path / "step_00000001").iterdir())
    for budget in (0, 10, 4096, total // 2, total - 100, total - 1):
        fill_disk_after(monkeypatch, tmp_path, budget)
        with pytest.raises(CheckpointError) as err:
            save(tmp_path, 2)
        monkeypatch.undo()
        message = str(err.value)
        assert "No space left on device (free some space" in message, budget
        assert "the previous checkpoint is untouched" in message and "\n" not in message
        assert names(tmp_path) == ["latest", "step_00000001"], budget
        assert saved_value(find_latest(tmp_path)) == 1.0


def test_disk_full_reported_at_fsync(tmp_path, monkeypatch):
    save(tmp_path, 1)

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save(tmp_path, 2)
    monkeypatch.undo()
    assert names(tmp_path) == ["latest", "step_00000001"]


def test_output_folder_that_cannot_be_created(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(CheckpointError, match=r"cannot create checkpoint folder .*a_file/ckpt"):
        save(tmp_path / "a_file" / "ckpt", 1)


def test_permission_denied_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """We run as root, where chmod stops nothing: refuse the folder creation instead."""
    save(tmp_path, 1)
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if os.path.basename(path).startswith(".tmp-"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(CheckpointError, match="step_00000002: Permission denied; the previous"):
        save(tmp_path, 2)
    monkeypatch.undo()
    assert names(tmp_path) == ["latest", "step_00000001"]


def test_link_that_cannot_be_updated(tmp_path, monkeypatch):
    save(tmp_path, 1)

    def symlink(*args):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "symlink", symlink)
    with pytest.raises(CheckpointError, match="saved .*step_00000002 but cannot update"):
        save(tmp_path, 2)
    monkeypatch.undo()
    assert find_latest(tmp_path).name == "step_00000002"  # complete, so still found


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_never_saved(tmp_path, bad):
    save(tmp_path, 1)
    tensors = arrays(2.0)
    tensors["optD"] = {"b::moment2_0": np.array([0.0, bad], np.float32)}
    with pytest.raises(CheckpointError, match="refusing to save step 2: optD b::moment2_0"):
        save_checkpoint(tmp_path, 2, {}, tensors)
    assert names(tmp_path) == ["latest", "step_00000001"]


# ------------------------------------------------------------------------------------------------
# Hostile files: pickles, foreign dtypes, bad state.json
# ------------------------------------------------------------------------------------------------


def test_pickle_planted_as_netG_safetensors_is_not_run(tmp_path):
    marker = tmp_path / "pwned"
    save(tmp_path, 1)
    save(tmp_path, 2)
    (tmp_path / "step_00000002" / "netG.safetensors").write_bytes(pickle_payload(marker))
    with pytest.raises(CheckpointError, match="cannot read netG.safetensors"):
        load_checkpoint(tmp_path / "step_00000002")
    assert find_latest(tmp_path).name == "step_00000001"  # not a complete checkpoint
    assert not marker.exists()


@pytest.mark.parametrize("name", ["evil.pdparams", "weights.bin", "model.pth"])
def test_pickle_file_given_as_checkpoint_is_refused(tmp_path, name):
    marker = tmp_path / "pwned"
    (tmp_path / name).write_bytes(pickle_payload(marker))
    with pytest.raises(CheckpointError, match="pickle-based .*tools/convert_weights.py"):
        load_checkpoint(tmp_path / name)
    assert not marker.exists()


def test_other_file_given_as_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="is a file; expected a checkpoint folder"):
        load_checkpoint(tmp_path / "notes.txt")


def forbid_pickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    real_np_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: real_np_load(*a, **dict(k, allow_pickle=False)))


def tiny_trainer(tmp_path, seed=1):
    cfg = load_config(REPO_ROOT / "configs" / "dcgan_mnist.yaml",
                      TINY + [f"train.output_dir={tmp_path}", f"seed={seed}"])  # fmt: skip
    return build_trainer(cfg, dataset=None)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    """The whole resume path (files, weights, Adam state) with pickle made to fail loudly."""
    trainer = tiny_trainer(tmp_path)
    for net, opt in ((trainer.netG, trainer.optG), (trainer.netD, trainer.optD)):
        shape = [2, 100] if net is trainer.netG else [2, 1, 32, 32]
        net(paddle.randn(shape)).mean().backward()
        opt.step()  # so Adam has moments to save
    trainer.state.step = 3
    path = trainer.save()
    forbid_pickle(monkeypatch)
    fresh = tiny_trainer(tmp_path, seed=2)
    fresh.load(path)
    assert fresh.step == 3
    for name, value in ckpt.layer_arrays(trainer.netG).items():
        np.testing.assert_array_equal(ckpt.layer_arrays(fresh.netG)[name], value)
    moments = optimizer_arrays(fresh.optD, fresh.netD)
    assert moments.keys() == optimizer_arrays(trainer.optD, trainer.netD).keys() and moments


def adam_state():
    paddle.seed(0)
    layer = paddle.nn.Linear(3, 2)
    opt = paddle.optimizer.Adam(parameters=layer.parameters())
    layer(paddle.ones([1, 3])).sum().backward()
    opt.step()
    return layer, opt, optimizer_arrays(opt, layer)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda a: a.update({"weight::moment1_0": np.zeros((5, 5), np.float32)}),
            r"float32 \(3, 2\)",
        ),
        (lambda a: a.update({"weight::moment2_0": np.zeros((3, 2), np.float64)}), "float64"),
        (lambda a: a.update({"bias::beta1_pow_acc_0": np.zeros((2,), np.float32)}), r"\(1,\)"),
        (lambda a: a.update({"weight::velocity_0": np.zeros((3, 2), np.float32)}), "not an Adam"),
        (lambda a: a.update({"conv.weight::moment1_0": np.zeros(1, np.float32)}), "lacks"),
    ],
)
def test_optimizer_state_is_checked_before_paddle_sees_it(change, message):
    layer, opt, state = adam_state()
    change(state)
    with pytest.raises(CheckpointError, match=message):
        load_optimizer_arrays(opt, layer, state)


def test_layer_weights_of_another_dtype_are_refused():
    layer, _, _ = adam_state()
    weights = {k: v.astype(np.float64) for k, v in ckpt.layer_arrays(layer).items()}
    with pytest.raises(CheckpointError, match="is float64 in the checkpoint but float32"):
        load_layer_arrays(layer, weights, "generator")


def test_tensor_file_with_a_dtype_numpy_lacks(tmp_path):
    save(tmp_path, 1)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    data = len(header).to_bytes(8, "little") + header + bytes(4)
    (tmp_path / "step_00000001" / "netG.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError, match="cannot read netG.safetensors"):
        load_checkpoint(tmp_path / "step_00000001")


@pytest.mark.parametrize(
    "text",
    ["{", "[1, 2]", '{"format": 2, "step": 1}', '{"format": 1}', '{"format": 1, "step": -1}',
     '{"format": 1, "step": "3"}', '{"format": 1, "step": true}'],
)  # fmt: skip
def test_state_json_is_validated(tmp_path, text):
    save(tmp_path, 1)
    (tmp_path / "step_00000001" / "state.json").write_text(text)
    with pytest.raises(CheckpointError, match="state.json"):
        load_checkpoint(tmp_path / "step_00000001")
    assert find_latest(tmp_path) is None
