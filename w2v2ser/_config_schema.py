"""The pydantic schema of pipeline.yaml: value types, the section models, the whole-file model
(:func:`pipeline_model`, extractor and experiment sections derived from their config dataclasses)
and its JSON Schema for editors (``w2v2ser run --schema``)."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, BeforeValidator, Field, StringConstraints, ValidationInfo, WithJsonSchema,
                      create_model, model_validator)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue

from w2v2ser.extract._corpora import CORPUS_READERS

from ._common import SHARD_SIZE
from ._overrides import ENV_VARIABLE
from ._schema import StrictModel, dataclass_model
from ._config_paths import _local_model

__all__ = [
    "ClusterConfig", "CorpusEntry", "ReportEntry", "SlurmConfig", "pipeline_json_schema", "pipeline_model",
]

CORPUS_KINDS = tuple(CORPUS_READERS)  # the corpus readers registered in w2v2ser.extract
CLUSTER_KINDS = ("local", "none", "slurm")


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


def _slurm_log_directory(value: str) -> str:
    """A folder that can go into the worker jobs' ``#SBATCH -o``/``-e`` lines (quoted, ``%`` doubled): a
    backslash is an escape there and, in a log's name, keeps SLURM from filling in the job id (every job
    would write one log); a double quote would end the quoted name, a line break the line."""
    if any(char in value for char in '\\"\n\r'):
        raise ValueError(f"{value!r} holds a backslash, a double quote or a line break, which the worker "
                         f"jobs' #SBATCH -o/-e lines cannot carry; choose a folder without them")
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
    log_directory: Optional[Annotated[_Text, AfterValidator(_slurm_log_directory)]] = None
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
    from w2v2ser.extract._wav2vec2 import Device
    from w2v2ser.train import ExperimentConfig, Recipe

    features = create_model("Features", __base__=StrictModel, __doc__="Extractor name -> its options.",
                            **{name: (_feature_model(name), None) for name in EXTRACTORS})
    store = create_model("Store", __base__=StrictModel, __doc__="One feature store per corpus.",
                         corpora=(_Names, None), features=(features, ...))
    extraction = create_model(
        "Extraction", __base__=StrictModel, __doc__="Feature stores and extraction settings.",
        device=(Optional[Device], None), batch_seconds=(Optional[Annotated[float, Field(gt=0)]], None),
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
