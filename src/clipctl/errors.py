"""User-facing error types.

Library code raises these; the CLI prints ``Error: <message>`` on one line and
exits non-zero. Anything else is a bug and keeps its traceback.
"""


class ClipctlError(Exception):
    """Base class: the message is one line that names the problem and the fix."""

    exit_code = 1


class ConfigError(ClipctlError):
    """A preset, override or config value is invalid."""


class DataError(ClipctlError):
    """A dataset cannot be found or lacks a needed column."""


class ModelError(ClipctlError):
    """A model or tokenizer cannot be loaded."""


class RunDirError(ClipctlError):
    """A run directory is missing, unreadable or inconsistent."""
