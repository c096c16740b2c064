"""The trainer (trainer.py) with tiny nets on 40 digits: a checkpoint of another model config is
refused, a non-finite loss stops before it is saved, the EMA generator, fused Adam, the AMP wiring
(refused on CPU, simulated half-precision D outputs), learning-rate decay, train.max_minutes, and
the classes a conditional D sees and its class terms. Longer runs (resume equals an uninterrupted
run, the GAN learns) are in integration/test_training.py."""

import json

import numpy as np
import paddle
import pytest
from helpers import tiny_cfg

from paddlegan_lite.checkpoint import CheckpointError, find_latest, load_checkpoint
from paddlegan_lite.datasets import build_dataset
from paddlegan_lite.errors import UserError
from paddlegan_lite.extractors import softmax
from paddlegan_lite.train_state import load_generator
from paddlegan_lite.trainer import AMP_FP16_EXTRA_WHITE_LIST, build_trainer, train


def test_resume_refuses_another_model_config(mnist_root, tmp_path):
    cfg = tiny_cfg("dcgan_mnist", mnist_root, tmp_path / "a", "train.max_steps=1")
    train(cfg)
    other = tiny_cfg("dcgan_mnist", mnist_root, tmp_path / "a", "train.max_steps=2", "model.ngf=16")
    with pytest.raises(CheckpointError, match="another model config"):
        train(other, resume="auto")


def test_non_finite_loss_stops_without_saving_it(mnist_root, tmp_path):
    cfg = tiny_cfg("dcgan_mnist", mnist_root, tmp_path / "run", "train.max_steps=6",
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


def test_asking_for_ema_weights_of_a_run_without_them_is_an_error(tmp_path, mnist_root):
    out = tmp_path / "run"
    train(tiny_cfg("dcgan_mnist", mnist_root, out, "train.max_steps=1"))
    with pytest.raises(CheckpointError, match="no EMA generator"):
        load_generator(out / "checkpoints" / "latest", "ema")
    assert load_generator(out / "checkpoints" / "latest", "auto")[3] == "netG"


def test_ema_is_the_running_average_of_g(mnist_root, tmp_path):
    cfg = tiny_cfg("dcgan_mnist", mnist_root, tmp_path / "run", "train.max_steps=1",
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


def test_grids_and_eval_sample_what_a_loaded_checkpoint_samples_and_change_nothing(
    mnist_root, tmp_path
):
    cfg = tiny_cfg("dcgan_mnist", mnist_root, tmp_path / "run", "train.max_steps=2",
        "train.ema_decay=0.9",
    )  # fmt: skip
    trainer = build_trainer(cfg, build_dataset(cfg.data, 32, 1))
    trainer.fit()
    nets = (trainer.netG, trainer.netD, trainer.netG_ema)
    before = [{k: v.numpy().copy() for k, v in net.state_dict().items()} for net in nets]
    paddle.seed(7)
    sampling = trainer.sampling_copy()
    drawn_next = paddle.randn([4]).numpy()
    paddle.seed(7)
    np.testing.assert_array_equal(drawn_next, paddle.randn([4]).numpy())  # RNG untouched
    assert trainer.netG.training and trainer.netD.training
    for net, state in zip(nets, before):  # the run's own nets (statistics too) as they were
        for k, v in net.state_dict().items():
            np.testing.assert_array_equal(v.numpy(), state[k], err_msg=k)
    loaded, *_ = load_generator(find_latest(tmp_path / "run" / "checkpoints"))
    assert not sampling.training
    for (k, v), w in zip(sampling.state_dict().items(), loaded.state_dict().values()):
        np.testing.assert_allclose(v.numpy(), w.numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    ema_mean = trainer.netG_ema.state_dict()["main.1._mean"].numpy()
    assert np.abs(sampling.state_dict()["main.1._mean"].numpy() - ema_mean).max() > 1e-4


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


def test_multi_tensor_adam_gives_the_same_weights(mnist_root, tmp_path):
    steps = "train.max_steps=3"
    plain = weights_after(tiny_cfg("dcgan_mnist", mnist_root, tmp_path / "a", steps))
    fused = weights_after(
        tiny_cfg("dcgan_mnist", mnist_root, tmp_path / "b", steps,
                 "optimizer.multi_tensor=true")
    )  # fmt: skip
    for key in plain:
        np.testing.assert_allclose(fused[key], plain[key], rtol=1e-5, atol=1e-7, err_msg=key)
    fused_option = "optimizer.multi_tensor=true"
    cfg = tiny_cfg("dcgan_mnist", mnist_root, tmp_path / "c", fused_option)
    trainer = build_trainer(cfg, build_dataset(cfg.data, 32, 1, train=True))
    assert trainer.optG._use_multi_tensor and trainer.optD._use_multi_tensor  # the option took


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_amp_on_cpu_is_refused_with_the_reason(mnist_root, tmp_path, amp):
    cfg = tiny_cfg("dcgan_mnist", mnist_root, tmp_path, "train.max_steps=1",
                   f"train.amp={amp}", "train.device=cpu")  # fmt: skip
    with pytest.raises(UserError, match=f"train.amp={amp} needs a GPU: on CPU Paddle's auto_cast"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.filterwarnings("ignore:(amp_guard|AmpScaler) can only be enabled")
def test_amp_code_path_runs_and_resumes(mnist_root, tmp_path):
    """The AMP step (auto_cast + GradScaler) run on CPU, where Paddle makes both pass-throughs:
    the wiring must train to the same weights as float32 and save/resume its scaler state."""
    steps = "train.max_steps=3"
    plain = weights_after(tiny_cfg("dcgan_mnist", mnist_root, tmp_path / "a", steps))
    cfg = tiny_cfg("dcgan_mnist", mnist_root, tmp_path / "b", steps, "train.amp=fp16")
    trainer = build_trainer(cfg, build_dataset(cfg.data, 32, 1, train=True))
    assert isinstance(trainer.state.scalerD, paddle.amp.GradScaler)
    trainer.fit()
    for key, value in both_nets(trainer).items():
        np.testing.assert_allclose(value, plain[key], rtol=1e-6, atol=1e-7, err_msg=key)
    again = build_trainer(cfg, build_dataset(cfg.data, 32, 1, train=True))
    again.load(tmp_path / "b" / "checkpoints" / "latest")
    assert again.step == 3


def test_linear_lr_decay_falls_to_zero_at_the_last_step(mnist_root, tmp_path):
    rates = ["optimizer.g.lr=1e-3", "optimizer.d.lr=4e-3"]
    cfg = tiny_cfg("dcgan_mnist", mnist_root, tmp_path, "train.max_steps=10",
                   "optimizer.lr_decay=linear", *rates)  # fmt: skip
    trainer = build_trainer(cfg, build_dataset(cfg.data, 32, 1, train=True))
    for step, factor in ((0, 1.0), (4, 0.6), (9, 0.1), (10, 0.0)):
        trainer.state.step = step
        trainer.set_learning_rates(10)
        assert trainer.optG.get_lr() == pytest.approx(1e-3 * factor)
        assert trainer.optD.get_lr() == pytest.approx(4e-3 * factor)
    constant = tiny_cfg("dcgan_mnist", mnist_root, tmp_path / "c", "train.max_steps=10")
    trainer = build_trainer(constant, build_dataset(constant.data, 32, 1, train=True))
    trainer.state.step = 9
    trainer.set_learning_rates(10)
    assert trainer.optG.get_lr() == pytest.approx(2e-4)  # the config's lr, unchanged


def test_lr_decay_needs_a_length_in_steps(mnist_root, tmp_path):
    with pytest.raises(UserError, match="'optimizer.lr_decay' linear needs the run's length"):
        tiny_cfg("dcgan_mnist", mnist_root, tmp_path, "train.epochs=0",
                 "train.max_minutes=1", "optimizer.lr_decay=linear")  # fmt: skip
    with pytest.raises(UserError, match="'optimizer.lr_decay' is 'cosine'; valid: \"\", linear"):
        tiny_cfg("dcgan_mnist", mnist_root, tmp_path, "optimizer.lr_decay=cosine")


def test_max_minutes_stops_saves_and_says_so(mnist_root, tmp_path, caplog):
    """train.max_minutes alone bounds the run: it stops at the first step past the time, with a
    checkpoint a resume continues from."""
    from paddlegan_lite.logger import log

    cfg = tiny_cfg("dcgan_mnist", mnist_root, tmp_path, "train.epochs=0",
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


def test_a_conditional_d_sees_the_real_and_the_drawn_classes(mnist_root, tmp_path):
    """One trainer for every family: the projection D gets the dataset's labels with the real
    batch and G's drawn labels with the fake one (and in the G step)."""
    from paddlegan_lite.trainer import EpochBatchSampler

    cfg = tiny_cfg("sngan_cifar10_cond", mnist_root, tmp_path, "train.max_steps=1",
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


def _cross_entropy(class_logits, labels):
    return float(-np.log(softmax(class_logits)[np.arange(len(labels)), labels]).mean())


@pytest.mark.parametrize("name, dual", [("acgan_mnist", False), ("sngan_cifar10_cond", True)])
def test_class_terms_acgan_on_real_and_fake_dual_projection_on_real(mnist_root, tmp_path, name,
                                                                    dual):  # fmt: skip
    """D's class cross-entropy: AC-GAN's on real and fake images (Odena et al.), a dual
    projection D's on real ones only (Han et al.); G's on its samples for both. By hand on fixed
    hinge logits and class logits, with train.cls_weight 0.5."""
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal([2, 4]).astype("float32")
    real_cls, fake_cls = rng.standard_normal([2, 4, 10]).astype("float32") * 3
    labels, gen_labels = np.array([0, 9, 1, 1]), np.array([2, 9, 0, 7])
    extra = ["model.dual_projection=true"] if dual else []
    cfg = tiny_cfg(name, mnist_root, tmp_path, "train.loss=hinge", "train.cls_weight=0.5", *extra)
    trainer = build_trainer(cfg, dataset=None)
    t = paddle.to_tensor
    loss, _, _ = trainer.d_objective((t(real), t(real_cls)), (t(fake), t(fake_cls)),
                                     t(labels), t(gen_labels))  # fmt: skip
    hinge = np.maximum(1 - real, 0).mean() + np.maximum(1 + fake, 0).mean()
    classes = _cross_entropy(real_cls, labels)
    if not dual:
        classes += _cross_entropy(fake_cls, gen_labels)
    assert float(loss) == pytest.approx(hinge + 0.5 * classes, rel=1e-5)
    g = trainer.g_objective((t(fake), t(fake_cls)), t(gen_labels))
    assert float(g) == pytest.approx(-fake.mean() + 0.5 * _cross_entropy(fake_cls, gen_labels),
                                     rel=1e-5)  # fmt: skip


def test_dual_projection_trains_with_r1(mnist_root, tmp_path):
    """A dual projection D through the whole step: its class logits reach the losses, R1 takes
    the adversarial logits only (a penalty on class logits would fail their shape)."""
    cfg = tiny_cfg("sngan_cifar10_cond", mnist_root, tmp_path, "model.dual_projection=true",
                   "train.max_steps=3", "train.r1_gamma=0.1", "train.log_interval=1")  # fmt: skip
    trainer = build_trainer(cfg, build_dataset(cfg.data, 32, 1))
    seen = []
    trainer.netD.register_forward_post_hook(lambda layer, args, out: seen.append(out))
    trainer.fit()
    assert all(isinstance(out, tuple) and out[1].shape[1] == 10 for out in seen)
    rows = [json.loads(row) for row in (tmp_path / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss_d"]) and np.isfinite(r["loss_g"]) for r in rows)


# ---------------------------------------------------------------------- AMP on a GPU, simulated
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["dcgan_mnist", "acgan_mnist", "sngan_cifar10_cond"])
def test_half_precision_d_outputs_reach_meter_logs_and_checkpoints_as_float32(
    mnist_root, tmp_path, name, dtype
):
    """Under auto_cast O1 on a GPU, D's last matmul/linear is white-listed, so its logits come out
    in float16/bfloat16 while the losses are float32: simulated here by casting D's outputs."""
    cfg = tiny_cfg(name, mnist_root, tmp_path / "run", "train.max_steps=3", "train.log_interval=1")
    trainer = build_trainer(cfg, build_dataset(cfg.data, cfg.model.image_size, 1, train=True))
    full_precision_forward = trainer.netD.forward

    def half_forward(x, labels=None):
        out = full_precision_forward(x, labels)
        if isinstance(out, tuple):
            return tuple(o.astype(dtype) for o in out)
        return out.astype(dtype)

    trainer.netD.forward = half_forward
    trainer.fit()
    rows = [json.loads(row) for row in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert all(np.isfinite(row[k]) for k in ("loss_d", "loss_g", "d_real", "d_fake")), row
    _, tensors = load_checkpoint(find_latest(tmp_path / "run" / "checkpoints"))
    dtypes = {a.dtype for part in ("netG", "netD") for a in tensors[part].values()}
    assert dtypes == {np.dtype("float32")}


def test_fp16_autocast_adds_conv2d_transpose_and_bf16_does_not(mnist_root, tmp_path, monkeypatch):
    """Paddle's cuDNN conv2d_transpose has a float16 kernel, no bfloat16 one (read in
    paddle/phi/kernels/gpudnn/conv_transpose_kernel.cu): only fp16 white-lists it."""
    seen = []
    monkeypatch.setattr(paddle.amp, "auto_cast", lambda **kwargs: seen.append(kwargs))
    for amp in ("fp16", "bf16"):
        cfg = tiny_cfg("dcgan_mnist", mnist_root, tmp_path / amp, f"train.amp={amp}",
                       "train.max_steps=1")  # fmt: skip
        build_trainer(cfg, dataset=None).autocast()
    assert seen[0] == {"level": "O1", "dtype": "float16", "custom_white_list": {"conv2d_transpose"}}
    assert seen[1] == {"level": "O1", "dtype": "bfloat16"}
    assert AMP_FP16_EXTRA_WHITE_LIST == {"conv2d_transpose"}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_meter_takes_mixed_precision_rows(dtype):
    """Paddle refuses to stack float32 with float16: the meter casts each row to float32."""
    from paddlegan_lite.trainer import _Meter

    meter = _Meter()
    loss = paddle.to_tensor(0.5)
    half = paddle.to_tensor(0.25).astype(dtype)
    meter.add(loss, None, half, half, batch_size=8)
    meter.add(loss, loss, half, half, batch_size=8)
    values = meter.flush(next_step=3)
    assert values["loss_d"] == 0.5 and values["loss_g"] == 0.5  # loss_g: the step that had one
    assert values["d_real"] == values["d_fake"] == 0.25
