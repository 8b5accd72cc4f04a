"""The `loratune` command line's parser: one flag per config field (help text from the field), one subcommand per
entry of `_COMMANDS`; argparse's own mistakes become one-line errors."""

from __future__ import annotations

import argparse
import difflib
from typing import Any, NoReturn

from loratune.cli import commands
from loratune.config import DEVICES, PRECISIONS, field_flags
from loratune.errors import ConfigError
from loratune.model.methods import METHODS
from loratune.serving.options import ServeOptions
from loratune.training.compare import DEFAULT_METHODS

SECTIONS = ("data", "model", "lora", "train")


def _add_config_flags(
    parser: argparse.ArgumentParser, skip: set[str] = frozenset(), sections: tuple[str, ...] = SECTIONS
) -> None:
    """One flag per config field of `sections`, help text taken from the field; values stay strings until
    `Config.from_dict`."""
    parser.add_argument("--config", metavar="YAML", help="Config file; flags and key=value overrides win over it.")
    for section in sections:
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


def unknown_options(extras: list[str], command: argparse.ArgumentParser) -> str:
    """One line for options the command does not have, with the nearest known one (`--lora.rank` -> `--lora-r`)."""
    known = [flag for action in command._actions for flag in action.option_strings]  # argparse has no public list
    wrong = next((e for e in extras if e.startswith("-")), extras[0]).split("=")[0]
    near = difflib.get_close_matches(wrong.replace(".", "-").replace("_", "-"), known, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]}? " if near else ""
    return f"unknown option {wrong!r} for {command.prog}; {hint}`{command.prog} --help` lists the options."


def build_parser() -> argparse.ArgumentParser:
    """The `loratune` parser: one subcommand per entry of `_COMMANDS`, each calling its `commands.cmd_*`."""
    parser = _Parser(prog="loratune", description="LoRA fine-tuning of text classifiers, measured.")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks for user errors too.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, func) in _COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        add_arguments(command)
        command.set_defaults(func=func)
    parser.commands = sub.choices  # each command's parser, for unknown_options
    return parser


def _train_arguments(train: argparse.ArgumentParser) -> None:
    train.add_argument("--resume", metavar="RUN", help="Continue an interrupted run from its last finished epoch.")
    _add_config_flags(train)


def _validate_arguments(validate: argparse.ArgumentParser) -> None:
    validate.add_argument("--example", action="store_true", help="Print every option as an annotated YAML file.")
    _add_config_flags(validate)


def _add_trust_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-unverified",
        action="store_true",
        help="Load a run folder whose checksums.json is missing (a warning says so); files a manifest lists are "
        "always verified.",
    )


def _evaluate_arguments(evaluate: argparse.ArgumentParser) -> None:
    evaluate.add_argument("run", help="Run folder.")
    _add_trust_flag(evaluate)
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
    evaluate.add_argument("--overwrite", action="store_true", help="Replace an existing --output file.")
    evaluate.add_argument("--device", default="auto", help=_DEVICE_HELP)
    _add_precision(evaluate)


def _predict_arguments(predict: argparse.ArgumentParser) -> None:
    predict.add_argument("run", help="Run folder, or an ONNX export folder.")
    _add_trust_flag(predict)
    predict.add_argument("--text", action="append", help="A text to classify (repeatable).")
    predict.add_argument("--input", help="CSV / TSV / JSONL / Parquet / TXT file of texts, of any size.")
    predict.add_argument("--text-column", help="Column of --input holding the text (default: text).")
    predict.add_argument("--output", help="Write predictions here (.csv, .jsonl or .parquet); default: print them.")
    predict.add_argument("--overwrite", action="store_true", help="Replace an existing --output file.")
    predict.add_argument(
        "--at-least-one",
        action="store_true",
        help="Multi-label runs: a text that no label reaches its threshold gets its most probable label.",
    )
    predict.add_argument("--device", default="auto", help=_DEVICE_HELP)
    _add_precision(predict)
    _add_backend(predict, "predict")


def _add_backend(command: argparse.ArgumentParser, verb: str) -> None:
    command.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help=f"torch: {verb} with a run folder's model in PyTorch; onnx: with an ONNX export (loratune export RUN "
        "--format onnx) on ONNX Runtime; auto: each folder for what it is.",
    )


def _compare_arguments(compare: argparse.ArgumentParser) -> None:
    methods = ", ".join(["base", *[name for name, m in METHODS.items() if m.trains]])
    compare.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"Comma-separated: {methods}.")
    compare.add_argument("--output-dir", dest="compare_dir", required=True, help="Folder for all runs.")
    compare.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="Runs per method (seeds train.seed, train.seed + 1, ...); the table shows mean ± std and a paired "
        "significance test of LoRA against each other method.",
    )
    compare.add_argument(
        "--overwrite",
        dest="train.overwrite",
        action="store_true",
        default=argparse.SUPPRESS,
        help="Replace the runs an earlier comparison left in --output-dir (refused otherwise); each is replaced only "
        "once its new run has finished.",
    )
    _add_config_flags(compare, skip={"train.output_dir", "train.overwrite", "lora.method"})


def _tune_arguments(tune: argparse.ArgumentParser) -> None:
    tune.add_argument("--output-dir", dest="tune_dir", required=True, help="Folder for the study and its results.")
    tune.add_argument("--n-trials", type=int, default=20, help="Finished or pruned trials to run (default 20).")
    tune.add_argument("--timeout", type=float, help="Stop starting trials after this many seconds.")
    tune.add_argument("--metric", default="f1", help="Validation score to optimise: f1 (macro), accuracy or loss.")
    tune.add_argument("--max-epochs", type=int, help="Epochs a trial may run at most (default: train.num_epochs).")
    tune.add_argument("--space", help="YAML file of ranges replacing the method's (see docs/tuning.md).")
    tune.add_argument(
        "--storage", help="Optuna storage URL shared by several processes (default: SQLite in --output-dir)."
    )
    tune.add_argument("--resume", action="store_true", help="Continue a study a crash or a kill interrupted.")
    tune.add_argument("--pruner", default="median", help="median (default), hyperband or none.")
    tune.add_argument("--keep-all", action="store_true", help="Keep every trial's run folder, not only the best.")
    _add_config_flags(tune, skip={"train.output_dir", "train.overwrite"})


def _check_data_arguments(check: argparse.ArgumentParser) -> None:
    check.add_argument("--output", help="Write the checks as JSON here.")
    check.add_argument("--overwrite", action="store_true", help="Replace an existing --output file.")
    _add_config_flags(check, sections=("data",))  # no model, no training: its help lists only what it reads


def _export_arguments(export: argparse.ArgumentParser) -> None:
    export.add_argument("run", help="Run folder.")
    _add_trust_flag(export)
    export.add_argument(
        "--output-dir", required=True, help="Folder to write; must be missing, empty, or (with --overwrite) an export."
    )
    export.add_argument(
        "--adapter-only", action="store_true", help="Copy the PEFT adapter, tokenizer and labels instead of merging."
    )
    export.add_argument(
        "--overwrite", action="store_true", help="Replace an earlier export in --output-dir (never other files)."
    )
    export.add_argument(
        "--format",
        choices=("transformers", "onnx"),
        default="transformers",
        help="transformers: a model `transformers.pipeline` loads; onnx: a graph for ONNX Runtime, checked on the "
        "run's validation and test splits (needs loratune[onnx]).",
    )
    export.add_argument(
        "--quantize",
        choices=("int8",),
        help="With --format onnx: dynamic int8 quantisation as well, the default graph unless it loses more than "
        "one point of accuracy or macro-F1.",
    )
    export.add_argument(
        "--force", action="store_true", help="With --quantize: make the int8 graph the default whatever it loses."
    )


# `loratune serve`'s limits: each flag names its `ServeOptions` field.
_SERVE_LIMITS = {
    "--max-concurrent-requests": "Requests in flight at most; beyond, 429 at once",
    "--max-batch-tokens": "Padded tokens per batch at most",
    "--max-batch-requests": "Texts per batch at most",
    "--max-client-batch-size": "Texts in one request at most; beyond, 413",
    "--payload-limit": "Request body bytes at most; beyond, 413",
}


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "runs", nargs="*", metavar="RUN", help="Finished run folders or ONNX exports, each served under its name."
    )
    serve.add_argument(
        "--name", action="append", default=[], metavar="NAME=RUN", help="A run served under NAME (repeatable)."
    )
    _add_trust_flag(serve)
    serve.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
    serve.add_argument("--port", type=int, default=8080, help="Port to listen on (default 8080).")
    serve.add_argument("--device", default="auto", help=_DEVICE_HELP)
    serve.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="As for predict: auto is each run's own precision where this CPU or GPU runs it fast. The answers are "
        "predict's at the same precision, except in bf16 a text batched with others of other lengths may round "
        "differently (see docs/serving.md).",
    )
    _add_backend(serve, "serve")
    serve.add_argument(
        "--api-key", default=None, help="Require `Authorization: Bearer KEY` on every route but /health."
    )
    defaults = ServeOptions()
    for flag, text in _SERVE_LIMITS.items():
        attr = flag.removeprefix("--").replace("-", "_")
        serve.add_argument(flag, type=int, default=getattr(defaults, attr), help=f"{text} (default %(default)s).")
    serve.add_argument(
        "--no-auto-truncate", dest="auto_truncate", action="store_false",
        help='Answer a text longer than the model reads with 413 unless its request sends "truncate": true '
        "(default: score its start).",
    )  # fmt: skip
    serve.add_argument(
        "--drain-timeout", type=float, default=defaults.drain_timeout_s,
        help="Seconds SIGTERM or Ctrl-C waits for requests in flight before exiting (default %(default)s).",
    )  # fmt: skip


def _report_arguments(report: argparse.ArgumentParser) -> None:
    report.add_argument("run", help="Run folder.")
    _add_trust_flag(report)


_COMMANDS = {
    "train": (
        "Evaluate, fine-tune with LoRA, evaluate again; write a run folder.",
        _train_arguments,
        commands.cmd_train,
    ),
    "validate": ("Check a config (and flags) without loading a model.", _validate_arguments, commands.cmd_validate),
    "evaluate": ("Score a finished run on a labelled dataset.", _evaluate_arguments, commands.cmd_evaluate),
    "predict": ("Label texts with a finished run.", _predict_arguments, commands.cmd_predict),
    "compare": (
        "Train several methods on the same data and compare them in one table.",
        _compare_arguments,
        commands.cmd_compare,
    ),
    "tune": (
        "Search a method's settings with Optuna (pruning, resumable, shareable storage); the best trained again.",
        _tune_arguments,
        commands.cmd_tune,
    ),
    "check-data": (
        "Check a dataset's files (duplicates, shared texts, conflicting labels) without a model.",
        _check_data_arguments,
        commands.cmd_check_data,
    ),
    "export": (
        "Write a run as a plain transformers model (LoRA merged), its adapter, or an ONNX graph (int8 optional).",
        _export_arguments,
        commands.cmd_export,
    ),
    "serve": (
        "Serve finished runs over HTTP (TEI's /predict, OpenAI-style /v1/classify), many adapters on one base.",
        _serve_arguments,
        commands.cmd_serve,
    ),
    "report": ("Rebuild plots, report.md and report.html from a run folder.", _report_arguments, commands.cmd_report),
}
