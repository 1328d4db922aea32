"""Summary of the utterance table's fields for a store's description (``store info``): per field
of the done utterances, how many distinct values it has and each value's count."""

from __future__ import annotations

import collections
from typing import Any, Sequence

from ._types import UtteranceRecord

# Fields of an utterance record besides the reader's ``extra`` keys that a run's subset can name.
_RECORD_FIELDS = ("gender", "session", "split")
# A field with more distinct values than this is summarised by their number (times, scores...).
_FIELD_VALUES_SHOWN = 20


def _field_values(records: Sequence[UtteranceRecord]) -> dict[str, dict[str, Any]]:
    """Per field (gender, session, split, each ``extra`` key) of the done utterances: how many
    distinct values it has and, for up to ``_FIELD_VALUES_SHOWN`` of them, each value's count."""
    counts: dict[str, collections.Counter[str]] = {}
    for record in records:
        values = {**{f: getattr(record, f) for f in _RECORD_FIELDS}, **record.extra}
        for key, value in values.items():
            if value not in (None, ""):
                counts.setdefault(key, collections.Counter())[str(value)] += 1
    return {key: {"distinct": len(found),
                  "counts": dict(sorted(found.items())) if len(found) <= _FIELD_VALUES_SHOWN else None}
            for key, found in counts.items()}
