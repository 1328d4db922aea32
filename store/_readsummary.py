"""Checks and summary of a reader: :class:`FeatureStore`'s verify and describe (``store info``;
``_ReadSummaryMixin``), with the summary of the utterance table's fields: per field of the done
utterances, how many distinct values it has and each value's count."""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any, Sequence

from ._layout import STATUSES, statistics_checked, to_str_list
from ._types import UtteranceRecord, VerifyReport

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


class _ReadSummaryMixin:
    """FeatureStore's checks and summary."""

    # ------------------------------------------------------------------ checks and summary
    def verify(self, *, progress: bool = False) -> VerifyReport:
        """Re-read every utterance and check crc32 and region consistency.

        Args:
            progress: Show a progress bar per feature.

        Returns:
            A :class:`VerifyReport` listing the problems found.
        """
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
        unchecked = 0  # rows with frames whose commit recorded no statistics CRC (written by an earlier w2v2ser)
        for name, spec in self.features.items():
            data = self._array(name, "data")
            length = self._per_row(name)["length"]
            unchecked += int(((length > 0) & (self._per_row(name)["stats_crc32"] < 0)).sum())
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
            # Whether reads compare a CRC for every utterance's statistics (stats_crc32, speaker_crc32): the last
            # finalize recorded them, and every commit carried one (those of an earlier w2v2ser carry none).
            "statistics_checksums": statistics_checked(self.attrs) and not unchecked,
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
