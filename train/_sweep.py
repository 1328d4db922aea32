"""Layer sweep: one Dense probe per layer plus the weighted-average head, trained in one pass.

The paper's Dense head is trained on each layer of an upstream alone (layer 0 .. L-1) and on
the trainable weighted average of those layers. All L + 1 heads live in one TensorFlow step
that reads each batch once (frames [batch, time, L, dim]); they share only that input:

* the L per-layer probes keep their weights stacked on a leading layer axis (kernels
  [L, dim, units], [L, units, units], [L, units, classes]), so one einsum runs all of them;
  slice l is exactly the Dense head of layer l (same shapes; it starts from the weights
  `train --features UPSTREAM:l` starts from with the same seed);
* the weighted-average head is the usual LayerWeightedAverage -> Dense head;
* each head has its own loss; the step minimises their sum, whose gradient with respect to a
  head's weights is that head's own gradient, and Adam (with clipvalue) works per element, so
  each head follows the optimiser path it would follow alone (dropout draws differ: seed noise);
* the probes' dropout decides each unit from 16 random bits (two decisions per 32-bit draw):
  its drop rate is within 2**-17 of the recipe's, from half the random numbers of Keras' float
  draws, which took a quarter of a probe step on CPU;
* each head has its own early stopping (Keras EarlyStopping rules: patience on its validation
  loss, best weights restored). A stopped head is frozen: after every optimiser step its
  weights are reset to its best weights, so it never changes again while the others train.

Output, for ``out``: ``layer_00`` .. ``layer_NN`` and ``all``, each an ordinary run directory
(experiment.json, runs/<fold>__seed<k>/metrics.json + predictions.csv, results.json in the
schema of :func:`summarize_runs`, so ``w2v2ser evaluate`` reads them), and ``sweep.json``
(UAR per layer, mean and std over runs). Models are not saved (probes are for analysis).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from w2v2ser._common import check_stop, progress_bar
from w2v2ser._files import publish_directory
from w2v2ser._process import caller_random_kept

from ._config import ExperimentConfig, as_experiment_config
from ._dataset import FeatureBatches, Item, Source, micro_batch_size
from ._errors import ConfigError
from ._experiment import (_configure_threads, _peak_rss_mb, _provenance, _start_run, _summarize_runs, _write_json,
                          _write_predictions, keep_finished_runs)
from ._experiment_data import _Data, _prepare
from ._fingerprints import (_complete, _data_fingerprint, _drop_stale_results, _store_fingerprints, key_fields,
                            store_identities, warn_if_replacing)
from ._metrics import accuracy, confusion_matrix, format_uar, headline_uar, per_class_report, uar
from ._normalisation import build_normaliser
from ._out_folder import forget_not_trained, share_out_folder
from ._planning import RunSpec, _plan, check_run_spec, open_view
from ._protocols import get_protocol
from ._runfiles import record_run_files, writing_run
from ._selection import parse_selection

__all__ = ["sweep_configs", "sweep_run", "summarize_sweep", "sweep_experiment", "describe_sweep", "ALL_LAYERS_DIR"]

log = logging.getLogger("w2v2ser.train")
ALL_LAYERS_DIR = "all"
# Float32 frames (all layers) read per micro-batch; optimiser steps keep the recipe's batch size.
MICRO_BATCH_MB = 64.0


def _layer_dir(layer: int) -> str:
    return f"layer_{layer:02d}"


def _base_config(config: ExperimentConfig) -> ExperimentConfig:
    """The weighted-average experiment of the sweep: the selection with ':all' when no layers are named."""
    if config.head != "dense":
        raise ConfigError(f"a layer sweep trains the Dense head on each layer, got head={config.head!r}; "
                          f"set head: dense (or drop it)")
    sel = parse_selection(config.features)
    if sel.layers is None:
        return dataclasses.replace(config, features=f"{config.features}:all")
    return config


def sweep_configs(config: ExperimentConfig | Mapping[str, Any]) -> dict[str, ExperimentConfig]:
    """Run-directory name -> ExperimentConfig of every head of the sweep.

    ``config.features`` names the upstream (``wav2vec2``, ``hubert``, ``w2v2_pt/wavlm``...),
    optionally with a layer range (``wavlm:0-6``); without one every layer of the store's
    FeatureSpec is swept. ``layer_NN`` configs select that layer alone; ``all`` is the
    weighted average of the swept layers.

    Raises:
        ConfigError: Head other than dense. SelectionError: the feature has no layer axis.
    """
    config = as_experiment_config(config)
    from ._errors import SelectionError

    base = _base_config(config)
    try:
        sel = _prepare(base).selections["main"]
    except SelectionError:
        if base is config:
            raise
        sel = _prepare(config).selections["main"]  # `egemaps`: say that it has no layers, not 'egemaps:all'
    if sel.layers is None:
        raise SelectionError(f"a layer sweep needs a feature with several layers; {config.features!r} resolves to "
                             f"no layer axis; name an upstream such as wav2vec2 or hubert (train a feature "
                             f"without layers with `w2v2ser train`)")
    prefix = f"{sel.alias}/" if parse_selection(base.features).alias else ""
    if len(sel.layers) < 2:
        # An upstream's one-layer range (hubert:2-2): the fix is a wider range, not another feature.
        named = f"{prefix}{sel.feature}"  # with the store alias the text had (ssl/hubert)
        raise SelectionError(f"a layer sweep needs several layers; {config.features!r} resolves to layer "
                             f"{sel.layers[0]} only; sweep a wider range (e.g. {named}:{max(sel.layers[0] - 1, 0)}-"
                             f"{max(sel.layers[0], 1)}) or the whole upstream ({named}), or train that one layer "
                             f"with `w2v2ser train --features {named}:{sel.layers[0]}`")
    out = {_layer_dir(k): dataclasses.replace(base, features=f"{prefix}{sel.feature}:{k}") for k in sel.layers}
    out[ALL_LAYERS_DIR] = base
    return out


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


# ------------------------------------------------------------------------------------------- runs
def _parts(data: Any, run_spec: RunSpec) -> dict[str, list[Item]]:
    cls_index = {c: i for i, c in enumerate(data.classes)}
    speaker_part = {s: p for p, ss in run_spec.split().items() for s in ss}
    parts: dict[str, list[Item]] = {"train": [], "validation": [], "test": []}
    for r, lab in zip(data.records, data.labels):
        part = speaker_part.get(r.speaker)
        if part is not None:
            parts[part].append(Item(r.id, r.speaker, cls_index[lab], float(r.duration)))
    return parts


def _write_run(out: Path, config: ExperimentConfig, run_spec: RunSpec, metrics: dict[str, Any],
               test: FeatureBatches, classes: Sequence[str], proba: np.ndarray, history: dict[str, Any],
               layer_weights: dict[str, Any] | None) -> None:
    run_dir = out / "runs" / run_spec.name
    with writing_run(out / "runs", run_spec.name) as tmp:
        y_pred = np.argmax(proba, axis=1)
        _write_predictions(tmp / "predictions.csv", test.items, classes, y_pred, proba, run_spec)
        _write_json(tmp / "history.json", history)
        if layer_weights:
            _write_json(tmp / "layer_weights.json", layer_weights)
        _write_json(tmp / "metrics.json", record_run_files(tmp, metrics))  # last: marks the run complete
        publish_directory(tmp, run_dir)


def sweep_run(config: ExperimentConfig | Mapping[str, Any], run_spec: RunSpec, *, out: Path | str,
              threads: int | None = None, micro_batch_mb: float = MICRO_BATCH_MB,
              progress: str | None = None) -> dict[str, dict[str, Any]]:
    """Train every head of the sweep for one (fold, seed) and write its run directory under each head's folder.

    A (fold, seed) whose run directories are all complete for their config keys is not retrained.
    Batches are read in micro-batches of at most ``micro_batch_mb`` of float32 frames (all
    layers), whose gradients are summed into one optimiser step of the recipe's batch size: memory
    stays flat as models get deeper and wider (25 x 1024 needs no more than 13 x 768).

    ``progress``: when given, a progress bar over the epochs on stderr, with this description.

    Returns:
        Head folder name -> metrics (with "skipped": True when already complete).
    """
    config = as_experiment_config(config)
    check_run_spec(run_spec)
    _configure_threads(threads)
    configs = sweep_configs(config)
    return _sweep_run(config, configs, run_spec, Path(out), _prepare(configs[ALL_LAYERS_DIR]),
                      micro_batch_mb=micro_batch_mb, progress=progress)


@caller_random_kept()  # _start_run seeds the caller's np.random and random: given back after the run
def _sweep_run(config: ExperimentConfig, configs: dict[str, ExperimentConfig], run_spec: RunSpec, out: Path,
               data: _Data, *, micro_batch_mb: float = MICRO_BATCH_MB,
               progress: str | None = None) -> dict[str, dict[str, Any]]:
    """sweep_run on stores already opened (sweep_experiment's one view of them, as in train_experiment)."""
    base = configs[ALL_LAYERS_DIR]
    fps = _store_fingerprints(base, data)  # every head reads the same feature of the same store
    fp, data_fp = fps[0], _data_fingerprint(data)
    done = {name: _complete(out / name / "runs" / run_spec.name, c.config_keys(), fps, data_fp, run_spec.split())
            for name, c in configs.items()}
    if all(m is not None for m in done.values()):
        return {name: {**m, "skipped": True} for name, m in done.items()}
    for name, c in configs.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        try:
            recorded = json.loads((out / name / "experiment.json").read_text())
        except (OSError, ValueError):
            recorded = None
        # new or changed configuration, or other seeds (evaluate reads them there): describe the current one
        if not isinstance(recorded, dict) or recorded.get("config_key") != c.config_key() or c.seeds_differ(recorded):
            _write_json(out / name / "experiment.json", {**c.to_dict(), **key_fields(c),
                                                         "stores_identity": store_identities(c, data.stores),
                                                         "sweep": {"path": str(out), "head": name}})
    _start_run(config, run_spec)
    recipe = base.resolved_recipe()
    max_frames = base.max_frames or get_protocol(base.protocol).max_frames
    parts = _parts(data, run_spec)
    sel = data.selections["main"]
    store = data.stores[sel.alias]
    normaliser = build_normaliser(store, sel, base.norm, train_speakers=run_spec.train,
                                  speakers=sorted({s for p in run_spec.split().values() for s in p}),
                                  utterances=data.statistics_ids)
    micro = micro_batch_size(recipe.batch_size, (max_frames or 1000) * len(sel.layers) * sel.dim * 4,
                             micro_batch_mb)
    common = dict(sources=[Source("main", store, sel, normaliser)], classes=data.classes,
                  batch_size=micro, max_frames=max_frames, cache="off",  # the sweep's loop streams every pass
                  workers=base.workers)
    train = FeatureBatches(parts["train"], shuffle=True, seed=run_spec.seed, **common)
    val = FeatureBatches(parts["validation"], **common)
    test = FeatureBatches(parts["test"], **common)
    bar: Any = progress_bar(desc=progress, unit="epoch", total=recipe.max_epochs, leave=False) if progress else None

    def epoch_end(epoch: int, heads: Any, active: np.ndarray) -> None:
        bar.set_postfix(training=f"{int(active.sum())}/{len(active)} heads", refresh=False)
        bar.update(1)

    try:
        heads, hist = fit_sweep_heads(train, val, n_classes=len(data.classes), recipe=recipe, units=base.units,
                                      dropout=base.dropout, seed=run_spec.seed, restore_best=recipe.restore_best,
                                      accumulate=recipe.batch_size // micro, epoch_end=epoch_end if bar else None)
    finally:
        if bar is not None:
            bar.close()
    proba = predict_sweep_heads(heads, test)
    alphas = [float(a) for a in np.asarray(heads.wa.alphas.numpy())]
    y_true = test.labels
    epoch_s, input_s = float(np.sum(hist["epoch_seconds"])), float(np.sum(hist["input_seconds"]))
    n_epochs = len(hist["epoch_seconds"])
    prov = _provenance()  # one pass trained every head
    names = list(configs)  # layer_.. in layer order, then "all" (head index = position)
    results = {}
    for h, name in enumerate(names):
        c = configs[name]
        y_pred = np.argmax(proba[:, h], axis=1)
        epochs = int(hist["epochs"][h])
        head_hist = {"loss": [row[h] for row in hist["loss"][:epochs]],
                     "val_loss": [row[h] for row in hist["val_loss"][:epochs]],
                     "epochs": epochs, "best_epoch": int(hist["best_epoch"][h]),
                     "best_val_loss": float(hist["best_val_loss"][h]),
                     # its own epochs, as loss and as train's history.json: a head stopped early was not
                     # trained in the later epochs of the sweep (metrics' timing has the whole sweep's)
                     "epoch_seconds": hist["epoch_seconds"][:epochs], "input_seconds": hist["input_seconds"][:epochs],
                     "compute_seconds": hist["compute_seconds"][:epochs],
                     "trained_by": "sweep (shared epochs; per-head loss and early stopping)"}
        sels = {"main": (sel if name == ALL_LAYERS_DIR else
                         dataclasses.replace(sel, text=c.features, layers=(sel.layers[h],), weighted=False))}
        metrics = {
            "fold": run_spec.fold, "seed": run_spec.seed,
            "uar": uar(y_true, y_pred, len(data.classes)), "accuracy": accuracy(y_true, y_pred),
            "n_test": int(len(y_true)),
            "confusion": confusion_matrix(y_true, y_pred, len(data.classes)).tolist(),
            "per_class": per_class_report(y_true, y_pred, data.classes),  # as train's metrics.json
            "classes": list(data.classes), "split": run_spec.split(),
            "n_utterances": {p: len(v) for p, v in parts.items()},
            "epochs": epochs, "best_epoch": head_hist["best_epoch"], "best_val_loss": head_hist["best_val_loss"],
            "recipe": recipe.to_dict(), "max_frames": max_frames, "norm": base.norm,
            "protocol": c.protocol, "head": c.head,
            "selections": {b: s.to_dict() for b, s in sels.items()},
            "cached_in_memory": bool(train.in_memory),
            # Timing is the whole sweep's (all heads share each epoch), repeated in every head.
            "timing": {"epoch_seconds_mean": epoch_s / max(1, n_epochs),
                       "input_seconds_mean": input_s / max(1, n_epochs),
                       "compute_seconds_mean": float(np.mean(hist["compute_seconds"] or [0.0])),
                       "input_share": input_s / epoch_s if epoch_s > 0 else 0.0, "peak_rss_mb": _peak_rss_mb(),
                       "sweep_epochs": n_epochs, "sweep_seconds": epoch_s},
            "trained_by": "sweep", "config_key": c.config_key(), "store_fingerprint": fp, "data_fingerprint": data_fp,
            "provenance": prov,
        }
        lw = None
        if name == ALL_LAYERS_DIR:
            lw = {"main": {"alphas": alphas, "normalised": (np.asarray(alphas) / max(sum(alphas), 1e-12)).tolist(),
                           "layers": list(sel.layers), "store": sel.alias, "selection": sel.text}}
        _write_run(out / name, c, run_spec, metrics, test, data.classes, proba[:, h], head_hist, lw)
        results[name] = metrics
    return results


def summarize_sweep(config: ExperimentConfig | Mapping[str, Any], out: Path | str) -> dict[str, Any]:
    """Write each head's results.json (summarize_runs) and ``out/sweep.json``; returns sweep.json's dict."""
    config = as_experiment_config(config)
    configs = sweep_configs(config)
    data = _prepare(configs[ALL_LAYERS_DIR])
    return _summarize_sweep(configs, Path(out), data, _plan(configs[ALL_LAYERS_DIR], data))


def _summarize_sweep(configs: dict[str, ExperimentConfig], out: Path, data: _Data,
                     specs: list[RunSpec]) -> dict[str, Any]:
    """summarize_sweep over prepared data and the runs planned from it (every head has the same folds)."""
    base = configs[ALL_LAYERS_DIR]
    sel = data.selections["main"]
    data_fp = _data_fingerprint(data)  # every head reads the same utterances: hashed once, not per head
    per_head = {name: _summarize_runs(c, out / name, data_fp, specs) for name, c in configs.items()}
    layers = list(sel.layers or ())
    spec = data.stores[sel.alias].features[sel.feature]

    def row(name: str) -> dict[str, Any]:
        r = per_head[name]
        return {"dir": name, "uar_mean": r["uar_mean"], "uar_std": r["uar_std"], "uar_per_run": r["uar_per_run"],
                "uar_pooled_mean": r["uar_pooled_mean"], "uar_pooled_std": r["uar_pooled_std"],
                "uar_pooled_per_seed": r["uar_pooled_per_seed"], "n_runs": r["n_runs"],
                "splits": r["splits"]}  # a row is then a valid input of headline_uar / format_uar

    weights = per_head[ALL_LAYERS_DIR].get("layer_weights") or {}
    norm = [v["main"]["normalised"] for v in weights.values() if isinstance(v, dict) and "main" in v]
    summary = {
        "kind": "layer_sweep", "upstream": sel.feature, "store": base.stores[sel.alias], "alias": sel.alias,
        "feature_spec": spec.to_dict(), "layers": layers, "protocol": base.protocol,
        "config": base.to_dict(), "config_key": base.config_key(),
        "per_layer": [{"layer": k, **row(_layer_dir(k))} for k in layers],
        "weighted_average": {**row(ALL_LAYERS_DIR), "layer_weights_mean": np.mean(norm, axis=0).tolist() if norm else [],
                             "layer_weights_std": np.std(norm, axis=0).tolist() if norm else []},
        # by the figure the report shows (folds pooled per seed when there are several folds);
        # summarize_runs always writes both means, so headline_uar's mean is never None here
        "best_layer": layers[int(np.argmax([headline_uar(per_head[_layer_dir(k)])[1] for k in layers]))],
        "uar_definition": per_head[ALL_LAYERS_DIR]["uar_definition"],
    }
    _write_json(out / "sweep.json", summary)
    return summary


def describe_sweep(summary: Mapping[str, Any]) -> str:
    """``best layer 7 UAR ... ; weighted average UAR ...``: a sweep.json summary as one line."""
    best = {r["layer"]: r for r in summary["per_layer"]}[summary["best_layer"]]
    # A tie (all probes at chance, or a small test set's coarse UAR steps) names every layer that shares
    # the best figure: "best layer 0" alone would single out one that is no better than the others.
    top = headline_uar(best)[1]
    tied = [r["layer"] for r in summary["per_layer"] if r["layer"] != summary["best_layer"]
            and top is not None and headline_uar(r)[1] is not None
            and math.isclose(headline_uar(r)[1], top, rel_tol=1e-9, abs_tol=1e-12)]  # equal UARs summed apart
    also = f" (tied with layer{'s' * (len(tied) > 1)} {', '.join(map(str, tied))})" if tied else ""
    return (f"best layer {summary['best_layer']}{also} {format_uar(best)}; weighted average "
            f"{format_uar(summary['weighted_average'])}")


def sweep_experiment(config: ExperimentConfig | Mapping[str, Any], *, out: Path | str, progress: bool = True,
                     threads: int | None = None) -> dict[str, Any]:
    """Sweep every layer of ``config.features`` over the protocol's folds and seeds; returns sweep.json's dict.

    Args:
        config: The experiment; ``features`` names the upstream (optionally a layer range), head dense.
        out: Output folder: one run directory per layer (``layer_NN``), ``all`` and ``sweep.json``.
        progress: Print one line per (fold, seed) with the UAR of each head.
        threads: TensorFlow thread count (see train_run).
    """
    config = as_experiment_config(config)
    _configure_threads(threads)
    out = Path(out)
    configs = sweep_configs(config)
    base = configs[ALL_LAYERS_DIR]
    view = open_view(base, heads=configs)  # one view of the store for the whole sweep
    prepared, specs = view.data, view.specs
    heads = set(configs)
    finished = [0]
    with share_out_folder(out, base.config_key(), "sweep"), keep_finished_runs(out, finished, "sweep"):
        # Only once the folder is ours: a sweep refused for another job's lock replaces nothing.
        warn_if_replacing(out / ALL_LAYERS_DIR, base, shown=out)
        others = sorted(p.name for p in out.glob("layer_*") if p.is_dir() and p.name not in heads)
        if others:
            log.warning("%s holds %s of an earlier sweep over other layers; this sweep does not train them, and "
                        "its sweep.json leaves them out. Give another output folder to keep the sweeps apart.", out,
                        others[0] if len(others) == 1 else f"{others[0]}..{others[-1]}")
        forget_not_trained(out)
        for name, c in configs.items():
            # As `train` does: a head's results.json of fewer seeds or folds must not read as complete
            # while the sweep trains the rest, nor after it was stopped (evaluate showed the old figures).
            _drop_stale_results(out / name, [spec.name for spec in specs], c.config_keys(), view.fingerprint)
        for i, spec in enumerate(specs, 1):
            t0 = time.perf_counter()
            res = _sweep_run(config, configs, spec, out, prepared,
                             progress=f"sweep {i}/{len(specs)} fold={spec.fold} seed={spec.seed}" if progress else None)
            finished[0] += len(res)
            if progress:
                skipped = any(m.get("skipped") for m in res.values())
                uars = " ".join(f"{100 * m['uar']:.0f}" for m in res.values())
                print(f"sweep {i}/{len(specs)} fold={spec.fold} seed={spec.seed} UAR per layer, then all: {uars} "
                      f"({time.perf_counter() - t0:.1f}s{', already complete' if skipped else ''})", flush=True)
        return _summarize_sweep(configs, out, prepared, specs)
