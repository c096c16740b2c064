"""Export a checkpoint's generator as a static-graph Paddle Inference model plus `infer_cfg.yml`.

The graph takes z float32 [N, nz] (and labels int64 [N] for AC-GAN) with any N and returns
float32 images [N, C, H, W] in [0, 1]. Export reloads it with Paddle Inference (and ONNX Runtime
for `--onnx`) and refuses to finish unless it matches the dynamic-graph generator, run on CPU in
float32 whatever the training device; where a GPU is present its predictor is checked as well, at
a tolerance for the TF32 math GPUs use by default.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
from pathlib import Path

import numpy as np
import paddle
import yaml
from paddle import nn
from paddle.static import InputSpec

from paddlegan_lite import checkpoint as ckpt
from paddlegan_lite import inference
from paddlegan_lite.cli import check_output_dir
from paddlegan_lite.config import Config, config_to_dict, model_differences
from paddlegan_lite.errors import UserError
from paddlegan_lite.logger import log
from paddlegan_lite.models import refresh_spectral_norm
from paddlegan_lite.runtime import gpu_available
from paddlegan_lite.train_state import load_generator

MODEL_PREFIX = "inference"  # -> inference.json (inference.pdmodel before PIR) + .pdiparams
ONNX_FILE = "inference.onnx"
ONNX_OPSET = 11
# Largest |exported - dynamic| accepted, in [0, 1] image units. Seen: 3e-8 to 6e-8 (float32
# rounding of reordered sums). One uint8 level is 1/255 = 3.9e-3, so a difference within 1e-4
# cannot change an image visibly, while the faults the check is for are far larger (BatchNorm
# left in training mode: 0.24-0.34 even on generators trained for 3 steps).
# The reference is computed on CPU in float32 whatever the training device, so the check is
# about the export, not the hardware.
TOLERANCE = 1e-4
# The GPU predictor is held to TF32's precision instead: on Ampere and later GPUs Paddle runs
# float32 matmuls and convolutions in TF32 by default (cuBLAS/cuDNN), which keeps 10 of float32's
# 23 mantissa bits, so each product is rounded by up to 2^-11 relative and the errors accumulate
# over every layer's sums: beyond TOLERANCE on a correct export. 1e-2 of the [0, 1] output range
# (2.6 uint8 levels) is far above that rounding and far below a wrong export's difference.
GPU_TOLERANCE = 1e-2
CHECK_BATCH = 8


class ExportError(UserError):
    """An export that cannot be made, or that does not reproduce the dynamic graph."""


def to_unit_range(images):
    """Generator output in [-1, 1] -> [0, 1]."""
    return images * 0.5 + 0.5


class ExportedGenerator(nn.Layer):
    """(z [N, nz], labels int64 [N] for conditional models) -> float32 images [N, C, H, W] in
    [0, 1]: the generator and its post-processing. Traced with the labels input only when the
    model is conditional (export_generator's input specs).

    Floats in [0, 1] rather than uint8: the export check and ONNX Runtime compare floats against
    the dynamic graph with a real tolerance (uint8 rounding would turn 1e-7 into a whole level),
    and float output stays usable for further processing; uint8 is one line on the host.
    """

    def __init__(self, netG: nn.Layer):
        super().__init__()
        self.netG = netG

    def forward(self, z, labels=None):
        return to_unit_range(self.netG(z, labels))


# ---------------------------------------------------------------------- the whole export
def export_model(
    checkpoint: str | Path,
    output_dir: str | Path | None = None,
    cfg: Config | None = None,
    onnx: bool = False,
) -> dict:
    """Checkpoint -> verified model folder (default inference/<run name>); returns its infer config.

    The model is rebuilt from the checkpoint's own config; `cfg` (from `-c`) is only compared
    with it, so a config that would build another model is refused instead of half-loaded.
    """
    checkpoint = ckpt.resolve_checkpoint(checkpoint)
    with on_cpu():  # the export is device-independent; the reference must be CPU float32
        netG, run_cfg, state, _ = load_generator(checkpoint)
    if cfg is not None:
        check_same_model(cfg, run_cfg, checkpoint)
    output_dir = Path(output_dir) if output_dir else Path("inference") / run_cfg.name
    check_output_dir(output_dir, "--output_dir")
    source = {"checkpoint": str(checkpoint.resolve()), "step": int(state.get("step", 0))}
    try:
        (output_dir / ONNX_FILE).unlink(missing_ok=True)  # an earlier export's; would not match
        infer_cfg = export_generator(netG, output_dir, config_to_dict(run_cfg), source)
    except OSError as exc:
        raise ExportError(
            f"cannot write the model to {output_dir} ({exc.strerror or exc})"
        ) from None
    log.info(f"exported {run_cfg.model.name} generator to {output_dir}")

    z, labels = check_inputs(netG, CHECK_BATCH)
    expected = run_dynamic(netG, z, labels)
    check = {"batch_size": CHECK_BATCH, "tolerance": TOLERANCE}
    try:
        check["paddle_inference_max_abs_diff"] = check_paddle_inference(
            output_dir, z, labels, expected
        )
        if gpu_available():  # the GPU predictor is another set of kernels: check it too
            check["gpu_tolerance"] = GPU_TOLERANCE
            check["paddle_inference_gpu_max_abs_diff"] = check_paddle_inference(
                output_dir, z, labels, expected, device="gpu"
            )
    except ExportError as exc:
        (output_dir / inference.INFER_CFG).unlink()  # without it no tool will deploy the model
        raise ExportError(f"{exc}; removed {inference.INFER_CFG} from {output_dir}") from None
    infer_cfg["check"] = check
    write_infer_cfg(output_dir, infer_cfg)
    if onnx:
        onnx_diff = export_onnx(output_dir, infer_cfg, z, labels, expected)
        if onnx_diff is not None:
            infer_cfg["onnx_file"] = ONNX_FILE
            infer_cfg["check"]["onnx_max_abs_diff"] = onnx_diff
            write_infer_cfg(output_dir, infer_cfg)
    return infer_cfg


def check_same_model(cfg: Config, run_cfg: Config, checkpoint: Path) -> None:
    """Refuse a `-c` config whose model section differs from the checkpoint's."""
    diffs = model_differences(cfg, run_cfg)
    if diffs:
        raise ExportError(
            f"the config differs from the one checkpoint {checkpoint} was trained with: "
            f"{', '.join(diffs)}; pass the run's own config (or the same -o overrides), or "
            "leave out -c"
        )


# ---------------------------------------------------------------------- saving
def export_generator(netG: nn.Layer, output_dir: Path, config: dict, source: dict) -> dict:
    """`paddle.jit.save` netG (eval mode) with a dynamic batch dimension, then infer_cfg.yml."""
    output_dir.mkdir(parents=True, exist_ok=True)
    specs = [InputSpec([None, netG.nz], "float32", name="z")]
    if netG.num_classes > 0:
        specs.append(InputSpec([None], "int64", name="labels"))
    wrapper = ExportedGenerator(netG)
    wrapper.eval()
    refresh_spectral_norm(netG)  # jit.save skips the hooks that normalise weights
    paddle.jit.save(wrapper, str(output_dir / MODEL_PREFIX), input_spec=specs)
    infer_cfg = make_infer_cfg(netG, output_dir, config, source)
    write_infer_cfg(output_dir, infer_cfg)
    return infer_cfg


def make_infer_cfg(netG: nn.Layer, output_dir: Path, config: dict, source: dict) -> dict:
    """Everything a deployment needs to feed the model and read its output."""
    model_file = _saved_model_file(output_dir)
    channels, height, width = (int(v) for v in netG.image_shape)
    inputs = [{"name": "z", "dtype": "float32", "shape": [-1, int(netG.nz)]}]
    if netG.num_classes:
        inputs.append(
            {
                "name": "labels",
                "dtype": "int64",
                "shape": [-1],
                "range": [0, int(netG.num_classes) - 1],
            }
        )
    return {
        "format": inference.INFER_CFG_FORMAT,
        "model": config["model"]["name"],
        "nz": int(netG.nz),
        "num_classes": int(netG.num_classes),
        "image_shape": [channels, height, width],
        "value_range": [0.0, 1.0],
        "model_file": model_file,
        "params_file": f"{MODEL_PREFIX}.pdiparams",
        "inputs": inputs,
        "output": {"dtype": "float32", "layout": "NCHW", "shape": [-1, channels, height, width]},
        "latent": inference.LATENT_RULE,
        "source": {**source, "paddle": paddle.__version__},
        "config": config,
    }


def _saved_model_file(output_dir: Path) -> str:
    for suffix in (".json", ".pdmodel"):  # Paddle 3 (PIR) writes .json, earlier versions .pdmodel
        if (output_dir / f"{MODEL_PREFIX}{suffix}").is_file():
            return f"{MODEL_PREFIX}{suffix}"
    raise ExportError(f"paddle.jit.save wrote no {MODEL_PREFIX}.json or .pdmodel in {output_dir}")


def write_infer_cfg(output_dir: Path, infer_cfg: dict) -> Path:
    path = output_dir / inference.INFER_CFG
    try:
        path.write_text(yaml.safe_dump(infer_cfg, sort_keys=False), encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"cannot write {path} ({exc.strerror or exc})") from None
    return path


# ---------------------------------------------------------------------- checking
def check_inputs(netG: nn.Layer, batch_size: int):
    """Fixed noise (seeds 0..batch_size-1) and labels cycling through the classes."""
    z = inference.seed_latents(range(batch_size), netG.nz)
    labels = np.arange(batch_size, dtype=np.int64) % netG.num_classes if netG.num_classes else None
    return z, labels


@contextlib.contextmanager
def on_cpu():
    """Make CPU Paddle's current device for the block, then put the previous one back."""
    previous = paddle.get_device()
    paddle.set_device("cpu")
    try:
        yield
    finally:
        paddle.set_device(previous)


def run_dynamic(netG: nn.Layer, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """The dynamic-graph reference: float32 [N, C, H, W] in [0, 1], computed on CPU in float32
    whatever the current device (a GPU would compute it in TF32; see GPU_TOLERANCE). A netG on
    another device or in another dtype is copied; the caller's is left as it is."""
    with on_cpu(), paddle.no_grad():
        net = netG
        tensors = [*netG.parameters(), *netG.buffers()]
        if not all(t.place.is_cpu_place() and t.dtype == paddle.float32 for t in tensors):
            net = copy.deepcopy(netG).to(device="cpu", dtype="float32")
        place = paddle.CPUPlace()
        args = [paddle.to_tensor(np.asarray(z, np.float32), place=place)]
        if labels is not None:
            args.append(paddle.to_tensor(np.asarray(labels, np.int64), place=place))
        return to_unit_range(net(*args)).numpy()


def check_paddle_inference(
    model_dir: Path, z, labels, expected: np.ndarray, device: str = "cpu"
) -> float:
    """Run the saved model with Paddle Inference (the predictor users get) and compare: within
    TOLERANCE on CPU, GPU_TOLERANCE (TF32) on a GPU."""
    actual = inference.Generator(model_dir, device=device).run(z, labels)
    if device == "cpu":
        return check_close("Paddle Inference", actual, expected)
    return check_close(f"Paddle Inference on {device}", actual, expected, GPU_TOLERANCE)


def check_close(
    what: str, actual: np.ndarray, expected: np.ndarray, tolerance: float = TOLERANCE
) -> float:
    """Max |actual - expected|, logged; an ExportError beyond `tolerance` (or on NaN)."""
    if actual.shape != expected.shape:
        raise ExportError(
            f"{what} output has shape {list(actual.shape)}, the dynamic graph "
            f"{list(expected.shape)}"
        )
    max_diff = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    log.info(
        f"check: {what} vs dynamic graph on {len(expected)} images: max abs diff "
        f"{max_diff:.3g} (tolerance {tolerance:g})"
    )
    if not max_diff <= tolerance:  # `not <=` also catches NaN
        raise ExportError(
            f"the {what} model differs from the dynamic-graph generator by "
            f"{max_diff:.3g} (> tolerance {tolerance:g}): the export is wrong"
        )
    return max_diff


# ---------------------------------------------------------------------- ONNX
def export_onnx(model_dir: Path, infer_cfg: dict, z, labels, expected) -> float | None:
    """Convert to `inference.onnx` with paddle2onnx and check it with ONNX Runtime.

    Returns the max difference, or None (with a message) where the packages are not installed.
    """
    try:
        import onnxruntime
        import paddle2onnx
    except ImportError as exc:
        log.info(
            f"ONNX export skipped: {exc.name} is not installed "
            "(pip install paddle2onnx onnxruntime); the Paddle model is exported"
        )
        return None
    onnx_path = model_dir / ONNX_FILE
    onnx_path.unlink(missing_ok=True)
    failure = run_paddle2onnx(
        paddle2onnx,
        model_dir / infer_cfg["model_file"],
        model_dir / infer_cfg["params_file"],
        onnx_path,
    )
    if failure or not onnx_path.is_file():
        raise ExportError(
            f"paddle2onnx {paddle2onnx.__version__} could not convert the model "
            f"({failure or 'it wrote no file'}); the Paddle Inference model in {model_dir} is "
            "exported and checked, only the ONNX file is missing"
        )
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # its notes on paddle2onnx's unused constants are noise
    session = onnxruntime.InferenceSession(
        str(onnx_path), options, providers=["CPUExecutionProvider"]
    )
    feeds = {"z": z} if labels is None else {"z": z, "labels": labels}
    actual = session.run(None, feeds)[0]
    try:
        max_diff = check_close("ONNX Runtime", actual, expected)
    except ExportError:
        onnx_path.unlink()  # a wrong ONNX file must not be left for someone to deploy
        raise
    log.info(f"saved {onnx_path}")
    return max_diff


def run_paddle2onnx(paddle2onnx, model_file: Path, params_file: Path, onnx_path: Path):
    """Convert; returns None on success, else paddle2onnx's reason as one line.

    paddle2onnx 2.x reports a failed conversion by printing it and calling `sys.exit(-1)`, so its
    printout is captured to recover the reason and SystemExit is caught to keep the process.
    """
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            # optimize_tool="None": the default (polygraphy) pip-installs packages mid-export
            paddle2onnx.export(
                str(model_file),
                str(params_file),
                save_file=str(onnx_path),
                opset_version=ONNX_OPSET,
                optimize_tool="None",
            )
    except (Exception, SystemExit) as exc:  # its C++ parser raises assorted types
        return _paddle2onnx_reason(printed.getvalue()) or inference.error_summary(exc)
    return None


def _paddle2onnx_reason(printed: str) -> str:
    """The first [ERROR] message in paddle2onnx's printout, without colour codes."""
    for line in re.sub(r"\x1b\[[0-9;]*m", "", printed).splitlines():
        if "[ERROR]" in line:
            message = line.split("[ERROR]", 1)[1].strip()
            return message.removeprefix("Failed to convert PaddlePaddle model:").strip()
    return ""
