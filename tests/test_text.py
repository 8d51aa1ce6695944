"""Tests of relprop.text: ranked tokens, HTML and terminal heatmaps, word pieces, input checks."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
import torch

from relprop import text
from relprop.errors import InvalidInputError
from relprop.explain import Explanation
from relprop.targets import Logit

REVIEW = ["[CLS]", "a", "great", "but", "boring", "film", "[SEP]"]
REVIEW_R = torch.tensor([0.05, 0.0, 0.81, -0.1, -0.52, 0.2, -0.01])
SPAN = re.compile(
    r'<span class="tok" style="background:#(\w{6});color:#\w{6}" title="([^"]*)">([^<]*)</span>'
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def explanation(relevance: torch.Tensor, tokens: list[list[str]] | None) -> Explanation:
    """An Explanation as an attribution method would return it for a token batch."""
    return Explanation(
        relevance=relevance,
        output=torch.zeros(relevance.shape[0], 2),
        explained=relevance.sum(dim=1),
        target=Logit(0),
        method="lrp:test",
        tokens=tokens,
    )


def spans(page: str) -> list[tuple[tuple[int, int, int], str, str]]:
    """(rgb, tooltip, text) of every token span of an HTML page, in order."""
    out = []
    for colour, tip, body in SPAN.findall(page):
        rgb = (int(colour[0:2], 16), int(colour[2:4], 16), int(colour[4:6], 16))
        out.append((rgb, html.unescape(tip), html.unescape(body)))
    return out


def shown_text(page: str) -> list[str]:
    """The visible text of each sample's paragraph, tags stripped."""
    paragraphs = re.findall(r'<p class="text">(.*?)</p>', page, flags=re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", p)) for p in paragraphs]


# --- top_tokens ------------------------------------------------------------------------------


def test_top_tokens_orders_by_relevance() -> None:
    r = torch.tensor([0.5, -0.2, 0.9, 0.0, -0.7, 0.1, 0.3])
    top = text.top_tokens(r, k=2, tokens=list("abcdefg"))
    assert top.positive == [("c", pytest.approx(0.9), 2), ("a", pytest.approx(0.5), 0)]
    assert top.negative == [("e", pytest.approx(-0.7), 4), ("b", pytest.approx(-0.2), 1)]
    everything = text.top_tokens(r, k=10, tokens=list("abcdefg"))
    assert [s.token for s in everything.positive] == ["c", "a", "g", "f"]
    assert [s.position for s in everything.negative] == [4, 1]
    assert isinstance(everything.positive[0], text.TokenScore)


def test_top_tokens_leaves_out_zero_relevance() -> None:
    top = text.top_tokens(REVIEW_R, k=10, tokens=REVIEW)
    listed = {s.token for s in top.positive + top.negative}
    assert "a" not in listed and len(listed) == len(REVIEW) - 1
    empty = text.top_tokens(torch.zeros(4), tokens=list("wxyz"))
    assert empty.positive == [] and empty.negative == []
    assert "(none)" in str(empty)


def test_top_tokens_skip_and_k_zero() -> None:
    top = text.top_tokens(REVIEW_R, k=10, tokens=REVIEW, skip={"[CLS]", "[SEP]"})
    assert [s.token for s in top.positive] == ["great", "film"]
    assert [s.token for s in top.negative] == ["boring", "but"]
    assert text.top_tokens(REVIEW_R, k=0, tokens=REVIEW) == text.TopTokens([], [])


def test_top_tokens_reads_the_explanation_and_picks_the_sample() -> None:
    r = torch.stack([REVIEW_R, -REVIEW_R])
    expl = explanation(r, [REVIEW, REVIEW])
    assert text.top_tokens(expl, k=1).positive[0].token == "great"
    assert text.top_tokens(expl, k=1, sample=1).positive[0].token == "boring"
    assert text.top_tokens(expl, k=1, sample=-1).negative[0].token == "great"
    renamed = [t.upper() for t in REVIEW]
    assert text.top_tokens(expl, k=1, tokens=renamed).positive[0].token == "GREAT"
    assert text.top_tokens(expl, k=1, sample=1, tokens=renamed).positive[0].token == "BORING"


def test_top_tokens_prints_two_aligned_columns() -> None:
    lines = str(text.top_tokens(REVIEW_R, k=2, tokens=REVIEW)).splitlines()
    assert lines[0].split() == ["positive", "negative"]
    assert "great (+0.81)" in lines[1] and "boring (-0.52)" in lines[1]
    column = lines[0].index("negative")
    assert lines[1].index("boring") == column and lines[2].index("but") == column


# --- HTML ------------------------------------------------------------------------------------


def test_html_escapes_tokens_title_and_method() -> None:
    expl = explanation(torch.tensor([[1.0, -1.0]]), [["<script>", 'a"b&']])
    expl.method = "<b>lrp</b>"
    page = text.to_html(expl, title="<i>t</i>")
    assert "<script>" not in page and "<b>" not in page and "<i>" not in page
    assert "&lt;script&gt;" in page and "&lt;b&gt;lrp&lt;/b&gt;" in page
    assert [body for _, _, body in spans(page)] == ["<script>", 'a"b&']
    assert "<script" not in page.lower().replace("&lt;script", "")  # no JavaScript at all


def test_html_colours_follow_the_sign_and_size_of_relevance() -> None:
    page = text.to_html(REVIEW_R, tokens=REVIEW)
    colours = [rgb for rgb, _, _ in spans(page)]
    assert colours[REVIEW.index("great")] == (255, 0, 0)  # the largest |R| is pure red
    assert colours[REVIEW.index("a")] == (255, 255, 255)
    boring = colours[REVIEW.index("boring")]
    assert boring[2] == 255 and boring[0] == boring[1] < 255
    reds = [255 - rgb[1] for rgb, r in zip(colours, REVIEW_R.tolist()) if r > 0]
    assert max(reds) == reds[REVIEW_R[REVIEW_R > 0].argmax()]


@pytest.mark.parametrize("seed", range(4))
def test_html_colour_sign_matches_relevance_sign(seed: int) -> None:
    r = torch.randn(30, generator=torch.Generator().manual_seed(seed))
    r[::7] = 0.0
    colours = [rgb for rgb, _, _ in spans(text.to_html(r, tokens=[f"t{i}" for i in range(30)]))]
    for (red, green, blue), value in zip(colours, r.tolist()):
        if value > 0:
            assert red == 255 and green == blue < 255
        elif value < 0:
            assert blue == 255 and red == green < 255
        else:
            assert (red, green, blue) == (255, 255, 255)
    # intensity ∝ |R| / max|R|: the fading channel falls as |R| grows
    faded = torch.tensor([min(c) for c in colours], dtype=torch.float64)
    expected = 255 * (1 - r.abs().double() / r.abs().max())
    assert torch.allclose(faded, expected, atol=1.0)


def test_html_tooltips_hold_the_exact_relevance() -> None:
    r = torch.randn(12, generator=torch.Generator().manual_seed(0)) / 3
    page = text.to_html(r, tokens=[f"w{i}" for i in range(12)])
    values = [float(tip.rsplit("R = ", 1)[1]) for _, tip, _ in spans(page)]
    assert torch.equal(torch.tensor(values, dtype=torch.float32), r)
    assert "position 3" in spans(page)[3][1]
    # exact in the relevance's own precision, not float32 widened: 0.81, not 0.8100000023841858
    great = spans(text.to_html(REVIEW_R, tokens=REVIEW))[2][1]
    assert great == "great · position 2 · R = 0.81"


def test_html_joins_word_pieces() -> None:
    bert = ["[CLS]", "i", "was", "play", "##ing", "it", "[SEP]"]
    gpt2 = ["The", "Ġmovie", "Ġwas", "Ġgreat", "!"]
    sentencepiece = ["▁The", "▁movie", "s", "▁work", "."]
    page = text.to_html(
        torch.ones(len(bert)), tokens=bert, title="x", skip_special=True
    ) + text.to_html(torch.ones(len(gpt2)), tokens=gpt2)
    page += text.to_html(torch.ones(len(sentencepiece)), tokens=sentencepiece)
    assert shown_text(page) == ["i was playing it", "The movie was great!", "The movies work."]
    assert shown_text(text.to_html(torch.ones(len(bert)), tokens=bert)) == [
        "[CLS] i was playing it [SEP]"
    ]


def test_html_skip_special_hides_them_from_text_and_scale() -> None:
    r = torch.tensor([10.0, 1.0, -0.5, 10.0])
    tokens = ["[CLS]", "good", "bad", "[SEP]"]
    page = text.to_html(r, tokens=tokens, skip_special=True)
    assert [body for _, _, body in spans(page)] == ["good", "bad"]
    assert spans(page)[0][0] == (255, 0, 0)  # "good" is the largest of what is shown
    assert spans(text.to_html(r, tokens=tokens))[1][0] != (255, 0, 0)


def test_html_headers_samples_and_file(tmp_path: Path) -> None:
    r = torch.stack([REVIEW_R, 2 * REVIEW_R])
    expl = explanation(r, [REVIEW, ["café"] + REVIEW[1:]])
    path = tmp_path / "review.html"
    page = text.to_html(expl, path, title="reviews")
    assert path.read_text(encoding="utf-8") == page and "café" in page
    assert "<title>reviews</title>" in page and "<script" not in page
    assert page.count('<div class="sample">') == 2
    assert f"explained {2 * float(REVIEW_R.sum()):.4g}" in page and "method lrp:test" in page
    only = text.to_html(expl, samples=[1])
    assert "sample 1" in only and "sample 0" not in only


def test_all_zero_relevance_is_white() -> None:
    page = text.to_html(torch.zeros(1, 3), tokens=[["a", "b", "c"]])
    assert [rgb for rgb, _, _ in spans(page)] == [(255, 255, 255)] * 3


# --- terminal --------------------------------------------------------------------------------


def test_terminal_colours_and_plain() -> None:
    coloured = text.to_terminal(REVIEW_R, tokens=REVIEW)
    assert "\x1b[48;2;255;0;0m" in coloured.split("great")[0].rsplit(" ", 1)[-1]
    assert "\x1b[48;2;255;255;255m" in coloured  # the zero-relevance "a"
    assert ANSI.sub("", coloured) == "[CLS] a great but boring film [SEP]"
    plain = text.to_terminal(REVIEW_R, tokens=REVIEW, color=False)
    assert "\x1b" not in plain
    assert plain.split() == [
        "[CLS][+0.05]", "a[0]", "great[+0.81]", "but[-0.1]", "boring[-0.52]", "film[+0.2]",
        "[SEP][-0.01]",
    ]  # fmt: skip
    pieces = text.to_terminal(torch.tensor([0.5, -0.25]), tokens=["play", "##ing"], color=False)
    assert pieces == "play[+0.5]ing[-0.25]"


@pytest.mark.parametrize("color", [True, False])
def test_terminal_wraps_at_width(color: bool) -> None:
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit"] * 3
    tokens = words + ["a" * 40]
    r = torch.linspace(-1, 1, len(tokens))
    out = text.to_terminal(r, tokens=tokens, color=color, width=16)
    lines = ANSI.sub("", out).splitlines()
    assert len(lines) > 5 and all(len(line) <= 16 for line in lines)
    if color:
        assert " ".join(lines[:-3]) == " ".join(words)  # words are not split, only the long one
        assert "".join(lines[-3:]) == "a" * 40


# --- errors ----------------------------------------------------------------------------------


def test_errors_name_what_is_wrong() -> None:
    tokens = ["a", "b", "c"]
    with pytest.raises(InvalidInputError, match=r"shape \(1, 3, 4\).*sum\(-1\)"):
        text.top_tokens(torch.ones(1, 3, 4), tokens=tokens)
    with pytest.raises(InvalidInputError, match=r"2 tokens.*3 positions"):
        text.to_html(torch.ones(3), tokens=["a", "b"])
    with pytest.raises(InvalidInputError, match="pass tokens="):
        text.to_terminal(torch.ones(3))
    with pytest.raises(InvalidInputError, match="pass tokens="):
        text.to_html(explanation(torch.ones(1, 3), None))
    with pytest.raises(InvalidInputError, match=r"sample=5 is out of range.*2 sample"):
        text.top_tokens(explanation(torch.ones(2, 3), [tokens, tokens]), sample=5)
    with pytest.raises(InvalidInputError, match=r"sample=2 is out of range"):
        text.to_html(explanation(torch.ones(2, 3), [tokens, tokens]), samples=[0, 2])
    with pytest.raises(InvalidInputError, match=r"NaN.*positions \[1\]"):
        text.to_terminal(torch.tensor([0.0, float("nan"), 1.0]), tokens=tokens)


def test_errors_on_parameters() -> None:
    tokens = ["a", "b", "c"]
    with pytest.raises(InvalidInputError, match="one list of tokens per sample"):
        text.to_html(torch.ones(2, 3), tokens=tokens)
    with pytest.raises(InvalidInputError, match="not one string"):
        text.to_html(torch.ones(3), tokens="abc")
    with pytest.raises(InvalidInputError, match="k must be"):
        text.top_tokens(torch.ones(3), k=-1, tokens=tokens)
    with pytest.raises(InvalidInputError, match="width must be"):
        text.to_terminal(torch.ones(3), tokens=tokens, width=0)
    with pytest.raises(InvalidInputError, match="got list"):
        text.top_tokens([1.0, 2.0, 3.0], tokens=tokens)  # type: ignore[arg-type]
