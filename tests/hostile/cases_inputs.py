"""Hostile inputs: data files, flags and config files that a command must refuse in one line (or read as the user
meant), each a `sweep.Case`."""

from __future__ import annotations

import json
import random
from pathlib import Path

from hostile.sweep import Case, World

TRAIN_FLAGS = ["--epochs", "1", "--no-progress", "--device", "cpu", "--precision", "fp32", "--batch-size", "8"]
GOOD = "great film, the music was very good"
BAD = "an awful plot and a very bad actor"


def train(world: World, data: Path, *extra: str) -> list[str]:
    out = world.root / "out"
    return ["train", "--data", str(data), "--model", str(world.model), "--output-dir", str(out), *TRAIN_FLAGS, *extra]


def labelled(rows: int = 24, extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """`rows` well-formed rows of two classes, then the `extra` (text, label) rows."""
    rng = random.Random(rows)
    words = ["the", "a", "movie", "film", "plot", "story", "was", "is", "very"]
    base = [
        (" ".join(rng.choices(words, k=4)) + (" great" if i % 2 else " awful"), "good" if i % 2 else "bad")
        for i in range(rows)
    ]
    return base + (extra or [])


def csv_text(rows: list[tuple[str, str]], header: str = "text,label") -> str:
    return header + "\n" + "".join(f'"{t}",{label}\n' for t, label in rows)


def data_file(name: str, content: str | bytes):
    """argv for `train` on one data file `name` holding `content`."""

    def argv(world: World) -> list[str]:
        path = world.root / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return train(world, path)

    return argv


def checked_labels(content: str, expected: set[str], name: str = "data.csv"):
    """argv and check for `check-data` on one file whose labels must read as `expected`."""

    def argv(world: World) -> list[str]:
        (world.root / name).write_text(content, encoding="utf-8")
        return ["check-data", "--data", str(world.root / name), "--output", str(world.root / "checks.json")]

    def check(world: World, out: str, err: str) -> str | None:
        found = set(json.loads((world.root / "checks.json").read_text())["label_counts"])
        return None if found == expected else f"labels {sorted(found)}, meant {sorted(expected)}"

    return argv, check


def data_cases() -> list[Case]:
    rows = labelled()
    refused = {
        "empty file": ("data.csv", b""),
        "header only": ("data.csv", "text,label\n"),
        "no label column": ("data.csv", "text\n" + "".join(f'"{t}"\n' for t, _ in rows)),
        "no text column": ("data.csv", "words,label\n" + "".join(f'"{t}",{lab}\n' for t, lab in rows)),
        "a row with extra fields": ("data.csv", csv_text(rows) + "one,two,three\n"),
        "a quote never closed": ("data.csv", csv_text(rows) + '"never closed,good\n'),
        "latin-1 bytes": ("data.csv", csv_text(rows).encode() + "caf\xe9,good\n".encode("latin-1")),
        "binary garbage": ("data.csv", bytes(random.Random(1).randrange(256) for _ in range(4000))),
        "utf-16": ("data.csv", csv_text(rows).encode("utf-16")),
        "labels differing only in case": ("data.csv", csv_text(rows + [("a fine film", "Good")] * 3)),
        "labels differing only in spaces": ("data.csv", csv_text(rows + [("a fine film", " good ")] * 3)),
        "one class only": ("data.csv", csv_text([(t, "good") for t, _ in rows])),
        "every label missing": ("data.csv", csv_text([(t, "") for t, _ in rows])),
        "every label NaN": ("data.csv", csv_text([(t, "NaN") for t, _ in rows])),
        "every text empty": ("data.csv", "text,label\n" + "".join(f'"",{lab}\n' for _, lab in rows)),
        "one row": ("data.csv", csv_text(rows[:1])),
        "jsonl broken line": (
            "data.jsonl",
            "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows) + "{oops\n",
        ),
        "jsonl line that is a list": (
            "data.jsonl",
            "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows) + "[1, 2]\n",
        ),
        "jsonl without text": (
            "data.jsonl",
            "".join(json.dumps({"words": t, "label": lab}) + "\n" for t, lab in rows),
        ),
        "parquet of garbage": ("data.parquet", b"PAR1 not really parquet PAR1"),
        "unknown extension": ("data.xlsx", csv_text(rows)),
        "tsv with commas": ("data.tsv", csv_text(rows)),
        "duplicate header": ("data.csv", "text,text,label\n" + "".join(f'"{t}","{t}",{lab}\n' for t, lab in rows)),
        "a nul byte header": ("data.csv", b"te\x00xt,label\n" + csv_text(rows).split("\n", 1)[1].encode()),
    }
    cases = [Case(f"data: {name}", "data", "refuse", data_file(*spec)) for name, spec in refused.items()]
    cases += [
        Case("data: missing path", "data", "refuse", lambda w: train(w, w.root / "nowhere.csv")),
        Case("data: folder without a train file", "data", "refuse", lambda w: train(w, w.mine)),
        Case(
            "data: --label-column that does not exist",
            "data",
            "refuse",
            lambda w: train(w, w.data, "--label-column", "nope"),
        ),
        Case(
            "data: --text-column that does not exist",
            "data",
            "refuse",
            lambda w: train(w, w.data, "--text-column", "nope"),
        ),
        Case("data: a folder named train.csv", "data", "refuse", _folder_named_train),
        Case("data: a class only the test file has", "data", "refuse", _class_train_lacks),
    ]
    meant = {"bad", "good"}
    for token in ["NaN", "nan", "None", "null", "NULL", "N/A", "n/a", "NA", "", "   ", "\x1b[31m", "\x00"]:
        argv, check = checked_labels(csv_text(labelled(extra=[("a film", token)] * 3)), meant)
        cases.append(Case(f"labels: {token!r} is missing, not a class", "labels", "ok", argv, check))
    readable = {
        "texts with commas and quotes": (csv_text(labelled(extra=[('a film, ""really"" good', "good")])), meant),
        "a byte-order mark": ("\ufeff" + csv_text(labelled()), meant),
        "CRLF line ends": (csv_text(labelled()).replace("\n", "\r\n"), meant),
        "labels that are numbers": (
            csv_text([(t, "1" if lab == "good" else "0") for t, lab in labelled()]),
            {"0", "1"},
        ),
        "texts that look missing": (
            csv_text(labelled(extra=[("NA", "good"), ("null", "bad"), ("None", "good")])),
            meant,
        ),
    }
    for name, (content, expected) in readable.items():
        argv, check = checked_labels(content, expected)
        cases.append(Case(f"data: {name}", "data", "ok", argv, check))
    return cases


def _class_train_lacks(world: World) -> list[str]:
    """The model would never see one example of the class it is scored on."""
    with (world.data / "test.csv").open("a") as handle:
        handle.write('"an odd one",neutral\n"another odd one",neutral\n')
    return train(world, world.data)


def _folder_named_train(world: World) -> list[str]:
    folder = world.root / "odd"
    (folder / "train.csv").mkdir(parents=True)
    return train(world, folder)


# (flag, bad values): every numeric option, and a few of the named choices.
BAD_FLAGS = {
    "--learning-rate": ["nan", "inf", "-1", "0", "1e30", "abc"],
    "--head-learning-rate": ["nan", "-1", "inf"],
    "--weight-decay": ["nan", "-0.1", "inf"],
    "--warmup-ratio": ["-0.1", "1.5", "nan"],
    "--max-grad-norm": ["-1", "nan", "inf"],
    "--seed": ["-1", "4294967296", "1.5", "abc"],
    "--epochs": ["0", "-1", "1.5", "nan"],
    "--batch-size": ["0", "-8", "abc"],
    "--eval-batch-size": ["0", "-1"],
    "--gradient-accumulation-steps": ["0", "-1"],
    "--lora-r": ["0", "-4", "1.5"],
    "--lora-alpha": ["nan", "-1", "0", "inf"],
    "--lora-dropout": ["-0.1", "1.0", "nan"],
    "--dropout": ["-0.1", "1.5", "nan"],
    "--max-length": ["0", "-5"],
    "--validation-ratio": ["-0.1", "1.0", "nan", "2"],
    "--test-ratio": ["-0.1", "1.5"],
    "--max-train-samples": ["0", "-1"],
    "--max-eval-samples": ["0", "-3"],
    "--class-weights": ["inf,1", "nan,1", "-1,1", "0,1", "a,b"],
    "--precision": ["fp7"],
    "--method": ["qlora"],
    "--pooling": ["median"],
    "--task": ["triple"],
}
GOOD_FLAGS = {"--learning-rate": "1e-4", "--seed": "0", "--warmup-ratio": "0", "--lora-dropout": "0", "--epochs": "7"}


def validate(world: World, *extra: str) -> list[str]:
    return ["validate", "--data", str(world.data), "--model", str(world.model), *extra]


def flag_cases() -> list[Case]:
    cases = []
    for flag, values in BAD_FLAGS.items():
        for value in values:
            cases.append(
                Case(f"flag: {flag} {value}", "flags", "refuse", lambda w, f=flag, v=value: validate(w, f, v))
            )
            if flag in ("--learning-rate", "--seed", "--class-weights") and value in ("nan", "-1", "inf,1"):
                # train checks the same numbers as validate, before anything loads
                cases.append(
                    Case(
                        f"flag: train {flag} {value}",
                        "flags",
                        "refuse",
                        lambda w, f=flag, v=value: train(w, w.data, f, v),
                    )
                )
    for flag, value in GOOD_FLAGS.items():

        def check(world: World, out: str, err: str, v: str = value) -> str | None:
            return None if v in out or str(float(v)) in out else f"the config printed lacks {v}"

        cases.append(
            Case(f"flag: {flag} {value} is fine", "flags", "ok", lambda w, f=flag, v=value: validate(w, f, v), check)
        )
    return cases


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """YAML of `levels` anchors, each a list of `width` aliases of the one before: width ** levels items when
    expanded (387 million for 9 and 9), a few hundred bytes as written."""
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


BOMB = _alias_bomb()
CONFIGS = {
    "not UTF-8": "train:\n  num_epochs: 2\n# caf\xe9\n".encode("latin-1"),
    "an alias bomb": "data:\n  max_length: 64\n"
    + "train:\n  class_weights:\n"
    + "".join("    " + line + "\n" for line in BOMB.splitlines()),
    "an alias": "defaults: &d {num_epochs: 2}\ntrain: *d\n",
    "a list": "- train\n- data\n",
    "a scalar": "just some words\n",
    "an unknown section": "trainer:\n  num_epochs: 2\n",
    "an unknown key": "train:\n  num_epoch: 2\n",
    "a word where a number goes": "train:\n  num_epochs: many\n",
    "a NaN learning rate": "train:\n  learning_rate: .nan\n",
    "an infinite learning rate": "train:\n  learning_rate: .inf\n",
    "a negative seed": "train:\n  seed: -1\n",
    "tabs": "train:\n\tnum_epochs: 2\n",
    "an unclosed bracket": "train: {num_epochs: 2\n",
    "a python tag": "train: !!python/object/apply:os.system ['echo hi']\n",
    "a key given twice": "train:\n  num_epochs: 3\n  num_epochs: 30\n",
    "binary": bytes(range(256)),
}


def config_cases() -> list[Case]:
    def with_config(content: str | bytes):
        def argv(world: World) -> list[str]:
            path = world.root / "config.yaml"
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
            return validate(world, "--config", str(path))

        return argv

    cases = [Case(f"config: {name}", "config", "refuse", with_config(c)) for name, c in CONFIGS.items()]
    cases.append(
        Case("config: missing file", "config", "refuse", lambda w: validate(w, "--config", str(w.root / "nope.yaml")))
    )
    cases.append(Case("config: a folder", "config", "refuse", lambda w: validate(w, "--config", str(w.mine))))
    cases.append(
        Case(
            "config: empty is the defaults",
            "config",
            "ok",
            with_config(""),
            lambda w, o, e: None if "num_epochs" in o else "no config printed",
        )
    )
    return cases
