"""Report entries: one record per run directory (figures, seeds, sources, commits, recall per
class) for report.json, and report.csv written from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._rundir import RunSummary, _load_json, current_runs, data_text, find_key


def _sample_std(values: Sequence[float]) -> float | None:
    """Sample std (ddof=1) of a cell's values, beside the population std results.json records: papers
    often give this one, and with 2-5 seeds the two differ by 10-30 %. None under two values."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def _csv(entries: Sequence[dict[str, Any]]) -> str:
    """``report.csv``: one row per run directory, numbers only (percent, unrounded), for a spreadsheet or
    a paper's table; recall per class in one column per class of any run directory."""
    import csv
    import io

    classes = list(dict.fromkeys(c for e in entries for c in (e.get("recall_per_class") or {})))
    header = ["run_dir", "path", "status", "corpus", "protocol", "features", "head", "normalisation", "recipe",
              "scoring", "n", "seeds", "uar_mean", "uar_std_population", "uar_std_sample", "uar_values",
              "accuracy_mean", "stores", *(f"recall_{c}" for c in classes), "reason"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for e in entries:
        src, recall = e["sources"], e.get("recall_per_class") or {}
        writer.writerow([e["name"], e["path"], e["status"], e["corpus"], src["protocol"] or "", e["features"],
                         e["head"], e["normalisation"], e["recipe"], e["scoring"] if e["uar_mean"] is not None else "",
                         e["n_runs"], " ".join(map(str, src["seeds"])), _number(e["uar_mean"]),
                         _number(e["uar_std"]), _number(e["uar_std_sample"]),
                         " ".join(_number(v) for v in e["uar_per_run"]), _number(e["accuracy_mean"]),
                         " ".join(f"{k}={v}" for k, v in src["stores"].items()),
                         *(_number(recall.get(c)) for c in classes), e["reason"]])
    return text.getvalue()


def _number(value: float | None) -> str:
    """A CSV cell: the value with its full precision, "" for none (a class without test utterances)."""
    return "" if value is None else repr(float(value))


def _run_entry(run: RunSummary, name: str, confusion_png: str | None) -> dict[str, Any]:
    recipe_detail = find_key(run.results, "recipe") if run.results else None
    if not isinstance(recipe_detail, dict):
        recipe_detail = find_key(run.experiment, "recipe")
    return {
        "name": name, "path": str(run.path), "status": run.status, "reason": run.reason,
        "corpus": run.corpus, "features": run.features, "head": run.head,
        "normalisation": run.normalisation, "recipe": run.recipe, "recipe_detail": recipe_detail,
        "model_ids": list(run.model_ids), "uar_mean": run.uar_mean, "uar_std": run.uar_std,
        "uar_std_sample": _sample_std(run.uar_runs),
        "uar_per_run": list(run.uar_runs), "n_runs": run.n_runs, "accuracy_mean": run.accuracy_mean,
        "classes": list(run.classes), "runs_finished": run.runs_finished, "scoring": run.scoring,
        "layer_weights": [list(v) for v in run.layer_weights], "confusion_png": confusion_png,
        "recall_per_class": _recall_per_class(run), "sources": _sources(run),
        # precision, recall, F1 and support per class (results.json's classification_report), for a paper's table
        "per_class": run.results.get("per_class") if run.status == "complete" and run.results else None,
    }


def _seeds(run: RunSummary) -> list[int]:
    """The seeds behind a run directory's figures: its finished runs' (results.json ``runs``), else the
    keys of ``uar_pooled_per_seed``; [] when neither is recorded."""
    results = run.results or {}
    seeds = {r.get("seed") for r in results.get("runs") or [] if isinstance(r, Mapping)}
    pooled = results.get("uar_pooled_per_seed")
    if not seeds - {None} and isinstance(pooled, Mapping):
        seeds = {int(k) for k in pooled if str(k).isdigit()}
    return sorted(k for k in seeds if isinstance(k, int))


def _seeds_text(seeds: Sequence[int]) -> str:
    """``0-4`` for consecutive seeds, else ``0, 2, 7``; "—" for none."""
    if not seeds:
        return "—"
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _sources(run: RunSummary) -> dict[str, Any]:
    """Where a run directory's figures come from: its stores, protocol (speaker folds, subset), folds
    and seeds, and the w2v2ser that trained it, so a number copied from the report can be traced."""
    results = run.results or {}
    config = results.get("config") if isinstance(results.get("config"), Mapping) else (run.experiment or {})
    stores = config.get("stores")
    stores = {str(k): str(v) for k, v in stores.items()} if isinstance(stores, Mapping) else {}
    splits = results.get("splits")
    protocol = find_key(config, "protocol") or find_key(run.experiment, "protocol")
    provenances = _provenances(run)
    commits = _commits(provenances)
    versions = [find_key(provenance, "versions") for provenance in provenances]
    versions = list(dict.fromkeys(str(v["w2v2ser"]) for v in versions if isinstance(v, Mapping) and v.get("w2v2ser")))
    return {"stores": stores, "protocol": None if protocol is None else f"{protocol}{data_text(config)}",
            "folds": sorted(splits) if isinstance(splits, Mapping) else [], "seeds": _seeds(run),
            "w2v2ser": ", ".join(versions) or None,
            "commit": next(iter(commits)) if len(commits) == 1 else None, "commits": list(commits),
            "dirty": any(commits.values()) if commits else None}


def _provenances(run: RunSummary) -> list[Any]:
    """The provenance of each of a run directory's runs (its metrics.json): results.json's is of its
    summary, which a resume or seeds added later wrote at another commit or w2v2ser version.
    results.json's only when no run records a provenance."""
    provenances = []
    for path in current_runs(run.path, run.experiment):
        metrics, _ = _load_json(path / "metrics.json")
        if isinstance(metrics, Mapping) and isinstance(metrics.get("provenance"), Mapping):
            provenances.append(metrics["provenance"])
    return provenances or [(run.results or {}).get("provenance")]


def _commits(provenances: Sequence[Any]) -> dict[str, bool]:
    """Git commit -> uncommitted changes, of the checkouts that trained a run directory's runs
    (:func:`_provenances`)."""
    commits: dict[str, bool] = {}
    for provenance in provenances:
        source = find_key(provenance, "source")
        if isinstance(source, Mapping) and source.get("commit"):
            commit = str(source["commit"])
            commits[commit] = commits.get(commit, False) or bool(source.get("dirty"))
    return commits


def _recall_per_class(run: RunSummary) -> dict[str, float | None] | None:
    """Class -> recall % over every test prediction of the run directory (results.json's
    ``per_class``: all seeds and folds pooled), None for a class without test utterances (its
    recall is undefined, not 0); None when it has no such record."""
    per_class = run.results.get("per_class") if run.status == "complete" and run.results else None
    if not isinstance(per_class, Mapping):
        return _recall_from_confusion(run)
    found = {c: per_class.get(c) for c in run.classes}
    if not all(isinstance(v, Mapping) and isinstance(v.get("recall"), (int, float)) for v in found.values()):
        return _recall_from_confusion(run)  # a class missing: the pooled confusion has them all
    return {c: None if v.get("support") == 0 else 100.0 * float(v["recall"]) for c, v in found.items()}


def _recall_from_confusion(run: RunSummary) -> dict[str, float | None] | None:
    """The same recalls from the pooled confusion matrix (true class per row, in ``classes`` order) of a
    run directory whose results.json has no ``per_class`` (an older w2v2ser trained it) or one lacking a
    class; None without one."""
    counts = run.confusion
    if run.status != "complete" or counts is None or counts.shape != (len(run.classes), len(run.classes)):
        return None
    totals = counts.sum(axis=1)
    return {c: None if totals[i] == 0 else 100.0 * float(counts[i, i]) / float(totals[i])
            for i, c in enumerate(run.classes)}
