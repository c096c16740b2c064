"""Measure a generator: FID, KID, IS, precision/recall (and class accuracy when conditional)
against real training images, plus the "floor" that real held-out images reach.

Training holds an `Evaluator` (from `build_evaluator`) and calls it with a `generate_fn`;
`tools/eval.py` calls `run_eval` on a checkpoint or an exported model folder.
"""

from __future__ import annotations

import collections
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from paddlegan_lite.config import EvalConfig
from paddlegan_lite.errors import UserError
from paddlegan_lite.extractors import (
    CLASSIFIER_STEPS,
    ClassifierExtractor,
    InceptionExtractor,
    dataset_fingerprint,
    resolve_cache_dir,
)
from paddlegan_lite.logger import log
from paddlegan_lite.metrics import (
    class_accuracy,
    class_histogram,
    feature_stats,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)

EXTRACTORS = ("classifier", "inception")
DEFAULT_NUM_SAMPLES = 2000  # ~18 s for AC-GAN MNIST on a busy 2-core CPU, mostly generating
REFERENCE_SIZE = 10000  # real training images behind the reference statistics (FID-10k)
HOLDOUT_FRACTION = 0.2  # of the training split, when the data has no separate test split
KID_SUBSETS = 100  # Binkowski et al.: 100 subsets of 1,000
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10
PR_NEIGHBOURS = 3  # Kynkaanniemi et al.: k = 3
MIN_SAMPLES = 10  # fewer leaves IS splits and k-NN balls without meaning
_MEMORY_CACHE_SIZE = 4  # real-feature sets kept in memory (each a few MB for the classifier)


# ---------------------------------------------------------------------- real data
@dataclass
class RealData:
    """Which real images play which part (index arrays into `train` and `test`)."""

    train: object  # dataset: reference statistics and the classifier's training images
    reference: np.ndarray  # [R] indices into train behind the reference statistics
    classifier_train: np.ndarray  # indices into train the classifier learns from
    test: object  # dataset of held-out images (may be `train` itself)
    heldout: np.ndarray  # indices into test: never in the reference or the classifier's data
    note: str  # where the held-out images come from, for the report


def split_real_data(train_dataset, test_dataset=None, reference_size: int = REFERENCE_SIZE):
    """Assign the reference and held-out roles. A test split that is the training data again
    (the bundled MNIST digits) or none at all: hold out HOLDOUT_FRACTION of the training split."""
    order = np.random.default_rng(0).permutation(len(train_dataset))
    same = test_dataset is None or (
        len(test_dataset) == len(train_dataset)
        and dataset_fingerprint(test_dataset) == dataset_fingerprint(train_dataset)
    )
    if same:
        count = max(2, int(round(HOLDOUT_FRACTION * len(order))))
        heldout, rest, test_dataset = order[:count], order[count:], train_dataset
        note = f"{count} training images held out (the data has no separate test split)"
    else:
        heldout = np.random.default_rng(1).permutation(len(test_dataset))
        rest, note = order, f"the test split ({len(test_dataset)} images)"
    if len(rest) < 2 or len(heldout) < 2:
        raise UserError(f"too few real images to evaluate ({len(order)} in the training split)")
    return RealData(train_dataset, rest[:reference_size], rest, test_dataset, heldout, note)


def build_extractor(
    kind: str,
    real: RealData,
    dataset_name: str,
    inception_weights: str | None = None,
    cache_dir=None,
    classifier_steps: int = CLASSIFIER_STEPS,
):
    """The feature extractor named `kind` (one of EXTRACTORS)."""
    if kind == "classifier":
        return ClassifierExtractor.load_or_train(
            real.train,
            real.test,
            dataset_name,
            real.classifier_train,
            real.heldout,
            cache_dir=cache_dir,
            steps=classifier_steps,
        )
    if kind == "inception":
        return InceptionExtractor.from_file(inception_weights)
    raise UserError(f"unknown extractor {kind!r} (valid: {', '.join(EXTRACTORS)})")


@dataclass
class FeatureSet:
    """Features of a set of images and what the metrics need from them."""

    features: np.ndarray  # [N, D]
    probs: np.ndarray | None  # [N, K] class probabilities, when the extractor has a classifier
    labels: np.ndarray | None  # [N] true (real) or requested (generated) classes
    mu: np.ndarray  # [D] float64
    sigma: np.ndarray  # [D, D] float64

    @classmethod
    def from_arrays(cls, features, probs=None, labels=None) -> FeatureSet:
        mu, sigma = feature_stats(features)
        return cls(features, probs, labels, mu, sigma)


_real_cache: collections.OrderedDict = collections.OrderedDict()


def real_features(dataset, indices, extractor, cache_dir=None, batch_size: int = 500) -> FeatureSet:
    """Features of `dataset[indices]`, from memory, the disk cache, or computed and cached."""
    digest = hashlib.sha256(dataset_fingerprint(dataset, indices).encode()).hexdigest()[:16]
    key = f"real-{extractor.cache_id}-{len(indices)}-{digest}"
    if key in _real_cache:
        _real_cache.move_to_end(key)
        return _real_cache[key]
    path = resolve_cache_dir(cache_dir) / f"{key}.safetensors"
    found = _load_feature_set(path)
    if found is None:
        found = _compute_real_features(dataset, indices, extractor, batch_size)
        _save_feature_set(path, found)
    _real_cache[key] = found
    while len(_real_cache) > _MEMORY_CACHE_SIZE:
        _real_cache.popitem(last=False)
    return found


def _compute_real_features(dataset, indices, extractor, batch_size: int) -> FeatureSet:
    log.info(f"eval: features of {len(indices)} real images ({extractor.kind}; cached afterwards)")
    features, probs, labels = [], [], []
    for start in range(0, len(indices), batch_size):
        images, batch_labels = dataset.get_batch(indices[start : start + batch_size])
        f, p = extractor.extract(images)
        features.append(f)
        probs.append(p)
        labels.append(np.asarray(batch_labels, np.int64))
    probs = None if probs[0] is None else np.concatenate(probs)
    return FeatureSet.from_arrays(np.concatenate(features), probs, np.concatenate(labels))


def _save_feature_set(path: Path, found: FeatureSet) -> None:
    arrays = {"features": found.features, "labels": found.labels, "mu": found.mu}
    arrays["sigma"] = found.sigma
    if found.probs is not None:
        arrays["probs"] = found.probs
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
        tmp.replace(path)
    except OSError as exc:
        log.warning(f"cannot cache real features in {path.parent} ({exc}); continuing uncached")


def _load_feature_set(path: Path) -> FeatureSet | None:
    try:
        arrays = load_file(str(path))
        return FeatureSet(
            arrays["features"], arrays.get("probs"), arrays["labels"], arrays["mu"], arrays["sigma"]
        )
    except FileNotFoundError:
        return None
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        log.warning(f"real-feature cache {path} is unusable ({exc}); computing it again")
        return None


# ---------------------------------------------------------------------- generated images
def latent_inputs(num_samples: int, nz: int, seed: int, num_classes: int = 0):
    """z float32 [N, nz] ~ N(0, 1) and, when conditional, balanced labels int64 [N] (else None).
    A function of the seed only, so every evaluation of a run sees the same inputs."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((num_samples, nz)).astype(np.float32)
    if not num_classes:
        return z, None
    return z, rng.permutation(np.arange(num_samples) % num_classes).astype(np.int64)


def generated_features(
    generate_fn, extractor, nz: int, num_samples: int, batch_size: int, seed: int, num_classes=0
) -> FeatureSet:
    """Features of `num_samples` images from generate_fn(z [B, nz], labels [B] or None) ->
    float32 images [B, C, H, W] in [-1, 1] (numpy or Paddle)."""
    z, labels = latent_inputs(num_samples, nz, seed, num_classes)
    features, probs = [], []
    for start in range(0, num_samples, batch_size):
        stop = start + batch_size
        images = generate_fn(z[start:stop], None if labels is None else labels[start:stop])
        f, p = extractor.extract(_to_numpy(images))
        features.append(f)
        probs.append(p)
    probs = None if probs[0] is None else np.concatenate(probs)
    return FeatureSet.from_arrays(np.concatenate(features), probs, labels)


def _to_numpy(images) -> np.ndarray:
    images = images.numpy() if hasattr(images, "numpy") else images
    return np.ascontiguousarray(images, dtype=np.float32)


def generator_fn(netG):
    """A generate_fn over a Paddle generator: eval mode (BatchNorm running statistics, as the
    exported model runs), no gradients; a model in training mode is put back after each call."""
    import paddle

    def generate(z, labels):
        was_training = netG.training
        netG.eval()
        try:
            with paddle.no_grad():
                labels_t = None if labels is None else paddle.to_tensor(labels)
                out = netG(paddle.to_tensor(z), labels_t)
            return out.numpy()
        finally:
            if was_training:
                netG.train()

    return generate


# ---------------------------------------------------------------------- metrics
def compare(reference: FeatureSet, samples: FeatureSet, seed: int = 0) -> dict:
    """Metrics of `samples` against `reference`, as plain floats: fid, kid, kid_std; when the
    extractor gives class probabilities also is, is_std, class_min_share (the rarest predicted
    class's share times the number of classes) and class_hist (a list: each class's share);
    class_acc when samples carry labels; precision, recall."""
    kid, kid_std = kernel_inception_distance(
        samples.features, reference.features, KID_SUBSETS, KID_SUBSET_SIZE, seed
    )
    n = len(samples.features)
    # k-NN radii depend on the set size: compare equal numbers of real and generated points
    precision, recall = precision_recall(reference.features[:n], samples.features, PR_NEIGHBOURS)
    result = {
        "fid": frechet_distance(samples.mu, samples.sigma, reference.mu, reference.sigma),
        "kid": kid,
        "kid_std": kid_std,
    }
    if samples.probs is not None:
        result["is"], result["is_std"] = inception_score(samples.probs, min(IS_SPLITS, n))
        if samples.labels is not None:
            result["class_acc"] = class_accuracy(samples.probs, samples.labels)
        # which classes the classifier sees: a collapse onto a few digits shows here first
        shares = class_histogram(samples.probs)
        result["class_min_share"] = float(shares.min() * len(shares))  # 1.0: all equally often
        result["class_hist"] = [round(float(x), 4) for x in shares]
    result["precision"], result["recall"] = precision, recall
    return result


def evaluate(
    generate_fn,
    nz: int,
    reference: FeatureSet,
    extractor,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    batch_size: int = 250,
    seed: int = 0,
    num_classes: int = 0,
) -> dict:
    """Metrics of `num_samples` generated images against the real reference (see `compare`)."""
    samples = generated_features(
        generate_fn, extractor, nz, num_samples, batch_size, seed, num_classes
    )
    return compare(reference, samples, seed)


def real_floor(
    real: RealData,
    reference: FeatureSet,
    extractor,
    num_samples: int,
    conditional: bool,
    cache_dir=None,
    seed: int = 0,
) -> dict:
    """The same metrics for real held-out images: what a perfect generator would reach.

    Uses min(num_samples, held-out images); `num_samples` in the result says how many (FID
    falls as the count grows, so a floor from fewer images is a little pessimistic).
    """
    indices = real.heldout[:num_samples]
    heldout = real_features(real.test, indices, extractor, cache_dir)
    if not conditional:
        heldout = FeatureSet(heldout.features, heldout.probs, None, heldout.mu, heldout.sigma)
    return {**compare(reference, heldout, seed), "num_samples": len(indices)}


class Evaluator:
    """A run's evaluation set-up: real reference statistics computed once, called per eval.

    `evaluator(generate_fn) -> dict` (see `compare`); `evaluator.floor() -> dict`.
    """

    def __init__(
        self,
        real: RealData,
        extractor,
        nz: int,
        num_classes: int = 0,
        num_samples: int = DEFAULT_NUM_SAMPLES,
        batch_size: int = 250,
        seed: int = 0,
        cache_dir=None,
    ):
        if num_samples < MIN_SAMPLES or batch_size < 1:
            raise UserError(
                f"evaluation needs num_samples >= {MIN_SAMPLES} and batch_size >= 1, got "
                f"{num_samples} and {batch_size}"
            )
        self.real, self.extractor, self.nz, self.num_classes = real, extractor, nz, num_classes
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.cache_dir = cache_dir
        self.reference = real_features(real.train, real.reference, extractor, cache_dir)

    def __call__(self, generate_fn) -> dict:
        return evaluate(
            generate_fn,
            self.nz,
            self.reference,
            self.extractor,
            self.num_samples,
            self.batch_size,
            self.seed,
            self.num_classes,
        )

    def floor(self) -> dict:
        return real_floor(
            self.real,
            self.reference,
            self.extractor,
            self.num_samples,
            self.num_classes > 0,
            self.cache_dir,
            self.seed,
        )


def build_evaluator(
    data_cfg,
    image_size: int,
    channels: int,
    nz: int,
    num_classes: int,
    options: EvalConfig,
    train_dataset=None,
) -> Evaluator:
    """Everything evaluation needs from a config's data section, the model's sizes and the eval
    options (extractor, num_samples, batch_size, seed, inception_weights, classifier_steps,
    cache_dir; `interval` is the trainer's business).

    Pass the run's `train_dataset` to reuse it; the test split is loaded here (the held-out
    images must be the same in training and in tools/eval.py, so numbers agree).
    """
    from paddlegan_lite.datasets import build_dataset

    o = options
    if o.extractor not in EXTRACTORS:
        raise UserError(f"unknown extractor {o.extractor!r} (valid: {', '.join(EXTRACTORS)})")
    if train_dataset is None:
        train_dataset = build_dataset(data_cfg, image_size, channels, train=True)
    real = split_real_data(
        train_dataset, _test_split(data_cfg, image_size, channels, train_dataset.source)
    )
    cache_dir = o.cache_dir or None  # "" in a config: the default cache
    feature_extractor = build_extractor(
        o.extractor, real, data_cfg.name, o.inception_weights or None, cache_dir, o.classifier_steps
    )
    return Evaluator(
        real, feature_extractor, nz, num_classes, o.num_samples, o.batch_size, o.seed, cache_dir
    )


def _test_split(data_cfg, image_size: int, channels: int, train_source: str):
    """The dataset's test split, or None where it has none (image folders)."""
    from paddlegan_lite.datasets import BUNDLED_MNIST_SOURCE, build_dataset

    if data_cfg.name == "folder":
        return None
    test = build_dataset(data_cfg, image_size, channels, train=False)
    # MNIST without its t10k files falls back to the 5,000 bundled digits: other images than a
    # training split read from IDX files, so no held-out set for it.
    bundled = BUNDLED_MNIST_SOURCE  # the test split's source adds " (no test split: ...)"
    if test.source.startswith(bundled) and not train_source.startswith(bundled):
        return None
    return test


# ---------------------------------------------------------------------- tools/eval.py
@dataclass
class LoadedModel:
    generate_fn: object
    nz: int
    num_classes: int
    image_shape: tuple  # (C, H, W)
    config: dict  # the run's saved config
    info: dict  # for the report: source, path, step


def load_checkpoint_model(path, device: str = "auto", weights: str = "auto") -> LoadedModel:
    """A generator from a checkpoint folder (or a run folder: its newest checkpoint), built from
    the checkpoint's own config. weights: "auto" (the EMA weights when the checkpoint has them),
    "ema" or "raw" (G's own)."""
    from paddlegan_lite.export import load_generator, resolve_checkpoint
    from paddlegan_lite.runtime import select_device

    path = resolve_checkpoint(path)
    select_device(device)
    netG, run_cfg, state, weights = load_generator(path, weights)
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


def load_model_dir(model_dir, device: str = "cpu", batch_size: int = 250) -> LoadedModel:
    """A generator from an exported inference folder (Paddle Inference, no training code)."""
    from paddlegan_lite.inference import Generator

    generator = Generator(
        model_dir, device="cpu" if device == "auto" else device, batch_size=batch_size
    )

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


def write_report(report: dict, path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write the report {path} ({exc.strerror or exc})") from None
    return path
