"""Command line: `loratune train | evaluate | predict | export | report | validate`. Each subcommand is a few lines
that call the library; user mistakes print one line and exit with status 2 (`--debug` shows the traceback)."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

from loratune.config import DEVICES, PRECISIONS, Config, field_flags, load_config
from loratune.errors import ConfigError, DataError, DiskFullError, LoratuneError
from loratune.runs import files
from loratune.runs.storage import check_writable_file, disk_full_message, is_out_of_space
from loratune.schema import RunSummary, to_dict

EXIT_USAGE = 2
# Commands that load datasets or models, whose progress bars and warnings are hidden while they run.
_LOADS_LIBRARIES = ("evaluate", "predict", "export", "check-data")


def _add_config_flags(parser: argparse.ArgumentParser, skip: set[str] = frozenset()) -> None:
    """One flag per config field, help text taken from the field; values stay strings until `Config.from_dict`."""
    parser.add_argument("--config", metavar="YAML", help="Config file; flags and key=value overrides win over it.")
    for section in ("data", "model", "lora", "train"):
        group = parser.add_argument_group(f"{section} options")
        for flag, key, f in field_flags():
            if not key.startswith(section + ".") or key in skip:
                continue
            default = f.default if f.default is not None else "unset"
            kwargs: dict[str, Any] = {
                "dest": key,
                "default": argparse.SUPPRESS,
                "help": f"{f.metadata['help']} [{key}, default: {default}]",
            }
            if f.type in (bool, "bool"):
                group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            else:
                group.add_argument(flag, metavar=f.name.upper(), **kwargs)
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="Overrides such as train.learning_rate=3e-4."
    )


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
        result = loratune.run(cfg, resume=bool(args.resume))
    except Exception as error:
        if not isinstance(error, DiskFullError) and not is_out_of_space(error):
            raise
        problem = error.problem if isinstance(error, DiskFullError) else disk_full_message(Path(run_dir), error)
        resumable = (Path(run_dir) / files.CONFIG_FILE).is_file()
        then = f"continue with: loratune train --resume {run_dir}" if resumable else "run the command again"
        raise DiskFullError(problem, then) from error
    except KeyboardInterrupt:
        print(
            f"interrupted; finished epochs are saved. Continue with: loratune train --resume {cfg.train.output_dir}",
            file=sys.stderr,
        )
        return 130
    _print_summary(result.summary, result.run_dir)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    if args.example:
        from loratune.config import example_yaml

        print(example_yaml(), end="")
        return 0
    cfg = _config_from_args(args)
    print(cfg.to_yaml(), end="")
    print("config OK", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from loratune.data.batches import build_eval_loader
    from loratune.data.splits import load_eval_split, load_run_split, tokenize
    from loratune.inference.predictor import load_for_inference
    from loratune.scoring.metrics import metrics_from_logits, predict_logits

    run_dir = files.check_run(args.run)
    if args.output:
        check_writable_file(args.output, "--output")  # before the model loads
    model, tokenizer, labels, cfg = load_for_inference(run_dir, args.device, args.precision)
    seed = cfg.train.seed
    if args.data is None:  # the run's own data, carved and subsampled as the run did: its own "after" score
        limit = cfg.data.max_eval_samples if args.max_samples is None else args.max_samples
        split = load_run_split(dataclasses.replace(cfg.data, max_eval_samples=limit), args.split, labels, seed)
    else:
        data_args = dataclasses.replace(cfg.data, path=args.data, max_eval_samples=args.max_samples)
        task = "multi" if cfg.data.task == "multi" else "single"
        split = load_eval_split(data_args, args.split, labels, task=task, seed=seed)
    ds, truncated = tokenize(split, tokenizer, cfg.data.max_length)
    device = next(model.parameters()).device.type
    loader = build_eval_loader(ds, cfg.train.eval_batch_size, tokenizer.pad_token_id, device)
    logits, y_true = predict_logits(model, loader)
    # the decisions the run saved (temperature; multi-label thresholds), as its "after" scores applied them
    temperature, thresholds = files.load_temperature(run_dir), files.load_thresholds(run_dir, labels)
    metrics = metrics_from_logits(logits, y_true, labels, temperature, thresholds)
    if args.output:
        files.write_json(Path(args.output), {**to_dict(metrics), "truncated": truncated})
    extra = f"  micro-f1 {metrics.micro_f1:.4f}" if metrics.multi_label else ""
    accuracy = "subset accuracy" if metrics.multi_label else "accuracy"
    print(
        f"{args.split}: {accuracy} {metrics.accuracy:.4f}  f1 {metrics.f1:.4f}{extra}  ({metrics.num_samples} texts)"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from loratune.inference.predictor import Predictor, format_prediction, read_texts, write_predictions

    texts = list(args.text or [])
    if args.input:
        texts += read_texts(args.input, args.text_column)
    if not texts:
        raise DataError("Nothing to predict; pass --text 'some text' (repeatable) or --input FILE.")
    if args.output:
        check_writable_file(args.output, "--output")  # before the model loads
    predictor = Predictor.from_run(args.run, device=args.device, precision=args.precision)
    predictions = predictor.predict(texts)
    truncated = predictor.count_truncated(texts)
    if truncated:
        print(
            f"note: {truncated} of {len(texts)} texts were longer than {predictor.max_length} tokens; "
            "only their first tokens were read",
            file=sys.stderr,
        )
    empty = sum(not text.strip() for text in texts)
    if empty:  # kept, so that every input row has its prediction; training drops such rows
        print(
            f"note: {empty} of {len(texts)} texts are empty; their labels are guesses from no words", file=sys.stderr
        )
    if args.output:
        write_predictions(args.output, texts, predictions)
        print(f"wrote {len(predictions)} predictions to {args.output}", file=sys.stderr)
    else:
        for text, p in zip(texts, predictions, strict=True):
            print(f"{format_prediction(p)}\t{text}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from loratune.training.compare import compare, parse_methods

    methods = parse_methods(args.methods)
    cfg = _config_from_args(args)
    print(compare(cfg, methods, args.compare_dir, seeds=args.seeds))
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from loratune.data.checks import SPLITS, check_strict, compute_data_checks, format_block
    from loratune.data.splits import load_texts

    cfg = _config_from_args(args)
    splits, dropped = load_texts(cfg.data)
    checks = compute_data_checks({name: splits[name] for name in SPLITS if name in splits}, dropped)
    print(format_block(checks))
    if args.output:
        files.write_json(Path(args.output), checks)
    if cfg.data.strict:
        check_strict(checks, args.output or "the checks above")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from loratune.report.run_report import write_report

    print(write_report(args.run))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from loratune.export.plain import export_run

    folder = export_run(args.run, args.output_dir, adapter_only=args.adapter_only, overwrite=args.overwrite)
    form = "PEFT adapter" if args.adapter_only else "transformers model"
    print(f"exported {args.run} as a {form} to {folder}")
    return 0


def _print_summary(summary: RunSummary, run_dir: Path) -> None:
    print(f"run folder: {run_dir}")
    print(f"{'metric':<17} {'before':>8} {'after':>8}")
    keys = ("accuracy", "precision", "recall", "f1")
    if summary.after.multi_label:
        keys = (*keys, "micro_f1", "samples_f1", "hamming_loss")
    elif summary.after.balanced_accuracy is not None:
        keys = (*keys, "balanced_accuracy")
    for key in keys:
        name = "subset accuracy" if key == "accuracy" and summary.after.multi_label else key
        before, after = getattr(summary.before, key), getattr(summary.after, key)
        if before is not None and after is not None:
            print(f"{name:<17} {before:>8.4f} {after:>8.4f}")
    if summary.after_fp32_accuracy is not None:
        print(
            f"after scored in {summary.after_precision}; in fp32 (as exported) accuracy "
            f"{summary.after_fp32_accuracy:.4f}"
        )
    print(
        f"trained {summary.trainable_params:,} of {summary.total_params:,} parameters "
        f"in {summary.train_seconds:.1f}s; best epoch {summary.best_epoch}"
    )


# Checked by precision.resolve_device (one line), not by argparse choices (a usage block, then the error).
_DEVICE_HELP = f"Where to run the model: {', '.join(DEVICES)}."


def _add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto: bf16 where this CPU or GPU runs it fast (as in training), else fp32; fp32 gives exact scores.",
    )


class _Parser(argparse.ArgumentParser):
    """argparse's own errors (a missing or unknown option, a bad choice) as one line, like loratune's: argparse
    prints the whole usage block before them."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message}; `{self.prog} --help` lists the options.")


def _unknown_options(extras: list[str], command: argparse.ArgumentParser) -> str:
    """One line for options the command does not have, with the nearest known one (`--lora.rank` -> `--lora-r`)."""
    known = [flag for action in command._actions for flag in action.option_strings]  # argparse has no public list
    wrong = next((e for e in extras if e.startswith("-")), extras[0]).split("=")[0]
    near = difflib.get_close_matches(wrong.replace(".", "-").replace("_", "-"), known, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]}? " if near else ""
    return f"unknown option {wrong!r} for {command.prog}; {hint}`{command.prog} --help` lists the options."


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="loratune", description="LoRA fine-tuning of text classifiers, measured.")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks for user errors too.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="Evaluate, fine-tune with LoRA, evaluate again; write a run folder.")
    train.add_argument("--resume", metavar="RUN", help="Continue an interrupted run from its last finished epoch.")
    _add_config_flags(train)
    train.set_defaults(func=cmd_train)

    validate = sub.add_parser("validate", help="Check a config (and flags) without loading a model.")
    validate.add_argument("--example", action="store_true", help="Print every option as an annotated YAML file.")
    _add_config_flags(validate)
    validate.set_defaults(func=cmd_validate)

    evaluate = sub.add_parser("evaluate", help="Score a finished run on a labelled dataset.")
    evaluate.add_argument("run", help="Run folder.")
    evaluate.add_argument(
        "--data",
        help="Folder or file with labelled texts (default: the run's own data, split and subsampled as it ran, "
        "which reproduces the run's own after score).",
    )
    evaluate.add_argument("--split", default="test", help="Split to score: train, validation or test (default).")
    evaluate.add_argument(
        "--max-samples", type=int, default=None, help="Score at most this many texts (drawn with the run's seed)."
    )
    evaluate.add_argument("--output", help="Write the metrics as JSON here.")
    evaluate.add_argument("--device", default="auto", help=_DEVICE_HELP)
    _add_precision(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="Label texts with a finished run.")
    predict.add_argument("run", help="Run folder.")
    predict.add_argument("--text", action="append", help="A text to classify (repeatable).")
    predict.add_argument("--input", help="CSV / JSONL / TXT file of texts.")
    predict.add_argument("--text-column", help="Column of --input holding the text (default: text).")
    predict.add_argument("--output", help="Write predictions here (.csv or .jsonl); default: print them.")
    predict.add_argument("--device", default="auto", help=_DEVICE_HELP)
    _add_precision(predict)
    predict.set_defaults(func=cmd_predict)

    compare = sub.add_parser("compare", help="Train several methods on the same data and compare them in one table.")
    compare.add_argument(
        "--methods", default="base,head,lora,full", help="Comma-separated: base, head, lora, full, dora, ia3."
    )
    compare.add_argument("--output-dir", dest="compare_dir", required=True, help="Folder for all runs.")
    compare.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="Runs per method (seeds train.seed, train.seed + 1, ...); the table shows mean ± std and a paired "
        "significance test of LoRA against each other method.",
    )
    _add_config_flags(compare, skip={"train.output_dir", "lora.method"})
    compare.set_defaults(func=cmd_compare)

    check = sub.add_parser(
        "check-data", help="Check a dataset's files (duplicates, shared texts, conflicting labels) without a model."
    )
    check.add_argument("--output", help="Write the checks as JSON here.")
    _add_config_flags(check)
    check.set_defaults(func=cmd_check_data)

    export = sub.add_parser("export", help="Write a run as a plain transformers model (LoRA merged) or its adapter.")
    export.add_argument("run", help="Run folder.")
    export.add_argument("--output-dir", required=True, help="Folder to write; must be missing or empty.")
    export.add_argument(
        "--adapter-only", action="store_true", help="Copy the PEFT adapter, tokenizer and labels instead of merging."
    )
    export.add_argument("--overwrite", action="store_true", help="Replace a non-empty --output-dir.")
    export.set_defaults(func=cmd_export)

    report = sub.add_parser("report", help="Rebuild plots, report.md and report.html from a run folder.")
    report.add_argument("run", help="Run folder.")
    report.set_defaults(func=cmd_report)
    parser.commands = sub.choices  # each command's parser, for _unknown_options
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `loratune` command; returns the exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # datasets' per-file bars ("Generating train split") bury the one-line errors; our epoch bar stays.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # PEFT still calls a transformers method that 5.x renamed; the warning says nothing the user can act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:
            raise ConfigError(_unknown_options(extras, parser.commands[args.command]))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.command in _LOADS_LIBRARIES:  # train's run() quiets them itself
            from loratune.quiet import quiet_libraries

            with quiet_libraries():
                return args.func(args)
        return args.func(args)
    except LoratuneError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # a full disk is no bug: one line, as for a user mistake
        if args.debug or not is_out_of_space(error):
            raise
        print(f"error: {disk_full_message(Path('.'), error)}, then run the command again.", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
