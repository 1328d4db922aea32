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
import functools
import hashlib
import itertools
import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (AfterValidator, BeforeValidator, Field, StringConstraints, ValidationInfo, WithJsonSchema,
                      create_model, model_validator)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue

from w2v2ser.extract._corpora import CORPUS_READERS
from w2v2ser.extract._wav2vec2 import RUNTIME_KEYS  # torch loads lazily, only to extract
from w2v2ser.store._location import is_store_url

from ._common import SHARD_SIZE, ConfigError, did_you_mean, first_few
from ._text import file_url_path
from ._overrides import ENV_VARIABLE, apply_overrides, expand_env, load_yaml
from ._schema import StrictModel, config_problems, dataclass_model, validate

__all__ = [
    "ClusterConfig", "ConfigError", "CorpusConfig", "ExperimentSpec", "PipelineConfig",
    "ReportConfig", "SlurmConfig", "StoreConfig", "apply_overrides", "load_pipeline", "pipeline_json_schema",
    "pipeline_model",
]

CORPUS_KINDS = tuple(CORPUS_READERS)  # the corpus readers registered in w2v2ser.extract
CLUSTER_KINDS = ("local", "none", "slurm")
# Extractor options that change how fast features are computed, never their values: the store's
# config check ignores them (the extractor records them under "runtime"), so they stay out of the
# store identity too and another machine resumes the same store folder.
_RUNTIME_KEYS = frozenset(RUNTIME_KEYS)
# Options added after stores were named, left out of the identity at their default, so that an
# existing output folder keeps its store names (a store's own config check still compares them).
_ADDED_DEFAULTS = {"normalize_waveform": "auto"}
# Transformer layers of well-known checkpoints, for checking layer selections before any download.
_KNOWN_TRANSFORMER_LAYERS = {"wav2vec2-base": 12, "wav2vec2-large": 24, "wav2vec2-xls-r-300m": 24}


# --- value types of the schema ----------------------------------------------------------------

def _auto_to_none(value: Any) -> Any:
    return None if value == "auto" else value


def _as_text(value: Any) -> Any:
    """YAML reads ``memory: 16`` or an unquoted time as a number; such keys want the text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _as_tuple(value: Any) -> Any:
    return (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else value


def _auto(minimum: int) -> Any:
    """An integer >= minimum, or "auto" / null (read as None: sized by the program)."""
    return Annotated[Optional[Union[Annotated[int, Field(ge=minimum)], Literal["auto"]]], AfterValidator(_auto_to_none)]


_Text = Annotated[str, BeforeValidator(_as_text), WithJsonSchema({"type": ["string", "number"]})]
_Lines = Annotated[tuple[str, ...], BeforeValidator(_as_tuple),
                   WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})]
_Names = Optional[_Lines]
_StoreName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+$")]


def _slurm_memory(value: str) -> str:
    """A size Dask reads (``16GB``, ``32gb``, ``500 MB``); SLURMCluster refused anything else only
    when the run had planned its work (exit 1)."""
    from dask.utils import parse_bytes

    try:
        size = parse_bytes(value)
    except (ValueError, TypeError):
        raise ValueError(f"expected a size such as 16GB or 500MB, got {value!r}") from None
    if re.fullmatch(r"\s*[\d.]+\s*", str(value)) and size < 1 << 20:
        # A bare 16 is 16 bytes to Dask (SLURMCluster then fails below 1 KiB): the unit was left out.
        raise ValueError(f"{value!r} is {size} bytes: write the size with its unit, e.g. {str(value).strip()}GB")
    return value


# sbatch --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]].
_WALLTIME = re.compile(r"(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2}|UNLIMITED|INFINITE)", re.IGNORECASE)


def _slurm_walltime(value: str) -> str:
    """A time sbatch reads; "4h" was refused by sbatch only once the worker jobs were submitted."""
    if not _WALLTIME.fullmatch(value.strip()):
        raise ValueError(f"expected a SLURM time such as 04:00:00 (HH:MM:SS), 1-12:00:00 (D-HH:MM:SS) or 30 "
                         f"(minutes), got {value!r}")
    return value


class SlurmConfig(StrictModel):
    """dask_jobqueue.SLURMCluster settings (``cluster.slurm``); one job = ``processes`` workers."""

    queue: Optional[_Text] = Field(None, description="the SLURM partition (dask-jobqueue calls it queue)")
    account: Optional[_Text] = None
    cores: Annotated[int, Field(ge=1)] = 4
    memory: Annotated[_Text, AfterValidator(_slurm_memory)] = "16GB"
    processes: Annotated[int, Field(ge=1)] = 1
    gpus: Annotated[int, Field(ge=0)] = 0
    walltime: Annotated[_Text, AfterValidator(_slurm_walltime)] = "02:00:00"
    jobs: Annotated[int, Field(ge=1)] = 1
    job_extra_directives: _Lines = ()
    job_script_prologue: _Lines = ()
    log_directory: Optional[_Text] = None
    local_directory: Optional[_Text] = None
    interface: Optional[_Text] = None
    job_check: Annotated[float, Field(ge=0.1, le=3600, allow_inf_nan=False)] = Field(
        60.0, description="seconds between two looks of `run` at its worker jobs' squeue state, to replace a job "
        "that ended, 0.1 to 3600 (each look is one squeue call: a busy controller's admins dislike short "
        "intervals; over 2 minutes, a job that ran and ended between two looks counts as a failed start)")
    worker_wait: Optional[Annotated[_Text, AfterValidator(_slurm_walltime)]] = Field(
        "12:00:00", description="how long `run` waits for a first Dask worker to connect before it stops "
        "with exit 1 (a SLURM time; null, 0 or UNLIMITED: no limit)")

    @model_validator(mode="before")
    @classmethod
    def _partition_is_queue(cls, value: Any) -> Any:
        if isinstance(value, dict) and "partition" in value and "queue" not in value:
            raise ValueError(f"partition: the SLURM partition is set by queue here (dask-jobqueue's name): "
                             f"write queue: {value['partition']} instead of partition: {value['partition']}")
        return value

    @model_validator(mode="after")
    def _cores_hold_processes(self) -> "SlurmConfig":
        if self.processes > self.cores:
            raise ValueError(f"{self.processes} worker processes per job need at least as many cores, got "
                             f"cores={self.cores}; raise cores or lower processes")
        return self


class ClusterConfig(StrictModel):
    """Where Dask runs the work (``cluster``; the shorthand ``cluster: local`` sets only the kind).

    Attributes:
        kind: ``local`` (a LocalCluster sized to this machine), ``none`` (in-process), ``slurm``.
        workers: CPU worker processes (local; None/"auto" = sized to the machine).
        threads_per_worker: Threads of each worker; training runs use this many TF threads.
        gpus: GPU workers (local; None/"auto" = one per visible GPU, 0 = none).
        memory_limit: Per-worker memory limit passed to Dask ("auto" or e.g. "4GB").
        dashboard_address: Dask dashboard address (":0" = any free port; null = no dashboard).
        slurm: SLURM job settings when ``kind`` is ``slurm``.
    """

    kind: Literal["local", "none", "slurm"] = "local"
    workers: _auto(1) = None
    threads_per_worker: _auto(1) = None
    gpus: _auto(0) = None
    memory_limit: _Text = "auto"
    dashboard_address: Optional[str] = ":8787"
    slurm: Annotated[Optional[SlurmConfig], AfterValidator(lambda v: v or SlurmConfig())] = SlurmConfig()

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {} if value is None else {"kind": value} if isinstance(value, str) else value


class CorpusEntry(StrictModel):
    """A corpus: reader kind (default: the corpus name when it is a kind) and folder or CSV manifest."""

    kind: Optional[Literal[CORPUS_KINDS]] = None  # type: ignore[valid-type]
    path: Optional[str] = Field(None, description="folder or CSV manifest, relative to this file; null = skip")


class ReportEntry(StrictModel):
    """A report over the experiments whose names match one of the patterns."""

    experiments: _Lines = ("*",)
    baseline: Optional[str] = Field(None, description="one experiment of the report (e.g. table1/ravdess/"
                                    "classic-egemaps): the others' difference in mean UAR to it, Welch's t-test")


def _feature_model(name: str) -> Any:
    """Schema of one extractor's options, derived from its config dataclass; validation ends by
    building the dataclass (its own cross-field checks, window vs FFT size..., at the right key path).

    Before checking, null is ``{}``, the extraction-wide defaults of the validation context
    (``extraction.device``, ``batch_seconds``) fill the options this extractor has, and a local
    ``model`` path becomes absolute (relative to the context's ``base``, the pipeline file's folder).
    """
    from w2v2ser.extract._registry import extractor_config_class

    config_class = extractor_config_class(name)
    options = create_model(f"{config_class.__name__}Options", __base__=dataclass_model(config_class),
                           __doc__=f"Options of the {name} extractor.")

    def prepare(value: Any, info: ValidationInfo) -> Any:
        context = info.context or {"base": Path.cwd(), "defaults": {}}
        if value is not None and not isinstance(value, dict):
            return value
        defaults = {k: v for k, v in context["defaults"].items() if k in options.model_fields}
        return {**defaults, **_local_model(value or {}, context["base"])}

    return Annotated[Optional[options], BeforeValidator(prepare),
                     AfterValidator(lambda m: config_class.from_dict(m.model_dump(exclude_unset=True)))]


@functools.cache
def pipeline_model() -> type[StrictModel]:
    """The pydantic model of a whole pipeline.yaml; experiment entries are checked against
    ``w2v2ser.train.ExperimentConfig``'s fields (which loads no stage 2 library: stage 1 never
    loads TensorFlow)."""
    from w2v2ser.extract._registry import EXTRACTORS
    from w2v2ser.train import ExperimentConfig, Recipe

    features = create_model("Features", __base__=StrictModel, __doc__="Extractor name -> its options.",
                            **{name: (_feature_model(name), None) for name in EXTRACTORS})
    store = create_model("Store", __base__=StrictModel, __doc__="One feature store per corpus.",
                         corpora=(_Names, None), features=(features, ...))
    extraction = create_model(
        "Extraction", __base__=StrictModel, __doc__="Feature stores and extraction settings.",
        device=(Optional[str], None), batch_seconds=(Optional[Annotated[float, Field(gt=0)]], None),
        shard_size=(Annotated[int, Field(ge=1)], SHARD_SIZE),
        stores=(Annotated[dict[_StoreName, store], Field(min_length=1)], ...))
    recipe = dataclass_model(Recipe, drop=("name",), optional=True, name="RecipeOverrides")
    grid = create_model("Grid", __doc__="Experiment key -> list of values (cartesian product).",
                        __base__=dataclass_model(ExperimentConfig, drop=("stores",), as_lists=True,
                                                 name="GridAxes"),
                        corpus=(Optional[Annotated[list[str], Field(min_length=1)]], None),
                        recipe_overrides=(Optional[Annotated[list[recipe], Field(min_length=1)]], None))
    experiment = create_model("Experiment", __doc__="Experiment settings (w2v2ser.train.ExperimentConfig).",
                              __base__=dataclass_model(ExperimentConfig, drop=("stores",), optional=True,
                                                       name="ExperimentSettings"),
                              corpus=(Optional[str], None), grid=(Optional[grid], None),
                              recipe_overrides=(Optional[recipe], None),
                              sweep=(bool, Field(False, description="a layer sweep: a Dense probe per layer "
                                                 "of features plus the weighted average (w2v2ser sweep)")))
    return create_model(
        "Pipeline", __base__=StrictModel, __doc__="w2v2ser pipeline.yaml",
        output=(Optional[str], None),
        cluster=(ClusterConfig, ClusterConfig()),
        corpora=(Annotated[dict[str, Optional[CorpusEntry]], Field(min_length=1)], ...),
        extraction=(extraction, ...),
        experiments=(Optional[dict[str, experiment]], None),
        reports=(Optional[dict[str, Optional[ReportEntry]]], None),
    )


class _FileJsonSchema(GenerateJsonSchema):
    """The schema of the file as written: a whole-string ``${VAR}`` / ``${VAR:-default}`` may stand
    for any number, boolean or choice (the loader checks the value it expands to)."""

    VARIABLE = {"type": "string", "pattern": ENV_VARIABLE.pattern.join("^$")}

    def generate_inner(self, schema: Any) -> JsonSchemaValue:
        inner = super().generate_inner(schema)
        return {"anyOf": [inner, self.VARIABLE]} if schema.get("type") in ("int", "float", "bool", "literal") else inner


def pipeline_json_schema() -> dict[str, Any]:
    """JSON Schema of pipeline.yaml (for editors: ``w2v2ser run --schema > pipeline.schema.json``)."""
    schema = pipeline_model().model_json_schema(schema_generator=_FileJsonSchema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    # The shorthands the loader's before-validators take: `cluster: none` (a kind alone), null.
    cluster = schema["properties"]["cluster"]
    schema["properties"]["cluster"] = {"anyOf": [{"$ref": cluster.pop("$ref")}, {"enum": list(CLUSTER_KINDS)},
                                                 _FileJsonSchema.VARIABLE, {"type": "null"}], **cluster}
    return schema


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


def _resolve_path(value: Any, base: Path, where: str, *, must_exist: bool, written: Any = None) -> Path | None:
    """``value`` as an absolute path (None stays None); ``written`` is the value before ``${VAR}`` expansion."""
    # ${X:-} is the empty string, as in a shell (read as null when it is the whole value): an empty path took
    # the default output folder or skipped the corpus without a word; ${X:-null} still says null.
    names = ENV_VARIABLE.findall(written) if isinstance(written, str) else []
    if value is None and names and not ENV_VARIABLE.sub(lambda m: os.environ.get(m[1]) or m[2] or "", written).strip():
        value = ""
    if value is None:
        return None
    if isinstance(value, str) and not value.strip():  # Path("") is this file's folder: a corpus read from there
        via = (f" ({written!r} expands to the empty string: {', '.join(n for n, _ in names)} is empty or unset, "
               f"and so is its default)" if names else "")
        skip = "null to skip what needs it" if must_exist else "null for the default (runs beside this file)"
        skip += f" (${{{names[0][0]}:-null}})" if names else ""
        fix = f"set {names[0][0]}, or " if names else ""
        raise ConfigError(f"{where}: the path is empty{via}; {fix}give a path or {skip}.")
    if is_store_url(str(value)):  # Path("s3://b/x") is the folder s3:/b/x
        kept = ("its stores, run folders and reports" if where == "output" else "what it reads")
        raise ConfigError(f"{where}: {value!r} is a URL; `w2v2ser run` keeps {kept} in local folders. For "
                          f"stores on object storage run the stages as commands: `w2v2ser extract ... --store "
                          f"s3://bucket/x.zarr`, then `w2v2ser train s3://bucket/x.zarr ...`.")
    # file:///data/x is the local path /data/x, as store paths read it (not the folder file:/data/x).
    try:
        path = Path(file_url_path(value) if isinstance(value, str) else value).expanduser()
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}.") from None
    path = Path(os.path.normpath(base / path))  # an absolute path replaces base
    if must_exist and not path.exists():
        raise ConfigError(f"{where}: {value!r} resolves to {path}, which does not exist. Fix the path "
                          f"(relative paths start at {base}) or set it to null to skip what needs it."
                          f"{_windows_path_hint(str(value), base)}")
    return path


def _windows_path_hint(value: str, base: Path) -> str:
    """What a missing path copied from Windows (``..\\data``, ``C:\\...``) or with a trailing space
    should be written as, where that is clear."""
    if re.match(r"^([A-Za-z]:[\\/]|\\\\)", value):
        return " It is a Windows path (C:\\..., \\\\server\\...), which this system cannot open: give this machine's path."
    for fixed, what in ((value.replace("\\", "/"), "write / instead of \\"), (value.strip(), "remove the spaces around it")):
        if fixed != value and (base / Path(fixed).expanduser()).exists():
            return f" {fixed!r} exists: {what}."
    return ""


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
    if "/" in model and candidate.parent.is_dir() and not _hub_model_known(model):
        # A mistyped `models/wav2vec2-typo` beside a folder `models` is a path too: resolving it fails it
        # as missing, wherever the run starts, instead of looking it up on the hub (offline: a skip). A hub
        # id in the Hugging Face cache or on the hub (`facebook/wav2vec2-base` beside a folder `facebook`,
        # a gated model) stays an id, as `--model` takes it.
        return {**options, "model": os.path.normpath(candidate)}
    return options


def _hub_model_known(model: str) -> bool | None:
    """:func:`w2v2ser.extract._models.hub_model_known` (cache, then hub), as ``--model`` decides;
    without stage 1's packages installed, the Hugging Face cache only."""
    if _hub_snapshots(model):
        return True
    try:
        from w2v2ser.extract._models import hub_model_known
    except ImportError:  # a stage-2-only install: nothing to look up the hub with
        return False
    return hub_model_known(model)


def _hub_snapshots(model: str) -> list[Path]:
    """The config.json of each snapshot of hub id ``model`` in the local Hugging Face cache."""
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    return sorted((hub.expanduser() / f"models--{model.replace('/', '--')}" / "snapshots").glob("*/config.json"))


def _layer_count(model: str) -> int | None:
    """Layer outputs (transformer layers + 1) of an upstream model, from its config.json if findable.

    Looks at a local ``save_pretrained`` folder, then the Hugging Face cache, then a table of
    well-known checkpoints; None when unknown (the selection is then checked at training time).
    """
    candidates = [Path(model).expanduser() / "config.json"]
    if "/" in model and not Path(model).exists():
        candidates += _hub_snapshots(model)
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
    from w2v2ser.train._head_names import reads_fusion  # no Keras

    specs: list[ExperimentSpec] = []
    where = f"experiments.{group}"
    grid = entry.get("grid") or {}  # types checked by the schema
    for key in grid:
        if key in entry:
            raise ConfigError(f"{where}.grid.{key}: {key!r} is set both in the grid and as {where}.{key}; keep one")
    fixed = {k: v for k, v in entry.items() if k != "grid"}
    keys = list(grid)
    for point in itertools.product(*(grid[k] for k in keys)):
        values = {**fixed, **dict(zip(keys, point))}
        label = "/".join(_label(v) for k, v in zip(keys, point) if k != "corpus")
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
            from w2v2ser.train import ExperimentConfig

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
        patterns = entry.experiments
        for i, pattern in enumerate(patterns):
            if experiments and not any(fnmatchcase(e.name, pattern) for e in experiments):
                groups = sorted({e.name.split("/")[0] for e in experiments})
                first, *rest = pattern.split("/")
                # Suggest the whole pattern with its group corrected: 'tabel1/*' -> 'table1/*'; a group
                # alone ('fus', whose experiments are 'fus/iemocap'...) -> 'fus/*'.
                hint = did_you_mean(first, groups, canonical={g: "/".join([g, *(rest or ["*"])]) for g in groups})
                raise ConfigError(f"reports.{name}.experiments[{i}]: pattern {pattern!r} matches no experiment "
                                  f"(groups: {', '.join(groups)}).{hint}")
        covered = [e.name for e in experiments if any(fnmatchcase(e.name, p) for p in patterns)]
        if entry.baseline is not None and experiments and entry.baseline not in covered:
            raise ConfigError(f"reports.{name}.baseline: {entry.baseline!r} is not an experiment of this report; "
                              f"expected one of {first_few(covered, 5)}.{did_you_mean(entry.baseline, covered)}")
        reports.append(ReportConfig(str(name), tuple(patterns), output / "reports" / str(name), entry.baseline))
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
