"""Serve an exported model (tools/export_model.py) over HTTP, with a page to explore it.

  pip install -e ".[serve]"
  python tools/serve.py --model_dir inference/acgan_mnist --port 8080
  curl 'http://127.0.0.1:8080/generate?seed=7&label=3' -o seven.png
  curl -X POST http://127.0.0.1:8080/generate -d '{"seeds": [0, 1, 2], "labels": [5, 5, 5]}'
  open http://127.0.0.1:8080/            (the page: seed, class, grid, latent walk)

Endpoints:
  GET  /generate?seed=S[&label=K]            one PNG
  POST /generate {"seeds": [...], "labels": K or [...], "format": "png" or "uint8"}
       JSON: "images" holds base64 PNG files, or base64 raw uint8 bytes of each [H, W, C] image
  GET  /grid?seeds=0-15[&labels=0-9][&nrow=4] one PNG: row k is label k (as tools/infer.py)
  GET  /walk?seed_a=A&seed_b=B[&steps=16][&label=K]   a GIF from seed A to seed B
  GET  /info (the model's infer_cfg and the limits), /health, / (the page)

Seed s gives the same bytes as tools/infer.py. Bad input: a 4xx with {"error", "field"}.

One predictor per process, run on one thread: requests arriving within --batch_window_ms of each
other share a predictor call of up to --max_batch images. --workers N starts N processes, each
loading its own predictor (N times the memory) and batching only its own requests; on a CPU
one worker with --threads set to the cores usually serves best (the default, one thread, keeps
each seed's image bit-identical whatever else shares its batch).
"""

import argparse
import ipaddress
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from paddlegan_lite.ops.process import configure_process_env

configure_process_env()  # before Paddle loads: MKL's fast path on AMD, allocator, quiet logs
from paddlegan_lite.cli import add_predictor_args, predictor_parser, run_tool
from paddlegan_lite.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = predictor_parser(__doc__)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes; each loads its own predictor and batches its own requests",
    )
    parser.add_argument("--max_batch", type=int, default=64, help="images per predictor call")
    parser.add_argument(
        "--batch_window_ms",
        type=float,
        default=2.0,
        help="how long a request waits for others to share its predictor call (0: no wait)",
    )
    parser.add_argument(
        "--max_images", type=int, default=256, help="images one request may ask for"
    )
    parser.add_argument("--max_walk_steps", type=int, default=64, help="frames of one walk")
    add_predictor_args(parser)
    return parser


def main() -> int:
    args = build_parser().parse_args()
    try:
        import uvicorn

        from paddlegan_lite import serve
    except ImportError as exc:
        raise UserError(
            f'the service needs the serve extra ({exc.name} is missing): pip install -e ".[serve]"'
        ) from None
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    options = serve.ServeOptions(
        model_dir=os.path.abspath(os.path.expanduser(args.model_dir)),
        max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms,
        max_images=args.max_images,
        max_walk_steps=args.max_walk_steps,
        device=args.device,
        cpu_threads=args.threads,
        mkldnn=not args.no_mkldnn,
    )
    service = serve.Service(options)  # checks the options and the model folder
    if not _is_loopback(args.host):
        serve.log.warning(
            "listening on %s: the service has no authentication, anyone who reaches this "
            "address can use it",
            args.host,
        )
    run = dict(host=args.host, port=args.port, access_log=False, log_level="info")
    if args.workers == 1:
        service.batcher.start()  # load the predictor now: a bad model is one line, not a trace
        uvicorn.run(serve.create_app(service), **run)
    else:
        os.environ[serve.OPTIONS_ENV] = json.dumps(serve.asdict(options))
        uvicorn.run("paddlegan_lite.serve:app_from_env", factory=True, workers=args.workers, **run)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    run_tool(main)
