"""Numerical properties of the whole model: float32 against float64, bit-identical repeats, finite extremes.

float32 results equal float64's within the same-function tolerance of
model_checks.py (``same_tolerance``: 4096 eps32, below float16's eps, so a
half-precision path fails); two identical calls agree bit for bit; and
scores and logits up to 1e4 with saturated gates give finite results.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from ..strategies import MAX_ABS_SCORE, ModelCase, model_cases_for
from .base import Measure, Property, PropertyFailure, register, require, require_close
from .model_checks import call, grads_close, outputs_close, pinned_case, require_finite, run_case, same_tolerance

__all__ = ["scale_up"]


def float32_agrees_with_float64(impl, case: ModelCase) -> Measure:
    """float32 results (loss, log_probs, attention, grads) equal float64's on the same inputs within 4096 eps32."""
    cfg, p, src, src_len, tgt = case
    p32 = {n: np.asarray(v, np.float32) for n, v in p.items()}
    p64 = {n: v.astype(np.float64) for n, v in p32.items()}      # the same (float32-exact) values
    c32, c64 = cfg.replace(dtype="float32"), cfg.replace(dtype="float64")
    f32, loss32, g32 = run_case(impl, ModelCase(c32, p32, src, src_len, tgt))
    f64, loss64, g64 = run_case(impl, ModelCase(c64, p64, src, src_len, tgt))
    for name, a in [("log_probs", f32.log_probs), ("attention", f32.attention)] + list(g32.items()):
        require(np.asarray(a).dtype == np.float32, f"float32 config: {name} has dtype {np.asarray(a).dtype}")
    tol = same_tolerance(np.float32)
    return (outputs_close(f32, f64, tol, "float32 vs float64:")
            | require_close(loss32, loss64, rtol=tol, atol=0.0, name="float32 vs float64: loss_and_grads loss")
            | grads_close(g32, g64, tol, "float32 vs float64:"))


def _bits(x) -> bytes:
    a = np.asarray(x)
    return a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()


def results_are_bit_identical(impl, example) -> Measure:
    """Two calls with the same inputs return bit-identical loss, log_probs, attention, grads and decodings."""
    case, max_len, beam_size = example
    cfg, p, src, src_len, tgt = case
    calls = {"forward": lambda: impl.forward(p, cfg, src, src_len, tgt)}
    if impl.supports("loss_and_grads"):
        calls["loss_and_grads"] = lambda: impl.loss_and_grads(p, cfg, src, src_len, tgt)
    if impl.supports("greedy_decode"):
        calls["greedy_decode"] = lambda: impl.greedy_decode(p, cfg, src, src_len, max_len)
    if impl.supports("beam_search"):
        calls["beam_search"] = lambda: impl.beam_search(p, cfg, src, src_len, beam_size, max_len, False)
    for name, fn in calls.items():
        first, second = _flatten(call(name, fn)), _flatten(call(name, fn))
        require(len(first) == len(second), f"{name}: two identical calls return different structures")
        for part, (a, b) in enumerate(zip(first, second)):
            if _bits(a) != _bits(b):
                diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
                raise PropertyFailure(f"{name}: output part {part} differs between two identical calls "
                                      f"(max |diff| {diff.max(initial=0.0):.3g})", Measure(float(diff.max(initial=0))))
    return Measure()


def _flatten(result):
    """The arrays of a protocol result (tuples and dicts of arrays, in a stable order)."""
    if isinstance(result, dict):
        return [result[k] for k in sorted(result)]
    if isinstance(result, tuple):
        return [a for part in result for a in _flatten(part)]
    return [result]


def large_values_give_finite_results(impl, example) -> Measure:
    """Finite inputs, |score| and |logit| up to 1e4 and saturated gates: loss, log_probs, attention,
    grads and decoded scores are all finite."""
    case, max_len = example
    cfg, p, src, src_len, tgt = case
    f = call("forward", impl.forward, p, cfg, src, src_len, tgt)
    require_finite("forward loss", f.loss)
    require_finite("forward log_probs", f.log_probs)
    require_finite("forward attention", f.attention)
    if impl.supports("loss_and_grads"):
        loss, grads = call("loss_and_grads", impl.loss_and_grads, p, cfg, src, src_len, tgt)
        require_finite("loss_and_grads loss", loss)
        for name, g in grads.items():
            require_finite(f"d loss / d {name}", g)
    if impl.supports("greedy_decode"):
        out = call("greedy_decode", impl.greedy_decode, p, cfg, src, src_len, max_len)
        require_finite("greedy_decode scores", out.scores)
        require_finite("greedy_decode attention", out.attention)
    if impl.supports("beam_search"):
        out = call("beam_search", impl.beam_search, p, cfg, src, src_len, 2, max_len, False)
        require_finite("beam_search scores", out.scores)
        require_finite("beam_search attention", out.attention)
    return Measure()


# -- strategies of the properties ----------------------------------------------------------------------

def _float32_and_float64(impl):
    if not {"float32", "float64"} <= set(getattr(impl, "dtypes", ())):
        return st.nothing()
    # Somewhat deeper and wider than the default cases, so that float32 rounding accumulates.
    return model_cases_for(impl, dtypes=("float64",), max_E=8, max_H=8, max_V=12, max_S=8, max_T=8)


def _repeated(impl):
    return st.tuples(model_cases_for(impl), st.integers(1, 5), st.integers(1, 3))


def scale_up(case: ModelCase, score_bound: float, logit_bound: float, lstm: float, emb: float, W_c: float) -> ModelCase:
    """The case with large parameters: |score| <= score_bound and |logit - b| <= logit_bound by construction.

    |h|, |h^enc| and |h~| are <= 1 (outputs of o * tanh and of tanh), so
    |h^T W_a k| <= sum|W_a|, |v_a . tanh(.)| <= sum|v_a| and |W_out h~| <= the
    largest row sum of |W_out|: rescaling those to the bounds reaches them
    without passing them. LSTM weights, embeddings and W_c are multiplied by
    ``lstm``, ``emb`` and ``W_c`` (saturated gates and tanh). dot and
    scaled_dot scores stay below H whatever the parameters.
    """
    cfg = case.config
    p = {n: np.asarray(v, np.float64).copy() for n, v in case.params.items()}
    if cfg.score == "general":
        p["attention.W_a"] *= score_bound / max(np.abs(p["attention.W_a"]).sum(), 1e-300)
    if cfg.score == "concat":
        p["attention.v_a"] *= score_bound / max(np.abs(p["attention.v_a"]).sum(), 1e-300)
    p["generator.weight"] *= logit_bound / max(np.abs(p["generator.weight"]).sum(axis=1).max(), 1e-300)
    for name in p:
        if ".lstm." in name:
            p[name] *= lstm
        elif name.endswith("embedding.weight"):
            p[name] *= emb
    if cfg.attention:
        p["attention.W_c"] *= W_c
    return case._replace(params={n: v.astype(cfg.dtype) for n, v in p.items()})


def _large(impl):
    @st.composite
    def draw(draw):
        case = draw(model_cases_for(impl))
        factor = st.floats(1.0, MAX_ABS_SCORE)
        big = scale_up(case, draw(factor), draw(factor), draw(factor), draw(factor), draw(factor))
        return big, draw(st.integers(1, 4))
    return draw()


PROPERTIES = [
    Property("float32_agrees_with_float64", float32_agrees_with_float64, _float32_and_float64,
             needs=("forward", "loss_and_grads"), examples=(pinned_case(),)),
    Property("results_are_bit_identical", results_are_bit_identical, _repeated, needs=("forward",),
             examples=((pinned_case(), 3, 2),)),
    Property("large_values_give_finite_results", large_values_give_finite_results, _large, needs=("forward",),
             examples=((scale_up(pinned_case(), MAX_ABS_SCORE, MAX_ABS_SCORE, 1.0, 1.0, 1.0), 3),
                       (scale_up(pinned_case(), MAX_ABS_SCORE, MAX_ABS_SCORE, 1e4, 1e4, 1e4), 3))),
]

for _prop in PROPERTIES:
    register(_prop)
