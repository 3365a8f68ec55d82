"""Scalar transcendentals for the kernels: libm in float64, vectorisable polynomials in float32.

This Numba has no SVML, so ``np.exp`` and ``np.tanh`` compile to one libm call
per element and a loop around them is never vectorised; glibc's ``tanh`` costs
about 28 ns, and the LSTM cells and h~ = tanh(...) spend most of the small
training step in it. In float32 the functions here are straight-line code
(Cody-Waite range reduction and Cephes' minimax polynomials, branches written
as selects) that LLVM vectorises, within a few float32 ulps of the correctly
rounded result (measured in tests/test_impl_kernels.py). In float64 they ARE the
libm functions, so float64 results do not change by a single bit.

``exp_``, ``tanh_`` and ``sigmoid_`` dispatch on the argument's type when
compiled (``numba.extending.overload``) and at run time when Numba's JIT is
disabled, so both modes run the same formulas.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
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
_ONE32 = np.float32(1.0)
_TWO32 = np.float32(2.0)


# -- float32 building blocks -------------------------------------------------------------

def float32_from_bits(bits):
    """The float32 whose IEEE-754 bit pattern is the int32 ``bits``."""
    return np.int32(bits).view(np.float32)


@intrinsic
def _bitcast_int32_float32(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@overload(float32_from_bits)
def _float32_from_bits_jit(bits):
    return lambda bits: _bitcast_int32_float32(bits)


@njit(cache=True, error_model="numpy")
def expf(x):
    """exp(x) for a float32 x; NaN stays NaN, overflow gives inf, underflow gives 0.

    x = n ln2 + r with n = round(x / ln2), |r| <= ln2 / 2; e^x = 2^n e^r, e^r by a
    degree-7 polynomial, and 2^n as two factors 2^(n//2) 2^(n - n//2) written straight
    into exponent bits (two factors, so that n from -150 to 128 is representable:
    overflow and the subnormal results below e^-87.3 come out right).
    """
    if x < _X_MIN:
        x = _X_MIN
    n = np.floor(x * _LOG2E + np.float32(0.5))
    if not n >= np.float32(-150.0):       # also NaN -> -150: the int conversion below stays defined
        n = np.float32(-150.0)
    if n > np.float32(128.0):
        n = np.float32(128.0)
    r = x - n * _LN2_HI - n * _LN2_LO
    p = ((((_EXP_P[0] * r + _EXP_P[1]) * r + _EXP_P[2]) * r + _EXP_P[3]) * r + _EXP_P[4]) * r + _EXP_P[5]
    p = p * r * r + r + _ONE32            # NaN x gives NaN r and NaN p
    k = np.int32(n)
    k1 = k >> np.int32(1)
    e = (p * float32_from_bits((k1 + np.int32(127)) << np.int32(23))) \
        * float32_from_bits((k - k1 + np.int32(127)) << np.int32(23))
    return _INF32 if x > _X_MAX else e


@njit(cache=True, error_model="numpy")
def tanhf(x):
    """tanh(x) for a float32 x: an odd polynomial near 0, 1 - 2 / (e^{2|x|} + 1) beyond."""
    a = abs(x)
    z = x * x
    small = ((((_TANH_P[0] * z + _TANH_P[1]) * z + _TANH_P[2]) * z + _TANH_P[3]) * z + _TANH_P[4]) * z * x + x
    big = _ONE32 - _TWO32 / (expf(_TWO32 * a) + _ONE32)       # e^{2|x|} = inf gives exactly 1
    big = big if x >= 0 else -big
    return small if a < np.float32(0.625) else big


@njit(cache=True, error_model="numpy")
def sigmoidf(x):
    """1 / (1 + e^{-x}) for a float32 x."""
    return _ONE32 / (_ONE32 + expf(-x))


# -- dtype-dispatched scalars ------------------------------------------------------------

def exp_(x):
    """e^x: ``expf`` for a float32, libm's ``exp`` otherwise."""
    return expf(x) if isinstance(x, np.float32) else np.exp(x)


def tanh_(x):
    """tanh(x): ``tanhf`` for a float32, libm's ``tanh`` otherwise."""
    return tanhf(x) if isinstance(x, np.float32) else np.tanh(x)


def sigmoid_(x):
    """1 / (1 + e^{-x}): ``sigmoidf`` for a float32, libm's ``exp`` otherwise."""
    if isinstance(x, np.float32):
        return sigmoidf(x)
    return 1.0 / (1.0 + np.exp(-x))


def _is_float32(x):
    return isinstance(x, types.Float) and x.bitwidth == 32


@overload(exp_)
def _exp_jit(x):
    if _is_float32(x):
        return lambda x: expf(x)
    return lambda x: np.exp(x)


@overload(tanh_)
def _tanh_jit(x):
    if _is_float32(x):
        return lambda x: tanhf(x)
    return lambda x: np.tanh(x)


@overload(sigmoid_)
def _sigmoid_jit(x):
    if _is_float32(x):
        return lambda x: sigmoidf(x)
    return lambda x: 1.0 / (1.0 + np.exp(-x))
