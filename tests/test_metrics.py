"""Scores and protocol splits come from scikit-learn and reproduce the hand-written ones."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, recall_score

from w2v2ser.store import Utterance
from w2v2ser.evaluate import write_report
from w2v2ser.train import (accuracy, confusion_matrix, format_uar, get_protocol, headline_uar, per_class_report,
                           DataError, uar)

STORED_RUN = Path(__file__).parent / "data" / "stored_run"


def hand_uar(y_true, y_pred, n_classes):
    """The UAR w2v2ser computed before scikit-learn: mean recall of the classes present in y_true."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def test_stored_run_uar_recomputes_both_ways():
    """A RAVDESS run written by the hand-written metrics scores the same through scikit-learn."""
    metrics = json.loads((STORED_RUN / "metrics.json").read_text())
    with open(STORED_RUN / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    idx = {c: i for i, c in enumerate(metrics["classes"])}
    t = [idx[r["label"]] for r in rows]
    p = [idx[r["predicted"]] for r in rows]
    n = len(metrics["classes"])
    assert len(rows) == metrics["n_test"] == 208
    assert hand_uar(t, p, n) == pytest.approx(metrics["uar"], abs=1e-12)
    assert uar(t, p, n) == pytest.approx(metrics["uar"], abs=1e-12)
    assert recall_score(t, p, average="macro") == pytest.approx(metrics["uar"], abs=1e-12)
    assert balanced_accuracy_score(t, p) == pytest.approx(metrics["uar"], abs=1e-12)
    assert accuracy(t, p) == pytest.approx(metrics["accuracy"], abs=1e-12)
    assert confusion_matrix(t, p, n).tolist() == metrics["confusion"]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(5))
def test_uar_ignores_classes_absent_from_the_test_set(seed):
    rng = np.random.default_rng(seed)
    t = rng.choice([0, 2, 3, 5], size=60)  # classes 1, 4 and 6 never occur in y_true
    p = rng.integers(0, 7, size=60)  # ... but are predicted
    assert uar(t, p, 7) == pytest.approx(hand_uar(t, p, 7), abs=1e-12)
    assert uar(t, p, 7) == pytest.approx(balanced_accuracy_score(t, p), abs=1e-12)
    assert np.isnan(uar([], [], 7))


def test_uar_takes_class_names_and_names_what_it_cannot_compare():
    """Found by a trial: uar(['a', 'b'], ['a', 'a']) raised "invalid literal for int()"; a head fitted
    on names predicts names, so uar(y_test, head.predict(x)) is the natural call."""
    from w2v2ser import DataError

    assert uar(["a", "b", "b", "c"], ["a", "b", "a", "a"]) == pytest.approx((1 + 0.5 + 0) / 3)
    assert uar([0, 1, 1], [0, 1, 0], n_classes=5) == uar([0, 1, 1], [0, 1, 0]) == pytest.approx(0.75)
    with pytest.raises(DataError, match=r"uar: cannot compare y_true and y_pred \(.*\); give both as the same kind"):
        uar(["a", "b"], [0, 1])
    with pytest.raises(DataError, match="uar: y_true holds 2 labels but y_pred 1"):
        uar(["a", "b"], ["a"])


def test_per_class_report_matches_the_confusion_matrix():
    t = [0, 0, 1, 1, 1, 2]
    p = [0, 1, 1, 1, 0, 0]
    rep = per_class_report(t, p, ["a", "b", "c"])
    assert rep["a"] == pytest.approx({"precision": 1 / 3, "recall": 0.5, "f1-score": 0.4, "support": 2.0})
    assert rep["c"]["recall"] == 0.0 and rep["c"]["precision"] == 0.0  # never predicted: zero, no warning
    assert rep["macro avg"]["recall"] == pytest.approx(uar(t, p, 3))


def test_the_macro_average_of_the_per_class_report_is_over_the_classes_tested_as_the_uar_is():
    """Found by a correctness audit: with a class absent from the test utterances (RAVDESS song has
    no disgust or surprised), results.json's macro-average recall counted it as 0 (5/7 of the UAR)."""
    t = [0, 0, 1, 1, 1, 2]
    p = [0, 3, 1, 1, 0, 3]  # class 3 predicted, never true
    rep = per_class_report(t, p, ["a", "b", "c", "d"])
    assert rep["d"]["support"] == 0.0 and rep["d"]["precision"] == 0.0
    assert rep["macro avg"]["recall"] == pytest.approx(uar(t, p, 4)) == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert rep["macro avg"]["support"] == 6.0


def _folds(protocol, records, k=5):
    return [f.to_dict() for f in get_protocol(protocol).make_folds(records, k)]


def test_iemocap_folds_are_leave_one_session_out():
    recs = [Utterance(f"u{s}{g}", "/x", f"Ses0{s}{g}", "neu") for s in range(1, 6) for g in "FM"]
    folds = _folds("iemocap", recs)
    for k, f in enumerate(folds, 1):
        val = k % 5 + 1
        assert f["test"] == [f"Ses0{k}F", f"Ses0{k}M"] and f["validation"] == [f"Ses0{val}F", f"Ses0{val}M"]
        assert sorted(f["train"]) == sorted(f"Ses0{s}{g}" for s in range(1, 6) if s not in (k, val) for g in "FM")


def test_csv_folds_are_contiguous_speaker_groups():
    recs = [Utterance(f"u{i}", "/x", f"s{i:02d}", "a") for i in range(10)]
    folds = _folds("csv", recs, 5)
    assert [f["test"] for f in folds] == [[f"s{2 * g:02d}", f"s{2 * g + 1:02d}"] for g in range(5)]
    assert folds[4]["validation"] == ["s00", "s01"]


def test_ravdess_split_ignores_actors_outside_1_to_24():
    recs = [Utterance(f"u{a}", "/x", f"Actor_{a:02d}", "happy") for a in range(1, 27)]
    (f,) = _folds("ravdess", recs)
    assert f["test"] == ["Actor_23", "Actor_24"] and f["validation"] == ["Actor_21", "Actor_22"]
    assert f["train"] == [f"Actor_{a:02d}" for a in range(1, 21)]


def _results(folds: int) -> dict:
    """results.json of 2 seeds x ``folds`` folds whose per-run mean (0.5) differs from the pooled one."""
    splits = {f"fold{i}": {"test": [f"s{i}"]} for i in range(folds)}
    return {"uar_mean": 0.5, "uar_std": 0.1, "uar_per_run": [{"uar": 0.4}, {"uar": 0.6}] * folds,
            "uar_pooled_per_seed": {"0": 0.3, "1": 0.5}, "uar_pooled_mean": 0.4, "uar_pooled_std": 0.1,
            "splits": splits}


def test_headline_uar_pools_folds_only_when_there_are_several():
    """Several folds: one pooled UAR per seed (the paper's IEMOCAP scoring); one fold: per run."""
    assert headline_uar(_results(3)) == ([0.3, 0.5], 0.4, 0.1, "pooled over folds, per seed")
    assert headline_uar(_results(1)) == ([0.4, 0.6], 0.5, 0.1, "per run")
    assert format_uar(_results(3)) == "UAR 40.0 ± 10.0 (n=2 seeds, folds pooled)"
    assert format_uar(_results(1)) == "UAR 50.0 ± 10.0 (n=2 runs)"
    assert format_uar({}) == "UAR n/a (no finished run)"
    assert format_uar({"uar_mean": 0.5, "uar_std": 0.0, "uar_per_run": [0.5]}) == "UAR 50.0 (n=1 run)"  # no spread of one value


def test_report_shows_the_figure_the_cli_prints(tmp_path):
    """`w2v2ser train` prints format_uar(results); `w2v2ser evaluate` reads the same figure."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(_results(3)))
    (run / "experiment.json").write_text(json.dumps({"features": "egemaps", "protocol": "iemocap"}))
    report = write_report([run], out=tmp_path / "report").read_text()
    assert "40.0 ± 10.0 (n=2)" in report and "50.0" not in report
    assert "40.0 ± 10.0 (n=2 seeds" in format_uar(_results(3))


@pytest.mark.parametrize("call", [lambda t, p: confusion_matrix(t, p, 2), lambda t, p: per_class_report(t, p, ["a", "b"])])
def test_labels_that_are_not_class_indices_are_refused(call):
    """Found by a trial: confusion_matrix([0, 5], [0, 1], 2) left label 5 out of the counts ([[1, 0], [0, 0]])
    without a word, and per_class_report raised IndexError for it."""
    with pytest.raises(DataError, match=r"y_true holds 5; expected class indices 0\.\.1"):
        call([0, 5], [0, 1])
    with pytest.raises(DataError, match=r"y_pred holds -1; expected class indices 0\.\.1"):
        call([0, 1], [0, -1])
    with pytest.raises(DataError, match=r"y_true holds 'a'; expected class indices"):
        call(["a", "b"], [0, 1])
    with pytest.raises(DataError, match=r"y_true holds 2 labels but y_pred 1"):
        call([0, 1], [0])
    assert confusion_matrix([0, 1, 1], [0, 1, 0], 2).tolist() == [[1, 0], [1, 1]]


@pytest.mark.parametrize("call", [lambda t, p: confusion_matrix(t, p, 2), lambda t, p: per_class_report(t, p, ["a", "b"])])
def test_object_labels_are_checked_not_crashed_on(call):
    """Found by a review: an object array (a pandas column) raised AttributeError ('str' object has no
    attribute 'item'), for class names and for valid Python int indices alike (these worked before)."""
    import pandas as pd

    with pytest.raises(DataError, match=r"y_true holds 'a'; expected class indices 0\.\.1"):
        call(pd.Series(["a", "b"]), [0, 1])
    with pytest.raises(DataError, match=r"y_pred holds 'b'; expected class indices 0\.\.1"):
        call([0, 1], np.array([0, "b"], dtype=object))
    with pytest.raises(DataError, match=r"y_true holds 2; expected class indices 0\.\.1"):
        call(np.array([0, 2], dtype=object), [0, 1])
    counts = confusion_matrix(np.array([0, 1, 1], dtype=object), pd.Series([0, 1, 0], dtype=object), 2)
    assert counts.tolist() == [[1, 0], [1, 1]]
    call(pd.Series([0, 1], dtype=object), [1, 1])


def test_accuracy_of_labels_and_predictions_of_other_lengths_is_named():
    """Found by a trial: accuracy([0, 1], [0]) raised scikit-learn's ValueError where uar raises DataError."""
    with pytest.raises(DataError, match=r"accuracy: y_true holds 2 labels but y_pred 1; expected one prediction"):
        accuracy([0, 1], [0])
    assert accuracy([0, 1], [0, 0]) == 0.5


def test_accuracy_of_labels_it_cannot_compare_and_reports_of_no_labels():
    """Found by a trial: accuracy(names, indices) raised scikit-learn's ValueError "Mix of label input types"
    and accuracy with a None label a TypeError, where uar raises DataError; confusion_matrix and
    per_class_report of no labels raised "Found empty input array", where uar and accuracy give NaN."""
    for y_true, y_pred in ((["a", "b"], [0, 1]), (["a", None], ["a", "b"])):
        with pytest.raises(DataError, match=r"accuracy: cannot compare y_true and y_pred \(.*\); give both as the "
                                            r"same kind of labels"):
            accuracy(y_true, y_pred)
    assert confusion_matrix([], [], 2).tolist() == [[0, 0], [0, 0]]
    report = per_class_report([], [], ["angry", "sad"])
    assert list(report) == ["angry", "sad", "macro avg", "weighted avg"]
    assert all(row == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0.0} for row in report.values())
    filled = per_class_report([0, 1], [0, 0], ["angry", "sad"])
    assert list(filled) == list(report) and set(filled["angry"]) == set(report["angry"])  # same rows and keys
