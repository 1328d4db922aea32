"""Short-time Fourier magnitude spectrogram (numpy only) as a frame-level baseline feature."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np

from w2v2ser.store import FeatureSpec

from ._errors import ExtractorConfigError, reject_unknown_keys

__all__ = ["SpectrogramConfig", "SpectrogramExtractor"]

_SAMPLE_RATE = 16_000
_SAMPLES_PER_MS = _SAMPLE_RATE / 1000
# Frames transformed per FFT call: bounds the complex temporary for hour-long audio.
_BLOCK_FRAMES = 4096
_LOG_FLOOR = 1e-6
_WINDOWS = ("hann", "hamming", "blackman", "boxcar")


def _ms_to_samples(value: float, key: str) -> int:
    samples = value * _SAMPLES_PER_MS
    if not value > 0 or abs(samples - round(samples)) > 1e-6:
        raise ExtractorConfigError(
            f"spectrogram {key}={value!r} ms is not a positive whole number of samples at 16 kHz "
            f"({samples:g} samples); use a multiple of 0.0625 ms, e.g. 25.0 or 10.0."
        )
    return int(round(samples))


def _window(name: str, length: int) -> np.ndarray:
    """Periodic (DFT-even) window, the convention of scipy.signal.get_window and torch."""
    n = np.arange(length, dtype=np.float64)
    phase = 2.0 * np.pi * n / length
    if name == "hann":
        w = 0.5 - 0.5 * np.cos(phase)
    elif name == "hamming":
        w = 0.54 - 0.46 * np.cos(phase)
    elif name == "blackman":
        w = 0.42 - 0.5 * np.cos(phase) + 0.08 * np.cos(2.0 * phase)
    else:  # boxcar
        w = np.ones(length)
    return w.astype(np.float32)


@dataclass(frozen=True)
class SpectrogramConfig:
    """STFT settings (keys of the ``spectrogram`` section of pipeline.yaml).

    The authors' released code used a 25 ms window, 20 ms hop and 512-point FFT:
    ``SpectrogramConfig(window_ms=25, hop_ms=20, n_fft=512)`` (257 bins, 50 frames/s).
    The default here (10 ms hop) matches eGeMAPS' 100 frames/s instead.

    Attributes:
        window_ms: Window length in milliseconds (a whole number of 16 kHz samples).
        hop_ms: Hop between frames in milliseconds; frame rate is ``1000 / hop_ms``.
        n_fft: FFT size (>= window length; frames are zero-padded); None = window length.
        window: One of ``hann``, ``hamming``, ``blackman``, ``boxcar`` (periodic forms).
        center: Zero-pad half a window on both sides so frame t is centred at ``t * hop``.
        power: Exponent of the magnitude: 1.0 magnitude, 2.0 power.
        log: Return ``log(spectrogram + 1e-6)``.
    """

    window_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int | None = None
    window: str = "hann"
    center: bool = False
    power: float = 1.0
    log: bool = False

    def __post_init__(self) -> None:
        win = _ms_to_samples(self.window_ms, "window_ms")
        _ms_to_samples(self.hop_ms, "hop_ms")
        if self.n_fft is not None:
            if isinstance(self.n_fft, bool) or not isinstance(self.n_fft, int):
                raise ExtractorConfigError(
                    f"spectrogram n_fft={self.n_fft!r} must be an integer or null (= window length)."
                )
            if self.n_fft < win:
                raise ExtractorConfigError(
                    f"spectrogram n_fft={self.n_fft} is smaller than the window ({self.window_ms} ms = "
                    f"{win} samples); the FFT would drop samples. Use n_fft >= {win} (e.g. "
                    f"{1 << (win - 1).bit_length()}) or n_fft: null."
                )
        if self.window not in _WINDOWS:
            raise ExtractorConfigError(
                f"spectrogram window {self.window!r} is not supported; use one of {', '.join(_WINDOWS)}."
            )
        if not self.power > 0:
            raise ExtractorConfigError(
                f"spectrogram power={self.power!r} must be > 0 (1.0 magnitude, 2.0 power)."
            )

    @property
    def win_length(self) -> int:
        """Window length in samples."""
        return _ms_to_samples(self.window_ms, "window_ms")

    @property
    def hop_length(self) -> int:
        """Hop in samples."""
        return _ms_to_samples(self.hop_ms, "hop_ms")

    @property
    def fft_size(self) -> int:
        """FFT size in samples (``n_fft`` or the window length)."""
        return self.n_fft if self.n_fft is not None else self.win_length

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with one key per field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SpectrogramConfig":
        """Build from a dict, rejecting unknown keys with a did-you-mean hint."""
        reject_unknown_keys(data, [f.name for f in fields(cls)], what="spectrogram")
        return cls(**data)


class SpectrogramExtractor:
    """STFT magnitude frames [frames, n_fft // 2 + 1] float32 from 16 kHz mono audio."""

    name = "spectrogram"

    def __init__(self, config: SpectrogramConfig | None = None) -> None:
        """Args:
        config: STFT settings; defaults to 25 ms Hann windows every 10 ms.
        """
        self.config = config if config is not None else SpectrogramConfig()
        self._window = _window(self.config.window, self.config.win_length)

    def feature_spec(self) -> FeatureSpec:
        """Describe the stored feature."""
        c = self.config
        kind = "power" if c.power == 2.0 else "magnitude" if c.power == 1.0 else f"magnitude^{c.power:g}"
        return FeatureSpec(
            name=self.name,
            dim=c.fft_size // 2 + 1,
            layers=None,
            frame_rate=1000.0 / c.hop_ms,
            dtype="float32",
            config=c.to_dict(),
            description=(
                f"{'log ' if c.log else ''}{kind} spectrogram: {c.window} {c.window_ms:g} ms window, "
                f"{c.hop_ms:g} ms hop, {c.fft_size}-point FFT"
            ),
        )

    def _padded_length(self, num_samples: int) -> int:
        c = self.config
        if c.center:
            num_samples += 2 * (c.win_length // 2)
        # Inputs shorter than one window are zero-padded to one frame rather than dropped.
        return max(num_samples, c.win_length)

    def max_frames(self, num_samples: int) -> int:
        """Exact number of frames :meth:`extract` returns for ``num_samples`` samples."""
        return (self._padded_length(num_samples) - self.config.win_length) // self.config.hop_length + 1

    def _one(self, signal: np.ndarray) -> np.ndarray:
        c = self.config
        win, hop, n_fft = c.win_length, c.hop_length, c.fft_size
        x = np.asarray(signal, dtype=np.float32)
        if x.ndim != 1:
            raise ExtractorConfigError(
                f"spectrogram expects 1-D mono signals, got shape {x.shape}; read_audio returns mono."
            )
        pad_left = win // 2 if c.center else 0
        total = self._padded_length(x.shape[0])
        if total != x.shape[0]:
            x = np.pad(x, (pad_left, total - x.shape[0] - pad_left))
        frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop]  # a view, no copy
        out = np.empty((frames.shape[0], n_fft // 2 + 1), dtype=np.float32)
        for start in range(0, frames.shape[0], _BLOCK_FRAMES):
            block = frames[start : start + _BLOCK_FRAMES] * self._window
            mag = np.abs(np.fft.rfft(block, n=n_fft, axis=1))
            if c.power != 1.0:
                mag **= c.power
            if c.log:
                np.log(mag + _LOG_FLOOR, out=mag)
            out[start : start + block.shape[0]] = mag
        return out

    def extract(self, signals: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Compute one spectrogram per 16 kHz mono signal.

        Args:
            signals: 1-D float32 arrays at 16 kHz.

        Returns:
            One float32 array [frames, n_fft // 2 + 1] per signal.
        """
        return [self._one(s) for s in signals]
