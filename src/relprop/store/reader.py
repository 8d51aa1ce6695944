"""Reading a store lazily: the index at once, the relevance shard by shard when asked."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import CorruptStoreError, StoreError
from .format import BASE_COLUMNS, INDEX, sha256_bytes
from .format import read_index_csv as _read_index_csv
from .writer import collect_rows, read_manifest

__all__ = ["Store"]

_CACHED_SHARDS = 4


class Store:
    """A folder written by ``relprop explain``, read lazily.

    ``store.index`` has one row per sample (ok and failed) in sample order; ``len(store)``,
    ``store.paths`` and the accessors count the ok samples only. A key is a sample's ``id``
    (its position in the data) or its ``path``. Relevance comes back as float32: ``(H, W)``
    for channel-summed images (the default), ``(C, H, W)`` for full storage, ``(T,)`` for
    tokens. Every shard is checked against its sha256 when it is read.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest: dict[str, Any] = read_manifest(self.root)
        self.index: list[dict[str, Any]] = self._read_index()
        self._ok = [row for row in self.index if row["status"] == "ok"]
        self._by_id = {int(row["id"]): row for row in self._ok}
        self._by_path = {str(row["path"]): row for row in self._ok}
        self._offsets: dict[int, int] = {}
        counts: dict[str, int] = {}
        for row in self._ok:
            self._offsets[int(row["id"])] = counts.get(row["shard"], 0)
            counts[row["shard"]] = counts.get(row["shard"], 0) + 1
        self._cache: OrderedDict[str, dict[str, Tensor]] = OrderedDict()

    def _read_index(self) -> list[dict[str, Any]]:
        types = {**BASE_COLUMNS, **self.manifest.get("column_types", {})}
        csv_path = self.root / INDEX
        if self.manifest.get("complete") and csv_path.is_file():
            try:
                return _read_index_csv(csv_path, types)
            except (OSError, ValueError, KeyError) as error:
                raise CorruptStoreError(f"{csv_path} is unreadable ({error})") from error
        # a run still going or interrupted: what its finished chunks hold
        chunks = int(self.manifest.get("chunks", 0))
        from .writer import read_sidecar

        present = [c for c in range(chunks) if read_sidecar(self.root, c, verify=False)]
        return collect_rows(self.root, present, verify=False)

    @property
    def complete(self) -> bool:
        """Whether the run finished (every sample has a row)."""
        return bool(self.manifest.get("complete"))

    @property
    def paths(self) -> list[str]:
        """The paths of the ok samples, in sample order."""
        return [str(row["path"]) for row in self._ok]

    @property
    def methods(self) -> list[str]:
        """The attribution methods stored; the first is what :meth:`relevance` gives."""
        return list(self.manifest.get("settings", {}).get("methods", ["lrp"]))

    def __len__(self) -> int:
        return len(self._ok)

    def __repr__(self) -> str:
        return f"relprop.store.Store({str(self.root)!r}, {len(self)} samples)"

    def row(self, key: int | str) -> dict[str, Any]:
        """The index row of the ok sample ``key`` (id or path)."""
        table: dict[Any, dict[str, Any]] = self._by_path if isinstance(key, str) else self._by_id
        lookup = key if isinstance(key, str) else int(key)
        if lookup not in table:
            failed = [r for r in self.index if r["id"] == lookup or r["path"] == lookup]
            why = f": it failed ({failed[0]['error']})" if failed else ""
            raise KeyError(f"no stored sample {key!r} in {self.root}{why}")
        return table[lookup]

    def _shard(self, name: str) -> dict[str, Tensor]:
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        from safetensors.torch import load

        path = self.root / name
        try:
            data = path.read_bytes()
        except OSError as error:
            raise CorruptStoreError(f"shard {path} is unreadable ({error})") from error
        expected = self._checksum(name)
        if expected and sha256_bytes(data) != expected:
            raise CorruptStoreError(f"shard {path} fails its sha256 checksum: it was changed "
                                    "or truncated; rerun the explain command with --resume")
        tensors = load(data)
        self._cache[name] = tensors
        if len(self._cache) > _CACHED_SHARDS:
            self._cache.popitem(last=False)
        return tensors

    def _checksum(self, name: str) -> str:
        import json

        sidecar = self.root / name.replace(".safetensors", ".json")
        try:
            return str(json.loads(sidecar.read_text(encoding="utf-8")).get("sha256", ""))
        except (OSError, ValueError) as error:
            raise CorruptStoreError(f"{sidecar} is unreadable ({error})") from error

    def _tensor(self, key: int | str, name: str) -> Tensor | None:
        row = self.row(key)
        tensors = self._shard(row["shard"])
        if name not in tensors:
            return None
        return tensors[name][self._offsets[int(row["id"])]]

    def relevance(self, key: int | str, method: str | None = None) -> Tensor:
        """The stored relevance of sample ``key`` (float32), of ``method`` (default: the
        first method of the run)."""
        name = self._key_name(method)
        value = self._tensor(key, name)
        if value is None:
            raise StoreError(f"{self.root} has no relevance {name!r}")
        return value.float()

    def _key_name(self, method: str | None) -> str:
        if method is None or method == self.methods[0]:
            return "relevance"
        if method not in self.methods:
            raise StoreError(f"method {method!r} is not in {self.root} (it has {self.methods})")
        return f"relevance.{method}"

    def relevances(self, keys: Sequence[int | str], method: str | None = None) -> Tensor:
        """The relevance of ``keys`` stacked: ``(N, ...)``."""
        if len(keys) == 0:
            raise StoreError("relevances() needs at least one key")
        return torch.stack([self.relevance(key, method) for key in keys])

    def thumbnail(self, key: int | str) -> Tensor | None:
        """A small uint8 ``(h, w, 3)`` copy of the preprocessed input (images), else ``None``."""
        return self._tensor(key, "thumbnail")

    def iter_batches(self, batch_size: int, method: str | None = None
                     ) -> Iterator[tuple[list[dict[str, Any]], Tensor]]:
        """The ok samples in sample order as ``(rows, relevance (n, ...))`` batches."""
        if batch_size < 1:
            raise StoreError(f"batch_size must be at least 1, got {batch_size}")
        for start in range(0, len(self._ok), batch_size):
            rows = self._ok[start:start + batch_size]
            yield rows, torch.stack([self.relevance(int(r["id"]), method) for r in rows])
