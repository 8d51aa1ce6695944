"""The run: load, check, explain chunk by chunk, store; resumable and shardable.

Chunk ``k`` holds samples ``k·B … k·B+B−1`` (``B`` = batch size) whatever the number of
processes, so each sample is explained in the same batch by a fresh, a resumed or a
distributed run. Rank ``r`` of ``W`` takes chunks ``r, r+W, r+2W, ...``; chunks already stored
intact are skipped; rank 0 writes the index when all ranks are done.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..store import writer as store_writer
from ..store.errors import FingerprintMismatchError, StoreExistsError
from ..store.format import BASE_COLUMNS, MANIFEST
from .batches import Collate, Explainer, chunk_ids
from .config import RunConfig, resolve_composite
from .data import Source, open_source
from .dist import Ranks, barrier, my_chunks, ranks, shutdown
from .errors import DataError, LabelRangeError, MixedSizesError
from .model import LoadedModel, load_model

__all__ = ["explain_dataset", "RunSummary"]


@dataclass
class RunSummary:
    """What a run did (on this rank): samples explained now, failed, skipped as stored."""

    out: Path
    explained: int
    failed: int
    skipped: int
    seconds: float
    rank: int = 0
    world: int = 1

    @property
    def samples_per_second(self) -> float:
        """Samples explained (ok or failed) per second of the loop."""
        return (self.explained + self.failed) / self.seconds if self.seconds > 0 else 0.0


def _device(config: RunConfig, where: Ranks) -> torch.device:
    if config.device == "cuda" and where.world > 1:
        return torch.device("cuda", where.local_rank)  # one rank per GPU
    if config.device:
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", where.local_rank)
    return torch.device("cpu")


def _version() -> str:
    import importlib

    return str(getattr(importlib.import_module("relprop"), "__version__", "?"))


def _data_fingerprint(source: Source) -> str:
    digest = hashlib.sha256(source.fingerprint().encode())
    digest.update(json.dumps([source.paths, source.labels]).encode())
    return digest.hexdigest()


def _columns(config: RunConfig) -> tuple[list[str], dict[str, str]]:
    extra = [f"{m}.{c}" for m in config.methods[1:] for c in ("explained", "relevance_sum")]
    names = list(BASE_COLUMNS) + list(config.metrics) + extra
    types = {name: BASE_COLUMNS.get(name, "float") for name in names}
    return names, types


def _manifest(config: RunConfig, model: LoadedModel, source: Source, chunks: int,
              where: Ranks) -> dict[str, Any]:
    columns, types = _columns(config)
    manifest = {
        "complete": False, "relprop": _version(), "created": time.time(),
        "argv": list(sys.argv),
        "model": {"spec": str(config.model), "weights": str(config.weights or ""),
                  "kind": model.kind, "fingerprint": model.fingerprint},
        "data": {"path": str(Path(config.data).resolve()), "kind": source.kind,
                 "samples": len(source), "fingerprint": _data_fingerprint(source),
                 "classes": getattr(source, "classes", None), "tokens": source.tokens},
        "settings": config.settings(), "chunks": chunks, "world_size": where.world,
        "columns": columns, "column_types": types, "methods": list(config.methods),
        "metrics": list(config.metrics),
    }
    result: dict[str, Any] = json.loads(json.dumps(manifest))  # as it reads back: lists
    return result


def _compare(old: dict[str, Any], new: dict[str, Any], root: Path) -> None:
    """A named error unless ``old`` (on disk) and ``new`` describe the same run."""
    differences = []
    if old.get("model", {}).get("fingerprint") != new["model"]["fingerprint"]:
        differences.append("the model's weights or class (model fingerprint)")
    if old.get("data", {}).get("fingerprint") != new["data"]["fingerprint"]:
        differences.append(f"the data at {new['data']['path']} (files added, removed or "
                           "modified, or labels changed: data fingerprint)")
    for key, value in new["settings"].items():
        if old.get("settings", {}).get(key) != value:
            differences.append(f"setting {key} ({old.get('settings', {}).get(key)!r} → "
                               f"{value!r})")
    if differences:
        raise FingerprintMismatchError(
            f"--resume {root}: the run stored there differs from this one in "
            + "; ".join(differences) + ". Resume with the same model, data and options, or "
            "write to a new --out folder")


def _prepare(root: Path, manifest: dict[str, Any], config: RunConfig, where: Ranks) -> None:
    """Rank 0 starts the store (or checks the one to resume); the others check it after."""
    if where.main:
        if (root / MANIFEST).is_file():
            if not config.resume:
                raise StoreExistsError(f"{root} already holds a run: pass --resume to finish "
                                       "or check it, or choose another --out folder")
            _compare(store_writer.read_manifest(root), manifest, root)
        elif root.is_dir() and any(not p.name.startswith(f".{MANIFEST}.tmp-")
                                   for p in root.iterdir()):  # a torn first manifest is ok
            raise StoreExistsError(f"{root} is not empty and holds no relprop run; choose an "
                                   "empty or new --out folder")
        store_writer.write_manifest(root, manifest)
    barrier(where)
    if not where.main:
        _compare(store_writer.read_manifest(root), manifest, root)


def _reference_shape(source: Source) -> tuple[tuple[int, ...], str]:
    """The input shape of the first readable sample (what every sample must have)."""
    if len(source) == 0:
        raise DataError(f"--data {source_root(source)}: it holds no samples")
    for i in range(len(source)):
        sample = source[i]
        if sample["x"] is not None:
            return tuple(sample["x"].shape), sample["path"]
    raise DataError(f"--data {source_root(source)}: none of its {len(source)} samples can be "
                    f"read (sample 0: {source[0]['error']})")


def source_root(source: Source) -> str:
    """The data path, for messages."""
    return str(getattr(source, "root", getattr(source, "file", "?")))


def _check_target(source: Source, config: RunConfig) -> None:
    if config.target == "true" and any(label is None for label in source.labels):
        raise DataError(f"--target true needs labels, and {source_root(source)} has none "
                        "(give class sub-folders or --labels), or use --target predicted")


def _check_labels(source: Source, classes: int, config: RunConfig) -> None:
    for path, label in zip(source.paths, source.labels):
        if label is not None and not 0 <= label < classes:
            raise LabelRangeError(
                f"sample {source_root(source)}/{path} has label {label}, but the model has "
                f"{classes} classes (0..{classes - 1}): check the class folders or --labels")
    if isinstance(config.target, int) and config.target >= classes:
        raise LabelRangeError(f"--target {config.target}: the model has {classes} classes")


def explain_dataset(config: RunConfig) -> RunSummary:
    """Explain every sample of ``config.data`` with ``config.model`` into ``config.out``."""
    config.check()
    where = ranks(config.device)
    try:
        return _run(config, where)
    finally:
        shutdown(where)


def _run(config: RunConfig, where: Ranks) -> RunSummary:
    device = _device(config, where)
    model = load_model(config.model, config.weights, trust_pickle=config.trust_pickle,
                       device=device)
    source = open_source(config.data, config.preprocess, tokenizer=model.tokenizer,
                         max_length=config.max_length, labels=config.labels)
    _check_target(source, config)
    root = Path(config.out)
    chunks = -(-len(source) // config.batch_size)
    _prepare(root, _manifest(config, model, source, chunks, where), config, where)
    mine = my_chunks(chunks, where)
    done = store_writer.done_chunks(root, mine)
    todo = [c for c in mine if c not in done]
    shape, first = _reference_shape(source)
    composite = resolve_composite(config.composite, source.tokens)
    explainer = Explainer(model.module, config, composite, device)
    from .progress import Progress
    from .worker import explain_chunks

    skipped = sum(len(s["rows"]) for s in done.values())
    total = sum(len(chunk_ids(c, config.batch_size, len(source))) for c in mine)
    start = time.perf_counter()
    with Progress(total, skipped, disable=config.quiet or not where.main) as bar:
        counts = explain_chunks(
            explainer, _loader(source, todo, config, shape, device), root,
            check=lambda classes: _check_labels(source, classes, config),
            mixed=lambda path, size: _mixed(source, path, size, first, shape), bar=bar)
    seconds = time.perf_counter() - start
    barrier(where)
    if where.main:
        _finish(root, config, chunks, seconds)
    barrier(where)
    return RunSummary(root, counts[0], counts[1], skipped, seconds, where.rank, where.world)


def _mixed(source: Source, path: str, size: tuple[int, ...], first: str,
           shape: tuple[int, ...]) -> None:
    raise MixedSizesError(
        f"{source_root(source)}/{path} gives an input of shape {size}, but "
        f"{source_root(source)}/{first} gives {shape}: pass --resize and/or --crop (e.g. "
        "--resize 256 --crop 224) so that every sample has the same size")


def _loader(source: Source, todo: list[int], config: RunConfig, shape: tuple[int, ...],
            device: torch.device) -> DataLoader[Any]:
    batches = [chunk_ids(c, config.batch_size, len(source)) for c in todo]
    return DataLoader(source, batch_sampler=batches, num_workers=config.workers,
                      collate_fn=Collate(shape, config.thumbnails),
                      pin_memory=device.type == "cuda", persistent_workers=False)


def _finish(root: Path, config: RunConfig, chunks: int, seconds: float) -> None:
    manifest = store_writer.read_manifest(root)
    # sizes checked, not every shard re-hashed: each rank wrote or verified its own just now
    rows = store_writer.collect_rows(root, range(chunks), verify=False)
    store_writer.write_index(root, rows, manifest["columns"])
    failed = sum(1 for row in rows if row["status"] != "ok")
    manifest.update(complete=True, finished=time.time(), ok=len(rows) - failed, failed=failed,
                    loop_seconds=seconds)
    manifest.pop("format", None)
    store_writer.write_manifest(root, manifest)
