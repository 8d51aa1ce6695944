"""The examples run offline and write their pictures."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from PIL import Image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _colours(path: Path) -> tuple[int, int, tuple[int, int]]:
    """Pixels of the picture that are clearly red and clearly blue, and its size."""
    image = Image.open(path).convert("RGB")
    rgb = torch.tensor(list(image.getdata()), dtype=torch.int32)
    red = int(((rgb[:, 0] > 180) & (rgb[:, 2] < 120)).sum())
    blue = int(((rgb[:, 2] > 180) & (rgb[:, 0] < 120)).sum())
    return red, blue, image.size


def test_bilrp_example_shows_more_similarity_within_a_class(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _load("bilrp_digits").main(["--out", str(tmp_path)])
    found = re.findall(r"pair (\d)/(\d): similarity ([-\d.]+)", capsys.readouterr().out)
    similarity = {(a, b): float(s) for a, b, s in found}
    assert similarity.keys() == {("3", "3"), ("7", "7"), ("3", "8")}
    assert min(similarity[("3", "3")], similarity[("7", "7")]) > similarity[("3", "8")]
    red, _, (width, height) = _colours(path)
    assert red > 100  # the heatmaps are drawn (z⁺ on the convolutions: evidence only)
    assert width > 5 * 64 and height > 3 * 64  # five columns of three 64-pixel rows


def test_lstm_example_finds_the_trigger_step(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = _load("lstm_sequences").main(["--out", str(tmp_path), "--steps", "40"])
    out = capsys.readouterr().out
    accuracy = float(re.search(r"test accuracy ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    hits = float(re.search(r"trigger in ([\d.]+)%", out).group(1))  # type: ignore[union-attr]
    assert accuracy > 0.9 and hits > 90.0
    red, _, (width, height) = _colours(path)
    assert red > 100 and height > 8 * 16
