"""Run directories against a baseline: difference in mean UAR and Welch's t-test over their values.

A researcher changes one thing (a head, a layer, a recipe value) and asks whether the UAR moved.
Per run directory the UAR values are its runs' (seeds, or seeds x folds; seeds when folds are
pooled), so the test is between two independent samples of seed-to-seed variation on the same
test data. Welch's form does not assume equal variances. Nothing is corrected for comparing
several run directories with one baseline: the report says so.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from w2v2ser._common import first_few

from ._errors import EvaluateError
from ._rundir import RunSummary

__all__ = ["check_baseline_path", "compare_with_baseline", "find_baseline"]


def check_baseline_path(baseline: Path) -> None:
    """Refuse a folder of several run directories as the baseline (it would compare with itself)."""
    from ._sweep import find_run_dirs

    inside = find_run_dirs([baseline])
    if inside != [baseline]:
        raise EvaluateError(f"baseline {baseline} is a folder of {len(inside)} run directories; expected one run "
                            f"or sweep directory of `w2v2ser train|sweep`, e.g. {inside[0]}")


def find_baseline(runs: Sequence[RunSummary], baseline: Path) -> int:
    """Index of the run directory ``baseline`` among ``runs`` (a sweep folder stands for its weighted head).

    Raises:
        EvaluateError: it is not one of them, or it is not a finished run directory.
    """
    wanted = Path(baseline).resolve()
    found = [i for i, run in enumerate(runs) if run.path.resolve() in (wanted, wanted / "all")]
    if not found:
        raise EvaluateError(f"baseline {baseline} is not among the run directories of this report; pass it "
                            "as a RUN_DIR too.")
    run = runs[found[0]]
    if run.status != "complete":
        raise EvaluateError(f"baseline {baseline} is {run.status} ({run.reason or 'no results.json'}); expected a "
                            "finished run directory. Finish its training or choose another baseline.")
    return found[0]


def _welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p of Welch's t-test; None when either sample has fewer than 2 values or no spread."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2 or (max(a) == min(a) and max(b) == min(b)):
        return None  # no spread at all: no test (scipy returns nan)
    with warnings.catch_warnings():  # one sample without spread: scipy warns of "catastrophic
        warnings.simplefilter("ignore", RuntimeWarning)  # cancellation" in its variance, which is 0
        p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def _test_ids(run: RunSummary) -> frozenset[str] | None:
    """Ids of the utterances a run directory tests (its first seed's runs, every fold), from their
    ``predictions.csv``; None where they cannot be read (foreign or older files)."""
    entries = run.results.get("runs")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], Mapping):
        return None
    ids: set[str] = set()
    for entry in entries:
        if not isinstance(entry, Mapping) or entry.get("seed") != entries[0].get("seed"):
            continue
        try:
            with open(run.path / "runs" / str(entry["name"]) / "predictions.csv", newline="",
                      encoding="utf-8") as handle:
                ids.update(row["id"] for row in csv.DictReader(handle))
        except (OSError, KeyError, TypeError, UnicodeDecodeError, csv.Error):
            return None
    return frozenset(ids) or None


def _id_difference(ids: frozenset[str], ref_ids: frozenset[str]) -> str:
    """How two test sets differ, both ways, with a few ids: counting only the run's own ids, a run
    tested on part of the baseline's utterances read '0 of its N test utterances are not among ...'."""
    parts = []
    if ids - ref_ids:
        parts.append(f"{len(ids - ref_ids)} of its {len(ids)} test utterances are not among the baseline's "
                     f"{len(ref_ids)} ({first_few(sorted(ids - ref_ids))})")
    if ref_ids - ids:
        parts.append(f"{len(ref_ids - ids)} of the baseline's {len(ref_ids)} test utterances are not among its "
                     f"{len(ids)} ({first_few(sorted(ref_ids - ids))})")
    return "; ".join(parts)


def compare_with_baseline(runs: Sequence[RunSummary], names: Sequence[str], base: int) -> dict[str, Any]:
    """One row per other complete run directory: difference of mean UAR (points) and Welch's p.

    A run directory of another corpus, other classes, other test utterances (another number, or
    other ids in its ``predictions.csv``: another store's files, split or subset) or scored another
    way (pooled folds vs one value per run) is listed as not compared, with the reason.
    """
    ref = runs[base]
    ref_ids = _test_ids(ref)
    rows = []
    for i, (run, name) in enumerate(zip(runs, names)):
        if i == base or run.status != "complete":
            continue
        row: dict[str, Any] = {"name": name, "n": run.n_runs, "uar_mean": run.uar_mean, "uar_std": run.uar_std,
                               "difference": None, "p_welch": None, "not_compared": ""}
        if run.corpus != ref.corpus:
            row["not_compared"] = f"corpus {run.corpus}, baseline {ref.corpus}"
        elif run.scoring != ref.scoring:
            row["not_compared"] = f"scored {run.scoring}, baseline {ref.scoring}"
        elif run.classes != ref.classes:
            row["not_compared"] = f"classes {', '.join(run.classes)}; baseline {', '.join(ref.classes)}"
        elif run.results.get("n_test") != ref.results.get("n_test"):  # another store's utterances or split
            row["not_compared"] = (f"another test set: {run.results.get('n_test')} test utterances, baseline "
                                   f"{ref.results.get('n_test')}")
        elif ref_ids is not None and (ids := _test_ids(run)) is not None and ids != ref_ids:
            # Same count, other utterances (another subset of the same size, other test speakers)
            row["not_compared"] = "another test set: " + _id_difference(ids, ref_ids)
        else:
            row["difference"] = run.uar_mean - ref.uar_mean
            row["p_welch"] = _welch_p(run.uar_runs, ref.uar_runs)
        rows.append(row)
    return {"baseline": names[base], "n": ref.n_runs, "uar_mean": ref.uar_mean, "uar_std": ref.uar_std,
            "test": "Welch's t-test, two-sided, over the UAR values of the two run directories", "rows": rows}
