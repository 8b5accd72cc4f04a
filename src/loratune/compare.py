"""Run several training methods on the same data, seed, epochs and evaluation, and put them in one table.

Each method trains in its own child process, so its peak-memory figure is its own and not the high-water mark
left by the method before it.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from loratune.config import METHODS, Config
from loratune.errors import ConfigError

log = logging.getLogger(__name__)

# "base" is the model as loaded (method none): the literal "before" row.
METHOD_ALIASES = {"base": "none"}
DEFAULT_METHODS = ("base", "head", "lora", "full")


def parse_methods(text: str) -> list[str]:
    """'base,head,lora' -> ['base', 'head', 'lora'], checked against the methods loratune knows."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    allowed = sorted(set(METHODS) - {"none"} | set(METHOD_ALIASES))
    unknown = [m for m in methods if METHOD_ALIASES.get(m, m) not in METHODS or m == "none"]
    if unknown or not methods:
        raise ConfigError(f"Unknown method(s) {unknown or text!r} in --methods; choose from {allowed}.")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"--methods lists a method twice: {methods}.")
    return methods


def compare(cfg: Config, methods: list[str], output_dir: str | Path) -> Path:
    """Train each method into `output_dir/<method>` and write comparison.json / .md / .html there.

    Returns:
        The path of comparison.html.

    Raises:
        RuntimeError: when every method failed (a failed method alone is shown as failed in the table).
    """
    from loratune.report import write_comparison

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    runs, failed = {}, []
    for method in methods:
        run_dir = output_dir / method
        method_cfg = dataclasses.replace(
            cfg,
            lora=dataclasses.replace(cfg.lora, method=METHOD_ALIASES.get(method, method)),
            train=dataclasses.replace(cfg.train, output_dir=str(run_dir), overwrite=True),
        )
        print(f"[compare] {method}: training into {run_dir}", file=sys.stderr, flush=True)
        if _train_in_child(method_cfg):
            runs[method] = run_dir
        else:
            failed.append(method)
    if not runs:
        raise RuntimeError(f"Every method failed ({', '.join(failed)}); see the errors above.")
    if failed:
        log.warning("Left out of the comparison after failing: %s", ", ".join(failed))
    return write_comparison(output_dir, runs)


def _train_in_child(cfg: Config) -> bool:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(cfg.to_yaml())
    try:
        return subprocess.run([sys.executable, "-m", "loratune", "train", "--config", handle.name]).returncode == 0
    finally:
        Path(handle.name).unlink(missing_ok=True)
