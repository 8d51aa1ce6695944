#!/usr/bin/env python
"""Benchmark relprop against a plain input gradient (and zennit / captum when installed).

Models (random weights): ResNet-50 and VGG-16 from ``tests/helpers/models.py``; an
EfficientNet-B0-style net (depthwise convs, SiLU, squeeze-and-excitation), ViT-B/16 and a
Llama-style decoder (8 layers x 1024, 1,024 tokens, next-token logit) from
``relprop_bench.engine_models``. ``--small`` shrinks them for quick runs (112x112 images, a
4-block ViT, Llama 2 x 512 at 256 tokens), ``--quick`` to tiny smoke-test sizes.

For each model and batch size every method runs ``--calls`` times in a fresh process; the
table gives the median of the calls after the third (warm), the median of the first three
(a user explaining a few inputs per process sees these), their ratio, the ratio of the warm
time to the gradient's, and the peak *extra* memory:

* ``forward``                 ``model(x)`` under ``torch.no_grad()``
* ``gradient``                forward + ``torch.autograd.grad`` of one logit per sample w.r.t.
                              the input (for the decoder: w.r.t. the input embeddings, the
                              next-token logit): the reference every ratio is taken against
* ``relprop epsilon``         uniform ``Epsilon(1e-6)``
* ``floor epsilon``           (CNNs) the same relevance from ``relprop_bench.floor``: an
                              op-intercepting ε with nothing else (no checks, no records):
                              what any engine that sees each op from Python pays at least
* ``relprop epsilon_plus_flat`` / ``relprop epsilon_gamma_box``   (CNNs)
                              ``relprop.composites.epsilon_plus_flat()`` (z⁺ on convolutions)
                              and ``epsilon_gamma_box(low=-3.0, high=3.0)`` (γ)
* ``relprop attnlrp``         ``relprop.composites.attnlrp()`` (transformers)
* ``relprop K targets`` / ``relprop K calls``   ``--k`` classes per sample (next tokens at
                              the last K positions for the decoder) in one call, against K
                              separate calls; printed again as the K-target table
* ``zennit EpsilonPlusFlat`` / ``zennit EpsilonGammaBox``  (CNNs, only if zennit imports)
                              ``zennit.attribution.Gradient`` with the composite, entered per
                              call like ``relprop.explain`` does its own set-up per call.
* ``captum LRP``              ``captum.attr.LRP(model).attribute(x, target=t)`` (CNNs, only
                              if captum is importable; captum's default rules, ε everywhere)

``--device cuda`` and ``--dtype bfloat16|float16`` run the same table on a GPU in that dtype.
The footer prints the FLOP floor of each goal. For ratios on a busy machine, see
``bench/interleaved.py`` (process CPU time of interleaved rounds in one process).

zennit notes: zennit 0.5's top-level ``__init__`` imports ``zennit.torchvision``, which imports
torchvision. When torchvision is absent, the worker registers an empty placeholder module named
``torchvision.models.resnet`` (two dummy classes, no torchvision code) so that zennit imports.
For ResNet, BatchNorm is merged with ``SequentialMergeBatchNorm`` and the residual sums are made
explicit by an ``AttributeCanonizer`` that gives our ``BasicBlock``/``Bottleneck`` zennit's own
ResNet block forward (``torch.stack`` + ``zennit.layer.Sum``), i.e. what ``ResNetCanonizer``
does for torchvision models. The attribution target is a one-hot output gradient.

Before the baseline, each worker calls the method once on the tiny (``--quick``) variant of
the model so that one-time process costs (lazy imports such as the sympy stack torch loads
the first time autograd hooks or custom Functions run, ~35 MB of RSS; first-use
initialisation) are not charged to a call, while the allocator is not warmed for the real
sizes.

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

    python bench/engine.py                       # full run: 4 models x batch 1,8
    python bench/engine.py --quick --batches 1   # smoke check: tiny nets
    python bench/engine.py --small --models llama,vit_b16 --batches 1
    python bench/engine.py --device cuda --dtype bfloat16

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
for _path in (ROOT / "src", ROOT / "benchmarks" / "src"):  # relprop, relprop_bench from the
    if _path.is_dir() and str(_path) not in sys.path:    # checkout if they are not installed
        sys.path.append(str(_path))

METHODS: list[str] = [
    "forward",
    "gradient",
    "relprop epsilon",
    "floor epsilon",
    "relprop epsilon_plus_flat",
    "relprop epsilon_gamma_box",
    "relprop default",
    "relprop attnlrp",
    "zennit EpsilonPlusFlat",
    "zennit EpsilonGammaBox",
    "captum LRP",
    "relprop K targets",
    "relprop K calls",
]
#: methods that apply to convolutional nets only / to transformers only
CNN_ONLY = {"floor epsilon", "relprop epsilon_plus_flat", "relprop epsilon_gamma_box",
            "relprop default", "zennit EpsilonPlusFlat", "zennit EpsilonGammaBox", "captum LRP"}
TRANSFORMER_ONLY = {"relprop attnlrp"}
TRANSFORMERS = {"vit_b16", "llama"}
REQUIRES = {"relprop": "relprop", "zennit": "zennit", "captum": "captum"}


class NotInstalled(Exception):
    """The library a method needs cannot be imported."""


class Unavailable(Exception):
    """The library is importable but lacks the API the method needs."""


# ------------------------------------------------------------------------------ models
def build_model(name: str, quick: bool, small: bool = False) -> tuple[Any, int, int]:
    """Return (model, input side or sequence length, number of classes or vocabulary)."""
    from tests.helpers import models as M

    from relprop_bench import engine_models as E

    if name == "vgg16":
        return (M.vgg("D-tiny", num_classes=10), 32, 10) if quick else (M.vgg16(), 224, 1000)
    if name == "resnet50":
        if quick:
            return M.resnet((1, 1), block="bottleneck", width=8, num_classes=10), 32, 10
        return M.resnet50(), 112 if small else 224, 1000
    if name == "efficientnet_b0":
        if quick:
            return M.efficientnet(), 32, 10
        return E.efficientnet_b0(), 112 if small else 224, 1000
    if name == "vit_b16":
        if quick:
            return E.vit_b16(image=32, depth=1, num_classes=10), 32, 10
        side = 112 if small else 224
        return E.vit_b16(image=side, depth=4 if small else 12), side, 1000
    if name == "llama":
        if quick:
            return E.llama(depth=1, dim=64, length=16, vocab=100), 16, 100
        if small:
            return E.llama(depth=2, dim=512, length=256, vocab=8000), 256, 8000
        return E.llama(), 1024, 32000
    raise SystemExit(f"unknown model {name!r} (choose from vgg16, resnet50, efficientnet_b0, "
                     "vit_b16, llama)")


def applies(method: str, model: str) -> bool:
    """Whether ``method`` is measured on ``model`` (LRP composites for convolutions on CNNs,
    AttnLRP on transformers; zennit and captum have no transformer rules)."""
    if model in TRANSFORMERS:
        return method not in CNN_ONLY
    return method not in TRANSFORMER_ONLY


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
                num_classes: int, k: int = 10) -> tuple[Callable[[], None], str]:
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
        embed = getattr(model, "embed", None)
        if not x.is_floating_point() and embed is not None:  # w.r.t. the input embeddings
            def run() -> None:
                h = embed(x).detach().requires_grad_(True)
                out = model.from_embeddings(h)[:, -1]
                (grad,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), h)
            return run, "w.r.t. the input embeddings"

        def run() -> None:
            xg = x.detach().requires_grad_(True)
            out = model(xg)
            (grad,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), xg)
        return run, ""

    if method == "floor epsilon":
        from relprop_bench.floor import explain_epsilon

        def run() -> None:
            explain_epsilon(model, x, target)
        return run, "op interception with nothing else: the floor of relprop's design"

    if lib == "relprop":
        from relprop_bench.engine_methods import relprop_method

        return relprop_method(method, model, x, target, num_classes, k)

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
def _inputs(model_name: str, batch: int, side: int, num_classes: int, device: str,
            dtype: Any, gen: Any) -> tuple[Any, Any]:
    """The input (images, or token ids for the decoder) and one target per sample."""
    import torch

    if model_name == "llama":
        x = torch.randint(0, num_classes, (batch, side), generator=gen).to(device)
    else:
        x = torch.randn(batch, 3, side, side, generator=gen).to(device, dtype)
    return x, ((7 * torch.arange(batch)) % num_classes).to(device)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    device, dtype = args.device, getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(1234)
    try:
        # One-time process costs (lazy imports, e.g. torch's sympy stack that autograd hooks
        # pull in, ~35 MB; first-use initialisation) are paid before the baseline, by one
        # call on the small variant of the model (--quick): the allocator is not warmed for
        # the real sizes, so the first timed calls are those of a fresh process.
        tiny_model, tiny_side, tiny_classes = build_model(args.model, True)
        tiny_model = tiny_model.to(device, dtype).eval().requires_grad_(args.param_grad)
        tiny_x, tiny_t = _inputs(args.model, 1, tiny_side, tiny_classes, device, dtype, gen)
        make_method(args.method, tiny_model, tiny_x, tiny_t, tiny_classes, min(args.k, 4))[0]()
        del tiny_model, tiny_x
        model, side, num_classes = build_model(args.model, args.quick, args.small)
        model = model.to(device, dtype).eval().requires_grad_(args.param_grad)
        x, target = _inputs(args.model, args.batch, side, num_classes, device, dtype, gen)
        run, note = make_method(args.method, model, x, target, num_classes, args.k)
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
    for _ in range(args.calls):
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
    peak = mem.stop()
    first, warm = times[:3], times[3:] or times
    kept = 0  # relprop's rho(W) cache: memory held across calls, inside the peak
    if "relprop" in sys.modules:
        from relprop.rules import cache

        kept = cache.nbytes()
    return {"status": "ok", "time_s": statistics.median(warm), "first_s": statistics.median(first),
            "times_s": times, "peak_bytes": max(peak, 0), "mem": mem.kind, "note": note,
            "cache_bytes": kept}


def run_worker(args: argparse.Namespace, model: str, batch: int, method: str) -> dict[str, Any]:
    lib = method.split()[0]
    if lib in REQUIRES and importlib.util.find_spec(REQUIRES[lib]) is None:
        return {"status": "not installed"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--models", model,
           "--batches", str(batch), "--method", method, "--threads", str(args.threads),
           "--calls", str(args.calls), "--k", str(args.k), "--dtype", args.dtype,
           "--device", args.device]
    cmd += ["--small"] if args.small else []
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--models", default="resnet50,efficientnet_b0,vit_b16,llama",
                   help="comma-separated: vgg16, resnet50, efficientnet_b0, vit_b16, llama")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated subset of: " + ", ".join(METHODS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calls", type=int, default=6,
                   help="timed calls per cell, in a fresh process: the median of the first 3 "
                   "is the 'first calls' column, the median of the rest the warm time")
    p.add_argument("--k", type=int, default=10, help="targets per sample of the K rows")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--quick", action="store_true",
                   help="tiny variants of the models, 32x32 inputs (smoke check)")
    p.add_argument("--small", action="store_true",
                   help="112x112 images, ViT of 4 blocks, Llama 2 x 512 at 256 tokens")
    p.add_argument("--param-grad", action="store_true",
                   help="keep requires_grad=True on parameters (default: frozen)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    p.add_argument("--json", type=Path, help="also write all results to this JSON file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    return p


def _header(args: argparse.Namespace) -> None:
    import torch

    print(f"# relprop engine benchmark ({_dt.date.today().isoformat()})\n")
    env = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    print(f"- command: `{env}python {shlex.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}`")
    print(f"- relprop checkout {_git_rev()} (each cell imports relprop afresh: do not edit "
          "src/ during a run)")
    print(f"- torch {torch.__version__}, python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"torch threads {args.threads}, device {args.device}, dtype {args.dtype}")
    size = "quick (tiny nets)" if args.quick else "small (--small)" if args.small else "full size"
    print(f"- {size}, random weights, params {'trainable' if args.param_grad else 'frozen'}; "
          f"each cell in a fresh process, {args.calls} calls: 'first 3' = median of the first "
          "three, 'warm' = median of the rest")
    print()
    print("| model | batch | method | warm (ms) | first 3 (ms) | first / warm | time / grad "
          "| peak extra mem (MiB) | mem / grad | of which ρ(W) cache (MiB) | mem / grad "
          "without it | note |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def _row(model: str, batch: int, m: str, r: dict[str, Any], gt: float | None,
         gm: float | None) -> str:
    if r["status"] != "ok":
        return f"| {model} | {batch} | {m} | – | – | – | – | – | – | – | – | {r['status']} |"
    t, first, mem = r["time_s"], r["first_s"], r["peak_bytes"]
    kept = r.get("cache_bytes", 0)
    return (f"| {model} | {batch} | {m} | {t * 1e3:.1f} | {first * 1e3:.1f} "
            f"| {_ratio(first, t)} | {_ratio(t, gt)} | {mem / 2**20:.1f} | {_ratio(mem, gm)} "
            f"| {kept / 2**20:.1f} | {_ratio(max(mem - kept, 0), gm)} | {r.get('note', '')} |")


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.quick:
        args.calls = min(args.calls, 4)
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
    load_before = _loadavg()
    _header(args)
    all_results, mem_kinds = [], set()
    k_rows: list[str] = []
    for model in models:
        for batch in batches:
            results = {m: run_worker(args, model, batch, m) for m in methods
                       if applies(m, model)}
            grad = results["gradient"]
            gt = grad.get("time_s") if grad["status"] == "ok" else None
            gm = grad.get("peak_bytes") if grad["status"] == "ok" else None
            for m, r in results.items():
                all_results.append({"model": model, "batch": batch, "method": m, **r})
                mem_kinds.add(r.get("mem", ""))
                print(_row(model, batch, m, r, gt, gm), flush=True)
            many, calls = results.get("relprop K targets"), results.get("relprop K calls")
            if many and calls and many["status"] == calls["status"] == "ok":
                k_rows.append(f"| {model} | {batch} | {args.k} | {many['time_s'] * 1e3:.1f} "
                              f"| {calls['time_s'] * 1e3:.1f} "
                              f"| {_ratio(many['time_s'], calls['time_s'])} |")
    if k_rows:
        print("\n## K targets in one call vs K calls (goal ≤ 0.6x, FLOP floor 0.55x: the "
              "forward pass and each rule's modified forward are shared, the K input-vjps "
              "are not)\n")
        print("| model | batch | K | one call (ms) | K calls (ms) | ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        print("\n".join(k_rows))
    print(f"\npeak memory measured as: {', '.join(sorted(k for k in mem_kinds if k)) or 'n/a'} "
          "(see the docstring of bench/engine.py)")
    print(f"load average before / after: {load_before} / {_loadavg()}. Other processes on "
          "the cores distort timings (a median far above the min is a sign); memory is not "
          "affected.")
    print(FLOORS)
    if args.json:
        args.json.write_text(json.dumps(all_results, indent=2))
    return 0


FLOORS = """
## FLOP floors (why a goal can be out of reach)

A plain input gradient costs one forward F plus one input-vjp per layer (≈ F): 2F.
- uniform ε: rescales the signal elementwise, no extra product: floor 1.0x (goal ≤ 1.05x);
- z⁺ on convolutions (epsilon_plus_flat): one modified forward with W⁺ per layer: (2F + F) /
  2F = 1.5x; where a layer's input has both signs (the first layer, inputs after a SiLU or
  GELU), z⁺ needs two forwards (a⁺W⁺, a⁻W⁻) and two vjps: (F + 2F + 2F) / 2F = 2.5x for
  that layer;
- γ (epsilon_gamma_box): a modified forward; where outputs of both signs carry relevance a
  second vjp (W + γW⁻): 2.0x; 1.5x where every output has one sign (a ReLU follows); on
  inputs of both signs one forward with |W| and three vjps (W s, W⁺ s⁺ + W⁻ s⁻, and the
  a < 0 branch as their difference): (F + F + 3F) / 2F = 2.5x; the z^B first layer adds
  three forwards and three vjps of that layer;
- default (LRP_CMP:α2, α2β1 on a CNN's convolutions): on inputs ≥ 0 a forward with W⁺ and
  the vjps of W⁺ and W⁻ (one stacked vjp of twice the channels): (F + F + 2F) / 2F = 2.0x;
  on nets with grouped convolutions it is γ on every convolution (see γ). The first layer
  takes inputs of both signs: a⁺W⁺ + a⁻W⁻ (one forward on [a⁺, a⁻] with [W⁺, W⁻]: 2F₁) and
  four vjps (one through [[W⁺, W⁻], [W⁻, W⁺]]: 4F₁) against the gradient's F₁ + F₁, so
  (1 + 2 + 4) F₁ instead of 4 F₁: +3F₁. ResNet-50's 7x7 stem (3→64, 112²) is 118 M of its
  4.1 G multiply-adds (2.9 %), so by FLOPs the floor is 2.0 + 3 · 0.029 / 2 = 2.04x. By time
  the stem costs less than its FLOPs: a convolution's vjp onto 3 channels costs what one
  onto 6 does (12 ms at batch 1 on one thread, 24 ms for the block's 128 → 6), so the
  stem runs at 2x the gradient's, like the other layers. Above the FLOPs: αβ's passes over
  each output (z⁺ − z, z·grad, the relevance-change report's two comparisons, two dots and
  a sum, the clamp, the two quotients: 9, against the gradient's one ReLU mask), which
  weigh most on ResNet's 1x1 expansions (outputs 4x their inputs, 64 multiply-adds per
  output element): about +0.1x at batch 1. Measured (ResNet-50, 224², 1 thread, min over
  interleaved rounds): 2.15–2.20x at batch 1, 1.93–2.00x at batch 8 (where αβ runs the
  batch in chunks whose terms stay in the cache, and the gradient does not);
- attnlrp: ε on linear layers (1.0x) plus the softmax and norm rules (elementwise): ≈ 1.0x,
  goal ≤ 1.1x;
- K targets: F + K·(backward) against K·(F + backward); with backward ≈ F (ε) that is
  (1 + K) / 2K = 0.55x at K = 10; z⁺/γ share their modified forward too (lower floor).

Memory: a plain input gradient with frozen weights keeps neither a dense layer's input nor its
output (the vjp needs the weight only). ε needs each dense layer's output z (its rule is the
ratio z / (z + ε)), which relprop keeps where nothing else does; it keeps no dense layer's
input, and no output of a norm or activation that only dense layers read (computed again on
the way back). On a transformer that floor is the attention-output and second MLP
projections' outputs (ViT-B/16: 1.2 MiB per block at batch 1) or the query, key/value,
attention-output and down projections' (the Llama-style decoder: 14 MiB per layer at 1,024
tokens): 1.11-1.12x of the gradient's peak by bytes. The RSS high-water mark adds the
allocator's slack (±0.05x between runs): measured 1.05-1.21x.

Beyond FLOPs, any engine that sees each op call from Python pays for it, and the
`floor epsilon` row measures how much: `relprop_bench.floor` computes uniform ε (the same
relevance as relprop's, tests/test_bench_floor.py) through a `TorchFunctionMode` and one
autograd Function per layer op, with nothing else: no checks, records, rule dispatch or
in-place protection. It is 1.03-1.21x at batch 1 on ResNet-50 and EfficientNet-B0 (1 thread,
224²; 1.05-1.09x and 1.15-1.16x in session 13's runs): ε's rescale is three elementwise passes
over each layer's output, and a Python node per op costs ≈ 40 us forward and back. The
≤ 1.05x goal for ε at batch 1 is below that floor (`bench/interleaved.py`'s last table says
so per run). What relprop adds to it is its own Python per op (`bench/fixed_cost.py` splits
it, at 8² where compute is negligible): module context (the module path and call count of
every op, from global module hooks) ≈ 1.5-2 ms on EfficientNet-B0, saved-tensor protection
≈ 0.8 ms, naming the graph nodes for the graph check ≈ 0.5 ms, the per-call checks and
teardown ≈ 2.6 ms, routing each call with its record, and the rule's dispatch on the way
back: ≈ 10 ms on EfficientNet-B0's 239 ops at batch 1 (ε 1.35-1.39x), ≈ 8 ms on ResNet-50's
175 (ε 1.06-1.13x, 2-9 ms above the floor row of the same runs), a few per cent at batch 8
(ε 1.03x and 1.05x with glibc's trimming off, at or below the floor row).
Page faults move every ratio: the C library's allocator gives freed memory back to the OS,
and a call that needs it again takes fresh pages (a plain gradient of EfficientNet-B0 at
batch 1: 3-6 thousand faults per call in a process of its own). At batch 8 every buffer above
32 MiB is fresh memory, and the faults it takes (30 to 270 thousand per call, the gradient's
included) vary with the allocator's state: ratios move by ±15 % between runs, and a method
run after bigger work in the same process (interleaved rows) pays fewer than in a process of
its own (fresh-process rows).
"""


if __name__ == "__main__":
    sys.exit(main())
