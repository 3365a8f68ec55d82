"""Decoding API: greedy and beam search (MODEL.md, Decoding).

Both validate their arguments before any kernel runs and use the same decoder
step as the teacher-forced forward pass, so ``forward`` on the decoded tokens
reports the same log-probabilities and attention (to rounding when the call
runs its products on tiles: ``kernels_matmul.use_tiles``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..spec.validate import check_params, check_positive_int, check_source
from .kernels_decode import beam_kernel, greedy_kernel
from .kernels_matmul import one_pool, use_tiles
from .model import _check_config, _check_finite, pack_weights

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
    params = check_params(params, config, dtype=config.dtype)
    src, src_len = check_source(config, src, src_len)
    max_len = check_positive_int("max_len", max_len)
    return config, params, np.ascontiguousarray(src), np.ascontiguousarray(src_len), max_len


def greedy_decode(params, config, src, src_len, max_len: int) -> DecodeResult:
    """Start from BOS, feed back the argmax (lowest id on ties), stop a row at EOS or max_len."""
    config, params, src, src_len, max_len = _prepare(params, config, src, src_len, max_len)
    w = pack_weights(params, config, tiles=use_tiles(src.shape[0], config.H))
    with one_pool(w.tiles):
        tokens, lengths, scores, attention = greedy_kernel(w, src, src_len, max_len, config.bos_id,
                                                           config.eos_id, config.pad_id)
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
    if not isinstance(length_normalize, (bool, np.bool_)):
        raise TypeError(f"length_normalize: expected a bool, got {type(length_normalize).__name__}")
    w = pack_weights(params, config, tiles=use_tiles(src.shape[0] * beam_size, config.H))
    with one_pool(w.tiles):
        tokens, lengths, scores, normalized, attention = beam_kernel(
            w, src, src_len, beam_size, max_len, bool(length_normalize), config.bos_id, config.eos_id,
            config.pad_id)
    _check_finite("beam_search", scores)
    return DecodeResult(tokens, lengths, scores, normalized, attention)
