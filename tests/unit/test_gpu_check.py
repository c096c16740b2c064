"""bench/gpu_check.py's logic that will judge a real GPU (tables, metrics.jsonl, export lines, array
comparisons, pass or fail) on fabricated inputs, failing cases included
(e2e/test_gpu_check_script.py runs the script as a user does)."""

import json
import math
import sys

import numpy as np
import pytest
from helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
import gpu_check  # noqa: E402
from gpu_check import (  # noqa: E402
    Check,
    Comparison,
    Context,
    Row,
    compare_arrays,
    exit_code,
    format_table,
    images_per_sec,
    judge_close,
    judge_equal,
    judge_sync_bn,
    judge_train,
    parse_export_checks,
    parse_peak_memory,
    read_metrics,
    run_plan,
)


# ---------------------------------------------------------------------- tables and exit codes
def test_table_aligns_columns_and_counts_statuses():
    rows = [
        Row("train mlp_gan_mnist amp=off", "PASS", "1,234.5 img/s", ""),
        Row("resume dcgan_mnist", "FAIL", "max |diff| 0.002", "weights differ"),
        Row("2gpu ranks: weights", "SKIP", "", "1 GPU(s): needs 2"),
    ]
    lines = format_table(rows, elapsed=90).splitlines()
    assert lines[0].split() == ["check", "status", "numbers", "detail"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    status_column = lines[0].index("status")
    assert [line[status_column : status_column + 4] for line in lines[2:5]] == [
        "PASS",
        "FAIL",
        "SKIP",
    ]
    assert lines[3].endswith("weights differ")
    assert lines[-1] == "3 checks in 1.5 min: 1 PASS, 1 FAIL, 1 SKIP"
    with pytest.raises(ValueError, match="status must be one of"):
        Row("x", "OK")


def test_exit_code_is_1_only_when_a_check_fails():
    assert exit_code([Row("a", "PASS"), Row("b", "SKIP")]) == 0
    assert exit_code([]) == 0
    assert exit_code([Row("a", "PASS"), Row("b", "FAIL"), Row("c", "SKIP")]) == 1


# ---------------------------------------------------------------------- reading runs
def write_metrics(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def metric_rows(loss_d=(0.7, 0.6, 0.5), speeds=(100.0, 400.0, 500.0)):
    return [
        {"step": 10 * (i + 1), "loss_d": d, "loss_g": 1.0, "images_per_sec": s}
        for i, (d, s) in enumerate(zip(loss_d, speeds))
    ]


def test_read_metrics_and_speed_leave_out_the_warm_up(tmp_path):
    path = write_metrics(tmp_path / "metrics.jsonl", metric_rows(speeds=(10.0, 400.0, 600.0)))
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert images_per_sec(rows) == pytest.approx(500.0)  # median of 400 and 600, not the 10
    assert images_per_sec(rows[:1]) == pytest.approx(10.0)
    assert images_per_sec([]) is None
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match="line 4 is not JSON"):
        read_metrics(path)


def test_parse_peak_memory_and_export_lines():
    out = "step 50/50 ...\ncheckpoint: x\ngpu_check: peak_gpu_bytes=1048576000\n"
    assert parse_peak_memory(out) == 1_048_576_000
    assert parse_peak_memory("no tag here") is None
    export_out = (
        "[INFO] exported dcgan generator to out/\n"
        "[INFO] check: Paddle Inference vs dynamic graph on 8 images: max abs diff 3.1e-07 "
        "(tolerance 0.0001)\n"
        "[INFO] check: Paddle Inference on gpu vs dynamic graph on 8 images: max abs diff "
        "0.00021 (tolerance 0.01)\n"
        "[INFO] check: something else\n"
    )
    assert parse_export_checks(export_out) == [
        ("Paddle Inference", pytest.approx(3.1e-07), pytest.approx(1e-4)),
        ("Paddle Inference on gpu", pytest.approx(2.1e-4), pytest.approx(1e-2)),
    ]


# ---------------------------------------------------------------------- judging a training run
def test_judge_train_passes_a_good_run():
    row = judge_train("train x amp=fp16", 0, "", metric_rows(), 50, 50, 3 * 2**20)
    assert row.status == "PASS"
    assert row.numbers == "450.0 img/s, peak 3 MiB, loss_d 0.500, loss_g 1.000"


@pytest.mark.parametrize(
    "returncode, rows, step, detail",
    [
        (2, metric_rows(), None, "exit 2: error: non-finite loss at step 3"),
        (0, metric_rows(loss_d=(0.7, math.nan, 0.5)), 50, "non-finite loss logged at step(s) [20]"),
        (0, metric_rows(loss_d=(0.7, 0.6, math.inf)), 50, "non-finite loss logged at step(s) [30]"),
        (0, [], 50, "no rows in metrics.jsonl"),
        (0, None, 50, "no rows in metrics.jsonl"),
        (0, metric_rows(), 40, "last checkpoint at step 40, not 50"),
    ],
)
def test_judge_train_fails_a_bad_run(returncode, rows, step, detail):
    output = "training...\nerror: non-finite loss at step 3\n"
    row = judge_train("train x amp=fp16", returncode, output, rows, step, 50, None)
    assert (row.status, row.detail) == ("FAIL", detail)


# ---------------------------------------------------------------------- comparing arrays
def nets(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "netG/fc.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "netG/bn._mean": rng.standard_normal(3).astype(np.float32),
        "netD/fc.bias": np.zeros(1, np.float32),
    }


def test_identical_arrays_pass_and_a_changed_one_fails_by_name():
    a = nets()
    same = compare_arrays(a, {k: v.copy() for k, v in a.items()})
    assert (same.max_abs_diff, same.arrays, same.problems) == (0.0, 3, [])
    row = judge_equal("resume x", same, 0.0, "final checkpoints")
    assert row.status == "PASS" and row.numbers.startswith("max |diff| 0 (identical) over 3")

    b = {k: v.copy() for k, v in a.items()}
    b["netG/bn._mean"][1] += 1e-3
    diff = compare_arrays(a, b)
    assert diff.worst == "netG/bn._mean"
    assert diff.max_abs_diff == pytest.approx(1e-3, rel=1e-3)
    row = judge_equal("resume x", diff, 0.0, "final checkpoints")
    assert row.status == "FAIL" and row.detail == "final checkpoints differ"
    assert "at netG/bn._mean" in row.numbers
    assert judge_equal("ranks", diff, 1e-2, "weights").status == "PASS"  # within a tolerance


def test_missing_arrays_other_shapes_and_nan_fail():
    a = nets()
    b = {k: v.copy() for k, v in a.items() if k != "netD/fc.bias"}
    b["netG/fc.weight"] = np.zeros((3, 4), np.float32)
    b["netG/extra"] = np.zeros(2, np.float32)
    found = compare_arrays(a, b)
    assert found.problems == [
        "netD/fc.bias only in the first",
        "netG/extra only in the second",
        "netG/fc.weight: shapes [4, 3] and [3, 4]",
    ]
    assert judge_equal("resume x", found, 1.0, "weights").status == "FAIL"

    c = {k: v.copy() for k, v in a.items()}
    c["netG/fc.weight"][0, 0] = np.nan
    nan = compare_arrays(a, c)
    assert math.isnan(nan.max_abs_diff) and not nan.within(1e9)
    assert judge_equal("resume x", nan, 1e9, "weights").status == "FAIL"
    assert judge_close("predictor-gpu x", math.nan, 2e-3, "").status == "FAIL"
    assert judge_close("predictor-gpu x", 2.5e-2, 1e-2, "").status == "FAIL"
    assert judge_close("predictor-gpu x", 1.5e-3, 1e-2, "").status == "PASS"


def test_sync_bn_needs_equal_statistics_and_a_control_that_differs():
    equal, differ = Comparison(0.0, "", 6), Comparison(0.31, "netD/bn._mean", 6)
    assert judge_sync_bn("bn", equal, differ).status == "PASS"
    failed = judge_sync_bn("bn", differ, differ)
    assert (failed.status, failed.detail) == (
        "FAIL",
        "SyncBatchNorm statistics differ between ranks",
    )
    # equal statistics without SyncBatchNorm: the ranks saw the same batch, nothing is shown
    blind = judge_sync_bn("bn", equal, equal)
    assert blind.status == "FAIL" and "cannot show the sync" in blind.detail


# ---------------------------------------------------------------------- running the plan
def test_plan_skips_what_its_dependency_did_not_pass_and_catches_crashes(tmp_path, capsys):
    ctx = Context("gpu", 1, 50, tmp_path, tmp_path / "cifar10")

    def crash():
        raise RuntimeError("CUDA error: out of memory")

    plan = [
        Check("train a", [], lambda: Row("train a", "FAIL", detail="exit 1")),
        Check("export a", [], lambda: Row("export a", "PASS"), ["train a"]),
        Check("amp", [], crash),
        Check("ok", [], lambda: Row("ok", "PASS")),
    ]
    rows = run_plan(plan, ctx)
    assert [(r.name, r.status) for r in rows] == [
        ("train a", "FAIL"),
        ("export a", "SKIP"),
        ("amp", "FAIL"),
        ("ok", "PASS"),
    ]
    assert rows[1].detail == "needs train a"
    assert rows[2].detail == "RuntimeError: CUDA error: out of memory"
    assert "[4/4] PASS ok" in capsys.readouterr().err


def test_gpu_only_checks_skip_on_cpu_and_two_gpu_checks_with_one_gpu(tmp_path, monkeypatch):
    def no_subprocess(*args, **kwargs):
        raise AssertionError("nothing should run")

    monkeypatch.setattr(gpu_check, "run", no_subprocess)
    cpu = Context("cpu", 0, 50, tmp_path, tmp_path / "cifar10")
    plan = {c.name: c for c in gpu_check.build_plan(cpu, ["dcgan_mnist"])}
    for name in ("train dcgan_mnist amp=fp16", "train dcgan_mnist amp=bf16"):
        assert plan[name].run().status == "SKIP"
    assert plan["predictor-gpu dcgan_mnist"].run().status == "SKIP"
    assert plan["amp white list conv2d_transpose"].run().status == "SKIP"
    one = Context("gpu", 1, 50, tmp_path, tmp_path / "cifar10")
    plan = {c.name: c for c in gpu_check.build_plan(one, ["dcgan_mnist"])}
    for name in ("2gpu train dcgan_mnist sync_bn", "2gpu ranks: weights"):
        row = plan[name].run()
        assert (row.status, row.detail) == ("SKIP", "1 GPU(s): needs 2")
