"""finalize: fold the commit journals into the store's index arrays, tables and statistics."""

from __future__ import annotations

import datetime as _dt
import shlex
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zarr

from w2v2ser._common import first_few
from w2v2ser._files import replacing

from ._errors import StoreError
from ._journal import COMMIT, FAILURE, PairState, commit_lines, delete_lines_command, resolve_events
from ._layout import (ALL_CHUNKS_STORED, ATTRS_KEY, FAILURE_COLUMNS, ROW_CHUNK, STATS_CHECKSUMS, all_chunks_stored,
                      create_array, digital_silence, frames_reader, mismatched_statistics, speaker_crc, missing_statistics_shards, open_array,
                      overlapping_regions, read_whole_shards, row_checksum, specs_from_meta,
                      to_str_list)
from ._location import StoreLocation, locate_store
from ._types import FeatureSpec

__all__ = ["finalize_store", "compose_speakers"]

STATS_BLOCK_BYTES = 32 * 2**20  # per-utterance statistics read at once while composing speakers
# What reading one inner chunk (one slot) alone through zarr's pipeline costs, in bytes that zarrs reads
# in the same time as part of whole shards (0.3 ms; 150,000 eGeMAPS slots, 60 MB, in 0.44 s).
SLOT_READ_BYTES = 32 * 2**10
_STATUS = np.array(["done", "failed", "pending"])  # status codes 0, 1, 2


def _write_column(group: zarr.Group, key: str, values: Any, dtype: Any, *, where: str) -> None:
    arr = open_array(group, key, where=where)
    if arr.shape[0] != len(values):
        arr.resize((len(values), *arr.shape[1:]))
    # Row blocks: a table of a million rows is converted and written a chunk at a time.
    for lo in range(0, len(values), ROW_CHUNK):
        arr[lo:lo + ROW_CHUNK] = np.asarray(values[lo:lo + ROW_CHUNK], dtype=dtype)


def finalize_store(path: Path | StoreLocation, group: zarr.Group) -> None:
    """Merge journals into offset/length/slot/crc32/status/failures and per-speaker statistics.

    Memory: the journal events are folded into numpy columns indexed by row (PairState), and
    every step below works on whole columns, so a million utterances need a few hundred MB.
    """
    path = locate_store(path)
    meta = dict(group.attrs[ATTRS_KEY])
    ids = open_array(group, "utterances/id", where=path.display)[:]
    n = len(ids)
    state = resolve_events(path, ids=ids)
    names = sorted(meta["features"])
    row_seq = state.row_failure_seq(n)
    row_failed = row_seq >= 0
    planned_count = np.zeros(n, np.int64)
    commit_count = np.zeros(n, np.int64)
    any_failed = np.zeros(n, bool)  # some planned feature's latest event is a failure
    failed_count = np.zeros(n, np.int64)  # ... how many such features
    row_fail_used = np.zeros(n, bool)  # ... and that failure is the row-wide one
    winner = np.full(n, -1, np.int64)  # feature whose commit gives audio_sha256/duration
    winner_t = np.zeros(n, np.int64)
    silent: set[int] = set()  # rows with a current commit of digitally silent audio
    index: dict[str, dict[str, np.ndarray]] = {}
    pair_failed: dict[str, np.ndarray] = {}
    capacity: dict[str, np.ndarray] = {}
    for k, f in enumerate(names):
        capacity[f] = open_array(group, f"features/{f}/capacity", where=path.display)[:]
        planned = capacity[f] >= 0
        pair = state.pair(f)
        newer = pair.column("seq", n) > row_seq  # the pair's own event is later than a row failure
        kind = pair.column("kind", n)
        commit = planned & newer & (kind == COMMIT)
        pair_failed[f] = planned & newer & (kind == FAILURE)
        row_fail_here = planned & ~newer & row_failed
        planned_count += planned
        commit_count += commit
        any_failed |= pair_failed[f] | row_fail_here
        failed_count += pair_failed[f] | row_fail_here
        row_fail_used |= row_fail_here
        index[f] = {key: np.where(commit, pair.column(key, n), -1) for key in ("offset", "length", "slot",
                                                                                "stats_crc32")}
        silent.update(row for row in pair.silent if row < n and commit[row])
        layers = int(meta["features"][f].get("layers") or 1)
        crc = np.zeros((n, layers), np.uint32)
        if commit.any():
            got = pair.column("crc32", n)
            if got.shape[1] != layers:
                raise StoreError(
                    f"journal commit records of feature {f!r} in store {path} carry {got.shape[1]} crc32 "
                    f"values, but the feature has {layers} layers: the _journal folder does not belong to "
                    f"this store. Restore the right journals or extract into a new store."
                )
            crc[commit] = got[commit]
        index[f]["crc32"] = crc
        # The latest commit (by time; ties: the later feature name) gives audio_sha256 and duration.
        t = pair.column("t", n)
        take = commit & ((winner < 0) | (t >= winner_t))
        winner[take], winner_t[take] = k, t[take]
    # Checks of what the journals say, before anything is written: a refused finalize leaves the
    # store's tables as the last finalize wrote them.
    specs, checksum = specs_from_meta(meta), row_checksum(path.display, meta)
    for f in names:
        _require_distinct_places(path, f, index[f], ids)
        _require_statistics(path, group, specs[f], checksum, index[f], ids)
    row_fail_active = row_failed & ((planned_count == 0) | row_fail_used)
    # A file that failed some features is done with the others (stage 2 reads it where it has the
    # features asked for); failed only when the whole file failed or none of its features is stored.
    whole_failed = row_fail_active | (any_failed & (commit_count == 0))
    status = np.where(whole_failed, 1, np.where(commit_count + failed_count < planned_count, 2, 0))

    for f in names:
        g = f"features/{f}"
        for key in ("offset", "length", "slot"):
            _write_column(group, f"{g}/{key}", index[f][key], np.int64, where=path.display)
        if f"{g}/stats_crc32" not in group:  # a store made before the statistics carried a CRC
            create_array(group, f"{g}/stats_crc32", shape=(0,), chunks=(ROW_CHUNK,), dtype="int64", fill_value=-1)
        _write_column(group, f"{g}/stats_crc32", index[f]["stats_crc32"], np.int64, where=path.display)
        # Written whole, as read: a plan killed between growing it and filling the new rows left
        # chunk files unstored (read as the fill value, which is what they hold).
        _write_column(group, f"{g}/capacity", capacity.pop(f), np.int64, where=path.display)
        if n:
            _write_column(group, f"{g}/crc32", index[f]["crc32"], np.uint32, where=path.display)
    _write_column(group, "utterances/status", _STATUS[status], str, where=path.display)
    _write_committed(group, state, names, winner, where=path.display)
    failing = np.flatnonzero(row_fail_active | any_failed).tolist()
    paths = open_array(group, "utterances/path", where=path.display)[:] if failing else None
    failures: list[tuple[str, str, str, str]] = []
    for row in failing:
        uid, where = str(ids[row]), str(paths[row])
        if row_fail_active[row]:
            failures.append((uid, where, "", state.row_failure_reason(row) or ""))
        failures += [(uid, where, f, state.pair(f).reason.get(row, "")) for f in names if pair_failed[f][row]]
    for i, col in enumerate(FAILURE_COLUMNS):
        _write_column(group, f"failures/{col}", [fl[i] for fl in failures], str, where=path.display)
    del state
    for f in names:
        _drop_orphan_shards(path, group, f, index[f])
    speakers = open_array(group, "utterances/speaker", where=path.display)[:]
    for f in names:
        frames = _frames(path, group, index[f], checksum, f)
        _store_speakers(path, group, f, speakers, index[f]["length"], index[f]["slot"],
                        silent=partial(digital_silence, length=index[f]["length"], crc32=index[f]["crc32"],
                                       frame_shape=specs[f].frame_shape, dtype=specs[f].dtype, checksum=checksum,
                                       frames=frames),
                        recorded=index[f]["stats_crc32"], checksum=checksum)
    _write_parquet(path, group, failures)

    # Silence is in the commit records: a driver killed after a unit's commit, before it noted the
    # silence in the attributes (record_silent_audio), does not lose it; the rerun finds the unit done.
    known = list(meta.get("silent_audio", []))
    merged = sorted(set(known) | {str(ids[row]) for row in silent})
    if merged != known:
        meta["silent_audio"] = merged
    meta["complete"] = bool((status != 2).all())
    # Every chunk is stored only if the last finalize stored them too (or there was none): an older
    # w2v2ser that finalized since may have let go of chunks of only fill values (an all-empty
    # session column), which this finalize does not write again, so the mark stays behind.
    renew = all_chunks_stored(meta) or (meta.get(ALL_CHUNKS_STORED) is True and "finalized" not in meta)
    meta["finalized"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if renew:  # this finalize stored every chunk: say so for this finalize only
        meta[ALL_CHUNKS_STORED] = meta["finalized"]
    meta[STATS_CHECKSUMS] = meta["finalized"]  # stats_crc32 is current (an older finalize leaves it behind)
    group.attrs[ATTRS_KEY] = meta


def _write_committed(group: zarr.Group, state: PairState, names: list[str], winner: np.ndarray, *,
                     where: str) -> None:
    """audio_sha256 and duration of each row from its winning commit (other rows keep theirs)."""
    for col in ("audio_sha256", "duration"):
        arr = open_array(group, f"utterances/{col}", where=where)
        for lo in range(0, len(winner), ROW_CHUNK):
            hi = min(lo + ROW_CHUNK, len(winner))
            block = winner[lo:hi]
            if not (block >= 0).any():
                continue
            values = np.asarray(arr[lo:hi], np.float64) if col == "duration" else np.asarray(
                to_str_list(arr[lo:hi]), dtype=object)
            for k, f in enumerate(names):
                rows = np.flatnonzero(block == k)
                if not len(rows):
                    continue
                pair = state.pair(f)
                if col == "duration":
                    values[rows] = pair.column("duration", hi)[lo:hi][rows]
                else:
                    values[rows] = [pair.audio_sha256(lo + int(r)) for r in rows]
            arr[lo:hi] = values if col == "duration" else np.asarray(values.tolist(), dtype=str)


def _drop_orphan_shards(path: StoreLocation, group: zarr.Group, feature: str, index: dict[str, np.ndarray]) -> None:
    """Delete shard files that no commit record refers to: those of work units killed before
    their commit (a rerun gives their utterances new units). Runs under the store lock, after
    every unit has ended, so no writer is filling them."""
    for name, starts, stops in (("data", index["offset"], index["offset"] + index["length"]),
                                ("stats", index["slot"], index["slot"] + 1)):
        folder = path.path / "features" / feature / name / "c" if path.is_local else None
        if folder is not None and not folder.is_dir():
            continue
        array = open_array(group, f"features/{feature}/{name}", where=path.display)
        shard = int(array.shards[0])
        used = (index["length"] > 0) if name == "data" else (index["slot"] >= 0)
        first, last = starts[used] // shard, (stops[used] - 1) // shard
        # Shards [first, last] of each region are kept: a difference array marks them all at once.
        marks = np.zeros(int(last.max(initial=-1)) + 2, np.int64)
        np.add.at(marks, first, 1)
        np.add.at(marks, last + 1, -1)
        keep = np.cumsum(marks)[:-1] > 0

        def orphan(first: str) -> bool:
            # Shard keys are c/<shard along time>/0[/0]: the first part names the shard.
            return first.isdigit() and not (int(first) < len(keep) and keep[int(first)])

        if folder is None:
            prefix = f"features/{feature}/{name}/c"
            for key in path.list(prefix):
                if orphan(key[len(prefix) + 1:].split("/", 1)[0]):
                    path.delete(key)
            continue
        for entry in folder.iterdir():
            if orphan(entry.name):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def compose_speakers(stats: zarr.Array, speakers: Any, length: np.ndarray, slot: np.ndarray, *,
                     silent: Callable[[np.ndarray], np.ndarray] | None = None,
                     recorded: np.ndarray | None = None, checksum: str = "crc32c",
                     ) -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
    """Per-speaker (count, mean, M2) from per-utterance statistics, in slot order.

    Each speaker's utterances are combined one at a time in slot order (Chan's update, the
    arithmetic of ``combine_statistics``), for all speakers of a block of slots at once.
    Memory: one block of statistics plus one accumulator per speaker. verify composes the
    same way, so results match bit for bit. ``silent``: whether each of the given rows holds
    only all-zero frames; statistics that read as all zeros for any other row raise ValueError
    (zarr and zarrs read an empty shard file as zeros, checksums and all). ``recorded``: per row, the
    ``checksum`` CRC of its statistics recorded at commit (-1: none, the silence rule instead); a slot
    that reads otherwise (a shard replaced by a valid copy of another) raises ValueError.
    """
    speakers = np.asarray(speakers)
    order = np.flatnonzero(length > 0)
    order = order[np.argsort(slot[order], kind="stable")]
    if not len(order):
        return {}
    names, code = _codes(speakers[order])
    frame_shape = tuple(stats.shape[1:])
    count = np.zeros(len(names), np.int64)
    mean = np.zeros((len(names), *frame_shape[1:]), np.float64)
    m2 = np.zeros_like(mean)
    slot_bytes = 8 * int(np.prod(frame_shape))
    per_slot = max(1, STATS_BLOCK_BYTES // slot_bytes)
    slots = slot[order]
    lo = 0
    while lo < len(order):
        # A block spans at most per_slot slots (slots of one unit are contiguous, so few gaps).
        first = int(slots[lo])
        hi = max(int(np.searchsorted(slots, first + per_slot, side="left")), lo + 1)
        rows, codes = order[lo:hi], code[lo:hi]
        live = slot[rows]
        try:
            shard = int(stats.shards[0]) if stats.shards is not None else 1
            touched = np.unique(live // shard)
            if 2 * len(live) < int(live[-1]) - first + 1 and (
                    len(touched) * shard * slot_bytes > len(live) * (slot_bytes + SLOT_READ_BYTES)):
                # Sparse slots (one speaker's utterances spread over the store, composed for a subset):
                # read those alone, not every slot between them (per speaker, that was the whole store).
                block = np.asarray(stats.oindex[live], np.float64)
                at = np.arange(len(rows))
            elif 2 * len(live) < int(live[-1]) - first + 1:
                # Sparse, but small slots: the shards that hold them whole cost less than a read per slot
                # (a subset of 1,000 of 3,000 speakers' 50,000 eGeMAPS utterances: 15 s slot by slot).
                runs = np.split(touched, np.flatnonzero(np.diff(touched) > 1) + 1)
                run_starts = np.array([int(run[0]) * shard for run in runs], np.int64)
                parts = [read_whole_shards(stats, int(start), min((int(run[-1]) + 1) * shard, stats.shape[0]))
                         for start, run in zip(run_starts, runs)]
                block = np.concatenate(parts).astype(np.float64, copy=False)
                where = np.searchsorted(run_starts, live, side="right") - 1
                at = np.concatenate([[0], np.cumsum([len(p) for p in parts])[:-1]])[where] + live - run_starts[where]
            else:
                block = np.asarray(read_whole_shards(stats, first, int(live[-1]) + 1), np.float64)
                at = live - first
        except Exception:  # noqa: BLE001 -- zarr raises many types for a damaged chunk
            # A superseded slot in between (an utterance re-extracted after `verify --repair` took a
            # new one) may be the damaged one: read only the slots in use, one run of consecutive
            # slots at a time (damage in those raises again, here).
            runs = np.split(live, np.flatnonzero(np.diff(live) > 1) + 1)
            block = np.concatenate([np.asarray(stats[int(run[0]):int(run[-1]) + 1], np.float64) for run in runs])
            at = np.arange(len(rows))
        if recorded is not None:
            wrong = rows[mismatched_statistics(block, recorded[rows], checksum, at=at)]
            if len(wrong):
                raise ValueError(f"the statistics of slot(s) {first_few([str(int(s)) for s in slot[wrong]], 3)} are not "
                                 f"those their commit recorded (their checksum differs): the shard file that holds them "
                                 f"was replaced, altered or emptied")
        if silent is not None:  # an empty shard file reads as zeros: only digital silence has such statistics
            with_crc = recorded[rows] >= 0 if recorded is not None else np.zeros(len(rows), bool)
            zero = rows[~block.reshape(len(block), -1).any(axis=1)[at] & ~with_crc]  # no copy of the block
            lost = zero[~np.asarray(silent(zero), bool)] if len(zero) else zero
            if len(lost):
                raise ValueError(f"the statistics of slot(s) {first_few([str(int(s)) for s in slot[lost]], 3)} read as "
                                 f"zeros, but their frames are not all zero: the shard file that holds them is "
                                 f"missing or empty")
        # k-th utterance of each speaker within the block: all speakers' k-th ones in one step.
        by_speaker = np.argsort(codes, kind="stable")
        starts = np.searchsorted(codes[by_speaker], codes[by_speaker], side="left")
        rank = np.empty(len(codes), np.int64)
        rank[by_speaker] = np.arange(len(codes)) - starts
        for k in range(int(rank.max()) + 1):
            pick = np.flatnonzero(rank == k)
            _combine_into(count, mean, m2, codes[pick], length[rows[pick]].astype(np.int64), block[at[pick]])
        lo = hi
    return {str(name): (int(count[k]), mean[k], m2[k]) for k, name in enumerate(names)}


def _codes(values: Any) -> tuple[list[str], np.ndarray]:
    """Sorted distinct values and each value's position among them. (np.unique with
    return_inverse crashes on numpy 2.4's StringDType, which zarr returns; argsort does not.)"""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    ranked = values[order]
    new = np.ones(len(ranked), bool)
    new[1:] = ranked[1:] != ranked[:-1]
    code = np.empty(len(values), np.int64)
    code[order] = np.cumsum(new) - 1
    return [str(v) for v in ranked[new].tolist()], code


def _combine_into(count: np.ndarray, mean: np.ndarray, m2: np.ndarray, who: np.ndarray, nb: np.ndarray,
                  part: np.ndarray) -> None:
    """Chan's update of the accumulators `who` (distinct) with one part each: the same float64
    operations as ``combine_statistics``, so the result is bit for bit the same."""
    na = count[who]
    fresh = na == 0
    if fresh.any():  # first part of a speaker: taken as it is
        mean[who[fresh]], m2[who[fresh]] = part[fresh, 0], part[fresh, 1]
        count[who[fresh]] = nb[fresh]
    old = ~fresh
    if not old.any():
        return
    w, na, nb, part = who[old], na[old], nb[old], part[old]
    n = na + nb
    # Python divides ints exactly rounded; float64 division matches it while na*nb < 2**53.
    cross = na * nb
    if (cross >= 2**53).any() or (n >= 2**53).any():
        share = np.array([int(b) / int(c) for b, c in zip(nb, n)])
        weight = np.array([int(a) * int(b) / int(c) for a, b, c in zip(na, nb, n)])
    else:
        share, weight = nb / n, cross / n
    extra = (1,) * (mean.ndim - 1)
    mean_a, m2_a = mean[w], m2[w]
    delta = part[:, 0] - mean_a
    mean[w] = mean_a + delta * share.reshape(-1, *extra)
    m2[w] = m2_a + part[:, 1] + np.square(delta) * weight.reshape(-1, *extra)
    count[w] = n


def _require_distinct_places(path: StoreLocation, feature: str, index: dict[str, np.ndarray], ids: np.ndarray) -> None:
    """Raise if two committed utterances share a statistics slot or overlapping frames: a journal
    line altered into other valid JSON (older stores' lines carry no CRC) would otherwise give one
    utterance another's statistics, and the speaker statistics composed from them, without a word."""
    rows = np.flatnonzero((index["length"] > 0) & (index["slot"] >= 0) & (index["offset"] >= 0))
    by_slot = rows[np.argsort(index["slot"][rows], kind="stable")]
    same = np.flatnonzero(np.diff(index["slot"][by_slot]) == 0)
    overlap = overlapping_regions(index["offset"], index["length"], rows)
    if len(same) or overlap:
        pair = (by_slot[same[0]], by_slot[same[0] + 1]) if len(same) else overlap[0]
        what = "statistics slot" if len(same) else "frames"
        lines = commit_lines(path, feature, pair) if path.is_local else {}
        delete = (f"with no extraction running: `{delete_lines_command(lines)}`" if lines else
                  f"from {path.display}/_journal/ (their lines of a *.jsonl file; on object storage, the objects "
                  f"that hold them)")
        raise StoreError(
            f"store {path.display}: the commit records of feature {feature!r} give utterances {ids[pair[0]]!r} and "
            f"{ids[pair[1]]!r} the same {what}, so the store's journal is damaged. Delete both "
            f"utterances' commit records of that feature, {delete}: the next extraction extracts them "
            f"again. Or extract into a new store.")


def _frames(path: StoreLocation, group: zarr.Group, index: dict[str, np.ndarray], checksum: str,
            feature: str) -> Callable[[int], np.ndarray | None]:
    """Row -> its CRC-checked frames (None: unreadable), for the digital-silence rule's rare undecided rows."""
    return frames_reader(open_array(group, f"features/{feature}/data", where=path.display), offset=index["offset"],
                         length=index["length"], crc32=index["crc32"], checksum=checksum)


def _require_statistics(path: StoreLocation, group: zarr.Group, spec: FeatureSpec, checksum: str,
                        index: dict[str, np.ndarray], ids: np.ndarray) -> None:
    """Raise if a statistics shard of committed utterances is missing: zarr would read it as zeros,
    and the speaker statistics composed from them would be wrong without a word."""
    missing = missing_statistics_shards(open_array(group, f"features/{spec.name}/stats", where=path.display),
                                        length=index["length"],
                                        slot=index["slot"], crc32=index["crc32"], frame_shape=spec.frame_shape,
                                        dtype=spec.dtype, checksum=checksum, recorded=index["stats_crc32"],
                                        frames=_frames(path, group, index, checksum, spec.name))
    if missing:
        rows = sorted(r for found in missing.values() for r in found)
        raise StoreError(
            f"store {path.display}: the per-utterance statistics of feature {spec.name!r} lack the shard(s) "
            f"{first_few(list(missing), 3)}, which hold {len(rows)} finished utterance(s) "
            f"({first_few([str(ids[r]) for r in rows], 3)}), so its speaker statistics cannot be composed. "
            f"Run `w2v2ser store verify --repair {shlex.quote(str(path.display))}`, then extract again: those "
            f"utterances are "
            f"extracted anew.")


def _store_speakers(path: StoreLocation, group: zarr.Group, feature: str, speakers: Any, length: np.ndarray,
                    slot: np.ndarray, *, silent: Callable[[np.ndarray], np.ndarray] | None = None,
                    recorded: np.ndarray | None = None, checksum: str = "crc32c") -> None:
    g = f"features/{feature}"
    stats = open_array(group, f"{g}/stats", where=path.display)
    frame_shape = tuple(stats.shape[2:])
    names, _ = _codes(speakers)
    try:
        totals = compose_speakers(stats, speakers, length, slot, silent=silent, recorded=recorded, checksum=checksum)
    except ValueError as exc:  # zarr's crc32c check of a damaged statistics shard
        raise StoreError(
            f"store {path.display}: the per-utterance statistics of feature {feature!r} cannot be read ({exc}), "
            f"so its speaker statistics cannot be composed. Run `w2v2ser store verify --repair "
            f"{shlex.quote(str(path.display))}`, "
            f"then extract again: the damaged utterances are extracted anew.") from None
    counts = [totals.get(k, (0,))[0] for k in names]
    _write_column(group, f"{g}/speaker_name", names, str, where=path.display)
    _write_column(group, f"{g}/speaker_count", counts, np.int64, where=path.display)
    tables = {}
    for arr, part in (("speaker_mean", 1), ("speaker_m2", 2)):
        out = open_array(group, f"{g}/{arr}", where=path.display)
        out.resize((len(names), *frame_shape))
        tables[arr] = np.stack([totals[k][part] if k in totals else np.zeros(frame_shape) for k in names]) if names \
            else np.zeros((0, *frame_shape))
        if names:
            out[:] = tables[arr]
    if f"{g}/speaker_crc32" not in group:  # a store made before the speaker tables carried a CRC
        create_array(group, f"{g}/speaker_crc32", shape=(0,), chunks=(ROW_CHUNK,), dtype="int64", fill_value=-1)
    _write_column(group, f"{g}/speaker_crc32", speaker_crc(names, np.asarray(counts, np.int64), tables["speaker_mean"],
                                                           tables["speaker_m2"], checksum), np.int64, where=path.display)


def _write_parquet(path: StoreLocation, group: zarr.Group, failures: list[tuple[str, str, str, str]]) -> None:
    """The utterance and failures tables as Parquet too: every tool reads it (Zarr's string
    type is an extension that other Zarr implementations may not read). Every page carries
    Parquet's CRC32, so a reader that checks it (``store verify``, pyarrow's
    ``page_checksum_verification=True``) raises on a damaged file instead of returning wrong rows.
    No min/max statistics are written: the footer has no checksum, and a flipped bit there would
    make filtered reads (pyarrow, duckdb, polars) skip row groups that hold matching rows."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        return
    from ._layout import UTTERANCE_COLUMNS

    kinds = {str: pa.string(), "float64": pa.float64(), "int64": pa.int64()}
    schema = pa.schema([(col, kinds[dtype]) for col, (dtype, _) in UTTERANCE_COLUMNS.items()])
    arrays = {col: open_array(group, f"utterances/{col}", where=path.display) for col in UTTERANCE_COLUMNS}
    n = arrays["id"].shape[0]  # the id column defines the rows

    def write_utterances(sink: Any) -> None:
        with pq.ParquetWriter(sink, schema, write_page_checksum=True, write_statistics=False) as out:
            # A row group per block of rows: memory stays one block of the table.
            for lo in range(0, max(n, 1), ROW_CHUNK):
                block = {col: arrays[col][lo:min(lo + ROW_CHUNK, n)] for col in UTTERANCE_COLUMNS}
                out.write_table(pa.table({col: pa.array(v if UTTERANCE_COLUMNS[col][0] is not str else to_str_list(v),
                                                        type=schema.field(col).type) for col, v in block.items()},
                                         schema=schema))

    failure_table = pa.table({col: pa.array([f[i] for f in failures], type=pa.string())
                              for i, col in enumerate(FAILURE_COLUMNS)})
    def write_failures(sink: Any) -> None:
        pq.write_table(failure_table, sink, write_page_checksum=True, write_statistics=False)

    for name, write in (("utterances", write_utterances), ("failures", write_failures)):
        if path.is_local:
            with replacing(path.path / f"{name}.parquet") as tmp:
                write(tmp)
        else:  # one PUT replaces the object whole
            sink = pa.BufferOutputStream()
            write(sink)
            path.write_bytes(f"{name}.parquet", sink.getvalue().to_pybytes())
