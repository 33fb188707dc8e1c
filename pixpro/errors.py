"""Exceptions that the CLI turns into one-line messages instead of tracebacks."""


class PixproError(Exception):
    """An error the user can fix: the message names the culprit and what to do."""

    exit_code = 1


class ConfigError(PixproError):
    """params.yaml is malformed: unknown key, wrong type or out-of-range value."""


class DataError(PixproError):
    """Input data is missing, corrupt or inconsistent."""


class CheckpointError(PixproError):
    """A checkpoint is missing, corrupt or does not match the current config."""


class TrainingDiverged(PixproError):
    """The loss became NaN or infinite."""


class Interrupted(PixproError):
    """The user pressed Ctrl-C; state was saved and the message says how to resume."""

    exit_code = 130


class DistributedFailure(PixproError):
    """A DDP peer died or timed out; the last checkpoint is intact."""
