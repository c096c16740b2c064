"""The training state's one owner: to arrays and back is exact, a checkpoint of another model
config or of no training run is refused before anything changes, an EMA switched on at resume
starts at G, AMP scaler state travels only where a scaler is active."""

import copy

import numpy as np
import paddle
import pytest
from helpers import REPO_ROOT

from paddlegan_lite import checkpoint as ckpt
from paddlegan_lite.checkpoint import CheckpointError
from paddlegan_lite.config import load_config
from paddlegan_lite.errors import UserError
from paddlegan_lite.models import build_models, recompute_batch_norm_statistics
from paddlegan_lite.train_state import TrainState, load_generator
from paddlegan_lite.trainer import build_optimizers

TINY = {
    "dcgan_mnist": ["model.ngf=8", "model.ndf=8", "model.image_size=32"],
    "acgan_mnist": ["model.ngf=8", "model.ndf=4", "train.num_samples=20"],
}


def tiny_state(name="dcgan_mnist", *options, seed=1) -> TrainState:
    cfg = load_config(REPO_ROOT / "configs" / f"{name}.yaml", [*TINY[name], *options])
    paddle.seed(seed)
    netG, netD = build_models(cfg.model)
    return TrainState.start(cfg, netG, netD, *build_optimizers(cfg, netG, netD))


def trained(state: TrainState, step=5, epoch=1, batch_in_epoch=2, best_fid=12.5) -> TrainState:
    """One Adam step on each net (so there are moments to save) and counters away from zero."""
    m = state.cfg.model
    labels = paddle.zeros([2], "int64") if m.num_classes else None
    for net, opt in ((state.netG, state.optG), (state.netD, state.optD)):
        shape = [2, m.nz] if net is state.netG else [2, m.channels, m.image_size, m.image_size]
        out = net(paddle.randn(shape), labels)
        (out[0] if isinstance(out, tuple) else out).mean().backward()
        opt.step()
        opt.clear_grad()
    state.step, state.epoch, state.batch_in_epoch = step, epoch, batch_in_epoch
    state.best_fid = best_fid
    return state


def assert_same_arrays(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for part in a:
        assert a[part].keys() == b[part].keys(), part
        for key in a[part]:
            assert a[part][key].dtype == b[part][key].dtype, f"{part} {key}"
            np.testing.assert_array_equal(a[part][key], b[part][key], err_msg=f"{part} {key}")


@pytest.mark.parametrize(
    "name, options",
    [("dcgan_mnist", ["train.ema_decay=0.9"]), ("acgan_mnist", [])],
    ids=["dcgan-ema", "acgan"],
)
def test_to_arrays_and_back_is_exact(name, options):
    source = trained(tiny_state(name, *options, seed=1))
    state, tensors = source.to_arrays()
    target = tiny_state(name, *options, seed=2)  # other weights: all of them must be replaced
    assert not np.array_equal(target.netG.parameters()[0].numpy(), source.netG.parameters()[0])
    target.load_arrays(state, tensors)
    again_state, again_tensors = target.to_arrays()
    assert again_state == state
    assert_same_arrays(again_tensors, tensors)
    assert (target.step, target.epoch, target.batch_in_epoch) == (5, 1, 2)
    assert target.best_fid == 12.5 and target.step_seed() == source.step_seed()
    assert ("fixed_labels" in tensors["extra"]) == (name == "acgan_mnist")
    assert ("netG_ema" in tensors) == bool(options)


def test_save_and_load_through_a_checkpoint_folder(tmp_path):
    source = trained(tiny_state("dcgan_mnist", "train.ema_decay=0.9"))
    path = source.save(tmp_path)
    assert path == tmp_path / "step_00000005"
    target = tiny_state("dcgan_mnist", "train.ema_decay=0.9", seed=2)
    target.load(path)
    assert_same_arrays(target.to_arrays()[1], source.to_arrays()[1])
    assert target.to_arrays()[0] == source.to_arrays()[0]


def test_a_checkpoint_of_another_model_config_is_refused_unchanged():
    state, tensors = trained(tiny_state("dcgan_mnist")).to_arrays()
    other = tiny_state("dcgan_mnist", "model.ngf=16")
    before = other.to_arrays()
    with pytest.raises(
        CheckpointError, match=r"another model config .*model.ngf=16 \(checkpoint: 8\)"
    ):
        other.load_arrays(state, tensors, "run/step_5")
    assert_same_arrays(other.to_arrays()[1], before[1])
    assert other.step == 0


@pytest.mark.parametrize(
    "damage, missing",
    [
        (lambda state, tensors: state.pop("epoch"), "epoch"),
        (lambda state, tensors: tensors.pop("optD"), "optD"),
        (lambda state, tensors: tensors["extra"].pop("fixed_z"), "fixed_z"),
    ],
)
def test_arrays_of_no_training_run_are_refused(damage, missing):
    state, tensors = tiny_state().to_arrays()
    damage(state, tensors)
    with pytest.raises(
        CheckpointError, match=f"lacks \\['{missing}'\\]: not a training checkpoint"
    ):
        tiny_state().load_arrays(state, tensors)


def test_ema_switched_on_at_resume_starts_at_g():
    state, tensors = trained(tiny_state("dcgan_mnist")).to_arrays()
    assert "netG_ema" not in tensors
    with_ema = tiny_state("dcgan_mnist", "train.ema_decay=0.9", seed=2)
    with_ema.load_arrays(state, tensors)
    ema = ckpt.layer_arrays(with_ema.netG_ema)
    assert ema.keys() == tensors["netG"].keys()
    for key, value in tensors["netG"].items():
        np.testing.assert_array_equal(ema[key], value, err_msg=key)
    # and switched off at resume: the saved EMA is simply not used
    state, tensors = trained(tiny_state("dcgan_mnist", "train.ema_decay=0.9")).to_arrays()
    without = tiny_state("dcgan_mnist", seed=2)
    without.load_arrays(state, tensors)
    assert without.netG_ema is None and "netG_ema" not in without.to_arrays()[1]


class GPUScaler:
    """Stands for a GradScaler on a GPU: on CPU Paddle's is disabled and its state is empty."""

    def __init__(self, state=None):
        self.state = dict(state or {})

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state = dict(state)


@pytest.mark.filterwarnings("ignore:(amp_guard|AmpScaler) can only be enabled")
def test_amp_scalers_travel_only_where_active():
    fp16 = tiny_state("dcgan_mnist", "train.amp=fp16")
    assert isinstance(fp16.scalerG, paddle.amp.GradScaler)
    assert isinstance(fp16.scalerD, paddle.amp.GradScaler)
    fp16.scalerD = GPUScaler({"scale": np.array([512.0], np.float32), "incr_count": 7})
    fp16.scalerG = GPUScaler({"scale": np.array([256.0], np.float32), "incr_count": 3})
    state, tensors = fp16.to_arrays()
    assert state["amp_scalers"] == {
        "d": {"scale": [512.0], "incr_count": 7},
        "g": {"scale": [256.0], "incr_count": 3},
    }
    again = tiny_state("dcgan_mnist", "train.amp=fp16")
    again.scalerD, again.scalerG = GPUScaler(), GPUScaler()
    again.load_arrays(state, tensors)
    assert again.scalerD.state == {"scale": [512.0], "incr_count": 7}
    assert again.scalerG.state == {"scale": [256.0], "incr_count": 3}
    plain = tiny_state("dcgan_mnist")
    plain.load_arrays(state, tensors)  # amp off here: the saved scalers are not needed
    assert plain.scalerD is None and "amp_scalers" not in plain.to_arrays()[0]
    switched_on = tiny_state("dcgan_mnist", "train.amp=fp16")
    switched_on.scalerD, switched_on.scalerG = GPUScaler({"scale": [1.0]}), GPUScaler()
    switched_on.load_arrays(*plain.to_arrays())  # amp switched on at resume: scalers start fresh
    assert switched_on.scalerD.state == {"scale": [1.0]} and switched_on.scalerG.state == {}


def test_load_generator_builds_g_from_the_checkpoints_own_config(tmp_path):
    source = trained(tiny_state("acgan_mnist", "train.ema_decay=0.9"))
    path = source.save(tmp_path)
    for weights, key, net in (("auto", "netG_ema", source.netG_ema), ("raw", "netG", source.netG)):
        netG, run_cfg, state, loaded = load_generator(path, weights)
        assert loaded == key and not netG.training and state["step"] == 5
        assert run_cfg.model == source.cfg.model
        # the checkpoint's weights, BatchNorm statistics recomputed for them (the EMA's are G's)
        want = ckpt.layer_arrays(recompute_batch_norm_statistics(copy.deepcopy(net)))
        assert any(name.endswith("_mean") for name in want)
        for name, value in want.items():
            np.testing.assert_allclose(
                netG.state_dict()[name].numpy(), value, rtol=1e-6, atol=1e-7, err_msg=name
            )
    with pytest.raises(UserError, match="weights must be one of auto, ema, raw"):
        load_generator(path, "best")
