"""DiffAugment and the mirroring of real images (augment.py): each transform by hand, gradients,
the config keys, training."""

import math

import numpy as np
import paddle
import pytest
from helpers import tiny_cfg

from paddlegan_lite import augment
from paddlegan_lite.checkpoint import find_latest, load_checkpoint
from paddlegan_lite.config import (
    DIFFAUGMENT_POLICIES,
    ConfigError,
    diffaugment_policies,
    load_config,
)
from paddlegan_lite.datasets import build_dataset
from paddlegan_lite.trainer import build_trainer, train

ALL_TEXT = "color,translation,cutout"  # as train.diffaugment spells it
ALL = ["color", "translation", "cutout"]  # as the trainer hands it to diff_augment


def images(shape=(2, 3, 16, 16), seed=0):
    x = np.random.default_rng(seed).uniform(-1, 1, shape).astype("float32")
    t = paddle.to_tensor(x)
    t.stop_gradient = False
    return t


def fix_uniform(monkeypatch, value):
    """Every U[0, 1) draw returns `value`."""
    monkeypatch.setattr(
        augment, "_uniform", lambda batch: paddle.full([batch, 1, 1, 1], value, "float32")
    )


def fix_integers(monkeypatch, *values):
    """The integer draws return `values` in turn (one per sample); records (low, high)."""
    asked, queue = [], list(values)

    def draw(low, high, batch):
        asked.append((low, high))
        return paddle.to_tensor(queue.pop(0), dtype="int64").reshape([batch])

    monkeypatch.setattr(augment, "_integers", draw)
    return asked


def as_np(t):
    return t.numpy()


# ---------------------------------------------------------------------- every transform
TRANSFORMS = [
    augment.brightness,
    augment.saturation,
    augment.contrast,
    augment.translation,
    augment.cutout,
    lambda x: augment.diff_augment(x, ALL),
]
IDS = ["brightness", "saturation", "contrast", "translation", "cutout", "all"]


@pytest.mark.parametrize("transform", TRANSFORMS, ids=IDS)
@pytest.mark.parametrize("channels", [1, 3])
def test_keeps_shape_and_dtype_and_passes_gradients(transform, channels):
    x = images((4, channels, 16, 16))
    y = transform(x)
    assert y.shape == x.shape and y.dtype == paddle.float32
    (grad,) = paddle.grad(y.sum(), x)
    grad = as_np(grad)
    assert np.isfinite(grad).all()
    assert np.abs(grad).sum() > 0


def test_policy_names_match_the_config():
    assert tuple(augment.TRANSFORMS) == DIFFAUGMENT_POLICIES


def test_empty_policy_is_the_identity():
    x = images()
    assert augment.diff_augment(x, []) is x


def test_draws_are_fresh_per_call_and_follow_the_seed():
    x = images()
    paddle.seed(7)
    a, b = augment.diff_augment(x, ALL), augment.diff_augment(x, ALL)
    paddle.seed(7)
    c = augment.diff_augment(x, ALL)
    assert not np.array_equal(as_np(a), as_np(b))
    np.testing.assert_array_equal(as_np(a), as_np(c))


# ---------------------------------------------------------------------- color, by hand
def test_brightness_adds_the_draw_minus_a_half(monkeypatch):
    fix_uniform(monkeypatch, 0.75)
    x = images((1, 3, 2, 2))
    np.testing.assert_allclose(as_np(augment.brightness(x)), as_np(x) + 0.25, rtol=1e-6)


def test_saturation_scales_the_distance_from_the_channel_mean(monkeypatch):
    fix_uniform(monkeypatch, 0.25)  # factor 2 * 0.25 = 0.5
    # two pixels: channels (0.2, 0.4, 0.9) around 0.5, and (-1, 0, 1) around 0
    x = paddle.to_tensor([[[[0.2, -1.0]], [[0.4, 0.0]], [[0.9, 1.0]]]])
    expected = [[[[0.35, -0.5]], [[0.45, 0.0]], [[0.7, 0.5]]]]
    np.testing.assert_allclose(as_np(augment.saturation(x)), expected, rtol=1e-6, atol=1e-7)


def test_saturation_leaves_one_channel_images_alone():
    x = images((4, 1, 8, 8))
    np.testing.assert_array_equal(as_np(augment.saturation(x)), as_np(x))


def test_contrast_scales_the_distance_from_the_image_mean(monkeypatch):
    fix_uniform(monkeypatch, 0.0)  # factor 0 + 0.5
    x = paddle.to_tensor([[[[-1.0, 1.0], [0.0, 0.6]]]])  # mean 0.15
    expected = [[[[-0.425, 0.575], [0.075, 0.375]]]]
    np.testing.assert_allclose(as_np(augment.contrast(x)), expected, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------- translation
def test_translation_moves_a_pixel_by_the_drawn_shift(monkeypatch):
    asked = fix_integers(monkeypatch, [2], [-2])  # down 2 rows, left 2 columns
    x = np.zeros((1, 1, 16, 16), "float32")
    x[0, 0, 3, 4] = 1.0
    y = as_np(augment.translation(paddle.to_tensor(x)))
    assert asked == [(-2, 3), (-2, 3)]  # shifts up to 16 / 8 = 2 pixels either way
    expected = np.zeros_like(x)
    expected[0, 0, 5, 2] = 1.0
    np.testing.assert_array_equal(y, expected)


def test_translation_fills_with_zeros_per_sample(monkeypatch):
    fix_integers(monkeypatch, [1, -2], [-1, 0])  # sample 0: (1, -1), sample 1: (-2, 0)
    x = paddle.ones([2, 3, 16, 16])
    x.stop_gradient = False
    y = augment.translation(x)
    expected = np.ones((2, 3, 16, 16), "float32")
    expected[0, :, :1, :] = 0  # the row shifted in at the top
    expected[0, :, :, 15:] = 0  # the column shifted in at the right
    expected[1, :, 14:, :] = 0  # two rows shifted in at the bottom
    np.testing.assert_array_equal(as_np(y), expected)
    # the gradient reaches exactly the pixels that stay in the image
    (grad,) = paddle.grad(y.sum(), x)
    kept = np.ones((2, 3, 16, 16), "float32")
    kept[0, :, 15:, :] = 0
    kept[0, :, :, :1] = 0
    kept[1, :, :2, :] = 0
    np.testing.assert_array_equal(as_np(grad), kept)


# ---------------------------------------------------------------------- cutout
def test_cutout_zeroes_a_square_of_half_the_size(monkeypatch):
    asked = fix_integers(monkeypatch, [4], [3])  # centre at row 4, column 3
    x = images((1, 3, 8, 8))
    y = augment.cutout(x)
    assert asked == [(0, 9), (0, 9)]  # an even side may centre one past the last pixel
    hole = np.zeros((8, 8), bool)
    hole[2:6, 1:5] = True  # side 8 / 2 = 4, starting half a side before the centre
    y = as_np(y)
    assert (y[0][:, hole] == 0).all()
    np.testing.assert_array_equal(y[0][:, ~hole], as_np(x)[0][:, ~hole])
    # no gradient through the hole, all of it elsewhere
    fix_integers(monkeypatch, [4], [3])
    (grad,) = paddle.grad(augment.cutout(x).sum(), x)
    np.testing.assert_array_equal(as_np(grad)[0], np.broadcast_to(~hole, (3, 8, 8)))


def test_cutout_is_cut_off_at_the_border(monkeypatch):
    fix_integers(monkeypatch, [0, 8], [8, 0])  # corners: bottom-left and top-right of hole
    y = as_np(augment.cutout(paddle.ones([2, 1, 8, 8])))
    expected = np.ones((2, 1, 8, 8), "float32")
    expected[0, 0, :2, 6:] = 0  # rows -2..1, columns 6..9, inside the image
    expected[1, 0, 6:, :2] = 0
    np.testing.assert_array_equal(y, expected)


# ---------------------------------------------------------------------- config and training
def test_config_refuses_an_unknown_policy(repo_root):
    with pytest.raises(ConfigError) as err:
        load_config(repo_root / "configs" / "dcgan_mnist.yaml", ["train.diffaugment=colour"])
    message = str(err.value)
    assert "train.diffaugment" in message and "colour" in message
    assert "color, translation, cutout" in message


def test_config_reads_a_policy_list(repo_root):
    cfg = load_config(repo_root / "configs" / "dcgan_mnist.yaml", [f"train.diffaugment={ALL_TEXT}"])
    assert cfg.train.diffaugment == ALL_TEXT
    assert diffaugment_policies(cfg.train.diffaugment) == ALL
    assert load_config(repo_root / "configs" / "dcgan_mnist.yaml").train.diffaugment == ""


@pytest.mark.parametrize("option", [f"train.diffaugment={ALL_TEXT}", "data.hflip=true"])
def test_training_with_augmentation_is_finite_and_repeatable(mnist_root, tmp_path, option):
    def run(folder, *options):
        cfg = tiny_cfg("dcgan_mnist", mnist_root, tmp_path / folder, "train.max_steps=2", *options)
        last = train(cfg)
        assert math.isfinite(last["loss_d"]) and math.isfinite(last["loss_g"])
        return load_checkpoint(find_latest(tmp_path / folder / "checkpoints"))[1]

    a, b, plain = run("a", option), run("b", option), run("plain")
    for part in ("netG", "netD"):
        for key in a[part]:
            np.testing.assert_array_equal(a[part][key], b[part][key])
    # the option reaches the D and G steps: without it the same seed trains other weights
    assert any(not np.array_equal(a["netD"][k], plain["netD"][k]) for k in a["netD"])


# ---------------------------------------------------------------------- data.hflip
@pytest.mark.parametrize("draw, mirrored", [(0.2, True), (0.7, False)])
def test_random_hflip_mirrors_where_the_draw_is_under_a_half(monkeypatch, draw, mirrored):
    fix_uniform(monkeypatch, draw)
    x = images((3, 2, 4, 5))
    expected = as_np(x)[..., ::-1] if mirrored else as_np(x)
    np.testing.assert_array_equal(as_np(augment.random_hflip(x)), expected)


def test_random_hflip_mirrors_about_half_and_follows_the_seed():
    x = images((400, 1, 2, 3))
    paddle.seed(5)
    first = as_np(augment.random_hflip(x))
    paddle.seed(5)
    np.testing.assert_array_equal(as_np(augment.random_hflip(x)), first)
    same = (first == as_np(x)).all(axis=(1, 2, 3))
    flipped = (first == as_np(x)[..., ::-1]).all(axis=(1, 2, 3))
    assert (same | flipped).all() and not (same & flipped).any()
    assert 150 < flipped.sum() < 250


def test_data_hflip_mirrors_the_real_batch_d_sees(mnist_root, tmp_path, monkeypatch):
    """Each step's D step gets the real batch as random_hflip returned it; off (the default),
    random_hflip is never called."""
    from paddlegan_lite import trainer as trainer_module

    mirrored, seen = [], []
    real_flip, real_d_step = augment.random_hflip, trainer_module.GANTrainer.d_step

    def recording_flip(x):
        mirrored.append((as_np(x), as_np(real_flip(x))))
        return paddle.to_tensor(mirrored[-1][1])

    def recording_d_step(self, real, *args):
        seen.append(as_np(real))
        return real_d_step(self, real, *args)

    monkeypatch.setattr(trainer_module, "random_hflip", recording_flip)
    monkeypatch.setattr(trainer_module.GANTrainer, "d_step", recording_d_step)
    options = ("train.max_steps=2", "data.hflip=true")
    train(tiny_cfg("dcgan_mnist", mnist_root, tmp_path / "on", *options))
    assert len(mirrored) == len(seen) == 2
    for (before, after), real in zip(mirrored, seen):
        np.testing.assert_array_equal(real, after)
        assert not np.array_equal(after, before)  # some image of the batch was mirrored
    seen.clear()
    train(tiny_cfg("dcgan_mnist", mnist_root, tmp_path / "off", "train.max_steps=2"))
    assert len(seen) == 2 and len(mirrored) == 2  # the default never mirrors


def test_every_d_pass_sees_its_own_augmented_batch(mnist_root, tmp_path, monkeypatch):
    """DiffAugment as Zhao et al. apply it: real and fake images augmented before every D pass,
    in the D step and the G step, each pass with fresh draws; off (the default), D sees the
    images as they are."""
    from paddlegan_lite import trainer as trainer_module

    calls, seen = [], []
    real_augment = augment.diff_augment

    def recording_augment(x, policies):
        out = real_augment(x, policies)
        calls.append((as_np(x), as_np(out)))
        return out

    monkeypatch.setattr(trainer_module, "diff_augment", recording_augment)
    options = ("train.max_steps=1", "train.d_steps=1")
    cfg = tiny_cfg(
        "dcgan_mnist", mnist_root, tmp_path / "on", *options, f"train.diffaugment={ALL_TEXT}"
    )
    trainer = build_trainer(cfg, build_dataset(cfg.data, cfg.model.image_size, 1, train=True))
    trainer.netD.register_forward_pre_hook(lambda layer, args: seen.append(as_np(args[0])))
    trainer.fit()
    assert len(calls) == len(seen) == 3  # real and fake in the D step, fake in the G step
    for (before, after), d_input in zip(calls, seen):
        np.testing.assert_array_equal(d_input, after)  # D sees the augmented batch only
        assert not np.array_equal(after, before)
    # the D step's fake and the G step's fake are the same images, drawn for separately
    np.testing.assert_array_equal(calls[1][0], calls[2][0])
    assert not np.array_equal(calls[1][1], calls[2][1])

    calls.clear(), seen.clear()
    cfg = tiny_cfg("dcgan_mnist", mnist_root, tmp_path / "off", *options)
    trainer = build_trainer(cfg, build_dataset(cfg.data, cfg.model.image_size, 1, train=True))
    trainer.netD.register_forward_pre_hook(lambda layer, args: seen.append(as_np(args[0])))
    trainer.fit()
    assert len(seen) == 3 and all(np.array_equal(x, y) for x, y in calls)
