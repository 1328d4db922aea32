"""Reading a finished store: :func:`open_store` and :class:`FeatureStore` (utterance table, frames,
statistics, description); frame spans are read by :mod:`._spans`."""

from __future__ import annotations

import collections
import dataclasses
import json
import numbers
import os
import shlex
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import zarr

from w2v2ser._common import did_you_mean

from ._errors import StoreChangedError, StoreDamagedError, StoreError, StoreGoneError, StoreIncompleteError
from ._fields import _field_values
from ._layout import (
    FAILURE_COLUMNS,
    STATUSES,
    UTTERANCE_COLUMNS,
    all_chunks_stored,
    check_complete,
    check_version,
    crc32_rows,
    fork_count,
    missing_chunk_keys,
    missing_statistics_shards,
    open_array,
    open_root,
    read_meta,
    row_checksum,
    specs_from_meta,
    to_str_list,
)
from ._location import StoreLocation, as_unreachable, locate_store
from ._lock import extraction_holder, extraction_running
from ._readcache import ReadCacheStore
from ._spans import _read_span, _selection
from ._stats import combine_statistics
from ._types import Failure, FeatureSpec, FeatureStatistics, UtteranceRecord, VerifyReport

__all__ = ["FeatureStore", "open_store"]


def open_store(path: str | os.PathLike[str] | StoreLocation, *, allow_incomplete: bool = False,
               storage_options: Mapping[str, Any] | None = None) -> "FeatureStore":
    """Open a store for reading.

    Args:
        path: store directory, or an object-store URL such as ``s3://bucket/prefix``.
        allow_incomplete: open even if the extraction has not finished (to inspect it);
            only finalized utterances are visible.
        storage_options: fsspec options of a URL (endpoint, credentials), over those of the
            environment (see :func:`locate_store`).

    Raises:
        StoreError: `path` is not a w2v2ser store.
        StoreVersionError: the store was written in a newer format.
        StoreIncompleteError: the store is incomplete and `allow_incomplete` is False.
    """
    location = locate_store(path, storage_options=storage_options)
    _, meta = read_meta(location)
    check_version(location.display, meta)
    if not allow_incomplete:
        try:
            check_complete(location.display, meta)
        except StoreIncompleteError as error:
            running = extraction_running(location)
            if running is not None:  # not interrupted: rerunning the extraction would only meet the lock
                raise StoreIncompleteError(
                    f"{running}, so it is incomplete until that extraction finishes; rerun this command "
                    f"then.") from None
            raise error from None
    return FeatureStore(location, meta)


class FeatureStore:
    """Read access to a store; create with :func:`open_store`."""

    def __init__(self, path: Path | StoreLocation, meta: dict[str, Any]) -> None:
        self.location = locate_store(path)
        # Absolute at open: a later chdir (a script, a notebook) must not make the store look gone.
        self._root = self.location.path.absolute() if self.location.is_local else None
        self.path: Path | str = self.location.display  # a Path, or the URL of a store on object storage
        self.attrs: dict[str, Any] = meta
        self.format_version: int = int(meta["format_version"])
        self.complete: bool = bool(meta.get("complete", False))
        # An extraction that starts to change a finished store counts it up (StoreWriter._set_meta).
        self._revision = meta.get("revision", 0)
        self.row_checksum: str = row_checksum(self.location.display, meta)
        self.features: dict[str, FeatureSpec] = specs_from_meta(meta)
        # On object storage: shard indexes cached, and each read's chunks fetched ahead in few requests.
        self._group: zarr.Group = open_root(self.location, mode="r", read_cache=True)
        # Keys whose chunk files are known to be there (see _require_chunks); check_chunks: False for
        # an extraction, which rewrites the tables.
        self._chunks_checked: set[str] = set()
        self.check_chunks = True
        ids = to_str_list(self._read("utterances/id"))
        if "" in ids:
            if self.complete:
                raise self._damaged("utterances/id", f"{ids.count('')} empty utterance ids")
            # An interrupted plan leaves empty ids from the first unwritten row on: not planned yet.
            ids = ids[: ids.index("")]
        if len(set(ids)) != len(ids):
            raise self._damaged("utterances/id", "duplicate utterance ids")
        self._ids = ids
        self._index = {uid: i for i, uid in enumerate(self._ids)}
        self._rows: dict[str, dict[str, np.ndarray]] = {}
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
        self._forks = fork_count()

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, utterances={len(self._ids)}, features={sorted(self.features)})"

    # ------------------------------------------------------------------ helpers
    def _damaged(self, key: str, what: str, exc: BaseException | None = None) -> StoreError:
        """The error for damaged data; when ``exc`` is an object store's client failing to reach it
        or being refused (connection, credentials, 403), that is what is said instead: the store
        may be intact, and `verify --repair` would be wrong advice. So is a store that an extraction
        changed since this reader opened it: what looks damaged is then the reader's old index."""
        self._forget_read_cache()
        lost = as_unreachable(self.location, exc) if exc is not None else None
        if lost is not None:
            return lost
        gone = self._gone()
        if gone is not None:
            return gone
        if getattr(self, "_revision", None) is not None and self.changed_since_open():
            return self._changed()
        damaged = StoreDamagedError(
            f"store {self.path} is damaged: array {key} {what}. Run `w2v2ser store verify "
            f"{shlex.quote(str(self.path))} --repair` to list the affected utterances and queue them for "
            f"re-extraction, "
            f"then rerun the same extraction on this store: it re-extracts only those and rebuilds "
            f"length/crc32/status/statistics from its journals."
        )
        damaged.damage = (self.path, key, what)  # `store verify` gives other advice when it stops here itself
        return damaged

    def _forget_read_cache(self) -> bool:
        """Drop the shard indexes a reader on object storage keeps: after a failed read, one of them
        may be what no longer fits the store (the next read fetches them again). False: none kept."""
        cache = getattr(getattr(self, "_group", None), "store", None)
        if isinstance(cache, ReadCacheStore):
            cache.forget()
            return True
        return False

    def _gone(self) -> StoreGoneError | None:
        """The error for a store moved or deleted under this reader, None while it is there.

        Its files (objects) then read as fill values or missing arrays: not damage, and `verify
        --repair` or "copy zarr.json back" of a path that holds nothing would be wrong advice."""
        try:
            root = getattr(self, "_root", None)
            location = getattr(self, "location", None)
            if root is not None:
                there = (root / "zarr.json").exists()
            else:  # on object storage: the root object (a HEAD request), gone with a moved prefix
                there = location is None or location.is_local or location.exists("zarr.json")
        except Exception:  # noqa: BLE001 -- cannot tell (permission, endpoint): the caller's own error stands
            there = True
        if there:
            return None
        return StoreGoneError(
            f"store {self.path} is no longer there: it was moved, renamed or deleted while this command read "
            f"it, so nothing in it is known to be damaged. Point the command (or pipeline.yaml) at the store's "
            f"new path and rerun.")

    @property
    def revision(self) -> int:
        """The store's revision when this reader opened it: an extraction that changes a finished
        store counts it up, so two readers with the same revision see the same utterances."""
        return self._revision

    def changed_since_open(self) -> bool:
        """Whether an extraction has changed the store since this reader opened it complete (it is
        incomplete now, or was changed and finalized again). A reader keeps the utterance list and
        index it read at open, so after such a change it raises :class:`StoreChangedError`.
        A reader opened with ``allow_incomplete`` on an unfinished store follows it instead: False."""
        if not self.complete:
            return False
        try:
            _, meta = read_meta(self.location)
        except Exception:  # noqa: BLE001 -- cannot tell: the caller's own error stands
            return False
        return not meta.get("complete", False) or meta.get("revision", 0) != self._revision

    def require_revision(self, revision: int) -> None:
        """Raise :class:`StoreChangedError` unless this reader opened the store at ``revision``.

        A process that must read what another reader of the store read (a task repeating a planned
        view, passed that reader's :attr:`revision`) calls this right after opening.
        """
        if self._revision != revision:
            raise self._changed()

    def _changed(self) -> StoreChangedError:
        holder = extraction_holder(self.location)
        now = f"; an extraction ({holder}) is running on it now" if holder is not None else ""
        return StoreChangedError(
            f"store {self.path} was changed by an extraction since it was opened{now}. This reader "
            f"keeps the utterance list and index of the store as it was, so it stops here rather than "
            f"mix old and new data; the store itself is intact. Open it again"
            f"{' once that extraction has finished' if now else ''} (open_store, or rerun the command).")

    def _check_unchanged(self) -> None:
        """Raise StoreChangedError if an extraction changed the store since open (see changed_since_open)."""
        if self.changed_since_open():
            raise self._changed()

    def _read(self, key: str, selection: Any = slice(None)) -> np.ndarray:
        """Read an array, turning codec/IO errors of damaged chunk files into StoreError."""
        if not self.complete and key.split("/")[0] in ("utterances", "failures") and key not in self._group:
            # Creation was interrupted before this table column existed: it has no rows yet.
            return np.asarray([], dtype=str)
        try:
            array = open_array(self._group, key, where=self.location.display)
            self._require_chunks(key, array)
            return array[selection]
        except StoreError:
            gone = self._gone()
            if gone is not None:
                raise gone from None
            raise
        except Exception as exc:  # zarr/numcodecs raise many types for corrupt or truncated chunks
            raise self._damaged(key, f"cannot be read ({type(exc).__name__}: {exc})", exc) from None

    def _require_chunks(self, key: str, array: zarr.Array,
                        missing: Callable[[], Sequence[str]] | None = None) -> None:
        """Raise if a chunk file of `array` is missing (``missing``: lists the missing keys instead).

        zarr reads a missing chunk as the fill value: a deleted table or statistics chunk would
        come back as empty strings or zeros. Stores written with ALL_CHUNKS_STORED store every
        such chunk, so one missing is damage; older stores are checked by ``store verify``.
        """
        if key in self._chunks_checked or not (self.check_chunks and self.complete and all_chunks_stored(self.attrs)):
            return
        missing = list(missing() if missing is not None else missing_chunk_keys(array))
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise self._damaged(key, f"lacks chunk files that the store wrote ({shown}); zarr would read "
                                f"them as {array.fill_value!r}")
        self._chunks_checked.add(key)

    def _spec(self, feature: str) -> FeatureSpec:
        if feature not in self.features:
            raise StoreError(
                f"feature {feature!r} is not in store {self.path}; it has "
                f"{sorted(self.features)}.{did_you_mean(feature, list(self.features))}"
            )
        return self.features[feature]

    def _row(self, utterance_id: str) -> int:
        if not isinstance(utterance_id, str):  # e.g. a record from list_utterances, or a dict
            shown = type(utterance_id).__name__
            hint = " (pass its .id)" if hasattr(utterance_id, "id") else ""
            raise StoreError(f"utterance ids are strings; got a {shown}{hint}, in store {self.path}.")
        row = self._index.get(utterance_id)
        if row is None and self.changed_since_open() and self._holds_now(utterance_id):
            raise self._changed()  # added since open: not "not in store"
        if row is None:
            raise StoreError(
                f"utterance {utterance_id!r} is not in store {self.path} ({len(self._ids)} "
                f"utterances).{did_you_mean(str(utterance_id), self._ids)}"
            )
        return row

    def _holds_now(self, utterance_id: str) -> bool:
        """Whether the store as it is now (not as opened) lists the id; True when that cannot be read."""
        try:
            ids = open_array(open_root(self.location, mode="r"), "utterances/id", where=self.location.display)[:]
        except Exception:  # noqa: BLE001 -- cannot tell: say that the store changed
            return True
        return utterance_id in to_str_list(ids)

    def _per_row(self, feature: str) -> dict[str, np.ndarray]:
        """A feature's frame index (offset, capacity, length, slot, crc32 per row), read at its first use.

        Read lazily (open stays cheap), it may be newer than the utterance list read at open: an
        extraction that changed the store since raises StoreChangedError rather than mix the two.
        Checked after the read, so a change that lands during it is caught too.
        """
        if feature not in self._rows:
            g = f"features/{feature}"
            rows = {k: self._read(f"{g}/{k}") for k in ("offset", "capacity", "length", "slot", "crc32")}
            self._check_unchanged()
            self._rows[feature] = rows
        return self._rows[feature]

    def _array(self, feature: str, name: str, *, check: bool = True) -> zarr.Array:
        """A feature's array (cached: opening reads its metadata, and a reader's store is complete);
        ``check``: raise StoreError if a chunk file it relies on is missing (see _require_chunks)."""
        key = (feature, name)
        if self._forks != fork_count():  # a forked child: the cached arrays may use zarrs (see _layout)
            self._arrays.clear()
            self._forks = fork_count()
        if key not in self._arrays:
            try:  # a missing or unparseable zarr.json is open_array's StoreError
                array = open_array(self._group, f"features/{feature}/{name}", where=self.location.display)
            except StoreError:
                gone = self._gone()
                if gone is not None:
                    raise gone from None
                raise
            except Exception as exc:  # noqa: BLE001 -- an I/O error opening it (unreachable: said as such)
                raise self._damaged(f"features/{feature}/{name}", f"cannot be opened ({type(exc).__name__}: "
                                    f"{exc})", exc) from None
            self._arrays[key] = array
        array, path = self._arrays[key], f"features/{feature}/{name}"
        if check and name != "data" and path not in self._chunks_checked:  # frames: every read checks CRCs
            if name == "stats":  # the shards of the slots in use (a killed unit's slots stay unwritten)
                rows, spec = self._per_row(feature), self.features[feature]
                self._require_chunks(path, array, lambda: list(missing_statistics_shards(
                    array, length=rows["length"], slot=rows["slot"], crc32=rows["crc32"],
                    frame_shape=spec.frame_shape, dtype=spec.dtype, checksum=self.row_checksum)))
            else:
                self._require_chunks(path, array)
        return array

    def _values(self, feature: str, name: str, selection: Any = slice(None)) -> np.ndarray:
        """``selection`` of a feature's small array (statistics, speaker table), damage as StoreError."""
        array = self._array(feature, name)
        try:
            return np.asarray(array[selection])
        except Exception as exc:  # zarr's pipeline checks each chunk's crc32c on these arrays
            raise self._damaged(f"features/{feature}/{name}", f"cannot be read ({type(exc).__name__}: "
                                f"{exc})", exc) from None

    def _layers(self, spec: FeatureSpec, layers: Sequence[int] | None) -> list[int] | None:
        if layers is None:
            return None
        if spec.layers is None:
            raise StoreError(
                f"feature {spec.name!r} has 2-D frames [frames, {spec.dim}] without layers; "
                f"got layers={list(layers)!r}. Pass layers=None."
            )
        if isinstance(layers, slice):  # layers=slice(0, 3) reads layers 0, 1, 2, as numpy would
            layers = range(*layers.indices(spec.layers))
        try:
            if isinstance(layers, (str, bytes, numbers.Number)):
                raise TypeError
            given = list(layers)
        except TypeError:
            raise StoreError(f"feature {spec.name!r}: layers={layers!r}; expected a list of layer indices, "
                             f"e.g. layers=[{spec.layers - 1}], or None for all {spec.layers}.") from None
        # Only integers: int(1.5) or int("3") would read a layer the caller did not name.
        bad = [x for x in given if not isinstance(x, numbers.Integral) or isinstance(x, bool)
               or not 0 <= x < spec.layers]
        if bad or not given:
            raise StoreError(
                f"feature {spec.name!r}: layers {given!r} are invalid; expected a non-empty "
                f"list of integer indices in 0..{spec.layers - 1}."
            )
        return [int(x) for x in given]

    # ------------------------------------------------------------------ table
    def list_utterances(self, *, status: str | None = "done", feature: str | None = None) -> list[UtteranceRecord]:
        """Utterances in row order, filtered by status ("done", "failed", "pending" or None for all).

        ``feature``: keep only utterances that hold frames of it. A store can hold an utterance
        without some feature: one added later by an extraction of other features.
        """
        if status is not None and status not in STATUSES:
            raise StoreError(f"list_utterances: status={status!r}; expected one of {STATUSES} or None.")
        held = None if feature is None else self._holds(feature)
        cols = {c: self._read(f"utterances/{c}") for c in UTTERANCE_COLUMNS}
        strs = {c: to_str_list(v) for c, v in cols.items() if c not in ("duration", "num_samples")}
        out = []
        for i in range(len(self._ids)):
            if status is not None and strs["status"][i] != status or held is not None and not held[i]:
                continue
            out.append(UtteranceRecord(
                id=strs["id"][i], path=strs["path"][i], speaker=strs["speaker"][i],
                label=strs["label"][i], session=strs["session"][i], split=strs["split"][i],
                gender=strs["gender"][i], corpus=strs["corpus"][i],
                extra=json.loads(strs["extra"][i] or "{}"),
                duration=float(cols["duration"][i]), num_samples=int(cols["num_samples"][i]),
                audio_sha256=strs["audio_sha256"][i], status=strs["status"][i], index=i,
            ))
        return out

    def holds_any(self, feature: str) -> bool:
        """Whether some done utterance holds frames of ``feature``: ``list_utterances(feature=...)``
        is non-empty, answered from two columns without building every record (each ``run`` asks)."""
        held = self._holds(feature)
        if not held.any():
            return False
        status = to_str_list(self._read("utterances/status"))[: len(self._ids)]
        return any(s == "done" for s, h in zip(status, held) if h)

    def sample_rates(self, feature: str, *, ids: set[str] | None = None) -> collections.Counter[int | None]:
        """Own sample rate (Hz) of the audio files behind a feature -> number of done utterances.

        ``ids``: count only these utterances. None stands for utterances of a store that predates
        the record (``UtteranceRecord.sample_rate``).
        """
        return collections.Counter(r.sample_rate for r in self.list_utterances(feature=feature)
                                   if ids is None or r.id in ids)

    def speakers(self) -> list[str]:
        """Sorted speakers that have at least one done utterance."""
        status = to_str_list(self._read("utterances/status"))
        spk = to_str_list(self._read("utterances/speaker"))
        n = len(self._ids)  # columns can be longer after an interrupted plan
        return sorted({s for s, st in zip(spk[:n], status[:n]) if st == "done"})

    def list_failures(self) -> list[Failure]:
        """Failed (utterance, feature) pairs; ``feature`` None means the whole utterance."""
        cols = {c: to_str_list(self._read(f"failures/{c}")) for c in FAILURE_COLUMNS}
        if len({len(v) for v in cols.values()}) > 1:  # finalize writes them together: a damaged shape
            raise self._damaged("failures", f"has columns of different lengths "
                                f"({', '.join(f'{c}: {len(v)}' for c, v in cols.items())})")
        return [
            Failure(id=cols["id"][i], path=cols["path"][i], feature=cols["feature"][i] or None,
                    reason=cols["reason"][i])
            for i in range(len(cols["id"]))
        ]

    # ------------------------------------------------------------------ frames
    def num_frames(self, utterance_id: str, feature: str) -> int:
        """Number of stored frames of one utterance for `feature`."""
        self._spec(feature)
        row = self._row(utterance_id)
        length = int(self._per_row(feature)["length"][row])
        if length < 0:
            raise self._not_written(utterance_id, feature)
        return length

    def frame_checksums(self, feature: str, ids: Sequence[str]) -> np.ndarray:
        """The per-layer checksums (``row_checksum``) recorded when each utterance's frames of
        ``feature`` were committed, [len(ids), layers] uint32 in the order of ``ids``: a cheap
        identity of the frames (no frame is read), e.g. to tell a re-extracted store from a copy."""
        self._spec(feature)
        crc = self._per_row(feature)["crc32"]
        return np.asarray(crc[[self._row(i) for i in ids]], np.uint32).reshape(len(ids), -1)

    def _holds(self, feature: str) -> np.ndarray:
        """Per row: whether the utterance has frames of ``feature`` (committed, possibly 0 frames)."""
        self._spec(feature)
        return self._per_row(feature)["length"][: len(self._ids)] >= 0

    def _not_written(self, utterance_id: str, feature: str) -> StoreError:
        row = self._row(utterance_id)
        status = to_str_list(self._read("utterances/status", slice(row, row + 1)))[0]
        if status == "done" and int(self._per_row(feature)["capacity"][row]) < 0:
            # Planned without this feature: an extraction of other features added the utterance.
            return StoreError(
                f"utterance {utterance_id!r} has no frames of feature {feature!r} in store {self.path}: an "
                f"extraction of other features added it. Extract {feature} for it (`w2v2ser extract ... "
                f"--store {shlex.quote(str(self.path))} --features {feature}` on the same corpus), or read only "
                f"list_utterances(feature={feature!r}).")
        if status == "done":  # finalize records a length for every feature planned for a done utterance
            return self._damaged(f"features/{feature}/length", f"records no frames for utterance "
                                 f"{utterance_id!r}, whose status is 'done'")
        return StoreError(
            f"utterance {utterance_id!r} has no frames for feature {feature!r} in store "
            f"{self.path} (status {status!r}). Read only utterances from "
            f"list_utterances(status='done'), or rerun the extraction to finish the store."
        )

    def _region(self, utterance_id: str, feature: str) -> tuple[int, int, int]:
        """(row, offset, length) of an utterance's frames, checked against the data's extent."""
        row = self._row(utterance_id)
        rows = self._per_row(feature)
        length, off = int(rows["length"][row]), int(rows["offset"][row])
        if length < 0:
            raise self._not_written(utterance_id, feature)
        data = self._array(feature, "data")
        if off < 0 or off + length > data.shape[0]:
            raise self._damaged(f"features/{feature}/offset", f"gives utterance {utterance_id!r} the "
                                f"frames [{off}, {off + length}) outside the data")
        return row, off, length

    def _fetch(self, feature: str, start: int, stop: int, sel: list[int] | None, who: str, *,
               retry: bool = True) -> np.ndarray:
        """Frames [start, stop) of ``sel``; ``retry``: on object storage, a failed read is tried once
        more with fresh shard indexes (see :meth:`_checked`)."""
        data = self._array(feature, "data")
        try:
            if not isinstance(data.store, ReadCacheStore):
                return np.asarray(data.get_orthogonal_selection(_selection(start, stop, sel)))
            from zarr.core.sync import sync

            return sync(_read_span(data.async_array, start, stop, sel, None))
        except Exception as exc:  # corrupt or truncated shards raise codec/IO-specific errors
            if retry and as_unreachable(self.location, exc) is None and self._forget_read_cache():
                return self._fetch(feature, start, stop, sel, who, retry=False)
            raise self._damaged(f"features/{feature}/data", f"cannot be read for {who} "
                                f"({type(exc).__name__}: {exc})", exc) from None

    def _stored_frames(self, feature: str) -> int:
        """Frames `feature` holds over all utterances (a length of -1 marks one without it)."""
        length = self._per_row(feature)["length"]
        return int(length[length > 0].sum(dtype=np.int64))

    def _fetch_many(self, feature: str, spans: list[tuple[int, int]], sel: list[int] | None,
                    first_ids: list[list[str]], into: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """The frames of each span; read into the arrays of ``into`` (one per span) when given."""
        import asyncio

        from zarr.core.sync import sync

        data = self._array(feature, "data").async_array
        targets: list[np.ndarray | None] = list(into) if into is not None else [None] * len(spans)

        async def every() -> list[np.ndarray]:
            return list(await asyncio.gather(*(_read_span(data, a, b, sel, t) for (a, b), t in zip(spans, targets))))

        try:
            return sync(every())  # one hand-over to zarr's event loop per batch
        except Exception as exc:  # a damaged shard: read span by span, so the error names its utterances
            lost = as_unreachable(self.location, exc)
            if lost is not None:  # not damage: no retry per span
                raise lost from None
            self._forget_read_cache()
            fetched = [self._fetch(feature, a, b, sel, f"utterances {who}", retry=False)
                       for (a, b), who in zip(spans, first_ids)]
            for target, frames in zip(targets, fetched):
                if target is not None:
                    target[...] = frames
            return [f if t is None else t for t, f in zip(targets, fetched)]

    def _checked(self, utterance_id: str, feature: str, row: int, frames: np.ndarray,
                 sel: list[int] | None, span: tuple[int, int]) -> np.ndarray:
        # Every read is checked against the per-layer crc32 recorded at commit: a missing inner
        # chunk reads as zeros and some codec pipelines skip checksums on partial shard reads.
        want = self._per_row(feature)["crc32"][row]
        if sel is not None:
            want = want[sel]
        if np.array_equal(crc32_rows(frames, self.row_checksum), want):
            return frames
        # On object storage, a shard index kept from an earlier read makes zarr return other valid
        # chunks when the shard was replaced since (w2v2ser never rewrites a shard object, but a new
        # copy synced over the store does): read once more with fresh indexes (into ``frames``).
        if self._forget_read_cache():
            frames[...] = self._fetch(feature, *span, sel, f"utterance {utterance_id!r}", retry=False)
        if not np.array_equal(crc32_rows(frames, self.row_checksum), want):
            raise self._damaged(f"features/{feature}/data", f"holds frames of utterance {utterance_id!r} "
                                f"that do not match their crc32 (missing, truncated or altered chunks)")
        return frames

    def read_utterance(self, utterance_id: str, feature: str, *,
                       layers: Sequence[int] | None = None) -> np.ndarray:
        """Frames of one utterance in the stored dtype.

        Args:
            utterance_id: utterance id.
            feature: feature name.
            layers: layer indices to read (3-D features only); None reads all layers.

        Returns:
            ``[frames, dim]`` for 2-D features, else ``[frames, len(layers), dim]``.

        Raises:
            StoreError: the utterance is unknown or not written, or its frames are damaged.
        """
        spec = self._spec(feature)
        sel = self._layers(spec, layers)
        row, off, length = self._region(utterance_id, feature)
        frames = self._fetch(feature, off, off + length, sel, f"utterance {utterance_id!r}")
        return self._checked(utterance_id, feature, row, frames, sel, (off, off + length))

    def read_batch(self, ids: Sequence[str], feature: str, *,
                   layers: Sequence[int] | None = None,
                   out: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """Frames of several utterances, each equal to :meth:`read_utterance`'s.

        Utterances that lie in the same shard are fetched by one read spanning them, so a
        batch of neighbours (e.g. one speaker, extracted together) costs one range read per shard.

        Args:
            ids: utterance ids (any order, repeats allowed; any iterable, e.g. a generator).
            feature: feature name.
            layers: layer indices (3-D features only); None reads all layers.
            out: arrays to read into instead, one per id, each shaped and typed like that
                utterance's frames (for example the rows of a padded batch): the frames are
                read straight into them, with no copy. Each utterance is then its own read.

        Returns:
            One array per id, in the order of `ids` (the arrays of `out` when given).
        """
        if isinstance(ids, str):
            raise StoreError(f"read_batch: ids={ids!r}; expected a list of utterance ids.")
        ids = list(ids)  # read twice below: a generator would be exhausted by the first pass
        spec = self._spec(feature)
        sel = self._layers(spec, layers)
        if out is not None:
            return self._read_into(ids, feature, spec, sel, list(out))
        data = self._array(feature, "data")
        shard = int(data.shards[0]) if data.shards is not None else int(data.chunks[0])
        gap = int(data.chunks[0])  # a span never reads more than one unwanted chunk between two utterances
        regions = [(off, length, row, uid) for uid in ids
                   for row, off, length in [self._region(uid, feature)]]
        order = sorted(set(regions))
        spans: list[tuple[int, int, list[tuple[int, int, int, str]]]] = []
        k = 0
        while k < len(order):
            # One span per run of nearby utterances inside one shard (the last may cross into the next).
            start, first_shard, j = order[k][0], order[k][0] // shard, k
            stop = start
            while j < len(order) and order[j][0] // shard == first_shard and order[j][0] <= stop + gap:
                stop = max(stop, order[j][0] + order[j][1])
                j += 1
            spans.append((start, stop, order[k:j]))
            k = j
        try:
            fetched = self._fetch_many(feature, [(a, b) for a, b, _ in spans], sel,
                                       [[m[3] for m in members][:5] for _, _, members in spans])
        except StoreDamagedError:
            if all(len(members) == 1 for _, _, members in spans):
                raise
            # A span also reads the gaps between its utterances, where frames superseded by `verify
            # --repair` may lie damaged: read each utterance's own frames (damage there names it).
            spans = [(off, off + length, [(off, length, row, uid)]) for off, length, row, uid in order]
            fetched = self._fetch_many(feature, [(a, b) for a, b, _ in spans], sel, [[m[0][3]] for _, _, m in spans])
        out: dict[str, np.ndarray] = {}
        for (start, _, members), span in zip(spans, fetched):
            for off, length, row, uid in members:
                frames = np.ascontiguousarray(span[off - start:off - start + length])
                out[uid] = self._checked(uid, feature, row, frames, sel, (off, off + length))
        # An id asked for twice (oversampling) gets an array of its own each time: changing one in
        # place must not change the other.
        given: set[str] = set()
        result = []
        for uid in ids:
            result.append(out[uid].copy() if uid in given else out[uid])
            given.add(uid)
        return result

    def _read_into(self, ids: list[str], feature: str, spec: FeatureSpec, sel: list[int] | None,
                   out: list[np.ndarray]) -> list[np.ndarray]:
        regions = [self._region(uid, feature) for uid in ids]
        frame = spec.frame_shape if sel is None else (len(sel), *spec.frame_shape[1:])
        if len(out) != len(ids):
            raise StoreError(f"read_batch: {len(out)} arrays in out for {len(ids)} ids; expected one per id.")
        for uid, (_, _, length), a in zip(ids, regions, out):
            if (not isinstance(a, np.ndarray) or a.shape != (length, *frame) or a.dtype != np.dtype(spec.dtype)
                    or not a.flags.writeable or not a.flags.c_contiguous):
                got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                if isinstance(a, np.ndarray):  # say which property failed when dtype and shape match
                    got += "".join(text for bad, text in ((not a.flags.writeable, ", read-only"),
                                                          (not a.flags.c_contiguous, ", not C-contiguous")) if bad)
                raise StoreError(f"read_batch: out array for utterance {uid!r} is {got}; expected a writable, "
                                 f"C-contiguous {spec.dtype} array of shape {(length, *frame)} (its frames of "
                                 f"feature {feature!r}).")
        self._fetch_many(feature, [(off, off + length) for _, off, length in regions], sel,
                         [[uid] for uid in ids], into=out)
        return [self._checked(uid, feature, row, a, sel, (off, off + length))
                for uid, (row, off, length), a in zip(ids, regions, out)]

    # ------------------------------------------------------------------ statistics
    def compose_statistics(self, feature: str, *, speakers: Sequence[str] | None = None,
                           layers: Sequence[int] | None = None,
                           utterances: Sequence[str] | None = None) -> FeatureStatistics:
        """Exact frame statistics over the given speakers, from per-speaker parts.

        Args:
            feature: feature name.
            speakers: speakers to include (None: all).
            layers: layer indices to keep (3-D features only; None: all).
            utterances: only these utterances of those speakers (e.g. a subset a run trains on),
                composed from their per-utterance statistics; None: all of the speakers' utterances
                (the store's speaker tables, the same figures for all of them).

        Returns:
            FeatureStatistics with mean and population variance shaped like one frame
            (``[len(layers), dim]`` or ``[dim]``).
        """
        spec = self._spec(feature)
        sel = self._layers(spec, layers)
        names, counts, wanted = self._wanted_speakers(feature, spec, speakers)

        def parts():
            if utterances is not None:
                yield from self._utterance_parts(feature, [names[k] for k in wanted], utterances, sel)
                return
            for k in wanted:
                if counts[k] > 0:
                    mean, m2 = self._values(feature, "speaker_mean", k), self._values(feature, "speaker_m2", k)
                    if sel is not None:
                        mean, m2 = mean[sel], m2[sel]
                    yield int(counts[k]), mean, m2

        utterances = self._utterance_list(utterances)
        count, mean, m2 = combine_statistics(parts())
        # Read lazily, the speaker tables (and a rerun's slots) may be newer than this reader's
        # utterance list: statistics over utterances it cannot list would be returned silently.
        self._check_unchanged()
        if count == 0:
            raise self._no_frames(feature, speakers)
        return FeatureStatistics(count=count, mean=mean, variance=m2 / count)

    def compose_speaker_statistics(self, feature: str, *, speakers: Sequence[str],
                                   layers: Sequence[int] | None = None,
                                   utterances: Sequence[str]) -> dict[str, FeatureStatistics]:
        """Each speaker's own statistics over the given utterances, composed in one pass.

        The figures of ``compose_statistics(feature, speakers=[s], layers=layers,
        utterances=utterances)`` for every ``s``, to the bit. Speaker normalisation of a subset
        needs them all: one speaker's slots lie spread over the store, and asking speaker by
        speaker read every statistics shard once per speaker (300 speakers of a 30,000-utterance
        store: minutes). Nothing is kept on the reader.

        Args:
            feature: feature name.
            speakers: the speakers, each composed on its own.
            layers: layer indices to keep (3-D features only; None: all).
            utterances: only these utterances of those speakers.

        Returns:
            Speaker name -> FeatureStatistics, in sorted order.

        Raises:
            StoreError: a speaker not in the store, or one with no frames among ``utterances``.
        """
        spec = self._spec(feature)
        sel = self._layers(spec, layers)
        names, _, wanted = self._wanted_speakers(feature, spec, speakers)
        utterances = self._utterance_list(utterances)
        if utterances is None:
            raise StoreError("compose_speaker_statistics: utterances=None; pass the ids to count, or use "
                             "compose_statistics(feature, speakers=[s]) for each speaker's table.")
        totals = self._compose_utterances(feature, [names[k] for k in wanted], utterances)
        self._check_unchanged()
        out: dict[str, FeatureStatistics] = {}
        for name in [names[k] for k in wanted]:
            count, mean, m2 = totals.pop(name, (0, None, None))
            if count == 0:
                raise self._no_frames(feature, [name])
            count, mean, m2 = combine_statistics([(count, mean if sel is None else mean[sel],
                                                   m2 if sel is None else m2[sel])])
            out[name] = FeatureStatistics(count=count, mean=mean, variance=m2 / count)
        return out

    def _no_frames(self, feature: str, speakers: Sequence[str] | None) -> StoreError:
        return StoreError(
            f"compose_statistics: no frames of feature {feature!r} for speakers "
            f"{speakers if speakers is not None else 'all'} in store {self.path}; is the store "
            f"finalized and are those speakers' utterances done?"
        )

    @staticmethod
    def _utterance_list(utterances: Sequence[str] | None) -> list[str] | None:
        """``utterances`` as a list (an iterator is read once, here); a string and [] are refused."""
        if utterances is None:
            return None
        if isinstance(utterances, str):
            raise StoreError(f"compose_statistics: utterances={utterances!r}; expected a list of utterance ids.")
        utterances = list(utterances)
        if not utterances:
            raise StoreError("compose_statistics: utterances=[] selects no frames; pass the ids to count, or "
                             "utterances=None for every utterance of the speakers.")
        return utterances

    def _wanted_speakers(self, feature: str, spec: Any,
                         speakers: Sequence[str] | None) -> tuple[list[str], np.ndarray, list[int]]:
        """(speaker names, counts, sorted positions of ``speakers``) of the feature's speaker tables."""
        names = to_str_list(self._values(feature, "speaker_name"))
        counts = self._values(feature, "speaker_count")
        shapes = {a: tuple(self._array(feature, a).shape) for a in ("speaker_mean", "speaker_m2")}
        wanted_shapes = {(len(names), *spec.frame_shape)}
        if len(counts) != len(names) or set(shapes.values()) != wanted_shapes:
            raise self._damaged(f"features/{feature}/speaker_*", f"have inconsistent shapes (speaker_name "
                                f"{len(names)}, speaker_count {len(counts)}, {shapes}; frames "
                                f"{tuple(spec.frame_shape)})")
        if speakers is None:
            wanted = list(range(len(names)))
        else:
            if isinstance(speakers, str):
                raise StoreError(f"compose_statistics: speakers={speakers!r}; expected a list of speaker names.")
            pos = {s: i for i, s in enumerate(names)}
            missing = [s for s in speakers if s not in pos]
            if missing:
                raise StoreError(
                    f"compose_statistics: speakers {missing} are not in store {self.path} "
                    f"(feature {feature!r}, speakers {names[:10]}{'...' if len(names) > 10 else ''})."
                    f"{did_you_mean(str(missing[0]), names)}"
                )
            wanted = sorted({pos[s] for s in speakers})
        return names, counts, wanted

    def _utterance_parts(self, feature: str, speakers: Sequence[str], utterances: Sequence[str],
                         sel: list[int] | None) -> Any:
        """(count, mean, M2) per speaker over the given utterances of those speakers, composed as
        finalize composes the speaker tables (so all of a speaker's utterances give its table's figures)."""
        totals = self._compose_utterances(feature, speakers, utterances)
        for name in sorted(totals):
            count, mean, m2 = totals[name]
            if count > 0:
                yield count, mean if sel is None else mean[sel], m2 if sel is None else m2[sel]

    def _compose_utterances(self, feature: str, speakers: Sequence[str],
                            utterances: Sequence[str]) -> dict[str, Any]:
        """Per-speaker (count, mean, M2) over the given utterances of those speakers."""
        from ._finalize import compose_speakers

        rows = np.array(sorted({self._row(u) for u in utterances}), dtype=np.int64)
        per_row = self._per_row(feature)
        spk = np.asarray(to_str_list(self._read("utterances/speaker")), dtype=object)[rows]
        keep = np.isin(spk, list(speakers))
        rows, spk = rows[keep], spk[keep]
        try:
            totals = compose_speakers(self._array(feature, "stats"), spk, per_row["length"][rows],
                                      per_row["slot"][rows])
        except Exception as exc:  # ValueError: zarr's crc32c check of a damaged statistics chunk
            if not isinstance(exc, ValueError) and as_unreachable(self.location, exc) is None:
                raise
            raise self._damaged(f"features/{feature}/stats", f"cannot be read ({exc})", exc) from None
        return totals

    # ------------------------------------------------------------------ checks and summary
    def verify(self, *, progress: bool = False) -> VerifyReport:
        """Re-read every utterance and check crc32 and region consistency (``progress``: a bar per feature)."""
        from ._verify import verify_store

        return verify_store(self, progress=progress)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (``store info --json``)."""
        status = to_str_list(self._read("utterances/status"))[: len(self._ids)]
        done = self.list_utterances(status="done")
        labels = collections.Counter(record.label for record in done)
        same_audio: dict[str, list[str]] = {}
        for record in done:
            if record.audio_sha256:
                same_audio.setdefault(record.audio_sha256, []).append(record.id)
        feats = {}
        for name, spec in self.features.items():
            data = self._array(name, "data")
            length = self._per_row(name)["length"]
            shards = list(data.shards) if data.shards is not None else None
            feats[name] = {
                "dim": spec.dim, "layers": spec.layers, "dtype": spec.dtype,
                "frame_rate": spec.frame_rate, "layer_names": list(spec.layer_names or []),
                "shape": list(data.shape), "chunks": list(data.chunks), "shards": shards,
                "bytes": int(data.nbytes_stored()),
                "frames": self._stored_frames(name),
                "utterances": int((length >= 0).sum()),
                "config": json.loads(json.dumps(dict(spec.config))),
            }
        return {
            "path": str(self.path),
            "format_version": self.format_version,
            "tool_version": self.attrs.get("tool_version"),
            "created": self.attrs.get("created"),
            "complete": self.complete,
            "row_checksum": self.row_checksum,
            "utterances": len(self._ids),
            "status": {s: status.count(s) for s in STATUSES},
            "speakers": len(self.speakers()),
            "labels": dict(sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))),
            "failures": int(self._group["failures/id"].shape[0]),
            "failure_reasons": [dataclasses.asdict(failure) for failure in self.list_failures()],
            # Failed utterances that the last extract's manifest no longer listed (their failures
            # are among failure_reasons; train never reads them).
            "unlisted_failures": list(self.attrs.get("unlisted_failures", [])),
            "reader_skipped": list(self.attrs.get("reader_skipped", [])),
            # Done utterances whose audio is digital silence after mixing to mono (all samples 0).
            "silent_audio": list(self.attrs.get("silent_audio", [])),
            "corpus": self.attrs.get("corpus"),
            # Done utterances whose audio files are byte-identical (sha256): copies under two names.
            "duplicate_audio": sorted(ids for ids in same_audio.values() if len(ids) > 1),
            "fields": _field_values(done),
            "features": feats,
            # An unfinished extraction's commits are in its journals until finalize merges them.
            "committed": None if self.complete else self._journal_commits(),
        }

    def _journal_commits(self) -> dict[str, int]:
        """Utterances per feature whose frames are committed in the journals (not yet finalized)."""
        from ._journal import resolve_events

        state = resolve_events(self.location)
        return {name: int(state.committed_rows(name, len(self._ids)).sum()) for name in self.features}
