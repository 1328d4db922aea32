"""`w2v2ser run pipeline.yaml`: extract -> train -> evaluate, skipping finished work.

Units of work and how each is committed (so a killed run resumes where it stopped):

* extraction: an utterance x feature group, committed by a journal line in the store
  (``w2v2ser.extract`` / ``w2v2ser.store``); a complete store with the same utterances is
  not even reopened for writing.
* training: a fold x seed run directory, renamed into place when complete and keyed by the
  experiment's ``config_key`` (``w2v2ser.train``); runs with a matching key are not resubmitted.
* evaluation: the report folder, whose files are replaced atomically (``w2v2ser.evaluate``).

A store whose model cannot be loaded (``ModelLoadError``: offline, not cached) is marked
``<store>.skipped.json`` and the experiments reading it get ``RUN_DIR/skipped.json`` with the
reason; so do experiments of a corpus whose path is not set. A model that cannot be loaded for
another reason (a damaged local model, a wrong path) is marked the same way with ``"failed": true``
(a store made with other weights, ``"other_weights": true``): the store fails, and so do the
experiments reading it (``RUN_DIR/failed.json``), also in a later ``--stage train``, so the run
exits 1. Everything else still runs. Each
reason is printed in full once, then referred to (:class:`_Reasons`). The Hugging Face hub is
probed once per process: when it cannot be reached, lookups use the local cache only instead of
retrying with back-off for every model.
"""

from __future__ import annotations

import json
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._common import (EXIT_INPUT, SHOWN_LINES, Terminated, W2v2serError, check_stop, describe_error,
                      failures_by_error, make_folder, progress_bar, task_error, write_atomically)
from ._cluster import ClusterHandle, open_cluster, wait_for_a_worker
from ._config import ConfigError, ExperimentSpec, PipelineConfig, load_pipeline

__all__ = ["STAGES", "run_pipeline"]

STAGES = ("extract", "train", "evaluate")


def _say(text: str) -> None:
    # tqdm.write takes tqdm's lock and lifts any progress bar off the line: stores extracting side by
    # side (threads) no longer run their lines together with each other or with a bar.
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)
    sys.stderr.flush()


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: readers see the old or the new file."""
    write_atomically(path, json.dumps(data, indent=2, default=str))


class _Reasons:
    """Prints each reason (a skip, or a failure before any work) in full the first time, then refers
    to it by a short topic."""

    def __init__(self, said: dict[str, str] | None = None) -> None:
        self.said: dict[str, str] = dict(said or {})  # reason -> topic

    def tell(self, label: str, reason: str, topic: str, *, outcome: str = "skipped") -> None:
        if reason in self.said:
            _say(f"{label}: {outcome} ({self.said[reason]}; reason above)")
        else:
            self.said[reason] = topic
            _say(f"{label}: {outcome}, {reason}")


def _corpus_topic(corpus: str) -> str:
    return f"corpus {corpus!r} has no path"


def _store_topic(store: str) -> str:
    return f"the model of store {store!r} cannot be loaded"


def _probe_hub() -> None:
    from w2v2ser.extract._models import probe_hub

    problem = probe_hub()
    if problem:
        _say(f"{problem}: models come from the local cache only")


def _uses_hub(config: PipelineConfig) -> bool:
    models = [getattr(f, "model", None) for s in config.stores.values() for f in s.features.values()]
    return any(isinstance(m, str) and not Path(m).expanduser().exists() for m in models)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _skip_marker(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".skipped.json")


def _clear_skip_marker(store_path: Path) -> None:
    # Look first: unlinking even a missing file fails on a read-only mount of finished stores.
    marker = _skip_marker(store_path)
    if marker.exists():
        marker.unlink()


class _LazyCluster:
    """Starts the Dask cluster on first use only: a rerun with nothing left to do starts none."""

    def __init__(self, config: PipelineConfig, stack: ExitStack, *, use_gpus: bool) -> None:
        self._config, self._stack, self._use_gpus = config, stack, use_gpus
        self._handle: ClusterHandle | None = None

    def get(self) -> ClusterHandle:
        if self._handle is None:
            started = time.perf_counter()
            self._handle = self._stack.enter_context(open_cluster(self._config.cluster, use_gpus=self._use_gpus))
            _say(f"{self._handle.description} (started in {time.perf_counter() - started:.1f} s)")
            if self._handle.dashboard:
                _say(f"Dask dashboard: {self._handle.dashboard}")
            if self._config.cluster.kind == "slurm":  # after the lines above: the user sees what it waits for
                wait_for_a_worker(self._handle.client, self._config.cluster.slurm)
        return self._handle


@dataclass
class _Outcome:
    """Counts of one stage, for the closing summary and the exit status."""

    done: int = 0
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _planned_text(planned: int, experiments: int, outcome: _Outcome) -> str:
    """``7 of 10 experiment(s) planned (3 failed before training)``: counts that add up to the file's."""
    left_out = [f"{len(names)} {what}" for names, what in ((outcome.skipped, "skipped"),
                                                          (outcome.failed, "failed before training")) if names]
    return f"{planned} of {experiments} experiment(s) planned" + (f" ({', '.join(left_out)})" if left_out else "")


# --- stage 1: extraction ----------------------------------------------------------------------

def _manifests(config: PipelineConfig) -> Callable[[str], Any]:
    from w2v2ser.extract import read_corpus

    cache: dict[str, Any] = {}

    def manifest(corpus: str) -> Any:
        if corpus not in cache:
            spec = config.corpora[corpus]
            cache[corpus] = read_corpus(spec.kind, spec.path)
            problems = list(getattr(cache[corpus], "problems", ()))
            for path, reason in problems[:SHOWN_LINES]:
                _say(f"  {corpus}: skipped file {path}: {reason}")
            if len(problems) > SHOWN_LINES:  # a session without sentences/wav: 2,000 lines
                _say(f"  {corpus}: skipped ... and {len(problems) - SHOWN_LINES} more, recorded in its stores "
                     f"(`w2v2ser store info STORE --json`)")
        return cache[corpus]

    return manifest


def _store_done(store_path: Path, utterances: Sequence[Any], features: Sequence[str]) -> bool:
    """A complete store holding exactly these utterances, as the manifest gives them now, and these
    features needs no extraction pass. A manifest edited since (a label, a speaker, a split) goes
    to the extraction, which takes the new values: the old ones must not be trained on in silence."""
    from w2v2ser.extract._pipeline import features_without_utterances
    from w2v2ser.store import open_store

    if not store_path.exists():
        return False
    try:
        store = open_store(store_path)
    except W2v2serError:
        return False
    if not store.complete or not set(features) <= set(store.features):
        return False
    if features_without_utterances(store, features):
        return False  # every file failed: the extraction retries them and says so, not "complete"
    stored = {r.id: r for r in store.list_utterances(status=None)}
    # Not the path: a corpus copied to a node's local disk for a job reads the same audio.
    fields = ("label", "speaker", "session", "split")
    return stored.keys() == {u.id for u in utterances} and all(
        str(getattr(stored[u.id], name)) == str(getattr(u, name)) for u in utterances for name in fields)


def _other_weights(store_path: Path, extractors: Sequence[Any]) -> str | None:
    """What differs when a complete store's features were made by other model weights than the
    extractors load now (the same model path, its files replaced: a retrained or re-saved model),
    else None. ``w2v2ser extract`` refuses such a store; the complete-store shortcut must not keep it."""
    from w2v2ser.store import open_store

    stored = open_store(store_path).features
    for extractor in extractors:
        old = stored.get(extractor.name)
        theirs = ((old.config.get("provenance") or {}).get("weights_sha256")) if old is not None else None
        mine = (extractor.feature_spec().config.get("provenance") or {}).get("weights_sha256")
        if theirs and mine and theirs != mine:
            # Name only the files that changed: the first file's digest named a shard of a sharded model
            # that may be the same as before.
            changed = ", ".join(f"{name} {(theirs.get(name) or 'none')[:12]} -> {(mine.get(name) or 'none')[:12]}"
                                for name in sorted({*theirs, *mine}) if theirs.get(name) != mine.get(name))
            return (f"its {extractor.name} features were extracted with other model weights than "
                    f"{old.config.get('model')!r} holds now (weights sha256 of {changed})")
    return None


def _run_extract(config: PipelineConfig, cluster: _LazyCluster, reasons: _Reasons | None = None) -> _Outcome:
    from w2v2ser.extract import ModelLoadError, build_extractor, extract_corpus

    outcome = _Outcome()
    reasons = reasons if reasons is not None else _Reasons()
    manifest = _manifests(config)
    unloadable: dict[str, ModelLoadError] = {}  # store -> error: a model that failed is not looked up again
    if _uses_hub(config):
        _probe_hub()
    jobs = []
    for store in config.stores.values():
        for corpus in store.corpora:
            label = f"extract {store.name} on {corpus}"
            corpus_config = config.corpora[corpus]
            if corpus_config.skip_reason:
                reasons.tell(label, corpus_config.skip_reason, _corpus_topic(corpus))
                outcome.skipped.append(label)
                continue
            path = config.store_path(store.name, corpus)
            try:
                utterances = manifest(corpus).utterances
            except W2v2serError as error:  # e.g. duplicate ids in a CSV: this corpus fails, others go on
                reasons.tell(label, f"corpus {corpus!r} cannot be read: {error}", f"corpus {corpus!r} cannot be read",
                             outcome="FAILED")
                outcome.failed.append(label)
                continue
            if _store_done(path, utterances, list(store.features)):
                try:  # only models name their weights: a store of eGeMAPS/spectrograms loads nothing here
                    changed = (None if not any(store.feature_dicts()[name].get("model") for name in store.features)
                               else _other_weights(path, [build_extractor(name, options) for name, options
                                                          in store.feature_dicts().items()]))
                except ModelLoadError:  # offline: the finished store is kept, as before
                    changed = None
                if changed is None:
                    _say(f"{label}: complete ({len(utterances)} utterances) in {path}")
                    _clear_skip_marker(path)
                    outcome.done += 1
                    continue
                reasons.tell(label, f"store {path} is complete but {changed}; move the store away and rerun to "
                             f"extract it again with these weights, or put the weights it was made with back "
                             f"where the model option points and rerun",
                             f"store {store.name!r} holds other weights", outcome="FAILED")
                _write_json(_skip_marker(path), {"reason": f"store {store.name!r} of corpus {corpus!r}: {changed}",
                                                 "store": store.name, "corpus": corpus, "other_weights": True})
                outcome.failed.append(label)
                continue
            try:
                if store.name in unloadable:
                    raise unloadable[store.name]
                extractors = [build_extractor(name, options) for name, options in store.feature_dicts().items()]
                for extractor in extractors:
                    extractor.feature_spec()  # resolves the model: fails here, not in every worker
            except ModelLoadError as error:
                unloadable[store.name] = error
                reason = f"model of store {store.name!r} cannot be loaded: {error}"
                # Offline and not cached: a skip, as a corpus without a path. A damaged local model (a
                # truncated weight file, a config.json that is not JSON), a wrong path or a hub refusal is the
                # user's to fix: the store fails, so the run exits 1, and its experiments fail (failed.json).
                reasons.tell(label, reason, _store_topic(store.name),
                             outcome="skipped" if error.offline else "FAILED")
                _write_json(_skip_marker(path), {"reason": reason, "store": store.name, "corpus": corpus,
                                                 **({} if error.offline else {"failed": True})})
                (outcome.skipped if error.offline else outcome.failed).append(label)
                continue
            _clear_skip_marker(path)
            jobs.append((f"{store.name} on {corpus}", path, manifest(corpus), extractors))
    if not jobs:
        return outcome
    handle = cluster.get()
    stopping = threading.Event()  # set on Ctrl-C / SIGTERM: jobs still in threads end without a word

    def extract(job: tuple) -> bool:
        # Each job reports its own end, so lines keep their order when jobs run one after another.
        label, path, corpus_manifest, extractors = job
        check_stop()  # a stop request whose exception was lost: the next store does not start
        _say(f"extract {label}: {len(corpus_manifest.utterances)} utterances -> {path}")
        try:
            summary = extract_corpus(corpus_manifest.utterances, path, extractors=extractors,
                                     shard_size=config.shard_size, progress=True, client=handle.client,
                                     gpu_resource=handle.gpu_resource, reader_skipped=corpus_manifest.problems,
                                     corpus=corpus_manifest.corpus, lost_worker_fix=handle.lost_worker_fix)
        except W2v2serError as error:
            if not stopping.is_set():  # after an interrupt, the closed cluster fails the jobs in flight
                _say(f"extract {label}: FAILED: {error}")
            return False
        failed = (f", {len(summary.failed)} failed utterance(s) recorded (`w2v2ser store info "
                  f"{shlex.quote(str(path))}` lists "
                  f"them)" if summary.failed else "")
        _say(f"extract {label}: {summary.extracted} extracted, {summary.skipped} already done{failed} "
             f"({summary.wall_seconds:.1f} s){'' if summary.complete else ', store NOT complete'}")
        for note in summary.notes():
            _say(f"extract {label}: {note}")
        try:
            nothing = summary.nothing_extracted(path, [e.name for e in extractors], str(path))
        except W2v2serError as error:  # the store went away after its finalize: this job fails, not the stage
            _say(f"extract {label}: FAILED: {error}")
            return False
        if nothing:  # the experiments on this store would only fail for want of data
            _say(f"extract {label}: FAILED: {nothing}")
            return False
        return True

    if handle.client is None or len(jobs) == 1:
        # In this thread: a Ctrl-C or SIGTERM stops the extraction where it is, as `w2v2ser extract`.
        finished = [extract(job) for job in jobs]
    else:  # stores side by side on the cluster, so GPU (wav2vec2) and CPU (eGeMAPS) shards overlap
        finished = _in_threads(extract, jobs, stopping)
    for job, done in zip(jobs, finished):
        if done:
            outcome.done += 1
        else:
            outcome.failed.append(job[0])
    return outcome


def _in_threads(function: Callable[[Any], bool], items: Sequence[Any], stopping: threading.Event) -> list[bool]:
    """``function`` over ``items`` in parallel threads, results in order; an error is re-raised here.

    The threads are daemons: on Ctrl-C or SIGTERM this returns at once (a pool's exit would wait
    for every job to finish), the caller closes the cluster, which ends the jobs' waits, and
    nothing is lost, since the work and its commits happen on the cluster's workers.
    """
    results: list[Any] = [None] * len(items)

    def run(index: int) -> None:
        try:
            results[index] = function(items[index])
        except BaseException as error:  # noqa: BLE001 - re-raised in the calling thread
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,), daemon=True, name=f"w2v2ser-extract-{i}")
               for i in range(len(items))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except BaseException:
        stopping.set()
        raise
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


# --- stage 2: training ------------------------------------------------------------------------

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
        _write_json(experiment.run_dir / marker,
                    {"reason": reason, "name": experiment.name, "corpus": experiment.corpus, **shown,
                     **experiment.config, "stores_identity": identity})
    except OSError as error:  # its folder is blocked (a file in the way, no permission): the others go on
        described = describe_error(error)
        _say(f"train {experiment.name}: its {marker} cannot be written, so the report will not name this reason: "
             f"{described[0] if described else error}")


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
    if experiment.sweep:
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


def _run_train(config: PipelineConfig, cluster: _LazyCluster, reasons: _Reasons | None = None) -> _Outcome:
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
            try:
                view, pending = _prepare_experiment(experiment, locks, opened)
            except FolderBusyError as error:  # the folder is another job's now: nothing is written into it
                _say(f"train {experiment.name}: FAILED before training: {error}")
                outcome.failed.append(experiment.name)
                continue
            except W2v2serError as error:
                _say(f"train {experiment.name}: FAILED before training: {error}")
                _mark_not_trained(config, experiment, f"failed before training: {error}", marker="failed.json")
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
            for experiment, error in _train_runs(handle, todo, trained):
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
        kept = f" {store_lost_note(out, finished, 'run', lost)}" if finished else ""
        reasons.insert(0, f"stopped: {lost}")
        _say(f"train {experiment.name}: FAILED, stopped (no further run tried on that store): {lost}{kept}")
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
    except W2v2serError as error:
        _say(f"train {experiment.name}: FAILED to summarise its runs: {error}")
        _mark_not_trained(config, experiment, f"failed to summarise its runs: {error}", marker="failed.json")
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


def _train_task(config: Any, heads: Any, run: Any, out: Path, threads: int | None, revisions: dict[str, int]) -> Any:
    """A Dask task: one run on the stores as its experiment's plan saw them (StoreChangedError when an
    extraction has changed one since: the task would read other utterances than the summary)."""
    from w2v2ser.train._experiment import _configure_threads, reopen_view

    _configure_threads(threads)
    return _train_in_view(config, heads, run, out, reopen_view(config, revisions))


def _train_runs(handle: ClusterHandle, todo: Sequence[tuple], trained: dict[str, int]) -> Iterator[tuple]:
    """Train every pending run (Dask tasks, or in this process), counting those that finish in
    ``trained``; yields (experiment, (run, error)) of failed runs, and (experiment, the error) once for
    an experiment whose store stopped answering or was changed by an extraction (store_lost_errors):
    none of its further runs is tried (each would wait out the store's timeouts, or read other data)."""
    from w2v2ser.train._experiment import _configure_threads, store_lost_errors

    lost_errors = store_lost_errors()
    total = sum(len(pending) for *_, pending in todo)
    bar = progress_bar(desc="train runs", unit="run", total=total)
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
                        yield experiment, (run.name, f"{type(error).__name__}: {error}")
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
                future.result()
            except Exception as error:  # noqa: BLE001 - reported per run, the rest go on
                check_stop()
                if experiment.name in stopped:  # cancelled, or failed on the same store: said once
                    continue
                if isinstance(error, lost_errors):
                    stopped.add(experiment.name)
                    handle.client.cancel([f for f, (e, _) in owner.items() if e is experiment and not f.done()])
                    yield experiment, error
                    continue
                yield experiment, (run.name, task_error(error, fix=handle.lost_worker_fix))
            else:  # a run in flight when its experiment stopped is finished: it is kept
                trained[experiment.name] = trained.get(experiment.name, 0) + 1
    finally:
        bar.close()


def _extract_child(path: str, overrides: list[str], results: Any, quiet: bool = False) -> None:
    """Body of the extraction child process (spawned, so it starts without TensorFlow).

    ``quiet``: the parent hides native logs (no --verbose); a spawned child does not inherit
    the parent's warning filters, so it installs the same ones.
    """
    from ._cluster import die_with_parent
    from ._native_logs import quiet_known_warnings

    die_with_parent()
    if quiet:
        quiet_known_warnings()
    config = load_pipeline(path, overrides=overrides, validate_experiments=False)
    reasons = _Reasons()
    try:
        with ExitStack() as stack:
            outcome = _run_extract(config, _LazyCluster(config, stack, use_gpus=True), reasons)
    except KeyboardInterrupt:  # Ctrl-C reached the whole process group: the parent says so, once
        raise SystemExit(130) from None
    except BaseException as error:  # a bad manifest, an unwritable stores folder, zarrs' panic: one line
        message = describe_error(error)  # (None for SystemExit and the like: re-raised)
        if message is None:
            raise
        print(f"w2v2ser: error: {message[0]}", file=sys.stderr)
        raise SystemExit(message[1]) from None
    results.put((outcome.done, outcome.skipped, outcome.failed, reasons.said))


def _extract_in_child(path: Path, overrides: Sequence[str], reasons: _Reasons) -> _Outcome:
    import multiprocessing

    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    results = context.SimpleQueue()
    from ._native_logs import native_logs_hidden

    child = context.Process(target=_extract_child, args=(str(path), list(overrides), results, native_logs_hidden()),
                            name="w2v2ser-extract")
    child.start()
    try:
        child.join()
    except KeyboardInterrupt as stop:  # the child got the same Ctrl-C: let it close its cluster first
        if isinstance(stop, Terminated):  # `kill PID` reaches this process only: stop the child too
            child.terminate()
        child.join(timeout=30)
        raise
    if child.exitcode == EXIT_INPUT:
        outcome = _Outcome(failed=["extraction: its input cannot be used (the error above says what to fix)"])
    elif child.exitcode != 0 or results.empty():
        outcome = _Outcome(failed=[f"extraction process (exit code {child.exitcode})"])
    else:
        done, skipped, failed, said = results.get()
        outcome = _Outcome(done, skipped, failed)
        reasons.said.update(said)  # printed by the child: the training stage refers to them
    _say(f"stage extract: {outcome.done} done, {len(outcome.skipped)} skipped, {len(outcome.failed)} failed "
         f"({time.perf_counter() - started:.1f} s)")
    return outcome


# --- stage 3: reports -------------------------------------------------------------------------

_STALE = "not trained for this configuration"  # the reason of a failed.json the evaluate stage wrote


def _stale_results(experiment: ExperimentSpec) -> str | None:
    """What differs when the results.json in an experiment's run dir were made by another configuration
    than the file's now (a --set, or the file edited, and no train stage run since), else None."""
    from dataclasses import fields

    from w2v2ser.train import ExperimentConfig  # its config only: no TensorFlow
    from w2v2ser.train._config import RUNTIME_FIELDS, SEED_FIELDS

    train_config = ExperimentConfig.from_dict(experiment.config)
    out = experiment.run_dir
    if experiment.sweep:  # its weighted average's results speak for every head, as in the train stage
        from w2v2ser.train import ALL_LAYERS_DIR, sweep_configs

        out = out / ALL_LAYERS_DIR
        if not (out / "results.json").exists():
            return None
        try:
            train_config = sweep_configs(train_config)[ALL_LAYERS_DIR]
        except W2v2serError:  # its store is gone or unreadable: the report says what it can
            return None
    results = _read_json(out / "results.json")
    if not isinstance(results, dict):
        return None
    recorded = results.get("config") if isinstance(results.get("config"), dict) else {}
    now = train_config.to_dict()
    if results.get("config_key") not in train_config.config_keys():
        changed = [f"{k} {recorded.get(k)!r} -> {v!r}" for k, v in now.items()
                   if k not in RUNTIME_FIELDS + SEED_FIELDS + ("stores",) and recorded.get(k) != v]
        return "; ".join(changed) or f"config key {results.get('config_key')} -> {train_config.config_key()}"
    # An option a record predates (first_seed) had its default then.
    defaults = {f.name: f.default for f in fields(ExperimentConfig) if f.name in SEED_FIELDS}
    changed = [f"{k} {recorded.get(k, defaults[k])!r} -> {now[k]!r}" for k in SEED_FIELDS
               if recorded.get(k, defaults[k]) != now[k]]
    changed += _renamed_stores(results, now)  # the train stage's check: it summarises such runs again
    return "; ".join(changed) or None


def _mark_stale(config: PipelineConfig, experiment: ExperimentSpec) -> bool:
    """Mark an experiment whose results.json is of another configuration (failed.json, which the report
    shows instead of those results; the train stage removes it), or unmark one that matches again.
    Returns whether it is stale."""
    marker = _read_json(experiment.run_dir / "failed.json")
    ours = isinstance(marker, dict) and str(marker.get("reason", "")).startswith(_STALE)
    stale = _stale_results(experiment)
    if stale is None:
        if ours:  # back to the configuration that made the results: they are its results again
            (experiment.run_dir / "failed.json").unlink(missing_ok=True)
        return False
    if marker is None or ours:  # a failure of the train stage is the latest word: it stays
        _mark_not_trained(config, experiment, f"{_STALE} ({stale}): run its train stage", marker="failed.json")
    _say(f"report: {experiment.name}: {_STALE}: its results are of another one ({stale}), not shown; "
         "run the train stage")
    return True


def _file_in_the_way(folder: Path) -> Path | None:
    """The file (or other non-folder) at ``folder`` or at one of its parents, where a folder must go."""
    for path in (folder, *folder.parents):
        try:
            if path.exists() and not path.is_dir():
                return path
        except OSError:  # e.g. a name too long: write_report's own error says so
            return None
    return None


def _run_evaluate(config: PipelineConfig) -> _Outcome:
    from w2v2ser.evaluate import write_report
    from w2v2ser.evaluate._rundir import read_run_dir

    outcome = _Outcome()
    reported = {e.name for report in config.reports for e in config.report_experiments(report)}
    for experiment in config.experiments:
        if experiment.name in reported:
            _mark_stale(config, experiment)
    for report in config.reports:
        experiments = config.report_experiments(report)
        if not experiments:
            _say(f"report {report.name}: no experiments match {', '.join(report.experiments)}; nothing written")
            outcome.skipped.append(report.name)
            continue
        baseline = next((e.run_dir for e in experiments if e.name == report.baseline), None)
        summary = None if baseline is None else read_run_dir(baseline)
        if summary is not None and summary.status != "complete":  # e.g. skipped: its model is offline
            # A skip's reason was printed in full by the stage that skipped it: name where it is kept.
            why = f"reason in {baseline / 'skipped.json'}" if summary.status == "skipped" else summary.reason
            _say(f"report {report.name}: baseline {report.baseline} is {summary.status} ({why}); "
                 "the report is written without the comparison")
            baseline = None
        blocking = _file_in_the_way(report.out)
        if blocking is not None:  # write_report's own words name its --out, which `run` has not
            where = "the report's folder" if blocking == report.out else f"a folder of {report.out}"
            _say(f"report {report.name}: FAILED: {blocking} is a file, where {where} goes; move "
                 f"the file away, or rename the report (reports.{report.name}) or the output")
            outcome.failed.append(report.name)
            continue
        try:
            path = write_report([e.run_dir for e in experiments], out=report.out, baseline=baseline)
        except (W2v2serError, OSError) as error:  # e.g. a name too long: this report fails, the others are written
            _say(f"report {report.name}: FAILED: {error}")
            outcome.failed.append(report.name)
            continue
        _say(f"report {report.name}: {path}")
        outcome.done += 1
    return outcome


def run_pipeline(path: Path, *, stage: str | None = None, overrides: Sequence[str] = ()) -> int:
    """Run a pipeline file's stages in order, skipping work that is already complete.

    Args:
        path: The pipeline.yaml.
        stage: ``extract``, ``train`` or ``evaluate`` to run one stage; None runs all three.
        overrides: ``key.path=value`` settings (``--set``) applied to the file.

    Returns:
        0 when every stage finished (skipped experiments included), 1 when some unit failed
        (the rest of the work is kept; rerun to retry).

    Raises:
        ConfigError: The file or an override is invalid (nothing has run yet).
    """
    if stage is not None and stage not in STAGES:
        raise ConfigError(f"--stage {stage!r}: expected one of {', '.join(STAGES)}")
    stages = STAGES if stage is None else (stage,)
    started = time.perf_counter()
    # Experiments are checked even for --stage extract (no stage 2 library is loaded for it): a typo
    # there was found only by the training job, after a GPU extraction job of hours.
    config = load_pipeline(path, overrides=overrides)
    make_folder(config.output)
    _say(f"pipeline {config.path}: output {config.output}; stages {', '.join(stages)}; "
         f"{len(config.experiments)} experiment(s)")
    outcomes: dict[str, _Outcome] = {}
    reasons = _Reasons()
    runners = {
        "extract": lambda c: _run_extract(config, c, reasons),
        "train": lambda c: _run_train(config, c, reasons),
        "evaluate": lambda c: _run_evaluate(config),
    }
    for name in stages:
        if name == "extract" and len(stages) > 1:
            # TensorFlow (loaded to check the experiments) and openSMILE crash when they share a
            # process, and stage 1 should never carry stage 2's imports: extract in a fresh child.
            outcomes[name] = _extract_in_child(config.path, overrides, reasons)
            continue
        with ExitStack() as stack:
            cluster = _LazyCluster(config, stack, use_gpus=name == "extract")
            stage_started = time.perf_counter()
            outcomes[name] = runners[name](cluster)
            result = outcomes[name]
            _say(f"stage {name}: {result.done} done, {len(result.skipped)} skipped, {len(result.failed)} failed "
                 f"({time.perf_counter() - stage_started:.1f} s)")
    failed = [item for result in outcomes.values() for item in result.failed]
    _say(f"pipeline finished in {time.perf_counter() - started:.1f} s" +
         (f"; FAILED: {', '.join(failed)} (finished work is kept: rerun to retry)" if failed else ""))
    return 1 if failed else 0
