"""``attnspec vectors export DIR`` and ``attnspec vectors check DIR [--adapter TARGET]``.

The work is done by ``attnspec.spec.vectors``; this module parses the
arguments, shows progress on stderr and prints the report.
"""

from __future__ import annotations

import json
import sys
import time


def add_parser(sub) -> None:
    """Register the ``vectors`` command on the ``attnspec`` subparsers ``sub``."""
    p = sub.add_parser(
        "vectors",
        help="export golden vectors for other languages, or check an implementation against them",
        description="Golden vectors: fixed cases with the oracle's loss, log-probabilities, attention and "
        "every gradient as 25-digit decimal strings (docs/vectors.md).",
    )
    vsub = p.add_subparsers(dest="vectors_command", metavar="ACTION", required=True)
    e = vsub.add_parser("export", help="write the versioned set of cases to DIR",
                        description="Write manifest.json and cases/*.json, cases/*.npz to DIR "
                        "(created if missing; must be empty or hold an earlier export).")
    e.add_argument("dir", metavar="DIR")
    e.set_defaults(run=vectors_main)
    c = vsub.add_parser("check", help="run every case of DIR through an implementation",
                        description="Check an implementation against an exported set; exit status 1 "
                        "if any quantity of any case is outside its tolerance.")
    c.add_argument("dir", metavar="DIR")
    c.add_argument("--adapter", metavar="TARGET", default=None,
                   help="'numba' (default: attnspec's own), 'torch' (the bundled PyTorch model), "
                   "'reference' or 'mutant:NAME' (as for attnspec check), "
                   "or 'package.module:name' / 'path/to/file.py:name' naming an Implementation")
    c.add_argument("-v", "--verbose", action="store_true", help="print one row per case and quantity")
    c.add_argument("--json", metavar="FILE", help="also write every row to FILE as JSON")
    c.set_defaults(run=vectors_main)


def _progress(i: int, n: int, case: str, seconds: float, status: str = "") -> None:
    print(f"[{i:>{len(str(n))}}/{n}] {case} {status} ({seconds:.2f} s)".replace("  ", " "),
          file=sys.stderr, flush=True)


def _fmt(x: float) -> str:
    return "-" if x != x else f"{x:.2e}"


def _ratio(row) -> float:
    """The fraction of its tolerance a quantity uses (> 1 is a failure)."""
    if row.status not in ("pass", "fail") or row.max_abs != row.max_abs:
        return float("nan")
    return row.max_abs / row.atol if row.atol > 0 else (0.0 if row.max_abs == 0 else float("inf"))


def _case_status(rs) -> str:
    if any(r.status in ("fail", "error") for r in rs):
        return "fail"
    return "skip" if all(r.status == "skip" for r in rs) else "pass"


def _worst(rs):
    """The row to show for a case: its first failure, else the quantity using most of its tolerance."""
    bad = [r for r in rs if r.status in ("fail", "error")]
    if bad:
        return bad[0]
    ratios = [(_ratio(r), i) for i, r in enumerate(rs) if _ratio(r) == _ratio(r)]
    return rs[max(ratios)[1]] if ratios else rs[0]


def _report(rows, verbose: bool) -> str:
    """One line per case (its first failure or worst quantity), or per quantity with ``verbose``;
    then the message of each failing case's first wrong quantity, and a count."""
    from ..spec.vectors import first_failures

    lines = [f"{'case':26} {'quantity':40} {'max abs':>9} {'max rel':>9} {'atol':>9} {'used':>9}  status"]
    cases: dict[str, list] = {}
    for r in rows:
        cases.setdefault(r.case, []).append(r)
    for case, rs in cases.items():
        for r in (rs if verbose else [_worst(rs)]):
            status = r.status if verbose else _case_status(rs)
            lines.append(f"{case:26} {r.quantity:40} {_fmt(r.max_abs):>9} {_fmt(r.max_rel):>9} "
                         f"{_fmt(r.atol):>9} {_fmt(_ratio(r)):>9}  {status}")
    lines.append("")
    for case, r in first_failures(rows).items():
        lines.append(f"FAIL {case}: first wrong quantity: {r.message}")
    for case, rs in cases.items():
        for r in rs:
            if r.status == "skip":
                lines.append(f"skip {case}: {r.message}")
    counts = [_case_status(rs) for rs in cases.values()]
    lines.append(f"{len(cases)} cases: {counts.count('pass')} passed, {counts.count('fail')} failed, "
                 f"{counts.count('skip')} skipped")
    return "\n".join(lines)


def _jsonable(row) -> dict:
    """A row as a dict valid in strict JSON (NaN and infinity as null and "inf")."""
    fix = lambda v: (None if v != v else "inf" if v == float("inf") else v) if isinstance(v, float) else v  # noqa: E731
    return {k: fix(v) for k, v in row._asdict().items()}


def vectors_main(args) -> int:
    """Run ``attnspec vectors export|check``; exit status 0 (all passed), 1 (a failure) or 2 (bad arguments)."""
    from ..spec import vectors

    try:
        if args.vectors_command == "export":
            t0 = time.perf_counter()
            manifest = vectors.export(args.dir, progress=_progress)
            print(f"wrote {len(manifest['cases'])} cases (format version {manifest['format_version']}) to "
                  f"{args.dir} in {time.perf_counter() - t0:.1f} s")
            return 0
        from ..spec.conformance.report import check_writable
        from ..spec.conformance.targets import resolve

        if args.json is not None:
            check_writable("--json", args.json)                       # before the check, not after it
        impl = resolve(args.adapter)
        rows = vectors.check(args.dir, impl, progress=_progress)
    except (ValueError, TypeError) as exc:
        print(f"attnspec vectors {args.vectors_command}: error: {exc}", file=sys.stderr)
        return 2
    print(f"golden vectors {args.dir} checked against {impl.name}")
    print(_report(rows, args.verbose))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([_jsonable(r) for r in rows], f, indent=1)
    return 1 if vectors.first_failures(rows) else 0
