"""What several processes change, shown in one process: each rank's slice of every global batch,
the stop flag asked at log steps only, SyncBatchNorm and evaluation refused on CPU processes, the
BatchNorm self-check (e2e/test_distributed_launch.py launches real processes)."""

import numpy as np
import pytest
from helpers import tiny_cfg

from paddlegan_lite import distributed
from paddlegan_lite.config import load_config
from paddlegan_lite.datasets import build_dataset
from paddlegan_lite.errors import UserError
from paddlegan_lite.trainer import EpochBatchSampler, build_trainer, train


def test_sampler_ranks_split_each_global_batch():
    """The ranks' slices of every batch, joined, are one process's batches of the global size,
    including when resuming mid-epoch."""
    for epoch, skip in ((0, 0), (3, 0), (3, 2)):
        whole = EpochBatchSampler(50, 12, seed=7)
        whole.set_epoch(epoch, skip)
        ranks = [EpochBatchSampler(50, 4, seed=7, rank=r, world_size=3) for r in range(3)]
        for sampler in ranks:
            sampler.set_epoch(epoch, skip)
        joined = [sum(parts, []) for parts in zip(*ranks)]
        assert joined == list(whole) and len(joined) == len(whole) == 4 - skip
        assert all(len(set(batch)) == 12 for batch in joined)


def test_own_slice_and_single_process_no_ops(monkeypatch):
    values = np.arange(12).reshape(6, 2)
    assert distributed.own_slice(values) is values  # one process: untouched
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "3")
    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")
    np.testing.assert_array_equal(distributed.own_slice(values), [[4, 5], [6, 7]])
    assert not distributed.is_main() and distributed.local_device("gpu:3") == "gpu"


def test_sync_bn_on_cpu_is_a_user_error(monkeypatch):
    import paddle

    paddle.set_device("cpu")
    net = paddle.nn.Sequential(paddle.nn.Conv2D(1, 2, 3), paddle.nn.BatchNorm2D(2))
    assert distributed.sync_batchnorm(net) is net  # one process: nothing to sync
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    with pytest.raises(UserError, match="distributed.sync_bn needs GPUs"):
        distributed.sync_batchnorm(net)


def test_cpu_processes_refuse_eval_during_training(repo_root, mnist_root, tmp_path, monkeypatch):
    """Rank 0 evaluating while the others wait would outlast gloo's 30 s limit: refuse up front."""
    cfg = load_config(
        repo_root / "configs" / "mlp_gan_mnist.yaml",
        [f"data.root={mnist_root}", "data.download=false", f"train.output_dir={tmp_path / 'run'}",
         "train.save_interval=100", "eval.interval=10", "train.device=cpu"],
    )  # fmt: skip
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    with pytest.raises(UserError, match="eval.interval with several CPU processes"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_ranks_agree_on_stopping_only_at_log_steps(mnist_root, tmp_path, monkeypatch):
    """With several processes the stop flag is all-reduced (a device sync on GPUs) at log steps
    only, not after every step; every rank still asks at the same steps."""
    cfg = tiny_cfg("mlp_gan_mnist", mnist_root, tmp_path / "run", "train.max_steps=12",
                   "train.log_interval=4")  # fmt: skip
    trainer = build_trainer(cfg, build_dataset(cfg.data, 28, 1, train=True))
    asked_at = []
    monkeypatch.setattr(distributed, "any_rank", lambda flag: asked_at.append(trainer.step) or flag)
    trainer.world_size = 2  # as a rank of a 2-process job sees it (the collective is patched)
    trainer.fit()
    assert trainer.step == 12
    per_epoch = len(trainer.dataset) // (8 * 2)  # the sampler cuts global batches of 2 ranks
    assert per_epoch < 12  # epochs end inside the run: their checks are counted below
    expected = [0]  # the loop's start; then log steps and the start of each new epoch
    for step in range(1, 12):  # not 12: the last step ends the run without asking
        expected += [step] * ((step % 4 == 0) + (step % per_epoch == 0))
    assert asked_at == expected
    trainer.world_size = 1  # one process: the local flag, every step, no collective
    asked_at.clear()
    assert trainer.stop_requested(check_ranks=False) is False
    assert asked_at == [0 + 12]


@pytest.mark.parametrize("spread, refused", [(0.0, False), (1e-3, True)], ids=["synced", "not"])
def test_sync_bn_self_check_refuses_statistics_that_differ_between_ranks(
    monkeypatch, spread, refused
):
    """On GPUs, Paddle's sync_batch_norm all-reduces only when an NCCL comm context exists:
    a sync_bn run compares BatchNorm statistics across ranks after its first step. The
    collective is simulated: rank sums `spread` apart."""
    from paddlegan_lite.models.dcgan import DCGANDiscriminator

    net = DCGANDiscriminator(image_size=32, channels=1, ndf=8)
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    monkeypatch.setattr(distributed, "_min_max_float", lambda value: (value, value * (1 + spread)))
    if refused:
        with pytest.raises(UserError, match="BatchNorm statistics differ between ranks"):
            distributed.check_batchnorm_synced(net)
    else:
        distributed.check_batchnorm_synced(net)
