"""The recipe: data, model, evaluate before, train, evaluate after, save, report; one stage per line in `run`.
The CLI, the Python API and the notebook all call `run`.

What the stages share (the config, the run folder, the device, the data, Accelerate) lives on one `RunState`,
set as the stages produce it, so each stage takes the state and what it works on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed

from loratune.config import Config
from loratune.data import checks as data_checks
from loratune.data.batches import pin_memory, tokenize
from loratune.data.sources import recorded_path
from loratune.errors import RunError
from loratune.model import hardware
from loratune.model.build import BuiltModel, build_model
from loratune.model.names import display_name, portable_model_name, resolve_model_name
from loratune.progress import announce
from loratune.quiet import quiet_libraries
from loratune.runs import files, weights
from loratune.runs.folder import RunFolder
from loratune.runs.lock import run_lock
from loratune.schema import EpochRecord
from loratune.training import movement, preflight
from loratune.training.after import evaluate_after, evaluate_before, examine, scoring_loaders
from loratune.training.checkpoint import verify_checkpoint
from loratune.training.compiling import resolve_compile
from loratune.training.loop import LoopState, TrainingJob, train
from loratune.training.losses import compute_class_weights
from loratune.training.schedule import optimizer_steps
from loratune.training.state import RunState
from loratune.training.summary import save_results, summarise

log = logging.getLogger(__name__)


def run(cfg: Config, resume: bool = False, on_epoch_end: Callable[[EpochRecord], None] | None = None) -> RunFolder:
    """Evaluate before, train, evaluate after, and write the run folder.

    Args:
        cfg: a validated config (see `load_config`).
        resume: continue the unfinished run in `cfg.train.output_dir` from its last end-of-epoch checkpoint.
        on_epoch_end: called with each epoch's record, validation scores included (`loratune tune` prunes with
            it; an exception it raises stops the run).

    Returns:
        The finished run folder.

    Raises:
        LoratuneError: subclasses for bad data, models or settings, before anything slow where possible.
    """
    state = RunState.start(cfg, resume)
    state.on_epoch_end = on_epoch_end
    with contextlib.ExitStack() as scope:
        scope.enter_context(quiet_libraries())
        state.splits = preflight.check_training(cfg, state.output_dir)  # data, output, max_length: before the model
        checks = _check_data(state)
        state.class_weights = _class_weights(state)  # a bad weights file fails before the model loads
        state.accelerator = _start_accelerator(state)
        scope.enter_context(run_lock(state.output_dir, enabled=state.is_main))  # only the main process writes
        # with --overwrite, the new run is built beside the earlier one, which a failure leaves whole
        scope.enter_context(state.destination.building(enabled=state.is_main))
        _open_run_dir(state)
        set_seed(cfg.train.seed)
        _say(state, f"loading {display_name(resolve_model_name(cfg.model.name_or_path, state.output_dir))}")
        built = _build(state)
        state.cfg = _resolve(state, built)
        _start_tracking(state)
        _say(state, "tokenising")
        _tokenize(state, built.tokenizer)
        _finish_checks(state, checks)
        model = _place(state, built.model)
        loaders = scoring_loaders(state, built.tokenizer.pad_token_id)
        before = evaluate_before(state, model, loaders)
        loop = _train(state, model, built)
        _save_model(state, model, built)
        counts = built.parameter_counts()
        if loop is not None:
            # From here on the saved model is scored, as `loratune evaluate` and `predict` score it: let go of the
            # trained one, and of Accelerate's hold on it and its optimizer, so the two are never in (GPU) memory
            # together.
            model = built = None
            state.accelerator.free_memory()  # collects garbage too
            hardware.return_freed_memory()
        after = evaluate_after(state, model, loaders, loop, before)
        _say(state, "comparing before and after: calibration, confidence intervals, the predictions table")
        findings = examine(state, before, after)
        summary = summarise(state, counts, before, after, loop, findings)
        _end_tracking(state, after.metrics)
        if state.is_main:
            _say(state, "writing the run folder: predictions, plots, report")
            summary = save_results(state, summary, findings, after)
            state.destination.put_in_place()  # just after COMPLETE: the new run replaces the earlier one
        state.accelerator.wait_for_everyone()
        return RunFolder(state.output_dir, state.cfg, state.splits.labels, summary)


def _say(state: RunState, text: str) -> None:
    """A phase's line on stderr (main process, progress on), so that no phase of a run passes in silence."""
    announce(text, state.cfg.train.progress and state.is_main)


def _check_data(state: RunState) -> dict[str, Any]:
    """The data checks that need no tokenizer; under --strict-data a warning stops the run before the model loads."""
    splits = state.splits
    named = {name: getattr(splits, name) for name in data_checks.SPLITS}
    checks = data_checks.compute_data_checks(named, splits.task, splits.dropped, splits.labels)
    if state.cfg.data.strict:
        data_checks.check_strict(checks, "the data checks")
    return checks


def _finish_checks(state: RunState, checks: dict[str, Any]) -> None:
    checks = data_checks.add_truncation(checks, state.truncated, state.cfg.data.max_length)
    if state.is_main:
        files.save_data_checks(state.run_dir, checks)
        print(data_checks.format_block(checks), file=sys.stderr, flush=True)
    if state.cfg.data.strict:
        data_checks.check_strict(checks, str(state.run_dir / files.DATA_CHECKS_FILE))


def _class_weights(state: RunState) -> np.ndarray | None:
    splits = state.splits
    return compute_class_weights(
        state.cfg.train.class_weights, np.asarray(splits.train["label"]), splits.labels, splits.task
    )


def _start_accelerator(state: RunState) -> Accelerator:
    # No mixed_precision here: Accelerate would fix it for the whole process; `hardware.autocast` does it per run.
    train = state.cfg.train
    return Accelerator(
        cpu=state.device == "cpu",
        # pinned batches (`batches.pin_memory`) copied without waiting, so the copy overlaps the step before
        dataloader_config=DataLoaderConfiguration(non_blocking=pin_memory(state.device)),
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        log_with=None if train.report_to == "none" else train.report_to,
        project_dir=str(state.run_dir / files.LOGS_DIR),
    )


def _open_run_dir(state: RunState) -> None:
    if state.resume:
        files.check_resumable(state.run_dir)
        verify_checkpoint(state.run_dir)  # before anything is written to the run folder
    elif state.is_main:
        files.prepare_run_dir(state.run_dir)
    state.accelerator.wait_for_everyone()
    if not state.run_dir.is_dir():
        # Another machine's process made the folder: every process reads the saved model back from it to score
        # "after" (and a resumed run's checkpoint), so all of them must see it.
        raise RunError(
            f"{state.run_dir} is not on storage this machine sees (the first process created it on its own "
            "machine); put --output-dir on storage every machine shares (NFS, a cluster file system)."
        )


def _build(state: RunState) -> BuiltModel:
    splits = state.splits
    # A multi-label head starts at the labels' base rates (see `model.build.start_at_prior`).
    prior = splits.task.label_prior(np.asarray(splits.train["label"]))
    return build_model(
        state.cfg.model, state.cfg.lora, splits.labels, state.device, state.output_dir, label_prior=prior
    )


def _resolve(state: RunState, built: BuiltModel) -> Config:
    """The config as run: every `auto` and default decided, so the saved config repeats this run exactly."""
    cfg, method = state.cfg, state.cfg.lora.method
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, path=recorded_path(cfg.data.path), task=state.splits.task.name),
        model=dataclasses.replace(
            cfg.model, name_or_path=portable_model_name(built.name_or_path, state.output_dir), pooling=built.pooling
        ),
        lora=dataclasses.replace(
            cfg.lora, target_modules=built.target_modules or None, modules_to_save=built.head_modules
        ),
        train=dataclasses.replace(
            cfg.train,
            output_dir=str(state.output_dir),  # where the run ends up, not where it is built
            learning_rate=cfg.train.resolved_learning_rate(method),
            head_learning_rate=cfg.train.resolved_head_learning_rate(method),
            precision=state.dtype,
            device=state.device,
            compile=resolve_compile(cfg.train.compile),
        ),
    )


def _start_tracking(state: RunState) -> None:
    if state.is_main:
        files.save_start(state.run_dir, state.cfg, state.splits.labels)
    if state.cfg.train.report_to != "none":
        state.accelerator.init_trackers(state.output_dir.name, config=_flat(state.cfg.to_dict()))


def _tokenize(state: RunState, tokenizer: Any) -> None:
    with state.accelerator.main_process_first():  # the main process fills the datasets cache, the others read it
        for name in ("train", "validation", "test"):
            split = getattr(state.splits, name)
            state.tokenised[name], state.truncated[name] = tokenize(split, tokenizer, state.cfg.data.max_length)


def _place(state: RunState, model: Any) -> Any:
    hardware.prepare_for_training(model, state.dtype, state.accelerator.distributed_type.value)
    return model.to(state.accelerator.device)


def _train(state: RunState, model: Any, built: BuiltModel) -> LoopState | None:
    """The training loop, each epoch's record sent to the trackers; None for a method that trains nothing."""
    if not state.method.trains:
        return None
    accelerator = state.accelerator
    job = TrainingJob(
        train_ds=state.tokenised["train"],
        val_ds=state.tokenised["validation"],
        labels=state.splits.labels,
        task=state.splits.task,
        pad_token_id=built.tokenizer.pad_token_id,
        checkpoint_dir=state.run_dir,
        on_epoch_end=lambda record: _epoch_ended(state, record),
        class_weights=state.class_weights,
        head_modules=built.head_modules,
    )
    start = movement.snapshot(model)
    loop = train(model, job, state.cfg.train, accelerator)
    # Before anything is saved: a run whose weights did not move (or became NaN) must never look finished.
    steps = optimizer_steps(len(job.train_ds), state.cfg.train) * loop.epoch // state.cfg.train.num_epochs
    movement.check_trained(accelerator.unwrap_model(model), start, built.head_modules, steps)
    return loop


def _epoch_ended(state: RunState, record: EpochRecord) -> None:
    state.accelerator.log(dataclasses.asdict(record), step=record.epoch)
    if state.on_epoch_end is not None:
        state.on_epoch_end(record)


def _save_model(state: RunState, model: Any, built: BuiltModel) -> None:
    if state.is_main:
        unwrapped = state.accelerator.unwrap_model(model)
        weights.save_model(state.run_dir, unwrapped, state.method, built.tokenizer, state.cfg.model.name_or_path)
    state.accelerator.wait_for_everyone()


def _end_tracking(state: RunState, after: Any) -> None:
    if state.cfg.train.report_to != "none":
        state.accelerator.log({f"test_{k}": getattr(after, k) for k in ("accuracy", "precision", "recall", "f1")})
        state.accelerator.end_training()


def _flat(nested: dict[str, dict[str, Any]]) -> dict[str, Any]:
    # Trackers take flat scalar values.
    return {
        f"{s}.{k}": (v if isinstance(v, (int, float, str, bool)) else str(v))
        for s, d in nested.items()
        for k, v in d.items()
    }
