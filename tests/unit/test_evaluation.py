"""The evaluation's real data and options (evaluation.py): which real images play which part,
and options checked before any data loads (e2e/test_eval_tool.py scores a generator)."""

import numpy as np
import pytest
from data_files import write_mnist_idx

from paddlegan_lite import evaluation
from paddlegan_lite.config import ConfigError, DataConfig, EvalConfig
from paddlegan_lite.datasets import build_dataset


def test_without_a_test_split_training_images_are_held_out(tmp_path):
    write_mnist_idx(tmp_path, n=200, seed=1, n_test=100)
    train = build_dataset(DataConfig(root=str(tmp_path), download=False), 28, 1)
    real = evaluation.split_real_data(train, test_dataset=None)
    assert real.test is train
    assert len(real.heldout) == 40 and len(real.reference) == 160  # 20% of 200 held out
    assert not set(real.heldout) & set(real.classifier_train)
    assert sorted([*real.heldout, *real.classifier_train]) == list(range(200))
    again = evaluation.split_real_data(train, train)  # a "test split" that is the same data
    np.testing.assert_array_equal(again.heldout, real.heldout)


def test_no_held_out_split_when_only_the_training_idx_files_exist(tmp_path):
    """Without t10k files the test split falls back to the bundled digits, which come from the
    official training set: not a held-out split for data read from IDX files."""
    write_mnist_idx(tmp_path, n=40, seed=1)  # train files only
    cfg = DataConfig(name="mnist", root=str(tmp_path), download=False)
    train = build_dataset(cfg, 28, 1, train=True)
    assert evaluation._test_split(cfg, 28, 1, train.source) is None
    with_test = tmp_path / "with_test"
    write_mnist_idx(with_test, n=40, seed=1, n_test=20)
    cfg = DataConfig(name="mnist", root=str(with_test), download=False)
    test = evaluation._test_split(cfg, 28, 1, build_dataset(cfg, 28, 1, train=True).source)
    assert test is not None and len(test) == 20


def test_options_built_in_code_are_checked_before_any_data_loads(tmp_path):
    nowhere = DataConfig(root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(ConfigError, match=r"'eval.num_samples' must be >= 10, got 5"):
        evaluation.build_evaluator(nowhere, 28, 1, 4, 0, EvalConfig(num_samples=5))
    with pytest.raises(ConfigError, match="the inception extractor needs its weights"):
        evaluation.build_evaluator(nowhere, 28, 1, 4, 0, EvalConfig(extractor="inception"))
