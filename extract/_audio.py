"""Audio decoding for stage 1: any libsndfile format -> float32 mono, at the file's own rate or 16 kHz.

:func:`decode_audio` returns the file mixed to mono at its own sample rate;
:func:`resample_audio` converts it (soxr, very high quality); :func:`read_audio` does both
for 16 kHz, the rate wav2vec 2.0 needs. :func:`probe_audio` predicts the exact lengths
from the header alone so the store can reserve space for every utterance before any
audio is decoded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
import soundfile as sf
import soxr
from pydantic import Field

from w2v2ser._files import file_sha256

from ._audiofile import _CONVERT_HINT, _MIN_RATE, _check_readable, _open, decoded_short, truncated_error
from ._errors import AudioError, ExtractorConfigError

__all__ = [
    "MIN_SAMPLES",
    "NATIVE",
    "TARGET_SAMPLE_RATE",
    "AudioInfo",
    "DecodedAudio",
    "SampleRate",
    "processing_rate",
    "signals_at_rates",
    "decode_audio",
    "probe_audio",
    "read_audio",
    "resample_audio",
    "resampled_length",
    "sha256_file",
]

TARGET_SAMPLE_RATE = 16_000
#: ``sample_rate`` value of an extractor config meaning "the file's own rate, not resampled".
NATIVE = "native"
#: wav2vec 2.0's convolutional encoder needs 400 samples (25 ms) for its first frame.
MIN_SAMPLES = 400
# Frames decoded per block when mixing multichannel audio: bounds the temporary
# [block, channels] buffer so hour-long files never need a full 2-D copy.
_BLOCK_FRAMES = 1 << 16


@dataclass(frozen=True)
class AudioInfo:
    """What the header of an audio file says, and what :func:`read_audio` will return.

    Attributes:
        num_samples: Exact length of ``read_audio(path)`` (mono samples at 16 kHz).
        sample_rate: Sample rate of the file in Hz.
        channels: Number of channels in the file.
        duration: Duration in seconds (``frames_at_source / sample_rate``).
        frames_at_source: Number of frames (samples per channel) in the file.
    """

    num_samples: int
    sample_rate: int
    channels: int
    duration: float
    frames_at_source: int

    @property
    def num_samples_16k(self) -> int:
        """Alias of ``num_samples`` (the name used in the first draft of the contract)."""
        return self.num_samples


def resampled_length(frames: int, sample_rate: int, target_rate: int = TARGET_SAMPLE_RATE) -> int:
    """Number of samples soxr returns when resampling ``frames`` samples to ``target_rate``.

    soxr's one-shot ``resample`` rounds ``frames * target_rate / sample_rate`` half up;
    integer arithmetic keeps that exact for any length.

    Args:
        frames: Number of input samples (per channel).
        sample_rate: Input sample rate in Hz.
        target_rate: Output sample rate in Hz (default 16 kHz).

    Returns:
        The output length at ``target_rate``.
    """
    if sample_rate == target_rate:
        return frames
    return (2 * frames * target_rate + sample_rate) // (2 * sample_rate)


#: An extractor's ``sample_rate`` option: ``"native"`` (each file at its own rate) or a rate in Hz.
SampleRate = Union[Literal["native"], Annotated[int, Field(ge=_MIN_RATE, le=768_000)]]


def processing_rate(configured: int | str, given: int | None) -> int:
    """The rate an extractor works at: the configured one, or for ``native`` the signal's own
    (``given``; None means 16 kHz, the rate of :func:`read_audio`)."""
    if configured != NATIVE:
        return int(configured)
    return TARGET_SAMPLE_RATE if given is None else int(given)


def mono_signal(signal: np.ndarray, *, what: str, index: int) -> np.ndarray:
    """`signal` as a float32 array, checked to be 1-D (mono).

    Raises:
        ExtractorConfigError: The signal has another shape.
    """
    x = np.asarray(signal, dtype=np.float32)
    if x.ndim != 1:
        raise ExtractorConfigError(
            f"{what} expects 1-D mono signals; signal {index} has shape {x.shape}. Mix channels down "
            "first (decode_audio and read_audio return mono)."
        )
    return x


def signals_at_rates(
    signals: Sequence[np.ndarray], sample_rates: Sequence[int] | None, configured: int | str, *, what: str
) -> list[tuple[np.ndarray, int]]:
    """Check an extractor's inputs and bring each to the rate it is processed at.

    Args:
        signals: 1-D mono arrays.
        sample_rates: Rate of each signal in Hz, or None (see :func:`processing_rate`).
        configured: The extractor's ``sample_rate`` option (``"native"`` or Hz).
        what: The extractor name, for messages.

    Returns:
        (float32 signal, rate) per input; signals at another rate than a configured one are
        resampled to it.

    Raises:
        ExtractorConfigError: A signal is not 1-D, or the rates do not match the signals.
    """
    if sample_rates is not None and len(sample_rates) != len(signals):
        raise ExtractorConfigError(
            f"{what} got {len(signals)} signals but {len(sample_rates)} sample_rates; give one rate per signal."
        )
    out = []
    for position, signal in enumerate(signals):
        x = mono_signal(signal, what=what, index=position)
        given = None if sample_rates is None else int(sample_rates[position])
        rate = processing_rate(configured, given)
        out.append((resample_audio(x, given, rate) if given is not None else x, rate))
    return out


# Not "remove it from the manifest": the file may come from a corpus folder or predict's command line.
_LEAVE_OUT = "Leave the file out (of the manifest, corpus folder or command line that names it)"


def _check_length(path: Path, num_samples: int, frames: int, min_samples: int) -> None:
    if frames == 0 or num_samples == 0:
        raise AudioError(
            f"Audio file {path} contains no samples. {_LEAVE_OUT} or replace the recording."
        )
    if num_samples < min_samples:
        raise AudioError(
            f"Audio file {path} is too short: {num_samples} samples at 16 kHz "
            f"({num_samples / TARGET_SAMPLE_RATE * 1000:.1f} ms), but at least {min_samples} samples "
            f"({min_samples / TARGET_SAMPLE_RATE * 1000:.0f} ms, the wav2vec 2.0 receptive field, the shortest audio "
            f"w2v2ser takes for any feature) are needed. {_LEAVE_OUT} or pad the recording."
        )


def probe_audio(path: str | os.PathLike[str], *, min_samples: int = MIN_SAMPLES) -> AudioInfo:
    """Read an audio file's header and predict the length :func:`read_audio` returns.

    Args:
        path: Audio file in any format libsndfile reads.
        min_samples: Smallest acceptable length at 16 kHz (0 accepts any non-empty file).

    Returns:
        The file's :class:`AudioInfo`.

    Raises:
        AudioError: The file is missing, unreadable, not audio, empty or too short.
    """
    path = Path(path)
    with _open(path) as f:
        frames, sample_rate, channels = int(f.frames), int(f.samplerate), int(f.channels)
    num_samples = resampled_length(frames, sample_rate)
    _check_length(path, num_samples, frames, min_samples)
    return AudioInfo(
        num_samples=num_samples,
        sample_rate=sample_rate,
        channels=channels,
        duration=frames / sample_rate,
        frames_at_source=frames,
    )


def _decode_mono(f: sf.SoundFile) -> np.ndarray:
    """Decode an open file into one float32 mono array, averaging channels block by block."""
    # libsndfile opens some valid files as not seekable (GSM 6.10 WAV, Windows Sound Recorder's
    # format): soundfile then needs the frame count, or it raised ValueError for "read to the end".
    frames = -1 if f.seekable() else f.frames
    if f.channels == 1:
        return f.read(frames, dtype="float32", always_2d=False)
    out = np.empty(f.frames, dtype=np.float32)
    pos = 0
    for block in f.blocks(blocksize=_BLOCK_FRAMES, frames=frames, dtype="float32", always_2d=True):
        n = block.shape[0]
        # mean(axis=1, out=...) writes straight into the result: no [frames, channels] copy.
        np.mean(block, axis=1, out=out[pos : pos + n])
        pos += n
    return out[:pos]


def decode_audio(path: str | os.PathLike[str], *, min_samples: int = MIN_SAMPLES) -> tuple[np.ndarray, int]:
    """Decode an audio file to float32 mono at the file's own sample rate (channels averaged).

    Args:
        path: Audio file in any format libsndfile reads (WAV 8/16/24/32-bit or float,
            FLAC, OGG, MP3 where libsndfile supports it, ...).
        min_samples: Smallest acceptable length at 16 kHz (0 accepts any non-empty file).

    Returns:
        (1-D float32 array of ``probe_audio(path).frames_at_source`` samples, sample rate in Hz).

    Raises:
        AudioError: The file is missing, unreadable, not audio, empty, too short, or holds
            NaN/Inf samples.
    """
    path = Path(path)
    with _open(path) as f:
        sample_rate, declared = int(f.samplerate), int(f.frames)
        try:
            signal = _decode_mono(f)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(
                f"Audio file {path} could not be decoded (libsndfile says {exc}). "
                f"The data is probably corrupt; re-export the file or {_CONVERT_HINT}."
            ) from exc
    frames = signal.shape[0]
    if decoded_short(declared, frames):
        raise truncated_error(path, f"its header declares {declared:,} frames, it decodes to {frames:,}")
    _check_length(path, resampled_length(frames, sample_rate), frames, min_samples)
    # A float64 sum is one pass without a temporary; only a non-finite (or, for absurd
    # values, overflowing) sum needs the exact element-wise check.
    if not np.isfinite(signal.sum(dtype=np.float64)) and not np.isfinite(signal).all():
        bad = int(np.count_nonzero(~np.isfinite(signal)))
        raise AudioError(
            f"Audio file {path} has {bad} samples that are not finite (NaN or Inf). "
            "Fix or re-render the recording (e.g. replace it with a clean 16-bit export), "
            f"or {_LEAVE_OUT[0].lower()}{_LEAVE_OUT[1:]}."
        )
    return np.ascontiguousarray(signal, dtype=np.float32), sample_rate


def resample_audio(signal: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono signal with soxr (very high quality); the same array when the rates match.

    Args:
        signal: 1-D float32 samples at ``sample_rate``.
        sample_rate: Rate of ``signal`` in Hz.
        target_rate: Wanted rate in Hz.

    Returns:
        1-D float32 array of ``resampled_length(len(signal), sample_rate, target_rate)`` samples.
    """
    for name, rate in (("sample_rate", sample_rate), ("target_rate", target_rate)):
        whole = isinstance(rate, (int, np.integer)) or (isinstance(rate, float) and rate.is_integer())
        if isinstance(rate, bool) or not whole or rate <= 0:
            raise ExtractorConfigError(f"resample_audio: {name}={rate!r}; expected a rate in Hz, a whole number > 0")
    signal = mono_signal(signal, what="resample_audio", index=0)
    if sample_rate == target_rate:
        return signal
    return np.ascontiguousarray(soxr.resample(signal, int(sample_rate), int(target_rate), quality="VHQ"),
                                dtype=np.float32)


def read_audio(path: str | os.PathLike[str], *, min_samples: int = MIN_SAMPLES) -> np.ndarray:
    """Decode an audio file to float32 mono at 16 kHz.

    Channels are averaged; other sample rates are resampled with soxr (very high quality).

    Args:
        path: Audio file in any format libsndfile reads.
        min_samples: Smallest acceptable length at 16 kHz (0 accepts any non-empty file).

    Returns:
        1-D float32 array; its length equals ``probe_audio(path).num_samples``.

    Raises:
        AudioError: The file is missing, unreadable, not audio, empty, too short, or holds
            NaN/Inf samples.
    """
    signal, sample_rate = decode_audio(path, min_samples=min_samples)
    return resample_audio(signal, sample_rate, TARGET_SAMPLE_RATE)


class DecodedAudio:
    """One decoded file at its own rate, resampled on demand to the rates extractors ask for.

    Each rate is computed once and kept, so eGeMAPS at the file's rate and wav2vec2 at
    16 kHz share one decode.

    Args:
        signal: 1-D float32 mono samples at ``sample_rate``.
        sample_rate: The file's own rate in Hz.
    """

    def __init__(self, signal: np.ndarray, sample_rate: int) -> None:
        self.sample_rate = int(sample_rate)
        self._at: dict[int, np.ndarray] = {self.sample_rate: signal}

    def at(self, rate: int | None) -> np.ndarray:
        """The signal at ``rate`` Hz (None: the file's own rate)."""
        rate = self.sample_rate if rate is None else int(rate)
        if rate not in self._at:
            self._at[rate] = resample_audio(self._at[self.sample_rate], self.sample_rate, rate)
        return self._at[rate]

    @property
    def num_samples(self) -> int:
        """Length at 16 kHz (equal to ``probe_audio(path).num_samples``), without resampling."""
        return resampled_length(len(self._at[self.sample_rate]), self.sample_rate)

    @property
    def silent(self) -> bool:
        """Whether the mono signal is digital silence: every sample 0 (a muted file, or stereo
        channels that cancel when averaged)."""
        return not self._at[self.sample_rate].any()


def sha256_file(path: str | os.PathLike[str], *, block_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks so memory use stays constant.

    Args:
        path: Any file.
        block_size: Bytes read per step.

    Returns:
        The lowercase hex digest.

    Raises:
        AudioError: The file is missing or cannot be read.
    """
    path = Path(path)
    _check_readable(path)
    return file_sha256(path, block_size=block_size)
