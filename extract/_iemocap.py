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
# An utterance id anywhere in a line: such a line is an utterance line, whatever else it holds.
_ID_IN_LINE = re.compile(r"Ses0\d[FM]_\S+_[FM]\d+")
# The annotators' lines ("C-E1:\tNeutral;\t()", "A-F2:\tval 3; ..."): their comments are free text.
_ANNOTATOR = re.compile(r"^[A-Z]-[A-Z]+\d*:")
_BAD_LINE = ("expected '[START - END]<tab>UTTERANCE<tab>LABEL<tab>[V, A, D]' as in the release: restore the "
             "line from it")
_SESSION_DIR = re.compile(r"^Session(\d)$")
_DIALOG = re.compile(r"^Ses0\d[FM]_\S+$")  # Ses01F_impro01, Ses01F_script01_1
_GENDERS = {"F": "female", "M": "male"}


def _read_evaluation(path: Path, session_num: str, wav_root: Path, seen: dict[str, str],
                     mentioned: set[str], lost: dict[str, list[str]]) -> tuple[list[Utterance], list[tuple[str, str]]]:
    """Utterances labelled in one EmoEvaluation file; ``mentioned`` collects the ids of its lines
    that were not understood (their audio is reported with the line, not again as unlisted), and
    ``lost`` those whose whole dialog folder is missing, per dialog (reported once per folder)."""
    utterances, problems = [], []
    # utf-8-sig: a file saved by Notepad or Excel starts with a BOM, which hid its first line.
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip().lstrip("\ufeff").strip()  # indented lines, a BOM left by pasting files together
        if not line or _ANNOTATOR.match(line):
            continue  # blank and per-annotator lines ("C-E1: ...")
        if not line.startswith("["):
            # The header ("% [START_TIME - END_TIME] ..."); an utterance line that lost its "[" is no header.
            found = _ID_IN_LINE.search(line)
            if found:
                mentioned.add(found.group(0))
                problems.append((f"{path}:{number}", f"evaluation line of {found.group(0)} not understood "
                                                      f"(it does not start with '['): {line!r}; {_BAD_LINE}"))
            continue
        m = _LINE.match(line)
        if not m:
            found = _ID_IN_LINE.search(line)
            if found:
                mentioned.add(found.group(0))
            problems.append((f"{path}:{number}", f"evaluation line not understood: {line!r}; {_BAD_LINE}"))
            continue
        uid = m["id"]
        idm = _ID.match(uid)
        if not idm:
            problems.append((f"{path}:{number}", f"utterance id {uid!r} is not like Ses01F_impro01_F000"))
            continue
        if idm["num"] != session_num:
            mentioned.add(uid)
            problems.append((f"{path}:{number}", f"utterance {uid} listed under Session{session_num}"))
            continue
        if uid in seen:
            problems.append((f"{path}:{number}", f"utterance {uid} already labelled in {seen[uid]}"))
            continue
        seen[uid] = f"{path}:{number}"
        dialog = uid.rsplit("_", 1)[0]
        wav = wav_root / dialog / f"{uid}.wav"
        if not wav.is_file():
            if not wav.parent.is_dir():  # the copy lacks the dialog's folder: one entry for it, not one per file
                lost.setdefault(dialog, []).append(uid)
                continue
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


def _unlisted_audio(wav_root: Path, evaluation_dir: Path, listed: set[str]) -> list[tuple[str, str]]:
    """Problems for the wav files of a session that no EmoEvaluation line labels: the release
    labels every one, so such a file means a lost or damaged evaluation line (or file)."""
    problems = []
    try:
        folders = sorted(d for d in wav_root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError:  # no sentences/wav: every labelled utterance is reported as missing audio
        return []
    for folder in folders:
        try:
            wavs = sorted(p for p in folder.glob("*.wav") if not p.name.startswith(".") and p.stem not in listed)
        except OSError as error:
            problems.append((str(folder), f"wav folder cannot be listed ({error.strerror or error}); its "
                                          f"unlabelled files are not checked"))
            continue
        if not wavs:
            continue
        evaluation = evaluation_dir / f"{folder.name}.txt"
        if not evaluation.is_file():  # a whole dialog's labels lost: one entry, not one per file
            problems.append((str(folder), f"{len(wavs)} wav file(s) (e.g. {wavs[0].name}) have no evaluation "
                                          f"file {evaluation}, so they are not labelled and not extracted; "
                                          f"restore it from the release"))
            continue
        for wav in wavs:
            problems.append((str(wav), f"no line of the EmoEvaluation files labels utterance {wav.stem} (its "
                                       f"dialog's file is {evaluation}), so it is not extracted; restore its "
                                       f"line from the release if it was lost"))
    return problems


def _missing_parts(session: Path, evaluations: list[Path], lost: dict[str, list[str]]) -> list[tuple[str, str]]:
    """One problem per part of a session that the copy lacks, named: its sentences/wav folder, a
    dialog's folder in it (``lost``: the labelled ids of each), and a dialog the session's
    transcriptions or dialog audio name that has neither an EmoEvaluation file nor a wav folder (a copy
    that missed it entirely; every speaker is still there, so no speaker count shows it)."""
    wav_root = session / "sentences" / "wav"
    problems = []
    if lost and not wav_root.is_dir():
        count, dialogs = sum(len(ids) for ids in lost.values()), sorted(lost)
        shown = ", ".join(dialogs[:3]) + (", ..." if len(dialogs) > 3 else "")
        problems.append((str(wav_root), f"folder missing: {session.name}'s {count} labelled utterance(s), of "
                                        f"{len(dialogs)} dialog(s) ({shown}), "
                                        f"have no audio and are not extracted; restore {session.name}/sentences/wav "
                                        f"from the release"))
    else:
        for dialog, ids in sorted(lost.items()):
            problems.append((str(wav_root / dialog), f"dialog folder missing: the {len(ids)} utterance(s) of "
                                                     f"{dialog} labelled in {dialog}.txt have no audio and are not "
                                                     f"extracted; restore the folder from the release"))
    named: dict[str, str] = {}  # dialog -> where the copy names it
    for folder, suffix in (("transcriptions", ".txt"), ("wav", ".wav")):
        try:
            files = sorted((session / "dialog" / folder).glob(f"*{suffix}"))
        except OSError:
            continue
        for file in files:
            if _DIALOG.match(file.stem) and not file.name.startswith("."):
                named.setdefault(file.stem, str(file))
    labelled = {p.stem for p in evaluations}
    for dialog, where in sorted(named.items()):
        if dialog not in labelled and not (wav_root / dialog).is_dir():
            problems.append((str(session / "dialog" / "EmoEvaluation" / f"{dialog}.txt"),
                             f"dialog {dialog} is missing from this copy: {where} names it, but it has neither an "
                             f"EmoEvaluation file nor a sentences/wav/{dialog} folder, so none of its utterances is "
                             f"extracted; restore both from the release"))
    return problems


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
        The :class:`Manifest`; labelled utterances without audio, lines that look like
        utterance lines but do not parse, and wav files that no line labels are listed in
        ``problems``.

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
    mentioned: set[str] = set()
    read: list[Path] = []  # sessions whose EmoEvaluation folder was read
    for session in sessions:
        num = _SESSION_DIR.match(session.name).group(1)
        evaluation_dir = session / "dialog" / "EmoEvaluation"
        if not evaluation_dir.is_dir():
            problems.append((str(evaluation_dir), "EmoEvaluation folder missing; session skipped"))
            continue
        # Skip macOS "._" resource forks that tar copies of the release often carry.
        evaluations = sorted(p for p in evaluation_dir.glob("*.txt") if not p.name.startswith("."))
        lost: dict[str, list[str]] = {}
        for path in evaluations:
            found, bad = _read_evaluation(path, num, session / "sentences" / "wav", seen, mentioned, lost)
            utterances += found
            problems += bad
        problems += _missing_parts(session, evaluations, lost)
        read.append(session)
    for session in read:  # after every session: a line filed under another session still names its id
        problems += _unlisted_audio(session / "sentences" / "wav", session / "dialog" / "EmoEvaluation",
                                    seen.keys() | mentioned)
    if not sessions and _SESSION_DIR.match(root.name):
        raise ManifestError(f"IEMOCAP folder {root} is one session's folder: pass its parent {root.parent}, the "
                            f"folder holding Session1..Session5.")
    inside = next((p for p in root.parents if _SESSION_DIR.match(p.name)), None)
    if not sessions and inside is not None:  # sentences/wav or dialog/EmoEvaluation of a session
        raise ManifestError(f"IEMOCAP folder {root} is inside the session folder {inside}: pass {inside.parent}, the "
                            f"folder holding Session1..Session5.")
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
