"""tools/export_model.py run as a user runs it: it checks the export and prints the difference,
refuses a config that is not the checkpoint's model, and a missing checkpoint is one line."""

import subprocess
import sys

import pytest
from helpers import REPO_ROOT

from paddlegan_lite.config import load_config
from paddlegan_lite.inference import Generator
from paddlegan_lite.trainer import train

TINY = ["model.ngf=8", "model.ndf=4"]  # the AC-GAN of configs/acgan_mnist.yaml, tiny


@pytest.fixture(scope="module")
def checkpoint(mnist_root, tmp_path_factory):
    """The `latest` checkpoint of the tiny AC-GAN trained 3 steps."""
    run_dir = tmp_path_factory.mktemp("export_tool") / "acgan_mnist"
    overrides = TINY + [f"data.root={mnist_root}", "data.download=false",
                        f"train.output_dir={run_dir}", "train.max_steps=3", "train.batch_size=8",
                        "train.num_samples=10"]  # fmt: skip
    train(load_config(REPO_ROOT / "configs" / "acgan_mnist.yaml", overrides))
    return run_dir / "checkpoints" / "latest"


def run_export_tool(args, timeout=120):
    cmd = [sys.executable, "tools/export_model.py", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def test_export_tool_checks_and_prints_the_difference(checkpoint, tmp_path):
    args = ["-c", "configs/acgan_mnist.yaml", "-o", *TINY]
    proc = run_export_tool(
        [*args, "--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "out")]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Paddle Inference vs dynamic graph on 8 images: max abs diff" in proc.stdout
    assert proc.stderr == ""
    assert Generator(tmp_path / "out").num_classes == 10


def test_export_tool_refuses_another_model_config(checkpoint, tmp_path):
    proc = run_export_tool(
        [
            "-c",
            "configs/acgan_mnist.yaml",
            "--checkpoint",
            str(checkpoint),
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "model.ngf=64 (checkpoint: 8)" in lines[0]
    assert not (tmp_path / "out").exists()


def test_export_tool_missing_checkpoint_is_one_line(tmp_path):
    proc = run_export_tool(["--checkpoint", str(tmp_path / "nowhere")])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no checkpoint at" in lines[0], proc.stderr
