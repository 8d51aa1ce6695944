"""relprop.run: a dataset explained into a store, checked against relprop.explain itself."""

from __future__ import annotations

import csv
import errno
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import relprop
import relprop.store
from relprop.run import (
    DataError,
    LabelRangeError,
    MixedSizesError,
    ModelLoadError,
    Preprocess,
    RunConfig,
    UnsafePickleError,
    explain_dataset,
)
from relprop.store import FingerprintMismatchError, StoreExistsError, StoreWriteError
from relprop.store import writer as store_writer
from tests.helpers.run_models import tiny_cnn

MODEL = "tests.helpers.run_models:tiny_cnn"


def make_images(root: Path, classes: int = 3, per_class: int = 8, size: int = 16,
                seed: int = 0) -> Path:
    """``classes`` folders of random RGB PNGs."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return root


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_images(tmp_path / "images")


def run(data: Path, out: Path, **options: Any) -> relprop.store.Store:
    options.setdefault("model", MODEL)
    options.setdefault("workers", 0)
    options.setdefault("batch_size", 4)
    options.setdefault("quiet", True)
    explain_dataset(RunConfig(data=data, out=out, **options))
    return relprop.store.open(out)


def load_image(path: Path) -> torch.Tensor:
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)


def test_image_folder_matches_relprop_explain(images: Path, tmp_path: Path) -> None:
    store = run(images, tmp_path / "out", target="true", resolution=8)
    assert len(store) == 24 and store.complete
    expected_paths = [f"class{c}/{i:02d}.png" for c in range(3) for i in range(8)]
    assert store.paths == expected_paths
    assert [row["label"] for row in store.index] == [c for c in range(3) for _ in range(8)]
    assert store.manifest["data"]["classes"] == ["class0", "class1", "class2"]
    model = tiny_cnn()
    for chunk in range(6):  # the same batches, explained directly
        ids = list(range(4 * chunk, 4 * chunk + 4))
        x = torch.stack([load_image(images / expected_paths[i]) for i in ids])
        labels = torch.tensor([store.index[i]["label"] for i in ids])
        expl = relprop.explain(model, x, target=labels)
        pooled = expl.relevance.sum(1).reshape(4, 8, 2, 8, 2).sum(dim=(2, 4))  # 16 → 8
        stored = store.relevances(ids)
        assert stored.shape == (4, 8, 8)
        torch.testing.assert_close(stored, pooled, rtol=2e-3, atol=2e-3 * float(
            pooled.abs().max()))  # float16 storage
        for j, i in enumerate(ids):
            row = store.index[i]
            assert row["target"] == row["label"]
            assert row["prediction"] == int(expl.output[j].argmax())
            assert row["explained"] == pytest.approx(float(expl.output[j, labels[j]]), rel=1e-5)
            assert row["relevance_sum"] == pytest.approx(float(expl.relevance[j].sum()),
                                                         rel=1e-4, abs=1e-6)
    with (tmp_path / "out" / "index.csv").open() as fh:  # readable without relprop
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == expected_paths and rows[0]["status"] == "ok"
    thumb = store.thumbnail(0)
    assert thumb is not None and thumb.shape == (16, 16, 3)
    assert torch.equal(thumb, (load_image(images / expected_paths[0]) * 255).round()
                       .to(torch.uint8).permute(1, 2, 0))


def test_uniform_epsilon_by_name(images: Path, tmp_path: Path) -> None:
    store = run(images, tmp_path / "out", composite="epsilon")
    assert store.manifest["settings"]["composite"] == "epsilon"
    x = torch.stack([load_image(images / p) for p in store.paths[:4]])
    composite = relprop.composites.uniform(relprop.rules.Epsilon())
    expl = relprop.explain(tiny_cnn(), x, composite=composite)
    torch.testing.assert_close(store.relevances([0, 1, 2, 3]),
                               expl.relevance.sum(1).half().float())


def test_methods_metrics_and_workers(images: Path, tmp_path: Path) -> None:
    store = run(images, tmp_path / "out", methods=("lrp", "gradient"), workers=2,
                metrics=("positive_share", "conservation_error"))
    row = store.index[5]
    assert {"positive_share", "conservation_error", "gradient.explained"} <= set(row)
    assert 0 <= row["positive_share"] <= 1
    model = tiny_cnn()
    x = torch.stack([load_image(images / p) for p in store.paths[4:8]])
    grad = relprop.methods.gradient(model, x, target=None)
    torch.testing.assert_close(store.relevance(5, "gradient"),
                               grad.relevance[1].sum(0).half().float())
    assert row["gradient.explained"] == pytest.approx(row["explained"], rel=1e-6)


def test_resume_redoes_a_corrupt_shard_and_changes_nothing_else(images: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run(images, out)
    before = first.relevances(list(range(24)))
    shard = out / "shards" / "000002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7])  # truncated
    kept = (out / "shards" / "000001.safetensors").stat().st_mtime_ns
    with pytest.raises(StoreExistsError, match="--resume"):
        run(images, out)
    again = run(images, out, resume=True)
    assert torch.equal(again.relevances(list(range(24))), before)
    assert (out / "shards" / "000001.safetensors").stat().st_mtime_ns == kept  # not redone


def test_resume_with_changed_data_is_refused(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(images, out)
    make_images(images, classes=1, per_class=9, seed=1)  # class0 gets an image more
    with pytest.raises(FingerprintMismatchError, match="data fingerprint"):
        run(images, out, resume=True)
    with pytest.raises(FingerprintMismatchError, match="batch_size"):
        make_images(tmp_path / "same", seed=0)
        run(tmp_path / "same", tmp_path / "out2")
        run(tmp_path / "same", tmp_path / "out2", resume=True, batch_size=8)


def test_full_disk_is_named_and_resumable(images: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    reference = run(images, tmp_path / "ref").relevances(list(range(24)))
    out = tmp_path / "out"
    calls = {"n": 0}
    original = store_writer._write_bytes

    def fill_up(fh: Any, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] > 5:  # manifest, then two chunks (shard + sidecar) fit
            raise OSError(errno.ENOSPC, "No space left on device")
        original(fh, data)

    monkeypatch.setattr(store_writer, "_write_bytes", fill_up)
    with pytest.raises(StoreWriteError, match="disk is full.*--resume"):
        run(images, out)
    monkeypatch.setattr(store_writer, "_write_bytes", original)
    assert set(store_writer.done_chunks(out, range(6))) == {0, 1}  # kept, intact
    assert not list((out / "shards").glob(".*tmp*"))
    resumed = run(images, out, resume=True)
    assert torch.equal(resumed.relevances(list(range(24))), reference)


def test_mixed_sizes_need_resize(images: Path, tmp_path: Path) -> None:
    Image.fromarray(np.zeros((20, 18, 3), dtype=np.uint8)).save(images / "class1" / "big.png")
    with pytest.raises(MixedSizesError, match=r"class1/big.png .*\(3, 20, 18\).*--resize"):
        run(images, tmp_path / "out")
    store = run(images, tmp_path / "out2", preprocess=Preprocess(resize=16, crop=(16, 14)))
    assert len(store) == 25 and store.relevance("class1/big.png").shape == (16, 14)
    again = run(images, tmp_path / "out2", preprocess=Preprocess(resize=16, crop=(16, 14)),
                resume=True)  # the settings read back from JSON compare equal
    assert len(again) == 25


def test_preprocess_resize_crop_normalise_against_numpy() -> None:
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    x, view = Preprocess(resize=20, crop=(16, 18), mean=mean, std=std).image(image)
    # shorter side 30 → 20, so 40 → 27; the centre 16 × 18 starts at row 2, column 4
    pixels = np.asarray(image.resize((27, 20), resample=Image.Resampling.BILINEAR),
                        dtype=np.float64) / 255
    expected = pixels[2:18, 4:22].transpose(2, 0, 1)
    assert view is not None and x.shape == view.shape == (3, 16, 18)
    np.testing.assert_allclose(view.numpy(), expected, rtol=0, atol=1e-7)
    normalised = (expected - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))
    np.testing.assert_allclose(x.numpy(), normalised, rtol=0, atol=1e-6)
    gray, _ = Preprocess(crop=4).image(image.convert("L"))
    np.testing.assert_allclose(gray[0].numpy() * 255,
                               np.asarray(image.convert("L"))[13:17, 18:22], atol=1e-4)
    with pytest.raises(DataError, match=r"--crop 31x18 is larger than the image \(30x40\)"):
        Preprocess(crop=(31, 18)).image(image)


def test_unreadable_and_unexplainable_samples_are_failed_rows(images: Path,
                                                              tmp_path: Path) -> None:
    (images / "class2" / "03.png").write_bytes(b"not a png")
    store = run(images, tmp_path / "out", model="tests.helpers.run_models:picky_cnn",
                preprocess=Preprocess(transform="tests.test_run:half_first_pixel_of_red"))
    failed = {row["path"]: row["error"] for row in store.index if row["status"] == "failed"}
    assert set(failed) == {"class2/03.png", "class0/01.png"}
    assert failed["class2/03.png"].startswith("read: UnidentifiedImageError")
    assert "picky model" in failed["class0/01.png"]
    assert len(store) == 22 and "class2/03.png" not in store.paths
    with pytest.raises(KeyError, match="failed"):
        store.relevance("class0/01.png")
    for path in ("class0/00.png", "class0/02.png", "class0/03.png", "class2/02.png"):
        # thumbnails are made in the loader for every readable sample and stored for the
        # explained ones only: each stays with its own sample around a failed one
        with Image.open(images / path) as image:
            view = half_first_pixel_of_red(image)
        view = (view - view.min()) / (view.max() - view.min())
        expected = (view * 255).round().to(torch.uint8).permute(1, 2, 0)
        assert torch.equal(store.thumbnail(path), expected), path


def half_first_pixel_of_red(image: Any) -> torch.Tensor:
    """A transform for the test above: class0/01.png's first pixel becomes exactly 0.5."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255)
    x = x.permute(2, 0, 1).contiguous()
    if getattr(image, "filename", "").endswith("class0/01.png"):
        x[0, 0, 0] = 0.5
    elif float(x[0, 0, 0]) == 0.5:
        x[0, 0, 0] = 0.25
    return x


@pytest.mark.parametrize("target", ["predicted", "true"])
def test_labels_outside_the_classes(images: Path, tmp_path: Path, target: str) -> None:
    make_images(images, classes=4, per_class=2)
    with pytest.raises(LabelRangeError, match=r"class3/00.png has label 3.*3 classes"):
        run(images, tmp_path / "out", target=target)
    assert not list((tmp_path / "out" / "shards").glob("*"))  # nothing stored


def test_target_true_needs_labels(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((6, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match="--target true needs labels"):
        run(tmp_path / "x.npy", tmp_path / "out", target="true")


def test_tensor_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((10, 3, 8, 8), dtype=np.float32)
    y = rng.integers(0, 3, 10)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    store = run(tmp_path / "d.npz", tmp_path / "o1", target="true")
    assert store.paths[3] == "d.npz[3]" and [r["label"] for r in store.index] == y.tolist()
    from safetensors.numpy import save_file

    save_file({"images": x.transpose(0, 2, 3, 1).copy()}, str(tmp_path / "d.safetensors"))
    np.save(tmp_path / "y.npy", y)
    other = run(tmp_path / "d.safetensors", tmp_path / "o2", target="true",
                labels=tmp_path / "y.npy")  # channels-last images, labels from a file
    torch.testing.assert_close(other.relevances(list(range(10))),
                               store.relevances(list(range(10))))
    expl = relprop.explain(tiny_cnn(), torch.from_numpy(x[:4]), target=torch.from_numpy(y[:4]))
    torch.testing.assert_close(store.relevances([0, 1, 2, 3]),
                               expl.relevance.sum(1).half().float())


def test_weights_are_loaded_safely(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.random((4, 3, 8, 8), dtype=np.float32))
    trained = tiny_cnn()
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(2)
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "w.pt")
    a = run(tmp_path / "x.npy", tmp_path / "a", weights=tmp_path / "w.safetensors")
    b = run(tmp_path / "x.npy", tmp_path / "b", weights=tmp_path / "w.pt")
    plain = run(tmp_path / "x.npy", tmp_path / "c")
    assert a.index[0]["explained"] == b.index[0]["explained"] != plain.index[0]["explained"]
    assert a.manifest["model"]["fingerprint"] != plain.manifest["model"]["fingerprint"]
    torch.save({"state_dict": trained.state_dict(), "extra": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError, match="run code.*--trust-pickle"):
        run(tmp_path / "x.npy", tmp_path / "d", weights=tmp_path / "evil.pt")
    trusted = run(tmp_path / "x.npy", tmp_path / "e", weights=tmp_path / "evil.pt",
                  trust_pickle=True)
    assert trusted.index[0]["explained"] == a.index[0]["explained"]
    save_file({"0.weight": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelLoadError, match="bad.safetensors does not fit"):
        run(tmp_path / "x.npy", tmp_path / "f", weights=tmp_path / "bad.safetensors")
    with pytest.raises(ModelLoadError, match="cannot import"):
        run(tmp_path / "x.npy", tmp_path / "g", model="no_such_module:build")


class Evil:
    """Stands for an object whose unpickling would run code."""


def test_exported_program(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.random((6, 3, 8, 8), dtype=np.float32))
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(tiny_cnn(), (torch.rand(2, 3, 8, 8),),
                                  dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    exported = run(tmp_path / "x.npy", tmp_path / "a", model=str(tmp_path / "m.pt2"))
    eager = run(tmp_path / "x.npy", tmp_path / "b")
    assert exported.manifest["model"]["kind"] == "export"
    torch.testing.assert_close(exported.relevances(list(range(6))),
                               eager.relevances(list(range(6))))


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        run(tmp_path / "missing", tmp_path / "o")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "dataset_info.json").write_text("{}")
    import builtins

    real_import = builtins.__import__

    def no_datasets(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtins, "__import__", no_datasets)
        with pytest.raises(DataError, match="pip install datasets"):
            run(tmp_path / "hf", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        run(tmp_path / "empty", tmp_path / "o")
    with pytest.raises(ModelLoadError, match="--weights"):
        run(tmp_path / "empty", tmp_path / "o", model=str(tmp_path / "w.pt"))
    (tmp_path / "m.pt2").write_bytes(b"not a program")
    with pytest.raises(ModelLoadError, match="m.pt2: not a torch.export program"):
        run(tmp_path / "empty", tmp_path / "o", model=str(tmp_path / "m.pt2"))


def test_text_file_with_a_hugging_face_model(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "bert"
    folder.mkdir()
    words = "the a movie was good bad great awful plot actors i liked hated it".split()
    (folder / "vocab.txt").write_text("\n".join(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = transformers.BertTokenizer(vocab_file=str(folder / "vocab.txt"))
    config = transformers.BertConfig(vocab_size=5 + len(words), hidden_size=16,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, num_labels=2,
                                     max_position_embeddings=32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (tmp_path / "s.txt").write_text("the movie was good\n\ni hated the plot\nactors great\n")
    store = run(tmp_path / "s.txt", tmp_path / "out", model=str(folder), max_length=12)
    assert store.paths == ["s.txt[0]", "s.txt[2]", "s.txt[3]"]
    assert store.manifest["model"]["kind"] == "huggingface"
    encoded = tokenizer(["the movie was good", "i hated the plot", "actors great"],
                        padding="max_length", max_length=12, return_tensors="pt")
    expl = relprop.explain(model, encoded["input_ids"],
                           forward_kwargs={"attention_mask": encoded["attention_mask"]})
    torch.testing.assert_close(store.relevances([0, 1, 2]), expl.relevance.half().float())
    assert store.relevance(0)[encoded["attention_mask"][0] == 0].abs().sum() == 0  # padding
    assert store.thumbnail(0) is None


def test_command_line(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from relprop.cli import main

    out = tmp_path / "out"
    args = ["explain", "--model", MODEL, "--data", str(images), "--out", str(out),
            "--batch-size", "8", "--workers", "0", "--full", "--resolution", "0",
            "--dtype", "float32", "--methods", "lrp,gradient_x_input", "--target", "2"]
    assert main(args) == 0
    assert "24 samples explained, 0 failed" in capsys.readouterr().err
    store = relprop.store.open(out)
    assert store.relevance(3).shape == (3, 16, 16) and store.relevance(3).dtype == torch.float32
    assert {row["target"] for row in store.index} == {2}
    x = load_image(images / store.paths[3])[None]
    expl = relprop.explain(tiny_cnn(), torch.stack([load_image(images / p) for p in
                                                    store.paths[:8]]), target=2)
    torch.testing.assert_close(store.relevance(3), expl.relevance[3])
    assert store.relevance(3, "gradient_x_input").shape == x.shape[1:]
    assert main(args) == 1  # exists, no --resume
    assert "already holds a run: pass --resume" in capsys.readouterr().err
    assert main(args[:6] + [str(tmp_path / "new"), "--composite", "nope"]) == 1
    assert "--composite 'nope': choose one of" in capsys.readouterr().err


def test_hugging_face_datasets_folder(images: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    files = sorted(images.rglob("*.png"))
    table = datasets.Dataset.from_dict(
        {"image": [str(f) for f in files], "label": [int(f.parent.name[-1]) for f in files]}
    ).cast_column("image", datasets.Image())
    table.save_to_disk(str(tmp_path / "hf"))
    store = run(tmp_path / "hf", tmp_path / "out", target="true")
    reference = run(images, tmp_path / "ref", target="true")
    assert store.paths[5] == "hf[5]" and store.manifest["data"]["kind"] == "huggingface_datasets"
    assert [r["label"] for r in store.index] == [r["label"] for r in reference.index]
    torch.testing.assert_close(store.relevances(list(range(24))),
                               reference.relevances(list(range(24))))


def test_killed_while_writing_the_first_manifest(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".manifest.json.tmp-123").write_bytes(b'{"form')  # torn
    assert len(run(images, out, resume=True)) == 24
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreExistsError, match="not empty"):
        run(images, tmp_path / "other")


def test_progress_bar_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import os
    import pty
    import sys

    from relprop.run.progress import Progress

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert Progress(10)._bar is None  # not a terminal: silent
    master, slave = pty.openpty()  # a terminal that reports 0 columns, like some CI shells
    with os.fdopen(slave, "w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        with Progress(10, 2) as bar:
            bar.update(8)
        stream.flush()
        text = os.read(master, 100_000).decode(errors="replace")
    os.close(master)
    assert "/10 [" in text and "sample/s" in text  # tqdm may skip redraws in between
    with Progress(10, disable=True) as quiet:
        assert quiet._bar is None
