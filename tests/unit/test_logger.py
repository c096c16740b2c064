"""The run logger (logger.py): metrics.jsonl rows survive a resume that is killed while it
rewrites the file."""

import builtins
import io
import json
from pathlib import Path

from helpers import Killed


def test_kill_while_resuming_keeps_logged_rows(tmp_path, monkeypatch):
    from paddlegan_lite.logger import RunLogger

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss_d": 1.0}) + "\n" for s in (5, 10, 15)))
    real_open = io.open

    def dies_after_truncating(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and Path(file) == metrics:  # truncated: the process dies right here
            handle.close()
            raise Killed
        return handle

    monkeypatch.setattr(io, "open", dies_after_truncating)
    monkeypatch.setattr(builtins, "open", dies_after_truncating)
    try:
        RunLogger(tmp_path, resume_step=10).close()
    except Killed:
        pass
    monkeypatch.undo()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert 5 in steps and 10 in steps
