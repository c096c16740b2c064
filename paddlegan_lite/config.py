"""Typed run configuration: every default lives here, YAML files hold only what differs.

`load_config(path, overrides)` reads a YAML file (with optional `_base_` inheritance), applies
`-o key.sub=value` overrides and validates the result once: unknown keys and wrong types raise a
`ConfigError` that names the key, the file and the valid choices. Code after that receives plain
dataclasses. Every check of an option lives here: `check_run` has those that need the machine
(device, processes), `check_eval_options` those of eval options about to run, and
`check_overrides` validates `-o` alone for a tool whose config comes later (a model's own).

A key written twice in one YAML mapping is an error (YAML itself would silently keep the last);
a key given twice in `-o` is not: overrides apply left to right, so the later one wins, as with
any command line. A run that cannot fit in this machine's memory is refused at load time, from a
closed-form estimate of its nets, optimizer state, activations and in-memory data
(`estimate_memory`), before anything is allocated.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from paddlegan_lite.errors import UserError

MODEL_NAMES = ("mlp_gan", "dcgan", "acgan", "sngan")
LOSS_NAMES = ("vanilla", "lsgan", "hinge", "wgan")
DATASET_NAMES = ("mnist", "cifar10", "folder")
AMP_MODES = ("off", "fp16", "bf16")  # train.amp
DIFFAUGMENT_POLICIES = ("color", "translation", "cutout")  # train.diffaugment (augment.py)
LR_DECAYS = ("", "linear")  # optimizer.lr_decay (trainer.lr_factor)
SPECTRAL_NORM_MODES = ("", "d", "gd")  # model.spectral_norm: off, D, G and D
EXTRACTORS = ("classifier", "inception")  # eval.extractor (extractors.py)
EVAL_MIN_SAMPLES = 10  # eval.num_samples: fewer leaves IS splits and k-NN balls without meaning
WEIGHT_CHOICES = ("auto", "ema", "raw")  # a checkpoint's generator: EMA if kept, EMA, G's own
MAX_DEPTH = 20  # YAML nesting refused beyond this (a config needs 4: root, optimizer, g, lr)
# Widths, sizes and batch sizes above this are refused outright: no machine holds such a tensor,
# and it keeps the memory estimate's arithmetic within float range.
DIM_MAX = 2**31 - 1


class ConfigError(UserError):
    """A config file or override that cannot be used as written."""


@dataclass
class ModelConfig:
    name: str = "dcgan"  # mlp_gan | dcgan | acgan | sngan
    nz: int = 100  # latent size; noise is standard normal N(0, 1)
    image_size: int = 64  # generated images are image_size x image_size
    channels: int = 1  # image channels (1 gray, 3 RGB); data is converted to this
    ngf: int = 64  # generator width (DCGAN: filters of the last hidden layer)
    ndf: int = 64  # discriminator width (DCGAN: filters of the first layer)
    hidden: int = 256  # MLP GAN hidden units
    num_classes: int = 0  # classes of a conditional model: acgan >= 2; dcgan, sngan 0 (off) or >= 2
    init_std: float = 0.02  # N(0, init_std) init of conv weights (DCGAN paper); 0 keeps Paddle's
    spectral_norm: str = ""  # "" off | d: D's conv/linear weights | gd: G's too (Miyato 2018)
    dual_projection: bool = False  # conditional sngan: D's projection also classifies (Han 2021)


@dataclass
class DataConfig:
    name: str = "mnist"  # mnist | cifar10 | folder
    root: str = "data/mnist"  # folder holding the dataset files (or images for `folder`)
    download: bool = True  # try the official download when files are missing
    skip_bad: bool = False  # image folders: skip unreadable files (warn with a count)
    num_workers: int = 0  # DataLoader worker processes (0: load in the main process)
    hflip: bool = False  # mirror real images left-right at random (photos; not digits or text)


@dataclass
class TrainConfig:
    epochs: int = 5  # passes over the dataset (0: run until max_steps)
    max_steps: int = 0  # stop after this many steps (0: no cap); for smoke tests
    max_minutes: float = 0.0  # stop (and save) once training has run this long (0: no limit)
    batch_size: int = 64  # images per step and process (the last partial batch is dropped)
    loss: str = "vanilla"  # vanilla | lsgan | hinge | wgan (see losses.py)
    real_label: float = 1.0  # target for real images in the D loss (0.9: one-sided smoothing)
    d_steps: int = 1  # discriminator steps per generator step
    cls_weight: float = 1.0  # AC-GAN, dual projection: weight of the class cross-entropy terms
    gp_weight: float = 0.0  # > 0: WGAN-GP gradient penalty on D, with this weight (10 in the paper)
    r1_gamma: float = 0.0  # > 0: R1 penalty on D's gradient at real images, gamma / 2 * ||grad||^2
    r1_interval: int = 1  # R1 every this many D steps, scaled by it (lazy, as StyleGAN2)
    device: str = "auto"  # auto (GPU when Paddle has CUDA and a device), cpu, gpu, gpu:N
    output_dir: str = ""  # run folder; empty means output/<config file stem>
    log_interval: int = 50  # steps between log lines / VisualDL scalars / metrics.jsonl rows
    sample_interval: int = 500  # steps between sample grids (also written at the end)
    save_interval: int = 1000  # steps between checkpoints (also written at the end and on Ctrl-C)
    keep_checkpoints: int = 3  # newest step checkpoints kept on disk
    num_samples: int = 64  # images in the fixed-noise sample grid (AC-GAN: rounded to classes)
    ema_decay: float = 0.0  # > 0: keep an EMA of G's weights for samples, eval and export
    amp: str = "off"  # off | fp16 | bf16: GPU mixed precision (auto_cast O1; fp16 + GradScaler)
    threads: int = 0  # CPU math threads per process; 0: OMP_NUM_THREADS if set, else all cores
    deterministic: bool = False  # deterministic GPU kernels (cuDNN): exact resume, some speed lost
    diffaugment: str = ""  # DiffAugment policies, e.g. color,translation,cutout; "": off


@dataclass
class EvalConfig:
    interval: int = 0  # steps between FID/KID evaluations while training (0: off)
    num_samples: int = 2000  # generated images per evaluation
    batch_size: int = 250  # images per generator/extractor batch
    extractor: str = "classifier"  # classifier (trained on the data, cached) | inception
    inception_weights: str = ""  # InceptionV3 FID weights (.safetensors/.npz), for `inception`
    classifier_steps: int = 0  # classifier extractor's training steps on first use; 0: its recipe's
    seed: int = 0  # fixes the noise (and labels) of every evaluation: numbers compare over time
    cache_dir: str = ""  # classifier and real-feature cache; empty: ~/.cache/paddlegan_lite


@dataclass
class AdamConfig:
    lr: float = 2e-4  # learning rate (at the start: see optimizer.lr_decay)
    beta1: float = 0.5  # Adam momentum; 0.5 as in the DCGAN paper
    beta2: float = 0.999  # Adam second-moment decay


@dataclass
class OptimizerConfig:
    g: AdamConfig = field(default_factory=AdamConfig)  # generator's Adam
    d: AdamConfig = field(default_factory=AdamConfig)  # discriminator's Adam
    multi_tensor: bool = False  # one fused Adam update for all of a net's parameters
    lr_decay: str = ""  # "": constant | linear: both learning rates fall to 0 at the last step


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
        _apply_override(raw, item)
    cfg = _build(Config, raw, where="", source=str(path))
    if not cfg.name:
        cfg.name = path.stem
    if not cfg.train.output_dir:
        cfg.train.output_dir = str(Path("output") / cfg.name)
    _check_values(cfg, str(path))
    check_memory(cfg, str(path))
    return cfg


def config_from_dict(
    raw: dict, source: str = "<dict>", overrides: list[str] | None = None
) -> Config:
    """Validate an already-parsed mapping (used for configs saved in checkpoints), with optional
    `-o` overrides applied to a copy of it.

    Only the weights must fit here: such a config builds nets (export, eval), it does not train.
    """
    raw = copy.deepcopy(raw)
    for item in overrides or []:
        _apply_override(raw, item)
    cfg = _build(Config, raw, where="", source=source)
    _check_values(cfg, source)
    check_memory(cfg, source, training=False)
    return cfg


def check_overrides(
    overrides: list[str], sections: tuple[str, ...], why: str = "", source: str = "-o"
) -> Config:
    """Validate `-o` overrides on their own, over the defaults: each key must be in one of
    `sections` (else refused, with `why`), known, of its type and in range; returns the defaults
    with them applied.

    For a tool whose config arrives later (tools/eval.py: the model's saved config), so that a
    typo is refused before anything loads; what needs the whole config is checked again then.
    """
    raw = {}
    for item in overrides:
        one = {}
        _apply_override(one, item)  # refuses what is not section.key=value
        if next(iter(one)) not in sections:
            allowed = " and ".join(f"{name}.*" for name in sections)
            reason = f" ({why})" if why else ""
            raise ConfigError(f"override '{item}': only {allowed} keys apply here{reason}")
        _apply_override(raw, item)
    cfg = _build(Config, raw, where="", source=source)
    _check_values(cfg, source)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def model_differences(cfg: Config, saved: Config) -> list[str]:
    """`model.<key>=<here> (checkpoint: <saved>)` for each model option that differs."""
    here, there = config_to_dict(cfg)["model"], config_to_dict(saved)["model"]
    return [
        f"model.{k}={here[k]!r} (checkpoint: {there[k]!r})" for k in there if here[k] != there[k]
    ]


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
        raw = _load_yaml(text, str(path)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_one_line(exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: top level must be a mapping of sections, got {type(raw).__name__}"
        )
    base_name = raw.pop("_base_", None)
    if base_name is None:
        return raw
    if not isinstance(base_name, str) or not base_name.strip():
        raise ConfigError(f"{path}: _base_ must be a file name, got {_short(base_name)}")
    base_path = path.parent / base_name
    if not os.path.exists(base_path):  # os.path: False, not an OSError, for a name too long
        raise ConfigError(
            f"{path}: _base_ {_short(base_name)} not found (looked in "
            f"{os.path.abspath(path.parent)})"
        )
    base = _read_yaml_with_base(base_path, seen + (path.resolve(),))
    return _merge(base, raw)


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses what safe_load passes over in silence: a key given twice in
    one mapping (all but the last would be dropped) and nesting deeper than MAX_DEPTH (which
    would end in a RecursionError)."""

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.name = self.source = source  # yaml's own messages then name the file too
        self.node_keys = []  # per node being composed: its key (str), item index (int) or None

    def compose_node(self, parent, index):
        if len(self.node_keys) >= MAX_DEPTH:
            line = self.peek_event().start_mark.line + 1
            raise ConfigError(
                f"{self.source}: line {line}: nested deeper than {MAX_DEPTH} levels "
                "(a config has sections of keys)"
            )
        # a mapping value is composed with its key node as index, a list item with its position
        self.node_keys.append(index.value if isinstance(index, yaml.ScalarNode) else index)
        try:
            return super().compose_node(parent, index)
        finally:
            self.node_keys.pop()

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        first_line = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # `<<: *base` merge keys may be overridden: that is what they are for
            line = key_node.start_mark.line + 1
            key = (key_node.tag, key_node.value)
            if key in first_line:
                where = [str(k) for k in self.node_keys if isinstance(k, str)] + [key_node.value]
                raise ConfigError(
                    f"{self.source}: line {line}: key {_short('.'.join(where))} given twice "
                    f"(also on line {first_line[key]}); YAML would keep only the last"
                )
            first_line[key] = line
        return node


def _load_yaml(text: str, source: str):
    """Like yaml.safe_load, with _ConfigLoader's checks; `source` names the text in errors."""
    loader = _ConfigLoader(text, source)
    try:
        return loader.get_single_data()
    except RecursionError:  # a backstop: MAX_DEPTH stops nesting long before Python's limit
        raise ConfigError(f"{source}: nested too deeply to read") from None
    except ValueError as exc:  # a scalar Python cannot hold: an int of 5,000 digits, month 13
        if "integer string conversion" in str(exc):
            raise yaml.YAMLError("an integer of more than 4300 digits") from None
        raise yaml.YAMLError(_one_line(exc)[:200]) from None
    finally:
        loader.dispose()


def _merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(raw: dict, item: str) -> None:
    """Set one `section.key=value` in `raw`; a later override of the same key wins."""
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override '{item}' must look like section.key=value")
    try:
        value = _load_yaml(text, f"override '{item}'") if text.strip() else ""
    except yaml.YAMLError:
        value = text  # an unquoted string that YAML cannot parse is taken as written
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
        node = child
    if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
        value = _merge(node[parts[-1]], value)  # -o model={ngf: 8} keeps the file's other keys
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
        if isinstance(value, bool):  # YAML 1.1 reads a bare off/on (yes/no) as a bool
            return "on" if value else "off"
    raise ConfigError(
        f"{source}: '{key}' must be {kind.__name__}, got {_short(value)} ({type(value).__name__})"
    )


def _check_values(cfg: Config, source: str) -> None:
    m, t, e = cfg.model, cfg.train, cfg.eval
    _check_choice(m.name, MODEL_NAMES, "model.name", source)
    _check_choice(t.loss, LOSS_NAMES, "train.loss", source)
    _check_choice(cfg.data.name, DATASET_NAMES, "data.name", source)
    _check_choice(m.channels, (1, 3), "model.channels", source)
    _check_choice(t.amp, AMP_MODES, "train.amp", source)
    for policy in diffaugment_policies(t.diffaugment):
        _check_choice(policy, DIFFAUGMENT_POLICIES, "train.diffaugment", source)
    if m.spectral_norm not in SPECTRAL_NORM_MODES:
        raise ConfigError(
            f"{source}: 'model.spectral_norm' is {_short(m.spectral_norm)}; valid: \"\" (off), "
            "d (discriminator), gd (generator and discriminator)"
        )
    inf = math.inf
    ranges = [  # see _check_ranges
        ("seed", cfg.seed, 0, 2**32 - 1, True),  # what paddle.seed and numpy accept
        ("model.nz", m.nz, 0, DIM_MAX, False),
        ("model.image_size", m.image_size, 0, DIM_MAX, False),
        ("model.ngf", m.ngf, 0, DIM_MAX, False),
        ("model.ndf", m.ndf, 0, DIM_MAX, False),
        ("model.hidden", m.hidden, 0, DIM_MAX, False),
        ("model.num_classes", m.num_classes, 0, DIM_MAX, True),
        ("model.init_std", m.init_std, 0, 1, True),
        ("data.num_workers", cfg.data.num_workers, 0, inf, True),
        ("train.epochs", t.epochs, 0, inf, True),
        ("train.max_steps", t.max_steps, 0, inf, True),
        ("train.max_minutes", t.max_minutes, 0, inf, True),
        ("train.batch_size", t.batch_size, 0, DIM_MAX, False),
        ("train.real_label", t.real_label, 0, 1, False),
        ("train.d_steps", t.d_steps, 0, inf, False),
        ("train.cls_weight", t.cls_weight, 0, inf, True),
        ("train.gp_weight", t.gp_weight, 0, inf, True),
        ("train.r1_gamma", t.r1_gamma, 0, inf, True),
        ("train.r1_interval", t.r1_interval, 0, inf, False),
        ("train.log_interval", t.log_interval, 0, inf, False),
        ("train.sample_interval", t.sample_interval, 0, inf, False),
        ("train.save_interval", t.save_interval, 0, inf, False),
        ("train.keep_checkpoints", t.keep_checkpoints, 0, inf, False),
        ("train.num_samples", t.num_samples, 0, DIM_MAX, False),
        ("train.ema_decay", t.ema_decay, 0, 0.999999, True),
        ("train.threads", t.threads, 0, 4096, True),
    ]
    for side, adam in (("g", cfg.optimizer.g), ("d", cfg.optimizer.d)):
        ranges += [
            (f"optimizer.{side}.lr", adam.lr, 0, 1, False),
            (f"optimizer.{side}.beta1", adam.beta1, 0, 0.999999, True),
            (f"optimizer.{side}.beta2", adam.beta2, 0, 0.999999, True),
        ]
    _check_ranges(ranges, source)
    _check_eval(e, source, evaluating=e.interval > 0)
    if t.epochs == 0 and t.max_steps == 0 and t.max_minutes == 0:
        raise ConfigError(
            f"{source}: set 'train.epochs', 'train.max_steps' or 'train.max_minutes' above 0"
        )
    _check_choice(cfg.optimizer.lr_decay, LR_DECAYS, "optimizer.lr_decay", source)
    if cfg.optimizer.lr_decay and t.epochs == 0 and t.max_steps == 0:
        raise ConfigError(
            f"{source}: 'optimizer.lr_decay' {cfg.optimizer.lr_decay} needs the run's length in "
            "steps: set 'train.epochs' or 'train.max_steps' above 0"
        )
    if m.name == "acgan" and m.num_classes < 2:
        raise ConfigError(f"{source}: 'model.num_classes' must be >= 2 for acgan")
    if m.name in ("dcgan", "sngan") and m.num_classes == 1:
        raise ConfigError(
            f"{source}: 'model.num_classes' must be 0 (unconditional) or >= 2 for {m.name}, got 1"
        )
    if m.dual_projection and not (m.name == "sngan" and m.num_classes >= 2):
        raise ConfigError(
            f"{source}: 'model.dual_projection' is for the projection D of a conditional sngan "
            f"(model.name: sngan, model.num_classes >= 2), got {m.name} with "
            f"num_classes {m.num_classes}"
        )
    if m.name == "mlp_gan" and m.num_classes:
        raise ConfigError(
            f"{source}: 'model.num_classes' is for acgan, dcgan and sngan; set it to 0 for mlp_gan"
        )
    size = m.image_size  # what models/*.py can build: one stride-2 layer per doubling
    if m.name in ("dcgan", "sngan") and (size < 8 or size & (size - 1)):
        raise ConfigError(
            f"{source}: 'model.image_size' must be a power of two >= 8 for {m.name} (8, 16, "
            f"32, 64, ...), got {size}"
        )
    if m.name == "acgan" and size % 4:
        raise ConfigError(
            f"{source}: 'model.image_size' must be a multiple of 4 for acgan, got {size}"
        )
    device = t.device
    if not (device in ("auto", "cpu", "gpu") or (device[:4] == "gpu:" and device[4:].isdigit())):
        raise ConfigError(
            f"{source}: 'train.device' must be auto, cpu, gpu or gpu:N, got {device!r}"
        )


def _check_ranges(ranges: list, source: str) -> None:
    """Refuse the first of (key, value, lowest allowed, highest allowed, whether the lowest itself
    is allowed) whose value is outside its range."""
    inf = math.inf
    for key, value, low, high, low_ok in ranges:
        above = low <= value if low_ok else low < value
        finite = not isinstance(value, float) or math.isfinite(value)  # ints may be any size
        if not (finite and above and value <= high):
            if high == DIM_MAX and value > high:
                bound = f"<= {DIM_MAX}, the most a tensor dimension may hold"
            elif high in (inf, DIM_MAX):
                bound = f"{'>=' if low_ok else '>'} {low}"
            else:
                bound = f"in {'[' if low_ok else '('}{low}, {high}]"
            raise ConfigError(f"{source}: '{key}' must be {bound}, got {_short(value)}")


def _check_eval(e: EvalConfig, source: str, evaluating: bool) -> None:
    """The eval section; `evaluating`: these options will run (what only matters then)."""
    _check_choice(e.extractor, EXTRACTORS, "eval.extractor", source)
    inf = math.inf
    _check_ranges(
        [
            ("eval.interval", e.interval, 0, inf, True),
            ("eval.num_samples", e.num_samples, EVAL_MIN_SAMPLES, DIM_MAX, True),
            ("eval.batch_size", e.batch_size, 0, DIM_MAX, False),
            ("eval.classifier_steps", e.classifier_steps, 0, inf, True),
            ("eval.seed", e.seed, 0, inf, True),
        ],
        source,
    )
    if evaluating and e.extractor == "inception" and not e.inception_weights.strip():
        raise ConfigError(
            f"{source}: the inception extractor needs its weights: set eval.inception_weights=FILE "
            "(a .safetensors made from pytorch-fid's weights, see paddlegan_lite/extractors.py), "
            "or eval.extractor=classifier"
        )


def check_eval_options(options: EvalConfig, source: str = "eval options") -> None:
    """Eval options an evaluation is about to use, including what only matters then (inception's
    weights). Loading checks them when training evaluates (eval.interval > 0); tools/eval.py and
    `evaluation.build_evaluator` (which may be handed an EvalConfig built in code) call this."""
    _check_eval(options, source, evaluating=True)


D_BATCHNORM = ("dcgan", "acgan")  # the families whose discriminator has BatchNorm layers


def check_run(cfg: Config, device: str, world_size: int) -> None:
    """The checks that need the machine: the device the run resolved to ("cpu" or "gpu...") and
    the number of processes. tools/train.py (also with --dry-run) calls this before training."""
    if cfg.train.amp != "off" and device == "cpu":
        raise ConfigError(
            f"train.amp={cfg.train.amp} needs a GPU: on CPU Paddle's auto_cast leaves every op "
            "in float32 (no speed-up, no memory saved); use train.amp=off"
        )
    if cfg.eval.interval and world_size > 1 and device == "cpu":
        raise ConfigError(
            "eval.interval with several CPU processes: evaluation runs on rank 0 while the others "
            "wait, and Paddle's gloo backend aborts a wait over 30 s; evaluate checkpoints with "
            "tools/eval.py instead"
        )
    if cfg.distributed.sync_bn and world_size > 1 and device == "cpu":
        raise ConfigError(
            "distributed.sync_bn needs GPUs: Paddle's SyncBatchNorm has no CPU kernel; "
            "set distributed.sync_bn=false"
        )
    penalised = cfg.train.gp_weight > 0 or cfg.train.r1_gamma > 0
    if cfg.distributed.sync_bn and world_size > 1 and penalised and cfg.model.name in D_BATCHNORM:
        # SyncBatchNorm replaces D's BatchNorm2D (models/layers.py) and Paddle 3.3 has no
        # SyncBatchNorm double grad: the first penalised D step would fail on the GPUs
        raise ConfigError(
            f"distributed.sync_bn with train.gp_weight or train.r1_gamma: {cfg.model.name}'s D "
            "has BatchNorm, and the penalties differentiate it twice, which Paddle's "
            "SyncBatchNorm cannot; set distributed.sync_bn=false (each GPU's D normalises its "
            "own batch) or use model.name=sngan (no BatchNorm in D)"
        )


# ------------------------------------------------------------------------------------------------
# Memory: refuse a run that cannot fit, before anything is allocated
# ------------------------------------------------------------------------------------------------

FLOAT_BYTES = 4  # float32 weights and activations
# Training images that the in-memory datasets hold as uint8, resized once (datasets.ArrayDataset);
# image folders are read per batch. CIFAR-10 keeps 3 planes when channels is 3, MNIST keeps 1.
DATASET_IMAGES = {"mnist": 60_000, "cifar10": 50_000}
# The model keys that set the sizes below, named in the error so the user sees what to lower.
SIZE_KEYS = {
    "mlp_gan": ("image_size", "nz", "hidden"),
    "dcgan": ("image_size", "nz", "ngf", "ndf", "num_classes"),
    "acgan": ("image_size", "nz", "ngf", "ndf", "num_classes"),
    "sngan": ("image_size", "nz", "ngf", "ndf", "num_classes"),
}


@dataclass
class MemoryEstimate:
    """What a training run needs, in bytes, from closed forms of the nets in models/*.py.

    The parameter counts are exact (tests/unit/test_config.py builds the nets and counts). The
    rest is rough: every layer's output per image, times 3 for what backward keeps (the normalised
    and activated copies) and the gradients flowing back; enough to refuse what cannot fit.
    """

    params_g: int  # parameters of netG, as net.parameters() lists them (BatchNorm statistics too)
    params_d: int  # parameters of netD, likewise
    parameter_bytes: int  # weights, gradients and Adam's two moments, plus G's EMA copy if kept
    activation_bytes: int  # one step: G's maps, and D's on a batch of real and one of fake
    data_bytes: int  # training images held in memory

    @property
    def total_bytes(self) -> int:
        return self.parameter_bytes + self.activation_bytes + self.data_bytes


def estimate_memory(cfg: Config) -> MemoryEstimate:
    """Estimate a run's memory from its config alone: no net is built, no Paddle is imported."""
    m = cfg.model
    params_g, params_d, maps_g, maps_d = MODEL_SIZES[m.name](m)
    ema = params_g if cfg.train.ema_decay > 0 else 0
    planes = 3 if cfg.data.name == "cifar10" and m.channels == 3 else 1
    return MemoryEstimate(
        params_g=params_g,
        params_d=params_d,
        parameter_bytes=FLOAT_BYTES * (4 * (params_g + params_d) + ema),
        activation_bytes=FLOAT_BYTES * 3 * cfg.train.batch_size * (maps_g + 2 * maps_d),
        data_bytes=DATASET_IMAGES.get(cfg.data.name, 0) * planes * m.image_size**2,
    )


def check_memory(cfg: Config, source: str, training: bool = True) -> None:
    """Refuse (ConfigError) a config whose run (training) or nets (not training) cannot fit in
    this machine's memory; nothing is checked where the memory size is unknown."""
    limit = machine_memory()
    if limit is None:
        return
    est = estimate_memory(cfg)
    need = est.total_bytes if training else FLOAT_BYTES * (est.params_g + est.params_d)
    if need <= limit:
        return
    m = cfg.model
    sizes = [(key, getattr(m, key)) for key in SIZE_KEYS[m.name]]
    keys = ", ".join(
        f"model.{key}={value}" for key, value in sizes if key != "num_classes" or value
    )
    if training:
        parts = (
            f"parameters {_bytes_text(est.parameter_bytes)}, activations "
            f"{_bytes_text(est.activation_bytes)} at train.batch_size={cfg.train.batch_size}"
        )
        if est.data_bytes:
            parts += f", {cfg.data.name} images {_bytes_text(est.data_bytes)}"
        what = "the run needs"
    else:
        parts = f"{est.params_g:,} + {est.params_d:,} parameters"
        what = "the nets need"
    raise ConfigError(
        f"{source}: {keys}: {what} about {_bytes_text(need)} ({parts}), more than this "
        f"machine's {_bytes_text(limit)}"
    )


def machine_memory() -> int | None:
    """Bytes of physical memory, or a container's lower cgroup limit; None where unknown.

    The total rather than what is free now: free memory changes by the minute, while no run can
    outgrow the machine.
    """
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # cgroup v2 says "max" when there is no limit
            total = min(total, int(text))
    return total if total > 0 else None


def _mlp_gan_sizes(m: ModelConfig) -> tuple[int, int, int, int]:
    """(params G, params D, layer outputs per image in G, in D incl. its input): mlp_gan.py."""
    h, pixels = m.hidden, m.channels * m.image_size**2
    params_g = (m.nz + 1) * h + (h + 1) * h + (h + 1) * pixels  # Linear: weights + biases
    params_d = (pixels + 1) * h + (h + 1) * h + (h + 1)
    return params_g, params_d, 2 * h + pixels, pixels + 2 * h + 1


def _dcgan_sizes(m: ModelConfig) -> tuple[int, int, int, int]:
    """The same for dcgan.py: 4x4 kernels without bias; a BatchNorm has 4 parameters per channel
    (scale, shift, and the running mean and variance, which Paddle keeps as parameters too),
    plus a gain and a shift per class in a conditional G; D's projection embedding (a 4x4 map
    per class) when num_classes > 0."""
    n = m.image_size.bit_length() - 3  # stride-2 layers between 4x4 and image_size
    k, pixels = m.num_classes, m.channels * m.image_size**2
    bn = 4 + 2 * k  # per channel of each BatchNorm in G (k = 0: unconditional)
    width, side = m.ngf * 2 ** (n - 1), 4  # G's first map: (ngf * 2^(n-1)) x 4 x 4
    params_g, maps_g = m.nz * width * 16 + bn * width, width * side**2
    for _ in range(n - 1):  # channels halve, side doubles
        params_g += width * (width // 2) * 16 + bn * (width // 2)
        width, side = width // 2, side * 2
        maps_g += width * side**2
    params_g += width * m.channels * 16
    maps_g += pixels
    width, side = m.ndf, m.image_size // 2  # D's first map: ndf x image_size/2 x image_size/2
    params_d, maps_d = m.channels * width * 16, pixels + width * side**2
    for _ in range(n - 1):  # channels double, side halves
        params_d += width * 2 * width * 16 + 4 * (2 * width)
        width, side = width * 2, side // 2
        maps_d += width * side**2
    params_d += (1 + k) * width * 16  # the 4x4 -> 1 logit layer, the projection embedding
    return params_g, params_d, maps_g, maps_d + 1


def _acgan_sizes(m: ModelConfig) -> tuple[int, int, int, int]:
    """The same for acgan.py: 3x3 convs with bias, BatchNorm as in dcgan, two linear heads."""
    c, s, k, nz, ngf, ndf = m.channels, m.image_size, m.num_classes, m.nz, m.ngf, m.ndf
    base = s // 4  # G's first map: (2 ngf) x s/4 x s/4
    params_g = (
        k * nz  # label embedding
        + (nz + 1) * 2 * ngf * base**2  # fc
        + 4 * (2 * ngf + 2 * ngf + ngf)  # the three BatchNorms
        + (2 * ngf * 2 * ngf * 9 + 2 * ngf)  # upsample-conv, 2 ngf -> 2 ngf
        + (2 * ngf * ngf * 9 + ngf)  # upsample-conv, 2 ngf -> ngf
        + (ngf * c * 9 + c)  # last conv
    )
    maps_g = 2 * ngf * base**2 + 2 * ngf * (2 * base) ** 2 + ngf * s**2 + c * s**2
    s1 = -(-s // 2)  # sides after each 3x3 stride-2 "same" conv; the zero pad adds one
    s2 = -(-s1 // 2)
    s3 = -(-(s2 + 1) // 2)
    features = 8 * ndf * s3**2
    params_d = (
        (c * ndf * 9 + ndf)
        + (ndf * 2 * ndf * 9 + 2 * ndf) + 4 * (2 * ndf)
        + (2 * ndf * 4 * ndf * 9 + 4 * ndf) + 4 * (4 * ndf)
        + (4 * ndf * 8 * ndf * 9 + 8 * ndf)
        + (features + 1) * (1 + k)  # real/fake and class heads
    )  # fmt: skip
    maps_d = c * s**2 + ndf * s1**2 + 2 * ndf * (s2 + 1) ** 2 + 12 * ndf * s3**2 + 1 + k
    return params_g, params_d, maps_g, maps_d


def _sngan_sizes(m: ModelConfig) -> tuple[int, int, int, int]:
    """The same for sngan.py: 3x3 and 1x1 convs with bias; a BatchNorm has 4 parameters per
    channel as in dcgan (a conditional one's scale and shift are fixed, but parameters still),
    plus a gain and a shift per class; D's projection embedding when num_classes > 0."""
    c, s, k, nz, ngf, ndf = m.channels, m.image_size, m.num_classes, m.nz, m.ngf, m.ndf
    n = max(1, s.bit_length() - 3)  # G's up-blocks from 4x4 (sngan.num_upsamplings)
    bn = (4 + 2 * k) * ngf if k else 4 * ngf  # each BatchNorm in G's blocks
    block = 2 * bn + 2 * (ngf * ngf * 9 + ngf) + (ngf * ngf + ngf)  # two 3x3 convs, 1x1 shortcut
    params_g = (nz + 1) * ngf * 16 + n * block + 4 * ngf + (ngf * c * 9 + c)
    maps_g, side = ngf * 16, 4  # G's first map: ngf x 4 x 4
    for _ in range(n):  # two convs, the shortcut (before and after upsampling), the sum
        maps_g += ngf * side**2 + 4 * ngf * (2 * side) ** 2
        side *= 2
    maps_g += c * s**2
    conv3, conv1 = ndf * ndf * 9 + ndf, ndf * ndf + ndf
    downs = max(0, n - 2)  # down-blocks after the first block, until 8x8
    params_d = (
        (c * ndf * 9 + ndf) + conv3 + (c * ndf + ndf)  # first block: two convs, 1x1 shortcut
        + downs * (2 * conv3 + conv1)
        + 2 * (2 * conv3)  # two blocks without shortcut convs
        + (ndf + 1)  # linear real/fake head
        + k * ndf  # projection embedding
    )  # fmt: skip
    side = s // 2
    maps_d = c * s**2 + 2 * ndf * s**2 + c * side**2 + 3 * ndf * side**2  # input, first block
    for _ in range(downs):  # two convs and the shortcut at the side, pools and the sum at half
        maps_d += 3 * ndf * side**2 + 3 * ndf * (side // 2) ** 2
        side //= 2
    maps_d += 2 * 3 * ndf * side**2 + ndf + 1  # two blocks (two convs, sum), features, logit
    return params_g, params_d, maps_g, maps_d


MODEL_SIZES = {
    "mlp_gan": _mlp_gan_sizes,
    "dcgan": _dcgan_sizes,
    "acgan": _acgan_sizes,
    "sngan": _sngan_sizes,
}


def _bytes_text(n: int) -> str:
    value = n / 2**20
    for unit in ("MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.3g} EiB"


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring = 2, 4, 4, 60


def _short(value) -> str:
    """A value for an error line: nested or huge values (YAML alias bombs) cut short."""
    text = _SHORT.repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def diffaugment_policies(text: str) -> list[str]:
    """train.diffaugment as a list: "color, cutout" -> ["color", "cutout"]; "" -> []."""
    return [part.strip() for part in text.split(",")] if text.strip() else []


def _check_choice(value: str, choices: tuple, key: str, source: str) -> None:
    if value not in choices:
        valid = ", ".join(str(c) if c != "" else '""' for c in choices)
        raise ConfigError(f"{source}: '{key}' is {_short(value)}; valid: {valid}")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
