"""The loop over this rank's chunks: explain each (one sample at a time where the batch
fails, so that one bad sample becomes one failed row) and store it as one shard."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._engine import select_output
from ..store import writer as store_writer
from .batches import Explainer, Result
from .progress import Progress

__all__ = ["explain_chunks"]


def _row(sample: dict[str, Any]) -> dict[str, Any]:
    failed = bool(sample["error"])
    return {"id": int(sample["id"]), "path": sample["path"], "label": sample["label"],
            "prediction": None, "target": None, "explained": None, "relevance_sum": None,
            "status": "failed" if failed else "ok",
            "error": f"read: {sample['error']}" if failed else ""}


def _classes(explainer: Explainer, x: Tensor, mask: Tensor | None) -> int | None:
    """The number of classes of the model's output (a plain forward pass, once a run);
    ``None`` if no sample of the batch goes through the model (they become failed rows)."""
    for i in [None, *range(x.shape[0])]:  # the batch, else one sample at a time
        part = slice(None) if i is None else slice(i, i + 1)
        kwargs = {"attention_mask": mask[part]} if mask is not None else {}
        try:
            with torch.no_grad():
                output = select_output(explainer.model(x[part], **kwargs))
        except Exception:  # noqa: BLE001 - that sample will fail to explain, with its reason
            continue
        assert isinstance(output, Tensor)
        return int(output.shape[-1]) if output.dim() == 2 else 1
    return None


def _check(explainer: Explainer, x: Tensor, mask: Tensor | None,
           check: Callable[[int], None]) -> bool:
    # the classes of an explained output (no extra forward pass), else a plain forward pass
    classes = explainer.classes if explainer.classes is not None else _classes(
        explainer, x, mask)
    if classes is None:
        return False
    check(classes)
    return True


def _explain(explainer: Explainer, x: Tensor, mask: Tensor | None, labels: list[Any]
             ) -> tuple[Result, list[int], dict[int, str]]:
    """The batch at once; if that raises, each sample alone. Returns the result, the
    positions it covers, and the error of each position that failed."""
    try:
        return explainer.explain(x, mask, labels), list(range(x.shape[0])), {}
    except Exception:  # noqa: BLE001 - find which sample it was, one at a time
        pass
    results, kept, errors = [], [], {}
    for i in range(x.shape[0]):
        try:
            results.append(explainer.explain(x[i:i + 1], None if mask is None
                                             else mask[i:i + 1], labels[i:i + 1]))
            kept.append(i)
        except Exception as error:  # noqa: BLE001 - recorded in the failed row
            errors[i] = f"explain: {type(error).__name__}: {error}"[:500]
    if not results:
        return Result([], {}), [], errors
    relevance = {name: torch.cat([r.relevance[name] for r in results])
                 for name in results[0].relevance}
    return Result([c for r in results for c in r.columns], relevance), kept, errors


class _Writes:
    """Shards written by one background thread while the next chunk is explained; at most
    ``depth`` waiting. A write's error (a full disk) is raised at the next submit or at the
    end, after the writes before it have finished."""

    def __init__(self, depth: int = 2) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relprop-store")
        self.pending: deque[Future[None]] = deque()
        self.depth = depth

    def submit(self, root: Path, chunk: int, rows: list[dict[str, Any]],
               tensors: dict[str, Tensor]) -> None:
        while len(self.pending) >= self.depth:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(store_writer.write_shard, root, chunk, rows,
                                             tensors))

    def finish(self) -> None:
        """Wait for every write; raise the first error."""
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True)


def explain_chunks(explainer: Explainer, loader: Iterable[dict[str, Any]], root: Path, *,
                   check: Callable[[int], None],
                   mixed: Callable[[str, tuple[int, ...]], None],
                   bar: Progress) -> tuple[int, int]:
    """Explain and store every chunk ``loader`` gives; returns (ok, failed) sample counts."""
    writes = _Writes()
    try:
        counts = _chunks(explainer, loader, root, check, mixed, bar, writes)
    except BaseException:
        writes.finish()  # what was explained before the error is still stored
        raise
    writes.finish()
    return counts


def _chunks(explainer: Explainer, loader: Iterable[dict[str, Any]], root: Path,
            check: Callable[[int], None], mixed: Callable[[str, tuple[int, ...]], None],
            bar: Progress, writes: _Writes) -> tuple[int, int]:
    device, batch_size = explainer.device, explainer.config.batch_size
    checked, ok_count, failed_count = False, 0, 0
    for batch in loader:
        meta = batch["samples"]
        for sample in meta:
            if "size" in sample:
                mixed(sample["path"], sample["size"])
        rows = {int(s["id"]): _row(s) for s in meta}
        tensors: dict[str, Tensor] = {}
        if batch["x"] is not None:
            x = batch["x"].to(device, non_blocking=True)
            mask = None if batch["mask"] is None else batch["mask"].to(device)
            ids = batch["ok"]
            labels = [rows[i]["label"] for i in ids]
            result, kept, errors = _explain(explainer, x, mask, labels)
            if not checked:  # before anything is stored: labels against the model's classes
                checked = _check(explainer, x, mask, check)
            for position, message in errors.items():
                rows[ids[position]].update(status="failed", error=message)
            for position, columns in zip(kept, result.columns):
                rows[ids[position]].update(columns)
            if kept:
                small = batch["thumbnail"]
                tensors = explainer.stored(result, None if small is None else small[kept])
        ordered = [rows[i] for i in sorted(rows)]
        writes.submit(root, int(meta[0]["id"]) // batch_size, ordered, tensors)
        ok_count += sum(1 for r in ordered if r["status"] == "ok")
        failed_count += sum(1 for r in ordered if r["status"] != "ok")
        bar.update(len(meta))
    return ok_count, failed_count
