"""A strict, minimal NumPy implementation of MODEL.md, and the base of the mutant catalogue.

``NumpyReference`` is a second implementation of the whole model, written from
the equations and independent of ``attnspec.impl``: attention, the teacher-forced
forward pass, a hand-written backward through time, greedy decoding and beam
search, in float64 or float32. It is small and slow (Python loops over time)
and meant to be read: ``reference_ops`` holds each piece with its backward
beside it, ``reference_model`` composes them.

``NumpyReference(bugs=("mask_ignored",))`` is the same code with one deliberate
mistake switched on where it lives; ``spec.mutants`` names and describes them.
The conformance kit must tell every such mutant from the correct reference.

Examples
--------
>>> from attnspec.spec.cases import random_case
>>> from attnspec.spec.config import Config
>>> cfg = Config(V_src=6, V_tgt=6, E=2, H=2)
>>> params, src, src_len, tgt = random_case(cfg)
>>> loss, grads = NumpyReference().loss_and_grads(params, cfg, src, src_len, tgt)
>>> grads["attention.W_c"].shape
(2, 4)
"""

from __future__ import annotations

import numpy as np

from . import reference_model as model
from . import reference_ops as ops
from .config import SCORES, Config
from .protocol import DecodeOutput, ForwardOutput, Implementation
from .validate import (as_float_array, check_attention_params, check_batch, check_params, check_positive_int,
                       check_source, src_len_from_mask)

__all__ = ["NumpyReference"]


# -- argument checks at the boundary ----------------------------------------------------

def _check_config(config) -> Config:
    if not isinstance(config, Config):
        raise TypeError(f"config: expected an attnspec Config, got {type(config).__name__}")
    return config


def _check_shape(name: str, a: np.ndarray, shape: tuple) -> None:
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")


def _check_attention_args(score, query, keys, mask, W_a, v_a):
    """query (B, H), keys (B, S, H) of one float dtype, mask a non-empty prefix per row, W_a/v_a per score."""
    if score not in SCORES:
        raise ValueError(f"score: expected one of {SCORES}, got {score!r}")
    query = as_float_array("query", query, 2)
    B, H = query.shape
    keys = as_float_array("keys", keys, 3, query.dtype)
    if keys.shape[0] != B or keys.shape[2] != H or keys.shape[1] < 1:
        raise ValueError(f"keys: expected shape ({B}, S >= 1, {H}) to match query {query.shape}, got {keys.shape}")
    src_len_from_mask(mask, B, keys.shape[1])
    mask = np.asarray(mask)
    W_a, v_a = check_attention_params(score, H, W_a, v_a,
                                      lambda name, value, ndim: as_float_array(name, value, ndim, query.dtype))
    return query, keys, mask, W_a, v_a


# -- the implementation ----------------------------------------------------------------------

class NumpyReference(Implementation):
    """MODEL.md in plain NumPy, with optional deliberate defects.

    Parameters
    ----------
    bugs : iterable of str
        Names from ``spec.mutants.MUTANTS`` to switch on; empty (default) is the
        correct model. The name shown in reports is then ``"mutant:<names>"``.
    """

    def __init__(self, bugs=()):
        from .mutants import MUTANTS                                   # the catalogue imports this module

        bugs = (bugs,) if isinstance(bugs, str) else tuple(bugs)
        unknown = [b for b in bugs if b not in MUTANTS]
        if unknown:
            raise ValueError(f"bugs: unknown defect(s) {unknown}; expected names of spec.mutants.MUTANTS")
        self.bugs = frozenset(bugs)
        self.name = "mutant:" + "+".join(sorted(self.bugs)) if self.bugs else "numpy reference"

    # one attention step and one LSTM cell, on their own

    def attention(self, score, query, keys, mask, W_a=None, v_a=None):
        query, keys, mask, W_a, v_a = _check_attention_args(score, query, keys, mask, W_a, v_a)
        a, ctx, _ = ops.attention(score, query, keys, mask, W_a, v_a, self.bugs)
        return a, ctx

    def attention_vjp(self, score, query, keys, mask, g_ctx, W_a=None, v_a=None):
        query, keys, mask, W_a, v_a = _check_attention_args(score, query, keys, mask, W_a, v_a)
        g_ctx = as_float_array("g_ctx", g_ctx, 2, query.dtype)
        _check_shape("g_ctx", g_ctx, query.shape)
        _, _, cache = ops.attention(score, query, keys, mask, W_a, v_a, self.bugs)
        return ops.attention_backward(g_ctx, cache, self.bugs)

    def lstm_cell(self, x, h, c, W_ih, W_hh, b_ih, b_hh):
        x = as_float_array("x", x, 2)
        B, D = x.shape
        h = as_float_array("h", h, 2, x.dtype)
        H = h.shape[1]
        args = {"c": c, "W_ih": W_ih, "W_hh": W_hh, "b_ih": b_ih, "b_hh": b_hh}
        shapes = {"c": (B, H), "W_ih": (4 * H, D), "W_hh": (4 * H, H), "b_ih": (4 * H,), "b_hh": (4 * H,)}
        _check_shape("h", h, (B, H))
        for name, shape in shapes.items():
            args[name] = as_float_array(name, args[name], len(shape), x.dtype)
            _check_shape(name, args[name], shape)
        h_new, c_new, k = ops.lstm_cell(x, h, *args.values(), bugs=self.bugs)
        return h_new, c_new, np.concatenate([k["i"], k["f"], k["g"], k["o"]], axis=1)

    # the whole model

    def _prepare(self, params, config, src, src_len, tgt):
        config = _check_config(config)
        P = check_params(params, config, dtype=config.dtype, products_fit=True)
        src, src_len, tgt = check_batch(config, src, src_len, tgt)
        return P, config, src, src_len, tgt

    def forward(self, params, config, src, src_len, tgt) -> ForwardOutput:
        P, config, src, src_len, tgt = self._prepare(params, config, src, src_len, tgt)
        loss, log_probs, attention, _ = model.run(P, config, src, src_len, tgt, self.bugs, backward=False)
        return ForwardOutput(loss, log_probs, attention)

    def loss_and_grads(self, params, config, src, src_len, tgt):
        P, config, src, src_len, tgt = self._prepare(params, config, src, src_len, tgt)
        loss, _, _, grads = model.run(P, config, src, src_len, tgt, self.bugs, backward=True)
        return loss, grads

    def greedy_decode(self, params, config, src, src_len, max_len) -> DecodeOutput:
        config = _check_config(config)
        P = check_params(params, config, dtype=config.dtype, products_fit=True)
        src, src_len = check_source(config, src, src_len)
        max_len = check_positive_int("max_len", max_len)
        return DecodeOutput(*model.greedy(P, config, src, src_len, max_len, self.bugs))

    def beam_search(self, params, config, src, src_len, beam_size, max_len, length_normalize=False) -> DecodeOutput:
        config = _check_config(config)
        P = check_params(params, config, dtype=config.dtype, products_fit=True)
        src, src_len = check_source(config, src, src_len)
        beam_size, max_len = check_positive_int("beam_size", beam_size), check_positive_int("max_len", max_len)
        if not isinstance(length_normalize, (bool, np.bool_)):
            raise TypeError(f"length_normalize: expected a bool, got {type(length_normalize).__name__}")
        return DecodeOutput(*model.beam(P, config, src, src_len, beam_size, max_len, bool(length_normalize),
                                        self.bugs))
