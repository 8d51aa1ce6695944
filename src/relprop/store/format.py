"""The on-disk format of a store: file names, index columns, and how maps are made small.

A store is a folder::

    manifest.json          settings, model and data fingerprints, columns, "complete"
    index.csv              one row per sample (ok and failed), in sample order
    shards/000007.safetensors   the relevance (and thumbnails) of chunk 7's ok samples
    shards/000007.json          chunk 7's index rows, the shard's sha256 and size

A chunk is a fixed run of sample ids (``chunk k`` = ids ``k·B … k·B+B−1`` for batch size
``B``), so what is in a shard depends on the sample order only, never on the number of
processes or on where a run was interrupted. The sidecar JSON is written after its shard and
is the mark that the chunk is done: a chunk whose sidecar is missing, unreadable, or whose
shard fails the recorded sha256 or size is redone.

Relevance is stored per sample as the channel sum ``Σ_c R_c`` (``(H, W)``) by default, or
every channel (``(C, H, W)``), sum-pooled to at most ``resolution`` pixels a side: blocks of
``f × f`` pixels (zero-padded at the border) are added, so the stored map keeps the relevance
sum exactly up to the storage dtype (float16 by default).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FORMAT", "MANIFEST", "INDEX", "SHARDS", "BASE_COLUMNS", "shard_name", "sidecar_name",
    "sha256_bytes", "sha256_file", "sum_pool", "reduce_relevance", "thumbnails",
    "write_index_csv", "read_index_csv",
]

FORMAT = "relprop-store/1"
MANIFEST = "manifest.json"
INDEX = "index.csv"
SHARDS = "shards"
#: the index columns every store has, with their types (metric columns are floats)
BASE_COLUMNS: dict[str, str] = {
    "id": "int", "path": "str", "label": "int", "prediction": "int", "target": "int",
    "explained": "float", "relevance_sum": "float", "status": "str", "error": "str",
    "shard": "str",
}
THUMBNAIL_SIDE = 64


def shard_name(chunk: int) -> str:
    """The shard file of ``chunk``, relative to the store root."""
    return f"{SHARDS}/{chunk:06d}.safetensors"


def sidecar_name(chunk: int) -> str:
    """The sidecar JSON of ``chunk`` (its rows and checksum), relative to the store root."""
    return f"{SHARDS}/{chunk:06d}.json"


def sha256_bytes(data: bytes) -> str:
    """The hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sum_pool(maps: Tensor, resolution: int | None) -> Tensor:
    """Add ``f × f`` blocks of the last two dims so that neither exceeds ``resolution``.

    ``f = ⌈max(H, W) / resolution⌉``; the border is zero-padded to a multiple of ``f``, so
    ``sum_pool(m).sum() == m.sum()`` (up to float rounding). ``None`` or 0 keeps the size.
    """
    height, width = maps.shape[-2:]
    if not resolution or max(height, width) <= resolution:
        return maps
    f = math.ceil(max(height, width) / resolution)
    pad_h, pad_w = (-height) % f, (-width) % f
    if pad_h or pad_w:
        maps = F.pad(maps, (0, pad_w, 0, pad_h))
    lead = maps.shape[:-2]
    h, w = maps.shape[-2] // f, maps.shape[-1] // f
    return maps.reshape(*lead, h, f, w, f).sum(dim=(-3, -1))


def reduce_relevance(relevance: Tensor, *, full: bool, resolution: int | None,
                     dtype: torch.dtype) -> Tensor:
    """The stored form of a batch of relevance ``(N, ...)``.

    Images ``(N, C, H, W)``: the channel sum ``(N, H, W)`` (or all channels with ``full``),
    sum-pooled to ``resolution``; other shapes (tokens ``(N, T)``, features) as they are.
    Cast to ``dtype``; a float16 overflow (|R| > 65504) keeps float32 instead of storing inf.
    """
    maps = relevance.detach().float()
    if maps.dim() == 4:
        if not full:
            maps = maps.sum(dim=1)
        maps = sum_pool(maps, resolution)
    elif maps.dim() == 3 and full is False and resolution:
        maps = sum_pool(maps, resolution)  # single-channel images given as (N, H, W)
    stored = maps.to(dtype)
    if not bool(torch.isfinite(stored).all()) and bool(torch.isfinite(maps).all()):
        return maps.contiguous()
    return stored.contiguous()


def thumbnails(images: Tensor, side: int = THUMBNAIL_SIDE) -> Tensor | None:
    """Small uint8 ``(N, h, w, 3)`` copies of images ``(N, C, H, W)`` with values in [0, 1].

    Area-averaged to at most ``side`` pixels a side; one channel is repeated to three;
    ``None`` where the batch is not images of 1 or 3 channels.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3) or not images.is_floating_point():
        return None
    height, width = images.shape[-2:]
    scale = min(1.0, side / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    small = F.adaptive_avg_pool2d(images.detach().float(), size) if scale < 1 else images
    small = small.float().clamp(0, 1).mul(255).round().to(torch.uint8)
    if small.shape[1] == 1:
        small = small.expand(-1, 3, -1, -1)
    return small.permute(0, 2, 3, 1).contiguous().cpu()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_index_csv(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    """``rows`` as CSV bytes (UTF-8, header first; ``None`` is an empty cell)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(name)) for name in columns])
    return out.getvalue().encode("utf-8")


def _parse(text: str, kind: str) -> Any:
    if kind == "str":
        return text
    if text == "":
        return None
    return int(text) if kind == "int" else float(text)


def read_index_csv(path: Path, types: dict[str, str]) -> list[dict[str, Any]]:
    """The rows of ``index.csv`` with each column parsed as ``types`` says (default float)."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return [{key: _parse(value, types.get(key, "float")) for key, value in row.items()}
                for row in reader]
