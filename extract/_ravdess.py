"""RAVDESS reader: labels, speakers and gender from the file names."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from w2v2ser.store import Utterance

from ._errors import ManifestError
from ._manifest import Manifest

__all__ = ["RAVDESS_EMOTIONS", "read_ravdess"]

#: Emotion code -> label, in RAVDESS order (all 8 are kept; merge later if needed).
RAVDESS_EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}
_MODALITIES = {"01": "audio-video", "02": "video-only", "03": "audio-only"}
_CHANNELS = {"01": "speech", "02": "song"}
_INTENSITIES = {"01": "normal", "02": "strong"}
_AUDIO_SUFFIXES = {".wav", ".flac"}
_OTHER_AUDIO = {".mp3", ".ogg", ".m4a", ".aac", ".aif", ".aiff", ".opus", ".wma"}
_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
_ACTOR_DIR = re.compile(r"^Actor_(\d\d)$")


def _parse(path: Path) -> tuple[Utterance | None, str]:
    """Utterance for one file, or (None, reason) when its name breaks the convention."""
    m = _NAME.match(path.stem)
    if not m:
        return None, "file name is not MM-VC-EE-II-SS-RR-AA (seven two-digit fields)"
    modality, channel, emotion, intensity, statement, repetition, actor = m.groups()
    checks = [
        (modality in _MODALITIES, f"modality {modality} not in 01-03"),
        (channel in _CHANNELS, f"vocal channel {channel} not 01 (speech) or 02 (song)"),
        (emotion in RAVDESS_EMOTIONS, f"emotion {emotion} not in 01-08"),
        (intensity in _INTENSITIES, f"intensity {intensity} not 01 or 02"),
        (statement in ("01", "02"), f"statement {statement} not 01 or 02"),
        (repetition in ("01", "02"), f"repetition {repetition} not 01 or 02"),
        (1 <= int(actor) <= 24, f"actor {actor} not in 01-24"),
    ]
    for ok, reason in checks:
        if not ok:
            return None, reason
    folder = _ACTOR_DIR.match(path.parent.name)
    if folder and folder.group(1) != actor:
        return None, f"actor {actor} in the name but the file is in folder {path.parent.name}"
    group = path.parent.parent.name
    if group in _CHANNELS.values() and group != _CHANNELS[channel]:
        return None, f"vocal channel {_CHANNELS[channel]} in the name but the file is under {group}/"
    return Utterance(
        id=path.stem,
        path=str(path),
        speaker=f"Actor_{actor}",
        label=RAVDESS_EMOTIONS[emotion],
        gender="male" if int(actor) % 2 else "female",
        corpus="ravdess",
        extra={
            "vocal_channel": _CHANNELS[channel],
            "intensity": _INTENSITIES[intensity],
            "statement": statement,
            "repetition": repetition,
            "modality": _MODALITIES[modality],
        },
    ), ""


def _actor_dirs(root: Path) -> list[Path]:
    """Actor folders under ``speech/``, ``song/`` (or any other folder of the root, e.g. an unpacked
    zip's) or directly under the root (original zips), or the root itself when it is one
    (``Actor_07/``: new audio of one actor)."""
    if _ACTOR_DIR.match(root.name):
        return [root]
    # Any folder one level down too: a zip unpacked into a folder of its own name
    # (Audio_Speech_Actors_01-24/Actor_01/...), as file managers and `unzip -d` do.
    parents = [root, *(d for d in root.iterdir() if d.is_dir() and not _ACTOR_DIR.match(d.name))]
    found = set()
    for parent in parents:
        try:
            found |= {d for d in parent.iterdir() if d.is_dir() and _ACTOR_DIR.match(d.name)}
        except PermissionError:
            if parent == root:
                raise
            # another folder of the root that this user may not enter (lost+found of a data volume)
    return sorted(found)


def read_ravdess(root: str | os.PathLike[str]) -> Manifest:
    """Read the RAVDESS audio files under ``root``.

    Expects ``speech/Actor_NN/`` and ``song/Actor_NN/`` (or ``Actor_NN/`` directly, or one
    ``Actor_NN`` folder as ``root``) holding
    ``MM-VC-EE-II-SS-RR-AA.wav|flac`` files. id = file stem, speaker = ``Actor_NN``,
    gender from actor parity (odd male), label = emotion name (all 8 kept); ``extra`` holds
    vocal_channel, intensity, statement, repetition and modality.

    Args:
        root: The corpus folder.

    Returns:
        The :class:`Manifest`; audio files whose names do not parse are listed in
        ``problems`` and skipped.

    Raises:
        ManifestError: ``root`` is not a folder or holds no RAVDESS audio file.
    """
    root = Path(os.path.abspath(root))  # ".." collapsed (symlinks kept): one spelling of each file
    if not root.is_dir():
        raise ManifestError(f"RAVDESS folder {root} {'is a file' if root.exists() else 'does not exist'}. Pass the "
                            f"folder holding speech/ and song/ (or the Actor_NN folders).")
    utterances, problems = [], []
    seen: dict[str, str] = {}
    for actor_dir in _actor_dirs(root):
        for path in sorted(actor_dir.iterdir()):
            if path.name.startswith("."):
                continue  # .DS_Store, ._resource forks
            if path.suffix.lower() in _OTHER_AUDIO and _NAME.match(path.stem):
                problems.append((str(path), f"RAVDESS is read from .wav and .flac files, not {path.suffix}; convert "
                                            f"it (e.g. `ffmpeg -i {shlex.quote(path.name)} "
                                            f"{shlex.quote(path.stem + '.flac')}`)"))
                continue
            if path.suffix.lower() not in _AUDIO_SUFFIXES:
                continue  # README, ... are not utterances
            utterance, reason = _parse(path)
            if utterance is None:
                problems.append((str(path), f"{reason}; rename the file or move it out of the corpus folder"))
            elif utterance.id in seen:
                problems.append((str(path), f"duplicate of {seen[utterance.id]} (same file name); remove one"))
            else:
                seen[utterance.id] = str(path)
                utterances.append(utterance)
    if not utterances:
        raise ManifestError(
            f"No RAVDESS audio found under {root} ({len(problems)} unparsable files). Expected "
            "speech/Actor_NN/MM-VC-EE-II-SS-RR-AA.wav|flac; check the folder passed as the corpus path."
        )
    return Manifest(utterances=utterances, problems=problems, corpus="ravdess", source=str(root))
