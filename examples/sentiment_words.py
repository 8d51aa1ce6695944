"""LRP on words: which words make a (generated) movie review positive or negative?

The text example of the LRP overview slides (movie reviews, words coloured by relevance, the
top positive and negative words) rebuilt offline. Sentences string neutral phrases around
one to three rated words of the VADER lexicon ("the actors were really superb but the ending
was dull"); the label is the sign of the sum of their ratings. A small CNN (embedding →
3-word convolution → ReLU → max over time → linear) is trained for a few seconds, or loaded
from the cache, and its token ids are explained for their true label (the log-odds
``y_label − y_other``): relevance is collected at the embedding lookup and summed over the
embedding dimension, one number per word.

Because the evidence is known word by word, the script also scores where the relevance
falls (token μ: the share of positive relevance on the words whose rating has the label's
sign; rank accuracy: are the K most relevant words those K words?) for LRP and other
methods. It writes the coloured sentences to ``<out>/sentiment_words.html``.

    pip install vadersentiment        # the lexicon (read from the package's files)
    pip install -e benchmarks/        # relprop_bench, which generates the reviews
    python examples/sentiment_words.py --out sentiment-out
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import relprop
from relprop.text import to_html, to_terminal, top_tokens
from relprop_bench.sentiment import (
    LABELS,
    PAD,
    TEST_SEED,
    SentimentConfig,
    accuracy,
    lexicon_file,
    load_lexicon,
    localisation_table,
    log_odds,
    make_sentences,
    trained_model,
)


def main(argv: list[str] | None = None) -> Path:
    defaults = SentimentConfig()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("sentiment-out"))
    parser.add_argument("--show", type=int, default=4, help="sentences explained word by word")
    parser.add_argument("--n-test", type=int, default=1000, help="sentences scored")
    parser.add_argument("--n-train", type=int, default=defaults.n_train)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--words", type=int, default=None,
                        help="lexicon words in play (default: all with |rating| >= 1.5)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="weights cache folder (default: $RELPROP_CACHE or ~/.cache/relprop)")
    parser.add_argument("--retrain", action="store_true", help="ignore cached weights")
    args = parser.parse_args(argv)
    if lexicon_file() is None:
        parser.error("the VADER lexicon is missing: pip install vadersentiment")
    start = time.perf_counter()

    lexicon = load_lexicon()
    config = SentimentConfig(words=args.words, n_train=args.n_train, epochs=args.epochs,
                             batch_size=args.batch_size)
    model, vocab, meta = trained_model(config, lexicon, cache=args.cache, retrain=args.retrain)
    test = make_sentences(args.n_test, TEST_SEED, lexicon, vocab, config.pool(lexicon))
    source = ("loaded from " if meta["loaded"] else
              f"trained in {meta['train_seconds']:.1f}s, saved to ") + meta["cached"]
    print(f"{len(config.pool(lexicon))} sentiment words, vocabulary {len(vocab)}; model "
          f"{source}; test accuracy {accuracy(model, test.ids, test.labels):.3f} "
          f"on {len(test)} sentences")

    shown = test.subset(range(min(args.show, len(test))))
    explanation = relprop.explain(model, shown.ids, log_odds(shown.labels))
    explanation.tokens = shown.padded_tokens()
    probability = explanation.output.softmax(dim=1)
    colour = sys.stdout.isatty()
    for i, words in enumerate(shown.tokens):
        label, predicted = int(shown.labels[i]), int(probability[i].argmax())
        print(f"\n[{i}] true class: {LABELS[label]}; predicted: {LABELS[predicted]} "
              f"({float(probability[i, predicted]):.3f}); relevance sum "
              f"{float(explanation.relevance[i].sum()):+.3f}, log-odds "
              f"{float(explanation.explained[i]):+.3f}")
        print(to_terminal(explanation.relevance[i, :len(words)], tokens=words, color=colour))
        print(top_tokens(explanation, k=3, sample=i, skip={PAD}))

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "sentiment_words.html"
    to_html(explanation, path, skip_special=True,
            title=f"LRP ({explanation.method}) of each sentence's log-odds for its true class: "
            "red words speak for it, blue ones against")
    print(f"\nwrote {path}")

    print(f"\nwhere the relevance falls ({len(test)} test sentences, each explained for its "
          "label; evidence = the words whose rating has the label's sign)")
    print(f"{'method':<36} {'token mu [95% CI]':<24} {'rank acc':>8} {'top-K exact':>11}")
    for row in localisation_table(model, test):
        print(f"{row['method']:<36} {row['mu'].format():<24} {row['rank']:>8.3f} "
              f"{row['exact']:>11.3f}")
    print(f"\n{time.perf_counter() - start:.1f}s, {torch.get_num_threads()} threads")
    return path


if __name__ == "__main__":
    main()
