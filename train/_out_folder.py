"""An experiment's output folder: refusing a layer sweep's folder, removing a pipeline's stale
skipped/failed markers, and the locks that let jobs of one configuration write a folder at once and
refuse a job of another.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

from w2v2ser._files import make_folder

from ._errors import ConfigError, FolderBusyError

__all__ = ["refuse_layer_sweep_folder", "forget_not_trained", "share_out_folder"]

def refuse_layer_sweep_folder(out: Path, another: str) -> None:
    """Refuse a plain experiment's runs into a layer sweep's folder (one that holds sweep.json).

    The report of such a folder shows the sweep only, so these runs would be in no table.

    Args:
        out: The experiment's output folder.
        another: How the caller gives another folder, e.g. ``"this experiment another name"``.

    Raises:
        ConfigError: ``out`` holds sweep.json.
    """
    if (out / "sweep.json").is_file():
        raise ConfigError(f"{out} is a layer-sweep folder (it holds sweep.json of an earlier sweep): a plain "
                          f"experiment's runs there would be in no report table. Give {another}, or move that "
                          f"folder away to keep the sweep (rerun it as a sweep: `w2v2ser sweep`, `sweep: true`)")


def forget_not_trained(out: Path) -> None:
    """Remove a pipeline's skipped.json / failed.json from a folder that trains now: a stale one must
    not outweigh the results written next (the report prefers a newer failed.json, by mtime)."""
    for marker in ("skipped.json", "failed.json"):
        (out / marker).unlink(missing_ok=True)


@contextlib.contextmanager
def share_out_folder(out: Path, key: str, what: str) -> Iterator[None]:
    """Let jobs of one configuration write into ``out`` at once (an array job's seeds) and refuse a
    job of another: their runs of the same fold and seed replace each other one by one, and each
    results.json would be over the other's runs. Each job holds a shared ``flock`` on
    ``out/.lock-<config key>`` while it runs; ``out/.lock`` serialises the look at the others.
    Where flock is unavailable (some network file systems), nothing is checked."""
    import fcntl
    import socket

    try:
        make_folder(out)
    except OSError as exc:  # a file where the folder is, or no permission: the command line's message
        from w2v2ser._common import EXIT_INPUT, describe_path_error

        described = describe_path_error(exc)
        if described is None or described[1] != EXIT_INPUT:
            raise
        raise ConfigError(described[0]) from None
    guard = _open_lock(out / ".lock")
    if guard < 0:  # a folder this user cannot write: the first run's write says so
        yield
        return
    held = None
    try:
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)  # held only while looking at the other jobs' locks
        except OSError:  # unavailable, or a read-only descriptor on NFS (EBADF): the look still runs
            pass
        try:
            for other in sorted(out.glob(".lock-*")):
                if other.name != f".lock-{key}":
                    _refuse_if_held(other, out, what)
            opened = _open_lock(out / f".lock-{key}")
            if opened >= 0:  # (none: nothing to hold, as where flock is unavailable)
                held = opened
                with contextlib.suppress(OSError):  # (unavailable: nothing held, nothing checked)
                    fcntl.flock(held, fcntl.LOCK_SH)  # others of this key hold it shared too; nobody exclusively
                with contextlib.suppress(OSError):  # the flock is the lock, the text only informs
                    os.ftruncate(held, 0)
                    os.pwrite(held, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        finally:
            with contextlib.suppress(OSError):  # (not held where flock failed above)
                fcntl.flock(guard, fcntl.LOCK_UN)
            os.close(guard)  # only the key's lock stays open: a grid of experiments holds one descriptor each
            guard = -1
        yield
    finally:
        if held is not None:
            os.close(held)
        if guard >= 0:
            os.close(guard)


def _open_lock(path: Path, *, create: bool = True) -> int:
    """A descriptor of the lock file ``path`` (made 0o666 less the umask), or -1 if it cannot be opened.

    Read-write where this user may write it: NFS refuses an exclusive flock on a read-only descriptor
    (EBADF). Another user's lock in a shared folder may not be writable (made 0o644 by an older
    w2v2ser, or under umask 022): it is opened read-only then, which a local flock allows.

    Raises:
        PermissionError: ``path`` exists and cannot even be read (``create`` False only).
    """
    denied = (errno.EACCES, errno.EPERM, errno.EROFS)
    try:
        return os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o666)
    except OSError as exc:
        if exc.errno not in denied:
            return -1  # missing (create False), a folder in the way...: no lock to look at
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in denied and not create:
            raise
        return -1


def _refuse_if_held(lock: Path, out: Path, what: str) -> None:
    """Raise ConfigError if a running job holds ``lock`` (another configuration's), or if this user
    cannot tell (a lock it can neither read nor lock); remove it if no job holds it."""
    import fcntl

    key = lock.name.removeprefix(".lock-")
    quoted = shlex.quote(str(lock))  # under --out, which may hold a space (or braces: so no str.format)

    def unknowable(cannot: str) -> str:
        return (f"{out} holds the lock {lock} of a job of another configuration (config key {key}), which this "
                f"user cannot {cannot}, so whether that job still runs cannot be told; the two would replace each "
                f"other's runs. Ask the lock's owner to let the group write it (`chmod g+rw {quoted}`), or "
                f"remove it (`rm {quoted}`) when no job of that configuration runs.")

    try:
        fd = _open_lock(lock, create=False)
    except OSError:  # another user's lock this user cannot read: a job may be writing (review M1)
        raise FolderBusyError(unknowable("read")) from None
    if fd < 0:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno == errno.EBADF:  # NFS: no exclusive flock on a read-only descriptor (review H1)
                raise FolderBusyError(unknowable("lock")) from None
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return  # flock unavailable: nothing is checked (the docstring of share_out_folder)
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown pid"
            # `w2v2ser run` has no --out: an experiment's folder is named after it, under output:
            elsewhere = ("this experiment another name (or the pipeline another output)" if what == "run" else
                         f"this `w2v2ser {what}` another --out")
            raise FolderBusyError(
                f"{out} is being written by another job of another configuration ({holder}, config key "
                f"{key}, lock {lock}); the two would replace each other's runs. "
                f"Give {elsewhere}, or rerun it when that job has finished.") from None
        with contextlib.suppress(OSError):  # another user's, in a folder without write access: left as it is
            lock.unlink(missing_ok=True)  # its job has ended (under out/.lock: nobody is opening it now)
    finally:
        os.close(fd)
