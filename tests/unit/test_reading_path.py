"""A newcomer's path: what one D step and one G step run is in the files a reader opens from
tools/train.py (trainer.py, the family's model file, losses.py, augment.py), plus the fast twins
of paddlegan_lite/ops where `accelerate()` switched them on. The loop's machinery (seeding per
rank, the state's counters, config parsing) stays in fit() and the set-up, not in the steps."""

import sys
from pathlib import Path

import paddle
import pytest
from helpers import tiny_cfg

import paddlegan_lite
from paddlegan_lite.trainer import build_trainer

PACKAGE = Path(paddlegan_lite.__file__).resolve().parent

# each family with every option that adds code to a step: DiffAugment, a penalty, spectral norm
CASES = {
    "dcgan": ("dcgan_mnist", ["model.spectral_norm=d", "train.r1_gamma=0.1"]),
    "acgan": ("acgan_mnist", ["train.loss=wgan", "train.gp_weight=10"]),
    "mlp_gan": ("mlp_gan_mnist", ["train.loss=hinge"]),
    "sngan": ("sngan_cifar10_cond", ["train.r1_gamma=0.1"]),
}
POLICIES = "train.diffaugment=color,translation,cutout"


def files_run_by(fn) -> set[str]:
    """The package files (relative paths) whose functions run while `fn()` does."""
    files = set()

    def record(frame, event, arg):
        if event == "call":
            path = Path(frame.f_code.co_filename)
            if path.is_relative_to(PACKAGE):
                files.add(path.relative_to(PACKAGE).as_posix())

    sys.setprofile(record)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return files


@pytest.mark.parametrize("family", list(CASES))
def test_one_d_step_and_one_g_step_stay_in_the_readers_files(family, tmp_path):
    name, options = CASES[family]
    cfg = tiny_cfg(name, tmp_path, tmp_path / "run", POLICIES, *options)
    trainer = build_trainer(cfg, dataset=None)
    m = cfg.model
    real = paddle.rand([4, m.channels, m.image_size, m.image_size]) * 2 - 1
    labels = paddle.randint(0, 10, [4])
    z, gen_labels = trainer.sample_latent(4)

    def one_step():
        _, _, _, fake = trainer.d_step(real, labels, z, gen_labels)
        trainer.g_step(fake, gen_labels)

    files = files_run_by(one_step)
    readers = {"trainer.py", f"models/{family}.py", "models/layers.py", "losses.py", "augment.py"}
    machinery = {f for f in files if f.startswith("ops/")}  # the fast twins, beside the models
    assert files - machinery <= readers, sorted(files - machinery - readers)
    assert {"trainer.py", f"models/{family}.py", "losses.py", "augment.py"} <= files
