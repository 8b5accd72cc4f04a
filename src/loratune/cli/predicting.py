"""`loratune predict`: input of any size read, scored and written a chunk at a time, with progress and an ETA."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from loratune.cli import texts as text_files
from loratune.cli.prediction_files import PredictionWriter, check_output_name, format_prediction
from loratune.cli.texts import InputFile
from loratune.errors import ConfigError, DataError
from loratune.model import hardware
from loratune.progress import Progress, announce
from loratune.runs.destination import check_destination

# More texts than this and predicting shows its progress.
PREDICT_PROGRESS_ROWS = 500


def _open_predictor(args: argparse.Namespace) -> tuple[Any, Any]:
    """(the run folder or ONNX export, its predictor) for `--backend` (see `export.onnx_folder.open_scorer`).

    Raises:
        ConfigError: for a backend the folder cannot run, or PyTorch options given to ONNX Runtime.
        RunError: for a damaged folder.
    """
    from loratune.export.onnx_folder import OnnxExport, open_scorer

    source = open_scorer(args.run, args.backend, args.trust_unverified)
    if not isinstance(source, OnnxExport):
        return source, source.predictor(device=args.device, precision=args.precision)
    if args.device not in ("auto", "cpu") or args.precision != "auto":
        raise ConfigError(
            "--device and --precision choose PyTorch's model; an ONNX export runs as exported, on the CPU."
        )
    return source, source.predictor()


def predict_command(args: argparse.Namespace) -> int:
    """`loratune predict`: texts from --text and --input, a chunk at a time, to the terminal or --output."""
    if args.output:  # before the model loads
        inputs = {"the run folder": args.run, "--input": args.input}
        check_destination(args.output, "--output", "file", inputs, args.overwrite)
        check_output_name(args.output)
    given = list(args.text or [])
    source = InputFile(args.input, args.text_column) if args.input else None
    total = len(given) + (source.scan() if source else 0)  # every row checked before the model loads
    if not total:
        raise DataError("Nothing to predict; pass --text 'some text' (repeatable) or --input FILE.")
    shown = total > PREDICT_PROGRESS_ROWS
    announce(f"loading {args.run} to predict {total:,} texts", shown)
    run, predictor = _open_predictor(args)
    predictor.at_least_one = args.at_least_one

    def chunks() -> Iterator[tuple[list[str], list[dict[str, Any]]]]:
        size = text_files.CHUNK_ROWS
        for start in range(0, len(given), size):
            texts = given[start : start + size]
            yield texts, [{"text": t} for t in texts]
        if source is not None:
            yield from source.chunks()

    columns = list(dict.fromkeys((["text"] if given else []) + (source.columns if source else [])))
    progress = Progress(total, "predicting", shown, unit="text")
    truncated = empty = done = 0
    with contextlib.ExitStack() as scope:
        writer = None
        if args.output:
            multi = run.task.needs_thresholds
            schema = source.arrow_schema if source else None
            writer = scope.enter_context(PredictionWriter(args.output, columns, run.labels, multi, schema))
        for texts, rows in chunks():  # a chunk at a time: memory stays flat however long the input
            predictions = predictor.predict(texts)
            truncated += predictor.count_truncated(texts)
            empty += sum(not text.strip() for text in texts)
            if writer is not None:
                writer.write(rows, predictions)
            else:
                for text, p in zip(texts, predictions, strict=True):
                    print(f"{format_prediction(p)}\t{text}")
            done += len(texts)
            progress.update(done)
            hardware.return_freed_memory()
    progress.close()
    if truncated:
        print(
            f"note: {truncated} of {total} texts were longer than {predictor.max_length} tokens; "
            "only their first tokens were read",
            file=sys.stderr,
        )
    if empty:  # kept, so that every input row has its prediction; training drops such rows
        print(f"note: {empty} of {total} texts are empty; their labels are guesses from no words", file=sys.stderr)
    if args.output:
        print(f"wrote {done:,} predictions to {args.output}", file=sys.stderr)
    return 0
