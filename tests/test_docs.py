"""The documentation site: its code runs, and it builds offline in strict mode.

Every ```python block of ``docs/**/*.md`` runs; a page's blocks run in order in one namespace
(so a later block uses what an earlier one defined). Hidden setup code goes in an HTML comment
that starts with ``<!-- setup``; it runs where it stands and does not show on the site. A block
is skipped when its fence says ``no-run`` (```python title="no-run") or when the line before it
is ``<!-- no-run -->``. Blocks run in a temporary working directory with fixed seeds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
SETUP_START = "<!-- setup"
NO_RUN = "<!-- no-run -->"


def extract(text: str) -> list[tuple[int, str]]:
    """``(line, code)`` of the runnable python snippets of one page, in order."""
    lines = text.splitlines()
    snippets: list[tuple[int, str]] = []
    i = 0
    previous = ""  # the last non-blank line before the current one
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(SETUP_START):
            body = [stripped[len(SETUP_START):]]
            j = i
            while "-->" not in lines[j]:
                j += 1
                body.append(lines[j])
            body[-1] = body[-1].split("-->")[0]
            snippets.append((i + 1, textwrap.dedent("\n".join(body))))
            i, previous = j + 1, "-->"
            continue
        match = FENCE.match(line)
        if match:
            indent, fence, info = match["indent"], match["fence"], match["info"].strip()
            j = i + 1
            while j < len(lines) and not (lines[j].strip().startswith(fence)
                                          and lines[j].strip().strip(fence[0]) == ""):
                j += 1
            language = info.split()[0].lstrip(".{").rstrip("}") if info else ""
            if language == "python" and "no-run" not in info and previous != NO_RUN:
                body = [ln[len(indent):] if ln.startswith(indent) else ln
                        for ln in lines[i + 1:j]]
                snippets.append((i + 2, textwrap.dedent("\n".join(body))))
            i, previous = j + 1, fence
            continue
        if stripped:
            previous = stripped
        i += 1
    return snippets


PAGES = sorted(p for p in DOCS.rglob("*.md") if extract(p.read_text(encoding="utf-8")))


def test_the_extractor() -> None:
    page = textwrap.dedent('''\
        text
        ```python
        a = 1
        ```
        <!-- no-run -->
        ```python
        raise SystemExit
        ```
        ```python title="no-run"
        raise SystemExit
        ```
        ```sh
        make docs
        ```
        <!-- setup
        b = 2
        -->
        !!! note
            ```python
            c = a + b
            ```
        ''')
    assert [code.strip() for _, code in extract(page)] == ["a = 1", "b = 2", "c = a + b"]


def test_pages_have_code() -> None:
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    for page in ("index.md", "getting-started.md", "guide/rules.md", "guide/composites.md",
                 "guide/transformers.md", "guide/beyond.md", "guide/evaluation.md"):
        assert page in names, f"{page} has no runnable python block"


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(DOCS).as_posix() for p in PAGES])
def test_page_code_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import torch

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    np.random.seed(0)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    name = page.relative_to(ROOT).as_posix()
    threads = torch.get_num_threads()
    try:
        for line, code in extract(page.read_text(encoding="utf-8")):
            try:
                exec(compile(code, f"{name}:{line}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"the block at {name}:{line} failed: {error!r}") from error
    finally:
        torch.set_num_threads(threads)


def _mkdocs() -> list[str]:
    exe = Path(sys.executable).with_name("mkdocs")
    if exe.exists():
        return [str(exe)]
    if shutil.which("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]')")
    return ["mkdocs"]


def test_docs_build_strict_and_offline(tmp_path: Path) -> None:
    """``mkdocs build --strict`` (a few seconds) and nothing in the site loads from the web."""
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    start = time.perf_counter()
    done = subprocess.run([*_mkdocs(), "build", "--strict", "--quiet", "-d", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.perf_counter() - start < 60
    assert (site / "index.html").exists() and (site / "api" / "rules.html").exists()
    remote = re.compile(r"""<(?:script|img|iframe)\b[^>]*\bsrc=["']?(?:https?:)?//"""
                        r"""|<link\b[^>]*\bhref=["']?(?:https?:)?//"""
                        r"""|@import\s+url\(["']?(?:https?:)?//|fonts\.googleapis""")
    for path in site.rglob("*"):
        if path.suffix in {".html", ".css", ".js"}:
            found = remote.search(path.read_text(encoding="utf-8", errors="replace"))
            assert found is None, f"{path.relative_to(site)} loads {found.group(0)!r}"
