"""The ``relprop-bench`` command line: ``relprop-bench localisation [--smoke] [--out DIR] ...``.

It was ``relprop bench localisation`` of the library's command line, which still forwards here
(deprecated). The flags are the same.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

PROG = "relprop-bench"


def _seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` or ``"0-2"`` -> ``(0, 1, 2)``."""
    try:
        if "-" in text.strip("-"):
            first, last = text.split("-", 1)
            return tuple(range(int(first), int(last) + 1))
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seeds must look like 0,1,2 or 0-2, got {text!r}"
        ) from None


def _add_localisation(sub: argparse._SubParsersAction) -> None:
    loc = sub.add_parser(
        "localisation",
        help="μ, μ_w and AOPC of every LRP preset and attribution method on cluttered digits",
        description="Train (or load from the cache) VGG-style nets on cluttered digits and "
        "score every LRP preset and every method of relprop.methods: μ, μ_w, μ<0.25 "
        "(Kohlbrenner et al. 2020) and AOPC (Samek et al. 2017), with bootstrap CIs over "
        "seeds. Writes localisation.md, aopc_curves.png and results.pt; progress on stderr.",
    )
    loc.add_argument(
        "--out", type=Path, default=Path("bench-out"), help="output folder (default bench-out)"
    )
    loc.add_argument("--n", type=int, default=None, help="test images per model (default 256)")
    loc.add_argument(
        "--seeds",
        type=_seeds,
        default=None,
        help="training seeds, e.g. 0,1,2 or 0-4 (default 0,1,2)",
    )
    loc.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="VARIANT",
        help="variants: vgg4 vgg8 vgg8-bn vgg13 (the default), vgg8-w32 (twice the channels) "
        "and mobilenet (depthwise-separable inverted residual blocks)",
    )
    loc.add_argument(
        "--methods",
        choices=("all", "grouped"),
        default=None,
        help="rows: all (every LRP preset and method, the default) or grouped (the rule on "
        "grouped/depthwise convs: default vs old default and alternatives, montavon2019, "
        "LRP-0, Gradient, Gradient x Input, random)",
    )
    loc.add_argument(
        "--steps",
        type=int,
        default=None,
        help="perturbation steps for AOPC (default 16 regions of 4x4)",
    )
    loc.add_argument(
        "--train-images", type=int, default=None, help="training images per model (default 10000)"
    )
    loc.add_argument("--epochs", type=int, default=None, help="training epochs (default 10)")
    loc.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="weights cache (default $RELPROP_CACHE or ~/.cache/relprop)",
    )
    loc.add_argument("--retrain", action="store_true", help="train even if cached")
    loc.add_argument(
        "--fast-methods",
        action="store_true",
        help="fewer SmoothGrad samples, IG steps and occlusion windows",
    )
    loc.add_argument(
        "--smoke",
        action="store_true",
        help="seconds-long check: one small vgg4, 16 images, fast methods "
        "(other flags still override)",
    )
    loc.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    loc.add_argument(
        "--from-results",
        type=Path,
        default=None,
        metavar="RESULTS_PT",
        help="only render the report again from a results.pt of an earlier run",
    )
    loc.set_defaults(_run=_run_localisation)


def _run_localisation(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import torch

    from .localisation import BenchConfig, run_benchmark, smoke_config
    from .report import load_result, write_report

    command = f"{PROG} " + shlex.join(getattr(args, "_argv", ["localisation"]))
    if args.from_results is not None:
        old = load_result(args.from_results)
        paths = write_report(old, args.out, command)
        print(paths["table"].read_text(encoding="utf-8"))
        return 0

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = smoke_config() if args.smoke else BenchConfig()
    changes: dict[str, object] = {}
    for key in ("n", "seeds", "steps", "cache"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    if args.variants is not None:
        changes["variants"] = tuple(args.variants)
    if args.methods is not None:
        changes["method_set"] = args.methods
    if args.retrain or args.fast_methods:
        changes.update(
            retrain=args.retrain or config.retrain,
            fast_methods=args.fast_methods or config.fast_methods,
        )
    train = config.train
    if args.train_images is not None:
        train = replace(train, n_train=args.train_images)
    if args.epochs is not None:
        train = replace(train, epochs=args.epochs)
    config = replace(config, train=train, **changes)  # type: ignore[arg-type]
    result = run_benchmark(config)
    paths = write_report(result, args.out, command)
    print(paths["table"].read_text(encoding="utf-8"))
    for path in paths.values():
        print(f"wrote {path}", file=sys.stderr)
    return 0


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser with every benchmark as a subcommand."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Benchmarks of explanation quality for relprop."
    )
    sub = parser.add_subparsers(dest="bench", metavar="BENCHMARK")
    _add_localisation(sub)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run ``relprop-bench`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser(prog)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args._argv = argv  # for reports that quote the command that made them
    if getattr(args, "_run", None) is None:
        print(f"{prog}: choose a benchmark: localisation", file=sys.stderr)
        parser.print_help(sys.stderr)
        return 2
    try:
        status: int = args._run(args)
    except (ValueError, OSError) as err:
        print(f"{prog} {args.bench}: error: {err}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
