"""The weights of the training loss (`train.class_weights`); the loss itself is the task's (`Task.loss`).

Written here rather than left to the model: transformers' classifiers compute an unweighted loss, and weighting it
means replacing it (the standard answer to "class weights with Trainer" is to subclass `compute_loss`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from loratune.errors import ConfigError, first_line
from loratune.task import Task


def compute_class_weights(spec: str, train_labels: np.ndarray, labels: list[str], task: Task) -> np.ndarray | None:
    """The loss weight of each label (in `labels` order) for `train.class_weights`, or None for `none`.

    `balanced`: for single-label data (label ids, shape (n,)) each class weighs n / (classes x its count), so every
    class contributes alike (scikit-learn's `compute_class_weight`); for multi-label data (multi-hot, shape
    (n, labels)) each label's positive examples weigh negatives / positives (`pos_weight` of binary
    cross-entropy), so a rare label's few positives count as much as its many negatives. A file maps label names
    to weights; labels it leaves out weigh 1.

    Raises:
        ConfigError: for a missing or unreadable file, an unknown label, or a weight that is not positive.
    """
    if spec == "none":
        return None
    train_labels = np.asarray(train_labels)
    if spec == "balanced":
        return task.class_weights(train_labels, len(labels))
    return _weights_from_file(Path(spec).expanduser(), labels)


def _weights_from_file(path: Path, labels: list[str]) -> np.ndarray:
    if not path.is_file():
        raise ConfigError(
            f"train.class_weights={str(path)!r} is neither none, balanced nor a file; give a JSON or YAML file "
            "mapping each label to its weight."
        )
    try:
        text = path.read_text(encoding="utf-8")
        given = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"Could not read class weights from {path}: {first_line(error)}.") from None
    if not isinstance(given, dict):
        raise ConfigError(f'{path} must map label names to weights, e.g. {{"spam": 5.0, "ham": 1.0}}.')
    unknown = sorted(str(k) for k in given if str(k) not in labels)
    if unknown:
        raise ConfigError(f"{path} weighs label(s) {unknown} that the data lacks; its labels: {labels}.")
    weights = np.ones(len(labels))
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{path}: the weight of {name!r} must be a positive number, got {value!r}.")
        weights[labels.index(str(name))] = float(value)
    return weights
