"""One function runs the stages in order: data, model, evaluate before, train, evaluate after, save, report.
The CLI, the Python API and the notebook all call `run`."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from loratune import artifacts
from loratune.checkpoint import CHECKPOINT_DIR
from loratune.config import Config

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A finished run: its folder and metrics, and a predictor loaded on first use."""

    run_dir: Path
    metrics: dict[str, Any]
    config: Config
    _predictor: Any = None

    @property
    def before(self) -> dict[str, Any]:
        return self.metrics["before"]

    @property
    def after(self) -> dict[str, Any]:
        return self.metrics["after"]

    def predict(self, texts: list[str], text_pairs: list[str] | None = None) -> list[dict[str, Any]]:
        """Label and probabilities for each text (see `Predictor.predict`)."""
        if self._predictor is None:
            from loratune.predict import Predictor

            self._predictor = Predictor.from_run(self.run_dir)
        return self._predictor.predict(texts, text_pairs)


def load_run(run_dir: str | Path) -> Run:
    """Open a finished run folder.

    Raises:
        RunError: when the folder is missing, unfinished or damaged.
    """
    from loratune.config import load_config

    run_dir = artifacts.check_run(run_dir)
    return Run(run_dir, artifacts.read_json(run_dir / "metrics.json"), load_config(run_dir / "config.yaml"))


def load_checkpoint_state(run_dir: Path) -> dict[str, Any] | None:
    """The loop state saved with the last checkpoint, or None when the run never finished an epoch."""
    path = run_dir / CHECKPOINT_DIR / "state.json"
    return json.loads(path.read_text())["state"] if path.is_file() else None


def default_run_dir(cfg: Config) -> Path:
    data = Path(cfg.data.path.rstrip("/")).stem if cfg.data.path else "data"
    data = re.sub(r"[^A-Za-z0-9_.-]+", "-", data) or "data"
    return Path("runs") / f"{data}-{cfg.lora.method}-{datetime.now():%Y%m%d-%H%M%S}"


def run(cfg: Config, resume: bool = False) -> Run:
    """Evaluate before, train, evaluate after, and write the run folder.

    Args:
        cfg: a validated config (see `load_config`).
        resume: continue the unfinished run in `cfg.train.output_dir` from its last end-of-epoch checkpoint.

    Returns:
        The finished `Run`.

    Raises:
        LoratuneError: subclasses for bad data, models or settings, before anything slow where possible.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    from loratune.data import load_splits, tokenize
    from loratune.evaluate import evaluate
    from loratune.hardware import MIXED_PRECISION, peak_memory_mb, resolve_device, resolve_precision
    from loratune.modeling import build_model, cast_frozen, display_name, keep_adapter_inputs_in_autocast_dtype
    from loratune.training import train

    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    run_dir = Path(cfg.train.output_dir) if cfg.train.output_dir else default_run_dir(cfg)
    if not cfg.train.progress:
        import datasets

        datasets.disable_progress_bars()
    splits = load_splits(cfg.data, seed=cfg.train.seed)  # cheap checks on the data before the model loads

    # Accelerate keeps one global state per process; a second run in the same process (tests, notebooks,
    # `compare`) may want another precision, so drop the old state but keep the process group.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        cpu=device == "cpu",
        mixed_precision=MIXED_PRECISION[precision],
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        log_with=None if cfg.train.report_to == "none" else cfg.train.report_to,
        project_dir=str(run_dir / "logs"),
    )
    is_main = accelerator.is_main_process
    if resume:
        artifacts.check_resumable(run_dir)
    elif is_main:
        artifacts.prepare_run_dir(run_dir, cfg.train.overwrite)
    set_seed(cfg.train.seed)
    built = build_model(cfg.model, cfg.lora, splits.labels, device)
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, name_or_path=built.name_or_path, pooling=built.pooling),
        lora=dataclasses.replace(
            cfg.lora, target_modules=built.target_modules or None, modules_to_save=built.head_modules
        ),
        train=dataclasses.replace(
            cfg.train,
            output_dir=str(run_dir),
            learning_rate=cfg.train.resolved_learning_rate(cfg.lora.method),
            precision=precision,
            device=device,
        ),
    )
    if is_main:
        artifacts.write_text(run_dir / "config.yaml", cfg.to_yaml())
        artifacts.write_json(run_dir / "labels.json", splits.labels)

    tokenizer = built.tokenizer
    with accelerator.main_process_first():
        tokenised = {}
        truncated = {}
        for name in ("train", "validation", "test"):
            tokenised[name], truncated[name] = tokenize(getattr(splits, name), tokenizer, cfg.data.max_length)
    eval_ds = tokenised[splits.eval_name]

    model = built.model
    if precision != "fp32" and accelerator.distributed_type.value in ("NO", "MULTI_CPU", "MULTI_GPU"):
        cast_frozen(model, torch.bfloat16 if precision == "bf16" else torch.float16)
        keep_adapter_inputs_in_autocast_dtype(model)
    model.to(accelerator.device)
    if cfg.train.report_to != "none":
        accelerator.init_trackers(run_dir.name, config=_flat(cfg.to_dict()))

    from loratune.batching import build_eval_loader

    eval_loader = accelerator.prepare(build_eval_loader(eval_ds, cfg.train.eval_batch_size, tokenizer.pad_token_id))
    saved = load_checkpoint_state(run_dir) if resume else None
    before = saved["before"] if saved else evaluate(model, eval_loader, splits.labels, accelerator)
    log.info("before: accuracy %.4f, f1 %.4f", before["accuracy"], before["f1"])

    result = None
    if cfg.lora.method != "none":
        result = train(
            model,
            tokenised["train"],
            tokenised["validation"],
            splits.labels,
            cfg.train,
            cfg.train.learning_rate,
            accelerator,
            tokenizer.pad_token_id,
            on_epoch_end=lambda entry: accelerator.log(entry, step=entry["epoch"]),
            checkpoint_dir=run_dir,
            extra_state={"before": before},
        )
    model = accelerator.unwrap_model(model)
    started = time.perf_counter()
    after = evaluate(model, eval_loader, splits.labels, accelerator) if result else before
    eval_seconds = time.perf_counter() - started
    counts = built.parameter_counts()

    metrics: dict[str, Any] = {
        "format_version": 1,
        "method": cfg.lora.method,
        "model": built.name_or_path,
        "model_name": display_name(built.name_or_path),
        "eval_split": splits.eval_name,
        "labels": splits.labels,
        "before": before,
        "after": after,
        "history": result.history if result else [],
        "best_epoch": result.best_epoch if result else 0,
        "best_metric": f"val_{cfg.train.best_metric}",
        "stopped_early": bool(result and result.stopped_early),
        "train_seconds": result.train_seconds if result else 0.0,
        **counts,
        "precision": precision,
        "device": device,
        "num_processes": accelerator.num_processes,
        "throughput": _throughput(result, len(eval_ds), eval_seconds),
        "data": {
            "source": cfg.data.path,
            "train_size": len(splits.train),
            "validation_size": len(splits.validation),
            "test_size": len(splits.test),
            "label_counts": splits.label_counts(),
            "truncated": truncated,
            "max_length": cfg.data.max_length,
        },
    }
    if cfg.train.report_to != "none":
        accelerator.log({f"test_{k}": after[k] for k in ("accuracy", "precision", "recall", "f1")})
        accelerator.end_training()
    metrics["peak_memory_mb"] = peak_memory_mb(device)
    if is_main:
        artifacts.save_model(run_dir, model, cfg.lora.method, tokenizer)
        metrics["adapter_size_bytes"] = artifacts.artifact_size_bytes(run_dir, cfg.lora.method)
        artifacts.save_metrics(run_dir, metrics)
        from loratune.report import write_report

        write_report(run_dir)
        artifacts.mark_complete(run_dir)
        shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)  # only needed while unfinished
    accelerator.wait_for_everyone()
    return Run(run_dir, metrics, cfg)


def _throughput(result: Any, eval_samples: int, eval_seconds: float) -> dict[str, float]:
    out = {"eval_samples_per_s": eval_samples / eval_seconds if eval_seconds > 0 else 0.0}
    if result and result.step_seconds > 0:
        out["train_samples_per_s"] = result.train_samples / result.step_seconds
        out["train_tokens_per_s"] = result.train_tokens / result.step_seconds
        out["padding_ratio"] = result.padded_tokens / max(result.train_tokens, 1)
    return out


def _flat(nested: dict[str, dict[str, Any]]) -> dict[str, Any]:
    # Trackers take flat scalar values.
    return {
        f"{s}.{k}": (v if isinstance(v, (int, float, str, bool)) else str(v))
        for s, d in nested.items()
        for k, v in d.items()
    }
