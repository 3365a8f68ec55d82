"""The model API: parameters, forward pass, loss and gradients (MODEL.md).

Every public function validates its arguments with ``attnspec.spec.validate``
(a ``ValueError``/``TypeError`` naming the argument, before any kernel runs),
converts them to the configuration's dtype, and dispatches to the Numba
kernels, which loop over time in compiled code. Nothing here loops over time.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ..spec.config import Config, param_shapes
from ..spec.validate import all_finite, check_batch, check_params
from .kernels_attention import MODES
from .kernels_model import (Weights, generator_log_probs, generator_loss_backward, model_backward,
                            model_forward)

__all__ = ["ForwardResult", "init_params", "forward", "loss_and_grads"]


@dataclass(frozen=True)
class ForwardResult:
    """Result of a teacher-forced forward pass.

    loss : float
        Mean of -log p over the non-PAD labels ``tgt[:, 1:]``.
    log_probs : array [B, T, V_tgt]
        log softmax of the generator's logits at every decoder step.
    attention : array [B, T, S]
        Attention weights a_{t,s}; exactly 0 for s > src_len. The baseline
        ``score="none"`` has no attention and returns zeros.
    """

    loss: float
    log_probs: np.ndarray
    attention: np.ndarray


# -- parameters -------------------------------------------------------------------

def _check_config(config) -> Config:
    if not isinstance(config, Config):
        raise TypeError(f"config: expected an attnspec Config, got {type(config).__name__}")
    return config


def physical_memory() -> int:
    """This machine's memory in bytes: what a call whose arrays would exceed it is refused against."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def init_params(config: Config, seed: int) -> dict[str, np.ndarray]:
    """Random parameters for ``config``, reproducible from ``seed``, in state-dict order.

    As PyTorch initialises them: embeddings N(0, 1) (``nn.Embedding``); every LSTM
    weight and bias U(-1/sqrt(H), 1/sqrt(H)) (``nn.LSTM``); the linear maps W_a, W_c
    and the generator U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in their number of
    columns (``nn.Linear``), the generator bias with fan_in = H, v_a with 1/sqrt(H).
    Values are drawn in float64 and then rounded to ``config.dtype``.
    """
    config = _check_config(config)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed}")
    c = config
    # An upper bound on the number of parameters, from the sizes alone: with L = 10**9 even listing
    # the shapes would exhaust the memory.
    count = (c.V_src + c.V_tgt) * c.E + 2 * c.L * (4 * c.H * (c.E + 2 * c.H) + 8 * c.H) + 4 * c.H ** 2 + c.H \
        + c.V_tgt * (c.H + 1)
    need = count * (8 + np.dtype(c.dtype).itemsize)             # drawn in float64, then converted
    have = physical_memory()
    if need > have:      # found by fuzzing: V_tgt = 10**12 asked NumPy for 21.8 TiB
        raise ValueError(f"config: its parameters need about {need / 2**30:.3g} GiB, "
                         f"more than this machine's {have / 2**30:.3g} GiB")
    rng = np.random.default_rng(int(seed))
    H = config.H
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith("embedding.weight"):
            value = rng.standard_normal(shape)
        else:
            if ".lstm." in name or name in ("attention.v_a", "generator.bias"):
                bound = 1.0 / math.sqrt(H)
            else:                                           # W_a, W_c, generator.weight
                bound = 1.0 / math.sqrt(shape[1])
            value = rng.uniform(-bound, bound, size=shape)
        params[name] = np.ascontiguousarray(value, dtype=config.dtype)
    return params


def pack_weights(params: dict[str, np.ndarray], config: Config, tiles: bool = False) -> Weights:
    """MODEL.md parameters (already checked and in the dtype) -> the kernels' ``Weights``.

    ``tiles``: run the per-step products on ``kernels_matmul.tiled_nt`` (decoding
    picks it with ``kernels_matmul.use_tiles``; training keeps BLAS).
    """
    c, dt = config, np.dtype(config.dtype)
    H, E, L = c.H, c.E, c.L

    def stack(prefix, kind, layers):
        if not layers:
            return np.zeros((0, 4 * H, H), dt)
        return np.ascontiguousarray(np.stack([params[f"{prefix}.{kind}_l{k}"] for k in layers]))

    def biases(prefix):
        return np.ascontiguousarray(np.stack(
            [params[f"{prefix}.bias_ih_l{k}"] + params[f"{prefix}.bias_hh_l{k}"] for k in range(L)]))

    W_ih0_dec = params["decoder.lstm.weight_ih_l0"]
    if c.score == "general":
        W_q, W_k = np.zeros((0, 0), dt), params["attention.W_a"]
    elif c.score == "concat":
        W_q, W_k = params["attention.W_a"][:, :H], params["attention.W_a"][:, H:]
    else:
        W_q = W_k = np.zeros((0, 0), dt)
    C = np.ascontiguousarray
    return Weights(
        mode=MODES[c.score],
        tiles=tiles,
        feeds=c.feeds_input,
        denom=dt.type(math.sqrt(H) if c.score == "scaled_dot" else 1.0),
        emb_src=C(params["encoder.embedding.weight"]),
        enc_W_ih0=C(params["encoder.lstm.weight_ih_l0"]),
        enc_W_ih_up=stack("encoder.lstm", "weight_ih", range(1, L)),
        enc_W_hh=stack("encoder.lstm", "weight_hh", range(L)),
        enc_b=biases("encoder.lstm"),
        emb_tgt=C(params["decoder.embedding.weight"]),
        dec_W_emb=C(W_ih0_dec[:, :E]),
        dec_W_feed=C(W_ih0_dec[:, E:]) if c.feeds_input else np.zeros((4 * H, 0), dt),
        dec_W_ih_up=stack("decoder.lstm", "weight_ih", range(1, L)),
        dec_W_hh=stack("decoder.lstm", "weight_hh", range(L)),
        dec_b=biases("decoder.lstm"),
        att_W_q=C(W_q),
        att_W_k=C(W_k),
        att_v=C(params["attention.v_a"]) if c.score == "concat" else np.zeros(0, dt),
        att_W_c=C(params["attention.W_c"]) if c.attention else np.zeros((0, 0), dt),
        W_out=C(params["generator.weight"]),
        b_out=C(params["generator.bias"]),
    )


def unpack_grads(g: tuple, config: Config) -> dict[str, np.ndarray]:
    """The kernels' gradient tuple -> a dict with MODEL.md's names, in state-dict order."""
    (demb_src, d_enc_W_ih0, d_enc_W_ih_up, d_enc_W_hh, d_enc_b,
     demb_tgt, dW_emb, dW_feed, d_dec_W_ih_up, d_dec_W_hh, d_dec_b,
     dW_q, dW_k, dv_a, dW_c, dW_out, db_out) = g
    grads = {"encoder.embedding.weight": demb_src, "decoder.embedding.weight": demb_tgt}
    for prefix, W_ih0, W_ih_up, W_hh, b in (
            ("encoder.lstm", d_enc_W_ih0, d_enc_W_ih_up, d_enc_W_hh, d_enc_b),
            ("decoder.lstm", np.concatenate([dW_emb, dW_feed], axis=1), d_dec_W_ih_up, d_dec_W_hh, d_dec_b)):
        for k in range(config.L):
            grads[f"{prefix}.weight_ih_l{k}"] = W_ih0 if k == 0 else W_ih_up[k - 1]
            grads[f"{prefix}.weight_hh_l{k}"] = W_hh[k]
            grads[f"{prefix}.bias_ih_l{k}"] = b[k]          # z depends on b_ih + b_hh: same gradient
            grads[f"{prefix}.bias_hh_l{k}"] = b[k].copy()
    if config.score == "general":
        grads["attention.W_a"] = dW_k
    elif config.score == "concat":
        grads["attention.W_a"] = np.concatenate([dW_q, dW_k], axis=1)
        grads["attention.v_a"] = dv_a
    if config.attention:
        grads["attention.W_c"] = dW_c
    grads["generator.weight"] = dW_out
    grads["generator.bias"] = db_out
    return {name: np.ascontiguousarray(grads[name]) for name in param_shapes(config)}


# -- forward, loss and gradients -----------------------------------------------------

def _prepare(params, config, src, src_len, tgt):
    config = _check_config(config)
    params = check_params(params, config, dtype=config.dtype, products_fit=True)
    src, src_len, tgt = check_batch(config, src, src_len, tgt)
    w = pack_weights(params, config)
    y_in = np.ascontiguousarray(tgt[:, :-1])
    labels = np.ascontiguousarray(tgt[:, 1:]).reshape(-1)                # (B*T,), batch-major
    rows = np.flatnonzero(labels != config.pad_id)                     # the rows the loss averages
    return config, w, np.ascontiguousarray(src), np.ascontiguousarray(src_len), y_in, labels, rows


def _check_finite(name: str, *arrays, culprit: str = "parameters") -> None:
    """Raise FloatingPointError naming ``name`` unless every array is finite."""
    for a in arrays:
        if not all_finite(a):
            raise FloatingPointError(
                f"{name}: non-finite result (overflow); the {culprit} are too large for {a.dtype}")


def forward(params, config: Config, src, src_len, tgt) -> ForwardResult:
    """Teacher-forced forward pass of MODEL.md on ``tgt`` (``y_in = tgt[:, :-1]``, labels ``tgt[:, 1:]``)."""
    config, w, src, src_len, y_in, labels, rows = _prepare(params, config, src, src_len, tgt)
    B, T = y_in.shape
    enc, y_emb, dec, h_tilde_bt = model_forward(w, src, src_len, y_in)
    log_probs = generator_log_probs(h_tilde_bt, w.W_out, w.b_out,     # (B*T, V)
                                    np.empty((B * T, config.V_tgt), h_tilde_bt.dtype))
    loss = _mean_nll(log_probs[rows, labels[rows]], rows.size)
    log_probs = log_probs.reshape(B, T, config.V_tgt)
    attention = np.ascontiguousarray(dec[4].transpose(1, 0, 2))      # (T, B, S) -> (B, T, S)
    _check_finite("forward", log_probs, np.asarray(loss))
    return ForwardResult(loss=loss, log_probs=log_probs, attention=attention)


def _mean_nll(picked, count) -> float:
    """-sum(picked) / count in the dtype of picked (the log-probs of the labels)."""
    with np.errstate(over="ignore", invalid="ignore"):              # reported by _check_finite
        return float(-np.sum(picked, dtype=picked.dtype) / count)


def loss_and_grads(params, config: Config, src, src_len, tgt) -> tuple[float, dict[str, np.ndarray]]:
    """The loss of MODEL.md and its gradient with respect to every parameter (hand-written BPTT).

    Returns ``(loss, grads)`` with ``grads`` keyed, shaped and typed like the parameters.
    """
    config, w, src, src_len, y_in, labels, rows = _prepare(params, config, src, src_len, tgt)
    dt = np.dtype(config.dtype)
    enc, y_emb, dec, h_tilde_bt = model_forward(w, src, src_len, y_in)
    picked, dW_out, db_out, dh_tilde_bt = generator_loss_backward(
        h_tilde_bt, w.W_out, w.b_out, labels, config.pad_id, dt.type(rows.size),
        np.empty((labels.size, config.V_tgt), dt), np.empty_like(w.W_out))
    loss = _mean_nll(picked[rows], rows.size)
    g = model_backward(w, src, src_len, y_in, enc, y_emb, dec, dh_tilde_bt)
    grads = unpack_grads(g + (dW_out, db_out), config)
    _check_finite("loss_and_grads", np.asarray(loss), *grads.values())
    return loss, grads
