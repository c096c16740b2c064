"""Hypothesis mutates real-format MNIST IDX files and CIFAR-10 tarballs (bytes flipped, inserted,
cut; headers rewritten; pickles damaged): `build_dataset` either reads them or raises our
`DatasetError`, never another exception."""

import functools
import gzip
import io
import struct
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from data_files import (
    MNIST_TRAIN_FILES,
    cifar10_batch,
    py2_pickle,
    write_cifar10_tarball,
    write_mnist_idx,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from paddlegan_lite.config import DataConfig
from paddlegan_lite.datasets import DatasetError, build_dataset

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
RAW_NAMES = tuple(name.removesuffix(".gz") for name in MNIST_TRAIN_FILES)

# One edit: (kind, position, bytes). Positions wrap around the file, so any integer is valid.
edits = st.lists(
    st.tuples(
        st.sampled_from(["overwrite", "insert", "delete", "truncate"]),
        st.integers(min_value=0, max_value=1 << 20),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=4,
)
# Header values a hostile file would pick: empty, tiny, sign bit, overflowing products.
uint32s = st.one_of(
    st.sampled_from([0, 1, 2, 3, 28, 255, 1 << 16, 1 << 31, (1 << 32) - 1]),
    st.integers(min_value=0, max_value=(1 << 32) - 1),
)


def mutate(data: bytes, changes) -> bytes:
    out = bytearray(data)
    for kind, position, blob in changes:
        at = position % (len(out) + 1)
        if kind == "overwrite":
            out[at : at + len(blob)] = blob
        elif kind == "insert":
            out[at:at] = blob
        elif kind == "delete":
            del out[at : at + len(blob)]
        else:
            del out[at:]
    return bytes(out)


def read_or_dataset_error(cfg: DataConfig, image_size: int = 28, channels: int = 1) -> None:
    """Build the dataset and read a batch; DatasetError is the only acceptable failure."""
    try:
        dataset = build_dataset(cfg, image_size, channels)
        if len(dataset):
            images, labels = dataset.get_batch([0, len(dataset) - 1])
            assert images.shape == (2, channels, image_size, image_size)
            assert labels.shape == (2,)
    except DatasetError as exc:
        assert "\n" not in str(exc)  # one line for the user


@functools.cache
def originals() -> dict:
    """Valid files' bytes: raw and gzipped IDX, a CIFAR tarball, its tar and one pickled batch.

    Cached module data, not a fixture, so Hypothesis does not print it with every failing example.
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_mnist_idx(root / "mnist", n=6, seed=0)
        gz = {name: (root / "mnist" / name).read_bytes() for name in MNIST_TRAIN_FILES}
        tarball = write_cifar10_tarball(root / "cifar", n_per_batch=2, seed=0)["path"].read_bytes()
    raw = {name.removesuffix(".gz"): gzip.decompress(data) for name, data in gz.items()}
    rng = np.random.default_rng(0)
    batch = cifar10_batch("data_batch_1", rng.integers(0, 256, (2, 3, 32, 32), np.uint8), [3, 7])
    return {
        "gz": gz,
        "raw": raw,
        "tarball": tarball,
        "tar": gzip.decompress(tarball),
        "batch": batch,
    }


def mnist_cfg(root) -> DataConfig:
    return DataConfig(name="mnist", root=str(root), download=False)


def cifar_cfg(root) -> DataConfig:
    return DataConfig(name="cifar10", root=str(root), download=False)


def write_files(folder, files: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


# ------------------------------------------------------------------------------------------------
# MNIST IDX
# ------------------------------------------------------------------------------------------------


@FUZZ
@given(which=st.sampled_from(RAW_NAMES), changes=edits)
def test_mutated_raw_idx(tmp_path, which, changes):
    files = dict(originals()["raw"], **{which: mutate(originals()["raw"][which], changes)})
    write_files(tmp_path / "raw", files)
    read_or_dataset_error(mnist_cfg(tmp_path / "raw"))


@FUZZ
@given(which=st.sampled_from(MNIST_TRAIN_FILES), changes=edits)
def test_mutated_gzipped_idx(tmp_path, which, changes):
    files = dict(originals()["gz"], **{which: mutate(originals()["gz"][which], changes)})
    write_files(tmp_path / "gz", files)
    read_or_dataset_error(mnist_cfg(tmp_path / "gz"))


@FUZZ
@given(
    magic=st.one_of(st.just(2051), uint32s),
    dims=st.lists(uint32s, min_size=3, max_size=3),
    body=st.binary(max_size=64),
)
# Dimensions whose int64 product wraps around to 0, matching an empty body.
@example(magic=2051, dims=[1 << 31, 1 << 31, 4], body=b"")
@example(magic=2051, dims=[2, 0, 0], body=b"")  # images of no pixels
@example(magic=2051, dims=[2, 0, (1 << 32) - 1], body=b"")  # no pixels, but a 4-G-wide resize
@example(magic=2051, dims=[0, 28, 28], body=b"")  # no images at all
@example(magic=2051, dims=[0, (1 << 32) - 1, (1 << 32) - 1], body=b"")  # none, yet too big
def test_hostile_idx_image_header(tmp_path, magic, dims, body):
    header = struct.pack(">4I", magic, *dims)
    files = dict(originals()["raw"], **{RAW_NAMES[0]: header + body})
    if dims[0] <= 1000:  # as many labels as images, so the images themselves get used
        files[RAW_NAMES[1]] = struct.pack(">2I", 2049, dims[0]) + bytes(dims[0])
    write_files(tmp_path / "header", files)
    read_or_dataset_error(mnist_cfg(tmp_path / "header"))


@FUZZ
@given(count=uint32s, body=st.binary(max_size=16))
@example(count=(1 << 32) - 1, body=b"")
def test_hostile_idx_label_header(tmp_path, count, body):
    files = dict(originals()["raw"], **{RAW_NAMES[1]: struct.pack(">2I", 2049, count) + body})
    write_files(tmp_path / "labels", files)
    read_or_dataset_error(mnist_cfg(tmp_path / "labels"))


# ------------------------------------------------------------------------------------------------
# CIFAR-10
# ------------------------------------------------------------------------------------------------


@FUZZ
@given(changes=edits)
def test_mutated_cifar_tarball(tmp_path, changes):
    write_files(
        tmp_path / "gz", {"cifar-10-python.tar.gz": mutate(originals()["tarball"], changes)}
    )
    read_or_dataset_error(cifar_cfg(tmp_path / "gz"), image_size=32, channels=3)


@FUZZ
@given(changes=edits)
def test_mutated_cifar_tar_inside_valid_gzip(tmp_path, changes):
    """Damage past the gzip layer reaches tarfile's header parsing."""
    tarball = gzip.compress(mutate(originals()["tar"], changes), compresslevel=1)
    write_files(tmp_path / "tar", {"cifar-10-python.tar.gz": tarball})
    read_or_dataset_error(cifar_cfg(tmp_path / "tar"), image_size=32, channels=3)


@FUZZ
@given(changes=edits)
def test_mutated_cifar_batch_pickle(tmp_path, changes):
    """Damage inside a batch reaches the restricted unpickler and the batch checks."""
    folder = tmp_path / "cifar-10-batches-py"
    batches = {f"data_batch_{i}": originals()["batch"] for i in range(2, 6)}
    write_files(folder, dict(batches, data_batch_1=mutate(originals()["batch"], changes)))
    read_or_dataset_error(cifar_cfg(tmp_path), image_size=32, channels=3)


def test_mutations_do_reach_the_parsers(tmp_path):
    """The fuzzing is not vacuous: unmutated inputs read, and one flipped byte is caught."""
    write_files(tmp_path / "ok", originals()["raw"])
    assert len(build_dataset(mnist_cfg(tmp_path / "ok"), 28, 1)) == 6
    write_files(tmp_path / "bad", dict(originals()["raw"], **{RAW_NAMES[0]: b"\0\0\x08\x01"}))
    with pytest.raises(DatasetError, match="magic 2049, expected 2051"):
        build_dataset(mnist_cfg(tmp_path / "bad"), 28, 1)
    tar = io.BytesIO(originals()["tar"])
    assert "cifar-10-batches-py/data_batch_1" in tarfile.open(fileobj=tar).getnames()


# Values a tampered batch dict could hold where CIFAR-10 has its uint8 rows and 0-9 labels.
label_values = st.one_of(
    st.integers(),
    st.floats(),
    st.text(st.characters(max_codepoint=255), max_size=3),  # what a Python 2 pickle holds
    st.binary(max_size=3),
    st.none(),
)
arrays = st.builds(
    lambda shape, dtype: np.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 3073), min_size=0, max_size=3).filter(lambda s: np.prod(s) < 10**5),
    st.sampled_from([np.uint8, np.int64, np.float32, np.bool_, np.uint16]),
)


@FUZZ
@given(
    data=st.one_of(arrays, st.none(), st.integers(), st.binary(max_size=8)),
    labels=st.one_of(st.lists(label_values, max_size=4), label_values, arrays),
)
@example(data=np.zeros((1, 3072), np.uint8), labels=[2**70])
@example(data=np.zeros((1, 3072), np.uint8), labels=[[1, 2]])
@example(data=np.zeros((1, 3072), np.uint8), labels=[float("nan")])
def test_tampered_cifar_batch_values(tmp_path, data, labels):
    """Well-formed pickles holding the wrong things reach the batch checks."""
    folder = tmp_path / "cifar-10-batches-py"
    batch = py2_pickle({b"data": data, b"labels": labels})
    batches = {f"data_batch_{i}": originals()["batch"] for i in range(2, 6)}
    write_files(folder, dict(batches, data_batch_1=batch))
    read_or_dataset_error(cifar_cfg(tmp_path), image_size=32, channels=3)
