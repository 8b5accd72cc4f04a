"""The trained weights in a run folder: saved by the run's method (`model.methods`) into its folder with checksums,
verified and checked for NaN on every load, and rebuilt into a classifier. Only safetensors are read: nothing in a
run folder is ever unpickled."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loratune.config import Config
from loratune.errors import ModelError, RunError, first_line
from loratune.model.loading import load_classifier, load_tokenizer, resolve_attention
from loratune.model.methods import Method, method_of
from loratune.model.names import resolve_model_name
from loratune.model.pooling import use_mean_pooling
from loratune.runs.files import CHECKSUMS_FILE, LABELS_FILE, TOKENIZER_DIR, read_json, save_directory, write_json
from loratune.runs.integrity import (
    check_finite_model,
    check_finite_tensors,
    compute_checksums,
    missing_manifest,
    verify_checksums,
)


def save_weights_directory(path: Path, write: Any, needed_bytes: int | None = None) -> None:
    """`save_directory` for weights: `CHECKSUMS_FILE` is written inside the folder before it is renamed into place."""

    def write_with_checksums(folder: Path) -> None:
        write(folder)
        names = [f.name for f in folder.iterdir() if f.suffix in (".safetensors", ".json") and f.is_file()]
        write_json(folder / CHECKSUMS_FILE, compute_checksums(folder, names))

    save_directory(path, write_with_checksums, needed_bytes)


def verify_weights(folder: Path, required: list[str], trust_unverified: bool = False) -> None:
    """Check the files of `folder` against its `CHECKSUMS_FILE`; every `required` file must be listed there.

    Raises:
        RunError: for a missing (unless `trust_unverified`) or damaged manifest, a listed file that is missing or
            changed, or a required file that is not listed.
    """
    manifest = folder / CHECKSUMS_FILE
    if missing_manifest(manifest, f"the weights in {folder}", trust_unverified):
        return
    listed = read_json(manifest)
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise RunError(f"{manifest} is damaged; restore the run folder from a backup or train again.")
    verify_checksums(folder, listed, required, manifest)


def save_model(run_dir: Path, model: Any, method: Method, tokenizer: Any, base_name: str | None = None) -> None:
    """Save what the method trained into its folder of the run (with checksums), and the tokenizer; `base_name` is
    the base model as the run config records it (see `model.names.portable_model_name`)."""
    if method.saved_in is not None:
        trainable = sum(4 * p.numel() for p in model.parameters() if p.requires_grad)  # bytes as fp32 safetensors
        save_weights_directory(
            run_dir / method.saved_in, lambda folder: method.save(model, folder, base_name), trainable
        )
    save_directory(run_dir / TOKENIZER_DIR, tokenizer.save_pretrained)


def artifact_size_bytes(run_dir: Path, method: Method) -> int:
    """Bytes on disk of what the method adds to the base model."""
    path = run_dir / method.saved_in if method.saved_in else None
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path and path.is_dir() else 0


def check_weights(run_dir: Path, method: Method, labels: list[str], trust_unverified: bool = False) -> None:
    """Refuse a run folder's weights when they are missing, changed since training (checksums), not finite, or
    made for another number of labels.

    Raises:
        RunError: naming the file and what is wrong with it.
    """
    if method.saved_in is None:
        return
    folder = run_dir / method.saved_in
    if not folder.is_dir():
        raise RunError(f"{folder} is missing; restore the run folder from a backup or train again.")
    names = method.weight_files(folder)
    for name in names:
        if not (folder / name).is_file():
            raise RunError(
                f"{folder / name} is missing; loratune loads only safetensors weights (never pickled .bin)."
            )
    verify_weights(folder, names, trust_unverified)
    saved = method.saved_num_labels(folder)
    if saved is not None and saved != len(labels):  # transformers would give a head of the wrong size fresh weights
        raise RunError(
            f"{run_dir / LABELS_FILE} lists {len(labels)} labels but the saved model has {saved}; "
            f"restore {LABELS_FILE} or rerun training."
        )
    if method.checked_before_loading():
        from safetensors.torch import load_file

        for name in names:
            try:
                tensors = load_file(folder / name)
            except Exception as error:
                raise RunError(
                    f"{folder / name} is damaged ({first_line(error)}); restore it or train again."
                ) from None
            check_finite_tensors(tensors, folder / name)


def load_tokenizer_of(run_dir: Path, cfg: Config) -> Any:
    """The run's tokenizer, as saved in its folder."""
    return load_tokenizer(str(run_dir / TOKENIZER_DIR), cfg.model.trust_remote_code)


def load_base(run_dir: Path, cfg: Config, labels: list[str], tokenizer: Any, device: Any = "cpu") -> Any:
    """The classifier a run's saved weights attach to: the base model (or, for a method that saves a whole model,
    that model) with `labels`' head and the run's pooling; its saved weights are not checked here (`load_model`).

    Raises:
        RunError: when it cannot be built.
    """
    method = method_of(cfg.lora.method)
    base = resolve_model_name(cfg.model.name_or_path, run_dir)
    attention = resolve_attention(cfg.model.attn_implementation, str(device).split(":")[0])
    with _loading_errors(run_dir, labels):
        model, _ = load_classifier(
            method.load_source(run_dir / (method.saved_in or ""), base), labels, cfg.model.trust_remote_code, attention
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        if cfg.model.pooling == "mean":  # full models too: the mean has no weights, so their folder cannot say it
            use_mean_pooling(model)
    return model


def load_model(
    run_dir: Path, cfg: Config, labels: list[str], tokenizer: Any, device: Any = "cpu", trust_unverified: bool = False
) -> Any:
    """Rebuild the trained classifier of a run folder, its weights checked first (see `check_weights`; a missing
    checksum manifest only with `trust_unverified`).

    Returns:
        The model in eval mode on `device`, in fp32, with a PEFT adapter still separate (see `Method.for_inference`).

    Raises:
        RunError: for missing, changed or damaged weights.
    """
    method = method_of(cfg.lora.method)
    check_weights(run_dir, method, labels, trust_unverified)
    model = load_base(run_dir, cfg, labels, tokenizer, device)
    with _loading_errors(run_dir, labels):
        model = method.attach(model, run_dir / (method.saved_in or ""))
    model.config.pad_token_id = tokenizer.pad_token_id
    check_finite_model(model, run_dir)  # full models' weights, which are not checked before loading
    return model.to(device).eval()


@contextlib.contextmanager
def _loading_errors(run_dir: Path, labels: list[str]) -> Iterator[None]:
    """A model that fails to load as a RunError naming the run folder (a head of the wrong size as such)."""
    try:
        yield
    except (RunError, ModelError):
        raise
    except Exception as error:
        if "size mismatch" in str(error):
            raise RunError(
                f"{run_dir / LABELS_FILE} lists {len(labels)} labels, which does not match the saved "
                f"classification head; restore {LABELS_FILE} or rerun training."
            ) from error
        first = first_line(error)
        raise RunError(f"Could not load the model saved in {run_dir} ({first}); the files may be damaged.") from error
