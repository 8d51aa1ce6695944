"""Word-level sentiment with known evidence: generated reviews, a small CNN, and token μ.

The text example of the LRP overview (GloVe embeddings and a dense network on movie reviews,
words coloured by relevance) rebuilt offline, with a ground truth to score against. Each
sentence strings neutral phrases ("the movie was", "i think the plot is", "but", ...) around
one to three words of the VADER lexicon (Hutto & Gilbert 2014: words rated by people from
−4 to +4), e.g. "the actors were really superb but the ending was dull". The label is the
sign of the sum of their ratings, so the evidence for the label is known word by word: the
sentiment words whose rating has the label's sign.

- data: :func:`lexicon_file`, :func:`load_lexicon`, :class:`Vocabulary`,
  :func:`make_sentences` (a :class:`Sentences` batch);
- model: :class:`SentimentCNN` (``embed`` → ``head``), :func:`train_model`,
  :func:`trained_model` (weights cached like the digit nets of :mod:`~relprop_bench.models`);
- scoring: :func:`token_localisation` (token μ and rank accuracy), :func:`localisation_table`.

The lexicon comes from the ``vadersentiment`` package, read from its files (nothing of it is
imported); without it :func:`lexicon_file` returns ``None``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from relprop.composites import Composite, epsilon_alpha2_beta1, epsilon_plus, uniform
from relprop.errors import InvalidInputError
from relprop.explain import Explanation, explain
from relprop.methods import gradient, gradient_x_input, random_baseline
from relprop.rules import Epsilon
from relprop.targets import Contrast

from .models import Progress, _stderr, default_cache_dir
from .stats import Estimate, bootstrap_mean

__all__ = [
    "LABELS", "OPENERS", "ADVERBS", "CONNECTORS", "PAD", "UNK", "TEST_SEED",
    "lexicon_file", "load_lexicon", "Vocabulary", "Sentences", "make_sentences",
    "SentimentConfig", "SentimentCNN", "train_model", "trained_model", "accuracy",
    "TokenScores", "token_localisation", "log_odds", "via_ids", "via_embeddings",
    "default_explainers", "localisation_table",
]

#: class names by index
LABELS = ("negative", "positive")
#: neutral phrases, one before each sentiment word; none of their words is in the lexicon
OPENERS = (
    "the movie was", "i think the plot is", "the actors were", "the film felt",
    "the ending was", "to me the story is", "the soundtrack seemed", "overall it was",
    "the director made it", "the script is", "the dialogue sounded", "the cast looked",
)
#: optional words between a phrase and its sentiment word ("" = none)
ADVERBS = ("", "", "really", "quite", "rather", "so")
#: words joining the parts of a sentence
CONNECTORS = ("and", "but", "while", "although", "yet")
PAD, UNK = "<pad>", "<unk>"
#: data seeds: the test sentences use this one, training sentences ``TRAIN_SEED_OFFSET + seed``
TEST_SEED = 20_260_000
TRAIN_SEED_OFFSET = 10_000


# -- data ------------------------------------------------------------------------------------
def lexicon_file() -> Path | None:
    """The VADER lexicon shipped in the ``vadersentiment`` package, or ``None`` without it."""
    try:
        if importlib.util.find_spec("vaderSentiment") is None:
            return None
        path = importlib.resources.files("vaderSentiment") / "vader_lexicon.txt"
    except (ImportError, ValueError):  # a broken or shadowed install counts as none
        return None
    return Path(str(path)) if path.is_file() else None


def load_lexicon(path: Path | None = None, min_rating: float = 1.5) -> dict[str, float]:
    """Word → mean human rating in [−4, 4], for plain words with ``|rating| >= min_rating``.

    Plain words: lower-case letters only, three or more (the one- and two-letter entries are
    chat abbreviations such as "xd"); emoticons and phrases are left out.
    """
    path = lexicon_file() if path is None else path
    if path is None:
        raise InvalidInputError(
            "the VADER lexicon was not found: pip install vadersentiment, or pass its path"
        )
    words: dict[str, float] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or not re.fullmatch(r"[a-z]{3,}", fields[0]):
            continue
        rating = float(fields[1])
        if abs(rating) >= min_rating:
            words[fields[0]] = rating
    return words


def _filler() -> list[str]:
    return sorted({w for phrase in OPENERS + ADVERBS + CONNECTORS for w in phrase.split()})


class Vocabulary:
    """Token strings ↔ ids: ``PAD`` = 0, ``UNK`` = 1, the filler words, the sentiment words."""

    def __init__(self, sentiment_words: Sequence[str]) -> None:
        overlap = set(_filler()) & set(sentiment_words)
        if overlap:
            raise InvalidInputError(f"filler words are also sentiment words: {sorted(overlap)}")
        self.words = [PAD, UNK, *_filler(), *sorted(sentiment_words)]
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, sentences: Sequence[Sequence[str]]) -> Tensor:
        """Ids ``(N, longest)``, padded with 0; unknown words get ``UNK``."""
        longest = max((len(s) for s in sentences), default=0)
        index = self.index
        return torch.tensor([[index.get(w, 1) for w in s] + [0] * (longest - len(s))
                             for s in sentences], dtype=torch.long).reshape(-1, longest)


@dataclass(frozen=True)
class Sentences:
    """A padded batch: ids ``(N, L)``, labels ``(N,)``, each token's lexicon rating ``(N, L)``
    (0 for filler and padding), lengths ``(N,)`` and the tokens (unpadded)."""

    ids: Tensor
    labels: Tensor
    ratings: Tensor
    lengths: Tensor
    tokens: list[list[str]]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def real(self) -> Tensor:
        """Which positions hold a token (not padding)."""
        return torch.arange(self.ids.shape[1])[None, :] < self.lengths[:, None]

    def evidence(self) -> Tensor:
        """The ground truth ``(N, L)``: sentiment words whose rating has the label's sign."""
        return self.ratings * (2 * self.labels[:, None] - 1).to(self.ratings.dtype) > 0

    def padded_tokens(self) -> list[list[str]]:
        """The tokens as the model sees them, ``PAD`` included (for :mod:`relprop.text`)."""
        width = self.ids.shape[1]
        return [t + [PAD] * (width - len(t)) for t in self.tokens]

    def subset(self, index: Sequence[int] | slice) -> Sentences:
        """The sentences at ``index``."""
        rows = list(range(len(self)))[index] if isinstance(index, slice) else list(index)
        at = torch.tensor(rows, dtype=torch.long)
        return Sentences(self.ids[at], self.labels[at], self.ratings[at], self.lengths[at],
                         [self.tokens[r] for r in rows])


def make_sentences(n: int, seed: int, lexicon: dict[str, float], vocab: Vocabulary,
                   words: Sequence[str] | None = None) -> Sentences:
    """``n`` sentences drawn from ``seed``: one to three different sentiment words from
    ``words`` (default: all of ``lexicon``), each after a neutral phrase; sentences whose
    ratings sum to 0 are skipped. Label 1 (positive) when the sum is positive."""
    pool = sorted(lexicon) if words is None else list(words)
    draw = random.Random(seed).random  # floor(u * n) picks: fast, and stable across Pythons

    def pick(options: Sequence[str]) -> str:
        return options[int(draw() * len(options))]

    openers = [phrase.split() for phrase in OPENERS]
    tokens: list[list[str]] = []
    rated: list[list[float]] = []
    labels: list[int] = []
    while len(tokens) < n:
        chosen: list[str] = []
        for _ in range(1 + int(draw() * 3)):
            word = pick(pool)
            while word in chosen:
                word = pick(pool)
            chosen.append(word)
        sentence: list[str] = []
        ratings: list[float] = []
        for i, word in enumerate(chosen):
            phrase = ([pick(CONNECTORS)] if i else []) + openers[int(draw() * len(openers))]
            adverb = pick(ADVERBS)
            phrase += [adverb] if adverb else []
            sentence += phrase + [word]
            ratings += [0.0] * len(phrase) + [lexicon[word]]
        total = round(sum(ratings), 6)
        if total != 0:
            tokens.append(sentence)
            rated.append(ratings)
            labels.append(int(total > 0))
    width = max(len(t) for t in tokens)
    ratings_t = torch.tensor([r + [0.0] * (width - len(r)) for r in rated])
    return Sentences(vocab.encode(tokens), torch.tensor(labels), ratings_t,
                     torch.tensor([len(t) for t in tokens]), tokens)


# -- model -----------------------------------------------------------------------------------
class ConvMaxHead(nn.Module):
    """Embeddings ``(N, L, dim)`` → Conv1d over 3 words → ReLU → max over time → Linear.

    The convolution has no bias and a padding of 2: it sees every 3-word window that touches
    the sentence, edges included, and gives exactly 0 on windows of padding alone (PAD embeds
    to 0). Extra padding after a sentence then adds only windows already seen or zeros, which
    leave the maximum of the ReLU outputs as it was: the output does not depend on the batch.
    """

    def __init__(self, dim: int, channels: int, classes: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, channels, 3, padding=2, bias=False)
        self.fc = nn.Linear(channels, classes)

    def forward(self, embeddings: Tensor) -> Tensor:
        h = torch.relu(self.conv(embeddings.transpose(1, 2)))
        return self.fc(h.max(dim=-1).values)


class SentimentCNN(nn.Module):
    """``embed`` (ids → vectors, PAD → 0) then ``head`` (:class:`ConvMaxHead`)."""

    def __init__(self, vocab_size: int, dim: int = 32, channels: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.head = ConvMaxHead(dim, channels)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.embed(ids))


@dataclass(frozen=True)
class SentimentConfig:
    """Data, architecture and training of one model.

    ``words``: how many lexicon words are in play (``None``: all; fewer train faster).
    Adam with the learning rate decaying linearly to 0; the defaults reach about 97 % test
    accuracy in about 10 s on one CPU thread, sentence generation included.
    """

    words: int | None = None
    min_rating: float = 1.5
    n_train: int = 120_000
    epochs: int = 3
    batch_size: int = 256
    lr: float = 1e-2
    dim: int = 32
    channels: int = 64
    seed: int = 0

    def pool(self, lexicon: dict[str, float]) -> list[str]:
        """The sentiment words in play: all, or a fixed random draw of ``words`` of them."""
        everything = sorted(lexicon)
        if self.words is None or self.words >= len(everything):
            return everything
        return sorted(random.Random(0).sample(everything, self.words))


def accuracy(model: nn.Module, ids: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on token ids."""
    model.eval()
    with torch.no_grad():
        return float((model(ids).argmax(1) == labels).double().mean())


@contextmanager
def _one_thread() -> Iterator[None]:
    """One intra-op thread while training, restored after: the weights then do not depend on
    the machine's thread count (reductions split across threads round differently), and ops
    this small gain little from threads but lose a lot to busy cores (6x slower in a test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_model(config: SentimentConfig, lexicon: dict[str, float],
                progress: Progress | None = _stderr) -> tuple[SentimentCNN, Vocabulary,
                                                                dict[str, Any]]:
    """Train a :class:`SentimentCNN` from ``config.seed`` on one thread: the model (eval
    mode), its vocabulary and metadata (accuracies on 2000 test sentences, seconds)."""
    start = time.perf_counter()
    pool = config.pool(lexicon)
    vocab = Vocabulary(pool)
    train = make_sentences(config.n_train, TRAIN_SEED_OFFSET + config.seed, lexicon, vocab, pool)
    test = make_sentences(2000, TEST_SEED, lexicon, vocab, pool)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = SentimentCNN(len(vocab), config.dim, config.channels)
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = config.epochs * -(-config.n_train // config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1 - step / steps)
    with _one_thread():
        for epoch in range(config.epochs):
            model.train()
            for batch in torch.randperm(len(train), generator=generator).split(config.batch_size):
                loss = nn.functional.cross_entropy(model(train.ids[batch]), train.labels[batch])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
            if progress is not None:
                progress(f"  sentiment: epoch {epoch + 1}/{config.epochs} test acc "
                         f"{accuracy(model, test.ids, test.labels):.3f} "
                         f"({time.perf_counter() - start:.1f}s)")
    model.eval()
    meta = {
        "config": asdict(config), "vocabulary": len(vocab),
        "train_accuracy": accuracy(model, train.ids[:2000], train.labels[:2000]),
        "test_accuracy": accuracy(model, test.ids, test.labels), "n_test": len(test),
        "train_seconds": time.perf_counter() - start, "torch_version": str(torch.__version__),
    }
    return model, vocab, meta


def _cache_file(cache: Path, config: SentimentConfig, lexicon: dict[str, float]) -> Path:
    words = json.dumps(sorted(lexicon.items()))
    key = json.dumps({"config": asdict(config), "lexicon": hashlib.sha256(words.encode())
                      .hexdigest(), "recipe": 2}, sort_keys=True)
    return cache / f"sentiment-{hashlib.sha256(key.encode()).hexdigest()[:10]}.pt"


def trained_model(config: SentimentConfig = SentimentConfig(),
                  lexicon: dict[str, float] | None = None, *, cache: Path | None = None,
                  retrain: bool = False, progress: Progress | None = _stderr
                  ) -> tuple[SentimentCNN, Vocabulary, dict[str, Any]]:
    """The trained model for ``config``: from ``cache`` if there, else trained and saved.

    ``cache``: a folder (default :func:`~relprop_bench.models.default_cache_dir`); weights go
    to ``cache/sentiment-<hash of the configuration and the lexicon>.pt``. The metadata says
    where (``cached``) and whether they were loaded from there (``loaded``).
    """
    lexicon = load_lexicon(min_rating=config.min_rating) if lexicon is None else lexicon
    path = _cache_file(default_cache_dir() if cache is None else Path(cache), config, lexicon)
    if path.is_file() and not retrain:
        vocab = Vocabulary(config.pool(lexicon))
        model = SentimentCNN(len(vocab), config.dim, config.channels)
        blob = torch.load(path, weights_only=True)
        model.load_state_dict(blob["state_dict"])
        return model.eval(), vocab, dict(blob["meta"], cached=str(path), loaded=True)
    model, vocab, meta = train_model(config, lexicon, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": meta}, path)
    return model, vocab, dict(meta, cached=str(path), loaded=False)


# -- scoring ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenScores:
    """Per sentence: token μ (``NaN`` without positive relevance), rank accuracy, and whether
    the top ``K`` tokens are exactly the ``K`` evidence words."""

    mu: Tensor
    rank: Tensor
    exact: Tensor


def token_localisation(relevance: Tensor, sentences: Sentences) -> TokenScores:
    """Does the relevance of each sentence fall on its evidence words?

    Over the sentence's tokens (padding ignored), with ``E`` = :meth:`Sentences.evidence`:
    token μ ``= R⁺(E) / R⁺(all tokens)`` (μ of Kohlbrenner et al. 2020, the relevance mass
    accuracy of Arras et al. 2022, per word); rank accuracy ``= |top_K(R) ∩ E| / K`` with
    ``K = |E|``, ties at the ``K``-th value shared in expectation (Arras et al. 2022); exact
    = rank accuracy 1, the ``K`` most relevant tokens are the evidence words.

    Args:
        relevance: one value per token, ``(N, L)``.
        sentences: the explained sentences, their labels being the explained classes.
    """
    if relevance.shape != sentences.ids.shape:
        raise InvalidInputError(f"relevance must have the ids' shape {tuple(sentences.ids.shape)}"
                                f", got {tuple(relevance.shape)}; sum over the embedding first")
    r = relevance.detach().to(torch.float64)
    real, evidence = sentences.real, sentences.evidence()
    positive = r.clamp(min=0) * real
    total = positive.sum(dim=1)
    mu = torch.where(total > 0, (positive * evidence).sum(dim=1) / total.clamp(min=1e-300),
                     torch.full_like(total, float("nan")))
    ranked = torch.where(real, r, torch.full_like(r, -torch.inf))
    k = evidence.sum(dim=1)
    kth = ranked.sort(dim=1, descending=True).values.gather(1, (k - 1)[:, None])
    above, tied = ranked > kth, ranked == kth
    hits = ((above & evidence).sum(dim=1) + (k - above.sum(dim=1))
            * (tied & evidence).sum(dim=1) / tied.sum(dim=1))
    rank = hits.to(torch.float64) / k
    return TokenScores(mu=mu, rank=rank, exact=(rank > 1 - 1e-9).to(torch.float64))


Explainer = Callable[[SentimentCNN, Sentences], Explanation]


def log_odds(labels: Tensor) -> Contrast:
    """The target to explain: with two classes, the log-odds ``log P(c) / (1 − P(c))`` of the
    label ``c`` is the logit difference ``y_c − y_other``: evidence for ``c`` against the other
    class (a single logit ``y_c`` of a softmax carries an arbitrary offset)."""
    return Contrast(labels, 1 - labels)


def via_ids(composite: Composite | None = None) -> Explainer:
    """LRP of the token ids: :func:`relprop.explain` collects relevance at the lookup."""
    def run(model: SentimentCNN, sentences: Sentences) -> Explanation:
        return explain(model, sentences.ids, log_odds(sentences.labels), composite)
    return run


def via_embeddings(method: Callable[..., Explanation], **options: Any) -> Explainer:
    """Any attribution method on the embedded sentences (``model.head`` of
    ``model.embed(ids)``), its relevance summed over the embedding dimension: how to explain
    tokens with a method that takes floating-point inputs only."""
    def run(model: SentimentCNN, sentences: Sentences) -> Explanation:
        with torch.no_grad():
            embeddings = model.embed(sentences.ids)
        explanation = method(model.head, embeddings, log_odds(sentences.labels), **options)
        return replace(explanation, relevance=explanation.relevance.sum(dim=-1))
    return run


def default_explainers() -> dict[str, Explainer]:
    """The rows of the table: LRP with the default composite for token ids (AttnLRP: ε on
    every layer), with the image default α2β1 on the convolution, with ε-z⁺, and with ε
    everywhere (ε = 0.001, the rule of Arras et al. 2017 for text); the gradient squared
    (their sensitivity analysis: squared L2 norm per word), gradient × input, and a random
    map."""
    return {
        "lrp default (attnlrp)": via_ids(),
        "lrp epsilon_alpha2_beta1": via_ids(epsilon_alpha2_beta1()),
        "lrp epsilon_plus": via_ids(epsilon_plus()),
        "lrp uniform(Epsilon(0.001))": via_ids(uniform(Epsilon(1e-3))),
        "gradient (square)": via_embeddings(gradient, mode="square"),
        "gradient_x_input": via_embeddings(gradient_x_input),
        "random_baseline": via_embeddings(random_baseline),
    }


def localisation_table(model: SentimentCNN, sentences: Sentences,
                       explainers: dict[str, Explainer] | None = None) -> list[dict[str, Any]]:
    """One row per explainer: token μ with its 95 % bootstrap CI, mean rank accuracy and
    exact top-K rate over ``sentences``, each explained for its label."""
    rows = []
    for name, explainer in (default_explainers() if explainers is None else explainers).items():
        scores = token_localisation(explainer(model, sentences).relevance, sentences)
        mu: Estimate = bootstrap_mean([scores.mu])
        rows.append({"method": name, "mu": mu, "rank": float(scores.rank.mean()),
                     "exact": float(scores.exact.mean()),
                     "undefined": int(torch.isnan(scores.mu).sum())})
    return rows
