"""Attention-level properties: one step of MODEL.md's global attention, through ``Implementation.attention``.

    e_s = score(h, k_s),   a = softmax(e) over s < src_len (a_s = 0 after),   ctx = sum_s a_s k_s

Tolerances are forward error bounds, not tuned constants. With eps the
machine epsilon of the implementation's dtype (twice the unit roundoff, a
factor 2 of slack against the textbook bounds) and gamma_n = n eps / (1 - n eps):

* a score is a sum of at most m products, so |delta e_s| <= gamma_m sum |terms|
  (``score_error_bound``; m = H for dot, 2H for general, concat adds tanh);
* a weight's relative error is |eps_s| + log sum_j a_j exp|eps_j| from the scores
  (eps_s = delta e_s plus the rounding of e_s - max), plus (n + 3) eps for exp,
  the sum of n terms and the division (``weight_error_bound``);
* ctx_j = sum_s a_s k_sj then errs by at most sum_s a_s |k_sj| (rel_s + gamma_n).

Where two outputs of the implementation are compared with each other (the
permutation and shift properties), each carries its own bound, so the
tolerance is the sum of the two.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from .. import oracle
from ..compare import max_errors
from ..autodiff import AUTODIFF, Var, value_of
from ..equations import context, masked_softmax
from ..equations import score as score_fn
from ..strategies import AttentionCase, attention_examples, integer_arrays
from .base import Measure, Property, PropertyFailure, register, require

__all__ = ["score_error_bound", "weight_error_bound", "oracle_attention_vjp"]

LINEAR_SCORES = ("dot", "scaled_dot", "general")
"""Scores linear in the key and in the query: shifting every key by d shifts a row's scores by a constant."""

ORACLE_DPS = 40  # 40 digits: the oracle's own error (~1e-40) is nothing next to float64's 1e-16


# -- the reference, its error bounds and comparisons -----------------------------------------

def _eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


def _gamma(n, eps: float) -> float:
    return n * eps / (1 - n * eps)


def _underflow(n, dtype) -> np.ndarray:
    """Absolute slack for underflow: each of ~n + 1 operations may lose up to the smallest normal
    number (gradual underflow loses far less; this also admits flush-to-zero arithmetic)."""
    return (np.asarray(n) + 1) * float(np.finfo(dtype).tiny)


def _parts64(case: AttentionCase):
    """The case's arrays in float64 (exact: every float32 is a float64)."""
    f = lambda x: None if x is None else np.asarray(x, dtype=np.float64)  # noqa: E731
    return f(case.query), f(case.keys), f(case.W_a), f(case.v_a)


def _scores64(case: AttentionCase) -> np.ndarray:
    """Scores [B, S] in float64: the reference for magnitudes and bounds (within 1e-16 relative)."""
    q, k, W, v = _parts64(case)
    H = q.shape[1]
    if case.score == "dot":
        return np.einsum("bh,bsh->bs", q, k)
    if case.score == "scaled_dot":
        return np.einsum("bh,bsh->bs", q, k) / math.sqrt(H)
    if case.score == "general":
        return np.einsum("bi,ij,bsj->bs", q, W, k)
    return np.tanh((q @ W[:, :H].T)[:, None, :] + k @ W[:, H:].T) @ v


def _softmax64(e: np.ndarray, mask: np.ndarray) -> np.ndarray:
    e = np.where(mask, e, -np.inf)
    w = np.exp(e - e.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def score_error_bound(case: AttentionCase) -> np.ndarray:
    """A bound [B, S] on |computed e_s - exact e_s| for any implementation in ``case.dtype``.

    dot: gamma_H sum_j |h_j k_sj|;  scaled_dot: the same over sqrt(H) with 2 more
    roundings (sqrt, division);  general: gamma_2H sum_ij |h_i W_ij k_sj| (either
    association); concat: z = W_q h + W_k k errs by gamma_2H |W||[h; k]|, tanh
    adds 2 eps |u| (libm tanh is within 2 ulp) and is 1-Lipschitz, v . u adds
    gamma_H sum |v_i u_i|.
    """
    eps = _eps(case.dtype)
    q, k, W, v = _parts64(case)
    B, S, H = k.shape
    aq, ak = np.abs(q), np.abs(k)
    if case.score in ("dot", "scaled_dot"):
        mag = np.einsum("bh,bsh->bs", aq, ak)
        if case.score == "dot":
            return _gamma(H, eps) * mag
        return (_gamma(H, eps) + 2 * eps) * mag / math.sqrt(H)
    if case.score == "general":
        return _gamma(2 * H, eps) * np.einsum("bi,ij,bsj->bs", aq, np.abs(W), ak)
    aW = np.abs(W)
    dz = _gamma(2 * H, eps) * ((aq @ aW[:, :H].T)[:, None, :] + ak @ aW[:, H:].T)   # [B, S, H]
    u = np.abs(np.tanh((q @ W[:, :H].T)[:, None, :] + k @ W[:, H:].T))
    du = dz + 2 * eps * u
    return _gamma(H, eps) * (u @ np.abs(v)) + du @ np.abs(v)


def weight_error_bound(case: AttentionCase, e: np.ndarray | None = None) -> np.ndarray:
    """A bound [B, S] on the relative error of each valid weight (0 at masked positions).

    With eps_s = delta e_s + eps |e_s - max_j e_j| (score error plus the rounding
    of the max-subtraction), the softmax of the perturbed scores differs from
    the exact one by the factor exp(eps_s - log sum_j a_j exp eps_j), whose log
    is at most |eps_s| + log sum_j a_j exp|eps_j| (Jensen); exp, the sum of n
    terms and the division add (n + 3) eps.
    """
    eps = _eps(case.dtype)
    mask = case.mask
    e = _scores64(case) if e is None else e
    a = _softmax64(e, mask)
    e_max = np.where(mask, e, -np.inf).max(axis=1, keepdims=True)
    err = np.where(mask, score_error_bound(case) + eps * np.abs(e - e_max), 0.0)
    spread = np.log(np.sum(a * np.exp(np.minimum(err, 700.0)), axis=1, keepdims=True))
    n = case.src_len[:, None]
    return np.where(mask, np.expm1(np.minimum(err + spread, 700.0)) + (n + 3) * eps, 0.0)


def _bounds(case: AttentionCase):
    """(reference weights a [B, S], weight abs bound [B, S], ctx abs bound [B, H]) in float64."""
    e = _scores64(case)
    a = _softmax64(e, case.mask)
    rel = weight_error_bound(case, e)
    k = np.abs(np.asarray(case.keys, np.float64))
    n = case.src_len[:, None]
    w_bound = a * rel + _underflow(n, case.dtype)
    ctx_bound = np.einsum("bs,bsh->bh", a * (rel + _gamma(n, _eps(case.dtype))), k) + _underflow(n, case.dtype)
    return a, w_bound, ctx_bound


def _require_within(actual, expected, bound, name: str) -> Measure:
    """Fail unless |actual - expected| <= bound elementwise; the message names the worst element."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise PropertyFailure(f"{name}: shape {actual.shape} != expected {expected.shape}")
    if not np.all(np.isfinite(actual)):
        i = tuple(int(j) for j in np.argwhere(~np.isfinite(actual))[0])
        raise PropertyFailure(f"{name}: non-finite value {float(actual[i])!r} at index {i}",
                              Measure(math.inf, math.inf))
    diff = np.abs(actual - expected)
    measure = Measure(*max_errors(actual, expected))
    excess = diff - bound
    if excess.size and excess.max() > 0:
        i = np.unravel_index(np.argmax(excess / np.maximum(bound, 1e-300)), excess.shape)
        raise PropertyFailure(
            f"{name}: worst element at index {tuple(int(j) for j in i)}: {float(actual[i])!r} vs expected "
            f"{float(expected[i])!r} (|diff| {diff[i]:.3g} > bound {np.broadcast_to(bound, diff.shape)[i]:.3g})",
            measure)
    return measure


def _call(impl, case: AttentionCase):
    weights, ctx = impl.attention(case.score, case.query, case.keys, case.mask, W_a=case.W_a, v_a=case.v_a)
    weights, ctx = np.asarray(weights), np.asarray(ctx)
    B, S, H = case.keys.shape
    require(weights.shape == (B, S), f"weights: shape {weights.shape}, expected {(B, S)}")
    require(ctx.shape == (B, H), f"ctx: shape {ctx.shape}, expected {(B, H)}")
    return weights, ctx


def _sum_tolerance(n, dtype) -> np.ndarray:
    """|sum_s a_s - 1| bound: the sum of n terms (gamma_{n-1}), the division (eps), a float64 re-sum;
    doubled for implementations that normalise as exp(e - logsumexp e) ((log n + 3) eps)."""
    return 2 * (np.asarray(n) + 2) * _eps(dtype)


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
    return _require_within(total, np.ones_like(total), _sum_tolerance(case.src_len, case.dtype), "sum_s a_s")


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
                                  f"(max |score| {np.abs(np.where(case.mask, _scores64(case), 0)).max():.3g})",
                                  Measure(math.inf, math.inf))
    return Measure()


def weights_and_context_match_oracle(impl, case: AttentionCase) -> Measure:
    """a and ctx equal spec.oracle.attention (40 digits) within the forward error bound of the dtype."""
    weights, ctx = _call(impl, case)
    _, w_bound, ctx_bound = _bounds(case)
    true_w, true_ctx = np.zeros(weights.shape), np.zeros(ctx.shape)
    for b in range(case.query.shape[0]):
        a, c = oracle.attention(case.score, case.query[b], case.keys[b], int(case.src_len[b]),
                                case.W_a, case.v_a, dps=ORACLE_DPS)
        true_w[b], true_ctx[b] = a.astype(np.float64), c.astype(np.float64)
    # + eps64/2 |x|: the oracle's value rounded to float64 for the comparison.
    half64 = np.finfo(np.float64).eps / 2
    return (_require_within(weights, true_w, w_bound + half64 * true_w, "weights vs oracle")
            | _require_within(ctx, true_ctx, ctx_bound + half64 * np.abs(true_ctx), "ctx vs oracle"))


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
    _, wb, cb = _bounds(case)
    _, wb2, cb2 = _bounds(permuted)
    rows = np.arange(case.keys.shape[0])[:, None]
    return (_require_within(w2[rows, index], w, wb + wb2[rows, index], "permuted weights a'[pi(s)] vs a[s]")
            | _require_within(ctx2, ctx, cb + cb2, "ctx after permuting the keys"))


def softmax_is_shift_invariant(impl, example) -> Measure:
    """keys + d shifts every score of a row by the same h . d (h^T W_a d): a unchanged, ctx' = ctx + d."""
    case, d = example
    shifted = case.replace(keys=(case.keys + d[:, None, :]).astype(case.dtype))
    w, ctx = _call(impl, case)
    w2, ctx2 = _call(impl, shifted)
    _, wb, cb = _bounds(case)
    _, wb2, cb2 = _bounds(shifted)
    expected_ctx = ctx.astype(np.float64) + d
    return (_require_within(w2, w, wb + wb2, "weights after shifting the keys")
            | _require_within(ctx2, expected_ctx, cb + cb2, "ctx after shifting the keys by d, vs ctx + d"))


def context_lies_in_convex_hull(impl, case: AttentionCase) -> Measure:
    """min_s k_sj <= ctx_j <= max_s k_sj over the valid s, within (3n + 4) eps max_s |k_sj|."""
    _, ctx = _call(impl, case)
    k = np.where(case.mask[:, :, None], case.keys.astype(np.float64), np.nan)
    lo, hi = np.nanmin(k, axis=1), np.nanmax(k, axis=1)
    # ctx = sum_s a_s k_s with a_s >= 0 summing to 1 within 2 (n + 2) eps, accumulated with gamma_n.
    n = case.src_len[:, None]
    tol = ((_sum_tolerance(n, case.dtype) + _gamma(n, _eps(case.dtype))) * np.nanmax(np.abs(k), axis=1)
           + _underflow(n, case.dtype))
    clipped = np.clip(ctx, lo, hi)
    return _require_within(ctx, clipped, tol, "ctx vs the per-coordinate [min, max] of the valid keys")


def dominant_score_gives_one_hot_weights(impl, example) -> Measure:
    """e_{s*} - e_s >= log(4n / eps) + 1 for all s != s*: a = one-hot(s*) and ctx = k_{s*}, within O(n eps)."""
    case, star = example
    w, ctx = _call(impl, case)
    B, S, H = case.keys.shape
    one_hot = np.zeros((B, S))
    one_hot[np.arange(B), star] = 1.0
    eps, n = _eps(case.dtype), case.src_len[:, None]
    # Every other weight is below eps / (4n) by construction: only rounding of a_{s*} ~ 1 remains.
    k = np.abs(case.keys.astype(np.float64))
    key = case.keys[np.arange(B), star].astype(np.float64)
    return (_require_within(w, one_hot, (n + 2) * eps, "weights vs one-hot")
            | _require_within(ctx, key, (2 * n + 3) * eps * k.max(axis=1) + _underflow(n, case.dtype),
                              "ctx vs the dominant key"))


def equal_scores_give_uniform_weights(impl, case: AttentionCase) -> Measure:
    """Identical valid keys, so equal scores: a_s = 1/n on the valid s and ctx = that key."""
    w, ctx = _call(impl, case)
    _, wb, cb = _bounds(case)
    n = case.src_len[:, None]
    uniform = np.where(case.mask, 1.0 / n, 0.0)
    return (_require_within(w, uniform, wb, "weights vs 1/n")
            | _require_within(ctx, case.keys[:, 0].astype(np.float64), cb, "ctx vs the common key"))


def zero_query_gives_uniform_weights(impl, case: AttentionCase) -> Measure:
    """h = 0 gives e_s = 0 (dot, scaled_dot, general): a_s = 1/n and ctx = the mean of the valid keys."""
    w, ctx = _call(impl, case)
    _, wb, cb = _bounds(case)
    n = case.src_len[:, None]
    uniform = np.where(case.mask, 1.0 / n, 0.0)
    mean = np.einsum("bs,bsh->bh", uniform, case.keys.astype(np.float64))
    return (_require_within(w, uniform, wb, "weights vs 1/n for a zero query")
            | _require_within(ctx, mean, cb, "ctx vs the mean of the valid keys"))


# -- the backward of attention -------------------------------------------------------------

def _call_vjp(impl, case: AttentionCase, g_ctx: np.ndarray) -> dict:
    grads = impl.attention_vjp(case.score, case.query, case.keys, case.mask, g_ctx, W_a=case.W_a, v_a=case.v_a)
    require(isinstance(grads, dict) and "scores" in grads, "attention_vjp: expected a dict with key 'scores'")
    return {name: np.asarray(g) for name, g in grads.items()}


def score_gradient_sums_to_zero(impl, example) -> Measure:
    """sum_s dL/de_s = sum_s a_s (g_s - <a, g>) = 0 per row, within 4 (n + 2) eps sum_s a_s (|g_s| + |<a, g>|)."""
    case, g_ctx = example
    de = _call_vjp(impl, case, g_ctx)["scores"].astype(np.float64)
    a = _softmax64(_scores64(case), case.mask)
    g = np.einsum("bsh,bh->bs", case.keys.astype(np.float64), g_ctx.astype(np.float64))
    g_mean = np.sum(a * g, axis=1, keepdims=True)
    # The identity holds for whatever g and <a, g> the implementation rounds to, as long as it
    # uses them consistently: only sum_s a_s - 1 (2 (n + 2) eps) and the roundings of n products,
    # n sums and our float64 re-sum remain.
    n = case.src_len
    tol = (4 * (n + 2) * _eps(case.dtype) * np.sum(a * (np.abs(g) + np.abs(g_mean)), axis=1)
           + _underflow(2 * n, case.dtype))
    require(bool(np.all(de[~case.mask] == 0)), "dL/de: nonzero gradient at a masked position")
    return _require_within(de.sum(axis=1), np.zeros(len(n)), tol, "sum_s dL/de_s")


def oracle_attention_vjp(case: AttentionCase, g_ctx, dps: int = ORACLE_DPS) -> dict:
    """dL/de, dL/dquery, dL/dkeys (and dL/dW_a, dL/dv_a) of L = sum g_ctx * ctx, by spec.autodiff at ``dps`` digits.

    Reverse mode over the equations of spec.equations (the oracle's own), so it
    shares no code with any implementation's hand-written backward.

    Examples
    --------
    >>> g = oracle_attention_vjp(WORKED_TWO_VALID, np.array([[1.0, 0.0]]))
    >>> a = 1 / (1 + mpmath.exp(-mpmath.mpf("0.62")))  # a_0 = sigmoid(e_0 - e_1), g = (0.8, 0)
    >>> bool(abs(g["scores"][0, 0] - float(a * (0.8 - a * 0.8))) < 1e-16)
    True
    """
    B, S, H = case.keys.shape
    out = {"scores": np.zeros((B, S)), "query": np.zeros((B, H)), "keys": np.zeros((B, S, H))}
    if case.W_a is not None:
        out["W_a"] = np.zeros(case.W_a.shape)
    if case.v_a is not None:
        out["v_a"] = np.zeros(case.v_a.shape)
    leaf = lambda x: Var(mpmath.mpf(float(x)))  # noqa: E731  (float32 and float64 convert exactly)
    with mpmath.workdps(dps):
        for b in range(B):
            q = [leaf(x) for x in case.query[b]]
            K = [[leaf(x) for x in row] for row in case.keys[b]]
            W = None if case.W_a is None else [[leaf(x) for x in row] for row in case.W_a]
            v = None if case.v_a is None else [leaf(x) for x in case.v_a]
            n = int(case.src_len[b])
            e = [score_fn(AUTODIFF, case.score, q, k, W, v) for k in K[:n]]
            a = masked_softmax(AUTODIFF, e + [0] * (S - n), n)
            ctx = context(a, K)
            loss = sum(c * float(g) for c, g in zip(ctx, g_ctx[b]))
            loss.backward()
            grad = lambda x: float(value_of(x.grad))  # noqa: E731
            out["scores"][b, :n] = [grad(x) for x in e]
            out["query"][b] = [grad(x) for x in q]
            out["keys"][b] = [[grad(x) for x in row] for row in K]
            if W is not None:
                out["W_a"] += [[grad(x) for x in row] for row in W]
            if v is not None:
                out["v_a"] += [grad(x) for x in v]
            for x in [*q, *(x for row in K for x in row), *(x for row in W or [] for x in row), *(v or [])]:
                x.grad = 0  # fresh gradients for the next row (the leaves are shared only within a row)
    return out


def _concat_u(case: AttentionCase):
    """concat's u_s = tanh(W_q h + W_k k_s) [B, S, H] in float64 and a bound on its rounding error."""
    eps = _eps(case.dtype)
    q, k, W, _ = _parts64(case)
    H = q.shape[1]
    u = np.tanh((q @ W[:, :H].T)[:, None, :] + k @ W[:, H:].T)
    aW = np.abs(W)
    dz = _gamma(2 * H, eps) * ((np.abs(q) @ aW[:, :H].T)[:, None, :] + np.abs(k) @ aW[:, H:].T)
    return u, dz + 2 * eps * np.abs(u)  # tanh is 1-Lipschitz and within 2 ulp


def _vjp_magnitudes(case: AttentionCase, a, de, g_ctx, u=None, du=0.0) -> dict:
    """The backward of attention on absolute values: |query|, |keys|, |W_a|, |v_a|, |g_ctx| and the given
    non-negative a, de [B, S] (concat: |u| + du and |1 - u^2| + 2 du + 2 eps). An upper bound of every
    sum of products the backward forms, term by term."""
    q, k, W, v = (None if x is None else np.abs(x) for x in _parts64(case))
    g = np.abs(g_ctx.astype(np.float64))
    H = q.shape[1]
    out = {}
    if case.score in ("dot", "scaled_dot"):
        c = 1.0 if case.score == "dot" else 1 / math.sqrt(H)
        out["query"] = c * np.einsum("bs,bsh->bh", de, k)
        out["keys"] = a[:, :, None] * g[:, None, :] + c * de[:, :, None] * q[:, None, :]
    elif case.score == "general":
        out["query"] = np.einsum("ij,bs,bsj->bi", W, de, k)
        out["keys"] = a[:, :, None] * g[:, None, :] + de[:, :, None] * (q @ W)[:, None, :]
        out["W_a"] = np.einsum("bs,bi,bsj->ij", de, q, k)
    else:
        eps = _eps(case.dtype)
        dtanh = np.abs(1 - u * u) + 2 * np.abs(u) * du + 2 * du * du + 2 * eps    # d tanh(z) = 1 - u^2
        dz = de[:, :, None] * v[None, None, :] * dtanh                              # [B, S, H]
        out["query"] = np.einsum("bsi,ij->bj", dz, W[:, :H])
        out["keys"] = a[:, :, None] * g[:, None, :] + dz @ W[:, H:]
        out["W_a"] = np.concatenate([np.einsum("bsi,bj->ij", dz, q), np.einsum("bsi,bsj->ij", dz, k)], axis=1)
        out["v_a"] = np.einsum("bs,bsi->i", de, np.abs(u) + du)
    return out


def attention_vjp_matches_oracle(impl, example) -> Measure:
    """dL/de = a * (g - <a, g>) (g_s = k_s . g_ctx) and dL/d(query, keys, W_a, v_a) equal the oracle's reverse mode."""
    case, g_ctx = example
    grads = _call_vjp(impl, case, g_ctx)
    truth = oracle_attention_vjp(case, g_ctx)
    eps = _eps(case.dtype)
    e = _scores64(case)
    a = _softmax64(e, case.mask)
    rel = weight_error_bound(case, e)
    k, gc = case.keys.astype(np.float64), g_ctx.astype(np.float64)
    g = np.einsum("bsh,bh->bs", k, gc)
    dg = _gamma(case.keys.shape[2], eps) * np.einsum("bsh,bh->bs", np.abs(k), np.abs(gc))   # rounding of g_s
    g_mean = np.sum(a * g, axis=1, keepdims=True)
    n = case.src_len[:, None]
    # de_s = a_s (g_s - gbar): a_s errs by rel_s, g_s by dg_s, gbar = sum_j a_j g_j by
    # sum_j a_j (|g_j| rel_j + dg_j) plus gamma_n of its sum; the subtraction and product add 2 eps.
    gbar_err = (np.sum(a * (np.abs(g) * rel + dg), axis=1, keepdims=True)
                + _gamma(n, eps) * np.sum(a * np.abs(g), axis=1, keepdims=True))
    spread = np.abs(g) + np.abs(g_mean)
    de_tol = a * ((rel + 2 * eps) * spread + dg + gbar_err)
    de_tol = np.where(case.mask, de_tol, 0.0) + _underflow(n + case.keys.shape[2], case.dtype)
    half64 = np.finfo(np.float64).eps / 2  # the oracle's value rounded to float64
    measure = _require_within(grads["scores"], truth["scores"], de_tol + half64 * np.abs(truth["scores"]),
                              "dL/de vs oracle")
    # The other gradients are sums of products of the inputs, a, de and g_ctx (concat: u, 1 - u^2).
    # Their error is at most the backward of the magnitudes with a, de (and u) inflated by their
    # bounds, minus the exact magnitudes, plus gamma_m of the inflated magnitudes for the
    # m <= S + 2H + 4 terms accumulated in any one entry.
    de_abs = np.abs(truth["scores"])
    u, du = _concat_u(case) if case.score == "concat" else (None, 0.0)
    exact = _vjp_magnitudes(case, a, de_abs, g_ctx, u, 0.0 * du)
    inflated = _vjp_magnitudes(case, a * (1 + rel), de_abs + de_tol, g_ctx, u, du)
    m = case.keys.shape[1] + 2 * case.keys.shape[2] + 4
    for name in ("query", "keys", "W_a", "v_a"):
        if name in grads and name in truth:
            bound = (inflated[name] - exact[name]) + _gamma(m, eps) * inflated[name] + _underflow(m, case.dtype)
            measure |= _require_within(grads[name], truth[name], bound + half64 * np.abs(truth[name]),
                                       f"dL/d{name} vs oracle")
    return measure


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
    eps = _eps(case.dtype)
    star = np.array([draw(st.integers(0, int(n) - 1)) for n in case.src_len])
    q, k, W, v = _parts64(case)
    gap = np.log(4 * case.src_len / eps) + 1
    if case.score == "concat":
        # e is linear in v_a: scale it so that the top score of every row leads by the gap.
        e = np.where(case.mask, _scores64(case), -np.inf)
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
        e = np.where(case.mask, _scores64(case), -np.inf)
        keys = case.keys.copy()
        for b in range(B):
            others = np.delete(e[b], star[b])
            top = others.max() if np.isfinite(others).any() else 0.0
            c = (max(top, 0.0) + gap[b] + 1) * c_scale / norm2[b]
            keys[b, star[b]] = (c * u[b]).astype(case.dtype)
        case = case.replace(keys=keys)
    # Check the lead on the rounded inputs, net of the score rounding of both scores.
    e = np.where(case.mask, _scores64(case), -np.inf)
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


def _with_cotangent(kinds=ORDINARY_KINDS, **sizes):
    def strategy(impl):
        @st.composite
        def with_cotangent(draw):
            case = draw(attention_examples(impl, kinds=kinds, **{**SMALL, **sizes}))
            g = draw(integer_arrays(case.query.shape, -256, 256)) / 64
            return case, g.astype(case.dtype)
        return with_cotangent()
    return strategy


def _example_g(case):
    return case, np.array([[1.0, -0.5]], dtype=case.dtype)


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
    Property("score_gradient_sums_to_zero", score_gradient_sums_to_zero,
             _with_cotangent(kinds=ORDINARY_KINDS + ("long",)), needs=("attention_vjp",),
             examples=(_example_g(WORKED_TWO_VALID),)),
    Property("attention_vjp_matches_oracle", attention_vjp_matches_oracle, _with_cotangent(),
             needs=("attention_vjp",),
             examples=tuple(_example_g(c) for c in (WORKED_TWO_VALID, WORKED_ONE_VALID) + WORKED_OTHER_SCORES)),
]

for _prop in PROPERTIES:
    register(_prop)
