"""Run the registered properties against one implementation, with Hypothesis driven from code.

``run_property`` runs one ``Property`` (spec.properties.base) under a settings
profile and returns a ``PropertyResult``: how many examples it tried, the
largest errors the checks measured, pass / fail / skip, the time, and for a
failure the message and a snippet that rebuilds the smallest failing example
Hypothesis found. ``run_suite`` does it for every registered property,
printing a progress line per property, and applies the expected-failures
list. ``attnspec check`` (spec.conformance.cli), the pytest entry point
(spec.conformance.test_conformance) and the tests all go through here.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field

from hypothesis import HealthCheck, Phase, Verbosity, example, given, seed as hypothesis_seed, settings
from hypothesis.errors import Unsatisfiable

from ..properties import REGISTRY, Measure, PropertyFailure
from ..protocol import Implementation
from . import render, targets

PROFILES = {"ci": 50, "thorough": 500}
"""Examples per property of each profile: the numbers of the test suite's profiles (tests/conftest.py,
``ATTNSPEC_PROFILE``), so ``attnspec check`` and ``pytest`` mean the same by ``ci``. ``ci`` is
derandomized (the same examples every run, so a CI verdict is reproducible); ``thorough`` tries 10x
as many with a fresh random seed each run, which the report prints so the run can be repeated."""

PASS, FAIL, SKIP, XFAIL, XPASS = "PASS", "FAIL", "SKIP", "XFAIL", "XPASS"


@dataclass
class PropertyResult:
    """What one property did against one implementation.

    Attributes
    ----------
    name, doc : str
        The property and the first line of its docstring (the equation it asserts).
    status : str
        PASS, FAIL, SKIP, or after ``apply_xfail`` XFAIL / XPASS.
    examples : int
        Examples checked before the first failure (all of them for a pass); the
        shrinking that follows a failure is counted in ``shrink_calls``.
    abs_err, rel_err : float
        The largest errors the checks measured over every example run (None when skipped).
    seconds : float
    reason : str
        Why it was skipped, or the expected-failure reason.
    message : str
        The failure message (which quantity, which index or time step).
    snippet : str
        Python source that rebuilds the smallest failing example and reruns the check.
    """

    name: str
    doc: str = ""
    status: str = PASS
    examples: int = 0
    abs_err: float | None = None
    rel_err: float | None = None
    seconds: float = 0.0
    reason: str = ""
    message: str = ""
    snippet: str = ""
    shrink_calls: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Whether this result fails the run (XFAIL, XPASS and SKIP do not)."""
        return self.status == FAIL

    def to_dict(self) -> dict:
        return asdict(self)


def hypothesis_settings(profile: str = "ci", max_examples: int | None = None, *, shrink: bool = True,
                        seed: int | None = None) -> settings:
    """The Hypothesis settings of a profile (``PROFILES``), optionally with another number of examples.

    No deadline (a foreign implementation may be slow, and Numba compiles on
    first call), no example database (a report must not depend on earlier
    runs in the same directory), health checks about speed and size off (they
    judge the strategies, not the implementation), one bug reported per
    property (the smallest), and no ``explain`` phase, so that the last failing
    call is the minimal example Hypothesis replays.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile: expected one of {sorted(PROFILES)}, got {profile!r}")
    if max_examples is None:
        max_examples = PROFILES[profile]
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples: expected an int >= 1, got {max_examples!r}")
    phases = [Phase.explicit, Phase.generate, Phase.target] + ([Phase.shrink] if shrink else [])
    return settings(
        max_examples=max_examples, deadline=None, database=None, phases=phases,
        derandomize=(profile == "ci" and seed is None), report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet, print_blob=False,
    )


def _fits(impl: Implementation, ex) -> bool:
    """Whether a pinned example uses only scores and dtypes ``impl`` supports.

    Examples are cases (``AttentionCase``, ``ModelCase``) or tuples whose first item is one.
    """
    if isinstance(ex, tuple) and not hasattr(ex, "_fields") and ex:
        return _fits(impl, ex[0])
    config = getattr(ex, "config", None)
    score = getattr(config, "score", getattr(ex, "score", None))
    dtype = getattr(config, "dtype", None) or getattr(getattr(ex, "query", None), "dtype", None)
    if isinstance(score, str) and score not in impl.scores:
        return False
    return dtype is None or str(dtype) in impl.dtypes


def skip_reason(prop, impl: Implementation) -> str:
    """Why ``prop`` cannot run on ``impl`` ("" when it can)."""
    missing = [m for m in prop.needs if not impl.supports(m)]
    if missing:
        return f"needs {', '.join(missing)}, which {impl.name} does not implement"
    return ""


def _message(exc: BaseException) -> str:
    if isinstance(exc, PropertyFailure):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def run_property(prop, impl: Implementation, hsettings: settings, impl_source: str, *,
                 seed: int | None = None) -> PropertyResult:
    """Run one property on ``impl`` under ``hsettings``; never raises for a failing implementation.

    Parameters
    ----------
    prop : Property
    impl : Implementation
    hsettings : hypothesis.settings
        From ``hypothesis_settings``.
    impl_source : str
        Statements binding ``impl`` in the failure snippet (``targets.impl_code``).
    seed : int, optional
        Hypothesis seed (for a random profile, so a run can be repeated).
    """
    result = PropertyResult(prop.name, prop.doc)
    start = time.perf_counter()
    reason = skip_reason(prop, impl)
    strategy = None if reason else prop.strategy(impl)
    no_fit = (f"no example it generates fits {impl.name} "
              f"(scores {', '.join(impl.scores)}; dtypes {', '.join(impl.dtypes)})")
    if strategy is not None and strategy.is_empty:
        reason = no_fit
    if reason:
        result.status, result.reason = SKIP, reason
        return result

    state = {"measure": None, "failure": None}

    def check(ex):
        if state["failure"] is None:
            result.examples += 1
        else:
            result.shrink_calls += 1
        try:
            measure = prop.check(impl, ex)
        except Exception as exc:
            if isinstance(exc, PropertyFailure):
                measure = exc.measure
                state["measure"] = measure if state["measure"] is None else state["measure"] | measure
            # The last failing call is Hypothesis's replay of the minimal example.
            state["failure"] = (ex, exc)
            raise
        if isinstance(measure, Measure):
            state["measure"] = measure if state["measure"] is None else state["measure"] | measure

    for ex in prop.examples:
        if _fits(impl, ex):
            check = example(ex)(check)
    test = hsettings(given(strategy)(check))
    if seed is not None:
        test = hypothesis_seed(seed)(test)
    try:
        test()
    except Unsatisfiable:
        # A composite strategy that filters everything out is not ``is_empty`` until drawn from:
        # a float32-only or concat-only implementation would otherwise FAIL a property it cannot run.
        # (Only the pinned examples that fit ran, and they passed: Hypothesis raises before a failure.)
        if result.examples == 0:
            result.status, result.reason = SKIP, no_fit
            return result
    except Exception as exc:  # noqa: BLE001 - any error of the implementation is a failure to report
        result.status = FAIL
        if state["failure"] is not None:
            ex, failure = state["failure"]
            result.message = _message(failure)
            try:
                result.snippet = render.snippet(prop, ex, impl_source, result.message)
            except Exception as render_exc:  # noqa: BLE001 - a report without a snippet beats no report
                result.snippet = f"# could not render the example: {render_exc!r}\n# {ex!r}"
        else:  # Hypothesis itself gave up (unsatisfiable strategy, flaky test, ...)
            result.message = _message(exc)
    measure = state["measure"]
    if measure is not None:
        result.abs_err, result.rel_err = measure.abs_err, measure.rel_err
    result.seconds = time.perf_counter() - start
    return result


def read_xfail(path) -> dict[str, str]:
    """Parse an expected-failures file: ``property_id  # reason`` per line.

    Blank lines and lines that start with ``#`` are comments. Every entry needs
    a reason, so that a year later someone can tell whether it still holds.

    Raises
    ------
    ValueError
        Naming the file and line of an entry without a reason or a repeated id,
        or the file when it cannot be read as UTF-8 text (a byte-order mark is fine).
    """
    entries: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"xfail: cannot read {str(path)!r} as UTF-8 text ({exc})") from None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, _, reason = text.partition("#")
        name, reason = name.strip(), reason.strip()
        if not reason or " " in name:
            raise ValueError(f"xfail: {path}, line {number}: expected 'property_id  # reason', got {text!r}")
        if name in entries:
            raise ValueError(f"xfail: {path}, line {number}: {name!r} is listed twice")
        entries[name] = reason
    return entries


def apply_xfail(result: PropertyResult, xfail: dict[str, str]) -> PropertyResult:
    """Turn a listed failure into XFAIL and a listed pass into XPASS (neither fails the run).

    XPASS does not fail the run: a property-based run may simply not have met
    the failing example this time (a random profile, fewer examples), so a
    strict XPASS would make runs flaky. It is reported so the entry can be
    removed once the implementation is fixed.
    """
    if result.name in xfail and result.status in (FAIL, PASS):
        result.reason = xfail[result.name]
        result.status = XFAIL if result.status == FAIL else XPASS
    return result


def load_properties() -> dict:
    """``REGISTRY`` after importing every module of ``attnspec.spec.properties`` (each registers its own)."""
    import importlib
    import pkgutil

    from .. import properties

    for info in pkgutil.iter_modules(properties.__path__):
        importlib.import_module(f"{properties.__name__}.{info.name}")
    return REGISTRY


def select(only=None) -> list:
    """The registered properties to run, in registration order; ``only`` names a subset."""
    load_properties()
    if not only:
        return list(REGISTRY.values())
    unknown = [n for n in only if n not in REGISTRY]
    if unknown:
        raise ValueError(f"only: no registered property {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(REGISTRY)}")
    return [REGISTRY[n] for n in only]


def progress_line(i: int, n: int, r: PropertyResult) -> str:
    width = len(str(n))
    errs = "" if r.abs_err is None else f"  abs {r.abs_err:.2g} rel {r.rel_err:.2g}"
    return f"[{i:>{width}}/{n}] {r.status:<5} {r.name}  {r.examples} examples{errs}  {r.seconds:.1f}s"


def run_suite(impl: Implementation, *, profile: str = "ci", max_examples: int | None = None,
              only=None, xfail: dict[str, str] | None = None, impl_source: str | None = None,
              shrink: bool = True, fail_fast: bool = False, seed: int | None = None,
              progress=sys.stderr) -> list[PropertyResult]:
    """Run every registered property that applies to ``impl``; one result per property.

    Parameters
    ----------
    impl : Implementation
    profile, max_examples, seed : see ``hypothesis_settings``
        With profile ``thorough`` and no ``seed``, a random seed is drawn and
        recorded in every result's ``extra["seed"]``.
    only : list of str, optional
        Property names to run (default all).
    xfail : dict name -> reason, optional
        Expected failures (``read_xfail``).
    impl_source : str, optional
        Statements binding ``impl`` in failure snippets (default: the built-in, ``targets.impl_code(None)``).
    shrink : bool
        Shrink failing examples (off saves time when only the verdict matters).
    fail_fast : bool
        Stop after the first property that fails (the rest are not reported).
    progress : file or None
        Where to print a line per finished property.
    """
    if not isinstance(impl, Implementation):
        raise TypeError(f"impl: expected an attnspec.spec.protocol.Implementation, got {type(impl).__name__}")
    if seed is None and profile == "thorough":
        seed = int.from_bytes(os.urandom(4), "little")
    hsettings = hypothesis_settings(profile, max_examples, shrink=shrink, seed=seed)
    impl_source = impl_source or targets.impl_code(None)
    props = select(only)
    results = []
    for i, prop in enumerate(props, 1):
        r = apply_xfail(run_property(prop, impl, hsettings, impl_source, seed=seed), xfail or {})
        if seed is not None:
            r.extra["seed"] = seed
        results.append(r)
        if progress is not None:
            print(progress_line(i, len(props), r), file=progress, flush=True)
        if fail_fast and r.failed:
            break
    return results
