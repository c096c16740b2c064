"""The generation service (paddlegan_lite/serve.py, tools/serve.py) on real exported models:
endpoints through FastAPI's TestClient, and real uvicorn processes on a free loopback port
(unit/test_serve.py tests the batcher on its own)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import REPO_ROOT, running_service
from PIL import Image

pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install -e .[serve]")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the serve extra)")

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2; httpx 0.28 works the same here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from paddlegan_lite.inference import Generator  # noqa: E402
from paddlegan_lite.serve import ServeOptions, Service, create_app  # noqa: E402

SERVED = ("mlp_gan_mnist", "acgan_mnist")  # unconditional, conditional (10 classes)


@pytest.fixture(scope="module")
def clients(exported_models):
    """name -> TestClient of a running app (its predictor thread started by the lifespan)."""
    with contextlib.ExitStack() as stack:
        yield {
            name: stack.enter_context(
                TestClient(create_app(Service(ServeOptions(str(exported_models[name])))))
            )
            for name in SERVED
        }


@pytest.fixture(scope="module")
def infer_tool_files(exported_models, tmp_path_factory):
    """tools/infer.py run as users run it: AC-GAN seeds 0-2 and 7 with every label, and a grid."""
    out = tmp_path_factory.mktemp("infer_tool")
    cmd = [sys.executable, "tools/infer.py", "--model_dir", str(exported_models["acgan_mnist"])]
    cmd += ["--seeds", "0-2,7", "--labels", "0-9", "--output_dir", str(out / "files")]
    cmd += ["--grid", str(out / "grid.png")]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def decode_png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


# ---------------------------------------------------------------------- endpoints
def test_one_seed_is_the_infer_tool_file(clients, infer_tool_files):
    """Same seed, same bytes: the service's PNG for seed 7, label 3 is tools/infer.py's file."""
    response = clients["acgan_mnist"].get("/generate?seed=7&label=3")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    expected = (infer_tool_files / "files" / "seed0007_label3.png").read_bytes()
    assert response.content == expected
    other = clients["acgan_mnist"].get("/generate?seed=7&label=4").content
    assert other != expected  # the label reaches the model


def test_grid_is_the_infer_tool_grid(clients, infer_tool_files):
    response = clients["acgan_mnist"].get("/grid?seeds=0-2,7")  # all classes: one row each
    assert response.status_code == 200
    assert response.content == (infer_tool_files / "grid.png").read_bytes()
    one_class = decode_png(clients["acgan_mnist"].get("/grid?seeds=0-3&labels=5").content)
    assert one_class.shape == (2 + 30, 2 + 4 * 30)  # one row of 4 cells of 28 + 2 padding
    square = decode_png(clients["acgan_mnist"].get("/grid?seeds=0-3&labels=5&nrow=2").content)
    assert square.shape == (2 + 2 * 30, 2 + 2 * 30)
    np.testing.assert_array_equal(square[32:60, 2:30], one_class[2:30, 62:90])  # seed 2


def test_unconditional_png_matches_the_generator(clients, exported_models):
    response = clients["mlp_gan_mnist"].get("/generate?seed=11")
    assert response.status_code == 200
    image = decode_png(response.content)
    assert Image.open(io.BytesIO(response.content)).mode == "L"  # 1 channel in infer_cfg
    expected = Generator(exported_models["mlp_gan_mnist"]).generate([11])[0, :, :, 0]
    np.testing.assert_array_equal(image, expected)


@pytest.mark.parametrize("fmt", ["png", "uint8"])
def test_json_batch(clients, exported_models, fmt):
    body = {"seeds": [0, 1, 2, 7], "labels": [5, 5, 5, 3], "format": fmt}
    response = clients["acgan_mnist"].post("/generate", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["format"] == fmt and answer["shape"] == [28, 28, 1]
    assert answer["seeds"] == [0, 1, 2, 7] and answer["labels"] == [5, 5, 5, 3]
    if fmt == "png":
        images = np.stack([decode_png(base64.b64decode(s)) for s in answer["images"]])[..., None]
    else:
        raw = [np.frombuffer(base64.b64decode(s), np.uint8) for s in answer["images"]]
        images = np.stack(raw).reshape(-1, *answer["shape"])
    expected = Generator(exported_models["acgan_mnist"]).generate([0, 1, 2, 7], [5, 5, 5, 3])
    np.testing.assert_array_equal(images, expected)
    single = clients["acgan_mnist"].get("/generate?seed=7&label=3").content
    if fmt == "png":
        assert base64.b64decode(answer["images"][3]) == single


def test_json_batch_without_content_type_and_one_label(clients):
    """curl -d sends a form content type: the body is read as JSON whatever the header says."""
    response = clients["acgan_mnist"].post(
        "/generate",
        content=b'{"seeds": [4, 5], "labels": 9}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["labels"] == [9, 9]


def test_walk_is_a_gif_from_seed_a_to_seed_b(clients):
    client = clients["acgan_mnist"]
    response = client.get("/walk?seed_a=3&seed_b=8&steps=5&label=2")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    gif = Image.open(io.BytesIO(response.content))
    assert gif.n_frames == 5 and gif.size == (28, 28)
    ends = [decode_png(client.get(f"/generate?seed={s}&label=2").content) for s in (3, 8)]
    gif.seek(0)
    np.testing.assert_array_equal(np.asarray(gif.convert("L")), ends[0])  # gray is lossless
    gif.seek(4)
    np.testing.assert_array_equal(np.asarray(gif.convert("L")), ends[1])


def test_info_health_and_page(clients, exported_models):
    client = clients["acgan_mnist"]
    info = client.get("/info").json()
    assert info["infer_cfg"]["num_classes"] == 10
    assert info["infer_cfg"]["image_shape"] == [1, 28, 28]
    assert info["limits"]["max_images"] == 256 and info["formats"] == ["png", "uint8"]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "acgan"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="seed"', 'id="seed-slider"', 'id="label"', 'id="grid"', 'id="walk"'):
        assert element in page.text
    # Works offline: nothing is loaded from another host.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)
    assert not re.search(r"@import|url\(", page.text)


# ---------------------------------------------------------------------- bad requests
BIG = "1" * 5000  # more digits than Python's int() takes from text
# fmt: off
BAD_REQUESTS = {
    # name: (model, method, path, body, status, field, words in the message)
    "label out of range": ("acgan", "GET", "/generate?seed=7&label=10", None, 400, "label",
                           "out of range"),
    "label missing (conditional)": ("acgan", "GET", "/generate?seed=7", None, 400, "label",
                                    "is conditional"),
    "label for unconditional": ("mlp", "GET", "/generate?seed=7&label=1", None, 400, "label",
                                "unconditional"),
    "seed not an integer": ("mlp", "GET", "/generate?seed=abc", None, 400, "seed",
                            "must be an integer"),
    "seed a float": ("mlp", "GET", "/generate?seed=1.5", None, 400, "seed", "must be an integer"),
    "seed negative": ("mlp", "GET", "/generate?seed=-1", None, 400, "seed", "out of range"),
    "seed too big": ("mlp", "GET", "/generate?seed=4294967296", None, 400, "seed",
                     "out of range"),
    "seed huge": ("mlp", "GET", f"/generate?seed={BIG}", None, 400, "seed", "must be an integer"),
    "seed missing": ("mlp", "GET", "/generate", None, 400, "seed", "is required"),
    "seed twice": ("mlp", "GET", "/generate?seed=1&seed=2", None, 400, "seed", "more than once"),
    "unknown parameter": ("mlp", "GET", "/generate?seed=1&sed=2", None, 400, "sed",
                          "unknown field"),
    "body not JSON": ("mlp", "POST", "/generate", b"seeds=1", 400, None, "not valid JSON"),
    "body a list": ("mlp", "POST", "/generate", b"[1, 2]", 400, None, "JSON object"),
    "body int too long": ("mlp", "POST", "/generate", f'{{"seeds": [{BIG}]}}'.encode(), 400,
                          None, "not valid JSON"),
    "body too large": ("mlp", "POST", "/generate", b" " * 70000 + b"{}", 413, None, "over"),
    "batch over the limit": ("mlp", "POST", "/generate", {"seeds": list(range(257))}, 400,
                             "seeds", "at most 256"),
    "seeds not a list": ("mlp", "POST", "/generate", {"seeds": 5}, 400, "seeds", "list"),
    "seeds empty": ("mlp", "POST", "/generate", {"seeds": []}, 400, "seeds", "non-empty"),
    "seed a string": ("mlp", "POST", "/generate", {"seeds": [1, "2"]}, 400, "seeds[1]",
                      "must be an integer"),
    "seed a bool": ("mlp", "POST", "/generate", {"seeds": [True]}, 400, "seeds[0]",
                    "must be an integer"),
    "seed a float in JSON": ("mlp", "POST", "/generate", {"seeds": [1.0]}, 400, "seeds[0]",
                             "must be an integer"),
    "seed out of range in JSON": ("mlp", "POST", "/generate", {"seeds": [2**40]}, 400,
                                  "seeds[0]", "out of range"),
    "labels for unconditional": ("mlp", "POST", "/generate", {"seeds": [1], "labels": [None]},
                                 400, "labels", "unconditional"),
    "labels wrong length": ("acgan", "POST", "/generate", {"seeds": [1, 2], "labels": [1]},
                            400, "labels", "one per seed"),
    "label out of range in JSON": ("acgan", "POST", "/generate",
                                   {"seeds": [1, 2], "labels": [1, 10]}, 400, "labels[1]",
                                   "out of range"),
    "labels missing in JSON": ("acgan", "POST", "/generate", {"seeds": [1]}, 400, "labels",
                               "is conditional"),
    "unknown format": ("mlp", "POST", "/generate", {"seeds": [1], "format": "jpeg"}, 400,
                       "format", "must be one of"),
    "unknown key": ("mlp", "POST", "/generate", {"seeds": [1], "seed": 2}, 400, "seed",
                    "unknown field"),
    "grid range too long": ("mlp", "GET", "/grid?seeds=0-4000000000", None, 400, "seeds",
                            "more than 256"),
    "grid seeds x labels": ("acgan", "GET", "/grid?seeds=0-99", None, 400, "seeds",
                            "at most 256"),
    "grid range backwards": ("mlp", "GET", "/grid?seeds=9-3", None, 400, "seeds",
                             "runs backwards"),
    "grid labels out of range": ("acgan", "GET", "/grid?seeds=0&labels=8-10", None, 400,
                                 "labels", "out of range"),
    "grid nrow zero": ("mlp", "GET", "/grid?seeds=0-3&nrow=0", None, 400, "nrow",
                       "out of range"),
    "grid labels for unconditional": ("mlp", "GET", "/grid?seeds=0&labels=1", None, 400,
                                      "labels", "unconditional"),
    "walk one step": ("mlp", "GET", "/walk?seed_a=1&seed_b=2&steps=1", None, 400, "steps",
                      "out of range"),
    "walk too many steps": ("mlp", "GET", "/walk?seed_a=1&seed_b=2&steps=65", None, 400,
                            "steps", "out of range"),
    "walk without seed_b": ("mlp", "GET", "/walk?seed_a=1", None, 400, "seed_b", "is required"),
    "walk without label": ("acgan", "GET", "/walk?seed_a=1&seed_b=2", None, 400, "label",
                           "is conditional"),
    "unknown path": ("mlp", "GET", "/generat", None, 404, None, "Not Found"),
    "wrong method": ("mlp", "DELETE", "/generate", None, 405, None, "Method Not Allowed"),
}
# fmt: on


def send(client, method, path, body):
    if isinstance(body, dict):
        return client.request(method, path, json=body)
    return client.request(method, path, content=body)


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_names_the_field(clients, case):
    model, method, path, body, status, field, words = BAD_REQUESTS[case]
    client = clients["acgan_mnist" if model == "acgan" else "mlp_gan_mnist"]
    response = send(client, method, path, body)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["field"] == field
    assert words in answer["error"]
    assert len(answer["error"]) < 200  # one line, never an echo of a huge input
    # ... and the service still answers good requests.
    good = "/generate?seed=1&label=0" if model == "acgan" else "/generate?seed=1"
    assert client.get(good).status_code == 200


def test_concurrent_requests_give_sequential_bytes(exported_models):
    """16 client threads on the real predictor: the bytes of sequential requests, fewer calls."""
    options = ServeOptions(str(exported_models["acgan_mnist"]), batch_window_ms=20)
    with TestClient(create_app(Service(options))) as client:
        paths = [f"/generate?seed={s}&label={s % 10}" for s in range(48)]
        sequential = [client.get(p).content for p in paths]
        before = client.get("/health").json()
        with ThreadPoolExecutor(16) as pool:
            concurrent = list(pool.map(lambda p: client.get(p).content, paths))
        after = client.get("/health").json()
    assert concurrent == sequential
    requests = after["requests"] - before["requests"]
    calls = after["predictor_calls"] - before["predictor_calls"]
    assert requests == 48 and 1 <= calls < requests


# ---------------------------------------------------------------------- a real process
def http(url: str, data: bytes | None = None, method: str | None = None) -> tuple[int, bytes, str]:
    """(status, body, content type) without raising on 4xx."""
    try:
        request = urllib.request.Request(url, data=data, method=method)
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("content-type", "")


def test_service_process_end_to_end(exported_models, infer_tool_files):
    with running_service(exported_models["acgan_mnist"], "--batch_window_ms", "20") as (url, lines):
        status, body, kind = http(f"{url}/generate?seed=7&label=3")
        assert (status, kind) == (200, "image/png")
        assert body == (infer_tool_files / "files" / "seed0007_label3.png").read_bytes()

        status, body, _ = http(f"{url}/info")
        assert status == 200 and json.loads(body)["infer_cfg"]["model"] == "acgan"
        status, body, _ = http(f"{url}/generate", b'{"seeds": [0, 1, 2], "labels": [5, 5, 5]}')
        assert status == 200 and len(json.loads(body)["images"]) == 3
        status, body, kind = http(f"{url}/walk?seed_a=0&seed_b=1&steps=4&label=1")
        assert (status, kind) == (200, "image/gif")
        assert Image.open(io.BytesIO(body)).n_frames == 4
        status, body, _ = http(f"{url}/")
        assert status == 200 and b'id="seed-slider"' in body

        for path, field in [("/generate?seed=7&label=10", "label"), ("/generate?seed=x", "seed")]:
            status, body, _ = http(url + path)
            assert status == 400 and json.loads(body)["field"] == field

        # 200 requests from 16 client threads: all right, in fewer predictor calls.
        paths = [f"/generate?seed={s % 50}&label={s % 10}" for s in range(200)]
        expected = {p: http(url + p)[1] for p in set(paths)}
        before = json.loads(http(f"{url}/health")[1])
        latencies = []

        def fetch(path):
            started = time.perf_counter()
            status, body, _ = http(url + path)
            latencies.append(time.perf_counter() - started)
            return status == 200 and body == expected[path]

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(fetch, paths))
        after = json.loads(http(f"{url}/health")[1])
        assert all(answers)
        requests = after["requests"] - before["requests"]
        calls = after["predictor_calls"] - before["predictor_calls"]
        assert requests == 200 and calls < requests
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000
        print(f"200 requests, 16 threads: {calls} predictor calls, p50 {p50:.1f} ms p99 {p99:.1f}")
        assert http(f"{url}/health")[0] == 200
    logged = [ln for ln in lines if "127.0.0.1 GET /generate?seed=7&label=3 200" in ln]
    assert len(logged) == 1  # one line per request
    assert any("GET /generate?seed=7&label=10 400" in ln for ln in lines)


def test_every_bad_request_against_the_service_process(exported_models):
    """The BAD_REQUESTS table sent to tools/serve.py processes over loopback: each its 4xx, the
    field and the message, and the process still serving afterwards."""
    with (
        running_service(exported_models["acgan_mnist"]) as (acgan_url, _),
        running_service(exported_models["mlp_gan_mnist"]) as (mlp_url, _),
    ):
        for case, (model, method, path, body, status, field, words) in BAD_REQUESTS.items():
            url = acgan_url if model == "acgan" else mlp_url
            data = json.dumps(body).encode() if isinstance(body, dict) else body
            got, answer, _ = http(url + path, data, method)
            assert got == status, (case, answer[:200])
            answer = json.loads(answer)
            assert answer["field"] == field and words in answer["error"], (case, answer)
        assert http(f"{acgan_url}/generate?seed=1&label=0")[0] == 200
        assert http(f"{mlp_url}/generate?seed=1")[0] == 200


def test_workers_each_load_a_predictor_and_stop_cleanly(exported_models, infer_tool_files):
    expected = (infer_tool_files / "files" / "seed0007_label3.png").read_bytes()
    with running_service(exported_models["acgan_mnist"], "--workers", "2") as (url, lines):
        pids = set()
        for _ in range(8):
            assert http(f"{url}/generate?seed=7&label=3")[1] == expected
            pids.add(json.loads(http(f"{url}/health")[1])["pid"])
        print(f"{len(pids)} worker(s) answered")
    text = "".join(lines)
    assert text.count("Application startup complete") == 2
    assert "FatalError" not in text  # Paddle's own SIGTERM handler stays out of the way
    assert text.count("Finished server process") == 2


def test_bad_model_folder_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "tools/serve.py", "--model_dir", str(tmp_path), "--port", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path} has no infer_cfg.yml: it is not an exported model folder "
        "(tools/export_model.py writes one)"
    ]


def test_help_documents_workers_and_batching():
    proc = subprocess.run(
        [sys.executable, "tools/serve.py", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "--workers N starts N processes, each loading its own predictor" in text
    assert "--batch_window_ms" in text and "127.0.0.1" in text
