"""Work units: whole shards owned by one writer, filled back to back, written once, then committed."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import zarr

from ._errors import StoreError
from ._journal import fsync_path
from ._layout import crc32_rows, open_tensorstore
from ._stats import utterance_statistics

if TYPE_CHECKING:  # pragma: no cover
    from ._writer import StoreWriter

__all__ = ["WorkUnit", "UnitWriter"]


@dataclass(frozen=True)
class WorkUnit:
    """Rows of one unit of extraction work and the store space it owns (made by ``plan_units``).

    Attributes:
        rows: store rows of the unit's utterances.
        regions: per feature, the frame range ``[start, stop)``; ``start`` is a shard boundary
            and no other unit writes inside it.
        slots: per feature, the range of per-utterance statistics slots (whole shards too).
    """

    rows: tuple[int, ...]
    regions: Mapping[str, tuple[int, int]]
    slots: Mapping[str, tuple[int, int]]


class _Filler:
    """Packs rows of one array into whole shards and writes each shard once, when it is full."""

    def __init__(self, array: zarr.Array, folder: Path | None, start: int, stop: int) -> None:
        self.array, self.folder = array, folder
        self.start, self.stop, self.cursor = start, stop, start
        self.shard = int(array.shards[0]) if array.shards is not None else int(array.chunks[0])
        self.buffer: np.ndarray | None = None  # the shard being filled (reused: allocating and
        self.spare: np.ndarray | None = None   # page-faulting 100+ MB per shard costs more than copying)
        self.buffer_start = start
        self.written: list[Path] = []

    def put(self, rows: np.ndarray) -> int:
        """Append rows; returns the offset of the first one."""
        first = self.cursor
        if first + len(rows) > self.stop:
            raise StoreError(f"work unit overflows its region [{self.start}, {self.stop}) "
                             f"in {self.folder or self.array.path}")
        done = 0
        while done < len(rows):
            if self.buffer is None:
                if self.spare is None:
                    self.spare = np.empty((self.shard, *self.array.shape[1:]), dtype=self.array.dtype)
                self.buffer, self.spare = self.spare, None
                self.buffer_start = self.cursor - (self.cursor - self.start) % self.shard
                self.buffer[: self.cursor - self.buffer_start] = 0
            at = self.cursor - self.buffer_start
            n = min(len(rows) - done, self.shard - at)
            self.buffer[at:at + n] = rows[done:done + n]
            self.cursor += n
            done += n
            if self.cursor - self.buffer_start == self.shard:
                self.flush()
        return first

    def flush(self) -> None:
        """Write the current shard (zero-filled after the last row) through tensorstore, or zarr."""
        if self.buffer is None:
            return
        lo = self.buffer_start
        self.buffer[self.cursor - lo:] = 0  # zero after the last row: those inner chunks are not stored
        hi = min(lo + self.shard, self.array.shape[0])
        target = open_tensorstore(self.array, write=True)
        if target is None:
            self.array[lo:hi] = self.buffer[: hi - lo]
        else:
            try:
                target[lo:hi].write(self.buffer[: hi - lo]).result()
            except ValueError as exc:  # tensorstore's I/O errors: surface the OS error (disk full...)
                code = re.search(r"os_error_code='(\d+)'", str(exc))
                if code is None:
                    raise
                raise OSError(int(code.group(1)), str(exc)) from exc
        key = self.array.metadata.encode_chunk_key((lo // self.shard,) + (0,) * (self.array.ndim - 1))
        if self.folder is not None:  # None on object storage: a returned PUT is durable, nothing to fsync
            self.written.append(self.folder / key)
        self.buffer, self.spare = None, self.buffer

    def sync(self) -> None:
        """fsync every shard file written and the folders above it, up to the array folder."""
        folders: set[Path] = set()
        for path in self.written:
            if path.exists():
                fsync_path(path)
            parent = path.parent
            while parent != self.folder.parent and parent not in folders:
                folders.add(parent)
                parent = parent.parent
        for folder in sorted(folders, key=lambda p: -len(p.parts)):
            fsync_path(folder)


class UnitWriter:
    """Writes the utterances of one :class:`WorkUnit`; :meth:`commit` makes them visible.

    Utterances are packed back to back in the unit's region; each shard is written once when
    it is full, the last one at commit. Commit fsyncs the shard files and their folders, then
    appends the commit records (one per utterance x feature) to the writer's journal. Nothing
    of a unit is visible before its commit: a killed unit is redone by the next run.
    """

    def __init__(self, writer: "StoreWriter", unit: WorkUnit) -> None:
        self._writer, self.unit = writer, unit
        self._rows = set(unit.rows)
        self._data: dict[str, _Filler] = {}
        self._stats: dict[str, _Filler] = {}
        self._records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._closed = False

    def _fillers(self, name: str) -> tuple[_Filler, _Filler]:
        if name not in self._data:
            if name not in self.unit.regions:
                raise StoreError(
                    f"feature {name!r} has no region in this work unit (it has "
                    f"{sorted(self.unit.regions)}); plan the unit with that feature."
                )
            w = self._writer
            folder = w.location.path / "features" / name if w.location.is_local else None
            self._data[name] = _Filler(w._feature(name, "data"), folder and folder / "data",
                                       *self.unit.regions[name])
            self._stats[name] = _Filler(w._feature(name, "stats"), folder and folder / "stats",
                                        *self.unit.slots[name])
        return self._data[name], self._stats[name]

    def add(self, index: int, features: Mapping[str, np.ndarray], *, audio_sha256: str,
            duration: float) -> None:
        """Pack one utterance's frames (all its features) into the unit.

        Raises:
            StoreError: wrong shape, more frames than planned, non-finite values, or a row
                outside the unit; nothing of the utterance is written then.
        """
        if self._closed:
            raise StoreError("this work unit is already committed; open a new one with StoreWriter.open_unit.")
        if index not in self._rows:
            raise StoreError(f"row {index} is not in this work unit (rows {list(self.unit.rows)[:10]}...).")
        w = self._writer
        uid = w._row_id(index)
        prepared = [(name, w._check_frames(uid, index, name, frames)) for name, frames in features.items()]
        with self._lock:
            for name, stored in prepared:
                data, stats = self._fillers(name)
                count, mean, m2 = utterance_statistics(stored)
                offset = data.put(stored)
                slot = stats.put(np.stack([mean, m2])[None])
                self._records.append({
                    "event": "commit", "index": int(index), "id": uid, "feature": name,
                    "offset": int(offset), "length": int(len(stored)), "slot": int(slot),
                    "crc32": [int(c) for c in crc32_rows(stored, w.row_checksum)],
                    "audio_sha256": str(audio_sha256), "duration": float(duration),
                })

    def commit(self) -> None:
        """Write the unfinished shards, fsync data and folders, then append the commit records."""
        with self._lock:
            if self._closed:
                return
            for filler in (*self._data.values(), *self._stats.values()):
                filler.flush()
                filler.sync()
            # The journal line is the commit point: appended (and fsynced) only after the data.
            self._writer._journal.append(self._records)
            self._closed = True

    def __enter__(self) -> "UnitWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.commit()
