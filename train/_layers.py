"""Custom Keras layers of the heads (registered so ``model.keras`` loads back)."""

from __future__ import annotations

import random
from typing import Any, Callable

import keras
import numpy as np
from keras import ops

from ._xla import xla_compiled

__all__ = ["LayerWeightedAverage", "MaskedMean", "FrameMask", "seed_draws", "seeded_dense"]


def seed_draws(seed: int | None) -> Callable[[], int | None]:
    """The integer seeds of one model's initializers and dropout layers, in the order they are built.

    Keras draws such seeds from Python's global ``random`` when a layer gets none. In a Dask
    worker other threads draw from it too, so the same seeded run started with different weights
    in a worker than alone (first-epoch validation loss 1.874 or 1.878 against 1.881). A seeded
    model takes them from its own generator instead: the same sequence Keras draws right after
    ``keras.utils.set_random_seed(seed)``, so the weights equal those of a model built alone.
    ``seed`` None: every draw is None (Keras draws as usual).
    """
    if seed is None:
        return lambda: None
    rng = random.Random(seed)
    return lambda: rng.randint(1, int(1e9))  # keras.src.random.seed_generator.make_default_seed's range


def seeded_dense(units: int, activation: str, name: str, draw: Callable[[], int | None]) -> keras.layers.Dense:
    """A Dense layer (Keras' default Glorot-uniform kernel) whose kernel seed is the next of ``draw``."""
    return keras.layers.Dense(units, activation=activation, name=name,
                              kernel_initializer=keras.initializers.GlorotUniform(seed=draw()))


def _unrolled_terms(x: Any, factor: Callable[[int], Any]) -> Any:
    """sum_l float32(x[:, :, l, :]) * factor(l) as one expression (L is static), for XLA to fuse."""
    import tensorflow as tf

    acc = tf.cast(x[:, :, 0, :], tf.float32) * factor(0)
    for i in range(1, int(x.shape[2])):
        acc = acc + tf.cast(x[:, :, i, :], tf.float32) * factor(i)
    return acc


def _unrolled_sum(x: Any, w: Any) -> Any:
    """sum_l float32(x[:, :, l, :]) * w[l]: the weighted sum of frames."""
    return _unrolled_terms(x, lambda i: w[i])


def _unrolled_scaled_sum(x: Any, scale: Any, shift: Any) -> Any:
    """sum_l float32(x[:, :, l, :]) * scale[:, None, l, :] - shift[:, None, :]: the weighted sum of
    frames normalised per utterance (:func:`_weighted_layer_sum` with stats)."""
    return _unrolled_terms(x, lambda i: scale[:, None, i, :]) - shift[:, None, :]


def _time_dot(x: Any, g: Any) -> Any:
    """sum_t float32(x[:, t, l, :]) * g[:, t, :] -> [B, L, D]: the per-utterance sums the layer
    weights' gradient needs when the frames are normalised in the layer average."""
    import tensorflow as tf

    return tf.reduce_sum(tf.cast(x, tf.float32) * g[:, :, None, :], axis=1)


# Utterances per call of the compiled _time_dot: XLA keeps the float32 product of its whole input
# (+380 MB for a batch of 32 x 250 x 13 x 768 in one call); pairs took 27 ms for that batch
# against 36 ms one by one, 39 ms in one call and 70 ms for TensorFlow's ops one layer at a time.
TIME_DOT_UTTERANCES = 2


# Once probed: [_unrolled_sum compiled or None]; where XLA works, _unrolled_scaled_sum and _time_dot
# compiled follow when a model first normalises in its layer average.
_FORWARD: list[Any] = []
_PROBE_FRAMES = np.zeros((1, 1, 2, 1), np.float16)  # frames of the probe call of each compiled function


def _compiled_forward() -> Any:
    """sum_l float32(x[:, :, l, :]) * w[l], compiled by XLA; None where XLA cannot compile it.

    XLA fuses the L casts, multiplies and adds into one pass over x, with no float32 copy of a
    slice. On a batch of 32 x 250 x 13 x 768 the Dense head's prediction took 0.35x and its train
    step 0.75x the time of TensorFlow's ops one layer at a time (tests/benchmarks/bench_head_step.py).
    It rounds differently from those ops: the compiler fuses each multiply-add into one FMA (one
    rounding instead of two), so the sum differs in the last bits; over 8 seeds every run reached
    the same UAR (tests/benchmarks/compare_layer_forward.py).
    """
    if not _FORWARD:
        _FORWARD.append(xla_compiled(_unrolled_sum, _PROBE_FRAMES, np.ones(2, np.float32), gpu=True))
    return _FORWARD[0]


def _compiled_normalised() -> tuple[Any, Any]:
    """(:func:`_unrolled_scaled_sum`, :func:`_time_dot`) compiled by XLA, probed on first use; (None,
    None) where :func:`_compiled_forward` is None (no XLA, or ``_FORWARD = [None]``: the ops' path)."""
    if _compiled_forward() is None:
        return None, None
    if len(_FORWARD) == 1:
        _FORWARD.append(xla_compiled(_unrolled_scaled_sum, _PROBE_FRAMES, np.ones((1, 2, 1), np.float32),
                                     np.zeros((1, 1), np.float32), gpu=True))
        _FORWARD.append(xla_compiled(_time_dot, _PROBE_FRAMES, np.ones((1, 1, 1), np.float32), gpu=True))
    return _FORWARD[1], _FORWARD[2]


def _weighted_layer_sum(x: Any, w: Any, stats: Any = None) -> Any:
    """sum_l float32(x[:, :, l, :]) * w[l] for float16 x [B, T, L, D], without float32 [B, T, L, D].

    With ``stats`` [B, 2, L, D] (each utterance's mean and std), the frames are normalised first:
    sum_l w[l] * (x_l - mean_l) / std_l, computed as sum_l x_l * (w[l] / std_l) - sum_l w[l] * mean_l
    / std_l, so normalising costs no pass over x of its own (the input pipeline then hands over the
    frames as stored: :class:`Source` ``fold``).

    Casting x as a whole would make a float32 copy (320 MB at batch 32 x 250 x 13 x 768), and an
    unrolled sum of TensorFlow ops keeps all L float32 slices for the gradient of w. The forward
    is one XLA-compiled pass (:func:`_compiled_forward`; where XLA is missing, a sequential loop
    of TensorFlow ops). Without stats the gradient of w is a sequential loop that holds one slice
    at a time (XLA's full reductions were slower here); with stats it needs per-utterance sums
    over time, which XLA computes fastest (:data:`TIME_DOT_UTTERANCES` utterances per call). x and
    stats get no gradient (they are data).
    """
    import tensorflow as tf

    n_layers = int(x.shape[2])

    def loop(body: Callable[[Any, Any], Any], init: Any) -> Any:
        return tf.while_loop(lambda i, _: i < n_layers, lambda i, acc: (i + 1, body(i, acc)), (tf.constant(0), init),
                             parallel_iterations=1)[1]

    def layer(i: Any) -> Any:
        return tf.cast(x[:, :, i, :], tf.float32)

    def summed(factor: Callable[[Any], Any]) -> Any:  # where XLA is missing: one layer at a time
        shape = tf.concat([tf.shape(x)[:2], tf.shape(x)[3:]], axis=0)
        return loop(lambda i, acc: acc + layer(i) * factor(i), tf.zeros(shape, tf.float32))

    if stats is None:
        def forward(w: Any) -> Any:
            compiled = _compiled_forward()
            return compiled(x, w) if compiled is not None else summed(lambda i: w[i])

        def grad_w(g: Any) -> Any:  # dL/dw_l = sum(g * x_l)
            return loop(lambda i, dw: dw.write(i, tf.reduce_sum(layer(i) * g)), tf.TensorArray(tf.float32, n_layers)).stack()
    else:
        mean, std = tf.cast(stats[:, 0], tf.float32), tf.cast(stats[:, 1], tf.float32)

        compiled_sum, compiled_dot = _compiled_normalised()

        def forward(w: Any) -> Any:
            scale = w[None, :, None] / std  # [B, L, D]
            shift = tf.reduce_sum(scale * mean, axis=1)  # [B, D]
            if compiled_sum is not None:
                return compiled_sum(x, scale, shift)
            return summed(lambda i: scale[:, None, i, :]) - shift[:, None, :]

        def grad_w(g: Any) -> Any:  # dL/dw_l = sum(g * (x_l - mean_l) / std_l): sums over time first
            g_time = tf.reduce_sum(g, axis=1)  # [B, D]
            if compiled_dot is not None:  # [B, L, D] sums, TIME_DOT_UTTERANCES utterances per call
                k = TIME_DOT_UTTERANCES
                sums = tf.while_loop(
                    lambda i, _: i * k < tf.shape(x)[0],
                    lambda i, acc: (i + 1, acc.write(i, compiled_dot(x[i * k:(i + 1) * k], g[i * k:(i + 1) * k]))),
                    (tf.constant(0), tf.TensorArray(tf.float32, 0, dynamic_size=True, infer_shape=False)),
                    parallel_iterations=1)[1].concat()
                return tf.reduce_sum((sums - mean * g_time[:, None, :]) / std, axis=[0, 2])

            def dot(i: Any, dw: Any) -> Any:
                per_frame = tf.reduce_sum(layer(i) * g, axis=1)  # [B, D]
                return dw.write(i, tf.reduce_sum((per_frame - mean[:, i] * g_time) / std[:, i]))

            return loop(dot, tf.TensorArray(tf.float32, n_layers)).stack()

    @tf.custom_gradient
    def weighted(w: Any) -> Any:
        return forward(w), grad_w

    return weighted(w)


@keras.saving.register_keras_serializable(package="w2v2ser")
class LayerWeightedAverage(keras.layers.Layer):
    """f = sum_i alpha_i f_i / sum_i alpha_i over the layer axis of [B, T, L, D] inputs.

    Every alpha_i starts at 1.0 (plain average) and is kept non-negative by a NonNeg
    constraint applied after each optimiser step; ``epsilon`` guards the all-zero case.
    float16 inputs are not cast as a whole: the forward is one XLA-compiled pass that casts and
    accumulates each layer slice [B, T, D] in float32, and the backward pass takes one slice (or,
    with ``stats``, two utterances) at a time, so no float32 [B, T, L, D] copy is made or kept
    for the gradient.

    Args:
        epsilon: Added to the sum of the alphas before dividing by it.
    """

    def __init__(self, epsilon: float = 1e-7, **kwargs: Any) -> None:
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        self.epsilon = epsilon

    def build(self, inputs_shape: tuple, stats_shape: tuple | None = None) -> None:
        """Create the alphas, one per layer, all 1.0.

        Args:
            inputs_shape: Shape of the inputs, [B, T, L, D].
            stats_shape: Shape of ``stats`` [B, 2, L, D], or None.
        """
        self.alphas = self.add_weight(name="alphas", shape=(int(inputs_shape[-2]),), initializer="ones",
                                      constraint=keras.constraints.NonNeg(), trainable=True)

    def call(self, inputs: Any, stats: Any = None) -> Any:
        """Weighted average of ``inputs`` [B, T, L, D]; with ``stats``, of the normalised frames (x - mean) / std.

        Args:
            inputs: Frames [B, T, L, D].
            stats: Mean and std of each utterance's frames [B, 2, L, D], or None when ``inputs``
                are normalised already.

        Returns:
            [B, T, D] averaged frames.
        """
        w = self.alphas / (ops.sum(self.alphas) + self.epsilon)
        if inputs.dtype == "float32":
            if stats is not None:
                inputs = (inputs - stats[:, None, 0]) / stats[:, None, 1]
            return ops.einsum("btld,l->btd", inputs, w)
        return _weighted_layer_sum(inputs, w, stats)

    def compute_output_shape(self, inputs_shape: tuple, stats_shape: tuple | None = None) -> tuple:
        """[B, T, D] for [B, T, L, D] inputs.

        Args:
            inputs_shape: Shape of the inputs, [B, T, L, D].
            stats_shape: Shape of ``stats``, or None.
        """
        return (*inputs_shape[:-2], inputs_shape[-1])

    def get_config(self) -> dict[str, Any]:
        """The layer's config (Keras serialisation), with ``epsilon``."""
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="w2v2ser")
class MaskedMean(keras.layers.Layer):
    """Mean over time of [B, T, D] frames where mask [B, T] is 1; padding never contributes."""

    def call(self, frames: Any, frame_mask: Any) -> Any:
        """Masked mean over time.

        Args:
            frames: Frames [B, T, D].
            frame_mask: [B, T], 1 where a frame is real, 0 where it is padding.

        Returns:
            [B, D] means (0 for an utterance without frames).
        """
        m = ops.expand_dims(ops.cast(frame_mask, frames.dtype), -1)
        total = ops.sum(frames * m, axis=1)
        count = ops.maximum(ops.sum(m, axis=1), 1.0)
        return total / count

    def compute_output_shape(self, frames_shape: tuple, frame_mask_shape: tuple) -> tuple:
        """[B, D] for [B, T, D] frames.

        Args:
            frames_shape: Shape of the frames, [B, T, D].
            frame_mask_shape: Shape of the mask, [B, T].
        """
        return (frames_shape[0], frames_shape[-1])


@keras.saving.register_keras_serializable(package="w2v2ser")
class FrameMask(keras.layers.Layer):
    """Float [B, T] mask input -> boolean mask for recurrent layers."""

    def call(self, inputs: Any) -> Any:
        """Boolean mask, True where the float mask exceeds 0.5.

        Args:
            inputs: Float mask [B, T].
        """
        return ops.greater(inputs, 0.5)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        """The input's shape.

        Args:
            input_shape: Shape of the float mask, [B, T].
        """
        return input_shape
