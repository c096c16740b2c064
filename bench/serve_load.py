"""Load on the generation service: images/s and latency with and without a batch window.

  python bench/serve_load.py [--model_dir inference/acgan_mnist] [--requests 200] [--clients 16]
                             [--windows 0 5] [--threads 0]

For each batch window, tools/serve.py starts as a subprocess on a free 127.0.0.1 port (as users
run it, `--batch_window_ms W`), gets a warm-up round, then N one-image requests
(`GET /generate?seed=i&label=i%classes`) from M client threads, each on a kept-alive connection.
Latency is one request's wall time at the client; images/s is N over the round's wall time;
predictor calls are the service's own count (/health) for the round: fewer calls than requests
means requests shared a call. Every answer must be a 200 PNG and each seed's bytes the same under
every window (batching does not change an image). Without --model_dir, the full-width AC-GAN
config is trained for a few steps on the bundled digits and exported into a temp folder (speed
does not depend on how well it is trained). The client threads share the machine's cores with
the service, as a local client would. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from paddlegan_lite.runtime import cpu_model  # noqa: E402  (stdlib only: no Paddle here)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_dir", default="", help="exported model (default: make one)")
    parser.add_argument("--requests", type=int, default=200, help="measured requests per window")
    parser.add_argument("--clients", type=int, default=16, help="client threads")
    parser.add_argument(
        "--windows", type=float, nargs="+", default=[0.0, 5.0], help="--batch_window_ms values"
    )
    parser.add_argument("--threads", type=int, default=0, help="tools/serve.py --threads")
    parser.add_argument("--train_steps", type=int, default=20, help="steps of the made model")
    args = parser.parse_args()
    if args.requests < 1 or args.clients < 1:
        parser.error("--requests and --clients must be >= 1")

    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        work = Path(tmp)
        model_dir = Path(args.model_dir) if args.model_dir else make_model(work, args.train_steps)
        load_before = os.getloadavg()[0]
        rows, answers = [], {}
        for window in args.windows:
            with running_service(model_dir, work, window, args.threads) as url:
                rows.append(measure(url, window, args, answers))
        load_after = os.getloadavg()[0]

    print(f"`{shlex.join([sys.executable, *sys.argv])}`\n")
    print(
        f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; service: 1 worker, "
        f"--threads {args.threads} (0: one math thread); {args.clients} client "
        f"threads in the bench process; Python {platform.python_version()}; "
        f"1-min load average {load_before:.1f} before, {load_after:.1f} after; "
        f"model {model_dir.name if args.model_dir else 'acgan_mnist (full width, made here)'}\n"
    )
    print("| batch window ms | requests | images/s | p50 ms | p90 ms | p99 ms | predictor calls |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print("| {:g} | {} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {} |".format(*row))
    return 0


def make_model(work: Path, steps: int) -> Path:
    """acgan_mnist trained `steps` steps on the bundled digits, exported: the model folder."""
    run, model = work / "run", work / "acgan_mnist_inference"
    overrides = [
        f"data.root={work / 'no_mnist_here'}",  # missing, no download: the bundled digits
        "data.download=false",
        f"train.output_dir={run}",
        f"train.max_steps={steps}",
        "train.batch_size=64",
        f"train.log_interval={steps}",
        f"train.sample_interval={steps}",
        f"train.save_interval={steps}",
    ]
    config = str(REPO_ROOT / "configs" / "acgan_mnist.yaml")
    commands = [
        ["tools/train.py", "-c", config, "-o", *overrides],
        ["tools/export_model.py", "-c", config, "--checkpoint", str(run / "checkpoints/latest")]
        + ["--output_dir", str(model)],
    ]
    for command in commands:
        proc = subprocess.run(
            [sys.executable, *command], cwd=REPO_ROOT, capture_output=True, text=True
        )
        if proc.returncode != 0:
            sys.exit(f"{shlex.join(command)} failed:\n{proc.stderr[-3000:]}")
    return model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_service(model_dir: Path, work: Path, window_ms: float, threads: int, timeout=180):
    """tools/serve.py on a free loopback port until the block ends: yields its base url."""
    port = free_port()
    cmd = [sys.executable, "tools/serve.py", "--model_dir", str(model_dir), "--port", str(port)]
    cmd += ["--batch_window_ms", str(window_ms), "--threads", str(threads)]
    log_path = work / f"serve_{window_ms:g}ms.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log_tail = log_path.read_text()[-3000:]
                sys.exit(f"tools/serve.py exited {proc.returncode}:\n{log_tail}")
            try:
                get_json(url, "/health")
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"tools/serve.py did not answer in {timeout} s")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get_json(url: str, path: str) -> dict:
    connection = http.client.HTTPConnection(url, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return json.loads(response.read())
    finally:
        connection.close()


def measure(url: str, window: float, args, answers: dict) -> tuple:
    """One window's row; each seed's PNG bytes go into answers, which must agree across windows."""
    classes = get_json(url, "/info")["infer_cfg"].get("num_classes") or 0
    local = threading.local()

    def fetch(seed: int) -> tuple[int, float, bytes]:
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection(url, timeout=120)
        path = f"/generate?seed={seed}" + (f"&label={seed % classes}" if classes else "")
        start = time.perf_counter()
        local.connection.request("GET", path)
        response = local.connection.getresponse()
        body = response.read()
        seconds = time.perf_counter() - start
        if response.status != 200 or not body.startswith(PNG_SIGNATURE):
            raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")
        return seed, seconds, body

    with ThreadPoolExecutor(args.clients) as pool:
        # warm-up: connections opened, the predictor's first calls at a few batch sizes
        for _ in range(2):
            list(pool.map(fetch, range(args.clients)))
        calls_before = get_json(url, "/health")["predictor_calls"]
        start = time.perf_counter()
        results = list(pool.map(fetch, range(args.requests)))
        wall = time.perf_counter() - start
    calls = get_json(url, "/health")["predictor_calls"] - calls_before
    for seed, _, body in results:
        if answers.setdefault(seed, body) != body:
            sys.exit(f"seed {seed}: different bytes under batch window {window:g} ms")
    latencies = sorted(1000 * seconds for _, seconds, _ in results)
    p50, p90, p99 = (percentile(latencies, q) for q in (50, 90, 99))
    return window, args.requests, args.requests / wall, p50, p90, p99, calls


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(q) - 1]


if __name__ == "__main__":
    sys.exit(main())
