"""Global attention kernels (MODEL.md), each forward beside its backward.

    e_{t,s} = score(h_t, k_s)    for s <= src_len, -inf (weight exactly 0) after
    a_t     = softmax_s(e_t)     (max subtracted: no overflow for |e| ~ 1e4 or more)
    ctx_t   = sum_s a_{t,s} k_s

Scores, with ``keys_proj`` computed once per batch (one GEMM over all B*S keys):

    dot         h . k
    scaled_dot  h . k / sqrt(H)                   (denom = sqrt(H), dot: denom = 1)
    general     h^T W_a k = h . (W_a k)           keys_proj = keys @ W_a^T
    concat      v_a . tanh(W_q h + W_k k)         W_a = [W_q | W_k], keys_proj = keys @ W_k^T,
                                                  q_proj = h @ W_q^T per step

A query row r attends to the keys of source row ``src_row[r]`` (the identity in
training, r // K in beam search). Only the first src_len keys are read, so
extra PAD columns change nothing.
"""

from __future__ import annotations

import numpy as np

from .kernels_math import exp_, maximum_, tanh_
from .kernels_matmul import matmul, rows_dot
from .kernels_util import add_, copy_, kernel

NONE, DOT, SCALED_DOT, GENERAL, CONCAT = 0, 1, 2, 3, 4
MODES = {"none": NONE, "dot": DOT, "scaled_dot": SCALED_DOT, "general": GENERAL, "concat": CONCAT}


@kernel
def project_keys(mode, keys, W_k):
    """keys_proj (B, S, H) = keys @ W_k^T for general/concat (one GEMM); an empty array otherwise."""
    B, S, H = keys.shape
    if mode == GENERAL or mode == CONCAT:
        return matmul(keys.reshape(B * S, H), W_k.T).reshape(B, S, H)
    return np.empty((0, 0, 0), keys.dtype)


@kernel
def masked_softmax(scores, a):
    """a[:n] = softmax(scores) with the maximum subtracted (n = len(scores)); a[n:] = 0 exactly."""
    n = scores.shape[0]
    m = scores[0]
    for s in range(1, n):                  # as scores.max() (NaN included), without its library code
        m = maximum_(m, scores[s])
    for s in range(n):                     # apart from the sum: a loop with a reduction stays scalar
        a[s] = exp_(scores[s] - m)
    total = a.dtype.type(0)
    for s in range(n):
        total += a[s]
    for s in range(n):
        a[s] = a[s] / total
    for s in range(n, a.shape[0]):
        a[s] = 0.0


@kernel
def weighted_rows(weights, rows, n, out):
    """out (H,) = sum_{s < n} weights[s] rows[s] for rows (S, H), added in the order of s.

    The context vector and dL/dquery of one query row: in its own loop over H
    (vectorised), where NumPy's ``weights[:n] @ rows[:n]`` made a BLAS call and a new
    array per query row.
    """
    for j in range(out.shape[0]):
        out[j] = 0.0
    for s in range(n):
        w = weights[s]
        for j in range(out.shape[0]):
            out[j] += w * rows[s, j]


@kernel
def concat_tanh(q_proj_r, keys_proj_s, u):
    """u (H,) = tanh(q_proj_r + keys_proj_s): the concat score's hidden layer for one key,
    in a loop of its own, which LLVM vectorises (inside a reduction the tanh stayed scalar)."""
    for j in range(u.shape[0]):
        u[j] = tanh_(q_proj_r[j] + keys_proj_s[j])


@kernel
def attention_forward(mode, query, keys, keys_proj, W_q, v_a, denom, src_row, src_len, q_proj, a, ctx):
    """Scores, masked softmax and context for every query row.

    query (R, H); keys, keys_proj (B, S, H). Writes q_proj (R, H) (concat only),
    a (R, S) and ctx (R, H).
    """
    R, H = query.shape
    u = np.empty(H if mode == CONCAT else 0, query.dtype)
    score_row = np.empty(keys.shape[1], query.dtype)
    if mode == CONCAT:
        copy_(q_proj, matmul(query, W_q.T))                           # (R, H)
    for r in range(R):
        b = src_row[r]
        n = src_len[b]
        scores = score_row[:n]
        if mode == CONCAT:
            for s in range(n):
                concat_tanh(q_proj[r], keys_proj[b, s], u)
                acc = query.dtype.type(0)
                for j in range(H):
                    acc += v_a[j] * u[j]
                scores[s] = acc
        elif mode == GENERAL:
            rows_dot(keys_proj[b], n, query, r, scores)
        else:
            rows_dot(keys[b], n, query, r, scores)
            for s in range(n):
                scores[s] = scores[s] / denom
        masked_softmax(scores, a[r])
        weighted_rows(a[r], keys[b], n, ctx[r])


@kernel
def attention_backward(mode, query, keys, keys_proj, W_q, v_a, denom, src_row, src_len, q_proj, a,
                       dctx, dquery, de, dq_proj, dkeys_proj, dv_a):
    """Backward of ``attention_forward`` for one step, except the key gradients that
    ``attention_keys_backward`` batches over all steps.

    Given dctx (R, H): writes de (R, S) = dL/de, adds dL/dquery to dquery (R, H);
    concat: writes dq_proj (R, H) and accumulates dkeys_proj (B, S, H) and dv_a (H,).

        dL/da_s = dctx . k_s
        de_s    = a_s (dL/da_s - sum_j a_j dL/da_j)
    """
    R, H = query.shape
    one = query.dtype.type(1)
    u = np.empty(H if mode == CONCAT else 0, query.dtype)
    da = np.empty(keys.shape[1], query.dtype)
    dq = np.empty(H, query.dtype)
    for r in range(R):
        b = src_row[r]
        n = src_len[b]
        rows_dot(keys[b], n, dctx, r, da)
        mean = query.dtype.type(0)
        for s in range(n):
            mean += a[r, s] * da[s]
        for s in range(n):
            de[r, s] = a[r, s] * (da[s] - mean)
        for s in range(n, de.shape[1]):
            de[r, s] = 0.0
        if mode == CONCAT:
            for j in range(H):
                dq_proj[r, j] = 0.0
            for s in range(n):
                concat_tanh(q_proj[r], keys_proj[b, s], u)
                for j in range(H):
                    dv_a[j] += de[r, s] * u[j]
                    g = de[r, s] * v_a[j] * (one - u[j] * u[j])
                    dq_proj[r, j] += g
                    dkeys_proj[b, s, j] += g
        else:
            weighted_rows(de[r], keys_proj[b] if mode == GENERAL else keys[b], n, dq)
            if mode != GENERAL:
                for j in range(H):
                    dq[j] = dq[j] / denom
            for j in range(H):
                dquery[r, j] += dq[j]
    if mode == CONCAT:
        add_(dquery, matmul(dq_proj, W_q))                            # (R, H)


@kernel
def attention_keys_backward(mode, a, de, dctx, query, keys, W_k, denom, dkeys_proj):
    """Gradient of the keys and of W_k, as GEMMs over all decoder steps (training: R = B).

    a, de (B, T, S); dctx, query (B, T, H); keys (B, S, H); dkeys_proj (B, S, H) holds
    concat's accumulated gradient and is overwritten for general. Returns dkeys
    (B, S, H) and dW_k (W_a for general, its key half for concat).
    """
    B, S, H = keys.shape
    dkeys = np.empty_like(keys)
    for b in range(B):
        copy_(dkeys[b], matmul(a[b].T, dctx[b]))                      # ctx = sum_s a_s k_s
    if mode == DOT or mode == SCALED_DOT:
        for b in range(B):
            dk = matmul(de[b].T, query[b])                            # e_s = h . k_s / denom
            for s in range(S):
                for j in range(H):
                    dkeys[b, s, j] += dk[s, j] / denom
    if mode == GENERAL:
        for b in range(B):
            copy_(dkeys_proj[b], matmul(de[b].T, query[b]))           # e_s = h . (W_a k_s)
    if mode == GENERAL or mode == CONCAT:
        dkp = dkeys_proj.reshape(B * S, H)
        dW_k = matmul(dkp.T, keys.reshape(B * S, H))                  # (H, H)
        add_(dkeys.reshape(B * S, H), matmul(dkp, W_k))
    else:
        dW_k = np.zeros((0, 0), keys.dtype)
    return dkeys, dW_k
