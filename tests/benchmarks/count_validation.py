"""Count the configuration-validation code at two git revisions, by one fixed rule (issue 15).

What counts: the source lines of the units listed in ``UNITS`` (functions, methods, classes and
module-level assignments whose job is to check user-supplied configuration or to format its
errors) that are not blank, not comment-only and not part of a docstring. ``"*"`` stands for a
whole module except its docstring, imports and ``__all__``. The same list is applied to every
revision; a unit a revision lacks counts 0 there (and is reported as absent).

Left out at every revision: the ``${VAR}`` / ``--set`` machinery (w2v2ser/_overrides.py, the old
``apply_overrides``/``_expand_env``), plain data holders and their fields, ``to_dict``,
derived values (``config_key``, ``identity``), and the store reader's lookups of feature names
and utterance ids (they check a read, not a configuration).

Usage:
    python tests/benchmarks/count_validation.py                # 654b666 (before issue 15) vs the working tree
    python tests/benchmarks/count_validation.py --after HEAD   # ... vs a commit
    python tests/benchmarks/count_validation.py --details      # one line per unit
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import subprocess
import sys
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# file -> units. Before issue 15 the checks lived in w2v2ser/_config.py, train/_config.py,
# train/_recipes.py, store/_types.py and the extractor configs (with extract's reject_unknown_keys).
UNITS: dict[str, list[str]] = {
    "w2v2ser/_config.py": [
        # helpers and constants of the hand-written checks
        "CORPUS_KINDS", "CLUSTER_KINDS", "_TOP_KEYS", "_EXPERIMENT_KEYS_OWN", "_type_name", "_check_keys", "_join",
        "_expect", "_positive_int", "_choice",
        # the schema (after issue 15)
        "_auto_to_none", "_as_text", "_as_tuple", "_auto", "_Text", "_Lines", "_Names", "_StoreName", "SlurmConfig",
        "ClusterConfig", "CorpusEntry", "ReportEntry", "ExperimentKeys", "_feature_model", "pipeline_model",
        "_FileJsonSchema", "pipeline_json_schema",
        # checks of sections and of references between them
        "_resolve_path", "_prepare", "_parse_corpora", "_feature_config", "_parse_extraction", "_parse_stores",
        "_parse_cluster", "_SELECTION", "_check_selection", "_train_fields", "_check_experiment",
        "_expand_experiments", "_expand_group", "_parse_reports", "load_pipeline",
        # added after 654b666: SLURM value checks, a model's layer count, the YAML error hint
        "_slurm_memory", "_WALLTIME", "_slurm_walltime", "_layer_count", "_unquoted_variable_hint",
    ],
    # split out of w2v2ser/_config.py (pure moves): the same units, counted where they now live
    "w2v2ser/_config_schema.py": [
        "CORPUS_KINDS", "CLUSTER_KINDS", "_auto_to_none", "_as_text", "_as_tuple", "_auto", "_Text", "_Lines",
        "_Names", "_StoreName", "SlurmConfig", "ClusterConfig", "CorpusEntry", "ReportEntry", "_feature_model",
        "pipeline_model", "_FileJsonSchema", "pipeline_json_schema", "_slurm_memory", "_WALLTIME", "_slurm_walltime",
    ],
    "w2v2ser/_config_paths.py": ["_resolve_path", "_layer_count"],
    "w2v2ser/_schema.py": ["*"],
    "w2v2ser/_common.py": ["did_you_mean"],
    "train/_config.py": ["Head", "_PositiveInt", "HEAD_NAMES", "ExperimentConfig.__post_init__",
                         "ExperimentConfig.from_dict"],
    "train/_recipes.py": ["Recipe.__post_init__", "Recipe.from_dict", "Recipe.with_overrides", "get_recipe",
                          "reject_unknown_keys"],
    "store/_types.py": ["_DTYPES", "_reject_unknown", "FeatureSpec.__post_init__", "FeatureSpec.from_dict"],
    "extract/_errors.py": ["reject_unknown_keys"],
    "extract/_audio.py": ["check_sample_rate", "SampleRate"],
    "extract/_egemaps.py": ["_FEATURE_SETS", "_FEATURE_LEVELS", "FeatureSet", "EgemapsConfig.__post_init__",
                            "EgemapsConfig.from_dict"],
    "extract/_spectrogram.py": ["_WINDOWS", "_Samples", "_Milliseconds", "_ms_to_samples", "_positive_samples", "SpectrogramConfig.__post_init__",
                                "SpectrogramConfig.from_dict"],
    "extract/_wav2vec2.py": ["_DEVICES", "_DTYPES", "_PRECISIONS", "_ATTENTIONS", "_Seconds", "device_problem", "_check_device",
                             "_explain_device", "Device",
                             "Wav2Vec2Config.__post_init__", "Wav2Vec2Config.from_dict"],
    "extract/_registry.py": ["_lookup"],
    "extract/_corpora.py": ["read_corpus"],
}


# Units that check references between sections or against the disk (corpus paths, selections
# against the stores, layer counts from a model's config.json, report patterns against experiment
# names): a static schema cannot express these, so they are also reported apart.
CROSS_REFERENCE = {"_resolve_path", "_prepare", "_parse_corpora", "_feature_config", "_parse_extraction",
                   "_parse_stores", "_SELECTION", "_check_selection", "_expand_experiments", "_expand_group", "_parse_reports",
                   "load_pipeline", "_layer_count"}


def _source(revision: str | None, path: str) -> str | None:
    if revision is None:
        file = REPO / path
        return file.read_text(encoding="utf-8") if file.exists() else None
    done = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=REPO, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def _code_lines(source: str) -> set[int]:
    """Lines holding code: not blank, not comment-only, not inside a docstring."""
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                          tokenize.ENDMARKER):
            continue
        lines.update(range(token.start[0], token.end[0] + 1))
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                lines -= set(range(first.lineno, first.end_lineno + 1))
    return lines


def _span(node: ast.AST) -> set[int]:
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return set(range(start, node.end_lineno + 1))


def _named(tree: ast.Module) -> dict[str, ast.AST]:
    """Qualified name -> node, for top-level defs/classes/assignments and methods of classes."""
    found: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        found[f"{node.name}.{item.name}"] = item
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node
    return found


def count(revision: str | None) -> dict:
    """Validation lines per file and unit at ``revision`` (None = the working tree)."""
    files: dict[str, dict] = {}
    for path, units in UNITS.items():
        source = _source(revision, path)
        if source is None:
            files[path] = {"lines": 0, "cross_reference": 0, "units": {}, "absent": list(units)}
            continue
        tree, code = ast.parse(source), _code_lines(source)
        named, per_unit, absent = _named(tree), {}, []
        for unit in units:
            if unit == "*":
                skip = {n for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)) for n in _span(node)}
                skip |= {n for node in tree.body if isinstance(node, ast.Assign)
                         and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
                         for n in _span(node)}
                per_unit[unit] = code - skip
            elif unit in named:
                per_unit[unit] = code & _span(named[unit])
            else:
                absent.append(unit)
        counted = set().union(*per_unit.values()) if per_unit else set()
        cross = set().union(*(v for u, v in per_unit.items() if u in CROSS_REFERENCE))
        files[path] = {"lines": len(counted), "cross_reference": len(cross),
                       "units": {u: len(v) for u, v in per_unit.items()}, "absent": absent}
    return {"revision": revision or "working tree", "total": sum(f["lines"] for f in files.values()),
            "cross_reference": sum(f["cross_reference"] for f in files.values()), "files": files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="654b666", help="revision before issue 15 (default 654b666)")
    parser.add_argument("--after", default=None, help="revision to compare (default: the working tree)")
    parser.add_argument("--details", action="store_true", help="print every unit's count")
    parser.add_argument("--json", type=Path, help="also write the counts to this JSON file")
    args = parser.parse_args(argv)
    before, after = count(args.before), count(args.after)
    print(f"{'file':28} {'before':>7} {'after':>7}")
    for path in UNITS:
        print(f"{path:28} {before['files'][path]['lines']:7d} {after['files'][path]['lines']:7d}")
        if args.details:
            for unit in UNITS[path]:
                b, a = before["files"][path]["units"].get(unit), after["files"][path]["units"].get(unit)
                if b is not None or a is not None:
                    print(f"    {unit:40} {'-' if b is None else b:>7} {'-' if a is None else a:>7}")
    ratio = after["total"] / before["total"] if before["total"] else float("nan")
    print(f"{'total':28} {before['total']:7d} {after['total']:7d}   after/before = {ratio:.2f}")
    rest = [r["total"] - r["cross_reference"] for r in (before, after)]
    print(f"{'  cross-reference checks':28} {before['cross_reference']:7d} {after['cross_reference']:7d}")
    print(f"{'  type/key/choice + schema':28} {rest[0]:7d} {rest[1]:7d}   after/before = "
          f"{rest[1] / rest[0] if rest[0] else float('nan'):.2f}")
    if args.json:
        args.json.write_text(json.dumps({"before": before, "after": after, "ratio": ratio}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
