"""Feature extractors for the quality metrics: a small CNN classifier trained (once, then cached)
on the dataset's own labels, and InceptionV3 with the pool3 features standard for FID.

Both take images float32 [N, C, H, W] in [-1, 1] and return `extract(images) -> (features
[N, D], class probabilities [N, K] or None)`. Weights are read from safetensors (or .npz) only:
nothing here unpickles a file.

InceptionV3 weights are not bundled. The standard FID network is pytorch-fid's port of the
TensorFlow 2015 graph: download `pt_inception-2015-12-05-6726825d.pth` from
https://github.com/mseitzer/pytorch-fid/releases/tag/fid_weights and convert it once, where
PyTorch is installed (its weights_only loader does not run code from the file):

    python -c "import torch; from safetensors.torch import save_file; \
sd = torch.load('pt_inception-2015-12-05-6726825d.pth', map_location='cpu', weights_only=True); \
save_file({k: v.contiguous() for k, v in sd.items()}, 'pt_inception-2015-12-05.safetensors')"

then pass `-o eval.inception_weights=pt_inception-2015-12-05.safetensors`. Keys are the torchvision
names (`Mixed_5b.branch1x1.conv.weight`, `...bn.running_mean`, `fc.weight` [1008, 2048]); a
file with Paddle names (`...bn._mean`, `fc.weight` [2048, 1008]) loads too.

The Inception Score's class probabilities are softmax(pool3 @ fc.weight), without the fc bias:
the original code of Salimans et al. (openai/improved-gan) rebuilds the logits from the weight
input of the graph's `softmax/logits/MatMul`, leaving out `softmax/biases`, and torch-fidelity
scores IS on its `logits_unbiased`. Published IS values are computed that way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from paddlegan_lite import checkpoint as ckpt
from paddlegan_lite.datasets import dataset_fingerprint, file_digest
from paddlegan_lite.errors import UserError
from paddlegan_lite.logger import log
from paddlegan_lite.ops import accelerate

CACHE_ENV = "PADDLEGAN_LITE_CACHE"
CLASSIFIER_VERSION = 2  # bump when the architecture or the training recipe changes
CLASSIFIER_SIDE = 32  # images are resized to 32 x 32 inside the net: cost independent of size
CLASSIFIER_FEATURES = 128
INCEPTION_SIDE = 299
INCEPTION_FEATURES = 2048
INCEPTION_LOGITS = 1008  # the 2015 graph's classifier: 1,000 ImageNet classes and 8 unused
INCEPTION_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/tag/fid_weights"
# Part of the extractor's cache id, which keys the cached real features and probabilities: bump
# when either changes (2: IS probabilities without the fc bias).
INCEPTION_VERSION = 2


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir` if given, else $PADDLEGAN_LITE_CACHE, else ~/.cache/paddlegan_lite."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "paddlegan_lite"


# ---------------------------------------------------------------------- the classifier
@dataclasses.dataclass(frozen=True)
class ClassifierRecipe:
    """How the classifier is built and trained for one kind of data. Accuracy and training time
    of each: bench/RESULTS.md, "The classifier extractor"."""

    name: str
    width: int  # channels of the first stage; the second and third have 2x and 4x
    convs: int  # 3x3 conv + BatchNorm + ReLU blocks per stage
    steps: int  # training steps when the caller asks for 0 (eval.classifier_steps' default)
    batch_size: int
    lr: float  # peak of Adam's one-cycle schedule
    crop_padding: int  # train on random crops of the image padded by this many pixels (0: off)
    flip: bool  # train on images mirrored left-right half of the time


# Digits: one conv per stage and small shifts; cheap, as the tests train it on tiny data often.
DIGITS = ClassifierRecipe("digits", 32, 1, 600, 64, 2e-3, crop_padding=2, flip=False)
# Photos: twice the depth, the standard CIFAR augmentation (pad 4, crop, flip), larger batches.
PHOTOS = ClassifierRecipe("photos", 32, 2, 800, 128, 4e-3, crop_padding=4, flip=True)


def classifier_recipe(dataset_name: str, channels: int) -> ClassifierRecipe:
    """DIGITS for MNIST and any gray data, PHOTOS for colour images (CIFAR-10, image folders):
    a mirrored digit is another symbol or none."""
    return DIGITS if dataset_name == "mnist" or channels == 1 else PHOTOS


class ClassifierNet(nn.Layer):
    """images [N, C, H, W] in [-1, 1] -> (features [N, 128], class logits [N, K]).

    Three stages of `convs` (3x3 conv, BatchNorm, ReLU) blocks, each stage then max-pooled 2x.
    """

    def __init__(self, channels: int, num_classes: int, width: int, convs: int):
        super().__init__()
        layers, in_channels = [], channels
        for stage in range(3):
            out_channels = width * 2**stage
            for _ in range(convs):
                layers += [
                    nn.Conv2D(in_channels, out_channels, 3, padding=1, bias_attr=False),
                    nn.BatchNorm2D(out_channels),
                    nn.ReLU(),
                ]
                in_channels = out_channels
            layers.append(nn.MaxPool2D(2))
            # state size. (width * 2**stage) x (16 / 2**stage) x (16 / 2**stage)
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Linear(4 * width * 4 * 4, CLASSIFIER_FEATURES)
        self.head = nn.Linear(CLASSIFIER_FEATURES, num_classes)

    def forward(self, x):
        x = resize(x, CLASSIFIER_SIDE)
        # Features before the ReLU: full rank and closer to Gaussian, as FID assumes.
        features = self.fc(self.body(x))
        return features, self.head(F.relu(features))


def resize(x, side: int):
    """[N, C, H, W] -> [N, C, side, side]: area averaging to shrink (no aliasing), bilinear to
    grow (align_corners=False, as pytorch-fid resizes for Inception)."""
    if tuple(x.shape[2:]) == (side, side):
        return x
    if x.shape[2] >= side and x.shape[3] >= side:
        return F.interpolate(x, size=[side, side], mode="area")
    return F.interpolate(x, size=[side, side], mode="bilinear", align_corners=False)


class ClassifierExtractor:
    """A `ClassifierNet` trained on a labelled dataset: penultimate features and class probs.

    `load_or_train(...)` reuses `<cache>/classifier-<dataset>-<CxHxW>-v<version>-<steps>steps-
    <data hash>.safetensors` (+ `.json` with its test accuracy) or trains and writes it.
    """

    kind = "classifier"

    def __init__(self, net: ClassifierNet, info: dict, batch_size: int = 500):
        self.net, self.info, self.batch_size = net, info, batch_size
        self.net.eval()

    @property
    def cache_id(self) -> str:
        return self.info["name"]

    @property
    def test_accuracy(self) -> float:
        return float(self.info["test_accuracy"])

    @property
    def image_shape(self) -> tuple:
        return tuple(self.info["image_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.info["num_classes"])

    def describe(self) -> str:
        i = self.info
        return (
            f"classifier CNN ({i['feature_dim']}-d features), test accuracy "
            f"{i['test_accuracy']:.4f} on {i['num_test']} held-out images, trained on "
            f"{i['num_train']} ({i['source']})"
        )

    def extract(self, images) -> tuple[np.ndarray, np.ndarray]:
        """images float32 [N, C, H, W] in [-1, 1] -> (features [N, 128], probs [N, K]).

        Features are scaled so real training images have unit variance per dimension on
        average: FID and KID then do not depend on the arbitrary scale one training run gave.
        """
        _check_images(images, self.image_shape, "the classifier")
        features, logits = [], []
        with paddle.no_grad():
            for start in range(0, len(images), self.batch_size):
                x = paddle.to_tensor(np.ascontiguousarray(images[start : start + self.batch_size]))
                f, lg = self.net(x)
                features.append(f.numpy())
                logits.append(lg.numpy())
        scale = np.float32(self.info["feature_scale"])
        return np.concatenate(features) * scale, softmax(np.concatenate(logits))

    def features(self, images) -> np.ndarray:
        """[N, C, H, W] -> [N, 128]"""
        return self.extract(images)[0]

    def probs(self, images) -> np.ndarray:
        """[N, C, H, W] -> [N, K]"""
        return self.extract(images)[1]

    @classmethod
    def load_or_train(
        cls,
        train_dataset,
        test_dataset,
        dataset_name: str,
        train_indices=None,
        test_indices=None,
        cache_dir=None,
        steps: int = 0,
        seed: int = 0,
    ) -> ClassifierExtractor:
        """The cached classifier for exactly this data, or a new one trained and cached.

        Trains on `train_dataset[train_indices]` (default all) with the recipe of the data's kind
        (`classifier_recipe`) for `steps` steps (0: the recipe's) and reports its accuracy on
        `test_dataset[test_indices]`, which it never trains on.
        """
        if train_dataset.num_classes < 2:
            raise UserError(
                f"the classifier extractor needs labelled data, but {train_dataset.source} has "
                "one class: use eval.extractor=inception (with eval.inception_weights)"
            )
        train_indices = _all_or(train_indices, train_dataset)
        test_indices = _all_or(test_indices, test_dataset)
        image_shape = tuple(int(s) for s in train_dataset.get_batch(train_indices[:1])[0].shape[1:])
        recipe = classifier_recipe(dataset_name, image_shape[0])
        steps = steps or recipe.steps
        name = classifier_cache_name(
            dataset_name,
            image_shape,
            steps,
            [
                dataset_fingerprint(train_dataset, train_indices),
                dataset_fingerprint(test_dataset, test_indices),
                str(seed),
            ],
        )
        path = resolve_cache_dir(cache_dir) / name
        cached = cls.load(path)
        if cached is not None:
            log.info(f"classifier: {path}.safetensors (test accuracy {cached.test_accuracy:.4f})")
            return cached
        train, test = (train_dataset, train_indices), (test_dataset, test_indices)
        return cls._train_and_save(path, train, test, image_shape, recipe, steps, seed)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClassifierExtractor | None:
        """The classifier saved at `path` (.safetensors/.json stem), or None if absent/unusable."""
        path = Path(path)
        try:
            info = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            arrays = load_file(str(path.with_suffix(".safetensors")))
            recipe = info["recipe"]
            net = ClassifierNet(
                info["image_shape"][0], info["num_classes"], recipe["width"], recipe["convs"]
            )
            accelerate(net)  # oneDNN convolutions for the features, as in training
            ckpt.load_layer_arrays(net, arrays, "classifier")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, SafetensorError, UserError) as exc:
            log.warning(f"classifier cache {path} is unusable ({exc}); training a new one")
            return None
        return cls(net, info)

    @classmethod
    def _train_and_save(
        cls, path, train, test, image_shape, recipe, steps, seed
    ) -> ClassifierExtractor:
        """Train on train = (dataset, indices), measure on test = (dataset, indices), cache."""
        (train_dataset, train_indices), (test_dataset, test_indices) = train, test
        num_classes = train_dataset.num_classes
        log.info(
            f"classifier: first use for this data, training on {len(train_indices)} images for "
            f"{steps} steps ({recipe.name} recipe; cached as {path}.safetensors)"
        )
        start = time.perf_counter()
        with private_paddle_rng(seed):  # leave the caller's random stream (a training run) alone
            net = ClassifierNet(image_shape[0], num_classes, recipe.width, recipe.convs)
            accelerate(net)  # oneDNN convolutions: Paddle's own are much slower (bench/RESULTS.md)
            train_classifier(net, train_dataset, train_indices, steps, seed, recipe)
        accuracy = classifier_accuracy(net, test_dataset, test_indices)
        scale = feature_scale(net, train_dataset, train_indices)
        seconds = time.perf_counter() - start
        info = {
            "format": 1,
            "name": path.name,
            "source": train_dataset.source,
            "image_shape": list(image_shape),
            "num_classes": num_classes,
            "feature_dim": CLASSIFIER_FEATURES,
            "version": CLASSIFIER_VERSION,
            "recipe": dataclasses.asdict(recipe),
            "steps": steps,
            "seed": seed,
            "num_train": len(train_indices),
            "num_test": len(test_indices),
            "test_accuracy": accuracy,
            "feature_scale": scale,
            "train_seconds": round(seconds, 1),
        }
        _save_classifier(path, net, info)
        log.info(
            f"classifier: test accuracy {accuracy:.4f} on {len(test_indices)} held-out images "
            f"({seconds:.0f} s)"
        )
        return cls(net, info)


def classifier_cache_name(dataset_name: str, image_shape, steps: int, keys) -> str:
    """`classifier-<dataset>-<CxHxW>-v<version>-<steps>steps-<hash of data keys>`."""
    digest = hashlib.sha256("|".join(keys).encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", dataset_name) or "data"  # no dots: suffixes
    shape = "x".join(str(s) for s in image_shape)
    return f"classifier-{safe}-{shape}-v{CLASSIFIER_VERSION}-{steps}steps-{digest}"


def train_classifier(
    net: ClassifierNet, dataset, indices, steps: int, seed: int, recipe: ClassifierRecipe
) -> None:
    """Adam with a one-cycle learning rate (warm-up, then cosine decay) on shuffled batches of
    `dataset[indices]`, augmented as the recipe says; batches and augmentation drawn from `seed`."""
    rng = np.random.default_rng(seed)
    schedule = paddle.optimizer.lr.OneCycleLR(recipe.lr, total_steps=steps, phase_pct=0.15)
    optimizer = paddle.optimizer.Adam(schedule, parameters=net.parameters())
    net.train()
    order, cursor = rng.permutation(indices), 0
    for _ in range(steps):
        if cursor + recipe.batch_size > len(order):
            order, cursor = rng.permutation(indices), 0
        batch = order[cursor : cursor + recipe.batch_size]
        cursor += recipe.batch_size
        images, labels = dataset.get_batch(batch)
        images = augment(images, rng, recipe.crop_padding, recipe.flip)
        _, logits = net(paddle.to_tensor(images))
        loss = F.cross_entropy(logits, paddle.to_tensor(labels).reshape([-1, 1]))
        optimizer.clear_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()


def augment(
    images: np.ndarray, rng: np.random.Generator, crop_padding: int, flip: bool
) -> np.ndarray:
    """images [N, C, H, W] -> [N, C, H, W], each a random H x W crop of itself padded by
    `crop_padding` pixels (reflected: no blank borders to learn) and, with `flip`, mirrored
    left-right with probability 1/2. Draws from `rng` only."""
    n, _, height, width = images.shape
    if crop_padding > 0:
        p = crop_padding
        padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect")
        top, left = rng.integers(0, 2 * p + 1, size=(2, n))
        images = np.stack(
            [padded[i, :, y : y + height, x : x + width] for i, (y, x) in enumerate(zip(top, left))]
        )
    if flip:
        mirrored = rng.random(n) < 0.5
        images = np.where(mirrored[:, None, None, None], images[..., ::-1], images)
    return np.ascontiguousarray(images, dtype=np.float32)


def classifier_accuracy(net: ClassifierNet, dataset, indices, batch_size: int = 500) -> float:
    """Share of `dataset[indices]` whose top class is the label."""
    correct = 0
    with paddle.no_grad():
        for start in range(0, len(indices), batch_size):
            images, labels = dataset.get_batch(indices[start : start + batch_size])
            _, logits = net(paddle.to_tensor(images))
            correct += int((logits.numpy().argmax(axis=1) == labels).sum())
    return correct / max(len(indices), 1)


def feature_scale(net: ClassifierNet, dataset, indices, count: int = 2000) -> float:
    """1 / sqrt(mean per-dimension variance) of the features of up to `count` of the images."""
    features = []
    with paddle.no_grad():
        for start in range(0, min(count, len(indices)), 500):
            images, _ = dataset.get_batch(indices[start : min(start + 500, count)])
            features.append(net(paddle.to_tensor(images))[0].numpy().astype(np.float64))
    variance = np.concatenate(features).var(axis=0).mean()
    return float(1.0 / np.sqrt(variance)) if variance > 0 else 1.0


def _save_classifier(path: Path, net: ClassifierNet, info: dict) -> None:
    """Weights, then the JSON that marks them complete; each renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        save_file(ckpt.layer_arrays(net), str(tmp.with_suffix(".safetensors")))
        os.replace(tmp.with_suffix(".safetensors"), path.with_suffix(".safetensors"))
        tmp.with_suffix(".json").write_text(json.dumps(info, indent=1), encoding="utf-8")
        os.replace(tmp.with_suffix(".json"), path.with_suffix(".json"))
    except OSError as exc:
        log.warning(f"cannot cache the classifier in {path.parent} ({exc}); using it uncached")


@contextlib.contextmanager
def private_paddle_rng(seed: int):
    """Seed Paddle's generator inside, restore the caller's state after."""
    state = paddle.get_rng_state()
    paddle.seed(seed)
    try:
        yield
    finally:
        paddle.set_rng_state(state)


# ---------------------------------------------------------------------- InceptionV3 (FID)
class BasicConv2d(nn.Layer):
    """conv (no bias) -> BatchNorm (eps 1e-3, as TensorFlow) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2D(
            in_channels, out_channels, kernel_size, stride, padding, bias_attr=False
        )
        self.bn = nn.BatchNorm2D(out_channels, epsilon=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x):
    # exclusive=True leaves the zero padding out of the mean, as TensorFlow's pool did (the
    # "FID Inception" patch of pytorch-fid)
    return F.avg_pool2d(x, 3, stride=1, padding=1, exclusive=True)


class InceptionA(nn.Layer):
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3(x))
        return paddle.concat([b1, b5, b3, bp], axis=1)


class InceptionB(nn.Layer):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return paddle.concat([b3, b3d, F.max_pool2d(x, 3, stride=2)], axis=1)


class InceptionC(nn.Layer):
    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            b7d = layer(b7d)
        b7d = self.branch7x7dbl_5(b7d)
        bp = self.branch_pool(_avg_pool_3x3(x))
        return paddle.concat([b1, b7, b7d, bp], axis=1)


class InceptionD(nn.Layer):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return paddle.concat([b3, b7, F.max_pool2d(x, 3, stride=2)], axis=1)


class InceptionE(nn.Layer):
    """`max_pool=True` for Mixed_7c: the TensorFlow FID graph max-pools there (a quirk of that
    graph that FID numbers depend on)."""

    def __init__(self, in_channels: int, max_pool: bool = False):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = paddle.concat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=1)
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = paddle.concat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], axis=1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_3x3(x)
        return paddle.concat([b1, b3, b3d, self.branch_pool(pooled)], axis=1)


class FIDInceptionV3(nn.Layer):
    """images [N, 3, 299, 299] in [-1, 1] -> (pool3 features [N, 2048], IS logits [N, 1008]).

    torchvision's InceptionV3 with pytorch-fid's FID patches, layer names kept so its weight
    file maps key for key. The IS logits are pool3 @ fc.weight without fc.bias, as the reference
    Inception Score computes them (module docstring); fc.bias is loaded but takes no part.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(INCEPTION_FEATURES, INCEPTION_LOGITS)

    def forward(self, x):
        # state size. 3 x 299 x 299
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        # state size. 64 x 73 x 73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        # state size. 192 x 35 x 35
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a):
            x = block(x)
        # state size. 768 x 17 x 17
        for block in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a):
            x = block(x)
        # state size. 1280 x 8 x 8
        x = self.Mixed_7c(self.Mixed_7b(x))
        # state size. 2048 x 8 x 8
        pool3 = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return pool3, paddle.matmul(pool3, self.fc.weight)  # no bias: the reference IS logits


class InceptionExtractor:
    """FID InceptionV3: pool3 features [N, 2048] and, when the file has the fc layer, 1008-way
    class probabilities for the inception score (softmax of the logits without the fc bias, as
    published IS values are computed). Gray images are repeated to 3 channels."""

    kind = "inception"

    def __init__(self, net: FIDInceptionV3, cache_id: str, with_logits: bool, batch_size: int = 16):
        self.net, self.cache_id, self.with_logits = net, cache_id, with_logits
        self.batch_size = batch_size
        self.net.eval()

    @classmethod
    def from_file(cls, weights_path: str | os.PathLike | None) -> InceptionExtractor:
        """Load weights from a .safetensors (or .npz) file; see the module docstring."""
        if not weights_path:
            raise UserError(
                "the inception extractor needs its weights: set eval.inception_weights=FILE "
                f"(a .safetensors made from pytorch-fid's {INCEPTION_WEIGHTS_URL} weights, "
                "see paddlegan_lite/extractors.py), or use eval.extractor=classifier"
            )
        path = Path(weights_path).expanduser()
        arrays = read_weight_file(path)
        net = FIDInceptionV3()
        with_logits = load_inception_arrays(net, arrays, path)
        cache_id = f"inception-v{INCEPTION_VERSION}-{file_digest(path, 'sha256')[:16]}"
        return cls(net, cache_id, with_logits)

    def describe(self) -> str:
        logits = "with IS logits (fc without bias)" if self.with_logits else "without logits"
        return f"InceptionV3 pool3 (2048-d, {logits}), weights {self.cache_id}"

    def extract(self, images) -> tuple[np.ndarray, np.ndarray | None]:
        """images float32 [N, C, H, W] in [-1, 1] -> (features [N, 2048], probs [N, 1008] or
        None)."""
        _check_images(images, None, "Inception")
        features, logits = [], []
        with paddle.no_grad():
            for start in range(0, len(images), self.batch_size):
                x = paddle.to_tensor(np.ascontiguousarray(images[start : start + self.batch_size]))
                if x.shape[1] == 1:
                    x = x.tile([1, 3, 1, 1])
                f, lg = self.net(resize_bilinear(x, INCEPTION_SIDE))
                features.append(f.numpy())
                logits.append(lg.numpy())
        probs = softmax(np.concatenate(logits)) if self.with_logits else None
        return np.concatenate(features), probs

    def features(self, images) -> np.ndarray:
        """[N, C, H, W] -> [N, 2048]"""
        return self.extract(images)[0]


def resize_bilinear(x, side: int):
    """Bilinear to side x side (align_corners=False), as pytorch-fid feeds its Inception."""
    if tuple(x.shape[2:]) == (side, side):
        return x
    return F.interpolate(x, size=[side, side], mode="bilinear", align_corners=False)


def read_weight_file(path: Path) -> dict[str, np.ndarray]:
    """Arrays by name from .safetensors or .npz (without pickle); a clear UserError otherwise."""
    if not path.is_file():
        raise UserError(
            f"Inception weights file {path} not found: download pytorch-fid's "
            f"pt_inception-2015-12-05-6726825d.pth from {INCEPTION_WEIGHTS_URL} and convert it "
            "to .safetensors as described in paddlegan_lite/extractors.py"
        )
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
    except (OSError, ValueError, SafetensorError) as exc:
        raise UserError(f"cannot read Inception weights {path}: {exc}") from None
    raise UserError(
        f"Inception weights {path}: use a .safetensors (or .npz) file; .pth and .pdparams files "
        "are pickles, which paddlegan_lite never loads (convert as in paddlegan_lite/extractors.py)"
    )


def load_inception_arrays(net: FIDInceptionV3, arrays: dict, path: Path) -> bool:
    """Load torchvision- or Paddle-named arrays into `net`; returns whether fc was in the file."""
    renamed = {}
    for key, value in arrays.items():
        if key.endswith("num_batches_tracked"):
            continue
        key = key.replace(".running_mean", "._mean").replace(".running_var", "._variance")
        if key == "fc.weight" and value.shape == (INCEPTION_LOGITS, INCEPTION_FEATURES):
            value = value.T  # torch Linear stores [out, in], Paddle [in, out]
        renamed[key] = np.ascontiguousarray(value, dtype=np.float32)
    expected = net.state_dict()
    with_logits = "fc.weight" in renamed
    wanted = {k for k in expected if with_logits or not k.startswith("fc.")}
    missing, unexpected = sorted(wanted - set(renamed)), sorted(set(renamed) - set(expected))
    wrong = [k for k in wanted & set(renamed) if tuple(expected[k].shape) != renamed[k].shape]
    if missing or unexpected or wrong:
        raise UserError(
            f"{path} is not an FID InceptionV3 weight file (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shapes {wrong[:3]}; {len(renamed)} arrays read)"
        )
    net.set_state_dict({k: paddle.to_tensor(v) for k, v in renamed.items()})
    return with_logits


# ---------------------------------------------------------------------- shared helpers
def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64: [N, K] -> [N, K], rows summing to 1."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _check_images(images, shape, who: str) -> None:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.float32:
        raise UserError(f"{who} takes float32 images [N, C, H, W] in [-1, 1]")
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        raise UserError(
            f"images are {list(images.shape[1:])} but {who} was trained on {list(shape)}: "
            "evaluate against the data the model was trained on (same image_size and channels)"
        )
    if images.shape[1] not in (1, 3):
        raise UserError(f"{who} takes 1 or 3 channel images, got {images.shape[1]}")


def _all_or(indices, dataset) -> np.ndarray:
    return np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
