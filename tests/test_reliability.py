"""The function explained is the model's, whatever way the model is written or called.

Regression tests for models that relprop once explained wrongly without a word (in-place
statements, a matmul layer, unbatched pooling, ops hidden in slice writes) or refused with a
raw error (channels-last pooling, ``clamp`` as ReLU, inference mode, compiled and scripted
modules, backward hooks, a missing batch dimension).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relprop
from relprop import composites as C
from relprop import rules
from tests.helpers.snapshots import assert_unchanged, snapshot

ZERO = C.uniform(rules.Zero())
Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class _Net(nn.Module):
    """Two dense layers around a statement ``body(self, h)`` that the test chooses."""

    def __init__(self, body: Forward, bias: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 8, bias=bias)
        self.fc2 = nn.Linear(8, 3, bias=bias)
        self.gate = nn.Linear(6, 8, bias=bias)
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.body(self, x))


def _add(m: _Net, x: torch.Tensor) -> torch.Tensor:
    h = m.fc1(x)
    h.add_(m.gate(x))  # effect only through the mutation
    return h


def _mul_gate(m: _Net, x: torch.Tensor) -> torch.Tensor:
    h = torch.relu(m.fc1(x))
    h.mul_(torch.sigmoid(m.gate(x)))
    return h


def _relu_statement(m: _Net, x: torch.Tensor) -> torch.Tensor:
    h = m.fc1(x)
    h.relu_()
    return h


def _relu_slice(m: _Net, x: torch.Tensor) -> torch.Tensor:
    h = m.fc1(x)
    h[:, :4].relu_()
    return h


def _tanh_slice(m: _Net, x: torch.Tensor) -> torch.Tensor:
    h = m.fc1(x)
    h[:, :1].tanh_()
    return h


def _relu_then_reuse(m: _Net, x: torch.Tensor) -> torch.Tensor:
    h = m.fc1(x)
    r = F.relu(h, inplace=True)  # merged into fc1's node, and h is read again below
    return r + 0.5 * h


def _silu_inplace_statement(m: _Net, x: torch.Tensor) -> torch.Tensor:
    h = m.fc1(x)
    F.silu(h, inplace=True)
    return h


def _augmented(m: _Net, x: torch.Tensor) -> torch.Tensor:
    h = m.fc1(x)
    alias = h
    h += m.gate(x)  # ``alias`` must see the sum too
    return alias


def _setitem(m: _Net, x: torch.Tensor) -> torch.Tensor:
    h = m.fc1(x)
    h[:, 2:5] = torch.relu(m.gate(x))[:, :3]
    return h


IN_PLACE = {"add_": _add, "mul_ gate": _mul_gate, "relu_ statement": _relu_statement,
            "relu_ on a slice": _relu_slice, "tanh_ on a slice": _tanh_slice,
            "inplace relu read again": _relu_then_reuse,
            "F.silu(inplace) statement": _silu_inplace_statement, "+= through an alias": _augmented,
            "setitem": _setitem}
RELU_ONLY = {"add_", "relu_ statement", "relu_ on a slice", "inplace relu read again",
             "+= through an alias", "setitem"}


def _plain(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x.clone())


@pytest.mark.parametrize("case", sorted(IN_PLACE))
def test_in_place_statements_explain_the_models_function(case: str) -> None:
    model = _Net(IN_PLACE[case]).double().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    before = snapshot(model)
    expl = relprop.explain(model, x, target=1, composite=ZERO, verify=True)
    assert_unchanged(before, snapshot(model))
    torch.testing.assert_close(expl.output, _plain(model, x), rtol=1e-12, atol=1e-12)
    if case in RELU_ONLY:  # LRP-0 on a ReLU net is Gradient x Input
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(xg)[:, 1].sum(), xg)
        torch.testing.assert_close(expl.relevance, x * grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", sorted(IN_PLACE))
def test_in_place_statements_conserve_without_biases(case: str) -> None:
    model = _Net(IN_PLACE[case], bias=False).double().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    expl = relprop.explain(model, x, target=1, composite=C.uniform(rules.Epsilon(1e-12)))
    gap = (expl.relevance_sum() - expl.explained).abs().max() / expl.explained.abs().max()
    assert gap < 1e-8


class _ExpOnSlice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        h[:, :1].exp_()
        return h


def test_op_without_rule_inside_a_slice_write_is_named() -> None:
    model = _ExpOnSlice().eval()
    with pytest.raises(relprop.UnsupportedOperationError, match="exp"):
        relprop.explain(model, torch.randn(2, 4), target=0)


class _PerSamplePool(nn.Module):
    """Pools each (C, H, W) sample on its own: ``F.max_pool2d`` on a 3-D tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        pooled = torch.stack([F.max_pool2d(sample, 2) for sample in h])
        return self.fc(pooled.flatten(1))


@pytest.mark.parametrize("rule", [rules.WinnerTakeAll(), rules.SumPooling()])
def test_max_pool2d_on_an_unbatched_sample_pools_two_dims(rule: rules.Rule) -> None:
    model = _PerSamplePool().double().eval()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    composite = C.Composite([(C.kind("max_pool"), rule), (C.kind("linear", "conv"), rules.Zero())])
    expl = relprop.explain(model, x, target=0, composite=composite, verify=True)
    torch.testing.assert_close(expl.output, _plain(model, x))
    if isinstance(rule, rules.WinnerTakeAll):
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(xg)[:, 0].sum(), xg)
        torch.testing.assert_close(expl.relevance, x * grad)


class _MatmulNet(nn.Module):
    """The same layers as ``nn.Sequential(Linear, ReLU, Linear)``, written as ``x @ W.t() + b``."""

    def __init__(self, reference: nn.Sequential) -> None:
        super().__init__()
        self.w1 = nn.Parameter(reference[0].weight.detach().clone())
        self.b1 = nn.Parameter(reference[0].bias.detach().clone())
        self.w2 = nn.Parameter(reference[2].weight.detach().clone())
        self.b2 = nn.Parameter(reference[2].bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(x @ self.w1.t() + self.b1)
        return torch.matmul(h, self.w2.T) + self.b2


@pytest.mark.parametrize("composite", [C.uniform(rules.Epsilon(1.0)), C.epsilon_plus_flat(),
                                       C.epsilon_gamma_box(low=-3.0, high=3.0)],
                         ids=["epsilon1", "epsilon_plus_flat", "epsilon_gamma_box"])
def test_matmul_with_a_parameter_is_a_dense_layer(composite: C.Composite) -> None:
    torch.manual_seed(1)
    reference = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double().eval()
    model = _MatmulNet(reference).eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    expected = relprop.explain(reference, x, target=2, composite=composite)
    expl = relprop.explain(model, x, target=2, composite=composite)
    torch.testing.assert_close(expl.relevance, expected.relevance, rtol=1e-10, atol=1e-12)
    assert len(expl.rules) == len(expected.rules) == 2
    assert list(expl.rules.values()) == list(expected.rules.values())


class _ConvBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        h = F.adaptive_avg_pool2d(h.permute(0, 1, 3, 2), 1)  # non-contiguous activation
        return self.fc(h.flatten(1))


def test_channels_last_model_and_input() -> None:
    model = _ConvBlock().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    expected = relprop.explain(model, x, target=1)
    model_cl = _ConvBlock().double().eval().to(memory_format=torch.channels_last)
    x_cl = x.to(memory_format=torch.channels_last)
    expl = relprop.explain(model_cl, x_cl, target=1, verify=True)
    torch.testing.assert_close(expl.relevance, expected.relevance, rtol=1e-9, atol=1e-12)


class _Clamped(nn.Module):
    def __init__(self, clamp: bool) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc1, self.fc2, self.clamp = nn.Linear(4, 6), nn.Linear(6, 2), clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h.clamp(min=0) if self.clamp else torch.relu(h))


def test_clamp_min_zero_is_a_relu() -> None:
    x = torch.randn(3, 4, dtype=torch.float64)
    composite = C.uniform(rules.Epsilon(0.5))
    expected = relprop.explain(_Clamped(False).double().eval(), x, target=0, composite=composite)
    expl = relprop.explain(_Clamped(True).double().eval(), x, target=0, composite=composite)
    torch.testing.assert_close(expl.relevance, expected.relevance)


class SiluAndMul(nn.Module):
    """The gated MLP activation of vLLM-style code: ``silu(x[:d]) * x[d:]`` (not elementwise)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]) * x[..., d:]


def test_module_named_like_an_activation_that_is_not_elementwise() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 8), SiluAndMul(), nn.Linear(4, 2)).double().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    expl = relprop.explain(model, x, target=0, composite=C.uniform(rules.Epsilon(1e-9)),
                           verify=True)
    assert any(name.endswith(":mul") for name in expl.rules)


class _TimeMajor(nn.Module):
    """A ``(1, 1, C)`` parameter added to a ``(L, B, C)`` stream: a bias, not a position table."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.proj = nn.Linear(3, 4)
        self.offset = nn.Parameter(torch.randn(1, 1, 4))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, 3)
        h = self.proj(x).transpose(0, 1) + self.offset  # (L, B, 4)
        return self.head(h.mean(0))


def test_batch_shaped_parameter_on_a_time_major_stream() -> None:
    model = _TimeMajor().double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    expl = relprop.explain(model, x, target=0, verify=True)
    torch.testing.assert_close(expl.output, _plain(model, x))


def _small_cnn() -> nn.Module:
    torch.manual_seed(6)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)
                         ).eval()


def test_explain_inside_inference_mode_and_on_an_inference_input() -> None:
    model = _small_cnn()
    x = torch.randn(2, 1, 6, 6)
    expected = relprop.explain(model, x, target=1)
    with torch.inference_mode():
        x_inference = x.clone()
        inside = relprop.explain(model, x_inference, target=1)
        assert torch.is_inference_mode_enabled()
    outside = relprop.explain(model, x_inference, target=1)
    torch.testing.assert_close(inside.relevance, expected.relevance)
    torch.testing.assert_close(outside.relevance, expected.relevance)


def test_model_built_in_inference_mode_is_named() -> None:
    with torch.inference_mode():
        model = _small_cnn()
    with pytest.raises(relprop.InvalidInputError, match="inference_mode"):
        relprop.explain(model, torch.randn(2, 1, 6, 6), target=0)


def test_parameter_made_in_inference_mode_is_named_by_its_path() -> None:
    model = _small_cnn()
    with torch.inference_mode():
        weight = torch.randn_like(model[0].weight)
    model[0].weight = nn.Parameter(weight, requires_grad=False)
    with pytest.raises(relprop.InvalidInputError, match=r"'0\.weight' was created inside"):
        relprop.explain(model, torch.randn(2, 1, 6, 6), target=0)


def test_walk_names_the_modules_as_named_modules_does() -> None:
    """The engine's own walk of the module tree (one per call, no generator per module)
    gives ``named_modules()``'s names in its order: a module held twice is named once, at
    its first place, and an empty slot (``None``) is skipped."""
    from relprop._engine.eager import walk

    shared = nn.Linear(3, 3)
    inner = nn.Sequential(shared, nn.ReLU(), nn.Sequential(nn.Linear(3, 3), shared))
    model = nn.Sequential(inner, nn.Identity(), inner, nn.ModuleDict({"a": shared}))
    model.add_module("empty", None)
    model.add_module("deep", nn.Sequential(nn.Sequential(nn.Sequential(nn.Tanh()))))
    expected = [(name, id(m)) for name, m in model.named_modules()]
    assert [(name, id(m)) for name, m in walk(model)] == expected
    assert len(expected) == 12  # 15 places, 3 of them a module seen before


def test_compiled_model_is_explained_through_its_eager_module() -> None:
    model = _small_cnn()
    x = torch.randn(2, 1, 6, 6)
    expected = relprop.explain(model, x, target=1)
    expl = relprop.explain(torch.compile(model), x, target=1)
    torch.testing.assert_close(expl.relevance, expected.relevance)
    assert list(expl.rules) == list(expected.rules)


def test_compiled_model_in_training_mode_is_named_by_its_eager_paths() -> None:
    model = _small_cnn().train()
    with pytest.raises(relprop.InvalidInputError, match=r"training mode.*'<model>', '0'"):
        relprop.explain(torch.compile(model), torch.randn(2, 1, 6, 6), target=1)


def test_compiled_submodule_runs_eagerly() -> None:
    model = _small_cnn()
    x = torch.randn(2, 1, 6, 6)
    expected = relprop.explain(model, x, target=1)
    model[0] = torch.compile(model[0])
    expl = relprop.explain(model, x, target=1)
    torch.testing.assert_close(expl.relevance, expected.relevance)


def test_scripted_model_gets_a_named_error() -> None:
    scripted = torch.jit.script(_small_cnn())
    with pytest.raises(relprop.InvalidInputError, match="TorchScript.*eager"):
        relprop.explain(scripted, torch.randn(2, 1, 6, 6), target=0)


def test_backward_hook_is_named() -> None:
    model = _small_cnn()

    def audit(module: nn.Module, grad_in: object, grad_out: object) -> None:
        pass

    handle = model[1].register_full_backward_hook(audit)
    try:
        with pytest.raises(relprop.InvalidInputError, match=r"'1'.*audit.*handle.remove"):
            relprop.explain(model, torch.randn(2, 1, 6, 6), target=0)
    finally:
        handle.remove()


class _FailingActivation(nn.Module):
    """A parameter-free activation module (taken whole as one op, by its name) that raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the model's own error")


def test_an_error_raised_in_the_forward_pass_reaches_the_caller_alone() -> None:
    """torch calls a global ``always_call`` forward hook without keyword arguments when the
    forward raises; relprop's hook takes that call too: the model's error reaches the caller
    with no warning of a hook that failed on the way, and grad mode is as it was."""
    import warnings

    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(_FailingActivation()), nn.Linear(4, 2))
    for grad in (True, False):
        with warnings.catch_warnings(record=True) as caught, torch.set_grad_enabled(grad):
            warnings.simplefilter("always")
            with pytest.raises(RuntimeError, match="the model's own error"):
                relprop.explain(model.eval(), torch.randn(2, 4), target=0)
            assert torch.is_grad_enabled() is grad
        assert not [w for w in caught if "hook" in str(w.message)], \
            [str(w.message) for w in caught]


def test_missing_batch_dimension_is_named() -> None:
    model = _small_cnn()
    with pytest.raises(relprop.InvalidInputError, match=r"unsqueeze\(0\)"):
        relprop.explain(model, torch.randn(1, 6, 6), target=0)


class _NormaliseInput(nn.Module):
    """Writes into its own input before the first layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.sub_(0.5).mul_(2.0)
        return self.fc(x)


def test_model_writing_into_its_input() -> None:
    model = _NormaliseInput().double().eval()
    x = torch.rand(3, 4, dtype=torch.float64)
    kept = x.clone()
    expl = relprop.explain(model, x, target=0, composite=ZERO)
    assert torch.equal(x, kept)  # the caller's tensor is not written
    torch.testing.assert_close(expl.output, _plain(model, kept))
    xg = kept.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg.clone())[:, 0].sum(), xg)
    torch.testing.assert_close(expl.relevance, kept * grad)


def test_verify_catches_a_function_that_differs() -> None:
    class Flaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.fc(x) * self.calls

    with pytest.raises(relprop.RelpropError, match="verify"):
        relprop.explain(Flaky().eval(), torch.randn(2, 3), target=0, verify=True)


def test_softmax_output_warns_at_the_callers_line() -> None:
    model = nn.Sequential(_small_cnn(), nn.Softmax(dim=1)).eval()
    with pytest.warns(relprop.ProbabilityOutputWarning, match="LogOdds") as caught:
        relprop.explain(model, torch.randn(2, 1, 6, 6), target=0)
    assert caught[0].filename == __file__


class _Pool1dInplaceRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.pool = nn.MaxPool1d(2)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(3 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.pool(self.conv(x))).flatten(1))


def test_in_place_relu_after_max_pool1d() -> None:
    model = _Pool1dInplaceRelu().double().eval()
    x = torch.randn(2, 2, 8, dtype=torch.float64)
    expl = relprop.explain(model, x, target=1, composite=ZERO, verify=True)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg)[:, 1].sum(), xg)
    torch.testing.assert_close(expl.relevance, x * grad)


class _CopyBeforeNorm(nn.Module):
    """A copy (``clone``, ``contiguous(channels_last)``) between a conv and its BatchNorm."""

    def __init__(self, copy: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        super().__init__()
        torch.manual_seed(9)
        self.conv, self.bn, self.fc = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Linear(3, 2)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
        self.copy = copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.copy is not None:
            h = self.copy(h)
        return self.fc(torch.relu(self.bn(h)).mean((2, 3)))


@pytest.mark.parametrize("copy", [torch.clone,
                                  lambda t: t.contiguous(memory_format=torch.channels_last)],
                         ids=["clone", "channels_last"])
def test_a_copy_between_conv_and_batchnorm_keeps_them_one_layer(copy: Forward) -> None:
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    composite = C.epsilon_alpha2_beta1()
    expected = relprop.explain(_CopyBeforeNorm(None).double().eval(), x, 0, composite)
    expl = relprop.explain(_CopyBeforeNorm(copy).double().eval(), x, 0, composite)
    assert list(expl.rules) == list(expected.rules) == ["conv:conv2d+batch_norm", "fc:linear"]
    torch.testing.assert_close(expl.relevance, expected.relevance)


class _AbsThenNoOpCopy(nn.Module):
    """An op with no rule, then a copy that returns its input unchanged (the tensor already
    is channels-last): the copy's handler must not vouch for the node it did not make."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(10)
        self.conv, self.fc = nn.Conv2d(2, 2, 3), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.abs(self.conv(x)).contiguous(memory_format=torch.channels_last)
        return self.fc(h.clone().mean((2, 3)))


def test_an_unsupported_op_is_named_behind_a_copy_that_returns_its_input() -> None:
    model = _AbsThenNoOpCopy().eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 2, 5, 5).to(memory_format=torch.channels_last)
    with pytest.raises(relprop.UnsupportedOperationError, match="'abs'"):
        relprop.explain(model, x, target=0)


def test_a_compiled_submodule_keeps_the_eager_layer_names() -> None:
    model = _small_cnn()
    expected = relprop.explain(model, torch.randn(2, 1, 6, 6), target=1)
    model[0] = torch.compile(model[0])
    expl = relprop.explain(model, torch.randn(2, 1, 6, 6), target=1)
    assert list(expl.rules) == list(expected.rules) == ["0:conv2d", "3:linear"]


class NewGELUActivation(nn.Module):
    """GPT-2's GELU written with tanh and a cube (as in Hugging Face's ``activations.py``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x.pow(3))))


class _HeadWithFreshActivation(nn.Module):
    """``ACT2FN[name](x)``: the activation module is made at each call, never registered."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.dense, self.out = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(NewGELUActivation()(self.dense(x)))


def test_an_activation_module_made_during_the_forward_pass_is_one_op() -> None:
    model = _HeadWithFreshActivation().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    before = len(torch.nn.modules.module._global_forward_hooks)
    expl = relprop.explain(model, x, target=0, verify=True)
    assert "NewGELUActivation:NewGELUActivation" in expl.rules
    assert len(torch.nn.modules.module._global_forward_hooks) == before


class _WritesIntoALayerOutputSlice(nn.Module):
    """``h[:, 0] += 1`` on a 3-D linear output: the layer's output must be writable."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(12)
        self.inner, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inner(x)
        h[:, 0] += 1.0
        return self.out(h.mean(1))


def test_a_slice_of_a_layer_output_written_in_place() -> None:
    model = _WritesIntoALayerOutputSlice().double().eval()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    expl = relprop.explain(model, x, target=0, composite=ZERO, verify=True)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg)[:, 0].sum(), xg)
    torch.testing.assert_close(expl.relevance, x * grad)


class _AdaptiveNorm(nn.Module):
    """A LayerNorm whose weight is computed from the input, and a clamp with input bounds:
    neither has a rule, and the handlers' fallback to the plain op must not vouch for it."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(13)
        self.fc, self.scale, self.head, self.how = nn.Linear(4, 4), nn.Linear(4, 4), \
            nn.Linear(4, 2), how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.how == "layer_norm":
            h = F.layer_norm(h, (4,), weight=self.scale(x).mean(0))
        else:
            h = h.clamp(min=self.scale(x))
        return self.head(h)


@pytest.mark.parametrize("how", ["layer_norm", "clamp"])
def test_an_op_made_nonlinear_by_input_dependent_arguments_is_named(how: str) -> None:
    with pytest.raises(relprop.UnsupportedOperationError, match=how):
        relprop.explain(_AdaptiveNorm(how).eval(), torch.randn(3, 4), target=0)


class _NaiveSineIdentity(rules.Rule):
    """``c = grad · z / a`` without guarding ``a = 0``: 0/0 where the input is exactly 0."""

    kinds = frozenset({"sin"})
    elementwise_ops = frozenset({"sin"})

    def propagate(self, op: object, a: torch.Tensor, z: torch.Tensor,
                  grad: torch.Tensor) -> torch.Tensor:
        return z / a * grad


def test_a_non_finite_map_is_never_handed_back_silently() -> None:
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Identity(), nn.Linear(3, 2)).eval()

    class Sine(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sin(x)

    model[1] = Sine().eval()
    x = torch.zeros(2, 3)  # every input of sin is exactly 0
    composite = C.Composite([(C.kind("sin"), _NaiveSineIdentity()),
                             (C.kind("linear"), rules.Epsilon())])
    with pytest.raises(relprop.RelpropError, match="NaN or inf"):
        relprop.explain(model, x, target=0, composite=composite)
    with pytest.warns(relprop.UnsupportedOperationWarning, match="NaN or inf"):
        expl = relprop.explain(model, x, target=0, composite=composite, strict=False)
    assert not bool(torch.isfinite(expl.relevance).all())
