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


# -- the conformance protocol -------------------------------------------------------------

import functools  # noqa: E402

from attnspec.spec.protocol import DecodeOutput, ForwardOutput, Implementation  # noqa: E402


def attend(score: str, q, k, mask, W_a=None, v_a=None):
    """One attention step in torch: ``(e, a, ctx)`` for queries (B, H), keys (B, S, H), a bool mask (B, S)."""
    H = q.shape[-1]
    if score == "concat":
        z = (q @ W_a[:, :H].T).unsqueeze(1) + k @ W_a[:, H:].T  # (B, S, H)
        e = torch.tanh(z) @ v_a  # (B, S)
    else:
        kk = k @ W_a.T if score == "general" else k  # general: h^T W_a k = h . (W_a k)
        e = torch.einsum("bh,bsh->bs", q, kk)
        if score == "scaled_dot":
            e = e / math.sqrt(H)
    a = torch.softmax(e.masked_fill(~mask, float("-inf")), dim=-1)  # exp(-inf) = 0 at masked s
    ctx = torch.einsum("bs,bsh->bh", a, k)
    return e, a, ctx


def _one_thread(method):
    """Run ``method`` with one intra-op thread, then restore the caller's setting.

    The protocol's tensors are tiny (a few rows of a few units): a second
    thread brings only wake-up and spin costs, which made ``attnspec check
    torch`` over ten times slower on a busy two-core machine.
    """
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return method(*args, **kwargs)
        finally:
            torch.set_num_threads(before)
    return wrapper


class TorchImplementation(Implementation):
    """The bundled PyTorch model seen through ``spec.protocol`` (``attnspec check torch``).

    Attention and its backward are ``attend`` and torch autograd; the model is
    ``TorchSeq2Seq`` with ``loss.backward()``; the LSTM cell is written out
    from its equations, since ``nn.LSTM`` does not expose its gates. Greedy
    decoding feeds the argmax back through the same modules; beam search is
    not provided, so the properties that need it are skipped.
    """

    name = "attnspec.impl.torch_model (PyTorch)"

    @staticmethod
    def _tensors(score, query, keys, mask, W_a, v_a, requires_grad=False):
        def t(x):
            if x is None:
                return None
            x = torch.tensor(np.asarray(x))
            return x.requires_grad_() if requires_grad and x.is_floating_point() else x
        if score not in ("dot", "scaled_dot", "general", "concat"):
            raise ValueError(f"score: expected one of dot, scaled_dot, general, concat, got {score!r}")
        return t(query), t(keys), torch.tensor(np.asarray(mask, dtype=bool)), t(W_a), t(v_a)

    @_one_thread
    def attention(self, score, query, keys, mask, W_a=None, v_a=None):
        q, k, m, Wa, va = self._tensors(score, query, keys, mask, W_a, v_a)
        with torch.no_grad():
            _, a, ctx = attend(score, q, k, m, Wa, va)
        return a.numpy(), ctx.numpy()

    @_one_thread
    def attention_vjp(self, score, query, keys, mask, g_ctx, W_a=None, v_a=None):
        q, k, m, Wa, va = self._tensors(score, query, keys, mask, W_a, v_a, requires_grad=True)
        e, _, ctx = attend(score, q, k, m, Wa, va)
        e.retain_grad()
        ctx.backward(torch.tensor(np.asarray(g_ctx)))
        grads = {"scores": e.grad.masked_fill(~m, 0.0), "query": q.grad, "keys": k.grad}
        if Wa is not None:
            grads["W_a"] = Wa.grad
        if va is not None:
            grads["v_a"] = va.grad
        return {n: g.detach().numpy() for n, g in grads.items()}

    @_one_thread
    def forward(self, params, config, src, src_len, tgt):
        model = TorchSeq2Seq.from_params(params, config)
        with torch.no_grad():
            out = model(src, src_len, tgt)
        B, T = out.log_probs.shape[:2]
        attention = (out.attention.numpy() if out.attention is not None
                     else np.zeros((B, T, np.asarray(src).shape[1]), dtype=config.dtype))
        return ForwardOutput(float(out.loss), out.log_probs.numpy(), attention)

    @_one_thread
    def loss_and_grads(self, params, config, src, src_len, tgt):
        return loss_and_grads(params, config, src, src_len, tgt)

    @_one_thread
    def greedy_decode(self, params, config, src, src_len, max_len):
        if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
            raise ValueError(f"max_len: expected an int >= 1, got {max_len!r}")
        c = config
        model = TorchSeq2Seq.from_params(params, c)
        B = np.asarray(src).shape[0]
        dummy_tgt = np.tile(np.array([[c.bos_id, c.eos_id]]), (B, 1))  # validates src and src_len only
        src_t, len_t, _ = model._as_batch(src, src_len, dummy_tgt)
        S = src_t.shape[1]
        dt = getattr(torch, c.dtype)
        tokens = np.full((B, max_len), c.pad_id, dtype=np.int64)
        lengths = np.zeros(B, dtype=np.int64)
        scores = np.zeros(B, dtype=c.dtype)
        attention = np.zeros((B, max_len, S), dtype=c.dtype)
        with torch.no_grad():
            enc, state = model.encoder(src_t, len_t)  # (B, S, H)
            mask = torch.arange(S).unsqueeze(0) < len_t.unsqueeze(1)
            keys = model.attention.keys(enc) if c.attention else None
            y = torch.full((B, 1), c.bos_id, dtype=torch.int64)
            h_tilde = torch.zeros(B, 1, c.H, dtype=dt)
            done = np.zeros(B, dtype=bool)
            for t in range(max_len):
                u = model.decoder.embedding(y)  # (B, 1, E)
                if c.feeds_input:
                    u = torch.cat([u, h_tilde], dim=-1)
                h, state = model.decoder.lstm(u, state)  # (B, 1, H)
                h_tilde, a = (model.attention(h, keys, enc, mask) if c.attention else (h, None))
                log_p = F.log_softmax(model.generator(h_tilde[:, 0]), dim=-1)  # (B, V)
                best = log_p.argmax(dim=-1)
                for b in np.flatnonzero(~done):
                    tokens[b, t] = int(best[b])
                    scores[b] += log_p[b, best[b]].item()
                    lengths[b] += 1
                    if a is not None:
                        attention[b, t] = a[b, 0].numpy()
                    done[b] = int(best[b]) == c.eos_id
                if done.all():
                    break
                y = best.unsqueeze(1)
        return DecodeOutput(tokens, lengths, scores, attention)

    @_one_thread
    def lstm_cell(self, x, h, c, W_ih, W_hh, b_ih, b_hh):
        x, h, c, W_ih, W_hh, b_ih, b_hh = (torch.tensor(np.asarray(v)) for v in (x, h, c, W_ih, W_hh, b_ih, b_hh))
        H = h.shape[1]
        z = x @ W_ih.T + b_ih + h @ W_hh.T + b_hh  # (B, 4H), gate order i, f, g, o as in nn.LSTM
        i, f, g, o = (torch.sigmoid(z[:, :H]), torch.sigmoid(z[:, H:2 * H]), torch.tanh(z[:, 2 * H:3 * H]),
                      torch.sigmoid(z[:, 3 * H:]))
        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new)
        return h_new.numpy(), c_new.numpy(), torch.cat([i, f, g, o], dim=1).numpy()
