"""The runs a server answers for: each a named adapter with its own tokenizer, labels, temperature and thresholds.
Runs that share a base model share one copy of its weights in memory: each run's model merged as `loratune
predict` runs it, holding only the weights its adapter changed, where those are few; else one unmerged model with
every run's adapter and head by name (PEFT's multi-adapter loading), one forward pass for a batch that mixes them
where the method allows."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loratune.data.batches import MODEL_INPUTS, bounded_columns
from loratune.errors import ConfigError, RunError
from loratune.export.onnx_folder import OnnxExport, open_scorer
from loratune.model import hardware
from loratune.model.names import resolve_model_name
from loratune.quiet import peft_warnings_hidden
from loratune.runs.folder import RunFolder
from loratune.serving.api import VALIDATION, ClientError

# Names that read well in a URL, a JSON field and a Prometheus label.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(eq=False)
class ServedAdapter:
    """One run as the server answers for it.

    Attributes:
        name: what requests call it (`"adapter"` in `/predict`, `"model"` in `/v1/classify`).
        run: its run folder, or its ONNX export (scored by ONNX Runtime).
        group: the model in memory that scores it.
        peft_name: its name among the runs sharing a base (the key of its merged model, or its adapter's name in
            PEFT's shared model); None where it has a model to itself.
    """

    name: str
    run: RunFolder | OnnxExport
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
    same. Several runs of an adapter method on one base: `merged` holds each run's model as predict runs it, all
    sharing the tensors their merges left alone (see `_merged_copies`), one pass per adapter; where a merge
    changes too much of the model for that, `model` is the base once with each run's adapter and head by its own
    name (PEFT `load_adapter`), a batch mixing them scored in one pass through PEFT's `adapter_names` where the
    method supports it (`mixed`), one sub-batch per adapter otherwise.
    """

    def __init__(
        self,
        model: Any,
        adapters: list[ServedAdapter],
        device: str,
        dtype: str,
        mixed: bool = False,
        merged: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.adapters, self.device, self.dtype = model, adapters, device, dtype
        self.base = adapters[0].run.model_name
        self.pad_token_id = adapters[0].tokenizer.pad_token_id or 0
        self.mixed = mixed  # one pass for a batch mixing adapters (PEFT's `adapter_names`), else one per adapter
        self.merged = merged  # peft_name -> that run's merged model
        # A forward pass's fixed cost in padded tokens' worth of work (measured at startup: `server._warm_up`), by
        # which the batcher weighs one more pass against padding.
        self.overhead_tokens = 64.0
        # What each further adapter in a mixed pass costs, in the same units (PEFT applies each adapter's layers to
        # its rows in turn).
        self.adapter_tokens = 0.0
        for adapter in adapters:
            adapter.group = self

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.adapters]

    def logits(self, batch: dict[str, torch.Tensor], peft_names: list[str | None], num_labels: int) -> torch.Tensor:
        """(batch, seq_len) token tensors and each row's adapter, all with `num_labels` labels -> (batch,
        num_labels) float32 logits."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode(), hardware.attention_kernels(self.device):
            if len(self.adapters) == 1:
                return self.model(**batch).logits.float().cpu()
            if self.merged is not None:  # the batcher gives each of these models batches of its own texts only
                (name,) = set(peft_names)
                return self.merged[name](**batch).logits.float().cpu()
            if self.mixed:
                return self.model(**batch, adapter_names=peft_names).logits.float().cpu()
            out = torch.empty((len(peft_names), num_labels))
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


def _group_key(run: Any, device: str, precision: str) -> tuple:
    """Runs with equal keys can share one base model: same base weights, method, pooling, padding and dtype (their
    heads may classify into different numbers of labels). A method that saves a whole model or a head (full, head,
    none), and an ONNX export, key on their own folder."""
    if isinstance(run, OnnxExport):
        return ("onnx", str(run.folder.resolve()), run.precision)
    cfg = run.config
    dtype = hardware.inference_precision(precision, device, cfg.train.precision)
    if not run.method.adapter:
        return ("own", str(run.run_dir.resolve()), dtype)
    base = resolve_model_name(cfg.model.name_or_path, run.run_dir)
    return (base, run.method.name, cfg.model.pooling, run.tokenizer.pad_token_id, dtype)


def load_groups(
    pairs: list[tuple[str, Path]],
    device: str = "auto",
    precision: str = "auto",
    trust_unverified: bool = False,
    backend: str = "auto",
) -> list[ModelGroup]:
    """Every run folder (or ONNX export, per `backend`: `export.onnx_folder.open_scorer`) opened and checked before
    any model loads, then one model per group of runs that can share a base (see `_group_key`).

    Raises:
        ConfigError: for a folder `backend` cannot run.
        RunError: naming the first folder that is missing, unfinished, damaged or lacks its thresholds.
    """
    runs = [(name, open_scorer(path, backend, trust_unverified)) for name, path in pairs]
    if any(isinstance(run, OnnxExport) for _, run in runs) and (device not in ("auto", "cpu") or precision != "auto"):
        raise ConfigError(
            "--device and --precision choose PyTorch's models; an ONNX export runs as exported, on the CPU."
        )
    device = hardware.resolve_device(device)
    for _, run in runs:
        if run.task.needs_thresholds and run.thresholds is None:
            raise RunError(f"{run.run_dir} is a multi-label run without its thresholds; rerun training.")
    grouped: dict[tuple, list[ServedAdapter]] = {}
    for name, run in runs:
        grouped.setdefault(_group_key(run, device, precision), []).append(ServedAdapter(name, run))
    return [_load_group(key, adapters, device, precision) for key, adapters in grouped.items()]


def _load_group(key: tuple, adapters: list[ServedAdapter], device: str, precision: str) -> ModelGroup:
    first = adapters[0].run
    dtype = key[-1]
    if isinstance(first, OnnxExport):  # an ONNX Runtime session of its own
        return ModelGroup(first.model(), adapters, "cpu", dtype)
    if len(adapters) == 1:
        return ModelGroup(first.inference_model(device, precision), adapters, device, dtype)
    merged = _merged_copies(adapters, device, dtype)
    if merged is not None:
        return ModelGroup(merged[adapters[0].peft_name], adapters, device, dtype, merged=merged)
    model, mixed = _shared_model(adapters)
    model = hardware.prepare_for_inference(model.to(device), dtype)
    return ModelGroup(model, adapters, device, dtype, mixed)


# How much memory the runs' merged models may add to the first one's weights, together: at most twice its bytes and
# at most 1 GiB, a trade of memory for speed that pays on models of BERT's size; beyond it (large models, many runs,
# LoRA on every linear layer) they share one unmerged model instead (`_shared_model`).
MERGED_COPIES_SHARE = 2.0
MERGED_COPIES_BYTES = 1 << 30


def _merged_copies(adapters: list[ServedAdapter], device: str, dtype: str) -> dict[str, Any] | None:
    """Each run's model as `loratune predict` runs it (adapter merged, cast to `dtype`), every weight its merge
    left unchanged replaced by the first model's very tensor, so only the adapted projections and the head are
    held once per run; None when the runs' own weights would exceed the budget above.

    Why merged copies rather than PEFT's mixed batches alone: PEFT applies each adapter of a mixed batch to its
    rows in turn in every adapted layer, and a pass mixing 8 adapters cost 1.4x a merged pass of the same 32 texts
    (MiniLM, bf16, measured on this project's 2-core CPU), while a pass per adapter over its own texts, each
    padded to its own longest, cost no more than the merged pass. Merged, each answer is also predict's own."""
    models: dict[str, Any] = {}
    reference: dict[str, torch.nn.Parameter] = {}
    budget, spent = 0.0, 0
    for i, adapter in enumerate(adapters):
        run = adapter.run
        model = hardware.prepare_for_inference(run.method.for_inference(run.trained_model(device)), dtype)
        if not reference:
            reference = dict(model.named_parameters(remove_duplicate=False))
            size = sum(p.numel() * p.element_size() for p in reference.values())
            budget = min(MERGED_COPIES_SHARE * size, MERGED_COPIES_BYTES)
        else:
            own = _share_unchanged(model, reference)
            spent += own
            if spent > budget or own * (len(adapters) - 1) > budget:  # the rest will not fit either
                return None
        adapter.peft_name = f"adapter_{i}"
        models[adapter.peft_name] = model
    return models


def _share_unchanged(model: Any, reference: dict[str, torch.nn.Parameter]) -> int:
    """Point each parameter of `model` equal to `reference`'s of the same name at that tensor (freeing its own);
    -> the bytes of the parameters left its own."""
    own = 0
    for name, param in model.named_parameters(remove_duplicate=False):
        same = reference.get(name)
        if same is not None and same.shape == param.shape and same.dtype == param.dtype and torch.equal(same, param):
            path, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(path), leaf, same)
        else:
            own += param.numel() * param.element_size()
    return own


def _shared_model(adapters: list[ServedAdapter]) -> tuple[Any, bool]:
    """One base model with every run's adapter and head under its own PEFT name, and whether a batch can mix them.

    A batch can mix them where the method allows (`Method.shares_base_in_batch`) and PEFT can split each head
    module by adapter: it splits only a few module types (`MIXABLE_TYPES`), so a head such as BERT's pooler (a
    Linear, then tanh) is loaded as its Linear instead (`_mixable_heads`), which holds the very same weights.
    """
    from peft import PeftConfig, PeftModel, load_peft_weights, set_peft_model_state_dict

    from loratune.runs import weights

    first = adapters[0].run
    folders = [a.run.run_dir / a.run.method.saved_in for a in adapters]
    for adapter in adapters:
        run = adapter.run
        weights.check_weights(run.run_dir, run.method, run.labels, run.trust_unverified)
    base = weights.load_base(first.run_dir, first.config, first.labels, first.tokenizer)
    configs = [PeftConfig.from_pretrained(str(folder)) for folder in folders]
    heads = [_mixable_heads(base, list(c.modules_to_save or [])) for c in configs]
    mixed = first.method.shares_base_in_batch and all(h is not None for h in heads)
    model = None
    with peft_warnings_hidden():
        for i, (adapter, folder, config) in enumerate(zip(adapters, folders, configs, strict=True)):
            adapter.peft_name = f"adapter_{i}"  # PEFT names become module names: the served name may hold '.' or '-'
            if mixed:
                config.modules_to_save = heads[i]
            config.inference_mode = True
            if model is None:  # the PEFT class for the task (sequence classification), the weights checked
                model = PeftModel.from_pretrained(base, str(folder), adapter_name=adapter.peft_name, config=config)
                continue
            model.add_adapter(adapter.peft_name, config)
            tensors = load_peft_weights(str(folder), device="cpu")
            _fit_heads(model, adapter.peft_name, tensors)
            loaded = set_peft_model_state_dict(model, tensors, adapter.peft_name)
            missing = [k for k in loaded.missing_keys if f".{adapter.peft_name}." in k]  # left at their initial values
            if loaded.unexpected_keys or missing:
                odd = (loaded.unexpected_keys or missing)[:2]
                raise RunError(f"{folder} does not fit the base model its config names ({odd}); retrain it.")
    model.eval()
    return model, mixed


# The module types whose copies PEFT's `modules_to_save` can apply per row of a mixed batch (peft.utils.other,
# `ModulesToSaveWrapper._mixed_batch_forward`).
MIXABLE_TYPES = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def _mixable_heads(model: Any, names: list[str]) -> list[str] | None:
    """`modules_to_save` as modules PEFT can mix: one of `MIXABLE_TYPES` as it is; a module whose weights all lie
    in such children (BERT's pooler: dense, tanh; RoBERTa's head: dense, dropout, out_proj) as those children, which
    load the same saved weights; None when a module has weights elsewhere (a LayerNorm)."""
    mixable = []
    for name in names:
        for full, module in model.named_modules():
            if not (full == name or full.endswith("." + name)):
                continue
            if isinstance(module, MIXABLE_TYPES):
                mixable.append(name)
                continue
            children = [(n, c) for n, c in module.named_modules() if n and isinstance(c, MIXABLE_TYPES)]
            covered = {f"{n}.{p}" for n, c in children for p, _ in c.named_parameters()}
            if {p for p, _ in module.named_parameters()} - covered:
                return None
            mixable += [f"{name}.{n}" for n, _ in children]
    return sorted(set(mixable))


def _fit_heads(model: Any, peft_name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Give an adapter's copy of each output layer the shape its saved weights have: PEFT copies the base's head,
    made for the first run's labels, and a run with another number of labels shares the base all the same."""
    from peft.utils import ModulesToSaveWrapper

    for path, module in model.named_modules():
        if not isinstance(module, ModulesToSaveWrapper) or peft_name not in module.modules_to_save:
            continue
        copy, weight = module.modules_to_save[peft_name], tensors.get(f"{path}.weight")
        if isinstance(copy, torch.nn.Linear) and weight is not None and weight.shape != copy.weight.shape:
            module.modules_to_save[peft_name] = torch.nn.Linear(
                weight.shape[1], weight.shape[0], bias=copy.bias is not None
            )
