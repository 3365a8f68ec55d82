"""Training's batched products, decoding's tiled products and their thread pool (impl/kernels_matmul.py).

The tiles sum in another order than BLAS, so on random data they agree only to
rounding. On small integers every order gives the exact sum, which turns "is a
matrix product" into an equality test that any wrong index or dropped term fails.
"""

from __future__ import annotations

import warnings

import numba
import numpy as np
import pytest

import attnspec.impl.decode as decode_api
from attnspec.impl.decode import beam_search, greedy_decode
from attnspec.impl.kernels_attention import weighted_rows
from attnspec.impl.kernels_matmul import (ON_BLAS, ON_TILES, _gemm, gemm, matmul, mm_nt, nt_backward, one_pool,
                                          rows_dot, tiled_nt, times, transposed, use_tiles)
from attnspec.impl.kernels_model import backward_transposes, model_backward, model_forward
from attnspec.impl.model import init_params, pack_weights
from attnspec.spec.config import Config

# M and N around the 4 x 4 tiles: multiples, remainders 1-3, and fewer than 4 rows.
SHAPES = [(1, 1, 1), (3, 5, 2), (4, 8, 4), (5, 7, 9), (16, 64, 32), (17, 33, 18), (6, 1, 13)]


def integer_operands(M, K, N, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(-8, 9, (M, K)).astype(dtype), rng.integers(-8, 9, (N, K)).astype(dtype))


def assert_is_product(nt, dtype):
    """nt(A, W, out) must write exactly A @ W.T on integer operands (|sums| < 2^24: exact in float32)."""
    for M, K, N in SHAPES:
        A, W = integer_operands(M, K, N, dtype)
        out = np.full((M, N), np.nan, dtype)
        nt(A, W, out)
        np.testing.assert_array_equal(out, A.astype(np.int64) @ W.astype(np.int64).T, err_msg=f"{(M, K, N)}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiles_are_the_matrix_product(dtype):
    assert_is_product(tiled_nt, dtype)


def test_the_product_check_catches_a_wrong_remainder_entry():
    def off_by_one(A, W, out):
        tiled_nt(A, W, out)
        out[-1, -1] += 1                     # the last row and column are remainder paths
    with pytest.raises(AssertionError):
        assert_is_product(off_by_one, np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiles_agree_with_blas_on_random_data(dtype):
    rng = np.random.default_rng(1)
    A = rng.standard_normal((18, 300)).astype(dtype)
    W = rng.standard_normal((37, 300)).astype(dtype)
    out = np.empty((18, 37), dtype)
    tiled_nt(A, W, out)
    exact = A.astype(np.float64) @ W.astype(np.float64).T
    # Both sum 300 products in some order: error below K * eps * sum |a_k w_k| (Higham 3.1).
    bound = 300 * np.finfo(dtype).eps * (np.abs(A).astype(np.float64) @ np.abs(W).astype(np.float64).T)
    assert np.all(np.abs(out - exact) <= bound)


def test_tiles_do_not_depend_on_the_number_of_threads():
    rng = np.random.default_rng(2)
    A, W = rng.standard_normal((13, 257)), rng.standard_normal((70, 257))
    outs = []
    before = numba.get_num_threads()
    try:
        for n in (1, before):
            numba.set_num_threads(n)
            out = np.empty((13, 70))
            tiled_nt(A, W, out)
            outs.append(out)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_nan_and_inf_propagate_through_the_tiles():
    """fastmath without nnan/ninf: a NaN or inf operand must reach the API's finiteness checks.

    This LLVM keeps NaN here even with every fastmath flag on (tried), so the flags are
    also checked directly: another LLVM may not."""
    flags = tiled_nt.targetoptions["fastmath"]
    assert flags is not True and not {"nnan", "ninf", "fast"} & set(flags)
    A, W = np.ones((8, 16)), np.ones((8, 16))
    A[1, 3], A[6, 0] = np.nan, np.inf
    out = np.empty((8, 8))
    tiled_nt(A, W, out)
    assert np.isnan(out[1]).all() and np.isposinf(out[6]).all() and np.isfinite(np.delete(out, [1, 6], 0)).all()


def _strided_rows(A):
    """A (M, K) as a view that is neither C- nor F-ordered: its rows sit 3 rows apart."""
    M, K = A.shape
    wide = np.full((M, 3, K), np.nan, A.dtype)
    wide[:, 0] = A
    return wide[:, 0]


def assert_only_blas_layouts(dispatcher):
    """Every operand layout the kernel was specialised for is C or F: with an 'A'
    (strided) operand Numba's np.dot leaves BLAS for a slow loop."""
    for sig in dispatcher.signatures:
        assert all(t.layout in "CF" for t in sig), f"{dispatcher.py_func.__name__} specialised for {sig}"


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_gemm_is_the_product_for_every_layout_and_calls_blas(layout):
    """gemm gives A @ B, into the given out or a new array, for C-ordered operands,
    transposed views (F) and strided views, and hands the kernel only C or F operands."""
    A, W = integer_operands(6, 10, 7, np.float64, seed=4)
    B = W.T                                                           # (10, 7), F-ordered
    if layout == "C":
        B = np.ascontiguousarray(B)
    elif layout == "strided":
        A, B = _strided_rows(A), _strided_rows(np.ascontiguousarray(B))
        assert not (A.flags.c_contiguous or A.flags.f_contiguous)
    out = np.full((6, 7), np.nan)
    assert gemm(A, B, out) is out
    np.testing.assert_array_equal(out, A @ B)
    np.testing.assert_array_equal(gemm(A, B), A @ B)                  # out allocated by gemm
    assert_only_blas_layouts(_gemm)


def test_the_layout_check_catches_a_strided_operand_passed_as_it_is():
    kernel = numba.njit(_gemm.py_func)                                # a fresh copy: _gemm stays clean
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", numba.NumbaPerformanceWarning)
        kernel(_strided_rows(np.eye(3)), np.eye(3), np.empty((3, 3)))
    with pytest.raises(AssertionError, match="specialised for"):
        assert_only_blas_layouts(kernel)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_is_the_product_for_c_and_f_operands(dtype):
    """matmul (the kernels' products) gives A @ B as a new C-ordered array for every pairing
    of C-ordered operands and transposed views."""
    A, W = integer_operands(6, 10, 7, dtype, seed=5)
    expected = A.astype(np.int64) @ W.astype(np.int64).T
    for a in (A, np.asfortranarray(A)):
        for b in (W.T, np.ascontiguousarray(W.T)):
            out = matmul(a, b)
            assert out.flags.c_contiguous and out.dtype == dtype
            np.testing.assert_array_equal(out, expected)


def test_a_strided_product_in_a_kernel_fails_the_suite():
    """pyproject's filterwarnings makes Numba's performance warning an error: a kernel that
    hands np.dot a strided operand (a slow loop, not BLAS) fails wherever the suite compiles it."""
    kernel = numba.njit(_gemm.py_func)                                # a fresh copy: _gemm stays clean
    # float32: Numba warns once per process and signature, and the test above compiles float64
    A = _strided_rows(np.eye(3, dtype=np.float32))
    with pytest.raises(numba.NumbaPerformanceWarning, match="contiguous"):
        kernel(A, np.eye(3, dtype=np.float32), np.empty((3, 3), np.float32))


@pytest.mark.parametrize("tiles", [ON_BLAS, ON_TILES])
def test_mm_nt_on_both_paths_writes_the_given_array(tiles):
    """The product lands in the caller's buffer (decoding's steps reuse theirs), on both paths."""
    A, W = integer_operands(6, 10, 7, np.float64, seed=3)
    out = np.full((6, 7), np.nan)
    assert mm_nt(tiles, A, W, out) is out
    np.testing.assert_array_equal(out, A @ W.T)


@numba.njit
def _product_in_a_kernel(tiles, A, W):
    out = np.empty((A.shape[0], W.shape[0]), A.dtype)
    return mm_nt(tiles, A, W, out), bool(tiles)


@pytest.mark.parametrize("tiles", [ON_BLAS, ON_TILES])
def test_a_kernel_compiled_for_one_path_links_only_that_path(tiles):
    """ON_TILES and ON_BLAS are two types to Numba: a kernel specialised for ON_BLAS
    (training, BLAS decoding) must not link the parallel tiles, and one for ON_TILES
    must run them and make no BLAS call."""
    A, W = integer_operands(6, 10, 7, np.float64, seed=3)
    out, flag = _product_in_a_kernel(tiles, A, W)
    np.testing.assert_array_equal(out, A @ W.T)
    assert flag is bool(tiles)
    sig = [s for s in _product_in_a_kernel.signatures if repr(tiles) in str(s[0])]
    ir = _product_in_a_kernel.inspect_llvm(sig[0])
    assert ("tiled_nt" in ir) == bool(tiles)
    assert ("xxgemm" in ir) == (not tiles)


def test_mm_nt_in_a_kernel_rejects_a_plain_bool():
    with pytest.raises(numba.core.errors.TypingError, match="tiles must be ON_TILES or ON_BLAS"):
        numba.njit(lambda A, W: mm_nt(True, A, W, np.empty((2, 2))))(np.eye(2), np.eye(2))


# -- training's backward on the weights' transposes --------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed_is_the_transpose_of_each_matrix(dtype):
    """Shapes around the 32 x 32 blocks, a stack of matrices and an empty one."""
    rng = np.random.default_rng(4)
    for shape in ((1, 1), (31, 33), (64, 96), (70, 5), (3, 40, 33), (0, 8, 4)):
        W = rng.standard_normal(shape).astype(dtype)
        W_T = transposed(W)
        assert W_T.flags.c_contiguous and W_T.dtype == dtype
        np.testing.assert_array_equal(W_T, W.swapaxes(-1, -2), err_msg=f"{shape}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_times_is_the_product_on_w_or_its_transpose(dtype):
    D, W = integer_operands(5, 7, 6, dtype, seed=7)                  # D (5, 7), W (6, 7)
    W = np.ascontiguousarray(W.T)                                       # (7, 6): D @ W
    expected = D.astype(np.int64) @ W.astype(np.int64)
    np.testing.assert_array_equal(times(D, W, np.zeros((0, 0), dtype)), expected)
    np.testing.assert_array_equal(times(D, W, transposed(W)), expected)


# -- the attention's per-row products (rows_dot, weighted_rows) ---------------------------------
# Keys past src_len are NaN here: a product that read one would turn NaN.

@pytest.mark.parametrize("n", [0, 1, 5, 7])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_dot_is_the_product_of_the_first_n_rows(n, dtype):
    A, W = integer_operands(7, 33, 3, dtype)
    A[n:] = np.nan
    out = np.full(7, -1.0, dtype)
    rows_dot(A, n, W, 2, out)
    np.testing.assert_array_equal(out[:n], A[:n].astype(np.int64) @ W[2].astype(np.int64))
    assert (out[n:] == -1).all()


@pytest.mark.parametrize("n", [0, 1, 5, 7])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weighted_rows_is_the_weighted_sum_of_the_first_n_rows(n, dtype):
    rows, weights = integer_operands(7, 33, 1, dtype)[0], np.arange(-3, 5).astype(dtype)
    rows[n:] = np.nan
    weights[n:] = np.nan
    out = np.full(33, np.nan, dtype)
    weighted_rows(weights, rows, n, out)
    np.testing.assert_array_equal(out, weights[:n].astype(np.int64) @ rows[:n].astype(np.int64))


def test_the_row_product_checks_catch_a_read_past_n():
    """The two tests above can fail: a product over all rows reads the NaN ones."""
    A, W = integer_operands(7, 33, 3, "float64")
    A[5:] = np.nan
    out = np.empty(7)
    rows_dot(A, 7, W, 2, out)
    assert np.isnan(out[5:]).all()
    weights = np.arange(-3, 4).astype(np.float64)
    weights[5:] = np.nan
    ctx = np.empty(33)
    weighted_rows(weights, A, 7, ctx)
    assert np.isnan(ctx).all()


def test_the_backward_takes_transposes_where_openblas_ran_them_faster():
    assert nt_backward(np.float32, 384) and nt_backward(np.float32, 512) and nt_backward(np.float32, 1024)
    assert not nt_backward(np.float32, 256) and not nt_backward(np.float32, 64)
    assert not nt_backward(np.float64, 512) and not nt_backward(np.float64, 64)


# backward_transposes' order
_TRANSPOSES = ["enc_W_hh_T", "dec_W_hh_T", "dec_W_ih_up_T", "dec_W_feed_T", "att_W_c_T"]


def _backward_both_ways(dtype, stale=None):
    """model_backward's gradients with the step products on W and on W's transposes
    (forced: at H = 7 ``backward_transposes`` gives none); ``stale`` names a transpose
    to take from a 0.1%-perturbed weight instead."""
    cfg = Config(V_src=11, V_tgt=13, E=5, H=7, L=2, score="concat", dtype=dtype)
    params = init_params(cfg, 3)
    src, src_len, tgt = _batch(np.random.default_rng(1))
    y_in = np.ascontiguousarray(tgt[:, :-1])
    w = pack_weights(params, cfg)
    assert all(W_T.size == 0 for W_T in backward_transposes(w))
    forced = tuple(transposed(getattr(w, name[:-2]) * (1.001 if name == stale else 1)) for name in _TRANSPOSES)
    enc, y_emb, dec, h_tilde_bt = model_forward(w, src, src_len, y_in)
    dh = np.cos(h_tilde_bt)                                             # any upstream gradient
    return [model_backward(w, src, src_len, y_in, enc, y_emb, dec, dh, transposes=T_) for T_ in (None, forced)]


def _assert_agree(results, dtype):
    # H = 7: products of at most 4H = 28 terms, chained over T = 4 and S = 5 steps and 2
    # layers, gradients up to ~6. Only the summation order may differ (measured: bitwise
    # equal here and at the benchmark's sizes). 1e-13 is ~75 ulps of 6 in float64, 1e-5
    # ~14 ulps in float32.
    atol = 1e-13 if dtype == "float64" else 1e-5
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_backward_gives_the_same_gradients_on_the_transposes(dtype):
    """Two layers, concat, input feeding: every step product of the backward, both ways."""
    _assert_agree(_backward_both_ways(dtype), dtype)


@pytest.mark.parametrize("stale", _TRANSPOSES)
def test_the_transpose_check_catches_a_stale_transpose(stale):
    """A transpose that is not its weight's changes the gradients: every one is used."""
    with pytest.raises(AssertionError):
        _assert_agree(_backward_both_ways("float64", stale), "float64")


def test_one_pool_restores_the_blas_threads():
    from threadpoolctl import threadpool_info
    before = [(i["filepath"], i["num_threads"]) for i in threadpool_info()]
    with one_pool(True):
        inside = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    after = [(i["filepath"], i["num_threads"]) for i in threadpool_info()]
    assert set(inside) == {1}
    assert after == before


# -- decoding on tiles gives decoding on BLAS --------------------------------------------

def _batch(rng):
    src = rng.integers(3, 11, (6, 5))
    src_len = np.array([5, 3, 5, 1, 4, 2])
    for b, n in enumerate(src_len):
        src[b, n:] = 0
    tgt = rng.integers(3, 13, (6, 5))
    tgt[:, 0] = 1
    return src, src_len, tgt


def test_decoding_picks_tiles_for_few_rows_of_wide_layers():
    assert use_tiles(16, 512) and use_tiles(32, 256)
    assert not use_tiles(64, 256) and not use_tiles(80, 512) and not use_tiles(32, 64)


@pytest.mark.parametrize("score,L,feeding", [("concat", 2, True), ("dot", 1, True), ("general", 2, False)])
def test_the_decoder_on_tiles_matches_blas(score, L, feeding, monkeypatch):
    """H = 7 and 6 rows: every remainder path of the tiles. The teacher-forced pass runs
    the same decoder step as decoding, so its log-probabilities compare the two paths."""
    cfg = Config(V_src=11, V_tgt=13, E=5, H=7, L=L, score=score, input_feeding=feeding)
    params = init_params(cfg, 3)
    src, src_len, tgt = _batch(np.random.default_rng(1))
    w = pack_weights(params, cfg)
    y_in = np.ascontiguousarray(tgt[:, :-1])
    h_blas = model_forward(w, src, src_len, y_in)[3]
    h_tiles = model_forward(w._replace(tiles=True), src, src_len, y_in)[3]
    # float64, H = 7: products of at most 2H + E = 19 terms, a chain of a few per step over
    # T = 4 steps and 2 layers, on O(1) values; the summation order alone moves h~ by a few
    # ulps (measured: under 1.5e-15). 1e-13 is ~450 ulps.
    np.testing.assert_allclose(h_tiles, h_blas, rtol=0, atol=1e-13)
    blas = greedy_decode(params, cfg, src, src_len, 6), beam_search(params, cfg, src, src_len, 3, 6)
    monkeypatch.setattr(decode_api, "use_tiles", lambda rows, H: True)
    tiles = greedy_decode(params, cfg, src, src_len, 6), beam_search(params, cfg, src, src_len, 3, 6)
    for d0, d1 in zip(blas, tiles):
        np.testing.assert_array_equal(d1.tokens, d0.tokens)
        np.testing.assert_allclose(d1.scores, d0.scores, rtol=1e-13)
        np.testing.assert_allclose(d1.attention, d0.attention, rtol=0, atol=1e-13)


_FRESH = """
import numpy as np
from attnspec.impl.decode import greedy_decode
from attnspec.impl.model import init_params, loss_and_grads
from attnspec.spec.config import Config
for dtype in ("float32", "float64"):
    cfg = Config(V_src=11, V_tgt=13, E=5, H=7, L=2, score="concat", dtype=dtype)
    params = init_params(cfg, 3)
    src, src_len = np.full((2, 4), 5), np.array([4, 2])
    tgt = np.full((2, 5), 6); tgt[:, 0] = 1
    loss, _ = loss_and_grads(params, cfg, src, src_len, tgt)
    print(dtype, repr(loss), greedy_decode(params, cfg, src, src_len, 5).tokens.tolist())
"""


def test_cached_kernels_run_in_a_fresh_process():
    """Kernels that link the parallel tiles, loaded from Numba's cache in a process where
    no parallel code has run yet, used to crash (segfault): the threading layer's symbols
    were not registered. Run once (compiling and caching what is missing), then again in
    a fresh process that loads everything from the cache."""
    import subprocess
    import sys
    here = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True, timeout=600)
    assert here.returncode == 0, here.stderr[-2000:]
    fresh = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, f"exit {fresh.returncode}: {fresh.stderr[-2000:]}"
    assert fresh.stdout == here.stdout
