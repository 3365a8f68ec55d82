"""The one comparison helper: explicit tolerances and a message that shows the worst element."""

from __future__ import annotations

import numpy as np


def max_errors(actual, expected) -> tuple[float, float]:
    """(max |actual - expected|, the same divided by max |expected|).

    The relative error is normwise, on the scale of the whole array, as the
    default tolerance of ``assert_close`` judges it: an elementwise ratio
    would report astronomic numbers wherever ``expected`` is (nearly) zero,
    such as a masked weight or a vanishing gradient entry. An all-zero
    ``expected`` gives a relative error of 0 when matched exactly, else inf.

    >>> max_errors([1.0, 2.5, 1e-20], [1.0, 2.0, 0.0])
    (0.5, 0.25)
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.size == 0:
        return 0.0, 0.0
    abs_err = float(np.abs(actual - expected).max())
    scale = float(np.abs(expected).max())
    if scale == 0.0:
        return abs_err, 0.0 if abs_err == 0.0 else float("inf")
    return abs_err, abs_err / scale


def assert_close(actual, expected, *, rtol: float, atol: float | None = None, name: str = "value") -> None:
    """Assert |actual - expected| <= atol + rtol * |expected| elementwise.

    Parameters
    ----------
    actual, expected : array_like, same shape
    rtol : float
        Relative tolerance; callers justify it (dtype, conditioning, number of operations).
    atol : float, optional
        Absolute tolerance; by default ``rtol * max|expected|``, so that entries
        that are tiny next to the largest one are judged on the array's scale
        (a gradient's small entries carry the rounding of its large ones).
    name : str
        What is compared, for the message.

    Raises
    ------
    AssertionError
        Naming the worst element, its index, both values and the tolerances.

    Examples
    --------
    >>> assert_close([1.0, 2.0], [1.0, 2.0 + 1e-14], rtol=1e-12)
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {actual.shape} != expected {expected.shape}")
    if atol is None:
        atol = rtol * float(np.max(np.abs(expected), initial=0.0))
    if not np.all(np.isfinite(actual)):
        i = np.unravel_index(np.argmax(~np.isfinite(actual)), actual.shape)
        raise AssertionError(f"{name}: non-finite value {float(actual[i])!r} at index {tuple(int(j) for j in i)}")
    excess = np.abs(actual - expected) - (atol + rtol * np.abs(expected))
    if excess.size and excess.max() > 0:
        i = np.unravel_index(np.argmax(excess), excess.shape)
        raise AssertionError(
            f"{name}: worst element at index {tuple(int(j) for j in i)}: "
            f"{float(actual[i])!r} vs expected {float(expected[i])!r} "
            f"(|diff| {abs(actual[i] - expected[i]):.3g}, rtol {rtol:g}, atol {atol:.3g})"
        )
