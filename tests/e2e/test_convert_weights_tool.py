"""tools/convert_weights.py: a trusted .pdparams state dict (or a PaddleGAN-style checkpoint)
becomes a checkpoint folder that training resumes from; the tool says it unpickles, and weights of
another model are one line and exit 2."""

import importlib.util
import subprocess
import sys

import numpy as np
import paddle
import pytest
from data_files import write_mnist_idx
from helpers import REPO_ROOT, tool_env

from paddlegan_lite import checkpoint as ckpt
from paddlegan_lite.checkpoint import find_latest, load_checkpoint
from paddlegan_lite.config import load_config
from paddlegan_lite.errors import UserError
from paddlegan_lite.models import build_models, recompute_batch_norm_statistics
from paddlegan_lite.train_state import load_generator
from paddlegan_lite.trainer import train

TINY = ["model.ngf=8", "model.ndf=8", "model.image_size=32"]


def convert_tool():
    path = REPO_ROOT / "tools" / "convert_weights.py"
    spec = importlib.util.spec_from_file_location("convert_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trusted_nets(seed=7):
    cfg = load_config(REPO_ROOT / "configs" / "dcgan_mnist.yaml", TINY)
    paddle.seed(seed)
    return build_models(cfg.model)


def test_convert_help_warns_that_it_unpickles(repo_root):
    proc = subprocess.run(
        [sys.executable, "tools/convert_weights.py", "--help"], cwd=repo_root, env=tool_env(),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0
    assert "UNPICKLES" in proc.stdout and "trust" in proc.stdout


def test_convert_a_state_dict_then_train_from_it(repo_root, tmp_path):
    netG, _ = trusted_nets()
    paddle.save(netG.state_dict(), str(tmp_path / "netG.pdparams"))
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "tools/convert_weights.py", "-c", "configs/dcgan_mnist.yaml",
         "--weights", str(tmp_path / "netG.pdparams"), "-o", *TINY, f"train.output_dir={run}"],
        cwd=repo_root, env=tool_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "discriminator left at its seeded initialisation" in proc.stdout
    state, tensors = load_checkpoint(run / "checkpoints" / "latest")
    assert state["step"] == 0
    for name, value in ckpt.layer_arrays(netG).items():
        np.testing.assert_array_equal(tensors["netG"][name], value)

    # the converted folder is a real checkpoint: training resumes from it
    write_mnist_idx(tmp_path / "mnist", n=16)
    cfg = load_config(
        repo_root / "configs" / "dcgan_mnist.yaml",
        TINY + [f"data.root={tmp_path / 'mnist'}", "data.download=false", "train.batch_size=8",
                f"train.output_dir={run}", "train.max_steps=1"],
    )  # fmt: skip
    train(cfg, resume="auto")
    state, tensors = load_checkpoint(find_latest(run / "checkpoints"))
    assert state["step"] == 1
    first = netG.state_dict()["main.0.weight"].numpy()
    assert not np.array_equal(tensors["netG"]["main.0.weight"], first)


def test_convert_a_paddlegan_style_checkpoint(tmp_path):
    netG, netD = trusted_nets()
    paddle.save(
        {"netG": netG.state_dict(), "netD": netD.state_dict(), "optimG": {}, "epoch": 4},
        str(tmp_path / "epoch_4_checkpoint.pdparams"),
    )
    tool = convert_tool()
    loaded = tool.read_trusted_pdparams(tmp_path / "epoch_4_checkpoint.pdparams")
    state_dicts = tool.pick_state_dicts(loaded, "netG")
    assert sorted(state_dicts) == ["netD", "netG"]
    run = f"train.output_dir={tmp_path / 'run'}"
    cfg = load_config(REPO_ROOT / "configs" / "dcgan_mnist.yaml", TINY + [run])
    path = tool.write_checkpoint(cfg, state_dicts, step=40)
    state, tensors = load_checkpoint(path)
    assert state["step"] == 40 and path.name == "step_00000040"
    for name, net in (("netG", netG), ("netD", netD)):
        for key, value in ckpt.layer_arrays(net).items():
            np.testing.assert_array_equal(tensors[name][key], value)
    with pytest.raises(UserError, match="already holds checkpoints"):
        tool.write_checkpoint(cfg, state_dicts, step=0)  # never over a run's own checkpoints


def test_converted_weights_start_the_ema_generator(tmp_path):
    """With train.ema_decay > 0 export and eval take the EMA generator: it must be the converted
    G, not the seeded initial weights."""
    netG, _ = trusted_nets()
    options = TINY + [f"train.output_dir={tmp_path / 'run'}", "train.ema_decay=0.9"]
    cfg = load_config(REPO_ROOT / "configs" / "dcgan_mnist.yaml", options)
    path = convert_tool().write_checkpoint(cfg, {"netG": ckpt.layer_arrays(netG)}, step=0)
    loaded, _, _, weights = load_generator(path)
    assert weights == "netG_ema"
    # G's weights, with the BatchNorm statistics load_generator recomputes for them
    for key, value in ckpt.layer_arrays(recompute_batch_norm_statistics(netG)).items():
        np.testing.assert_allclose(
            loaded.state_dict()[key].numpy(), value, rtol=1e-6, atol=1e-7, err_msg=key
        )


def test_convert_weights_of_another_model_is_a_one_line_error(repo_root, tmp_path):
    netG, _ = trusted_nets()
    paddle.save(netG.state_dict(), str(tmp_path / "netG.pdparams"))
    proc = subprocess.run(
        [sys.executable, "tools/convert_weights.py", "-c", "configs/dcgan_mnist.yaml",
         "--weights", str(tmp_path / "netG.pdparams"), "-o", "model.ngf=16", "model.ndf=8",
         "model.image_size=32", f"train.output_dir={tmp_path / 'run'}"],
        cwd=repo_root, env=tool_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "generator weight main.0.weight has shape" in lines[0], proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
