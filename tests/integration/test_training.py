"""Real training runs in one process: 2N steps equal N steps + resume + N steps for every family,
the shipped MLP GAN learns the data's structure, evaluation during training logs FID and keeps
the best checkpoint with its EMA generator."""

import json

import numpy as np
import paddle
import pytest
from data_files import write_idx
from helpers import tiny_cfg
from visualdl import LogReader

from paddlegan_lite.checkpoint import find_latest, load_checkpoint
from paddlegan_lite.config import load_config
from paddlegan_lite.datasets import build_dataset
from paddlegan_lite.train_state import load_generator
from paddlegan_lite.trainer import build_trainer, train


@pytest.mark.parametrize(
    "name, options",
    [
        ("dcgan_mnist", []),
        ("acgan_mnist", []),
        ("dcgan_mnist", ["optimizer.multi_tensor=true"]),
        # (a linear lr decay follows the configured length, which the halves here change)
        ("sngan_cifar10_cond", ["train.d_steps=2", "train.ema_decay=0.9", "optimizer.lr_decay="]),
    ],
    ids=["dcgan", "acgan", "dcgan-multi-tensor-adam", "sngan-cond"],
)
def test_resume_equals_uninterrupted_run(mnist_root, tmp_path, name, options):
    """2N steps == N steps + resume + N steps: same step, same weights, same Adam state."""
    n = 4  # 2N = 8 crosses the epoch boundary at step 5 and resumes mid-epoch

    def run(folder, steps, resume=None):
        cfg = tiny_cfg(name, mnist_root, tmp_path / folder, f"train.max_steps={steps}", *options)
        train(cfg, resume=resume)

    run("whole", 2 * n)
    run("split", n)
    run("split", 2 * n, resume="auto")

    state_a, tensors_a = load_checkpoint(find_latest(tmp_path / "whole" / "checkpoints"))
    state_b, tensors_b = load_checkpoint(find_latest(tmp_path / "split" / "checkpoints"))
    assert state_a["step"] == state_b["step"] == 2 * n
    assert state_a["epoch"] == state_b["epoch"] == 1
    for part in ("netG", "netD", "optG", "optD", "extra"):
        assert tensors_a[part].keys() == tensors_b[part].keys()
        for key in tensors_a[part]:
            np.testing.assert_allclose(
                tensors_a[part][key], tensors_b[part][key], rtol=1e-5, atol=1e-6, err_msg=key
            )
    # the resumed run appended to the same logs, continuing the step count
    rows = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [int(r.split('"step": ')[1].split(",")[0]) for r in rows] == [2, 4, 6, 8]


def generated_images(trainer, n=256):
    trainer.netG.eval()
    with paddle.no_grad():
        images = trainer.netG(paddle.randn([n, trainer.netG.nz])).numpy()[:, 0]
    trainer.netG.train()
    return images


def share_with_class_structure(images):
    """Share of images that are clearly one class of the halves data: one half bright, one dark."""
    top, bottom = images[:, :14].mean(axis=(1, 2)), images[:, 14:].mean(axis=(1, 2))
    return float(np.mean(np.abs(top - bottom) > 1.0))


def test_mlp_gan_learns_the_data(repo_root, tmp_path):
    """The shipped MLP GAN config on two-class IDX data (top or bottom half lit, with noise):
    generated images go from noise-like blobs to images with the data's class structure."""
    rng = np.random.default_rng(0)
    labels = (np.arange(640) % 2).astype(np.uint8)
    images = np.zeros((640, 28, 28), dtype=np.int64)
    images[labels == 0, :14] = 255
    images[labels == 1, 14:] = 255
    images = np.clip(images + rng.integers(-20, 21, images.shape), 0, 255).astype(np.uint8)
    write_idx(tmp_path / "halves" / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "halves" / "train-labels-idx1-ubyte.gz", labels)
    cfg = load_config(
        repo_root / "configs" / "mlp_gan_mnist.yaml",
        [f"data.root={tmp_path / 'halves'}", "data.download=false",
         f"train.output_dir={tmp_path / 'run'}", "train.epochs=0", "train.max_steps=2000",
         "train.batch_size=64", "train.log_interval=500", "train.sample_interval=5000",
         "train.save_interval=5000"],
    )  # fmt: skip
    trainer = build_trainer(cfg, build_dataset(cfg.data, 28, 1))
    data = images.astype(np.float32) / 127.5 - 1.0
    assert share_with_class_structure(data) == 1.0

    before = generated_images(trainer)
    trainer.fit()
    after = generated_images(trainer)
    assert share_with_class_structure(before) < 0.05
    assert share_with_class_structure(after) > 0.5
    # and the images' value distribution moved toward the data's (mostly near -1 or +1)
    saturated = lambda x: float(np.mean(np.abs(x) > 0.5))  # noqa: E731
    assert saturated(after) > saturated(before) + 0.3


def test_eval_during_training_logs_fid_and_keeps_best(mnist_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PADDLEGAN_LITE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    cfg = tiny_cfg("acgan_mnist", mnist_root, out, "train.max_steps=6", "eval.interval=3",
        "eval.num_samples=20", "eval.batch_size=10", "eval.classifier_steps=20",
        "train.ema_decay=0.9",
    )  # fmt: skip
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if "fid" in row]
    assert [row["step"] for row in evals] == [3, 6]
    for row in evals:
        assert row["fid"] >= 0 and 0 <= row["class_acc"] <= 1 and np.isfinite(row["kid"])
    reader = LogReader(file_path=str(next((out / "vdl").iterdir())))
    assert [r.id for r in reader.get_data("scalar", "eval/fid")] == [3, 6]
    best_step = min(evals, key=lambda row: row["fid"])["step"]
    best = (out / "checkpoints" / "best").resolve()
    assert best.name == f"step_{best_step:08d}"
    state, tensors = load_checkpoint(best)
    assert state["best_fid"] == pytest.approx(min(row["fid"] for row in evals))
    # the EMA generator is saved beside G and differs from it (it lags behind)
    assert tensors["netG_ema"].keys() == tensors["netG"].keys()
    assert any(not np.allclose(tensors["netG_ema"][k], tensors["netG"][k]) for k in tensors["netG"])
    # eval and export take the EMA generator unless asked for G's own weights
    for weights, key in (("auto", "netG_ema"), ("ema", "netG_ema"), ("raw", "netG")):
        netG, _, _, loaded = load_generator(best, weights)
        assert loaded == key
        for name, value in netG.state_dict().items():
            if name.endswith(("._mean", "._variance")):
                continue  # recomputed for these weights (tests/unit/test_train_state.py)
            np.testing.assert_array_equal(value.numpy(), tensors[key][name])
    assert "class_hist" not in evals[0] and 0 <= evals[0]["class_min_share"] <= 10
