"""Scores, computed by scikit-learn: unweighted average recall (UAR), accuracy, confusion matrix,
per-class precision/recall/F1.

UAR is the mean recall over the classes PRESENT in ``y_true`` (``recall_score(average="macro")``
restricted to those labels, which equals ``balanced_accuracy_score``): a class absent from a
test partition neither counts as 0 nor as 1.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ._errors import DataError

__all__ = ["confusion_matrix", "uar", "accuracy", "per_class_report", "headline_uar", "format_uar",
           "missing_runs_message", "POOLED", "PER_RUN"]

PER_RUN = "per run"
POOLED = "pooled over folds, per seed"


def _sk() -> Any:
    """sklearn.metrics, imported on first use: importing stage 2 (e.g. the pipeline loader's use of
    its selection grammar) does not pay scikit-learn's 0.7 s import."""
    from sklearn import metrics

    return metrics


def _class_indices(call: str, y_true: Sequence[int], y_pred: Sequence[int],
                   n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Both as integer class indices in 0..n_classes-1, one prediction per label; else DataError (a label
    outside them was left out of the confusion matrix's counts without a word)."""
    def is_index(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and 0 <= v < n_classes

    t, p = np.asarray(y_true), np.asarray(y_pred)
    if len(t) != len(p):
        raise DataError(f"{call}: y_true holds {len(t)} labels but y_pred {len(p)}; expected one prediction per label")
    checked = []
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.dtype.kind == "O" and a.size and all(is_index(v) for v in a.flat):
            a = np.array(a.tolist())  # Python ints of an object array (a pandas Series): the numbers they are
        if a.size and (a.dtype.kind not in "iu" or a.min() < 0 or a.max() >= n_classes):
            bad = next(v for v in a.flat if not is_index(v))  # a str of an object array has no .item()
            bad = bad.item() if isinstance(bad, np.generic) else bad
            raise DataError(f"{call}: {name} holds {bad!r}; expected class indices 0..{n_classes - 1} "
                            f"(uar takes class names too)")
        checked.append(a.astype(int))
    return checked[0], checked[1]


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Counts [true class, predicted class] over classes 0..n_classes-1.

    Args:
        y_true: True class indices.
        y_pred: Predicted class indices.
        n_classes: Number of classes.

    Raises:
        DataError: A label is not a class index in 0..n_classes-1, or the lengths differ.
    """
    t, p = _class_indices("confusion_matrix", y_true, y_pred, n_classes)
    if not len(t):  # scikit-learn's "Found empty input array", where uar and accuracy give NaN
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    return _sk().confusion_matrix(t, p, labels=np.arange(n_classes))


def uar(y_true: Sequence[Any], y_pred: Sequence[Any], n_classes: int | None = None) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (balanced accuracy); NaN when empty.

    A fraction (0.214), where :class:`PredictionScore` and the reports give percent (21.4).

    Args:
        y_true: True labels: class indices, or any labels (e.g. the names a head fitted on
            strings predicts).
        y_pred: Predicted labels, of the same kind as ``y_true``.
        n_classes: Ignored (kept so that older calls still work): a class absent from ``y_true``
            never counts, whatever the number of classes.

    Raises:
        DataError: ``y_true`` and ``y_pred`` differ in length or cannot be compared (e.g. names
            against indices).
    """
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if len(t) != len(p):
        raise DataError(f"uar: y_true holds {len(t)} labels but y_pred {len(p)}; expected one prediction per label")
    if not len(t):
        return float("nan")
    try:
        return float(_sk().recall_score(t, p, labels=np.unique(t), average="macro", zero_division=0))
    except (TypeError, ValueError) as exc:  # string labels once failed in int(): "invalid literal for int()"
        raise DataError(f"uar: cannot compare y_true and y_pred ({exc}); give both as the same kind of labels "
                        f"(class indices, or class names)") from None


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Fraction of correct predictions; NaN when empty.

    Args:
        y_true: True labels.
        y_pred: Predicted labels, of the same kind.

    Raises:
        DataError: ``y_true`` and ``y_pred`` differ in length or cannot be compared (as :func:`uar`).
    """
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if len(t) != len(p):  # scikit-learn's "inconsistent numbers of samples", where uar named it
        raise DataError(f"accuracy: y_true holds {len(t)} labels but y_pred {len(p)}; expected one prediction per "
                        f"label")
    try:
        return float(_sk().accuracy_score(t, p)) if len(t) else float("nan")
    except (TypeError, ValueError) as exc:  # names against indices: scikit-learn's "Mix of label input types"
        raise DataError(f"accuracy: cannot compare y_true and y_pred ({exc}); give both as the same kind of labels "
                        f"(class indices, or class names)") from None


def per_class_report(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict[str, Any]:
    """Class name -> {precision, recall, f1-score, support} (``classification_report(output_dict=True)``).

    Also holds the report's "macro avg" and "weighted avg" rows; classes without test support
    get zeros (zero_division=0), never a warning. "macro avg" is over the classes present in
    ``y_true``, as the UAR is, so its recall equals :func:`uar`.

    Args:
        y_true: True class indices.
        y_pred: Predicted class indices.
        classes: Class names, indexed by the labels.
    """
    t, p = _class_indices("per_class_report", y_true, y_pred, len(classes))
    if not len(t):  # scikit-learn's "Found empty input array": no support, zeros (zero_division=0)
        zeros = {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0.0}
        return {name: dict(zeros) for name in [*map(str, classes), "macro avg", "weighted avg"]}
    report = _sk().classification_report(t, p, labels=np.arange(len(classes)), target_names=list(classes),
                                       output_dict=True, zero_division=0)
    if len(t):  # a class without test utterances would count as recall 0 in the macro average
        present = np.unique(t)
        report["macro avg"] = _sk().classification_report(
            t, p, labels=present, target_names=[classes[k] for k in present], output_dict=True,
            zero_division=0)["macro avg"]
    report.pop("accuracy", None)  # a float, not a row (present only when labels cover y_pred)
    return {name: {k: float(v) for k, v in row.items()} for name, row in report.items()}


def headline_uar(results: Mapping[str, Any]) -> tuple[list[float], Any, Any, str]:
    """The UAR figure a run directory is reported by, from its results.json: (values, mean, std, scoring).

    One fold (RAVDESS): each run's UAR, mean and std over runs. Several folds (IEMOCAP sessions,
    CSV speaker groups): per seed, the predictions of all folds pooled and scored once (the
    released code's scoring, the figure comparable with the paper), so one value per seed. The
    CLI, ``w2v2ser run``, the layer sweep's best layer and ``w2v2ser evaluate`` all use this rule.
    Values are returned as stored (mean/std None when results.json lacks them).

    Args:
        results: A results.json's dict.
    """
    pooled = results.get("uar_pooled_per_seed")
    if isinstance(pooled, Mapping) and pooled and len(results.get("splits") or {}) > 1:
        return ([float(v) for v in pooled.values()], results.get("uar_pooled_mean"),
                results.get("uar_pooled_std"), POOLED)
    runs = [float(r.get("uar") if isinstance(r, Mapping) else r) for r in results.get("uar_per_run") or []]
    return runs, results.get("uar_mean"), results.get("uar_std"), PER_RUN


def format_uar(results: Mapping[str, Any]) -> str:
    """``UAR 55.8 ± 1.2 (n=5 runs)`` or ``... (n=5 seeds, folds pooled)``: :func:`headline_uar` as text.

    Args:
        results: A results.json's dict.
    """
    values, mean, std, scoring = headline_uar(results)
    mean = float(np.mean(values)) if mean is None and values else mean
    std = float(np.std(values)) if std is None and values else std
    if mean is None:
        return "UAR n/a (no finished run)"
    what = ("seed" if scoring == POOLED else "run") + ("" if len(values) == 1 else "s")
    pooled = ", folds pooled" if scoring == POOLED else ""
    spread = f" ± {100 * (std or 0.0):.1f}" if len(values) > 1 else ""  # one value has no spread to state
    return f"UAR {100 * mean:.1f}{spread} (n={len(values)} {what}{pooled}{_lacking(results)})"


def _lacking(results: Mapping[str, Any]) -> str:
    """``; 2 of 4 planned runs`` when results.json lacks planned runs: its figure is over part of the folds."""
    done, planned = results.get("n_runs"), results.get("n_runs_planned")
    if isinstance(done, int) and isinstance(planned, int) and done < planned:
        return f"; only {done} of {planned} planned runs"
    return ""


def missing_runs_message(results: Mapping[str, Any], out: Any, command: str) -> str:
    """What `train`, `sweep` and `run` say when results.json lacks planned runs (replaced meanwhile by
    another job's runs in the same folder, or trained on other data): its UAR covers part of the
    folds only, so the command counts as failed; "" when none lack.

    Args:
        results: A results.json's dict.
        out: The experiment's output folder (named in the message).
        command: The ``w2v2ser`` subcommand to rerun (``train``, ``sweep``, ``run``).
    """
    from w2v2ser._common import first_few

    missing = results.get("missing_runs") or []
    if not missing:
        return ""
    return (f"{out}/results.json covers only {results.get('n_runs')} of {results.get('n_runs_planned')} planned "
            f"runs: {first_few(missing)} are missing or were replaced while this command ran (another job "
            f"writing into {out}, or a store that changed); rerun the same `w2v2ser {command}` command to train them")
