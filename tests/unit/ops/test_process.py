"""The CPU process set-up (ops/process.py): MKL's fast path only where the CPU has it, a user's own
value wins, malloc settings a user made are left alone; importing the package leaves the process
alone, and every tool sets it up before Paddle loads (fresh Python processes)."""

import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from helpers import REPO_ROOT, assert_close, tool_env

from paddlegan_lite.ops import process

AMD_ZEN4 = (
    "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma "
    "avx512f avx512dq avx512cd avx512bw avx512vl"
)
AMD_ZEN3 = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma"
AMD_OLD = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx"
AMD_PARTIAL_512 = "vendor_id\t: AuthenticAMD\nflags\t\t: avx2 fma avx512f avx512cd"
INTEL = "vendor_id\t: GenuineIntel\nflags\t\t: avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl"


@pytest.mark.parametrize(
    "cpuinfo, expected",
    [(AMD_ZEN4, "7"), (AMD_ZEN3, "5"), (AMD_OLD, None), (AMD_PARTIAL_512, "5"), (INTEL, None),
     ("", None)],
)  # fmt: skip
def test_mkl_cpu_type_only_unlocks_what_the_cpu_has(cpuinfo, expected):
    assert process.mkl_cpu_type(cpuinfo) == expected


def run_python(code: str, **env) -> str:
    full_env = {k: v for k, v in tool_env().items() if k != "MKL_DEBUG_CPU_TYPE"}
    full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_the_process_set_up_sets_the_mkl_path_and_a_user_value_wins():
    code = (
        "import os; from paddlegan_lite.ops.process import configure_process_env; "
        "configure_process_env(); print(os.environ.get('MKL_DEBUG_CPU_TYPE', 'unset'))"
    )
    assert run_python(code) == (process.mkl_cpu_type() or "unset")
    assert run_python(code, MKL_DEBUG_CPU_TYPE="4") == "4"


def test_matmul_on_the_chosen_mkl_path_is_correct():
    """The AVX-512/AVX2 MKL path this process runs (set up by conftest) computes right."""
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((300, 200)), rng.standard_normal((200, 100))
    got = paddle.matmul(paddle.to_tensor(a, "float32"), paddle.to_tensor(b, "float32")).numpy()
    assert_close(got, a @ b, rtol=1e-5)


def test_keep_freed_memory_steps_aside_for_user_malloc_settings(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert process.keep_freed_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_applies_on_glibc(monkeypatch):
    for name in process.MALLOC_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert process.keep_freed_memory() is (os.confstr("CS_GNU_LIBC_VERSION") is not None)


# ---------------------------------------------------------------------- in a fresh process
KEYS = ("MKL_DEBUG_CPU_TYPE", "GLOG_minloglevel")  # what configure_process_env sets

IMPORT_PACKAGE = """
import json, os, sys, warnings
environ, filters = dict(os.environ), list(warnings.filters)
import paddlegan_lite, paddlegan_lite.ops
light = {"environ": dict(os.environ) == environ, "filters": warnings.filters == filters,
         "paddle": "paddle" in sys.modules}
import paddlegan_lite.models, paddlegan_lite.ops.layers  # these load Paddle
keys = ("MKL_DEBUG_CPU_TYPE", "GLOG_minloglevel")
print(json.dumps({**light, "set": [k for k in keys if k in os.environ]}))
"""

RUN_TOOL_TOP = """
import json, os, runpy, sys
runpy.run_path(sys.argv[1], run_name="tool")  # the tool's top, not its main()
print(json.dumps({k: os.environ.get(k) for k in ("MKL_DEBUG_CPU_TYPE", "GLOG_minloglevel")}))
"""


def run_script(code: str, *args) -> dict:
    """Run python code in a fresh process without the variables the set-up sets (conftest set
    them in this one); its last line of output, read as JSON."""
    env = {k: v for k, v in tool_env().items() if k not in KEYS}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # imports Paddle in a fresh process
def test_importing_the_package_leaves_the_process_alone():
    got = run_script(IMPORT_PACKAGE)
    assert got == {"environ": True, "filters": True, "paddle": False, "set": []}


@pytest.mark.parametrize(
    "tool", ["train", "export_model", "infer", "serve", "eval", "convert_weights"]
)
def test_a_tool_sets_up_the_process_before_paddle_loads(tool):
    """The top of each tool sets the variables, before Paddle loads: after it, the set-up does
    nothing (MKL and glog read them when Paddle loads)."""
    got = run_script(RUN_TOOL_TOP, str(REPO_ROOT / "tools" / f"{tool}.py"))
    assert got == {"MKL_DEBUG_CPU_TYPE": process.mkl_cpu_type(), "GLOG_minloglevel": "2"}
