"""The shared comparison helper (spec.compare) accepts what it should and rejects what it should."""

import numpy as np
import pytest

from attnspec.spec.compare import assert_close, max_errors


def test_accepts_differences_within_atol_plus_rtol():
    assert_close([1.0, -2.0], [1.0 + 1e-13, -2.0], rtol=1e-12)
    assert_close([0.0, 5e-9], [0.0, 0.0], rtol=0, atol=1e-8)


def test_rejects_and_names_the_worst_element():
    with pytest.raises(AssertionError, match=r"grad: worst element at index \(1, 0\): 3\.5 vs expected 3\.0"):
        assert_close([[1.0, 2.0], [3.5, 4.0]], [[1.0, 2.0], [3.0, 4.0]], rtol=1e-6, name="grad")


def test_default_atol_scales_with_the_largest_entry():
    # 1e-9 off on a tiny entry next to a large one: within rtol * max|expected| = 1e-8 ...
    assert_close([1e-12 + 1e-9, 100.0], [1e-12, 100.0], rtol=1e-10)
    # ... but not with atol = 0, where the tiny entry is judged on its own scale.
    with pytest.raises(AssertionError):
        assert_close([1e-12 + 1e-9, 100.0], [1e-12, 100.0], rtol=1e-10, atol=0)


def test_rejects_shape_mismatch_and_non_finite_values():
    with pytest.raises(AssertionError, match="shape"):
        assert_close(np.zeros(3), np.zeros(4), rtol=1)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close([np.nan], [np.nan], rtol=1)


def test_max_errors():
    abs_err, rel_err = max_errors([1.0, 2.5], [1.0, 2.0])
    assert abs_err == 0.5 and rel_err == 0.25


def test_relative_error_is_on_the_array_scale_not_per_element():
    # an exact zero expected next to O(1) values: no division by zero's tiny neighbour
    assert max_errors([1e-17, 1.0], [0.0, 1.0]) == (1e-17, 1e-17)
    assert max_errors([0.0], [0.0]) == (0.0, 0.0)
    assert max_errors([1e-300], [0.0])[1] == float("inf")
