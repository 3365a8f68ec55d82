"""Scalar transcendentals for the kernels: straight-line code that LLVM vectorises.

This Numba has no SVML, so ``np.exp`` and ``np.tanh`` compile to one libm call
per element and a loop around them is never vectorised; glibc's ``tanh`` costs
about 28 ns, and the LSTM cells, h~ = tanh(...) and the softmax over the
vocabulary spend most of the small training step in them. The functions here
are written without calls or branches (branches as selects), so that a loop
over them is vectorised, and their polynomials in fused multiply-adds
(``fma_``: IEEE's fusedMultiplyAdd, one rounding, so the bits are the same on
a CPU without FMA instructions, where LLVM calls libm's ``fma``; only slower):

- ``exp``: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2 / 2, then
  e^r by a polynomial (Cephes' minimax in float32, Taylor to degree 13 in
  float64) and 2^n written into exponent bits;
- ``tanh``: an odd rational (float64) or polynomial (float32) near 0, where
  1 - 2 / (e^{2|x|} + 1) would cancel, and that formula beyond |x| = 0.625;
- ``sigmoid`` = 1 / (1 + e^{-x});
- ``exp_nonpos``: exp for x <= 0 with one exponent factor and no clamps,
  flushing results below e^-87 (float32) / e^-708 (float64) to 0: the terms of a
  softmax sum shifted by its maximum (``kernels_vocab.log_sum_exp_shifted``),
  where the flushed terms cannot reach the sum's bits; ``exp``'s bits above.

Their errors against the correctly rounded result are measured in
tests/test_impl_kernels.py (at most 2.15 ulp in float32 and 1.79 in float64,
both for the sigmoid). float64 results therefore differ from libm's in the
last bit or two of some entries, far below the tolerances that tie the
implementation to the oracle (docs/implementation.md, "Transcendentals").

``exp_``, ``exp_nonpos_``, ``tanh_`` and ``sigmoid_`` dispatch on the argument's type when
compiled (``numba.extending.overload``) and at run time when Numba's JIT is
disabled, so both modes run the same formulas.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)         # ln 2 = _LN2_HI + _LN2_LO; _LN2_HI has 9 significant bits,
_LN2_LO = np.float32(-2.12194440e-4)      # so n * _LN2_HI is exact for |n| <= 127 (Cody-Waite)
# (e^r - 1 - r) / r^2 on |r| <= ln2 / 2, minimax (Cephes expf)
_EXP_P = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                       4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
# (tanh(x) - x) / x^3 as a polynomial in x^2 on |x| < 0.625, minimax (Cephes tanhf)
_TANH_P = tuple(np.float32(c) for c in (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2,
                                        1.33314422036e-1, -3.33332819422e-1))
_X_MIN = np.float32(-104.0)               # below: e^x rounds to 0 (half the smallest subnormal)
_X_MAX = np.float32(88.72283935546875)    # above: e^x > the largest float32
_INF32 = np.float32(np.inf)
_NONPOS_MIN = np.float32(-87.0)           # expf_nonpos: e^x below e^-87 is flushed to 0
_ONE32 = np.float32(1.0)
_TWO32 = np.float32(2.0)


# -- bit patterns and the fused multiply-add ---------------------------------------------
# One function per width: Numba computes ``int32 + int32`` in int64, so the width of
# the result cannot follow the argument's type.

def float32_from_bits(bits):
    """The float32 whose IEEE-754 bit pattern is the int32 ``bits``."""
    return np.int32(bits).view(np.float32)


def float64_from_bits(bits):
    """The float64 whose IEEE-754 bit pattern is the int64 ``bits``."""
    return np.int64(bits).view(np.float64)


def float64_bits(x):
    """The IEEE-754 bit pattern of the float64 ``x``, as an int64."""
    return np.float64(x).view(np.int64)


def fma_(a, b, c):
    """a * b + c rounded once (IEEE 754 fusedMultiplyAdd), in the dtype of ``a``.

    Compiled, one ``llvm.fma`` instruction. As Python (NUMBA_DISABLE_JIT) the exact
    value is formed in rationals and rounded to nearest, ties to even, so that both
    modes give the same bits.

    >>> float(fma_(np.float64(0.1), np.float64(10.0), np.float64(-1.0)))   # 0.1 * 10 - 1 before rounding
    5.551115123125783e-17
    """
    dt = np.float32 if isinstance(a, np.float32) else np.float64
    if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c)):
        return dt(dt(a) * dt(b) + dt(c))          # inf or NaN: no rounding to get right
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    try:
        near = dt(float(exact))                   # float64: correctly rounded
    except OverflowError:
        return dt(math.copysign(math.inf, exact))
    if dt is np.float64 or not math.isfinite(near):
        return near
    # float32: float() rounded once already, so near may be an ulp off (double rounding)
    cands = [v for v in (np.nextafter(near, dt(-math.inf)), near, np.nextafter(near, dt(math.inf)))
             if math.isfinite(v)]
    return min(cands, key=lambda v: (abs(Fraction(float(v)) - exact), int(v.view(np.int32)) & 1))


def maximum_(a, b):
    """The larger of a and b, NaN if either is NaN, +0 over -0 (IEEE 754-2019 maximum).

    Exact and order-free, so a loop that folds it over a row is vectorised by LLVM
    (``llvm.maximum``), where ``m = x if x > m else m`` is not: that fold depends on
    the order in which it meets NaNs and signed zeros.

    >>> float(maximum_(np.float64(-0.0), np.float64(0.0))), bool(np.isnan(maximum_(np.float64(1.0), np.float64("nan"))))
    (0.0, True)
    """
    if a != a or b != b:
        return a + b                              # NaN, in the arguments' dtype
    if a == b:
        return b if math.copysign(1.0, a) < 0 else a
    return a if a > b else b


def _bitcast_intrinsic(from_t, to_t):
    @intrinsic
    def bitcast(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(to_t))
        return to_t(from_t), codegen
    return bitcast


_bitcast32 = _bitcast_intrinsic(types.int32, types.float32)
_bitcast64 = _bitcast_intrinsic(types.int64, types.float64)
_bits64 = _bitcast_intrinsic(types.float64, types.int64)


@intrinsic
def _fma(typingctx, a, b, c):
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return a(a, b, c), codegen


@intrinsic
def _maximum(typingctx, a, b):
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        fnty = llvm_ir.FunctionType(args[0].type, [args[0].type, args[1].type])
        fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.maximum.f{a.bitwidth}")
        return builder.call(fn, args)
    return a(a, b), codegen


@overload(float32_from_bits)
def _float32_from_bits_jit(bits):
    return lambda bits: _bitcast32(bits)


@overload(float64_from_bits)
def _float64_from_bits_jit(bits):
    return lambda bits: _bitcast64(bits)


@overload(float64_bits)
def _float64_bits_jit(x):
    return lambda x: _bits64(x)


@overload(fma_)
def _fma_jit(a, b, c):
    return lambda a, b, c: _fma(a, b, c)


@overload(maximum_)
def _maximum_jit(a, b):
    return lambda a, b: _maximum(a, b)


# -- float32 -----------------------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def expf(x):
    """exp(x) for a float32 x; NaN stays NaN, overflow gives inf, underflow gives 0.

    x = n ln2 + r with n = round(x / ln2), |r| <= ln2 / 2; e^x = 2^n e^r, e^r by a
    degree-7 polynomial in fused multiply-adds (Horner), and 2^n as two factors
    2^(n//2) 2^(n - n//2) written straight into exponent bits (two factors, so that n
    from -150 to 128 is representable: overflow and the subnormal results below
    e^-87.3 come out right).
    """
    if x < _X_MIN:
        x = _X_MIN
    n = np.floor(x * _LOG2E + np.float32(0.5))
    if not n >= np.float32(-150.0):       # also NaN -> -150: the int conversion below stays defined
        n = np.float32(-150.0)
    if n > np.float32(128.0):
        n = np.float32(128.0)
    p = _expf_reduced(fma_(-n, _LN2_LO, fma_(-n, _LN2_HI, x)))    # NaN x gives NaN r and NaN p
    k = np.int32(n)
    k1 = k >> np.int32(1)
    e = (p * float32_from_bits((k1 + np.int32(127)) << np.int32(23))) \
        * float32_from_bits((k - k1 + np.int32(127)) << np.int32(23))
    return _INF32 if x > _X_MAX else e


@njit(cache=True, error_model="numpy")
def _expf_reduced(r):
    """e^r for a float32 |r| <= ln2 / 2: Cephes' minimax polynomial, Horner in fused steps."""
    P = _EXP_P
    p = fma_(fma_(fma_(fma_(fma_(P[0], r, P[1]), r, P[2]), r, P[3]), r, P[4]), r, P[5])
    return fma_(p, r * r, r) + _ONE32


@njit(cache=True, error_model="numpy")
def expf_nonpos(x):
    """exp(x) for a float32 x <= 0 (or NaN), as ``expf`` where x >= -87 and 0 below.

    For the sums of a softmax row shifted by its maximum (``kernels_vocab``): their
    terms are at most 1, one of them exactly 1, and those below e^-87 = 1.6e-38
    add less than V * 1.6e-38 to the sum, while half an ulp of 1 is 6e-8. (A
    partial sum that small is lost against the 1; only one that lands exactly on a
    rounding midpoint could carry a flushed term's trace into the last bit.) The
    domain lets 2^n be one exponent factor, normal since n >= -126, and drops
    ``expf``'s clamps: ``expf``'s bits on [-87, 0], in fewer operations. x > 0 is
    outside the contract.
    """
    xn = x if x >= _NONPOS_MIN else _NONPOS_MIN   # NaN -> the bound: the int conversion stays defined
    n = np.floor(xn * _LOG2E + np.float32(0.5))
    e = _expf_reduced(fma_(-n, _LN2_LO, fma_(-n, _LN2_HI, x))) \
        * float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))
    return np.float32(0.0) if x < _NONPOS_MIN else e                     # NaN x: NaN r and e


@njit(cache=True, error_model="numpy")
def tanhf(x):
    """tanh(x) for a float32 x: an odd polynomial near 0, 1 - 2 / (e^{2|x|} + 1) beyond."""
    a = abs(x)
    z = x * x
    P = _TANH_P
    small = fma_(fma_(fma_(fma_(fma_(P[0], z, P[1]), z, P[2]), z, P[3]), z, P[4]) * z, x, x)
    big = _ONE32 - _TWO32 / (expf(_TWO32 * a) + _ONE32)       # e^{2|x|} = inf gives exactly 1
    big = big if x >= 0 else -big
    return small if a < np.float32(0.625) else big


@njit(cache=True, error_model="numpy")
def sigmoidf(x):
    """1 / (1 + e^{-x}) for a float32 x."""
    return _ONE32 / (_ONE32 + expf(-x))


# -- float64 -----------------------------------------------------------------------------

# ln 2 = _LN2_HI_D + _LN2_LO_D; _LN2_HI_D has 32 significant bits, so n * _LN2_HI_D is exact
# for |n| < 2^21 (n <= 1076 here)
_LN2_HI_D = 6.93147180369123816490e-01
_LN2_LO_D = 1.90821492927058770002e-10
_INV_FACT = tuple(1.0 / math.factorial(k) for k in range(14))
# An integer-valued float64 |m| < 2^51 plus 1.5 * 2^52 has the bits of the sum's own bits
# plus m: subtracting those bits reads m as an int64
_SHIFTER_D = 6755399441055744.0
_SHIFTER_D_BITS = 0x4338000000000000
# tanh(x) = x + x^3 P(x^2) / Q(x^2) on |x| <= 0.625 (Cephes tanh; Q's leading 1 implicit)
_TANH_P_D = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_TANH_Q_D = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)


@njit(cache=True, error_model="numpy")
def expd(x):
    """exp(x) for a float64 x; NaN stays NaN, overflow gives inf, underflow gives 0.

    As ``expf``: x = n ln2 + r, |r| <= ln2 / 2; e^r by its Taylor series to degree
    13 (truncation error below 0.03 ulp) in Estrin's scheme, whose dependency chain
    is half Horner's (this loop is bound by latency, not by the number of operations);
    2^n as two exponent-bit factors so that n from -1076 to 1024 is representable
    (subnormal and overflowing results). The integer parts of n are read from the
    bits of n + 1.5 * 2^52 rather than converted: 4-lane vectors have no
    float64-to-int64 conversion below AVX-512, and LLVM would do it lane by lane.
    """
    if x < -746.0:
        x = -746.0
    n = np.floor(x * 1.4426950408889634 + 0.5)
    if not n >= -1076.0:                  # also NaN -> -1076: the integer parts below stay defined
        n = -1076.0
    if n > 1024.0:
        n = 1024.0
    p = _expd_reduced(fma_(-n, _LN2_LO_D, fma_(-n, _LN2_HI_D, x)))   # NaN x gives NaN r and NaN p
    n1 = np.floor(n * 0.5)
    k1 = float64_bits(n1 + _SHIFTER_D) - _SHIFTER_D_BITS                # the int64 n1, exactly
    k2 = float64_bits((n - n1) + _SHIFTER_D) - _SHIFTER_D_BITS
    e = (p * float64_from_bits((k1 + 1023) << 52)) * float64_from_bits((k2 + 1023) << 52)
    return np.inf if x > 709.782712893384 else e


@njit(cache=True, error_model="numpy")
def _expd_reduced(r):
    """e^r for a float64 |r| <= ln2 / 2: its Taylor series to degree 13, Estrin's scheme."""
    c = _INV_FACT
    r2 = r * r
    r4 = r2 * r2
    s0 = fma_(fma_(c[5], r, c[4]), r2, fma_(c[3], r, c[2]))          # c2 + ... + c5 r^3
    s1 = fma_(fma_(c[9], r, c[8]), r2, fma_(c[7], r, c[6]))          # c6 + ... + c9 r^3
    s2 = fma_(fma_(c[13], r, c[12]), r2, fma_(c[11], r, c[10]))      # c10 + ... + c13 r^3
    return fma_(fma_(fma_(s2, r4, s1), r4, s0), r2, r) + 1.0


@njit(cache=True, error_model="numpy")
def expd_nonpos(x):
    """exp(x) for a float64 x <= 0 (or NaN), as ``expd`` where x >= -708 and 0 below.

    ``expf_nonpos``'s contract in float64: terms below e^-708 = 3.3e-308 add less
    than V * 3.3e-308 to the sum of a shifted softmax row, against half an ulp of 1,
    1.1e-16; one exponent factor (n >= -1022), no clamps; ``expd``'s bits on
    [-708, 0], in fewer operations.
    """
    xn = x if x >= -708.0 else -708.0     # NaN -> the bound: n and its bits stay defined
    n = np.floor(xn * 1.4426950408889634 + 0.5)
    k = float64_bits(n + _SHIFTER_D) - _SHIFTER_D_BITS                  # the int64 n, exactly
    e = _expd_reduced(fma_(-n, _LN2_LO_D, fma_(-n, _LN2_HI_D, x))) * float64_from_bits((k + 1023) << 52)
    return 0.0 if x < -708.0 else e       # NaN x: NaN r and e


def _tanhd(x):
    a = abs(x)
    z = x * x
    P, Q = _TANH_P_D, _TANH_Q_D
    small = fma_(x * z, fma_(fma_(P[0], z, P[1]), z, P[2]) / fma_(fma_(z + Q[0], z, Q[1]), z, Q[2]), x)
    big = np.copysign(1.0 - 2.0 / (expd(2.0 * a) + 1.0), x)  # e^{2|x|} = inf gives exactly 1
    if a <= 0.625:
        return np.copysign(small, x)      # tanh(-0) = -0
    return big


# The kernels inline this body where they call ``tanh_`` (``_tanh_jit``): called as a
# function, it is too large for LLVM to inline, and a loop around a call is not vectorised.
tanhd = njit(cache=True, error_model="numpy")(_tanhd)
tanhd.__doc__ = """tanh(x) for a float64 x: an odd rational near 0, 1 - 2 / (e^{2|x|} + 1) beyond."""


@njit(cache=True, error_model="numpy")
def sigmoidd(x):
    """1 / (1 + e^{-x}) for a float64 x."""
    return 1.0 / (1.0 + expd(-x))


# -- dtype-dispatched scalars ------------------------------------------------------------

def exp_(x):
    """e^x: ``expf`` for a float32, ``expd`` otherwise."""
    return expf(x) if isinstance(x, np.float32) else expd(x)


def exp_nonpos_(x):
    """e^x for x <= 0, flushed to 0 below e^-87 / e^-708: ``expf_nonpos`` for a float32,
    ``expd_nonpos`` otherwise."""
    return expf_nonpos(x) if isinstance(x, np.float32) else expd_nonpos(x)


def tanh_(x):
    """tanh(x): ``tanhf`` for a float32, ``tanhd`` otherwise."""
    return tanhf(x) if isinstance(x, np.float32) else tanhd(x)


def sigmoid_(x):
    """1 / (1 + e^{-x}): ``sigmoidf`` for a float32, ``sigmoidd`` otherwise."""
    return sigmoidf(x) if isinstance(x, np.float32) else sigmoidd(x)


def _is_float32(x):
    return isinstance(x, types.Float) and x.bitwidth == 32


@overload(exp_)
def _exp_jit(x):
    if _is_float32(x):
        return lambda x: expf(x)
    return lambda x: expd(x)


@overload(exp_nonpos_)
def _exp_nonpos_jit(x):
    if _is_float32(x):
        return lambda x: expf_nonpos(x)
    return lambda x: expd_nonpos(x)


def _inline_float64(expr, caller, callee):
    """Numba-level inlining for the float64 ``tanh_`` only (float32's is small enough for LLVM)."""
    return not _is_float32(caller.typemap[expr.args[0].name])


@overload(tanh_, inline=_inline_float64)
def _tanh_jit(x):
    if _is_float32(x):
        return lambda x: tanhf(x)
    return _tanhd


@overload(sigmoid_)
def _sigmoid_jit(x):
    if _is_float32(x):
        return lambda x: sigmoidf(x)
    return lambda x: sigmoidd(x)
