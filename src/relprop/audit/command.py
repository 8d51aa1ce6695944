"""``relprop audit RUN_DIR --out REPORT_DIR``: SpRAy per class of a stored run, and its report.

Reads the store that ``relprop explain`` wrote (:mod:`relprop.store`), groups its ok samples
by class (the explained class by default), runs :func:`relprop.audit.spray` and writes the
report folder: ``index.html``, ``img/`` and ``spray.json`` (every sample's class and cluster,
and per class the eigenvalues, cluster sizes, scores and ranking: readable without relprop).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from .report import write_report
from .spray import SprayResult, spray

__all__ = ["StoreSamples", "add_arguments", "load_store", "run", "spray_json"]


class StoreSamples:
    """The report's :class:`~relprop.audit.report.Samples` over a store: row ``i`` is the
    ``i``-th of ``ids`` (store sample ids)."""

    def __init__(self, store: Any, ids: list[int]) -> None:
        self.store = store
        self.ids = ids

    def name(self, row: int) -> str:
        return str(self.store.row(self.ids[row])["path"])

    def heatmap(self, row: int) -> Tensor:
        relevance: Tensor = self.store.relevance(self.ids[row])
        return relevance.sum(dim=0) if relevance.dim() == 3 else relevance

    def image(self, row: int) -> Tensor | None:
        thumb: Tensor | None = self.store.thumbnail(self.ids[row])
        return thumb


def load_store(run_dir: str | Path, by: str = "target") -> tuple[Any, list[dict[str, Any]],
                                                                  Tensor, np.ndarray]:
    """The store, its ok rows, their maps ``(N, H, W)`` (channels summed) and their classes
    (column ``by`` of the index: ``target``, ``label`` or ``prediction``)."""
    from .. import store as store_module

    store = store_module.open(run_dir)
    rows = [r for r in store.index if r["status"] == "ok"]
    if not rows:
        raise ValueError(f"{run_dir}: the run holds no explained sample (all failed or empty)")
    if by not in rows[0]:
        raise ValueError(f"{run_dir}: the index has no column {by!r} to group by")
    maps = store.relevances([int(r["id"]) for r in rows])
    if maps.dim() == 4:
        maps = maps.sum(dim=1)
    if maps.dim() != 3:
        raise ValueError(f"{run_dir}: SpRAy needs image maps (H, W) or (C, H, W), the store "
                         f"holds {tuple(maps.shape[1:])} per sample")
    classes = np.array([int(r[by]) if r[by] is not None else -1 for r in rows])
    return store, rows, maps, classes


def spray_json(result: SprayResult, names: list[str]) -> dict[str, Any]:
    """``result`` as plain JSON: per class its samples (names), their clusters and the
    scores."""
    out: dict[str, Any] = {"settings": result.settings, "skipped": result.skipped,
                           "classes": {}}
    for label, c in result.classes.items():
        out["classes"][str(label)] = {
            "samples": [names[int(r)] for r in c.indices],
            "clusters": c.clusters.tolist(),
            "n_clusters": c.n_clusters, "eigengap": c.gap,
            "eigenvalues": c.eigenvalues.tolist(), "sizes": c.sizes.tolist(),
            "distinctness": c.distinctness.tolist(), "conductance": c.conductance.tolist(),
            "ranking": c.ranking,
            "nearest": [[names[int(r)] for r in near] for near in c.nearest]}
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``relprop audit``."""
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a `relprop explain` output")
    p.add_argument("--out", type=Path, required=True, help="report folder (created)")
    p.add_argument("--by", choices=("target", "label", "prediction"), default="target",
                   help="group samples by the explained class (default), label or prediction")
    p.add_argument("--size", type=int, default=16,
                   help="heatmaps are area-downsampled to SIZE x SIZE before clustering")
    p.add_argument("--neighbors", type=int, default=None,
                   help="k of the k-NN affinity graph (default max(10, sqrt(n)))")
    p.add_argument("--max-clusters", type=int, default=8,
                   help="most clusters the eigengap may choose per class (default 8)")
    p.add_argument("--gap-ratio", type=float, default=0.5,
                   help="clusters: the first eigengap at least this share of the largest "
                        "(default 0.5; 1 = the largest gap)")
    p.add_argument("--weights", choices=("self-tuning", "connectivity"), default="self-tuning",
                   help="edge weights of the k-NN graph (default self-tuning Gaussian)")
    p.add_argument("--embedding", choices=("tsne", "spectral"), default="tsne",
                   help="the 2-D embedding of the scatter plot (default tsne)")
    p.add_argument("--min-samples", type=int, default=10,
                   help="classes with fewer explained samples are skipped (default 10)")
    p.add_argument("--per-class", type=int, default=24, help="gallery images per class")
    p.add_argument("--seed", type=int, default=0, help="seed of k-means and t-SNE")


def _class_names(store: Any) -> dict[int, str]:
    names = store.manifest.get("classes") or store.manifest.get("data", {}).get("classes")
    if isinstance(names, list):
        return {i: str(n) for i, n in enumerate(names)}
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    return {}


def _class_metrics(rows: list[dict[str, Any]], classes: np.ndarray, label: int,
                   metrics: list[str]) -> dict[str, str]:
    """Accuracy, mean relevance sum and the mean of each stored metric column, per class."""
    mine = [r for r, c in zip(rows, classes) if c == label]
    right = [r["label"] == r["prediction"] for r in mine
             if r.get("label") is not None and int(r["label"]) >= 0]
    sums = [float(r["relevance_sum"]) for r in mine if r.get("relevance_sum") is not None]
    out = {"mean relevance sum": f"{np.mean(sums):.3g}"} if sums else {}
    if right:
        out["accuracy (label = prediction)"] = f"{np.mean(right):.1%}"
    for name in metrics:
        values = [float(r[name]) for r in mine if isinstance(r.get(name), (int, float))]
        if values:
            out[f"mean {name}"] = f"{np.nanmean(values):.3g}"
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``relprop audit``: SpRAy per class, the report, ``spray.json``; exit status 0."""
    from ..store import StoreError

    start = time.perf_counter()
    try:
        store, rows, maps, classes = load_store(args.run_dir, args.by)
    except StoreError as error:  # not a store, or a corrupt one: named, with the path
        print(f"relprop audit: error: {error}", file=sys.stderr)
        return 1
    result = spray(maps, classes, min_samples=args.min_samples, size=args.size,
                   n_neighbors=args.neighbors, weights=args.weights,
                   max_clusters=args.max_clusters, gap_ratio=args.gap_ratio,
                   embedding=args.embedding, seed=args.seed)
    ids = [int(r["id"]) for r in rows]
    names = [str(r["path"]) for r in rows]
    class_names = _class_names(store)
    failed = sum(1 for r in store.index if r["status"] != "ok")
    metrics = [str(m) for m in store.manifest.get("metrics", [])]
    summary = {"run": str(Path(args.run_dir).resolve()), "samples explained": len(rows),
               "samples failed": failed, "grouped by": args.by,
               "model": store.manifest.get("model", {}).get("spec", store.manifest.get(
                   "model", "")), "data": store.manifest.get("data", {}).get("path", "")}
    report = write_report(
        args.out, result, StoreSamples(store, ids), class_names=class_names, summary=summary,
        class_metrics={lab: _class_metrics(rows, classes, lab, metrics)
                       for lab in result.classes},
        per_class=args.per_class)
    (Path(args.out) / "spray.json").write_text(json.dumps(spray_json(result, names), indent=1))
    print(f"SpRAy over {len(rows)} samples in {len(result.classes)} classes "
          f"({time.perf_counter() - start:.1f}s); most distinct clusters:")
    for label, k, score in result.candidates()[:5]:
        c = result.classes[label]
        print(f"  class {class_names.get(label, label)}: cluster {k}, {int(c.sizes[k])} of "
              f"{len(c.indices)} samples, distinctness {score:.2f}")
    for label, why in result.skipped.items():
        print(f"  class {class_names.get(label, label)} skipped: {why}")
    print(f"wrote {report}")
    return 0

