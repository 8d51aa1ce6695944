"""Tests of the shipped digits model, relprop.demo.run_demo and the ``relprop demo`` command."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from relprop import viz
from relprop.cli import main
from relprop.demo import METHODS, DigitsCNN, load_digit_samples, load_digits_cnn, run_demo
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


def _expected_size(n: int, scale: int, rows: list[str]) -> tuple[int, int]:
    """Height and width of the demo grid (see viz.grid)."""
    pad, label_scale = max(2, scale // 2), 2 if scale >= 10 else 1
    text_h = 7 * label_scale
    col_w = max(8 * scale, viz.text_image("composite", label_scale).shape[1])
    side_w = max(viz.text_image(r, label_scale).shape[1] for r in rows) + pad
    return text_h + pad + n * (8 * scale + pad) + pad, side_w + 5 * (col_w + pad) + pad


@pytest.mark.parametrize("scale", [4, 12])
def test_run_demo_writes_png_and_tensors(tmp_path: Path, scale: int) -> None:
    n = 3
    png = run_demo(tmp_path / "out", n, scale=scale)
    assert png.parent == tmp_path / "out" and png.suffix == ".png"
    image = read_png(png)
    result = torch.load(png.parent / "explanations.pt", weights_only=True)
    rows = [
        f"{y}" if y == p else f"{y}>{p}"
        for y, p in zip(result["labels"].tolist(), result["predictions"].tolist(), strict=True)
    ]
    assert image.shape == (*_expected_size(n, scale, rows), 3)
    assert (png.parent / "README.txt").read_text(encoding="utf-8").count("LRP") >= 1
    assert result["methods"] == list(METHODS)
    for m in METHODS:
        r = result["relevance"][m]
        assert r.shape == (n, 1, 8, 8) and torch.isfinite(r).all()
        # relevance for the predicted class is net positive
        assert (r.sum(dim=(1, 2, 3)) > 0).all(), m
    # the heatmap columns are mostly white-ish with red (positive) evidence somewhere
    red = (image[..., 0] > 200) & (image[..., 1] < 80) & (image[..., 2] < 80)
    assert red.any()


def test_run_demo_true_target_and_bad_n(tmp_path: Path) -> None:
    run_demo(tmp_path, 2, target="true", scale=2)
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
