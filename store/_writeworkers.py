"""The workers' side of a store writer: :class:`StoreWriter`'s pending rows, frame checks, single
utterance writes, recorded failures and silent audio, and finalize (``_WriteWorkersMixin``)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ._errors import StoreError
from ._finalize import finalize_store
from ._journal import resolve_events
from ._layout import rows_of_missing_data_shards, to_str_list
from ._units import release_buffers
from ._writeerrors import _no_space_is_clear


def _all_finite(x: np.ndarray) -> bool:
    """np.isfinite(x).all(); for float16 from the bits (exponent all ones: inf or NaN), since
    numpy converts every float16 element to float32 for isfinite (10x slower on [T, 13, 768])."""
    if x.dtype == np.float16:
        return x.size == 0 or int((x.view(np.uint16) & 0x7FFF).max()) < 0x7C00
    return bool(np.isfinite(x).all())


class _WriteWorkersMixin:
    """StoreWriter's writes of workers and finalize."""

    # ------------------------------------------------------------------ workers
    def pending(self, features: Sequence[str]) -> list[int]:
        """Row indices that still lack a committed frame set for any of `features`.

        Rows failed earlier are included (a rerun retries them); rows with an unreadable
        header (nothing planned) are not.

        Args:
            features: Feature names of the store.
        """
        missing = self.pending_by_feature(features)
        return sorted(set().union(*missing.values()))

    def pending_by_feature(self, features: Sequence[str]) -> dict[str, list[int]]:
        """Per feature of `features`, the rows that still lack a committed frame set of it (as :meth:`pending`).

        Args:
            features: Feature names of the store.
        """
        names = list(features)
        for name in names:
            self._spec(name)
        state = resolve_events(self.location)
        num_samples = self._column("num_samples")[:]
        planned = {name: self._feature(name, "capacity")[:] for name in names}
        n = len(num_samples)
        out: dict[str, list[int]] = {}
        for f in names:
            committed = state.committed_rows(f, n)
            missing = (planned[f][:n] >= 0) & ~committed
            if self.location.is_local:  # committed into a shard file that is gone: extracted again
                pair = state.pair(f)
                missing[rows_of_missing_data_shards(
                    self._feature(f, "data"), rows=np.flatnonzero(committed), offset=pair.column("offset", n),
                    length=pair.column("length", n), crc32=pair.column("crc32", n), checksum=self.row_checksum)] = True
            out[f] = np.flatnonzero(missing & (num_samples >= 0)).tolist()
        return out

    def _row_id(self, index: int) -> str:
        if self._ids is None or index >= len(self._ids):
            self._ids = to_str_list(self._column("id")[:])
        if not 0 <= index < len(self._ids):
            raise StoreError(f"row index {index} is out of range for store {self.path} ({len(self._ids)} rows).")
        return self._ids[index]

    def _check_frames(self, uid: str, index: int, name: str, frames: np.ndarray) -> np.ndarray:
        """Frames cast to the stored dtype, after checking shape, planned size and finiteness."""
        spec = self._spec(name)
        x = np.asarray(frames)
        if x.ndim != 1 + len(spec.frame_shape) or x.shape[1:] != spec.frame_shape:
            raise StoreError(
                f"utterance {uid!r}, feature {name!r}: frames have shape {x.shape}; expected "
                f"(frames, {', '.join(map(str, spec.frame_shape))}). Check the extractor output."
            )
        cap = int(self._planned(name)[index]) if index < len(self._planned(name)) else -1
        if cap < 0:
            self._capacity.pop(name, None)
            cap = int(self._planned(name)[index]) if index < len(self._planned(name)) else -1
        if cap < 0:
            raise StoreError(
                f"utterance {uid!r} (row {index}) has no planned frames for feature {name!r}; plan it "
                f"with StoreWriter.plan(...) including this feature before writing."
            )
        if x.shape[0] > cap:
            raise StoreError(
                f"utterance {uid!r}, feature {name!r}: {x.shape[0]} frames exceed the planned "
                f"capacity of {cap}; the extractor's max_frames underestimates. Fix max_frames "
                f"and rerun the same extraction (failed utterances are extracted again)."
            )
        with np.errstate(over="ignore", invalid="ignore"):  # reported below as non-finite
            stored = np.ascontiguousarray(x.astype(spec.dtype, copy=False))
        if not _all_finite(stored):
            bad = int(np.size(stored) - np.count_nonzero(np.isfinite(stored)))
            hint = (f"float16 holds at most +-65504: extract {name} as float32 (--option {name}.dtype=float32) "
                    f"into a new store to keep this file" if spec.dtype == "float16" else
                    "the extractor returned NaN or inf for this file: check its audio")
            raise StoreError(
                f"utterance {uid!r}, feature {name!r}: {bad} non-finite values after casting to {spec.dtype}; {hint}."
            )
        return stored

    def write_utterance(self, index: int, features: Mapping[str, np.ndarray], *,
                        audio_sha256: str, duration: float) -> None:
        """Write and commit one utterance as a work unit of its own (in the planning process).

        Several processes may call it on one local store if each has its own ``journal``
        (the data arrays grow under a file lock); on object storage only one process may.
        Extraction workers use :meth:`plan_units` / :meth:`open_unit`, which batch many rows.

        Args:
            index: store row (as returned by :meth:`plan`).
            features: frames per feature name, ``[frames, dim]`` or ``[frames, layers, dim]``.
            audio_sha256: hex digest of the audio file.
            duration: audio duration in seconds.
        """
        uid = self._row_id(index)
        for name, frames in features.items():  # refuse bad frames before space is taken
            self._check_frames(uid, index, name, frames)
        (unit,) = self.plan_units([[index]], list(features))
        with self.open_unit(unit) as writer:
            writer.add(index, features, audio_sha256=audio_sha256, duration=duration)

    @_no_space_is_clear
    def record_failure(self, index: int, *, reason: str, feature: str | None = None) -> None:
        """Record that an utterance (or one feature of it) could not be extracted.

        Args:
            index: The utterance's row.
            reason: What went wrong and what to do.
            feature: The feature that failed, or None for the whole utterance.
        """
        uid = self._row_id(index)
        if feature is not None:
            self._spec(feature)
        self._journal.append([{"event": "failure", "index": int(index), "id": uid,
                               "feature": feature, "reason": str(reason)}])

    @_no_space_is_clear
    def record_silent_audio(self, ids: Sequence[str]) -> None:
        """Record utterances whose audio is digital silence after mixing to mono (every sample 0),
        for ``store info`` and extract's note (single process: the planning driver).

        Args:
            ids: Ids of the silent utterances (merged with those recorded before).
        """
        meta = self._meta
        known = list(meta.get("silent_audio", []))
        merged = sorted(set(known) | {str(uid) for uid in ids})
        if merged != known:
            meta["silent_audio"] = merged
            self._set_meta(meta)

    @_no_space_is_clear
    def finalize(self) -> None:
        """Merge journals into lengths, crc32, status, failures and per-speaker statistics.

        Sets ``complete`` only when every planned utterance x feature is done or failed.
        """
        release_buffers()
        finalize_store(self.location, self._group)
