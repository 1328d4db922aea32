"""Figures of the report: confusion matrices, the layer-weight plot (paper, Figure 2), the layer sweep.

Figures are matplotlib ``Figure`` objects rendered by Agg, without pyplot (no display on cluster
nodes, no global figure registry), and matplotlib is imported with the first figure, so commands
that draw none do not pay its import (about 0.5 s). Every PNG is written to a temporary name in the
destination folder and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from w2v2ser._files import write_atomically

from ._rundir import RunSummary

if TYPE_CHECKING:
    import matplotlib.axes
    import matplotlib.figure

__all__ = ["save_figure_atomically", "plot_confusion", "plot_layer_weights", "plot_layer_sweep"]


def _new_figure(*, figsize: tuple[float, float]) -> "matplotlib.figure.Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def save_figure_atomically(fig: "matplotlib.figure.Figure", path: Path, *, dpi: int = 120,
                           key: str | None = None) -> Path:
    """Save ``fig`` as PNG to ``path`` through a temp file + rename; ``key`` (what the figure was drawn
    from, see :func:`_drawn_key`) goes into its metadata."""
    import matplotlib

    metadata = {_KEY_FIELD: key} if key else None
    # Labels and names are the user's text, never math: a class `jo$\q$ie` ended evaluate in a ValueError.
    with matplotlib.rc_context({"text.parse_math": False}):
        _legible(fig)
        return write_atomically(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi,
                                                                 bbox_inches="tight", metadata=metadata))


@functools.lru_cache(maxsize=None)
def _charmap(font_file: str) -> frozenset[int]:
    """The code points a font file draws."""
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(font_file).get_charmap())
    except (OSError, RuntimeError, ValueError):  # a font matplotlib lists but cannot read
        return frozenset()


@functools.lru_cache(maxsize=None)
def _font_drawing(char: str) -> str | None:
    """The family name of an installed font that draws ``char``, or None (matplotlib's own "Last Resort" font
    maps every character to the box of its Unicode block, not to the character)."""
    from matplotlib import font_manager

    return next((font.name for font in font_manager.fontManager.ttflist
                 if not font.name.startswith("Last Resort") and ord(char) in _charmap(font.fname)), None)


def _undrawable(text: str) -> set[str]:
    """The characters of ``text`` that no installed font draws."""
    return {c for c in text if not c.isascii() and c.isprintable() and _font_drawing(c) is None}


def _legible_text(text: str) -> str:
    """``text`` with the characters no installed font draws as escapes (``\\u6012``): boxes tell no label
    from another. For tick labels, which are set again at each draw."""
    undrawable = _undrawable(text)
    return "".join(f"\\u{ord(c):04x}" if c in undrawable else c for c in text)


def _legible(fig: "matplotlib.figure.Figure") -> None:
    """Draw the characters of a figure's texts that its font lacks (怒り in DejaVu Sans: boxes, and a warning
    per glyph) in an installed font that has them, and those that no installed font has as escapes; no
    text is read as math."""
    from matplotlib import font_manager
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_parse_math(False)
        content = text.get_text()
        if content.isascii():
            continue
        drawn = _charmap(font_manager.findfont(text.get_fontproperties()))
        missing = sorted({c for c in content if ord(c) not in drawn and c.isprintable()} - _undrawable(content))
        if missing:
            text.set_fontfamily([*text.get_fontfamily(), *dict.fromkeys(map(_font_drawing, missing))])
        text.set_text(_legible_text(content))


#: PNG text field that records what a confusion figure was drawn from.
_KEY_FIELD = "w2v2ser-figure"
#: The version of plot_confusion's drawing (colours, texts, sizes): bump it with every change of how it draws,
#: so that a rewritten report draws again the figures an earlier w2v2ser drew.
_CONFUSION_STYLE = 2
#: Resolution of the confusion figures (part of what they were drawn from).
_CONFUSION_DPI = 120


def _drawn_key(*parts: object) -> str:
    """Digest of everything a figure shows, and of the matplotlib that draws it."""
    from importlib.metadata import version

    return hashlib.sha256(repr((parts, version("matplotlib"))).encode("utf-8")).hexdigest()


def _already_drawn(path: Path, key: str) -> bool:
    """Whether ``path`` is a PNG this module drew from the same inputs (its metadata holds ``key``)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return getattr(image, "text", {}).get(_KEY_FIELD) == key
    except (OSError, ValueError, SyntaxError):  # missing, damaged, not a PNG: draw it
        return False


def plot_confusion(run: RunSummary, path: Path) -> Path | None:
    """Row-normalised confusion matrix with raw counts annotated; None when results lack one."""
    if run.confusion is None or run.confusion.ndim != 2 or run.confusion.size == 0:
        return None
    counts = run.confusion
    n = counts.shape[0]
    classes = list(run.classes) if len(run.classes) == n else [str(i) for i in range(n)]
    std = f" ± {run.uar_std:.1f}" if run.uar_std is not None else ""
    # The counts add up every run's test predictions: say so, or 3 seeds' 24 files read as 72 files.
    # The runs results.json summed, not those on disk now: a run folder deleted (or not copied) since
    # leaves the matrix as it was, and the title said "2 runs" of 3 runs' counts.
    summed = (run.results or {}).get("n_runs")
    if not isinstance(summed, int) or isinstance(summed, bool):
        summed = run.runs_finished
    pooled = f"\ncounts: test predictions of {summed} runs summed" if summed > 1 else ""
    title = (f"{run.corpus}: {run.features}\nhead {run.head}, {run.normalisation} norm., "
             f"UAR {run.uar_mean:.1f}{std} % (n={run.n_runs}){pooled}")
    # A report over hundreds of run directories drew each figure again at every rewrite (about 1 s each on
    # 2 cores: 10 min for 300): one drawn from the same counts, classes and title is kept as it is.
    key = _drawn_key(counts.tolist(), classes, title, _CONFUSION_STYLE, _CONFUSION_DPI)
    if _already_drawn(path, key):
        return path
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    size = max(4.0, 0.75 * n + 2.0)
    fig = _new_figure(figsize=(size + 1.0, size))
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    for i in range(n):
        for j in range(n):
            colour = "white" if rates[i, j] > 0.5 else "black"
            ax.text(j, i, f"{rates[i, j]:.2f}\n({int(round(counts[i, j]))})", ha="center",
                    va="center", color=colour, fontsize=8)
    ax.set_xticks(range(n), [_legible_text(c) for c in classes], rotation=45, ha="right")
    ax.set_yticks(range(n), [_legible_text(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return save_figure_atomically(fig, path, dpi=_CONFUSION_DPI, key=key)


def layer_weight_series(runs: Sequence[RunSummary], labels: Sequence[str]) -> list[dict]:
    """Figure 2's lines: one per run directory with layer weights, never pooled across directories
    (their heads, normalisation or recipes differ, and so do the weights they learn).

    Args:
        runs: Run summaries.
        labels: One legend label per run (e.g. model, selection, head, normalisation).

    Returns:
        Items with ``label``, ``corpus``, ``layers`` (the layer each weight belongs to), ``mean``
        and ``std`` (over the directory's runs, per layer) and ``n`` (runs).
    """
    series = []
    for run, label in zip(runs, labels):
        if not run.layer_weights:
            continue
        values = np.asarray(run.layer_weights, dtype=np.float64)
        series.append({"label": label, "corpus": run.corpus, "layers": list(run.weight_layers),
                       "mean": values.mean(axis=0).tolist(), "std": values.std(axis=0).tolist(),
                       "n": len(values)})
    return series


def plot_layer_weights(series: Sequence[dict], path: Path) -> Path | None:
    """Figure 2 of the paper: normalised α per layer, mean ± std over runs, a line per run directory.

    ``series``: the items of :func:`layer_weight_series`. One panel per corpus. Returns None when
    there is nothing to draw.
    """
    if not series:
        return None
    corpora = sorted({s["corpus"] for s in series})
    fig = _new_figure(figsize=(6.5 * len(corpora), 4.2))
    axes = fig.subplots(1, len(corpora), squeeze=False)
    for ax, corpus in zip(axes[0], corpora):
        most = 0
        for s in (s for s in series if s["corpus"] == corpus):
            most = max(most, max(s["layers"]) + 1)
            ax.errorbar(s["layers"], s["mean"], yerr=s["std"], marker="o", capsize=3,
                        label=f"{s['label']} (n={s['n']})")
        _label_layer_axes(ax, ticks=range(most) if most <= 26 else range(0, most, 2),
                          ylabel="normalised weight α", title=f"{corpus}: learned layer weights", legend_size=7)
    return save_figure_atomically(fig, path)


def _label_layer_axes(ax: "matplotlib.axes.Axes", *, ticks: Iterable[int], ylabel: str, title: str,
                      legend_size: int) -> None:
    """The axes of a per-layer panel: layer ticks, labels, grid and legend."""
    ticks = sorted(set(ticks))
    # Labels of 25 layers (large models) run together at this width: label every other one, all ticked.
    step = 1 if len(ticks) <= 16 else 2
    ax.set_xticks(ticks, [str(t) if k % step == 0 else "" for k, t in enumerate(ticks)])
    ax.set_xlabel("layer (0 = local encoder output)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # Below the axes (the saved figure grows to hold it): inside, it covered points and error bars.
    entries = len(ax.get_legend_handles_labels()[1])
    ax.legend(fontsize=legend_size, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2 if entries > 3 else 1,
              frameon=False)


def plot_layer_sweep(series: Sequence[dict], path: Path) -> Path | None:
    """UAR per layer with ± std error bars over seeds (a sweep pools its folds), one line per upstream,
    one panel per corpus.

    ``series`` items: ``label``, ``corpus``, ``layers``, ``uar_mean``/``uar_std`` (percent, per
    layer) and ``weighted`` (the weighted-average head's ``uar_mean``/``uar_std``), drawn as a
    dashed line of the same colour. Returns None when there is nothing to draw.
    """
    if not series:
        return None
    corpora = sorted({s["corpus"] for s in series})
    fig = _new_figure(figsize=(6.5 * len(corpora), 4.2))
    axes = fig.subplots(1, len(corpora), squeeze=False)
    for ax, corpus in zip(axes[0], corpora):
        most = 0
        for s in (s for s in series if s["corpus"] == corpus):
            # A layer without a result is a gap in the line (NaN), not a segment joining its neighbours.
            gaps = sorted(set(s.get("incomplete_layers", ())) - set(s["layers"]))
            layers = np.asarray([*s["layers"], *gaps])
            order = np.argsort(layers)
            means = np.asarray([*s["uar_mean"], *[np.nan] * len(gaps)], dtype=np.float64)[order]
            stds = np.asarray([*s["uar_std"], *[np.nan] * len(gaps)], dtype=np.float64)[order]
            layers = layers[order]
            most = max(most, int(layers.max()) + 1)
            line = ax.errorbar(layers, means, yerr=stds, marker="o", capsize=3,
                               label=f"{s['label']} (n={min(s['n'])})"
                                     + (f"; layer{'s' * (len(gaps) > 1)} {', '.join(map(str, gaps))} incomplete" if gaps else ""))
            weighted = s.get("weighted")
            if weighted and weighted.get("uar_mean") is not None:
                colour = line[0].get_color()
                ax.axhline(weighted["uar_mean"], color=colour, linestyle="--", linewidth=1,
                           label=f"{s['label']}: weighted average {weighted['uar_mean']:.1f}"
                                 + (f" ± {weighted['uar_std']:.1f}" if weighted.get("n", 0) > 1 else ""))
        _label_layer_axes(ax, ticks=range(most) if most <= 26 else range(0, most, 2),
                          ylabel="UAR % (mean ± std over seeds)", title=f"{corpus}: Dense probe per layer",
                          legend_size=7)
    return save_figure_atomically(fig, path)
