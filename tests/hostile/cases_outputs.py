"""Hostile uses of what loratune wrote and where it writes: damaged run folders, bad predict input, and output
destinations that hold something of the user's (or the command's own input), each a `sweep.Case`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml

from hostile.cases_inputs import TRAIN_FLAGS
from hostile.sweep import Case, World

PREDICT = ["--text", "great movie", "--device", "cpu", "--precision", "fp32"]


def _edit_json(path: Path, change: Callable) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _edit_yaml(path: Path, change: Callable) -> None:
    settings = yaml.safe_load(path.read_text())
    change(settings)
    path.write_text(yaml.safe_dump(settings, sort_keys=False))


def _flip_byte(path: Path, at: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


# Damage done to a finished run's copy; every one must be refused by whatever opens the run.
DAMAGE: dict[str, Callable[[Path], None]] = {
    "labels reordered": lambda r: _edit_json(r / "labels.json", lambda x: x[::-1]),
    "labels not a list": lambda r: (r / "labels.json").write_text('{"0": "bad"}'),
    "labels empty": lambda r: (r / "labels.json").write_text("[]"),
    "labels removed": lambda r: (r / "labels.json").unlink(),
    "labels binary": lambda r: (r / "labels.json").write_bytes(b"\xff\xfe\x00"),
    "config max_length halved": lambda r: _edit_yaml(r / "config.yaml", lambda s: s["data"].update(max_length=8)),
    "config pooling changed": lambda r: _edit_yaml(r / "config.yaml", lambda s: s["model"].update(pooling="mean")),
    "config base model changed": lambda r: _edit_yaml(
        r / "config.yaml", lambda s: s["model"].update(name_or_path="bert-base-uncased")
    ),
    "config removed": lambda r: (r / "config.yaml").unlink(),
    "config garbage": lambda r: (r / "config.yaml").write_text("{{{"),
    "tokenizer.json removed": lambda r: (r / "tokenizer" / "tokenizer.json").unlink(),
    "tokenizer vocab edited": lambda r: (r / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\n"),
    "a file added to the tokenizer": lambda r: (r / "tokenizer" / "added_tokens.json").write_text('{"x": 99}'),
    "tokenizer folder removed": lambda r: __import__("shutil").rmtree(r / "tokenizer"),
    "temperature 1e-320": lambda r: _edit_json(r / "calibration.json", lambda c: {**c, "temperature": 1e-320}),
    "temperature negative": lambda r: _edit_json(r / "calibration.json", lambda c: {**c, "temperature": -1.0}),
    "temperature a string": lambda r: _edit_json(r / "calibration.json", lambda c: {**c, "temperature": "hot"}),
    "calibration removed": lambda r: (r / "calibration.json").unlink(),
    "thresholds in a single-label run": lambda r: (r / "thresholds.json").write_text('{"bad": 0.5, "good": 0.5}'),
    "manifest removed": lambda r: (r / "checksums.json").unlink(),
    "manifest garbage": lambda r: (r / "checksums.json").write_text("not json"),
    "manifest emptied": lambda r: (r / "checksums.json").write_text("{}"),
    "weights manifest removed": lambda r: (r / "adapter" / "checksums.json").unlink(),
    "weights truncated": lambda r: (r / "adapter" / "adapter_model.safetensors").write_bytes(
        (r / "adapter" / "adapter_model.safetensors").read_bytes()[:200]
    ),
    "a weight byte flipped": lambda r: _flip_byte(r / "adapter" / "adapter_model.safetensors"),
    "adapter config edited": lambda r: _edit_json(r / "adapter" / "adapter_config.json", lambda c: {**c, "r": 64}),
    "adapter removed": lambda r: __import__("shutil").rmtree(r / "adapter"),
    "COMPLETE removed": lambda r: (r / "COMPLETE").unlink(),
    "metrics garbage": lambda r: (r / "metrics.json").write_text("[1, 2"),
    "metrics removed": lambda r: (r / "metrics.json").unlink(),
}


def damaged(damage: Callable[[Path], None], command: str):
    def argv(world: World) -> list[str]:
        damage(world.run)
        if command == "predict":
            return ["predict", str(world.run), *PREDICT]
        if command == "evaluate":
            return ["evaluate", str(world.run), "--device", "cpu"]
        return ["export", str(world.run), "--output-dir", str(world.root / "exported")]

    return argv


def run_cases() -> list[Case]:
    cases = [
        Case(f"run: {name} (predict)", "run folder", "refuse", damaged(d, "predict"), needs_run=True)
        for name, d in DAMAGE.items()
    ]
    for name in ("labels reordered", "config max_length halved", "a weight byte flipped", "manifest removed"):
        for command in ("evaluate", "export"):
            cases.append(
                Case(
                    f"run: {name} ({command})", "run folder", "refuse", damaged(DAMAGE[name], command), needs_run=True
                )
            )
    cases += [
        Case(
            "run: a path that does not exist",
            "run folder",
            "refuse",
            lambda w: ["predict", str(w.root / "nope"), *PREDICT],
        ),
        Case(
            "run: a file, not a folder",
            "run folder",
            "refuse",
            lambda w: ["predict", str(w.mine / "thesis.tex"), *PREDICT],
        ),
        Case("run: a folder that is no run", "run folder", "refuse", lambda w: ["predict", str(w.mine), *PREDICT]),
        Case(
            "run: the intact copy predicts",
            "run folder",
            "ok",
            lambda w: ["predict", str(w.run), *PREDICT],
            _one_answer,
            True,
        ),
        Case(
            "run: --trust-unverified loads it without its manifest",
            "run folder",
            "ok",
            lambda w: [*damaged(DAMAGE["manifest removed"], "predict")(w), "--trust-unverified"],
            _one_answer,
            True,
        ),
    ]
    return cases


def _one_answer(world: World, out: str, err: str) -> str | None:
    lines = out.strip().splitlines()
    if len(lines) != 1 or not lines[0].endswith("\tgreat movie") or lines[0].split()[0] not in ("good", "bad"):
        return f"not one labelled answer: {out[-200:]!r}"
    return None


PREDICT_INPUTS: dict[str, tuple[str, bytes]] = {
    "latin-1 bytes": ("in.txt", "caf\xe9 good\n".encode("latin-1")),
    "binary": ("in.txt", bytes(range(256)) * 4),
    "a broken JSON line": ("in.jsonl", b'{"text": "fine"}\n{oops\n'),
    "a null text": ("in.jsonl", b'{"text": null}\n'),
    "a number for text": ("in.jsonl", b'{"text": 12345}\n'),
    "a list for text": ("in.jsonl", b'{"text": ["a", "b"]}\n'),
    "a row without text": ("in.jsonl", b'{"text": "fine", "id": 1}\n{"words": "fine", "id": 2}\n'),
    "an empty file": ("in.txt", b""),
    "a csv without a text column": ("in.csv", b"a,b\n1,2\n"),
    "a csv row short of its header": ("in.csv", b"id,text\n1,fine\n2\n"),
    "an unknown extension": ("in.docx", b"great movie\n"),
}


def predict_cases() -> list[Case]:
    def with_input(name: str, content: bytes):
        def argv(world: World) -> list[str]:
            (world.root / name).write_bytes(content)
            return ["predict", str(world.run), "--input", str(world.root / name), "--device", "cpu"]

        return argv

    cases = [
        Case(f"predict: {n}", "predict input", "refuse", with_input(*spec), needs_run=True)
        for n, spec in PREDICT_INPUTS.items()
    ]
    cases += [
        Case(
            "predict: --input that does not exist",
            "predict input",
            "refuse",
            lambda w: ["predict", str(w.run), "--input", str(w.root / "no.txt")],
            needs_run=True,
        ),
        Case(
            "predict: a 5 MB line",
            "predict input",
            "ok",
            with_input("in.txt", b"great movie " * 440_000 + b"\n"),
            lambda w, o, e: None if "note: 1 of 1 texts" in e else "no truncation note",
            True,
        ),
    ]
    return cases


def _train(world: World, out: Path | str, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(world.data),
        "--model",
        str(world.model),
        "--output-dir",
        str(out),
        *TRAIN_FLAGS,
        *extra,
    ]


def _export(world: World, out: Path | str, *extra: str) -> list[str]:
    return ["export", str(world.run), "--output-dir", str(out), *extra]


def _compare(world: World, out: Path | str, *extra: str) -> list[str]:
    argv = ["compare", "--data", str(world.data), "--model", str(world.model), "--output-dir", str(out)]
    return [*argv, "--methods", "head", *TRAIN_FLAGS, *extra]


# (name, command builder, where (from the world), extra flags): every one must be refused before anything is written.
def _destinations() -> list[tuple[str, Callable, Callable[[World], Path | str], tuple[str, ...]]]:
    places: dict[str, Callable[[World], Path | str]] = {
        "/": lambda w: "/",
        "the home folder": lambda w: w.home,
        "a folder of the user's files": lambda w: w.mine,
        "a user's file": lambda w: w.mine / "thesis.tex",
        "the data folder": lambda w: w.data,
        "a folder inside the data": lambda w: w.data / "runs",
        "the model folder": lambda w: w.model,
        "inside the model folder": lambda w: w.model / "out",
        "inside the run folder": lambda w: w.run / "sub",
        "the folder holding the run": lambda w: w.root,
    }
    found = []
    for command, build in (("train", _train), ("export", _export), ("compare", _compare)):
        for place, where in places.items():
            if command == "export" and place == "a folder inside the data":
                continue  # the world's data is no input of the run's export: a new folder anywhere else is fine
            found.append((f"{command} into {place}", build, where, ()))
            if place in (
                "/",
                "the home folder",
                "a folder of the user's files",
                "the folder holding the run",
                "the data folder",
            ):
                found.append((f"{command} into {place} --overwrite", build, where, ("--overwrite",)))
    found.append(("export onto the run itself --overwrite", _export, lambda w: w.run, ("--overwrite",)))
    found.append(("train onto a finished run without --overwrite", _train, lambda w: w.run, ()))
    found.append(("compare over a finished run without --overwrite", _compare, lambda w: w.run.parent, ()))
    return found


def destination_cases() -> list[Case]:
    cases = [
        Case(
            f"destination: {name}",
            "destination",
            "refuse",
            lambda w, b=build, at=where, x=extra: b(w, at(w), *x),
            needs_run=True,
        )
        for name, build, where, extra in _destinations()
    ]
    files = {
        "predict --output onto its own --input": lambda w: [
            "predict",
            str(w.run),
            "--input",
            str(_texts(w)),
            "--output",
            str(_texts(w)),
        ],
        "predict --output onto the data": lambda w: [
            "predict",
            str(w.run),
            *PREDICT,
            "--output",
            str(w.data / "train.csv"),
        ],
        "predict --output into the run folder": lambda w: [
            "predict",
            str(w.run),
            *PREDICT,
            "--output",
            str(w.run / "labels.json"),
        ],
        "predict --output onto a folder": lambda w: ["predict", str(w.run), *PREDICT, "--output", str(w.mine)],
        "evaluate --output onto the run's metrics": lambda w: [
            "evaluate",
            str(w.run),
            "--output",
            str(w.run / "metrics.json"),
        ],
        "evaluate --output onto the data": lambda w: ["evaluate", str(w.run), "--output", str(w.data / "test.csv")],
        "check-data --output onto the data": lambda w: [
            "check-data",
            "--data",
            str(w.data),
            "--output",
            str(w.data / "train.csv"),
        ],
    }
    cases += [
        Case(f"destination: {name}", "destination", "refuse", argv, needs_run=True) for name, argv in files.items()
    ]
    cases += [
        Case(
            "destination: train into a new folder",
            "destination",
            "ok",
            lambda w: _train(w, w.root / "new"),
            _finished("new"),
            True,
        ),
        Case(
            "destination: train --overwrite onto a finished run",
            "destination",
            "ok",
            lambda w: _train(w, w.run, "--overwrite"),
            _finished("run"),
            needs_run=True,
            replaces="run",
        ),
        Case(
            "destination: export into a new folder",
            "destination",
            "ok",
            lambda w: _export(w, w.root / "exp"),
            _exported,
            True,
        ),
    ]
    return cases


def _texts(world: World) -> Path:
    path = world.root / "texts.txt"
    path.write_text("great movie\nawful plot\n")
    return path


def _finished(name: str):
    def check(world: World, out: str, err: str) -> str | None:
        folder = world.root / name
        if not (folder / "COMPLETE").exists():
            return f"{name} has no COMPLETE"
        leftovers = [p.name for p in world.root.iterdir() if p.name.startswith(".")]
        return f"left behind {leftovers}" if leftovers else None

    return check


def _exported(world: World, out: str, err: str) -> str | None:
    folder = world.root / "exp"
    return (
        None if (folder / "config.json").exists() and (folder / "model.safetensors").exists() else "no model exported"
    )
