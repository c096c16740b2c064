"""Feature extractors: the classifier trains on tiny real-format data with its data kind's recipe
(augmentation drawn from the seed), caches itself and reloads identically; the FID InceptionV3
has the reference architecture, loads safetensors weights and refuses what it cannot use with one
clear message."""

import dataclasses
import json

import numpy as np
import paddle
import pytest
from data_files import write_cifar10_tarball, write_mnist_idx
from safetensors.numpy import load_file, save_file

from paddlegan_lite import extractors
from paddlegan_lite.checkpoint import layer_arrays
from paddlegan_lite.config import EXTRACTORS, DataConfig, EvalConfig
from paddlegan_lite.datasets import build_dataset, dataset_fingerprint
from paddlegan_lite.errors import UserError
from paddlegan_lite.extractors import (
    CACHE_ENV,
    CLASSIFIER_VERSION,
    DIGITS,
    PHOTOS,
    ClassifierExtractor,
    FIDInceptionV3,
    InceptionExtractor,
    augment,
    classifier_recipe,
    resolve_cache_dir,
)
from paddlegan_lite.metrics import inception_score

STEPS = 40


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Nothing in this module may write to ~/.cache: the default cache is a temporary folder."""
    folder = tmp_path_factory.mktemp("default_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """(train, test) datasets of 28x28 pattern digits: 200 training and 60 test images."""
    root = tmp_path_factory.mktemp("mnist")
    write_mnist_idx(root, n=200, seed=3, n_test=60)
    cfg = DataConfig(root=str(root), download=False)
    return build_dataset(cfg, 28, 1, train=True), build_dataset(cfg, 28, 1, train=False)


@pytest.fixture(scope="module")
def trained(mnist, tmp_path_factory):
    """(classifier trained STEPS steps, its cache folder)."""
    cache = tmp_path_factory.mktemp("cache")
    train, test = mnist
    extractor = ClassifierExtractor.load_or_train(
        train, test, "mnist", cache_dir=cache, steps=STEPS
    )
    return extractor, cache


# ---------------------------------------------------------------------- classifier
@pytest.mark.slow  # trains the classifier (the module's `trained`)
def test_classifier_trains_and_reports_its_test_accuracy(mnist, trained):
    _, test = mnist
    extractor, _ = trained
    images, labels = test.get_batch(np.arange(len(test)))
    features, probs = extractor.extract(images)
    assert features.shape == (60, 128) and probs.shape == (60, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    accuracy = float(np.mean(probs.argmax(axis=1) == labels))
    assert extractor.test_accuracy == pytest.approx(accuracy)
    assert extractor.info["num_train"] == 200 and extractor.info["num_test"] == 60
    assert accuracy > 0.5  # chance is 0.1: the class bars are learned within 40 steps


@pytest.mark.slow  # needs `trained`
def test_classifier_is_cached_under_dataset_shape_version_and_data_hash(trained):
    extractor, cache = trained
    name = extractor.cache_id
    assert name.startswith(f"classifier-mnist-1x28x28-v{CLASSIFIER_VERSION}-{STEPS}steps-")
    assert sorted(p.name for p in cache.iterdir()) == [f"{name}.json", f"{name}.safetensors"]
    info = json.loads((cache / f"{name}.json").read_text())
    assert info["test_accuracy"] == pytest.approx(extractor.test_accuracy)
    assert info["image_shape"] == [1, 28, 28]
    assert info["recipe"] == dataclasses.asdict(DIGITS) and info["steps"] == STEPS


@pytest.mark.slow  # needs `trained`
def test_classifier_reloads_identically_without_training(mnist, trained, monkeypatch):
    train, test = mnist
    extractor, cache = trained

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been reused")

    monkeypatch.setattr(extractors, "train_classifier", no_training)
    again = ClassifierExtractor.load_or_train(train, test, "mnist", cache_dir=cache, steps=STEPS)
    images, _ = test.get_batch(np.arange(20))
    np.testing.assert_array_equal(again.features(images), extractor.features(images))
    np.testing.assert_array_equal(again.probs(images), extractor.probs(images))
    assert again.test_accuracy == pytest.approx(extractor.test_accuracy)


@pytest.mark.slow  # needs `trained`
def test_other_data_gets_another_cache_entry(mnist, trained):
    train, test = mnist
    extractor, _ = trained
    assert dataset_fingerprint(train) == dataset_fingerprint(train)
    assert dataset_fingerprint(train) != dataset_fingerprint(train, np.arange(199))
    fewer = extractors.classifier_cache_name(
        "mnist", (1, 28, 28), STEPS, [dataset_fingerprint(train, np.arange(199))]
    )
    assert fewer != extractor.cache_id


@pytest.mark.slow  # trains the classifier
def test_classifier_training_leaves_the_callers_random_stream_alone(mnist, tmp_path):
    train, test = mnist
    paddle.seed(123)
    expected = paddle.randn([4]).numpy()
    paddle.seed(123)
    ClassifierExtractor.load_or_train(train, test, "mnist", cache_dir=tmp_path, steps=2)
    np.testing.assert_array_equal(paddle.randn([4]).numpy(), expected)


@pytest.mark.slow  # needs `trained`
def test_classifier_refuses_images_of_another_shape(trained):
    extractor, _ = trained
    with pytest.raises(UserError, match=r"\[1, 32, 32\] but the classifier was trained on"):
        extractor.extract(np.zeros((2, 1, 32, 32), np.float32))


@pytest.mark.slow  # trains twice
def test_classifier_training_is_deterministic_for_a_seed(mnist, tmp_path):
    train, test = mnist
    runs = [
        ClassifierExtractor.load_or_train(train, test, "mnist", cache_dir=tmp_path / d, steps=3)
        for d in ("a", "b")
    ]
    weights = [layer_arrays(run.net) for run in runs]
    assert weights[0].keys() == weights[1].keys()
    assert any(name.endswith("_mean") for name in weights[0])  # BatchNorm statistics saved too
    for name, value in weights[0].items():
        np.testing.assert_array_equal(weights[1][name], value, err_msg=name)
    other = ClassifierExtractor.load_or_train(
        train, test, "mnist", cache_dir=tmp_path / "c", steps=3, seed=1
    )
    assert other.cache_id != runs[0].cache_id
    assert not np.array_equal(layer_arrays(other.net)["fc.weight"], weights[0]["fc.weight"])


@pytest.mark.slow  # trains the classifier
def test_steps_0_trains_the_recipes_number_of_steps(mnist, tmp_path, monkeypatch):
    train, test = mnist
    monkeypatch.setattr(extractors, "DIGITS", dataclasses.replace(DIGITS, steps=3))
    extractor = ClassifierExtractor.load_or_train(train, test, "mnist", cache_dir=tmp_path, steps=0)
    assert extractor.info["steps"] == 3 and "-3steps-" in extractor.cache_id
    assert EvalConfig().classifier_steps == 0  # eval.classifier_steps' default: the recipe's


def test_the_extractor_kinds_are_the_choices_of_eval_extractor():
    assert (ClassifierExtractor.kind, InceptionExtractor.kind) == EXTRACTORS


@pytest.mark.parametrize(
    ("dataset_name", "channels", "recipe"),
    [("mnist", 1, DIGITS), ("mnist", 3, DIGITS), ("folder", 1, DIGITS), ("folder", 3, PHOTOS),
     ("cifar10", 3, PHOTOS)],
)  # fmt: skip
def test_the_data_kind_picks_the_recipe(dataset_name, channels, recipe):
    assert classifier_recipe(dataset_name, channels) is recipe


def test_photos_are_mirrored_and_digits_are_not():
    assert PHOTOS.flip and PHOTOS.crop_padding == 4
    assert not DIGITS.flip and DIGITS.crop_padding > 0


@pytest.mark.slow  # trains the classifier
def test_training_augments_photos_as_their_recipe_says(tmp_path, monkeypatch):
    write_cifar10_tarball(tmp_path, n_per_batch=8, n_test=10)
    cfg = DataConfig(name="cifar10", root=str(tmp_path), download=False)
    train, test = build_dataset(cfg, 32, 3, train=True), build_dataset(cfg, 32, 3, train=False)
    seen = []

    def recording(images, rng, crop_padding, flip):
        seen.append((images.shape, crop_padding, flip))
        return augment(images, rng, crop_padding, flip)

    monkeypatch.setattr(extractors, "augment", recording)
    extractor = ClassifierExtractor.load_or_train(
        train, test, "cifar10", cache_dir=tmp_path / "cache", steps=2
    )
    assert seen == [((40, 3, 32, 32), 4, True)] * 2  # 40 images: one batch smaller than 128
    assert extractor.info["recipe"] == dataclasses.asdict(PHOTOS)
    assert extractor.cache_id.startswith(
        f"classifier-cifar10-3x32x32-v{CLASSIFIER_VERSION}-2steps-"
    )


# ---------------------------------------------------------------------- augmentation
def ramp_images(n: int = 6, channels: int = 3, side: int = 8) -> np.ndarray:
    """[n, C, side, side] float32 in [-1, 1], every pixel distinct: where a pixel went shows."""
    values = np.linspace(-1, 1, n * channels * side * side, dtype=np.float32)
    return values.reshape(n, channels, side, side)


def test_augment_keeps_shape_dtype_and_range_and_repeats_for_a_seed():
    images = ramp_images()
    first = augment(images, np.random.default_rng(5), 4, True)
    assert first.shape == images.shape and first.dtype == np.float32
    assert first.flags.c_contiguous
    assert first.min() >= images.min() and first.max() <= images.max()  # reflected, not padded
    np.testing.assert_array_equal(augment(images, np.random.default_rng(5), 4, True), first)
    assert not np.array_equal(augment(images, np.random.default_rng(6), 4, True), first)
    np.testing.assert_array_equal(augment(images, np.random.default_rng(5), 0, False), images)


def test_augment_crops_are_shifts_of_the_reflected_image():
    images, p = ramp_images(n=40), 2
    out = augment(images, np.random.default_rng(0), p, False)
    padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect")
    shifts = set()
    for image, source in zip(out, padded):
        found = [
            (y, x)
            for y in range(2 * p + 1)
            for x in range(2 * p + 1)
            if np.array_equal(source[:, y : y + 8, x : x + 8], image)
        ]
        assert len(found) == 1  # every pixel distinct: exactly one crop matches
        shifts.add(found[0])
    assert len(shifts) > 10  # of the 25 possible offsets: drawn per image, not per batch


def test_augment_flip_mirrors_about_half_of_the_images_left_right():
    images = ramp_images(n=200, side=4)
    out = augment(images, np.random.default_rng(0), 0, True)
    mirrored = np.array([np.array_equal(o, i[..., ::-1]) for o, i in zip(out, images)])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, images)])
    assert np.all(mirrored ^ kept)  # each image is itself or its mirror, never both
    assert 70 <= mirrored.sum() <= 130  # Binomial(200, 1/2): outside only with p < 1e-4


def test_cache_dir_comes_from_the_argument_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(CACHE_ENV)
    assert resolve_cache_dir().parts[-2:] == (".cache", "paddlegan_lite")


# ---------------------------------------------------------------------- InceptionV3
@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """(net with seeded random weights, the same weights saved as pytorch-fid names)."""
    paddle.seed(7)
    net = FIDInceptionV3()
    net.eval()
    # BatchNorm statistics of a fresh net are 0 and 1: give them values a mix-up would show
    for name, value in net.state_dict().items():
        if name.endswith("_variance"):
            value.set_value(np.linspace(0.5, 2.0, value.shape[0], dtype=np.float32))
    # a fresh Linear's bias is 0, which would hide whether the IS logits add it: the real file's
    # is not (pytorch-fid's fc.bias spans about -1.3 to 2.6)
    bias = np.random.default_rng(11).normal(0.0, 2.0, net.fc.bias.shape).astype(np.float32)
    net.fc.bias.set_value(bias)
    path = tmp_path_factory.mktemp("inception") / "fid_inception.safetensors"
    save_file(torch_named_arrays(net), str(path))
    return net, path


def torch_named_arrays(net) -> dict:
    """The layout of pytorch-fid's state dict: running_mean/var, fc.weight [out, in]."""
    arrays = {}
    for key, value in net.state_dict().items():
        array = value.numpy()
        key = key.replace("._mean", ".running_mean").replace("._variance", ".running_var")
        if key == "fc.weight":
            array = array.T
        arrays[key] = np.ascontiguousarray(array)
    arrays["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0, dtype=np.int64)
    return arrays


@pytest.mark.slow  # builds the full InceptionV3
def test_inception_has_the_reference_architecture():
    net = FIDInceptionV3()
    trainable = sum(int(np.prod(p.shape)) for p in net.parameters() if p.trainable)
    # torchvision's inception_v3: 27,161,264 parameters; less its aux classifier (3,326,696),
    # plus 8 more logits (8 x 2,049) for the FID graph's 1,008 classes
    assert trainable == 27_161_264 - 3_326_696 + 8 * 2049
    assert len(net.state_dict()) == 94 * 5 + 2  # 94 conv+BN blocks (5 arrays each), fc


@pytest.mark.slow  # a full InceptionV3 forward
def test_inception_pool3_features_are_2048_wide_and_deterministic(inception_file):
    source_net, path = inception_file
    extractor = InceptionExtractor.from_file(path)
    gray = np.random.default_rng(0).uniform(-1, 1, (2, 1, 28, 28)).astype(np.float32)
    features, probs = extractor.extract(gray)
    assert features.shape == (2, 2048) and probs.shape == (2, 1008)
    np.testing.assert_array_equal(extractor.extract(gray)[0], features)
    # one image alone gives its features in the batch (BatchNorm uses stored statistics)
    np.testing.assert_allclose(extractor.extract(gray[1:])[0], features[1:], rtol=1e-4, atol=1e-5)
    # gray is the same image repeated in 3 channels
    rgb = np.repeat(gray, 3, axis=1)
    np.testing.assert_allclose(extractor.extract(rgb)[0], features, rtol=1e-5, atol=1e-6)
    # the file's weights are the source net's: same features from the same 299 x 299 input
    with paddle.no_grad():
        resized = extractors.resize_bilinear(paddle.to_tensor(rgb), 299)
        expected, logits = (t.numpy() for t in source_net(resized))
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probs, extractors.softmax(logits), rtol=1e-4, atol=1e-7)


@pytest.mark.slow  # a full InceptionV3 forward
def test_inception_score_leaves_out_the_fc_bias(inception_file, tmp_path):
    """The reference IS (Salimans et al.'s TF code; torch-fidelity's `logits_unbiased`) takes the
    softmax of pool3 @ W, without the fc bias. Here W sends image i to class i and the bias sends
    every image to class 6: IS 6 without the bias, 1 with it."""
    _, path = inception_file
    images = np.random.default_rng(1).uniform(-1, 1, (6, 3, 32, 32)).astype(np.float32)
    features = InceptionExtractor.from_file(path).features(images).astype(np.float64)
    arrays = load_file(str(path))
    weight, bias = np.zeros((1008, 2048)), np.zeros(1008)
    weight[:6] = 20.0 * np.linalg.pinv(features).T  # features @ weight.T = 20 I on 6 classes
    bias[6] = 30.0
    arrays["fc.weight"], arrays["fc.bias"] = weight.astype(np.float32), bias.astype(np.float32)
    steered = tmp_path / "steered.safetensors"
    save_file(arrays, str(steered))

    got, probs = InceptionExtractor.from_file(steered).extract(images)
    np.testing.assert_allclose(got, features, rtol=1e-5, atol=1e-6)
    logits = features @ arrays["fc.weight"].astype(np.float64).T  # by hand, in float64
    np.testing.assert_allclose(logits[:, :7], 20.0 * np.eye(6, 7), atol=1e-2)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-8)
    assert inception_score(probs, splits=1)[0] == pytest.approx(6.0, rel=1e-3)
    with_bias = extractors.softmax(logits + arrays["fc.bias"])
    assert inception_score(with_bias, splits=1)[0] == pytest.approx(1.0, rel=1e-3)


@pytest.mark.slow  # builds the full InceptionV3
def test_inception_without_weights_is_a_clear_error(tmp_path, inception_file):
    with pytest.raises(UserError, match="set eval.inception_weights=FILE"):
        InceptionExtractor.from_file(None)
    with pytest.raises(UserError, match="not found: download pytorch-fid's"):
        InceptionExtractor.from_file(tmp_path / "missing.safetensors")
    pickle_file = tmp_path / "pt_inception.pth"
    pickle_file.write_bytes(b"not read")
    with pytest.raises(UserError, match="pickles, which paddlegan_lite never loads"):
        InceptionExtractor.from_file(pickle_file)
    partial = tmp_path / "partial.safetensors"
    save_file({"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 3), np.float32)}, str(partial))
    with pytest.raises(UserError, match="not an FID InceptionV3 weight file"):
        InceptionExtractor.from_file(partial)
