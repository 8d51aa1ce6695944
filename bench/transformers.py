#!/usr/bin/env python
"""Benchmark relprop on Hugging Face transformers against the plain input gradient.

Models (random weights from configs, nothing downloaded, eval mode, parameters frozen):
``bert`` = ``BertForSequenceClassification(BertConfig())`` (BERT-base: 12 layers, hidden 768,
12 heads, 2 labels) and ``gpt2`` = ``GPT2LMHeadModel(GPT2Config())`` (GPT-2 small: 12 layers,
768, vocabulary 50257), each built with ``attn_implementation`` "sdpa" and "eager". Input:
random token ids, batch 1, ``--lengths`` tokens. The explained output is BERT's class-1 logit
and GPT-2's logit of token 262 at the last position (the next-token prediction).

Methods, per model x attention x length (a *cell*):

* ``forward``          ``model(ids)`` under ``torch.no_grad()``
* ``gradient``         the embedding lookup, ``model(inputs_embeds=e)`` with ``e`` a leaf that
                       requires grad, and ``torch.autograd.grad`` of the explained logit w.r.t.
                       ``e`` (the reference every ratio is taken against)
* ``relprop attnlrp``  ``relprop.explain(model, ids, target, relprop.composites.attnlrp())``
                       with ``target`` 1 (BERT) or ``relprop.targets.TokenLogit(262)`` (GPT-2)
* ``relprop cp_lrp``   the same with ``relprop.composites.cp_lrp()``

Measurement, with the helpers of ``bench/engine.py`` (imported, not copied): every worker is
a fresh process that sets ``--threads`` and pays one-time costs (lazy imports, first-use
initialisation) with a call on an 8-token input before anything is measured.

* time: one worker per cell runs ``--warmup`` calls of each method, then ``--repeats`` rounds
  that call every method once, in an order rotated from round to round. The table gives the
  median and the fastest call; *time / grad* is the median over the rounds of the method's
  time divided by the gradient's time in the same round, so that load from other processes,
  which comes and goes over seconds, hits both sides of a ratio alike. *CPU time / grad* is
  the same ratio of the process's CPU time (``time.process_time``, all threads). With
  ``--threads 1`` that is the work done, which other processes on the cores hardly change;
  with more threads, time a thread spins waiting for a descheduled partner counts too.
* memory (unless ``--no-memory``): one worker per cell and method measures the peak *extra*
  memory of ``--warmup`` + 1 calls from the kernel's RSS high-water mark
  (``engine.PeakMemory``, see its docstring).

The goal of the issue, "relprop within 1.3x of the gradient's time", is checked per cell on
*time / grad*.

``--profile`` adds a breakdown of one cell (``--profile-cell``, default ``gpt2,sdpa,128``) in
one process with ``--profile-threads`` (default 1) threads, measured in CPU time of the
process (``time.process_time``: with one thread that is the work done, and other processes
on the cores hardly change it): the phases of ``relprop.explain`` next to the gradient's
forward and backward, the torch ops (by input shape) whose self time grows most over the
gradient's (``torch.profiler``, one profile per call; per op the median over the calls, its
wall times scaled by the call's CPU / wall time), and
the relprop functions with the most own time (``cProfile`` on the CPU clock); per call,
averaged over ``--repeats`` calls. ``--profile-only`` skips the table.

Usage::

    python bench/transformers.py                      # bert,gpt2 x 128,512 x sdpa,eager
    python bench/transformers.py --quick              # 2-layer tiny configs, < 30 s
    python bench/transformers.py --models gpt2 --lengths 128 --profile --out report.md
    python bench/transformers.py --profile-only --profile-cell bert,eager,512

Progress goes to stderr, the markdown report to stdout (and to ``--out``). A failing
method becomes an "error: ..." row; the exit status stays 0.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as _dt
import importlib.util
import json
import os
import platform
import pstats
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# This file shares its name with the Hugging Face package: keep bench/ off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def _load_engine() -> Any:
    spec = importlib.util.spec_from_file_location("relprop_bench_engine", HERE / "engine.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # also puts the checkout's src/ on sys.path
    return module


engine = _load_engine()

MODELS = ("bert", "gpt2")
ATTENTIONS = ("sdpa", "eager")
METHODS = ("forward", "gradient", "relprop attnlrp", "relprop cp_lrp")
TOKEN = 262  # GPT-2's " the": the explained next token
GOAL = 1.3  # the target: relprop time <= GOAL x gradient time
TINY = {"bert": {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
                 "vocab_size": 1000, "max_position_embeddings": 128},
        "gpt2": {"n_embd": 64, "n_head": 4, "vocab_size": 1000, "n_positions": 128,
                 "bos_token_id": 0, "eos_token_id": 0}}


# ---------------------------------------------------------------------------- set-up
def build_model(name: str, attention: str, quick: bool) -> Any:
    """The model, random weights from seed 0 (so sdpa and eager share weights), frozen."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    if name == "bert":
        config = BertConfig(num_hidden_layers=2, **TINY["bert"]) if quick else BertConfig()
        cls: Any = BertForSequenceClassification
    elif name == "gpt2":
        config = GPT2Config(n_layer=2, **TINY["gpt2"]) if quick else GPT2Config()
        cls = GPT2LMHeadModel
    else:
        raise SystemExit(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    model = cls._from_config(config, attn_implementation=attention)
    used = model.config._attn_implementation
    if used != attention:
        raise RuntimeError(f"asked for attention {attention!r}, the model uses {used!r}")
    return model.eval().requires_grad_(False)


def token_ids(model: Any, length: int) -> Any:
    import torch

    gen = torch.Generator().manual_seed(1234)
    return torch.randint(0, model.config.vocab_size, (1, length), generator=gen)


def explained_logit(name: str, output: Any) -> Any:
    """The logit the gradient is taken of: what relprop's target selects."""
    return output.logits[:, 1].sum() if name == "bert" else output.logits[:, -1, TOKEN].sum()


def make_method(method: str, name: str, model: Any, ids: Any) -> Callable[[], None]:
    import torch

    if method == "forward":
        def run() -> None:
            with torch.no_grad():
                model(ids)
        return run
    if method == "gradient":
        embed = model.get_input_embeddings()

        def run() -> None:
            embeds = embed(ids).detach().requires_grad_(True)
            torch.autograd.grad(explained_logit(name, model(inputs_embeds=embeds)), embeds)
        return run
    if method.startswith("relprop "):
        import relprop

        composite = getattr(relprop.composites, method.split()[1])()
        target = 1 if name == "bert" else relprop.targets.TokenLogit(TOKEN)

        def run() -> None:
            relprop.explain(model, ids, target, composite)
        return run
    raise SystemExit(f"unknown method {method!r} (choose from {', '.join(METHODS)})")


# ---------------------------------------------------------------------------- workers
def _error(e: Exception) -> dict[str, Any]:
    return {"status": f"error: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:140]}"}


def time_cell(args: argparse.Namespace, name: str, model: Any, ids: Any, methods: list[str]
              ) -> dict[str, Any]:
    """Wall times of every method, side by side: each round calls every method once, in an
    order rotated from round to round, so that a change of load hits all methods alike."""
    runs: dict[str, Callable[[], None]] = {}
    cell: dict[str, Any] = {}
    for method in methods:
        try:
            make_method(method, name, model, ids[:, :8])()  # one-time costs
            runs[method] = make_method(method, name, model, ids)
            for _ in range(args.warmup):
                runs[method]()
        except Exception as e:  # reported as a row, never a crash of the parent
            cell[method] = _error(e)
    order = list(runs)
    times: dict[str, list[float]] = {m: [] for m in order}
    cpu: dict[str, list[float]] = {m: [] for m in order}
    for i in range(args.repeats):
        for method in order[i % len(order):] + order[:i % len(order)]:
            c0, t0 = time.process_time(), time.perf_counter()
            runs[method]()
            times[method].append(time.perf_counter() - t0)
            cpu[method].append(time.process_time() - c0)
    for method in order:
        cell[method] = {"status": "ok", "times_s": times[method], "cpu_s": cpu[method],
                        "time_s": statistics.median(times[method])}
    return cell


def memory_cell(args: argparse.Namespace, name: str, model: Any, ids: Any, method: str
                ) -> dict[str, Any]:
    """Peak extra memory of ``args.warmup`` + 1 calls, after one-time costs are paid."""
    make_method(method, name, model, ids[:, :8])()
    run = make_method(method, name, model, ids)
    mem = engine.PeakMemory("cpu")
    mem.start()
    for _ in range(args.warmup + 1):
        run()
    return {"status": "ok", "peak_bytes": max(mem.stop(), 0), "mem": mem.kind}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Results of every method of every cell given, keyed by ``"model,attention,length"``."""
    import torch

    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    results: dict[str, Any] = {}
    for name, attention, length in parse_cells(args):
        key = f"{name},{attention},{length}"
        try:
            model = build_model(name, attention, args.quick)
        except Exception as e:
            results[key] = {m: _error(e) for m in methods}
            continue
        ids = token_ids(model, length)
        if args.worker == "time":
            results[key] = time_cell(args, name, model, ids, methods)
            continue
        results[key] = {}
        for method in methods:
            try:
                results[key][method] = memory_cell(args, name, model, ids, method)
            except Exception as e:
                results[key][method] = _error(e)
    return results


def parse_cells(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    return [(m, a, int(n)) for m in args.models.split(",") if m
            for a in args.attentions.split(",") if a for n in args.lengths.split(",") if n]


def run_worker(args: argparse.Namespace, mode: str, cells: list[tuple[str, str, int]],
               methods: list[str]) -> dict[Any, dict[str, Any]]:
    """Run a ``mode`` worker for ``methods`` on ``cells`` in a fresh process:
    ``{cell: {method: result}}``."""
    def column(i: int) -> str:
        return ",".join(dict.fromkeys(str(c[i]) for c in cells))

    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode,
           "--models", column(0), "--attentions", column(1), "--lengths", column(2),
           "--methods", ",".join(methods), "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    cmd += ["--quick"] if args.quick else []
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        why = f"error: timed out after {args.timeout} s"
    else:
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith("{"):
                found = json.loads(line)
                return {c: found.get(f"{c[0]},{c[1]},{c[2]}", {}) for c in cells}
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        why = "error: " + (lines[-1].strip()[:160] if lines else f"exit {proc.returncode}")
    return {c: {m: {"status": why} for m in methods} for c in cells}


# ---------------------------------------------------------------------------- profile
def profile_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Phases, torch ops and relprop functions of one relprop method vs the gradient.

    Times are CPU time of the process (``time.process_time``), so that other processes on
    the cores inflate them less than wall time; with one thread that is the work done."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    import relprop

    explain_module = sys.modules["relprop.explain"]
    torch.set_num_threads(args.threads)
    ((name, attention, length),) = parse_cells(args)
    n, clock = args.repeats, time.process_time
    model = build_model(name, attention, args.quick)
    ids = token_ids(model, length)
    method = args.methods
    lrp, grad = make_method(method, name, model, ids), make_method("gradient", name, model, ids)

    # phases: wrap explain's steps in this process only (src/ is not touched)
    spent: dict[str, float] = {}

    def timed(label: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = clock()
            try:
                return func(*a, **k)
            finally:
                spent[label] = spent.get(label, 0.0) + clock() - t0
        return wrapper

    explain_module._backward = timed("backward", explain_module._backward)
    explain_module.find_unsupported = timed("graph check", explain_module.find_unsupported)
    relprop.composites.Composite.assign = timed("rule assignment",
                                                relprop.composites.Composite.assign)
    embed = model.get_input_embeddings()
    phases: dict[str, dict[str, list[float]]] = {"gradient": {}, method: {}}
    for _ in range(args.warmup + 1):
        grad()
        lrp()
    for _ in range(n):
        t0 = clock()
        embeds = embed(ids).detach().requires_grad_(True)
        logit = explained_logit(name, model(inputs_embeds=embeds))
        t1 = clock()
        torch.autograd.grad(logit, embeds)
        t2 = clock()
        for label, value in (("forward", t1 - t0), ("backward", t2 - t1), ("total", t2 - t0)):
            phases["gradient"].setdefault(label, []).append(value)
        spent.clear()
        t0 = clock()
        lrp()
        spent["total"] = clock() - t0
        spent["forward"] = 2 * spent["total"] - sum(spent.values())
        for label, value in spent.items():
            phases[method].setdefault(label, []).append(value)
    medians = {m: {k: statistics.median(v) for k, v in p.items()} for m, p in phases.items()}

    # torch ops: one profile per call, gradient and relprop alternating; per op the median
    # over the calls of its self time, scaled by that call's CPU time / wall time (the
    # profiler times ops in wall time), so that a call slowed by other processes counts less
    per_call: dict[str, dict[str, list[tuple[float, float]]]] = {"gradient": {}, method: {}}
    for _ in range(n):
        for label, run in (("gradient", grad), (method, lrp)):
            wall, cpu = time.perf_counter(), clock()
            with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                run()
            scale = (clock() - cpu) / max(time.perf_counter() - wall, 1e-9)
            seen: dict[str, tuple[float, float]] = {}
            for e in prof.key_averages(group_by_input_shape=True):
                shape = next((s for s in e.input_shapes if s), None) if e.input_shapes else None
                key = e.key + (f" {list(shape)}" if shape and e.key.startswith("aten::") else "")
                ms, count = seen.get(key, (0.0, 0.0))
                seen[key] = (ms + e.self_cpu_time_total / 1e3 * scale, count + e.count)
            for key, value in seen.items():
                per_call[label].setdefault(key, []).append(value)

    def median_of(values: list[tuple[float, float]], i: int) -> float:
        padded = values + [(0.0, 0.0)] * (n - len(values))  # calls where the op did not run
        return float(statistics.median(v[i] for v in padded))

    ops = {label: {key: (median_of(values, 0), median_of(values, 1))
                   for key, values in by_op.items()}
           for label, by_op in per_call.items()}

    stats_profile = cProfile.Profile(clock)
    stats_profile.enable()
    for _ in range(n):
        lrp()
    stats_profile.disable()
    package = str(Path(relprop.__file__).resolve().parent)
    functions = []
    for (file, line, func), (_, ncalls, tottime, cumtime, _) in pstats.Stats(
            stats_profile).stats.items():  # type: ignore[attr-defined]
        if file.startswith(package):
            where = f"{Path(file).relative_to(package)}:{line}({func})"
            functions.append((where, tottime * 1e3 / n, cumtime * 1e3 / n, ncalls / n))
    functions.sort(key=lambda f: -f[1])
    result = {"status": "ok", "phases": medians, "ops": ops, "functions": functions[:12]}
    return {f"{name},{attention},{length}": {method: result}}


def profile_report(result: dict[str, Any], cell: tuple[str, str, int], method: str,
                   repeats: int, threads: int) -> list[str]:
    out = [f"## Where the time goes: {method} on {cell[0]} {cell[1]} length {cell[2]}", "",
           f"One process, {threads} thread(s), CPU time of the process (not wall time), "
           f"{repeats} calls of each after warm-up.", ""]
    if result.get("status") != "ok":
        return out + [f"profile failed: {result.get('status')}"]
    grad_ph, lrp_ph = result["phases"]["gradient"], result["phases"][method]
    out += ["Phases, median per call (ms):", "", f"| phase | gradient | {method} |",
            "|---|---:|---:|"]
    for label in ("forward", "graph check", "rule assignment", "backward", "total"):
        g = f"{grad_ph[label] * 1e3:.1f}" if label in grad_ph else "–"
        out.append(f"| {label} | {g} | {lrp_ph.get(label, 0.0) * 1e3:.1f} |")
    grad_ops, lrp_ops = result["ops"]["gradient"], result["ops"][method]
    rows = []
    for key in set(grad_ops) | set(lrp_ops):
        g_ms, g_n = grad_ops.get(key, (0.0, 0.0))
        r_ms, r_n = lrp_ops.get(key, (0.0, 0.0))
        rows.append((r_ms - g_ms, key, g_ms, r_ms, g_n, r_n))
    rows.sort(reverse=True)
    count_g = sum(v[1] for k, v in grad_ops.items() if k.startswith("aten::"))
    count_r = sum(v[1] for k, v in lrp_ops.items() if k.startswith("aten::"))
    out += ["", "Torch ops (by first input shape) with the most extra self time per call "
            f"(torch.profiler; aten op calls per call: gradient {count_g:.0f}, relprop "
            f"{count_r:.0f}):", "",
            "| op | gradient ms (calls) | relprop ms (calls) | extra ms |", "|---|---:|---:|---:|"]
    for extra, key, g_ms, r_ms, g_n, r_n in rows[:10]:
        out.append(f"| `{key}` | {g_ms:.1f} ({g_n:.0f}) | {r_ms:.1f} ({r_n:.0f}) "
                   f"| {extra:+.1f} |")
    out += ["", "relprop functions by own time per call (cProfile; own time includes tensor "
            "operators written as Python operators, such as `@` and `*`):", "",
            "| function | own ms | cumulative ms | calls |", "|---|---:|---:|---:|"]
    for where, own, cum, calls in result["functions"][:8]:
        out.append(f"| `{where}` | {own:.1f} | {cum:.1f} | {calls:.0f} |")
    return out


# ---------------------------------------------------------------------------- report
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _ms(result: dict[str, Any], key: str = "time_s") -> float | None:
    if result.get("status") != "ok" or "times_s" not in result:
        return None
    return float(min(result["times_s"]) if key == "min" else result[key]) * 1e3


def paired_ratio(result: dict[str, Any], grad: dict[str, Any], key: str = "times_s"
                 ) -> float | None:
    """Median over the rounds of this method's time / the gradient's time in the same round
    (``key``: "times_s" wall time, "cpu_s" CPU time of the process)."""
    if result.get("status") != "ok" or key not in result or key not in grad:
        return None
    return statistics.median(t / g for t, g in zip(result[key], grad[key]))


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def table(cells: list[tuple[str, str, int]], results: dict[Any, dict[str, Any]],
          methods: list[str]) -> list[str]:
    out = ["| model | attention | length | method | time (ms) | min (ms) | time / grad "
           f"| within {GOAL}x | CPU time / grad | peak extra mem (MiB) | mem / grad |",
           "|---|---|---:|---|---:|---:|---:|:---:|---:|---:|---:|"]
    for cell in cells:
        grad = results[cell]["gradient"]
        for m in methods:
            r = results[cell][m]
            lead = f"| {cell[0]} | {cell[1]} | {cell[2]} | {m} |"
            t, ratio = _ms(r), paired_ratio(r, grad)
            if t is None:
                out.append(f"{lead} – | – | – | – | – | – | {r['status']} |")
                continue
            goal = ("yes" if ratio is not None and ratio <= GOAL else "**no**") \
                if m.startswith("relprop") else ""
            mem, gm = r.get("peak_bytes"), grad.get("peak_bytes")
            mem_text = f"{mem / 2**20:.1f}" if mem is not None else r.get("mem_status", "–")
            out.append(f"{lead} {t:.1f} | {_ms(r, 'min'):.1f} | {_x(ratio)} | {goal} "
                       f"| {_x(paired_ratio(r, grad, 'cpu_s'))} "
                       f"| {mem_text} | {_x(mem / gm if mem is not None and gm else None)} |")
    return out


def summary(cells: list[tuple[str, str, int]], results: dict[Any, dict[str, Any]],
            methods: list[str]) -> list[str]:
    lrp = [m for m in methods if m.startswith("relprop")]
    out = ["Time / gradient per cell, median of the per-round ratios of wall time (in "
           f"brackets: of CPU time); goal: wall time within {GOAL}x, ✗ where not.", "",
           "| model | attention | length | gradient (ms) | "
           + " | ".join(f"{m.split()[1]} / grad" for m in lrp) + " |",
           "|---|---|---:|---:|" + "---:|" * len(lrp)]
    met = total = 0
    for cell in cells:
        g = results[cell]["gradient"]
        gt = _ms(g)
        row = f"| {cell[0]} | {cell[1]} | {cell[2]} | {'–' if gt is None else f'{gt:.1f}'} |"
        for m in lrp:
            ratio, cpu = paired_ratio(results[cell][m], g), paired_ratio(results[cell][m], g,
                                                                          "cpu_s")
            if ratio is None:
                row += " – |"
                continue
            total += 1
            met += ratio <= GOAL
            row += f" {_x(ratio)} ({_x(cpu)}){' ✗' if ratio > GOAL else ''} |"
        out.append(row)
    out += ["", f"{met} of {total} relprop cells are within {GOAL}x of the gradient."]
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--attentions", default=",".join(ATTENTIONS))
    p.add_argument("--lengths", default="128,512")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated subset of: " + ", ".join(METHODS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per cell")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--quick", action="store_true",
                   help="tiny 2-layer configs, length 32, 3 rounds, shared processes")
    p.add_argument("--no-memory", action="store_true", help="time only")
    p.add_argument("--profile", action="store_true", help="add the profile of one cell")
    p.add_argument("--profile-cell", default="gpt2,sdpa,128", help="model,attention,length")
    p.add_argument("--profile-method", default="relprop attnlrp")
    p.add_argument("--profile-threads", type=int, default=1,
                   help="torch threads of the profile (1: CPU time is the work done)")
    p.add_argument("--profile-only", action="store_true", help="skip the table")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per worker")
    p.add_argument("--out", type=Path, help="also write the report to this file")
    p.add_argument("--json", type=Path, help="also write all results to this JSON file")
    p.add_argument("--worker", choices=("time", "memory", "profile"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 3, 1
        if "--lengths" not in (argv if argv is not None else sys.argv[1:]):
            args.lengths = "32"
    args.profile = args.profile or args.profile_only
    for what, given, known in (("model", args.models, MODELS),
                               ("attention", args.attentions, ATTENTIONS),
                               ("method", args.methods, METHODS),
                               ("profile method", args.profile_method, METHODS[1:])):
        unknown = [g for g in given.split(",") if g and g not in known]
        if unknown:
            p.error(f"unknown {what}(s) {unknown}; choose from {list(known)}")
    return args


def run_jobs(args: argparse.Namespace, cells: list[tuple[str, str, int]], methods: list[str]
             ) -> dict[Any, dict[str, Any]]:
    """Times per cell and memory per cell and method, each in a fresh process (quick: one
    process per kind of worker, since imports dominate)."""
    jobs = [("time", cells, methods), ("memory", cells, methods)] if args.quick else \
        [job for c in cells for job in [("time", [c], methods)]
         + [("memory", [c], [m]) for m in methods]]
    if args.no_memory:
        jobs = [job for job in jobs if job[0] == "time"]
    results: dict[Any, dict[str, Any]] = {c: {} for c in cells}
    started = time.perf_counter()
    for i, (mode, group, group_methods) in enumerate(jobs, 1):
        what = "all cells" if len(group) > 1 else " ".join(map(str, group[0]))
        print(f"[{i}/{len(jobs)}] {mode} {what}: {', '.join(group_methods)} ...", end="",
              file=sys.stderr, flush=True)
        done = run_worker(args, mode, group, group_methods)
        shown = []
        for cell in group:
            for m in group_methods:
                r = done[cell].get(m, {"status": "error: no result"})
                into = results[cell].setdefault(m, {"status": "ok"})
                if r["status"] != "ok":
                    shown.append(r["status"])
                    into["status" if mode == "time" else "mem_status"] = r["status"][:160]
                    continue
                into.update({k: v for k, v in r.items() if k != "status"})
                shown.append(f"{statistics.median(r['times_s']) * 1e3:.0f} ms" if mode == "time"
                             else f"{r['peak_bytes'] / 2**20:.0f} MiB")
        print(f" {', '.join(shown)} ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)
    return results


def run_profile(args: argparse.Namespace) -> list[str]:
    name, attention, length = args.profile_cell.split(",")
    cell = (name, attention, int(length))
    print(f"profile {args.profile_method} on {' '.join(map(str, cell))} ...", file=sys.stderr,
          flush=True)
    profile_args = argparse.Namespace(**{**vars(args), "threads": args.profile_threads})
    result = run_worker(profile_args, "profile", [cell], [args.profile_method])[cell]
    return profile_report(result.get(args.profile_method, {"status": "error: no result"}),
                          cell, args.profile_method, args.repeats, args.profile_threads)


def header(args: argparse.Namespace, table: bool) -> list[str]:
    shown = shlex.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    out = [f"# relprop on transformers vs the gradient ({_dt.date.today().isoformat()})", "",
           f"- command: `python {shown}`",
           f"- machine: {_cpu_model()}, {os.cpu_count()} CPUs visible, torch threads "
           f"{args.threads}; torch {version('torch')}, transformers {version('transformers')}, "
           f"python {platform.python_version()}, {platform.machine()}",
           f"- relprop checkout {engine._git_rev()}",
           "- " + ("tiny 2-layer configs (hidden 64, vocabulary 1000)" if args.quick else
                   "BERT-base (BertForSequenceClassification, 2 labels) and GPT-2 small "
                   "(GPT2LMHeadModel)") + ", random weights, frozen, batch 1; explained: "
           f"BERT's class-1 logit, GPT-2's logit of token {TOKEN} at the last position"]
    if table:
        out.append(
            f"- time: {args.repeats} rounds after {args.warmup} warm-up call(s) per method, "
            "each round calling every method once (order rotated), all methods of a cell in "
            "one process; time / grad is the median of the per-round ratios. "
            + ("Memory: not measured (--no-memory)" if args.no_memory else
               f"Memory: peak extra of {args.warmup + 1} calls, "
               + ("all in one process (quick: a smoke check only)" if args.quick
                  else "each method of each cell in a fresh process")))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        try:
            result = profile_worker(args) if args.worker == "profile" else worker(args)
        except Exception as e:  # reported in the table, never a crash of the parent
            result = {f"{m},{a},{n}": {method: _error(e) for method in args.methods.split(",")}
                      for m, a, n in parse_cells(args)}
        print(json.dumps(result), flush=True)
        return 0

    given = [m for m in args.methods.split(",") if m]
    methods = [m for m in METHODS if m in given or m == "gradient"]  # ratios need it
    cells = parse_cells(args)
    load_before = engine._loadavg()
    started = time.perf_counter()
    report = header(args, not args.profile_only)
    results: dict[Any, dict[str, Any]] = {}
    if not args.profile_only:
        results = run_jobs(args, cells, methods)
        kinds = sorted({r.get("mem", "") for c in results.values() for r in c.values()} - {""})
        report += ["", *table(cells, results, methods), "", *summary(cells, results, methods),
                   "", f"Peak memory measured as: {', '.join(kinds) or 'n/a'} (bench/engine.py)."]
    profile = ["", *run_profile(args)] if args.profile else []
    report += [f"Load average before / after: {load_before} / {engine._loadavg()}; other "
               "processes on the cores distort timings (a median far above the min is a sign).",
               f"Wall time of the run: {(time.perf_counter() - started) / 60:.1f} min.",
               *profile]
    text = "\n".join(report) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps([{"cell": list(c), "results": r}
                                         for c, r in results.items()], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
