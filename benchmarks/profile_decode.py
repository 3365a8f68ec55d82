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
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (SIZES, make_problem, limit_threads)

from attnspec.impl.decode import _prepare, greedy_decode  # noqa: E402
from attnspec.impl.kernels_decode import _state, decode_step, layer0_weights  # noqa: E402
from attnspec.impl.kernels_model import encode  # noqa: E402
from attnspec.impl.kernels_vocab import greedy_pick  # noqa: E402
from attnspec.impl.model import pack_weights  # noqa: E402


@njit
def pick_rows(logits, b_out, scratch):
    """greedy_pick on every row of a copy of logits (the pick works in place)."""
    x = logits.copy()
    for b in range(x.shape[0]):
        greedy_pick(x[b], b_out, scratch)


@njit
def generator_product(h_tilde, W_out):
    return h_tilde @ W_out.T


def med_ms(fn, repeats):
    fn()                                                  # warm-up (and compilation)
    return bench.stats([bench.timed(fn)[0] for _ in range(repeats)])["median"] * 1e3


def profile(size: str, dtype: str, repeats: int) -> dict[str, float]:
    config, params, src, src_len, _ = bench.make_problem(size, dtype)
    B, T, _, V = bench.SIZES[size]
    cfg, p, src_c, len_c, _ = _prepare(params, config, src, src_len, T)
    w = pack_weights(p, cfg, tiles=False)
    enc, h0, c0 = encode(w, src_c, len_c)
    keys, keys_proj = enc[5], enc[6]
    state = _state(cfg.L, B, cfg.H, src.shape[1], keys.dtype)
    y = np.full(B, cfg.bos_id, np.int64)
    h_tilde = np.zeros((B, cfg.H), keys.dtype)
    src_row = np.arange(B)
    W0 = layer0_weights(w)

    def step():
        return decode_step(w, W0, y, h_tilde, h0.copy(), c0.copy(), keys, keys_proj, src_row, len_c, *state)

    logits, scratch = step(), np.empty(V, keys.dtype)
    rows = {
        f"whole decode, max_len = {T}": med_ms(lambda: greedy_decode(params, config, src, src_len, T), repeats),
        "whole decode, max_len = 1": med_ms(lambda: greedy_decode(params, config, src, src_len, 1), repeats),
        "checks (_prepare)": med_ms(lambda: _prepare(params, config, src, src_len, T), repeats),
        "pack_weights": med_ms(lambda: pack_weights(p, cfg, tiles=False), repeats),
        "encoder (encode)": med_ms(lambda: encode(w, src_c, len_c), repeats),
        "one step: decode_step": med_ms(step, repeats),
        f"one step: generator product ({B}, {cfg.H}) @ ({cfg.H}, {V})": med_ms(
            lambda: generator_product(state[7], w.W_out), repeats),
        f"one step: greedy_pick over {B} rows": med_ms(lambda: pick_rows(logits, w.b_out, scratch), repeats),
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
