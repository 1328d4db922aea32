"""The extractor protocol and the registry of feature names to extractor classes."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, Protocol, runtime_checkable

import numpy as np

from w2v2ser._common import ConfigError, did_you_mean
from w2v2ser.store import FeatureSpec

__all__ = ["EXTRACTORS", "Extractor", "UnknownFeatureError", "build_extractor", "extractor_config_class"]


@runtime_checkable
class Extractor(Protocol):
    """What the stage 1 driver needs from a feature extractor."""

    name: str
    config: Any

    def feature_spec(self) -> FeatureSpec:
        """Shape, dtype, frame rate and recorded configuration of the feature."""

    def max_frames(self, num_samples: int) -> int:
        """Upper bound of the frames produced for that many 16 kHz samples."""

    def extract(self, signals: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Frames for each 16 kHz mono float32 signal."""


class UnknownFeatureError(ConfigError):
    """A feature name that no extractor provides."""


# Name -> (module, config class, extractor class). Imported on demand so that
# choosing eGeMAPS never imports torch.
EXTRACTORS: dict[str, tuple[str, str, str]] = {
    "wav2vec2": ("w2v2ser.extract._wav2vec2", "Wav2Vec2Config", "Wav2Vec2Extractor"),
    "egemaps": ("w2v2ser.extract._egemaps", "EgemapsConfig", "EgemapsExtractor"),
    "spectrogram": ("w2v2ser.extract._spectrogram", "SpectrogramConfig", "SpectrogramExtractor"),
}


def _lookup(name: str) -> tuple[type, type]:
    if name not in EXTRACTORS:
        raise UnknownFeatureError(
            f"Unknown feature {name!r}; expected one of {', '.join(sorted(EXTRACTORS))}."
            f"{did_you_mean(name, EXTRACTORS)}"
        )
    module_name, config_name, extractor_name = EXTRACTORS[name]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, extractor_name)


def extractor_config_class(name: str) -> type:
    """The config dataclass of a feature's extractor."""
    return _lookup(name)[0]


def build_extractor(name: str, config: Mapping[str, Any] | None = None, *, recorded: bool = False) -> Extractor:
    """Build an extractor from a feature name and its config mapping.

    Args:
        name: Feature name (``wav2vec2``, ``egemaps``, ``spectrogram``).
        config: Config keys (as in pipeline.yaml); missing keys take their defaults.
        recorded: The mapping comes from a store's attributes: provenance keys the
            extractor added (weights hash, versions) are dropped instead of rejected.

    Returns:
        The extractor, ready to use (models load lazily on first use).
    """
    config_class, extractor_class = _lookup(name)
    values = dict(config or {})
    if recorded:
        known = {f.name for f in fields(config_class)}
        values = {key: value for key, value in values.items() if key in known}
    return extractor_class(config_class.from_dict(values))
