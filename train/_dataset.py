"""Batches of one partition from the feature store: whole-partition arrays or float16 streaming.

Both modes read with the store's batched reads (``FeatureStore.read_batch`` when the store has
it, else one ``read_utterance`` per utterance), keep the FIRST ``max_frames`` frames (as the
released code does), average eGeMAPS frames in pairs, normalise, align fused branches to the
shorter length and add a ``mask`` input (1 = real frame). Frames stay in the store's dtype
(float16 wav2vec2 stays float16; the model casts inside the graph, layer by layer).

* **In memory** (``cache="auto"`` and the padded partition fits ``cache_budget_mb``): the whole
  partition is read ONCE per run, cropped, pair-averaged and normalised in vectorised numpy and
  held as padded arrays [utterances, frames, ...]. Keras gets them through ``tf.data`` with static
  shapes (shuffled indices, each batch gathered from one copy); shuffling is a full uniform
  reshuffle of the utterances at every epoch. When padding would waste more than ``bucket_waste`` of the
  array, utterances are bucketed by length (each bucket padded to its own longest).
* **Streaming** (larger selections, e.g. wav2vec2:all on IEMOCAP): batches are read on the fly by
  ``workers`` threads, ahead of the step, in the stored dtype. Order per epoch: the store order is
  cut into blocks of ``block_size`` consecutive utterances, the blocks are shuffled, and utterances
  are then drawn uniformly from a buffer of ``shuffle_blocks`` blocks: each epoch is a new
  permutation in which an utterance moves at most about ``block_size * shuffle_blocks``
  positions away from where its block landed. Memory is bounded by the batches in flight.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ._buffers import BatchBuffers, aligned_zeros
from ._errors import ConfigError, DataError
from ._framenorm import _normalise_into
from ._normalisation import Normaliser
from ._selection import ResolvedSelection
from ._tfdata import _fixed_pipeline, block_shuffle, padded_dataset, split_batch

__all__ = ["Item", "Source", "FeatureBatches", "foldable", "STATS_SUFFIX", "clear_cache", "read_frames",
           "share_memory_budget", "CACHE_MODES"]

CACHE_MODES = ("auto", "off")
# Fused branches may differ by a frame or two (different framing); more than this is an error.
LENGTH_TOLERANCE_FRAMES = 3
LENGTH_TOLERANCE_RATIO = 0.02
# Streamed batches read ahead of the step: one per worker, and up to 2 per worker within this
# many MB. Base-model :all batches (160 MB) get one per worker: on 2 cores the reads still keep
# ahead of the step, and each batch more ahead is 160 MB more peak (bench_train_ahead_1.md).
STREAM_AHEAD_MB = 400.0
# Raw frames read at once while padded arrays are filled: beside a partition (or batch) only one
# group of its reads exists. A streamed batch of base-model frames (32 x 5 s: 160 MB) stays one
# read; a whole partition was read 256 utterances at a time before (1.3 GB of base-model frames).
READ_GROUP_MB = 256.0
READ_GROUP_ITEMS = 256


@dataclass(frozen=True)
class Item:
    """One utterance of a partition.

    Attributes:
        id: Utterance id in the store.
        speaker: Its speaker (the normaliser's key).
        label: Class index (into the protocol's class names).
        duration: Audio seconds (to estimate the partition's size in memory); 0 when unknown.
    """

    id: str
    speaker: str
    label: int
    duration: float = 0.0


@dataclass
class Source:
    """One input branch: a resolved selection read from one store and its normaliser.

    Attributes:
        branch: Model input name of the branch (``main``, ``fusion``).
        store: The open :class:`~w2v2ser.store.FeatureStore` the selection reads.
        selection: The resolved feature selection (feature and layers).
        normaliser: The branch's fitted normaliser.
        fold: When the branch is streamed and :func:`foldable`, its frames are fed as stored and
            normalised inside the model (the layer average takes each utterance's mean and std from
            the input ``<branch>_stats`` [2, layers, dim]), so the input pipeline makes no pass over them.
    """

    branch: str
    store: Any
    selection: ResolvedSelection
    normaliser: Normaliser
    fold: bool = False

    @property
    def dtype(self) -> np.dtype:
        """Dtype of the frames fed to the model: float16 when stored so, else float32."""
        spec = self.store.features.get(self.selection.feature) if hasattr(self.store, "features") else None
        stored = np.dtype(getattr(spec, "dtype", "float32") or "float32")
        return np.dtype(np.float16) if stored == np.float16 else np.dtype(np.float32)

    @property
    def frame_bytes(self) -> int:
        """Bytes of one frame as fed to the model."""
        return int(np.prod(self.selection.frame_shape)) * self.dtype.itemsize


STATS_SUFFIX = "_stats"  # input <branch>_stats: per-utterance (mean, std) of a folded branch


def foldable(selection: ResolvedSelection, dtype: Any, normaliser: Any) -> bool:
    """Whether a branch's normalisation can run inside the model's layer average: float16 frames of
    several layers (as stored, no pair averaging) that are normalised (mode other than "none")."""
    return (len(selection.frame_shape) == 2 and np.dtype(dtype) == np.float16 and not selection.pair_average
            and getattr(normaliser, "mode", "none") != "none")


def clear_cache() -> None:
    """Kept for compatibility: stage 2 no longer keeps a process-wide frame cache (each run reads its
    partitions once and drops them with the run), so there is nothing to free."""


def read_frames(store: Any, ids: Sequence[str], feature: str, layers: Sequence[int] | None, *,
                out: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """Frames of several utterances in the stored dtype, with the store's batched read when it has one.

    ``out`` (one array per id, shaped like its frames): read into those arrays, which are returned.
    """
    read_batch = getattr(store, "read_batch", None)
    if read_batch is not None and out is not None:
        return list(read_batch(list(ids), feature, layers=layers, out=list(out)))
    if read_batch is not None:
        frames = [np.asarray(a) for a in read_batch(list(ids), feature, layers=layers)]
    else:
        frames = [np.asarray(store.read_utterance(i, feature, layers=layers)) for i in ids]
    if out is None:
        return frames
    for target, x in zip(out, frames):
        target[...] = x
    return list(out)


class FeatureBatches:
    """Padded, masked batches of one partition (in memory when it fits, else streamed).

    Args:
        items: Utterances of the partition.
        sources: Input branches ("main" and optionally "fusion").
        classes: Class names (labels index into them).
        batch_size: Utterances per batch.
        max_frames: Crop length in frames of the (pair-averaged) feature; None = no crop.
        shuffle: Reshuffle utterances at every pass (epoch).
        seed: Seed of the shuffling generator.
        cache: "auto" (hold the whole partition in memory when it fits ``cache_budget_mb``) or
            "off" (always stream).
        cache_budget_mb: Memory budget of the in-memory partition (padded arrays, stored dtype).
        workers: Threads reading batches ahead of the training step (streaming).
        bucket_waste: In memory, bucket utterances by length when padding to the longest would
            waste more than this fraction of the array (None: never bucket).
        block_size: Streaming shuffle: consecutive utterances per block.
        shuffle_blocks: Streaming shuffle: blocks in the shuffle buffer.
        accumulate: Feed every batch as this many micro-batches with sample weights (see
            :func:`split_batch`), for an optimiser that accumulates as many gradients per step:
            the same steps as whole batches, with a fraction of the memory.
    """

    def __init__(self, items: Sequence[Item], sources: Sequence[Source], *, classes: Sequence[str],
                 batch_size: int, max_frames: int | None, shuffle: bool = False, seed: int = 0,
                 cache: str = "auto", cache_budget_mb: float = 2048, workers: int = 1,
                 bucket_waste: float | None = 0.5, block_size: int = 32, shuffle_blocks: int = 8,
                 accumulate: int = 1) -> None:
        if cache not in CACHE_MODES:
            raise ConfigError(f"unknown cache mode {cache!r}; expected one of {list(CACHE_MODES)}")
        if not items:
            raise DataError("a partition has no utterances; check the protocol split and the store")
        self.items = list(items)
        self.sources = list(sources)
        self.classes = tuple(classes)
        bad = next((item for item in self.items if isinstance(item.label, (str, bool))
                    or not isinstance(item.label, (int, np.integer)) or not 0 <= item.label < len(self.classes)), None)
        if bad is not None:  # a class name here failed only when its batch was read, deep in numpy
            raise DataError(f"FeatureBatches: utterance {bad.id!r} has label {bad.label!r}; expected an index into "
                            f"classes {list(self.classes)} (e.g. classes.index({bad.label!r}) for a class name)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"FeatureBatches: batch_size={batch_size!r}; expected a positive integer "
                              f"(utterances per batch)")
        self.batch_size = int(batch_size)
        self.accumulate = max(1, int(accumulate))
        self.max_frames = max_frames
        self.shuffle = shuffle
        self.workers = max(1, int(workers))
        self.bucket_waste = bucket_waste
        self.block_size, self.shuffle_blocks = max(1, int(block_size)), max(1, int(shuffle_blocks))
        self.seed = int(seed)
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(len(self.items))
        self._lock = threading.Lock()
        self.input_seconds = 0.0
        self.in_memory = cache == "auto" and self.estimated_bytes() <= int(cache_budget_mb * 2**20)
        self._arrays: tuple[dict[str, np.ndarray], np.ndarray, np.ndarray] | None = None

    @property
    def cache_bytes(self) -> int:
        """Bytes held in memory (estimated until the partition is read); 0 when streaming."""
        if not self.in_memory:
            return 0
        if self._arrays is None:
            return self.estimated_bytes()
        return int(sum(a.nbytes for a in self._arrays[0].values()))

    def __len__(self) -> int:
        """Batches per pass."""
        return -(-len(self.items) // self.batch_size)

    @property
    def labels(self) -> np.ndarray:
        """Integer labels in item order."""
        return np.array([it.label for it in self.items], dtype=np.int32)

    @property
    def frame_shapes(self) -> dict[str, tuple[int, ...]]:
        """Branch -> shape of one frame."""
        return {s.branch: s.selection.frame_shape for s in self.sources}

    @property
    def dtypes(self) -> dict[str, np.dtype]:
        """Branch -> dtype of the frames fed to the model."""
        return {s.branch: s.dtype for s in self.sources}

    @property
    def folded(self) -> tuple[str, ...]:
        """Branches fed as stored with their statistics (``<branch>_stats``): ``fold`` sources, streamed."""
        return () if self.in_memory else tuple(s.branch for s in self.sources if s.fold)

    def estimated_bytes(self) -> int:
        """Estimated size of the partition as padded arrays in the fed dtype (from durations)."""
        total = 0
        for src in self.sources:
            sel = src.selection
            raw_rate = sel.frame_rate * (2 if sel.pair_average else 1)
            frames = [int(it.duration * raw_rate) + 1 for it in self.items]
            if sel.pair_average:
                frames = [max(1, n // 2) for n in frames]
            longest = max(frames) if self.max_frames is None else min(max(frames), self.max_frames)
            total += len(self.items) * longest * src.frame_bytes
        return total

    def new_epoch_order(self) -> np.ndarray:
        """Draw (when shuffling) and return the utterance order of the next streamed pass."""
        if self.shuffle:
            self._order = block_shuffle(len(self.items), self.block_size, self.shuffle_blocks, self._rng)
        return self._order

    def __getitem__(self, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Batch ``index`` of the current order (negative from the end; ``IndexError`` past it)."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"batch {index} of a FeatureBatches of {n} batches")
        index %= n
        return self.load_batch(self._order[index * self.batch_size:(index + 1) * self.batch_size])

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """``for inputs, labels in batches``: one pass, as :meth:`iterate`."""
        return self.iterate()

    # -- per utterance ---------------------------------------------------------------------------
    def _check(self, src: Source, item_id: str, x: np.ndarray) -> None:
        sel = src.selection
        expected = (len(sel.layers), sel.dim) if sel.layers is not None else (sel.dim,)
        if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            raise DataError(f"utterance {item_id!r}, feature {sel.feature!r} in store {str(src.store.path)!r}: "
                            f"frames of shape {x.shape}, expected [frames, {', '.join(map(str, expected))}]; "
                            f"the store is inconsistent (run `w2v2ser store verify`)")

    def _crop(self, src: Source, x: np.ndarray) -> tuple[np.ndarray, int]:
        """Crop (and pair-average) one utterance's stored frames; returns (frames, uncropped length)."""
        sel = src.selection
        if sel.layers is not None and not sel.weighted:
            x = x[:, 0]
        full = len(x)
        if sel.pair_average:
            full //= 2
            if self.max_frames is not None:
                x = x[: 2 * self.max_frames]
            if x.shape[0] >= 2:
                n = x.shape[0] // 2
                x = x[: 2 * n].astype(np.float32).reshape(n, 2, *x.shape[1:]).mean(axis=1)
        if self.max_frames is not None:
            x = x[: self.max_frames]
        return x, full

    def _read_sources(self, items: Sequence[Item], sources: Sequence[Source] | None = None
                      ) -> list[list[tuple[np.ndarray, int]]]:
        """Per source, per item: (cropped un-normalised frames, uncropped length), batched reads."""
        out = []
        for src in self.sources if sources is None else sources:
            sel = src.selection
            layers = list(sel.layers) if sel.layers is not None else None
            raw = read_frames(src.store, [it.id for it in items], sel.feature, layers)
            cropped = []
            for it, x in zip(items, raw):
                self._check(src, it.id, x)
                cropped.append(self._crop(src, x))
            out.append(cropped)
        return out

    def _aligned_length(self, item: Item, lengths: Sequence[int], fulls: Sequence[int]) -> int:
        if len(lengths) > 1:
            lo, hi = min(fulls), max(fulls)
            if hi - lo > max(LENGTH_TOLERANCE_FRAMES, LENGTH_TOLERANCE_RATIO * hi):
                names = ", ".join(f"{s.selection.text}: {n}" for s, n in zip(self.sources, fulls))
                raise DataError(f"utterance {item.id!r}: fused features have {names} frames; they must agree "
                                f"within {LENGTH_TOLERANCE_FRAMES} frames (check both stores were extracted "
                                f"from the same audio)")
        return min(lengths)

    def load_item(self, item: Item) -> list[np.ndarray]:
        """Normalised, cropped frames of one utterance, one array per source (fused branches aligned).

        Args:
            item: One of :attr:`items`.
        """
        per_source = [r[0] for r in self._read_sources([item])]
        n = self._aligned_length(item, [len(x) for x, _ in per_source], [f for _, f in per_source])
        return [src.normaliser.apply(x[:n], item.speaker).astype(src.dtype, copy=False)
                for src, (x, _) in zip(self.sources, per_source)]

    # -- streaming ---------------------------------------------------------------------------------
    def load_batch(self, indices: Sequence[int], *, buffers: dict[str, BatchBuffers] | None = None
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Read (batched reads per source), crop, align, pad and normalise the given utterances.

        Args:
            indices: Positions in :attr:`items`.
            buffers: Branch -> the memory its padded frames may recycle (:meth:`iterate`'s).

        Returns:
            Model inputs by name, and the labels.
        """
        start = time.perf_counter()
        items = [self.items[i] for i in indices]
        inputs, lengths = self._padded(items, buffers=buffers)
        y = np.array([it.label for it in items], dtype=np.int32)
        with self._lock:
            self.input_seconds += time.perf_counter() - start
        return inputs, y

    def iterate(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """One streamed pass (new order when shuffling), read ahead by ``workers`` threads.

        One batch per worker is read ahead, and up to 2 per worker within STREAM_AHEAD_MB:
        large-model batches (25 x 1024 layers) would otherwise hold GBs.
        """
        order = self.new_epoch_order()
        chunks = [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(len(self))]
        weights: list[np.ndarray | None] = [None] * len(chunks)
        if self.accumulate > 1:  # (inputs, labels, sample weights) per micro-batch
            chunks, weights = map(list, zip(*(p for c in chunks for p in split_batch(c, self.accumulate))))

        # The batches of this pass recycle the memory of earlier ones that nothing refers to any
        # more. workers + 2 buffers are kept (about as many batches as are in flight at once); 2 per
        # worker + 3 held idle ones and raised the training peak 1.30x (bench_train_buffers_limit7.md).
        buffers = {src.branch: BatchBuffers(max(1, self.workers) + 2) for src in self.sources}

        def load(k: int) -> tuple:
            batch = self.load_batch(chunks[k], buffers=buffers)
            return batch if weights[k] is None else (*batch, weights[k])

        def release() -> None:
            # Keras stops after the known number of batches, leaving this generator suspended
            # until its iterator goes (during validation): it should hold no memory by then.
            for buffer in buffers.values():
                buffer.clear()

        if self.workers <= 1:
            for k in range(len(chunks)):
                batch = [load(k)]
                if k == len(chunks) - 1:
                    release()
                yield batch.pop()
            return
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            pending = deque([pool.submit(load, 0)] if chunks else [])
            submitted = len(pending)
            while pending:
                batch = [pending.popleft().result()]
                size = sum(a.nbytes for a in batch[0][0].values())
                ahead = max(self.workers, min(2 * self.workers, int(STREAM_AHEAD_MB * 2**20 // max(1, size))))
                while submitted < len(chunks) and len(pending) < ahead:
                    pending.append(pool.submit(load, submitted))
                    submitted += 1
                if not pending:
                    release()
                yield batch.pop()  # not left in this frame, which outlives the pass (see release)

    # -- in memory ---------------------------------------------------------------------------------
    def arrays(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """The whole partition as padded arrays: (inputs incl. "mask", labels, lengths); read once."""
        if self._arrays is None:
            start = time.perf_counter()
            self._arrays = self._read_all()
            self.input_seconds += time.perf_counter() - start
        return self._arrays

    def _cropped_length(self, src: Source, stored: int) -> tuple[int, int]:
        """(frames after crop and pair averaging, uncropped length) of an utterance of ``stored`` frames."""
        if src.selection.pair_average:
            n, full = (stored // 2 if stored >= 2 else stored), stored // 2
        else:
            n, full = stored, stored
        return (n if self.max_frames is None else min(n, self.max_frames)), full

    def _source_lengths(self, items: Sequence[Item]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
        """Per source: the stored frames of each of ``items`` (store metadata, no frames read), and
        :meth:`_cropped_length` of each."""
        stored = [[int(src.store.num_frames(it.id, src.selection.feature)) for it in items] for src in self.sources]
        return stored, [[self._cropped_length(src, n) for n in ns] for src, ns in zip(self.sources, stored)]

    def frameless_ids(self) -> list[str]:
        """Ids of the items that give no frame (after the crop) of some source, from the stores' frame
        counts; no frames are read."""
        _, per_source = self._source_lengths(self.items)
        return [it.id for k, it in enumerate(self.items) if any(ps[k][0] == 0 for ps in per_source)]

    def _read_all(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        inputs, lengths = self._padded(self.items)
        return inputs, self.labels, lengths

    def _padded(self, items: Sequence[Item], *, buffers: dict[str, BatchBuffers] | None = None
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Padded, normalised frames of `items` per branch (and "mask"), and their lengths.

        Lengths come first (store metadata), so each padded array is allocated once and filled
        group by group: beside it, only one group's raw reads (READ_GROUP_MB) exist at a time.
        """
        stored, per_source = self._source_lengths(items)
        lengths = np.array([self._aligned_length(it, [ps[k][0] for ps in per_source], [ps[k][1] for ps in per_source])
                            for k, it in enumerate(items)], dtype=np.int64)
        length = max(1, int(lengths.max()))
        speakers = [it.speaker for it in items]
        inputs: dict[str, np.ndarray] = {}
        folded = self.folded
        for src, frames_stored in zip(self.sources, stored):
            shape = (len(items), length, *src.selection.frame_shape)
            out = (buffers[src.branch].padded(shape, src.dtype, lengths) if buffers is not None
                   else aligned_zeros(shape, src.dtype))
            frame_bytes = out.itemsize * int(np.prod(out.shape[2:], dtype=np.int64))  # one stored frame as read
            s = 0
            while s < len(items):
                e, size = s, 0  # a group: at most READ_GROUP_ITEMS items and READ_GROUP_MB of reads
                while e < len(items) and e - s < READ_GROUP_ITEMS and (
                        e == s or size + frames_stored[e] * frame_bytes <= READ_GROUP_MB * 2**20):
                    size += frames_stored[e] * frame_bytes
                    e += 1
                if src.branch in folded:  # normalised inside the model, with the statistics below
                    self._fill_rows(src, items[s:e], out[s:e], lengths[s:e], frames_stored[s:e])
                else:
                    read = self._read_group(src, items[s:e], lengths[s:e])
                    _normalise_into(out[s:e], lengths[s:e], src.normaliser, speakers[s:e], frames=read)
                    del read
                s = e
            inputs[src.branch] = out
            if src.branch in folded:
                moments = {spk: src.normaliser.moments(spk) for spk in sorted(set(speakers))}
                inputs[src.branch + STATS_SUFFIX] = np.stack([np.stack(moments[spk]) for spk in speakers]).astype(np.float32)
        inputs["mask"] = _mask(lengths, length)
        return inputs, lengths

    def _read_group(self, src: Source, items: Sequence[Item], lengths: np.ndarray) -> list[np.ndarray]:
        """Cropped, un-normalised frames of `items` from `src`, at least `lengths` frames each."""
        read = [x for x, _ in self._read_sources(items, sources=[src])[0]]
        for it, x, n in zip(items, read, lengths):
            if len(x) < n:
                raise DataError(f"utterance {it.id!r}, feature {src.selection.feature!r}: {len(x)} frames "
                                f"read, the store's length table says more; the store is inconsistent "
                                f"(run `w2v2ser store verify`)")
        return read

    def _fill_rows(self, src: Source, items: Sequence[Item], out: np.ndarray, lengths: np.ndarray,
                   stored: Sequence[int]) -> None:
        """Stored frames of `items` into the rows of `out`. Uncropped ones are read straight into
        their rows: copying reads had been half of the reader threads' time."""
        whole = [k for k in range(len(items)) if lengths[k] == stored[k]]
        if whole:
            sel = src.selection
            read_frames(src.store, [items[k].id for k in whole], sel.feature,
                        list(sel.layers) if sel.layers is not None else None,
                        out=[out[k, :lengths[k]] for k in whole])
        cropped = [k for k in range(len(items)) if lengths[k] != stored[k]]
        if cropped:
            for k, x in zip(cropped, self._read_group(src, [items[k] for k in cropped], lengths[cropped])):
                out[k, :lengths[k]] = x[:lengths[k]]

    def as_tf_dataset(self) -> Any:
        """A prefetching tf.data.Dataset of (inputs, labels); each iteration is one epoch."""
        if self.in_memory:
            inputs, labels, lengths = self.arrays()
            ds = padded_dataset(inputs, labels, lengths, batch_size=self.batch_size, shuffle=self.shuffle,
                                seed=self.seed, bucket_waste=self.bucket_waste, accumulate=self.accumulate)
            self._arrays = None  # the dataset holds its own copy; keep one copy of the partition, not two
            return ds
        import tensorflow as tf

        spec = {s.branch: tf.TensorSpec((None, None, *s.selection.frame_shape), tf.as_dtype(s.dtype))
                for s in self.sources}
        for s in self.sources:
            if s.branch in self.folded:
                spec[s.branch + STATS_SUFFIX] = tf.TensorSpec((None, 2, *s.selection.frame_shape), tf.float32)
        spec["mask"] = tf.TensorSpec((None, None), tf.float32)
        signature = (spec, tf.TensorSpec((None,), tf.int32))
        if self.accumulate > 1:
            signature += (tf.TensorSpec((None,), tf.float32),)
        ds = tf.data.Dataset.from_generator(self.iterate, output_signature=signature)
        # iterate() reads ahead itself; one converted batch beside it keeps the conversion to a
        # tensor off the step without holding a further batch (160 MB of base-model frames).
        return _fixed_pipeline(ds, len(self) * self.accumulate, prefetch=1)


def share_memory_budget(batches: Sequence[FeatureBatches], *, cache: str, budget_mb: float) -> bool:
    """Hold ALL the given partitions in memory when together they fit ``budget_mb``, else stream all.

    Returns whether they are held in memory.
    """
    fits = cache == "auto" and sum(b.estimated_bytes() for b in batches) <= int(budget_mb * 2**20)
    for b in batches:
        b.in_memory = fits
    return fits


def _mask(lengths: Sequence[int], length: int) -> np.ndarray:
    return (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)
