"""Configuration, parameter names/shapes and input validation (spec.config, spec.validate)."""

import numpy as np
import pytest

from attnspec.spec.config import Config, param_shapes
from attnspec.spec.validate import check_batch, check_params


def test_param_names_follow_model_md_for_every_variant():
    c = Config(V_src=7, V_tgt=6, E=3, H=2, L=2, score="concat")
    shapes = param_shapes(c)
    assert shapes["encoder.lstm.weight_ih_l0"] == (8, 3)
    assert shapes["encoder.lstm.weight_ih_l1"] == (8, 2)
    assert shapes["decoder.lstm.weight_ih_l0"] == (8, 5)  # [Emb; h~] with input feeding
    assert shapes["attention.W_a"] == (2, 4) and shapes["attention.v_a"] == (2,)
    assert shapes["attention.W_c"] == (2, 4)
    assert "attention.W_a" not in param_shapes(c.replace(score="dot"))
    assert param_shapes(c.replace(score="general"))["attention.W_a"] == (2, 2)
    assert param_shapes(c.replace(input_feeding=False))["decoder.lstm.weight_ih_l0"] == (8, 3)
    baseline = param_shapes(c.replace(score="none"))
    assert not any(n.startswith("attention.") for n in baseline)
    assert baseline["decoder.lstm.weight_ih_l0"] == (8, 3)


def test_config_round_trips_through_json():
    c = Config(V_src=7, V_tgt=6, E=3, H=2, L=2, score="general", input_feeding=False, dtype="float32")
    assert Config.from_json(c.to_json()) == c


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(score="cosine"), "score"),
        (dict(H=0), "H"),
        (dict(L=1.5), "L"),
        (dict(dtype="float16"), "dtype"),
        (dict(eos_id=9), "eos_id"),
        (dict(bos_id=0), "pad_id, bos_id, eos_id"),
    ],
)
def test_bad_config_names_the_argument(kwargs, match):
    base = dict(V_src=6, V_tgt=6, E=3, H=2)
    with pytest.raises((ValueError, TypeError), match=match):
        Config(**{**base, **kwargs})


CFG = Config(V_src=6, V_tgt=5, E=3, H=2)
SRC = np.array([[3, 4, 5], [3, 0, 0]])
LEN = np.array([3, 1])
TGT = np.array([[1, 3, 2], [1, 2, 0]])


def test_valid_batch_passes_and_is_int64():
    src, src_len, tgt = check_batch(CFG, SRC, LEN, TGT)
    assert src.dtype == src_len.dtype == tgt.dtype == np.int64


@pytest.mark.parametrize(
    "src, src_len, tgt, match",
    [
        (SRC[0], LEN, TGT, "src"),
        (SRC.astype(float), LEN, TGT, "src"),
        (SRC + 3, LEN, TGT, "src: id"),
        (SRC, np.array([3, 0]), TGT, r"src_len\[1\]"),
        (SRC, np.array([4, 1]), TGT, r"src_len\[0\]"),
        (SRC, np.array([3]), TGT, "src_len"),
        (SRC, LEN, TGT[:1], "tgt: batch size"),
        (SRC, LEN, TGT[:, :1], "tgt"),
        (SRC, LEN, np.array([[1, 3, 2], [2, 2, 0]]), r"tgt\[1, 0\]"),
        (SRC, LEN, np.array([[1, 5, 2], [1, 2, 0]]), "tgt: id 5"),
        (SRC, LEN, np.array([[1, 0, 0], [1, 0, 0]]), "loss"),
    ],
)
def test_bad_batch_names_the_argument(src, src_len, tgt, match):
    with pytest.raises((ValueError, TypeError), match=match):
        check_batch(CFG, src, src_len, tgt)


def _params(config):
    return {n: np.zeros(s) for n, s in param_shapes(config).items()}


def test_params_checked_by_name_shape_and_finiteness():
    assert list(check_params(_params(CFG), CFG)) == list(param_shapes(CFG))
    p = _params(CFG)
    del p["generator.bias"]
    with pytest.raises(ValueError, match="missing \\['generator.bias'\\]"):
        check_params(p, CFG)
    p = _params(CFG)
    p["attention.W_a"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="unexpected \\['attention.W_a'\\]"):
        check_params(p, CFG)
    p = _params(CFG)
    p["attention.W_c"] = np.zeros((2, 3))
    with pytest.raises(ValueError, match="attention.W_c.*shape"):
        check_params(p, CFG)
    p = _params(CFG)
    p["generator.weight"][0, 0] = np.nan
    with pytest.raises(ValueError, match="generator.weight.*NaN"):
        check_params(p, CFG)
    with pytest.raises(TypeError, match="params"):
        check_params([1, 2], CFG)


def _as_float(name, value, ndim):
    return np.asarray(value, dtype=float)


@pytest.mark.parametrize(
    "score, W_a, v_a, match",
    [
        ("dot", np.zeros((2, 2)), None, "W_a: score 'dot' has no parameter"),
        ("general", None, None, r"W_a: score 'general' needs W_a of shape \(2, 2\)"),
        ("general", np.zeros((2, 4)), None, r"W_a: expected shape \(2, 2\)"),
        ("concat", np.zeros((2, 4)), None, "v_a: score 'concat' needs"),
        ("concat", np.zeros((2, 4)), np.zeros(3), r"v_a: expected shape \(2,\)"),
    ],
)
def test_attention_params_checked_per_score(score, W_a, v_a, match):
    from attnspec.spec.validate import check_attention_params

    with pytest.raises(ValueError, match=match):
        check_attention_params(score, 2, W_a, v_a, _as_float)


def test_attention_params_pass_through_converted():
    from attnspec.spec.validate import check_attention_params

    W_a, v_a = check_attention_params("concat", 2, [[1, 2, 3, 4], [5, 6, 7, 8]], [1, 2], _as_float)
    assert W_a.dtype == v_a.dtype == float and W_a.shape == (2, 4)
    assert check_attention_params("dot", 2, None, None, _as_float) == (None, None)


def test_float_arrays_checked_for_kind_rank_dtype_and_finiteness():
    from attnspec.spec.validate import as_float_array

    assert as_float_array("x", np.zeros((2, 3)), 2).flags.c_contiguous
    with pytest.raises(TypeError, match="x: expected a float32 or float64"):
        as_float_array("x", np.zeros((2, 3), int), 2)
    with pytest.raises(ValueError, match=r"x: expected 2 dimension\(s\)"):
        as_float_array("x", np.zeros(3), 2)
    with pytest.raises(TypeError, match="x: dtype float32 differs"):
        as_float_array("x", np.zeros((2, 3), np.float32), 2, np.float64)
    with pytest.raises(ValueError, match="x: contains NaN"):
        as_float_array("x", np.array([[np.inf]]), 2)


def test_prefix_masks_give_src_len_and_others_are_rejected():
    from attnspec.spec.validate import src_len_from_mask

    assert src_len_from_mask(np.array([[1, 1, 0], [1, 0, 0]], bool), 2, 3).tolist() == [2, 1]
    for bad, match in [(np.array([[1, 0, 1]], bool), "row 0 is not a non-empty prefix"),
                       (np.array([[0, 0, 0]], bool), "row 0 is not a non-empty prefix"),
                       (np.array([[1, 1]], bool), r"mask: expected shape \(1, 3\)"),
                       (np.array([[1, 1, 0]]), "mask: expected a bool array")]:
        with pytest.raises((ValueError, TypeError), match=match):
            src_len_from_mask(bad, 1, 3)


def test_all_finite_is_exact_even_when_the_sum_overflows():
    from attnspec.spec.validate import all_finite
    big = np.finfo(np.float32).max
    assert all_finite(np.array([big, big, -1.0], np.float32))          # the sum overflows; the entries do not
    assert all_finite(np.arange(6, dtype=np.int64).reshape(2, 3))
    assert all_finite(np.zeros((0, 3)))
    for bad in (np.nan, np.inf, -np.inf):
        for dtype in (np.float32, np.float64):
            a = np.ones((3, 4), dtype)
            a[2, 1] = bad
            assert not all_finite(a)
    a = np.array([np.inf, -np.inf, 1.0])                                 # a NaN sum: still refused
    assert not all_finite(a)
