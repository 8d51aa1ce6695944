"""The ``relprop`` command line: ``relprop demo --out DIR [--n N]``, ``relprop explain ...``
(a dataset into a store, :mod:`relprop.run`; also ``torchrun -m relprop explain``) and
``relprop audit STORE ...`` (SpRAy and a report, :mod:`relprop.audit`).

``relprop bench ...`` is a deprecated alias of ``relprop-bench ...`` (the package
``relprop_bench`` in ``benchmarks/``; ``pip install -e benchmarks/``), to which it forwards.

Each subcommand is an entry of :data:`COMMANDS`: its name, a one-line help, a function that
declares its arguments on its parser and a function ``run(args) -> int`` (the exit status).
To add one, write ``_add_NAME`` and ``_run_NAME`` and append an entry.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import RelpropError

__all__ = ["main", "build_parser", "COMMANDS"]

Command = tuple[
    str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]
]


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--n", type=int, default=6, help="number of test digits (default 6, max 100)")
    p.add_argument(
        "--target",
        choices=("predicted", "true"),
        default="predicted",
        help="explain the predicted class (default) or the true label",
    )
    p.add_argument("--scale", type=int, default=12, help="pixel upscaling factor (default 12)")


def _run_demo(args: argparse.Namespace) -> int:
    import torch

    from .demo import format_conservation, load_digits_cnn, run_demo

    start = time.perf_counter()
    png = run_demo(args.out, args.n, target=args.target, scale=args.scale)
    elapsed = time.perf_counter() - start
    result = torch.load(png.parent / "explanations.pt", weights_only=True)
    acc = load_digits_cnn().meta.get("test_accuracy")
    acc_text = f" (test accuracy {acc:.1%})" if isinstance(acc, float) else ""
    print(f"model: DigitsCNN on 8x8 digits{acc_text}; explained the {args.target} class")
    print(f"wrote {png}")
    print(f"      {png.parent / 'explanations.pt'}")
    print(f"      {png.parent / 'README.txt'}")
    print("columns: input | " + " | ".join(result["methods"]))
    print("\nconservation check, sum of input relevance vs explained logit:")
    print(format_conservation(result))
    print(f"\ndone in {elapsed:.2f}s")
    return 0


def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="BENCHMARK ...",
        help="deprecated: forwarded to relprop-bench (e.g. localisation --smoke)",
    )


def _run_bench(args: argparse.Namespace) -> int:
    """Deprecated alias: ``relprop bench ARGS`` runs ``relprop-bench ARGS`` (relprop_bench)."""
    print(
        "relprop bench: DeprecationWarning: the benchmarks moved to the package relprop_bench; "
        "run `" + shlex.join(["relprop-bench", *args.args]) + "` instead",
        file=sys.stderr,
    )
    try:
        from relprop_bench.cli import main as bench_main
    except ImportError:
        print(
            "relprop bench: the benchmarks are not installed; from a checkout of relprop: "
            "pip install -e benchmarks/",
            file=sys.stderr,
        )
        return 2
    status: int = bench_main(args.args)
    return status


def _add_explain(p: argparse.ArgumentParser) -> None:
    from .run.command import add_arguments

    add_arguments(p)


def _run_explain(args: argparse.Namespace) -> int:
    from .run.command import run

    return run(args)


def _add_audit(p: argparse.ArgumentParser) -> None:
    try:  # its extra (scikit-learn) may be missing: the other commands must still work
        from .audit.command import add_arguments
    except ImportError as error:
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(_audit_import_error=error)
        return
    add_arguments(p)


def _run_audit(args: argparse.Namespace) -> int:
    error = getattr(args, "_audit_import_error", None)
    if error is not None:
        raise ImportError(f"relprop audit needs its extra: pip install 'relprop[audit]' "
                          f"({error})")
    from .audit.command import run

    status: int = run(args)
    return status


#: The subcommands: (name, help, add_arguments, run).
COMMANDS: list[Command] = [
    (
        "demo",
        "explain a small digits CNN with LRP-0, -ε, -γ and a composite; write a PNG grid",
        _add_demo,
        _run_demo,
    ),
    (
        "explain",
        "explain every sample of a dataset and store the maps (resumable; torchrun -m relprop)",
        _add_explain,
        _run_explain,
    ),
    (
        "audit",
        "SpRAy over a store written by `relprop explain`, and an HTML report",
        _add_audit,
        _run_audit,
    ),
    (
        "bench",
        "deprecated: forwards to relprop-bench (pip install -e benchmarks/)",
        _add_bench,
        _run_bench,
    ),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="relprop", description="Layer-wise Relevance Propagation for PyTorch."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, add, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args._argv = argv  # for reports that quote the command that made them
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        status: int = args._run(args)
    except (ValueError, OSError, ImportError, RelpropError) as err:  # ImportError: an extra
        print(f"relprop {args.command}: error: {err}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
