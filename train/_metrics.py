"""Scores, computed by scikit-learn: unweighted average recall (UAR), accuracy, confusion matrix,
per-class precision/recall/F1.

UAR is the mean recall over the classes PRESENT in ``y_true`` (``recall_score(average="macro")``
restricted to those labels, which equals ``balanced_accuracy_score``): a class absent from a
test partition neither counts as 0 nor as 1.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["confusion_matrix", "uar", "accuracy", "per_class_report"]


def _sk() -> Any:
    """sklearn.metrics, imported on first use: importing stage 2 (e.g. the pipeline loader's use of
    its selection grammar) does not pay scikit-learn's 0.7 s import."""
    from sklearn import metrics

    return metrics


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Counts [true class, predicted class] over classes 0..n_classes-1."""
    return _sk().confusion_matrix(np.asarray(y_true, int), np.asarray(y_pred, int), labels=np.arange(n_classes))


def uar(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int | None = None) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (balanced accuracy); NaN when empty."""
    t = np.asarray(y_true, int)
    if not len(t):
        return float("nan")
    return float(_sk().recall_score(t, np.asarray(y_pred, int), labels=np.unique(t), average="macro",
                                  zero_division=0))


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Fraction of correct predictions; NaN when empty."""
    t = np.asarray(y_true)
    return float(_sk().accuracy_score(t, np.asarray(y_pred))) if len(t) else float("nan")


def per_class_report(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict[str, Any]:
    """Class name -> {precision, recall, f1-score, support} (``classification_report(output_dict=True)``).

    Also holds the report's "macro avg" and "weighted avg" rows; classes without test support
    get zeros (zero_division=0), never a warning.
    """
    report = _sk().classification_report(np.asarray(y_true, int), np.asarray(y_pred, int),
                                       labels=np.arange(len(classes)), target_names=list(classes),
                                       output_dict=True, zero_division=0)
    report.pop("accuracy", None)  # a float, not a row (present only when labels cover y_pred)
    return {name: {k: float(v) for k, v in row.items()} for name, row in report.items()}
