"""The predictor's side that needs no model (inference.py): seed ranges counted without being
built, and the grid limit's message."""

import re

import pytest

from paddlegan_lite import inference
from paddlegan_lite.inference import InferenceError, count_unique, parse_int_list, parse_int_ranges


def test_ranges_are_counted_without_being_built():
    ranges = parse_int_ranges("0-99999999999999,5,10-20", "--seeds")
    assert count_unique(ranges) == 100_000_000_000_000  # 5 and 10-20 lie inside the first
    assert count_unique(parse_int_ranges("3-6,5,8,1-2", "--seeds")) == 7
    assert parse_int_list("5,5,3-6,1", "--seeds") == [5, 3, 4, 6, 1]  # first order kept
    with pytest.raises(InferenceError, match="names 11 values; one call takes at most 10"):
        parse_int_list("0-10", "--seeds", limit=10)
    assert parse_int_list("0-9,0-9", "--seeds", limit=10) == list(range(10))


def test_grid_limit_names_the_largest_grid_that_fits():
    """The refusal's "about N images" is the largest count within GRID_MAX_BYTES."""
    shape = (3, 256, 256)
    with pytest.raises(inference.InferenceError, match="about .* such images") as err:
        inference.check_grid_size(10_000, shape)
    fits = int(re.search(r"about ([\d,]+) such", str(err.value)).group(1).replace(",", ""))
    assert inference.grid_bytes(fits, shape) <= inference.GRID_MAX_BYTES
    assert inference.grid_bytes(fits + 1, shape) > inference.GRID_MAX_BYTES
    inference.check_grid_size(fits, shape)  # no error at the limit
