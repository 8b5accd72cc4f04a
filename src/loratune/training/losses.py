"""The training loss: cross-entropy for single-label tasks, binary cross-entropy per label for multi-label ones,
optionally weighted (`train.class_weights`).

Written here rather than left to the model: transformers' classifiers compute an unweighted loss, and weighting it
means replacing it (the standard answer to "class weights with Trainer" is to subclass `compute_loss`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

from loratune.errors import ConfigError, first_line

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def compute_class_weights(spec: str, train_labels: np.ndarray, labels: list[str]) -> np.ndarray | None:
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
        if train_labels.ndim == 2:
            positives = train_labels.sum(axis=0)
            return (len(train_labels) - positives) / np.maximum(positives, 1)
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(train_labels)
        weights = np.ones(len(labels))
        weights[present] = compute_class_weight("balanced", classes=present, y=train_labels)
        return weights
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


def build_loss(multi_label: bool, weights: np.ndarray | None = None) -> LossFunction:
    """loss(logits, labels): mean cross-entropy over label ids, or mean binary cross-entropy over multi-hot labels.

    Computed in fp32 whatever precision the logits come in, as transformers' own losses are under autocast.
    """
    weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        w = None if weight is None else weight.to(logits.device)
        if multi_label:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=w)
        return torch.nn.functional.cross_entropy(logits.float(), targets, weight=w)

    return loss
