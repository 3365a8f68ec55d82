"""Hypothesis settings profiles, the property runners, and the table of examples run per property.

Profiles (chosen with the environment variable ATTNSPEC_PROFILE, default ``ci``):

ci        50 examples per property: the whole suite stays under 10 minutes on 2 cores,
          Numba compilation included.
thorough  10x the examples (500 per property), for a release or after a change to a kernel.

Both keep ``deadline=None``: the first example of a test can include seconds of
Numba compilation (or loading its cache), which says nothing about the code.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings

PROFILE_ENV = "ATTNSPEC_PROFILE"
CI_EXAMPLES = 50

_COMMON = dict(
    deadline=None,
    # Long sources (S up to 512) and the oracle make some examples slow by design, and the
    # strategies that build limits (dominant scores) filter a few draws.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.register_profile("ci", max_examples=CI_EXAMPLES, **_COMMON)
settings.register_profile("thorough", max_examples=10 * CI_EXAMPLES, **_COMMON)

PROFILE = os.environ.get(PROFILE_ENV, "ci")
if PROFILE not in ("ci", "thorough"):
    raise pytest.UsageError(f"{PROFILE_ENV}: expected 'ci' or 'thorough', got {PROFILE!r}")
settings.load_profile(PROFILE)

EXAMPLES_RUN: Counter = Counter()
"""(property name, implementation name) -> examples checked in this session (pinned ones included)."""


def _property_test(prop, impl, key: str):
    """The Hypothesis test of ``prop`` on ``impl``: @given(prop.strategy(impl)) plus every pinned @example."""
    def check(ex):
        EXAMPLES_RUN[key] += 1
        prop.check(impl, ex)

    # Every property shares this source: a digest per property and implementation keeps their
    # entries in the example database apart.
    check._hypothesis_internal_add_digest = key.encode()
    test = given(prop.strategy(impl))(check)
    for pinned in reversed(prop.examples):
        test = example(pinned)(test)
    return test


def _skip_unless_applicable(prop, impl) -> None:
    if not prop.applies_to(impl):
        pytest.skip(f"{impl.name} does not implement {[m for m in prop.needs if not impl.supports(m)]}")
    if prop.strategy(impl).is_empty:
        pytest.skip(f"{impl.name} supports none of the scores or dtypes {prop.name} draws from")


@pytest.fixture
def run_property():
    """``run(prop, impl, scale=1.0)``: check ``prop`` on ``impl`` for the profile's examples times ``scale``.

    Skips (never passes) when ``impl`` lacks a method the property needs.
    """
    def run(prop, impl, *, scale: float = 1.0):
        _skip_unless_applicable(prop, impl)
        current = settings()
        n = max(1, round(current.max_examples * scale))
        key = f"{prop.name} | {impl.name}"
        settings(current, max_examples=n)(_property_test(prop, impl, key))()
    return run


@pytest.fixture
def find_failure():
    """``find(prop, impl, max_examples=100) -> PropertyFailure``: the failure ``prop`` finds on a wrong ``impl``.

    Derandomized (the same examples every run, so the test is not flaky), no
    shrinking (only that it fails matters), no example database. Fails the
    calling test when the property holds on every example tried.
    """
    from attnspec.spec.properties import PropertyFailure

    def find(prop, impl, *, max_examples: int = 100):
        _skip_unless_applicable(prop, impl)
        key = f"{prop.name} | {impl.name}"
        test = settings(settings(), max_examples=max_examples, derandomize=True, database=None,
                        phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False,
                        print_blob=False)(_property_test(prop, impl, key))
        try:
            test()
        except PropertyFailure as failure:
            return failure
        pytest.fail(f"{prop.name} holds on the wrong implementation {impl.name!r} "
                    f"for {max_examples} examples: it cannot tell it from a right one")
    return find


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """A table of how many examples each property checked on each implementation."""
    if not EXAMPLES_RUN:
        return
    tr = terminalreporter
    tr.section(f"property examples run (profile {PROFILE!r}, {PROFILE_ENV} to change)")
    width = max(len(k) for k in EXAMPLES_RUN)
    for key in sorted(EXAMPLES_RUN):
        tr.write_line(f"{key:<{width}}  {EXAMPLES_RUN[key]:>6}")
