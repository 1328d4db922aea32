"""Short-time Fourier magnitude spectrogram (numpy only) as a frame-level baseline feature."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any, ClassVar, Literal, Mapping, Optional, Sequence

import numpy as np
from pydantic import Field

from w2v2ser._schema import build_dataclass, check_dataclass, check_keywords
from w2v2ser.store import FeatureSpec

from ._audio import NATIVE, TARGET_SAMPLE_RATE, SampleRate, processing_rate, signals_at_rates
from ._errors import ExtractorConfigError

__all__ = ["SpectrogramConfig", "SpectrogramExtractor"]

# Frames transformed per FFT call: bounds the complex temporary for hour-long audio.
_BLOCK_FRAMES = 4096
_LOG_FLOOR = 1e-6
# Choices and bounds of the options are their annotations, checked by w2v2ser._schema.
_Samples = Optional[Annotated[int, Field(ge=1)]]
_Milliseconds = Optional[Annotated[float, Field(gt=0, allow_inf_nan=False)]]


def _ms_to_samples(value: float, key: str, rate: int = TARGET_SAMPLE_RATE) -> int:
    samples = value * rate / 1000
    if abs(samples - round(samples)) > 1e-6:
        raise ExtractorConfigError(
            f"spectrogram {key}={value!r} ms is not a positive whole number of samples at {rate} Hz "
            f"({samples:g} samples); use a multiple of {1000 / rate:g} ms (e.g. 25.0 or 10.0 at "
            f"16 kHz), or give the length in samples ({key.replace('_ms', '_samples')})."
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


@check_keywords(error=ExtractorConfigError)
@dataclass(frozen=True)
class SpectrogramConfig:
    """STFT settings (keys of the ``spectrogram`` section of pipeline.yaml).

    Window and hop are given in milliseconds (``window_ms``, ``hop_ms``) or in samples
    (``window_samples``, ``hop_samples``), not both. The paper's text: 25 ms Hann window, 10 ms
    hop. The authors' released code: a 400-sample window, hop 320, 512-point FFT, on each file
    at its own rate: ``SpectrogramConfig(sample_rate="native", window_samples=400,
    hop_samples=320, n_fft=512)`` (on 48 kHz RAVDESS originals: 8.3 ms / 6.7 ms, 150 frames/s;
    on 16 kHz audio it is 25 ms / 20 ms, 50 frames/s).

    Attributes:
        window_ms: Window length in milliseconds (a whole number of samples at the rate);
            25 when neither it nor ``window_samples`` is given.
        hop_ms: Hop in milliseconds; 10 when neither it nor ``hop_samples`` is given.
        window_samples: Window length in samples (instead of ``window_ms``).
        hop_samples: Hop in samples (instead of ``hop_ms``).
        n_fft: FFT size (>= window length; frames are zero-padded); None = window length.
        window: One of ``hann``, ``hamming``, ``blackman``, ``boxcar`` (periodic forms).
        center: Zero-pad half a window on both sides so frame t is centred at ``t * hop``.
        power: Exponent of the magnitude: 1.0 magnitude, 2.0 power.
        log: Return ``log(spectrogram + 1e-6)``.
        sample_rate: Rate in Hz the audio is resampled to first (default 16000), or
            ``"native"``: each file at its own rate, not resampled. A native store holds
            files of one rate only (that of the first file); the others are recorded as
            failures that name their rate, since a window at mixed rates would give frames of
            different lengths or bins of different widths.
    """

    window_ms: _Milliseconds = None
    hop_ms: _Milliseconds = None
    n_fft: _Samples = None
    window: Literal["hann", "hamming", "blackman", "boxcar"] = "hann"
    center: bool = False
    power: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    log: bool = False
    sample_rate: SampleRate = TARGET_SAMPLE_RATE
    window_samples: _Samples = None
    hop_samples: _Samples = None

    #: What an absent key meant in a config recorded by an older store (see build_extractor).
    RECORDED_DEFAULTS: ClassVar[dict[str, Any]] = {
        "sample_rate": TARGET_SAMPLE_RATE, "window_samples": None, "hop_samples": None,
    }

    def __post_init__(self) -> None:
        check_dataclass(self, what="spectrogram config", error=ExtractorConfigError)  # the annotations
        for ms, samples, default in (("window_ms", "window_samples", 25.0), ("hop_ms", "hop_samples", 10.0)):
            if getattr(self, ms) is not None and getattr(self, samples) is not None:
                raise ExtractorConfigError(
                    f"spectrogram has both {ms}={getattr(self, ms)!r} and {samples}={getattr(self, samples)!r}; "
                    f"give the length in milliseconds or in samples, not both."
                )
            if getattr(self, ms) is None and getattr(self, samples) is None:
                object.__setattr__(self, ms, default)
        if self.sample_rate != NATIVE:
            self.hop_length_at(self.sample_rate)
            self.fft_size_at(self.sample_rate)  # the window's length, and n_fft against it
        elif self.window_samples is not None:  # lengths in ms are checked against each file's rate
            self.fft_size_at()

    def _rate(self, rate: int | None) -> int:
        return int(rate) if rate is not None else processing_rate(self.sample_rate, None)

    def win_length_at(self, rate: int | None = None) -> int:
        """Window length in samples at ``rate`` Hz.

        Args:
            rate: Sample rate in Hz; None: the configured rate (16 kHz for native).
        """
        if self.window_samples is not None:
            return self.window_samples
        return _ms_to_samples(self.window_ms, "window_ms", self._rate(rate))

    def hop_length_at(self, rate: int | None = None) -> int:
        """Hop in samples at ``rate`` Hz.

        Args:
            rate: Sample rate in Hz; None: the configured rate (16 kHz for native).
        """
        if self.hop_samples is not None:
            return self.hop_samples
        return _ms_to_samples(self.hop_ms, "hop_ms", self._rate(rate))

    def fft_size_at(self, rate: int | None = None) -> int:
        """FFT size at ``rate`` Hz (``n_fft`` or the window length).

        Args:
            rate: Sample rate in Hz; None: the configured rate (16 kHz for native).

        Raises:
            ExtractorConfigError: ``n_fft`` is smaller than the window at that rate.
        """
        win = self.win_length_at(rate)
        if self.n_fft is not None and self.n_fft < win:
            at = "" if self.window_samples is not None else f" at {self._rate(rate)} Hz"
            raise ExtractorConfigError(
                f"spectrogram n_fft={self.n_fft} is smaller than the window ({win} samples{at}); the FFT would "
                f"drop samples. Use n_fft >= {win} (e.g. {1 << (win - 1).bit_length()}) or n_fft: null."
            )
        return win if self.n_fft is None else self.n_fft

    @property
    def win_length(self) -> int:
        """Window length in samples at the configured rate (16 kHz for native)."""
        return self.win_length_at()

    @property
    def hop_length(self) -> int:
        """Hop in samples at the configured rate (16 kHz for native)."""
        return self.hop_length_at()

    @property
    def fft_size(self) -> int:
        """FFT size in samples at the configured rate (16 kHz for native)."""
        return self.fft_size_at()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with one key per field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SpectrogramConfig":
        """Build from a dict, rejecting unknown keys with a did-you-mean hint.

        Args:
            data: Option name -> value, as in pipeline.yaml's ``spectrogram:`` section.

        Raises:
            ExtractorConfigError: An unknown key or a value out of bounds.
        """
        return build_dataclass(cls, data, what="spectrogram config", error=ExtractorConfigError)


class SpectrogramExtractor:
    """STFT magnitude frames [frames, n_fft // 2 + 1] float32 from mono audio."""

    name = "spectrogram"
    #: With ``sample_rate: native`` a store takes files of one rate only (see SpectrogramConfig).
    native_needs_one_rate = True

    def __init__(self, config: SpectrogramConfig | None = None) -> None:
        """Set up the extractor.

        Args:
            config: STFT settings; defaults to 25 ms Hann windows every 10 ms at 16 kHz.
        """
        self.config = config if config is not None else SpectrogramConfig()
        self._windows: dict[int, np.ndarray] = {}

    def __repr__(self) -> str:  # the config, not the default <... object at 0x...>
        return f"{type(self).__name__}({self.config!r})"

    def _window(self, length: int) -> np.ndarray:
        if length not in self._windows:
            self._windows[length] = _window(self.config.window, length)
        return self._windows[length]

    def feature_spec(self, *, sample_rate: int | None = None) -> FeatureSpec:
        """Describe the stored feature.

        Args:
            sample_rate: For ``native``: the rate every file of the store has (the frame rate
                and, with ms lengths, the bins depend on it); None means 16 kHz.
        """
        c = self.config
        rate = processing_rate(c.sample_rate, sample_rate)
        win, hop, n_fft = c.win_length_at(rate), c.hop_length_at(rate), c.fft_size_at(rate)
        kind = "power" if c.power == 2.0 else "magnitude" if c.power == 1.0 else f"magnitude^{c.power:g}"
        at = f"{rate} Hz" if c.sample_rate != NATIVE else f"the files' own rate ({rate} Hz)"
        return FeatureSpec(
            name=self.name,
            dim=n_fft // 2 + 1,
            layers=None,
            frame_rate=rate / hop,
            dtype="float32",
            config=c.to_dict(),
            description=(
                f"{'log ' if c.log else ''}{kind} spectrogram: {c.window} window of {win} samples "
                f"({1000 * win / rate:g} ms), hop {hop} samples ({1000 * hop / rate:g} ms), "
                f"{n_fft}-point FFT, at {at}"
            ),
        )

    def _padded_length(self, num_samples: int, win: int) -> int:
        if self.config.center:
            num_samples += 2 * (win // 2)
        # Inputs shorter than one window are zero-padded to one frame rather than dropped.
        return max(num_samples, win)

    def max_frames(self, num_samples: int, *, sample_rate: int | None = None) -> int:
        """Exact number of frames :meth:`extract` returns for one signal.

        Args:
            num_samples: Length of the signal at the rate it is processed at.
            sample_rate: That rate in Hz; None means 16 kHz for ``native``, else the configured rate.
        """
        rate = processing_rate(self.config.sample_rate, sample_rate)
        win, hop = self.config.win_length_at(rate), self.config.hop_length_at(rate)
        return (self._padded_length(num_samples, win) - win) // hop + 1

    def _one(self, signal: np.ndarray, rate: int) -> np.ndarray:
        c = self.config
        win, hop, n_fft = c.win_length_at(rate), c.hop_length_at(rate), c.fft_size_at(rate)
        window = self._window(win)
        x = np.asarray(signal, dtype=np.float32)
        pad_left = win // 2 if c.center else 0
        total = self._padded_length(x.shape[0], win)
        if total != x.shape[0]:
            x = np.pad(x, (pad_left, total - x.shape[0] - pad_left))
        frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop]  # a view, no copy
        out = np.empty((frames.shape[0], n_fft // 2 + 1), dtype=np.float32)
        for start in range(0, frames.shape[0], _BLOCK_FRAMES):
            block = frames[start : start + _BLOCK_FRAMES] * window
            mag = np.abs(np.fft.rfft(block, n=n_fft, axis=1))
            if c.power != 1.0:
                mag **= c.power
            if c.log:
                np.log(mag + _LOG_FLOOR, out=mag)
            out[start : start + block.shape[0]] = mag
        return out

    def extract(self, signals: Sequence[np.ndarray], *, sample_rates: Sequence[int] | None = None) -> list[np.ndarray]:
        """Compute one spectrogram per mono signal.

        Args:
            signals: 1-D float32 arrays.
            sample_rates: Rate of each signal in Hz; None means every signal is at 16 kHz for
                ``native``, or already at the configured rate. With a configured rate,
                signals at another rate are resampled to it.

        Returns:
            One float32 array [frames, n_fft // 2 + 1] per signal.
        """
        return [self._one(x, rate)
                for x, rate in signals_at_rates(signals, sample_rates, self.config.sample_rate, what="spectrogram")]
