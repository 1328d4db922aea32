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
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from w2v2ser._common import names_full_disk, naming_full_disk, progress_bar
from w2v2ser._files import publish_directory
from w2v2ser._process import caller_random_kept

from ._config import ExperimentConfig, as_experiment_config
from ._dataset import FeatureBatches, Item, Source
from ._errors import ConfigError
from ._experiment import (_configure_threads, _op_determinism_kept, _peak_rss_mb, _provenance, _record_seeds,
                          _start_run, _summarize_runs, _write_json, _write_predictions, keep_finished_runs)
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
from ._sweepfit import fit_sweep_heads, predict_sweep_heads
from ._tfdata import micro_batch_size

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

    Args:
        config: The sweep's experiment (an :class:`ExperimentConfig` or its dict).

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

    Args:
        config: The sweep's experiment (an :class:`ExperimentConfig` or its dict).
        run_spec: One run of ``plan_runs(config)``.
        out: The sweep's output folder (one folder per head under it).
        threads: TensorFlow thread count (see train_run).
        micro_batch_mb: Most megabytes of float32 frames per micro-batch.
        progress: When given, a progress bar over the epochs on stderr, with this description.

    Returns:
        Head folder name -> metrics (with "skipped": True when already complete).
    """
    config = as_experiment_config(config)
    check_run_spec(run_spec)
    _configure_threads(threads)
    configs = sweep_configs(config)
    return _sweep_run(config, configs, run_spec, Path(out), _prepare(configs[ALL_LAYERS_DIR]),
                      micro_batch_mb=micro_batch_mb, progress=progress)


@names_full_disk()  # a full disk names this folder (keras, zipfile and PIL name no file)
@caller_random_kept()  # _start_run seeds the caller's np.random and random: given back after the run
@_op_determinism_kept()  # and enables op determinism, process-wide: given back too
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
    from ._heads import _empty_utterances, _frameless_fit_message  # Keras loads only when a run trains

    empty, val_empty = _empty_utterances(train), _empty_utterances(val)
    if empty or val_empty:  # trained without a head's fit, which warns of them: the same warning, once per run
        warnings.warn(_frameless_fit_message(f"layer sweep run {run_spec.name}", (empty, "of its training part"),
                                             (val_empty, "of its validation part")), UserWarning, stacklevel=2)
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
    """Write each head's results.json (summarize_runs) and ``out/sweep.json``; returns sweep.json's dict.

    Args:
        config: The sweep's experiment (an :class:`ExperimentConfig` or its dict).
        out: The sweep's output folder.
    """
    config = as_experiment_config(config)
    configs = sweep_configs(config)
    data = _prepare(configs[ALL_LAYERS_DIR])
    return _summarize_sweep(configs, Path(out), data, _plan(configs[ALL_LAYERS_DIR], data))


@names_full_disk()  # a full disk names this folder (keras, zipfile and PIL name no file)
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
    """``best layer 7 UAR ... ; weighted average UAR ...``: a sweep.json summary as one line.

    Args:
        summary: sweep.json's dict, as :func:`summarize_sweep` returns it.
    """
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
    # naming_full_disk: the seeds recorded before the runs (_sweep_run names the folder itself).
    with (share_out_folder(out, base.config_key(), "sweep"), keep_finished_runs(out, finished, "sweep"),
          naming_full_disk(out)):
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
            # Seeds are not in the key: runs all done (fewer seeds) skip _sweep_run, which records them.
            _record_seeds(out / name / "experiment.json", c)
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
