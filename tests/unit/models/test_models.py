"""Every model at its configured sizes: output shapes, value ranges, and the conditional input."""

import numpy as np
import paddle
import pytest

from paddlegan_lite.config import ConfigError, ModelConfig, load_config
from paddlegan_lite.models import build_models
from paddlegan_lite.models.dcgan import DCGANGenerator


def forward(netG, netD, m, batch=3):
    z = paddle.randn([batch, m.nz])
    if m.num_classes:
        images = netG(z, paddle.to_tensor(np.arange(batch) % m.num_classes, dtype="int64"))
    else:
        images = netG(z)
    return images, netD(images)


@pytest.mark.parametrize("name", ["mlp_gan_mnist", "dcgan_mnist", "dcgan_cifar10", "acgan_mnist"])
def test_configured_models_shapes_and_range(repo_root, name):
    m = load_config(repo_root / "configs" / f"{name}.yaml").model
    netG, netD = build_models(m)
    images, out = forward(netG, netD, m)
    assert tuple(images.shape) == (3, m.channels, m.image_size, m.image_size)
    assert netG.image_shape == (m.channels, m.image_size, m.image_size)
    values = images.numpy()
    assert values.min() >= -1.0 and values.max() <= 1.0  # tanh output
    assert values.std() > 1e-3  # not a constant image
    if m.num_classes:
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
