"""The statistics of a reader: :class:`FeatureStore`'s exact frame statistics composed over
speakers or utterances from the per-speaker and per-utterance parts (``_ReadStatisticsMixin``)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from w2v2ser._common import did_you_mean

from ._errors import StoreError
from ._layout import digital_silence, speaker_crc, statistics_checked, to_str_list
from ._location import as_unreachable
from ._stats import combine_statistics
from ._types import FeatureStatistics


class _ReadStatisticsMixin:
    """FeatureStore's composition of frame statistics."""

    # ------------------------------------------------------------------ statistics
    def compose_statistics(self, feature: str, *, speakers: Sequence[str] | None = None,
                           layers: Sequence[int] | None = None,
                           utterances: Sequence[str] | None = None) -> FeatureStatistics:
        """Exact frame statistics over the given speakers, from per-speaker parts.

        Args:
            feature: feature name.
            speakers: speakers to include (None: all).
            layers: layer indices to keep (3-D features only; None: all).
            utterances: only these utterances of those speakers (e.g. a subset a run trains on),
                composed from their per-utterance statistics; None: all of the speakers' utterances
                (the store's speaker tables, the same figures for all of them).

        Returns:
            FeatureStatistics with mean and population variance shaped like one frame
            (``[len(layers), dim]`` or ``[dim]``).
        """
        spec = self._spec(feature)
        sel = self._layers(spec, layers)
        names, counts, wanted = self._wanted_speakers(feature, spec, speakers)

        def parts():
            if utterances is not None:
                yield from self._utterance_parts(feature, [names[k] for k in wanted], utterances, sel)
                return
            for _, count, mean, m2 in self._speaker_rows(feature, counts, wanted, sel, names=names):
                yield count, mean, m2

        utterances = self._utterance_list(utterances)
        count, mean, m2 = combine_statistics(parts())
        # Read lazily, the speaker tables (and a rerun's slots) may be newer than this reader's
        # utterance list: statistics over utterances it cannot list would be returned silently.
        self._check_unchanged()
        if count == 0:
            raise self._no_frames(feature, speakers)
        return FeatureStatistics(count=count, mean=mean, variance=m2 / count)

    def compose_speaker_statistics(self, feature: str, *, speakers: Sequence[str],
                                   layers: Sequence[int] | None = None,
                                   utterances: Sequence[str] | None) -> dict[str, FeatureStatistics]:
        """Each speaker's own statistics over the given utterances, composed in one pass.

        The figures of ``compose_statistics(feature, speakers=[s], layers=layers,
        utterances=utterances)`` for every ``s``, to the bit. Speaker normalisation of a subset
        needs them all: one speaker's slots lie spread over the store, and asking speaker by
        speaker read every statistics shard once per speaker (300 speakers of a 30,000-utterance
        store: minutes). With ``utterances=None`` the speaker tables are read a block of speakers
        at a time (asked speaker by speaker, 3,000 speakers took 51 s). Nothing is kept on the reader.

        Args:
            feature: feature name.
            speakers: the speakers, each composed on its own.
            layers: layer indices to keep (3-D features only; None: all).
            utterances: only these utterances of those speakers; None: all of their utterances
                (the store's speaker tables).

        Returns:
            Speaker name -> FeatureStatistics, in sorted order.

        Raises:
            StoreError: a speaker not in the store, or one with no frames among ``utterances``.
        """
        spec = self._spec(feature)
        sel = self._layers(spec, layers)
        names, counts, wanted = self._wanted_speakers(feature, spec, speakers)
        utterances = self._utterance_list(utterances)
        if utterances is None:  # the speaker tables, their layers kept as read
            totals = {names[k]: (count, mean, m2) for k, count, mean, m2 in self._speaker_rows(feature, counts,
                                                                                                wanted, sel,
                                                                                                names=names)}
            sel = None
        else:
            totals = self._compose_utterances(feature, [names[k] for k in wanted], utterances)
        self._check_unchanged()
        out: dict[str, FeatureStatistics] = {}
        for name in [names[k] for k in wanted]:
            count, mean, m2 = totals.pop(name, (0, None, None))
            if count == 0:
                raise self._no_frames(feature, [name])
            count, mean, m2 = combine_statistics([(count, mean if sel is None else mean[sel],
                                                   m2 if sel is None else m2[sel])])
            out[name] = FeatureStatistics(count=count, mean=mean, variance=m2 / count)
        return out

    def _speaker_rows(self, feature: str, counts: np.ndarray, wanted: list[int],
                      sel: list[int] | None, *, names: list[str]) -> Any:
        """(position, count, mean, M2) of each speaker with frames at the sorted positions ``wanted`` of
        the speaker tables (``sel``: those layers, copied), read a chunk of speakers at a time: a read per
        speaker cost about 17 ms with the names and counts read again (3,000 speakers: 51 s). Each row is
        compared with the CRC finalize recorded for it (``speaker_crc32``), where the store has them."""
        rows = int(self._array(feature, "speaker_mean").chunks[0])
        positions = np.asarray(wanted, np.int64)
        if not len(positions):
            return
        recorded = self._read_whole(f"features/{feature}/speaker_crc32") if statistics_checked(self.attrs) else None
        if recorded is not None and len(recorded) != len(names):
            raise self._damaged(f"features/{feature}/speaker_crc32", f"has {len(recorded)} rows for {len(names)} "
                                f"speakers")
        for block in np.split(positions, np.flatnonzero(np.diff(positions // rows)) + 1):
            lo, hi = int(block[0]), int(block[-1]) + 1
            means = self._values(feature, "speaker_mean", slice(lo, hi))
            m2s = self._values(feature, "speaker_m2", slice(lo, hi))
            if recorded is not None:
                got = speaker_crc([names[k] for k in block], counts[block], means[block - lo], m2s[block - lo],
                                  self.row_checksum)
                wrong = block[got != recorded[block]]
                if len(wrong):
                    raise self._damaged(f"features/{feature}/speaker_mean", f"and speaker_m2 do not hold the figures "
                                        f"that finalize recorded for speaker(s) {[names[k] for k in wrong[:3]]} (their "
                                        f"checksum differs: a chunk file replaced by another or altered)")
            for k in block:
                if counts[k] > 0:
                    mean, m2 = means[k - lo], m2s[k - lo]
                    if sel is not None:  # a copy: the block is not kept alive by a speaker's few layers
                        mean, m2 = mean[sel], m2[sel]
                    yield int(k), int(counts[k]), mean, m2

    def _no_frames(self, feature: str, speakers: Sequence[str] | None) -> StoreError:
        return StoreError(
            f"compose_statistics: no frames of feature {feature!r} for speakers "
            f"{speakers if speakers is not None else 'all'} in store {self.path}; is the store "
            f"finalized and are those speakers' utterances done?"
        )

    @staticmethod
    def _utterance_list(utterances: Sequence[str] | None) -> list[str] | None:
        """``utterances`` as a list (an iterator is read once, here); a string and [] are refused."""
        if utterances is None:
            return None
        if isinstance(utterances, str):
            raise StoreError(f"compose_statistics: utterances={utterances!r}; expected a list of utterance ids.")
        utterances = list(utterances)
        if not utterances:
            raise StoreError("compose_statistics: utterances=[] selects no frames; pass the ids to count, or "
                             "utterances=None for every utterance of the speakers.")
        return utterances

    def _wanted_speakers(self, feature: str, spec: Any,
                         speakers: Sequence[str] | None) -> tuple[list[str], np.ndarray, list[int]]:
        """(speaker names, counts, sorted positions of ``speakers``) of the feature's speaker tables."""
        names = to_str_list(self._values(feature, "speaker_name"))
        counts = self._values(feature, "speaker_count")
        shapes = {a: tuple(self._array(feature, a).shape) for a in ("speaker_mean", "speaker_m2")}
        wanted_shapes = {(len(names), *spec.frame_shape)}
        if len(counts) != len(names) or set(shapes.values()) != wanted_shapes:
            raise self._damaged(f"features/{feature}/speaker_*", f"have inconsistent shapes (speaker_name "
                                f"{len(names)}, speaker_count {len(counts)}, {shapes}; frames "
                                f"{tuple(spec.frame_shape)})")
        if speakers is None:
            wanted = list(range(len(names)))
        else:
            if isinstance(speakers, str):
                raise StoreError(f"compose_statistics: speakers={speakers!r}; expected a list of speaker names.")
            pos = {s: i for i, s in enumerate(names)}
            missing = [s for s in speakers if s not in pos]
            if missing:
                raise StoreError(
                    f"compose_statistics: speakers {missing} are not in store {self.path} "
                    f"(feature {feature!r}, speakers {names[:10]}{'...' if len(names) > 10 else ''})."
                    f"{did_you_mean(str(missing[0]), names)}"
                )
            wanted = sorted({pos[s] for s in speakers})
        return names, counts, wanted

    def _utterance_parts(self, feature: str, speakers: Sequence[str], utterances: Sequence[str],
                         sel: list[int] | None) -> Any:
        """(count, mean, M2) per speaker over the given utterances of those speakers, composed as
        finalize composes the speaker tables (so all of a speaker's utterances give its table's figures)."""
        totals = self._compose_utterances(feature, speakers, utterances)
        for name in sorted(totals):
            count, mean, m2 = totals[name]
            if count > 0:
                yield count, mean if sel is None else mean[sel], m2 if sel is None else m2[sel]

    def _compose_utterances(self, feature: str, speakers: Sequence[str],
                            utterances: Sequence[str]) -> dict[str, Any]:
        """Per-speaker (count, mean, M2) over the given utterances of those speakers."""
        from ._finalize import compose_speakers

        rows = np.array(sorted({self._row(u) for u in utterances}), dtype=np.int64)
        per_row = self._per_row(feature)
        spk = np.asarray(to_str_list(self._read("utterances/speaker")), dtype=object)[rows]
        # A set lookup per row: np.isin on object arrays compares every row with every speaker
        # (75,000 rows x 3,000 speakers: 1.3 s; quadratic in the store's size).
        wanted = set(speakers)
        keep = np.fromiter((s in wanted for s in spk), dtype=bool, count=len(spk))
        rows, spk = rows[keep], spk[keep]
        try:
            spec = self.features[feature]
            totals = compose_speakers(self._array(feature, "stats"), spk, per_row["length"][rows],
                                      per_row["slot"][rows], silent=lambda at: digital_silence(
                                          rows[at], length=per_row["length"], crc32=per_row["crc32"],
                                          frame_shape=spec.frame_shape, dtype=spec.dtype, checksum=self.row_checksum,
                                          frames=self._frames_reader(feature)),
                                      recorded=per_row["stats_crc32"][rows], checksum=self.row_checksum)
        except Exception as exc:  # ValueError: zarr's crc32c check of a damaged statistics chunk
            if not isinstance(exc, ValueError) and as_unreachable(self.location, exc) is None:
                raise
            raise self._damaged(f"features/{feature}/stats", f"cannot be read ({exc})", exc) from None
        return totals
