"""Running a model over batches: logits (gathered across processes), refused when not finite, and an epoch's
validation score."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from loratune.errors import RunError
from loratune.model.hardware import attention_kernels, autocast
from loratune.progress import Progress
from loratune.schema import Metrics
from loratune.scoring.metrics import metrics_from_logits
from loratune.task import Task

# More batches than this (a few seconds on a CPU) and scoring shows its progress.
PROGRESS_BATCHES = 8


def predict_logits(
    model: torch.nn.Module, loader: Any, accelerator: Any = None, precision: str = "fp32", progress: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Run the model over a loader under inference mode; returns (logits, labels) in the loader's order.

    With an Accelerate `accelerator`, each process scores its shard and the results are gathered. `precision`
    is the autocast of training (a model prepared for inference holds its own dtype and needs none). `progress`:
    the name of a progress bar (with an ETA) shown over more than `PROGRESS_BATCHES` batches; None: silent.
    """
    model.eval()
    all_logits, all_labels = [], []
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    main = accelerator is None or accelerator.is_local_main_process
    shown = Progress(len(loader), progress or "", bool(progress) and main and len(loader) > PROGRESS_BATCHES)
    with torch.inference_mode(), autocast(precision, device.type), attention_kernels(device.type):
        for step, batch in enumerate(loader, start=1):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            labels = batch.pop("labels", None)
            logits = model(**batch).logits.float()
            if accelerator is not None:
                logits, labels = accelerator.gather_for_metrics((logits, labels))
            all_logits.append(logits)  # kept on the device until the end: copying each batch would wait for it
            if labels is not None:
                all_labels.append(labels)
            shown.update(step)
    shown.close()
    # Several processes: Accelerate evens out their batches by repeating examples at the end, and drops the repeats
    # when gathering only where it knows the batch size, which a batch sampler (`data.batches.eval_batches`) does not
    # tell it; so the repeats are cut here (the gathered batches keep the loader's order, repeats last).
    n = len(loader.dataset) if hasattr(loader, "dataset") else None
    logits = torch.cat(all_logits)[:n].cpu().numpy() if all_logits else np.zeros((0, 0))
    check_finite_logits(logits)  # argmax of NaN is label 0: a silent, wrong score
    labels = torch.cat(all_labels)[:n].cpu().numpy() if all_labels else np.zeros((0,), dtype=int)
    return logits, labels


def evaluate(
    model: torch.nn.Module,
    loader: Any,
    labels: list[str],
    task: Task,
    accelerator: Any = None,
    precision: str = "fp32",
) -> Metrics:
    """Metrics (and mean loss) of `model` on every example of `loader`; the validation score of each epoch.

    A task that decides with thresholds has them tuned on these very examples (as the run's final thresholds are
    on validation), so an epoch is judged by the F1 its probabilities can reach, not by how near 0.5 they happen
    to be.
    """
    logits, y_true = predict_logits(model, loader, accelerator, precision)
    thresholds = task.fit_thresholds(task.probabilities(logits), y_true)
    return metrics_from_logits(logits, y_true, labels, task, thresholds=thresholds)


def check_finite_logits(logits: Any) -> None:
    """Refuse scores with NaN or infinite values rather than turn them into labels.

    Raises:
        RunError: with how many texts got such scores.
    """
    import torch

    logits = torch.as_tensor(logits)
    bad = ~torch.isfinite(logits).all(dim=-1) if logits.ndim > 1 else ~torch.isfinite(logits)
    if bool(bad.any()):
        raise RunError(
            f"The model gave NaN or infinite scores for {int(bad.sum())} of {len(bad)} texts, so its labels would "
            "be meaningless; its weights are damaged or training diverged (lower train.learning_rate, or use "
            "--precision fp32)."
        )
