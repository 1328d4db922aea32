"""Scores: unweighted average recall (UAR), accuracy, confusion matrix."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["confusion_matrix", "uar", "accuracy"]


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Counts [true class, predicted class]."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def uar(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (balanced accuracy)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Fraction of correct predictions."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(t == p)) if len(t) else float("nan")
