"""The errors of a store of explanations; each names the path and what to do next."""

from __future__ import annotations

from ..errors import RelpropError


class StoreError(RelpropError):
    """Base class of the errors about a store folder (``relprop explain --out``)."""


class NotAStoreError(StoreError):
    """The folder has no ``manifest.json``: it was not written by ``relprop explain``."""


class CorruptStoreError(StoreError):
    """A manifest, index or shard is unreadable or fails its checksum."""


class StoreExistsError(StoreError):
    """The output folder already holds a run and ``--resume`` was not given."""


class FingerprintMismatchError(StoreError):
    """``--resume`` on a run whose model, data or settings have changed since it started."""


class StoreWriteError(StoreError, OSError):
    """Writing a shard failed (a full disk, say); what was already stored is intact."""
