"""`runs.destination`: loratune never deletes or overwrites what it did not write, nor what a command reads, and
`--overwrite` replaces a loratune folder only at the very end, so that a failure keeps the earlier one whole."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
from conftest import tiny_config

from loratune.cli import main
from loratune.config import load_config
from loratune.errors import RunError
from loratune.runs import destination, files
from loratune.runs.destination import EXPORT, FINISHED_RUN, NOTHING, OTHER, RUN, check_destination, holds_in
from loratune.runs.folder import load_run


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under `folder`, with the files' bytes: equal snapshots, nothing changed."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def one_line_error(capsys, code: int) -> str:
    """The one `error: ...` line of a command that exited 2 (a run that got as far prints its data checks first)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("data checks:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def unchanged(folder: Path, before: dict[str, bytes | None]) -> bool:
    """`folder` as in `before`, but for the lock a run holds on it while it writes."""
    return {k: v for k, v in snapshot(folder).items() if k != files.LOCK_FILE} == before


def train_argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", str(model), "--output-dir", str(out), "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--precision", "fp32", "--no-progress", *extra]  # fmt: skip


@pytest.fixture
def finished_run(bert_run, tmp_path) -> Path:
    """A private copy of a finished run, free to overwrite."""
    return Path(shutil.copytree(bert_run.run_dir, tmp_path / "run"))


@pytest.fixture
def users_folder(tmp_path) -> Path:
    """A folder of the user's whose names happen to be those a run writes."""
    folder = tmp_path / "project"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "step-100.bin").write_bytes(b"weeks of training")
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.txt").write_text("mine\n")
    (folder / "config.yaml").write_text("learning_rate: 0.1\nmy_own_setting: true\n")
    (folder / "report.md").write_text("# my thesis notes\n")
    return folder


# -- the reported failures -------------------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_train_refuses_an_existing_folder_that_is_not_a_run(users_folder, tiny_bert, data_dir, capsys, overwrite):
    before = snapshot(users_folder)
    code = main(train_argv(tiny_bert, data_dir, users_folder, *overwrite))
    err = one_line_error(capsys, code)
    assert str(users_folder) in err and "loratune did not write" in err and "choose a new or empty folder" in err
    assert snapshot(users_folder) == before


def test_export_into_the_folder_that_holds_the_run_is_refused_even_with_overwrite(bert_run, tmp_path, capsys):
    parent = tmp_path / "runs"
    run = Path(shutil.copytree(bert_run.run_dir, parent / "bert"))
    shutil.copytree(bert_run.run_dir, parent / "sibling")
    before = snapshot(parent)
    code = main(["export", str(run), "--output-dir", str(parent), "--overwrite"])
    err = one_line_error(capsys, code)
    assert f"contains the run folder ({run.resolve()})" in err
    assert snapshot(parent) == before


@pytest.mark.parametrize("stage", ["train", "save_results"])
def test_a_failure_while_overwriting_keeps_the_earlier_run(finished_run, tiny_bert, data_dir, monkeypatch, stage):
    import loratune.training.recipe as recipe

    def fail(*args, **kwargs):
        raise RuntimeError("simulated failure")

    before = snapshot(finished_run)
    monkeypatch.setattr(recipe, stage, fail)
    with pytest.raises(RuntimeError, match="simulated failure"):
        recipe.run(tiny_config(tiny_bert, data_dir, finished_run, train__num_epochs=1, train__overwrite=True))
    assert snapshot(finished_run) == before
    assert load_run(finished_run).summary.history[-1].epoch == 2  # the earlier, two-epoch run, whole and verified
    assert sorted(p.name for p in finished_run.parent.iterdir()) == ["run"]  # the half-built one is gone


def test_a_full_disk_just_before_complete_keeps_the_earlier_run(
    finished_run, tiny_bert, data_dir, capsys, monkeypatch
):
    def full_disk(run_dir):
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / files.COMPLETE))

    before = snapshot(finished_run)
    monkeypatch.setattr(files, "mark_complete", full_disk)
    err = one_line_error(capsys, main(train_argv(tiny_bert, data_dir, finished_run, "--overwrite")))
    assert "No space left on device" in err and "run the command again" in err and "--resume" not in err
    assert snapshot(finished_run) == before
    assert sorted(p.name for p in finished_run.parent.iterdir()) == ["run"]


# -- --overwrite swaps at the end ------------------------------------------------------------------------------


def test_overwrite_builds_beside_the_earlier_run_and_swaps_after_complete(
    finished_run, tiny_bert, data_dir, monkeypatch
):
    import loratune.training.recipe as recipe

    before = snapshot(finished_run)
    real_save_results = recipe.save_results
    seen = {}

    def save_results(state, *args):
        seen["untouched while building"] = unchanged(finished_run, before)
        seen["built in"] = state.run_dir
        return real_save_results(state, *args)

    monkeypatch.setattr(recipe, "save_results", save_results)
    result = recipe.run(tiny_config(tiny_bert, data_dir, finished_run, train__num_epochs=1, train__overwrite=True))
    assert seen == {"untouched while building": True, "built in": finished_run.parent / ".run.new"}
    assert result.run_dir == finished_run
    reopened = load_run(finished_run)  # its checksums verify in the final place
    assert reopened.summary.history[-1].epoch == 1
    assert reopened.config.train.output_dir == str(finished_run)  # the final folder, not the one it was built in
    assert sorted(p.name for p in finished_run.parent.iterdir()) == ["run"]


def test_an_unfinished_run_is_started_over_in_place_and_resume_still_works(finished_run):
    (finished_run / files.COMPLETE).unlink()
    assert holds_in(finished_run) == RUN
    found = check_destination(finished_run, "--output-dir", "run")
    assert (found.holds, found.replace, found.staging) == (RUN, False, finished_run)


# -- never where the user's things are ----------------------------------------------------------------------


def test_the_home_folder_is_refused_even_empty_and_with_overwrite(tmp_path, tiny_bert, data_dir, capsys, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    err = one_line_error(capsys, main(train_argv(tiny_bert, data_dir, home, "--overwrite")))
    assert "is your home folder" in err
    assert list(home.iterdir()) == []


@pytest.mark.parametrize("makes", ["run", "export", "comparison"])
def test_the_root_folder_is_refused_even_with_overwrite(makes):
    with pytest.raises(RunError, match=r"--output-dir / is the root folder; .*choose a new or empty folder"):
        check_destination("/", "--output-dir", makes, overwrite=True)


def test_a_folder_with_the_users_files_is_never_an_export_destination(bert_run, tmp_path, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"a model of mine")
    for extra in ([], ["--overwrite"]):
        err = one_line_error(capsys, main(["export", str(bert_run.run_dir), "--output-dir", str(out), *extra]))
        assert "(model.safetensors)" in err and "loratune did not write" in err
    assert (out / "model.safetensors").read_bytes() == b"a model of mine"


def test_a_users_own_loratune_config_does_not_make_a_folder_a_run(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / files.CONFIG_FILE).write_text(load_config(None, {"data.path": "reviews.csv"}).to_yaml())
    assert holds_in(folder) == OTHER
    with pytest.raises(RunError, match=r"holds files loratune did not write \(config.yaml\)"):
        check_destination(folder, "--output-dir", "run", overwrite=True)


def test_a_run_with_a_file_added_by_the_user_is_not_replaced(finished_run):
    (finished_run / "notes.txt").write_text("why this run matters")
    with pytest.raises(RunError, match=r"\(notes.txt\)"):
        check_destination(finished_run, "--output-dir", "run", overwrite=True)


def test_leftovers_of_a_killed_write_count_as_nothing(tmp_path):
    (tmp_path / files.LOCK_FILE).write_text("{}")
    (tmp_path / ".config.yaml.abc123.tmp").write_text("half")
    assert holds_in(tmp_path) == NOTHING


# -- never over, around or inside what the command reads --------------------------------------------------------


def test_the_data_folder_a_folder_inside_it_and_a_folder_holding_it_are_refused(tmp_path, tiny_bert, data_dir, capsys):
    data = Path(shutil.copytree(data_dir, tmp_path / "project" / "data"))
    before = snapshot(tmp_path)
    for out, says in (
        (data, "is the data this command reads"),
        (data / "runs" / "first", "is inside the data"),
        (tmp_path / "project", "contains the data"),
    ):
        err = one_line_error(capsys, main(train_argv(tiny_bert, data, out, "--overwrite")))
        assert says in err, err
    assert snapshot(tmp_path) == before


def test_predict_never_writes_over_its_own_input(bert_run, tmp_path, capsys):
    texts = tmp_path / "texts.csv"
    texts.write_text("text\ngreat movie\n")
    err = one_line_error(
        capsys, main(["predict", str(bert_run.run_dir), "--input", str(texts), "--output", str(texts)])
    )
    assert "--output" in err and "is --input this command reads" in err
    assert texts.read_text() == "text\ngreat movie\n"


def test_nothing_is_written_inside_a_run_folder(bert_run, tiny_bert, data_dir, capsys):
    before = snapshot(bert_run.run_dir)
    run = bert_run.run_dir
    commands = [
        ["predict", str(run), "--text", "hi", "--output", str(run / files.CONFIG_FILE)],
        ["evaluate", str(run), "--output", str(run / "scores.json")],
        ["export", str(run), "--output-dir", str(run / "exported")],
        train_argv(tiny_bert, data_dir, run / "nested"),
    ]
    for argv in commands:
        err = one_line_error(capsys, main(argv))
        assert "inside" in err and str(run.resolve()) in err, err
    assert snapshot(bert_run.run_dir) == before


def test_a_run_and_an_export_never_replace_each_other(finished_run, bert_run, tmp_path, tiny_bert, data_dir):
    from loratune.export.plain import export_run

    exported = export_run(bert_run, tmp_path / "exported", adapter_only=True)
    assert holds_in(exported) == EXPORT and holds_in(finished_run) == FINISHED_RUN
    before = snapshot(tmp_path)
    with pytest.raises(RunError, match=r"holds a loratune finished run, not a new export"):
        export_run(bert_run, finished_run, overwrite=True)
    with pytest.raises(RunError, match=r"holds a loratune export, not a new run"):
        check_destination(exported, "--output-dir", "run", overwrite=True)
    assert snapshot(tmp_path) == before


def test_the_export_marker_lists_what_the_export_wrote(bert_run, tmp_path):
    from loratune.export.plain import export_run

    exported = export_run(bert_run, tmp_path / "exported", adapter_only=True)
    marker = files.read_json(exported / files.EXPORT_MARKER)
    assert sorted([*marker["files"], files.EXPORT_MARKER]) == sorted(p.name for p in exported.iterdir())
    assert marker["run"] == str(bert_run.run_dir.resolve())


def test_a_finished_run_holds_only_names_the_destination_check_knows(bert_run):
    names = {p.name for p in bert_run.run_dir.iterdir()}
    assert names <= destination.RUN_NAMES, names - destination.RUN_NAMES
    assert holds_in(bert_run.run_dir) == FINISHED_RUN


def test_a_base_model_kept_in_the_run_folder_is_never_deleted_by_overwrite(tmp_path, tiny_bert, data_dir):
    from loratune.training.recipe import run

    out = tmp_path / "run"
    shutil.copytree(tiny_bert, out / "base")  # a new run keeps it beside itself (recorded relative to the folder)
    run(tiny_config(out / "base", data_dir, out, train__num_epochs=1))
    before = snapshot(out)
    with pytest.raises(RunError, match=r"holds the base model .*which --overwrite would delete"):
        run(tiny_config(out / "base", data_dir, out, train__num_epochs=1, train__overwrite=True))
    with pytest.raises(RunError, match=r"already holds a finished run"):
        run(tiny_config(out / "base", data_dir, out, train__num_epochs=1))
    assert snapshot(out) == before


def test_an_existing_output_file_is_replaced_only_with_overwrite(bert_run, tmp_path, capsys):
    """loratune cannot tell its own earlier predictions from a file of the user's: either is replaced only when
    asked."""
    out = tmp_path / "predictions.csv"
    out.write_text("the user's,table\n")
    argv = ["predict", str(bert_run.run_dir), "--text", "great movie", "--device", "cpu", "--output", str(out)]
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "the user's,table\n"
    assert main([*argv, "--overwrite"]) == 0
    assert "great movie" in out.read_text()


def test_compare_refuses_a_folder_of_the_users_files_but_reruns_over_its_own(tmp_path, tiny_bert, data_dir, capsys):
    argv = ["compare", "--data", str(data_dir), "--model", str(tiny_bert), "--methods", "head", "--epochs", "1"]
    argv += ["--no-progress", "--precision", "fp32", "--device", "cpu"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("results")
    assert main([*argv, "--output-dir", str(mine)]) == 2
    assert "holds files loratune did not write (thesis.tex)" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]

    earlier = tmp_path / "cmp"
    assert main([*argv, "--output-dir", str(earlier)]) == 0
    assert main([*argv, "--output-dir", str(earlier), "--overwrite"]) == 0  # its own pages, plots and runs
