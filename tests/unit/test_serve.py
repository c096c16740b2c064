"""The generation service's batcher (serve.py) on its own: concurrent jobs merged into predictor
calls of at most max_batch, a failing call or a cancelled request leaves it serving, a loading
error reaches start() (e2e/test_serve_tool.py runs the service on real exported models)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install -e .[serve]")

from paddlegan_lite.serve import Batcher, ServeOptions, Service  # noqa: E402


class CountingGenerator:
    """Stands in for Generator in batcher tests: records each call's batch size."""

    def __init__(self, fail_on_size: int | None = None):
        self.calls, self.fail_on_size = [], fail_on_size

    def run(self, z, labels=None):
        self.calls.append(len(z))
        if len(z) == self.fail_on_size:
            raise ValueError("boom")
        time.sleep(0.002)  # a predictor call takes a while: requests queue up behind it
        return np.broadcast_to((z[:, :1, None, None] > 0).astype(np.float32), (len(z), 1, 2, 2))


def test_batcher_merges_concurrent_jobs_and_splits_big_ones():
    fake = CountingGenerator()
    batcher = Batcher(lambda: fake, max_batch=8, window_s=0.02)
    batcher.start()
    try:
        z = np.random.default_rng(0).standard_normal((48, 3)).astype(np.float32)
        sizes = [1, 2, 3, 20, 1, 5, 7, 9]  # one job larger than max_batch
        bounds = np.cumsum([0] + sizes)
        with ThreadPoolExecutor(len(sizes)) as pool:
            futures = list(
                pool.map(lambda i: batcher.submit(z[bounds[i] : bounds[i + 1]], None), range(8))
            )
        results = [f.result(timeout=10) for f in futures]
    finally:
        batcher.stop()
    for i, result in enumerate(results):
        expected = np.where(z[bounds[i] : bounds[i + 1], 0] > 0, 255, 0)
        np.testing.assert_array_equal(result[:, 0, 0, 0], expected)
    assert all(size <= 8 for size in fake.calls) and sum(fake.calls) == 48
    unmerged = sum(-(-size // 8) for size in sizes)  # 11 calls if each job ran on its own
    assert len(fake.calls) < unmerged
    assert batcher.stats == {"requests": 8, "images": 48, "predictor_calls": len(fake.calls)}


def test_batcher_survives_a_failing_call():
    fake = CountingGenerator(fail_on_size=3)
    batcher = Batcher(lambda: fake, max_batch=8, window_s=0)
    batcher.start()
    try:
        bad = batcher.submit(np.zeros((3, 2), np.float32), None)
        with pytest.raises(ValueError, match="boom"):
            bad.result(timeout=10)
        good = batcher.submit(np.ones((2, 2), np.float32), None).result(timeout=10)
        assert good.shape == (2, 2, 2, 1)
    finally:
        batcher.stop()


def test_batcher_skips_a_cancelled_request():
    """A client that goes away cancels its future; the worker skips it and keeps serving."""
    running, release = threading.Event(), threading.Event()
    fake = CountingGenerator()
    run = fake.run

    def held_run(z, labels=None):
        running.set()
        release.wait(10)
        return run(z, labels)

    fake.run = held_run
    batcher = Batcher(lambda: fake, max_batch=8, window_s=0)
    batcher.start()
    try:
        first = batcher.submit(np.ones((1, 2), np.float32), None)
        assert running.wait(10)  # the worker is inside the first call: the next job waits
        gone = batcher.submit(np.ones((2, 2), np.float32), None)
        assert gone.cancel()
        release.set()
        assert first.result(timeout=10).shape == (1, 2, 2, 1)
        assert batcher.submit(np.ones((3, 2), np.float32), None).result(timeout=10).shape[0] == 3
    finally:
        batcher.stop()
    assert 2 not in fake.calls and sum(fake.calls) == 4


def test_batcher_start_raises_the_loading_error(tmp_path):
    service_options = ServeOptions(str(tmp_path))
    with pytest.raises(Exception, match="does not exist|no infer_cfg"):
        Service(service_options)

    def broken():
        raise RuntimeError("cannot load")

    batcher = Batcher(broken)
    with pytest.raises(RuntimeError, match="cannot load"):
        batcher.start()
