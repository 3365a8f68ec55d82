"""The ``attnspec`` command line."""

from __future__ import annotations

import argparse
import os
import sys


def _verify(args) -> int:
    from attnspec.spec import verify

    return verify.main()


def _demo(args) -> int:
    from attnspec.impl import demo

    score = "none" if args.no_attention else args.score
    if args.compare:
        if args.task not in ("copy", "reverse"):
            raise ValueError("--compare: runs on --task copy or --task reverse (long inputs), "
                             f"not {args.task!r}")
        if args.no_attention or args.score != "dot":
            raise ValueError("--compare: trains both dot attention and no attention; "
                             "drop --no-attention/--score")
        from attnspec.impl.compare import compare_bottleneck

        demo.check_out_folder(args.out or "docs")  # before training, not after it
        compare_bottleneck(args.task, max_len=args.max_len or 40, steps=args.steps or 5000, seed=args.seed,
                           out=args.out or "docs", quiet=args.quiet)
        return 0
    result = demo.run_demo(args.task, steps=args.steps, seed=args.seed, score=score,
                           out=args.out or "attnspec-demo", time_budget=args.time_budget, target=args.target,
                           max_len=args.max_len, examples=args.examples, quiet=args.quiet)
    if args.quiet:
        print(f"{result.task}: held-out exact match {result.test_accuracy:.2%} after {result.steps} steps "
              f"({result.seconds:.0f} s); checkpoint {result.checkpoint}")
    return 0


def _translate(args) -> int:
    from attnspec.impl import demo

    if args.heatmap and not os.path.isdir(os.path.dirname(os.path.abspath(args.heatmap))):
        raise ValueError(f"heatmap: no folder {os.path.dirname(os.path.abspath(args.heatmap))!r} to write into")
    output, _ = demo.translate(args.checkpoint, args.text, beam=args.beam, heatmap=args.heatmap)
    print(output)
    if args.heatmap:
        print(f"attention heatmap: {args.heatmap}", file=sys.stderr)
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


MAX_SOURCE_LEN = 200
"""The longest source ``demo --max-len`` takes: the tasks make thousands of strings of up to that
length (10**8 ran out of time and memory)."""


def _source_len(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_SOURCE_LEN:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_SOURCE_LEN}, got {value}")
    return value


def _count(text: str) -> int:
    return 0 if text.strip() == "0" else _positive_int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _add_demo(sub) -> None:
    from attnspec.impl.task_names import TASKS
    from attnspec.spec.config import SCORES

    p = sub.add_parser(
        "demo",
        help="train on a built-in task, report held-out accuracy, draw attention heatmaps",
        description="Train the Numba model on a generated task (default: date normalisation, "
        "'nov 25, 2026' -> '2026-11-25'), stop once the validation exact match reaches the "
        "target, report the held-out test exact match (greedy), save the checkpoint and draw "
        "attention heatmaps of a few test examples. With --compare (tasks copy/reverse), "
        "train with and without attention and write the accuracy by source length to "
        "OUT/attention-vs-bottleneck.md and OUT/img/.",
    )
    p.add_argument("--task", choices=TASKS, default="dates", help="the generated task (default: dates)")
    p.add_argument("--steps", type=_positive_int, help="most training steps (default per task)")
    p.add_argument("--seed", type=_count, default=0, help="seed of data, initialisation and batches (default 0)")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--score", choices=SCORES, default="dot", help="attention score (default: dot)")
    model.add_argument("--no-attention", action="store_true",
                       help="the plain seq2seq baseline without attention (score 'none')")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default: attnspec-demo; docs with --compare)")
    p.add_argument("--time-budget", type=_positive_float, default=540.0, metavar="SECONDS",
                   help="stop training after this long (default 540)")
    p.add_argument("--target", type=_positive_float, metavar="ACC",
                   help="stop once the validation exact match reaches ACC in (0, 1] (default per task)")
    p.add_argument("--max-len", type=_source_len, metavar="N",
                   help=f"longest source of reverse/copy, at most {MAX_SOURCE_LEN} (default 12; 40 with --compare)")
    p.add_argument("--examples", type=_count, default=4, metavar="N",
                   help="test examples drawn in the heatmap (default 4; 0 for none)")
    p.add_argument("--compare", action="store_true",
                   help="compare attention with no attention by source length (copy/reverse)")
    p.add_argument("--quiet", action="store_true", help="no progress line; print only the result")
    p.set_defaults(run=_demo)


def _add_translate(sub) -> None:
    p = sub.add_parser(
        "translate",
        help="decode one input with a checkpoint written by `attnspec demo`",
        description="Decode TEXT with the model and vocabularies of CHECKPOINT and print the output.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .npz written by `attnspec demo`")
    p.add_argument("text", metavar="TEXT", help="the input, e.g. 'nov 25, 2026'")
    p.add_argument("--beam", type=_positive_int, default=1, metavar="K",
                   help="beam search of width K (default 1: greedy)")
    p.add_argument("--heatmap", metavar="FILE.png", help="draw the attention of the output to FILE.png")
    p.set_defaults(run=_translate)


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
    from attnspec.spec.conformance.cli import add_parser as add_check_parser

    add_check_parser(sub)
    from attnspec.impl.cli_vectors import add_parser as add_vectors_parser

    add_vectors_parser(sub)
    _add_demo(sub)
    _add_translate(sub)
    from attnspec.spec.derive_cli import add_parser as add_derive_parser

    add_derive_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    if args.command in ("demo", "translate"):
        try:  # bad input is reported in one line, not as a traceback
            return args.run(args)
        except (ValueError, FileNotFoundError, ImportError, OverflowError) as exc:
            print(f"attnspec {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except MemoryError as exc:  # the limits above should prevent it; never a traceback
            print(f"attnspec {args.command}: error: out of memory ({exc or 'allocation failed'})", file=sys.stderr)
            return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
