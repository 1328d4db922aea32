"""Streaming, numerically stable frame statistics (two-pass per utterance, Chan to combine)."""

from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = ["utterance_statistics", "combine_statistics"]

Moments = tuple[int, np.ndarray, np.ndarray]


# Above this many bytes of float64, a layered utterance's statistics are computed one layer at a
# time: the float64 copy of a long large-model utterance (120 s of 25 x 1024) is 1.2 GB whole.
WHOLE_BYTES = 64 * 2**20


def utterance_statistics(frames: np.ndarray) -> Moments:
    """Count, mean and M2 (sum of squared deviations) over axis 0, in float64.

    A long utterance of ``[frames, layers, dim]`` is worked on one layer at a time, with the same
    sums in the same order (numpy adds the rows of an axis-0 reduction one after another when each
    row holds more than one value), so the result is the same to the bit and memory is bounded by
    a layer's float64 copy.

    Args:
        frames: ``[frames, ...]`` array, already cast to the storage dtype so the
            statistics describe exactly what a reader gets back.

    Returns:
        ``(count, mean, m2)``; mean and m2 are zeros when there are no frames.
    """
    shape = np.shape(frames)
    if len(shape) == 3 and shape[0] and shape[2] > 1 and 8 * int(np.prod(shape)) > WHOLE_BYTES:
        mean, m2 = np.empty(shape[1:]), np.empty(shape[1:])
        for layer in range(shape[1]):
            _, mean[layer], m2[layer] = _moments(frames[:, layer])
        return int(shape[0]), mean, m2
    return _moments(frames)


def _moments(frames: np.ndarray) -> Moments:
    """``utterance_statistics`` of one piece, through a float64 copy of it."""
    x = np.array(frames, dtype=np.float64)  # a private float64 copy, worked on in place
    count = int(x.shape[0])
    if count == 0:
        zeros = np.zeros(x.shape[1:], dtype=np.float64)
        return 0, zeros, zeros.copy()
    mean = x.sum(axis=0) / count
    # Two passes (mean first, then squared deviations) avoid the cancellation of sum(x^2) - n*mean^2.
    x -= mean
    np.multiply(x, x, out=x)
    m2 = x.sum(axis=0)
    return count, mean, m2


def _combine_pair(a: Moments, b: Moments) -> Moments:
    na, mean_a, m2_a = a
    nb, mean_b, m2_b = b
    if nb == 0:
        return a
    if na == 0:
        return nb, np.array(mean_b, dtype=np.float64), np.array(m2_b, dtype=np.float64)
    n = na + nb
    delta = mean_b - mean_a
    # Chan et al. parallel update: exact for any split of the data.
    mean = mean_a + delta * (nb / n)
    m2 = m2_a + m2_b + np.square(delta) * (na * nb / n)
    return n, mean, m2


def combine_statistics(parts: Iterable[Moments]) -> Moments:
    """Combine ``(count, mean, m2)`` parts with Chan's parallel formula.

    Args:
        parts: iterable of ``(count, mean, m2)`` with equally shaped float arrays;
            parts with count 0 are skipped.

    Returns:
        ``(count, mean, m2)`` of the union; ``(0, array(0.), array(0.))`` when `parts` is empty.
    """
    total: Moments | None = None
    for part in parts:
        n, mean, m2 = part
        part = (int(n), np.asarray(mean, dtype=np.float64), np.asarray(m2, dtype=np.float64))
        if total is None:
            total = (part[0], part[1].copy(), part[2].copy())
        else:
            total = _combine_pair(total, part)
    if total is None:
        return 0, np.zeros(()), np.zeros(())
    return total
