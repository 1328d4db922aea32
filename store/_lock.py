"""Advisory extraction lock (``STORE/.lock``) so two drivers never write one store."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ._errors import StoreLockedError

__all__ = ["lock_store", "LOCK_FILE"]

LOCK_FILE = ".lock"


@contextmanager
def lock_store(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive, non-blocking ``fcntl.flock`` on ``STORE/.lock``.

    Args:
        path: store directory (created if missing).

    Raises:
        StoreLockedError: another process holds the lock; names the lock file and the
            holder's pid as written in it.
    """
    store = Path(path)
    store.mkdir(parents=True, exist_ok=True)
    lock_path = store / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = b""
        try:
            holder = os.pread(fd, 200, 0)
        except OSError:
            pass
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        text = holder.decode("utf-8", "replace").strip() or "unknown pid"
        raise StoreLockedError(
            f"store {store} is locked: lock file {lock_path} is held by {text}; another "
            f"extraction is running on this store. Wait for it to finish, or stop that process "
            f"(if it has died, the lock is released automatically)."
        ) from None
    try:
        # Record the holder only once we own the lock, so a loser never overwrites it.
        os.ftruncate(fd, 0)
        try:
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError:  # e.g. disk full: the flock is the lock, the holder text only informs
            pass
        yield
    finally:
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
