#!/usr/bin/env python
"""Benchmark relprop against a plain input gradient (and zennit / captum when installed).

For each model (VGG-16, ResNet-50 from ``tests/helpers/models.py``, random weights, 224x224
input) and batch size, this measures for every method the median wall time of ``--repeats``
calls after ``--warmup`` calls, and the peak *extra* memory of those calls:

* ``forward``                 ``model(x)`` under ``torch.no_grad()``
* ``gradient``                forward + ``torch.autograd.grad`` of one logit per sample w.r.t.
                              the input (the reference every ratio is taken against)
* ``relprop epsilon_plus_flat`` / ``relprop epsilon_gamma_box``
                              ``relprop.explain(model, x, target=t, composite=...)`` with
                              ``relprop.composites.epsilon_plus_flat()`` and
                              ``relprop.composites.epsilon_gamma_box(low=-3.0, high=3.0)``
* ``zennit EpsilonPlusFlat`` / ``zennit EpsilonGammaBox``  (only if zennit is importable)
                              ``zennit.attribution.Gradient`` with the composite, entered per
                              call like ``relprop.explain`` does its own set-up per call.
* ``captum LRP``              ``captum.attr.LRP(model).attribute(x, target=t)`` (only if
                              captum is importable; captum's default rules, epsilon everywhere)

zennit notes: zennit 0.5's top-level ``__init__`` imports ``zennit.torchvision``, which imports
torchvision. When torchvision is absent, the worker registers an empty placeholder module named
``torchvision.models.resnet`` (two dummy classes, no torchvision code) so that zennit imports.
For ResNet, BatchNorm is merged with ``SequentialMergeBatchNorm`` and the residual sums are made
explicit by an ``AttributeCanonizer`` that gives our ``BasicBlock``/``Bottleneck`` zennit's own
ResNet block forward (``torch.stack`` + ``zennit.layer.Sum``), i.e. what ``ResNetCanonizer``
does for torchvision models. The attribution target is a one-hot output gradient.

Before the baseline, each worker calls the method once on a 1x3x32x32 input so that one-time
process costs (lazy imports such as the sympy stack torch loads the first time autograd hooks
or custom Functions run, ~35 MB of RSS; first-use initialisation) are not charged to a call.

Every measurement runs in a fresh subprocess (``--worker``), so allocator state and caches of
one method never leak into another. Model parameters are frozen (``requires_grad_(False)``)
unless ``--param-grad`` is given, so no method pays for weight-gradient bookkeeping. Targets are
fixed class indices ``(7 * i) % num_classes``.

Peak memory, CPU: once imports, model, input, target and composite exist, the worker runs
``gc.collect()`` and glibc's ``malloc_trim(0)`` (so memory freed during set-up is returned to
the OS and cannot be reused unseen), records its resident set size (RSS) as the baseline and
resets the kernel's RSS high-water mark (writes ``5`` to ``/proc/self/clear_refs``, Linux >=
4.0). After the warm-up and timed calls it reads ``VmHWM`` from ``/proc/self/status``:
peak extra = VmHWM - baseline. This is exact at page granularity (no sampling) and counts
every allocation that touches memory (tensors, oneDNN scratch, Python objects). Where the
high-water mark cannot be reset, a thread samples ``/proc/self/statm`` every 0.5 ms instead
(may miss very short spikes); without ``/proc``, the ``ru_maxrss`` delta is used (meaningless
if set-up was the peak). The footer of the table says which method was used.

Peak memory, CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated()`` minus
``torch.cuda.memory_allocated()`` at the baseline, after ``reset_peak_memory_stats()``.

Usage::

    python bench/engine.py                       # full run: vgg16,resnet50 x batch 1,8
    python bench/engine.py --quick               # smoke check: small nets, 32x32, 1 repeat
    python bench/engine.py --models resnet50 --batches 1 --threads 2 --repeats 5

The script never fails on a missing or broken method: such rows say "not installed" or
"error: ..." and the exit status stays 0 (unless the arguments themselves are invalid).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.helpers.models
if (ROOT / "src").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.append(str(ROOT / "src"))  # relprop from the checkout if it is not installed

METHODS: list[str] = [
    "forward",
    "gradient",
    "relprop epsilon_plus_flat",
    "relprop epsilon_gamma_box",
    "zennit EpsilonPlusFlat",
    "zennit EpsilonGammaBox",
    "captum LRP",
]
REQUIRES = {"relprop": "relprop", "zennit": "zennit", "captum": "captum"}


class NotInstalled(Exception):
    """The library a method needs cannot be imported."""


class Unavailable(Exception):
    """The library is importable but lacks the API the method needs."""


# ------------------------------------------------------------------------------ models
def build_model(name: str, quick: bool) -> tuple[Any, int, int]:
    """Return (model, input side, number of classes)."""
    from tests.helpers import models as M

    if name == "vgg16":
        return (M.vgg("D-tiny", num_classes=10), 32, 10) if quick else (M.vgg16(), 224, 1000)
    if name == "resnet50":
        if quick:
            return M.resnet((1, 1), block="bottleneck", width=8, num_classes=10), 32, 10
        return M.resnet50(), 224, 1000
    raise SystemExit(f"unknown model {name!r} (choose from vgg16, resnet50)")


# ----------------------------------------------------------------------------- methods
def _stub_torchvision() -> None:
    """Let ``import zennit`` succeed without torchvision (see module docstring)."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return
    import torch

    names = ["torchvision", "torchvision.models", "torchvision.models.resnet"]
    mods = {n: types.ModuleType(n) for n in names}
    mods["torchvision.models.resnet"].BasicBlock = type(  # type: ignore[attr-defined]
        "BasicBlock", (torch.nn.Module,), {})
    mods["torchvision.models.resnet"].Bottleneck = type(  # type: ignore[attr-defined]
        "Bottleneck", (torch.nn.Module,), {})
    mods["torchvision"].models = mods["torchvision.models"]  # type: ignore[attr-defined]
    mods["torchvision.models"].resnet = mods["torchvision.models.resnet"]  # type: ignore
    sys.modules.update(mods)


def make_method(method: str, model: Any, x: Any, target: Any,
                num_classes: int) -> tuple[Callable[[], None], str]:
    """Return a closure that runs ``method`` once, and a note for the table.

    Raises NotInstalled / Unavailable when the library or its API is missing."""
    import torch

    lib = method.split()[0]
    if lib in REQUIRES and importlib.util.find_spec(REQUIRES[lib]) is None:
        raise NotInstalled(lib)

    if method == "forward":
        def run() -> None:
            with torch.no_grad():
                model(x)
        return run, ""

    if method == "gradient":
        def run() -> None:
            xg = x.detach().requires_grad_(True)
            out = model(xg)
            (grad,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), xg)
        return run, ""

    if lib == "relprop":
        import relprop

        if not hasattr(relprop, "explain") or not hasattr(relprop, "composites"):
            raise Unavailable("relprop.explain / relprop.composites do not exist")
        if method.endswith("epsilon_plus_flat"):
            composite = relprop.composites.epsilon_plus_flat()
        else:
            composite = relprop.composites.epsilon_gamma_box(low=-3.0, high=3.0)

        def run() -> None:
            relprop.explain(model, x, target=target, composite=composite)
        return run, ""

    if lib == "zennit":
        _stub_torchvision()
        from tests.helpers import models as M
        from zennit import composites as zc
        from zennit.attribution import Gradient
        from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm
        from zennit.layer import Sum
        from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

        def block_map(name: str, module: Any) -> dict[str, Any] | None:
            for cls, canon in ((M.BasicBlock, ResNetBasicBlockCanonizer),
                               (M.Bottleneck, ResNetBottleneckCanonizer)):
                if isinstance(module, cls):
                    return {"forward": canon.forward.__get__(module), "canonizer_sum": Sum()}
            return None

        canonizers: list[Any] = []
        note = ""
        if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
            canonizers = [SequentialMergeBatchNorm(), AttributeCanonizer(block_map)]
            note = "BN merged, residual sums via zennit's ResNet block canonizer"
        if method.endswith("EpsilonPlusFlat"):
            zcomp = zc.EpsilonPlusFlat(canonizers=canonizers)
        else:
            zcomp = zc.EpsilonGammaBox(low=-3.0, high=3.0, canonizers=canonizers)
        onehot = torch.nn.functional.one_hot(target, num_classes).to(x)

        def run() -> None:
            with Gradient(model=model, composite=zcomp) as attributor:
                attributor(x, onehot)
        return run, note

    if lib == "captum":
        from captum.attr import LRP
        from tests.helpers import models as M

        lrp = LRP(model)
        note = "captum default rules (epsilon everywhere)"
        if any(isinstance(m, (M.BasicBlock, M.Bottleneck)) for m in model.modules()):
            note += "; residual adds get no rule in captum: timing only"

        def run() -> None:
            lrp.attribute(x, target=target)
        return run, note

    raise SystemExit(f"unknown method {method!r}")


# ------------------------------------------------------------------------------ memory
def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _malloc_trim() -> None:
    """Hand memory that glibc keeps after ``free`` back to the OS (no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


class PeakMemory:
    """Peak extra memory of a code region; see the module docstring for the methods."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.kind = ""
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import torch

        gc.collect()
        _malloc_trim()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.kind = "cuda max_memory_allocated"
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            return
        rss = _rss_bytes()
        if rss is not None:
            self.base = rss
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                hwm = _hwm_bytes()
                if hwm is not None and hwm <= rss + (1 << 20):
                    self.kind = "RSS high-water mark"
                    return
            except OSError:
                pass
            self.kind = "RSS sampled 0.5 ms"
            self._peak = rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
            return
        import resource

        self.kind = "ru_maxrss delta (unreliable)"
        scale = 1 if sys.platform == "darwin" else 1024
        self._scale = scale
        self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None and rss > self._peak:
                self._peak = rss
            time.sleep(0.0005)

    def stop(self) -> int:
        import torch

        if self.kind.startswith("cuda"):
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated() - self.base)
        if self.kind == "RSS high-water mark":
            return (_hwm_bytes() or self.base) - self.base
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            return self._peak - self.base
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * self._scale - self.base


# ------------------------------------------------------------------------------ worker
def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    device = args.device
    model, side, num_classes = build_model(args.model, args.quick)
    model = model.to(device).eval().requires_grad_(args.param_grad)
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(args.batch, 3, side, side, generator=gen).to(device)
    target = ((7 * torch.arange(args.batch)) % num_classes).to(device)
    try:
        run, note = make_method(args.method, model, x, target, num_classes)
        # One-time process costs (lazy imports, e.g. torch's sympy stack that autograd hooks
        # pull in, ~35 MB) are paid before the baseline, by one call on a 1x3x32x32 input.
        tiny = torch.randn(1, 3, 32, 32, generator=gen).to(device)
        make_method(args.method, model, tiny, target[:1], num_classes)[0]()
        del tiny
    except NotInstalled:
        return {"status": "not installed"}
    except Unavailable as e:
        return {"status": f"not available: {e}"}

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    mem = PeakMemory(device)
    mem.start()
    times = []
    for i in range(args.warmup + args.repeats):
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = mem.stop()
    return {"status": "ok", "time_s": statistics.median(times), "times_s": times,
            "peak_bytes": max(peak, 0), "mem": mem.kind, "note": note}


def run_worker(args: argparse.Namespace, model: str, batch: int, method: str) -> dict[str, Any]:
    lib = method.split()[0]
    if lib in REQUIRES and importlib.util.find_spec(REQUIRES[lib]) is None:
        return {"status": "not installed"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--models", model,
           "--batches", str(batch), "--method", method, "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--device", args.device]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--param-grad"] if args.param_grad else []
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"error: timed out after {args.timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    why = lines[-1].strip() if lines else f"exit status {proc.returncode}"
    return {"status": f"error: {why[:160]}"}


# ------------------------------------------------------------------------------ report
def _git_rev() -> str:
    """Commit of the checkout (+dirty if src/ has uncommitted changes), or 'unknown'."""
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--models", default="vgg16,resnet50")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated subset of: " + ", ".join(METHODS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true",
                   help="small variants of the models, 32x32 inputs, 1 repeat (smoke check)")
    p.add_argument("--param-grad", action="store_true",
                   help="keep requires_grad=True on parameters (default: frozen)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    p.add_argument("--json", type=Path, help="also write all results to this JSON file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 1, 1

    if args.worker:
        args.model, args.batch = args.models, int(args.batches)
        try:
            result = worker(args)
        except Exception as e:  # reported as a row, never a crash of the parent
            result = {"status": f"error: {type(e).__name__}: {str(e).splitlines()[0][:140]}"
                      if str(e) else f"error: {type(e).__name__}"}
        print(json.dumps(result), flush=True)
        return 0

    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batches.split(",") if b]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {METHODS}")
    methods = [m for m in METHODS if m in methods or m == "gradient"]  # ratios need gradient

    import torch

    load_before = _loadavg()
    print(f"# relprop engine benchmark ({_dt.date.today().isoformat()})\n")
    env = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    print(f"- command: `{env}python {shlex.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}`")
    print(f"- relprop checkout {_git_rev()} (each cell imports relprop afresh: do not edit "
          "src/ during a run)")
    print(f"- torch {torch.__version__}, python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"torch threads {args.threads}, device {args.device}")
    print(f"- {'quick (small nets, 32x32)' if args.quick else '224x224 input'}, "
          f"random weights, params {'trainable' if args.param_grad else 'frozen'}, "
          f"median of {args.repeats} after {args.warmup} warm-up; each cell in a fresh process")
    print()
    print("| model | batch | method | time (ms) | min (ms) | time / grad | peak extra mem (MiB) "
          "| mem / grad | note |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|")
    all_results = []
    mem_kinds: set[str] = set()
    for model in models:
        for batch in batches:
            results = {m: run_worker(args, model, batch, m) for m in methods}
            grad = results["gradient"]
            gt = grad.get("time_s") if grad["status"] == "ok" else None
            gm = grad.get("peak_bytes") if grad["status"] == "ok" else None
            for m in methods:
                r = results[m]
                all_results.append({"model": model, "batch": batch, "method": m, **r})
                if r["status"] != "ok":
                    print(f"| {model} | {batch} | {m} | – | – | – | – | – | {r['status']} |",
                          flush=True)
                    continue
                t, mem = r["time_s"], r["peak_bytes"]
                mem_kinds.add(r["mem"])
                tmin = min(r["times_s"])
                print(f"| {model} | {batch} | {m} | {t * 1e3:.1f} | {tmin * 1e3:.1f} "
                      f"| {_ratio(t, gt)} "
                      f"| {mem / 2**20:.1f} | {_ratio(mem, gm)} | {r.get('note', '')} |",
                      flush=True)
    print(f"\npeak memory measured as: {', '.join(sorted(mem_kinds)) or 'n/a'} "
          "(see the docstring of bench/engine.py)")
    print(f"load average before / after: {load_before} / {_loadavg()}. Other processes on "
          "the cores distort timings (a median far above the min is a sign); memory is not "
          "affected.")
    if args.json:
        args.json.write_text(json.dumps(all_results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
