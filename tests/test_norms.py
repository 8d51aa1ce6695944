"""Normalisations beyond ``nn.LayerNorm``/``nn.RMSNorm``: GroupNorm, LayerNorms written by hand,
gated RMSNorm and global response normalisation, against a float64 oracle.

The oracle holds each normalisation's statistic at its value, which makes the layer an affine
map ``y = J x + b``; ``J`` is taken from autograd on that frozen map (not from relprop's
formula), and the rule is ε-LRP on it: ``R_x = x ⊙ Jᵀ (R_y / (y + ε·sign(y)))``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relprop
from relprop.composites import Composite, attnlrp, cp_lrp, kind
from relprop.rules import Epsilon, NormIdentity
from relprop.targets import TokenLogit

EPSILONS = [0.0, 0.1]
RTOL, ATOL = 1e-9, 1e-12


def _stabilize(z: Tensor, epsilon: float) -> Tensor:
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _composite(epsilon: float) -> Composite:
    return Composite([(kind("layer_norm"), NormIdentity(epsilon)),
                      (kind("linear"), Epsilon(epsilon))])


def _oracle(frozen: Callable[..., Tensor], x: Tensor, head: nn.Linear, target: int,
            epsilon: float, norm_epsilon: float | None = None) -> Tensor:
    """``head(norm(x))`` explained for ``target``: ε-LRP on the head written out, then ε-LRP on
    the frozen normalisation ``frozen`` through its Jacobian (``norm_epsilon``, ``epsilon`` by
    default), per sample."""
    norm_epsilon = epsilon if norm_epsilon is None else norm_epsilon
    y = frozen(x).detach()
    flat = y.reshape(len(y), -1)
    z = flat @ head.weight.detach().T
    relevance = torch.zeros_like(z)
    relevance[:, target] = z[:, target]
    r_y = flat * ((relevance / _stabilize(z, epsilon)) @ head.weight.detach())
    out = torch.zeros_like(x)
    for n in range(len(x)):
        jacobian = torch.autograd.functional.jacobian(
            lambda t, n=n: frozen_at(frozen, x, n, t), x[n]).reshape(y[n].numel(), x[n].numel())
        signal = r_y[n] / _stabilize(flat[n], norm_epsilon)
        out[n] = x[n] * (jacobian.T @ signal).reshape(x[n].shape)
    return out


def frozen_at(frozen: Callable[..., Tensor], x: Tensor, n: int, t: Tensor) -> Tensor:
    """The frozen map of sample ``n``, its statistic taken from ``x``, applied to ``t``."""
    return frozen(x, n, t)


# ------------------------------------------------------------------------------- GroupNorm
class GroupHead(nn.Module):
    def __init__(self, channels: int, groups: int, classes: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.head = nn.Linear(channels * 9, classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(x).flatten(1))


@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("functional", [False, True])
def test_group_norm_matches_the_oracle(epsilon: float, functional: bool) -> None:
    torch.manual_seed(0)
    model = GroupHead(6, 3, 4).double().eval()
    with torch.no_grad():
        model.norm.weight.normal_()
        model.norm.bias.normal_()
    norm = model.norm
    if functional:  # the functional call, not the module
        plain = type("Plain", (nn.Module,), {
            "forward": lambda self, t: F.group_norm(t, 3, norm.weight, norm.bias, norm.eps)})
        model.norm = plain().eval()  # type: ignore[assignment]
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    source, eps = norm if functional else model.norm, 1e-5

    def frozen(x_: Tensor, n: int | None = None, t: Tensor | None = None) -> Tensor:
        groups = x_.reshape(len(x_), 3, -1)
        mean = groups.mean(-1, keepdim=True)
        scale = torch.rsqrt(groups.var(-1, unbiased=False, keepdim=True) + eps)
        w = source.weight.detach().reshape(1, -1, 1, 1)
        b = source.bias.detach().reshape(1, -1, 1, 1)
        if n is None:
            return ((groups - mean) * scale).reshape(x_.shape) * w + b
        t_groups = t.reshape(3, -1)  # type: ignore[union-attr]
        centred = (t_groups - t_groups.mean(-1, keepdim=True)) * scale[n]
        return centred.reshape(t.shape) * w[0] + b[0]  # type: ignore[union-attr]

    expl = relprop.explain(model, x, 2, _composite(epsilon))
    expected = _oracle(frozen, x, model.head, 2, epsilon)
    torch.testing.assert_close(expl.relevance, expected, rtol=RTOL, atol=ATOL)
    assert any(name.endswith("group_norm") for name in expl.rules)


def test_group_norm_conserves_without_bias() -> None:
    torch.manual_seed(1)
    model = GroupHead(4, 2, 3).double().eval()
    with torch.no_grad():
        model.norm.weight.normal_()
        model.norm.bias.zero_()
    x = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    expl = relprop.explain(model, x, 1, _composite(0.0))
    torch.testing.assert_close(expl.relevance.flatten(1).sum(1), expl.explained,
                               rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- LayerNorms written by hand
class HandLayerNorm(nn.Module):
    """DeBERTa's LayerNorm: ε inside the square root, the maths in float32."""

    def __init__(self, size: int, centred: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(size))
        self.bias = nn.Parameter(torch.randn(size)) if bias else None
        self.variance_epsilon, self.centred = 1e-7, centred

    def forward(self, h: Tensor) -> Tensor:
        if self.centred:
            h = h - h.mean(-1, keepdim=True)
        h = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h + (0.0 if self.bias is None else self.bias)


class NormHead(nn.Module):
    def __init__(self, norm: nn.Module, dim: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.norm = norm
        self.head = nn.Linear(dim, classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(x))


def _row_frozen(norm: HandLayerNorm) -> Callable[..., Tensor]:
    def frozen(x: Tensor, n: int | None = None, t: Tensor | None = None) -> Tensor:
        centre = x - x.mean(-1, keepdim=True) if norm.centred else x
        scale = torch.rsqrt(centre.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        b = 0.0 if norm.bias is None else norm.bias.detach()
        if n is None:
            return norm.weight.detach() * centre * scale + b
        assert t is not None
        t_centre = t - t.mean(-1, keepdim=True) if norm.centred else t
        return norm.weight.detach() * t_centre * scale[n] + b
    return frozen


@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("centred", [True, False])
def test_layer_norm_written_by_hand_matches_the_oracle(epsilon: float, centred: bool) -> None:
    torch.manual_seed(2)
    model = NormHead(HandLayerNorm(6, centred=centred, bias=centred)).double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    expl = relprop.explain(model, x, 1, _composite(epsilon), verify=True)
    assert expl.rules["norm:HandLayerNorm"].startswith("NormIdentity")
    # RMSNorm adds no bias: its rule is the identity R_x = R_y for every ε (NormIdentity)
    expected = _oracle(_row_frozen(model.norm), x, model.head, 1, epsilon,
                       epsilon if centred else 0.0)
    torch.testing.assert_close(expl.relevance, expected, rtol=1e-7, atol=1e-12)


def test_a_layer_norm_by_name_that_is_none_keeps_its_ops() -> None:
    class OddLayerNorm(nn.Module):  # named like one, computes something else
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(6))

        def forward(self, h: Tensor) -> Tensor:
            return self.weight * torch.exp(h)

    model = NormHead(OddLayerNorm()).double().eval()
    with pytest.raises(relprop.UnsupportedOperationError, match="exp"):
        relprop.explain(model, torch.randn(2, 6, dtype=torch.float64), 0, _composite(0.0))


def test_a_layer_norm_returning_a_tuple_keeps_the_other_items() -> None:
    class TupleLayerNorm(HandLayerNorm):  # I-BERT's IntLayerNorm returns (x, scaling)
        def forward(self, h: Tensor, scaling: Any = None) -> Any:  # type: ignore[override]
            return super().forward(h), scaling

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm, self.head = TupleLayerNorm(6), nn.Linear(6, 3, bias=False)

        def forward(self, x: Tensor) -> Tensor:
            h, scaling = self.norm(x, None)
            assert scaling is None
            return self.head(h)

    torch.manual_seed(3)
    model = Model().double().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    expl = relprop.explain(model, x, 0, _composite(0.1), verify=True)
    expected = _oracle(_row_frozen(model.norm), x, model.head, 0, 0.1)
    torch.testing.assert_close(expl.relevance, expected, rtol=1e-7, atol=1e-12)


# ------------------------------------------------------------------ gated RMSNorm, GRN
class RMSNormGated(nn.Module):
    """Mamba2's gated RMSNorm, groups of ``group`` channels."""

    def __init__(self, size: int, group: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(size))
        self.group, self.variance_epsilon = group, 1e-6

    def forward(self, h: Tensor, gate: Tensor | None = None) -> Tensor:
        if gate is not None:
            h = h * F.silu(gate)
        grouped = h.view(*h.shape[:-1], -1, self.group)
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.weight * grouped.view(h.shape)


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.value, self.gate = nn.Linear(5, 6, bias=False), nn.Linear(5, 6, bias=False)
        self.norm = RMSNormGated(6, 3)
        self.head = nn.Linear(6, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.value(x), self.gate(x)))


@pytest.mark.parametrize("epsilon", EPSILONS)
def test_gated_rms_norm_gives_the_value_all_and_the_gate_nothing(epsilon: float) -> None:
    torch.manual_seed(4)
    model = Gated().double().eval()
    x = torch.randn(3, 5, dtype=torch.float64)
    expl = relprop.explain(model, x, 2, _composite(epsilon), verify=True)
    # oracle: ε-LRP on the head, the identity R_h = R_y on the norm (its statistic and the
    # gate held constant), ε-LRP on the value projection; the gate projection takes nothing
    with torch.no_grad():
        h = model.value(x)
        y = model.norm(h, model.gate(x))
        z = model.head(y)
        relevance = torch.zeros_like(z)
        relevance[:, 2] = z[:, 2]
        r_y = y * ((relevance / _stabilize(z, epsilon)) @ model.head.weight)
        expected = x * ((r_y / _stabilize(h, epsilon)) @ model.value.weight)
    torch.testing.assert_close(expl.relevance, expected, rtol=RTOL, atol=ATOL)
    assert expl.rules["norm:RMSNormGated"].startswith("NormIdentity")


class GRN(nn.Module):
    """ConvNeXt V2's global response normalisation, channels last."""

    def __init__(self, dim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, 1, 1, dim))
        self.bias = nn.Parameter(torch.randn(1, 1, 1, dim) if bias else torch.zeros(1, 1, 1, dim))

    def forward(self, h: Tensor) -> Tensor:
        g = torch.linalg.vector_norm(h, ord=2, dim=(1, 2), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        return self.weight * (h * n) + self.bias + h


@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("bias", [True, False])
def test_global_response_norm_matches_the_oracle(epsilon: float, bias: bool) -> None:
    torch.manual_seed(5)
    model = NormHead(GRN(4, bias), dim=3 * 3 * 4).double().eval()
    model.forward = lambda x: model.head(model.norm(x).flatten(1))  # type: ignore[method-assign]
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    grn = model.norm

    def frozen(x_: Tensor, n: int | None = None, t: Tensor | None = None) -> Tensor:
        g = torch.linalg.vector_norm(x_, ord=2, dim=(1, 2), keepdim=True)
        m = 1 + grn.weight.detach() * g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        if n is None:
            return (m * x_ + grn.bias.detach()).flatten(1)
        assert t is not None
        return (m[n] * t + grn.bias.detach()[0]).flatten()

    expl = relprop.explain(model, x, 1, _composite(epsilon), verify=True)
    expected = _oracle(frozen, x, model.head, 1, epsilon)
    torch.testing.assert_close(expl.relevance, expected, rtol=RTOL, atol=ATOL)
    if not bias and epsilon == 0:  # no bias: the identity R_x = R_y, and the head conserves
        torch.testing.assert_close(expl.relevance.flatten(1).sum(1), expl.explained)


# ----------------------------------------------------------------- tiny Hugging Face models
transformers = pytest.importorskip("transformers")
V = 100


def _ids() -> Tensor:
    return torch.randint(3, V, (2, 10), generator=torch.Generator().manual_seed(1))


def _image() -> Tensor:
    return torch.randn(2, 3, 32, 32, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(2))


def _text_config(cls: Any, **extra: Any) -> Any:
    return cls(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, max_position_embeddings=40, num_labels=3, **extra)


HF: dict[str, Callable[[], tuple[Any, Any, Tensor]]] = {
    "deberta": lambda: (transformers.DebertaForSequenceClassification,
                        _text_config(transformers.DebertaConfig), _ids()),
    "ibert": lambda: (transformers.IBertForSequenceClassification,
                      _text_config(transformers.IBertConfig), _ids()),
    "cohere": lambda: (transformers.CohereForCausalLM,
                       _text_config(transformers.CohereConfig, num_key_value_heads=2,
                                    bos_token_id=0, eos_token_id=0, pad_token_id=0), _ids()),
    "convnextv2": lambda: (transformers.ConvNextV2ForImageClassification,
                           transformers.ConvNextV2Config(hidden_sizes=[8, 16], depths=[1, 1],
                                                         num_stages=2, num_labels=3), _image()),
    "poolformer": lambda: (transformers.PoolFormerForImageClassification,
                           transformers.PoolFormerConfig(
                               hidden_sizes=[8, 16], depths=[1, 1], num_encoder_blocks=2,
                               strides=[4, 2], patch_sizes=[7, 3], padding=[2, 1],
                               num_labels=3), _image()),
    "bit": lambda: (transformers.BitForImageClassification,
                    transformers.BitConfig(hidden_sizes=[8, 16], depths=[1, 1],
                                           embedding_size=8, num_groups=4, num_labels=3,
                                           layer_type="preactivation"), _image()),
}


def _build(cls: Any, config: Any, bias_free: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = cls._from_config(config, attn_implementation="eager").eval().double()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("grn.weight"):  # ConvNeXt V2 starts GRN at zero: make it act
                parameter.normal_()
            if bias_free and name.endswith("bias"):
                parameter.zero_()
    return model


def _total(expl: relprop.Explanation) -> Tensor:
    total = expl.relevance.reshape(expl.relevance.shape[0], -1).sum(dim=1)
    return total + sum((v.reshape(v.shape[0], -1).sum(dim=1) for v in expl.sources.values()),
                       torch.zeros_like(total))


@pytest.mark.parametrize("name", sorted(HF))
def test_hugging_face_normalisations_explain_and_conserve(name: str) -> None:
    cls, config, x = HF[name]()
    target = TokenLogit(7) if name == "cohere" else 1
    expl = relprop.explain(_build(cls, config), x, target, attnlrp(), verify=True)
    assert expl.relevance.shape == x.shape
    plain = relprop.explain(_build(cls, config, bias_free=True), x, target,
                            cp_lrp(epsilon=0.0))
    torch.testing.assert_close(_total(plain), plain.explained, rtol=0, atol=1e-6)


def test_mamba2_gated_norm_module_alone() -> None:
    """Mamba2's ``MambaRMSNormGated`` from a tiny model (the whole model is refused for its
    selective scan, ``exp``/``cumsum``, which has no rule)."""
    config = transformers.Mamba2Config(vocab_size=V, hidden_size=32, num_hidden_layers=1,
                                       num_heads=4, head_dim=16, n_groups=1, state_size=8,
                                       expand=2, chunk_size=16)
    torch.manual_seed(0)
    norm = transformers.Mamba2Model(config).double().eval().layers[0].mixer.norm

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.value, self.gate = nn.Linear(8, 64, bias=False), nn.Linear(8, 64, bias=False)
            self.norm, self.head = norm, nn.Linear(64, 3, bias=False)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.norm(self.value(x), self.gate(x)))

    model = Model().double().eval()
    x = torch.randn(3, 8, dtype=torch.float64)
    expl = relprop.explain(model, x, 0, cp_lrp(epsilon=0.0), verify=True)
    assert expl.rules["norm:Mamba2RMSNormGated"].startswith("NormIdentity")
    # the norm computes in float32: conservation up to its rounding
    torch.testing.assert_close(expl.relevance.sum(1), expl.explained, rtol=1e-6, atol=1e-9)
