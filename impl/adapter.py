"""attnspec's Numba implementation as an ``Implementation`` of the protocol (spec.protocol)."""

from __future__ import annotations

from ..spec.protocol import DecodeOutput, ForwardOutput, Implementation
from . import decode, model
from .attention import attention, attention_vjp
from .lstm import lstm_cell


class NumbaImplementation(Implementation):
    """The built-in implementation, ``attnspec.impl``, seen through the protocol."""

    name = "attnspec.impl (Numba)"

    def attention(self, score, query, keys, mask, W_a=None, v_a=None):
        return attention(score, query, keys, mask, W_a=W_a, v_a=v_a)

    def attention_vjp(self, score, query, keys, mask, g_ctx, W_a=None, v_a=None):
        return attention_vjp(score, query, keys, mask, g_ctx, W_a=W_a, v_a=v_a)

    def forward(self, params, config, src, src_len, tgt):
        r = model.forward(params, config, src, src_len, tgt)
        return ForwardOutput(r.loss, r.log_probs, r.attention)

    def loss_and_grads(self, params, config, src, src_len, tgt):
        return model.loss_and_grads(params, config, src, src_len, tgt)

    def greedy_decode(self, params, config, src, src_len, max_len):
        r = decode.greedy_decode(params, config, src, src_len, max_len)
        return DecodeOutput(r.tokens, r.lengths, r.scores, r.attention)

    def beam_search(self, params, config, src, src_len, beam_size, max_len, length_normalize=False):
        r = decode.beam_search(params, config, src, src_len, beam_size, max_len, length_normalize)
        return DecodeOutput(r.tokens, r.lengths, r.scores, r.attention)

    def lstm_cell(self, x, h, c, W_ih, W_hh, b_ih, b_hh):
        return lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh)

