"""verify: re-read every stored utterance and check it against its crc32, region and statistics."""

from __future__ import annotations

import zlib
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from ._errors import StoreError
from ._layout import FAILURE_COLUMNS, UTTERANCE_COLUMNS, to_str_list
from ._stats import combine_statistics, utterance_statistics
from ._types import VerifyReport

if TYPE_CHECKING:  # pragma: no cover
    from ._reader import FeatureStore

__all__ = ["verify_store"]

_REEXTRACT = "re-extract this utterance (delete its journal lines, or extract into a new store)"


def verify_store(store: "FeatureStore") -> VerifyReport:
    """Check every (utterance, feature) region, its statistics and every table; never raises on corrupt chunks.

    Checks: regions are chunk-aligned, inside the data and disjoint; frames match their crc32
    and the padding after them is zero; per-utterance statistics equal those recomputed from the
    frames; per-speaker statistics (complete stores) equal those composed from the utterances;
    every table column decodes.
    """
    problems: list[tuple[str, str, str]] = []
    checked = 0
    ids = store._ids
    n = len(ids)
    for key in [f"utterances/{c}" for c in UTTERANCE_COLUMNS] + [f"failures/{c}" for c in FAILURE_COLUMNS]:
        try:
            store._read(key)
        except StoreError as error:
            problems.append(("*", "", str(error)))
    try:
        status = to_str_list(store._read("utterances/status"))[:n]
        speakers = to_str_list(store._read("utterances/speaker"))[:n]
    except StoreError:
        status, speakers = ["pending"] * n, [""] * n
    for name, spec in store.features.items():
        data = store._array(name, "data")
        chunk, total = int(data.chunks[0]), int(data.shape[0])
        try:
            rows = store._per_row(name)
        except StoreError as error:
            problems.append(("*", name, str(error)))
            continue
        off, cap, length, crc = rows["offset"], rows["capacity"], rows["length"], rows["crc32"]
        if not (len(off) == len(cap) == len(length) == len(crc) == n):
            problems.append(("*", name, f"per-utterance arrays have {len(off)} rows, table has {n}"))
            continue
        utt_mean, utt_m2 = store._array(name, "utt_mean"), store._array(name, "utt_m2")
        # Regions must be chunk-aligned, inside the array, and pairwise disjoint.
        placed = sorted((int(off[i]), int(cap[i]), i) for i in range(n) if off[i] >= 0)
        for (o1, c1, i1), (o2, _, i2) in zip(placed, placed[1:]):
            if o1 + c1 > o2:
                problems.append((ids[i1], name, f"region [{o1}, {o1 + c1}) overlaps utterance {ids[i2]!r} at {o2}"))
        verified = np.zeros(n, dtype=bool)
        for i, uid in enumerate(ids):
            o, c, k = int(off[i]), int(cap[i]), int(length[i])
            if o < 0:
                if k >= 0:
                    problems.append((uid, name, f"length {k} recorded but no region allocated"))
                continue
            if o % chunk or c % chunk:
                problems.append((uid, name, f"region offset {o} / capacity {c} not aligned to {chunk}-frame chunks"))
            if o + c > total:
                problems.append((uid, name, f"region [{o}, {o + c}) exceeds data length {total}"))
                continue
            if k > c:
                problems.append((uid, name, f"length {k} exceeds capacity {c}"))
                continue
            if k < 0:
                if status[i] == "done":
                    problems.append((uid, name, "status 'done' but no frames recorded"))
                continue
            checked += 1
            try:
                region = np.asarray(data[o:o + c])
            except Exception as exc:  # corrupt/truncated chunks raise codec-specific errors
                problems.append((uid, name, f"cannot decode chunk data in frames [{o}, {o + c}) "
                                            f"({type(exc).__name__}: {exc}); {_REEXTRACT}"))
                continue
            frames = np.ascontiguousarray(region[:k])
            got = zlib.crc32(frames.tobytes())
            if got != int(crc[i]):
                problems.append((uid, name, f"crc32 mismatch: stored {int(crc[i]):#010x}, read "
                                            f"{got:#010x} (frames [{o}, {o + k}) are corrupt or missing); {_REEXTRACT}"))
                continue
            if np.count_nonzero(region[k:]):
                problems.append((uid, name, f"non-zero padding after frame {k} in [{o + k}, {o + c})"))
                continue
            # Statistics are recomputed exactly as the writer computed them from the stored frames.
            _, mean, m2 = utterance_statistics(frames)
            try:
                same = np.array_equal(utt_mean[i], mean) and np.array_equal(utt_m2[i], m2)
            except Exception as exc:
                same, why = False, f"cannot be read ({type(exc).__name__}: {exc})"
            else:
                why = "differ from the statistics of its frames"
            if not same:
                problems.append((uid, name, f"per-utterance statistics (utt_mean/utt_m2) {why}; "
                                            f"{_REEXTRACT}"))
                continue
            verified[i] = True
        if store.complete:
            problems += _check_speakers(store, name, speakers, length, verified)
    return VerifyReport(problems=problems, checked=checked)


def _check_speakers(store: "FeatureStore", name: str, speakers: list[str], length: np.ndarray,
                    verified: np.ndarray) -> list[tuple[str, str, str]]:
    """Per-speaker count/mean/M2 must equal the composition of the speaker's utterances."""
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for row, spk in enumerate(speakers):
        by_speaker[spk].append(row)
    fix = "rerun the same extraction on this store (it recomposes speaker statistics)"
    try:
        names = to_str_list(store._read(f"features/{name}/speaker_name"))
        counts = store._read(f"features/{name}/speaker_count")
        means = store._read(f"features/{name}/speaker_mean")
        m2s = store._read(f"features/{name}/speaker_m2")
    except StoreError as error:
        return [("*", name, f"{error}; {fix}")]
    if names != sorted(by_speaker):
        return [("*", name, f"speaker list {names[:5]} does not match the table's speakers; {fix}")]
    utt_mean, utt_m2 = store._array(name, "utt_mean"), store._array(name, "utt_m2")
    out = []
    for k, spk in enumerate(names):
        rows = [r for r in by_speaker[spk] if length[r] > 0]
        if not all(verified[r] for r in rows):
            continue  # already reported per utterance
        count, mean, m2 = combine_statistics((int(length[r]), utt_mean[r], utt_m2[r]) for r in rows)
        if count:
            same = int(counts[k]) == count and np.array_equal(means[k], mean) and np.array_equal(m2s[k], m2)
        else:
            same = int(counts[k]) == 0
        if not same:
            out.append(("*", name, f"statistics of speaker {spk!r} (speaker_count/mean/m2) differ from "
                                   f"those of its {len(rows)} utterances; {fix}"))
    return out
