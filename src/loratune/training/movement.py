"""Did training train? The trainable weights as the loop starts, and the check after it that each group (the
adapter or body, the head) moved and stayed finite, so that a run which changed nothing is never finished.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from loratune.errors import TrainingError
from loratune.model.targets import in_head

# A weight moved when some value changed by more than this share of the tensor's largest value (or this much, for a
# tensor that starts at zero, as LoRA's B does): far below any step a real learning rate makes (AdamW moves each
# weight by about the learning rate), far above what a rate of 1e-30 leaves behind.
MOVED_SHARE = 1e-9

Weights = dict[str, torch.Tensor]


def snapshot(model: torch.nn.Module) -> Weights:
    """A host copy of the trainable weights as training starts (the loop keeps the best epoch's copy the same way)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def check_trained(model: torch.nn.Module, before: Weights, head_modules: Sequence[str], steps: int) -> None:
    """Raise unless the weights moved from `before`, in the body (adapter) and in the head alike, to finite values.

    A group is checked as a whole: some weights get no gradient in every run (a pooler that mean pooling skips).

    Raises:
        TrainingError: one line naming the weights and the settings to change.
    """
    after = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    broken = [name for name, values in after.items() if not torch.isfinite(values).all()]
    if broken:
        raise TrainingError(
            f"Training made {len(broken)} weight tensor(s) non-finite (NaN or infinite), e.g. {broken[0]}; lower "
            "--learning-rate, or pass --precision fp32."
        )
    groups: dict[str, list[str]] = {}
    for name in after:
        groups.setdefault("head" if in_head(name, head_modules) else "adapter", []).append(name)
    still = [group for group, names in groups.items() if not any(_moved(after[n], before.get(n)) for n in names)]
    if still:
        rates = " and ".join(f"--{'head-' if g == 'head' else ''}learning-rate" for g in still)
        raise TrainingError(
            f"Training did not change the {' or the '.join(still)} weights in {steps} optimizer step(s), so the "
            f"run would equal the model it started from; raise {rates}, or train longer (--epochs)."
        )


def _moved(after: torch.Tensor, before: torch.Tensor | None) -> bool:
    if before is None or before.shape != after.shape:
        return True
    scale = max(1.0, before.abs().max().item()) if before.numel() else 1.0
    return bool(before.numel()) and (after.float() - before.float()).abs().max().item() > MOVED_SHARE * scale
