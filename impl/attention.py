"""One attention step on its own: the public, validated entry point to the attention kernels."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..spec.config import SCORES
from ..spec.validate import as_float_array, check_attention_params, src_len_from_mask
from .kernels_attention import (CONCAT, GENERAL, MODES, attention_backward, attention_forward,
                                attention_keys_backward, project_keys)
from .model import _check_finite


def attention(score: str, query, keys, mask, W_a=None, v_a=None) -> tuple[np.ndarray, np.ndarray]:
    """Scores, masked softmax and context for a batch of queries (MODEL.md).

        e_s = score(h, k_s),   a = softmax(e) over the valid s,   ctx = sum_s a_s k_s

    Parameters
    ----------
    score : str
        ``dot``, ``scaled_dot``, ``general`` or ``concat``.
    query : float array [B, H]
    keys : float array [B, S, H], same dtype
    mask : bool array [B, S]
        A non-empty prefix per row (True for s < src_len[b]).
    W_a : [H, H] for ``general``, [H, 2H] for ``concat``;  v_a : [H] for ``concat``.

    Returns
    -------
    weights : [B, S], exactly 0 where ``mask`` is False;  ctx : [B, H]

    Examples
    --------
    >>> w, ctx = attention("dot", np.array([[0.7, 0.3]]), np.array([[[0.8, 0.2], [0.0, 0.0]]]),
    ...                    np.array([[True, False]]))
    >>> w.tolist(), ctx.tolist()
    ([[1.0, 0.0]], [[0.8, 0.2]])
    """
    k = _prepare(score, query, keys, mask, W_a, v_a)
    attention_forward(k.mode, k.query, k.keys, k.keys_proj, k.W_q, k.v_a, k.denom, np.arange(k.B), k.src_len,
                      k.q_proj, k.weights, k.ctx)
    _check_finite("attention", k.weights, k.ctx, culprit="inputs")
    return k.weights, k.ctx


class _Step(NamedTuple):
    """Validated inputs of one attention step, laid out as the kernels take them, and output buffers."""

    mode: int
    query: np.ndarray       # (B, H)
    keys: np.ndarray        # (B, S, H)
    keys_proj: np.ndarray   # (B, S, H) for general/concat, empty otherwise
    W_q: np.ndarray         # (H, H) concat's query half of W_a, empty otherwise
    W_k: np.ndarray         # (H, H) W_a (general) or its key half (concat), empty otherwise
    v_a: np.ndarray         # (H,) concat, empty otherwise
    denom: float            # sqrt(H) for scaled_dot, else 1
    src_len: np.ndarray     # (B,)
    q_proj: np.ndarray      # (B, H) buffer
    weights: np.ndarray     # (B, S) buffer
    ctx: np.ndarray         # (B, H) buffer

    @property
    def B(self) -> int:
        return self.query.shape[0]


def _prepare(score: str, query, keys, mask, W_a, v_a) -> _Step:
    """Validate the public arguments (clear errors naming them) and lay them out for the kernels."""
    if score not in SCORES:
        raise ValueError(f"score: expected one of {SCORES}, got {score!r}")
    query = as_float_array("query", query, 2)
    dt = query.dtype
    keys = as_float_array("keys", keys, 3, dt)
    B, H = query.shape
    if keys.shape[0] != B or keys.shape[2] != H:
        raise ValueError(f"keys: expected shape ({B}, S, {H}) to match query {query.shape}, got {keys.shape}")
    S = keys.shape[1]
    src_len = src_len_from_mask(mask, B, S)
    W_a, v_a = check_attention_params(score, H, W_a, v_a,
                                      lambda name, value, ndim: as_float_array(name, value, ndim, dt))
    empty = np.zeros((0, 0), dt)
    if score == "concat":
        W_q, W_k = np.ascontiguousarray(W_a[:, :H]), np.ascontiguousarray(W_a[:, H:])
    else:
        W_q, W_k = empty, (W_a if score == "general" else empty)
    v = v_a if score == "concat" else np.zeros(0, dt)
    denom = dt.type(math.sqrt(H) if score == "scaled_dot" else 1.0)
    _check_scores_fit(score, query, keys, W_a, v_a)
    mode = MODES[score]
    keys_proj = project_keys(mode, keys, W_k)
    return _Step(mode, query, keys, keys_proj, W_q, W_k, v, denom, src_len,
                 np.zeros((B, H), dt), np.zeros((B, S), dt), np.zeros((B, H), dt))


def _check_scores_fit(score: str, query, keys, W_a, v_a) -> None:
    """Refuse inputs whose scores (or concat's pre-activations) could overflow their dtype.

    An overflowed score is an infinity, and one of -inf takes its position's weight
    to 0 whatever the exact score was: a wrong result that no check of the
    outputs sees. Bounds, with m_x the largest |entry| of x and H terms per dot
    product: dot |q.k| <= H m_q m_k; general |q.(W_a k)| <= H^2 m_q m_W m_k;
    concat |W_a [q; k]| <= 2H m_W max(m_q, m_k) before the tanh, and H m_v after
    it. Each must stay below a quarter of the dtype's largest value (room for the
    rounding of the sums).
    """
    H = query.shape[1]
    m = {name: float(np.max(np.abs(a), initial=0.0)) for name, a in
         (("query", query), ("keys", keys), ("W_a", W_a), ("v_a", v_a)) if a is not None}
    if score in ("dot", "scaled_dot"):
        bound, names = H * m["query"] * m["keys"], "query, keys"
    elif score == "general":
        bound, names = H * H * m["query"] * m["W_a"] * m["keys"], "query, keys, W_a"
    else:
        bound, names = max(2 * H * m["W_a"] * max(m["query"], m["keys"]), H * m["v_a"]), "query, keys, W_a, v_a"
    limit = float(np.finfo(query.dtype).max) / 4
    if not bound <= limit:
        reach = f"{bound:.3g}" if math.isfinite(bound) else f"more than {4 * limit:.3g}"
        raise ValueError(f"{names}: too large for {query.dtype}: a {score} score could reach {reach}, "
                         f"above {limit:.3g}, and overflow to infinity")


def attention_vjp(score: str, query, keys, mask, g_ctx, W_a=None, v_a=None) -> dict[str, np.ndarray]:
    """Backward of ``attention`` for L = sum g_ctx * ctx: the gradients of the scores and of every input.

        g_s = k_s . g_ctx,   dL/de_s = a_s (g_s - sum_j a_j g_j)   (0 at masked s)

    and the chain rule through ``score`` for the query, keys and W_a, v_a; the
    same kernels as the model's backward pass (T = 1 step).

    Parameters
    ----------
    score, query, keys, mask, W_a, v_a : as for ``attention``
    g_ctx : float array [B, H], query's dtype

    Returns
    -------
    dict: ``"scores"`` [B, S], ``"query"`` [B, H], ``"keys"`` [B, S, H], and
    ``"W_a"`` (general, concat), ``"v_a"`` (concat) in their shapes.

    Examples
    --------
    >>> g = attention_vjp("dot", np.array([[0.7, 0.3]]), np.array([[[0.8, 0.2], [0.0, 0.0]]]),
    ...                   np.array([[True, True]]), np.array([[1.0, 0.0]]))
    >>> abs(float(g["scores"].sum())) < 1e-16   # sum_s a_s (g_s - <a, g>) = 0
    True
    """
    k = _prepare(score, query, keys, mask, W_a, v_a)
    dt = k.query.dtype
    B, S, H = k.keys.shape
    g_ctx = as_float_array("g_ctx", g_ctx, 2, dt)
    if g_ctx.shape != (B, H):
        raise ValueError(f"g_ctx: expected shape {(B, H)} (ctx's), got {g_ctx.shape}")
    rows = np.arange(B)
    attention_forward(k.mode, k.query, k.keys, k.keys_proj, k.W_q, k.v_a, k.denom, rows, k.src_len,
                      k.q_proj, k.weights, k.ctx)
    de, dquery, dq_proj = np.zeros((B, S), dt), np.zeros((B, H), dt), np.zeros((B, H), dt)
    dkeys_proj, dv_a = np.zeros((B, S, H), dt), np.zeros(k.v_a.shape[0], dt)
    attention_backward(k.mode, k.query, k.keys, k.keys_proj, k.W_q, k.v_a, k.denom, rows, k.src_len,
                       k.q_proj, k.weights, g_ctx, dquery, de, dq_proj, dkeys_proj, dv_a)
    # The key gradients are batched over decoder steps in the model: here one step, T = 1.
    dkeys, dW_k = attention_keys_backward(k.mode, k.weights.reshape(B, 1, S), de.reshape(B, 1, S),
                                          g_ctx.reshape(B, 1, H), k.query.reshape(B, 1, H), k.keys, k.W_k,
                                          k.denom, dkeys_proj)
    grads = {"scores": de, "query": dquery, "keys": dkeys}
    if k.mode == GENERAL:
        grads["W_a"] = dW_k
    elif k.mode == CONCAT:
        dW_q = dq_proj.T @ k.query                                    # z = W_q h + W_k k
        grads["W_a"] = np.concatenate([dW_q, dW_k], axis=1)           # W_a = [W_q | W_k]
        grads["v_a"] = dv_a
    _check_finite("attention_vjp", *grads.values(), culprit="inputs")
    return grads
