"""verify: re-read every stored utterance and check it against its crc32, region and statistics."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

import numpy as np

from w2v2ser._common import progress_bar

from ._errors import StoreError
from ._finalize import compose_speakers
from ._journal import JOURNAL_DIR, iter_journals, resolve_events
from ._location import as_unreachable
from ._layout import (FAILURE_COLUMNS, ROW_CHUNK, UTTERANCE_COLUMNS, crc32_rows, frames_reader, mismatched_statistics,
                      missing_statistics_shards, open_array,
                      overlapping_regions, read_whole_shards, speaker_crc, statistics_checked, to_str_list)
from ._stats import utterance_statistics
from ._types import VerifyReport
from ._units import thread_pool

if TYPE_CHECKING:  # pragma: no cover
    from ._reader import FeatureStore

__all__ = ["verify_store"]

_REEXTRACT = ("re-extract it: `w2v2ser store verify {store} --repair`, then rerun the extraction that made the "
              "store")
_REWRITE = "rerun the same extraction on this store (its finalize rewrites the Parquet tables from the Zarr ones)"


def verify_store(store: "FeatureStore", *, progress: bool = False) -> VerifyReport:
    """Check every (utterance, feature) region, its statistics and every table; never raises on corrupt data.

    Checks: regions lie inside the data and never overlap; frames match their per-layer crc32;
    per-utterance statistics equal those recomputed from the frames; per-speaker statistics
    (complete stores) equal those composed from the utterances; every table column decodes;
    the Parquet copies of the tables (complete stores) pass their page CRC32s and hold the same rows.

    Raises:
        StoreUnreachableError: an object store stopped answering or refused a request (at the first).
        StoreChangedError: an extraction changed the store (opened complete) while it was verified.
    """
    try:
        report = _verify(store, progress=progress)
    except Exception as error:
        _stop_if_unreachable(store, error)
        raise
    if store.changed_since_open():
        # An extraction began to rewrite the tables while they were compared (a rerun moves paths
        # in place): what differs is its work, not damage.
        raise store._changed()
    return report


def _verify(store: "FeatureStore", *, progress: bool) -> VerifyReport:
    problems: list[tuple[str, str, str]] = []
    checked = 0
    reextract = _REEXTRACT.format(store=shlex.quote(str(store.path)))
    ids = store._ids
    n = len(ids)
    for key in [f"utterances/{c}" for c in UTTERANCE_COLUMNS] + [f"failures/{c}" for c in FAILURE_COLUMNS]:
        try:
            store._read(key)
        except StoreError as error:
            _stop_if_unreachable(store, error)
            problems.append(("*", "", str(error)))
    try:
        status = to_str_list(store._read("utterances/status"))[:n]
        speakers = to_str_list(store._read("utterances/speaker"))[:n]
    except StoreError as error:
        _stop_if_unreachable(store, error)
        status, speakers = ["pending"] * n, [""] * n
    try:  # a done utterance whose extraction of one feature failed holds no frames of it
        failed = {(f.id, f.feature) for f in store.list_failures()}
    except StoreError:  # damaged: reported above
        failed = set()
    for name in store.features:
        # A missing statistics shard is reported per utterance below (and --repair queues them).
        data, stats = store._array(name, "data"), store._array(name, "stats", check=False)
        total = int(data.shape[0])
        try:
            rows = store._per_row(name)
        except StoreError as error:
            _stop_if_unreachable(store, error)
            problems.append(("*", name, str(error)))
            continue
        off, length, slot, crc, cap = rows["offset"], rows["length"], rows["slot"], rows["crc32"], rows["capacity"]
        recorded = rows["stats_crc32"]
        if not (len(off) == len(length) == len(slot) == len(crc) == len(recorded) == n):
            problems.append(("*", name, f"per-utterance arrays have {len(off)} rows, table has {n}"))
            continue
        spec = store.features[name]
        lost = {row: key for key, held in missing_statistics_shards(
            stats, length=length, slot=slot, crc32=crc, frame_shape=spec.frame_shape, dtype=spec.dtype,
            checksum=store.row_checksum, recorded=recorded,
            frames=frames_reader(data, offset=off, length=length, crc32=crc, checksum=store.row_checksum)).items()
            for row in held}
        for i1, i2 in overlapping_regions(off, length, np.flatnonzero(length > 0)):
            o1, c1, o2 = int(off[i1]), int(length[i1]), int(off[i2])
            problems.append((ids[i1], name, f"frames [{o1}, {o1 + c1}) overlap utterance {ids[i2]!r} at {o2}"))
        verified = np.zeros(n, dtype=bool)
        held: dict[int, np.ndarray] = {}  # the statistics of the window being checked, by slot

        def check(i: int) -> tuple[str, bool] | None:  # called within this feature's loop only
            """One utterance's frames against its region, CRCs and statistics: None when it has
            no frames, else (problem or "", whether its frames were read); any thread."""
            o, k = int(off[i]), int(length[i])
            if k < 0:
                # cap < 0: added without this feature
                planned_done = status[i] == "done" and cap[i] >= 0 and (ids[i], name) not in failed
                return ("status 'done' but no frames recorded", False) if planned_done else None
            if k > cap[i]:
                return f"length {k} exceeds the planned capacity {int(cap[i])}", False
            if o < 0 or o + k > total:
                return f"frames [{o}, {o + k}) lie outside the data ({total} frames)", False
            try:
                frames = np.asarray(data[o:o + k])
            except Exception as exc:  # corrupt/truncated shards raise codec-specific errors
                _stop_if_unreachable(store, exc)
                return f"cannot decode frames [{o}, {o + k}) ({type(exc).__name__}: {exc}); {reextract}", True
            got = crc32_rows(frames, store.row_checksum)
            if not np.array_equal(got, crc[i]):
                bad = [j for j in range(len(got)) if got[j] != crc[i][j]]
                return (f"crc32 mismatch in layer(s) {bad} (frames [{o}, {o + k}) are corrupt or missing); "
                        f"{reextract}", True)
            if i in lost:  # zarr would read the missing shard as zeros
                return f"per-utterance statistics are missing (shard file {lost[i]} is gone); {reextract}", True
            _, mean, m2 = utterance_statistics(frames)
            try:
                stored = held.get(int(slot[i]))
                if stored is None:
                    stored = np.asarray(stats[int(slot[i])])
                if np.array_equal(stored[0], mean) and np.array_equal(stored[1], m2):
                    if mismatched_statistics(stored[None], recorded[i:i + 1], store.row_checksum)[0]:
                        return ("per-utterance statistics are right, but the CRC its commit recorded for them "
                                f"(features/{name}/stats_crc32) differs, so every read refuses them; {reextract}"), True
                    return "", True
                why = "differ from the statistics of its frames"
            except Exception as exc:
                _stop_if_unreachable(store, exc)
                why = f"cannot be read ({type(exc).__name__}: {exc})"
            return f"per-utterance statistics {why}; {reextract}", True

        # Utterances are checked in parallel threads (reads, CRCs and statistics release the GIL),
        # a bounded window at a time, in slot order (a work unit's slots and frames lie together, its
        # rows need not: extraction sorts them by length); their problems are listed in row order.
        pool = thread_pool()
        bar = progress_bar(total=n, desc=f"verify {name}", unit="utt") if progress else None
        order = np.argsort(np.where(length > 0, slot, -1), kind="stable")
        found: dict[int, str] = {}
        for lo in range(0, n, 256):
            window = [int(i) for i in order[lo:lo + 256]]
            held = _window_statistics(stats, [int(slot[i]) for i in window if length[i] > 0 and i not in lost])
            for i, result in zip(window, pool.map(check, window) if pool is not None else map(check, window)):
                if result is not None:
                    problem, read = result
                    checked += read
                    if problem:
                        found[i] = problem
                    else:
                        verified[i] = True
            if bar is not None:
                bar.update(len(window))
        if bar is not None:
            bar.close()
        problems += [(ids[i], name, found[i]) for i in sorted(found)]
        if store.complete:
            problems += _check_speakers(store, name, speakers, length, slot, verified)
    problems += _check_journals(store)
    if store.complete:  # finalize writes them; an interrupted one may not have
        problems += _check_parquet(store, "utterances", list(UTTERANCE_COLUMNS))
        problems += _check_parquet(store, "failures", list(FAILURE_COLUMNS))
    return VerifyReport(problems=problems, checked=checked)


def _window_statistics(stats: Any, slots: list[int]) -> dict[int, np.ndarray]:
    """The statistics of a window's slots, read together as the shards that hold them (read through
    zarrs, checked there) when they lie close together: read one by one through zarr's pipeline they
    took about a third of verifying a store of small features. {} when they lie apart or the read fails:
    each is then read alone, so that damage is named per utterance."""
    if not slots:
        return {}
    lo, hi = min(slots), max(slots) + 1
    if hi - lo > 2 * len(slots):
        return {}
    try:
        block = read_whole_shards(stats, lo, hi)
    except Exception:  # noqa: BLE001 -- read again one by one in check(), which names the damage
        return {}
    return {s: block[s - lo] for s in slots}


def _stop_if_unreachable(store: "FeatureStore", error: BaseException) -> None:
    """An object store that cannot be reached or refuses requests ends the verify at once, as one
    StoreUnreachableError: it says nothing of the data, and each further read would wait out the
    client's retries again (once per utterance)."""
    lost = as_unreachable(store.location, error)
    if lost is error:
        raise error
    if lost is not None:
        raise lost from None


def _check_journals(store: "FeatureStore") -> list[tuple[str, str, str]]:
    """Every journal line (object) must be whole and pass its CRC: the next extraction's finalize
    rebuilds the index from them, so damage there would stop it (or, before, lose commits). In a
    complete store, every region of the index must also be the latest commit of its journals: a
    deleted, cut or stale ``_journal`` reads fine, but the next extraction redoes what it lacks."""
    try:
        if not store.complete:  # the journals hold commits newer than the index: nothing to compare
            for _ in iter_journals(store.location):
                pass
            return []
        state = resolve_events(store.location, ids=store._ids)
    except StoreError as error:
        _stop_if_unreachable(store, error)
        return [("*", "", str(error))]
    problems = []
    n = len(store._ids)
    for name in store.features:
        try:
            rows = store._per_row(name)
        except StoreError as error:
            _stop_if_unreachable(store, error)
            continue  # reported above
        if any(len(rows[key]) != n for key in ("offset", "length", "slot")):
            continue  # reported above: per-utterance arrays of another length than the table
        pair = state.pair(name)
        same = state.committed_rows(name, n)
        for key in ("offset", "length", "slot"):
            same &= pair.column(key, n) == rows[key]
        lost = np.flatnonzero((rows["length"] >= 0) & ~same)
        if len(lost):
            some = ", ".join(repr(store._ids[i]) for i in lost[:3]) + (" ..." if len(lost) > 3 else "")
            problems.append(("*", name, (
                f"the journals in {store.location.display}/{JOURNAL_DIR} hold no commit record matching the index "
                f"for {len(lost)} utterance(s) whose frames it holds ({some}): the {JOURNAL_DIR} folder was deleted, "
                f"cut or replaced, or not copied with the store (Zarr copy tools copy only the arrays). Reads are "
                f"unaffected, but the next extraction into this store extracts them again. Copy {JOURNAL_DIR}/ back "
                f"from the store this one was copied from (or a backup); otherwise leave the store as it is (reads "
                f"and training work) or let the next extraction redo them.")))
    return problems


def _check_parquet(store: "FeatureStore", table: str, columns: list[str]) -> list[tuple[str, str, str]]:
    """``TABLE.parquet`` must pass its page checksums and equal the Zarr table, block by block."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = f"{table}.parquet"
    try:
        source: Any
        if store.location.is_local:
            source = store.location.path / name
            if not source.is_file():
                raise FileNotFoundError(name)
            source = str(source)
        else:
            raw = store.location.read_bytes(name)
            if raw is None:
                raise FileNotFoundError(name)
            source = pa.BufferReader(raw)
        reader = pq.ParquetFile(source, page_checksum_verification=True)
        missing = [c for c in columns if c not in reader.schema_arrow.names]
        if missing:
            return [("*", "", f"{name} lacks the column(s) {missing}; {_REWRITE}")]
        lo = 0
        for batch in reader.iter_batches(batch_size=ROW_CHUNK, columns=columns):
            hi = lo + batch.num_rows
            for col in columns:
                try:
                    want = store._read(f"{table}/{col}", slice(lo, hi))
                except StoreError as error:
                    _stop_if_unreachable(store, error)
                    continue  # the damaged Zarr column is reported above
                got = batch.column(col).to_pylist()
                same = (to_str_list(want) == got if want.dtype.kind not in "fiu"
                        else np.array_equal(want, np.asarray(got, dtype=want.dtype), equal_nan=want.dtype.kind == "f"))
                if not same:
                    return [("*", "", f"{name}: column {col!r} differs from the store's table in rows "
                                      f"{lo}..{hi - 1}; {_REWRITE}")]
            lo = hi
        rows = int(open_array(store._group, f"{table}/{columns[0]}", where=store.location.display).shape[0])  # its length, not a second read
        lying = _lying_statistics(reader)
        if lying:
            return [("*", "", f"{name}: the footer's min/max of column {lying[1]!r} in row group {lying[0]} leave out "
                              f"values the row group holds, so filtered reads would skip its rows; {_REWRITE}")]
    except StoreError as error:
        _stop_if_unreachable(store, error)
        return []  # the Zarr table itself is damaged: reported above
    except FileNotFoundError:
        return [("*", "", f"{name} is missing; {_REWRITE}")]
    except Exception as exc:  # pyarrow raises OSError/ArrowInvalid... for checksum and format errors
        _stop_if_unreachable(store, exc)
        why = " ".join(str(exc).split())  # pyarrow's messages span lines; a report line is one
        return [("*", "", f"{name} cannot be read ({type(exc).__name__}: {why}); {_REWRITE}")]
    if lo != rows:
        return [("*", "", f"{name} has {lo} rows, the store's table {rows}; {_REWRITE}")]
    return []


def _lying_statistics(reader: Any) -> tuple[int, str] | None:
    """(row group, column) of the first footer min/max that excludes a value the row group holds
    (files of older stores carry statistics; the footer has no checksum), else None."""
    import pyarrow.compute as pc

    meta = reader.metadata
    for g in range(meta.num_row_groups):
        group, values = meta.row_group(g), None
        for j in range(group.num_columns):
            stats = group.column(j).statistics
            if stats is None or not stats.has_min_max:
                continue
            values = reader.read_row_group(g) if values is None else values
            name = group.column(j).path_in_schema
            found = pc.min_max(values.column(name)).as_py()
            # A range wider than the values only costs pruning; one that leaves a value out loses rows.
            if found["min"] is not None and not (stats.min <= found["min"] and found["max"] <= stats.max):
                return g, name
    return None


def _check_speakers(store: "FeatureStore", name: str, speakers: list[str], length: np.ndarray,
                    slot: np.ndarray, verified: np.ndarray) -> list[tuple[str, str, str]]:
    """Per-speaker count/mean/M2 must equal the composition of the speaker's utterances."""
    fix = "rerun the same extraction on this store (it recomposes speaker statistics)"
    try:
        names = to_str_list(store._read(f"features/{name}/speaker_name"))
        counts = store._read(f"features/{name}/speaker_count")
        means = store._read(f"features/{name}/speaker_mean")
        m2s = store._read(f"features/{name}/speaker_m2")
    except StoreError as error:
        _stop_if_unreachable(store, error)
        return [("*", name, f"{error}; {fix}")]
    if names != sorted(set(speakers)):
        return [("*", name, f"speaker list {names[:5]} does not match the table's speakers; {fix}")]
    ok_rows = np.asarray([verified[r] or length[r] <= 0 for r in range(len(length))])
    try:
        totals = compose_speakers(store._array(name, "stats", check=False), speakers, length, slot)
    except Exception as exc:
        _stop_if_unreachable(store, exc)
        if ok_rows.all():  # nothing reported per utterance: say why the check could not run
            return [("*", name, f"per-speaker statistics cannot be checked: composing them from the "
                                f"utterances failed ({type(exc).__name__}: {exc}); {fix}")]
        return []  # damaged statistics were reported per utterance
    out = []
    by_speaker: dict[str, list[int]] = {}  # one pass: a scan per speaker was rows x speakers (115 s of 396)
    for r, s in enumerate(speakers):
        by_speaker.setdefault(s, []).append(r)
    for k, spk in enumerate(names):
        rows = by_speaker.get(spk, [])
        if not all(ok_rows[r] for r in rows):
            continue  # already reported per utterance
        count, mean, m2 = totals.get(spk, (0, None, None))
        if count:
            same = int(counts[k]) == count and np.array_equal(means[k], mean) and np.array_equal(m2s[k], m2)
        else:
            same = int(counts[k]) == 0
        if not same:
            out.append(("*", name, f"statistics of speaker {spk!r} (speaker_count/mean/m2) differ from "
                                   f"those of its {len(rows)} utterances; {fix}"))
    if statistics_checked(store.attrs) and not out:  # right figures whose recorded CRC differs: reads refuse them
        try:
            recorded = store._read(f"features/{name}/speaker_crc32")
        except StoreError as error:
            _stop_if_unreachable(store, error)
            return [("*", name, f"{error}; {fix}")]
        got = speaker_crc(names, counts, means, m2s, store.row_checksum) if len(recorded) == len(names) else None
        if got is None or not np.array_equal(got, recorded):
            out.append(("*", name, f"the speaker tables' checksums (speaker_crc32) do not match their figures, so "
                                   f"every read refuses them; {fix}"))
    return out
