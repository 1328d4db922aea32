"""Predict the files of a labelled manifest and score the predictions: a run on another corpus.

Cross-corpus evaluation (train on RAVDESS, test on a corpus of your own) needs the run's
models, the run's feature settings and normalisation, and the labels of the new files mapped
the way the run's protocol maps them (RAVDESS: calm -> neutral). ``predict_manifest`` does
that through :func:`predict_audio`, with the manifest's speakers as speaker groups.
``predict_store`` does it for a corpus already extracted into a store with the run's feature
settings (``extract ... --like RUN_DIR``): no extraction, the store's frames are read as they are.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from w2v2ser._common import first_few

from ._errors import PredictError
from ._ensemble import ensemble_probabilities, frameless
from ._predict import Prediction, normalisation_used, predict_audio, speaker_groups
from ._runplan import (_comparable_configs, _crop_seconds, _differs, _plan, _read_json, _RunPlan, _setting_differences,
                       _training_rates, log, resolve_feature)

__all__ = ["PredictionScore", "predict_manifest", "predict_store", "score_predictions"]


@dataclass(frozen=True)
class PredictionScore:
    """How predictions of labelled files compare with their labels.

    Attributes:
        uar: Unweighted average recall in percent over the classes present among the scored
            files' labels (as training scores a test set); None when no file was scored.
        accuracy: Percent of scored files predicted right; None when none was scored.
        scored: Files whose label is one of the run's classes and that were predicted.
        classes: The run's classes (rows and columns of ``confusion``).
        present: The classes among the scored files' labels.
        confusion: Counts, rows = label, columns = prediction, in ``classes`` order.
        unscored_labels: Label -> number of files whose label the run's protocol does not map
            to one of its classes (not scored).
        failed: Labelled files that could not be predicted (their errors are in the predictions).
        seen_splits: Scored files per manifest ``split`` of ``train`` or ``validation`` (files
            the run may have trained on score higher than unseen ones).
        seen_speakers: Scored utterances of speakers the run trained or validated on (a store
            of the training corpus): they score higher than unseen speakers.
        other_rates: Feature -> number of scored utterances whose audio had another sample rate
            than all of the run's training audio, for a feature taken at each file's own rate
            (eGeMAPS): its values change with the rate (``predict`` resamples; a store cannot).
        training_rates: Feature -> the one rate of the run's training audio, for those features.
    """

    uar: float | None
    accuracy: float | None
    scored: int
    classes: tuple[str, ...]
    present: tuple[str, ...]
    confusion: list[list[int]]
    unscored_labels: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    seen_splits: dict[str, int] = field(default_factory=dict)
    seen_speakers: int = 0
    other_rates: dict[str, int] = field(default_factory=dict)
    training_rates: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``score`` of ``w2v2ser predict --manifest --json``)."""
        return {"uar": self.uar, "accuracy": self.accuracy, "scored": self.scored, "classes": list(self.classes),
                "present": list(self.present), "confusion": self.confusion,
                "unscored_labels": dict(self.unscored_labels), "failed": self.failed,
                "seen_splits": dict(self.seen_splits), "seen_speakers": self.seen_speakers,
                "other_rates": dict(self.other_rates), "training_rates": dict(self.training_rates),
                "uar_definition": "mean recall over the classes present among the scored files' labels, percent"}


def score_predictions(predictions: Sequence[Prediction], labels: Sequence[str], *, classes: Sequence[str],
                      protocol: str, splits: Sequence[str] | None = None) -> PredictionScore:
    """Compare predictions with raw labels, mapped to classes by the run's protocol.

    Args:
        predictions: From :func:`predict_audio`, one per label.
        labels: The files' labels as the manifest writes them.
        classes: The run's classes, in its output order.
        protocol: The run's protocol name (``ravdess``, ``iemocap`` or ``csv``).
        splits: The files' manifest splits (``train``/``validation``/``test``/""), to count
            scored files the run may have trained on.
    """
    from w2v2ser.train import accuracy, confusion_matrix, get_protocol, uar

    if len(predictions) != len(labels):
        raise PredictError(f"score_predictions got {len(predictions)} predictions for {len(labels)} labels; "
                           "expected one label per prediction, in the same order.")
    mapping = get_protocol(protocol)
    index = {c: i for i, c in enumerate(classes)}
    truth, guess, unscored, failed, seen = [], [], Counter(), 0, Counter()
    for prediction, raw, split in zip(predictions, labels, splits or [""] * len(labels)):
        cls = mapping.map_label(raw)
        if cls not in index:
            unscored[raw] += 1
        elif not prediction.ok:
            failed += 1
        else:
            truth.append(index[cls])
            guess.append(index[prediction.emotion])
            if split in ("train", "validation"):
                seen[split] += 1
    confusion = confusion_matrix(truth, guess, len(classes)).tolist() if truth else []
    found = set(truth)
    return PredictionScore(
        uar=100.0 * uar(truth, guess) if truth else None, accuracy=100.0 * accuracy(truth, guess) if truth else None,
        scored=len(truth), classes=tuple(classes), present=tuple(c for c in classes if index[c] in found),
        confusion=confusion, unscored_labels=dict(sorted(unscored.items())), failed=failed,
        seen_splits=dict(sorted(seen.items())))


def _labelled(predictions: Sequence[Prediction], labels: Sequence[str], *, classes: Sequence[str],
              protocol: str) -> list[Prediction]:
    """The predictions with ``label`` set: the run's class each raw label maps to, where it is scored
    (None: not one of them, or the file failed, so a non-null label marks exactly the scored rows)."""
    from w2v2ser.train import get_protocol

    mapping = get_protocol(protocol)
    return [dataclasses.replace(p, label=cls if p.ok and (cls := mapping.map_label(raw)) in classes else None)
            for p, raw in zip(predictions, labels)]


def predict_manifest(run_dir: str | os.PathLike[str], manifest: str | os.PathLike[str],
                     **options: Any) -> tuple[list[Prediction], PredictionScore]:
    """Predict the files of a CSV manifest (``path,label,speaker``) and score them against its labels.

    Each speaker's files are one speaker group (normalised with their own statistics in a
    speaker-normalised run, composed over its files whose labels the run's protocol keeps, as
    the run's own test speakers' were).

    Args:
        run_dir: Run directory written by ``w2v2ser train``.
        manifest: CSV manifest in the format ``w2v2ser extract csv`` reads.
        **options: Passed on to :func:`predict_audio` (``run``, ``work_dir``, ``model``, ``stores``...).

    Returns:
        (one prediction per manifest row, in order; the score).

    Raises:
        ManifestError: the manifest cannot be read. RunDirError, PredictError: as ``predict_audio``.
    """
    from w2v2ser.extract._manifest import read_csv_manifest  # the stage 1 reader, pure Python

    if options.get("segment") is not None:
        raise PredictError(f"segment={options['segment']!r} labels windows of a recording, but a manifest's "
                           f"labels are per file ({manifest}); score whole files (drop segment), or predict "
                           f"the recordings as audio paths with segment.")
    rows = read_csv_manifest(manifest).utterances
    predictions = predict_audio(Path(run_dir), [Path(u.path) for u in rows], speakers=[u.speaker for u in rows],
                                labels=[u.label for u in rows], **options)
    classes = next((tuple(p.probabilities) for p in predictions if p.ok), ())
    if not classes:  # nothing predicted: the predictions carry the errors
        return predictions, PredictionScore(None, None, 0, classes, (), [], failed=len(rows))
    # predict_audio has read (and checked) the run's experiment.json already.
    protocol = _read_json(Path(run_dir) / "experiment.json", what="the experiment configuration")["protocol"]
    labels = [u.label for u in rows]
    return (_labelled(predictions, labels, classes=classes, protocol=protocol),
            score_predictions(predictions, labels, classes=classes, protocol=protocol, splits=[u.split for u in rows]))


def _test_stores(plan: _RunPlan, store: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Training store path -> the open store that replaces it, checked to hold the run's features
    with the settings the run was trained with."""
    from w2v2ser.store import open_store

    aliases = sorted({b.alias for b in plan.branches})
    given = dict(store) if isinstance(store, Mapping) else {aliases[0]: store} if len(aliases) == 1 else None
    if given is None or set(given) != set(aliases):
        raise PredictError(f"run dir {plan.run_dir} reads {len(aliases)} store(s) ({', '.join(aliases)}); give the "
                           f"test store of each: {' '.join(f'--from-store {a}=PATH' for a in aliases)} (in "
                           f"Python, {{{', '.join(f'{a!r}: PATH' for a in aliases)}}}).")
    out = {}
    for branch in plan.branches:
        path = str(given[branch.alias])
        test = out.get(branch.store) or open_store(path)
        name = resolve_feature(branch.selection)
        trained = plan.likes[branch.store].features[name]
        found = test.features.get(name)
        fix = (f"extract it with the run's settings: w2v2ser extract ... --store {shlex.quote(str(path))} "
               f"--like {shlex.quote(str(plan.run_dir))}")
        if found is None:
            raise PredictError(f"store {path} holds {', '.join(test.features)}, not {name!r}, which run dir "
                               f"{plan.run_dir} reads; {fix}.")
        if (found.dim, found.layers) != (trained.dim, trained.layers) or _differs(found.config, trained.config):
            # As predict --store words it, less the keys only one side records or that _differs ignores.
            mine, theirs = _comparable_configs(found.config, trained.config)
            apart = _setting_differences({**found.to_dict(), "config": mine}, {**trained.to_dict(), "config": theirs},
                                         absent_differs=False)
            raise PredictError(f"store {path} holds {name!r} with other settings than run dir {plan.run_dir} was "
                               f"trained with ({apart}); its frames are not what the models read. "
                               f"{fix[0].upper()}{fix[1:]}.")
        out[branch.store] = test
    return out


def predict_store(run_dir: str | os.PathLike[str], store: str | os.PathLike[str] | Mapping[str, Any], *,
                  subset: Mapping[str, str | Sequence[str]] | None = None, run: str | None = None,
                  batch_size: int = 16) -> tuple[list[Prediction], PredictionScore]:
    """Predict every done utterance of a store with a run's models and score them against their labels.

    Cross-corpus evaluation without extracting again: the store (another corpus, or a held-out
    part) must hold the run's features with the settings the run was trained with
    (``w2v2ser extract ... --like RUN_DIR``). Each speaker of the store is a speaker group, as
    the run's own test speakers were (``predict_manifest``).

    Args:
        run_dir: Run directory written by ``w2v2ser train``.
        store: The test store, or store alias -> test store for a run of several stores (fusion).
        subset: Only the utterances whose field has one of the values (as ``ExperimentConfig.subset``).
        run: One run of the run dir (default: all, probabilities averaged).
        batch_size: Utterances per model call.

    Returns:
        (one prediction per utterance, in store order, each with the utterance's ``id``; the score).

    Raises:
        PredictError: A store lacks a feature or holds it with other settings. StoreError: A
            store cannot be opened. ConfigError: A subset names what no utterance has.
    """
    from w2v2ser.train import Item, get_protocol, select_subset
    from w2v2ser.train._protocols import statistics_utterances

    plan = _plan(Path(run_dir), run)
    stores = _test_stores(plan, store)
    main = stores[plan.branches[0].store]
    records = main.list_utterances(status="done")
    for branch in plan.branches:  # every feature the run reads, in every store it reads
        name = resolve_feature(branch.selection)
        held = {r.id for r in stores[branch.store].list_utterances(status="done", feature=name)}
        records = [r for r in records if r.id in held]
    if subset:
        records = select_subset(records, subset, store=str(main.path))
    if not records:
        raise PredictError(f"store {main.path} holds no done utterance with the features run dir {run_dir} reads.")
    items = [Item(r.id, r.speaker, 0, float(r.duration)) for r in records]
    # As training composed them (train._prepare): IEMOCAP's xxx, fru... left out, of any status.
    rows = main.list_utterances(status=None)  # training's rows (train._prepare)
    rows = select_subset(rows, subset, store=str(main.path)) if subset else rows
    statistics, apart = statistics_utterances(get_protocol(plan.config.protocol), rows)
    statistics = statistics if statistics is not None else [r.id for r in rows] if subset else None
    # A speaker qualifies by the utterances its statistics compose (its kept labels), not by all of them.
    counted = None if statistics is None else set(statistics)
    grouped = speaker_groups(r.speaker for r in records if counted is None or r.id in counted)
    apart = [s for s in apart if s in grouped]
    if apart and plan.config.norm == "speaker":
        log.warning("speaker(s) %s of store %s have no label that protocol %s keeps: their statistics are composed "
                    "over all their utterances", first_few(apart), main.path, plan.config.protocol)
    empty = frameless(plan, stores, [it.id for it in items])  # failed, not given the output for no input
    kept = [it for it in items if it.id not in empty]
    probabilities = iter(ensemble_probabilities(plan, stores, kept, batch_size=batch_size, grouped=grouped,
                                                utterances=statistics) if kept else [])
    crop = _crop_seconds(plan) or float("inf")
    silent = set(main.attrs.get("silent_audio", []))
    predictions = []
    for record in records:
        if record.id in empty:
            predictions.append(Prediction(Path(record.path), None, {}, record.speaker, empty[record.id], id=record.id))
            continue
        values = next(probabilities)
        probs = {c: float(p) for c, p in zip(plan.classes, values)}
        predictions.append(Prediction(Path(record.path), max(probs, key=probs.__getitem__), probs, record.speaker,
                                      seconds=float(record.duration), seconds_used=min(float(record.duration), crop),
                                      normalisation=normalisation_used(plan, record.speaker, grouped),
                                      id=record.id, silent=record.id in silent))
    score = score_predictions(predictions, [r.label for r in records], classes=plan.classes,
                              protocol=plan.config.protocol, splits=[r.split for r in records])
    mapping, seen = get_protocol(plan.config.protocol), _trained_speakers(plan)
    scored = [r for p, r in zip(predictions, records) if p.ok and mapping.map_label(r.label) in plan.classes]
    training_rates, other_rates, ids = {}, {}, {r.id for r in scored}
    for branch in plan.branches:  # features taken at each file's own rate, from training audio of one rate
        name = resolve_feature(branch.selection)
        for feature, rate in _training_rates(plan.likes[branch.store], [name]).items():
            found = stores[branch.store].sample_rates(feature, ids=ids)
            moved = sum(n for r, n in found.items() if r is not None and r != rate)
            if moved:
                training_rates[feature], other_rates[feature] = rate, moved
    predictions = _labelled(predictions, [r.label for r in records], classes=plan.classes,
                            protocol=plan.config.protocol)
    return predictions, dataclasses.replace(score, seen_speakers=sum(r.speaker in seen for r in scored),
                                            other_rates=other_rates, training_rates=training_rates)


def _trained_speakers(plan: _RunPlan) -> set[str]:
    """Speakers that the run's models trained or validated on (their metrics.json split)."""
    seen: set[str] = set()
    for model in plan.models:
        split = _read_json(model.parent / "metrics.json", what="a run's metrics").get("split") or {}
        seen.update(split.get("train") or [], split.get("validation") or [])
    return seen
