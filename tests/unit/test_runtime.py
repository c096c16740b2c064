"""The run's device and CPU threads (runtime.py), right on the hardware users have: physical cores
not hyperthreads, the thread count Paddle and oneDNN really use (read back in fresh processes),
the device on a CPU build, and the deterministic-kernel flags a CUDA build would get (simulated)."""

import json
import subprocess
import sys

import paddle
import pytest
from helpers import tool_env

from paddlegan_lite import runtime
from paddlegan_lite.errors import UserError

HYPERTHREADED_CPUINFO = "\n\n".join(
    f"processor\t: {cpu}\nphysical id\t: 0\ncore id\t\t: {cpu % 2}\nsiblings\t: 4\ncpu cores\t: 2"
    for cpu in range(4)
)
TWO_SOCKETS_CPUINFO = "\n\n".join(
    f"processor\t: {cpu}\nphysical id\t: {cpu // 2}\ncore id\t\t: {cpu % 2}" for cpu in range(4)
)


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


@pytest.mark.slow  # a fresh Python process per case, Paddle imported
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


def test_select_device_on_a_cpu_build():
    if paddle.is_compiled_with_cuda():
        pytest.skip("CPU-only behaviour")
    assert runtime.select_device("auto") == "cpu"
    assert runtime.select_device("cpu") == "cpu"
    with pytest.raises(UserError, match="no usable CUDA device"):
        runtime.select_device("gpu:0")
