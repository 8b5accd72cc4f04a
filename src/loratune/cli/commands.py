"""The subcommands of `loratune`: each a few lines that call the library and print what it returns."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from loratune.cli.ranks import is_first_rank
from loratune.cli.signals import exit_status, what_stopped
from loratune.config import Config, load_config
from loratune.config.checks import check_class_weights
from loratune.errors import ConfigError, DiskFullError
from loratune.formatting import seconds
from loratune.runs import files
from loratune.runs.destination import check_destination
from loratune.runs.storage import disk_full_message, is_out_of_space
from loratune.schema import RunSummary, to_dict
from loratune.task import task_of


def _config_from_args(args: argparse.Namespace) -> Config:
    given = {k: v for k, v in vars(args).items() if "." in k}
    overrides = dict(item.partition("=")[::2] for item in args.overrides if "=" in item)
    bad = [item for item in args.overrides if "=" not in item]
    if bad:
        raise ConfigError(f"Unexpected argument {bad[0]!r}; overrides look like train.learning_rate=3e-4.")
    return load_config(args.config, {**given, **overrides})


def cmd_train(args: argparse.Namespace) -> int:
    import loratune

    if args.resume:
        if args.config is None:
            args.config = str(files.resume_config_path(args.resume))
        setattr(args, "train.output_dir", args.resume)
    cfg = _config_from_args(args)
    # The folder is named now, so that an interrupted run can say where it is.
    run_dir = str(files.run_dir_for(cfg))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output_dir=run_dir))
    try:
        started = time.perf_counter()
        result = loratune.run(cfg, resume=bool(args.resume))
    except Exception as error:
        if not isinstance(error, DiskFullError) and not is_out_of_space(error):
            raise
        problem = error.problem if isinstance(error, DiskFullError) else disk_full_message(Path(run_dir), error)
        then = f"continue with: loratune train --resume {run_dir}" if _resumable(run_dir) else "run the command again"
        raise DiskFullError(problem, then) from error
    except KeyboardInterrupt as interrupt:
        if is_first_rank():  # several processes: the launcher stops them all, the first one says so
            print(f"{what_stopped(interrupt)}; {_after_interrupt(run_dir)}", file=sys.stderr)
        return exit_status(interrupt)
    if is_first_rank():  # the summary once, as from a single process
        _print_summary(result.summary, result.run_dir, time.perf_counter() - started)
    return 0


def _resumable(run_dir: str) -> bool:
    return (Path(run_dir) / files.CONFIG_FILE).is_file() and not (Path(run_dir) / files.COMPLETE).exists()


def _after_interrupt(run_dir: str) -> str:
    if _resumable(run_dir):
        return f"finished epochs are saved. Continue with: loratune train --resume {run_dir}"
    if (Path(run_dir) / files.COMPLETE).exists():  # --overwrite builds beside the earlier run, which is kept
        return f"{run_dir} still holds the earlier finished run, untouched"
    return "nothing was saved yet; run the command again"


def cmd_validate(args: argparse.Namespace) -> int:
    if args.example:
        from loratune.config import example_yaml

        print(example_yaml(), end="")
        return 0
    cfg = _config_from_args(args)
    check_class_weights(cfg.train.class_weights)  # a weights file is read now, as training reads it
    print(cfg.to_yaml(), end="")
    print("config OK", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from loratune.runs.folder import RunFolder
    from loratune.scoring.evaluation import evaluate_run

    run = RunFolder.open(args.run, trust_unverified=args.trust_unverified)
    if args.output:  # before the model loads
        inputs = {"the run folder": args.run, "--data": args.data, "the run's data": run.config.data.path}
        check_destination(args.output, "--output", "file", inputs, args.overwrite)
    result = evaluate_run(run, args.data, args.split, args.max_samples, args.device, args.precision)
    m = result.metrics
    if args.output:
        files.write_json(Path(args.output), {**to_dict(m), "truncated": result.truncated})
    extra = "".join(f"  {name} {getattr(m, key):.4f}" for key, name in _EVALUATE_EXTRAS[run.task.name])
    print(f"{args.split}: {run.task.accuracy_name} {m.accuracy:.4f}  f1 {m.f1:.4f}{extra}  ({m.num_samples} texts)")
    return 0


# The scores `loratune evaluate` prints beside accuracy and macro F1, per task.
_EVALUATE_EXTRAS = {"single": (), "multi": (("micro_f1", "micro-f1"),)}


def cmd_predict(args: argparse.Namespace) -> int:
    from loratune.cli.predicting import predict_command

    return predict_command(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from loratune.cli.serving import serve_command

    return serve_command(args)


def cmd_compare(args: argparse.Namespace) -> int:
    from loratune.report.comparison_terminal import terminal_table
    from loratune.training.compare import compare, parse_methods

    methods = parse_methods(args.methods)
    cfg = _config_from_args(args)
    page = compare(cfg, methods, args.compare_dir, seeds=args.seeds)
    print(terminal_table(args.compare_dir))
    print(f"\nthe comparison in full (plots, significance, per-method runs): {page}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from loratune.tuning.study import TuneOptions, require_optuna, tune

    options = TuneOptions(
        output_dir=Path(args.tune_dir),
        n_trials=args.n_trials,
        timeout_s=args.timeout,
        metric=args.metric,
        space_file=args.space,
        storage=args.storage,
        resume=args.resume,
        pruner=args.pruner,
        keep_all=args.keep_all,
        max_epochs=args.max_epochs,
    )
    options.check()  # before the data or a model loads
    require_optuna()
    summary = tune(_config_from_args(args), options)
    counts = summary["counts"]
    print(f"{counts['COMPLETE']} trials finished, {counts['PRUNED']} pruned, {counts['FAIL']} failed")
    if "best" in summary:
        best, defaults = summary["best"], summary["defaults"]
        test = defaults.get("test", {}).get("f1")
        print(
            f"best: trial {best['number']}, validation {summary['metric']} {best['validation']:.4f} (defaults "
            f"{_maybe(defaults['validation'])}); test f1 {best['test']['f1']:.4f} (defaults {_maybe(test)})"
        )
        print(f"its config: {args.tune_dir}/best_config.yaml; the page: {args.tune_dir}/tune.html")
    return 0


def _maybe(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def cmd_check_data(args: argparse.Namespace) -> int:
    from loratune.data.checks import SPLITS, check_strict, compute_data_checks, format_block
    from loratune.data.splits import load_texts

    cfg = _config_from_args(args)
    if args.output:
        check_destination(args.output, "--output", "file", {"the data": cfg.data.path}, args.overwrite)
    splits, dropped, task = load_texts(cfg.data)
    checks = compute_data_checks({name: splits[name] for name in SPLITS if name in splits}, task, dropped)
    print(format_block(checks))
    if args.output:
        files.write_json(Path(args.output), checks)
    if cfg.data.strict:
        check_strict(checks, args.output or "the checks above")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from loratune.report.run_report import write_report

    print(write_report(args.run, args.trust_unverified))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from loratune.export.plain import export_run
    from loratune.runs.folder import RunFolder

    if args.format == "onnx":
        return _export_onnx(args)
    if args.quantize or args.force:
        raise ConfigError("--quantize and --force apply to --format onnx; add --format onnx.")
    run = RunFolder.open(args.run, trust_unverified=args.trust_unverified)
    folder = export_run(run, args.output_dir, adapter_only=args.adapter_only, overwrite=args.overwrite)
    form = "PEFT adapter" if args.adapter_only else "transformers model"
    print(f"exported {args.run} as a {form} to {folder}")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from loratune.export.onnx_export import export_onnx
    from loratune.export.onnx_graph import require_onnx
    from loratune.runs.folder import RunFolder

    if args.adapter_only:
        raise ConfigError("--adapter-only and --format onnx exclude each other; the graph holds the merged model.")
    require_onnx()  # before the run loads
    run = RunFolder.open(args.run, trust_unverified=args.trust_unverified)
    record = export_onnx(run, args.output_dir, args.quantize, args.force, args.overwrite)
    for split, scores in record["checks"].items():
        row = [f"pytorch fp32 {scores['pytorch_fp32']['accuracy']:.4f}"]
        for name in ("onnx_fp32", "onnx_int8"):
            if name in scores:
                s = scores[name]
                row.append(f"{name.replace('_', ' ')} {s['accuracy']:.4f} (agree {s['agreement']:.1%})")
        print(f"{split} {run.task.accuracy_name}: " + ", ".join(row))
    if record["int8_problem"]:
        kept = "kept as the default (--force)" if record["forced"] else f"not the default; {record['default']} is fp32"
        print(f"warning: int8 loses more than a point ({record['int8_problem']}): {kept}")
    size = record["files"][record["default"]]["bytes"]
    print(
        f"exported {args.run} as ONNX ({record['default_precision']}, {size / 2**20:.1f} MB, PyTorch fp32 weights "
        f"{record['pytorch_fp32_weights_bytes'] / 2**20:.1f} MB) to {args.output_dir}"
    )
    return 0


def _print_summary(summary: RunSummary, run_dir: Path, wall_seconds: float | None = None) -> None:
    task = task_of(summary.task)
    print(f"run folder: {run_dir}")
    print(f"{'metric':<19} {'before':>8} {'after':>8}")
    for key, name in _SUMMARY_ROWS[task.name]:
        before, after = getattr(summary.before, key), getattr(summary.after, key)
        if before is not None and after is not None:
            print(f"{name:<19} {before:>8.4f} {after:>8.4f}")
    hamming = summary.before.hamming_loss, summary.after.hamming_loss
    if None not in hamming and hamming[1] > hamming[0]:
        print(
            "note: Hamming loss rose: each label's threshold is chosen for its F1, which takes more false positives "
            "to find a rare label's texts; F1 is the score it serves"
        )
    if summary.after_fp32_accuracy is not None:
        print(
            f"after scored in {summary.after_precision}; in fp32 (as exported) {task.accuracy_name} "
            f"{summary.after_fp32_accuracy:.4f}"
        )
    whole = "" if wall_seconds is None else f"; the whole command took {seconds(wall_seconds)}"
    print(
        f"trained {summary.trainable_params:,} of {summary.total_params:,} parameters "
        f"in {summary.train_seconds:.1f}s; best epoch {summary.best_epoch}{whole}"
    )


# The scores the summary after training shows, in order, per task: a multi-label run leads with macro F1, and
# names subset accuracy (the whole label set right, near zero with many labels) as such.
_SUMMARY_ROWS = {
    "single": (
        ("accuracy", "accuracy"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("f1", "f1"),
        ("balanced_accuracy", "balanced_accuracy"),
    ),
    "multi": (
        ("f1", "macro F1"),
        ("micro_f1", "micro F1"),
        ("samples_f1", "samples F1"),
        ("precision", "macro precision"),
        ("recall", "macro recall"),
        ("accuracy", "subset accuracy"),
        ("hamming_loss", "Hamming loss"),
    ),
}
