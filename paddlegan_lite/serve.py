"""A generation service over an exported model: PNGs by seed, JSON batches, grids, latent walks.

`Batcher` owns the one predictor of the process and runs it on one thread; requests that arrive
together share a predictor call. `create_app` wires it to FastAPI routes and a static page.
Needs the `serve` extra (fastapi, uvicorn). tools/serve.py starts it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import queue
import re
import signal
import threading
import time
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException

from paddlegan_lite.errors import UserError
from paddlegan_lite.images import make_grid
from paddlegan_lite.inference import (
    GIF_FRAME_MS,
    LATENT_RULE,
    Generator,
    InferenceError,
    _is_int,
    images_to_uint8,
    pair_seeds_labels,
    read_infer_cfg,
    seed_latents,
    walk_latents,
)

log = logging.getLogger("paddlegan_lite.serve")

PAGE_PATH = Path(__file__).resolve().parent / "web" / "index.html"
OPTIONS_ENV = "PADDLEGAN_LITE_SERVE"  # how tools/serve.py hands the options to --workers > 1
FORMATS = ("png", "uint8")  # POST /generate: base64 PNG files, or base64 raw uint8 [H, W, C]
_RANGE_PART = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")


@dataclass
class ServeOptions:
    """Everything tools/serve.py passes on to the app (one process or each --workers process)."""

    model_dir: str
    max_batch: int = 64  # images per predictor call; requests arriving together share one
    batch_window_ms: float = 2.0  # how long a lone request waits for others to join its call
    max_images: int = 256  # images one request may ask for (a JSON batch, a grid)
    max_walk_steps: int = 64  # frames of one latent walk, both ends included
    max_seed: int = 2**32 - 1  # seeds are integers in 0..max_seed
    max_body_bytes: int = 65536  # POST bodies; 256 seeds take about 3 KB
    device: str = "cpu"  # cpu, gpu or gpu:N
    cpu_threads: int = 0  # CPU math threads of the predictor (0: one; see tools/infer.py --help)
    mkldnn: bool = True  # oneDNN kernels on CPU

    def check(self) -> None:
        for name in ("max_batch", "max_images", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 2 <= self.max_walk_steps <= self.max_images:
            raise UserError(
                f"max_walk_steps must be in 2-{self.max_images} (max_images), "
                f"got {self.max_walk_steps}"
            )
        if self.batch_window_ms < 0:
            raise UserError(f"batch_window_ms must be >= 0, got {self.batch_window_ms}")
        if self.max_seed < 0:
            raise UserError(f"max_seed must be >= 0, got {self.max_seed}")


class RequestError(Exception):
    """A bad request: answered with `status` and {"error": message, "field": field}."""

    def __init__(self, field: str | None, message: str, status: int = 400):
        super().__init__(message)
        self.field, self.message, self.status = field, message, status


# ---------------------------------------------------------------------- the one predictor
class Batcher:
    """Runs one Generator on one thread; `submit` from any thread, jobs arriving together share
    predictor calls of up to `max_batch` images.

    The predictor is created and used on the worker thread only (Paddle Inference predictors are
    not thread-safe). An image's bits do not depend on its batch (see inference.py), so batching
    keeps "same seed, same bytes".
    """

    def __init__(self, make_generator, max_batch: int = 64, window_s: float = 0.002):
        self._make_generator = make_generator
        self.max_batch, self.window_s = max_batch, window_s
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "images": 0, "predictor_calls": 0}

    def start(self) -> None:
        """Start the worker and wait until its predictor is loaded (its errors are raised here)."""
        if self._thread is not None:
            return
        ready: Future = Future()
        self._thread = threading.Thread(
            target=self._work, args=(ready,), name="predictor", daemon=True
        )
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._thread.join()
            self._thread = None
            raise

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def submit(self, z: np.ndarray, labels: np.ndarray | None) -> Future:
        """z float32 [N, nz] (+ labels int64 [N]) -> a Future of uint8 images [N, H, W, C]."""
        if self._thread is None:
            raise RuntimeError("Batcher.submit before start()")
        future: Future = Future()
        with self._lock:
            self.stats["requests"] += 1
            self.stats["images"] += len(z)
        self._queue.put((z, labels, future))
        return future

    def _work(self, ready: Future) -> None:
        try:
            generator = self._make_generator()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        while True:
            jobs = self._collect()
            stop = jobs[-1] is None
            # A request whose client went away has its future cancelled: skip it. Once running,
            # a future can no longer be cancelled, so setting its result below cannot fail.
            jobs = [
                job for job in jobs if job is not None and job[2].set_running_or_notify_cancel()
            ]
            if jobs:
                self._run(generator, jobs)
            if stop:
                return

    def _collect(self) -> list:
        """The first waiting job, then whatever joins within the window, up to max_batch images."""
        first = self._queue.get()
        jobs, count = [first], 0 if first is None else len(first[0])
        deadline = time.monotonic() + self.window_s
        while first is not None and count < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            jobs.append(job)
            if job is None:
                break
            count += len(job[0])
        return jobs

    def _run(self, generator: Generator, jobs: list) -> None:
        try:
            z = np.concatenate([job[0] for job in jobs])
            labels = None if jobs[0][1] is None else np.concatenate([job[1] for job in jobs])
            chunks = []
            for start in range(0, len(z), self.max_batch):
                stop = start + self.max_batch
                part = None if labels is None else labels[start:stop]
                chunks.append(generator.run(z[start:stop], part))
                with self._lock:
                    self.stats["predictor_calls"] += 1
            images = images_to_uint8(np.concatenate(chunks))
        except Exception as exc:  # a job the checks let through must not stop the worker
            for job in jobs:
                job[2].set_exception(exc)
            return
        start = 0
        for job_z, _, future in jobs:
            future.set_result(images[start : start + len(job_z)])
            start += len(job_z)


# ---------------------------------------------------------------------- encoding
def png_bytes(image: np.ndarray) -> bytes:
    """uint8 [H, W, C] -> PNG file bytes, encoded exactly as images.save_png writes them."""
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def gif_bytes(frames: np.ndarray, frame_ms: int = GIF_FRAME_MS) -> bytes:
    """uint8 frames [N, H, W, C] -> a looping GIF, encoded as inference.save_gif writes it."""
    images = [Image.fromarray(f[:, :, 0] if f.shape[2] == 1 else f) for f in frames]
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0
    )
    return buffer.getvalue()


# ---------------------------------------------------------------------- request checks
def check_int(value, field: str, low: int, high: int, query: bool = False, why: str = "") -> int:
    """An int in [low, high] from query text (`query`) or a JSON value (an int: not a string, a
    bool or a float); anything else is a RequestError naming the field."""
    if query and re.fullmatch(r"-?\d{1,20}", value.strip()):
        value = int(value)
    if not _is_int(value):
        raise RequestError(field, f"{field} must be an integer in {low}-{high}, got {value!r:.40}")
    if not low <= value <= high:
        raise RequestError(field, f"{field} {value} is out of range {low}-{high}{why}")
    return value


def parse_ranges(text: str, field: str, low: int, high: int, max_count: int) -> list[int]:
    """'0-15', '1,5,9' or '0-3,10' -> ints, counted before they are built (no 0-4000000000)."""
    ranges, count = [], 0
    for part in text.split(",")[: max_count + 1]:
        match = _RANGE_PART.match(part.strip())
        if not match:
            raise RequestError(
                field,
                f"{field} {text[:40]!r} does not parse: use a range like 0-15, a list like "
                "1,5,9 or both (0-3,10)",
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        if last < first:
            raise RequestError(field, f"{field}: the range {part.strip()} runs backwards")
        if first < low or last > high:
            raise RequestError(field, f"{field} {part.strip()} is out of range {low}-{high}")
        count += last - first + 1
        if count > max_count:
            raise RequestError(field, f"{field} asks for more than {max_count} values")
        ranges.append((first, last))
    # each value once, first order kept: the grid tools/infer.py draws for the same text
    return list(dict.fromkeys(v for first, last in ranges for v in range(first, last + 1)))


class Service:
    """The model folder's config and limits, the batcher, and one method per endpoint."""

    def __init__(self, options: ServeOptions, make_generator=None):
        options.check()
        self.options = options
        self.cfg = read_infer_cfg(options.model_dir)  # fails early, with one line, on a bad folder
        self.num_classes = self.cfg["num_classes"]
        self.nz = self.cfg["nz"]
        if make_generator is None:

            def make_generator():
                return Generator(
                    options.model_dir,
                    options.device,
                    options.max_batch,
                    options.cpu_threads,
                    options.mkldnn,
                )

        self.batcher = Batcher(make_generator, options.max_batch, options.batch_window_ms / 1000)

    # -- checks shared by the endpoints
    def seed(self, value, field: str, query: bool = False) -> int:
        """A seed from query text (`query`) or a JSON value."""
        return check_int(value, field, 0, self.options.max_seed, query)

    def label(self, value, field: str = "label", query: bool = False) -> int | None:
        """None for unconditional models (where a label is an error), else a class index."""
        if not self.num_classes:
            if value is not None:
                raise RequestError(
                    field,
                    f"{field} given, but the model ({self.cfg['model']}) is unconditional "
                    "and takes none",
                )
            return None
        top = self.num_classes - 1
        if value is None:
            raise RequestError(
                field,
                f"the model ({self.cfg['model']}) is conditional: give {field} in 0-{top}",
            )
        why = f": the model has {self.num_classes} classes"
        return check_int(value, field, 0, top, query, why)

    async def images(self, z: np.ndarray, labels: list[int] | None) -> np.ndarray:
        """z [N, nz] (+ labels) -> uint8 [N, H, W, C] through the shared predictor."""
        label_array = None if labels is None else np.asarray(labels, dtype=np.int64)
        try:
            return await asyncio.wrap_future(self.batcher.submit(z, label_array))
        except InferenceError as exc:  # the predictor's own checks: still the caller's input
            raise RequestError(None, str(exc)) from None

    # -- endpoints
    def info(self) -> dict:
        limits = {
            key: value
            for key, value in asdict(self.options).items()
            if key.startswith("max_") or key == "batch_window_ms"
        }
        return {
            "infer_cfg": self.cfg,
            "limits": limits,
            "latent_rule": LATENT_RULE,
            "formats": list(FORMATS),
        }

    async def one(self, query: dict) -> bytes:
        _only(query, {"seed", "label"})
        seed = self.seed(_required(query, "seed"), "seed", query=True)
        label = self.label(query.get("label"), query=True)
        images = await self.images(seed_latents([seed], self.nz), _labels([label], label))
        return png_bytes(images[0])

    async def batch(self, body: dict) -> dict:
        _only(body, {"seeds", "labels", "format"})
        fmt = body.get("format", "png")
        if fmt not in FORMATS:
            raise RequestError("format", f"format must be one of {list(FORMATS)}, got {fmt!r:.40}")
        seeds = _required(body, "seeds")
        limit = self.options.max_images
        if not isinstance(seeds, list) or not seeds:
            raise RequestError("seeds", "seeds must be a non-empty list of integers")
        if len(seeds) > limit:
            raise RequestError(
                "seeds", f"seeds has {len(seeds)} values: at most {limit} per request"
            )
        seeds = [self.seed(s, f"seeds[{i}]") for i, s in enumerate(seeds)]
        labels = body.get("labels")
        if isinstance(labels, list) and self.num_classes:
            if len(labels) != len(seeds):
                raise RequestError(
                    "labels", f"give one label or one per seed: {len(labels)} for {len(seeds)}"
                )
            labels = [self.label(k, f"labels[{i}]") for i, k in enumerate(labels)]
        else:
            labels = _labels(seeds, self.label(labels, "labels"))
        images = await self.images(seed_latents(seeds, self.nz), labels)
        if fmt == "png":
            encoded = [base64.b64encode(png_bytes(image)).decode("ascii") for image in images]
        else:
            encoded = [base64.b64encode(image.tobytes()).decode("ascii") for image in images]
        return {
            "format": fmt,
            "shape": list(images.shape[1:]),  # each image: [H, W, C]
            "dtype": "uint8",
            "seeds": seeds,
            "labels": labels,
            "images": encoded,
        }

    async def grid(self, query: dict) -> bytes:
        """Every seed with every label (row k: label k), as tools/infer.py --grid draws it;
        `nrow` (images per row) lays the same images out otherwise."""
        _only(query, {"seeds", "labels", "nrow"})
        limit = self.options.max_images
        seeds = parse_ranges(_required(query, "seeds"), "seeds", 0, self.options.max_seed, limit)
        labels = None
        if "labels" in query:
            if not self.num_classes:
                self.label(query["labels"], "labels", query=True)  # raises: unconditional
            labels = parse_ranges(query["labels"], "labels", 0, self.num_classes - 1, limit)
        elif self.num_classes:
            labels = list(range(self.num_classes))
        if labels is not None and len(seeds) * len(labels) > limit:
            raise RequestError(
                "seeds",
                f"{len(seeds)} seeds x {len(labels)} labels = {len(seeds) * len(labels)} "
                f"images: at most {limit} per request",
            )
        seeds, labels, nrow = pair_seeds_labels(seeds, labels)
        if "nrow" in query:
            nrow = check_int(query["nrow"], "nrow", 1, limit, query=True)
        images = await self.images(seed_latents(seeds, self.nz), labels)
        return png_bytes(make_grid(images, nrow=nrow))

    async def walk(self, query: dict) -> bytes:
        """A GIF along the arc from seed_a's latent to seed_b's (tools/infer.py --interpolate)."""
        _only(query, {"seed_a", "seed_b", "steps", "label"})
        seed_a = self.seed(_required(query, "seed_a"), "seed_a", query=True)
        seed_b = self.seed(_required(query, "seed_b"), "seed_b", query=True)
        steps = check_int(query.get("steps", "16"), "steps", 2, self.options.max_walk_steps, True)
        label = self.label(query.get("label"), query=True)
        z = walk_latents(seed_a, seed_b, steps, self.nz)
        frames = await self.images(z, _labels(range(steps), label))
        return gif_bytes(frames)


def _labels(items, label: int | None) -> list[int] | None:
    return None if label is None else [label] * len(list(items))


def _required(values: dict, field: str):
    if field not in values:
        raise RequestError(field, f"{field} is required")
    return values[field]


def _only(values: dict, allowed: set) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise RequestError(
            unknown[0], f"unknown field {unknown[0]!r:.40}: valid fields are {sorted(allowed)}"
        )


def _query(request: Request) -> dict:
    params = request.query_params
    for key in params:
        if len(params.getlist(key)) > 1:
            raise RequestError(key, f"{key!r:.40} is given more than once")
    return dict(params)


async def _read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object, read no further than `limit` bytes (any content type)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(None, f"the body is over {limit} bytes", status=413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(None, f"the body is over {limit} bytes", status=413)
    try:
        value = json.loads(body)
    except ValueError:  # also UnicodeDecodeError and Python's int-digit limit
        raise RequestError(None, "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise RequestError(None, 'the body must be a JSON object like {"seeds": [0, 1]}')
    return value


# ---------------------------------------------------------------------- the app
def create_app(service: Service):
    """FastAPI app over `service`; its lifespan starts and stops the predictor thread."""

    @asynccontextmanager
    async def lifespan(app):
        service.batcher.start()  # no-op when tools/serve.py started it already
        try:
            yield
        finally:
            service.batcher.stop()

    app = FastAPI(title="paddlegan_lite", lifespan=lifespan, docs_url=None, redoc_url=None)

    def error(status: int, message: str, field: str | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "field": field}, status_code=status)

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, exc: RequestError):
        return error(exc.status, exc.message, exc.field)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.middleware("http")
    async def log_request(request: Request, call_next):
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # a bug, never the caller's input: answer 500 and keep serving
            log.exception("error while answering %s %s", request.method, request.url.path)
            response = error(500, "internal error (see the service log)")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        client = request.client.host if request.client else "-"
        log.info(
            "%s %s %s %d %.1f ms",
            client,
            request.method,
            target[:200],
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )
        return response

    png, gif = "image/png", "image/gif"

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE_PATH.read_text(encoding="utf-8"))

    @app.get("/favicon.ico")
    async def favicon():
        return Response(status_code=204)

    @app.get("/health")
    async def health():
        # the counts are this process's: with --workers N each worker answers for itself
        stats = service.batcher.stats
        return {"status": "ok", "model": service.cfg["model"], "pid": os.getpid(), **stats}

    @app.get("/info")
    async def info():
        return service.info()

    @app.get("/generate")
    async def generate_one(request: Request):
        return Response(await service.one(_query(request)), media_type=png)

    @app.post("/generate")
    async def generate_batch(request: Request):
        return await service.batch(await _read_json(request, service.options.max_body_bytes))

    @app.get("/grid")
    async def grid(request: Request):
        return Response(await service.grid(_query(request)), media_type=png)

    @app.get("/walk")
    async def walk(request: Request):
        return Response(await service.walk(_query(request)), media_type=gif)

    return app


def app_from_env():
    """uvicorn factory for `--workers N`: each worker process builds its own app and predictor."""
    from paddlegan_lite.logger import setup_console_logging

    setup_console_logging()
    # Importing Paddle installs its own SIGINT/SIGTERM handlers, which print a C++ "FatalError"
    # when uvicorn's parent stops its workers: import it here and put the handlers back.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    import paddle.inference  # noqa: F401

    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    return create_app(Service(ServeOptions(**json.loads(os.environ[OPTIONS_ENV]))))
