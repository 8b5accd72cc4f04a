"""The training loop: epochs of AdamW steps with warmup and linear decay, a validation pass after each epoch,
the best epoch kept, early stopping, and a checkpoint after every epoch. Accelerate owns devices and process
groups; `loratune.model.hardware` owns autocast."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import get_linear_schedule_with_warmup

from loratune.config import TrainArgs
from loratune.data.batches import PackedTokens, build_eval_loader, build_train_loader
from loratune.data.labelsets import is_list
from loratune.model import hardware
from loratune.model.build import in_head
from loratune.schema import EpochRecord, from_dict, to_dict
from loratune.scoring.metrics import evaluate
from loratune.training.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from loratune.training.compiling import StepModel, resolve_compile
from loratune.training.losses import LossFunction, build_loss
from loratune.training.threads import ThreadGovernor

log = logging.getLogger(__name__)

HIGHER_IS_BETTER = {"f1": True, "accuracy": True, "precision": True, "recall": True, "loss": False}


@dataclass
class LoopState:
    """Where the loop stands after its last finished epoch: what a checkpoint saves and a resume restores, and
    in the end what training produced (the model then holds the best epoch's weights)."""

    epoch: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float | None = None
    patience_left: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0  # wall time of the loop, validation included
    step_seconds: float = 0.0  # time spent in training steps only
    train_samples: int = 0
    train_tokens: int = 0  # real (unpadded) tokens
    padded_tokens: int = 0
    compile_seconds: float = 0.0  # the first compiled step, compilation included (0: not compiled)


def build_optimizer(
    model: torch.nn.Module, args: TrainArgs, head_modules: Sequence[str] = ()
) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; biases and norm weights get no weight decay, and the parameters of
    `head_modules` train at `args.head_learning_rate` (the others at `args.learning_rate`)."""
    head_lr = args.head_learning_rate if args.head_learning_rate is not None else args.learning_rate
    apart = head_lr != args.learning_rate  # else two groups, as in checkpoints written before the head had its own
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            no_decay = param.ndim < 2 or "norm" in name.lower()
            groups.setdefault((apart and in_head(name, head_modules), no_decay), []).append(param)
    params = [p for group in groups.values() for p in group]
    param_groups = [
        {
            "params": groups[key],
            "weight_decay": 0.0 if key[1] else args.weight_decay,
            "lr": head_lr if key[0] else args.learning_rate,
        }
        for key in sorted(groups)  # the body first: its rate is the one the history records
    ]
    # Fused: one kernel for the whole update instead of several per tensor, which matters where each launch
    # costs more than the work (a GPU and a small adapter). On CPU the foreach default is kept.
    fused = all(p.is_cuda for p in params)
    return torch.optim.AdamW(param_groups, lr=args.learning_rate, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> Any:
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
    accelerator: Any,
    pad_token_id: int,
    checkpoint_dir: Path | None = None,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
    loss_fn: LossFunction | None = None,
    head_modules: Sequence[str] = (),
) -> LoopState:
    """Train `model` (already on its device) and leave it holding the best epoch's weights.

    Args:
        model: the prepared model; only parameters with requires_grad train.
        train_ds, val_ds: tokenised datasets (see `data.tokenize`).
        labels: label names in id order.
        args: the train section of a resolved config (learning rate, precision and device filled in).
        accelerator: an `accelerate.Accelerator`.
        pad_token_id: the tokenizer's pad id.
        checkpoint_dir: the run folder; a checkpoint is written there after every epoch, and training resumes
            from one found there.
        on_epoch_end: called with each epoch's record (for trackers).
        loss_fn: loss(logits, labels) (see `losses.build_loss`); default unweighted, for the labels' task.
        head_modules: the modules that train at `args.head_learning_rate` (the classifier, maybe the pooler).
    """
    if loss_fn is None:
        loss_fn = build_loss(multi_label=is_list(train_ds.features["label"]))
    # Counted as if on one process: Accelerate's prepared scheduler advances once per process on every optimizer
    # step, so the schedule spans the run whatever the number of processes.
    steps_per_epoch = math.ceil(len(train_ds) / args.batch_size / args.gradient_accumulation_steps)
    optimizer = build_optimizer(model, args, head_modules)
    scheduler = build_scheduler(optimizer, steps_per_epoch * args.num_epochs, args.warmup_ratio)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    device = accelerator.device.type
    val_loader = accelerator.prepare(
        build_eval_loader(val_ds, args.eval_batch_size, pad_token_id, device, accelerator.num_processes)
    )
    state, best_weights = LoopState(patience_left=args.early_stopping_patience), None
    runner = StepModel(model, resolve_compile(args.compile))
    packed = PackedTokens.from_dataset(train_ds, pad_token_id, bucket=True)  # once: every epoch reorders the same
    governor = ThreadGovernor(device)
    if checkpoint_dir is not None and has_checkpoint(checkpoint_dir):
        saved, best_weights = load_checkpoint(checkpoint_dir, accelerator.unwrap_model(model), optimizer, scheduler)
        state = from_dict(LoopState, saved)
        log.info("Resuming after epoch %d of %d.", state.epoch, args.num_epochs)
    started = time.perf_counter() - state.train_seconds
    try:
        while state.epoch < args.num_epochs and not state.stopped_early:
            epoch = state.epoch + 1
            epoch_started = time.perf_counter()
            loader = accelerator.prepare(
                build_train_loader(packed, args.batch_size, args.seed, epoch, args.group_by_length, device)
            )
            stats = _train_epoch(runner, loader, optimizer, scheduler, loss_fn, args, accelerator, epoch, governor)
            val = evaluate(model, val_loader, labels, accelerator, args.precision)
            record = EpochRecord.from_scores(
                epoch,
                stats,
                val,
                learning_rate=scheduler.get_last_lr()[0],
                epoch_seconds=time.perf_counter() - epoch_started,
            )
            if state.best_score is None or _better(getattr(val, args.best_metric), state.best_score, args.best_metric):
                state.best_score, state.best_epoch = getattr(val, args.best_metric), epoch
                best_weights = trainable_state(accelerator.unwrap_model(model))
                state.patience_left = args.early_stopping_patience
            elif args.early_stopping_patience:
                state.patience_left -= 1
                if state.patience_left <= 0:
                    log.info(
                        "No %s gain for %d epochs; stopping early.", args.best_metric, args.early_stopping_patience
                    )
                    state.stopped_early = True
            state.epoch = epoch
            state.history.append(record)
            state.train_samples += stats["samples"]
            state.train_tokens += stats["tokens"]
            state.padded_tokens += stats["padded_tokens"]
            state.step_seconds += stats["seconds"]
            state.compile_seconds = state.compile_seconds or runner.compile_seconds or 0.0
            state.train_seconds = time.perf_counter() - started
            if args.progress and accelerator.is_local_main_process:
                print(_epoch_line(record, args.num_epochs), file=sys.stderr, flush=True)
            if on_epoch_end is not None:
                on_epoch_end(record)
            if checkpoint_dir is not None and accelerator.is_main_process:
                unwrapped = accelerator.unwrap_model(model)
                save_checkpoint(checkpoint_dir, unwrapped, optimizer, scheduler, to_dict(state), best_weights)
            accelerator.wait_for_everyone()
    finally:
        governor.close()
    state.train_seconds = time.perf_counter() - started
    if best_weights is not None:
        accelerator.unwrap_model(model).load_state_dict(best_weights, strict=False)
    return state


def _better(score: float, best: float, metric: str) -> bool:
    return score > best if HIGHER_IS_BETTER[metric] else score < best


def _epoch_line(record: EpochRecord, num_epochs: int) -> str:
    return (
        f"epoch {record.epoch}/{num_epochs}: train loss {record.train_loss:.4f} acc {record.train_accuracy:.4f} | "
        f"val loss {record.val_loss:.4f} acc {record.val_accuracy:.4f} f1 {record.val_f1:.4f} "
        f"({record.epoch_seconds:.1f} s)"
    )


class _Progress:
    """A redrawn bar on a terminal; in a log (CI, nohup, a file) a plain line every `log_every` steps instead of
    the carriage-return frames a bar writes there."""

    def __init__(self, total: int, desc: str, enabled: bool, log_every: int = 200):
        self.total, self.desc, self.log_every = total, desc, log_every
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
        self.started = time.perf_counter()

    def wants_loss(self, step: int) -> bool:
        """Reading the loss syncs the device, so only on the steps that show it."""
        return self.enabled and step % (10 if self.bar is not None else self.log_every) == 0

    def update(self, step: int, loss: float | None) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}")
        elif loss is not None:
            rate = step / max(time.perf_counter() - self.started, 1e-9)
            print(f"{self.desc} step {step}/{self.total}: loss {loss:.4f} ({rate:.1f} steps/s)", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Examples whose label (multi-label: whole label set, at probability 0.5) the logits get right."""
    if targets.ndim == 2:
        return ((logits > 0) == (targets > 0.5)).all(dim=-1).sum()
    return (logits.argmax(-1) == targets).sum()


def _forward_backward(step_model: StepModel, batch, targets, loss_fn, dtype: str, accelerator, scaler):
    """One micro-batch: forward under autocast, loss, backward; returns (loss, logits)."""
    device = accelerator.device.type
    with hardware.autocast(dtype, device), hardware.attention_kernels(device):
        logits = step_model(**batch).logits
    loss = loss_fn(logits, targets)
    accelerator.backward(scaler.scale(loss))
    return loss, logits


def _plain_optimizer(optimizer: Any, accelerator: Any) -> Any:
    """The torch optimizer inside Accelerate's wrapper, where the wrapper does nothing loratune needs.

    Why: `AcceleratedOptimizer.step` asks importlib twice per call whether the `lomo_optim` package is installed,
    and its `zero_grad` inspects a signature: 0.5 ms a step on this project's CPU (benchmarks/profile_step.py
    --cprofile), host time that a GPU step of a small model waits for. The rest of its work is for XLA, LOMO,
    Accelerate's GradScaler (loratune scales fp16 itself: `hardware.grad_scaler`) and DeepSpeed / FSDP, which
    keep it.
    """
    from accelerate.utils import DistributedType

    plain = (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
    inner = getattr(optimizer, "optimizer", None)
    if inner is None or accelerator.distributed_type not in plain or accelerator.scaler is not None:
        return optimizer
    return inner


def _train_epoch(
    runner: StepModel,
    loader,
    optimizer,
    scheduler,
    loss_fn,
    args: TrainArgs,
    accelerator,
    epoch: int,
    governor: ThreadGovernor,
) -> dict:
    model = runner.eager
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    scaler = hardware.grad_scaler(args.precision, accelerator.device.type)
    optimizer = _plain_optimizer(optimizer, accelerator)
    # Sums stay on the device and are read once at the end of the epoch: reading one per step would make the
    # host wait for the device at every step.
    total_loss = torch.zeros((), device=accelerator.device)
    correct = torch.zeros((), device=accelerator.device, dtype=torch.long)
    tokens = torch.zeros((), device=accelerator.device, dtype=torch.long)
    samples = padded = 0
    started = time.perf_counter()
    enabled = args.progress and accelerator.is_local_main_process
    progress = _Progress(len(loader), f"epoch {epoch}/{args.num_epochs}", enabled)
    for step, batch in enumerate(loader, start=1):
        governor.tick()
        with accelerator.accumulate(model):
            targets = batch.pop("labels")
            loss, logits = runner.run(_forward_backward, batch, targets, loss_fn, args.precision, accelerator, scaler)
            if accelerator.sync_gradients:
                scaler.unscale_(optimizer)
                if args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        n = targets.shape[0]
        total_loss += loss.detach().float() * n
        correct += _correct(logits.detach(), targets)
        samples += n
        tokens += batch["attention_mask"].sum()
        padded += batch["input_ids"].numel()  # shapes are known on the host: no wait
        progress.update(step, (total_loss / samples).item() if progress.wants_loss(step) else None)
    progress.close()
    local = torch.stack([total_loss, correct.float(), torch.tensor(float(samples), device=accelerator.device)])
    counts = accelerator.reduce(local, "sum")
    tokens = int(tokens)
    return {
        "loss": (counts[0] / counts[2]).item(),
        "accuracy": (counts[1] / counts[2]).item(),
        "samples": int(counts[2].item()),
        "tokens": tokens * accelerator.num_processes,
        "padded_tokens": padded * accelerator.num_processes,
        "seconds": time.perf_counter() - started,
    }
