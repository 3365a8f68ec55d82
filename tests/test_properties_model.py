"""The model-level properties (spec/properties/{model,decoding,numerics,lstm}.py) run against attnspec.impl.

One test per property, named after it; each runs the property's strategy for
the profile's number of examples (tests/conftest.py: 50 in ``ci``, 500 in
``thorough``) times a per-test ``scale``, plus its pinned examples. The
oracle and finite-difference properties cost ~0.1 s per example, so they run
a fraction of the profile (ci: 20 and 8 examples; thorough: 200 and 80).

NUMBA_DISABLE_JIT agreement is Numba-specific, so it is a test of the
implementation, not a property: tests/test_impl_model.py::test_kernels_run_without_the_jit.
"""

from __future__ import annotations

import numpy as np
import pytest

from attnspec.impl.adapter import NumbaImplementation
from attnspec.impl.lstm import lstm_cell
from attnspec.spec.cases import random_case
from attnspec.spec.config import Config, param_shapes
from attnspec.spec.properties import REGISTRY, decoding, lstm, model_checks, numerics
from attnspec.spec.properties import model as model_properties
from attnspec.spec.strategies import ModelCase

IMPL = NumbaImplementation()
MODEL = [p.name for module in (model_properties, decoding, numerics, lstm) for p in module.PROPERTIES]


def test_extra_pad_changes_no_real_value(run_property):
    run_property(REGISTRY["extra_pad_changes_no_real_value"], IMPL)


def test_rows_do_not_depend_on_other_rows(run_property):
    run_property(REGISTRY["rows_do_not_depend_on_other_rows"], IMPL)


def test_gradients_match_the_oracle(run_property):
    run_property(REGISTRY["gradients_match_the_oracle"], IMPL, scale=0.4)


def test_gradients_match_finite_differences(run_property):
    run_property(REGISTRY["gradients_match_finite_differences"], IMPL, scale=0.16)


def test_greedy_emits_the_argmax_of_forward(run_property):
    run_property(REGISTRY["greedy_emits_the_argmax_of_forward"], IMPL)


def test_beam_of_width_one_is_greedy(run_property):
    run_property(REGISTRY["beam_of_width_one_is_greedy"], IMPL)


def test_decoded_scores_and_attention_match_forward(run_property):
    run_property(REGISTRY["decoded_scores_and_attention_match_forward"], IMPL)


def test_wide_beam_returns_the_best_sequence(run_property):
    run_property(REGISTRY["wide_beam_returns_the_best_sequence"], IMPL)


def test_float32_agrees_with_float64(run_property):
    run_property(REGISTRY["float32_agrees_with_float64"], IMPL)


def test_results_are_bit_identical(run_property):
    run_property(REGISTRY["results_are_bit_identical"], IMPL)


def test_large_values_give_finite_results(run_property):
    run_property(REGISTRY["large_values_give_finite_results"], IMPL)


def test_lstm_gates_and_state_are_bounded(run_property):
    run_property(REGISTRY["lstm_gates_and_state_are_bounded"], IMPL)


def test_lstm_cell_matches_the_equations(run_property):
    run_property(REGISTRY["lstm_cell_matches_the_equations"], IMPL)


def test_every_model_property_has_a_test_here():
    missing = [name for name in MODEL if f"test_{name}" not in globals()]
    assert not missing, f"model properties without a test in this file: {missing}"


# -- the strategies reach what the properties claim to cover ------------------------------------

def test_tolerances_are_the_documented_values():
    assert model_checks.same_tolerance("float64") == pytest.approx(9.09e-13, rel=1e-3)
    assert model_checks.same_tolerance("float32") == pytest.approx(4.88e-4, rel=1e-3)
    # below float16's eps: a half-precision path cannot pass the float32 property
    assert model_checks.same_tolerance("float32") < np.finfo(np.float16).eps


@pytest.mark.parametrize("score", ["general", "concat"])
def test_scale_up_reaches_but_does_not_pass_the_score_bound(score):
    """The safety strategy's |score| <= 1e4 by construction, and a worst case comes near it."""
    cfg = Config(V_src=5, V_tgt=5, E=2, H=3, score=score)
    rng = np.random.default_rng(0)
    p = {n: rng.normal(0, 0.5, s) for n, s in param_shapes(cfg).items()}
    case = ModelCase(cfg, p, np.array([[3, 4]]), np.array([2]), np.array([[1, 2]]))
    big = numerics.scale_up(case, 1e4, 1e4, 1.0, 1.0, 1.0).params
    H = cfg.H
    # The worst |score| over unit-bounded h and k: attained at sign vectors.
    if score == "general":
        W = big["attention.W_a"]
        worst = np.abs(W).sum()
        h, k = np.sign(W.sum(axis=1)), np.sign(W.sum(axis=0))
        assert abs(h @ W @ k) <= worst <= 1e4 * (1 + 1e-12)
    else:
        worst = np.abs(big["attention.v_a"]).sum()
        assert worst == pytest.approx(1e4, rel=1e-12)
    assert np.abs(big["generator.weight"]).sum(axis=1).max() == pytest.approx(1e4, rel=1e-12)
    assert H == 3


@pytest.mark.parametrize("score", ["general", "concat"])
def test_large_values_saturate_the_attention(score):
    """Scaled to |score| <= 1e4, the attention of a random case is one-hot: the safety cases are extreme."""
    cfg = Config(V_src=6, V_tgt=6, E=2, H=3, score=score)
    p, src, src_len, tgt = random_case(cfg, B=2, S=4, T=3, seed=0)
    big = numerics.scale_up(ModelCase(cfg, p, src, src_len, tgt), 1e4, 1e4, 1.0, 1.0, 1.0)
    a = IMPL.forward(big.params, cfg, big.src, big.src_len, big.tgt).attention
    assert np.all(a.max(axis=2) > 0.99)


def test_wide_beam_enumerates_every_hypothesis():
    # V = 4 (EOS = 2), max_len = 2: EOS; x EOS (3 ways); x y (9 ways without EOS).
    seqs = decoding._all_sequences(4, 2, 2)
    assert len(seqs) == 1 + 3 + 9 == len(set(seqs))
    assert (2,) in seqs and (0, 2) in seqs and (3, 1) in seqs and (2, 2) not in seqs


# -- the LSTM cell wrapper of attnspec.impl ---------------------------------------------------------

def test_lstm_cell_rejects_bad_input_naming_the_argument():
    x, h = np.zeros((2, 3)), np.zeros((2, 4))
    W_ih, W_hh, b = np.zeros((16, 3)), np.zeros((16, 4)), np.zeros(16)
    with pytest.raises(ValueError, match="W_hh"):
        lstm_cell(x, h, h, W_ih, np.zeros((16, 3)), b, b)
    with pytest.raises(TypeError, match="h"):
        lstm_cell(x, h.astype(np.float32), h, W_ih, W_hh, b, b)
    with pytest.raises(ValueError, match="b_ih"):
        lstm_cell(x, h, h, W_ih, W_hh, np.full(16, np.nan), b)
    with pytest.raises(TypeError, match="x"):
        lstm_cell(x.astype(int), h, h, W_ih, W_hh, b, b)


def test_lstm_cell_keeps_float32():
    args = [np.zeros(s, np.float32) for s in ((1, 2), (1, 3), (1, 3), (12, 2), (12, 3), (12,), (12,))]
    assert all(a.dtype == np.float32 for a in lstm_cell(*args))
