"""The training loop: epochs of AdamW steps with warmup and linear decay, a validation pass after each epoch,
the best epoch kept, early stopping. Accelerate owns devices, mixed precision and process groups."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from loratune.batching import build_eval_loader, build_train_loader
from loratune.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from loratune.config import TrainArgs
from loratune.evaluate import evaluate

log = logging.getLogger(__name__)

HIGHER_IS_BETTER = {"f1": True, "accuracy": True, "precision": True, "recall": True, "loss": False}


@dataclass
class TrainResult:
    """What training produced: per-epoch history and the best epoch (whose weights the model now holds)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0
    train_samples: int = 0
    train_tokens: int = 0
    padded_tokens: int = 0
    step_seconds: float = 0.0
    stopped_early: bool = False


def build_optimizer(model: torch.nn.Module, args: TrainArgs, learning_rate: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; biases and norm weights get no weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> Any:
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, math.ceil(total_steps * warmup_ratio), total_steps)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable weights: small for adapters, so keeping the best epoch's costs little."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train(
    model: torch.nn.Module,
    train_ds: Dataset,
    val_ds: Dataset,
    labels: list[str],
    args: TrainArgs,
    learning_rate: float,
    accelerator: Any,
    pad_token_id: int,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_dir: Path | None = None,
    extra_state: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `model` (already on its device) and leave it holding the best epoch's weights.

    Args:
        model: the prepared model; only parameters with requires_grad train.
        train_ds, val_ds: tokenised datasets (see `data.tokenize`).
        labels: label names in id order.
        args: the train section of the config.
        learning_rate: the resolved peak learning rate.
        accelerator: an `accelerate.Accelerator`.
        pad_token_id: the tokenizer's pad id.
        on_epoch_end: called with each epoch's history entry (for trackers).
        checkpoint_dir: the run folder; a checkpoint is written there after every epoch, and training resumes
            from one found there.
        extra_state: kept in the checkpoint (the pipeline keeps its "before" scores there).
    """
    result = TrainResult()
    # Counted as if on one process: Accelerate's prepared scheduler advances once per process on every optimizer
    # step, so the schedule spans the run whatever the number of processes.
    steps_per_epoch = math.ceil(len(train_ds) / args.batch_size / args.gradient_accumulation_steps)
    optimizer = build_optimizer(model, args, learning_rate)
    scheduler = build_scheduler(optimizer, steps_per_epoch * args.num_epochs, args.warmup_ratio)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    val_loader = accelerator.prepare(build_eval_loader(val_ds, args.eval_batch_size, pad_token_id))
    trainable = [p for p in model.parameters() if p.requires_grad]
    higher = HIGHER_IS_BETTER[args.best_metric]
    best_score, best_state, patience_left = None, None, args.early_stopping_patience
    start_epoch, elapsed = 1, 0.0
    if checkpoint_dir is not None and has_checkpoint(checkpoint_dir):
        state, best_state = load_checkpoint(checkpoint_dir, accelerator.unwrap_model(model), optimizer, scheduler)
        start_epoch, elapsed = state["epoch"] + 1, state["train_seconds"]
        best_score, patience_left = state["best_score"], state["patience_left"]
        for key in ("history", "best_epoch", "train_samples", "train_tokens", "padded_tokens", "step_seconds"):
            setattr(result, key, state[key])
        result.stopped_early = state["stopped_early"]
        log.info("Resuming after epoch %d of %d.", state["epoch"], args.num_epochs)
        if result.stopped_early:
            start_epoch = args.num_epochs + 1
    started = time.perf_counter() - elapsed
    for epoch in range(start_epoch, args.num_epochs + 1):
        epoch_started = time.perf_counter()
        loader = accelerator.prepare(
            build_train_loader(train_ds, args.batch_size, pad_token_id, args.seed, epoch, args.group_by_length)
        )
        stats = _train_epoch(model, loader, optimizer, scheduler, trainable, args, accelerator, epoch)
        val = evaluate(model, val_loader, labels, accelerator)
        entry = {
            "epoch": epoch,
            "train_loss": stats["loss"],
            "train_accuracy": stats["accuracy"],
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "val_precision": val["precision"],
            "val_recall": val["recall"],
            "val_f1": val["f1"],
            "learning_rate": scheduler.get_last_lr()[0],
            "epoch_seconds": time.perf_counter() - epoch_started,
        }
        result.history.append(entry)
        result.train_samples += stats["samples"]
        result.train_tokens += stats["tokens"]
        result.padded_tokens += stats["padded_tokens"]
        result.step_seconds += stats["seconds"]
        if on_epoch_end is not None:
            on_epoch_end(entry)
        score = val[args.best_metric]
        if best_score is None or (score > best_score if higher else score < best_score):
            best_score, result.best_epoch = score, epoch
            best_state = trainable_state(accelerator.unwrap_model(model))
            patience_left = args.early_stopping_patience
        elif args.early_stopping_patience:
            patience_left -= 1
            if patience_left <= 0:
                log.info("No %s gain for %d epochs; stopping early.", args.best_metric, args.early_stopping_patience)
                result.stopped_early = True
        if checkpoint_dir is not None and accelerator.is_main_process:
            state = {
                "epoch": epoch,
                "train_seconds": time.perf_counter() - started,
                "best_score": best_score,
                "patience_left": patience_left,
                **{k: getattr(result, k) for k in ("history", "best_epoch", "train_samples", "train_tokens")},
                **{k: getattr(result, k) for k in ("padded_tokens", "step_seconds", "stopped_early")},
                **(extra_state or {}),
            }
            save_checkpoint(checkpoint_dir, accelerator.unwrap_model(model), optimizer, scheduler, state, best_state)
        accelerator.wait_for_everyone()
        if result.stopped_early:
            break
    result.train_seconds = time.perf_counter() - started
    if best_state is not None:
        accelerator.unwrap_model(model).load_state_dict(best_state, strict=False)
    return result


def _train_epoch(model, loader, optimizer, scheduler, trainable, args: TrainArgs, accelerator, epoch: int) -> dict:
    from tqdm.auto import tqdm

    model.train()
    total_loss = torch.zeros((), device=accelerator.device)
    correct = torch.zeros((), device=accelerator.device, dtype=torch.long)
    samples = tokens = padded = 0
    started = time.perf_counter()
    bar = tqdm(
        loader,
        desc=f"epoch {epoch}/{args.num_epochs}",
        disable=not args.progress or not accelerator.is_local_main_process,
        leave=False,
        dynamic_ncols=True,
    )
    for step, batch in enumerate(bar, start=1):
        with accelerator.accumulate(model):
            outputs = model(**batch)
            loss = outputs.loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        n = batch["labels"].shape[0]
        total_loss += loss.detach().float() * n
        correct += (outputs.logits.detach().argmax(-1) == batch["labels"]).sum()
        samples += n
        tokens += int(batch["attention_mask"].sum())
        padded += batch["input_ids"].numel()
        if step % 10 == 0:  # reading the loss syncs the device; not every step
            bar.set_postfix(loss=f"{(total_loss / samples).item():.4f}")
    bar.close()
    counts = accelerator.reduce(
        torch.stack([total_loss, correct.float(), torch.tensor(float(samples), device=accelerator.device)]), "sum"
    )
    return {
        "loss": (counts[0] / counts[2]).item(),
        "accuracy": (counts[1] / counts[2]).item(),
        "samples": int(counts[2].item()),
        "tokens": tokens * accelerator.num_processes,
        "padded_tokens": padded * accelerator.num_processes,
        "seconds": time.perf_counter() - started,
    }
