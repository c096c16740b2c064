"""A run folder has one owner: two trainings never share it, a killed one never blocks it, and no
run writes over checkpoints it did not make (file hashes before and after)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

from helpers import REPO_ROOT, tool_env

from paddlegan_lite import run_folder
from paddlegan_lite.checkpoint import find_latest, load_checkpoint


def mlp_train_cmd(mnist_root, out, *extra):
    """A tiny MLP GAN training that checkpoints every 2 steps."""
    return [
        sys.executable, "tools/train.py", "-c", "configs/mlp_gan_mnist.yaml", "-o",
        f"data.root={mnist_root}", "data.download=false", f"train.output_dir={out}",
        "model.hidden=16", "train.batch_size=8", "train.log_interval=1", "train.save_interval=2",
        "train.sample_interval=1000", *extra,
    ]  # fmt: skip


def run_training(cmd, timeout=180):
    """Run a training command to its end."""
    return subprocess.run(
        cmd, cwd=REPO_ROOT, env=tool_env(), capture_output=True, text=True, timeout=timeout
    )


def tree_hashes(folder):
    """sha256 of every file under `folder` (symlinks by their target)."""
    hashes = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder)
            if os.path.islink(path):
                hashes[rel] = "->" + os.readlink(path)
            else:
                with open(path, "rb") as fh:
                    hashes[rel] = hashlib.sha256(fh.read()).hexdigest()
    return hashes


def one_error_line(stderr):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


def wait_for_holder(out, proc, deadline=120):
    """Until `proc` holds the run folder's lock (its pid in the lock file) and has trained."""
    lock, end = out / run_folder.LOCK_FILE, time.time() + deadline
    while time.time() < end and proc.poll() is None:
        try:
            holder = json.loads(lock.read_text())
        except (OSError, ValueError):
            holder = {}
        if holder.get("pid") == proc.pid and (out / "checkpoints" / "latest").exists():
            return
        time.sleep(0.2)
    raise AssertionError(f"training never took the run folder (exit {proc.poll()})")


def test_two_trainings_started_together_one_runs_the_other_refuses(repo_root, mnist_root, tmp_path):
    out = tmp_path / "run"
    cmd = mlp_train_cmd(mnist_root, out, "train.max_steps=6")
    procs = [
        subprocess.Popen(cmd, cwd=repo_root, env=tool_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    results = [(p.returncode, *p.communicate(timeout=300)) for p in procs]
    results = [(p.returncode, out_, err) for p, (_, out_, err) in zip(procs, results)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, _, err in results]
    loser = next(err for code, _, err in results if code == 2)
    line = one_error_line(loser)
    # whichever came second: refused while the first held the folder, or after it had saved
    assert "is in use by another training (pid" in line or "already holds checkpoints" in line
    rows = [json.loads(r)["step"] for r in (out / "metrics.jsonl").open()]
    assert rows == [1, 2, 3, 4, 5, 6]  # one run's rows, not two interleaved


def test_second_training_names_the_holder_and_a_killed_holder_does_not_block(
    repo_root, mnist_root, tmp_path
):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        mlp_train_cmd(mnist_root, out, "train.epochs=0", "train.max_steps=100000"),
        cwd=repo_root, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_holder(out, holder)
        second = run_training(mlp_train_cmd(mnist_root, out, "train.max_steps=4"))
        assert second.returncode == 2
        line = one_error_line(second.stderr)
        assert f"is in use by another training (pid {holder.pid} on " in line
        assert f"train.output_dir={out}" in line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    # killed mid-run: the kernel dropped its lock; the next run continues it
    saved = load_checkpoint(find_latest(out / "checkpoints"))[0]["step"]
    resumed = run_training(mlp_train_cmd(mnist_root, out, f"train.max_steps={saved + 2}")
                  + ["--resume", "auto"])  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(find_latest(out / "checkpoints"))[0]["step"] == saved + 2


def test_fresh_run_never_rewrites_an_existing_checkpoint(repo_root, mnist_root, tmp_path):
    out = tmp_path / "run"
    first = run_training(mlp_train_cmd(mnist_root, out, "train.max_steps=4"))
    assert first.returncode == 0, first.stderr[-2000:]
    assert {"step_00000002", "step_00000004"} <= {p.name for p in (out / "checkpoints").iterdir()}
    before = tree_hashes(out / "checkpoints")

    again = run_training(mlp_train_cmd(mnist_root, out, "train.max_steps=4", "seed=1"))
    assert again.returncode == 2
    line = one_error_line(again.stderr)
    assert "already holds checkpoints of another run (newest: step 4)" in line
    assert "--resume auto" in line and "another train.output_dir" in line

    # resuming an older step would save steps 3 and 4 over the newer ones
    older = run_training(mlp_train_cmd(mnist_root, out, "train.max_steps=6")
                + ["--resume", str(out / "checkpoints" / "step_00000002")])  # fmt: skip
    assert older.returncode == 2
    assert "would overwrite the newer checkpoints" in one_error_line(older.stderr)
    assert tree_hashes(out / "checkpoints") == before

    onward = run_training(
        mlp_train_cmd(mnist_root, out, "train.max_steps=6") + ["--resume", "auto"]
    )
    assert onward.returncode == 0, onward.stderr[-2000:]
    after = tree_hashes(out / "checkpoints")
    # the newest two are kept (train.keep_checkpoints=3 prunes step 2); none was rewritten
    kept = {k: v for k, v in before.items() if k in after and not k.startswith("latest")}
    assert kept and all(after[k] == v for k, v in kept.items())
