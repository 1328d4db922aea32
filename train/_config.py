"""ExperimentConfig: everything that decides a stage 2 experiment, with a stable key."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Annotated, Any, Collection, Literal, Mapping, Optional, Union, get_args

from pydantic import Field

from w2v2ser._common import W2v2serError
from w2v2ser._text import or_list
from w2v2ser._schema import check_dataclass, check_keywords, validate

from ._dataset import CACHE_MODES
from ._errors import ConfigError
from ._head_names import HEAD_BRANCHES, fusion_heads, reads_fusion
from ._normalisation import NORMALISATIONS
from ._protocols import PROTOCOLS
from ._recipes import RECIPES, Recipe, get_recipe, plain_scalar
from ._selection import parse_selection

# Choices and bounds are declared in the field annotations; w2v2ser._schema checks them (and
# derives pipeline.yaml's experiment schema from them), so a new field needs no checking code.
# The choices come from the registries (evaluated at import): registering a head, protocol,
# normalisation or recipe there is all it takes. Heads come from the Keras-free table of
# w2v2ser.train._head_names, so that configs load without Keras.
Head = Literal[tuple(HEAD_BRANCHES)]  # type: ignore[valid-type]
HEAD_NAMES = get_args(Head)
ProtocolName = Literal[tuple(PROTOCOLS)]  # type: ignore[valid-type]
NormName = Literal[tuple(NORMALISATIONS)]  # type: ignore[valid-type]
RecipeName = Literal[tuple(RECIPES)]  # type: ignore[valid-type]
CacheMode = Literal[tuple(CACHE_MODES)]  # type: ignore[valid-type]
_PositiveInt = Annotated[int, Field(ge=1)]

__all__ = ["ExperimentConfig", "DEFAULT_STORE_ALIAS", "FUSION_STORE_ALIAS", "as_experiment_config"]

DEFAULT_STORE_ALIAS = "main"
FUSION_STORE_ALIAS = "fusion"
# Fields that change speed or memory but never results: excluded from config_key().
RUNTIME_FIELDS = ("cache", "cache_budget_mb", "workers", "run_eagerly")
# A run's result does not depend on how many seeds the experiment has: adding seeds reuses runs.
SEED_FIELDS = ("seeds", "first_seed")
# The fields a protocol taken from the main store depends on.
_PROTOCOL_SOURCES = ("stores", "features", "subset")


class _StoreProtocol(str):
    """A protocol read from the main store, not given: ``dataclasses.replace``, ``copy`` and pickle carry it as
    such, so a copy given other stores reads theirs (``to_dict`` writes it as a plain string)."""

    __slots__ = ()


@check_keywords
@dataclass
class ExperimentConfig:
    """One stage 2 experiment (fields match the ``train:`` section of pipeline.yaml).

    Attributes:
        stores: Store alias -> store path; a plain path string means {"main": path}.
        features: Selection of the main branch, e.g. "wav2vec2:all" or "asr/wav2vec2:4-8".
        fusion_features: Selection of the fusion head's second branch; None -> "fusion/egemaps"
            when a "fusion" store alias exists, else "egemaps" (only used by head "fusion").
        head: "dense", "lstm" or "fusion".
        norm: "speaker", "global" or "none".
        protocol: "ravdess", "iemocap" or "csv"; None (the default) takes the protocol of the corpus
            the main store was extracted from, as ``w2v2ser train`` does without ``--protocol``.
            A protocol so taken is read again from the new main store when stores, features or
            subset is assigned afterwards (None until the config is used, if that store cannot be
            read yet); a copy (``dataclasses.replace(config, stores=...)``) reads its own main
            store's.
        subset: Train and test on the utterances whose field has one of the given values, e.g.
            {"vocal_channel": "speech"} (RAVDESS speech only) or {"method": "improvised"} (IEMOCAP);
            a field is speaker, label, gender, session, split or a key the corpus reader records
            per utterance (``extra``). Empty (the default): every utterance.
        recipe: "paper" or "official".
        recipe_overrides: Recipe field -> value, e.g. {"learning_rate": 3e-4, "max_epochs": 30}.
        batch_size: Shortcut for recipe_overrides["batch_size"] (None = the recipe's).
        seeds: Number of seeds (runs per fold); seeds are first_seed .. first_seed+seeds-1.
        first_seed: First seed.
        max_frames: Crop length override (None = the protocol's: 250 RAVDESS, 400 IEMOCAP/CSV).
        units: Width of the Dense/LSTM blocks.
        dropout: Dropout rate after each pointwise block.
        csv_folds: Speaker groups of the CSV protocol when the manifest has no split column.
        speaker_folds: Cross-validate over this many speaker groups instead of the protocol's own
            split (RAVDESS: test actors 23-24 only): speakers in sorted order are cut into k
            groups, each group tests once while the next (cyclically) validates and the rest
            train. None (the default): the protocol's split. Classes and crop stay the protocol's.
        deterministic: Enable TensorFlow op determinism (repeatable runs, a little slower).
        cache: "auto" (cache cropped frames in memory when they fit cache_budget_mb) or "off".
        cache_budget_mb: Memory budget of the frame cache.
        workers: Threads reading batches ahead of training.
        run_eagerly: Skip tf.function tracing (faster for tiny data and tests, slower for real runs).
    """

    stores: Annotated[dict[str, str], Field(min_length=1)] = field(default_factory=dict)
    features: str = "wav2vec2:all"
    fusion_features: Optional[str] = None
    head: Head = "dense"
    norm: NormName = "speaker"
    protocol: Optional[ProtocolName] = None
    subset: dict[str, Union[str, Annotated[list[str], Field(min_length=1)]]] = field(default_factory=dict)
    recipe: RecipeName = "paper"
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    batch_size: Optional[_PositiveInt] = None
    seeds: _PositiveInt = 5
    first_seed: Annotated[int, Field(ge=0)] = 0
    max_frames: Optional[_PositiveInt] = None
    units: _PositiveInt = 128
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
    csv_folds: Annotated[int, Field(ge=3)] = 5  # a group tests, the next validates: 3 at least
    speaker_folds: Optional[Annotated[int, Field(ge=3)]] = None
    deterministic: bool = True
    cache: CacheMode = "auto"
    cache_budget_mb: Annotated[float, Field(ge=0.0)] = 2048.0
    workers: Annotated[int, Field(ge=0)] = 2
    run_eagerly: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.protocol, _StoreProtocol):  # dataclasses.replace(config, stores=...) passes it on
            self.protocol = None
        if isinstance(self.stores, (str, os.PathLike)):
            self.stores = {DEFAULT_STORE_ALIAS: str(self.stores)}
        if not isinstance(self.stores, Mapping):  # a list failed on .items() with an AttributeError
            raise ConfigError(f"ExperimentConfig.stores: got a {type(self.stores).__name__}; give a path or "
                              f"{{alias: path}}, e.g. {{'main': '/path/to/store', 'fusion': '/path/to/egemaps'}}")
        if not self.stores:  # the schema's bound, with the fix
            raise ConfigError("ExperimentConfig.stores is empty; give {'main': '/path/to/store'} (or a path)")
        self.stores = {str(k): os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in self.stores.items()}
        # None, or any mapping (a MappingProxyType, an OmegaConf DictConfig of a Hydra sweep) as a dict
        overrides = self.recipe_overrides
        if overrides is None or isinstance(overrides, Mapping):
            self.recipe_overrides = {k: plain_scalar(v) for k, v in (overrides or {}).items()}
        for f in dataclasses.fields(self):  # numpy numbers (a grid from np.arange) as the Python ones they hold
            setattr(self, f.name, plain_scalar(getattr(self, f.name)))
        if isinstance(self.subset, Mapping):  # a tuple or set of values (Python) as the list the schema checks
            self.subset = {k: list(v) if isinstance(v, (tuple, set, frozenset)) else v for k, v in self.subset.items()}
        check_dataclass(self, what="ExperimentConfig")  # before the conversions, which raised TypeErrors
        # Local paths are made absolute; object-store URLs (s3://...) are kept as given.
        self.stores = {k: v if "://" in v else os.path.abspath(v) for k, v in self.stores.items()}
        # One spelling of each subset (a value or a list of values): the run's key does not change with it.
        self.subset = {key: sorted({values} if isinstance(values, str) else set(values))
                       for key, values in sorted(self.subset.items())}
        self.resolved_recipe()  # validates recipe overrides
        branches = self.selections()
        for text in branches.values():
            self.store_alias(text)
        if "fusion" in branches and self._same_frames(branches["main"], branches["fusion"]):
            raise ConfigError(f"head {self.head!r} joins two different features, but features={self.features!r} and the "
                              f"fusion branch {branches['fusion']!r} read the same frames; give the speech encoder "
                              f"as features (e.g. wav2vec2:all) and eGeMAPS as the fusion branch")
        if self.protocol is None:  # last: every check that needs no store has passed
            self.protocol = _StoreProtocol(self._store_protocol())
            object.__setattr__(self, "_protocol_from_store", True)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name == "protocol" and not isinstance(value, _StoreProtocol):  # given or assigned by hand: the user's
            object.__setattr__(self, "_protocol_from_store", False)
        # A protocol read from the main store is that store's: assigning what picks the store (stores,
        # features) or its corpus (subset) reads the new store's, as a new config would (it kept the first
        # store's); what the config shows (protocol, repr, to_dict, config_key) is what it will use.
        elif name in _PROTOCOL_SOURCES and self.__dict__.get("_protocol_from_store"):
            try:  # as a new config of these fields (a copy checks them: stores may be a path string)
                protocol = dataclasses.replace(self, protocol=None).protocol
            except W2v2serError:  # not readable yet (another field still to assign): read when the config is used
                protocol = None
            object.__setattr__(self, "protocol", protocol)

    def _store_protocol(self) -> str:
        """The protocol of the main store's corpus (its ``corpus`` attribute)."""
        from w2v2ser.store import StoreError

        from ._protocols import protocol_of_store

        path = self.stores[self.store_alias(self.features)]
        try:  # an incomplete store still names its corpus; training refuses it later, with its own message
            return protocol_of_store(path, allow_incomplete=True, subset=self.subset.get("corpus"))
        except StoreError as error:
            raise ConfigError(f"protocol not given, so it is read from the main store, which cannot be opened: "
                              f"{error} Pass protocol={or_list([repr(name) for name in PROTOCOLS])}.") from None

    def _same_frames(self, first: str, second: str) -> bool:
        a, b = parse_selection(first), parse_selection(second)
        return (self.stores[self.store_alias(first)] == self.stores[self.store_alias(second)]
                and (a.feature, a.layers) == (b.feature, b.layers))

    # -- derived values --------------------------------------------------------------------------
    def resolved_recipe(self) -> Recipe:
        """The recipe with overrides (and the batch_size shortcut) applied."""
        overrides = dict(self.recipe_overrides)
        if self.batch_size is not None:
            if "batch_size" in overrides and overrides["batch_size"] != self.batch_size:
                raise ConfigError(f"batch_size={self.batch_size} conflicts with recipe_overrides['batch_size']="
                                  f"{overrides['batch_size']}; set only one")
            overrides["batch_size"] = self.batch_size
        return get_recipe(self.recipe, overrides)

    def selections(self) -> dict[str, str]:
        """Branch name -> selection string ("main", and "fusion" for a head that reads a fusion branch)."""
        if self.fusion_features and not reads_fusion(self.head):
            heads = fusion_heads() or ["fusion"]
            raise ConfigError(f"fusion_features={self.fusion_features!r} is only used by head "
                              f"{or_list([repr(h) for h in heads])}, got head {self.head!r}; drop it or use "
                              f"head={heads[0]!r}")
        return branch_selections(self.features, self.fusion_features, self.head, self.stores)

    def store_alias(self, selection: str) -> str:
        """Alias of the store a selection reads from (its prefix, else the default store).

        Args:
            selection: A feature selection, e.g. ``"main/wav2vec2:all"`` or ``"egemaps"``.

        Raises:
            ConfigError: The prefix is no alias of ``stores``, or there is no prefix and no default store.
        """
        sel = parse_selection(selection)
        if sel.alias is not None:
            if sel.alias not in self.stores:
                raise ConfigError(f"selection {selection!r} names store alias {sel.alias!r}, but stores has "
                                  f"{sorted(self.stores)}; add it to stores or fix the prefix")
            return sel.alias
        alias = default_store_alias(self.stores)
        if alias is not None:
            return alias
        raise ConfigError(f"selection {selection!r} has no store prefix and stores {sorted(self.stores)} has no "
                          f"{DEFAULT_STORE_ALIAS!r} alias; write e.g. '{next(iter(self.stores))}/{selection}'")

    # -- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExperimentConfig":
        """Build from a dict (unknown keys raise ConfigError with a did-you-mean hint, from
        ``check_keywords``; values are converted and checked by ``__post_init__``).

        Args:
            d: Field name -> value, as :meth:`to_dict` returns it or ``experiment.json`` records it.
        """
        return cls(**validate(dict[str, Any], d, what="ExperimentConfig"))  # None or a list raised a TypeError

    def config_key(self) -> str:
        """Stable 16-hex-digit hash of everything that changes a run's result.

        Excludes runtime-only fields (cache, cache_budget_mb, workers), the seed count (adding
        seeds reuses finished runs) and where the stores are (a store moved, or staged to a node's
        local disk, keeps its runs; which store it is, the runs' store and data fingerprints say);
        includes the store aliases, the fully resolved recipe and the selections.
        """
        return self._key(with_store_paths=False)

    def config_keys(self) -> tuple[str, str]:
        """``config_key()`` and the key w2v2ser recorded up to 0.2, which hashed the stores' paths
        too: runs recorded with either are runs of this configuration."""
        return self._key(with_store_paths=False), self._key(with_store_paths=True)

    def seeds_differ(self, recorded: Mapping[str, Any]) -> bool:
        """Whether an ``experiment.json`` (``recorded``) names other seeds (``seeds``, ``first_seed``) than this
        configuration: they are not in the key, but evaluate and predict read the current seeds there.

        Args:
            recorded: The configuration an ``experiment.json`` records.
        """
        now = self.to_dict()
        return any(recorded.get(k) != now.get(k) for k in SEED_FIELDS)

    def _key(self, *, with_store_paths: bool) -> str:
        # Of the fields checked and spelt as a new config's: one assigned afterwards skipped __post_init__ (a path
        # string as stores hashed its characters, a subset value alone was not a list); the protocol as it is,
        # None (not readable when assigned) read from the store.
        config = dataclasses.replace(self, protocol=None if self.protocol is None else str(self.protocol))
        d = {k: v for k, v in config.to_dict().items() if k not in RUNTIME_FIELDS + SEED_FIELDS}
        for added in ("subset", "speaker_folds"):  # added in 0.3: at their default, runs keep their key
            if not d[added]:
                del d[added]
        if not with_store_paths:
            d["stores"] = sorted(config.stores)
        d["recipe_resolved"] = config.resolved_recipe().to_dict()
        d["selections"] = config.selections()
        text = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def branch_selections(features: str, fusion_features: str | None, head: str,
                      aliases: Collection[str]) -> dict[str, str]:
    """Branch name -> selection string of an experiment ("main", and "fusion" for a head that reads a
    fusion branch), as :meth:`ExperimentConfig.selections` and the report (from experiment.json) read them.

    Raises:
        SelectionError: The fusion selection does not follow the grammar.
    """
    out = {"main": features}
    if reads_fusion(head):
        text = fusion_features or "egemaps"
        if FUSION_STORE_ALIAS in aliases and parse_selection(text).alias is None:
            text = f"{FUSION_STORE_ALIAS}/{text}"  # a fusion store, when given, feeds the fusion branch
        out["fusion"] = text
    return out


def default_store_alias(aliases: Collection[str]) -> str | None:
    """Alias of the store that a selection without prefix reads: the only store, else "main"; None
    when there are several and none is "main"."""
    if len(aliases) == 1:
        return next(iter(aliases))
    return DEFAULT_STORE_ALIAS if DEFAULT_STORE_ALIAS in aliases else None


def as_experiment_config(config: "ExperimentConfig | Mapping[str, Any]") -> "ExperimentConfig":
    """The stage 2 functions' ``config``: an :class:`ExperimentConfig`, or a mapping of its keys
    (a ``train:`` entry as loaded from YAML), checked by :meth:`ExperimentConfig.from_dict`."""
    if isinstance(config, ExperimentConfig):
        # Checked again: a field assigned after construction (cfg.seeds = 0, cfg.stores = "x.zarr") skipped
        # __post_init__'s checks and conversions (a path string failed with AttributeError: 'str' ... 'items').
        return dataclasses.replace(config)
    if isinstance(config, Mapping):
        return ExperimentConfig.from_dict(config)
    raise ConfigError(f"config: got {type(config).__name__}; expected an ExperimentConfig or a mapping of its keys, "
                      f"e.g. ExperimentConfig(stores='stores/ravdess.zarr', features='egemaps')")
