"""Shared test set-up: the process is set up as the tools do it, so Paddle loads quietly with our
CPU flags; the fixtures every level uses; and the `slow` mark, given by folder.

tests/unit/ mirrors the package and is fast; tests/integration/ (in-process training runs, export
then Paddle Inference) and tests/e2e/ (the tools as subprocesses, crash safety, signals, several
processes, the service, the browser) are marked slow here, so `pytest -m "not slow"` leaves them
out. A unit test that is slow on its own carries @pytest.mark.slow itself."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent
# Classifier and real-feature caches of the whole session (and its subprocesses): never ~/.cache
os.environ["PADDLEGAN_LITE_CACHE"] = tempfile.mkdtemp(prefix="paddlegan_lite_cache_")
sys.path[:0] = [str(REPO_ROOT), str(TESTS)]  # the package; data_files.py and helpers.py

from paddlegan_lite.ops.process import configure_process_env  # noqa: E402

configure_process_env()  # before anything imports Paddle, as the tools do

from data_files import write_mnist_idx  # noqa: E402

SLOW_FOLDERS = (TESTS / "integration", TESTS / "e2e")
# Run before every other test: its 2,000 in-process MLP GAN steps slow down once earlier tests have
# run oneDNN convolutions in this process (OpenMP's worker threads, it seems): 46 s against 41 s
# on our quiet 2-core machine, 86-101 s against 40 s while another job kept one core busy
RUN_FIRST = ("tests/integration/test_training.py::test_mlp_gan_learns_the_data",)


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items):
    for item in items:
        if any(folder in item.path.parents for folder in SLOW_FOLDERS):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.nodeid not in RUN_FIRST)  # stable: the rest keep their order


def pytest_ignore_collect(collection_path, config):
    """Under exactly `-m "not slow"` (the edit-test loop) the slow folders' tests would all be
    deselected: skip importing them too, a few seconds of the loop."""
    if collection_path in SLOW_FOLDERS and config.getoption("markexpr") == "not slow":
        return True
    return None


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """40 tiny digits in MNIST's IDX files (batch 8: 5 steps per epoch, so short runs cross an
    epoch), shared by the whole session: nothing may write into it."""
    root = tmp_path_factory.mktemp("mnist")
    write_mnist_idx(root, n=40, seed=3)
    return root
