"""IEMOCAP reader: labels from EmoEvaluation files, audio from sentences/wav."""

from __future__ import annotations

import os
import re
from pathlib import Path

from w2v2ser.store import Utterance

from ._errors import ManifestError
from ._manifest import Manifest

__all__ = ["read_iemocap"]

# "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]"
_LINE = re.compile(
    r"^\[\s*(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\s*\]\s+(?P<id>\S+)\s+(?P<label>\S+)\s+"
    r"\[\s*(?P<v>[-\d.]+)\s*,\s*(?P<a>[-\d.]+)\s*,\s*(?P<d>[-\d.]+)\s*\]\s*$"
)
_ID = re.compile(r"^(?P<session>Ses0(?P<num>\d))[FM]_(?P<rest>.+)_(?P<who>[FM])\d+$")
_SESSION_DIR = re.compile(r"^Session(\d)$")
_GENDERS = {"F": "female", "M": "male"}


def _read_evaluation(path: Path, session_num: str, wav_root: Path,
                     seen: dict[str, str]) -> tuple[list[Utterance], list[tuple[str, str]]]:
    """Utterances labelled in one EmoEvaluation file."""
    utterances, problems = [], []
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("["):
            continue  # header, per-annotator lines ("C-E1: ..."), blank lines
        m = _LINE.match(line.strip())
        if not m:
            problems.append((f"{path}:{number}", f"evaluation line not understood: {line.strip()!r}; expected "
                                                  f"'[START - END]<tab>UTTERANCE<tab>LABEL<tab>[V, A, D]' as in the "
                                                  f"release: restore the line from it"))
            continue
        uid = m["id"]
        idm = _ID.match(uid)
        if not idm:
            problems.append((f"{path}:{number}", f"utterance id {uid!r} is not like Ses01F_impro01_F000"))
            continue
        if idm["num"] != session_num:
            problems.append((f"{path}:{number}", f"utterance {uid} listed under Session{session_num}"))
            continue
        if uid in seen:
            problems.append((f"{path}:{number}", f"utterance {uid} already labelled in {seen[uid]}"))
            continue
        seen[uid] = f"{path}:{number}"
        dialog = uid.rsplit("_", 1)[0]
        wav = wav_root / dialog / f"{uid}.wav"
        if not wav.is_file():
            problems.append((str(wav), f"audio missing for labelled utterance {uid} ({path.name} line {number}); "
                                       f"restore the file from the release if it was not left out on purpose"))
            continue
        utterances.append(Utterance(
            id=uid,
            path=str(wav),
            speaker=f"{idm['session']}{idm['who']}",
            label=m["label"],
            session=f"Session{session_num}",
            gender=_GENDERS[idm["who"]],
            corpus="iemocap",
            extra={
                "dialog": dialog,
                "method": "improvised" if "_impro" in dialog else "scripted",
                "start": m["start"],
                "end": m["end"],
                "valence": m["v"],
                "activation": m["a"],
                "dominance": m["d"],
            },
        ))
    return utterances, problems


def _holds_sessions(folder: Path) -> bool:
    try:
        return any(c.is_dir() and _SESSION_DIR.match(c.name) for c in folder.iterdir())
    except OSError:  # unreadable: not the corpus
        return False


def read_iemocap(root: str | os.PathLike[str]) -> Manifest:
    """Read IEMOCAP (release layout) under ``root``.

    Labels come from ``SessionN/dialog/EmoEvaluation/*.txt`` (all labels kept, including
    ``xxx``, ``oth``, ``exc``, ``fru``); audio from ``SessionN/sentences/wav/<dialog>/<id>.wav``.
    The speaker is the session code plus the speaking actor's gender letter (the first
    letter of the id's last field): ``Ses01F_impro01_M000`` -> ``Ses01M``.

    Args:
        root: The folder holding ``Session1`` ... ``Session5``.

    Returns:
        The :class:`Manifest`; labelled utterances without audio and unparsable lines
        are listed in ``problems``.

    Raises:
        ManifestError: ``root`` is not a folder or holds no labelled utterance with audio.
    """
    root = Path(os.path.abspath(root))  # ".." collapsed (symlinks kept): one spelling of each file
    if not root.is_dir():
        raise ManifestError(f"IEMOCAP folder {root} {'is a file' if root.exists() else 'does not exist'}. Pass the "
                            f"folder holding Session1..Session5.")
    sessions = sorted(d for d in root.iterdir() if d.is_dir() and _SESSION_DIR.match(d.name))
    utterances: list[Utterance] = []
    problems: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for session in sessions:
        num = _SESSION_DIR.match(session.name).group(1)
        evaluation_dir = session / "dialog" / "EmoEvaluation"
        if not evaluation_dir.is_dir():
            problems.append((str(evaluation_dir), "EmoEvaluation folder missing; session skipped"))
            continue
        # Skip macOS "._" resource forks that tar copies of the release often carry.
        for path in sorted(p for p in evaluation_dir.glob("*.txt") if not p.name.startswith(".")):
            found, bad = _read_evaluation(path, num, session / "sentences" / "wav", seen)
            utterances += found
            problems += bad
    if not sessions:
        # Releases unpack as IEMOCAP_full_release/Session1..5; name the folder when it is one level down.
        inner = sorted(d for d in root.iterdir() if d.is_dir() and _holds_sessions(d))
        if inner:
            raise ManifestError(f"IEMOCAP folder {root} holds no Session1..Session5 folders, but {inner[0]} "
                                f"does: pass {inner[0]} as the corpus path.")
    if not utterances:
        raise ManifestError(
            f"No labelled IEMOCAP utterance with audio found under {root} (sessions found: "
            f"{[s.name for s in sessions]}, {len(problems)} problems). Expected SessionN/dialog/"
            "EmoEvaluation/*.txt and SessionN/sentences/wav/<dialog>/<utterance>.wav."
        )
    utterances.sort(key=lambda u: u.id)
    return Manifest(utterances=utterances, problems=problems, corpus="iemocap", source=str(root))
