"""Which property catches which mutant: the table of docs/mutants.md, produced by an actual run.

    python -m attnspec.spec.conformance.catalogue [--max-examples N] > docs/mutants.md

Runs the whole property suite (no shrinking: only the verdict matters) and
the golden vectors against every mutant of spec.mutants and against the
correct reference, and writes a Markdown page: per mutant, the properties
that failed, the first failure's message, and whether the vectors caught it.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time

from . import golden, runner

HEADER = """# The mutant catalogue: proof that `attnspec check` catches bugs

Each mutant is the NumPy reference implementation (`spec/reference.py`) with
one deliberate mistake of the kind people make when they write attention
seq2seq (`spec/mutants.py`). `attnspec check` must fail every one and pass the
correct reference; `tests/test_conformance.py` asserts both on every test run
(at fewer examples, stopping at the first failing property).

This page is generated from an actual run, not written by hand:

    python -m attnspec.spec.conformance.catalogue --max-examples {n} > docs/mutants.md

Run: {n} examples per property (profile `ci`, derandomized, no shrinking),
golden vectors included; {when}. "Caught by" lists every property that failed,
in suite order; the message is the first one's. Try any row yourself with
`attnspec check mutant:<name>` (and `attnspec check reference` for the correct one).
"""


def catch(impl, *, max_examples: int, vectors_dir=None) -> dict:
    """The properties (and golden vectors) that fail on ``impl``, with the time it took."""
    start = time.perf_counter()
    results = runner.run_suite(impl, max_examples=max_examples, shrink=False, progress=None)
    vectors = golden.run(impl, vectors_dir)
    failed = [r for r in results if r.failed]
    first_vector = next((d for d in vectors.details if d["status"] == runner.FAIL), None)
    return {
        "properties": [r.name for r in failed],
        "message": failed[0].message if failed else "",
        "skipped": [r.name for r in results if r.status == runner.SKIP],
        "vectors": vectors.status,
        "vector_failures": vectors.failed,
        "vector_message": f"{first_vector['case']}: {first_vector['message']}" if first_vector else "",
        "seconds": time.perf_counter() - start,
    }


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def markdown(max_examples: int = 25, progress=sys.stderr) -> str:
    """Run every mutant and the reference; return the Markdown page."""
    from .. import mutants

    with tempfile.TemporaryDirectory() as vec:  # one export for all runs
        rows = []
        for name in [*mutants.MUTANTS, None]:
            impl = mutants.CORRECT if name is None else mutants.mutant(name)
            found = catch(impl, max_examples=max_examples, vectors_dir=vec)
            rows.append((name, found))
            if progress is not None:
                verdict = "CAUGHT" if (found["properties"] or found["vectors"] == runner.FAIL) else "MISSED"
                if name is None:
                    verdict = "FAILS" if verdict == "CAUGHT" else "PASSES"
                print(f"{name or 'reference (correct)'}: {verdict} {found['properties']} "
                      f"vectors {found['vectors']} ({found['seconds']:.0f}s)", file=progress, flush=True)
    when = f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    lines = [HEADER.format(n=max_examples, when=when), "",
             "| mutant | the mistake | caught by (properties) | golden vectors | first message |",
             "| --- | --- | --- | --- | --- |"]
    for name, f in rows:
        if name is None:
            continue
        props = ", ".join(f"`{p}`" for p in f["properties"]) or "**none**"
        vec = f"FAIL ({f['vector_failures']} cases)" if f["vectors"] == runner.FAIL else f["vectors"]
        lines.append(f"| `{name}` | {_cell(mutants.MUTANTS[name])} | {props} | {vec} | {_cell(f['message'])} |")
    missed = [n for n, f in rows if n and not f["properties"] and f["vectors"] != runner.FAIL]
    ref = rows[-1][1]
    lines += ["", "## The correct reference", "",
              f"`attnspec check reference`: {len(ref['properties'])} failing properties "
              f"({', '.join(ref['properties']) or 'none'}), golden vectors {ref['vectors']}; "
              f"skipped (methods it does not provide): {', '.join(ref['skipped']) or 'none'}.", "",
              "## Summary", "",
              f"{len(rows) - 1 - len(missed)} of {len(rows) - 1} mutants caught"
              + (f"; missed: {', '.join(missed)}" if missed else "") + ".",
              "Properties that caught each mutant, counted:", ""]
    counts: dict[str, int] = {}
    for name, f in rows:
        for p in (f["properties"] if name else []):
            counts[p] = counts.get(p, 0) + 1
    lines += [f"- `{p}`: {n}" for p, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write docs/mutants.md's table to stdout from an actual run.")
    parser.add_argument("--max-examples", type=int, default=25)
    args = parser.parse_args(argv)
    sys.stdout.write(markdown(args.max_examples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
