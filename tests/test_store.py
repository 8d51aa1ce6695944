"""relprop.store: the format, atomic writes, checksums, and the lazy reader."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
import torch

import relprop.store as store_mod
from relprop.store import format as fmt
from relprop.store import writer


def _rows(ids: list[int], failed: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    return [{"id": i, "path": f"c{i % 2}/{i:03d}.png", "label": i % 2, "prediction": 1,
             "target": 1, "explained": 0.5 + i, "relevance_sum": 0.25 + i,
             "status": "failed" if i in failed else "ok",
             "error": "unreadable" if i in failed else ""} for i in ids]


def _write_store(root: Path, maps: torch.Tensor, failed: tuple[int, ...] = ()) -> None:
    columns = list(fmt.BASE_COLUMNS)
    writer.write_manifest(root, {"complete": False, "chunks": 2, "columns": columns,
                                 "settings": {"methods": ["lrp"]}})
    for chunk, ids in enumerate(([0, 1, 2], [3, 4, 5])):
        ok = [i for i in ids if i not in failed]
        writer.write_shard(root, chunk, _rows(ids, failed),
                           {"relevance": maps[ok].half(),
                            "thumbnail": torch.full((len(ok), 4, 4, 3), chunk, dtype=torch.uint8)})
    rows = writer.collect_rows(root, range(2))
    writer.write_index(root, rows, columns)
    writer.write_manifest(root, {"complete": True, "chunks": 2, "columns": columns,
                                 "settings": {"methods": ["lrp"]}})


def test_round_trip_by_id_and_path(tmp_path: Path) -> None:
    maps = torch.randn(6, 5, 7)
    _write_store(tmp_path, maps, failed=(4,))
    store = store_mod.open(tmp_path)
    assert len(store) == 5 and len(store.index) == 6
    assert [r["id"] for r in store.index] == list(range(6))
    assert store.index[4]["status"] == "failed" and store.index[4]["error"] == "unreadable"
    assert store.index[4]["shard"] == "" and store.index[0]["label"] == 0
    assert store.paths == [f"c{i % 2}/{i:03d}.png" for i in (0, 1, 2, 3, 5)]
    for i in (0, 1, 2, 3, 5):
        expected = maps[i].half().float()
        assert torch.equal(store.relevance(i), expected)
        assert torch.equal(store.relevance(f"c{i % 2}/{i:03d}.png"), expected)
    assert store.relevance(5).dtype == torch.float32
    assert store.thumbnail(5).shape == (4, 4, 3) and int(store.thumbnail(5)[0, 0, 0]) == 1
    assert store.relevances([0, 5]).shape == (2, 5, 7)
    with pytest.raises(KeyError, match="failed"):
        store.relevance(4)
    batches = list(store.iter_batches(2))
    assert [len(rows) for rows, _ in batches] == [2, 2, 1]
    assert torch.equal(torch.cat([b for _, b in batches]), maps[[0, 1, 2, 3, 5]].half().float())
    assert store.index[1]["explained"] == 1.5  # floats survive the CSV exactly


def test_not_a_store_and_corrupt_manifest(tmp_path: Path) -> None:
    with pytest.raises(store_mod.NotAStoreError, match="no manifest.json"):
        store_mod.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(store_mod.CorruptStoreError, match="manifest.json"):
        store_mod.open(tmp_path)


def test_corrupt_shard_is_detected_and_redone(tmp_path: Path) -> None:
    _write_store(tmp_path, torch.randn(6, 3, 3))
    shard = tmp_path / fmt.shard_name(1)
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(store_mod.CorruptStoreError, match="sha256"):
        store_mod.open(tmp_path).relevance(3)
    assert set(writer.done_chunks(tmp_path, range(2))) == {0}
    assert not shard.exists()  # removed so that it is redone
    _write_store(tmp_path, torch.randn(6, 3, 3))
    shard.write_bytes(shard.read_bytes()[:-10])  # truncated
    (tmp_path / "shards" / ".000000.safetensors.tmp-1").write_bytes(b"torn")
    assert set(writer.done_chunks(tmp_path, range(2))) == {0}
    assert not (tmp_path / "shards" / ".000000.safetensors.tmp-1").exists()


def test_full_disk_is_named_and_keeps_old_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.bin"
    writer.atomic_write(target, b"old")

    def full(fh: Any, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "_write_bytes", full)
    with pytest.raises(store_mod.StoreWriteError, match="a.bin: the disk is full"):
        writer.atomic_write(target, b"new")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.bin"]


def test_sum_pool_keeps_the_sum_and_bounds_the_size() -> None:
    maps = torch.randn(2, 3, 225, 223, dtype=torch.float64)
    pooled = fmt.sum_pool(maps, 112)
    assert pooled.shape == (2, 3, 75, 75)  # f = 3
    torch.testing.assert_close(pooled.sum(dim=(-2, -1)), maps.sum(dim=(-2, -1)))
    # an independent oracle: block (i, j) is the sum of its f x f pixels
    padded = torch.zeros(2, 3, 225, 225, dtype=torch.float64)
    padded[..., :223] = maps
    assert torch.allclose(pooled[..., 10, 20], padded[..., 30:33, 60:63].sum(dim=(-2, -1)))
    assert fmt.sum_pool(maps, None) is maps


def test_default_storage_is_at_most_30kb_per_224_map() -> None:
    relevance = torch.randn(1, 3, 224, 224)
    stored = fmt.reduce_relevance(relevance, full=False, resolution=112, dtype=torch.float16)
    assert stored.shape == (1, 112, 112) and stored.dtype == torch.float16
    assert stored.numel() * stored.element_size() <= 30_000
    huge = fmt.reduce_relevance(relevance * 1e6, full=False, resolution=112,
                                dtype=torch.float16)
    assert huge.dtype == torch.float32 and bool(torch.isfinite(huge).all())  # no inf stored


def test_thumbnails() -> None:
    images = torch.rand(2, 1, 200, 100)
    thumbs = fmt.thumbnails(images)
    assert thumbs is not None and thumbs.shape == (2, 64, 32, 3) and thumbs.dtype == torch.uint8
    assert fmt.thumbnails(torch.rand(2, 5, 8, 8)) is None
