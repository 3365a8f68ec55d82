"""The worked example of MODEL.md, extended to a whole attention step with the oracle's numbers.

The dot product of MODEL.md is evaluated on SymPy Rationals (so 0.62 is
printed as the exact 31/50); the scores of three keys are exact rationals
too. The weights, the context and the attentional state are transcendental,
so they come from :func:`attnspec.spec.oracle.attention` and
:func:`attnspec.spec.equations.attentional_state` at 40 digits and are
printed to six significant digits.
"""

from __future__ import annotations

import mpmath
import sympy as sp

from . import equations as eq
from .autodiff import MPMATH
from .derive_md import display, latex
from .equations import SYMPY
from .oracle import attention

DPS = 40
DIGITS = 6  # printed significant digits: enough to recompute by hand, short enough to read

QUERY = ("0.7", "0.3")                                   # h_t
KEYS = (("0.8", "0.2"), ("0.1", "0.9"), ("-0.5", "0.4"))  # h^enc_1 .. h^enc_3; key 1 is MODEL.md's
W_C = (("0.5", "-0.3", "0.2", "0.1"),
       ("0.1", "0.4", "-0.2", "0.3"))                    # [H, 2H], acting on [ctx; h]


def _exact(x: str) -> sp.Rational:
    return sp.Rational(x)


def _num(x) -> str:
    return mpmath.nstr(x, DIGITS)


def _vec(xs) -> str:
    """A column vector of numbers in LaTeX."""
    return r"\begin{bmatrix}" + r" \\ ".join(_num(x) for x in xs) + r"\end{bmatrix}"


def _step(src_len: int):
    """(weights, ctx, z, h~) of one dot-attention step at DPS digits, from the oracle's code."""
    a, ctx = attention("dot", list(QUERY), [list(k) for k in KEYS], src_len, dps=DPS)
    with mpmath.workdps(DPS):
        W_c = [[mpmath.mpf(x) for x in row] for row in W_C]
        h = [mpmath.mpf(x) for x in QUERY]
        z = eq.matvec(W_c, list(ctx) + h)
        h_tilde = eq.attentional_state(MPMATH, W_c, list(ctx), h)
        if abs(sum(a) - 1) > mpmath.mpf(10) ** (5 - DPS):  # the page would state a falsehood
            raise RuntimeError(f"worked example: weights sum to {sum(a)}, not 1")
    return list(a), list(ctx), z, h_tilde


def page_body() -> str:
    """The worked-example page below its title."""
    q = [_exact(x) for x in QUERY]
    keys = [[_exact(x) for x in k] for k in KEYS]
    e = [eq.score(SYMPY, "dot", q, k) for k in keys]
    a_exact = eq.masked_softmax(SYMPY, e, len(keys))
    a, ctx, z, h_tilde = _step(len(KEYS))
    a2, ctx2, _, h_tilde2 = _step(2)
    k1 = ", ".join(KEYS[0])
    return "\n\n".join([
        "## MODEL.md's example",
        f"The dot score of the query $h = ({', '.join(QUERY)})$ and the key $k = ({k1})$, evaluated by "
        "`equations.score` on SymPy Rationals:",
        display(rf"e = h \cdot k = 0.7 \cdot 0.8 + 0.3 \cdot 0.2 = {latex(e[0])} = {sp.N(e[0], 2)}"),
        "## A whole attention step",
        "Three keys (the first is MODEL.md's), all three valid (src_len = 3):",
        display(", \\quad ".join(rf"h^{{enc}}_{s + 1} = ({', '.join(k)})" for s, k in enumerate(KEYS))),
        "**Scores**, exact (SymPy Rationals):",
        display(", \\quad ".join(rf"e_{s + 1} = {latex(x)}" for s, x in enumerate(e))),
        "**Weights**: SymPy's exact expression, then the oracle's value (40 digits, printed to "
        f"{DIGITS}):",
        display(rf"a = {latex(a_exact)} \approx {_vec(a)}"),
        display(rf"\sum_s a_s = {_num(sum(a))}"),
        "The largest score gets the largest weight, but the others keep a share: the softmax of "
        "scores this close together is far from one-hot.",
        r"**Context**, $\mathrm{ctx} = \sum_s a_s h^{enc}_s$:",
        display(rf"\mathrm{{ctx}} \approx {_vec(ctx)}"),
        "**Attentional state** with the $2 \\times 4$ matrix",
        display(r"W_c = \begin{bmatrix}" + r" \\ ".join(" & ".join(row) for row in W_C) + r"\end{bmatrix}"),
        "acting on $[\\mathrm{ctx}; h]$ (context first):",
        display(rf"z = W_c [\mathrm{{ctx}}; h] \approx {_vec(z)}, \qquad"
                rf" \tilde h = \tanh(z) \approx {_vec(h_tilde)}"),
        "## The same step with src_len = 2",
        "The third key is masked: its weight is exactly 0, and the first two weights renormalise "
        "among themselves.",
        display(rf"a \approx {_vec(a2)}, \qquad \mathrm{{ctx}} \approx {_vec(ctx2)}, \qquad"
                rf" \tilde h \approx {_vec(h_tilde2)}"),
        f"The weight of the masked key is the exact zero of the oracle (`{a2[2]!r}`), not a small number.",
    ])
