"""The task: one label per text (single) or a set of labels per text (multi), decided once from the data.

A `Task` owns everything that differs between the two: how labels are stored (a class id, or a multi-hot row),
the training loss, the activation (softmax, or a sigmoid per label), the decision (the most probable class, or
every label at or above its threshold, fitted on validation), when an example counts as right, what its accuracy
is called, the loss a temperature is fitted to, and the shape of `predict`'s answer. Every other module asks the
run's task (`task_of(name)`) and never tests the shape of a label itself; `tests/test_layout.py` checks that.

No torch at import time: `loss` imports it when a run trains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from loratune.errors import ConfigError, DataError
from loratune.schema import SET_SEPARATOR

# A multi-label decision threshold where none was chosen (see `loratune.thresholds` for how they are chosen).
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Task:
    """What differs between single- and multi-label classification; `SINGLE` and `MULTI` are the two tasks."""

    name: str  # "single" or "multi", as the run's config (data.task) and summary (task) record it
    accuracy_name: str  # what `Metrics.accuracy` measures: accuracy, or subset accuracy (the whole set right)
    unit: str  # what a label is called in reports: "class" or "label"
    conflict: str  # what texts with conflicting labels carry, in the data checks
    needs_thresholds: bool  # decisions need per-label thresholds (chosen on validation, saved with the run)

    # -- decided by subclasses -------------------------------------------------------------------------------
    def probabilities(self, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        """(n, num_labels) probabilities of logits / `temperature`, float64."""
        raise NotImplementedError

    def decide(self, probs: np.ndarray, thresholds: Sequence[float] | None = None) -> np.ndarray:
        """The predictions: class ids (n,), or booleans (n, num_labels) for the labels at or above threshold."""
        raise NotImplementedError

    def correct(self, predicted: np.ndarray, y_true: np.ndarray) -> np.ndarray:
        """(n,) booleans: whether each prediction is right (a label set only when it is right whole)."""
        raise NotImplementedError

    def at_least_one(self, decided: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """The decisions with an empty label set given its most probable label (`predict --at-least-one`); a task
        that always picks one label has nothing to fill."""
        return decided

    def negative_log_likelihood(self, logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
        """Mean cross-entropy of logits / `temperature` (multi: binary, over every label of every text)."""
        raise NotImplementedError

    def confidence(self, probs: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The predictions a reliability diagram bins, and whether each is right."""
        raise NotImplementedError

    def fit_thresholds(self, probs: np.ndarray, y_true: np.ndarray) -> np.ndarray | None:
        """Decision thresholds chosen on (probs, y_true), or None for a task that has none."""
        raise NotImplementedError

    def loss(self, weights: np.ndarray | None = None) -> Callable[[Any, Any], Any]:
        """loss(logits, targets) for training, in fp32 whatever precision the logits come in, optionally
        weighted per label (`training.losses.compute_class_weights`)."""
        raise NotImplementedError

    def elementwise_loss(self, logits: np.ndarray, y_true: np.ndarray) -> Any:
        """The unweighted loss of every example (multi: of every label of every example), as a torch tensor."""
        raise NotImplementedError

    def train_correct(self, logits: Any, targets: Any) -> Any:
        """A torch count of the examples of a training batch the logits get right (no host sync)."""
        raise NotImplementedError

    def names(self, predicted: np.ndarray, labels: Sequence[str]) -> list[str]:
        """Each prediction as text: the class's name, or the set's names joined by `SET_SEPARATOR`."""
        raise NotImplementedError

    def answer(self, row: Sequence[float], decided: Any, labels: Sequence[str]) -> dict[str, Any]:
        """One text's answer from `predict`: label and score, or the chosen labels and their scores."""
        raise NotImplementedError

    def class_weights(self, train_labels: np.ndarray, num_labels: int) -> np.ndarray:
        """`balanced` loss weights: classes weigh n / (classes x count); labels' positives negatives / positives."""
        raise NotImplementedError

    def label_counts(self, labels: np.ndarray, names: Sequence[str]) -> dict[str, int]:
        """How many texts carry each label."""
        raise NotImplementedError

    def label_prior(self, train_labels: np.ndarray) -> np.ndarray | None:
        """Each label's share of the training texts, where the head starts from it (`model.build.start_at_prior`);
        None where it starts from nothing."""
        raise NotImplementedError


class _SingleLabel(Task):
    def probabilities(self, logits, temperature=1.0):
        from scipy.special import softmax

        return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)

    def decide(self, probs, thresholds=None):
        return np.asarray(probs).argmax(axis=1)

    def correct(self, predicted, y_true):
        return np.asarray(predicted) == np.asarray(y_true)

    def negative_log_likelihood(self, logits, y_true, temperature=1.0):
        from scipy.special import log_softmax

        log_probs = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
        return float(-log_probs[np.arange(len(y_true)), y_true].mean())

    def confidence(self, probs, y_true):
        probs = np.asarray(probs, dtype=np.float64)
        return probs.max(axis=1), probs.argmax(axis=1) == np.asarray(y_true)

    def fit_thresholds(self, probs, y_true):
        return None

    def loss(self, weights=None):
        import torch

        weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)

        def cross_entropy(logits, targets):
            w = None if weight is None else weight.to(logits.device)
            return torch.nn.functional.cross_entropy(logits.float(), targets, weight=w)

        return cross_entropy

    def elementwise_loss(self, logits, y_true):
        import torch

        return torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y_true), reduction="none")

    def train_correct(self, logits, targets):
        return (logits.argmax(-1) == targets).sum()

    def names(self, predicted, labels):
        return [labels[i] for i in np.asarray(predicted, dtype=int)]

    def answer(self, row, decided, labels):
        best = int(decided)
        return {"label": labels[best], "score": row[best], "probabilities": dict(zip(labels, row, strict=True))}

    def class_weights(self, train_labels, num_labels):
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(train_labels)
        weights = np.ones(num_labels)
        weights[present] = compute_class_weight("balanced", classes=present, y=train_labels)
        return weights

    def label_prior(self, train_labels):
        return None

    def label_counts(self, labels, names):
        counts = np.bincount(np.asarray(labels, dtype=int), minlength=len(names))
        return {name: int(n) for name, n in zip(names, counts, strict=True)}


class _MultiLabel(Task):
    def probabilities(self, logits, temperature=1.0):
        from scipy.special import expit

        return expit(np.asarray(logits, dtype=np.float64) / temperature)

    def decide(self, probs, thresholds=None):
        cut = DEFAULT_THRESHOLD if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        return np.asarray(probs, dtype=np.float64) >= cut

    def at_least_one(self, decided, probs):
        filled = np.array(decided, dtype=bool, copy=True)
        empty = ~filled.any(axis=1)
        filled[np.flatnonzero(empty), np.asarray(probs)[empty].argmax(axis=1)] = True
        return filled

    def correct(self, predicted, y_true):
        return (np.asarray(predicted, dtype=bool) == (np.asarray(y_true) > 0.5)).all(axis=1)

    def negative_log_likelihood(self, logits, y_true, temperature=1.0):
        from scipy.special import log_expit

        scaled, y = np.asarray(logits, dtype=np.float64) / temperature, np.asarray(y_true) > 0.5
        return float(-np.where(y, log_expit(scaled), log_expit(-scaled)).mean())

    def confidence(self, probs, y_true):
        # each (text, label) probability is one prediction, right when that label is true
        return np.asarray(probs, dtype=np.float64).ravel(), np.asarray(y_true).ravel() > 0.5

    def fit_thresholds(self, probs, y_true):
        """Each label's threshold, chosen on (probs, y_true) to maximise its F1 and shrunk toward one shared
        threshold the fewer positives the label has (`loratune.thresholds`: why, and what was measured)."""
        from loratune.thresholds import fit_thresholds

        return fit_thresholds(probs, y_true)

    def loss(self, weights=None):
        import torch

        weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)

        def binary_cross_entropy(logits, targets):
            w = None if weight is None else weight.to(logits.device)
            return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=w)

        return binary_cross_entropy

    def elementwise_loss(self, logits, y_true):
        import torch

        return torch.nn.functional.binary_cross_entropy_with_logits(
            torch.from_numpy(logits).float(), torch.from_numpy(y_true).float(), reduction="none"
        )

    def train_correct(self, logits, targets):
        # the whole label set right, at probability 0.5
        return ((logits > 0) == (targets > 0.5)).all(dim=-1).sum()

    def names(self, predicted, labels):
        rows = np.asarray(predicted, dtype=bool)
        return [SET_SEPARATOR.join(labels[k] for k in np.flatnonzero(row)) for row in rows]

    def answer(self, row, decided, labels):
        chosen = sorted(np.flatnonzero(decided), key=lambda k: -row[k])
        return {
            "labels": [labels[k] for k in chosen],
            "scores": [row[k] for k in chosen],
            "probabilities": dict(zip(labels, row, strict=True)),
        }

    def class_weights(self, train_labels, num_labels):
        positives = np.asarray(train_labels).sum(axis=0)
        return (len(train_labels) - positives) / np.maximum(positives, 1)

    def label_prior(self, train_labels):
        return np.asarray(train_labels).mean(axis=0)

    def label_counts(self, labels, names):
        totals = np.asarray(labels, dtype=np.float32).reshape(len(labels), len(names)).sum(axis=0)
        return {name: int(n) for name, n in zip(names, totals, strict=True)}


SINGLE = _SingleLabel(
    "single", accuracy_name="accuracy", unit="class", conflict="more than one label", needs_thresholds=False
)
MULTI = _MultiLabel(
    "multi", accuracy_name="subset accuracy", unit="label", conflict="differing label sets", needs_thresholds=True
)
TASKS = {task.name: task for task in (SINGLE, MULTI)}


def task_of(name: str) -> Task:
    """The task recorded under `name` ("single" or "multi")."""
    return TASKS[name]


# -- the decision, made once from the data ----------------------------------------------------------------------

# What `data.task` may say: auto decides from the data.
SETTINGS = ("auto", *TASKS)


def check_setting(setting: str, label_columns: list[str] | None) -> None:
    """Refuse a `data.task` that is no task, or that contradicts `data.label_columns` (which are label sets).

    Raises:
        ConfigError: naming the setting and the fix.
    """
    if setting not in SETTINGS:
        raise ConfigError(f"data.task must be one of {list(SETTINGS)}, got {setting!r}.")
    if label_columns is not None and setting == SINGLE.name:
        raise ConfigError("data.label_columns describes multi-label data; drop it or set data.task=multi.")


def holds_sets(feature: Any) -> bool:
    """Whether a label column's feature holds a list per row (names or a multi-hot vector)."""
    from datasets import LargeList, List, Sequence

    return isinstance(feature, (List, Sequence, LargeList))


def task_from_data(train: Any, setting: str, separator: str) -> Task:
    """The task of a dataset, decided once, from its train split as read (column `label`) and `data.task`.

    auto means multi when the labels are lists, or when at least one label holds the separator.

    Raises:
        DataError: for list labels when the task is forced to single.
    """
    from datasets import Value

    feature = train.features["label"]
    if holds_sets(feature):
        if setting == "single":
            raise single_task_refusal(train, "train")
        return MULTI
    if setting != "auto":
        return task_of(setting)
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        return MULTI if any(separator in v for v in train.unique("label") if v) else SINGLE
    return SINGLE


def single_task_refusal(ds: Any, split: str) -> DataError:
    """The error for a split whose labels are lists under a single-label task."""
    sizes = [len(v) for v in ds["label"]]
    if max(sizes) > 1:
        why = f"a row has {max(sizes)} labels"
    elif min(sizes) == 0:
        why = "a row has an empty label set, and a single-label task needs one label per row"
    else:
        why = "each is a list of one name"
    return DataError(
        f"The {split} split's labels are lists ({why}); use --task multi for multi-label data, or give each row "
        "one plain label."
    )
