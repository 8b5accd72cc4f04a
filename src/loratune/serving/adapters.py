"""The runs a server answers for: each a named adapter with its own tokenizer, labels, temperature and thresholds.
Runs that share a base model share one copy of it in memory (PEFT's multi-adapter loading, one adapter and head
each) and, where the method allows, one forward pass for a batch that mixes them."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loratune.data.batches import MODEL_INPUTS, bounded_columns
from loratune.errors import ConfigError, RunError
from loratune.model import hardware
from loratune.model.names import resolve_model_name
from loratune.quiet import peft_warnings_hidden
from loratune.runs.folder import RunFolder
from loratune.serving.api import VALIDATION, ClientError

log = logging.getLogger(__name__)

# Names that read well in a URL, a JSON field and a Prometheus label.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(eq=False)
class ServedAdapter:
    """One run as the server answers for it.

    Attributes:
        name: what requests call it (`"adapter"` in `/predict`, `"model"` in `/v1/classify`).
        run: its run folder.
        group: the model in memory that scores it.
        peft_name: its adapter's name inside a model shared with other runs; None where it has a model to itself.
    """

    name: str
    run: RunFolder
    group: ModelGroup | None = field(default=None, repr=False)
    peft_name: str | None = None

    def __post_init__(self) -> None:
        self.labels: list[str] = list(self.run.labels)
        self.task = self.run.task
        self.temperature = self.run.temperature
        self.thresholds = self.run.thresholds
        self.max_length = self.run.config.data.max_length
        self.tokenizer = self.run.tokenizer
        # Trained on (text, text_pair) rows: a flat list of two strings is then one pair, as TEI reads it.
        self.pair = self.run.config.data.text_pair_column is not None

    def encode(self, texts: list[str], pairs: list[str] | None, truncate: bool) -> list[dict[str, list[int]]]:
        """Token ids per text, as `loratune predict` makes them (cut to `max_length` tokens when `truncate`).

        Raises:
            ClientError: 413 for a text longer than `max_length` tokens when not `truncate`.
        """
        columns, cut = bounded_columns([texts] if pairs is None else [texts, pairs], self.max_length)
        if not truncate and any(cut):
            raise self._too_long(cut.index(True), None)
        encoded = self.tokenizer(*columns, truncation=truncate, max_length=self.max_length, verbose=False)
        ids = encoded["input_ids"]
        if not truncate:
            for i, row in enumerate(ids):
                if len(row) > self.max_length:
                    raise self._too_long(i, len(row))
        keys = [k for k in MODEL_INPUTS if k in encoded]
        return [{k: encoded[k][i] for k in keys} for i in range(len(ids))]

    def _too_long(self, index: int, tokens: int | None) -> ClientError:
        size = f"{tokens:,} tokens" if tokens else "far more tokens than that"
        return ClientError(
            413,
            VALIDATION,
            f"Input {index} has {size}; adapter {self.name!r} reads at most {self.max_length}. Send "
            '"truncate": true to score its start, or shorten it.',
        )

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (temperature applied; a sigmoid per label for a multi-label run)."""
        return self.task.probabilities(logits, self.temperature)

    def decide(self, probs: np.ndarray, at_least_one: bool = False) -> np.ndarray:
        """The decision per text, as `loratune predict` makes it (its thresholds, `--at-least-one`)."""
        decided = self.task.decide(probs, self.thresholds)
        return self.task.at_least_one(decided, probs) if at_least_one else decided

    def describe(self) -> dict[str, Any]:
        """What `/info` tells about it."""
        return {
            "name": self.name,
            "run": str(self.run.run_dir),
            "base_model": self.group.base if self.group else None,
            "method": self.run.method.name,
            "task": self.task.name,
            "id2label": {str(i): label for i, label in enumerate(self.labels)},
            "max_input_length": self.max_length,
            "text_pairs": self.pair,
            "dtype": self.group.dtype if self.group else None,
        }


class ModelGroup:
    """One model in memory and the adapters it answers for.

    One run: the model exactly as `loratune predict` runs it (adapter merged, one dtype), so the answers are the
    same. Several runs of an adapter method on one base: the base once, each run's adapter and head by its own
    name (PEFT `load_adapter`), a batch mixing them scored in one pass through PEFT's `adapter_names` where the
    method supports it, one sub-batch per adapter otherwise.
    """

    def __init__(self, base: str, model: Any, adapters: list[ServedAdapter], device: str, dtype: str) -> None:
        self.base, self.model, self.adapters, self.device, self.dtype = base, model, adapters, device, dtype
        self.num_labels = len(adapters[0].labels)
        self.pad_token_id = adapters[0].tokenizer.pad_token_id or 0
        self.mixed = len(adapters) > 1 and adapters[0].run.method.shares_base_in_batch
        for adapter in adapters:
            adapter.group = self

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.adapters]

    def logits(self, batch: dict[str, torch.Tensor], peft_names: list[str | None]) -> torch.Tensor:
        """(batch, seq_len) token tensors and each row's adapter -> (batch, num_labels) float32 logits."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode(), hardware.attention_kernels(self.device):
            if len(self.adapters) == 1:
                return self.model(**batch).logits.float().cpu()
            if self.mixed:
                try:
                    return self.model(**batch, adapter_names=peft_names).logits.float().cpu()
                except (TypeError, ValueError) as error:  # a head or layer PEFT cannot split by adapter
                    log.warning("one pass per adapter from now on: PEFT cannot mix them (%s)", error)
                    self.mixed = False
            out = torch.empty((len(peft_names), self.num_labels))
            for name in dict.fromkeys(peft_names):
                rows = torch.tensor([i for i, n in enumerate(peft_names) if n == name])
                self.model.set_adapter(name)
                out[rows] = self.model(**{k: v[rows] for k, v in batch.items()}).logits.float().cpu()
            return out


def name_runs(runs: list[str], named: list[str]) -> list[tuple[str, Path]]:
    """(name, folder) per run: `NAME=RUN` as given, else the folder's name.

    Raises:
        ConfigError: for a malformed `NAME=RUN`, a name that is not URL-safe, two runs with one name, or none.
    """
    pairs = [(Path(r).resolve().name, Path(r)) for r in runs]
    for item in named:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--name {item!r} should look like NAME=RUN_FOLDER, e.g. --name sentiment=runs/sst2.")
        pairs.append((name, Path(path)))
    if not pairs:
        raise ConfigError("Nothing to serve; give one or more run folders (loratune serve runs/sst2).")
    seen: dict[str, Path] = {}
    for name, path in pairs:
        if not NAME_PATTERN.fullmatch(name):
            raise ConfigError(
                f"Adapter name {name!r} (from {path}) is not usable in a URL; name it with --name NAME={path} "
                "(letters, digits, '.', '_', '-')."
            )
        if name in seen:
            raise ConfigError(
                f"Two runs would be served as {name!r} ({seen[name]} and {path}); name one with --name NAME={path}."
            )
        seen[name] = path
    return pairs


def _group_key(run: RunFolder, device: str, precision: str) -> tuple:
    """Runs with equal keys can share one base model: same base weights, method, head size, pooling, padding and
    dtype. A method that saves a whole model or a head (full, head, none) keys on its own folder."""
    cfg = run.config
    dtype = hardware.inference_precision(precision, device, cfg.train.precision)
    if not run.method.adapter:
        return ("own", str(run.run_dir.resolve()), dtype)
    base = resolve_model_name(cfg.model.name_or_path, run.run_dir)
    return (base, run.method.name, len(run.labels), cfg.model.pooling, run.tokenizer.pad_token_id, dtype)


def load_groups(
    pairs: list[tuple[str, Path]], device: str = "auto", precision: str = "auto", trust_unverified: bool = False
) -> list[ModelGroup]:
    """Every run folder opened and checked before any model loads, then one model per group of runs that can share
    a base (see `_group_key`).

    Raises:
        RunError: naming the first folder that is missing, unfinished, damaged or lacks its thresholds.
    """
    device = hardware.resolve_device(device)
    runs = [(name, RunFolder.open(path, trust_unverified=trust_unverified)) for name, path in pairs]
    for _, run in runs:
        if run.task.needs_thresholds and run.thresholds is None:
            raise RunError(f"{run.run_dir} is a multi-label run without its thresholds; rerun training.")
    grouped: dict[tuple, list[ServedAdapter]] = {}
    for name, run in runs:
        grouped.setdefault(_group_key(run, device, precision), []).append(ServedAdapter(name, run))
    return [_load_group(key, adapters, device, precision) for key, adapters in grouped.items()]


def _load_group(key: tuple, adapters: list[ServedAdapter], device: str, precision: str) -> ModelGroup:
    from loratune.runs import weights

    first = adapters[0].run
    dtype = key[-1]
    base = first.model_name
    if len(adapters) == 1:
        return ModelGroup(base, first.inference_model(device, precision), adapters, device, dtype)
    model = first.trained_model(device)  # a PeftModel holding the first run's adapter as "default"
    adapters[0].peft_name = "default"
    for i, adapter in enumerate(adapters[1:], start=1):
        run = adapter.run
        weights.check_weights(run.run_dir, run.method, run.labels, run.trust_unverified)
        adapter.peft_name = f"adapter_{i}"  # PEFT names become module names: the served name may hold '.' or '-'
        with peft_warnings_hidden():
            model.load_adapter(str(run.run_dir / run.method.saved_in), adapter_name=adapter.peft_name)
    model = hardware.prepare_for_inference(model.to(device), dtype)
    return ModelGroup(base, model, adapters, device, dtype)
