"""Decoding API: greedy and beam search (MODEL.md, Decoding).

Both validate their arguments before any kernel runs and use the same decoder
step as the teacher-forced forward pass, so ``forward`` on the decoded tokens
reports the same log-probabilities and attention (to rounding when the call
runs its products on tiles: ``kernels_matmul.use_tiles``).

Rows never interact: a large call decodes the two halves of its batch at the
same time on two threads (``use_halves``), each with one BLAS thread.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..spec.validate import check_params, check_positive_int, check_source
from .kernels_decode import beam_kernel, greedy_kernel
from .kernels_matmul import one_pool, use_tiles
from .model import _check_config, _check_finite, pack_weights, physical_memory

__all__ = ["DecodeResult", "greedy_decode", "beam_search"]


@dataclass(frozen=True)
class DecodeResult:
    """Decoded hypotheses, one per source row.

    tokens : int64 [B, max_len]
        Emitted tokens (BOS not included), EOS included when emitted, PAD after.
    lengths : int64 [B]
        Number of emitted tokens, EOS included.
    scores : [B]
        Sum of the log-probabilities of the emitted tokens.
    normalized_scores : [B]
        scores / lengths (what ``length_normalize=True`` ranks hypotheses by).
    attention : [B, max_len, S]
        Attention weights of every emitted step, zeros after (and for score "none").
    """

    tokens: np.ndarray
    lengths: np.ndarray
    scores: np.ndarray
    normalized_scores: np.ndarray
    attention: np.ndarray


def _prepare(params, config, src, src_len, max_len):
    config = _check_config(config)
    params = check_params(params, config, dtype=config.dtype, products_fit=True)
    src, src_len = check_source(config, src, src_len)
    max_len = check_positive_int("max_len", max_len)
    return config, params, np.ascontiguousarray(src), np.ascontiguousarray(src_len), max_len


def _check_memory(names: str, config, src, beam_size: int, max_len: int) -> None:
    """Refuse a call whose arrays would not fit in this machine's memory, naming ``names``.

    A decoding call keeps, for each of its B * beam_size rows and each of max_len
    steps, the attention weights (S of them), the token and the parent beam, and
    returns (B, max_len, S) attention weights; each row also needs a step's
    logits (V) and states. A huge max_len or beam size would otherwise end in a
    MemoryError from inside the kernel or in the system's out-of-memory killer.
    (Beam search also ranks 2 * beam_size^2 candidates per source row.)
    """
    B, S = src.shape
    item = np.dtype(config.dtype).itemsize
    rows = B * beam_size
    per_step = rows * (S * item + 16) + B * (S * item + 8)
    per_row = item * (config.V_tgt + config.E + 4 * config.H + 8 * config.H * config.L)
    need = max_len * per_step + rows * per_row + 64 * beam_size ** 2  # Python ints: no overflow
    have = physical_memory()
    if need > have:
        raise ValueError(f"{names}: decoding B = {B} source rows with beam size {beam_size} for up to {max_len} "
                         f"steps needs about {need / 2**30:.3g} GiB, more than this machine's {have / 2**30:.3g} GiB")


HALVES_MIN_ROWS = 128


def use_halves(B: int, rows: int) -> bool:
    """Whether a decoding call of B source rows and ``rows`` rows per step (B * beam size)
    decodes the two halves of its batch on two threads.

    Besides the products, a decoding step does work on one core (the LSTM's gates,
    the attention, the vocabulary pass, beam search's ranking) that grows with
    the rows. Time in halves / time whole, measured on the 2-core machine in
    session 17 (docs/performance-history.md): 0.64-0.89 at 160 rows (small greedy
    decoding with B = 160, small beam search), 0.80-0.90 at medium size with 128
    and 320 rows, 0.94-0.96 at 160 rows of H = 512; but 1.22-1.75 in seven
    alternations of eight at 32 rows (small greedy), 0.86-1.12 at 64 (medium
    greedy, a gain in float64 only), 1.03-1.10 at 80 rows of H = 512 (large
    beam search).
    """
    return B >= 2 and rows >= HALVES_MIN_ROWS


_second_thread = None                       # (pid, executor), made at the first call in halves


def _in_halves(decode_rows, src, src_len):
    """``decode_rows(src, src_len)`` (a tuple of arrays, one row per source row) for the
    first half of the rows on a second thread and the second half on this one, joined.

    Each half's rows get what a call on that half alone gives them (exactly: the
    kernels do not share state), which may differ from a call on the whole batch in
    the last bits, as any change of the batch may (BLAS sums other shapes in other
    orders).
    """
    global _second_thread
    # A forked child inherits the executor but not its thread: work sent there never runs.
    if _second_thread is None or _second_thread[0] != os.getpid():
        _second_thread = os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnspec-decode")
    half = src.shape[0] // 2
    first = _second_thread[1].submit(decode_rows, src[:half], src_len[:half])
    second = decode_rows(src[half:], src_len[half:])
    return tuple(np.concatenate(pair) for pair in zip(first.result(), second))


def _decode(kernel, params, config, src, src_len, rows, *args):
    """kernel(w, src, src_len, *args) over the rows of src: on tiles, in halves or whole."""
    w = pack_weights(params, config, tiles=use_tiles(rows, config.H))
    halves = use_halves(src.shape[0], rows)
    with one_pool(w.tiles or halves):
        if halves:
            return _in_halves(lambda s, n: kernel(w, s, n, *args), src, src_len)
        return kernel(w, src, src_len, *args)


def greedy_decode(params, config, src, src_len, max_len: int) -> DecodeResult:
    """Start from BOS, feed back the argmax (lowest id on ties), stop a row at EOS or max_len."""
    config, params, src, src_len, max_len = _prepare(params, config, src, src_len, max_len)
    _check_memory("max_len", config, src, 1, max_len)
    tokens, lengths, scores, attention = _decode(greedy_kernel, params, config, src, src_len, src.shape[0],
                                                 max_len, config.bos_id, config.eos_id, config.pad_id)
    _check_finite("greedy_decode", scores)
    normalized = (scores / lengths).astype(scores.dtype)
    return DecodeResult(tokens, lengths, scores, normalized, attention)


def beam_search(params, config, src, src_len, beam_size: int, max_len: int,
                length_normalize: bool = False) -> DecodeResult:
    """Beam search of width ``beam_size`` per source row.

    Beams are ranked by summed log-probability; each live beam proposes its
    2 * beam_size best tokens, an EOS among the beam_size best candidates
    finishes a hypothesis, and a row stops once beam_size hypotheses have
    finished or at max_len (its live beams then count as hypotheses). The
    returned hypothesis is the best finished one by score, or by score / length
    with ``length_normalize``. ``beam_size = 1`` gives exactly ``greedy_decode``.
    """
    config, params, src, src_len, max_len = _prepare(params, config, src, src_len, max_len)
    beam_size = check_positive_int("beam_size", beam_size)
    _check_memory("beam_size, max_len", config, src, beam_size, max_len)
    if not isinstance(length_normalize, (bool, np.bool_)):
        raise TypeError(f"length_normalize: expected a bool, got {type(length_normalize).__name__}")
    tokens, lengths, scores, normalized, attention = _decode(
        beam_kernel, params, config, src, src_len, src.shape[0] * beam_size, beam_size, max_len,
        bool(length_normalize), config.bos_id, config.eos_id, config.pad_id)
    _check_finite("beam_search", scores)
    return DecodeResult(tokens, lengths, scores, normalized, attention)
