"""Read cache of a store on object storage: shard indexes kept, and each read's chunks fetched
ahead in few requests (issue 10). Used by readers only (:mod:`._reader`, :mod:`._readframes`)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
from typing import Any

import zarr
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.codecs import ShardingCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import StorePath


# A reader of a store on object storage pays one request per byte range that zarr asks for:
# zarr's sharding codec fetches a shard's index again for every read, then each inner chunk (one
# layer of 128 frames) in turn, one request after the other (measured: README, "Stores on object
# storage", and tests/benchmarks/bench_store_s3.py).
SHARD_INDEX_CACHE = 1024  # shard indexes a reader keeps (one is 16 bytes per inner chunk + 4: ~20 KB)
# Bytes between two wanted chunks of a shard that one request reads rather than split in two: about
# what an object store serves in the time of one more request (and all gaps together no more than
# the wanted chunks plus PREFETCH_SLACK, see _merged). Shards written through zarr order their
# chunks along a Z-curve, so one utterance's layers lie near each other, not back to back.
PREFETCH_GAP = 2**20
PREFETCH_SLACK = 2**16  # unwanted bytes any read may fetch, so that a few small chunks take one request


class ReadCacheStore(zarr.storage.WrapperStore):  # type: ignore[type-arg]
    """A read-only store of object storage for a reader: it keeps the shard indexes it fetched
    (least recently used first out), and serves byte ranges that :func:`prefetch_frames` read ahead.

    It holds only bytes as the store gave them: zarr still decodes every index and chunk and
    checks its crc32c. A reader forgets everything (:meth:`forget`) when a read fails.

    A kept index is right as long as its shard object is: w2v2ser writes each shard key once (a
    unit plans new regions at the data's end, finalize only deletes orphans). A copy synced over
    the store can replace one; a reader then reads once more with fresh indexes (FeatureStore).
    """

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self._indexes: collections.OrderedDict[tuple[str, int], Any] = collections.OrderedDict()
        self._ahead: dict[str, list[tuple[int, int, Any]]] = {}  # touched on zarr's event loop only

    def _with_store(self, store: Any) -> "ReadCacheStore":
        return type(self)(store)

    def forget(self) -> None:
        """Drop the cached shard indexes (a read failed, or the store may have changed). Called from
        any thread: a new dict, so a read on zarr's event loop never sees one half cleared."""
        self._indexes = collections.OrderedDict()

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        if isinstance(byte_range, SuffixByteRequest):  # a shard's index (at the shard's end)
            indexes, name = self._indexes, (key, byte_range.suffix)
            cached = indexes.get(name)
            if cached is not None:
                indexes.move_to_end(name)
                return cached
            value = await self._store.get(key, prototype, byte_range)
            if value is not None:
                indexes[name] = value
                while len(indexes) > SHARD_INDEX_CACHE:
                    indexes.popitem(last=False)
            return value
        if isinstance(byte_range, RangeByteRequest):
            for start, stop, value in self._ahead.get(key, ()):
                if start <= byte_range.start and byte_range.end <= stop:
                    return value[byte_range.start - start:byte_range.end - start]
        return await self._store.get(key, prototype, byte_range)

    async def read_ahead(self, key: str, ranges: list[tuple[int, int]]) -> list[tuple[int, int, Any]]:
        """Fetch byte ranges of ``key`` (concurrently), to :meth:`hold` once all of a read's are there."""
        values = await asyncio.gather(*(self._store.get(key, default_buffer_prototype(), RangeByteRequest(a, b))
                                        for a, b in ranges))
        return [(a, b, v) for (a, b), v in zip(ranges, values) if v is not None and len(v) == b - a]

    def hold(self, key: str, held: list[tuple[int, int, Any]]) -> None:
        """Serve ranges that :meth:`read_ahead` fetched, until :meth:`release`."""
        self._ahead.setdefault(key, []).extend(held)

    def release(self, key: str, held: list[tuple[int, int, Any]]) -> None:
        """Stop serving ranges that :meth:`hold` took."""
        kept = [entry for entry in self._ahead.get(key, ()) if not any(entry is h for h in held)]
        if kept:
            self._ahead[key] = kept
        else:
            self._ahead.pop(key, None)


def _merged(ranges: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """Byte ranges joined across the unwanted bytes between them, smallest gaps first, each at most
    ``gap`` and all together at most the wanted bytes plus PREFETCH_SLACK: a read never fetches much
    more than twice those."""
    ranges = sorted(ranges)
    budget = sum(b - a for a, b in ranges) + PREFETCH_SLACK
    joined: set[int] = set()
    for size, i in sorted((ranges[i + 1][0] - ranges[i][1], i) for i in range(len(ranges) - 1)):
        if size > min(gap, budget):
            break
        budget -= max(size, 0)
        joined.add(i)
    out: list[list[int]] = []
    for i, (a, b) in enumerate(ranges):
        if i - 1 in joined:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


async def prefetch_frames(array: Any, start: int, stop: int, layers: list[int] | None) -> list[tuple[str, Any]]:
    """Read ahead the inner chunks that frames [start, stop) of ``layers`` (None: all) of a sharded
    array on a :class:`ReadCacheStore` need: one request per run of adjacent chunks in a shard,
    all shards' requests at once. ``array``: a zarr AsyncArray. Returns what to release.

    zarr's own sharding codec decodes each shard index (its crc32c checked, and cached by the
    store) and says where each chunk lies; the chunks themselves are decoded by zarr afterwards,
    as on every read. Anything unexpected (no sharding, another zarr) reads nothing ahead.
    """
    store = array.store_path.store
    if not isinstance(store, ReadCacheStore) or stop <= start:
        return []
    try:
        plan = await _plan(array, start, stop, layers)
    except Exception:  # zarr internals this cannot use (another zarr), or an index zarr cannot read either:
        return []  # zarr reads the chunks itself, and says what is wrong. Only read_ahead's bytes are served,
        # each an exact range of its key, so a wrong plan costs requests, never wrong frames.
    done = await asyncio.gather(*(store.read_ahead(key, ranges) for key, ranges in plan), return_exceptions=True)
    for failed in done:  # keep nothing of a read that fails
        if isinstance(failed, BaseException):
            raise failed
    # Held only now, with no await left before the caller's try/finally releases them: a read
    # cancelled while fetching (wait_for, a loop shut down) leaves nothing served for ever.
    held = list(zip((key for key, _ in plan), done))
    for key, ranges in held:
        store.hold(key, ranges)
    return held  # type: ignore[return-value]


async def _plan(array: Any, start: int, stop: int, layers: list[int] | None) -> list[tuple[str, list[tuple[int, int]]]]:
    """The byte ranges to read ahead per shard key (see :func:`prefetch_frames`); it relies on zarr's
    internals, so any of its errors means: read nothing ahead."""
    store = array.store_path.store
    codec = array.metadata.codecs[0] if len(array.metadata.codecs) == 1 else None
    if not isinstance(codec, ShardingCodec):
        return []
    shard = [int(s) for s in array.metadata.chunk_grid.chunk_shape]
    inner = [int(c) for c in codec.chunk_shape]
    per_shard = tuple(s // c for s, c in zip(shard, inner))
    if any(s % c for s, c in zip(shard, inner)) or shard[1:] != [int(n) for n in array.shape[1:]]:
        return []  # shards cut across a frame: not a layout w2v2ser writes
    rest = [range(n) for n in per_shard[1:]]
    if layers is not None and len(rest) >= 1:
        rest[0] = sorted({layer // inner[1] for layer in layers})
    prefix = f"{array.path}/" if array.path else ""

    async def one(s: int) -> tuple[str, list[tuple[int, int]]]:
        key = prefix + array.metadata.encode_chunk_key((s, *([0] * (len(shard) - 1))))
        lo, hi = max(start, s * shard[0]) - s * shard[0], min(stop, (s + 1) * shard[0]) - s * shard[0]
        coords = list(itertools.product(range(lo // inner[0], -(-hi // inner[0])), *rest))
        if len(coords) == math.prod(per_shard):  # zarr reads a shard it needs whole in one request itself
            return key, []
        # zarr's own reading of the index (its crc32c checked); the store keeps its bytes
        index = await codec._load_shard_index_maybe(StorePath(store, key), per_shard)
        wanted = [index.get_chunk_slice(c) for c in coords] if index is not None else []
        return key, _merged([(int(a), int(b)) for a, b in (w for w in wanted if w is not None)], PREFETCH_GAP)

    planned = await asyncio.gather(*(one(s) for s in range(start // shard[0], (stop - 1) // shard[0] + 1)),
                                   return_exceptions=True)  # none left running when one fails
    for failed in planned:
        if isinstance(failed, BaseException):
            raise failed
    return [(key, ranges) for key, ranges in planned if ranges]  # type: ignore[misc]


def release_frames(array: Any, held: list[tuple[str, Any]]) -> None:
    """Release what :func:`prefetch_frames` read ahead."""
    store = array.store_path.store
    for key, ranges in held:
        store.release(key, ranges)
