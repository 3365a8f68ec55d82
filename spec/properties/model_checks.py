"""What the model-level properties share: calling the protocol, comparing outputs, the pinned case.

The model-level properties (model.py, decoding.py, numerics.py, lstm.py)
take an implementation and one example and call only protocol methods
(spec.protocol), so they run unchanged on attnspec's Numba model, the PyTorch
model or anyone's adapter.

The same-function tolerance
---------------------------
``eps`` is the machine epsilon of the dtype (2.2e-16 for float64, 1.2e-7 for
float32). Two computations of the same function agree within
``same_tolerance``: 4096 eps relative to each array's largest entry, 9.1e-13
in float64 and 4.9e-4 in float32. Extra PAD columns, other batch rows,
another row order, or float32 against float64 change no value
mathematically; what remains is rounding. A sum of n terms errs by at most
n eps sum|terms| (n <= 64: E + 2H, S and V_tgt of the strategies here are
all below 64), and an error made at one of at most 64 sequential stages
(S + T steps times L layers, forward and back) reaches the output through
Jacobians of norm ~1 at the strategies' moderate parameter scale
(N(0, 0.5^2): sigma' <= 1/4 and tanh' <= 1 contract). So 64 * 64 eps.
Observed over 200 drawn cases: absolute differences <= 9e-16 (float64
reorderings), <= 2.4e-7 (float32 reorderings) and <= 5e-7 (float32 against
float64); relative to the largest entry <= 3e-5 even at scale 1. The float32
bound stays below float16's eps (9.8e-4), so a path that drops to half
precision cannot pass.
"""

from __future__ import annotations

import math

import numpy as np

from ..cases import random_case
from ..config import Config
from ..strategies import ModelCase
from .base import Measure, PropertyFailure, require, require_close

__all__ = ["SAME_FUNCTION_K", "ZERO_GRAD_FLOOR", "same_tolerance", "call", "run_case", "grads_close", "outputs_close",
           "require_finite", "pinned_case"]

SAME_FUNCTION_K = 4096
"""Rounding allowance, in eps, between two computations of the same function (see the module doc)."""

ZERO_GRAD_FLOOR = 1e-3   # an all-zero gradient is judged on 1e-3 of the largest gradient's scale


def same_tolerance(dtype) -> float:
    """SAME_FUNCTION_K eps of ``dtype``: 9.1e-13 for float64, 4.9e-4 for float32."""
    return SAME_FUNCTION_K * float(np.finfo(np.dtype(dtype)).eps)


def call(what: str, fn, *args, **kwargs):
    """Call a protocol method; an overflow it reports on finite input is a failure, not an error."""
    try:
        return fn(*args, **kwargs)
    except FloatingPointError as exc:
        raise PropertyFailure(f"{what}: raised FloatingPointError on finite input ({exc})",
                              Measure(math.inf, math.inf)) from exc


def run_case(impl, case: ModelCase):
    """(forward output, loss of loss_and_grads, grads) of one case."""
    cfg, p, src, src_len, tgt = case
    f = call("forward", impl.forward, p, cfg, src, src_len, tgt)
    loss, grads = call("loss_and_grads", impl.loss_and_grads, p, cfg, src, src_len, tgt)
    return f, loss, grads


def grads_close(actual: dict, expected: dict, rtol: float, what: str) -> Measure:
    """Every named gradient within rtol (max|expected[name]| + 1e-3 max over all names)."""
    require(set(actual) == set(expected),
            f"{what}: gradient names {sorted(actual)} differ from {sorted(expected)}")
    scale = max(float(np.max(np.abs(g), initial=0.0)) for g in expected.values())
    measure = Measure()
    for name, g in expected.items():
        atol = rtol * (float(np.max(np.abs(g), initial=0.0)) + ZERO_GRAD_FLOOR * scale)
        measure |= require_close(actual[name], g, rtol=0.0, atol=atol, name=f"{what} d loss / d {name}")
    return measure


def outputs_close(f, ref, rtol: float, what: str, T=None, S=None) -> Measure:
    """loss, log_probs [:, :T] and attention [:, :T, :S] of forward output ``f`` against ``ref``."""
    T = ref.log_probs.shape[1] if T is None else T
    S = ref.attention.shape[2] if S is None else S
    return (require_close(f.loss, ref.loss, rtol=rtol, atol=0.0, name=f"{what} loss")
            | require_close(np.asarray(f.log_probs)[:, :T], ref.log_probs, rtol=rtol, name=f"{what} log_probs")
            | require_close(np.asarray(f.attention)[:, :T, :S], ref.attention, rtol=rtol,
                            name=f"{what} attention"))


def require_finite(name: str, x) -> Measure:
    """Fail unless every entry of ``x`` is finite; the message names the first that is not."""
    a = np.asarray(x, np.float64)
    if not np.all(np.isfinite(a)):
        i = tuple(int(j) for j in np.argwhere(~np.isfinite(a))[0])
        raise PropertyFailure(f"{name}: non-finite value {a[i]!r} at index {i}", Measure(math.inf, math.inf))
    return Measure()


def pinned_case(score="dot", L=2, input_feeding=True, dtype="float64", seed=0, **sizes) -> ModelCase:
    """A small pinned case of spec.cases.random_case: row 1 one source position shorter and ending in a PAD label."""
    cfg = Config(V_src=6, V_tgt=6, E=2, H=3, L=L, score=score, input_feeding=input_feeding, dtype=dtype)
    p, src, src_len, tgt = random_case(cfg, seed=seed, **sizes)
    return ModelCase(cfg, {n: v.astype(dtype) for n, v in p.items()}, src, src_len, tgt)
