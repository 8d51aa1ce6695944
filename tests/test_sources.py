"""Constants that join the residual stream are sources: sinusoidal position tables held as
buffers or computed in the forward pass, position parameters reached through a view or a
concatenation. Their share of the relevance is reported in ``Explanation.sources``, so that on
a bias-free model under a conservative composite ``Σ relevance + Σ sources = explained``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop.composites import cp_lrp
from relprop.targets import TokenLogit


def _total(expl: relprop.Explanation) -> Tensor:
    total = expl.relevance.reshape(expl.relevance.shape[0], -1).sum(dim=1)
    return total + sum((v.reshape(v.shape[0], -1).sum(dim=1) for v in expl.sources.values()),
                       torch.zeros_like(total))


def _sinusoids(length: int, dim: int) -> Tensor:
    position = torch.arange(length, dtype=torch.float64)[:, None]
    rates = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return torch.cat([torch.sin(position * rates), torch.cos(position * rates)], dim=-1)


class Sinusoidal(nn.Module):
    """Token embeddings, scaled, plus a sinusoidal table: a buffer indexed by positions
    (``"buffer"``), computed in the forward pass (``"computed"``), or a bias (``"bias"``)."""

    def __init__(self, table: str) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.register_buffer("pos_encoding", _sinusoids(16, 8))
        self.bias = nn.Parameter(torch.randn(8))
        self.mix = nn.Linear(8, 8, bias=False)
        self.head = nn.Linear(8, 3, bias=False)
        self.table = table

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embed(ids) * math.sqrt(8)
        positions = torch.arange(ids.shape[1])[None]
        if self.table == "buffer":
            h = h + self.pos_encoding[positions, :]
        elif self.table == "computed":
            h = h + _sinusoids(ids.shape[1], 8).to(h.dtype)
        else:
            h = h + self.bias
        h = h + torch.relu(self.mix(h))
        return self.head(h.mean(dim=1))


@pytest.mark.parametrize("table", ["buffer", "computed"])
def test_a_sinusoidal_table_is_a_source_and_conservation_includes_it(table: str) -> None:
    torch.manual_seed(0)
    model = Sinusoidal(table).double().eval()
    ids = torch.randint(0, 20, (3, 5))
    expl = relprop.explain(model, ids, 1, cp_lrp(0.0))
    (name,) = expl.sources
    assert name == "<model>:constant"  # a table looked up in a buffer is no buffer itself
    assert expl.sources[name].shape == (3, 5) and bool(expl.sources[name].ne(0).any())
    torch.testing.assert_close(_total(expl), expl.explained, rtol=1e-10, atol=1e-12)
    # the oracle: the table's relevance is its own term of the first sum, h0 = e + p, pulled
    # back through the rest of the net (ReLU mix and mean pooling, LRP-0 = gradient × input)
    e = model.embed(ids).detach() * math.sqrt(8)
    p = _sinusoids(5, 8)[None].expand_as(e)
    h0 = (e + p).requires_grad_(True)
    out = model.head((h0 + torch.relu(model.mix(h0))).mean(dim=1))[:, 1]
    (grad,) = torch.autograd.grad(out.sum(), h0)
    torch.testing.assert_close(expl.sources[name], (p * grad).sum(-1))
    torch.testing.assert_close(expl.relevance, (e * grad).sum(-1))


def test_a_bias_is_no_source() -> None:
    torch.manual_seed(0)
    expl = relprop.explain(Sinusoidal("bias").double().eval(), torch.randint(0, 20, (2, 4)),
                           0, cp_lrp(0.0))
    assert expl.sources == {}


def test_an_additive_mask_is_no_source() -> None:
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = nn.Embedding(20, 4), nn.Linear(4, 2, bias=False)

        def forward(self, ids: Tensor) -> Tensor:
            h = self.embed(ids)
            mask = torch.zeros_like(h)
            mask[:, -1] = torch.finfo(h.dtype).min
            return self.head(torch.softmax(h + mask, dim=1).mul(h).sum(1))

    expl = relprop.explain(Masked().double().eval(), torch.randint(0, 20, (2, 4)), 0,
                           cp_lrp(0.0))
    assert expl.sources == {}


# ----------------------------------------------------------------- tiny Hugging Face models
transformers = pytest.importorskip("transformers")


@contextmanager
def _float64() -> Iterator[None]:
    """XGLM's attention builds ``torch.full((), finfo(float64).min)`` in the default dtype,
    which overflows in float32: build and run the float64 models with float64 as default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _ids() -> Tensor:
    return torch.randint(3, 100, (2, 10), generator=torch.Generator().manual_seed(1))


HF: dict[str, Callable[[], tuple[Any, Any, Tensor, Any, set[str]]]] = {
    "ctrl": lambda: (transformers.CTRLLMHeadModel,
                     transformers.CTRLConfig(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                                             dff=64, n_positions=40),
                     _ids(), TokenLogit(7), {"transformer:constant"}),
    "xglm": lambda: (transformers.XGLMForCausalLM,
                     transformers.XGLMConfig(vocab_size=100, d_model=32, num_layers=2,
                                             attention_heads=4, ffn_dim=64,
                                             max_position_embeddings=40, pad_token_id=1),
                     _ids(), TokenLogit(7), {"model:constant"}),
    "pvt": lambda: (transformers.PvtForImageClassification,
                    transformers.PvtConfig(image_size=32, num_encoder_blocks=2, depths=[1, 1],
                                           sequence_reduction_ratios=[2, 1],
                                           hidden_sizes=[8, 16], patch_sizes=[4, 2],
                                           strides=[4, 2], num_attention_heads=[1, 2],
                                           mlp_ratios=[2, 2], num_labels=3),
                    torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2),
                                dtype=torch.float64), 1,
                    {"pvt.encoder.patch_embeddings.0:constant",
                     "pvt.encoder.patch_embeddings.1:constant",
                     "pvt.encoder.patch_embeddings.1.cls_token"}),
}


def _build(cls: Any, config: Any, bias_free: bool) -> nn.Module:
    torch.manual_seed(0)
    model = cls._from_config(config, attn_implementation="eager").eval().double()
    if bias_free:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("bias"):
                    parameter.zero_()
    return model


@pytest.mark.parametrize("name", sorted(HF))
def test_position_tables_of_hugging_face_models_are_sources(name: str) -> None:
    with _float64():
        cls, config, x, target, sources = HF[name]()
        expl = relprop.explain(_build(cls, config, False), x, target, verify=True)
        assert expl.relevance.shape == x.shape
        plain = relprop.explain(_build(cls, config, True), x, target, cp_lrp(epsilon=0.0))
    assert sources <= set(plain.sources)
    torch.testing.assert_close(_total(plain), plain.explained, rtol=0, atol=1e-6)


class _MovesIds(torch.nn.Module):
    """Looks its token ids up after moving them: transposed (XLNet), padded to a window
    (Longformer), or hashed into buckets (CANINE); relevance still comes per input token."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(14)
        self.embed = torch.nn.Embedding(40, 6)
        self.head = torch.nn.Linear(6, 3, bias=False)
        self.how = how

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.how == "transpose":
            h = self.embed(ids.transpose(0, 1).contiguous()).transpose(0, 1)
        elif self.how == "pad":
            h = self.embed(torch.nn.functional.pad(ids, (0, 3), value=0))[:, :ids.shape[1]]
        elif self.how == "hash":
            h = self.embed((ids * 7 + 3) % 40)
        else:
            h = self.embed(ids)
        return self.head(torch.tanh(h).mean(1))


@pytest.mark.parametrize("how", ["transpose", "pad", "hash"])
def test_ids_moved_before_the_lookup_get_relevance_per_input_token(how: str) -> None:
    ids = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(0))
    model = _MovesIds(how).double().eval()
    expl = relprop.explain(model, ids, 1, cp_lrp(0.0), verify=True)
    assert expl.relevance.shape == ids.shape
    total = expl.relevance.sum(1) + sum(v.reshape(2, -1).sum(1) for v in expl.sources.values()
                                        if v.shape[0] == 2)
    torch.testing.assert_close(total, expl.explained)
    # the same tokens, looked up where they stand: the same relevance per token
    plain = _MovesIds("none").double().eval()
    if how == "hash":
        with torch.no_grad():
            plain.embed.weight.copy_(model.embed.weight[(torch.arange(40) * 7 + 3) % 40])
    reference = relprop.explain(plain, ids, 1, cp_lrp(0.0))
    torch.testing.assert_close(expl.relevance, reference.relevance)
