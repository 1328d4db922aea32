"""Audio decoding for stage 1: any libsndfile format -> float32 mono at 16 kHz.

All extractors consume the signal returned by :func:`read_audio`; :func:`probe_audio`
predicts its exact length from the header alone so the store can reserve space for
every utterance before any audio is decoded.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ._errors import AudioError

__all__ = [
    "MIN_SAMPLES",
    "TARGET_SAMPLE_RATE",
    "AudioInfo",
    "probe_audio",
    "read_audio",
    "resampled_length",
    "sha256_file",
]

TARGET_SAMPLE_RATE = 16_000
#: wav2vec 2.0's convolutional encoder needs 400 samples (25 ms) for its first frame.
MIN_SAMPLES = 400
# Frames decoded per block when mixing multichannel audio: bounds the temporary
# [block, channels] buffer so hour-long files never need a full 2-D copy.
_BLOCK_FRAMES = 1 << 16
_CONVERT_HINT = "convert it to 16-bit WAV or FLAC (e.g. `ffmpeg -i IN -ac 1 -ar 16000 OUT.wav`)"


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


def resampled_length(frames: int, sample_rate: int) -> int:
    """Number of samples soxr returns when resampling ``frames`` samples to 16 kHz.

    soxr's one-shot ``resample`` rounds ``frames * 16000 / sample_rate`` half up; integer
    arithmetic keeps that exact for any length.

    Args:
        frames: Number of input samples (per channel).
        sample_rate: Input sample rate in Hz.

    Returns:
        The output length at 16 kHz.
    """
    if sample_rate == TARGET_SAMPLE_RATE:
        return frames
    return (2 * frames * TARGET_SAMPLE_RATE + sample_rate) // (2 * sample_rate)


def _check_readable(path: Path) -> None:
    """Raise AudioError for a missing, non-file or permission-denied path."""
    if not path.exists():
        raise AudioError(
            f"Audio file {path} does not exist. Check the path in the manifest "
            "(relative paths resolve against the manifest's folder)."
        )
    if not path.is_file():
        raise AudioError(f"Audio path {path} is not a regular file. Point the manifest at an audio file.")
    try:
        # libsndfile reports permission problems as a generic "System error"; opening
        # the file ourselves first gives the user the real cause.
        with open(path, "rb"):
            pass
    except PermissionError as exc:
        raise AudioError(
            f"Audio file {path} cannot be read: permission denied. "
            f"Grant read access (e.g. `chmod a+r {path}`) or run as a user who may read it."
        ) from exc
    except OSError as exc:
        raise AudioError(f"Audio file {path} cannot be opened ({exc}). Check the file system and path.") from exc


def _open(path: Path) -> sf.SoundFile:
    """Open ``path`` with libsndfile, translating its errors into AudioError."""
    _check_readable(path)
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        size = path.stat().st_size
        what = (
            "is empty (0 bytes)" if size == 0
            else f"is not audio libsndfile can decode, or its header is damaged or truncated ({size} bytes)"
        )
        raise AudioError(
            f"Audio file {path} {what}: libsndfile says {exc}. "
            f"Re-export the file, or {_CONVERT_HINT}."
        ) from exc


def _check_length(path: Path, num_samples: int, frames: int, min_samples: int) -> None:
    if frames == 0 or num_samples == 0:
        raise AudioError(
            f"Audio file {path} contains no samples. Remove it from the manifest or replace the recording."
        )
    if num_samples < min_samples:
        raise AudioError(
            f"Audio file {path} is too short: {num_samples} samples at 16 kHz "
            f"({num_samples / TARGET_SAMPLE_RATE * 1000:.1f} ms), but at least {min_samples} samples "
            f"({min_samples / TARGET_SAMPLE_RATE * 1000:.0f} ms, the wav2vec 2.0 receptive field) are needed. "
            "Remove the utterance from the manifest or pad the recording."
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
    if f.channels == 1:
        return f.read(dtype="float32", always_2d=False)
    out = np.empty(f.frames, dtype=np.float32)
    pos = 0
    for block in f.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
        n = block.shape[0]
        # mean(axis=1, out=...) writes straight into the result: no [frames, channels] copy.
        np.mean(block, axis=1, out=out[pos : pos + n])
        pos += n
    return out[:pos]


def read_audio(path: str | os.PathLike[str], *, min_samples: int = MIN_SAMPLES) -> np.ndarray:
    """Decode an audio file to float32 mono at 16 kHz.

    Channels are averaged; other sample rates are resampled with soxr (very high quality).

    Args:
        path: Audio file in any format libsndfile reads (WAV 8/16/24/32-bit or float,
            FLAC, OGG, MP3 where libsndfile supports it, ...).
        min_samples: Smallest acceptable length at 16 kHz (0 accepts any non-empty file).

    Returns:
        1-D float32 array; its length equals ``probe_audio(path).num_samples``.

    Raises:
        AudioError: The file is missing, unreadable, not audio, empty, too short, or holds
            NaN/Inf samples.
    """
    path = Path(path)
    with _open(path) as f:
        sample_rate = int(f.samplerate)
        try:
            signal = _decode_mono(f)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(
                f"Audio file {path} could not be decoded (libsndfile says {exc}). "
                f"The data is probably corrupt; re-export the file or {_CONVERT_HINT}."
            ) from exc
    frames = signal.shape[0]
    _check_length(path, resampled_length(frames, sample_rate), frames, min_samples)
    # A float64 sum is one pass without a temporary; only a non-finite (or, for absurd
    # values, overflowing) sum needs the exact element-wise check.
    if not np.isfinite(signal.sum(dtype=np.float64)) and not np.isfinite(signal).all():
        bad = int(np.count_nonzero(~np.isfinite(signal)))
        raise AudioError(
            f"Audio file {path} has {bad} samples that are not finite (NaN or Inf). "
            "Fix or re-render the recording (e.g. replace it with a clean 16-bit export) "
            "or remove it from the manifest."
        )
    if sample_rate != TARGET_SAMPLE_RATE:
        signal = soxr.resample(signal, sample_rate, TARGET_SAMPLE_RATE, quality="VHQ")
    return np.ascontiguousarray(signal, dtype=np.float32)


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
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block_size):
            digest.update(chunk)
    return digest.hexdigest()
