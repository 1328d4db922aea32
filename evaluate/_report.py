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

import datetime as _dt
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from w2v2ser._common import names_full_disk
from w2v2ser._files import make_folder, write_atomically
from w2v2ser._text import as_paths, short_name

from ._compare import check_baseline_path, compare_with_baseline, find_baseline
from ._errors import EvaluateError
from ._figures import layer_weight_series, plot_confusion, plot_layer_sweep, plot_layer_weights
from ._reportentries import _csv, _run_entry
from ._reportmarkdown import _markdown
from ._reporttables import _feature_table, _head_table, _identity
from ._rundir import RunSummary, read_run_dir
from ._sweep import expand_sweep_dirs, find_run_dirs, is_sweep_dir

__all__ = ["write_report"]


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


@names_full_disk()  # a full disk names the report folder (PIL and matplotlib name no file)
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
        DiskFullError: the disk (or quota, or a file size limit) is full; it names ``out``.
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
