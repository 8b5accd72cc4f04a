"""The run folder's manifest: the sha256 of every file that changes an answer (the config, the labels, the
calibration, the thresholds and the tokenizer), written just before `COMPLETE` and checked whenever a finished run
is opened, as each folder of weights carries its own (`runs.weights`).

Why: a valid but edited file gives wrong answers with no error. The labels reordered invert every label; another
base model in the config, a deleted tokenizer file or an edited temperature change every probability. Only the
bytes tell such a file from the one the run wrote.
"""

from __future__ import annotations

from pathlib import Path

from loratune.errors import RunError
from loratune.runs import files
from loratune.runs.integrity import compute_checksums, missing_manifest, verify_checksums

_FIX = "restore the run folder from a backup or train again"


def answer_files(run_dir: Path) -> list[str]:
    """The files of a run folder that change what its model answers, as paths relative to it."""
    names = [files.CONFIG_FILE, files.LABELS_FILE, files.CALIBRATION_FILE, files.THRESHOLDS_FILE]
    found = [name for name in names if (run_dir / name).is_file()]
    tokenizer = run_dir / files.TOKENIZER_DIR
    found += sorted(p.relative_to(run_dir).as_posix() for p in tokenizer.rglob("*") if p.is_file())
    return found


def seal(run_dir: Path) -> None:
    """Write the manifest of the run's answer files (see `answer_files`)."""
    files.write_json(run_dir / files.CHECKSUMS_FILE, compute_checksums(run_dir, answer_files(run_dir)))


def verify(run_dir: Path, trust_unverified: bool = False) -> None:
    """Check a finished run's answer files against its manifest; a file added to the tokenizer, changed or removed
    since the run finished, or a missing manifest (unless `trust_unverified`), is a one-line error.

    Raises:
        RunError: naming the file and the fix.
    """
    manifest = run_dir / files.CHECKSUMS_FILE
    if missing_manifest(manifest, f"the files of {run_dir}", trust_unverified):
        return
    listed = files.read_json(manifest)
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise RunError(f"{manifest} is damaged; {_FIX}.")
    verify_checksums(run_dir, listed, answer_files(run_dir), manifest)
