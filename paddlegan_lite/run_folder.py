"""Who may write a run folder: one training at a time, and never over another run's checkpoints.

A training holds an exclusive `flock` on `<run_dir>/.lock` for its whole life. The kernel drops
the lock when the process ends however it ends (exit, crash, SIGKILL), so a killed run never
leaves the folder stuck; the file itself only names the last holder for error messages.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from paddlegan_lite import checkpoint as ckpt
from paddlegan_lite import distributed
from paddlegan_lite.errors import UserError

LOCK_FILE = ".lock"


class RunFolderLock:
    """An exclusive lock on a run folder, held until `release()` or the process ends."""

    def __init__(self, run_dir: Path, handle):
        self.run_dir, self._handle = run_dir, handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor drops the flock
            self._handle = None


def claim(run_dir: str | Path) -> RunFolderLock:
    """Lock `run_dir` (created if needed) for this process, or refuse naming the holder."""
    run_dir = Path(run_dir)
    where = f"train.output_dir={run_dir}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK_FILE, "a+", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{where}: cannot write the run folder ({exc.strerror or exc})") from None
    if not _try_lock(handle):
        holder = _describe(_read_holder(handle))
        handle.close()
        raise UserError(
            f"{where} is in use by another training ({holder}): wait for it to finish, or choose "
            "another train.output_dir"
        )
    handle.seek(0)
    handle.truncate()
    handle.write(
        json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv),
            }
        )
    )
    handle.flush()
    return RunFolderLock(run_dir, handle)


def _read_holder(handle, wait_s: float = 2.0) -> str:
    """The holder's record; it writes it just after taking the lock, so an empty file is waited
    for briefly (two runs started together)."""
    deadline = time.monotonic() + wait_s
    while True:
        handle.seek(0)
        text = handle.read()
        if text.strip() or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def _try_lock(handle) -> bool:
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks to take, nothing to refuse with
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True  # a filesystem without flock support: run unguarded rather than not at all
    return True


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


@contextmanager
def claimed(run_dir: Path):
    """Rank 0 holds `run_dir`'s lock for the block; every rank learns if it could not be had."""
    lock, refusal = None, None
    if distributed.is_main():
        try:
            lock = claim(run_dir)
        except UserError as exc:
            refusal = exc
    if distributed.any_rank(refusal is not None):
        raise refusal or UserError(f"rank 0 could not claim the run folder {run_dir}")
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def write_config(run_dir: Path, text: str) -> None:
    """The run's resolved config as `<run_dir>/config.yaml` (what export and eval read back)."""
    try:
        (run_dir / "config.yaml").write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(
            f"train.output_dir={run_dir}: cannot write the run folder ({exc.strerror or exc})"
        ) from None


def check_no_overwrite(ckpt_dir: Path, resume_step: int | None) -> None:
    """Refuse a run that would write over checkpoints it did not make.

    A fresh run (`resume_step` None) needs a folder without checkpoints; a resumed one must start
    from the newest step the folder holds, since every later step it saves would replace one.
    """
    found = ckpt.list_step_dirs(ckpt_dir)
    if not found:
        return
    newest_step = max(step for step, _ in found)
    if resume_step is None:
        raise UserError(
            f"{ckpt_dir} already holds checkpoints of another run (newest: step {newest_step}); "
            "continue it with --resume auto, or start a new run in another train.output_dir"
        )
    if resume_step < newest_step:
        raise UserError(
            f"resuming at step {resume_step} would overwrite the newer checkpoints in {ckpt_dir} "
            f"(up to step {newest_step}); resume the newest with --resume auto, or write this run "
            "to another train.output_dir"
        )
