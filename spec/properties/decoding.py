"""Decoding properties: greedy and beam search agree with forward on their own tokens.

greedy_decode and beam_search are checked through forward run on BOS and the
tokens they emitted (teacher forcing): greedy's token is forward's argmax,
beam of width 1 is greedy, the reported scores and attention are forward's,
and a beam wide enough to prune nothing finds the best sequence. Two
computations of a step's log-probabilities may differ by rounding, so a
near-tie within ``same_tolerance`` (model_checks.py) counts as a tie.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from hypothesis import strategies as st

from ..config import Config
from ..strategies import model_cases_for
from .base import Measure, Property, register, require, require_close
from .model_checks import call, pinned_case, same_tolerance

__all__ = ["DecodeCase"]


class DecodeCase(NamedTuple):
    """A decoding example: unpack as ``config, params, src, src_len, max_len, beam_size, length_normalize``."""

    config: Config
    params: dict
    src: np.ndarray
    src_len: np.ndarray
    max_len: int
    beam_size: int
    length_normalize: bool


def _teacher_forced(impl, case: DecodeCase, tokens):
    """forward on y_in = [BOS, tokens]: log_probs [B, max_len, V] and attention [B, max_len, S].

    The labels are the tokens and a final EOS, so at least one label is not PAD
    and the loss is defined; the last label is never an input and changes nothing.
    """
    cfg = case.config
    B = tokens.shape[0]
    tgt = np.concatenate([np.full((B, 1), cfg.bos_id), tokens, np.full((B, 1), cfg.eos_id)], axis=1)
    f = call("forward", impl.forward, case.params, cfg, case.src, case.src_len, tgt)
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
    out = call("greedy_decode", impl.greedy_decode, case.params, case.config, case.src, case.src_len,
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
    g = call("greedy_decode", impl.greedy_decode, *args, case.max_len)
    k1 = call("beam_search", impl.beam_search, *args, 1, case.max_len, False)
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
        out = call(what, run)
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
    out = call("beam_search", impl.beam_search, case.params, cfg, case.src, case.src_len, len(seqs),
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


# -- strategies and pinned examples --------------------------------------------------------------------

def _decode_cases(max_len=6, max_beam=4, **sizes):
    def strategy(impl):
        @st.composite
        def draw(draw):
            cfg, p, src, src_len, _ = draw(model_cases_for(impl, **sizes))
            return DecodeCase(cfg, p, src, src_len, draw(st.integers(1, max_len)), draw(st.integers(1, max_beam)),
                              draw(st.booleans()))
        return draw()
    return strategy


def _pinned_decode(max_len=3, beam_size=2, length_normalize=False) -> DecodeCase:
    cfg, p, src, src_len, _ = pinned_case(L=1)
    return DecodeCase(cfg, p, src, src_len, max_len, beam_size, length_normalize)


PROPERTIES = [
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
]

for _prop in PROPERTIES:
    register(_prop)
