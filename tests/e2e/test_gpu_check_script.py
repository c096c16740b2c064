"""bench/gpu_check.py run as a user runs it, without a GPU: its no-GPU exit, its --dry-run, and the
rank probe its 2-GPU checks launch, run on 2 CPU processes."""

import subprocess
import sys

import paddle
import pytest
from helpers import REPO_ROOT, tool_env

sys.path.insert(0, str(REPO_ROOT / "bench"))
import gpu_check  # noqa: E402
from gpu_check import Comparison, compare_arrays, judge_equal, judge_sync_bn  # noqa: E402


def run_check(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "bench/gpu_check.py", *args],
        cwd=REPO_ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.skipif(
    paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0,
    reason="this machine has a GPU: the check would run",
)
def test_without_a_gpu_it_prints_one_line_and_exits_0():
    proc = run_check()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"gpu_check: no GPU (Paddle {paddle.__version__} is built without CUDA): nothing to check"
    ]


def test_dry_run_lists_every_check_and_its_commands():
    proc = run_check("--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(
        "gpu_check --dry-run: 44 checks"
    )  # 5 configs x 8, amp timing, 3 on 2 GPUs
    for config in gpu_check.CONFIGS:
        for amp in ("off", "fp16", "bf16"):
            assert f"train {config} amp={amp}\n" in out
        for check in ("export", "predictor-cpu", "predictor-gpu", "infer", "resume"):
            assert f"{check} {config}" in out
        assert f"tools/train.py -c configs/{config}.yaml -o train.max_steps=50" in out
    assert "train.amp=fp16" in out and "train.amp=bf16" in out
    assert "train.amp=off" not in out  # the default: YAML would read `off` as false
    assert "train.deterministic=true --resume auto" in out
    assert (
        "tools/export_model.py --checkpoint <workdir>/dcgan_mnist/amp-off/checkpoints/latest" in out
    )
    assert "tools/infer.py --model_dir <workdir>/acgan_mnist/export --seeds 0-7" in out
    assert "amp white list conv2d_transpose" in out
    # the 2-GPU checks are listed even here, with what they need
    assert "2gpu train dcgan_mnist sync_bn  [needs 2 GPUs]" in out
    assert "python -m paddle.distributed.launch --gpus 0,1" in out
    assert "distributed.sync_bn=true" in out and "distributed.sync_bn=false" in out
    assert "--role rank_probe" in out
    assert "2gpu ranks: SyncBatchNorm statistics" in out


def test_dry_run_quick_and_bad_steps():
    proc = run_check("--dry-run", "--quick", "--steps", "10", "--cifar_root", "/data/c10")
    assert proc.returncode == 0, proc.stderr
    assert "train dcgan_mnist amp" not in proc.stdout
    assert "train dcgan_cifar10 amp" not in proc.stdout
    assert "train dcgan_cifar10_32 amp=off" in proc.stdout
    assert "data.root=/data/c10" in proc.stdout and "synthetic" not in proc.stdout
    assert "10 steps straight vs 5 + --resume auto + 5" in proc.stdout
    odd = run_check("--dry-run", "--steps", "7")
    assert odd.returncode == 2 and "--steps must be an even number" in odd.stderr


def test_rank_probe_under_the_launcher_saves_each_ranks_nets(tmp_path):
    """The probe the 2-GPU checks launch, run on 2 CPU processes (gloo, no SyncBatchNorm): each
    rank saves its nets; the weights agree and the BatchNorm statistics do not (the control)."""
    out = tmp_path / "probe"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2"]
    cmd += ["--log_dir", str(tmp_path / "log"), "bench/gpu_check.py", "--role", "rank_probe"]
    cmd += [str(out), "-c", "configs/dcgan_mnist.yaml", "-o", "train.max_steps=2"]
    cmd += ["train.device=cpu", "data.download=false", f"train.output_dir={tmp_path / 'run'}"]
    cmd += ["train.threads=1", "model.ngf=8", "model.ndf=8", "train.batch_size=8"]
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=tool_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ranks = gpu_check._load_ranks(out)
    is_stat = gpu_check.is_batchnorm_statistic
    weights = [{k: v for k, v in r.items() if not is_stat(k)} for r in ranks]
    stats = [{k: v for k, v in r.items() if is_stat(k)} for r in ranks]
    assert any(k.startswith("netG/") for k in weights[0]) and len(stats[0]) >= 4
    assert judge_equal("w", compare_arrays(*weights), 1e-6, "weights").status == "PASS"
    control = compare_arrays(*stats)
    assert not control.problems and control.max_abs_diff > 1e-6
    assert judge_sync_bn("bn", Comparison(0.0, "", control.arrays), control).status == "PASS"
