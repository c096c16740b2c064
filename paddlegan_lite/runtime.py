"""Process set-up that must happen before Paddle is imported: CPU math path, allocator, warnings.

Measured on a 2-core AMD EPYC (bench/RESULTS.md), the MKL path and the allocator settings below
make CPU training steps 1.3-1.7x faster. Users get that without knowing it; any value they set wins.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import warnings

# CPU flags MKL's AVX-512 ("type 7", Skylake-SP) code needs; Zen 4/5 EPYCs have them all
AVX512_FLAGS = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")
# glibc's mallopt() parameters and the variables by which a user takes over malloc tuning
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 1 << 30
MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


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


def mkl_cpu_type(cpuinfo: str | None = None) -> str | None:
    """The MKL_DEBUG_CPU_TYPE that unlocks MKL's fast path on this AMD CPU, or None.

    Paddle's MKL gives AMD CPUs its generic SSE code unless told otherwise. "5" is its AVX2 path;
    "7" its AVX-512 one, only safe where the CPU has every AVX-512 subset MKL uses (otherwise it
    would stop on an illegal instruction). Measured on a Zen EPYC: 2048^2 SGEMM 106 -> 201 GFLOP/s
    from 5 to 7, and a DCGAN step's convolutions 1.4x faster.
    """
    cpuinfo = read_cpuinfo() if cpuinfo is None else cpuinfo
    if cpu_vendor(cpuinfo) != "amd":
        return None
    flags = cpu_flags(cpuinfo)
    if all(flag in flags for flag in AVX512_FLAGS):
        return "7"
    if {"avx2", "fma"} <= flags:
        return "5"
    return None


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse instead of returning them to the OS.

    Paddle's CPU allocator hands every new activation and gradient to malloc; by default glibc
    maps blocks over 128 KiB fresh and unmaps them on free, so each step page-faults its whole
    working set again. Measured: an elementwise add of 3.2 M floats 6.1 -> 0.8 ms, an AC-GAN step
    12% less CPU time; peak RSS -3% to +14% by config. Skipped where the user tunes malloc through
    the environment, and off glibc. Returns whether it applied.
    """
    if any(name in os.environ for name in MALLOC_VARIABLES) or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # both at once: setting either alone turns off glibc's adaptive threshold and faults more
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES)
    )


def _omp_threads_from_user() -> str | None:
    """OMP_NUM_THREADS as the user set it. `import paddle` sets "1" where it is unset, so this is
    read when the package loads; after Paddle, a "1" is taken as Paddle's, not the user's."""
    value = os.environ.get("OMP_NUM_THREADS")
    return None if "paddle" in sys.modules and value == "1" else value


_user_omp_threads = _omp_threads_from_user()


def configure_process_env() -> None:
    """Set CPU math, allocator and logging options for Paddle; a no-op once Paddle is imported.

    Threads are set later, by `use_cpu_threads`, once Paddle is loaded.
    """
    if "paddle" in sys.modules:
        return  # MKL reads its variables when Paddle loads; too late to help
    cpu_type = mkl_cpu_type()
    if cpu_type is not None:
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", cpu_type)
    keep_freed_memory()
    os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ info lines are not for users
    quiet_paddle_warnings()


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


def quiet_paddle_warnings() -> None:
    """Hide Paddle warnings that say nothing about the user's run."""
    # Printed on every `import paddle` when ccache is missing: about building C++ extensions.
    warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
    # Printed by every BatchNorm in training mode: a note about Paddle's own behaviour change.
    warnings.filterwarnings(
        "ignore", message="When training, we now always track global mean", category=UserWarning
    )


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
