"""Faults at random instants never cost a run: tools/train.py is SIGKILLed (at start-up, mid-step,
mid-save), interrupted twice mid-save or sent SIGTERM, again and again; each restart with
`--resume auto` finds a complete checkpoint, and the run ends at the same step with the same
weights as one never interrupted."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from data_files import write_mnist_idx
from helpers import REPO_ROOT, tool_env

from paddlegan_lite.checkpoint import find_latest, list_step_dirs, load_checkpoint

# Faults per run; PADDLEGAN_LITE_CRASH_FAULTS=100 makes a soak test of it.
FAULTS = int(os.environ.get("PADDLEGAN_LITE_CRASH_FAULTS", "12"))
TOTAL_STEPS = max(150, 6 * FAULTS)  # long enough that the faults, not the run, end first
MODES = ("kill-start-up", "kill-training", "kill-mid-save", "sigint-twice-mid-save", "sigterm")
SAVE_DELAYS = ("0", "0.03", "0.2")  # seconds between writing a checkpoint and renaming it


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Tiny MNIST files and a private copy of the config: every process of a test reads the
    same settings even if someone edits configs/ meanwhile."""
    root = tmp_path_factory.mktemp("inputs")
    write_mnist_idx(root / "mnist", n=40, seed=3)
    shutil.copy(REPO_ROOT / "configs" / "dcgan_mnist.yaml", root / "dcgan.yaml")
    return root


def crash_run_cmd(inputs, out, *extra):
    """The tiny DCGAN run the faults hit, always with --resume auto: each restart continues it."""
    return [
        sys.executable, "tools/train.py", "-c", str(inputs / "dcgan.yaml"), "-o",
        f"data.root={inputs / 'mnist'}", "data.download=false", f"train.output_dir={out}",
        "model.ngf=8", "model.ndf=8", "model.image_size=32", "train.batch_size=8",
        "train.epochs=0", f"train.max_steps={TOTAL_STEPS}", "train.log_interval=5",
        "train.sample_interval=1000",
        "train.save_interval=3", "train.keep_checkpoints=2", *extra, "--resume", "auto",
    ]  # fmt: skip


def start(cmd, repo_root, log_path, save_delay="0"):
    env = dict(tool_env(), PADDLEGAN_LITE_TEST_SAVE_DELAY=save_delay)
    with open(log_path, "w") as log:  # a file, not a pipe: nobody has to drain it
        return subprocess.Popen(cmd, cwd=repo_root, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(condition, proc, timeout=30.0) -> bool:
    """Poll until condition() holds (True) or the process ends or time runs out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.005)
    return False


def leftovers(ckpt_dir, pid) -> list[str]:
    """The temporary folders process `pid` has in ckpt_dir (older runs' leftovers not counted)."""
    if not ckpt_dir.is_dir():
        return []
    return [
        p.name
        for p in ckpt_dir.iterdir()
        if p.name.startswith(".tmp-") and p.name.endswith(f"-{pid}")
    ]


def saving(ckpt_dir, proc):
    return lambda: bool(leftovers(ckpt_dir, proc.pid))


def inflict(mode, proc, rng, log_path, ckpt_dir) -> bool:
    """Apply one fault to a running training process; False if it finished first."""
    training = lambda: "device:" in log_path.read_text()  # noqa: E731
    if mode == "kill-start-up":  # imports, data, models, resuming, first steps
        wait_for(training, proc, timeout=rng.uniform(0.0, 3.0))
        time.sleep(rng.uniform(0.0, 0.1))
    elif mode == "kill-training":
        if not wait_for(training, proc):
            return False
        time.sleep(rng.uniform(0.0, 0.4))
    elif not (wait_for(training, proc) and wait_for(saving(ckpt_dir, proc), proc)):
        return False
    if proc.poll() is not None:
        return False
    if mode.startswith("kill"):
        time.sleep(rng.uniform(0.0, 0.02) if mode == "kill-mid-save" else 0.0)
        proc.kill()
    elif mode == "sigint-twice-mid-save":  # the second Ctrl-C stops at once, save or not
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
    else:
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return True


def assert_same_state(tensors, expected, context: str) -> None:
    for part in ("netG", "netD", "optG", "optD", "extra"):
        assert tensors[part].keys() == expected[part].keys(), context
        for key in tensors[part]:
            np.testing.assert_allclose(
                tensors[part][key], expected[part][key], rtol=1e-5, atol=1e-6,
                err_msg=f"{part} {key}; {context}",
            )  # fmt: skip


def test_random_faults_never_lose_the_run(repo_root, inputs, tmp_path):
    # The uninterrupted run first, keeping every checkpoint: each fault's survivor must equal it.
    clean = tmp_path / "clean" / "checkpoints"
    proc = subprocess.run(
        crash_run_cmd(inputs, clean.parent, "train.keep_checkpoints=1000"), cwd=repo_root,
        env=tool_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    # A failure prints its seed; PADDLEGAN_LITE_CRASH_SEED=<seed> replays the same fault plan.
    seed = int(os.environ.get("PADDLEGAN_LITE_CRASH_SEED") or int.from_bytes(os.urandom(4), "big"))
    rng = random.Random(seed)
    out, ckpt_dir = tmp_path / "faulty", tmp_path / "faulty" / "checkpoints"
    modes = [MODES[i % len(MODES)] for i in range(FAULTS)]
    rng.shuffle(modes)
    table, last_step = [], 0
    for i, mode in enumerate(modes):
        delay = "0.2" if "mid-save" in mode or mode == "sigterm" else rng.choice(SAVE_DELAYS)
        log_path = tmp_path / f"run_{i}.log"
        proc = start(crash_run_cmd(inputs, out), repo_root, log_path, delay)
        if not inflict(mode, proc, rng, log_path, ckpt_dir):
            proc.wait(timeout=60)  # the run ended before the fault: it must have finished
            assert proc.returncode == 0, f"seed {seed}: {log_path.read_text()[-3000:]}"
            break
        context = f"seed {seed}, fault {i} ({mode}), log:\n{log_path.read_text()[-2000:]}"
        # (a second Ctrl-C that lands after the save has finished may find the run done: 0)
        expected = {"sigterm": {0}, "sigint-twice-mid-save": {130, 0}}.get(mode, {-signal.SIGKILL})
        assert proc.returncode in expected, context
        mid_save = bool(leftovers(ckpt_dir, proc.pid))
        latest = find_latest(ckpt_dir) if ckpt_dir.is_dir() else None
        step = 0
        if latest is not None:
            state, tensors = load_checkpoint(latest)  # must load: complete and whole
            step = state["step"]
            if (clean / f"step_{step:08d}").is_dir():  # (SIGTERM may save between intervals)
                assert_same_state(tensors, load_checkpoint(clean / f"step_{step:08d}")[1], context)
        assert step >= last_step, context  # no fault undoes a finished save
        table.append((mode, delay, mid_save, last_step, step))
        last_step = step

    final = subprocess.run(
        crash_run_cmd(inputs, out), cwd=repo_root, env=tool_env(), capture_output=True,
        text=True, timeout=240,
    )  # fmt: skip
    assert final.returncode == 0, f"seed {seed}: {final.stderr[-2000:]}"
    print(f"\nseed {seed}; mode, save delay, leftover .tmp-*, step before, step after")
    print("\n".join(" ".join(map(str, row)) for row in table))
    assert len(table) >= FAULTS // 2, f"seed {seed}: the run finished too early: {table}"
    state, tensors = load_checkpoint(find_latest(ckpt_dir))
    assert state["step"] == TOTAL_STEPS
    expected = load_checkpoint(clean / f"step_{TOTAL_STEPS:08d}")[1]
    assert_same_state(tensors, expected, f"seed {seed}, final run")
    # (metrics.jsonl rows are not checked here: see test_kill_while_resuming_keeps_logged_rows)
    stray = [p.name for p in ckpt_dir.iterdir() if p.name.startswith(".")]
    assert stray == [], stray  # the final run's saves cleaned up after the faults
    assert len(list_step_dirs(ckpt_dir)) == 2  # train.keep_checkpoints


def test_sigterm_mid_save_finishes_and_leaves_a_resumable_latest(repo_root, inputs, tmp_path):
    """SIGTERM arriving while a checkpoint is being written: the save completes, the tool exits
    0 with the step saved, and `--resume auto` continues from it."""
    out = tmp_path / "run"
    cmd = crash_run_cmd(inputs, out, "train.log_interval=1")
    cmd[cmd.index(f"train.max_steps={TOTAL_STEPS}")] = "train.max_steps=100000"
    proc = start(cmd, repo_root, tmp_path / "run.log", save_delay="0.3")
    assert wait_for(saving(out / "checkpoints", proc), proc, timeout=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, (tmp_path / "run.log").read_text()[-2000:]
    log_text = (tmp_path / "run.log").read_text()
    assert "SIGTERM received" in log_text and "Traceback" not in log_text
    latest = out / "checkpoints" / "latest"
    state, _ = load_checkpoint(latest)
    assert find_latest(out / "checkpoints") == latest.resolve()
    assert [p.name for p in latest.parent.iterdir() if p.name.startswith(".")] == []
    step = state["step"]
    resumed = subprocess.run(
        cmd[:-2] + [f"train.max_steps={step + 2}", "--resume", "auto"], cwd=repo_root,
        env=tool_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at step {step}" in resumed.stdout
    assert load_checkpoint(latest)[0]["step"] == step + 2
