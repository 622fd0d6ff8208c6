"""Process-exclusive lock files that say who holds them (POSIX ``flock``; Linux, macOS)."""

from __future__ import annotations

import fcntl
import os
from contextlib import suppress
from pathlib import Path

from cv_autolabel.errors import VectorStoreError


class PidLock:
    """Exclusive, non-blocking ``flock`` on a lock file that records the holder's pid.

    Milvus Lite has its own flock, but a second opener only gets pymilvus's "Open local milvus
    failed", and a second client in the same process silently shares the first one's server.
    ``flock`` locks belong to an open file, so a second store in this process is refused too;
    the kernel drops the lock when the holder dies, even by kill -9.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, uri: str) -> None:
        """Take the lock or raise VectorStoreError naming the holder's pid; never waits."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise VectorStoreError(f"cannot open {uri}: lock file {self.path}: {err}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise VectorStoreError(_in_use_message(uri, holder, self.path)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays: deleting a lock file races with the next opener)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with suppress(OSError):
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _in_use_message(uri: str, holder: str, lock_path: Path) -> str:
    if holder == str(os.getpid()):
        return (f"cannot open {uri}: it is already open in this process (pid {holder}); "
                "close the other store first")
    return (f"cannot open {uri}: it is in use by process {holder} (lock file {lock_path}); "
            "one process at a time may open it")


def flock_held(path: Path) -> bool:
    """Return whether another open file holds an flock on ``path`` (False if it is absent)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
