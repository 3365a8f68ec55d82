"""The whole model of MODEL.md from the pieces of ``reference_ops``: encoder, decoder, BPTT, decoding.

Loops run over time (and, in beam search, over source rows); each step works
on the whole batch. Parameters ``P`` are already validated and in the
configuration's dtype; ``bugs`` is the set of deliberate defects (empty: MODEL.md).
Forward and backward of the encoder, and of one decoder step, sit side by side.
"""

from __future__ import annotations

import numpy as np

from . import reference_ops as ops


def _layer(P, prefix: str, k: int):
    return (P[f"{prefix}.weight_ih_l{k}"], P[f"{prefix}.weight_hh_l{k}"],
            P[f"{prefix}.bias_ih_l{k}"], P[f"{prefix}.bias_hh_l{k}"])


# -- the L-layer stack, one time step -----------------------------------------------

def stack_step(P, prefix: str, x, h, c, bugs):
    """Layer k's h' is layer k+1's x.  x (B, D); h, c lists of L arrays (B, H) -> new h, c, caches."""
    h_new, c_new, caches = [], [], []
    for k in range(len(h)):
        h_k, c_k, cache = ops.lstm_cell(x, h[k], c[k], *_layer(P, prefix, k), bugs)
        h_new.append(h_k)
        c_new.append(c_k)
        caches.append(cache)
        x = h_k
    return h_new, c_new, caches


def stack_step_backward(P, prefix: str, dh_new, dc_new, caches, grads, bugs):
    """Cotangents of every layer's (h', c') -> dx (bottom input), dh, dc (lists); adds to ``grads``."""
    L = len(caches)
    dh, dc = [None] * L, [None] * L
    dx = 0                                   # layer k's dx is the cotangent of layer k-1's h'
    for k in reversed(range(L)):
        dx, dh[k], dc[k], g = ops.lstm_cell_backward(dh_new[k] + dx, dc_new[k], caches[k], bugs)
        for kind, name in (("W_ih", "weight_ih"), ("W_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh")):
            grads[f"{prefix}.{name}_l{k}"] += g[kind]
    return dx, dh, dc


# -- encoder ------------------------------------------------------------------------------

def encode(P, config, src, src_len, bugs):
    """h_0 = c_0 = 0; the state is frozen for s >= src_len (packed sequences).

    Returns keys = h^enc (B, S, H), the top layer's h at every s; final h, c (lists of L (B, H)); caches.
    """
    B, S = src.shape
    dt = P["encoder.embedding.weight"].dtype
    h = [np.zeros((B, config.H), dt) for _ in range(config.L)]
    c = [np.zeros((B, config.H), dt) for _ in range(config.L)]
    keys = np.zeros((B, S, config.H), dt)
    steps = []
    for s in range(S):
        running = np.ones(B, bool) if "encoder_not_frozen" in bugs else s < src_len
        x = P["encoder.embedding.weight"][src[:, s]]                   # (B, E)
        h_new, c_new, caches = stack_step(P, "encoder.lstm", x, h, c, bugs)
        keep = running[:, None]
        h = [np.where(keep, hn, ho) for hn, ho in zip(h_new, h)]
        c = [np.where(keep, cn, co) for cn, co in zip(c_new, c)]
        keys[:, s] = h[-1]
        steps.append((src[:, s], keep, caches))
    return keys, h, c, steps


def encode_backward(P, config, dkeys, dh, dc, steps, grads, bugs):
    """dkeys (B, S, H) and the cotangents of the final h, c -> adds every encoder gradient to ``grads``."""
    for s in reversed(range(len(steps))):
        ids, keep, caches = steps[s]
        dh = dh[:-1] + [dh[-1] + dkeys[:, s]]                          # keys[:, s] is the top layer's h at s
        dx, dh_prev, dc_prev = stack_step_backward(
            P, "encoder.lstm", [d * keep for d in dh], [d * keep for d in dc], caches, grads, bugs)
        # a frozen row's state at s is its state at s - 1: the cotangent passes straight through
        dh = [dp + d * ~keep for dp, d in zip(dh_prev, dh)]
        dc = [dp + d * ~keep for dp, d in zip(dc_prev, dc)]
        np.add.at(grads["encoder.embedding.weight"], ids, dx)


# -- decoder, one step t ----------------------------------------------------------------------

def decoder_step(P, config, y, feed, h, c, keys, mask, bugs):
    """u = [Emb(y); h~_{t-1}] -> LSTM stack -> attention on the top h -> h~ -> log-probabilities.

    y (B,) ids, feed (B, H) what input feeding carries, h, c lists of L (B, H), keys (B, S, H),
    mask bool (B, S). Returns log_probs (B, V), a (B, S) (zeros for the baseline), h~, h, c, cache.
    """
    emb = P["decoder.embedding.weight"][y]                             # (B, E)
    u = np.concatenate([emb, feed], axis=1) if config.feeds_input else emb
    h, c, lstm = stack_step(P, "decoder.lstm", u, h, c, bugs)
    cache = dict(y=y, lstm=lstm)
    if config.attention:
        query = h[0] if "query_from_bottom_layer" in bugs else h[-1]
        a, ctx, cache["att"] = ops.attention(config.score, query, keys, mask,
                                             P.get("attention.W_a"), P.get("attention.v_a"), bugs)
        h_tilde, cache["state"] = ops.attentional_state(P["attention.W_c"], ctx, h[-1], bugs)
    else:
        a, h_tilde = np.zeros(mask.shape, keys.dtype), h[-1]           # baseline: h~ = h
    logits = h_tilde @ P["generator.weight"].T + P["generator.bias"]  # (B, V)
    cache["h_tilde"] = h_tilde
    return ops.log_softmax(logits), a, h_tilde, h, c, cache


def decoder_step_backward(P, config, dlogits, dh_tilde, dh, dc, cache, grads, bugs):
    """dlogits (B, V), dh~ and dh, dc from later steps -> d feed (or None), dh_prev, dc_prev, dkeys.

    Adds the generator, attention and decoder gradients to ``grads``.
    """
    grads["generator.weight"] += dlogits.T @ cache["h_tilde"]
    grads["generator.bias"] += dlogits.sum(axis=0)
    dh_tilde = dh_tilde + dlogits @ P["generator.weight"]
    dh, dkeys = list(dh), 0
    if config.attention:
        dctx, dh_top, dW_c = ops.attentional_state_backward(dh_tilde, cache["state"], bugs)
        grads["attention.W_c"] += dW_c
        dh[-1] = dh[-1] + dh_top
        g = ops.attention_backward(dctx, cache["att"], bugs)
        q = 0 if "query_from_bottom_layer" in bugs else -1
        dh[q] = dh[q] + g["query"]
        for name in ("W_a", "v_a"):
            if name in g:
                grads[f"attention.{name}"] += g[name]
        dkeys = g["keys"]
    else:
        dh[-1] = dh[-1] + dh_tilde
    du, dh_prev, dc_prev = stack_step_backward(P, "decoder.lstm", dh, dc, cache["lstm"], grads, bugs)
    np.add.at(grads["decoder.embedding.weight"], cache["y"], du[:, :config.E])
    return (du[:, config.E:] if config.feeds_input else None), dh_prev, dc_prev, dkeys


def next_feed(h_tilde, h_top, bugs):
    """What input feeding carries into step t + 1: h~_t."""
    if "input_feeding_missing" in bugs:
        return np.zeros_like(h_tilde)                                  # h~_0 = 0 at every step
    if "input_feeding_raw_h" in bugs:
        return h_top                                                   # h_t instead of h~_t
    return h_tilde


def decoder_init(h, c, bugs):
    """The decoder starts from the encoder's final (h, c) of every layer."""
    if "decoder_init_zeros" in bugs:
        return [np.zeros_like(x) for x in h], [np.zeros_like(x) for x in c]
    return h, c


# -- teacher-forced forward and BPTT ------------------------------------------------------------

def run(P, config, src, src_len, tgt, bugs, backward: bool):
    """Loss, log_probs (B, T, V), attention (B, T, S) and, when ``backward``, the gradient dict."""
    B, S = src.shape
    y_in, y_out = tgt[:, :-1], tgt[:, 1:]
    T = y_in.shape[1]
    dt = P["generator.weight"].dtype
    keys, h_enc_final, c_enc_final, enc_steps = encode(P, config, src, src_len, bugs)
    mask = np.arange(S)[None, :] < src_len[:, None]                    # (B, S)
    h, c = decoder_init(h_enc_final, c_enc_final, bugs)
    feed = np.zeros((B, config.H), dt)                                 # h~_0 = 0
    log_probs = np.zeros((B, T, config.V_tgt), dt)
    attention = np.zeros((B, T, S), dt)
    dec_steps = []
    for t in range(T):
        log_probs[:, t], attention[:, t], h_tilde, h, c, cache = decoder_step(
            P, config, y_in[:, t], feed, h, c, keys, mask, bugs)
        feed = next_feed(h_tilde, h[-1], bugs)
        dec_steps.append(cache)

    m = y_out != config.pad_id                                         # loss mask (B, T)
    if "loss_over_all_positions" in bugs:
        m = np.ones_like(m)
    count = int(m.sum())
    nll = -np.take_along_axis(log_probs, y_out[:, :, None], axis=2)[:, :, 0]
    loss = (nll * m).sum() / dt.type(count)
    if not backward:
        return float(loss), log_probs, attention, None

    grads = {name: np.zeros_like(p) for name, p in P.items()}
    weight = m.astype(dt) / dt.type(count)                             # d loss / d loss_t
    zeros = np.zeros((B, config.H), dt)
    dh, dc, d_feed = [zeros] * config.L, [zeros] * config.L, zeros
    dkeys = np.zeros_like(keys)
    feeds_h_tilde = config.feeds_input and not ({"input_feeding_missing", "input_feeding_raw_h"} & bugs)
    for t in reversed(range(T)):
        dlogits = ops.nll_backward(log_probs[:, t], y_out[:, t], weight[:, t])
        # step t + 1's input carried h~_t (or, with a bug, h_t or nothing)
        dh_tilde = d_feed if feeds_h_tilde else zeros
        if config.feeds_input and "input_feeding_raw_h" in bugs:
            dh = dh[:-1] + [dh[-1] + d_feed]
        d_feed, dh, dc, dk = decoder_step_backward(P, config, dlogits, dh_tilde, dh, dc, dec_steps[t], grads, bugs)
        dkeys += dk
        d_feed = zeros if d_feed is None else d_feed
    # step 0's feed is the constant h~_0 = 0: its cotangent goes nowhere
    if "decoder_init_zeros" in bugs:
        dh, dc = [zeros] * config.L, [zeros] * config.L                # the encoder's state never reached it
    encode_backward(P, config, dkeys, dh, dc, enc_steps, grads, bugs)
    return float(loss), log_probs, attention, grads


# -- decoding ------------------------------------------------------------------------------------

def greedy(P, config, src, src_len, max_len: int, bugs):
    """From BOS, feed back the argmax (lowest id on ties); a row stops at EOS or max_len."""
    B, S = src.shape
    dt = P["generator.weight"].dtype
    keys, h, c, _ = encode(P, config, src, src_len, bugs)
    mask = np.arange(S)[None, :] < src_len[:, None]
    h, c = decoder_init(h, c, bugs)
    y, feed = np.full(B, config.bos_id), np.zeros((B, config.H), dt)
    tokens = np.full((B, max_len), config.pad_id, np.int64)
    lengths, scores = np.zeros(B, np.int64), np.zeros(B, dt)
    attention = np.zeros((B, max_len, S), dt)
    done = np.zeros(B, bool)
    for t in range(max_len):
        log_probs, a, h_tilde, h, c, _ = decoder_step(P, config, y, feed, h, c, keys, mask, bugs)
        feed = next_feed(h_tilde, h[-1], bugs)
        best = log_probs.argmax(axis=1)                                # first maximum: lowest id
        for b in np.flatnonzero(~done):
            tokens[b, t], lengths[b], attention[b, t] = best[b], t + 1, a[b]
            scores[b] += log_probs[b, best[b]]
        done |= best == config.eos_id
        if done.all():
            break
        if "greedy_feeds_wrong_token" not in bugs:                     # the bug feeds BOS again
            y = best
    return tokens, lengths, scores, attention


def beam(P, config, src, src_len, K: int, max_len: int, length_normalize: bool, bugs):
    """Beam search of width K, one source row at a time (the rules of ``_beam_row``)."""
    B, S = src.shape
    dt = P["generator.weight"].dtype
    keys, h0, c0, _ = encode(P, config, src, src_len, bugs)
    h0, c0 = decoder_init(h0, c0, bugs)
    mask = np.arange(S)[None, :] < src_len[:, None]
    tokens = np.full((B, max_len), config.pad_id, np.int64)
    lengths, scores = np.zeros(B, np.int64), np.zeros(B, dt)
    attention = np.zeros((B, max_len, S), dt)
    for b in range(B):
        row = slice(b, b + 1)
        score, toks, attn = _beam_row(P, config, keys[row], mask[row], [x[row] for x in h0], [x[row] for x in c0],
                                      K, max_len, length_normalize, bugs)
        n = len(toks)
        tokens[b, :n], lengths[b], scores[b], attention[b, :n] = toks, n, score, attn
    return tokens, lengths, scores, attention


def _beam_row(P, config, keys, mask, h, c, K, max_len, length_normalize, bugs):
    """One row: each live beam proposes its min(2K, V) best tokens (lowest id on ties); candidates
    are ranked by summed log-probability, ties by (beam, rank). An EOS among the K best candidates
    finishes a hypothesis; the K best others are the new beams. The row stops once K hypotheses
    finished (or no beam is left), or at max_len, where the live beams count as hypotheses.
    Returns the best hypothesis (by score, or score / length) as (score, tokens, attention rows)."""
    dt = keys.dtype
    M = min(2 * K, config.V_tgt)
    beams = [(dt.type(0), [], [])]                                     # (score, tokens, attention rows)
    y, feed = np.array([config.bos_id]), np.zeros((1, config.H), dt)
    finished = []
    for _ in range(max_len):
        n = len(beams)
        log_probs, a, h_tilde, h, c, _ = decoder_step(P, config, y, feed, h, c, np.repeat(keys, n, 0),
                                                      np.repeat(mask, n, 0), bugs)
        feed = next_feed(h_tilde, h[-1], bugs)
        candidates = []
        for k, (score, _, _) in enumerate(beams):
            top = np.argsort(-log_probs[k], kind="stable")[:M]
            candidates += [(score + log_probs[k, v], k, rank, int(v)) for rank, v in enumerate(top)]
        candidates.sort(key=lambda cand: (-cand[0], cand[1], cand[2]))
        new = []                                                       # (score, parent, token)
        for j, (score, k, _, v) in enumerate(candidates):
            if v == config.eos_id:
                if j < K:
                    finished.append((score, beams[k][1] + [v], beams[k][2] + [a[k]]))
            elif len(new) < K:
                new.append((score, k, v))
            if j >= K - 1 and len(new) == K:
                break
        if len(finished) >= K or not new:
            beams = []
            break
        parents = np.array([k for _, k, _ in new])
        beams = [(score, beams[k][1] + [v], beams[k][2] + [a[k]]) for score, k, v in new]
        y, feed = np.array([v for _, _, v in new]), feed[parents]
        h, c = [x[parents] for x in h], [x[parents] for x in c]

    def key(hyp):
        return hyp[0] / len(hyp[1]) if length_normalize else hyp[0]
    best = finished[0] if finished else beams[0]
    for hyp in finished + beams:                                       # first maximum wins
        if key(hyp) > key(best):
            best = hyp
    return best
