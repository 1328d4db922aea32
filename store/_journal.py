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
import shlex
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from w2v2ser._files import fsync_path

from ._errors import StoreError
from ._location import StoreLocation, remote_errors

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
    """JSON lines of the records, stamped with the time and the writer's pid, each ending in the
    CRC-32 of the line before it (see _checked_line)."""
    t = time.time_ns()
    lines = []
    for rec in records:
        body = json.dumps({**rec, "t": t, "pid": os.getpid()}, sort_keys=True, separators=(",", ":")).encode("utf-8")
        lines.append(body[:-1] + b',"crc":"%08x"}\n' % zlib.crc32(body))
    return b"".join(lines)


# The end of a line written with its CRC: the CRC-32 of the line as it was before the field was added.
_CRC_TAIL = re.compile(rb',"crc":"([0-9a-f]{8})"\}\n$')


def _checked_line(raw: bytes) -> bool:
    """Whether a journal line passes its CRC (lines of older stores have none: they pass). A
    flipped bit that leaves valid JSON (a slot 1 read as 0) would otherwise be taken as truth."""
    tail = _CRC_TAIL.search(raw)
    if tail is None:
        return b'"crc":' not in raw  # a damaged CRC field is damage too
    return zlib.crc32(raw[:tail.start()] + b"}") == int(tail.group(1), 16)


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

    _fd = -1  # until opened: __del__ runs even when __init__ was interrupted (Ctrl-C) before the open

    def __init__(self, store_path: Path, name: str) -> None:
        _check_name(name)
        folder = Path(store_path) / JOURNAL_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}.jsonl"
        existed = self.path.exists()
        # 0o666 less the umask: with umask 002 a group member resumes the store and appends to it.
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
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


def _object_lines(read: Callable[[str], bytes | None], where: Callable[[str], str], keys: list[str], *,
                  whole: bool = True) -> Lines:
    """The lines of one writer's journal objects (``_journal/WRITER/*.jsonl``), in name order.

    ``whole=False``: a local store's appended journal file copied to object storage, where, as
    locally, an unfinished last line is a crash mid-append (ignored by the reader of the events).
    """
    def lines() -> Iterator[tuple[str, int, bytes]]:
        for key in keys:  # one object in memory at a time
            data = read(key) or b""
            if whole and data and not data.endswith(b"\n"):
                # One PUT writes a journal object whole, so a missing final newline is damage
                # (a truncated or edited object), not a crash mid-append as in a local file.
                raise StoreError(
                    f"journal object {where(key)} is damaged: it does not end with a newline "
                    f"(truncated or edited), so its last commit record cannot be trusted. Delete "
                    f"that object (its utterances are then extracted again on the next run) or "
                    f"extract into a new store."
                )
            for line_no, raw in enumerate(data.splitlines(keepends=True)):
                yield where(key), line_no, raw
    return lines


def delete_lines_command(lines: Mapping[str, list[int]]) -> str:
    """The shell command that deletes the given lines (1-based) of local journal files."""
    return " && ".join(f"sed -i '{';'.join(f'{n}d' for n in numbers)}' {shlex.quote(file)}"
                       for file, numbers in lines.items())


def commit_lines(store: StoreLocation, feature: str, rows: Iterable[int]) -> dict[str, list[int]]:
    """The lines (1-based) of a local store's journal files that hold commit records of ``rows``
    of ``feature``, by file; a line that cannot be read as a record is left out."""
    wanted = {int(row) for row in rows}
    found: dict[str, list[int]] = {}
    try:
        for lines in _journal_sources(store):
            for where, line_no, raw in lines():
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue
                if (isinstance(rec, dict) and rec.get("event") == "commit" and rec.get("feature") == feature
                        and rec.get("index") in wanted and os.path.isfile(where)):
                    found.setdefault(where, []).append(line_no + 1)
    except (OSError, StoreError):  # (for a message only: it then gives no command)
        return {}
    return found


def _file_events(lines: Lines, file_no: int) -> Iterator[tuple[int, int, int, dict[str, Any]]]:
    """(t, file, line, event) of one journal, streamed line by line."""
    for seq, (where, line_no, raw) in enumerate(lines()):
        if not raw.endswith(b"\n"):  # a crash mid-append: a local file's partial last line is ignored
            return  # (only a file's last line can lack it: object lines were checked whole above)
        if not raw.strip():
            continue
        try:
            if not _checked_line(raw):
                raise ValueError("it fails its CRC-32")
            rec = json.loads(raw)
            if not isinstance(rec, dict) or "event" not in rec or "index" not in rec:
                raise ValueError("not an event object")
            rec.pop("crc", None)
        except ValueError as exc:
            delete = "Delete that line"
            if os.path.isfile(where):  # a local file: the command that does it
                delete += f", with no extraction running: `{delete_lines_command({where: [line_no + 1]})}`"
            raise StoreError(
                f"journal {where} line {line_no + 1} is malformed ({exc}); the store's commit "
                f"record is damaged. {delete} (the utterance is then extracted again "
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
    """One line source per writer, in both layouts wherever the store lives, so that a store copied
    between a directory and object storage keeps its commits: a local writer's appended
    ``_journal/NAME.jsonl`` file, and an object-storage writer's ``_journal/WRITER/*.jsonl`` objects
    (read in name order). Events are merged by their time stamps, whichever layout holds them."""
    if isinstance(store, StoreLocation) and not store.is_local:
        location = store
        by_writer: dict[str, list[str]] = {}
        copied: list[str] = []
        with remote_errors(location):  # an endpoint that went away: StoreUnreachableError, one line
            keys = location.list(JOURNAL_DIR)
        for key in keys:
            parts = key.split("/")
            if len(parts) == 3 and parts[2].endswith(".jsonl"):
                by_writer.setdefault(parts[1], []).append(key)
            elif len(parts) == 2 and parts[1].endswith(".jsonl"):
                copied.append(key)

        def where(key: str) -> str:
            return f"{location}/{key}"

        def read(key: str) -> bytes | None:
            with remote_errors(location):
                return location.read_bytes(key)

        return ([_object_lines(read, where, [key], whole=False) for key in sorted(copied)]
                + [_object_lines(read, where, sorted(keys)) for _, keys in sorted(by_writer.items())])
    root = store.path if isinstance(store, StoreLocation) else Path(store)
    folder = root / JOURNAL_DIR
    if not folder.is_dir():
        return []

    def read_local(key: str) -> bytes | None:
        try:
            return (root / key).read_bytes()
        except FileNotFoundError:
            return None

    def where_local(key: str) -> str:
        return str(root / key)

    objects = [sorted(f"{JOURNAL_DIR}/{d.name}/{f.name}" for f in d.glob("*.jsonl"))
               for d in sorted(folder.iterdir()) if d.is_dir()]  # copied from object storage
    return ([_file_lines(f) for f in sorted(folder.glob("*.jsonl")) if f.is_file()]
            + [_object_lines(read_local, where_local, keys) for keys in objects if keys])


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


_NONE, COMMIT, FAILURE = 0, 1, 2  # PairRows.kind


class _Grown:
    """Numpy columns indexed by store row, grown by doubling as higher rows appear."""

    def __init__(self, columns: dict[str, tuple[Any, tuple[int, ...], Any]], rows: int) -> None:
        self._spec = columns  # name -> (dtype, trailing shape, fill)
        self.size = 0
        self.cols = {k: np.full((max(rows, 16), *shape), fill, dtype) for k, (dtype, shape, fill) in columns.items()}

    def reserve(self, row: int) -> None:
        if row >= self.size:
            self.size = row + 1
            have = len(next(iter(self.cols.values())))
            if row >= have:
                grow = max(2 * have, row + 1)
                for k, (dtype, shape, fill) in self._spec.items():
                    extra = np.full((grow - have, *shape), fill, dtype)
                    self.cols[k] = np.concatenate([self.cols[k], extra])

    def column(self, name: str, rows: int) -> np.ndarray:
        """The first `rows` rows of a column (rows never named hold the fill value)."""
        self.reserve(rows - 1)
        return self.cols[name][:rows]


class PairRows:
    """The latest event of every row of one feature, as numpy columns indexed by store row.

    Columns (see :meth:`column`): ``seq`` (position of the latest event in the merged journal
    order, -1 when none), ``kind`` (COMMIT, FAILURE, or 0 for none), and, meaningful where
    kind is COMMIT, ``offset``, ``length``, ``slot``, ``stats_crc32`` (-1: none recorded), ``t``, ``duration`` and ``crc32``.
    """

    def __init__(self, rows: int) -> None:
        self._rows = rows
        self.table = _Grown({"seq": (np.int64, (), -1), "kind": (np.int8, (), _NONE),
                             "offset": (np.int64, (), -1), "length": (np.int64, (), -1),
                             "slot": (np.int64, (), -1), "stats_crc32": (np.int64, (), -1), "t": (np.int64, (), 0),
                             "duration": (np.float64, (), np.nan)}, rows)
        self.crc: _Grown | None = None  # made at the first commit, which gives the number of layers
        self.sha = bytearray()  # 32 raw bytes per row: the commit's audio_sha256 when lowercase hex
        self.odd_sha: dict[int, str] = {}  # any other audio_sha256 text, kept as it was
        self.reason: dict[int, str] = {}  # failure reasons of rows whose latest event is a failure
        self.silent: set[int] = set()  # rows whose latest event is a commit of digitally silent audio

    def put(self, seq: int, idx: int, ev: dict[str, Any]) -> None:
        """Fold in one event of this feature (events come in journal order)."""
        kind = ev["event"]
        self.table.reserve(idx)
        c = self.table.cols
        c["seq"][idx] = seq
        self.reason.pop(idx, None)
        self.silent.discard(idx)
        if kind != "commit":
            c["kind"][idx] = FAILURE if kind == "failure" else _NONE
            if kind == "failure":
                self.reason[idx] = str(ev.get("reason", ""))
            return
        crc = ev["crc32"]
        if self.crc is None:
            self.crc = _Grown({"crc32": (np.uint32, (len(crc),), 0)}, self._rows)
        self.crc.reserve(idx)
        if len(crc) != self.crc.cols["crc32"].shape[1]:
            raise StoreError(
                f"journal commit record of utterance {ev.get('id')!r} (row {idx}, feature "
                f"{ev.get('feature')!r}) has {len(crc)} crc32 values; earlier records of that feature "
                f"have {self.crc.cols['crc32'].shape[1]}. The _journal folder is damaged or mixes stores."
            )
        self.crc.cols["crc32"][idx] = crc
        c["kind"][idx] = COMMIT
        c["offset"][idx], c["length"][idx], c["slot"][idx] = ev["offset"], ev["length"], ev["slot"]
        c["stats_crc32"][idx] = ev.get("stats_crc32", -1)  # none in records of earlier w2v2ser versions
        c["t"][idx], c["duration"][idx] = ev.get("t", 0), ev["duration"]
        if ev.get("silent"):
            self.silent.add(idx)
        self._put_sha(idx, ev["audio_sha256"])

    def _put_sha(self, idx: int, sha: Any) -> None:
        if len(self.sha) < 32 * (idx + 1):
            self.sha.extend(bytes(32 * (idx + 1) - len(self.sha)))
        raw = None
        if isinstance(sha, str) and len(sha) == 64 and sha == sha.lower():  # upper case: kept as text
            try:
                raw = bytes.fromhex(sha)
            except ValueError:
                pass
        if raw is None or len(raw) != 32:  # fromhex skips spaces: then the text is kept too
            self.odd_sha[idx] = str(sha)
        else:
            self.sha[32 * idx:32 * idx + 32] = raw
            self.odd_sha.pop(idx, None)

    def column(self, name: str, rows: int) -> np.ndarray:
        """The first `rows` rows of one column (rows without events hold its fill value)."""
        if name == "crc32":
            if self.crc is None:
                return np.zeros((rows, 0), np.uint32)
            return self.crc.column("crc32", rows)
        return self.table.column(name, rows)

    def state(self, index: int) -> tuple[int, int]:
        """(seq, kind) of one row."""
        if index >= self.table.size:
            return -1, _NONE
        return int(self.table.cols["seq"][index]), int(self.table.cols["kind"][index])

    def audio_sha256(self, row: int) -> str:
        """audio_sha256 of the commit recorded for `row` (meaningful where kind is COMMIT)."""
        odd = self.odd_sha.get(row)
        return odd if odd is not None else bytes(self.sha[32 * row:32 * row + 32]).hex()


class PairState:
    """Latest state of every (row, feature) pair, resolved from journal events.

    Events are folded into numpy columns indexed by store row (about 90 bytes per row and
    feature, plus 4 per crc32 layer), never kept as Python objects: finalize of a million
    utterances stays within a few hundred MB. Failure reasons are kept as strings.
    """

    def __init__(self, events: Iterable[dict[str, Any]], *, ids: Any = None, store: Any = None) -> None:
        rows = len(ids) if ids is not None else 0
        self.features: dict[str, PairRows] = {}
        self._row = _Grown({"seq": (np.int64, (), -1)}, rows)  # latest row-wide failure
        self._row_reason: dict[int, str] = {}
        for seq, ev in enumerate(events):  # in time order, so later events win
            idx, feat, kind = int(ev["index"]), ev.get("feature"), ev["event"]
            if idx < 0:
                raise StoreError(
                    f"journal of store {store} names row {idx} for utterance {ev.get('id')!r}; rows are >= 0, "
                    f"so the journal is damaged. Delete that line (the utterance is extracted again)."
                )
            if ids is not None and (idx >= rows or ids[idx] != ev.get("id")):
                # A line naming a row whose id differs: journals of another store were mixed in.
                have = ids[idx] if idx < rows else "no such row"
                raise StoreError(
                    f"journal of store {store} names row {idx} as utterance {ev.get('id')!r}, but that "
                    f"row holds {have!r}: the _journal folder does not belong to this store. Restore "
                    f"the right journals or extract into a new store."
                )
            if feat is None:
                if kind == "failure":
                    self._row.reserve(idx)
                    self._row.cols["seq"][idx] = seq
                    self._row_reason[idx] = str(ev.get("reason", ""))
                elif kind == "reset" and idx in self._row_reason:  # the row was re-probed successfully
                    self._row.cols["seq"][idx] = -1
                    del self._row_reason[idx]
            else:
                if feat not in self.features:
                    self.features[feat] = PairRows(rows)
                self.features[feat].put(seq, idx, ev)

    def row_failure_seq(self, rows: int) -> np.ndarray:
        """Per row, the journal position of its current row-wide failure, -1 when none."""
        return self._row.column("seq", rows)

    def row_failure_reason(self, index: int) -> str | None:
        """Reason of the row-wide failure of `index` if one is current."""
        return self._row_reason.get(index)

    def pair(self, feature: str) -> PairRows:
        """The columns of one feature (empty when no event names it)."""
        return self.features.get(feature) or PairRows(0)

    def committed_rows(self, feature: str, rows: int) -> np.ndarray:
        """Boolean per row: the current state of (row, feature) is a commit."""
        pair = self.pair(feature)
        newer = pair.column("seq", rows) > self.row_failure_seq(rows)
        return newer & (pair.column("kind", rows) == COMMIT)

    def committed(self, index: int, feature: str) -> bool:
        """True when the current state of (index, feature) is a commit."""
        seq, kind = self.pair(feature).state(index)
        row = int(self._row.cols["seq"][index]) if index < self._row.size else -1
        return kind == COMMIT and seq > row


def resolve_events(store_path: Path | StoreLocation, *, ids: Any = None) -> PairState:
    """Read all journals and resolve the current state of each pair.

    With `ids` (the store's id column), every event must name its row's utterance id, else
    StoreError: the journals belong to another store.
    """
    return PairState(iter_journals(store_path), ids=ids, store=store_path)
