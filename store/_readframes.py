"""The frames of a reader: :class:`FeatureStore`'s reads of one utterance's or a batch's frames,
each checked against the crc32 recorded at commit (``_ReadFramesMixin``), and the zarr selection
and asynchronous read of a frame span, its inner chunks fetched ahead on object storage."""

from __future__ import annotations

import shlex
from typing import Any, Sequence

import numpy as np

from ._errors import StoreDamagedError, StoreError
from ._layout import crc32_rows, to_str_list
from ._location import as_unreachable
from ._readcache import ReadCacheStore, prefetch_frames, release_frames
from ._types import FeatureSpec


def _selection(start: int, stop: int, layers: list[int] | None) -> tuple[Any, ...]:
    """Zarr selection of frames [start, stop) and `layers` (None: all).

    Either form reads only the inner chunks (byte ranges) of those layers. An ascending run of
    layers (``wav2vec2:6``, ``wav2vec2:4-8``) is passed as a slice: zarr's index-array path costs
    more per chunk (one layer by ``read_batch`` of 16, warm: 1.6x the utterances per second;
    tests/benchmarks/bench_store.py's one_layer_batch16 rows).
    """
    if layers is None:
        return (slice(start, stop),)
    if layers == list(range(layers[0], layers[-1] + 1)):
        return (slice(start, stop), slice(layers[0], layers[-1] + 1))
    return (slice(start, stop), layers, slice(None))


async def _read_span(data: Any, start: int, stop: int, sel: list[int] | None, target: np.ndarray | None) -> np.ndarray:
    """Frames [start, stop) of ``sel`` from a zarr AsyncArray (into ``target`` when given). On object
    storage its inner chunks are fetched ahead first: one request per run of adjacent chunks
    (prefetch_frames), instead of zarr's one request after another per chunk."""
    from zarr.core.buffer import default_buffer_prototype

    held = await prefetch_frames(data, start, stop, sel)
    try:
        if target is None:
            return np.asarray(await data.get_orthogonal_selection(_selection(start, stop, sel)))
        wrap = default_buffer_prototype().nd_buffer.from_numpy_array
        await data.get_orthogonal_selection(_selection(start, stop, sel), out=wrap(target))
        return target
    finally:
        release_frames(data, held)


class _ReadFramesMixin:
    """FeatureStore's frame reads."""

    # ------------------------------------------------------------------ frames
    def num_frames(self, utterance_id: str, feature: str) -> int:
        """Number of stored frames of one utterance for `feature`.

        Args:
            utterance_id: The utterance's id.
            feature: A feature of the store.

        Raises:
            StoreError: The id or feature is unknown, or the utterance holds no frames of it.
        """
        self._spec(feature)
        row = self._row(utterance_id)
        length = int(self._per_row(feature)["length"][row])
        if length < 0:
            raise self._not_written(utterance_id, feature)
        return length

    def frame_checksums(self, feature: str, ids: Sequence[str]) -> np.ndarray:
        """The per-layer checksums (``row_checksum``) recorded when each utterance's frames of
        ``feature`` were committed, [len(ids), layers] uint32 in the order of ``ids``: a cheap
        identity of the frames (no frame is read), e.g. to tell a re-extracted store from a copy.

        Args:
            feature: A feature of the store.
            ids: Utterance ids, in the order of the rows returned.
        """
        self._spec(feature)
        crc = self._per_row(feature)["crc32"]
        return np.asarray(crc[[self._row(i) for i in ids]], np.uint32).reshape(len(ids), -1)

    def _holds(self, feature: str) -> np.ndarray:
        """Per row: whether the utterance has frames of ``feature`` (committed, possibly 0 frames)."""
        self._spec(feature)
        return self._per_row(feature)["length"][: len(self._ids)] >= 0

    def _not_written(self, utterance_id: str, feature: str) -> StoreError:
        row = self._row(utterance_id)
        status = to_str_list(self._read("utterances/status", slice(row, row + 1)))[0]
        if status == "done" and int(self._per_row(feature)["capacity"][row]) < 0:
            # Planned without this feature: an extraction of other features added the utterance.
            return StoreError(
                f"utterance {utterance_id!r} has no frames of feature {feature!r} in store {self.path}: an "
                f"extraction of other features added it. Extract {feature} for it (`w2v2ser extract ... "
                f"--store {shlex.quote(str(self.path))} --features {feature}` on the same corpus), or read only "
                f"list_utterances(feature={feature!r}).")
        failed = [f.reason for f in self.list_failures() if f.id == utterance_id and f.feature == feature]
        if status == "done" and failed:  # its other features are stored
            return StoreError(
                f"utterance {utterance_id!r} has no frames of feature {feature!r} in store {self.path}: its "
                f"extraction of {feature} failed ({failed[0]}); its other features are stored. Read only "
                f"list_utterances(feature={feature!r}), or remove the cause outside the file (e.g. raise "
                f"{feature}.max_seconds) and rerun the extraction; audio changed in place is refused (its other "
                f"features came from the old audio): extract a fixed copy into another store.")
        if status == "done":  # finalize records a length for every feature planned for a done utterance
            return self._damaged(f"features/{feature}/length", f"records no frames for utterance "
                                 f"{utterance_id!r}, whose status is 'done'")
        return StoreError(
            f"utterance {utterance_id!r} has no frames for feature {feature!r} in store "
            f"{self.path} (status {status!r}). Read only utterances from "
            f"list_utterances(status='done'), or rerun the extraction to finish the store."
        )

    def _region(self, utterance_id: str, feature: str) -> tuple[int, int, int]:
        """(row, offset, length) of an utterance's frames, checked against the data's extent."""
        row = self._row(utterance_id)
        rows = self._per_row(feature)
        length, off = int(rows["length"][row]), int(rows["offset"][row])
        if length < 0:
            raise self._not_written(utterance_id, feature)
        data = self._array(feature, "data")
        if off < 0 or off + length > data.shape[0]:
            raise self._damaged(f"features/{feature}/offset", f"gives utterance {utterance_id!r} the "
                                f"frames [{off}, {off + length}) outside the data")
        return row, off, length

    def _fetch(self, feature: str, start: int, stop: int, sel: list[int] | None, who: str, *,
               retry: bool = True) -> np.ndarray:
        """Frames [start, stop) of ``sel``; ``retry``: on object storage, a failed read is tried once
        more with fresh shard indexes (see :meth:`_checked`)."""
        data = self._array(feature, "data")
        try:
            if not isinstance(data.store, ReadCacheStore):
                return np.asarray(data.get_orthogonal_selection(_selection(start, stop, sel)))
            from zarr.core.sync import sync

            return sync(_read_span(data.async_array, start, stop, sel, None))
        except Exception as exc:  # corrupt or truncated shards raise codec/IO-specific errors
            if retry and as_unreachable(self.location, exc) is None and self._forget_read_cache():
                return self._fetch(feature, start, stop, sel, who, retry=False)
            raise self._damaged(f"features/{feature}/data", f"cannot be read for {who} "
                                f"({type(exc).__name__}: {exc})", exc) from None

    def _stored_frames(self, feature: str) -> int:
        """Frames `feature` holds over all utterances (a length of -1 marks one without it)."""
        length = self._per_row(feature)["length"]
        return int(length[length > 0].sum(dtype=np.int64))

    def _fetch_many(self, feature: str, spans: list[tuple[int, int]], sel: list[int] | None,
                    first_ids: list[list[str]], into: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """The frames of each span; read into the arrays of ``into`` (one per span) when given."""
        import asyncio

        from zarr.core.sync import sync

        data = self._array(feature, "data").async_array
        targets: list[np.ndarray | None] = list(into) if into is not None else [None] * len(spans)

        async def every() -> list[np.ndarray]:
            return list(await asyncio.gather(*(_read_span(data, a, b, sel, t) for (a, b), t in zip(spans, targets))))

        try:
            return sync(every())  # one hand-over to zarr's event loop per batch
        except Exception as exc:  # a damaged shard: read span by span, so the error names its utterances
            lost = as_unreachable(self.location, exc)
            if lost is not None:  # not damage: no retry per span
                raise lost from None
            self._forget_read_cache()
            fetched = [self._fetch(feature, a, b, sel, f"utterances {who}", retry=False)
                       for (a, b), who in zip(spans, first_ids)]
            for target, frames in zip(targets, fetched):
                if target is not None:
                    target[...] = frames
            return [f if t is None else t for t, f in zip(targets, fetched)]

    def _checked(self, utterance_id: str, feature: str, row: int, frames: np.ndarray,
                 sel: list[int] | None, span: tuple[int, int]) -> np.ndarray:
        # Every read is checked against the per-layer crc32 recorded at commit: a missing inner
        # chunk reads as zeros and some codec pipelines skip checksums on partial shard reads.
        want = self._per_row(feature)["crc32"][row]
        if sel is not None:
            want = want[sel]
        if np.array_equal(crc32_rows(frames, self.row_checksum), want):
            return frames
        # On object storage, a shard index kept from an earlier read makes zarr return other valid
        # chunks when the shard was replaced since (w2v2ser never rewrites a shard object, but a new
        # copy synced over the store does): read once more with fresh indexes (into ``frames``).
        if self._forget_read_cache():
            frames[...] = self._fetch(feature, *span, sel, f"utterance {utterance_id!r}", retry=False)
        if not np.array_equal(crc32_rows(frames, self.row_checksum), want):
            raise self._damaged(f"features/{feature}/data", f"holds frames of utterance {utterance_id!r} "
                                f"that do not match their crc32 (missing, truncated or altered chunks)")
        return frames

    def read_utterance(self, utterance_id: str, feature: str, *,
                       layers: Sequence[int] | None = None) -> np.ndarray:
        """Frames of one utterance in the stored dtype.

        Args:
            utterance_id: utterance id.
            feature: feature name.
            layers: layer indices to read (3-D features only); None reads all layers.

        Returns:
            ``[frames, dim]`` for 2-D features, else ``[frames, len(layers), dim]``.

        Raises:
            StoreError: the utterance is unknown or not written, or its frames are damaged.
        """
        spec = self._spec(feature)
        sel = self._layers(spec, layers)
        row, off, length = self._region(utterance_id, feature)
        frames = self._fetch(feature, off, off + length, sel, f"utterance {utterance_id!r}")
        return self._checked(utterance_id, feature, row, frames, sel, (off, off + length))

    def read_batch(self, ids: Sequence[str], feature: str, *,
                   layers: Sequence[int] | None = None,
                   out: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """Frames of several utterances, each equal to :meth:`read_utterance`'s.

        Utterances that lie in the same shard are fetched by one read spanning them, so a
        batch of neighbours (e.g. one speaker, extracted together) costs one range read per shard.

        Args:
            ids: utterance ids (any order, repeats allowed; any iterable, e.g. a generator).
            feature: feature name.
            layers: layer indices (3-D features only); None reads all layers.
            out: arrays to read into instead, one per id, each shaped and typed like that
                utterance's frames (for example the rows of a padded batch): the frames are
                read straight into them, with no copy. Each utterance is then its own read.

        Returns:
            One array per id, in the order of `ids` (the arrays of `out` when given).
        """
        if isinstance(ids, str):
            raise StoreError(f"read_batch: ids={ids!r}; expected a list of utterance ids.")
        ids = list(ids)  # read twice below: a generator would be exhausted by the first pass
        spec = self._spec(feature)
        sel = self._layers(spec, layers)
        if out is not None:
            return self._read_into(ids, feature, spec, sel, list(out))
        data = self._array(feature, "data")
        shard = int(data.shards[0]) if data.shards is not None else int(data.chunks[0])
        gap = int(data.chunks[0])  # a span never reads more than one unwanted chunk between two utterances
        regions = [(off, length, row, uid) for uid in ids
                   for row, off, length in [self._region(uid, feature)]]
        order = sorted(set(regions))
        spans: list[tuple[int, int, list[tuple[int, int, int, str]]]] = []
        k = 0
        while k < len(order):
            # One span per run of nearby utterances inside one shard (the last may cross into the next).
            start, first_shard, j = order[k][0], order[k][0] // shard, k
            stop = start
            while j < len(order) and order[j][0] // shard == first_shard and order[j][0] <= stop + gap:
                stop = max(stop, order[j][0] + order[j][1])
                j += 1
            spans.append((start, stop, order[k:j]))
            k = j
        try:
            fetched = self._fetch_many(feature, [(a, b) for a, b, _ in spans], sel,
                                       [[m[3] for m in members][:5] for _, _, members in spans])
        except StoreDamagedError:
            if all(len(members) == 1 for _, _, members in spans):
                raise
            # A span also reads the gaps between its utterances, where frames superseded by `verify
            # --repair` may lie damaged: read each utterance's own frames (damage there names it).
            spans = [(off, off + length, [(off, length, row, uid)]) for off, length, row, uid in order]
            fetched = self._fetch_many(feature, [(a, b) for a, b, _ in spans], sel, [[m[0][3]] for _, _, m in spans])
        out: dict[str, np.ndarray] = {}
        for (start, _, members), span in zip(spans, fetched):
            for off, length, row, uid in members:
                frames = np.ascontiguousarray(span[off - start:off - start + length])
                out[uid] = self._checked(uid, feature, row, frames, sel, (off, off + length))
        # An id asked for twice (oversampling) gets an array of its own each time: changing one in
        # place must not change the other.
        given: set[str] = set()
        result = []
        for uid in ids:
            result.append(out[uid].copy() if uid in given else out[uid])
            given.add(uid)
        return result

    def _read_into(self, ids: list[str], feature: str, spec: FeatureSpec, sel: list[int] | None,
                   out: list[np.ndarray]) -> list[np.ndarray]:
        regions = [self._region(uid, feature) for uid in ids]
        frame = spec.frame_shape if sel is None else (len(sel), *spec.frame_shape[1:])
        if len(out) != len(ids):
            raise StoreError(f"read_batch: {len(out)} arrays in out for {len(ids)} ids; expected one per id.")
        for uid, (_, _, length), a in zip(ids, regions, out):
            if (not isinstance(a, np.ndarray) or a.shape != (length, *frame) or a.dtype != np.dtype(spec.dtype)
                    or not a.flags.writeable or not a.flags.c_contiguous):
                got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                if isinstance(a, np.ndarray):  # say which property failed when dtype and shape match
                    got += "".join(text for bad, text in ((not a.flags.writeable, ", read-only"),
                                                          (not a.flags.c_contiguous, ", not C-contiguous")) if bad)
                raise StoreError(f"read_batch: out array for utterance {uid!r} is {got}; expected a writable, "
                                 f"C-contiguous {spec.dtype} array of shape {(length, *frame)} (its frames of "
                                 f"feature {feature!r}).")
        self._fetch_many(feature, [(off, off + length) for _, off, length in regions], sel,
                         [[uid] for uid in ids], into=out)
        return [self._checked(uid, feature, row, a, sel, (off, off + length))
                for uid, (row, off, length), a in zip(ids, regions, out)]
