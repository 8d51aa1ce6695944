"""Hugging Face transformers explained end to end: BERT, GPT-2, Llama, ViT; eager and SDPA.

Small random configurations in float64. The rules themselves are checked against an
independent float64 re-implementation in ``tests/test_transformer_rules.py``; here the
engine must find every op of real model code, give eager and fused attention the same
relevance, conserve where the rules do, and leave the model and the library as they were.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import relprop
from relprop.composites import attnlrp, cp_lrp
from relprop.targets import TokenLogit
from tests.helpers.snapshots import assert_unchanged, snapshot

transformers = pytest.importorskip("transformers")

IMPLEMENTATIONS = ("eager", "sdpa")


def _bert(impl: str, **extra: Any) -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, num_labels=3, **extra)
    return _build(transformers.BertForSequenceClassification, config, impl)


def _gpt2(impl: str) -> torch.nn.Module:
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                                     n_positions=40, bos_token_id=0, eos_token_id=0)
    return _build(transformers.GPT2LMHeadModel, config, impl)


def _llama(impl: str) -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=40,
        bos_token_id=0, eos_token_id=0)
    return _build(transformers.LlamaForCausalLM, config, impl)


def _vit(impl: str) -> torch.nn.Module:
    config = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, num_labels=3)
    return _build(transformers.ViTForImageClassification, config, impl)


def _build(cls: Any, config: Any, impl: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = cls._from_config(config, attn_implementation=impl)
    return model.eval().double()


def _ids(batch: int = 2, length: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


def _total(expl: relprop.Explanation) -> torch.Tensor:
    """Relevance of tokens and of every other embedding lookup, per sample."""
    total = expl.relevance.reshape(expl.relevance.shape[0], -1).sum(dim=1)
    return total + sum((v.reshape(v.shape[0], -1).sum(dim=1) for v in expl.sources.values()),
                       torch.zeros_like(total))


CASES: dict[str, tuple[Callable[[str], torch.nn.Module], Callable[[], Any]]] = {
    "bert": (_bert, lambda: (_ids(), 1)),
    "gpt2": (_gpt2, lambda: (_ids(), TokenLogit(7))),
    "llama": (_llama, lambda: (_ids(), TokenLogit(7, against=11))),
    "vit": (_vit, lambda: (torch.randn(2, 3, 16, 16, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(2)), 2)),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("preset", [attnlrp, cp_lrp])
def test_eager_and_sdpa_attention_give_the_same_relevance(name: str, preset: Any) -> None:
    build, data = CASES[name]
    x, target = data()
    results = [relprop.explain(build(impl), x, target, preset()) for impl in IMPLEMENTATIONS]
    eager, sdpa = results
    scale = eager.relevance.abs().max()
    assert scale > 0
    # Llama's and ViT's eager attention compute the softmax in float32 even for a float64
    # model, so their forward passes themselves differ from SDPA's at ~1e-7
    tolerance = 1e-5 if name in ("llama", "vit") else 1e-10
    torch.testing.assert_close(sdpa.relevance, eager.relevance, rtol=0, atol=tolerance * scale)
    torch.testing.assert_close(sdpa.explained, eager.explained)
    assert eager.relevance.shape == x.shape


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_cp_lrp_conserves_on_a_bias_free_llama(impl: str) -> None:
    """Llama has no biases and RMSNorm; with the attention weights constant every rule is
    conservative, so token relevance sums to the explained logit (no position embeddings:
    rotary positions are constants)."""
    expl = relprop.explain(_llama(impl), _ids(), TokenLogit(7), cp_lrp(epsilon=0.0))
    assert expl.sources == {}
    torch.testing.assert_close(expl.relevance.sum(dim=1), expl.explained, rtol=1e-9, atol=1e-12)


def test_attnlrp_differs_from_cp_lrp_only_through_the_attention_scores() -> None:
    model = _llama("sdpa")
    ids = _ids()
    full = relprop.explain(model, ids, TokenLogit(7), attnlrp(epsilon=0.0))
    cp = relprop.explain(model, ids, TokenLogit(7), cp_lrp(epsilon=0.0))
    assert not torch.allclose(full.relevance, cp.relevance)
    # AttnLRP's softmax rule is not conservative: the gap is what its bias terms absorb
    assert not torch.allclose(full.relevance.sum(dim=1), full.explained)


def test_bert_reports_position_and_token_type_relevance_and_padding_gets_none() -> None:
    model = _bert("sdpa")
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0
    expl = relprop.explain(model, ids, 1, forward_kwargs={"attention_mask": mask})
    assert set(expl.sources) == {"bert.embeddings.position_embeddings",
                                 "bert.embeddings.token_type_embeddings"}
    for relevance in (expl.relevance, *expl.sources.values()):
        assert relevance.shape == ids.shape
        assert torch.all(relevance[1, -4:] == 0)
        assert torch.all(relevance[0] != 0)
    # the padded sample explains as the same sentence without its padding
    alone = relprop.explain(model, ids[1:, :-4], 1)
    torch.testing.assert_close(expl.relevance[1, :-4], alone.relevance[0], rtol=1e-9,
                               atol=1e-12)


def test_padding_gets_no_relevance_even_without_the_final_mask() -> None:
    """The zeros come from the masked attention itself: a mask of all ones on the padded
    sample but the same additive mask inside shows the rule, not the post-hoc masking."""
    model = _bert("eager")
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0
    expl = relprop.explain(model, ids, 1, forward_kwargs={"attention_mask": mask}, record=True)
    embeddings = expl.layers["bert.embeddings"]
    assert torch.all(embeddings[0, -3:] == 0)


def test_next_token_and_contrastive_targets_of_gpt2() -> None:
    model = _gpt2("sdpa")
    ids = _ids()
    logits = model(ids).logits
    plain = relprop.explain(model, ids, TokenLogit(7))
    torch.testing.assert_close(plain.explained, logits[:, -1, 7])
    contrast = relprop.explain(model, ids, TokenLogit(7, against=9))
    torch.testing.assert_close(contrast.explained, logits[:, -1, 7] - logits[:, -1, 9])
    other = relprop.explain(model, ids, TokenLogit(7, against=9, position=3))
    torch.testing.assert_close(other.explained, logits[:, 3, 7] - logits[:, 3, 9])
    # causal attention: tokens after the explained position get nothing
    assert torch.all(other.relevance[:, 4:] == 0)
    assert torch.all(other.relevance[:, :4] != 0)


def test_vit_explains_pixels_with_patch_convolution_and_class_token() -> None:
    model = _vit("sdpa")
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    expl = relprop.explain(model, x, 2, record=True)
    assert expl.relevance.shape == x.shape
    assert any(name.endswith(":conv2d") for name in expl.rules)
    assert any("Attention" in rule for rule in expl.rules.values())
    # the learned position embedding (a parameter added to the patches) and the class token
    # (a parameter concatenated to them) are reported apart
    assert set(expl.sources) == {"vit.embeddings.position_embeddings",
                                 "vit.embeddings.cls_token"}
    assert expl.sources["vit.embeddings.position_embeddings"].shape == (2, 17)
    assert expl.sources["vit.embeddings.cls_token"].shape == (2, 1)
    assert bool(expl.sources["vit.embeddings.cls_token"].ne(0).all())


def test_learned_position_parameter_is_a_source_and_conservation_includes_it() -> None:
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(20, 8)
            self.pos = torch.nn.Parameter(torch.randn(1, 5, 8))
            self.head = torch.nn.Linear(8, 3, bias=False)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.embed(ids)
            h += self.pos
            return self.head(torch.nn.functional.gelu(h).mean(dim=1))

    torch.manual_seed(0)
    model = Tiny().double().eval()
    ids = torch.randint(0, 20, (3, 5))
    expl = relprop.explain(model, ids, 1, cp_lrp(0.0))
    assert set(expl.sources) == {"pos"} and expl.sources["pos"].shape == (3, 5)
    torch.testing.assert_close(_total(expl), expl.explained)


def test_class_token_is_a_source_and_conservation_includes_it() -> None:
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = torch.nn.Linear(6, 8, bias=False)
            self.cls = torch.nn.Parameter(torch.randn(1, 1, 8))
            self.mix = torch.nn.Linear(8, 8, bias=False)
            self.head = torch.nn.Linear(8, 3, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.patch(x)], dim=1)
            h = h + torch.softmax(h @ h.transpose(1, 2), dim=-1) @ self.mix(h)
            return self.head(h[:, 0])

    torch.manual_seed(0)
    model = Tiny().double().eval()
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    expl = relprop.explain(model, x, 1, cp_lrp(0.0))
    assert set(expl.sources) == {"cls"} and expl.sources["cls"].shape == (3, 1)
    assert bool(expl.sources["cls"].ne(0).all())
    torch.testing.assert_close(_total(expl), expl.explained)
    # the model is unchanged, and a parameter expanded but not joined is no source
    assert model.cls.requires_grad and model.cls.grad is None


def test_rules_are_assigned_to_every_transformer_op() -> None:
    expl = relprop.explain(_gpt2("eager"), _ids(), TokenLogit(7), attnlrp())
    kinds = {rule.split("(")[0] for rule in expl.rules.values()}
    assert {"Epsilon", "SoftmaxTaylor", "Product", "NormIdentity", "Pass"} <= kinds
    # GPT-2's Conv1D is torch.addmm with a bias: a linear layer with the ε rule
    assert any(name.endswith(":addmm") and rule.startswith("Epsilon")
               for name, rule in expl.rules.items())
    # the tanh-approximated GELU written with elementary ops is one activation
    assert any("NewGELUActivation" in name and rule.startswith("Pass")
               for name, rule in expl.rules.items())


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_classes_and_functions_are_untouched(name: str) -> None:
    build, data = CASES[name]
    model = build("sdpa")
    x, target = data()
    cls_attributes = {cls: dict(vars(cls)) for cls in type(model).__mro__}
    module_classes = {type(m): dict(vars(type(m))) for m in model.modules()}
    functions = {n: getattr(F, n) for n in ("softmax", "layer_norm", "linear", "embedding",
                                            "scaled_dot_product_attention", "gelu")}
    before = snapshot(model)
    relprop.explain(model, x, target, record=True)
    assert_unchanged(before, snapshot(model))
    assert {cls: dict(vars(cls)) for cls in type(model).__mro__} == cls_attributes
    assert {type(m): dict(vars(type(m))) for m in model.modules()} == module_classes
    assert {n: getattr(F, n) for n in functions} == functions


def test_model_unchanged_after_an_error() -> None:
    model = _bert("sdpa")
    before = snapshot(model)
    with pytest.raises(relprop.InvalidInputError, match="out of range"):
        relprop.explain(model, _ids(), 7)
    assert_unchanged(before, snapshot(model))


def test_inputs_longer_than_the_maximum_raise_the_models_own_error() -> None:
    model = _bert("sdpa")
    ids = _ids(length=50)  # max_position_embeddings=40
    with pytest.raises(Exception) as plain:
        model(ids)
    with pytest.raises(type(plain.value)) as ours:
        relprop.explain(model, ids, 1)
    assert str(ours.value) == str(plain.value)


def test_an_unknown_attention_implementation_is_named() -> None:
    """An attention function relprop has no rule for (here: a hand-written softmax)."""
    def exp_attention(module: Any, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: Any, **kwargs: Any) -> Any:
        scores = torch.exp(query @ key.transpose(2, 3) * kwargs.get("scaling", 1.0))
        weights = scores / scores.sum(dim=-1, keepdim=True)
        return (weights @ value).transpose(1, 2).contiguous(), weights

    transformers.AttentionInterface.register("relprop_test_exp", exp_attention)
    model = _bert("sdpa")
    model.set_attn_implementation("relprop_test_exp")
    with pytest.raises(relprop.UnsupportedOperationError,
                       match=r"bert\.encoder\.layer\.0\.attention\.self.*'exp'"):
        relprop.explain(model, _ids(), 1)


def test_outputs_without_logits_name_their_fields() -> None:
    model = _bert("sdpa").bert
    with pytest.raises(relprop.InvalidInputError, match="last_hidden_state"):
        relprop.explain(model, _ids(), 1)


def test_token_ids_must_be_looked_up() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 2)).double().eval()
    with pytest.raises(relprop.InvalidInputError, match="floating point"):
        relprop.explain(model, torch.ones(2, 4, dtype=torch.long), 0)
    with pytest.raises(relprop.InvalidInputError, match=r"\(batch, sequence\)"):
        relprop.explain(_bert("sdpa"), torch.ones(4, dtype=torch.long), 0)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_conservation_ledger_covers_every_layer(impl: str) -> None:
    model, ids = _llama(impl), _ids()
    expl = relprop.explain(model, ids, TokenLogit(7), cp_lrp(0.0), record=True)
    names = [entry.name for entry in expl.conservation]
    attention = ":softmax" if impl == "eager" else ":scaled_dot_product_attention"
    assert any(attention in n for n in names) and any("RMSNorm" in n for n in names)
    assert any(n.endswith("mlp:mul") for n in names)  # the gated MLP product
    for entry in expl.conservation:  # every rule of CP-LRP with ε = 0 conserves
        assert max(abs(a) for a in entry.absorbed) < 1e-9, entry.name
    # AttnLRP: what is not conserved is absorbed by the softmax (its bias term) alone
    full = relprop.explain(model, ids, TokenLogit(7), attnlrp(0.0), record=True)
    leaks = {e.name for e in full.conservation if max(abs(a) for a in e.absorbed) > 1e-9}
    assert leaks and all(attention in n for n in leaks)


def test_signature_documents_forward_kwargs() -> None:
    assert "forward_kwargs" in inspect.signature(relprop.explain).parameters


def test_normalize_takes_the_identity_rule() -> None:
    """``F.normalize`` holds the norm constant: relevance passes through unchanged."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4, bias=False).double()

    class Normalised(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.normalize(layer(x), dim=-1)

    x = torch.randn(3, 6, dtype=torch.float64)
    seed = torch.randn(3, 4, dtype=torch.float64)
    with torch.no_grad():
        y = Normalised()(x)
    expl = relprop.explain(Normalised().eval(), x, seed * y, record=True)
    plain = relprop.explain(layer.eval(), x, seed * y)  # the same relevance, now at z
    torch.testing.assert_close(expl.relevance, plain.relevance)
    assert any(name.endswith(":normalize") for name in expl.rules)


def test_t5_relative_position_bias_is_held_like_a_bias_and_cp_lrp_conserves() -> None:
    """T5 adds a learned relative-position bias (a lookup of positions) to the attention
    scores through SDPA's mask: held constant; the token relevance and the sources add up."""
    config = transformers.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                   num_heads=4, decoder_start_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = transformers.T5ForSequenceClassification(config).double().eval()
    ids = torch.randint(2, 99, (2, 7))
    ids[:, -1] = 1
    relprop.explain(model, ids, target=0, verify=True)
    for name, parameter in model.named_parameters():
        if name.endswith("bias") and parameter.dim() == 1:
            parameter.data.zero_()
    expl = relprop.explain(model, ids, 0, cp_lrp(0.0))
    total = expl.relevance.sum(1) + sum(v.reshape(2, -1).sum(1) for v in expl.sources.values()
                                        if v.shape[0] == 2)
    torch.testing.assert_close(total, expl.explained, rtol=1e-9, atol=1e-12)


def test_an_attention_mask_computed_from_the_tokens_takes_its_share() -> None:
    """A float mask computed from the tokens is a term of the scores (rules.Attention): its
    share goes back through its ops — explained where they have rules, refused by name (the
    op) where they do not. (The share itself is checked against the attention spelled out
    in tests/test_zoo_ops.py.)"""
    class Masked(torch.nn.Module):
        def __init__(self, bias: Callable[[torch.Tensor], torch.Tensor]) -> None:
            super().__init__()
            self.embed, self.head = torch.nn.Embedding(20, 8), torch.nn.Linear(8, 2)
            self.bias = bias

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.embed(ids)[:, None]  # (B, 1, T, 8)
            scores_bias = self.bias(h.sum(-1, keepdim=True))  # from the tokens themselves
            out = torch.nn.functional.scaled_dot_product_attention(h, h, h, attn_mask=scores_bias)
            return self.head(out[:, 0].mean(1))

    ids = torch.randint(0, 20, (2, 5))
    expl = relprop.explain(Masked(lambda b: b).eval(), ids, 0, verify=True)
    assert torch.isfinite(expl.relevance).all() and expl.relevance.abs().sum() > 0
    with pytest.raises(relprop.UnsupportedOperationError, match="op 'exp'"):
        relprop.explain(Masked(torch.exp).eval(), ids, 0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_let_go_are_computed_again_to_the_bit(name: str, monkeypatch: Any) -> None:
    """Under AttnLRP the dense layers keep no input, and the norms and activations that only
    they read (Hugging Face's ``GELUActivation`` and ``LlamaRMSNorm`` taken whole, as modules)
    let their outputs go and compute them again on the way back: the relevance is the one
    with everything kept (recording keeps it), to the bit."""
    from relprop._engine import apply

    let_go: list[str] = []
    original = apply.let_output_go

    def counting(node: Any) -> None:
        unary = apply.recomputable_below(node)
        if unary is not None:
            let_go.append(unary.call.op_name)
        original(node)

    monkeypatch.setattr(apply, "let_output_go", counting)
    build, inputs = CASES[name]
    model = build("sdpa")
    x, target = inputs()
    expl = relprop.explain(model, x, target, attnlrp())
    kept = relprop.explain(model, x, target, attnlrp(), record=True)
    torch.testing.assert_close(expl.relevance, kept.relevance, rtol=0, atol=0)
    expected = {"bert": {"layer_norm", "GELUActivation", "tanh"},  # tanh: the pooler's
                "llama": {"LlamaRMSNorm"}, "gpt2": {"layer_norm", "NewGELUActivation"},
                "vit": {"layer_norm", "GELUActivation"}}
    assert set(let_go) == expected[name], let_go
