"""What the stages of one run share: `RunState`, set once each as the recipe's stages produce it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator

from loratune.config import Config
from loratune.data.splits import Splits
from loratune.model import hardware
from loratune.model.methods import Method, method_of
from loratune.runs import files


@dataclass
class RunState:
    """What the stages of one run share, set once each as the stages produce it."""

    cfg: Config
    resume: bool
    run_dir: Path
    device: str
    dtype: str  # the resolved precision: fp32, bf16 or fp16
    method: Method
    splits: Splits | None = None
    accelerator: Accelerator | None = None
    tokenised: dict[str, Any] = field(default_factory=dict)  # split name -> tokenised dataset
    truncated: dict[str, int] = field(default_factory=dict)  # split name -> texts cut to max_length
    class_weights: np.ndarray | None = None

    @classmethod
    def start(cls, cfg: Config, resume: bool) -> RunState:
        device = hardware.resolve_device(cfg.train.device)
        dtype = hardware.resolve_precision(cfg.train.precision, device)
        return cls(cfg, resume, files.run_dir_for(cfg), device, dtype, method_of(cfg.lora.method))

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process
