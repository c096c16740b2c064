"""Config loading: inheritance, overrides, and errors that name the key and the file; hostile and
broken configs never run code and fail in one short line."""

import math

import pytest
from helpers import OVERRIDES, TAGS, config_with_problem, hostile_config

from paddlegan_lite import config as config_module
from paddlegan_lite.config import (
    MODEL_SIZES,
    Config,
    ConfigError,
    EvalConfig,
    ModelConfig,
    check_eval_options,
    check_overrides,
    check_run,
    config_from_dict,
    config_to_dict,
    estimate_memory,
    load_config,
)

CONFIGS = [
    "mlp_gan_mnist",
    "dcgan_mnist",
    "dcgan_mnist_64",
    "dcgan_cifar10",
    "dcgan_cifar10_32",
    "acgan_mnist",
    "sngan_cifar10",
    "sngan_cifar10_cond",
    "acgan_cifar10",
    "dcgan_cifar10_32_cond",
    "dcgan_cifar10_32_fast",
    "dcgan_cifar10_32_fast_cond",
]


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
    dcgan = load_config(repo_root / "configs/dcgan_mnist.yaml")  # the default: MNIST's own size
    dcgan_64 = load_config(repo_root / "configs/dcgan_mnist_64.yaml")  # the tutorial's size
    assert (dcgan.model.image_size, dcgan_64.model.image_size) == (32, 64)
    assert dcgan.model.ngf == dcgan_64.model.ngf == 32 and dcgan.train.loss == "hinge"
    sngan = load_config(repo_root / "configs/sngan_cifar10.yaml")  # Miyato et al.'s setting C
    assert (sngan.model.name, sngan.model.spectral_norm) == ("sngan", "d")
    assert sngan.train.loss == "hinge" and sngan.train.d_steps == 1
    assert (sngan.optimizer.d.beta1, sngan.optimizer.d.beta2, sngan.optimizer.lr_decay) == (
        0.5,
        0.999,
        "linear",
    )
    cond = load_config(repo_root / "configs/sngan_cifar10_cond.yaml")
    assert cond.model.num_classes == 10 and cond.model.ngf == sngan.model.ngf
    assert (sngan.train.diffaugment, cond.train.diffaugment) == ("", "color,translation,cutout")
    assert cond.model.dual_projection and cond.train.cls_weight == 1.0


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
        ("train: {loss: rsgan}\n", None, "valid: vanilla, lsgan, hinge, wgan"),
        ("{}\n", "train.amp=fp8", "'train.amp' is 'fp8'; valid: off, fp16, bf16"),
        ("{}\n", "optimizer.multi_tensor=maybe", "'optimizer.multi_tensor' must be bool"),
        ("model: 3\n", None, "'model' must be a section"),
        ("{}\n", "train.batch_size=0", "'train.batch_size' must be > 0"),
        ("{}\n", "train.lr=0.1", "unknown key 'train.lr'"),
        ("{}\n", "train.device=tpu", "'train.device' must be auto, cpu, gpu or gpu:N"),
        ("{}\n", "noequals", "must look like section.key=value"),
        ("model: {name: acgan}\n", None, "'model.num_classes' must be >= 2 for acgan"),
        (
            "model: {name: sngan, dual_projection: true}\n",
            None,
            "'model.dual_projection' is for the projection D of a conditional sngan",
        ),
        (
            "model: {num_classes: 10}\n",
            "model.dual_projection=true",
            "'model.dual_projection' is for the projection D of a conditional sngan (model.name: "
            "sngan, model.num_classes >= 2), got dcgan with num_classes 10",
        ),
        ("{}\n", "eval.extractor=incept", "'eval.extractor' is 'incept'; valid: classifier, incep"),
        ("{}\n", "eval.num_samples=9", "'eval.num_samples' must be >= 10, got 9"),
        ("{}\n", "eval.seed=-1", "'eval.seed' must be >= 0, got -1"),
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


# ------------------------------------------------------------------------------------------------
# Nothing lost: duplicate keys, repeated overrides, _base_
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "train:\n  batch_size: 16\n  epochs: 2\ntrain:\n  batch_size: 64\n",
            "line 4: key 'train' given twice (also on line 1)",
        ),
        (
            "train:\n  batch_size: 16\n  batch_size: 64\n",
            "line 3: key 'train.batch_size' given twice (also on line 2)",
        ),
        (
            "optimizer: {g: {lr: 1, 'lr': 2}}\n",
            "line 1: key 'optimizer.g.lr' given twice (also on line 1)",
        ),
    ],
)
def test_duplicate_yaml_keys_are_refused(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "dup.yaml", text))
    assert str(err.value) == f"{tmp_path / 'dup.yaml'}: {expected}; YAML would keep only the last"


def test_yaml_merge_keys_may_be_overridden():
    text = "adam: &adam {lr: 1.0e-3, beta1: 0.5}\noptimizer:\n  g: {<<: *adam, lr: 2.0e-3}\n"
    raw = config_module._load_yaml(text, "m.yaml")
    assert raw["optimizer"]["g"] == {"lr": pytest.approx(2.0e-3), "beta1": 0.5}


def test_an_override_given_twice_keeps_the_later(tmp_path):
    path = write(tmp_path, "c.yaml", "model: {name: dcgan, ngf: 16, ndf: 8}\n")
    cfg = load_config(path, ["model.ngf=32", "train.epochs=3", "model.ngf=24"])
    assert (cfg.model.ngf, cfg.train.epochs) == (24, 3)


def test_a_mapping_override_merges_into_the_section(tmp_path):
    path = write(tmp_path, "c.yaml", "model: {name: acgan, num_classes: 10, ngf: 16}\n")
    cfg = load_config(path, ["model={ngf: 8, ndf: 4}"])
    assert (cfg.model.name, cfg.model.num_classes, cfg.model.ngf, cfg.model.ndf) == (
        "acgan",
        10,
        8,
        4,
    )
    with pytest.raises(ConfigError, match=r"override 'model=\{ngf: 8, ngf: 4}': .* 'ngf' given"):
        load_config(path, ["model={ngf: 8, ngf: 4}"])


@pytest.mark.parametrize("override", ["train..epochs=1", ".epochs=1", "=3", "train.epochs."])
def test_malformed_override_keys(tmp_path, override):
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(write(tmp_path, "c.yaml", "{}\n"), [override])


# ---------------------------------------------------------------------- eval options
EVAL_SECTIONS = ("data", "eval")


def test_overrides_alone_are_checked_over_the_defaults():
    overrides = ["eval.num_samples=5000", "eval.extractor=inception", "data.root=/d"]
    cfg = check_overrides(overrides, EVAL_SECTIONS)
    assert (cfg.eval.num_samples, cfg.eval.extractor, cfg.data.root) == (5000, "inception", "/d")
    assert cfg.eval == EvalConfig(num_samples=5000, extractor="inception")  # the rest: defaults


@pytest.mark.parametrize(
    "override, expected",
    [
        ("eval.num_sample=5", "-o: unknown key 'eval.num_sample' (valid: interval, num_samples,"),
        ("eval.num_samples=many", "-o: 'eval.num_samples' must be int, got 'many' (str)"),
        ("eval.num_samples=9", "-o: 'eval.num_samples' must be >= 10, got 9"),
        ("eval.batch_size=0", "-o: 'eval.batch_size' must be > 0, got 0"),
        ("model.ngf=8", "override 'model.ngf=8': only data.* and eval.* keys apply here (why)"),
        ("seed=1", "override 'seed=1': only data.* and eval.* keys apply here (why)"),
        ("eval.seed", "override 'eval.seed' must look like section.key=value"),
    ],
)
def test_bad_overrides_alone_name_the_key(override, expected):
    with pytest.raises(ConfigError) as info:
        check_overrides([override], EVAL_SECTIONS, why="why")
    assert expected in str(info.value)


def test_inception_needs_its_weights_where_evaluation_runs(tmp_path):
    path = write(tmp_path, "c.yaml", "eval: {extractor: inception}\n")
    assert load_config(path).eval.extractor == "inception"  # a run that never evaluates: fine
    needs = "c.yaml: the inception extractor needs its weights: set eval.inception_weights=FILE"
    with pytest.raises(ConfigError, match=needs):
        load_config(path, ["eval.interval=100"])  # training evaluates: refused at load
    with pytest.raises(ConfigError, match=needs):
        check_eval_options(load_config(path).eval, str(path))  # tools/eval.py evaluates
    check_eval_options(EvalConfig(extractor="inception", inception_weights="fid.safetensors"))
    with pytest.raises(ConfigError, match=r"eval options: 'eval.batch_size' must be > 0, got 0"):
        check_eval_options(EvalConfig(batch_size=0))  # an EvalConfig built in code


def test_a_saved_config_takes_overrides_on_a_copy():
    saved = config_to_dict(Config())
    saved["eval"]["num_samples"] = 500
    cfg = config_from_dict(saved, "saved", ["eval.seed=4", "data={root: /d}"])
    assert (cfg.eval.num_samples, cfg.eval.seed) == (500, 4)
    assert (cfg.data.root, cfg.data.name) == ("/d", "mnist")  # merged into the section
    assert saved["eval"]["seed"] == 0 and saved["data"]["root"] == "data/mnist"
    with pytest.raises(ConfigError, match=r"saved: unknown key 'eval.sed' \(valid: interval"):
        config_from_dict(saved, "saved", ["eval.sed=4"])


def test_missing_base_names_the_config_that_asked(tmp_path):
    (tmp_path / "configs").mkdir()
    path = write(tmp_path, "configs/x.yaml", "_base_: y.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: _base_ 'y.yaml' not found (looked in {tmp_path / 'configs'})"


# ------------------------------------------------------------------------------------------------
# Requests that cannot fit
# ------------------------------------------------------------------------------------------------


SNGAN_SIZES = {"nz": 6, "ngf": 3, "ndf": 5, "init_std": 0.0}  # 0 keeps sngan.py's own init


@pytest.mark.parametrize(
    "model",
    [
        ModelConfig("mlp_gan", nz=7, hidden=5, image_size=6, channels=3),
        ModelConfig("dcgan", nz=5, ngf=3, ndf=5, image_size=8, channels=1),
        ModelConfig("dcgan", nz=5, ngf=3, ndf=5, image_size=32, channels=3),
        ModelConfig("dcgan", nz=5, ngf=4, ndf=5, image_size=16, channels=3, num_classes=7),
        ModelConfig("acgan", nz=6, ngf=3, ndf=2, image_size=28, channels=1, num_classes=10),
        ModelConfig("acgan", nz=6, ngf=3, ndf=2, image_size=12, channels=3, num_classes=3),
        ModelConfig("sngan", image_size=32, channels=3, **SNGAN_SIZES),
        ModelConfig("sngan", image_size=32, channels=3, num_classes=10, **SNGAN_SIZES),
        # spectral norm: weight_orig counts as the weight did, u and v are buffers
        ModelConfig("sngan", image_size=64, num_classes=4, spectral_norm="gd", **SNGAN_SIZES),
        ModelConfig("sngan", image_size=8, channels=1, **SNGAN_SIZES),
    ],
    ids=lambda m: f"{m.name}-{m.image_size}" + (f"-{m.num_classes}cls" if m.num_classes else ""),
)
def test_closed_form_parameter_counts_match_the_built_nets(model):
    from paddlegan_lite.models import build_models

    nets = build_models(model)
    built = tuple(sum(math.prod(p.shape) for p in net.parameters()) for net in nets)
    assert MODEL_SIZES[model.name](model)[:2] == built


def test_shipped_config_estimate(repo_root):
    """dcgan_mnist_64 by hand: G maps 256-128-64-32 at 4-8-16-32 px, D maps 32-64-128-256."""
    est = estimate_memory(load_config(repo_root / "configs/dcgan_mnist_64.yaml"))
    bn = 4  # BatchNorm: scale, shift, running mean and variance per channel
    g = 100 * 256 * 16 + (256 * 128 + 128 * 64 + 64 * 32 + 32) * 16 + bn * (256 + 128 + 64 + 32)
    d = (32 + 32 * 64 + 64 * 128 + 128 * 256 + 256) * 16 + bn * (64 + 128 + 256)
    assert (est.params_g, est.params_d) == (g, d) == (1_100_160, 694_528)
    assert est.parameter_bytes == 4 * 4 * (g + d)  # weights, gradients, Adam's two moments
    maps_g = 256 * 4**2 + 128 * 8**2 + 64 * 16**2 + 32 * 32**2 + 64**2
    maps_d = 64**2 + 32 * 32**2 + 64 * 16**2 + 128 * 8**2 + 256 * 4**2 + 1
    assert est.activation_bytes == 4 * 3 * 64 * (maps_g + 2 * maps_d)
    assert est.data_bytes == 60_000 * 64**2


def test_a_run_that_cannot_fit_is_refused_with_the_numbers(repo_root, monkeypatch):
    monkeypatch.setattr(config_module, "machine_memory", lambda: 2 * 2**30)
    with pytest.raises(ConfigError) as err:
        load_config(repo_root / "configs/dcgan_cifar10.yaml", ["train.batch_size=512"])
    assert str(err.value) == (
        f"{repo_root / 'configs/dcgan_cifar10.yaml'}: model.image_size=64, model.nz=100, "
        "model.ngf=64, model.ndf=64: the run needs about 3.0 GiB (parameters 96.8 MiB, "
        "activations 2.3 GiB at train.batch_size=512, cifar10 images 585.9 MiB), more than "
        "this machine's 2.0 GiB"
    )
    assert load_config(repo_root / "configs/dcgan_cifar10.yaml").train.batch_size == 128


def test_a_checkpoint_config_needs_only_its_weights_to_fit(repo_root, monkeypatch):
    raw = config_to_dict(load_config(repo_root / "configs/dcgan_cifar10.yaml"))
    raw["train"]["batch_size"] = 100_000  # would not train in 1 GiB, but the nets fit
    monkeypatch.setattr(config_module, "machine_memory", lambda: 2**30)
    assert config_from_dict(raw).train.batch_size == 100_000
    raw["model"]["ngf"] = 4096
    with pytest.raises(ConfigError, match="the nets need about .* parameters\\), more than"):
        config_from_dict(raw, source="ckpt/state.json")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.image_size=4096", "model.image_size=4096, model.nz=100, model.ngf=32"),
        ("model.ngf=1000000", "the run needs about 9.6 PiB (parameters 9.5 PiB"),
        ("model.nz=2147483648", "'model.nz' must be <= 2147483647, the most a tensor dimension"),
        ("model.image_size=48", "'model.image_size' must be a power of two >= 8 for dcgan"),
        ("model.image_size=4", "'model.image_size' must be a power of two >= 8 for dcgan"),
    ],
)
def test_sizes_the_machine_or_the_net_cannot_take(repo_root, override, expected):
    with pytest.raises(ConfigError, match=r"more than this machine|must be") as err:
        load_config(repo_root / "configs/dcgan_mnist_64.yaml", [override])
    assert expected in str(err.value)


def test_acgan_image_size_must_be_a_multiple_of_4(repo_root):
    with pytest.raises(ConfigError, match="a multiple of 4 for acgan, got 30"):
        load_config(repo_root / "configs/acgan_mnist.yaml", ["model.image_size=30"])
    assert load_config(repo_root / "configs/acgan_mnist.yaml", ["model.image_size=32"])


def test_amp_off_written_bare_is_off(repo_root, tmp_path):
    """YAML 1.1 reads a bare `off` as false: `-o train.amp=off` and `amp: off` both mean off."""
    base = repo_root / "configs" / "dcgan_mnist.yaml"
    assert load_config(base, ["train.amp=off"]).train.amp == "off"
    config = tmp_path / "amp.yaml"
    config.write_text(f"_base_: {base}\ntrain:\n  amp: off\n")
    assert load_config(config).train.amp == "off"


# ------------------------------------------------------------------------------------------------
# Hostile and broken configs: YAML tags and -o values never run code, errors stay one short line
# (e2e/test_hostile_config.py meets the same cases through tools/train.py)
# ------------------------------------------------------------------------------------------------


def alias_bomb(levels: int) -> str:
    """YAML where each list repeats the previous one 9 times: 9**levels items from a few
    hundred bytes (safe_load shares them, but anything that walks them pays in full)."""
    parts = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        parts.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "[" + ", ".join(parts) + "]"


@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("in_base", [False, True])
def test_yaml_python_tags_are_not_constructed(tmp_path, tag, in_base):
    with pytest.raises(ConfigError, match="not valid YAML .*python/") as err:
        load_config(hostile_config(tmp_path, tag, in_base))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("override, complaint", OVERRIDES)
def test_override_values_are_never_evaluated(repo_root, tmp_path, override, complaint):
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError, match=complaint) as err:
        load_config(repo_root / "configs/dcgan_mnist.yaml", [override.format(marker=marker)])
    assert "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("problem", ["missing", "a folder", "missing _base_", "_base_ loop"])
def test_config_file_problems(tmp_path, problem):
    expected = {"missing": "No such file", "a folder": "Is a directory"}.get(problem, "yaml")
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(config_with_problem(tmp_path, problem))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override",
    ["optimizer.g.lr=.nan", "optimizer.d.lr=.inf", "train.real_label=-5", "train.real_label=.nan",
     "model.init_std=-1", "train.cls_weight=.nan"],
)  # fmt: skip
def test_non_finite_and_out_of_range_numbers_are_refused(repo_root, override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(repo_root / "configs" / "dcgan_mnist.yaml", [override])


def test_alias_bomb_gives_a_short_error(tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_text(f"seed: {alias_bomb(6)}\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert len(str(err.value)) < 500


@pytest.mark.parametrize("style", ["flow", "block"])
def test_deep_nesting_is_refused_before_python_recursion_runs_out(tmp_path, style):
    levels = 100_000 if style == "flow" else 200
    if style == "flow":
        text = "seed: " + "[" * levels + "]" * levels + "\n"
    else:
        text = "".join("  " * i + f"k{i}:\n" for i in range(levels))
    config = tmp_path / "deep.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=r"deep.yaml: line \d+: nested deeper than 20 levels"):
        load_config(config)


def test_deep_nesting_in_an_override(repo_root):
    override = "train.epochs=" + "[" * 10_000 + "]" * 10_000
    with pytest.raises(ConfigError, match=r"override 'train.epochs=\[\[\[.*nested deeper"):
        load_config(repo_root / "configs/dcgan_mnist.yaml", [override])


@pytest.mark.parametrize(
    "digits, complaint",
    [
        (400, r"'seed' must be in \[0, 4294967295\], got 1000"),  # no float: OverflowError
        (5000, r"not valid YAML \(an integer of more than 4300 digits\)"),  # int() refuses it
    ],
)
def test_integers_too_long_for_a_float_or_a_string(tmp_path, digits, complaint):
    config = tmp_path / "big.yaml"
    config.write_text("seed: 1" + "0" * digits + "\n")
    with pytest.raises(ConfigError, match=complaint) as err:
        load_config(config)
    assert len(str(err.value)) < 500


def test_a_base_name_too_long_for_the_file_system(tmp_path):
    config = tmp_path / "a.yaml"
    config.write_text("_base_: " + "b" * 100_000 + ".yaml\n")
    with pytest.raises(ConfigError, match=r"a.yaml: _base_ 'bbb.*' not found") as err:
        load_config(config)
    assert len(str(err.value)) < 500


@pytest.mark.parametrize("penalty", ["train.r1_gamma=0.1", "train.gp_weight=10"])
def test_sync_bn_with_a_penalty_is_refused_where_d_has_batch_norm(repo_root, penalty):
    """Paddle has no SyncBatchNorm double grad: on several GPUs the first penalised D step of a
    DCGAN or AC-GAN would fail. Refused before training; SNGAN's D has no BatchNorm."""
    on = ["distributed.sync_bn=true", penalty]
    for name in ("dcgan_mnist", "acgan_mnist"):
        cfg = load_config(repo_root / "configs" / f"{name}.yaml", on)
        with pytest.raises(ConfigError, match=r"distributed.sync_bn with train.gp_weight or"):
            check_run(cfg, "gpu:0", world_size=2)
        check_run(cfg, "gpu:0", world_size=1)  # one process: nothing is synchronised
        no_penalty = load_config(repo_root / "configs" / f"{name}.yaml", on[:1])
        check_run(no_penalty, "gpu:0", world_size=2)
    check_run(load_config(repo_root / "configs" / "sngan_cifar10.yaml", on), "gpu:0", 2)
