"""Host memory for the batches handed to TensorFlow: aligned arrays, recycled within a streamed pass.

A streamed pass of base-model ``:all`` frames fills a 160 MB array per batch. Fresh memory is
mapped, faulted in and zeroed by the kernel as the reads first touch it, for every batch.
:class:`BatchBuffers` hands a batch's memory out again once nothing refers to it any more: the
input-only pass took 0.89x the time, streamed epochs 0.87-0.93x, training peak memory 1.01-1.03x
(tests/benchmarks/results/bench_train_buffers_*.md, bench_sweep_buffers_all.md).
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Sequence

import numpy as np

__all__ = ["TENSOR_ALIGNMENT", "BatchBuffers", "aligned_zeros"]

# TensorFlow's tensors are aligned to 64 bytes, and its kernels abort the process (a failed
# IsAligned check) on a tensor over host memory that is not: only such memory is handed over.
TENSOR_ALIGNMENT = 64
# Smaller arrays (eGeMAPS batches, masks) are allocated afresh: recycling them saves nothing.
RECYCLE_MIN_BYTES = 4 * 2**20


def _nbytes(shape: Sequence[int], dtype: Any) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _aligned_view(buffer: np.ndarray, shape: Sequence[int], dtype: Any) -> np.ndarray:
    """The first bytes of ``buffer`` from its first TENSOR_ALIGNMENT boundary, as an array."""
    start = -buffer.ctypes.data % TENSOR_ALIGNMENT
    return buffer[start:start + _nbytes(shape, dtype)].view(dtype).reshape(shape)


def _new_buffer(nbytes: int) -> np.ndarray:
    return np.zeros(nbytes + TENSOR_ALIGNMENT, dtype=np.uint8)


def aligned_zeros(shape: Sequence[int], dtype: Any) -> np.ndarray:
    """``np.zeros(shape, dtype)`` starting on a TENSOR_ALIGNMENT boundary (numpy's large arrays
    start 16 bytes past a page), so that its frames can be handed to TensorFlow without a copy."""
    return _aligned_view(_new_buffer(_nbytes(shape, dtype)), shape, dtype)


def _reference_counts(buffers: Sequence[np.ndarray]) -> list[int]:
    return [sys.getrefcount(b) for b in buffers]


# What _reference_counts gives for a buffer that only its list holds (the list, the loop
# variable, getrefcount's argument), measured rather than assumed, since it varies by interpreter.
_IDLE_REFERENCES = _reference_counts([np.empty(0, dtype=np.uint8)])[0]


class BatchBuffers:
    """Zero-padded batch arrays whose memory is handed out again once nothing refers to it.

    Every array made from a buffer (the batch, its slices and views, a TensorFlow tensor that
    aliases it, a DLPack capsule) keeps a reference to the buffer itself: numpy's views refer to
    the array that owns the memory, and TensorFlow keeps the array it wraps until the tensor
    is freed. So a buffer whose only reference is this pool's is free for the next batch.
    A request takes the smallest free buffer that fits and lets go of the other free ones:
    memory kept idle would be memory that fresh arrays give back, i.e. a higher peak.

    Args:
        limit: Buffers kept at most (about the batches in flight at once: those read ahead,
            plus the ones TensorFlow holds). When all are in use, a request gets a fresh array
            that is not kept.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.recycled = 0  # arrays handed out from recycled memory (for tests and benchmarks)

    def clear(self) -> None:
        """Let go of every buffer (arrays still in use keep theirs): a pass's generator can stay
        suspended after its last batch, and its buffers would otherwise outlive the pass."""
        with self._lock:
            self._buffers = []

    def padded(self, shape: Sequence[int], dtype: Any, lengths: Sequence[int]) -> np.ndarray:
        """An aligned array [rows, frames, ...] whose row k is zero from frame ``lengths[k]`` on.

        Its first ``lengths[k]`` frames of row k are for the caller to fill: recycled memory
        still holds an earlier batch there.
        """
        nbytes = _nbytes(shape, dtype)
        if nbytes < RECYCLE_MIN_BYTES:
            return aligned_zeros(shape, dtype)
        with self._lock:
            counts = _reference_counts(self._buffers)
            free = [b for b, n in zip(self._buffers, counts) if n <= _IDLE_REFERENCES]
            fits = [b for b in free if b.nbytes >= nbytes + TENSOR_ALIGNMENT]
            buffer = min(fits, key=lambda b: b.nbytes) if fits else None
            # The other free buffers go: kept idle, they would be memory that fresh arrays give back.
            self._buffers = [b for b, n in zip(self._buffers, counts) if n > _IDLE_REFERENCES or b is buffer]
            if buffer is None:
                buffer = _new_buffer(nbytes)
                if len(self._buffers) < self.limit:
                    self._buffers.append(buffer)
                return _aligned_view(buffer, shape, dtype)
            self.recycled += 1
        out = _aligned_view(buffer, shape, dtype)
        for k, n in enumerate(lengths):
            out[k, int(n):] = 0
        return out
