"""Quiet libraries for one block: what the libraries print that says nothing a loratune user can act on.

Scoped rather than process-wide, so a notebook's own settings come back when a run ends.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def peft_warnings_hidden() -> Iterator[None]:
    """Hide the FutureWarning PEFT triggers by calling `is_gradient_checkpointing`, which transformers 5.x
    renamed; it says nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """datasets' Filter / Map / Tokenising bars, transformers' "Writing model shards" bar, PEFT's FutureWarning
    and the hub client's retry warnings (two lines per retry while a hub id is tried without a network, before
    the one-line error), hidden within the block (loratune's own epoch lines stay)."""
    import datasets
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    bars = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hub_verbosity = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        with peft_warnings_hidden():
            yield
    finally:
        hub_logging.set_verbosity(hub_verbosity)
        if bars[0]:
            datasets.enable_progress_bars()
        if bars[1]:
            hf_logging.enable_progress_bar()
