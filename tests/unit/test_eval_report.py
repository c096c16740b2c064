"""tools/eval.py's side (eval_report.py): the model's own config with overrides, the warning for
other data, a report that cannot be written."""

import pytest

from paddlegan_lite import eval_report
from paddlegan_lite.config import DataConfig
from paddlegan_lite.errors import UserError


def test_the_models_own_config_takes_overrides_and_must_exist():
    saved = {"data": {"root": "/data/mnist"}, "eval": {"num_samples": 500, "seed": 2}}
    model = eval_report.LoadedModel(None, 4, 0, (1, 28, 28), saved, {"path": "model"})
    cfg = eval_report.model_config(model, ["eval.seed=3", "data.download=false"])
    assert (cfg.data.root, cfg.data.download) == ("/data/mnist", False)
    assert (cfg.eval.num_samples, cfg.eval.seed) == (500, 3)
    assert saved["eval"]["seed"] == 2  # the model's own copy is left alone
    without = eval_report.LoadedModel(None, 4, 0, (1, 28, 28), {}, {"path": "model"})
    with pytest.raises(UserError, match="model holds no config: name the data with --data"):
        eval_report.model_config(without)


def test_other_data_warning_names_what_differs():
    saved = {"data": {"name": "mnist", "root": "/data/mnist"}, "model": {"channels": 1}}
    assert eval_report.other_data_warning(saved, DataConfig(root="/data/mnist")) is None
    assert eval_report.other_data_warning(saved, DataConfig(root="/data/mnist"), channels=1) is None
    cifar = DataConfig(name="cifar10", root="/data/cifar10")
    warning = eval_report.other_data_warning(saved, cifar, channels=3)
    assert "data.name mnist vs cifar10" in warning
    assert "data.root /data/mnist vs /data/cifar10" in warning
    assert "channels 1 vs 3" in warning
    assert eval_report.other_data_warning({}, cifar, channels=3) is None  # nothing saved: no claim


def test_a_failed_report_write_is_one_user_error(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"cannot write the report .*a_file/eval.json \("):
        eval_report.write_report({"fid": 1.0}, tmp_path / "a_file" / "eval.json")
