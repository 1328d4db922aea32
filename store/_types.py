"""Plain data types shared by the store, the extractors and stage 2."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping, Optional, Sequence

import numpy as np
from pydantic import Field

from w2v2ser._schema import build_dataclass, check_dataclass

from ._errors import StoreError

__all__ = [
    "AUDIO_RATE_KEY",
    "Utterance",
    "UtteranceRecord",
    "FeatureSpec",
    "FeatureStatistics",
    "Failure",
    "VerifyReport",
]

#: Key of ``Utterance.extra`` under which extraction records each file's own sample rate (Hz,
#: from its header); a manifest may not use it.
AUDIO_RATE_KEY = "audio_sample_rate"


@dataclass(frozen=True)
class Utterance:
    """One manifest row, as produced by the corpus readers.

    ``extra`` holds the reader's other columns as text; in a stored record it also holds what
    extraction recorded, e.g. ``extra[AUDIO_RATE_KEY]``, the file's own sample rate as an int.
    """

    id: str
    path: str
    speaker: str
    label: str
    session: str = ""
    split: str = ""
    gender: str = ""
    corpus: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def corpus_name(self) -> str:
        """The corpus this utterance is of: a CSV manifest's own ``corpus`` column where it has one
        (two CSV corpora of one store are both of kind ``csv``), else ``corpus`` (the kind)."""
        own = self.extra.get("corpus")
        return str(own) if own not in (None, "") else self.corpus


@dataclass(frozen=True, kw_only=True)
class UtteranceRecord(Utterance):
    """An utterance as stored: manifest fields plus what extraction recorded."""

    duration: float
    num_samples: int
    audio_sha256: str
    status: str
    index: int

    @property
    def sample_rate(self) -> int | None:
        """The audio file's own sample rate (Hz), or None for a store that predates the record."""
        rate = self.extra.get(AUDIO_RATE_KEY)
        return None if rate is None else int(rate)


@dataclass(frozen=True)
class FeatureSpec:
    """What one feature looks like in the store."""

    # Bounds and choices are the annotations (checked by w2v2ser._schema, errors as StoreError).
    name: Annotated[str, Field(min_length=1, pattern=r"^[^/]+$")]
    dim: Annotated[int, Field(ge=1)]
    layers: Optional[Annotated[int, Field(ge=1)]]  # None: 2-D frames; else [frames, layers, dim]
    frame_rate: Annotated[float, Field(gt=0)]  # frames per second
    dtype: Literal["float16", "float32", "float64"]
    config: Mapping[str, Any]
    layer_names: Optional[Sequence[str]] = None  # a tuple once built; Sequence: strict pydantic takes lists
    description: str = ""

    def __post_init__(self) -> None:
        if self.layer_names is not None and not isinstance(self.layer_names, str):  # a string: the check below
            object.__setattr__(self, "layer_names", tuple(self.layer_names))
        check_dataclass(self, what=f"FeatureSpec {self.name!r}", error=StoreError)
        if self.layer_names is not None and (self.layers is None or len(self.layer_names) != self.layers):
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
        """Build from :meth:`to_dict` output; unknown or missing keys are rejected."""
        return build_dataclass(cls, dict(d), what="FeatureSpec", error=StoreError)


@dataclass(frozen=True, eq=False)
class FeatureStatistics:
    """Normalisation statistics over frames: count, mean and population variance."""

    count: int
    mean: np.ndarray
    variance: np.ndarray

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ compared arrays with ==, whose truth value numpy refuses.
        if not isinstance(other, FeatureStatistics):
            return NotImplemented
        return (self.count == other.count and np.array_equal(self.mean, other.mean)
                and np.array_equal(self.variance, other.variance))

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
