"""XLA compilation with a probe: stage 2's one way to compile a TensorFlow function where XLA can."""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["xla_compiled"]


def xla_compiled(fn: Callable[..., Any], *probe_args: Any, gpu: bool = False) -> Callable[..., Any] | None:
    """``fn`` as a ``tf.function`` compiled by XLA, or None where XLA cannot compile it.

    The compiled function is called once with ``probe_args`` (numpy arrays) on the CPU, and on the
    first GPU when ``gpu`` (XLA's GPU JIT needs CUDA's compiler), eagerly even when asked for inside
    a trace: a TensorFlow build without XLA's JIT for a device fails here, not inside a training step.
    """
    import tensorflow as tf

    compiled = tf.function(fn, jit_compile=True, autograph=False)
    try:
        with tf.init_scope():
            for device in ["/CPU:0"] + ([d.name for d in tf.config.list_logical_devices("GPU")[:1]] if gpu else []):
                with tf.device(device):
                    compiled(*probe_args).numpy()
    except Exception:  # pragma: no cover - a TensorFlow build without XLA's JIT for a device
        return None
    return compiled
