"""Audio decoding for stage 1: any libsndfile format -> float32 mono, at the file's own rate or 16 kHz.

:func:`decode_audio` returns the file mixed to mono at its own sample rate;
:func:`resample_audio` converts it (soxr, very high quality); :func:`read_audio` does both
for 16 kHz, the rate wav2vec 2.0 needs. :func:`probe_audio` predicts the exact lengths
from the header alone so the store can reserve space for every utterance before any
audio is decoded.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Literal, Union

import numpy as np
import soundfile as sf
import soxr
from pydantic import Field

from w2v2ser._files import file_sha256
from w2v2ser._text import without_invisible

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
_MIN_RATE = 1000  # Hz: the lowest rate an extractor's sample_rate option takes
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


def _near_miss(path: Path) -> str:
    """A hint when the file exists under a spelling the manifest's writer could not see: Windows
    separators, another Unicode normal form of an accented name (macOS writes NFD), or a path
    written relative to the current folder instead of the manifest's."""
    try:  # a hint never replaces the error it decorates (a deleted current folder, EACCES, ENAMETOOLONG)
        text = str(path)
        if os.sep == "/" and re.search(r"(?:^|/)(?:[A-Za-z]:[\\/]|\\\\[^\\/])", text):
            return (" The manifest gives a Windows path (C:\\..., D:/..., \\\\server\\...), which this system "
                    "cannot open, so it was read as relative to the manifest's folder: write the paths relative to "
                    "the manifest's folder (with /), or as absolute paths of this machine.")
        if "\\" in text and Path(text.replace("\\", "/")).exists():
            return f" It exists as {text.replace(chr(92), '/')}: write / instead of \\ in the manifest's paths."
        # the characters spelling_key drops as invisible: not U+200C/U+200D, which change how letters are drawn
        invisible = sorted({f"U+{ord(c):04X}" for c in text if not without_invisible(c)})
        if invisible and Path(without_invisible(text)).exists():
            return (f" The path holds invisible characters ({', '.join(invisible)}, e.g. a byte order mark or a "
                    f"zero-width space pasted with it); without them it names a file that exists: delete them from "
                    f"the manifest.")
        joiners = sorted({f"U+{ord(c):04X}" for c in text if c in "\u200c\u200d"})
        if joiners and Path(re.sub("[\u200c\u200d]", "", without_invisible(text))).exists():
            return (f" A file of that name without the zero-width (non-)joiner {', '.join(joiners)} exists: it "
                    f"changes how the letters beside it are drawn, so the two names differ; rename the file or fix "
                    f"the manifest.")
        for form in ("NFC", "NFD"):
            other = unicodedata.normalize(form, text)
            if other != text and Path(other).exists():
                return (f" A file of the same name in another Unicode form ({form}) exists: the manifest and the file "
                        f"system spell its accents differently; rename the file or fix the manifest.")
        # 'corpus/a.wav' in corpus/list.csv, generated from the folder above: the longest tail of the
        # path that names a file under the current folder.
        cwd = Path.cwd()
        for start in range(1, len(path.parts)):
            candidate = cwd.joinpath(*path.parts[start:])
            if candidate != path and candidate.is_file():
                return (f" It exists relative to the current folder, as {candidate}: write the manifest's paths "
                        f"relative to the manifest's own folder, or absolute.")
        # A manifest named through a symbolic link resolves against the link's folder, not its target's.
        # Which manifest listed the file is not known here (nor on a cluster's workers): links to a
        # manifest in any folder above the file are tried, so a path with '../' gets no hint.
        for folder in path.parents:
            try:
                linked = _linked_manifests(str(folder), os.stat(folder).st_mtime_ns)
            except OSError:  # a folder of the path missing too, or not listable: the ones above may hold the link
                continue
            for link, target in linked:
                candidate = Path(target).parent / path.relative_to(folder)
                if candidate != path and candidate.is_file():
                    return (f" The manifest {link} is a symbolic link to {target}, and the file exists beside "
                            f"that, as {candidate}: relative paths resolve against the folder the manifest is named "
                            f"in ({folder}). Name the manifest by its real path, or write its paths relative to "
                            f"{folder}, or absolute.")
    except (OSError, ValueError):
        pass
    return ""


@functools.lru_cache(maxsize=64)  # a missing file each: one listing per folder, not one per file
def _linked_manifests(folder: str, mtime_ns: int) -> tuple[tuple[str, str], ...]:
    """Symbolic links in ``folder`` to manifest files (.csv, .tsv) of another folder: (link, target).
    ``mtime_ns``: the folder's, so that a link made or removed since (a notebook session) is seen."""
    found = []
    here = os.path.realpath(folder)
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.lower().endswith((".csv", ".tsv")) and entry.is_symlink():
                target = os.path.realpath(entry.path)
                if os.path.isfile(target) and os.path.dirname(target) != here:
                    found.append((entry.path, target))
    return tuple(sorted(found))


def _check_readable(path: Path) -> None:
    """Raise AudioError for a missing, non-file or permission-denied path."""
    if "\0" in str(path):  # os.stat raised ValueError, which ended the whole run with a traceback
        raise AudioError(f"Audio path {str(path)!r} holds a NUL character, which no file name can. Fix the path in "
                         f"the manifest (a NUL byte there often comes from a damaged file or a UTF-16 one).")
    try:
        os.stat(path)
        exists = True
    except (FileNotFoundError, NotADirectoryError):
        exists = False
    except PermissionError as exc:  # a folder on the way cannot be entered (no search permission)
        raise AudioError(f"Audio file {path} cannot be reached: permission denied on a folder of its path. Grant "
                         f"access (e.g. `chmod a+x` on each folder) or run as a user who may read it.") from exc
    if not exists and path.is_symlink():
        raise AudioError(f"Audio file {path} is a symbolic link to {os.readlink(path)}, which does not exist. Point "
                         f"the link at the recording, or remove it (from the corpus folder or the manifest).")
    if not exists:
        raise AudioError(
            f"Audio file {path} does not exist. Check the path (a CSV manifest's relative paths resolve "
            f"against the manifest's folder).{_near_miss(path)}"
        )
    if not path.is_file():
        raise AudioError(f"Audio path {path} is not a regular file. Replace it with an audio file, or remove it "
                         f"(from the corpus folder or the manifest).")
    try:
        # libsndfile reports permission problems as a generic "System error"; opening
        # the file ourselves first gives the user the real cause.
        with open(path, "rb"):
            pass
    except PermissionError as exc:
        raise AudioError(
            f"Audio file {path} cannot be read: permission denied. "
            f"Grant read access (e.g. `chmod a+r {shlex.quote(str(path))}`) or run as a user who may read it."
        ) from exc
    except OSError as exc:
        raise AudioError(f"Audio file {path} cannot be opened ({exc}). Check the file system and path.") from exc


def _open(path: Path) -> sf.SoundFile:
    """Open ``path`` with libsndfile, translating its errors into AudioError."""
    _check_readable(path)
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        size = path.stat().st_size
        what = (
            "is empty (0 bytes)" if size == 0
            else f"is not audio libsndfile can decode, or its header is damaged or truncated ({size} bytes)"
        )
        raise AudioError(
            f"Audio file {path} {what}: libsndfile says {str(exc).rstrip('.')}. "
            f"Re-export the file, or {_CONVERT_HINT}."
        ) from exc
    truncated = truncation(handle.extra_info)
    if truncated:
        handle.close()
        raise truncated_error(path, truncated)
    # libsndfile trusts a header that declares 0 bytes (WAVEX: a 24-bit or multichannel recorder's WAV)
    if handle.format in ("WAV", "WAVEX") and handle.frames == 0 and _unclosed_bytes(path) > 0:
        handle.close()
        raise AudioError(f"Audio file {path} has a header that declares 0 bytes of audio data, yet the file holds "
                         f"{path.stat().st_size:,} bytes: a recording that was never closed (a recorder that stopped "
                         f"or crashed, a streaming writer) leaves such a header. Rewrite it, e.g. `sox --ignore-length "
                         f"IN OUT.wav`, and use OUT.")
    if handle.samplerate < _MIN_RATE:  # 1 Hz gave eGeMAPS a hop of 0 samples: ZeroDivisionError ended the run
        handle.close()
        # Not _CONVERT_HINT: `ffmpeg -ar 16000` would trust the damaged rate and resample from it.
        raise AudioError(f"Audio file {path} declares a sample rate of {handle.samplerate} Hz, below the "
                         f"{_MIN_RATE} Hz of any speech recording: its header is likely damaged. Re-export the file "
                         f"from its source, or, knowing its true rate, relabel it without resampling (e.g. "
                         f"`ffmpeg -i IN -af asetrate=TRUE_RATE OUT.wav`).")
    return handle


def _unclosed_bytes(path: Path) -> int:
    """Bytes of a WAV after the header of a data chunk that declares 0 bytes (else 0): audio that a header
    never closed leaves out; a closed empty file (metadata only, e.g. a BWF) has none, also when metadata
    chunks follow its data chunk (a LIST that ffmpeg writes last). Read here, not from libsndfile's log,
    which long metadata (a LIST before the data) cuts short."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(12)  # past "RIFF", its size and "WAVE"
        while len(chunk := f.read(8)) == 8:
            if chunk[:4] == b"data":
                return 0 if chunk[4:] != bytes(4) or _only_chunks(f, size) else size - f.tell()
            f.seek((int.from_bytes(chunk[4:], "little") + 1) & ~1, 1)  # chunks are padded to even sizes
    return 0


def _only_chunks(f: IO[bytes], size: int) -> bool:
    """Whether the rest of a WAV file, from ``f``'s position, is whole chunks (an id of 4 printable
    ASCII characters, a size, the body and its pad byte) ending at the end of the file: metadata
    written after a closed data chunk, not the audio of an unclosed one. ``f``'s position is kept."""
    start = f.tell()
    try:
        while (left := size - f.tell()) > 1:  # a lone pad byte may end the file
            chunk = f.read(8)
            if len(chunk) < 8 or not all(0x20 <= c <= 0x7E for c in chunk[:4]):
                return False
            body = (int.from_bytes(chunk[4:], "little") + 1) & ~1
            if body > left - 8 + 1:  # past the end (an odd-sized last body may lack its pad byte)
                return False
            f.seek(body, 1)
        return True
    finally:
        f.seek(start)


# A WAV or AIFF cut inside its audio data decodes without an error: libsndfile returns the frames
# that are there and logs the mismatch with the header (its extra_info). A size that a streaming
# writer puts in a header it cannot seek back to (0; 2**31 - 1, 2**32 - 1, sox's 0x7ffff000: 2 GB
# and more) is not a cut.
_STREAMING_SIZE = 0x7FFF0000


def truncated_error(path: Path, what: str) -> AudioError:
    """The error for a file cut short; ``what``: what its header declares against what it holds."""
    return AudioError(f"Audio file {path} is truncated: {what}. The recording was cut short (a copy or download "
                      f"that did not finish?); copy or export it again.")


def decoded_short(declared: int, frames: int) -> bool:
    """Whether ``frames`` decoded fall short of the ``declared`` ones: a cut MP3 decodes without an
    error to what is left, while its header (Xing) still gives the whole length. An MPEG header's
    length may be off by an encoder's padding: 1 % plus one frame."""
    return frames < declared * 0.99 - 1152


def truncation(log: str) -> str:
    """What libsndfile's header log (a SoundFile's ``extra_info``) says is missing from the file, or "" when
    nothing is: a WAV cut short opens and decodes without an error (used by stage 1 and predict's windows)."""
    # WAV "data", AU "Data Size"; W64 logs only its whole-file size ("riff", lowercase; WAV's "RIFF"
    # differs for files that lost only trailing metadata, and WAV's data line already says a cut).
    found = re.search(r"^\s*(data|Data Size|riff)\s*:\s*(\d+)\s*\(should be (\d+)\)", log, re.MULTILINE)
    if found and 0 < int(found[2]) < _STREAMING_SIZE and int(found[3]) < int(found[2]) - 1:  # - 1: a pad byte
        what = "bytes" if found[1] == "riff" else "bytes of audio data"
        return f"its header declares {int(found[2]):,} {what}, the file holds {int(found[3]):,}"
    found = re.search(r"Calculated frame count (\d+) does not match value from 'ds64' chunk of (\d+)", log)
    if found and int(found[1]) < int(found[2]):  # RF64
        return f"its header declares {int(found[2]):,} frames, the file holds {int(found[1]):,}"
    found = re.search(r"Frame count read from 'COMM' chunk \((\d+)\) not equal to frame count\s*\n"
                      r"\*\*\* calculated from length of 'SSND' chunk \((\d+)\)", log)
    if found and int(found[2]) < int(found[1]):
        return f"its header declares {int(found[1]):,} frames, the file holds {int(found[2]):,}"
    return ""


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
