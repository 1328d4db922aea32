"""Write errors said plainly: a store moved away while it was written (StoreGoneError) and a full
disk or a file-size limit (StoreFullError), around the writing methods of StoreWriter and UnitWriter."""

from __future__ import annotations

import errno
import functools
import os
from typing import Any

from w2v2ser._common import FULL_DISK_ERRNOS

from ._errors import StoreFullError, StoreGoneError
from ._units import UnitWriter


def _moved_away(writer: Any, method: str) -> StoreGoneError | None:
    """The error for a local store moved, renamed or deleted while it was written (its arrays then
    fail to open, as if damaged), None while it is there."""
    writer = getattr(writer, "_writer", writer)  # a UnitWriter's StoreWriter
    location = getattr(writer, "location", None)
    if method == "_create" or location is None or not location.is_local or (location.path / "zarr.json").exists():
        return None
    left = (f" A folder {location.path} left there (or made by writes still in flight) holds only frames written "
            f"after the move: delete it." if location.path.exists() else "")
    return StoreGoneError(
        f"store {location.path} is no longer there: it was moved, renamed or deleted while this extraction wrote "
        f"it, so nothing in it is known to be damaged: what was committed before is kept in the store at its new "
        f"path, and the work unit in flight was not committed. Rerun the same command with the store's new path "
        f"(--store, or pipeline.yaml's) to extract the rest.{left}")


def _no_space_is_clear(method: Any) -> Any:
    """Turn "no space left on device" / "quota exceeded" while writing the store into a StoreFullError.

    Everything committed before stays valid (the journal line is the commit point), so the
    message tells the user to free space and rerun the same command.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            gone = _moved_away(self, method.__name__)
            if gone is not None:
                raise gone from exc
            if not isinstance(exc, (OSError, RuntimeError)):
                raise
            # The zarrs pipeline reports I/O errors as RuntimeError("... (os error 28)").
            full = FULL_DISK_ERRNOS
            code = exc.errno if isinstance(exc, OSError) else next(
                (c for c in full if f"(os error {c})" in str(exc)), None)
            if code not in full:
                raise
            path = getattr(self, "path", None) or getattr(getattr(self, "_writer", None), "path", "?")
            what = ("a per-file size limit (`ulimit -f`, a quota) was hit writing" if code == errno.EFBIG
                    else "no space left on the device holding")
            raise StoreFullError(
                f"{what} store {path} ({os.strerror(code)}) during {method.__name__}: free disk space or "
                f"raise the limit (or move the store to a larger disk) and rerun the same command; "
                f"utterances committed so far are kept and extraction resumes where it stopped."
            ) from exc

    return wrapper


UnitWriter.add = _no_space_is_clear(UnitWriter.add)  # type: ignore[method-assign]
UnitWriter.add_many = _no_space_is_clear(UnitWriter.add_many)  # type: ignore[method-assign]
UnitWriter.commit = _no_space_is_clear(UnitWriter.commit)  # type: ignore[method-assign]
