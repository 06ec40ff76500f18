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
