"""tools/infer.py run as a user runs it, on models trained a few steps and exported once."""

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO_ROOT
from PIL import Image

from paddlegan_lite import inference
from paddlegan_lite.inference import (
    Generator,
    InferenceError,
    grid_bytes,
    save_seed_images,
)


def run_infer(*args, timeout=120):
    cmd = [sys.executable, "tools/infer.py", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_seeds_write_one_png_per_seed(exported_models, tmp_path):
    proc = run_infer(
        "--model_dir", exported_models["dcgan_mnist"], "--seeds", "0-3,7", "--output_dir", tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = ["seed0000.png", "seed0001.png", "seed0002.png", "seed0003.png", "seed0007.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    expected = Generator(exported_models["dcgan_mnist"]).generate([0, 1, 2, 3, 7])[..., 0]  # gray
    actual = np.stack([read_png(tmp_path / name) for name in names])
    assert actual.shape == (5, 32, 32)
    np.testing.assert_array_equal(actual, expected)


def test_same_seed_gives_identical_bytes(exported_models, tmp_path):
    """Seed 5 in another run, another position and another batch size: the same PNG bytes."""
    model = exported_models["dcgan_mnist"]
    runs = {"a": ("3-6", "4"), "b": ("5,9", "1")}
    for folder, (seeds, batch) in runs.items():
        args = ["--seeds", seeds, "--batch_size", batch, "--output_dir", tmp_path / folder]
        proc = run_infer("--model_dir", model, *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
    same = [(tmp_path / folder / "seed0005.png").read_bytes() for folder in runs]
    assert same[0] == same[1]
    assert (tmp_path / "a" / "seed0004.png").read_bytes() != same[0]


def test_acgan_grid_has_one_row_per_class(exported_models, tmp_path):
    grid_path, files = tmp_path / "grid.png", tmp_path / "files"
    proc = run_infer(
        "--model_dir",
        exported_models["acgan_mnist"],
        "--seeds",
        "0-2",
        "--labels",
        "0-9",
        "--grid",
        grid_path,
        "--output_dir",
        files,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    grid, pad, side = read_png(grid_path), 2, 28
    assert grid.shape == (10 * (side + pad) + pad, 3 * (side + pad) + pad)
    assert len(list(files.iterdir())) == 30
    cells = {}
    for label in range(10):  # row = label, column = seed: the pairing --help documents
        for seed in range(3):
            top, left = pad + label * (side + pad), pad + seed * (side + pad)
            cells[label, seed] = grid[top : top + side, left : left + side]
            expected = read_png(files / f"seed{seed:04d}_label{label}.png")
            np.testing.assert_array_equal(cells[label, seed], expected)
    assert len({cell.tobytes() for cell in cells.values()}) == 30  # labels and seeds both matter


def test_help_documents_the_seed_label_pairing():
    proc = run_infer("--help")
    assert proc.returncode == 0
    assert "every seed is drawn with every label" in proc.stdout
    assert "one row per label" in proc.stdout


def test_latent_walk_as_gif_and_frames(exported_models, tmp_path):
    model = exported_models["acgan_mnist"]
    proc = run_infer(
        "--model_dir",
        model,
        "--interpolate",
        "0",
        "4",
        "--steps",
        "5",
        "--labels",
        "3",
        "--gif",
        tmp_path / "walk.gif",
        "--output_dir",
        tmp_path / "frames",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    frames = sorted((tmp_path / "frames").iterdir())
    assert [p.name for p in frames] == [f"walk_seed0000-seed0004_{i:03d}.png" for i in range(5)]
    gif = Image.open(tmp_path / "walk.gif")
    assert gif.n_frames == 5
    gif.seek(0)
    first = np.asarray(gif.convert("L"))
    ends = Generator(model).generate([0, 4], 3)[..., 0]  # the walk starts and ends on the seeds
    np.testing.assert_array_equal(first, ends[0])  # gray GIF frames are lossless
    np.testing.assert_array_equal(read_png(frames[0]), ends[0])
    np.testing.assert_array_equal(read_png(frames[-1]), ends[1])


def bad_infer_cfg(exported_models, tmp_path) -> Path:
    """A copy of the DCGAN folder whose infer_cfg.yml claims another latent size."""
    folder = tmp_path / "mismatched"
    shutil.copytree(exported_models["dcgan_mnist"], folder)
    cfg = folder / "infer_cfg.yml"
    cfg.write_text(cfg.read_text().replace("\nnz: 100\n", "\nnz: 64\n"))
    return folder


BAD_INPUTS = {
    "missing model folder": (["--model_dir", "{tmp}/nowhere", "--seeds", "0"], "does not exist"),
    "no infer_cfg.yml": (["--model_dir", "{tmp}", "--seeds", "0"], "has no infer_cfg.yml"),
    "mismatched infer_cfg.yml": (["--model_dir", "{bad}", "--seeds", "0"], "does not match"),
    "label out of range": (
        ["--model_dir", "{acgan}", "--seeds", "0", "--labels", "8-10"],
        "label 10 is out of range",
    ),
    "labels for unconditional": (
        ["--model_dir", "{dcgan}", "--seeds", "0", "--labels", "1"],
        "is unconditional",
    ),
    "seed range does not parse": (["--model_dir", "{dcgan}", "--seeds", "0-x"], "does not parse"),
    "seed range backwards": (["--model_dir", "{dcgan}", "--seeds", "9-3"], "runs backwards"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_error(exported_models, tmp_path, case):
    args, message = BAD_INPUTS[case]
    where = {
        "tmp": tmp_path,
        "acgan": exported_models["acgan_mnist"],
        "dcgan": exported_models["dcgan_mnist"],
    }
    if "{bad}" in args:
        where["bad"] = bad_infer_cfg(exported_models, tmp_path)
    proc = run_infer(*[a.format(**where) for a in args], "--grid", tmp_path / "g.png")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert message in lines[0]
    assert not (tmp_path / "g.png").exists()


def test_inference_imports_no_training_code(exported_models):
    """Deployment needs paddle, numpy, pillow and pyyaml: nothing from training is loaded."""
    script = (
        "import json, sys\n"
        "import paddlegan_lite\n"
        "light = 'paddle' not in sys.modules\n"
        "from paddlegan_lite.inference import Generator\n"
        f"Generator({str(exported_models['acgan_mnist'])!r}).generate([0], 1)\n"
        "roots = ('paddlegan_lite', 'visualdl')\n"
        "mods = sorted(m for m in sys.modules if m.split('.')[0] in roots)\n"
        "print(json.dumps({'light': light, 'mods': mods}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["light"]  # importing the package does not load Paddle
    allowed = {
        "paddlegan_lite",
        "paddlegan_lite.errors",
        "paddlegan_lite.images",
        "paddlegan_lite.inference",
    }
    assert set(result["mods"]) == allowed


def test_a_seed_named_twice_is_drawn_once_and_counted_once(exported_models, tmp_path):
    proc = run_infer(
        "--model_dir",
        exported_models["dcgan_mnist"],
        "--seeds",
        "5,5,3-6",
        "--output_dir",
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"seed{s:04d}.png" for s in (3, 4, 5, 6)]
    assert "names 6 values, 4 distinct" in proc.stdout
    assert "wrote 4 file(s)" in proc.stdout


def test_grid_over_the_memory_limit_is_refused_before_any_image(
    exported_models, monkeypatch, tmp_path
):
    gen = Generator(exported_models["dcgan_mnist"])
    made = []
    monkeypatch.setattr(gen, "generate", lambda *args: made.append(args))
    need = grid_bytes(100, gen.image_shape)
    monkeypatch.setattr(inference, "GRID_MAX_BYTES", need - 1)
    with pytest.raises(InferenceError, match="--grid of 100 images of 1x32x32 needs"):
        save_seed_images(gen, list(range(100)), grid_path=tmp_path / "g.png")
    assert made == [] and not (tmp_path / "g.png").exists()


def test_a_failed_write_is_one_line_and_progress_is_reported(
    exported_models, monkeypatch, tmp_path
):
    gen = Generator(exported_models["dcgan_mnist"], batch_size=2)
    seen = []
    written = save_seed_images(
        gen, [0, 1, 2], output_dir=tmp_path, progress=lambda *done: seen.append(done)
    )
    assert len(written) == 3 and seen == [(2, 3), (3, 3)]

    def disk_full(path, image):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(inference, "save_png", disk_full)
    with pytest.raises(InferenceError, match=r"cannot write .*seed0000.png \(No space left"):
        save_seed_images(gen, [0], output_dir=tmp_path / "full")
