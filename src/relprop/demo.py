"""A self-contained demo: a small CNN trained on 8x8 digits, explained with four LRP variants.

The weights and a few test digits ship with the package (``relprop/data``; made by
``scripts/train_digits.py``), so the demo runs offline and needs nothing beyond torch::

    from relprop.demo import run_demo
    png = run_demo(Path("demo-out"))      # or, from a shell: relprop demo --out demo-out

The PNG follows Fig. 10.4 of Montavon et al. (2019), "Layer-wise relevance propagation: an
overview": one row per digit, columns input, LRP-0, LRP-ε, LRP-γ and the composite
(LRP-0 at the top, ε in the middle, γ at the bottom, z^B on the pixels).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import viz

__all__ = [
    "DigitsCNN",
    "METHODS",
    "explain_digits",
    "format_conservation",
    "load_digit_samples",
    "load_digits_cnn",
    "run_demo",
]


class DigitsCNN(nn.Module):
    """Conv(1→16)-ReLU-Conv(16→32)-ReLU-MaxPool-Conv(32→32)-ReLU-Linear(512→64)-ReLU-Linear(64→10).

    Input: ``(N, 1, 8, 8)`` grey digits in ``[0, 1]`` (ink is 1). Output: 10 logits.
    """

    meta: dict[str, Any]  #: training metadata (test accuracy, ...) of the loaded weights

    def __init__(self) -> None:
        super().__init__()
        self.meta = {}
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _load_data(name: str) -> Any:
    with (resources.files("relprop") / "data" / name).open("rb") as f:
        return torch.load(f, weights_only=True)


def load_digits_cnn() -> DigitsCNN:
    """The shipped, trained :class:`DigitsCNN`, in eval mode (test accuracy in ``.meta``)."""
    blob = _load_data("digits_cnn.pt")
    model = DigitsCNN()
    model.load_state_dict(blob["state_dict"] if "state_dict" in blob else blob)
    model.meta = dict(blob.get("meta", {}))
    return model.eval()


def load_digit_samples() -> tuple[Tensor, Tensor]:
    """Shipped test digits (never trained on): images ``(N, 1, 8, 8)`` in [0, 1], labels ``(N,)``.

    The first ten are the digits 0..9 in order.
    """
    blob = _load_data("digits_samples.pt")
    return blob["images"], blob["labels"]


def _methods() -> list[tuple[str, Callable[[], Any]]]:
    from . import composites, rules

    return [
        ("LRP-0", lambda: composites.uniform(rules.Zero())),
        ("LRP-ε", lambda: composites.uniform(rules.Epsilon(0.25, relative_to_std=True))),
        ("LRP-γ", lambda: composites.uniform(rules.Gamma(0.25))),
        ("composite", lambda: composites.montavon2019(low=0.0, high=1.0)),
    ]


#: The column titles of the demo figure, in order.
METHODS: tuple[str, ...] = ("LRP-0", "LRP-ε", "LRP-γ", "composite")


def explain_digits(n: int = 6, target: str = "predicted") -> dict[str, Any]:
    """Explain the first ``n`` shipped digits with every method in :data:`METHODS`.

    Args:
        n: how many digits (1 to the number shipped).
        target: ``"predicted"`` (the model's class) or ``"true"`` (the label).

    Returns:
        A dict with ``images``, ``labels``, ``predictions``, ``targets``, ``logits`` (N, 10),
        ``methods`` and ``relevance`` (method name -> ``(N, 1, 8, 8)`` tensor).
    """
    import relprop

    if target not in ("predicted", "true"):
        raise ValueError(f"target must be 'predicted' or 'true', not {target!r}")
    images, labels = load_digit_samples()
    if not 1 <= n <= len(labels):
        raise ValueError(f"n must lie in [1, {len(labels)}], got {n}")
    images, labels = images[:n], labels[:n]
    model = load_digits_cnn()
    with torch.no_grad():
        logits = model(images)
    predictions = logits.argmax(dim=1)
    targets = predictions if target == "predicted" else labels
    relevance: dict[str, Tensor] = {}
    for name, make in _methods():
        expl = relprop.explain(model, images, target=targets, composite=make())
        relevance[name] = expl.relevance.detach()
    return {
        "images": images,
        "labels": labels,
        "predictions": predictions,
        "targets": targets,
        "logits": logits,
        "methods": list(relevance),
        "relevance": relevance,
    }


def format_conservation(result: dict[str, Any]) -> str:
    """A table of ``sum_i R_i`` per digit and method next to the explained logit ``f_c(x)``.

    LRP conserves relevance up to what biases and ε absorb, so the sums should be close to,
    and mostly a bit below, the logits.
    """
    logit = result["logits"].gather(1, result["targets"][:, None])[:, 0]
    methods = result["methods"]
    lines = ["digit  class   logit  " + "  ".join(f"{m:>9}" for m in methods)]
    for i in range(len(logit)):
        sums = "  ".join(f"{result['relevance'][m][i].sum().item():9.2f}" for m in methods)
        label, target = int(result["labels"][i]), int(result["targets"][i])
        lines.append(f"{label:>5}  {target:>5}  {logit[i].item():6.2f}  {sums}")
    return "\n".join(lines)


def run_demo(out_dir: Path, n: int = 6, *, target: str = "predicted", scale: int = 12) -> Path:
    """Explain ``n`` test digits four ways and write the figure; returns the PNG's path.

    Writes to ``out_dir`` (created if needed): ``lrp_digits.png`` (rows = digits; columns =
    input, LRP-0, LRP-ε, LRP-γ, composite; blue-white-red, red = evidence for the class),
    ``explanations.pt`` (the tensors of :func:`explain_digits`) and ``README.txt``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = explain_digits(n, target)
    cells: list[Tensor] = []
    for i in range(n):
        ink = 1.0 - result["images"][i]  # dark ink on white paper
        cells.append(viz.upscale(viz.to_rgb(ink), scale))
        for m in result["methods"]:
            cells.append(viz.upscale(viz.heatmap(result["relevance"][m][i], "bwr"), scale))
    rows = []
    for y, p in zip(result["labels"].tolist(), result["predictions"].tolist(), strict=True):
        rows.append(f"{y}" if y == p else f"{y}>{p}")
    figure = viz.grid(
        cells,
        nrow=1 + len(result["methods"]),
        padding=max(2, scale // 2),
        labels=["input", *result["methods"]],
        row_labels=rows,
        label_scale=2 if scale >= 10 else 1,
    )
    png = viz.save_png(out / "lrp_digits.png", figure)
    torch.save(result, out / "explanations.pt")
    (out / "README.txt").write_text(
        "lrp_digits.png: LRP heatmaps of a small CNN on 8x8 test digits\n"
        "(cf. Montavon et al. 2019, 'Layer-wise relevance propagation: an overview', Fig. 10.4).\n"
        f"rows: {n} test digits, labelled 'true class' or 'true>predicted' where they differ;\n"
        f"explained class: the {target} one.\n"
        "columns: input | LRP-0 | LRP-eps (eps = 0.25 std) | LRP-gamma (gamma = 0.25) | composite\n"
        "  (composite = montavon2019: LRP-0 on top layers, eps in the middle, gamma in the\n"
        "  lower layers, z^B on the pixels).\n"
        "colours: each heatmap divided by its max |R|; red = evidence for the class, blue =\n"
        "  against, white = none.\n"
        "explanations.pt: torch.load(..., weights_only=True) -> dict of the tensors above.\n\n"
        "conservation (sum of input relevance vs explained logit):\n"
        + format_conservation(result)
        + "\n",
        encoding="utf-8",
    )
    return png
