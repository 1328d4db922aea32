"""Layer-sweep folders (``w2v2ser sweep``) in the report: UAR per layer of each upstream.

A sweep folder holds ``sweep.json`` and one ordinary run directory per head (``layer_NN`` and
``all``). The report reads the per-layer ``results.json`` files (not the summary, so a sweep
whose summary is stale still shows what finished) and passes the ``all`` directory on as an
ordinary run, so the weighted-average head appears in the tables and in Figure 2.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from w2v2ser.train import list_run_files

from ._rundir import CORPUS_NAMES, RunSummary, current_failure, data_text, read_run_dir

__all__ = ["is_sweep_dir", "read_sweep_dir", "expand_sweep_dirs", "find_run_dirs"]

# Files that make a folder a run directory of `w2v2ser train` (or of a skipped or failed pipeline experiment).
_RUN_DIR_MARKERS = ("experiment.json", "results.json", "skipped.json", "failed.json")


def is_sweep_dir(path: Path) -> bool:
    """True for a folder written by ``w2v2ser sweep`` (it has sweep.json)."""
    return (Path(path) / "sweep.json").is_file()


def _label(summary: dict[str, Any]) -> str:
    spec = summary.get("feature_spec") or {}
    config = spec.get("config") or {}
    model = next((config[k] for k in ("model", "model_id", "id") if isinstance(config.get(k), str)), "")
    # The model's last name part only (a local folder's name, a hub id's name): an absolute path
    # filled the plot's legend; the store's name (alias) tells the upstreams of a pipeline apart.
    model = model.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    upstream = summary.get("upstream", "?")
    alias = summary.get("alias")
    name = f"{alias}/{upstream}" if alias and alias != "main" else upstream
    return f"{name} ({model})" if model and model != upstream else name


def read_sweep_dir(path: Path) -> dict[str, Any] | None:
    """One line of the sweep plot: label, corpus, layers, UAR mean/std/n per layer (percent), weighted head.

    Layers whose run directory is not complete have no value; ``incomplete_layers`` names them, so
    the table and plot show the gap (the report lists their reasons). None when no layer is complete.
    """
    return _read_sweep(Path(path))[0]


def _read_sweep(path: Path) -> tuple[dict[str, Any] | None, list[RunSummary]]:
    """The sweep's plot line (as ``read_sweep_dir``) and its layer run directories that are not
    complete, each layer's run directory read once (the report needs both)."""
    file = path / "sweep.json"
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # damaged sweep.json: no line, listed as damaged (not dropped silently)
        return None, [RunSummary(path=file, status="incomplete", reason=f"{file} cannot be read as JSON ({err}); "
                                 "expected the summary `w2v2ser sweep` writes. Run the sweep again")]
    listed = summary.get("layers") if isinstance(summary, dict) else None
    # int() over each layer read "12" as layers 1 and 2, 2.7 as 2, true as 1: only a list of ints is layers
    # [] drew no line and listed nothing, without a word: a sweep has layers (`sweep` refuses fewer than two)
    if not (isinstance(listed, list) and listed
            and all(isinstance(k, int) and not isinstance(k, bool) for k in listed)):
        what = f"'layers' is {listed!r:.100}" if isinstance(summary, dict) else f"it holds a {type(summary).__name__}"
        return None, [RunSummary(path=file, status="incomplete", reason=f"{file} is no sweep summary ({what}); "
                                 "expected 'layers' as a non-empty list of layer numbers. Run the sweep again")]
    layers, means, stds, ns, incomplete, unfinished = [], [], [], [], [], []
    experiment = None  # the layers' recorded experiment (its subset names the line)
    for layer in listed:
        run = read_run_dir(path / f"layer_{layer:02d}")
        if run.status != "complete" or run.uar_mean is None:
            incomplete.append(layer)
            unfinished.append(run)
            continue
        experiment = experiment or run.experiment
        layers.append(layer)
        means.append(run.uar_mean)
        stds.append(run.uar_std or 0.0)
        ns.append(run.n_runs)
    if not layers:
        return None, unfinished
    weighted = read_run_dir(path / "all")
    protocol = str(summary.get("protocol", "?"))
    return {
        "label": _label(summary) + data_text(experiment), "corpus": CORPUS_NAMES.get(protocol, protocol),
        "path": str(path),
        "upstream": summary.get("upstream"), "layers": layers, "uar_mean": means, "uar_std": stds, "n": ns,
        "incomplete_layers": incomplete,
        "weighted": ({"uar_mean": weighted.uar_mean, "uar_std": weighted.uar_std or 0.0, "n": weighted.n_runs}
                     if weighted.status == "complete" else None),
    }, unfinished


#: How many folders below a given path run directories are looked for: a pipeline's output holds them at
#: ``experiments/<group>/<corpus>/<one folder per grid key>``, so 8 covers grids of up to 5 keys beside corpus.
SEARCH_DEPTH = 8


def find_run_dirs(paths: Sequence[Path], *, depth: int = SEARCH_DEPTH, keep_empty: bool = True) -> list[Path]:
    """Each path that is a run or sweep directory, or else the run and sweep directories below it.

    ``w2v2ser evaluate runs`` or a pipeline's ``output`` then reports every run inside (up to
    ``depth`` folders down, in name order); a path with none below is kept (``keep_empty``), and
    the report says what is missing there.
    """
    found = []
    for path in map(Path, paths):
        below = [run for run, _ in run_dirs_by_depth(path, depth=depth, plain=depth)]
        found += below or ([path] if keep_empty else [])
    return _distinct(found)


def run_dirs_by_depth(path: Path, *, depth: int, plain: int = SEARCH_DEPTH) -> list[tuple[Path, int]]:
    """The run and sweep directories :func:`find_run_dirs` finds at or below ``path``, up to ``depth`` folders
    down, each with how many folders below ``path`` it lies. Deeper than ``plain`` folders, dot-folders
    (``.git``, ``.venv``) and symbolic links to folders are not entered (a link to a parent repeats the walk)."""
    found: list[tuple[Path, int]] = []

    def walk(folder: Path, level: int) -> None:
        if (is_sweep_dir(folder) or any((folder / marker).is_file() for marker in _RUN_DIR_MARKERS)
                or list_run_files(folder / "runs")):  # a run folder whose training was cut short
            found.append((folder, level))
            return
        if level == depth or not folder.is_dir() or folder.suffix == ".zarr":
            return
        for child in sorted(folder.iterdir()):
            if level >= plain and (child.name.startswith(".") or child.is_symlink()):
                continue
            if child.is_dir():
                walk(child, level + 1)

    walk(Path(path), 0)
    return found


def _distinct(paths: Sequence[Path]) -> list[Path]:
    """``paths`` without a second mention of the same folder (``runs/a runs/a``, ``runs/a/`` and a
    shell glob that overlaps another argument)."""
    seen: set[Path] = set()
    out = []
    for path in paths:
        if (where := path.resolve()) not in seen:
            seen.add(where)
            out.append(path)
    return out


def expand_sweep_dirs(run_dirs: Sequence[Path]) -> tuple[list[Path], list[dict[str, Any]], list[RunSummary]]:
    """Replace each sweep folder by its ``all`` run directory; returns (run dirs, sweep lines, the
    sweeps' layer run directories that are not complete).

    The tables show a sweep through its ``all`` head and the sweep section only, so without the last
    a layer whose results are missing or damaged would drop out of the report without a word (a
    sweep that ``w2v2ser run`` failed is one failed row already, so its layers are not named).
    """
    runs: list[Path] = []
    sweeps: list[dict[str, Any]] = []
    unfinished: list[RunSummary] = []
    for p in map(Path, run_dirs):
        if not is_sweep_dir(p):
            runs.append(p)
            continue
        if current_failure(p, results="sweep.json") is not None:
            # `w2v2ser run` failed the sweep after its last summary: its layers' results are of an
            # earlier run, so the folder is one failed row and draws no line.
            runs.append(p)
            continue
        runs.append(p / "all")
        line, layers = _read_sweep(p)
        unfinished += layers
        if line is not None:
            sweeps.append({**line, "_folder": p})
    # Labels keep the model's last name part only: two checkpoints both called checkpoint-best (or
    # two orgs' wav2vec2-base) would share a legend entry and a table column; their folders tell them apart.
    repeated = Counter(s["label"] for s in sweeps)
    for line in sweeps:
        folder = line.pop("_folder")
        if repeated[line["label"]] > 1:
            line["label"] += f" [{folder.parent.name}/{folder.name}]"
    return _distinct(runs), sweeps, unfinished
