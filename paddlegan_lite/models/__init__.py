"""Model families by name. A plain dict maps `model.name` to the function that builds the pair.

config.py holds the closed-form parameter count of each family (`MODEL_SIZES`), so a config is
checked against the machine's memory before Paddle loads; a change to a net's layers must change
it too (tests/test_config.py builds every family and compares the counts).
"""

from __future__ import annotations

from paddlegan_lite.config import ModelConfig
from paddlegan_lite.models.acgan import ACGANDiscriminator, ACGANGenerator
from paddlegan_lite.models.dcgan import DCGANDiscriminator, DCGANGenerator, init_weights
from paddlegan_lite.models.mlp_gan import MLPDiscriminator, MLPGenerator


def _mlp_gan(m: ModelConfig):
    return (
        MLPGenerator(m.nz, m.hidden, m.channels, m.image_size),
        MLPDiscriminator(m.hidden, m.channels, m.image_size),
    )


def _dcgan(m: ModelConfig):
    return (
        DCGANGenerator(m.nz, m.ngf, m.channels, m.image_size),
        DCGANDiscriminator(m.ndf, m.channels, m.image_size),
    )


def _acgan(m: ModelConfig):
    return (
        ACGANGenerator(m.nz, m.ngf, m.channels, m.image_size, m.num_classes),
        ACGANDiscriminator(m.ndf, m.channels, m.image_size, m.num_classes),
    )


MODEL_BUILDERS = {"mlp_gan": _mlp_gan, "dcgan": _dcgan, "acgan": _acgan}


def build_models(m: ModelConfig):
    """(netG, netD) for `m.name`, initialised (N(0, m.init_std) where init_std > 0)."""
    try:
        netG, netD = MODEL_BUILDERS[m.name](m)
    except ValueError as exc:  # sizes the architecture cannot take
        from paddlegan_lite.config import ConfigError

        raise ConfigError(f"model: {exc}") from None
    init_weights(netG, m.init_std)
    init_weights(netD, m.init_std)
    return netG, netD


__all__ = [
    "build_models",
    "MODEL_BUILDERS",
    "ACGANGenerator",
    "ACGANDiscriminator",
    "DCGANGenerator",
    "DCGANDiscriminator",
    "MLPGenerator",
    "MLPDiscriminator",
]
