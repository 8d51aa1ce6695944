"""Preprocessing: resize, centre crop and normalise images (PIL, no torchvision), or a user
``module:callable`` transform; each gives the model input and a [0, 1] copy for thumbnails."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import DataError

__all__ = ["Preprocess", "parse_size"]

Size = tuple[int, int]


def parse_size(text: str | None, option: str) -> int | Size | None:
    """``"224"`` → 224 (shorter side), ``"224x160"`` → (224, 160) (height × width)."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError as error:
        raise DataError(f"{option} {text!r}: give N or HxW, e.g. 224 or 224x160") from error
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise DataError(f"{option} {text!r}: give N or HxW with positive sizes")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def _resized(height: int, width: int, resize: int | Size) -> Size:
    if isinstance(resize, tuple):
        return resize
    if height <= width:
        return resize, max(1, round(width * resize / height))
    return max(1, round(height * resize / width)), resize


@dataclass
class Preprocess:
    """How a raw sample becomes the model input.

    ``resize``: N scales the shorter side to N (keeping the aspect ratio), ``(H, W)`` to that
    size; ``crop``: the centre ``(H, W)``; then ``(x − mean) / std`` per channel. ``channels``
    ``"auto"`` keeps grayscale images one channel and makes the others RGB. ``transform``
    (``module:callable``) replaces all of this: it gets the PIL image or the tensor and
    returns the input tensor ``(C, H, W)``.
    """

    resize: int | Size | None = None
    crop: int | Size | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    channels: str = "auto"
    transform: str | None = None
    _callable: Callable[[Any], Any] | None = field(default=None, repr=False, compare=False)

    def settings(self) -> dict[str, Any]:
        """What the manifest records (and a resume compares)."""
        return {"resize": self.resize, "crop": self.crop,
                "mean": list(self.mean) if self.mean else None,
                "std": list(self.std) if self.std else None,
                "channels": self.channels, "transform": self.transform}

    def _user(self) -> Callable[[Any], Any]:
        if self._callable is None:
            from .model import load_callable

            self._callable = load_callable(str(self.transform), "transform")
        return self._callable

    def image(self, image: Any) -> tuple[Tensor, Tensor | None]:
        """A PIL image → ``(input, view)``."""
        if self.transform:
            return self._custom(image)
        import numpy as np

        gray = image.mode in ("1", "L", "LA", "I", "I;16", "F")
        mode = "L" if (self.channels == "1" or (self.channels == "auto" and gray)) else "RGB"
        image = image.convert(mode)
        if self.resize is not None:
            height, width = _resized(image.height, image.width, self._pair_or_int(self.resize))
            image = image.resize((width, height), resample=2)  # bilinear
        array = np.asarray(image, dtype=np.uint8)
        top, left, height, width = self._box(array.shape[0], array.shape[1])
        # cropped while uint8: only the kept pixels are converted, into a dense tensor
        array = array[top:top + height, left:left + width]
        view = torch.from_numpy(array.copy()).float().div_(255)
        view = view.unsqueeze(0) if view.dim() == 2 else view.permute(2, 0, 1)
        return self._normalise(view), view

    def tensor(self, value: Tensor) -> tuple[Tensor, Tensor | None]:
        """A tensor sample (``(C, H, W)`` images, or any feature shape) → ``(input, view)``."""
        if self.transform:
            return self._custom(value)
        x = value.float().div(255) if value.dtype == torch.uint8 else value.float()
        if x.dim() == 3 and self.resize is not None:
            size = _resized(x.shape[1], x.shape[2], self._pair_or_int(self.resize))
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        if x.dim() == 3:
            x = self._crop(x)
        view = x if x.dim() == 3 else None
        if view is not None and (float(view.min()) < 0 or float(view.max()) > 1):
            view = _min_max(view)
        return self._normalise(x), view

    def _custom(self, raw: Any) -> tuple[Tensor, Tensor | None]:
        out = self._user()(raw)
        if not isinstance(out, Tensor):
            raise DataError(f"--transform {self.transform} returned a {type(out).__name__}, "
                            "not a tensor")
        return out, (_min_max(out.detach().float()) if out.dim() == 3 else None)

    @staticmethod
    def _pair_or_int(size: int | Size) -> int | Size:
        return tuple(size) if isinstance(size, list) else size

    def _box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of the centre crop of an image of that size."""
        if self.crop is None:
            return 0, 0, height, width
        crop = self.crop if isinstance(self.crop, tuple | list) else (self.crop, self.crop)
        kept_h, kept_w = int(crop[0]), int(crop[1])
        if height < kept_h or width < kept_w:
            raise DataError(f"--crop {kept_h}x{kept_w} is larger than the image "
                            f"({height}x{width}); resize first (--resize)")
        return (height - kept_h) // 2, (width - kept_w) // 2, kept_h, kept_w

    def _crop(self, x: Tensor) -> Tensor:
        top, left, height, width = self._box(x.shape[-2], x.shape[-1])
        return x[..., top:top + height, left:left + width]

    def _normalise(self, x: Tensor) -> Tensor:
        if self.mean is None and self.std is None:
            return x
        channels = x.shape[0] if x.dim() == 3 else 1
        mean = torch.tensor(list(self.mean or [0.0]), dtype=x.dtype)
        std = torch.tensor(list(self.std or [1.0]), dtype=x.dtype)
        if mean.numel() not in (1, channels) or std.numel() not in (1, channels):
            raise DataError(f"--mean/--std give {mean.numel()}/{std.numel()} values for an "
                            f"input with {channels} channels")
        shape = (-1, 1, 1) if x.dim() == 3 else (-1,)
        return (x - mean.reshape(shape)) / std.reshape(shape)


def _min_max(x: Tensor) -> Tensor:
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if float(high - low) > 0 else torch.zeros_like(x)
