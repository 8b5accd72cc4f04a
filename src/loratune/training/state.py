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
from loratune.runs.destination import Destination, check_destination, run_inputs


@dataclass
class RunState:
    """What the stages of one run share, set once each as the stages produce it."""

    cfg: Config
    resume: bool
    destination: Destination  # the run folder; `run_dir` is where the run writes it (see `Destination.staging`)
    device: str
    dtype: str  # the resolved precision: fp32, bf16 or fp16
    method: Method
    splits: Splits | None = None
    accelerator: Accelerator | None = None
    tokenised: dict[str, Any] = field(default_factory=dict)  # split name -> tokenised dataset
    truncated: dict[str, int] = field(default_factory=dict)  # split name -> texts cut to max_length
    class_weights: np.ndarray | None = None
    on_epoch_end: Any = None  # the caller's hook for each epoch's record (`recipe.run`)

    @classmethod
    def start(cls, cfg: Config, resume: bool) -> RunState:
        """The state of a run about to start; its run folder is checked first (`runs.destination`), before
        anything is loaded or written: resume continues an unfinished run in place."""
        output_dir = files.run_dir_for(cfg)
        if resume:
            destination = Destination(output_dir)
        else:
            destination = check_destination(output_dir, "--output-dir", "run", run_inputs(cfg), cfg.train.overwrite)
        device = hardware.resolve_device(cfg.train.device)
        dtype = hardware.resolve_precision(cfg.train.precision, device)
        return cls(cfg, resume, destination, device, dtype, method_of(cfg.lora.method))

    @property
    def run_dir(self) -> Path:
        """Where the run writes its folder: the output folder, or beside it while it replaces an earlier run (it is
        swapped in just after `COMPLETE` is written)."""
        return self.destination.staging

    @property
    def output_dir(self) -> Path:
        """The run folder once finished, as the run records it (train.output_dir in its config)."""
        return self.destination.path

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process
