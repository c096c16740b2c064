"""Config loading: inheritance, overrides, and errors that name the key and the file."""

import subprocess
import sys

import pytest

from paddlegan_lite.config import ConfigError, load_config

CONFIGS = ["mlp_gan_mnist", "dcgan_mnist", "dcgan_cifar10", "dcgan_cifar10_32", "acgan_mnist"]


def test_every_shipped_config_is_tested(repo_root):
    assert sorted(p.stem for p in (repo_root / "configs").glob("*.yaml")) == sorted(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_load(repo_root, name):
    cfg = load_config(repo_root / "configs" / f"{name}.yaml")
    assert cfg.name == name
    assert cfg.train.output_dir == f"output/{name}"


def test_seed_hyperparameters(repo_root):
    mlp = load_config(repo_root / "configs/mlp_gan_mnist.yaml")
    assert (mlp.model.name, mlp.train.loss, mlp.optimizer.g.lr) == ("mlp_gan", "lsgan", 3e-4)
    cifar = load_config(repo_root / "configs/dcgan_cifar10.yaml")
    assert (cifar.model.channels, cifar.model.image_size, cifar.train.real_label) == (3, 64, 0.9)
    acgan = load_config(repo_root / "configs/acgan_mnist.yaml")
    assert (acgan.model.num_classes, acgan.optimizer.d.beta1) == (10, 0.5)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_base_inheritance_and_overrides(tmp_path):
    base = "model: {name: dcgan, ngf: 16}\ntrain: {epochs: 3, batch_size: 8}\n"
    write(tmp_path, "base.yaml", base)
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\ntrain: {epochs: 7}\n")
    cfg = load_config(child, ["train.batch_size=4", "optimizer.g.lr=1e-3", "data.root=~/x"])
    assert cfg.model.ngf == 16  # from the base
    assert cfg.train.epochs == 7  # the child wins
    assert cfg.train.batch_size == 4  # the override wins
    assert cfg.optimizer.g.lr == pytest.approx(1e-3)
    assert cfg.data.root == "~/x"
    assert cfg.name == "child" and cfg.train.output_dir == "output/child"


def test_int_accepted_for_float(tmp_path):
    cfg = load_config(write(tmp_path, "c.yaml", "optimizer: {g: {lr: 1}}\n"))
    assert isinstance(cfg.optimizer.g.lr, float) and cfg.optimizer.g.lr == 1.0


@pytest.mark.parametrize(
    "text, override, expected",
    [
        ("train: {epoch: 3}\n", None, "unknown key 'train.epoch' (valid: epochs"),
        ("trian: {epochs: 3}\n", None, "unknown key 'trian' (valid: seed, model"),
        ("train: {epochs: three}\n", None, "'train.epochs' must be int, got 'three'"),
        ("train: {epochs: 2.5}\n", None, "'train.epochs' must be int"),
        ("data: {download: 1}\n", None, "'data.download' must be bool"),
        ("model: {name: vae}\n", None, "'model.name' is 'vae'; valid: mlp_gan, dcgan, acgan"),
        ("train: {loss: wgan}\n", None, "valid: vanilla, lsgan, hinge"),
        ("{}\n", "train.amp=fp8", "'train.amp' is 'fp8'; valid: off, fp16, bf16"),
        ("{}\n", "optimizer.multi_tensor=maybe", "'optimizer.multi_tensor' must be bool"),
        ("model: 3\n", None, "'model' must be a section"),
        ("{}\n", "train.batch_size=0", "'train.batch_size' must be > 0"),
        ("{}\n", "train.lr=0.1", "unknown key 'train.lr'"),
        ("{}\n", "train.device=tpu", "'train.device' must be auto, cpu, gpu or gpu:N"),
        ("{}\n", "noequals", "must look like section.key=value"),
        ("model: {name: acgan}\n", None, "'model.num_classes' must be >= 2 for acgan"),
    ],
)
def test_bad_config_errors_name_key_and_file(tmp_path, text, override, expected):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path, [override] if override else None)
    assert expected in str(info.value)
    if override is None or "=" in override:
        assert "bad.yaml" in str(info.value) or "override" in str(info.value)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "x.yaml", "train: [\n"))
    with pytest.raises(ConfigError, match="loops back"):
        load_config(write(tmp_path, "loop.yaml", "_base_: loop.yaml\n"))


def test_yaml_tags_are_not_executed(tmp_path):
    evil = write(tmp_path, "evil.yaml", "seed: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)
    assert not (tmp_path / "pwned").exists()


def test_train_tool_rejects_unknown_key_in_one_line(repo_root):
    proc = subprocess.run(
        [sys.executable, "tools/train.py", "-c", "configs/dcgan_mnist.yaml", "-o", "train.epoch=1"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: configs/dcgan_mnist.yaml: unknown key 'train.epoch' (valid: epochs, max_steps, "
        "batch_size, loss, real_label, d_steps, cls_weight, device, output_dir, log_interval, "
        "sample_interval, save_interval, keep_checkpoints, num_samples, ema_decay, amp)"
    ]
    assert "Traceback" not in proc.stderr
