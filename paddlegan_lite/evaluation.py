"""Measure a generator: FID, KID, IS, precision/recall (and class accuracy when conditional)
against real training images, plus the "floor" that real held-out images reach.

Training holds an `Evaluator` (from `build_evaluator`) and calls it with a `generate_fn`;
`eval_report.py` does the same for tools/eval.py, on a checkpoint or an exported model folder.
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from paddlegan_lite.config import EXTRACTORS, EvalConfig, check_eval_options
from paddlegan_lite.datasets import BUNDLED_MNIST_SOURCE, build_dataset, dataset_fingerprint
from paddlegan_lite.errors import UserError
from paddlegan_lite.extractors import ClassifierExtractor, InceptionExtractor, resolve_cache_dir
from paddlegan_lite.logger import log
from paddlegan_lite.metrics import (
    IS_SPLITS,
    class_accuracy,
    class_histogram,
    feature_stats,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)

REFERENCE_SIZE = 10000  # real training images behind the reference statistics (FID-10k)
HOLDOUT_FRACTION = 0.2  # of the training split, when the data has no separate test split
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


def build_extractor(options: EvalConfig, real: RealData, dataset_name: str):
    """The feature extractor that options.extractor names (one of EXTRACTORS)."""
    if options.extractor == ClassifierExtractor.kind:
        return ClassifierExtractor.load_or_train(
            real.train,
            real.test,
            dataset_name,
            real.classifier_train,
            real.heldout,
            cache_dir=options.cache_dir or None,  # "" in a config: the default cache
            steps=options.classifier_steps,
        )
    if options.extractor == InceptionExtractor.kind:
        return InceptionExtractor.from_file(options.inception_weights or None)
    raise UserError(f"unknown extractor {options.extractor!r} (valid: {', '.join(EXTRACTORS)})")


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
def compare(reference: FeatureSet, samples: FeatureSet, seed: int) -> dict:
    """Metrics of `samples` against `reference`, as plain floats: fid, kid, kid_std; when the
    extractor gives class probabilities also is, is_std, class_min_share (the rarest predicted
    class's share times the number of classes) and class_hist (a list: each class's share);
    class_acc when samples carry labels; precision, recall. `seed` draws KID's subsets."""
    kid, kid_std = kernel_inception_distance(samples.features, reference.features, seed=seed)
    n = len(samples.features)
    # k-NN radii depend on the set size: compare equal numbers of real and generated points
    precision, recall = precision_recall(reference.features[:n], samples.features)
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


class Evaluator:
    """A run's evaluation set-up: real reference statistics computed once, called per eval.

    `evaluator(generate_fn) -> dict` (see `compare`); `evaluator.floor() -> dict`.
    """

    def __init__(self, real: RealData, extractor, nz: int, num_classes: int, options: EvalConfig):
        self.real, self.extractor, self.nz, self.num_classes = real, extractor, nz, num_classes
        self.options = options
        self.cache_dir = options.cache_dir or None  # "" in a config: the default cache
        self.reference = real_features(real.train, real.reference, extractor, self.cache_dir)

    def __call__(self, generate_fn) -> dict:
        """Metrics of eval.num_samples generated images against the real reference."""
        o = self.options
        samples = generated_features(
            generate_fn,
            self.extractor,
            self.nz,
            o.num_samples,
            o.batch_size,
            o.seed,
            self.num_classes,
        )
        return compare(self.reference, samples, o.seed)

    def floor(self) -> dict:
        """The same metrics for real held-out images: what a perfect generator would reach.

        Uses min(eval.num_samples, held-out images); `num_samples` in the result says how many
        (FID falls as the count grows, so a floor from fewer images is a little pessimistic).
        """
        indices = self.real.heldout[: self.options.num_samples]
        heldout = real_features(self.real.test, indices, self.extractor, self.cache_dir)
        if not self.num_classes:  # no requested classes: no class accuracy
            heldout = replace(heldout, labels=None)
        return {**compare(self.reference, heldout, self.options.seed), "num_samples": len(indices)}


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
    cache_dir; `interval` is the trainer's business), which config.check_eval_options checks
    first.

    Pass the run's `train_dataset` to reuse it; the test split is loaded here (the held-out
    images must be the same in training and in tools/eval.py, so numbers agree).
    """
    check_eval_options(options)
    if train_dataset is None:
        train_dataset = build_dataset(data_cfg, image_size, channels, train=True)
    real = split_real_data(
        train_dataset, _test_split(data_cfg, image_size, channels, train_dataset.source)
    )
    extractor = build_extractor(options, real, data_cfg.name)
    return Evaluator(real, extractor, nz, num_classes, options)


def _test_split(data_cfg, image_size: int, channels: int, train_source: str):
    """The dataset's test split, or None where it has none (image folders)."""
    if data_cfg.name == "folder":
        return None
    test = build_dataset(data_cfg, image_size, channels, train=False)
    # MNIST without its t10k files falls back to the 5,000 bundled digits: other images than a
    # training split read from IDX files, so no held-out set for it.
    bundled = BUNDLED_MNIST_SOURCE  # the test split's source adds " (no test split: ...)"
    if test.source.startswith(bundled) and not train_source.startswith(bundled):
        return None
    return test
