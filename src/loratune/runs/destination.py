"""Where a command may write. loratune never deletes or overwrites what it did not write, nor what the command
reads: every writing command (train, compare, export, and predict, evaluate and check-data with `--output`) asks
`check_destination` before it writes anything, and `--overwrite` replaces only a folder loratune made, building the
new one beside it and swapping the two at the very end (`Destination`).

Refused, each in one line naming the path, the problem and the fix: `/` and the home folder (even with
--overwrite); an existing folder holding anything but a loratune run or export (even with --overwrite); the command's
own input, a folder that holds it, or (for a folder of inputs such as the data) a path inside it; a path inside a
loratune run or export folder; a finished run or an export without --overwrite.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratune.errors import RunError
from loratune.model.methods import METHODS
from loratune.runs import files
from loratune.runs.storage import check_writable_file

# What a destination holds now.
NOTHING, RUN, FINISHED_RUN, EXPORT, OTHER = "nothing", "unfinished run", "finished run", "export", "other"
# What a command makes there: a run folder, an export folder, a folder of runs (compare) or one file.
MAKES = ("run", "export", "comparison", "file")

# Every name a run writes into its folder (docs/run-folder.md).
RUN_NAMES = frozenset(
    {
        files.CONFIG_FILE,
        files.LABELS_FILE,
        files.METRICS_FILE,
        files.HISTORY_FILE,
        files.BEFORE_FILE,
        files.BEFORE_LOGITS_FILE,
        files.COMPLETE,
        files.TOKENIZER_DIR,
        files.CHECKPOINT_DIR,
        files.LOGS_DIR,
        files.CHECKSUMS_FILE,
        files.PREDICTIONS_FILE,
        files.CALIBRATION_FILE,
        files.THRESHOLDS_FILE,
        files.DATA_CHECKS_FILE,
        files.LOCK_FILE,
        *files.REPORT_FILES,
        *files.PLOT_FILES,
        *(method.saved_in for method in METHODS.values() if method.saved_in),
    }
)
BASE_MODEL = "the base model"  # how `run_inputs` names a run's model, which may live in the run folder
STAGING_SUFFIX = ".new"  # `.NAME.new`: where --overwrite builds the new folder, beside NAME


@dataclass(frozen=True)
class Destination:
    """Where a command's result goes, and what is there now.

    Attributes:
        path: the folder or file the result ends up in.
        holds: what `path` holds now: NOTHING, RUN (unfinished), FINISHED_RUN or EXPORT (a comparison's folder
            may hold OTHER things, which compare leaves alone).
        replace: build the new folder beside `path` (`staging`) and swap it in at the end (`put_in_place`), so that
            a failure before then leaves the earlier folder whole.
    """

    path: Path
    holds: str = NOTHING
    replace: bool = False

    @property
    def staging(self) -> Path:
        """The folder to write: `path` itself, or a hidden sibling while an earlier folder is replaced (the same
        name in every process of a distributed run, and on the same disk, so the swap is two renames)."""
        return self.path.with_name(f".{self.path.name}{STAGING_SUFFIX}") if self.replace else self.path

    @contextlib.contextmanager
    def building(self, enabled: bool = True) -> Iterator[Path]:
        """While the new folder is built: an earlier attempt's staging folder is cleared first, and any failure
        (an exception, Ctrl-C) before `put_in_place` removes the staging folder; the earlier folder stays whole.

        Args:
            enabled: False in the processes of a distributed run that do not write.
        """
        if self.replace and enabled:
            shutil.rmtree(self.staging, ignore_errors=True)  # `check_destination` saw that loratune made it
        try:
            yield self.staging
        except BaseException:
            if self.replace and enabled:
                shutil.rmtree(self.staging, ignore_errors=True)
            raise

    def put_in_place(self) -> None:
        """Swap the finished staging folder in for the earlier one (rename it aside, rename the new one in, delete
        the old); nothing to do when the command wrote `path` itself."""
        if self.replace:
            files.replace_folder(self.staging, self.path)


def check_destination(
    path: str | Path,
    flag: str,
    makes: str,
    inputs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Destination:
    """Check, before anything is written, that a command may write `path`.

    Args:
        path: the output folder or file, as given.
        flag: the option that named it, for the message: "--output-dir", "--output".
        makes: one of `MAKES`: "run" and "export" replace an earlier one of their own kind with `overwrite`;
            "comparison" is compare's folder of runs; "file" is one output file, which replaces an older file.
        inputs: what the command reads, by how a message names it ("the data", "the run folder", "--input") ->
            path; None values and paths that do not exist here (hub ids) are skipped.
        overwrite: replace an earlier loratune folder of this kind.

    Returns:
        The `Destination`, with what it holds and whether it is replaced.

    Raises:
        RunError: one line naming the path, the problem and the fix.
    """
    assert makes in MAKES, makes
    where = Path(os.path.abspath(path)).resolve()
    name = f"{flag} {path}"
    _refuse_special_folders(where, name)
    sources = {label: Path(p).resolve() for label, p in (inputs or {}).items() if p and Path(p).exists()}
    kept = _kept_model(where, name, sources, makes, overwrite)
    _refuse_inputs(where, name, {label: p for label, p in sources.items() if not (kept and label == BASE_MODEL)})
    _refuse_inside_loratune_folders(where, name)
    if makes == "file":
        check_writable_file(path, flag)
        if where.is_file() and not overwrite:  # loratune cannot tell its own earlier output from a file of the user's
            raise RunError(f"{name} already exists; choose another path, or pass --overwrite to replace it.")
        return Destination(Path(path))
    if where.exists() and not where.is_dir():
        raise RunError(f"{name} is a file; choose a folder.")
    holds = holds_in(where, kept) if where.is_dir() else NOTHING
    if makes == "comparison" and holds == OTHER and _not_comparison(where):
        raise RunError(
            f"{name} holds files loratune did not write ({', '.join(_not_comparison(where)[:3])}); choose a new or "
            "empty folder, or an earlier comparison's."
        )
    if holds == OTHER and makes != "comparison":
        raise RunError(
            f"{name} holds files loratune did not write ({_foreign(where, kept)}); choose a new or empty folder "
            "(--overwrite replaces only a folder loratune made)."
        )
    found = Destination(Path(path), holds, _replaces(name, makes, holds, overwrite))
    if found.replace and found.staging.exists() and holds_in(found.staging) == OTHER:
        raise RunError(f"{found.staging} holds files loratune did not write; move it away and run the command again.")
    return found


def _kept_model(where: Path, name: str, sources: dict[str, Path], makes: str, overwrite: bool) -> frozenset[str]:
    """A base model placed in the run folder itself (a run then records it relative to the folder, which travels
    with it): the name of its entry there, which a new run keeps beside it. `--overwrite` would delete it with the
    earlier run, and is refused."""
    model = sources.get(BASE_MODEL)
    if makes != "run" or model is None or model.parent != where:
        return frozenset()
    if overwrite:
        raise RunError(
            f"{name} holds {BASE_MODEL} ({model}), which --overwrite would delete with the earlier run; move the "
            "model out of it, or choose another --output-dir."
        )
    return frozenset([model.name])


def _replaces(name: str, makes: str, holds: str, overwrite: bool) -> bool:
    """Whether an existing loratune folder is replaced (built beside, swapped in at the end); raise when it may not
    be written at all."""
    if makes == "comparison":
        if holds in (RUN, FINISHED_RUN, EXPORT):
            raise RunError(f"{name} is a loratune {holds} folder, not a folder of runs; choose another --output-dir.")
        return False
    own = (RUN, FINISHED_RUN) if makes == "run" else (EXPORT,)
    if holds not in (NOTHING, *own):
        raise RunError(f"{name} holds a loratune {holds}, not a new {makes}; choose another --output-dir.")
    if holds in (FINISHED_RUN, EXPORT) and not overwrite:
        what = "already holds a finished run" if holds == FINISHED_RUN else "is not empty (it holds an earlier export)"
        raise RunError(f"{name} {what}; choose another --output-dir or pass --overwrite.")
    return overwrite and holds != NOTHING


def _refuse_special_folders(where: Path, name: str) -> None:
    if where.parent == where:
        raise RunError(f"{name} is the root folder; loratune never writes over it, choose a new or empty folder.")
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no home folder known
        return
    if where == home:
        raise RunError(
            f"{name} is your home folder; loratune never writes over it, choose a new or empty folder inside it."
        )


def _refuse_inputs(where: Path, name: str, sources: Mapping[str, Path]) -> None:
    """The command's own inputs: never the output, never inside the output, and no output inside a folder of them."""
    for label, source in sources.items():
        if where == source:
            raise RunError(f"{name} is {label} this command reads ({source}); choose another path.")
        if where in source.parents:
            raise RunError(f"{name} contains {label} ({source}), which this command reads; choose a path outside it.")
        if source.is_dir() and source in where.parents:
            raise RunError(f"{name} is inside {label} ({source}); choose a path outside it.")


def _refuse_inside_loratune_folders(where: Path, name: str) -> None:
    for parent in where.parents:
        kind = made_by_loratune(parent) if parent.is_dir() else None
        if kind:
            raise RunError(f"{name} is inside the loratune {kind} folder {parent}; choose a path outside it.")


def made_by_loratune(folder: Path) -> str | None:
    """RUN, FINISHED_RUN or EXPORT for a folder loratune wrote (whatever else was added to it), else None.

    A run is recognised by its `files.CONFIG_FILE`, which only a run writes in this form (every `auto` resolved, the
    folder named), so that a config file of the user's does not make a folder a run; an export by
    `files.EXPORT_MARKER`.
    """
    if (folder / files.EXPORT_MARKER).is_file():
        return EXPORT
    if not (folder / files.CONFIG_FILE).is_file():
        return None
    try:
        train = files.load_run_config(folder).train
    except (OSError, ValueError):  # ValueError: any LoratuneError, a config that is not a run's
        return None
    if not train.output_dir or "auto" in (train.device, train.precision):
        return None
    return FINISHED_RUN if (folder / files.COMPLETE).exists() else RUN


def holds_in(folder: Path, kept: frozenset[str] = frozenset()) -> str:
    """What an existing folder holds: NOTHING (empty, or only leftovers of a killed run's writes), a loratune
    RUN, FINISHED_RUN or EXPORT and nothing else, or OTHER (anything else: the user's files). `kept`: names of
    the command's own inputs in the folder (a base model kept in the run folder), which count as neither."""
    try:
        names = [entry.name for entry in folder.iterdir() if entry.name not in kept]
    except OSError as error:
        raise RunError(
            f"Cannot list {folder} ({error.strerror}); check its permissions or choose another path."
        ) from None
    if all(_leftover(n, RUN_NAMES) for n in names):
        return NOTHING
    kind = made_by_loratune(folder)
    return kind if kind and not _foreign_names(folder, names, kind) else OTHER


def _known_names(folder: Path, kind: str | None) -> frozenset[str]:
    """The names loratune writes in a folder of this kind: a run's, or those an export's marker lists."""
    if kind != EXPORT:
        return RUN_NAMES if kind else frozenset()
    try:
        listed = files.read_json(folder / files.EXPORT_MARKER).get("files", [])
    except (RunError, AttributeError):  # AttributeError: not a JSON object
        return frozenset()
    return frozenset([files.EXPORT_MARKER, *(n for n in listed if isinstance(n, str))])


def _foreign_names(folder: Path, names: list[str], kind: str | None) -> list[str]:
    known = _known_names(folder, kind)
    return sorted(n for n in names if n not in known and not _leftover(n, known))


def _leftover(name: str, known: frozenset[str]) -> bool:
    """The lock, or a hidden temporary file or folder of loratune's atomic writes of a known name (`files.write_file`:
    `.NAME.*.tmp`; `files.save_directory`: `.NAME.*`), which a killed process can leave behind."""
    return name == files.LOCK_FILE or (name.startswith(".") and any(name.startswith(f".{k}.") for k in known))


def _foreign(folder: Path, kept: frozenset[str]) -> str:
    """The first few names in `folder` that loratune did not write, for a message."""
    names = [entry.name for entry in folder.iterdir() if entry.name not in kept]
    foreign = _foreign_names(folder, names, made_by_loratune(folder)) or sorted(names)
    return ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")


def _not_comparison(folder: Path) -> list[str]:
    """The names in a folder that a comparison did not write: anything but its pages, tables and plots
    (`comparison*`) and run folders (each method's, or a folder of its seeds' runs)."""

    def of_runs(entry: Path) -> bool:
        if not entry.is_dir():
            return entry.name.startswith("comparison")
        return holds_in(entry) != OTHER or all(of_runs(child) for child in entry.iterdir() if child.is_dir())

    return sorted(
        entry.name for entry in folder.iterdir() if not _leftover(entry.name, RUN_NAMES) and not of_runs(entry)
    )


def run_inputs(cfg: Any) -> dict[str, Any]:
    """What a training run reads, for `check_destination`: its data and its base model."""
    return {"the data": cfg.data.path, BASE_MODEL: cfg.model.name_or_path}
