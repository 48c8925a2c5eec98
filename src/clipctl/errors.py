"""User-facing error types.

Library code raises these; the CLI prints ``Error: <message>`` on one line and
exits non-zero. Anything else is a bug and keeps its traceback.
"""


class ClipctlError(Exception):
    """Base class: the message is one line that names the problem and the fix."""

    exit_code = 1
    prefix = "Error: "  # what the CLI prints before the message


class ConfigError(ClipctlError):
    """A preset, override or config value is invalid."""


class DataError(ClipctlError):
    """A dataset cannot be found or lacks a needed column."""


class ModelError(ClipctlError):
    """A model or tokenizer cannot be loaded."""


class RunDirError(ClipctlError):
    """A run directory is missing, unreadable or inconsistent."""


class NonFiniteError(ClipctlError):
    """A training step produced a non-finite loss, gradient norm or entropy (``train.on_nonfinite``)."""

    def __init__(self, step: int, what: str, hint: str = ""):
        self.step, self.what, self.hint = step, what, hint
        super().__init__(self._message(""))

    def _message(self, where: str) -> str:
        return (
            f"step {self.step} diverged: {self.what}; nothing of step {self.step} was written{where}. {self.hint}"
        ).rstrip()

    def at(self, run_dir, checkpoint_step) -> "NonFiniteError":
        """The same error, naming the run's last good checkpoint."""
        if checkpoint_step is None:
            where = f"; {run_dir} has no checkpoint yet"
        else:
            where = f"; last good checkpoint: {run_dir}/checkpoints/step-{checkpoint_step}"
        err = NonFiniteError(self.step, self.what, self.hint)
        err.args = (self._message(where),)
        return err


# EX_TEMPFAIL (sysexits.h): the run stopped on a signal with a checkpoint; run it again to resume.
REQUEUE_EXIT = 75


class RunStopped(ClipctlError):
    """A signal stopped the run after a step whose checkpoint was written; resuming continues it exactly."""

    exit_code = REQUEUE_EXIT
    prefix = ""  # not an error: the CLI prints the message as it is
