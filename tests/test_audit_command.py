"""``relprop audit`` end to end on the planted Clever Hans: train, explain, audit, headline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relprop.cli import main


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from relprop.audit.planted import make_and_train

    root = tmp_path_factory.mktemp("audit")
    make_and_train(root / "planted", seed=0, n_train=150, n_test=40)
    assert main(["explain", "--model", "relprop.audit.planted:build_model", "--weights",
                 str(root / "planted" / "planted_cnn.safetensors"), "--data",
                 str(root / "planted" / "test"), "--target", "true", "--out",
                 str(root / "run"), "--batch-size", "32", "--metrics", "positive_share",
                 "--quiet"]) == 0
    assert main(["audit", str(root / "run"), "--out", str(root / "report"),
                 "--embedding", "spectral", "--per-class", "8"]) == 0
    return {"planted": root / "planted", "run": root / "run", "report": root / "report"}


def test_the_planted_model_uses_the_tag(audited: dict[str, Path]) -> None:
    meta = json.loads((audited["planted"] / "model.json").read_text())
    assert meta["tag_flip"] > 0.5 and meta["accuracy"] > 0.4  # 4 classes: chance is 0.25
    tags = json.loads((audited["planted"] / "tags.json").read_text())
    assert tags["class"] == "ring" and len(tags["tagged"]) == 20


def test_audit_isolates_the_tagged_images(audited: dict[str, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from relprop.audit.demo import headline
    from relprop.audit.demo import main as demo_main

    found = headline(audited["planted"], audited["report"])
    assert found["purity"] >= 0.9 and found["recall"] >= 0.9, found
    assert found["rank"] == 1  # the most distinct cluster of all classes
    assert demo_main(["headline", "--planted", str(audited["planted"]), "--report",
                      str(audited["report"])]) == 0
    assert "SpRAy isolated" in capsys.readouterr().out


def test_report_folder_is_complete(audited: dict[str, Path]) -> None:
    report = audited["report"]
    data = json.loads((report / "spray.json").read_text())
    assert set(data["classes"]) == {"0", "1", "2", "3"}
    ring = data["classes"]["2"]
    assert len(ring["samples"]) == len(ring["clusters"]) == 40
    assert sum(ring["sizes"]) == 40 and ring["n_clusters"] >= 2
    html = (report / "index.html").read_text()
    assert "class ring (2)" in html and "Candidates for a Clever Hans strategy" in html
    assert "mean positive_share" in html and "accuracy (label = prediction)" in html
    # the ring class splits, so its section comes first
    assert html.index('id="class-2"') < html.index('id="class-0"')


def test_audit_of_a_folder_that_is_not_a_store(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(tmp_path), "--out", str(tmp_path / "report")]) == 1
    err = capsys.readouterr().err
    assert "relprop audit: error" in err and str(tmp_path) in err
