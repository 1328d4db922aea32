"""Streaming batches from the feature store.

Each batch reads its utterances from the Zarr store on demand (only the selected layers),
normalises them, averages eGeMAPS frames in pairs, crops to the protocol maximum (the FIRST
``max_frames`` frames, as the released code does), aligns fused branches to the shorter
length, pads to the longest utterance of the batch and adds a ``mask`` input (1 = real frame).

Memory: only the batches in flight are held, so peak memory does not grow with the store.
``cache="auto"`` additionally keeps the cropped frames in a process-wide cache when the
selection's estimated total size fits ``cache_budget_mb`` (eGeMAPS, spectrogram, single
wav2vec2 layers on small corpora); otherwise (e.g. all 13 layers of a large corpus) it streams.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ._errors import ConfigError, DataError
from ._normalisation import Normaliser
from ._selection import ResolvedSelection

__all__ = ["Item", "Source", "FeatureBatches", "clear_cache", "CACHE_MODES"]

CACHE_MODES = ("auto", "off")
# Fused branches may differ by a frame or two (different framing); more than this is an error.
LENGTH_TOLERANCE_FRAMES = 3
LENGTH_TOLERANCE_RATIO = 0.02


@dataclass(frozen=True)
class Item:
    """One utterance of a partition."""

    id: str
    speaker: str
    label: int
    duration: float = 0.0


@dataclass
class Source:
    """One input branch: a resolved selection read from one store and its normaliser."""

    branch: str
    store: Any
    selection: ResolvedSelection
    normaliser: Normaliser


class _FrameCache:
    """Process-wide LRU cache of cropped (un-normalised) frames, bounded in bytes."""

    def __init__(self) -> None:
        self._data: OrderedDict[tuple, tuple[np.ndarray, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.budget = 0

    def get(self, key: tuple) -> tuple[np.ndarray, int] | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: tuple, value: tuple[np.ndarray, int], budget: int) -> None:
        with self._lock:
            if key in self._data:
                return
            self.budget = max(self.budget, budget)
            self._data[key] = value
            self._bytes += value[0].nbytes
            while self._bytes > self.budget and self._data:
                _, (old, _) = self._data.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0
            self.budget = 0


_CACHE = _FrameCache()


def clear_cache() -> None:
    """Drop every cached frame (frees the ``cache="auto"`` memory)."""
    _CACHE.clear()


class FeatureBatches:
    """Padded, masked batches of one partition, read from the store on the fly.

    Args:
        items: Utterances of the partition.
        sources: Input branches ("main" and optionally "fusion").
        classes: Class names (labels index into them).
        batch_size: Utterances per batch.
        max_frames: Crop length in frames of the (pair-averaged) feature; None = no crop.
        shuffle: Reshuffle utterances at every pass (epoch).
        seed: Seed of the shuffling generator.
        cache: "auto" (cache when the cropped frames fit ``cache_budget_mb``) or "off".
        cache_budget_mb: Memory budget of the cache.
        workers: Threads reading batches ahead of the training step.
    """

    def __init__(self, items: Sequence[Item], sources: Sequence[Source], *, classes: Sequence[str],
                 batch_size: int, max_frames: int | None, shuffle: bool = False, seed: int = 0,
                 cache: str = "auto", cache_budget_mb: float = 2048, workers: int = 1) -> None:
        if cache not in CACHE_MODES:
            raise ConfigError(f"unknown cache mode {cache!r}; expected one of {list(CACHE_MODES)}")
        if not items:
            raise DataError("a partition has no utterances; check the protocol split and the store")
        self.items = list(items)
        self.sources = list(sources)
        self.classes = tuple(classes)
        self.batch_size = int(batch_size)
        self.max_frames = max_frames
        self.shuffle = shuffle
        self.workers = max(1, int(workers))
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(len(self.items))
        self._lock = threading.Lock()
        self.input_seconds = 0.0
        budget = int(cache_budget_mb * 2**20)
        self.cache_bytes = budget if cache == "auto" and self.estimated_bytes() <= budget else 0

    def __len__(self) -> int:
        return -(-len(self.items) // self.batch_size)

    @property
    def labels(self) -> np.ndarray:
        """Integer labels in item order."""
        return np.array([it.label for it in self.items], dtype=np.int32)

    def estimated_bytes(self) -> int:
        """Estimated size of all cropped frames of this partition (from durations)."""
        total = 0
        for src in self.sources:
            sel = src.selection
            raw_rate = sel.frame_rate * (2 if sel.pair_average else 1)
            per_frame = int(np.prod(sel.frame_shape)) * 4
            cap = None if self.max_frames is None else self.max_frames * (2 if sel.pair_average else 1)
            for it in self.items:
                n = int(it.duration * raw_rate) + 1
                total += (n if cap is None else min(n, cap)) * per_frame
        return total

    def new_epoch_order(self) -> np.ndarray:
        """Draw (when shuffling) and return the utterance order of the next pass."""
        if self.shuffle:
            self._order = self._rng.permutation(len(self.items))
        return self._order

    def __getitem__(self, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        return self.load_batch(self._order[index * self.batch_size:(index + 1) * self.batch_size])

    def _read(self, src: Source, item: Item) -> tuple[np.ndarray, int]:
        sel = src.selection
        key = (str(src.store.path), sel.feature, sel.layers, sel.pair_average, self.max_frames, item.id)
        if self.cache_bytes:
            hit = _CACHE.get(key)
            if hit is not None:
                return hit
        layers = list(sel.layers) if sel.layers is not None else None
        x = np.asarray(src.store.read_utterance(item.id, sel.feature, layers=layers))
        expected = (len(layers), sel.dim) if layers is not None else (sel.dim,)
        if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            raise DataError(f"utterance {item.id!r}, feature {sel.feature!r} in store {str(src.store.path)!r}: "
                            f"frames of shape {x.shape}, expected [frames, {', '.join(map(str, expected))}]; "
                            f"the store is inconsistent (run `w2v2ser store verify`)")
        if layers is not None and not sel.weighted:
            x = x[:, 0]
        if sel.pair_average:
            if self.max_frames is not None:
                x = x[: 2 * self.max_frames]
            if x.shape[0] >= 2:
                n = x.shape[0] // 2
                x = x[: 2 * n].astype(np.float32).reshape(n, 2, *x.shape[1:]).mean(axis=1)
            full = int(src.store.num_frames(item.id, sel.feature)) // 2 if self.max_frames is not None else len(x)
        else:
            full = x.shape[0]
        if self.max_frames is not None:
            x = x[: self.max_frames]
        x = np.ascontiguousarray(x)
        if self.cache_bytes:
            _CACHE.put(key, (x, full), self.cache_bytes)
        return x, full

    def load_item(self, item: Item) -> list[np.ndarray]:
        """Normalised, cropped frames of one utterance, one array per source (fused branches aligned)."""
        frames, fulls = [], []
        for src in self.sources:
            x, full = self._read(src, item)
            frames.append(src.normaliser.apply(x, item.speaker))
            fulls.append(full)
        if len(frames) > 1:
            lo, hi = min(fulls), max(fulls)
            if hi - lo > max(LENGTH_TOLERANCE_FRAMES, LENGTH_TOLERANCE_RATIO * hi):
                names = ", ".join(f"{s.selection.text}: {n}" for s, n in zip(self.sources, fulls))
                raise DataError(f"utterance {item.id!r}: fused features have {names} frames; they must agree "
                                f"within {LENGTH_TOLERANCE_FRAMES} frames (check both stores were extracted "
                                f"from the same audio)")
            n = min(len(f) for f in frames)
            frames = [f[:n] for f in frames]
        return frames

    def load_batch(self, indices: Sequence[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Read, normalise, crop, align and pad the given utterances."""
        start = time.perf_counter()
        per_item = [self.load_item(self.items[i]) for i in indices]
        length = max(1, max(len(f[0]) for f in per_item))
        inputs: dict[str, np.ndarray] = {}
        for b, src in enumerate(self.sources):
            out = np.zeros((len(per_item), length, *src.selection.frame_shape), dtype=np.float32)
            for i, frames in enumerate(per_item):
                out[i, : len(frames[b])] = frames[b]
            inputs[src.branch] = out
        mask = np.zeros((len(per_item), length), dtype=np.float32)
        for i, frames in enumerate(per_item):
            mask[i, : len(frames[0])] = 1.0
        inputs["mask"] = mask
        y = np.array([self.items[i].label for i in indices], dtype=np.int32)
        with self._lock:
            self.input_seconds += time.perf_counter() - start
        return inputs, y

    def iterate(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """One pass over the partition (new order when shuffling), read ahead by ``workers`` threads."""
        order = self.new_epoch_order()
        chunks = [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(len(self))]
        if self.workers <= 1:
            for c in chunks:
                yield self.load_batch(c)
            return
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            pending = [pool.submit(self.load_batch, c) for c in chunks[: 2 * self.workers]]
            for i in range(len(chunks)):
                batch = pending[i].result()
                if i + 2 * self.workers < len(chunks):
                    pending.append(pool.submit(self.load_batch, chunks[i + 2 * self.workers]))
                pending[i] = None  # type: ignore[call-overload]  # release the batch once yielded
                yield batch

    def as_tf_dataset(self) -> Any:
        """A prefetching tf.data.Dataset of (inputs, labels); each iteration is one epoch."""
        import tensorflow as tf

        spec = {s.branch: tf.TensorSpec((None, None, *s.selection.frame_shape), tf.float32) for s in self.sources}
        spec["mask"] = tf.TensorSpec((None, None), tf.float32)
        ds = tf.data.Dataset.from_generator(self.iterate, output_signature=(spec, tf.TensorSpec((None,), tf.int32)))
        # Known cardinality: Keras then knows the epoch length (no 'ran out of data' warnings).
        return ds.apply(tf.data.experimental.assert_cardinality(len(self))).prefetch(2)
