"""eGeMAPS low-level descriptors (openSMILE) as a frame-level baseline feature."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np

from w2v2ser.store import FeatureSpec

from ._errors import ExtractorConfigError, reject_unknown_keys

__all__ = ["EgemapsConfig", "EgemapsExtractor"]

_SAMPLE_RATE = 16_000
# openSMILE's GeMAPS family frames 16 kHz audio with a 10 ms hop; measured on every length
# from 400 to 3,300 samples and 60 random lengths up to 25 s: frames = (n - 800) // 160 + 1.
_HOP = 160
_OFFSET = 800
# Below 60 ms openSMILE emits no real frame and pads one all-NaN row; zero-padding the
# signal to this length yields two finite frames instead (NaN would poison store statistics).
_MIN_SIGNAL = 960
# Sets whose low-level descriptors share the framing rule above (checked per set).
_FEATURE_SETS = ("eGeMAPSv02", "eGeMAPSv01b", "eGeMAPSv01a", "GeMAPSv01b", "GeMAPSv01a")
_FEATURE_LEVELS = ("LowLevelDescriptors",)


@dataclass(frozen=True)
class EgemapsConfig:
    """openSMILE settings (keys of the ``egemaps`` section of pipeline.yaml).

    Attributes:
        feature_set: An openSMILE GeMAPS-family set; ``eGeMAPSv02`` gives 25 descriptors.
        feature_level: Only ``LowLevelDescriptors`` (frame-level, 100 frames/s) is supported.
    """

    feature_set: str = "eGeMAPSv02"
    feature_level: str = "LowLevelDescriptors"

    def __post_init__(self) -> None:
        if self.feature_set not in _FEATURE_SETS:
            raise ExtractorConfigError(
                f"egemaps feature_set {self.feature_set!r} is not supported; expected one of "
                f"{', '.join(_FEATURE_SETS)} (frame-level GeMAPS family). Use 'eGeMAPSv02'."
            )
        if self.feature_level not in _FEATURE_LEVELS:
            raise ExtractorConfigError(
                f"egemaps feature_level {self.feature_level!r} is not supported; the store keeps "
                "frame-level features, so use 'LowLevelDescriptors' (functionals can be computed "
                "from the stored frames)."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with one key per field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EgemapsConfig":
        """Build from a dict, rejecting unknown keys with a did-you-mean hint."""
        reject_unknown_keys(data, [f.name for f in fields(cls)], what="egemaps")
        return cls(**data)


class EgemapsExtractor:
    """Frame-level eGeMAPS descriptors, [frames, 25] float32 at 100 frames/s.

    The openSMILE ``Smile`` object is built on first use and reused, so one extractor
    instance should process many utterances.
    """

    name = "egemaps"

    def __init__(self, config: EgemapsConfig | None = None) -> None:
        """Args:
        config: openSMILE settings; defaults to eGeMAPSv02 low-level descriptors.
        """
        self.config = config if config is not None else EgemapsConfig()
        self._smile: Any = None

    def _get_smile(self) -> Any:
        if self._smile is None:
            import opensmile  # heavy (pandas, audinterface): only when features are needed

            self._smile = opensmile.Smile(
                feature_set=self.config.feature_set,
                feature_level=self.config.feature_level,
                # openSMILE's own resampler would be a second, different one: inputs are 16 kHz.
                sampling_rate=_SAMPLE_RATE,
            )
        return self._smile

    @property
    def feature_names(self) -> list[str]:
        """openSMILE's descriptor names, in column order."""
        return list(self._get_smile().feature_names)

    def feature_spec(self) -> FeatureSpec:
        """Describe the stored feature, with the openSMILE version as provenance."""
        import opensmile

        names = self.feature_names
        config = {**self.config.to_dict(), "opensmile_version": opensmile.__version__, "feature_names": names}
        return FeatureSpec(
            name=self.name,
            dim=len(names),
            layers=None,
            frame_rate=100.0,
            dtype="float32",
            config=config,
            description=(
                f"openSMILE {self.config.feature_set} {self.config.feature_level} "
                f"({len(names)} descriptors, 20/60 ms windows, 10 ms hop)"
            ),
        )

    def max_frames(self, num_samples: int) -> int:
        """Exact number of frames :meth:`extract` returns for ``num_samples`` 16 kHz samples."""
        return (max(num_samples, _MIN_SIGNAL) - _OFFSET) // _HOP + 1

    def extract(self, signals: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Compute descriptors for each 16 kHz mono signal.

        Args:
            signals: 1-D float32 arrays at 16 kHz.

        Returns:
            One C-contiguous float32 array [frames, dim] per signal.
        """
        smile = self._get_smile()
        out = []
        for signal in signals:
            x = np.asarray(signal, dtype=np.float32)
            if x.ndim != 1:
                raise ExtractorConfigError(
                    f"egemaps expects 1-D mono signals, got shape {x.shape}; mix channels down first "
                    "(read_audio returns mono)."
                )
            if x.shape[0] < _MIN_SIGNAL:
                x = np.pad(x, (0, _MIN_SIGNAL - x.shape[0]))
            frames = smile(x, _SAMPLE_RATE)  # [channels=1, dim, frames]
            out.append(np.ascontiguousarray(frames[0].T, dtype=np.float32))
        return out
