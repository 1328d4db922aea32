"""The stage 2 and pipeline commands: ``train`` and ``sweep`` (their options into an
:class:`~w2v2ser.train.ExperimentConfig`), ``evaluate``, ``predict`` and ``run``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from w2v2ser._common import EXIT_FAILED, first_few
from w2v2ser._text import merge_subset
from w2v2ser._overrides import load_value


def _given_options(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The experiment keys given as options (they default to None; ExperimentConfig's defaults apply)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _apply_settings(values: dict[str, Any], settings: Sequence[str]) -> None:
    """``--set KEY=VALUE``: recipe keys go to ``recipe_overrides``, the rest are experiment keys."""
    from w2v2ser._common import ConfigError, did_you_mean
    from w2v2ser.train import ExperimentConfig, Recipe

    recipe_keys = set(Recipe.__dataclass_fields__) - {"name"}
    known = sorted(recipe_keys | set(ExperimentConfig.__dataclass_fields__) - {"stores", "recipe_overrides"})
    overrides: dict[str, Any] = {}
    options = set(values)  # options default to None: a key in values was given as an option
    for text in settings:
        key, sep, raw = text.partition("=")
        if not sep:
            raise ConfigError(f"--set {text!r} is not KEY=VALUE, e.g. --set learning_rate=3e-4 or --set units=64.")
        if key.removeprefix("recipe_overrides.") in recipe_keys:  # pipeline.yaml's spelling, taken as well
            key = key.removeprefix("recipe_overrides.")
        if key not in known:  # recipe and experiment keys together, as --set takes them
            raise ConfigError(f"--set {text!r}: unknown key {key!r}.{did_you_mean(key, known)} "
                              f"Valid keys: {', '.join(known)}.")
        if key in options:  # a second --set of the same key wins, as before
            raise ConfigError(f"{key} is given both with --{key.replace('_', '-')} and with --set {key}=...; "
                              f"give it once")
        (overrides if key in recipe_keys else values)[key] = load_value(raw)
    if overrides:
        values["recipe_overrides"] = overrides


def _default_protocol(values: dict[str, Any], store: str) -> None:
    """Without --protocol (or --set protocol=...), use the protocol of the store's corpus."""
    if values.get("protocol") is None:
        from w2v2ser.train import protocol_of_store

        subset = values.get("subset")
        # an unopenable or incomplete store: its own error; of several corpora, --subset corpus=NAME picks one
        values["protocol"] = protocol_of_store(store, subset=subset.get("corpus") if isinstance(subset, dict) else None)


def _refuse_inside_store(path: str, option: str, *, itself: bool = True) -> None:
    """:func:`w2v2ser.store._layout.refuse_inside_store`, imported when a command runs."""
    from w2v2ser.store._layout import refuse_inside_store

    refuse_inside_store(path, option, itself=itself)


def _cmd_train(args: argparse.Namespace) -> int:
    from w2v2ser._common import ConfigError
    from w2v2ser.train import ExperimentConfig, format_uar, train_experiment
    from w2v2ser.train._head_names import fusion_heads, reads_fusion

    _refuse_inside_store(args.out, "--out")
    stores = {"main": args.store, **({"fusion": args.fusion_store} if args.fusion_store else {})}
    values = _given_options(args, "features", "fusion_features", "head", "norm", "protocol", "recipe", "seeds")
    _apply_settings(values, args.set)
    values["stores"] = stores
    head = values.get("head", "dense")
    if args.fusion_store and not reads_fusion(head):
        heads = " or ".join(f"--head {name}" for name in fusion_heads() or ["fusion"])
        raise ConfigError(f"--fusion-store {args.fusion_store} is read only by {heads}, got --head {head}; "
                          f"add {heads} or drop --fusion-store")
    _add_data_options(values, args)
    _default_protocol(values, args.store)
    config = ExperimentConfig.from_dict(values)
    results = train_experiment(config, out=Path(args.out), progress=not args.no_progress, threads=args.threads)
    from w2v2ser.evaluate._rundir import data_text  # " (method=improvised; 4 speaker folds)", as the report names it

    print(f"{config.features} / {config.head} / {config.norm} / {config.recipe} / {config.protocol}"
          f"{data_text({'subset': config.subset, 'speaker_folds': config.speaker_folds})}: "
          f"{format_uar(results)} -> {args.out}/results.json")
    return _missing_runs(results, args.out, "train")


def _missing_runs(results: Mapping[str, Any], out: str, command: str) -> int:
    """Exit 1, saying so, when results.json lacks planned runs (see missing_runs_message)."""
    from w2v2ser.train import missing_runs_message

    message = missing_runs_message(results, out, command)
    if not message:
        return 0
    print(f"w2v2ser: error: {message}", file=sys.stderr)
    return EXIT_FAILED


def _same_sweep(a: str, b: str) -> bool:
    """Whether two --features selections of `sweep` name the same layers (``wav2vec2`` and ``wav2vec2:all``)."""
    from w2v2ser.train import SelectionError, parse_selection

    try:
        x, y = parse_selection(a), parse_selection(b)
    except SelectionError:  # reported with its reason when the sweep's config is built
        return a == b
    return (x.alias, x.feature, x.layers or "all") == (y.alias, y.feature, y.layers or "all")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from w2v2ser._common import ConfigError
    from w2v2ser.train import ALL_LAYERS_DIR, ExperimentConfig, describe_sweep, plan_runs, sweep_configs, sweep_experiment

    _refuse_inside_store(args.out, "--out")
    values = _given_options(args, "features", "head", "norm", "protocol", "recipe", "seeds")
    _apply_settings(values, args.set)
    values["stores"] = {"main": args.store}
    _add_data_options(values, args)
    _default_protocol(values, args.store)
    given = values.pop("features")
    upstreams = []
    for text in (f.strip() for f in given.split(",") if f.strip()):
        same = [u for u in upstreams if _same_sweep(u, text)]
        if same:  # wav2vec2 and wav2vec2:all sweep the same layers: train them once
            print(f"w2v2ser: note: {text!r} sweeps the same layers as {same[0]!r}; swept once", file=sys.stderr)
        else:
            upstreams.append(text)
    if not upstreams:
        raise ConfigError(f"--features {given!r} names no upstream to sweep; give one or more, e.g. "
                          f"--features wav2vec2 or --features hubert,wavlm:1-12")
    configs = {upstream: ExperimentConfig.from_dict({**values, "features": upstream}) for upstream in upstreams}
    for config in configs.values():  # every selection is checked before the first sweep trains
        plan_runs(sweep_configs(config)[ALL_LAYERS_DIR])
    code = 0
    for upstream, config in configs.items():
        out = Path(args.out) if len(upstreams) == 1 else Path(args.out) / upstream.replace("/", "_").replace(":", "_")
        summary = sweep_experiment(config, out=out, progress=not args.no_progress, threads=args.threads)
        print(f"{upstream}: {describe_sweep(summary)} -> {out}/sweep.json")
        # Every head has the same runs: the weighted average's results.json speaks for all.
        code = max(code, _missing_runs(json.loads((out / ALL_LAYERS_DIR / "results.json").read_text()),
                                       str(out / ALL_LAYERS_DIR), "sweep"))
    return code


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from w2v2ser._common import did_you_mean
    from w2v2ser.evaluate import EvaluateError, write_report
    from w2v2ser.evaluate._sweep import SEARCH_DEPTH, _distinct, run_dirs_by_depth

    _refuse_inside_store(args.out, "--out")
    baselines = _distinct([Path(p) for p in args.baseline or []])  # one folder given twice is one baseline
    if len(baselines) > 1:  # argparse kept the last one only: the other comparisons were dropped unsaid
        raise EvaluateError(f"--baseline is given {len(baselines)} times ({', '.join(map(str, baselines))}); "
                            "expected one: a report compares every run directory with one baseline. Write one "
                            "report per baseline, each with its own --out.")
    # One walk per path, twice the search's depth: the run dirs below that depth are not in the report (said below)
    walked: dict[Path, list[tuple[Path, int]]] = {}
    for given in map(Path, args.run_dirs):  # a mistyped path is bad input, not an incomplete run
        if not given.is_dir():
            if given.exists():
                what, hint = "is a file", f" Pass its folder, {given.parent}."
            else:
                nearby = [p.name for p in given.parent.iterdir()] if given.parent.is_dir() else []
                what, hint = "does not exist", did_you_mean(given.name, nearby)
            raise EvaluateError(f"{given} {what}; expected a run directory (`w2v2ser train --out`), a sweep "
                                f"folder or a folder of them, e.g. a pipeline's output.{hint}")
        walked[given] = run_dirs_by_depth(given, depth=2 * SEARCH_DEPTH)
        if not any(level <= SEARCH_DEPTH for _, level in walked[given]):  # a folder of audio, models or nothing
            raise EvaluateError(f"{given} holds no run or sweep directory (no experiment.json or results.json in it "
                                f"or up to {SEARCH_DEPTH} folders below); expected a `w2v2ser train --out` or `w2v2ser sweep "
                                f"--out` folder, or a folder of them, e.g. a pipeline's output.")
    out = write_report([Path(p) for p in args.run_dirs], out=Path(args.out),
                       baseline=Path(baselines[0]) if baselines else None)
    print(f"wrote {out}")
    # A run dir left out of the tables (unfinished, or a results.json that cannot be read) is said
    # here too, not only in the report: otherwise a damaged run vanishes from the tables unnoticed.
    runs = json.loads((out.parent / "report.json").read_text(encoding="utf-8"))["runs"]
    left_out: dict[str, list[str]] = {}  # reason -> run dirs: the heads of one unfinished sweep, said once
    for run in (r for r in runs if r["status"] == "incomplete"):
        left_out.setdefault(run["reason"], []).append(run["path"])
    for reason, paths in left_out.items():
        what = paths[0] if len(paths) == 1 else f"{len(paths)} run directories ({first_few(paths, 2)})"
        print(f"w2v2ser: warning: {what} {'is' if len(paths) == 1 else 'are'} not in the tables: {reason}",
              file=sys.stderr)
    # Run dirs below the search's depth are not in the report: say so, unless another path given names them.
    reported = {p.resolve() for found in walked.values() for p, level in found if level <= SEARCH_DEPTH}
    for given, found in walked.items():
        deeper = [str(p) for p, level in found if level > SEARCH_DEPTH and p.resolve() not in reported]
        if deeper:
            print(f"w2v2ser: warning: {len(deeper)} run director{'y lies' if len(deeper) == 1 else 'ies lie'} more "
                  f"than {SEARCH_DEPTH} folders below {given} and {'is' if len(deeper) == 1 else 'are'} not in the "
                  f"report ({first_few(deeper, 2)}); pass a folder nearer to them", file=sys.stderr)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from w2v2ser.evaluate._cli import predict_from_cli

    return predict_from_cli(args)


def _cmd_run(args: argparse.Namespace) -> int:
    if args.schema:
        from w2v2ser._config_schema import pipeline_json_schema

        print(json.dumps(pipeline_json_schema(), indent=2))
        return 0
    if args.pipeline is None:
        from w2v2ser._common import ConfigError

        raise ConfigError("w2v2ser run: give the pipeline file, e.g. `w2v2ser run pipeline.yaml` "
                          "(or --schema to print its JSON Schema)")
    from w2v2ser._run import run_pipeline

    return run_pipeline(Path(args.pipeline), stage=args.stage, overrides=args.set, progress=not args.no_progress)


def _add_data_options(values: dict[str, Any], args: argparse.Namespace) -> None:
    """``--subset`` conditions (a field given twice: one list) and ``--speaker-folds`` into the experiment."""
    from w2v2ser._common import ConfigError

    given: dict[str, Any] = {}
    if args.subset:
        given["subset"] = merge_subset(args.subset)
    if args.speaker_folds is not None:
        given["speaker_folds"] = args.speaker_folds
    clash = sorted(given.keys() & values.keys())
    if clash:
        raise ConfigError(f"{clash[0]} is given both with --{clash[0].replace('_', '-')} and with --set "
                          f"{clash[0]}=...; give it once")
    values.update(given)
