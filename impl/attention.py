"""One attention step on its own: the public, validated entry point to the attention kernels."""

from __future__ import annotations

import math

import numpy as np

from ..spec.config import SCORES
from .kernels_attention import MODES, attention_forward, project_keys


def _float_array(name: str, x, ndim: int, dtype=None) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {a.shape}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name}: dtype {a.dtype} differs from query's {dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or infinity")
    return np.ascontiguousarray(a)


def src_len_from_mask(mask, B: int, S: int) -> np.ndarray:
    """src_len [B] from a prefix mask [B, S] (True at s < src_len[b]), or a clear ValueError."""
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"mask: expected a bool array, got dtype {mask.dtype}")
    if mask.shape != (B, S):
        raise ValueError(f"mask: expected shape {(B, S)}, got {mask.shape}")
    src_len = mask.sum(axis=1)
    prefix = np.arange(S)[None, :] < src_len[:, None]
    if np.any(src_len < 1) or np.any(mask != prefix):
        b = int(np.argmax((src_len < 1) | np.any(mask != prefix, axis=1)))
        raise ValueError(f"mask: row {b} is not a non-empty prefix (True for s < src_len, then False)")
    return src_len.astype(np.int64)


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
    if score not in SCORES:
        raise ValueError(f"score: expected one of {SCORES}, got {score!r}")
    query = _float_array("query", query, 2)
    dt = query.dtype
    keys = _float_array("keys", keys, 3, dt)
    B, H = query.shape
    if keys.shape[0] != B or keys.shape[2] != H:
        raise ValueError(f"keys: expected shape ({B}, S, {H}) to match query {query.shape}, got {keys.shape}")
    S = keys.shape[1]
    src_len = src_len_from_mask(mask, B, S)
    need = {"general": {"W_a": (H, H)}, "concat": {"W_a": (H, 2 * H), "v_a": (H,)}}.get(score, {})
    given = {"W_a": W_a, "v_a": v_a}
    for name, value in given.items():
        if name not in need and value is not None:
            raise ValueError(f"{name}: not a parameter of score {score!r}")
        if name in need:
            if value is None:
                raise ValueError(f"{name}: required by score {score!r}")
            given[name] = _float_array(name, value, len(need[name]), dt)
            if given[name].shape != need[name]:
                raise ValueError(f"{name}: expected shape {need[name]}, got {given[name].shape}")
    empty = np.zeros((0, 0), dt)
    if score == "concat":
        W_q, W_k = np.ascontiguousarray(given["W_a"][:, :H]), np.ascontiguousarray(given["W_a"][:, H:])
    else:
        W_q, W_k = empty, (given["W_a"] if score == "general" else empty)
    v = given["v_a"] if score == "concat" else np.zeros(0, dt)
    denom = dt.type(math.sqrt(H) if score == "scaled_dot" else 1.0)
    mode = MODES[score]
    keys_proj = project_keys(mode, keys, W_k)
    weights, ctx, q_proj = np.zeros((B, S), dt), np.zeros((B, H), dt), np.zeros((B, H), dt)
    attention_forward(mode, query, keys, keys_proj, W_q, v, denom, np.arange(B), src_len, q_proj, weights, ctx)
    return weights, ctx
