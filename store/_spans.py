"""Frame spans of a reader: the zarr selection of frames [start, stop) and some layers, and the
asynchronous read of such a span from a frame array, its inner chunks fetched ahead on object storage."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._readcache import prefetch_frames, release_frames


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
