"""tools/train.py run as a user runs it, for every shipped config, on tiny real-format data; and the
mistakes it must turn into one `error:` line: an unknown key, a missing dataset, a broken image
(with or without loader workers), a pickle given to --resume."""

import dataclasses

import numpy as np
import paddle
import pytest
from data_files import write_cifar10_tarball, write_image_folder, write_mnist_idx
from helpers import pickle_payload, run_train
from visualdl import LogReader

from paddlegan_lite.checkpoint import find_latest, load_checkpoint
from paddlegan_lite.config import TrainConfig, load_config
from paddlegan_lite.models import build_models

STEPS = 4
# Small widths keep each run to seconds; the architecture and the code path are the real ones.
TINY = {
    "mlp_gan_mnist": ["model.hidden=32"],
    "dcgan_mnist": ["model.ngf=8", "model.ndf=8"],
    "dcgan_cifar10": ["model.ngf=8", "model.ndf=8", "model.image_size=32"],
    "dcgan_cifar10_32": ["model.ngf=8", "model.ndf=8"],
    "acgan_mnist": ["model.ngf=8", "model.ndf=4"],
    "sngan_cifar10": ["model.ngf=8", "model.ndf=8"],
    "sngan_cifar10_cond": ["model.ngf=8", "model.ndf=8"],
    "dcgan_cifar10_32_cond": ["model.ngf=8", "model.ndf=8"],
    "acgan_cifar10": ["model.ngf=8", "model.ndf=4"],
    # dcgan_cifar10_32_fast's mirroring and Adam, conditional
    "dcgan_cifar10_32_fast_cond": ["model.ngf=8", "model.ndf=8"],
}


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist_idx(root / "mnist", n=64, seed=1)
    write_cifar10_tarball(root / "cifar10", n_per_batch=8, seed=2)
    return root


@pytest.mark.parametrize("name", list(TINY))
def test_every_config_trains_through_the_tool(repo_root, data_roots, tmp_path, name):
    config = f"configs/{name}.yaml"
    dataset = "cifar10" if "cifar" in name else "mnist"
    overrides = TINY[name] + [
        f"data.root={data_roots / dataset}",
        "data.download=false",
        f"train.output_dir={tmp_path / 'run'}",
        f"train.max_steps={STEPS}",
        "train.batch_size=8",
        "train.log_interval=2",
        "train.sample_interval=3",
        "train.save_interval=2",
        "train.num_samples=20",
    ]
    proc = run_train(config, *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "Warning" not in proc.stderr  # Paddle's noise is filtered
    run = tmp_path / "run"

    # the run folder: resolved config, metrics rows, samples, VisualDL, checkpoints
    saved_cfg = load_config(run / "config.yaml")
    assert saved_cfg.train.max_steps == STEPS
    rows = [line for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    assert [int(r.split('"step": ')[1].split(",")[0]) for r in rows] == [2, 4]
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step_00000003.png",
        "step_00000004.png",
    ]
    records = list((run / "vdl").iterdir())
    assert len(records) == 1
    reader = LogReader(file_path=str(records[0]))
    assert [r.id for r in reader.get_data("scalar", "train/loss_d")] == [2, 4]
    assert [r.id for r in reader.get_data("image", "samples")] == [3, 4]
    latest = find_latest(run / "checkpoints")
    assert latest is not None and latest.name == f"step_{STEPS:08d}"
    assert (run / "checkpoints" / "latest").resolve() == latest

    # both nets moved from their seeded initial weights, by Adam-sized steps
    state, tensors = load_checkpoint(latest)
    assert state["step"] == STEPS
    cfg = load_config(repo_root / config, overrides)
    paddle.seed(cfg.seed)
    netG, netD = build_models(cfg.model)
    for net, key, lr in ((netG, "netG", cfg.optimizer.g.lr), (netD, "netD", cfg.optimizer.d.lr)):
        trainable = [(n, p) for n, p in net.named_parameters() if not p.stop_gradient]
        assert len(trainable) >= 6
        for pname, param in trainable:  # (BatchNorm statistics are non-trainable parameters)
            change = np.abs(tensors[key][pname] - param.numpy()).max()
            # the hinge loss's gradient for a bias on D's logit is (fakes - reals inside the
            # margin) / batch: exactly 0 while every logit is inside it, as in the first steps
            still = key == "netD" and cfg.train.loss == "hinge" and pname == "adv_head.bias"
            assert change < 10 * lr * STEPS and (still or change > 0), (key, pname, change)


def test_resume_auto_without_checkpoint_starts_fresh(data_roots, tmp_path):
    overrides = TINY["mlp_gan_mnist"] + [
        f"data.root={data_roots / 'mnist'}",
        f"train.output_dir={tmp_path / 'run'}",
        "train.max_steps=2",
        "train.batch_size=8",
    ]
    proc = run_train("configs/mlp_gan_mnist.yaml", *overrides, args=["--resume", "auto"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no checkpoint in" in proc.stdout and "starting fresh" in proc.stdout
    assert find_latest(tmp_path / "run" / "checkpoints").name == "step_00000002"


def test_missing_cifar_is_one_line_error(tmp_path):
    overrides = [f"data.root={tmp_path}", "data.download=false", "train.max_steps=1"]
    proc = run_train("configs/dcgan_cifar10.yaml", *overrides)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cifar-10-python.tar.gz" in lines[0], proc.stderr


def test_dry_run_prints_the_config_and_the_verdict_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [f"train.output_dir={run_dir}", "data.root=/nonexistent", "train.threads=1"]
    proc = run_train("configs/sngan_cifar10_cond.yaml", *overrides, args=["--dry-run"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "  name: sngan\n" in proc.stdout and "  num_classes: 10\n" in proc.stdout
    verdict = proc.stdout.strip().splitlines()[-1]
    assert verdict.startswith("checks passed: device cpu, 1 process(es), CPU threads 1")
    assert f"run folder {run_dir}" in verdict
    assert not run_dir.exists()  # no data read, nothing trained or written
    refused = run_train("configs/dcgan_mnist.yaml", "train.amp=bf16", args=["--dry-run"])
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "error: train.amp=bf16 needs a GPU: on CPU Paddle's auto_cast leaves every op in float32 "
        "(no speed-up, no memory saved); use train.amp=off"
    )


def test_train_tool_rejects_unknown_key_in_one_line():
    proc = run_train("configs/dcgan_mnist.yaml", "train.epoch=1")
    assert proc.returncode == 2
    valid = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
    assert valid.startswith("epochs, max_steps, max_minutes, batch_size, loss, real_label, d_steps")
    assert proc.stderr.strip().splitlines() == [
        f"error: configs/dcgan_mnist.yaml: unknown key 'train.epoch' (valid: {valid})"
    ]
    assert "Traceback" not in proc.stderr


def test_train_tool_bad_image_is_one_line_with_or_without_workers(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root, n=4, exts=["png"])  # one batch: the bad image is in it
    bad = root / "img_002.png"
    bad.write_bytes(b"\x89PNG but cut")
    errors = []
    for num_workers in (2, 0):
        proc = run_train(
            "configs/mlp_gan_mnist.yaml", "data.name=folder", f"data.root={root}",
            f"data.num_workers={num_workers}", "model.hidden=16", "train.batch_size=4",
            "train.max_steps=2", f"train.output_dir={tmp_path / f'run{num_workers}'}",
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "Blocking queue" not in proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and str(bad) in lines[0] and "skip_bad=true" in lines[0]
        errors.append(lines[0])
    assert errors[0] == errors[1]


def test_resume_from_a_pdparams_is_a_one_line_error(tmp_path):
    """The file a user might pass to --resume out of PaddleGAN habit: refused, never run."""
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pdparams").write_bytes(pickle_payload(marker))
    write_mnist_idx(tmp_path / "mnist", n=16)
    proc = run_train(
        "configs/dcgan_mnist.yaml", "model.ngf=8", "model.ndf=8", "model.image_size=32",
        f"data.root={tmp_path / 'mnist'}", "data.download=false", "train.max_steps=1",
        f"train.output_dir={tmp_path / 'run'}", "train.batch_size=8",
        args=["--resume", str(tmp_path / "evil.pdparams")],
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pickle-based weight file" in lines[0], proc.stderr
    assert not marker.exists()
