"""The learning-rate schedule: linear warmup, then linear decay; how many optimizer steps a run makes, and the
refusal of a schedule under which training could not move the weights.
"""

from __future__ import annotations

import math
import os

import torch
from torch.optim.lr_scheduler import LambdaLR

from loratune.config import TrainArgs
from loratune.errors import ConfigError


def optimizer_steps(train_rows: int, args: TrainArgs, processes: int = 1) -> int:
    """Optimizer steps of the whole run: each of `processes` takes its share of the batches (as Accelerate's
    prepared loader deals them out), and every `gradient_accumulation_steps` of them make one step."""
    batches = math.ceil(math.ceil(train_rows / args.batch_size) / processes)
    return math.ceil(batches / args.gradient_accumulation_steps) * args.num_epochs


def launched_processes() -> int:
    """The number of processes a launcher (torchrun, accelerate launch) started, read before Accelerate starts."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, processes: int = 1
) -> LambdaLR:
    """Linear warmup to the learning rate, then linear decay towards zero, over `total_steps` optimizer steps.

    Once prepared by Accelerate the scheduler is stepped `processes` times per optimizer step, so the rate is read
    at (scheduler step // processes): two processes follow the very schedule of one.

    Written here rather than taken from `transformers.get_linear_schedule_with_warmup`, whose first warmup step
    has a learning rate of exactly 0: a run of one optimizer step then trains nothing at all. Here warmup step `s`
    runs at (s + 1) / (warmup + 1) of the rate, and the last step of the decay at 1 / (steps after warmup), so no
    step the run takes has a zero rate.
    """
    warmup = warmup_steps(total_steps, warmup_ratio)

    def factor(tick: int) -> float:
        step = tick // processes
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return LambdaLR(optimizer, factor)


def check_schedule(train_rows: int, args: TrainArgs, processes: int = 1) -> None:
    """Refuse a run whose warmup takes every optimizer step: its rate never reaches the one asked for.

    Raises:
        ConfigError: one line with the counts and the settings that would give the schedule room.
    """
    total = optimizer_steps(train_rows, args, processes)
    warmup = warmup_steps(total, args.warmup_ratio)
    if total > warmup:
        return
    per_step = args.batch_size * args.gradient_accumulation_steps * processes
    accumulated = f" x {args.gradient_accumulation_steps} accumulated" if args.gradient_accumulation_steps > 1 else ""
    accumulated += f" x {processes} processes" if processes > 1 else ""
    smaller = max(1, train_rows // (8 * args.gradient_accumulation_steps))
    raise ConfigError(
        f"{train_rows} training rows in steps of {per_step} (batch size {args.batch_size}{accumulated}) make "
        f"{total} optimizer step(s) over {args.num_epochs} epoch(s), and warmup (train.warmup_ratio="
        f"{args.warmup_ratio}) takes {warmup} of them, so the learning rate is never reached; pass a smaller "
        f"--batch-size (e.g. {min(smaller, args.batch_size)}), more --epochs, or --warmup-ratio 0."
    )
