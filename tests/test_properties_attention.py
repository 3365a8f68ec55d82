"""The attention-level properties (spec/properties/attention.py, attention_vjp.py) run against attnspec.impl.

One test per property, named after it; each runs the property's strategy for
the profile's number of examples (tests/conftest.py) plus its pinned examples.
"""

from __future__ import annotations

import numpy as np
import pytest

from attnspec.impl.adapter import NumbaImplementation
from attnspec.spec import oracle
from attnspec.spec.properties import REGISTRY, attention_vjp
from attnspec.spec.properties import attention as attention_properties

IMPL = NumbaImplementation()
ATTENTION = [p.name for p in attention_properties.PROPERTIES + attention_vjp.PROPERTIES]


def test_weights_are_nonnegative_and_sum_to_one(run_property):
    run_property(REGISTRY["weights_are_nonnegative_and_sum_to_one"], IMPL)


def test_masked_weights_are_exactly_zero(run_property):
    run_property(REGISTRY["masked_weights_are_exactly_zero"], IMPL)


def test_single_valid_position_gets_all_weight(run_property):
    run_property(REGISTRY["single_valid_position_gets_all_weight"], IMPL)


def test_attention_outputs_are_finite(run_property):
    run_property(REGISTRY["attention_outputs_are_finite"], IMPL)


def test_weights_and_context_match_oracle(run_property):
    run_property(REGISTRY["weights_and_context_match_oracle"], IMPL)


def test_weights_are_permutation_equivariant(run_property):
    run_property(REGISTRY["weights_are_permutation_equivariant"], IMPL)


def test_softmax_is_shift_invariant(run_property):
    run_property(REGISTRY["softmax_is_shift_invariant"], IMPL)


def test_context_lies_in_convex_hull(run_property):
    run_property(REGISTRY["context_lies_in_convex_hull"], IMPL)


def test_dominant_score_gives_one_hot_weights(run_property):
    run_property(REGISTRY["dominant_score_gives_one_hot_weights"], IMPL)


def test_equal_scores_give_uniform_weights(run_property):
    run_property(REGISTRY["equal_scores_give_uniform_weights"], IMPL)


def test_zero_query_gives_uniform_weights(run_property):
    run_property(REGISTRY["zero_query_gives_uniform_weights"], IMPL)


def test_score_gradient_sums_to_zero(run_property):
    run_property(REGISTRY["score_gradient_sums_to_zero"], IMPL)


def test_attention_vjp_matches_oracle(run_property):
    run_property(REGISTRY["attention_vjp_matches_oracle"], IMPL)


def test_every_attention_property_has_a_test_here():
    missing = [name for name in ATTENTION if f"test_{name}" not in globals()]
    assert not missing, f"attention properties without a test in this file: {missing}"


# -- MODEL.md's worked example, exactly -----------------------------------------------------

def test_worked_example_single_valid_key_gets_weight_one_and_ctx_is_the_key():
    w, ctx = IMPL.attention("dot", np.array([[0.7, 0.3]]), np.array([[[0.8, 0.2], [0.0, 0.0]]]),
                            np.array([[True, False]]))
    assert w.tolist() == [[1.0, 0.0]]
    assert ctx.tolist() == [[0.8, 0.2]]


def test_worked_example_two_keys_score_0_62_matches_oracle():
    # e = (0.62, 0): a_0 = 1 / (1 + exp(-0.62)).
    case = attention_properties.WORKED_TWO_VALID
    w, ctx = IMPL.attention(case.score, case.query, case.keys, case.mask)
    a, c = oracle.attention("dot", ["0.7", "0.3"], [["0.8", "0.2"], [0, 0]], 2)
    # float64 inputs 0.7, 0.3, 0.8, 0.2 are within 1e-16 of the decimals: a few ulps in all.
    np.testing.assert_allclose(w[0], a.astype(float), rtol=4e-16, atol=0)
    np.testing.assert_allclose(ctx[0], c.astype(float), rtol=4e-16, atol=0)


# -- the VJP's own input checks -------------------------------------------------------------

def test_attention_vjp_rejects_a_cotangent_of_the_wrong_shape():
    with pytest.raises(ValueError, match="g_ctx"):
        IMPL.attention_vjp("dot", np.zeros((1, 2)), np.zeros((1, 3, 2)), np.ones((1, 3), bool), np.zeros((2, 2)))


def test_attention_vjp_rejects_a_non_prefix_mask():
    with pytest.raises(ValueError, match="mask"):
        IMPL.attention_vjp("dot", np.zeros((1, 2)), np.zeros((1, 3, 2)), np.array([[True, False, True]]),
                           np.zeros((1, 2)))


# -- overflow: found by fuzzing (session 18) ------------------------------------------------

Q, K2, M2 = np.array([[0.7, 0.3]]), np.array([[[0.8, 0.2], [-0.1, 0.0]]]), np.ones((1, 2), bool)


@pytest.mark.parametrize("score,scale,extra", [
    ("dot", 1e200, {}),
    ("general", 1e160, {"W_a": np.eye(2)}),
    ("concat", 1.0, {"W_a": np.full((2, 4), 1e308), "v_a": np.ones(2)}),
])
def test_attention_refuses_inputs_whose_scores_could_overflow(score, scale, extra):
    """An overflowed score is +-inf: +inf made the weights NaN, and -inf would silently zero a
    position whatever its exact score; concat's tanh of an overflowed W_a [q; k] saturates silently."""
    for call in (lambda: IMPL.attention(score, Q * scale, K2 * scale, M2, **extra),
                 lambda: IMPL.attention_vjp(score, Q * scale, K2 * scale, M2, np.ones((1, 2)), **extra)):
        with pytest.raises(ValueError, match="too large for float64"):
            call()


def test_attention_below_the_bound_matches_the_oracle():
    """At 1e100 (scores of 1e200, far below the bound) the weights saturate exactly as the oracle's."""
    w, ctx = IMPL.attention("dot", Q * 1e100, K2 * 1e100, M2)
    w_exact, _ = oracle.attention("dot", Q[0] * 1e100, K2[0] * 1e100, 2)
    assert w.tolist() == [[1.0, 0.0]] and np.allclose(np.asarray(w_exact, dtype=float), w)


def test_attention_vjp_reports_an_overflowed_gradient():
    """g_s = k_s . g_ctx overflows in the backward only: its results' check raises, naming the function."""
    with pytest.raises(FloatingPointError, match="attention_vjp"):
        IMPL.attention_vjp("dot", Q, K2 * 1e300, M2, np.full((1, 2), 1e300))


def test_lstm_cell_refuses_an_overflowed_pre_activation():
    """W_ih x overflows to +-inf and sigma(-inf) = 0 would be returned as a gate, finite and wrong."""
    x = np.array([[1e200, 1e200]])
    W_ih = np.tile([[1e200, -1e200]], (4, 1))
    z1 = np.zeros((1, 1))
    with pytest.raises(FloatingPointError, match="lstm_cell"):
        IMPL.lstm_cell(x, z1, z1, W_ih, np.zeros((4, 1)), np.zeros(4), np.zeros(4))
