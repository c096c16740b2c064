"""DiffAugment: differentiable augmentation of every image D sees (Zhao et al. 2020).

"Differentiable Augmentation for Data-Efficient GAN Training" (https://arxiv.org/abs/2006.10738)
augments real and fake images alike before each pass of the discriminator, in the D step and in
the G step. Because every transform is made of differentiable tensor ops, G's gradient flows
back through the augmentation, and D cannot memorise a small training set's exact pixels. The
transforms and their ranges follow the authors' reference (mit-han-lab/data-efficient-gans,
DiffAugment_pytorch.py):

- color: brightness + U[-0.5, 0.5), saturation x U[0, 2), contrast x U[0.5, 1.5), per sample;
- translation: a shift of up to 1/8 of the image size along each axis, per sample, zero fill;
- cutout: a square of half the image size, centred at a random pixel per sample, set to zero
  (cut off where it overhangs the border, as in the reference).

Each call draws fresh parameters from Paddle's generator, so a run stays a function of its seed.
Images are NCHW in [-1, 1], any number of channels (saturation leaves 1-channel images alone).
"""

from __future__ import annotations

import paddle

TRANSLATION_RATIO = 0.125  # largest shift, as a fraction of the image size
CUTOUT_RATIO = 0.5  # side of the cut-out square, as a fraction of the image size


def diff_augment(x, policies: list[str]):
    """`x` with the transforms of `policies` (["color", "translation", "cutout"], as
    config.diffaugment_policies reads train.diffaugment; [] = x itself) applied in that order."""
    for name in policies:
        for transform in TRANSFORMS[name]:
            x = transform(x)
    return x


# ---------------------------------------------------------------------- random draws
# Module functions, so that tests can fix a draw; both use Paddle's global generator.
def _uniform(batch: int):
    """U[0, 1) per sample, shaped [batch, 1, 1, 1] to broadcast over an image."""
    return paddle.rand([batch, 1, 1, 1], dtype="float32")


def _integers(low: int, high: int, batch: int):
    """Integers in [low, high) per sample, shape [batch]."""
    return paddle.randint(low, high, [batch], dtype="int64")


# ---------------------------------------------------------------------- color
def brightness(x):
    """x + b, b ~ U[-0.5, 0.5) per sample."""
    return x + (_uniform(x.shape[0]) - 0.5).astype(x.dtype)


def saturation(x):
    """Each pixel's distance from its channel mean, times s ~ U[0, 2) per sample."""
    mean = x.mean(axis=1, keepdim=True)
    return (x - mean) * (_uniform(x.shape[0]) * 2).astype(x.dtype) + mean


def contrast(x):
    """Each value's distance from the image's mean, times c ~ U[0.5, 1.5) per sample."""
    mean = x.mean(axis=[1, 2, 3], keepdim=True)
    return (x - mean) * (_uniform(x.shape[0]) + 0.5).astype(x.dtype) + mean


# ---------------------------------------------------------------------- geometry
def translation(x, ratio: float = TRANSLATION_RATIO):
    """Shift each image by (dy, dx), each drawn in [-r, r] with r = round(ratio * size); the
    pixels shifted in are zero."""
    b, _, h, w = x.shape
    dy = _integers(-int(h * ratio + 0.5), int(h * ratio + 0.5) + 1, b)
    dx = _integers(-int(w * ratio + 0.5), int(w * ratio + 0.5) + 1, b)
    x = _shift(x, dy, axis=2)
    return _shift(x, dx, axis=3)


def _shift(x, offset, axis: int):
    """out[..., i, ...] = x[..., i - offset[b], ...] along `axis` (2 or 3), zero outside."""
    b, size = x.shape[0], x.shape[axis]
    source = paddle.arange(size, dtype="int64").unsqueeze(0) - offset.unsqueeze(1)  # [B, size]
    inside = ((source >= 0) & (source < size)).astype(x.dtype)
    view = [b, 1, size, 1] if axis == 2 else [b, 1, 1, size]
    index = paddle.clip(source, 0, size - 1).reshape(view).expand(x.shape)
    return paddle.take_along_axis(x, index, axis=axis) * inside.reshape(view)


def cutout(x, ratio: float = CUTOUT_RATIO):
    """Zero a square of side round(ratio * size) centred at a random pixel of each image."""
    b, _, h, w = x.shape
    size_h, size_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # centres as the reference draws them: an odd side may centre on any pixel, an even side
    # also one past the last (its hole then starts half a side before it)
    cy = _integers(0, h + (1 - size_h % 2), b)
    cx = _integers(0, w + (1 - size_w % 2), b)
    rows = _span(cy - size_h // 2, size_h, h).reshape([b, 1, h, 1])
    cols = _span(cx - size_w // 2, size_w, w).reshape([b, 1, 1, w])
    return x * (1 - rows * cols).astype(x.dtype)


def _span(start, length: int, size: int):
    """[B, size] of 1.0 where start[b] <= i < start[b] + length, else 0.0."""
    i = paddle.arange(size, dtype="int64").unsqueeze(0)
    start = start.unsqueeze(1)
    return ((i >= start) & (i < start + length)).astype("float32")


TRANSFORMS = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


# ---------------------------------------------------------------------- real images only
def random_hflip(x):
    """Each image mirrored left-right with probability 1/2 (data.hflip): for real images only,
    as StyleGAN2-ADA's --mirror and BigGAN's CIFAR loaders. Unlike DiffAugment this changes the
    data, not what D sees of it: a mirrored photo is another photo of the same distribution, so G
    learns to draw both and D gets twice the distinct images of a small dataset. Wrong for data
    whose mirror image is not of it (digits, text)."""
    mirror = _uniform(x.shape[0]) < 0.5
    return paddle.where(mirror, x.flip(axis=[3]), x)
