"""Text heatmaps: token relevance as ranked lists, self-contained HTML, and terminal colours.

Typical use::

    from relprop import text
    expl.tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in batch["input_ids"]]
    print(text.top_tokens(expl, k=5, skip={"[CLS]", "[SEP]"}))
    text.to_html(expl, "review.html", skip_special=True)
    print(text.to_terminal(expl))

Relevance must hold one value per token, shape ``(batch, seq_len)`` or ``(seq_len,)``. Colours
follow :data:`relprop.viz.bwr` with symmetric normalisation per sample: ``R / max|R|``, red for
positive, blue for negative, white for zero. Word pieces are joined for display: BERT ``##``
continues the previous word; GPT-2/RoBERTa ``Ġ`` and sentencepiece ``▁`` mark a space before
(and with them, an unmarked piece continues the previous word).
"""

from __future__ import annotations

import html
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from .errors import InvalidInputError
from .explain import Explanation
from .viz import bwr

__all__ = ["SPECIAL_TOKENS", "TokenScore", "TopTokens", "to_html", "to_terminal", "top_tokens"]

#: Tokenizer control tokens that ``skip_special=True`` hides (BERT, RoBERTa, GPT-2, XLNet, T5).
SPECIAL_TOKENS: frozenset[str] = frozenset(
    {
        "[CLS]",
        "[SEP]",
        "[PAD]",
        "[MASK]",
        "<s>",
        "</s>",
        "<pad>",
        "<mask>",
        "<cls>",
        "<sep>",
        "<|endoftext|>",
    }
)
_SPACE_MARKS = ("Ġ", "▁")  # GPT-2/RoBERTa byte-level BPE, sentencepiece
_CONTINUATION = "##"  # BERT WordPiece
_RESET = "\x1b[0m"

Tokens = Sequence[str] | Sequence[Sequence[str]]


class TokenScore(NamedTuple):
    """One token with its relevance and its position in the sequence."""

    token: str
    relevance: float
    position: int


@dataclass(frozen=True)
class TopTokens:
    """The ``k`` most positive (descending) and most negative (most negative first) tokens."""

    positive: list[TokenScore]
    negative: list[TokenScore]

    def __str__(self) -> str:
        left = ["positive"] + ([_scored(t) for t in self.positive] or ["(none)"])
        right = ["negative"] + ([_scored(t) for t in self.negative] or ["(none)"])
        width = max(len(s) for s in left) + 4
        rows = max(len(left), len(right))
        left += [""] * (rows - len(left))
        right += [""] * (rows - len(right))
        return "\n".join(f"{a:<{width}}{b}".rstrip() for a, b in zip(left, right))


def _printable(token: str) -> str:
    return token if token.isprintable() else repr(token)[1:-1]


def _format(value: float) -> str:
    return "0" if value == 0 else f"{value:+.3g}"


def _scored(score: TokenScore) -> str:
    return f"{_printable(score.token)} ({_format(score.relevance)})"


@dataclass(frozen=True)
class _Sample:
    """One sample ready to render: its index, tokens and float64 relevance (seq_len,)."""

    index: int
    tokens: list[str]
    relevance: Tensor
    dtype: torch.dtype  # the relevance's own precision, for the tooltips' exact values


def _relevance_2d(explanation: Explanation | Tensor) -> Tensor:
    if isinstance(explanation, Explanation):
        relevance = explanation.relevance
    elif isinstance(explanation, Tensor):
        relevance = explanation
    else:
        raise InvalidInputError(
            "expected a relprop Explanation or a relevance tensor, got "
            f"{type(explanation).__name__}"
        )
    if relevance.dim() not in (1, 2):
        raise InvalidInputError(
            f"token relevance must have shape (batch, seq_len) or (seq_len,), got shape "
            f"{tuple(relevance.shape)}; for embedding relevance (batch, seq_len, dim) sum over "
            "the last dimension first: relevance.sum(-1)"
        )
    relevance = relevance.detach().cpu()
    return relevance.unsqueeze(0) if relevance.dim() == 1 else relevance


def _check_index(sample: int, batch: int) -> int:
    if isinstance(sample, bool) or not isinstance(sample, int):
        raise InvalidInputError(f"sample must be an int, got {sample!r}")
    if not -batch <= sample < batch:
        raise InvalidInputError(
            f"sample={sample} is out of range for a batch of {batch} sample(s) (0..{batch - 1})"
        )
    return sample % batch


def _tokens_for(
    explanation: Explanation | Tensor, tokens: Tokens | None, index: int, batch: int, many: bool
) -> list[str]:
    """The tokens of sample ``index``: from ``tokens=`` if given, else from the explanation."""
    if tokens is None:
        stored = explanation.tokens if isinstance(explanation, Explanation) else None
        if stored is None:
            raise InvalidInputError(
                "no tokens to show: pass tokens= (e.g. tokenizer.convert_ids_to_tokens(ids)) "
                "or set explanation.tokens"
            )
        tokens = stored
    if isinstance(tokens, str):
        raise InvalidInputError(
            "tokens must be a list of token strings, not one string; split it into tokens first"
        )
    if all(isinstance(t, str) for t in tokens):  # one flat list: the tokens of this sample
        if many:
            raise InvalidInputError(
                "tokens= is one flat list but several samples are shown; pass one list of "
                "tokens per sample"
            )
        return [str(t) for t in tokens]
    if len(tokens) != batch:
        raise InvalidInputError(
            f"tokens has {len(tokens)} lists but the relevance has {batch} sample(s); pass one "
            "list of tokens per sample"
        )
    chosen = tokens[index]
    if isinstance(chosen, str) or not all(isinstance(t, str) for t in chosen):
        raise InvalidInputError(f"tokens[{index}] must be a list of token strings")
    return list(chosen)


def _samples(
    explanation: Explanation | Tensor, indices: int | Sequence[int] | None, tokens: Tokens | None
) -> list[_Sample]:
    """Check and gather the samples to render (``None``: all of them)."""
    relevance = _relevance_2d(explanation)
    batch, seq_len = relevance.shape
    if indices is None:
        chosen = list(range(batch))
    elif isinstance(indices, int):
        chosen = [_check_index(indices, batch)]
    else:
        chosen = [_check_index(i, batch) for i in indices]
    out = []
    for index in chosen:
        words = _tokens_for(explanation, tokens, index, batch, many=len(chosen) > 1)
        if len(words) != seq_len:
            raise InvalidInputError(
                f"sample {index} has {len(words)} tokens but the relevance has {seq_len} "
                "positions (seq_len); pass the tokens the model saw, padding included"
            )
        values = relevance[index].to(torch.float64)
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            raise InvalidInputError(
                f"relevance of sample {index} has NaN or inf at positions "
                f"{bad.nonzero().flatten().tolist()[:10]}; the explanation itself is broken "
                "(check the composite, e.g. an epsilon of 0)"
            )
        dtype = relevance.dtype if relevance.is_floating_point() else torch.float64
        out.append(_Sample(index, words, values, dtype))
    return out


def top_tokens(
    explanation: Explanation | Tensor,
    k: int = 5,
    *,
    sample: int = 0,
    tokens: Tokens | None = None,
    skip: Collection[str] | None = None,
) -> TopTokens:
    """The ``k`` tokens with the largest and the ``k`` with the most negative relevance.

    Args:
        explanation: an :class:`~relprop.Explanation` or a relevance tensor ``(seq_len,)`` or
            ``(batch, seq_len)``.
        k: how many tokens per list; tokens with relevance exactly 0 are in neither.
        sample: which sample of the batch.
        tokens: the token strings (this sample's list, or one list per sample); overrides
            ``explanation.tokens``.
        skip: token strings to leave out, e.g. ``{"[CLS]", "[SEP]", "[PAD]"}``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InvalidInputError(f"k must be a non-negative int, got {k!r}")
    (item,) = _samples(explanation, sample, tokens)
    ignored = frozenset(skip or ())
    scores = [
        TokenScore(token, value, position)
        for position, (token, value) in enumerate(zip(item.tokens, item.relevance.tolist()))
        if token not in ignored
    ]
    positive = sorted((s for s in scores if s.relevance > 0), key=lambda s: -s.relevance)
    negative = sorted((s for s in scores if s.relevance < 0), key=lambda s: s.relevance)
    return TopTokens(positive=positive[:k], negative=negative[:k])


def _display(tokens: Sequence[str]) -> list[tuple[str, bool]]:
    """Per token: the text to show and whether a space precedes it (word pieces joined)."""
    marked = any(t.startswith(_SPACE_MARKS) for t in tokens)
    out = []
    for i, token in enumerate(tokens):
        if marked and token not in SPECIAL_TOKENS:
            space = token.startswith(_SPACE_MARKS) or (i > 0 and tokens[i - 1] in SPECIAL_TOKENS)
            shown = token[1:] if token.startswith(_SPACE_MARKS) else token
        elif token.startswith(_CONTINUATION) and len(token) > len(_CONTINUATION):
            space, shown = False, token[len(_CONTINUATION) :]
        else:
            space, shown = True, token
        out.append((shown or token, space and i > 0))
    return out


def _colours(relevance: Tensor) -> list[tuple[int, int, int]]:
    """``bwr`` of ``0.5 + 0.5 R / max|R|`` as 8-bit RGB, one per token (white if all zero)."""
    scale = float(relevance.abs().max()) if relevance.numel() else 0.0
    scaled = relevance / scale * 0.5 + 0.5 if scale > 0 else torch.full_like(relevance, 0.5)
    rgb = (bwr(scaled) * 255).round().to(torch.int64)
    return [(r, g, b) for r, g, b in rgb.tolist()]


def _ink(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black text on light backgrounds, white on dark (relative luminance, ITU-R BT.709)."""
    r, g, b = rgb
    return (0, 0, 0) if 0.2126 * r + 0.7152 * g + 0.0722 * b > 110 else (255, 255, 255)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _exact(values: Tensor, dtype: torch.dtype) -> list[str]:
    """The shortest decimal of each value that reads back to the same number in ``dtype``."""
    out: list[str | None] = [None] * values.numel()
    floats = values.tolist()
    for digits in range(1, 18):
        written = [f"{v:.{digits}g}" for v in floats]
        back = torch.tensor([float(w) for w in written], dtype=torch.float64).to(dtype)
        same = (back.to(torch.float64) == values).tolist()
        out = [o if o is not None or not ok else w for o, w, ok in zip(out, written, same)]
        if all(o is not None for o in out):
            break
    return [o if o is not None else repr(v) for o, v in zip(out, floats)]


def _header(explanation: Explanation | Tensor, item: _Sample) -> str:
    parts = [f"sample {item.index}"]
    if isinstance(explanation, Explanation):
        explained = explanation.explained
        if explained.dim() > 0 and explained.shape[0] > item.index:
            value = explained[item.index]
            if value.numel() == 1:
                parts.append(f"explained {float(value):.4g}")
        parts.append(f"method {explanation.method}")
    parts.append(f"token relevance sum {float(item.relevance.sum()):.4g}")
    if isinstance(explanation, Explanation):
        for path, source in explanation.sources.items():
            if source.dim() > 0 and source.shape[0] > item.index:
                parts.append(f"{path} {float(source[item.index].sum()):.4g}")
    return " · ".join(parts)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; color: #222; }
.sample { margin-bottom: 2em; }
.header { font: 0.85em monospace; color: #555; margin-bottom: 0.4em; }
.text { line-height: 2; margin: 0; white-space: pre-wrap; }
.tok { padding: 0.15em 0.05em; border-radius: 0.2em; }
.legend span { padding: 0.1em 0.6em; font: 0.8em monospace; }
"""


def _html_sample(explanation: Explanation | Tensor, item: _Sample, skip_special: bool) -> str:
    shown = [i for i, t in enumerate(item.tokens) if not (skip_special and t in SPECIAL_TOKENS)]
    # hidden tokens stay out of the colour scale too: [CLS]/[SEP] often dwarf the words
    colours = dict(zip(shown, _colours(item.relevance[shown])))
    display = _display(item.tokens)
    exact = _exact(item.relevance, item.dtype)
    spans: list[str] = []
    for i in shown:
        text, space = display[i]
        tip = f"{item.tokens[i]} · position {i} · R = {exact[i]}"
        spans.append(
            (" " if space and spans else "")
            + f'<span class="tok" style="background:{_hex(colours[i])};'
            f'color:{_hex(_ink(colours[i]))}" title="{html.escape(tip)}">'
            f"{html.escape(text)}</span>"
        )
    return (
        f'<div class="sample">\n<div class="header">{html.escape(_header(explanation, item))}'
        f'</div>\n<p class="text">{"".join(spans)}</p>\n</div>'
    )


def to_html(
    explanation: Explanation | Tensor,
    path: str | Path | None = None,
    *,
    samples: int | Sequence[int] | None = None,
    tokens: Tokens | None = None,
    title: str | None = None,
    skip_special: bool = False,
) -> str:
    """One self-contained HTML page (inline CSS, no scripts) with tokens coloured by relevance.

    Args:
        explanation: an :class:`~relprop.Explanation` or a relevance tensor ``(seq_len,)`` or
            ``(batch, seq_len)``.
        path: if given, the page is also written there (UTF-8).
        samples: which samples (an index or a list); all by default.
        tokens: the token strings, one list per sample (a flat list for a single sample);
            overrides ``explanation.tokens``.
        title: the page title.
        skip_special: hide :data:`SPECIAL_TOKENS` and leave them out of the colour scale.
    """
    items = _samples(explanation, samples, tokens)
    heading = html.escape(title if title is not None else "relevance")
    legend = "".join(
        f'<span style="background:{_hex(c)};color:{_hex(_ink(c))}">{label}</span>'
        for c, label in zip(
            _colours(torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)),
            ("negative", "0", "positive"),
        )
    )
    body = "\n".join(_html_sample(explanation, item, skip_special) for item in items)
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{heading}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f'<h1>{heading}</h1>\n<p class="legend">{legend}</p>\n{body}\n</body>\n</html>\n'
    )
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page


def _wrap(words: list[list[tuple[str, str]]], width: int) -> str:
    """Lay out words (lists of ``(visible text, ANSI prefix)`` pieces) in lines of ``width``."""
    lines: list[str] = []
    line: list[str] = []
    used = 0

    def emit(text: str, prefix: str) -> None:
        line.append(f"{prefix}{text}{_RESET}" if prefix else text)

    for word in words:
        size = sum(len(text) for text, _ in word)
        if used and used + 1 + size > width:
            lines.append("".join(line))
            line, used = [], 0
        elif used:
            line.append(" ")
            used += 1
        for text, prefix in word:
            while used + len(text) > width:  # longer than a line: break it
                cut = width - used
                emit(text[:cut], prefix)
                lines.append("".join(line))
                line, used, text = [], 0, text[cut:]
            if text:
                emit(text, prefix)
                used += len(text)
    if line:
        lines.append("".join(line))
    return "\n".join(lines)


def to_terminal(
    explanation: Explanation | Tensor,
    *,
    sample: int = 0,
    tokens: Tokens | None = None,
    color: bool = True,
    width: int = 100,
) -> str:
    """The sample's text for a terminal: 24-bit ANSI backgrounds, or ``great[+0.81]`` marks.

    Args:
        explanation: an :class:`~relprop.Explanation` or a relevance tensor ``(seq_len,)`` or
            ``(batch, seq_len)``.
        sample: which sample of the batch.
        tokens: the token strings (this sample's list, or one list per sample); overrides
            ``explanation.tokens``.
        color: ANSI colours; ``False`` marks each token with its relevance instead (for logs).
        width: the most visible characters per line.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise InvalidInputError(f"width must be a positive int, got {width!r}")
    (item,) = _samples(explanation, sample, tokens)
    colours = _colours(item.relevance)
    words: list[list[tuple[str, str]]] = []
    for (text, space), value, rgb in zip(_display(item.tokens), item.relevance.tolist(), colours):
        text = _printable(text)
        if color:
            piece = (text, "\x1b[48;2;{};{};{}m\x1b[38;2;{};{};{}m".format(*rgb, *_ink(rgb)))
        else:
            piece = (f"{text}[{_format(value)}]", "")
        if space or not words:
            words.append([piece])
        else:
            words[-1].append(piece)
    return _wrap(words, width)
