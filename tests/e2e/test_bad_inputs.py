"""Every tool against bad input, as users run them: exit code 2 (130 for Ctrl-C), no Traceback,
and one stderr line `error: ...` that names the problem.

One row per bad input. Rows that fail at config load take a fraction of a second; rows that reach
the data, a checkpoint or a model import Paddle first and take seconds, so the selected rows all
run at once, a few processes at a time (`results`), and each test checks its own row.
Output paths and infer --seeds have their own table in e2e/test_tool_paths.py.
"""

from __future__ import annotations

import gzip
import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from data_files import write_image_folder, write_mnist_idx, write_unreadable_images
from helpers import REPO_ROOT, tool_env

PROCESSES = 4  # rows run at once (a slow row is mostly Paddle's import)
TIMEOUT = 240

# A run small enough to reach the data stage in a second or two once Paddle is loaded; {out} is a
# run folder of its own per row, so rows running at once never share a run folder's lock.
TINY = (
    "-c configs/mlp_gan_mnist.yaml -o model.hidden=16 train.batch_size=4 train.max_steps=1 "
    "data.download=false train.output_dir={out}"
)
DCGAN = "-c configs/dcgan_mnist.yaml -o"


def row(id, command, fragment, code=2):
    """`tools/<tool>.py args` (shell words; {tmp}, {cfg}, {data}, {ckpt}, {out} are filled in),
    the text the error line must hold, and the exit code."""
    return pytest.param((command, fragment, code), id=id)


# fmt: off
ROWS = [
    # ---- config files: all refused before Paddle loads
    row("config missing", "train -c {tmp}/nope.yaml", "cannot read config file {tmp}/nope.yaml"),
    row("config a folder", "train -c {tmp}", "Is a directory"),
    row("not YAML", "train -c {cfg}/not_yaml.yaml", "not_yaml.yaml: not valid YAML"),
    row("not a mapping", "train -c {cfg}/list.yaml", "must be a mapping of sections, got list"),
    row("not UTF-8", "train -c {cfg}/latin1.yaml", "latin1.yaml: not UTF-8 text"),
    row("duplicate key", "train -c {cfg}/dup_key.yaml",
        "dup_key.yaml: line 3: key 'train.batch_size' given twice (also on line 2)"),
    row("duplicate section", "train -c {cfg}/dup_section.yaml",
        "dup_section.yaml: line 4: key 'train' given twice (also on line 1)"),
    row("deep nesting, flow", "train -c {cfg}/deep_flow.yaml",
        "deep_flow.yaml: line 1: nested deeper than 20 levels"),
    row("deep nesting, block", "train -c {cfg}/deep_block.yaml",
        "deep_block.yaml: line 20: nested deeper than 20 levels"),
    row("unknown key", "train -c {cfg}/unknown_key.yaml", "key 'train.epoch' (valid: epochs,"),
    row("unknown section", "train -c {cfg}/unknown_section.yaml",
        "unknown key 'trian' (valid: seed, model,"),
    row("wrong type", "train -c {cfg}/wrong_type.yaml",
        "'train.epochs' must be int, got 'three' (str)"),
    row("section not a mapping", "train -c {cfg}/scalar_section.yaml",
        "'model' must be a section (mapping), got 3"),
    row("out of range", "train -c {cfg}/zero_batch.yaml", "'train.batch_size' must be > 0, got 0"),
    row("not finite", "train -c {cfg}/nan_lr.yaml", "'optimizer.g.lr' must be in (0, 1], got nan"),
    row("bad choice", "train -c {cfg}/bad_choice.yaml",
        "'model.name' is 'vae'; valid: mlp_gan, dcgan, acgan"),
    row("missing _base_", "train -c {cfg}/no_base.yaml",
        "no_base.yaml: _base_ 'nope.yaml' not found (looked in {cfg})"),
    row("_base_ loop", "train -c {cfg}/loop.yaml", "loop.yaml: _base_ chain loops back to itself"),
    row("python tag", "train -c {cfg}/python_tag.yaml",
        "not valid YAML (could not determine a constructor"),
    row("5000-digit int", "train -c {cfg}/long_int.yaml",
        "not valid YAML (an integer of more than 4300 digits)"),
    row("image_size too large", f"train {DCGAN} model.image_size=4096",
        "model.image_size=4096, model.nz=100, model.ngf=32, model.ndf=32: the run needs about"),
    row("ngf too large", f"train {DCGAN} model.ngf=1000000 model.image_size=64",
        "model.ngf=1000000, model.ndf=32: the run needs about 9.6 PiB (parameters 9.5 PiB"),
    row("nz beyond a tensor dimension", f"train {DCGAN} model.nz=3000000000",
        "'model.nz' must be <= 2147483647"),
    row("dcgan image_size 48", f"train {DCGAN} model.image_size=48",
        "'model.image_size' must be a power of two >= 8 for dcgan"),
    row("acgan image_size 30", "train -c configs/acgan_mnist.yaml -o model.image_size=30",
        "'model.image_size' must be a multiple of 4 for acgan, got 30"),
    # ---- -o overrides
    row("-o unknown key", f"train {DCGAN} train.epoch=1", "key 'train.epoch' (valid: epochs,"),
    row("-o bad value", f"train {DCGAN} train.epochs=three", "'train.epochs' must be int, got"),
    row("-o bad bool", f"train {DCGAN} data.download=maybe", "'data.download' must be bool"),
    row("-o without =", f"train {DCGAN} train.epochs",
        "override 'train.epochs' must look like section.key=value"),
    row("-o empty key part", f"train {DCGAN} train..epochs=1", "'train..epochs=1' must look like"),
    row("-o into a value", f"train {DCGAN} train.loss.x=1", "'loss' is not a section"),
    row("-o duplicate key", f"train {DCGAN} 'model={{ngf: 8, ngf: 4}}'", "key 'ngf' given twice"),
    row("-o deep nesting", f"train {DCGAN} seed={'[' * 50}{']' * 50}", "nested deeper than 20"),
    # ---- config errors through the other tools
    row("convert_weights config", "convert_weights -c {cfg}/unknown_key.yaml --weights w.pdparams",
        "unknown key 'train.epoch'"),
    row("export config", "export_model -c {cfg}/dup_key.yaml", "'train.batch_size' given twice"),
    row("export -o without -c", "export_model -o train.epochs=1 --checkpoint {ckpt}",
        "-o needs -c"),
    row("eval --data config", "eval --checkpoint {ckpt} --data {cfg}/no_base.yaml",
        "_base_ 'nope.yaml' not found"),
    # ---- eval options: -o eval.*, checked before the model loads
    row("eval -o unknown key", "eval --checkpoint {ckpt} -o eval.num_sample=100",
        "-o: unknown key 'eval.num_sample' (valid: interval, num_samples,"),
    row("eval -o bad value", "eval --checkpoint {ckpt} -o eval.batch_size=many",
        "-o: 'eval.batch_size' must be int, got 'many' (str)"),
    row("eval -o bad choice", "eval --checkpoint {ckpt} -o eval.extractor=inceptoin",
        "'eval.extractor' is 'inceptoin'; valid: classifier, inception"),
    row("eval -o a model key", "eval --checkpoint {ckpt} -o model.ngf=8",
        "override 'model.ngf=8': only data.* and eval.* keys apply here"),
    row("eval moved flag", "eval --checkpoint {ckpt} --num_samples 100",
        "--num_samples 100 is now -o eval.num_samples=100"),
    row("eval -c and --data", "eval -c configs/acgan_mnist.yaml --data configs/acgan_mnist.yaml "
        "--checkpoint {ckpt}", "-c and --data name the same config: give one"),
    # ---- data (mlp_gan at hidden=16: Paddle loads, then the data is read)
    row("data.root a file", f"train {TINY} data.root={{data}}/a_file.txt",
        "data.root {data}/a_file.txt is a file"),
    row("folder missing", f"train {TINY} data.name=folder data.root={{data}}/nowhere",
        "{data}/nowhere: image folder not found"),
    row("folder empty", f"train {TINY} data.name=folder data.root={{data}}/empty",
        "{data}/empty: no images"),
    row("folder of non-images", f"train {TINY} data.name=folder data.root={{data}}/not_images",
        "{data}/not_images/page_"),
    row("IDX not gzip", f"train {TINY} data.root={{data}}/mnist_not_gzip",
        "mnist_not_gzip/train-images-idx3-ubyte.gz"),
    row("IDX header too large", f"train {TINY} data.root={{data}}/mnist_huge_header",
        "mnist_huge_header/train-images-idx3-ubyte.gz"),
    row("CIFAR tarball not one", f"train {TINY} data.name=cifar10 data.root={{data}}/cifar_not_tar",
        "cifar_not_tar/cifar-10-python.tar.gz"),
    row("truncated JPEG, 0 workers",
        f"train {TINY} data.name=folder data.root={{data}}/truncated data.num_workers=0",
        "truncated/truncated.jpg"),
    row("truncated JPEG, 2 workers",
        f"train {TINY} data.name=folder data.root={{data}}/truncated data.num_workers=2",
        "truncated/truncated.jpg"),
    row("dangling link", f"train {TINY} data.name=folder data.root={{data}}/dangling",
        "dangling/dangling.png"),
    row("skip_bad, all bad",
        f"train {TINY} data.name=folder data.root={{data}}/not_images data.skip_bad=true",
        "none of the 6 image files could be read"),
    # ---- resume
    row("resume missing", f"train {TINY} data.root={{data}}/mnist --resume {{tmp}}/nowhere",
        "no checkpoint at {tmp}/nowhere"),
    row("resume a file", f"train {TINY} data.root={{data}}/mnist --resume {{data}}/a_file.txt",
        "{data}/a_file.txt is a file; expected a checkpoint folder"),
    row("resume not a checkpoint",
        f"train {TINY} data.root={{data}}/mnist --resume {{data}}/fake_ckpt",
        "fake_ckpt: state.json is not a paddlegan_lite state"),
    row("resume another model",
        f"train {TINY} data.root={{data}}/mnist model.hidden=32 --resume {{ckpt}}",
        "was made with another model config"),
    # ---- export, eval, infer: what they are given to load
    row("export checkpoint missing", "export_model --checkpoint {tmp}/nowhere",
        "no checkpoint at {tmp}/nowhere"),
    row("export another model", "export_model -c configs/mlp_gan_mnist.yaml --checkpoint {ckpt}",
        "model.hidden=256 (checkpoint: 16)"),
    row("eval not a checkpoint", "eval --checkpoint {data}/fake_ckpt",
        "state.json is not a paddlegan_lite state"),
    row("eval model_dir missing", "eval --model_dir {tmp}/nowhere", "{tmp}/nowhere does not exist"),
    row("eval checkpoint as model_dir", "eval --model_dir {ckpt}", "has no infer_cfg.yml"),
    row("infer model_dir missing", "infer --model_dir {tmp}/nowhere --seeds 0 --grid {out}.png",
        "{tmp}/nowhere does not exist"),
    row("infer checkpoint as model_dir", "infer --model_dir {ckpt} --seeds 0 --grid {out}.png",
        "has no infer_cfg.yml"),
    row("infer model_dir a file", "infer --model_dir {data}/a_file.txt --seeds 0 --grid {out}.png",
        "{data}/a_file.txt is a file, not a folder"),
    # ---- Ctrl-C while a tool waits on a read (a config from a pipe): exit 130 and one line
    row("Ctrl-C", "train -c {cfg}/fifo.yaml", "interrupted", code=130),
]
# fmt: on


# ------------------------------------------------------------------------------------------------
# The files the rows name
# ------------------------------------------------------------------------------------------------

CONFIGS = {
    "not_yaml.yaml": "train: [\n",
    "list.yaml": "- model\n- train\n",
    "dup_key.yaml": "train:\n  batch_size: 16\n  batch_size: 64\n",
    "dup_section.yaml": "train:\n  batch_size: 16\n  epochs: 2\ntrain:\n  batch_size: 64\n",
    "deep_flow.yaml": "seed: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "deep_block.yaml": "".join("  " * i + f"k{i}:\n" for i in range(100)),
    "unknown_key.yaml": "train: {epoch: 3}\n",
    "unknown_section.yaml": "trian: {epochs: 3}\n",
    "wrong_type.yaml": "train: {epochs: three}\n",
    "scalar_section.yaml": "model: 3\n",
    "zero_batch.yaml": "train: {batch_size: 0}\n",
    "nan_lr.yaml": "optimizer: {g: {lr: .nan}}\n",
    "bad_choice.yaml": "model: {name: vae}\n",
    "no_base.yaml": "_base_: nope.yaml\n",
    "loop.yaml": "_base_: loop.yaml\n",
    "python_tag.yaml": "seed: !!python/object/apply:os.system ['true']\n",
    "long_int.yaml": "seed: 1" + "0" * 5000 + "\n",
}


def write_configs(folder: Path) -> None:
    folder.mkdir()
    for name, text in CONFIGS.items():
        (folder / name).write_text(text)
    (folder / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    os.mkfifo(folder / "fifo.yaml")  # as `-c <(...)` gives: reading it waits for a writer


def write_data(folder: Path) -> None:
    folder.mkdir()
    (folder / "a_file.txt").write_text("not a folder")
    (folder / "empty").mkdir()
    write_mnist_idx(folder / "mnist", n=16)
    not_images = folder / "not_images"
    not_images.mkdir()
    for i in range(6):
        (not_images / f"page_{i}.png").write_text("<html>404 Not Found</html>")
    not_gzip = write_mnist_idx(folder / "mnist_not_gzip", n=16)["paths"][0]
    not_gzip.write_bytes(b"this is no gzip stream, just text\n")
    huge = write_mnist_idx(folder / "mnist_huge_header", n=16)["paths"][0]  # 2^31 x 28 x 28 claimed
    huge.write_bytes(gzip.compress(bytes.fromhex("00000803 7fffffff 0000001c 0000001c")))
    (folder / "cifar_not_tar").mkdir()
    (folder / "cifar_not_tar" / "cifar-10-python.tar.gz").write_bytes(os.urandom(4096))
    good = write_image_folder(folder / "truncated", n=6, modes=("RGB",), exts=("jpg",))
    (folder / "scratch").mkdir()
    unreadable = write_unreadable_images(folder / "scratch", good["files"][0])
    unreadable["truncated_jpeg"].rename(folder / "truncated" / "truncated.jpg")
    write_image_folder(folder / "dangling", n=6, modes=("RGB",), exts=("png",))
    (folder / "dangling" / "dangling.png").symlink_to(folder / "dangling" / "deleted.png")
    fake = folder / "fake_ckpt"
    fake.mkdir()
    (fake / "state.json").write_text('{"step": 3}')


def make_checkpoint(folder: Path) -> Path:
    """A real one-step mlp_gan checkpoint (hidden=16): trained in-process, a second or two."""
    from paddlegan_lite.config import load_config
    from paddlegan_lite.trainer import train

    write_mnist_idx(folder / "mnist", n=16)
    overrides = TINY.format(out=folder / "run").split()[3:] + [f"data.root={folder / 'mnist'}"]
    train(load_config(REPO_ROOT / "configs/mlp_gan_mnist.yaml", overrides))
    return folder / "run" / "checkpoints" / "latest"


# ------------------------------------------------------------------------------------------------
# Running the rows
# ------------------------------------------------------------------------------------------------


def fill(text: str, places: dict, **more) -> str:
    """Put the paths in for {tmp}, {cfg}, ...; other braces (YAML flow mappings) stay."""
    for key, value in {**places, **more}.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def run_row(case, places: dict, out: Path) -> tuple[subprocess.CompletedProcess, float]:
    command, _, code = case
    tool, *args = shlex.split(command)
    cmd = [sys.executable, f"tools/{tool}.py", *(fill(a, places, out=out) for a in args)]
    start = time.monotonic()
    if code != 130:
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env=tool_env(), capture_output=True, text=True, timeout=TIMEOUT
        )
        return proc, time.monotonic() - start
    # Ctrl-C once the tool has opened the pipe: a writer's open succeeds only then. The writer
    # stays open until the tool is gone: at EOF it would read an empty config and train.
    fifo = Path(places["cfg"]) / "fifo.yaml"
    popen = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    writer = None
    try:
        while writer is None and popen.poll() is None and time.monotonic() - start < TIMEOUT:
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                time.sleep(0.05)
        popen.send_signal(signal.SIGINT)
        stdout, stderr = popen.communicate(timeout=TIMEOUT)
    finally:
        popen.kill()
        if writer is not None:
            os.close(writer)
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    return proc, time.monotonic() - start


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    """{row id: (finished process, seconds)} for every row this session selected, run at once."""
    ours = [item for item in request.session.items if item.path == request.path]
    cases = {
        item.callspec.id: item.callspec.params["case"]
        for item in ours
        if hasattr(item, "callspec") and "case" in item.callspec.params
    }
    if any(item.name == "test_workers_give_the_same_line_as_the_main_process" for item in ours):
        cases.update({p.id: p.values[0] for p in ROWS if p.id.startswith("truncated JPEG")})
    tmp = tmp_path_factory.mktemp("bad_inputs")
    write_configs(tmp / "configs")
    write_data(tmp / "data")
    places = {"tmp": tmp, "cfg": tmp / "configs", "data": tmp / "data"}
    if any("{ckpt}" in case[0] for case in cases.values()):
        places["ckpt"] = make_checkpoint(tmp / "checkpoint")
    (tmp / "runs").mkdir()
    with ThreadPoolExecutor(PROCESSES) as pool:
        futures = {
            name: pool.submit(run_row, case, places, tmp / "runs" / f"{i:02d}")
            for i, (name, case) in enumerate(cases.items())
        }
    # a row that broke the harness (a timeout, say) fails its own test only
    done = {name: future.exception() or future.result() for name, future in futures.items()}
    return done, places


@pytest.mark.parametrize("case", ROWS)
def test_bad_input_is_one_line_and_exit_2(request, results, case):
    done, places = results
    if isinstance(done[request.node.callspec.id], BaseException):
        raise done[request.node.callspec.id]
    proc, seconds = done[request.node.callspec.id]
    _, fragment, code = case
    where = f"{seconds:.1f} s; stderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == code, where
    assert "Traceback" not in proc.stderr, where
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, where
    expected = "interrupted" if code == 130 else "error: "
    assert lines[0].startswith(expected), where
    assert fill(fragment, places) in lines[0], where


def test_workers_give_the_same_line_as_the_main_process(results):
    """A bad file read in a DataLoader worker is reported as it is without workers."""
    done, _ = results
    lines = [done[f"truncated JPEG, {n} workers"][0].stderr.strip() for n in (0, 2)]
    assert lines[0] == lines[1]
