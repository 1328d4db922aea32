"""Normalisation of padded frames in place: float16 through (XLA-compiled) TensorFlow, without copies.

:func:`_normalise_into` applies a normaliser's per-speaker moments to a padded array [N, T, ...]
with Normaliser.apply's arithmetic; float16 frames are handed to TensorFlow and back as views
(DLPack, memoryview), other dtypes go through one numpy float32 buffer.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._buffers import TENSOR_ALIGNMENT, aligned_zeros
from ._errors import DataError
from ._normalisation import Normaliser
from ._xla import xla_compiled

__all__ = ["_normalise_into", "NORMALISE_MB", "NORMALISE_BLOCK_MIN", "NORMALISE_CHUNK"]

# Normalisation works one utterance (or this many MB of its frames) at a time in one reused
# float32 buffer: a whole streamed batch of large-model frames in float32 would be 650 MB.
NORMALISE_MB = 32.0
# Float16 utterances of at most NORMALISE_MB / NORMALISE_BLOCK_MIN padded float32 bytes are
# normalised in blocks (one TensorFlow call per block); larger ones one at a time, below.
NORMALISE_BLOCK_MIN = 8
# Float16 frames are normalised this many at a time by one XLA-compiled TensorFlow function
# (_compiled_normalise): a fixed shape compiles once per frame shape, a ragged one once per length.
NORMALISE_CHUNK = 128


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
