"""What several test files share besides fixtures (those live in conftest.py): where the repo is,
how tools run as subprocesses, tiny configs, tensor comparisons, and the cases that a unit test
checks in-process and an end-to-end test checks again through a tool.

Imported as `from helpers import ...` (tests/conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import paddle

from paddlegan_lite.config import DataConfig, load_config

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent


# ---------------------------------------------------------------------- tools as subprocesses
def tool_env() -> dict:
    """Environment for running tools as subprocesses, with the repo importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_train(config, *overrides, args=(), timeout=240) -> subprocess.CompletedProcess:
    """`python tools/train.py -c config [-o overrides...] [args...]` from the repo root, as a user
    runs it; output captured as text."""
    cmd = [sys.executable, "tools/train.py", "-c", str(config)]
    if overrides:
        cmd += ["-o", *overrides]
    return subprocess.run(
        [*cmd, *args], cwd=REPO_ROOT, env=tool_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


# ---------------------------------------------------------------------- tiny configs
TINY = {  # the shipped configs at tiny widths: the layers are the real ones
    "mlp_gan_mnist": ["model.hidden=32"],
    "dcgan_mnist": ["model.ngf=8", "model.ndf=8", "model.image_size=32"],
    "acgan_mnist": ["model.ngf=8", "model.ndf=4"],
    # the conditional SNGAN (projection D) on the gray digits
    "sngan_cifar10_cond": ["model.ngf=8", "model.ndf=8", "data.name=mnist", "model.channels=1"],
    "dcgan_cifar10_32_cond": ["model.ngf=8", "model.ndf=8", "data.name=mnist", "model.channels=1"],
}


def tiny_cfg(name, mnist_root, out, *extra):
    """The shipped config `name` at tiny widths, training on `mnist_root` into `out` (batch 8, a
    log row every 2 steps, samples and checkpoints only at the end of short runs); `extra`
    overrides come last and win."""
    return load_config(
        REPO_ROOT / "configs" / f"{name}.yaml",
        TINY[name]
        + [
            f"data.root={mnist_root}",
            "data.download=false",
            f"train.output_dir={out}",
            "train.batch_size=8",  # 40 images: 5 steps per epoch, so runs cross epochs
            "train.log_interval=2",
            "train.sample_interval=100",
            "train.save_interval=100",
            *extra,
        ],
    )


def mnist_cfg(root, download=False) -> DataConfig:
    return DataConfig(name="mnist", root=str(root), download=download)


def cifar_cfg(root, download=False) -> DataConfig:
    return DataConfig(name="cifar10", root=str(root), download=download)


# ---------------------------------------------------------------------- faults
class Killed(BaseException):
    """Stands for SIGKILL: nothing after the raise runs, no `except Exception` sees it."""


def pickle_payload(marker) -> bytes:
    """A pickle that creates `marker` when unpickled: what a hostile weight file would do."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"netG": Payload()})


# ---------------------------------------------------------------------- comparing tensors
def assert_close(actual, expected, rtol=1e-4):
    """Two-sided: every element within rtol of the expected tensor's scale."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = float(np.abs(expected).max()) or 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def outputs_and_grads(fn, inputs, params, seed=0):
    """fn(*inputs), and the gradients of a fixed random projection of it for inputs + params."""
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    rng = np.random.default_rng(seed)
    loss = sum(
        (o * paddle.to_tensor(rng.standard_normal(o.shape).astype("float32"))).sum() for o in outs
    )
    wrt = [t for t in [*inputs, *params] if not t.stop_gradient]
    grads = paddle.grad(loss, wrt)
    return [o.numpy() for o in outs], [g.numpy() for g in grads]


def leaf(shape, seed):
    x = paddle.to_tensor(np.random.default_rng(seed).standard_normal(shape).astype("float32"))
    x.stop_gradient = False
    return x


# ---------------------------------------------------------------------- hostile configs
# Checked in-process (unit/test_config.py) and through tools/train.py (e2e/test_hostile_config.py)
TAGS = [
    '!!python/object/apply:os.system ["touch {marker}"]',
    '!!python/object/new:subprocess.Popen [["touch", "{marker}"]]',
    "!!python/name:os.system",
]
OVERRIDES = [
    ("seed=__import__('os').system('touch {marker}')", "'seed' must be int"),
    ('model.nz=!!python/object/apply:os.system ["touch {marker}"]', "'model.nz' must be int"),
    ('train.device=!!python/object/apply:os.system ["touch {marker}"]', "'train.device'"),
    ("train.epochs=[1, {{a: 2}}]", "'train.epochs' must be int"),
    ("train.max_steps=$(touch {marker})", "'train.max_steps' must be int"),
]


def hostile_config(tmp_path, tag: str, in_base: bool):
    """A config whose seed is a python-tagged YAML node, directly or through `_base_`."""
    hostile = f"seed: {tag.format(marker=tmp_path / 'pwned')}\n"
    (tmp_path / "base.yaml").write_text(hostile if in_base else "seed: 1\n")
    config = tmp_path / "run.yaml"
    config.write_text("_base_: base.yaml\n" if in_base else hostile)
    return config


def config_with_problem(tmp_path, problem: str):
    config = {"missing": tmp_path / "nope.yaml", "a folder": tmp_path}.get(problem)
    if config is None:
        config = tmp_path / "a.yaml"
        config.write_text("_base_: b.yaml\n")
        if problem == "_base_ loop":
            (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    return config


# ---------------------------------------------------------------------- the generation service
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_service(model_dir: Path, *args: str, timeout: float = 120):
    """tools/serve.py as a subprocess on a free 127.0.0.1 port: yields (base url, log lines)."""
    port = free_port()
    cmd = [sys.executable, "tools/serve.py", "--model_dir", str(model_dir), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                reader.join(5)
                raise AssertionError(f"tools/serve.py exited {proc.returncode}: {lines[-20:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"no answer from {url} in {timeout} s: {lines[-20:]}"
                    ) from None
                time.sleep(0.2)
        yield url, lines
    finally:
        proc.terminate()  # uvicorn shuts down cleanly on SIGTERM
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)
