"""The disk under an output: can files be created there, how much room is left, and a full disk (or a file-size
limit) turned into one line that names the path, instead of a traceback from whichever library was writing.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loratune.errors import DiskFullError, LoratuneError, RunError, first_line
from loratune.formatting import size

OUT_OF_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# safetensors raises its own SafetensorError (not an OSError) and keeps the OS error only in its text,
# e.g. 'IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'.
# Python's tempfile says the last when no candidate temporary folder can take a file (libraries ask at import).
NO_TEMP_DIR = "No usable temporary directory"
OUT_OF_SPACE_TEXTS = ("No space left on device", "Disk quota exceeded", "File too large", "StorageFull", NO_TEMP_DIR)


def existing_ancestor(path: Path) -> Path:
    """`path` itself when it exists, else its nearest parent that does (where a new file would be created)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged user may still write on the disk that holds (or would hold) `path`."""
    return shutil.disk_usage(existing_ancestor(path)).free


def writable_problem(path: str | Path, what: str) -> str | None:
    """Why files cannot be created in the folder `path` (which need not exist yet), or None when they can.

    `what` names the output in the message, e.g. "--output-dir out".

    `os.access` asks the kernel, so a read-only file system is refused for root too, while a chmod'ed folder that
    root may write anyway (root ignores permission bits) is accepted: the answer matches what the write would do.
    """
    folder = existing_ancestor(Path(path))
    if not folder.is_dir():
        return f"{what} cannot be written: {folder} is a file, not a folder; choose another path"
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    reason = "a read-only file system" if read_only else "no write permission"
    return f"{what} cannot be written ({folder}: {reason}); choose a writable location or fix its permissions"


def check_writable_file(path: str | Path, flag: str) -> None:
    """Refuse an output file that cannot be created (its folder read-only, or a file where a folder should be).

    Raises:
        RunError: one line naming `flag` and the path.
    """
    if Path(path).is_dir():
        raise RunError(f"{flag} {path} is a folder; name a file in it instead.")
    problem = writable_problem(Path(os.path.abspath(path)).parent, f"{flag} {path}")
    if problem:
        raise RunError(problem + ".")


def is_out_of_space(error: BaseException) -> bool:
    """True for a write that failed because the disk, a quota or the file-size limit ran out."""
    if isinstance(error, OSError) and error.errno in OUT_OF_SPACE_ERRNOS:
        return True
    text = str(error)
    return any(marker in text for marker in OUT_OF_SPACE_TEXTS)


def disk_full_message(path: Path, error: BaseException, needed_bytes: int | None = None) -> str:
    """One line: which path could not be written, why, how much room is left there and how much was needed."""
    if NO_TEMP_DIR in str(error):
        where = os.environ.get("TMPDIR") or "/tmp"
        return (
            f"No temporary folder can be written ({where} and the other candidates are full or read-only: "
            f"{size(free_bytes(Path(where)))} free in {where}); free some space or set TMPDIR to a folder with room"
        )
    if isinstance(error, OSError) and error.errno in OUT_OF_SPACE_ERRNOS:
        reason = os.strerror(error.errno)
        path = Path(error.filename) if error.filename else path
    else:
        reason = next((m for m in OUT_OF_SPACE_TEXTS if m in str(error)), first_line(error))
    needed = f", about {size(needed_bytes)} needed" if needed_bytes else ""
    return f"Could not write {path}: {reason} ({size(free_bytes(path))} free there{needed}); free some space"


@contextmanager
def reporting_full_disk(path: Path, needed_bytes: int | None = None) -> Iterator[None]:
    """Turn a write that ran out of space inside the block into a one-line `DiskFullError` about `path`."""
    try:
        yield
    except LoratuneError:
        raise
    except Exception as error:
        if not is_out_of_space(error):
            raise
        raise DiskFullError(disk_full_message(path, error, needed_bytes)) from error
