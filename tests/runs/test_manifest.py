"""Every file that changes an answer is verified (loratune.runs.manifest): a finished run whose labels, config,
tokenizer, calibration or thresholds changed after training is refused in one line, exit 2, before anything is
scored, and the folder is left as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from loratune.cli import main
from loratune.runs import manifest


@pytest.fixture
def copy(bert_run, tmp_path) -> Path:
    return Path(shutil.copytree(bert_run.run_dir, tmp_path / "run"))


def refused(capsys, run: Path, *extra: str) -> str:
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["predict", str(run), "--text", "great movie", "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    return err


def test_a_finished_run_lists_its_answer_files(copy):
    listed = json.loads((copy / "checksums.json").read_text())
    assert {"config.yaml", "labels.json", "calibration.json", "tokenizer/tokenizer.json"} <= set(listed)
    assert "metrics.json" not in listed and "report.md" not in listed  # records and pages, not answers


def test_reordered_labels_are_refused(copy, capsys):
    labels = json.loads((copy / "labels.json").read_text())
    (copy / "labels.json").write_text(json.dumps(labels[::-1]))  # still valid: would invert every label
    assert "labels.json does not match its checksum" in refused(capsys, copy)


def test_an_edited_config_is_refused(copy, capsys):
    config = copy / "config.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["data"]["max_length"] //= 2  # still a valid config: texts would be cut shorter than in training
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    assert "config.yaml does not match its checksum" in refused(capsys, copy)


def test_a_deleted_tokenizer_file_is_refused(copy, capsys):
    (copy / "tokenizer" / "tokenizer.json").unlink()
    assert "tokenizer.json is missing (listed in" in refused(capsys, copy)


def test_a_temperature_outside_the_fitted_range_is_refused_even_with_matching_checksums(copy, capsys):
    path = copy / "calibration.json"
    calibration = json.loads(path.read_text())
    path.write_text(json.dumps({**calibration, "temperature": 1e-320}))
    assert "calibration.json does not match its checksum" in refused(capsys, copy)
    manifest.seal(copy)  # as if the run had saved it so
    assert "needs a 'temperature' from 0.05 to 20" in refused(capsys, copy)


def test_thresholds_in_a_single_label_run_are_refused(copy, capsys):
    (copy / "thresholds.json").write_text(json.dumps({"bad": 0.5, "good": 0.5}))
    assert "thresholds.json is not listed in" in refused(capsys, copy)
    manifest.seal(copy)
    err = refused(capsys, copy)
    assert "holds decision thresholds, but" in err and "is a single-label run" in err


def test_a_run_without_its_manifest_is_refused(copy, capsys):
    (copy / "checksums.json").unlink()
    assert "cannot be verified" in refused(capsys, copy)
    assert main(["evaluate", str(copy), "--device", "cpu"]) == 2
    assert "cannot be verified" in capsys.readouterr().err


def test_trust_unverified_loads_a_run_without_manifests_with_a_warning_and_the_same_answers(copy, capsys, caplog):
    expected = main(["predict", str(copy), "--text", "great movie", "--device", "cpu", "--precision", "fp32"])
    answer = capsys.readouterr().out
    (copy / "checksums.json").unlink()
    (copy / "adapter" / "checksums.json").unlink()
    assert "--trust-unverified" in refused(capsys, copy)  # the error names the way out
    argv = ["predict", str(copy), "--text", "great movie", "--device", "cpu", "--precision", "fp32"]
    assert main([*argv, "--trust-unverified"]) == expected == 0
    assert capsys.readouterr().out == answer
    assert "loaded unverified" in caplog.text and "adapter" in caplog.text
    for command in (["evaluate", str(copy), "--device", "cpu"], ["report", str(copy)]):
        assert main([*command, "--trust-unverified"]) == 0, command


def test_trust_unverified_still_verifies_every_file_a_manifest_lists(copy, capsys):
    (copy / "adapter" / "checksums.json").unlink()
    (copy / "labels.json").write_text(json.dumps(json.loads((copy / "labels.json").read_text())[::-1]))
    assert "labels.json does not match its checksum" in refused(capsys, copy, "--trust-unverified")


def test_the_report_of_a_finished_run_is_verified_too(copy, capsys):
    (copy / "labels.json").write_text(json.dumps(json.loads((copy / "labels.json").read_text())[::-1]))
    assert main(["report", str(copy)]) == 2
    assert "labels.json does not match its checksum" in capsys.readouterr().err
