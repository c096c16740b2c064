"""Process set-up that must happen before Paddle is imported: CPU math flags and warning filters.

Paddle 3.3.1 ships an MKL that takes a slow generic path on AMD CPUs unless told otherwise;
measured on a 2-core EPYC, `MKL_DEBUG_CPU_TYPE=5` made a DCGAN step 2.4-4x faster. Users get
that without knowing it; any value they set themselves wins.
"""

from __future__ import annotations

import os
import sys
import warnings


def cpu_vendor() -> str:
    """'amd', 'intel' or '' from /proc/cpuinfo (Linux); '' where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("vendor_id"):
                    vendor = line.split(":", 1)[1].strip()
                    return {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(vendor, "")
    except OSError:
        pass
    return ""


def configure_process_env() -> None:
    """Set CPU math and logging variables for Paddle; a no-op once Paddle is imported."""
    if "paddle" in sys.modules:
        return  # MKL reads its variables when Paddle loads; too late to help
    if cpu_vendor() == "amd":
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")  # take MKL's AVX2 path on AMD
    os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ info lines are not for users
    quiet_paddle_warnings()


def quiet_paddle_warnings() -> None:
    """Hide Paddle warnings that say nothing about the user's run."""
    # Printed on every `import paddle` when ccache is missing: about building C++ extensions.
    warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
    # Printed by every BatchNorm in training mode: a note about Paddle's own behaviour change.
    warnings.filterwarnings(
        "ignore", message="When training, we now always track global mean", category=UserWarning
    )


def select_device(device: str) -> str:
    """Resolve 'auto' | 'cpu' | 'gpu' | 'gpu:N' and make it Paddle's current place."""
    import paddle

    from paddlegan_lite.errors import UserError

    has_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if device == "auto":
        device = "gpu" if has_gpu else "cpu"
    if device.startswith("gpu") and not has_gpu:
        raise UserError(
            f"train.device={device} but this Paddle build has no usable CUDA device "
            "(install paddlepaddle-gpu, or use train.device=cpu)"
        )
    paddle.set_device(device)
    return device
