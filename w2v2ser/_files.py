"""Files and folders written safely: folders made with a clear error, checksums, fsync,
atomic replacement of a file or folder (:func:`replacing`, :func:`write_atomically`,
:func:`publish_directory`), temporary files left by killed writers (:func:`remove_stale`) and
the target of a link. Imports only the standard library, :mod:`w2v2ser._common` and
:mod:`w2v2ser._text`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from w2v2ser._common import _OTHER_OUTPUT, ConfigError
from w2v2ser._text import short_name

__all__ = [
    "file_sha256",
    "owner_tag",
    "remove_stale",
    "fsync_path",
    "publish_directory",
    "replacing",
    "write_atomically",
]


def make_folder(path: str | os.PathLike) -> Path:
    """``mkdir -p`` of a folder w2v2ser writes into (an ``--out``, an output file's folder).

    Raises:
        ConfigError: no folder can be made there: the file system takes none (/proc, /sys, an
            automount path) or the current folder was deleted. mkdir says "No such file or
            directory" then, which is no fix. Other errors (permission, a file in the way) are
            raised as they are: the command line describes them (:func:`describe_path_error`).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileNotFoundError as error:
        raise ConfigError(f"cannot create the folder {path}: no folder can be made at {error.filename} (a virtual "
                          f"file system such as /proc or /sys, an automount path, or a current folder that was "
                          f"deleted). Give a path on a normal disk ({_OTHER_OUTPUT}), then rerun.") from None
    return path


def file_sha256(path: str | os.PathLike, *, block_size: int = 1 << 22) -> str:
    """Lowercase hex SHA-256 of a file's bytes, read in blocks (constant memory).

    Raises:
        OSError: The file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: str | os.PathLike) -> None:
    """fsync one file or folder: a folder's fsync makes a rename or new file inside it durable
    (a no-op where folders cannot be opened, or the file system cannot sync them).

    Raises:
        OSError: the fsync failed otherwise (EIO, ENOSPC...): what was written may be lost.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as error:
        # EINVAL / ENOTSUP / ENOSYS: a file system that cannot sync a folder (or a special file, or
        # a FUSE file system without fsync); nothing to make durable there. Anything else must not
        # let a commit record follow the data.
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def _new_file_mode() -> int:
    """Mode of a file made with open(): 0o666 less the umask (mkstemp's 0o600 would hide the
    stores and runs of one user from the rest of a group on a shared file system)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:  # reads the umask without setting it
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)  # elsewhere: the classic read-by-setting
    os.umask(umask)
    return 0o666 & ~umask


def owner_tag() -> str:
    """``PID-HOST``, this process and a hash of this host's name and PID namespace, for the name of
    a temp file or folder that a killed process leaves behind: :func:`remove_stale` removes it once
    that process is gone. The namespace is part of it because containers may share a host name
    while each has its own PIDs: a PID not seen from here is then no proof that its owner is gone."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux, or /proc not mounted
        namespace = 0
    return f"{os.getpid()}-{zlib.crc32(f'{socket.gethostname()} {namespace}'.encode()):08x}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (EPERM): alive
        return True
    return True


def remove_stale(folder: str | os.PathLike, prefix: str, suffix: str = "") -> int:
    """Remove the entries of ``folder`` named ``prefix + owner_tag() + "." + random + suffix`` (as
    :func:`replacing` and predict name their temp files and folders) whose process is gone: left by
    one killed with SIGKILL. Entries of live processes (a concurrent run), of other hosts (a shared
    file system), of other PID namespaces (containers) and of other names are kept. Returns how
    many were removed."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)-([0-9a-f]{8})\.[A-Za-z0-9_]+" + re.escape(suffix))
    host = owner_tag().split("-", 1)[1]
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        found = pattern.fullmatch(name)
        if found is None or found[2] != host or _alive(int(found[1])):
            continue
        stale = Path(folder, name)
        try:
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()
            removed += 1
        except OSError:  # gone meanwhile, or not ours to remove
            pass
    return removed


def link_target(path: str | os.PathLike) -> Path:
    """The file a user's output path names: the file a symbolic link points to, as `>` writes it.

    Raises:
        ConfigError: ``path`` is a link that loops, or points into a folder that does not exist
            (`>` fails there too; making that folder would build a tree the user never asked for).
    """
    path = Path(path)
    if not path.is_symlink():
        return path
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ConfigError(f"{path} is a symbolic link that loops (through {os.readlink(path)}); remove or "
                              f"fix the link, or give another path, then rerun.") from None
    target = Path(os.path.realpath(path))
    if not target.parent.is_dir():
        raise ConfigError(f"{path} is a symbolic link to {target}, whose folder {target.parent} does not exist. "
                          f"Create that folder, point the link elsewhere, or give another path, then rerun.")
    return target


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is fsynced and renamed over ``path``.

    The one fsync-and-rename path: readers see the old file or the new one, never half. On
    any error the temp file is removed and ``path`` is untouched.

    Args:
        path: Destination file; its folder is created if needed. It gets the mode of the file it
            replaces, or that of a new file (0o666 less the umask). A symbolic link there is
            replaced itself (a store's own files: a store copied as links leaves its source
            alone); to write the file it points to, pass :func:`link_target` of it.
        durable: fsync the file and its folder (off only for throwaway files).
    """
    path = Path(path)
    if path.is_dir():  # before any work: os.replace would refuse it only at the end
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    if path.exists() and not path.is_file():
        # os.replace would swap a device, FIFO or socket for a regular file: as root,
        # `store export STORE /dev/null` replaced the system's /dev/null.
        raise ConfigError(f"{path} is not a regular file (a device, FIFO or socket); w2v2ser writes a new file and "
                          f"renames it over the old one, which would remove it. Give the path of a regular file "
                          f"(or a new one), then rerun.")
    make_folder(path.parent)
    # The temp files of writers of this path killed with SIGKILL (a big export's partial copy).
    # At most 200 bytes of the name: with the tag and mkstemp's letters the temp name stays
    # within NAME_MAX (255 bytes) for every valid target name.
    prefix = f".{short_name(path.name, 200)}."
    remove_stale(path.parent, prefix, ".tmp")
    try:
        fd, name = tempfile.mkstemp(prefix=f"{prefix}{owner_tag()}.", suffix=".tmp", dir=path.parent)
    except FileNotFoundError as error:  # a folder that takes no new files (/proc, /sys): say so, one line
        raise PermissionError(errno.EACCES, "no new file can be created in this folder", str(path)) from error
    except OSError as error:  # no permission, a read-only mount: name the file meant, not the temp name
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise type(error)(error.errno, error.strerror, str(path)) from error
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with contextlib.suppress(OSError):  # keep a replaced file's mode, else what open() would give
            os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else _new_file_mode())
        if durable:
            fsync_path(tmp)
        try:
            os.replace(tmp, path)
        except OSError as error:  # name the file meant, not the temp file (removed below) the user never made
            raise type(error)(error.errno, _replace_refused(error, path), str(path)) from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(path.parent)


def _replace_refused(error: OSError, path: Path) -> str:
    """The reason a rename over ``path`` failed, with why when it is another user's file in a
    folder with the sticky bit (/tmp, a shared scratch folder): only its owner may replace it."""
    reason = error.strerror or str(error)
    if error.errno in (errno.EPERM, errno.EACCES):
        with contextlib.suppress(OSError):
            if path.parent.stat().st_mode & 0o1000 and path.stat().st_uid != os.geteuid():
                reason += (" (it is another user's file in a folder with the sticky bit, like /tmp: only its owner "
                           "may replace it; give another file name)")
    return reason


def publish_directory(tmp: Path, target: Path) -> Path:
    """Move a finished folder into place, replacing an older one (e.g. a stale run directory).

    The old folder is renamed aside first and then deleted, so ``target`` is at every moment
    either the old complete folder, absent, or the new complete one.
    """
    if target.exists():
        # (a 250-byte name is valid); a killed process's leftover goes with remove_stale(..., ".NAME.old-")
        trash = target.with_name(f".{short_name(target.name)}.old-{owner_tag()}.dir")
        os.rename(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.rename(tmp, target)
    fsync_path(target.parent)
    return target


def write_atomically(path: str | os.PathLike, data: str | bytes | Callable[[IO[bytes]], None], *,
                     durable: bool = True) -> Path:
    """Replace ``path`` with new content so that readers see the old file or the new one, never half.

    The content goes to a temp file in the same folder, is flushed and fsynced, then renamed over
    ``path`` (and the folder fsynced, when ``durable``). On any error the temp file is removed.

    Args:
        path: Destination file; its folder is created if needed.
        data: Text (written as UTF-8), bytes, or a function that writes into a binary file object
            (e.g. ``lambda f: fig.savefig(f, format="png")``).
        durable: fsync the file and its folder (off only for throwaway files).

    Returns:
        ``path`` as a Path.
    """
    with replacing(path, durable=durable) as tmp, open(tmp, "wb") as handle:
        if callable(data):
            data(handle)
        else:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)
