"""verify: re-read every stored utterance and check it against its recorded crc32 and region."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np

from ._layout import to_str_list
from ._types import VerifyReport

if TYPE_CHECKING:  # pragma: no cover
    from ._reader import FeatureStore

__all__ = ["verify_store"]


def verify_store(store: "FeatureStore") -> VerifyReport:
    """Check every (utterance, feature) region; never raises on corrupt chunks."""
    problems: list[tuple[str, str, str]] = []
    checked = 0
    ids = store._ids
    status = to_str_list(store._group["utterances/status"][:])
    for name, spec in store.features.items():
        data = store._array(name, "data")
        chunk, total = int(data.chunks[0]), int(data.shape[0])
        rows = store._per_row(name)
        off, cap, length, crc = rows["offset"], rows["capacity"], rows["length"], rows["crc32"]
        if not (len(off) == len(cap) == len(length) == len(crc) == len(ids)):
            problems.append(("*", name, f"per-utterance arrays have {len(off)} rows, table has {len(ids)}"))
            continue
        # Regions must be chunk-aligned, inside the array, and pairwise disjoint.
        placed = sorted((int(off[i]), int(cap[i]), i) for i in range(len(ids)) if off[i] >= 0)
        for (o1, c1, i1), (o2, _, i2) in zip(placed, placed[1:]):
            if o1 + c1 > o2:
                problems.append((ids[i1], name, f"region [{o1}, {o1 + c1}) overlaps utterance {ids[i2]!r} at {o2}"))
        for i, uid in enumerate(ids):
            o, c, n = int(off[i]), int(cap[i]), int(length[i])
            if o < 0:
                if n >= 0:
                    problems.append((uid, name, f"length {n} recorded but no region allocated"))
                continue
            if o % chunk or c % chunk:
                problems.append((uid, name, f"region offset {o} / capacity {c} not aligned to {chunk}-frame chunks"))
            if o + c > total:
                problems.append((uid, name, f"region [{o}, {o + c}) exceeds data length {total}"))
                continue
            if n > c:
                problems.append((uid, name, f"length {n} exceeds capacity {c}"))
                continue
            if n < 0:
                if status[i] == "done":
                    problems.append((uid, name, "status 'done' but no frames recorded"))
                continue
            checked += 1
            try:
                region = np.asarray(data[o:o + c])
            except Exception as exc:  # corrupt/truncated chunks raise codec-specific errors
                problems.append((uid, name, f"cannot decode chunk data in frames [{o}, {o + c}) "
                                            f"({type(exc).__name__}: {exc}); re-extract this utterance"))
                continue
            got = zlib.crc32(np.ascontiguousarray(region[:n]).tobytes())
            if got != int(crc[i]):
                problems.append((uid, name, f"crc32 mismatch: stored {int(crc[i]):#010x}, read "
                                            f"{got:#010x} (frames [{o}, {o + n}) are corrupt or missing)"))
            elif np.count_nonzero(region[n:]):
                problems.append((uid, name, f"non-zero padding after frame {n} in [{o + n}, {o + c})"))
    return VerifyReport(problems=problems, checked=checked)
