"""tf.data pipelines over padded in-memory arrays, micro-batches and the streaming shuffle order.

:func:`padded_dataset` feeds whole partitions held as padded arrays (static shapes, length
buckets, per-epoch reshuffles); :func:`micro_batch_size` and :func:`split_batch` cut a batch
too wide for memory into micro-batches whose gradients make one step; :func:`block_shuffle` is
the bounded shuffle of streamed partitions.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["padded_dataset", "block_shuffle", "micro_batch_size", "split_batch", "TRAIN_MICRO_BATCH_MB"]

# Stored frames of one training micro-batch at most (all branches, utterances of max_frames): a
# batch of the recipe's size that would hold more is fed as micro-batches whose gradients make one
# optimiser step. Base-model :all batches (32 x 400 frames x 13 x 768 float16: 256 MB) stay whole;
# large-model ones (25 x 1024) come in 2 (RAVDESS, 250 frames) or 4 (400 frames) micro-batches.
TRAIN_MICRO_BATCH_MB = 256.0
# In-memory batches: parallel gathers from the padded arrays (fixed: see _fixed_pipeline;
# each call copies one batch, up to 160 MB of base-model frames, so not one per core on big hosts).
GATHER_CALLS = min(4, os.cpu_count() or 1)


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
