"""DCGAN (Radford et al. 2015): transposed-conv generator, strided-conv discriminator.

Image size is a parameter (a power of two >= 8): one stride-2 layer per doubling, so the MNIST
64x64 and CIFAR-10 configs are the same code at different sizes. With num_classes > 0 the pair is
class-conditional as SNGAN's (Miyato & Koyama 2018): conditional BatchNorm in G, a projection D;
the unconditional nets keep their layers and checkpoint keys.
"""

from __future__ import annotations

import math

from paddle import nn

from paddlegan_lite.models.layers import BatchNorm2D, batch_norm_2d, class_labels, normalise


def num_doublings(image_size: int) -> int:
    """Stride-2 layers between a 4x4 map and image_size x image_size."""
    n = int(round(math.log2(image_size))) - 2
    if image_size < 8 or 2 ** (n + 2) != image_size:
        raise ValueError(f"DCGAN image_size must be a power of two >= 8, got {image_size}")
    return n


class DCGANGenerator(nn.Layer):
    """(z [N, nz], labels int64 [N] or None) -> images [N, channels, image_size, image_size] in
    [-1, 1]. Unconditional when num_classes is 0 (labels are then ignored); otherwise each
    BatchNorm is a ConditionalBatchNorm2D (a gain and a shift per class) and labels are required.
    """

    def __init__(
        self,
        nz: int = 100,
        ngf: int = 64,
        channels: int = 3,
        image_size: int = 64,
        num_classes: int = 0,
    ):
        super().__init__()
        self.nz = nz
        self.num_classes = num_classes
        self.image_shape = (channels, image_size, image_size)
        n = num_doublings(image_size)
        width = ngf * 2 ** (n - 1)
        layers = [
            # input is z as a 1x1 map, going into a 4x4 transposed convolution
            nn.Conv2DTranspose(nz, width, 4, 1, 0, bias_attr=False),
            batch_norm_2d(width, num_classes),
            nn.ReLU(),
        ]  # state size. (ngf * 2^(n-1)) x 4 x 4
        for _ in range(n - 1):
            layers += [
                nn.Conv2DTranspose(width, width // 2, 4, 2, 1, bias_attr=False),
                batch_norm_2d(width // 2, num_classes),
                nn.ReLU(),
            ]  # each: channels halve, side doubles
            width //= 2
        # state size. ngf x (image_size / 2) x (image_size / 2)
        layers += [nn.Conv2DTranspose(width, channels, 4, 2, 1, bias_attr=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z, labels=None):
        x = z.reshape([-1, self.nz, 1, 1])
        if not self.num_classes:
            return self.main(x)
        labels = class_labels(labels, "generator")
        for layer in self.main.children():  # the same layers; a conditional BatchNorm's gets labels
            x = normalise(layer, x, labels)
        return x


class DCGANDiscriminator(nn.Layer):
    """(images [N, channels, image_size, image_size], labels int64 [N] or None) -> real/fake
    logits [N]. With num_classes > 0 a projection D: the logit gains <embed(label), h>, h the
    flattened last feature map that the final 4x4 conv reads (a class-specific final conv), and
    labels are required; with 0 labels are ignored."""

    def __init__(
        self, ndf: int = 64, channels: int = 3, image_size: int = 64, num_classes: int = 0
    ):
        super().__init__()
        self.num_classes = num_classes
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
        if num_classes > 0:
            # one [width x 4 x 4] vector per class, drawn as DCGAN draws the final conv's weight
            self.embed = nn.Embedding(num_classes, width * 16)
            nn.initializer.Normal(0.0, 0.02)(self.embed.weight)

    def forward(self, x, labels=None):
        if not self.num_classes:
            return self.main(x).reshape([-1])  # reshape: flatten has no double grad (penalties)
        *features, final = self.main.children()
        h = x
        for layer in features:
            h = layer(h)
        logits = final(h).reshape([-1])
        # projection: the class enters as an inner product with the features
        h = h.reshape([h.shape[0], -1])
        return logits + (self.embed(class_labels(labels, "discriminator")) * h).sum(axis=1)


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
                continue  # (conditional BatchNorm: the class's gain and shift follow)
            around_one(layer.weight)
        else:
            continue
        if getattr(layer, "bias", None) is not None:
            zero(layer.bias)


__all__ = ["DCGANGenerator", "DCGANDiscriminator", "init_weights", "num_doublings"]
