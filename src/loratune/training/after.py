"""Scoring inside a run: the model as loaded ("before"), the model as saved ("after", scored as `loratune evaluate`
and `predict` load it), the decisions fitted on validation, and what the run found from those logits.

The recipe (`training.recipe`) calls these in order; they share its `RunState`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from loratune.data.batches import build_eval_loader, longest_first
from loratune.model import hardware
from loratune.progress import announce
from loratune.runs import files, integrity
from loratune.runs.folder import RunFolder
from loratune.schema import Metrics, Throughput
from loratune.scoring.changes import Decisions, ScoredSplit
from loratune.scoring.findings import Findings, compute_findings, fit_decisions
from loratune.scoring.inference import predict_logits
from loratune.scoring.metrics import metrics_from_logits
from loratune.training.loop import LoopState
from loratune.training.state import RunState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """A split's metrics and its (n, num_labels) logits in the split's order (for the predictions table)."""

    metrics: Metrics
    logits: np.ndarray


@dataclass(frozen=True)
class SplitLoader:
    """A tokenised split and its loader: sorted batches, as `loratune evaluate` runs them."""

    loader: Any
    dataset: Any

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.dataset["label"])


@dataclass(frozen=True)
class ScoringLoaders:
    """The split scored before and after, and validation (for the temperature and the thresholds)."""

    eval: SplitLoader
    validation: SplitLoader


@dataclass(frozen=True)
class After:
    """The "after" scores of the model `predict` would load (adapter merged, held in the run's precision), its
    eval and validation logits, and the decisions fitted on validation that `predict` applies."""

    metrics: Metrics
    logits: np.ndarray
    val_logits: np.ndarray
    decisions: Decisions
    fp32_accuracy: float | None
    throughput: Throughput


def scoring_loaders(state: RunState, pad_token_id: int) -> ScoringLoaders:
    def loader(name: str) -> SplitLoader:
        ds = state.tokenised[name]
        # not prepared by Accelerate: `predict_logits` deals its batches out to the processes itself
        return SplitLoader(build_eval_loader(ds, state.cfg.train.eval_batch_size, pad_token_id, state.device), ds)

    return ScoringLoaders(loader(state.splits.eval_name), loader("validation"))


def _score(state: RunState, model: Any, data: SplitLoader, dtype: str, what: str) -> Scored:
    """Metrics as `evaluate` computes them (in the loader's order, so even the loss's last digit agrees with
    `loratune evaluate`), and the logits in the dataset's order. `what` names the phase in its progress line."""
    loader, ds = data.loader, data.dataset
    shown = state.cfg.train.progress and state.is_main
    announce(f"{what}: {len(ds):,} texts", shown)
    logits, y_true = predict_logits(model, loader, state.accelerator, dtype, what if shown else None)
    metrics = metrics_from_logits(logits, y_true, state.splits.labels, state.splits.task)
    order = longest_first(list(ds["length"]))  # the order the eval loader runs in; gathering keeps it
    in_order = np.empty_like(logits)
    in_order[order] = logits
    assert (np.asarray(ds["label"])[order] == y_true).all(), "eval batches came back in an unexpected order"
    return Scored(metrics, in_order)


def evaluate_before(state: RunState, model: Any, loaders: ScoringLoaders) -> Scored:
    """The model as loaded, scored once: a resumed run reads what its first start wrote."""
    saved = files.load_before(state.run_dir) if state.resume else None
    scored = (
        Scored(*saved)
        if saved is not None
        else _score(
            state,
            model,
            loaders.eval,
            state.dtype,
            f"scoring the model before training ({state.splits.eval_name} split)",
        )
    )
    if saved is None and state.is_main:
        files.save_before(state.run_dir, scored.metrics, scored.logits)
    log.info("before: accuracy %.4f, f1 %.4f", scored.metrics.accuracy, scored.metrics.f1)
    return scored


def evaluate_after(
    state: RunState, model: Any, loaders: ScoringLoaders, loop: LoopState | None, before: Scored
) -> After:
    """The saved model, scored as `loratune evaluate` and `predict` run it by default (adapter merged, the whole
    model in the run's precision, the same sorted batches, the temperature and thresholds fitted on validation), so
    `loratune evaluate` reproduces "after" exactly; and its fp32 accuracy (what an export gives) when the run's
    precision is lower. A method that trains nothing saved nothing: its "after" is its "before", decided as it was.
    """
    task = state.splits.task
    if loop is None:  # calibrated all the same, so the report shows how far the untrained model can be trusted
        val_logits = _score(state, model, loaders.validation, state.dtype, "calibrating on validation").logits
        fitted = fit_decisions(val_logits, loaders.validation.labels, task)
        decisions = Decisions(fitted.temperature)
        return After(before.metrics, before.logits, val_logits, decisions, None, _throughput(None, 0, 0.0))
    saved = RunFolder.open(state.run_dir, finished=False, scored=False)
    scorer = saved.trained_model(state.accelerator.device)
    scorer = saved.method.for_inference(scorer)
    split = state.splits.eval_name
    fp32 = f"scoring the trained model in fp32, as an export runs it ({split} split)"
    fp32_logits = _score(state, scorer, loaders.eval, "fp32", fp32).logits if state.dtype != "fp32" else None
    scorer = hardware.prepare_for_inference(scorer, state.dtype)  # as `RunFolder.inference_model` casts it
    started = time.perf_counter()
    after = f"scoring the trained model ({split} split)"
    logits = _score(state, scorer, loaders.eval, "fp32", after).logits  # no autocast: the model holds its dtype
    throughput = _throughput(loop, len(loaders.eval.dataset), time.perf_counter() - started)
    same = loaders.validation.dataset is loaders.eval.dataset
    calibrating = "scoring validation, to calibrate and choose the decisions"
    val_logits = logits if same else _score(state, scorer, loaders.validation, "fp32", calibrating).logits
    y_val = loaders.validation.labels
    _check_reload(loop, task.negative_log_likelihood(val_logits, y_val))  # the loss alone, as the loop measured it
    decisions = fit_decisions(val_logits, y_val, task)
    metrics = _decided(state, logits, loaders, decisions)
    fp32 = None if fp32_logits is None else _decided(state, fp32_logits, loaders, decisions)
    return After(metrics, logits, val_logits, decisions, fp32 and fp32.accuracy, throughput)


def _decided(state: RunState, logits: np.ndarray, loaders: ScoringLoaders, decisions: Decisions) -> Metrics:
    """The eval split's metrics with the run's decisions (temperature; thresholds) applied, as `predict` applies
    them."""
    y_true = loaders.eval.labels
    task, labels = state.splits.task, state.splits.labels
    return metrics_from_logits(logits, y_true, labels, task, decisions.temperature, decisions.thresholds)


def _check_reload(loop: LoopState, saved_val_loss: float) -> None:
    kept = next((r for r in loop.history if r.epoch == loop.best_epoch), None)
    if kept is not None and (problem := integrity.reload_mismatch(saved_val_loss, kept.val_loss, kept.epoch)):
        log.warning(problem)


def examine(state: RunState, before: Scored, after: After) -> Findings:
    """The predictions table, calibration and significance, from the logits the scoring already computed."""
    splits = state.splits
    eval_ds, val_ds = splits.eval, splits.validation
    split = ScoredSplit(
        texts=list(eval_ds["text"]),
        text_pairs=list(eval_ds["text_pair"]) if splits.is_pair else None,
        y_true=np.asarray(eval_ds["label"]),
        logits_before=before.logits,
        logits_after=after.logits,
    )
    validation = ScoredSplit(
        list(val_ds["text"]), None, np.asarray(val_ds["label"]), after.val_logits, after.val_logits
    )
    return compute_findings(split, validation, splits.labels, splits.task, after.decisions, seed=state.cfg.train.seed)


def _throughput(loop: LoopState | None, eval_samples: int, eval_seconds: float) -> Throughput:
    eval_rate = eval_samples / eval_seconds if loop and eval_seconds > 0 else 0.0
    if not loop or loop.step_seconds <= 0:
        return Throughput(eval_samples_per_s=eval_rate)
    return Throughput(
        eval_samples_per_s=eval_rate,
        train_samples_per_s=loop.train_samples / loop.step_seconds,
        train_tokens_per_s=loop.train_tokens / loop.step_seconds,
        padding_ratio=loop.padded_tokens / max(loop.train_tokens, 1),
        compile_seconds=loop.compile_seconds or None,
        threads=loop.threads or None,
    )
