"""The hostile sweep's harness: a world to misuse (data, a tiny model, a finished run, a user's own files), one
case at a time in its own copy of it, and the verdict on what the command did.

A case is a command line (`loratune ...`, run in this process through `loratune.cli.main`, so that hundreds of
cases take minutes, not an import each) and what a user is promised:

- `refuse`: exit 2, exactly one line `error: ...` on stderr, no traceback, and nothing written or changed;
- `ok`: exit 0, an answer that `check` finds right, and nothing that was there before changed or gone.

Verdicts: `pass`, `silent wrong` (exit 0 where a refusal was due, or a wrong answer), `lost` (a file that was
there before is gone or changed), `litter` (a refusal that left files behind), `traceback` (an exception escaped
`main`), `noisy` (a refusal in more than one line, or an exit status other than 2), `hang` (over `HANG_SECONDS`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HANG_SECONDS = 60
VERDICTS = ("pass", "silent wrong", "lost", "litter", "traceback", "noisy", "hang")


@dataclass(frozen=True)
class World:
    """One case's copy of everything a command may touch: `root` holds `data/` (train, validation and test CSVs),
    `run/` (a finished LoRA run, copied only for cases that ask for it), `home/` (the user's home folder, with a
    file of theirs) and `mine/` (a folder of the user's own files); `model` is the tiny base model, shared and
    checked for changes too."""

    root: Path
    model: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def mine(self) -> Path:
        return self.root / "mine"


@dataclass(frozen=True)
class Case:
    """`argv(world)` builds the case's inputs in the world and returns the command line; `check(world, out, err)`
    returns what is wrong with an `ok` case's answer, or None."""

    name: str
    kind: str
    expect: str  # "refuse" or "ok"
    argv: Callable[[World], list[str]]
    check: Callable[[World, str, str], str | None] | None = None
    needs_run: bool = False
    replaces: str | None = None  # an `ok` case's folder in the world that the command replaces (--overwrite)


@dataclass
class Result:
    case: Case
    verdict: str
    detail: str = ""
    exit_status: int | None = None
    stderr: str = ""
    seconds: float = 0.0
    lost: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Base:
    """What every world is copied from, built once: data, a tiny model and a finished run trained on them."""

    folder: Path
    model: Path
    data: Path
    run: Path

    def world(self, name: str, with_run: bool) -> World:
        root = self.folder / "cases" / name
        if root.exists():
            shutil.rmtree(root)
        shutil.copytree(self.data, root / "data")
        if with_run:
            shutil.copytree(self.run, root / "run")
        (root / "home").mkdir(parents=True)
        (root / "home" / "notes.txt").write_text("the user's own notes\n")
        (root / "mine").mkdir()
        (root / "mine" / "thesis.tex").write_text("\\section{Results}\n")
        return World(root, self.model)


def build_base(folder: Path) -> Base:
    """Data from the tests' generator, the tiny BERT, and one finished 2-epoch run (a few seconds)."""
    import torch
    from conftest import SPLIT_SIZES, _build_bert, make_rows, write_csv

    from loratune.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    data, model = folder / "data", folder / "model"
    for seed, (split, n) in enumerate(SPLIT_SIZES.items()):
        write_csv(data / f"{split}.csv", make_rows(n, seed))
    model.mkdir()
    torch.manual_seed(0)
    _build_bert(model)
    argv = ["train", "--data", str(data), "--model", str(model), "--output-dir", str(folder / "run")]
    argv += ["--epochs", "2", "--batch-size", "8", "--learning-rate", "5e-3", "--precision", "fp32"]
    with _captured() as (_, err):
        status = main([*argv, "--device", "cpu", "--no-progress"])
    if status != 0:
        raise RuntimeError(f"the sweep's base run failed: {err.getvalue()[-2000:]}")
    return Base(folder, model, data, folder / "run")


def run_case(case: Case, base: Base) -> Result:
    """Run one case in a fresh world and judge it (see the module docstring)."""
    import time

    from loratune.cli import main

    world = base.world(case.name, case.needs_run)
    argv = case.argv(world)
    before = _snapshot(world.root) | _snapshot(world.model)
    started = time.perf_counter()
    status, escaped = None, None
    with _captured() as (out, err), _home(world.home), _alarm(HANG_SECONDS):
        try:
            status = main(argv)
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 2
        except _Hang:
            escaped = "hang"
        except BaseException as error:  # noqa: BLE001 - whatever escapes main is the finding
            escaped = f"{type(error).__name__}: {str(error)[:300]}"
    seconds = time.perf_counter() - started
    after = _snapshot(world.root) | _snapshot(world.model)
    replaced = str(world.root / case.replaces) + os.sep if case.replaces else None
    lost = sorted(
        str(Path(p).relative_to(base.folder))
        for p in before
        if after.get(p) != before[p] and not (replaced and p.startswith(replaced))
    )
    new = sorted(str(Path(p).relative_to(base.folder)) for p in after if p not in before)
    result = Result(case, "pass", exit_status=status, stderr=err.getvalue(), seconds=seconds, lost=lost)
    result.verdict, result.detail = _judge(case, world, status, escaped, out.getvalue(), err.getvalue(), lost, new)
    return result


def _judge(
    case: Case, world: World, status: int | None, escaped: str | None, out: str, err: str, lost: list, new: list
) -> tuple[str, str]:
    if escaped == "hang":
        return "hang", f"still running after {HANG_SECONDS} s"
    if escaped is not None:
        return "traceback", escaped
    if lost:
        return "lost", ", ".join(lost[:5])
    lines = err.strip().splitlines()
    if case.expect == "refuse":
        if status == 0:
            return "silent wrong", "exit 0 where a refusal was due"
        if status != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
            return "noisy", f"exit {status}, stderr {len(lines)} line(s): {err.strip()[-300:]!r}"
        if new:
            return "litter", ", ".join(new[:5])
        return "pass", lines[0]
    if status != 0:
        return "silent wrong" if status is None else "noisy", f"exit {status}: {err.strip()[-300:]!r}"
    problem = case.check(world, out, err) if case.check else None
    return ("silent wrong", problem) if problem else ("pass", "")


def _snapshot(folder: Path) -> dict[str, str]:
    """{path: sha256} of every file under `folder` (links and special files by their kind)."""
    found = {}
    for path in folder.rglob("*") if folder.exists() else []:
        if path.is_symlink() or not path.is_file():
            continue
        found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


class _Hang(BaseException):
    """Raised by SIGALRM in the main thread when a case runs past `HANG_SECONDS`."""


@contextlib.contextmanager
def _alarm(seconds: int) -> Iterator[None]:
    def raise_hang(signum: int, frame: object) -> None:
        raise _Hang()

    previous = signal.signal(signal.SIGALRM, raise_hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _home(folder: Path) -> Iterator[None]:
    """HOME is the world's `home/`, so that a case can aim at the user's home folder safely."""
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old


@contextlib.contextmanager
def _captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield out, err


def tally(results: list[Result]) -> dict[str, int]:
    counts = dict.fromkeys(VERDICTS, 0)
    for result in results:
        counts[result.verdict] += 1
    return counts
