"""Adversarial losses against values computed by hand (two-sided: pytest.approx); the WGAN-GP and R1
gradient penalties in closed form on a linear D, through the real DCGAN D accelerated (oneDNN) and
plain, and in short training runs."""

import math

import numpy as np
import paddle
import pytest
from helpers import assert_close, tiny_cfg

from paddlegan_lite.config import ConfigError, load_config
from paddlegan_lite.losses import d_loss, d_output_mean, g_loss, gradient_penalty, r1_penalty
from paddlegan_lite.models import build_models
from paddlegan_lite.models.layers import BatchNorm2D, double_backward_mode
from paddlegan_lite.ops import accelerate
from paddlegan_lite.trainer import train

REAL = [2.0, -1.0]
FAKE = [0.5, -3.0]


def t(values):
    return paddle.to_tensor(np.asarray(values, dtype="float32"))


def softplus(x):
    return math.log1p(math.exp(x))


def mean(values):
    return sum(values) / len(values)


def test_vanilla_d_loss_is_bce_on_logits():
    expected = mean([softplus(-r) for r in REAL]) + mean([softplus(f) for f in FAKE])
    assert float(d_loss("vanilla", t(REAL), t(FAKE))) == pytest.approx(expected, rel=1e-5)


def test_vanilla_d_loss_with_label_smoothing():
    def bce(x, y):  # -(y log s(x) + (1-y) log(1-s(x)))
        return y * softplus(-x) + (1 - y) * softplus(x)

    expected = mean([bce(r, 0.9) for r in REAL]) + mean([softplus(f) for f in FAKE])
    got = float(d_loss("vanilla", t(REAL), t(FAKE), real_label=0.9))
    assert got == pytest.approx(expected, rel=1e-5)


def test_vanilla_g_loss_is_non_saturating():
    assert float(g_loss("vanilla", t(FAKE))) == pytest.approx(
        mean([softplus(-f) for f in FAKE]), rel=1e-5
    )


def test_vanilla_is_stable_for_huge_logits():
    big = t([80.0, -80.0])  # softplus(-80) + softplus(80) = 80 per term pair, no inf or nan
    assert float(d_loss("vanilla", big, -big)) == pytest.approx(80.0, rel=1e-4)
    assert float(g_loss("vanilla", t([-100.0]))) == pytest.approx(100.0, rel=1e-5)


def test_lsgan():
    expected = mean([(r - 1) ** 2 for r in REAL]) + mean([f**2 for f in FAKE])
    assert float(d_loss("lsgan", t(REAL), t(FAKE))) == pytest.approx(expected, rel=1e-6)
    assert float(g_loss("lsgan", t(FAKE))) == pytest.approx(
        mean([(f - 1) ** 2 for f in FAKE]), rel=1e-6
    )


def test_hinge():
    expected = mean([max(0, 1 - r) for r in REAL]) + mean([max(0, 1 + f) for f in FAKE])
    assert float(d_loss("hinge", t(REAL), t(FAKE))) == pytest.approx(expected, rel=1e-6)
    assert float(g_loss("hinge", t(FAKE))) == pytest.approx(-mean(FAKE), rel=1e-6)


def test_d_output_mean():
    probs = [1 / (1 + math.exp(-r)) for r in REAL]
    assert float(d_output_mean("vanilla", t(REAL))) == pytest.approx(mean(probs), rel=1e-6)
    assert float(d_output_mean("hinge", t(REAL))) == pytest.approx(mean(REAL), rel=1e-6)


def test_unknown_loss():
    with pytest.raises(ValueError):
        d_loss("rsgan", t(REAL), t(FAKE))


# ---------------------------------------------------------------------- WGAN and the penalties
def test_wgan_losses_by_hand():
    real, fake = t([1.0, 3.0]), t([-2.0, 0.5])
    assert float(d_loss("wgan", real, fake)) == pytest.approx(-0.75 - 2.0)
    assert float(g_loss("wgan", fake)) == pytest.approx(0.75)
    assert float(d_output_mean("wgan", real)) == pytest.approx(2.0)


def linear_d(w):
    """D(x) = sum(w * x) per sample: its input gradient is w for every x."""
    return lambda x: (x * w).reshape([x.shape[0], -1]).sum(axis=1)


# ||w|| = 2.4 or 0.24: the gradient penalty pulls the input gradient's norm down to 1 from above
# and up to 1 from below (its weight gradient changes sign); R1 always pulls it to 0
@pytest.mark.parametrize("scale", [1.0, 0.1])
@pytest.mark.parametrize("which", ["gp", "r1"])
def test_penalty_and_its_weight_gradient_in_closed_form(which, scale):
    w_np = np.array([[0.3, -1.2], [2.0, 0.5]], dtype="float32") * np.float32(scale)
    w = t(w_np)
    w.stop_gradient = False
    rng = np.random.default_rng(0)
    real, fake = t(rng.standard_normal([3, 2, 2])), t(rng.standard_normal([3, 2, 2]))
    norm = float(np.linalg.norm(w_np))
    if which == "gp":
        value = gradient_penalty(linear_d(w), real, fake, weight=10.0)
        want_value = 10.0 * (norm - 1.0) ** 2
        want_grad = 10.0 * 2.0 * (norm - 1.0) * w_np / norm  # d/dw of weight (||w|| - 1)^2
    else:
        value = r1_penalty(linear_d(w), real, gamma=3.0)
        want_value = 3.0 / 2.0 * norm**2
        want_grad = 3.0 * w_np  # d/dw of gamma / 2 ||w||^2
    assert float(value) == pytest.approx(want_value, rel=1e-5)
    value.backward()
    np.testing.assert_allclose(w.grad.numpy(), want_grad, rtol=1e-5)


def test_r1_is_zero_for_a_constant_discriminator():
    b = t([0.7])
    b.stop_gradient = False
    real = t(np.ones([2, 3]))
    value = r1_penalty(lambda x: (x * 0.0).sum(axis=1) + b, real, gamma=1.0)
    assert float(value) == 0.0


@pytest.mark.parametrize("which", ["gp", "r1"])
def test_penalties_through_dcgan_d_match_stock_layers(repo_root, which):
    """The penalty and its weight gradients through D as the trainer runs it (oneDNN layers, the
    BatchNorms in double_backward_mode's elementwise form) equal those through Paddle's stock
    layers and batch_norm op (its slow CPU double grad: fine at this size)."""
    cfg = load_config(
        repo_root / "configs" / "dcgan_mnist.yaml",
        ["model.ngf=4", "model.ndf=4", "model.image_size=32"],
    )
    rng = np.random.default_rng(1)
    real, fake = t(rng.standard_normal([4, 1, 32, 32])), t(rng.standard_normal([4, 1, 32, 32]))

    def run(prepare, elementwise_norms):
        paddle.seed(5)
        netD = prepare(build_models(cfg.model)[1])

        def logits(x):
            if not elementwise_norms:
                return netD(x)
            with double_backward_mode(netD):
                return netD(x)

        paddle.seed(6)  # the same eps draw every time
        if which == "gp":
            value = gradient_penalty(logits, real, fake, weight=10.0)
        else:
            value = r1_penalty(logits, real, gamma=1.0)
        params = [p for p in netD.parameters() if not p.stop_gradient]
        # allow_unused: a parameter the input gradient does not depend on gets None
        grads = paddle.grad(value, params, allow_unused=True)
        return [value.numpy()] + [
            np.zeros(p.shape) if g is None else g.numpy() for g, p in zip(grads, params)
        ]

    stock = run(lambda net: net, elementwise_norms=False)
    assert len(stock) > 2 and float(stock[0]) > 0
    for prepare, elementwise_norms in [(accelerate, True), (lambda net: net, True)]:
        got = run(prepare, elementwise_norms)
        assert len(got) == len(stock)
        for a, b in zip(got, stock):
            assert_close(a, b)


def test_the_trainer_penalises_d_with_elementwise_batch_norms(mnist_root, tmp_path, monkeypatch):
    """Every forward of D's BatchNorms inside the penalty is the elementwise one (Paddle's CPU
    batch_norm_double_grad made such a step ~20x slower), every other the stock op."""
    seen = []
    forward = BatchNorm2D.forward

    def spy(layer, x):
        seen.append(layer.elementwise)
        return forward(layer, x)

    monkeypatch.setattr(BatchNorm2D, "forward", spy)
    cfg = tiny_cfg("dcgan_mnist", mnist_root, tmp_path, "train.max_steps=2", "train.r1_gamma=1")
    train(cfg)
    assert any(seen) and not all(seen)  # both kinds of forward ran


@pytest.mark.parametrize(
    "name, options",
    [
        ("mlp_gan_mnist", ["train.loss=wgan", "train.gp_weight=10"]),
        ("mlp_gan_mnist", ["train.r1_gamma=1", "train.r1_interval=2"]),
        # with spectral norm (its sigma differentiated twice): the issue's own command,
        # sngan_cifar10_cond -o train.r1_gamma=0.1, and WGAN-GP on a normalised DCGAN
        ("sngan_cifar10_cond", ["train.r1_gamma=0.1"]),
        ("dcgan_mnist", ["model.spectral_norm=d", "train.loss=wgan", "train.gp_weight=10"]),
        # through the projection and D's BatchNorm (double_backward_mode)
        ("dcgan_cifar10_32_cond", ["train.r1_gamma=0.1", "model.spectral_norm=d"]),
    ],
    ids=["wgan-gp", "lazy-r1", "sngan-cond-r1", "dcgan-sn-wgan-gp", "dcgan-cond-sn-r1"],
)
def test_two_training_steps_with_a_penalty(mnist_root, tmp_path, name, options):
    cfg = tiny_cfg(name, mnist_root, tmp_path, "train.max_steps=2", *options)
    last = train(cfg)
    assert np.isfinite(last["loss_d"]) and np.isfinite(last["loss_g"])


@pytest.mark.parametrize(
    "option", ["train.gp_weight=-1", "train.r1_gamma=-0.5", "train.r1_interval=0"]
)
def test_config_refuses_bad_penalty_options(repo_root, option):
    with pytest.raises(ConfigError, match=option.split("=")[0]):
        load_config(repo_root / "configs" / "mlp_gan_mnist.yaml", [option])
