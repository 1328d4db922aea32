"""Append-only commit journals: the source of truth for what has been written.

Each writer (the driver, each Dask worker) appends JSON lines to its own file
``_journal/<name>.jsonl`` and fsyncs after every append, so a line exists only
once the data it describes is on disk. A crash mid-append leaves at most a
partial last line, which readers ignore and the next opener truncates.

Stores on object storage cannot append: there each append is one object of its own,
``_journal/<name>/<time>-<pid>-<n>.jsonl``, created with a conditional PUT (never
overwritten); readers list ``_journal/`` and read the objects in name (time) order.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from w2v2ser._common import fsync_path

from ._errors import StoreError
from ._location import StoreLocation

__all__ = ["JOURNAL_DIR", "Journal", "ObjectJournal", "open_journal", "iter_journals", "read_journals",
           "resolve_events", "PairState", "fsync_path"]

JOURNAL_DIR = "_journal"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise StoreError(
            f"journal name {name!r} is not usable as a file name; expected letters, digits, "
            f"'_', '.', '-' (e.g. 'main' or 'worker-3')."
        )


def _encode(records: Iterable[dict[str, Any]]) -> bytes:
    """JSON lines of the records, stamped with the time and the writer's pid."""
    t = time.time_ns()
    return "".join(json.dumps({**rec, "t": t, "pid": os.getpid()}, sort_keys=True, separators=(",", ":")) + "\n"
                   for rec in records).encode("utf-8")


def open_journal(location: StoreLocation, name: str) -> "Journal | ObjectJournal":
    """A writer's journal: an appended file in a local store, one object per append on object storage."""
    return Journal(location.path, name) if location.is_local else ObjectJournal(location, name)


class ObjectJournal:
    """One writer's journal on object storage: every :meth:`append` creates one object."""

    def __init__(self, location: StoreLocation, name: str) -> None:
        _check_name(name)
        self.location, self.name = location, name
        self._count = 0
        self._lock = threading.Lock()

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Write the records as one new object; it exists (whole) once this returns."""
        data = _encode(records)
        if not data:
            return
        with self._lock:
            while True:  # a name is never reused: a conditional PUT refuses an existing object
                self._count += 1
                key = f"{JOURNAL_DIR}/{self.name}/{time.time_ns():020d}-{os.getpid()}-{self._count:06d}.jsonl"
                if self.location.create(key, data):
                    return

    def close(self) -> None:
        """Nothing to close (kept for the same interface as :class:`Journal`)."""


class Journal:
    """One writer's journal file, opened for appending."""

    def __init__(self, store_path: Path, name: str) -> None:
        _check_name(name)
        folder = Path(store_path) / JOURNAL_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}.jsonl"
        existed = self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        # Several writer threads of one process may share a journal; appends (and the
        # rollback of a short write) must not interleave.
        self._lock = threading.Lock()
        if existed:
            self._drop_partial_tail()
        else:
            fsync_path(folder)  # make the new file's directory entry durable too

    def _drop_partial_tail(self) -> None:
        # A crash mid-append leaves bytes after the last newline; appending after them
        # would glue a valid line onto garbage, so cut them off first.
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as f:
            data = f.read()
        keep = data.rfind(b"\n") + 1
        if keep != size:
            os.ftruncate(self._fd, keep)
            os.fsync(self._fd)

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records (one JSON line each) and fsync before returning."""
        data = _encode(records)
        if not data:
            return
        with self._lock:
            start = os.fstat(self._fd).st_size
            try:
                written = os.write(self._fd, data)
                if written != len(data):  # a short write (disk full): never leave half a line behind
                    raise OSError(28, os.strerror(28))
                os.fsync(self._fd)
            except OSError:
                try:
                    os.ftruncate(self._fd, start)
                except OSError:
                    pass
                raise

    def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except OSError:
            pass


Lines = Callable[[], Iterator[tuple[str, int, bytes]]]  # (file or object, line number, raw line)


def _file_lines(file: Path) -> Lines:
    def lines() -> Iterator[tuple[str, int, bytes]]:
        with open(file, "rb") as handle:
            for line_no, raw in enumerate(handle):
                yield str(file), line_no, raw
    return lines


def _object_lines(location: StoreLocation, keys: list[str]) -> Lines:
    def lines() -> Iterator[tuple[str, int, bytes]]:
        for key in keys:  # one object in memory at a time
            for line_no, raw in enumerate((location.read_bytes(key) or b"").splitlines(keepends=True)):
                yield f"{location}/{key}", line_no, raw
    return lines


def _file_events(lines: Lines, file_no: int) -> Iterator[tuple[int, int, int, dict[str, Any]]]:
    """(t, file, line, event) of one journal, streamed line by line."""
    for seq, (where, line_no, raw) in enumerate(lines()):
        if not raw.endswith(b"\n"):  # a crash mid-append: the partial last line is ignored
            return
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict) or "event" not in rec or "index" not in rec:
                raise ValueError("not an event object")
        except ValueError as exc:
            raise StoreError(
                f"journal {where} line {line_no + 1} is malformed ({exc}); the store's commit "
                f"record is damaged. Delete that line (the utterance is then extracted again "
                f"on the next run) or extract into a new store."
            ) from None
        yield int(rec.get("t", 0)), file_no, seq, rec


def _in_order(lines: Lines, file_no: int) -> Iterator[tuple[int, int, int, dict[str, Any]]]:
    """A journal's events sorted by time: streamed when its lines already are (the rule: one
    writer appends in time order), else sorted in memory."""
    last = None
    for event in _file_events(lines, file_no):
        if last is not None and event[0] < last:
            yield from sorted(_file_events(lines, file_no), key=lambda e: e[:3])
            return
        last = event[0]
    yield from _file_events(lines, file_no)


def _journal_sources(store: Path | StoreLocation) -> list[Lines]:
    """One line source per writer: a local ``.jsonl`` file, or a writer's objects in name order."""
    if isinstance(store, StoreLocation) and not store.is_local:
        by_writer: dict[str, list[str]] = {}
        for key in store.list(JOURNAL_DIR):
            parts = key.split("/")
            if len(parts) == 3 and parts[2].endswith(".jsonl"):
                by_writer.setdefault(parts[1], []).append(key)
        return [_object_lines(store, sorted(keys)) for _, keys in sorted(by_writer.items())]
    folder = (store.path if isinstance(store, StoreLocation) else Path(store)) / JOURNAL_DIR
    if not folder.is_dir():
        return []
    return [_file_lines(f) for f in sorted(folder.glob("*.jsonl"))]


def iter_journals(store_path: Path | StoreLocation) -> Iterator[dict[str, Any]]:
    """Every complete journal line of every writer, in (time, file, line) order, streamed.

    A last line without its newline is a crash mid-append and is ignored; a malformed line
    elsewhere means the file was edited or damaged and raises StoreError.
    """
    sources = _journal_sources(store_path)
    for _, _, _, rec in heapq.merge(*(_in_order(f, k) for k, f in enumerate(sources)), key=lambda e: e[:3]):
        yield rec


def read_journals(store_path: Path | StoreLocation) -> list[dict[str, Any]]:
    """Every complete journal line of every writer, in (time, file, line) order."""
    return list(iter_journals(store_path))


class PairState:
    """Latest state of every (row, feature) pair, resolved from journal events."""

    def __init__(self, events: Iterable[dict[str, Any]]) -> None:
        # events are in time order, so later assignments win.
        self.pair: dict[tuple[int, str], tuple[int, dict[str, Any]]] = {}
        self.row_failure: dict[int, tuple[int, dict[str, Any]]] = {}
        for seq, ev in enumerate(events):
            idx, feat, kind = int(ev["index"]), ev.get("feature"), ev["event"]
            if feat is None:
                if kind == "failure":
                    self.row_failure[idx] = (seq, ev)
                elif kind == "reset":  # the row was re-probed successfully
                    self.row_failure.pop(idx, None)
            else:
                self.pair[(idx, feat)] = (seq, ev)

    def latest(self, index: int, feature: str) -> dict[str, Any] | None:
        """The newest event deciding (index, feature): a commit, a failure, or None."""
        pair = self.pair.get((index, feature))
        row = self.row_failure.get(index)
        if pair is None and row is None:
            return None
        if pair is None:
            return row[1]
        if row is None:
            return pair[1]
        return pair[1] if pair[0] > row[0] else row[1]

    def committed(self, index: int, feature: str) -> dict[str, Any] | None:
        """The commit event of (index, feature) if that is its current state."""
        ev = self.latest(index, feature)
        return ev if ev is not None and ev["event"] == "commit" else None


def resolve_events(store_path: Path | StoreLocation) -> PairState:
    """Read all journals and resolve the current state of each pair."""
    return PairState(iter_journals(store_path))
