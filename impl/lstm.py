"""One LSTM cell on its own: the public, validated entry point to ``kernels_lstm.lstm_cell_forward``.

The model runs the cell inside its own kernels; this wrapper exposes the very
same kernel to the property suite (``lstm_cell`` of spec.protocol), so the
gate bounds and the cell's equations are checked on the code the model runs.
"""

from __future__ import annotations

import numpy as np

from ..spec.validate import all_finite, as_float_array
from .kernels_lstm import lstm_cell_forward

__all__ = ["lstm_cell"]


def lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of MODEL.md's LSTM cell for a batch, gate order i, f, g, o.

        z = W_ih x + b_ih + W_hh h + b_hh;  i, f, g, o = sigma, sigma, tanh, sigma of z's quarters
        c' = f * c + i * g;  h' = o * tanh(c')

    Parameters
    ----------
    x : float array [B, D]
        The cell's input; its dtype (float32 or float64) is the dtype of every argument.
    h, c : [B, H]
        The previous hidden and cell states.
    W_ih : [4H, D];  W_hh : [4H, H];  b_ih, b_hh : [4H]

    Returns
    -------
    h_new, c_new : [B, H]
    gates : [B, 4H]
        (i, f, g, o) after their activations, in that order.

    Examples
    --------
    >>> z = np.zeros((1, 1))
    >>> h, c, gates = lstm_cell(z, z, np.ones((1, 1)), np.zeros((4, 1)), np.zeros((4, 1)), np.zeros(4), np.zeros(4))
    >>> gates.tolist(), c.tolist()        # sigma(0) = 1/2, tanh(0) = 0: c' = c / 2
    ([[0.5, 0.5, 0.0, 0.5]], [[0.5]])
    """
    x = as_float_array("x", x, 2)
    dt = x.dtype
    B, D = x.shape
    h = as_float_array("h", h, 2, dt)
    H = h.shape[1]
    c = as_float_array("c", c, 2, dt)
    W_ih = as_float_array("W_ih", W_ih, 2, dt)
    W_hh = as_float_array("W_hh", W_hh, 2, dt)
    b_ih = as_float_array("b_ih", b_ih, 1, dt)
    b_hh = as_float_array("b_hh", b_hh, 1, dt)
    for name, a, shape in (("h", h, (B, H)), ("c", c, (B, H)), ("W_ih", W_ih, (4 * H, D)),
                           ("W_hh", W_hh, (4 * H, H)), ("b_ih", b_ih, (4 * H,)), ("b_hh", b_hh, (4 * H,))):
        if a.shape != shape:
            raise ValueError(f"{name}: expected shape {shape} (B = {B}, D = {D}, H = {H}), got {a.shape}")
    if B < 1 or H < 1:
        raise ValueError(f"h: expected a non-empty [B, H] array, got shape {h.shape}")
    # The pre-activations are two small matrix products, as in the model's kernels
    # (which also add the two biases first); the cell's nonlinear part is the kernel.
    with np.errstate(over="ignore", invalid="ignore"):                               # reported below
        z = np.ascontiguousarray(x @ W_ih.T + h @ W_hh.T + (b_ih + b_hh), dtype=dt)   # (B, 4H)
    # An overflowed pre-activation is an infinity that the gates' sigmoid and tanh turn into
    # a finite, wrong value (sigma(-inf) = 0 whatever z was): refuse it here.
    if not all_finite(z):
        raise FloatingPointError(f"lstm_cell: the pre-activations W_ih x + b_ih + W_hh h + b_hh overflow {dt}; "
                                 f"the inputs are too large")
    gates = np.empty((B, 4 * H), dt)
    c_new, tanh_c, h_new = (np.empty((B, H), dt) for _ in range(3))
    lstm_cell_forward(z, c, gates, c_new, tanh_c, h_new)
    return h_new, c_new, gates
