"""Adversarial losses on raw discriminator outputs (logits), in numerically stable forms.

- vanilla: BCE on logits for D; the non-saturating -log D(G(z)) for G (Goodfellow et al. 2014).
- lsgan: least squares (Mao et al. 2017) on the raw outputs: D (r-1)^2 + f^2, G (f-1)^2.
- hinge: D relu(1-r) + relu(1+f), G -f (Lim & Ye 2017, Miyato et al. 2018).
- wgan: Wasserstein critic (Arjovsky et al. 2017): D f - r, G -f.
D losses are the sum of the real and fake terms, each a batch mean.

Gradient penalties added to the D loss (train.gp_weight, train.r1_gamma): `gradient_penalty`
(WGAN-GP, Gulrajani et al. 2017) and `r1_penalty` (Mescheder et al. 2018). Both take D as a
callable returning adversarial logits [N] (or [N, 1]) and differentiate it with respect to its
input with create_graph=True, so that the D step's backward reaches D's weights through them.
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
    if kind == "wgan":
        return fake_logits.mean() - real_logits.mean()
    raise ValueError(f"unknown loss {kind!r}")


def g_loss(kind: str, fake_logits):
    """Generator loss for the discriminator's logits [N] on generated images."""
    if kind == "vanilla":
        return F.softplus(-fake_logits).mean()  # -log sigmoid(f), stable for large |f|
    if kind == "lsgan":
        return ((fake_logits - 1.0) ** 2).mean()
    if kind in ("hinge", "wgan"):
        return -fake_logits.mean()
    raise ValueError(f"unknown loss {kind!r}")


def d_output_mean(kind: str, logits) -> paddle.Tensor:
    """What logs call D(x): mean probability for vanilla, mean raw score for the others."""
    return F.sigmoid(logits).mean() if kind == "vanilla" else logits.mean()


def gradient_penalty(discriminator, real, fake, weight: float):
    """WGAN-GP: weight * mean((||grad_x D(x_hat)||_2 - 1)^2) on x_hat = eps real + (1-eps) fake,
    eps ~ U[0, 1] per sample; `fake` is detached (the penalty trains D only)."""
    eps = paddle.rand([real.shape[0]] + [1] * (real.ndim - 1), dtype=real.dtype)
    x_hat = (eps * real + (1.0 - eps) * fake).detach()  # a leaf: D alone is trained
    x_hat.stop_gradient = False
    grad = _input_grad(discriminator, x_hat)
    # a tiny floor inside the root: its gradient is otherwise nan where D's input gradient is 0
    norm = ((grad**2).sum(axis=1) + 1e-12).sqrt()
    return weight * ((norm - 1.0) ** 2).mean()


def r1_penalty(discriminator, real, gamma: float):
    """R1: gamma / 2 * mean(||grad_x D(real)||_2^2) on real images."""
    x = real.detach()
    x.stop_gradient = False
    grad = _input_grad(discriminator, x)
    return 0.5 * gamma * (grad**2).sum(axis=1).mean()


def _input_grad(discriminator, x):
    """d sum(D(x)) / dx, one row per sample [N, -1], kept differentiable (create_graph)."""
    out = discriminator(x)
    (grad,) = paddle.grad(out.sum(), x, create_graph=True)
    return grad.reshape([x.shape[0], -1])
