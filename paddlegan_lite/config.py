"""Typed run configuration: every default lives here, YAML files hold only what differs.

`load_config(path, overrides)` reads a YAML file (with optional `_base_` inheritance), applies
`-o key.sub=value` overrides and validates the result once: unknown keys and wrong types raise a
`ConfigError` that names the key, the file and the valid choices. Code after that receives plain
dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
import os
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from paddlegan_lite.errors import UserError

MODEL_NAMES = ("mlp_gan", "dcgan", "acgan")
LOSS_NAMES = ("vanilla", "lsgan", "hinge")
DATASET_NAMES = ("mnist", "cifar10", "folder")
AMP_MODES = ("off", "fp16", "bf16")  # train.amp


class ConfigError(UserError):
    """A config file or override that cannot be used as written."""


@dataclass
class ModelConfig:
    name: str = "dcgan"  # mlp_gan | dcgan | acgan
    nz: int = 100  # latent size; noise is standard normal N(0, 1)
    image_size: int = 64  # generated images are image_size x image_size
    channels: int = 1  # image channels (1 gray, 3 RGB); data is converted to this
    ngf: int = 64  # generator width (DCGAN: filters of the last hidden layer)
    ndf: int = 64  # discriminator width (DCGAN: filters of the first layer)
    hidden: int = 256  # MLP GAN hidden units
    num_classes: int = 0  # > 0 for conditional models (AC-GAN)
    init_std: float = 0.02  # N(0, init_std) init of conv weights (DCGAN paper); 0 keeps Paddle's


@dataclass
class DataConfig:
    name: str = "mnist"  # mnist | cifar10 | folder
    root: str = "data/mnist"  # folder holding the dataset files (or images for `folder`)
    download: bool = True  # try the official download when files are missing
    skip_bad: bool = False  # image folders: skip unreadable files (warn with a count)
    num_workers: int = 0  # DataLoader worker processes (0: load in the main process)


@dataclass
class TrainConfig:
    epochs: int = 5  # passes over the dataset (0: run until max_steps)
    max_steps: int = 0  # stop after this many steps (0: no cap); for smoke tests
    batch_size: int = 64  # images per step and process (the last partial batch is dropped)
    loss: str = "vanilla"  # vanilla | lsgan | hinge (see losses.py)
    real_label: float = 1.0  # target for real images in the D loss (0.9: one-sided smoothing)
    d_steps: int = 1  # discriminator steps per generator step
    cls_weight: float = 1.0  # AC-GAN: weight of the class cross-entropy terms
    device: str = "auto"  # auto (GPU when Paddle has CUDA and a device), cpu, gpu, gpu:N
    output_dir: str = ""  # run folder; empty means output/<config file stem>
    log_interval: int = 50  # steps between log lines / VisualDL scalars / metrics.jsonl rows
    sample_interval: int = 500  # steps between sample grids (also written at the end)
    save_interval: int = 1000  # steps between checkpoints (also written at the end and on Ctrl-C)
    keep_checkpoints: int = 3  # newest step checkpoints kept on disk
    num_samples: int = 64  # images in the fixed-noise sample grid (AC-GAN: rounded to classes)
    ema_decay: float = 0.0  # > 0: keep an EMA of G's weights for samples, eval and export
    amp: str = "off"  # off | fp16 | bf16: GPU mixed precision (auto_cast O1; fp16 + GradScaler)


@dataclass
class EvalConfig:
    interval: int = 0  # steps between FID/KID evaluations while training (0: off)
    num_samples: int = 2000  # generated images per evaluation
    batch_size: int = 250  # images per generator/extractor batch
    extractor: str = "classifier"  # classifier (trained on the data, cached) | inception
    inception_weights: str = ""  # InceptionV3 FID weights (.safetensors/.npz), for `inception`
    classifier_steps: int = 600  # training steps of the classifier extractor on first use
    seed: int = 0  # fixes the noise (and labels) of every evaluation: numbers compare over time
    cache_dir: str = ""  # classifier and real-feature cache; empty: ~/.cache/paddlegan_lite


@dataclass
class AdamConfig:
    lr: float = 2e-4  # learning rate (constant)
    beta1: float = 0.5  # Adam momentum; 0.5 as in the DCGAN paper
    beta2: float = 0.999  # Adam second-moment decay


@dataclass
class OptimizerConfig:
    g: AdamConfig = field(default_factory=AdamConfig)  # generator's Adam
    d: AdamConfig = field(default_factory=AdamConfig)  # discriminator's Adam
    multi_tensor: bool = False  # one fused Adam update for all of a net's parameters


@dataclass
class DistributedConfig:
    """Options that matter only under `python -m paddle.distributed.launch` (several processes)."""

    scale_lr: bool = False  # learning rates x number of processes (linear scaling rule; logged)
    sync_bn: bool = False  # GPU: BatchNorm statistics over the global batch (SyncBatchNorm)


@dataclass
class Config:
    seed: int = 42  # seeds init, data order and every step's noise: runs are repeatable
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    name: str = ""  # run name; defaults to the config file stem


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Read, merge, override and validate a config file into a `Config`."""
    path = Path(path)
    raw = _read_yaml_with_base(path, seen=())
    for item in overrides or []:
        _apply_override(raw, item, path)
    cfg = _build(Config, raw, where="", source=str(path))
    if not cfg.name:
        cfg.name = path.stem
    if not cfg.train.output_dir:
        cfg.train.output_dir = str(Path("output") / cfg.name)
    _check_values(cfg, str(path))
    return cfg


def config_from_dict(raw: dict, source: str = "<dict>") -> Config:
    """Validate an already-parsed mapping (used for configs saved in checkpoints)."""
    cfg = _build(Config, raw, where="", source=source)
    _check_values(cfg, source)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def _read_yaml_with_base(path: Path, seen: tuple) -> dict:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: _base_ chain loops back to itself")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_one_line(exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: top level must be a mapping of sections, got {type(raw).__name__}"
        )
    base_name = raw.pop("_base_", None)
    if base_name is None:
        return raw
    if not isinstance(base_name, str):
        raise ConfigError(f"{path}: _base_ must be a file name")
    base = _read_yaml_with_base(path.parent / base_name, seen + (path.resolve(),))
    return _merge(base, raw)


def _merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(raw: dict, item: str, path: Path) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text  # an unquoted string that YAML cannot parse is taken as written
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls, raw, where: str, source: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{where}' must be a section (mapping), got {_short(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else str(unknown[0])
        raise ConfigError(f"{source}: unknown key '{key}' (valid: {', '.join(names)})")
    values = {}
    for name in names:
        if name not in raw:
            continue
        key = f"{where}.{name}" if where else name
        values[name] = _coerce(hints[name], raw[name], key, source)
    return cls(**values)


def _coerce(kind, value, key: str, source: str):
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, key, source)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(
        f"{source}: '{key}' must be {kind.__name__}, got {_short(value)} ({type(value).__name__})"
    )


def _check_values(cfg: Config, source: str) -> None:
    m, t, e = cfg.model, cfg.train, cfg.eval
    _check_choice(m.name, MODEL_NAMES, "model.name", source)
    _check_choice(t.loss, LOSS_NAMES, "train.loss", source)
    _check_choice(cfg.data.name, DATASET_NAMES, "data.name", source)
    _check_choice(e.extractor, ("classifier", "inception"), "eval.extractor", source)
    _check_choice(m.channels, (1, 3), "model.channels", source)
    _check_choice(t.amp, AMP_MODES, "train.amp", source)
    inf = math.inf
    # (key, value, lowest allowed, highest allowed, whether the lowest itself is allowed)
    ranges = [
        ("seed", cfg.seed, 0, 2**32 - 1, True),  # what paddle.seed and numpy accept
        ("model.nz", m.nz, 0, inf, False),
        ("model.image_size", m.image_size, 0, inf, False),
        ("model.ngf", m.ngf, 0, inf, False),
        ("model.ndf", m.ndf, 0, inf, False),
        ("model.hidden", m.hidden, 0, inf, False),
        ("model.num_classes", m.num_classes, 0, inf, True),
        ("model.init_std", m.init_std, 0, 1, True),
        ("data.num_workers", cfg.data.num_workers, 0, inf, True),
        ("train.epochs", t.epochs, 0, inf, True),
        ("train.max_steps", t.max_steps, 0, inf, True),
        ("train.batch_size", t.batch_size, 0, inf, False),
        ("train.real_label", t.real_label, 0, 1, False),
        ("train.d_steps", t.d_steps, 0, inf, False),
        ("train.cls_weight", t.cls_weight, 0, inf, True),
        ("train.log_interval", t.log_interval, 0, inf, False),
        ("train.sample_interval", t.sample_interval, 0, inf, False),
        ("train.save_interval", t.save_interval, 0, inf, False),
        ("train.keep_checkpoints", t.keep_checkpoints, 0, inf, False),
        ("train.num_samples", t.num_samples, 0, inf, False),
        ("train.ema_decay", t.ema_decay, 0, 0.999999, True),
        ("eval.interval", e.interval, 0, inf, True),
        ("eval.num_samples", e.num_samples, 10, inf, True),
        ("eval.batch_size", e.batch_size, 0, inf, False),
        ("eval.classifier_steps", e.classifier_steps, 0, inf, True),
    ]
    for side, adam in (("g", cfg.optimizer.g), ("d", cfg.optimizer.d)):
        ranges += [
            (f"optimizer.{side}.lr", adam.lr, 0, 1, False),
            (f"optimizer.{side}.beta1", adam.beta1, 0, 0.999999, True),
            (f"optimizer.{side}.beta2", adam.beta2, 0, 0.999999, True),
        ]
    for key, value, low, high, low_ok in ranges:
        above = low <= value if low_ok else low < value
        if not (math.isfinite(value) and above and value <= high):
            if high == inf:
                bound = f"{'>=' if low_ok else '>'} {low}"
            else:
                bound = f"in {'[' if low_ok else '('}{low}, {high}]"
            raise ConfigError(f"{source}: '{key}' must be {bound}, got {value}")
    if t.epochs == 0 and t.max_steps == 0:
        raise ConfigError(f"{source}: set 'train.epochs' or 'train.max_steps' above 0")
    if m.name == "acgan" and m.num_classes < 2:
        raise ConfigError(f"{source}: 'model.num_classes' must be >= 2 for acgan")
    if m.name != "acgan" and m.num_classes:
        raise ConfigError(f"{source}: 'model.num_classes' is only for acgan; set it to 0")
    device = t.device
    if not (device in ("auto", "cpu", "gpu") or (device[:4] == "gpu:" and device[4:].isdigit())):
        raise ConfigError(
            f"{source}: 'train.device' must be auto, cpu, gpu or gpu:N, got {device!r}"
        )


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring = 2, 4, 4, 60


def _short(value) -> str:
    """A value for an error line: nested or huge values (YAML alias bombs) cut short."""
    text = _SHORT.repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _check_choice(value: str, choices: tuple, key: str, source: str) -> None:
    if value not in choices:
        valid = ", ".join(str(c) for c in choices)
        raise ConfigError(f"{source}: '{key}' is {_short(value)}; valid: {valid}")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
