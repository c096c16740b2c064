"""Adversarial losses on raw discriminator outputs (logits), in numerically stable forms.

- vanilla: BCE on logits for D; the non-saturating -log D(G(z)) for G (Goodfellow et al. 2014).
- lsgan: least squares (Mao et al. 2017) on the raw outputs: D (r-1)^2 + f^2, G (f-1)^2.
- hinge: D relu(1-r) + relu(1+f), G -f (Lim & Ye 2017, Miyato et al. 2018).
D losses are the sum of the real and fake terms, each a batch mean.
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F


def d_loss(kind: str, real_logits, fake_logits, real_label: float = 1.0):
    """D loss for logits [N]; `real_label` < 1 is one-sided label smoothing (vanilla, lsgan)."""
    if kind == "vanilla":
        real_target = paddle.full_like(real_logits, real_label)
        return F.binary_cross_entropy_with_logits(
            real_logits, real_target
        ) + F.binary_cross_entropy_with_logits(fake_logits, paddle.zeros_like(fake_logits))
    if kind == "lsgan":
        return ((real_logits - real_label) ** 2).mean() + (fake_logits**2).mean()
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    raise ValueError(f"unknown loss {kind!r}")


def g_loss(kind: str, fake_logits):
    """Generator loss for the discriminator's logits [N] on generated images."""
    if kind == "vanilla":
        return F.softplus(-fake_logits).mean()  # -log sigmoid(f), stable for large |f|
    if kind == "lsgan":
        return ((fake_logits - 1.0) ** 2).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"unknown loss {kind!r}")


def d_output_mean(kind: str, logits) -> paddle.Tensor:
    """What logs call D(x): mean probability for vanilla, mean raw score for the others."""
    return F.sigmoid(logits).mean() if kind == "vanilla" else logits.mean()
