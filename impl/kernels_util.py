"""Small loop helpers shared by the kernels.

They replace NumPy array expressions inside the kernels: each array expression
is compiled afresh at every call site (slow cold compilation), while one of
these helpers is compiled once per signature and reused. Assigning an array
into a slice (``out[k] = x``) is the costliest: Numba compiles a formatted
shape-mismatch error for it, about 4 s the first time in a process; ``copy_``
has no such path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Every kernel: cached on disk, and NumPy's error model (x / 0 gives inf or NaN,
# which the API's finiteness checks report) instead of Python's ZeroDivisionError,
# whose test before every division keeps LLVM from vectorising a loop. Without the
# GIL: large decoding calls run the two halves of their batch on two Python threads
# (``decode.use_halves``), which would otherwise take turns.
kernel = njit(cache=True, error_model="numpy", nogil=True)
# A kernel with a single caller: Numba inlines it there instead of compiling it on
# its own and then again, linked, inside the caller (seconds of LLVM per dtype).
inlined = njit(cache=True, error_model="numpy", inline="always", nogil=True)
# A counter that starts at 0 and is passed to a kernel starts as np.int64(0): Numba
# types a plain 0 as Literal[int](0) in its first pass and compiles the callee once
# more for that literal, for nothing (``_insert``, ``stable_order_desc``: 0.6 s a dtype).


@kernel
def add_(out, x):
    """out += x, both (N, M)."""
    N, M = out.shape
    for n in range(N):
        for m in range(M):
            out[n, m] += x[n, m]


@kernel
def add_bias_(out, bias):
    """out[n] += bias for every row n of out (N, M)."""
    N, M = out.shape
    for n in range(N):
        for m in range(M):
            out[n, m] += bias[m]


@kernel
def copy_(out, x):
    """out[...] = x, both (N, M)."""
    N, M = out.shape
    for n in range(N):
        for m in range(M):
            out[n, m] = x[n, m]


@kernel
def copy1_(out, x):
    """out[...] = x, both (N,)."""
    for n in range(out.shape[0]):
        out[n] = x[n]


@kernel
def zero_(out):
    """out[...] = 0 for a 2-D out."""
    N, M = out.shape
    for n in range(N):
        for m in range(M):
            out[n, m] = 0.0


@kernel
def swap01(x):
    """(A, B, X) -> contiguous (B, A, X)."""
    A, B, X = x.shape
    out = np.empty((B, A, X), x.dtype)
    for i in range(A):
        for j in range(B):
            for m in range(X):
                out[j, i, m] = x[i, j, m]
    return out


@kernel
def column_sum(m):
    """Sum over the rows of m (N, M), in a fixed order (deterministic)."""
    out = np.zeros(m.shape[1], m.dtype)
    N, M = m.shape
    for n in range(N):
        for j in range(M):
            out[j] += m[n, j]
    return out
