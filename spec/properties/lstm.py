"""Properties of one LSTM cell step, through ``Implementation.lstm_cell``.

    i, f, g, o = sigma, sigma, tanh, sigma of z = W_ih x + b_ih + W_hh h + b_hh (in four blocks of H)
    c' = f * c + i * g,   h' = o * tanh(c')

The gates stay in their ranges (and open where rounding cannot reach an end),
and the cell equals MODEL.md's at 30 digits within the forward error bound of z.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import mpmath
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..autodiff import MPMATH
from ..equations import lstm_gates
from .base import Measure, Property, PropertyFailure, register, require
from .model_checks import call, require_finite

__all__ = ["CellCase"]

CELL_DPS = 30   # the reference cell's own error 1e-30 is nothing next to float64's 1e-16


class CellCase(NamedTuple):
    """Inputs of one LSTM cell step, in the argument order of ``Implementation.lstm_cell``."""

    x: np.ndarray
    h: np.ndarray
    c: np.ndarray
    W_ih: np.ndarray
    W_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray


def _cell(impl, case: CellCase):
    h, c, gates = (np.asarray(a) for a in call("lstm_cell", impl.lstm_cell, *case))
    B, H = case.h.shape
    for name, a, shape in (("h'", h, (B, H)), ("c'", c, (B, H)), ("gates", gates, (B, 4 * H))):
        require(a.shape == shape, f"lstm_cell: {name} shape {a.shape}, expected {shape}")
        require_finite(f"lstm_cell {name}", a)
    return h, c, gates


def _pre_activations(case: CellCase):
    """z [B, 4H] in float64 and the magnitude sum |terms| of each entry (exact-enough: 1e-16 relative)."""
    f = [np.asarray(a, np.float64) for a in case]
    x, h, _, W_ih, W_hh, b_ih, b_hh = f
    z = x @ W_ih.T + h @ W_hh.T + b_ih + b_hh
    mag = np.abs(x) @ np.abs(W_ih).T + np.abs(h) @ np.abs(W_hh).T + np.abs(b_ih) + np.abs(b_hh)
    return z, mag


def lstm_gates_and_state_are_bounded(impl, case: CellCase) -> Measure:
    """i, f, o in [0, 1] (open where |z| <= 15), g in [-1, 1] (open where |z| <= 7), |h'| <= 1,
    |c'| <= (|c| + 1)(1 + eps)."""
    h, c, gates = _cell(impl, case)
    H = case.h.shape[1]
    z, _ = _pre_activations(case)
    eps = float(np.finfo(case.x.dtype).eps)
    sig = np.ones(4 * H, bool)
    sig[2 * H:3 * H] = False                               # i, f, o are sigmoids; g is tanh
    lo = np.where(sig, 0.0, -1.0)
    for b, j in np.argwhere((gates < lo) | (gates > 1.0)):
        raise PropertyFailure(f"gate {'ifgo'[j // H]}[{b}, {j % H}] = {gates[b, j]!r} outside "
                              f"[{lo[j]:g}, 1] (z = {z[b, j]!r})", Measure(float(abs(gates[b, j])), math.inf))
    # sigma(z) for |z| <= 15 lies in [3.1e-7, 1 - 3.1e-7] and tanh(z) for |z| <= 7 within
    # 1.7e-6 of +-1: representable away from the ends even in float32, so rounding cannot touch them.
    inner = np.where(sig, np.abs(z) <= 15, np.abs(z) <= 7)
    for b, j in np.argwhere(inner & ((gates <= lo) | (gates >= 1.0))):
        raise PropertyFailure(f"gate {'ifgo'[j // H]}[{b}, {j % H}] = {gates[b, j]!r} at an end of its range "
                              f"for z = {z[b, j]!r}: the activation is not a sigmoid/tanh", Measure(0.0, math.inf))
    c_prev = np.abs(np.asarray(case.c, np.float64))
    require(bool(np.all(np.abs(h) <= 1.0)), f"|h'| > 1: max {np.abs(h).max()!r}")
    over = np.abs(c.astype(np.float64)) - (c_prev + 1.0) * (1 + eps)   # f <= 1 and |i g| <= 1, one rounding
    if np.any(over > 0):
        k = tuple(int(j) for j in np.argwhere(over > 0)[0])
        raise PropertyFailure(f"|c'| > |c| + 1 at {list(k)}: c' = {c[k]!r} with c = {case.c[k]!r}",
                              Measure(float(over[k])))
    return Measure()


def lstm_cell_matches_the_equations(impl, case: CellCase) -> Measure:
    """gates, c' and h' equal MODEL.md's cell at 30 digits within the float forward-error bound of z."""
    h, c, gates = _cell(impl, case)
    B, H = case.h.shape
    D = case.x.shape[1]
    eps = float(np.finfo(case.x.dtype).eps)
    ref_gates, ref_c, ref_h = np.zeros(gates.shape), np.zeros(c.shape), np.zeros(h.shape)
    mp = lambda a: [mpmath.mpf(float(v)) for v in np.ravel(a)]   # noqa: E731  (exact: floats convert exactly)
    rows = lambda W: [mp(r) for r in W]                          # noqa: E731
    with mpmath.workdps(CELL_DPS):
        W_ih, W_hh, b_ih, b_hh = rows(case.W_ih), rows(case.W_hh), mp(case.b_ih), mp(case.b_hh)
        for b in range(B):
            i, f, g, o = lstm_gates(MPMATH, mp(case.x[b]), mp(case.h[b]), W_ih, W_hh, b_ih, b_hh)
            c_new = [fj * cj + ij * gj for fj, cj, ij, gj in zip(f, mp(case.c[b]), i, g)]
            ref_gates[b] = [float(v) for v in i + f + g + o]
            ref_c[b] = [float(v) for v in c_new]
            ref_h[b] = [float(oj * mpmath.tanh(cj)) for oj, cj in zip(o, c_new)]
    # z = W_ih x + W_hh h + b_ih + b_hh sums D + H + 2 terms: |dz| <= (D + H + 2) eps sum|terms|.
    # sigma' <= 1/4 and tanh' <= 1, and libm's exp/tanh and the division add a few eps.
    _, mag = _pre_activations(case)
    d_gate = (D + H + 2) * eps * mag + 4 * eps
    i_, f_, g_, o_ = (d_gate[:, k * H:(k + 1) * H] for k in range(4))
    c_abs = np.abs(np.asarray(case.c, np.float64))
    d_c = c_abs * f_ + i_ + g_ + 3 * eps * (c_abs + 1)            # c' = f c + i g, |i|, |g| <= 1
    d_h = o_ + d_c + 3 * eps                                     # h' = o tanh(c'), tanh 1-Lipschitz
    measure = Measure()
    for name, actual, expected, bound in (("gates", gates, ref_gates, d_gate), ("c'", c, ref_c, d_c),
                                          ("h'", h, ref_h, d_h)):
        diff = np.abs(actual.astype(np.float64) - expected)
        measure |= Measure(float(diff.max()))
        if np.any(diff > bound):
            k = np.unravel_index(int(np.argmax(diff - bound)), diff.shape)
            raise PropertyFailure(f"lstm_cell {name}{list(map(int, k))} = {actual[k]!r}, MODEL.md's cell gives "
                                  f"{expected[k]!r} (|diff| {diff[k]:.3g} > bound {bound[k]:.3g})", measure)
    return measure


# -- strategies and pinned examples --------------------------------------------------------------------

def _cells(impl):
    dtypes = tuple(getattr(impl, "dtypes", ("float64",)))

    @st.composite
    def draw(draw):
        dtype = draw(st.sampled_from(dtypes))
        B, D, H = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
        # 1: ordinary gates; 8: mostly saturated; 1e3: far saturated (exp overflows in float32).
        scale = draw(st.sampled_from([1.0, 8.0, 1e3]))
        unit = st.floats(-1.0, 1.0, width=32)

        def arr(shape, s):
            return (draw(hnp.arrays(np.float64, shape, elements=unit)) * s).astype(dtype)
        return CellCase(arr((B, D), scale), arr((B, H), 1.0), arr((B, H), 10.0), arr((4 * H, D), scale),
                        arr((4 * H, H), scale), arr((4 * H,), scale), arr((4 * H,), scale))
    return draw()


def _pinned_cell(z_scale: float) -> CellCase:
    """x = h = 0, c = (1, -2): gates = activations of the biases, set to +-z_scale."""
    H, D = 2, 1
    b = np.array([1.0, -1.0] * (2 * H)) * z_scale
    return CellCase(np.zeros((1, D)), np.zeros((1, H)), np.array([[1.0, -2.0]]), np.ones((4 * H, D)),
                    np.ones((4 * H, H)), b, np.zeros(4 * H))


PROPERTIES = [
    Property("lstm_gates_and_state_are_bounded", lstm_gates_and_state_are_bounded, _cells, needs=("lstm_cell",),
             examples=(_pinned_cell(0.5), _pinned_cell(1e4))),
    Property("lstm_cell_matches_the_equations", lstm_cell_matches_the_equations, _cells, needs=("lstm_cell",),
             examples=(_pinned_cell(0.5), _pinned_cell(40.0))),
]

for _prop in PROPERTIES:
    register(_prop)
