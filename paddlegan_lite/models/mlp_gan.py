"""The fully connected GAN of the TensorLayerX MNIST tutorial.

G 100-256-256-784 (ReLU, ReLU, Tanh), D 784-256-256-1 (LeakyReLU 0.2, one logit).
"""

from __future__ import annotations

import math

from paddle import nn


class MLPGenerator(nn.Layer):
    """z [N, nz] -> images [N, channels, image_size, image_size] in [-1, 1]."""

    num_classes = 0

    def __init__(self, nz: int = 100, hidden: int = 256, channels: int = 1, image_size: int = 28):
        super().__init__()
        self.nz = nz
        self.image_shape = (channels, image_size, image_size)
        self.main = nn.Sequential(
            nn.Linear(nz, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, math.prod(self.image_shape)),
            nn.Tanh(),
        )

    def forward(self, z, labels=None):  # unconditional: labels are not used
        return self.main(z).reshape([-1, *self.image_shape])


class MLPDiscriminator(nn.Layer):
    """images [N, channels, image_size, image_size] -> real/fake logits [N]."""

    def __init__(self, hidden: int = 256, channels: int = 1, image_size: int = 28):
        super().__init__()
        self.in_features = channels * image_size * image_size
        self.main = nn.Sequential(
            nn.Linear(self.in_features, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),  # a logit: the loss applies the sigmoid in a stable form
        )

    def forward(self, x, labels=None):
        # reshape, not flatten: Paddle 3.3's flatten has no double grad (gradient penalties)
        return self.main(x.reshape([-1, self.in_features])).reshape([-1])
