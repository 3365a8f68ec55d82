"""The report of a check run: a text table for people, JSON for machines, with the same content.

One row per property (name, examples tried, max abs and rel error,
PASS / FAIL / SKIP / XFAIL / XPASS), the golden-vector results when they were
run, then the details a user acts on: each failure's message and the snippet
that replays its smallest failing example, and each skip's reason.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

from .runner import FAIL, PASS, SKIP, XFAIL, XPASS, PropertyResult

FORMAT_VERSION = 1
"""Version of the JSON report's layout (bumped when a field changes meaning or goes away)."""

MAX_VECTOR_LINES = 8  # failing golden-vector cases listed in the text report; the JSON has them all


@dataclass
class VectorResult:
    """What the golden vectors did: ``status`` PASS / FAIL / SKIP, counts, and per-case details."""

    status: str
    directory: str = ""
    cases: int = 0
    failed: int = 0
    note: str = ""
    details: list = field(default_factory=list)

    @property
    def is_failure(self) -> bool:
        return self.status == FAIL


@dataclass
class Report:
    """Everything ``attnspec check`` found about one implementation."""

    target: str
    implementation: str
    profile: str
    max_examples: int
    properties: list[PropertyResult]
    vectors: VectorResult | None = None
    seed: int | None = None
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in (PASS, FAIL, SKIP, XFAIL, XPASS)}
        for r in self.properties:
            out[r.status] += 1
        return out

    @property
    def nothing_checked(self) -> bool:
        """Every property skipped and no golden vector passed: an adapter whose methods are all
        misspelled must not read as OK (found by fuzzing)."""
        return (all(r.status == SKIP for r in self.properties)
                and not (self.vectors is not None and self.vectors.status == PASS))

    @property
    def ok(self) -> bool:
        """True when nothing failed (no property FAIL, golden vectors not FAIL) and something was checked."""
        return (not any(r.failed for r in self.properties) and not (self.vectors and self.vectors.is_failure)
                and not self.nothing_checked)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def text(report: Report) -> str:
    """The report as a plain-text table followed by failure details and skip reasons."""
    rows = [("property", "examples", "max abs err", "max rel err", "result")]
    for r in report.properties:
        rows.append((r.name, str(r.examples) if r.status != SKIP else "-", _num(r.abs_err), _num(r.rel_err),
                     r.status))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    align = ("<", ">", ">", ">", "<")
    lines = [f"attnspec check: {report.implementation} (target {report.target}), profile {report.profile}, "
             f"up to {report.max_examples} examples per property"
             + (f", seed {report.seed}" if report.seed is not None else ""), ""]
    for i, row in enumerate(rows):
        lines.append("  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, align, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    v = report.vectors
    if v is not None:
        what = f"{v.cases - v.failed}/{v.cases} cases agree" if v.cases else ""
        lines += ["", f"golden vectors: {v.status}  {what}  {v.note}".rstrip()]
        failing = [d for d in v.details if d.get("status") == FAIL]
        for d in failing[:MAX_VECTOR_LINES]:
            lines.append(f"  FAIL {d['case']}: {d['message']}")
        if len(failing) > MAX_VECTOR_LINES:
            lines.append(f"  ... and {len(failing) - MAX_VECTOR_LINES} more failing cases (all in --json)")
    c = report.counts()
    words = {PASS: "passed", FAIL: "failed", SKIP: "skipped", XFAIL: "xfailed", XPASS: "xpassed"}
    lines += ["", ", ".join(f"{n} {words[s]}" for s, n in c.items() if n or s in (PASS, FAIL))
              + (f"; golden vectors {v.status.lower()}" if v else "")
              + ("  =>  OK" if report.ok else "  =>  NOTHING CHECKED" if report.nothing_checked else "  =>  FAILED")]
    for r in report.properties:
        if r.status in (FAIL, XFAIL):
            head = f"{r.status} {r.name}" + (f"  (expected: {r.reason})" if r.reason else "")
            lines += ["", "=" * len(head), head, "=" * len(head)]
            if r.doc:
                lines.append(f"asserts: {r.doc}")
            lines.append(f"after {r.examples} examples ({r.shrink_calls} more while shrinking): {r.message}")
            if r.snippet:
                lines += ["smallest failing example, as a test you can paste:", "", r.snippet.rstrip()]
    notes = [f"SKIP {r.name}: {r.reason}" for r in report.properties if r.status == SKIP]
    notes += [f"XPASS {r.name}: listed as expected to fail ({r.reason}) but passed; "
              f"remove it from the xfail file if the fix is real" for r in report.properties if r.status == XPASS]
    if notes or report.notes:
        lines += [""] + notes + report.notes
    return "\n".join(lines) + "\n"


def _finite(x):
    """JSON has no infinity or NaN: write them as the strings "inf", "-inf", "nan"."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def to_json(report: Report) -> dict:
    """The report as JSON-ready data (``format_version``, ``ok``, ``summary``, ``properties``, ``vectors``)."""
    return _finite({
        "format_version": FORMAT_VERSION,
        "target": report.target,
        "implementation": report.implementation,
        "profile": report.profile,
        "max_examples": report.max_examples,
        "seed": report.seed,
        "ok": report.ok,
        "summary": report.counts(),
        "properties": [r.to_dict() for r in report.properties],
        "vectors": None if report.vectors is None else {
            "status": report.vectors.status, "directory": report.vectors.directory,
            "cases": report.vectors.cases, "failed": report.vectors.failed,
            "note": report.vectors.note, "details": report.vectors.details,
        },
        "notes": report.notes,
    })


def check_writable(name: str, path) -> None:
    """Raise ValueError naming ``name`` unless a file can be written at ``path`` (its folder exists)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path)) if path else ""
    if not path or os.path.isdir(path) or not os.path.isdir(folder):
        raise ValueError(f"{name}: cannot write a file at {path!r}")


def write_json(report: Report, path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(to_json(report), f, indent=2, allow_nan=False)
        f.write("\n")
