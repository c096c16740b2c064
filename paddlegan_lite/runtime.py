"""Where Paddle runs: the device, CPU threads, deterministic kernels, and what the CPU is.

The process set-up that must happen before Paddle loads (MKL's path, allocator, quiet logs) is
paddlegan_lite/ops/process.py, called by the tools. This module imports no Paddle at the top.
"""

from __future__ import annotations

import math
import os
import sys


def read_cpuinfo() -> str:
    """/proc/cpuinfo's first processor block ('' where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return fh.read().split("\n\n", 1)[0]
    except OSError:
        return ""


def cpu_model(cpuinfo: str | None = None) -> str:
    """The processor's model name, as benchmarks quote it with every speed figure."""
    for line in (read_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def cpu_vendor(cpuinfo: str | None = None) -> str:
    """'amd', 'intel' or '' from /proc/cpuinfo text (Linux); '' where it cannot be read."""
    for line in (read_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("vendor_id"):
            vendor = line.split(":", 1)[1].strip()
            return {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(vendor, "")
    return ""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    for line in (read_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _omp_threads_from_user() -> str | None:
    """OMP_NUM_THREADS as the user set it. `import paddle` sets "1" where it is unset, so this is
    read when this module loads (the tools' ops.process.configure_process_env imports it before
    Paddle); after Paddle, a "1" is taken as Paddle's, not the user's."""
    value = os.environ.get("OMP_NUM_THREADS")
    return None if "paddle" in sys.modules and value == "1" else value


_user_omp_threads = _omp_threads_from_user()


def physical_cores(cpuinfo: str | None = None, allowed: set[int] | None = None) -> int:
    """Physical cores this process may run on: one per (package, core) pair among the CPUs of
    its affinity mask (hyper-threads share a core's FPUs: a second GEMM thread on them only
    waits), capped by a cgroup CPU quota. PyTorch's default intra-op thread count is the same."""
    if allowed is None:
        try:
            allowed = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            allowed = set(range(os.cpu_count() or 1))
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            cpuinfo = ""
    cores = set()
    for block in cpuinfo.split("\n\n"):
        fields = {
            key.strip(): value.strip()
            for key, _, value in (line.partition(":") for line in block.splitlines())
        }
        cpu = fields.get("processor", "")
        if cpu.isdigit() and int(cpu) in allowed:
            cores.add((fields.get("physical id"), fields.get("core id", cpu)))
    count = len(cores) or len(allowed)
    quota = cgroup_cpu_quota()
    return max(1, min(count, quota) if quota else count)


def cgroup_cpu_quota() -> int | None:
    """CPUs a cgroup v2 `cpu.max` quota allows (rounded up), or None where there is none."""
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="utf-8") as fh:
            quota, period = fh.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def local_processes() -> int:
    """Training processes on this machine (paddle.distributed.launch's PADDLE_LOCAL_SIZE)."""
    try:
        return max(1, int(os.environ.get("PADDLE_LOCAL_SIZE", "1")))
    except ValueError:
        return 1


def cpu_threads(requested: int = 0) -> tuple[int, str]:
    """(threads, where the number comes from) for Paddle's CPU math in this process.

    `requested` > 0 (train.threads) wins; then an OMP_NUM_THREADS the user exported; otherwise
    every physical core, shared out among the processes of a data-parallel launch. Paddle's own
    default is one thread, which leaves a user's other cores idle.
    """
    if requested > 0:
        return requested, "train.threads"
    if _user_omp_threads is not None:
        try:
            return max(1, int(_user_omp_threads)), "OMP_NUM_THREADS"
        except ValueError:
            pass  # Paddle treats a non-number as 1; so do we, by falling through
    cores, processes = physical_cores(), local_processes()
    if processes > 1:
        return max(1, cores // processes), f"{cores} physical cores / {processes} processes"
    return cores, "all physical cores"


def use_cpu_threads(requested: int = 0) -> tuple[int, str]:
    """Give Paddle's CPU math (MKL, OpenMP and so the oneDNN convolutions, which run on the same
    libiomp5) the thread count of `cpu_threads`; returns it. Paddle must be imported."""
    from paddle.base import core

    threads, why = cpu_threads(requested)
    core.set_num_threads(threads)
    return threads, why


# Paddle flags that pick deterministic GPU kernels (defined in CUDA builds only, paddle/common/
# flags.cc): cuDNN convolution algorithms without atomics; the embedding gradient's sorted path.
DETERMINISTIC_FLAGS = {"FLAGS_cudnn_deterministic": True, "FLAGS_embedding_deterministic": 1}


def use_deterministic_kernels() -> dict:
    """train.deterministic: set the flags of DETERMINISTIC_FLAGS this Paddle build has; returns
    what was set. CPU kernels need none: with a fixed thread count they already repeat exactly."""
    import paddle
    from paddle.base import core

    known = set(core.globals().keys())
    flags = {name: value for name, value in DETERMINISTIC_FLAGS.items() if name in known}
    if flags:
        paddle.set_flags(flags)
    return flags


def gpu_available() -> bool:
    """Whether this Paddle build has CUDA and sees a device."""
    import paddle

    return paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def select_device(device: str) -> str:
    """Resolve 'auto' | 'cpu' | 'gpu' | 'gpu:N' and make it Paddle's current place."""
    import paddle

    from paddlegan_lite.errors import UserError

    has_gpu = gpu_available()
    if device == "auto":
        device = "gpu" if has_gpu else "cpu"
    if device.startswith("gpu") and not has_gpu:
        raise UserError(
            f"train.device={device} but this Paddle build has no usable CUDA device "
            "(install paddlepaddle-gpu, or use train.device=cpu)"
        )
    paddle.set_device(device)
    return device
