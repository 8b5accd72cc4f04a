"""The method table: one entry per training method (lora, dora, ia3, head, full, none), each saying how the model
is prepared, what trains, what is saved, how it is loaded back, and what an export does with it.

Adding a method is one entry in `METHODS` (and its test): the recipe, the run folder, `predict`, `evaluate`,
`export`, the report and `compare` ask the run's entry (`method_of(name)`) and never compare method names
themselves; `tests/test_layout.py` checks that. PEFT owns the adapters: an entry only chooses PEFT's config.

torch, PEFT and safetensors are imported inside the functions, so `config` can take the method names from here
without loading them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratune.errors import ModelError, RunError, first_line

# Trainable weights of an adapter or head as a share of the model's, at most, for the disk-space check before a
# run: LoRA r=8 on all four attention projections plus the head is 1.3% of all-MiniLM-L6-v2, 1.1% of BERT-base.
ADAPTER_SHARE = 0.03


@dataclass(frozen=True)
class Method:
    """A training method; subclasses below say how each kind prepares, saves and loads a model.

    Attributes:
        name: what `lora.method` and the run folder call it.
        title: how reports name it.
        learning_rate: the default peak learning rate (None: nothing trains).
        head_learning_rate: the newly initialised head's default rate; None: `learning_rate`.
        saved_in: the folder of a run folder that holds what the method trained; None: nothing is saved.
        frozen_base: the pretrained weights stay frozen (their dropout then defaults to 0).
        pools_sentence_models_by_mean: `model.pooling=auto` gives a sentence-transformers model its mean pooling.
        trainable_share: the share of the model's weights it trains, at most (for the disk-space check).
        adapter: its saved weights are a PEFT adapter on the base model (`export --adapter-only` copies it; a
            plain export merges it).
        shares_base_in_batch: several runs of it on one base model can answer one mixed batch (PEFT's
            `adapter_names`, which plain LoRA supports, and DoRA, IA3 and a RoBERTa head in `modules_to_save`
            do not).
        tuned: the settings of its own `loratune tune` searches, besides the learning rate and the schedule.
    """

    name: str
    title: str
    learning_rate: float | None
    head_learning_rate: float | None = None
    saved_in: str | None = None
    frozen_base: bool = True
    pools_sentence_models_by_mean: bool = False
    trainable_share: float = ADAPTER_SHARE
    adapter: bool = False
    shares_base_in_batch: bool = False
    tuned: tuple[str, ...] = ()

    @property
    def trains(self) -> bool:
        return self.learning_rate is not None

    def prepare(self, model: Any, lora_args: Any, head: list[str]) -> tuple[Any, list[str]]:
        """The model ready to train (only what the method trains has requires_grad) and the adapted modules."""
        raise NotImplementedError

    def save(self, model: Any, folder: Path, base_name: str | None = None) -> None:
        """Write what the method trained into `folder` (safetensors only); `base_name` is the base model as the
        run config names it, for files that record their base."""

    def weight_files(self, folder: Path) -> list[str]:
        """The weight files a saved `folder` must hold; each must be listed in its checksums."""
        return sorted(f.name for f in folder.glob("*.safetensors"))

    def saved_num_labels(self, folder: Path) -> int | None:
        """How many labels the saved weights classify into, where they say so; None where they do not."""
        return None

    def load_source(self, folder: Path, base: str) -> str:
        """Where the classifier to attach the saved weights to is loaded from: the base model, or the folder."""
        return base

    def attach(self, model: Any, folder: Path) -> Any:
        """The base classifier with the saved weights in place."""
        return model

    def for_inference(self, model: Any) -> Any:
        """The loaded model as scoring runs it (an adapter merged into the weights)."""
        return model

    def checked_before_loading(self) -> bool:
        """Whether the saved tensors are small enough to check for NaN before the model is built (adapters and
        heads; a full model's weights are checked once loaded)."""
        return self.trainable_share < 1.0


@dataclass(frozen=True)
class Untrained(Method):
    """The model as loaded, evaluated and nothing trained: the "before" of every method, as its own row."""

    def prepare(self, model, lora_args, head):
        model.requires_grad_(False)
        return model, []


def _trainable_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().float().contiguous() for n, p in model.named_parameters() if p.requires_grad}


HEAD_WEIGHTS = "head.safetensors"


@dataclass(frozen=True)
class HeadOnly(Method):
    """A frozen encoder with a trained classification head (and the pooler, where it has one)."""

    def prepare(self, model, lora_args, head):
        from loratune.model.targets import in_head

        for name, param in model.named_parameters():
            param.requires_grad = in_head(name, head)
        return model, []

    def save(self, model, folder, base_name=None):
        from safetensors.torch import save_file

        save_file(_trainable_state(model), folder / HEAD_WEIGHTS)

    def weight_files(self, folder):
        return [HEAD_WEIGHTS]

    def attach(self, model, folder):
        from safetensors.torch import load_file

        unexpected = model.load_state_dict(load_file(folder / HEAD_WEIGHTS), strict=False).unexpected_keys
        if unexpected:
            raise RunError(f"{folder / HEAD_WEIGHTS} holds weights this model lacks: {unexpected[:3]}.")
        return model


@dataclass(frozen=True)
class Full(Method):
    """Every weight trains; the whole classifier is saved in transformers' format."""

    def prepare(self, model, lora_args, head):
        return model, []

    def save(self, model, folder, base_name=None):
        model.save_pretrained(folder, safe_serialization=True)

    def weight_files(self, folder):
        names = super().weight_files(folder)
        if not names:
            raise RunError(f"{folder} holds no .safetensors weights; loratune never loads pickled (.bin) weights.")
        return names

    def saved_num_labels(self, folder):
        import json

        try:
            saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))  # transformers' own file
        except (OSError, ValueError) as error:
            raise RunError(f"{folder / 'config.json'} is missing or damaged ({first_line(error)}).") from None
        return len(saved.get("id2label") or {}) if isinstance(saved, dict) else 0

    def load_source(self, folder, base):
        return str(folder)


@dataclass(frozen=True)
class PeftAdapter(Method):
    """A PEFT adapter on the frozen model; the head layers train in full through PEFT's `modules_to_save`."""

    peft_config: Callable[[Any, Any, list[str], list[str]], Any] | None = None
    default_targets: Callable[[Any, list[str]], list[str]] | None = None

    def prepare(self, model, lora_args, head):
        from peft import get_peft_model

        targets = list(lora_args.target_modules or self.default_targets(model, head))
        try:
            return get_peft_model(model, self.peft_config(model, lora_args, targets, head)), targets
        except ValueError as error:
            raise ModelError(
                f"PEFT could not adapt {targets}: {first_line(error)}. Set lora.target_modules."
            ) from None

    def save(self, model, folder, base_name=None):
        model.save_pretrained(folder, safe_serialization=True)
        if base_name is not None:
            # PEFT records the path the base was loaded from (this machine's venv, for the packaged default): name it
            # as the run config does instead, so the adapter's own config travels with the folder. Rewritten after
            # saving: given a hub id, save_pretrained itself would look the base up, and warn when offline.
            config_file = folder / "adapter_config.json"
            saved = json.loads(config_file.read_text(encoding="utf-8"))
            config_file.write_text(json.dumps({**saved, "base_model_name_or_path": base_name}, indent=2) + "\n")

    def weight_files(self, folder):
        return ["adapter_model.safetensors"]

    def attach(self, model, folder):
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(folder))

    def for_inference(self, model):
        try:
            return model.merge_and_unload()  # PEFT folds B @ A (or IA3's scales) into the base weights
        except AttributeError:
            # PEFT 0.21's IA3 unload stops at a BERT pooler kept in modules_to_save; the layers it reached are
            # merged, the rest still apply their scales, so the model computes the same function unmerged.
            return model


def _lora_config(model: Any, lora_args: Any, targets: list[str], head: list[str], use_dora: bool = False) -> Any:
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora_args.r,
        lora_alpha=lora_args.lora_alpha,
        lora_dropout=lora_args.lora_dropout,
        target_modules=targets,
        modules_to_save=list(head),  # PEFT appends to this list; keep ours intact
        use_dora=use_dora,
        # GPT-2's attention is transformers' Conv1D, whose weight is stored transposed: PEFT would switch this on
        # itself, with a warning per layer.
        fan_in_fan_out=_targets_conv1d(model, targets),
    )


def _targets_conv1d(model: Any, targets: list[str]) -> bool:
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(module, Conv1D) and name.split(".")[-1] in targets for name, module in model.named_modules())


def _dora_config(model: Any, lora_args: Any, targets: list[str], head: list[str]) -> Any:
    return _lora_config(model, lora_args, targets, head, use_dora=True)


def _ia3_config(model: Any, lora_args: Any, targets: list[str], head: list[str]) -> Any:
    from peft import IA3Config, TaskType
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD

    feedforward = [t for t in FEEDFORWARD.get(model.config.model_type, []) if t in targets]
    return IA3Config(
        task_type=TaskType.SEQ_CLS, target_modules=list(targets), feedforward_modules=feedforward, modules_to_save=head
    )


def attention_targets(model: Any, head: list[str]) -> list[str]:
    from loratune.model.targets import choose_target_modules

    return choose_target_modules(model, head)


def _ia3_targets(model: Any, head: list[str]) -> list[str]:
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as IA3_TARGETS

    targets = IA3_TARGETS.get(model.config.model_type)
    if not targets:
        raise ModelError(f"PEFT has no IA3 defaults for {model.config.model_type!r}; set lora.target_modules.")
    return list(targets)


# The newly initialised head's rate in full fine-tuning: LoRA's, at which its head trains alongside the adapters,
# so that the methods differ in how the encoder adapts and not in how fast the head learns (docs/comparing.md).
FULL_HEAD_LEARNING_RATE = 2e-3

# What `loratune tune` searches for a low-rank adapter: its rank, alpha as a multiple of the rank, its dropout.
RANK_SETTINGS = ("lora.r", "lora.alpha_per_r", "lora.lora_dropout")
# Learning rates: adapters start from zero (or one, for IA3) and need a larger step than full fine-tuning, which
# moves pretrained weights directly (measurements: docs/comparing.md and docs/configuration.md).
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        PeftAdapter(
            "lora", "LoRA", 2e-3, saved_in="adapter", adapter=True, shares_base_in_batch=True,
            peft_config=_lora_config, default_targets=attention_targets, tuned=RANK_SETTINGS,
        ),
        PeftAdapter(
            "dora", "DoRA", 2e-3, saved_in="adapter", adapter=True,
            peft_config=_dora_config, default_targets=attention_targets, tuned=RANK_SETTINGS,
        ),
        PeftAdapter(
            "ia3", "IA3", 5e-3, saved_in="adapter", adapter=True, peft_config=_ia3_config, default_targets=_ia3_targets
        ),
        HeadOnly("head", "Head-only", 5e-3, saved_in="head", pools_sentence_models_by_mean=True),
        Full(
            "full", "Full", 2e-4, head_learning_rate=FULL_HEAD_LEARNING_RATE, saved_in="model", frozen_base=False,
            trainable_share=1.0,
        ),
        Untrained("none", "Base (untrained)", None, trainable_share=0.0),
    )
}  # fmt: skip


def method_of(name: str) -> Method:
    """The entry for `lora.method` = `name`.

    Raises:
        ConfigError: for a name the table lacks.
    """
    if name not in METHODS:
        from loratune.errors import ConfigError

        raise ConfigError(f"lora.method must be one of {list(METHODS)}, got {name!r}.")
    return METHODS[name]


def adapter_parameter_count(model: Any) -> int:
    """Trainable weights inside PEFT's adapter layers (LoRA's A and B, DoRA's magnitudes, IA3's scales), as PEFT
    names them (`adapter_layer_names`), not the head it trains beside them; 0 for a model without adapters."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    seen, total = set(), 0
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        for name in module.adapter_layer_names:
            for param in getattr(module, name).parameters():
                if param.requires_grad and id(param) not in seen:
                    seen.add(id(param))
                    total += param.numel()
    return total
