"""Where a store lives: a local directory, or an object-store URL (``s3://bucket/prefix``, any fsspec URL).

One place turns what the user gave (a path, or a URL plus storage options) into what Zarr
needs (a ``LocalStore`` or an ``FsspecStore``) and a small object layer for the files that
are not Zarr arrays: the lock, the commit journals and the Parquet tables. Local stores keep
their own code paths (flock, appended and fsynced journals, rename); only URLs use objects.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from w2v2ser._text import file_url_path

from ._errors import StoreError, StoreUnreachableError

__all__ = ["StoreLocation", "locate_store", "is_store_url", "remote_errors", "unreachable", "from_object_store",
           "as_unreachable", "STORAGE_OPTIONS_ENV"]

# Extra fsspec options for every store URL, as a JSON object (e.g. '{"endpoint_url": "http://..."}').
STORAGE_OPTIONS_ENV = "W2V2SER_STORAGE_OPTIONS"


def is_store_url(text: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` locations other than ``file://`` (those are local paths)."""
    text = os.fspath(text)
    return "://" in text and not text.startswith("file://")


def _env_options() -> dict[str, Any]:
    raw = os.environ.get(STORAGE_OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except ValueError as exc:
        raise StoreError(
            f"environment variable {STORAGE_OPTIONS_ENV}={raw[:200]!r} is not JSON ({exc}); expected "
            f'an object of fsspec storage options, e.g. {{"endpoint_url": "http://127.0.0.1:9000"}}.'
        ) from None
    if not isinstance(options, dict):
        raise StoreError(f"environment variable {STORAGE_OPTIONS_ENV} holds {type(options).__name__}; "
                         f'expected a JSON object such as {{"endpoint_url": "http://127.0.0.1:9000"}}.')
    return options


@dataclass(frozen=True)
class StoreLocation:
    """A store's place: ``url`` is a local path or an object-store URL; picklable, so it can
    travel to Dask workers with its storage options.

    Attributes:
        url: absolute local path, or ``scheme://bucket/prefix`` without a trailing slash.
        storage_options: fsspec options of the URL's file system (endpoint, credentials...).
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        """True for a directory on a local (or mounted) file system."""
        return not is_store_url(self.url)

    @property
    def path(self) -> Path:
        """The directory of a local store."""
        if not self.is_local:
            raise StoreError(f"store {self.url} is on object storage; this operation needs a local directory.")
        return Path(self.url)

    @property
    def display(self) -> Path | str:
        """What messages and ``.path`` attributes show: a Path for local stores, else the URL."""
        return self.path if self.is_local else self.url

    def __str__(self) -> str:
        return self.url

    # ------------------------------------------------------------------ zarr
    def zarr_store(self, *, read_only: bool) -> Any:
        """The Zarr store object: ``LocalStore`` for directories, ``FsspecStore`` for URLs.

        Args:
            read_only: Open it read-only.
        """
        from zarr.storage import FsspecStore

        if self.is_local:
            return local_zarr_store(self.path, read_only=read_only)
        _cancel_pending_requests_at_exit()
        from ._layout import quiet_zarr  # imports this module

        with quiet_zarr((Warning,)):  # zarr's and the object store clients' (fsspec, botocore)
            return FsspecStore.from_url(self.url, storage_options=dict(self.storage_options), read_only=read_only)

    # ------------------------------------------------------------------ objects
    def _fs(self) -> tuple[Any, str]:
        import fsspec

        # fsspec caches file-system instances by their options, so this is cheap after the first call.
        return fsspec.core.url_to_fs(self.url, **dict(self.storage_options))

    def _full(self, key: str) -> tuple[Any, str]:
        fs, root = self._fs()
        return fs, f"{root.rstrip('/')}/{key}" if key else root

    def exists(self, key: str) -> bool:
        """Whether the object (or local file) ``key`` exists.

        Args:
            key: Path of the object, relative to the store.
        """
        if self.is_local:
            return (self.path / key).exists()
        fs, full = self._full(key)
        fs.invalidate_cache(full)
        return bool(fs.exists(full))

    def read_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist.

        Args:
            key: Path of the object, relative to the store.
        """
        fs, full = self._full(key)
        try:
            return bytes(fs.cat_file(full))
        except FileNotFoundError:
            return None

    def write_bytes(self, key: str, data: bytes) -> None:
        """Replace an object as a whole (one PUT: readers see the old object or the new one).

        Args:
            key: Path of the object, relative to the store.
            data: Its new bytes.
        """
        fs, full = self._full(key)
        fs.pipe_file(full, data)

    def create(self, key: str, data: bytes) -> bool:
        """Create an object only if none exists; False when it already does.

        On S3 this is one conditional PUT (``If-None-Match: *``), atomic on the server; other
        fsspec file systems check, then write (not atomic between two racing writers).

        Args:
            key: Path of the object, relative to the store.
            data: Its bytes.
        """
        fs, full = self._full(key)
        try:
            fs.pipe_file(full, data, mode="create")
        except FileExistsError:
            return False
        return True

    def delete(self, key: str) -> None:
        """Delete one object (missing is fine).

        Args:
            key: Path of the object, relative to the store.
        """
        fs, full = self._full(key)
        try:
            fs.rm_file(full)
        except FileNotFoundError:
            pass

    def delete_tree(self, prefix: str) -> None:
        """Delete everything under ``prefix/`` (a folder, or every object of that prefix).

        Args:
            prefix: Folder (key prefix) relative to the store.
        """
        if self.is_local:
            shutil.rmtree(self.path / prefix, ignore_errors=True)
            return
        for key in self.list(prefix):
            self.delete(key)

    def list(self, prefix: str) -> list[str]:
        """Keys of every object under ``prefix/``, relative to the store, sorted (fresh listing).

        Args:
            prefix: Folder (key prefix) relative to the store.
        """
        fs, full = self._full(prefix)
        fs.invalidate_cache(full)
        _, root = self._fs()
        start = len(root.rstrip("/")) + 1
        try:
            found = fs.find(full)
        except FileNotFoundError:
            return []
        return sorted(str(p)[start:] for p in found)


_exit_hook: list[bool] = []


def _cancel_pending_requests_at_exit() -> None:
    """Once per process that reads or writes an object store: at exit, cancel the requests still
    pending on zarr's I/O loop, each in its own task, before zarr stops that loop. An endpoint lost
    mid-read fails the read at its first error while the read's other requests still wait out their
    retries; left to the closed loop, each was torn down at exit as a traceback ("Exception ignored
    in: <coroutine object concurrent_map...> ... was created in a different Context"), hundreds of
    lines after the command's one-line error."""
    if _exit_hook:
        return
    import atexit

    import zarr.core.sync  # noqa: F401 -- its own exit hook first: hooks run last-registered first

    _exit_hook.append(True)
    atexit.register(_cancel_pending_requests)


def _cancel_pending_requests() -> None:
    import asyncio

    from zarr.core.sync import loop as zarr_loop

    loop = zarr_loop[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout=10)
    except Exception:  # noqa: BLE001 -- exiting anyway: zarr closes the loop next
        pass


def unreachable(location: StoreLocation, exc: BaseException) -> StoreUnreachableError:
    """The error for an object store that refuses a request: no such bucket, bad credentials, no endpoint."""
    named = re.search(r"unexpected keyword argument '(\w+)'", str(exc)) if isinstance(exc, TypeError) else None
    options = location.storage_options
    given = {*options, *(key for value in options.values() if isinstance(value, Mapping) for key in value)}
    if named is not None and named[1] in given:  # a storage option its client lacks (not, say, a version mismatch)
        return StoreUnreachableError(
            f"cannot use store {location}: a storage option is not one its file system's client takes "
            f"({type(exc).__name__}: {exc}); given: {sorted(location.storage_options)}. Fix storage_options or "
            f"{STORAGE_OPTIONS_ENV} (client settings such as timeouts go under \"config_kwargs\" for S3).")
    if named is not None:  # an option no user gave: the client's own packages call each other with other versions
        installed = _client_versions(location)
        return StoreUnreachableError(
            f"cannot use store {location}: the installed client libraries of its file system disagree "
            f"({type(exc).__name__}: {exc}, an option none of your storage options names); installed: "
            f"{', '.join(f'{k} {v}' for k, v in installed.items()) or 'none found'}. Upgrade them together "
            f"to versions that match: pip install -U {' '.join(installed)}.")
    return StoreUnreachableError(
        f"cannot use store {location}: {type(exc).__name__}: {exc}. Check that the bucket exists, "
        f"the URL, the endpoint and the credentials (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
        f"AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, or {STORAGE_OPTIONS_ENV})."
    )


def _client_versions(location: StoreLocation) -> dict[str, str]:
    """Installed versions of the packages of a URL's file system client (S3: s3fs, aiobotocore, botocore)."""
    from importlib.metadata import PackageNotFoundError, version

    scheme = location.url.split("://", 1)[0]
    names = ("s3fs", "aiobotocore", "botocore") if scheme in ("s3", "s3a") else ("fsspec", "gcsfs", "adlfs")
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


# Packages whose exceptions mean that the object store's client could not get an answer (or got a
# refusal): connection, endpoint, credentials, permissions. Their errors never mean damaged data.
_CLIENT_PACKAGES = frozenset({"botocore", "aiobotocore", "aiohttp", "urllib3", "s3fs", "gcsfs", "adlfs", "google",
                              "azure"})


def from_object_store(exc: BaseException) -> bool:
    """Whether an exception is an object store's client failing to get an answer or being refused
    (EndpointConnectionError, NoCredentialsError, a 403 that s3fs turned into PermissionError, a
    timeout), as opposed to damaged or missing data, or a bug. A missing object (FileNotFoundError)
    is not such an error: readers treat it as the data's absence."""
    if isinstance(exc, (StoreError, FileNotFoundError, FileExistsError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)) or _from_client(exc):
        return True
    # s3fs turns a client's error into an OSError (PermissionError for a 403) raised while handling it.
    cause = exc.__cause__ or exc.__context__ if isinstance(exc, OSError) else None
    return cause is not None and _from_client(cause)


def as_unreachable(location: StoreLocation, exc: BaseException) -> StoreUnreachableError | None:
    """The StoreUnreachableError that ``exc`` means (itself, or an object store's client failing to
    get an answer), or None: damage, a bug, or any error of a local store."""
    if isinstance(exc, StoreUnreachableError):
        return exc
    return unreachable(location, exc) if not location.is_local and from_object_store(exc) else None


def _from_client(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in _CLIENT_PACKAGES


def local_zarr_store(path: str | os.PathLike[str], *, read_only: bool) -> Any:
    """A ``LocalStore`` rooted at the absolute path: zarr 3.1's ``list_prefix`` strips the root by
    deleting every occurrence of ``ROOT/`` from file paths, so a relative root such as ``data``
    also cut ``data/`` out of ``features/X/data/c/0/0`` (``store info`` then failed)."""
    from zarr.storage import LocalStore

    return LocalStore(Path(path).absolute(), read_only=read_only)


def locate_store(store: str | bytes | os.PathLike[str] | os.PathLike[bytes] | StoreLocation, *,
                 storage_options: Mapping[str, Any] | None = None) -> StoreLocation:
    """Turn a store path or URL into a :class:`StoreLocation`.

    Args:
        store: local directory (str, bytes or a path object), ``file://`` path, an object-store URL
            (``s3://bucket/prefix``, ``gs://...``, ``memory://...``: any fsspec URL), or a StoreLocation (returned as is
            unless ``storage_options`` are given).
        storage_options: fsspec options for URLs, over those of the environment variable
            ``W2V2SER_STORAGE_OPTIONS`` (a JSON object). S3 credentials and endpoint also come
            from the usual ``AWS_*`` variables (read by botocore).

    Returns:
        The location; a local path is kept as given.
    """
    if isinstance(store, StoreLocation):
        if storage_options:
            return StoreLocation(store.url, {**dict(store.storage_options), **dict(storage_options)})
        return store
    if not isinstance(store, (str, bytes, os.PathLike)):  # os.fspath's TypeError named no argument
        raise StoreError(f"store: got {type(store).__name__} {store!r}; expected a path (str, bytes or Path) or a URL")
    # bytes (os.listdir(b".") gives them) decode as the file system encodes names, as os.fsdecode does.
    text = os.fsdecode(store)
    if is_store_url(text):
        return StoreLocation(text.rstrip("/"), {**_env_options(), **dict(storage_options or {})})
    try:
        local = file_url_path(text)
    except ValueError as exc:
        raise StoreError(f"store: {exc}.") from None
    encoding = sys.getfilesystemencoding()
    if codecs.lookup(encoding).name != "utf-8" and not os.path.abspath(local).isascii():
        # Python decoded the name with the locale's codec; zarrs, tensorstore and pyarrow take it as UTF-8, and
        # read another folder: every utterance's frames then looked damaged.
        raise StoreError(f"store {local}: its path holds characters beyond ASCII, and this Python reads file names "
                         f"as {encoding} (the locale's encoding), while the store's native readers and writers take "
                         f"them as UTF-8 and would see another folder. Run Python in UTF-8 mode (PYTHONUTF8=1, or "
                         f"python -X utf8) or under a UTF-8 locale (LC_ALL=C.UTF-8); the w2v2ser command does so "
                         f"itself.")
    return StoreLocation(local)


@contextmanager
def remote_errors(location: StoreLocation) -> Iterator[None]:
    """Inside, an object store's refusal (any exception of its client: botocore's NoCredentialsError
    is not an OSError) becomes :func:`unreachable`'s StoreError; local stores' errors pass unchanged."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 -- fsspec back ends raise their own client errors
        if location.is_local:
            raise
        raise unreachable(location, exc) from None
