"""Where the time of one Numba training step goes (issue 7, profile before optimising).

    python benchmarks/profile_step.py [--sizes small,large] [--dtype float32] [--repeats 5]

Calls the pieces of ``impl.model.loss_and_grads`` one by one (the Python layer,
then each kernel of impl/kernels_model.py) and, inside the decoder and the
encoder, re-runs each kind of per-step work T (or S) times from small @njit
drivers written here around the unchanged impl kernels, so that no Python
dispatch cost is added per step; the batched products are timed through
@njit wrappers too, so that they run on SciPy's OpenBLAS as in the kernels
(NumPy's own OpenBLAS is a second thread pool; mixing the two on 2 cores made
small products look 10x slower from spin-waiting threads). Every figure is a median over ``--repeats``
calls on 2 threads. The per-step split of the decoder is measured separately
from ``decoder_forward``/``decoder_backward`` and compared with them (the
"unaccounted" row is what the split misses: copies, allocation, loop overhead).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (SIZES, make_problem, limit_threads)

from attnspec.impl import model as M  # noqa: E402
from attnspec.impl.kernels_attention import attention_backward, attention_forward  # noqa: E402
from attnspec.impl.kernels_decoder import decoder_backward, decoder_forward  # noqa: E402
from attnspec.impl.kernels_lstm import lstm_cell_backward, lstm_cell_forward  # noqa: E402
from attnspec.impl.kernels_matmul import gemm, times  # noqa: E402
from attnspec.impl.kernels_math import tanh_  # noqa: E402
from attnspec.impl.kernels_model import (backward_transposes, embed_backward, embed_time_major, encoder_backward,  # noqa: E402
                                         encoder_forward, final_state, generator_loss_backward)
from attnspec.impl.kernels_vocab import log_softmax_grad_rows  # noqa: E402


# -- drivers: each kind of per-step work, repeated n times inside compiled code -----------

@njit
def rec_gemms_fwd(n, h, W_hh, h_tilde, W_feed):
    """Decoder step's recurrent products: h @ W_hh^T + h~ @ W_feed^T (B, 4H)."""
    for _ in range(n):
        z = h @ W_hh.T
        z += h_tilde @ W_feed.T
    return z


@njit
def enc_rec_gemm(n, h, W_hh):
    for _ in range(n):
        z = h @ W_hh.T
    return z


@njit
def cells_fwd(n, z, c_prev, gates, c, tanh_c, h):
    for _ in range(n):
        lstm_cell_forward(z, c_prev, gates, c, tanh_c, h)


@njit
def attn_fwd(n, query, keys, keys_proj, W_q, v_a, denom, src_row, src_len, q_proj, a, ctx):
    for _ in range(n):
        attention_forward(1, query, keys, keys_proj, W_q, v_a, denom, src_row, src_len, q_proj, a, ctx)


@njit
def out_layer_fwd(n, cat, W_c):
    """h~ = tanh(W_c [ctx; h]) (B, H), with the kernels' tanh (kernels_math)."""
    for _ in range(n):
        h_tilde = cat @ W_c.T
        for r in range(h_tilde.shape[0]):
            for j in range(h_tilde.shape[1]):
                h_tilde[r, j] = tanh_(h_tilde[r, j])
    return h_tilde


@njit
def attn_bwd(n, query, keys, keys_proj, W_q, v_a, denom, src_row, src_len, q_proj, a, dctx, dquery, de,
             dq_proj, dkeys_proj, dv_a):
    for _ in range(n):
        attention_backward(1, query, keys, keys_proj, W_q, v_a, denom, src_row, src_len, q_proj, a, dctx,
                           dquery, de, dq_proj, dkeys_proj, dv_a)


@njit
def cells_bwd(n, dh, dc, gates, c_prev, tanh_c, dz, dc_prev):
    for _ in range(n):
        lstm_cell_backward(dh, dc, gates, c_prev, tanh_c, dz, dc_prev)


@njit
def rec_gemms_bwd(n, dz, W_hh, W_hh_T, W_feed, W_feed_T, dpre, W_c, W_c_T):
    """Decoder backward step's products: dz @ W_hh, dz @ W_feed, dpre @ W_c, as the
    backward runs them (``times``: on the weights or through their transposes)."""
    for _ in range(n):
        a = times(dz, W_hh, W_hh_T)
        b = times(dz, W_feed, W_feed_T)
        d = times(dpre, W_c, W_c_T)
    return a, b, d


@njit
def enc_rec_gemm_bwd(n, dz, W_hh, W_hh_T):
    for _ in range(n):
        z = times(dz, W_hh, W_hh_T)
    return z


@njit
def loss_grad_rows_only(x, bias, labels, pad, count):
    """The fused per-row vocabulary work of training: log p_y and dlogits in place."""
    log_softmax_grad_rows(x, bias, labels, pad, count, np.empty(x.shape[0], x.dtype),
                          np.zeros(x.shape[1], x.dtype))


@njit
def mm_nt(a, b):
    return a @ b.T


@njit
def mm_tn(a, b):
    return a.T @ b


@njit
def mm_nn(a, b):
    return a @ b


def med(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def profile(size: str, dtype: str, repeats: int) -> list[tuple[str, str, float]]:
    """(category, piece, seconds) rows for one training step of ``size``."""
    config, params, src, src_len, tgt = bench.make_problem(size, dtype)
    B, S, E, V = bench.SIZES[size]
    T, H = S, E
    dt = np.dtype(dtype)
    rows = []
    total = med(lambda: M.loss_and_grads(params, config, src, src_len, tgt), repeats)

    # the Python layer
    rows.append(("python", "validate + pack_weights (_prepare)", med(lambda: M._prepare(params, config, src, src_len, tgt), repeats)))
    config, w, src, src_len, y_in, labels, _ = M._prepare(params, config, src, src_len, tgt)

    # forward kernels, one by one
    rows.append(("-", "encoder_forward", med(lambda: encoder_forward(w, src, src_len), repeats)))
    enc = encoder_forward(w, src, src_len)
    x, e_gates, e_c, e_tanh_c, e_h, keys, keys_proj = enc
    h0, c0 = final_state(e_c, e_h)
    y_emb = embed_time_major(w.emb_tgt, y_in)
    rows.append(("copies", "embed target + final_state", med(lambda: (final_state(e_c, e_h), embed_time_major(w.emb_tgt, y_in)), repeats)))
    rows.append(("-", "decoder_forward", med(lambda: decoder_forward(w, y_emb, h0, c0, keys, keys_proj, src_len), repeats)))
    dec = decoder_forward(w, y_emb, h0, c0, keys, keys_proj, src_len)
    h_tilde_bt = np.ascontiguousarray(dec[7][1:].transpose(1, 0, 2).reshape(B * T, H))
    logits = mm_nt(h_tilde_bt, w.W_out)
    count = dt.type(B * T)
    # Into a NumPy array, as loss_and_grads gives it: allocated inside a kernel, the (B*T, V)
    # output took 12,500 page faults a call at large size (NumPy asks for huge pages) and
    # this row 2.4x the product's time.
    rows.append(("GEMM big", "generator GEMM h~ W_out^T (B*T, V)",
                 med(lambda: gemm(h_tilde_bt, w.W_out.T, np.empty_like(logits)), repeats)))
    rows.append(("softmax vocab", "generator loss + dlogits rows (fused, in place)",
                 med(lambda: loss_grad_rows_only(logits.copy(), w.b_out, labels, config.pad_id, count), repeats)
                 - med(lambda: logits.copy(), repeats)))
    def generator():       # allocates its (B*T, V) and (V, H) arrays as loss_and_grads does
        return generator_loss_backward(h_tilde_bt, w.W_out, w.b_out, labels, config.pad_id, count,
                                       np.empty_like(logits), np.empty_like(w.W_out))
    rows.append(("-", "generator_loss_backward (forward + backward)", med(generator, repeats)))
    dlogits = logits
    rows.append(("GEMM big", "generator dW_out = dlogits^T h~", med(lambda: mm_tn(dlogits, h_tilde_bt), repeats)))
    rows.append(("GEMM big", "generator dh~ = dlogits W_out", med(lambda: mm_nn(dlogits, w.W_out), repeats)))
    _, dW_out, db_out, dh_bt = generator()
    dh_tilde = np.ascontiguousarray(dh_bt.reshape(B, T, H).transpose(1, 0, 2))
    gates, c, tanh_c, h, a, cat, q_proj, h_tilde = dec
    wT = backward_transposes(w)
    rows.append(("-", "decoder_backward", med(lambda: decoder_backward(w, y_emb, keys, keys_proj, src_len, gates, c, tanh_c, h, a, cat, q_proj, h_tilde, dh_tilde, *wT[1:]), repeats)))
    db = decoder_backward(w, y_emb, keys, keys_proj, src_len, gates, c, tanh_c, h, a, cat, q_proj, h_tilde, dh_tilde, *wT[1:])
    rows.append(("copies", "embed_backward (target)", med(lambda: embed_backward(db[0], y_in, np.zeros_like(w.emb_tgt)), repeats)))
    rows.append(("-", "encoder_backward", med(lambda: encoder_backward(w, wT[0], src, src_len, x, e_gates, e_c, e_tanh_c, e_h, db[10], db[11], db[12]), repeats)))
    g = M.model_backward(w, src, src_len, y_in, enc, y_emb, dec, dh_bt) + (dW_out, db_out)
    rows.append(("python", "unpack_grads + finiteness check", med(lambda: M._check_finite("profile", *M.unpack_grads(g, config).values()), repeats)))

    # split of the decoder per step (T steps), forward
    hq = np.ascontiguousarray(h[1, 0])
    ht = np.ascontiguousarray(h_tilde[1])
    src_row = np.arange(B)
    zb = np.zeros((B, 4 * H), dt)
    e0 = np.zeros((0, 0), dt)
    buf = [np.empty((B, 4 * H), dt)] + [np.empty((B, H), dt) for _ in range(3)]
    a_buf, ctx_buf = np.zeros((B, S), dt), np.zeros((B, H), dt)
    cat1 = np.ascontiguousarray(cat[0])
    rows += [
        ("recurrence", "dec fwd: recurrent GEMMs x T", med(lambda: rec_gemms_fwd(T, hq, w.dec_W_hh[0], ht, w.dec_W_feed), repeats)),
        ("recurrence", "dec fwd: LSTM cells x T", med(lambda: cells_fwd(T, zb, hq, *buf), repeats)),
        ("attention", "dec fwd: attention_forward x T", med(lambda: attn_fwd(T, hq, keys, keys_proj, e0, np.zeros(0, dt), w.denom, src_row, src_len, np.zeros((B, H), dt), a_buf, ctx_buf), repeats)),
        ("recurrence", "dec fwd: tanh(W_c [ctx; h]) x T", med(lambda: out_layer_fwd(T, cat1, w.att_W_c), repeats)),
        ("GEMM big", "dec fwd: embedding projection (T*B, 4H)", med(lambda: mm_nt(y_emb.reshape(T * B, E), w.dec_W_emb), repeats)),
    ]
    # decoder backward per step
    dz = np.ascontiguousarray(gates[0, 0])
    dpre = np.ascontiguousarray(dh_tilde[0])
    rows += [
        ("attention", "dec bwd: attention_backward x T", med(lambda: attn_bwd(T, hq, keys, keys_proj, e0, np.zeros(0, dt), w.denom, src_row, src_len, np.zeros((B, H), dt), a[0], dpre, np.zeros((B, H), dt), np.zeros((B, S), dt), np.zeros((B, H), dt), np.zeros((B, S, H), dt), np.zeros(0, dt)), repeats)),
        ("recurrence", "dec bwd: LSTM cells x T", med(lambda: cells_bwd(T, dpre, dpre, dz, hq, hq, np.empty((B, 4 * H), dt), np.empty((B, H), dt)), repeats)),
        ("recurrence", "dec bwd: dz W_hh, dz W_feed, dpre W_c x T", med(lambda: rec_gemms_bwd(T, dz, w.dec_W_hh[0], wT[1][0], w.dec_W_feed, wT[3], dpre, w.att_W_c, wT[4]), repeats)),
    ]
    dZ = np.ascontiguousarray(gates[:, 0].reshape(T * B, 4 * H))
    hs = np.ascontiguousarray(h[:T, 0].reshape(T * B, H))
    dpre_all = np.ascontiguousarray(dh_tilde.reshape(T * B, H))
    cat_all = np.ascontiguousarray(cat.reshape(T * B, 2 * H))
    rows.append(("GEMM big", "dec bwd: dW_hh, dW_feed, dW_emb, dW_c, dy_emb (GEMMs over T*B rows)",
                 med(lambda: (mm_tn(dZ, hs), mm_tn(dZ, hs), mm_tn(dZ, y_emb.reshape(T * B, E)), mm_nn(dZ, w.dec_W_emb),
                              mm_tn(dpre_all, cat_all)), repeats)))
    a_bts = np.ascontiguousarray(a.transpose(1, 0, 2))                    # (B, T, S)
    q_bth = np.ascontiguousarray(h[1:, 0].transpose(1, 0, 2))             # (B, T, H)
    rows.append(("attention", "dec bwd: key gradients a^T dctx + de^T q (2B small GEMMs)",
                 med(lambda: [(mm_tn(a_bts[b], q_bth[b]), mm_tn(a_bts[b], q_bth[b])) for b in range(B)], repeats)))
    # encoder per step
    he = np.ascontiguousarray(e_h[0, 1])
    rows += [
        ("GEMM big", "enc fwd: input projection (S*B, 4H)", med(lambda: mm_nt(x.reshape(S * B, E), w.enc_W_ih0), repeats)),
        ("recurrence", "enc fwd: recurrent GEMM x S", med(lambda: enc_rec_gemm(S, he, w.enc_W_hh[0]), repeats)),
        ("recurrence", "enc fwd: LSTM cells x S", med(lambda: cells_fwd(S, zb, he, *buf), repeats)),
        ("recurrence", "enc bwd: LSTM cells x S + dz W_hh x S", med(lambda: (cells_bwd(S, dpre, dpre, dz, he, he, np.empty((B, 4 * H), dt), np.empty((B, H), dt)), enc_rec_gemm_bwd(S, dz, w.enc_W_hh[0], wT[0][0])), repeats)),
        ("GEMM big", "enc bwd: dW_ih, dW_hh, dx (3 GEMMs over S*B rows)", med(lambda: (mm_tn(dZ, x.reshape(S * B, E)), mm_tn(dZ, hs), mm_nn(dZ, w.enc_W_ih0)), repeats)),
    ]
    rows.append(("total", "loss_and_grads (whole step)", total))
    return rows


def table(size, dtype, rows) -> str:
    total = rows[-1][2]
    lines = [f"#### {size}, {dtype}: one training step = {total * 1e3:.1f} ms", "",
             "| category | piece | ms | % of step |", "| --- | --- | --- | --- |"]
    for cat, piece, sec in rows:
        lines.append(f"| {cat} | {piece} | {sec * 1e3:.2f} | {sec / total:.0%} |")
    split = {}
    for cat, _, sec in rows:
        if cat not in ("-", "total"):
            split[cat] = split.get(cat, 0.0) + sec
    kernels = sum(sec for cat, piece, sec in rows if cat == "-" or cat == "python" or piece.startswith("embed") or cat == "copies")
    lines += ["", "By category (the pieces measured in isolation): " + ", ".join(
        f"{k} {v * 1e3:.1f} ms ({v / total:.0%})" for k, v in sorted(split.items(), key=lambda kv: -kv[1]))
        + f"; the top-level pieces (rows '-', python, copies) sum to {kernels * 1e3:.1f} ms of {total * 1e3:.1f} ms.", ""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="small,large")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    import torch  # noqa: F401  same process state as bench.py
    bench.limit_threads()
    for size in args.sizes.split(","):
        print(table(size, args.dtype, profile(size, args.dtype, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
