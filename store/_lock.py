"""Extraction lock (``STORE/.lock``) so two drivers never write one store.

Local stores hold an ``fcntl.flock`` on the file (released by the kernel when the holder
dies). Stores on object storage create the ``.lock`` object with a conditional PUT
(``If-None-Match: *``) and delete it when done; a holder that dies leaves it behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from w2v2ser._common import describe_path_error

from ._errors import EXIT_FAILED, StoreError, StoreLockedError, StoreUnreachableError, W2v2serError
from ._location import StoreLocation, locate_store, remote_errors

__all__ = ["lock_store", "hold_plan_lock", "extraction_holder", "extraction_running", "LOCK_FILE", "PLAN_LOCK_FILE"]

LOCK_FILE = ".lock"
PLAN_LOCK_FILE = ".plan.lock"


@contextmanager
def lock_store(path: str | os.PathLike[str] | StoreLocation, *,
               storage_options: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Hold the store's exclusive, non-blocking extraction lock.

    Local stores: an ``fcntl.flock`` on ``STORE/.lock``. Object stores: the ``.lock`` object,
    created only if absent (one conditional PUT) and deleted on exit.

    Args:
        path: store directory (created if missing) or URL.
        storage_options: fsspec options of a URL (see :func:`locate_store`).

    Raises:
        StoreError: the store (or its folder) is not writable, e.g. a read-only mount.
        StoreLockedError: another process holds the lock; names the lock file and the
            holder's pid as written in it.
    """
    location = locate_store(path, storage_options=storage_options)
    if not location.is_local:
        with _lock_object(location):
            yield
        return
    store = location.path
    lock_path = store / LOCK_FILE
    made_folder, made_lock = not store.exists(), not lock_path.exists()
    try:
        store.mkdir(parents=True, exist_ok=True)
        # 0o666 less the umask, as every other file of the store: a group member resumes a shared store.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTDIR) and not store.is_dir():  # a file where the store's folder is
            raise StoreError(describe_path_error(exc)[0]) from None  # the command line's message, as a StoreError
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT):
            raise
        if exc.errno == errno.ENOENT:  # mkdir(parents=True) fails so only where no folder can be made (/proc, autofs, deleted cwd)
            # (There is no store there to copy or to ask about: the read-only advice below cannot apply.)
            raise StoreError(
                f"cannot write to store {store}: no folder can be created there ({exc.filename} does not exist and "
                f"cannot be made: a virtual file system such as /proc, an automount path, or a current folder that "
                f"was deleted). Choose a store path on a normal file system (a local disk or a network share)."
            ) from None
        why = exc.strerror
        if exc.errno in (errno.EACCES, errno.EPERM) and lock_path.exists() and os.access(store, os.W_OK):
            # A group's store whose folder this user may write, but whose lock (or journals) an older
            # w2v2ser or a stricter umask made 0o644: copying the store is not the fix (second review M2).
            raise StoreError(
                f"cannot write to store {store}: {why} ({exc.filename}), though its folder is writable: its lock "
                f"and journals were made without group write (by an earlier w2v2ser, or "
                f"under a umask such as 022). Ask the store's owner to run `chmod -R g+w {shlex.quote(str(store))}`, "
                f"then rerun."
            ) from None
        if made_folder:  # no store there yet: nothing to copy, no owner to ask
            raise StoreError(
                f"cannot write to store {store}: {why} ({exc.filename}); the store does not exist yet and its "
                f"folder cannot be made there. Give a store path on a writable disk instead (where the store is "
                f"named: extract's --store, NEW of store upgrade, pipeline.yaml or a Python call), then rerun."
            ) from None
        # A store shared read-only (another user's, a read-only mount) is fine to train on,
        # but extraction writes into it: say so instead of an OSError traceback.
        raise StoreError(
            f"cannot write to store {store}: {why} ({exc.filename}). Extraction and `store upgrade` write "
            f"into a store, so they need write access; `w2v2ser train`, `sweep`, `evaluate` and "
            f"`store info|verify|export` only read it. To extract more, copy the store somewhere "
            f"writable (`cp -r {shlex.quote(str(store))} NEW`) and pass `--store NEW`, or ask the store's owner."
        ) from None
    try:
        _flock_exclusive(fd)
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
            os.pwrite(fd, _holder_text(), 0)
        except OSError:  # e.g. disk full: the flock is the lock, the holder text only informs
            pass
        yield
    finally:
        try:
            os.ftruncate(fd, 0)
            if made_lock and not (store / "zarr.json").exists():
                # Nothing was created (a refused folder, a failure before the store began):
                # leave the folder as it was, without our lock file (or the folder we made).
                _remove_quietly(lock_path, store if made_folder else None)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _flock_exclusive(fd: int, *, patience: float = 2.0) -> None:
    """Take the exclusive flock, or raise OSError (EWOULDBLOCK) while another process holds it.

    Readers take a shared lock for an instant to see whether an extraction runs
    (:func:`extraction_holder`); an extraction starting at that instant retries for up to
    ``patience`` seconds instead of being refused for that glimpse.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _holder_text() -> bytes:
    """What a lock holder writes into the lock: "pid N on HOST (pid namespace I, boot B)".

    Read back by :func:`extraction_holder`. The pid namespace and boot tell :func:`_dead_here`
    whether N is a pid of the reader's own process table: containers that share the host's name
    (docker ``--network host``, Kubernetes ``hostNetwork``) each have their own.
    """
    return f"pid {os.getpid()} on {socket.gethostname()}{_pid_space()}\n".encode()


def _pid_space() -> str:
    """This process's " (pid namespace I, boot B)", or "" where ``/proc`` cannot tell."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
    return f" (pid namespace {namespace}, boot {boot})" if boot else ""


def extraction_running(path: str | os.PathLike[str] | StoreLocation) -> str | None:
    """The start of the message for a store an extraction holds now, or None when none runs.

    "store X is being extracted now (its lock X/.lock is held by pid N on HOST)"; for a lock object,
    the holder text also says how to delete one a killed extraction left (see :func:`extraction_holder`).
    Callers add what that means for them.
    """
    holder = extraction_holder(path)
    if holder is None:
        return None
    try:
        display = locate_store(path).display
    except Exception:  # noqa: BLE001 -- extraction_holder located it; only the wording is at stake
        display = str(path)
    return f"store {display} is being extracted now (its lock {display}/{LOCK_FILE} is held by {holder})"


def extraction_holder(path: str | os.PathLike[str] | StoreLocation) -> str | None:
    """Who holds the store's extraction lock now ("pid N on HOST"), or None when no extraction runs.

    Readers use it to say "an extraction is running" instead of "interrupted" or "damaged". Local
    stores: a non-blocking shared ``flock`` tried and released at once (the text alone survives a
    killed holder). Object stores: the ``.lock`` object's text (one left by a dead holder counts, so
    the text says how to delete it).
    Any failure to look answers None: this only chooses the wording of another error.
    """
    try:
        location = locate_store(path)
        if not location.is_local:
            raw = location.read_bytes(LOCK_FILE)
            if raw is None:
                return None
            # An object outlives a killed holder (no flock to release it): say how to clear it.
            return (f"{raw.decode('utf-8', 'replace').strip() or 'unknown pid'}; a lock object outlives a killed "
                    f"extraction: if none runs, delete {location.display}/{LOCK_FILE} and rerun")
        fd = os.open(location.path / LOCK_FILE, os.O_RDONLY)
    except Exception:  # noqa: BLE001 -- no lock file, an unreachable store: nothing to tell
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            try:
                return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown pid"
            except OSError:
                return "unknown pid"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _remove_quietly(lock_path: Path, folder: Path | None) -> None:
    try:
        lock_path.unlink()
        if folder is not None:
            folder.rmdir()  # only when empty
    except OSError:
        pass


@contextmanager
def _lock_object(location: StoreLocation) -> Iterator[None]:
    holder = _holder_text()
    with remote_errors(location):  # no such bucket, refused credentials
        created = location.create(LOCK_FILE, holder)
    if not created:
        with remote_errors(location):
            raw = location.read_bytes(LOCK_FILE)  # None: its holder released it meanwhile
        text = (raw or b"").decode("utf-8", "replace").strip() or ("" if raw is not None else "unknown pid")
        if not text:  # every lock object names its holder (one PUT): an empty one is a copied lock file
            raise StoreLockedError(
                f"store {location} has an empty lock object {location}/{LOCK_FILE}: a local store's "
                f"lock file, copied with the store (an extraction on object storage writes its pid and "
                f"host into the lock). Delete it (e.g. `aws s3 rm {shlex.quote(f'{location}/{LOCK_FILE}')}`), then "
                f"rerun; "
                f"leave `.lock` out when you copy a store (`aws s3 sync DIR URL --exclude .lock`)."
            )
        if _dead_here(text):  # the holder ran on this host and is gone: no need to guess
            raise StoreLockedError(
                f"store {location} is locked by a dead extraction: lock object {location}/{LOCK_FILE} was "
                f"created by {text}, which no longer runs on this host (killed or crashed); an object "
                f"outlives its holder. Delete it (e.g. `aws s3 rm {shlex.quote(f'{location}/{LOCK_FILE}')}`), then "
                f"rerun: the rerun keeps every utterance that extraction committed.")
        raise StoreLockedError(
            f"store {location} is locked: lock object {location}/{LOCK_FILE} was created by {text}; "
            f"another extraction is running on this store. Wait for it to finish. If that process "
            f"has died, its lock stays: delete the object {location}/{LOCK_FILE} (e.g. `aws s3 rm "
            f"{shlex.quote(f'{location}/{LOCK_FILE}')}`), then rerun."
        )
    try:
        yield
    except BaseException as error:
        left = _delete_lock_object(location)
        if left is not None:  # the original error stays the one reported, with this added
            if isinstance(error, W2v2serError):
                said = str(error).rstrip()
                error.args = (f"{said} {left[0].upper()}{left[1:]}" if said.endswith(".") else f"{said}; {left}",)
            else:
                if hasattr(error, "add_note"):  # Python 3.11+: shown with the traceback
                    error.add_note(left)
                if not isinstance(error, Exception):  # Ctrl-C, SIGTERM: their one line says nothing of it
                    print(f"w2v2ser: {left}", file=sys.stderr)
        raise
    left = _delete_lock_object(location)
    if left is not None:
        error = StoreUnreachableError(f"store {location}: the work is done, but {left}")
        error.exit_code = EXIT_FAILED  # not bad input: the command ran
        raise error


def _dead_here(holder: str) -> bool:
    """Whether a lock object's holder names this host, pid namespace and boot, and a pid gone from it.

    A holder text without them (an earlier w2v2ser's, no ``/proc``), or of another namespace (a
    container beside this one, with the same host name), cannot tell: not dead.
    """
    here = _pid_space()
    match = re.fullmatch(r"pid (\d+) on (\S+)( \(.*\))", holder)
    if not here or match is None or match[2] != socket.gethostname() or match[3] != here:
        return False
    if int(match[1]) == os.getpid():
        return False
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: another user's live process
        return False
    return False


def _delete_lock_object(location: StoreLocation) -> str | None:
    """Delete the lock object; when that fails (the store went away), what to tell the user."""
    try:
        location.delete(LOCK_FILE)
    except Exception as exc:  # noqa: BLE001 -- any client error: the object may still be there
        return (f"the lock object {location}/{LOCK_FILE} was left behind (deleting it failed: "
                f"{type(exc).__name__}: {exc}): delete it once no extraction runs (e.g. `aws s3 rm "
                f"{shlex.quote(f'{location}/{LOCK_FILE}')}`), then rerun")
    return None


@contextmanager
def hold_plan_lock(location: StoreLocation) -> Iterator[None]:
    """Serialise the growth of a local store's data arrays between processes (blocking).

    Two processes that plan space at once (e.g. ``write_utterance`` from several workers) would
    otherwise read the same array end and hand out overlapping shards. A blocking ``flock`` on
    ``STORE/.plan.lock``, separate from the extraction lock that the driver holds throughout.
    Stores on object storage: planning is the driver's alone (documented), nothing is locked.
    """
    if not location.is_local:
        yield
        return
    fd = os.open(location.path / PLAN_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for .lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
