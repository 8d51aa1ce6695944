"""The examples run offline and write their pictures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, argv", [
    ("bilrp_digits", []),
    ("lstm_sequences", ["--steps", "40"]),
])
def test_example_writes_a_png(name: str, argv: list[str], tmp_path: Path) -> None:
    path = _load(name).main(["--out", str(tmp_path), *argv])
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
