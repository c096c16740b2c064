"""model.spectral_norm: D's (and with "gd" G's) conv, transposed-conv and linear weights divided by
their largest singular value (Miyato et al. 2018), with Paddle's own hook; off leaves the nets as
they were. Checkpoints keep the power-iteration state, export and the fast layers use the
normalised weight."""

import json

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from helpers import REPO_ROOT
from paddle import nn
from paddle.nn.utils import spectral_norm
from paddle.nn.utils.spectral_norm_hook import SpectralNorm

from paddlegan_lite import checkpoint as ckpt
from paddlegan_lite import export
from paddlegan_lite.config import ConfigError, load_config
from paddlegan_lite.datasets import build_dataset
from paddlegan_lite.inference import Generator, seed_latents
from paddlegan_lite.models import apply_spectral_norm, build_models
from paddlegan_lite.models.layers import TwiceDifferentiableSpectralNorm, UpsampleConv2D
from paddlegan_lite.ops import accelerate, onednn
from paddlegan_lite.trainer import build_trainer, train

TINY = {  # the shipped configs at tiny widths: the layers are the real ones
    "mlp_gan_mnist": ["model.hidden=32"],
    "dcgan_mnist": ["model.ngf=8", "model.ndf=8", "model.image_size=32"],
    "acgan_mnist": ["model.ngf=8", "model.ndf=4"],
}


def tiny_model_cfg(name, *extra):
    """The shipped config at tiny widths, without data: the nets are what matter here."""
    return load_config(REPO_ROOT / "configs" / f"{name}.yaml", TINY[name] + list(extra))


def run_cfg(name, mnist_root, out, *extra):
    return tiny_model_cfg(
        name,
        f"data.root={mnist_root}",
        "data.download=false",
        f"train.output_dir={out}",
        "train.batch_size=8",
        "train.log_interval=1",
        "train.sample_interval=100",
        "train.save_interval=100",
        "train.num_samples=10",
        *extra,
    )


def normalised_layers(net):
    return [layer for layer in net.sublayers() if hasattr(layer, "weight_orig")]


def as_matrix(weight: np.ndarray, transposed_layout: bool) -> np.ndarray:
    """The weight as the power iteration sees it: [out, -1]."""
    if transposed_layout:  # Conv2DTranspose [in, out, k, k], Linear [in, out]: out first
        weight = np.swapaxes(weight, 0, 1)
    return weight.reshape(weight.shape[0], -1)


def net_inputs(net, m, batch=4):
    """A training batch for G (noise, labels) or D (images) of the model config m."""
    labels = paddle.to_tensor(np.arange(batch) % m.num_classes) if m.num_classes else None
    if hasattr(net, "nz"):
        z = paddle.randn([batch, m.nz])
        return (z, labels) if labels is not None else (z,)
    return (paddle.randn([batch, m.channels, m.image_size, m.image_size]),)


@pytest.mark.parametrize("bad", ["g", "D", "dg", "yes"])
def test_unknown_value_is_refused(bad):
    with pytest.raises(ConfigError, match="model.spectral_norm.*valid"):
        tiny_model_cfg("dcgan_mnist", f"model.spectral_norm={bad}")


@pytest.mark.parametrize("name", list(TINY))
def test_off_leaves_the_nets_as_they_were(name):
    """Off: plain layers, no hooks. "d": D's weighted layers wrapped, nothing else changed (the
    same initial weights under the same seed, now as weight_orig); G untouched."""
    paddle.seed(5)
    g_off, d_off = build_models(tiny_model_cfg(name).model)
    paddle.seed(5)
    g_sn, d_sn = build_models(tiny_model_cfg(name, "model.spectral_norm=d").model)
    for net in (g_off, d_off):
        assert not any(layer._forward_pre_hooks for layer in net.sublayers(include_self=True))
        assert not any(k.endswith(("_orig", "_u", "_v")) for k in net.state_dict())
    assert g_sn.state_dict().keys() == g_off.state_dict().keys()
    for key, value in g_off.state_dict().items():
        np.testing.assert_array_equal(g_sn.state_dict()[key].numpy(), value.numpy())

    weighted = [
        prefix
        for prefix, layer in d_off.named_sublayers()
        if isinstance(layer, (nn.Conv2D, nn.Conv2DTranspose, nn.Linear))
    ]
    assert weighted and len(normalised_layers(d_sn)) == len(weighted)
    expected = set(d_off.state_dict())
    for prefix in weighted:
        expected.remove(f"{prefix}.weight")
        expected |= {f"{prefix}.weight_orig", f"{prefix}.weight_u", f"{prefix}.weight_v"}
    assert set(d_sn.state_dict()) == expected
    for key, value in d_off.state_dict().items():
        key = key + "_orig" if key in {f"{prefix}.weight" for prefix in weighted} else key
        np.testing.assert_array_equal(d_sn.state_dict()[key].numpy(), value.numpy())
    # the parameter count is unchanged: u and v are buffers (config.MODEL_SIZES stays exact)
    assert sum(p.size for p in d_sn.parameters()) == sum(p.size for p in d_off.parameters())


@pytest.mark.slow  # 100 power iterations per net
@pytest.mark.parametrize("name", list(TINY))
def test_normalised_weights_have_unit_spectral_norm(name):
    m = tiny_model_cfg(name, "model.spectral_norm=gd").model
    paddle.seed(0)
    nets = build_models(m)
    for net in nets:
        net.train()
        layers = normalised_layers(net)
        assert layers
        for _ in range(100):  # one power iteration per training-mode forward
            net(*net_inputs(net, m))
        for layer in layers:
            transposed = isinstance(layer, (nn.Conv2DTranspose, nn.Linear))
            sigma = np.linalg.svd(as_matrix(layer.weight.numpy(), transposed), compute_uv=False)[0]
            assert sigma == pytest.approx(1.0, abs=1e-2), type(layer).__name__


@pytest.mark.parametrize(
    "make",
    [lambda: nn.Conv2D(3, 8, 4), lambda: nn.Conv2DTranspose(8, 3, 4), lambda: nn.Linear(6, 5)],
)
def test_twice_differentiable_sigma_equals_paddles(make):
    """The hook build_models installs computes Paddle's own weight / sigma: the same power
    iteration (u, v move identically) and sigma = u^T W v by other ops."""
    paddle.seed(3)
    ours, stock = make(), make()
    stock.set_state_dict(ours.state_dict())
    paddle.seed(4)  # the same random u and v for both hooks
    apply_spectral_norm(ours)
    (hook,) = ours._forward_pre_hooks.values()
    assert isinstance(hook, TwiceDifferentiableSpectralNorm)
    paddle.seed(4)
    spectral_norm(stock, dim=0 if type(stock) is nn.Conv2D else 1)  # as apply_spectral_norm
    (stock_hook,) = stock._forward_pre_hooks.values()
    assert type(stock_hook) is SpectralNorm
    for do_power_iteration in (True, True, False):
        mine = hook.compute_weight(ours, do_power_iteration)
        theirs = stock_hook.compute_weight(stock, do_power_iteration)
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(ours.weight_u.numpy(), stock.weight_u.numpy())


FAST_LAYERS = {  # (plain layer, input shape): each fast path of ops/layers.py, once accelerated
    "conv_onednn": (lambda: nn.Conv2D(4, 16, 4, 2, 1), [2, 4, 8, 8]),
    "conv_matmul": (lambda: nn.Conv2D(4, 1, 4, 1, 0), [2, 4, 4, 4]),  # kernel covers the input
    # 16 output channels: fewer go to the stock op (onednn.FEW_CHANNELS)
    "transposed": (lambda: nn.Conv2DTranspose(4, 16, 4, 2, 1), [2, 4, 5, 5]),
    "upsample": (lambda: UpsampleConv2D(4, 16, 3, padding=1), [2, 4, 5, 5]),
}


@pytest.mark.parametrize("accelerate_first", [False, True], ids=["norm_first", "accelerate_first"])
@pytest.mark.parametrize("case", list(FAST_LAYERS))
def test_fast_layers_compute_with_the_normalised_weight(case, accelerate_first, monkeypatch):
    """The hook replaces `weight` before forward; the fast paths read `self.weight`, so they give
    what the stock op gives with weight_orig / sigma, and the gradient reaches weight_orig (run
    on oneDNN where it applies: its plan steps are counted). Either order of spectral norm and
    accelerate (build_trainer: spectral norm in build_models, then accelerate)."""
    make, shape = FAST_LAYERS[case]
    paddle.seed(1)
    if accelerate_first:
        layer = apply_spectral_norm(accelerate(make()))
    else:
        layer = accelerate(apply_spectral_norm(make()))
    assert type(layer).__name__.startswith("Fast")
    layer.bias.set_value(paddle.randn(layer.bias.shape))
    runs = []
    real_forward = onednn._ConvPlan.forward
    real_weight_grad = onednn._ConvPlan.weight_grad

    def spy(step, real):
        def run(self, *args):
            runs.append(step)
            return real(self, *args)

        return run

    monkeypatch.setattr(onednn._ConvPlan, "forward", spy("forward", real_forward))
    monkeypatch.setattr(onednn._ConvPlan, "weight_grad", spy("weight_grad", real_weight_grad))
    x = paddle.randn(shape)
    for _ in range(3):
        layer(x)  # a few power iterations
    layer.eval()
    y = layer(x)
    y.square().sum().backward()
    grad = layer.weight_orig.grad.numpy()
    if case != "conv_matmul" and onednn.enabled():
        assert runs == ["forward"] * 4 + ["weight_grad"]  # the fast path, not a fallback

    w = layer.weight.numpy()  # weight_orig / sigma, as the hook computed it for this forward
    u, v = layer.weight_u.numpy(), layer.weight_v.numpy()
    transposed = isinstance(layer, nn.Conv2DTranspose)
    sigma = u @ as_matrix(layer.weight_orig.numpy(), transposed) @ v
    np.testing.assert_allclose(w, layer.weight_orig.numpy() / sigma, rtol=1e-5, atol=1e-7)
    if case == "upsample":
        stock = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), paddle.to_tensor(w),
                         layer.bias, padding=1)  # fmt: skip
    elif transposed:
        stock = F.conv2d_transpose(x, paddle.to_tensor(w), layer.bias, layer._stride,
                                   layer._padding)  # fmt: skip
    else:
        stock = F.conv2d(x, paddle.to_tensor(w), layer.bias, layer._stride, layer._padding)
    np.testing.assert_allclose(y.numpy(), stock.numpy(), rtol=1e-4, atol=1e-5)

    # the same gradient through the stock conv of weight_orig / sigma
    monkeypatch.setenv(onednn.ENV_SWITCH, "0")
    layer.weight_orig.clear_gradient()
    layer(x).square().sum().backward()
    np.testing.assert_allclose(layer.weight_orig.grad.numpy(), grad, rtol=1e-4, atol=1e-5)


def test_short_training_run_has_finite_losses(mnist_root, tmp_path):
    cfg = run_cfg("dcgan_mnist", mnist_root, tmp_path / "run", "train.max_steps=3",
                  "model.spectral_norm=d")  # fmt: skip
    train(cfg)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    losses = [v for r in rows for k, v in r.items() if k.startswith("loss")]
    assert len(losses) >= 6 and np.isfinite(losses).all()


@pytest.mark.slow  # trains, saves and reloads
@pytest.mark.parametrize("name", ["dcgan_mnist", "acgan_mnist"])
def test_checkpoint_restores_the_power_iteration_state(mnist_root, tmp_path, name):
    """Train, save, load into a fresh trainer of the same config: weight_orig, u, v, BatchNorm
    statistics and Adam state all equal, and the next training-mode forward agrees."""
    cfg = run_cfg(name, mnist_root, tmp_path / "run", "train.max_steps=3",
                  "model.spectral_norm=gd", "train.ema_decay=0.9")  # fmt: skip
    dataset = build_dataset(cfg.data, cfg.model.image_size, cfg.model.channels, train=True)
    trained = build_trainer(cfg, dataset)
    trained.fit()
    path = ckpt.find_latest(tmp_path / "run" / "checkpoints")
    fresh = build_trainer(cfg, dataset)
    nets = ("netG", "netD", "netG_ema")
    arrays = {n: ckpt.layer_arrays(getattr(trained, n)) for n in nets}
    assert any(k.endswith("weight_u") for k in arrays["netD"])
    assert any(k.endswith("weight_v") for k in arrays["netG"])
    before = ckpt.layer_arrays(fresh.netD)
    assert any(not np.array_equal(before[k], v) for k, v in arrays["netD"].items() if "_u" in k)

    fresh.load(path)
    assert fresh.step == trained.step == 3
    for n in nets:
        loaded = ckpt.layer_arrays(getattr(fresh, n))
        assert loaded.keys() == arrays[n].keys()
        for key, value in arrays[n].items():
            np.testing.assert_array_equal(loaded[key], value, err_msg=f"{n}.{key}")
    for opt, net in (("optG", "netG"), ("optD", "netD")):
        a = ckpt.optimizer_arrays(getattr(trained, opt), getattr(trained, net))
        b = ckpt.optimizer_arrays(getattr(fresh, opt), getattr(fresh, net))
        assert a.keys() == b.keys() and any("weight_orig" in k for k in a)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    x = net_inputs(trained.netD, cfg.model)
    trained.netD.train(), fresh.netD.train()
    paddle.seed(7)  # the same dropout masks (AC-GAN's D)
    a = trained.netD(*x)
    paddle.seed(7)
    b = fresh.netD(*x)
    for out_a, out_b in zip(a if isinstance(a, tuple) else [a], b if isinstance(b, tuple) else [b]):
        np.testing.assert_array_equal(out_a.numpy(), out_b.numpy())


@pytest.mark.slow  # trains, exports, runs Paddle Inference
@pytest.mark.parametrize("name", ["dcgan_mnist", "acgan_mnist", "mlp_gan_mnist"])
def test_export_with_spectral_norm_matches_the_dynamic_graph(mnist_root, tmp_path, name):
    cfg = run_cfg(name, mnist_root, tmp_path / "run", "train.max_steps=3",
                  "model.spectral_norm=gd")  # fmt: skip
    train(cfg)
    checkpoint = tmp_path / "run" / "checkpoints" / "latest"
    export.export_model(checkpoint, tmp_path / "inference", cfg)  # runs its own check too
    netG, _, _, _ = export.load_generator(checkpoint)
    assert normalised_layers(netG) and not netG.training
    gen = Generator(tmp_path / "inference", batch_size=4)
    z = seed_latents(range(100, 106), cfg.model.nz)
    labels = np.arange(6, dtype=np.int64) % cfg.model.num_classes if cfg.model.num_classes else None
    expected = export.run_dynamic(netG, z, labels)
    np.testing.assert_allclose(gen.run(z, labels), expected, rtol=0, atol=export.TOLERANCE)
    # eval mode does no power iteration: the dynamic graph is repeatable
    np.testing.assert_array_equal(export.run_dynamic(netG, z, labels), expected)


def test_ema_generator_follows_the_power_iteration_vectors(mnist_root, tmp_path):
    """The EMA generator averages weights and copies G's u and v: its sigma estimate is G's."""
    cfg = run_cfg("dcgan_mnist", mnist_root, tmp_path / "run", "train.max_steps=3",
                  "model.spectral_norm=gd", "train.ema_decay=0.9")  # fmt: skip
    dataset = build_dataset(cfg.data, cfg.model.image_size, cfg.model.channels, train=True)
    trainer = build_trainer(cfg, dataset)
    trainer.fit()
    g, ema = ckpt.layer_arrays(trainer.netG), ckpt.layer_arrays(trainer.netG_ema)
    vectors = [k for k in g if k.endswith(("weight_u", "weight_v"))]
    assert vectors
    for key in vectors:
        np.testing.assert_array_equal(ema[key], g[key], err_msg=key)
