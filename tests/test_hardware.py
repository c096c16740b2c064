"""Right on the hardware users have: CPU threads, GPU-only code paths shown on CPU by simulation
(half-precision D outputs as auto_cast gives them, deterministic-kernel flags, AMP lists), and no
per-step host sync with several processes."""

import json
import subprocess
import sys

import numpy as np
import paddle
import pytest
from conftest import tool_env
from data_files import write_mnist_idx

from paddlegan_lite import distributed, runtime
from paddlegan_lite.checkpoint import find_latest, load_checkpoint
from paddlegan_lite.config import load_config
from paddlegan_lite.datasets import build_dataset
from paddlegan_lite.trainer import AMP_FP16_EXTRA_WHITE_LIST, build_trainer

HYPERTHREADED_CPUINFO = "\n\n".join(
    f"processor\t: {cpu}\nphysical id\t: 0\ncore id\t\t: {cpu % 2}\nsiblings\t: 4\ncpu cores\t: 2"
    for cpu in range(4)
)
TWO_SOCKETS_CPUINFO = "\n\n".join(
    f"processor\t: {cpu}\nphysical id\t: {cpu // 2}\ncore id\t\t: {cpu % 2}" for cpu in range(4)
)


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    write_mnist_idx(root, n=32, seed=5)
    return root


def tiny(repo_root, name, mnist_root, out, *extra):
    sizes = ["model.ngf=8", "model.ndf=8"]
    if name == "dcgan_mnist":
        sizes.append("model.image_size=32")
    return load_config(
        repo_root / "configs" / f"{name}.yaml",
        sizes
        + [f"data.root={mnist_root}", "data.download=false", f"train.output_dir={out}",
           "train.batch_size=8", "train.log_interval=1", "train.save_interval=100", *extra],
    )  # fmt: skip


# ---------------------------------------------------------------------- CPU threads
def test_physical_cores_count_cores_not_hyperthreads():
    assert runtime.physical_cores(HYPERTHREADED_CPUINFO, allowed={0, 1, 2, 3}) == 2
    assert runtime.physical_cores(TWO_SOCKETS_CPUINFO, allowed={0, 1, 2, 3}) == 4
    assert runtime.physical_cores(TWO_SOCKETS_CPUINFO, allowed={0, 1}) == 2  # affinity mask
    assert runtime.physical_cores("", allowed={0, 1, 2}) == 3  # no cpuinfo: logical CPUs


def test_thread_choice_order(monkeypatch):
    monkeypatch.setattr(runtime, "physical_cores", lambda: 8)
    monkeypatch.setattr(runtime, "_user_omp_threads", None)
    monkeypatch.delenv("PADDLE_LOCAL_SIZE", raising=False)
    assert runtime.cpu_threads(0) == (8, "all physical cores")
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", "2")  # a 2-process launch shares the cores out
    assert runtime.cpu_threads(0) == (4, "8 physical cores / 2 processes")
    monkeypatch.setattr(runtime, "_user_omp_threads", "3")
    assert runtime.cpu_threads(0) == (3, "OMP_NUM_THREADS")
    assert runtime.cpu_threads(5) == (5, "train.threads")


READ_BACK = r"""
import ctypes, json, os, sys
from paddlegan_lite.ops.process import configure_process_env
configure_process_env()  # as the tools: before Paddle loads
import paddle
from paddlegan_lite.ops import onednn
from paddlegan_lite.runtime import physical_cores, use_cpu_threads

chosen = use_cpu_threads(int(sys.argv[1]))
libs = os.path.join(paddle.__path__[0], "libs")
x, w = paddle.randn([2, 32, 8, 8]), paddle.randn([32, 32, 3, 3])
onednn.conv2d(x, w, None, [1, 1], [1, 1]).numpy()  # ONEDNN_VERBOSE prints its thread count
print(json.dumps({
    "chosen": chosen[0],
    "omp": ctypes.CDLL(os.path.join(libs, "libiomp5.so")).omp_get_max_threads(),
    "mkl": ctypes.CDLL(os.path.join(libs, "libmklml_intel.so")).MKL_Get_Max_Threads(),
    "cores": physical_cores(),
}))
"""


@pytest.mark.parametrize(
    "omp_env, requested, expect",
    [(None, 0, "cores"), ("1", 0, 1), (None, 1, 1)],
    ids=["default-all-cores", "user-OMP_NUM_THREADS-wins", "train.threads"],
)
def test_threads_read_back_from_paddle_and_onednn(tmp_path, omp_env, requested, expect):
    env = tool_env()
    env.pop("OMP_NUM_THREADS", None)
    if omp_env is not None:
        env["OMP_NUM_THREADS"] = omp_env
    env["ONEDNN_VERBOSE"] = "1"
    script = tmp_path / "read_back.py"
    script.write_text(READ_BACK)
    done = subprocess.run(
        [sys.executable, str(script), str(requested)], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    got = json.loads(lines[-1])
    want = got["cores"] if expect == "cores" else expect
    assert (got["chosen"], got["omp"], got["mkl"]) == (want, want, want)
    assert f"runtime:OpenMP,nthr:{want}" in done.stdout  # oneDNN runs on Paddle's thread pool


# ---------------------------------------------------------------------- AMP outputs
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["dcgan_mnist", "acgan_mnist"])
def test_half_precision_d_outputs_reach_meter_logs_and_checkpoints_as_float32(
    repo_root, mnist_root, tmp_path, name, dtype
):
    """Under auto_cast O1 on a GPU, D's last matmul/linear is white-listed, so its logits come out
    in float16/bfloat16 while the losses are float32: simulated here by casting D's outputs."""
    cfg = tiny(repo_root, name, mnist_root, tmp_path / "run", "train.max_steps=3")
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


def test_fp16_autocast_adds_conv2d_transpose_and_bf16_does_not(
    repo_root, mnist_root, tmp_path, monkeypatch
):
    """Paddle's cuDNN conv2d_transpose has a float16 kernel, no bfloat16 one (read in
    paddle/phi/kernels/gpudnn/conv_transpose_kernel.cu): only fp16 white-lists it."""
    seen = []
    monkeypatch.setattr(paddle.amp, "auto_cast", lambda **kwargs: seen.append(kwargs))
    for amp in ("fp16", "bf16"):
        cfg = tiny(repo_root, "dcgan_mnist", mnist_root, tmp_path / amp, f"train.amp={amp}",
                   "train.max_steps=1")  # fmt: skip
        build_trainer(cfg, dataset=None).autocast()
    assert seen[0] == {"level": "O1", "dtype": "float16", "custom_white_list": {"conv2d_transpose"}}
    assert seen[1] == {"level": "O1", "dtype": "bfloat16"}
    assert AMP_FP16_EXTRA_WHITE_LIST == {"conv2d_transpose"}


# ---------------------------------------------------------------------- data parallel
def test_ranks_agree_on_stopping_only_at_log_steps(repo_root, mnist_root, tmp_path, monkeypatch):
    """With several processes the stop flag is all-reduced (a device sync on GPUs) at log steps
    only, not after every step; every rank still asks at the same steps."""
    cfg = tiny(repo_root, "mlp_gan_mnist", mnist_root, tmp_path / "run", "train.max_steps=12",
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


# ---------------------------------------------------------------------- deterministic kernels
def test_deterministic_sets_the_cuda_builds_flags(monkeypatch):
    """A CPU build has no cuDNN flags (nothing to set); a CUDA build gets both. Simulated by
    giving Paddle's flag registry the names a CUDA build defines."""
    from paddle.base import core

    assert runtime.use_deterministic_kernels() == {}  # this CPU build
    registry = {"FLAGS_cudnn_deterministic": False, "FLAGS_embedding_deterministic": 0}
    set_to = {}
    monkeypatch.setattr(core, "globals", lambda: registry)
    monkeypatch.setattr(paddle, "set_flags", set_to.update)
    assert runtime.use_deterministic_kernels() == runtime.DETERMINISTIC_FLAGS
    assert set_to == {"FLAGS_cudnn_deterministic": True, "FLAGS_embedding_deterministic": 1}


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


@pytest.mark.parametrize("spread, refused", [(0.0, False), (1e-3, True)], ids=["synced", "not"])
def test_sync_bn_self_check_refuses_statistics_that_differ_between_ranks(
    monkeypatch, spread, refused
):
    """On GPUs, Paddle's sync_batch_norm all-reduces only when an NCCL comm context exists:
    a sync_bn run compares BatchNorm statistics across ranks after its first step. The
    collective is simulated: rank sums `spread` apart."""
    from paddlegan_lite.errors import UserError
    from paddlegan_lite.models.dcgan import DCGANDiscriminator

    net = DCGANDiscriminator(image_size=32, channels=1, ndf=8)
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    monkeypatch.setattr(distributed, "_min_max_float", lambda value: (value, value * (1 + spread)))
    if refused:
        with pytest.raises(UserError, match="BatchNorm statistics differ between ranks"):
            distributed.check_batchnorm_synced(net)
    else:
        distributed.check_batchnorm_synced(net)


def test_amp_off_written_bare_is_off(repo_root, tmp_path):
    """YAML 1.1 reads a bare `off` as false: `-o train.amp=off` and `amp: off` both mean off."""
    base = repo_root / "configs" / "dcgan_mnist.yaml"
    assert load_config(base, ["train.amp=off"]).train.amp == "off"
    config = tmp_path / "amp.yaml"
    config.write_text(f"_base_: {base}\ntrain:\n  amp: off\n")
    assert load_config(config).train.amp == "off"
