"""Predict the files of a labelled manifest and score the predictions: a run on another corpus.

Cross-corpus evaluation (train on RAVDESS, test on a corpus of your own) needs the run's
models, the run's feature settings and normalisation, and the labels of the new files mapped
the way the run's protocol maps them (RAVDESS: calm -> neutral). ``predict_manifest`` does
that through :func:`predict_audio`, with the manifest's speakers as speaker groups.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import PredictError
from ._predict import Prediction, _read_json, predict_audio

__all__ = ["PredictionScore", "predict_manifest", "score_predictions"]


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``score`` of ``w2v2ser predict --manifest --json``)."""
        return {"uar": self.uar, "accuracy": self.accuracy, "scored": self.scored, "classes": list(self.classes),
                "present": list(self.present), "confusion": self.confusion,
                "unscored_labels": dict(self.unscored_labels), "failed": self.failed,
                "seen_splits": dict(self.seen_splits),
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


def predict_manifest(run_dir: str | os.PathLike[str], manifest: str | os.PathLike[str],
                     **options: Any) -> tuple[list[Prediction], PredictionScore]:
    """Predict the files of a CSV manifest (``path,label,speaker``) and score them against its labels.

    Each speaker's files are one speaker group (normalised with their own statistics in a
    speaker-normalised run, as the run's own test speakers were).

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
                                **options)
    classes = next((tuple(p.probabilities) for p in predictions if p.ok), ())
    if not classes:  # nothing predicted: the predictions carry the errors
        return predictions, PredictionScore(None, None, 0, classes, (), [], failed=len(rows))
    # predict_audio has read (and checked) the run's experiment.json already.
    protocol = _read_json(Path(run_dir) / "experiment.json", what="the experiment configuration")["protocol"]
    return predictions, score_predictions(predictions, [u.label for u in rows], classes=classes, protocol=protocol,
                                          splits=[u.split for u in rows])
