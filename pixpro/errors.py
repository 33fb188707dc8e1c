"""Exceptions that the CLI turns into one-line messages instead of tracebacks."""


class PixproError(Exception):
    """An error the user can fix: the message names the culprit and what to do."""

    exit_code = 1

    def __str__(self) -> str:
        # A DataLoader worker's error reaches the main process rebuilt around the worker's whole
        # traceback ("Caught DataError in DataLoader worker process 0. Original Traceback ...
        # pixpro.errors.DataError: <message>"): show the user only the worker's own message.
        text = super().__str__()
        if "Original Traceback" in text:
            last = text.rstrip().splitlines()[-1]
            return last.split(f"{type(self).__name__}: ", 1)[-1]
        return text


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


def require(ok: bool, key: str, message: str) -> None:
    """One params.yaml check: unless `ok`, raise ConfigError('<dotted key> <message>')."""
    if not ok:
        raise ConfigError(f"{key} {message}")
