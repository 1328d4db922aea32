"""`w2v2ser run`'s train stage: each experiment's runs planned and trained on the cluster (runs with a
matching configuration key are not resubmitted), its results summarised, and an experiment that cannot
run marked with its reason (skipped.json, failed.json).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ._common import (DiskFullError, W2v2serError, check_stop, error_text, naming_full_disk, progress_bar)
from ._process import task_error
from ._text import failures_by_error
from ._cluster import ClusterHandle
from ._config import ExperimentSpec, PipelineConfig
from ._stage_common import (_corpus_topic, _LazyCluster, _Outcome, _read_json, _Reasons, _say, _skip_marker,
                            _store_topic, _write_json)


def _planned_text(planned: int, experiments: int, outcome: _Outcome) -> str:
    """``7 of 10 experiment(s) planned (3 failed before training)``: counts that add up to the file's."""
    left_out = [f"{len(names)} {what}" for names, what in ((outcome.skipped, "skipped"),
                                                          (outcome.failed, "failed before training")) if names]
    return f"{planned} of {experiments} experiment(s) planned" + (f" ({', '.join(left_out)})" if left_out else "")


def _error_text(error: BaseException) -> str:
    """The one-line message of an error that fails one experiment: a path error (no permission, a file in
    the way of a folder) says which file and what to do, as on the command line."""
    return error_text(error, otherwise=f"{type(error).__name__}: {error}")


def _run_error_text(error: BaseException, said: str) -> str:
    """The reason of one failed run: a path error (no permission, a file in the way of its folder) says
    which file and what to do, as at planning; any other error is ``said``."""
    return error_text(error, otherwise=said) if isinstance(error, OSError) else said


def _skip_reason(config: PipelineConfig, experiment: ExperimentSpec) -> tuple[str, str, bool] | None:
    """(reason, short topic, failed) when the experiment cannot run, else None. ``failed``: its store
    failed in the extract stage (a model that is the user's to fix, or other weights): the experiment
    fails too, also in a `--stage train` of its own; an offline model or a corpus without a path skips it."""
    reason = config.corpora[experiment.corpus].skip_reason
    if reason:
        return reason, _corpus_topic(experiment.corpus), False
    for store in experiment.stores:
        path = config.store_path(store, experiment.corpus)
        marker = _read_json(_skip_marker(path))
        if isinstance(marker, dict) and marker.get("other_weights") and not path.exists():
            continue  # the store of other weights was moved away, as its reason said: it is to be extracted
        if isinstance(marker, dict) and marker.get("reason"):
            return (str(marker["reason"]), (f"store {store!r} holds other weights" if marker.get("other_weights")
                                            else _store_topic(store)),
                    bool(marker.get("failed") or marker.get("other_weights")))
    return None


def _mark_not_trained(config: PipelineConfig, experiment: ExperimentSpec, reason: str, *,
                  marker: str = "skipped.json") -> None:
    """Write the reason an experiment did not train into its run dir (``marker``: skipped.json, or
    failed.json for one that failed), with its settings, for the report to name and place its row."""
    # The stores' extractor configs (their model ids) let the report name a skipped row by its
    # model, as `w2v2ser train` records them for a run that trained.
    identity = {alias: {"path": experiment.config["stores"][alias],
                        "features": {name: {"config": options}
                                     for name, options in config.stores[store].feature_dicts().items()}}
                for alias, store in experiment.stores.items()}
    # The defaults of the keys a report row shows (a sweep's probes are Dense heads), where the file
    # left them out: the row of an experiment that did not train reads like that of one that did.
    from dataclasses import fields

    from w2v2ser.train import ExperimentConfig  # its config only: no TensorFlow

    shown = {f.name: f.default for f in fields(ExperimentConfig) if f.name in ("head", "norm", "recipe")}
    try:
        if marker == "failed.json":  # a skipped.json of an earlier run would outweigh it in the report
            (experiment.run_dir / "skipped.json").unlink(missing_ok=True)
        with naming_full_disk(experiment.run_dir):
            _write_json(experiment.run_dir / marker,
                        {"reason": reason, "name": experiment.name, "corpus": experiment.corpus, **shown,
                         **experiment.config, "stores_identity": identity})
    except OSError as error:  # its folder is blocked (a file in the way, no permission): the others go on
        _say(f"train {experiment.name}: its {marker} cannot be written, so the report will not name this reason: "
             f"{error_text(error)}")


def _prepare_experiment(experiment: ExperimentSpec, locks: ExitStack,
                        opened: dict[str, Any] | None = None) -> tuple[Any, list]:
    """Open one experiment's stores once, plan its runs and take its folder's lock, as `train` and
    `sweep` do; returns (the view its runs and summary read, runs still to do). The lock (held until
    ``locks`` closes) refuses a job of another configuration writing into the same folder. ``opened``:
    the stage's readers by store path, shared by the views (memory and descriptors per store, not
    per experiment of the grid)."""
    from w2v2ser.train import ExperimentConfig
    from w2v2ser.train._experiment import (forget_not_trained, key_fields, open_view, refuse_layer_sweep_folder,
                                           share_out_folder, store_identities, warn_if_replacing)

    train_config = ExperimentConfig.from_dict(experiment.config)
    out = experiment.run_dir
    if experiment.sweep:  # one unit per (fold, seed) trains every head; each head keeps its own run dir
        from w2v2ser.train import ALL_LAYERS_DIR, sweep_configs

        heads = sweep_configs(train_config)
        view = open_view(heads[ALL_LAYERS_DIR], heads=heads, opened=opened)
    else:
        refuse_layer_sweep_folder(out, "this experiment another name")
        view = open_view(train_config, opened=opened)
    locks.enter_context(share_out_folder(out, view.config.config_key(), "run"))
    # Only once the folder is ours (a job refused for another's lock replaces nothing); e.g. a
    # throw-away --set over the file's finished runs.
    if experiment.sweep:
        warn_if_replacing(out / ALL_LAYERS_DIR, heads[ALL_LAYERS_DIR], shown=out)
    else:
        warn_if_replacing(out, train_config)
    forget_not_trained(out)
    pending = [run for run in view.specs if not _run_done(experiment, view, run)]
    if experiment.sweep:  # each head records the seeds, as below (a done run is not trained, so would not)
        from w2v2ser.train._experiment import _record_seeds

        for name, head in heads.items():
            _record_seeds(out / name / "experiment.json", head)
        return view, pending
    key, keys = train_config.config_key(), train_config.config_keys()
    recorded = _read_json(out / "experiment.json")
    now = train_config.to_dict()
    # Seeds are not in the key, but evaluate and predict take the current seeds from experiment.json where
    # results.json is not there (yet): changed seeds rewrite it too.
    if not isinstance(recorded, dict) or recorded.get("config_key") != key or train_config.seeds_differ(recorded):
        # A changed configuration: describe the new one; old results must never be shown as its results
        # (a key of the same configuration as 0.2 recorded it only gets the current key recorded).
        if not isinstance(recorded, dict) or recorded.get("config_key") not in keys:
            (out / "results.json").unlink(missing_ok=True)
        else:  # fewer or other seeds: results.json of runs no longer planned is not this experiment's
            results = _read_json(out / "results.json")
            runs = results.get("runs") if isinstance(results, dict) else None
            named = {r.get("name") for r in runs if isinstance(r, dict)} if isinstance(runs, list) else set()
            if named - {run.name for run in view.specs}:
                (out / "results.json").unlink(missing_ok=True)
        identity = store_identities(train_config, view.data.stores)
        _write_json(out / "experiment.json", {**now, **key_fields(train_config),
                                              "stores_identity": identity, "name": experiment.name})
    if pending:  # interrupted, the folder must read as unfinished, not as the results of fewer runs
        (out / "results.json").unlink(missing_ok=True)
    return view, pending


def _run_done(experiment: ExperimentSpec, view: Any, run: Any) -> bool:
    """Whether a run is complete for this configuration and the view's data (a sweep's: in every head)."""
    from w2v2ser.train._experiment import run_is_current

    heads = view.heads or {"": view.config}  # "": the experiment's own folder
    return all(run_is_current(_read_json(experiment.run_dir / name / "runs" / run.name / "metrics.json"),
                              c.config_keys(), view.fingerprint) for name, c in heads.items())


def _results_current(train_config: Any, out: Path, planned: int) -> bool:
    results = _read_json(out / "results.json")
    return (isinstance(results, dict) and results.get("config_key") == train_config.config_key()
            and results.get("n_runs") == planned and not _renamed_stores(results, train_config.to_dict()))


def _renamed_stores(results: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The stores whose folder name differs between a results.json and the configuration ``now``
    (``to_dict()``). Not in the config key (a store may move), but a folder's name is the hash of its
    feature options and corpus: the train stage summarises its runs again (they are retrained only when
    their data changed), and the evaluate stage hides results that were not summarised since."""
    recorded = results.get("config") if isinstance(results.get("config"), dict) else {}
    stores = recorded.get("stores") if isinstance(recorded.get("stores"), dict) else {}
    return [f"store {alias} {Path(str(stores[alias])).name} -> {Path(path).name} (its feature options or "
            f"corpus changed)" for alias, path in now["stores"].items()
            if alias in stores and Path(str(stores[alias])).name != Path(path).name]


def _run_train(config: PipelineConfig, cluster: _LazyCluster, reasons: _Reasons | None = None, *,
               progress: bool = True) -> _Outcome:
    from w2v2ser.train._errors import FolderBusyError

    outcome = _Outcome()
    reasons = reasons if reasons is not None else _Reasons()
    with ExitStack() as locks:  # each experiment's folder lock, held until its summary is written
        todo: list[tuple[ExperimentSpec, Any, list]] = []
        opened: dict[str, Any] = {}  # one reader per store for every experiment's view
        _say(f"train: planning {len(config.experiments)} experiment(s)")  # before the lines of those that cannot run
        for experiment in config.experiments:
            skip = _skip_reason(config, experiment)
            if skip:
                reason, topic, failed = skip
                reasons.tell(f"train {experiment.name}", reason, topic, outcome="FAILED" if failed else "skipped")
                _mark_not_trained(config, experiment, reason, marker="failed.json" if failed else "skipped.json")
                (outcome.failed if failed else outcome.skipped).append(experiment.name)
                continue
            paths = {store: config.store_path(store, experiment.corpus) for store in experiment.stores}
            missing = [store for store, path in paths.items() if not path.exists()]
            if missing:
                store, path = missing[0], paths[missing[0]]
                reason = f"corpus {experiment.corpus!r} cannot be read"
                if reason in reasons.said.values():  # the extract stage failed on the corpus path: not a missing stage
                    _say(f"train {experiment.name}: FAILED ({reason}; reason above)")
                else:
                    reason = f"store {store!r} of corpus {experiment.corpus!r} is not extracted"
                    reasons.tell(f"train {experiment.name}", f"store {store!r} of corpus {experiment.corpus!r} has "
                                 f"not been extracted ({path} does not exist); run the extract stage first: the "
                                 f"same `w2v2ser run` command with --stage extract, or without --stage",
                                 reason, outcome="FAILED")
                _mark_not_trained(config, experiment, reason, marker="failed.json")
                outcome.failed.append(experiment.name)
                continue
            try:  # a full disk at its experiment.json names its folder, and fails this experiment only
                with naming_full_disk(experiment.run_dir):
                    view, pending = _prepare_experiment(experiment, locks, opened)
            except FolderBusyError as error:  # the folder is another job's now: nothing is written into it
                _say(f"train {experiment.name}: FAILED before training: {error}")
                outcome.failed.append(experiment.name)
                continue
            except (W2v2serError, OSError) as error:  # e.g. a file in the way, no permission: this experiment only
                said = _error_text(error)
                _say(f"train {experiment.name}: FAILED before training: {said}")
                _mark_not_trained(config, experiment, f"failed before training: {said}", marker="failed.json")
                outcome.failed.append(experiment.name)
                continue
            todo.append((experiment, view, pending))
        total = sum(len(pending) for *_, pending in todo)
        _say(f"train: {_planned_text(len(todo), len(config.experiments), outcome)}, "
             f"{sum(len(view.specs) for _, view, _ in todo)} fold x seed runs, {total} to train")
        errors: dict[str, list[tuple[str, str]]] = {}  # experiment -> (run, its error)
        lost: dict[str, BaseException] = {}  # experiment -> the error of the store that stopped it
        trained: dict[str, int] = {}  # experiment -> runs that finished in this stage
        if total:
            handle = cluster.get()
            for experiment, error in _train_runs(handle, todo, trained, progress=progress):
                if isinstance(error, BaseException):
                    lost[experiment.name] = error
                else:
                    errors.setdefault(experiment.name, []).append(error)
        for experiment, view, pending in todo:
            _finish_experiment(config, experiment, view, outcome, errors.get(experiment.name, []),
                               lost.get(experiment.name), len(view.specs) - len(pending) + trained.get(experiment.name, 0))
    return outcome


def _finish_experiment(config: PipelineConfig, experiment: ExperimentSpec, view: Any, outcome: _Outcome,
                       errors: list[tuple[str, str]], lost: BaseException | None, finished: int) -> None:
    """Report one experiment after its runs: its failures, the store error that stopped it, or its summary."""
    from w2v2ser.train import format_uar, missing_runs_message
    from w2v2ser.train._experiment import _summarize_runs, store_lost_note

    out = experiment.run_dir
    reasons = []
    if errors:
        said = "; ".join(failures_by_error(errors)[:3])
        reasons.append(f"{len(errors)} run(s) failed: {said}")
        _say(f"train {experiment.name}: {len(errors)} run(s) FAILED: {said}")
    if lost is not None:  # said once, not once per run that was not tried against that store
        full = isinstance(lost, DiskFullError)  # its message says what to free and that finished work is kept
        kept = f" {store_lost_note(out, finished, 'run', lost)}" if finished and not full else ""
        reasons.insert(0, f"stopped: {lost}")
        _say(f"train {experiment.name}: FAILED, stopped (no further run tried "
             f"{'on a full disk' if full else 'on that store'}): {lost}{kept}")
    if reasons:
        _mark_not_trained(config, experiment, "; ".join(reasons), marker="failed.json")
        outcome.failed.append(experiment.name)
        return
    try:
        if view.heads is not None:
            from w2v2ser.train import ALL_LAYERS_DIR, describe_sweep
            from w2v2ser.train._sweep import _summarize_sweep

            summary = _summarize_sweep(view.heads, out, view.data, view.specs)
            _say(f"train {experiment.name}: layer sweep, {describe_sweep(summary)}")
            out = out / ALL_LAYERS_DIR  # every head has the same runs: the weighted average's speak for all
        elif not _results_current(view.config, out, len(view.specs)):
            _summarize_runs(view.config, out, view.fingerprint, view.specs)
    except (W2v2serError, OSError) as error:
        said = _error_text(error)
        _say(f"train {experiment.name}: FAILED to summarise its runs: {said}")
        _mark_not_trained(config, experiment, f"failed to summarise its runs: {said}", marker="failed.json")
        outcome.failed.append(experiment.name)
        return
    results = _read_json(out / "results.json") or {}
    if view.heads is None:
        _say(f"train {experiment.name}: {format_uar(results)}")
    if results.get("missing_runs"):  # over part of the folds (its store changed between runs): not done
        _say(f"train {experiment.name}: {missing_runs_message(results, out, 'run')}")
        outcome.failed.append(experiment.name)
        return
    outcome.done += 1


def _train_in_view(config: Any, heads: Any, run: Any, out: Path, data: Any) -> Any:
    """Train one run on stores already opened (a sweep's (fold, seed) when ``heads`` is given)."""
    from w2v2ser.train import _experiment, _sweep

    if heads is None:
        return _experiment._train_run(config, run, out, data)
    return _sweep._sweep_run(config, heads, run, out, data)


# Warnings of the runs that Dask tasks train: each task thread collects those it raises (a worker's stderr is
# a SLURM job's log, not the user's terminal), and _train_runs shows them in this process, each text once.
_COLLECTING = threading.local()
_HOOK_LOCK = threading.Lock()
_SHOWN: set[tuple[str, str]] = set()  # (category name, text) of each warning shown again by this train stage


def _collecting_showwarning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                            line: str | None = None) -> None:
    """warnings.showwarning of a worker: a task thread's warnings go to its list, others' are shown as before."""
    found = getattr(_COLLECTING, "found", None)
    if found is None:
        _collecting_showwarning.passed(message, category, filename, lineno, file, line)  # type: ignore[attr-defined]
        return
    # The category's name, not the class: the driver may not import a worker's module (unpickling would fail).
    found.append((getattr(category, "__name__", str(category)), str(message), filename, lineno))


def _train_task(config: Any, heads: Any, run: Any, out: Path, threads: int | None,
                revisions: dict[str, int]) -> tuple[Any, list[tuple[str, str, str, int]]]:
    """A Dask task: one run on the stores as its experiment's plan saw them (StoreChangedError when an
    extraction has changed one since: the task would read other utterances than the summary).

    Returns:
        The run's result, and the warnings it raised in this thread as (category name, text, file, line),
        which the driver shows (:func:`_show_task_warnings`).
    """
    from w2v2ser.store import _layout
    from w2v2ser.train._experiment import _configure_threads, reopen_view

    # A hook of the worker process, not catch_warnings: tasks run side by side in threads. Set under the
    # store's lock of its own catch_warnings (quiet_zarr), whose exit would put the old hook back.
    with _HOOK_LOCK, _layout._PIPELINE_LOCK:
        if warnings.showwarning is not _collecting_showwarning:
            _collecting_showwarning.passed = warnings.showwarning  # type: ignore[attr-defined]
            warnings.showwarning = _collecting_showwarning
    _COLLECTING.found = found = []
    try:
        _configure_threads(threads)
        return _train_in_view(config, heads, run, out, reopen_view(config, revisions)), found
    finally:
        del _COLLECTING.found


def _show_task_warnings(found: Any) -> None:
    """Say the warnings a task returned (:func:`_train_task`), each text once per train stage: on the stage's
    own output, not through this process's warning filters, which a library's ``catch_warnings`` in
    another thread may have left at ``ignore``."""
    for category, text, filename, lineno in found or ():
        if (category, text) not in _SHOWN:  # the same note from every fold and seed: once
            _SHOWN.add((category, text))
            _say(f"{filename}:{lineno}: {category}: {text}")


def _train_runs(handle: ClusterHandle, todo: Sequence[tuple], trained: dict[str, int], *,
                progress: bool = True) -> Iterator[tuple]:
    """Train every pending run (Dask tasks, or in this process), counting those that finish in
    ``trained``; yields (experiment, (run, error)) of failed runs, and (experiment, the error) once for
    an experiment whose store stopped answering or was changed by an extraction (store_lost_errors), or
    whose folder's disk is full: none of its further runs is tried (each would wait out the store's
    timeouts, read other data, or train in full only to fail at its save)."""
    from w2v2ser.train._experiment import _configure_threads, store_lost_errors

    lost_errors = (*store_lost_errors(), DiskFullError)
    _SHOWN.clear()  # each stage says its warnings (a second run_pipeline in a notebook too)
    total = sum(len(pending) for *_, pending in todo)
    if progress:
        bar = progress_bar(desc="train runs", unit="run", total=total)
    else:  # --no-progress: a disabled bar prints nothing, and update()/close() stay valid
        from tqdm import tqdm

        bar = tqdm(total=total, disable=True)
    try:
        if handle.client is None:
            _configure_threads(handle.threads)
            for experiment, view, pending in todo:
                for index, run in enumerate(pending):
                    check_stop()  # a Ctrl-C that a run swallowed stops here, not after every run
                    try:
                        _train_in_view(view.config, view.heads, run, experiment.run_dir, view.data)
                    except Exception as error:  # noqa: BLE001 - one bad run never stops the others
                        check_stop()  # an interrupt that surfaced as another error is not a failed run
                        if isinstance(error, lost_errors):
                            yield experiment, error
                            bar.update(len(pending) - index)
                            break
                        yield experiment, (run.name, _run_error_text(error, f"{type(error).__name__}: {error}"))
                    else:
                        trained[experiment.name] = trained.get(experiment.name, 0) + 1
                    bar.update(1)
            return
        from distributed import as_completed

        owner: dict[Any, tuple[ExperimentSpec, Any]] = {}
        for experiment, view, pending in todo:
            revisions = view.revisions()
            for run in pending:
                future = handle.client.submit(_train_task, view.config, view.heads, run, experiment.run_dir,
                                              handle.threads, revisions, pure=False,
                                              key=f"train-{experiment.name}-{run.name}-{time.time_ns()}")
                owner[future] = (experiment, run)
        stopped: set[str] = set()
        for future in as_completed(list(owner)):
            experiment, run = owner[future]
            check_stop()
            bar.update(1)
            try:
                _, found = future.result()
            except Exception as error:  # noqa: BLE001 - reported per run, the rest go on
                check_stop()
                if experiment.name in stopped:  # cancelled, or failed on the same store: said once
                    continue
                if isinstance(error, lost_errors):
                    stopped.add(experiment.name)
                    handle.client.cancel([f for f, (e, _) in owner.items() if e is experiment and not f.done()])
                    yield experiment, error
                    continue
                yield experiment, (run.name, _run_error_text(error, task_error(error, fix=handle.lost_worker_fix)))
            else:  # a run in flight when its experiment stopped is finished: it is kept
                trained[experiment.name] = trained.get(experiment.name, 0) + 1
                _show_task_warnings(found)
    finally:
        bar.close()
