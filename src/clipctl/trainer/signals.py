"""Stopping a run cleanly on a signal: preemption, walltime, Ctrl-C.

``SIGUSR1`` (Slurm's walltime warning, ``--signal=B:USR1@SECONDS``), ``SIGTERM``
(preemption, ``scontrol requeue``, ``scancel``, a sweep stopping its trainers)
and a first ``SIGINT`` (Ctrl-C) ask the step loop to stop after the step it is
computing: it writes a checkpoint of that step and raises ``RunStopped``, whose
exit status (``REQUEUE_EXIT``) tells a launcher "run me again to resume". A
second Ctrl-C stops at once (``KeyboardInterrupt``, the last checkpoint stays
the resume point). Any other repeat (``SIGTERM`` twice, ``SIGTERM`` then
``SIGINT``) changes nothing: a scheduler that signals every process of a job,
a batch shell or torchrun agent that forwards the signal, and a terminal's
Ctrl-C reaching a whole process group must not turn a clean stop into an
abrupt one.

Handlers are installed only in the main thread (``signal`` allows no other).
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

from clipctl.errors import REQUEUE_EXIT, RunStopped

__all__ = ["REQUEUE_EXIT", "STOP_SIGNALS", "RunStopped", "StopRequest"]

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Remembers the first stop signal; a context manager that installs (and restores) the handlers."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.interrupts = 0
        self._old: dict[int, object] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                raise KeyboardInterrupt  # the second Ctrl-C: stop now
            print("Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again to stop at once)",
                  file=sys.stderr, flush=True)
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
