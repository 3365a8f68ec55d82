"""Attention-level properties: one step of MODEL.md's global attention, through ``Implementation.attention``.

    e_s = score(h, k_s),   a = softmax(e) over s < src_len (a_s = 0 after),   ctx = sum_s a_s k_s

The tolerances are the forward error bounds of attention_bounds.py; the
backward of the step has its own properties (attention_vjp.py).
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from .. import oracle
from ..strategies import AttentionCase, attention_examples, integer_arrays
from .attention_bounds import (ORACLE_DPS, eps_of, forward_bounds, gamma, parts64, require_within, score_error_bound,
                               scores64, sum_tolerance, underflow_slack)
from .base import Measure, Property, PropertyFailure, register, require

__all__ = ["LINEAR_SCORES", "SMALL", "ORDINARY_KINDS", "WORKED_ONE_VALID", "WORKED_TWO_VALID", "WORKED_OTHER_SCORES"]

LINEAR_SCORES = ("dot", "scaled_dot", "general")
"""Scores linear in the key and in the query: shifting every key by d shifts a row's scores by a constant."""


# -- calling the implementation -------------------------------------------------------------

def _call(impl, case: AttentionCase):
    """(weights [B, S], ctx [B, H]) of ``impl.attention`` on the case, their shapes checked."""
    weights, ctx = impl.attention(case.score, case.query, case.keys, case.mask, W_a=case.W_a, v_a=case.v_a)
    weights, ctx = np.asarray(weights), np.asarray(ctx)
    B, S, H = case.keys.shape
    require(weights.shape == (B, S), f"weights: shape {weights.shape}, expected {(B, S)}")
    require(ctx.shape == (B, H), f"ctx: shape {ctx.shape}, expected {(B, H)}")
    return weights, ctx


# -- pinned examples -----------------------------------------------------------------------

def _worked_example(n_valid: int) -> AttentionCase:
    """MODEL.md: query (0.7, 0.3), key (0.8, 0.2), score 0.62; a second key (0, 0) with score 0."""
    return AttentionCase("dot", np.array([[0.7, 0.3]]), np.array([[[0.8, 0.2], [0.0, 0.0]]]),
                         np.array([[True, n_valid == 2]]))


WORKED_ONE_VALID = _worked_example(1)
WORKED_TWO_VALID = _worked_example(2)

# The two-key case with every other score: e = 0.62 / sqrt(2), h^T W_a k, v_a^T tanh(W_a [h; k]).
WORKED_OTHER_SCORES = (
    WORKED_TWO_VALID._replace(score="scaled_dot"),
    WORKED_TWO_VALID._replace(score="general", W_a=np.array([[1.0, 0.5], [-0.25, 2.0]])),
    WORKED_TWO_VALID._replace(score="concat", W_a=np.array([[1.0, 0.5, -0.5, 0.25], [-0.25, 2.0, 1.0, -1.0]]),
                              v_a=np.array([1.5, -0.75])),
)

# Found by the suite (in its own bounds): a subnormal key makes ctx = 0.5 * 1.4e-45 underflow to 0,
# an absolute error no relative bound covers; hence the underflow slack of every bound.
SUBNORMAL_KEY = AttentionCase("dot", np.zeros((1, 1), np.float32),
                              np.array([[[0.0], [np.finfo(np.float32).smallest_subnormal]]], np.float32),
                              np.array([[True, True]]))

# scaled_dot with e_0 = (0.7 * 70 + 0.3 * 30) / sqrt(2) = 41.0 > log(4 n / eps) + 1 = 38.1 above e_1 = 0.
DOMINANT_SCALED_DOT = (WORKED_TWO_VALID._replace(score="scaled_dot", keys=np.array([[[70.0, 30.0], [0.0, 0.0]]])),
                       np.array([0]))


# -- the properties ---------------------------------------------------------------------------

def weights_are_nonnegative_and_sum_to_one(impl, case: AttentionCase) -> Measure:
    """a_s >= 0 and |sum_s a_s - 1| <= 2 (n + 2) eps for every row (n valid positions)."""
    weights, _ = _call(impl, case)
    require(bool(np.all(np.isfinite(weights))), f"weights: non-finite values {weights}")
    neg = np.argwhere(weights < 0)
    require(neg.size == 0, f"weights: negative weight {weights[tuple(neg[0])] if neg.size else 0!r} "
                           f"at index {tuple(int(j) for j in neg[0]) if neg.size else ()}")
    total = weights.astype(np.float64).sum(axis=1)
    return require_within(total, np.ones_like(total), sum_tolerance(case.src_len, case.dtype), "sum_s a_s")


def masked_weights_are_exactly_zero(impl, case: AttentionCase) -> Measure:
    """a_s == 0.0 exactly for s >= src_len (e_s = -inf, exp(-inf) = 0)."""
    weights, _ = _call(impl, case)
    bad = np.argwhere(~case.mask & (weights != 0))
    if bad.size:
        b, s = (int(j) for j in bad[0])
        raise PropertyFailure(f"weights[{b}, {s}] = {weights[b, s]!r} at a masked position "
                              f"(src_len[{b}] = {case.src_len[b]}), expected exactly 0.0",
                              Measure(float(np.abs(weights[~case.mask]).max()), math.inf))
    return Measure()


def single_valid_position_gets_all_weight(impl, case: AttentionCase) -> Measure:
    """src_len = 1: a_0 == 1.0 and ctx == k_0 exactly (exp(e_0 - e_0) / 1 = 1, 1 * k_0 + 0 = k_0)."""
    weights, ctx = _call(impl, case)
    for b in np.flatnonzero(case.src_len == 1):
        require(weights[b, 0] == 1.0, f"weights[{b}, 0] = {weights[b, 0]!r} with a single valid position, "
                                      f"expected exactly 1.0", Measure(abs(float(weights[b, 0]) - 1), math.inf))
        require(bool(np.array_equal(ctx[b], case.keys[b, 0])),
                f"ctx[{b}] = {ctx[b].tolist()} with a single valid position, expected the key "
                f"{case.keys[b, 0].tolist()} exactly", Measure(float(np.abs(ctx[b] - case.keys[b, 0]).max())))
    return Measure()


def attention_outputs_are_finite(impl, case: AttentionCase) -> Measure:
    """weights and ctx are finite for finite inputs, |e| up to 1e4 and S up to 512 included."""
    weights, ctx = _call(impl, case)
    for name, x in (("weights", weights), ("ctx", ctx)):
        if not np.all(np.isfinite(x)):
            i = tuple(int(j) for j in np.argwhere(~np.isfinite(x))[0])
            raise PropertyFailure(f"{name}: non-finite value {x[i]!r} at index {i} "
                                  f"(max |score| {np.abs(np.where(case.mask, scores64(case), 0)).max():.3g})",
                                  Measure(math.inf, math.inf))
    return Measure()


def weights_and_context_match_oracle(impl, case: AttentionCase) -> Measure:
    """a and ctx equal spec.oracle.attention (40 digits) within the forward error bound of the dtype."""
    weights, ctx = _call(impl, case)
    _, w_bound, ctx_bound = forward_bounds(case)
    true_w, true_ctx = np.zeros(weights.shape), np.zeros(ctx.shape)
    for b in range(case.query.shape[0]):
        a, c = oracle.attention(case.score, case.query[b], case.keys[b], int(case.src_len[b]),
                                case.W_a, case.v_a, dps=ORACLE_DPS)
        true_w[b], true_ctx[b] = a.astype(np.float64), c.astype(np.float64)
    # + eps64/2 |x|: the oracle's value rounded to float64 for the comparison.
    half64 = np.finfo(np.float64).eps / 2
    return (require_within(weights, true_w, w_bound + half64 * true_w, "weights vs oracle")
            | require_within(ctx, true_ctx, ctx_bound + half64 * np.abs(true_ctx), "ctx vs oracle"))


def weights_are_permutation_equivariant(impl, example) -> Measure:
    """keys'[pi(s)] = keys[s] on the valid s: a'[pi(s)] = a[s] and ctx' = ctx."""
    case, perms = example
    moved = case.keys.copy()
    index = np.tile(np.arange(case.keys.shape[1]), (case.keys.shape[0], 1))  # index[b, s] = pi_b(s)
    for b, perm in enumerate(perms):
        index[b, :len(perm)] = perm
        moved[b, perm] = case.keys[b, :len(perm)]
    permuted = case.replace(keys=moved)
    w, ctx = _call(impl, case)
    w2, ctx2 = _call(impl, permuted)
    _, wb, cb = forward_bounds(case)
    _, wb2, cb2 = forward_bounds(permuted)
    rows = np.arange(case.keys.shape[0])[:, None]
    return (require_within(w2[rows, index], w, wb + wb2[rows, index], "permuted weights a'[pi(s)] vs a[s]")
            | require_within(ctx2, ctx, cb + cb2, "ctx after permuting the keys"))


def softmax_is_shift_invariant(impl, example) -> Measure:
    """keys + d shifts every score of a row by the same h . d (h^T W_a d): a unchanged, ctx' = ctx + d."""
    case, d = example
    shifted = case.replace(keys=(case.keys + d[:, None, :]).astype(case.dtype))
    w, ctx = _call(impl, case)
    w2, ctx2 = _call(impl, shifted)
    _, wb, cb = forward_bounds(case)
    _, wb2, cb2 = forward_bounds(shifted)
    expected_ctx = ctx.astype(np.float64) + d
    return (require_within(w2, w, wb + wb2, "weights after shifting the keys")
            | require_within(ctx2, expected_ctx, cb + cb2, "ctx after shifting the keys by d, vs ctx + d"))


def context_lies_in_convex_hull(impl, case: AttentionCase) -> Measure:
    """min_s k_sj <= ctx_j <= max_s k_sj over the valid s, within (3n + 4) eps max_s |k_sj|."""
    _, ctx = _call(impl, case)
    k = np.where(case.mask[:, :, None], case.keys.astype(np.float64), np.nan)
    lo, hi = np.nanmin(k, axis=1), np.nanmax(k, axis=1)
    # ctx = sum_s a_s k_s with a_s >= 0 summing to 1 within 2 (n + 2) eps, accumulated with gamma_n.
    n = case.src_len[:, None]
    tol = ((sum_tolerance(n, case.dtype) + gamma(n, eps_of(case.dtype))) * np.nanmax(np.abs(k), axis=1)
           + underflow_slack(n, case.dtype))
    clipped = np.clip(ctx, lo, hi)
    return require_within(ctx, clipped, tol, "ctx vs the per-coordinate [min, max] of the valid keys")


def dominant_score_gives_one_hot_weights(impl, example) -> Measure:
    """e_{s*} - e_s >= log(4n / eps) + 1 for all s != s*: a = one-hot(s*) and ctx = k_{s*}, within O(n eps)."""
    case, star = example
    w, ctx = _call(impl, case)
    B, S, H = case.keys.shape
    one_hot = np.zeros((B, S))
    one_hot[np.arange(B), star] = 1.0
    eps, n = eps_of(case.dtype), case.src_len[:, None]
    # Every other weight is below eps / (4n) by construction: only rounding of a_{s*} ~ 1 remains.
    k = np.abs(case.keys.astype(np.float64))
    key = case.keys[np.arange(B), star].astype(np.float64)
    return (require_within(w, one_hot, (n + 2) * eps, "weights vs one-hot")
            | require_within(ctx, key, (2 * n + 3) * eps * k.max(axis=1) + underflow_slack(n, case.dtype),
                             "ctx vs the dominant key"))


def equal_scores_give_uniform_weights(impl, case: AttentionCase) -> Measure:
    """Identical valid keys, so equal scores: a_s = 1/n on the valid s and ctx = that key."""
    w, ctx = _call(impl, case)
    _, wb, cb = forward_bounds(case)
    n = case.src_len[:, None]
    uniform = np.where(case.mask, 1.0 / n, 0.0)
    return (require_within(w, uniform, wb, "weights vs 1/n")
            | require_within(ctx, case.keys[:, 0].astype(np.float64), cb, "ctx vs the common key"))


def zero_query_gives_uniform_weights(impl, case: AttentionCase) -> Measure:
    """h = 0 gives e_s = 0 (dot, scaled_dot, general): a_s = 1/n and ctx = the mean of the valid keys."""
    w, ctx = _call(impl, case)
    _, wb, cb = forward_bounds(case)
    n = case.src_len[:, None]
    uniform = np.where(case.mask, 1.0 / n, 0.0)
    mean = np.einsum("bs,bsh->bh", uniform, case.keys.astype(np.float64))
    return (require_within(w, uniform, wb, "weights vs 1/n for a zero query")
            | require_within(ctx, mean, cb, "ctx vs the mean of the valid keys"))


# -- strategies of the properties ------------------------------------------------------------

SMALL = dict(max_B=3, max_S=6, max_H=4)
ORDINARY_KINDS = ("random", "large", "ties", "near_ties", "single")


def _cases(scores=None, kinds=None, **sizes):
    """The property's strategy: attention_examples(impl, ...) with these scores and kinds."""
    def strategy(impl):
        return attention_examples(impl, scores, kinds=kinds or ORDINARY_KINDS + ("long",), **{**SMALL, **sizes})
    return strategy


def _with_permutations(impl):
    @st.composite
    def with_permutations(draw):
        case = draw(attention_examples(impl, kinds=ORDINARY_KINDS + ("long",), **SMALL))
        perms = [np.array(draw(st.permutations(range(int(n))))) for n in case.src_len]
        return case, perms
    return with_permutations()


def _with_shift(impl):
    @st.composite
    def with_shift(draw):
        case = draw(attention_examples(impl, LINEAR_SCORES, kinds=("random", "large", "ties", "single", "long"),
                                       **SMALL))
        B, H = case.query.shape
        d = draw(integer_arrays((B, H), -64, 64)) / 16  # grid: k + d exact
        assume(np.array_equal((case.keys + d[:, None, :]).astype(case.dtype) - d[:, None, :], case.keys))
        return case, d
    return with_shift()


@st.composite
def _dominant(draw, impl):
    """A case whose row b has a score e_{s*} above every other valid score by at least log(4n/eps) + 1."""
    case = draw(attention_examples(impl, kinds=("random", "ties", "single"), **SMALL))
    B, S, H = case.keys.shape
    eps = eps_of(case.dtype)
    star = np.array([draw(st.integers(0, int(n) - 1)) for n in case.src_len])
    q, k, W, v = parts64(case)
    gap = np.log(4 * case.src_len / eps) + 1
    if case.score == "concat":
        # e is linear in v_a: scale it so that the top score of every row leads by the gap.
        e = np.where(case.mask, scores64(case), -np.inf)
        star = e.argmax(axis=1)
        top2 = np.sort(e, axis=1)[:, -2:] if S > 1 else np.zeros((B, 2))
        lead = np.where(case.src_len > 1, top2[:, 1] - top2[:, 0], np.inf)
        assume(np.all(lead > 0))
        factor = float(np.max(np.where(case.src_len > 1, gap / lead, 1.0)))
        assume(factor * np.abs(np.where(case.mask, e, 0)).max() <= 1e4)
        case = case.replace(v_a=(v * factor * 1.01).astype(case.dtype))
    else:
        # Replace k_{s*} by c u with u = dh/dk of the score (h, or W_a^T h): e_{s*} = c |u|^2 (/ sqrt H).
        u = q if case.score != "general" else q @ W
        norm2 = np.sum(u * u, axis=1)
        assume(np.all(norm2 > 0))
        c_scale = math.sqrt(H) if case.score == "scaled_dot" else 1.0
        e = np.where(case.mask, scores64(case), -np.inf)
        keys = case.keys.copy()
        for b in range(B):
            others = np.delete(e[b], star[b])
            top = others.max() if np.isfinite(others).any() else 0.0
            c = (max(top, 0.0) + gap[b] + 1) * c_scale / norm2[b]
            keys[b, star[b]] = (c * u[b]).astype(case.dtype)
        case = case.replace(keys=keys)
    # Check the lead on the rounded inputs, net of the score rounding of both scores.
    e = np.where(case.mask, scores64(case), -np.inf)
    err = score_error_bound(case)
    for b in range(B):
        others = np.delete(e[b] - err[b], star[b])
        if others.size and np.isfinite(others).any():
            assume(e[b, star[b]] - err[b, star[b]] - np.max(others) >= gap[b])
    assume(np.abs(np.where(case.mask, e, 0)).max() <= 1e4)
    return case, star


@st.composite
def _identical_keys(draw, impl):
    case = draw(attention_examples(impl, kinds=("random", "large", "single", "long"), **SMALL))
    keys = np.repeat(case.keys[:, :1, :], case.keys.shape[1], axis=1)
    keys[~case.mask] = case.keys[~case.mask]  # masked keys stay arbitrary
    return case.replace(keys=keys)


def _zero_query(impl):
    return attention_examples(impl, LINEAR_SCORES, kinds=("random", "ties", "single", "long"), **SMALL).map(
        lambda c: c.replace(query=np.zeros_like(c.query)))


PROPERTIES = [
    Property("weights_are_nonnegative_and_sum_to_one", weights_are_nonnegative_and_sum_to_one, _cases(),
             examples=(WORKED_ONE_VALID, WORKED_TWO_VALID)),
    Property("masked_weights_are_exactly_zero", masked_weights_are_exactly_zero, _cases(),
             examples=(WORKED_ONE_VALID,)),
    Property("single_valid_position_gets_all_weight", single_valid_position_gets_all_weight,
             _cases(kinds=("single",)), examples=(WORKED_ONE_VALID,)),
    Property("attention_outputs_are_finite", attention_outputs_are_finite,
             _cases(kinds=("large", "long", "near_ties", "single")), examples=(WORKED_TWO_VALID,)),
    Property("weights_and_context_match_oracle", weights_and_context_match_oracle,
             _cases(kinds=ORDINARY_KINDS),
             examples=(WORKED_TWO_VALID, WORKED_ONE_VALID, SUBNORMAL_KEY) + WORKED_OTHER_SCORES),
    Property("weights_are_permutation_equivariant", weights_are_permutation_equivariant, _with_permutations,
             examples=((WORKED_TWO_VALID, [np.array([1, 0])]),)),
    Property("softmax_is_shift_invariant", softmax_is_shift_invariant, _with_shift,
             examples=((WORKED_TWO_VALID, np.array([[0.25, -1.0]])),)),
    Property("context_lies_in_convex_hull", context_lies_in_convex_hull, _cases(),
             examples=(WORKED_TWO_VALID,)),
    Property("dominant_score_gives_one_hot_weights", dominant_score_gives_one_hot_weights,
             lambda impl: _dominant(impl), examples=((WORKED_ONE_VALID, np.array([0])), DOMINANT_SCALED_DOT)),
    Property("equal_scores_give_uniform_weights", equal_scores_give_uniform_weights,
             lambda impl: _identical_keys(impl)),
    Property("zero_query_gives_uniform_weights", zero_query_gives_uniform_weights, _zero_query,
             examples=(WORKED_TWO_VALID.replace(query=np.zeros((1, 2))),)),
]

for _prop in PROPERTIES:
    register(_prop)
