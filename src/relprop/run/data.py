"""Data sources: an image folder, ``.npy``/``.npz``/safetensors tensors, a Hugging Face
``datasets`` folder, a text file of sentences. Each is a map-style dataset whose item ``i`` is
a dict ``{id, path, label, x, view, error}``: a sample that cannot be read has ``x = None``
and ``error`` saying why, so that it becomes a failed row instead of stopping the run."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..store.format import sha256_file
from .errors import DataError
from .preprocess import Preprocess

__all__ = ["Source", "ImageFolder", "TensorFile", "TextFile", "HFDisk", "open_source",
           "read_labels", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm"}
Sample = dict[str, Any]


class Source(Dataset[Sample]):
    """A data source: ``len``, ``source[i]`` → sample dict, paths, labels, a fingerprint."""

    kind = "source"
    tokens = False
    paths: list[str]
    labels: list[int | None]

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        """A sha256 that changes when the data does."""
        raise NotImplementedError

    def load(self, i: int) -> tuple[Tensor, Tensor | None]:
        """Sample ``i`` as ``(input, view)``; may raise (the sample is then failed)."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> Sample:
        sample: Sample = {"id": i, "path": self.paths[i], "label": self.labels[i],
                          "x": None, "view": None, "mask": None, "error": ""}
        try:
            loaded = self.load(i)
        except Exception as error:  # noqa: BLE001 - any reason a sample cannot be read
            sample["error"] = f"{type(error).__name__}: {error}"[:500]
            return sample
        sample["x"], sample["view"] = loaded[0], loaded[1]
        if len(loaded) > 2:
            sample["mask"] = loaded[2]
        return sample


def read_labels(path: str | Path, count: int) -> list[int | None]:
    """``count`` integer labels from ``.npy`` or a text file (one per line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--labels {path}: no such file")
    if path.suffix == ".npy":
        import numpy as np

        values = [int(v) for v in np.load(path).reshape(-1).tolist()]
    else:
        try:
            values = [int(line) for line in path.read_text().split()]
        except ValueError as error:
            raise DataError(f"--labels {path}: not one integer per line ({error})") from error
    if len(values) != count:
        raise DataError(f"--labels {path} has {len(values)} labels for {count} samples")
    return list(values)


class ImageFolder(Source):
    """Images under ``root``; with class sub-folders (sorted names → labels 0, 1, ...), else
    unlabelled. Files in sorted order, found recursively inside each class folder."""

    kind = "image_folder"

    def __init__(self, root: Path, preprocess: Preprocess) -> None:
        self.root, self.preprocess = root, preprocess
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.classes = [p.name for p in folders]
        self.paths, self.labels = [], []
        if folders:
            for label, folder in enumerate(folders):
                for file in sorted(folder.rglob("*")):
                    if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                        self.paths.append(file.relative_to(root).as_posix())
                        self.labels.append(label)
        else:
            for file in sorted(root.iterdir()):
                if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                    self.paths.append(file.name)
                    self.labels.append(None)
        if not self.paths:
            raise DataError(f"--data {root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                            "in it or in its class sub-folders")

    def fingerprint(self) -> str:
        digest = hashlib.sha256(b"image_folder")
        for path in self.paths:
            try:
                stat = (self.root / path).stat()
                digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path}:missing\n".encode())
        return digest.hexdigest()

    def load(self, i: int) -> tuple[Tensor, Tensor | None]:
        from PIL import Image

        with Image.open(self.root / self.paths[i]) as image:
            image.load()
            return self.preprocess.image(image)


_X_KEYS = ("x", "data", "images", "inputs", "input", "features", "arr_0")
_Y_KEYS = ("y", "labels", "label", "targets", "target")


class TensorFile(Source):
    """Samples along dim 0 of an array in ``.npy``, ``.npz`` or ``.safetensors`` (key ``x``,
    ``data``, ``images``... and labels under ``y``, ``labels``... if present)."""

    kind = "tensors"

    def __init__(self, path: Path, preprocess: Preprocess) -> None:
        self.file, self.preprocess = path, preprocess
        arrays = self._arrays(path)
        keys = list(arrays)
        x_key = next((k for k in _X_KEYS if k in arrays), None)
        if x_key is None:
            others = [k for k in keys if k not in _Y_KEYS]
            if len(others) != 1:
                raise DataError(f"--data {path}: cannot tell the inputs among {keys}; name "
                                f"them one of {list(_X_KEYS)}")
            x_key = others[0]
        x = arrays[x_key]
        if x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.permute(0, 3, 1, 2)  # channels last (N, H, W, C) → (N, C, H, W)
        self.x = x
        y_key = next((k for k in _Y_KEYS if k in arrays), None)
        self.paths = [f"{path.name}[{i}]" for i in range(x.shape[0])]
        self.labels = ([int(v) for v in arrays[y_key].reshape(-1).tolist()] if y_key
                       else [None] * x.shape[0])
        if len(self.labels) != len(self.paths):
            raise DataError(f"--data {path}: {len(self.labels)} labels for {len(self.paths)} "
                            "samples")

    @staticmethod
    def _arrays(path: Path) -> dict[str, Tensor]:
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                return dict(load_file(str(path)))
            import numpy as np

            loaded = np.load(path, allow_pickle=False)
            if path.suffix == ".npz":
                return {k: torch.from_numpy(np.ascontiguousarray(loaded[k])) for k in loaded}
            return {"x": torch.from_numpy(np.ascontiguousarray(loaded))}
        except Exception as error:  # noqa: BLE001 - numpy/safetensors raise many types
            raise DataError(f"--data {path}: cannot read it ({error})") from error

    def fingerprint(self) -> str:
        return sha256_file(self.file)

    def load(self, i: int) -> tuple[Tensor, Tensor | None]:
        return self.preprocess.tensor(self.x[i])


class TextFile(Source):
    """One sentence per line (empty lines skipped), tokenised by the model's tokenizer and
    padded to ``max_length`` so that every map has the same length."""

    kind = "text"
    tokens = True

    def __init__(self, path: Path, tokenizer: Any, max_length: int) -> None:
        if tokenizer is None:
            raise DataError(f"--data {path} is text: the model needs a tokenizer (a Hugging "
                            "Face model folder with its tokenizer files)")
        self.file, self.tokenizer, self.max_length = path, tokenizer, max_length
        lines = path.read_text(encoding="utf-8").splitlines()
        self.sentences = [(n, line) for n, line in enumerate(lines) if line.strip()]
        self.paths = [f"{path.name}[{n}]" for n, _ in self.sentences]
        self.labels = [None] * len(self.paths)

    def fingerprint(self) -> str:
        return sha256_file(self.file)

    def load(self, i: int) -> tuple[Tensor, Tensor | None]:
        encoded = self.tokenizer(self.sentences[i][1], padding="max_length", truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
        mask = encoded["attention_mask"][0]
        return encoded["input_ids"][0], None, mask  # type: ignore[return-value]


class HFDisk(Source):
    """A Hugging Face ``datasets`` folder (``save_to_disk``): an image column (``image``,
    ``img``) or a text column (``text``, ``sentence``), labels from ``label``/``labels``."""

    kind = "huggingface_datasets"

    def __init__(self, path: Path, preprocess: Preprocess, tokenizer: Any,
                 max_length: int) -> None:
        try:
            import datasets
        except ImportError as error:
            raise DataError(f"--data {path} is a Hugging Face datasets folder: install the "
                            "datasets package (pip install datasets) to read it") from error
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            split = "test" if "test" in data else next(iter(data))
            data = data[split]
        self.data, self.preprocess, self.folder = data, preprocess, path
        columns = list(data.column_names)
        self.image_key = next((k for k in ("image", "img", "pixel_values") if k in columns),
                              None)
        self.text_key = next((k for k in ("text", "sentence", "content") if k in columns), None)
        if self.image_key is None and self.text_key is None:
            raise DataError(f"--data {path}: no image or text column among {columns}")
        self.tokens = self.image_key is None
        self.tokenizer, self.max_length = tokenizer, max_length
        label_key = next((k for k in ("label", "labels") if k in columns), None)
        self.labels = [int(v) for v in data[label_key]] if label_key else [None] * len(data)
        self.paths = [f"{path.name}[{i}]" for i in range(len(data))]

    def fingerprint(self) -> str:
        return str(getattr(self.data, "_fingerprint", "")) or hashlib.sha256(
            str(self.folder).encode()).hexdigest()

    def load(self, i: int) -> tuple[Tensor, Tensor | None]:
        item = self.data[i]
        if self.image_key is not None:
            value = item[self.image_key]
            if isinstance(value, Tensor):
                return self.preprocess.tensor(value)
            return self.preprocess.image(value)
        encoded = self.tokenizer(item[self.text_key], padding="max_length", truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
        return encoded["input_ids"][0], None, encoded["attention_mask"][0]  # type: ignore


def open_source(path: str | Path, preprocess: Preprocess, *, tokenizer: Any = None,
                max_length: int = 128, labels: str | Path | None = None) -> Source:
    """The source for ``path``: a folder of images, a HF datasets folder, a tensor file, or a
    text file (``.txt``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"--data {path}: no such file or folder")
    source: Source
    if path.is_dir():
        hf = any((path / n).exists() for n in ("dataset_info.json", "dataset_dict.json",
                                               "state.json"))
        source = (HFDisk(path, preprocess, tokenizer, max_length) if hf
                  else ImageFolder(path, preprocess))
    elif path.suffix in (".npy", ".npz", ".safetensors"):
        source = TensorFile(path, preprocess)
    elif path.suffix == ".txt":
        source = TextFile(path, tokenizer, max_length)
    else:
        raise DataError(f"--data {path}: unknown kind of data; give an image folder, a .npy/"
                        ".npz/.safetensors file, a Hugging Face datasets folder or a .txt file "
                        "with one sentence per line")
    if labels is not None:
        source.labels = read_labels(labels, len(source))
    return source
