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
