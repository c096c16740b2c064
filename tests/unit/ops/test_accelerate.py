"""paddlegan_lite/ops: `accelerate` swaps exactly the layers it should in every model family,
keeps their parameters, buffers and hooks, and the accelerated nets compute what the plain ones
do; the run set-up calls it."""

from collections import Counter

import numpy as np
import paddle
import pytest
from data_files import write_mnist_idx
from helpers import REPO_ROOT, assert_close, leaf, outputs_and_grads
from paddle import nn

from paddlegan_lite.config import load_config
from paddlegan_lite.models import build_models
from paddlegan_lite.models.layers import ConvPool2D, UpsampleConv2D
from paddlegan_lite.ops import accelerate, onednn
from paddlegan_lite.ops.layers import FAST_TWINS

# The shipped configs at small widths (16+ channels where oneDNN takes them), optionally with
# spectral norm on both nets.
FAMILIES = {
    "mlp_gan": ("mlp_gan_mnist", ["model.hidden=32"]),
    "dcgan": ("dcgan_mnist", ["model.ngf=16", "model.ndf=16", "model.image_size=32"]),
    "acgan": ("acgan_mnist", ["model.ngf=16", "model.ndf=4"]),
    "sngan": ("sngan_cifar10", ["model.ngf=16", "model.ndf=16"]),
    "sngan_cond": ("sngan_cifar10_cond", ["model.ngf=16", "model.ndf=16"]),
    "dcgan_cond": ("dcgan_cifar10_32_cond", ["model.ngf=16", "model.ndf=16"]),
    "dcgan_sn": (
        "dcgan_mnist",
        ["model.ngf=16", "model.ndf=16", "model.image_size=32", "model.spectral_norm=gd"],
    ),
}

# What accelerate makes of each net (layer class name -> count), worked out from the models:
# DCGAN at 32x32 has 3 stride-2 layers; SNGAN at 32x32 has 3 G blocks (each an upsample conv, a
# 3x3 conv and an upsample 1x1 shortcut) and 4 D blocks with 3, 3, 2 and 2 convs, the first two
# blocks' last conv and shortcut pooling after them.
EXPECTED = {
    "mlp_gan": ({}, {"FastLeakyReLU": 2}),
    "dcgan": ({"FastConv2DTranspose": 4}, {"FastConv2D": 4, "FastLeakyReLU": 3}),
    "acgan": ({"FastUpsampleConv2D": 2, "FastConv2D": 1}, {"FastConv2D": 4, "FastLeakyReLU": 4}),
    "sngan": ({"FastUpsampleConv2D": 6, "FastConv2D": 4}, {"FastConv2D": 6, "FastConvPool2D": 4}),
    "sngan_cond": (
        {"FastUpsampleConv2D": 6, "FastConv2D": 4},
        {"FastConv2D": 6, "FastConvPool2D": 4},
    ),
    "dcgan_cond": ({"FastConv2DTranspose": 4}, {"FastConv2D": 4, "FastLeakyReLU": 3}),
    "dcgan_sn": ({"FastConv2DTranspose": 4}, {"FastConv2D": 4, "FastLeakyReLU": 3}),
}


def family_config(family):
    config, overrides = FAMILIES[family]
    return load_config(REPO_ROOT / "configs" / f"{config}.yaml", overrides)


def build(family, fast: bool):
    """(netG, netD) of the family as build_models makes them (seeded), accelerated or not."""
    paddle.seed(3)
    netG, netD = build_models(family_config(family).model)
    return (accelerate(netG), accelerate(netD)) if fast else (netG, netD)


def fast_layers(net) -> Counter:
    return Counter(
        type(layer).__name__ for layer in net.sublayers() if type(layer) in FAST_TWINS.values()
    )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_accelerate_swaps_the_expected_layers_and_keeps_the_state(family):
    for net, expected in zip(build(family, fast=False), EXPECTED[family]):
        assert fast_layers(net) == Counter()  # the models are built from plain layers
        params = [id(p) for p in net.parameters()]
        buffers = [id(b) for b in net.buffers()]
        keys = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        hooks = sum(len(layer._forward_pre_hooks) for layer in net.sublayers())
        assert accelerate(net) is net
        assert fast_layers(net) == Counter(expected)
        assert not any(type(layer) in FAST_TWINS for layer in net.sublayers())  # none left
        assert [id(p) for p in net.parameters()] == params
        assert [id(b) for b in net.buffers()] == buffers
        assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == keys
        assert sum(len(layer._forward_pre_hooks) for layer in net.sublayers()) == hooks
        accelerate(net)  # a second call changes nothing
        assert fast_layers(net) == Counter(expected)


def net_inputs(net, m, batch=4, seed=5):
    """Leaf inputs (and int64 labels) for a G (z) or a D (images) of model config m."""
    is_g = hasattr(net, "nz")
    x = leaf([batch, m.nz] if is_g else [batch, m.channels, m.image_size, m.image_size], seed)
    labels = None
    if m.num_classes:
        labels = paddle.to_tensor(np.arange(batch) % m.num_classes, dtype="int64")
    return x, labels


@pytest.fixture
def onednn_conv_runs(monkeypatch):
    """How many oneDNN convolution forwards run (the accelerated nets must really use them)."""
    runs = []
    real = onednn._ConvPlan.forward

    def spy(self, *args):
        runs.append(1)
        return real(self, *args)

    monkeypatch.setattr(onednn._ConvPlan, "forward", spy)
    return runs


@pytest.mark.parametrize("which", ["netG", "netD"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_accelerated_nets_compute_what_the_plain_ones_do(family, which, onednn_conv_runs):
    """Outputs and the gradients for the input and every weight, in training mode (BatchNorm on
    the batch, AC-GAN's dropout with the same masks, spectral norm's power iteration). A gradient
    that vanishes in exact arithmetic (the bias of a conv feeding a training-mode BatchNorm:
    SNGAN's G) is rounding noise on both sides, so each gradient is compared at no less than a
    hundredth of the net's largest gradient."""
    m = family_config(family).model
    index = ["netG", "netD"].index(which)
    plain, fast = build(family, fast=False)[index], build(family, fast=True)[index]
    x, labels = net_inputs(plain, m)

    def run(net):
        paddle.seed(6)  # the same dropout masks
        params = [p for p in net.parameters() if not p.stop_gradient]
        return outputs_and_grads(lambda x: net(x, labels), [x], params)

    want, got = run(plain), run(fast)
    assert len(got[1]) == len(want[1]) > 1
    for a, b in zip(got[0], want[0]):
        assert_close(a, b)
    floor = 1e-2 * max(float(np.abs(g).max()) for g in want[1])
    for a, b in zip(got[1], want[1]):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(np.abs(b).max(), floor))
    uses_convs = any(k != "FastLeakyReLU" for k in EXPECTED[family][index])
    if onednn.enabled() and uses_convs:
        assert onednn_conv_runs  # the fast path ran, not only its fallback
    for a, b in zip(plain.buffers(), fast.buffers()):  # BatchNorm statistics, u and v alike
        assert_close(a.numpy(), b.numpy())


def test_optimizers_built_before_or_after_accelerate_train_the_same_weights():
    """accelerate keeps the parameter objects, so an optimizer made before it still owns them
    (build_trainer accelerates first)."""
    m = family_config("dcgan_sn").model
    results = []
    for accelerate_at_once in (True, False):
        paddle.seed(7)
        netD = build_models(m)[1]
        if accelerate_at_once:
            accelerate(netD)
        opt = paddle.optimizer.Adam(1e-2, parameters=netD.parameters())
        if not accelerate_at_once:
            accelerate(netD)
        x, _ = net_inputs(netD, m)
        before = [p.numpy().copy() for p in netD.parameters()]
        for _ in range(2):
            netD(x).square().mean().backward()
            opt.step()
            opt.clear_grad()
        after = [p.numpy() for p in netD.parameters()]
        assert all(np.abs(a - b).max() > 0 for a, b in zip(after, before) if a.size > 1)
        results.append(after)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_accelerate_leaves_subclasses_and_other_layers_alone():
    class OwnConv(nn.Conv2D):  # a forward of its own: not ours to replace
        def forward(self, x):
            return super().forward(x) * 2

    net = nn.Sequential(OwnConv(3, 4, 3), nn.ReLU(), nn.Conv2D(4, 4, 3), nn.Linear(4, 2))
    accelerate(net)
    assert [type(layer).__name__ for layer in net] == ["OwnConv", "ReLU", "FastConv2D", "Linear"]
    conv = accelerate(nn.Conv2D(3, 4, 3))  # the net itself may be a layer to swap
    assert type(conv).__name__ == "FastConv2D"
    assert type(accelerate(UpsampleConv2D(4, 4, 3, padding=1))).__name__ == "FastUpsampleConv2D"
    assert type(accelerate(ConvPool2D(4, 4, 1))).__name__ == "FastConvPool2D"


def test_the_run_set_up_trains_accelerated_nets(tmp_path):
    """build_trainer calls accelerate: G, D and the EMA copy of G run the fast layers; export
    builds its net from the checkpoint with build_models, so it sees plain layers."""
    from paddlegan_lite.datasets import build_dataset
    from paddlegan_lite.trainer import build_trainer

    write_mnist_idx(tmp_path / "mnist", n=16, seed=1)
    cfg = load_config(
        REPO_ROOT / "configs" / "dcgan_mnist.yaml",
        FAMILIES["dcgan"][1]
        + [
            f"data.root={tmp_path / 'mnist'}",
            "data.download=false",
            f"train.output_dir={tmp_path / 'run'}",
            "train.ema_decay=0.9",
        ],
    )
    dataset = build_dataset(cfg.data, cfg.model.image_size, cfg.model.channels, train=True)
    trainer = build_trainer(cfg, dataset)
    assert fast_layers(trainer.netG) == Counter(EXPECTED["dcgan"][0])
    assert fast_layers(trainer.netD) == Counter(EXPECTED["dcgan"][1])
    assert fast_layers(trainer.netG_ema) == Counter(EXPECTED["dcgan"][0])
