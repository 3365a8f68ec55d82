"""Decoder kernels: one step (shared by training and decoding), the loop over T, and its backward.

MODEL.md, for t = 1..T:

    u_t        = [Emb_tgt(y_in_t); h~_{t-1}]   (input feeding; Emb_tgt(y_in_t) without)
    (h_t, c_t) = LSTM_dec(u_t, h_{t-1}, c_{t-1})      top-layer h_t is the query
    a_t, ctx_t = attention(h_t, keys)
    h~_t       = tanh(W_c [ctx_t; h_t])               (baseline "none": h~_t = h_t)

Layer 0's weight W_ih = [W_emb | W_feed] is split so that the embedding part of
every step is one GEMM before the loop: ``xw0 = Emb_tgt(y_in) @ W_emb^T + b``.
``w`` is the ``Weights`` tuple of ``kernels_model``. Storage is time-major:
gates (T, L, B, 4H); c, h (T + 1, L, B, H) and h_tilde (T + 1, B, H) whose index 0
is the initial state.
"""

from __future__ import annotations

import numpy as np

from .kernels_attention import CONCAT, NONE, attention_backward, attention_forward, attention_keys_backward
from .kernels_math import tanh_
from .kernels_lstm import input_projection, lstm_cell_backward, lstm_cell_forward
from .kernels_matmul import gemm, mm_nt, products, times
from .kernels_util import add_, add_bias_, column_sum, copy_, kernel, swap01, zero_


@kernel
def decoder_step(tiles, w, z0, h_tilde_prev, h_prev, c_prev, keys, keys_proj, src_row, src_len,
                 gates, c, tanh_c, h, a, cat, q_proj, h_tilde, tmp, ctx):
    """One decoder step for R rows: writes gates (L, R, 4H), c, tanh_c, h (L, R, H),
    a (R, S), cat = [ctx; h_top] (R, 2H), q_proj (R, H), h_tilde (R, H).

    z0 (R, 4H) is layer 0's whole pre-activation, bias included: the caller forms
    it (``layer0_preactivation`` in training, one product in decoding:
    ``kernels_decode.decode_step``), so that both compile the same specialisation.
    The layers above reuse it for their own pre-activations, with tmp (R, 4H) and
    ctx (R, H) as scratch: the callers make these once, not a new array per step.
    ``tiles`` (``kernels_matmul.ON_TILES`` or ``ON_BLAS``): where the products run.
    """
    L = w.dec_W_hh.shape[0]
    H = w.dec_W_hh.shape[2]
    R = h_tilde.shape[0]
    for k in range(L):
        if k > 0:
            mm_nt(tiles, h[k - 1], w.dec_W_ih_up[k - 1], z0)
            add_bias_(z0, w.dec_b[k])
            add_(z0, mm_nt(tiles, h_prev[k], w.dec_W_hh[k], tmp))
        lstm_cell_forward(z0, c_prev[k], gates[k], c[k], tanh_c[k], h[k])
    query = h[L - 1]                                                  # (R, H)
    if w.mode == NONE:
        copy_(h_tilde, query)
        zero_(a)
        return
    attention_forward(w.mode, query, keys, keys_proj, w.att_W_q, w.att_v, w.denom, src_row, src_len,
                      q_proj, a, ctx)
    for r in range(R):
        for j in range(H):
            cat[r, j] = ctx[r, j]
            cat[r, H + j] = query[r, j]
    mm_nt(tiles, cat, w.att_W_c, h_tilde)                             # W_c [ctx; h], no bias
    for r in range(R):
        for j in range(H):
            h_tilde[r, j] = tanh_(h_tilde[r, j])


@kernel
def layer0_preactivation(tiles, w, xw0, h_prev0, h_tilde_prev, z, tmp):
    """Layer 0's pre-activation z (R, 4H) from the embedding's projection xw0 (R, 4H), bias
    included: h_prev0 W_hh^T + xw0 (+ h~_prev W_feed^T with input feeding), in this order.
    tmp (R, 4H): scratch."""
    mm_nt(tiles, h_prev0, w.dec_W_hh[0], z)
    add_(z, xw0)
    if w.feeds:
        add_(z, mm_nt(tiles, h_tilde_prev, w.dec_W_feed, tmp))


def decoder_forward(w, y_emb, h0, c0, keys, keys_proj, src_len):
    """Teacher-forced decoder over all T steps. y_emb (T, B, E); h0, c0 (L, B, H).

    Returns gates, c, tanh_c, h, a, cat, q_proj, h_tilde (see the module docstring).
    Plain Python over two kernels, like ``decoder_backward``: a kernel that calls
    another is compiled with a copy of it, which cost seconds per dtype.
    """
    xw0 = input_projection(y_emb, w.dec_W_emb, w.dec_b[0])            # (T, B, 4H), one GEMM
    return decoder_loop(products(w.tiles), w, xw0, h0, c0, keys, keys_proj, src_len)


@kernel
def decoder_loop(tiles, w, xw0, h0, c0, keys, keys_proj, src_len):
    """The T steps of ``decoder_forward`` from the embedding projection xw0 (T, B, 4H)."""
    T, B, _ = xw0.shape
    L, _, H = h0.shape
    S = keys.shape[1]
    dt = xw0.dtype
    gates = np.empty((T, L, B, 4 * H), dt)
    c = np.empty((T + 1, L, B, H), dt)
    tanh_c = np.empty((T, L, B, H), dt)
    h = np.empty((T + 1, L, B, H), dt)
    a = np.zeros((T, B, S), dt)
    cat = np.zeros((T, B, 2 * H), dt)
    q_proj = np.zeros((T, B, H), dt)
    h_tilde = np.empty((T + 1, B, H), dt)
    for k in range(L):
        copy_(h[0, k], h0[k])
        copy_(c[0, k], c0[k])
    zero_(h_tilde[0])
    src_row = np.arange(B)
    z0 = np.empty((B, 4 * H), dt)                                     # a step's scratch, made once
    tmp = np.empty((B, 4 * H), dt)
    ctx = np.empty((B, H), dt)
    for t in range(T):
        layer0_preactivation(tiles, w, xw0[t], h[t, 0], h_tilde[t], z0, tmp)
        decoder_step(tiles, w, z0, h_tilde[t], h[t], c[t], keys, keys_proj, src_row, src_len,
                     gates[t], c[t + 1], tanh_c[t], h[t + 1], a[t], cat[t], q_proj[t], h_tilde[t + 1],
                     tmp, ctx)
    return gates, c, tanh_c, h, a, cat, q_proj, h_tilde


def decoder_backward(w, y_emb, keys, keys_proj, src_len, gates, c, tanh_c, h, a, cat, q_proj, h_tilde,
                     dh_tilde_out, W_hh_T, W_ih_up_T, W_feed_T, W_c_T):
    """Backpropagation through the T decoder steps.

    dh_tilde_out (T, B, H): dL/dh~_t from the generator. W_hh_T, W_ih_up_T, W_feed_T,
    W_c_T: the transposes the step products multiply by, or empty arrays
    (``kernels_model.backward_transposes``). Per step only the recurrent work runs
    (``decoder_backward_loop``); the weight gradients are one GEMM each over all T*B
    rows afterwards (``decoder_grads``, ``decoder_keys_grads``).
    Returns (dy_emb (T, B, E), dW_emb, dW_feed, dW_ih_up, dW_hh, db, dW_c, dW_q, dW_k,
    dv_a, dkeys (B, S, H), dh0, dc0 (L, B, H)).
    """
    dz, dpre, de, dctx, dq_proj, dkeys_proj, dv_a, dh0, dc0 = decoder_backward_loop(
        w, keys, keys_proj, src_len, gates, c, tanh_c, h, a, q_proj, h_tilde, dh_tilde_out,
        W_hh_T, W_ih_up_T, W_feed_T, W_c_T)
    dy_emb, dW_emb, dW_feed, dW_ih_up, dW_hh, db, dW_c, dW_q = decoder_grads(w, y_emb, h, cat, h_tilde, dz,
                                                                             dpre, dq_proj)
    dW_k, dkeys = decoder_keys_grads(w, keys, h, a, de, dctx, dkeys_proj)
    return dy_emb, dW_emb, dW_feed, dW_ih_up, dW_hh, db, dW_c, dW_q, dW_k, dv_a, dkeys, dh0, dc0


@kernel
def decoder_backward_loop(w, keys, keys_proj, src_len, gates, c, tanh_c, h, a, q_proj, h_tilde, dh_tilde_out,
                          W_hh_T, W_ih_up_T, W_feed_T, W_c_T):
    """The recurrent part of ``decoder_backward``, step T down to 1.

    Returns dz (L, T, B, 4H), dpre (T, B, H) = dL/d(W_c [ctx; h]), de (T, B, S),
    dctx, dq_proj (T, B, H), dkeys_proj (B, S, H), dv_a, and dh0, dc0 (L, B, H).
    """
    T, L, B, H4 = gates.shape
    H = H4 // 4
    S = keys.shape[1]
    dt = gates.dtype
    one = dt.type(1)
    mode = w.mode
    dz = np.empty((L, T, B, 4 * H), dt)                              # every step writes all of dz[:, t]
    dpre = np.zeros((T, B, H), dt)
    de = np.zeros((T, B, S), dt)
    dctx = np.zeros((T, B, H), dt)
    dq_proj = np.zeros((T, B, H), dt)
    dkeys_proj = np.zeros((B, S, H), dt)
    dv_a = np.zeros(w.att_v.shape[0], dt)
    dh = np.zeros((L, B, H), dt)                                      # dL/dh_t per layer
    dc = np.zeros((L, B, H), dt)
    dc_prev = np.empty((B, H), dt)
    dh_tilde_carry = np.empty((B, H), dt)                             # from u_{t+1} (input feeding)
    zero_(dh_tilde_carry)
    src_row = np.arange(B)
    for t in range(T - 1, -1, -1):
        dh_tilde = dh_tilde_out[t].copy()                             # (B, H)
        add_(dh_tilde, dh_tilde_carry)
        if mode == NONE:
            add_(dh[L - 1], dh_tilde)
        else:
            ht = h_tilde[t + 1]
            for b in range(B):
                for j in range(H):
                    dpre[t, b, j] = dh_tilde[b, j] * (one - ht[b, j] * ht[b, j])
            dcat = times(dpre[t], w.att_W_c, W_c_T)                  # (B, 2H)
            dquery = np.empty((B, H), dt)
            for b in range(B):
                for j in range(H):
                    dctx[t, b, j] = dcat[b, j]
                    dquery[b, j] = dcat[b, H + j]
            attention_backward(mode, h[t + 1, L - 1], keys, keys_proj, w.att_W_q, w.att_v, w.denom,
                               src_row, src_len, q_proj[t], a[t], dctx[t], dquery, de[t], dq_proj[t],
                               dkeys_proj, dv_a)
            add_(dh[L - 1], dquery)
        for k in range(L - 1, -1, -1):
            lstm_cell_backward(dh[k], dc[k], gates[t, k], c[t, k], tanh_c[t, k], dz[k, t], dc_prev)
            copy_(dc[k], dc_prev)
            if k > 0:
                add_(dh[k - 1], times(dz[k, t], w.dec_W_ih_up[k - 1], W_ih_up_T[k - 1]))
            copy_(dh[k], times(dz[k, t], w.dec_W_hh[k], W_hh_T[k]))
        if w.feeds:
            dh_tilde_carry = times(dz[0, t], w.dec_W_feed, W_feed_T)
    return dz, dpre, de, dctx, dq_proj, dkeys_proj, dv_a, dh, dc


def decoder_grads(w, y_emb, h, cat, h_tilde, dz, dpre, dq_proj):
    """The decoder's weight gradients from the loop's dz and dpre, one GEMM per matrix
    over all T*B rows: (dy_emb (T, B, E), dW_emb, dW_feed, dW_ih_up, dW_hh, db, dW_c, dW_q)."""
    L, T, B, H4 = dz.shape
    H = H4 // 4
    E = y_emb.shape[2]
    dt = y_emb.dtype
    dW_hh = np.empty((L, H4, H), dt)
    dW_ih_up = np.empty((max(L - 1, 0), H4, H), dt)
    db = np.empty((L, H4), dt)
    for k in range(L):
        dZk = dz[k].reshape(T * B, H4)
        gemm(dZk.T, h[0:T, k].reshape(T * B, H), dW_hh[k])          # NumPy copies h[:, k] if L > 1
        db[k] = column_sum(dZk)
        if k > 0:
            gemm(dZk.T, h[1:, k - 1].reshape(T * B, H), dW_ih_up[k - 1])
    dZ0 = dz[0].reshape(T * B, H4)
    dW_emb = gemm(dZ0.T, y_emb.reshape(T * B, E))
    if w.feeds:
        dW_feed = gemm(dZ0.T, h_tilde[0:T].reshape(T * B, H))
    else:
        dW_feed = np.zeros((H4, 0), dt)
    dy_emb = gemm(dZ0, w.dec_W_emb).reshape(T, B, E)
    if w.mode == NONE:
        dW_c = np.zeros((0, 0), dt)
    else:
        dW_c = gemm(dpre.reshape(T * B, H).T, cat.reshape(T * B, 2 * H))
    if w.mode == CONCAT:
        dW_q = gemm(dq_proj.reshape(T * B, H).T, h[1:, L - 1].reshape(T * B, H))
    else:
        dW_q = np.zeros((0, 0), dt)
    return dy_emb, dW_emb, dW_feed, dW_ih_up, dW_hh, db, dW_c, dW_q


def decoder_keys_grads(w, keys, h, a, de, dctx, dkeys_proj):
    """(dW_k, dkeys (B, S, H)): the gradients that flow into the encoder's outputs."""
    if w.mode == NONE:
        return np.zeros((0, 0), keys.dtype), np.zeros_like(keys)
    query = np.ascontiguousarray(h[1:, h.shape[1] - 1].swapaxes(0, 1))  # (B, T, H)
    dkeys, dW_k = attention_keys_backward(w.mode, swap01(a), swap01(de), swap01(dctx), query,
                                          keys, w.att_W_k, w.denom, dkeys_proj)
    return dW_k, dkeys
