"""Every tool, every path it writes, every range it expands: a bad one is one `error:` line and
exit 2, before the work (issue #16 items 7 and 8), run as subprocesses the way users run them.

Read-only places: the tests run as root, for whom permission bits do not stop a write, so the
rows use what refuses root too: /proc and /sys, which take no new files, and a path under a
regular file.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from data_files import write_mnist_idx
from helpers import REPO_ROOT, tool_env

from paddlegan_lite import inference
from paddlegan_lite.config import load_config
from paddlegan_lite.export import export_model
from paddlegan_lite.trainer import build_trainer

TINY = ["model.ngf=8", "model.ndf=4"]
# 256x256 colour images: 10,000 of them make a grid far beyond inference.GRID_MAX_BYTES
BIG = ["model.ngf=2", "model.ndf=2", "model.image_size=256", "model.channels=3"]


def untrained_checkpoint(config: str, overrides: list[str], run_dir: Path) -> Path:
    """A run folder's first checkpoint, as tools/convert_weights.py writes one (no training)."""
    cfg = load_config(REPO_ROOT / "configs" / config, overrides + [f"train.output_dir={run_dir}"])
    return build_trainer(cfg, dataset=None).save()


@pytest.fixture(scope="module")
def where(tmp_path_factory):
    """The placeholders of the rows: run folders, checkpoints, exported models, a regular file."""
    root = tmp_path_factory.mktemp("tool_paths")
    found = {"file": root / "a_file.txt"}
    found["file"].write_text("not a folder\n")
    for name, config, overrides in (
        ("dcgan", "dcgan_mnist.yaml", TINY),
        ("acgan", "acgan_mnist.yaml", TINY),
        ("big", "dcgan_mnist.yaml", BIG),
    ):
        checkpoint = untrained_checkpoint(config, overrides, root / f"{name}_run")
        export_model(checkpoint, root / f"{name}_model")
        found[name] = root / f"{name}_model"
        found[f"{name}_run"] = root / f"{name}_run"
    (root / "acgan_run" / "eval").write_text("")  # where eval's default report folder goes
    (root / "empty").mkdir()
    found["empty"] = root / "empty"
    return {key: str(value) for key, value in found.items()}


MAX = f"{inference.MAX_IMAGES:,}"
INFER = ["tools/infer.py", "--model_dir"]
EXPORT = ["tools/export_model.py", "--checkpoint", "{acgan_run}", "--output_dir"]
EVAL = ["tools/eval.py", "--checkpoint", "{acgan_run}", "--output"]
# name -> (command line after `python`, a fragment the one error line must hold)
ROWS = {
    # item 7: output paths
    "infer --grid is a folder": (
        [*INFER, "{dcgan}", "--seeds", "0", "--grid", "{empty}"],
        "is a folder: give a file name ending in .png",
    ),
    "infer --grid with another suffix": (
        [*INFER, "{dcgan}", "--seeds", "0", "--grid", "{empty}/grid.xyz"],
        "grid.xyz: give a file name ending in .png",
    ),
    "infer --gif is a folder": (
        [*INFER, "{dcgan}", "--interpolate", "0", "1", "--gif", "{empty}"],
        "is a folder: give a file name ending in .gif",
    ),
    "infer --gif with another suffix": (
        [*INFER, "{dcgan}", "--interpolate", "0", "1", "--gif", "{empty}/walk.png"],
        "ending in .gif",
    ),
    "infer --output_dir is a file": (
        [*INFER, "{dcgan}", "--seeds", "0", "--output_dir", "{file}"],
        "is a file, not a folder",
    ),
    "infer --output_dir under a file": (
        [*INFER, "{dcgan}", "--seeds", "0", "--output_dir", "{file}/images"],
        "cannot make a folder there, {file} is a file",
    ),
    "infer --grid in /proc": (
        [*INFER, "{dcgan}", "--seeds", "0", "--grid", "/proc/paddlegan_lite_test/grid.png"],
        "cannot write in /proc",
    ),
    "infer --output_dir in /sys": (
        [*INFER, "{dcgan}", "--seeds", "0", "--output_dir", "/sys/paddlegan_lite_test"],
        "cannot write in /sys",
    ),
    "infer --gif with --seeds": (
        [*INFER, "{dcgan}", "--seeds", "0", "--gif", "{empty}/walk.gif"],
        "use it with --interpolate",
    ),
    "export --output_dir is a file": ([*EXPORT, "{file}"], "is a file, not a folder"),
    "export --output_dir under a file": ([*EXPORT, "{file}/model"], "{file} is a file"),
    "export --output_dir in /sys": ([*EXPORT, "/sys/paddlegan_lite_test"], "cannot write in /sys"),
    "eval --output is a folder": ([*EVAL, "{empty}"], "is a folder: give a file name"),
    "eval --output under a file": ([*EVAL, "{file}/eval.json"], "{file} is a file"),
    "eval --output in /proc": ([*EVAL, "/proc/paddlegan_lite_test.json"], "cannot write in /proc"),
    "eval default output under a file": (
        ["tools/eval.py", "--checkpoint", "{acgan_run}"],
        "the default --output {acgan_run}/eval/step_00000000.json: cannot make a folder there, "
        "{acgan_run}/eval is a file",
    ),
    "convert_weights --output_dir is a file": (
        ["tools/convert_weights.py", "-c", "configs/dcgan_mnist.yaml", "--weights", "{file}"]
        + ["--output_dir", "{file}"],
        "--output_dir {file} is a file, not a folder",
    ),
    "train --resume a folder without checkpoints": (
        ["tools/train.py", "-c", "configs/dcgan_mnist.yaml", "-o", *TINY]
        + ["train.output_dir={empty}/run", "--resume", "{empty}"],
        "no checkpoint at {empty}",
    ),
    # item 8: ranges are counted, not built, and capped
    "infer --seeds beyond memory": (
        [*INFER, "{dcgan}", "--seeds", "0-99999999999999", "--output_dir", "{empty}/out"],
        f"names 100,000,000,000,000 values; one call takes at most {MAX}",
    ),
    "infer --seeds beyond the cap": (
        [*INFER, "{dcgan}", "--seeds", "0-10000000", "--output_dir", "{empty}/out"],
        f"names 10,000,001 values; one call takes at most {MAX}",
    ),
    "infer --labels beyond memory": (
        [
            *INFER,
            "{acgan}",
            "--seeds",
            "0",
            "--labels",
            "0-99999999999999",
            "--grid",
            "{empty}/g.png",
        ],
        "--labels 0-99999999999999 names 100,000,000,000,000 values",
    ),
    "infer --interpolate beyond memory": (
        [*INFER, "{dcgan}", "--interpolate", "0-99999999999999", "1", "--gif", "{empty}/w.gif"],
        "--interpolate takes two seeds",
    ),
    "infer seeds x labels beyond the cap": (
        [*INFER, "{acgan}", "--seeds", "0-1000", "--labels", "0-9", "--grid", "{empty}/g.png"],
        f"1,001 seed(s) x 10 label(s) makes 10,010 images; one call makes at most {MAX}",
    ),
    "infer --steps beyond the cap": (
        [*INFER, "{dcgan}", "--interpolate", "0", "1", "--steps", "100000"]
        + ["--output_dir", "{empty}/out"],
        f"--steps 100,000: a walk has at most {MAX} frames",
    ),
    "infer grid beyond memory": (
        [*INFER, "{big}", "--seeds", "0-9999", "--grid", "{empty}/g.png"],
        # tiles 10,000 x 3 x 256 x 256 + canvas 3 x (100 x 258 + 2)^2 bytes = 3,780 MiB
        "--grid of 10,000 images of 3x256x256 needs 3,780 MiB in memory; the limit is 512 MiB",
    ),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_path_or_range_is_one_line_and_exit_2(where, row):
    args, fragment = ROWS[row]
    cmd = [sys.executable, *(a.format(**where) for a in args)]
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=tool_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert fragment.format(**where) in lines[0]
    assert not Path(where["empty"], "out").exists()  # refused before anything was written
    assert not Path(where["empty"], "g.png").exists()


def test_resume_takes_a_run_folder(where, tmp_path):
    """--resume <run folder> continues from its newest complete checkpoint, as export does."""
    run_dir = tmp_path / "run"
    mnist = tmp_path / "mnist"
    write_mnist_idx(mnist, n=16, seed=1)
    overrides = [*TINY, f"data.root={mnist}", "data.download=false", "train.batch_size=8"]
    first = untrained_checkpoint("dcgan_mnist.yaml", overrides, run_dir)
    cmd = [sys.executable, "tools/train.py", "-c", "configs/dcgan_mnist.yaml", "-o", *overrides]
    cmd += [f"train.output_dir={tmp_path / 'continued'}", "train.max_steps=1"]
    proc = subprocess.run(
        [*cmd, "--resume", str(run_dir)],
        cwd=REPO_ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resumed from {first} at step 0" in proc.stdout
