"""Tests of the shipped digits model, relprop.demo.run_demo and the ``relprop demo`` command."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import relprop
from relprop import composites, rules, viz
from relprop.cli import main
from relprop.demo import (
    DEFAULT,
    METHODS,
    DigitsCNN,
    absorbed_shares,
    explain_digits,
    format_conservation,
    load_digit_samples,
    load_digits_cnn,
    plot_figure,
    render_figure,
    run_demo,
)
from tests.test_viz import read_png


def test_shipped_model_is_accurate_on_shipped_samples() -> None:
    model = load_digits_cnn()
    assert isinstance(model, DigitsCNN) and not model.training
    images, labels = load_digit_samples()
    assert images.shape == (len(labels), 1, 8, 8) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert labels[:10].tolist() == list(range(10))
    with torch.no_grad():
        acc = (model(images).argmax(1) == labels).float().mean().item()
    assert acc > 0.9
    assert model.meta["test_accuracy"] > 0.95


def test_shipped_weights_are_small() -> None:
    from importlib import resources

    data = resources.files("relprop") / "data"
    assert (data / "digits_cnn.pt").is_file() and (data / "digits_samples.pt").is_file()
    with resources.as_file(data / "digits_cnn.pt") as p:
        assert p.stat().st_size < 1_000_000


def _ink(image: torch.Tensor) -> torch.Tensor:
    """Where the picture is not white, as a float mask (1, 1, H, W)."""
    return (image.to(torch.int32).sum(dim=-1) < 3 * 200).to(torch.float32)[None, None]


def _shows(image: torch.Tensor, text: str, scale: int = 1) -> bool:
    """Whether ``text``, as drawn by the viz font, appears somewhere in ``image`` exactly."""
    glyphs = _ink(viz.text_image(text, scale))
    ink, blank = F.conv2d(_ink(image), glyphs), F.conv2d(_ink(image), 1 - glyphs)
    return bool(((ink == glyphs.sum()) & (blank == 0)).any())


@pytest.mark.parametrize("backend,scale", [("torch", 4), ("torch", 12), ("matplotlib", 4),
                                           ("auto", 12)])
def test_run_demo_writes_png_and_tensors(tmp_path: Path, backend: str, scale: int) -> None:
    n = 3
    png = run_demo(tmp_path / "out", n, scale=scale, backend=backend)  # type: ignore[arg-type]
    assert png.parent == tmp_path / "out" and png.suffix == ".png"
    image = read_png(png)
    result = torch.load(png.parent / "explanations.pt", weights_only=True)
    if backend == "torch":
        assert torch.equal(image, render_figure(result, scale))
    else:  # matplotlib draws it at 12.5 dpi per scale step, at least 60 dpi
        width, height = plot_figure(result).get_size_inches() * max(60, 12.5 * scale)
        assert abs(image.shape[0] - height) <= 1 and abs(image.shape[1] - width) <= 1
    assert (png.parent / "README.txt").read_text(encoding="utf-8").count("LRP") >= 1
    assert result["methods"] == list(METHODS)
    for m in METHODS:
        r = result["relevance"][m]
        assert r.shape == (n, 1, 8, 8) and torch.isfinite(r).all()
        # relevance for the predicted class is net positive
        assert (r.sum(dim=(1, 2, 3)) > 0).all(), m
    # the heatmap columns are mostly white-ish with red (positive) evidence somewhere
    image = image[..., :3]
    red = (image[..., 0] > 200) & (image[..., 1] < 80) & (image[..., 2] < 80)
    assert red.any()
    assert _has_colour_bar(image)


def test_the_main_column_is_what_explain_gives_by_default() -> None:
    assert METHODS[0] == DEFAULT == composites.default().name
    result = explain_digits(3)
    model = load_digits_cnn()
    expl = relprop.explain(model, result["images"], target=result["targets"])
    assert expl.method == f"lrp:{DEFAULT}"
    torch.testing.assert_close(result["relevance"][DEFAULT], expl.relevance)


def test_the_figure_labels_classes_scale_and_columns() -> None:
    result = explain_digits(2)
    # pretend the second digit was misclassified as 7 and the true class explained
    result["predictions"] = result["predictions"].clone()
    result["predictions"][1] = 7
    image = render_figure(result, scale=4)  # text at font scale 1
    true = result["labels"].tolist()
    logit = float(result["logits"][0, result["targets"][0]])
    for text in (f"true {true[0]}", f"pred {true[0]}", f"explains {true[0]}",
                 f"logit {logit:.2f}", f"true {true[1]}", "pred 7 wrong",
                 f"explains {int(result['targets'][1])}",
                 "default", "other rules, for comparison", "LRP-0", "montavon2019",
                 "against the class", "for the class", "-max", "+max",
                 f"sum {result['relevance'][DEFAULT][0].sum().item():.2f}",
                 f"max {result['relevance'][DEFAULT][0].abs().max().item():.2f}",
                 f"{100 * absorbed_shares(result)[DEFAULT]:.0f}%,"):
        assert _shows(image, text), text
    assert not _shows(image, "pred 3 wrong")
    assert _has_colour_bar(image)


def _has_colour_bar(image: torch.Tensor) -> bool:
    """A row whose coloured pixels run from blue (left) through white to red (right).

    Every colour of the bwr map has a channel at 255; darker pixels (the bar's black frame
    blended into its ends by anti-aliasing) are not counted as the bar's.
    """
    pixels = image.to(torch.int32)
    coloured = (pixels.amax(dim=-1) > pixels.amin(dim=-1)) & (pixels.amax(dim=-1) >= 240)
    for y in range(image.shape[0]):
        redness = (pixels[y, :, 0] - pixels[y, :, 2])[coloured[y]]
        if redness.numel() > 8 and int(redness[0]) < -250 and int(redness[-1]) > 250:
            if bool((redness.diff() >= 0).all()):
                return True
    return False


def _texts(fig: object) -> list[str]:
    """Every text of a matplotlib figure: figure texts, titles, axes texts, tick labels."""
    out = [t.get_text() for t in fig.texts]  # type: ignore[attr-defined]
    for ax in fig.axes:  # type: ignore[attr-defined]
        out += [ax.get_title(), ax.get_xlabel()] + [t.get_text() for t in ax.texts]
        out += [t.get_text() for t in ax.get_xticklabels()]
    return out


def test_the_matplotlib_figure_labels_classes_scale_and_columns() -> None:
    result = explain_digits(2)
    result["predictions"] = result["predictions"].clone()
    result["predictions"][1] = 7
    fig = plot_figure(result)
    texts = _texts(fig)
    true = result["labels"].tolist()
    logit = float(result["logits"][0, result["targets"][0]])
    r = result["relevance"][DEFAULT][0]
    for text in (f"true {true[0]}", f"pred {true[0]}", f"explains {true[0]}",
                 f"logit {logit:.2f}", f"true {true[1]}", "pred 7 wrong",
                 f"explains {int(result['targets'][1])}", "input",
                 "other rules, for comparison", "LRP-0", "LRP-ε", "LRP-γ", "montavon2019",
                 "against the class", "for the class", "−max |R|", "+max |R|",
                 f"sum R {r.sum().item():.2f}", f"max |R| {r.abs().max().item():.2f}"):
        assert text in texts, text
    assert "pred 3 wrong" not in texts
    # the column titles: input, the framed default composite, then the comparison rules
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == "input" and titles[1].startswith("default\n")
    assert titles[1].replace("\n", "").replace("default", "", 1) == DEFAULT
    assert titles[2:] == list(METHODS[1:])
    wrong = [t for t in fig.texts if t.get_text() == "pred 7 wrong"][0]
    assert wrong.get_color() != "black"
    footer = " ".join(t.get_text() for t in fig.texts)
    share = absorbed_shares(result)[DEFAULT]
    assert f"{DEFAULT} {100 * share:.0f}%," in footer and "ε stabiliser" in footer


def test_demo_without_matplotlib_falls_back_to_torch_and_pillow(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    png = run_demo(tmp_path, 2, scale=4)
    result = torch.load(tmp_path / "explanations.pt", weights_only=True)
    assert torch.equal(read_png(png), render_figure(result, 4))
    with pytest.raises(ImportError, match=r"relprop\[plot\]"):
        run_demo(tmp_path, 2, backend="matplotlib")


def test_demo_without_pillow_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("matplotlib", "PIL", "PIL.Image"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(viz.MissingExtraError, match=r"pip install 'relprop\[plot\]'"):
        run_demo(tmp_path / "out", 2)
    assert not (tmp_path / "out").exists()  # it says so before any work
    with pytest.raises(ValueError, match="backend"):
        run_demo(tmp_path / "out", 2, backend="svg")  # type: ignore[arg-type]


def test_conservation_says_what_was_absorbed() -> None:
    result = explain_digits(3)
    text = format_conservation(result)
    assert "biases and the ε stabiliser absorb" in text and f"{DEFAULT}*" in text
    shares = absorbed_shares(result)
    model = load_digits_cnn()
    expl = relprop.explain(model, result["images"], target=result["targets"],
                           composite=composites.uniform(rules.Zero()), record=True)
    ledger = torch.tensor([entry.absorbed for entry in expl.conservation]).sum(dim=0)
    assert shares["LRP-0"] == pytest.approx(float((ledger / expl.explained).mean()), abs=1e-4)
    for m, share in shares.items():
        assert f"{m} {100 * share:.0f}%" in text


def test_run_demo_true_target_and_bad_n(tmp_path: Path) -> None:
    run_demo(tmp_path, 2, target="true", scale=2, backend="torch")
    result = torch.load(tmp_path / "explanations.pt", weights_only=True)
    assert torch.equal(result["targets"], result["labels"])
    with pytest.raises(ValueError):
        run_demo(tmp_path, 0)
    with pytest.raises(ValueError):
        run_demo(tmp_path, 2, target="other")


def test_cli_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "lrp_digits.png") in out
    assert "conservation" in out and "logit" in out
    assert (tmp_path / "lrp_digits.png").is_file()
    assert (tmp_path / "explanations.pt").is_file()


def test_cli_default_n_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert main([]) == 2
    assert main(["demo", "--out", str(tmp_path), "--n", "100000"]) == 1
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo"])  # --out is required
