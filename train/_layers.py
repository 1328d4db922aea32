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


def _unrolled_sum(x: Any, w: Any) -> Any:
    """sum_l float32(x[:, :, l, :]) * w[l] as one expression (L is static), for XLA to fuse."""
    import tensorflow as tf

    acc = tf.cast(x[:, :, 0, :], tf.float32) * w[0]
    for i in range(1, int(x.shape[2])):
        acc = acc + tf.cast(x[:, :, i, :], tf.float32) * w[i]
    return acc


_FORWARD: list[Any] = []  # [the XLA-compiled forward of _weighted_layer_sum, or None] once probed


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
        _FORWARD.append(xla_compiled(_unrolled_sum, np.zeros((1, 1, 2, 1), np.float16), np.ones(2, np.float32), gpu=True))
    return _FORWARD[0]


def _weighted_layer_sum(x: Any, w: Any) -> Any:
    """sum_l float32(x[:, :, l, :]) * w[l] for float16 x [B, T, L, D], without float32 [B, T, L, D].

    Casting x as a whole would make a float32 copy (320 MB at batch 32 x 250 x 13 x 768), and an
    unrolled sum of TensorFlow ops keeps all L float32 slices for the gradient of w. The forward
    is one XLA-compiled pass (:func:`_compiled_forward`; where XLA is missing, a sequential loop
    of TensorFlow ops); the gradient of w is a sequential loop that holds one slice at a time
    (XLA's reductions were slower here). x gets no gradient (it is data).
    """
    import tensorflow as tf

    n_layers = int(x.shape[2])

    def dot_each(x: Any, g: Any) -> Any:
        def dot(i: Any, dw: Any) -> Any:
            return i + 1, dw.write(i, tf.reduce_sum(tf.cast(x[:, :, i, :], tf.float32) * g))

        _, dw = tf.while_loop(lambda i, _: i < n_layers, dot, (tf.constant(0), tf.TensorArray(tf.float32, n_layers)),
                              parallel_iterations=1)
        return dw.stack()

    def add_each(x: Any, w: Any) -> Any:
        def add(i: Any, acc: Any) -> Any:
            return i + 1, acc + tf.cast(x[:, :, i, :], tf.float32) * w[i]

        shape = tf.concat([tf.shape(x)[:2], tf.shape(x)[3:]], axis=0)
        return tf.while_loop(lambda i, _: i < n_layers, add, (tf.constant(0), tf.zeros(shape, tf.float32)),
                             parallel_iterations=1)[1]

    @tf.custom_gradient
    def weighted(x: Any, w: Any) -> Any:
        forward = _compiled_forward()
        out = add_each(x, w) if forward is None else forward(x, w)
        return out, lambda g: (None, dot_each(x, g))

    return weighted(x, w)


@keras.saving.register_keras_serializable(package="w2v2ser")
class LayerWeightedAverage(keras.layers.Layer):
    """f = sum_i alpha_i f_i / sum_i alpha_i over the layer axis of [B, T, L, D] inputs.

    Every alpha_i starts at 1.0 (plain average) and is kept non-negative by a NonNeg
    constraint applied after each optimiser step; ``epsilon`` guards the all-zero case.
    float16 inputs are not cast as a whole: the forward is one XLA-compiled pass that casts and
    accumulates each layer slice [B, T, D] in float32, and the backward pass takes one slice at a
    time, so no float32 [B, T, L, D] copy is made or kept for the gradient.
    """

    def __init__(self, epsilon: float = 1e-7, **kwargs: Any) -> None:
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        self.epsilon = epsilon

    def build(self, input_shape: tuple) -> None:
        self.alphas = self.add_weight(name="alphas", shape=(int(input_shape[-2]),), initializer="ones",
                                      constraint=keras.constraints.NonNeg(), trainable=True)

    def call(self, inputs: Any) -> Any:
        w = self.alphas / (ops.sum(self.alphas) + self.epsilon)
        if inputs.dtype == "float32":
            return ops.einsum("btld,l->btd", inputs, w)
        return _weighted_layer_sum(inputs, w)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-2], input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="w2v2ser")
class MaskedMean(keras.layers.Layer):
    """Mean over time of [B, T, D] frames where mask [B, T] is 1; padding never contributes."""

    def call(self, frames: Any, frame_mask: Any) -> Any:
        m = ops.expand_dims(ops.cast(frame_mask, frames.dtype), -1)
        total = ops.sum(frames * m, axis=1)
        count = ops.maximum(ops.sum(m, axis=1), 1.0)
        return total / count

    def compute_output_shape(self, frames_shape: tuple, frame_mask_shape: tuple) -> tuple:
        return (frames_shape[0], frames_shape[-1])


@keras.saving.register_keras_serializable(package="w2v2ser")
class FrameMask(keras.layers.Layer):
    """Float [B, T] mask input -> boolean mask for recurrent layers."""

    def call(self, inputs: Any) -> Any:
        return ops.greater(inputs, 0.5)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape
