"""An optional PyTorch reference of MODEL.md, for agreement tests and benchmarks.

Built only from ``nn.Embedding``, ``nn.LSTM(batch_first=True)`` and
``nn.Linear`` plus three bare parameters, with submodule names chosen so that
``state_dict()`` keys are exactly MODEL.md's names: the parameters of
``attnspec.impl`` load into it with ``strict=True`` and no renaming.

It is written the way one writes PyTorch for speed: a packed sequence for the
encoder (whose final state is then the state at ``src_len``), the key-side
projections of the attention computed once per batch, the decoder LSTM run on
the whole target at once when there is no input feeding, and the generator
applied to all steps together. Decoding (``greedy_batched``, ``beam_batched``)
steps the whole batch, all B*K beams of it for beam search, through the same
modules, with the rules of the Numba decoder (``impl.decode``).

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
from attnspec.spec.protocol import DecodeOutput, ForwardOutput, Implementation
from attnspec.spec.validate import check_batch, check_params, check_positive_int, check_source


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
        params = check_params(params, config, dtype=config.dtype, products_fit=True)
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


# -- batched decoding ---------------------------------------------------------------------


class BeamOutput(NamedTuple):
    """What ``beam_batched`` returns, as NumPy arrays (the fields of ``impl.decode.DecodeResult``)."""

    tokens: np.ndarray             # int64 (B, max_len), PAD after lengths
    lengths: np.ndarray            # int64 (B,), EOS counted when emitted
    scores: np.ndarray             # (B,) summed log-probabilities, config.dtype
    normalized_scores: np.ndarray  # (B,) scores / lengths
    attention: np.ndarray          # (B, max_len, S), zeros after lengths (and for score "none")


def _source(model: TorchSeq2Seq, src, src_len) -> tuple[torch.Tensor, torch.Tensor]:
    """``src`` and ``src_len`` (arrays or tensors) validated by ``check_source``, as int64 tensors."""
    def to_np(x):
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
    src, src_len = check_source(model.config, to_np(src), to_np(src_len))
    return torch.from_numpy(np.ascontiguousarray(src)), torch.from_numpy(np.ascontiguousarray(src_len))


def _encode(model: TorchSeq2Seq, src: torch.Tensor, src_len: torch.Tensor, K: int):
    """Encoder outputs, attention keys, mask and initial decoder state for R = B*K rows.

    Row r reads source row r // K. Everything is computed once per source row and
    then repeated, so the K rows of a source row start from bit-identical values.
    """
    enc, (h, c) = model.encoder(src, src_len)                          # (B, S, H), (L, B, H)
    mask = torch.arange(src.shape[1]).unsqueeze(0) < src_len.unsqueeze(1)  # (B, S)
    keys = model.attention.keys(enc) if model.config.attention else None
    if K > 1:
        enc, mask = enc.repeat_interleave(K, dim=0), mask.repeat_interleave(K, dim=0)
        keys = keys.repeat_interleave(K, dim=0) if keys is not None else None
        h, c = h.repeat_interleave(K, dim=1), c.repeat_interleave(K, dim=1)
    return enc, keys, mask, (h, c)


def _decoder_step(model: TorchSeq2Seq, y, h_tilde, state, enc, keys, mask):
    """One decoder step for R rows fed the tokens ``y`` (R,).

    Returns
    -------
    log_p : (R, V_tgt) log-probabilities of the next token
    a : (R, S) attention weights, or None for the baseline
    h_tilde : (R, H) the new attentional state
    state : the new LSTM state, (h, c) each (L, R, H)
    """
    c = model.config
    u = model.decoder.embedding(y.unsqueeze(1))                        # (R, 1, E)
    if c.feeds_input:
        u = torch.cat([u, h_tilde.unsqueeze(1)], dim=-1)               # (R, 1, E + H)
    h, state = model.decoder.lstm(u, state)                            # (R, 1, H)
    if c.attention:
        h_t, a = model.attention(h, keys, enc, mask)
        h_t, a = h_t[:, 0], a[:, 0]
    else:
        h_t, a = h[:, 0], None
    return F.log_softmax(model.generator(h_t), dim=-1), a, h_t, state


def _top_tokens(log_p: torch.Tensor, M: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The M best ids of each row of ``log_p`` (R, V), best first, lowest id on ties.

    Returns
    -------
    values, ids : (R, M)
        ``values = log_p.gather(1, ids)``.

    Notes
    -----
    ``torch.topk`` orders ties arbitrarily and, when values tie with the M-th
    best, may keep any of them. So its ids are re-sorted (ascending id, then a
    stable sort by value), and the rows where the (M+1)-th best equals the
    M-th (the M best are then not one set) are redone with a stable sort of
    the whole row. With real-valued log-probabilities such rows are rare, so
    the full sort seldom runs; asking topk for M+1 values finds them without
    another pass over the vocabulary.
    """
    V = log_p.shape[1]
    if M >= V:
        ids = torch.sort(-log_p, dim=1, stable=True).indices           # negation is exact: ties stay ties
        return log_p.gather(1, ids), ids
    values, ids = torch.topk(log_p, M + 1, dim=1)
    ambiguous = values[:, M] == values[:, M - 1]
    ids = ids[:, :M].sort(dim=1).values
    ids = ids.gather(1, torch.sort(-log_p.gather(1, ids), dim=1, stable=True).indices)
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero().squeeze(1)
        ids[rows] = torch.sort(-log_p[rows], dim=1, stable=True).indices[:, :M]
    return log_p.gather(1, ids), ids


def greedy_batched(model: TorchSeq2Seq, src, src_len, max_len: int) -> DecodeOutput:
    """Greedy decoding of the whole batch at once, with the rules of ``impl.decode.greedy_decode``.

    Each step takes the argmax over the whole target vocabulary (lowest id on
    ties); a row stops after emitting EOS (EOS included) or at ``max_len``.

    Parameters
    ----------
    model : TorchSeq2Seq
    src : int array or tensor (B, S)
    src_len : int array or tensor (B,), 1 <= src_len <= S
    max_len : int >= 1

    Returns
    -------
    DecodeOutput
        NumPy ``tokens`` int64 (B, max_len) padded with PAD, ``lengths`` int64
        (B,), ``scores`` (B,) the summed log-probabilities of the emitted tokens
        and ``attention`` (B, max_len, S) of every emitted step, zeros after;
        floats in ``model.config.dtype``.
    """
    c = model.config
    src, src_len = _source(model, src, src_len)
    max_len = check_positive_int("max_len", max_len)
    B, S = src.shape
    dt = getattr(torch, c.dtype)
    with torch.no_grad():
        enc, keys, mask, state = _encode(model, src, src_len, 1)
        y = torch.full((B,), c.bos_id, dtype=torch.int64)
        h_tilde = torch.zeros(B, c.H, dtype=dt)
        scores = torch.zeros(B, dtype=dt)
        lengths = torch.zeros(B, dtype=torch.int64)
        active = torch.ones(B, dtype=torch.bool)                       # not yet past EOS
        tokens, weights = [], []
        for t in range(max_len):
            log_p, a, h_tilde, state = _decoder_step(model, y, h_tilde, state, enc, keys, mask)
            best = log_p.argmax(dim=1)                                 # documented: the first maximum
            # torch.where rather than adding 0: a finished row's score is left untouched,
            # so the sums are exactly Numba's (and beam K = 1's).
            scores = torch.where(active, scores + log_p.gather(1, best.unsqueeze(1))[:, 0], scores)
            tokens.append(torch.where(active, best, c.pad_id))
            if a is not None:
                weights.append(torch.where(active.unsqueeze(1), a, 0.0))
            lengths = torch.where(active, t + 1, lengths)
            active = active & (best != c.eos_id)
            if not bool(active.any()):
                break
            y = best
    out_tokens = np.full((B, max_len), c.pad_id, dtype=np.int64)
    out_tokens[:, :len(tokens)] = torch.stack(tokens, dim=1).numpy()
    attention = np.zeros((B, max_len, S), dtype=c.dtype)
    if weights:
        attention[:, :len(weights)] = torch.stack(weights, dim=1).numpy()
    return DecodeOutput(out_tokens, lengths.numpy(), scores.numpy(), attention)


def beam_batched(model: TorchSeq2Seq, src, src_len, beam_size: int, max_len: int,
                 length_normalize: bool = False) -> BeamOutput:
    """Beam search of width K = ``beam_size`` on the whole batch at once, with the rules of ``impl.decode``.

    The rules are exactly those of the Numba ``beam_kernel``: R = B*K rows, row
    r a beam of source row r // K, one live beam per source row at the start.
    Each live beam proposes its min(2K, V) best tokens (lowest id on ties); the
    candidates of a source row are ranked by summed log-probability, ties by
    (beam, rank within the beam). An EOS among the first K candidates finishes
    a hypothesis; the first K other candidates become the new beams. A row
    stops once K hypotheses have finished or no beam is live; at ``max_len``
    its live beams count as hypotheses too. The result is the first best
    hypothesis by score (score / length with ``length_normalize``), finished
    ones in the order they finished, then live beams by slot.

    Parameters
    ----------
    model : TorchSeq2Seq
    src : int array or tensor (B, S)
    src_len : int array or tensor (B,), 1 <= src_len <= S
    beam_size : int >= 1
    max_len : int >= 1
    length_normalize : bool

    Returns
    -------
    BeamOutput
        NumPy ``tokens``, ``lengths``, ``scores``, ``normalized_scores`` and
        ``attention``, as ``greedy_batched``'s plus scores / lengths.
        ``beam_size = 1`` gives greedy's tokens.
    """
    c = model.config
    src, src_len = _source(model, src, src_len)
    K = check_positive_int("beam_size", beam_size)
    max_len = check_positive_int("max_len", max_len)
    if not isinstance(length_normalize, (bool, np.bool_)):
        raise TypeError(f"length_normalize: expected a bool, got {type(length_normalize).__name__}")
    B, S = src.shape
    R, V = B * K, c.V_tgt
    M = min(2 * K, V)
    dt = getattr(torch, c.dtype)
    neg_inf = float("-inf")
    slot = torch.arange(K)
    base = torch.arange(B) * K                                         # row of beam 0 of each source row
    with torch.no_grad():
        enc, keys, mask, state = _encode(model, src, src_len, K)
        y = torch.full((R,), c.bos_id, dtype=torch.int64)
        h_tilde = torch.zeros(R, c.H, dtype=dt)
        beam_score = torch.full((B, K), neg_inf, dtype=dt)
        beam_score[:, 0] = 0.0                                         # one live beam per source row
        done = torch.zeros(B, dtype=torch.bool)
        n_fin = torch.zeros(B, dtype=torch.int64)
        hist_tok, hist_par, hist_att = [], [], []                      # per step: (B, K), (B, K), (R, S)
        fin_mask, fin_score, fin_k = [], [], []                        # per step: (B, K) in finishing order
        for t in range(max_len):
            log_p, a, h_tilde, state = _decoder_step(model, y, h_tilde, state, enc, keys, mask)
            top_v, top_i = _top_tokens(log_p, M)                       # (R, M)
            # Candidates of a source row in (beam, rank) order, as Numba enumerates them.
            cand = (beam_score.reshape(R, 1) + top_v).reshape(B, K * M)
            cand_tok = top_i.reshape(B, K * M)
            live = (beam_score != neg_inf) & ~done.unsqueeze(1)        # (B, K); a done row proposes nothing
            valid = live.repeat_interleave(M, dim=1)                   # (B, K*M)
            # Stable sort by score, then stable sort putting the candidates of dead beams last:
            # the valid ones keep Numba's order (mergesort of -score) and positions 0.. among themselves.
            order = torch.sort(-cand, dim=1, stable=True).indices
            order = order.gather(1, torch.sort((~valid.gather(1, order)).to(torch.int8), dim=1,
                                               stable=True).indices)
            s_score, s_tok = cand.gather(1, order), cand_tok.gather(1, order)
            s_valid, s_k = valid.gather(1, order), order // M
            is_eos = s_valid & (s_tok == c.eos_id)
            finish = is_eos[:, :K]                                     # an EOS among the first K finishes
            keep = s_valid & ~is_eos
            keep = keep & (keep.cumsum(dim=1) <= K)                    # the first K others become beams
            n_alive = keep.sum(dim=1)
            # Positions of the kept candidates, in order, into slots 0..n_alive-1.
            pos = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :K]
            filled = slot.unsqueeze(0) < n_alive.unsqueeze(1)          # (B, K)
            new_score = torch.where(filled, s_score.gather(1, pos), neg_inf)
            new_par = torch.where(filled, s_k.gather(1, pos), 0)
            new_tok = torch.where(filled, s_tok.gather(1, pos), c.pad_id)
            fin_mask.append(finish)
            fin_score.append(s_score[:, :K])
            fin_k.append(s_k[:, :K])
            n_fin = n_fin + finish.sum(dim=1)
            done = done | (n_fin >= K) | (n_alive == 0)                # n_alive = 0 for rows already done
            hist_tok.append(new_tok)
            hist_par.append(new_par)
            if a is not None:
                hist_att.append(a)
            parent = (base.unsqueeze(1) + new_par).reshape(R)          # reorder the state
            h_tilde = h_tilde.index_select(0, parent)
            state = tuple(s.index_select(1, parent) for s in state)
            y = new_tok.reshape(R)
            beam_score = new_score
            if bool(done.all()):
                break
        t_last = len(hist_tok) - 1

        # -- the best hypothesis of each row: finished ones (in finishing order), then live beams --
        n_steps = t_last + 1
        f_mask = torch.stack(fin_mask, dim=1).reshape(B, n_steps * K)
        f_score = torch.stack(fin_score, dim=1).reshape(B, n_steps * K)
        f_k = torch.stack(fin_k, dim=1).reshape(B, n_steps * K)
        f_t = torch.arange(n_steps).repeat_interleave(K)               # (n_steps*K,)
        # Keys in float64, as Numba's score / int64-length division computes them.
        f_key = f_score.to(torch.float64)
        l_key = beam_score.to(torch.float64)
        if length_normalize:
            f_key = f_key / (f_t + 1)
            l_key = l_key / n_steps
        l_mask = ~done.unsqueeze(1) & (beam_score != neg_inf)          # live beams count only at max_len
        ok = torch.cat([f_mask, l_mask], dim=1)
        key = torch.where(ok, torch.cat([f_key, l_key], dim=1), neg_inf)
        # The first entry reaching the maximum, as Numba's `key > best_key` scan keeps the first.
        best = (ok & (key == key.max(dim=1, keepdim=True).values)).to(torch.int8).argmax(dim=1)
        is_fin = best < n_steps * K
        fb = best.clamp(max=n_steps * K - 1)
        lb = (best - n_steps * K).clamp(min=0)
        r_live = base + lb
        tok_last, par_last = hist_tok[t_last].reshape(R), hist_par[t_last].reshape(R)
        t_end = torch.where(is_fin, f_t[fb], t_last)
        k_end = torch.where(is_fin, f_k.gather(1, fb.unsqueeze(1))[:, 0], par_last[r_live])
        tok_end = torch.where(is_fin, c.eos_id, tok_last[r_live])
        scores = torch.where(is_fin, f_score.gather(1, fb.unsqueeze(1))[:, 0],
                             beam_score.gather(1, lb.unsqueeze(1))[:, 0])

        # -- backtrack all rows at once, from the last step to the first --
        H_tok = torch.stack(hist_tok).reshape(n_steps, R)
        H_par = torch.stack(hist_par).reshape(n_steps, R)
        H_att = torch.stack(hist_att) if hist_att else None           # (n_steps, R, S)
        tokens = torch.full((B, max_len), c.pad_id, dtype=torch.int64)
        attention = torch.zeros(B, max_len, S, dtype=dt)
        cur = k_end                                                    # beam slot after step s (before: k_end)
        for s in range(t_last, -1, -1):
            before, upto = s < t_end, s <= t_end
            par = torch.where(before, H_par[s, base + cur], cur)       # at t_end the emitting beam is k_end
            tokens[:, s] = torch.where(upto, torch.where(before, H_tok[s, base + cur], tok_end), c.pad_id)
            if H_att is not None:
                attention[:, s] = torch.where(upto.unsqueeze(1), H_att[s, base + par], 0.0)
            cur = torch.where(upto, par, cur)
    lengths = (t_end + 1).numpy()
    scores = scores.numpy()
    # scores / lengths in float64, then rounded once to the dtype, as Numba computes it.
    normalized = (scores.astype(np.float64) / lengths).astype(c.dtype)
    return BeamOutput(tokens.numpy(), lengths, scores, normalized, attention.numpy())


# -- the conformance protocol -------------------------------------------------------------

import functools  # noqa: E402



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
    decoding and beam search are ``greedy_batched`` and ``beam_batched``: the
    whole batch (all B*K beams) per step through the same modules, with the
    Numba decoder's rules, so they return the same tokens.
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

    @staticmethod
    def _decode_inputs(params, config, src, src_len, max_len):
        """Validate as ``impl.decode`` does (params, source, max_len), then build the model."""
        model = TorchSeq2Seq.from_params(params, config)  # checks config, then params (check_params)
        src, src_len = check_source(config, src, src_len)
        max_len = check_positive_int("max_len", max_len)
        return model, src, src_len, max_len

    @_one_thread
    def greedy_decode(self, params, config, src, src_len, max_len):
        model, src, src_len, max_len = self._decode_inputs(params, config, src, src_len, max_len)
        return greedy_batched(model, src, src_len, max_len)

    @_one_thread
    def beam_search(self, params, config, src, src_len, beam_size, max_len, length_normalize=False):
        model, src, src_len, max_len = self._decode_inputs(params, config, src, src_len, max_len)
        beam_size = check_positive_int("beam_size", beam_size)
        if not isinstance(length_normalize, (bool, np.bool_)):
            raise TypeError(f"length_normalize: expected a bool, got {type(length_normalize).__name__}")
        out = beam_batched(model, src, src_len, beam_size, max_len, bool(length_normalize))
        return DecodeOutput(out.tokens, out.lengths, out.scores, out.attention)

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
