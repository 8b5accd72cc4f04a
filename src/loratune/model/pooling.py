"""How a classifier pools its token states: the model's own pooler, or the masked mean for sentence-embedding
models (all-MiniLM-L6-v2 was trained on the mean; its BERT pooler was never trained for classification)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loratune.errors import ModelError
from loratune.model.names import HUB_DEFAULT_MODEL


def is_mean_pooled_sentence_model(name_or_path: str) -> bool:
    """True for a local sentence-transformers folder whose pooling is the masked mean (e.g. all-MiniLM-L6-v2)."""
    pooling = Path(name_or_path) / "1_Pooling" / "config.json"
    try:
        return bool(json.loads(pooling.read_text()).get("pooling_mode_mean_tokens"))
    except (OSError, ValueError):
        return name_or_path == HUB_DEFAULT_MODEL


def resolve_pooling(pooling: str, method: Any, name_or_path: str) -> str:
    """'auto' -> mean only where a frozen encoder would otherwise feed an untrained pooler (see the README): for a
    method (`model.methods.Method`) that trains a head alone on a sentence-transformers model."""
    if pooling != "auto":
        return pooling
    return "mean" if method.pools_sentence_models_by_mean and is_mean_pooled_sentence_model(name_or_path) else "model"


class MeanPooler(nn.Module):
    """Masked mean of token states, in place of a BERT-style pooler.

    Hand-written because transformers' classifiers pool the first token; sentence-embedding models were trained
    on the mean, so a frozen-encoder baseline on the first token would understate them. The attention mask
    reaches it through a pre-hook on the classifier's forward (see `use_mean_pooling`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # (batch, seq_len, hidden) -> (batch, hidden)
        if self.mask is None:
            return hidden_states.mean(dim=1)
        mask = self.mask.unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def use_mean_pooling(model: nn.Module) -> None:
    """Replace the model's pooler with `MeanPooler`.

    Raises:
        ModelError: for architectures without a pooler module to replace.
    """
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if base is None or not hasattr(base, "pooler"):
        raise ModelError(
            f"model.pooling=mean needs a BERT-style pooler; {model.config.model_type!r} has none. Use pooling=model."
        )
    pooler = MeanPooler()
    base.pooler = pooler

    def remember_mask(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        pooler.mask = mask if mask is not None else None

    model.register_forward_pre_hook(remember_mask, with_kwargs=True)
