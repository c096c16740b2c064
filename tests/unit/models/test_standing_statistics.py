"""models.recompute_batch_norm_statistics: a generator's BatchNorm running statistics set to those
of its own forward passes over fixed noise (BigGAN's standing statistics), which the sample grids,
eval and export use."""

import copy

import numpy as np
import paddle
from helpers import assert_close

from paddlegan_lite.models import (
    STATISTICS_SEED,
    DCGANGenerator,
    recompute_batch_norm_statistics,
)


def tiny_generator(num_classes=0):
    paddle.seed(5)
    netG = DCGANGenerator(nz=8, ngf=4, channels=1, image_size=16, num_classes=num_classes)
    for layer in netG.sublayers():  # a non-trivial affine part and stale statistics
        if isinstance(layer, paddle.nn.BatchNorm2D) and not layer.weight.stop_gradient:
            layer.weight.set_value(paddle.uniform(layer.weight.shape, min=0.5, max=2.0))
            layer.bias.set_value(paddle.randn(layer.bias.shape))
            layer._mean.set_value(paddle.full(layer._mean.shape, 3.0))
            layer._variance.set_value(paddle.full(layer._variance.shape, 9.0))
    return netG


def batch_statistics(h):
    """Per-channel mean and biased variance of [N, C, H, W], as batch_norm computes them."""
    return h.mean(axis=[0, 2, 3]), h.var(axis=[0, 2, 3], unbiased=False)


def channel(v):
    return v.reshape([1, -1, 1, 1])


def test_statistics_are_the_average_of_each_batchs_over_its_own_samples():
    netG = tiny_generator()
    convT1, bn1, _, convT2, bn2 = list(netG.main.children())[:5]
    rng = np.random.default_rng(STATISTICS_SEED)
    per_batch = []
    with paddle.no_grad():  # the forward written out: train-mode BatchNorm on every batch
        for _ in range(4):
            z = paddle.to_tensor(rng.standard_normal((64, 8)).astype(np.float32))
            h = convT1(z.reshape([-1, 8, 1, 1]))
            m1, v1 = batch_statistics(h)
            h = (h - channel(m1)) / paddle.sqrt(channel(v1) + 1e-5)
            h = convT2(paddle.nn.functional.relu(h * channel(bn1.weight) + channel(bn1.bias)))
            per_batch.append((m1, v1, *batch_statistics(h)))
    want = [paddle.stack([b[i] for b in per_batch]).mean(axis=0) for i in range(4)]
    weights = {k: v.numpy().copy() for k, v in netG.named_parameters() if not v.stop_gradient}

    assert recompute_batch_norm_statistics(netG, num_samples=256, batch_size=64) is netG
    for got, expected in zip((bn1._mean, bn1._variance, bn2._mean, bn2._variance), want):
        assert_close(got, expected)
    assert not netG.training and not bn1.training  # left in eval mode, as samples are drawn
    assert bn1._momentum == bn2._momentum == 0.9  # the layers' own momentum is put back
    for name, param in netG.named_parameters():  # only the statistics changed
        if not param.stop_gradient:
            np.testing.assert_array_equal(param.numpy(), weights[name], err_msg=name)


def test_the_same_statistics_whatever_ran_before_and_paddles_rng_untouched():
    a, b = tiny_generator(), tiny_generator()
    b.train()
    with paddle.no_grad():
        b(paddle.randn([32, 8]) * 4.0)  # other statistics, training mode: none of it matters
    paddle.seed(11)
    recompute_batch_norm_statistics(a)
    after = paddle.randn([3])
    paddle.seed(11)  # its noise is numpy's: training draws the same numbers as without it
    np.testing.assert_array_equal(after.numpy(), paddle.randn([3]).numpy())
    recompute_batch_norm_statistics(b)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-6, atol=1e-7, err_msg=name)


def test_eval_mode_samples_then_match_training_mode_ones_on_a_big_batch():
    """What the statistics are for: eval-mode images (one image never depends on its batch) drawn
    as the batch-statistics images would be, where stale statistics drew other images."""
    for num_classes in (0, 3):  # conditional BatchNorm's inner statistics too
        netG = tiny_generator(num_classes)
        z = paddle.randn([512, 8])
        labels = paddle.randint(0, 3, [512]) if num_classes else None
        with paddle.no_grad():
            netG.train()
            batch_mode = netG(z, labels)
            stale = copy.deepcopy(netG)
            stale.eval()
            stale_error = float((stale(z, labels) - batch_mode).abs().mean())
            recompute_batch_norm_statistics(netG, num_samples=2048, batch_size=256)
            error = float((netG(z, labels) - batch_mode).abs().mean())
        assert error < 0.02 < stale_error, (num_classes, error, stale_error)
