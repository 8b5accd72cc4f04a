"""The run folder's lock: one run writes into a folder at a time.

Two runs into one folder would share its checkpoint and overwrite each other's files. The lock is a file
(`files.LOCK_FILE`) created atomically (O_CREAT | O_EXCL) holding the writer's pid and host.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from loratune.errors import RunError
from loratune.runs.files import LOCK_FILE

log = logging.getLogger(__name__)


@contextlib.contextmanager
def run_lock(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold the run folder's lock (`LOCK_FILE`) while a run writes into it; released at the end and on failure.

    A second run into the folder fails at once; a lock whose process no longer runs on this host (a killed run)
    is taken over with a warning.

    Args:
        run_dir: the run folder, created if missing.
        enabled: False for the non-main processes of a distributed run (only the main process writes).

    Raises:
        RunError: when a live process holds the lock.
    """
    if not enabled:
        yield
        return
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    _take_lock(path)
    try:
        yield
    finally:
        if _lock_holder(path) == (os.getpid(), socket.gethostname()):
            path.unlink(missing_ok=True)


def _take_lock(path: Path) -> None:
    for _ in range(3):  # a stale lock removed by another process at the same time: try again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # atomic: one process wins
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is None or _alive(*holder):
                pid, host = holder or ("?", "?")
                raise RunError(
                    f"{path.parent} is in use by another run (pid {pid} on {host}); wait for it to finish or choose "
                    f"another --output-dir (if no run is writing there, delete {path})."
                ) from None
            log.warning("Taking over %s from pid %s, which no longer runs (a killed run).", path, holder[0])
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, handle)
        return
    raise RunError(f"Could not lock {path.parent}: other runs keep starting there; choose another --output-dir.")


def _lock_holder(path: Path) -> tuple[int, str] | None:
    """(pid, host) from a lock file; None while it is being written, or when it is missing or garbled."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return int(holder["pid"]), str(holder["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True  # a process on another machine cannot be checked from here
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True
