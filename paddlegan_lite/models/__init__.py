"""Model families by name. A plain dict maps `model.name` to the function that builds the pair.

config.py holds the closed-form parameter count of each family (`MODEL_SIZES`), so a config is
checked against the machine's memory before Paddle loads; a change to a net's layers must change
it too (tests/unit/test_config.py builds every family and compares the counts).
"""

from __future__ import annotations

import numpy as np
import paddle
from paddle import nn
from paddle.nn.utils import spectral_norm
from paddle.nn.utils.spectral_norm_hook import SpectralNorm

from paddlegan_lite.config import ModelConfig
from paddlegan_lite.models.acgan import ACGANDiscriminator, ACGANGenerator
from paddlegan_lite.models.dcgan import DCGANDiscriminator, DCGANGenerator, init_weights
from paddlegan_lite.models.layers import TwiceDifferentiableSpectralNorm
from paddlegan_lite.models.mlp_gan import MLPDiscriminator, MLPGenerator
from paddlegan_lite.models.sngan import SNGANDiscriminator, SNGANGenerator


def _mlp_gan(m: ModelConfig):
    return (
        MLPGenerator(m.nz, m.hidden, m.channels, m.image_size),
        MLPDiscriminator(m.hidden, m.channels, m.image_size),
    )


def _dcgan(m: ModelConfig):
    return (
        DCGANGenerator(m.nz, m.ngf, m.channels, m.image_size, m.num_classes),
        DCGANDiscriminator(m.ndf, m.channels, m.image_size, m.num_classes),
    )


def _acgan(m: ModelConfig):
    return (
        ACGANGenerator(m.nz, m.ngf, m.channels, m.image_size, m.num_classes),
        ACGANDiscriminator(m.ndf, m.channels, m.image_size, m.num_classes),
    )


def _sngan(m: ModelConfig):
    return (
        SNGANGenerator(m.nz, m.ngf, m.channels, m.image_size, m.num_classes),
        SNGANDiscriminator(m.ndf, m.channels, m.image_size, m.num_classes, m.dual_projection),
    )


MODEL_BUILDERS = {"mlp_gan": _mlp_gan, "dcgan": _dcgan, "acgan": _acgan, "sngan": _sngan}


def build_models(m: ModelConfig):
    """(netG, netD) for `m.name`, initialised (N(0, m.init_std) where init_std > 0)."""
    try:
        netG, netD = MODEL_BUILDERS[m.name](m)
    except ValueError as exc:  # sizes the architecture cannot take
        from paddlegan_lite.config import ConfigError

        raise ConfigError(f"model: {exc}") from None
    init_weights(netG, m.init_std)
    init_weights(netD, m.init_std)
    if "d" in m.spectral_norm:
        apply_spectral_norm(netD, embeddings=True)
    if "g" in m.spectral_norm:
        apply_spectral_norm(netG)
    return netG, netD


def apply_spectral_norm(net: nn.Layer, embeddings: bool = False) -> nn.Layer:
    """Spectral normalisation (Miyato et al. 2018) of every conv, transposed-conv and linear
    weight of a built net, in place, with Paddle's own hook (paddle.nn.utils.spectral_norm).

    Each such layer's `weight` parameter becomes `weight_orig`, with buffers `weight_u` and
    `weight_v` (all three in the state_dict, so checkpoints keep them); before every forward the
    hook sets `layer.weight` to weight_orig / sigma, sigma estimated by one power iteration per
    training-mode forward (none in eval mode). `ops.accelerate` keeps the layer objects (and so
    the hook) and its fast forwards read `self.weight`, so they use the normalised weight too.

    The weight is seen as a matrix [out, -1] (the `dim` moved first), as in PyTorch: dim 0 for
    Conv2D's [out, in, k, k]; dim 1 for Conv2DTranspose's [in, out, k, k] and Linear's [in, out].

    With `embeddings` (build_models sets it for D) nn.Embedding weights are normalised too, as
    the matrix [num_classes, dim] (dim 0, as mimicry's SNEmbedding): the projection D's class
    embedding is a linear map of the one-hot label into the logit. G's embeddings are not: they
    are per-class gains (AC-GAN's noise scaling, conditional BatchNorm's gamma and beta,
    initialised to 1 and 0), which division by the matrix norm would shrink towards 0.
    """
    for layer in net.sublayers(include_self=True):
        if isinstance(layer, (nn.Conv2DTranspose, nn.Linear)):
            spectral_norm(layer, dim=1)
        elif isinstance(layer, nn.Conv2D) or (embeddings and isinstance(layer, nn.Embedding)):
            spectral_norm(layer, dim=0)
        for hook in layer._forward_pre_hooks.values():
            if type(hook) is SpectralNorm:  # the same hook, its sigma twice differentiable
                hook.__class__ = TwiceDifferentiableSpectralNorm
    return net


def refresh_spectral_norm(net: nn.Layer) -> None:
    """Set each normalised layer's `weight` to weight_orig / sigma from its current u and v (no
    power iteration), as its hook does before an eval-mode forward.

    paddle.jit.save traces `forward` without the forward pre-hooks, so the exported program holds
    `weight` as it stands: stale after loading a checkpoint or an optimizer step. export.py calls
    this first (tests/unit/models/test_spectral_norm.py checks Paddle Inference against the
    dynamic graph).
    """
    with paddle.no_grad():
        for layer in net.sublayers(include_self=True):
            for hook in layer._forward_pre_hooks.values():
                if isinstance(hook, SpectralNorm):
                    setattr(layer, hook.name, hook.compute_weight(layer, False))


STATISTICS_SEED = 20190208  # the noise behind standing statistics: fixed, apart from eval's seeds


def recompute_batch_norm_statistics(
    netG: nn.Layer, num_samples: int = 1024, batch_size: int = 128
) -> nn.Layer:
    """Set the running mean and variance of every BatchNorm in `netG` to the statistics of its
    own forward passes over `num_samples` fixed noise vectors (and uniform random labels when
    conditional), in place; returns `netG` in eval mode. BigGAN's "standing statistics" (Brock
    et al. 2019, appendix C).

    Why: eval-mode samples (the grids, eval, export) normalise with running averages. G's own
    lag its weights (an average over the last ~10 steps' batches, momentum 0.9), and an EMA
    generator has none of its own (trainer.update_ema copies G's, which belong to other weights):
    scored on the real CIFAR subset this took the EMA of dcgan_cifar10_32 from FID 27.7 to 18.6
    and G from 18.6 to 16.0 (bench/RESULTS.md). Only BatchNorm runs in training mode here
    (dropout and spectral norm's power iteration stay as in eval); no gradients; Paddle's RNG is
    not touched (the noise comes from numpy), so training continues as it would have.
    """
    norms = [layer for layer in netG.sublayers() if isinstance(layer, nn.layer.norm._BatchNormBase)]
    netG.eval()
    if not norms:
        return netG
    rng = np.random.default_rng(STATISTICS_SEED)
    num_classes = getattr(netG, "num_classes", 0)
    momenta = [norm._momentum for norm in norms]
    try:
        for norm in norms:
            norm.train()
        with paddle.no_grad():
            for k in range(-(-num_samples // batch_size)):
                for norm in norms:  # running = m * running + (1 - m) * batch: k / (k + 1) averages
                    norm._momentum = k / (k + 1)
                z = rng.standard_normal((batch_size, netG.nz)).astype(np.float32)
                labels = None
                if num_classes:
                    labels = paddle.to_tensor(rng.integers(0, num_classes, batch_size, "int64"))
                netG(paddle.to_tensor(z), labels)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm._momentum = momentum
        netG.eval()
    return netG


__all__ = [
    "apply_spectral_norm",
    "build_models",
    "recompute_batch_norm_statistics",
    "refresh_spectral_norm",
    "MODEL_BUILDERS",
    "ACGANGenerator",
    "ACGANDiscriminator",
    "DCGANGenerator",
    "DCGANDiscriminator",
    "MLPGenerator",
    "MLPDiscriminator",
    "SNGANGenerator",
    "SNGANDiscriminator",
]
