"""Where the time of one Numba greedy decode goes (issue 7, profile before optimising).

    python benchmarks/profile_decode.py [--sizes small,medium] [--dtypes float32,float64] [--repeats 30]

Times ``impl.decode.greedy_decode`` whole, with max_len = T and with max_len = 1
(the fixed cost: checks, weights, encoder, one step), then its pieces called
one at a time on the benchmark's problem: the Python checks, ``pack_weights``,
the encoder (``encode``), one decoder step (``decode_step``: embedding, LSTM,
attention and every product of the step), the generator product alone, and
``greedy_pick`` over the B rows of one step's logits, driven from compiled code
so that no Python call is counted per row. Medians over ``--repeats`` calls on 2
threads. The per-step figure is (whole - fixed) / (T - 1).

A second table takes one decoding step apart for R = B rows (greedy) and R =
B * 5 (beam): each piece of ``decode_step`` and the vocabulary routine of each
search over all R rows, each repeated in compiled code (microseconds, best of
``--repeats`` runs of 20). On BLAS, as at small and medium size; the pieces
do not add up to ``decode_step`` exactly (embedding, bias, copies).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (SIZES, make_problem, limit_threads)
from profile_step import attn_fwd, cells_fwd, enc_rec_gemm, out_layer_fwd  # noqa: E402  (drivers)

from attnspec.impl.decode import _prepare, greedy_decode  # noqa: E402
from attnspec.impl.kernels_decode import _state, _work, decode_step, layer0_weights  # noqa: E402
from attnspec.impl.kernels_matmul import ON_BLAS  # noqa: E402
from attnspec.impl.kernels_model import encode  # noqa: E402
from attnspec.impl.kernels_vocab import greedy_pick, n_blocks, top_log_probs  # noqa: E402
from attnspec.impl.model import pack_weights  # noqa: E402


# -- pieces of one step, each repeated n times in compiled code ---------------------------
# (products, the cell, the attention and the output layer: profile_step's drivers;
# ``enc_rec_gemm(n, A, W)`` is any A @ W^T)

@njit
def vocabulary(n, logits, b_out, scratch, block_max, top, top_lp, top_x, work):
    """greedy_pick (one best) or top_log_probs (len(top) > 1) on every row of a fresh copy of logits."""
    for _ in range(n):
        copy_rows(1, logits, work)
        for r in range(logits.shape[0]):
            if top.shape[0] == 1:
                greedy_pick(work[r], b_out, scratch)
            else:
                top_log_probs(work[r], b_out, scratch, block_max, top, top_lp, top_x)


@njit
def copy_rows(n, logits, work):
    for _ in range(n):
        for r in range(logits.shape[0]):
            for v in range(logits.shape[1]):
                work[r, v] = logits[r, v]


def best_us(fn, args, repeats, n=20):
    fn(1, *args)                                          # compilation
    return min(bench.timed(lambda: fn(n, *args))[0] for _ in range(max(repeats, 1))) / n * 1e6


def setup(size: str, dtype: str):
    """The bench's problem, checked, packed for BLAS and encoded."""
    config, params, src, src_len, _ = bench.make_problem(size, dtype)
    T = bench.SIZES[size][1]
    cfg, p, src_c, len_c, _ = _prepare(params, config, src, src_len, T)
    w = pack_weights(p, cfg, tiles=False)
    return (config, params, src, src_len, cfg, p, src_c, len_c, w) + tuple(encode(w, src_c, len_c))


def step_pieces(size: str, dtype: str, repeats: int, K: int) -> dict[str, float]:
    """Microseconds of each piece of one decoding step for R = B * K rows (K = 1: greedy)."""
    *_, cfg, _, _, len_c, w, enc, h0, c0 = setup(size, dtype)
    B, _, _, V = bench.SIZES[size]
    keys, keys_proj = enc[5], enc[6]
    R, H, S, dt = B * K, cfg.H, keys.shape[1], keys.dtype
    state = _state(cfg.L, R, H, S, dt)
    gates, c, tanh_c, h, a, cat, q_proj, _ = state
    rng = np.random.default_rng(0)
    # h~_prev as after a step (in (-1, 1)): uninitialised memory can hold subnormal
    # garbage, which made the generator product 100x slower on an Intel CPU
    h_tilde = np.tanh(rng.standard_normal((R, H))).astype(dt)
    src_row = np.arange(R) // K
    h_R, c_R = np.repeat(h0, K, axis=1), np.repeat(c0, K, axis=1)
    W0 = layer0_weights(ON_BLAS, w)
    work = _work(ON_BLAS, W0, R, H, V, dt)
    y = np.full(R, cfg.bos_id, np.int64)

    def step(n):
        for _ in range(n):
            out = decode_step(ON_BLAS, w, W0, y, h_tilde, h_R, c_R, keys, keys_proj, src_row, len_c, state, work)
        return out

    logits = step(1)
    u = rng.standard_normal((R, W0.shape[1])).astype(dt)
    z = enc_rec_gemm(1, u, W0)
    M = 1 if K == 1 else min(2 * K, V)
    top, top_lp, top_x = np.empty(M, np.int64), np.empty(M, dt), np.empty(M, dt)
    rows, scratch, block_max = np.empty_like(logits), np.empty(V, dt), np.empty(n_blocks(V), dt)
    vocab = "greedy_pick" if K == 1 else f"top_log_probs (M = {M})"
    return {
        f"layer-0 product ({R}, {W0.shape[1]}) @ ({W0.shape[1]}, {W0.shape[0]})": best_us(enc_rec_gemm, (u, W0), repeats),
        f"generator product ({R}, {H}) @ ({H}, {V})": best_us(enc_rec_gemm, (h_tilde, w.W_out), repeats),
        f"vocabulary: {vocab}, all rows": best_us(vocabulary, (logits, w.b_out, scratch, block_max, top, top_lp, top_x, rows),
                                                  repeats) - best_us(copy_rows, (logits, rows), repeats),
        "LSTM cell": best_us(cells_fwd, (z, c_R[0], gates[0], c[0], tanh_c[0], h[0]), repeats),
        "attention (scores, softmax, context)": best_us(
            attn_fwd, (h[0].copy(), keys, keys_proj, w.att_W_q, w.att_v, w.denom, src_row, len_c, q_proj, a,
                       np.empty((R, H), dt)), repeats),
        "W_c product and tanh": best_us(out_layer_fwd, (cat, w.att_W_c), repeats),
        "decode_step (all of the above but the vocabulary)": best_us(step, (), repeats),
    }


def med_ms(fn, repeats):
    fn()                                                  # warm-up (and compilation)
    return bench.stats([bench.timed(fn)[0] for _ in range(repeats)])["median"] * 1e3


def profile(size: str, dtype: str, repeats: int) -> dict[str, float]:
    config, params, src, src_len, cfg, p, src_c, len_c, w, enc, h0, c0 = setup(size, dtype)
    B, T, _, V = bench.SIZES[size]
    keys, keys_proj = enc[5], enc[6]
    state = _state(cfg.L, B, cfg.H, src.shape[1], keys.dtype)
    y = np.full(B, cfg.bos_id, np.int64)
    h_tilde = np.zeros((B, cfg.H), keys.dtype)
    src_row = np.arange(B)
    W0 = layer0_weights(ON_BLAS, w)
    work = _work(ON_BLAS, W0, B, cfg.H, V, keys.dtype)

    def step():
        return decode_step(ON_BLAS, w, W0, y, h_tilde, h0.copy(), c0.copy(), keys, keys_proj, src_row, len_c,
                           state, work)

    logits, scratch, copies = step().copy(), np.empty(V, keys.dtype), np.empty((B, V), keys.dtype)
    best = (np.empty(1, np.int64), np.empty(1, keys.dtype), np.empty(1, keys.dtype))   # one best: greedy_pick
    rows = {
        f"whole decode, max_len = {T}": med_ms(lambda: greedy_decode(params, config, src, src_len, T), repeats),
        "whole decode, max_len = 1": med_ms(lambda: greedy_decode(params, config, src, src_len, 1), repeats),
        "checks (_prepare)": med_ms(lambda: _prepare(params, config, src, src_len, T), repeats),
        "pack_weights": med_ms(lambda: pack_weights(p, cfg, tiles=False), repeats),
        "encoder (encode)": med_ms(lambda: encode(w, src_c, len_c), repeats),
        "one step: decode_step": med_ms(step, repeats),
        f"one step: generator product ({B}, {cfg.H}) @ ({cfg.H}, {V})": med_ms(
            lambda: enc_rec_gemm(1, state[7], w.W_out), repeats),
        f"one step: greedy_pick over {B} rows": med_ms(
            lambda: vocabulary(1, logits, w.b_out, scratch, scratch, *best, copies), repeats),
    }
    rows["per step after the first: (whole - fixed) / (T - 1)"] = (
        rows[f"whole decode, max_len = {T}"] - rows["whole decode, max_len = 1"]) / (T - 1)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="small")
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    bench.limit_threads()
    dtypes = args.dtypes.split(",")
    for size in args.sizes.split(","):
        results = {dtype: profile(size, dtype, args.repeats) for dtype in dtypes}
        print(f"\n#### greedy decode, {size} (medians of {args.repeats}, ms)\n")
        print("| piece | " + " | ".join(dtypes) + " |")
        print("| --- |" + " --- |" * len(dtypes))
        for name in results[dtypes[0]]:
            print(f"| {name} | " + " | ".join(f"{results[d][name]:.3f}" for d in dtypes) + " |")
        cols = [(d, K) for d in dtypes for K in (1, bench.BEAM_K)]
        pieces = {col: step_pieces(size, col[0], args.repeats, col[1]) for col in cols}
        B = bench.SIZES[size][0]
        print(f"\n#### one decoding step taken apart, {size} (best of {args.repeats}, microseconds)\n")
        print("| piece | " + " | ".join(f"{d}, R = {B * K}" for d, K in cols) + " |")
        print("| --- |" + " --- |" * len(cols))
        for i in range(len(pieces[cols[0]])):
            names = [list(pieces[col])[i] for col in cols]
            label = names[0] if len(set(names)) == 1 else names[0].split(" (")[0].split(":")[0]
            print(f"| {label} | " + " | ".join(f"{list(pieces[col].values())[i]:.0f}" for col in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
