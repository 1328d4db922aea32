"""Running and summarising stage 2 experiments: train_run, train_experiment, summarize_runs, the
reopening of an experiment's view in a Dask task, and the finished runs a training that lost its store
keeps. Planning is in ``_planning``, the stores' data in ``_experiment_data``, the fingerprints that
tell current runs in ``_fingerprints``, the output folder's locks in ``_out_folder``.

Run directory layout (contract): ``OUT/experiment.json``, ``OUT/runs/<fold>__seed<k>/``
(written under a temporary name and renamed: complete or absent) and ``OUT/results.json``.

UAR definitions (results.json):
* ``uar_per_run`` / ``uar_mean`` / ``uar_std``: one UAR per run = (fold, seed), computed on
  that run's test partition; mean and population std (ddof=0) over all runs.
* ``uar_pooled_per_seed`` / ``uar_pooled_mean`` / ``uar_pooled_std``: per seed, the
  predictions of all folds concatenated and scored once (the released code's IEMOCAP
  scoring); identical to the per-run values for single-fold protocols (RAVDESS).
"""

from __future__ import annotations

import contextlib
import csv
import json
import resource
import shlex
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager

import numpy as np

from w2v2ser._common import EXIT_FAILED, STAGE2_PACKAGES, first_few, names_full_disk, provenance
from w2v2ser._files import publish_directory, write_atomically
from w2v2ser._process import CountedScope, caller_random_kept, check_thread_environment

from ._config import SEED_FIELDS, ExperimentConfig, as_experiment_config
from ._dataset import FeatureBatches, share_memory_budget
from ._errors import ConfigError, DataError
from ._experiment_data import _Data, _prepare, log
from ._fingerprints import (_complete, _data_fingerprint, _drop_stale_results, _store_fingerprints,
                            _warn_if_data_changed, key_fields, run_is_current, store_identities, warn_if_replacing)
from ._metrics import accuracy, confusion_matrix, per_class_report, uar
from ._normalisation import build_normaliser, save_normalisers
from ._out_folder import forget_not_trained, refuse_layer_sweep_folder, share_out_folder
from ._planning import RunSpec, _partitions, _plan, check_run_spec, open_view, plan_runs
from ._protocols import Fold, check_disjoint
from ._runfiles import damaged_run_files, record_run_files, writing_run
from ._tfdata import TRAIN_MICRO_BATCH_MB, micro_batch_size

__all__ = ["RunResult", "reopen_view", "train_run", "summarize_runs", "train_experiment", "keep_finished_runs",
           "store_lost_errors", "store_lost_note", "finished_runs_kept"]

@dataclass
class RunResult:
    """Outcome of one run (also rebuilt from a complete run directory).

    Attributes:
        fold: Name of the protocol fold.
        seed: The run's seed.
        uar: Unweighted average recall on the fold's test set (a fraction).
        accuracy: Accuracy on the test set (a fraction).
        n_test: Number of test utterances.
        epochs: Epochs trained.
        best_val_loss: Best validation loss, or None when the run recorded none.
        path: The run directory.
        skipped: True when the run was already complete and was not retrained.
        metrics: Everything the run's ``metrics.json`` holds.
    """

    fold: str
    seed: int
    uar: float
    accuracy: float
    n_test: int
    epochs: int
    best_val_loss: float | None
    path: str
    skipped: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)


def reopen_view(config: ExperimentConfig, revisions: Mapping[str, int]) -> _Data:
    """The stores of a view, opened again in another process (a Dask task of `w2v2ser run`).

    Raises:
        StoreChangedError: An extraction changed a store since the view was opened (its revision
            differs), so this process would read other utterances than the plan and the summary.
    """
    return _prepare(config, revisions=revisions)


# ------------------------------------------------------------------------------------ helpers
def _write_json(path: Path, obj: Any) -> None:
    write_atomically(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _configure_threads(threads: int | None) -> None:
    # TensorFlow aborts the whole process (a notebook's kernel) on a negative count: "Check failed:
    # num_threads >= 1", from the argument or from a cluster script's TF_NUM_INTRAOP_THREADS.
    # A whole float (4.0, from YAML or a notebook) was accepted before this check, and still is.
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer, float))
                                or threads < 0 or (isinstance(threads, float) and not threads.is_integer())):
        raise ConfigError(f"threads: got {threads!r}; expected a whole number of TensorFlow threads, at least 1 "
                          f"(None or 0: TensorFlow's default, every usable core)")
    if not threads:
        check_thread_environment(instead="--threads N, threads=N")
    import tensorflow as tf

    if not threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(int(threads))
    except RuntimeError:
        # TensorFlow already initialised in this process: the setting cannot change any more.
        if tf.config.threading.get_intra_op_parallelism_threads() != int(threads):
            log.warning("threads=%s ignored: TensorFlow was initialised before train_run in this process", threads)


def _provenance() -> dict[str, Any]:
    """What a stage-2 result was made with (:func:`~w2v2ser._common.provenance`), with TensorFlow's
    thread counts when it is loaded (0: its default, every usable core); torch is never imported."""
    tf = sys.modules.get("tensorflow")
    threads = {}
    if tf is not None:
        threads = {"tensorflow_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                   "tensorflow_inter_op": tf.config.threading.get_inter_op_parallelism_threads()}
    return provenance(STAGE2_PACKAGES, threads=threads)


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _start_run(config: ExperimentConfig, run_spec: RunSpec) -> None:
    """Check the run's split and reset Keras to a fresh, seeded state (one place for every run kind)."""
    import keras
    import tensorflow as tf

    check_disjoint(Fold(run_spec.fold, run_spec.train, run_spec.validation, run_spec.test))
    keras.backend.clear_session()
    keras.utils.set_random_seed(run_spec.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


def _put_op_determinism_back(before: bool | None) -> None:
    """Turn op determinism off again where it was off before the first run in progress (``before``)."""
    if before is False and _op_determinism():
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()


# Runs in progress (all threads), and the state they found.
_DETERMINISM = CountedScope(lambda: _op_determinism(), _put_op_determinism_back)


def _op_determinism_kept() -> ContextManager[None]:
    """Give TensorFlow's op determinism back as it was once the last run in progress ends.

    A deterministic run enables it (``_start_run``) for the whole process: a notebook's later
    ``deterministic=False`` run, or its own TensorFlow work, stayed on the slower deterministic
    kernels. Counted over threads (a Dask worker's runs at once): a run never sees it switched
    off under it. TensorFlow has no public switch to turn it off again; without its internal one
    (``disable_op_determinism``), it stays on, as the README says. Also a decorator.
    """
    return _DETERMINISM()


def _op_determinism() -> bool | None:
    """Whether TensorFlow's op determinism is on; None when TensorFlow cannot say (no internal getter)."""
    try:
        from tensorflow.python.framework import config as tf_config

        return bool(tf_config.is_op_determinism_enabled()) if hasattr(tf_config, "disable_op_determinism") else None
    except (ImportError, AttributeError):
        return None


def _result(metrics: dict[str, Any], run_dir: Path, skipped: bool) -> RunResult:
    return RunResult(metrics["fold"], metrics["seed"], metrics["uar"], metrics["accuracy"], metrics["n_test"],
                     metrics["epochs"], metrics.get("best_val_loss"), str(run_dir), skipped, metrics)


# ---------------------------------------------------------------------------------------- runs
def train_run(config: ExperimentConfig | Mapping[str, Any], run_spec: RunSpec, *, out: Path | str,
              threads: int | None = None, verbose: int = 0, progress: str | None = None) -> RunResult:
    """Train and test one (fold, seed) run and write ``out/runs/<fold>__seed<k>/`` atomically.

    A run directory that is already complete for the same ``config.config_key()`` and store
    identity is not retrained (``RunResult.skipped`` is True). Safe to call from a separate
    process (e.g. a Dask task): it opens the stores itself.

    Args:
        config: The experiment.
        run_spec: One element of ``plan_runs(config)``.
        out: Experiment output directory.
        threads: TensorFlow intra/inter-op thread count, applied before TensorFlow initialises
            (None = TensorFlow's default).
        verbose: Keras fit verbosity.
        progress: When given, a progress bar over the epochs on stderr, with this description.
    """
    config = as_experiment_config(config)
    check_run_spec(run_spec)
    _configure_threads(threads)
    return _train_run(config, run_spec, Path(out), _prepare(config), verbose=verbose, progress=progress)


def _record_seeds(path: Path, config: ExperimentConfig) -> None:
    """Write ``config``'s seeds into the experiment.json of the same configuration at ``path`` where they differ."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if (isinstance(recorded, dict) and recorded.get("config_key") in config.config_keys()
            and config.seeds_differ(recorded)):
        _write_json(path, {**recorded, **{k: config.to_dict().get(k) for k in SEED_FIELDS}})


@names_full_disk()  # a full disk names this folder (keras, zipfile and PIL name no file)
@caller_random_kept()  # _start_run seeds the caller's np.random and random: given back after the run
@_op_determinism_kept()  # and enables op determinism, process-wide: given back too
def _train_run(config: ExperimentConfig, run_spec: RunSpec, out: Path, data: _Data, *, verbose: int = 0,
               progress: str | None = None) -> RunResult:
    """train_run on stores already opened: train_experiment opens them once, so every run of one
    invocation reads the same utterances (a store opened per run took in a concurrent extraction's
    additions half-way, and results.json silently pooled half of the folds)."""
    run_dir = out / "runs" / run_spec.name
    key = config.config_key()
    fingerprints, data_fp = _store_fingerprints(config, data), _data_fingerprint(data)
    fingerprint = fingerprints[0]
    done = _complete(run_dir, config.config_keys(), fingerprints, data_fp, run_spec.split())
    if done is not None:
        return _result(done, run_dir, skipped=True)
    if not (out / "experiment.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "experiment.json", {**config.to_dict(), **key_fields(config),
                                              "stores_identity": store_identities(config, data.stores)})
    else:  # evaluate and predict take the current seeds from there where results.json does not name them
        _record_seeds(out / "experiment.json", config)
    _start_run(config, run_spec)
    recipe = config.resolved_recipe()
    max_frames, parts, sources, normalisers = _partitions(config, data, run_spec)
    # Batches too large for TRAIN_MICRO_BATCH_MB (large models' all layers) go in micro-batches.
    micro = micro_batch_size(recipe.batch_size, (max_frames or 1000) * sum(s.frame_bytes for s in sources),
                             TRAIN_MICRO_BATCH_MB)
    common = dict(sources=sources, classes=data.classes, max_frames=max_frames,
                  cache=config.cache, cache_budget_mb=config.cache_budget_mb, workers=config.workers)
    train = FeatureBatches(parts["train"], shuffle=True, seed=run_spec.seed, batch_size=recipe.batch_size,
                           accumulate=recipe.batch_size // micro, **common)
    val = FeatureBatches(parts["validation"], batch_size=micro, **common)
    test = FeatureBatches(parts["test"], batch_size=micro, **common)
    # One memory budget for the whole run, not one per partition: with a budget per partition the
    # validation and test partitions (each ~1/12 of RAVDESS) were held whenever they fitted alone,
    # so memory grew with the store up to 3x the budget (the old process-wide frame cache did the
    # same, which was the 1.51x peak RSS growth from a quarter store to the full one).
    share_memory_budget([train, val, test], cache=config.cache, budget_mb=config.cache_budget_mb)

    from ._heads import EpochProgress, make_head  # Keras loads only when a run trains

    # The run's seed goes to the head too: its layers then draw their seeds from their own
    # generator, not from Python's global random, which other threads (Dask's) also draw from.
    head = make_head(config.head, units=config.units, dropout=config.dropout, recipe=recipe,
                     classes=data.classes, verbose=verbose, run_eagerly=config.run_eagerly, seed=run_spec.seed)
    head.fit(train, validation_data=val, callbacks=[EpochProgress(progress)] if progress else ())
    proba = head.predict_proba(test)
    y_true, y_pred = test.labels, np.argmax(proba, axis=1)
    hist = head.history_
    epoch_s, input_s = float(np.sum(hist["epoch_seconds"])), float(np.sum(hist["input_seconds"]))
    metrics = {
        "fold": run_spec.fold, "seed": run_spec.seed,
        "uar": uar(y_true, y_pred, len(data.classes)), "accuracy": accuracy(y_true, y_pred),
        "n_test": int(len(y_true)), "confusion": confusion_matrix(y_true, y_pred, len(data.classes)).tolist(),
        "per_class": per_class_report(y_true, y_pred, data.classes),
        "classes": list(data.classes), "split": run_spec.split(),
        "n_utterances": {p: len(v) for p, v in parts.items()},
        "epochs": hist["epochs"], "best_epoch": hist.get("best_epoch"), "best_val_loss": hist.get("best_val_loss"),
        "recipe": recipe.to_dict(), "micro_batch_size": micro, "max_frames": max_frames, "norm": config.norm,
        "protocol": config.protocol, "head": config.head,  # what a script over many runs' metrics groups by
        "selections": {b: s.to_dict() for b, s in data.selections.items()},
        "cached_in_memory": bool(train.in_memory),
        "timing": {"epoch_seconds_mean": epoch_s / max(1, hist["epochs"]),
                   "input_seconds_mean": input_s / max(1, hist["epochs"]),
                   "compute_seconds_mean": float(np.mean(hist["compute_seconds"] or [0.0])),
                   "input_share": input_s / epoch_s if epoch_s > 0 else 0.0, "peak_rss_mb": _peak_rss_mb(),
                   # in memory: the one read of each partition, before the first epoch
                   "partition_read_seconds": float(sum(b.input_seconds for b in (train, val, test) if b.in_memory))},
        "config_key": key, "store_fingerprint": fingerprint, "data_fingerprint": data_fp,
        "provenance": _provenance(),
    }

    with writing_run(out / "runs", run_spec.name) as tmp:
        head.model_.save(tmp / "model.keras")
        _write_predictions(tmp / "predictions.csv", test.items, data.classes, y_pred, proba, run_spec)
        _write_json(tmp / "history.json", hist)
        # Files of no known speaker get the training speakers' global statistics at prediction time.
        fallback = {b: build_normaliser(data.stores[sel.alias], sel, "global", train_speakers=run_spec.train,
                                        speakers=[], utterances=data.statistics_ids)
                    for b, sel in data.selections.items() if normalisers[b].mode == "speaker"}
        save_normalisers(tmp / "normalisation.npz", normalisers, global_fallback=fallback)
        if head.layer_weights_:
            _write_json(tmp / "layer_weights.json", {
                b: {"alphas": a, "normalised": (np.asarray(a) / max(sum(a), 1e-12)).tolist(),
                    "layers": list(data.selections[b].layers or ()), "store": data.selections[b].alias,
                    "selection": data.selections[b].text}
                for b, a in head.layer_weights_.items()})
        # written last: its presence marks the run complete, and it holds the other files' sha256
        _write_json(tmp / "metrics.json", record_run_files(tmp, metrics))
        publish_directory(tmp, run_dir)
    return _result(metrics, run_dir, skipped=False)


def _write_predictions(path: Path, items: Sequence[Any], classes: Sequence[str], y_pred: np.ndarray,
                       proba: np.ndarray, run_spec: RunSpec) -> None:
    """A run's predictions.csv (train's and the sweep's): one row per test utterance, its class
    probabilities, then its fold and seed (last, so files concatenated across runs keep them)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "speaker", "label", "predicted", *(f"p_{c}" for c in classes), "fold", "seed"])
        for it, p, row in zip(items, y_pred, proba):
            w.writerow([it.id, it.speaker, classes[it.label], classes[p], *(f"{v:.6g}" for v in row),
                        run_spec.fold, run_spec.seed])


def _read_predictions(path: Path) -> tuple[list[str], list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["label"] for r in rows], [r["predicted"] for r in rows]


def summarize_runs(config: ExperimentConfig | Mapping[str, Any], out: Path | str, *,
                   data: str | None = None) -> dict[str, Any]:
    """Aggregate the complete runs of ``plan_runs(config)`` into ``out/results.json``.

    Args:
        config: The experiment (an :class:`ExperimentConfig` or its dict).
        out: The experiment's output folder.
        data: The utterances' fingerprint (``data_fingerprint(config)``), when the caller has it.

    Raises:
        DataError: No planned run is complete for this config key and these utterances.
    """
    config = as_experiment_config(config)
    if data is None:
        prepared = _prepare(config)
        return _summarize_runs(config, Path(out), _data_fingerprint(prepared), _plan(config, prepared))
    return _summarize_runs(config, Path(out), data, plan_runs(config))


@names_full_disk()  # a full disk names this folder (keras, zipfile and PIL name no file)
def _summarize_runs(config: ExperimentConfig, out: Path, data: str, specs: list[RunSpec]) -> dict[str, Any]:
    """summarize_runs over the runs ``specs`` planned (train_experiment's, from its one view of the stores)."""
    key, keys = config.config_key(), config.config_keys()
    runs, missing = [], []
    for spec in specs:
        metrics_path = out / "runs" / spec.name / "metrics.json"
        try:
            m = json.loads(metrics_path.read_text())
        except (OSError, ValueError):
            missing.append(spec.name)
            continue
        if not run_is_current(m, keys, data):  # another configuration, or a store that has changed since
            missing.append(spec.name)
            continue
        runs.append((spec, m))
    if not runs:
        raise DataError(f"no complete run under {out / 'runs'} for config key {key} (planned {len(specs)} runs); "
                        f"run train_experiment first")
    classes = runs[0][1]["classes"]
    idx = {c: i for i, c in enumerate(classes)}
    per_run = [m["uar"] for _, m in runs]
    pooled: dict[int, tuple[list[int], list[int]]] = {}
    for spec, m in runs:
        damaged = damaged_run_files(out / "runs" / spec.name, m)
        if damaged:  # train_experiment trains such runs again before it summarises
            raise DataError(f"run {out / 'runs' / spec.name} is damaged ({'; '.join(damaged)}); train the "
                            f"experiment again (`w2v2ser train ... --out {shlex.quote(str(out))}`) to retrain it, then "
                            f"summarise")
        t, p = _read_predictions(out / "runs" / spec.name / "predictions.csv")
        acc = pooled.setdefault(spec.seed, ([], []))
        acc[0].extend(idx[v] for v in t)
        acc[1].extend(idx[v] for v in p)
    pooled_uar = {str(s): uar(t, p, len(classes)) for s, (t, p) in sorted(pooled.items())}
    all_true = [v for t, _ in pooled.values() for v in t]
    all_pred = [v for _, p in pooled.values() for v in p]
    layer_weights = {}
    for spec, _ in runs:
        lw = out / "runs" / spec.name / "layer_weights.json"
        if lw.exists():
            layer_weights[spec.name] = json.loads(lw.read_text())
    # In memory or streamed gives other numbers for one seed (README, Reproducibility), and `cache`
    # is not in the run's key: seeds added with another cache setting or budget are fed otherwise.
    fed = {s.name: m.get("cached_in_memory") for s, m in runs}
    if len({v for v in fed.values() if v is not None}) > 1:
        log.warning("%s mixes runs fed two ways: %s in memory, %s streamed (another `cache` setting or "
                    "`cache_budget_mb` when seeds were added); a fresh folder with one setting gives other numbers for "
                    "some of these seeds. To compare like with like, train into a new --out", out,
                    first_few([n for n, v in fed.items() if v]), first_few([n for n, v in fed.items() if v is False]))
    timings = [m["timing"] for _, m in runs]
    results = {
        "uar_mean": float(np.mean(per_run)), "uar_std": float(np.std(per_run)),
        "uar_per_run": per_run,
        "runs": [{"name": s.name, "fold": s.fold, "seed": s.seed, "uar": m["uar"], "accuracy": m["accuracy"],
                  "epochs": m["epochs"], "best_val_loss": m["best_val_loss"], "n_test": m["n_test"]}
                 for s, m in runs],
        "uar_pooled_per_seed": pooled_uar,
        "uar_pooled_mean": float(np.mean(list(pooled_uar.values()))),
        "uar_pooled_std": float(np.std(list(pooled_uar.values()))),
        "uar_definition": ("uar_mean/uar_std: mean and population std over runs (fold x seed) of each run's "
                           "test UAR; uar_pooled_*: per seed, UAR of all folds' predictions concatenated "
                           "(released code's IEMOCAP scoring)"),
        "accuracy_mean": float(np.mean([m["accuracy"] for _, m in runs])),
        # Scored as uar_pooled_*: the report puts it beside the pooled UAR of a several-fold protocol.
        "accuracy_pooled_mean": float(np.mean([accuracy(t, p) for t, p in pooled.values()])),
        "n_test": int(np.mean([len(t) for t, _ in pooled.values()])),
        "n_runs": len(runs), "n_runs_planned": len(specs), "missing_runs": missing,
        "classes": classes,
        "confusion": np.sum([m["confusion"] for _, m in runs], axis=0).tolist(),
        "per_class": per_class_report(all_true, all_pred, classes),
        "per_class_definition": ("classification_report(output_dict=True) of every run's test predictions "
                                 "concatenated (all folds and seeds), the same counts as 'confusion'; "
                                 "'macro avg' over the classes with test utterances, as the UAR"),
        "config": config.to_dict(), "config_key": key, "recipe": runs[0][1]["recipe"],
        "splits": {s.fold: s.split() for s, _ in runs},
        "cached_in_memory": fed,
        "layer_weights": layer_weights,
        "timing": {"epoch_seconds_mean": float(np.mean([t["epoch_seconds_mean"] for t in timings])),
                   "input_seconds_mean": float(np.mean([t["input_seconds_mean"] for t in timings])),
                   "compute_seconds_mean": float(np.mean([t["compute_seconds_mean"] for t in timings])),
                   "input_share": float(np.mean([t["input_share"] for t in timings])),
                   "peak_rss_mb": float(max(t["peak_rss_mb"] for t in timings))},
        "provenance": _provenance(),  # of this summary; each run's metrics.json has its own
    }
    _write_json(out / "results.json", results)
    return results


def train_experiment(config: ExperimentConfig | Mapping[str, Any], *, out: Path | str, progress: bool = True,
                     threads: int | None = None) -> dict[str, Any]:
    """Plan, train every run (skipping complete ones) and summarise; returns results.json's dict.

    Args:
        config: The experiment.
        out: Output directory (created).
        progress: Print one line per run (run i/N, fold, seed, epochs, val loss, UAR, seconds).
        threads: TensorFlow thread count (see train_run).

    Raises:
        ConfigError: ``out`` is (inside) a feature store or a layer sweep's folder, or the config is invalid.
        DiskFullError: the disk (or quota, or a file size limit) is full; it names ``out``, and finished
            runs are kept: rerun once there is space to train only the rest.
    """
    from w2v2ser.store._layout import refuse_inside_store

    config = as_experiment_config(config)
    _configure_threads(threads)
    refuse_inside_store(out, "out")
    out = Path(out)
    refuse_layer_sweep_folder(out, "train_experiment another out (`w2v2ser train --out`)")
    view = open_view(config)  # one view of the stores for the whole invocation
    with share_out_folder(out, config.config_key(), "train"):
        # Only once the folder is ours: a job refused for another's lock replaces nothing.
        warn_if_replacing(out, config)
        _warn_if_data_changed(out, config, view.fingerprint, view.data)
        forget_not_trained(out)
        return _train_all(config, out, view.data, view.specs, view.fingerprint, progress=progress)


@names_full_disk()  # a full disk names this folder (keras, zipfile and PIL name no file)
def _train_all(config: ExperimentConfig, out: Path, prepared: _Data, specs: list[RunSpec], data: str, *,
               progress: bool) -> dict[str, Any]:
    """train_experiment's runs and summary, in a folder no job of another configuration writes."""
    _write_json(out / "experiment.json", {**config.to_dict(), **key_fields(config),
                                          "stores_identity": store_identities(config, prepared.stores)})
    _drop_stale_results(out, [spec.name for spec in specs], config.config_keys(), data)
    finished = [0]
    with keep_finished_runs(out, finished, "train"):
        for i, spec in enumerate(specs, 1):
            t0 = time.perf_counter()
            res = _train_run(config, spec, out, prepared,
                             progress=f"run {i}/{len(specs)} fold={spec.fold} seed={spec.seed}" if progress else None)
            finished[0] += 1
            if progress:
                vl = "n/a" if res.best_val_loss is None else f"{res.best_val_loss:.4f}"
                print(f"run {i}/{len(specs)} fold={spec.fold} seed={spec.seed} epochs={res.epochs} "
                      f"val_loss={vl} UAR={res.uar:.3f} ({time.perf_counter() - t0:.1f}s"
                      f"{', already complete' if res.skipped else ''})", flush=True)
        return _summarize_runs(config, out, data, specs)


@contextlib.contextmanager
def keep_finished_runs(out: Path, finished: list[int], what: str) -> Iterator[None]:
    """A store that stops answering (object storage), or that an extraction changes, after some runs
    finished: the one-line error says they are kept, and exits 1 (a run failed, finished work
    kept), not 2."""
    try:
        yield
    except store_lost_errors() as error:
        if finished[0]:
            error.args = (f"{error} {store_lost_note(out, finished[0], what, error)}",)
            error.exit_code = EXIT_FAILED
        raise


def store_lost_errors() -> tuple[type[Exception], ...]:
    """The errors of a store that stopped answering or that an extraction changed (or is changing):
    a training stops there, keeping its finished runs, instead of trying each further run on it."""
    from w2v2ser.store import StoreChangedError, StoreIncompleteError, StoreUnreachableError

    return StoreUnreachableError, StoreChangedError, StoreIncompleteError


def store_lost_note(out: Path, finished: int, what: str, error: BaseException) -> str:
    """What a training stopped by ``error`` (one of :func:`store_lost_errors`) says of its finished runs."""
    from w2v2ser.store import StoreGoneError, StoreUnreachableError

    when = "once the store is reachable" if isinstance(error, StoreUnreachableError) else \
        "with the store's new path" if isinstance(error, StoreGoneError) else "once that extraction has finished"
    return finished_runs_kept(out, finished, what, when=when)


def finished_runs_kept(out: Path, finished: int, what: str, *, when: str = "once the store is reachable") -> str:
    """What a training that lost its store says of the runs it finished (``what``: the command)."""
    return f"{finished} finished run(s) in {out} are kept; rerun the same `w2v2ser {what}` command {when} to train the rest."
