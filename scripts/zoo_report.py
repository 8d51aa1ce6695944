"""Run every architecture of the zoo (tests/helpers/zoo.py) and write bench/ZOO.md.

    .venv/bin/python scripts/zoo_report.py                 # all, writes bench/ZOO.md
    .venv/bin/python scripts/zoo_report.py gpt2 bert:seq_cls   # some, printed only
    .venv/bin/python scripts/zoo_report.py --json out.json # also the raw results

Each architecture runs in-process under a time limit (``--limit`` seconds, SIGALRM), on one
intra-op thread, as the tests do.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import zoo  # noqa: E402


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout


def run(arch: zoo.Arch, limit: int) -> zoo.Result:
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    start = time.perf_counter()
    try:
        return zoo.check(arch)
    except _Timeout:
        return zoo.Result(arch, "build", f"timeout after {limit} s", "Timeout",
                          seconds=time.perf_counter() - start)
    finally:
        signal.alarm(0)


def ops(result: zoo.Result) -> list[str]:
    """The ops a refusal names (``op 'expm1'``), sorted."""
    return sorted(set(re.findall(r"op '([^']+)'", result.message)))


def modules(result: zoo.Result) -> list[str]:
    """The module paths a refusal names, layer numbers folded (``layers.*.mlp.act_fn``)."""
    paths = re.findall(r"'([A-Za-z_][\w.]*)': op", result.message)
    return sorted({re.sub(r"\.\d+\.", ".*.", p) for p in paths})


def cause(result: zoo.Result) -> str:
    """The op / node an error names, for grouping."""
    text = result.message
    if result.status == "refused":
        named = ops(result)
        if named:
            return f"{result.error}: op " + ", ".join(named)
        node = sorted(set(re.findall(r"autograd node (\w+)", text)))
        if node:
            return f"{result.error}: autograd node " + ", ".join(node)
        return f"{result.error}: {text.splitlines()[0][:140]}"
    if result.status in ("raw", "build", "wrong"):
        first = text.splitlines()[0][:140] if text else ""
        return f"{result.error}: {first}" if result.error else first
    return text[:140]


def fragment(result: zoo.Result) -> str:
    """What EXPECTED_REFUSALS checks in the message: the first op named, or its start."""
    named = ops(result)
    if named:
        return f"op '{named[0]}'"
    node = re.findall(r"autograd node (\w+)", result.message)
    return f"autograd node {node[0]}" if node else result.message[:60]


def print_tables(results: list[zoo.Result]) -> None:
    """The zoo's tables as the results stand (to paste into tests/helpers/zoo.py)."""
    print("EXPECTED_REFUSALS: dict[str, tuple[str, str]] = {")
    for r in results:
        if r.status == "refused":
            where = ", ".join(modules(r))[:60]
            print(f"    {r.arch.id!r}: ({fragment(r)!r}, {(cause(r) + ' in ' + where)[:70]!r}),")
    print("}\nNON_CONSERVING: dict[str, str] = {")
    for r in results:
        if r.status == "explained" and not r.conserves:
            print(f"    {r.arch.id!r}: {zoo.NON_CONSERVING.get(r.arch.id, 'TODO')!r},")
    print("}\nSKIPPED (not built):")
    for r in results:
        if r.status == "build":
            print(f"    {r.arch.id!r}: {('not built: ' + cause(r))[:90]!r},")
    print("SLOW:", sorted(r.arch.id for r in results if r.seconds > 2.0))


def _fmt(value: float) -> str:
    return "—" if value != value else f"{value:.1e}"


def write_markdown(results: list[zoo.Result], path: Path, seconds: float) -> None:
    explained = [r for r in results if r.status == "explained"]
    conserving = [r for r in explained if r.conserves]
    refused = [r for r in results if r.status == "refused"]
    raw = [r for r in results if r.status in ("raw", "wrong")]
    skipped = [r for r in results if r.status in ("skipped", "build")]
    built = len(results) - len(skipped)
    import transformers

    lines = [
        "# The Hugging Face zoo: every architecture, tiny and random, explained",
        "",
        "`scripts/zoo_report.py` builds every `(model_type, head)` that "
        "`AutoModelForSequenceClassification`, `AutoModelForCausalLM`, "
        "`AutoModelForImageClassification` and `AutoModelForSeq2SeqLM` can build from a "
        "config (`tests/helpers/zoo.py`: hidden 32, 2 layers, 4 heads, vocabulary 99, "
        "32×32 images, float64, random weights), explains it with `attnlrp()` "
        "(`verify=True`), and checks conservation of `cp_lrp(epsilon=0)` on a bias-free copy "
        "(every `*bias` parameter 0): token relevance + sources = explained, relative.",
        "",
        f"transformers {transformers.__version__}, torch {torch.__version__}, one thread; "
        f"{time.strftime('%Y-%m-%d')}; total {seconds:.0f} s.",
        "",
        f"**{len(explained)} of {built} built explained** "
        f"({len(conserving)} of them conserve: within {zoo.TOLERANCE:g}, or "
        f"{zoo.FLOAT32_TOLERANCE:g} where the model runs ops in float32 inside the float64 "
        f"model, {', '.join(sorted(zoo.FLOAT32_INSIDE))}); "
        f"{len(refused)} refused with a named error; {len(raw)} raw errors or wrong "
        f"results; {len(skipped)} of {len(results)} not built here (skipped).",
        "",
        "## Refusal causes",
        "",
    ]
    groups: dict[str, list[str]] = defaultdict(list)
    for r in refused:
        groups[cause(r)].append(r.arch.id)
    for key, ids in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"- **{key}** ({len(ids)}): {', '.join(ids)}")
    if raw:
        lines += ["", "## Raw errors and wrong results", ""]
        groups = defaultdict(list)
        for r in raw:
            groups[cause(r)].append(r.arch.id)
        for key, ids in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"- **{key}** ({len(ids)}): {', '.join(ids)}")
    gaps = [r for r in explained if not r.conserves]
    if gaps:
        lines += ["", "## Explained but not conserving (bias-free, CP-LRP ε = 0)", ""]
        for r in gaps:
            lines.append(f"- {r.arch.id}: gap {_fmt(r.gap)} — "
                         f"{zoo.NON_CONSERVING.get(r.arch.id, 'not yet understood')}")
    lines += ["", "## Not built here", ""]
    groups = defaultdict(list)
    for r in skipped:
        groups[r.message.splitlines()[0][:160] if r.message else r.error].append(r.arch.id)
    for key, ids in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"- {key} ({len(ids)}): {', '.join(ids)}")
    lines += ["", "## Every architecture", "",
              "| architecture | head | status | max \\|output − plain\\| | conservation gap "
              "(relative) | seconds |", "|---|---|---|---:|---:|---:|"]
    for r in results:
        if r.status == "explained":
            status = "explained" if r.conserves else "explained, not conserving"
        elif r.status == "refused":
            status = f"refused: {cause(r)}"
        elif r.status == "skipped":
            status = f"skipped: {r.message[:80]}"
        elif r.status == "build":
            status = f"not built: {r.message.splitlines()[0][:80] if r.message else ''}"
        else:
            status = f"**{r.status}**: {cause(r)}"
        status = status.replace("|", "\\|")
        lines.append(f"| {r.arch.model_type} | {r.arch.head} | {status} | "
                     f"{_fmt(r.output_diff)} | {_fmt(r.gap)} | {r.seconds:.2f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("only", nargs="*", help="model types or ids (type:head)")
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--from-json", type=Path, help="rewrite from saved results, no runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "ZOO.md")
    parser.add_argument("--tables", action="store_true",
                        help="also print the zoo's tables as the results stand")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    archs = zoo.architectures()
    if args.only:
        archs = [a for a in archs if a.id in args.only or a.model_type in args.only]
    start = time.perf_counter()
    results = []
    if args.from_json:
        for item in json.loads(args.from_json.read_text()):
            model_type, head = item["id"].rsplit(":", 1)
            results.append(zoo.Result(zoo.Arch(model_type, head), item["status"],
                                      item["message"], item["error"], item["output_diff"],
                                      item["gap"], seconds=item["seconds"],
                                      trace=item["trace"]))
        archs = []
    for arch in archs:
        result = run(arch, args.limit)
        results.append(result)
        detail = (f"gap {_fmt(result.gap)} diff {_fmt(result.output_diff)}"
                  if result.status == "explained" else cause(result))
        print(f"{arch.id:45s} {result.status:9s} {result.seconds:6.2f}s {detail}", flush=True)
    total = time.perf_counter() - start
    if args.from_json:
        total = sum(r.seconds for r in results)
    if args.json and not args.from_json:
        args.json.write_text(json.dumps([
            {"id": r.arch.id, "status": r.status, "error": r.error, "message": r.message,
             "output_diff": r.output_diff, "gap": r.gap, "seconds": r.seconds,
             "trace": r.trace} for r in results], indent=1))
    if args.tables:
        print_tables(results)
    if not args.only or args.from_json:
        write_markdown(results, args.out, total)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
