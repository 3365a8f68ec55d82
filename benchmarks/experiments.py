"""Experiments behind issue 7's "tried and not adopted" (docs/performance-history.md).

    python benchmarks/experiments.py threads [--dtypes float32,float64] [--repeats 7]
    python benchmarks/experiments.py transcendentals [--dtypes float32,float64] [--repeats 7]

``threads``: can the recurrence's skinny products (16 rows at large size) beat
OpenBLAS with the register-tiled Numba kernel ``kernels_matmul.tiled_nt`` on
2 threads? Measured three ways
on the large decoder step's shapes: each product alone; after a big OpenBLAS
product (two thread pools, as a step would mix them); and with one pool only
(BLAS pinned to 1 thread, the big product split in halves over Numba's threads).

Decoding now uses the tiles (docs/implementation.md); training does not.

``transcendentals``: nanoseconds per element of ``kernels_math``'s exp, tanh
and sigmoid against libm's (``np.exp``/``np.tanh`` compiled by Numba), each in
a loop over a row of 4096 arguments (in cache, like a row of logits), and their
largest errors in ulps over 2,000,000 arguments against long double (where
NumPy's long double is wider than float64; tests/test_impl_kernels.py measures
them against mpmath). Each experiment prints what it measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from numba import njit, prange

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (limit_threads, stats)

from attnspec.impl.kernels_math import exp_, sigmoid_, tanh_  # noqa: E402
from attnspec.impl.kernels_matmul import tiled_nt  # noqa: E402  (decoding's tiles)


def median_ms(fn, repeats):
    fn()
    return bench.stats([bench.timed(fn)[0] for _ in range(repeats)])["median"] * 1e3


# -- threads: skinny products -------------------------------------------------------------

@njit(parallel=True, cache=True)
def split_product(X, Y, out):
    """out = X @ Y, the two halves of X's rows on Numba's two threads (each a 1-thread BLAS call)."""
    half = X.shape[0] // 2
    for p in prange(2):
        lo, hi = (0, half) if p == 0 else (half, X.shape[0])
        out[lo:hi] = X[lo:hi] @ Y


@njit(cache=True)
def blas_nt(A, W):
    return A @ W.T


@njit(cache=True)
def blas_nn(X, Y):
    return X @ Y


@njit(cache=True)
def blas_steps(n, h, W_rec, W_c):
    for _ in range(n):
        z = h @ W_rec.T
        pre = h @ W_c.T
    return z, pre


def threads(dtypes, repeats, steps=50, B=16, H=512):
    from threadpoolctl import threadpool_limits
    bench.limit_threads()
    print(f"products of the large decoder step (B={B}, H={H}), {steps} steps, 2 threads, median ms\n")
    print("| dtype | product | OpenBLAS | Numba tiles | OpenBLAS / Numba |")
    print("| --- | --- | --- | --- | --- |")
    rows = []
    for dt in dtypes:
        rng = np.random.default_rng(0)
        h = rng.standard_normal((B, 2 * H)).astype(dt)              # [h; h~] or [ctx; h]
        W_rec = rng.uniform(-0.05, 0.05, (4 * H, 2 * H)).astype(dt)  # [W_hh | W_feed]
        W_c = rng.uniform(-0.05, 0.05, (H, 2 * H)).astype(dt)
        X = rng.standard_normal((B * steps, H)).astype(dt)           # embedding projection input
        W_emb = rng.uniform(-0.05, 0.05, (H, 4 * H)).astype(dt)
        z, pre, big = np.empty((B, 4 * H), dt), np.empty((B, H), dt), np.empty((B * steps, 4 * H), dt)
        # K = 1024 products in a different order: a few ulps of the largest |term| sum
        tol = 1e-4 if dt == "float32" else 1e-12
        for W, out in ((W_rec, z), (W_c, pre)):
            tiled_nt(h, W, out)
            ref = blas_nt(h, W)
            if not np.allclose(out, ref, rtol=tol, atol=tol * np.abs(ref).max()):
                raise AssertionError(f"tiled_nt disagrees with BLAS ({dt}, {W.shape})")
        for name, W, out in (("(B, 2H) (2H, 4H)", W_rec, z), ("(B, 2H) (2H, H)", W_c, pre)):
            t_blas = median_ms(lambda: blas_nt(h, W), repeats)
            t_ours = median_ms(lambda: tiled_nt(h, W, out), repeats)
            print(f"| {dt} | {name} alone | {t_blas:.3f} | {t_ours:.3f} | {t_blas / t_ours:.2f}x |")

        def openblas_step():
            blas_nn(X, W_emb)
            blas_steps(steps, h, W_rec, W_c)

        def mixed_pools():
            blas_nn(X, W_emb)
            for _ in range(steps):
                tiled_nt(h, W_rec, z)
                tiled_nt(h, W_c, pre)

        def one_pool():
            split_product(X, W_emb, big)
            for _ in range(steps):
                tiled_nt(h, W_rec, z)
                tiled_nt(h, W_c, pre)

        t_blas = median_ms(openblas_step, repeats)
        t_mixed = median_ms(mixed_pools, repeats)
        with threadpool_limits(1):
            split_product(X, W_emb, big)
            if not np.allclose(big, blas_nn(X, W_emb), rtol=tol, atol=tol * np.abs(big).max()):
                raise AssertionError("split_product disagrees with BLAS")
            t_one = median_ms(one_pool, repeats)
        label = f"big (B*{steps}, H) (H, 4H), then {steps} x both"
        print(f"| {dt} | {label}, two pools | {t_blas:.1f} | {t_mixed:.1f} | {t_blas / t_mixed:.2f}x |")
        print(f"| {dt} | {label}, one pool (BLAS 1 thread) | {t_blas:.1f} | {t_one:.1f} | {t_blas / t_one:.2f}x |")
        rows.append((dt, t_blas, t_mixed, t_one))
    return rows


# -- transcendentals: kernels_math against libm ---------------------------------------------

@njit(cache=True, error_model="numpy")
def map_ours(kind, x, out, reps):
    """out = exp (kind 0), tanh (1) or sigmoid (2) of x, by kernels_math, ``reps`` times."""
    for _ in range(reps):
        if kind == 0:
            for i in range(x.shape[0]):
                out[i] = exp_(x[i])
        elif kind == 1:
            for i in range(x.shape[0]):
                out[i] = tanh_(x[i])
        else:
            for i in range(x.shape[0]):
                out[i] = sigmoid_(x[i])


@njit(cache=True, error_model="numpy")
def map_libm(kind, x, out, reps):
    """The same through libm: np.exp and np.tanh compiled by Numba."""
    one = x.dtype.type(1)
    for _ in range(reps):
        if kind == 0:
            for i in range(x.shape[0]):
                out[i] = np.exp(x[i])
        elif kind == 1:
            for i in range(x.shape[0]):
                out[i] = np.tanh(x[i])
        else:
            for i in range(x.shape[0]):
                out[i] = one / (one + np.exp(-x[i]))


# Timed on rows of this length, 500 times over: in cache, as the kernels meet a row of
# logits or of gates (2M arguments out of cache measured memory traffic, not the functions)
ROW = 4096


def transcendentals(dtypes, repeats):
    rng = np.random.default_rng(0)
    x64 = np.concatenate([rng.uniform(-20.0, 20.0, 1_000_000), rng.uniform(-1.0, 1.0, 1_000_000)])
    wide = np.finfo(np.longdouble).nmant > 52
    print(f"ns per element over rows of {ROW} arguments (in cache); max ulps over {x64.size:,} arguments "
          "in [-20, 20] and [-1, 1] against long double"
          + ("" if wide else " (not measured: long double is float64 here)") + "\n")
    print("| dtype | function | libm (ns) | kernels_math (ns) | libm / kernels_math | max ulps libm "
          "| max ulps kernels_math |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for dt in dtypes:
        x = x64.astype(dt)
        if wide:                          # of the arguments as rounded to dt
            xl = x.astype(np.longdouble)
            exact = {"exp": np.exp(xl), "tanh": np.tanh(xl), "sigmoid": 1 / (1 + np.exp(-xl))}
        row, reps = np.ascontiguousarray(x[::x.size // ROW][:ROW]), x.size // ROW
        for k, fn in enumerate(("exp", "tanh", "sigmoid")):
            outs = {name: np.empty_like(x) for name in ("libm", "ours")}
            ns = {name: median_ms(lambda f=f, o=outs[name][:ROW]: f(k, row, o, reps), repeats) * 1e6 / (ROW * reps)
                  for name, f in (("libm", map_libm), ("ours", map_ours))}
            for name, f in (("libm", map_libm), ("ours", map_ours)):
                f(k, x, outs[name], 1)
            ulps = {}
            for name in ("libm", "ours"):
                got = outs[name]
                if wide:
                    e = exact[fn]
                    normal = (np.abs(e) >= np.finfo(dt).tiny) & (np.abs(e) <= np.finfo(dt).max)
                    ulp = np.spacing(np.abs(e[normal]).astype(dt)).astype(np.longdouble)
                    ulps[name] = f"{float(np.max(np.abs(got[normal].astype(np.longdouble) - e[normal]) / ulp)):.2f}"
                else:
                    ulps[name] = "-"
            print(f"| {dt} | {fn} | {ns['libm']:.2f} | {ns['ours']:.2f} | {ns['libm'] / ns['ours']:.1f}x | "
                  f"{ulps['libm']} | {ulps['ours']} |")
            rows.append((dt, fn, ns["libm"], ns["ours"]))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=("threads", "transcendentals"))
    p.add_argument("--dtypes", default="float32,float64", help="comma-separated dtypes")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per figure (median)")
    p.add_argument("--steps", type=int, default=50, help="threads: decoder steps (T of the large size)")
    args = p.parse_args(argv)
    if args.experiment == "threads":
        threads(args.dtypes.split(","), args.repeats, steps=args.steps)
    else:
        transcendentals(args.dtypes.split(","), args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
