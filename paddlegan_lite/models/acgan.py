"""AC-GAN (Odena et al. 2016) as in the Keras MNIST tutorial: a class-conditional generator and a
discriminator with two heads, real/fake and the class.
"""

from __future__ import annotations

import math

import paddle
from paddle import nn

from paddlegan_lite.models.layers import BatchNorm2D, Dropout, UpsampleConv2D


def _same_stride2(size: int) -> int:
    """Side after a 3x3 stride-2 conv with padding 1 (Keras 'same')."""
    return math.ceil(size / 2)


class ACGANGenerator(nn.Layer):
    """(z [N, nz], labels int64 [N]) -> images [N, channels, image_size, image_size] in [-1, 1].

    The class enters by multiplying a learned embedding of the label into the noise.
    """

    def __init__(self, nz=100, ngf=64, channels=1, image_size=28, num_classes=10):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"AC-GAN image_size must be divisible by 4, got {image_size}")
        self.nz = nz
        self.num_classes = num_classes
        self.image_shape = (channels, image_size, image_size)
        self.base = image_size // 4  # side of the first feature map
        self.width = 2 * ngf  # its channels
        self.embed = nn.Embedding(num_classes, nz)
        self.fc = nn.Linear(nz, self.width * self.base * self.base)
        # Each "2x nearest upsample, then 3x3 conv" is one UpsampleConv2D (ops.accelerate computes
        # it as one transposed conv); the Identity keeps the upsampling's slot so checkpoint keys
        # stay main.2.*
        self.main = nn.Sequential(
            # state size. (ngf*2) x image_size/4 x image_size/4
            nn.BatchNorm2D(2 * ngf, momentum=0.8),
            nn.Identity(),
            UpsampleConv2D(2 * ngf, 2 * ngf, 3, padding=1),
            nn.ReLU(),
            nn.BatchNorm2D(2 * ngf, momentum=0.8),
            # state size. (ngf*2) x image_size/2 x image_size/2
            nn.Identity(),
            UpsampleConv2D(2 * ngf, ngf, 3, padding=1),
            nn.ReLU(),
            nn.BatchNorm2D(ngf, momentum=0.8),
            # state size. ngf x image_size x image_size
            nn.Conv2D(ngf, channels, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, z, labels):
        h = paddle.nn.functional.relu(self.fc(z * self.embed(labels.reshape([-1]))))
        return self.main(h.reshape([-1, self.width, self.base, self.base]))


class ACGANDiscriminator(nn.Layer):
    """images [N, C, H, W] -> (real/fake logits [N], class logits [N, num_classes]).

    Twice differentiable for gradient penalties: Dropout is layers.Dropout, and reshape stands
    for flatten (Paddle 3.3 has no double grad for either stock op); BatchNorm2D is layers'
    (Paddle's batch norm double grad is slow on CPU).
    """

    def __init__(self, ndf=16, channels=1, image_size=28, num_classes=10, dropout=0.25):
        super().__init__()
        side = _same_stride2(_same_stride2(image_size)) + 1  # after two convs and the zero pad
        side = _same_stride2(side)  # the third conv; the fourth keeps the side
        self.num_features = 8 * ndf * side * side
        self.features = nn.Sequential(
            nn.Conv2D(channels, ndf, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            Dropout(dropout),
            nn.Conv2D(ndf, 2 * ndf, 3, stride=2, padding=1),
            nn.Pad2D([0, 1, 0, 1]),  # Keras ZeroPadding2D(((0, 1), (0, 1))): 7x7 -> 8x8 on MNIST
            nn.LeakyReLU(0.2),
            Dropout(dropout),
            BatchNorm2D(2 * ndf, momentum=0.8),
            nn.Conv2D(2 * ndf, 4 * ndf, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            Dropout(dropout),
            BatchNorm2D(4 * ndf, momentum=0.8),
            nn.Conv2D(4 * ndf, 8 * ndf, 3, stride=1, padding=1),
            nn.LeakyReLU(0.2),
            Dropout(dropout),
        )  # state size. (ndf*8) x side x side
        self.adv_head = nn.Linear(self.num_features, 1)
        self.cls_head = nn.Linear(self.num_features, num_classes)

    def forward(self, x, labels=None):  # D names the class itself: labels are not used
        features = self.features(x).reshape([-1, self.num_features])
        return self.adv_head(features).reshape([-1]), self.cls_head(features)
