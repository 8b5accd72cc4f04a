"""The recipe: data, model, evaluate before, train, evaluate after, save, report; one stage per line in `run`.
The CLI, the Python API and the notebook all call `run`."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed

from loratune.config import Config
from loratune.data import checks as data_checks
from loratune.data.batches import build_eval_loader, longest_first
from loratune.data.sources import recorded_path
from loratune.data.splits import Splits, tokenize
from loratune.inference.predictor import inference_model
from loratune.model import hardware
from loratune.model.build import BuiltModel, build_model, display_name, portable_model_name
from loratune.quiet import quiet_libraries
from loratune.report.run_report import write_report
from loratune.runs import files, integrity, weights
from loratune.runs.folder import Run
from loratune.runs.lock import run_lock
from loratune.schema import DataSummary, Metrics, RunSummary, Throughput
from loratune.scoring.calibration import negative_log_likelihood
from loratune.scoring.findings import Findings, compute_findings, fit_decisions
from loratune.scoring.metrics import metrics_from_logits, predict_logits
from loratune.training import preflight
from loratune.training.checkpoint import verify_checkpoint
from loratune.training.compiling import resolve_compile
from loratune.training.loop import LoopState, train
from loratune.training.losses import build_loss, compute_class_weights

log = logging.getLogger(__name__)


def run(cfg: Config, resume: bool = False) -> Run:
    """Evaluate before, train, evaluate after, and write the run folder.

    Args:
        cfg: a validated config (see `load_config`).
        resume: continue the unfinished run in `cfg.train.output_dir` from its last end-of-epoch checkpoint.

    Returns:
        The finished `Run`.

    Raises:
        LoratuneError: subclasses for bad data, models or settings, before anything slow where possible.
    """
    run_dir = files.run_dir_for(cfg)
    device = hardware.resolve_device(cfg.train.device)
    dtype = hardware.resolve_precision(cfg.train.precision, device)
    with contextlib.ExitStack() as scope:
        scope.enter_context(quiet_libraries())
        splits = preflight.check_training(cfg, run_dir)  # data, output folder, max_length: before the model loads
        checks = _check_data(cfg, splits)
        class_weights = _class_weights(cfg, splits)  # a bad weights file fails before the model loads
        accelerator = _start_accelerator(cfg, device, run_dir)
        scope.enter_context(run_lock(run_dir, enabled=accelerator.is_main_process))  # only the main one writes
        _open_run_dir(run_dir, resume, cfg.train.overwrite, accelerator)
        set_seed(cfg.train.seed)
        built = _build(cfg, splits, device, run_dir)
        cfg = _resolve(cfg, built, splits, run_dir, device, dtype)
        _start_tracking(cfg, accelerator, run_dir, splits.labels)
        tokenised, truncated = _tokenize(splits, built.tokenizer, cfg.data.max_length, accelerator)
        _finish_checks(cfg, checks, truncated, run_dir, accelerator)
        model = _place(built.model, dtype, accelerator)
        eval_data, val_data = _scoring_loaders(cfg, splits, tokenised, built, device, accelerator)
        before, logits_before = _evaluate_before(model, *eval_data, splits.labels, accelerator, dtype, run_dir, resume)
        state = _train(cfg, model, splits, tokenised, built, accelerator, class_weights, run_dir)
        _save_model(run_dir, accelerator.unwrap_model(model), cfg, built, accelerator)
        counts = built.parameter_counts()
        if state is not None:
            # From here on the saved model is scored, as `loratune evaluate` and `predict` score it: let go of the
            # trained one, and of Accelerate's hold on it and its optimizer, so the two are never in (GPU) memory
            # together.
            model = built = None
            accelerator.free_memory()
        after = _evaluate_after(run_dir, model, eval_data, val_data, accelerator, dtype, state, before, logits_before)
        findings = _examine(cfg, after, splits, logits_before)
        summary = _summarise(
            cfg, counts, splits, truncated, before, after, state, accelerator, findings, class_weights
        )
        _end_tracking(cfg, accelerator, after.metrics)
        if accelerator.is_main_process:
            summary = _save(run_dir, cfg, summary, findings, after)
        accelerator.wait_for_everyone()
        return Run(run_dir, summary, cfg)


def _check_data(cfg: Config, splits: Splits) -> dict[str, Any]:
    """The data checks that need no tokenizer; under --strict-data a warning stops the run before the model loads."""
    named = {name: getattr(splits, name) for name in data_checks.SPLITS}
    checks = data_checks.compute_data_checks(named, splits.dropped, splits.labels)
    if cfg.data.strict:
        data_checks.check_strict(checks, "the data checks")
    return checks


def _finish_checks(cfg: Config, checks: dict, truncated: dict, run_dir: Path, accelerator: Accelerator) -> None:
    checks = data_checks.add_truncation(checks, truncated, cfg.data.max_length)
    if accelerator.is_main_process:
        files.save_data_checks(run_dir, checks)
        print(data_checks.format_block(checks), file=sys.stderr, flush=True)
    if cfg.data.strict:
        data_checks.check_strict(checks, str(run_dir / files.DATA_CHECKS_FILE))


def _class_weights(cfg: Config, splits: Splits) -> np.ndarray | None:
    return compute_class_weights(cfg.train.class_weights, np.asarray(splits.train["label"]), splits.labels)


def _start_accelerator(cfg: Config, device: str, run_dir: Path) -> Accelerator:
    # No mixed_precision here: Accelerate would fix it for the whole process; `hardware.autocast` does it per run.
    return Accelerator(
        cpu=device == "cpu",
        # pinned batches (`hardware.pin_memory`) copied without waiting, so the copy overlaps the step before
        dataloader_config=DataLoaderConfiguration(non_blocking=hardware.pin_memory(device)),
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        log_with=None if cfg.train.report_to == "none" else cfg.train.report_to,
        project_dir=str(run_dir / files.LOGS_DIR),
    )


def _open_run_dir(run_dir: Path, resume: bool, overwrite: bool, accelerator: Accelerator) -> None:
    if resume:
        files.check_resumable(run_dir)
        verify_checkpoint(run_dir)  # before anything is written to the run folder
    elif accelerator.is_main_process:
        files.prepare_run_dir(run_dir, overwrite)
    accelerator.wait_for_everyone()


def _build(cfg: Config, splits: Splits, device: str, run_dir: Path) -> BuiltModel:
    # A multi-label head starts at the labels' base rates (see modeling.build_model).
    prior = np.asarray(splits.train["label"]).mean(axis=0) if splits.task == "multi" else None
    return build_model(cfg.model, cfg.lora, splits.labels, device, run_dir, label_prior=prior)


def _resolve(cfg: Config, built: BuiltModel, splits: Splits, run_dir: Path, device: str, dtype: str) -> Config:
    """The config as run: every `auto` and default decided, so the saved config repeats this run exactly."""
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, path=recorded_path(cfg.data.path), task=splits.task),
        model=dataclasses.replace(
            cfg.model, name_or_path=portable_model_name(built.name_or_path, run_dir), pooling=built.pooling
        ),
        lora=dataclasses.replace(
            cfg.lora, target_modules=built.target_modules or None, modules_to_save=built.head_modules
        ),
        train=dataclasses.replace(
            cfg.train,
            output_dir=str(run_dir),
            learning_rate=cfg.train.resolved_learning_rate(cfg.lora.method),
            head_learning_rate=cfg.train.resolved_head_learning_rate(cfg.lora.method),
            precision=dtype,
            device=device,
            compile=resolve_compile(cfg.train.compile),
        ),
    )


def _start_tracking(cfg: Config, accelerator: Accelerator, run_dir: Path, labels: list[str]) -> None:
    if accelerator.is_main_process:
        files.save_start(run_dir, cfg, labels)
    if cfg.train.report_to != "none":
        accelerator.init_trackers(run_dir.name, config=_flat(cfg.to_dict()))


def _tokenize(splits: Splits, tokenizer: Any, max_length: int, accelerator: Accelerator) -> tuple[dict, dict]:
    tokenised, truncated = {}, {}
    with accelerator.main_process_first():  # the main process fills the datasets cache, the others read it
        for name in ("train", "validation", "test"):
            tokenised[name], truncated[name] = tokenize(getattr(splits, name), tokenizer, max_length)
    return tokenised, truncated


def _place(model: Any, dtype: str, accelerator: Accelerator) -> Any:
    hardware.prepare_for_training(model, dtype, accelerator.distributed_type.value)
    return model.to(accelerator.device)


def _scoring_loaders(cfg: Config, splits: Splits, tokenised: dict, built: BuiltModel, device: str, accelerator):
    """(loader, dataset) of the split scored before and after, and of validation (for the temperature and the
    thresholds): sorted batches, as `loratune evaluate` runs them."""

    def loader(ds: datasets.Dataset) -> tuple[Any, datasets.Dataset]:
        pad_id, processes = built.tokenizer.pad_token_id, accelerator.num_processes
        return accelerator.prepare(build_eval_loader(ds, cfg.train.eval_batch_size, pad_id, device, processes)), ds

    return loader(tokenised[splits.eval_name]), loader(tokenised["validation"])


def _train(
    cfg: Config, model, splits: Splits, tokenised: dict, built: BuiltModel, accelerator, class_weights, run_dir
):
    """The training loop, each epoch's record sent to the trackers; None for method none, which trains nothing."""
    if cfg.lora.method == "none":
        return None
    return train(
        model,
        tokenised["train"],
        tokenised["validation"],
        splits.labels,
        cfg.train,
        accelerator,
        built.tokenizer.pad_token_id,
        checkpoint_dir=run_dir,
        on_epoch_end=lambda record: accelerator.log(dataclasses.asdict(record), step=record.epoch),
        loss_fn=build_loss(splits.task == "multi", class_weights),
        head_modules=built.head_modules,
    )


def _score(model, loader, ds: datasets.Dataset, accelerator, dtype: str, names: list[str]) -> tuple[Metrics, Any]:
    """Metrics as `evaluate` computes them (in the loader's order, so even the loss's last digit agrees with
    `loratune evaluate`), and the (n, num_labels) logits in the dataset's order, for the predictions table."""
    logits, y_true = predict_logits(model, loader, accelerator, dtype)
    metrics = metrics_from_logits(logits, y_true, names)
    order = longest_first(list(ds["length"]))  # the order the eval loader runs in; gathering keeps it
    in_order = np.empty_like(logits)
    in_order[order] = logits
    assert (np.asarray(ds["label"])[order] == y_true).all(), "eval batches came back in an unexpected order"
    return metrics, in_order


def _evaluate_before(model, loader, ds, labels, accelerator, dtype: str, run_dir: Path, resume: bool):
    """The model as loaded, scored once (metrics and logits): a resumed run reads what its first start wrote."""
    saved = files.load_before(run_dir) if resume else None
    if saved is None:
        saved = _score(model, loader, ds, accelerator, dtype, labels)
        if accelerator.is_main_process:
            files.save_before(run_dir, *saved)
    log.info("before: accuracy %.4f, f1 %.4f", saved[0].accuracy, saved[0].f1)
    return saved


def _save_model(run_dir: Path, model: Any, cfg: Config, built: BuiltModel, accelerator: Accelerator) -> None:
    if accelerator.is_main_process:
        weights.save_model(run_dir, model, cfg.lora.method, built.tokenizer)
    accelerator.wait_for_everyone()


@dataclass
class _After:
    """The "after" scores of the model `predict` would load (adapter merged, held in the run's precision), its
    eval and validation logits, and the decisions fitted on validation (temperature; multi-label thresholds) that
    `predict` applies."""

    metrics: Metrics
    logits: np.ndarray
    val_logits: np.ndarray
    temperature: float
    thresholds: np.ndarray | None
    fp32_accuracy: float | None
    throughput: Throughput


def _evaluate_after(run_dir, model, eval_data, val_data, accelerator, dtype: str, state, before, logits_before):
    """The saved model, scored as `loratune evaluate` and `predict` run it by default (adapter merged, the whole
    model in the run's precision, the same sorted batches, the temperature and thresholds fitted on validation), so
    `loratune evaluate` reproduces "after" exactly; and its fp32 accuracy (what an export gives) when the run's
    precision is lower. Method none saved nothing: its "after" is its "before", decided as it was.

    Args:
        eval_data, val_data: (loader, tokenised dataset) of the eval and validation splits.
    """
    names = list(before.per_class)
    if state is None:  # calibrated all the same, so the report shows how far the untrained model can be trusted
        val_logits = _score(model, *val_data, accelerator, dtype, names)[1]
        temperature, _ = fit_decisions(val_logits, np.asarray(val_data[1]["label"]))
        return _After(before, logits_before, val_logits, temperature, None, None, _throughput(None, 0, 0.0))
    scorer, *_ = inference_model(run_dir, accelerator.device, "fp32", finished=False)
    fp32_logits = _score(scorer, *eval_data, accelerator, "fp32", names)[1] if dtype != "fp32" else None
    scorer = hardware.prepare_for_inference(scorer, dtype)  # the same weights load_for_inference casts
    started = time.perf_counter()
    _, logits = _score(scorer, *eval_data, accelerator, "fp32", names)  # no autocast: the model holds its dtype
    throughput = _throughput(state, len(eval_data[1]), time.perf_counter() - started)
    val_logits = logits if val_data[1] is eval_data[1] else _score(scorer, *val_data, accelerator, "fp32", names)[1]
    y_val = np.asarray(val_data[1]["label"])
    _check_reload(state, negative_log_likelihood(val_logits, y_val))  # the loss alone, as the loop measured it
    temperature, thresholds = fit_decisions(val_logits, y_val)
    y_true = np.asarray(eval_data[1]["label"])
    metrics = metrics_from_logits(logits, y_true, names, temperature, thresholds)
    fp32 = None if fp32_logits is None else metrics_from_logits(fp32_logits, y_true, names, temperature, thresholds)
    return _After(metrics, logits, val_logits, temperature, thresholds, fp32 and fp32.accuracy, throughput)


def _check_reload(state: LoopState, saved_val_loss: float) -> None:
    kept = next((r for r in state.history if r.epoch == state.best_epoch), None)
    if kept is not None and (problem := integrity.reload_mismatch(saved_val_loss, kept.val_loss, kept.epoch)):
        log.warning(problem)


def _examine(cfg: Config, after: _After, splits: Splits, logits_before: np.ndarray) -> Findings:
    """The predictions table, calibration and significance, from the logits the scoring already computed."""
    eval_ds = splits.eval
    return compute_findings(
        list(eval_ds["text"]),
        list(eval_ds["text_pair"]) if splits.is_pair else None,
        np.asarray(eval_ds["label"]),
        logits_before,
        after.logits,
        after.val_logits,
        np.asarray(splits.validation["label"]),
        splits.labels,
        temperature=after.temperature,
        thresholds=after.thresholds,
        seed=cfg.train.seed,
    )


def _throughput(state: LoopState | None, eval_samples: int, eval_seconds: float) -> Throughput:
    eval_rate = eval_samples / eval_seconds if state and eval_seconds > 0 else 0.0
    if not state or state.step_seconds <= 0:
        return Throughput(eval_samples_per_s=eval_rate)
    return Throughput(
        eval_samples_per_s=eval_rate,
        train_samples_per_s=state.train_samples / state.step_seconds,
        train_tokens_per_s=state.train_tokens / state.step_seconds,
        padding_ratio=state.padded_tokens / max(state.train_tokens, 1),
        compile_seconds=state.compile_seconds or None,
    )


def _summarise(
    cfg, counts: dict[str, int], splits, truncated, before, after: _After, state, accelerator, findings, class_weights
) -> RunSummary:
    return RunSummary(
        method=cfg.lora.method,
        labels=splits.labels,
        before=before,
        after=after.metrics,
        task=splits.task,
        class_weights=None if class_weights is None else _by_label(splits.labels, class_weights),
        history=state.history if state else [],
        best_epoch=state.best_epoch if state else 0,
        best_metric=f"val_{cfg.train.best_metric}",
        stopped_early=bool(state and state.stopped_early),
        model=cfg.model.name_or_path,
        model_name=display_name(cfg.model.name_or_path),
        eval_split=splits.eval_name,
        train_seconds=state.train_seconds if state else 0.0,
        **counts,
        peak_memory_mb=hardware.peak_memory_mb(cfg.train.device),
        precision=cfg.train.precision,
        after_precision=cfg.train.precision,
        device=cfg.train.device,
        num_processes=accelerator.num_processes,
        throughput=after.throughput,
        after_fp32_accuracy=after.fp32_accuracy,
        data=DataSummary(
            source=cfg.data.path,
            train_size=len(splits.train),
            validation_size=len(splits.validation),
            test_size=len(splits.test),
            label_counts=splits.label_counts(),
            truncated=truncated,
            max_length=cfg.data.max_length,
        ),
        changes=findings.changes,
        calibration=findings.calibration,
        significance=findings.significance,
    )


def _end_tracking(cfg: Config, accelerator: Accelerator, after: Metrics) -> None:
    if cfg.train.report_to != "none":
        accelerator.log({f"test_{k}": getattr(after, k) for k in ("accuracy", "precision", "recall", "f1")})
        accelerator.end_training()


def _save(run_dir: Path, cfg: Config, summary: RunSummary, findings: Findings, after: _After) -> RunSummary:
    """Predictions, temperature, thresholds, the summary, the report, and the COMPLETE marker last (the weights
    are saved)."""
    files.save_predictions(run_dir, findings.table)
    if after.thresholds is not None:
        files.save_thresholds(run_dir, _by_label(summary.labels, after.thresholds))
    files.save_calibration(run_dir, findings.reliability)
    size = weights.artifact_size_bytes(run_dir, cfg.lora.method)
    summary = dataclasses.replace(summary, adapter_size_bytes=size)
    files.save_summary(run_dir, summary)
    write_report(run_dir)
    files.mark_complete(run_dir)
    return summary


def _by_label(labels: list[str], values: Any) -> dict[str, float]:
    return {label: float(v) for label, v in zip(labels, values, strict=True)}


def _flat(nested: dict[str, dict[str, Any]]) -> dict[str, Any]:
    # Trackers take flat scalar values.
    return {
        f"{s}.{k}": (v if isinstance(v, (int, float, str, bool)) else str(v))
        for s, d in nested.items()
        for k, v in d.items()
    }
