"""Open report.html and comparison.html in headless Chromium: every image decodes, tables show, phones fit.

Needs Debian's chromium (`apt-get install chromium`); CI installs it. Chromium is driven over its DevTools protocol
through `--remote-debugging-pipe` (JSON messages on file descriptors 3 and 4), so no driver or extra package is
needed, the pages are loaded unchanged, and a phone can be emulated properly: plain `--window-size` won't go below
500 px in headless mode. Full-page screenshots go to tmp_path, and also to LORATUNE_SCREENSHOT_DIR when it is set.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    FAKE_CONFIG,
    GO_EMOTIONS,
    PNG_MAGIC,
    SIX,
    write_fake_findings,
    write_fake_multilabel_run,
    write_fake_run,
)

from loratune.report.run_report import write_report
from loratune.training.compare import write_comparison

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_S = 60.0
# Emulation.setDeviceMetricsOverride parameters: a common phone, and a laptop.
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
DESKTOP = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}
WIDE = {"width": 1300, "height": 900, "deviceScaleFactor": 1, "mobile": False}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium (apt-get install chromium)"
)

# Runs inside the page once it has loaded; returns what the test asserts on.
CHECK_JS = """
new Promise((resolve) => {
  // A word of a table cell (a run of characters between spaces and the separators a label set breaks at) whose
  // characters land on more than one line was broken in the middle.
  const brokenWords = () => {
    const broken = [];
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (!node.parentElement.closest("td, th")) continue;
      for (const match of node.data.matchAll(/[^\\s|,/]+/g)) {
        const range = document.createRange();
        range.setStart(node, match.index);
        range.setEnd(node, match.index + match[0].length);
        const tops = new Set(Array.from(range.getClientRects()).map((r) => Math.round(r.top)));
        if (tops.size > 1) broken.push(match[0]);
      }
    }
    return broken;
  };
  const check = () => {
    const images = Array.from(document.images);
    resolve({
      url: location.href,
      images: images.length,
      decoded: images.filter((img) => img.complete && img.naturalWidth > 0).length,
      tables: document.querySelectorAll("table").length,
      overflow_px: document.documentElement.scrollWidth - document.documentElement.clientWidth,
      wrapped: document.querySelectorAll("table.wrapped").length,
      wrapped_scrolling: Array.from(document.querySelectorAll(".table-wrap"))
        .filter((box) => box.querySelector("table.wrapped") && box.scrollWidth > box.clientWidth).length,
      scrolling: Array.from(document.querySelectorAll(".table-wrap"))
        .filter((box) => box.scrollWidth > box.clientWidth)
        .map((box) => (box.querySelector("tr") || box).textContent.slice(0, 80)),
      broken_words: brokenWords(),
    });
  };
  document.readyState === "complete" ? check() : window.addEventListener("load", check);
})
"""


class Browser:
    """Just enough of the Chrome DevTools protocol, over --remote-debugging-pipe, to load, check and screenshot."""

    def __init__(self, profile: Path) -> None:
        # Chromium reads commands from fd 3 and writes replies to fd 4.
        commands_r, self._commands = os.pipe()
        self._replies, replies_w = os.pipe()

        def wire_pipes() -> None:
            os.dup2(commands_r, 3)
            os.dup2(replies_w, 4)

        offline = (
            "--disable-quic --no-first-run --disable-background-networking --disable-component-update --disable-sync"
        )
        command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *offline.split()]
        command += ["--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        self._process = subprocess.Popen(
            command, pass_fds=(3, 4), preexec_fn=wire_pipes, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(commands_r)
        os.close(replies_w)
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        self._next_id = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                assert "error" not in reply, f"{method} failed: {reply['error']}"
                return reply["result"]
            self._events.append(reply)

    def wait_for(self, event: str) -> None:
        while not any(e.get("method") == event for e in self._events):
            self._events.append(self._read())
        self._events.clear()

    def open(self, page: Path, device: dict[str, Any]) -> dict[str, Any]:
        """Load `page` on the emulated `device` and return what CHECK_JS found."""
        self.call("Emulation.setDeviceMetricsOverride", session=True, **device)
        self._events.clear()
        self.call("Page.navigate", session=True, url=page.as_uri())
        self.wait_for("Page.loadEventFired")
        result = self.call(
            "Runtime.evaluate", session=True, expression=CHECK_JS, awaitPromise=True, returnByValue=True
        )
        return result["result"]["value"]

    def screenshot(self, path: Path) -> Path:
        shot = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self._process.wait(timeout=10)
        finally:
            if self._process.poll() is None:
                self._process.kill()
            os.close(self._commands)
            os.close(self._replies)

    def _read(self) -> dict[str, Any]:
        """The next NUL-terminated JSON message from Chromium, failing rather than hanging if none comes."""
        deadline = time.monotonic() + TIMEOUT_S
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._replies], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"Chromium sent nothing for {TIMEOUT_S:.0f} s"
            chunk = os.read(self._replies, 1 << 16)
            assert chunk, "Chromium closed the DevTools pipe"
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


@pytest.fixture
def pages(tmp_path) -> dict[str, Path]:
    """A run report with every section, a comparison of three methods over two seeds each, and the report of a
    multi-label run with GoEmotions' 28 labels and class weights."""
    settings = {"base": (0, 0.5), "head": (2, 0.71), "lora": (3, 0.86)}
    runs = {}
    for method, (epochs, accuracy) in settings.items():
        for seed in (1, 2):
            folder = tmp_path / "runs" / method / f"seed-{seed}"
            config = FAKE_CONFIG + f"train:\n  seed: {seed}\n"
            write_fake_run(folder, SIX, epochs=epochs, config=config, method=method, after_acc=accuracy)
            runs.setdefault(method, []).append(write_fake_findings(folder, SIX, accuracy, seed=seed))
    weights = {label: 1.0 + i / 10 for i, label in enumerate(GO_EMOTIONS)}
    multi = write_fake_multilabel_run(tmp_path / "runs" / "multi", GO_EMOTIONS, class_weights=weights)
    # a GoEmotions comparison, as `loratune compare --methods head,lora,full` on it leaves
    multi_runs = {
        method: write_fake_multilabel_run(tmp_path / "ml" / method, GO_EMOTIONS, quality, method=method)
        for method, quality in (("head", 0.4), ("lora", 0.8), ("full", 0.85))
    }
    return {
        "report": write_report(runs["lora"][0]),
        "comparison": write_comparison(tmp_path / "compare", runs),
        "multilabel": write_report(multi),
        "multicomparison": write_comparison(tmp_path / "ml-compare", multi_runs),
    }


def keep_screenshot(shot: Path) -> None:
    assert shot.read_bytes()[:8] == PNG_MAGIC
    keep = os.environ.get("LORATUNE_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)


# report: 4 plots and the reliability diagram; tables: results, significance, changes (counts, fixed, broken, still
# wrong, confused pairs), training, data (2), data checks (per split, shared, conflicts), per class, history.
# comparison: 2 plots; tables: results, costs and the significance of LoRA against each other method.
# multilabel: the two curves, per-label F1 and the reliability diagram; tables: results, significance, changes
# (counts, fixed, still wrong), training, class weights, data (2), data checks (3), per label, history.
@pytest.mark.parametrize(
    ("page", "images", "tables"), [("report", 5, 15), ("comparison", 2, 3), ("multilabel", 4, 14)]
)
@pytest.mark.parametrize("device", ["phone", "desktop"])
def test_page_renders_every_image_and_table_and_fits_the_screen(
    browser, pages, tmp_path, page, images, tables, device
):
    found = browser.open(pages[page], PHONE if device == "phone" else DESKTOP)

    assert found["url"] == pages[page].as_uri()
    assert found["images"] == images
    assert found["decoded"] == images, "some <img> did not decode"
    assert found["tables"] == tables
    # Wide tables and figures scroll inside their own boxes; the page itself must never scroll sideways.
    assert found["overflow_px"] <= 0
    if page != "comparison":  # tables of example texts wrap the texts: on a laptop they fit without scrolling
        assert found["wrapped"] >= 2
        if device == "desktop":
            assert found["wrapped_scrolling"] == 0
    keep_screenshot(browser.screenshot(tmp_path / f"{page}-{device}.png"))


@pytest.mark.parametrize("page", ["multilabel", "comparison", "multicomparison"])
def test_tables_fit_a_1300_px_page_without_breaking_a_word(browser, pages, tmp_path, page):
    # The GoEmotions report (28 labels, label sets in the example tables) and both kinds of comparison page: no
    # table needs sideways scrolling at 1300 px, and no word in a table is split across lines.
    found = browser.open(pages[page], WIDE)
    assert found["scrolling"] == [], f"tables that scroll sideways at 1300 px: {found['scrolling']}"
    assert found["broken_words"] == [], f"words broken across lines: {found['broken_words'][:10]}"
    keep_screenshot(browser.screenshot(tmp_path / f"{page}-1300.png"))


def test_the_checks_see_a_broken_word_and_a_table_that_scrolls(browser, tmp_path):
    # the two checks above, on a page that fails both: a narrow cell that breaks a long word, a table too wide
    page = tmp_path / "bad.html"
    page.write_text(
        "<html><body><div class='table-wrap' style='overflow-x:auto'><table><tr>"
        "<td style='max-width:40px;overflow-wrap:anywhere'>admiration|joy</td>"
        + "<td style='white-space:nowrap'>"
        + "wide " * 400
        + "</td></tr></table></div></body></html>"
    )
    found = browser.open(page, WIDE)
    assert "admiration" in found["broken_words"]
    assert len(found["scrolling"]) == 1


@pytest.mark.parametrize("device", ["phone", "desktop"])
def test_the_tune_page_renders_its_plots_and_tables(browser, tiny_bert, data_dir, tmp_path, device):
    pytest.importorskip("optuna", reason="the tune extra (CI installs it)")
    from conftest import tiny_config

    from loratune.tuning.study import TuneOptions, tune

    cfg = tiny_config(tiny_bert, data_dir, tmp_path / "unused", train__num_epochs=2)
    tune(cfg, TuneOptions(output_dir=tmp_path / "study", n_trials=4))
    made = len(list((tmp_path / "study").glob("tune_*.png")))
    found = browser.open(tmp_path / "study" / "tune.html", PHONE if device == "phone" else DESKTOP)
    assert made >= 3 and found["images"] == made and found["decoded"] == made
    assert found["tables"] == 2 and found["overflow_px"] <= 0
    keep_screenshot(browser.screenshot(tmp_path / f"tune-{device}.png"))
