"""repair_store: mark the utterances whose frames are damaged for re-extraction.

Shards are written once, so damaged frames (a lost or altered shard file, a disk error) cannot be
rewritten in place. Instead each damaged (utterance, feature) pair gets a failure record in the
journal, after its commit: the pair is then pending, the store is marked incomplete, and the next
run of the extraction that made the store extracts only those utterances again (every feature of
the extraction pass that computes the damaged one), into new space, and finalizes. Before, the
message said to delete journal lines by hand or to extract a new store.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from typing import Any, Mapping

from ._errors import StoreError, StoreLockedError
from ._location import StoreLocation, locate_store
from ._lock import lock_store
from ._reader import open_store
from ._types import VerifyReport
from ._writer import StoreWriter

__all__ = ["repair_store", "DAMAGED_REASON"]

DAMAGED_REASON = "frames found damaged by `w2v2ser store verify --repair`; the next extraction run re-extracts them"


def repair_store(store_path: str | os.PathLike[str] | StoreLocation, *,
                 storage_options: Mapping[str, Any] | None = None,
                 progress: bool = False) -> tuple[VerifyReport, list[tuple[str, str]]]:
    """Verify a store and queue every damaged (utterance, feature) pair for re-extraction.

    Holds the extraction lock, so no extraction runs meanwhile. Problems of the store's tables
    (not of one utterance's frames) are reported, not repaired.

    Args:
        store_path: Store directory or object-store URL.
        storage_options: fsspec options of a store URL (see :func:`locate_store`).
        progress: show the verify's progress bar per feature.

    Returns:
        (the verify report, the (utterance id, feature) pairs marked for re-extraction). When
        pairs were marked, the store is incomplete until the extraction runs again.
    """
    location = locate_store(store_path, storage_options=storage_options)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(lock_store(location))
            unwritable = None
        except StoreLockedError:
            raise
        except StoreError as error:  # a read-only store: verify it all the same, refuse only a repair
            unwritable = error
        store = open_store(location, allow_incomplete=True)
        report = store.verify(progress=progress)
        pairs = sorted({(uid, feature) for uid, feature, _ in report.problems if uid != "*" and feature})
        if not pairs:
            return report, []
        if unwritable is not None:
            raise StoreError(f"{unwritable} (verify found {len(report.problems)} problem(s); `w2v2ser store verify "
                             f"{shlex.quote(str(location.display))}` without --repair lists them)") from None
        with StoreWriter(location) as writer:
            # The records first: a kill between the two steps leaves them queued, for the next
            # extraction to redo (the other way round, that extraction found nothing to redo and
            # called the damaged store complete). Reads of the damaged frames raise either way.
            index = {uid: i for i, uid in enumerate(store._ids)}
            writer._journal.append([{"event": "failure", "index": index[uid], "id": uid, "feature": feature,
                                     "reason": DAMAGED_REASON} for uid, feature in pairs])
            meta = writer._meta
            meta["complete"] = False  # readers refuse the store until the re-extraction finalizes it
            writer._set_meta(meta)
    return report, pairs
