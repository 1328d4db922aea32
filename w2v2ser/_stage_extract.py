"""`w2v2ser run`'s extract stage: one store per (corpus, feature options), skipping complete stores,
marking stores whose model cannot be loaded, run in threads on the cluster, and in a spawned child
process when later stages follow (stage 1 never shares a process with TensorFlow).
"""

from __future__ import annotations

import functools
import shlex
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ._common import EXIT_INPUT, SHOWN_LINES, Terminated, W2v2serError, check_stop, describe_error, error_text
from ._config import PipelineConfig, load_pipeline
from ._stage_common import (_clear_skip_marker, _corpus_topic, _LazyCluster, _Outcome, _Reasons, _say, _skip_marker,
                            _store_topic, _write_json)


def _probe_hub() -> None:
    from w2v2ser.extract._models import probe_hub

    problem = probe_hub()
    if problem:
        _say(f"{problem}: models come from the local cache only")


def _hub_scoped(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` inside one ``hub_probe_scope``: one probe of the hub for the stage, inherited by
    the Dask workers it starts, and forgotten when it ends (stage 1's module is imported only then)."""

    @functools.wraps(function)
    def scoped(*args: Any, **kwargs: Any) -> Any:
        from w2v2ser.extract._models import hub_probe_scope

        with hub_probe_scope():
            return function(*args, **kwargs)

    return scoped


def _uses_hub(config: PipelineConfig) -> bool:
    models = [getattr(f, "model", None) for s in config.stores.values() for f in s.features.values()]
    return any(isinstance(m, str) and not Path(m).expanduser().exists() for m in models)


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
        str(getattr(stored[u.id], name)) == str(getattr(u, name)) for u in utterances for name in fields) \
        and _audio_unchanged(store_path, stored, utterances)


def _audio_unchanged(store_path: Path, stored: dict[str, Any], utterances: Sequence[Any]) -> bool:
    """Whether each file still holds the audio (sha256) that its utterance's features were extracted from, as
    ``w2v2ser extract`` checks: a file whose stat is that of the store's audio cache is not read, any other is
    hashed (and recorded in the cache when no extraction holds the store). A changed file goes to the
    extraction, which refuses it and names it; a vanished one keeps its features, as there."""
    from w2v2ser.extract._checks import _AudioStatCache
    from w2v2ser.store import locate_store, lock_store

    location = locate_store(store_path)
    cache = _AudioStatCache(location)
    for u in utterances:
        recorded = stored[u.id].audio_sha256
        digest = cache.digest(u.path) if recorded else None
        if digest is None:  # nothing recorded, or unreadable now (gone, permissions): kept, as extract keeps it
            continue
        if digest != recorded:
            return False
    if cache.dirty:
        try:
            with lock_store(location):
                cache.save({u.path for u in utterances} | {r.path for r in stored.values()})
        except (W2v2serError, OSError):  # an extraction holds it, or it is read-only: the next run hashes them again
            pass
    return True


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


def _write_marker(label: str, store_path: Path, data: dict[str, Any]) -> None:
    """Write a store's skip marker (the reason its experiments do not train). One that cannot be
    written (no permission, a folder in the way) is said, and the stage goes on: only the train
    stage's reason is lost (it says the store is not extracted instead)."""
    try:
        _write_json(_skip_marker(store_path), data)
    except OSError as error:
        _say(f"{label}: its skip marker cannot be written, so the train stage will not name this reason: "
             f"{error_text(error)}")


def _marker_cleared(label: str, store_path: Path) -> bool:
    """Remove a store's skip marker of an earlier run; False (said, with the fix) when it cannot be
    removed: the train stage would skip the store's experiments for that old reason."""
    try:
        _clear_skip_marker(store_path)
    except OSError as error:
        _say(f"{label}: FAILED: its skip marker of an earlier run cannot be removed, and the train stage would "
             f"take that old reason: {error_text(error)}")
        return False
    return True


@_hub_scoped
def _run_extract(config: PipelineConfig, cluster: _LazyCluster, reasons: _Reasons | None = None, *,
                 progress: bool = True) -> _Outcome:
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
                    if not _marker_cleared(label, path):
                        outcome.failed.append(label)
                        continue
                    outcome.done += 1
                    continue
                reasons.tell(label, f"store {path} is complete but {changed}; move the store away and rerun to "
                             f"extract it again with these weights, or put the weights it was made with back "
                             f"where the model option points and rerun",
                             f"store {store.name!r} holds other weights", outcome="FAILED")
                _write_marker(label, path, {"reason": f"store {store.name!r} of corpus {corpus!r}: {changed}",
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
                _write_marker(label, path, {"reason": reason, "store": store.name, "corpus": corpus,
                                            **({} if error.offline else {"failed": True})})
                (outcome.skipped if error.offline else outcome.failed).append(label)
                continue
            if not _marker_cleared(label, path):
                outcome.failed.append(label)
                continue
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
                                     shard_size=config.shard_size, progress=progress, client=handle.client,
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


def _extract_child(path: str, overrides: list[str], results: Any, quiet: bool = False, progress: bool = True) -> None:
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
            outcome = _run_extract(config, _LazyCluster(config, stack, use_gpus=True), reasons, progress=progress)
    except KeyboardInterrupt:  # Ctrl-C reached the whole process group: the parent says so, once
        raise SystemExit(130) from None
    except BaseException as error:  # a bad manifest, an unwritable stores folder, zarrs' panic: one line
        message = describe_error(error)  # (None for SystemExit and the like: re-raised)
        if message is None:
            raise
        print(f"w2v2ser: error: {message[0]}", file=sys.stderr)
        raise SystemExit(message[1]) from None
    results.put((outcome.done, outcome.skipped, outcome.failed, reasons.said))


def _extract_in_child(path: Path, overrides: Sequence[str], reasons: _Reasons, *, progress: bool = True) -> _Outcome:
    import multiprocessing

    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    results = context.SimpleQueue()
    from ._native_logs import native_logs_hidden

    child = context.Process(target=_extract_child, args=(str(path), list(overrides), results, native_logs_hidden(), progress),
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
