"""What the engine does to keep a call cheap must not change what it computes: module hooks
installed once globally, the seed's backward as the gradient of ``<seed, output>``, the
garbage collector paused, view outputs detached instead of copied."""

from __future__ import annotations

import copy
import gc
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relprop
from relprop import composites as C
from relprop import rules as R
from relprop._engine.session import Session
from relprop.rules.ops import seeded_grad
from tests.helpers.snapshots import assert_unchanged, snapshot

ROOT = Path(__file__).resolve().parents[1]
LRP0 = C.uniform(R.Epsilon(0.0))


def _gradient_times_input(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    leaf = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf)[:, target].sum(), leaf)
    return leaf.detach() * grad


def test_seeded_grad_is_autograd_grad() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    unused = torch.randn(2, dtype=torch.float64, requires_grad=True)
    out = torch.tanh(a @ b)
    seed = torch.randn(3, 5, dtype=torch.float64, generator=gen)
    expected = torch.autograd.grad(out, [a, b], seed, retain_graph=True)
    got = seeded_grad(out, [a, b, unused], seed, allow_unused=True)
    assert got[2] is None
    for e, g in zip(expected, got[:2]):
        assert g is not None and torch.allclose(e, g, rtol=1e-14, atol=1e-15)
    with pytest.raises(ValueError, match=r"seed of shape \(5, 3\)"):
        seeded_grad(out, [a], seed.T)


def test_first_explanation_in_a_fresh_process_imports_no_sympy() -> None:
    # torch.autograd.grad with a tensor seed imports torch's symbolic-shapes module (and
    # sympy, about 0.6 s) the first time: relprop's first call must not pay that
    code = (
        "import sys, torch, relprop\n"
        "m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(),"
        " torch.nn.Linear(8, 3)).eval()\n"
        "x = torch.randn(2, 8)\n"
        "relprop.explain(m, x, 0)\n"
        "relprop.methods.gradient(m, x, 0)\n"
        "print('sympy' in sys.modules)\n"
    )
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, check=True)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize("enabled", [True, False])
def test_garbage_collector_state_is_restored(enabled: bool) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        relprop.explain(model, torch.randn(2, 4), 0)
        assert gc.isenabled() is enabled
        with pytest.raises(relprop.errors.InvalidInputError):
            relprop.explain(model, torch.randn(2, 4), 7)  # no class 7
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 6, bias=False)
        self.act = nn.ReLU()
        self.second = nn.Linear(6, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.act(self.first(x)))


def test_modules_with_hooks_of_their_own_are_explained_with_their_hooks() -> None:
    torch.manual_seed(0)
    model = _Scaled().double().eval()
    # the model's own hooks change what the modules compute: 3x the input of `second`,
    # and the output of `first` shifted by a constant pattern
    model.second.register_forward_pre_hook(lambda m, args: (args[0] * 3.0,))
    shift = torch.linspace(-0.5, 0.5, 6, dtype=torch.float64)
    model.first.register_forward_hook(lambda m, args, out: out + shift)
    x = torch.randn(4, 6, dtype=torch.float64)
    before = snapshot(model)
    expl = relprop.explain(model, x, 1, LRP0)
    assert_unchanged(before, snapshot(model))
    assert torch.allclose(expl.output, model(x), rtol=0, atol=1e-12)
    # LRP-0 on a ReLU net is gradient x input of the function the model computes
    assert torch.allclose(expl.relevance, _gradient_times_input(model, x, 1), atol=1e-12)
    assert "first" in " ".join(expl.rules) and "second" in " ".join(expl.rules)


class _WritesIntoLinear(nn.Module):
    """A token-wise linear layer (its output is a view of a 2-D matmul) that the model then
    writes into in place."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 4, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(5, dtype=torch.float64))
        self.head = nn.Linear(5, 2, bias=False).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.w, self.b)
        y.mul_(2.0)
        return self.head(torch.relu(y).sum(dim=1))


def test_a_view_output_the_model_writes_into_keeps_its_values() -> None:
    torch.manual_seed(1)
    model = _WritesIntoLinear().eval()
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    expl = relprop.explain(model, x, 0, LRP0)
    assert torch.allclose(expl.output, model(x), rtol=0, atol=1e-12)
    assert torch.allclose(expl.relevance, _gradient_times_input(model, x, 0), atol=1e-12)


@pytest.mark.parametrize("activation", [torch.sigmoid, F.silu, F.softplus, torch.tanh])
def test_identity_rule_gives_inputs_of_zero_no_relevance(activation: object) -> None:
    a = torch.tensor([[0.0, 1e-45, -2.0, 0.5]], dtype=torch.float32)
    grad = torch.tensor([[1.0, 1.0, 3.0, -2.0]])
    z = activation(a)  # type: ignore[operator]
    c = R.Pass().propagate(object(), a, z, grad)
    assert torch.isfinite(c).all()
    assert c[0, 0] == 0  # exactly 0: no relevance, whatever f(0) is
    expected = z[0, 2:] / a[0, 2:] * grad[0, 2:]
    assert torch.allclose(c[0, 2:], expected, rtol=1e-6)
    assert torch.allclose((a * c)[0, 2:], (z * grad)[0, 2:], rtol=1e-6)  # R_in = R_out


def test_ops_are_routed_only_to_the_family_hooks_that_act_on_them() -> None:
    from relprop._engine import handlers
    from relprop._engine.handlers import layers, mixing, scan, statistics

    prepares, claims, observers = handlers.route("conv2d")  # no scan kernel convolves
    assert prepares == () and claims == () and observers == ()
    assert handlers.route("matmul")[0] == (scan.prepare,)
    assert handlers.route("relu_")[1] == (layers.claim,)
    assert handlers.route("clamp")[1] == (layers.claim,)
    assert handlers.route("pow")[1] == (mixing.claim,)
    prepares, _, observers = handlers.route("div")
    assert prepares == (mixing.prepare, scan.prepare) and observers == (statistics.observe,)
    assert handlers.route("sigmoid")[0] == (mixing.prepare, scan.prepare, statistics.prepare)
    assert handlers.route("logsumexp")[2] == (statistics.observe,)


def test_every_family_hook_ignores_ops_outside_its_declared_names() -> None:
    """A hook that declares its op names must be a no-op on every other op: run each on
    names it did not declare, with tensors on the relevance path, and expect nothing."""
    from relprop._engine import handlers
    from relprop._engine.handlers.statistics import Statistic
    from relprop._engine.intercept import short_name

    a = torch.ones(2, 3, requires_grad=True) * 2
    b = torch.ones(2, 3, requires_grad=True) * 3
    session = Session(torch.nn.Identity(), torch.ones(2, 3, requires_grad=True), False)
    for t in (a, b):  # the state on which the hooks act: gates, router scores, a statistic
        session.mark_gate(t)
        session.mark("router_scores", t)
        session.note("statistic", t, Statistic(a.grad_fn, a.dtype, lambda v: v))
    ids = torch.tensor([[1, 2, 3]])
    token_session = Session(torch.nn.Identity(), ids, False)  # token ids are followed
    overridable = torch.overrides.get_overridable_functions()
    names = {short_name(f) for functions in overridable.values() for f in functions}
    names |= set(handlers.HANDLERS) | {n for f in handlers.FAMILIES for n in dir(f)}
    assert {"conv2d", "add", "sqrt", "logsumexp", "relu_"} <= names
    for family in handlers.FAMILIES:
        for hook, declared in (("prepare", "PREPARE_NAMES"), ("claim", "CLAIM_NAMES"),
                               ("observe", "OBSERVE_NAMES")):
            if not hasattr(family, declared):
                continue
            concerned = getattr(family, declared)  # a set of names, or all but some
            for name in sorted(n for n in names if n not in concerned):
                for args in ((a,), (a, b), (a, 2.0), (a, 0), ([a, b],), (a, -1, True)):
                    if hook == "prepare":
                        new_args, after = family.prepare(session, name, args)
                        assert new_args is args and after is None, (family, name)
                    elif hook == "claim":
                        assert family.claim(name, args, {}) is None, (family, name)
                    else:
                        notes = {k: dict(v) for k, v in session._notes.items()}
                        family.observe(session, torch.add, name, args, {}, a + b)
                        assert session._notes == notes, (family, name)
                        maps = dict(token_session.id_maps)
                        family.observe(token_session, torch.add, name, (ids, 1), {}, ids + 1)
                        assert token_session.id_maps == maps, (family, name)


def test_parameter_check_matches_isinstance() -> None:
    from relprop._engine.session import is_parameter as _is_parameter

    class Sub(torch.nn.Parameter):
        pass

    for t in (torch.nn.Parameter(torch.ones(2)), Sub(torch.ones(2)), torch.ones(2),
              torch.ones(2, requires_grad=True) * 2, torch.nn.Buffer(torch.ones(2))):
        assert _is_parameter(t) == isinstance(t, torch.nn.Parameter)


def test_a_merged_batchnorm_gives_the_models_output() -> None:
    """The merged BatchNorm runs the kernel ``F.batch_norm`` calls, not its Python twice:
    with its arguments in the right places (a swapped weight and bias, or batch statistics,
    would move the output far beyond float32 rounding)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6, eps=1e-3, momentum=0.3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 4))
    bn = model[1]
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    model.eval()
    x = torch.randn(3, 3, 8, 8)
    expl = relprop.explain(model, x, 1, LRP0)
    with torch.no_grad():
        torch.testing.assert_close(expl.output, model(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(expl.relevance, _gradient_times_input(model, x, 1))


class _Gated(nn.Module):
    """``h · sigmoid(W tanh(mean h))``: a squeeze-and-excitation gate on ``h = tanh(conv x)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.squeeze = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x))
        gate = torch.sigmoid(self.squeeze(torch.tanh(h.mean((2, 3), keepdim=True))))
        return self.head((h * gate).mean((2, 3)))


class _Counted(R.Pass):
    """The identity rule, counting its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def propagate(self, op: object, a: torch.Tensor, z: torch.Tensor,
                  grad: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().propagate(op, a, z, grad)


@pytest.mark.parametrize("record", [False, True])
def test_no_rule_runs_behind_a_gate_that_takes_no_relevance(record: bool) -> None:
    """The gate of a product takes no relevance (signal-take-all), so no signal reaches the
    branch that computes it: its rules are not run on zeros (they were, at every
    squeeze-and-excitation block). A recorded explanation still logs that branch's ops."""
    model = _Gated().eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    counted = _Counted()
    composite = C.Composite([(C.kind("activation"), counted),
                             (C.kind("conv", "linear"), R.Epsilon(1e-6))], "counted")
    explained = relprop.explain(model, x, 1, composite, record=record)
    assert counted.calls == (3 if record else 1)  # the branch's tanh and sigmoid; the main tanh
    reference = relprop.explain(model, x, 1, composite, record=not record)
    torch.testing.assert_close(explained.relevance, reference.relevance)


class _Doubled(R.Rule):
    """Twice the product's gradient for every factor: a rule with no constant share."""

    kinds = frozenset({"product"})

    def propagate(self, op: object, a: torch.Tensor, z: torch.Tensor,
                  grad: torch.Tensor) -> torch.Tensor:
        return 2 * grad


class _Product(nn.Module):
    """``h₁ ⊙ s`` with ``s`` a per-sample scale (broadcast), written elementwise or as an
    einsum (which runs through the engine's general product path)."""

    def __init__(self, spelling: str, gate: bool) -> None:
        super().__init__()
        self.spelling, self.gate = spelling, gate
        self.first, self.second, self.head = nn.Linear(5, 6), nn.Linear(5, 1), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, s = torch.tanh(self.first(x)), self.second(x)
        s = torch.sigmoid(s) if self.gate else torch.tanh(s)
        z = h * s if self.spelling == "mul" else torch.einsum("bi,bj->bi", h, s)
        return self.head(z)


@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("rule", [R.Product(), R.Product(gates_take_none=False), _Doubled()],
                         ids=["product", "uniform", "no-constant-share"])
def test_an_elementwise_product_as_one_node_passes_what_the_share_nodes_pass(
        rule: R.Rule, gate: bool) -> None:
    """``a · b`` (broadcast) runs as one autograd node that computes the product's gradient
    only for factors the rule gives a signal; the relevance is that of the general product
    path (share nodes around the op, here an einsum), for shares 0, ½ and 1 and for a rule
    that is no constant share. A recorded explanation's ledger agrees too."""
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    composite = C.Composite([(C.kind("product"), rule), (C.kind("linear"), R.Epsilon(1e-6))],
                            "products")
    explained, weights = {}, _Product("mul", gate).state_dict()
    for spelling in ("mul", "einsum"):
        model = _Product(spelling, gate).eval()
        model.load_state_dict(weights)
        explained[spelling] = relprop.explain(model, x, 2, composite, record=True)
    mul, einsum = explained["mul"], explained["einsum"]
    assert mul.relevance.abs().sum() > 0
    torch.testing.assert_close(mul.relevance, einsum.relevance)
    [ledger_mul] = [e for e in mul.conservation if "mul" in e.name]
    [ledger_einsum] = [e for e in einsum.conservation if "einsum" in e.name]
    assert ledger_mul.relevance_out == pytest.approx(ledger_einsum.relevance_out, rel=1e-5)


def test_an_explanation_leaves_nothing_for_the_garbage_collector(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """When ``explain`` returns, its records (the session, the op records, the saved
    tensors, the graph's nodes that hold them) are gone by reference counting: nothing
    young piles up for the collector, whose next collection would scan it all (≈ 1 ms a
    call on EfficientNet-B0, and now and then a full collection of the process)."""
    import weakref

    sessions: list[weakref.ref[Session]] = []
    original = Session.__init__

    def init(self: Session, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        sessions.append(weakref.ref(self))

    monkeypatch.setattr(Session, "__init__", init)
    model = _Gated().eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    gc.collect()
    gc.disable()
    try:
        relprop.explain(model, x, 1, record=True)
        relprop.explain(model, x, torch.tensor([[0, 1]]))  # two targets, one forward
        assert len(sessions) == 2 and all(ref() is None for ref in sessions)
        records = ("OpCall", "LinearOp", "ElementwiseOp", "Held", "Interceptor")
        assert not [o for o in gc.get_objects() if type(o).__name__ in records]
    finally:
        gc.enable()


class _TakenOver(nn.Module):
    """A layer whose output the next op joins (a BatchNorm, a ReLU, a bias added by hand),
    with a probe of the layer output's memory right after that op; with ``reread`` the
    output is read once more, so the layer's own node also runs backward."""

    def __init__(self, merge: str, reread: bool) -> None:
        super().__init__()
        self.merge, self.reread = merge, reread
        # the bias joins only a dense layer's output (``x @ W.t()`` + b, as in GPT-2)
        self.layer: nn.Module = nn.Linear(3 * 6 * 6, 16, bias=False) if merge == "bias" \
            else nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.bias = nn.Parameter(torch.randn(16) * 0.1)
        self.head = nn.Linear(16 if merge == "bias" else 4 * 4 * 4, 3)
        self.freed: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.multiprocessing.reductions import StorageWeakRef

        h = self.layer(x.flatten(1) if self.merge == "bias" else x)
        with torch._C.DisableTorchFunction():
            memory = StorageWeakRef(h.untyped_storage())
        if self.merge == "norm":
            y = self.norm(h)
        elif self.merge == "relu":
            y = torch.relu(h)
        else:  # the bias of a bias-free layer, added by hand
            y = h + self.bias
        if self.reread:
            y = y + 0.5 * h
        del h
        self.freed.append(memory.expired())
        return self.head(y.flatten(1))


@pytest.mark.parametrize("merge", ["norm", "relu", "bias"])
def test_a_layer_output_a_merged_op_took_over_is_freed_at_once(merge: str) -> None:
    """Once a BatchNorm, ReLU or bias has joined a layer, the layer's own node keeps
    nothing: its output's memory goes as soon as the model lets it go, not at the end of
    the forward pass (one activation per merge; freed all at once after the forward pass, it
    went back to the OS, and the backward pass paid fresh pages for its temporaries)."""
    torch.manual_seed(0)
    model = _TakenOver(merge, reread=False).eval()
    # a dense layer under LRP-0/ε keeps no input (see the stand-in tests below), and keeps
    # its output instead where that input is gone: γ reads inputs, so the layer keeps them
    composite = C.uniform(R.Gamma(0.25)) if merge == "bias" else LRP0
    relprop.explain(model, torch.randn(2, 3, 6, 6), 1, composite)
    assert model.freed == [True]


@pytest.mark.parametrize("merge", ["norm", "relu", "bias"])
def test_a_taken_over_layer_output_read_again_gets_its_relevance(merge: str) -> None:
    """If the model reads the taken-over output again, the layer's own node runs backward
    after all and computes its ``z`` again: the relevance is that of the same net with the
    layer written twice (two modules, equal weights, nothing shared), under ε, and
    Gradient×Input under LRP-0."""
    torch.manual_seed(0)
    shared = _TakenOver(merge, reread=True)
    with torch.no_grad():
        shared.norm.running_mean.normal_()
        shared.norm.running_var.uniform_(0.5, 2.0)
    shared.eval()
    x = torch.randn(2, 3, 6, 6)
    expl = relprop.explain(shared, x, 1, LRP0)
    torch.testing.assert_close(expl.relevance, _gradient_times_input(shared, x, 1))

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = (copy.deepcopy(shared.layer) for _ in range(2))
            self.norm, self.bias, self.head = shared.norm, shared.bias, shared.head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.flatten(1) if merge == "bias" else x
            h = self.first(x)
            y = self.norm(h) if merge == "norm" else torch.relu(h) if merge == "relu" \
                else h + self.bias
            return self.head((y + 0.5 * self.second(x)).flatten(1))

    epsilon = C.uniform(R.Epsilon(0.5))  # large: a wrong z changes every ratio
    got = relprop.explain(shared, x, 1, epsilon).relevance
    torch.testing.assert_close(got, relprop.explain(Twice().eval(), x, 1, epsilon).relevance)
    assert not torch.allclose(got, expl.relevance, rtol=1e-2)


class _DenseInput(nn.Module):
    """A dense layer that reads a temporary nothing else keeps (``2 x``), with a probe of that
    temporary's memory right after the layer; ``merge``: a ReLU joins the layer's output,
    which is read once more, with the input still alive then (``alive``), and written in
    place before the ReLU (``written``)."""

    def __init__(self, merge: bool = False, alive: bool = False,
                 written: bool = False) -> None:
        super().__init__()
        self.merge, self.alive, self.written = merge, alive, written
        self.layer, self.head = nn.Linear(12, 8), nn.Linear(8, 3)
        self.freed: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.multiprocessing.reductions import StorageWeakRef

        a = 2.0 * x
        with torch._C.DisableTorchFunction():
            memory = StorageWeakRef(a.untyped_storage())
        h = self.layer(a)
        if self.written:
            a.mul_(3.0)
        if not self.alive:
            del a
        self.freed.append(memory.expired())
        if not self.merge:
            return self.head(h)
        return self.head(torch.relu(h) + 0.5 * h)


def test_a_composite_says_which_op_kinds_read_their_inputs() -> None:
    """Only ε and LRP-0 read an input for its shape alone; a kind keeps its inputs as soon as
    any rule the composite may give it (a selector's, or the kind's default) reads them."""
    assert not R.Epsilon().reads_input and not R.Zero().reads_input
    assert R.Gamma(0.25).reads_input and R.ZPlus().reads_input and R.Flat().reads_input
    assert not C.uniform(R.Epsilon()).reads_input("linear")
    assert not C.attnlrp().reads_input("linear")
    assert C.uniform(R.Gamma(0.25)).reads_input("linear")
    first_flat = C.Composite([(C.first_layers(1), R.Flat()), (C.kind("linear"), R.Epsilon())])
    assert first_flat.reads_input("linear")  # the first dense layer may get Flat
    assert C.epsilon_plus_flat().reads_input("linear")
    convs = C.Composite([(C.kind("conv"), R.ZPlus()), (C.grouped_convs(), R.Gamma(0.25))])
    assert not convs.reads_input("linear")  # dense layers get the default, LRP-0
    assert convs.reads_input("conv")
    assert C.Composite([(C.kind("conv") | C.name("head"), R.ZPlus())]).reads_input("linear")
    assert not C.Composite([(C.kind("conv") & C.name("head"), R.ZPlus())]).reads_input("linear")


@pytest.mark.parametrize("rule", [R.Epsilon(0.0), R.Epsilon(0.5)])
def test_a_dense_layer_under_epsilon_keeps_no_input(rule: R.Rule) -> None:
    """ε and LRP-0 read a layer's input for its shape only (``Rule.reads_input``): a dense
    layer whose candidate rules all say so takes a stand-in, and its input's memory goes as
    soon as the model lets it go (a transformer's norm and attention outputs, which a plain
    gradient does not keep). Its relevance is the one with the input kept (recording keeps
    it), and the model's output is unchanged."""
    torch.manual_seed(0)
    model = _DenseInput().eval()
    x = torch.randn(4, 12)
    expl = relprop.explain(model, x, 1, C.uniform(rule))
    assert model.freed == [True]
    kept = relprop.explain(model, x, 1, C.uniform(rule), record=True)
    assert model.freed[-1] is False  # recording keeps inputs: the probe can fail
    torch.testing.assert_close(expl.relevance, kept.relevance, rtol=0, atol=0)
    torch.testing.assert_close(expl.output, model(x), rtol=0, atol=0)


@pytest.mark.parametrize(("alive", "written"), [(False, False), (True, False), (True, True)])
def test_a_merged_dense_layer_read_again_without_its_input(alive: bool, written: bool) -> None:
    """A ReLU joins a stand-in layer's output, which is read again: the layer's own node runs
    backward too. If its input is still alive and unchanged at the merge, the node holds it
    and lets ``z`` go (computing it again); if the input is gone, or written in place since,
    it keeps ``z``. Each way the relevance is that of the net with the layer written twice."""
    torch.manual_seed(0)
    model = _DenseInput(merge=True, alive=alive, written=written).eval()
    x = torch.randn(4, 12)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = (copy.deepcopy(model.layer) for _ in range(2))
            self.head = model.head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = 2.0 * x
            return self.head(torch.relu(self.first(a)) + 0.5 * self.second(a))

    epsilon = C.uniform(R.Epsilon(0.5))
    got = relprop.explain(model, x, 1, epsilon).relevance
    torch.testing.assert_close(got, relprop.explain(Twice().eval(), x, 1, epsilon).relevance)
    assert model.freed == [not alive]


class _NormThenDense(nn.Module):
    """A LayerNorm and a GELU, each read by a dense layer only (a transformer block's MLP),
    with probes of their outputs' memory right after the dense layers read them."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(12), nn.Linear(12, 24), nn.Linear(24, 3)
        self.freed: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.multiprocessing.reductions import StorageWeakRef

        probes = []
        h = self.norm(x)
        with torch._C.DisableTorchFunction():
            probes.append(StorageWeakRef(h.untyped_storage()))
        h = F.gelu(self.fc1(h))
        with torch._C.DisableTorchFunction():
            probes.append(StorageWeakRef(h.untyped_storage()))
        out = self.fc2(h)
        del h
        self.freed += [probe.expired() for probe in probes]
        return out


@pytest.mark.parametrize("rule", [R.Epsilon(1e-6), R.Epsilon(0.5)])
def test_a_norm_or_activation_read_only_by_such_dense_layers_keeps_its_input_alone(
        rule: R.Rule) -> None:
    """A LayerNorm or GELU whose output only dense layers under ε read (they keep no input)
    keeps its input alone and computes its output again on the way back: its output's memory
    goes at once (a plain gradient keeps none of these outputs either). The relevance is
    the one with everything kept (recording keeps it), to the bit; where the dense layers'
    rule reads inputs (γ), the outputs are kept, which shows that the probes can fail."""
    torch.manual_seed(0)
    model = _NormThenDense().eval()
    x = torch.randn(5, 12)
    composite = C.Composite([(C.kind("linear"), rule)])
    expl = relprop.explain(model, x, 1, composite)
    assert model.freed == [True, True]
    kept = relprop.explain(model, x, 1, composite, record=True)
    torch.testing.assert_close(expl.relevance, kept.relevance, rtol=0, atol=0)
    model.freed.clear()
    relprop.explain(model, x, 1, C.Composite([(C.kind("linear"), R.Gamma(0.25))]))
    assert model.freed == [False, False]


def _probe(backward: Any) -> Any:
    """An autograd function that copies its input and hands its gradient to ``backward``."""

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, t: torch.Tensor) -> torch.Tensor:
            return t.clone()

        @staticmethod
        def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = backward(grad)
            return out

    return Probe.apply


def test_the_seed_is_handed_to_the_output_without_a_copy() -> None:
    """A seeded backward pass hands the seed itself to the output's node (a copy of it was
    a language model's output in size, 125 MiB at 1,024 tokens and 32,000 tokens of
    vocabulary) and leaves it as it was."""
    received: list[torch.Tensor] = []

    def keep(grad: torch.Tensor) -> torch.Tensor:
        received.append(grad)
        return grad

    x = torch.randn(3, 4, requires_grad=True)
    seed = torch.randn(3, 4)
    before = seed.clone()
    (grad,) = seeded_grad(_probe(keep)(x * 2.0), [x], seed)
    assert received[0] is seed
    torch.testing.assert_close(grad, 2.0 * before, rtol=0, atol=0)
    torch.testing.assert_close(seed, before, rtol=0, atol=0)


def test_a_seed_in_a_box_is_let_go_after_the_output_node() -> None:
    """Given in a one-element list, the seed is held by nothing but the backward pass, and
    goes once the output's node has used it, as a plain backward pass lets its output's
    gradient go (relprop's explanations pass their seeds so, one target at a time)."""
    from torch.multiprocessing.reductions import StorageWeakRef

    freed: list[bool] = []

    def look(grad: torch.Tensor) -> torch.Tensor:
        freed.append(memory.expired())
        return grad

    x = torch.randn(3, 4, requires_grad=True)
    box = [torch.randn(3, 4)]
    memory = StorageWeakRef(box[0].untyped_storage())
    expected = 2.0 * box[0]
    late = _probe(lambda grad: 2.0 * grad)
    (grad,) = seeded_grad(late(_probe(look)(x)), [x], box)
    assert freed == [True] and not box
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)


class ScaledGELUActivation(nn.Module):
    """A GELU module written with elementary ops, as a model zoo writes it (taken whole as one
    activation by its name), with a keyword argument that changes what it computes."""

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * x ** 3))) * scale


class _ActivationCalls(nn.Module):
    def __init__(self, keyword: bool) -> None:
        super().__init__()
        self.keyword = keyword
        self.fc1, self.act, self.fc2 = nn.Linear(6, 12), ScaledGELUActivation(), nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = self.act(h, scale=3.0) if self.keyword else self.act(h)
        return self.fc2(h)


@pytest.mark.parametrize("keyword", [False, True])
def test_a_module_taken_whole_is_computed_again_from_its_call(keyword: bool) -> None:
    """A GELU module taken whole as one op lets its output go under ε dense layers and computes
    it again with its own forward on the input: the relevance of ``record=True`` (which keeps
    everything), to the bit. Called with a keyword argument (``act(h, scale=3.0)``), which that
    recomputation would not see, it is not taken whole: its ops run one by one, and the
    explained output is still the model's."""
    torch.manual_seed(0)
    model = _ActivationCalls(keyword).eval()
    x = torch.randn(4, 6)
    composite = C.Composite([(C.kind("linear"), R.Epsilon(1e-6))])
    expl = relprop.explain(model, x, 1, composite, strict=False)
    kept = relprop.explain(model, x, 1, composite, record=True, strict=False)
    torch.testing.assert_close(expl.relevance, kept.relevance, rtol=0, atol=0)
    torch.testing.assert_close(expl.output, model(x), rtol=0, atol=0)
    assert ("act:ScaledGELUActivation" in expl.rules) is (not keyword)  # taken whole or not


class _SignCounter:
    """Counts the sign checks rules make (``is_nonnegative``: a pass over the tensor, and on
    a GPU a wait for the device) and says whether the last one was asked about ``a``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import relprop.rules.alphabeta as alphabeta
        import relprop.rules.layers as layers

        self.calls = 0
        self.seen: list[torch.Tensor] = []
        original = layers.is_nonnegative

        def counted(t: torch.Tensor) -> bool:
            self.calls += 1
            self.seen.append(t)
            return original(t)

        for module in (alphabeta, layers):
            monkeypatch.setattr(module, "is_nonnegative", counted)


def _sign_marks_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Session, "is_nonnegative", lambda self, t: False)


@pytest.mark.parametrize("composite", ["default", "gamma", "zplus"])
@pytest.mark.parametrize("net", ["resnet", "vgg"])
def test_a_layer_reading_a_relu_output_takes_its_sign_from_the_forward_pass(
        composite: str, net: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The input of a convolution behind a ReLU (merged or not, max- or average-pooled,
    reshaped) is known to be >= 0 from the forward pass: the rules do not look again, and the
    relevance is the one they compute when they look."""
    from tests.helpers import models

    model = (models.resnet() if net == "resnet" else models.vgg("A-tiny")).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    chosen = {"default": C.default(), "gamma": C.epsilon_gamma_box(low=-3.0, high=3.0),
              "zplus": C.epsilon_plus_flat()}[composite]
    counter = _SignCounter(monkeypatch)
    marked = relprop.explain(model, x, target=1, composite=chosen).relevance
    with_marks = counter.calls
    _sign_marks_off(monkeypatch)
    counter.calls = 0
    looked = relprop.explain(model, x, target=1, composite=chosen).relevance
    torch.testing.assert_close(marked, looked, rtol=1e-6, atol=1e-9)
    assert counter.calls > with_marks
    if composite != "gamma":  # γ also looks at outputs not clipped by a ReLU
        assert with_marks <= 1  # the image alone, where its rule asks (αβ on the first layer)


class _TwoConvs(nn.Module):
    """Two convolutions and a dense layer, with ``between(h)`` after the first ReLU."""

    def __init__(self, between: Callable[[torch.Tensor], torch.Tensor], side: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * side * side, 3)
        self.between = between

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.between(torch.relu(self.conv1(x) + 0.0))  # a ReLU not merged (an add before)
        return self.fc(torch.relu(self.conv2(h)).flatten(1))


def _shift_through_another_view(h: torch.Tensor) -> torch.Tensor:
    view = h.view(h.shape)
    h[:, :2].sub_(0.5)  # through another view: the version counter is shared
    return view


def test_a_relu_output_written_in_place_since_is_looked_at_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A mark made at a ReLU holds for the values it saw: an in-place write since, through
    the tensor or another view of it, voids it, and the rule looks at the values the layer
    read (negative ones here: the general maths, as without marks)."""
    model = _TwoConvs(_shift_through_another_view, side=8).eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    counter = _SignCounter(monkeypatch)
    got = relprop.explain(model, x, target=0, composite=C.default()).relevance
    assert any(t.shape == (2, 4, 8, 8) and bool((t < 0).any()) for t in counter.seen)
    _sign_marks_off(monkeypatch)
    without = relprop.explain(model, x, target=0, composite=C.default()).relevance
    torch.testing.assert_close(got, without, rtol=1e-6, atol=1e-9)


def test_an_average_pool_with_a_negative_divisor_does_not_pass_the_sign_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``avg_pool2d(divisor_override=-1)`` of a ReLU's output is <= 0: the layer after it
    must not take the ReLU's sign."""
    model = _TwoConvs(lambda h: F.avg_pool2d(h, 2, divisor_override=-1), side=4).eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    got = relprop.explain(model, x, target=0, composite=C.default()).relevance
    _sign_marks_off(monkeypatch)
    without = relprop.explain(model, x, target=0, composite=C.default()).relevance
    torch.testing.assert_close(got, without, rtol=1e-6, atol=1e-9)


def test_a_composite_says_whether_gates_take_nothing() -> None:
    assert C.default().gates_take_nothing()
    assert C.epsilon_plus_flat().gates_take_nothing()
    assert C.attnlrp().gates_take_nothing()
    split = C.Composite([(C.kind("product"), R.Product(gates_take_none=False))], "split")
    assert not split.gates_take_nothing()

    class Halves(R.Product):
        def shares(self, is_gate: list[bool], constant: list[bool] | None = None) -> list[float]:
            return [0.5] * len(is_gate)

    assert not C.Composite([(C.kind("product"), Halves())], "halves").gates_take_nothing()


@pytest.mark.parametrize("composite", ["epsilon", "zplus", "default"])
def test_a_gate_held_constant_leaves_its_branch_out_of_the_backward_pass(
        composite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where every product rule gives a gate no relevance, ``x · sigmoid(·)`` is the plain
    product with the gate held constant: the squeeze-and-excitation branch is not visited on
    the way back at all (before, its nodes ran with no signal), and the relevance is the same
    as through the product's own node."""
    from relprop._engine.apply import LayerFunction
    from tests.helpers import models

    model = models.efficientnet().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    chosen = {"epsilon": C.uniform(R.Epsilon(1e-6)), "zplus": C.epsilon_plus_flat(),
              "default": C.default()}[composite]
    silent = {"calls": 0}
    backward = LayerFunction.backward

    def counted(ctx: Any, grad: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        silent["calls"] += grad is None
        return backward(ctx, grad)

    monkeypatch.setattr(LayerFunction, "backward", staticmethod(counted))
    held = relprop.explain(model, x, target=3, composite=chosen).relevance
    assert silent["calls"] == 0
    monkeypatch.setattr(C.Composite, "gates_take_nothing", lambda self: False)
    through_node = relprop.explain(model, x, target=3, composite=chosen).relevance
    assert silent["calls"] > 0  # the branch's convolutions, visited with no signal
    torch.testing.assert_close(held, through_node, rtol=1e-6, atol=1e-9)
