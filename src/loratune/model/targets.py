"""Which layers an adapter adapts: the attention projections of each architecture, recognised by name, and never a
layer of the classification head."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

from loratune.errors import ModelError

log = logging.getLogger(__name__)

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
