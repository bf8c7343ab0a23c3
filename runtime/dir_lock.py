"""One holder per store directory: an exclusive ``flock`` on ``<directory>/store.lock``.

A :class:`~hydrahead.runtime.store.HistoryStore` holds the lock while it is open, and
forgetting a user takes it before removing anything, so a user cannot be forgotten under an open
store. ``flock`` locks belong to an open file, so two opens in one process exclude each other
too. Where there is no ``fcntl`` (Windows) the lock is the ``filelock`` library's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from .errors import StoreError
from .user_files import LOCK_FILE

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


class _FileLockHandle:
    """filelock's lock, with the ``close()`` that releases it (as closing a flocked file does)."""

    def __init__(self, lock: object) -> None:
        self._lock = lock

    def close(self) -> None:
        self._lock.release()  # type: ignore[attr-defined]


def lock_directory(directory: Path) -> IO[bytes]:
    """Take the directory's lock without waiting; close the returned file to release it.

    Raises:
        StoreError: the directory is open elsewhere, or it was removed while the lock was taken.
    """
    path = directory / LOCK_FILE
    if fcntl is None:  # Windows (mypy checks this line only when it checks for Windows)
        return _lock_with_filelock(path, directory)  # type: ignore[return-value, unused-ignore]
    try:
        handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+b")
    except FileNotFoundError:
        raise StoreError(f"the store at {directory} does not exist (it was removed)") from None
    try:
        os.chmod(path, 0o600)
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise _already_open(directory) from None
        # Whoever held the lock before us may have removed the directory (forget): then our
        # lock is on a file that no longer has this name, and guards nothing.
        if os.fstat(handle.fileno()).st_ino != path.stat().st_ino:
            raise FileNotFoundError
    except FileNotFoundError:
        handle.close()
        raise StoreError(f"the store at {directory} was removed while it was being opened"
                         ) from None
    except BaseException:
        handle.close()
        raise
    return handle


def _lock_with_filelock(path: Path, directory: Path) -> _FileLockHandle:
    import filelock

    if not directory.is_dir():
        raise StoreError(f"the store at {directory} does not exist (it was removed)")
    lock = filelock.FileLock(str(path), timeout=0, is_singleton=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise _already_open(directory) from None
    return _FileLockHandle(lock)


def _already_open(directory: Path) -> StoreError:
    return StoreError(f"the store at {directory} is already open (in this or another process); "
                      "close it there first")
