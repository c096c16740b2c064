"""Every model at its configured sizes: output shapes, value ranges, and the conditional input."""

import numpy as np
import paddle
import pytest

from paddlegan_lite.config import ConfigError, ModelConfig, load_config
from paddlegan_lite.models import build_models
from paddlegan_lite.models.dcgan import DCGANDiscriminator, DCGANGenerator
from paddlegan_lite.models.layers import ConditionalBatchNorm2D


def forward(netG, netD, m, batch=3):
    z = paddle.randn([batch, m.nz])
    if m.num_classes:
        labels = paddle.to_tensor(np.arange(batch) % m.num_classes, dtype="int64")
        images = netG(z, labels)
        return images, netD(images, labels)
    images = netG(z)
    return images, netD(images)


@pytest.mark.parametrize(
    "name",
    ["mlp_gan_mnist", "dcgan_mnist", "dcgan_cifar10", "dcgan_cifar10_32_cond", "acgan_mnist"],
)
def test_configured_models_shapes_and_range(repo_root, name):
    m = load_config(repo_root / "configs" / f"{name}.yaml").model
    netG, netD = build_models(m)
    images, out = forward(netG, netD, m)
    assert tuple(images.shape) == (3, m.channels, m.image_size, m.image_size)
    assert netG.image_shape == (m.channels, m.image_size, m.image_size)
    values = images.numpy()
    assert values.min() >= -1.0 and values.max() <= 1.0  # tanh output
    assert values.std() > 1e-3  # not a constant image
    if m.name == "acgan":  # D's second head names the class
        logits, class_logits = out
        assert tuple(class_logits.shape) == (3, m.num_classes)
    else:
        logits = out
    assert tuple(logits.shape) == (3,)


def test_seed_widths():
    """The tutorials' layer widths at the seeds' own settings."""
    netG, netD = build_models(ModelConfig("mlp_gan", image_size=28, channels=1, init_std=0))
    assert [tuple(p.shape) for p in netG.parameters() if len(p.shape) == 2] == [
        (100, 256),
        (256, 256),
        (256, 784),
    ]
    assert [tuple(p.shape) for p in netD.parameters() if len(p.shape) == 2] == [
        (784, 256),
        (256, 256),
        (256, 1),
    ]
    g = DCGANGenerator(nz=100, ngf=128, channels=3, image_size=64)  # the MXNet tutorial's G
    widths = [p.shape[1] for p in g.parameters() if len(p.shape) == 4]
    assert widths == [1024, 512, 256, 128, 3]


def test_dcgan_image_size_is_a_parameter():
    for size, layers in [(32, 4), (64, 5), (128, 6)]:
        netG, netD = build_models(ModelConfig("dcgan", image_size=size, channels=3, ngf=4, ndf=4))
        images, logits = forward(netG, netD, ModelConfig("dcgan", image_size=size))
        assert tuple(images.shape) == (3, 3, size, size) and tuple(logits.shape) == (3,)
        assert sum(len(p.shape) == 4 for p in netG.parameters()) == layers


def test_bad_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="power of two"):
        build_models(ModelConfig("dcgan", image_size=48))
    with pytest.raises(ConfigError, match="divisible by 4"):
        build_models(ModelConfig("acgan", image_size=30, num_classes=10))


def test_acgan_label_changes_the_image():
    m = ModelConfig("acgan", image_size=28, ngf=8, ndf=4, num_classes=10)
    netG, _ = build_models(m)
    z = paddle.randn([1, m.nz]).tile([2, 1])  # the same noise, two classes, one batch
    a, b = netG(z, paddle.to_tensor([3, 7], dtype="int64")).numpy()
    assert np.abs(a - b).max() > 0.1 * np.abs(a).max()


def test_dcgan_init_is_normal_002():
    netG, _ = build_models(ModelConfig("dcgan", image_size=64, ngf=64))
    weights = np.concatenate([p.numpy().ravel() for p in netG.parameters() if len(p.shape) == 4])
    assert weights.mean() == pytest.approx(0.0, abs=1e-3)
    assert weights.std() == pytest.approx(0.02, rel=0.05)


# ------------------------------------------------------------------------------------------------
# Conditional DCGAN: conditional BatchNorm in G, a projection D
# ------------------------------------------------------------------------------------------------


def test_unconditional_dcgan_keeps_its_checkpoint_keys():
    """num_classes 0 builds the nets checkpoints were saved from: the same keys and shapes."""
    netG, netD = (
        DCGANGenerator(nz=5, ngf=4, channels=3, image_size=16),
        DCGANDiscriminator(ndf=4, channels=3, image_size=16),
    )
    bn = ["weight", "bias", "_mean", "_variance"]
    assert list(netG.state_dict()) == (
        ["main.0.weight"] + [f"main.1.{k}" for k in bn] + ["main.3.weight"]
        + [f"main.4.{k}" for k in bn] + ["main.6.weight"]
    )  # fmt: skip
    assert list(netD.state_dict()) == ["main.0.weight", "main.2.weight"] + [
        f"main.3.{k}" for k in bn
    ] + ["main.5.weight"]
    assert netG.num_classes == netD.num_classes == 0


def conditional_dcgan(num_classes=3):
    paddle.seed(6)
    m = ModelConfig("dcgan", nz=6, ngf=4, ndf=4, image_size=16, channels=3, num_classes=num_classes)
    return build_models(m)


def test_conditional_dcgan_generator_draws_the_label():
    netG, _ = conditional_dcgan()
    norms = [layer for layer in netG.sublayers() if isinstance(layer, ConditionalBatchNorm2D)]
    assert len(norms) == 2  # every BatchNorm of G
    for cbn in norms:  # away from the initial 1 and 0, so that labels matter
        cbn.gamma.weight.set_value(paddle.rand(cbn.gamma.weight.shape) + 0.5)
        cbn.beta.weight.set_value(paddle.randn(cbn.beta.weight.shape))
    z = paddle.randn([1, 6]).tile([4, 1])  # the same noise four times
    images = netG(z, paddle.to_tensor([0, 1, 2, 0])).numpy()
    assert images.shape == (4, 3, 16, 16)
    assert np.abs(images[0] - images[1]).mean() > 1e-2
    assert np.abs(images[1] - images[2]).mean() > 1e-2
    np.testing.assert_allclose(images[3], images[0], rtol=1e-5, atol=1e-6)  # same label


def test_conditional_dcgan_projection_logits_in_closed_form():
    """D(x, y) = conv(h) + embed[y] . flatten(h), h the feature map D's last conv reads."""
    _, netD = conditional_dcgan(num_classes=4)
    netD.eval()
    x = paddle.randn([4, 3, 16, 16])
    h = x
    for layer in list(netD.main.children())[:-1]:
        h = layer(h)
    h = h.reshape([4, -1]).numpy()
    unconditional = h @ netD.main[-1].weight.numpy().reshape([-1])
    embed = netD.embed.weight.numpy()
    labels = [0, 1, 2, 3]
    np.testing.assert_allclose(
        netD(x, paddle.to_tensor(labels)).numpy(),
        unconditional + (embed[labels] * h).sum(1),
        rtol=1e-4,
        atol=1e-5,
    )
    assert embed.std() == pytest.approx(0.02, rel=0.2)  # drawn as the final conv is


def test_conditional_dcgan_refuses_missing_labels():
    netG, netD = conditional_dcgan()
    with pytest.raises(ValueError, match="^this generator is class-conditional: pass labels"):
        netG(paddle.randn([2, 6]))
    with pytest.raises(ValueError, match="^this discriminator is class-conditional: pass labels"):
        netD(paddle.randn([2, 3, 16, 16]))
