"""``attnspec derive [--out DIR] [--check]``: the command line of the derivation docs (spec/derive.py).

``add_parser`` registers the subcommand on the ``attnspec`` command line
(impl/cli.py) and ``add_arguments`` declares its options, which
``python -m attnspec.spec.derive`` shares. Neither imports spec.derive, whose
SymPy import takes most of a second: it is imported by the handler, so
``attnspec --help`` and the other subcommands do not pay for it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["DEFAULT_OUT", "add_arguments", "add_parser"]


def _default_out() -> Path:
    """docs/derivations of the source checkout (editable install), else of the current directory."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "docs").is_dir():
        return checkout / "docs" / "derivations"
    return Path("docs") / "derivations"


DEFAULT_OUT = _default_out()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--out`` and ``--check`` to ``parser``."""
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"directory of the generated pages (default: {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the pages in --out differ from what would be generated")


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``derive`` to the subparsers ``sub`` of the ``attnspec`` command."""
    p = sub.add_parser(
        "derive",
        help="generate the derivation docs (docs/derivations/) from the specification",
        description="Print every definition, derivative and closed form with sympy.latex, decide "
        "every identity and the backward-pass checks, and write the markdown pages. With --check, "
        "write nothing and exit 1 if the committed pages are stale.",
    )
    add_arguments(p)
    p.set_defaults(run=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    from . import derive

    return derive.run(args)
