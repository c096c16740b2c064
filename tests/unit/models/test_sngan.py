"""SNGAN's ResNet nets (models/sngan.py): shapes, the blocks against their definition in stock
ops, conditional BatchNorm and the projection D (plain and dual) by hand, R1 / WGAN-GP weight
gradients against finite differences, spectral norm of every D weight including the class
embedding."""

import math

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from paddle import nn

from paddlegan_lite.config import MODEL_SIZES, ConfigError, ModelConfig, load_config
from paddlegan_lite.losses import gradient_penalty, r1_penalty
from paddlegan_lite.models import apply_spectral_norm, build_models, refresh_spectral_norm
from paddlegan_lite.models.sngan import (
    ConditionalBatchNorm2D,
    DBlock,
    GBlock,
    OptimizedDBlock,
    SNGANDiscriminator,
    SNGANGenerator,
)
from paddlegan_lite.ops import accelerate

BATCH = 4


def labels_for(num_classes, batch=BATCH):
    return paddle.to_tensor(np.arange(batch) % num_classes, dtype="int64")


def tiny_model(num_classes=0, image_size=32, **kw):
    return ModelConfig(
        "sngan", nz=8, ngf=8, ndf=8, channels=3, image_size=image_size,
        num_classes=num_classes, init_std=0.0, **kw,
    )  # fmt: skip


@pytest.fixture
def float64():
    paddle.set_default_dtype("float64")
    yield
    paddle.set_default_dtype("float32")


# ------------------------------------------------------------------------------------------------
# Shapes and sizes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image_size, num_classes, d_side", [(32, 0, 8), (32, 10, 8), (8, 3, 4), (64, 0, 8)]
)
def test_shapes(image_size, num_classes, d_side):
    """G: [N, 3, S, S] in [-1, 1]; D: logits [N], its last blocks at 8x8 (4x4 for S = 8)."""
    paddle.seed(0)
    m = tiny_model(num_classes, image_size)
    netG, netD = build_models(m)
    labels = labels_for(num_classes) if num_classes else None
    images = netG(paddle.randn([BATCH, m.nz]), labels)
    assert images.shape == [BATCH, 3, image_size, image_size]
    assert netG.image_shape == (3, image_size, image_size)
    values = images.numpy()
    assert -1.0 <= values.min() < values.max() <= 1.0 and values.std() > 1e-3
    assert len(netG.blocks) == round(math.log2(image_size)) - 2  # one up-block per doubling

    sides = []
    for block in netD.blocks:
        block.register_forward_post_hook(lambda layer, args, out: sides.append(out.shape[2]))
    logits = netD(images, labels)
    assert logits.shape == [BATCH] and logits.dtype == paddle.float32
    assert sides[-2:] == [d_side, d_side] and sides[-3] == d_side  # two blocks at the last size
    assert isinstance(netD.blocks[0], OptimizedDBlock) and sides[0] == image_size // 2


@pytest.mark.parametrize("num_classes", [0, 10])
def test_full_size_parameter_counts(num_classes):
    """mimicry's CIFAR nets (ngf 256, ndf 128): 4,276,739 and 1,053,825 trainable parameters
    unconditional; Paddle also lists BatchNorm's running mean and variance (7 x 2 x 256)."""
    m = ModelConfig("sngan", nz=128, ngf=256, ndf=128, channels=3, image_size=32,
                    num_classes=num_classes, init_std=0.0)  # fmt: skip
    netG, netD = build_models(m)
    counts = tuple(sum(math.prod(p.shape) for p in net.parameters()) for net in (netG, netD))
    trainable_g = sum(math.prod(p.shape) for p in netG.parameters() if not p.stop_gradient)
    if num_classes:  # each of the 6 conditional BatchNorms: 10 gains and shifts per channel
        # (its own scale and shift stay, fixed at 1 and 0: listed, not trained)
        assert counts == (4_280_323 + 6 * 2 * 10 * 256, 1_053_825 + 10 * 128)
        assert trainable_g == 4_276_739 + 6 * (2 * 10 - 2) * 256
    else:
        assert counts == (4_276_739 + 7 * 2 * 256, 1_053_825)
        assert trainable_g == 4_276_739
    assert MODEL_SIZES["sngan"](m)[:2] == counts


@pytest.mark.parametrize("size", [0, 4, 12, 24, 48])
def test_image_size_must_be_4_times_a_power_of_two(size):
    for make in (lambda: SNGANGenerator(ngf=4, image_size=size),
                 lambda: SNGANDiscriminator(ndf=4, image_size=size)):  # fmt: skip
        with pytest.raises(ValueError, match=rf"4 \* 2\*\*k with k >= 1 .*, got {size}$"):
            make()
    if size:
        with pytest.raises(ConfigError, match="^model: SNGAN image_size must be"):
            build_models(tiny_model(image_size=size))


def test_num_classes_in_the_config(tmp_path):
    """sngan and dcgan take 0 (unconditional) or >= 2 classes; mlp_gan none."""
    path = tmp_path / "c.yaml"
    for model, error in [
        ("{name: sngan, num_classes: 0}", None),
        ("{name: sngan, num_classes: 10}", None),
        ("{name: sngan, num_classes: 1}", "must be 0 \\(unconditional\\) or >= 2 for sngan, got 1"),
        ("{name: mlp_gan, num_classes: 10}", "set it to 0 for mlp_gan"),
        ("{name: dcgan, num_classes: 10}", None),
        ("{name: dcgan, num_classes: 1}", "must be 0 \\(unconditional\\) or >= 2 for dcgan"),
    ]:
        path.write_text(f"model: {model}\ntrain: {{max_steps: 1}}\n")
        if error is None:
            assert load_config(path).model.name in model
        else:
            with pytest.raises(ConfigError, match=error):
                load_config(path)


# ------------------------------------------------------------------------------------------------
# The blocks as defined (mimicry's sngan_32.py), in stock Paddle ops
# ------------------------------------------------------------------------------------------------


def conv(layer, x):
    return F.conv2d(x, layer.weight, layer.bias, padding=layer._padding)


def test_blocks_match_their_definition():
    """G's block: BN, ReLU, upsample, conv3x3, BN, ReLU, conv3x3 + conv1x1(upsample(x)); D's first
    block: conv, ReLU, conv, pool + conv1x1(pool(x)); D's block: ReLU, conv, ReLU, conv, pool +
    pool(conv1x1(x)), or + x without downsampling. UpsampleConv2D and the conv1x1 before the
    upsampling compute the same function (unit/ops/test_accelerate.py: accelerated, too)."""
    paddle.seed(1)
    x = paddle.randn([BATCH, 6, 5, 5])
    up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    pool = lambda t: F.avg_pool2d(t, 2, 2)  # noqa: E731

    block = GBlock(6, 4)
    for bn in (block.b1, block.b2):  # not the identity: a scale and shift of their own
        bn.weight.set_value(paddle.rand([bn.weight.shape[0]]) + 0.5)
        bn.bias.set_value(paddle.randn([bn.bias.shape[0]]))
    block.c1.bias.set_value(paddle.randn([4]))
    block.c_sc.bias.set_value(paddle.randn([4]))
    h = conv(block.c1, up(F.relu(block.b1(x))))
    want = conv(block.c2, F.relu(block.b2(h))) + conv(block.c_sc, up(x))
    np.testing.assert_allclose(block(x).numpy(), want.numpy(), rtol=1e-4, atol=1e-5)

    x = paddle.randn([BATCH, 3, 8, 8])
    block = OptimizedDBlock(3, 4)
    want = pool(conv(block.c2, F.relu(conv(block.c1, x)))) + conv(block.c_sc, pool(x))
    np.testing.assert_allclose(block(x).numpy(), want.numpy(), rtol=1e-4, atol=1e-5)

    x = paddle.randn([BATCH, 4, 8, 8])
    block = DBlock(4, 4, downsample=True)
    block.c_sc.bias.set_value(paddle.randn([4]))
    residual = conv(block.c2, F.relu(conv(block.c1, F.relu(x))))
    want = pool(residual) + pool(conv(block.c_sc, x))
    np.testing.assert_allclose(block(x).numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
    block = DBlock(4, 4, downsample=False)
    assert block.c_sc is None  # identity shortcut
    want = conv(block.c2, F.relu(conv(block.c1, F.relu(x)))) + x
    np.testing.assert_allclose(block(x).numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


def test_init_is_mimicrys_xavier():
    """Xavier uniform: gain sqrt(2) on the residual convs, 1 on shortcuts, heads and D's
    embedding; biases 0; conditional BatchNorm's gains 1 and shifts 0."""
    paddle.seed(2)
    netG = SNGANGenerator(nz=8, ngf=64, image_size=8, num_classes=5)
    netD = SNGANDiscriminator(ndf=64, image_size=8, num_classes=5)

    def limit(weight, gain):
        shape = weight.shape
        receptive = math.prod(shape[2:])
        fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
        return gain * math.sqrt(6.0 / (fan_in + fan_out))

    block = netG.blocks[0]
    cases = [
        (block.c1.weight, math.sqrt(2)), (block.c2.weight, math.sqrt(2)),
        (block.c_sc.weight, 1.0), (netG.fc.weight, 1.0), (netG.conv.weight, 1.0),
        (netD.blocks[1].c1.weight, math.sqrt(2)), (netD.blocks[0].c_sc.weight, 1.0),
        (netD.fc.weight, 1.0), (netD.embed.weight, 1.0),
    ]  # fmt: skip
    for weight, gain in cases:
        biggest = float(weight.abs().max())
        assert biggest == pytest.approx(limit(weight, gain), rel=0.1)  # uniform on +-limit
        assert biggest <= limit(weight, gain)
    for net in (netG, netD):
        for name, param in net.named_parameters():
            if name.endswith(".bias"):
                assert not param.numpy().any(), name
    for cbn in (block.b1, block.b2):
        assert isinstance(cbn, ConditionalBatchNorm2D)
        np.testing.assert_array_equal(cbn.gamma.weight.numpy(), np.ones([5, 64]))
        np.testing.assert_array_equal(cbn.beta.weight.numpy(), np.zeros([5, 64]))
        # no learned affine of its own: scale and shift held at 1 and 0
        assert cbn.bn.weight.stop_gradient and cbn.bn.bias.stop_gradient
        np.testing.assert_array_equal(cbn.bn.weight.numpy(), np.ones([64]))
        np.testing.assert_array_equal(cbn.bn.bias.numpy(), np.zeros([64]))
    assert isinstance(netG.bn, nn.BatchNorm2D)  # the last BatchNorm is plain, as in mimicry


# ------------------------------------------------------------------------------------------------
# The class: conditional BatchNorm and the projection discriminator
# ------------------------------------------------------------------------------------------------


def test_conditional_batch_norm_by_hand():
    """Training mode: y = gamma[label] * (x - mean) / sqrt(var + eps) + beta[label], batch
    statistics over N, H, W; labels [N] or [N, 1]."""
    paddle.seed(3)
    cbn = ConditionalBatchNorm2D(3, num_classes=4)
    gamma = np.arange(12, dtype="float32").reshape([4, 3]) / 4 - 1
    beta = np.arange(12, dtype="float32").reshape([4, 3])[::-1].copy() / 3
    cbn.gamma.weight.set_value(gamma)
    cbn.beta.weight.set_value(beta)
    x = np.random.default_rng(0).standard_normal([5, 3, 4, 4]).astype("float32") * 2 + 1
    labels = np.array([2, 0, 3, 2, 1])
    normed = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(
        x.var(axis=(0, 2, 3), keepdims=True) + 1e-5
    )
    want = gamma[labels][:, :, None, None] * normed + beta[labels][:, :, None, None]
    for shape in ([5], [5, 1]):
        got = cbn(paddle.to_tensor(x), paddle.to_tensor(labels.reshape(shape)))
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    # gradients of sum(weights * y): gamma[k] gathers sum(weights * normed) over label k's
    # samples and pixels, beta[k] sum(weights); the input's flows back through the BatchNorm
    weights = np.random.default_rng(1).standard_normal(x.shape).astype("float32")
    xt = paddle.to_tensor(x, stop_gradient=False)
    (cbn(xt, paddle.to_tensor(labels)) * paddle.to_tensor(weights)).sum().backward()
    want_gamma, want_beta = np.zeros_like(gamma), np.zeros_like(beta)
    np.add.at(want_gamma, labels, (weights * normed).sum(axis=(2, 3)))
    np.add.at(want_beta, labels, weights.sum(axis=(2, 3)))
    np.testing.assert_allclose(cbn.gamma.weight.grad.numpy(), want_gamma, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cbn.beta.weight.grad.numpy(), want_beta, rtol=1e-4, atol=1e-4)
    g = weights * gamma[labels][:, :, None, None]  # d loss / d normed
    inv_std = 1 / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    want_x = inv_std * (
        g
        - g.mean(axis=(0, 2, 3), keepdims=True)
        - normed * (g * normed).mean(axis=(0, 2, 3), keepdims=True)
    )
    np.testing.assert_allclose(xt.grad.numpy(), want_x, rtol=1e-3, atol=1e-4)


def test_conditional_generator_images_depend_on_the_label():
    paddle.seed(4)
    netG = SNGANGenerator(nz=8, ngf=8, image_size=8, num_classes=3)
    for cbn in [layer for layer in netG.sublayers() if isinstance(layer, ConditionalBatchNorm2D)]:
        cbn.gamma.weight.set_value(paddle.rand(cbn.gamma.weight.shape) + 0.5)
        cbn.beta.weight.set_value(paddle.randn(cbn.beta.weight.shape))
    z = paddle.randn([1, 8]).tile([4, 1])  # the same noise four times
    images = netG(z, paddle.to_tensor([0, 1, 2, 0])).numpy()
    assert np.abs(images[0] - images[1]).mean() > 1e-2
    assert np.abs(images[1] - images[2]).mean() > 1e-2
    np.testing.assert_allclose(images[3], images[0], rtol=1e-5, atol=1e-6)  # same label


def test_projection_logits_in_closed_form():
    """D(x, y) = fc(h) + embed[y] . h, h = sum over H, W of ReLU(blocks(x)): so the logits of two
    labels differ by (embed[a] - embed[b]) . h."""
    paddle.seed(5)
    netD = SNGANDiscriminator(ndf=8, image_size=16, num_classes=4)
    x = paddle.randn([BATCH, 3, 16, 16])
    a, b = paddle.to_tensor([0, 1, 2, 3]), paddle.to_tensor([3, 3, 0, 1])
    h = F.relu(netD.blocks(x)).sum(axis=[2, 3]).numpy()
    embed = netD.embed.weight.numpy()
    difference = (netD(x, a) - netD(x, b)).numpy()
    np.testing.assert_allclose(difference, ((embed[[0, 1, 2, 3]] - embed[[3, 3, 0, 1]]) * h).sum(1),
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    unconditional = h @ netD.fc.weight.numpy()[:, 0] + netD.fc.bias.numpy()
    np.testing.assert_allclose(netD(x, a).numpy(), unconditional + (embed[[0, 1, 2, 3]] * h).sum(1),
                               rtol=1e-4, atol=1e-4)  # fmt: skip


def test_dual_projection_class_logits_in_closed_form():
    """Dual projection (P2GAN): the adversarial logits of the plain projection D with the same
    weights, and class logits [N, K] = h . embed[k] for every class k; spectrally normalised,
    both use the normalised embedding (the hook runs)."""
    paddle.seed(5)
    plain = SNGANDiscriminator(ndf=8, image_size=16, num_classes=4)
    dual = SNGANDiscriminator(ndf=8, image_size=16, num_classes=4, dual_projection=True)
    dual.set_state_dict(plain.state_dict())
    x, labels = paddle.randn([BATCH, 3, 16, 16]), paddle.to_tensor([2, 0, 3, 2])
    logits, class_logits = dual(x, labels)
    np.testing.assert_allclose(logits.numpy(), plain(x, labels).numpy(), rtol=1e-5, atol=1e-5)
    h = F.relu(dual.blocks(x)).sum(axis=[2, 3]).numpy()
    assert class_logits.shape == [BATCH, 4]
    np.testing.assert_allclose(class_logits.numpy(), h @ dual.embed.weight.numpy().T,
                               rtol=1e-4, atol=1e-4)  # fmt: skip

    apply_spectral_norm(dual, embeddings=True)
    for _ in range(30):  # training mode: a power iteration per forward; then eval, u, v fixed
        dual(x, labels)
    dual.eval()
    _, class_logits = dual(x, labels)
    h = F.relu(dual.blocks(x)).sum(axis=[2, 3]).numpy()  # the blocks' weights normalised too
    normalised = dual.embed.weight.numpy()
    assert np.abs(normalised - dual.embed.weight_orig.numpy()).max() > 1e-3
    assert np.linalg.svd(normalised, compute_uv=False)[0] == pytest.approx(1.0, abs=0.05)
    np.testing.assert_allclose(class_logits.numpy(), h @ normalised.T, rtol=1e-4, atol=1e-4)


def test_dual_projection_needs_classes():
    with pytest.raises(ValueError, match="a dual projection D needs num_classes >= 2, got 0"):
        SNGANDiscriminator(ndf=4, image_size=8, dual_projection=True)


def test_conditional_nets_refuse_missing_labels():
    netG = SNGANGenerator(nz=4, ngf=4, image_size=8, num_classes=3)
    netD = SNGANDiscriminator(ndf=4, image_size=8, num_classes=3)
    with pytest.raises(ValueError, match="^this generator is class-conditional: pass labels"):
        netG(paddle.randn([2, 4]))
    with pytest.raises(ValueError, match="^this discriminator is class-conditional: pass labels"):
        netD(paddle.randn([2, 3, 8, 8]))
    # unconditional nets take labels and ignore them (one interface for every family)
    netG, netD = SNGANGenerator(nz=4, ngf=4, image_size=8), SNGANDiscriminator(ndf=4, image_size=8)
    netG.eval()
    z, x, labels = paddle.randn([2, 4]), paddle.randn([2, 3, 8, 8]), paddle.to_tensor([1, 0])
    np.testing.assert_array_equal(netG(z, labels).numpy(), netG(z).numpy())
    np.testing.assert_array_equal(netD(x, labels).numpy(), netD(x).numpy())


# ------------------------------------------------------------------------------------------------
# Gradient penalties: D is twice differentiable
# ------------------------------------------------------------------------------------------------


def penalty(which, netD, real, fake, labels):
    def discriminator(x):  # the adversarial logits (a dual projection D adds class logits)
        out = netD(x, labels)
        return out[0] if isinstance(out, tuple) else out

    paddle.seed(7)  # gradient_penalty's eps: the same draw every call
    if which == "gp":
        return gradient_penalty(discriminator, real, fake, weight=10.0)
    return r1_penalty(discriminator, real, gamma=1.0)


@pytest.mark.parametrize(
    "normalised, dual", [(False, False), (True, False), (True, True)],
    ids=["plain", "spectral_norm", "spectral_norm_dual_projection"],
)  # fmt: skip
@pytest.mark.parametrize("which", ["gp", "r1"])
def test_penalty_weight_gradients_match_finite_differences(float64, which, normalised, dual):
    """paddle.grad(create_graph=True) then backward through every op on D's path (convs, ReLU,
    average pooling, the sum pooling, reshape, the projection, and with spectral norm each
    weight's division by sigma(W)): the gradient of the penalty with respect to D's weights
    equals central differences, in float64 on a 32x32 D (one down-block). Biases and the head's
    bias get (numerically) zero: D is piecewise linear in x. Spectrally normalised, D runs in
    eval mode for the differences (no power iteration moving u and v between evaluations)."""
    paddle.seed(6)
    netD = SNGANDiscriminator(ndf=4, channels=3, image_size=32, num_classes=3, dual_projection=dual)
    rng = np.random.default_rng(0)
    real = paddle.to_tensor(rng.standard_normal([2, 3, 32, 32]))
    fake = paddle.to_tensor(rng.standard_normal([2, 3, 32, 32]))
    labels = paddle.to_tensor([0, 2])
    if normalised:  # as build_models does for model.spectral_norm: d
        apply_spectral_norm(netD, embeddings=True)
        netD(real, labels)  # one power iteration, in training mode
        netD.eval()
    penalty(which, netD, real, fake, labels).backward()

    eps = 1e-6
    for name, param in netD.named_parameters():
        grad = np.zeros(param.shape) if param.grad is None else param.grad.numpy()
        start = param.numpy()
        for index in [(0,) * len(param.shape), tuple(s - 1 for s in param.shape)]:
            values = []
            for step in (eps, -eps):
                moved = start.copy()
                moved[index] += step
                param.set_value(moved)
                values.append(float(penalty(which, netD, real, fake, labels)))
            param.set_value(start)
            numeric = (values[0] - values[1]) / (2 * eps)
            assert grad[index] == pytest.approx(numeric, rel=1e-5, abs=1e-6), (name, index)
        if name.removesuffix("_orig").endswith(("c1.weight", "c2.weight", "embed.weight")):
            assert np.abs(grad).max() > 1e-3, name  # the second-order path is really there


@pytest.mark.parametrize("which", ["gp", "r1"])
def test_penalties_on_onednn_match_stock_layers(which):
    """float32: the accelerated D's (oneDNN convs) double backward equals the plain D's."""
    rng = np.random.default_rng(1)
    real = paddle.to_tensor(rng.standard_normal([BATCH, 3, 32, 32]).astype("float32"))
    fake = paddle.to_tensor(rng.standard_normal([BATCH, 3, 32, 32]).astype("float32"))

    def run(prepare):
        paddle.seed(8)
        netD = prepare(SNGANDiscriminator(ndf=16, image_size=32, num_classes=3))
        value = penalty(which, netD, real, fake, labels_for(3))
        value.backward()
        return float(value), [p.grad.numpy() for p in netD.parameters() if p.grad is not None]

    value, grads = run(accelerate)
    stock_value, stock_grads = run(lambda net: net)
    assert value == pytest.approx(stock_value, rel=1e-4)
    assert len(grads) == len(stock_grads) >= 9
    for grad, stock in zip(grads, stock_grads):
        np.testing.assert_allclose(grad, stock, rtol=1e-3, atol=1e-5 * np.abs(stock).max())


# ------------------------------------------------------------------------------------------------
# Spectral norm
# ------------------------------------------------------------------------------------------------


def matrix(layer):
    """The weight as the power iteration sees it: [out, -1] (Linear [in, out]: transposed)."""
    weight = layer.weight.numpy()
    if isinstance(layer, nn.Linear):
        weight = weight.T
    return weight.reshape(weight.shape[0], -1)


@pytest.mark.slow  # power iterations to convergence on every D weight
def test_spectral_norm_reaches_every_d_weight_and_the_embedding():
    m = tiny_model(num_classes=10, spectral_norm="gd")
    paddle.seed(9)
    netG, netD = build_models(m)
    counts = tuple(sum(math.prod(p.shape) for p in net.parameters()) for net in (netG, netD))
    assert counts == MODEL_SIZES["sngan"](m)[:2]  # u and v are buffers; weight_orig the weight

    normalised = [layer for layer in netD.sublayers() if hasattr(layer, "weight_orig")]
    weighted = [layer for layer in netD.sublayers() if isinstance(layer, (nn.Conv2D, nn.Linear))]
    assert len(normalised) == len(weighted) + 1 and netD.embed in normalised
    state = netD.state_dict()
    assert state["embed.weight_u"].shape == [10] and state["embed.weight_v"].shape == [8]
    assert "embed.weight" not in state
    # G's conditional BatchNorm gains and shifts stay per-class scalars: not normalised
    cbn = netG.blocks[0].b1
    assert not hasattr(cbn.gamma, "weight_orig") and not hasattr(cbn.beta, "weight_orig")
    assert hasattr(netG.blocks[0].c1, "weight_orig")

    netD.train()
    x, labels = paddle.randn([2, 3, 32, 32]), labels_for(10, batch=2)
    # one power iteration per training-mode forward; a few hundred, as the top two singular
    # values of a random 3x3 conv's matrix can be within 2%
    for _ in range(200):
        netD(x, labels)
    for layer in normalised:
        sigma = np.linalg.svd(matrix(layer), compute_uv=False)[0]
        assert sigma == pytest.approx(1.0, abs=1e-2), type(layer).__name__

    # refresh_spectral_norm (export) recomputes the embedding's weight from weight_orig, u, v
    netD.embed.weight_orig.set_value(netD.embed.weight_orig * 3.0)
    refresh_spectral_norm(netD)
    u, v = netD.embed.weight_u.numpy(), netD.embed.weight_v.numpy()
    w = netD.embed.weight_orig.numpy()
    np.testing.assert_allclose(netD.embed.weight.numpy(), w / (u @ w @ v), rtol=1e-5)
    assert np.linalg.svd(netD.embed.weight.numpy(), compute_uv=False)[0] == pytest.approx(
        1.0, abs=1e-2
    )
