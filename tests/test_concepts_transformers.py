"""relprop.concepts on Hugging Face transformers (tiny random configurations, float64): MLP
neurons and attention heads as units, under AttnLRP and CP-LRP."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

import relprop
from relprop import concepts
from relprop.composites import attnlrp, cp_lrp
from relprop.targets import TokenLogit

transformers = pytest.importorskip("transformers")


def _llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=40,
        bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM._from_config(config, attn_implementation="sdpa") \
        .eval().double()


def _bert() -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, num_labels=3)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification._from_config(
        config, attn_implementation="eager").eval().double()


def _ids(batch: int = 2, length: int = 10) -> Tensor:
    return torch.randint(3, 100, (batch, length), generator=torch.Generator().manual_seed(1))


def _close(a: Tensor, b: Tensor, tol: float = 1e-6) -> None:
    scale = max(float(b.abs().max()), 1e-12)
    assert float((a - b).abs().max()) <= tol * scale


# (layer, heads, units): a decoder layer's output is a cut; the MLP's neurons (the input of
# its down projection) and the attention heads (the input of the output projection) sit
# inside residual branches
LLAMA_LAYERS = [("model.layers.0", None, 32), ("model.layers.0.mlp.down_proj:input", None, 64),
                ("model.layers.1.self_attn.o_proj:input", 4, 4)]


@pytest.mark.parametrize(("layer", "heads", "n"), LLAMA_LAYERS)
def test_llama_neurons_and_heads_conserve_under_cp_lrp(layer: str, heads: int | None,
                                                       n: int) -> None:
    """CP-LRP with ε = 0 conserves on Llama (no biases): each concept's token map sums to its
    relevance at the layer, and a cut's maps sum to the heatmap."""
    model, ids, target = _llama(), _ids(), TokenLogit(7)
    c = concepts.explain(model, ids, target, layer=layer, units=range(n), heads=heads,
                         composite=cp_lrp(epsilon=0.0))
    assert c.relevance.shape == (2, n, 10) and c.unit_dim == 2
    plain = relprop.explain(model, ids, target, cp_lrp(epsilon=0.0)).relevance
    _close(c.heatmap, plain, 1e-12)
    _close(c.relevance_sum(), c.concept_relevance)
    if heads is None and layer == "model.layers.0":
        _close(c.relevance.sum(1), plain)
        _close(c.unit_relevance.sum(1), c.explained)
    else:  # inside a branch: only what passes through it, the residual stream's share out
        _close(c.relevance.sum(1).sum(-1), c.unit_relevance.sum(1))
        assert float((c.unit_relevance.sum(1) - c.explained).abs().min()) > 1e-4


def test_heads_are_sums_of_their_neurons() -> None:
    model, ids = _llama(), _ids()
    layer = "model.layers.1.self_attn.o_proj:input"
    heads = concepts.explain(model, ids, TokenLogit(7), layer=layer, units=[1], heads=4,
                             composite=attnlrp())
    neurons = concepts.explain(model, ids, TokenLogit(7), layer=layer,
                               units=[tuple(range(8, 16))], composite=attnlrp())
    _close(heads.relevance, neurons.relevance, 1e-12)
    with pytest.raises(concepts.UnitIndexError, match="heads=5"):
        concepts.explain(model, ids, TokenLogit(7), layer=layer, units=[0], heads=5)


def test_bert_under_attnlrp_with_padding() -> None:
    model, ids = _bert(), _ids()
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    kwargs: dict[str, Any] = {"forward_kwargs": {"attention_mask": mask}}
    c = concepts.explain(model, ids, 1, layer="bert.encoder.layer.1", units=range(32),
                         composite=attnlrp(), **kwargs)
    plain = relprop.explain(model, ids, 1, attnlrp(), **kwargs).relevance
    _close(c.heatmap, plain, 1e-12)
    _close(c.relevance.sum(1), plain)  # a cut; token relevance only (positions are sources)
    assert torch.all(c.relevance[1, :, -3:] == 0)
    ranking = concepts.top_units(model, ids, 1, "bert.encoder.layer.0.intermediate", k=4,
                                 composite=attnlrp(), **kwargs)
    assert ranking.units.shape == (2, 4)
    graph = concepts.composition(model, ids, 1, upper=("bert.encoder.layer.1", 3),
                                 lower="bert.encoder.layer.0.intermediate", k=3,
                                 composite=attnlrp(), **kwargs)
    assert len(graph.children(0)) == 3


def test_references_over_token_ids_crop_to_spans() -> None:
    model, ids = _bert(), torch.randint(3, 100, (9, 10),
                                        generator=torch.Generator().manual_seed(4))
    refs = concepts.references(ids, model, "bert.encoder.layer.0.intermediate", [0, 5], k=3,
                               composite=attnlrp(), batch_size=4, progress=False)
    assert refs.tokens and refs.maps is not None and refs.maps.shape == (2, 3, 10)
    for row, unit in enumerate((0, 5)):
        for j, patch in enumerate(refs.patches(unit)):
            start, stop = refs.boxes[row, j].tolist()  # type: ignore[union-attr]
            assert torch.equal(patch, ids[refs.relevance_indices[row, j], start:stop])
            assert start <= int(refs.maps[row, j].argmax()) < stop
