"""One writer per output file, across processes.

An advisory ``flock`` on ``<output>.lock``: the kernel drops it when the holder
exits, however it exits (``kill -9`` included), so a crashed run never leaves
the output locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from llmbatch._core.exceptions import OutputLocked, UsageError


def lock_path(output: Path) -> Path:
    """``<output>.lock`` beside the real file (an alias of the output meets the same lock)."""
    resolved = Path(os.path.realpath(output))
    return resolved.with_name(resolved.name + ".lock")


class OutputLock:
    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = lock_path(output)
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(
                f"cannot create the lock file {self.path} beside the output: {exc.strerror}. "
                "Nothing was sent."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputLocked(
                f"another llmbatch run (pid {holder}) is writing {self.output}; "
                "wait for it to finish, or write to another --output. Nothing was sent."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
