"""Matrix products: training's batched GEMMs (``gemm``, from Python), the kernels'
own products (``matmul``), decoding's per-step products on register tiles
over Numba's threads, or on BLAS (``mm_nt``), and the attention's dot products
of one query row (``rows_dot``).

A decoding step multiplies only R rows (the batch, or batch x beam) by each
weight matrix, the generator's included. OpenBLAS runs such skinny products
at a third of its rate; ``tiled_nt`` runs them 1.2-2.8x faster on the same 2
threads (docs/performance-history.md). But two thread pools on two cores fight:
OpenBLAS's workers spin for about 0.1 s after each product and take the cores
from Numba's threads. So a decoding call on tiles runs inside ``one_pool()``:
BLAS is held to one thread (the encoder's input projections and the
attention's matrix-vector products) and OpenBLAS's idle workers are stopped.

``Weights.tiles`` (``use_tiles``) picks the tiles for few rows and wide layers
only; elsewhere, and in training, the products are the BLAS calls they were,
bit for bit. (Training on tiles was measured no faster: docs/performance-history.md.)
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager

import numpy as np
import numba
from numba import njit, prange, types
from numba.core.errors import TypingError
from numba.extending import NativeValue, models, overload, register_model, unbox

from .kernels_util import kernel

# Tiles hold 16 dot products in scalar accumulators that LLVM keeps in vector
# registers; ``reassoc`` lets it vectorise the reductions (each then sums in
# lanes: another order than BLAS, the same error bound), ``contract`` lets it
# fuse multiply-adds. No ``nnan``/``ninf``: NaN and inf must reach the API's checks.
_FAST = {"reassoc", "contract"}


def gemm(A, B, out=None):
    """out (M, N) = A (M, K) @ B (K, N) in one BLAS call; returns out (C-ordered, a
    new array of A's dtype when not given).

    Training's batched products (one per weight over all steps) are this, called
    from Python: compiled once per layout, not again inside each caller. A
    transposed view is F-ordered and goes to BLAS as it is; a view that is
    neither C- nor F-ordered (a reshaped slice with one row per step) is copied
    first, since Numba's np.dot would take a slow loop for it.
    """
    if out is None:
        out = np.empty((A.shape[0], B.shape[1]), A.dtype)
    return _gemm(_blas_layout(A), _blas_layout(B), out)


def _blas_layout(x):
    return x if x.flags.c_contiguous or x.flags.f_contiguous else np.ascontiguousarray(x)


@kernel
def _gemm(A, B, out):
    np.dot(A, B, out)
    return out


@kernel
def matmul(A, B):
    """A (M, K) @ B (K, N), both C- or F-ordered, as a new C-ordered array: the kernels'
    matrix products, one BLAS call each. Written ``A @ B`` in every kernel, NumPy's product
    was compiled again for each kernel and layout (0.2-0.3 s each per dtype); through
    ``_gemm`` it is compiled once per layout."""
    return _gemm(A, B, np.empty((A.shape[0], B.shape[1]), A.dtype))


def use_tiles(rows: int, H: int) -> bool:
    """Whether a decoding call with ``rows`` rows per step and width H runs on tiles.

    Measured on the 2-core machine (docs/performance-history.md): tiles win clearly up to
    32 rows on layers of H >= 256; at 64 rows and more BLAS is as fast or faster,
    and below H = 256 a product is too short to pay for waking threads (session 16:
    the products of a small step ran faster on tiles timed alone, but whole small
    greedy calls took 1.4x the time in float64 and 1.9x in float32).
    """
    return rows <= 32 and H >= 256


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def row_dot(A, b, W, j):
    """A[b] . W[j] for rows of A (M, K) and W (N, K), summed in vector lanes (``_FAST``):
    an order fixed by K and the CPU's vector width, the error bound of any order."""
    s = A.dtype.type(0)
    for k in range(A.shape[1]):
        s += A[b, k] * W[j, k]
    return s


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def rows_dot(A, n, W, j, out):
    """out[i] = A[i] . W[j] for the first n rows of A (M, K), summed as ``row_dot`` sums:
    the attention scores of one query row W[j] against n keys, in one call. (Called once per
    key from a kernel without ``_FAST``, ``row_dot`` ran slower than the BLAS call it
    replaced at small size, probably not inlined across the two sets of flags.)"""
    for i in range(n):
        s = A.dtype.type(0)
        for k in range(A.shape[1]):
            s += A[i, k] * W[j, k]
        out[i] = s


@njit(cache=True, error_model="numpy", fastmath=_FAST, parallel=True)
def tiled_nt(A, W, out):
    """out (M, N) = A (M, K) @ W (N, K)^T in 4 x 4 tiles, blocks of 4 rows of W over the threads.

    Each entry is summed by one thread in an order fixed by K alone, so the result
    does not depend on the number of threads. Rows of A or W beyond a multiple
    of 4 are plain dot products.
    """
    M, K = A.shape
    N = W.shape[0]
    M4, N4 = M - M % 4, N - N % 4
    zero = A.dtype.type(0)
    for jb in prange(N4 // 4):
        j = 4 * jb
        for b in range(0, M4, 4):
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = zero
            for k in range(K):
                a0, a1, a2, a3 = A[b, k], A[b + 1, k], A[b + 2, k], A[b + 3, k]
                w0, w1, w2, w3 = W[j, k], W[j + 1, k], W[j + 2, k], W[j + 3, k]
                s00 += a0 * w0; s01 += a0 * w1; s02 += a0 * w2; s03 += a0 * w3  # noqa: E702
                s10 += a1 * w0; s11 += a1 * w1; s12 += a1 * w2; s13 += a1 * w3  # noqa: E702
                s20 += a2 * w0; s21 += a2 * w1; s22 += a2 * w2; s23 += a2 * w3  # noqa: E702
                s30 += a3 * w0; s31 += a3 * w1; s32 += a3 * w2; s33 += a3 * w3  # noqa: E702
            out[b, j], out[b, j + 1], out[b, j + 2], out[b, j + 3] = s00, s01, s02, s03
            out[b + 1, j], out[b + 1, j + 1], out[b + 1, j + 2], out[b + 1, j + 3] = s10, s11, s12, s13
            out[b + 2, j], out[b + 2, j + 1], out[b + 2, j + 2], out[b + 2, j + 3] = s20, s21, s22, s23
            out[b + 3, j], out[b + 3, j + 1], out[b + 3, j + 2], out[b + 3, j + 3] = s30, s31, s32, s33
        for b in range(M4, M):
            for jj in range(j, j + 4):
                out[b, jj] = row_dot(A, b, W, jj)
    for j in range(N4, N):
        for b in range(M):
            out[b, j] = row_dot(A, b, W, j)


class Products:
    """Where a kernel's per-step products run: ``ON_TILES`` or ``ON_BLAS`` (``products``).

    True and false in Python; to Numba two different types, so a kernel compiled
    for one compiles only its path of ``mm_nt``: training and decoding on BLAS
    never compile the parallel tiles (a tenth to a fifth of the first calls'
    compilation: docs/performance-history.md). Pass it as an argument of its own: Numba
    caches the type of a tuple of arrays and plain scalars (``Weights``), not of
    one that holds this object (30x slower calls).
    """

    __slots__ = ("tiles", "_numba_type_")

    def __init__(self, tiles: bool):
        self.tiles = tiles
        self._numba_type_ = ProductsType(tiles)    # read by Numba's dispatcher, in C

    def __bool__(self):
        return self.tiles

    def __repr__(self):
        return self._numba_type_.name


class ProductsType(types.Dummy):
    def __init__(self, tiles: bool):
        self.tiles = tiles
        super().__init__("ON_TILES" if tiles else "ON_BLAS")


register_model(ProductsType)(models.OpaqueModel)


@unbox(ProductsType)
def _unbox_products(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


ON_TILES, ON_BLAS = Products(True), Products(False)


def products(tiles: bool) -> Products:
    """``ON_TILES`` if ``tiles`` (``Weights.tiles``), else ``ON_BLAS``."""
    return ON_TILES if tiles else ON_BLAS


@overload(bool)
def _products_bool(x):
    if isinstance(x, ProductsType):
        return (lambda x: True) if x.tiles else (lambda x: False)


def _on_tiles(tiles, A, W, out):
    tiled_nt(A, W, out)
    return out


def _on_blas(tiles, A, W, out):
    return _gemm(A, W.T, out)


def mm_nt(tiles, A, W, out):
    """out (M, N) = A (M, K) @ W (N, K)^T: on tiles if ``tiles`` (``ON_TILES``), else one
    BLAS call; returns out. The caller owns out: a step's products written into buffers
    made once per call, not a new array per step (``kernels_decode._work``)."""
    return (_on_tiles if tiles else _on_blas)(tiles, A, W, out)


@overload(mm_nt)
def _mm_nt_jit(tiles, A, W, out):
    if not isinstance(tiles, ProductsType):
        raise TypingError(f"mm_nt: tiles must be ON_TILES or ON_BLAS, got {tiles}")
    return _on_tiles if tiles.tiles else _on_blas


# -- training's backward: products on the weights' transposes ---------------------------

def nt_backward(dtype, H: int) -> bool:
    """Whether training's backward multiplies each step's gradients by the recurrent
    weights through their transposes (``times``): float32 with H >= 384.

    The backward's step products are A (B, N) @ W (N, K) for W = W_hh, W_feed,
    W_c, W_ih of the layers above. With W as it is, BLAS runs "NN"; through a
    C-ordered copy of W^T seen transposed, "NT". Measured on the AVX-512 machine
    with SciPy's OpenBLAS 0.3.30, the three products of a decoder step interleaved
    in one process (docs/performance-history.md, session 13): in float32 NT takes 0.8x
    the time of NN at H = 384, 0.6x at 512 and 0.5x at 1024, the same at 128-256
    and 2.2x at 64; in float64 NN is the faster at every width. The two give
    bitwise equal gradients at the benchmark's sizes.
    """
    return np.dtype(dtype) == np.float32 and H >= 384


@kernel
def _transpose_into(W, out):
    # In 32 x 32 blocks: a plain loop writes out with a stride of M and runs 5x slower,
    # like NumPy's copy of W.T (9.5 against 1.9 ms for 2048 x 512 float32).
    M, N = W.shape
    for i0 in range(0, M, 32):
        for j0 in range(0, N, 32):
            for j in range(j0, min(j0 + 32, N)):
                for i in range(i0, min(i0 + 32, M)):
                    out[j, i] = W[i, j]


def transposed(W):
    """The C-ordered transpose of each matrix of W (..., M, N): a new (..., N, M) array."""
    out = np.empty(W.shape[:-2] + (W.shape[-1], W.shape[-2]), W.dtype)
    for index in np.ndindex(W.shape[:-2]):
        _transpose_into(W[index], out[index])
    return out


@kernel
def times(A, W, W_T):
    """A (M, N) @ W (N, K) in one BLAS call: through W_T.T when W_T (K, N), W's C-ordered
    transpose, is given (``nt_backward``), else on W itself (W_T of shape (0, 0))."""
    if W_T.shape[0] == 0:
        return matmul(A, W)
    return matmul(A, W_T.T)


# Start Numba's threading layer now. It registers the symbols that parallel code
# links against; a kernel that calls ``tiled_nt``, loaded from Numba's cache in a
# process where no parallel code has run yet, would otherwise crash (segfault).
numba.get_num_threads()


# -- one thread pool for a tiled phase -----------------------------------------------

_pool = None


def _blas_pool():
    """(threadpoolctl controller, [stop the workers of each OpenBLAS]), found once."""
    global _pool
    if _pool is None:
        from threadpoolctl import ThreadpoolController
        controller = ThreadpoolController()
        stops = []
        for lib in controller.select(internal_api="openblas").lib_controllers:
            stop = getattr(ctypes.CDLL(lib.filepath), "blas_thread_shutdown_", None)
            if stop is not None:
                stops.append(stop)
        _pool = (controller, stops)
    return _pool


@contextmanager
def one_pool(active: bool):
    """Run the body with the caller's threads alone on the cores when ``active``; else do nothing.

    For decoding on tiles (Numba's threads) or in halves (two Python threads, one
    BLAS thread each: ``decode.use_halves``). Holds BLAS to one thread until the
    body ends and stops OpenBLAS's worker threads (``blas_thread_shutdown_``),
    which spin for ~0.1 s after a product; the next multi-threaded product starts
    them again.
    """
    if not active:
        yield
        return
    controller, stops = _blas_pool()
    # Limit first: OpenBLAS restarts its workers when its thread count is set on a
    # stopped pool, and restarted workers spin (measured: the phase ran 1.7x slower).
    with controller.limit(limits=1, user_api="blas"):
        for stop in stops:
            stop()
        yield
