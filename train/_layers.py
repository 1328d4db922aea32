"""Custom Keras layers of the heads (registered so ``model.keras`` loads back)."""

from __future__ import annotations

import random
from typing import Any, Callable

import keras
from keras import ops

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


def _weighted_layer_sum(x: Any, w: Any) -> Any:
    """sum_l float32(x[:, :, l, :]) * w[l] for float16 x [B, T, L, D], one layer at a time.

    An unrolled sum lets TensorFlow cast every slice at once and keep all L float32 slices for
    the gradient of w (float32 [B, T, L, D]: 320 MB at batch 32 x 250 x 13 x 768). Sequential
    loops in both passes hold one slice at a time; x gets no gradient (it is data).
    """
    import tensorflow as tf

    n_layers = int(x.shape[2])

    @tf.custom_gradient
    def weighted(x: Any, w: Any) -> Any:
        def add(i: Any, acc: Any) -> Any:
            return i + 1, acc + tf.cast(x[:, :, i, :], tf.float32) * w[i]

        shape = tf.concat([tf.shape(x)[:2], tf.shape(x)[3:]], axis=0)
        _, out = tf.while_loop(lambda i, _: i < n_layers, add, (tf.constant(0), tf.zeros(shape, tf.float32)),
                               parallel_iterations=1)

        def grad(g: Any) -> Any:
            def dot(i: Any, dw: Any) -> Any:
                return i + 1, dw.write(i, tf.reduce_sum(tf.cast(x[:, :, i, :], tf.float32) * g))

            _, dw = tf.while_loop(lambda i, _: i < n_layers, dot, (tf.constant(0), tf.TensorArray(tf.float32, n_layers)),
                                  parallel_iterations=1)
            return None, dw.stack()

        return out, grad

    return weighted(x, w)


@keras.saving.register_keras_serializable(package="w2v2ser")
class LayerWeightedAverage(keras.layers.Layer):
    """f = sum_i alpha_i f_i / sum_i alpha_i over the layer axis of [B, T, L, D] inputs.

    Every alpha_i starts at 1.0 (plain average) and is kept non-negative by a NonNeg
    constraint applied after each optimiser step; ``epsilon`` guards the all-zero case.
    float16 inputs are not cast as a whole: each layer slice [B, T, D] is cast to float32 and
    accumulated one at a time, in the forward and in the backward pass, so no float32
    [B, T, L, D] copy is made or kept for the gradient.
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
