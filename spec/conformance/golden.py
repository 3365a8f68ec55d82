"""The golden vectors inside ``attnspec check``: export them once (cached), then check the target.

``spec.vectors`` writes the versioned cases (``export(dir)``) and checks an
implementation against them (``check(dir, impl)``); this module only finds or
makes the directory and turns the outcome into a ``report.VectorResult``.
When ``spec.vectors`` is not installed the vectors are reported as skipped,
never as passed.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import pathlib
import shutil
import tempfile
import time

from .report import VectorResult
from .runner import FAIL, PASS, SKIP

ID_PREFIX = "vectors/"
"""Golden-vector cases appear in reports (and may appear in xfail files) as ``vectors/<case>``."""


def cache_dir(version: str) -> pathlib.Path:
    """Where exported vectors are kept between runs: ``$ATTNSPEC_CACHE`` or ``$XDG_CACHE_HOME/attnspec``."""
    root = os.environ.get("ATTNSPEC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "attnspec")
    return pathlib.Path(root) / f"vectors-{version}"


def _export(vectors, directory: pathlib.Path) -> None:
    """Export into ``directory`` through a sibling temporary directory, so a half-written cache never exists."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent))
    try:
        vectors.export(tmp)
        try:
            tmp.rename(directory)
        except OSError:  # another run finished first: use its (identical, deterministic) export
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _case_rows(rows) -> list[dict]:
    """One row per case from ``vectors.check``'s rows (one per case and quantity).

    A case fails when any quantity fails or raised; its message is the first
    failing quantity's, which ``vectors.check`` orders by data flow (forward
    before gradients, gradients in backpropagation order): the one nearest the bug.
    """
    cases: dict[str, dict] = {}
    for r in rows:
        c = cases.setdefault(r.case, {"case": r.case, "status": SKIP, "quantities": 0,
                                      "max_abs": 0.0, "max_rel": 0.0, "message": ""})
        if r.status in ("fail", "error"):
            if c["status"] != FAIL:
                c["status"], c["message"] = FAIL, r.message
        elif r.status == "pass" and c["status"] == SKIP:
            c["status"] = PASS
        elif r.status == "skip" and not c["message"] and c["status"] == SKIP:
            c["message"] = r.message
        if r.status != "skip":
            c["quantities"] += 1
            for key, value in (("max_abs", r.max_abs), ("max_rel", r.max_rel)):
                if not math.isnan(value):
                    c[key] = max(c[key], float(value))
    return list(cases.values())


def run(impl, directory=None, *, progress=None) -> VectorResult:
    """Check ``impl`` against the golden vectors in ``directory`` (default: the cache, exported on first use).

    An empty or missing ``directory`` is exported first. Returns a VectorResult
    with status SKIP (and a note) when spec.vectors is unavailable.
    """
    import importlib
    import importlib.util

    name = __name__.rsplit(".", 2)[0] + ".vectors"  # attnspec.spec.vectors
    if importlib.util.find_spec(name) is None:
        return VectorResult(SKIP, note=f"({name} is not installed)")
    vectors = importlib.import_module(name)  # a broken module is an error, not a skip
    # The cache is keyed by the very code that defines and writes the cases, so
    # a changed case list or format is exported anew, never read stale.
    cases = importlib.import_module(name.rsplit(".", 1)[0] + ".vector_cases")
    digest = hashlib.sha256((inspect.getsource(vectors) + inspect.getsource(cases)).encode()).hexdigest()[:12]
    version = f"{getattr(vectors, 'FORMAT_VERSION', '1')}-{digest}"
    directory = cache_dir(version) if directory is None else pathlib.Path(directory)
    start = time.perf_counter()
    try:
        if not directory.is_dir() or not any(directory.iterdir()):
            if progress is not None:
                print(f"exporting the golden vectors to {directory} (once) ...", file=progress, flush=True)
            _export(vectors, directory)
    except OSError as exc:  # a file in the way, a read-only cache (found by fuzzing: a traceback)
        return VectorResult(FAIL, str(directory), note=f"cannot export the golden vectors to {directory}: {exc}")
    try:
        rows = _case_rows(vectors.check(directory, impl))
    except (OSError, ValueError) as exc:  # an unreadable or stale export: say which directory
        return VectorResult(FAIL, str(directory), note=f"cannot check {directory}: {exc}")
    failed = sum(r["status"] == FAIL for r in rows)
    passed = sum(r["status"] == PASS for r in rows)
    status = FAIL if failed else (PASS if passed else SKIP)
    result = VectorResult(status, str(directory), passed + failed, failed,
                          note=f"({sum(r['status'] == SKIP for r in rows)} skipped; "
                               f"{time.perf_counter() - start:.1f}s; {directory})", details=rows)
    if progress is not None:
        print(f"golden vectors: {result.status}  {passed}/{passed + failed} cases", file=progress, flush=True)
    return result
