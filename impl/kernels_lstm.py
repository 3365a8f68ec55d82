"""LSTM kernels: one cell, and one encoder layer over time, each forward beside its backward.

MODEL.md, gate order i, f, g, o as in PyTorch:

    z  = W_ih x + b_ih + W_hh h + b_hh
    i, f, g, o = sigma(z_i), sigma(z_f), tanh(z_g), sigma(z_o)
    c' = f * c + i * g,   h' = o * tanh(c')

Arrays are time-major inside the kernels, ``(S, B, .)``, so that one time
step is a contiguous ``(B, .)`` block for the recurrent matrix product.
Kernels never check their input: the API in ``model.py`` does. Scalar
constants are taken in the arrays' dtype (``one``) so that the float32 path
stays float32, jitted or not; the transcendentals come from ``kernels_math``.
"""

from __future__ import annotations

import numpy as np

from .kernels_math import sigmoid_, tanh_
from .kernels_matmul import gemm, mm_nt, times
from .kernels_util import add_, add_bias_, column_sum, kernel, zero_


# -- one cell --------------------------------------------------------------------

@kernel
def lstm_cell_forward(z, c_prev, gates, c, tanh_c, h):
    """From pre-activations ``z (B, 4H)`` and ``c_prev (B, H)`` write gates (B, 4H), c, tanh(c), h (B, H).

    One simple pass per quantity rather than one loop doing everything: each
    pass touches two or three arrays, few enough for LLVM's overlap checks, so
    that in float32 every pass is vectorised (3x faster than the fused loop).
    """
    B, H = c_prev.shape
    for b in range(B):
        for j in range(2 * H):                                        # i, f
            gates[b, j] = sigmoid_(z[b, j])
        for j in range(2 * H, 3 * H):                                 # g
            gates[b, j] = tanh_(z[b, j])
        for j in range(3 * H, 4 * H):                                 # o
            gates[b, j] = sigmoid_(z[b, j])
    for b in range(B):
        for j in range(H):                                            # c' = f c + i g
            c[b, j] = gates[b, H + j] * c_prev[b, j] + gates[b, j] * gates[b, 2 * H + j]
    for b in range(B):
        for j in range(H):
            tanh_c[b, j] = tanh_(c[b, j])
    for b in range(B):
        for j in range(H):                                            # h' = o tanh(c')
            h[b, j] = gates[b, 3 * H + j] * tanh_c[b, j]


@kernel
def lstm_cell_backward(dh, dc, gates, c_prev, tanh_c, dz, dc_prev):
    """Given dL/dh' and dL/dc' (B, H) at the cell's outputs, write dL/dz (B, 4H) and dL/dc (B, H).

    dc_total = dc' + dh' * o * (1 - tanh(c')^2)
    dz_i = dc_total * g * i(1-i)       dz_f = dc_total * c * f(1-f)
    dz_g = dc_total * i * (1-g^2)      dz_o = dh' * tanh(c') * o(1-o)
    dc   = dc_total * f
    (dL/dh and dL/dx are dz @ W_hh and dz @ W_ih, done by the caller as GEMMs.)
    """
    B, H = c_prev.shape
    one = dz.dtype.type(1)
    for b in range(B):
        for j in range(H):
            i = gates[b, j]
            f = gates[b, H + j]
            g = gates[b, 2 * H + j]
            o = gates[b, 3 * H + j]
            t = tanh_c[b, j]
            dcell = dc[b, j] + dh[b, j] * o * (one - t * t)
            dz[b, j] = dcell * g * (i * (one - i))
            dz[b, H + j] = dcell * c_prev[b, j] * (f * (one - f))
            dz[b, 2 * H + j] = dcell * i * (one - g * g)
            dz[b, 3 * H + j] = dh[b, j] * t * (o * (one - o))
            dc_prev[b, j] = dcell * f


# -- one encoder layer over time (state frozen past src_len) ------------------------
# A layer is kernels chained in Python (``kernels_model``): a kernel that calls
# another is compiled with a copy of it and optimised again, so one kernel per
# layer cost seconds of compilation per dtype for nothing at run time. For the
# same reason the batched products (``input_projection``, ``lstm_layer_grads``)
# are plain Python around ``gemm``.

def input_projection(x, W_ih, bias):
    """xw (S, B, 4H) = x W_ih^T + bias for x (S, B, D_in): every step's input in one GEMM."""
    S, B, D_in = x.shape
    H4 = W_ih.shape[0]
    xw = gemm(x.reshape(S * B, D_in), W_ih.T)
    add_bias_(xw, bias)
    return xw.reshape(S, B, H4)


@kernel
def lstm_layer_forward(tiles, xw, W_hh, src_len, gates, c, tanh_c, h):
    """Run one layer over all S steps from the zero state; rows freeze once s >= src_len.

    xw (S, B, 4H) from ``input_projection``. Writes gates (S, B, 4H), tanh_c (S, B, H),
    and c, h (S + 1, B, H) whose index 0 is the zero initial state and index s the
    state after step s. A frozen row copies its previous state (gates and tanh_c 0).
    Given gates and tanh_c of one step, (1, B, .), every step overwrites them: the
    decoders need no cache for a backward pass.
    ``tiles`` (``kernels_matmul.ON_TILES`` or ``ON_BLAS``): where the recurrent product runs.
    """
    S, B, _ = xw.shape
    H = W_hh.shape[1]
    zero_(h[0])
    zero_(c[0])
    z = np.empty((B, 4 * H), xw.dtype)
    for s in range(S):
        g, tc = gates[s % gates.shape[0]], tanh_c[s % tanh_c.shape[0]]
        mm_nt(tiles, h[s], W_hh, z)                                   # (B, 4H)
        add_(z, xw[s])
        lstm_cell_forward(z, c[s], g, c[s + 1], tc, h[s + 1])
        for b in range(B):
            if s >= src_len[b]:                                       # frozen: copy the state
                for j in range(H):
                    h[s + 1, b, j] = h[s, b, j]
                    c[s + 1, b, j] = c[s, b, j]
                    tc[b, j] = 0.0
                for j in range(4 * H):
                    g[b, j] = 0.0


@kernel
def lstm_layer_backward(W_hh, W_hh_T, src_len, gates, c, tanh_c, dh_out, dh_last, dc_last):
    """Backpropagation through time of ``lstm_layer_forward``: the recurrence only.

    dh_out (S, B, H): dL/dh_s from outside the recurrence (attention or the layer above),
    index s - 1 for step s. dh_last, dc_last (B, H): dL/d(h_S, c_S) (the decoder's
    initial state). Returns dz (S, B, 4H) = dL/d(pre-activations), for ``lstm_layer_grads``.
    A frozen step passes its gradients straight to the previous state. W_hh_T: W_hh's
    C-ordered transpose, or (0, 0) (``kernels_matmul.times``).
    """
    S, B, H4 = gates.shape
    H = H4 // 4
    dz = np.empty((S, B, 4 * H), gates.dtype)
    dh = dh_last.copy()                                               # dL/dh_s, (B, H)
    dc = dc_last.copy()                                               # dL/dc_s, (B, H)
    dc_prev = np.empty_like(dc)
    for s in range(S - 1, -1, -1):
        add_(dh, dh_out[s])
        lstm_cell_backward(dh, dc, gates[s], c[s], tanh_c[s], dz[s], dc_prev)
        dh_prev = times(dz[s], W_hh, W_hh_T)                          # (B, H)
        for b in range(B):
            if s >= src_len[b]:                                       # frozen: identity
                for j in range(H):
                    dh_prev[b, j] = dh[b, j]
                    dc_prev[b, j] = dc[b, j]
                for j in range(4 * H):
                    dz[s, b, j] = 0.0
        dh = dh_prev
        dc, dc_prev = dc_prev, dc
    return dz


def lstm_layer_grads(x, W_ih, h, dz):
    """From dz (S, B, 4H): dx (S, B, D_in), dW_ih, dW_hh, dbias, one GEMM each over all steps."""
    S, B, D_in = x.shape
    H4 = dz.shape[2]
    dz2 = dz.reshape(S * B, H4)
    dW_ih = gemm(dz2.T, x.reshape(S * B, D_in))
    dW_hh = gemm(dz2.T, h[:S].reshape(S * B, H4 // 4))
    dx = gemm(dz2, W_ih).reshape(S, B, D_in)
    return dx, dW_ih, dW_hh, column_sum(dz2)
