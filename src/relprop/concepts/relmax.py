"""Relevance Maximization (RelMax, Achtibat et al. 2023): each unit's reference samples.

Activation maximisation shows what excites a unit; RelMax shows what the unit is *used for*:
over a dataset, the samples where the unit's relevance for the explained prediction is the
largest,

    refs_k(u) = top-k over samples x of  R_u(x),   R_u(x) = Σ_positions a_u · G_u

(``reduce="max"``: the largest position instead of the sum), computed with the full backward
pass from the output, never from activations alone (zennit-crp issue #11). Activation
maximisation's top-k (max over positions of ``a_u``) is kept beside it for comparison. Each
reference is then explained once more, conditioned on the unit, and its patch is cropped to
where that conditional relevance lies.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..composites import Composite
from ..errors import InvalidInputError
from . import _patches, _store
from ._forward import shared_forward
from ._units import concepts, per_unit, per_unit_max
from .explain import explain, layer_relevance

__all__ = ["References", "references"]

_TABLES = ("relevance_values", "relevance_indices", "activation_values", "activation_indices")


@dataclass
class References:
    """Per unit, the ``k`` samples of largest relevance (and of largest activation).

    ``*_indices[u, j]`` is the position of the ``j``-th reference of ``units[u]`` in the data
    (``-1``: fewer than ``k`` samples seen); ``samples`` holds the referenced samples, so that
    the references can be shown without the data.
    """

    layer: str
    units: list[int]
    k: int
    reduce: str
    target: int | str | None
    relevance_values: Tensor
    relevance_indices: Tensor
    activation_values: Tensor
    activation_indices: Tensor
    #: how many samples of the data have been scanned (a resumed run starts there)
    seen: int = 0
    #: data position -> sample, and the class it was explained for
    samples: dict[int, Tensor] = field(default_factory=dict, repr=False)
    targets: dict[int, int] = field(default_factory=dict, repr=False)
    #: ``(U, k, 2·dims)`` crop boxes and ``(U, k, *positions)`` conditional maps of the
    #: relevance references (after :meth:`crop`)
    boxes: Tensor | None = field(default=None, repr=False)
    maps: Tensor | None = field(default=None, repr=False)
    tokens: bool = False

    @classmethod
    def empty(cls, layer: str, units: list[int], k: int, reduce: str,
              target: int | str | None) -> References:
        values = torch.full((len(units), k), -torch.inf, dtype=torch.float64)
        indices = torch.full((len(units), k), -1, dtype=torch.long)
        return cls(layer, units, k, reduce, target, values, indices.clone(), values.clone(),
                   indices.clone())

    def settings(self) -> dict[str, Any]:
        return {"layer": self.layer, "units": self.units, "k": self.k, "reduce": self.reduce,
                "target": self.target}

    # -- scanning --------------------------------------------------------------------------
    def update(self, start: int, x: Tensor, targets: Tensor, relevance: Tensor,
               activation: Tensor) -> None:
        """Merge one batch (data positions ``start…``): ``relevance``/``activation`` are
        ``(B, U)`` scores of the units."""
        positions = torch.arange(start, start + x.shape[0])
        for values, indices, scores in (
                (self.relevance_values, self.relevance_indices, relevance),
                (self.activation_values, self.activation_indices, activation)):
            merged = torch.cat([values, scores.detach().double().cpu().T], 1)
            where = torch.cat([indices, positions.expand(len(self.units), -1)], 1)
            best = merged.topk(self.k, dim=1)  # ties: the earlier sample (stable, resumable)
            values.copy_(best.values)
            indices.copy_(where.gather(1, best.indices))
        kept = set(self.relevance_indices.flatten().tolist()) | set(
            self.activation_indices.flatten().tolist())
        for i, position in enumerate(positions.tolist()):
            if position in kept:
                self.samples[position] = x[i].detach().cpu().clone()
                self.targets[position] = int(targets[i])
        for position in [p for p in self.samples if p not in kept]:
            del self.samples[position], self.targets[position]
        self.seen = start + x.shape[0]
        self.boxes = self.maps = None

    def reference_samples(self, unit: int, by: str = "relevance") -> Tensor:
        """``(k', *x.shape[1:])``: the reference samples of ``unit`` (most relevant first)."""
        table = self.relevance_indices if by == "relevance" else self.activation_indices
        row = table[self._row(unit)]
        return torch.stack([self.samples[int(i)] for i in row if i >= 0])

    def patches(self, unit: int) -> list[Tensor]:
        """The relevance references of ``unit`` cropped to their conditional relevance."""
        if self.boxes is None:
            raise InvalidInputError("the references are not cropped yet: call crop(model)")
        row = self._row(unit)
        return [_patches.crop(self.samples[int(i)], self.boxes[row, j].tolist(), self.tokens)
                for j, i in enumerate(self.relevance_indices[row]) if i >= 0]

    def _row(self, unit: int) -> int:
        if unit not in self.units:
            raise InvalidInputError(f"unit {unit} has no references (units: {self.units})")
        return self.units.index(unit)

    def crop(self, model: nn.Module, composite: Composite | None = None, *,
             fraction: float = 0.25, unit_dim: int | None = None, heads: int | None = None,
             forward_kwargs: dict[str, Any] | None = None) -> None:
        """Explain each relevance reference conditioned on its unit and keep the box where
        that relevance lies (``fraction`` of its peak, see :func:`_patches.box`)."""
        boxes: list[list[list[int]]] = []
        maps: list[list[Tensor]] = []
        for row, unit in enumerate(self.units):
            chosen = [int(i) for i in self.relevance_indices[row] if i >= 0]
            if not chosen:
                boxes.append([])
                maps.append([])
                continue
            x = torch.stack([self.samples[i] for i in chosen])
            target = torch.tensor([self.targets[i] for i in chosen])
            c = explain(model, x, target, layer=self.layer, units=[unit], composite=composite,
                        unit_dim=unit_dim, heads=heads, forward_kwargs=forward_kwargs)
            positions = [_patches.positions_map(m, self.tokens) for m in c.relevance[:, 0]]
            boxes.append([_patches.box(p, fraction) for p in positions])
            maps.append(positions)
        self.boxes, self.maps = _pad_boxes(boxes, self.k), _pad_maps(maps, self.k)

    # -- storage ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Store everything (safetensors for ``*.safetensors``, else ``torch.save``)."""
        order = sorted(self.samples)
        tensors = {name: getattr(self, name) for name in _TABLES}
        if order:
            tensors["sample_positions"] = torch.tensor(order)
            tensors["samples"] = torch.stack([self.samples[i] for i in order])
            tensors["sample_targets"] = torch.tensor([self.targets[i] for i in order])
        if self.boxes is not None and self.maps is not None:
            tensors["boxes"], tensors["maps"] = self.boxes, self.maps
        _store.write(path, tensors, {**self.settings(), "seen": self.seen,
                                     "tokens": self.tokens})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> References:
        tensors, header = _store.read(path)
        refs = cls(header["layer"], list(header["units"]), header["k"], header["reduce"],
                   header["target"], tensors["relevance_values"], tensors["relevance_indices"],
                   tensors["activation_values"], tensors["activation_indices"],
                   seen=header["seen"], tokens=header["tokens"])
        if "samples" in tensors:
            for i, position in enumerate(tensors["sample_positions"].tolist()):
                refs.samples[position] = tensors["samples"][i]
                refs.targets[position] = int(tensors["sample_targets"][i])
        refs.boxes, refs.maps = tensors.get("boxes"), tensors.get("maps")
        return refs


def _pad_boxes(boxes: list[list[list[int]]], k: int) -> Tensor:
    dims = next((len(b[0]) for b in boxes if b), 0)
    out = _patches.empty_boxes(len(boxes), k, dims // 2)
    for row, found in enumerate(boxes):
        for j, bounds in enumerate(found):
            out[row, j] = torch.tensor(bounds)
    return out


def _pad_maps(maps: list[list[Tensor]], k: int) -> Tensor:
    like = next(m[0] for m in maps if m)
    out = torch.zeros((len(maps), k, *like.shape), dtype=like.dtype)
    for row, found in enumerate(maps):
        for j, positions in enumerate(found):
            out[row, j] = positions.detach().cpu()
    return out


def references(data: Any, model: nn.Module, layer: str, units: Iterable[int] | None = None,
               k: int = 9, *, target: int | str | None = None,
               composite: Composite | None = None, reduce: str = "sum",
               store: str | os.PathLike[str] | None = None, crop: bool = True,
               progress: bool = True, batch_size: int = 32, unit_dim: int | None = None,
               heads: int | None = None, strict: bool = True,
               forward_kwargs: dict[str, Any] | None = None) -> References:
    """RelMax over ``data``: each unit's ``k`` reference samples by relevance (and by
    activation), then cropped to their conditional relevance (``crop``).

    Args:
        data: a ``DataLoader`` or any iterable of batches (a tensor, or ``(x, y, ...)``), a
            tensor of samples, or a pair ``(x, y)`` of tensors; read in order, once.
        units: the unit indices to keep references for (default: all units of the layer).
        target: ``None`` explains each sample's top class; ``"label"`` the batch's labels
            (the second item of each batch); an integer that class for every sample.
        reduce: a unit's score in one sample: ``"sum"`` of its relevance over positions (its
            relevance for the prediction) or ``"max"`` (its most relevant position).
        store: a file: written after every batch; if it exists the scan resumes after the
            samples it holds (same settings required), and a finished scan is returned as is.
        progress: a progress bar (tqdm, when installed).
    """
    if reduce not in ("sum", "max"):
        raise InvalidInputError(f"reduce must be 'sum' or 'max', got {reduce!r}")
    if not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    wanted = None if units is None else [int(u) for u in units]
    refs = _resume(store, layer, wanted, k, reduce, target)
    if refs is not None and refs.boxes is not None:
        return refs
    for start, x, labels in _progress(_batches(data, batch_size), progress, data, batch_size):
        if refs is not None and start + x.shape[0] <= refs.seen:
            continue
        skip = 0 if refs is None else max(0, refs.seen - start)
        x, labels, start = x[skip:], None if labels is None else labels[skip:], start + skip
        explained = _batch_target(target, labels, layer)
        with shared_forward(model, x, explained, composite, [layer], strict=strict,
                            forward_kwargs=forward_kwargs) as forward:
            info, _ = layer_relevance(forward, layer, unit_dim, heads, heatmap=False)
            if refs is None:
                every = list(range(info.units)) if wanted is None else wanted
                concepts(every, info.units, layer)  # named error for an index out of range
                refs = References.empty(layer, every, k, reduce, target)
                refs.tokens = forward.tokens
            relevance = info.relevance.detach()
            score = (per_unit if reduce == "sum" else per_unit_max)(relevance, info.axis, heads)
            activation = per_unit_max(info.layer.activations, info.axis, heads)
            refs.update(start, x, _classes(explained, forward.output.detach()),
                        score[:, refs.units], activation[:, refs.units])
        if store is not None:
            refs.save(store)
    if refs is None:
        raise InvalidInputError("the data held no samples")
    if crop:
        refs.crop(model, composite, unit_dim=unit_dim, heads=heads,
                  forward_kwargs=forward_kwargs)
        if store is not None:
            refs.save(store)
    return refs


def _resume(store: str | os.PathLike[str] | None, layer: str, units: list[int] | None, k: int,
            reduce: str, target: int | str | None) -> References | None:
    if store is None or not os.path.exists(store):
        return None
    refs = References.load(store)
    asked = {"layer": layer, "units": refs.units if units is None else units, "k": k,
             "reduce": reduce, "target": target}
    if asked != refs.settings():
        raise InvalidInputError(
            f"{os.fspath(store)!r} holds references made with other settings "
            f"({refs.settings()}, asked {asked}): use another file or delete it")
    return refs


def _batch_target(target: int | str | None, labels: Tensor | None, layer: str) -> Any:
    if target == "label":
        if labels is None:
            raise InvalidInputError("target='label' needs batches of (x, y): the data gave "
                                    "samples without labels")
        return labels
    if isinstance(target, str):
        raise InvalidInputError(f"target must be None, 'label' or a class index, got {target!r}")
    return target


def _classes(explained: Any, output: Tensor) -> Tensor:
    """The class each sample was explained for (kept with its reference for the crop)."""
    if explained is None:
        if output.dim() != 2:
            raise InvalidInputError(
                f"the model's output has shape {tuple(output.shape)}, not (batch, classes): "
                "pass target= a class index for references")
        return output.argmax(-1)
    return torch.as_tensor(explained).expand(output.shape[0])


def _batches(data: Any, batch_size: int) -> Iterator[tuple[int, Tensor, Tensor | None]]:
    """``(position of the first sample, x, labels or None)`` per batch, in order."""
    if isinstance(data, Tensor):
        data = data.split(batch_size)
    elif isinstance(data, tuple | list) and len(data) == 2 and all(
            isinstance(t, Tensor) for t in data) and len(data[0]) == len(data[1]) \
            and data[0].dim() > 1:
        data = zip(data[0].split(batch_size), data[1].split(batch_size))
    start = 0
    for batch in data:
        x, labels = (batch, None) if isinstance(batch, Tensor) else (batch[0], batch[1])
        if not isinstance(x, Tensor):
            raise InvalidInputError(f"a batch of the data is a {type(batch).__name__}, not a "
                                    "tensor or (tensor, labels)")
        yield start, x, None if labels is None else torch.as_tensor(labels)
        start += x.shape[0]


def _progress(batches: Iterator[Any], show: bool, data: Any, batch_size: int
              ) -> Iterable[Any]:
    if not show:
        return batches
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety
        return batches
    total = len(data) if hasattr(data, "__len__") and not isinstance(data, Tensor | tuple) \
        else None
    if isinstance(data, Tensor | tuple) and len(data) and isinstance(data[0], Tensor):
        first = data if isinstance(data, Tensor) else data[0]
        total = -(-len(first) // batch_size)
    return tqdm(batches, total=total, desc="references", unit="batch")
