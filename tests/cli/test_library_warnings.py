"""Library warnings a user cannot act on stay out of the terminal; one that matters is said once, in loratune's
words (a plot font without the label names' characters; a split without a class the model predicts)."""

from __future__ import annotations

import os
import random
import subprocess
import sys

from conftest import WORDS, write_csv


def test_a_run_with_labels_the_plot_font_lacks_prints_no_library_warning(tmp_path, tiny_bert):
    rng = random.Random(0)
    labels = ["中文", "plain", "other"]
    for split, n in (("train", 60), ("validation", 18), ("test", 18)):
        # test lacks "other": sklearn's balanced accuracy warns when the model predicts it there
        names = labels if split != "test" else labels[:2]
        rows = [{"text": " ".join(rng.choices(WORDS, k=5)), "label": names[i % len(names)]} for i in range(n)]
        write_csv(tmp_path / "data" / f"{split}.csv", rows)
    cmd = [sys.executable, "-m", "loratune", "train", "--data", str(tmp_path / "data"), "--model", str(tiny_bert)]
    cmd += ["--output-dir", str(tmp_path / "run"), "--epochs", "2", "--no-progress", "--precision", "fp32"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Warning:" not in done.stderr and "warnings.warn" not in done.stderr, done.stderr
    font = [line for line in done.stderr.splitlines() if "plot font has no glyph" in line]
    assert len(font) == 1 and "中 文" in font[0]
