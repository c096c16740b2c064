"""Image helpers shared by training and deployment (numpy and Pillow only, no Paddle)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] float images [N, C, H, W] -> uint8 [N, H, W, C]."""
    scaled = np.clip((np.asarray(images, dtype=np.float32) + 1.0) * 127.5 + 0.5, 0, 255)
    return scaled.astype(np.uint8).transpose(0, 2, 3, 1)


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 images [N, H, W, C] -> one uint8 grid [rows*(H+pad)+pad, nrow*(W+pad)+pad, C].

    `nrow` is images per row (default: a near-square grid); row i holds images i*nrow...
    """
    n, h, w, c = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        grid[top : top + h, left : left + w] = image
    return grid


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Save uint8 [H, W, C] (C 1 or 3) as PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = image[:, :, 0] if image.shape[2] == 1 else image
    Image.fromarray(array).save(path)
    return path
