"""A tqdm progress bar in samples (with samples/s), off when stderr is not a terminal."""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import Any

__all__ = ["Progress"]


class Progress:
    """``with Progress(total, done) as bar: bar.update(n)``; silent when ``disable``, when
    stderr is not a TTY, or when tqdm is not installed."""

    def __init__(self, total: int, done: int = 0, disable: bool = False) -> None:
        self._bar: Any = None
        if disable or not sys.stderr.isatty():
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        try:  # a pseudo-terminal may report 0 columns, where tqdm would draw nothing
            sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
        except (OSError, ValueError):
            sized = False
        self._bar = tqdm(total=total, initial=done, unit="sample", unit_scale=False,
                         dynamic_ncols=sized, ncols=None if sized else 80,
                         nrows=None if sized else 24, smoothing=0.1,
                         file=sys.stderr)

    def update(self, n: int) -> None:
        """``n`` more samples done."""
        if self._bar is not None:
            self._bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.close()
