"""Report markdown: report.md rendered from report.json's data (tables, sources, recall per class,
baseline comparison, layer weights, layer sweep and notes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ._paper import paper_source
from ._reportentries import _seeds_text
from ._reporttables import _spread
from ._rundir import RunSummary


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


def _text(name: Any) -> str:
    """``name`` (a run directory's, an experiment's) as Markdown that shows it as written: ``*c*``,
    backticks, ``<br>``, ``[x](y)`` and ``_x_`` were rendered as emphasis, code, HTML or links.
    An underscore inside a word (``wav2vec2_all``) is never emphasis and is left as it is; ``|`` is
    the table's to escape."""
    return re.sub(r"[\\`*<>\[\]~&$]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", lambda m: "\\" + m.group(), str(name))


def _code(text: Any) -> str:
    """``text`` as a Markdown code span, fenced by more backticks than any run of them inside it."""
    text = str(text)
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    escape = lambda s: str(s).replace("|", "\\|")  # noqa: E731 -- cells may contain pipes
    lines = ["| " + " | ".join(map(escape, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in rows]
    return lines


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
    rows = [[_text(e["name"]), e["status"], e["corpus"], e["features"], e["head"], e["recipe"],
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
            by_reason.setdefault(e["reason"], []).append(_code(e["name"]))
        lines += ["", "## Skipped experiments", ""]
        lines += [f"- {reason} ({len(names)} experiment{'s' * (len(names) > 1)}: {', '.join(names)})"
                  for reason, names in by_reason.items()]
    incomplete = [e for e in entries if e["status"] == "incomplete"]
    if incomplete:
        lines += ["", "## Incomplete run directories", ""]
        lines += [f"- {_code(e['path'])}: {e['reason']}" for e in incomplete]
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
        parts = [_code(e["path"])]
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
        lines.append(f"- **{_text(e['name'])}**: " + "; ".join(parts))
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
        rows = [[_text(e["name"]), *("—" if e["recall_per_class"][c] is None else f"{e['recall_per_class'][c]:.1f}"
                              for c in classes)] for e in members]
        lines += [""] + _markdown_table(["Run dir", *classes], rows)
    return lines


def _comparison_markdown(comparison: dict[str, Any] | None) -> list[str]:
    """Section of ``compare_with_baseline``'s rows (nothing without a baseline)."""
    if not comparison:
        return []
    lines = ["", f"## Against the baseline {_text(comparison['baseline'])}", "",
             f"Baseline UAR {_spread(comparison['uar_mean'], comparison['uar_std'], comparison['n'])}. "
             "Difference: the row's mean UAR minus the baseline's, in points. p: Welch's two-sided t-test "
             "over the two run directories' UAR values (n each), not corrected for comparing several rows "
             "with one baseline; it needs at least 2 values on each side and some spread: — where a side has "
             "one value, or every value of both sides is the same (each seed scored alike).", ""]
    rows = [[_text(r["name"]), _spread(r["uar_mean"], r["uar_std"], r["n"]),
             "not compared" if r["not_compared"] else f"{r['difference']:+.1f}",
             r["not_compared"] or ("—" if r["p_welch"] is None else f"{r['p_welch']:.2g}")]
            for r in comparison["rows"]]
    return lines + (_markdown_table(["Run dir", "UAR %", "Difference", "p (Welch)"], rows) if rows
                    else ["No other finished run directory."])


def _weights_markdown(series: Sequence[dict]) -> list[str]:
    """Table layer x run directory of the normalised weights (mean ± std over its runs)."""
    header = ["Layer"] + [f"{_text(s['label'])} · {s['corpus']} (n={s['n']})" for s in series]
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
    header = ["Layer"] + [f"{_text(s['label'])} · {s['corpus']}" for s in series]
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
