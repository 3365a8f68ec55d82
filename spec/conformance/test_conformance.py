"""The property suite as pytest tests, against the implementation named by ``ATTNSPEC_IMPL``.

    ATTNSPEC_IMPL=mypackage.adapter:Mine pytest --pyargs attnspec.spec.conformance

One test per registered property, ``test_property[<name>]``, with the same
runner as ``attnspec check``: a failure prints the message and the snippet
that replays the smallest failing example. Environment variables:

ATTNSPEC_IMPL          the target, as ``attnspec check`` takes it (default: the built-in Numba model)
ATTNSPEC_XFAIL         an expected-failures file: listed properties are pytest xfail (non-strict)
ATTNSPEC_PROFILE       ``ci`` (default) or ``thorough``
ATTNSPEC_MAX_EXAMPLES  examples per property, overriding the profile
"""

from __future__ import annotations

import os

import pytest

from attnspec.spec.conformance import runner, targets

TARGET = os.environ.get(targets.ENV_IMPL) or None
PROFILE = os.environ.get("ATTNSPEC_PROFILE", "ci")
MAX_EXAMPLES = os.environ.get("ATTNSPEC_MAX_EXAMPLES")


def _setup():
    """The implementation, settings and expected failures, or a usage error that names the variable."""
    try:
        impl = targets.resolve(TARGET)
    except ValueError as exc:
        raise pytest.UsageError(f"{targets.ENV_IMPL}={TARGET!r}: {exc}") from None
    try:
        hsettings = runner.hypothesis_settings(PROFILE, int(MAX_EXAMPLES) if MAX_EXAMPLES else None)
    except ValueError as exc:
        raise pytest.UsageError(f"ATTNSPEC_PROFILE / ATTNSPEC_MAX_EXAMPLES: {exc}") from None
    xfail_file = os.environ.get(targets.ENV_XFAIL)
    try:
        xfail = runner.read_xfail(xfail_file) if xfail_file else {}
    except (ValueError, OSError) as exc:
        raise pytest.UsageError(f"{targets.ENV_XFAIL}: {exc}") from None
    return impl, hsettings, xfail


IMPL, SETTINGS, XFAIL = _setup()


@pytest.mark.parametrize("name", list(runner.load_properties()))
def test_property(name, request):
    """Run the registered property ``name`` on the target; skip what it cannot run."""
    prop = runner.load_properties()[name]
    if name in XFAIL:
        # Non-strict, as in ``attnspec check``: a pass is reported as XPASS and does not fail the run.
        request.applymarker(pytest.mark.xfail(reason=XFAIL[name], strict=False))
    result = runner.run_property(prop, IMPL, SETTINGS, targets.impl_code(TARGET))
    if result.status == runner.SKIP:
        pytest.skip(result.reason)
    if result.status == runner.FAIL:
        pytest.fail(f"{name} on {IMPL.name}, after {result.examples} examples:\n{result.message}\n\n"
                    f"smallest failing example:\n\n{result.snippet}", pytrace=False)
