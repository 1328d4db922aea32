"""Cutting long recordings into consecutive windows for ``predict`` (``--segment``).

The models of a run see the first ``max_frames`` frames of an utterance (the protocol's crop,
5 s for RAVDESS runs). A long recording (an interview, a session) is labelled window by window
instead: each window is written as a float WAV at the file's own rate and channels, so stage 1
decodes, mixes and resamples it exactly as it does a whole file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from w2v2ser._common import EXIT_FAILED

from ._errors import PredictError

__all__ = ["Segment", "cut_segments"]

# A last window shorter than this fraction of a window joins the one before it: a few tenths of
# a second say little about an emotion, and no audio is left out.
_SHORT_TAIL = 0.25


@dataclass(frozen=True)
class Segment:
    """One window of a recording: the audio to extract and where it lies in the recording."""

    path: Path  # the recording itself when it is one window, else a WAV of the window
    start: float  # seconds from the recording's start
    end: float
    error: str | None = None  # why the recording could not be read from ``start`` on (``path``: the recording)


def _bounds(frames: int, window: int, *, within: bool = False, longest: int | None = None) -> list[tuple[int, int]]:
    """(first, last + 1) frame of each window; a short tail joins the window before it, or, with
    ``within`` (no window may be longer than ``window``) or where the joined window would be longer
    than ``longest``, is the end of a last whole window that overlaps the one before it."""
    starts = list(range(0, frames, window)) or [0]
    if len(starts) > 1 and frames - starts[-1] < _SHORT_TAIL * window:
        if not within and (longest is None or frames - starts[-2] <= longest):
            starts.pop()
            return [(a, b) for a, b in zip(starts, starts[1:] + [frames])]
        starts[-1] = frames - window
    return [(a, min(a + window, frames)) for a in starts]


def cut_segments(recording: Path, seconds: float, folder: Path, *, within: bool = False,
                 longest: float | None = None) -> list[Segment]:
    """The windows of ``seconds`` of a recording; windows after the first are written to ``folder``.

    A recording no longer than ``seconds`` (plus the short tail) is one window: itself. A recording
    that cannot be decoded from some point on (a corrupt middle) keeps the windows before it, and
    a last one, from that point to its end, that carries the error.
    ``within``: no window is longer than ``seconds`` (the run's crop, all its models see): a short
    tail ends a last window of ``seconds`` that overlaps the one before it. ``longest``: the longest
    window stage 1 takes (a speech encoder's ``max_seconds``); a short tail that would make the window
    before it longer does the same.

    Raises:
        RuntimeError: libsndfile cannot read the recording, or its first window (soundfile's error, with its reason).
        AudioError: the recording is truncated (stage 1 refuses it the same way, with or without windows).
        PredictError: a window cannot be written to ``folder`` (e.g. a full disk).
    """
    import soundfile

    from w2v2ser.extract._audiofile import decoded_short, truncated_error, truncation

    with soundfile.SoundFile(str(recording)) as source:
        rate, frames = source.samplerate, source.frames
        # A WAV cut short opens and decodes without an error: its windows were labelled as if whole.
        truncated = truncation(source.extra_info)
        if truncated:
            raise truncated_error(recording, truncated)
        bounds = _bounds(frames, max(1, round(seconds * rate)), within=within,
                         longest=None if longest is None else int(longest * rate))
        if len(bounds) == 1:
            return [Segment(recording, 0.0, frames / rate)]
        # Read straight through, never tell() or seek(): libsndfile opens some valid files as not
        # seekable (GSM 6.10 WAV), and seek() raised there, so predict fell back to one whole-file row.
        out, position, previous = [], 0, None
        for k, (first, stop) in enumerate(bounds):
            try:
                audio = source.read(stop - position, dtype="float32", always_2d=True)
            except RuntimeError as error:  # a corrupt middle: the whole recording failed, its good windows too
                if not out:
                    raise
                out.append(Segment(recording, position / rate, frames / rate, error=(
                    f"Audio file {recording} could not be decoded from {position / rate:.2f} s on (libsndfile says "
                    f"{error}): the data is probably corrupt there; the windows before it were labelled. Re-export "
                    f"the file, or convert what can be read (e.g. `ffmpeg -i IN -ac 1 -ar 16000 OUT.wav`)")))
                return out
            if len(audio) == 0:  # the header promised more frames than the file holds
                break
            if first < position:  # an overlapping last window: its head ends the window before it
                audio = np.concatenate([previous[first - position:], audio])
            position, previous = first + len(audio), audio
            target = folder / f"{k:05d}.wav"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                soundfile.write(str(target), audio, rate, subtype="FLOAT")  # exact for 16/24-bit and float sources
            except (RuntimeError, OSError) as error:  # not the recording's fault: never read as undecodable
                failed = PredictError(f"cannot write window {k} of {recording} to {target}: {error}. Free space in "
                                      f"{folder.parent} (predict's work folder: TMPDIR chooses it unless --work-dir "
                                      f"DIR / work_dir= is given), then rerun")
                failed.exit_code = EXIT_FAILED  # the machine's fault, not the input's
                raise failed from None
            out.append(Segment(target, first / rate, (first + len(audio)) / rate))
        if decoded_short(frames, position):  # a cut MP3: its header (Xing) still gives the whole length
            raise truncated_error(recording, f"its header declares {frames:,} frames, it decodes to {position:,}")
        return out
