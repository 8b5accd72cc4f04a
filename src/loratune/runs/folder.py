"""`RunFolder`: the one way to open a run folder. `predict`, `evaluate`, `export`, the report, `compare` and the
Python API all read a run through it, and a server can hold many of them.

Its config, labels and scores are read when it opens; everything else (the predictions table, calibration,
thresholds, the tokenizer, the model) on first use, and checked as it is read (`runs.files`, `runs.weights`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from loratune.config import Config
from loratune.errors import RunError
from loratune.formatting import short_name
from loratune.model import hardware
from loratune.model.methods import Method, method_of
from loratune.quiet import peft_warnings_hidden
from loratune.runs import files, manifest
from loratune.schema import Metrics, RunSummary
from loratune.scoring import changes
from loratune.task import Task, task_of

if TYPE_CHECKING:
    from loratune.inference.predictor import Predictor


class RunFolder:
    """A run folder: its config, labels, task, method and scores, the files its run wrote, and its model.

    Attributes:
        run_dir: the folder.
        config: the resolved config the run ran with (`files.CONFIG_FILE`).
        labels: the label names in id order (`files.LABELS_FILE`).
        summary: the scores and figures of the run (`files.METRICS_FILE`); None while the run has not written it.
        trust_unverified: load its files and weights even where their checksum manifest is missing (with a
            warning); a file that a manifest lists is always verified.
    """

    def __init__(self, path: Path, config: Config, labels: list[str], summary: RunSummary | None) -> None:
        self.run_dir, self.config, self.labels, self.summary = path, config, labels, summary
        self.trust_unverified = False
        self._models: dict[tuple[str, str], Any] = {}

    @classmethod
    def open(
        cls, path: str | Path, finished: bool = True, scored: bool = True, trust_unverified: bool = False
    ) -> RunFolder:
        """Open a run folder: a finished one (with `COMPLETE`), or with `finished=False` one its run is still
        writing (the report, built just before the run completes; with `scored=False`, the recipe scoring the
        model it saved, before its summary exists). `trust_unverified`: see the class.

        Raises:
            RunError: for a missing, unfinished (when `finished`) or damaged folder, or one in an older format.
        """
        path = files.check_run(path) if finished else Path(path)
        summary = files.load_summary(path) if scored else None
        opened = cls(path, files.load_run_config(path), files.load_labels(path), summary)
        opened.trust_unverified = trust_unverified
        if (path / files.COMPLETE).exists():
            manifest.verify(path, trust_unverified)  # after the files parse, so a damaged one is named as such
        return opened

    def __repr__(self) -> str:
        s = self.summary
        if s is None:
            return f"RunFolder({str(self.run_dir)!r}: {self.method.name}, unfinished)"
        return (
            f"RunFolder({str(self.run_dir)!r}: {s.method}, {s.eval_split} accuracy {s.before.accuracy:.4f} -> "
            f"{s.after.accuracy:.4f}, f1 {s.before.f1:.4f} -> {s.after.f1:.4f})"
        )

    # -- what the run is ---------------------------------------------------------------------------------------
    @property
    def task(self) -> Task:
        """The task as the run decided it (its config records it; so does its summary)."""
        return task_of(self.summary.task if self.summary else self.config.data.task)

    @property
    def method(self) -> Method:
        return method_of(self.config.lora.method)

    @property
    def before(self) -> Metrics:
        return self._scores().before

    @property
    def after(self) -> Metrics:
        return self._scores().after

    def _scores(self) -> RunSummary:
        if self.summary is None:
            raise RunError(f"{self.run_dir} has no {files.METRICS_FILE} yet; its run has not finished.")
        return self.summary

    @property
    def model_name(self) -> str:
        summary = self.summary
        return short_name((summary.model_name or summary.model) if summary else self.config.model.name_or_path)

    @property
    def data_name(self) -> str | None:
        """The data set's short name, with its subset when the config names one; None when unknown."""
        path = self.config.data.path or (self.summary.data.source if self.summary else None)
        if not path:
            return None
        subset = self.config.data.subset
        return f"{short_name(path)}/{subset}" if subset else short_name(path)

    # -- the files it wrote, read on first use -----------------------------------------------------------------
    @functools.cached_property
    def config_text(self) -> str:
        return (self.run_dir / files.CONFIG_FILE).read_text(encoding="utf-8")

    @functools.cached_property
    def predictions(self) -> pd.DataFrame | None:
        """The eval split example by example, before and after (`files.PREDICTIONS_FILE`; see `scoring.changes`)."""
        return files.load_predictions(self.run_dir)

    @functools.cached_property
    def calibration(self) -> dict[str, Any] | None:
        return files.load_calibration(self.run_dir)

    @functools.cached_property
    def data_checks(self) -> dict[str, Any] | None:
        return files.load_data_checks(self.run_dir)

    @property
    def temperature(self) -> float:
        """The temperature fitted on validation, which `predict` and the after scores apply (1.0: none)."""
        return float(self.calibration["temperature"]) if self.calibration else 1.0

    @functools.cached_property
    def thresholds(self) -> list[float] | None:
        """The decision thresholds in label order, for a task that decides with them; None otherwise.

        Raises:
            RunError: for thresholds in a run whose task decides without them.
        """
        found = files.load_thresholds(self.run_dir, self.labels)
        if found is not None and not self.task.needs_thresholds:
            path = self.run_dir / files.THRESHOLDS_FILE
            raise RunError(f"{path} holds decision thresholds, but {self.run_dir} is a single-label run; remove it.")
        return found

    def changes(self, kind: str | None = None) -> pd.DataFrame:
        """The predictions with a `change` column: fixed, broken, still_wrong or still_right.

        Args:
            kind: only the examples of this kind, the most confident (after training) first.
        """
        table = self.predictions
        if kind is not None:
            if kind not in (*changes.KINDS, "still_right"):
                raise ValueError(f"kind must be one of {[*changes.KINDS, 'still_right']}, got {kind!r}")
            table = changes.examples(table, kind, limit=None)
        return table.assign(change=changes.kind_of(table))

    # -- the model ---------------------------------------------------------------------------------------------
    # torch, transformers and PEFT are imported by the methods that load a model, so that opening a run folder (for
    # a report, a comparison) stays light.
    @functools.cached_property
    def tokenizer(self) -> Any:
        from loratune.runs import weights

        return weights.load_tokenizer_of(self.run_dir, self.config)

    def trained_model(self, device: Any = "cpu") -> Any:
        """The classifier as training left it (fp32, a PEFT adapter still separate), weights verified first."""
        from loratune.runs import weights

        with peft_warnings_hidden():
            return weights.load_model(
                self.run_dir, self.config, self.labels, self.tokenizer, device, self.trust_unverified
            )

    def inference_model(self, device: Any = "auto", precision: str = "auto") -> Any:
        """The model as scoring runs it, loaded once per device and precision: the adapter merged into the
        weights, the whole model cast to one dtype (no autocast, nothing cast per batch).

        `auto` is the run's own precision where this device runs it fast (`hardware.inference_precision`): the one
        its "after" was scored in, so `loratune evaluate` reproduces it; fp32 gives what an export gives.
        """
        device = hardware.resolve_device(device) if isinstance(device, str) else device  # or a torch device
        dtype = hardware.inference_precision(precision, str(device).split(":")[0], self.config.train.precision)
        key = (str(device), dtype)
        if key not in self._models:
            model = self.method.for_inference(self.trained_model(device))
            self._models[key] = hardware.prepare_for_inference(model, dtype)
        return self._models[key]

    def predictor(self, device: Any = "auto", precision: str = "auto") -> Predictor:
        """A `Predictor` on this run's model (see `inference_model`).

        Raises:
            RunError: for a task that decides with thresholds when the folder lacks them.
        """
        from loratune.inference.predictor import Predictor

        if self.task.needs_thresholds and self.thresholds is None:
            raise RunError(f"{self.run_dir} is a multi-label run without its {files.THRESHOLDS_FILE}; rerun training.")
        return Predictor(self.inference_model(device, precision), self)

    def predict(self, texts: list[str], text_pairs: list[str] | None = None) -> list[dict[str, Any]]:
        """Label and probabilities for each text (see `Predictor.predict`)."""
        return self.predictor().predict(texts, text_pairs)


def load_run(path: str | Path, trust_unverified: bool = False) -> RunFolder:
    """Open a finished run folder (see `RunFolder`; `trust_unverified` loads one whose checksum manifests are
    missing, with a warning).

    Raises:
        RunError: when the folder is missing, unfinished or damaged, or its manifests are missing.
    """
    return RunFolder.open(path, trust_unverified=trust_unverified)
