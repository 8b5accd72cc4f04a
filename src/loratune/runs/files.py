"""The run folder's files: their names, atomic writes, and reading and writing each record (config, labels,
scores, predictions, calibration, thresholds, data checks). The weights are `runs.weights`'.

Every file is written to a temporary name and renamed into place, and `COMPLETE` is written last, so a crash
never leaves a half-written file that looks valid, and an unfinished run never looks finished. Each folder of
weights carries `CHECKSUMS_FILE`, the sha256 of its weight and config files, written inside the temporary folder so
that it appears in the same rename as the weights; every load checks it (`runs.integrity`).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from loratune.config import Config, load_config
from loratune.errors import ConfigError, RunError, first_line
from loratune.runs.storage import reporting_full_disk
from loratune.schema import FORMAT_VERSION, EpochRecord, Metrics, RunSummary, SchemaError, from_dict, to_dict
from loratune.scoring.calibration import TEMPERATURES

log = logging.getLogger(__name__)

# The layout of a run folder (docs/run-folder.md). Every other module names these files through the constants.
CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
BEFORE_FILE = "before.json"  # the "before" scores, written as soon as they exist so a resumed run reuses them
COMPLETE = "COMPLETE"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoint"
LOGS_DIR = "logs"
# In each folder of weights (the method's, `Method.saved_in`) and checkpoint/, and in the run folder itself for the
# files that change an answer (`runs.manifest`).
CHECKSUMS_FILE = "checksums.json"
PREDICTIONS_FILE = "predictions.parquet"  # the eval split, example by example, before and after (docs/run-folder.md)
CALIBRATION_FILE = "calibration.json"  # the fitted temperature that `predict` and the export apply
THRESHOLDS_FILE = "thresholds.json"  # multi-label runs: label -> decision threshold, chosen on validation
DATA_CHECKS_FILE = "data_checks.json"
BEFORE_LOGITS_FILE = "before_logits.npy"  # only while unfinished, beside BEFORE_FILE, for the predictions file
LOCK_FILE = ".lock"  # the pid and host of the run writing into the folder, while it runs
REPORT_FILES = ("report.md", "report.html")  # `report.run_report`
PLOT_FILES = (
    "accuracy.png",
    "loss.png",
    "confusion_matrix.png",
    "per_class_f1.png",
    "per_label_f1.png",
    "reliability.png",
)
# In a folder `loratune export` wrote: the run it came from and the names it wrote, so that `--overwrite` can tell
# an export from a folder of the user's, and replace it only when it holds nothing else (`runs.destination`).
EXPORT_MARKER = "loratune_export.json"
HISTORY_COLUMNS = tuple(EpochRecord.__dataclass_fields__)


@functools.cache
def _umask() -> int:
    # The umask can only be read by setting it; read once, since setting it races with other threads' files.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | Path, folder: bool = False) -> None:
    """Give a temporary file (mkstemp: 0600) or folder (mkdtemp: 0700) the mode a plain open or mkdir would give,
    so what is renamed into place is as readable as any other file the user writes."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def write_file(path: Path, write: Callable[[str], None], needed_bytes: int | None = None) -> None:
    """Write one file atomically: `write(tmp)` fills a temporary file beside `path`, which is then given the
    umask's permissions and renamed into place. A failed write (a full disk) leaves no temporary file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with reporting_full_disk(path, needed_bytes):
            write(tmp)
        follow_umask(tmp)  # mkstemp, safetensors and others create 0600
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write text atomically (see `write_file`), synced to disk before the rename."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    write_file(path, write, len(text.encode()))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> Any:
    """Parsed JSON, or a one-line RunError for a missing, unreadable, truncated or garbled file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path} is missing; is {path.parent} a loratune run folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunError(f"{path} is damaged ({first_line(error)}); rerun training or restore the file.") from None
    except OSError as error:
        raise RunError(f"Cannot read {path} ({first_line(error)}); check its permissions.") from None


def _read_record(path: Path, cls: type) -> Any:
    try:
        return from_dict(cls, read_json(path))
    except SchemaError as error:
        raise RunError(f"{path} is damaged ({error}); rerun training or restore the file.") from None


def run_dir_for(cfg: Config) -> Path:
    """The run folder a config writes to: train.output_dir, else runs/<data>-<method>-<time>."""
    if cfg.train.output_dir:
        return Path(cfg.train.output_dir)
    data = Path(cfg.data.path.rstrip("/")).stem if cfg.data.path else "data"
    data = re.sub(r"[^A-Za-z0-9_.-]+", "-", data) or "data"
    return Path("runs") / f"{data}-{cfg.lora.method}-{datetime.now():%Y%m%d-%H%M%S}"


def resume_config_path(run_dir: str | Path) -> Path:
    """The config.yaml of an unfinished run, which `loratune train --resume RUN` continues."""
    run_dir = Path(run_dir)
    check_resumable(run_dir)
    return run_dir / CONFIG_FILE


def save_directory(path: Path, write: Any, needed_bytes: int | None = None) -> None:
    """Call `write(tmp_dir)` and move the result to `path` in one rename (replacing an older copy).

    A write that runs out of space is a one-line `DiskFullError` (`needed_bytes`, when known, says how much the
    folder needs), and leaves an older copy of `path` as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        with reporting_full_disk(path, needed_bytes):
            write(tmp)
        # mkdtemp made the folder 0700, and safetensors writes its files 0600: give the tree the umask's modes.
        for item in [tmp, *tmp.rglob("*")]:
            follow_umask(item, folder=item.is_dir())
        replace_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(new: Path, path: Path) -> None:
    """Move the folder `new` to `path`: an older `path` is renamed aside, `new` renamed into place, and only then
    is the older one deleted; if the second rename fails, the older one is put back."""
    if not path.exists():
        os.replace(new, path)
        return
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run folder, or start over in an unfinished one. A finished run is never written into: `--overwrite`
    builds the new run beside it and swaps the two at the end (`runs.destination`)."""
    if (run_dir / COMPLETE).exists():
        raise RunError(f"{run_dir} already holds a finished run; choose another --output-dir or pass --overwrite.")
    # A fresh run must not pick up the checkpoint of an earlier, unfinished one (that is what --resume is for).
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    (run_dir / BEFORE_FILE).unlink(missing_ok=True)
    (run_dir / BEFORE_LOGITS_FILE).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def save_start(run_dir: Path, cfg: Config, labels: list[str]) -> None:
    """What a run knows before it trains: its resolved config and its labels."""
    write_text(run_dir / CONFIG_FILE, cfg.to_yaml())
    write_json(run_dir / LABELS_FILE, labels)


def check_resumable(run_dir: Path) -> None:
    """Raise unless `run_dir` is a started, unfinished run."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"Nothing to resume in {run_dir}: it has no {CONFIG_FILE}; check the path or start a new run.")
    if (run_dir / COMPLETE).exists():
        raise RunError(f"{run_dir} already finished; nothing to resume.")


def mark_complete(run_dir: Path) -> None:
    """Write COMPLETE and drop what only an unfinished run needs."""
    write_text(run_dir / COMPLETE, "")
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    (run_dir / BEFORE_FILE).unlink(missing_ok=True)
    (run_dir / BEFORE_LOGITS_FILE).unlink(missing_ok=True)


def check_run(run_dir: str | Path) -> Path:
    """The run folder as a Path, or a RunError saying why it cannot be used."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"Run folder {str(run_dir)!r} does not exist; check the path (train one with loratune train).")
    if not (run_dir / COMPLETE).exists():
        raise RunError(f"{run_dir} is not a finished run (no {COMPLETE} marker); it failed or is still training.")
    return run_dir


def history_csv(history: list[EpochRecord]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in to_dict(row).items()})
    return buffer.getvalue()


def save_summary(run_dir: Path, summary: RunSummary) -> None:
    """metrics.json, and its history as history.csv."""
    write_json(run_dir / METRICS_FILE, summary.to_dict())
    write_text(run_dir / HISTORY_FILE, history_csv(summary.history))


def load_summary(run_dir: str | Path) -> RunSummary:
    """metrics.json as a `RunSummary`; a missing, truncated or tampered file, or one in another run-folder format,
    is a one-line RunError."""
    path = Path(run_dir) / METRICS_FILE
    raw = read_json(path)
    version = raw.get("format_version", FORMAT_VERSION) if isinstance(raw, dict) else FORMAT_VERSION
    if version != FORMAT_VERSION:
        raise RunError(
            f"{path.parent} was written in run-folder format {version} and this loratune reads format "
            f"{FORMAT_VERSION}; train the run again (or open it with the loratune that wrote it)."
        )
    try:
        return from_dict(RunSummary, raw)
    except SchemaError as error:
        raise RunError(f"{path} is damaged ({error}); rerun training or restore the file.") from None


def save_before(run_dir: Path, before: Metrics, logits: Any) -> None:
    """The "before" scores and logits (a float numpy array, eval split order), logits first: the scores mark them
    as written."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a handle: np.save would add ".npy" to a bare file name
            np.save(handle, np.asarray(logits, dtype=np.float32), allow_pickle=False)

    write_file(run_dir / BEFORE_LOGITS_FILE, write)
    write_json(run_dir / BEFORE_FILE, to_dict(before))


def load_before(run_dir: Path) -> tuple[Metrics, Any] | None:
    """The "before" scores and logits of an unfinished run, or None when it never got that far."""
    import numpy as np

    path, logits = run_dir / BEFORE_FILE, run_dir / BEFORE_LOGITS_FILE
    if not (path.is_file() and logits.is_file()):
        return None
    try:
        return _read_record(path, Metrics), np.load(logits, allow_pickle=False)
    except ValueError as error:
        raise RunError(f"{logits} is damaged ({first_line(error)}); start the run again.") from None


def save_predictions(run_dir: Path, table: Any) -> None:
    """The predictions table (a pandas DataFrame) as Parquet, atomically."""
    write_file(run_dir / PREDICTIONS_FILE, lambda tmp: table.to_parquet(tmp, index=False))


def load_predictions(run_dir: str | Path) -> Any:
    """The predictions table as a pandas DataFrame, or None for a folder without one (a run stopped before it)."""
    import pandas as pd

    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a truncated or foreign file
        raise RunError(f"{path} is damaged ({first_line(error)}); rerun training or restore the file.") from None


def save_calibration(run_dir: Path, calibration: dict[str, Any]) -> None:
    write_json(run_dir / CALIBRATION_FILE, calibration)


def load_calibration(run_dir: str | Path) -> dict[str, Any] | None:
    """calibration.json, or None for a folder without one (a run stopped before it)."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    temperature = data.get("temperature") if isinstance(data, dict) else None
    low, high = TEMPERATURES
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not low <= temperature <= high:
        raise RunError(
            f"{path} needs a 'temperature' from {low:g} to {high:g} (the range it is fitted in), got "
            f"{str(temperature)[:40]}; restore the file or train again."
        )
    return data


def save_thresholds(run_dir: Path, thresholds: dict[str, float]) -> None:
    write_json(run_dir / THRESHOLDS_FILE, thresholds)


def load_thresholds(run_dir: str | Path, labels: list[str]) -> list[float] | None:
    """A multi-label run's decision thresholds in `labels` order; None for a single-label run (no such file).

    Raises:
        RunError: when the file does not give every label a threshold in (0, 1).
    """
    path = Path(run_dir) / THRESHOLDS_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    valid = isinstance(data, dict) and all(
        isinstance(data.get(label), (int, float)) and not isinstance(data.get(label), bool) and 0 < data[label] < 1
        for label in labels
    )
    if not valid:
        raise RunError(f"{path} must map each of the run's labels to a threshold in (0, 1); restore it or rerun.")
    return [float(data[label]) for label in labels]


def save_data_checks(run_dir: Path, checks: dict[str, Any]) -> None:
    write_json(run_dir / DATA_CHECKS_FILE, checks)


def load_data_checks(run_dir: str | Path) -> dict[str, Any] | None:
    """data_checks.json, or None for a folder without one (a run stopped before it)."""
    path = Path(run_dir) / DATA_CHECKS_FILE
    return read_json(path) if path.is_file() else None


def load_run_config(run_dir: str | Path) -> Config:
    """A run folder's config.yaml; a missing or damaged one is a RunError."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{path} is missing; is {path.parent} a loratune run folder?")
    try:
        return load_config(path)
    except ConfigError as error:
        raise RunError(f"{path} is damaged ({error}); restore it or rerun training.") from None


def load_labels(run_dir: Path) -> list[str]:
    """The run's label names, checked to be two or more distinct strings."""
    labels = read_json(run_dir / LABELS_FILE)
    if (
        not isinstance(labels, list)
        or len(labels) < 2
        or not all(isinstance(label, str) for label in labels)
        or len(set(labels)) != len(labels)
    ):
        raise RunError(
            f"{run_dir / LABELS_FILE} must be a list of two or more distinct label names, got "
            f"{json.dumps(labels)[:80]}; restore the file or rerun training."
        )
    return labels
