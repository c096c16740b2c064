"""Train -> export -> Paddle Inference for every shipped config: the exported graph must reproduce
the dynamic-graph generator, for any batch size, and the export must refuse what it cannot honour.
"""

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
import yaml
from data_files import write_cifar10_tarball, write_mnist_idx

from paddlegan_lite import export
from paddlegan_lite.config import config_to_dict, load_config
from paddlegan_lite.inference import Generator, seed_latents
from paddlegan_lite.models import build_models
from paddlegan_lite.trainer import train

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
# Tiny widths keep training and export to about a second per config; the layers are the real ones.
TINY = {
    "mlp_gan_mnist": ["model.hidden=32"],
    "dcgan_mnist": ["model.ngf=8", "model.ndf=4"],
    "dcgan_cifar10": ["model.ngf=8", "model.ndf=4"],
    "acgan_mnist": ["model.ngf=8", "model.ndf=4"],
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


def some_inputs(num_classes: int, batch: int, first_seed: int = 100):
    """Noise the export check did not use, and labels spread over the classes."""
    z = seed_latents(range(first_seed, first_seed + batch), 100)
    labels = (np.arange(batch, dtype=np.int64) * 3 + 1) % num_classes if num_classes else None
    return z, labels


@pytest.mark.parametrize("mkldnn", [True, False], ids=["onednn", "plain"])
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("name", list(TINY))
def test_paddle_inference_matches_dynamic_graph(exported, name, batch, mkldnn):
    _, checkpoint, model_dir = exported[name]
    netG, run_cfg, _, _ = export.load_generator(checkpoint)
    gen = Generator(model_dir, batch_size=4, mkldnn=mkldnn)  # 7 images: two predictor runs
    z, labels = some_inputs(gen.num_classes, batch)

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


@pytest.mark.parametrize("name", ["dcgan_cifar10", "acgan_mnist"])
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
    z, _ = some_inputs(0, 4)
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


def run_export_tool(args, timeout=120):
    cmd = [sys.executable, "tools/export_model.py", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def test_export_tool_checks_and_prints_the_difference(exported, tmp_path):
    _, checkpoint, _ = exported["acgan_mnist"]
    args = ["-c", "configs/acgan_mnist.yaml", "-o", *TINY["acgan_mnist"]]
    proc = run_export_tool(
        [*args, "--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "out")]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Paddle Inference vs dynamic graph on 8 images: max abs diff" in proc.stdout
    assert proc.stderr == ""
    assert Generator(tmp_path / "out").num_classes == 10


def test_export_tool_refuses_another_model_config(exported, tmp_path):
    _, checkpoint, _ = exported["acgan_mnist"]
    proc = run_export_tool(
        [
            "-c",
            "configs/acgan_mnist.yaml",
            "--checkpoint",
            str(checkpoint),
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "model.ngf=64 (checkpoint: 8)" in lines[0]
    assert not (tmp_path / "out").exists()


def test_export_tool_missing_checkpoint_is_one_line(tmp_path):
    proc = run_export_tool(["--checkpoint", str(tmp_path / "nowhere")])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no checkpoint at" in lines[0], proc.stderr


# ---------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("name", ["mlp_gan_mnist", "dcgan_cifar10", "acgan_mnist"])
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
        z, labels = some_inputs(netG.num_classes, batch)
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
    z, _ = some_inputs(0, 2)
    with caplog.at_level(logging.INFO, logger="paddlegan_lite"):
        result = export.export_onnx(model_dir, {}, z, None, None)
    assert result is None
    assert "ONNX export skipped" in caplog.text and "pip install paddle2onnx" in caplog.text
    assert not (model_dir / "inference.onnx").exists()
