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

import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ._buffers import TENSOR_ALIGNMENT, BatchBuffers, aligned_zeros
from ._errors import ConfigError, DataError
from ._normalisation import Normaliser
from ._selection import ResolvedSelection
from ._xla import xla_compiled

__all__ = ["Item", "Source", "FeatureBatches", "foldable", "STATS_SUFFIX", "clear_cache", "read_frames",
           "padded_dataset", "block_shuffle", "share_memory_budget", "micro_batch_size", "split_batch", "CACHE_MODES",
           "TRAIN_MICRO_BATCH_MB"]

CACHE_MODES = ("auto", "off")
# Fused branches may differ by a frame or two (different framing); more than this is an error.
LENGTH_TOLERANCE_FRAMES = 3
LENGTH_TOLERANCE_RATIO = 0.02
# Normalisation works one utterance (or this many MB of its frames) at a time in one reused
# float32 buffer: a whole streamed batch of large-model frames in float32 would be 650 MB.
NORMALISE_MB = 32.0
# Float16 utterances of at most NORMALISE_MB / NORMALISE_BLOCK_MIN padded float32 bytes are
# normalised in blocks (one TensorFlow call per block); larger ones one at a time, below.
NORMALISE_BLOCK_MIN = 8
# Float16 frames are normalised this many at a time by one XLA-compiled TensorFlow function
# (_compiled_normalise): a fixed shape compiles once per frame shape, a ragged one once per length.
NORMALISE_CHUNK = 128
# Streamed batches read ahead of the step: one per worker, and up to 2 per worker within this
# many MB. Base-model :all batches (160 MB) get one per worker: on 2 cores the reads still keep
# ahead of the step, and each batch more ahead is 160 MB more peak (bench_train_ahead_1.md).
STREAM_AHEAD_MB = 400.0
# Raw frames read at once while padded arrays are filled: beside a partition (or batch) only one
# group of its reads exists. A streamed batch of base-model frames (32 x 5 s: 160 MB) stays one
# read; a whole partition was read 256 utterances at a time before (1.3 GB of base-model frames).
READ_GROUP_MB = 256.0
READ_GROUP_ITEMS = 256
# Stored frames of one training micro-batch at most (all branches, utterances of max_frames): a
# batch of the recipe's size that would hold more is fed as micro-batches whose gradients make one
# optimiser step. Base-model :all batches (32 x 400 frames x 13 x 768 float16: 256 MB) stay whole;
# large-model ones (25 x 1024) come in 2 (RAVDESS, 250 frames) or 4 (400 frames) micro-batches.
TRAIN_MICRO_BATCH_MB = 256.0
# In-memory batches: parallel gathers from the padded arrays (fixed: see _fixed_pipeline;
# each call copies one batch, up to 160 MB of base-model frames, so not one per core on big hosts).
GATHER_CALLS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Item:
    """One utterance of a partition."""

    id: str
    speaker: str
    label: int
    duration: float = 0.0


@dataclass
class Source:
    """One input branch: a resolved selection read from one store and its normaliser.

    ``fold``: when the branch is streamed and :func:`foldable`, its frames are fed as stored and
    normalised inside the model (the layer average takes each utterance's mean and std from the
    input ``<branch>_stats`` [2, layers, dim]), so the input pipeline makes no pass over them.
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
        """Normalised, cropped frames of one utterance, one array per source (fused branches aligned)."""
        per_source = [r[0] for r in self._read_sources([item])]
        n = self._aligned_length(item, [len(x) for x, _ in per_source], [f for _, f in per_source])
        return [src.normaliser.apply(x[:n], item.speaker).astype(src.dtype, copy=False)
                for src, (x, _) in zip(self.sources, per_source)]

    # -- streaming ---------------------------------------------------------------------------------
    def load_batch(self, indices: Sequence[int], *, buffers: dict[str, BatchBuffers] | None = None
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Read (batched reads per source), crop, align, pad and normalise the given utterances.

        ``buffers``: branch -> the memory its padded frames may recycle (:meth:`iterate`'s).
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

    def _read_all(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        inputs, lengths = self._padded(self.items)
        return inputs, self.labels, lengths

    def _padded(self, items: Sequence[Item], *, buffers: dict[str, BatchBuffers] | None = None
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Padded, normalised frames of `items` per branch (and "mask"), and their lengths.

        Lengths come first (store metadata), so each padded array is allocated once and filled
        group by group: beside it, only one group's raw reads (READ_GROUP_MB) exist at a time.
        """
        stored = [[int(src.store.num_frames(it.id, src.selection.feature)) for it in items] for src in self.sources]
        per_source = [[self._cropped_length(src, n) for n in ns] for src, ns in zip(self.sources, stored)]
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


def _fixed_pipeline(ds: Any, n_batches: int, *, prefetch: int = 2) -> Any:
    """The end of every input pipeline: known cardinality, ``prefetch`` batches, no autotuning.

    Known cardinality: Keras then knows the epoch length (no 'ran out of data' warnings).
    No autotuning thread: Keras replaces the training iterator at every epoch, and destroying an
    iterator waits for its autotuning thread, which sleeps up to a minute between rounds and is
    not woken: measured on a 10 GB store, 7-18 s of idle process before most epochs (gdb:
    ~RootDataset::Iterator waiting on Model::OptimizeLoop).
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.apply(tf.data.experimental.assert_cardinality(int(n_batches))).prefetch(prefetch).with_options(options)


def micro_batch_size(batch_size: int, utterance_bytes: int, budget_mb: float) -> int:
    """Largest divisor of ``batch_size`` whose batches of ``utterance_bytes`` each fit ``budget_mb``."""
    cap = max(1, int(budget_mb * 2**20 // max(1, utterance_bytes)))
    return max(d for d in range(1, batch_size + 1) if batch_size % d == 0 and d <= cap)


def split_batch(indices: np.ndarray, parts: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One batch's utterance indices as ``parts`` micro-batches, each with its sample weights.

    Keras takes the mean loss of each micro-batch (sum of weighted losses / its size) and averages
    the gradients of ``parts`` micro-batches into one step. An utterance of a micro-batch of n_i out
    of a batch of n gets the weight ``parts * n_i / n``, so the step is the gradient of the batch's
    mean loss whatever the split (the last batch of an epoch is smaller). A part left without
    utterances (a batch smaller than ``parts``) holds the batch's first utterance with weight 0.
    """
    indices = np.asarray(indices)
    out = []
    for part in np.array_split(indices, parts):
        if len(part):
            out.append((part, np.full(len(part), parts * len(part) / len(indices), np.float32)))
        else:
            out.append((indices[:1], np.zeros(1, np.float32)))
    return out


def share_memory_budget(batches: Sequence[FeatureBatches], *, cache: str, budget_mb: float) -> bool:
    """Hold ALL the given partitions in memory when together they fit ``budget_mb``, else stream all.

    Returns whether they are held in memory.
    """
    fits = cache == "auto" and sum(b.estimated_bytes() for b in batches) <= int(budget_mb * 2**20)
    for b in batches:
        b.in_memory = fits
    return fits


def padded_dataset(inputs: dict[str, np.ndarray], labels: np.ndarray, lengths: np.ndarray, *, batch_size: int,
                   shuffle: bool, seed: int, bucket_waste: float | None = 0.5, accumulate: int = 1) -> Any:
    """tf.data pipeline over padded in-memory arrays, static shapes, one epoch per iteration.

    Shuffling is a uniform reshuffle of all utterances every epoch. With length buckets (padding
    would waste more than ``bucket_waste``), utterances are shuffled within their bucket and the
    batches of all buckets come in a new random order every epoch. ``accumulate`` > 1: every
    batch comes as that many micro-batches with sample weights (:func:`split_batch`).
    """
    import tensorflow as tf

    def grab(i: Any, data: Any) -> Any:
        if accumulate > 1:
            i, w = i
            return (*tf.nest.map_structure(lambda d: tf.gather(d, i, axis=0), data), w)
        return tf.nest.map_structure(lambda d: tf.gather(d, i, axis=0), data)

    def split(batch: Any) -> Any:  # split_batch's parts and weights, in TensorFlow
        n = tf.shape(batch, out_type=tf.int64)[0]

        def part(j: Any) -> Any:
            size = n // accumulate + tf.cast(j < n % accumulate, tf.int64)
            start = j * (n // accumulate) + tf.minimum(j, n % accumulate)
            weight = tf.cast(accumulate * size, tf.float32) / tf.cast(n, tf.float32)
            return tf.cond(size > 0, lambda: (batch[start:start + size], tf.fill([size], weight)),
                           lambda: (batch[:1], tf.zeros([1], tf.float32)))

        return tf.data.Dataset.range(accumulate).map(part)

    datasets, n_batches = [], []
    for b, idx in enumerate(_buckets(lengths, batch_size, bucket_waste)):
        t = max(1, int(lengths[idx].max()))
        whole = len(idx) == len(labels) and all(t == v.shape[1] for v in inputs.values())
        part = inputs if whole else {k: v[idx, :t] for k, v in inputs.items()}
        # As Keras' own array adapter: shuffle and batch INDICES, then gather each batch from one
        # copy of the arrays (shuffling the elements themselves copies the partition every epoch).
        # The copy is held in variables: Dataset.from_tensors kept two copies of the arrays for the
        # dataset's lifetime (a 935 MB training partition took 2.3 GB more once its dataset existed).
        with tf.device("/CPU:0"):  # where tf.data runs, as the dataset's own tensors were (never a GPU)
            data = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False),
                                         (part, labels if whole else labels[idx]))
        index = tf.data.Dataset.range(len(idx))
        if shuffle:
            index = index.shuffle(len(idx), seed=seed + b, reshuffle_each_iteration=True)
        index = index.batch(batch_size)
        if accumulate > 1:
            index = index.flat_map(split)
        ds = index.map(lambda *i, data=data: grab(i if accumulate > 1 else i[0], data), num_parallel_calls=GATHER_CALLS)
        datasets.append(ds)
        n_batches.append(-(-len(idx) // batch_size))
    if len(datasets) == 1:
        return _fixed_pipeline(datasets[0], n_batches[0] * accumulate)
    choice = tf.data.Dataset.from_tensor_slices(np.repeat(np.arange(len(datasets), dtype=np.int64), n_batches))
    if shuffle:
        choice = choice.shuffle(int(sum(n_batches)), seed=seed, reshuffle_each_iteration=True)
    if accumulate > 1:  # a batch's micro-batches stay together: one optimiser step
        choice = choice.flat_map(lambda c: tf.data.Dataset.from_tensors(c).repeat(accumulate))
    return _fixed_pipeline(tf.data.Dataset.choose_from_datasets(datasets, choice), sum(n_batches) * accumulate)


def _buckets(lengths: np.ndarray, batch_size: int, bucket_waste: float | None) -> list[np.ndarray]:
    """Index groups padded separately: one group, or up to 4 length buckets when padding wastes too much."""
    longest = max(1, int(lengths.max()))
    waste = 1.0 - float(lengths.sum()) / (len(lengths) * longest)
    if bucket_waste is None or waste <= bucket_waste or len(lengths) < 4 * batch_size:
        return [np.arange(len(lengths))]
    order = np.argsort(lengths, kind="stable")
    n_buckets = min(4, len(lengths) // (2 * batch_size))
    return [np.sort(g) for g in np.array_split(order, n_buckets)]


def block_shuffle(n: int, block_size: int, buffer_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of range(n): blocks of consecutive indices in random order, then a bounded shuffle.

    The blocks are shuffled; a buffer holding up to ``buffer_blocks`` blocks is refilled block by
    block, and each next index is drawn uniformly from the buffer. Reads stay within a few blocks.
    """
    blocks = [np.arange(s, min(n, s + block_size)) for s in range(0, n, block_size)]
    out, buffer = [], []
    for k in rng.permutation(len(blocks)):
        buffer.extend(blocks[k].tolist())
        while len(buffer) > (buffer_blocks - 1) * block_size:
            out.append(buffer.pop(int(rng.integers(len(buffer)))))
    while buffer:
        out.append(buffer.pop(int(rng.integers(len(buffer)))))
    return np.asarray(out, dtype=np.int64)


def _mask(lengths: Sequence[int], length: int) -> np.ndarray:
    return (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


def _normalise_float16(frames: Any, mean: Any, std: Any) -> Any:
    """``float16((float32(frames) - mean) / std)`` in TensorFlow: Normaliser.apply's arithmetic."""
    import tensorflow as tf

    return tf.cast((tf.cast(frames, tf.float32) - mean) / std, tf.float16)


def _shareable(frames: np.ndarray) -> bool:
    """Whether TensorFlow can take these frames as they are (DLPack): contiguous, writable (DLPack
    cannot mark them read-only), not empty, and on a TENSOR_ALIGNMENT boundary."""
    return bool(frames.flags.c_contiguous and frames.flags.writeable and frames.size
                and frames.ctypes.data % TENSOR_ALIGNMENT == 0)


def _tensor_view(frames: np.ndarray) -> Any:
    """A TensorFlow tensor over host frames without copying them (DLPack), else a copy.

    ``tf.convert_to_tensor`` of a numpy array copies it, and ``Tensor.numpy()`` copies back:
    for float16 normalisation those copies took longer than the arithmetic. Frames that are not
    :func:`_shareable` are converted (copied) as before.
    """
    import tensorflow as tf

    if _shareable(frames):
        return tf.experimental.dlpack.from_dlpack(frames.__dlpack__())
    return tf.convert_to_tensor(frames)


def _host_view(tensor: Any) -> np.ndarray:
    """A read-only numpy view of a CPU tensor's values, without the copy ``Tensor.numpy()`` makes."""
    return np.asarray(memoryview(tensor))


_COMPILED: list[Any] = []  # [the compiled float16 normalisation] once built


def _compiled_normalise() -> Any:
    """:func:`_normalise_float16` compiled by XLA, for frames [NORMALISE_CHUNK, ...].

    XLA fuses the two casts and the arithmetic into one pass over the frames: the same values
    bit for bit as TensorFlow's eager ops (a test compares them); stage 2's input-only pass took
    0.83-0.93x the time of the eager ops' (tests/benchmarks/bench_train.py --input-only). Where
    XLA is not available the eager ops run instead.
    """
    if not _COMPILED:
        compiled = xla_compiled(_normalise_float16, np.zeros((1, 1), np.float16), np.zeros(1, np.float32),
                                np.ones(1, np.float32))
        _COMPILED.append(compiled or _normalise_float16)
    return _COMPILED[0]


def _normalise_into(out: np.ndarray, lengths: np.ndarray, norm: Normaliser, speakers: Sequence[str], *,
                    frames: Sequence[np.ndarray] | None = None) -> None:
    """Normalised frames into padded ``out`` [N, T, ...]; the padding (zeros) is left as it is.

    ``frames[k][:lengths[k]]`` are utterance k's frames as read (None: ``out`` holds them and is
    normalised in place). Frames of ``out``'s dtype are normalised straight from the read into
    ``out``, other dtypes (pair-averaged float32) are cast into it first, as before.

    The arithmetic is Normaliser.apply's (float32 subtract, float32 divide), on each utterance's
    own frames. The float16 <-> float32 casts cost more than the arithmetic: numpy casts float16
    element by element (about 1.6 ns each here), so float16 frames go through TensorFlow (the same
    values), handed over and back without copies (:func:`_tensor_view`, :func:`_host_view`):
    small utterances in blocks of at most NORMALISE_MB of float32 per call, larger ones one at a
    time through one XLA-compiled function, NORMALISE_CHUNK frames per call; other dtypes through
    one numpy float32 buffer of at most NORMALISE_MB. ``norm`` needs only ``moments(speaker)``
    (predict's grouped normaliser has it too).
    """
    names = sorted(set(speakers))
    moments = dict(zip(names, (norm.moments(s) for s in names)))
    if any(m is None for m in moments.values()) and not all(m is None for m in moments.values()):
        raise DataError(f"normaliser {type(norm).__name__} normalises some of the speakers {names[:5]} but not all")
    block = int(NORMALISE_MB * 2**20 // max(1, 4 * int(np.prod(out.shape[1:]))))  # padded utterances
    in_blocks = out.dtype == np.float16 and block >= NORMALISE_BLOCK_MIN
    sources: list[np.ndarray] = [out[k] for k in range(len(out))]
    if frames is not None:
        for k, x in enumerate(frames):
            if in_blocks or x.dtype != out.dtype or moments[speakers[k]] is None:
                out[k, : lengths[k]] = x[: lengths[k]]  # normalised in place below (or not at all)
            else:
                sources[k] = x
    if all(m is None for m in moments.values()):
        return
    moments = {s: (m[0].astype(np.float32), m[1].astype(np.float32)) for s, m in moments.items()}
    if out.dtype == np.float16:
        import tensorflow as tf

        if in_blocks:
            # Small frames (a tiny model's, one layer's): blocks of utterances in one call of the
            # same arithmetic, since a call per utterance would cost more than its work; padding stays 0.
            for a in range(0, len(out), block):
                part, n = out[a:a + block], np.asarray(lengths[a:a + block])
                mean = np.stack([moments[s][0] for s in speakers[a:a + block]])[:, None]
                std = np.stack([moments[s][1] for s in speakers[a:a + block]])[:, None]
                real = (np.arange(part.shape[1])[None, :] < n[:, None]).reshape(part.shape[:2] + (1,) * (part.ndim - 2))
                with tf.device("/CPU:0"):
                    done = _normalise_float16(_tensor_view(part), mean, std)
                    part[...] = _host_view(tf.where(real, done, tf.zeros_like(done)))
            return
        compiled, step = _compiled_normalise(), NORMALISE_CHUNK
        scratch = aligned_zeros((step, *out.shape[2:]), np.float16)
        with tf.device("/CPU:0"):
            moments = {s: (tf.constant(m), tf.constant(d)) for s, (m, d) in moments.items()}
            if hasattr(compiled, "get_concrete_function"):
                # Called with the traced signature directly: tf.function's per-call dispatch cost a
                # third of each call (py-spy of the input-only pass).
                mean, std = next(iter(moments.values()))
                compiled = compiled.get_concrete_function(tf.TensorSpec(scratch.shape, tf.float16),
                                                          tf.TensorSpec.from_tensor(mean), tf.TensorSpec.from_tensor(std))

        def normalise(target: np.ndarray, source: np.ndarray, mean: Any, std: Any) -> None:
            n = len(target)
            with tf.device("/CPU:0"):  # host frames: never a round trip through a GPU
                if n == step and _shareable(source):
                    target[...] = _host_view(compiled(_tensor_view(source), mean, std))
                else:  # a last, shorter chunk (padded to the compiled shape), or a read TensorFlow
                    # cannot take as it is (not aligned, read-only): one copy into the aligned scratch
                    scratch[:n] = source
                    target[...] = _host_view(compiled(_tensor_view(scratch), mean, std))[:n]

    else:
        step = max(1, int(NORMALISE_MB * 2**20 // (4 * max(1, int(np.prod(out.shape[2:]))))))  # frames at a time
        buffer = np.empty((min(step, out.shape[1]), *out.shape[2:]), dtype=np.float32)

        def normalise(target: np.ndarray, source: np.ndarray, mean: Any, std: Any) -> None:
            x = buffer[: len(target)]
            np.subtract(source, mean, out=x, dtype=np.float32)
            np.divide(x, std, out=x)
            target[...] = x

    for k, speaker in enumerate(speakers):
        for a in range(0, int(lengths[k]), step):
            b = min(int(lengths[k]), a + step)
            normalise(out[k, a:b], sources[k][a:b], *moments[speaker])
