"""Append-only commit journals: the source of truth for what has been written.

Each writer (the driver, each Dask worker) appends JSON lines to its own file
``_journal/<name>.jsonl`` and fsyncs after every append, so a line exists only
once the data it describes is on disk. A crash mid-append leaves at most a
partial last line, which readers ignore and the next opener truncates.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from w2v2ser._common import fsync_path

from ._errors import StoreError

__all__ = ["JOURNAL_DIR", "Journal", "iter_journals", "read_journals", "resolve_events", "PairState", "fsync_path"]

JOURNAL_DIR = "_journal"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class Journal:
    """One writer's journal file, opened for appending."""

    def __init__(self, store_path: Path, name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise StoreError(
                f"journal name {name!r} is not usable as a file name; expected letters, digits, "
                f"'_', '.', '-' (e.g. 'main' or 'worker-3')."
            )
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
        t = time.time_ns()
        lines = []
        for rec in records:
            rec = {**rec, "t": t, "pid": os.getpid()}
            lines.append(json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n")
        if not lines:
            return
        data = "".join(lines).encode("utf-8")
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


def _file_events(file: Path, file_no: int) -> Iterator[tuple[int, int, int, dict[str, Any]]]:
    """(t, file, line, event) of one journal, streamed line by line."""
    with open(file, "rb") as handle:
        line_no = -1
        for raw in handle:
            line_no += 1
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
                    f"journal {file} line {line_no + 1} is malformed ({exc}); the store's commit "
                    f"record is damaged. Delete that line (the utterance is then extracted again "
                    f"on the next run) or extract into a new store."
                ) from None
            yield int(rec.get("t", 0)), file_no, line_no, rec


def _in_order(file: Path, file_no: int) -> Iterator[tuple[int, int, int, dict[str, Any]]]:
    """A journal's events sorted by time: streamed when its lines already are (the rule: one
    writer appends in time order), else sorted in memory."""
    last = None
    for event in _file_events(file, file_no):
        if last is not None and event[0] < last:
            yield from sorted(_file_events(file, file_no), key=lambda e: e[:3])
            return
        last = event[0]
    yield from _file_events(file, file_no)


def iter_journals(store_path: Path) -> Iterator[dict[str, Any]]:
    """Every complete journal line of every writer, in (time, file, line) order, streamed.

    A last line without its newline is a crash mid-append and is ignored; a malformed line
    elsewhere means the file was edited or damaged and raises StoreError.
    """
    folder = Path(store_path) / JOURNAL_DIR
    if not folder.is_dir():
        return
    files = sorted(folder.glob("*.jsonl"))
    for _, _, _, rec in heapq.merge(*(_in_order(f, k) for k, f in enumerate(files)), key=lambda e: e[:3]):
        yield rec


def read_journals(store_path: Path) -> list[dict[str, Any]]:
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


def resolve_events(store_path: Path) -> PairState:
    """Read all journals and resolve the current state of each pair."""
    return PairState(iter_journals(store_path))
