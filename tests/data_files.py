"""Write tiny dataset files in the real on-disk formats (MNIST IDX, CIFAR-10 python tarball, image
folders) for tests. Images carry a class-dependent pattern (two crossing bars whose positions,
and for colour images whose colour, depend on the label) so tests can check that a model learns.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

MNIST_TRAIN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
MNIST_TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
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
# Member order of the official tarball: readers must not rely on sorted names.
CIFAR10_MEMBERS = (
    "data_batch_4",
    "readme.html",
    "test_batch",
    "data_batch_3",
    "batches.meta",
    "data_batch_2",
    "data_batch_5",
    "data_batch_1",
)

# One colour per class; every colour has a 255 and most a 0 channel, so pixel ranges are exact.
PALETTE = np.array(
    [
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 255),
        (255, 255, 0),
        (0, 255, 255),
        (255, 0, 255),
        (255, 255, 255),
        (255, 128, 0),
        (128, 0, 255),
        (0, 128, 255),
    ],
    dtype=np.uint8,
)

# Which modes each format can store; anything else is written as PNG.
_FORMAT_MODES = {
    "png": {"L", "RGB", "RGBA", "P"},
    "jpg": {"L", "RGB"},
    "bmp": {"L", "RGB", "P"},
    "webp": {"RGB", "RGBA"},
}


def class_mask(label: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A 0/1 mask [height, width]: a horizontal bar in one of 5 rows (label % 5) crossing a
    vertical bar in one of 2 columns (label // 5), each jittered by a pixel. About a fifth of the
    pixels are ink, as in MNIST: an MLP GAN learns this in a few thousand steps (sparse small
    blocks it barely learns at all)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    half = max(1, min(height, width) // 10)  # half the bar thickness
    row = int((label % 5 + 0.5) * height / 5) + int(rng.integers(-1, 2))
    col = int(((label // 5) % 2 + 0.5) * width / 2) + int(rng.integers(-1, 2))
    mask[max(0, row - half) : row + half, width // 8 : width - width // 8] = 1
    mask[height // 8 : height - height // 8, max(0, col - half) : col + half] = 1
    return mask


def pattern_images(labels, height: int, width: int, color: bool, seed: int = 0) -> np.ndarray:
    """uint8 [N, H, W] (gray: block 255 on 0) or [N, H, W, 3] (block in the class colour)."""
    rng = np.random.default_rng(seed)
    masks = np.stack([class_mask(int(y), height, width, rng) for y in labels])
    if not color:
        return masks * np.uint8(255)
    return masks[..., None] * PALETTE[np.asarray(labels) % 10][:, None, None, :]


def balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# MNIST IDX
# ------------------------------------------------------------------------------------------------


def write_idx(path, array: np.ndarray, magic: int | None = None) -> Path:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz).

    The header is the big-endian magic (0x0800 + ndim unless given) and one uint32 per dimension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 + array.ndim if magic is None else magic
    raw = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_mnist_idx(root, n: int = 100, seed: int = 0, n_test: int = 0) -> dict:
    """Write train (and, if n_test > 0, t10k) IDX .gz files of 28 x 28 pattern digits into root.

    Returns {"root", "paths", "images" uint8 [n, 28, 28], "labels" uint8 [n],
    "test_images", "test_labels"} (test entries are None when n_test == 0).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    info = {"root": root, "paths": [], "test_images": None, "test_labels": None}
    splits = [(MNIST_TRAIN_FILES, n, "")]
    if n_test:
        splits.append((MNIST_TEST_FILES, n_test, "test_"))
    for (image_name, label_name), count, prefix in splits:
        labels = balanced_labels(count, 10, rng)
        images = pattern_images(labels, 28, 28, color=False, seed=int(rng.integers(1 << 31)))
        info["paths"] += [
            write_idx(root / image_name, images),
            write_idx(root / label_name, labels),
        ]
        info[prefix + "images"], info[prefix + "labels"] = images, labels
    return info


# ------------------------------------------------------------------------------------------------
# CIFAR-10 python version
# ------------------------------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickles the way Python 2's cPickle wrote the official CIFAR-10 batches.

    Python 2 strings become BINSTRING opcodes (bytes under `encoding="bytes"`, no
    `_codecs.encode` call) and arrays are rebuilt by `numpy.core.multiarray._reconstruct`.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, data: bytes) -> None:
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)

    def save_bytes(self, obj: bytes) -> None:
        self._save_py2_str(obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self._save_py2_str(obj.encode("latin-1"))
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str

    def save_global(self, obj, name=None) -> None:
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def cifar10_batch(name: str, images: np.ndarray, labels: np.ndarray) -> bytes:
    """A pickled batch like the official: uint8 data (N, 3072) in R, G, B planes; list labels."""
    return py2_pickle(
        {
            b"batch_label": name.replace("_", " ").encode(),
            b"labels": [int(y) for y in labels],
            b"data": images.reshape(len(images), 3 * 32 * 32),
            b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))],
        }
    )


def write_cifar10_tarball(
    root,
    n_per_batch: int = 10,
    seed: int = 0,
    n_test: int | None = None,
    replace: dict | None = None,
    as_folder: bool = False,
) -> dict:
    """Write cifar-10-python.tar.gz (or, with as_folder, the extracted cifar-10-batches-py/).

    replace maps a member name ("data_batch_3", "test_batch", ...) to raw bytes written instead,
    or to None to leave it out. Returns {"path", "train_images" uint8 [5 * n_per_batch, 3, 32, 32]
    (data_batch_1..5 in order), "train_labels" int64, "test_images", "test_labels"}.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_test = n_per_batch if n_test is None else n_test
    members, arrays = {}, {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        count = n_test if name == "test_batch" else n_per_batch
        labels = balanced_labels(count, 10, rng)
        hwc = pattern_images(labels, 32, 32, color=True, seed=int(rng.integers(1 << 31)))
        images = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))  # [N, 3, 32, 32] = R, G, B planes
        members[name] = cifar10_batch(name, images, labels)
        arrays[name] = (images, labels.astype(np.int64))
    members["batches.meta"] = py2_pickle(
        {
            b"num_cases_per_batch": n_per_batch,
            b"label_names": [c.encode() for c in CIFAR10_CLASSES],
            b"num_vis": 3 * 32 * 32,
        }
    )
    members["readme.html"] = b"<html><body>CIFAR-10 test fixture</body></html>\n"
    for name, data in (replace or {}).items():
        members[name] = data
    members = {k: v for k, v in members.items() if v is not None}

    if as_folder:
        path = root / CIFAR10_DIR
        path.mkdir(exist_ok=True)
        for name, data in members.items():
            (path / name).write_bytes(data)
    else:
        path = root / CIFAR10_TARBALL
        with tarfile.open(path, "w:gz") as tar:
            folder = tarfile.TarInfo(CIFAR10_DIR)
            folder.type, folder.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(folder)
            order = [m for m in CIFAR10_MEMBERS if m in members] + sorted(
                m for m in members if m not in CIFAR10_MEMBERS
            )
            for name in order:
                entry = tarfile.TarInfo(f"{CIFAR10_DIR}/{name}")
                entry.size, entry.mode = len(members[name]), 0o644
                tar.addfile(entry, io.BytesIO(members[name]))
    train = [arrays[f"data_batch_{i}"] for i in range(1, 6)]
    return {
        "path": path,
        "train_images": np.concatenate([images for images, _ in train]),
        "train_labels": np.concatenate([labels for _, labels in train]),
        "test_images": arrays["test_batch"][0],
        "test_labels": arrays["test_batch"][1],
    }


# ------------------------------------------------------------------------------------------------
# Image folders
# ------------------------------------------------------------------------------------------------


def write_image_folder(
    root,
    n: int = 8,
    sizes=((40, 30), (24, 64), (32, 32)),
    modes=("L", "RGB", "RGBA", "P"),
    exts=("png", "jpg", "bmp", "webp"),
    classes=None,
    seed: int = 0,
) -> dict:
    """Write n pattern images, cycling through sizes (width, height), modes and file formats.

    classes: None writes every file directly in root (label 0); a list of names writes image i
    into root/<classes[i % len]>/ with label i % len. A mode a format cannot store is written as
    PNG. Returns {"root", "files" [Path], "labels" int64 [n], "modes", "sizes", "classes"}.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    info = {"root": root, "files": [], "labels": [], "modes": [], "sizes": [], "classes": classes}
    for i in range(n):
        label = i % len(classes) if classes else 0
        width, height = sizes[i % len(sizes)]
        # Shift the format each round of modes so every (mode, format) pair gets written.
        mode, ext = modes[i % len(modes)], exts[(i + i // len(modes)) % len(exts)]
        if mode not in _FORMAT_MODES[ext]:
            ext = "png"
        rgb = pattern_images([label], height, width, color=True, seed=int(rng.integers(1 << 31)))[0]
        image = _as_mode(Image.fromarray(rgb), mode)
        folder = root / classes[label] if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i:03d}.{ext}"
        image.save(path, **({"quality": 95} if ext in ("jpg", "webp") else {}))
        info["files"].append(path)
        info["labels"].append(label)
        info["modes"].append(mode)
        info["sizes"].append((width, height))
    info["labels"] = np.array(info["labels"], dtype=np.int64)
    return info


def _as_mode(rgb: Image.Image, mode: str) -> Image.Image:
    if mode == "RGBA":
        image = rgb.convert("RGBA")
        image.putalpha(255)  # opaque, so dropping alpha gives back the RGB content
        return image
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return rgb.convert(mode)


def write_unreadable_images(root, good: Path) -> dict:
    """Next to a good image file, the ways an image file fails to read: {kind: path}.

    "truncated_jpeg" passes PIL's header check (verify) and fails only when decoded; "no_access"
    is left out when running as root, who reads any file.
    """
    import os

    root = Path(root)
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), np.uint8)).save(
        jpeg, "JPEG", quality=90
    )
    files = {
        "truncated_jpeg": (
            root / "truncated.jpg",
            jpeg.getvalue()[: len(jpeg.getvalue()) * 2 // 3],
        ),
        "truncated_png": (root / "truncated.png", good.read_bytes()[:60]),
        "zero_bytes": (root / "empty.png", b""),
        "wrong_content": (root / "html.jpg", b"<html>404 Not Found</html>"),
    }
    out = {}
    for kind, (path, data) in files.items():
        path.write_bytes(data)
        out[kind] = path
    (root / "dangling.png").symlink_to(root / "deleted.png")
    out["dangling_link"] = root / "dangling.png"
    if os.geteuid() != 0:
        no_access = root / "no_access.png"
        no_access.write_bytes(good.read_bytes())
        no_access.chmod(0)
        out["no_access"] = no_access
    return out
