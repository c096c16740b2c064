"""Shared test set-up: the package is imported first so Paddle loads quietly with our CPU flags."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Classifier and real-feature caches of the whole session (and its subprocesses): never ~/.cache
os.environ["PADDLEGAN_LITE_CACHE"] = tempfile.mkdtemp(prefix="paddlegan_lite_cache_")
sys.path.insert(0, str(REPO_ROOT))

import paddlegan_lite  # noqa: E402,F401


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


def tool_env() -> dict:
    """Environment for running tools as subprocesses, with the repo importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env
