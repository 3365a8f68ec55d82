"""The backward of one attention step, through ``Implementation.attention_vjp``.

For L = sum_j g_ctx_j ctx_j and g_s = k_s . g_ctx, the score gradient is

    dL/de_s = a_s (g_s - <a, g>),

and dL/d(query, keys, W_a, v_a) follow by the chain rule through the score.
The reference is reverse mode over spec.equations at 40 digits
(``oracle_attention_vjp``); the tolerances propagate the forward error bounds
of attention_bounds.py through the backward.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
from hypothesis import strategies as st

from ..autodiff import AUTODIFF, Var, value_of
from ..equations import context, masked_softmax
from ..equations import score as score_fn
from ..strategies import AttentionCase, attention_examples, integer_arrays
from .attention import ORDINARY_KINDS, SMALL, WORKED_ONE_VALID, WORKED_OTHER_SCORES, WORKED_TWO_VALID
from .attention_bounds import (ORACLE_DPS, concat_tanh, eps_of, gamma, parts64, require_within, scores64, softmax64,
                               underflow_slack, weight_error_bound)
from .base import Measure, Property, register, require

__all__ = ["oracle_attention_vjp"]


def _call_vjp(impl, case: AttentionCase, g_ctx: np.ndarray) -> dict:
    grads = impl.attention_vjp(case.score, case.query, case.keys, case.mask, g_ctx, W_a=case.W_a, v_a=case.v_a)
    require(isinstance(grads, dict) and "scores" in grads, "attention_vjp: expected a dict with key 'scores'")
    return {name: np.asarray(g) for name, g in grads.items()}


def score_gradient_sums_to_zero(impl, example) -> Measure:
    """sum_s dL/de_s = sum_s a_s (g_s - <a, g>) = 0 per row, within 4 (n + 2) eps sum_s a_s (|g_s| + |<a, g>|)."""
    case, g_ctx = example
    de = _call_vjp(impl, case, g_ctx)["scores"].astype(np.float64)
    a = softmax64(scores64(case), case.mask)
    g = np.einsum("bsh,bh->bs", case.keys.astype(np.float64), g_ctx.astype(np.float64))
    g_mean = np.sum(a * g, axis=1, keepdims=True)
    # The identity holds for whatever g and <a, g> the implementation rounds to, as long as it
    # uses them consistently: only sum_s a_s - 1 (2 (n + 2) eps) and the roundings of n products,
    # n sums and our float64 re-sum remain.
    n = case.src_len
    tol = (4 * (n + 2) * eps_of(case.dtype) * np.sum(a * (np.abs(g) + np.abs(g_mean)), axis=1)
           + underflow_slack(2 * n, case.dtype))
    require(bool(np.all(de[~case.mask] == 0)), "dL/de: nonzero gradient at a masked position")
    return require_within(de.sum(axis=1), np.zeros(len(n)), tol, "sum_s dL/de_s")


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


def _vjp_magnitudes(case: AttentionCase, a, de, g_ctx, u=None, du=0.0) -> dict:
    """The backward of attention on absolute values: |query|, |keys|, |W_a|, |v_a|, |g_ctx| and the given
    non-negative a, de [B, S] (concat: |u| + du and |1 - u^2| + 2 du + 2 eps). An upper bound of every
    sum of products the backward forms, term by term."""
    q, k, W, v = (None if x is None else np.abs(x) for x in parts64(case))
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
        eps = eps_of(case.dtype)
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
    eps = eps_of(case.dtype)
    e = scores64(case)
    a = softmax64(e, case.mask)
    rel = weight_error_bound(case, e)
    k, gc = case.keys.astype(np.float64), g_ctx.astype(np.float64)
    g = np.einsum("bsh,bh->bs", k, gc)
    dg = gamma(case.keys.shape[2], eps) * np.einsum("bsh,bh->bs", np.abs(k), np.abs(gc))   # rounding of g_s
    g_mean = np.sum(a * g, axis=1, keepdims=True)
    n = case.src_len[:, None]
    # de_s = a_s (g_s - gbar): a_s errs by rel_s, g_s by dg_s, gbar = sum_j a_j g_j by
    # sum_j a_j (|g_j| rel_j + dg_j) plus gamma_n of its sum; the subtraction and product add 2 eps.
    gbar_err = (np.sum(a * (np.abs(g) * rel + dg), axis=1, keepdims=True)
                + gamma(n, eps) * np.sum(a * np.abs(g), axis=1, keepdims=True))
    spread = np.abs(g) + np.abs(g_mean)
    de_tol = a * ((rel + 2 * eps) * spread + dg + gbar_err)
    de_tol = np.where(case.mask, de_tol, 0.0) + underflow_slack(n + case.keys.shape[2], case.dtype)
    half64 = np.finfo(np.float64).eps / 2  # the oracle's value rounded to float64
    measure = require_within(grads["scores"], truth["scores"], de_tol + half64 * np.abs(truth["scores"]),
                             "dL/de vs oracle")
    # The other gradients are sums of products of the inputs, a, de and g_ctx (concat: u, 1 - u^2).
    # Their error is at most the backward of the magnitudes with a, de (and u) inflated by their
    # bounds, minus the exact magnitudes, plus gamma_m of the inflated magnitudes for the
    # m <= S + 2H + 4 terms accumulated in any one entry.
    de_abs = np.abs(truth["scores"])
    u, du = concat_tanh(case) if case.score == "concat" else (None, 0.0)
    exact = _vjp_magnitudes(case, a, de_abs, g_ctx, u, 0.0 * du)
    inflated = _vjp_magnitudes(case, a * (1 + rel), de_abs + de_tol, g_ctx, u, du)
    m = case.keys.shape[1] + 2 * case.keys.shape[2] + 4
    for name in ("query", "keys", "W_a", "v_a"):
        if name in grads and name in truth:
            bound = (inflated[name] - exact[name]) + gamma(m, eps) * inflated[name] + underflow_slack(m, case.dtype)
            measure |= require_within(grads[name], truth[name], bound + half64 * np.abs(truth[name]),
                                      f"dL/d{name} vs oracle")
    return measure


# -- strategies of the properties ------------------------------------------------------------

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
    Property("score_gradient_sums_to_zero", score_gradient_sums_to_zero,
             _with_cotangent(kinds=ORDINARY_KINDS + ("long",)), needs=("attention_vjp",),
             examples=(_example_g(WORKED_TWO_VALID),)),
    Property("attention_vjp_matches_oracle", attention_vjp_matches_oracle, _with_cotangent(),
             needs=("attention_vjp",),
             examples=tuple(_example_g(c) for c in (WORKED_TWO_VALID, WORKED_ONE_VALID) + WORKED_OTHER_SCORES)),
]

for _prop in PROPERTIES:
    register(_prop)
