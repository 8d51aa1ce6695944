"""``record=True``: the relevance kept at module outputs (``layers``) and the ledger, on nets
that write into module outputs in place (a ResNet BasicBlock's ``relu(inplace=True)`` and
``out += identity``). Checked against the same net written out of place, and under LRP-0
against gradient × activation computed by plain autograd (LRP-0 keeps ``R = a · ∂f/∂a`` at
every activation of a ReLU net)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop import composites as C
from relprop import rules as R
from tests.helpers.netgen import NEW_OPTIONS, build


class Block(nn.Module):
    """torchvision's BasicBlock, written in place or out of place."""

    def __init__(self, channels: int, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.inplace:
            out += identity
        else:
            out = out + identity
        return self.relu(out)


class Net(nn.Module):
    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=inplace)
        self.block1 = Block(4, inplace)
        self.block2 = Block(4, inplace)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _pair(bias_free: bool, seed: int = 0) -> tuple[Net, Net, Tensor]:
    """The in-place net and the out-of-place net with the same weights, and an input."""
    torch.manual_seed(seed)
    plain = Net(inplace=False).double()
    for m in plain.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            if not bias_free:
                m.running_mean.uniform_(-0.5, 0.5)
                m.bias.data.uniform_(-0.2, 0.2)
    plain.eval()
    written = Net(inplace=True).double()
    written.load_state_dict(plain.state_dict())
    written.eval()
    return written, plain, torch.randn(2, 3, 8, 8, dtype=torch.float64)


def _gradient_times_activation(model: Net, x: Tensor, target: int) -> dict[str, Tensor]:
    """``output · ∂logit/∂output`` at every module output, by plain autograd (out-of-place net:
    each module call makes a tensor of its own; :func:`_plain_record` for any net)."""
    outputs: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def keep(_: nn.Module, __: object, out: Tensor) -> None:
            count = counts.get(name, 0)
            counts[name] = count + 1
            out.retain_grad()
            outputs[name + (f"#{count}" if count else "")] = out
        return keep

    handles = [m.register_forward_hook(hook(n or "<model>")) for n, m in model.named_modules()]
    try:
        model(x)[:, target].sum().backward()
    finally:
        for h in handles:
            h.remove()
    assert all(out.grad is not None for out in outputs.values())
    return {n: (out * out.grad).detach() for n, out in outputs.items()}


@pytest.mark.parametrize("bias_free", [True, False])
def test_layers_of_in_place_net_equal_those_of_out_of_place_net(bias_free: bool) -> None:
    written, plain, x = _pair(bias_free)
    composite = C.uniform(R.Zero())
    ours = relprop.explain(written, x, target=0, composite=composite, record=True)
    reference = relprop.explain(plain, x, target=0, composite=composite, record=True)
    assert set(ours.layers) == set(reference.layers)
    # the outputs the model overwrites in place: BatchNorm before an in-place ReLU or ``+=``
    for name in ("bn", "block1.bn1", "block1.bn2", "block2.bn1", "block2.bn2"):
        assert name in ours.layers
    for name, relevance in reference.layers.items():
        torch.testing.assert_close(ours.layers[name], relevance, rtol=1e-10, atol=1e-12,
                                   msg=name)
    assert len(ours.conservation) == len(reference.conservation)
    for a, b in zip(ours.conservation, reference.conservation):
        assert a.name == b.name
        assert a.relevance_in == pytest.approx(b.relevance_in, rel=1e-10, abs=1e-14)
        assert a.relevance_out == pytest.approx(b.relevance_out, rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("inplace", [True, False])
def test_layers_are_gradient_times_activation_under_lrp0(inplace: bool) -> None:
    written, plain, x = _pair(bias_free=False, seed=1)
    expl = relprop.explain(written if inplace else plain, x, target=2,
                           composite=C.uniform(R.Zero()), record=True)
    oracle = _gradient_times_activation(plain, x, target=2)
    checked = 0
    for name, relevance in expl.layers.items():
        torch.testing.assert_close(relevance, oracle[name], rtol=1e-9, atol=1e-12, msg=name)
        checked += 1
    # convolutions merged with their BatchNorm have no output of their own in the explained
    # graph; every other module is recorded
    assert checked == len(oracle) - 5


@pytest.mark.parametrize("inplace", [True, False])
def test_relevance_is_conserved_at_each_cut(inplace: bool) -> None:
    written, plain, x = _pair(bias_free=True, seed=2)
    expl = relprop.explain(written if inplace else plain, x, target=1,
                           composite=C.uniform(R.Zero()), record=True)
    logit = expl.explained.reshape(-1)
    for name in ("relu", "block1", "block2", "pool", "<model>"):
        per_sample = expl.layers[name].reshape(x.shape[0], -1).sum(1)
        torch.testing.assert_close(per_sample, logit, rtol=1e-9, atol=1e-12, msg=name)
    # the ledger: every op of a bias-free net under LRP-0 passes on what arrived
    assert expl.conservation
    for entry in expl.conservation:
        assert entry.relevance_out == pytest.approx(entry.relevance_in, rel=1e-9, abs=1e-12)
    assert expl.conservation[0].relevance_in == pytest.approx(logit.tolist(), rel=1e-12)


class Gated(nn.Module):
    """A product of two activations (its ledger entry opens at its output), then ``+= x``."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace
        self.a, self.b, self.fc = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x)) * torch.sigmoid(self.b(x))
        if self.inplace:
            h += x
        else:
            h = h + x
        return self.fc(h)


def test_ledger_of_a_product_written_in_place_is_that_of_the_product() -> None:
    torch.manual_seed(0)
    plain = Gated(inplace=False).double().eval()
    written = Gated(inplace=True).double().eval()
    written.load_state_dict(plain.state_dict())
    x = torch.randn(3, 4, dtype=torch.float64)
    ours = relprop.explain(written, x, target=0, record=True).conservation
    reference = relprop.explain(plain, x, target=0, record=True).conservation
    assert [e.name for e in ours] == [e.name for e in reference]
    product = next(e for e in ours if e.name.endswith(":mul"))
    assert product.relevance_in != pytest.approx(ours[0].relevance_out)  # not the sum's
    for a, b in zip(ours, reference):
        assert a.relevance_in == pytest.approx(b.relevance_in, rel=1e-10, abs=1e-14)
        assert a.relevance_out == pytest.approx(b.relevance_out, rel=1e-10, abs=1e-14)


def _plain_record(model: nn.Module, x: Tensor, target: Tensor) -> dict[str, Tensor]:
    """``output · ∂f/∂output`` at every module output by plain autograd, for nets that write
    into outputs in place: the value is copied when the module returns, and the hook, set
    before any later write, gets the gradient of that version."""
    values: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def keep(_: nn.Module, __: object, out: object) -> None:
            if not isinstance(out, Tensor) or not out.requires_grad:
                return
            count = counts.get(name, 0)
            counts[name] = count + 1
            key = name + (f"#{count}" if count else "")
            values[key] = out.detach().clone()
            out.register_hook(lambda g: grads.__setitem__(key, grads.get(key, 0) + g))
        return keep

    handles = [m.register_forward_hook(hook(n or "<model>")) for n, m in model.named_modules()]
    try:
        x = x.detach().clone().requires_grad_(True)
        model(x).gather(1, target[:, None]).sum().backward()
    finally:
        for h in handles:
            h.remove()
    return {k: v * grads[k] if k in grads else torch.zeros_like(v) for k, v in values.items()}


def test_layers_are_gradient_times_activation_on_generated_nets() -> None:
    """The fuzz grammar's ReLU-only nets (in-place ReLUs, ``+=`` residuals, slices written in
    place, channels-last...): every recorded module output under LRP-0."""
    nets = checked = 0
    for seed in range(120):
        net = build(seed, NEW_OPTIONS)
        if not net.relu_only or net.unsupported_ops:
            continue
        expl = relprop.explain(net.model, net.x, net.target, composite=C.uniform(R.Zero()),
                               record=True)
        oracle = _plain_record(net.model, net.x, net.target)
        for name, relevance in expl.layers.items():
            scale = float(oracle[name].abs().max()) if oracle[name].numel() else 0.0
            torch.testing.assert_close(relevance, oracle[name], rtol=0,
                                       atol=1e-9 * scale + 1e-12,
                                       msg=f"seed {seed}: {name} ({net.features})")
            checked += 1
        nets += 1
    assert nets >= 40 and checked >= 300
