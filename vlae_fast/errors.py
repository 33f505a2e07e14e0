"""The library's own errors. Each message says what was wrong and what to do about it.

The CLI catches `VlaeError` (and only it), prints the message on one line and exits with code 2;
anything else is a bug and keeps its traceback.
"""


class VlaeError(Exception):
    """A problem the user can fix: bad input, missing files, a broken checkpoint."""


class DataError(VlaeError):
    """A data set could not be found, downloaded or read."""


class CheckpointError(VlaeError):
    """A checkpoint file is missing, unreadable, corrupt or not a vlae-fast checkpoint."""


class ConfigError(VlaeError):
    """An option or combination of options is invalid."""


class TrainingStopped(VlaeError):
    """Training stopped before its last step (a signal, or a non-finite loss); the message says how to go on."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code  # 128 + signal number after SIGINT/SIGTERM, as shells report; else 2
