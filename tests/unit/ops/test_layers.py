"""The fast layers (ops/layers.py) and the oneDNN kernels behind them (ops/onednn.py) compute what
the stock Paddle layers compute (outputs, gradients, paddle.grad for some inputs and gradients of
gradients as R1 and gradient penalties take them), fall back to them outside their cases, refuse
tensors on mixed devices, and the models keep their checkpoint keys accelerated or not."""

from types import SimpleNamespace

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from helpers import REPO_ROOT, assert_close, leaf, outputs_and_grads
from paddle import nn
from paddle.static import InputSpec

from paddlegan_lite.config import load_config
from paddlegan_lite.models import build_models
from paddlegan_lite.models.acgan import ACGANDiscriminator, ACGANGenerator
from paddlegan_lite.models.dcgan import DCGANDiscriminator, DCGANGenerator
from paddlegan_lite.models.layers import SAME_SIZE_PADDING, ConvPool2D, Dropout, UpsampleConv2D
from paddlegan_lite.models.mlp_gan import MLPDiscriminator
from paddlegan_lite.ops import accelerate, onednn
from paddlegan_lite.ops.layers import FastConv2D, FastLeakyReLU


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


def upsample_then_conv(conv):
    return lambda x: conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def conv_then_pool(conv):
    return lambda x: F.avg_pool2d(conv(x), kernel_size=2, stride=2)


# each resampling conv layer -> the two stock ops it stands for, and its output side
RESAMPLING = {
    UpsampleConv2D: (upsample_then_conv, lambda side: 2 * side),
    ConvPool2D: (conv_then_pool, lambda side: side // 2),
}


def resampling_pair(layer_cls, ci, co, k, prepare=accelerate):
    """(stock function, its nn.Conv2D, the layer prepared) with the same random weight and bias."""
    stock_conv = nn.Conv2D(ci, co, k, padding=SAME_SIZE_PADDING[k])
    fused = prepare(layer_cls(ci, co, k, padding=SAME_SIZE_PADDING[k]))
    stock_conv.bias.set_value(paddle.randn([co]))  # Paddle starts biases at 0: make them count
    fused.set_state_dict(stock_conv.state_dict())
    return RESAMPLING[layer_cls][0](stock_conv), stock_conv, fused


RESAMPLING_SHAPES = [  # layer, ci, co, side (pooling needs a 2x2 window)
    (layer_cls, ci, co, side)
    for layer_cls in RESAMPLING
    for ci, co, side in [(8, 8, 7), (8, 4, 14), (3, 5, 1), (2, 3, 6), (4, 4, 2)]
    if not (layer_cls is ConvPool2D and side == 1)
]


@pytest.mark.parametrize("prepare", [accelerate, lambda layer: layer], ids=["fast", "plain"])
@pytest.mark.parametrize("k", [3, 1])
@pytest.mark.parametrize("layer_cls, ci, co, side", RESAMPLING_SHAPES)
def test_resampling_conv_matches_its_stock_ops(layer_cls, ci, co, side, k, prepare):
    """UpsampleConv2D is 2x nearest upsampling then the conv, ConvPool2D the conv then 2x2 average
    pooling (odd sides floored), the fast twins one stride-2 (transposed) conv each."""
    paddle.seed(5)
    stock, stock_conv, fused = resampling_pair(layer_cls, ci, co, k, prepare)
    x = leaf([3, ci, side, side], seed=6)
    want = outputs_and_grads(stock, [x], stock_conv.parameters())
    got = outputs_and_grads(fused, [x], fused.parameters())
    out_side = RESAMPLING[layer_cls][1](side)
    assert got[0][0].shape == (3, co, out_side, out_side)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert a.shape == b.shape
        assert_close(a, b)


@pytest.mark.parametrize("layer_cls", list(RESAMPLING), ids=lambda cls: cls.__name__)
@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((4, 4, 5), {"padding": 2}),
        ((4, 4, 3), {}),
        ((4, 4, 1), {"padding": 1}),
        ((4, 4, 3), {"padding": 1, "stride": 2}),
        ((4, 4, [3, 1]), {"padding": 1}),
    ],
)
def test_resampling_conv_refuses_other_shapes(layer_cls, args, kwargs):
    with pytest.raises(ValueError, match="1x1 \\(padding 0\\) and 3x3 \\(padding 1\\) conv"):
        layer_cls(*args, **kwargs)


@pytest.mark.parametrize("layer_cls", list(RESAMPLING), ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("prepare", [accelerate, lambda layer: layer], ids=["fast", "plain"])
def test_resampling_conv_keeps_conv2d_parameters(prepare, layer_cls):
    """Same parameter names and shapes as nn.Conv2D: checkpoints load either way."""
    stock, fused = nn.Conv2D(6, 4, 3, padding=1), prepare(layer_cls(6, 4, 3, padding=1))
    shapes = {k: tuple(v.shape) for k, v in fused.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in stock.state_dict().items()}
    assert isinstance(fused, nn.Conv2D)  # init_weights, spectral norm and export treat it as one


# ---------------------------------------------------------------------------------- oneDNN
needs_onednn = pytest.mark.skipif(not onednn.enabled(), reason="no usable oneDNN in this Paddle")


@pytest.fixture
def onednn_runs(monkeypatch):
    """Names of the oneDNN plan steps that run (a fast path must not pass by silently falling
    back to the stock op it is compared with): the convolutions' forward, input_grad and
    weight_grad, the leaky ReLU's leaky_relu and leaky_relu_grad."""
    runs = []
    steps = [(onednn._ConvPlan, step, step) for step in ("forward", "input_grad", "weight_grad")]
    steps += [(onednn._EltwisePlan, "forward", "leaky_relu")]
    steps += [(onednn._EltwisePlan, "backward", "leaky_relu_grad")]
    for plan, step, name in steps:
        real = getattr(plan, step)

        def spy(self, *args, _real=real, _name=name):
            runs.append(_name)
            return _real(self, *args)

        monkeypatch.setattr(plan, step, spy)
    return runs


def conv_pair(transposed, ci, co, k, stride, padding, bias, **kwargs):
    """(stock layer, accelerated layer) with the same parameters; a random bias (Paddle starts at
    0)."""
    layer_cls = nn.Conv2DTranspose if transposed else nn.Conv2D
    bias_attr = None if bias else False
    stock = layer_cls(ci, co, k, stride, padding, bias_attr=bias_attr, **kwargs)
    fast = accelerate(layer_cls(ci, co, k, stride, padding, bias_attr=bias_attr, **kwargs))
    if bias:
        stock.bias.set_value(paddle.randn(stock.bias.shape))
    fast.set_state_dict(stock.state_dict())
    return stock, fast


ONEDNN_SHAPES = [  # transposed, ci, co, k, stride, padding, side
    (False, 1, 16, 4, 2, 1, 16),  # DCGAN D's first layer (its input gradient is Paddle's)
    (False, 3, 16, 4, 2, 1, 8),
    (False, 16, 32, 4, 2, 1, 8),  # DCGAN D
    (False, 1, 16, 3, 2, 1, 9),  # AC-GAN D: odd sides
    (False, 16, 32, 3, 2, 1, 7),
    (False, 32, 24, 3, 1, 1, 4),  # stride 1
    (True, 20, 32, 4, 1, 0, 1),  # DCGAN G's first layer: z as a 1x1 map
    (True, 32, 16, 4, 2, 1, 4),  # DCGAN G
    (True, 16, 24, 4, 2, 1, 7),  # AC-GAN's UpsampleConv2D geometry
]


@needs_onednn
@pytest.mark.parametrize("x_grad", [True, False], ids=["x_grad", "x_stop_gradient"])
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("transposed, ci, co, k, stride, padding, side", ONEDNN_SHAPES)
def test_onednn_layers_match_stock(
    onednn_runs, transposed, ci, co, k, stride, padding, side, bias, x_grad
):
    paddle.seed(13)
    stock, fast = conv_pair(transposed, ci, co, k, stride, padding, bias)
    x = leaf([5, ci, side, side], seed=14)
    x.stop_gradient = not x_grad
    want = outputs_and_grads(stock, [x], stock.parameters())
    got = outputs_and_grads(fast, [x], fast.parameters())
    assert onednn_runs == ["forward", *(["input_grad"] if x_grad else []), "weight_grad"]
    assert len(got[1]) == len(want[1]) == (2 if x_grad else 1) + bias
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert a.shape == b.shape
        assert_close(a, b)


@needs_onednn
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
def test_onednn_frozen_layer_computes_the_input_gradient_only(onednn_runs, transposed):
    """The G step through a frozen D: no weight gradient is made, the input's is the stock one."""
    paddle.seed(15)
    stock, fast = conv_pair(transposed, 16, 32, 4, 2, 1, bias=True)
    for p in stock.parameters() + fast.parameters():
        p.stop_gradient = True
    x = leaf([3, 16, 6, 6], seed=16)
    want = outputs_and_grads(stock, [x], [])
    got = outputs_and_grads(fast, [x], [])
    assert onednn_runs == ["forward", "input_grad"]
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert_close(a, b)


@needs_onednn
def test_onednn_without_gradients_and_under_no_grad(onednn_runs):
    """Inference (no_grad, or nothing that wants a gradient): the same output, no autograd node."""
    paddle.seed(17)
    stock, fast = conv_pair(True, 16, 24, 4, 2, 1, bias=True)
    x = paddle.randn([2, 16, 5, 5])
    with paddle.no_grad():
        y = fast(x)
    assert_close(y.numpy(), stock(x).numpy())
    for p in fast.parameters():
        p.stop_gradient = True
    y = fast(x)
    assert y.stop_gradient
    assert_close(y.numpy(), stock(x).numpy())
    assert onednn_runs == ["forward", "forward"]


@needs_onednn
@pytest.mark.parametrize("k", [3, 1])
@pytest.mark.parametrize("layer_cls", list(RESAMPLING), ids=lambda cls: cls.__name__)
def test_resampling_conv_runs_on_onednn(onednn_runs, layer_cls, k):
    """The resampling convs' folded (transposed) conv takes the oneDNN path."""
    paddle.seed(18)
    stock, stock_conv, fused = resampling_pair(layer_cls, 16, 16, k)
    x = leaf([2, 16, 6, 6], seed=19)
    want = outputs_and_grads(stock, [x], stock_conv.parameters())
    got = outputs_and_grads(fused, [x], fused.parameters())
    assert onednn_runs == ["forward", "input_grad", "weight_grad"]
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert_close(a, b)


STOCK_CASES = {  # layers the oneDNN path must leave to Paddle (transposed, ci, co, kwargs)
    "switched_off": (False, 16, 16, {}),  # with PADDLEGAN_LITE_ONEDNN=0
    "transposed_switched_off": (True, 16, 16, {}),
    "groups": (False, 16, 16, {"groups": 2}),
    "dilation": (False, 16, 16, {"dilation": 2}),
    "same_padding": (False, 16, 16, {"padding": "SAME"}),
    "nhwc": (False, 16, 16, {"data_format": "NHWC"}),
    "output_padding": (True, 16, 16, {"output_padding": 1}),
    "transposed_groups": (True, 16, 16, {"groups": 2}),
    "few_output_channels": (True, 16, 3, {}),  # G's last layer: Paddle is faster
}


@pytest.mark.parametrize("case", list(STOCK_CASES))
def test_onednn_falls_back_to_the_stock_layer(onednn_runs, monkeypatch, case):
    transposed, ci, co, kwargs = STOCK_CASES[case]
    if case.endswith("switched_off"):
        monkeypatch.setenv(onednn.ENV_SWITCH, "0")
    paddle.seed(20)
    kwargs = {"padding": 1, **kwargs}
    stock, fast = conv_pair(transposed, ci, co, 4, 2, kwargs.pop("padding"), True, **kwargs)
    shape = [2, 6, 6, ci] if kwargs.get("data_format") == "NHWC" else [2, ci, 6, 6]
    x = leaf(shape, seed=21)
    want = outputs_and_grads(stock, [x], stock.parameters())
    got = outputs_and_grads(fast, [x], fast.parameters())
    assert onednn_runs == []
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        np.testing.assert_array_equal(a, b)


def test_onednn_leaves_float64_and_output_size_to_paddle(onednn_runs):
    paddle.seed(22)
    stock, fast = conv_pair(True, 16, 16, 4, 2, 1, True)
    x = paddle.randn([2, 16, 5, 5])
    want = stock(x, output_size=[11, 11])
    np.testing.assert_array_equal(fast(x, output_size=[11, 11]).numpy(), want.numpy())
    stock, fast = conv_pair(False, 16, 16, 4, 2, 1, True)
    stock.to(dtype="float64")
    fast.to(dtype="float64")
    x = x.astype("float64")
    np.testing.assert_array_equal(fast(x).numpy(), stock(x).numpy())
    assert onednn_runs == []


@pytest.fixture
def fresh_library(monkeypatch):
    """onednn's library state as at start-up, restored afterwards; its log line captured."""
    monkeypatch.setattr(onednn, "_library", None)
    monkeypatch.setattr(onednn, "_library_failed", False)
    monkeypatch.setattr(onednn, "_warned", False)
    monkeypatch.setattr(onednn.log, "propagate", True)
    return monkeypatch


@pytest.mark.parametrize("fault", ["missing_file", "other_enum_values"])
def test_unusable_library_falls_back_with_one_log_line(fresh_library, caplog, onednn_runs, fault):
    if fault == "missing_file":
        fresh_library.setattr(onednn, "LIBRARY_FILE", "libdnnl_not_here.so.3")
    else:  # a oneDNN whose numbering differs from the values this module passes
        fresh_library.setitem(onednn.ENUM_NAMES, "dnnl_fmt_tag2str", {onednn.TAG_ABCD: b"nchw"})
    paddle.seed(23)
    stock, fast = conv_pair(False, 16, 16, 4, 2, 1, True)
    x = leaf([2, 16, 6, 6], seed=24)
    with caplog.at_level("WARNING", logger="paddlegan_lite"):
        for _ in range(2):
            np.testing.assert_array_equal(fast(x).numpy(), stock(x).numpy())
        assert not onednn.enabled()
    assert onednn_runs == []
    assert len(caplog.records) == 1
    assert "oneDNN convolutions unavailable" in caplog.text and "Paddle's own" in caplog.text


@needs_onednn
def test_a_geometry_onednn_refuses_runs_stock(fresh_library, caplog):
    def refuse(self, lib, key):
        raise onednn.OnednnError("dnnl_convolution_forward_primitive_desc_create: unimplemented")

    fresh_library.setattr(onednn._ConvPlan, "__init__", refuse)
    onednn._plan.cache_clear()
    try:
        paddle.seed(25)
        stock, fast = conv_pair(False, 16, 16, 4, 2, 1, True)
        x = leaf([2, 16, 6, 6], seed=26)
        with caplog.at_level("WARNING", logger="paddlegan_lite"):
            want = outputs_and_grads(stock, [x], stock.parameters())
            got = outputs_and_grads(fast, [x], fast.parameters())
            fast(x)
    finally:
        onednn._plan.cache_clear()  # the refusal is cached: keep it out of other tests
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert_close(a, b)
    assert len(caplog.records) == 1 and "unimplemented" in caplog.text


@pytest.mark.slow  # traces (and saves) a static graph
@needs_onednn
@pytest.mark.parametrize("full_graph", [True, False], ids=["ast", "sot"])
def test_traced_graphs_hold_only_stock_convolutions(onednn_runs, tmp_path, full_graph):
    """paddle.jit (export) traces the stock ops: the saved model needs nothing of this module."""
    paddle.seed(27)
    netG = accelerate(DCGANGenerator(nz=8, ngf=16, channels=1, image_size=16))
    netG.eval()
    z = paddle.randn([3, 8])
    dynamic = netG(z).numpy()
    assert onednn_runs == ["forward", "forward"]  # the last layer (1 channel) is Paddle's
    spec = [InputSpec([None, 8], "float32")]
    static = paddle.jit.to_static(netG, spec if full_graph else None, full_graph=full_graph)
    assert_close(static(z).numpy(), dynamic)
    if full_graph:  # as export.py saves it
        paddle.jit.save(static, str(tmp_path / "netG"), input_spec=spec)
        assert_close(paddle.jit.load(str(tmp_path / "netG"))(z).numpy(), dynamic)
    assert onednn_runs == ["forward", "forward"]


# ---------------------------------------------------------------------------------- leaky ReLU
def leaky_input(shape, seed):
    """A standard normal leaf (no exact zeros: see the test of those below)."""
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    x = paddle.to_tensor(np.where(x == 0, 1.0, x).astype("float32"))
    x.stop_gradient = False
    return x


@needs_onednn
@pytest.mark.parametrize("slope", [0.2, 0.01, 0.0])
@pytest.mark.parametrize("shape", [[4, 16, 8, 8], [3, 256], [5, 7, 3]], ids=["nchw", "2d", "3d"])
def test_fast_leaky_relu_matches_stock(onednn_runs, shape, slope):
    stock, fast = nn.LeakyReLU(slope), FastLeakyReLU(slope)
    x = leaky_input(shape, seed=43)
    want = outputs_and_grads(stock, [x], [])
    got = outputs_and_grads(fast, [x], [])
    assert onednn_runs == ["leaky_relu", "leaky_relu_grad"]
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@needs_onednn
def test_fast_leaky_relu_gradient_at_exact_zeros_is_the_slope(onednn_runs):
    """At x = 0 exactly (either sign) oneDNN's gradient is the slope, as PyTorch's; Paddle's is 1.
    The only inputs where the two differ; the output is the same (the zero)."""
    x = paddle.to_tensor([-1.0, -0.0, 0.0, 1.0, -1e-45], stop_gradient=False)
    y = FastLeakyReLU(0.2)(x)
    (got,) = paddle.grad(y, [x])
    np.testing.assert_array_equal(y.numpy(), F.leaky_relu(x, 0.2).numpy())
    np.testing.assert_array_equal(got.numpy(), np.float32([0.2, 0.2, 0.2, 1.0, 0.2]))
    assert onednn_runs == ["leaky_relu", "leaky_relu_grad"]


@needs_onednn
def test_fast_leaky_relu_inference_keeps_nothing(onednn_runs):
    fast, x = FastLeakyReLU(0.2), leaky_input([2, 4, 3, 3], seed=44)
    with paddle.no_grad():
        y = fast(x)
    np.testing.assert_array_equal(y.numpy(), F.leaky_relu(x, 0.2).numpy())
    x.stop_gradient = True
    assert fast(x).stop_gradient
    assert onednn_runs == ["leaky_relu", "leaky_relu"]


@needs_onednn
def test_fast_leaky_relu_paddle_grad_first_and_second_order(onednn_runs):
    """paddle.grad plain (oneDNN's backward) and with create_graph=True (Paddle's ops), then the
    gradient of the squared input gradient (R1's shape): all equal to the stock layer's."""
    x = leaky_input([3, 8, 5, 5], seed=45)

    def grads(layer, create_graph):
        (g,) = paddle.grad(projection(layer(x)), [x], create_graph=create_graph)
        runs = list(onednn_runs)
        if not create_graph:
            return runs, [g]
        assert not g.stop_gradient
        return runs, [g, *paddle.grad((g * g).sum(), [x])]  # runs the layer's backward again

    for create_graph in (False, True):
        onednn_runs.clear()
        runs, got = grads(FastLeakyReLU(0.2), create_graph)
        assert runs == ["leaky_relu", *([] if create_graph else ["leaky_relu_grad"])]
        _, want = grads(nn.LeakyReLU(0.2), create_graph)
        for a, b in zip(got, want):
            assert_close(a.numpy(), b.numpy(), rtol=1e-6)


LEAKY_STOCK_CASES = ["switched_off", "float64", "negative_slope", "traced"]


@pytest.mark.parametrize("case", LEAKY_STOCK_CASES)
def test_fast_leaky_relu_falls_back_to_the_stock_op(onednn_runs, monkeypatch, case):
    slope = -0.1 if case == "negative_slope" else 0.2  # oneDNN's backward from y needs >= 0
    if case == "switched_off":
        monkeypatch.setenv(onednn.ENV_SWITCH, "0")
    stock, fast = nn.LeakyReLU(slope), FastLeakyReLU(slope)
    x = leaky_input([2, 4, 3, 3], seed=46)
    if case == "float64":
        x = paddle.to_tensor(x.numpy().astype("float64"), stop_gradient=False)
    if case == "traced":
        spec = [InputSpec([None, 4, 3, 3], "float32")]  # as export.py traces
        fast = paddle.jit.to_static(fast, spec, full_graph=True)
    want = outputs_and_grads(stock, [x], [])
    got = outputs_and_grads(fast, [x], [])
    assert onednn_runs == []
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        np.testing.assert_array_equal(a, b)


def test_accelerated_models_use_the_fast_leaky_relu():
    for net in (DCGANDiscriminator(4, 1, 16), ACGANDiscriminator(2, 1, 8, 3), MLPDiscriminator()):
        assert any(type(layer) is nn.LeakyReLU for layer in net.sublayers())  # plain as built
        layers = accelerate(net).sublayers()
        assert any(isinstance(layer, FastLeakyReLU) for layer in layers)
        assert all(type(layer) is not nn.LeakyReLU for layer in layers)


# ---------------------------------------------------------------------------------- devices
class FakePlace:
    """A device the tests cannot make here (a CPU-only Paddle): named like Paddle's places."""

    def __init__(self, name):
        self.name = name

    def is_cpu_place(self):
        return self.name == "cpu"

    def __str__(self):
        return f"Place({self.name})"


class OnDevice:
    """A tensor stand-in: the place checks read only `.place`."""

    def __init__(self, device):
        self.place = FakePlace(device)


def test_on_cpu_only_for_all_cpu_tensors():
    x = paddle.randn([1, 2, 3, 3])
    assert onednn.on_cpu("conv", input=x, weight=x, bias=None) is True
    gpu = OnDevice("gpu:0")
    assert onednn.on_cpu("conv", input=gpu, weight=OnDevice("gpu:0"), bias=gpu) is False


@pytest.mark.parametrize(
    "devices, message",
    [
        (("cpu", "gpu:0", None), "conv input on Place(cpu) but weight on Place(gpu:0)"),
        (("cpu", "cpu", "gpu:0"), "conv input on Place(cpu) but bias on Place(gpu:0)"),
        (("gpu:0", "gpu:0", "cpu"), "conv input on Place(gpu:0) but bias on Place(cpu)"),
        (("gpu:0", "gpu:1", None), "conv input on Place(gpu:0) but weight on Place(gpu:1)"),
    ],
)
def test_on_cpu_refuses_mixed_places(devices, message):
    x = paddle.randn([1, 2, 3, 3])
    x_, weight, bias = [None if d is None else x if d == "cpu" else OnDevice(d) for d in devices]
    with pytest.raises(onednn.PlaceError) as caught:
        onednn.on_cpu("conv", input=x_, weight=weight, bias=bias)
    assert str(caught.value) == message


@needs_onednn
def test_onednn_refuses_mixed_places_and_runs_all_cpu_calls(onednn_runs):
    paddle.seed(30)
    stock, fast = conv_pair(False, 16, 16, 4, 2, 1, True)
    x = paddle.randn([2, 16, 6, 6])
    with pytest.raises(onednn.PlaceError, match=r"input on Place\(cpu\) but weight on Place"):
        onednn.supported(x, OnDevice("gpu:0"), fast.bias)
    with pytest.raises(onednn.PlaceError, match=r"input on Place\(cpu\) but bias on Place"):
        onednn.supported(x, fast.weight, OnDevice("gpu:0"))
    gpu = OnDevice("gpu:0")
    assert not onednn.supported(gpu, gpu, gpu)  # one other device: the stock op runs there
    assert onednn.supported(x, fast.weight, fast.bias)
    assert_close(fast(x).numpy(), stock(x).numpy())
    assert onednn_runs == ["forward"]


def test_onednn_backward_refuses_a_gradient_on_another_device():
    weight = paddle.randn([4, 4, 3, 3])
    ctx = SimpleNamespace(saved_tensor=lambda: (weight, None, None, None))
    with pytest.raises(onednn.PlaceError) as caught:
        onednn._OnednnConv.backward(ctx, OnDevice("gpu:0"))
    assert str(caught.value) == (
        "conv backward weight on Place(cpu) but output gradient on Place(gpu:0)"
    )


# ---------------------------------------------------------------------------------- paddle.grad
LAYER_CASES = {  # transposed, ci, co, k, stride, padding, side; or (resampling layer, k)
    "conv": (False, 16, 24, 4, 2, 1, 8),
    "conv_few_in_channels": (False, 3, 16, 3, 2, 1, 9),  # D's first layer
    "conv_covering_kernel": (False, 16, 2, 4, 1, 0, 4),  # D's last layer: a matmul
    "transposed": (True, 16, 24, 4, 2, 1, 4),
    "upsample_conv": (UpsampleConv2D, 3),
    "upsample_conv_1x1": (UpsampleConv2D, 1),
    "conv_pool": (ConvPool2D, 3),
    "conv_pool_1x1": (ConvPool2D, 1),
}


def layer_case(case):
    """(stock function, stock layer, fast layer, input shape), the same parameters, a random
    bias."""
    paddle.seed(31)
    if len(LAYER_CASES[case]) == 2:
        layer_cls, k = LAYER_CASES[case]
        stock_fn, stock, fast = resampling_pair(layer_cls, 16, 16, k)
        return stock_fn, stock, fast, [3, 16, 6, 6]
    transposed, ci, co, k, stride, padding, side = LAYER_CASES[case]
    stock, fast = conv_pair(transposed, ci, co, k, stride, padding, bias=True)
    return stock, stock, fast, [3, ci, side, side]


def projection(out, seed=33):
    """A fixed random linear function of `out`, plus a square so that the input gradient depends
    on the output (and through it on the bias)."""
    r = paddle.to_tensor(np.random.default_rng(seed).standard_normal(out.shape), dtype=out.dtype)
    return (out * r).sum() + 0.5 * (out * out).sum()


def penalty_grads(fn, x, params, penalized=None):
    """Gradients for params of sum(g ** 2), g the gradient of projection(fn(x)) for `penalized`
    (default x: R1's shape), taken with create_graph=True."""
    wrt = x if penalized is None else penalized
    (g,) = paddle.grad(projection(fn(x)), [wrt], create_graph=True)
    return paddle.grad((g * g).sum(), params)


@needs_onednn
@pytest.mark.parametrize("create_graph", [False, True], ids=["", "create_graph"])
@pytest.mark.parametrize("wrt", ["x", "weight", "bias", "x_weight"])
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_paddle_grad_for_some_inputs_matches_stock(onednn_runs, case, wrt, create_graph):
    stock_fn, stock, fast, shape = layer_case(case)
    x = leaf(shape, seed=34)

    def grads(fn, layer, create_graph=False):
        targets = {"x": [x], "weight": [layer.weight], "bias": [layer.bias]}
        wanted = targets["x"] + targets["weight"] if wrt == "x_weight" else targets[wrt]
        return paddle.grad(projection(fn(x)), wanted, create_graph=create_graph)

    want = grads(stock_fn, stock)  # (the stock upsampling cannot take create_graph)
    got = grads(fast, fast, create_graph)
    if case != "conv_covering_kernel":
        # oneDNN's backward (for the unasked gradient too), or for create_graph the stock ops
        backward = [] if create_graph else ["input_grad", "weight_grad"]
        assert onednn_runs == ["forward", *backward]
    assert fast.weight.grad is None and fast.bias.grad is None  # paddle.grad keeps off .grad
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert a.stop_gradient is not create_graph
        assert_close(a.numpy(), b.numpy())


def directional_derivatives(fn, x, tensors, directions, penalized=None, eps=1e-4):
    """Central differences of sum(g ** 2), g as in penalty_grads but first-order, along each
    direction (a list of arrays, one per tensor moved) in float64."""
    start = [t.numpy().copy() for t in tensors]

    def penalty(direction, step):
        for t, t0, v in zip(tensors, start, direction):
            t.set_value(t0 + step * v)
        (g,) = paddle.grad(projection(fn(x)), [x if penalized is None else penalized])
        return float((g * g).sum())

    result = [(penalty(d, eps) - penalty(d, -eps)) / (2 * eps) for d in directions]
    for t, t0 in zip(tensors, start):
        t.set_value(t0)
    return result


def assert_matches_differences(got, stock_fn, stock, x, tensors, penalized=None):
    """got (gradients for `tensors` of the penalty) against the stock layer's numerical ones:
    their projections on three random directions."""
    rng = np.random.default_rng(36)
    directions = [[rng.standard_normal(g.shape) for g in got] for _ in range(3)]
    stock.to(dtype="float64")
    x64 = paddle.to_tensor(x.numpy().astype("float64"), stop_gradient=False)
    moved = [x64 if t is x else getattr(stock, t) for t in tensors]
    penalized = None if penalized is None else getattr(stock, penalized)
    want = directional_derivatives(stock_fn, x64, moved, directions, penalized)
    got = [sum(float((g.numpy() * v).sum()) for g, v in zip(got, d)) for d in directions]
    assert got == pytest.approx(want, rel=1e-4)


@needs_onednn
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_gradient_penalty_through_fast_layers_matches_stock(onednn_runs, case):
    """The gradient for the weights of sum(grad_x ** 2) (create_graph=True). Paddle 3.3 has no CPU
    double-grad kernel for conv2d_transpose and nearest upsampling: for those (and the pooling
    convs alike) the stock layer's penalty is differentiated numerically (float64 central
    differences along random directions) instead of by paddle.grad."""
    stock_fn, stock, fast, shape = layer_case(case)
    x = leaf(shape, seed=35)
    got = penalty_grads(fast, x, [fast.weight, fast.bias])
    if case != "conv_covering_kernel":
        assert onednn_runs[0] == "forward"
    if LAYER_CASES[case][0] is not False:  # transposed or resampling
        assert_matches_differences(got, stock_fn, stock, x, ["weight", "bias"])
    else:
        want = penalty_grads(stock_fn, x, [stock.weight, stock.bias])
        for a, b in zip(got, want):
            assert_close(a.numpy(), b.numpy())


@needs_onednn
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_gradient_of_a_weight_gradient_matches_stock(onednn_runs, case):
    """sum(grad_weight ** 2) differentiated for x, the weight and the bias: Paddle 3.3's stock
    conv2d drops the weight's path there, so the reference is numerical for every layer."""
    stock_fn, stock, fast, shape = layer_case(case)
    x = leaf(shape, seed=42)
    got = penalty_grads(fast, x, [x, fast.weight, fast.bias], penalized=fast.weight)
    if case != "conv_covering_kernel":
        assert onednn_runs[0] == "forward"
    assert_matches_differences(got, stock_fn, stock, x, [x, "weight", "bias"], "weight")


def test_dropout_matches_stock_and_differentiates_twice():
    stock, ours = nn.Dropout(0.25), Dropout(0.25)
    x = leaf([4, 8, 6, 6], seed=37)
    paddle.seed(38)
    want = outputs_and_grads(stock, [x], [])
    paddle.seed(38)
    got = outputs_and_grads(ours, [x], [])
    for a, b in zip(got[0] + got[1], want[0] + want[1]):  # x * (1 / 0.75) vs x / 0.75
        assert_close(a, b, rtol=1e-6)
    assert float((got[0][0] == 0).mean()) == pytest.approx(0.25, abs=0.05)
    y = ours(x)  # y = x * mask: the penalty of sum(y^2) has gradient 8 x mask^4
    (grad_x,) = paddle.grad((y * y).sum(), [x], create_graph=True)
    (got,) = paddle.grad((grad_x * grad_x).sum(), [x])
    mask = (y / x).numpy()
    assert_close(got.numpy(), 8 * x.numpy() * mask**4)
    ours.eval()
    np.testing.assert_array_equal(ours(x).numpy(), x.numpy())


# ---------------------------------------------------------------------------------- models
# state_dict keys and shapes of the models as they were before the faster layers (tiny widths)
KEYS_BEFORE = {
    "DCGANGenerator": {
        "main.0.weight": (8, 8, 4, 4), "main.1.weight": (8,), "main.1.bias": (8,),
        "main.1._mean": (8,), "main.1._variance": (8,), "main.3.weight": (8, 4, 4, 4),
        "main.4.weight": (4,), "main.4.bias": (4,), "main.4._mean": (4,), "main.4._variance": (4,),
        "main.6.weight": (4, 1, 4, 4),
    },
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


@pytest.mark.parametrize("prepare", [accelerate, lambda net: net], ids=["fast", "plain"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: DCGANGenerator(8, 4, 1, 16),
        lambda: DCGANDiscriminator(4, 1, 16),
        lambda: ACGANGenerator(8, 4, 1, 8, 3),
        lambda: ACGANDiscriminator(2, 1, 8, 3),
    ],
    ids=["DCGANGenerator", "DCGANDiscriminator", "ACGANGenerator", "ACGANDiscriminator"],
)
def test_models_keep_their_checkpoint_keys(make, prepare):
    net = make()
    name = type(net).__name__
    got = {k: tuple(v.shape) for k, v in prepare(net).state_dict().items()}
    assert got == KEYS_BEFORE[name]


def stock_run(layers, x):
    """Run a Sequential as the stock layers would: Upsample where the Identity keeps its slot,
    nn.Conv2D's or nn.Conv2DTranspose's own forward on every (accelerated) conv's parameters,
    nn.LeakyReLU's for FastLeakyReLU."""
    for layer in layers:
        if isinstance(layer, nn.Identity):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        elif isinstance(layer, nn.Conv2D):
            x = nn.Conv2D.forward(layer, x)
        elif isinstance(layer, nn.Conv2DTranspose):
            x = nn.Conv2DTranspose.forward(layer, x)
        elif isinstance(layer, nn.LeakyReLU):
            x = nn.LeakyReLU.forward(layer, x)
        else:
            x = layer(x)
    return x


def test_acgan_generator_matches_stock_layers():
    paddle.seed(7)
    netG = accelerate(ACGANGenerator(nz=12, ngf=8, channels=1, image_size=28, num_classes=10))
    z, labels = leaf([6, 12], seed=8), paddle.to_tensor(np.arange(6) % 10, dtype="int64")

    def stock(z, labels):
        h = F.relu(netG.fc(z * netG.embed(labels)))
        return stock_run(netG.main, h.reshape([-1, netG.width, netG.base, netG.base]))

    want = outputs_and_grads(lambda z: stock(z, labels), [z], netG.parameters())
    got = outputs_and_grads(lambda z: netG(z, labels), [z], netG.parameters())
    assert got[0][0].shape == (6, 1, 28, 28)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert_close(a, b)


@pytest.mark.parametrize("channels, image_size", [(1, 32), (3, 16)])
def test_dcgan_generator_matches_stock_layers(channels, image_size):
    paddle.seed(28)
    netG = accelerate(DCGANGenerator(nz=12, ngf=16, channels=channels, image_size=image_size))
    z = leaf([5, 12], seed=29)

    def stock(z):
        return stock_run(netG.main, z.reshape([-1, 12, 1, 1]))

    want = outputs_and_grads(stock, [z], netG.parameters())
    got = outputs_and_grads(netG, [z], netG.parameters())
    assert got[0][0].shape == (5, channels, image_size, image_size)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert_close(a, b)


@pytest.mark.parametrize(
    "net, side",
    [(ACGANDiscriminator(4, 1, 28, 10), 28), (DCGANDiscriminator(8, 3, 32), 32)],
    ids=["acgan", "dcgan"],
)
def test_discriminators_match_stock_layers(net, side):
    accelerate(net)
    x = leaf([4, net.parameters()[0].shape[1], side, side], seed=9)
    body = net.features if hasattr(net, "features") else net.main

    def stock(x):
        features = stock_run(body, x).flatten(1)
        if hasattr(net, "features"):
            return net.adv_head(features).flatten(), net.cls_head(features)
        return features.flatten()

    paddle.seed(10)  # the same dropout masks for both
    want = outputs_and_grads(stock, [x], net.parameters())
    paddle.seed(10)
    got = outputs_and_grads(net, [x], net.parameters())
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert_close(a, b)


D_CONFIGS = {  # discriminators as the configs and build_trainer make them (widths kept: all
    # convs on oneDNN)
    "dcgan_64": "dcgan_mnist",
    "dcgan_32": "dcgan_cifar10_32",
    "acgan": "acgan_mnist",
    "mlp": "mlp_gan_mnist",
}


@pytest.fixture(scope="module")
def discriminators():
    """{case: (netD, input shape)} built once (the tests change no weights)."""
    nets = {}
    for case, config in D_CONFIGS.items():
        paddle.seed(39)
        m = load_config(REPO_ROOT / "configs" / f"{config}.yaml").model
        nets[case] = accelerate(build_models(m)[1]), [3, m.channels, m.image_size, m.image_size]
    return nets


def d_grads(netD, x, wrt):
    """paddle.grad through netD: first order for `wrt`, or the penalty gradients (R1)."""
    params = [p for p in netD.parameters() if not p.stop_gradient]  # not BatchNorm's statistics
    paddle.seed(40)  # AC-GAN's dropout masks

    def fn(x):
        out = netD(x)
        return paddle.concat([o.reshape([-1]) for o in out]) if isinstance(out, tuple) else out

    if wrt == "penalty":
        return penalty_grads(fn, x, params)
    wanted = {"x": [x], "weights": params, "both": [x, *params]}[wrt]
    return paddle.grad(projection(fn(x)), wanted)


@needs_onednn
@pytest.mark.parametrize("wrt", ["x", "weights", "both", "penalty"])
@pytest.mark.parametrize("case", list(D_CONFIGS))
def test_discriminator_gradients_match_the_stock_path(
    discriminators, onednn_runs, monkeypatch, case, wrt
):
    """paddle.grad for the input, the weights or both, and R1's penalty gradient: the nets as
    built, on oneDNN and with PADDLEGAN_LITE_ONEDNN=0."""
    netD, shape = discriminators[case]
    x = leaf(shape, seed=41)
    got = d_grads(netD, x, wrt)
    assert ("forward" in onednn_runs) == (case != "mlp")
    runs = len(onednn_runs)
    monkeypatch.setenv(onednn.ENV_SWITCH, "0")
    want = d_grads(netD, x, wrt)
    assert len(onednn_runs) == runs
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert_close(a.numpy(), b.numpy())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("level", ["O1", "O2"])
def test_faster_layers_run_under_amp(dtype, level):
    """auto_cast + GradScaler around the faster layers: runs and trains (on CPU Paddle keeps
    float32, so this checks the code path, not half-precision numerics)."""
    paddle.seed(12)
    net = nn.Sequential(UpsampleConv2D(4, 6, 3, padding=1), nn.ReLU(), nn.Conv2D(6, 1, 4, 2, 1))
    accelerate(net)
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
