"""Property-based fuzzing of ``relprop.explain`` on random small float64 nets.

Every net of :mod:`tests.helpers.netgen` is explained with five presets and checked for:

1. ``output``: ``expl.output`` is the plain ``model(x)`` (the explained function is the model's);
2. ``conservation``: on bias-free nets, under LRP-0, ε = 1e-12 and γ/z^B with ε and the
   stabiliser at 1e-12, ``relevance.sum() + sources == explained`` per sample;
3. ``lrp0_is_gxi``: on nets with only ReLU-like nonlinearities, LRP-0 equals Gradient × Input;
4. ``unsupported_error``: a net with an op that has no rule raises
   ``UnsupportedOperationError`` naming the module path and the op;
5. ``untouched``: the model is as it was (state bitwise, ``requires_grad``, ``.grad``, modes,
   hooks, grad mode) after every explanation, and after an error (an unsupported op, or an
   out-of-range target explained under ``torch.no_grad()``);
6. ``finite``: every map and explained value is finite;
7. ``spelling``: the net with canonical spellings (``F.linear`` for ``x @ W.t() + b``,
   ``relu`` for ``clamp(min=0)`` and ``ReLU(inplace=True)``, out-of-place ops for in-place
   statements, contiguous memory for ``channels_last``) gets the same maps under every preset.

The default test draws from the whole grammar, including the cases relprop once explained
wrongly or refused (in-place statements, ``clamp`` as ReLU, ``x @ W.t() + b``,
``channels_last``, adaptive pooling of a permuted activation: ``NEW_OPTIONS``), each of which
also has a test of its own. Thousands of nets run with ``-m slow``.
``python -m tests.test_fuzz --nets 300`` prints how many nets were checked for each property
and how many passed (``--new`` takes the options to mix in; all of them by default).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from torch import Tensor

import relprop
from relprop import composites as C
from relprop import rules as R

from .helpers.netgen import NEW_OPTIONS, GeneratedNet, build, nets, respell
from .helpers.snapshots import assert_unchanged, snapshot

#: random nets break αβ's assumption often; the warning that says so is tested elsewhere
pytestmark = pytest.mark.filterwarnings("ignore::relprop.RuleAssumptionWarning")

#: the presets every net is explained with
PRESETS: dict[str, Callable[[], C.Composite]] = {
    "lrp0": lambda: C.uniform(R.Zero()),
    "epsilon_plus": lambda: C.epsilon_plus(),
    "epsilon_alpha2_beta1": lambda: C.epsilon_alpha2_beta1(),
    "epsilon_gamma_box": lambda: C.epsilon_gamma_box(low=-3.0, high=3.0),
    "montavon2019": lambda: C.montavon2019(),
}
#: composites that conserve relevance exactly on bias-free nets (up to a 1e-12 stabiliser)
CONSERVING: dict[str, Callable[[], C.Composite]] = {
    "lrp0": lambda: C.uniform(R.Zero()),
    "epsilon_tiny": lambda: C.uniform(R.Epsilon(1e-12)),
    # epsilon_gamma_box with every stabiliser at 1e-12 (BatchNorm's default ε is 1e-6)
    "gamma_box_tiny": lambda: C.Composite([
        (C.first_layers(1), R.ZBox(-3.0, 3.0, stabilizer=1e-12)),
        (C.kind("linear"), R.Epsilon(1e-12)),
        (C.kind("conv"), R.Gamma(0.25, stabilizer=1e-12)),
        (C.kind("norm"), R.Epsilon(1e-12)),
    ], "gamma_box_tiny"),
}
#: z^B gives relevance to inputs of value 0, which relprop absorbs (documented) unless the
#: input is the explained batch itself: it cannot conserve after a ReLU before the first layer
NEEDS_NONZERO_FIRST_INPUT = {"gamma_box_tiny"}
#: how each unsupported op of the grammar is named in the error message
OP_NAMES = {"exp": "exp", "abs": "abs", "sort": "sort", "logsumexp": "logsumexp",
            "cumprod": "cumprod", "custom": "_DoubleBackward"}
OUTPUT_RTOL = 1e-9
SPELLING_RTOL = 1e-9
CONSERVATION_RTOL = 1e-6
GXI_RTOL = 1e-6


@dataclass
class Report:
    """Which properties were checked on one net, and the failures (empty: all passed)."""

    checked: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)

    def check(self, prop: str, ok: bool, message: str) -> None:
        self.checked[prop] += 1
        if not ok:
            self.failed[prop] += 1
            self.messages.append(f"[{prop}] {message}")


def _scale(t: Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def _gradient_x_input(net: GeneratedNet) -> Tensor:
    x = net.x.detach().clone().requires_grad_(True)
    out = net.model(x)
    selected = out.gather(1, net.target[:, None]).sum()
    (grad,) = torch.autograd.grad(selected, x)
    return (x * grad).detach()


def _total(expl: relprop.Explanation) -> Tensor:
    total = expl.relevance_sum()
    for source in expl.sources.values():
        total = total + source.reshape(source.shape[0], -1).sum(dim=1)
    return total


def _explain(net: GeneratedNet, report: Report, before: dict[str, object], prop: str,
             composite: C.Composite) -> relprop.Explanation | None:
    """Explain; an unexpected exception, or a model left changed, is a failure."""
    try:
        expl = relprop.explain(net.model, net.x, net.target, composite=composite)
    except Exception as error:  # noqa: BLE001 - any error on a supported net is a finding
        report.check("no_error", False, f"{prop}: {type(error).__name__}: {error}")
        return None
    finally:
        _untouched(net, report, before, f"after {prop}")
    report.check("no_error", True, "")
    return expl


def _untouched(net: GeneratedNet, report: Report, before: dict[str, object], when: str) -> None:
    try:
        assert_unchanged(before, snapshot(net.model))
        ok, message = True, ""
    except AssertionError as error:
        ok, message = False, f"{when}: model changed: {error}"
    report.check("untouched", ok, message)


def check_net(net: GeneratedNet) -> Report:
    """Check every property that applies to ``net``; never raises on a property failure."""
    report = Report()
    model, x = net.model, net.x
    before = snapshot(model)
    with torch.no_grad():
        plain = model(x)
    _untouched(net, report, before, "after the plain forward pass")

    if net.unsupported:
        try:
            relprop.explain(model, x, net.target, composite=PRESETS["lrp0"]())
            report.check("unsupported_error", False, "no UnsupportedOperationError raised")
        except relprop.UnsupportedOperationError as error:
            message = str(error)
            missing = [f"'{path}' {OP_NAMES[op]}" for path, op in net.unsupported_ops
                       if f"'{path}'" not in message or OP_NAMES[op] not in message]
            report.check("unsupported_error", not missing,
                         f"the message does not name {missing}: {message}")
        except Exception as error:  # noqa: BLE001
            report.check("unsupported_error", False,
                         f"{type(error).__name__} instead of UnsupportedOperationError: {error}")
        _untouched(net, report, before, "after the unsupported-op error")
        return report

    explanations: dict[str, relprop.Explanation] = {}
    for name, make in PRESETS.items():
        expl = _explain(net, report, before, name, make())
        if expl is None:
            continue
        explanations[name] = expl
        diff = float((expl.output - plain).abs().max())
        report.check("output", diff <= OUTPUT_RTOL * (1.0 + _scale(plain)),
                     f"{name}: |expl.output - model(x)| = {diff:.3e}")
        finite = bool(torch.isfinite(expl.relevance).all() and torch.isfinite(expl.explained)
                      .all() and all(torch.isfinite(s).all() for s in expl.sources.values()))
        report.check("finite", finite, f"{name}: non-finite relevance or explained value")

    if net.bias_free:
        for name, make in CONSERVING.items():
            if name in NEEDS_NONZERO_FIRST_INPUT and net.zeros_before_first_layer:
                continue
            expl = explanations.get(name) or _explain(net, report, before, name, make())
            if expl is None:
                continue
            total, explained = _total(expl), expl.explained
            gap = float((total - explained).abs().max())
            bound = CONSERVATION_RTOL * _scale(explained) + 1e-12
            report.check(f"conservation_{name}", gap <= bound,
                         f"{name}: sum R = {total.tolist()}, explained = {explained.tolist()}"
                         f" (|diff| {gap:.3e} > {bound:.3e})")

    if net.relu_only and "lrp0" in explanations:
        relevance, gxi = explanations["lrp0"].relevance, _gradient_x_input(net)
        diff = float((relevance - gxi).abs().max())
        bound = GXI_RTOL * _scale(gxi) + 1e-12
        sums = (explanations["lrp0"].relevance_sum().tolist(),
                gxi.reshape(gxi.shape[0], -1).sum(1).tolist())
        report.check("lrp0_is_gxi", diff <= bound,
                     f"max |LRP-0 - GxI| = {diff:.3e} > {bound:.3e} (max |GxI| "
                     f"{_scale(gxi):.3e}; per-sample sums LRP-0 {sums[0]}, GxI {sums[1]})")
        _untouched(net, report, before, "after Gradient x Input")

    twin = respell(net)
    if twin is not None:
        for name, expl in explanations.items():
            try:
                other = relprop.explain(twin.model, twin.x, twin.target,
                                        composite=PRESETS[name]()).relevance
            except Exception:  # noqa: BLE001 - a failure of the plain spelling: checked elsewhere
                continue
            diff = float((expl.relevance - other).abs().max())
            bound = SPELLING_RTOL * (_scale(other) + 1e-3)
            report.check("spelling", diff <= bound,
                         f"{name}: max |relevance - relevance of the respelled net| = "
                         f"{diff:.3e} (max |R| {_scale(other):.3e}; respelled: "
                         f"{[f for f in twin.features if f.startswith('respelled')]})")

    # an error after the forward pass, under no_grad: the model and grad mode must be restored
    bad_target = torch.full_like(net.target, int(plain.shape[1]) + 5)
    with torch.no_grad():
        try:
            relprop.explain(model, x, bad_target, composite=PRESETS["lrp0"]())
            report.check("error_on_bad_target", False, "an out-of-range target was accepted")
        except relprop.InvalidInputError:
            report.check("error_on_bad_target", True, "")
        except Exception as error:  # noqa: BLE001
            report.check("error_on_bad_target", False,
                         f"{type(error).__name__} instead of InvalidInputError: {error}")
        before_no_grad = {**before, "grad_mode": False}
        _untouched(net, report, before_no_grad, "after an error under torch.no_grad()")
    return report


def assert_properties(net: GeneratedNet) -> None:
    report = check_net(net)
    assert not report.messages, "\n".join([net.describe(), *report.messages])


FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(FUZZ, max_examples=300)
@given(net=nets(new=NEW_OPTIONS))
def test_fuzz_default_grammar(net: GeneratedNet) -> None:
    assert_properties(net)


@settings(FUZZ, max_examples=150)
@given(net=nets(unsupported=False, max_blocks=3))
def test_fuzz_small_supported_nets(net: GeneratedNet) -> None:
    """Short nets with no unsupported op: every one reaches the numerical checks."""
    assert_properties(net)


@pytest.mark.parametrize("option", NEW_OPTIONS)
def test_fuzz_new_case(option: str) -> None:
    """One of the cases relprop once got wrong, mixed into the grammar."""

    @settings(FUZZ, max_examples=60)
    @given(net=nets(new=[option], unsupported=False))
    def run(net: GeneratedNet) -> None:
        assert_properties(net)

    run()


@pytest.mark.slow
@settings(FUZZ, max_examples=3000)
@given(net=nets(max_blocks=8))
def test_fuzz_default_grammar_many(net: GeneratedNet) -> None:
    assert_properties(net)


@pytest.mark.slow
@settings(FUZZ, max_examples=2000)
@given(net=nets(new=NEW_OPTIONS, max_blocks=8))
def test_fuzz_all_options_many(net: GeneratedNet) -> None:
    assert_properties(net)


def counts(n: int, new: tuple[str, ...] = (), start: int = 0, verbose: bool = False
           ) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """Nets ``build(start) .. build(start + n - 1)``: per property, how many nets were checked
    and how many passed, and how often each grammar feature occurred."""
    checked: Counter[str] = Counter()
    passed: Counter[str] = Counter()
    features: Counter[str] = Counter()
    for seed in range(start, start + n):
        net = build(seed, new=new)
        features.update(set(net.features))
        for prop, flag in (("bias_free", net.bias_free), ("relu_only", net.relu_only),
                           ("unsupported", net.unsupported)):
            features[f"net:{prop}"] += int(flag)
        report = check_net(net)
        for prop in report.checked:
            checked[prop] += 1
            passed[prop] += int(report.failed[prop] == 0)
        if verbose and report.messages:
            print(f"--- seed {seed}: " + "\n".join([net.describe(), *report.messages]))
    return checked, passed, features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nets", type=int, default=300)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--new", nargs="*", default=list(NEW_OPTIONS), choices=NEW_OPTIONS)
    parser.add_argument("--verbose", action="store_true", help="print every failing net")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", relprop.RuleAssumptionWarning)
    started = time.perf_counter()
    checked, passed, features = counts(args.nets, tuple(args.new), args.start, args.verbose)
    seconds = time.perf_counter() - started
    print(f"{args.nets} nets (build({args.start}) .. build({args.start + args.nets - 1}), "
          f"new={args.new}) in {seconds:.1f} s")
    print("| property | nets checked | passed |\n|---|---|---|")
    for prop in sorted(checked):
        print(f"| {prop} | {checked[prop]} | {passed[prop]} |")
    print("\nnets per grammar feature: " + ", ".join(
        f"{k} {v}" for k, v in sorted(features.items())))


if __name__ == "__main__":
    main()
