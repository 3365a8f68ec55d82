"""The transcendentals and the fused vocabulary kernels (impl/kernels_math.py, kernels_vocab.py).

The model-level properties already cover them end to end; these tests pin each
routine on its own, against float64 NumPy, including the edge cases (NaN, +-inf,
overflow, ties, rows shorter than the 16-lane blocks) that random models rarely reach.
"""

from __future__ import annotations

import mpmath as mp
import numba
import numpy as np
import pytest

from attnspec.impl.kernels_math import exp_, exp_nonpos_, expf, fma_, maximum_, sigmoid_, tanh_, tanhf
from attnspec.impl.kernels_util import kernel
from attnspec.impl.kernels_vocab import (add_bias_max, exp_shifted_sum, greedy_pick, log_softmax_grad_rows,
                                         log_softmax_rows, log_sum_exp_shifted, n_blocks, sum16, top_log_probs)

F32 = np.float32


@kernel
def _map_exp(x, out):
    for i in range(x.shape[0]):
        out[i] = exp_(x[i])


@kernel
def _map_tanh(x, out):
    for i in range(x.shape[0]):
        out[i] = tanh_(x[i])


@kernel
def _map_sigmoid(x, out):
    for i in range(x.shape[0]):
        out[i] = sigmoid_(x[i])


MAPS = {"exp": (_map_exp, np.exp), "tanh": (_map_tanh, np.tanh),
        "sigmoid": (_map_sigmoid, lambda x: 1.0 / (1.0 + np.exp(-x)))}


def max_ulps(got32, exact64):
    """Largest |got - exact| / ulp(exact) over the entries whose exact value is a normal float32."""
    normal = (np.abs(exact64) >= np.finfo(F32).tiny) & (np.abs(exact64) <= np.finfo(F32).max)
    exact32 = np.where(normal, exact64, 1.0).astype(F32)
    return float(np.max(np.abs(got32[normal].astype(np.float64) - exact64[normal])
                        / np.spacing(np.abs(exact32[normal]))))


# Every x that the kernels see: the whole range where the result is a normal float32.
SWEEP = np.concatenate([np.linspace(-90, 90, 400_001), np.geomspace(1e-8, 1.0, 20_001),
                        -np.geomspace(1e-8, 1.0, 20_001)]).astype(F32)


# Error budgets in ulps of the result: the polynomials of expf and tanhf are accurate to
# about 1 ulp (Cephes), and their last multiply or division rounds once more: 2. sigmoid
# = 1 / (1 + expf(-x)) carries expf's error (damped by e/(1+e) <= 1) plus the roundings of
# the sum and of the division, each half an ulp, which in ulps of a result near the bottom
# of its binade count up to twice: 3. (Measured over SWEEP: 0.99, 1.17, 2.15.)
ULP_BOUND = {"exp": 2.0, "tanh": 2.0, "sigmoid": 3.0}


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid"])
def test_float32_transcendentals_are_within_their_ulp_budget(name):
    fn, exact = MAPS[name]
    got = np.empty_like(SWEEP)
    fn(SWEEP, got)
    assert got.dtype == F32
    assert max_ulps(got, exact(SWEEP.astype(np.float64))) <= ULP_BOUND[name]


def test_the_ulp_measure_rejects_a_polynomial_one_term_short():
    """The accuracy test can fail: e^r ~ 1 + r + r^2/2 without the higher terms is far off."""
    r = np.linspace(-0.34, 0.34, 1001).astype(F32)
    crude = (1 + r + r * r / 2).astype(F32)
    assert max_ulps(crude, np.exp(r.astype(np.float64))) > 100


def test_float32_special_values():
    x = np.array([np.nan, -np.inf, np.inf, -1e4, -100, -90, 88.8, 1e4, -0.0, 0.0], F32)
    out = np.empty_like(x)
    _map_exp(x, out)
    assert np.isnan(out[0])
    # e^-100 and e^-90 are subnormal: right to within one subnormal step (1.4e-45)
    np.testing.assert_allclose(out[1:], [0, np.inf, 0, np.exp(-100.0), np.exp(-90.0), np.inf, np.inf, 1, 1],
                               rtol=1e-6, atol=1.5e-45)
    _map_tanh(x, out)
    assert np.isnan(out[0])
    np.testing.assert_array_equal(out[1:], [-1, 1, -1, -1, -1, 1, 1, 0, 0])
    _map_sigmoid(x, out)
    assert np.isnan(out[0])
    np.testing.assert_array_equal(out[1:], [0, 1, 0, 0, 0, 1, 1, 0.5, 0.5])


# -- float64 ----------------------------------------------------------------------------

def max_ulps64(got, x, fn):
    """Largest |got - exact| / ulp(exact) over the entries of x whose exact fn(x) is a normal
    float64; exact = mpmath at 40 digits (np.longdouble is float64 on some platforms)."""
    mp.mp.dps = 40
    worst = 0.0
    for xi, gi in zip(x.tolist(), got.tolist()):
        e = fn(mp.mpf(xi))
        ef = float(e)
        if not np.finfo(np.float64).tiny <= abs(ef) <= np.finfo(np.float64).max:
            continue
        worst = max(worst, float(abs(mp.mpf(gi) - e) / np.spacing(abs(ef))))
    return worst


EXACT64 = {"exp": mp.exp, "tanh": mp.tanh, "sigmoid": lambda x: 1 / (1 + mp.exp(-x))}
# Every region of x the kernels see, and the branch points: tanh switches formula at 0.625,
# exp at the subnormal (-708.4) and overflow (709.78) thresholds.
SWEEP64 = np.concatenate([
    np.random.default_rng(0).uniform(-745.0, 709.78, 6_000), np.random.default_rng(1).uniform(-40.0, 40.0, 6_000),
    np.linspace(-1.0, 1.0, 4_001), np.geomspace(1e-300, 1.0, 1_500), -np.geomspace(1e-300, 1.0, 1_500),
    np.linspace(0.62, 0.63, 1_001), -np.linspace(0.62, 0.63, 1_001)])

# Error budgets in ulps of the result. exp: the Taylor polynomial to degree 13 truncates below
# 0.03 ulp on |r| <= ln2 / 2; its last additions round (half an ulp), and the reduction
# x - n ln2 in two parts adds a few hundredths: 1.5. tanh near 0 is x plus a small rational
# correction, the last addition rounds once: about 1; beyond 0.625 it carries exp's error
# (damped) and three roundings: 2. sigmoid = 1 / (1 + e^{-x}) as in float32: 3.
# (Measured over SWEEP64: 0.94, 1.21, 1.79; libm's own tanh reaches 2.1 ulp, its exp 0.51.)
ULP_BOUND64 = {"exp": 1.5, "tanh": 2.0, "sigmoid": 3.0}


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid"])
def test_float64_transcendentals_are_within_their_ulp_budget(name):
    fn, _ = MAPS[name]
    got = np.empty_like(SWEEP64)
    fn(SWEEP64, got)
    assert max_ulps64(got, SWEEP64, EXACT64[name]) <= ULP_BOUND64[name]


def test_the_float64_ulp_measure_rejects_tanh_without_its_small_branch():
    """The float64 test can fail: 1 - 2 / (e^{2x} + 1) alone cancels near 0, thousands of ulps off."""
    x = np.geomspace(1e-8, 0.6, 200)
    e2x = np.empty_like(x)
    _map_exp(2 * x, e2x)
    assert max_ulps64(1 - 2 / (e2x + 1), x, mp.tanh) > 1000


def test_float64_special_values():
    x = np.array([np.nan, -np.inf, np.inf, -1e4, -745.2, -740.0, 709.79, 1e4, -0.0, 0.0, 1e-310, 25.0])
    out = np.empty_like(x)
    _map_exp(x, out)
    assert np.isnan(out[0])
    # e^-745.2 rounds to the smallest subnormal, e^-740 is subnormal: within one subnormal step
    np.testing.assert_allclose(out[1:], [0, np.inf, 0, 5e-324, float(mp.exp(-740)), np.inf, np.inf, 1, 1, 1,
                                         float(mp.exp(25))], rtol=1e-15, atol=5e-324)
    _map_tanh(x, out)
    assert np.isnan(out[0])
    np.testing.assert_array_equal(out[1:], [-1, 1, -1, -1, -1, 1, 1, -0.0, 0, 1e-310, 1])
    assert np.signbit(out[8]) and not np.signbit(out[9])
    _map_sigmoid(x, out)
    assert np.isnan(out[0])
    np.testing.assert_array_equal(out[1:], [0, 1, 0, 0, 0, 1, 1, 0.5, 0.5, 0.5, 1 / (1 + float(mp.exp(-25)))])


@pytest.mark.parametrize("sweep", [SWEEP, SWEEP64], ids=["float32", "float64"])
def test_tanh_is_odd(sweep):
    x = sweep[sweep > 0]
    pos, neg = np.empty_like(x), np.empty_like(x)
    _map_tanh(x, pos)
    _map_tanh(-x, neg)
    np.testing.assert_array_equal(neg, -pos)


def test_pure_python_fallback_runs_the_same_formulas():
    """With NUMBA_DISABLE_JIT the dispatchers run as Python: same values as the compiled code."""
    for dt in (F32, np.float64):
        x = np.array([-30.5, -1.25, -0.3, 1e-6, 0.7, 3.0, 40.0], dt)
        compiled = np.empty_like(x)
        for py, fn in ((exp_, _map_exp), (tanh_, _map_tanh), (sigmoid_, _map_sigmoid)):
            fn(x, compiled)
            python = np.array([py(v) for v in x], dt)
            np.testing.assert_allclose(python, compiled, rtol=2 * np.finfo(dt).eps)
    assert isinstance(exp_(np.float64(1.0)), float)
    assert getattr(expf, "py_func", expf)(F32(0.0)) == 1
    assert getattr(tanhf, "py_func", tanhf)(F32(0.0)) == 0


# -- fused multiply-add and maximum ----------------------------------------------------------

@kernel
def _map_fma(a, b, c, out):
    for i in range(a.shape[0]):
        out[i] = fma_(a[i], b[i], c[i])


@kernel
def _map_maximum(a, b, out):
    for i in range(a.shape[0]):
        out[i] = maximum_(a[i], b[i])


def _rounded_once(a, b, c, dtype):
    """a * b + c exactly, rounded to nearest (ties to even) at dtype's precision by mpmath."""
    with mp.workprec(np.finfo(dtype).nmant + 1):
        return [float(mp.fadd(mp.fmul(float(x), float(y), exact=True), float(z))) for x, y, z in zip(a, b, c)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fma_rounds_once_compiled_and_in_python(dtype):
    rng = np.random.default_rng(6)
    a = rng.standard_normal(500).astype(dtype)
    b = rng.standard_normal(500).astype(dtype)
    # c = -fl(a b): a fused result is the product's rounding error, an unfused one is 0
    c = -(a * b)
    c[::3] = rng.standard_normal(c[::3].size).astype(dtype) * np.dtype(dtype).type(1e-3)
    expected = np.array(_rounded_once(a, b, c, dtype), dtype)
    compiled = np.empty_like(a)
    _map_fma(a, b, c, compiled)
    python = np.array([fma_(x, y, z) for x, y, z in zip(a, b, c)], dtype)
    np.testing.assert_array_equal(compiled, expected)
    np.testing.assert_array_equal(python, expected)
    assert np.count_nonzero(expected != a * b + c) > 100         # the test rejects a * b + c


def test_maximum_propagates_nan_and_orders_signed_zeros():
    nan, inf = np.nan, np.inf
    a = np.array([1.0, -2.0, nan, 3.0, -0.0, 0.0, -0.0, -inf, 5.0, nan])
    b = np.array([2.0, -3.0, 1.0, nan, 0.0, -0.0, -0.0, -7.0, inf, nan])
    expected = np.array([2.0, -2.0, nan, nan, 0.0, 0.0, -0.0, -7.0, inf, nan])
    for dtype in (F32, np.float64):
        x, y = a.astype(dtype), b.astype(dtype)
        compiled = np.empty_like(x)
        _map_maximum(x, y, compiled)
        python = np.array([maximum_(u, v) for u, v in zip(x, y)], dtype)
        for got in (compiled, python):
            np.testing.assert_array_equal(got, expected.astype(dtype))
            np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))
    # the fold ``x if x > m else m`` it replaced would return 1.0 and 3.0 for the NaN pairs
    assert not np.isnan(np.where(a[2:4] > b[2:4], a[2:4], b[2:4])).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_nan_logit_makes_the_row_maximum_nan(dtype):
    for where in (0, 5, 16, 33):                                     # first, inside, block edges, tail
        x = np.linspace(-1, 1, 37).astype(dtype)
        x[where] = np.nan
        assert np.isnan(add_bias_max(x, np.zeros(37, dtype)))


# -- vocabulary rows ------------------------------------------------------------------------

def _log_softmax64(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return (x - m) - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


# -- exp on x <= 0 for the sums of shifted rows ---------------------------------------------

@kernel
def _map_exp_nonpos(x, out):
    for i in range(x.shape[0]):
        out[i] = exp_nonpos_(x[i])


@kernel
def _lse_with_exp(x, m, scratch):
    """log_sum_exp_shifted as it was before exp_nonpos_: every term from exp_."""
    for v in range(x.shape[0]):
        scratch[v] = exp_(x[v] - m)
    return np.log(sum16(scratch))


NONPOS_BOUND = {"float32": -87.0, "float64": -708.0}


def exp_nonpos_mismatches(x, got, bound):
    """Entries of x <= 0 where got is not exp_'s bits (x >= bound), not 0 (x < bound) or not NaN (NaN)."""
    want = np.empty_like(x)
    _map_exp(x, want)
    want = np.where(x < bound, 0, want)
    same = (got.view(f"i{x.itemsize}") == want.astype(x.dtype).view(f"i{x.itemsize}")) | (np.isnan(got) & np.isnan(x))
    return x[~same]


def _nonpos_sweep(dtype):
    bound = NONPOS_BOUND[dtype]
    rng = np.random.default_rng(11)
    return np.concatenate([np.linspace(bound, 0, 400_001), rng.uniform(bound, 0, 100_000),
                           np.linspace(bound - 40, bound, 4_001), -np.geomspace(1e-30, 1.0, 2_001),
                           [np.nextafter(bound, 0), bound, np.nextafter(bound, -np.inf), -0.0, 0.0,
                            -np.inf, np.nan, -1e30]]).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exp_nonpos_is_exp_down_to_its_bound_and_zero_below(dtype):
    """Bitwise exp_ on [bound, 0] (the subnormal results of float32 included), 0 below, NaN kept."""
    x = _nonpos_sweep(dtype)
    got = np.empty_like(x)
    _map_exp_nonpos(x, got)
    assert got.dtype == x.dtype
    assert exp_nonpos_mismatches(x, got, NONPOS_BOUND[dtype]).size == 0
    python = np.array([exp_nonpos_(v) for v in x[::997]], dtype)     # NUMBA_DISABLE_JIT runs the same formula
    assert exp_nonpos_mismatches(x[::997], python, NONPOS_BOUND[dtype]).size == 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_exp_nonpos_check_rejects_libm_and_a_missing_flush(dtype):
    """The comparison above can fail: libm's exp differs in last bits and does not flush."""
    x = _nonpos_sweep(dtype)
    with np.errstate(under="ignore"):
        libm = np.exp(x)
    assert exp_nonpos_mismatches(x, libm, NONPOS_BOUND[dtype]).size > 0
    own = np.empty_like(x)
    _map_exp(x, own)                                                 # exact bits, but no flush
    assert (exp_nonpos_mismatches(x, own, NONPOS_BOUND[dtype]) < NONPOS_BOUND[dtype]).any()


def _adversarial_rows(dtype, V, rng):
    """Rows whose terms crowd the flush bound: a few near the maximum, the rest around and below it."""
    bound = NONPOS_BOUND[dtype]
    rows = [rng.standard_normal(V) * 10.0 ** rng.uniform(0, 3, V), rng.uniform(2 * bound, 0, V),
            rng.uniform(bound - 30, bound + 30, V), np.full(V, bound - 1.0),
            np.where(rng.random(V) < 0.1, rng.uniform(bound + 20, 0, V), rng.uniform(bound - 20, bound, V))]
    for row in rows:
        row[rng.integers(V)] = 0.0                                   # the maximum: one term is exactly 1
        yield (row + rng.uniform(-50, 50)).astype(dtype)


@pytest.mark.parametrize("V", [1, 7, 16, 33, 1000, 1003])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_sum_exp_shifted_is_bitwise_the_sum_of_unflushed_exps(V, dtype):
    """Terms flushed to 0 (below e^-87 / e^-708, against a 1 in the same sum) leave every bit of the result."""
    rng = np.random.default_rng(V)
    scratch = np.empty(V, dtype)
    for _ in range(40):
        for row in _adversarial_rows(dtype, V, rng):
            m = row.max()
            assert log_sum_exp_shifted(row, m, scratch) == _lse_with_exp(row, m, scratch)


@kernel
def _lse_flushing_at(x, m, scratch, cut):
    for v in range(x.shape[0]):
        d = x[v] - m
        scratch[v] = 0.0 if d < cut else exp_(d)
    return np.log(sum16(scratch))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_bitwise_lse_check_rejects_a_flush_at_e_minus_20(dtype):
    """The comparison above can fail: dropping the terms below e^-20 changes the sums' last bits."""
    rng = np.random.default_rng(5)
    scratch = np.empty(1000, dtype)
    differ = 0
    for _ in range(20):
        row = (rng.standard_normal(1000) * 8).astype(dtype)
        m = row.max()
        differ += _lse_flushing_at(row, m, scratch, -20.0) != _lse_with_exp(row, m, scratch)
    assert differ > 0


@pytest.mark.parametrize("V", [1, 5, 16, 17, 100, 1000])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_add_bias_max_and_exp_shifted_sum(V, dtype):
    rng = np.random.default_rng(V)
    x = rng.standard_normal(V).astype(dtype) * 5
    bias = rng.standard_normal(V).astype(dtype)
    y = x.copy()
    m = add_bias_max(y, bias)
    np.testing.assert_array_equal(y, x + bias)
    assert m == np.max(x + bias)
    total = exp_shifted_sum(y, m)
    expected = np.exp((x + bias).astype(np.float64) - float(m))
    # float32: 2 ulps per exp (above) and V roundings in the sum, V <= 1000: 1e-5 relative
    rtol = 1e-5 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(y, expected, rtol=rtol, atol=0)
    np.testing.assert_allclose(total, expected.sum(), rtol=rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_softmax_rows_matches_float64(dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((7, 300)) * 10).astype(dtype)
    bias = rng.standard_normal(300).astype(dtype)
    got = x.copy()
    log_softmax_rows(got, bias)
    # log p is O(10): absolute error of a few float32 ulps of 10 (1e-6 * 10) or float64 ones
    atol = 1e-5 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(got, _log_softmax64(x + bias), rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_loss_and_gradient_rows(dtype):
    rng = np.random.default_rng(2)
    N, V, pad = 9, 37, 0
    x = (rng.standard_normal((N, V)) * 4).astype(dtype)
    bias = rng.standard_normal(V).astype(dtype)
    labels = rng.integers(1, V, N)
    labels[[2, 5]] = pad
    count = np.dtype(dtype).type(N - 2)
    picked = np.full(N, np.nan, dtype)
    db = np.zeros(V, dtype)
    got = x.copy()
    log_softmax_grad_rows(got, bias, labels, pad, count, picked, db)
    lp = _log_softmax64(x + bias)
    expected = np.exp(lp)
    expected[np.arange(N), labels] -= 1
    expected /= float(count)
    expected[labels == pad] = 0
    atol = 1e-6 if dtype == "float32" else 1e-15
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)
    np.testing.assert_allclose(db, expected.sum(axis=0), rtol=0, atol=10 * atol)
    np.testing.assert_allclose(picked, np.where(labels == pad, 0, lp[np.arange(N), labels]), rtol=0, atol=10 * atol)
    assert np.all(got[labels == pad] == 0)


def test_a_nan_logit_reaches_the_loss():
    x = np.array([[0.5, np.nan, -1.0]], F32)
    picked = np.zeros(1, F32)
    log_softmax_grad_rows(x, np.zeros(3, F32), np.array([0]), -1, F32(1), picked, np.zeros(3, F32))
    assert np.isnan(picked[0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_greedy_pick_is_the_first_argmax_of_the_log_probs(dtype):
    rng = np.random.default_rng(3)
    for V in (1, 3, 16, 50):
        x = rng.integers(-2, 3, V).astype(dtype)            # many ties
        bias = np.zeros(V, dtype)
        lp = x.copy()
        log_softmax_rows(lp.reshape(1, V), bias)
        v, log_p = greedy_pick(x.copy(), bias, np.empty(V, dtype))
        assert v == int(np.argmax(lp)) and log_p == lp[v]


def top_of(x, bias, M):
    """``top_log_probs`` on a copy of x with fresh work space: (top, top_lp), top filled with -1 first."""
    V, dt = x.shape[0], x.dtype
    top, top_lp = np.full(M, -1, np.int64), np.empty(M, dt)
    top_log_probs(x.copy(), bias, np.empty(V, dt), np.empty(n_blocks(V), dt), top, top_lp, np.empty(M, dt))
    return top, top_lp


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_top_log_probs_is_a_stable_sort(dtype):
    rng = np.random.default_rng(4)
    for V, M in ((1, 1), (5, 5), (12, 4), (40, 10), (100, 20), (300, 10), (1000, 40)):
        x = rng.integers(-3, 4, V).astype(dtype)            # many ties: lowest id first
        bias = rng.integers(0, 2, V).astype(dtype)
        lp = x + bias
        log_softmax_rows(lp.reshape(1, V), np.zeros(V, dtype))
        top, top_lp = top_of(x, bias, M)
        order = np.argsort(-lp, kind="stable")[:M]
        np.testing.assert_array_equal(top, order)
        np.testing.assert_array_equal(top_lp, lp[order])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_top_log_probs_keeps_near_ties_below_the_block_floor(dtype):
    """Logits a few ulps apart round to the same log-probability, and then the lower id
    ranks first even with the smaller logit: the floor from the blocks' maxima must not
    drop it (its margin), nor skip a block holding it."""
    rng = np.random.default_rng(7)
    found = 0
    for _ in range(300):
        V, M = int(rng.integers(48, 400)), int(rng.integers(1, 9))
        m = np.dtype(dtype).type(rng.uniform(-3, 3))
        x = (m - rng.integers(0, 4, V) * np.spacing(np.abs(m))).astype(dtype)
        x[rng.random(V) < 0.8] -= 5                                           # most clearly smaller
        bias = np.zeros(V, dtype)
        lp = x.copy()
        log_softmax_rows(lp.reshape(1, V), bias)
        top, top_lp = top_of(x, bias, M)
        order = np.argsort(-lp, kind="stable")[:M]
        np.testing.assert_array_equal(top, order)
        np.testing.assert_array_equal(top_lp, lp[order])
        found += not np.array_equal(order, np.argsort(-x, kind="stable")[:M])
    assert found > 0          # the case this test is about did occur


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_top_log_probs_finds_the_best_in_the_last_partial_block(dtype):
    """The block maxima are taken 16 at a time and then over the V % 16 logits left:
    the best tokens placed there must be found (and the others in order)."""
    rng = np.random.default_rng(8)
    for V, M in ((17, 1), (40, 3), (1003, 10), (1009, 10)):
        x = rng.normal(0, 1, V).astype(dtype)
        tail = np.arange(V - V % 16, V)
        x[tail] += 10                                                         # the best ones
        lp = x.copy()
        log_softmax_rows(lp.reshape(1, V), np.zeros(V, dtype))
        top, top_lp = top_of(x, np.zeros(V, dtype), M)
        order = np.argsort(-lp, kind="stable")[:M]
        assert set(order[:min(M, tail.size)]) <= set(tail)
        np.testing.assert_array_equal(top, order)
        np.testing.assert_array_equal(top_lp, lp[order])


@pytest.mark.parametrize("V", [12, 1000])
def test_top_log_probs_ranks_real_ids_when_a_logit_is_nan(V):
    """A NaN logit makes the floor NaN: every token must then be ranked, so that top holds
    M distinct ids in range (beam search embeds them before it reports the NaN)."""
    x = np.random.default_rng(9).normal(0, 1, V)
    x[V // 2] = np.nan
    M = 4
    top, top_lp = top_of(x, np.zeros(V), M)
    assert len(set(top.tolist())) == M and all(0 <= v < V for v in top)
    assert np.isnan(top_lp).all()


def test_top_log_probs_when_one_logit_holds_all_the_mass():
    """m = 0 and lse = 0 (every other exp underflows): the floor's margin then scales with
    the floor alone, and the one token holding the mass must still be found."""
    for dtype in ("float32", "float64"):
        x = np.full(64, -1e4, dtype)
        x[40] = 0.0
        top, top_lp = top_of(x, np.zeros(64, dtype), 1)
        assert top[0] == 40 and top_lp[0] == 0.0


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="NUMBA_DISABLE_JIT: nothing is compiled")
def test_jitted_kernels_are_numba_dispatchers():
    """Guard against a kernel losing its decorator (it would run, slowly, as Python)."""
    for f in (add_bias_max, log_softmax_rows, log_softmax_grad_rows, greedy_pick, top_log_probs, expf, tanhf):
        assert isinstance(f, numba.core.registry.CPUDispatcher), f


def test_beam_candidate_order_is_a_stable_descending_sort():
    from attnspec.impl.kernels_decode import stable_order_desc
    rng = np.random.default_rng(5)
    for n in (0, 1, 2, 7, 50):
        score = rng.integers(-3, 3, n + 3).astype(np.float64)     # ties; entries past n are ignored
        order = np.full(n + 3, -1, np.int64)
        stable_order_desc(score, n, order)
        np.testing.assert_array_equal(order[:n], np.argsort(-score[:n], kind="stable"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_greedy_pick_ties_of_log_probs_between_different_logits(dtype):
    """Logits a few ulps apart round to the same log-probability: the lowest such id wins,
    as np.argmax over the log-probabilities says (the early-exit scan must not stop late)."""
    rng = np.random.default_rng(6)
    found = 0
    for _ in range(300):
        V = int(rng.integers(2, 40))
        m = np.dtype(dtype).type(rng.uniform(-3, 3))
        x = np.full(V, m, dtype) - rng.integers(0, 4, V) * np.spacing(np.abs(m)).astype(dtype)
        x[rng.integers(0, V, V // 2)] -= 5                                   # some clearly smaller
        x = x.astype(dtype)
        bias = np.zeros(V, dtype)
        lp = x.copy()
        log_softmax_rows(lp.reshape(1, V), bias)
        v, log_p = greedy_pick(x.copy(), bias, np.empty(V, dtype))
        assert v == int(np.argmax(lp)) and log_p == lp[v]
        found += int(np.argmax(lp)) != int(np.argmax(x))
    assert found > 0          # the case this test is about did occur
