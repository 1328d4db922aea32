"""Plain data types shared by the store, the extractors and stage 2."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from w2v2ser._common import did_you_mean

from ._errors import StoreError

__all__ = [
    "Utterance",
    "UtteranceRecord",
    "FeatureSpec",
    "FeatureStatistics",
    "Failure",
    "VerifyReport",
]

_DTYPES = ("float16", "float32", "float64")


def _reject_unknown(kind: str, given: Mapping[str, Any], known: list[str]) -> None:
    """Raise StoreError for keys not in `known`, with a did-you-mean hint."""
    for key in given:
        if key not in known:
            raise StoreError(
                f"{kind}: unknown key {key!r}; expected one of {sorted(known)}.{did_you_mean(key, known)} "
                f"Remove or rename the key."
            )


@dataclass(frozen=True)
class Utterance:
    """One manifest row, as produced by the corpus readers."""

    id: str
    path: str
    speaker: str
    label: str
    session: str = ""
    split: str = ""
    gender: str = ""
    corpus: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class UtteranceRecord(Utterance):
    """An utterance as stored: manifest fields plus what extraction recorded."""

    duration: float
    num_samples: int
    audio_sha256: str
    status: str
    index: int


@dataclass(frozen=True)
class FeatureSpec:
    """What one feature looks like in the store."""

    name: str
    dim: int
    layers: int | None
    frame_rate: float
    dtype: str
    config: Mapping[str, Any]
    layer_names: tuple[str, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise StoreError(
                f"FeatureSpec.name: got {self.name!r}; expected a non-empty string without '/'."
            )
        if not isinstance(self.dim, int) or self.dim < 1:
            raise StoreError(f"FeatureSpec {self.name!r}: dim={self.dim!r}; expected an int >= 1.")
        if self.layers is not None and (not isinstance(self.layers, int) or self.layers < 1):
            raise StoreError(
                f"FeatureSpec {self.name!r}: layers={self.layers!r}; expected None (2-D frames) "
                f"or an int >= 1 (3-D frames [frames, layers, dim])."
            )
        if not isinstance(self.frame_rate, (int, float)) or not self.frame_rate > 0:
            raise StoreError(
                f"FeatureSpec {self.name!r}: frame_rate={self.frame_rate!r}; expected frames per "
                f"second > 0."
            )
        if self.dtype not in _DTYPES:
            raise StoreError(
                f"FeatureSpec {self.name!r}: dtype={self.dtype!r}; expected one of {_DTYPES}."
            )
        if self.layer_names is not None:
            object.__setattr__(self, "layer_names", tuple(self.layer_names))
            if self.layers is None or len(self.layer_names) != self.layers:
                raise StoreError(
                    f"FeatureSpec {self.name!r}: {len(self.layer_names)} layer_names for "
                    f"layers={self.layers}; give one name per layer or layer_names=None."
                )

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one frame: ``(layers, dim)`` or ``(dim,)``."""
        return (self.dim,) if self.layers is None else (self.layers, self.dim)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the form stored in the root attributes)."""
        return {
            "name": self.name,
            "dim": self.dim,
            "layers": self.layers,
            "frame_rate": float(self.frame_rate),
            "dtype": self.dtype,
            "config": json.loads(json.dumps(dict(self.config), sort_keys=True)),
            "layer_names": list(self.layer_names) if self.layer_names is not None else None,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureSpec":
        """Build from :meth:`to_dict` output; unknown keys are rejected."""
        known = [f.name for f in fields(cls)]
        _reject_unknown("FeatureSpec", d, known)
        missing = [k for k in ("name", "dim", "layers", "frame_rate", "dtype", "config") if k not in d]
        if missing:
            raise StoreError(f"FeatureSpec: missing keys {missing} in {dict(d)!r}.")
        kwargs = dict(d)
        if kwargs.get("layer_names") is not None:
            kwargs["layer_names"] = tuple(kwargs["layer_names"])
        return cls(**kwargs)


@dataclass(frozen=True)
class FeatureStatistics:
    """Normalisation statistics over frames: count, mean and population variance."""

    count: int
    mean: np.ndarray
    variance: np.ndarray

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation."""
        return np.sqrt(self.variance)


@dataclass(frozen=True)
class Failure:
    """One failed (utterance, feature); ``feature`` None means the whole utterance."""

    id: str
    path: str
    feature: str | None
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    """Result of :meth:`FeatureStore.verify`."""

    problems: list[tuple[str, str, str]]
    checked: int = 0

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            return f"store OK ({self.checked} utterance x feature regions checked)"
        lines = [f"{len(self.problems)} problem(s):"]
        lines += [f"  {u} [{f}]: {m}" for u, f, m in self.problems]
        return "\n".join(lines)
