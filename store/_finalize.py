"""finalize: fold the commit journals into the store's index arrays, tables and statistics."""

from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from w2v2ser._common import replacing

from ._errors import StoreError
from ._journal import PairState, resolve_events
from ._layout import ATTRS_KEY, FAILURE_COLUMNS, ROW_CHUNK, open_array, to_str_list
from ._location import StoreLocation, locate_store
from ._stats import combine_statistics

__all__ = ["finalize_store", "compose_speakers"]

STATS_BLOCK = 256  # per-utterance statistics read at once while composing speakers


def _check_events(path: Path, state: PairState, ids: list[str]) -> None:
    # A journal line naming a row whose id differs means journals of another store were mixed in.
    items = [(i, e) for (i, _), (_, e) in state.pair.items()] + [(i, e) for i, (_, e) in state.row_failure.items()]
    for idx, ev in items:
        if idx >= len(ids) or ids[idx] != ev.get("id"):
            have = ids[idx] if idx < len(ids) else "no such row"
            raise StoreError(
                f"journal of store {path} names row {idx} as utterance {ev.get('id')!r}, but that "
                f"row holds {have!r}: the _journal folder does not belong to this store. Restore "
                f"the right journals or extract into a new store."
            )


def _write_column(group: zarr.Group, key: str, values: Any, dtype: Any) -> None:
    arr = open_array(group, key)
    values = np.asarray(values, dtype=dtype)
    if arr.shape[0] != len(values):
        arr.resize((len(values), *arr.shape[1:]))
    # Row blocks: a table of a million rows is converted and written a chunk at a time.
    for lo in range(0, len(values), ROW_CHUNK):
        arr[lo:lo + ROW_CHUNK] = values[lo:lo + ROW_CHUNK]


def finalize_store(path: Path | StoreLocation, group: zarr.Group) -> None:
    """Merge journals into offset/length/slot/crc32/status/failures and per-speaker statistics."""
    path = locate_store(path)
    meta = dict(group.attrs[ATTRS_KEY])
    state = resolve_events(path)
    ids = to_str_list(open_array(group, "utterances/id")[:])
    n = len(ids)
    _check_events(path, state, ids)
    names = sorted(meta["features"])
    planned = {f: open_array(group, f"features/{f}/capacity")[:] >= 0 for f in names}

    status = np.full(n, "done", dtype=object)
    sha = np.asarray(to_str_list(open_array(group, "utterances/audio_sha256")[:]), dtype=object)
    duration = open_array(group, "utterances/duration")[:]
    paths = to_str_list(open_array(group, "utterances/path")[:])
    failures: list[tuple[str, str, str, str]] = []
    index = {f: {"offset": np.full(n, -1, np.int64), "length": np.full(n, -1, np.int64),
                 "slot": np.full(n, -1, np.int64)} for f in names}
    crc = {f: np.zeros((n, int(meta["features"][f].get("layers") or 1)), np.uint32) for f in names}
    rows_touched = {i for i, _ in state.pair} | set(state.row_failure)
    for row in range(n):
        feats = [f for f in names if planned[f][row]]
        if row not in rows_touched:
            if feats:
                status[row] = "pending"
            continue
        row_fail = state.row_failure.get(row)
        latest = {f: state.latest(row, f) for f in feats}
        commits = {f: e for f, e in latest.items() if e is not None and e["event"] == "commit"}
        failed = {f: e for f, e in latest.items() if e is not None and e["event"] == "failure"}
        for f, e in sorted(commits.items(), key=lambda item: item[1]["t"]):
            sha[row], duration[row] = e["audio_sha256"], e["duration"]
            for key in ("offset", "length", "slot"):
                index[f][key][row] = e[key]
            crc[f][row] = e["crc32"]
        row_fail_active = row_fail is not None and (not feats or any(e is row_fail[1] for e in failed.values()))
        if row_fail_active:
            failures.append((ids[row], paths[row], "", str(row_fail[1].get("reason", ""))))
        for f, e in failed.items():
            if row_fail is None or e is not row_fail[1]:
                failures.append((ids[row], paths[row], f, str(e.get("reason", ""))))
        if row_fail_active or failed:
            status[row] = "failed"
        elif len(commits) < len(feats):
            status[row] = "pending"

    for f in names:
        g = f"features/{f}"
        for key, values in index[f].items():
            _write_column(group, f"{g}/{key}", values, np.int64)
        if n:
            _write_column(group, f"{g}/crc32", crc[f], np.uint32)
    _write_column(group, "utterances/status", status.tolist(), str)
    _write_column(group, "utterances/audio_sha256", sha.tolist(), str)
    _write_column(group, "utterances/duration", duration, np.float64)
    for i, col in enumerate(FAILURE_COLUMNS):
        _write_column(group, f"failures/{col}", [fl[i] for fl in failures], str)
    for f in names:
        _drop_orphan_shards(path, group, f, index[f])
    speakers = to_str_list(open_array(group, "utterances/speaker")[:])
    for f in names:
        _store_speakers(group, f"features/{f}", speakers, index[f]["length"], index[f]["slot"])
    _write_parquet(path, group, failures)

    meta["complete"] = bool(np.isin(status, ["done", "failed"]).all())
    meta["finalized"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    group.attrs[ATTRS_KEY] = meta


def _drop_orphan_shards(path: StoreLocation, group: zarr.Group, feature: str, index: dict[str, np.ndarray]) -> None:
    """Delete shard files that no commit record refers to: those of work units killed before
    their commit (a rerun gives their utterances new units). Runs under the store lock, after
    every unit has ended, so no writer is filling them."""
    for name, starts, stops in (("data", index["offset"], index["offset"] + index["length"]),
                                ("stats", index["slot"], index["slot"] + 1)):
        array = open_array(group, f"features/{feature}/{name}")
        shard = int(array.shards[0])
        used = np.flatnonzero((index["length"] > 0) if name == "data" else (index["slot"] >= 0))
        keep: set[int] = set()
        for lo, hi in zip(starts[used] // shard, (stops[used] - 1) // shard):
            keep.update(range(int(lo), int(hi) + 1))
        if not path.is_local:
            prefix = f"features/{feature}/{name}/c"
            for key in path.list(prefix):
                first = key[len(prefix) + 1:].split("/", 1)[0]
                if first.isdigit() and int(first) not in keep:
                    path.delete(key)
            continue
        folder = path.path / "features" / feature / name / "c"
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            # Shard keys are c/<shard along time>/0[/0]: the first part names the shard.
            if entry.name.isdigit() and int(entry.name) not in keep:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def compose_speakers(stats: zarr.Array, speakers: list[str], length: np.ndarray,
                     slot: np.ndarray) -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
    """Per-speaker (count, mean, M2) from per-utterance statistics, in slot order.

    Reads the statistics a block of slots at a time (memory: one block plus one
    accumulator per speaker); verify composes the same way, so results match bit for bit.
    """
    order = np.flatnonzero(length > 0)
    order = order[np.argsort(slot[order], kind="stable")]
    totals: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}
    for lo in range(0, len(order), STATS_BLOCK):
        rows = order[lo:lo + STATS_BLOCK]
        first, last = int(slot[rows[0]]), int(slot[rows[-1]]) + 1
        block = stats[first:last]
        for row in rows:
            mean, m2 = block[int(slot[row]) - first]
            part = (int(length[row]), mean, m2)
            spk = speakers[row]
            totals[spk] = combine_statistics([totals[spk], part]) if spk in totals else combine_statistics([part])
    return totals


def _store_speakers(group: zarr.Group, g: str, speakers: list[str], length: np.ndarray, slot: np.ndarray) -> None:
    stats = open_array(group, f"{g}/stats")
    frame_shape = tuple(stats.shape[2:])
    names = sorted(set(speakers))
    totals = compose_speakers(stats, speakers, length, slot)
    s = len(names)
    _write_column(group, f"{g}/speaker_name", names, str)
    _write_column(group, f"{g}/speaker_count", [totals.get(k, (0,))[0] for k in names], np.int64)
    for arr, part in (("speaker_mean", 1), ("speaker_m2", 2)):
        out = open_array(group, f"{g}/{arr}")
        out.resize((s, *frame_shape))
        for k, spk in enumerate(names):
            out[k] = totals[spk][part] if spk in totals else np.zeros(frame_shape)


def _write_parquet(path: StoreLocation, group: zarr.Group, failures: list[tuple[str, str, str, str]]) -> None:
    """The utterance and failures tables as Parquet too: every tool reads it (Zarr's string
    type is an extension that other Zarr implementations may not read)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        return
    from ._layout import UTTERANCE_COLUMNS

    columns = {}
    for col, (dtype, _) in UTTERANCE_COLUMNS.items():
        values = open_array(group, f"utterances/{col}")[:]
        columns[col] = pa.array(values if dtype is not str else to_str_list(values))
    tables = {
        "utterances": pa.table(columns),
        "failures": pa.table({col: pa.array([f[i] for f in failures], type=pa.string())
                              for i, col in enumerate(FAILURE_COLUMNS)}),
    }
    for name, table in tables.items():
        if not path.is_local:  # one PUT replaces the object whole
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            path.write_bytes(f"{name}.parquet", sink.getvalue().to_pybytes())
            continue
        with replacing(path.path / f"{name}.parquet") as tmp:
            pq.write_table(table, tmp)
