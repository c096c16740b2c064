"""Processes for data-parallel training under `python -m paddle.distributed.launch`: rank and world
size from the launcher's environment, joining the group (gloo on CPU, nccl on GPU), DataParallel,
SyncBatchNorm, slicing global batches, agreeing across ranks. With one process: no-ops."""

from __future__ import annotations

import os

from paddlegan_lite.errors import UserError

# Spreads the per-rank seeds over the int31 range (the golden ratio of it). Any multiplier works
# for "ranks never share a seed in the same step": 2**31 - 1 is prime.
_RANK_SEED_STRIDE = 1_327_217_885


def world_size() -> int:
    """Processes in the job, as `paddle.distributed.launch` tells each one (1 without it)."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def rank() -> int:
    """This process's rank in [0, world_size()): rank 0 writes the run's files."""
    return int(os.environ.get("PADDLE_TRAINER_ID", "0"))


def is_main() -> bool:
    return rank() == 0


def local_device(device: str) -> str:
    """The device to train on here: with several processes the launcher's `--gpus` gives each rank
    its GPU, so `gpu:N` from the config (which would put every rank on GPU N) becomes `gpu`."""
    if world_size() > 1 and device.startswith("gpu:"):
        return "gpu"
    return device


def init(device: str) -> None:
    """Join the process group when launched with more than one process; nothing otherwise."""
    if world_size() < 2:
        return
    import paddle.distributed as dist

    if device == "cpu":
        # a CUDA build of Paddle would otherwise pick nccl even for CPU tensors
        os.environ["PADDLE_DISTRI_BACKEND"] = "gloo"
    dist.init_parallel_env()


def backend() -> str:
    """gloo (CPU), nccl (GPU), or none with one process. Paddle 3.3.1's gloo aborts a collective
    that waits for a rank longer than 30 s, so on CPU no rank may run 30 s ahead of the others."""
    return os.environ.get("PADDLE_DISTRI_BACKEND", "nccl") if world_size() > 1 else "none"


def wrap(net):
    """`net` in `paddle.DataParallel` (broadcasts rank 0's weights now; averages gradients over
    ranks in every backward that follows a forward through the wrapper), or `net` itself alone."""
    if world_size() < 2:
        return net
    import paddle

    return paddle.DataParallel(net)


def sync_batchnorm(net):
    """`net` with every BatchNorm made a SyncBatchNorm (statistics over the global batch). Keeps
    the parameter objects and state-dict names, so checkpoints still fit; call before building
    optimizers. Several GPU processes only: one process has nothing to sync with."""
    if world_size() < 2:
        return net
    import paddle

    if paddle.get_device() == "cpu":
        raise UserError("distributed.sync_bn needs GPUs: Paddle has no CPU SyncBatchNorm kernel")
    return paddle.nn.SyncBatchNorm.convert_sync_batchnorm(net)


def own_slice(batch):
    """This rank's equal share of a global batch along axis 0: [world * B, ...] -> [B, ...]."""
    world = world_size()
    if world < 2:
        return batch
    per_rank = (batch.shape[0] if hasattr(batch, "shape") else len(batch)) // world
    return batch[rank() * per_rank : (rank() + 1) * per_rank]


def seed_per_rank(seed: int) -> None:
    """Re-seed so that each rank draws its own random numbers from here on (dropout masks), still
    a pure function of (seed, rank); leaves a single process's random stream untouched."""
    if world_size() < 2:
        return
    import paddle

    # rank + 1: no rank reuses `seed` itself, which drew the global noise just before
    paddle.seed((seed + (rank() + 1) * _RANK_SEED_STRIDE) % (2**31 - 1))


def any_rank(flag: bool) -> bool:
    """Whether `flag` is true on at least one rank (a collective: every rank must call it)."""
    if world_size() < 2:
        return flag
    _, high = _min_max(int(flag))
    return high > 0


def check_same(value: int, what: str) -> None:
    """Raise a UserError on every rank unless all ranks hold the same `value` (a collective)."""
    if world_size() < 2:
        return
    low, high = _min_max(value)
    if low != high:
        raise UserError(
            f"ranks disagree on {what} ({low} to {high}): every rank must see the same run folder "
            "(on several machines, a shared filesystem)"
        )


def check_batchnorm_synced(*nets) -> None:
    """Raise a UserError on every rank unless the BatchNorm running statistics of `nets` agree
    across ranks (a collective; call once after the first step of a sync_bn run).

    Paddle's CUDA sync_batch_norm kernel all-reduces only when its device context carries an NCCL
    communication context (paddle/phi/kernels/gpu/sync_batch_norm_kernel.cu: `if (comm_ctx)`);
    without one it silently normalises per device. The ranks' batches differ, so statistics
    that agree after one step were synced; ones that differ were not.
    """
    if world_size() < 2:
        return
    import paddle

    stats = [
        buffer.astype("float64").abs().sum()
        for net in nets
        for name, buffer in net.state_dict().items()
        if name.endswith(("_mean", "_variance"))
    ]
    if not stats:
        return
    total = float(paddle.stack(stats).sum().numpy())
    low, high = _min_max_float(total)
    if abs(high - low) > 1e-5 * max(abs(high), 1.0):
        raise UserError(
            "distributed.sync_bn: BatchNorm statistics differ between ranks after the first step "
            f"(sums {low:.6g} to {high:.6g}), so Paddle's SyncBatchNorm did not synchronise them "
            "here; train with distributed.sync_bn=false (per-device statistics)"
        )


def _min_max_float(value: float) -> tuple[float, float]:
    return _min_max(value, "float64")


def _min_max(value, dtype: str = "int64") -> tuple:
    import paddle
    import paddle.distributed as dist

    # max(v) and max(-v) in one all_reduce
    both = paddle.to_tensor([value, -value], dtype=dtype)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    high, neg_low = both.numpy().tolist()
    return -neg_low, high
