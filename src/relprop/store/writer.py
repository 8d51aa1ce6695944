"""Writing a store so that it survives being killed: atomic files, checksums, resumable chunks.

Every file is written to a temporary name in the same folder, flushed, ``fsync``-ed and
renamed over its final name (``os.replace`` is atomic on POSIX), so a reader sees either the
old file or the new one, never half of one. A chunk's shard is written before its sidecar,
which records the shard's sha256 and size: a chunk is done exactly when its sidecar reads and
its shard matches it (:func:`done_chunks`).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from torch import Tensor

from .errors import CorruptStoreError, NotAStoreError, StoreWriteError
from .format import (
    FORMAT,
    INDEX,
    MANIFEST,
    SHARDS,
    sha256_bytes,
    sha256_file,
    shard_name,
    sidecar_name,
    write_index_csv,
)

__all__ = ["atomic_write", "write_manifest", "read_manifest", "write_shard", "read_sidecar",
           "done_chunks", "collect_rows", "write_index"]


def _write_bytes(fh: IO[bytes], data: bytes) -> None:
    """Write ``data`` to ``fh`` (one place, so that tests can simulate a full disk)."""
    fh.write(data)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory handles: the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename).

    Raises :class:`StoreWriteError` naming ``path`` (the disk full, say); the temporary file
    is removed and whatever ``path`` held before is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            _write_bytes(fh, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        reason = "the disk is full" if error.errno == errno.ENOSPC else str(error)
        raise StoreWriteError(
            f"could not write {path}: {reason}. What was stored before is intact: free space "
            "(or fix the folder) and run the same command again with --resume") from error
    _fsync_dir(path.parent)


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` (atomically) with ``format`` set."""
    data = {"format": FORMAT, **manifest}
    atomic_write(root / MANIFEST, json.dumps(data, indent=2, sort_keys=False).encode())


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of the store at ``root``; a named error if there is none or it is bad."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise NotAStoreError(f"{root} is not a relprop store: it has no {MANIFEST} (write one "
                             "with `relprop explain --out FOLDER ...`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptStoreError(f"{path} is unreadable ({error}); rerun the explain command "
                                "with --resume to rewrite it") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest)
        raise CorruptStoreError(f"{path} is not a {FORMAT} manifest (format: {found!r})")
    return manifest


def write_shard(root: Path, chunk: int, rows: list[dict[str, Any]],
                tensors: dict[str, Tensor]) -> None:
    """Store chunk ``chunk``: its tensors (one row per ok sample) then its sidecar of rows.

    ``rows`` are the chunk's index rows, ok and failed, in sample order; each gets ``shard``.
    """
    from safetensors.torch import save

    name = shard_name(chunk)
    data = save({k: v.contiguous().cpu() for k, v in tensors.items()}) if tensors else b""
    if tensors:
        atomic_write(root / name, data)
    rows = [{**row, "shard": name if row.get("status") == "ok" else ""} for row in rows]
    sidecar = {"format": FORMAT, "chunk": chunk, "file": name if tensors else "",
               "sha256": sha256_bytes(data) if tensors else "", "bytes": len(data),
               "rows": rows}
    atomic_write(root / sidecar_name(chunk), json.dumps(sidecar).encode())


def read_sidecar(root: Path, chunk: int, *, verify: bool = True) -> dict[str, Any] | None:
    """Chunk ``chunk``'s sidecar if the chunk is complete and intact, else ``None``.

    Intact: the sidecar parses and its shard has the recorded size and sha256.
    """
    path = root / sidecar_name(chunk)
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(sidecar, dict) or sidecar.get("chunk") != chunk:
        return None
    if sidecar.get("file"):
        shard = root / sidecar["file"]
        try:
            if shard.stat().st_size != sidecar.get("bytes"):
                return None
            if verify and sha256_file(shard) != sidecar.get("sha256"):
                return None
        except OSError:
            return None
    return sidecar


def done_chunks(root: Path, chunks: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The sidecars of the complete, intact chunks among ``chunks``.

    The files of the others (a torn shard, a shard without sidecar, leftover temporary files
    of ``chunks``) are removed, so that redoing them starts clean. Only ``chunks`` are
    touched: other processes may be writing theirs.
    """
    done: dict[int, dict[str, Any]] = {}
    folder = root / SHARDS
    wanted = set(chunks)
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp-*"):
            stem = tmp.name[1:].split(".", 1)[0]
            if stem.isdigit() and int(stem) in wanted:
                tmp.unlink(missing_ok=True)
    for chunk in sorted(wanted):
        sidecar = read_sidecar(root, chunk)
        if sidecar is not None:
            done[chunk] = sidecar
            continue
        (root / sidecar_name(chunk)).unlink(missing_ok=True)
        (root / shard_name(chunk)).unlink(missing_ok=True)
    return done


def collect_rows(root: Path, chunks: Iterable[int], *, verify: bool = True
                 ) -> list[dict[str, Any]]:
    """The index rows of ``chunks`` in sample order; :class:`CorruptStoreError` if one is
    missing or fails its checksum."""
    rows: list[dict[str, Any]] = []
    for chunk in sorted(chunks):
        sidecar = read_sidecar(root, chunk, verify=verify)
        if sidecar is None:
            raise CorruptStoreError(
                f"chunk {chunk} of {root} is missing or fails its checksum "
                f"({sidecar_name(chunk)}); run the explain command again with --resume")
        rows.extend(sidecar["rows"])
    rows.sort(key=lambda row: int(row["id"]))
    return rows


def write_index(root: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Write ``index.csv`` (atomically)."""
    atomic_write(root / INDEX, write_index_csv(rows, columns))
