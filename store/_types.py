"""Plain data types shared by the store, the extractors and stage 2."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping, Optional, Sequence

import numpy as np
from pydantic import Field

from w2v2ser._schema import build_dataclass, check_dataclass, check_keywords

from ._errors import StoreError

__all__ = [
    "AUDIO_RATE_KEY",
    "extra_json",
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


def _missing_as_none(value: Any) -> Any:
    """``value`` with each NaN (a missing value: pandas reads an empty cell so) as None, in lists and mappings too."""
    if isinstance(value, (float, np.floating)) and np.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _missing_as_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_missing_as_none(v) for v in value]
    return value


def extra_json(extra: Mapping[str, Any]) -> str:
    """``Utterance.extra`` as the store's standard JSON: a NaN is null (``json.dumps`` wrote ``NaN``, which
    is no JSON), and an infinite number raises ValueError ("Out of range float values ...")."""
    return json.dumps(_missing_as_none(dict(extra)), sort_keys=True, allow_nan=False)


@dataclass(frozen=True)
class Utterance:
    """One manifest row, as produced by the corpus readers.

    ``extra`` holds the reader's other columns as text; in a stored record it also holds what
    extraction recorded, e.g. ``extra[AUDIO_RATE_KEY]``, the file's own sample rate as an int.

    Attributes:
        id: Unique utterance id within the store (no control characters).
        path: Audio file path.
        speaker: Speaker name (normalisation and speaker-independent folds group by it).
        label: Emotion label, as written in the corpus.
        session: Recording session (IEMOCAP's protocols split by it); empty when unknown.
        split: ``train``, ``validation`` or ``test`` (a manifest's ``dev``, ``val``... read as these), or empty.
        gender: Speaker gender as the corpus gives it, or empty.
        corpus: Corpus kind (``ravdess``, ``iemocap``, ``csv``).
        extra: The manifest's other columns, plus what extraction recorded in a stored record.
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
    """An utterance as stored: manifest fields plus what extraction recorded.

    Attributes:
        id: As in :class:`Utterance`; so are ``path``, ``speaker``, ``label``, ``session``,
            ``split``, ``gender``, ``corpus`` and ``extra``.
        path: See :class:`Utterance`.
        speaker: See :class:`Utterance`.
        label: See :class:`Utterance`.
        session: See :class:`Utterance`.
        split: See :class:`Utterance`.
        gender: See :class:`Utterance`.
        corpus: See :class:`Utterance`.
        extra: See :class:`Utterance`.
        duration: Audio duration in seconds.
        num_samples: Samples of the decoded (mono) audio.
        audio_sha256: SHA-256 of the audio file, as extraction read it.
        status: The utterance's extraction status (e.g. ``done``, ``failed``, ``pending``).
        index: Row of the utterance in the store's utterance table.
    """

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


@check_keywords(error=StoreError)
@dataclass(frozen=True)
class FeatureSpec:
    """What one feature looks like in the store.

    Attributes:
        name: Feature name (``wav2vec2``, ``egemaps``, ``spectrogram``, ...); no ``/``.
        dim: Values per frame (per layer for a layered feature).
        layers: Number of layers per frame, or None for 2-D ``[frames, dim]`` features.
        frame_rate: Frames per second.
        dtype: Stored dtype: ``float16``, ``float32`` or ``float64``.
        config: The extractor's configuration (JSON-able), recorded for provenance and resumes.
        layer_names: One name per layer, or None.
        description: Human-readable description of the feature (kept in the store's attributes).
    """

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
        """Build from :meth:`to_dict` output; unknown or missing keys are rejected.

        Args:
            d: A mapping as :meth:`to_dict` returns it.

        Raises:
            StoreError: A key is unknown or missing, or a value is out of bounds.
        """
        return build_dataclass(cls, d, what="FeatureSpec", error=StoreError)


@dataclass(frozen=True, eq=False)
class FeatureStatistics:
    """Normalisation statistics over frames: count, mean and population variance.

    Attributes:
        count: Number of frames the statistics cover.
        mean: Per-dimension mean (the frame shape).
        variance: Per-dimension population variance (the frame shape).
    """

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
    """One failed (utterance, feature); ``feature`` None means the whole utterance.

    Attributes:
        id: Utterance id.
        path: Audio file path.
        feature: The feature that failed, or None for the whole utterance.
        reason: What went wrong and what to do.
    """

    id: str
    path: str
    feature: str | None
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    """Result of :meth:`FeatureStore.verify`.

    Attributes:
        problems: ``(utterance id, or "*" for the whole store, feature, what is wrong)`` per problem.
        checked: Number of (utterance, feature) frame blocks read and checked.
    """

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
