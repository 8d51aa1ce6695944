"""relprop_bench.sentiment: generated reviews with known evidence words, the CNN, token μ,
and the example that shows them (examples/sentiment_words.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import relprop
from relprop import composites
from relprop_bench import sentiment as S

if S.lexicon_file() is None:
    pytest.skip("vadersentiment (the VADER lexicon) is not installed", allow_module_level=True)

#: a small configuration: 100 words, trained in a second or two on one thread
SMALL = S.SentimentConfig(words=100, n_train=3000, epochs=3, batch_size=32)
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sentiment_words.py"


@pytest.fixture(scope="module")
def lexicon() -> dict[str, float]:
    return S.load_lexicon()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sentiment-cache")


@pytest.fixture(scope="module")
def trained(lexicon: dict[str, float], cache: Path
            ) -> tuple[S.SentimentCNN, S.Vocabulary, dict[str, object]]:
    return S.trained_model(SMALL, lexicon, cache=cache, progress=None)


@pytest.fixture(scope="module")
def held_out(lexicon: dict[str, float], trained: tuple[S.SentimentCNN, S.Vocabulary, dict]
             ) -> S.Sentences:
    return S.make_sentences(300, S.TEST_SEED, lexicon, trained[1], SMALL.pool(lexicon))


def test_lexicon_holds_plain_strong_words(lexicon: dict[str, float]) -> None:
    assert len(lexicon) > 3000
    assert all(w.isalpha() and w.islower() and len(w) >= 3 for w in lexicon)
    assert all(1.5 <= abs(r) <= 4 for r in lexicon.values())
    assert lexicon["great"] > 0 > lexicon["awful"]


def test_filler_words_are_not_in_the_lexicon_at_all() -> None:
    path = S.lexicon_file()
    assert path is not None
    entries = {line.split("\t")[0] for line in path.read_text(encoding="utf-8").splitlines()}
    filler = {w for phrase in S.OPENERS + S.ADVERBS + S.CONNECTORS for w in phrase.split()}
    assert not filler & entries


def test_generation_is_deterministic(lexicon: dict[str, float]) -> None:
    vocab = S.Vocabulary(sorted(lexicon))
    a, b = (S.make_sentences(200, 7, lexicon, vocab) for _ in range(2))
    assert a.tokens == b.tokens
    assert torch.equal(a.ids, b.ids) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.ratings, b.ratings)
    assert S.make_sentences(200, 8, lexicon, vocab).tokens != a.tokens


def test_labels_and_evidence_follow_the_lexicon(lexicon: dict[str, float]) -> None:
    vocab = S.Vocabulary(sorted(lexicon))
    sentences = S.make_sentences(500, 3, lexicon, vocab)
    evidence, real = sentences.evidence(), sentences.real
    for i, words in enumerate(sentences.tokens):
        rated = [(p, lexicon[w]) for p, w in enumerate(words) if w in lexicon]
        assert 1 <= len(rated) <= 3
        total = sum(r for _, r in rated)
        assert total != 0 and int(sentences.labels[i]) == int(total > 0)
        sign = 1 if total > 0 else -1
        assert evidence[i].nonzero().flatten().tolist() == [p for p, r in rated if r * sign > 0]
        assert sentences.ratings[i, :len(words)].tolist() == pytest.approx(
            [lexicon.get(w, 0.0) for w in words])
        assert vocab.words[int(sentences.ids[i, 0])] == words[0]
        assert int(real[i].sum()) == len(words) == int(sentences.lengths[i])
    assert not bool((sentences.ids[~real]).any())  # padding is id 0
    assert 0.3 < float(sentences.labels.double().mean()) < 0.7


def test_token_localisation_scores_a_known_map(lexicon: dict[str, float]) -> None:
    vocab = S.Vocabulary(sorted(lexicon))
    sentences = S.make_sentences(50, 4, lexicon, vocab)
    evidence = sentences.evidence().double()
    perfect = S.token_localisation(evidence, sentences)
    assert torch.equal(perfect.mu, torch.ones(50, dtype=torch.float64))
    assert torch.equal(perfect.exact, torch.ones(50, dtype=torch.float64))
    # positive relevance on the padding is not counted; negative relevance never is
    padded = evidence + (~sentences.real).double() * 5 - sentences.real.double() * 0.5
    assert torch.allclose(S.token_localisation(padded, sentences).mu, perfect.mu)
    # a map that is constant on the tokens ranks by expectation and puts μ at K / length
    flat = S.token_localisation(sentences.real.double(), sentences)
    share = sentences.evidence().sum(1) / sentences.lengths
    assert torch.allclose(flat.mu, share.double()) and torch.allclose(flat.rank, share.double())
    assert torch.isnan(S.token_localisation(-evidence, sentences).mu).all()


def test_model_trains_above_90_percent(trained: tuple[S.SentimentCNN, S.Vocabulary, dict],
                                       held_out: S.Sentences, cache: Path) -> None:
    model, _, meta = trained
    assert meta["test_accuracy"] > 0.9
    assert S.accuracy(model, held_out.ids, held_out.labels) > 0.9
    again, _, meta_again = S.trained_model(SMALL, cache=cache, progress=None)
    assert meta_again["loaded"] and meta_again["cached"] == meta["cached"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values()))


def test_training_is_deterministic_whatever_the_thread_count(lexicon: dict[str, float]) -> None:
    tiny = S.SentimentConfig(words=50, n_train=500, epochs=1, batch_size=32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = S.train_model(tiny, lexicon, progress=None)[0].state_dict()
        assert torch.get_num_threads() == 2  # training restores the caller's setting
        torch.set_num_threads(1)
        second = S.train_model(tiny, lexicon, progress=None)[0].state_dict()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_padding_does_not_change_the_output(trained: tuple[S.SentimentCNN, S.Vocabulary, dict],
                                            held_out: S.Sentences) -> None:
    model = trained[0]
    more = torch.cat([held_out.ids, torch.zeros(len(held_out), 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        batched = model(held_out.ids)
        # float32 through other sequence lengths and batch shapes: float32 tolerances (an
        # absolute 1e-5 alone is a few ulps of a logit of 30), far below what leaked padding does
        torch.testing.assert_close(model(more), batched, rtol=1e-5, atol=1e-5)
        alone = torch.cat([model(held_out.ids[i:i + 1, :int(held_out.lengths[i])])
                           for i in range(20)])
    torch.testing.assert_close(alone, batched[:20], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("composite", [composites.attnlrp(), composites.epsilon_alpha2_beta1(),
                                       composites.epsilon_plus()],
                         ids=["attnlrp", "epsilon_alpha2_beta1", "epsilon_plus"])
def test_token_ids_and_embeddings_give_the_same_relevance(
        trained: tuple[S.SentimentCNN, S.Vocabulary, dict], held_out: S.Sentences,
        composite: composites.Composite | None) -> None:
    model = trained[0]
    by_ids = S.via_ids(composite)(model, held_out)
    by_embeddings = S.via_embeddings(relprop.explain, composite=composite)(model, held_out)
    assert by_ids.relevance.shape == held_out.ids.shape
    torch.testing.assert_close(by_ids.relevance, by_embeddings.relevance)
    assert not bool(by_ids.relevance[~held_out.real].any())  # padding embeddings are 0


@pytest.mark.parametrize("composite", [None, composites.epsilon_plus()],
                         ids=["default", "epsilon_plus"])
def test_lrp_conserves_the_log_odds_but_the_output_bias(
        trained: tuple[S.SentimentCNN, S.Vocabulary, dict], held_out: S.Sentences,
        composite: composites.Composite | None) -> None:
    """ε (1e-6) on the dense layer keeps the bias's share of each logit; the max over time,
    ReLU and the bias-free convolution (αβ or z⁺, with contributions of both signs) pass all
    relevance down. So the words' relevance sums to the log-odds minus ``b_c − b_other``, up
    to float32 rounding and ε / |z| (z: the logits' inputs, of order 1)."""
    model = trained[0]
    explanation = S.via_ids(composite)(model, held_out)
    bias = model.head.fc.bias.detach()
    labels = held_out.labels
    expected = explanation.explained - (bias[labels] - bias[1 - labels])
    torch.testing.assert_close(explanation.relevance.sum(dim=1), expected, rtol=1e-4,
                               atol=1e-4)


def test_lrp_localises_far_better_than_random(
        trained: tuple[S.SentimentCNN, S.Vocabulary, dict], held_out: S.Sentences) -> None:
    model = trained[0]
    rows = {row["method"]: row for row in S.localisation_table(model, held_out, {
        "lrp": S.via_ids(), "random": S.via_embeddings(relprop.methods.random_baseline)})}
    lrp, random = rows["lrp"], rows["random"]
    assert lrp["undefined"] == 0
    assert lrp["mu"].low > random["mu"].high + 0.25
    assert lrp["rank"] > random["rank"] + 0.5


def test_example_writes_the_html(trained: tuple[S.SentimentCNN, S.Vocabulary, dict],
                                 cache: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("example_sentiment_words", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    path = module.main([
        "--out", str(tmp_path), "--cache", str(cache), "--words", str(SMALL.words),
        "--n-train", str(SMALL.n_train), "--epochs", str(SMALL.epochs),
        "--batch-size", str(SMALL.batch_size), "--n-test", "100", "--show", "2",
    ])
    page = path.read_text(encoding="utf-8")
    assert path.parent == tmp_path and page.startswith("<!DOCTYPE html>")
    assert page.count('class="sample"') == 2
    out = capsys.readouterr().out
    assert "loaded from" in out and "random_baseline" in out and "token mu" in out
