"""report.html in a real browser: headless Chromium (Debian's `chromium`, installed by `make setup`)
renders the page; the screenshot is not blank and shows the plots, the DOM's table matches the JSON."""
from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from lowbit.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH; `make setup` installs "
                                                         "Debian's chromium (apt-get install -y chromium)")


def chromium(tmp_path, *args: str) -> str:
    """Run headless Chromium on the page; its stdout."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


class _Page(HTMLParser):
    """The main table's body rows (their cells' text) and the images' sources."""

    def __init__(self):
        super().__init__()
        self.rows, self.images, self._table, self._body, self._cell = [], [], False, False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id") == "main-table"
        elif tag == "tbody" and self._table:
            self._body = True
        elif tag == "tr" and self._body:
            self.rows.append([])
        elif tag == "td" and self._body:
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1].append(self._cell)
            self._cell = None
        elif tag == "table":
            self._table = self._body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def test_report_renders_in_chromium(comparison, tmp_path):
    comparison["sensitivity"] = [{"layer": f"model.layers.{i}.mlp.down_proj", "strategy": "rtn:w4g64",
                                  "quality_loss": 0.01 * i} for i in range(4)]
    out = write_report(comparison, tmp_path / "report")
    url = out["html"].resolve().as_uri()
    rows = json.loads(out["json"].read_text())["rows"]

    page = _Page()
    page.feed(chromium(tmp_path, "--dump-dom", url))
    assert len(page.rows) == len(rows)  # one <tr> per row of comparison.json, in its order
    for cells, row in zip(page.rows, rows):
        assert cells[0].startswith(row["method"]) and cells[1] == row["strategy"]
        if row["status"] == "failed":
            assert cells[2] == f"failed: {row['error']}"
    assert len(page.images) == len(out["plots"]) == 3
    assert all(src.startswith("data:image/png;base64,") for src in page.images)

    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", url)
    from PIL import Image
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)  # (H, W, 3)
    assert pixels.shape == (2000, 1200, 3)
    assert pixels.std() > 20, "the screenshot is blank"
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    # the plots' family colours (weight-only green, dynamic blue) appear nowhere else on the page
    plotted = ((g > r + 60) & (g > b + 60)) | ((b > r + 80) & (b > g + 30))
    assert plotted.sum() > 200, "no plot is visible in the first 2000 pixels of the page"
