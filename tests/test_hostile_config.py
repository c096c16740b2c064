"""Hostile and broken configs through tools/train.py: YAML tags and -o values never run code, and
bad paths and values end in exit code 2 with one short stderr line, no Traceback."""

import subprocess
import sys

import pytest
from conftest import tool_env
from data_files import write_mnist_idx

from paddlegan_lite.config import ConfigError, load_config

TINY = ["model.ngf=8", "model.ndf=8", "model.image_size=32", "train.batch_size=8"]


def run_train(repo_root, config, *overrides, timeout=120):
    cmd = [sys.executable, "tools/train.py", "-c", str(config)]
    if overrides:
        cmd += ["-o", *overrides]
    return subprocess.run(
        cmd, cwd=repo_root, env=tool_env(), capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(proc, *needles) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert len(lines[0]) < 500, lines[0][:500]
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    write_mnist_idx(root, n=16)
    return root


def alias_bomb(levels: int) -> str:
    """YAML where each list repeats the previous one 9 times: 9**levels items from a few
    hundred bytes (safe_load shares them, but anything that walks them pays in full)."""
    parts = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        parts.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "[" + ", ".join(parts) + "]"


# ------------------------------------------------------------------------------------------------
# Nothing is executed
# ------------------------------------------------------------------------------------------------


TAGS = [
    '!!python/object/apply:os.system ["touch {marker}"]',
    '!!python/object/new:subprocess.Popen [["touch", "{marker}"]]',
    "!!python/name:os.system",
]
OVERRIDES = [
    ("seed=__import__('os').system('touch {marker}')", "'seed' must be int"),
    ('model.nz=!!python/object/apply:os.system ["touch {marker}"]', "'model.nz' must be int"),
    ('train.device=!!python/object/apply:os.system ["touch {marker}"]', "'train.device'"),
    ("train.epochs=[1, {{a: 2}}]", "'train.epochs' must be int"),
    ("train.max_steps=$(touch {marker})", "'train.max_steps' must be int"),
]


def hostile_config(tmp_path, tag: str, in_base: bool):
    """A config whose seed is a python-tagged YAML node, directly or through `_base_`."""
    hostile = f"seed: {tag.format(marker=tmp_path / 'pwned')}\n"
    (tmp_path / "base.yaml").write_text(hostile if in_base else "seed: 1\n")
    config = tmp_path / "run.yaml"
    config.write_text("_base_: base.yaml\n" if in_base else hostile)
    return config


def config_with_problem(tmp_path, problem: str):
    config = {"missing": tmp_path / "nope.yaml", "a folder": tmp_path}.get(problem)
    if config is None:
        config = tmp_path / "a.yaml"
        config.write_text("_base_: b.yaml\n")
        if problem == "_base_ loop":
            (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    return config


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


@pytest.mark.parametrize("case", ["python tag in _base_", "eval-looking -o", "missing _base_"])
def test_hostile_config_through_the_tool(repo_root, tmp_path, case):
    """What the cases above show in-process, as the user meets it: exit 2, one line."""
    overrides = []
    if case == "python tag in _base_":
        config, needle = hostile_config(tmp_path, TAGS[0], in_base=True), "not valid YAML"
    elif case == "eval-looking -o":
        config, needle = "configs/dcgan_mnist.yaml", OVERRIDES[0][1]
        overrides = [OVERRIDES[0][0].format(marker=tmp_path / "pwned")]
    else:
        config, needle = config_with_problem(tmp_path, case), "b.yaml"
    assert_one_line_error(run_train(repo_root, config, *overrides), needle)
    assert not (tmp_path / "pwned").exists()


def test_config_file_that_is_not_utf8(repo_root, tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert_one_line_error(run_train(repo_root, config), str(config))


@pytest.mark.parametrize(
    "name",
    [
        "cifar10",
        "folder",
        "mnist",
    ],
)
def test_data_root_that_is_a_file(repo_root, tmp_path, name):
    root = tmp_path / "data.txt"
    root.write_text("not a folder")
    proc = run_train(
        repo_root, "configs/dcgan_mnist.yaml", *TINY, f"data.name={name}", f"data.root={root}",
        "data.download=false", "train.max_steps=1", f"train.output_dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert_one_line_error(proc, str(root))


def test_output_dir_that_is_a_file(repo_root, tmp_path, mnist_root):
    out = tmp_path / "out.txt"
    out.write_text("")
    proc = run_train(
        repo_root, "configs/dcgan_mnist.yaml", *TINY, f"data.root={mnist_root}",
        "data.download=false", "train.max_steps=1", f"train.output_dir={out}",
    )  # fmt: skip
    assert_one_line_error(proc, "train.output_dir")


# ------------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------------


def test_seed_out_of_range_is_a_one_line_error(repo_root, tmp_path, mnist_root):
    proc = run_train(
        repo_root, "configs/dcgan_mnist.yaml", *TINY, f"data.root={mnist_root}",
        "data.download=false", "train.max_steps=1", f"train.output_dir={tmp_path}", "seed=-1",
    )  # fmt: skip
    assert_one_line_error(proc, "'seed'")


def test_nan_learning_rate_is_refused_before_training(repo_root, tmp_path, mnist_root):
    """A nan learning rate would poison G's weights before any loss shows it: config refuses it
    (and the checkpoint writer refuses non-finite weights as a backstop, test_checkpoint.py)."""
    out = tmp_path / "run"
    proc = run_train(
        repo_root, "configs/dcgan_mnist.yaml", *TINY, f"data.root={mnist_root}",
        "data.download=false", "train.max_steps=1", f"train.output_dir={out}",
        "optimizer.g.lr=.nan",
    )  # fmt: skip
    assert_one_line_error(proc, "'optimizer.g.lr' must be in (0, 1], got nan")
    assert not out.exists()


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
