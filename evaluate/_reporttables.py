"""Report tables: the rows of the model × selection × head table (Tables 1 and 2) and of the head
comparison, each named by its run's identity, with the paper's published value beside each cell.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from w2v2ser._common import UPSTREAM_FEATURES
from w2v2ser.train._config import RUNTIME_FIELDS, SEED_FIELDS, ExperimentConfig  # no TensorFlow
from w2v2ser.train._head_names import reads_fusion  # no TensorFlow

from ._paper import paper_value, row_identity, verdict
from ._rundir import CORPUS_NAMES, RunSummary, _alias_model, _branch_stores, data_text, find_key


def _cell(run: RunSummary) -> str:
    if run.status == "skipped":
        return "skipped"
    if run.status != "complete":
        return "incomplete"
    return _spread(run.uar_mean, run.uar_std, run.n_runs)


def _spread(mean: float, std: float | None, n: int) -> str:
    """``mean ± std (n=N)``; one value (or an unknown std) has no spread to state."""
    return f"{mean:.1f}{f' ± {std:.1f}' if n > 1 and std is not None else ''} (n={n})"


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
