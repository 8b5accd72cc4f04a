"""The weights of the training loss (`train.class_weights`); the loss itself is the task's (`Task.loss`).

Written here rather than left to the model: transformers' classifiers compute an unweighted loss, and weighting it
means replacing it (the standard answer to "class weights with Trainer" is to subclass `compute_loss`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loratune.config.checks import read_class_weights
from loratune.errors import ConfigError
from loratune.task import Task


def compute_class_weights(spec: str, train_labels: np.ndarray, labels: list[str], task: Task) -> np.ndarray | None:
    """The loss weight of each label (in `labels` order) for `train.class_weights`, or None for `none`.

    `balanced`: for single-label data (label ids, shape (n,)) each class weighs n / (classes x its count), so every
    class contributes alike (scikit-learn's `compute_class_weight`); for multi-label data (multi-hot, shape
    (n, labels)) each label's positive examples weigh negatives / positives (`pos_weight` of binary
    cross-entropy), so a rare label's few positives count as much as its many negatives. A file maps label names
    to weights; labels it leaves out weigh 1.

    Raises:
        ConfigError: for a missing or unreadable file, an unknown label, or a weight that is not a finite positive
            number.
    """
    if spec == "none":
        return None
    train_labels = np.asarray(train_labels)
    if spec == "balanced":
        return task.class_weights(train_labels, len(labels))
    return _weights_from_file(Path(spec).expanduser(), labels)


def _weights_from_file(path: Path, labels: list[str]) -> np.ndarray:
    given = read_class_weights(path)  # each weight finite and positive
    unknown = sorted(name for name in given if name not in labels)
    if unknown:
        raise ConfigError(f"{path} weighs label(s) {unknown} that the data lacks; its labels: {labels}.")
    weights = np.ones(len(labels))
    for name, value in given.items():
        weights[labels.index(name)] = value
    return weights
