"""``attnspec check [TARGET]``: the property suite and the golden vectors against one implementation.

``add_parser`` registers the subcommand on the ``attnspec`` command line
(impl/cli.py); ``run`` is its handler. Heavy imports (Hypothesis, the
properties, the target) happen in the handler, so ``attnspec --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Run every registered property (spec.properties) against an implementation
with Hypothesis, then the golden vectors, and print one row per property:
examples tried, max absolute and relative error, PASS / FAIL / SKIP / XFAIL /
XPASS. For a failure the report shows the message and the smallest failing
example as a Python snippet to paste into a test. Exit status 0 when nothing
failed, 1 when something did, 2 for a usage error (a target that cannot be
loaded, an unreadable xfail file).

TARGET: omitted or 'numba' checks attnspec's Numba implementation, 'torch'
the bundled PyTorch model, otherwise 'package.module:name' or
'path/to/file.py:name' names an Implementation (an instance, a subclass or a
factory function). See docs/conformance.md."""


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``check`` to the subparsers ``sub`` of the ``attnspec`` command."""
    p = sub.add_parser("check", help="check an implementation against the property suite and golden vectors",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", nargs="?", default=None, metavar="TARGET",
                   help="numba (default), torch, module:name or file.py:name")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    p.add_argument("--xfail", metavar="FILE",
                   help="expected failures: one property id per line, then '# reason'")
    p.add_argument("--profile", choices=("ci", "thorough"), default="ci",
                   help="ci: 50 derandomized examples per property (default); thorough: 500, random seed")
    p.add_argument("--max-examples", type=int, metavar="N", help="examples per property (overrides the profile)")
    p.add_argument("--seed", type=int, metavar="N", help="Hypothesis seed, to repeat a thorough run")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these properties")
    vec = p.add_mutually_exclusive_group()
    vec.add_argument("--vectors", metavar="DIR",
                     help="golden vectors directory (exported there first if empty; default: a cache directory)")
    vec.add_argument("--no-vectors", action="store_true", help="skip the golden vectors")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing property")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    """Handle ``attnspec check``: build the report, print it, write the JSON, return the exit status."""
    from . import golden, report, runner, targets

    try:
        if args.json is not None:
            report.check_writable("--json", args.json)  # before the run, not after it
        impl = targets.resolve(args.target)
        xfail = runner.read_xfail(args.xfail) if args.xfail else {}
        runner.select(args.only)  # unknown names are a usage error, before any work
    except (ValueError, OSError) as exc:
        print(f"attnspec check: {exc}", file=sys.stderr)
        return 2
    if args.max_examples is not None and args.max_examples < 1:
        print("attnspec check: --max-examples: expected an int >= 1", file=sys.stderr)
        return 2
    progress = None if args.quiet else sys.stderr
    target = targets.canonical(args.target)
    seed = args.seed
    if seed is None and args.profile == "thorough":
        import os

        seed = int.from_bytes(os.urandom(4), "little")  # drawn here so the report can print it
    results = runner.run_suite(impl, profile=args.profile, max_examples=args.max_examples, only=args.only,
                               xfail=xfail, impl_source=targets.impl_code(args.target), seed=seed,
                               fail_fast=args.fail_fast, progress=progress)
    vectors = None
    if not args.no_vectors and not args.only:
        vectors = golden.run(impl, args.vectors, progress=progress)
    max_examples = args.max_examples or runner.PROFILES[args.profile]
    rep = report.Report(target, impl.name, args.profile, max_examples, results, vectors, seed)
    known = runner.load_properties()
    rep.notes += [f"xfail: {name!r} is not a registered property (typo?)" for name in xfail
                  if name not in known and not name.startswith(golden.ID_PREFIX)]
    print(report.text(rep), end="")
    if args.json:
        report.write_json(rep, args.json)
    return rep.exit_code
