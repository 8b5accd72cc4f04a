"""The one module that quiets third-party libraries: what they print that says nothing a loratune user can act on.

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


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Hold back transformers' and huggingface_hub's warnings (among them the expected "newly initialised weights"
    of a fresh head) and the loading bar while something loads from a path or the hub.

    A hub id that does not exist printed dozens of lines of retries and warnings before the one-line error; when
    the load fails they are dropped, when it works the Python warnings among them are shown after all. The bar is
    switched back on only where it was on: a caller that hid the bars keeps them hidden.
    """
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    levels = hf_logging.get_verbosity(), hub_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a bar for loading 100 tensors is noise
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        hf_logging.set_verbosity(levels[0])
        hub_logging.set_verbosity(levels[1])
        if bar:
            hf_logging.enable_progress_bar()
    for w in caught:  # reached only when the load worked
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def quiet_command_line() -> None:
    """For the `loratune` process: tokenizers' fork warning, datasets' per-file bars (which bury the one-line
    errors; loratune's epoch bar stays) and PEFT's FutureWarning, off for the whole process."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
