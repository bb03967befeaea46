"""A run folder's own files: one run at a time, and nothing deleted that minisynth did not write.

* :class:`RunLock`: ``train`` holds an exclusive OS lock (``flock``) on
  ``.minisynth.lock`` inside its run folder for its whole life. The kernel drops it
  when the process ends, however it ends, so a crash leaves nothing to clean by
  hand; a second ``train`` (``--force`` and ``--resume`` included) on a folder in use
  is refused, naming the process that holds it, before it touches anything.
* Temporaries are named ``.<file>.minisynth-<random>.tmp`` (:func:`temporary_name`);
  :func:`sweep_temporaries` removes only regular files of that shape, which only an
  interrupted minisynth write leaves behind.

Where the OS has no ``fcntl`` (Windows), the lock is not taken.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".minisynth.lock"
TEMP_MARK = ".minisynth-"


def temporary_name(path):
    """A fresh temporary for ``path``, in its folder, with a name only minisynth makes."""
    path = Path(path)
    return path.parent / f".{path.name}{TEMP_MARK}{secrets.token_hex(6)}.tmp"


def sweep_temporaries(folder):
    """Remove the temporaries an interrupted minisynth write left in ``folder`` (never a
    folder, a link, or a file of any other name)."""
    for stale in Path(folder).glob(f".*{TEMP_MARK}*.tmp"):
        if stale.is_file() and not stale.is_symlink():
            stale.unlink(missing_ok=True)


class RunInUse(ValueError):
    """Another process holds the run folder's lock."""


def _in_use(folder, fd):
    """The refusal for a locked folder, naming the process written in its lock file."""
    holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
    return RunInUse(
        f"{folder} is in use by another minisynth run (process {holder}); wait for it to end, "
        "or choose another --out"
    )


class RunLock:
    """An exclusive lock on a run folder, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd = None

    def acquire(self):
        """Take the lock, or raise :class:`RunInUse` naming the process that holds it."""
        if fcntl is None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            refusal = _in_use(self.folder, fd)
            os.close(fd)
            raise refusal from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # the kernel drops the flock with the last descriptor
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def check_not_in_use(folder):
    """Raise :class:`RunInUse` if a run holds ``folder``'s lock now (changes nothing)."""
    lock_file = Path(folder) / LOCK_NAME
    if fcntl is None or not lock_file.is_file():
        return
    fd = os.open(lock_file, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused while a run holds LOCK_EX
    except BlockingIOError:
        raise _in_use(folder, fd) from None
    finally:
        os.close(fd)


MAX_METRICS_LINE = 1 << 16  # bytes: a metrics record is about 150


def metrics_lines(path):
    """The lines of a metrics.jsonl (without their newlines), each read with a bounded
    buffer: a line longer than any record minisynth writes is skipped, however long."""
    with Path(path).open("rb") as f:
        while True:
            line = f.readline(MAX_METRICS_LINE)
            if not line:
                return
            if len(line) == MAX_METRICS_LINE and not line.endswith(b"\n"):
                while (rest := f.readline(MAX_METRICS_LINE)) and not rest.endswith(b"\n"):
                    pass  # the rest of an overlong line, dropped piece by piece
                continue
            yield line.rstrip(b"\r\n").decode("utf-8", errors="replace")
