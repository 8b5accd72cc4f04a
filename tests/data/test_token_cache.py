"""Tokenisation runs once per dataset: a second run on the same files reads the tokens from datasets' Arrow cache
(memory-mapped, not held as Python lists), in a new process as in this one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HELPER = Path(__file__).resolve().parents[1] / "helpers" / "tokenise_splits.py"


def _tokenise(data: Path, tokenizer: Path, seen: Path, cache: Path) -> dict[str, list[str]]:
    env = dict(os.environ, HF_DATASETS_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, str(HELPER), str(data), str(tokenizer), str(seen)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_run_reads_the_tokens_from_the_cache(data_dir, tiny_bert, tmp_path):
    seen = tmp_path / "tokenised.txt"
    first = _tokenise(data_dir, tiny_bert, seen, tmp_path / "cache")
    ran = seen.read_text().split()
    assert ran and all(files for files in first.values())  # tokenised into cache files on disk
    second = _tokenise(data_dir, tiny_bert, seen, tmp_path / "cache")
    assert second == first  # the same Arrow files, found by the same fingerprint
    assert seen.read_text().split() == ran  # and the tokenizer did not run again
