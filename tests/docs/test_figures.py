"""The figures the README and docs/ quote are the ones `docs/figures.py` measured and stored, and no other
measured-looking number hides in the text."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Numbers that look measured but are not: settings, constants of the code, data sizes, external published figures
# and illustrations. Each is (file, the text around it) so an allowance cannot hide a measurement elsewhere.
ALLOWED = {
    ("README.md", "'score': 0.98"),  # what the Python API returns, shown by its shape
    ("docs/configuration.md", "warmup 6%"),
    ("docs/configuration.md", "starts at probability 0.5"),
    ("docs/distributed.md", "accuracies 0.04 apart"),  # a test's tolerances
    ("docs/distributed.md", "agree to 0.005"),
    ("docs/run-folder.md", "95% percentile-bootstrap"),
    ("docs/run-folder.md", "(13% spam)"),
    ("docs/run-folder.md", "more than 1% of a split"),
    ("docs/configuration.md", "checks every 2 s"),
    ("docs/configuration.md", "`joy (0.91), love (0.64)`"),
    ("docs/configuration.md", "macro-F1 0.46"),
    ("docs/configuration.md", "13% spam"),
    ("docs/comparing.md", "below 0.05"),
    ("docs/run-folder.md", "(0.05 to 20)"),
    ("docs/run-folder.md", "more than 10%"),
    ("docs/distributed.md", "gradient_clipping: 1.0"),
    ("docs/distributed.md", "10.0.0.1"),
    ("docs/onnx.md", "transformers older than 4.58"),
    ("docs/tuning.md", "warmup (0 to 0.2 of the steps), weight decay (0 to 0.1)"),
    ("docs/tuning.md", "{low: 1.0e-4, high: 3.0e-3, log: true}"),
    ("docs/tuning.md", "dropout (0 to 0.2)"),
}
# a decimal, or a count with a unit of time, size, speed or share
MEASURED = re.compile(
    r"(?<![\w.=])(\d[\d,]*\.\d+|\d[\d,]*(?:\.\d+)? ?(?:s|ms|min|minutes|MB|GB|MiB|KiB|x|%))(?!\w|\.\d)"
)


@pytest.fixture(scope="module")
def figures():
    spec = importlib.util.spec_from_file_location("loratune_docs_figures", REPO / "docs" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("loratune_docs_figures", module)  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def test_every_experiment_is_stored_with_its_command_cpu_and_date(figures):
    store = json.loads(figures.STORE.read_text())
    for e in figures.EXPERIMENTS:
        record = store[e.name]
        assert record["commands"] == e.commands, f"{e.name}: the commands changed since it was measured; rerun it"
        assert record["machine"]["cpu"] and record["machine"]["cores"] >= 1
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", record["machine"]["date"])
        assert record["figures"]


def test_the_docs_quote_the_stored_figures(figures):
    passages = figures.rendered(figures.load_store())
    assert len(passages) == sum(len(e.quotes) for e in figures.EXPERIMENTS)
    for name, file, passage in passages:
        assert passage in (REPO / file).read_text(), f"{file} no longer quotes {name}'s figures as stored:\n{passage}"


def test_no_passage_waits_for_its_first_measurement():
    for path in DOCS:
        assert "[[figure " not in path.read_text(), f"{path.name}: run python docs/figures.py"


def test_no_other_measured_looking_number_is_in_the_docs(figures):
    quoted: dict[str, list[str]] = {}
    for _, file, passage in figures.rendered(figures.load_store()):
        quoted.setdefault(file, []).append(passage)
    strays = []
    for path in DOCS:
        file = str(path.relative_to(REPO))
        text = path.read_text()
        for passage in quoted.get(file, []):
            text = text.replace(passage, " ")
        for allowed_file, context in ALLOWED:
            if allowed_file == file:
                text = text.replace(context, " ")
        strays += [
            f"{file}: {m.group(0)!r} in {text[max(0, m.start() - 40) : m.end() + 20]!r}"
            for m in MEASURED.finditer(text)
        ]
    assert not strays, "measured-looking numbers no script produces:\n" + "\n".join(strays)


def test_every_allowance_is_still_needed():
    for file, context in ALLOWED:
        assert context in (REPO / file).read_text(), f"{file} no longer says {context!r}; drop it from ALLOWED"


def test_a_new_measurement_replaces_the_old_passage_and_fills_a_placeholder(figures, tmp_path, monkeypatch):
    def quote(f):
        return f"accuracy {f['accuracy']:.4f}"

    def other(f):
        return f"took {f['seconds']:.0f} s"

    experiment = figures.Experiment(
        "demo", 1, ["loratune train ..."], lambda work: {}, [("a.md", quote), ("a.md", other)]
    )
    monkeypatch.setattr(figures, "REPO", tmp_path)
    monkeypatch.setattr(figures, "EXPERIMENTS", [experiment])
    (tmp_path / "a.md").write_text("We got accuracy 0.8000 here; it [[figure demo.other]].\n")
    missing = figures.rewrite_docs("demo", {"accuracy": 0.8, "seconds": 5}, {"accuracy": 0.8375, "seconds": 61})
    assert missing == []
    assert (tmp_path / "a.md").read_text() == "We got accuracy 0.8375 here; it took 61 s.\n"
    # a passage edited by hand since: reported, not guessed at
    (tmp_path / "a.md").write_text("We got about 84% here.\n")
    missing = figures.rewrite_docs("demo", {"accuracy": 0.8375, "seconds": 61}, {"accuracy": 0.85, "seconds": 60})
    assert len(missing) == 2 and "accuracy 0.8500" in missing[0]
