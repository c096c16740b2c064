"""Process set-up for CPU speed that must happen before Paddle is imported: MKL's fast path on AMD
processors, the allocator, quiet logs and warnings.

Importing paddlegan_lite changes none of this: each entry point (tools/*.py, the benchmarks, the
tests' conftest) calls `configure_process_env()` first, before anything imports Paddle. The
speed-up it brings is measured in bench/RESULTS.md. Any value the user set wins.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

# Importing runtime also notes the user's OMP_NUM_THREADS before `import paddle` overwrites it
# (runtime.cpu_threads reads it later).
from paddlegan_lite.runtime import cpu_flags, cpu_vendor, read_cpuinfo

# CPU flags MKL's AVX-512 ("type 7", Skylake-SP) code needs; Zen 4/5 EPYCs have them all
AVX512_FLAGS = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")
# glibc's mallopt() parameters and the variables by which a user takes over malloc tuning
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 1 << 30
MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def configure_process_env() -> None:
    """Set CPU math, allocator and logging options for Paddle; a no-op once Paddle is imported.

    Threads are set later, by `runtime.use_cpu_threads`, once Paddle is loaded.
    """
    if "paddle" in sys.modules:
        return  # MKL reads its variables when Paddle loads; too late to help
    cpu_type = mkl_cpu_type()
    if cpu_type is not None:
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", cpu_type)
    keep_freed_memory()
    os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ info lines are not for users
    quiet_paddle_warnings()


def mkl_cpu_type(cpuinfo: str | None = None) -> str | None:
    """The MKL_DEBUG_CPU_TYPE that unlocks MKL's fast path on this AMD CPU, or None.

    Paddle's MKL gives AMD CPUs its generic SSE code unless told otherwise. "5" is its AVX2 path;
    "7" its AVX-512 one, only safe where the CPU has every AVX-512 subset MKL uses (otherwise it
    would stop on an illegal instruction). Each step up roughly doubles float32 GEMM speed
    (bench/RESULTS.md#measurements-behind-the-code).
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
    working set again; keeping them makes large elementwise ops several times faster for a small
    change in peak memory (bench/RESULTS.md#measurements-behind-the-code). Skipped where the user
    tunes malloc through the environment, and off glibc. Returns whether it applied.
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


def quiet_paddle_warnings() -> None:
    """Hide Paddle warnings that say nothing about the user's run."""
    # Printed on every `import paddle` when ccache is missing: about building C++ extensions.
    warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
    # Printed by every BatchNorm in training mode: a note about Paddle's own behaviour change.
    warnings.filterwarnings(
        "ignore", message="When training, we now always track global mean", category=UserWarning
    )
