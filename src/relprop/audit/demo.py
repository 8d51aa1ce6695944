"""The steps of ``make demo`` around ``relprop explain`` and ``relprop audit``.

``python -m relprop.audit.demo prepare --out DIR``: the planted data and its trained CNN
(:func:`relprop.audit.planted.make_and_train`): ``DIR/test/<class>/*.png``, ``DIR/tags.json``,
``DIR/planted_cnn.safetensors``, ``DIR/model.json``.

``python -m relprop.audit.demo headline --planted DIR --report REPORT``: how well the audit's
clusters (``REPORT/spray.json``) match the tagged images, in one sentence.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["headline", "main"]


def _is_tagged(path: str, tags: set[str]) -> bool:
    posix = Path(path).as_posix()
    return posix in tags or any(posix.endswith("/" + t) for t in tags)


def headline(planted: str | Path, report: str | Path) -> dict[str, Any]:
    """Match the report's clusters of the tagged class against ``planted/tags.json``.

    Returns the tagged class, its best-matching cluster (largest Jaccard index with the
    tagged images), its size, how many tagged images it holds of how many, purity, recall,
    the cluster's rank among all clusters of all classes (by distinctness) and ``text``.
    """
    tags_file = json.loads((Path(planted) / "tags.json").read_text(encoding="utf-8"))
    tags = set(tags_file["tagged"])
    name, label = str(tags_file["class"]), int(tags_file["label"])
    data = json.loads((Path(report) / "spray.json").read_text(encoding="utf-8"))
    entry = data["classes"].get(str(label))
    if entry is None:
        return {"text": f"SpRAy did not analyse class '{name}' ({data['skipped']})"}
    tagged = [_is_tagged(p, tags) for p in entry["samples"]]
    best: dict[str, Any] = {"jaccard": -1.0}
    for k in range(entry["n_clusters"]):
        inside = [c == k for c in entry["clusters"]]
        both = sum(i and t for i, t in zip(inside, tagged))
        union = sum(i or t for i, t in zip(inside, tagged))
        if union and both / union > best["jaccard"]:
            best = {"jaccard": both / union, "cluster": k, "size": sum(inside), "hits": both}
    every = sorted(((d, int(lab), k) for lab, e in data["classes"].items() if e["n_clusters"] > 1
                    for k, d in enumerate(e["distinctness"])), reverse=True)
    rank = next((i + 1 for i, (_, lab, k) in enumerate(every)
                 if lab == label and k == best.get("cluster")), None)
    n_tagged = sum(tagged)
    out = {"class": name, "label": label, "n_tagged": n_tagged, "n_class": len(tagged),
           "n_clusters": entry["n_clusters"], **best,
           "purity": best["hits"] / best["size"] if best.get("size") else 0.0,
           "recall": best["hits"] / n_tagged if n_tagged else 0.0, "rank": rank,
           "clusters_in_all": len(every)}
    where = (f"ranked {rank} of {len(every)} clusters by distinctness" if rank
             else "the class was not split")
    out["text"] = (f"SpRAy isolated {out['hits']} of {n_tagged} tagged '{name}' images in "
                   f"cluster {out['cluster']} of class '{name}' ({out['size']} images: purity "
                   f"{out['purity']:.0%}, recall {out['recall']:.0%}; {where})")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``prepare`` or ``headline`` (see the module docstring); the exit status."""
    ap = argparse.ArgumentParser(prog="python -m relprop.audit.demo", description=__doc__)
    sub = ap.add_subparsers(dest="step", required=True)
    prep = sub.add_parser("prepare", help="generate the planted data and train the CNN")
    prep.add_argument("--out", type=Path, required=True)
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--n-train", type=int, default=400, help="training images per class")
    prep.add_argument("--n-test", type=int, default=100, help="test images per class")
    head = sub.add_parser("headline", help="how well the report found the tagged images")
    head.add_argument("--planted", type=Path, required=True)
    head.add_argument("--report", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.step == "prepare":
        from .planted import MIN_TAG_FLIP, make_and_train

        meta = make_and_train(args.out, seed=args.seed, n_train=args.n_train,
                              n_test=args.n_test)
        for weak in meta["seeds_tried"][:-1]:
            print(f"seed {weak['seed']}'s CNN turned only {weak['tag_flip']:.0%} of tagged "
                  "images of other classes into the tagged class (below "
                  f"{MIN_TAG_FLIP:.0%}): trained again with the next seed")
        print(f"planted data in {args.out}/test ({meta['n_test_per_class']} images per class; "
              f"half of the '{meta['tagged_class']}' images carry a corner tag; seed "
              f"{meta['seed']})")
        print(f"trained the CNN in {meta['train_seconds']}s: test accuracy "
              f"{meta['accuracy']:.1%}; a pasted tag turns {meta['tag_flip']:.0%} of the other "
              f"classes' images into '{meta['tagged_class']}' (it uses the tag)")
        return 0
    result = headline(args.planted, args.report)
    print(result["text"])
    print(f"open {Path(args.report).resolve() / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
