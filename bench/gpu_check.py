"""GPU self-check: everything paddlegan_lite does on a GPU, in one command and one table.

  python bench/gpu_check.py                 # every seed config (aimed at < 5 min on one GPU)
  python bench/gpu_check.py --quick         # three configs (MLP, AC-GAN, CIFAR-10 32x32)
  python bench/gpu_check.py --dry-run       # list every check and its commands; run nothing

Per seed config, each run a user's command in a subprocess:
- train: `tools/train.py` for --steps steps (50) with train.amp off, fp16 and bf16: exit 0,
  finite losses in metrics.jsonl, a checkpoint at the last step; img/s and peak GPU memory.
- export: `tools/export_model.py` on the amp=off checkpoint (its own Paddle Inference check).
- predictor: the exported model under Paddle Inference on the CPU and on the GPU against the
  float32 dynamic graph on CPU, with the export's tolerances (the GPU's allows for TF32).
- infer: `tools/infer.py --device gpu` writes one PNG per seed (and class) and a grid.
- resume: N steps straight against N/2 + `--resume auto` + N/2, with train.deterministic: the
  final checkpoints (weights, Adam state, BatchNorm statistics) must be equal.
Once: G's forward+backward time under auto_cast O1 float16 with Paddle's white list and with
conv2d_transpose added; with two or more GPUs, `paddle.distributed.launch` on 2 GPUs with
SyncBatchNorm, and a probe run the same way that saves each rank's nets after training: weights
and BatchNorm statistics must be equal on both ranks (a control run without SyncBatchNorm must
show different statistics, so the ranks' batches did differ).

Every check is a row (name, PASS/FAIL/SKIP, numbers, detail); exit 1 if any row FAILs, else 0.
Without a CUDA build of Paddle or a visible GPU it prints one line and exits 0 (CI runs it so).
`--device cpu` (hidden, for debugging) runs the parts that need no GPU on the CPU.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().relative_to(REPO_ROOT)  # commands run from REPO_ROOT

CONFIGS = ("mlp_gan_mnist", "dcgan_mnist", "acgan_mnist", "dcgan_cifar10", "dcgan_cifar10_32")
QUICK_CONFIGS = ("mlp_gan_mnist", "acgan_mnist", "dcgan_cifar10_32")
AMP_MODES = ("off", "fp16", "bf16")
INFER_SEEDS = 8
# Paddle Inference against the float32 dynamic graph on CPU is held to the export's own
# tolerances (paddlegan_lite/export.py): TOLERANCE on the CPU, GPU_TOLERANCE on the GPU, which
# allows for TF32 (Ampere and newer GPUs run float32 matmuls and convolutions with 10 mantissa
# bits by default).
# Resumed and straight runs with train.deterministic must agree exactly: same kernels, same data.
RESUME_TOLERANCE = 0.0
# Data parallel: every rank receives the same all-reduced sums, so weights and SyncBatchNorm
# statistics should agree bit for bit; 1e-6 only keeps a last-bit difference from failing.
RANK_TOLERANCE = 1e-6
RANK_CONFIG = "dcgan_mnist"  # BatchNorm in both nets, quick to train
RANK_STEPS = 2
AMP_TIMING_CONFIG = "dcgan_cifar10"  # the widest G: 64x64 RGB, ngf=64, batch 128
PEAK_TAG = "gpu_check: peak_gpu_bytes="
STATUSES = ("PASS", "FAIL", "SKIP")


# ---------------------------------------------------------------------- rows and judging
@dataclass
class Row:
    """One line of the table."""

    name: str
    status: str  # PASS | FAIL | SKIP
    numbers: str = ""
    detail: str = ""

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


def format_table(rows: list[Row], elapsed: float | None = None) -> str:
    """Rows as an aligned text table, with a count of each status (and the minutes) at the end."""
    cells = [("check", "status", "numbers", "detail")]
    cells += [(r.name, r.status, r.numbers, r.detail) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    lines = []
    for k, cell in enumerate(cells):
        line = "  ".join(text.ljust(width) for text, width in zip(cell[:3], widths))
        lines.append(f"{line}  {cell[3]}".rstrip())
        if k == 0:
            lines.append("  ".join("-" * width for width in widths) + "  ------")
    counts = ", ".join(f"{sum(r.status == s for r in rows)} {s}" for s in STATUSES)
    took = f" in {elapsed / 60:.1f} min" if elapsed is not None else ""
    lines.append(f"{len(rows)} checks{took}: {counts}")
    return "\n".join(lines)


def exit_code(rows: list[Row]) -> int:
    """1 if any check failed, else 0 (SKIPs do not fail the run)."""
    return 1 if any(r.status == "FAIL" for r in rows) else 0


def read_metrics(path: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl; ValueError naming the line if one is not JSON."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {number} is not JSON ({exc.msg})") from None
    return rows


def images_per_sec(rows: list[dict]) -> float | None:
    """Median img/s over the logged intervals after the first (CUDA start-up, cuDNN autotuning),
    or the only interval's."""
    values = [float(r["images_per_sec"]) for r in rows if "images_per_sec" in r]
    if not values:
        return None
    return statistics.median(values[1:] if len(values) > 1 else values)


def parse_peak_memory(output: str) -> int | None:
    """The peak GPU bytes a `--role train` child printed at exit, or None."""
    for line in reversed(output.splitlines()):
        if line.startswith(PEAK_TAG):
            try:
                return int(line[len(PEAK_TAG) :].strip())
            except ValueError:
                return None
    return None


def parse_export_checks(output: str) -> list[tuple[str, float, float]]:
    """(what, max abs diff, tolerance) of every `check: <what> vs dynamic graph ... max abs diff D
    (tolerance T)` line that tools/export_model.py logged."""
    found = []
    for line in output.splitlines():
        _, sep, rest = line.partition("check: ")
        if not sep or " vs " not in rest or "max abs diff " not in rest:
            continue
        what = rest.split(" vs ")[0].strip()
        tail = rest.split("max abs diff ")[1].split()
        try:
            diff = float(tail[0])
            tol = float(rest.split("tolerance ")[1].split(")")[0].split()[0])
        except (IndexError, ValueError):
            continue
        found.append((what, diff, tol))
    return found


def last_line(text: str) -> str:
    """The last non-empty line of a tool's output (its one-line error), shortened."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def judge_train(
    name: str,
    returncode: int,
    output: str,
    metrics: list[dict] | None,
    checkpoint_step: int | None,
    steps: int,
    peak_bytes: int | None,
) -> Row:
    """A training run passes when it exits 0, every logged loss is finite and the last
    checkpoint holds the last step."""
    speed = images_per_sec(metrics or [])
    numbers = [f"{speed:,.1f} img/s" if speed is not None else "? img/s"]
    if peak_bytes is not None:
        numbers.append(f"peak {peak_bytes / 2**20:,.0f} MiB")
    if metrics:
        last = metrics[-1]
        numbers.append(f"loss_d {last.get('loss_d', float('nan')):.3f}")
        numbers.append(f"loss_g {last.get('loss_g', float('nan')):.3f}")
    numbers = ", ".join(numbers)
    if returncode != 0:
        return Row(name, "FAIL", numbers, f"exit {returncode}: {last_line(output)}")
    if not metrics:
        return Row(name, "FAIL", numbers, "no rows in metrics.jsonl")
    bad = [
        r.get("step")
        for r in metrics
        if not all(math.isfinite(float(r.get(k, float("nan")))) for k in ("loss_d", "loss_g"))
    ]
    if bad:
        return Row(name, "FAIL", numbers, f"non-finite loss logged at step(s) {bad}")
    if checkpoint_step != steps:
        return Row(name, "FAIL", numbers, f"last checkpoint at step {checkpoint_step}, not {steps}")
    return Row(name, "PASS", numbers)


@dataclass
class Comparison:
    """Two sets of named arrays side by side."""

    max_abs_diff: float  # over every shared array; nan if any difference is nan
    worst: str  # the array where it occurs
    arrays: int  # arrays compared
    problems: list[str] = field(default_factory=list)  # missing arrays, other shapes

    def within(self, tolerance: float) -> bool:
        return not self.problems and self.max_abs_diff <= tolerance  # nan compares False

    def describe(self) -> str:
        diff = "0 (identical)" if self.max_abs_diff == 0 else f"{self.max_abs_diff:.3g}"
        where = f" at {self.worst}" if self.max_abs_diff and self.worst else ""
        return f"max |diff| {diff}{where} over {self.arrays} arrays"


def flatten(groups: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """{'netG': {'w': a}} -> {'netG/w': a}."""
    return {
        f"{group}/{key}": value for group, items in groups.items() for key, value in items.items()
    }


def compare_arrays(left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> Comparison:
    """Largest absolute difference between same-named arrays (float64), and what does not pair."""
    problems = [f"{k} only in the first" for k in sorted(set(left) - set(right))]
    problems += [f"{k} only in the second" for k in sorted(set(right) - set(left))]
    worst_diff, worst = 0.0, ""
    shared = sorted(set(left) & set(right))
    for key in shared:
        a, b = np.asarray(left[key]), np.asarray(right[key])
        if a.shape != b.shape:
            problems.append(f"{key}: shapes {list(a.shape)} and {list(b.shape)}")
            continue
        if not a.size:
            continue
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
        if math.isnan(diff) or diff > worst_diff:
            worst_diff, worst = diff, key
            if math.isnan(diff):
                break
    return Comparison(worst_diff, worst, len(shared), problems)


def judge_equal(name: str, comparison: Comparison, tolerance: float, what: str) -> Row:
    """PASS when every array pairs up and differs by at most `tolerance`."""
    numbers = f"{comparison.describe()} (tolerance {tolerance:g})"
    if comparison.problems:
        shown = "; ".join(comparison.problems[:3])
        more = f" (+{len(comparison.problems) - 3} more)" if len(comparison.problems) > 3 else ""
        return Row(name, "FAIL", numbers, f"{what}: {shown}{more}")
    if not comparison.within(tolerance):
        return Row(name, "FAIL", numbers, f"{what} differ")
    return Row(name, "PASS", numbers, what)


def judge_sync_bn(name: str, synced: Comparison, control: Comparison) -> Row:
    """SyncBatchNorm statistics must be equal on both ranks, while the control run without it
    must show different statistics (else equal statistics would prove nothing)."""
    numbers = f"sync_bn: {synced.describe()}; without: {control.describe()}"
    if synced.problems or control.problems:
        return Row(name, "FAIL", numbers, "; ".join((synced.problems + control.problems)[:3]))
    if control.within(RANK_TOLERANCE):
        return Row(
            name,
            "FAIL",
            numbers,
            "without SyncBatchNorm the ranks' statistics are equal too: the ranks' batches did "
            "not differ, so this run cannot show the sync",
        )
    if not synced.within(RANK_TOLERANCE):
        return Row(name, "FAIL", numbers, "SyncBatchNorm statistics differ between ranks")
    return Row(name, "PASS", numbers, "equal with SyncBatchNorm, different without")


def judge_close(name: str, max_diff: float, tolerance: float, what: str) -> Row:
    numbers = f"max |diff| {max_diff:.3g} (tolerance {tolerance:g})"
    status = "PASS" if max_diff <= tolerance else "FAIL"  # nan fails
    return Row(name, status, numbers, what)


def is_batchnorm_statistic(key: str) -> bool:
    return key.endswith("._mean") or key.endswith("._variance")


# ---------------------------------------------------------------------- the plan
@dataclass
class Check:
    """One row to be: its name, the commands it runs (what --dry-run lists) and how to judge."""

    name: str
    commands: list[list[str]]
    run: Callable[[], Row]
    needs: list[str] = field(default_factory=list)  # checks that must PASS first
    note: str = ""  # shown by --dry-run


@dataclass
class Context:
    device: str  # gpu | cpu (debug)
    gpus: int  # GPUs this run may use
    steps: int
    workdir: Path
    cifar_root: Path
    python: str = sys.executable
    results: dict = field(default_factory=dict)  # name -> Row of the checks run so far

    def run_dir(self, config: str, what: str) -> Path:
        return self.workdir / config / what


def config_path(config: str) -> str:
    return f"configs/{config}.yaml"


def data_overrides(config: str, ctx: Context) -> list[str]:
    """MNIST: the package's 5,000 bundled digits (no download); CIFAR-10: --cifar_root."""
    if "cifar10" in config:
        return [f"data.root={ctx.cifar_root}", "data.download=false"]
    return ["data.download=false"]


def train_command(
    ctx: Context, config: str, out: Path, steps: int, amp: str = "off", extra=(), resume=False
) -> list[str]:
    """tools/train.py as a user runs it, through `--role train` (the same script via runpy, then
    the peak GPU memory printed at exit)."""
    overrides = [
        f"train.max_steps={steps}",
        f"train.device={ctx.device}",
        # amp=off is the default; `-o train.amp=off` would reach the config as YAML's false
        *([f"train.amp={amp}"] if amp != "off" else []),
        f"train.output_dir={out}",
        f"train.log_interval={max(1, ctx.steps // 5)}",
        *data_overrides(config, ctx),
        *extra,
    ]
    cmd = [ctx.python, str(SCRIPT), "--role", "train", "tools/train.py"]
    cmd += ["-c", config_path(config), "-o", *overrides]
    return cmd + (["--resume", "auto"] if resume else [])


def build_plan(ctx: Context, configs) -> list[Check]:
    plan = []
    for config in configs:
        plan += config_checks(ctx, config)
    plan.append(amp_white_list_check(ctx))
    plan += two_gpu_checks(ctx)
    return plan


def config_checks(ctx: Context, config: str) -> list[Check]:
    checks = []
    for amp in AMP_MODES:
        out = ctx.run_dir(config, f"amp-{amp}")
        cmd = train_command(ctx, config, out, ctx.steps, amp)
        name = f"train {config} amp={amp}"
        checks.append(Check(name, [cmd], _train_runner(ctx, name, cmd, out, amp)))
    trained = ctx.run_dir(config, "amp-off")
    model_dir = ctx.run_dir(config, "export")
    export_cmd = [ctx.python, "tools/export_model.py", "--checkpoint"]
    export_cmd += [str(trained / "checkpoints" / "latest"), "--output_dir", str(model_dir)]
    first = f"train {config} amp=off"
    checks.append(
        Check(
            f"export {config}", [export_cmd], lambda: run_export(ctx, config, export_cmd), [first]
        )
    )
    for where in ("cpu", "gpu"):
        name = f"predictor-{where} {config}"
        checks.append(
            Check(
                name,
                [],
                lambda where=where, name=name: run_predictor(ctx, name, trained, model_dir, where),
                [f"export {config}"],
                note=f"in-process: Paddle Inference on {where.upper()} vs the float32 "
                "dynamic graph on CPU",
            )
        )
    images = ctx.run_dir(config, "infer")
    infer_cmd = [ctx.python, "tools/infer.py", "--model_dir", str(model_dir)]
    infer_cmd += ["--seeds", f"0-{INFER_SEEDS - 1}", "--output_dir", str(images)]
    infer_cmd += ["--grid", str(images.with_name("grid.png")), "--device", ctx.device]
    checks.append(
        Check(
            f"infer {config}",
            [infer_cmd],
            lambda: run_infer(ctx, config, infer_cmd, images),
            [f"export {config}"],
        )
    )
    half = ctx.steps // 2
    straight, split = ctx.run_dir(config, "resume-straight"), ctx.run_dir(config, "resume-split")
    det = ["train.deterministic=true"]
    cmds = [
        train_command(ctx, config, straight, ctx.steps, extra=det),
        train_command(ctx, config, split, half, extra=det),
        train_command(ctx, config, split, ctx.steps, extra=det, resume=True),
    ]
    checks.append(
        Check(
            f"resume {config}",
            cmds,
            lambda: run_resume(ctx, config, cmds, straight, split),
            note=f"{ctx.steps} steps straight vs {half} + --resume auto + {ctx.steps - half}",
        )
    )
    return checks


def amp_white_list_check(ctx: Context) -> Check:
    return Check(
        "amp white list conv2d_transpose",
        [],
        lambda: run_amp_white_list(ctx),
        note=f"in-process: {AMP_TIMING_CONFIG} G forward+backward under auto_cast O1 float16, "
        "Paddle's white list vs + conv2d_transpose",
    )


def two_gpu_checks(ctx: Context) -> list[Check]:
    base = ctx.workdir / "2gpu"
    launch = [ctx.python, "-m", "paddle.distributed.launch", "--gpus", "0,1"]
    overrides = [
        f"train.max_steps={ctx.steps}",
        "train.device=gpu",
        f"train.log_interval={max(1, ctx.steps // 5)}",
        *data_overrides(RANK_CONFIG, ctx),
    ]
    train_cmd = launch + ["--log_dir", str(base / "log-train"), "tools/train.py"]
    train_cmd += ["-c", config_path(RANK_CONFIG), "-o", *overrides]
    train_cmd += [f"train.output_dir={base / 'train'}", "distributed.sync_bn=true"]

    def probe_cmd(sync: bool) -> list[str]:
        tag = "sync" if sync else "nosync"
        cmd = launch + ["--log_dir", str(base / f"log-probe-{tag}"), str(SCRIPT)]
        cmd += ["--role", "rank_probe", str(base / f"probe-{tag}"), "-c", config_path(RANK_CONFIG)]
        cmd += ["-o", f"train.max_steps={RANK_STEPS}", "train.device=gpu"]
        cmd += [*data_overrides(RANK_CONFIG, ctx), f"train.output_dir={base / f'probe-run-{tag}'}"]
        return cmd + [f"distributed.sync_bn={str(sync).lower()}"]

    probes = [probe_cmd(True), probe_cmd(False)]
    note = "needs 2 GPUs"
    return [
        Check(
            f"2gpu train {RANK_CONFIG} sync_bn",
            [train_cmd],
            lambda: run_two_gpu_train(ctx, train_cmd, base / "train"),
            note=note,
        ),
        Check(
            "2gpu ranks: weights",
            probes,
            lambda: run_rank_probes(ctx, probes, base),
            note=f"{note}; each rank saves its nets after {RANK_STEPS} steps (bench/gpu_check.py "
            "--role rank_probe under the launcher), with and without SyncBatchNorm",
        ),
        Check(
            "2gpu ranks: SyncBatchNorm statistics",
            [],
            lambda: judge_rank_statistics(ctx, base),
            ["2gpu ranks: weights"],
            note=f"{note}; from the probe files above",
        ),
    ]


def print_plan(plan: list[Check]) -> None:
    print(f"gpu_check --dry-run: {len(plan)} checks (commands run from {REPO_ROOT})")
    for number, check in enumerate(plan, 1):
        extra = f"  [{check.note}]" if check.note else ""
        needs = f"  (after: {', '.join(check.needs)})" if check.needs else ""
        print(f"{number:3d}. {check.name}{extra}{needs}")
        for cmd in check.commands:
            shown = ["python" if arg == sys.executable else arg for arg in cmd]
            print(f"       $ {' '.join(shown)}")


def run_plan(plan: list[Check], ctx: Context) -> list[Row]:
    rows = []
    for number, check in enumerate(plan, 1):
        start = time.perf_counter()
        failed = [n for n in check.needs if ctx.results.get(n, Row(n, "SKIP")).status != "PASS"]
        if failed:
            row = Row(check.name, "SKIP", detail=f"needs {', '.join(failed)}")
        else:
            try:
                row = check.run()
            except Exception as exc:  # a check that crashes is a failed check, not a traceback
                row = Row(check.name, "FAIL", detail=f"{type(exc).__name__}: {exc}"[:200])
        ctx.results[check.name] = row
        rows.append(row)
        took = time.perf_counter() - start
        print(f"[{number}/{len(plan)}] {row.status} {row.name} ({took:.0f} s)", file=sys.stderr)
    return rows


# ---------------------------------------------------------------------- running the checks
def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """A tool as a user runs it, from the repository root; stdout and stderr together."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        return subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        return subprocess.CompletedProcess(cmd, -1, f"{out}\ntimed out after {timeout:.0f} s")


def run_together(cmds: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Several tools at once (each in its own thread), results in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(cmds)) as pool:
        return list(pool.map(run, cmds))


def checkpoint_step(run_dir: Path) -> int | None:
    state = run_dir / "checkpoints" / "latest" / "state.json"
    try:
        return int(json.loads(state.read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _train_runner(ctx: Context, name: str, cmd: list[str], out: Path, amp: str):
    def run_train() -> Row:
        if amp != "off" and ctx.device == "cpu":
            return Row(name, "SKIP", detail="train.amp needs a GPU (refused on CPU)")
        if amp == "bf16":
            import paddle

            if not paddle.amp.is_bfloat16_supported():
                return Row(name, "SKIP", detail="this GPU has no bfloat16 (compute capability < 8)")
        return train_row(ctx, name, cmd, out)

    return run_train


def train_row(ctx: Context, name: str, cmd: list[str], out: Path) -> Row:
    proc = run(cmd)
    try:
        metrics = read_metrics(out / "metrics.jsonl")
    except (OSError, ValueError):
        metrics = None
    peak = parse_peak_memory(proc.stdout)
    return judge_train(
        name, proc.returncode, proc.stdout, metrics, checkpoint_step(out), ctx.steps, peak
    )


def run_export(ctx: Context, config: str, cmd: list[str]) -> Row:
    name = f"export {config}"
    proc = run(cmd)
    checks = parse_export_checks(proc.stdout)
    numbers = "; ".join(f"{what} {diff:.3g} (tol {tol:g})" for what, diff, tol in checks)
    if proc.returncode != 0:
        return Row(name, "FAIL", numbers, f"exit {proc.returncode}: {last_line(proc.stdout)}")
    if not checks:
        return Row(name, "FAIL", numbers, "exit 0 but no 'check: ... max abs diff' line printed")
    return Row(name, "PASS", numbers, "tools/export_model.py's own checks")


def run_predictor(ctx: Context, name: str, trained: Path, model_dir: Path, where: str) -> Row:
    if where == "gpu" and ctx.device == "cpu":
        return Row(name, "SKIP", detail="no GPU (--device cpu)")
    import paddle

    from paddlegan_lite import inference
    from paddlegan_lite.export import (
        GPU_TOLERANCE,
        TOLERANCE,
        check_inputs,
        load_generator,
        run_dynamic,
    )

    paddle.set_device("cpu")  # the reference: float32 on the CPU, no TF32
    netG, *_ = load_generator(trained / "checkpoints" / "latest")
    z, labels = check_inputs(netG, 8)
    expected = run_dynamic(netG, z, labels).astype(np.float64)
    actual = inference.Generator(model_dir, where).run(z, labels)
    diff = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    tolerance = TOLERANCE if where == "cpu" else GPU_TOLERANCE
    what = "Paddle Inference vs the float32 dynamic graph on CPU, 8 images"
    return judge_close(name, diff, tolerance, what + (" (TF32 allowed)" if where == "gpu" else ""))


def run_infer(ctx: Context, config: str, cmd: list[str], images: Path) -> Row:
    name = f"infer {config}"
    proc = run(cmd)
    if proc.returncode != 0:
        return Row(name, "FAIL", detail=f"exit {proc.returncode}: {last_line(proc.stdout)}")
    from paddlegan_lite.config import load_config

    classes = load_config(REPO_ROOT / config_path(config)).model.num_classes
    expected = INFER_SEEDS * max(1, classes)
    written = len(list(images.glob("*.png")))
    grid = images.with_name("grid.png").is_file()
    numbers = f"{written} PNGs + {'a' if grid else 'no'} grid"
    if written != expected or not grid:
        return Row(name, "FAIL", numbers, f"expected {expected} PNGs and a grid")
    return Row(name, "PASS", numbers, f"--device {ctx.device}")


def run_resume(ctx: Context, config: str, cmds, straight: Path, split: Path) -> Row:
    from paddlegan_lite.checkpoint import load_checkpoint

    name = f"resume {config}"
    # the straight run and the first half are independent: run them side by side (no timing here)
    first = run_together(cmds[:2])
    for proc in [*first, run(cmds[2])] if all(p.returncode == 0 for p in first) else first:
        if proc.returncode != 0:
            return Row(name, "FAIL", detail=f"exit {proc.returncode}: {last_line(proc.stdout)}")
    a_state, a = load_checkpoint(straight / "checkpoints" / "latest")
    b_state, b = load_checkpoint(split / "checkpoints" / "latest")
    if a_state.get("step") != ctx.steps or b_state.get("step") != ctx.steps:
        return Row(name, "FAIL", detail=f"steps {a_state.get('step')} and {b_state.get('step')}")
    what = "final checkpoints: weights, BatchNorm statistics, Adam state, fixed noise"
    return judge_equal(name, compare_arrays(flatten(a), flatten(b)), RESUME_TOLERANCE, what)


def run_amp_white_list(ctx: Context) -> Row:
    name = "amp white list conv2d_transpose"
    if ctx.device == "cpu":
        return Row(name, "SKIP", detail="auto_cast does nothing on CPU")
    import paddle

    from paddlegan_lite import trainer
    from paddlegan_lite.config import load_config
    from paddlegan_lite.models import build_models

    paddle.set_device("gpu")
    cfg = load_config(REPO_ROOT / config_path(AMP_TIMING_CONFIG))
    paddle.seed(0)
    netG, _ = build_models(cfg.model)
    netG.train()
    z = paddle.randn([cfg.train.batch_size, cfg.model.nz])
    seen = {}

    def record(layer, inputs, output):
        seen["dtype"] = str(output.dtype).replace("paddle.", "")

    convt = next((s for s in netG.sublayers() if isinstance(s, paddle.nn.Conv2DTranspose)), None)
    if convt is not None:
        convt.register_forward_post_hook(record)

    def step(white_list, check: bool = False) -> bool:
        with paddle.amp.auto_cast(level="O1", dtype="float16", custom_white_list=white_list):
            out = netG(z)
        loss = out.astype("float32").square().mean()
        loss.backward()
        finite = not check or (
            bool(paddle.isfinite(loss))
            and all(
                bool(paddle.isfinite(p.grad).all()) for p in netG.parameters() if p.grad is not None
            )
        )
        netG.clear_gradients()
        return finite

    modes = {"Paddle O1": None, "+conv2d_transpose": {"conv2d_transpose"}}
    times, dtypes, finite = {m: [] for m in modes}, {}, True
    for mode, white in modes.items():
        for _ in range(3):  # warm-up: cuDNN picks its algorithms
            finite &= step(white, check=True)
        dtypes[mode] = seen.get("dtype", "?")
    for _ in range(3):  # rounds alternate the modes, so both see the same clocks
        for mode, white in modes.items():
            paddle.device.synchronize()
            start = time.perf_counter()
            for _ in range(10):
                step(white)
            paddle.device.synchronize()
            times[mode].append((time.perf_counter() - start) / 10 * 1000)
    base, white = (statistics.median(times[m]) for m in modes)
    numbers = f"{base:.2f} ms vs {white:.2f} ms (x{base / white:.2f})"
    training = sorted(getattr(trainer, "AMP_FP16_EXTRA_WHITE_LIST", set()))
    detail = (
        f"G fwd+bwd, batch {cfg.train.batch_size}; conv2d_transpose output "
        f"{dtypes['Paddle O1']} / {dtypes['+conv2d_transpose']}; training adds {training or 'none'}"
    )
    if not finite:
        return Row(name, "FAIL", numbers, "non-finite loss or gradient; " + detail)
    return Row(name, "PASS", numbers, detail)


def run_two_gpu_train(ctx: Context, cmd: list[str], out: Path) -> Row:
    name = f"2gpu train {RANK_CONFIG} sync_bn"
    if ctx.gpus < 2:
        return Row(name, "SKIP", detail=f"{ctx.gpus} GPU(s): needs 2")
    proc = run(cmd)
    logs = _worker_logs(Path(cmd[cmd.index("--log_dir") + 1]))
    if proc.returncode != 0:
        return Row(name, "FAIL", detail=f"exit {proc.returncode}: {last_line(logs or proc.stdout)}")
    try:
        metrics = read_metrics(out / "metrics.jsonl")
    except (OSError, ValueError):
        metrics = None
    return judge_train(name, 0, logs, metrics, checkpoint_step(out), ctx.steps, None)


def _worker_logs(log_dir: Path) -> str:
    texts = []
    for path in sorted(log_dir.glob("workerlog.*")):
        try:
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            pass
    return "\n".join(texts)


def run_rank_probes(ctx: Context, cmds, base: Path) -> Row:
    name = "2gpu ranks: weights"
    if ctx.gpus < 2:
        return Row(name, "SKIP", detail=f"{ctx.gpus} GPU(s): needs 2")
    for cmd in cmds:
        proc = run(cmd)
        if proc.returncode != 0:
            logs = _worker_logs(Path(cmd[cmd.index("--log_dir") + 1]))
            return Row(
                name, "FAIL", detail=f"exit {proc.returncode}: {last_line(logs or proc.stdout)}"
            )
    synced = _load_ranks(base / "probe-sync")
    weights = {k: v for k, v in synced[0].items() if not is_batchnorm_statistic(k)}
    other = {k: v for k, v in synced[1].items() if not is_batchnorm_statistic(k)}
    what = f"netG and netD parameters of rank 0 and rank 1 after {RANK_STEPS} steps (sync_bn)"
    return judge_equal(name, compare_arrays(weights, other), RANK_TOLERANCE, what)


def judge_rank_statistics(ctx: Context, base: Path) -> Row:
    stats = []
    for tag in ("sync", "nosync"):
        ranks = _load_ranks(base / f"probe-{tag}")
        pair = [{k: v for k, v in r.items() if is_batchnorm_statistic(k)} for r in ranks]
        stats.append(compare_arrays(*pair))
    return judge_sync_bn("2gpu ranks: SyncBatchNorm statistics", *stats)


def _load_ranks(folder: Path) -> list[dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    return [load_file(str(folder / f"rank{r}.safetensors")) for r in (0, 1)]


# ---------------------------------------------------------------------- child roles
def role_train(argv: list[str]) -> None:
    """Run a tool script exactly as `python <script> <args>` would, then print the process's peak
    GPU memory (paddle.device.cuda.max_memory_allocated) when it exits, however it exits."""
    atexit.register(_print_peak_memory)
    sys.argv = list(argv)
    sys.path.insert(0, str(Path(argv[0]).resolve().parent))
    runpy.run_path(argv[0], run_name="__main__")


def _print_peak_memory() -> None:
    try:
        import paddle

        if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
            print(f"{PEAK_TAG}{paddle.device.cuda.max_memory_allocated()}", flush=True)
    except Exception:  # a report at exit must never turn a result into a traceback
        pass


def role_rank_probe(argv: list[str]) -> None:
    """Under paddle.distributed.launch: train as tools/train.py does, then save this rank's netG
    and netD (parameters and BatchNorm statistics) to <out>/rank<N>.safetensors."""
    sys.path.insert(0, str(REPO_ROOT))
    from paddlegan_lite.ops.process import configure_process_env

    configure_process_env()  # before Paddle loads
    from paddlegan_lite.cli import add_config_args, run_tool

    def main() -> int:
        parser = argparse.ArgumentParser(prog="gpu_check.py --role rank_probe")
        parser.add_argument("out_dir")
        add_config_args(parser)
        args = parser.parse_args(argv)
        from safetensors.numpy import save_file

        from paddlegan_lite import checkpoint as ckpt
        from paddlegan_lite import distributed, trainer
        from paddlegan_lite.config import load_config

        cfg = load_config(args.config, args.override)
        built = []
        build = trainer.build_trainer

        def keep(*a, **k):  # the trainer train() builds, kept to read its nets afterwards
            built.append(build(*a, **k))
            return built[-1]

        trainer.build_trainer = keep
        trainer.train(cfg)
        nets = {"netG": ckpt.layer_arrays(built[0].netG), "netD": ckpt.layer_arrays(built[0].netD)}
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file(flatten(nets), str(out / f"rank{distributed.rank()}.safetensors"))
        return 0

    run_tool(main)


# ---------------------------------------------------------------------- main
def gpu_count() -> tuple[int, str]:
    """(visible CUDA devices, why none) for this Paddle build."""
    import paddle

    if not paddle.is_compiled_with_cuda():
        return 0, f"Paddle {paddle.__version__} is built without CUDA"
    count = paddle.device.cuda.device_count()
    return count, "" if count else "no CUDA device is visible"


def prepare_cifar(ctx: Context, given: str | None) -> str:
    """Use --cifar_root, or write a small synthetic CIFAR-10 tarball (tests/data_files.py)."""
    if given:
        return f"CIFAR-10 from {ctx.cifar_root}"
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from data_files import write_cifar10_tarball

    write_cifar10_tarball(ctx.cifar_root, n_per_batch=64, seed=0)
    return f"synthetic CIFAR-10 (5 x 64 images) in {ctx.cifar_root}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--role", "train"]:
        role_train(argv[2:])
        return 0
    if argv[:2] == ["--role", "rank_probe"]:
        role_rank_probe(argv[2:])
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="list the checks; run nothing")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_CONFIGS)}")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, help="seed configs to check")
    parser.add_argument("--steps", type=int, default=50, help="training steps per run (even)")
    parser.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="GPUs to use (default: all visible; --dry-run assumes 2 and lists every check)",
    )
    parser.add_argument(
        "--cifar_root", default=None, help="folder with cifar-10-python.tar.gz (default: synthetic)"
    )
    parser.add_argument("--workdir", default=None, help="keep runs here (default: a temp folder)")
    parser.add_argument("--device", default="gpu", choices=("gpu", "cpu"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 2 or args.steps % 2:
        parser.error("--steps must be an even number >= 2 (resume splits it in halves)")
    configs = args.configs or (QUICK_CONFIGS if args.quick else CONFIGS)

    if args.dry_run:
        workdir = Path(args.workdir or "<workdir>")
        cifar = Path(args.cifar_root or workdir / "cifar10")
        gpus = 2 if args.gpus is None else args.gpus
        ctx = Context(args.device, gpus, args.steps, workdir, cifar)
        print_plan(build_plan(ctx, configs))
        if not args.cifar_root and any("cifar10" in c for c in configs):
            print(f"(CIFAR-10: a synthetic tarball is written to {cifar} first)")
        return 0

    sys.path.insert(0, str(REPO_ROOT))
    from paddlegan_lite.ops.process import configure_process_env

    configure_process_env()  # before Paddle loads

    count, why = gpu_count()
    if args.device == "gpu" and count == 0:
        print(f"gpu_check: no GPU ({why}): nothing to check")
        return 0
    gpus = count if args.gpus is None else min(args.gpus, count)
    keep = args.workdir is not None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_check_")).resolve()
    cifar = Path(args.cifar_root).expanduser().resolve() if args.cifar_root else workdir / "cifar10"
    ctx = Context(args.device, gpus, args.steps, workdir, cifar)
    plan = build_plan(ctx, configs)
    start = time.perf_counter()
    print(f"gpu_check: {describe_machine(ctx)}", file=sys.stderr)
    if any("cifar10" in c for c in configs):
        print(f"gpu_check: {prepare_cifar(ctx, args.cifar_root)}", file=sys.stderr)
    rows = run_plan(plan, ctx)
    print(describe_machine(ctx))
    print(format_table(rows, time.perf_counter() - start))
    code = exit_code(rows)
    if code or keep:
        print(f"runs, exports and logs: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return code


def describe_machine(ctx: Context) -> str:
    import paddle

    if ctx.device == "cpu":
        return f"device cpu (debug run), Paddle {paddle.__version__}"
    name = paddle.device.cuda.get_device_name()
    major, minor = paddle.device.cuda.get_device_capability()
    return (
        f"{ctx.gpus} GPU(s) used: {name} (compute capability {major}.{minor}), "
        f"Paddle {paddle.__version__}, CUDA {paddle.version.cuda()}"
    )


if __name__ == "__main__":
    sys.exit(main())
