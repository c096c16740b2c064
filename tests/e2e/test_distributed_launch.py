"""Data-parallel training: 2 CPU processes (gloo) through `python -m paddle.distributed.launch`.

Each launched rank runs tools/train.py inside a small worker script that records which files the
rank writes (an audit hook) and the weights it holds at the end (`rank<r>.npz`).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import REPO_ROOT, tool_env

from paddlegan_lite.checkpoint import find_latest, load_checkpoint
from paddlegan_lite.config import load_config
from paddlegan_lite.trainer import train

WORKER = r'''
"""tools/train.py as one launched rank; records the files it writes and the weights it ends with."""
import json
import os
import runpy
import signal
import sys

run_dir, report_dir, tool = (os.path.abspath(a) for a in sys.argv[1:4])
sys.argv = [tool, *sys.argv[4:]]
rank = os.environ["PADDLE_TRAINER_ID"]
writes = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
CHANGES = ("os.mkdir", "os.rename", "os.symlink", "os.remove", "os.rmdir", "shutil.rmtree")


def in_run_dir(path):
    return isinstance(path, (str, os.PathLike)) and os.path.abspath(path).startswith(run_dir)


def record(event, args):
    if event == "open":
        path, mode, flags = args
        writing = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & WRITE_FLAGS)
        if writing and in_run_dir(path):
            writes.append(os.fspath(path))
    elif event in CHANGES:
        writes.extend(os.fspath(a) for a in args if in_run_dir(a))


import numpy as np  # noqa: E402

from paddlegan_lite.ops.process import configure_process_env  # noqa: E402

configure_process_env()  # before Paddle loads, as tools/train.py
from paddlegan_lite import trainer  # noqa: E402

fit = trainer.GANTrainer.fit


def fit_and_dump(self, *args, **kwargs):
    try:
        return fit(self, *args, **kwargs)
    finally:
        arrays = {f"{name}/{key}": value.numpy() for name, net in (("netG", self.netG),
                  ("netD", self.netD)) for key, value in net.state_dict().items()}
        np.savez(os.path.join(report_dir, f"rank{rank}.npz"), **arrays)


trainer.GANTrainer.fit = fit_and_dump
# The launcher's Ctrl-C sends SIGTERM three times: once fit() has put back the handler it found,
# a late one must not kill this rank before its report is written.
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.addaudithook(record)
try:
    runpy.run_path(tool, run_name="__main__")
finally:
    with open(os.path.join(report_dir, f"rank{rank}_writes.json"), "w") as fh:
        json.dump(writes, fh)
'''

# Each rank's per-device batch; the MLP GAN has no BatchNorm and no dropout, so 2 processes must
# match 1 process with twice the batch (same data, same noise: both are sliced from global draws).
BATCH = 8
TINY_MLP = ["model.hidden=32", "train.log_interval=1", "train.sample_interval=3"]


def overrides(mnist_root, run_dir, *extra):
    return [f"data.root={mnist_root}", "data.download=false", f"train.output_dir={run_dir}",
            "train.save_interval=100", *extra]  # fmt: skip


def launch_command(tmp_path, config, run_dir, args):
    """(command, env, reports folder) running tools/train.py on 2 CPU processes, launched."""
    reports = tmp_path / f"reports-{run_dir.name}"
    reports.mkdir(exist_ok=True)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = tool_env()
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # a shared 2-core machine
    cmd = [
        sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
        "--log_dir", str(tmp_path / "launch"), str(worker), str(run_dir), str(reports),
        "tools/train.py", "-c", config, *args,
    ]  # fmt: skip
    return cmd, env, reports


def worker_logs(tmp_path):
    return "".join(p.read_text() for p in sorted((tmp_path / "launch").glob("workerlog.*")))


def launch(repo_root, tmp_path, config, run_dir, args):
    """Run tools/train.py on 2 CPU processes with Paddle's launcher; returns (stdout, reports)."""
    cmd, env, reports = launch_command(tmp_path, config, run_dir, args)
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=180)
    logs = worker_logs(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:] + logs[-4000:]
    return proc.stdout, reports


def rank_weights(reports, rank):
    with np.load(reports / f"rank{rank}.npz") as arrays:
        return {key: arrays[key] for key in arrays.files}


def rank_writes(reports, rank):
    return json.loads((reports / f"rank{rank}_writes.json").read_text())


def assert_same_training_state(a, b, steps):
    """Same weights to within 1% of an Adam step per step (Adam's eps turns float noise in a
    near-zero gradient into part of a step), and Adam moments, which hold the gradients
    themselves, to float32 precision of their scale."""
    lr = 3e-4  # configs/mlp_gan_mnist.yaml, both nets
    for part in ("netG", "netD"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            np.testing.assert_allclose(a[part][key], b[part][key], rtol=0, atol=0.01 * lr * steps,
                                       err_msg=f"{part} {key}")  # fmt: skip
    for part in ("optG", "optD"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            scale = np.abs(b[part][key]).max()
            np.testing.assert_allclose(a[part][key], b[part][key], rtol=1e-5, atol=1e-5 * scale,
                                       err_msg=f"{part} {key}")  # fmt: skip


def one_process_run(repo_root, mnist_root, run_dir, batch_size, steps):
    cfg = load_config(
        repo_root / "configs" / "mlp_gan_mnist.yaml",
        overrides(mnist_root, run_dir, *TINY_MLP, f"train.batch_size={batch_size}",
                  f"train.max_steps={steps}"),
    )  # fmt: skip
    train(cfg)
    return load_checkpoint(find_latest(run_dir / "checkpoints"))


@pytest.fixture(scope="module")
def one_step_run(mnist_root, tmp_path_factory):
    """One step of the MLP GAN on 2 processes (batch 8 each), saved as the run's checkpoint."""
    tmp_path = tmp_path_factory.mktemp("two_ranks")
    run_dir = tmp_path / "run"
    args = ["-o", *overrides(mnist_root, run_dir, *TINY_MLP, f"train.batch_size={BATCH}",
                             "train.max_steps=1")]  # fmt: skip
    stdout, reports = launch(REPO_ROOT, tmp_path, "configs/mlp_gan_mnist.yaml", run_dir, args)
    return run_dir, stdout, reports


# ---------------------------------------------------------------------- 2 processes, launched
def test_ranks_hold_identical_weights_and_rank_zero_saved_them(one_step_run):
    run_dir, stdout, reports = one_step_run
    rank0, rank1 = rank_weights(reports, 0), rank_weights(reports, 1)
    assert rank0.keys() == rank1.keys() and len(rank0) >= 12
    for key in rank0:  # the same all-reduced gradients and the same Adam step on every rank
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)
    state, tensors = load_checkpoint(find_latest(run_dir / "checkpoints"))
    assert state["step"] == 1
    for key, value in rank0.items():
        net, name = key.split("/")
        np.testing.assert_array_equal(tensors[net][name], value, err_msg=key)
    assert "batch 8 per device, global batch 16" in stdout
    assert "learning rates as configured (distributed.scale_lr=false)" in stdout


def test_two_processes_step_like_one_process_with_twice_the_batch(
    repo_root, mnist_root, tmp_path, one_step_run
):
    """What data parallelism promises: mean gradients over 2 x 8 images == over 16 images."""
    run_dir, _, _ = one_step_run
    _, two = load_checkpoint(find_latest(run_dir / "checkpoints"))
    _, one = one_process_run(repo_root, mnist_root, tmp_path / "one16", 2 * BATCH, steps=1)
    assert_same_training_state(two, one, steps=1)
    # and the check can fail: one process with the per-device batch steps elsewhere
    _, small = one_process_run(repo_root, mnist_root, tmp_path / "one8", BATCH, steps=1)
    differs = [not np.allclose(two["optD"][k], small["optD"][k], rtol=1e-3) for k in two["optD"]]
    assert any(differs)


def test_all_ranks_resume_and_only_rank_zero_writes(repo_root, mnist_root, tmp_path, one_step_run):
    """Resume the 1-step run to step 4 (crossing epochs, mid-epoch start) on 2 processes: equal
    to 4 uninterrupted steps of 1 process with the global batch; rank 1 wrote nothing."""
    first_dir, _, first_reports = one_step_run
    run_dir = tmp_path / "run"
    shutil.copytree(first_dir, run_dir, symlinks=True)
    args = ["-o", *overrides(mnist_root, run_dir, *TINY_MLP, f"train.batch_size={BATCH}",
                             "train.max_steps=4"), "--resume", "auto"]  # fmt: skip
    stdout, reports = launch(repo_root, tmp_path, "configs/mlp_gan_mnist.yaml", run_dir, args)
    assert "resumed from" in stdout and "at step 1" in stdout

    rank0, rank1 = rank_weights(reports, 0), rank_weights(reports, 1)
    for key in rank0:  # rank 1 loaded the checkpoint too (its own init would diverge)
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)
    state, two = load_checkpoint(find_latest(run_dir / "checkpoints"))
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (4, 1, 2)
    _, one = one_process_run(repo_root, mnist_root, tmp_path / "one16", 2 * BATCH, steps=4)
    assert_same_training_state(two, one, steps=4)

    for reports_dir in (first_reports, reports):
        assert rank_writes(reports_dir, 1) == []
        written = {os.path.relpath(p, run_dir if reports_dir == reports else first_dir)
                   for p in rank_writes(reports_dir, 0)}  # fmt: skip
        assert {"config.yaml", "metrics.jsonl"} <= written
        assert any(p.startswith("vdl" + os.sep) for p in written)
        assert any(p.startswith("checkpoints" + os.sep) for p in written)
    assert len(list((run_dir / "vdl").iterdir())) == 2  # one VisualDL writer per launch
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]  # each step logged once, by rank 0
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [
        "step_00000001.png", "step_00000003.png", "step_00000004.png",
    ]  # fmt: skip


def test_acgan_with_batchnorm_dropout_and_d_steps(repo_root, mnist_root, tmp_path):
    """Conv nets with BatchNorm (per-device statistics), dropout, labels, an EMA and G steps every
    other D step (G's forward then has no backward): ranks still agree on every trained weight."""
    run_dir = tmp_path / "run"
    args = ["-o", *overrides(mnist_root, run_dir, "model.ngf=8", "model.ndf=4",
                             "train.batch_size=4", "train.max_steps=3", "train.d_steps=2",
                             "train.ema_decay=0.9", "train.log_interval=1",
                             "distributed.scale_lr=true")]  # fmt: skip
    stdout, reports = launch(repo_root, tmp_path, "configs/acgan_mnist.yaml", run_dir, args)
    assert "learning rates x2 (distributed.scale_lr): G 0.0004, D 0.0004" in stdout
    rank0, rank1 = rank_weights(reports, 0), rank_weights(reports, 1)
    trained = [k for k in rank0 if not k.endswith(("_mean", "_variance"))]
    assert len(trained) >= 20
    for key in trained:
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)
    # BatchNorm running statistics come from each device's own batch
    stats = [k for k in rank0 if k.endswith("_mean")]
    assert stats and any(not np.array_equal(rank0[k], rank1[k]) for k in stats)
    _, tensors = load_checkpoint(find_latest(run_dir / "checkpoints"))
    for key, value in rank0.items():  # the checkpoint holds rank 0's, under single-process names
        net, name = key.split("/")
        np.testing.assert_array_equal(tensors[net][name], value, err_msg=key)
    assert rank_writes(reports, 1) == []


def test_sngan_projection_d_spectral_norm_and_lr_decay(repo_root, mnist_root, tmp_path):
    """The conditional SNGAN (conditional BatchNorm in G, projection D, spectral norm's power
    iteration on every D forward, a linear lr decay): ranks still agree on every trained weight
    and on spectral norm's u and v."""
    run_dir = tmp_path / "run"
    args = ["-o", *overrides(mnist_root, run_dir, "model.ngf=8", "model.ndf=8",
                             "data.name=mnist", "model.channels=1", "train.batch_size=4",
                             "train.max_steps=3", "train.log_interval=1")]  # fmt: skip
    stdout, reports = launch(repo_root, tmp_path, "configs/sngan_cifar10_cond.yaml", run_dir, args)
    rank0, rank1 = rank_weights(reports, 0), rank_weights(reports, 1)
    trained = [k for k in rank0 if not k.endswith(("_mean", "_variance"))]
    assert any(k.endswith("weight_u") for k in trained) and len(trained) >= 40
    for key in trained:
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)
    assert rank_writes(reports, 1) == []


def test_ctrl_c_stops_every_rank_after_the_same_step(repo_root, mnist_root, tmp_path):
    """Ctrl-C to the launcher (which sends each rank SIGTERM, three times): the ranks agree on
    the step to stop after, rank 0 saves it, and every rank ends with the saved weights."""
    run_dir = tmp_path / "run"
    args = ["-o", *overrides(mnist_root, run_dir, *TINY_MLP, "train.batch_size=4",
                             "train.max_steps=100000")]  # fmt: skip
    cmd, env, reports = launch_command(tmp_path, "configs/mlp_gan_mnist.yaml", run_dir, args)
    proc = subprocess.Popen(
        cmd, cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    deadline, seen = time.time() + 120, ""
    while "step 5/" not in seen and time.time() < deadline and proc.poll() is None:
        seen += proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    logs = worker_logs(tmp_path)
    assert "step 5/" in seen, logs[-3000:]

    state, tensors = load_checkpoint(find_latest(run_dir / "checkpoints"))
    assert 5 <= state["step"] < 100000
    assert f"SIGTERM received: saving step {state['step']} and stopping" in logs, logs[-3000:]
    assert sorted(p.name for p in reports.glob("rank*.npz")) == ["rank0.npz", "rank1.npz"], logs
    rank0, rank1 = rank_weights(reports, 0), rank_weights(reports, 1)
    for key, value in rank0.items():
        net, name = key.split("/")
        np.testing.assert_array_equal(tensors[net][name], value, err_msg=key)
        np.testing.assert_array_equal(rank1[key], value, err_msg=key)
