"""``w2v2ser evaluate``: Markdown/JSON report over run directories, in the shape of the paper's tables.

Table 1 of the paper compares feature selections across corpora; Table 2 compares downstream heads.
Here each row is named by model × selection × head, plus the normalisation and training recipe that
produced it (so numbers from different recipes are never silently mixed), columns are corpora and
each cell is ``UAR mean ± std`` (population std) in percent over one run directory's values (one per
seed, its folds' predictions pooled, where there are several folds; else one per run),
followed by the paper's published value for the same row (``data/pepino2021.json``) and the
difference.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from w2v2ser._common import UPSTREAM_FEATURES
from w2v2ser._files import make_folder, write_atomically
from w2v2ser._text import as_paths, short_name
from w2v2ser.train._config import RUNTIME_FIELDS, SEED_FIELDS, ExperimentConfig  # no TensorFlow
from w2v2ser.train._head_names import reads_fusion  # no TensorFlow

from ._compare import check_baseline_path, compare_with_baseline, find_baseline
from ._errors import EvaluateError
from ._figures import layer_weight_series, plot_confusion, plot_layer_sweep, plot_layer_weights
from ._paper import paper_source, paper_value, row_identity, verdict
from ._rundir import (CORPUS_NAMES, RunSummary, _alias_model, _branch_stores, _load_json, current_runs, data_text,
                      find_key, read_run_dir)
from ._sweep import expand_sweep_dirs, find_run_dirs, is_sweep_dir

__all__ = ["write_report"]

_SPECTROGRAM_NOTE = (
    "Spectrogram on RAVDESS: the paper's figure comes from the released code's sample-count "
    "window/hop applied to the original 48 kHz files (8.3 ms window, 6.7 ms hop, 250 frames = "
    "1.7 s); {here} The notes report a gap of about 5 points for 16 kHz audio."
)


def _spectrogram_frames(run: RunSummary) -> str:
    """What the run's own spectrogram frames were, from its record of the store ("" if unknown)."""
    identities = (run.experiment or {}).get("stores_identity")
    for identity in identities.values() if isinstance(identities, Mapping) else ():
        spec = identity.get("features", {}).get("spectrogram") if isinstance(identity, Mapping) else None
        if isinstance(spec, Mapping) and isinstance(spec.get("description"), str) and spec.get("frame_rate"):
            seconds = 250 / float(spec["frame_rate"])
            return f"{spec['description']}, so 250 frames cover {seconds:.1f} s"
    return ""


def _cell(run: RunSummary) -> str:
    if run.status == "skipped":
        return "skipped"
    if run.status != "complete":
        return "incomplete"
    return _spread(run.uar_mean, run.uar_std, run.n_runs)


def _spread(mean: float, std: float | None, n: int) -> str:
    """``mean ± std (n=N)``; one value (or an unknown std) has no spread to state."""
    return f"{mean:.1f}{f' ± {std:.1f}' if n > 1 and std is not None else ''} (n={n})"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def _unique_names(runs: Sequence[RunSummary]) -> list[str]:
    """Short, unique labels for run directories.

    Several run directories are named by their paths below the deepest folder they share, so a
    pipeline's runs read as its experiment names (``table1/ravdess/classic-egemaps``). Otherwise
    the last path parts, as many as needed; a sweep's weighted-average head keeps its sweep
    folder's name (``sweep/all``, not ``all``).
    """
    paths = [run.path.resolve() for run in runs]
    if len(paths) > 1:
        root = Path(os.path.commonpath(paths))
        names = [path.relative_to(root).as_posix() for path in paths]
        if "." not in names and len(set(names)) == len(names):
            return names
    least = [2 if is_sweep_dir(run.path.parent) else 1 for run in runs]
    depth = 1
    while True:
        names = ["/".join(path.parts[-max(depth, low):]) for path, low in zip(paths, least)]
        if len(set(names)) == len(names) or depth >= max(len(path.parts) for path in paths):
            break
        depth += 1
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    escape = lambda s: str(s).replace("|", "\\|")  # noqa: E731 -- cells may contain pipes
    lines = ["| " + " | ".join(map(escape, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in rows]
    return lines


def _corpus_columns(runs: Sequence[RunSummary]) -> list[str]:
    """The paper's two corpora, always (as its tables), then each other corpus that a run used."""
    paper = [CORPUS_NAMES["ravdess"], CORPUS_NAMES["iemocap"]]
    return paper + sorted({r.corpus for r in runs} - set(paper) - {"?"})


def _identity(run: RunSummary) -> tuple[str, str, str]:
    """(model, selection, selection key) of a run's main branch, for row names and paper lookup."""
    selection = find_key(run.experiment, "features") if run.experiment else None
    branches = _branch_stores(run.experiment, run.experiment) if isinstance(selection, str) else None
    if not branches:
        return "", run.features, run.features
    (alias, feature, _), *others = branches
    model_id = _alias_model(run.experiment, alias, run.model_ids, feature) if feature in UPSTREAM_FEATURES else ""
    model, shown, key = row_identity(selection, model_id)
    # The paper's Fusion head adds eGeMAPS; another second branch is named, and matches no paper row.
    if reads_fusion(run.head) and others and others[0][1] != "egemaps":
        alias, name, fusion = others[0]  # with its own model, as the main branch (hubert-base vs hubert-large)
        branch = fusion.removeprefix(f"{alias}/")
        branch_model = _alias_model(run.experiment, alias, (), name) if name in UPSTREAM_FEATURES else ""
        branch += f" ({row_identity(fusion, branch_model)[0]})" if branch_model else ""
        shown, key = f"{shown} + {branch}", f"{key}+{branch}"
    return model, shown + data_text(run.experiment), key


# Experiment settings that the paper's rows fixed (ExperimentConfig's defaults are the paper's).
_PAPER_FIXED = ("batch_size", "max_frames", "units", "dropout")


def _departures_from_paper(run: RunSummary) -> str:
    """Settings of ``run`` that the paper's rows did not use (recipe overrides, batch size, crop,
    units, dropout, a subset of the utterances, speaker folds), e.g. ``max_epochs=3``; "" when it
    used the paper's."""
    config = run.experiment or {}
    defaults = {f.name: f.default for f in dataclasses.fields(ExperimentConfig) if f.name in _PAPER_FIXED}
    apart = [f"{k}={config[k]}" for k in _PAPER_FIXED if k in config and config[k] != defaults[k]]
    data = data_text(config).strip(" ()")  # other utterances or folds than the protocol's
    apart += [data] if data else []
    overrides = config.get("recipe_overrides")
    if isinstance(overrides, Mapping):
        apart += [f"{k}={v}" for k, v in sorted(overrides.items())]
    partial = _partial_corpus(run)
    apart += [partial] if partial and not data else []
    return ", ".join(apart)


# The paper's corpora, whole: speakers over all partitions, and (RAVDESS) test utterances. IEMOCAP's
# test count depends on the release's labels, so only its speakers are compared.
_FULL_CORPORA: dict[str, dict[str, int]] = {"ravdess": {"speakers": 24, "n_test": 208}, "iemocap": {"speakers": 10}}


def _partial_corpus(run: RunSummary) -> str:
    """``partial corpus: ...`` for a run of a paper protocol whose store held only part of the corpus
    (a subset of the files extracted): its figure is not comparable with the paper's; else ""."""
    results = run.results or {}
    protocol = find_key(results.get("config"), "protocol") or find_key(run.experiment, "protocol")
    full = _FULL_CORPORA.get(str(protocol))
    splits = results.get("splits")
    if full is None or not isinstance(splits, Mapping):
        return ""
    speakers = {s for split in splits.values() if isinstance(split, Mapping)
                for part in split.values() if isinstance(part, list) for s in part}
    if not speakers:  # results.json of a version that did not record the speakers: nothing to compare
        return ""
    n_test = results.get("n_test")
    short = []
    if len(speakers) < full["speakers"]:
        short.append(f"{len(speakers)} of {full['speakers']} speakers")
    if "n_test" in full and isinstance(n_test, int) and n_test < full["n_test"]:
        short.append(f"{n_test} of {full['n_test']} test utterances")
    return f"partial corpus: {', '.join(short)}" if short else ""


def _paper_cell(run: RunSummary, model: str, key: str, corpus: str) -> dict[str, Any] | None:
    published = paper_value(model=model, selection=key, head=run.head, norm=run.normalisation, corpus=corpus)
    if published is None:
        return None
    cell: dict[str, Any] = {"mean": published.mean, "std": published.std, "table": published.table,
                            "from": published.provenance, "checked": published.checked}
    apart = _departures_from_paper(run)
    if apart:  # not a reproduction attempt: no verdict (a 3-epoch run would read as a failed one)
        cell["not_compared"] = apart
    elif run.status == "complete" and run.uar_mean is not None:
        cell["difference"], cell["reproduces"] = verdict(run.uar_mean, run.uar_std, published)
    return cell


def _paper_text(paper: dict[str, Any] | None) -> str:
    if paper is None:
        return ""
    std = f" ± {paper['std']:.1f}" if paper.get("std") is not None else ""
    std += "" if paper.get("checked", True) else " (unchecked)"
    if "not_compared" in paper:
        return f" · paper {paper['mean']:.1f}{std}, not compared ({paper['not_compared']})"
    if "difference" not in paper:
        return f" · paper {paper['mean']:.1f}{std}"
    mark = "✓" if paper["reproduces"] else "✗"
    difference = round(paper["difference"], 1) + 0.0  # + 0.0: -0.04 shows as +0.0, not -0.0
    return f" · paper {paper['mean']:.1f}{std}, {difference:+.1f} {mark}"


def _feature_table(runs: Sequence[RunSummary], names: list[str]) -> dict[str, Any]:
    """Rows named by model × selection × head (and normalisation, recipe), one column per corpus;
    a second run dir for the same cell gets its own row (labelled with the settings in which it
    differs, else the run dir) rather than being averaged in silently, and a run of another corpus
    joins the row whose settings it shares."""
    columns = _corpus_columns(runs)
    rows: list[dict[str, Any]] = []
    # key -> its rows, each with the run that made it (to match a run's settings, and name what differs)
    index: dict[tuple[str, ...], list[tuple[dict[str, Any], RunSummary]]] = {}
    for run, name in zip(runs, names):
        if run.features == "?" and run.status == "incomplete":
            continue  # nothing known about it; listed under "Incomplete" only
        model, selection, key_text = _identity(run)
        key = (model, selection, run.head, run.normalisation, run.recipe)
        made = index.setdefault(key, [])
        row = next((row for row, first in made if run.corpus not in row["cells"]
                    and not _settings_apart(run, first)), None)
        if row is None:
            row = {"model": model, "selection": selection, "features": run.features, "head": run.head,
                   "normalisation": run.normalisation, "recipe": run.recipe, "cells": {}, "run_dirs": {}}
            if made:
                row["selection"] += f" [{_settings_apart(run, made[0][1]) or name}]"  # apart from the plain row
            made.append((row, run))
            rows.append(row)
        paper = _paper_cell(run, model, key_text, run.corpus)
        row["cells"][run.corpus] = {"text": _cell(run) + _paper_text(paper), "status": run.status,
                                    "uar_mean": run.uar_mean, "uar_std": run.uar_std, "n_runs": run.n_runs,
                                    "paper": paper}
        row["run_dirs"][run.corpus] = str(run.path)
    return {"columns": columns, "rows": rows}


# Experiment keys that a row already names, or that never change a result.
_NAMED_KEYS = {"stores", "features", "head", "norm", "protocol", "subset", "speaker_folds", "recipe",
               "recipe_overrides", *RUNTIME_FIELDS, *SEED_FIELDS}


_SETTING_KEYS = {f.name for f in dataclasses.fields(ExperimentConfig)}


def _settings_apart(run: RunSummary, other: RunSummary, *, ignore: Sequence[str] = ()) -> str:
    """The experiment settings in which ``run`` differs from ``other`` (e.g. ``units=32``), for
    telling apart two rows of the same model × selection × head; "" when none is recorded.
    ``ignore``: keys that may differ within a row (the heads of a head comparison)."""
    mine, theirs = run.experiment or {}, other.experiment or {}
    # Experiment settings only: a skipped.json also names the experiment and its corpus, which differ by corpus.
    keys = sorted(k for k in (mine.keys() & theirs.keys() & _SETTING_KEYS) - _NAMED_KEYS - set(ignore)
                  if mine[k] != theirs[k])
    return ", ".join(f"{k}={mine[k]}" for k in keys)


def _head_table(runs: Sequence[RunSummary]) -> dict[str, Any] | None:
    complete = [r for r in runs if r.status == "complete"]
    heads = sorted({r.head for r in complete})
    if len(heads) < 2:
        return None
    rows: list[dict[str, Any]] = []
    # (model, selection, normalisation, recipe, corpus) -> its rows, each with the run that made it
    index: dict[tuple[str, ...], list[tuple[dict[str, Any], RunSummary]]] = {}
    same = ("fusion_features",)  # the Fusion head's second branch: the heads of one row differ in it
    for run in complete:
        model, selection, _ = _identity(run)
        made = index.setdefault((model, selection, run.normalisation, run.recipe, run.corpus), [])
        # A head joins the row of the runs whose settings it shares; a second run dir of that head,
        # or one of other settings, gets its own row.
        row = next((row for row, first in made if run.head not in row["cells"]
                    and not _settings_apart(run, first, ignore=same)), None)
        if row is None:
            if made:
                selection += f" [{_settings_apart(run, made[0][1], ignore=same) or run.path.name}]"
            row = {"model": model, "selection": selection, "features": run.features,
                   "normalisation": run.normalisation, "recipe": run.recipe, "corpus": run.corpus, "cells": {}}
            made.append((row, run))
            rows.append(row)
        row["cells"][run.head] = {"text": _cell(run), "uar_mean": run.uar_mean, "uar_std": run.uar_std,
                                  "n_runs": run.n_runs}
    # Only feature selections trained with several heads compare heads; the rest are Table 1 only.
    compared = [row for row in rows if len(row["cells"]) > 1]
    if not compared:
        return None
    used = sorted({head for row in compared for head in row["cells"]})
    return {"columns": used, "rows": compared}


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


def write_report(run_dirs: str | Path | Sequence[str | Path], *, out: str | Path,
                 baseline: str | Path | None = None) -> Path:
    """Write ``report.md``, ``report.json`` and figures for the given run directories.

    Broken run directories never stop the report: skipped experiments are shown with their
    reason, incomplete ones are listed with what is missing.

    Args:
        run_dirs: run or sweep directories written by ``w2v2ser train|sweep`` (any order, any corpora),
            or folders holding them (searched eight levels down); one may be given bare.
        out: report folder; created if needed, files in it are replaced atomically.
        baseline: a run or sweep directory (added to the report if not among ``run_dirs``); the
            report then gives every other finished run directory's difference in mean UAR to it,
            with Welch's t-test over their UAR values.

    Returns:
        The path of ``report.md``.

    Raises:
        EvaluateError: no run directory given, ``out`` exists and is not a directory, or
            ``baseline`` is a folder of several run directories or not a finished run directory.
    """
    run_dirs = as_paths(run_dirs)
    if not run_dirs:
        raise EvaluateError("write_report received no run directories; expected at least one "
                            "RUN_DIR written by `w2v2ser train`. Pass them as arguments.")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EvaluateError(f"report folder {out} exists and is a file; expected a directory. "
                            "Choose another --out path.")
    make_folder(out)
    # A folder of runs shows every run inside; a sweep folder shows as its weighted head + the sweep plot.
    found = find_run_dirs(run_dirs)
    if baseline is not None:
        check_baseline_path(Path(baseline))
        if Path(baseline).resolve() not in {p.resolve() for p in found}:
            found.append(Path(baseline))  # --baseline alone puts its run dir in the report
    run_dirs, sweeps, unfinished = expand_sweep_dirs(found)
    runs = [read_run_dir(Path(p)) for p in run_dirs]
    names = _unique_names(runs)
    comparison = None if baseline is None else compare_with_baseline(runs, names, find_baseline(runs, baseline))

    confusion_pngs: list[str | None] = []
    taken: set[str] = set()
    for run, name in zip(runs, names):
        png = None
        if run.status == "complete":
            # Names that differ only in characters the slug drops ('运行一', '运行二'; 'run 1', 'run_1') got one
            # file: the second run's matrix overwrote the first's, and both rows showed it.
            slug, base, k = _slug(name), _slug(name), 1
            while slug.casefold() in taken:  # casefold: one file on macOS' and Windows' file systems
                k += 1
                slug = f"{base}-{k}"
            taken.add(slug.casefold())
            made = plot_confusion(run, out / short_name(f"confusion_{slug}.png"))  # a run may have a long name
            png = made.name if made else None
        confusion_pngs.append(png)
    weights = layer_weight_series(runs, _weight_labels(runs, names))
    layer_png = plot_layer_weights(weights, out / "layer_weights.png")
    sweep_png = plot_layer_sweep(sweeps, out / "layer_sweep.png")

    table = _feature_table(runs, names)
    heads = _head_table(runs)
    entries = [_run_entry(r, n, p) for r, n, p in zip(runs, names, confusion_pngs)]
    # A sweep's layers are not rows of the tables; one that is not complete is listed (and warned of)
    # with its reason, named as its sweep's `all` head is (``sweep/layer_03``).
    named = {run.path.resolve(): name for run, name in zip(runs, names)}
    for layer in unfinished:
        beside = named.get((layer.path.parent / "all").resolve(), "")  # its sweep's `all` head, as named here
        folder = beside.rpartition("/")[0] if "/" in beside else layer.path.parent.name
        entries.append(_run_entry(layer, f"{folder}/{layer.path.name}", None))
    data = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        # The cells' spread, as results.json records it (np.std): over seeds with several folds, where
        # each seed's folds are pooled and scored once, else over runs (one per seed on one split).
        "uar_unit": "percent", "std_ddof": 0,
        # runs[].per_class is results.json's classification_report as it is: fractions, support a count
        "per_class_unit": "fraction (0-1) for precision, recall and f1-score; support: test utterances; "
                          "runs[].recall_per_class gives the recalls in percent",
        "std": "population std (ddof=0) of each cell's n values, as results.json records it: one UAR per seed "
               "(its folds' predictions pooled) for multi-fold protocols (speaker folds, IEMOCAP sessions, CSV "
               "groups), one per run otherwise; runs[].uar_per_run lists those values",
        "feature_table": table, "head_table": heads, "runs": entries, "comparison": comparison,
        "layer_weights": {"png": layer_png.name if layer_png else None, "series": weights},
        "layer_sweep": {"png": sweep_png.name if sweep_png else None, "series": sweeps},
    }
    current = {*confusion_pngs, data["layer_weights"]["png"], data["layer_sweep"]["png"]}
    stale = _report_pngs(out / "report.json") - current
    write_atomically(out / "report.json", json.dumps(data, indent=2, default=str) + "\n")
    write_atomically(out / "report.csv", _csv(entries))
    report = write_atomically(out / "report.md", _markdown(data, runs))
    for png in stale:  # the previous report's figures of runs (or weights, a sweep) no longer in it
        (out / png).unlink(missing_ok=True)
    return report


def _weight_labels(runs: Sequence[RunSummary], names: Sequence[str]) -> list[str]:
    """Legend label of each run's layer weights: model · selection · head · normalisation · recipe,
    with the run directory's name added where two runs would share a label."""
    labels = []
    for run in runs:
        model, selection, _ = _identity(run)
        labels.append(" · ".join(part for part in (model, selection, run.head, run.normalisation, run.recipe) if part))
    counts = {label: labels.count(label) for label in labels}
    return [f"{label} [{name}]" if counts[label] > 1 else label for label, name in zip(labels, names)]


def _report_pngs(report_json: Path) -> set[str]:
    """Figures a previous report in this folder wrote (none if there is none): its confusion matrices,
    and its layer-weight and sweep plots, which a report without weights or sweeps no longer draws."""
    try:
        data = json.loads(report_json.read_text(encoding="utf-8"))
        found = {Path(e["confusion_png"]).name for e in data["runs"] if e.get("confusion_png")}
        found |= {Path(data[k]["png"]).name for k in ("layer_weights", "layer_sweep")
                  if isinstance(data.get(k), dict) and data[k].get("png")}
        return found
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def _markdown(data: dict[str, Any], runs: Sequence[RunSummary]) -> str:
    table = data["feature_table"]
    lines = ["# w2v2ser evaluation report", "",
             f"Created {data['created']}. Cells: UAR mean ± std (population std) in percent over the "
             "runs of one run directory, n = number of values. Single-fold protocols (RAVDESS): one UAR "
             "per seed. Multi-fold protocols (IEMOCAP sessions, speaker folds): per seed, the predictions of "
             "all folds are pooled and scored once (the released code's scoring), so n = seeds.", "",
             f"Beside a measured cell: the published value of the same row ({paper_source()}), the "
             "difference in points, and ✓ when |difference| ≤ max(2·√(s_measured² + s_paper²), 1 point) "
             "(two standard deviations of the difference, never under 1 point), ✗ otherwise. \"Not compared\": "
             "the run changed a setting the paper fixed (named in brackets: recipe overrides, batch size, crop, units, "
             "dropout, a subset of the utterances, speaker folds). No paper value: the row is not in the "
             "paper, or its value has not been entered in "
             "w2v2ser/evaluate/data/pepino2021.json. \"(unchecked)\": a value taken from another source than "
             "the paper itself (its \"from\" in that file names it), so its verdict is only as good as that "
             "source.", "",
             "## Model × selection × head (paper, Tables 1 and 2)", ""]
    header = ["Model", "Selection", "Head", "Normalisation", "Recipe"] + table["columns"]
    rows = [[r["model"], r["selection"], r["head"], r["normalisation"], r["recipe"]]
            + [r["cells"].get(c, {}).get("text", "—") for c in table["columns"]] for r in table["rows"]]
    lines += _markdown_table(header, rows) if rows else ["No run directory could be read."]
    if data["head_table"]:
        heads = data["head_table"]
        lines += ["", "## Head comparison (paper, Table 2)", ""]
        rows = [[r["model"], r["selection"], r["normalisation"], r["recipe"], r["corpus"]]
                + [r["cells"].get(h, {}).get("text", "—") for h in heads["columns"]] for r in heads["rows"]]
        lines += _markdown_table(["Model", "Selection", "Normalisation", "Recipe", "Corpus"]
                                 + heads["columns"], rows)
    lines += _comparison_markdown(data["comparison"])
    entries = data["runs"]
    lines += ["", "## Run directories", ""]
    rows = [[e["name"], e["status"], e["corpus"], e["features"], e["head"], e["recipe"],
             "—" if e["uar_mean"] is None else f"{e['uar_mean']:.1f}",
             "—" if e["accuracy_mean"] is None else f"{e['accuracy_mean']:.1f}",
             str(e["n_runs"]), _seeds_text(e["sources"]["seeds"]), e["scoring"],
             f"![]({e['confusion_png']})" if e["confusion_png"] else "—"]
            for e in entries]
    lines += _markdown_table(["Run dir", "Status", "Corpus", "Feature selection", "Head", "Recipe",
                              "UAR %", "Accuracy %", "n", "Seeds", "Scoring", "Confusion"], rows)
    lines += _sources_markdown(entries)
    lines += _recall_markdown(entries)
    recipes = {}
    for e in entries:
        if isinstance(e["recipe_detail"], dict):
            recipes.setdefault(e["recipe"], e["recipe_detail"])
    if recipes:
        lines += ["", "## Recipes", ""]
        for name, detail in recipes.items():
            lines.append(f"- **{name}**: " + ", ".join(f"{k}={v}" for k, v in detail.items()))
    skipped = [e for e in entries if e["status"] == "skipped"]
    if skipped:
        # One line per reason: a pipeline without hub access skips many experiments for one cause.
        by_reason: dict[str, list[str]] = {}
        for e in skipped:
            by_reason.setdefault(e["reason"], []).append(f"`{e['name']}`")
        lines += ["", "## Skipped experiments", ""]
        lines += [f"- {reason} ({len(names)} experiment{'s' * (len(names) > 1)}: {', '.join(names)})"
                  for reason, names in by_reason.items()]
    incomplete = [e for e in entries if e["status"] == "incomplete"]
    if incomplete:
        lines += ["", "## Incomplete run directories", ""]
        lines += [f"- `{e['path']}`: {e['reason']}" for e in incomplete]
    if data["layer_weights"]["png"]:
        lines += ["", "## Layer weights (paper, Figure 2)", "",
                  "Normalised α per layer, mean ± std over the runs (seeds × folds) of one run directory; "
                  "one line per run directory, since heads, normalisations and recipes learn different "
                  "weights.", "", f"![layer weights]({data['layer_weights']['png']})"]
        lines += _weights_markdown(data["layer_weights"]["series"])
    lines += _sweep_markdown(data["layer_sweep"])
    notes = []
    spectrogram_runs = [r for r in runs if r.corpus == "RAVDESS" and "spectrogram" in r.features.lower()]
    if spectrogram_runs:
        frames = sorted({f for f in map(_spectrogram_frames, spectrogram_runs) if f})
        here = (f"the runs here used the store's {'; '.join(frames)}." if frames else
                "the runs here used the window and hop of their store's spectrogram config.")
        notes.append(_SPECTROGRAM_NOTE.format(here=here))
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _sources_markdown(entries: Sequence[dict[str, Any]]) -> list[str]:
    """One line per finished run directory: its path, stores, protocol, folds, seeds, w2v2ser version and commits."""
    lines = []
    for e in (e for e in entries if e["status"] == "complete"):
        src = e["sources"]
        parts = [f"`{e['path']}`"]
        parts += [f"store {', '.join(f'{k}=`{v}`' if len(src['stores']) > 1 else f'`{v}`' for k, v in src['stores'].items())}"
                  ] if src["stores"] else []
        parts += [f"protocol {src['protocol']}"] if src["protocol"] else []
        parts += [f"folds {', '.join(src['folds'])}"] if len(src["folds"]) > 1 else []
        parts += [f"seeds {_seeds_text(src['seeds'])}"] if src["seeds"] else []
        parts += [f"w2v2ser {src['w2v2ser']}"] if src["w2v2ser"] else []
        if src["commit"]:
            parts += [f"commit {str(src['commit'])[:12]}{' with uncommitted changes' if src['dirty'] else ''}"]
        elif len(src.get("commits") or ()) > 1:
            parts += [f"commits {', '.join(str(c)[:12] for c in src['commits'])} (its runs were trained at "
                      f"different commits{'; some with uncommitted changes' if src['dirty'] else ''})"]
        lines.append(f"- **{e['name']}**: " + "; ".join(parts))
    return ["", "## Sources", "", "What each finished run directory's figures come from.", "", *lines] if lines else []


def _recall_markdown(entries: Sequence[dict[str, Any]]) -> list[str]:
    """Recall per class of each complete run directory, one table per set of classes (corpus)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for e in entries:
        if e.get("recall_per_class"):
            groups.setdefault(tuple(e["recall_per_class"]), []).append(e)
    if not groups:
        return []
    lines = ["", "## Recall per class", "",
             "Recall in percent over every test prediction of a run directory (all seeds and folds pooled); "
             "their mean over the classes present is the UAR of the pooled predictions; — marks a class "
             "without test utterances."]
    for classes, members in groups.items():
        rows = [[e["name"], *("—" if e["recall_per_class"][c] is None else f"{e['recall_per_class'][c]:.1f}"
                              for c in classes)] for e in members]
        lines += [""] + _markdown_table(["Run dir", *classes], rows)
    return lines


def _comparison_markdown(comparison: dict[str, Any] | None) -> list[str]:
    """Section of ``compare_with_baseline``'s rows (nothing without a baseline)."""
    if not comparison:
        return []
    lines = ["", f"## Against the baseline {comparison['baseline']}", "",
             f"Baseline UAR {_spread(comparison['uar_mean'], comparison['uar_std'], comparison['n'])}. "
             "Difference: the row's mean UAR minus the baseline's, in points. p: Welch's two-sided t-test "
             "over the two run directories' UAR values (n each), not corrected for comparing several rows "
             "with one baseline; it needs at least 2 values on each side and some spread: — where a side has "
             "one value, or every value of both sides is the same (each seed scored alike).", ""]
    rows = [[r["name"], _spread(r["uar_mean"], r["uar_std"], r["n"]),
             "not compared" if r["not_compared"] else f"{r['difference']:+.1f}",
             r["not_compared"] or ("—" if r["p_welch"] is None else f"{r['p_welch']:.2g}")]
            for r in comparison["rows"]]
    return lines + (_markdown_table(["Run dir", "UAR %", "Difference", "p (Welch)"], rows) if rows
                    else ["No other finished run directory."])


def _weights_markdown(series: Sequence[dict]) -> list[str]:
    """Table layer x run directory of the normalised weights (mean ± std over its runs)."""
    header = ["Layer"] + [f"{s['label']} · {s['corpus']} (n={s['n']})" for s in series]
    rows = []
    for k in sorted({k for s in series for k in s["layers"]}):
        row = [str(k)]
        for s in series:
            i = s["layers"].index(k) if k in s["layers"] else None
            row.append("—" if i is None else f"{s['mean'][i]:.3f} ± {s['std'][i]:.3f}")
        rows.append(row)
    return [""] + _markdown_table(header, rows)


def _sweep_markdown(sweep: dict[str, Any]) -> list[str]:
    """Layer sweep section: the plot and a table layer x upstream (UAR mean ± std, n)."""
    series = sweep["series"]
    if not series:
        return []
    lines = ["", "## Layer sweep", "",
             "Dense probe trained on each layer alone (UAR mean ± std in percent, scored as in the tables "
             "above: n = runs, or seeds when the folds are pooled); "
             "the last row is the weighted average of all swept layers. All heads of one upstream were "
             "trained together in one pass over the data (`w2v2ser sweep`).", ""]
    if sweep["png"]:
        lines += [f"![layer sweep]({sweep['png']})", ""]
    header = ["Layer"] + [f"{s['label']} · {s['corpus']}" for s in series]
    layers = sorted({k for s in series for k in [*s["layers"], *s.get("incomplete_layers", ())]})
    rows = []
    for k in layers:
        row = [str(k)]
        for s in series:
            i = s["layers"].index(k) if k in s["layers"] else None
            gap = "incomplete" if k in s.get("incomplete_layers", ()) else "—"
            row.append(gap if i is None else _spread(s["uar_mean"][i], s["uar_std"][i], s["n"][i]))
        rows.append(row)
    rows.append(["weighted average"] + ["—" if not s["weighted"] else _spread(
        s["weighted"]["uar_mean"], s["weighted"]["uar_std"], s["weighted"]["n"]) for s in series])
    return lines + _markdown_table(header, rows)
