"""Trust in saved weights: sha256 checksums of weight files, and refusing weights or scores that are not finite.

A weight file damaged inside its tensor data (its header intact, its size unchanged) still loads, and the model
then answers every text with NaN, or worse, with plausible wrong labels. Checksums catch any change to the bytes;
the finiteness checks also catch weights that were saved already broken. `runs.files` decides where the checksums
are stored (`files.CHECKSUMS_FILE`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from loratune.errors import RunError

log = logging.getLogger(__name__)
TRUST_FLAG = "--trust-unverified"


def missing_manifest(manifest: Path, what: str, trust_unverified: bool) -> bool:
    """Whether `manifest` is missing, so the `what` it covers goes unchecked: allowed only when the user asked
    for it (`TRUST_FLAG`), with a warning; an error otherwise.

    Raises:
        RunError: for a missing manifest without `trust_unverified`.
    """
    if manifest.is_file():
        return False
    if not trust_unverified:
        raise RunError(
            f"{manifest} is missing, so {what} cannot be verified; restore the run folder from a backup or train "
            f"again (or pass {TRUST_FLAG} to load it anyway)."
        )
    log.warning("%s is missing: %s loaded unverified, as %s asks.", manifest, what, TRUST_FLAG)
    return True


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def compute_checksums(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """{file name: sha256} of files inside `folder`."""
    return {name: sha256_file(folder / name) for name in sorted(names)}


def verify_checksums(folder: Path, listed: Mapping[str, str], required: Iterable[str], manifest: Path) -> None:
    """Check every file that `manifest` lists, and that each `required` file is listed.

    Raises:
        RunError: naming the first file that is missing, unlisted, or whose bytes changed since it was written.
    """
    fix = "restore the run folder from a backup or train again"
    for name in sorted(set(required) - set(listed)):
        raise RunError(f"{folder / name} is not listed in {manifest}; it was added or renamed after training: {fix}.")
    for name, expected in sorted(listed.items()):
        path = folder / name
        if not path.is_file():
            raise RunError(f"{path} is missing (listed in {manifest}); {fix}.")
        if sha256_file(path) != expected:
            raise RunError(
                f"{path} does not match its checksum in {manifest}: the file was changed or damaged after "
                f"training; {fix}."
            )


def check_finite_tensors(tensors: Mapping[str, Any], where: Path | str) -> None:
    """Refuse NaN or infinite values in floating-point tensors (weights, optimizer state).

    Raises:
        RunError: naming the first tensor with a non-finite value.
    """
    import torch

    for name, tensor in tensors.items():
        if torch.is_floating_point(tensor) and not bool(torch.isfinite(tensor).all()):
            raise RunError(
                f"{where} holds NaN or infinite values (in {name}); the weights are damaged: restore the run folder "
                "from a backup or train again."
            )


def check_finite_model(model: Any, where: Path | str) -> None:
    """`check_finite_tensors` over a model's parameters (not its buffers: some models keep -inf attention masks)."""
    check_finite_tensors(dict(model.named_parameters()), where)


# How far the saved model's validation loss may stray from the loop's own score of the epoch it kept: the loop
# scores under autocast, the saved model is merged and held in the run's precision, which moves the loss by well
# under 1% on all-MiniLM-L6-v2; a model that lost a part on the way (a pooler, a head) moves it by far more.
RELOAD_LOSS_TOLERANCE = 0.1


def reload_mismatch(saved_loss: float, trained_loss: float, epoch: int) -> str | None:
    """Why the saved model cannot be the one training kept, judged by their validation losses; None when it can.

    Hand-written because nothing else compares the two: a model that does not survive its own folder (a full model
    saved without its mean pooling once scored validation macro-F1 0.48 in the loop and test 0.11 when reloaded)
    otherwise reports the reloaded model's scores as if they were the trained one's.
    """
    if abs(saved_loss - trained_loss) <= RELOAD_LOSS_TOLERANCE * trained_loss + 1e-3:
        return None
    return (
        f"The saved model scores validation loss {saved_loss:.4f}, but training scored {trained_loss:.4f} at epoch "
        f"{epoch}, the epoch it kept: the model changed when it was saved and reloaded, so the after scores, "
        "predict and export do not show what training reached (please report it, with the run's saved config)."
    )
