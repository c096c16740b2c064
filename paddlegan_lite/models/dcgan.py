"""DCGAN (Radford et al. 2015): transposed-conv generator, strided-conv discriminator.

Image size is a parameter (a power of two >= 8): one stride-2 layer per doubling, so the MNIST
64x64 and CIFAR-10 configs are the same code at different sizes.
"""

from __future__ import annotations

import math

from paddle import nn

from paddlegan_lite.models.layers import BatchNorm2D


def num_doublings(image_size: int) -> int:
    """Stride-2 layers between a 4x4 map and image_size x image_size."""
    n = int(round(math.log2(image_size))) - 2
    if image_size < 8 or 2 ** (n + 2) != image_size:
        raise ValueError(f"DCGAN image_size must be a power of two >= 8, got {image_size}")
    return n


class DCGANGenerator(nn.Layer):
    """z [N, nz] -> images [N, channels, image_size, image_size] in [-1, 1]."""

    num_classes = 0

    def __init__(self, nz: int = 100, ngf: int = 64, channels: int = 3, image_size: int = 64):
        super().__init__()
        self.nz = nz
        self.image_shape = (channels, image_size, image_size)
        n = num_doublings(image_size)
        width = ngf * 2 ** (n - 1)
        layers = [
            # input is z as a 1x1 map, going into a 4x4 transposed convolution
            nn.Conv2DTranspose(nz, width, 4, 1, 0, bias_attr=False),
            nn.BatchNorm2D(width),
            nn.ReLU(),
        ]  # state size. (ngf * 2^(n-1)) x 4 x 4
        for _ in range(n - 1):
            layers += [
                nn.Conv2DTranspose(width, width // 2, 4, 2, 1, bias_attr=False),
                nn.BatchNorm2D(width // 2),
                nn.ReLU(),
            ]  # each: channels halve, side doubles
            width //= 2
        # state size. ngf x (image_size / 2) x (image_size / 2)
        layers += [nn.Conv2DTranspose(width, channels, 4, 2, 1, bias_attr=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z, labels=None):  # unconditional: labels are not used
        return self.main(z.reshape([-1, self.nz, 1, 1]))


class DCGANDiscriminator(nn.Layer):
    """images [N, channels, image_size, image_size] -> real/fake logits [N]."""

    def __init__(self, ndf: int = 64, channels: int = 3, image_size: int = 64):
        super().__init__()
        n = num_doublings(image_size)
        # input is (channels) x image_size x image_size; no BatchNorm on the first layer (paper)
        layers = [nn.Conv2D(channels, ndf, 4, 2, 1, bias_attr=False), nn.LeakyReLU(0.2)]
        width = ndf
        for _ in range(n - 1):
            layers += [
                nn.Conv2D(width, width * 2, 4, 2, 1, bias_attr=False),
                BatchNorm2D(width * 2),  # layers.BatchNorm2D: penalties differentiate it twice
                nn.LeakyReLU(0.2),
            ]  # each: channels double, side halves
            width *= 2
        # state size. (ndf * 2^(n-1)) x 4 x 4 -> one logit
        layers += [nn.Conv2D(width, 1, 4, 1, 0, bias_attr=False)]
        self.main = nn.Sequential(*layers)

    def forward(self, x, labels=None):
        return self.main(x).reshape([-1])  # reshape: flatten has no double grad (penalties)


def init_weights(net: nn.Layer, std: float = 0.02) -> None:
    """DCGAN init: conv/linear weights ~ N(0, std), BatchNorm scale ~ N(1, std), biases 0."""
    if std <= 0:
        return  # keep Paddle's defaults
    normal = nn.initializer.Normal(0.0, std)
    around_one = nn.initializer.Normal(1.0, std)
    zero = nn.initializer.Constant(0.0)
    for layer in net.sublayers():
        if isinstance(layer, (nn.Conv2D, nn.Conv2DTranspose, nn.Linear)):
            normal(layer.weight)
        elif isinstance(layer, (nn.BatchNorm2D, nn.BatchNorm1D)):
            if layer.weight is None or layer.weight.stop_gradient:  # a fixed affine part
                continue  # (SNGAN's conditional BatchNorm: the class's gain and shift follow)
            around_one(layer.weight)
        else:
            continue
        if getattr(layer, "bias", None) is not None:
            zero(layer.bias)


__all__ = ["DCGANGenerator", "DCGANDiscriminator", "init_weights", "num_doublings"]
