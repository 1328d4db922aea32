"""finalize: fold the commit journals into the store's tables and statistics (single process)."""

from __future__ import annotations

import datetime as _dt
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ._errors import StoreError
from ._journal import PairState, resolve_events
from ._layout import ATTRS_KEY, FAILURE_COLUMNS, to_str_list
from ._stats import combine_statistics

__all__ = ["finalize_store"]


def _check_events(path: Path, state: PairState, ids: list[str]) -> None:
    # A journal line naming a row whose id differs means journals of another store were mixed in.
    for idx, ev in [(i, e) for (i, _), (_, e) in state.pair.items()] + [
        (i, e) for i, (_, e) in state.row_failure.items()
    ]:
        if idx >= len(ids) or ids[idx] != ev.get("id"):
            have = ids[idx] if idx < len(ids) else "no such row"
            raise StoreError(
                f"journal of store {path} names row {idx} as utterance {ev.get('id')!r}, but that "
                f"row holds {have!r}: the _journal folder does not belong to this store. Restore "
                f"the right journals or extract into a new store."
            )


def _write_column(group: zarr.Group, key: str, values: list[Any], dtype: Any) -> None:
    arr = group[key]
    if arr.shape[0] != len(values):
        arr.resize((len(values), *arr.shape[1:]))
    if values:
        arr[:] = np.asarray(values, dtype=dtype)


def finalize_store(path: Path, group: zarr.Group) -> None:
    """Merge journals into length/crc32/status/failures and compose per-speaker statistics."""
    meta = dict(group.attrs[ATTRS_KEY])
    state = resolve_events(path)
    ids = to_str_list(group["utterances/id"][:])
    paths = to_str_list(group["utterances/path"][:])
    speakers = to_str_list(group["utterances/speaker"][:])
    n = len(ids)
    _check_events(path, state, ids)
    names = sorted(meta["features"])
    offsets = {f: group[f"features/{f}/offset"][:] for f in names}

    status = ["done"] * n
    sha = to_str_list(group["utterances/audio_sha256"][:])
    duration = group["utterances/duration"][:]
    failures: list[tuple[str, str, str, str]] = []
    for row in range(n):
        planned = [f for f in names if offsets[f][row] >= 0]
        row_fail = state.row_failure.get(row)
        latest = {f: state.latest(row, f) for f in planned}
        commits = [e for e in latest.values() if e is not None and e["event"] == "commit"]
        failed = {f: e for f, e in latest.items() if e is not None and e["event"] == "failure"}
        for e in sorted(commits, key=lambda e: e["t"]):
            sha[row], duration[row] = e["audio_sha256"], e["duration"]
        row_fail_active = row_fail is not None and (
            not planned or any(e is row_fail[1] for e in failed.values())
        )
        if row_fail_active:
            failures.append((ids[row], paths[row], "", str(row_fail[1].get("reason", ""))))
        for f, e in failed.items():
            if row_fail is None or e is not row_fail[1]:
                failures.append((ids[row], paths[row], f, str(e.get("reason", ""))))
        if row_fail_active or failed:
            status[row] = "failed"
        elif len(commits) < len(planned):
            status[row] = "pending"

    _write_column(group, "utterances/status", status, str)
    _write_column(group, "utterances/audio_sha256", sha, str)
    _write_column(group, "utterances/duration", list(duration), np.float64)
    for i, col in enumerate(FAILURE_COLUMNS):
        _write_column(group, f"failures/{col}", [fl[i] for fl in failures], str)

    by_speaker: dict[str, list[int]] = defaultdict(list)
    for row, spk in enumerate(speakers):
        by_speaker[spk].append(row)
    speaker_names = sorted(by_speaker)
    for f in names:
        g = f"features/{f}"
        length = np.full(n, -1, dtype=np.int64)
        crc = np.zeros(n, dtype=np.uint32)
        for row in range(n):
            ev = state.committed(row, f)
            if ev is not None and offsets[f][row] >= 0:
                length[row], crc[row] = ev["length"], ev["crc32"]
        if n:
            group[f"{g}/length"][:] = length
            group[f"{g}/crc32"][:] = crc
        _compose_speakers(group, g, speaker_names, by_speaker, length)

    meta["complete"] = all(s in ("done", "failed") for s in status)
    meta["finalized"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    group.attrs[ATTRS_KEY] = meta


def _compose_speakers(group: zarr.Group, g: str, speaker_names: list[str],
                      by_speaker: dict[str, list[int]], length: np.ndarray) -> None:
    """Per-speaker count/mean/M2, one speaker and one utterance at a time (bounded memory)."""
    utt_mean, utt_m2 = group[f"{g}/utt_mean"], group[f"{g}/utt_m2"]
    frame_shape = tuple(utt_mean.shape[1:])
    s = len(speaker_names)
    _write_column(group, f"{g}/speaker_name", speaker_names, str)
    _write_column(group, f"{g}/speaker_count", [0] * s, np.int64)
    mean_arr, m2_arr = group[f"{g}/speaker_mean"], group[f"{g}/speaker_m2"]
    mean_arr.resize((s, *frame_shape))
    m2_arr.resize((s, *frame_shape))
    counts = np.zeros(s, dtype=np.int64)
    for k, spk in enumerate(speaker_names):
        parts = (
            (int(length[row]), utt_mean[row], utt_m2[row])
            for row in by_speaker[spk]
            if length[row] > 0
        )
        count, mean, m2 = combine_statistics(parts)
        counts[k] = count
        if count:
            mean_arr[k] = mean
            m2_arr[k] = m2
        else:
            mean_arr[k] = np.zeros(frame_shape)
            m2_arr[k] = np.zeros(frame_shape)
    if s:
        group[f"{g}/speaker_count"][:] = counts
