"""Errors a user can cause.

Anything deriving from :class:`UserError` is reported by the CLI as one line
(``error: <message>``) with exit code 2 and no traceback. Everything else is a bug in
cfd3d and keeps its traceback.
"""


class UserError(Exception):
    """Bad input that the user can fix; the message says what is wrong and what to do."""


class ConfigError(UserError, ValueError):
    """An invalid option, name or value in a configuration."""


class OutputError(UserError, OSError):
    """An output location that cannot be written or would overwrite something."""


class StoppedBySignal(Exception):
    """A run that stopped cleanly on a signal (Ctrl-C, SIGTERM, SIGHUP) after writing its
    checkpoint; the CLI prints the message and exits with ``128 + signum``.

    Args:
        signum: the signal's number.
        message: one line: where the run stopped and how to continue it.
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
