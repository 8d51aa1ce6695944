"""``relprop explain``: the command line of a dataset run (also under ``torchrun -m relprop``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import COMPOSITES, RunConfig
from .preprocess import Preprocess, parse_size

__all__ = ["add_arguments", "run", "config_from_args"]


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers, e.g. 0.485,0.456,0.406"
                                         ) from error


def _names(text: str) -> list[str]:
    return [v for v in text.replace(",", " ").split() if v]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``relprop explain``."""
    _add_inputs(p)
    _add_explanation(p)
    _add_storage(p)


def _add_inputs(p: argparse.ArgumentParser) -> None:
    io = p.add_argument_group("model and data")
    io.add_argument("--model", required=True, help="package.module:callable returning the "
                    "eval-mode nn.Module, a torch.export .pt2 file, or a Hugging Face model "
                    "folder")
    io.add_argument("--weights", type=Path, help="state dict for a callable model: "
                    ".safetensors, or .pt/.pth loaded with torch.load(weights_only=True)")
    io.add_argument("--trust-pickle", action="store_true", help="allow a weights pickle that "
                    "runs code to load (only for files you trust)")
    io.add_argument("--data", required=True, help="image folder (class sub-folders = labels), "
                    ".npy/.npz/.safetensors tensors, a Hugging Face datasets folder, or a .txt "
                    "file with one sentence per line")
    io.add_argument("--labels", type=Path, help="labels for tensor or text data: .npy or one "
                    "integer per line")
    io.add_argument("--out", type=Path, required=True, help="the store folder to write")
    io.add_argument("--resume", action="store_true", help="finish (or check) the run in --out")
    pre = p.add_argument_group("preprocessing")
    pre.add_argument("--resize", help="N: shorter side to N; HxW: that size")
    pre.add_argument("--crop", help="centre crop N or HxW (after --resize)")
    pre.add_argument("--mean", type=_floats, help="per-channel mean to subtract, e.g. "
                     "0.485,0.456,0.406")
    pre.add_argument("--std", type=_floats, help="per-channel std to divide by")
    pre.add_argument("--channels", choices=("auto", "1", "3"), default="auto",
                     help="image channels: auto keeps grayscale as 1, others RGB")
    pre.add_argument("--transform", help="package.module:callable from a PIL image (or tensor) "
                     "to the input tensor; replaces the options above")
    pre.add_argument("--max-length", type=int, default=128, help="tokens per sentence (text)")


def _add_explanation(p: argparse.ArgumentParser) -> None:
    exp = p.add_argument_group("explanation")
    exp.add_argument("--composite", help=f"one of {', '.join(COMPOSITES)} or module:callable "
                     "(default: LRP_CMP:α2 for images, AttnLRP for tokens)")
    exp.add_argument("--target", default="predicted", help="true (the label), predicted "
                     "(default) or a class index")
    exp.add_argument("--methods", type=_names, default=["lrp"], help="comma-separated names "
                     "of relprop.methods (default lrp); the first is the main relevance")
    exp.add_argument("--metrics", type=_names, default=[], help="per-sample index columns: "
                     "positive_share, conservation_error, aopc")
    exp.add_argument("--no-strict", action="store_true", help="keep the gradient of ops with "
                     "no rule instead of failing their samples")


def _add_storage(p: argparse.ArgumentParser) -> None:
    run_group = p.add_argument_group("run and storage")
    run_group.add_argument("--batch-size", type=int, default=32)
    run_group.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    run_group.add_argument("--device", help="default: this rank's GPU if any, else cpu")
    run_group.add_argument("--full", action="store_true", help="store every channel "
                           "(C, H, W) instead of the channel sum")
    run_group.add_argument("--resolution", type=int, default=112, help="sum-pool maps to at "
                           "most this many pixels a side (default 112; 0 keeps full size)")
    run_group.add_argument("--dtype", default="float16", choices=("float16", "bfloat16",
                                                                 "float32"))
    run_group.add_argument("--no-thumbnails", action="store_true")
    run_group.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The :class:`RunConfig` the parsed options describe."""
    preprocess = Preprocess(resize=parse_size(args.resize, "--resize"),
                            crop=parse_size(args.crop, "--crop"), mean=args.mean, std=args.std,
                            channels=args.channels, transform=args.transform)
    return RunConfig(
        model=args.model, data=args.data, out=args.out, weights=args.weights,
        trust_pickle=args.trust_pickle, labels=args.labels, resume=args.resume,
        batch_size=args.batch_size, workers=args.workers, device=args.device,
        composite=args.composite, target=args.target, methods=tuple(args.methods),
        metrics=tuple(args.metrics), preprocess=preprocess, max_length=args.max_length,
        full=args.full, resolution=args.resolution or None, dtype=args.dtype,
        thumbnails=not args.no_thumbnails, strict=not args.no_strict, quiet=args.quiet)


def run(args: argparse.Namespace) -> int:
    """Run ``relprop explain``; 0 when the run finished (failed samples are index rows)."""
    from .loop import explain_dataset

    summary = explain_dataset(config_from_args(args))
    if summary.rank == 0 and not args.quiet:
        rate = summary.samples_per_second
        print(f"relprop explain: {summary.explained} samples explained, {summary.failed} "
              f"failed, {summary.skipped} already stored (rank 0 of {summary.world}; "
              f"{summary.seconds:.1f}s, {rate:.1f} samples/s) -> {summary.out}",
              file=sys.stderr)
        if summary.failed:
            print(f"relprop explain: see the failed rows' error column in "
                  f"{summary.out / 'index.csv'}", file=sys.stderr)
    return 0
