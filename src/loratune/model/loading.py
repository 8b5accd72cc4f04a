"""Loading a pretrained model: its tokenizer (with a pad token), its sequence classifier with a fresh head for the
run's labels, its position limit and attention kernel; a load that fails is one line naming the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from loratune.errors import ModelError, first_line
from loratune.quiet import quiet_loading

# Head layers the classification models create on top of the encoder.
HEAD_NAMES = ("classifier", "score", "pre_classifier", "pooler", "classification_head")


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

    id2label = dict(enumerate(labels))
    try:
        with quiet_loading():  # among what it hides: the "newly initialised weights" warning: we train those
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


def resolve_attention(attn_implementation: str, device: str) -> str:
    """'auto' -> eager on CPU (measured faster than sdpa for training on short texts), sdpa on GPUs."""
    if attn_implementation != "auto":
        return attn_implementation
    return "sdpa" if device == "cuda" else "eager"
