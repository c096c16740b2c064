"""What tools/eval.py does around the evaluator (evaluation.py): load a generator from a
checkpoint or an exported model folder, take the real images and eval options from a config (the
file named by -c/--data, else the model's own saved config), evaluate, and format and write the
report beside the model.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paddlegan_lite.config import Config, EvalConfig, config_from_dict
from paddlegan_lite.errors import UserError
from paddlegan_lite.evaluation import build_evaluator, generator_fn
from paddlegan_lite.logger import log


# ---------------------------------------------------------------------- the model and its config
@dataclass
class LoadedModel:
    """A generator to evaluate, from whatever source, and what the report says about it."""

    generate_fn: object  # (z [B, nz], labels [B] or None) -> images [B, C, H, W] in [-1, 1]
    nz: int
    num_classes: int
    image_shape: tuple  # (C, H, W)
    config: dict  # the run's saved config
    info: dict  # for the report: source, path, step


def load_checkpoint_model(path, device: str = "auto", weights: str = "auto") -> LoadedModel:
    """A generator from a checkpoint folder (or a run folder: its newest checkpoint), built from
    the checkpoint's own config. weights: "auto" (the EMA weights when the checkpoint has them),
    "ema" or "raw" (G's own)."""
    from paddlegan_lite.checkpoint import resolve_checkpoint
    from paddlegan_lite.ops import accelerate
    from paddlegan_lite.runtime import select_device
    from paddlegan_lite.train_state import load_generator

    path = resolve_checkpoint(path)
    select_device(device)
    netG, run_cfg, state, weights = load_generator(path, weights)
    accelerate(netG)  # the same function, on the fast CPU kernels where they apply
    m = run_cfg.model
    info = {"source": "checkpoint", "path": str(path), "step": int(state.get("step", 0))}
    info["weights"] = weights
    return LoadedModel(
        generator_fn(netG),
        m.nz,
        m.num_classes,
        (m.channels, m.image_size, m.image_size),
        state["config"],
        info,
    )


def load_model_dir(model_dir, device: str = "cpu") -> LoadedModel:
    """A generator from an exported inference folder (Paddle Inference, no training code)."""
    from paddlegan_lite.inference import Generator

    # no batch cap of its own: the evaluator hands it eval.batch_size images per call
    device = "cpu" if device == "auto" else device
    generator = Generator(model_dir, device=device, batch_size=sys.maxsize)

    def generate(z, labels):
        return generator.run(z, labels) * np.float32(2.0) - np.float32(1.0)  # [0, 1] -> [-1, 1]

    cfg = generator.cfg
    info = {"source": "model_dir", "path": str(generator.model_dir)}
    info["step"] = int(cfg.get("source", {}).get("step", 0))
    return LoadedModel(
        generate,
        generator.nz,
        generator.num_classes,
        generator.image_shape,
        cfg.get("config") or {},
        info,
    )


def model_config(model: LoadedModel, overrides: list[str] | None = None) -> Config:
    """The model's own saved config with `overrides` (-o data.*, eval.*): the real images and the
    eval options when no config file names them, so by default a run's checkpoints are scored
    with the eval options it trained with."""
    if not model.config:
        raise UserError(f"{model.info['path']} holds no config: name the data with --data")
    return config_from_dict(model.config, source=model.info["path"], overrides=overrides)


# ---------------------------------------------------------------------- evaluation and report
def other_data_warning(saved_config: dict, data_cfg, channels: int | None = None) -> str | None:
    """A warning when the model's saved config names other data than `data_cfg` (data.name,
    data.root; with `channels`, the model.channels of the config `data_cfg` came from), else
    None: the scores would then compare the model with images it never learned."""
    saved_data, saved_model = saved_config.get("data") or {}, saved_config.get("model") or {}
    diffs = []
    if "name" in saved_data and saved_data["name"] != data_cfg.name:
        diffs.append(f"data.name {saved_data['name']} vs {data_cfg.name}")
    if "root" in saved_data and _same_path(saved_data["root"], data_cfg.root) is False:
        diffs.append(f"data.root {saved_data['root']} vs {data_cfg.root}")
    if channels is not None and saved_model.get("channels", channels) != channels:
        diffs.append(f"channels {saved_model['channels']} vs {channels}")
    if not diffs:
        return None
    return (
        f"eval: the model was trained on other data than the reference images "
        f"({'; '.join(diffs)}, trained vs reference): its scores measure it against data it "
        "did not learn"
    )


def _same_path(a, b) -> bool | None:
    try:
        return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def run_eval(
    model: LoadedModel, data_cfg, options: EvalConfig, data_channels: int | None = None
) -> dict:
    """Evaluate `model` on the data of `data_cfg` and the real floor: the tool's report dict.

    `data_channels`: model.channels of the config `data_cfg` came from, when not the model's own
    (compared with the model's in the other-data warning)."""
    start = time.perf_counter()
    warning = other_data_warning(model.config, data_cfg, data_channels)
    if warning:
        log.warning(warning)
    channels, size, width = model.image_shape
    if size != width:
        raise UserError(f"the model makes {size}x{width} images; only square images are supported")
    evaluator = build_evaluator(data_cfg, size, channels, model.nz, model.num_classes, options)
    if model.num_classes and model.num_classes != evaluator.real.train.num_classes:
        raise UserError(
            f"the model has {model.num_classes} classes but the data has "
            f"{evaluator.real.train.num_classes}: evaluate on the data it was trained on"
        )
    generated = evaluator(model.generate_fn)
    floor = evaluator.floor()
    ex = evaluator.extractor
    return {
        "model": {
            **model.info,
            "name": model.config.get("model", {}).get("name", "?"),
            "num_classes": model.num_classes,
            "image_shape": list(model.image_shape),
        },
        "data": {
            "source": evaluator.real.train.source,
            "reference_images": len(evaluator.real.reference),
            "heldout": evaluator.real.note,
        },
        "extractor": {
            "kind": ex.kind,
            "description": ex.describe(),
            **({"test_accuracy": ex.test_accuracy} if ex.kind == "classifier" else {}),
        },
        "num_samples": options.num_samples,
        "seed": options.seed,
        "generated": generated,
        "floor": floor,
        "seconds": round(time.perf_counter() - start, 1),
    }


_ROWS = (  # (key, label, format, scale)
    ("fid", "FID", "{:.3f}", 1.0),
    ("kid", "KID", "{:.4g}", 1.0),  # its scale follows the features': 1e-3 to 1
    ("is", "IS", "{:.3f}", 1.0),
    ("class_acc", "class accuracy", "{:.4f}", 1.0),
    ("class_min_share", "rarest class", "{:.2f}", 1.0),  # share x classes; 1.0 = uniform
    ("precision", "precision", "{:.4f}", 1.0),
    ("recall", "recall", "{:.4f}", 1.0),
)


def format_report(report: dict) -> str:
    """A small text table: generated vs the real held-out floor, then what was measured."""
    columns = (report["generated"], report["floor"])
    lines = [f"{'metric':<16}{'generated':>20}{'floor (real held-out)':>24}"]
    for key, label, fmt, scale in _ROWS:
        if key not in columns[0]:
            continue
        cells = [_cell(values, key, fmt, scale) for values in columns]
        lines.append(f"{label:<16}{cells[0]:>20}{cells[1]:>24}")
    lines.append(f"{'images':<16}{report['num_samples']:>20}{report['floor']['num_samples']:>24}")
    if "class_hist" in columns[0]:
        for name, values in zip(("generated", "floor"), columns):
            shares = " ".join(f"{100 * x:.0f}" for x in values["class_hist"])
            lines.append(f"classes seen in {name} images (% per class 0..K-1): {shares}")
    model, data = report["model"], report["data"]
    lines += [
        f"model: {model['name']} from {model['source']} {model['path']} (step {model['step']})",
        f"data: {data['source']}; reference: {data['reference_images']} training images; "
        f"held-out: {data['heldout']}",
        f"features: {report['extractor']['description']}",
    ]
    return "\n".join(lines)


def _cell(values: dict, key: str, fmt: str, scale: float) -> str:
    if key not in values:
        return "-"
    text = fmt.format(values[key] * scale)
    std = {"kid": "kid_std", "is": "is_std"}.get(key)
    return f"{text} ± {fmt.format(values[std] * scale)}" if std in values else text


def default_output(info: dict) -> Path:
    """<run folder>/eval/step_<step>.json for checkpoints, <model_dir>/eval.json for exports."""
    path = Path(info["path"])
    if info["source"] == "model_dir":
        return path / "eval.json"
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return run_dir / "eval" / f"step_{info['step']:08d}.json"


def write_report(report: dict, path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write the report {path} ({exc.strerror or exc})") from None
    return path
