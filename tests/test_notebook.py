"""The walkthrough notebook runs top to bottom on the real sst2 folder, subsampled, the way CI runs it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import REPO

REPO = REPO
NOTEBOOK = REPO / "notebooks" / "lightweight_fine_tuning.ipynb"
SST2 = REPO.parent / "shared" / "data" / "sst2"
# Every method, so the LoRA-against-full summary runs too; full fine-tuning is the slowest of them.
METHODS = ["base", "head", "lora", "full"]
KERNEL_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def inject_parameters(nb: nbformat.NotebookNode, parameters: dict) -> None:
    """Insert a cell of overrides after the cell tagged `parameters`, as papermill does."""
    index = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    source = "# Parameters\n" + "".join(f"{name} = {value!r}\n" for name, value in parameters.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))


def write_kernelspec(jupyter_dir: Path) -> None:
    """A `python3` kernelspec that runs this interpreter, so the kernel imports this environment's loratune."""
    spec_dir = jupyter_dir / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (loratune tests)",
        "language": "python",
        "env": KERNEL_ENV,
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


def load_builder():
    spec = importlib.util.spec_from_file_location("build_notebook", REPO / "notebooks" / "build_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebook_is_saved_without_outputs_and_matches_its_generator():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert NOTEBOOK.read_text(encoding="utf-8") == load_builder().render(), (
        "notebooks/lightweight_fine_tuning.ipynb is out of date; run python notebooks/build_notebook.py"
    )


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_sst2(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    if not SST2.is_dir():
        pytest.skip(f"real dataset folder {SST2} is missing (expected ../shared/data/sst2 beside the repo)")
    write_kernelspec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # searched before user and system kernelspecs
    for name, value in KERNEL_ENV.items():
        monkeypatch.setenv(name, value)  # `compare` trains in child processes of the kernel; they inherit these

    out = tmp_path / "runs"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    inject_parameters(
        nb,
        {
            "DATA": str(SST2),
            "SUBSET": None,
            "MAX_TRAIN_SAMPLES": 300,
            "MAX_EVAL_SAMPLES": 200,
            "EPOCHS": 1,
            "OUTPUT_DIR": str(out),
            "METHODS": METHODS,
            "TUNE_TRIALS": 2,
        },
    )
    check = f"import sys\nassert sys.prefix == {sys.prefix!r}, f'kernel runs {{sys.executable}}, not this environment'"
    nb.cells.insert(0, nbformat.v4.new_code_cell(check, metadata={"tags": ["injected-kernel-check"]}))

    client = NotebookClient(nb, kernel_name="python3", timeout=1800, resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()  # raises CellExecutionError, with the cell and traceback, when any cell fails
    finally:
        nbformat.write(nb, tmp_path / "executed.ipynb")

    assert (out / "lora" / "COMPLETE").exists()
    assert (out / "tune" / "best" / "COMPLETE").exists() and (out / "tune" / "tune.html").exists()
    rows = json.loads((out / "compare" / "comparison.json").read_text())
    assert [row["method"] for row in rows] == METHODS  # a method that failed in its child process is left out
    outputs = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 4  # history, confusion, 2 comparison
