"""Per-operator time split of one training step (D step + G step), from `paddle.profiler`.

  python bench/profile_step.py [--config dcgan_mnist] [--steps 5] [--framework paddle|torch]

Runs the trainer's own `d_step`/`g_step` on a fixed batch (data loading is timed separately by
bench/train_speed.py) and prints each kind of work, forward and backward, as ms per step and % of
the step. `--framework torch` prints the same split for bench/torch_reference.py (torch.profiler,
self time per aten op), to see where the two differ.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# operator-name fragment -> row of the table; first match wins (order matters)
PADDLE_KINDS = (
    # paddlegan_lite/ops/onednn.py's convolutions: events named by record_onednn_steps; Paddle ops
    # they call (buffers, D's first-layer input gradient) keep their own rows
    ("onednn deconvolution forward", "transposed conv forward (oneDNN)"),
    ("onednn deconvolution", "transposed conv backward (oneDNN)"),
    ("onednn convolution forward", "conv forward (oneDNN)"),
    ("onednn convolution", "conv backward (oneDNN)"),
    ("Conv2dTransposeGrad", "transposed conv backward"),
    ("conv2d_transpose", "transposed conv forward"),
    ("Conv2dGrad", "conv backward"),
    ("conv2d", "conv forward"),
    ("BatchNormGrad", "BatchNorm backward"),
    ("batch_norm", "BatchNorm forward"),
    ("LeakyReluGrad", "LeakyReLU backward"),
    ("leaky_relu", "LeakyReLU forward"),
    ("ReluGrad", "ReLU backward (G, hinge loss)"),
    ("relu", "ReLU forward (G, hinge loss)"),
    ("TanhGrad", "Tanh backward"),
    ("tanh", "Tanh forward"),
    ("MatmulGrad", "linear backward"),
    ("matmul", "linear forward"),
    ("adam", "Adam update"),
    ("gaussian", "noise N(0, 1)"),
    ("Accumulation", "gradient accumulation"),
)
LOSS_OPS = ("mean", "scale", "add", "subtract", "softplus", "sigmoid", "full", "cross_entropy")
TORCH_KINDS = (
    ("onvolution_backward", "conv + transposed conv backward"),
    ("ConvolutionBackward", "conv + transposed conv backward"),
    ("mkldnn_convolution", "conv + transposed conv forward"),
    ("slow_conv", "conv + transposed conv forward"),
    ("_convolution", "conv + transposed conv forward"),
    ("copy_", "copies (oneDNN layout reorders)"),
    ("native_batch_norm_backward", "BatchNorm backward"),
    ("batch_norm", "BatchNorm forward"),
    ("leaky_relu_backward", "LeakyReLU backward"),
    ("leaky_relu", "LeakyReLU forward"),
    ("threshold_backward", "ReLU backward (G, hinge loss)"),
    ("relu", "ReLU forward (G, hinge loss)"),
    ("tanh_backward", "Tanh backward"),
    ("tanh", "Tanh forward"),
    ("addmm", "linear forward"),
    ("mm", "linear backward"),
    ("_foreach", "Adam update"),
    ("Adam", "Adam update"),
    ("lerp_", "Adam update"),
    ("sqrt", "Adam update"),
    ("LeakyReluBackward", "LeakyReLU backward"),
    ("NativeBatchNormBackward", "BatchNorm backward"),
    ("normal_", "noise N(0, 1)"),
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="dcgan_mnist")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps (after 3 warm-up)")
    parser.add_argument("--framework", default="paddle", choices=("paddle", "torch"))
    parser.add_argument("--torch_threads", type=int, default=0, help="0: PyTorch's default")
    parser.add_argument("-o", "--override", nargs="+", default=[], help="config overrides")
    args = parser.parse_args()
    from paddlegan_lite.ops.process import configure_process_env

    configure_process_env()  # before Paddle loads
    from paddlegan_lite.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"train.output_dir={tmp}", *args.override]
        cfg = load_config(REPO_ROOT / "configs" / f"{args.config}.yaml", overrides)
        if args.framework == "paddle":
            from paddlegan_lite.runtime import use_cpu_threads

            use_cpu_threads(cfg.train.threads)  # as tools/train.py: -o train.threads=N to pin
            per_kind, step_ms = profile_paddle(cfg, args.steps, Path(tmp))
        else:
            per_kind, step_ms = profile_torch(cfg, args.steps, Path(tmp), args.torch_threads)
    print(split_table(args, cfg, per_kind, step_ms))
    return 0


# ---------------------------------------------------------------------------------- paddle
def profile_paddle(cfg, steps: int, tmp: Path):
    """({row: ms per step}, ms per step) from the self time of each Paddle operator."""
    import paddle
    import paddle.profiler as profiler

    from paddlegan_lite.trainer import build_trainer

    record_onednn_steps(profiler)
    trainer = build_trainer(cfg, dataset=None)
    real, labels = fixed_batch(cfg)
    real, labels = paddle.to_tensor(real), paddle.to_tensor(labels)

    def step():
        z, gen_labels = trainer.sample_latent(real.shape[0])
        loss_d, _, _, fake = trainer.d_step(real, labels, z, gen_labels)
        return loss_d, trainer.g_step(fake, gen_labels)

    for _ in range(3):  # allocator and kernel caches warm up
        step()
    prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU])
    prof.start()
    for _ in range(steps):
        step()[1].numpy()  # one sync per step, as the trainer's log interval would
        prof.step()
    prof.stop()
    trace = tmp / "trace.json"
    prof.export(str(trace), format="json")
    return split_paddle_trace(trace, steps)


def record_onednn_steps(profiler):
    """Wrap each oneDNN plan step in a profiler event "onednn <op> <step>": oneDNN runs through
    ctypes, outside Paddle's operators, so the trace would otherwise count it as Python."""
    from paddlegan_lite.ops import onednn

    for step in ("forward", "input_grad", "weight_grad"):
        run = getattr(onednn._ConvPlan, step)

        def recorded(plan, *args, _run=run, _step=step):
            with profiler.RecordEvent(f"onednn {plan.op} {_step}"):
                return _run(plan, *args)

        setattr(onednn._ConvPlan, step, recorded)


def is_timed_span(event: dict) -> bool:
    """Paddle operators, and the oneDNN steps record_onednn_steps names."""
    if event.get("ph") != "X":
        return False
    return event.get("cat") == "Operator" or event.get("name", "").startswith("onednn ")


def split_paddle_trace(path: Path, steps: int):
    events = json.loads(path.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    spans = [e for e in events if is_timed_span(e)]
    step_us = sum(e["dur"] for e in events if e.get("cat") == "ProfileStep")
    per_kind = defaultdict(float)
    for event, self_us in self_times(spans):
        per_kind[paddle_kind(event["name"])] += self_us / 1000 / steps
    per_kind["Python, dispatch and everything else"] = step_us / 1000 / steps - sum(
        per_kind.values()
    )
    return per_kind, step_us / 1000 / steps


def self_times(spans):
    """(event, its duration minus the operators nested inside it) per thread."""
    by_thread = defaultdict(list)
    for e in spans:
        # one OS thread has two trace rows, "1234(C++)" for operators and "1234(Python)" for
        # RecordEvents such as the oneDNN steps: nest them together
        by_thread[str(e["tid"]).split("(")[0]].append(e)
    for events in by_thread.values():
        events.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack, child = [], defaultdict(float)
        for e in events:
            while stack and not contains(stack[-1], e):
                stack.pop()
            if stack:
                child[id(stack[-1])] += e["dur"]
            stack.append(e)
        for e in events:
            yield e, e["dur"] - child[id(e)]


def contains(outer: dict, inner: dict) -> bool:
    """Whether `inner` runs inside `outer` (timestamps are rounded to 1 us: allow that much)."""
    return inner["ts"] + inner["dur"] <= outer["ts"] + outer["dur"] + 1.0


def paddle_kind(name: str) -> str:
    base = name.split("[")[0].removesuffix(" dygraph").strip()
    for fragment, kind in PADDLE_KINDS:
        if fragment in base:
            return kind
    if any(base.removeprefix("Global_").lower().startswith(op) for op in LOSS_OPS):
        return "loss and statistics (mean, add, ...)"
    return "other operators"


# ---------------------------------------------------------------------------------- torch
def profile_torch(cfg, steps: int, tmp: Path, threads: int):
    """The same split for bench/torch_reference.py, from torch.profiler self CPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if threads:
        torch.set_num_threads(threads)
    from paddlegan_lite.config import config_to_dict

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torch_reference import TorchTrainer

    trainer = TorchTrainer(config_to_dict(cfg), dataset=None, run_dir=tmp)
    real, labels = (torch.from_numpy(a) for a in fixed_batch(cfg))

    def step():
        loss_d, _, _, fake, gen_labels = trainer.d_step(real, labels)
        return trainer.g_step(fake, gen_labels).item()

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    per_kind = defaultdict(float)
    for avg in prof.key_averages():
        per_kind[torch_kind(avg.key)] += avg.self_cpu_time_total / 1000 / steps
    return per_kind, sum(per_kind.values())


def torch_kind(name: str) -> str:
    for fragment, kind in TORCH_KINDS:
        if fragment in name:
            return kind
    if any(op in name for op in LOSS_OPS):
        return "loss and statistics (mean, add, ...)"
    return "other operators"


# ---------------------------------------------------------------------------------- report
def fixed_batch(cfg):
    """Random images in [-1, 1] and labels: kernels' speed does not depend on the values."""
    import numpy as np

    rng = np.random.default_rng(0)
    m, batch = cfg.model, cfg.train.batch_size
    real = rng.uniform(-1, 1, (batch, m.channels, m.image_size, m.image_size)).astype("float32")
    return real, rng.integers(0, max(m.num_classes, 1), batch).astype("int64")


def split_table(args, cfg, per_kind: dict, step_ms: float) -> str:
    lines = [
        f"{args.framework} step of {args.config} (batch {cfg.train.batch_size}): "
        f"{step_ms:.1f} ms = {1000 * cfg.train.batch_size / step_ms:.0f} img/s, mean of "
        f"{args.steps} profiled steps; load average {os.getloadavg()[0]:.2f}",
        "",
        "| work | ms / step | % of step |",
        "| --- | ---: | ---: |",
    ]
    for kind, ms in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {ms:.1f} | {100 * ms / step_ms:.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
