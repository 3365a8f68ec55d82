"""Whole-model kernels: embeddings, encoder stack, generator and loss, forward and backward.

``Weights`` carries the parameters in the layout the kernels want (layers
stacked, the two LSTM biases summed, layer 0 of the decoder split into its
embedding and input-feeding columns, W_a split into its query and key halves);
``model.py`` packs a MODEL.md parameter dict into it and unpacks the gradients.

What is batched into large matrix products (everything that does not depend on
the recurrence): embedding look-ups; each encoder layer's input projection over
all S steps; the embedding part of the decoder's layer-0 projection over all T
steps; the key projections of general/concat; the generator over all B*T rows;
and in backward every weight gradient (one GEMM over all steps) and the
gradient flowing back to the inputs of each layer.

The largest arrays of a step (the (B*T, V) logits, the (V, H) and (V, E)
gradients of the generator and the embeddings) are allocated by the caller with
NumPy and filled here. NumPy asks Linux for transparent huge pages on large
arrays and Numba's allocator does not: a fresh 32-64 MB array from inside a
kernel costs 8-16 thousand page faults on first touch (large step: 4x fewer
faults, 4-10% faster; docs/performance-history.md).
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from .kernels_attention import project_keys
from .kernels_decoder import decoder_backward, decoder_forward
from .kernels_lstm import input_projection, lstm_layer_backward, lstm_layer_forward, lstm_layer_grads
from .kernels_matmul import gemm, nt_backward, products, transposed
from .kernels_util import copy_, kernel, swap01
from .kernels_vocab import log_softmax_grad_rows, log_softmax_rows

Weights = namedtuple("Weights", [
    "mode",         # int, kernels_attention.MODES[score]
    "tiles",        # bool, products on tiles (decoding: kernels_matmul.use_tiles); the kernels take
                    # it as their own argument, kernels_matmul.products(tiles)
    "feeds",        # bool, input feeding
    "denom",        # scalar of the dtype: sqrt(H) for scaled_dot, else 1
    "emb_src",      # (V_src, E)
    "enc_W_ih0",    # (4H, E)
    "enc_W_ih_up",  # (L-1, 4H, H)
    "enc_W_hh",     # (L, 4H, H)
    "enc_b",        # (L, 4H) = bias_ih + bias_hh
    "emb_tgt",      # (V_tgt, E)
    "dec_W_emb",    # (4H, E): embedding columns of decoder weight_ih_l0
    "dec_W_feed",   # (4H, H) input-feeding columns of weight_ih_l0, (4H, 0) without
    "dec_W_ih_up",  # (L-1, 4H, H)
    "dec_W_hh",     # (L, 4H, H)
    "dec_b",        # (L, 4H)
    "att_W_q",      # (H, H) concat: W_a[:, :H]; else (0, 0)
    "att_W_k",      # (H, H) general: W_a; concat: W_a[:, H:]; else (0, 0)
    "att_v",        # (H,) concat: v_a; else (0,)
    "att_W_c",      # (H, 2H); (0, 0) for the baseline
    "W_out",        # (V_tgt, H)
    "b_out",        # (V_tgt,)
])


# -- embeddings ---------------------------------------------------------------------

@kernel
def embed_time_major(table, ids):
    """ids (B, S) -> table[ids] as (S, B, E)."""
    B, S = ids.shape
    out = np.empty((S, B, table.shape[1]), table.dtype)
    E = table.shape[1]
    for s in range(S):
        for b in range(B):
            for j in range(E):
                out[s, b, j] = table[ids[b, s], j]
    return out


@kernel
def embed_backward(d_out, ids, grad):
    """Scatter-add d_out (S, B, E) into the rows ids (B, S) of grad (V, E), in a fixed order; returns grad."""
    S, B, E = d_out.shape
    for s in range(S):
        for b in range(B):
            for j in range(E):
                grad[ids[b, s], j] += d_out[s, b, j]
    return grad


# -- generator and loss -------------------------------------------------------------

def generator_log_probs(h_tilde, W_out, b_out, log_probs):
    """log_probs (N, V) = log_softmax(h~ @ W_out^T + b_out) into the given array, one GEMM over all N rows."""
    gemm(h_tilde, W_out.T, log_probs)
    log_softmax_rows(log_probs, b_out)
    return log_probs


def generator_loss_backward(h_tilde, W_out, b_out, labels, pad, count, dlogits, dW_out):
    """The generator's forward and backward in one: the loss never needs all of log p.

    Returns picked (N,) = log p of each row's label (0 on PAD rows), and, with
    dlogits = (softmax - onehot(label)) / count on non-PAD rows and 0 on PAD rows,
    dW_out = dlogits^T @ h~ (written into the given (V, H) array), db_out, and
    dh~ = dlogits @ W_out (GEMMs over all N rows). The given (N, V) buffer
    ``dlogits`` holds the logits first and becomes dlogits in place (``kernels_vocab``).
    """
    N = h_tilde.shape[0]
    dt = h_tilde.dtype
    gemm(h_tilde, W_out.T, dlogits)                                   # logits for now
    picked = np.empty(N, dt)
    db_out = np.zeros(W_out.shape[0], dt)
    log_softmax_grad_rows(dlogits, b_out, labels, pad, count, picked, db_out)
    gemm(dlogits.T, h_tilde, dW_out)                                  # (V, H)
    dh_tilde = gemm(dlogits, W_out)                                   # (N, H)
    return picked, dW_out, db_out, dh_tilde


# -- encoder stack ------------------------------------------------------------------

def encoder_forward(w, src, src_len, caches=True):
    """Embed and run the L encoder layers (each over all S steps before the next).

    Returns x (S, B, E); per layer gates (L, S, B, 4H), c, h (L, S + 1, B, H),
    tanh_c (L, S, B, H); keys (B, S, H) = top-layer outputs; keys_proj.
    Without ``caches`` (decoding: no backward follows) gates and tanh_c hold one
    step, (L, 1, B, .), overwritten at every step (``lstm_layer_forward``).
    """
    B, S = src.shape
    L, H4, H = w.enc_W_hh.shape
    dt = w.emb_src.dtype
    x = embed_time_major(w.emb_src, src)                              # (S, B, E)
    steps = S if caches else 1
    gates = np.empty((L, steps, B, H4), dt)
    c = np.empty((L, S + 1, B, H), dt)
    tanh_c = np.empty((L, steps, B, H), dt)
    h = np.empty((L, S + 1, B, H), dt)
    for k in range(L):
        if k == 0:
            xw = input_projection(x, w.enc_W_ih0, w.enc_b[0])
        else:
            xw = input_projection(h[k - 1, 1:], w.enc_W_ih_up[k - 1], w.enc_b[k])
        lstm_layer_forward(products(w.tiles), xw, w.enc_W_hh[k], src_len, gates[k], c[k], tanh_c[k], h[k])
    keys = swap01(h[L - 1, 1:])                                       # (B, S, H)
    keys_proj = project_keys(w.mode, keys, w.att_W_k)
    return x, gates, c, tanh_c, h, keys, keys_proj


@kernel
def final_state(enc_c, enc_h):
    """The encoder's final (h, c) of every layer, (L, B, H) each: the decoder's initial state."""
    L, S1, B, H = enc_h.shape
    h0 = np.empty((L, B, H), enc_h.dtype)
    c0 = np.empty((L, B, H), enc_h.dtype)
    for k in range(L):
        copy_(h0[k], enc_h[k, S1 - 1])
        copy_(c0[k], enc_c[k, S1 - 1])
    return h0, c0


def encoder_backward(w, enc_W_hh_T, src, src_len, x, gates, c, tanh_c, h, dkeys, dh_final, dc_final):
    """Backward through the encoder stack, top layer first, into the source embeddings.
    enc_W_hh_T: see ``backward_transposes``."""
    L = w.enc_W_hh.shape[0]
    dW_hh = np.empty_like(w.enc_W_hh)
    dW_ih_up = np.empty_like(w.enc_W_ih_up)
    db = np.empty_like(w.enc_b)
    dh_out = swap01(dkeys)                                            # (S, B, H)
    for k in range(L - 1, -1, -1):
        dz = lstm_layer_backward(w.enc_W_hh[k], enc_W_hh_T[k], src_len, gates[k], c[k], tanh_c[k], dh_out,
                                 dh_final[k], dc_final[k])
        if k > 0:
            dh_out, dW_ih_up[k - 1], dW_hh[k], db[k] = lstm_layer_grads(h[k - 1, 1:], w.enc_W_ih_up[k - 1],
                                                                        h[k], dz)
        else:
            dx, dW_ih0, dW_hh[0], db[0] = lstm_layer_grads(x, w.enc_W_ih0, h[0], dz)
    demb_src = embed_backward(dx, src, np.zeros_like(w.emb_src))
    return demb_src, dW_ih0, dW_ih_up, dW_hh, db


# -- the whole model ----------------------------------------------------------------
# Plain Python on purpose, like the encoder above: these only chain the compiled
# pieces, once per step, and compiling them cost 7-8 s per dtype (Numba re-optimises
# every kernel they link, and their nested tuples of 15 arrays) to save some 50
# microseconds a call.

def encode(w, src, src_len, caches=True):
    """The encoder's caches ``enc`` (see ``encoder_forward``) and the decoder's initial
    (h0, c0) (L, B, H): what the teacher-forced pass and the decoders start from."""
    enc = encoder_forward(w, src, src_len, caches)
    h0, c0 = final_state(enc[2], enc[4])
    return enc, h0, c0


def model_forward(w, src, src_len, y_in):
    """Encoder and teacher-forced decoder, up to the generator's input.

    Returns (enc, y_emb, dec, h_tilde_bt), the caches backward needs, with
    h_tilde_bt (B*T, H) in batch-major row order: the generator's input.
    """
    B, T = y_in.shape
    enc, h0, c0 = encode(w, src, src_len)
    keys, keys_proj = enc[5], enc[6]
    y_emb = embed_time_major(w.emb_tgt, y_in)                         # (T, B, E)
    dec = decoder_forward(w, y_emb, h0, c0, keys, keys_proj, src_len)
    h_tilde = dec[7]
    H = h_tilde.shape[2]
    h_tilde_bt = swap01(h_tilde[1:]).reshape(B * T, H)           # (B*T, H)
    return enc, y_emb, dec, h_tilde_bt


def backward_transposes(w):
    """(enc_W_hh_T, dec_W_hh_T, dec_W_ih_up_T, dec_W_feed_T, att_W_c_T): C-ordered transposes
    of the recurrent weights, which the backward's step products multiply by where
    ``kernels_matmul.nt_backward`` (float32, wide layers); else empty (..., 0, 0)
    arrays, and the backward multiplies by the weights as they are (``times``).

    Not fields of ``Weights``: every kernel that takes ``Weights`` compiles its whole
    tuple, and five more arrays there cost seconds of compilation per dtype.
    """
    weights = (w.enc_W_hh, w.dec_W_hh, w.dec_W_ih_up, w.dec_W_feed, w.att_W_c)
    if nt_backward(w.emb_src.dtype, w.enc_W_hh.shape[2]):
        return tuple(transposed(W) for W in weights)
    return tuple(np.zeros(W.shape[:-2] + (0, 0), W.dtype) for W in weights)


def model_backward(w, src, src_len, y_in, enc, y_emb, dec, dh_tilde_bt, transposes=None):
    """All gradients below the generator, given dL/dh~ (B*T, H) from ``generator_loss_backward``.

    ``transposes``: ``backward_transposes(w)`` when not given.
    Returns the gradient tuple without the generator's (dW_out, db_out).
    """
    enc_W_hh_T, *dec_T = backward_transposes(w) if transposes is None else transposes
    B, T = y_in.shape
    x, e_gates, e_c, e_tanh_c, e_h, keys, keys_proj = enc
    gates, c, tanh_c, h, a, cat, q_proj, h_tilde = dec
    H = h_tilde.shape[2]
    dh_tilde = swap01(dh_tilde_bt.reshape(B, T, H))              # (T, B, H)
    (dy_emb, dW_emb, dW_feed, d_dec_W_ih_up, d_dec_W_hh, d_dec_b, dW_c, dW_q, dW_k, dv_a, dkeys,
     dh0, dc0) = decoder_backward(w, y_emb, keys, keys_proj, src_len, gates, c, tanh_c, h, a, cat, q_proj,
                                  h_tilde, dh_tilde, *dec_T)
    demb_tgt = embed_backward(dy_emb, y_in, np.zeros_like(w.emb_tgt))
    demb_src, d_enc_W_ih0, d_enc_W_ih_up, d_enc_W_hh, d_enc_b = encoder_backward(
        w, enc_W_hh_T, src, src_len, x, e_gates, e_c, e_tanh_c, e_h, dkeys, dh0, dc0)
    return (demb_src, d_enc_W_ih0, d_enc_W_ih_up, d_enc_W_hh, d_enc_b,
            demb_tgt, dW_emb, dW_feed, d_dec_W_ih_up, d_dec_W_hh, d_dec_b,
            dW_q, dW_k, dv_a, dW_c)
