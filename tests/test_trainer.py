"""The training loop: resume equals an uninterrupted run, the GAN learns, Ctrl-C saves."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest
from conftest import tool_env
from data_files import write_idx, write_mnist_idx
from visualdl import LogReader

from paddlegan_lite.checkpoint import CheckpointError, find_latest, load_checkpoint
from paddlegan_lite.config import load_config
from paddlegan_lite.datasets import build_dataset
from paddlegan_lite.errors import UserError
from paddlegan_lite.train_state import load_generator
from paddlegan_lite.trainer import build_trainer, train


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    write_mnist_idx(root, n=40, seed=3)
    return root


def tiny_cfg(repo_root, name, mnist_root, out, *extra):
    overrides = {
        "mlp_gan_mnist": ["model.hidden=32"],
        "dcgan_mnist": ["model.ngf=8", "model.ndf=8", "model.image_size=32"],
        "acgan_mnist": ["model.ngf=8", "model.ndf=4"],
        # the conditional SNGAN (projection D) on the gray digits
        "sngan_cifar10_cond": ["model.ngf=8", "model.ndf=8", "data.name=mnist", "model.channels=1"],
    }[name]
    return load_config(
        repo_root / "configs" / f"{name}.yaml",
        overrides
        + [
            f"data.root={mnist_root}",
            "data.download=false",
            f"train.output_dir={out}",
            "train.batch_size=8",  # 40 images: 5 steps per epoch, so runs cross epochs
            "train.log_interval=2",
            "train.sample_interval=100",
            "train.save_interval=100",
            *extra,
        ],
    )


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
def test_resume_equals_uninterrupted_run(repo_root, mnist_root, tmp_path, name, options):
    """2N steps == N steps + resume + N steps: same step, same weights, same Adam state."""
    n = 4  # 2N = 8 crosses the epoch boundary at step 5 and resumes mid-epoch

    def run(folder, steps, resume=None):
        cfg = tiny_cfg(
            repo_root, name, mnist_root, tmp_path / folder, f"train.max_steps={steps}", *options
        )
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


def test_resume_refuses_another_model_config(repo_root, mnist_root, tmp_path):
    cfg = tiny_cfg(repo_root, "dcgan_mnist", mnist_root, tmp_path / "a", "train.max_steps=1")
    train(cfg)
    other = tiny_cfg(
        repo_root, "dcgan_mnist", mnist_root, tmp_path / "a", "train.max_steps=2", "model.ngf=16"
    )
    with pytest.raises(CheckpointError, match="another model config"):
        train(other, resume="auto")


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


def test_sigint_saves_a_resumable_latest(repo_root, mnist_root, tmp_path):
    """Ctrl-C: the tool finishes the step, saves `latest`, exits 0; --resume auto continues."""
    out = tmp_path / "run"
    cmd = [
        sys.executable, "tools/train.py", "-c", "configs/dcgan_mnist.yaml", "-o",
        f"data.root={mnist_root}", "data.download=false", f"train.output_dir={out}",
        "model.ngf=8", "model.ndf=8", "model.image_size=32", "train.batch_size=8",
        "train.max_steps=100000", "train.log_interval=1", "train.save_interval=100000",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=repo_root, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    seen = ""
    while "step 3/" not in seen and time.time() < deadline:
        seen += proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "SIGINT received" in seen + stdout
    latest = find_latest(out / "checkpoints")
    state, _ = load_checkpoint(latest)
    assert state["step"] >= 3
    assert os.path.islink(out / "checkpoints" / "latest")
    resumed = subprocess.run(
        cmd[:-3] + ["train.max_steps=" + str(state["step"] + 2), "--resume", "auto"],
        cwd=repo_root, env=tool_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at step {state['step']}" in resumed.stdout
    assert load_checkpoint(find_latest(out / "checkpoints"))[0]["step"] == state["step"] + 2


def test_non_finite_loss_stops_without_saving_it(repo_root, mnist_root, tmp_path):
    cfg = tiny_cfg(
        repo_root, "dcgan_mnist", mnist_root, tmp_path / "run", "train.max_steps=6",
        "train.save_interval=2", "train.log_interval=100",
    )  # fmt: skip
    trainer = build_trainer(cfg, build_dataset(cfg.data, 32, 1))
    real_g_step = trainer.g_step

    def g_step_going_nan(fake, gen_labels):  # as if the generator's loss blew up at step 4
        loss = real_g_step(fake, gen_labels)
        return loss * float("nan") if trainer.step == 3 else loss

    trainer.g_step = g_step_going_nan
    with pytest.raises(UserError, match=r"non-finite loss at step 4 \(loss_d=[\d.]+, loss_g=nan\)"):
        trainer.fit()
    state, _ = load_checkpoint(find_latest(tmp_path / "run" / "checkpoints"))
    assert state["step"] == 2  # the last good checkpoint; nothing written at or after step 4
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "latest",
        "step_00000002",
    ]


def test_eval_during_training_logs_fid_and_keeps_best(repo_root, mnist_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PADDLEGAN_LITE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    cfg = tiny_cfg(
        repo_root, "acgan_mnist", mnist_root, out, "train.max_steps=6", "eval.interval=3",
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
            np.testing.assert_array_equal(value.numpy(), tensors[key][name])
    assert "class_hist" not in evals[0] and 0 <= evals[0]["class_min_share"] <= 10


def test_asking_for_ema_weights_of_a_run_without_them_is_an_error(tmp_path, repo_root, mnist_root):
    out = tmp_path / "run"
    train(tiny_cfg(repo_root, "dcgan_mnist", mnist_root, out, "train.max_steps=1"))
    with pytest.raises(CheckpointError, match="no EMA generator"):
        load_generator(out / "checkpoints" / "latest", "ema")
    assert load_generator(out / "checkpoints" / "latest", "auto")[3] == "netG"


def test_ema_is_the_running_average_of_g(repo_root, mnist_root, tmp_path):
    cfg = tiny_cfg(
        repo_root, "dcgan_mnist", mnist_root, tmp_path / "run", "train.max_steps=1",
        "train.ema_decay=0.75",
    )  # fmt: skip
    trainer = build_trainer(cfg, build_dataset(cfg.data, 32, 1))

    def check_update(decay: float) -> None:
        before = {k: v.numpy().copy() for k, v in trainer.netG_ema.state_dict().items()}
        trainer.update_ema()
        ema = {k: v.numpy() for k, v in trainer.netG_ema.state_dict().items()}
        for name, param in trainer.netG.named_parameters():
            if param.stop_gradient:  # BatchNorm statistics: copied
                np.testing.assert_allclose(ema[name], param.numpy(), rtol=1e-6)
            else:
                expected = decay * before[name] + (1 - decay) * param.numpy()
                np.testing.assert_allclose(ema[name], expected, rtol=1e-5, atol=1e-7)

    trainer.fit()  # one step: G moved, the EMA took its warm-up weight
    trainer.state.step = 0
    check_update(0.1)  # the first update: (1 + 0) / (10 + 0), mostly G
    trainer.state.step = 1000
    check_update(0.75)  # later the configured decay


def both_nets(trainer) -> dict:
    """G's and D's state as numpy arrays, keyed netG.<name> / netD.<name>."""
    return {
        f"{net}.{k}": v.numpy()
        for net in ("netG", "netD")
        for k, v in getattr(trainer, net).state_dict().items()
    }


def weights_after(cfg) -> dict:
    trainer = build_trainer(cfg, build_dataset(cfg.data, 32, 1, train=True))
    trainer.fit()
    return both_nets(trainer)


def test_multi_tensor_adam_gives_the_same_weights(repo_root, mnist_root, tmp_path):
    steps = "train.max_steps=3"
    plain = weights_after(tiny_cfg(repo_root, "dcgan_mnist", mnist_root, tmp_path / "a", steps))
    fused = weights_after(
        tiny_cfg(repo_root, "dcgan_mnist", mnist_root, tmp_path / "b", steps,
                 "optimizer.multi_tensor=true")
    )  # fmt: skip
    for key in plain:
        np.testing.assert_allclose(fused[key], plain[key], rtol=1e-5, atol=1e-7, err_msg=key)
    fused_option = "optimizer.multi_tensor=true"
    cfg = tiny_cfg(repo_root, "dcgan_mnist", mnist_root, tmp_path / "c", fused_option)
    trainer = build_trainer(cfg, build_dataset(cfg.data, 32, 1, train=True))
    assert trainer.optG._use_multi_tensor and trainer.optD._use_multi_tensor  # the option took


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_amp_on_cpu_is_refused_with_the_reason(repo_root, mnist_root, tmp_path, amp):
    cfg = tiny_cfg(repo_root, "dcgan_mnist", mnist_root, tmp_path, "train.max_steps=1",
                   f"train.amp={amp}", "train.device=cpu")  # fmt: skip
    with pytest.raises(UserError, match=f"train.amp={amp} needs a GPU: on CPU Paddle's auto_cast"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.filterwarnings("ignore:(amp_guard|AmpScaler) can only be enabled")
def test_amp_code_path_runs_and_resumes(repo_root, mnist_root, tmp_path):
    """The AMP step (auto_cast + GradScaler) run on CPU, where Paddle makes both pass-throughs:
    the wiring must train to the same weights as float32 and save/resume its scaler state."""
    steps = "train.max_steps=3"
    plain = weights_after(tiny_cfg(repo_root, "dcgan_mnist", mnist_root, tmp_path / "a", steps))
    cfg = tiny_cfg(repo_root, "dcgan_mnist", mnist_root, tmp_path / "b", steps, "train.amp=fp16")
    trainer = build_trainer(cfg, build_dataset(cfg.data, 32, 1, train=True))
    assert isinstance(trainer.state.scalerD, paddle.amp.GradScaler)
    trainer.fit()
    for key, value in both_nets(trainer).items():
        np.testing.assert_allclose(value, plain[key], rtol=1e-6, atol=1e-7, err_msg=key)
    again = build_trainer(cfg, build_dataset(cfg.data, 32, 1, train=True))
    again.load(tmp_path / "b" / "checkpoints" / "latest")
    assert again.step == 3


def test_linear_lr_decay_falls_to_zero_at_the_last_step(repo_root, mnist_root, tmp_path):
    rates = ["optimizer.g.lr=1e-3", "optimizer.d.lr=4e-3"]
    cfg = tiny_cfg(repo_root, "dcgan_mnist", mnist_root, tmp_path, "train.max_steps=10",
                   "optimizer.lr_decay=linear", *rates)  # fmt: skip
    trainer = build_trainer(cfg, build_dataset(cfg.data, 32, 1, train=True))
    for step, factor in ((0, 1.0), (4, 0.6), (9, 0.1), (10, 0.0)):
        trainer.state.step = step
        trainer.set_learning_rates(10)
        assert trainer.optG.get_lr() == pytest.approx(1e-3 * factor)
        assert trainer.optD.get_lr() == pytest.approx(4e-3 * factor)
    constant = tiny_cfg(repo_root, "dcgan_mnist", mnist_root, tmp_path / "c", "train.max_steps=10")
    trainer = build_trainer(constant, build_dataset(constant.data, 32, 1, train=True))
    trainer.state.step = 9
    trainer.set_learning_rates(10)
    assert trainer.optG.get_lr() == pytest.approx(2e-4)  # the config's lr, unchanged


def test_lr_decay_needs_a_length_in_steps(repo_root, mnist_root, tmp_path):
    with pytest.raises(UserError, match="'optimizer.lr_decay' linear needs the run's length"):
        tiny_cfg(repo_root, "dcgan_mnist", mnist_root, tmp_path, "train.epochs=0",
                 "train.max_minutes=1", "optimizer.lr_decay=linear")  # fmt: skip
    with pytest.raises(UserError, match="'optimizer.lr_decay' is 'cosine'; valid: \"\", linear"):
        tiny_cfg(repo_root, "dcgan_mnist", mnist_root, tmp_path, "optimizer.lr_decay=cosine")


def test_max_minutes_stops_saves_and_says_so(repo_root, mnist_root, tmp_path, caplog):
    """train.max_minutes alone bounds the run: it stops at the first step past the time, with a
    checkpoint a resume continues from."""
    from paddlegan_lite.logger import log

    cfg = tiny_cfg(repo_root, "dcgan_mnist", mnist_root, tmp_path, "train.epochs=0",
                   "train.max_minutes=0.001")  # 60 ms  # fmt: skip
    log.propagate = True
    try:
        with caplog.at_level("INFO", logger="paddlegan_lite"):
            train(cfg)
    finally:
        log.propagate = False
    state, _ = load_checkpoint(tmp_path / "checkpoints" / "latest")
    assert 1 <= state["step"] < 1000
    assert f"train.max_minutes=0.001 reached at step {state['step']}" in caplog.text
    assert "received" not in caplog.text


def test_a_conditional_d_sees_the_real_and_the_drawn_classes(repo_root, mnist_root, tmp_path):
    """One trainer for every family: the projection D gets the dataset's labels with the real
    batch and G's drawn labels with the fake one (and in the G step)."""
    from paddlegan_lite.trainer import EpochBatchSampler

    cfg = tiny_cfg(repo_root, "sngan_cifar10_cond", mnist_root, tmp_path, "train.max_steps=1",
                   "train.d_steps=1")  # fmt: skip
    dataset = build_dataset(cfg.data, 32, 1, train=True)
    trainer = build_trainer(cfg, dataset)
    seen_by_d, drawn = [], []
    trainer.netD.register_forward_pre_hook(lambda layer, args: seen_by_d.append(args[1].numpy()))
    trainer.netG.register_forward_pre_hook(lambda layer, args: drawn.append(args[1].numpy()))
    trainer.fit()
    first_batch = next(iter(EpochBatchSampler(len(dataset), 8, cfg.seed)))
    real_labels = dataset.get_batch(first_batch)[1].reshape(-1)
    assert len(seen_by_d) == 3  # real and fake in the D step, fake in the G step
    np.testing.assert_array_equal(seen_by_d[0], real_labels)
    np.testing.assert_array_equal(seen_by_d[1], drawn[0])
    np.testing.assert_array_equal(seen_by_d[2], drawn[0])
    assert not np.array_equal(drawn[0], real_labels)  # drawn, not copied from the data
