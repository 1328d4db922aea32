"""Stage 1 driver: plan a corpus into a store, extract shards of utterances, finalize.

The driver is the only process that plans and finalizes a store (under the store
lock). Shards of utterances are independent work units: the driver gives each its own
whole Zarr shards (``StoreWriter.plan_units``); one worker packs the unit's utterances
into them, writes each shard once and commits the unit in its own journal, so units
can run in this process or as Dask tasks on many workers.
"""

from __future__ import annotations

import contextlib
import copy
import json
import multiprocessing
import os
import queue
import shlex
import sys
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
from pydantic import Field

from w2v2ser._common import (
    EXIT_FAILED, LOST_WORKER_FIX, SHARD_SIZE, SILENCE_ADVICE, SPEAKER_CASE_ADVICE, ConfigError, case_variants,
    check_stop, control_character, failures_by_error, first_few, progress_bar, spelling_key, task_error,
    variants_differ,
)
from w2v2ser._schema import StrictModel, validate
from w2v2ser.store import (
    AUDIO_RATE_KEY, StoreError, StoreLocation, StoreWriter, Utterance, W2v2serError, WorkUnit, locate_store, lock_store,
    open_store,
)
from w2v2ser.store._layout import refuse_inside_store
from w2v2ser.store._location import as_unreachable, remote_errors

from ._audio import AudioInfo, DecodedAudio, decode_audio, probe_audio, sha256_file
from ._errors import AudioError, ManifestError
from ._manifest import Manifest
from ._models import ModelLoadError
from ._rates import (
    CHANNELS_KEY, below_native_minimum, capacity, configured_rates, feature_spec_for_store, resample_for, run_extractor,
    store_rates, with_rate,
)
from ._registry import UPSTREAMS, Extractor, build_extractor

__all__ = ["ExtractionSummary", "extract_corpus", "extract_shard"]

# Features that profit from a GPU; everything else runs on CPU workers.
GPU_FEATURES = UPSTREAMS


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
        failed: Failures recorded in the store (all runs), as (id, path, reason).
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

        ``location`` is the store as :func:`w2v2ser.store.open_store` takes it (its storage options
        included), ``shown`` as the user named it. Per-file failures amid extracted utterances are no
        error (bad input never stops a run); the store counts earlier runs' work, so a resumed run of
        a store that holds frames is fine.
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


@dataclass(frozen=True)
class _ShardItem:
    index: int
    path: str
    num_samples: int


def _probe_all(
    utterances: Sequence[Utterance], progress: bool
) -> tuple[list[AudioInfo | None], dict[int, str]]:
    """Read every file's header; unreadable ones become failures, not crashes."""
    infos: list[AudioInfo | None] = []
    failures: dict[int, str] = {}
    for position, utterance in enumerate(_progress(utterances, progress, "probe audio", "file")):
        try:
            infos.append(probe_audio(utterance.path))
        except W2v2serError as error:
            infos.append(None)
            failures[position] = str(error)
        except OSError as error:  # permissions, vanished files: record and go on
            infos.append(None)
            failures[position] = f"cannot read {utterance.path}: {error}. Check the file exists and is readable."
    return infos, failures


def _keep_vanished(done: Mapping[str, Any], utterances: Sequence[Utterance], infos: list[AudioInfo | None],
                   failures: dict[int, str]) -> list[str]:
    """Extracted utterances whose file is gone since: their probe failure is dropped and their
    header taken from the store, so they keep their features instead of becoming failures.
    ``done``: id -> record of each utterance the store has finished.

    Returns:
        Their ids.
    """
    kept = []
    for position in sorted(failures):
        utterance = utterances[position]
        record = done.get(utterance.id)
        if record is None or record.path != utterance.path or record.sample_rate is None \
                or os.path.lexists(utterance.path):
            continue
        rate = record.sample_rate
        infos[position] = AudioInfo(num_samples=record.num_samples, sample_rate=rate, channels=1,
                                    duration=record.duration, frames_at_source=round(record.duration * rate))
        del failures[position]
        kept.append(utterance.id)
    return kept


def _check_label_spellings(store: Any, done: Mapping[str, Any], utterances: Sequence[Utterance]) -> None:
    """Refuse a manifest whose labels differ only in case (or, numbers, leading zeros) from those of the
    store's other done utterances ('Happy' given, 'happy' stored): training would take them as two classes. The
    manifest reader checks its own rows only; this compares them with the rows of earlier manifests."""
    given = {u.id for u in utterances}
    kept: dict[str, dict[str, str]] = {}  # spelling_key of a label -> stored spelling -> an utterance id
    for record in done.values():
        if record.id not in given:  # rows this manifest lists take its labels
            kept.setdefault(spelling_key(record.label), {}).setdefault(record.label, record.id)
    if not kept:
        return
    clashes: dict[tuple[str, str], Utterance] = {}
    for u in utterances:
        for spelling, uid in kept.get(spelling_key(u.label), {}).items():
            if spelling != u.label:
                clashes.setdefault((u.label, spelling), u)
    if not clashes:
        return
    pairs = "; ".join(f"{new!r} (this manifest, e.g. {u.id}: {u.path}) and {old!r} (in the store, e.g. "
                      f"{kept[spelling_key(old)][old]})" for (new, old), u in list(clashes.items())[:5])
    # A folder corpus's labels come from its reader (RAVDESS, IEMOCAP: lower case): only a CSV's can be respelt.
    new_fixed = sorted({u.corpus for u in clashes.values() if u.corpus and u.corpus != "csv"})
    old_fixed = sorted({done[kept[spelling_key(old)][old]].corpus for _, old in clashes} - {"csv", ""})
    if new_fixed:
        fix = (f"The {'/'.join(new_fixed)} reader's labels cannot be respelt: write the labels of the CSV manifest "
               f"that listed the store's utterances as this corpus spells them, rerun its `w2v2ser extract` "
               f"(labels are updated in place, nothing is extracted again), then this one.")
    elif old_fixed:
        fix = (f"The store's {'/'.join(old_fixed)} labels come from that corpus's reader: write this manifest's "
               f"labels as the store spells them and rerun the same `w2v2ser extract`.")
    else:
        fix = ("Fix the spelling in the manifest and rerun the same `w2v2ser extract`. To keep this manifest's "
               "spelling instead, first rerun the extract of the manifest that listed the store's utterances, "
               "with that spelling: labels are updated in place, nothing is extracted again.")
    raise ManifestError(
        f"labels of this manifest differ only in {variants_differ([[new, old] for new, old in clashes])} from "
        f"those of store {store}: {pairs}; each spelling would be a class of its own. {fix}"
    )


def _check_recorded_audio(store: Any, done: Mapping[str, Any], utterances: Sequence[Utterance],
                          progress: bool) -> set[str]:
    """Compare each extracted utterance's audio with the sha256 recorded when it was extracted.

    Refuses to resume when a file's audio has changed since: the finished utterance would be kept,
    with features that are no longer of its file. ``done``: id -> record of each utterance the
    store has finished (its path and sha256).

    Returns:
        Ids given at a new path whose file holds the same audio (a corpus moved or copied to
        another disk): the store takes the new path, and keeps their features.
    """
    recorded = {r.id: (r.path, r.audio_sha256) for r in done.values() if r.audio_sha256}
    checked = [u for u in utterances if u.id in recorded]
    changed, moved = [], set()
    for u in _progress(checked, progress and bool(checked), "check audio", "file"):
        try:
            digest = sha256_file(u.path)
        except (OSError, AudioError):  # sha256_file raises AudioError for a missing or unreadable file
            continue  # a vanished file keeps its features; a moved one that cannot be read is refused by plan
        if recorded[u.id][0] == u.path and digest != recorded[u.id][1]:
            changed.append(u)
        elif recorded[u.id][0] != u.path and digest == recorded[u.id][1]:
            moved.add(u.id)
    if changed:
        named = first_few([f"{u.id!r} ({u.path})" for u in changed], 5)
        raise StoreError(f"the audio of {len(changed)} utterance(s) already extracted into store {store.path} "
                         f"has changed since (its sha256 differs from the one recorded): {named}. A store keeps "
                         f"what it extracted, and resuming would keep those features: extract into a new store "
                         f"path (`--like {shlex.quote(str(store.path))}` keeps the feature configs), or restore the files.")
    return moved


def _progress(items: Any, enabled: bool, desc: str, unit: str, total: int | None = None) -> Any:
    if not enabled:
        return items
    return progress_bar(items, desc=desc, unit=unit, total=total)


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


class _Counts(StrictModel):
    """extract_corpus's counts, bounded as the CLI's options are."""

    shard_size: Annotated[int, Field(ge=1)]
    decode_workers: Optional[Annotated[int, Field(ge=0)]]
    cpu_workers: Annotated[int, Field(ge=1)]



_TEXT_FIELDS = ("id", "path", "speaker", "label", "session", "split", "gender", "corpus")


def _check_utterances(utterances: Any) -> list[Utterance]:
    """The utterances as a list of Utterance objects, or a ConfigError that says how to get them: rows given as dicts (e.g. a
    DataFrame's ``to_dict("records")``) failed deep inside with "'dict' object has no attribute 'id'"."""
    example = ("expected a list of w2v2ser.store.Utterance, e.g. read_corpus(KIND, PATH).utterances, or "
               "Utterance(**row) for rows of your own (id, path, speaker, label, ...)")
    if isinstance(utterances, (str, bytes, os.PathLike, Utterance, Mapping)) or not hasattr(utterances, "__iter__"):
        raise ConfigError(f"extract_corpus: utterances is a {type(utterances).__name__}; {example}")
    utterances = list(utterances)  # a generator is read once, here
    for i, utterance in enumerate(utterances):
        if not isinstance(utterance, Utterance):
            raise ConfigError(f"extract_corpus: utterances[{i}] is a {type(utterance).__name__} "
                              f"({repr(utterance)[:80]}); {example}")
        # label=None was stored as the class 'None', speaker=5 failed in a sort with a raw TypeError
        for name in _TEXT_FIELDS:
            value = getattr(utterance, name)
            if not isinstance(value, str) and not (name == "path" and isinstance(value, os.PathLike)):
                raise ConfigError(f"extract_corpus: utterance {utterance.id!r} has {name}={value!r} "
                                  f"({type(value).__name__}); expected a string (e.g. str(value), or '' for none)")
        if not isinstance(utterance.extra, Mapping):
            raise ConfigError(f"extract_corpus: utterance {utterance.id!r} has extra={utterance.extra!r}; "
                              f"expected a mapping of field names to values")
        bad = control_character(utterance.id)
        if bad is not None:  # StoreWriter.plan's check, made before a new store is created (same error)
            raise StoreError(f"extract_corpus: utterances[{i}] has the id {utterance.id!r}, which holds the control "
                             f"character {bad!r} (a line break, tab, NUL or the like): logs and predictions.csv "
                             f"could not show it, nor --subset id=... match it. Give ids without control characters.")
        if not utterance.speaker.strip():  # per-speaker statistics and speaker splits group by it
            raise ConfigError(f"extract_corpus: utterance {utterance.id!r} has an empty speaker; every utterance "
                              f"needs one (speaker normalisation and the speaker splits group by it): give the "
                              f"speaker's name, or the utterance id for a corpus without speakers")
        for key, value in utterance.extra.items():  # stored as JSON: a date failed at write time with a raw TypeError
            try:
                if not isinstance(key, str):
                    raise TypeError(f"a key of type {type(key).__name__}")
                json.dumps(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"extract_corpus: utterance {utterance.id!r} has extra[{key!r}]={value!r:.80} "
                                  f"({type(value).__name__}), which cannot be stored as JSON ({exc}); give text "
                                  f"keys and text, numbers, booleans, lists or mappings as values, e.g. "
                                  f"str(value)") from None
    seen: set[str] = set()
    duplicates = sorted({u.id for u in utterances if u.id in seen or seen.add(u.id)})  # type: ignore[func-returns-value]
    if duplicates:  # StoreWriter.plan's check, made before a new store is created (same error)
        raise StoreError(f"extract_corpus: duplicate utterance ids {duplicates[:5]}; ids must be unique within a "
                         f"store: give each utterance its own id (e.g. add the speaker or the folder to it).")
    return utterances


def _check_extraction_options(extractors: Any, *, shard_size: Any, decode_workers: Any,
                              cpu_workers: Any) -> list[Extractor]:
    """extract_corpus's options as the CLI checks them; one extractor may be given bare."""
    if hasattr(extractors, "feature_spec"):
        extractors = [extractors]
    extractors = list(extractors)
    if not extractors:
        raise ConfigError("extract_corpus got no extractors; pass at least one, e.g. [build_extractor('egemaps')].")
    for extractor in extractors:
        if not hasattr(extractor, "feature_spec"):
            example = extractor if isinstance(extractor, str) else "egemaps"
            raise ConfigError(f"extract_corpus: extractors holds {extractor!r}; expected extractors made by "
                              f"build_extractor, e.g. [build_extractor({example!r})]")
    # A feature given twice extracted nothing and left a store pending, with no error or reason.
    seen: dict[str, Any] = {}
    for extractor in extractors:
        name = str(getattr(extractor, "name", type(extractor).__name__))
        if name in seen:
            try:  # the options in which the two configs differ, e.g. " (hop_ms 10.0 and 20.0)"
                first, second = seen[name].config.to_dict(), extractor.config.to_dict()
                keys = [k for k in {**first, **second} if first.get(k) != second.get(k)]
                differ = f" ({', '.join(f'{k} {first.get(k)} and {second.get(k)}' for k in keys)})" if keys else ""
            except Exception:  # an extractor of its own whose config has no to_dict: name no options
                differ = ""
            raise ConfigError(f"extract_corpus: feature {name!r} is given twice{differ}; "
                              f"a store holds one config per feature: use one extractor per feature, or a second "
                              f"store for the other config")
        seen[name] = extractor
    # decode_workers=-1 decoded nothing: 0 utterances extracted, without an error.
    validate(_Counts, {"shard_size": shard_size, "decode_workers": decode_workers, "cpu_workers": cpu_workers},
             where="extract_corpus")
    return extractors


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
        infos, failures = _probe_all(utterances, progress)
        by_name = {e.name: e for e in extractors}
        summary.low_rate = {name: (by_name[name].native_min_rate, files, by_name[name].native_min_rate_why)
                            for name, files in below_native_minimum(utterances, infos, extractors).items()}
        if writer is not None:
            summary.vanished = _keep_vanished(done, utterances, infos, failures)
            moved = _check_recorded_audio(existing, done, utterances, progress)
            stored = existing.features
        rates = store_rates(utterances, infos, failures, extractors, stored)
        num_samples = [info.num_samples if info is not None else None for info in infos]
        specs = [feature_spec_for_store(extractor, rates, stored) for extractor in extractors]
        if writer is None:
            writer = StoreWriter(store_path)
        capacities = {extractor.name: [capacity(extractor, info) for info in infos] for extractor in extractors}
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
        samples_by_row = {row: n for row, n in zip(rows, num_samples)}
        path_by_row = {row: u.path for row, u in zip(rows, utterances)}
        groups = _feature_groups(extractors, split_gpu=client is not None and gpu_resource is not None)
        tasks: list[tuple[list[str], list[_ShardItem], WorkUnit]] = []
        # A row lacks some feature exactly when it lacks one of some group's features.
        all_pending: set[int] = set()
        for group in groups:
            group_pending = writer.pending([e.name for e in group])
            all_pending.update(group_pending)
            pending = [row for row in group_pending if row in samples_by_row and samples_by_row[row]]
            # Similar lengths side by side: batches need little padding.
            pending.sort(key=lambda row: samples_by_row[row] or 0)
            items = [_ShardItem(row, path_by_row[row], int(samples_by_row[row] or 0)) for row in pending]
            chunks = [items[start : start + shard_size] for start in range(0, len(items), shard_size)]
            names = [e.name for e in group]
            # Each unit gets whole shards of its own: no two writers ever touch one shard file.
            units = writer.plan_units([[item.index for item in chunk] for chunk in chunks], names)
            tasks.extend((names, chunk, unit) for chunk, unit in zip(chunks, units))

        summary.skipped = sum(1 for row in rows if row not in all_pending and samples_by_row[row])
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
    store = open_store(store_path, allow_incomplete=True)
    summary.complete = store.complete
    # This manifest's failures: a failed row that it no longer lists (the user removed a bad
    # recording) keeps its record in the store, but is not this run's failure.
    given = {u.id for u in utterances}
    summary.failed = [(f.id, f.path, f.reason) for f in store.list_failures() if f.id in given]
    summary.silent = [uid for uid in store.attrs.get("silent_audio", []) if uid in given]
    summary.speaker_case = case_variants(store.speakers() + [u.speaker for u in utterances])
    summary.wall_seconds = time.perf_counter() - started
    return summary


def _absent_by_corpus(absent: list[str], done: Mapping[str, Any], utterances: Sequence[Utterance],
                      kind: str | None, *, fresh: bool) -> tuple[list[str], dict[str, int], list[tuple[str, str]]]:
    """Split the done utterances a manifest does not list into its own corpus's (rows it dropped)
    and counts per other corpus, and find its speaker names that they share.

    When none of the manifest's utterances was in the store yet (``fresh``: a second CSV
    manifest, of the same kind ``csv``), every such utterance is another corpus's; else those of
    another corpus are (by name: a CSV manifest's own ``corpus`` column, else the kind). A resumed
    manifest that dropped some of a speaker's rows shares that name by design, so only other
    corpora's utterances count for shared names.

    Returns:
        (own absent ids, other corpus -> count, (shared speaker, one absent id of it) pairs).
    """
    # Corpora by name: a CSV manifest's own `corpus` column tells two CSV manifests apart.
    kinds = {u.corpus_name for u in utterances if u.corpus_name} or ({kind} if kind else set())
    # A row stored with no corpus column is named by its kind (`csv`): this manifest's own when the kinds
    # match, as one extracted before it gained a `corpus` column (that column is not updated in place).
    bare = {u.corpus for u in utterances if u.corpus} | ({kind} if kind else set())
    own: list[str] = []
    others: Counter[str] = Counter()
    speakers = {u.speaker for u in utterances}
    shared: dict[str, str] = {}
    for uid in absent:
        record = done.get(uid)
        name = record.corpus_name if record is not None else ""
        other = record is not None and (fresh or bool(kinds) and bool(name) and name not in kinds
                                        and not (name == record.corpus and name in bare))
        if other:
            others[name or "unnamed"] += 1
        else:
            own.append(uid)
        if other and record.speaker in speakers:
            shared.setdefault(record.speaker, uid)
    return own, dict(others), sorted(shared.items())


def _extra_kept(utterances: Sequence[Utterance], done: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(id, column, stored value, given value) of each extra column that a done utterance of the
    same corpus kind is given with another value than the store holds (see ExtractionSummary)."""
    recorded = {AUDIO_RATE_KEY, CHANNELS_KEY}  # extraction's own keys, not the manifest's
    kept = []
    for u in utterances:
        record = done.get(u.id)
        if record is None or record.corpus != u.corpus:  # another kind's id is refused by the plan
            continue
        for column, value in u.extra.items():
            old = record.extra.get(column)
            old, value = ("" if old is None else str(old), str(value)) if column != "corpus" else (
                record.corpus_name, u.corpus_name)  # no corpus column (or an empty one): the kind
            if column not in recorded and old != value:
                kept.append((u.id, column, old, value))
    return kept


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


def _batches(items: Sequence[_ShardItem], max_samples: int) -> Iterator[list[_ShardItem]]:
    batch: list[_ShardItem] = []
    used = 0
    for item in items:
        if batch and used + item.num_samples > max_samples:
            yield batch
            batch, used = [], 0
        batch.append(item)
        used += item.num_samples
    if batch:
        yield batch


def _decode(item: _ShardItem, rates: Sequence[int | str]) -> tuple[_ShardItem, DecodedAudio | None, str, str]:
    """Decode one file; errors become a reason string so one bad file never stops a shard."""
    try:
        audio = DecodedAudio(*decode_audio(item.path))
        resample_for(audio, rates)  # here, in the decode worker, ahead of extraction
        return item, audio, sha256_file(item.path), ""
    except W2v2serError as error:
        return item, None, "", str(error)
    except Exception as error:  # noqa: BLE001 - any decoder error is recorded, not raised
        return item, None, "", f"cannot decode {item.path}: {type(error).__name__}: {error}. Check the file is valid audio."


_Decoded = list[tuple[_ShardItem, "DecodedAudio | None", str, str]]


def _decode_batch(batch: Sequence[_ShardItem], rates: Sequence[int | str]) -> tuple[_Decoded, float]:
    """Decode (and resample to ``rates``) a batch; also returns the busy seconds (may run in a
    worker process, so it gets the extractors' configured rates, not the extractors)."""
    started = time.perf_counter()
    decoded = [_decode(item, rates) for item in batch]
    return decoded, time.perf_counter() - started


# Decode worker processes, kept for the life of this process (so across shards and runs).
_DECODE_POOLS: dict[int, ProcessPoolExecutor] = {}


def _decode_pool(workers: int) -> ProcessPoolExecutor:
    pool = _DECODE_POOLS.get(workers)
    if pool is None:
        # spawn: the parent holds torch and its threads; a forked child could deadlock.
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        _DECODE_POOLS[workers] = pool
    return pool


class _Decoder:
    """Decodes batches ahead of the model, in order: in `workers` processes, or one thread (0)."""

    def __init__(self, batches: Sequence[Sequence[_ShardItem]], workers: int, rates: Sequence[int | str]) -> None:
        self._batches, self._workers, self._rates = list(batches), workers, list(rates)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="w2v2ser-decode") if workers == 0 else None
        self._ahead = 2 if workers == 0 else workers + 1
        self._futures: deque[tuple[int, Future]] = deque()
        self._next = 0

    def _submit(self) -> None:
        while self._next < len(self._batches) and len(self._futures) < self._ahead:
            batch = self._batches[self._next]
            try:
                executor: Any = self._thread or _decode_pool(self._workers)
                future = executor.submit(_decode_batch, batch, self._rates)
            except (BrokenProcessPool, OSError, RuntimeError, AssertionError):
                # No worker processes here (a broken pool, or a daemonic process that may not
                # have children): decode in one thread of this process from now on.
                _DECODE_POOLS.pop(self._workers, None)
                self._workers, self._ahead = 0, 2
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="w2v2ser-decode")
                future = self._thread.submit(_decode_batch, batch, self._rates)
            self._futures.append((self._next, future))
            self._next += 1

    def __iter__(self) -> Iterator[tuple[_Decoded, float]]:
        self._submit()
        while self._futures:
            number, future = self._futures.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:  # a worker died (e.g. killed): decode this batch here
                _DECODE_POOLS.pop(self._workers, None)
                result = _decode_batch(self._batches[number], self._rates)
            self._submit()
            yield result

    def close(self) -> None:
        for _, future in self._futures:
            future.cancel()
        if self._thread is not None:
            self._thread.shutdown(wait=True)


# Copies of CPU extractors (each with its own openSMILE worker), kept across shards.
_CPU_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _CpuFeatures:
    """CPU features (eGeMAPS, spectrogram) computed alongside the model in background threads.

    Each feature has `copies` extractor instances, each called from one thread of its own
    (openSMILE runs in a worker process per instance), batches handed out round robin.
    """

    def __init__(self, extractors: Sequence[Extractor], copies: int) -> None:
        self._slots: dict[str, list[tuple[Extractor, ThreadPoolExecutor]]] = {}
        self._turn: dict[str, int] = {}
        for extractor in extractors:
            instances = [extractor]
            if copies > 1:
                try:
                    extra = _CPU_COPIES.setdefault(extractor, [])
                except TypeError:  # not weak-referenceable: no copies
                    extra = []
                try:
                    while len(extra) < copies - 1:
                        extra.append(copy.deepcopy(extractor))
                except Exception:  # noqa: BLE001 - an extractor that cannot be copied runs alone
                    extra = []
                instances += extra[: copies - 1]
            self._slots[extractor.name] = [
                (instance, ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"w2v2ser-{extractor.name}"))
                for instance in instances
            ]
            self._turn[extractor.name] = 0

    def submit(self, name: str, function: Callable[[Extractor], Any]) -> Future:
        slots = self._slots[name]
        turn = self._turn[name]
        self._turn[name] = (turn + 1) % len(slots)
        instance, executor = slots[turn]
        return executor.submit(function, instance)

    def close(self) -> None:
        for slots in self._slots.values():
            for _, executor in slots:
                executor.shutdown(wait=True)


def _uses_cuda(extractors: Sequence[Extractor]) -> bool:
    return any(bool(getattr(e, "uses_cuda", lambda: False)()) for e in extractors if e.name in GPU_FEATURES)


def default_decode_workers(extractors: Sequence[Extractor]) -> int:
    """Decode processes when none are asked for: a few on a GPU run (the model outruns one
    decoding thread there), none on CPU (processes would take the model's cores)."""
    if not _uses_cuda(extractors):
        return 0
    return max(1, min(4, (os.cpu_count() or 2) // 4))


def extract_shard(
    store_path: str | StoreLocation,
    items: Sequence[_ShardItem],
    *,
    extractors: Sequence[Extractor],
    journal: str,
    unit: WorkUnit,
    batch_seconds: float = 32.0,
    on_utterance: Callable[[float], None] | None = None,
    decode_workers: int | None = None,
    cpu_workers: int = 1,
    on_stage: Callable[[str, float], None] | None = None,
    silent: list[int] | None = None,
) -> tuple[int, float]:
    """Extract and commit one shard of utterances (one unit of work).

    Decoding runs ahead of the model (worker processes, or one thread), store writes run
    behind it (a writer thread), and with a GPU feature the CPU features run alongside in
    threads of their own, so neither stalls the model; bounded queues keep memory flat.
    The unit's utterances become visible together, when the unit commits at the end.

    Args:
        store_path: The store directory or location (already planned).
        items: The shard's utterances with their store rows.
        extractors: Extractors for the features this shard writes.
        journal: Commit journal name; one writer per journal at a time.
        unit: The unit's store space, from ``StoreWriter.plan_units`` for these items.
        batch_seconds: Audio seconds handed to the extractors at once.
        on_utterance: Called with the audio seconds of every utterance written.
        decode_workers: Decode processes (0 = one thread; None = `default_decode_workers`).
        cpu_workers: Instances of each CPU feature's extractor working in parallel.
        on_stage: Profiling callback, called with (stage, busy seconds): "decode",
            "store_write", "cpu_feature:NAME", and the model's own stages.
        silent: If given, the store rows of the committed utterances whose audio is digital
            silence after mixing to mono are appended to it (the caller records them in the store).

    Returns:
        (utterances committed, audio seconds committed).
    """
    writer = StoreWriter(store_path, journal=journal)
    # The model's own batch size, when it has one, decides how much audio to decode ahead.
    batch_seconds = max(
        [float(getattr(e.config, "batch_seconds", 0) or 0) for e in extractors] + [batch_seconds]
    )
    batches = list(_batches(items, int(batch_seconds * 16000)))
    committed = _Committed()
    unit_writer = writer.open_unit(unit)
    gpu = [e for e in extractors if e.name in GPU_FEATURES]
    background = [e for e in extractors if e.name not in GPU_FEATURES] if gpu or cpu_workers > 1 else []
    cpu_features = _CpuFeatures(background, max(1, cpu_workers)) if background else None
    if decode_workers is None:
        decode_workers = default_decode_workers(extractors)
    decoder = _Decoder(batches, decode_workers, configured_rates(extractors))
    stage = on_stage or (lambda name, seconds: None)
    profiled = [e for e in gpu if hasattr(e, "on_stage")]
    for extractor in profiled:
        extractor.on_stage = on_stage  # type: ignore[attr-defined]
    # Bounded: memory stays flat. One writer thread: utterances are packed in order (the
    # codec pipeline encodes a shard's chunks in parallel itself). One job per batch.
    write_queue: queue.Queue = queue.Queue(maxsize=3)
    write_error: list[BaseException] = []
    finished = False

    def write_loop() -> None:
        while True:
            job = write_queue.get()
            if job is None:
                return
            try:
                job()
            except BaseException as error:  # surfaced in the main thread below
                write_error.append(error)

    writer_thread = threading.Thread(target=write_loop, name="w2v2ser-store-writer", daemon=True)
    writer_thread.start()
    try:
        for decoded, decode_seconds in decoder:
            check_stop()  # a SIGTERM/Ctrl-C whose exception was lost inside C code stops here
            stage("decode", decode_seconds)
            if write_error:
                raise write_error[0]
            job = _extract_batch(writer, unit_writer, decoded, extractors, cpu_features, committed, on_utterance, stage)
            write_queue.put(job)
        finished = True
    finally:
        decoder.close()
        write_queue.put(None)
        writer_thread.join()
        if cpu_features is not None:
            cpu_features.close()
        for extractor in profiled:
            extractor.on_stage = None  # type: ignore[attr-defined]
        if finished and not write_error:
            started = time.perf_counter()
            unit_writer.commit()
            stage("store_write", time.perf_counter() - started)
        writer.close()
    if write_error:
        raise write_error[0]
    if silent is not None:
        silent.extend(committed.silent)
    return committed.utterances, committed.seconds


class _Committed:
    """Counts of committed utterances, updated by the writer thread."""

    def __init__(self) -> None:
        self.utterances = 0
        self.seconds = 0.0
        self.silent: list[int] = []  # store rows whose audio is digital silence
        self._lock = threading.Lock()

    def add(self, seconds: float, *, row: int | None = None) -> None:
        """Count one committed utterance; ``row``: its store row, when its audio is digital silence."""
        with self._lock:
            self.utterances += 1
            self.seconds += seconds
            if row is not None:
                self.silent.append(row)


# A failure to record: (store row, feature or None for all, reason).
_Failure = tuple[int, "str | None", str]


def _seconds_above(num_samples: int) -> int:
    """A round number of seconds at least as long as `num_samples` 16 kHz samples (for advice)."""
    return -(-num_samples // (16000 * 60)) * 60


def _features_of(
    extractor: Extractor, good: Sequence[tuple[_ShardItem, DecodedAudio, str]]
) -> tuple[list[np.ndarray | None], list[_Failure]]:
    """One feature of a batch; a failing batch is retried one by one to isolate the bad utterance.

    Returns failures instead of recording them: this may run on a background thread, and
    journal appends happen on the writer thread only.
    """
    failures: list[_Failure] = []
    limit = getattr(extractor.config, "max_seconds", None)
    allowed = [limit is None or audio.num_samples <= limit * 16000 for _, audio, _ in good]
    for (item, audio, _), ok in zip(good, allowed):
        if not ok:
            failures.append((item.index, extractor.name, (
                f"{item.path} is {audio.num_samples / 16000:.1f} s long, over {extractor.name}.max_seconds={limit:g} "
                f"(the whole file goes through the model at once, and its memory grows with the length squared); "
                f"split the file, or raise max_seconds: `w2v2ser extract` with --option {extractor.name}.max_seconds="
                f"{_seconds_above(audio.num_samples)} extracts it into the same store (in pipeline.yaml, a changed "
                f"max_seconds makes a new store folder)"
            )))
    audios = [audio for (_, audio, _), ok in zip(good, allowed) if ok]
    try:
        values = iter(run_extractor(extractor, audios))
    except ModelLoadError:  # not one file's fault: every file failed with it, each recorded on its own
        raise
    except Exception:  # noqa: BLE001 - retry one by one to isolate the bad utterance
        check_stop()  # an interrupt that surfaced as another error (SystemError from C code) is no failure
        singles = []
        for (item, audio, _), ok in zip(good, allowed):
            if not ok:
                continue
            try:
                singles.append(run_extractor(extractor, [audio])[0])
            except Exception as error:  # noqa: BLE001 - recorded per utterance, the shard goes on
                check_stop()
                failures.append((item.index, extractor.name,
                                 f"{extractor.name} failed on {item.path}: {type(error).__name__}: {error}"))
                singles.append(None)
        values = iter(singles)
    return [next(values) if ok else None for ok in allowed], failures


def _extract_batch(
    writer: StoreWriter,
    unit_writer: Any,
    decoded: _Decoded,
    extractors: Sequence[Extractor],
    cpu_features: _CpuFeatures | None,
    committed: _Committed,
    on_utterance: Callable[[float], None] | None,
    stage: Callable[[str, float], None],
) -> Callable[[], None]:
    """Run the batch's model features here, start its CPU features, and return the writer
    thread's job: wait for the CPU features, record failures, add utterances in order."""
    good = [(item, audio, digest) for item, audio, digest, reason in decoded if audio is not None]
    failures: list[_Failure] = [(item.index, None, reason) for item, _, _, reason in decoded if reason]
    results: dict[str, Any] = {}
    for extractor in extractors:
        if cpu_features is not None and extractor.name not in GPU_FEATURES:

            def timed(instance: Extractor, name: str = extractor.name) -> Any:
                started = time.perf_counter()
                try:
                    return _features_of(instance, good)
                finally:
                    stage(f"cpu_feature:{name}", time.perf_counter() - started)

            results[extractor.name] = cpu_features.submit(extractor.name, timed)
        else:
            results[extractor.name] = _features_of(extractor, good)

    def job() -> None:
        features: dict[str, list[np.ndarray | None]] = {}
        for name, result in results.items():
            values, errors = result.result() if isinstance(result, Future) else result
            features[name] = values
            failures.extend(errors)
        started = time.perf_counter()
        for index, feature, reason in failures:
            writer.record_failure(index, feature=feature, reason=reason)
        ready = []  # (row, frames, digest, duration) of the utterances with every feature
        for position, (item, audio, digest) in enumerate(good):
            frames = {name: values[position] for name, values in features.items() if values[position] is not None}
            if len(frames) == len(extractors):
                ready.append((item.index, frames, digest, audio.num_samples / 16000.0))
        silent = {item.index for item, audio, _ in good if audio.silent}
        # The batch at once: its checks, statistics and checksums run in parallel threads. Frames
        # the store refuses (a float16 overflow: inf) fail their utterance, not the work unit.
        indices, frame_sets, digests, durations = zip(*ready) if ready else ((), (), (), ())
        packed = set(unit_writer.add_many(
            indices, frame_sets, audio_sha256=digests, durations=durations,
            silent=[index in silent for index in indices],
            on_bad_frames=lambda index, error: writer.record_failure(index, feature=None, reason=str(error))))
        for index, duration in zip(indices, durations):
            if index in packed:
                committed.add(duration, row=index if index in silent else None)
                if on_utterance is not None:
                    on_utterance(duration)
        stage("store_write", time.perf_counter() - started)

    return job


# --- Dask -----------------------------------------------------------------------------------

_WORKER_EXTRACTORS: dict[str, Extractor] = {}


def _dask_shard(store_path: str | StoreLocation, items: list[_ShardItem], configs: dict[str, dict], journal: str,
                unit: WorkUnit) -> tuple[int, float, list[int]]:
    """A Dask task: build (and cache per worker process) the extractors, run one shard.

    Returns:
        (utterances committed, audio seconds committed, store rows of those that are digital silence).
    """
    import json

    extractors = []
    for name, config in configs.items():
        key = name + json.dumps(config, sort_keys=True)
        if key not in _WORKER_EXTRACTORS:
            _WORKER_EXTRACTORS[key] = build_extractor(name, config)
        extractors.append(_WORKER_EXTRACTORS[key])
    # Dask already runs shards in parallel worker processes (which may not start children).
    silent: list[int] = []
    count, seconds = extract_shard(store_path, items, extractors=extractors, journal=journal, unit=unit,
                                   decode_workers=0, silent=silent)
    return count, seconds, silent


def _run_on_dask(
    client: Any,
    store_path: str | StoreLocation,
    tasks: Sequence[tuple[list[str], list[_ShardItem], WorkUnit]],
    configs: Mapping[str, dict],
    *,
    gpu_resource: str | None,
    progress: bool,
    on_silent: Callable[[list[int]], None] | None = None,
    lost_worker_fix: str = LOST_WORKER_FIX,
) -> tuple[int, float]:
    """Run the shards as Dask tasks; ``on_silent`` gets each finished shard's rows of digital silence."""
    from distributed import as_completed

    futures = []
    for number, (names, items, unit) in enumerate(tasks):
        uses_gpu = gpu_resource is not None and any(name in GPU_FEATURES for name in names)
        futures.append(
            client.submit(
                _dask_shard,
                store_path,
                items,
                {name: configs[name] for name in names},
                f"shard-{'-'.join(names)}-{number:05d}",
                unit,
                resources={gpu_resource: 1} if uses_gpu else None,
                pure=False,
                key=f"w2v2ser-extract-{'-'.join(names)}-{number:05d}-{time.time_ns()}",
            )
        )
    done = [0, 0.0]
    errors: list[tuple[str, str]] = []
    bar = _progress(None, progress, "extract shards", "shard", total=len(futures)) if progress else None
    for future in as_completed(futures):
        check_stop()
        try:
            count, seconds, silent = future.result()
            done[0] += count
            done[1] += seconds
            if silent and on_silent is not None:
                on_silent(silent)
        except Exception as error:  # noqa: BLE001 - keep finished shards; report the rest
            errors.append((str(future.key), task_error(error, fix=lost_worker_fix)))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if errors:
        raise W2v2serError(
            f"{len(errors)} extraction shard(s) failed on Dask workers (finished shards are kept; rerun to retry):\n"
            + "\n".join(failures_by_error(errors)[:10])
        )
    return int(done[0]), float(done[1])
