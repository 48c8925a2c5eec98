"""Guards around writing a run directory: one writer at a time, usable output places, disk full.

- ``RunLock``: an exclusive ``flock`` on ``<dir>/.lock``, held by whoever writes
  the folder (``clipctl train``, ``train --resume``, ``eval-passk`` into its
  output, ``sweep`` on its sweep folder, ``simulate dynamics`` on each run it
  writes; under DeepSpeed rank 0 alone). A second writer gets one ``Error:``
  line that names the holder, or, with ``wait``, waits while the holder is the
  same command. The lock dies with its process, so a killed run never leaves a
  stale lock; a clean exit also removes the file (a waiter that opened the
  removed file notices and locks the new one).
- ``check_name`` / ``ensure_output_dir``: a run name is one plain folder name,
  and an output folder is created and probed with a temp file before any work
  starts, so a file, a read-only place or ``/proc`` fails at once.
- ``disk_full_error``: ``ENOSPC`` (and the messages torch and safetensors wrap it
  in) becomes a ``RunDirError`` that says where, and how to continue.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from clipctl.errors import RunDirError

LOCK_NAME = ".lock"
# Control characters too: a newline in a folder name breaks every line-based listing and log of it.
BAD_NAME_RE = re.compile(r"[/\\\x00-\x1f\x7f]")
LOCK_POLL_SECONDS = 0.2
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "unexpected pos")


def check_name(name: str, flag: str = "--name") -> None:
    """A run name is one plain folder name: not empty, no '/' or control character, not hidden, not '.' or '..'."""
    if not name or BAD_NAME_RE.search(name) or name.startswith(".") or len(name.encode()) > 200:
        raise RunDirError(
            f"{flag} {name!r} must be a plain folder name (not empty, no '/', '\\' or control character such as "
            "a newline, not starting with '.', at most 200 bytes), e.g. --name eps-high-inf"
        )


def _oserror_text(e: OSError) -> str:
    return e.strerror or str(e)


def ensure_output_dir(path: Path, flag: str = "--out") -> list[Path]:
    """Create ``path`` (with parents) and check a file can be made in it; returns the folders it created.

    Raises one ``RunDirError`` line for a file in the way, a read-only or
    pseudo file system (``/proc``) and any other ``OSError``.
    """
    path = Path(path)
    created = []
    missing = [p for p in [path, *path.parents] if not p.exists()]
    try:
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
    except FileExistsError:
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{flag} {path} is a file, not a folder; pass a folder (it is created if missing)") from None
    except NotADirectoryError:
        raise RunDirError(f"{flag} {path}: a part of that path is a file; pass a folder path") from None
    except OSError as e:
        raise RunDirError(f"{flag} {path} cannot be created ({_oserror_text(e)}); pass a writable folder") from None
    if not path.is_dir():
        raise RunDirError(f"{flag} {path} is a file, not a folder; pass a folder (it is created if missing)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".clipctl-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunDirError(f"{flag} {path} is not writable ({_oserror_text(e)}); pass a writable folder") from None
    return created


def check_output_dir(path: Path, flag: str = "--out") -> None:
    """What ``ensure_output_dir`` checks, without creating anything (for dry runs)."""
    path = Path(path)
    existing = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        where = path if existing == path else existing
        raise RunDirError(f"{flag} {path}: {where} is a file, not a folder; pass a folder path")
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only or not os.access(existing, os.W_OK) or str(existing.resolve()).startswith(("/proc", "/sys")):
        raise RunDirError(f"{flag} {path} is not writable ({existing} is read-only); pass a writable folder")


class RunLock:
    """Exclusive ``flock`` on ``<run_dir>/.lock``; a context manager. ``what`` says who holds it.

    ``wait`` (seconds): while the holder is another ``clipctl <what>``, wait up to
    that long for it (``log`` says so once) instead of refusing at once; any other
    holder (a training run holds its folder for hours) is refused at once.
    ``elsewhere`` ends the refusal: how to write somewhere else instead.
    """

    def __init__(
        self, run_dir: Path, what: str, wait: float = 0.0, log: Optional[Callable[[str], None]] = None,
        elsewhere: str = "pick another --name",
    ):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.what = what
        self.elsewhere = elsewhere
        self.wait = wait
        self.log = log
        self.fd = -1

    def _busy(self, holder: str, waited: float) -> RunDirError:
        after = f" (waited {waited:.0f} s)" if waited else ""
        return RunDirError(
            f"run directory {self.run_dir} is in use by another clipctl process ({holder}){after}; "
            f"wait for it to finish or stop it, then run this again (or {self.elsewhere})"
        )

    def acquire(self) -> "RunLock":
        start = time.monotonic()
        replaced = 0
        said = False
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise RunDirError(
                    f"cannot write to run directory {self.run_dir} ({_oserror_text(e)}); it must be a writable folder"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder()
                os.close(fd)
                waited = time.monotonic() - start
                # An empty note is a holder that has just locked and not yet written it.
                same_kind = f"clipctl {self.what}," in holder or holder == "holder unknown"
                if not same_kind or waited >= self.wait:
                    raise self._busy(holder, waited) from None
                if not said and self.log is not None:
                    self.log(f"waiting up to {self.wait:g} s for {self.run_dir}: in use by {holder}")
                    said = True
                time.sleep(LOCK_POLL_SECONDS)
                continue
            try:  # the file may have been removed (and re-made) between open and flock: lock the current one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
            replaced += 1
            if replaced >= 20:  # pragma: no cover - someone keeps replacing the file
                raise RunDirError(f"cannot lock {self.path}: it keeps being replaced; run this again")
        self.fd = fd
        stamp = dt.datetime.now().isoformat(timespec="seconds")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}: clipctl {self.what}, since {stamp}\n".encode())
        except OSError:
            pass  # the lock holds without the note (e.g. a full disk)
        return self

    def _holder(self) -> str:
        try:
            text = self.path.read_text().strip()
        except OSError:
            text = ""
        return text or "holder unknown"

    def release(self) -> None:
        if self.fd >= 0:
            try:
                if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                    self.path.unlink()  # still holding it: nobody else can have it now
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_held(folder: Path) -> bool:
    """Whether some process holds ``folder``'s ``RunLock`` now (a shared probe; takes nothing)."""
    path = Path(folder) / LOCK_NAME
    try:
        f = open(path)
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def forget_unstarted(run_dir: Path, created: list[Path]) -> None:
    """After a failed start (no ``run.json`` written): remove the (empty) folders made for it."""
    if (Path(run_dir) / "run.json").exists():
        return
    for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()  # only when empty
        except OSError:
            pass


def is_disk_full(exc: BaseException) -> bool:
    """``ENOSPC``/``EDQUOT`` anywhere in the exception chain, or the text torch/safetensors/DeepSpeed wrap it in."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(exc) for text in _DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(exc: BaseException, run_dir: Optional[Path], checkpoint: Optional[int]) -> RunDirError:
    """The one-line error for a full disk while writing ``run_dir``."""
    where = f"while writing {run_dir}" if run_dir is not None else "while writing the run"
    kept = (
        f"everything up to checkpoint step {checkpoint} is kept" if checkpoint else "no checkpoint was written yet"
    )
    how = f"clipctl train --resume {run_dir}" if run_dir is not None else "the same command"
    return RunDirError(f"disk full (No space left on device) {where}; {kept}; free some space, then run {how}")
