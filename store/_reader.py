"""Reading a finished store: :func:`open_store` and :class:`FeatureStore` (its construction and the
helpers its reads share); its utterance table, frames, statistics and summary are the mixins of
:mod:`._readtable`, :mod:`._readframes`, :mod:`._readstats` and :mod:`._readsummary`."""

from __future__ import annotations

import bisect
import numbers
import os
import shlex
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import zarr

from w2v2ser._common import did_you_mean

from ._errors import StoreChangedError, StoreDamagedError, StoreError, StoreGoneError, StoreIncompleteError
from ._layout import (
    all_chunks_stored,
    check_complete,
    check_version,
    fork_count,
    missing_chunk_keys,
    frames_reader,
    missing_statistics_shards,
    open_array,
    open_root,
    read_meta,
    row_checksum,
    specs_from_meta,
    statistics_checked,
    to_str_list,
)
from ._location import StoreLocation, as_unreachable, locate_store
from ._lock import extraction_holder, extraction_running
from ._readcache import ReadCacheStore
from ._readframes import _ReadFramesMixin
from ._readstats import _ReadStatisticsMixin
from ._readsummary import _ReadSummaryMixin
from ._readtable import _ReadTableMixin
from ._types import FeatureSpec

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


# Ids that the did-you-mean of an unknown utterance id compares, at most: difflib over all ids of a
# 150,000-utterance store took 1.1 s per error.
_NEAR_IDS = 400


def _near_ids(value: str, ids: Sequence[str]) -> Sequence[str]:
    """The ids a did-you-mean for ``value`` compares: all of a small store's; of a larger one, those
    beside it in case-blind order of their starts and of their ends (a typo near the end of an id
    leaves its start, one near the start its end), in store order."""
    if len(ids) <= _NEAR_IDS:
        return ids
    folded, half = [s.casefold() for s in ids], _NEAR_IDS // 4
    near: set[str] = set()
    for turn in (lambda s: s, lambda s: s[::-1]):
        ordered = sorted(map(turn, folded))
        i = bisect.bisect_left(ordered, turn(value.casefold()))
        near.update(map(turn, ordered[max(0, i - half):i + half]))
    return [s for s, f in zip(ids, folded) if f in near]


class FeatureStore(_ReadTableMixin, _ReadFramesMixin, _ReadStatisticsMixin, _ReadSummaryMixin):
    """Read access to a store; create with :func:`open_store`.

    Args:
        path: The store's folder, URL or :class:`StoreLocation`.
        meta: The store's root attributes, as :func:`open_store` read and checked them.
    """

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
        table, _, column = key.rpartition("/")
        if (table in ("utterances", "failures") and key != "utterances/id"
                or table.startswith("features/") and column in ("capacity", "offset", "length", "slot", "crc32")):
            # A table or per-row index array names no utterance's frames: --repair has nothing to queue.
            advice = (f"Rerun the same extraction on this store (the same corpus or manifest and options): it "
                      f"writes this array again from the manifest and its journals and re-extracts nothing "
                      f"that is done; then `w2v2ser store verify {shlex.quote(str(self.path))}` checks the "
                      f"store (its --repair has nothing to queue for this array).")
        else:
            advice = (f"Run `w2v2ser store verify {shlex.quote(str(self.path))} --repair` to list the affected "
                      f"utterances and queue them for re-extraction, then rerun the same extraction on this "
                      f"store: it re-extracts only those and rebuilds length/crc32/status/statistics from its "
                      f"journals.")
        damaged = StoreDamagedError(f"store {self.path} is damaged: array {key} {what}. {advice}")
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

        Args:
            revision: The :attr:`revision` the other reader saw.

        Raises:
            StoreChangedError: The store has another revision now.
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
                        missing: Callable[[], Sequence[str]] | None = None, *, always: bool = False) -> None:
        """Raise if a chunk file of `array` is missing (``missing``: lists the missing keys instead).

        zarr reads a missing chunk as the fill value: a deleted table or statistics chunk would
        come back as empty strings or zeros. Stores written with ALL_CHUNKS_STORED store every
        such chunk, so one missing is damage; older stores are checked by ``store verify``.
        ``always``: also in those (an array that the last finalize wrote whole: the statistics' CRCs).
        """
        stored = always or all_chunks_stored(self.attrs)
        if key in self._chunks_checked or not (self.check_chunks and self.complete and stored):
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
                f"utterances).{did_you_mean(utterance_id, _near_ids(utterance_id, self._ids))}"
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
        """A feature's frame index (offset, capacity, length, slot, crc32, stats_crc32 per row), read at its first
        use; ``stats_crc32`` is -1 throughout in a store whose last finalize did not record it.

        Read lazily (open stays cheap), it may be newer than the utterance list read at open: an
        extraction that changed the store since raises StoreChangedError rather than mix the two.
        Checked after the read, so a change that lands during it is caught too.
        """
        if feature not in self._rows:
            g = f"features/{feature}"
            rows = {k: self._read(f"{g}/{k}") for k in ("offset", "capacity", "length", "slot", "crc32")}
            rows["stats_crc32"] = (self._read_whole(f"{g}/stats_crc32") if statistics_checked(self.attrs)
                                   else np.full(len(rows["slot"]), -1, np.int64))
            self._check_unchanged()
            self._rows[feature] = rows
        return self._rows[feature]

    def _read_whole(self, key: str) -> np.ndarray:
        """``_read`` of an array that the store's last finalize wrote whole (the statistics' CRCs, which its
        ``stats_checksums`` mark vouches for): a missing chunk, read as -1 ("none recorded"), is damage
        even where an older finalize left ``all_chunks_stored`` behind."""
        try:
            array = open_array(self._group, key, where=self.location.display)
        except StoreError:
            gone = self._gone()
            if gone is not None:
                raise gone from None
            raise
        self._require_chunks(key, array, always=True)
        return self._read(key)

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
                    frame_shape=spec.frame_shape, dtype=spec.dtype, checksum=self.row_checksum,
                    recorded=rows["stats_crc32"], frames=self._frames_reader(feature))))
            else:
                self._require_chunks(path, array)
        return array

    def _frames_reader(self, feature: str) -> Callable[[int], np.ndarray | None]:
        """Row -> its CRC-checked frames of ``feature`` (None: unreadable), for ``digital_silence``."""
        rows = self._per_row(feature)
        return frames_reader(self._array(feature, "data"), offset=rows["offset"], length=rows["length"],
                             crc32=rows["crc32"], checksum=self.row_checksum)

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
