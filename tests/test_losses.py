"""Adversarial losses against values computed by hand (two-sided: pytest.approx)."""

import math

import paddle
import pytest

from paddlegan_lite.losses import d_loss, d_output_mean, g_loss

REAL = [2.0, -1.0]
FAKE = [0.5, -3.0]


def t(values):
    return paddle.to_tensor(values, dtype="float32")


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
