"""The one comparison helper: explicit tolerances and a message that shows the worst element."""

from __future__ import annotations

import numpy as np


def max_errors(actual, expected) -> tuple[float, float]:
    """(max absolute error, max relative error) of ``actual`` against ``expected``.

    The relative error of an element is |actual - expected| / max(|expected|, tiny),
    so exact zeros in ``expected`` count with their absolute error scaled huge,
    which is what a check of an exact zero (a masked weight) wants to see.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    diff = np.abs(actual - expected)
    if diff.size == 0:
        return 0.0, 0.0
    rel = diff / np.maximum(np.abs(expected), np.finfo(np.float64).tiny)
    return float(diff.max()), float(rel.max())


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
