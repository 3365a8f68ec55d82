"""What a property is: a named check of an Implementation on one generated example.

A property is a plain function ``check(impl, example) -> Measure`` whose
docstring states the equation it asserts; it raises ``PropertyFailure``
(an AssertionError) with the measured errors when the implementation breaks
it. ``Property`` pairs it with the Hypothesis strategy that generates its
examples, so the same record drives the pytest suite (tests/), the
``attnspec check`` runner and anyone's own test file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from hypothesis import strategies as st

from ..compare import max_errors
from ..protocol import Implementation


@dataclass(frozen=True)
class Measure:
    """The largest errors a check saw (0.0 for exact or purely logical checks)."""

    abs_err: float = 0.0
    rel_err: float = 0.0

    def __or__(self, other: "Measure") -> "Measure":
        return Measure(max(self.abs_err, other.abs_err), max(self.rel_err, other.rel_err))


class PropertyFailure(AssertionError):
    """A property does not hold; carries the measured errors for reports."""

    def __init__(self, message: str, measure: Measure = Measure()):
        super().__init__(message)
        self.measure = measure


def require_close(actual, expected, *, rtol: float, atol: float | None = None, name: str) -> Measure:
    """Measure, and fail unless |actual - expected| <= atol + rtol |expected| elementwise.

    ``atol`` defaults to ``rtol * max|expected|`` (see spec.compare.assert_close).
    The failure message names the worst element, its index and both values.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise PropertyFailure(f"{name}: shape {actual.shape} != expected {expected.shape}")
    if not np.all(np.isfinite(actual)):
        i = np.unravel_index(np.argmax(~np.isfinite(actual)), actual.shape)
        raise PropertyFailure(f"{name}: non-finite value {float(actual[i])!r} at index {tuple(map(int, i))}",
                              Measure(float("inf"), float("inf")))
    measure = Measure(*max_errors(actual, expected))
    if atol is None:
        atol = rtol * float(np.max(np.abs(expected), initial=0.0))
    excess = np.abs(actual - expected) - (atol + rtol * np.abs(expected))
    if excess.size and excess.max() > 0:
        i = np.unravel_index(np.argmax(excess), excess.shape)
        raise PropertyFailure(
            f"{name}: worst element at index {tuple(int(j) for j in i)}: {float(actual[i])!r} vs expected "
            f"{float(expected[i])!r} (|diff| {abs(actual[i] - expected[i]):.3g}, rtol {rtol:g}, atol {atol:.3g})",
            measure,
        )
    return measure


def require(condition: bool, message: str, measure: Measure = Measure()) -> Measure:
    """Fail with ``message`` unless ``condition``."""
    if not condition:
        raise PropertyFailure(message, measure)
    return measure


@dataclass(frozen=True)
class Property:
    """A named property: how to generate its examples and how to check one.

    Attributes
    ----------
    name : str
        What it asserts, as an identifier (``weights_sum_to_one``).
    check : callable (impl, example) -> Measure
        Raises PropertyFailure when ``impl`` breaks the property.
    strategy : callable (impl) -> SearchStrategy
        Examples suited to ``impl`` (its scores and dtypes only).
    needs : tuple of str
        Protocol methods the check calls; the property is skipped for an
        implementation that lacks one.
    """

    name: str
    check: Callable[[Implementation, object], Measure]
    strategy: Callable[[Implementation], st.SearchStrategy]
    needs: tuple[str, ...] = ("attention",)
    examples: tuple = field(default=())  # pinned examples (MODEL.md's worked example, past bugs)

    @property
    def doc(self) -> str:
        return (self.check.__doc__ or "").strip().splitlines()[0] if self.check.__doc__ else ""

    def applies_to(self, impl: Implementation) -> bool:
        return all(impl.supports(m) for m in self.needs)


REGISTRY: dict[str, Property] = {}


def register(prop: Property) -> Property:
    """Add ``prop`` to the registry that ``attnspec check`` and the tests iterate over."""
    if prop.name in REGISTRY:
        raise ValueError(f"name: property {prop.name!r} is registered twice")
    REGISTRY[prop.name] = prop
    return prop
