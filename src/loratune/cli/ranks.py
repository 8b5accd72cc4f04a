"""One line per failing process when several run (torchrun, `accelerate launch`): which rank failed and why.

Without this, every rank prints its own traceback: the one that failed, and each other one blocked in a collective
that then ends with "Connection reset by peer", about 80 lines for two processes. The launcher's agent stops the
other processes once one exits with an error; each says in one line what happened to it.
"""

from __future__ import annotations

import os

# Words of the errors a collective raises when another process is gone (gloo, NCCL, the TCP store).
_LOST_PEER = (
    "connection reset by peer",
    "connection closed by peer",
    "broken pipe",
    "socket timeout",
    "timed out",
    "collective mismatch",
    "nccl communicator was aborted",
)


def rank() -> tuple[int, int] | None:
    """(this process's rank, the number of processes) when a launcher started several; None for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return (int(os.environ.get("RANK", "0") or 0), world) if world > 1 else None


def is_first_rank() -> bool:
    """True for a single process, and for rank 0 of several: the one that speaks for all."""
    where = rank()
    return where is None or where[0] == 0


def is_lost_peer(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another process stopped."""
    name = type(error).__name__
    text = str(error).lower()
    return name in ("DistBackendError", "DistNetworkError", "DistStoreError") or any(w in text for w in _LOST_PEER)


def failure_line(error: BaseException, where: tuple[int, int]) -> str:
    """`error: rank 1 of 2: ValueError: ...`, or, for a rank that lost a peer, a line that points at the peer's."""
    me, world = where
    if is_lost_peer(error):
        return (
            f"error: rank {me} of {world}: another process stopped, so this one cannot go on (that process's own "
            "error line says why)"
        )
    message = " ".join(str(error).split())[:300] or "no message"
    return f"error: rank {me} of {world}: {type(error).__name__}: {message}"
