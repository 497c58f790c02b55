"""Errors a user can act on. Stage scripts print these without a traceback."""


class LmforgeError(Exception):
    """Base class: the message alone tells the user what to fix."""


class ConfigError(LmforgeError):
    """A params.yaml key is missing, unknown, mistyped or out of range."""


class DataError(LmforgeError):
    """An input data file is unreadable or malformed."""

    def __init__(self, path, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


class TrainingError(LmforgeError):
    """Training diverged or cannot continue."""
