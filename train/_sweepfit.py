"""Layer sweep model and fit: the L stacked per-layer Dense probes and the weighted-average head
(:class:`_SweepHeads`), per-head early stopping, and the one-pass training and prediction of all
L + 1 heads (see :mod:`._sweep` for the design).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from w2v2ser._common import check_stop

from ._dataset import FeatureBatches


# ------------------------------------------------------------------------------------------ model
class _SweepHeads:
    """L stacked per-layer Dense probes and one weighted-average Dense head (TensorFlow variables)."""

    def __init__(self, n_layers: int, dim: int, n_classes: int, *, units: int, dropout: float, seed: int) -> None:
        import keras
        import tensorflow as tf

        from ._layers import LayerWeightedAverage, MaskedMean, seed_draws, seeded_dense

        L, U, C = n_layers, units, n_classes
        self.n_layers, self.dropout = L, dropout
        # The weighted-average head: the paper's Dense head with the usual Keras layers, its kernels
        # seeded with the draws of `train`'s Dense head of this seed, in its build order: each
        # Dense kernel, then (dropout > 0) its Dropout layer's seed (_BaseHead._block).
        self.wa = LayerWeightedAverage(name="main_layer_weights")
        draw = seed_draws(seed)  # not Python's global random, which a Dask worker's threads share
        skip = (lambda: draw()) if dropout > 0 else (lambda: None)  # noqa: E731
        self.wa_d1 = seeded_dense(U, "relu", "block1_dense", draw)
        skip()
        self.wa_d2 = seeded_dense(U, "relu", "block2_dense", draw)
        skip()
        self.wa_cls = seeded_dense(C, "softmax", "classifier", draw)
        self.wa_mean = MaskedMean(name="masked_mean")
        self.drop = keras.layers.Dropout(dropout, seed=seed)  # the weighted head's, as in the Dense head
        self.rng = tf.random.Generator.from_seed(seed)  # the probes' dropout bits
        self.keep_from = min(65535, round(dropout * 65536))  # keep a unit when its 16 bits are >= this
        self.wa.build((None, None, L, dim))
        self.wa_d1.build((None, None, dim))
        self.wa_d2.build((None, None, U))
        self.wa_cls.build((None, U))
        self.wa_vars = [w for layer in (self.wa, self.wa_d1, self.wa_d2, self.wa_cls) for w in layer.weights]
        # Every probe starts from the weights `train --features UPSTREAM:l` starts from with this
        # seed: that run's Dense head has the same shapes and draws, so its kernels are the
        # weighted head's (the layer average adds no draws); biases 0 as in Keras' Dense.
        v = lambda a, name: keras.Variable(a, name=name, dtype="float32")  # noqa: E731
        tile = lambda layer: np.repeat(layer.kernel.numpy()[None], L, axis=0)  # noqa: E731
        self.stacked = [v(tile(self.wa_d1), "probe_k1"), v(np.zeros((L, U), np.float32), "probe_b1"),
                        v(tile(self.wa_d2), "probe_k2"), v(np.zeros((L, U), np.float32), "probe_b2"),
                        v(tile(self.wa_cls), "probe_kc"), v(np.zeros((L, C), np.float32), "probe_bc")]
        self.variables = self.stacked + self.wa_vars

    def __call__(self, x: Any, mask: Any, training: bool) -> Any:
        """Class probabilities [batch, L + 1, classes] (head L = weighted average)."""
        import tensorflow as tf

        k1, b1, k2, b2, kc, bc = self.stacked
        # Layer axis first, frames flattened: each dense block is one batched matmul over layers
        # ([L, B*T, d] @ [L, d, u]), faster on CPU than einsum on [B, T, L, d], which
        # transposes around every contraction. Frames arrive in the stored dtype (float16 for the
        # upstreams): transposed before the cast, which moves half the bytes, and the weighted
        # average takes them as they are (its float16 forward is one compiled pass).
        batch, steps = tf.shape(x)[0], tf.shape(x)[1]
        h = tf.cast(tf.reshape(tf.transpose(x, [2, 0, 1, 3]), [self.n_layers, -1, x.shape[-1]]), tf.float32)
        h = self.probe_dropout(tf.nn.relu(tf.matmul(h, k1) + b1[:, None, :]), training)
        h = self.probe_dropout(tf.nn.relu(tf.matmul(h, k2) + b2[:, None, :]), training)
        h = tf.reshape(h, [self.n_layers, batch, steps, -1])
        m = mask[None, :, :, None]
        pooled = tf.reduce_sum(h * m, axis=2) / tf.maximum(tf.reduce_sum(m, axis=2), 1.0)  # [L, B, u]
        probs = tf.nn.softmax(tf.transpose(tf.matmul(pooled, kc) + bc[:, None, :], [1, 0, 2]), axis=-1)
        w = self.wa_d1(self.wa(x))
        w = self.drop(w, training=training)
        w = self.drop(self.wa_d2(w), training=training)
        wp = self.wa_cls(self.wa_mean(w, mask))
        return tf.concat([probs, wp[:, None, :]], axis=1)

    def probe_dropout(self, h: Any, training: bool) -> Any:
        """Inverted dropout of the stacked probes' units [L, frames, units]: each kept with probability
        1 - keep_from / 2**16 (the recipe's 1 - rate within 2**-17) and scaled by 1 / (1 - rate).

        One mask serves all L probes (common random numbers). The probes share no weights, so
        each probe's own draws are still independent Bernoulli, as in a run on its layer alone;
        L masks took a quarter of the tiny sweep's step (bench_sweep.py --dropout).
        """
        import tensorflow as tf

        if not training or self.dropout == 0:
            return h
        shape = tf.shape(h)[1:]
        n = tf.reduce_prod(shape)
        bits = self.rng.uniform_full_int([(n + 1) // 2], dtype=tf.uint32)
        bits = tf.reshape(tf.bitcast(bits, tf.uint16), [-1])[:n]
        keep = tf.reshape(bits, shape) >= tf.constant(self.keep_from, tf.uint16)
        scale = tf.where(keep, tf.constant(1.0 / (1.0 - self.dropout), h.dtype), tf.constant(0.0, h.dtype))
        return h * scale[None]

    # per-head weights: stacked variables are indexed by layer, the weighted head owns its variables whole
    def snapshot(self) -> list[np.ndarray]:
        """Current values of every variable (stacked first, then the weighted head's)."""
        return [np.array(v.numpy()) for v in self.variables]

    def get_head(self, h: int, snapshot: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """Weights of head ``h`` (copies), from ``snapshot`` when given."""
        values = snapshot if snapshot is not None else self.snapshot()
        n = len(self.stacked)
        if h < self.n_layers:
            return [v[h].copy() for v in values[:n]]
        return [v.copy() for v in values[n:]]

    def set_head(self, h: int, values: Sequence[np.ndarray], targets: Sequence[Any] | None = None) -> None:
        if h < self.n_layers:
            for var, val in zip(targets or self.stacked, values):
                whole = var.numpy()
                whole[h] = val
                var.assign(whole)
        else:
            for var, val in zip(targets or self.wa_vars, values):
                var.assign(val)


def _sparse_ce(y: Any, probs: Any) -> Any:
    """Per-sample, per-head cross-entropy of softmax outputs (Keras' clipping), [batch, heads]."""
    import keras
    import tensorflow as tf

    return keras.ops.sparse_categorical_crossentropy(tf.tile(y[:, None], [1, probs.shape[1]]), probs)


class _Stopper:
    """Keras EarlyStopping(monitor='val_loss', restore_best_weights) applied to each head separately."""

    def __init__(self, n_heads: int, patience: int) -> None:
        self.patience = patience
        self.best = np.full(n_heads, np.inf)
        self.best_epoch = np.zeros(n_heads, int)
        self.wait = np.zeros(n_heads, int)
        self.stopped_epoch = np.full(n_heads, -1)
        self.best_weights: list[list[np.ndarray] | None] = [None] * n_heads

    @property
    def active(self) -> np.ndarray:
        return self.stopped_epoch < 0

    def update(self, epoch: int, losses: np.ndarray, heads: _SweepHeads) -> list[int]:
        """Record one epoch's validation losses; returns the heads that stop now."""
        stopping = []
        snap = heads.snapshot()
        for h in np.flatnonzero(self.active):
            if self.best_weights[h] is None:
                self.best_weights[h], self.best_epoch[h] = heads.get_head(h, snap), epoch
            self.wait[h] += 1
            if losses[h] < self.best[h]:
                self.best[h], self.best_epoch[h] = losses[h], epoch
                self.best_weights[h] = heads.get_head(h, snap)
                self.wait[h] = 0
                continue
            if self.wait[h] >= self.patience and epoch > 0:
                self.stopped_epoch[h] = epoch
                stopping.append(int(h))
        return stopping


# ------------------------------------------------------------------------------------------- fit
def fit_sweep_heads(train: FeatureBatches, val: FeatureBatches, *, n_classes: int, recipe: Any, units: int,
                    dropout: float, seed: int, restore_best: bool = True,
                    epoch_end: Callable[[int, _SweepHeads, np.ndarray], None] | None = None,
                    accumulate: int = 1) -> tuple[_SweepHeads, dict[str, Any]]:
    """Train the L + 1 heads on batches of [batch, time, L, dim] frames with per-head early stopping.

    ``accumulate`` consecutive batches of ``train`` make one optimiser step (gradients summed,
    loss averaged over the step's utterances): the same step as one batch of
    ``accumulate * train.batch_size`` utterances, with a fraction of its memory.

    ``epoch_end(epoch, heads, active)`` is called after each epoch's stopping decisions
    (``active``: bool per head), e.g. to watch that stopped heads stay frozen.

    Returns:
        (heads, history) with history["val_loss"] [epochs, heads], "epochs"/"best_epoch" per head
        (1-based), "epoch_seconds", "input_seconds" and "compute_seconds" (in training steps) per epoch.
    """
    import keras
    import tensorflow as tf

    n_layers, dim = train.sources[0].selection.frame_shape
    heads = _SweepHeads(n_layers, dim, n_classes, units=units, dropout=dropout, seed=seed)
    H = n_layers + 1
    opt = keras.optimizers.Adam(learning_rate=recipe.learning_rate, clipvalue=recipe.clipvalue)
    opt.build(heads.variables)
    active = tf.Variable(np.ones(H, np.float32), trainable=False, name="active")
    frozen = [tf.Variable(np.zeros(v.shape, np.float32), trainable=False) for v in heads.variables]
    n_stacked = len(heads.stacked)
    spec = (tf.TensorSpec((None, None, n_layers, dim), tf.as_dtype(train.sources[0].dtype)), tf.TensorSpec((None, None), tf.float32),
            tf.TensorSpec((None,), tf.int32))

    accum = [tf.Variable(np.zeros(v.shape, np.float32), trainable=False) for v in heads.variables]

    @tf.function(input_signature=(*spec, tf.TensorSpec((), tf.float32)))
    def grad_step(x: Any, mask: Any, y: Any, n_step: Any) -> Any:
        # Gradient of sum_h mean-over-the-whole-step CE_h, accumulated over the step's micro-batches.
        with tf.GradientTape() as tape:
            per_head = tf.reduce_sum(_sparse_ce(y, heads(x, mask, True)), axis=0)
            loss = tf.reduce_sum(per_head * active) / n_step
        for acc, g in zip(accum, tape.gradient(loss, heads.variables)):
            acc.assign_add(g)
        return per_head

    @tf.function
    def apply_step() -> None:
        opt.apply([tf.identity(a) for a in accum], heads.variables)
        for acc in accum:
            acc.assign(tf.zeros_like(acc))
        # Stopped heads are reset to their (best) frozen weights: they never change again.
        for i, (var, keep) in enumerate(zip(heads.variables, frozen)):
            on = active[:n_layers] if i < n_stacked else active[n_layers]
            if i < n_stacked:
                on = tf.reshape(on, [n_layers] + [1] * (len(var.shape) - 1))
            var.assign(tf.where(on > 0.5, var, keep))

    @tf.function(input_signature=spec)
    def eval_step(x: Any, mask: Any, y: Any) -> Any:
        return tf.reduce_sum(_sparse_ce(y, heads(x, mask, False)), axis=0)

    step_size = accumulate * train.batch_size
    stopper = _Stopper(H, recipe.patience)
    hist: dict[str, Any] = {"loss": [], "val_loss": [], "epoch_seconds": [], "input_seconds": [],
                            "compute_seconds": []}
    for epoch in range(recipe.max_epochs):
        t0, in0 = time.perf_counter(), train.input_seconds + val.input_seconds
        tot, n, compute = np.zeros(H), 0, 0.0
        for i, (inputs, y) in enumerate(train.iterate()):
            b0 = time.perf_counter()  # time in training steps, as train's history.json measures it
            n_step = min(step_size, len(train.items) - (i // accumulate) * step_size)
            tot += grad_step(inputs["main"], inputs["mask"], y, np.float32(n_step)).numpy()
            n += len(y)
            if (i + 1) % accumulate == 0 or i == len(train) - 1:
                apply_step()
            compute += time.perf_counter() - b0
            check_stop()
        vtot = np.zeros(H)
        for inputs, y in val.iterate():
            vtot += eval_step(inputs["main"], inputs["mask"], y).numpy()
        vloss = vtot / len(val.items)
        hist["loss"].append((tot / max(n, 1)).tolist())
        hist["val_loss"].append(vloss.tolist())
        for h in stopper.update(epoch, vloss, heads):
            if restore_best:
                heads.set_head(h, stopper.best_weights[h])
            targets = frozen[:n_stacked] if h < n_layers else frozen[n_stacked:]
            heads.set_head(h, heads.get_head(h), targets)
            active[h].assign(0.0)
        hist["epoch_seconds"].append(time.perf_counter() - t0)
        hist["input_seconds"].append(train.input_seconds + val.input_seconds - in0)
        hist["compute_seconds"].append(compute)
        if epoch_end is not None:
            epoch_end(epoch, heads, stopper.active.copy())
        if not stopper.active.any():
            break
    last = len(hist["val_loss"]) - 1
    for h in np.flatnonzero(stopper.active):  # reached max_epochs: Keras restores the best weights too
        stopper.stopped_epoch[h] = last
        if restore_best and stopper.best_weights[h] is not None:
            heads.set_head(h, stopper.best_weights[h])
    hist["epochs"] = (stopper.stopped_epoch + 1).tolist()
    hist["best_epoch"] = (stopper.best_epoch + 1).tolist()
    hist["best_val_loss"] = stopper.best.tolist()
    hist["stopped_early"] = [int(e) < recipe.max_epochs - 1 for e in stopper.stopped_epoch]
    return heads, hist


def predict_sweep_heads(heads: _SweepHeads, data: FeatureBatches) -> np.ndarray:
    """Probabilities [utterances, heads, classes] in the order of ``data`` (unshuffled)."""
    import tensorflow as tf

    out = [heads(tf.constant(inputs["main"]), tf.constant(inputs["mask"]), False).numpy()
           for inputs, _ in data.iterate()]
    return np.concatenate(out, axis=0)
