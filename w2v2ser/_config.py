"""pipeline.yaml: one file describing corpora, extraction, cluster, experiments and reports.

The file is read with ``yaml.safe_load``, ``--set key.path=value`` overrides are applied,
``${VAR}`` / ``${VAR:-default}`` are expanded in strings, and every section is checked up
front: unknown keys (with a did-you-mean suggestion), wrong types, missing paths, dangling
references and impossible layer selections raise :class:`ConfigError` naming the key path
in the file (e.g. ``extraction.stores.w2v2_pt.features.wav2vec2.model``).

Experiments use a compact grid syntax: every key under ``grid`` takes a list and the
experiment is expanded into the cartesian product, e.g.
``grid: {corpus: [ravdess, iemocap], features: [[classic/egemaps], [w2v2_pt/wav2vec2:all]]}``.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from w2v2ser.store import W2v2serError
from w2v2ser.extract._wav2vec2 import RUNTIME_KEYS  # torch loads lazily, only to extract

__all__ = [
    "ClusterConfig", "ConfigError", "CorpusConfig", "ExperimentSpec", "PipelineConfig",
    "ReportConfig", "SlurmConfig", "StoreConfig", "apply_overrides", "load_pipeline",
]

CORPUS_KINDS = ("ravdess", "iemocap", "csv")
CLUSTER_KINDS = ("local", "none", "slurm")
# Extractor options that change how fast features are computed, never their values: the store's
# config check ignores them (the extractor records them under "runtime"), so they stay out of the
# store identity too and another machine resumes the same store folder.
_RUNTIME_KEYS = frozenset(RUNTIME_KEYS)
# Transformer layers of well-known checkpoints, for checking layer selections before any download.
_KNOWN_TRANSFORMER_LAYERS = {"wav2vec2-base": 12, "wav2vec2-large": 24, "wav2vec2-xls-r-300m": 24}


class ConfigError(W2v2serError, ValueError):
    """pipeline.yaml (or a ``--set`` override) is invalid; the message names the key path."""


# --- small checking helpers -------------------------------------------------------------------

def _type_name(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _check_keys(section: Any, allowed: Sequence[str], where: str, *, required: Sequence[str] = ()) -> dict:
    """Reject a non-mapping or unknown keys, with the closest valid key as a suggestion."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where or 'the file'}: expected a mapping with keys {list(allowed)}, "
                          f"got {_type_name(section)} {section!r}")
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f" Did you mean {_join(where, close[0])!r}?" if close else ""
            raise ConfigError(f"{_join(where, key)}: unknown key.{hint} Valid keys here: {', '.join(allowed)}.")
    for key in required:
        if key not in section:
            raise ConfigError(f"{_join(where, key)}: required key is missing; add it under {where or 'the top level'}.")
    return dict(section)


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _expect(value: Any, types: type | tuple[type, ...], where: str, what: str) -> Any:
    """Check a value's type (bool is not an int here) and return it."""
    types = types if isinstance(types, tuple) else (types,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise ConfigError(f"{where}: expected {what}, got {_type_name(value)} {value!r}")
    return value


def _positive_int(value: Any, where: str, *, allow_auto: bool = False, minimum: int = 1) -> int | None:
    if allow_auto and value in (None, "auto"):
        return None
    what = f"an integer >= {minimum}" + (" or 'auto'" if allow_auto else "")
    _expect(value, int, where, what)
    if value < minimum:
        raise ConfigError(f"{where}: expected {what}, got {value}")
    return value


def _choice(value: Any, choices: Sequence[str], where: str) -> str:
    if value not in choices:
        close = difflib.get_close_matches(str(value), list(choices), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}.{hint}")
    return value


# --- overrides and environment variables ------------------------------------------------------

def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Apply ``key.path=value`` overrides (value parsed as a YAML scalar) to a raw mapping.

    Missing intermediate mappings are created, so ``corpora.iemocap.path=/data/IEMOCAP`` works
    on a file without an ``iemocap`` entry; unknown keys are then caught by validation.
    """
    for text in overrides:
        if "=" not in text:
            raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set corpora.iemocap.path=/data/IEMOCAP")
        key, _, value_text = text.partition("=")
        parts = [p for p in key.strip().split(".")]
        if not all(parts):
            raise ConfigError(f"--set {text!r}: empty part in key path {key!r}; write e.g. extraction.shard_size=8")
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {text!r}: value {value_text!r} is not valid YAML ({error})") from error
        node: Any = raw
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                node = node[_list_index(part, node, where)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {where} is a {_type_name(node)}, not a mapping")
            if node.get(part) is None:
                node[part] = {}
            elif isinstance(node[part], str) and parts[0] == "cluster" and depth == 0:
                node[part] = {"kind": node[part]}  # `cluster: local` shorthand -> mapping
            node = node[part]
        if isinstance(node, list):
            node[_list_index(parts[-1], node, key)] = value
        elif isinstance(node, dict):
            if parts == ["cluster"] and isinstance(value, str) and isinstance(node.get("cluster"), dict):
                node["cluster"]["kind"] = value  # `--set cluster=none` keeps the other cluster settings
            else:
                node[parts[-1]] = value
        else:
            raise ConfigError(f"--set {text!r}: {'.'.join(parts[:-1])} is a {_type_name(node)}, not a mapping")
    return raw


def _list_index(part: str, node: list, where: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"--set: {where} indexes a list of {len(node)} items; use an index 0..{len(node) - 1}")
    return int(part)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(node: Any, where: str = "") -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of the document."""
    if isinstance(node, dict):
        return {k: _expand_env(v, _join(where, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{where}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set (in {node!r}); "
                          f"export it or write ${{{name}:-default}}")

    expanded = _ENV.sub(replace, node)
    # A whole-string variable may hold a YAML scalar (a number, null): parse it like the file would.
    if _ENV.fullmatch(node):
        try:
            parsed = yaml.safe_load(expanded) if expanded.strip() else None
        except yaml.YAMLError:
            return expanded
        return parsed if isinstance(parsed, (int, float, bool, type(None))) else expanded
    return expanded


# --- config dataclasses -----------------------------------------------------------------------

@dataclass(frozen=True)
class CorpusConfig:
    """A corpus: reader kind and folder (or CSV manifest); ``path`` None = not set (skipped)."""

    name: str
    kind: str
    path: Path | None

    @property
    def skip_reason(self) -> str | None:
        """Why experiments on this corpus cannot run, or None."""
        return None if self.path is not None else f"corpus {self.name!r}: path not set (set corpora.{self.name}.path)"


@dataclass(frozen=True)
class StoreConfig:
    """One feature store per corpus: the features (extractor name -> config object) it holds."""

    name: str
    corpora: tuple[str, ...]
    features: Mapping[str, Any]

    def feature_dicts(self) -> dict[str, dict]:
        """Extractor name -> config dict, as passed to ``build_extractor``."""
        return {name: config.to_dict() for name, config in self.features.items()}

    def identity(self, corpus: CorpusConfig) -> str:
        """Short hash of the corpus and of every feature option: any change gives a new store folder."""
        values = {name: {k: v for k, v in d.items() if k not in _RUNTIME_KEYS}
                  for name, d in self.feature_dicts().items()}
        text = json.dumps({"corpus": [corpus.kind, str(corpus.path)], "features": values},
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def _store_path(output: Path, store: StoreConfig, corpus: CorpusConfig) -> Path:
    """``OUTPUT/stores/<corpus>/<store>-<identity>.zarr``: a changed config never reuses a stale store."""
    return output / "stores" / corpus.name / f"{store.name}-{store.identity(corpus)}.zarr"


@dataclass(frozen=True)
class SlurmConfig:
    """dask_jobqueue.SLURMCluster settings (``cluster.slurm``); one job = ``processes`` workers."""

    queue: str | None = None
    account: str | None = None
    cores: int = 4
    memory: str = "16GB"
    processes: int = 1
    gpus: int = 0
    walltime: str = "02:00:00"
    jobs: int = 1
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()
    log_directory: str | None = None
    local_directory: str | None = None
    interface: str | None = None


@dataclass(frozen=True)
class ClusterConfig:
    """Where Dask runs the work.

    Attributes:
        kind: ``local`` (a LocalCluster sized to this machine), ``none`` (in-process), ``slurm``.
        workers: CPU worker processes (local; None = sized to the machine).
        threads_per_worker: Threads of each worker; training runs use this many TF threads.
        gpus: GPU workers (local; None = one per visible GPU, 0 = none).
        memory_limit: Per-worker memory limit passed to Dask ("auto" or e.g. "4GB").
        dashboard_address: Dask dashboard address (":0" = any free port).
        slurm: SLURM job settings when ``kind`` is ``slurm``.
    """

    kind: str = "local"
    workers: int | None = None
    threads_per_worker: int | None = None
    gpus: int | None = None
    memory_limit: str = "auto"
    dashboard_address: str = ":8787"
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


@dataclass(frozen=True)
class ExperimentSpec:
    """One expanded experiment (a grid point) ready for ``w2v2ser.train``.

    Attributes:
        name: Unique name, e.g. ``table1/ravdess/w2v2_pt-wav2vec2-all``.
        corpus: Corpus name it trains on.
        stores: Store alias -> store name (in ``extraction.stores``) it reads.
        config: The ``ExperimentConfig.from_dict`` input, ``stores`` filled with store paths.
        run_dir: Its run directory.
        where: Key path of its definition in the file (for messages).
        sweep: A layer sweep (``sweep: true``): a Dense probe per layer of ``features`` plus
            the weighted average, trained by ``w2v2ser.train.sweep_run``.
    """

    name: str
    corpus: str
    stores: Mapping[str, str]
    config: Mapping[str, Any]
    run_dir: Path
    where: str
    sweep: bool = False


@dataclass(frozen=True)
class ReportConfig:
    """A report over the run directories of the experiments whose names match ``experiments``."""

    name: str
    experiments: tuple[str, ...]
    out: Path


@dataclass(frozen=True)
class PipelineConfig:
    """A loaded, checked pipeline.yaml."""

    path: Path
    output: Path
    corpora: Mapping[str, CorpusConfig]
    stores: Mapping[str, StoreConfig]
    shard_size: int
    cluster: ClusterConfig
    experiments: tuple[ExperimentSpec, ...]
    reports: tuple[ReportConfig, ...]
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    def store_path(self, store: str, corpus: str) -> Path:
        """Folder of the Zarr store holding ``store``'s features for ``corpus``."""
        return _store_path(self.output, self.stores[store], self.corpora[corpus])

    def report_experiments(self, report: ReportConfig) -> list[ExperimentSpec]:
        """Experiments a report covers, in file order."""
        from fnmatch import fnmatchcase

        return [e for e in self.experiments if any(fnmatchcase(e.name, p) for p in report.experiments)]


# --- sections ---------------------------------------------------------------------------------

_TOP_KEYS = ("output", "cluster", "corpora", "extraction", "experiments", "reports")
_EXPERIMENT_KEYS_OWN = ("grid", "corpus", "sweep")


def _resolve_path(value: Any, base: Path, where: str, *, must_exist: bool) -> Path | None:
    if value is None:
        return None
    _expect(value, str, where, "a path string (relative to the pipeline file's folder) or null")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else (base / path)
    path = Path(os.path.normpath(path))
    if must_exist and not path.exists():
        raise ConfigError(f"{where}: {value!r} resolves to {path}, which does not exist. Fix the path "
                          f"(relative paths start at {base}) or set it to null to skip what needs it.")
    return path


def _parse_corpora(section: Any, base: Path) -> dict[str, CorpusConfig]:
    if not isinstance(section, Mapping) or not section:
        raise ConfigError("corpora: no corpus defined; add e.g. `ravdess: {kind: ravdess, path: data/ravdess}`")
    corpora = {}
    for name, entry in section.items():
        where = f"corpora.{name}"
        entry = _check_keys({} if entry is None else entry, ("kind", "path"), where)
        kind = entry.get("kind", name if name in CORPUS_KINDS else None)
        if kind is None:
            raise ConfigError(f"{where}.kind: required key is missing for corpus {name!r}; "
                              f"set it to one of {', '.join(CORPUS_KINDS)}")
        _choice(kind, CORPUS_KINDS, f"{where}.kind")
        corpora[name] = CorpusConfig(name, kind, _resolve_path(entry.get("path"), base, f"{where}.path", must_exist=True))
    return corpora


def _extract_api() -> Any:
    """The stage 1 package (imported late: loading a config must not need it before it is used)."""
    import w2v2ser.extract as extract

    return extract


def _feature_config(name: str, options: Mapping, defaults: Mapping, where: str) -> Any:
    from dataclasses import fields as dataclass_fields

    extract = _extract_api()
    config_class_of = getattr(extract, "extractor_config_class", None)
    registry = getattr(extract, "EXTRACTORS", None)
    if config_class_of is None or registry is None:  # not re-exported by the package: use the registry module
        from w2v2ser.extract import _registry as registry_module

        registry, config_class_of = registry_module.EXTRACTORS, registry_module.extractor_config_class
    _choice(name, sorted(registry), where)
    config_class = config_class_of(name)
    known = [f.name for f in dataclass_fields(config_class)]
    options = _check_keys({} if options is None else options, known, where)
    values = {k: v for k, v in defaults.items() if k in known and v is not None}
    values.update(options)
    try:
        return config_class.from_dict(values)
    except (W2v2serError, ValueError, TypeError) as error:
        raise ConfigError(f"{where}: {error}") from error


def _local_model(options: Any, base: Path) -> Any:
    """A ``model`` that names a folder or file beside the pipeline file becomes an absolute path.

    Hub ids (``facebook/wav2vec2-base``) stay as they are; a relative path is only rewritten
    when it exists relative to the pipeline file's folder.
    """
    if not isinstance(options, Mapping) or not isinstance(options.get("model"), str):
        return options
    model = options["model"]
    candidate = Path(model).expanduser()
    candidate = candidate if candidate.is_absolute() else base / candidate
    if candidate.exists():
        return {**options, "model": os.path.normpath(candidate)}
    if model.startswith((".", "/", "~")):
        raise ConfigError(f"model path {model!r} resolves to {candidate}, which does not exist; fix the path "
                          f"(relative paths start at {base}) or give a Hugging Face hub id")
    return options


def _parse_extraction(section: Any, corpora: Mapping[str, CorpusConfig],
                      base: Path) -> tuple[dict[str, StoreConfig], int]:
    where = "extraction"
    section = _check_keys(section, ("device", "batch_seconds", "shard_size", "stores"), where, required=("stores",))
    shard_size = _positive_int(section.get("shard_size", 16), f"{where}.shard_size")
    defaults = {"device": section.get("device"), "batch_seconds": section.get("batch_seconds")}
    if defaults["device"] is not None:
        _expect(defaults["device"], str, f"{where}.device", "a device string such as auto, cpu, cuda")
    stores_section = section["stores"]
    if not isinstance(stores_section, Mapping) or not stores_section:
        raise ConfigError(f"{where}.stores: expected a mapping of store names to their features, got "
                          f"{_type_name(stores_section)} {stores_section!r}")
    stores = {}
    for name, entry in stores_section.items():
        at = f"{where}.stores.{name}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
            raise ConfigError(f"{at}: store names may hold letters, digits, '_', '.', '-' only (they are folder "
                              f"names and selection aliases such as {name}/wav2vec2:all); rename it")
        entry = _check_keys(entry, ("corpora", "features"), at, required=("features",))
        wanted = entry.get("corpora", list(corpora))
        wanted = [wanted] if isinstance(wanted, str) else _expect(wanted, list, f"{at}.corpora", "a list of corpus names")
        for corpus in wanted:
            _choice(corpus, list(corpora), f"{at}.corpora")
        features_section = entry["features"]
        if not isinstance(features_section, Mapping) or not features_section:
            raise ConfigError(f"{at}.features: expected a mapping feature name -> options (e.g. `egemaps: {{}}`), "
                              f"got {_type_name(features_section)} {features_section!r}")
        features = {fname: _feature_config(str(fname), _local_model(options, base), defaults, f"{at}.features.{fname}")
                    for fname, options in features_section.items()}
        stores[str(name)] = StoreConfig(str(name), tuple(wanted), features)
    return stores, shard_size


def _parse_cluster(section: Any) -> ClusterConfig:
    where = "cluster"
    if section is None:
        section = {}
    if isinstance(section, str):
        section = {"kind": section}
    keys = ("kind", "workers", "threads_per_worker", "gpus", "memory_limit", "dashboard_address", "slurm")
    section = _check_keys(section, keys, where)
    kind = _choice(section.get("kind", "local"), CLUSTER_KINDS, f"{where}.kind")
    slurm_raw = _check_keys(section.get("slurm") or {}, [f for f in SlurmConfig.__dataclass_fields__], f"{where}.slurm")
    slurm_values: dict[str, Any] = {}
    for key, value in slurm_raw.items():
        at = f"{where}.slurm.{key}"
        if key in ("cores", "processes", "jobs"):
            slurm_values[key] = _positive_int(value, at)
        elif key == "gpus":
            slurm_values[key] = _positive_int(value, at, minimum=0)
        elif key in ("job_extra_directives", "job_script_prologue"):
            value = [value] if isinstance(value, str) else _expect(value, list, at, "a list of strings")
            slurm_values[key] = tuple(str(v) for v in value)
        else:
            slurm_values[key] = None if value is None else str(_expect(value, (str, int, float), at, "a string"))
    slurm = SlurmConfig(**slurm_values)
    if slurm.processes > slurm.cores:
        raise ConfigError(f"{where}.slurm.processes: {slurm.processes} worker processes per job need at least as "
                          f"many cores, got cores={slurm.cores}; raise cores or lower processes")
    return ClusterConfig(
        kind=kind,
        workers=_positive_int(section.get("workers", "auto"), f"{where}.workers", allow_auto=True),
        threads_per_worker=_positive_int(section.get("threads_per_worker", "auto"), f"{where}.threads_per_worker",
                                         allow_auto=True),
        gpus=_positive_int(section.get("gpus", "auto"), f"{where}.gpus", allow_auto=True, minimum=0),
        memory_limit=str(_expect(section.get("memory_limit", "auto"), (str, int), f"{where}.memory_limit",
                                 "'auto' or a size such as 4GB")),
        dashboard_address=str(_expect(section.get("dashboard_address", ":8787"), str, f"{where}.dashboard_address",
                                      "an address such as :8787 (or :0 for any free port)")),
        slurm=slurm,
    )


def _wav2vec2_layer_count(model: str) -> int | None:
    """Layer outputs (transformer layers + 1) of a wav2vec2 model, from its config.json if findable.

    Looks at a local ``save_pretrained`` folder, then the Hugging Face cache, then a table of
    well-known checkpoints; None when unknown (the selection is then checked at training time).
    """
    candidates = [Path(model).expanduser() / "config.json"]
    if "/" in model and not Path(model).exists():
        hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
        candidates += sorted((hub.expanduser() / f"models--{model.replace('/', '--')}" / "snapshots").glob("*/config.json"))
    for candidate in candidates:
        try:
            layers = json.loads(candidate.read_text()).get("num_hidden_layers")
        except (OSError, ValueError):
            continue
        if isinstance(layers, int):
            return layers + 1
    base = model.rstrip("/").rsplit("/", 1)[-1]
    for prefix, layers in sorted(_KNOWN_TRANSFORMER_LAYERS.items(), key=lambda kv: -len(kv[0])):
        if base.startswith(prefix):
            return layers + 1
    return None


_SELECTION = re.compile(r"^(?:(?P<alias>[A-Za-z0-9_.-]+)/)?(?P<feature>[A-Za-z0-9_.-]+)(?::(?P<layers>[A-Za-z0-9-]+))?$")


def _check_selection(text: Any, corpus: str, stores: Mapping[str, StoreConfig], where: str) -> tuple[str, str]:
    """Resolve the store alias of one selection ``[STORE/]FEATURE[:LAYERS]`` and check its layers.

    Returns:
        (store name, selection text with the store alias made explicit).
    """
    _expect(text, str, where, "a feature selection such as classic/egemaps or w2v2_pt/wav2vec2:all")
    match = _SELECTION.match(text.strip())
    if match is None:
        raise ConfigError(f"{where}: cannot parse feature selection {text!r}; expected [STORE/]FEATURE[:LAYERS], "
                          f"e.g. classic/egemaps, w2v2_pt/wav2vec2:local|contextual|all|N|A-B")
    alias, feature, layers = match.group("alias"), match.group("feature"), match.group("layers")
    serving = [name for name, store in stores.items() if corpus in store.corpora]
    if alias is None:
        owners = [name for name in serving if feature in stores[name].features]
        if len(owners) != 1:
            found = "no store" if not owners else f"several stores ({', '.join(owners)})"
            raise ConfigError(f"{where}: {found} of corpus {corpus!r} hold feature {feature!r}; write the store "
                              f"explicitly as STORE/{text}, with STORE one of {', '.join(serving) or '(none)'}")
        alias = owners[0]
    elif alias not in stores:
        close = difflib.get_close_matches(alias, list(stores), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: selection {text!r} names store {alias!r}, which is not in extraction.stores "
                          f"({', '.join(stores)}).{hint}")
    elif corpus not in stores[alias].corpora:
        raise ConfigError(f"{where}: store {alias!r} is not extracted for corpus {corpus!r} (its corpora: "
                          f"{', '.join(stores[alias].corpora)}); add {corpus} to extraction.stores.{alias}.corpora")
    store = stores[alias]
    if feature not in store.features:
        close = difflib.get_close_matches(feature, list(store.features), n=1)
        hint = f" Did you mean {alias}/{close[0]}?" if close else ""
        raise ConfigError(f"{where}: store {alias!r} holds {', '.join(store.features)}, not {feature!r}.{hint}")
    if layers is not None and re.fullmatch(r"\d+(-\d+)?", layers) and feature == "wav2vec2":
        model = str(getattr(store.features[feature], "model", ""))
        count = _wav2vec2_layer_count(model)
        highest = max(int(v) for v in layers.split("-"))
        if count is not None and highest >= count:
            raise ConfigError(f"{where}: selection {text!r} asks for layer {highest}, but {model} has {count} layer "
                              f"outputs (0 = local encoder, 1..{count - 1} = transformer layers); use 0..{count - 1}, "
                              f"'local', 'contextual' or 'all'")
    return alias, f"{alias}/{feature}" + (f":{layers}" if layers else "")


def _label(value: Any) -> str:
    """Folder-safe text for a grid value (part of the experiment name)."""
    if isinstance(value, (list, tuple)):
        return "+".join(_label(v) for v in value)
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(value)).strip("-") or "x"


def _train_fields() -> list[str] | None:
    """Keys of ``w2v2ser.train.ExperimentConfig`` (imports stage 2, i.e. TensorFlow)."""
    from dataclasses import fields as dataclass_fields

    from w2v2ser.train import ExperimentConfig

    return [f.name for f in dataclass_fields(ExperimentConfig)]


def _check_experiment(values: Mapping[str, Any], where: str) -> None:
    """Build the ExperimentConfig once so that bad values fail now, with the key path."""
    from w2v2ser.train import ExperimentConfig

    try:
        ExperimentConfig.from_dict(values)
    except (W2v2serError, ValueError, TypeError) as error:
        raise ConfigError(f"{where}: {error}") from error


def _expand_experiments(section: Any, corpora: Mapping[str, CorpusConfig], stores: Mapping[str, StoreConfig],
                        output: Path, *, validate: bool) -> list[ExperimentSpec]:
    if section is None:
        return []
    if not isinstance(section, Mapping):
        raise ConfigError(f"experiments: expected a mapping of experiment names to settings, got {_type_name(section)}")
    train_keys = _train_fields() if validate else None
    specs: list[ExperimentSpec] = []
    for group, entry in section.items():
        where = f"experiments.{group}"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected a mapping of experiment settings, got {_type_name(entry)} {entry!r}")
        allowed = [k for k in (train_keys or list(entry)) if k != "stores"] + list(_EXPERIMENT_KEYS_OWN)
        if "stores" in entry:
            raise ConfigError(f"{where}.stores: set by the pipeline from the store prefix of each selection "
                              f"(e.g. features: w2v2_pt/wav2vec2:all); remove it")
        _check_keys(entry, allowed, where)
        grid = entry.get("grid") or {}
        if not isinstance(grid, Mapping):
            raise ConfigError(f"{where}.grid: expected a mapping key -> list of values, got {_type_name(grid)}")
        if train_keys is not None:
            _check_keys(grid, [k for k in allowed if k != "grid"], f"{where}.grid")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}.grid.{key}: expected a non-empty list of values, got {values!r}")
            if key in entry:
                raise ConfigError(f"{where}.grid.{key}: {key!r} is set both in the grid and as {where}.{key}; keep one")
        fixed = {k: v for k, v in entry.items() if k != "grid"}
        keys = list(grid)
        for point in itertools.product(*(grid[k] for k in keys)):
            values = {**fixed, **dict(zip(keys, point))}
            label = "/".join(_label(v) for k, v in zip(keys, point) if k != "corpus")
            corpus = values.pop("corpus", None)
            sweep = _expect(values.pop("sweep", False), bool, f"{where}.sweep", "true or false")
            if sweep and values.get("head", "dense") != "dense":
                raise ConfigError(f"{where}.head: a layer sweep trains the Dense probe, got {values['head']!r}; "
                                  f"drop head or set it to dense")
            if corpus is None:
                if len(corpora) != 1:
                    raise ConfigError(f"{where}.corpus: required key is missing (corpora: {', '.join(corpora)}); "
                                      f"set corpus: NAME or grid: {{corpus: [...]}}")
                corpus = next(iter(corpora))
            _choice(corpus, list(corpora), f"{where}.corpus")
            name = "/".join(p for p in (str(group), corpus, label) if p)
            if "features" not in values:
                raise ConfigError(f"{where}.features: required key is missing; give a feature selection, "
                                  f"e.g. features: classic/egemaps (or grid: {{features: [...]}})")
            used: dict[str, str] = {}
            branches = ["features"] + (["fusion_features"] if values.get("head") == "fusion" else [])
            if values.get("head") == "fusion":
                values.setdefault("fusion_features", "egemaps")  # the paper's Fusion: wav2vec2 + eGeMAPS
            for key in branches:
                alias, values[key] = _check_selection(values[key], corpus, stores, f"{where}.{key}")
                used[alias] = alias
            values.setdefault("protocol", corpora[corpus].kind)
            values["stores"] = {alias: str(_store_path(output, stores[alias], corpora[corpus])) for alias in used}
            if validate:
                _check_experiment(values, f"{where} ({name})")
            run_dir = output / "experiments" / name
            specs.append(ExperimentSpec(name, corpus, used, values, run_dir, where, sweep))
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"experiments: grid expansion gives duplicate experiment names {duplicates}; "
                          f"rename a group or change its grid")
    return specs


def _parse_reports(section: Any, experiments: Sequence[ExperimentSpec], output: Path) -> list[ReportConfig]:
    if section is None:
        section = {"all": {"experiments": ["*"]}}
    if not isinstance(section, Mapping):
        raise ConfigError(f"reports: expected a mapping of report names to settings, got {_type_name(section)}")
    from fnmatch import fnmatchcase

    reports = []
    for name, entry in section.items():
        where = f"reports.{name}"
        entry = _check_keys({} if entry is None else entry, ("experiments",), where)
        patterns = entry.get("experiments", ["*"])
        patterns = [patterns] if isinstance(patterns, str) else _expect(patterns, list, f"{where}.experiments",
                                                                        "a list of experiment name patterns")
        for i, pattern in enumerate(patterns):
            _expect(pattern, str, f"{where}.experiments[{i}]", "a name pattern such as table1/*")
            if experiments and not any(fnmatchcase(e.name, pattern) for e in experiments):
                groups = sorted({e.name.split("/")[0] for e in experiments})
                close = difflib.get_close_matches(pattern.split("/")[0], groups, n=1)
                hint = f" Did you mean {close[0]}/*?" if close else ""
                raise ConfigError(f"{where}.experiments[{i}]: pattern {pattern!r} matches no experiment "
                                  f"(groups: {', '.join(groups)}).{hint}")
        reports.append(ReportConfig(str(name), tuple(patterns), output / "reports" / str(name)))
    return reports


def load_pipeline(path: str | Path, *, overrides: Sequence[str] = (), validate_experiments: bool = True) -> PipelineConfig:
    """Read, override, expand and check a pipeline file.

    Args:
        path: The pipeline.yaml; relative paths inside it start at its folder.
        overrides: ``key.path=value`` strings (``--set``), applied before checking.
        validate_experiments: Check experiment settings against ``w2v2ser.train`` (imports
            TensorFlow); the extract stage passes False so stage 1 never loads it.

    Returns:
        The checked :class:`PipelineConfig`.

    Raises:
        ConfigError: Unreadable file or invalid content (the message names the key path).
    """
    path = Path(path).expanduser().resolve()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read pipeline file {path}: {error}. Pass an existing pipeline.yaml.") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {_type_name(raw)}")
    raw = apply_overrides(raw, overrides)
    raw = _expand_env(raw)
    _check_keys(raw, _TOP_KEYS, "", required=("corpora", "extraction"))
    base = path.parent
    output = _resolve_path(raw.get("output") or "runs", base, "output", must_exist=False) or base / "runs"
    corpora = _parse_corpora(raw["corpora"], base)
    stores, shard_size = _parse_extraction(raw["extraction"], corpora, base)
    experiments = _expand_experiments(raw.get("experiments"), corpora, stores, output,
                                      validate=validate_experiments)
    return PipelineConfig(
        path=path, output=output, corpora=corpora, stores=stores, shard_size=shard_size,
        cluster=_parse_cluster(raw.get("cluster")), experiments=tuple(experiments),
        reports=tuple(_parse_reports(raw.get("reports"), experiments, output)), raw=raw,
    )
