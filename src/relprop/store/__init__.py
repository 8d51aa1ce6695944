"""A store of explanations on disk: what ``relprop explain`` writes, read lazily.

>>> store = relprop.store.open("run1/")        # doctest: +SKIP
>>> len(store), store.paths[:3]                # doctest: +SKIP
>>> store.relevance("cat/001.png").shape       # doctest: +SKIP
torch.Size([112, 112])

The format (folder layout, sidecars, checksums, how maps are sum-pooled) is described in
:mod:`relprop.store.format`; atomic, resumable writing in :mod:`relprop.store.writer`.
"""

from __future__ import annotations

from pathlib import Path

from .errors import (
    CorruptStoreError,
    FingerprintMismatchError,
    NotAStoreError,
    StoreError,
    StoreExistsError,
    StoreWriteError,
)
from .reader import Store

__all__ = [
    "open", "Store", "StoreError", "NotAStoreError", "CorruptStoreError", "StoreExistsError",
    "FingerprintMismatchError", "StoreWriteError",
]


def open(path: str | Path) -> Store:  # noqa: A001 - relprop.store.open reads like the stdlib's
    """Open the store at ``path`` lazily (manifest and index now, relevance when asked).

    Raises :class:`NotAStoreError` if ``path`` has no manifest and
    :class:`CorruptStoreError` if the manifest or index cannot be read.
    """
    return Store(path)
