"""The equations of MODEL.md, written once for any scalar arithmetic.

Vectors are Python lists of scalars and matrices are lists of rows. The
scalars may be SymPy expressions (``SYMPY`` ops: the symbolic specification
differentiates and prints these very expressions) or the high-precision
autodiff values of the oracle (its own ops). Because both evaluate the same
functions, the derivation docs, the verified identities and the oracle cannot
describe different models.

Softmaxes here are the plain mathematical definition ``exp(e_s) / sum exp``;
the max-subtraction of MODEL.md is a floating-point device that changes no
value, and the oracle's mpmath numbers have an unbounded exponent, so it is
not needed at high precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import sympy as sp


@dataclass(frozen=True)
class Ops:
    """The transcendental functions a scalar type provides."""

    exp: Callable
    log: Callable
    tanh: Callable
    sqrt: Callable

    def sigmoid(self, x):
        return 1 / (1 + self.exp(-x))


SYMPY = Ops(exp=sp.exp, log=sp.log, tanh=sp.tanh, sqrt=sp.sqrt)


# -- linear algebra on lists ---------------------------------------------------

def vdot(u, v):
    """u . v"""
    if len(u) != len(v):
        raise ValueError(f"u, v: lengths differ ({len(u)} and {len(v)})")
    total = 0
    for ui, vi in zip(u, v):
        total = total + ui * vi
    return total


def matvec(W, x):
    """W x, for W a list of rows."""
    return [vdot(row, x) for row in W]


def vadd(*vectors):
    return [sum(parts[1:], parts[0]) for parts in zip(*vectors)]


# -- attention scores ----------------------------------------------------------

def score(ops: Ops, name: str, h, k, W_a=None, v_a=None):
    """score(h, k) of MODEL.md for query ``h[H]`` and key ``k[H]``.

    dot: h . k;  scaled_dot: h . k / sqrt(H);  general: h^T W_a k;
    concat: v_a^T tanh(W_a [h; k]).

    >>> from sympy import Rational as R
    >>> score(SYMPY, "dot", [R(7, 10), R(3, 10)], [R(8, 10), R(2, 10)])
    31/50
    """
    if name == "dot":
        return vdot(h, k)
    if name == "scaled_dot":
        return vdot(h, k) / ops.sqrt(len(h))
    if name == "general":
        return vdot(h, matvec(W_a, k))
    if name == "concat":
        return vdot(v_a, [ops.tanh(z) for z in matvec(W_a, list(h) + list(k))])
    raise ValueError(f"score: unknown score function {name!r}")


def masked_softmax(ops: Ops, e, n_valid: int):
    """a_s = exp(e_s) / sum_{j <= n_valid} exp(e_j) for s <= n_valid, and exactly 0 after.

    Positions past ``n_valid`` (s > src_len) have score -inf in MODEL.md, whose
    exponential is exactly 0; they are never evaluated here.
    """
    if not 1 <= n_valid <= len(e):
        raise ValueError(f"n_valid: expected 1 <= n_valid <= {len(e)}, got {n_valid}")
    w = [ops.exp(x) for x in e[:n_valid]]
    Z = sum(w[1:], w[0])
    return [x / Z for x in w] + [0] * (len(e) - n_valid)


def context(a, keys):
    """ctx = sum_s a_s h^enc_s, for keys a list of S vectors."""
    H = len(keys[0])
    return [vdot(a, [k[j] for k in keys]) for j in range(H)]


def attentional_state(ops: Ops, W_c, ctx, h):
    """h~ = tanh(W_c [ctx; h]), no bias."""
    return [ops.tanh(z) for z in matvec(W_c, list(ctx) + list(h))]


# -- LSTM -------------------------------------------------------------------------

def lstm_gates(ops: Ops, x, h, W_ih, W_hh, b_ih, b_hh):
    """(i, f, g, o) = (sigma, sigma, tanh, sigma)(W_ih x + b_ih + W_hh h + b_hh), in PyTorch's order."""
    H = len(h)
    z = vadd(matvec(W_ih, x), b_ih, matvec(W_hh, h), b_hh)
    i = [ops.sigmoid(v) for v in z[0:H]]
    f = [ops.sigmoid(v) for v in z[H:2 * H]]
    g = [ops.tanh(v) for v in z[2 * H:3 * H]]
    o = [ops.sigmoid(v) for v in z[3 * H:4 * H]]
    return i, f, g, o


def lstm_cell(ops: Ops, x, h, c, W_ih, W_hh, b_ih, b_hh):
    """One LSTM step: c' = f * c + i * g, h' = o * tanh(c'). Returns (h', c')."""
    i, f, g, o = lstm_gates(ops, x, h, W_ih, W_hh, b_ih, b_hh)
    c_new = [f_j * c_j + i_j * g_j for f_j, c_j, i_j, g_j in zip(f, c, i, g)]
    h_new = [o_j * ops.tanh(c_j) for o_j, c_j in zip(o, c_new)]
    return h_new, c_new


# -- generator and loss ---------------------------------------------------------

def generator(W_out, b_out, h_tilde):
    """logits = W_out h~ + b_out."""
    return vadd(matvec(W_out, h_tilde), b_out)


def log_softmax(ops: Ops, logits):
    """log softmax(logits)_v = logits_v - log sum_w exp(logits_w)."""
    w = [ops.exp(x) for x in logits]
    lse = ops.log(sum(w[1:], w[0]))
    return [x - lse for x in logits]


def token_loss(log_probs, y: int):
    """loss_t = -log softmax(logits_t)[y]."""
    return -log_probs[y]
