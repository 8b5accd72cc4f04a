"""Hostile inputs and a hostile machine, through the CLI: each is one line on stderr and exit status 2 (or simply
works, for long texts and numeric texts), and leaves what was already in the output folder as it was.

Conditions are made for real: bytes flipped inside a weight file's tensor data, a file-size limit
(RLIMIT_FSIZE) set in a child process halfway through training, a 4 MiB tmpfs (where user namespaces allow a
mount), chmod'ed folders, a 200,000-character CSV field, a column of digits.

CI runs as root, which writes through chmod. The read-only cases then run the CLI in a child process whose
capability bounding set lacks CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER (prctl PR_CAPBSET_DROP before
exec): root in that child obeys permission bits as any user does, so the check meets a real refusal.
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import tiny_config, write_csv

from loratune.cli import main
from loratune.runs.files import CHECKPOINT_DIR, CHECKSUMS_FILE, COMPLETE, LOCK_FILE, load_summary

SCORES = ("accuracy", "precision", "recall", "f1")
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def snapshot(folder: Path) -> dict[str, tuple[str, int] | None]:
    """Every path under `folder`: files with their sha256 and mtime, folders as None (so new files show too).

    The run lock is left out: a killed run leaves a stale one, which the next attempt may take over and release.
    """
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        if p.is_file()
        else None
        for p in sorted(folder.rglob("*"))
        if p.name != LOCK_FILE
    }


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err[-3000:]
    # A run that fails after its data were read has printed the data-checks block first: information, not error.
    lines = [line for line in err.strip().splitlines() if not line.startswith(("data checks: ", "  warning: "))]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: ")
    return lines[0]


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def cli_child(*argv: str, before: str = "", drop_root_override: bool = False) -> tuple[int, str]:
    """Run the CLI in a child process (its real stderr); `before` is Python run first (patches, limits)."""
    call = f"import sys\nfrom loratune.cli import main\nsys.exit(main({list(map(str, argv))!r}))"
    script = f"{textwrap.dedent(before)}\n{call}"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        capture_output=True,
        text=True,
        preexec_fn=_drop_write_override if drop_root_override and os.geteuid() == 0 else None,
    )
    return done.returncode, done.stderr


def _drop_write_override() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _root_can_be_refused() -> bool:
    if os.geteuid() != 0:
        return True
    done = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_drop_write_override, capture_output=True)
    return done.returncode == 0


def flip_tensor_bytes(file: Path, value: bytes = b"\xff") -> None:
    """Overwrite 64 bytes in the middle of a safetensors file's tensor data; its header and size stay intact.
    0xFF bytes read as NaN in float32."""
    data = bytearray(file.read_bytes())
    (header_length,) = struct.unpack("<Q", data[:8])
    start = 8 + header_length
    middle = start + (len(data) - start) // 2
    data[middle : middle + 64] = value * 64
    size = file.stat().st_size
    file.write_bytes(bytes(data))
    assert file.stat().st_size == size


@pytest.fixture
def lora_run(trained_run, tiny_bert, data_dir, tmp_path) -> Path:
    """A private copy of a finished one-epoch LoRA run, free to damage."""
    return Path(shutil.copytree(trained_run(tiny_bert, data_dir), tmp_path / "run"))


def _unfinished_run(tmp_path: Path, tiny_bert: Path, data_dir: Path, sabotage: str) -> tuple[Path, int, str]:
    """Train 3 epochs through the CLI in a child that, right after its first end-of-epoch checkpoint, runs
    `sabotage` (Python; `os`, `signal` and `resource` imported)."""
    run_dir = tmp_path / "unfinished"
    before = f"""
        import os, resource, signal
        import loratune.training.loop as train
        real_save = train.save_checkpoint
        def save_then_sabotage(*args, **kwargs):
            real_save(*args, **kwargs)
            train.save_checkpoint = real_save
            {sabotage}
        train.save_checkpoint = save_then_sabotage
    """
    code, err = cli_child(*_train_args(tiny_bert, data_dir, run_dir), before=before)
    return run_dir, code, err


def _train_args(tiny_bert: Path, data_dir: Path, run_dir: Path, epochs: int = 3) -> list[str]:
    return ["train", "--model", tiny_bert, "--data", data_dir, "--output-dir", run_dir, "--epochs", epochs,
            "--batch-size", 8, "--precision", "fp32", "--device", "cpu", "--learning-rate", 5e-3,
            "--no-progress"]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# A damaged adapter whose header is intact


def test_predict_refuses_an_adapter_damaged_inside_its_tensor_data(lora_run, capsys):
    flip_tensor_bytes(lora_run / "adapter" / "adapter_model.safetensors")
    before = snapshot(lora_run)
    line = one_line_error(*cli(capsys, "predict", lora_run, "--text", "great movie", "--device", "cpu"))
    assert "adapter_model.safetensors does not match its checksum" in line
    assert snapshot(lora_run) == before


def test_evaluate_refuses_a_damaged_adapter(lora_run, data_dir, tmp_path, capsys):
    flip_tensor_bytes(lora_run / "adapter" / "adapter_model.safetensors")
    before = snapshot(lora_run)
    out = tmp_path / "metrics.json"
    line = one_line_error(*cli(capsys, "evaluate", lora_run, "--data", data_dir, "--device", "cpu", "--output", out))
    assert "does not match its checksum" in line
    assert snapshot(lora_run) == before and not out.exists()


@pytest.mark.parametrize("form", [[], ["--adapter-only"]], ids=["merged", "adapter-only"])
def test_export_refuses_a_damaged_adapter_and_writes_nothing(lora_run, tmp_path, capsys, form):
    flip_tensor_bytes(lora_run / "adapter" / "adapter_model.safetensors")
    before = snapshot(lora_run)
    line = one_line_error(*cli(capsys, "export", lora_run, "--output-dir", tmp_path / "exported", *form))
    assert "does not match its checksum" in line
    assert snapshot(lora_run) == before
    assert not (tmp_path / "exported").exists() and not list(tmp_path.glob(".exported*"))


def test_a_changed_checksum_file_is_caught_too(lora_run, capsys):
    manifest = lora_run / "adapter" / CHECKSUMS_FILE
    listed = json.loads(manifest.read_text())
    listed["adapter_model.safetensors"] = "0" * 64
    manifest.write_text(json.dumps(listed))
    line = one_line_error(*cli(capsys, "predict", lora_run, "--text", "great movie", "--device", "cpu"))
    assert "does not match its checksum" in line


def test_weights_without_their_checksums_are_refused(lora_run, capsys):
    """Every folder of weights is saved with its checksums.json: without it the weights cannot be trusted."""
    (lora_run / "adapter" / CHECKSUMS_FILE).unlink()
    line = one_line_error(*cli(capsys, "predict", lora_run, "--text", "great movie", "--device", "cpu"))
    assert "checksums.json is missing" in line and "cannot be verified" in line


def rewrite_checksums(folder: Path) -> None:
    """Checksums of the files as they are now: weights a run saved in this state (checksums cannot catch it)."""
    from loratune.runs.integrity import compute_checksums

    manifest = folder / CHECKSUMS_FILE
    manifest.write_text(json.dumps(compute_checksums(folder, json.loads(manifest.read_text()))))


def test_nan_weights_with_matching_checksums_are_refused(lora_run, capsys):
    flip_tensor_bytes(lora_run / "adapter" / "adapter_model.safetensors")
    rewrite_checksums(lora_run / "adapter")
    before = snapshot(lora_run)
    line = one_line_error(*cli(capsys, "predict", lora_run, "--text", "great movie", "--device", "cpu"))
    assert "NaN or infinite values" in line
    assert snapshot(lora_run) == before


def test_finite_weights_that_overflow_to_infinite_scores_are_refused(lora_run, data_dir, capsys):
    """LoRA factors of 1e25 are finite, but their product is not: the scores are NaN, and predict and evaluate
    refuse them."""
    from safetensors.torch import load_file, save_file

    file = lora_run / "adapter" / "adapter_model.safetensors"
    tensors = {k: (v.abs() + 1) * 1e25 if "lora_" in k else v for k, v in load_file(file).items()}
    save_file(tensors, file)
    rewrite_checksums(lora_run / "adapter")
    line = one_line_error(*cli(capsys, "predict", lora_run, "--text", "great movie", "--device", "cpu"))
    assert "NaN or infinite scores" in line
    line = one_line_error(*cli(capsys, "evaluate", lora_run, "--data", data_dir, "--device", "cpu"))
    assert "NaN or infinite scores" in line


def test_resume_refuses_a_damaged_checkpoint(tmp_path, tiny_bert, data_dir, capsys):
    run_dir, code, _ = _unfinished_run(tmp_path, tiny_bert, data_dir, "os.kill(os.getpid(), signal.SIGKILL)")
    assert code == -9
    flip_tensor_bytes(run_dir / CHECKPOINT_DIR / "state.safetensors")
    before = snapshot(run_dir)
    line = one_line_error(*cli(capsys, "train", "--resume", run_dir))
    assert "state.safetensors does not match its checksum" in line
    assert snapshot(run_dir) == before


# ---------------------------------------------------------------------------------------------------------------
# A full disk


def test_a_run_that_hits_the_file_size_limit_stops_in_one_line_and_resumes_to_the_same_metrics(
    tmp_path, tiny_bert, data_dir, capsys
):
    """After epoch 1's checkpoint the child may write no file over 4 kB (SIGXFSZ ignored, so the write fails
    with EFBIG): epoch 2's checkpoint fails. The run stays resumable, and resumed ends where an uninterrupted run
    does."""
    limit = "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (4096, -1))"
    run_dir, code, err = _unfinished_run(tmp_path, tiny_bert, data_dir, limit)
    line = one_line_error(code, err)
    assert "File too large" in line and str(run_dir / CHECKPOINT_DIR) in line
    assert f"continue with: loratune train --resume {run_dir}" in line
    assert not (run_dir / COMPLETE).exists()
    # the epoch-1 checkpoint is intact and nothing half-written is left beside it
    assert json.loads((run_dir / CHECKPOINT_DIR / "state.json").read_text())["state"]["epoch"] == 1
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []
    from loratune.runs.weights import verify_weights

    verify_weights(run_dir / CHECKPOINT_DIR, ["state.safetensors", "state.json"])

    assert main(["train", "--resume", str(run_dir)]) == 0
    from loratune.training.recipe import run

    uninterrupted = run(tiny_config(tiny_bert, data_dir, tmp_path / "full", train__num_epochs=3))
    resumed = load_summary(run_dir)
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    assert resumed.after.confusion_matrix == uninterrupted.after.confusion_matrix
    for key in SCORES:
        assert getattr(resumed.after, key) == pytest.approx(getattr(uninterrupted.after, key))


def test_predictions_that_hit_the_file_size_limit_leave_the_previous_file_whole(lora_run, tmp_path):
    out = tmp_path / "predictions.csv"
    out.write_text("text,label\nearlier,good\n")
    before = snapshot(tmp_path)
    limit = "import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    limit += "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, -1))"
    texts = [a for i in range(40) for a in ("--text", f"great movie number {i}")]
    line = one_line_error(*cli_child("predict", lora_run, *texts, "--output", out, "--overwrite", before=limit))
    assert f"Could not write {out}: File too large" in line and "free some space" in line
    assert snapshot(tmp_path) == before  # the old file as it was, and no temporary file beside it


def _tmpfs_available() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _tmpfs_available(), reason="no user namespaces to mount a tmpfs in")
def test_a_run_on_a_small_tmpfs_is_refused_before_training(tmp_path, tiny_bert, data_dir):
    mount = tmp_path / "small"
    mount.mkdir()
    args = " ".join(f"'{a}'" for a in _train_args(tiny_bert, data_dir, mount / "run"))
    script = f"mount -t tmpfs -o size=4m tmpfs '{mount}' && exec '{sys.executable}' -m loratune {args}"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                          env=os.environ | {"HF_HUB_OFFLINE": "1"})  # fmt: skip
    line = one_line_error(done.returncode, done.stderr)
    assert "4.0 MiB free, but a lora run of" in line and "free some space" in line


# ---------------------------------------------------------------------------------------------------------------
# A read-only output


@pytest.fixture
def read_only(tmp_path):
    """A chmod 555 folder holding one file; made writable again afterwards so pytest can clean up."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    (folder / "keep.txt").write_text("already here\n")
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


needs_refusal = pytest.mark.skipif(not _root_can_be_refused(), reason="root cannot drop CAP_DAC_OVERRIDE here")


@needs_refusal
@pytest.mark.parametrize("command", ["train", "export", "export-onnx", "predict", "evaluate"])
def test_a_read_only_output_is_refused_before_the_model_loads(command, read_only, lora_run, tiny_bert, data_dir):
    args = {
        "train": _train_args(tiny_bert, data_dir, read_only / "run"),
        "export": ["export", lora_run, "--output-dir", read_only / "exported"],
        "export-onnx": ["export", lora_run, "--format", "onnx", "--quantize", "int8", "--output-dir", read_only / "x"],
        "predict": ["predict", lora_run, "--text", "great movie", "--output", read_only / "predictions.csv"],
        "evaluate": ["evaluate", lora_run, "--data", data_dir, "--output", read_only / "metrics.json"],
    }[command]
    before, run_before = snapshot(read_only), snapshot(lora_run)
    line = one_line_error(*cli_child(*args, drop_root_override=True))
    assert "cannot be written" in line and "no write permission" in line
    assert snapshot(read_only) == before and snapshot(lora_run) == run_before


def test_an_output_folder_under_a_file_is_refused(tmp_path, tiny_bert, data_dir, capsys):
    (tmp_path / "file.txt").write_text("a file\n")
    line = one_line_error(*cli(capsys, *_train_args(tiny_bert, data_dir, tmp_path / "file.txt" / "run")))
    assert "is a file, not a folder" in line


# ---------------------------------------------------------------------------------------------------------------
# max_length, long fields, numeric texts, unknown hub ids, and the preflight block


def test_max_length_beyond_the_models_positions_is_refused_before_training(tiny_bert, data_dir, tmp_path, capsys):
    args = _train_args(tiny_bert, data_dir, tmp_path / "run")
    line = one_line_error(*cli(capsys, *args, "--max-length", 100000))
    assert "data.max_length=100000" in line and "128 positions" in line and "--max-length 128" in line
    assert not (tmp_path / "run").exists()


def test_predict_reads_a_200000_character_field_and_says_it_was_truncated(lora_run, tmp_path, capsys):
    texts = ["great movie " * 16_667, "awful plot"]
    assert len(texts[0]) > 200_000
    write_csv(tmp_path / "in.csv", [{"text": t} for t in texts])
    code, err = cli(capsys, "predict", lora_run, "--input", tmp_path / "in.csv", "--output", tmp_path / "out.csv")
    assert code == 0, err
    assert "note: 1 of 2 texts were longer than 32 tokens" in err
    with (tmp_path / "out.csv").open(newline="") as handle:
        csv.field_size_limit(1 << 20)
        assert [row["text"] for row in csv.DictReader(handle)] == texts


def test_training_reads_a_200000_character_field_and_counts_it_as_truncated(tmp_path, tiny_bert, data_dir, capsys):
    data = Path(shutil.copytree(data_dir, tmp_path / "data"))
    with (data / "train.csv").open("a", newline="") as handle:
        csv.writer(handle).writerow(["great film " * 20_000, "good"])
    assert main([str(a) for a in _train_args(tiny_bert, data, tmp_path / "run", epochs=1)]) == 0
    summary = load_summary(tmp_path / "run")
    assert summary.data.truncated["train"] >= 1 and summary.data.train_size == 41


def test_a_text_column_of_digits_is_read_as_text(tmp_path, tiny_bert):
    from loratune.config import DataArgs
    from loratune.data.splits import load_splits

    rows = [{"text": f"{i:03d}", "label": "good" if i % 2 else "bad"} for i in range(60)]
    write_csv(tmp_path / "digits.csv", rows)
    splits = load_splits(DataArgs(path=str(tmp_path / "digits.csv")))
    texts = [*splits.train["text"], *splits.validation["text"], *splits.test["text"]]
    assert sorted(texts) == sorted(r["text"] for r in rows)  # "007" stays "007"
    assert main([str(a) for a in _train_args(tiny_bert, tmp_path / "digits.csv", tmp_path / "run", epochs=1)]) == 0


def test_an_unknown_hub_model_is_one_line_without_the_hubs_warnings(tmp_path, data_dir):
    """No network here: the loaders are replaced by ones that warn (as a failing hub lookup does) and then fail."""
    before = """
        import logging, warnings
        import transformers
        def failing_load(name, *args, **kwargs):
            transformers.utils.logging.get_logger("transformers").warning("Retrying in 1s [Retry 1/5].")
            logging.getLogger("huggingface_hub.utils._http").warning("HTTP Error 401 thrown while requesting HEAD")
            warnings.warn("resume_download is deprecated", FutureWarning)
            raise OSError(f"{name} is not a local folder and is not a valid model identifier listed on the hub")
        transformers.AutoConfig.from_pretrained = failing_load
        transformers.AutoTokenizer.from_pretrained = failing_load
        transformers.AutoModelForSequenceClassification.from_pretrained = failing_load
    """
    args = ["train", "--model", "nobody/no-such-model", "--data", data_dir, "--output-dir", tmp_path / "run"]
    line = one_line_error(*cli_child(*args, before=before))
    assert "nobody/no-such-model" in line and "not a valid model identifier" in line


def test_the_preflight_reports_every_problem_in_one_line(tmp_path, tiny_bert, capsys):
    (tmp_path / "file.txt").write_text("a file\n")
    (tmp_path / "no-train").mkdir()
    write_csv(tmp_path / "no-train" / "notes.csv", [{"text": "x", "label": "good"}])
    write_csv(tmp_path / "no-train" / "more.csv", [{"text": "y", "label": "bad"}])
    args = _train_args(tiny_bert, tmp_path / "no-train", tmp_path / "file.txt" / "run")
    line = one_line_error(*cli(capsys, *args, "--max-length", 4096))
    assert line.startswith("error: 3 problems: ")
    assert "has no train file" in line and "data.max_length=4096" in line and "is a file, not a folder" in line


def test_the_free_space_estimate_grows_with_what_the_method_trains(tiny_bert):
    from loratune.training.preflight import estimate_run_bytes

    full, lora, none = (estimate_run_bytes(str(tiny_bert), m) for m in ("full", "lora", "none"))
    assert none < lora < full
    assert estimate_run_bytes(str(tiny_bert.parent / "missing"), "full") is None


def test_no_usable_temporary_folder_is_one_line_not_a_traceback(tmp_path):
    """A full disk everywhere: libraries ask tempfile for a folder as they are imported, inside the command."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, tempfile\n"
        "def full():\n"
        "    raise FileNotFoundError(2, \"No usable temporary directory found in ['/tmp', '/var/tmp']\")\n"
        "tempfile._get_default_tempdir, tempfile.tempdir = full, None\n"
        "from loratune.cli import main\n"
        f"sys.exit(main(['check-data', '--data', {str(tmp_path)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ)
    assert done.returncode == 2
    assert done.stderr.startswith("error: No temporary folder can be written") and "set TMPDIR" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
