"""Errors that mean the user asked for something we cannot do; the CLI prints them as one line."""


class LoratuneError(ValueError):
    """Base class for user mistakes: the CLI shows the message alone and exits with status 2."""


class ConfigError(LoratuneError):
    """A bad config key or value."""


class DataError(LoratuneError):
    """A dataset that cannot be used as given (missing path or column, unknown label, ...)."""


class ModelError(LoratuneError):
    """A model that cannot be loaded or is not a sequence classifier."""


class RunError(LoratuneError):
    """A run folder that is missing, unfinished or damaged."""


class TrainingError(LoratuneError):
    """Training ran but did not train: weights that did not move, or moved to non-finite values."""


class DiskFullError(RunError):
    """A write that ran out of disk space, a quota or the file-size limit.

    Args:
        problem: what could not be written and why, e.g. "Could not write RUN/adapter: No space left ...".
        next_step: what to do once space is freed.
    """

    def __init__(self, problem: str, next_step: str = "run the command again") -> None:
        self.problem = problem
        super().__init__(f"{problem}, then {next_step}.")


class PreflightError(LoratuneError):
    """Several problems found before anything slow started, reported together in one line."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
