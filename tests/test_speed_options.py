"""Speed options: the faster layer formulations compute what the stock Paddle layers compute
(outputs and gradients), the models keep their checkpoint keys, and the CPU set-up is safe."""

import os
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from conftest import tool_env
from paddle import nn

from paddlegan_lite import runtime
from paddlegan_lite.errors import UserError
from paddlegan_lite.models.acgan import ACGANDiscriminator, ACGANGenerator
from paddlegan_lite.models.dcgan import DCGANDiscriminator
from paddlegan_lite.models.layers import FastConv2D, UpsampleConv2D


def assert_close(actual, expected, rtol=1e-4):
    """Two-sided: every element within rtol of the expected tensor's scale."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = float(np.abs(expected).max()) or 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def outputs_and_grads(fn, inputs, params, seed=0):
    """fn(*inputs), and the gradients of a fixed random projection of it for inputs + params."""
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    rng = np.random.default_rng(seed)
    loss = sum(
        (o * paddle.to_tensor(rng.standard_normal(o.shape).astype("float32"))).sum() for o in outs
    )
    wrt = [t for t in [*inputs, *params] if not t.stop_gradient]
    grads = paddle.grad(loss, wrt)
    return [o.numpy() for o in outs], [g.numpy() for g in grads]


def leaf(shape, seed):
    x = paddle.to_tensor(np.random.default_rng(seed).standard_normal(shape).astype("float32"))
    x.stop_gradient = False
    return x


# ---------------------------------------------------------------------------------- layers
@pytest.mark.parametrize(
    "ci, co, k, stride, padding, bias, side",
    [
        (256, 1, 4, 1, 0, False, 4),  # DCGAN's last D layer: the kernel covers the input
        (8, 3, 4, 1, 0, True, 4),  # the same with a bias
        (1, 16, 3, 2, 1, True, 28),  # AC-GAN D, first layer
        (16, 32, 3, 2, 1, True, 14),
        (32, 64, 3, 1, 1, True, 8),  # stride 1
        (4, 6, 4, 2, 1, False, 16),  # DCGAN-style, no bias
    ],
)
def test_fast_conv2d_matches_conv2d(ci, co, k, stride, padding, bias, side):
    paddle.seed(1)
    stock = nn.Conv2D(ci, co, k, stride, padding, bias_attr=None if bias else False)
    fast = FastConv2D(ci, co, k, stride, padding, bias_attr=None if bias else False)
    fast.set_state_dict(stock.state_dict())
    if bias:  # Paddle starts biases at 0: make them count
        fast.bias.set_value(paddle.randn(fast.bias.shape))
        stock.bias.set_value(fast.bias)
    x = leaf([5, ci, side, side], seed=2)
    want = outputs_and_grads(stock, [x], stock.parameters())
    got = outputs_and_grads(fast, [x], fast.parameters())
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert a.shape == b.shape
        assert_close(a, b)


def test_fast_conv2d_falls_back_outside_its_cases():
    """Groups and reflect padding take the stock code path: still the stock result."""
    paddle.seed(3)
    x = leaf([2, 4, 6, 6], seed=4)
    for kwargs in ({"groups": 2}, {"padding_mode": "reflect"}):
        stock, fast = nn.Conv2D(4, 4, 3, 1, 1, **kwargs), FastConv2D(4, 4, 3, 1, 1, **kwargs)
        fast.set_state_dict(stock.state_dict())
        np.testing.assert_array_equal(fast(x).numpy(), stock(x).numpy())


@pytest.mark.parametrize("ci, co, side", [(8, 8, 7), (8, 4, 14), (3, 5, 1), (2, 3, 6)])
def test_upsample_conv_matches_upsample_then_conv(ci, co, side):
    paddle.seed(5)
    stock_conv = nn.Conv2D(ci, co, 3, padding=1)
    fused = UpsampleConv2D(ci, co, 3, padding=1)
    fused.set_state_dict(stock_conv.state_dict())
    fused.bias.set_value(paddle.randn([co]))
    stock_conv.bias.set_value(fused.bias)

    def stock(x):
        return stock_conv(F.interpolate(x, scale_factor=2, mode="nearest"))

    x = leaf([3, ci, side, side], seed=6)
    want = outputs_and_grads(stock, [x], stock_conv.parameters())
    got = outputs_and_grads(fused, [x], fused.parameters())
    assert got[0][0].shape == (3, co, 2 * side, 2 * side)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert a.shape == b.shape
        assert_close(a, b)


@pytest.mark.parametrize(
    "args, kwargs",
    [((4, 4, 5), {"padding": 2}), ((4, 4, 3), {}), ((4, 4, 3), {"padding": 1, "stride": 2})],
)
def test_upsample_conv_refuses_other_shapes(args, kwargs):
    with pytest.raises(ValueError, match="3x3 convolutions with padding 1 and stride 1"):
        UpsampleConv2D(*args, **kwargs)


def test_upsample_conv_keeps_conv2d_parameters():
    """Same parameter names and shapes as nn.Conv2D: checkpoints load either way."""
    stock, fused = nn.Conv2D(6, 4, 3, padding=1), UpsampleConv2D(6, 4, 3, padding=1)
    shapes = {k: tuple(v.shape) for k, v in fused.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in stock.state_dict().items()}
    assert isinstance(fused, nn.Conv2D)  # init_weights and export treat it as a conv


# ---------------------------------------------------------------------------------- models
# state_dict keys and shapes of the models as they were before the faster layers (tiny widths)
KEYS_BEFORE = {
    "DCGANDiscriminator": {
        "main.0.weight": (4, 1, 4, 4), "main.2.weight": (8, 4, 4, 4), "main.3.weight": (8,),
        "main.3.bias": (8,), "main.3._mean": (8,), "main.3._variance": (8,),
        "main.5.weight": (1, 8, 4, 4),
    },
    "ACGANGenerator": {
        "embed.weight": (3, 8), "fc.weight": (8, 32), "fc.bias": (32,), "main.0.weight": (8,),
        "main.0.bias": (8,), "main.0._mean": (8,), "main.0._variance": (8,),
        "main.2.weight": (8, 8, 3, 3), "main.2.bias": (8,), "main.4.weight": (8,),
        "main.4.bias": (8,), "main.4._mean": (8,), "main.4._variance": (8,),
        "main.6.weight": (4, 8, 3, 3), "main.6.bias": (4,), "main.8.weight": (4,),
        "main.8.bias": (4,), "main.8._mean": (4,), "main.8._variance": (4,),
        "main.9.weight": (1, 4, 3, 3), "main.9.bias": (1,),
    },
    "ACGANDiscriminator": {
        "features.0.weight": (2, 1, 3, 3), "features.0.bias": (2,),
        "features.3.weight": (4, 2, 3, 3), "features.3.bias": (4,), "features.7.weight": (4,),
        "features.7.bias": (4,), "features.7._mean": (4,), "features.7._variance": (4,),
        "features.8.weight": (8, 4, 3, 3), "features.8.bias": (8,), "features.11.weight": (8,),
        "features.11.bias": (8,), "features.11._mean": (8,), "features.11._variance": (8,),
        "features.12.weight": (16, 8, 3, 3), "features.12.bias": (16,),
        "adv_head.weight": (64, 1), "adv_head.bias": (1,), "cls_head.weight": (64, 3),
        "cls_head.bias": (3,),
    },
}  # fmt: skip


@pytest.mark.parametrize(
    "net",
    [DCGANDiscriminator(4, 1, 16), ACGANGenerator(8, 4, 1, 8, 3), ACGANDiscriminator(2, 1, 8, 3)],
    ids=lambda net: type(net).__name__,
)
def test_models_keep_their_checkpoint_keys(net):
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == KEYS_BEFORE[type(net).__name__]


def stock_run(layers, x):
    """Run a Sequential as the stock layers would: Upsample where the Identity keeps its slot,
    nn.Conv2D's own forward on every (faster) conv's parameters."""
    for layer in layers:
        if isinstance(layer, nn.Identity):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        elif isinstance(layer, nn.Conv2D):
            x = nn.Conv2D.forward(layer, x)
        else:
            x = layer(x)
    return x


def test_acgan_generator_matches_stock_layers():
    paddle.seed(7)
    netG = ACGANGenerator(nz=12, ngf=8, channels=1, image_size=28, num_classes=10)
    z, labels = leaf([6, 12], seed=8), paddle.to_tensor(np.arange(6) % 10, dtype="int64")

    def stock(z, labels):
        h = F.relu(netG.fc(z * netG.embed(labels)))
        return stock_run(netG.main, h.reshape([-1, netG.width, netG.base, netG.base]))

    want = outputs_and_grads(lambda z: stock(z, labels), [z], netG.parameters())
    got = outputs_and_grads(lambda z: netG(z, labels), [z], netG.parameters())
    assert got[0][0].shape == (6, 1, 28, 28)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert_close(a, b)


@pytest.mark.parametrize(
    "net, side",
    [(ACGANDiscriminator(4, 1, 28, 10), 28), (DCGANDiscriminator(8, 3, 32), 32)],
    ids=["acgan", "dcgan"],
)
def test_discriminators_match_stock_layers(net, side):
    x = leaf([4, net.parameters()[0].shape[1], side, side], seed=9)
    body = net.features if hasattr(net, "features") else net.main

    def stock(x):
        features = stock_run(body, x)
        if hasattr(net, "features"):
            return net.adv_head(features).flatten(), net.cls_head(features)
        return features.flatten()

    paddle.seed(10)  # the same dropout masks for both
    want = outputs_and_grads(stock, [x], net.parameters())
    paddle.seed(10)
    got = outputs_and_grads(net, [x], net.parameters())
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert_close(a, b)


# ---------------------------------------------------------------------------------- runtime
AMD_ZEN4 = (
    "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma "
    "avx512f avx512dq avx512cd avx512bw avx512vl"
)
AMD_ZEN3 = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma"
AMD_OLD = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx"
AMD_PARTIAL_512 = "vendor_id\t: AuthenticAMD\nflags\t\t: avx2 fma avx512f avx512cd"
INTEL = "vendor_id\t: GenuineIntel\nflags\t\t: avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl"


@pytest.mark.parametrize(
    "cpuinfo, expected",
    [(AMD_ZEN4, "7"), (AMD_ZEN3, "5"), (AMD_OLD, None), (AMD_PARTIAL_512, "5"), (INTEL, None),
     ("", None)],
)  # fmt: skip
def test_mkl_cpu_type_only_unlocks_what_the_cpu_has(cpuinfo, expected):
    assert runtime.mkl_cpu_type(cpuinfo) == expected


def run_python(code: str, **env) -> str:
    full_env = {k: v for k, v in tool_env().items() if k != "MKL_DEBUG_CPU_TYPE"}
    full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_importing_the_package_sets_the_mkl_path_and_a_user_value_wins():
    code = "import os, paddlegan_lite; print(os.environ.get('MKL_DEBUG_CPU_TYPE', 'unset'))"
    assert run_python(code) == (runtime.mkl_cpu_type() or "unset")
    assert run_python(code, MKL_DEBUG_CPU_TYPE="4") == "4"


def test_matmul_on_the_chosen_mkl_path_is_correct():
    """The AVX-512/AVX2 MKL path this process runs (set by conftest's import) computes right."""
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((300, 200)), rng.standard_normal((200, 100))
    got = paddle.matmul(paddle.to_tensor(a, "float32"), paddle.to_tensor(b, "float32")).numpy()
    assert_close(got, a @ b, rtol=1e-5)


def test_keep_freed_memory_steps_aside_for_user_malloc_settings(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert runtime.keep_freed_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_applies_on_glibc(monkeypatch):
    for name in runtime.MALLOC_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert runtime.keep_freed_memory() is (os.confstr("CS_GNU_LIBC_VERSION") is not None)


def test_select_device_on_a_cpu_build():
    if paddle.is_compiled_with_cuda():
        pytest.skip("CPU-only behaviour")
    assert runtime.select_device("auto") == "cpu"
    assert runtime.select_device("cpu") == "cpu"
    with pytest.raises(UserError, match="no usable CUDA device"):
        runtime.select_device("gpu:0")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("level", ["O1", "O2"])
def test_faster_layers_run_under_amp(dtype, level):
    """auto_cast + GradScaler around the faster layers: runs and trains (on CPU Paddle keeps
    float32, so this checks the code path, not half-precision numerics)."""
    paddle.seed(12)
    net = nn.Sequential(UpsampleConv2D(4, 6, 3, padding=1), nn.ReLU(), FastConv2D(6, 1, 4, 2, 1))
    opt = paddle.optimizer.Adam(1e-3, parameters=net.parameters())
    if level == "O2":
        net, opt = paddle.amp.decorate(net, opt, level="O2", dtype=dtype)
    scaler = paddle.amp.GradScaler()
    before = net[0].weight.numpy().copy()
    for _ in range(2):
        with paddle.amp.auto_cast(level=level, dtype=dtype):
            loss = net(paddle.randn([2, 4, 4, 4])).astype("float32").mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.clear_grad()
    assert np.isfinite(float(loss))
    assert np.abs(net[0].weight.numpy().astype("float32") - before).max() > 0
