"""Work units: whole shards owned by one writer, filled back to back, written once, then committed."""

from __future__ import annotations

import functools
import os
import re
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import zarr

from w2v2ser._common import usable_cores

from ._errors import StoreError
from ._journal import fsync_path
from ._layout import crc32_rows, open_tensorstore, statistics_crc
from ._stats import utterance_statistics

if TYPE_CHECKING:  # pragma: no cover
    from ._writer import StoreWriter

__all__ = ["WorkUnit", "UnitWriter"]

# One utterance's frames ready to pack: per feature (name, stored frames, (count, mean, m2), CRCs).
_Prepared = list[tuple[str, np.ndarray, tuple[int, np.ndarray, np.ndarray], np.ndarray]]

_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_POOL.clear)  # a forked child has none of the pool's threads


def prepare_threads() -> int:
    """Threads that prepare frames for :meth:`UnitWriter.add_many` (numpy releases the GIL):
    the cores this process may use, fewer where ``OMP_NUM_THREADS`` gives it a smaller share
    (a cluster worker's), at most 8."""
    cores = usable_cores()
    try:
        cores = min(cores, int(os.environ.get("OMP_NUM_THREADS", cores)))
    except ValueError:  # an unusual value: keep the core count
        pass
    return max(1, min(8, cores))


def thread_pool() -> ThreadPoolExecutor | None:
    """The process's pool of threads that prepare and check frames (:func:`prepare_threads`);
    None with one thread (work inline)."""
    threads = prepare_threads()
    if threads == 1:
        return None
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="w2v2ser-store-prepare"))
        return _POOL[0]


# Shard buffers of committed units, reused by the next unit of the process: a fresh 100+ MB buffer
# is page-faulted in as it fills, which cost more than filling it. At most two per shape and dtype
# (a filler fills one while tensorstore writes the other; a shard is at most SHARD_BYTES), until
# the store is finalized (release_buffers).
_BUFFERS: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}


def _take_buffer(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    with _POOL_LOCK:
        kept = _BUFFERS.get((tuple(shape), np.dtype(dtype).str))
        buffer = kept.pop() if kept else None
    return buffer if buffer is not None else np.empty(shape, dtype=dtype)


def _give_buffer(buffer: np.ndarray) -> None:
    with _POOL_LOCK:
        kept = _BUFFERS.setdefault((buffer.shape, buffer.dtype.str), [])
        if len(kept) < 2:
            kept.append(buffer)


def release_buffers() -> None:
    """Free the shard buffers kept for the next unit (extraction is over)."""
    with _POOL_LOCK:
        _BUFFERS.clear()


def _os_error(exc: ValueError) -> BaseException:
    """tensorstore's I/O errors are ValueErrors: surface the OS error (disk full...) as OSError."""
    code = re.search(r"os_error_code='(\d+)'", str(exc))
    if code is None:
        return exc
    # The file it names ("Error writing local file "..."): the one-line messages need one.
    path = re.search(r'local file "([^"]+)"', str(exc))
    return OSError(int(code.group(1)), os.strerror(int(code.group(1))), path.group(1) if path else None)


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
        self.pending: Any = None  # tensorstore's commit future of the shard written last
        self.inflight: tuple[np.ndarray, weakref.ref] | None = None  # its buffer, and the view tensorstore holds

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
                    self.spare = _take_buffer((self.shard, *self.array.shape[1:]), self.array.dtype)
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
        """Write the current shard (zero-filled after the last row) through tensorstore, or zarr.

        tensorstore encodes and writes the shard from this buffer (no copy) in its own threads
        while the next buffer fills: at most one shard per array is in flight, and a buffer is
        filled again only once tensorstore has let go of it; :meth:`sync` waits for the last."""
        if self.buffer is None:
            return
        lo = self.buffer_start
        self.buffer[self.cursor - lo:] = 0  # zero after the last row: those inner chunks are not stored
        hi = min(lo + self.shard, self.array.shape[0])
        target = open_tensorstore(self.array, write=True)
        if target is None:
            self.array[lo:hi] = self.buffer[: hi - lo]
            self.spare = self.buffer
        else:
            self.wait()
            view = self.buffer[: hi - lo]  # tensorstore holds this view until it has written it
            try:
                futures = target[lo:hi].write(view, can_reference_source_data_indefinitely=True)
            except ValueError as exc:
                raise _os_error(exc) from exc
            self.pending, self.inflight = futures.commit, (self.buffer, weakref.ref(view))
            del view
        key = self.array.metadata.encode_chunk_key((lo // self.shard,) + (0,) * (self.array.ndim - 1))
        if self.folder is not None:  # None on object storage: a returned PUT is durable, nothing to fsync
            self.written.append(self.folder / key)
        self.buffer = None

    def release(self) -> None:
        """Hand a free shard buffer to the next unit (the unit is committed: nothing reads it)."""
        self.wait()
        if self.spare is not None:
            _give_buffer(self.spare)
        self.buffer = self.spare = None

    def wait(self) -> None:
        """Wait until the shard in flight is written; raises its error (OSError for I/O). Its
        buffer becomes the spare once tensorstore holds no reference to it."""
        pending, self.pending = self.pending, None
        if pending is not None:
            try:
                pending.result()
            except ValueError as exc:
                raise _os_error(exc) from exc
        if self.inflight is not None:
            buffer, view = self.inflight
            self.inflight = None
            if view() is None:  # else tensorstore still holds it: a new buffer is made when needed
                if self.spare is None:
                    self.spare = buffer
                else:
                    _give_buffer(buffer)

    def sync(self) -> None:
        """fsync every shard file written and the folders above it, up to the array folder."""
        self.wait()
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

    Args:
        writer: The store's writer (:meth:`StoreWriter.open_unit` passes itself).
        unit: The work unit whose rows this writes.
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

    def _check_open(self, index: int) -> None:
        if self._closed:
            raise StoreError("this work unit is already committed; open a new one with StoreWriter.open_unit.")
        if index not in self._rows:
            raise StoreError(f"row {index} is not in this work unit (rows {list(self.unit.rows)[:10]}...).")

    def _prepare(self, index: int, uid: str, features: Mapping[str, np.ndarray],
                 bad: list[StoreError] | None = None) -> _Prepared:
        """Checks, statistics and CRCs of one utterance (any thread: reads the writer's caches only).

        With ``bad``, the error of a feature whose frames fail the checks is appended to it (its
        ``feature`` attribute names the feature) and that feature is left out; without, it is raised.
        """
        w = self._writer
        prepared: _Prepared = []
        for name, frames in features.items():
            try:
                stored = w._check_frames(uid, index, name, frames)
            except StoreError as error:
                if bad is None:
                    raise
                error.feature = name  # type: ignore[attr-defined]
                bad.append(error)
                continue
            prepared.append((name, stored, utterance_statistics(stored), crc32_rows(stored, w.row_checksum)))
        return prepared

    def _pack(self, index: int, uid: str, prepared: _Prepared, audio_sha256: str, duration: float,
              silent: bool = False) -> None:
        """Append a prepared utterance to the unit's shards (under the lock, in order)."""
        for name, stored, (_, mean, m2), crc in prepared:
            data, stats = self._fillers(name)
            offset = data.put(stored)
            moments = np.stack([mean, m2])[None]
            slot = stats.put(moments)
            record = {
                "event": "commit", "index": int(index), "id": uid, "feature": name,
                "offset": int(offset), "length": int(len(stored)), "slot": int(slot),
                "crc32": [int(c) for c in crc], "audio_sha256": str(audio_sha256), "duration": float(duration),
                # Readers compare it with the slot they read: a shard replaced by another is not taken as this one.
                "stats_crc32": int(statistics_crc(moments, self._writer.row_checksum)[0]),
            }
            if silent:  # in the commit record, so a kill after the commit cannot lose it (finalize reads it)
                record["silent"] = True
            self._records.append(record)

    def add(self, index: int, features: Mapping[str, np.ndarray], *, audio_sha256: str,
            duration: float, silent: bool = False) -> None:
        """Pack one utterance's frames (all its features) into the unit.

        Args:
            index: The utterance's row (one of the unit's rows).
            features: Feature name -> its frames (``[frames, *frame_shape]``).
            audio_sha256: SHA-256 of the audio file the frames were computed from.
            duration: Audio duration in seconds.
            silent: Whether the audio is digital silence after mixing to mono.

        Raises:
            StoreError: wrong shape, more frames than planned, non-finite values, or a row
                outside the unit; nothing of the utterance is written then.
        """
        self.add_many([index], [features], audio_sha256=[audio_sha256], durations=[duration], silent=[silent])

    def add_many(self, indices: Sequence[int], features: Sequence[Mapping[str, np.ndarray]], *,
                 audio_sha256: Sequence[str], durations: Sequence[float],
                 on_bad_frames: Callable[[int, StoreError], None] | None = None,
                 silent: Sequence[bool] | None = None) -> list[int]:
        """Pack several utterances, in order, as a loop of :meth:`add` would, with their checks,
        statistics and checksums computed in parallel threads (:func:`prepare_threads`).

        Args:
            indices: The utterances' rows (rows of the unit).
            features: Per utterance, feature name -> its frames.
            audio_sha256: Per utterance, SHA-256 of its audio file.
            durations: Per utterance, audio duration in seconds.
            silent: Per utterance, whether its audio is digital silence after mixing to mono; kept in
                its commit records, from which finalize lists such utterances (``silent_audio``).
            on_bad_frames: Called with the row and the error of each feature of an utterance whose
                frames fail :meth:`add`'s checks (shape, planned size, non-finite; the error's
                ``feature`` attribute names the feature); that feature is then left out, and the
                utterance's other features and the other utterances are packed. Without it, the first
                such error is raised and nothing of that utterance is packed.

        Returns:
            The rows packed.

        Raises:
            StoreError: as :meth:`add`, for the first bad utterance; those before it are packed.
        """
        if silent is None:
            silent = [False] * len(indices)
        lengths = {len(indices), len(features), len(audio_sha256), len(durations), len(silent)}
        if len(lengths) != 1:
            raise StoreError(
                f"add_many got {len(indices)} indices, {len(features)} feature sets, {len(audio_sha256)} "
                f"audio hashes, {len(durations)} durations and {len(silent)} silence flags; give one of each "
                f"per utterance."
            )
        w = self._writer
        for index in indices:
            self._check_open(index)
        uids = [w._row_id(index) for index in indices]
        for name in {name for frames in features for name in frames}:
            w._spec(name), w._planned(name)  # fill the writer's caches here, not in the threads
        pool = thread_pool() if len(indices) > 1 else None
        bad: list[list[StoreError]] = [[] for _ in indices]
        jobs = [(index, uid, frames, errors if on_bad_frames is not None else None)
                for index, uid, frames, errors in zip(indices, uids, features, bad)]
        futures = [pool.submit(self._prepare, *job) for job in jobs] if pool is not None else []
        getters = [f.result for f in futures] if futures else [functools.partial(self._prepare, *job) for job in jobs]
        packed: list[int] = []
        try:
            with self._lock:
                for job, get, digest, duration, quiet in zip(jobs, getters, audio_sha256, durations, silent):
                    prepared = get()
                    for error in job[3] or ():
                        on_bad_frames(job[0], error)  # type: ignore[misc]
                    if job[3] and not prepared:  # every feature of it was bad: not packed
                        continue
                    self._pack(job[0], job[1], prepared, digest, duration, bool(quiet))
                    packed.append(job[0])
        finally:
            for future in futures:
                future.cancel()  # after an error: the rest is not packed, do not compute it
        return packed

    def commit(self) -> None:
        """Write the unfinished shards, fsync data and folders, then append the commit records."""
        with self._lock:
            if self._closed:
                return
            fillers = (*self._data.values(), *self._stats.values())
            for filler in fillers:
                filler.flush()
            for filler in fillers:  # the shards were written side by side; wait, then fsync
                filler.sync()
                filler.release()
            # The journal line is the commit point: appended (and fsynced) only after the data.
            self._writer._journal.append(self._records)
            self._closed = True

    def __enter__(self) -> "UnitWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.commit()
