"""Read a stage-2 run directory into a :class:`RunSummary`, tolerating every partial state.

The layout is written by :mod:`w2v2ser.train` (see the contract): ``experiment.json``,
``runs/<fold>__seed<k>/{model.keras,metrics.json,layer_weights.json,...}`` and, once every run
finished, ``results.json``. A run directory may instead hold ``skipped.json`` (``{"reason": ...}``)
when the experiment could not run at all, or ``failed.json`` when ``w2v2ser run`` failed it (which
outranks an older results.json). Reading never raises for a broken directory: the problem
becomes ``status="incomplete"`` with a reason, because a report over many experiments must still
be written when one of them is broken.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from w2v2ser._common import UPSTREAM_FEATURES, first_few
from w2v2ser._text import subset_text
from w2v2ser.train import list_run_files
from w2v2ser.train._config import branch_selections, default_store_alias  # no TensorFlow
from w2v2ser.train._errors import SelectionError
from w2v2ser.train._head_names import reads_fusion  # no TensorFlow
from w2v2ser.train._selection import parse_selection
from w2v2ser.train._metrics import PER_RUN, POOLED, headline_uar  # no TensorFlow

__all__ = ["RunSummary", "read_run_dir", "CORPUS_NAMES", "current_runs", "current_failure", "data_text"]

#: Display names of the corpora, in the column order of the paper's tables.
CORPUS_NAMES: dict[str, str] = {"ravdess": "RAVDESS", "iemocap": "IEMOCAP", "csv": "CSV"}


@dataclass(frozen=True)
class RunSummary:
    """What the report needs from one run directory.

    UAR values are percentages. ``status`` is ``"complete"`` (results.json read),
    ``"skipped"`` (skipped.json) or ``"incomplete"`` (anything else; ``reason`` says what).
    """

    path: Path
    status: str
    reason: str = ""
    experiment: Mapping[str, Any] = field(default_factory=dict)
    results: Mapping[str, Any] = field(default_factory=dict)
    corpus: str = "?"
    features: str = "?"
    head: str = "?"
    normalisation: str = "?"
    recipe: str = "?"
    model_ids: tuple[str, ...] = ()
    uar_runs: tuple[float, ...] = ()
    uar_mean: float | None = None
    uar_std: float | None = None
    accuracy_mean: float | None = None
    classes: tuple[str, ...] = ()
    confusion: np.ndarray | None = None
    #: normalised layer weights, one list per run (seed/fold)
    layer_weights: tuple[tuple[float, ...], ...] = ()
    #: the layer each weight belongs to (results.json ``layers``, e.g. 1..12 for ``wav2vec2:1-12``)
    weight_layers: tuple[int, ...] = ()
    runs_finished: int = 0
    #: "per run" (one UAR per fold × seed) or "pooled over folds, per seed" (IEMOCAP scoring)
    scoring: str = PER_RUN

    @property
    def n_runs(self) -> int:
        """Number of UAR values the statistics summarise (runs, or seeds when pooled)."""
        return len(self.uar_runs)


def _load_json(path: Path) -> tuple[Any, str]:
    """Return (data, "") or (None, reason) -- never raises."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), ""
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path.name} is unreadable ({type(exc).__name__}: {exc})"


def data_text(experiment: Mapping[str, Any] | None) -> str:
    """`` (vocal_channel=speech; 6 speaker folds)`` for a run on a subset of its store's utterances
    or cross-validated over speaker groups (its recorded experiment); "" for the protocol's own."""
    experiment = experiment or {}
    subset, folds = experiment.get("subset"), experiment.get("speaker_folds")
    parts = [subset_text(subset)] if isinstance(subset, Mapping) and subset else []
    parts += [f"{folds} speaker folds"] if folds else []
    return f" ({'; '.join(parts)})" if parts else ""


def find_key(data: Any, *keys: str, default: Any = None) -> Any:
    """Breadth-first search of nested dicts for the first of ``keys`` (config layouts vary)."""
    queue: list[Any] = [data]
    while queue:
        level, queue = queue, []
        for node in level:
            if isinstance(node, Mapping):
                for key in keys:
                    if key in node and node[key] is not None:
                        return node[key]
                queue.extend(v for v in node.values() if isinstance(v, Mapping))
    return default


def _is_fraction(*values: Any) -> bool:
    """UAR is stored as a fraction in [0, 1]; foreign files may hold percentages already."""
    vals = [abs(float(v)) for v in values if v is not None]
    vals = [v for v in vals if not math.isnan(v)]  # max() with a NaN first is NaN: percent by mistake
    return not vals or max(vals) <= 1.0


def _canonical_corpus(value: Any) -> str:
    text = str(value or "?").strip()
    return CORPUS_NAMES.get(text.lower(), text)


def _layer_text(layers: Any) -> str:
    if layers is None or layers == "all":
        return "all layers"
    if isinstance(layers, int):
        layers = [layers]
    if isinstance(layers, str):
        return layers
    layers = list(layers)
    if layers == [0]:
        return "local encoder"
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}"
    return "layers " + ",".join(str(x) for x in layers)


def model_ids_of(experiment: Mapping[str, Any]) -> tuple[str, ...]:
    """Upstream model ids (wav2vec2, HuBERT, WavLM, data2vec) recorded in the store identities
    of ``experiment.json``."""
    found: list[str] = []

    def visit(node: Any, under_w2v: bool) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                inside = under_w2v or str(key).startswith(UPSTREAM_FEATURES)
                if key == "model" and isinstance(value, str) and inside and value not in found:
                    found.append(value)
                visit(value, inside)
        elif isinstance(node, list):
            for value in node:
                visit(value, under_w2v)

    visit(experiment, False)
    return tuple(found)


def _branch_stores(config: Mapping[str, Any], experiment: Mapping[str, Any]) -> list[tuple[str, str, str]] | None:
    """(store alias, feature, selection) of each branch the experiment reads (``features``, and a fusion
    head's ``fusion_features``), by train's rules; None for a layout whose selections are not strings."""
    stores = find_key(experiment, "stores_identity")
    if not isinstance(stores, Mapping):
        stores = find_key(config, "stores")
    aliases = list(stores) if isinstance(stores, Mapping) else []
    features = find_key(config, "features", "feature")
    features = [features] if isinstance(features, str) else features  # a list: an older layout
    if not (isinstance(features, list) and all(isinstance(text, str) for text in features)):
        return None
    fusion, head = find_key(config, "fusion_features"), find_key(config, "head")
    try:  # a fusion head's branch, for a list of features too (its model id was left out)
        fused = branch_selections("", fusion if isinstance(fusion, str) else None, str(head), aliases)
    except SelectionError:
        return None
    texts = [*features, *(text for branch, text in fused.items() if branch != "main")]
    branches = []
    for text in texts:
        try:
            selection = parse_selection(text)
        except SelectionError:
            return None
        branches.append((selection.alias or default_store_alias(aliases) or "", selection.feature, text))
    return branches


def _used_model_ids(config: Mapping[str, Any], experiment: Mapping[str, Any]) -> tuple[str, ...]:
    """Model ids of the upstream features the experiment selects (``features``, and a fusion head's
    ``fusion_features``), looked up in its stores' identities: an eGeMAPS run on a store that also
    holds wav2vec2 frames used no model. Layouts this cannot read: every model id recorded."""
    everything = model_ids_of(experiment)
    branches = _branch_stores(config, experiment)
    if branches is None:
        return everything
    found: list[str] = []
    for alias, feature, _ in branches:
        if not feature.startswith(UPSTREAM_FEATURES):
            continue
        model = _alias_model(experiment, alias, everything, feature)
        if not model:  # the selection's model is not recorded where expected: keep every one known
            return everything
        if model not in found:
            found.append(model)
    return tuple(found)


def model_tag(model_id: str) -> str:
    """Short label of a wav2vec2 checkpoint: pretrained (PT) or fine-tuned for ASR (FT)."""
    lowered = model_id.lower()
    tuned = any(mark in lowered for mark in ("960h", "100h", "10m", "-ft", "finetun", "fine-tun"))
    return f"{model_id} ({'fine-tuned' if tuned else 'pretrained'})"


def _alias_model(config: Mapping[str, Any], alias: str, model_ids: tuple[str, ...], feature: str = "") -> str:
    """Model id of ``feature`` in the store behind ``alias`` (experiment.json ``stores_identity``),
    else of the store's only upstream, else the only one known; "" when the store records its
    features and ``feature`` is not one of them. A store may hold several upstreams (hubert,
    wavlm...): the selected feature's own model names the run."""
    stores = find_key(config, "stores_identity")
    if not isinstance(stores, Mapping):
        stores = {}
    # A selection without prefix reads the only store, else the "main" one (ExperimentConfig rule).
    alias = alias or default_store_alias(stores) or ""
    store = stores.get(alias)
    if isinstance(store, Mapping):
        features = store.get("features")
        spec = features.get(feature) if isinstance(features, Mapping) else None
        model = spec.get("config", {}).get("model") if isinstance(spec, Mapping) else None
        if isinstance(model, str):
            return model
        if feature and isinstance(features, Mapping) and feature not in features:
            return ""  # another feature of the store: its model is not the selection's
        found = model_ids_of(store)
        if len(found) == 1 or (found and not feature):
            return found[0]
        if found:
            return ""
    return model_ids[0] if len(model_ids) == 1 else ""


def _feature_text(config: Mapping[str, Any], model_ids: tuple[str, ...]) -> str:
    explicit = find_key(config, "feature_selection", "feature_label")
    if isinstance(explicit, str):
        return explicit
    features = find_key(config, "features", "feature", default="?")
    if isinstance(features, str) and reads_fusion(find_key(config, "head")):
        # Each branch with the store it reads: a fusion branch without prefix may read the "fusion" store.
        features = ([text for *_, text in _branch_stores(config, config) or ()]
                    or [features, find_key(config, "fusion_features") or "egemaps"])
    if isinstance(features, Mapping):  # {"wav2vec2": {"layers": [...]}, "egemaps": {}}
        items = list(features.items())
    elif isinstance(features, str):
        items = [(features, config)]
    else:
        items = [(f, config) if isinstance(f, str) else (find_key(f, "name", default="?"), f)
                 for f in features]
    parts = []
    for name, sub in items:
        text = str(name)
        # Selection strings "[ALIAS/]FEATURE[:LAYERS]" (w2v2ser.train grammar).
        alias, _, rest = text.rpartition("/")
        feature, _, layers = rest.partition(":")
        if feature in UPSTREAM_FEATURES:
            if not layers and isinstance(sub, Mapping):
                layers = find_key(sub, "layers", "layer")
            named = {"local": [0], "all": None, "contextual": "last layer"}
            layer_text = _layer_text(named.get(layers, layers) if isinstance(layers, str) and layers else layers)
            if isinstance(layers, str) and layers and layers[0].isdigit():
                layer_text = ("layers " if "-" in layers else "layer ") + layers
            model = _alias_model(sub if isinstance(sub, Mapping) else {}, alias, model_ids, feature)
            tag = ""
            if model:
                tag = " FT" if "fine-tuned" in model_tag(model) else " PT"
            text = f"{feature}{tag} {layer_text}"
        elif alias:
            text = feature
        parts.append(text)
    return " + ".join(parts)


def current_runs(run_dir: Path, experiment: Any) -> list[Path]:
    """The finished runs (``runs/*/`` with a ``metrics.json``) of the configuration ``experiment.json``
    records, in name order.

    `w2v2ser train` into a folder that holds another configuration replaces only the runs of the
    same fold and seed, so other runs of the old configuration may remain beside the new ones; they
    are not part of this run directory's results. Runs (or experiment files) without a
    ``config_key``, written before it was recorded, count as current.
    """
    # experiment.json records the key of w2v2ser 0.2 beside the current one (legacy_config_key):
    # finished runs keyed by either are runs of this configuration.
    keys = {experiment.get(k) for k in ("config_key", "legacy_config_key")} if isinstance(experiment, Mapping) else set()
    keys.discard(None)
    # The seeds are not part of the key (adding seeds keeps the finished ones), so a `train --seeds 2` into a
    # folder of 5 seeds left seeds 2-4 counted as current: predict averaged 5 models where results.json has 2.
    # results.json of this configuration names its runs; experiment.json's seeds are the word only without it
    # (`w2v2ser run` and `sweep` did not rewrite them when only the seeds changed).
    named = _summarised_runs(run_dir, keys)
    seeds = _configured_seeds(experiment) if named is None else None
    found = []
    for metrics_path in list_run_files(Path(run_dir) / "runs"):
        metrics, _ = _load_json(metrics_path)
        own = metrics.get("config_key") if isinstance(metrics, Mapping) else None
        seed = metrics.get("seed") if isinstance(metrics, Mapping) else None
        if named is not None and metrics_path.parent.name not in named:
            continue
        if seeds is not None and isinstance(seed, int) and not isinstance(seed, bool) and seed not in seeds:
            continue
        if not keys or own is None or own in keys:
            found.append(metrics_path.parent)
    return found


def _summarised_runs(run_dir: Path, keys: set[Any]) -> set[str] | None:
    """The run names ``results.json`` lists, where it is of one of ``keys``; None where it does not say."""
    results, _ = _load_json(Path(run_dir) / "results.json")
    if not isinstance(results, Mapping) or (keys and results.get("config_key") not in keys):
        return None
    runs = results.get("runs")
    if not isinstance(runs, list) or not runs:
        return None
    names = [r.get("name") if isinstance(r, Mapping) else None for r in runs]
    return set(names) if all(isinstance(n, str) for n in names) else None


def _configured_seeds(experiment: Any) -> range | None:
    """The seeds ``experiment.json`` names (``first_seed`` .. + ``seeds``); None where it does not say."""
    if not isinstance(experiment, Mapping):
        return None
    count, first = experiment.get("seeds"), experiment.get("first_seed", 0)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (count, first)) or count < 1:
        return None
    return range(first, first + count)


def _layer_weights(results: Mapping[str, Any], run_dir: Path, experiment: Mapping[str, Any]
                   ) -> tuple[list[tuple[float, ...]], tuple[int, ...]]:
    """Normalised α per run and the layers they weight, from results.json or, failing that, the
    current runs' layer_weights.json. Runs whose layers differ from the first run's are left out."""
    raw = results.get("layer_weights")
    entries: list[Any]
    if isinstance(raw, Mapping):
        entries = [raw[k] for k in sorted(raw)]
    elif isinstance(raw, list):
        entries = list(raw)
    else:
        entries = []
        for run in current_runs(run_dir, experiment):
            data, _ = _load_json(run / "layer_weights.json")
            if data is not None:
                entries.append(data)
    out: list[tuple[float, ...]] = []
    layers: tuple[int, ...] | None = None
    for entry in entries:
        if isinstance(entry, Mapping) and "alphas" not in entry and "normalised" not in entry:
            # w2v2ser.train writes {branch: {"alphas", "normalised", ...}}; only the main branch
            # (the wav2vec2 selection) is plotted.
            branches = [v for k, v in sorted(entry.items(), key=lambda kv: kv[0] != "main")
                        if isinstance(v, Mapping)]
            entry = branches[0] if branches else None
        recorded = entry.get("layers") if isinstance(entry, Mapping) else None
        if isinstance(entry, Mapping):
            vec = entry.get("normalised")
            if vec is None and entry.get("alphas") is not None:
                # LayerWeightedAverage normalises non-negative alphas by their sum (not softmax).
                alphas = np.asarray(entry["alphas"], dtype=np.float64)
                vec = alphas / alphas.sum() if alphas.sum() > 0 else None
        else:
            vec = entry
        if vec is None or len(vec) == 0:
            continue
        weights = tuple(float(v) for v in np.ravel(np.asarray(vec, dtype=np.float64)))
        own = (tuple(int(k) for k in recorded) if isinstance(recorded, list) and len(recorded) == len(weights)
               and all(isinstance(k, int) for k in recorded) else tuple(range(len(weights))))
        layers = own if layers is None else layers
        if own == layers:
            out.append(weights)
    return out, layers or ()


def current_failure(run_dir: Path, results: str = "results.json") -> Mapping[str, Any] | None:
    """The failed.json that ``w2v2ser run`` wrote into ``run_dir``, unless ``results`` there is newer.

    A pipeline run removes failed.json before it trains the experiment, so one that is there is the
    latest word on it: only results written after it (``w2v2ser train`` into the same folder) win.
    """
    path = Path(run_dir) / "failed.json"
    failed, _ = _load_json(path)
    if not isinstance(failed, Mapping):
        return None
    try:
        if (Path(run_dir) / results).stat().st_mtime_ns > path.stat().st_mtime_ns:
            return None
    except OSError:  # no results (or failed.json went away meanwhile): the failure stands
        pass
    return failed


def read_run_dir(run_dir: Path) -> RunSummary:
    """Summarise one run directory; broken directories give ``status="incomplete"``.

    Args:
        run_dir: a directory written by ``w2v2ser train``.

    Returns:
        The summary; never raises for missing or malformed files.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        # A pipeline's report lists every planned experiment: one not trained yet has no folder.
        reason = (f"{run_dir} is a file, not a run directory" if run_dir.exists() else
                  f"not trained yet: {run_dir} does not exist (train it first: `w2v2ser train ... --out "
                  f"{shlex.quote(str(run_dir))}`, or the pipeline's train stage)")
        return RunSummary(path=run_dir, status="incomplete", reason=reason)
    experiment, exp_problem = _load_json(run_dir / "experiment.json")
    experiment = experiment if isinstance(experiment, Mapping) else {}
    finished = len(current_runs(run_dir, experiment))
    base = _describe(experiment, experiment)
    skipped, _ = _load_json(run_dir / "skipped.json")
    if skipped is not None:
        reason = skipped.get("reason", "no reason recorded") if isinstance(skipped, Mapping) else str(skipped)
        # `w2v2ser run` writes the experiment's settings and its stores' model ids into skipped.json
        merged = {**experiment, **(skipped if isinstance(skipped, Mapping) else {})}
        return RunSummary(path=run_dir, status="skipped", reason=str(reason), experiment=merged,
                          runs_finished=finished, **_describe(merged, merged))
    results, res_problem = _load_json(run_dir / "results.json")
    failed = current_failure(run_dir)
    if failed is not None:
        # The failure wins over a results.json left by an earlier run (of another configuration, or
        # before a --set): those are not this configuration's results. It stays in place, so going
        # back to the configuration that made it reuses it without retraining.
        merged = {**experiment, **failed}
        earlier = ("; the results.json there is of an earlier run and is not shown"
                   if isinstance(results, Mapping) else "")
        return RunSummary(path=run_dir, status="incomplete", reason=f"{failed.get('reason', 'failed')} (fix that and "
                          f"rerun the same `w2v2ser run` command){earlier}", experiment=merged,
                          runs_finished=finished, **_describe(merged, merged))
    if not isinstance(results, Mapping):
        reason = res_problem or "results.json is not a JSON object"
        if not experiment:
            reason += f"; {exp_problem or 'experiment.json is not a JSON object'}"
        reason += f"; {finished} run(s) finished"
        sweep = experiment.get("sweep")
        if isinstance(sweep, Mapping) and res_problem and "missing" in res_problem:
            # A head of a layer sweep stopped before its end: the sweep, not `train`, finishes it
            # (training one head with `w2v2ser train` would put another kind of run there).
            reason = (f"part of the unfinished layer sweep {run_dir.parent}; rerun the same "
                      f"`w2v2ser sweep` (or `w2v2ser run`) command to finish it")
        elif experiment and res_problem and "missing" in res_problem:  # training stopped before its end
            reason += "; rerun the same `w2v2ser train` (or `w2v2ser run`) command to finish it"
        return RunSummary(path=run_dir, status="incomplete", reason=reason, experiment=experiment,
                          runs_finished=finished, **base)
    config = results.get("config") if isinstance(results.get("config"), Mapping) else experiment
    desc = _describe({**experiment, **config, "recipe": find_key(results, "recipe") or
                      find_key(config, "recipe") or find_key(experiment, "recipe")}, experiment)
    try:
        # Several folds (IEMOCAP sessions): all folds' predictions pooled per seed, as the paper scores.
        raw_runs, raw_mean, raw_std, scoring = headline_uar(results)
        scale = 100.0 if _is_fraction(raw_mean, *raw_runs) else 1.0
        uar_runs = [scale * v for v in raw_runs if not math.isnan(v)]
        # A NaN value (a run without test utterances) is left out of n, so of the mean and std too:
        # results.json's mean over it is NaN.
        dropped = len(uar_runs) < len(raw_runs)
        uar_mean = scale * float(raw_mean) if raw_mean is not None and not dropped else (
            float(np.mean(uar_runs)) if uar_runs else None)
        # Fallback std over runs is the population std, as np.std in train's results.json.
        uar_std = scale * float(raw_std) if raw_std is not None and not dropped else (
            float(np.std(uar_runs)) if uar_runs else None)
        uar_std = uar_std if len(uar_runs) > 1 else None  # one value has no spread to state
        # Accuracy scored as the UAR beside it: pooled per seed where the UAR is (older results: per run).
        acc = results.get("accuracy_pooled_mean" if scoring == POOLED and "accuracy_pooled_mean" in results
                          else "accuracy_mean")
        if dropped:  # results.json's accuracy_mean averages the NaN runs too: the other runs' accuracy
            kept = [r.get("accuracy") for r in results.get("runs") or [] if isinstance(r, Mapping)
                    and isinstance(r.get("uar"), (int, float)) and not math.isnan(r["uar"])]
            if scoring == PER_RUN and kept and all(isinstance(a, (int, float)) for a in kept):
                acc = float(np.mean(kept))
            elif acc is not None and math.isnan(float(acc)):
                acc = None
        confusion = results.get("confusion")
        confusion = np.asarray(confusion, dtype=np.float64) if confusion is not None else None
        classes = tuple(str(c) for c in results.get("classes") or ())
    except (TypeError, ValueError) as exc:
        return RunSummary(path=run_dir, status="incomplete", experiment=experiment, results=results,
                          reason=f"results.json has malformed values ({exc})", runs_finished=finished, **desc)
    if uar_mean is None:
        reason = (f"results.json's {len(raw_runs)} UAR value(s) are all NaN (a run scored on no test "
                  f"utterances); check the test split of its store and subset" if raw_runs
                  else "results.json has neither uar_mean nor uar_per_run")
        return RunSummary(path=run_dir, status="incomplete", experiment=experiment, results=results,
                          reason=reason, runs_finished=finished, **desc)
    weights, weight_layers = _layer_weights(results, run_dir, experiment)
    missing = results.get("missing_runs")
    if isinstance(missing, list) and missing:
        # Its UAR is over part of the folds (runs replaced by another job, or trained on other data).
        sweep = experiment.get("sweep")
        again = "`w2v2ser sweep`" if isinstance(sweep, Mapping) else "`w2v2ser train`"
        return RunSummary(path=run_dir, status="incomplete", experiment=experiment, results=results,
                          reason=f"results.json covers only {results.get('n_runs', '?')} of "
                                 f"{results.get('n_runs_planned', '?')} planned runs ({first_few(missing)} missing); "
                                 f"rerun the same {again} (or `w2v2ser run`) command to train them",
                          runs_finished=finished, **desc)
    return RunSummary(
        path=run_dir, status="complete", experiment=experiment, results=results,
        uar_runs=tuple(uar_runs), uar_mean=uar_mean, uar_std=uar_std, scoring=scoring,
        accuracy_mean=None if acc is None else float(acc) * (100.0 if _is_fraction(acc) else 1.0),
        classes=classes, confusion=confusion, layer_weights=tuple(weights), weight_layers=weight_layers,
        runs_finished=finished, **desc)


def _describe(config: Mapping[str, Any], experiment: Mapping[str, Any]) -> dict[str, Any]:
    """Row/column identity of an experiment: corpus, feature selection, head, normalisation, recipe."""
    model_ids = _used_model_ids(config, experiment)
    # The protocol (the corpus kind) first: a pipeline's skipped.json also names the corpus as the
    # file does ("mycsv"), and its row must land in the column of that corpus's trained runs ("CSV").
    corpus = find_key(config, "protocol", "corpus_kind", "corpus")
    if isinstance(corpus, Mapping):
        corpus = find_key(corpus, "kind", "name")
    head = find_key(config, "head", "downstream", "head_kind")
    if isinstance(head, Mapping):
        head = find_key(head, "kind", "name", "type")
    norm = find_key(config, "norm", "normalisation", "normalization")
    if isinstance(norm, Mapping):
        norm = find_key(norm, "kind", "mode", "name")
    recipe = find_key(config, "recipe")
    if isinstance(recipe, Mapping):
        recipe = find_key(recipe, "name", "kind")
    overrides = config.get("recipe_overrides")  # runs of one recipe with other settings are other rows
    if recipe is not None and isinstance(overrides, Mapping) and overrides:
        recipe = f"{recipe} ({', '.join(f'{k}={v}' for k, v in sorted(overrides.items()))})"
    return {
        "corpus": _canonical_corpus(corpus),
        "features": _feature_text(config, model_ids) if config else "?",
        "head": str(head) if head is not None else "?",
        "normalisation": str(norm) if norm is not None else "?",
        "recipe": str(recipe) if recipe is not None else "?",
        "model_ids": model_ids,
    }
