"""Running a model over batches: logits (gathered across processes), refused when not finite, and an epoch's
validation score."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from loratune.errors import RunError
from loratune.model.hardware import attention_kernels, autocast, return_freed_memory
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

    `loader` is a plain DataLoader with a batch sampler (never one prepared by Accelerate). With an Accelerate
    `accelerator` running several processes, each process scores every n-th batch and the results are gathered
    once at the end (`_shard`, `_gather`), so every example is scored exactly once, in the very batches a single
    process would use. `precision` is the autocast of training (a model prepared for inference holds its own dtype
    and needs none). `progress`: the name of a progress bar (with an ETA) shown over more than `PROGRESS_BATCHES`
    batches; None: silent.
    """
    model.eval()
    processes = accelerator.num_processes if accelerator is not None else 1
    mine: list[int] = []
    if processes > 1:
        batches = list(loader.batch_sampler)
        mine = _shard(len(batches), accelerator.process_index, processes)
        loader = torch.utils.data.DataLoader(
            loader.dataset,
            batch_sampler=[batches[b if b >= 0 else 0] for b in mine],
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
        )
    all_logits, all_labels = [], []
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    main = accelerator is None or accelerator.is_local_main_process
    shown = Progress(len(loader), progress or "", bool(progress) and main and len(loader) > PROGRESS_BATCHES)
    with torch.inference_mode(), autocast(precision, device.type), attention_kernels(device.type):
        for step, batch in enumerate(loader, start=1):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            labels = batch.pop("labels", None)
            all_logits.append(model(**batch).logits.float())  # kept on the device: copying each would wait for it
            if labels is not None:
                all_labels.append(labels)
            shown.update(step)
    shown.close()
    if processes > 1:
        logits_list, labels_list = _gather(mine, all_logits, all_labels)
    else:
        logits_list = [t.cpu().numpy() for t in all_logits]
        labels_list = [t.cpu().numpy() for t in all_labels]
    logits = np.concatenate(logits_list) if logits_list else np.zeros((0, 0), dtype=np.float32)
    check_finite_logits(logits)  # argmax of NaN is label 0: a silent, wrong score
    labels = np.concatenate(labels_list) if labels_list else np.zeros((0,), dtype=int)
    del all_logits, all_labels, logits_list, labels_list
    # A pass's activations, of every batch shape, are freed now: hand them back, so that the phase after this one
    # (training after "before", the fp32 re-score after "after") starts from the model's own size.
    return_freed_memory()
    return logits, labels


def _shard(batches: int, rank: int, processes: int) -> list[int]:
    """The batches process `rank` scores: every `processes`-th, from its own. Each process runs the same number of
    forward passes (FSDP and DeepSpeed gather weights inside each one, so all must take part), so a process with
    one batch fewer runs an extra, whose results it drops: marked -1.

    Written here rather than through Accelerate's sharded loaders: those even out the processes by repeating
    examples, assume batches of one size when gathering (a length-sorted or token-budget batch is not), and then
    disagree on tensor sizes in the collective, which broke the default run under torchrun.
    """
    own = list(range(rank, batches, processes))
    rounds = -(-batches // processes)
    return own + [-1] * (rounds - len(own))


def _gather(mine: list[int], logits: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[list, list]:
    """Every process's (batch number, logits, labels), gathered once onto every process and put back in the
    loader's order, the extra batches dropped."""
    from accelerate.utils import gather_object

    local = [
        (b, lg.cpu().numpy(), labels[i].cpu().numpy() if labels else None)
        for i, (b, lg) in enumerate(zip(mine, logits, strict=True))
        if b >= 0
    ]
    every = sorted(gather_object(local), key=lambda item: item[0])
    return [lg for _, lg, _ in every], [lb for _, _, lb in every if lb is not None]


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
