"""The pieces of MODEL.md in plain NumPy, each forward next to its backward.

Every piece works on a batch of ``B`` rows (shapes in the comments) and
returns, with its outputs, a ``cache`` of what its backward needs. A backward
takes the cotangents of the outputs and returns those of the inputs and of
the parameters; the chain rule for each piece is written out by hand from
the equations (nothing is taken from ``attnspec.impl``), so this is a second,
independent implementation to set beside the Numba one and the oracle.

Each function also takes ``bugs``, a set of names from ``spec.mutants.MUTANTS``.
An empty set is MODEL.md; each name switches on one deliberate mistake at the
one line where a person would make it (look for ``in bugs``).
"""

from __future__ import annotations

import numpy as np

NO_BUGS: frozenset[str] = frozenset()


def sigmoid(x):
    """sigma(x) = 1 / (1 + exp(-x)); exp overflows to inf for x < -709, which gives the right 0."""
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


# -- LSTM cell ------------------------------------------------------------------------

def gate_blocks(H: int, bugs=NO_BUGS) -> dict[str, slice]:
    """Where each gate's pre-activation sits in z[4H]: PyTorch's order i, f, g, o."""
    order = ("f", "i", "g", "o") if "lstm_gate_order_figo" in bugs else ("i", "f", "g", "o")
    return {gate: slice(k * H, (k + 1) * H) for k, gate in enumerate(order)}


def lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh, bugs=NO_BUGS):
    """z = W_ih x + b_ih + W_hh h + b_hh;  c' = f * c + i * g;  h' = o * tanh(c').

    x (B, D), h and c (B, H) -> h' (B, H), c' (B, H), cache.
    """
    blk = gate_blocks(h.shape[1], bugs)
    z = x @ W_ih.T + b_ih + h @ W_hh.T + b_hh                        # (B, 4H)
    i, f = sigmoid(z[:, blk["i"]]), sigmoid(z[:, blk["f"]])
    g, o = np.tanh(z[:, blk["g"]]), sigmoid(z[:, blk["o"]])
    c_new = f * c + i * g
    tanh_c = np.tanh(c_new)
    h_new = o * tanh_c
    cache = dict(x=x, h=h, c=c, i=i, f=f, g=g, o=o, tanh_c=tanh_c, W_ih=W_ih, W_hh=W_hh, blk=blk)
    return h_new, c_new, cache


def lstm_cell_backward(dh_new, dc_new, cache, bugs=NO_BUGS):
    """Cotangents of (h', c') -> dx, dh, dc and the parameter gradients (dict W_ih, W_hh, b_ih, b_hh)."""
    k = cache
    i, f, g, o, tanh_c = k["i"], k["f"], k["g"], k["o"], k["tanh_c"]
    dc_new = dc_new + dh_new * o * (1 - tanh_c**2)                    # h' = o tanh(c') reaches c' too
    dz = np.empty((dh_new.shape[0], 4 * dh_new.shape[1]), dh_new.dtype)  # (B, 4H)
    dz[:, k["blk"]["i"]] = dc_new * g * i * (1 - i)                   # sigma' = sigma (1 - sigma)
    dz[:, k["blk"]["f"]] = dc_new * k["c"] * f * (1 - f)
    dz[:, k["blk"]["g"]] = dc_new * i * (1 - g**2)                    # tanh' = 1 - tanh^2
    dz[:, k["blk"]["o"]] = dh_new * tanh_c * o * (1 - o)
    db = dz.sum(axis=0)
    grads = {"W_ih": dz.T @ k["x"], "W_hh": dz.T @ k["h"], "b_ih": db,
             # z holds b_ih + b_hh: both biases get the same gradient
             "b_hh": np.zeros_like(db) if "bias_hh_grad_missing" in bugs else db.copy()}
    return dz @ k["W_ih"], dz @ k["W_hh"], dc_new * f, grads


# -- attention: scores ----------------------------------------------------------------------

def scores(score: str, query, keys, W_a=None, v_a=None, bugs=NO_BUGS):
    """e_s = score(h, h^enc_s) of MODEL.md.  query (B, H), keys (B, S, H) -> e (B, S), cache."""
    H = query.shape[1]
    cache = dict(score=score, query=query, keys=keys, W_a=W_a, v_a=v_a)
    if score in ("dot", "scaled_dot"):
        scale = 1.0
        if score == "scaled_dot":
            scale = H if "scaled_dot_by_H" in bugs else np.sqrt(H)
        cache["scale"] = query.dtype.type(scale)
        e = np.einsum("bh,bsh->bs", query, keys) / cache["scale"]
    elif score == "general":
        W = W_a.T if "general_W_a_transposed" in bugs else W_a        # h^T W_a k
        cache["W"] = W
        e = np.einsum("bh,bsh->bs", query, keys @ W.T)
    elif score == "concat":
        q = np.broadcast_to(query[:, None, :], keys.shape)            # (B, S, H)
        hk = np.concatenate([keys, q] if "concat_order_swapped" in bugs else [q, keys], axis=2)  # [h; k]
        tanh_z = np.tanh(hk @ W_a.T)                                   # (B, S, H)
        cache.update(hk=hk, tanh_z=tanh_z)
        e = tanh_z @ v_a
    else:
        raise ValueError(f"score: unknown score function {score!r}")
    return e, cache


def scores_backward(de, cache, bugs=NO_BUGS):
    """de (B, S) -> dict query (B, H), keys (B, S, H) and, per score, W_a and v_a."""
    k, score = cache, cache["score"]
    query, keys = k["query"], k["keys"]
    H = query.shape[1]
    out = {}
    if score in ("dot", "scaled_dot"):                                # e_s = h . k_s / scale
        out["query"] = np.einsum("bs,bsh->bh", de, keys) / k["scale"]
        out["keys"] = de[:, :, None] * query[:, None, :] / k["scale"]
    elif score == "general":                                           # e_s = h^T W k_s
        W = k["W"]
        out["query"] = np.einsum("bs,bsh->bh", de, keys @ W.T)
        out["keys"] = de[:, :, None] * (query @ W)[:, None, :]
        dW = np.einsum("bs,bh,bsj->hj", de, query, keys)
        out["W_a"] = dW.T if "general_W_a_transposed" in bugs else dW
    else:                                                              # e_s = v^T tanh(W_a [h; k_s])
        tanh_z = k["tanh_z"]
        out["v_a"] = np.einsum("bs,bsh->h", de, tanh_z)
        dz = de[:, :, None] * k["v_a"] * (1 - tanh_z**2)               # (B, S, H)
        out["W_a"] = np.einsum("bsh,bsj->hj", dz, k["hk"])
        dhk = dz @ k["W_a"]                                            # (B, S, 2H)
        dq, dk = (dhk[:, :, H:], dhk[:, :, :H]) if "concat_order_swapped" in bugs else (dhk[:, :, :H], dhk[:, :, H:])
        out["query"], out["keys"] = dq.sum(axis=1), dk
    if "attention_keys_grad_dropped" in bugs:
        out["keys"] = np.zeros_like(keys)                             # keys only reached through ctx
    return out


# -- attention: masked softmax and context ------------------------------------------------

def masked_softmax(e, mask, bugs=NO_BUGS):
    """a = softmax over s of e, with e = -inf where s >= src_len.  e (B, S), mask bool (B, S) -> a (B, S)."""
    axis = 0 if "softmax_wrong_axis" in bugs else 1                  # over the batch, not the source
    if "mask_ignored" not in bugs:
        e = np.where(mask, e, -np.inf)                                 # exp(-inf) = 0: masked weights are exactly 0
    with np.errstate(over="ignore", invalid="ignore"):                # a mutant may overflow: let NaN show
        if "softmax_no_max_subtraction" not in bugs:
            e = e - e.max(axis=axis, keepdims=True)                    # same softmax, exp cannot overflow
        w = np.exp(e)
        return w / w.sum(axis=axis, keepdims=True)


def masked_softmax_backward(a, da, bugs=NO_BUGS):
    """da (B, S) -> de (B, S):  de_s = a_s (da_s - sum_j a_j da_j);  0 where a_s = 0 (masked)."""
    axis = 0 if "softmax_wrong_axis" in bugs else 1
    if "softmax_vjp_mean_dropped" in bugs:
        return a * da                                                  # the -<a, da> term forgotten
    return a * (da - (a * da).sum(axis=axis, keepdims=True))


def context(a, keys):
    """ctx = sum_s a_s h^enc_s.  a (B, S), keys (B, S, H) -> ctx (B, H)."""
    return np.einsum("bs,bsh->bh", a, keys)


def context_backward(dctx, a, keys):
    """dctx (B, H) -> da (B, S) = k_s . dctx and dkeys (B, S, H) = a_s dctx."""
    return np.einsum("bsh,bh->bs", keys, dctx), a[:, :, None] * dctx[:, None, :]


def attention(score, query, keys, mask, W_a=None, v_a=None, bugs=NO_BUGS):
    """Scores, masked softmax, context: a (B, S), ctx (B, H), cache."""
    e, score_cache = scores(score, query, keys, W_a, v_a, bugs)
    a = masked_softmax(e, mask, bugs)
    return a, context(a, keys), dict(score_cache=score_cache, a=a, keys=keys)


def attention_backward(dctx, cache, bugs=NO_BUGS):
    """dctx (B, H) -> dict scores (B, S), query, keys (ctx's and the scores' paths), W_a, v_a."""
    da, dkeys_ctx = context_backward(dctx, cache["a"], cache["keys"])
    de = masked_softmax_backward(cache["a"], da, bugs)
    out = scores_backward(de, cache["score_cache"], bugs)
    out["keys"] = out["keys"] + dkeys_ctx
    out["scores"] = de
    return out


# -- attentional state, generator, loss -------------------------------------------------

def attentional_state(W_c, ctx, h, bugs=NO_BUGS):
    """h~ = tanh(W_c [ctx; h]), no bias.  ctx, h (B, H) -> h~ (B, H), cache."""
    parts = [h, ctx] if "W_c_order_swapped" in bugs else [ctx, h]
    ctx_h = np.concatenate(parts, axis=1)                             # (B, 2H)
    h_tilde = np.tanh(ctx_h @ W_c.T)
    return h_tilde, dict(ctx_h=ctx_h, h_tilde=h_tilde, W_c=W_c)


def attentional_state_backward(dh_tilde, cache, bugs=NO_BUGS):
    """dh~ (B, H) -> dctx, dh (B, H), dW_c (H, 2H)."""
    h_tilde = cache["h_tilde"]
    slope = (1 - h_tilde) if "tanh_grad_one_minus_tanh" in bugs else (1 - h_tilde**2)
    dz = dh_tilde * slope
    dctx_h = dz @ cache["W_c"]
    H = h_tilde.shape[1]
    first, second = dctx_h[:, :H], dctx_h[:, H:]
    dctx, dh = (second, first) if "W_c_order_swapped" in bugs else (first, second)
    return dctx, dh, dz.T @ cache["ctx_h"]


def log_softmax(logits):
    """log softmax(logits) = logits - log sum exp(logits), with the row maximum taken out first."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def nll_backward(log_probs, labels, weight):
    """d(weight * -log_probs[label]) / d logits = weight * (softmax - onehot).  (B, V), (B,), (B,)."""
    dlogits = np.exp(log_probs)
    dlogits[np.arange(len(labels)), labels] -= 1
    return dlogits * weight[:, None]
