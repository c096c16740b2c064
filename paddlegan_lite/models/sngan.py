"""SNGAN's ResNet generator and discriminator (Miyato et al. 2018), the CIFAR-10 nets of mimicry's
`sngan_32.py`; with num_classes > 0, conditional BatchNorm in G and a projection D (Miyato &
Koyama 2018), mimicry's `cgan_pd_32.py`.

Image size is a parameter (8, 16, 32, 64, ...): G has one up-block per doubling above 4x4; D
halves the side until 8x8 (at least once), then runs two blocks at that size, as the 32x32 net.
The constructors draw mimicry's Xavier init; build_models redraws the conv and linear weights as
N(0, model.init_std) when that is > 0, so the SNGAN configs set init_std: 0. Spectral norm comes
from model.spectral_norm (models.apply_spectral_norm), like every family.
"""

from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F
from paddle import nn

from paddlegan_lite.models.layers import (
    ConditionalBatchNorm2D,
    ConvPool2D,
    UpsampleConv2D,
    batch_norm_2d,
    class_labels,
    normalise,
)

RESIDUAL_GAIN = math.sqrt(2.0)  # Xavier gain of the convs on the residual paths (mimicry)


def num_upsamplings(image_size: int) -> int:
    """G's up-blocks between its 4x4 map and image_size x image_size (image_size = 4 * 2**k)."""
    k = int(round(math.log2(max(image_size, 1)))) - 2
    if k < 1 or 4 * 2**k != image_size:
        raise ValueError(
            f"SNGAN image_size must be 4 * 2**k with k >= 1 (8, 16, 32, 64, ...), got {image_size}"
        )
    return k


def _xavier(layer: nn.Layer, gain: float = 1.0) -> nn.Layer:
    """Xavier-uniform weight with this gain and zero bias, in place (mimicry's init)."""
    nn.initializer.XavierUniform(gain=gain)(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.initializer.Constant(0.0)(layer.bias)
    return layer


class GBlock(nn.Layer):
    """G's residual up-block: (BN, ReLU, 2x upsample, 3x3 conv, BN, ReLU, 3x3 conv) plus a 1x1 conv
    of the upsampled input. x [N, Ci, H, W] -> [N, Co, 2H, 2W]."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: int = 0):
        super().__init__()
        self.b1 = batch_norm_2d(in_channels, num_classes)
        # each "2x nearest upsample, then conv" is one UpsampleConv2D, which ops.accelerate
        # computes as one transposed conv
        self.c1 = _xavier(UpsampleConv2D(in_channels, out_channels, 3, padding=1), RESIDUAL_GAIN)
        self.b2 = batch_norm_2d(out_channels, num_classes)
        self.c2 = _xavier(nn.Conv2D(out_channels, out_channels, 3, padding=1), RESIDUAL_GAIN)
        self.c_sc = _xavier(UpsampleConv2D(in_channels, out_channels, 1))

    def forward(self, x, labels=None):
        h = self.c1(F.relu(normalise(self.b1, x, labels)))
        h = self.c2(F.relu(normalise(self.b2, h, labels)))
        return h + self.c_sc(x)


class SNGANGenerator(nn.Layer):
    """(z [N, nz], labels int64 [N] or None) -> images [N, channels, image_size, image_size] in
    [-1, 1]. Unconditional when num_classes is 0 (labels are then ignored); otherwise every
    BatchNorm in the blocks is a ConditionalBatchNorm2D and labels are required."""

    def __init__(
        self,
        nz: int = 128,
        ngf: int = 256,
        channels: int = 3,
        image_size: int = 32,
        num_classes: int = 0,
    ):
        super().__init__()
        self.nz = nz
        self.ngf = ngf
        self.num_classes = num_classes
        self.image_shape = (channels, image_size, image_size)
        n = num_upsamplings(image_size)
        self.fc = _xavier(nn.Linear(nz, ngf * 4 * 4))
        # state size. ngf x 4 x 4
        self.blocks = nn.LayerList([GBlock(ngf, ngf, num_classes) for _ in range(n)])
        # state size. ngf x image_size x image_size (each block doubles the side)
        self.bn = nn.BatchNorm2D(ngf)  # plain, as mimicry's conditional G
        self.conv = _xavier(nn.Conv2D(ngf, channels, 3, padding=1))

    def forward(self, z, labels=None):
        labels = class_labels(labels, "generator") if self.num_classes else None
        h = self.fc(z).reshape([-1, self.ngf, 4, 4])
        for block in self.blocks:
            h = block(h, labels)
        return paddle.tanh(self.conv(F.relu(self.bn(h))))


class OptimizedDBlock(nn.Layer):
    """D's first block: (3x3 conv, ReLU, 3x3 conv, 2x2 average pool) plus a 1x1 conv of the pooled
    input; no ReLU before the first conv (it would clip the image). x [N, Ci, H, W] ->
    [N, Co, H/2, W/2]."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.c1 = _xavier(nn.Conv2D(in_channels, out_channels, 3, padding=1), RESIDUAL_GAIN)
        # each "conv, then 2x2 average pool" is one ConvPool2D, which ops.accelerate computes as
        # one stride-2 conv; the shortcut pools then convolves in mimicry, the same function (a
        # 1x1 conv and a spatial average commute)
        self.c2 = _xavier(ConvPool2D(out_channels, out_channels, 3, padding=1), RESIDUAL_GAIN)
        self.c_sc = _xavier(ConvPool2D(in_channels, out_channels, 1))

    def forward(self, x):
        return self.c2(F.relu(self.c1(x))) + self.c_sc(x)


class DBlock(nn.Layer):
    """D's residual block: (ReLU, 3x3 conv, ReLU, 3x3 conv[, 2x2 average pool]) plus the input,
    through a 1x1 conv (and the pool) where the block downsamples or changes the width.
    x [N, Ci, H, W] -> [N, Co, H/2, W/2] (downsample) or [N, Co, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool):
        super().__init__()
        self.c1 = _xavier(nn.Conv2D(in_channels, in_channels, 3, padding=1), RESIDUAL_GAIN)
        # the convs that precede the pool and the pool as one ConvPool2D (OptimizedDBlock)
        conv = ConvPool2D if downsample else nn.Conv2D
        self.c2 = _xavier(conv(in_channels, out_channels, 3, padding=1), RESIDUAL_GAIN)
        learnable_sc = downsample or in_channels != out_channels
        self.c_sc = _xavier(conv(in_channels, out_channels, 1)) if learnable_sc else None

    def forward(self, x):
        h = self.c2(F.relu(self.c1(F.relu(x))))
        return h + (x if self.c_sc is None else self.c_sc(x))


class SNGANDiscriminator(nn.Layer):
    """(images [N, channels, image_size, image_size], labels int64 [N] or None) -> real/fake
    logits [N]. With num_classes > 0 a projection D: the logit gains <embed(label), h>, h D's
    pooled features, and labels are required; with 0 labels are ignored.

    dual_projection (Han et al. 2021, "Dual Projection GANs", P2GAN): the inner products of h
    with every class's embedding are also class logits [N, num_classes], and forward returns
    (logits, class logits) as AC-GAN's D does; the trainer adds a cross-entropy on them (D on
    real images, G on its samples), which teaches the embedding the classes directly instead of
    only through the real/fake game (where a plain projection D learns them slowly: README,
    "Conditional, in few minutes"). No extra weights: the projection term is one of those logits.

    Twice differentiable for R1 and WGAN-GP (tests/unit/models/test_sngan.py checks the
    penalties' weight gradients against finite differences).
    """

    def __init__(
        self,
        ndf: int = 128,
        channels: int = 3,
        image_size: int = 32,
        num_classes: int = 0,
        dual_projection: bool = False,
    ):
        super().__init__()
        if dual_projection and num_classes < 2:
            raise ValueError(f"a dual projection D needs num_classes >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.dual_projection = dual_projection
        n = num_upsamplings(image_size)
        # the first block halves the side; down-blocks follow until 8x8 (32x32: one)
        blocks = [OptimizedDBlock(channels, ndf)]
        blocks += [DBlock(ndf, ndf, downsample=True) for _ in range(n - 2)]
        # state size. ndf x 8 x 8 (ndf x 4 x 4 for image_size 8)
        blocks += [DBlock(ndf, ndf, downsample=False) for _ in range(2)]
        self.blocks = nn.Sequential(*blocks)
        self.fc = _xavier(nn.Linear(ndf, 1))
        if num_classes > 0:
            self.embed = _xavier(nn.Embedding(num_classes, ndf))

    def forward(self, x, labels=None):
        # global sum pooling: h [N, ndf]
        h = F.relu(self.blocks(x)).sum(axis=[2, 3])
        logits = self.fc(h).reshape([-1])  # reshape: flatten has no double grad (penalties)
        if not self.num_classes:
            return logits
        labels = class_labels(labels, "discriminator")
        if not self.dual_projection:
            # projection: the class enters as an inner product with the features
            return logits + (self.embed(labels) * h).sum(axis=1)
        # every class's embedding at once (through the layer, so spectral norm's hook runs):
        # class_logits[i, k] = <embed(k), h_i>; the projection term picks the label's column
        # (one-hot product, not a gather: twice differentiable for the penalties)
        classes = paddle.arange(self.num_classes, dtype="int64")
        class_logits = paddle.matmul(h, self.embed(classes), transpose_y=True)
        chosen = F.one_hot(labels, self.num_classes).astype(class_logits.dtype)
        return logits + (class_logits * chosen).sum(axis=1), class_logits


__all__ = [
    "ConditionalBatchNorm2D",
    "DBlock",
    "GBlock",
    "OptimizedDBlock",
    "SNGANDiscriminator",
    "SNGANGenerator",
    "num_upsamplings",
]
