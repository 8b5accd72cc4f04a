"""The trained weights in a run folder: saved with checksums, verified and checked for NaN on every load, and
rebuilt into a classifier. Only safetensors are read: nothing in a run folder is ever unpickled."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from loratune.runs.files import (
    ADAPTER_DIR,
    CHECKSUMS_FILE,
    FULL_MODEL_DIR,
    HEAD_FILE,
    LABELS_FILE,
    TOKENIZER_DIR,
    check_run,
    load_labels,
    load_run_config,
    read_json,
    save_directory,
    write_file,
    write_json,
)
from loratune.config import ADAPTER_METHODS
from loratune.errors import ModelError, RunError, first_line
from loratune.runs.integrity import check_finite_model, check_finite_tensors, compute_checksums, verify_checksums
from loratune.model.build import load_classifier, load_tokenizer, resolve_attention, resolve_model_name
from loratune.model.pooling import use_mean_pooling

log = logging.getLogger(__name__)


def save_weights_directory(path: Path, write: Any, needed_bytes: int | None = None) -> None:
    """`save_directory` for weights: `CHECKSUMS_FILE` is written inside the folder before it is renamed into place."""

    def write_with_checksums(folder: Path) -> None:
        write(folder)
        names = [f.name for f in folder.iterdir() if f.suffix in (".safetensors", ".json") and f.is_file()]
        write_json(folder / CHECKSUMS_FILE, compute_checksums(folder, names))

    save_directory(path, write_with_checksums, needed_bytes)


def verify_weights(folder: Path, required: list[str]) -> None:
    """Check the files of `folder` against its `CHECKSUMS_FILE`; every `required` file must be listed there.

    A folder without checksums was written before loratune kept them: it loads with a warning (its weights are
    still checked for NaN and infinity after loading), so older run folders keep working.

    Raises:
        RunError: for a listed file that is missing or changed, or a required file that is not listed.
    """
    manifest = folder / CHECKSUMS_FILE
    if not manifest.is_file():
        log.warning("%s has no %s (saved by an older loratune); its weights are unverified.", folder, CHECKSUMS_FILE)
        return
    listed = read_json(manifest)
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise RunError(f"{manifest} is damaged; restore the run folder from a backup or train again.")
    verify_checksums(folder, listed, required, manifest)


def _weight_files(folder: Path) -> list[str]:
    return sorted(f.name for f in folder.glob("*.safetensors"))


def save_model(run_dir: Path, model: Any, method: str, tokenizer: Any) -> None:
    """Save what the method trained: a PEFT adapter, the head weights, or the whole model; and the tokenizer."""
    trainable = sum(4 * p.numel() for p in model.parameters() if p.requires_grad)  # bytes as fp32 safetensors
    if method in ADAPTER_METHODS:
        save = lambda d: model.save_pretrained(d, safe_serialization=True)  # noqa: E731
        save_weights_directory(run_dir / ADAPTER_DIR, save, trainable)
    elif method == "head":
        _save_head(run_dir, model, trainable)
    elif method == "full":
        save = lambda d: model.save_pretrained(d, safe_serialization=True)  # noqa: E731
        save_weights_directory(run_dir / FULL_MODEL_DIR, save, trainable)
    save_directory(run_dir / TOKENIZER_DIR, tokenizer.save_pretrained)


def _save_head(run_dir: Path, model: Any, needed_bytes: int) -> None:
    # The one weight file outside a folder of its own: its checksum goes into the run folder's CHECKSUMS_FILE,
    # written after it (a crash in between leaves an unfinished run, with no COMPLETE, which nothing loads).
    from safetensors.torch import save_file

    state = {n: p.detach().float().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    write_file(run_dir / HEAD_FILE, lambda tmp: save_file(state, tmp), needed_bytes)
    write_json(run_dir / CHECKSUMS_FILE, compute_checksums(run_dir, [HEAD_FILE]))


def artifact_size_bytes(run_dir: Path, method: str) -> int:
    """Bytes on disk of what the method adds to the base model."""
    path = {"head": run_dir / HEAD_FILE, "full": run_dir / FULL_MODEL_DIR}.get(method, run_dir / ADAPTER_DIR)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def check_weights(run_dir: Path, method: str, labels: list[str]) -> None:
    """Refuse a run folder's weights when they are missing, changed since training (checksums), or not finite.

    Raises:
        RunError: naming the file and what is wrong with it.
    """
    # Weights are read from safetensors only: a pickle (.bin) planted in a run folder is never unpickled.
    if method in ADAPTER_METHODS:
        needed = run_dir / ADAPTER_DIR / "adapter_model.safetensors"
    elif method == "head":
        needed = run_dir / HEAD_FILE
    elif method == "full":
        folder = run_dir / FULL_MODEL_DIR
        if not any(folder.glob("*.safetensors")):
            raise RunError(f"{folder} holds no .safetensors weights; loratune never loads pickled (.bin) weights.")
        verify_weights(folder, _weight_files(folder))
        # transformers would give a head of the wrong size fresh random weights rather than fail
        saved = read_json(folder / "config.json")  # transformers' own file
        num_labels = len(saved.get("id2label") or {}) if isinstance(saved, dict) else 0
        if num_labels != len(labels):
            raise RunError(
                f"{run_dir / LABELS_FILE} lists {len(labels)} labels but the saved model has {num_labels}; "
                f"restore {LABELS_FILE} or rerun training."
            )
        return
    else:
        return
    if not needed.is_file():
        raise RunError(f"{needed} is missing; loratune loads only safetensors weights (never pickled .bin files).")
    verify_weights(needed.parent, [needed.name] if method == "head" else _weight_files(needed.parent))
    from safetensors.torch import load_file

    try:
        tensors = load_file(needed)
    except Exception as error:
        raise RunError(f"{needed} is damaged ({first_line(error)}); restore it or train again.") from None
    check_finite_tensors(tensors, needed)


def load_model(run_dir: str | Path, device: Any = "cpu", finished: bool = True) -> tuple[Any, Any, list[str], Any]:
    """Rebuild the trained classifier from a run folder (`finished=False`: one whose run is still writing it).

    Returns:
        (model in eval mode, tokenizer, label names, Config)

    Raises:
        RunError: for a missing, unfinished or damaged run folder.
    """
    run_dir = check_run(run_dir) if finished else Path(run_dir)
    cfg = load_run_config(run_dir)
    labels = load_labels(run_dir)
    method = cfg.lora.method
    check_weights(run_dir, method, labels)
    base = resolve_model_name(cfg.model.name_or_path, run_dir)
    trust = cfg.model.trust_remote_code
    attention = resolve_attention(cfg.model.attn_implementation, str(device).split(":")[0])
    try:
        tokenizer = load_tokenizer(str(run_dir / TOKENIZER_DIR), trust)
        source = str(run_dir / FULL_MODEL_DIR) if method == "full" else base
        model, _ = load_classifier(source, labels, trust, attention)
        model.config.pad_token_id = tokenizer.pad_token_id
        if cfg.model.pooling == "mean":  # full models too: the mean has no weights, so their folder cannot say it
            use_mean_pooling(model)
        if method in ADAPTER_METHODS:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(run_dir / ADAPTER_DIR))
        elif method == "head":
            from safetensors.torch import load_file

            missing = model.load_state_dict(load_file(run_dir / HEAD_FILE), strict=False).unexpected_keys
            if missing:
                raise RunError(f"{run_dir / HEAD_FILE} holds weights this model lacks: {missing[:3]}.")
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
    model.config.pad_token_id = tokenizer.pad_token_id
    check_finite_model(model, run_dir)  # also covers run folders saved before checksums, and full models
    return model.to(device).eval(), tokenizer, labels, cfg
