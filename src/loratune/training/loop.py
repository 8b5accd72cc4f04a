"""The training loop: epochs of AdamW steps with warmup and linear decay, a validation pass after each epoch,
the best epoch kept, early stopping, and a checkpoint after every epoch. Accelerate owns devices and process
groups; `loratune.model.hardware` owns autocast.

`train` runs epochs; `_Loop.epoch` is one epoch read top to bottom: the steps, validation, the record, the best
weights, the checkpoint.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from loratune.config import TrainArgs
from loratune.data.batches import PackedTokens, build_eval_loader, build_train_loader
from loratune.model import hardware
from loratune.model.targets import in_head
from loratune.progress import Progress
from loratune.schema import EpochRecord, from_dict, to_dict
from loratune.scoring.inference import evaluate
from loratune.task import Task
from loratune.training.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from loratune.training.compiling import StepModel, resolve_compile
from loratune.training.schedule import build_scheduler, optimizer_steps
from loratune.training.threads import ThreadGovernor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingJob:
    """What the loop trains on, besides the model and the train section of the config.

    Attributes:
        train_ds, val_ds: tokenised datasets (see `data.splits.tokenize`).
        labels: label names in id order.
        task: the run's task (its loss, and what a right answer is).
        pad_token_id: the tokenizer's pad id.
        checkpoint_dir: the run folder; a checkpoint is written there after every epoch, and training resumes
            from one found there. None: no checkpoints.
        on_epoch_end: called with each epoch's record (for trackers).
        class_weights: the loss weight of each label (see `training.losses.compute_class_weights`), or None.
        head_modules: the modules that train at `args.head_learning_rate` (the classifier, maybe the pooler).
    """

    train_ds: Dataset
    val_ds: Dataset
    labels: list[str]
    task: Task
    pad_token_id: int
    checkpoint_dir: Path | None = None
    on_epoch_end: Callable[[EpochRecord], None] | None = None
    class_weights: np.ndarray | None = None
    head_modules: Sequence[str] = ()


def train(model: torch.nn.Module, job: TrainingJob, args: TrainArgs, accelerator: Any) -> LoopState:
    """Train `model` (already on its device) and leave it holding the best epoch's weights.

    Args:
        model: the prepared model; only parameters with requires_grad train.
        job: the data and settings of this training (see `TrainingJob`).
        args: the train section of a resolved config (learning rate, precision and device filled in).
        accelerator: an `accelerate.Accelerator`.
    """
    loop = _Loop(model, job, args, accelerator)
    deterministic = torch.are_deterministic_algorithms_enabled()
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        while loop.state.epoch < args.num_epochs and not loop.state.stopped_early:
            loop.epoch()
    finally:
        loop.governor.close()
        torch.use_deterministic_algorithms(deterministic)
    return loop.finish()


class _Loop:
    """One training's moving parts (optimizer, schedule, loaders, the best weights so far) and where it stands."""

    def __init__(self, model: torch.nn.Module, job: TrainingJob, args: TrainArgs, accelerator: Any) -> None:
        self.job, self.args, self.accelerator = job, args, accelerator
        self.loss_fn = job.task.loss(job.class_weights)
        optimizer = build_optimizer(model, args, job.head_modules)
        processes = accelerator.num_processes
        total_steps = optimizer_steps(len(job.train_ds), args, processes)
        scheduler = build_scheduler(optimizer, total_steps, args.warmup_ratio, processes)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.device = accelerator.device.type
        # not prepared by Accelerate: `predict_logits` deals its batches out to the processes itself
        self.val_loader = build_eval_loader(job.val_ds, args.eval_batch_size, job.pad_token_id, self.device)
        self.state, self.best_weights = LoopState(patience_left=args.early_stopping_patience), None
        self.runner = StepModel(self.model, resolve_compile(args.compile))
        self.packed = PackedTokens.from_dataset(job.train_ds, job.pad_token_id, bucket=True)  # once: epochs reorder it
        self.governor = ThreadGovernor(self.device, fixed=args.deterministic)
        if job.checkpoint_dir is not None and has_checkpoint(job.checkpoint_dir):
            unwrapped = accelerator.unwrap_model(self.model)
            saved, self.best_weights = load_checkpoint(job.checkpoint_dir, unwrapped, self.optimizer, self.scheduler)
            self.state = from_dict(LoopState, saved)
            log.info("Resuming after epoch %d of %d.", self.state.epoch, args.num_epochs)
        self.started = time.perf_counter() - self.state.train_seconds

    def epoch(self) -> None:
        """One epoch: its steps, validation, its record, the best weights and patience, and a checkpoint."""
        args, accelerator, state = self.args, self.accelerator, self.state
        epoch, epoch_started = state.epoch + 1, time.perf_counter()
        loader = build_train_loader(self.packed, args.batch_size, args.seed, epoch, args.group_by_length, self.device)
        stats = self._steps(accelerator.prepare(loader), epoch)
        val = evaluate(self.model, self.val_loader, self.job.labels, self.job.task, accelerator, args.precision)
        seconds = time.perf_counter() - epoch_started
        lr = self.scheduler.get_last_lr()[0]
        record = EpochRecord.from_scores(epoch, stats, val, learning_rate=lr, epoch_seconds=seconds)
        score = getattr(val, args.best_metric)
        if state.best_score is None or _better(score, state.best_score, args.best_metric):
            state.best_score, state.best_epoch = score, epoch
            self.best_weights = trainable_state(accelerator.unwrap_model(self.model))
            state.patience_left = args.early_stopping_patience
        elif args.early_stopping_patience:
            state.patience_left -= 1
            if state.patience_left <= 0:
                log.info("No %s gain for %d epochs; stopping early.", args.best_metric, args.early_stopping_patience)
                state.stopped_early = True
        state.epoch = epoch
        state.history.append(record)
        state.train_samples += stats["samples"]
        state.train_tokens += stats["tokens"]
        state.padded_tokens += stats["padded_tokens"]
        state.step_seconds += stats["seconds"]
        state.compile_seconds = state.compile_seconds or self.runner.compile_seconds or 0.0
        state.threads = list(dict.fromkeys([*state.threads, *self.governor.used]))
        state.train_seconds = time.perf_counter() - self.started
        if args.progress and accelerator.is_local_main_process:
            print(_epoch_line(record, args.num_epochs), file=sys.stderr, flush=True)
        if self.job.on_epoch_end is not None:
            self.job.on_epoch_end(record)
        if self.job.checkpoint_dir is not None and accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(self.model)
            save_checkpoint(
                self.job.checkpoint_dir, unwrapped, self.optimizer, self.scheduler, to_dict(state), self.best_weights
            )
        accelerator.wait_for_everyone()

    def _steps(self, loader: Any, epoch: int) -> dict[str, Any]:
        """The optimizer steps of one epoch; returns its loss, accuracy and counts, summed over processes."""
        args, accelerator, model = self.args, self.accelerator, self.runner.eager
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        scaler = hardware.grad_scaler(args.precision, accelerator.device.type)
        optimizer = _plain_optimizer(self.optimizer, accelerator)

        def forward_backward(step_model: StepModel, batch: dict, targets: torch.Tensor) -> tuple[Any, Any]:
            with hardware.autocast(args.precision, self.device), hardware.attention_kernels(self.device):
                logits = step_model(**batch).logits
            loss = self.loss_fn(logits, targets)
            accelerator.backward(scaler.scale(loss))
            return loss, logits

        # Sums stay on the device and are read once at the end of the epoch: reading one per step would make the
        # host wait for the device at every step.
        total_loss = torch.zeros((), device=accelerator.device)
        correct = torch.zeros((), device=accelerator.device, dtype=torch.long)
        tokens = torch.zeros((), device=accelerator.device, dtype=torch.long)
        samples = padded = 0
        started = time.perf_counter()
        progress = Progress(
            len(loader), f"epoch {epoch}/{args.num_epochs}", args.progress and accelerator.is_local_main_process
        )
        for step, batch in enumerate(loader, start=1):
            self.governor.tick()
            with accelerator.accumulate(model):
                targets = batch.pop("labels")
                loss, logits = self.runner.run(forward_backward, batch, targets)
                if accelerator.sync_gradients:
                    scaler.unscale_(optimizer)
                    if args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
            n = targets.shape[0]
            total_loss += loss.detach().float() * n
            correct += self.job.task.train_correct(logits.detach(), targets)
            samples += n
            tokens += batch["attention_mask"].sum()
            padded += batch["input_ids"].numel()  # shapes are known on the host: no wait
            progress.update(step, (total_loss / samples).item() if progress.wants_loss(step) else None)
        progress.close()
        return _epoch_stats(accelerator, (total_loss, correct, tokens), samples, padded, time.perf_counter() - started)

    def finish(self) -> LoopState:
        """Where the loop ended, the model holding the best epoch's weights."""
        self.state.train_seconds = time.perf_counter() - self.started
        if self.best_weights is not None:
            self.accelerator.unwrap_model(self.model).load_state_dict(self.best_weights, strict=False)
        return self.state


def _epoch_stats(accelerator: Any, sums: tuple[torch.Tensor, ...], samples: int, padded: int, seconds: float) -> dict:
    """One epoch's loss, accuracy and counts over every process, read from the device once."""
    total_loss, correct, tokens = sums
    local = torch.stack([total_loss, correct.float(), torch.tensor(float(samples), device=accelerator.device)])
    counts = accelerator.reduce(local, "sum")
    return {
        "loss": (counts[0] / counts[2]).item(),
        "accuracy": (counts[1] / counts[2]).item(),
        "samples": int(counts[2].item()),
        "tokens": int(tokens) * accelerator.num_processes,
        "padded_tokens": padded * accelerator.num_processes,
        "seconds": seconds,
    }


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
    threads: list[int] = field(default_factory=list)  # the CPU thread counts training ran with (`ThreadGovernor`)


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


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable weights: small for adapters, so keeping the best epoch's costs little."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _better(score: float, best: float, metric: str) -> bool:
    return score > best if HIGHER_IS_BETTER[metric] else score < best


def _epoch_line(record: EpochRecord, num_epochs: int) -> str:
    return (
        f"epoch {record.epoch}/{num_epochs}: train loss {record.train_loss:.4f} acc {record.train_accuracy:.4f} | "
        f"val loss {record.val_loss:.4f} acc {record.val_accuracy:.4f} f1 {record.val_f1:.4f} "
        f"({record.epoch_seconds:.1f} s)"
    )


def _plain_optimizer(optimizer: Any, accelerator: Any) -> Any:
    """The torch optimizer inside Accelerate's wrapper, where the wrapper does nothing loratune needs.

    Why: `AcceleratedOptimizer.step` asks importlib twice per call whether the `lomo_optim` package is installed,
    and its `zero_grad` inspects a signature: host time that a GPU step of a small model waits for (measured with
    `benchmarks/profile_step.py --cprofile`; benchmarks/README.md, "Figures behind the code"). The rest of its
    work is for XLA, LOMO, Accelerate's GradScaler (loratune scales fp16 itself: `hardware.grad_scaler`) and
    DeepSpeed / FSDP, which keep it.
    """
    from accelerate.utils import DistributedType

    plain = (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
    inner = getattr(optimizer, "optimizer", None)
    if inner is None or accelerator.distributed_type not in plain or accelerator.scaler is not None:
        return optimizer
    return inner
