"""Model-level properties: padding, batch rows, gradients, decoding, precision, safety, the LSTM cell.

Each check takes an implementation and one example and calls only protocol
methods (spec.protocol), so it runs unchanged on attnspec's Numba model, the
PyTorch model or anyone's adapter.

Tolerances
----------
``eps`` is the machine epsilon of the dtype (2.2e-16 for float64, 1.2e-7 for
float32).

* Same function, two roundings (``same_tolerance``, 4096 eps relative to each
  array's largest entry: 9.1e-13 in float64, 4.9e-4 in float32). Extra PAD
  columns, other batch rows, another row order, or float32 against float64
  change no value mathematically; what remains is rounding. A sum of n terms
  errs by at most n eps sum|terms| (n <= 64: E + 2H, S and V_tgt of the
  strategies here are all below 64), and an error made at one of at most 64
  sequential stages (S + T steps times L layers, forward and back) reaches the
  output through Jacobians of norm ~1 at the strategies' moderate parameter
  scale (N(0, 0.5^2): sigma' <= 1/4 and tanh' <= 1 contract). So
  64 * 64 eps. Observed over 200 drawn cases: absolute differences <= 9e-16
  (float64 reorderings), <= 2.4e-7 (float32 reorderings) and <= 5e-7 (float32
  against float64); relative to the largest entry <= 3e-5 even at scale 1.
  The float32 bound stays below float16's eps (9.8e-4), so a path that drops
  to half precision cannot pass.
* Against the 30-digit oracle (``ORACLE_RTOL`` = 1e-10 relative to each
  gradient's largest entry). The oracle is exact to 1e-30, so the difference
  is the implementation's float64 rounding: ~1e3-1e4 operations per gradient
  entry on tiny nets (n eps ~ 1e-12 worst case), times the condition of a
  gradient entry that is a difference of larger terms (<= 100 for tiny nets
  at scale 0.5). Observed <= 5e-15; a scaled or missing gradient term is off
  by O(|g|). Entries of a gradient that is exactly zero (all src_len = 1
  makes d/dW_a vanish) are judged against 1e-3 of the largest gradient of
  any parameter (``_grads_close``), since they are differences of terms of
  that size.
* High-precision central differences (``FD_DPS`` = 40 digits, step 1e-12):
  truncation h^2 |loss'''| / 6 ~ 1e-24 and rounding 1e-40 n_ops / h ~ 1e-23,
  so they are exact for this purpose and the oracle bound applies.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import mpmath
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .. import oracle
from ..autodiff import MPMATH
from ..cases import random_case
from ..config import Config, param_shapes
from ..equations import lstm_gates
from ..strategies import ModelCase, model_cases_for
from .base import Measure, Property, PropertyFailure, register, require, require_close

__all__ = ["SAME_FUNCTION_K", "ORACLE_RTOL", "same_tolerance", "DecodeCase", "CellCase"]

SAME_FUNCTION_K = 4096
"""Rounding allowance, in eps, between two computations of the same function (see the module doc)."""

ORACLE_RTOL = 1e-10
"""float64 against the oracle, relative to each gradient's largest entry (see the module doc)."""

ORACLE_DPS = 30   # the oracle's own error 1e-30 is nothing next to float64's 1e-16
FD_DPS, FD_STEP = 40, "1e-12"
ZERO_GRAD_FLOOR = 1e-3   # an all-zero gradient is judged on 1e-3 of the largest gradient's scale


def same_tolerance(dtype) -> float:
    """SAME_FUNCTION_K eps of ``dtype``: 9.1e-13 for float64, 4.9e-4 for float32."""
    return SAME_FUNCTION_K * float(np.finfo(np.dtype(dtype)).eps)


class DecodeCase(NamedTuple):
    """A decoding example: unpack as ``config, params, src, src_len, max_len, beam_size, length_normalize``."""

    config: Config
    params: dict
    src: np.ndarray
    src_len: np.ndarray
    max_len: int
    beam_size: int
    length_normalize: bool


class CellCase(NamedTuple):
    """Inputs of one LSTM cell step, in the argument order of ``Implementation.lstm_cell``."""

    x: np.ndarray
    h: np.ndarray
    c: np.ndarray
    W_ih: np.ndarray
    W_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray


# -- calling the implementation ------------------------------------------------------------

def _call(what: str, fn, *args, **kwargs):
    """Call a protocol method; an overflow it reports on finite input is a failure, not an error."""
    try:
        return fn(*args, **kwargs)
    except FloatingPointError as exc:
        raise PropertyFailure(f"{what}: raised FloatingPointError on finite input ({exc})",
                              Measure(math.inf, math.inf)) from exc


def _run(impl, case: ModelCase):
    """(forward output, loss of loss_and_grads, grads) of one case."""
    cfg, p, src, src_len, tgt = case
    f = _call("forward", impl.forward, p, cfg, src, src_len, tgt)
    loss, grads = _call("loss_and_grads", impl.loss_and_grads, p, cfg, src, src_len, tgt)
    return f, loss, grads


def _grads_close(actual: dict, expected: dict, rtol: float, what: str) -> Measure:
    """Every named gradient within rtol (max|expected[name]| + 1e-3 max over all names)."""
    require(set(actual) == set(expected),
            f"{what}: gradient names {sorted(actual)} differ from {sorted(expected)}")
    scale = max(float(np.max(np.abs(g), initial=0.0)) for g in expected.values())
    measure = Measure()
    for name, g in expected.items():
        atol = rtol * (float(np.max(np.abs(g), initial=0.0)) + ZERO_GRAD_FLOOR * scale)
        measure |= require_close(actual[name], g, rtol=0.0, atol=atol, name=f"{what} d loss / d {name}")
    return measure


def _outputs_close(f, ref, rtol: float, what: str, T=None, S=None) -> Measure:
    """loss, log_probs [:, :T] and attention [:, :T, :S] of forward output ``f`` against ``ref``."""
    T = ref.log_probs.shape[1] if T is None else T
    S = ref.attention.shape[2] if S is None else S
    return (require_close(f.loss, ref.loss, rtol=rtol, atol=0.0, name=f"{what} loss")
            | require_close(np.asarray(f.log_probs)[:, :T], ref.log_probs, rtol=rtol, name=f"{what} log_probs")
            | require_close(np.asarray(f.attention)[:, :T, :S], ref.attention, rtol=rtol,
                            name=f"{what} attention"))


# -- padding and batch rows ------------------------------------------------------------------

def extra_pad_changes_no_real_value(impl, example) -> Measure:
    """src + PAD columns, tgt + PAD columns: loss, grads, log_probs[:, :T] and attention[:, :T, :S] unchanged."""
    case, extra_src, extra_tgt = example
    cfg, p, src, src_len, tgt = case
    B, S = src.shape
    T = tgt.shape[1] - 1
    wide = ModelCase(cfg, p, np.concatenate([src, np.full((B, extra_src), cfg.pad_id)], axis=1), src_len,
                     np.concatenate([tgt, np.full((B, extra_tgt), cfg.pad_id)], axis=1))
    f, loss, grads = _run(impl, case)
    f2, loss2, grads2 = _run(impl, wide)
    tol = same_tolerance(cfg.dtype)
    masked = np.asarray(f2.attention)[:, :, S:]
    require(bool(np.all(masked == 0.0)), f"attention at the {extra_src} added PAD source columns is not exactly 0 "
                                         f"(max {np.abs(masked).max(initial=0.0)!r})")
    return (_outputs_close(f2, f, tol, "with PAD columns:", T, S)
            | require_close(loss2, loss, rtol=tol, atol=0.0, name="with PAD columns: loss_and_grads loss")
            | _grads_close(grads2, grads, tol, "with PAD columns:"))


def rows_do_not_depend_on_other_rows(impl, example) -> Measure:
    """Row b alone or in a permuted batch gives the same log_probs and attention; g = sum_b (n_b / N) g_b."""
    case, perm = example
    cfg, p, src, src_len, tgt = case
    perm = np.asarray(perm)
    f, loss, grads = _run(impl, case)
    fp, loss_p, grads_p = _run(impl, ModelCase(cfg, p, src[perm], src_len[perm], tgt[perm]))
    tol = same_tolerance(cfg.dtype)
    measure = (require_close(np.asarray(fp.log_probs), np.asarray(f.log_probs)[perm], rtol=tol,
                             name=f"permuted batch {perm.tolist()}: log_probs")
               | require_close(np.asarray(fp.attention), np.asarray(f.attention)[perm], rtol=tol,
                               name=f"permuted batch {perm.tolist()}: attention")
               | require_close(loss_p, loss, rtol=tol, atol=0.0, name="permuted batch: loss")
               | _grads_close(grads_p, grads, tol, "permuted batch:"))
    # The loss is a mean over the batch's non-PAD labels, so the batch gradient is the
    # label-count-weighted mean of the rows' gradients (each row alone has n_b labels).
    counts = (tgt[:, 1:] != cfg.pad_id).sum(axis=1)
    combined = {name: np.zeros(g.shape) for name, g in grads.items()}
    for b in range(src.shape[0]):
        row = ModelCase(cfg, p, src[b:b + 1], src_len[b:b + 1], tgt[b:b + 1])
        fb, _, gb = _run(impl, row)
        measure |= (require_close(np.asarray(fb.log_probs)[0], np.asarray(f.log_probs)[b], rtol=tol,
                                  name=f"row {b} alone vs in the batch: log_probs")
                    | require_close(np.asarray(fb.attention)[0], np.asarray(f.attention)[b], rtol=tol,
                                    name=f"row {b} alone vs in the batch: attention"))
        for name in combined:
            combined[name] += np.asarray(gb[name], np.float64) * (counts[b] / counts.sum())
    return measure | _grads_close(grads, combined, tol, "batch vs sum_b (n_b / N) g_b:")


# -- gradients ---------------------------------------------------------------------------------

def gradients_match_the_oracle(impl, case: ModelCase) -> Measure:
    """loss, log_probs, attention and every d loss / d param equal the 30-digit oracle within 1e-10 (float64)."""
    cfg, p, src, src_len, tgt = case
    ref = oracle.evaluate(p, cfg, src, src_len, tgt, dps=ORACLE_DPS).as_float64()
    f, loss, grads = _run(impl, case)
    measure = (require_close(f.loss, ref.loss, rtol=ORACLE_RTOL, atol=0.0, name="forward loss vs oracle")
               | require_close(loss, ref.loss, rtol=ORACLE_RTOL, atol=0.0, name="loss_and_grads loss vs oracle")
               | require_close(f.log_probs, ref.log_probs, rtol=ORACLE_RTOL, name="log_probs vs oracle"))
    if ref.attention is not None:   # the baseline has no attention to compare
        measure |= require_close(f.attention, ref.attention, rtol=ORACLE_RTOL, name="attention vs oracle")
    return measure | _grads_close(grads, ref.grads, ORACLE_RTOL, "vs oracle:")


def gradients_match_finite_differences(impl, example) -> Measure:
    """d loss / d p at sampled coordinates equals the 40-digit central difference (loss(p+h) - loss(p-h)) / 2h."""
    case, picks = example
    cfg, p, src, src_len, tgt = case
    _, loss, grads = _run(impl, case)
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


# -- decoding ------------------------------------------------------------------------------------

def _teacher_forced(impl, case: DecodeCase, tokens):
    """forward on y_in = [BOS, tokens]: log_probs [B, max_len, V] and attention [B, max_len, S].

    The labels are the tokens and a final EOS, so at least one label is not PAD
    and the loss is defined; the last label is never an input and changes nothing.
    """
    cfg = case.config
    B = tokens.shape[0]
    tgt = np.concatenate([np.full((B, 1), cfg.bos_id), tokens, np.full((B, 1), cfg.eos_id)], axis=1)
    f = _call("forward", impl.forward, case.params, cfg, case.src, case.src_len, tgt)
    n = tokens.shape[1]
    return np.asarray(f.log_probs, np.float64)[:, :n], np.asarray(f.attention, np.float64)[:, :n]


def _tie_tolerance(dtype, log_probs_row) -> float:
    """Decoding and forward compute a step's log-probs by the same formulas in another order."""
    return same_tolerance(dtype) * (1.0 + float(np.max(np.abs(log_probs_row))))


def _well_formed(out, case: DecodeCase, what: str) -> tuple[np.ndarray, np.ndarray]:
    """tokens [B, max_len] and lengths [B]: EOS only last, length max_len without it, PAD after."""
    cfg, B = case.config, case.src.shape[0]
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    require(tokens.shape == (B, case.max_len), f"{what}: tokens shape {tokens.shape}, expected {(B, case.max_len)}")
    require(lengths.shape == (B,), f"{what}: lengths shape {lengths.shape}, expected {(B,)}")
    for b in range(B):
        n = int(lengths[b])
        row = tokens[b].tolist()
        require(1 <= n <= case.max_len, f"{what}: lengths[{b}] = {n} outside [1, max_len = {case.max_len}]")
        require(cfg.eos_id not in row[:n - 1], f"{what}: row {b} {row} has EOS before its end (length {n})")
        require(row[n - 1] == cfg.eos_id or n == case.max_len,
                f"{what}: row {b} {row} stops at length {n} without EOS before max_len {case.max_len}")
        require(all(t == cfg.pad_id for t in row[n:]), f"{what}: row {b} {row} is not PAD after length {n}")
    return tokens, lengths


def _emitted_sums(log_probs, tokens, lengths) -> np.ndarray:
    picked = np.take_along_axis(log_probs, tokens[:, :, None], axis=2)[:, :, 0]
    return np.where(np.arange(tokens.shape[1])[None, :] < lengths[:, None], picked, 0.0).sum(axis=1)


def greedy_emits_the_argmax_of_forward(impl, case: DecodeCase) -> Measure:
    """Each greedy token y_t maximises forward's log p(. | BOS, y_<t) (a near-tie within rounding counts)."""
    out = _call("greedy_decode", impl.greedy_decode, case.params, case.config, case.src, case.src_len,
                case.max_len)
    tokens, lengths = _well_formed(out, case, "greedy_decode")
    log_probs, _ = _teacher_forced(impl, case, tokens)
    gap = 0.0
    for b in range(tokens.shape[0]):
        for t in range(int(lengths[b])):
            lp = log_probs[b, t]
            best, tok = int(np.argmax(lp)), int(tokens[b, t])
            gap = max(gap, float(lp[best] - lp[tok]))
            require(lp[tok] >= lp[best] - _tie_tolerance(case.config.dtype, lp),
                    f"greedy row {b} step {t} emitted {tok} (log p {lp[tok]!r}) but forward's argmax is {best} "
                    f"(log p {lp[best]!r}); tokens {tokens[b].tolist()}", Measure(gap))
    return Measure(gap)


def beam_of_width_one_is_greedy(impl, case: DecodeCase) -> Measure:
    """beam_search(K = 1) returns greedy's tokens, lengths, scores and attention (up to an exact near-tie)."""
    cfg = case.config
    args = (case.params, cfg, case.src, case.src_len)
    g = _call("greedy_decode", impl.greedy_decode, *args, case.max_len)
    k1 = _call("beam_search", impl.beam_search, *args, 1, case.max_len, False)
    g_tok, g_len = _well_formed(g, case, "greedy_decode")
    k_tok, k_len = _well_formed(k1, case, "beam_search(K=1)")
    log_probs, _ = _teacher_forced(impl, case, g_tok)
    tol = same_tolerance(cfg.dtype)
    measure = Measure()
    for b in range(g_tok.shape[0]):
        differ = np.flatnonzero(g_tok[b] != k_tok[b])
        if differ.size and differ[0] < min(g_len[b], k_len[b]):
            # They may part only where two tokens tie within rounding (the prefix up to t is shared).
            t = int(differ[0])
            lp = log_probs[b, t]
            for tok in (g_tok[b, t], k_tok[b, t]):
                require(lp[tok] >= lp.max() - _tie_tolerance(cfg.dtype, lp),
                        f"row {b} step {t}: greedy emits {g_tok[b].tolist()}, beam K=1 emits {k_tok[b].tolist()}, "
                        f"and token {tok} is not a (near-)argmax of forward (log p {lp[tok]!r} vs max {lp.max()!r})")
            continue
        require(g_len[b] == k_len[b] and bool(np.array_equal(g_tok[b], k_tok[b])),
                f"row {b}: greedy {g_tok[b].tolist()} (length {g_len[b]}) vs beam K=1 {k_tok[b].tolist()} "
                f"(length {k_len[b]})")
        n = int(g_len[b])
        measure |= (require_close(np.asarray(k1.scores)[b], np.asarray(g.scores)[b], rtol=tol,
                                  atol=tol * (1 + abs(float(np.asarray(g.scores)[b]))), name=f"row {b} score")
                    | require_close(np.asarray(k1.attention)[b, :n], np.asarray(g.attention)[b, :n], rtol=tol,
                                    atol=tol, name=f"row {b} attention"))
    return measure


def decoded_scores_and_attention_match_forward(impl, case: DecodeCase) -> Measure:
    """Greedy's and beam's score = sum_t log p(y_t) and attention[:n] = forward's, on BOS + their own tokens."""
    cfg = case.config
    args = (case.params, cfg, case.src, case.src_len)
    measure = Measure()
    runs = [("greedy_decode", lambda: impl.greedy_decode(*args, case.max_len))]
    if impl.supports("beam_search"):
        runs.append((f"beam_search(K={case.beam_size}, length_normalize={case.length_normalize})",
                     lambda: impl.beam_search(*args, case.beam_size, case.max_len, case.length_normalize)))
    tol = same_tolerance(cfg.dtype)
    for what, run in runs:
        out = _call(what, run)
        tokens, lengths = _well_formed(out, case, what)
        log_probs, attention = _teacher_forced(impl, case, tokens)
        sums = _emitted_sums(log_probs, tokens, lengths)
        picked = np.take_along_axis(log_probs, tokens[:, :, None], axis=2)[:, :, 0]
        bound = tol * (1.0 + np.where(np.arange(case.max_len) < lengths[:, None], np.abs(picked), 0).sum(axis=1))
        scores = np.asarray(out.scores, np.float64)
        require(scores.shape == sums.shape, f"{what}: scores shape {scores.shape}, expected {sums.shape}")
        for b in range(len(sums)):
            measure |= require_close(scores[b], sums[b], rtol=0.0, atol=float(bound[b]),
                                     name=f"{what} row {b} score vs sum of forward's log p of {tokens[b].tolist()}")
            n = int(lengths[b])
            measure |= require_close(np.asarray(out.attention)[b, :n], attention[b, :n], rtol=0.0, atol=tol,
                                     name=f"{what} row {b} attention vs forward's")
    return measure


def _all_sequences(V: int, eos: int, max_len: int) -> list[tuple[int, ...]]:
    """Every hypothesis: EOS-terminated within max_len, or max_len tokens without EOS."""
    others = [v for v in range(V) if v != eos]
    seqs = []
    for n in range(max_len):
        seqs += [s + (eos,) for s in _product(others, n)]
    return seqs + _product(others, max_len)


def _product(values, n):
    out = [()]
    for _ in range(n):
        out = [s + (v,) for s in out for v in values]
    return out


def wide_beam_returns_the_best_sequence(impl, case: DecodeCase) -> Measure:
    """With K >= the number of hypotheses nothing is pruned: beam returns argmax_y key(y) over all y.

    key(y) = sum_t log p(y_t | y_<t) (score / length with ``length_normalize``);
    hypotheses are the EOS-terminated sequences within max_len and the max_len
    sequences without EOS (live beams count as hypotheses at max_len). Keys
    come from forward; a near-tie within rounding counts as best.
    """
    cfg = case.config
    seqs = _all_sequences(cfg.V_tgt, cfg.eos_id, case.max_len)
    out = _call("beam_search", impl.beam_search, case.params, cfg, case.src, case.src_len, len(seqs),
                case.max_len, case.length_normalize)
    tokens, lengths = _well_formed(out, case, f"beam_search(K={len(seqs)})")
    all_tokens = np.full((len(seqs), case.max_len), cfg.pad_id)
    for i, s in enumerate(seqs):
        all_tokens[i, :len(s)] = s
    all_lengths = np.array([len(s) for s in seqs])
    measure = Measure()
    for b in range(case.src.shape[0]):
        row = case._replace(src=np.repeat(case.src[b:b + 1], len(seqs), axis=0),
                            src_len=np.repeat(case.src_len[b:b + 1], len(seqs)))
        log_probs, _ = _teacher_forced(impl, row, all_tokens)
        keys = _emitted_sums(log_probs, all_tokens, all_lengths)
        if case.length_normalize:
            keys = keys / all_lengths
        found = seqs.index(tuple(int(t) for t in tokens[b, :lengths[b]]))
        best = int(np.argmax(keys))
        gap = float(keys[best] - keys[found])
        measure |= Measure(gap)
        require(gap <= same_tolerance(cfg.dtype) * (1 + abs(float(keys[best]))),
                f"row {b}: beam (K = {len(seqs)}, length_normalize = {case.length_normalize}) returned "
                f"{list(seqs[found])} with key {keys[found]!r}, but {list(seqs[best])} has key {keys[best]!r}",
                Measure(gap))
    return measure


# -- precision and determinism ---------------------------------------------------------------------

def float32_agrees_with_float64(impl, case: ModelCase) -> Measure:
    """float32 results (loss, log_probs, attention, grads) equal float64's on the same inputs within 4096 eps32."""
    cfg, p, src, src_len, tgt = case
    p32 = {n: np.asarray(v, np.float32) for n, v in p.items()}
    p64 = {n: v.astype(np.float64) for n, v in p32.items()}      # the same (float32-exact) values
    c32, c64 = cfg.replace(dtype="float32"), cfg.replace(dtype="float64")
    f32, loss32, g32 = _run(impl, ModelCase(c32, p32, src, src_len, tgt))
    f64, loss64, g64 = _run(impl, ModelCase(c64, p64, src, src_len, tgt))
    for name, a in [("log_probs", f32.log_probs), ("attention", f32.attention)] + list(g32.items()):
        require(np.asarray(a).dtype == np.float32, f"float32 config: {name} has dtype {np.asarray(a).dtype}")
    tol = same_tolerance(np.float32)
    return (_outputs_close(f32, f64, tol, "float32 vs float64:")
            | require_close(loss32, loss64, rtol=tol, atol=0.0, name="float32 vs float64: loss_and_grads loss")
            | _grads_close(g32, g64, tol, "float32 vs float64:"))


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
    for name, call in calls.items():
        first, second = _flatten(_call(name, call)), _flatten(_call(name, call))
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


def _require_finite(name: str, x) -> Measure:
    a = np.asarray(x, np.float64)
    if not np.all(np.isfinite(a)):
        i = tuple(int(j) for j in np.argwhere(~np.isfinite(a))[0])
        raise PropertyFailure(f"{name}: non-finite value {a[i]!r} at index {i}", Measure(math.inf, math.inf))
    return Measure()


def large_values_give_finite_results(impl, example) -> Measure:
    """Finite inputs, |score| and |logit| up to 1e4 and saturated gates: loss, log_probs, attention,
    grads and decoded scores are all finite."""
    case, max_len = example
    cfg, p, src, src_len, tgt = case
    f = _call("forward", impl.forward, p, cfg, src, src_len, tgt)
    _require_finite("forward loss", f.loss)
    _require_finite("forward log_probs", f.log_probs)
    _require_finite("forward attention", f.attention)
    if impl.supports("loss_and_grads"):
        loss, grads = _call("loss_and_grads", impl.loss_and_grads, p, cfg, src, src_len, tgt)
        _require_finite("loss_and_grads loss", loss)
        for name, g in grads.items():
            _require_finite(f"d loss / d {name}", g)
    if impl.supports("greedy_decode"):
        out = _call("greedy_decode", impl.greedy_decode, p, cfg, src, src_len, max_len)
        _require_finite("greedy_decode scores", out.scores)
        _require_finite("greedy_decode attention", out.attention)
    if impl.supports("beam_search"):
        out = _call("beam_search", impl.beam_search, p, cfg, src, src_len, 2, max_len, False)
        _require_finite("beam_search scores", out.scores)
        _require_finite("beam_search attention", out.attention)
    return Measure()


# -- the LSTM cell -----------------------------------------------------------------------------------

def _cell(impl, case: CellCase):
    h, c, gates = (np.asarray(a) for a in _call("lstm_cell", impl.lstm_cell, *case))
    B, H = case.h.shape
    for name, a, shape in (("h'", h, (B, H)), ("c'", c, (B, H)), ("gates", gates, (B, 4 * H))):
        require(a.shape == shape, f"lstm_cell: {name} shape {a.shape}, expected {shape}")
        _require_finite(f"lstm_cell {name}", a)
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


CELL_DPS = 30


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


def _decode_cases(max_len=6, max_beam=4, **sizes):
    def strategy(impl):
        @st.composite
        def draw(draw):
            cfg, p, src, src_len, _ = draw(model_cases_for(impl, **sizes))
            return DecodeCase(cfg, p, src, src_len, draw(st.integers(1, max_len)), draw(st.integers(1, max_beam)),
                              draw(st.booleans()))
        return draw()
    return strategy


def _float32_and_float64(impl):
    if not {"float32", "float64"} <= set(getattr(impl, "dtypes", ())):
        return st.nothing()
    # Somewhat deeper and wider than the default cases, so that float32 rounding accumulates.
    return model_cases_for(impl, dtypes=("float64",), max_E=8, max_H=8, max_V=12, max_S=8, max_T=8)


def _repeated(impl):
    return st.tuples(model_cases_for(impl), st.integers(1, 5), st.integers(1, 3))


MAX_ABS_SCORE = 1e4


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


# -- pinned examples (worked cases and every bug the suite found) ---------------------------------------

def _pinned(score="dot", L=2, input_feeding=True, dtype="float64", seed=0, **sizes) -> ModelCase:
    """spec.cases.random_case: row 1 one source position shorter and ending in a PAD label."""
    cfg = Config(V_src=6, V_tgt=6, E=2, H=3, L=L, score=score, input_feeding=input_feeding, dtype=dtype)
    p, src, src_len, tgt = random_case(cfg, seed=seed, **sizes)
    return ModelCase(cfg, {n: v.astype(dtype) for n, v in p.items()}, src, src_len, tgt)


def _pinned_decode(max_len=3, beam_size=2, length_normalize=False) -> DecodeCase:
    cfg, p, src, src_len, _ = _pinned(L=1)
    return DecodeCase(cfg, p, src, src_len, max_len, beam_size, length_normalize)


def _pinned_cell(z_scale: float) -> CellCase:
    """x = h = 0, c = (1, -2): gates = activations of the biases, set to +-z_scale."""
    H, D = 2, 1
    b = np.array([1.0, -1.0] * (2 * H)) * z_scale
    return CellCase(np.zeros((1, D)), np.zeros((1, H)), np.array([[1.0, -2.0]]), np.ones((4 * H, D)),
                    np.ones((4 * H, H)), b, np.zeros(4 * H))


PROPERTIES = [
    Property("extra_pad_changes_no_real_value", extra_pad_changes_no_real_value, _padding,
             needs=("forward", "loss_and_grads"),
             examples=((_pinned(), 2, 2), (_pinned(L=1, input_feeding=False), 1, 0))),
    Property("rows_do_not_depend_on_other_rows", rows_do_not_depend_on_other_rows, _permuted,
             needs=("forward", "loss_and_grads"), examples=((_pinned(), np.array([1, 0])),)),
    Property("gradients_match_the_oracle", gradients_match_the_oracle, _tiny,
             needs=("forward", "loss_and_grads"),
             examples=(_pinned(input_feeding=False), _pinned(L=1))),
    Property("gradients_match_finite_differences", gradients_match_finite_differences, _with_coordinate,
             needs=("loss_and_grads",),
             examples=((_pinned(B=2, S=4, T=4), [("decoder.lstm.weight_hh_l1", (0, 0))]),)),
    Property("greedy_emits_the_argmax_of_forward", greedy_emits_the_argmax_of_forward, _decode_cases(),
             needs=("forward", "greedy_decode"), examples=(_pinned_decode(),)),
    Property("beam_of_width_one_is_greedy", beam_of_width_one_is_greedy, _decode_cases(),
             needs=("forward", "greedy_decode", "beam_search"), examples=(_pinned_decode(max_len=4),)),
    Property("decoded_scores_and_attention_match_forward", decoded_scores_and_attention_match_forward,
             _decode_cases(), needs=("forward", "greedy_decode"),   # and beam_search where implemented
             examples=(_pinned_decode(beam_size=3, length_normalize=True),)),
    Property("wide_beam_returns_the_best_sequence", wide_beam_returns_the_best_sequence,
             _decode_cases(max_len=3, max_V=5, max_B=2), needs=("forward", "beam_search"),
             examples=(_pinned_decode(max_len=2, length_normalize=True),)),
    Property("float32_agrees_with_float64", float32_agrees_with_float64, _float32_and_float64,
             needs=("forward", "loss_and_grads"), examples=(_pinned(),)),
    Property("results_are_bit_identical", results_are_bit_identical, _repeated, needs=("forward",),
             examples=((_pinned(), 3, 2),)),
    Property("large_values_give_finite_results", large_values_give_finite_results, _large, needs=("forward",),
             examples=((scale_up(_pinned(), MAX_ABS_SCORE, MAX_ABS_SCORE, 1.0, 1.0, 1.0), 3),
                       (scale_up(_pinned(), MAX_ABS_SCORE, MAX_ABS_SCORE, 1e4, 1e4, 1e4), 3))),
    Property("lstm_gates_and_state_are_bounded", lstm_gates_and_state_are_bounded, _cells, needs=("lstm_cell",),
             examples=(_pinned_cell(0.5), _pinned_cell(1e4))),
    Property("lstm_cell_matches_the_equations", lstm_cell_matches_the_equations, _cells, needs=("lstm_cell",),
             examples=(_pinned_cell(0.5), _pinned_cell(40.0))),
]

for _prop in PROPERTIES:
    register(_prop)
