"""Does removing what the map calls relevant change the prediction? Perturbation curves.

Regions (or pixels) are ranked by pooled relevance and replaced, in that order, with noise;
the model's score for the target is recorded after every step. All samples are perturbed at
once: a pixel is replaced at step ``k`` iff its region's position in the sample's order is
below the number of regions replaced by then, and the ``N · L`` perturbed inputs are built
and evaluated ``batch_size`` at a time.

Randomness comes from one generator seeded with ``seed`` on the input's device: the noise is
drawn first (so MoRF, LeRF and random order with the same seed replace each pixel with the
same value), then the permutation that breaks ties in the ranking at random, or that is the
order itself for ``order="random"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from .._engine import check_model
from ..errors import InvalidInputError
from ..targets import class_indices
from ._summary import describe
from .maps import Pool, check_map, check_pool, pool_channels

Order = Literal["morf", "lerf", "random"]
Score = Literal["logit", "probability", "output"]
NoiseBound = float | Tensor


@dataclass(frozen=True)
class PerturbationResult:
    """Perturbation curves ``(N, L+1)`` (column 0 is ``f(x⁰)``) and their AOPC."""

    curves: Tensor
    aopc_per_sample: Tensor
    aopc: Tensor
    order: str
    protocol: dict[str, object]

    def __repr__(self) -> str:
        """The AOPC over samples with its 95% CI (normal approximation, ``mean ± 1.96 s/√n``),
        the sample count and the steps, not the curves."""
        return (f"PerturbationResult({self.protocol.get('metric', '?')} {self.order}, "
                f"{describe(self.aopc_per_sample, 'AOPC')}, steps={self.curves.shape[1] - 1})")


@dataclass(frozen=True)
class ABPCResult:
    """Area between the LeRF and MoRF curves, per sample and averaged."""

    per_sample: Tensor
    abpc: Tensor
    protocol: dict[str, object]

    def __repr__(self) -> str:
        """The ABPC over samples with its 95% CI (normal approximation, ``mean ± 1.96 s/√n``)
        and the sample count, not the per-sample tensor."""
        metric = self.protocol.get("metric", "?")
        return f"ABPCResult({metric}: {describe(self.per_sample, 'ABPC')})"


def region_perturbation(model: nn.Module, x: Tensor, relevance: Tensor | None,
                        target: int | Tensor | None = None, *, order: Order = "morf",
                        region_size: int = 9, steps: int | None = None, pool: Pool = "sum",
                        noise_range: tuple[NoiseBound, NoiseBound] | None = None,
                        seed: int = 0, score: Score = "logit",
                        batch_size: int = 64) -> PerturbationResult:
    """Region perturbation and AOPC (Samek et al. 2017).

    The image is tiled into ``region_size`` × ``region_size`` regions (partial tiles at the
    right and bottom edges when the side is not a multiple); each region is scored by the sum
    of its pooled relevance. Step ``k = 1..L`` replaces one more region, most relevant first
    (``"morf"``), least relevant first (``"lerf"``) or in a seeded random order
    (``"random"``, which takes ``relevance=None``), with per-pixel uniform noise. The curve
    is ``f(x⁰), …, f(x^L)``, and
    ``AOPC = ⟨1/(L+1) Σ_{k=0}^{L} (f(x⁰) − f(x^k))⟩_samples`` ("Evaluating the visualization
    of what a deep neural network has learned", IEEE TNNLS 28(11), 2017, Eq. 12). A high
    MoRF AOPC (and a low LeRF AOPC) means the ranking found what the model uses.

    Samek et al. perturb overlapping windows centred on the ranked pixels; the tiling used
    here (as in most re-implementations) replaces each pixel exactly once, so the curve ends
    on pure noise when ``steps`` is ``None`` (all regions).

    Args:
        model: a classifier in eval mode returning ``(N, classes)``; run under ``no_grad``.
        x: inputs ``(N, C, H, W)``.
        relevance: maps ``(N, C, H, W)`` or ``(N, H, W)``; ``None`` for ``order="random"``.
        target: class index, one per sample, or ``None`` for the top class of ``f(x⁰)``.
        order: ``"morf"``, ``"lerf"`` or ``"random"``; ties in the ranking are broken at
            random (seeded), so a constant map ranks like ``"random"``.
        region_size: side ``k`` of the square regions in pixels; it must fit in the image
            (``k ≤ min(H, W)``) and leave more than one region, else an error is raised.
        steps: ``L``, the number of regions replaced; ``None`` for all of them.
        pool: channel pooling of ``relevance`` (unused, recorded as ``None``, for random).
        noise_range: ``(low, high)`` of the uniform noise, floats or tensors broadcastable
            to ``x``; ``None`` (default) uses each sample's own per-channel min and max.
            ``(v, v)`` replaces with the constant ``v``.
        seed: seeds the noise, the tie-breaking and the random order.
        score: ``"logit"`` (default): the model output for the target, which must be logits
            (an output whose rows all look like probabilities raises); ``"probability"``:
            its softmax; ``"output"``: the raw output, unchecked.
        batch_size: perturbed inputs per forward pass.
    """
    check_model(model, "the curves")
    _check_int(region_size, "region_size", 1)
    _check_input(x)
    h, w = x.shape[-2:]
    if region_size > min(h, w) or (region_size >= h and region_size >= w):
        what = ("larger than the image" if region_size > min(h, w)
                else "as large as the image, so the image is one region")
        raise InvalidInputError(
            f"region_size {region_size} is {what} ({h}×{w} pixels): the ranking would have "
            f"nothing to order and the AOPC would not depend on the relevance; choose "
            f"region_size < {min(h, w)} (Samek et al. use 9 at 224×224)")
    return _perturb(model, x, relevance, target, order=order, region_size=region_size,
                    regions_per_step=1, steps=steps, pool=pool, noise_range=noise_range,
                    seed=seed, score=score, batch_size=batch_size,
                    protocol={"metric": "region_perturbation", "region_size": region_size,
                              "region_score": "sum of pooled relevance over the region"})


def pixel_flipping(model: nn.Module, x: Tensor, relevance: Tensor | None,
                   target: int | Tensor | None = None, *, order: Order = "morf",
                   pixels_per_step: int | None = None, fraction_per_step: float | None = None,
                   steps: int | None = None, pool: Pool = "sum",
                   noise_range: tuple[NoiseBound, NoiseBound] | None = None, seed: int = 0,
                   score: Score = "logit", batch_size: int = 64) -> PerturbationResult:
    """Pixel-flipping curves (Bach et al. 2015) with the same orders, noise and AOPC.

    Pixels (all channels of a pixel together) are ranked by pooled relevance and replaced
    with uniform noise, ``pixels_per_step`` at a time, or ``fraction_per_step`` of the
    image's pixels at a time (rounded, at least one); default one pixel per step
    ("On pixel-wise explanations for non-linear classifier decisions by layer-wise relevance
    propagation", PLoS ONE 10(7), 2015). Other arguments as in :func:`region_perturbation`;
    ``steps=None`` flips every pixel.
    """
    if pixels_per_step is not None and fraction_per_step is not None:
        raise InvalidInputError("give pixels_per_step or fraction_per_step, not both")
    protocol: dict[str, object] = {"metric": "pixel_flipping"}
    pixels = 1 if pixels_per_step is None else _check_int(pixels_per_step, "pixels_per_step", 1)
    if fraction_per_step is not None:
        if (isinstance(fraction_per_step, bool) or not isinstance(fraction_per_step, (int, float))
                or not 0 < fraction_per_step <= 1):
            raise InvalidInputError(
                f"fraction_per_step must be a number in (0, 1], got {fraction_per_step!r}"
            )
        _check_input(x)
        pixels = max(1, round(fraction_per_step * x.shape[-1] * x.shape[-2]))
        protocol["fraction_per_step"] = fraction_per_step
    protocol["pixels_per_step"] = pixels
    return _perturb(model, x, relevance, target, order=order, region_size=1,
                    regions_per_step=pixels, steps=steps, pool=pool, noise_range=noise_range,
                    seed=seed, score=score, batch_size=batch_size, protocol=protocol)


def abpc(morf: PerturbationResult, lerf: PerturbationResult) -> ABPCResult:
    """Area between the perturbation curves: ``1/(L+1) Σ_k (f(x^k_LeRF) − f(x^k_MoRF))``.

    Schulz et al., "Restricting the flow: information bottlenecks for attribution",
    ICLR 2020; it equals ``AOPC_MoRF − AOPC_LeRF``, higher is better. The two results must
    come from the same protocol (region size, steps, noise, seed, score, target) but order.
    """
    for result, name in ((morf, "morf"), (lerf, "lerf")):
        if not isinstance(result, PerturbationResult) or result.order != name:
            got = result.order if isinstance(result, PerturbationResult) else type(result)
            raise InvalidInputError(f"{name} must be a PerturbationResult with order={name!r}, "
                                    f"got {got!r}")
    rest_m = {k: v for k, v in morf.protocol.items() if k != "order"}
    rest_l = {k: v for k, v in lerf.protocol.items() if k != "order"}
    if rest_m != rest_l or morf.curves.shape != lerf.curves.shape:
        differ = sorted(k for k in rest_m.keys() | rest_l.keys() if rest_m.get(k) != rest_l.get(k))
        raise InvalidInputError(f"morf and lerf come from different protocols (differ in "
                                f"{differ}); run both with the same arguments but order")
    per_sample = (lerf.curves - morf.curves).mean(dim=1)
    return ABPCResult(per_sample=per_sample, abpc=per_sample.mean(),
                      protocol=rest_m | {"metric": f"abpc:{rest_m['metric']}"})


def _perturb(model: nn.Module, x: Tensor, relevance: Tensor | None,
             target: int | Tensor | None, *, order: Order, region_size: int,
             regions_per_step: int, steps: int | None, pool: Pool,
             noise_range: tuple[NoiseBound, NoiseBound] | None, seed: int, score: Score,
             batch_size: int, protocol: dict[str, object]) -> PerturbationResult:
    check_model(model, "the curves")
    _check_input(x)
    _check_choice(order, "order", Order)
    _check_choice(score, "score", Score)
    pool = check_pool(pool)
    _check_int(batch_size, "batch_size", 1)
    _check_int(seed, "seed", 0)
    n, _, h, w = x.shape
    rows, cols = math.ceil(h / region_size), math.ceil(w / region_size)
    regions = rows * cols
    most = math.ceil(regions / regions_per_step)
    steps = most if steps is None else _check_int(steps, "steps", 1, most)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    low, high, noise_protocol = _noise_bounds(x, noise_range)
    noise = low + (high - low) * torch.rand(x.shape, generator=generator, device=x.device,
                                            dtype=x.dtype)
    if order == "random":
        if relevance is not None:
            raise InvalidInputError("order='random' does not use relevance; pass relevance=None")
        ranking = torch.rand(n, regions, generator=generator, device=x.device).argsort(dim=1)
    else:
        region_scores = _region_scores(_pooled(relevance, x, pool), region_size, rows, cols)
        ranking = _rank(region_scores, order, generator)
    position = ranking.argsort(dim=1)  # position[n, region] = when it is replaced
    ids = ((torch.arange(h, device=x.device) // region_size)[:, None] * cols
           + torch.arange(w, device=x.device) // region_size)
    pixel_rank = position[:, ids]
    counts = torch.tensor([min(k * regions_per_step, regions) for k in range(steps + 1)],
                          device=x.device)
    with torch.no_grad():
        clean = _forward(model, x, batch_size)
        _check_output(clean, n, score)
        classes = clean.argmax(dim=1) if target is None else class_indices(target, clean, "target")
        curves = _curves(model, x, noise, pixel_rank, counts, classes, score, batch_size,
                         _score(clean, classes, score))
    per_sample = (curves[:, :1] - curves).mean(dim=1)
    protocol = protocol | {
        "order": order, "regions": regions, "steps": steps,
        "pool": None if order == "random" else pool,
        "perturbation": "uniform noise per pixel and channel", "noise_range": noise_protocol,
        "seed": seed, "tie_break": "random (seeded)", "score": score,
        "target": classes.tolist(),
    }
    return PerturbationResult(curves=curves, aopc_per_sample=per_sample,
                              aopc=per_sample.mean(), order=order, protocol=protocol)


def _curves(model: nn.Module, x: Tensor, noise: Tensor, pixel_rank: Tensor, counts: Tensor,
            classes: Tensor, score: Score, batch_size: int, clean: Tensor) -> Tensor:
    """``f(x^k)`` for every sample and step; step 0 is the clean score."""
    n, steps = x.shape[0], counts.shape[0] - 1
    curves = torch.empty(n, steps + 1, dtype=torch.float64, device=x.device)
    curves[:, 0] = clean
    sample = torch.arange(n, device=x.device).repeat_interleave(steps)
    step = torch.arange(1, steps + 1, device=x.device).repeat(n)
    for start in range(0, n * steps, batch_size):
        s, k = sample[start:start + batch_size], step[start:start + batch_size]
        replaced = (pixel_rank[s] < counts[k][:, None, None])[:, None]
        output = model(torch.where(replaced, noise[s], x[s]))
        if not isinstance(output, Tensor) or not bool(torch.isfinite(output).all()):
            raise InvalidInputError(
                f"the model output on perturbed inputs (samples {s.unique().tolist()[:5]}) is "
                "not a finite tensor; choose a noise_range the model can take"
            )
        curves[s, k] = _score(output, classes[s], score)
    return curves


def _score(output: Tensor, classes: Tensor, score: Score) -> Tensor:
    if score == "probability":
        output = output.softmax(dim=1)
    return output.gather(1, classes[:, None])[:, 0].to(torch.float64)


def _rank(scores: Tensor, order: Order, generator: torch.Generator) -> Tensor:
    """Region indices in replacement order, ties broken by a seeded random permutation."""
    shuffle = torch.rand(scores.shape, generator=generator, device=scores.device).argsort(dim=1)
    by_score = scores.gather(1, shuffle).argsort(dim=1, descending=order == "morf", stable=True)
    return shuffle.gather(1, by_score)


def _pooled(relevance: Tensor | None, x: Tensor, pool: Pool) -> Tensor:
    if relevance is None:
        raise InvalidInputError("relevance=None is only allowed with order='random'")
    check_map(relevance)
    n, c, h, w = x.shape
    if tuple(relevance.shape) not in ((n, c, h, w), (n, h, w)):
        raise InvalidInputError(
            f"relevance must have the input's shape {(n, c, h, w)} or {(n, h, w)}, got "
            f"{tuple(relevance.shape)}"
        )
    return pool_channels(relevance.to(torch.float64), pool).to(x.device)


def _region_scores(pooled: Tensor, size: int, rows: int, cols: int) -> Tensor:
    """Sum of the pooled map over each tile, ``(N, rows · cols)`` in row-major order."""
    n, h, w = pooled.shape
    padded = torch.nn.functional.pad(pooled, (0, cols * size - w, 0, rows * size - h))
    return padded.reshape(n, rows, size, cols, size).sum(dim=(2, 4)).reshape(n, -1)


def _noise_bounds(x: Tensor, noise_range: tuple[NoiseBound, NoiseBound] | None,
                  ) -> tuple[Tensor, Tensor, object]:
    if noise_range is None:
        low, high = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
        return low, high, "per-sample, per-channel min and max of x"
    if not isinstance(noise_range, tuple) or len(noise_range) != 2:
        raise InvalidInputError(f"noise_range must be a tuple (low, high), got {noise_range!r}")
    bounds = []
    for name, value in zip(("low", "high"), noise_range):
        if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
            raise InvalidInputError(f"noise_range {name} must be a float or a tensor, got "
                                    f"{type(value).__name__}")
        bound = torch.as_tensor(value, dtype=x.dtype, device=x.device)
        try:
            fits = torch.broadcast_shapes(bound.shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise InvalidInputError(f"noise_range {name} of shape {tuple(bound.shape)} does not "
                                    f"broadcast to the input's shape {tuple(x.shape)}")
        if not bool(torch.isfinite(bound).all()):
            raise InvalidInputError(f"noise_range {name} must be finite")
        bounds.append(bound)
    if not bool((bounds[0] <= bounds[1]).all()):
        raise InvalidInputError(f"noise_range needs low ≤ high, got {noise_range!r}")
    return bounds[0], bounds[1], [bounds[0].tolist(), bounds[1].tolist()]


def _check_input(x: object) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InvalidInputError(f"x must be a non-empty image batch (N, C, H, W), got {shape}")
    if not x.is_floating_point():
        raise InvalidInputError(f"x must be floating point, got dtype {x.dtype}")
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        raise InvalidInputError(f"x contains NaN or inf in sample(s) "
                                f"{(~finite).nonzero()[:, 0].tolist()[:10]}")


def _check_output(output: object, n: int, score: Score) -> None:
    if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[0] != n:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise InvalidInputError(f"the model must return scores (N, classes) = ({n}, …), got "
                                f"{shape}")
    if not bool(torch.isfinite(output).all()):
        raise InvalidInputError("the model output on the clean inputs contains NaN or inf")
    if score == "output" or output.shape[1] < 2:
        return
    looks_like_probabilities = bool(
        (output >= 0).all() and ((output.sum(dim=1) - 1).abs() <= 1e-4).all())
    if looks_like_probabilities and score == "logit":
        raise InvalidInputError(
            "the model seems to return probabilities (every row is non-negative and sums to 1 "
            "within 1e-4), but score='logit' scores logits: pass the model without its final "
            "softmax (logits), or set score='probability' for a softmax of the logits"
        )
    if looks_like_probabilities:
        raise InvalidInputError(
            "the model seems to return probabilities (every row is non-negative and sums to 1 "
            "within 1e-4), but score='probability' applies a softmax to logits: pass the model "
            "without its final softmax, or set score='output' to score its output as it is"
        )


def _check_choice(value: object, name: str, choices: object) -> None:
    if value not in get_args(choices):
        raise InvalidInputError(f"{name} must be one of {get_args(choices)}, got {value!r}")


def _forward(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    outputs = [model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    if not all(isinstance(o, Tensor) for o in outputs):
        raise InvalidInputError("the model must return a tensor of scores (N, classes)")
    return torch.cat(outputs)


def _check_int(value: object, name: str, low: int | None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (
            low is not None and value < low) or (high is not None and value > high):
        bounds = f"≥ {low}" if high is None else f"in [{low}, {high}]"
        raise InvalidInputError(f"{name} must be an int" + (f" {bounds}" if low is not None
                                                               else "") + f", got {value!r}")
    return value
