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


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
