"""pipeline.yaml: one file describing corpora, extraction, cluster, experiments and reports.

The file is read with a YAML safe loader (YAML 1.2 numbers: ``1e-3`` is a number),
``--set key.path=value`` overrides are applied, ``${VAR}`` / ``${VAR:-default}`` are
expanded in strings (:mod:`w2v2ser._overrides`), and the result is checked against one
pydantic schema (:func:`pipeline_model`; ``w2v2ser run --schema`` prints it as JSON Schema).
Extractor and experiment sections are derived from their config dataclasses, so a new
dataclass field needs no schema edit. Checks that need the rest of the
file (paths on disk, references between sections, layer counts) follow in plain code. Every
problem raises :class:`ConfigError` naming the key path (e.g.
``extraction.stores.w2v2_pt.features.wav2vec2.model``).

Experiments use a compact grid syntax: every key under ``grid`` takes a list and the
experiment is expanded into the cartesian product, e.g.
``grid: {corpus: [ravdess, iemocap], features: [classic/egemaps, w2v2_pt/wav2vec2:all]}``.
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import yaml

from w2v2ser.extract._wav2vec2 import RUNTIME_KEYS  # torch loads lazily, only to extract

from ._common import ConfigError, did_you_mean, first_few
from ._overrides import apply_overrides, expand_env, load_yaml
from ._schema import config_problems, validate
from ._config_paths import _layer_count, _resolve_path
from ._config_schema import CORPUS_KINDS, ClusterConfig, CorpusEntry, ReportEntry, pipeline_model

__all__ = [
    "ConfigError", "CorpusConfig", "ExperimentSpec", "PipelineConfig", "ReportConfig", "StoreConfig",
    "apply_overrides", "load_pipeline",
]

# Extractor options that change how fast features are computed, never their values: the store's
# config check ignores them (the extractor records them under "runtime"), so they stay out of the
# store identity too and another machine resumes the same store folder.
_RUNTIME_KEYS = frozenset(RUNTIME_KEYS)
# Options added after stores were named, left out of the identity at their default, so that an
# existing output folder keeps its store names (a store's own config check still compares them).
_ADDED_DEFAULTS = {"normalize_waveform": "auto"}


# --- loaded configuration ---------------------------------------------------------------------

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
        values = {name: {k: v for k, v in d.items()
                         if k not in _RUNTIME_KEYS and not (k in _ADDED_DEFAULTS and v == _ADDED_DEFAULTS[k])}
                  for name, d in self.feature_dicts().items()}
        text = json.dumps({"corpus": [corpus.kind, str(corpus.path)], "features": values},
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def _store_path(output: Path, store: StoreConfig, corpus: CorpusConfig) -> Path:
    """``OUTPUT/stores/<corpus>/<store>-<identity>.zarr``: a changed config never reuses a stale store."""
    return output / "stores" / corpus.name / f"{store.name}-{store.identity(corpus)}.zarr"


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
    #: experiment name whose run dir the report compares the others with (``write_report(baseline=)``)
    baseline: str | None = None


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




# --- checks that need the rest of the file ----------------------------------------------------

def _choice(value: Any, choices: Sequence[str], where: str) -> str:
    """A reference to a name defined elsewhere in the file (a corpus): a choice known only at load time."""
    return validate(Literal[tuple(choices)], value, where=where)


def _parse_corpora(section: Mapping[str, Any], base: Path, written: Any = None) -> dict[str, CorpusConfig]:
    """The corpora; ``written`` is the section before ``${VAR}`` expansion (for messages)."""
    corpora = {}
    for name, entry in section.items():
        as_written = (written or {}).get(name) if isinstance(written, Mapping) else None
        entry = entry or CorpusEntry()
        kind = entry.kind or (name if name in CORPUS_KINDS else None)
        if kind is None:
            raise ConfigError(f"corpora.{name}.kind: required key is missing for corpus {name!r}; "
                              f"set it to one of {', '.join(CORPUS_KINDS)}")
        path = _resolve_path(entry.path, base, f"corpora.{name}.path", must_exist=True,
                             written=as_written.get("path") if isinstance(as_written, Mapping) else None)
        corpora[name] = CorpusConfig(name, kind, path)
    return corpora


def _parse_stores(extraction: Any, raw: Mapping[str, Any],
                  corpora: Mapping[str, CorpusConfig]) -> dict[str, StoreConfig]:
    stores = {}
    for name, entry in extraction.stores.items():
        wanted = list(entry.corpora) if entry.corpora is not None else list(corpora)
        for corpus in wanted:
            _choice(corpus, list(corpora), f"extraction.stores.{name}.corpora")
        # Each name is an extractor's (the schema refused others), its config built by the schema; file order.
        features = {fname: getattr(entry.features, fname) for fname in raw["extraction"]["stores"][name]["features"]}
        if not features:
            raise ConfigError(f"extraction.stores.{name}.features: no feature given; add e.g. `egemaps: {{}}`")
        stores[name] = StoreConfig(name, tuple(wanted), features)
    return stores


def _check_selection(text: Any, corpus: str, stores: Mapping[str, StoreConfig], where: str) -> tuple[str, str]:
    """Resolve the store alias of one selection ``[STORE/]FEATURE[:LAYERS]`` and check its layers.

    Returns:
        (store name, selection text with the store alias made explicit).
    """
    from w2v2ser.train._selection import SelectionError, parse_selection  # stage 2's grammar; no TensorFlow

    try:
        parsed = parse_selection(text)
    except SelectionError as error:
        raise ConfigError(f"{where}: {error}") from None
    alias, feature, layers = parsed.alias, parsed.feature, parsed.layers
    serving = [name for name, store in stores.items() if corpus in store.corpora]
    if alias is None:
        owners = [name for name in serving if feature in stores[name].features]
        if len(owners) != 1:
            found = "no store" if not owners else f"several stores ({', '.join(owners)})"
            raise ConfigError(f"{where}: {found} of corpus {corpus!r} hold feature {feature!r}; write the store "
                              f"explicitly as STORE/{text}, with STORE one of {', '.join(serving) or '(none)'}")
        alias = owners[0]
    elif alias not in stores:
        raise ConfigError(f"{where}: selection {text!r} names store {alias!r}, which is not in extraction.stores "
                          f"({', '.join(stores)}).{did_you_mean(alias, stores)}")
    elif corpus not in stores[alias].corpora:
        raise ConfigError(f"{where}: store {alias!r} is not extracted for corpus {corpus!r} (its corpora: "
                          f"{', '.join(stores[alias].corpora)}); add {corpus} to extraction.stores.{alias}.corpora")
    store = stores[alias]
    if feature not in store.features:
        hint = did_you_mean(feature, store.features).replace("mean '", f"mean '{alias}/")
        raise ConfigError(f"{where}: store {alias!r} holds {', '.join(store.features)}, not {feature!r}.{hint}")
    model = getattr(store.features[feature], "model", None)  # the upstreams (wav2vec2, hubert, wavlm, ...)
    if layers is not None and re.fullmatch(r"\d+(-\d+)?", layers) and isinstance(model, str):
        count = _layer_count(model)
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
    if isinstance(value, dict) and not value:  # e.g. subset: {} beside a subset in a grid
        return "all"
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(value)).strip("-") or "x"


def _expand_experiments(section: Mapping[str, Any] | None, corpora: Mapping[str, CorpusConfig],
                        stores: Mapping[str, StoreConfig], output: Path, *, validate: bool) -> list[ExperimentSpec]:
    """Grid expansion; each grid point is built as an ExperimentConfig when ``validate``."""
    specs: list[ExperimentSpec] = []
    problems: list[str] = []  # the first of each group: every group's mistake is shown in one run
    for group, entry in (section or {}).items():
        try:
            specs += _expand_group(str(group), entry, corpora, stores, output, validate=validate)
        except ConfigError as error:
            problems.append(str(error))
    if problems:
        raise config_problems(problems)
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"experiments: grid expansion gives duplicate experiment names {duplicates}; "
                          f"rename a group or change its grid")
    return specs


def _expand_group(group: str, entry: Mapping[str, Any], corpora: Mapping[str, CorpusConfig],
                  stores: Mapping[str, StoreConfig], output: Path, *, validate: bool) -> list[ExperimentSpec]:
    """The experiments of one group of the file (its grid points)."""
    from w2v2ser.train import ExperimentConfig  # loads no stage 2 library (as pipeline_model)
    from w2v2ser.train._head_names import reads_fusion  # no Keras

    specs: list[ExperimentSpec] = []
    where = f"experiments.{group}"
    grid = entry.get("grid") or {}  # types checked by the schema
    for key in grid:
        if key in entry:
            raise ConfigError(f"{where}.grid.{key}: {key!r} is set both in the grid and as {where}.{key}; keep one")
    fixed = {k: v for k, v in entry.items() if k != "grid"}
    for point in itertools.product(*grid.values()):
        values = {**fixed, **dict(zip(grid, point))}
        label = "/".join(_label(v) for k, v in zip(grid, point) if k != "corpus")
        corpus = values.pop("corpus", None)
        sweep = values.pop("sweep", False)
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
        fusion = reads_fusion(values.get("head"))
        if fusion:
            values.setdefault("fusion_features", "egemaps")  # the paper's Fusion: wav2vec2 + eGeMAPS
        for key in ["features"] + (["fusion_features"] if fusion else []):
            alias, values[key] = _check_selection(values[key], corpus, stores, f"{where}.{key}")
            used[alias] = alias
        if values.get("protocol") is None:  # not given, or null: the corpus's own protocol
            values["protocol"] = corpora[corpus].kind
        values["stores"] = {alias: str(_store_path(output, stores[alias], corpora[corpus])) for alias in used}
        if validate:
            try:
                ExperimentConfig.from_dict(values)
            except ConfigError as error:
                raise ConfigError(f"{where} ({name}): {error}") from None
        specs.append(ExperimentSpec(name, corpus, used, values, output / "experiments" / name, where, sweep))
    return specs


def _parse_reports(section: Mapping[str, Any] | None, experiments: Sequence[ExperimentSpec],
                   output: Path) -> list[ReportConfig]:
    reports = []
    for name, entry in (section if section is not None else {"all": None}).items():
        entry = entry or ReportEntry()
        for i, pattern in enumerate(entry.experiments):
            if experiments and not any(fnmatchcase(e.name, pattern) for e in experiments):
                groups = sorted({e.name.split("/")[0] for e in experiments})
                first, *rest = pattern.split("/")
                # Suggest the whole pattern with its group corrected: 'tabel1/*' -> 'table1/*'; a group
                # alone ('fus', whose experiments are 'fus/iemocap'...) -> 'fus/*'.
                hint = did_you_mean(first, groups, canonical={g: "/".join([g, *(rest or ["*"])]) for g in groups})
                raise ConfigError(f"reports.{name}.experiments[{i}]: pattern {pattern!r} matches no experiment "
                                  f"(groups: {', '.join(groups)}).{hint}")
        covered = [e.name for e in experiments if any(fnmatchcase(e.name, p) for p in entry.experiments)]
        if entry.baseline is not None and experiments and entry.baseline not in covered:
            raise ConfigError(f"reports.{name}.baseline: {entry.baseline!r} is not an experiment of this report; "
                              f"expected one of {first_few(covered, 5)}.{did_you_mean(entry.baseline, covered)}")
        reports.append(ReportConfig(str(name), tuple(entry.experiments), output / "reports" / str(name), entry.baseline))
    return reports


def _unquoted_variable_hint(text: str, error: yaml.YAMLError) -> str:
    """Why a ``${VAR}`` inside a ``{...}`` mapping breaks the YAML, when that is what the error line holds."""
    mark = getattr(error, "problem_mark", None)
    lines = text.splitlines()
    line = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
    if not re.search(r"\{[^}]*\$\{", line):
        return ""
    return ("\nThat line has an unquoted ${...} inside a {...} mapping, where YAML reads '{' as the start of "
            "another mapping: quote the value, e.g. {kind: ravdess, path: \"${DATA}\"}, or write the mapping "
            "one key per line.")


def _pipeline_text(path: Path, data: bytes) -> str:
    """The pipeline file's text: UTF-8 (a BOM is fine), or UTF-16 with its BOM, as YAML allows (Windows
    Notepad's "Unicode"); another encoding (Windows-1252) is named with its line, not a traceback."""
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path} starts like UTF-16 text but is not ({error}). Save it as UTF-8.") from error
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ConfigError(f"{path} is not UTF-8 text: line {line} holds byte 0x{data[error.start]:02x}, which UTF-8 "
                          f"does not allow there (the file was likely saved as Windows-1252/Latin-1). Save it as "
                          f"UTF-8, or convert it, e.g. `iconv -f cp1252 -t utf-8 {shlex.quote(str(path))} > pipeline-utf8.yaml`.") from error


def load_pipeline(path: str | Path, *, overrides: Sequence[str] = (), validate_experiments: bool = True) -> PipelineConfig:
    """Read, override, expand and check a pipeline file.

    Args:
        path: The pipeline.yaml; relative paths inside it start at its folder.
        overrides: ``key.path=value`` strings (``--set``), applied before checking.
        validate_experiments: Build each experiment's ``w2v2ser.train.ExperimentConfig`` (which
            loads no stage 2 library); False checks only their keys and types against the schema
            (the extraction child process of a `run` whose parent built them).

    Returns:
        The checked :class:`PipelineConfig`.

    Raises:
        ConfigError: Unreadable file or invalid content (the message names the key path).
    """
    path = Path(path).expanduser().resolve()
    try:
        text = _pipeline_text(path, path.read_bytes())
        raw = load_yaml(text)
    except OSError as error:
        raise ConfigError(f"cannot read pipeline file {path}: {error}. Pass an existing pipeline.yaml.") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}{_unquoted_variable_hint(text, error)}") from error
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    written = apply_overrides(raw, overrides)
    raw = expand_env(written)
    base = path.parent
    extraction = raw.get("extraction") if isinstance(raw.get("extraction"), dict) else {}
    defaults = {k: extraction[k] for k in ("device", "batch_seconds") if extraction.get(k) is not None}
    for group, entry in (raw.get("experiments") or {}).items() if isinstance(raw.get("experiments"), dict) else ():
        if isinstance(entry, dict) and "stores" in entry:
            raise ConfigError(f"experiments.{group}.stores: set by the pipeline from the store prefix of each "
                              f"selection (e.g. features: w2v2_pt/wav2vec2:all); remove it")
    checked: Any = validate(pipeline_model(), raw, context={"base": base, "defaults": defaults})
    output = _resolve_path(checked.output, base, "output", must_exist=False,
                           written=written.get("output")) or base / "runs"
    corpora = _parse_corpora(checked.corpora, base, written.get("corpora"))
    stores = _parse_stores(checked.extraction, raw, corpora)
    experiments = _expand_experiments(raw.get("experiments"), corpora, stores, output, validate=validate_experiments)
    return PipelineConfig(
        path=path, output=output, corpora=corpora, stores=stores, shard_size=checked.extraction.shard_size,
        cluster=checked.cluster, experiments=tuple(experiments),
        reports=tuple(_parse_reports(checked.reports, experiments, output)), raw=raw,
    )
