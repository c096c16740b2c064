"""Shared test set-up: the process is set up as the tools do it, so Paddle loads quietly with our
CPU flags."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Classifier and real-feature caches of the whole session (and its subprocesses): never ~/.cache
os.environ["PADDLEGAN_LITE_CACHE"] = tempfile.mkdtemp(prefix="paddlegan_lite_cache_")
sys.path.insert(0, str(REPO_ROOT))

from paddlegan_lite.ops.process import configure_process_env  # noqa: E402

configure_process_env()  # before anything imports Paddle, as the tools do


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


def tool_env() -> dict:
    """Environment for running tools as subprocesses, with the repo importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def export_tiny_models(root: Path, tiny: dict) -> dict:
    """name -> exported model folder: each config in `tiny` (name -> its size overrides) trained
    3 steps on tiny MNIST files under root, then exported."""
    from data_files import write_mnist_idx

    from paddlegan_lite.config import load_config
    from paddlegan_lite.export import export_model
    from paddlegan_lite.trainer import train

    write_mnist_idx(root / "mnist", n=32, seed=1)
    folders = {}
    for name, sizes in tiny.items():
        overrides = sizes + [
            f"data.root={root / 'mnist'}",
            "data.download=false",
            f"train.output_dir={root / name}",
            "train.max_steps=3",
            "train.batch_size=8",
            "train.num_samples=10",
        ]
        train(load_config(REPO_ROOT / "configs" / f"{name}.yaml", overrides))
        folders[name] = root / f"{name}_inference"
        export_model(root / name / "checkpoints" / "latest", folders[name])
    return folders
