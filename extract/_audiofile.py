"""Opening an audio file for stage 1: the path and the header checked before any audio is decoded.

Each fault (a missing or unreadable path, with a hint when the manifest misspells an existing
file; a damaged, truncated or never-closed header; an implausible sample rate) becomes an
`AudioError` that names the file, the cause and the fix. :func:`truncation`,
:func:`truncated_error` and :func:`decoded_short` also serve predict's windows.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import unicodedata
from pathlib import Path
from typing import IO

import soundfile as sf

from w2v2ser._text import without_invisible

from ._errors import AudioError

__all__ = ["decoded_short", "truncated_error", "truncation"]

_MIN_RATE = 1000  # Hz: the lowest rate an extractor's sample_rate option takes
_CONVERT_HINT = "convert it to 16-bit WAV or FLAC (e.g. `ffmpeg -i IN -ac 1 -ar 16000 OUT.wav`)"


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
