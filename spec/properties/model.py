"""Model-level properties of forward and loss_and_grads: padding, batch rows, gradients.

Tolerances
----------
* Padding and batch rows change no value mathematically: the same-function
  tolerance of model_checks.py (``same_tolerance``).
* Against the 30-digit oracle (``ORACLE_RTOL`` = 1e-10 relative to each
  gradient's largest entry). The oracle is exact to 1e-30, so the difference
  is the implementation's float64 rounding: ~1e3-1e4 operations per gradient
  entry on tiny nets (n eps ~ 1e-12 worst case), times the condition of a
  gradient entry that is a difference of larger terms (<= 100 for tiny nets
  at scale 0.5). Observed <= 5e-15; a scaled or missing gradient term is off
  by O(|g|). Entries of a gradient that is exactly zero (all src_len = 1
  makes d/dW_a vanish) are judged against 1e-3 of the largest gradient of
  any parameter (``grads_close``), since they are differences of terms of
  that size.
* High-precision central differences (``FD_DPS`` = 40 digits, step 1e-12):
  truncation h^2 |loss'''| / 6 ~ 1e-24 and rounding 1e-40 n_ops / h ~ 1e-23,
  so they are exact for this purpose and the oracle bound applies.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .. import oracle
from ..config import param_shapes
from ..strategies import ModelCase, model_cases_for
from .base import Measure, Property, register, require, require_close
from .model_checks import ZERO_GRAD_FLOOR, grads_close, outputs_close, pinned_case, run_case, same_tolerance

__all__ = ["ORACLE_RTOL"]

ORACLE_RTOL = 1e-10
"""float64 against the oracle, relative to each gradient's largest entry (see the module doc)."""

ORACLE_DPS = 30   # the oracle's own error 1e-30 is nothing next to float64's 1e-16
FD_DPS, FD_STEP = 40, "1e-12"


# -- padding and batch rows ------------------------------------------------------------------

def extra_pad_changes_no_real_value(impl, example) -> Measure:
    """src + PAD columns, tgt + PAD columns: loss, grads, log_probs[:, :T] and attention[:, :T, :S] unchanged."""
    case, extra_src, extra_tgt = example
    cfg, p, src, src_len, tgt = case
    B, S = src.shape
    T = tgt.shape[1] - 1
    wide = ModelCase(cfg, p, np.concatenate([src, np.full((B, extra_src), cfg.pad_id)], axis=1), src_len,
                     np.concatenate([tgt, np.full((B, extra_tgt), cfg.pad_id)], axis=1))
    f, loss, grads = run_case(impl, case)
    f2, loss2, grads2 = run_case(impl, wide)
    tol = same_tolerance(cfg.dtype)
    masked = np.asarray(f2.attention)[:, :, S:]
    require(bool(np.all(masked == 0.0)), f"attention at the {extra_src} added PAD source columns is not exactly 0 "
                                         f"(max {np.abs(masked).max(initial=0.0)!r})")
    return (outputs_close(f2, f, tol, "with PAD columns:", T, S)
            | require_close(loss2, loss, rtol=tol, atol=0.0, name="with PAD columns: loss_and_grads loss")
            | grads_close(grads2, grads, tol, "with PAD columns:"))


def rows_do_not_depend_on_other_rows(impl, example) -> Measure:
    """Row b alone or in a permuted batch gives the same log_probs and attention; g = sum_b (n_b / N) g_b."""
    case, perm = example
    cfg, p, src, src_len, tgt = case
    perm = np.asarray(perm)
    f, loss, grads = run_case(impl, case)
    fp, loss_p, grads_p = run_case(impl, ModelCase(cfg, p, src[perm], src_len[perm], tgt[perm]))
    tol = same_tolerance(cfg.dtype)
    measure = (require_close(np.asarray(fp.log_probs), np.asarray(f.log_probs)[perm], rtol=tol,
                             name=f"permuted batch {perm.tolist()}: log_probs")
               | require_close(np.asarray(fp.attention), np.asarray(f.attention)[perm], rtol=tol,
                               name=f"permuted batch {perm.tolist()}: attention")
               | require_close(loss_p, loss, rtol=tol, atol=0.0, name="permuted batch: loss")
               | grads_close(grads_p, grads, tol, "permuted batch:"))
    # The loss is a mean over the batch's non-PAD labels, so the batch gradient is the
    # label-count-weighted mean of the rows' gradients (each row alone has n_b labels).
    counts = (tgt[:, 1:] != cfg.pad_id).sum(axis=1)
    combined = {name: np.zeros(g.shape) for name, g in grads.items()}
    for b in range(src.shape[0]):
        row = ModelCase(cfg, p, src[b:b + 1], src_len[b:b + 1], tgt[b:b + 1])
        fb, _, gb = run_case(impl, row)
        measure |= (require_close(np.asarray(fb.log_probs)[0], np.asarray(f.log_probs)[b], rtol=tol,
                                  name=f"row {b} alone vs in the batch: log_probs")
                    | require_close(np.asarray(fb.attention)[0], np.asarray(f.attention)[b], rtol=tol,
                                    name=f"row {b} alone vs in the batch: attention"))
        for name in combined:
            combined[name] += np.asarray(gb[name], np.float64) * (counts[b] / counts.sum())
    return measure | grads_close(grads, combined, tol, "batch vs sum_b (n_b / N) g_b:")


# -- gradients ---------------------------------------------------------------------------------

def gradients_match_the_oracle(impl, case: ModelCase) -> Measure:
    """loss, log_probs, attention and every d loss / d param equal the 30-digit oracle within 1e-10 (float64)."""
    cfg, p, src, src_len, tgt = case
    ref = oracle.evaluate(p, cfg, src, src_len, tgt, dps=ORACLE_DPS).as_float64()
    f, loss, grads = run_case(impl, case)
    measure = (require_close(f.loss, ref.loss, rtol=ORACLE_RTOL, atol=0.0, name="forward loss vs oracle")
               | require_close(loss, ref.loss, rtol=ORACLE_RTOL, atol=0.0, name="loss_and_grads loss vs oracle")
               | require_close(f.log_probs, ref.log_probs, rtol=ORACLE_RTOL, name="log_probs vs oracle"))
    if ref.attention is not None:   # the baseline has no attention to compare
        measure |= require_close(f.attention, ref.attention, rtol=ORACLE_RTOL, name="attention vs oracle")
    return measure | grads_close(grads, ref.grads, ORACLE_RTOL, "vs oracle:")


def gradients_match_finite_differences(impl, example) -> Measure:
    """d loss / d p at sampled coordinates equals the 40-digit central difference (loss(p+h) - loss(p-h)) / 2h."""
    case, picks = example
    cfg, p, src, src_len, tgt = case
    _, loss, grads = run_case(impl, case)
    scale = max(float(np.max(np.abs(g), initial=0.0)) for g in grads.values())
    measure = Measure()
    for name, index in picks:
        g = np.asarray(grads[name], np.float64)
        g_max = float(np.max(np.abs(g)))
        # The drawn coordinate, and the gradient's largest entry, whose size sets the bound:
        # checking that entry keeps the bound honest (a scaled gradient fails there).
        top = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.abs(g))), g.shape))
        for idx in dict.fromkeys([tuple(index), top]):
            fd = float(oracle.finite_difference_grad(p, cfg, src, src_len, tgt, name, idx, h=FD_STEP, dps=FD_DPS))
            measure |= require_close(g[idx], fd, rtol=0.0, atol=ORACLE_RTOL * (g_max + ZERO_GRAD_FLOOR * scale),
                                     name=f"d loss / d {name}{list(idx)} vs central difference")
    return measure


# -- strategies of the properties (on top of spec.strategies) -----------------------------------------

def _padding(impl):
    @st.composite
    def draw(draw):
        case = draw(model_cases_for(impl))
        extra_src, extra_tgt = draw(st.tuples(st.integers(0, 3), st.integers(0, 3)).filter(lambda e: sum(e) > 0))
        return case, extra_src, extra_tgt
    return draw()


def _permuted(impl):
    @st.composite
    def draw(draw):
        case = draw(model_cases_for(impl, max_B=4))
        return case, np.array(draw(st.permutations(range(case.src.shape[0]))))
    return draw()


# Tiny nets for the oracle: a reverse-mode evaluation costs ~10-200 ms here (~0.1 s per example).
TINY = dict(max_L=2, max_E=3, max_H=3, max_V=6, max_B=2, max_S=3, max_T=3)
# Larger nets for finite differences: one coordinate costs two 40-digit losses, ~0.05-0.3 s;
# an example checks two coordinates (~0.25 s per example).
LARGER = dict(max_L=2, max_E=6, max_H=6, max_V=10, max_B=3, max_S=6, max_T=6)


def _tiny(impl):
    return model_cases_for(impl, dtypes=("float64",), **TINY)


def _with_coordinate(impl):
    """A larger float64 case and one (name, index): the check adds that gradient's largest entry."""
    @st.composite
    def draw(draw):
        case = draw(model_cases_for(impl, dtypes=("float64",), **LARGER))
        shapes = param_shapes(case.config)
        name = draw(st.sampled_from(sorted(shapes)))
        index = tuple(draw(st.integers(0, n - 1)) for n in shapes[name])
        return case, [(name, index)]
    return draw()


PROPERTIES = [
    Property("extra_pad_changes_no_real_value", extra_pad_changes_no_real_value, _padding,
             needs=("forward", "loss_and_grads"),
             examples=((pinned_case(), 2, 2), (pinned_case(L=1, input_feeding=False), 1, 0))),
    Property("rows_do_not_depend_on_other_rows", rows_do_not_depend_on_other_rows, _permuted,
             needs=("forward", "loss_and_grads"), examples=((pinned_case(), np.array([1, 0])),)),
    Property("gradients_match_the_oracle", gradients_match_the_oracle, _tiny,
             needs=("forward", "loss_and_grads"),
             examples=(pinned_case(input_feeding=False), pinned_case(L=1))),
    Property("gradients_match_finite_differences", gradients_match_finite_differences, _with_coordinate,
             needs=("loss_and_grads",),
             examples=((pinned_case(B=2, S=4, T=4), [("decoder.lstm.weight_hh_l1", (0, 0))]),)),
]

for _prop in PROPERTIES:
    register(_prop)
