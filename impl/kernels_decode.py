"""Decoding kernels: greedy and beam search, built on the training step.

Each step embeds the previous tokens, runs ``decoder_step`` (the very function
the teacher-forced forward pass uses) and the generator, so a teacher-forced
forward pass on the decoded tokens reproduces their log-probabilities to
rounding: layer 0's pre-activation is one product per step here and three in
the forward pass, and on tiles (``kernels_matmul.ON_TILES``) the sums run in
another order than BLAS. Beam search keeps R = B*K rows, row r attending to
source row r // K; greedy decoding is beam search with K = 1. The helpers that
only ``beam_loop`` calls are ``inlined`` into it.
"""

from __future__ import annotations

import numpy as np

from .kernels_decoder import decoder_step, layer0_preactivation
from .kernels_matmul import mm_nt, products
from .kernels_model import embed_time_major, encode
from .kernels_util import add_bias_, copy1_, copy_, inlined, kernel
from .kernels_vocab import greedy_pick, n_blocks, top_log_probs


@inlined
def layer0_weights(tiles, w):
    """[W_emb | W_feed | W_hh] (4H, E + F + H) of decoder layer 0 (F = H with input feeding,
    else 0): the three products of layer 0's input in one (``decode_step``); (0, 0) on
    tiles, which keep the three products apart."""
    if tiles:
        return np.empty((0, 0), w.dec_W_emb.dtype)
    H4, E = w.dec_W_emb.shape
    F, H = w.dec_W_feed.shape[1], w.dec_W_hh.shape[2]
    W = np.empty((H4, E + F + H), w.dec_W_emb.dtype)
    for i in range(H4):
        for j in range(E):
            W[i, j] = w.dec_W_emb[i, j]
        for j in range(F):
            W[i, E + j] = w.dec_W_feed[i, j]
        for j in range(H):
            W[i, E + F + j] = w.dec_W_hh[0, i, j]
    return W


@inlined
def decode_step(tiles, w, W0, y_prev, h_tilde_prev, h_prev, c_prev, keys, keys_proj, src_row, src_len,
                state, work):
    """One step for R rows fed the tokens y_prev (R,): writes the new ``state`` (``_state``) and
    the generator's logits (R, V) without its bias into ``work`` (``_work``), and returns them
    (the bias is added by the row routines of ``kernels_vocab``, which need only the best few
    log-probabilities).

    On BLAS, layer 0's pre-activation is one product [emb; h~_prev; h_prev] @ W0^T
    with W0 = ``layer0_weights(tiles, w)``: one BLAS call instead of three (medium decoding
    3-9% faster, docs/performance-history.md); it sums in another order than the
    teacher-forced pass, which makes the embedding's product over all T steps at once.
    On tiles the three products stay apart and W0 is not used.
    """
    gates, c, tanh_c, h, a, cat, q_proj, h_tilde = state
    x0, z0, tmp, ctx, logits = work
    R = y_prev.shape[0]
    if tiles:
        y_emb = embed_time_major(w.emb_tgt, y_prev.reshape(R, 1))[0]  # (R, E)
        mm_nt(tiles, y_emb, w.dec_W_emb, x0)                          # (R, 4H)
        add_bias_(x0, w.dec_b[0])
        layer0_preactivation(tiles, w, x0, h_prev[0], h_tilde_prev, z0, tmp)
    else:
        E, F, H = w.emb_tgt.shape[1], w.dec_W_feed.shape[1], h_prev.shape[2]
        for r in range(R):
            for j in range(E):
                x0[r, j] = w.emb_tgt[y_prev[r], j]
            for j in range(F):
                x0[r, E + j] = h_tilde_prev[r, j]
            for j in range(H):
                x0[r, E + F + j] = h_prev[0, r, j]
        mm_nt(tiles, x0, W0, z0)                                      # (R, 4H), on BLAS
        add_bias_(z0, w.dec_b[0])
    decoder_step(tiles, w, z0, h_tilde_prev, h_prev, c_prev, keys, keys_proj, src_row, src_len,
                 gates, c, tanh_c, h, a, cat, q_proj, h_tilde, tmp, ctx)
    return mm_nt(tiles, h_tilde, w.W_out, logits)


@inlined
def _state(L, R, H, S, dt):
    """Buffers of one decoder step for R rows: gates (L, R, 4H), c, tanh_c, h (L, R, H), a (R, S),
    cat (R, 2H), q_proj, h_tilde (R, H)."""
    return (np.empty((L, R, 4 * H), dt), np.empty((L, R, H), dt), np.empty((L, R, H), dt),
            np.empty((L, R, H), dt), np.zeros((R, S), dt), np.zeros((R, 2 * H), dt),
            np.zeros((R, H), dt), np.empty((R, H), dt))


@inlined
def _work(tiles, W0, R, H, V, dt):
    """Scratch of one decoding step, made once per call: x0, layer 0's input ([emb; h~; h]
    (R, E + F + H) on BLAS, the embedding's product (R, 4H) on tiles); z0 and tmp (R, 4H);
    ctx (R, H); the logits (R, V).

    A new array per step cost page faults (glibc's malloc hands large blocks out
    as fresh pages): small float32 beam search, with a new (160, 1000) logits array
    per step, faulted 7,400 times a call (docs/implementation.md).
    """
    width = 4 * H if tiles else W0.shape[1]
    return (np.empty((R, width), dt), np.empty((R, 4 * H), dt), np.empty((R, 4 * H), dt),
            np.empty((R, H), dt), np.empty((R, V), dt))


def greedy_kernel(w, src, src_len, max_len, bos, eos, pad):
    """Argmax decoding (lowest id on ties) until EOS or max_len: beam search with one
    beam, where the best token alone decides (an EOS ends the row, any other is fed
    back). One loop for both decoders: Numba compiles it once, not twice.

    Returns tokens (B, max_len), lengths (B,), scores (B,), attention (B, max_len, S).
    """
    enc, h0, c0 = encode(w, src, src_len, caches=False)  # Python: the loop does not link the encoder
    tokens, lengths, scores, _, attention = beam_loop(products(w.tiles), w, enc[5], enc[6], src_len, h0, c0,
                                                      1, max_len, False, bos, eos, pad)
    return tokens, lengths, scores, attention


@kernel
def stable_order_desc(score, n, order):
    """order[:n] = indices of score[:n], highest first, equal scores in index order.

    An insertion sort: n <= K * 2K candidates is small, and NumPy's stable argsort
    would cost Numba seconds of compilation (mergesort) for nothing.
    """
    for i in range(n):
        j = i
        while j > 0 and score[i] > score[order[j - 1]]:
            order[j] = order[j - 1]
            j -= 1
        order[j] = i


@inlined
def _backtrack(b, K, t_end, k_end, tok_end, hist_tok, hist_par, hist_att, tokens, attention):
    """Write the hypothesis that emitted tok_end at step t_end from beam slot k_end."""
    tokens[b, t_end] = tok_end
    copy1_(attention[b, t_end], hist_att[t_end, b * K + k_end])
    k = k_end
    for s in range(t_end - 1, -1, -1):
        r = b * K + k
        parent = hist_par[s, r]
        tokens[b, s] = hist_tok[s, r]
        copy1_(attention[b, s], hist_att[s, b * K + parent])
        k = parent


def beam_kernel(w, src, src_len, K, max_len, length_normalize, bos, eos, pad):
    """Beam search of width K per source row (see ``beam_loop`` and ``decode.beam_search``)."""
    enc, h0, c0 = encode(w, src, src_len, caches=False)
    return beam_loop(products(w.tiles), w, enc[5], enc[6], src_len, h0, c0, K, max_len, length_normalize,
                     bos, eos, pad)


@kernel
def beam_loop(tiles, w, keys, keys_proj, src_len, h0, c0, K, max_len, length_normalize, bos, eos, pad):
    """Beam search of width K per source row (see ``decode.beam_search``).

    Candidates: each live beam proposes its min(2K, V) best tokens (stable order:
    lowest id on ties), or for K = 1 its best token alone (``greedy_pick``); all
    candidates are ranked by summed log-prob, ties by (beam, rank). An EOS among
    the first K candidates finishes a hypothesis; the first K others become the
    new beams. A row stops once K hypotheses finished, or at max_len, where its
    live beams count as hypotheses too.
    Returns tokens, lengths, scores, normalized scores, attention.
    """
    B, S = keys.shape[0], keys.shape[1]
    R = B * K
    L, _, H = h0.shape
    dt = keys.dtype
    V = w.W_out.shape[0]
    M = 1 if K == 1 else min(2 * K, V)
    neg_inf = -np.inf
    # Arrays are filled by loops, not np.full/np.zeros, and left empty where every entry is
    # written before it is read (the histories up to the last step, the finished list up to
    # n_fin): each NumPy constructor compiles its own library code per signature.
    src_row = np.empty(R, np.int64)
    h = np.empty((L, R, H), dt)
    c = np.empty((L, R, H), dt)
    y = np.empty(R, np.int64)
    beam_score = np.empty(R, dt)
    for r in range(R):
        src_row[r] = r // K
        y[r] = bos
        beam_score[r] = 0.0 if r % K == 0 else neg_inf                # one live beam at the start
        for k in range(L):
            for j in range(H):
                h[k, r, j] = h0[k, r // K, j]
                c[k, r, j] = c0[k, r // K, j]
    h_tilde = np.zeros((R, H), dt)
    hist_tok = np.empty((max_len, R), np.int64)                      # written at every step
    hist_par = np.empty((max_len, R), np.int64)
    hist_att = np.empty((max_len, R, S), dt)
    cap = 2 * K
    fin_t = np.empty((B, cap), np.int64)                              # read below n_fin only
    fin_k = np.empty((B, cap), np.int64)
    fin_score = np.empty((B, cap), dt)
    n_fin = np.empty(B, np.int64)
    done = np.empty(B, np.bool_)
    for b in range(B):
        n_fin[b] = 0
        done[b] = False
    state = _state(L, R, H, S, dt)
    _, c_new, _, h_new, a, _, _, h_tilde_new = state
    new_score = np.empty(R, dt)                                       # every slot written each step
    new_par = np.empty(R, np.int64)
    new_tok = np.empty(R, np.int64)
    cand_score = np.empty(K * M, dt)
    cand_k = np.empty(K * M, np.int64)
    cand_v = np.empty(K * M, np.int64)
    top = np.empty(M, np.int64)
    top_lp = np.empty(M, dt)
    top_x = np.empty(M, dt)
    scratch = np.empty(V, dt)
    block_max = np.empty(n_blocks(V), dt)
    order = np.empty(K * M, np.int64)
    W0 = layer0_weights(tiles, w)
    work = _work(tiles, W0, R, H, V, dt)
    t_last = 0
    for t in range(max_len):
        t_last = t
        logits = decode_step(tiles, w, W0, y, h_tilde, h, c, keys, keys_proj, src_row, src_len, state, work)
        copy_(hist_att[t], a)
        for b in range(B):
            n_alive = 0
            if not done[b]:
                n_c = np.int64(0)                             # not a literal 0: see kernels_util
                for k in range(K):
                    r = b * K + k
                    if beam_score[r] == neg_inf:
                        continue
                    if K == 1:                                        # greedy decoding
                        top[0], top_lp[0] = greedy_pick(logits[r], w.b_out, scratch)
                    else:
                        top_log_probs(logits[r], w.b_out, scratch, block_max, top, top_lp, top_x)
                    for m in range(M):
                        cand_score[n_c] = beam_score[r] + top_lp[m]
                        cand_k[n_c] = k
                        cand_v[n_c] = top[m]
                        n_c += 1
                stable_order_desc(cand_score, n_c, order)
                for j in range(n_c):
                    i = order[j]
                    if cand_v[i] == eos:
                        if j < K:
                            f = n_fin[b]
                            fin_t[b, f] = t
                            fin_k[b, f] = cand_k[i]
                            fin_score[b, f] = cand_score[i]
                            n_fin[b] = f + 1
                    elif n_alive < K:
                        slot = b * K + n_alive
                        new_score[slot] = cand_score[i]
                        new_par[slot] = cand_k[i]
                        new_tok[slot] = cand_v[i]
                        n_alive += 1
                    if j >= K - 1 and n_alive == K:
                        break
                if n_fin[b] >= K or n_alive == 0:
                    done[b] = True
            for k in range(n_alive, K):                               # dead slots
                slot = b * K + k
                new_score[slot] = neg_inf
                new_par[slot] = 0
                new_tok[slot] = pad
        for r in range(R):
            hist_tok[t, r] = new_tok[r]
            hist_par[t, r] = new_par[r]
            beam_score[r] = new_score[r]
            y[r] = new_tok[r]
            parent = (r // K) * K + new_par[r]                        # reorder the state, row by row
            copy1_(h_tilde[r], h_tilde_new[parent])                   # (vectorised: 5x faster than
            for k in range(L):                                        # element by element across layers)
                copy1_(h[k, r], h_new[k, parent])
                copy1_(c[k, r], c_new[k, parent])
        n_done = 0
        for b in range(B):
            n_done += done[b]
        if n_done == B:
            break

    tokens = np.empty((B, max_len), np.int64)
    lengths = np.empty(B, np.int64)                                   # these three: written for every b
    scores = np.empty(B, dt)
    normalized = np.empty(B, dt)
    attention = np.zeros((B, max_len, S), dt)
    for b in range(B):
        for t in range(max_len):
            tokens[b, t] = pad
        best_key = neg_inf
        best = -1                                                     # index into finished, or cap + slot
        for f in range(n_fin[b]):
            n = fin_t[b, f] + 1
            key = fin_score[b, f] / n if length_normalize else fin_score[b, f]
            if best == -1 or key > best_key:
                best_key, best = key, f
        if not done[b]:                                               # max_len reached: live beams count
            for k in range(K):
                r = b * K + k
                if beam_score[r] == neg_inf:
                    continue
                key = beam_score[r] / (t_last + 1) if length_normalize else beam_score[r]
                if best == -1 or key > best_key:
                    best_key, best = key, cap + k
        if best < cap:
            t_end, k_end, tok_end = fin_t[b, best], fin_k[b, best], eos
            scores[b] = fin_score[b, best]
        else:
            r = b * K + best - cap
            t_end, k_end, tok_end = t_last, hist_par[t_last, r], hist_tok[t_last, r]
            scores[b] = beam_score[r]
        _backtrack(b, K, t_end, k_end, tok_end, hist_tok, hist_par, hist_att, tokens, attention)
        lengths[b] = t_end + 1
        normalized[b] = scores[b] / lengths[b]
    return tokens, lengths, scores, normalized, attention
