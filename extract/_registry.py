"""The extractor protocol and the registry of feature names to extractor classes."""

from __future__ import annotations

import importlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from w2v2ser._common import UPSTREAM_FEATURES, ConfigError, W2v2serError
from w2v2ser._schema import validate
from w2v2ser.store import FeatureSpec

from ._audio import NATIVE

__all__ = [
    "EXTRACTORS",
    "UPSTREAMS",
    "Extractor",
    "UnknownFeatureError",
    "build_extractor",
    "configs_like",
    "extractor_config_class",
    "features_like",
]


@runtime_checkable
class Extractor(Protocol):
    """What the stage 1 driver needs from a feature extractor.

    To add a feature, write a module like ``extract/_spectrogram.py`` and add one line to
    :data:`EXTRACTORS`. It needs:

    - a config dataclass with ``to_dict()`` and ``from_dict(mapping)`` (``from_dict`` checks the
      keys against the fields, as ``SpectrogramConfig.from_dict`` does with ``build_dataclass``);
      its field annotations are the schema of its ``pipeline.yaml`` section and of ``--option``
      (use ``Literal`` and ``Annotated[int, Field(ge=1)]`` for choices and bounds). An option
      added after stores were written goes in its ``RECORDED_DEFAULTS`` (a ClassVar mapping it to
      the value older stores were made with);
    - an extractor class built as ``cls(config)``, with the members below.

    Optional members the driver looks for: ``check(*, local: bool)`` (below),
    ``decided_options()`` (options settled at run time, recorded with the config), and, for the
    speech encoders listed in :data:`UPSTREAMS` (which run on GPU workers), ``uses_cuda()``.
    Options that change speed but never values are recorded under ``spec.config["runtime"]``,
    where the store's config check ignores them.
    """

    name: str
    config: Any

    def feature_spec(self) -> FeatureSpec:
        """Shape, dtype, frame rate and recorded configuration of the feature."""

    def max_frames(self, num_samples: int) -> int:
        """Upper bound of the frames produced for that many 16 kHz samples.

        Args:
            num_samples: Length of a 16 kHz signal in samples.
        """

    def extract(self, signals: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Frames for each 16 kHz mono float32 signal.

        Args:
            signals: The signals, one per utterance.

        Returns:
            One ``[frames, *frame_shape]`` array per signal.
        """

    # Extractors may define ``check(*, local: bool)``, which raises a configuration error (a model
    # not found, a device absent) before the driver creates the store; ``local`` is False when
    # the extraction runs on Dask workers, whose devices the driver does not see.
    # Extractors whose config has a ``sample_rate`` ("native" or Hz) also take keyword
    # arguments: ``max_frames(n, sample_rate=...)``, ``extract(signals, sample_rates=[...])``
    # and, for the spectrogram, ``feature_spec(sample_rate=...)``; the driver hands them each
    # file at the rate they ask for.


class UnknownFeatureError(ConfigError):
    """A feature name that no extractor provides."""


# Name -> (module, config class, extractor class). Imported on demand so that
# choosing eGeMAPS never imports torch. The speech encoders are named after their family
# (config.json model_type: wav2vec2, hubert, wavlm, data2vec-audio -> data2vec).
EXTRACTORS: dict[str, tuple[str, str, str]] = {
    "wav2vec2": ("w2v2ser.extract._wav2vec2", "Wav2Vec2Config", "Wav2Vec2Extractor"),
    "hubert": ("w2v2ser.extract._wav2vec2", "HubertConfig", "HubertExtractor"),
    "wavlm": ("w2v2ser.extract._wav2vec2", "WavLMConfig", "WavLMExtractor"),
    "data2vec": ("w2v2ser.extract._wav2vec2", "Data2VecConfig", "Data2VecExtractor"),
    "egemaps": ("w2v2ser.extract._egemaps", "EgemapsConfig", "EgemapsExtractor"),
    "spectrogram": ("w2v2ser.extract._spectrogram", "SpectrogramConfig", "SpectrogramExtractor"),
}

# Feature names of the self-supervised speech encoders (one extractor class, one name per family).
UPSTREAMS = frozenset(UPSTREAM_FEATURES)


# Optional packages each feature needs: missing ones give a one-line install hint, not a traceback.
_REQUIRES: dict[str, tuple[str, ...]] = {**{name: ("torch", "transformers") for name in UPSTREAMS},
                                         "egemaps": ("opensmile",)}


def _lookup(name: str) -> tuple[type, type]:
    validate(Literal[tuple(sorted(EXTRACTORS))], name, where="feature", error=UnknownFeatureError)
    module_name, config_name, extractor_name = EXTRACTORS[name]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, extractor_name)


def extractor_config_class(name: str) -> type:
    """The config dataclass of a feature's extractor."""
    return _lookup(name)[0]


def build_extractor(name: str, config: Mapping[str, Any] | Any = None, *, recorded: bool = False) -> Extractor:
    """Build an extractor from a feature name and its config (a mapping or the config dataclass).

    Args:
        name: Feature name (``wav2vec2``, ``hubert``, ``wavlm``, ``data2vec``, ``egemaps``, ``spectrogram``).
        config: Config keys (as in pipeline.yaml; missing keys take their defaults), or an
            instance of the feature's config class, e.g. ``SpectrogramConfig(hop_ms=20)``.
        recorded: The mapping comes from a store's attributes: provenance keys the
            extractor added (weights hash, versions) are dropped instead of rejected, and
            options the store predates take the value it was made with (``RECORDED_DEFAULTS``
            of the config class, e.g. ``sample_rate: 16000``).

    Returns:
        The extractor, ready to use (models load lazily on first use).

    Raises:
        MissingDependencyError: A package the feature needs is not installed; the message
            names the extra, e.g. ``pip install "w2v2ser[extract]"``.
    """
    from w2v2ser._deps import require_modules

    config_class, extractor_class = _lookup(name)
    require_modules(*_REQUIRES.get(name, ()), needed_for=name if name in UPSTREAMS else None)
    if isinstance(config, config_class):
        return extractor_class(config)
    if config is not None and not isinstance(config, Mapping):
        raise ConfigError(f"build_extractor({name!r}, config=...): got config of type {type(config).__name__}; "
                          f"expected a {config_class.__name__} or a mapping of its keys, e.g. "
                          f"{config_class.__name__}() or {{}}")
    values = dict(config or {})
    if recorded:
        known = {f.name for f in fields(config_class)}
        # Options added after a store was written: absent means what the store was made with.
        values = {**getattr(config_class, "RECORDED_DEFAULTS", {}),
                  **{key: value for key, value in values.items() if key in known}}
    return extractor_class(config_class.from_dict(values))


# The heads that read a fusion branch, as train/_head_names.py lists them (stage 1 imports no stage 2
# code; a test checks that the two agree).
_FUSION_HEADS = ("fusion",)


def _run_reads(record: Mapping[str, Any]) -> dict[str | None, set[str]] | None:
    """Store alias -> the features a run read from it, from the configuration its ``experiment.json``
    records (as ``ExperimentConfig.selections`` resolves it); None where the record does not say."""
    config = record.get("config") if isinstance(record.get("config"), Mapping) else record
    stores, features = config.get("stores"), config.get("features")
    if not isinstance(stores, Mapping) or not stores or not isinstance(features, str):
        return None
    texts = [features]
    if config.get("head") in _FUSION_HEADS:
        text = config.get("fusion_features") or "egemaps"
        # A fusion store, when given, feeds the fusion branch.
        texts.append(text if "/" in str(text) or "fusion" not in stores else f"fusion/{text}")
    default = next(iter(stores)) if len(stores) == 1 else "main" if "main" in stores else None
    reads: dict[str | None, set[str]] = {}
    for text in texts:
        alias, _, selection = str(text).strip().rpartition("/")
        reads.setdefault(alias or default, set()).add(selection.partition(":")[0])
    return reads


def features_like(source: str | Path) -> tuple[dict[str, FeatureSpec], dict[str, set[int | None]]]:
    """The features recorded in a store, or in a run directory of ``w2v2ser train`` (``--like``).

    A run directory's ``experiment.json`` records, per store the run read, each feature's extractor
    config and the rates of the audio behind each feature computed at each file's own rate, so new
    audio can be extracted as training did without the training store. Of a run directory, only
    the features the run read are taken, each from the store it read it from (the record lists
    every feature of each store).

    Args:
        source: A store (folder or URL) or a run directory of ``w2v2ser train``.

    Returns:
        Feature name -> spec, and feature name -> the rates of the audio behind it (None for
        utterances of a store older than that record; empty when a run dir does not record them).

    Raises:
        ConfigError: ``source`` is a run directory whose record is unreadable or names one feature
            with two settings (it read two stores); StoreError: it is not a store either.
    """
    import json

    from w2v2ser.store import open_store

    run_record = Path(str(source)).expanduser() / "experiment.json"
    if not run_record.is_file():
        store = open_store(source)
        return dict(store.features), {name: set(store.sample_rates(name)) for name in store.features}
    try:
        experiment = json.loads(run_record.read_text(encoding="utf-8"))
        identity, reads = experiment["stores_identity"], _run_reads(experiment)
        recorded = [(alias, name, FeatureSpec.from_dict(spec), set(entry.get("audio_rates", {}).get(name, ())))
                    for alias, entry in identity.items() for name, spec in entry["features"].items()]
        # A record that names none of them (not written by train) keeps them all, as before.
        recorded = [r for r in recorded if reads is not None and r[1] in reads.get(r[0], ())] or recorded
    except (OSError, ValueError, KeyError, TypeError, AttributeError, W2v2serError) as exc:
        raise ConfigError(f"--like {source}: cannot read the feature settings that {run_record} records "
                          f"({type(exc).__name__}: {exc}); pass the training store instead (--like STORE) "
                          "or train the run again.") from None
    features: dict[str, FeatureSpec] = {}
    rates: dict[str, set[int | None]] = {}
    owner: dict[str, str] = {}
    for alias, name, spec, found in recorded:
        if name in features and features[name] != spec:
            raise ConfigError(f"--like {source}: the run read feature {name!r} from two stores with different "
                              f"settings ({owner[name]!r} and {alias!r}); pass the one store to extract like: "
                              f"--like STORE.")
        features[name], owner[name] = spec, alias
        rates[name] = rates.get(name, set()) | found
    return features, rates


def configs_like(features: Mapping[str, FeatureSpec], *, store: str = "the store",
                 changes: Mapping[str, Mapping[str, Any]] | None = None,
                 audio_rates: Mapping[str, Collection[int | None]] | None = None) -> dict[str, dict[str, Any]]:
    """The extractor configs recorded in a store, to give new audio the same features (``--like``).

    A local model is recorded as an absolute path; a store written before that recorded the spelling
    given (``--model tiny``, relative to where extraction ran): its recorded absolute path is taken
    when it exists, else that spelling from here, once it is checked to hold the store's weights.

    Args:
        features: The store's features (``FeatureStore.features``).
        store: The store, for messages.
        changes: Per feature, options to change: those that never change the values (device,
            batch size, threads, kernels, max_seconds) and, for a speech encoder, where its weights are
            (``model``, ``revision``), which must then hold the recorded weights. A ``native``
            ``sample_rate`` may become a rate in Hz when all of the store's audio had that rate
            (``audio_rates``): the store's own files give the same frames either way, and new
            files at other rates are resampled to it, as ``predict`` wants.
        audio_rates: Per feature, the sample rates of the files the store's utterances of it
            came from (``UtteranceRecord.sample_rate``; None for a store that predates them).

    Raises:
        ConfigError: A change of another option, or a model with other weights.
    """
    from ._models import resolve_model, same_weights
    from ._wav2vec2 import RUNTIME_KEYS

    configs: dict[str, dict[str, Any]] = {}
    for name, spec in features.items():
        config = dict(spec.config)
        provenance = config.get("provenance") or {}
        model = config.get("model")
        # A relative model (recorded by stores written before models were recorded absolute) means
        # another folder from here, maybe with other weights: the absolute path the store recorded is
        # taken when it is there, else the relative one is used only once its weights are checked.
        relative = (name in UPSTREAMS and provenance.get("source") in ("local", "fairseq") and isinstance(model, str)
                    and not Path(model).expanduser().is_absolute())
        if relative and Path(str(provenance.get("resolved_path"))).exists():
            config["model"] = provenance["resolved_path"]
        relative = relative and config["model"] == model and Path(model).expanduser().exists()
        wanted = dict((changes or {}).get(name) or {})
        # max_seconds only turns longer files into failures: no stored value depends on it.
        allowed = set(RUNTIME_KEYS) | {"model", "revision", "max_seconds"} if name in UPSTREAMS else set()
        rates = set((audio_rates or {}).get(name) or ())
        if "sample_rate" in wanted and _same_frames_at(config.get("sample_rate"), wanted["sample_rate"], rates):
            allowed.add("sample_rate")
        refused = sorted(set(wanted) - allowed)
        if refused:
            rate_note = ""
            if "sample_rate" in refused and config.get("sample_rate") == NATIVE:
                known = ", ".join(str(r) for r in sorted(rates, key=str)) or "not recorded"
                rate_note = (f"; a native sample_rate may only become the one rate of all the store's audio "
                             f"(its files' rates: {known})")
            raise ConfigError(
                f"--like {store} gives {name} its recorded config, and {', '.join(refused)} would change its "
                f"values; drop --like to extract with other options, or drop the option"
                + (f" (options that may change here: {', '.join(sorted(allowed))})" if allowed else "")
                + rate_note
            )
        given = wanted.get("model", config.get("model"))
        if given != config.get("model") or "revision" in wanted or relative:
            weights = dict(resolve_model(str(given), revision=wanted.get("revision")).weights_sha256)
            recorded = dict(provenance.get("weights_sha256") or {})
            if not same_weights(weights, recorded):
                raise ConfigError(
                    f"--like {store}: the {name} model {given!r} holds other weights than the "
                    f"store's (sha256 {weights} vs {recorded}); pass the model the store was made with, or drop --like"
                )
        configs[name] = {**config, **wanted}
    return configs


def _same_frames_at(recorded: Any, wanted: Any, rates: set[int | None]) -> bool:
    """Whether ``sample_rate: wanted`` gives a store's own files the frames ``recorded`` gave them:
    the same setting, or a rate in Hz where the store's audio (``rates``) all had that rate."""
    if wanted == recorded:
        return True
    return recorded == NATIVE and isinstance(wanted, int) and not isinstance(wanted, bool) and rates == {wanted}
