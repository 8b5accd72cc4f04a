"""Checks made before a run loads its model or trains: the data reads, the schedule has room to train, the output
folder is writable and has room for what the run will write, and `data.max_length` fits the model. All problems
are reported together, in one line, so that one edit fixes them all.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from loratune.config import Config
from loratune.data.splits import Splits, load_splits
from loratune.errors import ConfigError, LoratuneError, PreflightError, RunError
from loratune.formatting import size
from loratune.model.loading import max_positions
from loratune.model.methods import method_of
from loratune.model.names import display_name, resolve_model_name
from loratune.runs.storage import free_bytes, writable_problem
from loratune.training.schedule import check_schedule, launched_processes

# What a run writes besides weights: tokenizer (MiniLM's is 0.9 MB), report plots and pages, JSON and CSV files.
SLACK_BYTES = 8 * 2**20


def check_training(cfg: Config, run_dir: Path) -> Splits:
    """Load the data and check the output folder and the model's limits, before anything slow.

    Returns:
        The loaded splits (see `data.splits.load_splits`).

    Raises:
        LoratuneError: the one problem found, or a `PreflightError` listing several, separated by "; ".
    """
    problems: list[LoratuneError] = []
    splits = None
    try:
        splits = load_splits(cfg.data, seed=cfg.train.seed)
        if method_of(cfg.lora.method).trains:
            check_schedule(len(splits.train), cfg.train, launched_processes())
    except LoratuneError as error:
        problems.append(error)
    # resolved as the model will be loaded: a resumed run's config names the packaged default by its hub id
    name = resolve_model_name(cfg.model.name_or_path, run_dir)
    try:
        limit = max_positions(name, cfg.model.trust_remote_code)
        if limit is not None and cfg.data.max_length > limit:
            problems.append(
                ConfigError(
                    f"data.max_length={cfg.data.max_length} is more than {display_name(name)} takes ({limit} "
                    f"positions); pass --max-length {limit} or less."
                )
            )
    except LoratuneError as error:
        problems.append(error)
    output = f"The output folder {run_dir}"
    writable = writable_problem(run_dir, output)
    if writable:
        problems.append(RunError(writable + "."))
    else:
        needed = estimate_run_bytes(name, cfg.lora.method)
        free = free_bytes(run_dir)
        if needed is not None and free < needed:
            problems.append(
                RunError(
                    f"{output} has {size(free)} free, but a {cfg.lora.method} run of {display_name(name)} writes "
                    f"about {size(needed)}; free some space or choose another --output-dir."
                )
            )
    if len(problems) == 1:
        raise problems[0]
    if problems:
        found = "; ".join(str(p).rstrip(".") for p in problems)
        raise PreflightError(f"{len(problems)} problems: {found}.")
    assert splits is not None
    return splits


def estimate_run_bytes(name_or_path: str, method: str) -> int | None:
    """Most bytes a run writes at once, from the model's parameter count; None when the size is unknown.

    Weights are saved as fp32. A checkpoint holds the trainable weights four times (current, best epoch and
    AdamW's two moments), and while one replaces another both exist, so training peaks at 32 bytes per trainable
    parameter; the saved weights add 4 more.
    """
    params = _parameter_count(name_or_path)
    if params is None:
        return None
    trainable = round(params * method_of(method).trainable_share)
    return 36 * trainable + SLACK_BYTES


def _parameter_count(name_or_path: str) -> int | None:
    """Parameters in a local model folder (or the hub cache), read from the safetensors headers alone."""
    files = sorted(Path(name_or_path).glob("*.safetensors")) if Path(name_or_path).is_dir() else _cached(name_or_path)
    if not files:
        return None
    total = 0
    for file in files:
        try:
            with file.open("rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(length))
        except (OSError, ValueError, struct.error):
            return None  # an unreadable model: loading it reports the problem
        for key, entry in header.items():
            if key != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total


def _cached(repo_id: str) -> list[Path]:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "model.safetensors")
    except Exception:  # not a valid repo id
        return []
    return [Path(found)] if isinstance(found, str) else []
