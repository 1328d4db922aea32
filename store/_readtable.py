"""The utterance and failure tables of a reader: :class:`FeatureStore`'s listings of utterances,
speakers, sample rates and failures (``_ReadTableMixin``)."""

from __future__ import annotations

import collections
import json

from ._errors import StoreError
from ._layout import FAILURE_COLUMNS, STATUSES, UTTERANCE_COLUMNS, to_str_list
from ._types import Failure, UtteranceRecord


class _ReadTableMixin:
    """FeatureStore's reads of the utterance and failure tables."""

    # ------------------------------------------------------------------ table
    def list_utterances(self, *, status: str | None = "done", feature: str | None = None) -> list[UtteranceRecord]:
        """Utterances in row order, filtered by status.

        A store can hold an utterance without some feature: one added later by an extraction of
        other features.

        Args:
            status: ``"done"``, ``"failed"``, ``"pending"``, or None for all.
            feature: Keep only utterances that hold frames of this feature (None: all).

        Raises:
            StoreError: ``status`` is not one of these.
        """
        if status is not None and status not in STATUSES:
            raise StoreError(f"list_utterances: status={status!r}; expected one of {STATUSES} or None.")
        held = None if feature is None else self._holds(feature)
        cols = {c: self._read(f"utterances/{c}") for c in UTTERANCE_COLUMNS}
        strs = {c: to_str_list(v) for c, v in cols.items() if c not in ("duration", "num_samples")}
        out = []
        for i in range(len(self._ids)):
            if status is not None and strs["status"][i] != status or held is not None and not held[i]:
                continue
            out.append(UtteranceRecord(
                id=strs["id"][i], path=strs["path"][i], speaker=strs["speaker"][i],
                label=strs["label"][i], session=strs["session"][i], split=strs["split"][i],
                gender=strs["gender"][i], corpus=strs["corpus"][i],
                # NaN, as stores written before extra_json hold it: None, as such a store now reads
                extra=json.loads(strs["extra"][i] or "{}", parse_constant=lambda c: None if c == "NaN" else float(c)),
                duration=float(cols["duration"][i]), num_samples=int(cols["num_samples"][i]),
                audio_sha256=strs["audio_sha256"][i], status=strs["status"][i], index=i,
            ))
        return out

    def holds_any(self, feature: str) -> bool:
        """Whether some done utterance holds frames of ``feature``: ``list_utterances(feature=...)``
        is non-empty, answered from two columns without building every record (each ``run`` asks).

        Args:
            feature: A feature of the store.
        """
        held = self._holds(feature)
        if not held.any():
            return False
        status = to_str_list(self._read("utterances/status"))[: len(self._ids)]
        return any(s == "done" for s, h in zip(status, held) if h)

    def sample_rates(self, feature: str, *, ids: set[str] | None = None) -> collections.Counter[int | None]:
        """Own sample rate (Hz) of the audio files behind a feature -> number of done utterances.

        The rate None stands for utterances of a store that predates the record
        (``UtteranceRecord.sample_rate``).

        Args:
            feature: A feature of the store.
            ids: Count only these utterances (None: all done utterances holding ``feature``).
        """
        return collections.Counter(r.sample_rate for r in self.list_utterances(feature=feature)
                                   if ids is None or r.id in ids)

    def speakers(self) -> list[str]:
        """Sorted speakers that have at least one done utterance."""
        status = to_str_list(self._read("utterances/status"))
        spk = to_str_list(self._read("utterances/speaker"))
        n = len(self._ids)  # columns can be longer after an interrupted plan
        return sorted({s for s, st in zip(spk[:n], status[:n]) if st == "done"})

    def list_failures(self) -> list[Failure]:
        """Failed (utterance, feature) pairs; ``feature`` None means the whole utterance."""
        cols = {c: to_str_list(self._read(f"failures/{c}")) for c in FAILURE_COLUMNS}
        if len({len(v) for v in cols.values()}) > 1:  # finalize writes them together: a damaged shape
            raise self._damaged("failures", f"has columns of different lengths "
                                f"({', '.join(f'{c}: {len(v)}' for c, v in cols.items())})")
        return [
            Failure(id=cols["id"][i], path=cols["path"][i], feature=cols["feature"][i] or None,
                    reason=cols["reason"][i])
            for i in range(len(cols["id"]))
        ]
