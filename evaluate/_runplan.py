"""What a trained run directory predicts with: its models, classes, branches and the feature settings
new audio is extracted with (``_plan``), refusing a run dir, ``--run`` or moved ``--store`` that cannot give
the training features, and the settings derived from that plan (crop, speech-encoder limits, rates).
"""

from __future__ import annotations

import csv
import json
import logging
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from w2v2ser._common import W2v2serError, did_you_mean, first_few
from w2v2ser.train import damaged_run_files, list_run_files

from ._errors import PredictError, RunDirError
from ._rundir import _configured_seeds, current_runs
from ._sweep import find_run_dirs

__all__ = ["resolve_feature"]

log = logging.getLogger("w2v2ser.evaluate")


@dataclass(frozen=True)
class _Branch:
    """One model input: which training store and selection feed it."""

    name: str
    alias: str
    store: str  # a local path or an object-store URL
    selection: str


@dataclass(frozen=True)
class _Like:
    """Where stage 1 takes one training store's feature settings from (``--like``)."""

    source: str  # the run dir (its experiment.json records them) or the training store
    features: Mapping[str, Any]  # feature name -> FeatureSpec
    rates: Mapping[str, set]  # feature name -> rates of the training audio behind it


@dataclass(frozen=True)
class _RunPlan:
    run_dir: Path
    config: Any  # w2v2ser.train ExperimentConfig
    classes: tuple[str, ...]
    models: tuple[Path, ...]
    branches: tuple[_Branch, ...]
    max_frames: int | None
    likes: Mapping[str, _Like]  # training store path (a branch's store) -> its feature settings


def _read_json(path: Path, *, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing; expected {what}. Pass a run directory written by "
                          "`w2v2ser train` whose training finished.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path} is unreadable ({exc}); expected {what} as JSON. Re-run `w2v2ser train` "
                          "for this experiment.") from exc


def _experiment_config(experiment: Mapping[str, Any], path: Path) -> Any:
    """ExperimentConfig from experiment.json (its own fields; store identities are ignored)."""
    import dataclasses

    from w2v2ser.train import ExperimentConfig

    source = experiment.get("config") if isinstance(experiment.get("config"), Mapping) else experiment
    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    try:
        return ExperimentConfig.from_dict({k: v for k, v in source.items() if k in names})
    except Exception as exc:  # noqa: BLE001 -- any config problem is a run-dir problem here
        raise RunDirError(f"{path}: cannot rebuild the experiment configuration ({exc}); the run dir was "
                          "written by another w2v2ser version. Retrain it with this version.") from exc


def _classes(run_dir: Path, results: Mapping[str, Any] | None, runs: Sequence[Path]) -> tuple[str, ...]:
    if results and results.get("classes"):
        return tuple(str(c) for c in results["classes"])
    for predictions in (run / "predictions.csv" for run in runs if (run / "predictions.csv").exists()):
        with open(predictions, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
        classes = tuple(h[2:] for h in header if h.startswith("p_"))
        if classes:
            return classes
    raise RunDirError(f"{run_dir}: no class names found (results.json 'classes' or runs/*/predictions.csv "
                      "p_<class> columns); the run dir is incomplete. Finish training first.")


def _plan(run_dir: Path, run: str | None, stores: Mapping[str | None, str] | None = None) -> _RunPlan:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "does not exist"
        raise RunDirError(f"run directory {run_dir} {what}; expected a folder written by `w2v2ser train`.")
    if (run_dir / "sweep.json").exists():
        raise RunDirError(f"{run_dir} is a layer-sweep folder (`w2v2ser sweep`), and a sweep saves no models. "
                          "To predict, train the selection you want with `w2v2ser train STORE --features "
                          "UPSTREAM:N` (or UPSTREAM:all) and pass that run directory.")
    if (run_dir / "skipped.json").exists():
        reason = _read_json(run_dir / "skipped.json", what="the skip reason").get("reason", "?")
        raise RunDirError(f"{run_dir} holds a skipped experiment ({reason}); it has no model to predict with.")
    if not (run_dir / "experiment.json").exists():  # a folder of run directories (runs/, experiments/)?
        inside = [found.relative_to(run_dir).as_posix() for found in find_run_dirs([run_dir]) if found != run_dir]
        trained = [name for name in inside if list_run_files(run_dir / name / "runs", "model.keras")]
        inside = trained or inside  # a sweep folder holds no models
        if inside:
            raise RunDirError(f"{run_dir} holds run directories, not one: {first_few(inside, 10)}. Pass one of "
                              f"them, e.g. "
                              f"{run_dir / inside[0]}.")
    experiment = _read_json(run_dir / "experiment.json", what="the experiment configuration")
    config = _experiment_config(experiment, run_dir / "experiment.json")
    results = None
    if (run_dir / "results.json").exists():
        results = _read_json(run_dir / "results.json", what="the aggregated results")
    # Runs of an older configuration that a later `train` into this folder did not replace are not
    # this run directory's models (current_runs).
    current = current_runs(run_dir, experiment)
    available = [r.name for r in current if (r / "model.keras").exists()]
    stale = sorted({p.parent.name for p in list_run_files(run_dir / "runs", "model.keras")} - set(available))
    if run is None and results is None and available:  # training stopped before all its runs had finished
        log.warning("%s: training has not finished (no results.json): predicting with the %d run(s) that have a "
                    "model (%s). Rerun the same `w2v2ser train` command to finish it.", run_dir, len(available),
                    first_few(available, 5))
    if run is not None:
        if run not in available:
            unfinished = run in stale and not (run_dir / "runs" / run / "metrics.json").exists()
            metrics = _read_json(run_dir / "runs" / run / "metrics.json", what="a run's metrics") if (
                run in stale and not unfinished) else None
            keys = {experiment.get(k) for k in ("config_key", "legacy_config_key")} - {None} if isinstance(
                experiment, dict) else set()
            # current_runs leaves out runs of this configuration's key whose seed is no longer one of its seeds
            # (a run without a config_key, written before it was recorded, counts as this configuration's)
            seed = metrics.get("seed") if isinstance(metrics, dict) and (
                not keys or metrics.get("config_key") in keys | {None}) else None
            configured = _configured_seeds(experiment)
            why = (" (it has no metrics.json: its training did not finish, or the file was lost; rerun the same "
                   "`w2v2ser train` command to train it again)" if unfinished else
                   f" (it is a run of this configuration, and its seed {seed} is one of experiment.json's seeds, "
                   f"but this run directory's results.json does not name it: a training of fewer seeds wrote it, "
                   f"such as one task of a SLURM array, or it was written while this run was unfinished; rerun "
                   f"`w2v2ser train` with every seed, which trains none that are finished, to write the "
                   f"results.json of all)" if isinstance(seed, int) and results is not None
                   and configured is not None and seed in configured else
                   f" (it is a run of this configuration, but its seed {seed} is not among the seeds of this run "
                   f"directory's results.json, or without one its experiment.json's first_seed and seeds: a later "
                   f"training with fewer or other seeds left it there; train with seeds that include {seed} to use "
                   f"it again)" if isinstance(seed, int) else
                   " (it is a run of another configuration than experiment.json's, left by an earlier "
                   "`w2v2ser train` into this folder)" if run in stale else "")
            raise RunDirError(f"--run {run!r} is not a trained run of {run_dir}{why}; expected one of "
                              f"{available or '(none: training has not finished a run)'}.")
        available = [run]
    if not available:
        metrics = [_read_json(r / "metrics.json", what="a run's metrics") for r in current]
        swept = any(isinstance(m, dict) and m.get("trained_by") == "sweep" for m in metrics)
        if swept:
            raise RunDirError(f"{run_dir} was trained by `w2v2ser sweep`, which saves no models. To predict with "
                              f"{config.features!r}, train it with `w2v2ser train STORE --features "
                              f"{config.features}` and pass that run directory.")
        if stale:
            raise RunDirError(f"{run_dir} holds only runs of another configuration than its experiment.json "
                              f"({first_few(stale, 5)}): `w2v2ser train` "
                              "was started there with new settings and has not finished a run yet. Run it "
                              "to completion first.")
        raise RunDirError(f"{run_dir} has no runs/*/model.keras; training has not finished any run. "
                          "Run `w2v2ser train` to completion first.")
    # The files predict reads; a changed predictions.csv does not change the predictions.
    damaged = [f"{name}: {'; '.join(problems)}" for name in available
               if (problems := damaged_run_files(run_dir / "runs" / name,
                                                 _read_json(run_dir / "runs" / name / "metrics.json",
                                                            what="a run's metrics"),
                                                 only=("model.keras", "normalisation.npz")))]
    if damaged:
        good = [name for name in available if not any(d.startswith(f"{name}: ") for d in damaged)]
        raise RunDirError(f"{len(damaged)} run(s) of {run_dir} are damaged: {' | '.join(damaged)}. Train the "
                          f"experiment again into this folder (`w2v2ser train ... --out {shlex.quote(str(run_dir))}` "
                          f"trains them "
                          f"again)" + (f", or pass --run with an intact run ({', '.join(good[:5])})." if good else "."))
    aliases = {name: config.store_alias(text) for name, text in config.selections().items()}
    paths = _moved_stores(run_dir, experiment, config, sorted(set(aliases.values())), current, stores) if stores else {}
    branches = tuple(_Branch(name, aliases[name], paths.get(aliases[name], config.stores[aliases[name]]), text)
                     for name, text in config.selections().items())
    max_frames = config.max_frames
    if max_frames is None:
        from w2v2ser.train import get_protocol

        max_frames = get_protocol(config.protocol).max_frames
    likes = {b.store: _like(run_dir, experiment, b.alias, b.store) for b in branches}
    return _RunPlan(run_dir, config, _classes(run_dir, results, current),
                    tuple(run_dir / "runs" / name / "model.keras" for name in available), branches, max_frames,
                    likes)


def _like(run_dir: Path, experiment: Mapping[str, Any], alias: str, store_path: str) -> _Like:
    """The feature settings new audio is extracted with: the run dir's record when it has the whole
    of it (runs since the record holds the audio rates), so the training store need not exist and a
    store rebuilt at its path with other settings cannot change them; else the training store, which
    must still hold the recorded settings."""
    from w2v2ser._common import ConfigError
    from w2v2ser.extract import features_like

    identity = experiment.get("stores_identity")
    entry = identity.get(alias) if isinstance(identity, Mapping) else None
    entry = entry if isinstance(entry, Mapping) else {}
    if "audio_rates" in entry:
        try:
            features, rates = features_like(run_dir)
        except ConfigError:  # one feature read from two stores with different settings: its store decides
            pass
        else:
            return _Like(str(run_dir), features, rates)
    try:  # the training store's own features and audio rates
        features, rates = features_like(store_path)
    except W2v2serError as exc:
        raise PredictError(f"the training store {store_path} cannot be opened ({exc}). If the training store "
                           f"has moved, pass its new location: w2v2ser predict --store PATH "
                           f"(predict_audio(stores={{None: PATH}})). A run directory that this version of w2v2ser "
                           f"trains needs no store: it records the feature settings and statistics itself.") from None
    recorded = entry.get("features") if isinstance(entry.get("features"), Mapping) else {}
    changed = sorted(name for name, spec in recorded.items() if name in features and isinstance(spec, Mapping)
                     and _differs(features[name].config, spec.get("config")))
    if changed:
        raise PredictError(f"the training store {store_path} now holds {', '.join(changed)} with other settings than "
                           f"run dir {run_dir} was trained with (its experiment.json), so new audio would not get "
                           "the training features. Restore the store the run was trained on, or train the run "
                           "again on this store.")
    return _Like(store_path, features, rates)


def _comparable_configs(config: Mapping[str, Any], recorded: Mapping[str, Any]) -> tuple[Any, Any]:
    """Two extractor configs as a store's own resume check compares them: the model location of
    ``recorded`` kept when both name the same weights (sha256), and a speech encoder's ``runtime``
    and ``max_seconds`` left out on each side (they change no value; ``extract --like`` takes them)."""
    from w2v2ser.extract._models import keep_recorded_location  # no torch
    from w2v2ser.store._writer import _comparable

    return _comparable(keep_recorded_location(config, recorded)), _comparable(dict(recorded))


def _differs(config: Mapping[str, Any], recorded: Any) -> bool:
    """Whether an extractor config differs from the recorded one in a key both have (a key one
    version of w2v2ser records and another not is no change of the features), compared as
    ``_comparable_configs`` gives them."""
    if not isinstance(recorded, Mapping):
        return False
    mine, theirs = _comparable_configs(config, recorded)
    return any(json.dumps(mine[k], sort_keys=True, default=str) != json.dumps(theirs[k], sort_keys=True, default=str)
               for k in set(mine) & set(theirs))


def _moved_stores(run_dir: Path, experiment: Mapping[str, Any], config: Any, aliases: Sequence[str],
                  runs: Sequence[Path], stores: Mapping[str | None, str]) -> dict[str, str]:
    """New locations of training stores (``stores=``: alias -> path, or None -> path for a run of one
    store), each checked to be the store the run was trained on: the same features with the same
    settings, and the same utterances (the runs' data fingerprint)."""
    import dataclasses

    from w2v2ser.store import open_store
    from w2v2ser.train._fingerprints import _same_data, _statistics_rule_changed, data_fingerprint

    out: dict[str, str] = {}
    for alias, path in stores.items():
        if alias is None:
            if len(aliases) != 1:
                raise PredictError(f"run dir {run_dir} reads {len(aliases)} stores ({', '.join(aliases)}); give "
                                   f"each moved one as ALIAS=PATH: "
                                   f"{' '.join(f'--store {a}=PATH' for a in aliases)}.")
            alias = aliases[0]
        if alias not in aliases:
            raise PredictError(f"--store names store alias {alias!r}, but run dir {run_dir} reads "
                               f"{', '.join(aliases)}.{did_you_mean(alias, aliases)}")
        out[alias] = str(path)
    recorded = experiment.get("stores_identity") if isinstance(experiment.get("stores_identity"), Mapping) else {}
    for alias, path in out.items():
        specs = open_store(path).features  # raises StoreError naming the path when it is not a store
        trained = (recorded.get(alias) or {}).get("features") or {}
        # Only the features the run reads from this store: the record lists all of the store's.
        reads = {resolve_feature(text) for text in config.selections().values() if config.store_alias(text) == alias}
        for name, spec in ((n, s) for n, s in trained.items() if n in reads):
            found = specs[name].to_dict() if name in specs else None
            configs = found is not None and isinstance(found.get("config"), Mapping) and isinstance(spec.get("config"), Mapping)
            if configs:
                # As --from-store and a store's resume: runtime, max_seconds and the same weights' location may
                # change, and a key one side records (another w2v2ser version's) or the description is no change.
                mine, theirs = _comparable_configs(found["config"], spec["config"])
                found, spec = {**found, "config": mine}, {**spec, "config": theirs}
            if found is None or (any(found.get(k) != spec.get(k) for k in ("dim", "layers", "frame_rate", "dtype"))
                                 or _differs(found["config"], spec["config"]) if configs else found != spec):
                # The keys that differ, as --from-store names them (the whole config was cut at 300 characters).
                why = (f"holds {', '.join(specs) or 'no feature'}, not {name!r}, which run dir {run_dir} was "
                       f"trained on" if found is None else
                       f"holds {name!r} with other settings "
                       f"({_setting_differences(found, spec, absent_differs=not configs)}) than run dir "
                       f"{run_dir} was trained with")
                raise PredictError(f"store {path} (given for {alias!r}) {why}, from "
                                   f"{recorded[alias].get('path', '?')}. Pass the store the run was trained on, "
                                   "at its new location.")
    for alias in sorted(set(aliases) - set(out)):  # the fingerprint reads every store of the run
        try:
            open_store(config.stores[alias])
        except W2v2serError as exc:
            raise PredictError(f"store {alias!r} of run dir {run_dir} cannot be opened where training read it "
                               f"({exc}); if it has moved too, give it as well: --store {alias}=PATH.") from None
    fingerprints = {r.name: m.get("data_fingerprint") for r in runs
                    if isinstance(m := _read_json(r / "metrics.json", what="a run's metrics"), Mapping)}
    recorded_data = set(fingerprints.values()) - {None}
    given = data_fingerprint(dataclasses.replace(config, stores={**config.stores, **out})) if recorded_data else ""
    # A run trained before its statistics left out the labels the protocol drops read this same store.
    if recorded_data and not any(_same_data(r, given) or _statistics_rule_changed(r, given) for r in recorded_data):
        raise PredictError(f"the store(s) given with --store ({', '.join(out.values())}) hold other utterances "
                           f"than run dir {run_dir} was trained on (ids, speakers, labels, audio, their order or their "
                           "frames differ), so its statistics would not be the training ones. Pass the store the run was trained "
                           "on, at its new location.")
    older = [name for name, recorded in fingerprints.items()
             if not _same_data(recorded, given) and _statistics_rule_changed(recorded, given)]
    if older:
        log.warning("run(s) %s of %s composed their normalisation statistics over every label, and predict now "
                    "leaves out the labels protocol %s drops, so their predictions differ from what they measured: "
                    "retrain them (the same `w2v2ser train` with --out %s trains them again)", first_few(older), run_dir,
                    config.protocol, run_dir)
    return out


_ABSENT = object()  # a key one side does not record (told apart from a recorded None)


def _setting_differences(found: Mapping[str, Any], trained: Mapping[str, Any], *, width: int = 80,
                         absent_differs: bool = True) -> str:
    """``key: FOUND, not TRAINED`` for each setting of two feature specs (``FeatureSpec.to_dict()``
    form) that differs, values shortened to ``width`` characters (an extractor config holds long
    lists and provenance). The one text of predict's --store and --from-store refusals.

    Extractor config keys come first (a section's, such as ``provenance``, key by key, and other
    weights' ``weights_sha256`` before all), then the spec's own keys; a key one side lacks reads
    ``(absent)``, or is left out with ``absent_differs=False`` (a refusal that, as ``_differs``,
    takes a key one version records and another does not for no change). The description follows
    the config, so it is named only when nothing else differs.
    """
    def brief(value: Any) -> str:
        text = "(absent)" if value is _ABSENT else repr(value)
        return text if len(text) <= width else f"{text[:width - 3]}..."

    def differing(a: Mapping[str, Any], b: Mapping[str, Any], skip: tuple[str, ...] = ()) -> list[tuple]:
        def same(k: str) -> bool:
            if (k in a) != (k in b):
                return not absent_differs
            return json.dumps(a[k], sort_keys=True, default=str) == json.dumps(b[k], sort_keys=True, default=str)

        return [(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b), key=str)
                if k not in skip and not same(k)]

    found_config, trained_config = found.get("config"), trained.get("config")
    found_config = found_config if isinstance(found_config, Mapping) else {}
    trained_config = trained_config if isinstance(trained_config, Mapping) else {}
    pairs = []
    for k, a, b in differing(found_config, trained_config):  # a section's keys by name (provenance.weights_sha256)
        pairs += ([(f"{k}.{key}", *rest) for key, *rest in differing(a, b)] if isinstance(a, Mapping)
                  and isinstance(b, Mapping) else [(k, a, b)])
    pairs.sort(key=lambda pair: not pair[0].endswith("weights_sha256"))  # other weights: the reason, first
    pairs += differing(found, trained, skip=("config", "description"))
    if not pairs:
        pairs = [("description", found.get("description", _ABSENT), trained.get("description", _ABSENT))]
    return "; ".join(f"{k}: {brief(a)}, not {brief(b)}" for k, a, b in pairs)


def _longest_seconds(plan: _RunPlan) -> float | None:
    """The shortest ``max_seconds`` of the run's speech encoders (the longest audio stage 1 extracts
    for them); None when the run reads none, or none has a limit."""
    limits = [plan.likes[b.store].features[name].config.get("max_seconds") for b in plan.branches
              for name in _upstream_features(plan.likes[b.store], [resolve_feature(b.selection)])]
    return min((float(limit) for limit in limits if limit is not None), default=None)


def _crop_seconds(plan: _RunPlan) -> float | None:
    """Seconds of an utterance the run's models see: the protocol's ``max_frames`` at the features'
    rate (after pair averaging); None when the run trained on whole utterances."""
    from w2v2ser.train import resolve_selection

    if plan.max_frames is None:
        return None
    rate = min(resolve_selection(b.selection, specs=plan.likes[b.store].features, alias=b.alias).frame_rate
               for b in plan.branches)
    return plan.max_frames / rate


def _upstream_features(like: _Like, features: Sequence[str]) -> list[str]:
    """The speech-encoder features (hidden states of a ``model``) among ``features`` of a training store."""
    specs = like.features
    return [name for name in features if name in specs and "model" in specs[name].config]


def _check_model_option(plan: _RunPlan, model: str) -> None:
    """``model=`` replaces the location of exactly one speech encoder of the run's stores."""
    stores = sorted({b.store for b in plan.branches})
    found = {(store, name) for store in stores
             for name in _upstream_features(plan.likes[store], [resolve_feature(b.selection) for b in plan.branches
                                                                if b.store == store])}
    if len(found) != 1:
        what = ("reads no speech-encoder features (" + ", ".join(b.selection for b in plan.branches) + ")"
                if not found else f"reads {len(found)} speech encoders ({', '.join(n for _, n in sorted(found))})")
        raise PredictError(f"the model option ({model!r}) gives the location of the run's speech encoder, but run dir "
                           f"{plan.run_dir} {what}; drop the model option"
                           + (" (its features need no model)." if not found else ", or move the weights back."))


def _training_rates(like: _Like, features: Sequence[str]) -> dict[str, int]:
    """Feature -> rate, for each feature that training computed at each file's own rate (``native``)
    when all the training audio had that one rate: new files at another rate are resampled to it,
    since the features of one recording differ with its rate (eGeMAPS' formant columns most)."""
    out = {}
    for name in features:
        rates = set(like.rates.get(name) or ())
        if like.features[name].config.get("sample_rate") == "native" and len(rates) == 1 and None not in rates:
            out[name] = int(rates.pop())
    return out


def resolve_feature(selection: str) -> str:
    """Stored feature name of a selection string ``[ALIAS/]FEATURE[:LAYERS]``."""
    return selection.rpartition("/")[2].partition(":")[0]
