"""Backpropagation through time, composed from the local VJPs and checked by SymPy.

The identities of :mod:`attnspec.spec.identities` prove each piece's local
derivative. What they do not show is how the pieces are wired together over
time: which cotangents add up in ``dL/dh_t``, that ``dL/dc_t`` flows back
through ``f_{t+1}``, that input feeding routes ``dL/dh~_t`` into step t+1's
input weights, that every decoder step's attention adds to the keys, and
that the encoder's frozen positions hand their gradient to ``src_len``.

This module writes that wiring as a hand-coded backward pass over the
symbolic forward values (:func:`decoder_backward`, :func:`encoder_backward`,
using only the closed forms of the local pieces, never ``sympy.diff``) and
compares it with ``sympy.diff`` of the unrolled forward pass of
:mod:`attnspec.spec.equations`, with :func:`attnspec.spec.identities.decide`
as judge. Sizes are the smallest that still tell transposes and slices
apart: H = 2, E = 1, two decoder steps, three source positions with
``src_len = 2`` (one masked, frozen position).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import sympy as sp

from . import equations as eq
from .equations import SYMPY
from .derive_md import display
from .identities import decide
from .symbolic import gradient, matrix, to_matrix, vector

H, E, T, S, N_VALID = 1, 1, 2, 3, 2
H_ENC = 2  # the encoder's unrolled expressions stay small enough for H = 2 (cross terms in W_hh^T)


class BPTTCheck(NamedTuple):
    """One gradient of an unrolled recurrence: SymPy's derivative against the composed VJPs."""

    name: str
    tex: str          # the left-hand side, e.g. \frac{\partial L}{\partial h_0}
    derived: sp.ImmutableMatrix
    composed: sp.ImmutableMatrix


def _col(v) -> sp.Matrix:
    return to_matrix(list(v))


def _times(*vs: sp.Matrix) -> sp.Matrix:
    out = vs[0]
    for v in vs[1:]:
        out = out.multiply_elementwise(v)
    return out


def _one_minus_sq(v: sp.Matrix) -> sp.Matrix:
    return v.applyfunc(lambda x: 1 - x**2)


def _one_minus(v: sp.Matrix) -> sp.Matrix:
    return v.applyfunc(lambda x: 1 - x)


def _cell_backward(dh: sp.Matrix, dc_next: sp.Matrix, gates, c_prev: sp.Matrix, c_new: sp.Matrix):
    """Local VJP of one LSTM cell: (dL/dz [4H], dL/dc_prev) from dL/dh' (all paths) and dL/dc' (later steps).

    dL/dc' = dc_next + dh * o * (1 - tanh(c')^2);  dz by sigma' = s(1 - s), tanh' = 1 - tanh^2.
    """
    i, f, g, o = (_col(x) for x in gates)
    tanh_c = c_new.applyfunc(SYMPY.tanh)
    dc = dc_next + _times(dh, o, _one_minus_sq(tanh_c))
    dz = sp.Matrix.vstack(
        _times(dc, g, i, _one_minus(i)),
        _times(dc, c_prev, f, _one_minus(f)),
        _times(dc, i, _one_minus_sq(g)),
        _times(dh, tanh_c, o, _one_minus(o)),
    )
    return dz, _times(dc, f)


# -- decoder recurrence: two steps with input feeding, the context as a given input --------


@functools.cache
def decoder_checks() -> tuple[BPTTCheck, ...]:
    """L = sum_t <g_t, h~_t> over T decoder steps, h~_t = tanh(W_c [ctx_t; h_t]); ctx_t free.

    ``g_t`` stands for the cotangent the generator sends back,
    W_out^T (p_t - onehot(y_t)) m_t / sum m (proved in the generator part).
    The context is a free input here: its own dependence on h_t and on the
    keys is :func:`attention_checks`' job (unrolled together, the expressions
    grow past what SymPy expands in minutes). Its gradient dL/dctx_t is what
    this step hands to the attention.
    """
    h0, c0 = vector("h_0", H), vector("c_0", H)
    xs = [vector(f"x_{t + 1}", E) for t in range(T)]
    ctxs = [vector(rf"\operatorname{{ctx}}_{t + 1}", H) for t in range(T)]
    W_ih, W_hh = matrix("W_ih", 4 * H, E + H), matrix("W_hh", 4 * H, H)
    b_ih, b_hh = vector("b_ih", 4 * H), vector("b_hh", 4 * H)
    W_c = matrix("W_c", H, 2 * H)
    gs = [vector(rf"\bar{{g}}_{t + 1}", H) for t in range(T)]

    # Forward, as spec/oracle.py's _decode_row composes it.
    steps, h, c, h_tilde, L = [], h0, c0, [0] * H, 0
    for t in range(T):
        u = list(xs[t]) + list(h_tilde)           # [Emb(y_t); h~_{t-1}], h~_0 = 0
        gates = eq.lstm_gates(SYMPY, u, h, W_ih, W_hh, b_ih, b_hh)
        h_new, c_new = eq.lstm_cell(SYMPY, u, h, c, W_ih, W_hh, b_ih, b_hh)
        h_tilde = eq.attentional_state(SYMPY, W_c, ctxs[t], h_new)
        steps.append(dict(u=u, h_prev=h, c_prev=c, gates=gates, h=h_new, c=c_new, ht=h_tilde))
        L = L + eq.vdot(gs[t], h_tilde)
        h, c = h_new, c_new

    # Backward by hand, t = T .. 1.
    Wc, Wih, Whh = (to_matrix(m) for m in (W_c, W_ih, W_hh))
    dWc, dWih, dWhh = sp.zeros(H, 2 * H), sp.zeros(4 * H, E + H), sp.zeros(4 * H, H)
    db = sp.zeros(4 * H, 1)
    dxs, dctxs = [None] * T, [None] * T
    dz_next, dc_next = None, sp.zeros(H, 1)
    for t in reversed(range(T)):
        st = steps[t]
        dht = _col(gs[t])                         # from the generator at t
        dh = sp.zeros(H, 1)
        if dz_next is not None:
            dht += Wih[:, E:].T * dz_next         # input feeding: h~_t is the tail of u_{t+1}
            dh += Whh.T * dz_next                 # recurrence: h_t is step t+1's state
        r = _times(dht, _one_minus_sq(_col(st["ht"])))  # dL/d(W_c [ctx; h])
        dWc += r * _col(list(ctxs[t]) + st["h"]).T
        dctxs[t] = Wc[:, :H].T * r
        dh += Wc[:, H:].T * r                     # h_t as the second half of [ctx; h]
        dz, dc_next = _cell_backward(dh, dc_next, st["gates"], _col(st["c_prev"]), _col(st["c"]))
        dWih += dz * _col(st["u"]).T
        dWhh += dz * _col(st["h_prev"]).T
        db += dz
        dxs[t] = Wih[:, :E].T * dz
        dz_next = dz
    dh0, dc0 = Whh.T * dz_next, dc_next

    pairs = [
        ("dL/dh_0", r"\frac{\partial L}{\partial h_0}", h0, dh0),
        ("dL/dc_0", r"\frac{\partial L}{\partial c_0}", c0, dc0),
        ("dL/dW_c", r"\frac{\partial L}{\partial W_c}", W_c, dWc),
        ("dL/dW_ih", r"\frac{\partial L}{\partial W_{ih}}", W_ih, dWih),
        ("dL/dW_hh", r"\frac{\partial L}{\partial W_{hh}}", W_hh, dWhh),
        ("dL/db_ih", r"\frac{\partial L}{\partial b_{ih}}", b_ih, db),
    ]
    for t in range(T):
        pairs += [(f"dL/dx_{t + 1}", rf"\frac{{\partial L}}{{\partial x_{t + 1}}}", xs[t], dxs[t]),
                  (f"dL/dctx_{t + 1}", rf"\frac{{\partial L}}{{\partial \operatorname{{ctx}}_{t + 1}}}",
                   ctxs[t], dctxs[t])]
    return _checks("decoder", L, pairs)


# -- attention over time: every step's attention sends gradient to the keys --------------


@functools.cache
def attention_checks() -> tuple[BPTTCheck, ...]:
    """L = sum_t <g_t, h~_t>, h~_t = tanh(W_c [ctx(q_t, K); q_t]), T queries on shared keys.

    The queries q_t are the decoder's h_t (free here; the recurrence is
    :func:`decoder_checks`' job). Dot score, S = 3 keys of which N_VALID = 2
    are live, so the masked key's zero gradient is part of the claim.
    """
    K = matrix("k", S, H)                         # keys h^enc_s as rows  (S, H)
    qs = [vector(f"h_{t + 1}", H) for t in range(T)]
    W_c = matrix("W_c", H, 2 * H)
    gs = [vector(rf"\bar{{g}}_{t + 1}", H) for t in range(T)]
    Km, Wc = to_matrix(K), to_matrix(W_c)
    L, dK, dWc, dqs = 0, sp.zeros(S, H), sp.zeros(H, 2 * H), []
    for t in range(T):
        a = eq.masked_softmax(SYMPY, [eq.score(SYMPY, "dot", qs[t], k) for k in K], N_VALID)
        ctx = eq.context(a, K)
        h_tilde = eq.attentional_state(SYMPY, W_c, ctx, qs[t])
        L = L + eq.vdot(gs[t], h_tilde)
        # Backward of step t alone; the keys' gradient adds up over t.
        r = _times(_col(gs[t]), _one_minus_sq(_col(h_tilde)))
        dWc += r * _col(ctx + qs[t]).T
        dctx = Wc[:, :H].T * r
        a = _col(a)
        da = Km * dctx                            # dL/da_s = <k_s, dctx>
        de = _times(a, da - sp.ones(S, 1) * (a.T * da)[0, 0])  # softmax VJP, 0 where a_s = 0
        dK += a * dctx.T + de * _col(qs[t]).T     # through ctx, then through e_s = <h_t, k_s>
        dqs.append(Wc[:, H:].T * r + Km.T * de)   # [ctx; h]'s second half, then the scores
    pairs = [("dL/dkeys", r"\frac{\partial L}{\partial h^{enc}}", K, dK),
             ("dL/dW_c", r"\frac{\partial L}{\partial W_c}", W_c, dWc)]
    pairs += [(f"dL/dh_{t + 1}", rf"\frac{{\partial L}}{{\partial h_{t + 1}}}", qs[t], dqs[t]) for t in range(T)]
    return _checks("attention", L, pairs)


def _checks(where: str, L, pairs) -> tuple[BPTTCheck, ...]:
    return tuple(BPTTCheck(f"{where}: {n}", tex, sp.ImmutableMatrix(gradient(L, w)), sp.ImmutableMatrix(m))
                 for n, tex, w, m in pairs)


# -- encoder: src_len = 2 steps, a frozen third position, handing its state over --------


@functools.cache
def encoder_checks() -> tuple[BPTTCheck, ...]:
    """L = sum_s <kbar_s, h^enc_s> + <hbar_0, h_final> + <cbar_0, c_final>, with h^enc_3 = h^enc_2 frozen.

    ``kbar_s`` is what the decoder's attention sends to key s (summed over
    decoder steps) and (``hbar_0``, ``cbar_0``) the decoder's dL/dh_0, dL/dc_0.
    """
    H = H_ENC
    xs = [vector(f"x_{s + 1}", E) for s in range(S)]
    W_ih, W_hh = matrix("W_ih", 4 * H, E), matrix("W_hh", 4 * H, H)
    b_ih, b_hh = vector("b_ih", 4 * H), vector("b_hh", 4 * H)
    kbar = [vector(rf"\bar{{k}}_{s + 1}", H) for s in range(S)]
    hbar0, cbar0 = vector(r"\bar{h}_0", H), vector(r"\bar{c}_0", H)

    # Forward as spec/oracle.py's _encode: zero initial state, frozen past src_len.
    steps, h, c, h_enc = [], [0] * H, [0] * H, []
    for s in range(N_VALID):
        gates = eq.lstm_gates(SYMPY, xs[s], h, W_ih, W_hh, b_ih, b_hh)
        h_new, c_new = eq.lstm_cell(SYMPY, xs[s], h, c, W_ih, W_hh, b_ih, b_hh)
        steps.append(dict(x=xs[s], h_prev=h, c_prev=c, gates=gates, h=h_new, c=c_new))
        h_enc.append(h_new)
        h, c = h_new, c_new
    h_enc += [h_enc[-1]] * (S - N_VALID)
    L = sum((eq.vdot(kbar[s], h_enc[s]) for s in range(S)), 0) + eq.vdot(hbar0, h) + eq.vdot(cbar0, c)

    Wih, Whh = to_matrix(W_ih), to_matrix(W_hh)
    dWih, dWhh, db = sp.zeros(4 * H, E), sp.zeros(4 * H, H), sp.zeros(4 * H, 1)
    dxs = [sp.zeros(E, 1) for _ in range(S)]      # inputs past src_len are never read
    dz_next, dc_next = None, _col(cbar0)
    for s in reversed(range(N_VALID)):
        st = steps[s]
        dh = _col(kbar[s])
        if s == N_VALID - 1:
            dh += _col(hbar0)                     # the decoder's initial state is this state
            for frozen in range(N_VALID, S):
                dh += _col(kbar[frozen])          # frozen copies pass their gradient straight here
        if dz_next is not None:
            dh += Whh.T * dz_next
        dz, dc_next = _cell_backward(dh, dc_next, st["gates"], _col(st["c_prev"]), _col(st["c"]))
        dWih += dz * _col(st["x"]).T
        dWhh += dz * _col(st["h_prev"]).T
        db += dz
        dxs[s] = Wih.T * dz
        dz_next = dz

    pairs = [
        ("dL/dW_ih", r"\frac{\partial L}{\partial W_{ih}}", W_ih, dWih),
        ("dL/dW_hh", r"\frac{\partial L}{\partial W_{hh}}", W_hh, dWhh),
        ("dL/db_hh", r"\frac{\partial L}{\partial b_{hh}}", b_hh, db),
    ] + [(f"dL/dx_{s + 1}", rf"\frac{{\partial L}}{{\partial x_{s + 1}}}", xs[s], dxs[s]) for s in range(S)]
    return _checks("encoder", L, pairs)


def verdicts() -> list[tuple[BPTTCheck, bool, str]]:
    """Every check with ``decide``'s (holds, how)."""
    checks = decoder_checks() + attention_checks() + encoder_checks()
    return [(chk, *decide(chk.derived, chk.composed)) for chk in checks]


# -- the page -------------------------------------------------------------------------

_FORMULAS = [
    ("The generator hands each step's attentional state its cotangent (the loss is the mean over the "
     "$M = \\sum_{b,t} m_{b,t}$ non-PAD labels):",
     r"\bar g_t = \frac{m_t}{M}\, W_{out}^\top \big(p_t - \operatorname{onehot}(y_t)\big)"),
    ("With input feeding, $\\tilde h_t$ is also the tail of step $t+1$'s input $u_{t+1} = [x_{t+1}; \\tilde h_t]$, "
     "so it collects the input-weight path as well ($W_{ih}^{(\\tilde h)}$ = the last $H$ columns of "
     "layer 0's $W_{ih}$; the term is absent at $t = T$ and without input feeding):",
     r"\delta \tilde h_t = \bar g_t + W_{ih}^{(\tilde h)\top} \delta z_{t+1}"),
    ("Through the attentional state $\\tilde h_t = \\tanh(W_c [\\mathrm{ctx}_t; h_t])$:",
     r"r_t = \delta \tilde h_t \odot (1 - \tilde h_t^2), \qquad \delta \mathrm{ctx}_t = W_c^{(\mathrm{ctx})\top} r_t,"
     r" \qquad \frac{\partial L}{\partial W_c} = \sum_t r_t\, [\mathrm{ctx}_t; h_t]^\top"),
    ("Through the context and the masked softmax ($\\delta e_{t,s} = 0$ where $s > n$, because $a_{t,s} = 0$):",
     r"\delta a_{t,s} = \langle h^{enc}_s, \delta \mathrm{ctx}_t \rangle, \qquad"
     r" \delta e_t = a_t \odot \big(\delta a_t - \langle a_t, \delta a_t \rangle \mathbf{1}\big)"),
    ("The decoder state $h_t$ is used three times: in $[\\mathrm{ctx}_t; h_t]$, as the query of every score, and "
     "as step $t+1$'s recurrent state:",
     r"\delta h_t = W_c^{(h)\top} r_t + \sum_{s \le n} \delta e_{t,s} \frac{\partial e_{t,s}}{\partial h_t}"
     r" + W_{hh}^\top \delta z_{t+1}"),
    ("The cell state reaches the loss through $h_t$ and through the next step's forget gate:",
     r"\delta c_t = \delta h_t \odot o_t \odot (1 - \tanh^2 c_t) + \delta c_{t+1} \odot f_{t+1}"),
    ("The gate pre-activations, with the local derivatives of [the LSTM cell](lstm.md), and the weights, summed "
     "over time:",
     r"\delta z_t = \begin{bmatrix} \delta c_t \odot g_t \odot i_t \odot (1 - i_t) \\"
     r" \delta c_t \odot c_{t-1} \odot f_t \odot (1 - f_t) \\ \delta c_t \odot i_t \odot (1 - g_t^2) \\"
     r" \delta h_t \odot \tanh(c_t) \odot o_t \odot (1 - o_t) \end{bmatrix}, \qquad"
     r" \frac{\partial L}{\partial W_{ih}} = \sum_t \delta z_t u_t^\top, \quad"
     r" \frac{\partial L}{\partial W_{hh}} = \sum_t \delta z_t h_{t-1}^\top, \quad"
     r" \frac{\partial L}{\partial b} = \sum_t \delta z_t"),
    ("The decoder's initial state is the encoder's final state, so its gradient goes there:",
     r"\delta h_0 = W_{hh}^\top \delta z_1, \qquad \delta c_0 = \delta c_1 \odot f_1"),
    ("Every decoder step's attention sends gradient to every valid key (zero to masked ones):",
     r"\bar k_s = \frac{\partial L}{\partial h^{enc}_s} = \sum_t \Big( a_{t,s}\, \delta \mathrm{ctx}_t"
     r" + \delta e_{t,s} \frac{\partial e_{t,s}}{\partial h^{enc}_s} \Big)"),
    ("The encoder runs the same recurrence backwards from $s = n$ = src_len. Its state is frozen past $n$ "
     "(the keys $h^{enc}_{s > n}$ are copies of $h^{enc}_n$), so whatever reaches a frozen copy passes straight "
     "to position $n$, which also receives the decoder's initial-state gradient:",
     r"\delta h^{enc}_s = \bar k_s + [s = n] \Big(\delta h_0 + \sum_{s' > n} \bar k_{s'}\Big)"
     r" + W_{hh}^{enc\top} \delta z^{enc}_{s+1}, \qquad \delta c^{enc}_n = \delta c_0"
     r" + \delta h^{enc}_n \odot o_n \odot (1 - \tanh^2 c_n)"),
]

_STACKED = ("With $L > 1$ layers the same holds per layer, with one more term: layer $\\ell$'s $h_t$ is layer "
            "$\\ell+1$'s input at the same step, so $\\delta h^{(\\ell)}_t$ also gets "
            "$W_{ih}^{(\\ell+1)\\top} \\delta z^{(\\ell+1)}_t$; only the top layer's $h_t$ is the query, and each "
            "layer's initial state takes its gradient to the same layer of the encoder. The SymPy checks below "
            "use one layer; two layers are covered by the oracle's finite-difference tests.")

_CHECKS = {
    "decoder": ("The decoder recurrence with input feeding",
                f"T = {T} steps, H = {H}, E = {E}, $\\tilde h_0 = 0$, "
                "$L = \\sum_t \\langle \\bar g_t, \\tilde h_t \\rangle$ with "
                "$\\tilde h_t = \\tanh(W_c [\\mathrm{ctx}_t; h_t])$. The contexts are free inputs here (unrolled "
                "together with the attention, the expressions grow past what SymPy expands in minutes); their "
                "gradient $\\partial L / \\partial \\mathrm{ctx}_t$ is what the next check takes in."),
    "attention": ("Attention at every step on shared keys",
                  f"T = {T} queries $h_t$ on S = {S} keys of which n = {N_VALID} are valid, dot score, H = {H}, "
                  "$L = \\sum_t \\langle \\bar g_t, \\tanh(W_c [\\mathrm{ctx}(h_t, K); h_t]) \\rangle$: the keys "
                  "collect gradient from both steps, the masked key none, and $h_t$ gets both its paths."),
    "encoder": ("The encoder, its frozen positions and the hand-over",
                f"S = {S} positions, src_len = {N_VALID}, H = {H_ENC}, E = {E}, zero initial state, "
                "$L = \\sum_s \\langle \\bar k_s, h^{enc}_s \\rangle + \\langle \\bar h_0, h_n \\rangle + "
                "\\langle \\bar c_0, c_n \\rangle$ with $h^{enc}_3 = h^{enc}_2$ frozen."),
}


def page_body(results) -> str:
    """The BPTT page below its title, from ``verdicts()``."""
    blocks = ["Each step's local derivatives are proved on the other pages. This page composes them through "
              "the recurrence (one layer, input feeding on, src_len $= n$) and checks the composition against "
              "`sympy.diff` of the unrolled forward pass built from `spec/equations.py`.",
              "## The formulas"]
    for text, tex in _FORMULAS:
        blocks += [text, display(tex)]
    blocks += [_STACKED, "## Checked by SymPy",
               "A backward pass written by hand from the formulas above (`spec/derive_bptt.py`, no "
               "`sympy.diff`) against `sympy.diff` of the unrolled loss, judged by the same `decide` as "
               "the identities (symbolic proof only, never numerical evidence):"]
    for where, (title, setting) in _CHECKS.items():
        rows = ["| gradient | SymPy's verdict |", "| --- | --- |"]
        rows += [f"| ${chk.tex}$ ({chk.derived.shape[0]} × {chk.derived.shape[1]}) | "
                 f"{how if holds else 'NOT VERIFIED: ' + how} |"
                 for chk, holds, how in results if chk.name.startswith(where + ":")]
        blocks += [f"### {title}", setting, "\n".join(rows)]
    return "\n\n".join(blocks)
