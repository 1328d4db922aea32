"""Stage 1 driver: plan a corpus into a store, extract shards of utterances, finalize.

The driver is the only process that plans and finalizes a store (under the store
lock). Shards of utterances are independent work units: the driver gives each its own
whole Zarr shards (``StoreWriter.plan_units``); one worker packs the unit's utterances
into them, writes each shard once and commits the unit in its own journal, so units
can run in this process or as Dask tasks on many workers.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from w2v2ser._common import EXIT_FAILED, SHARD_SIZE, SILENCE_ADVICE, SPEAKER_CASE_ADVICE, check_stop, first_few
from w2v2ser._process import LOST_WORKER_FIX
from w2v2ser._text import case_variants, variants_differ
from w2v2ser.store import StoreLocation, StoreWriter, Utterance, WorkUnit, locate_store, lock_store, open_store
from w2v2ser.store._layout import refuse_inside_store
from w2v2ser.store._location import as_unreachable, remote_errors

from ._checks import (
    _absent_by_corpus, _AudioStatCache, _check_extraction_options, _check_label_spellings, _check_recorded_audio, _check_utterances,
    _extra_kept, _keep_vanished, _probe_all, _progress,
)
from ._dask import _run_on_dask
from ._manifest import Manifest
from ._models import hub_probe_scope
from ._rates import below_native_minimum, capacity, feature_spec_for_store, store_rates, with_rate
from ._registry import Extractor
from ._shard import GPU_FEATURES, _ShardItem, extract_shard

__all__ = ["ExtractionSummary", "extract_corpus", "features_without_utterances"]


# How the notes of an extraction name the corpus the user gave (ExtractionSummary.source).
_SOURCE_NAMES = {"iemocap": "IEMOCAP release", "ravdess": "RAVDESS folder", "csv": "CSV manifest"}


@dataclass
class ExtractionSummary:
    """What one call of :func:`extract_corpus` did.

    Attributes:
        store: The store path (the URL of a store on object storage).
        planned: Utterances of this call's manifest, planned in the store.
        extracted: Utterance x feature-group units extracted by this call.
        skipped: Utterances already complete before this call (resumed work).
        failed: Failures recorded in the store (all runs), as (id, path, reason); a file that failed
            some features only is stored with its others, and its reason says so.
        audio_seconds: Audio seconds extracted by this call.
        wall_seconds: Wall time of this call.
        complete: Whether the store is now marked complete.
        relabelled: (id, column, old, new) of each label, speaker, split or session that this call
            took from an edited manifest.
        absent: Ids of done utterances in the store that this call's manifest does not list: an
            edited manifest does not remove them, and stage 2 still reads them. Utterances of
            other corpora are counted in ``other_corpora`` instead.
        other_corpora: Corpus -> count of the store's done utterances of corpora other than this
            call's (a store extended with another corpus; when none of this call's utterances was in
            the store before, every done utterance it does not list); stage 2 reads them too.
        shared_speakers: Speaker names of this manifest that also name done utterances of the store
            that it does not list (e.g. speaker '1' of another corpus), with one such id each: a name
            is one speaker for per-speaker statistics and folds, whatever the corpus.
        extra_kept: (id, column, stored value, given value) of each extra column of a done utterance
            (a CSV manifest's own columns: ``corpus``, ``dialect``) that this call gives with another
            value than the store holds: extra columns are not updated in place (labels and speakers
            are), so the store keeps the old value, e.g. an utterance keeps its stored corpus.
        absent_failed: Ids of failed (or never extracted) utterances in the store that this call's
            manifest does not list: they keep their rows, stage 2 does not read them, and they are
            not in ``failed``.
        moved: (id, old path, new path) of each extracted utterance given at a new path whose
            file holds the same audio (sha256): the store takes the path and keeps its features.
        vanished: Ids of extracted utterances whose file is gone: they keep their features.
        silent: Ids of this manifest's done utterances whose audio is digital silence after mixing
            to mono (every sample 0), as the store records them: extracted like any other.
        speaker_case: Groups of speaker names of this manifest and the store's done utterances that
            differ only in case ('Spk1', 'spk1') or leading zeros ('07', '7'): each is a speaker of its own.
        low_rate: Per feature run at each file's own rate, (path, rate) of this manifest's files
            below its lowest sensible rate (eGeMAPS: 10.9 kHz), and what that means.
        corpus: The corpus kind the utterances were read as (``Manifest.corpus``: ``"iemocap"``,
            ``"ravdess"``, ``"csv"``), which the notes name; "" when unknown.
    """

    store: Path | str
    planned: int = 0
    extracted: int = 0
    skipped: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    complete: bool = False
    relabelled: list[tuple[str, str, str, str]] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    absent_failed: list[str] = field(default_factory=list)
    other_corpora: dict[str, int] = field(default_factory=dict)
    shared_speakers: list[tuple[str, str]] = field(default_factory=list)
    extra_kept: list[tuple[str, str, str, str]] = field(default_factory=list)
    moved: list[tuple[str, str, str]] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    silent: list[str] = field(default_factory=list)
    speaker_case: list[list[str]] = field(default_factory=list)
    low_rate: dict[str, tuple[int, list[tuple[str, int]], str]] = field(default_factory=dict)
    corpus: str = ""

    @property
    def source(self) -> str:
        """What the notes call the corpus the user gave: ``IEMOCAP release``, ``RAVDESS folder``,
        ``CSV manifest`` (``manifest`` for a reader registered elsewhere, or utterances of no kind)."""
        return _SOURCE_NAMES.get(self.corpus.lower(), "manifest")

    @property
    def realtime_factor(self) -> float:
        """Audio seconds extracted per wall second."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def describe_relabelled(self) -> str:
        """One line on the labels, speakers, splits and sessions taken from an edited manifest ("" if none)."""
        if not self.relabelled:
            return ""
        counts = Counter(column for _, column, _, _ in self.relabelled)
        uid, column, old, new = self.relabelled[0]
        return (f"the {self.source} changed {', '.join(f'the {c} of {n}' for c, n in sorted(counts.items()))} "
                f"utterance(s) (e.g. {uid}: {column} {old!r} -> {new!r}); the store now holds the new values, "
                f"and runs trained on the old ones are trained again")

    def notes(self) -> list[str]:
        """What a user should know about an edited manifest: relabelled rows, moved files, dropped rows."""
        notes = [self.describe_relabelled()] if self.relabelled else []
        if self.moved:
            uid, old, new = self.moved[0]
            notes.append(f"{len(self.moved)} utterance(s) already extracted are now read from other paths "
                         f"(e.g. {uid}: {old} -> {new}); their files hold the same audio (sha256), so the "
                         f"store took the new paths and kept their features")
        if self.vanished:
            notes.append(f"{len(self.vanished)} utterance(s) already extracted no longer have their audio file "
                         f"({first_few(self.vanished)}); they keep their features in the store")
        if self.absent:
            notes.append(f"{len(self.absent)} utterance(s) of store {self.store} are not in this {self.source} "
                         f"({first_few(self.absent)}); "
                         f"they stay in the store, and `w2v2ser train` still uses them. To leave them out, "
                         f"extract this {self.source} into a new store (`--like {shlex.quote(str(self.store))}` keeps the "
                         f"feature "
                         f"configs)")
        if self.other_corpora:
            counts = ", ".join(f"{name} {n}" for name, n in sorted(self.other_corpora.items()))
            notes.append(f"store {self.store} also holds {sum(self.other_corpora.values())} utterance(s) of other "
                         f"corpora or manifests (by corpus: {counts}); `w2v2ser train` reads them too, unless "
                         f"`--subset corpus=NAME` selects one corpus")
        if self.shared_speakers:
            named = first_few([f"{speaker!r} (e.g. {uid})" for speaker, uid in self.shared_speakers])
            notes.append(f"{len(self.shared_speakers)} speaker name(s) of this {self.source} also name utterances of "
                         f"the store that it does not list: {named}. Each name is one speaker, its statistics "
                         f"pooled over all of its utterances and kept in one fold, whatever their corpus; if these "
                         f"are other people (another corpus), give them names of their own in this {self.source} "
                         f"(e.g. with a corpus prefix) and rerun the same extract: speakers are updated in place")
        corpus = [kept for kept in self.extra_kept if kept[1] == "corpus"]
        if corpus:
            uid, _, old, new = corpus[0]
            notes.append(f"{len(corpus)} utterance id(s) of this {self.source} are already in store {self.store} as "
                         f"utterances of corpus {old} (e.g. {uid}, given as corpus {new!r}); they stay "
                         f"of corpus {old} (a `corpus` column is not updated in place, labels and speakers "
                         f"are). If this is another corpus listing the same ids, give its rows ids of their own (an "
                         f"'id' column, e.g. '{new}/{uid}') and rerun; to change their corpus, extract this "
                         f"{self.source} into a new store (`--like {shlex.quote(str(self.store))}` keeps the feature "
                         f"configs)")
        others = [kept for kept in self.extra_kept if kept[1] != "corpus"]
        if others:
            uid, column, old, new = others[0]
            columns = ", ".join(sorted({kept[1] for kept in others}))
            notes.append(f"{len(others)} value(s) of this {self.source}'s own columns ({columns}) differ from what "
                         f"store {self.store} holds (e.g. {uid}: {column} {old!r} -> {new!r}); such columns are not "
                         f"updated in place (labels and speakers are), so `--subset {column}=...` still reads the "
                         f"stored values. To use the new ones, extract this {self.source} into a new store "
                         f"(`--like {shlex.quote(str(self.store))}` keeps the feature configs)")
        if self.absent_failed:
            notes.append(f"{len(self.absent_failed)} failed or unfinished utterance(s) of store {self.store} are "
                         f"not in this {self.source} ({first_few(self.absent_failed)}); they were never extracted "
                         f"in full, so `w2v2ser train` does not use them, and this run does not count them "
                         f"as failed (`w2v2ser store info` lists them apart from the current failures)")
        if self.silent:
            notes.append(f"{len(self.silent)} file(s) are digital silence after mixing to mono (every sample is 0): "
                         f"{first_few(self.silent)}. {SILENCE_ADVICE}")
        for name, (lowest, files, why) in self.low_rate.items():
            named = first_few([f"{path} ({rate} Hz)" for path, rate in files])
            notes.append(f"{len(files)} file(s) are below {lowest} Hz while {name} runs at each file's own rate "
                         f"(sample_rate: native): {named}. {why}")
        if self.speaker_case:
            pairs = "; ".join(" and ".join(map(repr, group)) for group in self.speaker_case[:5])
            more = f" (and {len(self.speaker_case) - 5} more)" if len(self.speaker_case) > 5 else ""
            notes.append(f"speaker names that differ only in {variants_differ(self.speaker_case)}: {pairs}{more}; "
                         f"each spelling is a speaker of its own (speaker folds, per-speaker normalisation): "
                         f"{SPEAKER_CASE_ADVICE}")
        return notes

    def nothing_extracted(self, location: Any, features: Sequence[str], shown: str) -> str | None:
        """The error line when this finished extraction left ``features`` without any extracted
        utterance while utterances failed (every path wrong, say), or None.

        Per-file failures amid extracted utterances are no error (bad input never stops a run); the
        store counts earlier runs' work, so a resumed run of a store that holds frames is fine.

        Args:
            location: The store as :func:`w2v2ser.store.open_store` takes it (its storage options included).
            features: The features this extraction was asked for.
            shown: The store as the user named it (in the error line).
        """
        failed = len({uid for uid, _, _ in self.failed})  # utterances, not utterance x feature records
        if not self.complete or not failed:
            return None
        empty = features_without_utterances(open_store(location), features)
        if not empty:
            return None
        return (f"nothing could be extracted: the store holds no utterance with {', '.join(empty)} frames and "
                f"{failed} utterance(s) failed; `w2v2ser store info {shlex.quote(str(shown))}` lists the reasons "
                f"(fix them and "
                f"rerun; finished work is kept)")


def features_without_utterances(store: Any, features: Sequence[str]) -> list[str]:
    """Those of ``features`` of which the open ``store`` holds no extracted utterance."""
    return [name for name in features if not store.holds_any(name)]


def _runs_on_this_machine(client: Any) -> bool:
    """Whether the shards run on this machine's devices: in this process or on a local Dask
    cluster, not on a job queue's (SLURM) workers, which may have GPUs that this process lacks,
    nor on a cluster known only by its address."""
    if client is None:
        return True
    cluster = getattr(client, "cluster", None)
    if cluster is None:
        return False
    # A job queue's cluster means dask_jobqueue is imported. Not imported here: its import sets a
    # SIGINT handler, which fails outside the main thread (the pipeline extracts in threads).
    jobqueue = sys.modules.get("dask_jobqueue")
    return jobqueue is None or not isinstance(cluster, jobqueue.JobQueueCluster)


@hub_probe_scope()  # one probe of the hub per call, workers it starts included
def extract_corpus(
    utterances: Sequence[Utterance] | Manifest,
    store_path: str | Path | StoreLocation,
    *,
    extractors: Sequence[Extractor],
    shard_size: int = SHARD_SIZE,
    progress: bool = True,
    client: Any = None,
    gpu_resource: str | None = None,
    decode_workers: int | None = None,
    cpu_workers: int = 1,
    on_stage: Callable[[str, float], None] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    reader_skipped: Sequence[tuple[str, str]] | None = None,
    corpus: str | None = None,
    lost_worker_fix: str = LOST_WORKER_FIX,
) -> ExtractionSummary:
    """Extract every feature of every utterance into a store, resumably.

    Reruns skip utterances whose features are committed; a file that cannot be read
    or extracted is recorded in the store's failures table and the run goes on.

    Args:
        utterances: The corpus manifest (from :func:`read_corpus`).
        store_path: The Zarr store directory (created if missing), or an object-store URL
            such as ``s3://bucket/prefix``.
        extractors: Configured extractors, e.g. ``[build_extractor("egemaps", {})]``.
        shard_size: Utterances per unit of work (a Dask task when ``client`` is set).
        progress: Show progress bars.
        client: A ``distributed.Client``; None runs the shards in this process.
        gpu_resource: Worker resource name that marks GPU workers (e.g. ``"GPU"``):
            GPU features are then scheduled there, the other features on any worker
            at the same time.
        decode_workers: Processes decoding audio ahead of the model (0 = one thread in this
            process; None = a few when the model runs on CUDA, else 0).
        cpu_workers: Parallel instances of each CPU feature (eGeMAPS, spectrogram), which run
            alongside the model in threads of their own (openSMILE in its own processes).
        on_stage: Profiling callback, called with (stage, busy seconds) by every shard run
            in this process (see :func:`extract_shard`).
        storage_options: fsspec options of a store URL (endpoint, credentials); they travel
            with the store to Dask workers (see :func:`w2v2ser.store.locate_store`).
        reader_skipped: The manifest's ``problems`` (files or lines the corpus reader could not
            use), recorded in the store beside the failures (``w2v2ser store info``).
        corpus: The corpus kind (``Manifest.corpus``) the summary's notes name; default: that of
            ``utterances`` when it is a :class:`Manifest` (which is taken whole).
        lost_worker_fix: What a shard's error says to change when its Dask worker died at every
            try (the settings of the caller's cluster); default: more memory per worker, fewer
            workers, or no cluster.

    Returns:
        An :class:`ExtractionSummary`.
    """
    extractors = _check_extraction_options(extractors, shard_size=shard_size, decode_workers=decode_workers,
                                           cpu_workers=cpu_workers)
    store_path = locate_store(store_path, storage_options=storage_options)
    if store_path.is_local:  # not a store inside another store
        refuse_inside_store(store_path.path, "store_path", itself=False)
    for extractor in extractors:  # a missing model or device fails before the store is created
        check = getattr(extractor, "check", None)
        if check is not None:
            check(local=_runs_on_this_machine(client))
    started = time.perf_counter()
    if isinstance(utterances, Manifest):  # passed whole: its utterances, and its kind for the notes
        corpus = utterances.corpus if corpus is None else corpus
        utterances = utterances.utterances
    utterances = _check_utterances(utterances)
    summary = ExtractionSummary(store=store_path.display, corpus=corpus or "")
    with lock_store(store_path), _object_store_failures(store_path, summary):
        # A new store is created only once the features' specs are known: a config refused at the
        # first file's rate (native spectrogram) must not leave an empty store behind.
        with remote_errors(store_path):
            fresh = not store_path.exists("zarr.json")
            if fresh:  # a folder of other files is refused at once, before every file's header is read
                StoreWriter.check_creatable(store_path)
        writer = None if fresh else StoreWriter(store_path)
        done: dict[str, Any] = {}
        moved: set[str] = set()
        stored: Mapping[str, Any] = {}
        if writer is not None:
            existing = open_store(store_path, allow_incomplete=True)
            # This run rewrites the tables (relabelled rows, finalize), so a deleted table chunk must
            # not stop it: it reads such a chunk as its fill value, as readers did before they checked.
            existing.check_chunks = False
            done = {r.id: r for r in existing.list_utterances(status="done")}  # the table, read once
            _check_label_spellings(existing.path, done, utterances)
        done_before = set(done)  # their sha256 was recorded by an earlier run, whose file this one may not have read
        # Headers and sha256 of files whose stat is unchanged since a run recorded them are not read again.
        audio_cache = _AudioStatCache(store_path)
        infos, failures = _probe_all(utterances, progress, audio_cache)
        by_name = {e.name: e for e in extractors}
        summary.low_rate = {name: (by_name[name].native_min_rate, files, by_name[name].native_min_rate_why)
                            for name, files in below_native_minimum(utterances, infos, extractors).items()}
        if writer is not None:
            summary.vanished = _keep_vanished(done, utterances, infos, failures)
            moved = _check_recorded_audio(existing, done, utterances, progress, audio_cache)
            stored = existing.features
        refused: dict[int, dict[str, str]] = {}  # position -> feature -> why (a native rate): the rest is extracted
        # A file with features stored keeps them when this run's features all refuse its rate.
        rates = store_rates(utterances, infos, failures, extractors, stored, refused=refused,
                            kept={position for position, u in enumerate(utterances) if u.id in done})
        num_samples = [info.num_samples if info is not None else None for info in infos]
        specs = [feature_spec_for_store(extractor, rates, stored) for extractor in extractors]
        if writer is None:
            writer = StoreWriter(store_path)
        capacities = {extractor.name: [0 if extractor.name in refused.get(position, {}) else capacity(extractor, info)
                                       for position, info in enumerate(infos)] for extractor in extractors}
        rows = writer.plan(
            [with_rate(u, info) for u, info in zip(utterances, infos)],
            num_samples=num_samples, features=specs, capacities=capacities, failures=failures,
            reader_skipped=reader_skipped, moved=moved,
        )
        summary.planned = len(rows)
        summary.relabelled = list(writer.relabelled)
        summary.moved = list(writer.moved)
        unfinished = set(writer.absent_unfinished)
        summary.absent = [uid for uid in writer.absent if uid not in unfinished]
        summary.absent, summary.other_corpora, summary.shared_speakers = _absent_by_corpus(
            summary.absent, done, utterances, corpus, fresh=not writer.known)
        summary.absent_failed = list(writer.absent_unfinished)
        summary.extra_kept = _extra_kept(utterances, done)
        for position, reasons in refused.items():
            for name, reason in reasons.items():
                writer.record_failure(rows[position], feature=name, reason=reason)
        refused_by_row = {rows[position]: set(reasons) for position, reasons in refused.items()}
        # Rows with features stored before this run: a file of theirs that fails now (gone, unreadable)
        # fails the features this run extracts, not those it has.
        kept_rows = {row for row, u in zip(rows, utterances) if u.id in done}
        samples_by_row = {row: n for row, n in zip(rows, num_samples)}
        path_by_row = {row: u.path for row, u in zip(rows, utterances)}
        groups = _feature_groups(extractors, split_gpu=client is not None and gpu_resource is not None)
        tasks: list[tuple[list[str], list[_ShardItem], WorkUnit]] = []
        # A row lacks some feature exactly when it lacks one of some group's features.
        all_pending: set[int] = set()
        for group in groups:
            names = [e.name for e in group]
            # Per row, the group's features it lacks, less those refused for its file: only these are extracted
            # (the features a file has kept, e.g. after another of them failed, are not extracted again).
            wanted: dict[int, set[str]] = {}
            for name, missing in writer.pending_by_feature(names).items():
                for row in missing:
                    if name not in refused_by_row.get(row, ()):
                        wanted.setdefault(row, set()).add(name)
            all_pending.update(wanted)
            pending = [row for row in sorted(wanted) if row in samples_by_row and samples_by_row[row]]
            # Similar lengths side by side: batches need little padding.
            pending.sort(key=lambda row: samples_by_row[row] or 0)
            items = [_ShardItem(row, path_by_row[row], int(samples_by_row[row] or 0),
                                skip=tuple(sorted(set(names) - wanted[row])), kept=row in kept_rows)
                     for row in pending]
            chunks = [items[start : start + shard_size] for start in range(0, len(items), shard_size)]
            # Each unit gets whole shards of its own: no two writers ever touch one shard file.
            units = writer.plan_units([[item.index for item in chunk] for chunk in chunks], names)
            tasks.extend((names, chunk, unit) for chunk, unit in zip(chunks, units))

        summary.skipped = sum(1 for row in rows if row not in all_pending and row not in refused_by_row
                              and samples_by_row[row])
        # A vanished file that a new feature needs cannot be decoded: it fails, and is not kept.
        pending_ids = {u.id for u, row in zip(utterances, rows) if row in all_pending}
        summary.vanished = [uid for uid in summary.vanished if uid not in pending_ids]
        # Workers build their own copies: what this process decided from the model's files (waveform
        # normalisation for "auto") goes with the config, in case a worker elsewhere sees other files.
        configs = {e.name: {**e.config.to_dict(), **(e.decided_options() if hasattr(e, "decided_options") else {})}
                   for e in extractors}
        total = sum(len(items) for _, items, _ in tasks)
        id_by_row = {row: u.id for row, u in zip(rows, utterances)}
        if client is None:
            by_name = {e.name: e for e in extractors}
            bar = _progress(None, progress, "extract", "utt", total=total) if progress else None
            for group_names, items, unit in tasks:
                check_stop()
                silent: list[int] = []
                done = extract_shard(
                    store_path,
                    items,
                    extractors=[by_name[n] for n in group_names],
                    journal="main",
                    unit=unit,
                    on_utterance=(lambda seconds: bar.update(1)) if bar is not None else None,
                    decode_workers=decode_workers,
                    cpu_workers=cpu_workers,
                    on_stage=on_stage,
                    silent=silent,
                )
                # Noted as each unit commits (store info of the unfinished store shows it); the unit's
                # commit records carry it too, for finalize, should the driver die right after a commit.
                writer.record_silent_audio([id_by_row[row] for row in silent])
                summary.extracted += done[0]
                summary.audio_seconds += done[1]
            if bar is not None:
                bar.close()
        else:
            summary_parts = _run_on_dask(
                client, store_path, tasks, configs, gpu_resource=gpu_resource, progress=progress,
                on_silent=lambda found: writer.record_silent_audio([id_by_row[row] for row in found]),
                lost_worker_fix=lost_worker_fix,
            )
            summary.extracted += summary_parts[0]
            summary.audio_seconds += summary_parts[1]
        writer.finalize()
        if audio_cache.dirty:  # the sha256 its workers recorded, for files that have kept their stat since
            records = open_store(store_path, allow_incomplete=True).list_utterances(status="done")
            given = {u.id: str(u.path) for u in utterances}
            # Only rows this run extracted: an earlier run's sha256 under a stat taken now would vouch for
            # a file rewritten since whose check could not hash it (an I/O error), for good.
            audio_cache.put_extracted([r for r in records if given.get(r.id) == str(r.path) and r.id not in done_before])
            audio_cache.save({u.path for u in utterances} | {r.path for r in records})
    store = open_store(store_path, allow_incomplete=True)
    summary.complete = store.complete
    # This manifest's failures: a failed row that it no longer lists (the user removed a bad
    # recording) keeps its record in the store, but is not this run's failure.
    given = {u.id for u in utterances}
    stored = {r.id for r in store.list_utterances(status="done")}  # those failed for some feature only
    summary.failed = [(f.id, f.path, f.reason if f.feature is None or f.id not in stored else
                       f"{f.reason} (only its {f.feature} failed: the file's other features are stored)")
                      for f in store.list_failures() if f.id in given]
    summary.silent = [uid for uid in store.attrs.get("silent_audio", []) if uid in given]
    summary.speaker_case = case_variants(store.speakers() + [u.speaker for u in utterances])
    summary.wall_seconds = time.perf_counter() - started
    return summary


@contextlib.contextmanager
def _object_store_failures(location: StoreLocation, summary: ExtractionSummary) -> Iterator[None]:
    """An object store that goes away or refuses a request mid-extraction ends the run with one
    line (not the client's traceback) that says what is kept: exit 1 once this run committed work."""
    try:
        yield
    except Exception as error:
        lost = as_unreachable(location, error)
        if lost is None:
            raise
        kept = (f"{summary.extracted} utterance(s) committed by this run are kept" if summary.extracted else
                "this run committed nothing")
        before = f", with the {summary.skipped} committed before" if summary.skipped else ""
        lost.args = (f"{lost} The object store stopped answering or refused a request during the extraction: {kept}{before}; "
                     f"rerun the same command once the store is reachable to extract the rest.",)
        if summary.extracted:
            lost.exit_code = EXIT_FAILED  # a run failed part-way, finished work kept (like a full disk)
        if lost is error:
            raise
        raise lost from None


def _feature_groups(extractors: Sequence[Extractor], *, split_gpu: bool) -> list[list[Extractor]]:
    """All features in one pass over the audio, or GPU and CPU features apart."""
    if not split_gpu:
        return [list(extractors)]
    gpu = [e for e in extractors if e.name in GPU_FEATURES]
    cpu = [e for e in extractors if e.name not in GPU_FEATURES]
    return [group for group in (gpu, cpu) if group]
