"""Experiments behind issue 7's "tried and not adopted" (docs/performance.md).

    python benchmarks/experiments.py threads [--dtypes float32,float64] [--repeats 7]
    python benchmarks/experiments.py exp64

``threads``: can the recurrence's skinny products (16 rows at large size) beat
OpenBLAS with the register-tiled Numba kernel ``kernels_matmul.tiled_nt`` on
2 threads? Measured three ways
on the large decoder step's shapes: each product alone; after a big OpenBLAS
product (two thread pools, as a step would mix them); and with one pool only
(BLAS pinned to 1 thread, the big product split in halves over Numba's threads).

``exp64``: a vectorisable float64 exp (Cody-Waite reduction, degree-13 Taylor
polynomial) against libm: nanoseconds per element and the largest error in
units in the last place, measured against long double over a sweep.

Decoding now uses the tiles (docs/implementation.md); training and ``expd`` are
not adopted. Each experiment prints what it measured.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (limit_threads, stats)

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


# -- exp64 -------------------------------------------------------------------------------

@intrinsic
def _bitcast_int64_float64(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


_INV_FACT = tuple(1.0 / math.factorial(k) for k in range(14))
_LN2_HI, _LN2_LO = 6.93145751953125e-1, 1.42860682030941723212e-6   # n * _LN2_HI exact for |n| < 2^11


@njit(cache=True, error_model="numpy")
def expd(x):
    """e^x for a float64: x = n ln2 + r, e^r by Taylor to degree 13 (|r| <= ln2/2: truncation
    below 0.03 ulp), 2^n as two exponent-bit factors (subnormal and overflowing results)."""
    if x < -746.0:
        x = -746.0
    n = np.floor(x * 1.4426950408889634 + 0.5)
    if not n >= -1076.0:                  # NaN too: keeps the int conversion defined
        n = -1076.0
    if n > 1024.0:
        n = 1024.0
    r = x - n * _LN2_HI - n * _LN2_LO
    c = _INV_FACT
    p = ((((((((((c[13] * r + c[12]) * r + c[11]) * r + c[10]) * r + c[9]) * r + c[8]) * r + c[7]) * r
             + c[6]) * r + c[5]) * r + c[4]) * r + c[3]) * r + c[2]
    p = p * r * r + r + 1.0
    k = np.int64(n)
    k1 = k >> 1
    e = (p * _bitcast_int64_float64((k1 + 1023) << 52)) * _bitcast_int64_float64((k - k1 + 1023) << 52)
    return np.inf if x > 709.782712893384 else e


@njit(cache=True, error_model="numpy")
def map_expd(x, out):
    for i in range(x.size):
        out[i] = expd(x[i])


@njit(cache=True, error_model="numpy")
def map_libm(x, out):
    for i in range(x.size):
        out[i] = np.exp(x[i])


def exp64(repeats):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-745.0, 709.7, 1_000_000), rng.uniform(-1.0, 1.0, 1_000_000),
                        rng.uniform(-40.0, 0.0, 1_000_000)])     # the last: softmax arguments x - max
    exact = np.exp(x.astype(np.longdouble))
    normal = (exact >= np.finfo(np.float64).tiny) & (exact <= np.finfo(np.float64).max)
    ulp = np.spacing(exact[normal].astype(np.float64)).astype(np.longdouble)
    print(f"float64 exp over {x.size:,} arguments in [-745, 709.7], error against long double\n")
    print("| exp | ns per element | max ulps | share > 0.5 ulp |")
    print("| --- | --- | --- | --- |")
    out = {}
    for name, fn in (("libm (np.exp in Numba)", map_libm), ("Cody-Waite + Taylor 13 (vectorised)", map_expd)):
        y = np.empty_like(x)
        ns = median_ms(lambda: fn(x, y), repeats) * 1e6 / x.size
        err = np.abs(y[normal].astype(np.longdouble) - exact[normal]) / ulp
        specials = np.empty(5)
        fn(np.array([np.nan, np.inf, -np.inf, 710.0, -746.0]), specials)
        if not (np.isnan(specials[0]) and specials[1] == np.inf and specials[2] == 0.0 and specials[3] == np.inf
                and specials[4] == 0.0):
            raise AssertionError(f"{name}: wrong special values {specials}")
        print(f"| {name} | {ns:.2f} | {float(err.max()):.3f} | {float((err > 0.5).mean()):.2%} |")
        out[name] = (ns, float(err.max()))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=("threads", "exp64"))
    p.add_argument("--dtypes", default="float32,float64", help="threads: comma-separated dtypes")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per figure (median)")
    p.add_argument("--steps", type=int, default=50, help="threads: decoder steps (T of the large size)")
    args = p.parse_args(argv)
    if args.experiment == "threads":
        threads(args.dtypes.split(","), args.repeats, steps=args.steps)
    else:
        exp64(args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
