"""Smoke run of the localisation benchmark (relprop_bench) and its invariants.

One small model (vgg4, trained for seconds), a handful of test images, one seed: checks that
the numbers obey what must hold whatever the model learnt (a uniform map has μ_w = 1, a
shuffled map perturbs like a random order, uniform LRP-0 is Gradient × Input) and that the
report files are written. The accuracy check of the real models is marked slow.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import relprop
from relprop import composites, rules
from relprop.methods import METHODS
from relprop.metrics import attribution_localisation
from relprop_bench.cli import main
from relprop_bench.cluttered import load_digits8x8, make_cluttered_digits
from relprop_bench.localisation import (
    RANDOM_ORDER,
    BenchResult,
    MethodSpec,
    default_methods,
    evaluate_model,
    run_benchmark,
    shuffled,
    smoke_config,
)
from relprop_bench.models import (
    VARIANTS,
    NetConfig,
    TrainConfig,
    _cache_file,
    benchmark_images,
    trained_net,
    vgg_net,
)
from relprop_bench.plot import Line, line_plot, nice_ticks
from relprop_bench.report import (
    across_depth,
    load_result,
    markdown,
    means_across_depth,
    summarise,
    write_report,
)
from relprop_bench.stats import bootstrap_mean, paired_difference
from tests.test_viz import read_png

SMOKE_TRAIN = smoke_config().train  # ~10 s on one core: above chance, far from good


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def smoke(cache: Path) -> BenchResult:
    config = smoke_config(n=12, train=SMOKE_TRAIN, cache=cache)
    return run_benchmark(config, progress=None)


# --- data -----------------------------------------------------------------------------------


def test_shipped_digits() -> None:
    images, labels = load_digits8x8()
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)
    assert 0.0 <= float(images.min()) and float(images.max()) == 1.0
    assert sorted(labels.unique().tolist()) == list(range(10))
    train, test = load_digits8x8("train")[1], load_digits8x8("test")[1]
    assert len(train) + len(test) == 1797 and len(test) == 449


def test_cluttered_digits_are_deterministic_and_well_formed() -> None:
    images, labels, boxes = make_cluttered_digits(20, seed=3, canvas=32, distractors=3)
    again = make_cluttered_digits(20, seed=3, canvas=32, distractors=3)
    prefix = make_cluttered_digits(5, seed=3, canvas=32, distractors=3)
    other = make_cluttered_digits(20, seed=4, canvas=32, distractors=3)
    assert all(torch.equal(a, b) for a, b in zip((images, labels, boxes), again))
    assert all(torch.equal(a[:5], b) for a, b in zip((images, labels, boxes), prefix))
    assert not torch.equal(images, other[0])
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert labels.dtype == torch.int64 and 0 <= int(labels.min()) and int(labels.max()) <= 9
    x0, y0, x1, y1 = boxes.unbind(1)
    assert bool(((0 <= x0) & (x0 < x1) & (x1 <= 32) & (0 <= y0) & (y0 < y1) & (y1 <= 32)).all())
    assert float(images.mean(dim=(1, 2, 3)).min()) > 0.05  # a non-zero background
    for image, (a, b, c, d) in zip(images, boxes.tolist()):
        red = image[0] - image[1:].amax(dim=0)  # the target's cue: red, not yellow or magenta
        assert float(red[b:d, a:c].amax()) > 0.4  # the target's box holds red ink


def test_cluttered_digits_checks_arguments() -> None:
    with pytest.raises(ValueError, match="canvas"):
        make_cluttered_digits(1, 0, canvas=16, scale=(1.0, 2.5))
    with pytest.raises(ValueError, match="split"):
        make_cluttered_digits(1, 0, split="validation")


def test_vgg_net_shapes_and_depth() -> None:
    x = torch.rand(2, 3, 32, 32)
    for name, config in VARIANTS.items():
        if config.arch != "vgg":  # tests/test_mobilenet_bench.py
            continue
        model = vgg_net(config, seed=0)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == config.depth, name
        assert model(x).shape == (2, 10)
    with pytest.raises(ValueError, match="multiple of 4"):
        vgg_net(NetConfig(depth=6))
    with pytest.raises(ValueError, match="add up to depth=13"):
        vgg_net(NetConfig(depth=13, stages=(2, 2, 3, 3)))
    with pytest.raises(ValueError, match="multiple of 32"):
        vgg_net(NetConfig(depth=13, stages=(2, 2, 3, 3, 3), canvas=48))


def test_vgg13_has_vgg16_conv_stages() -> None:
    model = vgg_net(VARIANTS["vgg13"], seed=0)
    kinds = [type(m).__name__ for m in model]
    stages = "".join("c" if k == "Conv2d" else "|" for k in kinds if k in ("Conv2d", "MaxPool2d"))
    assert stages == "cc|cc|ccc|ccc|ccc|"
    assert VARIANTS["vgg13"].name == "vgg13"
    assert NetConfig(depth=8, width=32).name == "vgg8-w32"


def test_cache_names_of_the_first_variants_are_unchanged(tmp_path: Path) -> None:
    # adding NetConfig.stages must not orphan the weights trained before it existed
    names = {
        v: _cache_file(tmp_path, VARIANTS[v], 0, TrainConfig()).name
        for v in ("vgg4", "vgg8", "vgg8-bn")
    }
    assert names == {
        "vgg4": "vgg4-seed0-408141f130.pt",
        "vgg8": "vgg8-seed0-7cc677bd46.pt",
        "vgg8-bn": "vgg8-bn-seed0-75d3c8606e.pt",
    }


# --- invariants on the smoke run -------------------------------------------------------------


def test_uniform_map_has_mu_w_one(smoke: BenchResult) -> None:
    (model,) = smoke.models
    assert torch.allclose(model.scores["uniform_map"]["mu_w"], torch.ones(12, dtype=torch.float64))
    _, _, boxes = benchmark_images(12)
    direct = attribution_localisation(torch.ones(12, 3, 32, 32), boxes)
    assert torch.allclose(direct.mu_w, torch.ones(12, dtype=torch.float64))
    assert torch.allclose(model.scores["uniform_map"]["mu"], direct.area_fraction)


def test_shuffled_relevance_perturbs_like_random_order(cache: Path) -> None:
    # on a trained model (the smoke one), and with enough images to average: a map whose
    # pixels are shuffled carries no information on where the evidence is
    model, _ = trained_net(VARIANTS["vgg4"], 0, SMOKE_TRAIN, cache=cache, progress=None)
    images, labels, boxes = benchmark_images(64)
    gxi = MethodSpec("gxi", "G×I", "GXI", "other", _gradient_x_input)
    specs = [gxi, MethodSpec("shuffled", "shuffled", "S", "control", shuffled(gxi.explain))]
    scores, curves, _ = evaluate_model(model, images, labels, boxes, specs, steps=16)
    random_order = [scores[RANDOM_ORDER]["aopc"]]
    spread = float(curves[RANDOM_ORDER].abs().mean()) + 1e-3
    diff = paired_difference([scores["shuffled"]["aopc"]], random_order, resamples=500)
    assert abs(diff.mean) < 0.5 * spread, (diff, spread)
    assert diff.low <= 0.0 <= diff.high, diff
    # not vacuous: the unshuffled map does find what the model uses
    gain = paired_difference([scores["gxi"]["aopc"]], random_order, resamples=500)
    assert gain.low > 0.0, gain


def _gradient_x_input(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    leaf = x.detach().clone().requires_grad_(True)
    logit = model(leaf).gather(1, y[:, None]).sum()
    (grad,) = torch.autograd.grad(logit, leaf)
    return leaf.detach() * grad


@pytest.mark.parametrize("variant", ["vgg4", "vgg8", "vgg8-bn", "vgg13"])
def test_uniform_lrp0_is_gradient_x_input(variant: str, cache: Path) -> None:
    if variant == "vgg4":  # the trained smoke model
        model, _ = trained_net(VARIANTS["vgg4"], 0, SMOKE_TRAIN, cache=cache, progress=None)
    else:  # the deep nets, untrained; BatchNorm with non-trivial statistics
        model = vgg_net(VARIANTS[variant], seed=1)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
    images, labels, _ = benchmark_images(8)
    lrp0 = relprop.explain(model, images, labels, composites.uniform(rules.Zero())).relevance
    reference = _gradient_x_input(model, images, labels)
    scale = float(reference.abs().max())
    assert scale > 0
    torch.testing.assert_close(lrp0, reference, atol=1e-5 * scale, rtol=1e-4)


def test_lrp0_and_gradient_x_input_rows_agree(smoke: BenchResult) -> None:
    (model,) = smoke.models
    for metric in ("mu", "mu_w", "aopc", "class_corr"):
        a, b = model.scores["lrp_0"][metric], model.scores["gradient_x_input"][metric]
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, equal_nan=True)


def test_every_method_is_scored(smoke: BenchResult) -> None:
    (model,) = smoke.models
    names = {s.name for s in smoke.methods}
    registry = set(METHODS) - {"lrp"}
    assert registry <= names
    lrp = {
        "lrp_0",
        "lrp_epsilon",
        "lrp_alpha1",
        "lrp_alpha2",
        "cmp_alpha1",
        "cmp_alpha1_flat",
        "cmp_alpha2",
        "cmp_alpha2_flat",
        "montavon2019",
        "epsilon_gamma_box",
        "epsilon_plus_flat",
    }
    assert lrp <= names
    for name in names:
        for metric in ("mu", "mu_w", "mu_small", "aopc", "class_corr"):
            assert model.scores[name][metric].shape == (12,)
        assert model.curves[name].shape == (12, 9)  # smoke: 8 steps
        assert bool(torch.isfinite(model.scores[name]["aopc"]).all())
    assert set(model.scores[RANDOM_ORDER]) == {"aopc"}
    # ρ(class): a constant map has none; a map is a correlation in [-1, 1] otherwise
    assert torch.isnan(model.scores["uniform_map"]["class_corr"]).all()
    corr = model.scores["lrp_0"]["class_corr"]
    assert bool(((corr >= -1) & (corr <= 1)).all()) and float(corr.std()) > 0


# --- report --------------------------------------------------------------------------------


def test_report_files(smoke: BenchResult, tmp_path: Path) -> None:
    paths = write_report(smoke, tmp_path / "out", command="relprop-bench localisation --smoke")
    text = paths["table"].read_text(encoding="utf-8")
    for spec in smoke.methods:
        assert f"| {spec.label} |" in text
    assert "| method | μ_w | μ | μ<0.25 | AOPC MoRF |" in text
    assert "random order" in text and "Paired differences" in text
    assert "relprop-bench localisation --smoke" in text
    image = read_png(paths["plot"])
    assert image.shape[2] == 3 and image.shape[0] > 100 and image.shape[1] > 300
    raw = torch.load(paths["raw"], weights_only=False)
    assert raw["models"][0]["scores"]["uniform_map"]["mu_w"].shape == (12,)
    again = load_result(paths["raw"])  # the report can be rendered again from results.pt

    def body(result: BenchResult) -> list[str]:  # all but the time stamp
        return markdown(result, summarise(result)).splitlines()[3:]

    assert body(again) == body(smoke)


def test_across_depth_table(smoke: BenchResult) -> None:
    lines = across_depth([smoke, smoke], "mu_w")  # a variant in two results: the first counts
    assert lines[0] == "| composite | minus | Δμ_w, vgg4 (1 seeds) |"
    rows = {tuple(line.split(" | ")[:2]) for line in lines[2:]}
    assert ("| LRP_CMP:α2", "LRP-α2β1 (uniform)") in rows
    assert ("| epsilon_gamma_box (z^B [0, 1])", "LRP-ε (uniform, ε = 0.25 std)") in rows
    assert len(lines) == 2 + 12
    assert across_depth([smoke], "aopc")[0].startswith("| composite | minus | ΔAOPC MoRF")


def test_means_across_depth_table(smoke: BenchResult) -> None:
    summary = summarise(smoke)
    lines = means_across_depth(smoke, summary)
    assert lines[0] == r"| method | μ_w, vgg4 | ρ(class) ↓, vgg4 | \|ρ\|(class) ↓, vgg4 |"
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines[2:]}
    assert rows["uniform map (baseline)"] == ["1.000", "–", "– |"]  # constant: no correlation
    lrp0 = summary["vgg4"]["lrp_0"]
    assert rows["LRP-0 (uniform)"] == [f"{lrp0['mu_w'].mean:.3f}",
                                       f"{lrp0['class_corr'].mean:.3f}",
                                       f"{lrp0['class_corr_abs'].mean:.3f} |"]
    # |ρ| is ρ's absolute value image by image, so its mean is at least |mean ρ|
    assert lrp0["class_corr_abs"].mean >= abs(lrp0["class_corr"].mean) - 1e-12


def test_summary_ranks_by_mu_w(smoke: BenchResult) -> None:
    summary = summarise(smoke)["vgg4"]
    assert summary["uniform_map"]["mu_w"].mean == pytest.approx(1.0)
    assert summary["uniform_map"]["mu_w"].low == pytest.approx(1.0)
    lines = markdown(smoke, summarise(smoke)).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method | μ_w"))
    table = lines[start + 2 : start + 2 + len(smoke.methods)]
    assert {row.split(" | ")[0][2:] for row in table} == {s.label for s in smoke.methods}
    mu_w = [float(row.split(" | ")[1].split(" [")[0]) for row in table]
    assert mu_w == sorted(mu_w, reverse=True)


def test_cli_bench_localisation(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    args = ["localisation", "--smoke", "--n", "4", "--cache", str(cache), "--out"]
    status = main([*args, str(out)])
    assert status == 0
    captured = capsys.readouterr()
    assert "| method |" in captured.out
    assert "[vgg4 seed 0]" in captured.err  # progress goes to stderr
    assert (out / "localisation.md").is_file() and (out / "aopc_curves.png").is_file()
    assert "relprop-bench localisation --smoke" in (out / "localisation.md").read_text("utf-8")


def test_deprecated_relprop_bench_alias(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``relprop bench ...`` still works: a deprecation note, then ``relprop-bench ...``."""
    import relprop_bench.cli
    from relprop.cli import main as relprop_main

    seen: list[list[str]] = []
    monkeypatch.setattr(relprop_bench.cli, "main", lambda argv: seen.append(list(argv)) or 7)
    assert relprop_main(["bench", "localisation", "--smoke", "--out", "x"]) == 7
    assert seen == [["localisation", "--smoke", "--out", "x"]]
    err = capsys.readouterr().err
    assert "DeprecationWarning" in err and "relprop-bench localisation --smoke --out x" in err


def test_deprecated_relprop_bench_module() -> None:
    """``import relprop.bench`` still works, warns, and is the package relprop_bench."""
    import sys

    import relprop_bench.localisation

    for name in [name for name in sys.modules if name.startswith("relprop.bench")]:
        del sys.modules[name]  # import it afresh, as a first import would
    with pytest.warns(DeprecationWarning, match="relprop_bench"):
        import relprop.bench.localisation
    assert relprop.bench.localisation is relprop_bench.localisation
    assert relprop.bench.stats is relprop_bench.stats  # type: ignore[attr-defined]


# --- helpers -------------------------------------------------------------------------------


def test_bootstrap() -> None:
    constant = bootstrap_mean([torch.full((10,), 2.0), torch.full((5,), 2.0)])
    assert (constant.mean, constant.low, constant.high) == (2.0, 2.0, 2.0)
    gen = torch.Generator().manual_seed(0)
    seeds = [torch.randn(200, generator=gen) + 1.0 for _ in range(3)]
    est = bootstrap_mean(seeds)
    assert est.low < 1.0 < est.high and est.low < est.mean < est.high
    assert bootstrap_mean([torch.tensor([1.0, float("nan"), 3.0])]).mean == 2.0
    assert math.isnan(bootstrap_mean([torch.tensor([float("nan")])]).mean)
    same = paired_difference(seeds, seeds)
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
    shifted = paired_difference([s + 0.5 for s in seeds], seeds)
    assert shifted.mean == pytest.approx(0.5) and shifted.excludes_zero()


def test_line_plot() -> None:
    assert nice_ticks(0.0, 1.0, 6) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(-0.03, 0.11) == [0.0, 0.05, 0.1]
    image = line_plot(
        [
            Line("A", [0, 1, 2], [0.0, 1.0, 0.5]),
            Line("B", [0, 1, 2], [1.0, 0.0, 0.2], (0, 0, 0), dashed=True),
        ],
        width=300,
        height=200,
        title="T",
        xlabel="X",
        ylabel="Y",
    )
    assert image.shape == (200, 300, 3) and image.dtype == torch.uint8
    assert int((image.sum(dim=2) == 0).sum()) > 50  # the axes and the black line


def test_default_methods_are_named_uniquely() -> None:
    specs = default_methods()
    assert len({s.name for s in specs}) == len(specs)
    assert all(s.short.isascii() for s in specs)
    assert {s.family for s in specs} == {"lrp", "other", "control"}


# --- slow: the real models -------------------------------------------------------------------


@pytest.mark.slow
def test_trained_vgg8_is_accurate(tmp_path: Path) -> None:
    """The benchmark's 8-conv model trains to > 90 % (about a minute on two idle cores)."""
    _, meta = trained_net(VARIANTS["vgg8"], 0, cache=tmp_path)
    assert meta["test_accuracy"] > 0.9


@pytest.mark.slow
def test_trained_vgg13_is_accurate(tmp_path: Path) -> None:
    """The 13-conv model trains to > 90 % too (one to two minutes on two idle cores)."""
    _, meta = trained_net(VARIANTS["vgg13"], 0, cache=tmp_path)
    assert meta["test_accuracy"] > 0.9


@pytest.mark.slow
def test_smoke_config_runs_from_scratch(tmp_path: Path) -> None:
    result = run_benchmark(replace(smoke_config(), cache=tmp_path), progress=None)
    assert len(result.models) == 1
