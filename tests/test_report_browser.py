"""The audit report in a real headless Chromium (Debian's ``chromium``; ``make browser``).

The page is loaded twice: once with a probe script injected (it records console errors and
warnings, uncaught exceptions, failed resource loads and images that did not decode, and
writes them into the DOM that ``--dump-dom`` prints), and once as written, for a screenshot
that must not be blank. A broken page checks that the probe does catch what it looks for.
Without chromium on Linux the test fails: ``make test`` installs it first.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from relprop.audit import TensorSamples, spray, write_report

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the browser check runs on Linux (Debian's chromium)")

PROBE = """<script>
(function () {
  var log = [];
  ['error', 'warn'].forEach(function (level) {
    var original = console[level];
    console[level] = function () {
      log.push(level + ': ' + Array.prototype.join.call(arguments, ' '));
      original.apply(console, arguments);
    };
  });
  window.addEventListener('error', function (e) {
    var t = e.target;
    log.push(t && t !== window ? 'failed to load ' + (t.src || t.href || t.tagName)
                               : 'exception: ' + e.message);
  }, true);
  window.addEventListener('unhandledrejection', function (e) {
    log.push('unhandled rejection: ' + e.reason);
  });
  window.addEventListener('load', function () {
    var images = Array.prototype.slice.call(document.images);
    images.forEach(function (img) {
      if (!img.complete || img.naturalWidth === 0) { log.push('image not shown: ' + img.src); }
    });
    var out = document.createElement('pre');
    out.id = 'relprop-probe';
    out.textContent = JSON.stringify({errors: log, images: images.length,
      svgs: document.querySelectorAll('svg').length,
      sections: document.querySelectorAll('section').length});
    document.body.appendChild(out);
  });
})();
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed: run `make browser` (apt-get install -y "
                    "chromium); `make test` does it first")
    return found


def run_chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
               "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
               f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
               "--virtual-time-budget=5000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def probe(page: Path, tmp: Path) -> dict[str, object]:
    """Load ``page`` with the probe injected; what the probe found."""
    html = page.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1)
    probed = page.with_name("probe-" + page.name)
    probed.write_text(html, encoding="utf-8")
    done = run_chromium(tmp, "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="relprop-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe did not report; chromium said:\n{done.stderr[-3000:]}"
    text = found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
    result: dict[str, object] = json.loads(text.replace("&amp;", "&"))
    return result


def two_strategies(n: int = 40) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maps of 2 classes, the first with two strategies (a corner blob or a central one)."""
    gen = torch.Generator().manual_seed(0)
    maps = 0.05 * torch.randn(2 * n, 24, 24, generator=gen)
    maps[: n // 2, 2:6, 2:6] += 1.0
    maps[n // 2:, 9:15, 9:15] += 1.0
    labels = torch.tensor([0] * n + [1] * n)
    images = torch.rand(2 * n, 3, 24, 24, generator=gen)
    return maps, labels, images


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    maps, labels, images = two_strategies()
    result = spray(maps, labels, embedding="spectral")
    return write_report(out, result, TensorSamples(maps, images),
                        class_names={0: "zero", 1: "one"}, summary={"run": "synthetic"})


def test_report_loads_without_console_errors(report: Path, tmp_path: Path) -> None:
    found = probe(report, tmp_path)
    assert found["errors"] == []
    assert isinstance(found["images"], int) and found["images"] > 20
    assert found["sections"] == 2 and found["svgs"] == 4  # eigengap + scatter per class
    # as written, the page logs nothing at all to the console
    plain = run_chromium(tmp_path, "--dump-dom", report.as_uri())
    assert "CONSOLE" not in plain.stderr, plain.stderr[-2000:]
    assert "<section" in plain.stdout


def test_probe_catches_a_broken_page(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head></head><body><img src="img/missing.png">'
                    "<script>console.error('boom'); undefinedFunction();</script></body></html>",
                    encoding="utf-8")
    errors = probe(page, tmp_path)["errors"]
    assert isinstance(errors, list)
    text = " ".join(errors)
    assert "boom" in text and "undefinedFunction" in text and "missing.png" in text


def test_report_screenshot_is_not_blank(report: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "shot.png"
    done = run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1600",
                        "--hide-scrollbars", report.as_uri())
    assert shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape == (1600, 1200, 3)
    assert pixels.std() > 20.0  # a blank (one-colour) page has 0
    coloured = (np.abs(pixels - pixels.mean(axis=2, keepdims=True)).max(axis=2) > 40).mean()
    assert coloured > 0.01  # heatmaps and cluster colours, not only black text on white
