"""One chunk of samples: stacked in the loader's workers, explained, made into index rows and
the tensors of its shard."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..composites import Composite
from ..methods import get_method
from ..store.format import reduce_relevance, thumbnails
from .config import RunConfig
from .metrics import METRICS

__all__ = ["Collate", "Explainer", "chunk_ids"]


def chunk_ids(chunk: int, batch_size: int, total: int) -> list[int]:
    """The sample ids of ``chunk``: a fixed run of the sample order."""
    return list(range(chunk * batch_size, min((chunk + 1) * batch_size, total)))


class Collate:
    """Stack the readable samples of a chunk whose input has ``shape``; the others are passed
    on as rows (``size`` marks a sample whose shape differs).

    Runs in the loader's workers: with ``thumbnails`` it also makes the chunk's thumbnails
    there (uint8, ≤ 64 px), so that the preprocessed ``[0, 1]`` copies of the inputs never
    travel to the main process, which only explains.
    """

    def __init__(self, shape: tuple[int, ...], thumbnails: bool = True) -> None:
        self.shape, self.thumbnails = shape, thumbnails

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        ok = []
        for sample in samples:
            x = sample["x"]
            if x is not None and tuple(x.shape) != self.shape:
                sample["size"] = tuple(x.shape)
            elif x is not None:
                ok.append(sample)
        views = [s["view"] for s in ok]
        same_views = self.thumbnails and bool(views) and all(
            v is not None and v.shape == views[0].shape for v in views)
        meta = [{k: v for k, v in s.items() if k not in ("x", "view", "mask")} for s in samples]
        return {
            "samples": meta, "ok": [s["id"] for s in ok],
            "x": torch.stack([s["x"] for s in ok]) if ok else None,
            "thumbnail": thumbnails(torch.stack(views)) if same_views else None,
            "mask": torch.stack([s["mask"] for s in ok]) if ok and ok[0]["mask"] is not None
            else None,
        }


@dataclass
class Result:
    """What explaining some samples gives: per sample columns, per method relevance."""

    columns: list[dict[str, Any]]
    relevance: dict[str, Tensor]


class Explainer:
    """Explains batches with the run's methods, composite and target."""

    def __init__(self, model: nn.Module, config: RunConfig, composite: Composite,
                 device: torch.device) -> None:
        self.model, self.config, self.composite, self.device = model, config, composite, device
        #: the number of classes of the last explained output (None before one)
        self.classes: int | None = None

    def targets(self, labels: list[int | None], output: Tensor | None = None) -> Any:
        """The target of the first method: labels, a class index, or ``None`` (top class)."""
        mode = self.config.target
        if mode == "true":
            return torch.tensor(labels, device=self.device)
        return None if mode == "predicted" else int(mode)

    def explain(self, x: Tensor, mask: Tensor | None, labels: list[int | None]) -> Result:
        """Every method on the batch ``x`` (on the device already)."""
        forward_kwargs = {"attention_mask": mask} if mask is not None else None
        target: Any = self.targets(labels)
        relevance: dict[str, Tensor] = {}
        columns: list[dict[str, Any]] = [{} for _ in range(x.shape[0])]
        for n, name in enumerate(self.config.methods):
            options: dict[str, Any] = {}
            if forward_kwargs is not None:
                options["forward_kwargs"] = forward_kwargs
            if name == "lrp":
                options.update(composite=self.composite, strict=self.config.strict)
            expl = get_method(name)(self.model, x, target=target, **options)
            explained_t = expl.explained.detach().float().reshape(-1)
            # one device-to-host copy per column, not one sync per sample and value
            explained = explained_t.cpu().tolist()
            sums = expl.relevance_sum().detach().float().cpu().tolist()
            if n == 0:
                output = expl.output.detach()
                self.classes = int(output.shape[-1]) if output.dim() == 2 else 1
                prediction = output.argmax(1) if output.dim() == 2 else None
                target = self._resolved(target, prediction, x.shape[0])
                self._metrics(x, expl.relevance, target, explained_t, columns)
                predictions = ([None] * len(columns) if prediction is None
                               else prediction.cpu().tolist())
                for row, p, t, e, r in zip(columns, predictions, target.cpu().tolist(),
                                           explained, sums):
                    row.update(prediction=p, target=int(t), explained=e, relevance_sum=r)
            else:
                for row, e, r in zip(columns, explained, sums):
                    row[f"{name}.explained"] = e
                    row[f"{name}.relevance_sum"] = r
            relevance[name] = expl.relevance.detach()
        return Result(columns, relevance)

    def _resolved(self, target: Any, prediction: Tensor | None, n: int) -> Tensor:
        if isinstance(target, Tensor):
            return target
        if target is None:
            if prediction is None:
                return torch.zeros(n, dtype=torch.long, device=self.device)
            return prediction
        return torch.full((n,), int(target), dtype=torch.long, device=self.device)

    def _metrics(self, x: Tensor, relevance: Tensor, target: Tensor, explained: Tensor,
                 columns: list[dict[str, Any]]) -> None:
        for name in self.config.metrics:
            values = METRICS[name](self.model, x, relevance.detach(), target, explained)
            for row, value in zip(columns, values.detach().float().cpu().tolist()):
                row[name] = float(value)

    def stored(self, result: Result, thumbnail: Tensor | None) -> dict[str, Tensor]:
        """The shard's tensors for ``result``: relevance made small, and the thumbnails of
        its samples (made by :class:`Collate`) unless the run stores none."""
        config = self.config
        tensors: dict[str, Tensor] = {}
        for n, (name, relevance) in enumerate(result.relevance.items()):
            key = "relevance" if n == 0 else f"relevance.{name}"
            tensors[key] = reduce_relevance(relevance, full=config.full,
                                            resolution=config.resolution,
                                            dtype=config.torch_dtype()).cpu()
        if config.thumbnails and thumbnail is not None:
            tensors["thumbnail"] = thumbnail
        return tensors
