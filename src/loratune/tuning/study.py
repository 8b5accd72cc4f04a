"""`loratune tune`: an Optuna study over a method's settings, each trial a loratune run scored on the validation
split and pruned per epoch, the study kept in an Optuna storage (SQLite in the output folder by default) so that it
resumes after a crash and several processes or machines can share it; then the best configuration trained once
more and scored on the test split, the only time the test split is read.

Why Optuna and not `Trainer.hyperparameter_search`: that searches `TrainingArguments` only, and LoRA's rank, alpha
and targets are model settings; Optuna's samplers, pruners and storages are used as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratune.config import Config
from loratune.errors import ConfigError, LoratuneError
from loratune.formatting import seconds
from loratune.progress import announce
from loratune.tuning.outputs import best_value, write_outputs
from loratune.tuning.space import Param, default_point, search_space, trial_config

METRICS = {"f1": "maximize", "accuracy": "maximize", "loss": "minimize"}  # the validation scores of each epoch
PRUNERS = ("median", "hyperband", "none")
TRIALS_DIR = "trials"
STUDY_NAME = "loratune"  # one study per storage: processes given one --storage join it


@dataclass(frozen=True)
class TuneOptions:
    """The study's settings (the `loratune tune` flags)."""

    output_dir: Path
    n_trials: int = 20
    timeout_s: float | None = None
    metric: str = "f1"
    space_file: str | None = None
    storage: str | None = None  # None: SQLite in output_dir
    resume: bool = False
    pruner: str = "median"
    keep_all: bool = False
    max_epochs: int | None = None  # None: the config's epochs

    def check(self) -> None:
        if self.n_trials < 1:
            raise ConfigError(f"--n-trials must be at least 1, got {self.n_trials}.")
        if self.metric not in METRICS:
            raise ConfigError(
                f"--metric {self.metric!r} is not one the validation split reports: {', '.join(METRICS)}."
            )
        if self.pruner not in PRUNERS:
            raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}.")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ConfigError(f"--timeout must be a positive number of seconds, got {self.timeout_s:g}.")


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("loratune tune needs Optuna: pip install 'loratune[tune]'.") from None
    return optuna


def open_study(cfg: Config, options: TuneOptions) -> Any:
    """The study in its storage, created (the defaults enqueued as its first trial) or joined.

    Raises:
        ConfigError: for a storage that cannot be opened, or an output folder holding a study without --resume.
    """
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if options.storage is None and (options.output_dir / "study.db").exists() and not options.resume:
        raise ConfigError(
            f"{options.output_dir} holds a study already; continue it with --resume, or choose another --output-dir."
        )
    options.output_dir.mkdir(parents=True, exist_ok=True)
    storage = options.storage or f"sqlite:///{(options.output_dir / 'study.db').resolve()}"
    pruner = {
        "median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        "hyperband": optuna.pruners.HyperbandPruner(min_resource=1),
        "none": optuna.pruners.NopPruner(),
    }[options.pruner]
    for attempt in range(3):
        try:
            return optuna.create_study(
                study_name=STUDY_NAME,
                storage=storage,
                direction=METRICS[options.metric],
                sampler=optuna.samplers.TPESampler(seed=cfg.train.seed),
                pruner=pruner,
                load_if_exists=True,
            )
        except Exception as error:  # SQLAlchemy's errors: a URL it cannot reach, a driver that is missing
            # Two processes creating one new storage at once: one of them meets the other's half-made tables.
            racing = ("UNIQUE constraint", "already exists", "database is locked")
            if attempt < 2 and any(text in str(error) for text in racing):
                time.sleep(1.0 + attempt)
                continue
            raise ConfigError(f"--storage {storage} cannot be opened: {str(error).splitlines()[0]}") from None
    raise AssertionError("unreachable")


def tune(cfg: Config, options: TuneOptions | None = None, **settings: Any) -> dict[str, Any]:
    """Run the study to `n_trials` finished or pruned trials (or its timeout), then train the best configuration and
    the defaults once more, scored on the test split. Returns the summary `tune.json` holds.

    Example:
        >>> loratune.tune(cfg, output_dir="runs/tune-trec", n_trials=16, max_epochs=2)["best"]["params"]

    Args:
        cfg: the config every trial starts from (its data, model, method and every setting not searched).
        options: the study's settings; or give them as keywords (`TuneOptions`' fields, `output_dir` required).

    Raises:
        ConfigError: for bad options, a bad space file or an unreachable storage.
    """
    if options is None:
        if "output_dir" not in settings:
            raise ConfigError("tune needs output_dir, the folder for the study and its results.")
        options = TuneOptions(**{**settings, "output_dir": Path(settings["output_dir"])})
    options.check()
    max_epochs = options.max_epochs or cfg.train.num_epochs
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_epochs=max_epochs))
    space = search_space(cfg, max_epochs, options.space_file, epochs_searched=options.pruner == "none")
    optuna = require_optuna()
    study = open_study(cfg, options)
    if not study.trials:
        study.enqueue_trial(default_point(cfg, space), skip_if_exists=True)
    elif options.resume:
        _requeue_interrupted(study, optuna)
    objective = _Objective(cfg, space, options, study)
    started = time.perf_counter()
    left = options.n_trials - objective.counted()
    if left > 0:  # another process on the storage may take some of these: `_Objective` stops at N in all
        study.optimize(
            objective,
            n_trials=left,
            timeout=options.timeout_s,
            catch=(LoratuneError, RuntimeError, ValueError),
            callbacks=[objective.progress],
        )
    trials = options.output_dir / TRIALS_DIR
    if trials.is_dir() and not any(trials.iterdir()):
        trials.rmdir()
    return write_outputs(study, cfg, options, time.perf_counter() - started)


def _requeue_interrupted(study: Any, optuna: Any) -> None:
    """Trials a killed process left running: failed, and their settings enqueued again, so none is lost."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # Optuna's public way (heartbeats, `fail_stale_trials`) waits out a grace period; a resumed study knows the
        # process that ran these is gone.
        study._storage.set_trial_user_attr(trial._trial_id, "reason", "interrupted; its settings were tried again")
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
    announce("resuming: trials left running by the last process were marked failed and queued again")


class _Objective:
    """One trial: the point suggested, a loratune run on it scored on validation, reported and pruned per epoch."""

    def __init__(self, cfg: Config, space: dict[str, Param], options: TuneOptions, study: Any) -> None:
        self.cfg, self.space, self.options, self.study = cfg, space, options, study
        self.started = time.perf_counter()
        self.done_before = self.counted()  # trials an earlier process finished (resume)

    def counted(self, before: int | None = None) -> int:
        """Finished or pruned trials, plus those still running with a lower number (another process's)."""
        import optuna

        state = optuna.trial.TrialState
        return sum(
            t.state in (state.COMPLETE, state.PRUNED)
            or (t.state == state.RUNNING and before is not None and t.number < before)
            for t in self.study.get_trials(deepcopy=False)
        )

    def __call__(self, trial: Any) -> float:
        import optuna

        if self.counted(before=trial.number) >= self.options.n_trials:  # other processes reached N meanwhile
            self.study.stop()
            trial.set_user_attr("reason", "not run: the study had its trials")
            raise _Surplus()
        point = {name: param.suggest(trial, name) for name, param in self.space.items()}
        folder = self.options.output_dir / TRIALS_DIR / f"trial_{trial.number:03d}"
        cfg = trial_config(self.cfg, point, folder, "validation")
        values: list[float] = []
        started = time.perf_counter()

        def report(record: Any) -> None:
            value = getattr(record, f"val_{self.options.metric}")
            values.append(value)
            trial.set_user_attr("epoch_values", values)
            trial.report(value, record.epoch)
            if record.epoch < cfg.train.num_epochs and trial.should_prune():  # the last epoch finishes the trial
                raise optuna.TrialPruned(f"epoch {record.epoch}: {value:.4f}")

        from loratune.training.recipe import run

        try:  # a trial's own lines (data checks, phases) go to trials.log: the terminal shows one line per trial
            with (self.options.output_dir / "trials.log").open("a") as log, contextlib.redirect_stderr(log):
                print(f"--- trial {trial.number}: {point}", file=log, flush=True)
                run(cfg, on_epoch_end=report)
        except optuna.TrialPruned:
            trial.set_user_attr("reason", f"pruned after epoch {len(values)}")
            raise
        except Exception as error:
            trial.set_user_attr(
                "reason", f"failed: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
            )
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
            if not self.options.keep_all:
                shutil.rmtree(folder, ignore_errors=True)
        return values[-1]

    def progress(self, study: Any, trial: Any) -> None:
        """Optuna's callback after each trial: one line with its score, the best so far and an ETA."""
        done = self.counted()
        values = trial.user_attrs.get("epoch_values") or []
        value = f"{values[-1]:.4f}" if values else "-"
        reason = trial.user_attrs.get("reason", "")
        best = best_value(study)
        elapsed = time.perf_counter() - self.started
        left = max(0, self.options.n_trials - done)
        eta = f"; about {seconds(elapsed / max(1, done - self.done_before) * left)} left" if left else ""
        print(
            f"trial {trial.number}: {self.options.metric} {value}{f' ({reason})' if reason else ''}; best so far "
            f"{'-' if best is None else f'{best:.4f}'}; {min(done, self.options.n_trials)} of "
            f"{self.options.n_trials} done{eta}",
            file=sys.stderr,
            flush=True,
        )


class _Surplus(RuntimeError):
    """A trial begun after the study had its trials (several processes): recorded as failed, never run."""
