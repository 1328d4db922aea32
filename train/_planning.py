"""Planning an experiment: its folds and (fold, seed) runs, the warnings about the data they split
(classes never trained, audio shared across partitions, speakers of too few files), one view of its
stores for a whole invocation, and the partitions each run reads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from w2v2ser._common import first_few
from w2v2ser._text import case_variants, subset_text, variants_differ

from ._config import ExperimentConfig, as_experiment_config
from ._dataset import FeatureBatches, Item, Source, foldable
from ._errors import ConfigError, ProtocolError
from ._experiment_data import _Data, _prepare, _store_label, log
from ._fingerprints import _data_fingerprint
from ._normalisation import MIN_SPEAKER_FILES, build_normaliser
from ._protocols import Fold, check_disjoint, get_protocol, select_utterances, speaker_group_folds

__all__ = ["RunSpec", "ExperimentView", "open_view", "plan_runs", "check_run_spec", "partition_arrays",
           "PartitionArrays", "class_names"]

@dataclass(frozen=True)
class RunSpec:
    """One run: a fold of the protocol trained with one seed.

    Attributes:
        fold: Name of the protocol fold.
        seed: The run's seed.
        train: Speakers of the training partition.
        validation: Speakers of the validation partition.
        test: Speakers of the test partition.
    """

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

    Args:
        config: The experiment (an :class:`ExperimentConfig` or its dict).

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
    """One partition in memory: inputs, integer labels (indices into :func:`class_names`), speakers.

    Attributes:
        x: Normalised, cropped ``[frames, ...]`` arrays, one per utterance (a dict branch -> list
            with a fusion branch).
        y: Integer labels, indices into :func:`class_names`.
        groups: The utterances' speakers.
    """

    x: Any
    y: np.ndarray
    groups: np.ndarray


def partition_arrays(config: ExperimentConfig | Mapping[str, Any], run_spec: RunSpec) -> dict[str, PartitionArrays]:
    """The frames of one run's partitions exactly as training sees them, for use outside ``train_run``.

    Args:
        config: The experiment (an :class:`ExperimentConfig` or its dict).
        run_spec: One run of ``plan_runs(config)``.

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

    Args:
        config: The experiment (an :class:`ExperimentConfig` or its dict).
    """
    config = as_experiment_config(config)
    return get_protocol(config.protocol).classes or _prepare(config).classes  # csv: the store's labels
