"""Train -> export -> Paddle Inference for every shipped config: the exported graph must reproduce
the dynamic-graph generator, for any batch size, and the export must refuse what it cannot honour.
"""

import copy
import logging
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
import yaml
from data_files import write_cifar10_tarball, write_mnist_idx
from helpers import REPO_ROOT
from paddle import nn

from paddlegan_lite import export, inference
from paddlegan_lite.config import config_to_dict, load_config
from paddlegan_lite.inference import Generator, seed_latents
from paddlegan_lite.models import build_models
from paddlegan_lite.trainer import build_trainer, train

STEPS = 3
# Tiny widths keep training and export to about a second per config; the layers are the real ones.
TINY = {
    "mlp_gan_mnist": ["model.hidden=32"],
    "dcgan_mnist": ["model.ngf=8", "model.ndf=4"],
    "dcgan_cifar10": ["model.ngf=8", "model.ndf=4"],
    "acgan_mnist": ["model.ngf=8", "model.ndf=4"],
    "sngan_cifar10": ["model.ngf=8", "model.ndf=8"],
    "sngan_cifar10_cond": ["model.ngf=8", "model.ndf=8"],
    "dcgan_cifar10_32_cond": ["model.ngf=8", "model.ndf=8"],
}


def tiny_overrides(name: str, data_root: Path, run_dir: Path) -> list[str]:
    dataset = "cifar10" if "cifar" in name else "mnist"
    return TINY[name] + [
        f"data.root={data_root / dataset}",
        "data.download=false",
        f"train.output_dir={run_dir}",
        f"train.max_steps={STEPS}",
        "train.batch_size=8",
        "train.num_samples=10",
    ]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (config, checkpoint, model_dir): each config trained a few steps, exported once."""
    root = tmp_path_factory.mktemp("export")
    write_mnist_idx(root / "mnist", n=32, seed=1)
    write_cifar10_tarball(root / "cifar10", n_per_batch=8, seed=2)
    runs = {}
    for name in TINY:
        cfg = load_config(
            REPO_ROOT / "configs" / f"{name}.yaml", tiny_overrides(name, root, root / name)
        )
        train(cfg)
        checkpoint = root / name / "checkpoints" / "latest"
        export.export_model(checkpoint, root / f"{name}_inference", cfg)
        runs[name] = (cfg, checkpoint, root / f"{name}_inference")
    return runs


def some_inputs(net, batch: int, first_seed: int = 100):
    """Noise the export check did not use, and labels spread over the classes of `net` (a
    generator or a Generator: anything with nz and num_classes)."""
    z, num_classes = seed_latents(range(first_seed, first_seed + batch), net.nz), net.num_classes
    labels = (np.arange(batch, dtype=np.int64) * 3 + 1) % num_classes if num_classes else None
    return z, labels


@pytest.mark.parametrize("mkldnn", [True, False], ids=["onednn", "plain"])
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("name", list(TINY))
def test_paddle_inference_matches_dynamic_graph(exported, name, batch, mkldnn):
    _, checkpoint, model_dir = exported[name]
    netG, run_cfg, _, _ = export.load_generator(checkpoint)
    gen = Generator(model_dir, batch_size=4, mkldnn=mkldnn)  # 7 images: two predictor runs
    z, labels = some_inputs(gen, batch)

    actual = gen.run(z, labels)
    expected = export.run_dynamic(netG, z, labels)
    assert actual.shape == (batch, *netG.image_shape)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=export.TOLERANCE)
    assert 0.0 <= actual.min() and actual.max() <= 1.0

    # the weights are the trained ones, not a fresh initialisation
    paddle.seed(run_cfg.seed)
    fresh, _ = build_models(run_cfg.model)
    fresh.eval()
    assert np.abs(actual - export.run_dynamic(fresh, z, labels)).max() > 2 * export.TOLERANCE


@pytest.mark.parametrize("name", list(TINY))
def test_infer_cfg_describes_the_model(exported, name):
    cfg, checkpoint, model_dir = exported[name]
    infer_cfg = yaml.safe_load((model_dir / "infer_cfg.yml").read_text())
    channels, size = cfg.model.channels, cfg.model.image_size
    assert infer_cfg["model"] == cfg.model.name
    assert infer_cfg["nz"] == cfg.model.nz
    assert infer_cfg["num_classes"] == cfg.model.num_classes
    assert infer_cfg["image_shape"] == [channels, size, size]
    assert infer_cfg["value_range"] == [0.0, 1.0]
    assert infer_cfg["config"] == config_to_dict(cfg)
    assert infer_cfg["source"]["step"] == STEPS
    assert Path(infer_cfg["source"]["checkpoint"]) == checkpoint.resolve()
    assert infer_cfg["check"]["paddle_inference_max_abs_diff"] == pytest.approx(
        0.0, abs=export.TOLERANCE
    )
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == sorted(["infer_cfg.yml", infer_cfg["model_file"], "inference.pdiparams"])


@pytest.mark.parametrize(
    "name", ["dcgan_cifar10", "acgan_mnist", "sngan_cifar10_cond", "dcgan_cifar10_32_cond"]
)
def test_a_seed_gives_the_same_image_in_any_batch(exported, name):
    gen = Generator(exported[name][2], batch_size=3)  # 8 seeds: runs of 3, 3 and 2
    label = 4 if gen.conditional else None
    z = seed_latents(range(8), gen.nz)
    in_batch = gen.run(z, label)
    np.testing.assert_array_equal(gen.run(z[5:6], label)[0], in_batch[5])  # bit for bit
    assert np.abs(in_batch[5] - in_batch[6]).max() > 2 * export.TOLERANCE  # seeds do differ

    images = gen.generate(list(range(8)), label)
    channels, height, width = gen.image_shape
    assert images.dtype == np.uint8 and images.shape == (8, height, width, channels)
    np.testing.assert_array_equal(gen.generate([5], label)[0], images[5])
    np.testing.assert_array_equal(gen.generate(z=z, labels=label), images)


def test_check_fails_loudly_beyond_the_tolerance(exported):
    _, checkpoint, model_dir = exported["dcgan_mnist"]
    netG, _, _, _ = export.load_generator(checkpoint)
    z, _ = some_inputs(netG, 4)
    expected = export.run_dynamic(netG, z, None)

    near = export.check_paddle_inference(model_dir, z, None, expected + export.TOLERANCE / 2)
    assert near == pytest.approx(export.TOLERANCE / 2, rel=0.05)
    with pytest.raises(export.ExportError, match="differs from the dynamic-graph generator"):
        export.check_paddle_inference(model_dir, z, None, expected + 2 * export.TOLERANCE)
    with pytest.raises(export.ExportError, match="differs"):
        export.check_paddle_inference(model_dir, z, None, np.full_like(expected, np.nan))


def test_export_that_does_not_match_is_refused_and_not_deployable(exported, tmp_path, monkeypatch):
    _, checkpoint, _ = exported["dcgan_mnist"]
    real_run_dynamic = export.run_dynamic
    monkeypatch.setattr(export, "run_dynamic", lambda *args: real_run_dynamic(*args) + 0.01)
    with pytest.raises(export.ExportError, match="by 0.01 .* removed infer_cfg.yml"):
        export.export_model(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out" / "infer_cfg.yml").exists()


# ---------------------------------------------------------------------- ONNX
@pytest.mark.parametrize(
    "name",
    [
        "mlp_gan_mnist",
        "dcgan_cifar10",
        "acgan_mnist",
        "sngan_cifar10_cond",
        "dcgan_cifar10_32_cond",
    ],
)
def test_onnx_export_matches_dynamic_graph(exported, tmp_path, name):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("paddle2onnx")
    _, checkpoint, _ = exported[name]
    infer_cfg = export.export_model(checkpoint, tmp_path / "out", onnx=True)
    assert infer_cfg["onnx_file"] == "inference.onnx"

    netG, _, _, _ = export.load_generator(checkpoint)
    session = onnxruntime.InferenceSession(
        str(tmp_path / "out" / "inference.onnx"), providers=["CPUExecutionProvider"]
    )
    for batch in (1, 7):
        z, labels = some_inputs(netG, batch)
        feeds = {"z": z} if labels is None else {"z": z, "labels": labels}
        actual = session.run(None, feeds)[0]
        np.testing.assert_allclose(
            actual, export.run_dynamic(netG, z, labels), rtol=0, atol=export.TOLERANCE
        )


def test_onnx_conversion_failure_is_one_clear_error(exported, tmp_path, monkeypatch):
    """paddle2onnx reports a failed conversion by printing and sys.exit(-1): one clear line."""
    paddle2onnx = pytest.importorskip("paddle2onnx")
    pytest.importorskip("onnxruntime")

    def fails(*args, **kwargs):
        print("[ERROR] Oops, there are some operators not supported yet, including nearest_interp")
        raise SystemExit(-1)

    monkeypatch.setattr(paddle2onnx, "export", fails)
    _, checkpoint, _ = exported["acgan_mnist"]
    with pytest.raises(export.ExportError) as err:
        export.export_model(checkpoint, tmp_path / "out", onnx=True)
    assert "paddle2onnx" in str(err.value) and "nearest_interp" in str(err.value)
    assert "\n" not in str(err.value)
    assert Generator(tmp_path / "out").conditional  # the checked Paddle model is still there
    assert not (tmp_path / "out" / "inference.onnx").exists()


def test_onnx_is_skipped_with_a_message_without_paddle2onnx(exported, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "paddle2onnx", None)  # import now raises ImportError
    monkeypatch.setattr(export.log, "propagate", True)
    _, checkpoint, model_dir = exported["dcgan_mnist"]
    z, _ = some_inputs(Generator(model_dir), 2)
    with caplog.at_level(logging.INFO, logger="paddlegan_lite"):
        result = export.export_onnx(model_dir, {}, z, None, None)
    assert result is None
    assert "ONNX export skipped" in caplog.text and "pip install paddle2onnx" in caplog.text
    assert not (model_dir / "inference.onnx").exists()


# ---------------------------------------------------------------------- the reference and TF32
def test_reference_runs_on_cpu_in_float32_whatever_the_current_device(exported, monkeypatch):
    """With the current device reported as a GPU and a float64 net, the reference still runs on
    a CPU place in float32 (a GPU would run it in TF32), and the device is put back after."""
    _, checkpoint, _ = exported["acgan_mnist"]
    netG, _, _, _ = export.load_generator(checkpoint)
    z, labels = some_inputs(netG, 4)
    expected = export.run_dynamic(netG, z, labels)

    current = ["gpu:0"]
    real_set_device = paddle.set_device

    def set_device(device):
        current[0] = device
        if device == "cpu":
            real_set_device("cpu")

    monkeypatch.setattr(paddle, "get_device", lambda: current[0])
    monkeypatch.setattr(paddle, "set_device", set_device)
    net64 = copy.deepcopy(netG).to(dtype="float64")
    seen = []

    def record(layer, inputs):  # copied with the net, so it sees whatever net really runs
        x = inputs[0]
        seen.append((current[0], x.place.is_cpu_place(), x.dtype, layer.weight.dtype))

    for layer in net64.sublayers():
        if isinstance(layer, (nn.Linear, nn.Conv2D, nn.Conv2DTranspose)):
            layer.register_forward_pre_hook(record)

    actual = export.run_dynamic(net64, z, labels)
    assert len(seen) == 4  # the linear layer and three convolutions
    assert set(seen) == {("cpu", True, paddle.float32, paddle.float32)}
    assert current == ["gpu:0"]  # the caller's device is back
    assert {p.dtype for p in net64.parameters()} == {paddle.float64}  # the caller's net untouched
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


def to_tf32(array: np.ndarray) -> np.ndarray:
    """float32 rounded to TF32 as Ampere tensor cores read it: the low 13 of float32's 23
    mantissa bits zeroed, 10 kept."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    return (bits & np.uint32(0xFFFFE000)).view(np.float32)


def tf32_generator(netG):
    """A copy of netG whose weights and matmul/conv inputs are TF32-rounded: float32 math as an
    Ampere GPU does it by default (products of TF32 operands, float32 sums)."""
    net = copy.deepcopy(netG)
    for param in net.parameters():
        param.set_value(to_tf32(param.numpy()))

    def round_inputs(layer, inputs):
        return tuple(paddle.to_tensor(to_tf32(x.numpy())) for x in inputs)

    for layer in net.sublayers():
        if isinstance(layer, (nn.Linear, nn.Conv2D, nn.Conv2DTranspose)):
            layer.register_forward_pre_hook(round_inputs)
    return net


@pytest.fixture(scope="module")
def untrained_acgan(tmp_path_factory):
    """(checkpoint, netG) of an untrained AC-GAN with Paddle's default init (init_std=0): larger
    activations than N(0, 0.02), so TF32 rounding shows clearly (~5e-4 here)."""
    run_dir = tmp_path_factory.mktemp("tf32") / "run"
    overrides = TINY["acgan_mnist"] + ["model.init_std=0", f"train.output_dir={run_dir}"]
    cfg = load_config(REPO_ROOT / "configs" / "acgan_mnist.yaml", overrides)
    checkpoint = build_trainer(cfg, dataset=None).save()
    return checkpoint, export.load_generator(checkpoint)[0]


def test_a_tf32_reference_fails_the_float32_check_and_the_cpu_reference_passes(
    untrained_acgan, tmp_path
):
    checkpoint, netG = untrained_acgan
    export.export_model(checkpoint, tmp_path / "out")
    z, labels = export.check_inputs(netG, export.CHECK_BATCH)
    cpu_reference = export.run_dynamic(netG, z, labels)
    tf32_reference = export.run_dynamic(tf32_generator(netG), z, labels)
    tf32_diff = np.abs(tf32_reference - cpu_reference).max()
    assert export.TOLERANCE < tf32_diff < export.GPU_TOLERANCE

    # what export did with a GPU as the current device: a good model refused
    with pytest.raises(export.ExportError, match="differs from the dynamic-graph generator"):
        export.check_paddle_inference(tmp_path / "out", z, labels, tf32_reference)
    # the CPU float32 reference holds the CPU predictor to 1e-4
    diff = export.check_paddle_inference(tmp_path / "out", z, labels, cpu_reference)
    assert diff == pytest.approx(0.0, abs=1e-5)  # conv + BatchNorm fused: rounding only


class FakeGPUGenerator(Generator):
    """The predictor on device "gpu" gives `gpu_outputs(z, labels)`; on "cpu" the real one."""

    gpu_outputs = None

    def __init__(self, model_dir, device="cpu", *args, **kwargs):
        super().__init__(model_dir, "cpu", *args, **kwargs)
        self.device = device

    def run(self, z, labels=None):
        if self.device == "cpu":
            return super().run(z, labels)
        return type(self).gpu_outputs(z, labels)


def test_gpu_predictor_is_checked_at_the_tf32_tolerance(untrained_acgan, tmp_path, monkeypatch):
    checkpoint, netG = untrained_acgan
    tf32_net = tf32_generator(netG)
    monkeypatch.setattr(export, "gpu_available", lambda: True)
    monkeypatch.setattr(inference, "Generator", FakeGPUGenerator)

    FakeGPUGenerator.gpu_outputs = lambda z, labels: export.run_dynamic(tf32_net, z, labels)
    infer_cfg = export.export_model(checkpoint, tmp_path / "tf32")
    check = infer_cfg["check"]
    assert check["gpu_tolerance"] == export.GPU_TOLERANCE
    assert export.TOLERANCE < check["paddle_inference_gpu_max_abs_diff"] < export.GPU_TOLERANCE
    assert check["paddle_inference_max_abs_diff"] == pytest.approx(0.0, abs=1e-5)

    # a GPU predictor that is wrong beyond TF32's rounding still fails the export
    FakeGPUGenerator.gpu_outputs = lambda z, labels: (
        export.run_dynamic(tf32_net, z, labels) + 2 * export.GPU_TOLERANCE
    )
    with pytest.raises(export.ExportError, match="Paddle Inference on gpu model differs"):
        export.export_model(checkpoint, tmp_path / "wrong")
    assert not (tmp_path / "wrong" / "infer_cfg.yml").exists()


def test_a_failed_write_is_one_export_error(exported, tmp_path, monkeypatch):
    """A write that fails after the up-front check (disk full, a file put in the way)."""
    _, checkpoint, _ = exported["dcgan_mnist"]
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(export, "check_output_dir", lambda *args: None)
    with pytest.raises(export.ExportError, match="cannot write the model to .*a_file/out"):
        export.export_model(checkpoint, tmp_path / "a_file" / "out")
