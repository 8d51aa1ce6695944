"""Tests of relprop.viz: colour maps, normalisation, image composition and the PNG writer."""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import pytest
import torch

from relprop import viz


def read_png(path: Path) -> torch.Tensor:
    """Decode a PNG with Pillow, as ``(H, W, C)`` uint8 (C = 1 for grey, 3 RGB, 4 RGBA)."""
    from PIL import Image

    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "bad PNG signature"
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        im.load()
        if im.mode not in ("L", "RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.mode else "RGB")
        channels = len(im.getbands())
        flat = torch.tensor(list(im.tobytes()), dtype=torch.uint8)
        return flat.reshape(im.height, im.width, channels)


# ---------------------------------------------------------------- colour maps


def _rgb(cmap: viz.ColorMap, v: float) -> list[float]:
    return cmap(torch.tensor(v)).tolist()


@pytest.mark.parametrize(
    "cmap,low,mid,high",
    [
        (viz.bwr, [0, 0, 1], [1, 1, 1], [1, 0, 0]),
        (viz.coldnhot, [0, 1, 1], [0, 0, 0], [1, 1, 1]),
        (viz.gray, [0, 0, 0], [0.5, 0.5, 0.5], [1, 1, 1]),
    ],
)
def test_cmap_endpoints_and_centre(
    cmap: viz.ColorMap, low: list[float], mid: list[float], high: list[float]
) -> None:
    assert _rgb(cmap, 0.0) == pytest.approx(low)
    assert _rgb(cmap, 0.5) == pytest.approx(mid)
    assert _rgb(cmap, 1.0) == pytest.approx(high)
    # clipped outside [0, 1]
    assert _rgb(cmap, -3.0) == pytest.approx(low)
    assert _rgb(cmap, 7.0) == pytest.approx(high)


def test_coldnhot_is_cold_below_and_hot_above_centre() -> None:
    below, above = _rgb(viz.coldnhot, 0.3), _rgb(viz.coldnhot, 0.7)
    assert below[2] > 0 and below[0] == 0  # bluish
    assert above[0] > 0 and above[2] == 0  # reddish
    assert viz.coldnhot(torch.tensor(0.5)).sum() == 0  # black at zero


def test_cmap_shape_interpolation_and_lookup() -> None:
    x = torch.rand(2, 5, 7)
    assert viz.bwr(x).shape == (2, 5, 7, 3)
    assert _rgb(viz.bwr, 0.75) == pytest.approx([1.0, 0.5, 0.5])
    assert viz.get_cmap("bwr") is viz.bwr and viz.get_cmap(viz.gray) is viz.gray
    custom = viz.ColorMap(["#000000", (0.0, 1.0, 0.0)], name="green")
    assert _rgb(custom, 0.5) == pytest.approx([0, 0.5, 0])
    with pytest.raises(ValueError, match="unknown colour map"):
        viz.get_cmap("jet")
    with pytest.raises(ValueError):
        viz.ColorMap(["000", "fff"], positions=[0.0, 0.5])


# ---------------------------------------------------------------- normalisation


def test_normalize_symmetric_keeps_sign_and_centres_zero() -> None:
    r = torch.tensor([[-2.0, -1.0, 0.0], [0.5, 1.0, 4.0]])
    n = viz.normalize_symmetric(r)
    assert torch.equal(n > 0.5, r > 0) and torch.equal(n < 0.5, r < 0)
    assert n[0, 2] == 0.5
    assert n.max() == 1.0 and n.min() == pytest.approx(0.25)  # -2 / 4 -> 0.25
    assert n[1, 0] == pytest.approx(0.5 + 0.5 * 0.5 / 4)


def test_normalize_symmetric_per_sample() -> None:
    r = torch.stack([torch.tensor([1.0, -0.5]), torch.tensor([100.0, 50.0])])
    n = viz.normalize_symmetric(r, batched=True)
    assert torch.allclose(n, torch.tensor([[1.0, 0.25], [1.0, 0.75]]))


def test_normalize_symmetric_percentile_clips() -> None:
    r = torch.cat([torch.ones(99), torch.tensor([1000.0])])
    plain = viz.normalize_symmetric(r)
    clipped = viz.normalize_symmetric(r, percentile=99.0)
    assert plain[0] < 0.51  # the outlier washes everything else out
    assert clipped[0] == 1.0 and clipped[-1] == 1.0
    with pytest.raises(ValueError):
        viz.normalize_symmetric(r, percentile=0.0)


@pytest.mark.parametrize("batched", [False, True])
def test_all_zero_relevance_does_not_divide_by_zero(batched: bool) -> None:
    r = torch.zeros(3, 1, 4, 4)
    n = viz.normalize_symmetric(r, batched=batched)
    assert torch.isfinite(n).all() and (n == 0.5).all()
    assert (viz.heatmap(torch.zeros(1, 4, 4)) == 255).all()  # white for bwr
    assert (viz.heatmap(torch.zeros(4, 4), "coldnhot") == 0).all()  # black for coldnhot
    assert torch.isfinite(viz.normalize_minmax(r, batched=batched)).all()


def test_nan_relevance_is_treated_as_zero() -> None:
    r = torch.tensor([float("nan"), 1.0, -1.0])
    assert viz.normalize_symmetric(r).tolist() == [0.5, 1.0, 0.0]


# ---------------------------------------------------------------- heatmaps and images


def test_channel_sum_shapes() -> None:
    assert viz.channel_sum(torch.ones(5, 6)).shape == (5, 6)
    assert viz.channel_sum(torch.ones(3, 5, 6)).tolist() == torch.full((5, 6), 3.0).tolist()
    assert viz.channel_sum(torch.ones(2, 3, 5, 6)).shape == (2, 5, 6)
    with pytest.raises(ValueError):
        viz.channel_sum(torch.ones(1, 2, 3, 4, 5))


def test_heatmap_colours_signs() -> None:
    r = torch.zeros(1, 3, 3)
    r[0, 0, 0], r[0, 2, 2] = 2.0, -1.0
    h = viz.heatmap(r)
    assert h.shape == (3, 3, 3) and h.dtype == torch.uint8
    assert h[0, 0].tolist() == [255, 0, 0]  # strongest positive: pure red
    assert h[1, 1].tolist() == [255, 255, 255]  # zero: white
    assert h[2, 2].tolist() == [128, 128, 255]  # half-strength negative: light blue
    batch = viz.heatmap(torch.randn(4, 3, 5, 6))
    assert batch.shape == (4, 5, 6, 3)
    assert viz.heatmap(torch.randn(5, 6), symmetric=False).shape == (5, 6, 3)


def test_to_rgb_layouts() -> None:
    g = torch.tensor([[0.0, 1.0]])
    assert viz.to_rgb(g).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    assert viz.to_rgb(g[None]).shape == (1, 2, 3)  # (1, H, W)
    chw = torch.rand(3, 4, 5)
    assert torch.equal(viz.to_rgb(chw), viz.to_rgb(chw.permute(1, 2, 0)))
    u8 = torch.randint(0, 256, (4, 5, 4), dtype=torch.uint8)
    assert torch.equal(viz.to_rgb(u8), u8[..., :3])
    assert viz.to_rgb(torch.tensor([[-1.0, 1.0]]), low=-1.0).tolist() == [[[0] * 3, [255] * 3]]
    with pytest.raises(ValueError):
        viz.to_rgb(torch.rand(5, 6, 7))


def test_overlay() -> None:
    img = torch.zeros(4, 4, 3, dtype=torch.uint8)
    hm = torch.full((4, 4, 3), 200, dtype=torch.uint8)
    assert torch.equal(viz.overlay(img, hm, 0.0), img)
    assert torch.equal(viz.overlay(img, hm, 1.0), hm)
    assert (viz.overlay(torch.zeros(4, 4), hm, 0.5) == 100).all()
    with pytest.raises(ValueError):
        viz.overlay(img, hm[:2], 0.5)


def test_upscale_nearest() -> None:
    img = torch.arange(4, dtype=torch.uint8).reshape(2, 2)
    big = viz.upscale(img, 3)
    assert big.shape == (6, 6)
    assert (big[:3, :3] == 0).all() and (big[3:, 3:] == 3).all() and (big[:3, 3:] == 1).all()
    assert viz.upscale(torch.zeros(2, 2, 3), 4).shape == (8, 8, 3)
    assert viz.upscale(torch.zeros(5, 2, 2, 3), 2).shape == (5, 4, 4, 3)
    with pytest.raises(ValueError):
        viz.upscale(img, 0)


def test_text_image() -> None:
    t = viz.text_image("LRP-0", scale=2)
    assert t.shape == (14, (6 * 5 - 1) * 2, 3) and t.dtype == torch.uint8
    assert (t == 0).any() and (t == 255).any()
    assert viz.text_image("lrp").shape == viz.text_image("LRP").shape
    assert torch.equal(viz.text_image("lrp"), viz.text_image("LRP"))
    assert viz.text_image("ε~").shape == (7, 11, 3)  # unknown characters still take a cell


def test_grid_layout() -> None:
    imgs = [torch.full((4, 5, 3), i * 40, dtype=torch.uint8) for i in range(5)]
    g = viz.grid(imgs, nrow=3, padding=1, pad_value=255)
    assert g.shape == (2 * (4 + 1) + 1, 3 * (5 + 1) + 1, 3)
    assert (g[1:5, 1:6] == 0).all() and (g[1:5, 7:12] == 40).all()
    assert (g[6:10, 1:6] == 120).all() and (g[6:10, 13:18] == 255).all()  # empty cell
    assert (g[0] == 255).all()
    labelled = viz.grid(imgs[:2], nrow=2, padding=1, labels=["A", "LONGLABEL"], row_labels=["7"])
    assert labelled.shape[0] == 7 + 1 + 4 + 2  # header (7 + padding) + one row + paddings
    assert labelled.shape[1] == (5 + 1) + 2 * (53 + 1) + 1  # columns widen to the label
    with pytest.raises(ValueError):
        viz.grid([])


# ---------------------------------------------------------------- PNG, with Pillow


@pytest.mark.parametrize("shape", [(5, 7, 3), (6, 3), (2, 9, 4), (1, 1, 3)])
def test_png_round_trip(tmp_path: Path, shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    path = viz.save_png(tmp_path / "x.png", img)
    assert path == tmp_path / "x.png"
    back = read_png(path)
    expected = img if img.dim() == 3 else img[..., None]
    assert back.shape == expected.shape and torch.equal(back, expected)


def test_png_is_written_by_pillow_with_size_and_mode(tmp_path: Path) -> None:
    from PIL import Image

    img = viz.upscale(viz.heatmap(torch.randn(1, 8, 8)), 4)
    viz.save_png(tmp_path / "h.png", img)
    with Image.open(tmp_path / "h.png") as im:
        assert im.format == "PNG" and im.size == (32, 32) and im.mode == "RGB"
        assert list(im.getpixel((0, 0))) == img[0, 0].tolist()
    pil = viz.to_pil(img)
    assert pil.size == (32, 32) and pil.mode == "RGB"
    assert viz.to_pil(torch.zeros(3, 2, dtype=torch.uint8)).mode == "L"
    assert viz.to_pil(torch.zeros(3, 2, 4, dtype=torch.uint8)).mode == "RGBA"


def test_png_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        viz.save_png(tmp_path / "f.png", torch.rand(4, 4, 3))
    with pytest.raises(ValueError):
        viz.save_png(tmp_path / "f.png", torch.zeros(4, 4, 2, dtype=torch.uint8))
    with pytest.raises(ValueError):
        viz.save_png(tmp_path / "f.png", torch.zeros(0, 4, 3, dtype=torch.uint8))
    assert not (tmp_path / "f.png").exists()


def test_heatmap_png_end_to_end(tmp_path: Path) -> None:
    r = torch.zeros(1, 8, 8)
    r[0, 2, 3], r[0, 6, 1] = 1.0, -1.0
    png = viz.save_png(tmp_path / "hm.png", viz.upscale(viz.heatmap(r), 8))
    back = read_png(png)
    assert back.shape == (64, 64, 3)
    assert back[2 * 8 + 4, 3 * 8 + 4].tolist() == [255, 0, 0]  # positive: red
    assert back[6 * 8 + 4, 1 * 8 + 4].tolist() == [0, 0, 255]  # negative: blue
    assert back[0, 0].tolist() == [255, 255, 255]  # zero: white


def test_missing_pillow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    img = viz.heatmap(torch.randn(4, 4))  # the tensor side needs no Pillow
    with pytest.raises(viz.MissingExtraError, match=r"pip install 'relprop\[plot\]'") as err:
        viz.save_png(tmp_path / "x.png", img)
    assert isinstance(err.value, ImportError) and "Pillow" in str(err.value)
    assert not (tmp_path / "x.png").exists()


def test_encode_png_is_deprecated_and_still_works() -> None:
    from PIL import Image

    img = torch.randint(0, 256, (3, 5, 3), dtype=torch.uint8)
    with pytest.warns(DeprecationWarning, match="save_png"):
        data = viz.encode_png(img)
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (5, 3)
        assert list(im.tobytes()) == img.reshape(-1).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        viz.to_pil(img)  # the replacement does not warn
