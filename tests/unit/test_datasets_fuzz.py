"""Hypothesis mutates real-format MNIST IDX files and CIFAR-10 tarballs (bytes flipped, inserted,
cut; headers rewritten; pickles damaged): `build_dataset` either reads them or raises our
`DatasetError`, never another exception. Files claiming more than they hold are refused before
memory of the claimed size is allocated or decompressed."""

import functools
import gzip
import io
import pickle
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
import zlib
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
from helpers import REPO_ROOT, cifar_cfg, mnist_cfg
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from paddlegan_lite import datasets
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


def write_files(folder, files: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


# ------------------------------------------------------------------------------------------------
# MNIST IDX
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow  # Hypothesis: hundreds of examples
@FUZZ
@given(which=st.sampled_from(RAW_NAMES), changes=edits)
def test_mutated_raw_idx(tmp_path, which, changes):
    files = dict(originals()["raw"], **{which: mutate(originals()["raw"][which], changes)})
    write_files(tmp_path / "raw", files)
    read_or_dataset_error(mnist_cfg(tmp_path / "raw"))


@pytest.mark.slow  # Hypothesis: hundreds of examples
@FUZZ
@given(which=st.sampled_from(MNIST_TRAIN_FILES), changes=edits)
def test_mutated_gzipped_idx(tmp_path, which, changes):
    files = dict(originals()["gz"], **{which: mutate(originals()["gz"][which], changes)})
    write_files(tmp_path / "gz", files)
    read_or_dataset_error(mnist_cfg(tmp_path / "gz"))


@pytest.mark.slow  # Hypothesis: hundreds of examples
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


@pytest.mark.slow  # Hypothesis: hundreds of examples
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


@pytest.mark.slow  # Hypothesis: hundreds of examples
@FUZZ
@given(changes=edits)
def test_mutated_cifar_tarball(tmp_path, changes):
    write_files(
        tmp_path / "gz", {"cifar-10-python.tar.gz": mutate(originals()["tarball"], changes)}
    )
    read_or_dataset_error(cifar_cfg(tmp_path / "gz"), image_size=32, channels=3)


@pytest.mark.slow  # Hypothesis: hundreds of examples
@FUZZ
@given(changes=edits)
def test_mutated_cifar_tar_inside_valid_gzip(tmp_path, changes):
    """Damage past the gzip layer reaches tarfile's header parsing."""
    tarball = gzip.compress(mutate(originals()["tar"], changes), compresslevel=1)
    write_files(tmp_path / "tar", {"cifar-10-python.tar.gz": tarball})
    read_or_dataset_error(cifar_cfg(tmp_path / "tar"), image_size=32, channels=3)


@pytest.mark.slow  # Hypothesis: hundreds of examples
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


@pytest.mark.parametrize(
    "state",
    [
        b"K\x03U\x01|q\x11NNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t",  # one None less
        b"K\x03U\x01|q\x11NNNJ\xff\xff\xff\xffJ\x00\x01\x00\x00K\x00t",  # alignment 256
        b"K\x03U\x01!q\x11NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t",  # byte order "!"
    ],
)
def test_malformed_dtype_state_is_refused_not_a_crash(tmp_path, state):
    """numpy's dtype.__setstate__ took the first of these (found by the fuzzing below) with a
    segmentation fault: the batch's dtype state must be numpy's own for its dtype."""
    batch = originals()["batch"]
    genuine = b"K\x03U\x01|q\x11NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
    assert batch.count(genuine) == 1
    batches = {f"data_batch_{i}": batch for i in range(2, 6)}
    batches["data_batch_1"] = batch.replace(genuine, state)
    write_files(tmp_path / "cifar-10-batches-py", batches)
    with pytest.raises(DatasetError, match="dtype state is not numpy's"):
        build_dataset(cifar_cfg(tmp_path), 32, 3)


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


@pytest.mark.slow  # Hypothesis: hundreds of examples
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


# ------------------------------------------------------------------------------------------------
# Claims beyond the file: refused fast, without allocating or decompressing what is claimed
# ------------------------------------------------------------------------------------------------

MB = 1 << 20


def refused_cheaply(build, match: str, max_seconds: float = 2.0, max_bytes: int = 2 * MB):
    """build() raises DatasetError matching `match` within the time, having allocated at most
    max_bytes at its peak (tracemalloc sees Python's and numpy's allocations)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DatasetError, match=match) as err:
            build()
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < max_seconds and peak < max_bytes, (seconds, peak)
    assert "\n" not in str(err.value)
    return str(err.value)


def gzip_stream(*chunks, zeros: int = 0) -> bytes:
    """A gzip file of the chunks followed by `zeros` zero bytes, compressed as they come."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: gzip container
    out = [packer.compress(chunk) for chunk in chunks]
    block = bytes(MB)
    for _ in range(zeros // MB):
        out.append(packer.compress(block))
    out.append(packer.flush())
    return b"".join(out)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_claiming_a_billion_images_is_refused_at_once(tmp_path, gz):
    raw = struct.pack(">4I", 2051, 10**9, 28, 28) + bytes(200)
    write_files(tmp_path, dict(originals()["raw"]))
    name = RAW_NAMES[0] + (".gz" if gz else "")
    (tmp_path / RAW_NAMES[0]).unlink()
    (tmp_path / name).write_bytes(gzip.compress(raw) if gz else raw)
    message = refused_cheaply(
        lambda: build_dataset(mnist_cfg(tmp_path), 28, 1), "1000000000 x 28 x 28"
    )
    assert name in message and ("gzip file can hold" in message) == gz


def test_idx_gzip_stream_is_read_only_as_far_as_its_header_claims(tmp_path):
    """10 images claimed, 30 MB more in the stream: reading stops just past the claim."""
    images = struct.pack(">4I", 2051, 10, 28, 28) + bytes(10 * 28 * 28)
    files = {
        MNIST_TRAIN_FILES[0]: gzip_stream(images, zeros=30 * MB),
        MNIST_TRAIN_FILES[1]: gzip.compress(struct.pack(">2I", 2049, 10) + bytes(10)),
    }
    assert len(files[MNIST_TRAIN_FILES[0]]) < MB
    write_files(tmp_path, files)
    message = refused_cheaply(lambda: build_dataset(mnist_cfg(tmp_path), 28, 1), "more than 7840")
    assert MNIST_TRAIN_FILES[0] in message


def recon_pickle(recon_shape, state=None, dtype=b"b") -> bytes:
    """A pickle of numpy's own array form: _reconstruct(ndarray, recon_shape, dtype), then
    __setstate__(state) when given; what any shape or dtype claim in a batch file looks like."""
    reconstruct = np.ndarray((0,)).__reduce__()[0]

    class Claim:
        def __reduce__(self):
            args = (reconstruct, (np.ndarray, recon_shape, dtype))
            return args if state is None else args + (state,)

    return pickle.dumps({b"data": Claim(), b"labels": [0]}, protocol=2)


HOSTILE_ARRAYS = {
    # an empty array of the claimed shape: numpy allocates it at once
    "reconstruct_shape": recon_pickle((20_000, 3072)),
    # one item of a 61 MB sub-array dtype
    "subarray_dtype": recon_pickle((1,), dtype=np.dtype(("u1", (20_000, 3072)))),
    # the usual form with a big shape and 3 bytes of data
    "setstate_shape": recon_pickle((0,), (1, (20_000, 3072), np.dtype("u1"), False, b"abc")),
    "setstate_huge": recon_pickle((0,), (1, (10**9, 3072), np.dtype("u1"), False, b"abc")),
}


@pytest.mark.parametrize("name", list(HOSTILE_ARRAYS))
def test_cifar_array_claims_beyond_the_batch_are_refused(tmp_path, name):
    batch = HOSTILE_ARRAYS[name]
    assert len(batch) < 400
    folder = tmp_path / "cifar-10-batches-py"
    write_files(folder, {f"data_batch_{i}": originals()["batch"] for i in range(2, 6)})
    write_files(folder, {"data_batch_1": batch})
    message = refused_cheaply(lambda: build_dataset(cifar_cfg(tmp_path), 32, 3), "data_batch_1")
    assert "claims" in message or "refused" in message or "does not match" in message


@pytest.mark.slow  # a fresh Python process
def test_cifar_object_array_is_refused_not_a_crash(tmp_path):
    """numpy rebuilds an object array from a too-short list by reading past it (a segfault):
    such a batch must be refused before numpy sees it. Run apart, as a crash would kill pytest."""
    batch = recon_pickle((0,), (1, (20_000, 3072), np.dtype("O"), False, [1, 2]))
    (tmp_path / "batch").write_bytes(batch)
    code = (
        "import sys; from pathlib import Path\n"
        "from paddlegan_lite.datasets import DatasetError, _parse_cifar_batch\n"
        "try:\n"
        "    _parse_cifar_batch(Path(sys.argv[1]).read_bytes(), 'batch')\n"
        "except DatasetError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "batch")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused an array of dtype" in proc.stdout


def tar_member(name: str, data: bytes, claimed_size: int | None = None) -> bytes:
    info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
    info.size = len(data) if claimed_size is None else claimed_size
    return info.tobuf() + data + bytes(-len(data) % 512)


def test_cifar_tar_member_is_bounded_by_what_a_batch_can_be(tmp_path, monkeypatch):
    # A gzip bomb: 8 MB of zeros claimed by the tar header, in a 10 kB tarball.
    monkeypatch.setattr(datasets, "CIFAR10_MAX_BATCH_BYTES", 4 * MB)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(
        gzip_stream(tar_member("data_batch_1", b"", claimed_size=8 * MB), zeros=8 * MB)
    )
    message = refused_cheaply(lambda: build_dataset(cifar_cfg(tmp_path), 32, 3), "data_batch_1")
    assert "more than any CIFAR-10 batch" in message

    # The header of the real limit, on a tarball that holds nothing of it.
    monkeypatch.undo()
    claim = datasets.CIFAR10_MAX_BATCH_BYTES + 1
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(
        gzip.compress(tar_member("data_batch_1", b"x", claimed_size=claim))
    )
    refused_cheaply(lambda: build_dataset(cifar_cfg(tmp_path), 32, 3), "more than any CIFAR-10")


def test_cifar_batch_file_is_bounded_by_what_a_batch_can_be(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_files(folder, {f"data_batch_{i}": originals()["batch"] for i in range(2, 6)})
    with open(folder / "data_batch_1", "wb") as f:
        f.truncate(datasets.CIFAR10_MAX_BATCH_BYTES + 1)  # sparse: no disk, no reading
    refused_cheaply(lambda: build_dataset(cifar_cfg(tmp_path), 32, 3), "more than any CIFAR-10")


shapes = st.lists(
    st.one_of(st.integers(0, 4), st.integers(0, 1 << 40), st.just(3072)), max_size=3
).map(tuple)
dtypes = st.sampled_from(
    [np.dtype(d) for d in ("u1", "<u2", ">f4", "i8", "O", "V8", "S4", "U2", "M8[s]")]
    + [np.dtype([("a", "u1"), ("b", "O")]), np.dtype(("u1", (4, 4)))]
)


@pytest.mark.slow  # Hypothesis: hundreds of examples
@FUZZ
@given(
    recon_shape=shapes,
    shape=shapes,
    dtype=dtypes,
    data=st.one_of(st.binary(max_size=64), st.lists(st.integers(0, 255), max_size=8)),
    with_state=st.booleans(),
)
def test_hostile_array_claims(tmp_path, recon_shape, shape, dtype, data, with_state):
    """Any shape, dtype and data numpy's array pickle can state: read, or a DatasetError."""
    state = (1, shape, dtype, False, data) if with_state else None
    folder = tmp_path / "cifar-10-batches-py"
    write_files(folder, {f"data_batch_{i}": originals()["batch"] for i in range(2, 6)})
    write_files(folder, {"data_batch_1": recon_pickle(recon_shape, state, dtype)})
    read_or_dataset_error(cifar_cfg(tmp_path), image_size=32, channels=3)
