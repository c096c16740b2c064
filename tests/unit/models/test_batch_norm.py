"""models/layers.BatchNorm2D: the discriminators' batch norm. Outside double_backward_mode it is
Paddle's nn.BatchNorm2D; inside (the penalties' forward of D) it computes the same training-mode
output from elementwise ops whose gradients Paddle differentiates again quickly, and leaves the
running statistics alone."""

import numpy as np
import paddle
import pytest
from helpers import assert_close, leaf, outputs_and_grads
from paddle import nn

from paddlegan_lite.models.layers import BatchNorm2D, double_backward_mode


def pair(channels=3, **kwargs):
    """nn.BatchNorm2D and layers.BatchNorm2D with the same non-trivial affine part."""
    stock, ours = nn.BatchNorm2D(channels, **kwargs), BatchNorm2D(channels, **kwargs)
    rng = np.random.default_rng(3)
    stock.weight.set_value(rng.uniform(0.5, 2.0, channels).astype("float32"))
    stock.bias.set_value(rng.standard_normal(channels).astype("float32"))
    ours.set_state_dict(stock.state_dict())
    assert list(ours.state_dict()) == list(stock.state_dict())  # same checkpoint keys
    return stock, ours


def test_elementwise_mode_gives_the_stock_output_and_gradients():
    stock, ours = pair(momentum=0.8)
    x = leaf([6, 3, 5, 4], seed=1) * 3.0 + 1.0  # mean and scale far from 0 and 1
    want = outputs_and_grads(stock, [x], [stock.weight, stock.bias])
    with double_backward_mode(ours):
        got = outputs_and_grads(ours, [x], [ours.weight, ours.bias])
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert_close(a, b)


def test_elementwise_mode_leaves_running_statistics_alone():
    _, ours = pair()
    before = {k: v.numpy().copy() for k, v in ours.state_dict().items()}
    with double_backward_mode(ours):
        ours(paddle.randn([4, 3, 2, 2]) + 5.0)
    for key, value in ours.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), before[key])


def test_outside_the_mode_it_is_the_stock_layer():
    """Training forwards update the running statistics as nn.BatchNorm2D does (Paddle keeps the
    biased variance), and eval mode uses them."""
    stock, ours = pair(momentum=0.7)
    for seed in range(3):
        x = paddle.to_tensor(np.random.default_rng(seed).normal(2, 3, [5, 3, 4, 4]), "float32")
        np.testing.assert_array_equal(ours(x).numpy(), stock(x).numpy())
    for a, b in zip(ours.state_dict().values(), stock.state_dict().values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    ours.eval(), stock.eval()
    with double_backward_mode(ours):  # eval mode: running statistics, as export runs it
        np.testing.assert_array_equal(ours(x).numpy(), stock(x).numpy())


def test_the_mode_is_switched_off_again_after_an_error():
    net = nn.Sequential(nn.Conv2D(1, 2, 3), BatchNorm2D(2), nn.Sequential(BatchNorm2D(2)))
    with pytest.raises(RuntimeError), double_backward_mode(net):
        assert all(layer.elementwise for layer in net.sublayers() if isinstance(layer, BatchNorm2D))
        raise RuntimeError("boom")
    assert not any(getattr(layer, "elementwise", False) for layer in net.sublayers())


def test_elementwise_mode_takes_half_precision_input_as_amp_gives_it():
    """Under train.amp (O1) D's convs hand the BatchNorm float16 on a GPU: statistics in float32,
    output float16 (simulated on CPU; not run on a GPU)."""
    stock, ours = pair()
    x = paddle.to_tensor(np.random.default_rng(4).normal(1, 2, [4, 3, 3, 3]), "float32")
    half = x.astype("float16")
    with double_backward_mode(ours):
        out = ours(half)
    assert out.dtype == paddle.float16
    assert_close(out.astype("float32").numpy(), stock(half.astype("float32")).numpy(), rtol=2e-3)
