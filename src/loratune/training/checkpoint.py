"""End-of-epoch checkpoints, so an interrupted run resumes where its last finished epoch left it.

Everything is stored as safetensors (tensors) plus JSON (everything else): no pickle in a run folder. Only the
trainable weights are saved, which for LoRA is a few hundred kB rather than the whole model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loratune.errors import RunError, first_line
from loratune.runs import weights
from loratune.runs.files import CHECKPOINT_DIR
from loratune.runs.integrity import check_finite_tensors


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    best_weights: dict[str, torch.Tensor] | None,
) -> None:
    """Write `RUN/checkpoint/` in one atomic rename: weights, optimizer, scheduler, RNG and the loop's state
    (`state`, JSON-ready: `training.loop.LoopState` as a dict)."""
    from safetensors.torch import save_file

    tensors = {f"param.{n}": p.detach().float().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    if best_weights is not None:
        tensors |= {f"best.{n}": t.float().contiguous() for n, t in best_weights.items()}
    optim_state = optimizer.state_dict()
    for index, slots in optim_state["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).float().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "state": state,
        "param_groups": optim_state["param_groups"],
        "scheduler": scheduler.state_dict(),
        "rng_python": _jsonable(random.getstate()),
        "rng_numpy": _jsonable(np.random.get_state()),
    }

    def write(folder: Path) -> None:
        save_file(tensors, folder / "state.safetensors")
        (folder / "state.json").write_text(json.dumps(meta))

    needed = sum(t.numel() * t.element_size() for t in tensors.values())
    # A full disk fails here with one line, and the previous epoch's checkpoint stays in place to resume from.
    weights.save_weights_directory(run_dir / CHECKPOINT_DIR, write, needed)


def verify_checkpoint(run_dir: Path) -> None:
    """Check a resumed run's checkpoint against its checksums before anything is written to the run folder.

    Raises:
        RunError: for a checkpoint file changed or damaged since it was written.
    """
    folder = run_dir / CHECKPOINT_DIR
    if folder.is_dir():
        weights.verify_weights(folder, sorted(f.name for f in folder.glob("*.safetensors")))


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINT_DIR / "state.json").is_file()


def load_checkpoint(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore weights, optimizer, scheduler and RNG from `RUN/checkpoint/`.

    Returns:
        The saved loop state and the best epoch's weights (None when none was kept).

    Raises:
        RunError: when the checkpoint is missing or damaged (changed since it was written, or not finite).
    """
    from safetensors.torch import load_file

    folder = run_dir / CHECKPOINT_DIR
    weights.verify_weights(folder, ["state.safetensors", "state.json"])
    try:
        tensors = load_file(folder / "state.safetensors")
        meta = json.loads((folder / "state.json").read_text())
    except Exception as error:
        raise RunError(
            f"The checkpoint in {folder} is missing or damaged ({type(error).__name__}); start over."
        ) from None
    check_finite_tensors(tensors, folder / "state.safetensors")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = {k[len("param.") :] for k in tensors if k.startswith("param.")}
    if saved != set(params):
        raise RunError(f"The checkpoint in {folder} does not match this model's trainable weights; start over.")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[f"param.{name}"].to(param.dtype))
    optim_state: dict[str, Any] = {"param_groups": meta["param_groups"], "state": {}}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, slot = key.split(".", 2)
            optim_state["state"].setdefault(int(index), {})[slot] = value
    try:
        optimizer.load_state_dict(optim_state)
    except ValueError as error:  # another grouping: a full run started before its head had its own learning rate
        raise RunError(
            f"The checkpoint in {folder} groups the optimizer's weights differently ({first_line(error)}); resume "
            "with train.head_learning_rate equal to train.learning_rate, or start over."
        ) from None
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    random.setstate(_tuples(meta["rng_python"]))
    np.random.set_state(_tuples(meta["rng_numpy"]))
    best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return meta["state"], best


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _tuples(value: Any) -> Any:
    # JSON turns the RNG states' tuples into lists; random.setstate and np.random.set_state want tuples back.
    if isinstance(value, list) and value and isinstance(value[0], str):  # numpy: ('MT19937', keys, pos, ...)
        return (value[0], np.array(value[1], dtype=np.uint32), *value[2:])
    if isinstance(value, list):
        return tuple(_tuples(v) if isinstance(v, list) else v for v in value)
    return value
