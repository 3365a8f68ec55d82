"""An optional PyTorch reference of MODEL.md, for agreement tests and benchmarks.

Built only from ``nn.Embedding``, ``nn.LSTM(batch_first=True)`` and
``nn.Linear`` plus three bare parameters, with submodule names chosen so that
``state_dict()`` keys are exactly MODEL.md's names: the parameters of
``attnspec.impl`` load into it with ``strict=True`` and no renaming.

It is written the way one writes PyTorch for speed: a packed sequence for the
encoder (whose final state is then the state at ``src_len``), the key-side
projections of the attention computed once per batch, the decoder LSTM run on
the whole target at once when there is no input feeding, and the generator
applied to all steps together.

attnspec does not depend on torch; importing this module without it raises an
``ImportError`` that says how to install it.
"""

from __future__ import annotations

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "attnspec.impl.torch_model needs PyTorch, which attnspec does not install. "
        "Install the CPU build this project is tested with: pip install torch==2.13.0"
    ) from exc

import math
from typing import NamedTuple

import numpy as np

from attnspec.spec.config import Config
from attnspec.spec.validate import check_batch, check_params


class TorchForward(NamedTuple):
    loss: torch.Tensor       # scalar, mean over non-PAD labels
    log_probs: torch.Tensor  # (B, T, V_tgt)
    attention: torch.Tensor | None  # (B, T, S); None for the baseline


class Encoder(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.embedding = nn.Embedding(c.V_src, c.E)
        self.lstm = nn.LSTM(c.E, c.H, num_layers=c.L, batch_first=True)

    def forward(self, src, src_len):
        B, S = src.shape
        emb = self.embedding(src)  # (B, S, E)
        packed = pack_padded_sequence(emb, src_len.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, c) = self.lstm(packed)  # h, c: (L, B, H), the state at src_len
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=S)  # (B, S, H)
        return out, (h, c)


class Decoder(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.embedding = nn.Embedding(c.V_tgt, c.E)
        in_size = c.E + c.H if c.feeds_input else c.E
        self.lstm = nn.LSTM(in_size, c.H, num_layers=c.L, batch_first=True)


class Attention(nn.Module):
    """Luong global attention: scores, masked softmax, context, ``h~ = tanh(W_c [ctx; h])``."""

    def __init__(self, c: Config):
        super().__init__()
        self.score, H = c.score, c.H
        if c.score == "general":
            self.W_a = nn.Parameter(torch.empty(H, H))
        elif c.score == "concat":
            self.W_a = nn.Parameter(torch.empty(H, 2 * H))
            self.v_a = nn.Parameter(torch.empty(H))
        self.W_c = nn.Parameter(torch.empty(H, 2 * H))
        bound = 1.0 / math.sqrt(H)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def keys(self, enc):
        """The query-independent part of the score, computed once per batch."""
        H = enc.shape[-1]
        if self.score == "general":
            return enc @ self.W_a.T  # (B, S, H): W_a k_s
        if self.score == "concat":
            return enc @ self.W_a[:, H:].T  # (B, S, H): W_a[:, H:] k_s
        return enc

    def forward(self, q, keys, enc, mask):
        """Queries ``q`` (B, T, H) -> ``h~`` (B, T, H) and weights ``a`` (B, T, S)."""
        H = q.shape[-1]
        if self.score == "concat":
            qa = q @ self.W_a[:, :H].T  # (B, T, H)
            e = torch.tanh(qa.unsqueeze(2) + keys.unsqueeze(1)) @ self.v_a  # (B, T, S)
        else:
            e = q @ keys.transpose(1, 2)  # (B, T, S)
            if self.score == "scaled_dot":
                e = e / math.sqrt(H)
        e = e.masked_fill(~mask.unsqueeze(1), float("-inf"))
        a = torch.softmax(e, dim=-1)
        ctx = a @ enc  # (B, T, H)
        h_tilde = torch.tanh(torch.cat([ctx, q], dim=-1) @ self.W_c.T)
        return h_tilde, a


class TorchSeq2Seq(nn.Module):
    """MODEL.md's attention seq2seq in PyTorch; ``state_dict()`` keys are MODEL.md's names.

    Parameters
    ----------
    config : Config
        The parameters are created in ``config.dtype``.

    Examples
    --------
    >>> from attnspec.impl.model import init_params      # doctest: +SKIP
    >>> cfg = Config(V_src=8, V_tgt=8, E=4, H=3)          # doctest: +SKIP
    >>> m = TorchSeq2Seq.from_params(init_params(cfg, 0), cfg)   # doctest: +SKIP
    """

    def __init__(self, config: Config):
        super().__init__()
        if not isinstance(config, Config):
            raise TypeError(f"config: expected a Config, got {type(config).__name__}")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.attention:
            self.attention = Attention(config)
        self.generator = nn.Linear(config.H, config.V_tgt)
        self.to(getattr(torch, config.dtype))

    @classmethod
    def from_params(cls, params, config: Config) -> "TorchSeq2Seq":
        """A model holding (copies of) ``params``, loaded with ``strict=True``."""
        model = cls(config)
        params = check_params(params, config, dtype=config.dtype)
        model.load_state_dict({k: torch.tensor(v) for k, v in params.items()}, strict=True)
        return model

    def _as_batch(self, src, src_len, tgt):
        def to_np(x):
            return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        src, src_len, tgt = check_batch(self.config, to_np(src), to_np(src_len), to_np(tgt))
        return torch.from_numpy(src), torch.from_numpy(src_len), torch.from_numpy(tgt)

    def forward(self, src, src_len, tgt) -> TorchForward:
        """Loss, log-probabilities and attention of a batch (MODEL.md notation).

        Parameters
        ----------
        src : int array or tensor (B, S)
        src_len : int array or tensor (B,)
        tgt : int array or tensor (B, T+1), starting with BOS
        """
        c = self.config
        src, src_len, tgt = self._as_batch(src, src_len, tgt)
        y_in, y_out = tgt[:, :-1], tgt[:, 1:]
        B, T = y_in.shape
        enc, state = self.encoder(src, src_len)  # (B, S, H)
        mask = torch.arange(src.shape[1]).unsqueeze(0) < src_len.unsqueeze(1)  # (B, S)
        emb = self.decoder.embedding(y_in)  # (B, T, E)
        attention = None
        if not c.feeds_input:
            # No feedback from h~, so the decoder LSTM sees the whole target at once.
            h, _ = self.decoder.lstm(emb, state)  # (B, T, H)
            h_tilde = h
            if c.attention:
                h_tilde, attention = self.attention(h, self.attention.keys(enc), enc, mask)
        else:
            keys = self.attention.keys(enc)
            h_tilde_t = emb.new_zeros(B, 1, c.H)
            steps, weights = [], []
            for t in range(T):
                u = torch.cat([emb[:, t:t + 1], h_tilde_t], dim=-1)  # (B, 1, E + H)
                h_t, state = self.decoder.lstm(u, state)  # (B, 1, H)
                h_tilde_t, a_t = self.attention(h_t, keys, enc, mask)
                steps.append(h_tilde_t)
                weights.append(a_t)
            h_tilde, attention = torch.cat(steps, dim=1), torch.cat(weights, dim=1)
        log_probs = F.log_softmax(self.generator(h_tilde), dim=-1)  # (B, T, V)
        loss = F.nll_loss(log_probs.reshape(B * T, -1), y_out.reshape(-1), ignore_index=c.pad_id)
        return TorchForward(loss, log_probs, attention)

    def loss_and_grads(self, src, src_len, tgt) -> tuple[float, dict[str, np.ndarray]]:
        """The loss and the gradient of every parameter, as NumPy (same API as ``impl.model``)."""
        self.zero_grad(set_to_none=True)
        loss = self.forward(src, src_len, tgt).loss
        loss.backward()
        grads = {n: (p.grad.detach().numpy().copy() if p.grad is not None else np.zeros_like(p.detach().numpy()))
                 for n, p in self.named_parameters()}
        return float(loss.detach()), grads


def loss_and_grads(params, config: Config, src, src_len, tgt) -> tuple[float, dict[str, np.ndarray]]:
    """PyTorch's loss and autograd gradients for ``params``, with ``impl.model.loss_and_grads``'s signature."""
    return TorchSeq2Seq.from_params(params, config).loss_and_grads(src, src_len, tgt)
