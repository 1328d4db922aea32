"""Planning, running and summarising stage 2 experiments.

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
import errno
import hashlib
import json
import logging
import os
import resource
import shlex
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from w2v2ser._common import (EXIT_FAILED, FULL_DISK_ERRNOS, STAGE2_PACKAGES, caller_random_kept, case_variants,
                             check_thread_environment, first_few, make_folder, provenance, publish_directory,
                             subset_text, variants_differ, write_atomically)

from ._config import RUNTIME_FIELDS, SEED_FIELDS, ExperimentConfig, as_experiment_config
from ._dataset import (TRAIN_MICRO_BATCH_MB, FeatureBatches, Item, Source, foldable, micro_batch_size,
                       share_memory_budget)
from ._errors import ConfigError, DataError, FolderBusyError, ProtocolError, SelectionError
from ._metrics import accuracy, confusion_matrix, per_class_report, uar
from ._normalisation import MIN_SPEAKER_FILES, build_normaliser, save_normalisers
from ._protocols import (Fold, check_disjoint, get_protocol, select_subset, select_utterances, statistics_utterances,
                         speaker_group_folds)
from ._runfiles import damaged_run_files, list_run_files, record_run_files, writing_run
from ._selection import ResolvedSelection, parse_selection, resolve_selection

__all__ = ["RunSpec", "RunResult", "ExperimentView", "open_view", "reopen_view", "plan_runs", "train_run",
           "summarize_runs", "train_experiment", "partition_arrays", "PartitionArrays",
           "refuse_layer_sweep_folder"]

log = logging.getLogger("w2v2ser.train")
FRAME_RATE_TOLERANCE = 0.05  # fused branches must run at the same frame rate within 5 %


@dataclass(frozen=True)
class RunSpec:
    """One run: a fold of the protocol trained with one seed."""

    fold: str
    seed: int
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def name(self) -> str:
        """Run directory name ``<fold>__seed<k>``."""
        return f"{self.fold}__seed{self.seed}"

    def split(self) -> dict[str, list[str]]:
        """Speakers of each partition."""
        return {"train": list(self.train), "validation": list(self.validation), "test": list(self.test)}


@dataclass
class RunResult:
    """Outcome of one run (also rebuilt from a complete run directory)."""

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


# ---------------------------------------------------------------------------------------- data
@dataclass
class _Data:
    stores: dict[str, Any]
    selections: dict[str, ResolvedSelection]
    records: list[Any]
    labels: list[str]
    classes: tuple[str, ...]
    # The utterances normalisation statistics are composed over: a subset's own (song files do
    # not move a speech-only run's speaker means) whose labels the protocol keeps; None: all of
    # each speaker's, the store's tables.
    statistics_ids: list[str] | None = None
    norm: str = "speaker"  # the normalisation, which decides whether statistics are read at all
    kept_labels: bool = False  # the protocol drops labels, which the statistics leave out (fingerprinted)


def _open_stores(config: ExperimentConfig, opened: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each alias's store reader; ``opened`` (path -> reader) shares one reader per store among views."""
    from w2v2ser.store import open_store

    if opened is None:
        return {alias: open_store(path) for alias, path in config.stores.items()}
    for path in config.stores.values():
        if str(path) not in opened:
            opened[str(path)] = open_store(path)
    return {alias: opened[str(path)] for alias, path in config.stores.items()}


# (store, protocol) pairs whose dropped labels this process has reported: planning reports them
# once, not every run of every experiment on the store (a pipeline plans many in one process).
_REPORTED_DROPS: set[tuple[str, str]] = set()


def _prepare(config: ExperimentConfig, *, report: bool = False, revisions: Mapping[str, Any] | None = None,
             opened: dict[str, Any] | None = None) -> _Data:
    """Open stores, resolve selections, apply the protocol's labels, check fused stores agree.

    ``report``: log the labels the protocol drops, once per store and protocol in this process.
    ``revisions``: the stores' revisions in the view this opening must repeat (:func:`reopen_view`).
    ``opened``: readers already open, by store path, to share (see :func:`open_view`).
    """
    stores = _open_stores(config, opened)
    for alias, revision in (revisions or {}).items():
        stores[alias].require_revision(revision)  # an extraction changed it since the plan was made: stop
    protocol = get_protocol(config.protocol)
    selections = config.selections()
    aliases = {branch: config.store_alias(text) for branch, text in selections.items()}
    sels = {}
    for branch, text in selections.items():
        specs = stores[aliases[branch]].features
        try:
            sels[branch] = resolve_selection(text, specs=specs, alias=aliases[branch],
                                             store=_store_label(config, aliases[branch]))
        except SelectionError as error:
            if branch == "main" or parse_selection(text).feature in specs:
                raise
            # The Fusion head's eGeMAPS branch reads the main store unless told: say how to point it elsewhere.
            raise SelectionError(
                f"{error} The {config.head} head's second branch ({text!r}, fusion_features) reads store "
                f"{aliases[branch]!r}: name a store that holds it, `w2v2ser train --fusion-store STORE` (or "
                f"`fusion_features: STORE/FEATURE` in pipeline.yaml, `stores={{'fusion': PATH}}` in Python)"
            ) from None
    main_alias = sels["main"].alias
    main_features = {s.feature for s in sels.values() if s.alias == main_alias}
    drops = (str(config.stores[main_alias]), protocol.name)
    done = stores[main_alias].list_utterances(status="done")
    for feature in sorted(main_features):
        # An extraction of other features can add utterances without this one: leave them out.
        held = {r.id for r in stores[main_alias].list_utterances(status="done", feature=feature)}
        lacking = [r.id for r in done if r.id not in held]
        if lacking and report and drops not in _REPORTED_DROPS:
            path = str(config.stores[main_alias])
            log.warning("store %s: %d utterance(s) have no %s frames and are left out (%s); they were added by an "
                        "extraction of other features: `w2v2ser extract ... --store %s --features %s` adds them",
                        path, len(lacking), feature, first_few(lacking), shlex.quote(path), feature)
        done = [r for r in done if r.id in held]
    if not done:
        # Else the protocol's "kept no utterance: store labels [] match none of its classes []",
        # which points at --protocol when every file of the manifest failed extraction.
        path = str(config.stores[main_alias])
        failed = len({f.id for f in stores[main_alias].list_failures()})
        why = (f"; {failed} utterance(s) failed extraction: `w2v2ser store info {shlex.quote(path)}` gives the "
               f"reasons. Fix the files or the manifest and rerun the same `w2v2ser extract`" if failed else
               ". Extract them into it first")
        raise DataError(f"store {path} holds no extracted utterance with {', '.join(sorted(main_features))} "
                        f"frames, so there is nothing to train on{why}")
    statistics_ids = None
    # Any status: frames of a row whose other feature failed still count (and so does its label).
    rows = stores[main_alias].list_utterances(status=None)
    if config.subset:
        done = select_subset(done, config.subset, store=str(config.stores[main_alias]))
        rows = select_subset(rows, config.subset, store=str(config.stores[main_alias]))
        statistics_ids = [r.id for r in rows]
    records, labels, classes = select_utterances(protocol, done, report=report and drops not in _REPORTED_DROPS)
    # Labels the protocol drops (IEMOCAP's xxx, fru...) do not move the statistics either: the
    # released code filters the 4 classes before it computes them, as a subset's are its own. The
    # rows predict_store passes (one rule): a subset's, or all.
    kept, _ = statistics_utterances(protocol, rows)  # speakers without a kept label are not trained on
    statistics_ids = kept if kept is not None else statistics_ids
    if report and drops not in _REPORTED_DROPS:
        _report_failed_extractions(stores[main_alias], str(config.stores[main_alias]), main_features)
        _report_mixed_rates(config, stores, sels, {r.id for r in records})
    if report:
        _REPORTED_DROPS.add(drops)
    for branch, sel in sels.items():
        if sel.alias == main_alias:
            continue
        other = {r.id: r for r in stores[sel.alias].list_utterances(status="done", feature=sel.feature)}
        missing = [r.id for r in records if r.id not in other]
        if missing:
            raise DataError(f"store {sel.alias!r} ({config.stores[sel.alias]}) lacks {len(missing)} of the "
                            f"{len(records)} utterances of store {main_alias!r}, e.g. {missing[:3]}; fused stores "
                            f"must be extracted from the same manifest (finish or rerun that extraction)")
        bad = [r.id for r in records if (other[r.id].speaker, other[r.id].label) != (r.speaker, r.label)]
        if bad:
            raise DataError(f"stores {main_alias!r} and {sel.alias!r} disagree on speaker/label of {bad[:3]}; "
                            f"they were extracted from different manifests")
    if "fusion" in sels:
        a, b = sels["main"].frame_rate, sels["fusion"].frame_rate
        if abs(a - b) > FRAME_RATE_TOLERANCE * max(a, b):
            raise SelectionError(f"fused selections run at different frame rates: {sels['main'].text!r} "
                                 f"{a:g} fps, {sels['fusion'].text!r} {b:g} fps (after pair averaging); fuse "
                                 f"features with matching rates (wav2vec2 ~50 fps with egemaps)")
    return _Data(stores, sels, records, labels, classes, statistics_ids, config.norm, len(records) < len(done))


def _store_label(config: ExperimentConfig, alias: str) -> str:
    """How messages name a store: its path, and its alias when the experiment reads several."""
    path = config.stores[alias]
    return f"store {path}" if len(config.stores) == 1 else f"store {alias!r} ({path})"


def _report_failed_extractions(store: Any, path: str, features: set[str]) -> None:
    """Say how many utterances are left out because their extraction failed: the counts a user
    compares with a paper's depend on it, and the reasons are in the store."""
    failed = sorted({f.id for f in store.list_failures() if f.feature is None or f.feature in features})
    if failed:
        log.warning("store %s: %d utterance(s) failed extraction and are left out (%s); `w2v2ser store info %s` "
                    "gives the reasons", path, len(failed), first_few(failed), shlex.quote(path))


def _report_mixed_rates(config: ExperimentConfig, stores: dict[str, Any], sels: dict[str, ResolvedSelection],
                        ids: set[str]) -> None:
    """Warn when a feature computed at each file's own rate (``sample_rate: native``) comes from files
    of several rates: its values move with the rate, which can then stand in for a corpus or speaker."""
    for sel in sels.values():
        store = stores[sel.alias]
        if store.features[sel.feature].config.get("sample_rate") != "native":
            continue
        rates = store.sample_rates(sel.feature, ids=ids)
        rates.pop(None, None)
        if len(rates) > 1:
            log.warning("%s: %s was computed at each file's own sample rate, and the utterances trained on have %d "
                        "rates (%s); its values change with the rate (eGeMAPS' formant columns most), so the rate "
                        "can stand in for a corpus or speaker. For one rate, extract into a new store with "
                        "--option %s.sample_rate=16000 (pipeline.yaml: %s: {sample_rate: 16000})",
                        _store_label(config, sel.alias), sel.feature, len(rates),
                        ", ".join(f"{rate} Hz: {n}" for rate, n in sorted(rates.items())), sel.feature, sel.feature)


def _folds(config: ExperimentConfig, data: _Data) -> list[Fold]:
    if config.speaker_folds is not None:  # cross-validation over speaker groups, whatever the protocol
        folds = speaker_group_folds(data.records, config.speaker_folds)
    else:
        protocol = get_protocol(config.protocol)
        try:
            folds = protocol.make_folds(data.records, config.csv_folds)
        except ProtocolError as error:
            if config.subset and getattr(error, "shortfall", None):
                _blame_the_subset(config, data, protocol, error)
            raise
    for fold in folds:
        check_disjoint(fold)
    return folds


def _blame_the_subset(config: ExperimentConfig, data: _Data, protocol: Any, error: ProtocolError) -> None:
    """Raise a ProtocolError naming the subset when the utterances every store of the experiment holds
    make the protocol's folds and only the subset's do not (the store's message would advise extracting
    the whole corpus). A fused store lacking speakers beyond the subset keeps the store's message: a
    wider subset would not help."""
    main = data.selections["main"].alias
    held = None  # the ids every selection's store holds for its feature
    for sel in data.selections.values():
        ids = {r.id for r in data.stores[sel.alias].list_utterances(status="done", feature=sel.feature)}
        held = ids if held is None else held & ids
    whole = [r for r in data.stores[main].list_utterances(status="done") if r.id in (held or set())]
    whole, _, _ = select_utterances(protocol, whole, report=False)
    try:
        protocol.make_folds(whole, config.csv_folds)
    except ProtocolError:
        return  # the stores themselves fall short: their own message is right
    speakers = sorted({r.speaker for r in data.records})
    raise ProtocolError(f"subset {subset_text(config.subset)} leaves {error.shortfall}: it keeps {len(speakers)} "
                        f"speaker(s) [{first_few([repr(s) for s in speakers], 6)}] of {_store_label(config, main)}. "
                        f"Widen the subset, or cross-validate over its speakers with speaker_folds (pipeline.yaml: "
                        f"`speaker_folds: K`; w2v2ser train: --speaker-folds K)") from None


# (store, protocol, csv_folds) whose untrained classes this process has reported (as _REPORTED_DROPS).
_REPORTED_UNTRAINED: set[tuple[str, str, int]] = set()
# Stores whose speakers of too few files this process has reported under speaker normalisation.
_REPORTED_SMALL_SPEAKERS: set[str] = set()


def _report_data_problems(config: ExperimentConfig, data: _Data, folds: list[Fold]) -> None:
    """Warn, once per store and protocol, about classes a head is asked to output but never sees in
    training (their test utterances can only be misclassified, which lowers UAR for a reason
    outside the model), and about audio shared across partitions (:func:`_report_shared_audio`)."""
    key = (str(config.stores[data.selections["main"].alias]), config.protocol,
           config.speaker_folds or config.csv_folds)
    if key in _REPORTED_UNTRAINED:
        return
    _REPORTED_UNTRAINED.add(key)
    counts = Counter(data.labels)
    for variants in case_variants(counts):
        log.warning("the store's labels %s differ only in %s, so they are %d separate classes; if they mean "
                    "one emotion, fix the spelling in the manifest and rerun the same `w2v2ser extract` (labels "
                    "are updated in place, nothing is extracted again)", " and ".join(map(repr, variants)),
                    variants_differ([variants]), len(variants))
    corpora: dict[str, set[str]] = {}
    for record in data.records:
        # By name: a CSV manifest's own `corpus` column tells two CSV corpora apart.
        name = getattr(record, "corpus_name", None) or getattr(record, "corpus", "")
        corpora.setdefault(record.speaker, set()).add(str(name or ""))
    mixed = sorted(speaker for speaker, names in corpora.items() if len(names - {""}) > 1)
    if mixed:
        log.warning("speaker name(s) %s have utterances of several corpora (%r: %s); each name is one speaker, "
                    "for speaker normalisation and folds alike. If they are different people, give them names of "
                    "their own in the manifest and rerun the same `w2v2ser extract` (speakers are updated in "
                    "place, nothing is extracted again)", first_few([repr(s) for s in mixed]), mixed[0],
                    ", ".join(sorted(corpora[mixed[0]] - {""})))
    absent = [c for c in data.classes if not counts[c]]
    if absent:
        log.warning("protocol %s: no utterance of the store is labelled %s; the heads still have an output "
                    "for each class of the protocol, and UAR averages over the classes present in each test "
                    "partition", config.protocol, " or ".join(map(repr, absent)))
    for fold in folds:
        train = set(fold.train)
        trained = {label for record, label in zip(data.records, data.labels) if record.speaker in train}
        missing = [c for c in data.classes if counts[c] and c not in trained]
        if missing:
            log.warning("fold %s: no training speaker has an utterance labelled %s, so the heads never learn "
                        "that class and its test utterances can only be misclassified (give the training "
                        "partition some of its speakers)", fold.name, " or ".join(map(repr, missing)))
    _report_shared_audio(data, folds)


def _report_small_speakers(config: ExperimentConfig, data: _Data) -> None:
    """Warn when speaker normalisation meets speakers of too few utterances beside larger ones: each
    is normalised by its own few files' statistics, which remove most of what the heads learn from
    the others. (When every speaker is that small, it is per-utterance normalisation, applied alike
    in training and test: RAVDESS with one name per file, 42.2 ± 1.0 % UAR against 43.5 ± 0.8 global.)"""
    key = str(config.stores[data.selections["main"].alias])
    if config.norm != "speaker" or key in _REPORTED_SMALL_SPEAKERS:
        return
    _REPORTED_SMALL_SPEAKERS.add(key)
    sizes = Counter(record.speaker for record in data.records)
    small = sorted(speaker for speaker, n in sizes.items() if n < MIN_SPEAKER_FILES)
    if small and len(small) < len(sizes):
        log.warning("speaker normalisation: %d of %d speakers have fewer than %d utterances (%s), the others "
                    "more; each of these is normalised with its own few files' statistics, which remove most of "
                    "what the heads learn from the others (RAVDESS with one speaker name per test file: 21.7 %% "
                    "UAR against 50.0 %%). Give the utterances their true speakers in the manifest, or train with "
                    "--norm global", len(small), len(sizes), MIN_SPEAKER_FILES, first_few(small))


def _report_shared_audio(data: _Data, folds: list[Fold]) -> None:
    """Warn when validation or test utterances have the same audio (sha256) as training ones:
    disjoint speakers do not help when a file was copied under two speakers' names; and when one
    recording carries two labels (the heads are then fitted to two classes for the same input)."""
    labels: dict[str, set[str]] = {}
    ids: dict[str, list[str]] = {}
    for record, label in zip(data.records, data.labels):
        if record.audio_sha256:
            labels.setdefault(record.audio_sha256, set()).add(label)
            ids.setdefault(record.audio_sha256, []).append(record.id)
    conflicting = [" = ".join(ids[sha]) for sha, found in labels.items() if len(found) > 1]
    if conflicting:
        log.warning("%d recording(s) are in the store more than once with different labels (same audio sha256: "
                    "%s); fix the labels in the manifest or remove the copies, and extract again (a resumed "
                    "extraction takes the corrected labels in place)", len(conflicting), first_few(conflicting))
    for fold in folds:
        train = set(fold.train)
        seen = {r.audio_sha256 for r in data.records if r.speaker in train and r.audio_sha256}
        for part, speakers in (("validation", set(fold.validation)), ("test", set(fold.test))):
            shared = [r.id for r in data.records if r.speaker in speakers and r.audio_sha256 in seen]
            if shared:
                log.warning("fold %s: %d %s utterance(s) have the same audio (sha256) as a training utterance "
                            "(%s), so the %s scores are not speaker-independent; remove the copies from the "
                            "manifest, or give each copy its true speaker", fold.name, len(shared), part,
                            first_few(shared), part)


def check_run_spec(run_spec: Any) -> None:
    """A run is an element of ``plan_runs(config)``; a fold name or run name is not enough."""
    if not isinstance(run_spec, RunSpec):
        raise ConfigError(f"run_spec: got {run_spec!r}; expected a RunSpec, one element of plan_runs(config), "
                          f"e.g. plan_runs(config)[0]")


def plan_runs(config: ExperimentConfig | Mapping[str, Any]) -> list[RunSpec]:
    """List every (fold, seed) run of the experiment, fold-major.

    Raises:
        ProtocolError: Overlapping or empty partitions. SelectionError / DataError: store problems.
    """
    config = as_experiment_config(config)
    return _plan(config, _prepare(config, report=True))


def _plan(config: ExperimentConfig, data: _Data) -> list[RunSpec]:
    """plan_runs over already prepared data (train_experiment's one view of the stores)."""
    seeds = range(config.first_seed, config.first_seed + config.seeds)
    folds = _folds(config, data)  # first: a wrong protocol's own message names the fix
    present = sorted(set(data.labels))
    if len(present) < 2:
        # One class leaves nothing to recognise: every prediction is right and UAR would read 100.
        raise ProtocolError(f"protocol {config.protocol!r}: all {len(data.labels)} utterances of the store are "
                            f"labelled {present[0]!r}; emotion recognition needs at least two classes, so extract "
                            f"a corpus (or CSV manifest) with utterances of at least two labels")
    _report_data_problems(config, data, folds)
    _report_small_speakers(config, data)
    return [RunSpec(f.name, s, f.train, f.validation, f.test) for f in folds for s in seeds]


@dataclass
class ExperimentView:
    """One view of an experiment's stores for a whole invocation of `train`, `sweep` or each
    experiment of `w2v2ser run`: the plan, every run and the summary read the same utterances. An
    extraction that changes a store meanwhile makes its readers raise StoreChangedError (see
    keep_finished_runs) instead of mixing old and new utterances."""

    config: ExperimentConfig  # a sweep's weighted-average head (``heads[ALL_LAYERS_DIR]``)
    data: _Data
    specs: list[RunSpec]
    fingerprint: str  # :func:`_data_fingerprint` of ``data``
    heads: dict[str, ExperimentConfig] | None = None  # a sweep's heads (sweep_configs), else None

    def revisions(self) -> dict[str, int]:
        """Each store's revision in this view: another process opens the same view with them (reopen_view)."""
        return {alias: store.revision for alias, store in self.data.stores.items()}


def open_view(config: ExperimentConfig, *, heads: dict[str, ExperimentConfig] | None = None,
              opened: dict[str, Any] | None = None) -> ExperimentView:
    """Open the stores once, plan the runs and hash their data (``heads``: a sweep's, ``config`` its
    weighted-average head). Checks selections and protocol before any output folder is made.

    ``opened``: store path -> reader, filled and reused so that the views of many experiments share one
    reader per store (`w2v2ser run`'s grid). A shared reader still raises StoreChangedError once an
    extraction changes its store, so a change stops the experiments on that store only.
    """
    prepared = _prepare(config, report=True, opened=opened)
    specs = _plan(config, prepared)
    return ExperimentView(config, prepared, specs, _data_fingerprint(prepared), heads)


def reopen_view(config: ExperimentConfig, revisions: Mapping[str, int]) -> _Data:
    """The stores of a view, opened again in another process (a Dask task of `w2v2ser run`).

    Raises:
        StoreChangedError: An extraction changed a store since the view was opened (its revision
            differs), so this process would read other utterances than the plan and the summary.
    """
    return _prepare(config, revisions=revisions)


def _store_fingerprints(config: ExperimentConfig, data: _Data) -> tuple[str, str]:
    """Hash of the features the runs read (names and extractor settings, per store alias), and the
    one recorded up to 0.2, which also hashed the stores' paths (see ``config_keys``)."""
    found = []
    for with_path in (False, True):
        ident = {a: {**({"path": config.stores[a]} if with_path else {}),
                     "features": {s.feature: data.stores[a].features[s.feature].to_dict()
                                  for s in data.selections.values() if s.alias == a}}
                 for a in sorted({s.alias for s in data.selections.values()})}
        found.append(hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16])
    return found[0], found[1]


def key_fields(config: ExperimentConfig) -> dict[str, str]:
    """The configuration's keys as experiment.json records them (the current and the 0.2 one)."""
    key, legacy = config.config_keys()
    return {"config_key": key, "legacy_config_key": legacy}


def _data_fingerprint(data: _Data) -> str:
    """Hash of what the runs train and test on, ``UTTERANCES.FRAMES.STATISTICS``: UTTERANCES hashes
    the utterances an experiment splits (ids, speakers, labels, sessions, splits, audio sha256, in
    any order: a manifest that grew, a fixed audio file); FRAMES hashes their order in the store and
    the checksums recorded with each one's frames of every feature read (a store re-extracted from
    a reordered manifest, or with other torch threads or batches, whose speech-encoder frames differ
    in the last bits); STATISTICS hashes the other utterances whose frames the normalisation
    statistics are composed over (:func:`_statistics_part`). Any change retrains; runs recorded
    before a part was hashed count as current when the parts they have match (:func:`_same_data`)."""
    rows = sorted((r.id, r.speaker, label, r.session, r.split, r.audio_sha256)
                  for r, label in zip(data.records, data.labels))
    utterances = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    ids = [r.id for r in data.records]
    frames = hashlib.sha256(json.dumps(ids).encode())
    for alias, feature in sorted({(s.alias, s.feature) for s in data.selections.values()}):
        store = data.stores[alias]
        frames.update(f"\n{alias}/{feature}/{store.row_checksum}\n".encode())
        frames.update(store.frame_checksums(feature, ids).astype("<u4").tobytes())
    return f"{utterances}.{frames.hexdigest()[:16]}.{_statistics_part(data)}"


def _statistics_part(data: _Data) -> str:
    """Hash of the utterances outside the split ones whose frames the normalisation statistics
    compose (speaker or global: every utterance of the speakers trained and tested on that holds
    the feature, or a subset's own, of the labels the protocol keeps): their ids, speakers and
    frame checksums (none when the statistics compose the split utterances only). A store that re-extracted
    one of them with other frames changes what training sees, though not the split utterances."""
    if data.norm == "none":  # no statistics are read
        return hashlib.sha256(b"none").hexdigest()[:16]
    # Statistics left out the labels the protocol drops only since 2026-12-07: tagged, runs recorded
    # before (whose statistics composed every label) are not current (:func:`_same_data`).
    tag = _KEPT_LABELS_TAG if data.kept_labels else ""
    digest = hashlib.sha256()
    split = {r.id for r in data.records}
    speakers = {r.speaker for r in data.records}
    subset = None if data.statistics_ids is None else set(data.statistics_ids)
    for alias, feature in sorted({(s.alias, s.feature) for s in data.selections.values()}):
        store = data.stores[alias]
        # Any status: a row whose other feature failed still adds this feature's frames to the statistics.
        others = [r for r in store.list_utterances(status=None, feature=feature)
                  if r.id not in split and r.speaker in speakers and (subset is None or r.id in subset)]
        digest.update(json.dumps([alias, feature, [(r.id, r.speaker) for r in others]]).encode())
        if others:
            digest.update(store.frame_checksums(feature, [r.id for r in others]).astype("<u4").tobytes())
    return tag + digest.hexdigest()[:16]


_KEPT_LABELS_TAG = "kept-"  # a statistics part composed over the labels the protocol keeps


def _same_data(recorded: Any, data: str) -> bool:
    """Whether a run's recorded data fingerprint is ``data``; one recorded before a part was hashed
    (``UTTERANCES``, or ``UTTERANCES.FRAMES`` before the statistics' utterances) is when the parts it
    has match: it was never checked for the others. Not when the statistics now leave out labels
    the protocol drops (:func:`_statistics_rule_changed`): that run's composed every label."""
    if recorded == data:
        return True
    if not isinstance(recorded, str) or _statistics_rule_changed(recorded, data):
        return False
    parts, now = recorded.split("."), data.split(".")
    return len(parts) < len(now) and now[:len(parts)] == parts


def _statistics_rule_changed(recorded: Any, data: str) -> bool:
    """Whether a run recorded with fingerprint ``recorded`` read the same utterances and frames as
    ``data`` but composed its statistics over every label, where ``data``'s leave out the labels
    the protocol drops (IEMOCAP's xxx, fru...): a run trained before they were left out."""
    if not isinstance(recorded, str):
        return False
    parts, now = recorded.split("."), data.split(".")
    return (len(now) >= 3 and now[2].startswith(_KEPT_LABELS_TAG) and parts[:2] == now[:2]
            and (len(parts) < 3 or not parts[2].startswith(_KEPT_LABELS_TAG)))


def data_fingerprint(config: ExperimentConfig | Mapping[str, Any]) -> str:
    """The data fingerprint that ``train_run`` records in each run's ``metrics.json``."""
    config = as_experiment_config(config)
    return _data_fingerprint(_prepare(config))


def store_identities(config: ExperimentConfig, stores: Mapping[str, Any]) -> dict[str, Any]:
    """experiment.json's record of each store: its path and features (their extractor configs) and,
    per feature computed at each file's own rate (``native``), the rates of its audio. With them a
    run directory alone is enough for ``predict`` to extract new audio as training did."""
    def rates(store: Any, name: str) -> list[int] | None:
        found = set(store.sample_rates(name))
        return None if None in found else sorted(found)  # None: a store older than the record

    return {a: {"path": config.stores[a], "features": {n: s.to_dict() for n, s in st.features.items()},
                "audio_rates": {n: found for n, s in st.features.items()
                                if s.config.get("sample_rate") == "native" and (found := rates(st, n)) is not None}}
            for a, st in stores.items()}


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


def warn_if_replacing(out: Path, config: ExperimentConfig, *, shown: Path | None = None) -> None:
    """Say so when ``out`` holds runs of another configuration: the new runs replace them
    (``shown``: the folder to name, e.g. a sweep's, whose ``all`` head ``out`` is)."""
    try:
        old = json.loads((out / "experiment.json").read_text())
    except (OSError, ValueError):
        return
    key = config.config_key()
    if old.get("config_key") in (None, *config.config_keys()):
        return
    changed = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in config.to_dict().items()
               if k not in RUNTIME_FIELDS + SEED_FIELDS + ("stores",) and old.get(k) != v]  # paths: not in the key
    log.warning("%s holds runs of another configuration (%s); each run trained now replaces the old run of "
                "the same fold and seed, and the other old runs no longer count (results, evaluate, predict). "
                "Give another output folder to keep them.", shown or out,
                "; ".join(changed) or f"config key {old['config_key']} -> {key}")


def _warn_if_data_changed(out: Path, config: ExperimentConfig, data: str, prepared: _Data | None = None) -> None:
    """Say so when runs of this configuration in ``out`` were trained on other utterances than the
    stores now hold (``data``, their fingerprint; a manifest that grew, fixed audio): those runs are
    trained again. ``prepared``: the data, whose labels the protocol drops a warning names."""
    keys = config.config_keys()
    stale, rule = [], []
    for path in list_run_files(out / "runs"):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(metrics, dict) and metrics.get("config_key") in keys and not run_is_current(metrics, keys, data):
            (rule if _statistics_rule_changed(metrics.get("data_fingerprint"), data) else stale).append(path.parent.name)
    if rule:
        protocol = get_protocol(config.protocol)
        dropped = [] if prepared is None else sorted(
            {repr(str(r.label)) for r in prepared.stores[prepared.selections["main"].alias].list_utterances(status=None)
             if protocol.map_label(r.label) is None})
        log.warning("%d run(s) in %s composed their normalisation statistics over every utterance of their speakers, "
                    "also those of the labels protocol %s drops%s, as w2v2ser did before; they now leave those out, "
                    "as the protocol's released code does: %s; they are trained again", len(rule), out,
                    config.protocol, f" ({first_few(dropped, 5)})" if dropped else "", first_few(rule))
    if stale:
        log.warning("%d run(s) in %s were trained on other utterances or frames than the store now holds (it "
                    "has changed since: a manifest that grew or was reordered, a re-extraction whose frames "
                    "differ): %s; they are trained again", len(stale), out, first_few(stale))


def _complete(run_dir: Path, keys: Sequence[str], fingerprints: Sequence[str], data: str,
              split: Mapping[str, list[str]] | None = None) -> dict[str, Any] | None:
    """The run's metrics when it is complete for this configuration (any of ``keys``), store (any of
    ``fingerprints``), data and (when given) ``split`` of speakers, else None."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if not run_is_current(metrics, keys, data) or metrics.get("store_fingerprint") not in fingerprints:
        return None
    if split is not None and isinstance(metrics.get("split"), Mapping) and metrics["split"] != dict(split):
        # The fold's speakers changed (speaker folds now keep a shared session together): a run of
        # the old fold would be pooled with runs of the new ones.
        log.info("run %s was trained on another split of the speakers; training it again", run_dir)
        return None
    damaged = damaged_run_files(run_dir, metrics)
    if damaged:
        log.warning("run %s is damaged (%s); training it again", run_dir, "; ".join(damaged))
        return None
    return metrics


def run_is_current(metrics: Any, keys: str | Sequence[str], data: str) -> bool:
    """Whether a run's ``metrics.json`` is of this configuration (one of its ``config_keys()``) and
    these utterances, in this order, with these frames (``data``, :func:`_data_fingerprint`). Runs
    written before the data fingerprint was recorded count as current for any data."""
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    return (isinstance(metrics, dict) and metrics.get("config_key") in keys
            and _same_data(metrics.get("data_fingerprint", data), data))


def _drop_stale_results(out: Path, runs: Sequence[str], keys: Sequence[str], data: str) -> None:
    """Remove ``out/results.json`` when a planned run is still to train: interrupted, the folder
    must read as unfinished (a stale results.json of fewer seeds was reported as complete, while
    predict averaged the seeds finished since)."""
    for name in runs:
        try:
            metrics = json.loads((out / "runs" / name / "metrics.json").read_text())
        except (OSError, ValueError):
            metrics = None
        if not run_is_current(metrics, keys, data):
            (out / "results.json").unlink(missing_ok=True)
            return


def _result(metrics: dict[str, Any], run_dir: Path, skipped: bool) -> RunResult:
    return RunResult(metrics["fold"], metrics["seed"], metrics["uar"], metrics["accuracy"], metrics["n_test"],
                     metrics["epochs"], metrics.get("best_val_loss"), str(run_dir), skipped, metrics)


def _partitions(config: ExperimentConfig, data: _Data, run_spec: RunSpec
                ) -> tuple[int, dict[str, list[Item]], list[Source], dict[str, Any]]:
    """Crop length, the items of each partition, the input sources and their normalisers of one run."""
    protocol = get_protocol(config.protocol)
    max_frames = config.max_frames or protocol.max_frames
    cls_index = {c: i for i, c in enumerate(data.classes)}
    parts: dict[str, list[Item]] = {"train": [], "validation": [], "test": []}
    speaker_part = {s: p for p, ss in run_spec.split().items() for s in ss}
    for r, lab in zip(data.records, data.labels):
        part = speaker_part.get(r.speaker)
        if part is not None:
            parts[part].append(Item(r.id, r.speaker, cls_index[lab], float(r.duration)))
    used_speakers = sorted(speaker_part)
    sources, normalisers = [], {}
    for branch, sel in data.selections.items():
        normalisers[branch] = build_normaliser(data.stores[sel.alias], sel, config.norm, train_speakers=run_spec.train,
                                               speakers=used_speakers, utterances=data.statistics_ids)
        source = Source(branch, data.stores[sel.alias], sel, normalisers[branch])
        source.fold = foldable(sel, source.dtype, normalisers[branch])  # when streamed: normalised in the model
        sources.append(source)
    return max_frames, parts, sources, normalisers


class PartitionArrays(NamedTuple):
    """One partition in memory: inputs, integer labels (indices into :func:`class_names`), speakers."""

    x: Any
    y: np.ndarray
    groups: np.ndarray


def partition_arrays(config: ExperimentConfig | Mapping[str, Any], run_spec: RunSpec) -> dict[str, PartitionArrays]:
    """The frames of one run's partitions exactly as training sees them, for use outside ``train_run``.

    Returns:
        Partition ("train", "validation", "test") -> (x, y, groups). ``x`` is a list of normalised,
        cropped [frames, ...] arrays in the fed dtype (a dict branch -> list with a fusion branch),
        in the store's utterance order; ``y[i]`` is the class ``class_names(config)[y[i]]``;
        ``groups`` are the speakers (for ``GroupKFold``). They go
        straight into a head's ``fit``/``predict`` and scikit-learn's model selection.
    """
    config = as_experiment_config(config)
    check_run_spec(run_spec)
    data = _prepare(config)
    max_frames, parts, sources, _ = _partitions(config, data, run_spec)
    out: dict[str, PartitionArrays] = {}
    for name, items in parts.items():
        batches = FeatureBatches(items, sources, classes=data.classes, batch_size=1, max_frames=max_frames)
        batches.in_memory = True  # one batched read, whatever the budget: the caller asked for arrays
        inputs, _, lengths = batches.arrays()
        x: Any = {s.branch: [inputs[s.branch][k, :n] for k, n in enumerate(lengths)] for s in sources}
        out[name] = PartitionArrays(x["main"] if len(sources) == 1 else x, batches.labels,
                                    np.array([it.speaker for it in items]))
    return out


def class_names(config: ExperimentConfig | Mapping[str, Any]) -> tuple[str, ...]:
    """The class names that the integer labels of :func:`partition_arrays` index, in that order.

    The protocol's classes, or for ``csv`` (whose protocol lists none) the sorted distinct labels of
    the store's utterances the run reads, as ``results.json`` records them in ``classes``.
    """
    config = as_experiment_config(config)
    return get_protocol(config.protocol).classes or _prepare(config).classes  # csv: the store's labels


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


@caller_random_kept()  # _start_run seeds the caller's np.random and random: given back after the run
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
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "speaker", "label", "predicted", *(f"p_{c}" for c in classes), "fold", "seed"])
        for it, p, row in zip(items, y_pred, proba):
            w.writerow([it.id, it.speaker, classes[it.label], classes[p], *(f"{v:.6g}" for v in row),
                        run_spec.fold, run_spec.seed])


def _read_predictions(path: Path) -> tuple[list[str], list[str]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["label"] for r in rows], [r["predicted"] for r in rows]


def summarize_runs(config: ExperimentConfig | Mapping[str, Any], out: Path | str, *,
                   data: str | None = None) -> dict[str, Any]:
    """Aggregate the complete runs of ``plan_runs(config)`` into ``out/results.json``.

    ``data``: the utterances' fingerprint (``data_fingerprint(config)``), when the caller has it.

    Raises:
        DataError: No planned run is complete for this config key and these utterances.
    """
    config = as_experiment_config(config)
    if data is None:
        prepared = _prepare(config)
        return _summarize_runs(config, Path(out), _data_fingerprint(prepared), _plan(config, prepared))
    return _summarize_runs(config, Path(out), data, plan_runs(config))


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


def refuse_layer_sweep_folder(out: Path, another: str) -> None:
    """Refuse a plain experiment's runs into a layer sweep's folder (one that holds sweep.json).

    The report of such a folder shows the sweep only, so these runs would be in no table.

    Args:
        out: The experiment's output folder.
        another: How the caller gives another folder, e.g. ``"this experiment another name"``.

    Raises:
        ConfigError: ``out`` holds sweep.json.
    """
    if (out / "sweep.json").is_file():
        raise ConfigError(f"{out} is a layer-sweep folder (it holds sweep.json of an earlier sweep): a plain "
                          f"experiment's runs there would be in no report table. Give {another}, or move that "
                          f"folder away to keep the sweep (rerun it as a sweep: `w2v2ser sweep`, `sweep: true`)")


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


def forget_not_trained(out: Path) -> None:
    """Remove a pipeline's skipped.json / failed.json from a folder that trains now: a stale one must
    not outweigh the results written next (the report prefers a newer failed.json, by mtime)."""
    for marker in ("skipped.json", "failed.json"):
        (out / marker).unlink(missing_ok=True)


@contextlib.contextmanager
def share_out_folder(out: Path, key: str, what: str) -> Iterator[None]:
    """Let jobs of one configuration write into ``out`` at once (an array job's seeds) and refuse a
    job of another: their runs of the same fold and seed replace each other one by one, and each
    results.json would be over the other's runs. Each job holds a shared ``flock`` on
    ``out/.lock-<config key>`` while it runs; ``out/.lock`` serialises the look at the others.
    Where flock is unavailable (some network file systems), nothing is checked."""
    import fcntl
    import socket

    try:
        make_folder(out)
    except OSError as exc:  # a file where the folder is, or no permission: the command line's message
        from w2v2ser._common import EXIT_INPUT, describe_path_error

        described = describe_path_error(exc)
        if described is None or described[1] != EXIT_INPUT:
            raise
        raise ConfigError(described[0]) from None
    guard = _open_lock(out / ".lock")
    if guard < 0:  # a folder this user cannot write: the first run's write says so
        yield
        return
    held = None
    try:
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)  # held only while looking at the other jobs' locks
        except OSError:  # unavailable, or a read-only descriptor on NFS (EBADF): the look still runs
            pass
        try:
            for other in sorted(out.glob(".lock-*")):
                if other.name != f".lock-{key}":
                    _refuse_if_held(other, out, what)
            opened = _open_lock(out / f".lock-{key}")
            if opened >= 0:  # (none: nothing to hold, as where flock is unavailable)
                held = opened
                with contextlib.suppress(OSError):  # (unavailable: nothing held, nothing checked)
                    fcntl.flock(held, fcntl.LOCK_SH)  # others of this key hold it shared too; nobody exclusively
                with contextlib.suppress(OSError):  # the flock is the lock, the text only informs
                    os.ftruncate(held, 0)
                    os.pwrite(held, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        finally:
            with contextlib.suppress(OSError):  # (not held where flock failed above)
                fcntl.flock(guard, fcntl.LOCK_UN)
            os.close(guard)  # only the key's lock stays open: a grid of experiments holds one descriptor each
            guard = -1
        yield
    finally:
        if held is not None:
            os.close(held)
        if guard >= 0:
            os.close(guard)


def _open_lock(path: Path, *, create: bool = True) -> int:
    """A descriptor of the lock file ``path`` (made 0o666 less the umask), or -1 if it cannot be opened.

    Read-write where this user may write it: NFS refuses an exclusive flock on a read-only descriptor
    (EBADF). Another user's lock in a shared folder may not be writable (made 0o644 by an older
    w2v2ser, or under umask 022): it is opened read-only then, which a local flock allows.

    Raises:
        PermissionError: ``path`` exists and cannot even be read (``create`` False only).
    """
    denied = (errno.EACCES, errno.EPERM, errno.EROFS)
    try:
        return os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o666)
    except OSError as exc:
        if exc.errno not in denied:
            return -1  # missing (create False), a folder in the way...: no lock to look at
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in denied and not create:
            raise
        return -1


def _refuse_if_held(lock: Path, out: Path, what: str) -> None:
    """Raise ConfigError if a running job holds ``lock`` (another configuration's), or if this user
    cannot tell (a lock it can neither read nor lock); remove it if no job holds it."""
    import fcntl

    key = lock.name.removeprefix(".lock-")
    quoted = shlex.quote(str(lock))  # under --out, which may hold a space (or braces: so no str.format)

    def unknowable(cannot: str) -> str:
        return (f"{out} holds the lock {lock} of a job of another configuration (config key {key}), which this "
                f"user cannot {cannot}, so whether that job still runs cannot be told; the two would replace each "
                f"other's runs. Ask the lock's owner to let the group write it (`chmod g+rw {quoted}`), or "
                f"remove it (`rm {quoted}`) when no job of that configuration runs.")

    try:
        fd = _open_lock(lock, create=False)
    except OSError:  # another user's lock this user cannot read: a job may be writing (review M1)
        raise FolderBusyError(unknowable("read")) from None
    if fd < 0:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno == errno.EBADF:  # NFS: no exclusive flock on a read-only descriptor (review H1)
                raise FolderBusyError(unknowable("lock")) from None
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return  # flock unavailable: nothing is checked (the docstring of share_out_folder)
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown pid"
            # `w2v2ser run` has no --out: an experiment's folder is named after it, under output:
            elsewhere = ("this experiment another name (or the pipeline another output)" if what == "run" else
                         f"this `w2v2ser {what}` another --out")
            raise FolderBusyError(
                f"{out} is being written by another job of another configuration ({holder}, config key "
                f"{key}, lock {lock}); the two would replace each other's runs. "
                f"Give {elsewhere}, or rerun it when that job has finished.") from None
        with contextlib.suppress(OSError):  # another user's, in a folder without write access: left as it is
            lock.unlink(missing_ok=True)  # its job has ended (under out/.lock: nobody is opening it now)
    finally:
        os.close(fd)


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
    except OSError as error:
        # keras's model.save and zipfile raise a full disk without a file name: name the run
        # folder the runs are written to, the disk to free (the store is only read).
        if error.errno in FULL_DISK_ERRNOS and not error.filename:
            error.filename = str(out)
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
