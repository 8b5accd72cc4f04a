"""What a run measured, as typed records: the schema of a run folder's metrics file (`runs.files.METRICS_FILE`).

The writer (`training.summary`), the reader (`runs.files.load_summary`), the report, `load_run`, export and the tests'
fixtures all use these classes, so a key is named in one place. No torch and no files here: `from_dict` checks
the shape and types of parsed JSON and raises `SchemaError`, which the reader turns into a one-line `RunError`
naming the file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

# 2: each method's weights in a folder of their own (head/ for head-only), with checksums; the task recorded.
FORMAT_VERSION = 2
# How a label set is written as one string (the predictions file, predict's CSV, the data checks): "anger|joy".
SET_SEPARATOR = "|"
T = TypeVar("T")


class SchemaError(ValueError):
    """Parsed JSON that does not have the shape of a schema record; the message names the key."""


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


# A confusion matrix (and each example's probability of every label in the predictions table) is kept for runs of
# at most this many labels: at 5,000 classes one matrix is 25 million counts, hundreds of MB of JSON that nobody
# can read. Past it `confusion_matrix` is [] and the per-class scores stay complete.
DETAILED_LABELS = 100


@dataclass(frozen=True)
class Metrics:
    """Scores of one model on one split (see `scoring.metrics.compute_metrics`); averages are macro.

    Multi-label runs: `accuracy` is subset accuracy (the whole label set right), precision/recall/f1 are macro over
    labels, `per_class` is per label, `confusion_matrix` is empty, and the micro/samples averages and Hamming loss
    are filled in. Single-label runs fill in `balanced_accuracy` (the mean of per-class recall).
    """

    accuracy: float
    precision: float
    recall: float
    f1: float
    per_class: dict[str, ClassScores]
    # rows = true label, columns = predicted label; [] for multi-label or past DETAILED_LABELS labels
    confusion_matrix: list[list[int]]
    num_samples: int
    loss: float | None = None
    balanced_accuracy: float | None = None
    micro_precision: float | None = None
    micro_recall: float | None = None
    micro_f1: float | None = None
    samples_precision: float | None = None
    samples_recall: float | None = None
    samples_f1: float | None = None
    hamming_loss: float | None = None


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch: training scores, validation scores, the learning rate at its end."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    val_precision: float
    val_recall: float
    val_f1: float
    learning_rate: float
    epoch_seconds: float

    @classmethod
    def from_scores(cls, epoch: int, train: dict[str, float], val: Metrics, **rest: float) -> EpochRecord:
        scores = {f"val_{k}": getattr(val, k) for k in ("loss", "accuracy", "precision", "recall", "f1")}
        return cls(epoch=epoch, train_loss=train["loss"], train_accuracy=train["accuracy"], **scores, **rest)


@dataclass(frozen=True)
class Throughput:
    eval_samples_per_s: float = 0.0
    train_samples_per_s: float | None = None
    train_tokens_per_s: float | None = None
    padding_ratio: float | None = None  # padded tokens / real tokens in training batches
    compile_seconds: float | None = None  # the first compiled training step, compilation included
    # The CPU thread counts training ran with, in order; more than one: float sums were ordered differently, so
    # the same seed can differ in the last digits (train.deterministic keeps one). None: not recorded.
    threads: list[int] | None = None


@dataclass(frozen=True)
class DataSummary:
    source: str | None = None
    train_size: int = 0
    validation_size: int = 0
    test_size: int = 0
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> label -> rows
    truncated: dict[str, int] = field(default_factory=dict)  # split -> texts cut to max_length
    max_length: int | None = None


@dataclass(frozen=True)
class Changes:
    """Example-level before/after on the eval split; the four counts add up to its size."""

    fixed: int = 0  # wrong before, right after
    broken: int = 0  # right before, wrong after
    still_wrong: int = 0
    still_right: int = 0


@dataclass(frozen=True)
class Calibration:
    """Expected calibration error (top-label, equal-width bins) on the eval split, and the fitted temperature."""

    temperature: float = 1.0  # fitted on `fitted_on` after training; logits / temperature give calibrated scores
    fitted_on: str = "validation"
    ece_before: float | None = None
    ece_after: float | None = None
    ece_after_calibrated: float | None = None
    n_bins: int = 15


@dataclass(frozen=True)
class Significance:
    """95% percentile-bootstrap intervals ([low, high]) and McNemar's exact test of before against after."""

    confidence: float = 0.95
    n_resamples: int = 0
    accuracy_before: list[float] = field(default_factory=list)
    accuracy_after: list[float] = field(default_factory=list)
    f1_before: list[float] = field(default_factory=list)
    f1_after: list[float] = field(default_factory=list)
    mcnemar_p: float | None = None  # exact two-sided p-value over the fixed and broken examples


@dataclass(frozen=True)
class RunSummary:
    """Everything the metrics file holds: before and after scores, history, timings, sizes, the data."""

    method: str
    labels: list[str]
    before: Metrics
    after: Metrics
    task: str = "single"  # or "multi": a set of labels per text (`loratune.task`)
    class_weights: dict[str, float] | None = None  # the loss weight of each label (multi: of its positives)
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: str = "val_f1"
    stopped_early: bool = False
    model: str = ""
    model_name: str = ""
    eval_split: str = "test"
    train_seconds: float = 0.0
    total_params: int = 0
    trainable_params: int = 0
    trainable_params_lora: int = 0
    peak_memory_mb: float | None = None
    adapter_size_bytes: int | None = None
    precision: str = "fp32"
    after_precision: str | None = None  # the precision "after" was scored in, as `loratune evaluate` scores it
    after_fp32_accuracy: float | None = None  # when after_precision is lower: what fp32 (an export) scores
    device: str = "cpu"
    num_processes: int = 1
    throughput: Throughput = field(default_factory=Throughput)
    data: DataSummary = field(default_factory=DataSummary)
    changes: Changes | None = None
    calibration: Calibration | None = None
    significance: Significance | None = None
    format_version: int = FORMAT_VERSION

    @property
    def trained(self) -> bool:
        """False for the untrained baseline (method none), whose "after" is its "before"."""
        from loratune.model.methods import method_of  # torch-free: the table's names and settings

        return method_of(self.method).trains

    @property
    def seconds_per_epoch(self) -> float | None:
        return sum(h.epoch_seconds for h in self.history) / len(self.history) if self.history else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> RunSummary:
        return from_dict(cls, raw)


def to_dict(record: Any) -> dict[str, Any]:
    """A record as plain JSON-ready data."""
    return dataclasses.asdict(record)


def from_dict(cls: type[T], raw: Any, where: str = "") -> T:
    """Build the dataclass `cls` from parsed JSON, checking every field's type; unknown keys are ignored.

    Raises:
        SchemaError: naming the first key that is missing or has the wrong type.
    """
    if not isinstance(raw, dict):
        raise SchemaError(f"{where or 'the top level'} should be an object, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name in raw:
            values[f.name] = _convert(raw[f.name], hints[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError(f"key {key!r} is missing")
    return cls(**values)


def _convert(value: Any, annotation: Any, key: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(f"{key!r} should be a list, got {_kind(value)}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{key!r} should be an object, got {_kind(value)}")
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation in (str, bool) and isinstance(value, annotation):
        return value
    raise SchemaError(f"{key!r} should be {annotation.__name__}, got {_kind(value)}")


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"
