"""The end of a run: its summary (`files.METRICS_FILE`), and the files written last, in order, with `COMPLETE` after
everything else."""

from __future__ import annotations

import dataclasses
from typing import Any

from loratune.model import hardware
from loratune.model.names import display_name
from loratune.report.model_card import write_adapter_card
from loratune.report.run_report import write_report
from loratune.runs import files, manifest, weights
from loratune.schema import DataSummary, RunSummary
from loratune.scoring.findings import Findings
from loratune.training.after import After, Scored
from loratune.training.loop import LoopState
from loratune.training.state import RunState


def summarise(
    state: RunState, counts: dict[str, int], before: Scored, after: After, loop: LoopState | None, findings: Findings
) -> RunSummary:
    """Everything the run's summary file records of it."""
    cfg, splits = state.cfg, state.splits
    weights_by_label = None if state.class_weights is None else _by_label(splits.labels, state.class_weights)
    return RunSummary(
        method=cfg.lora.method,
        labels=splits.labels,
        before=before.metrics,
        after=after.metrics,
        task=splits.task.name,
        class_weights=weights_by_label,
        history=loop.history if loop else [],
        best_epoch=loop.best_epoch if loop else 0,
        best_metric=f"val_{cfg.train.best_metric}",
        stopped_early=bool(loop and loop.stopped_early),
        model=cfg.model.name_or_path,
        model_name=display_name(cfg.model.name_or_path),
        eval_split=splits.eval_name,
        train_seconds=loop.train_seconds if loop else 0.0,
        **counts,
        peak_memory_mb=hardware.peak_memory_mb(cfg.train.device),
        precision=cfg.train.precision,
        after_precision=cfg.train.precision,
        device=cfg.train.device,
        num_processes=state.accelerator.num_processes,
        throughput=after.throughput,
        after_fp32_accuracy=after.fp32_accuracy,
        data=_data_summary(state),
        changes=findings.changes,
        calibration=findings.calibration,
        significance=findings.significance,
    )


def _data_summary(state: RunState) -> DataSummary:
    cfg, splits = state.cfg, state.splits
    return DataSummary(
        source=cfg.data.path,
        train_size=len(splits.train),
        validation_size=len(splits.validation),
        test_size=len(splits.test),
        label_counts=splits.label_counts(),
        truncated=state.truncated,
        max_length=cfg.data.max_length,
    )


def save_results(state: RunState, summary: RunSummary, findings: Findings, after: After) -> RunSummary:
    """Predictions, temperature, thresholds, the summary, the report, and the COMPLETE marker last (the weights
    are saved)."""
    run_dir = state.run_dir
    files.save_predictions(run_dir, findings.table)
    if after.decisions.thresholds is not None:
        files.save_thresholds(run_dir, _by_label(summary.labels, after.decisions.thresholds))
    files.save_calibration(run_dir, findings.reliability)
    summary = dataclasses.replace(summary, adapter_size_bytes=weights.artifact_size_bytes(run_dir, state.method))
    files.save_summary(run_dir, summary)
    write_report(run_dir)
    write_adapter_card(run_dir)
    manifest.seal(run_dir)  # the answer files' checksums, written last but COMPLETE
    files.mark_complete(run_dir)
    return summary


def _by_label(labels: list[str], values: Any) -> dict[str, float]:
    return {label: float(v) for label, v in zip(labels, values, strict=True)}
