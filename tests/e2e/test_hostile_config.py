"""Hostile and broken configs through tools/train.py: YAML tags and -o values never run code, and
bad paths and values end in exit code 2 with one short stderr line, no Traceback."""

import pytest
from helpers import OVERRIDES, TAGS, config_with_problem, hostile_config, run_train

TINY = ["model.ngf=8", "model.ndf=8", "model.image_size=32", "train.batch_size=8"]


def assert_one_line_error(proc, *needles) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert len(lines[0]) < 500, lines[0][:500]
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------
# Nothing is executed
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["python tag in _base_", "eval-looking -o", "missing _base_"])
def test_hostile_config_through_the_tool(tmp_path, case):
    """What unit/test_config.py shows in-process with these cases, as the user meets it: exit 2,
    one line."""
    overrides = []
    if case == "python tag in _base_":
        config, needle = hostile_config(tmp_path, TAGS[0], in_base=True), "not valid YAML"
    elif case == "eval-looking -o":
        config, needle = "configs/dcgan_mnist.yaml", OVERRIDES[0][1]
        overrides = [OVERRIDES[0][0].format(marker=tmp_path / "pwned")]
    else:
        config, needle = config_with_problem(tmp_path, case), "b.yaml"
    assert_one_line_error(run_train(config, *overrides), needle)
    assert not (tmp_path / "pwned").exists()


def test_config_file_that_is_not_utf8(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert_one_line_error(run_train(config), str(config))


@pytest.mark.parametrize(
    "name",
    [
        "cifar10",
        "folder",
        "mnist",
    ],
)
def test_data_root_that_is_a_file(tmp_path, name):
    root = tmp_path / "data.txt"
    root.write_text("not a folder")
    proc = run_train(
        "configs/dcgan_mnist.yaml", *TINY, f"data.name={name}", f"data.root={root}",
        "data.download=false", "train.max_steps=1", f"train.output_dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert_one_line_error(proc, str(root))


def test_output_dir_that_is_a_file(tmp_path, mnist_root):
    out = tmp_path / "out.txt"
    out.write_text("")
    proc = run_train(
        "configs/dcgan_mnist.yaml", *TINY, f"data.root={mnist_root}", "data.download=false",
        "train.max_steps=1", f"train.output_dir={out}",
    )  # fmt: skip
    assert_one_line_error(proc, "train.output_dir")


# ------------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------------


def test_seed_out_of_range_is_a_one_line_error(tmp_path, mnist_root):
    proc = run_train(
        "configs/dcgan_mnist.yaml", *TINY, f"data.root={mnist_root}", "data.download=false",
        "train.max_steps=1", f"train.output_dir={tmp_path}", "seed=-1",
    )  # fmt: skip
    assert_one_line_error(proc, "'seed'")


def test_nan_learning_rate_is_refused_before_training(tmp_path, mnist_root):
    """A nan learning rate would poison G's weights before any loss shows it: config refuses it
    (and the checkpoint writer refuses non-finite weights as a backstop:
    unit/test_checkpoint.py)."""
    out = tmp_path / "run"
    proc = run_train(
        "configs/dcgan_mnist.yaml", *TINY, f"data.root={mnist_root}", "data.download=false",
        "train.max_steps=1", f"train.output_dir={out}", "optimizer.g.lr=.nan",
    )  # fmt: skip
    assert_one_line_error(proc, "'optimizer.g.lr' must be in (0, 1], got nan")
    assert not out.exists()
