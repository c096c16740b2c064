"""One place for run output: a stdout line, VisualDL scalars/images and a metrics.jsonl row."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("paddlegan_lite")


def setup_console_logging(level: int = logging.INFO) -> None:
    """Timestamped lines on stdout for the `paddlegan_lite` logger (tools call this once)."""
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


class RunLogger:
    """Writes metrics to stdout, `<run_dir>/vdl` (VisualDL) and `<run_dir>/metrics.jsonl`."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        from visualdl import LogWriter

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resume_step is not None:
            self._drop_rows_after(resume_step)  # a crashed run may have logged past its checkpoint
        self._jsonl = open(self.metrics_path, "a", encoding="utf-8")
        self._vdl = LogWriter(logdir=str(self.run_dir / "vdl"))

    def scalars(self, step: int, values: dict, line: str | None = None, group="train") -> None:
        """One row: each value to VisualDL (tag `<group>/<name>`) and jsonl; `line` to stdout."""
        for name, value in values.items():
            self._vdl.add_scalar(tag=f"{group}/{name}", value=float(value), step=step)
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()
        if line:
            log.info(line)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """uint8 [H, W, C] image to VisualDL."""
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        self._vdl.add_image(tag=tag, img=image, step=step)

    def close(self) -> None:
        self._jsonl.close()
        self._vdl.close()

    def _drop_rows_after(self, step: int) -> None:
        if not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        kept = [ln for ln in lines if ln.strip() and _row_step(ln) <= step]
        # a new file renamed over the old: a kill at any instant leaves one or the other whole
        tmp = self.metrics_path.with_name(f".{self.metrics_path.name}.tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, self.metrics_path)


def _row_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 0
