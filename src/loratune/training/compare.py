"""Run several training methods on the same data, seed, epochs and evaluation, and put them in one table.

Each method trains in its own child process, so its peak-memory figure is its own and not the high-water mark
left by the method before it. `write_comparison` builds the comparison page from the finished run folders alone,
so it can be rebuilt without a model.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from loratune.config import Config
from loratune.errors import ConfigError, RunError, TrainingError
from loratune.model.methods import METHODS
from loratune.report.comparison import write_comparison
from loratune.runs import files
from loratune.runs.destination import NOTHING, check_destination, run_inputs
from loratune.task import task_of

log = logging.getLogger(__name__)

# "base" is the model as loaded (method none): the literal "before" row.
METHOD_ALIASES = {"base": "none"}
DEFAULT_METHODS = ("base", "head", "lora", "full")


def parse_methods(text: str) -> list[str]:
    """'base,head,lora' -> ['base', 'head', 'lora'], checked against the methods loratune knows."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    trained = {name for name, method in METHODS.items() if method.trains}
    allowed = sorted(trained | set(METHOD_ALIASES))
    unknown = [m for m in methods if m not in allowed]
    if unknown or not methods:
        raise ConfigError(f"Unknown method(s) {unknown or text!r} in --methods; choose from {allowed}.")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"--methods lists a method twice: {methods}.")
    return methods


def compare(cfg: Config, methods: list[str], output_dir: str | Path, seeds: int = 1) -> Path:
    """Train each method into `output_dir/<method>` and write comparison.json / .md / .html there.

    With `seeds` > 1, each method runs once per seed (train.seed, train.seed + 1, ...) into
    `output_dir/<method>/seed-<seed>`, and the table shows the mean ± standard deviation over the seeds.

    An existing run folder among these is refused before anything trains, unless `cfg.train.overwrite`
    (`--overwrite`): then each is replaced only once its new run has finished (`runs.destination`).

    Returns:
        The path of comparison.html.

    Raises:
        RunError: for an output folder that may not be written, or an existing run in it without --overwrite.
        TrainingError: when every method failed (a failed method alone is left out of the table, with a warning).
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be a positive number of runs per method, got {seeds}.")
    output_dir = Path(output_dir)
    planned = _planned_runs(cfg, methods, output_dir, seeds)
    output_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[Path]] = {}
    failed = []
    for method, method_cfg in planned:
        run_dir, seed = Path(method_cfg.train.output_dir), method_cfg.train.seed
        print(f"[compare] {method}, seed {seed}: training into {run_dir}", file=sys.stderr, flush=True)
        if _train_in_child(method_cfg):
            runs.setdefault(method, []).append(run_dir)
            print(f"[compare] {method}, seed {seed}: {_outcome(run_dir)}", file=sys.stderr, flush=True)
        else:
            failed.append(f"{method} (seed {seed})")
    if not runs:
        raise TrainingError(f"Every method failed ({', '.join(failed)}); see each one's error above.")
    if failed:
        log.warning("Left out of the comparison after failing: %s", ", ".join(failed))
    return write_comparison(output_dir, runs)


def _planned_runs(cfg: Config, methods: list[str], output_dir: Path, seeds: int) -> list[tuple[str, Config]]:
    """Each method's config for each seed, its run folder checked before anything trains: an existing run there
    is replaced only with --overwrite."""
    inputs, overwrite = run_inputs(cfg), cfg.train.overwrite
    check_destination(output_dir, "--output-dir", "comparison", inputs)
    planned = []
    for method in methods:
        for seed in range(cfg.train.seed, cfg.train.seed + seeds):
            run_dir = output_dir / method if seeds == 1 else output_dir / method / f"seed-{seed}"
            found = check_destination(run_dir, "--output-dir", "run", inputs, overwrite)
            if found.holds != NOTHING and not overwrite:
                raise RunError(
                    f"{run_dir} already holds a run ({found.holds}); choose another --output-dir or pass --overwrite "
                    "to replace the runs of this comparison."
                )
            method_cfg = dataclasses.replace(
                cfg,
                lora=dataclasses.replace(cfg.lora, method=METHOD_ALIASES.get(method, method)),
                train=dataclasses.replace(cfg.train, output_dir=str(run_dir), seed=seed),
            )
            planned.append((method, method_cfg))
    return planned


def _outcome(run_dir: Path) -> str:
    """One line for a finished method: its scores before and after, and its training time."""
    s = files.load_summary(run_dir)
    name = task_of(s.task).accuracy_name
    return (
        f"{name} {s.before.accuracy:.4f} -> {s.after.accuracy:.4f}, macro F1 {s.before.f1:.4f} -> "
        f"{s.after.f1:.4f}, trained in {s.train_seconds:.0f} s"
    )


def _train_in_child(cfg: Config) -> bool:
    """Train in a process of its own; its progress and errors show (stderr), its own before/after table does not
    (the comparison prints one line per method, and its table at the end)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(cfg.to_yaml())
    try:
        command = [sys.executable, "-m", "loratune", "train", "--config", handle.name]
        return subprocess.run(command, stdout=subprocess.DEVNULL).returncode == 0
    finally:
        Path(handle.name).unlink(missing_ok=True)
