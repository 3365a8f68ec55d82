"""The ``attnspec`` command line."""

from __future__ import annotations

import argparse
import sys


def _verify(args) -> int:
    from attnspec.spec import verify

    return verify.main()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnspec",
        description="A verified reference for attention seq2seq (Luong global attention).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser(
        "verify",
        help="run the specification's self-verification and print its report",
        description="Prove every symbolic identity, check the worked example of MODEL.md, and "
        "compare the high-precision oracle's gradients with finite differences. "
        "Exit status 1 if anything fails.",
    )
    p.set_defaults(run=_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
