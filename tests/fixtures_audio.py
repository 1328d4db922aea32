"""Synthetic audio and corpus trees for tests (importable: ``from fixtures_audio import ...``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = [
    "OTHER_RATES",
    "build_iemocap_tree",
    "build_ravdess_tree",
    "make_signal",
    "write_audio",
]


#: Sample rates other than 16 kHz that corpora are distributed at (telephone, CD, 22.05 kHz
#: acted corpora, 48 kHz studio recordings such as the RAVDESS originals).
OTHER_RATES = (8_000, 22_050, 44_100, 48_000)


def make_signal(*, duration: float = 1.0, sample_rate: int = 16_000, channels: int = 1,
                frequency: float = 440.0, amplitude: float = 0.5, seed: int = 0) -> np.ndarray:
    """A sine plus a little noise, float32 [frames] (mono) or [frames, channels].

    Channel c is scaled by (c + 1) / channels so a channel mix is distinguishable from
    any single channel.
    """
    frames = int(round(duration * sample_rate))
    t = np.arange(frames) / sample_rate
    rng = np.random.default_rng(seed)
    base = amplitude * np.sin(2 * np.pi * frequency * t) + 0.01 * rng.standard_normal(frames)
    if channels == 1:
        return base.astype(np.float32)
    scales = (np.arange(channels) + 1) / channels
    return (base[:, None] * scales[None, :]).astype(np.float32)


def write_audio(path: str | Path, *, duration: float = 1.0, sample_rate: int = 16_000,
                channels: int = 1, subtype: str | None = "PCM_16", format: str | None = None,
                frequency: float = 440.0, amplitude: float = 0.5, seed: int = 0,
                frames: int | None = None, data: np.ndarray | None = None) -> Path:
    """Write a synthetic audio file and return its path.

    Args:
        path: Destination; the format follows the suffix unless ``format`` is given.
        duration: Seconds of audio (ignored when ``frames`` or ``data`` is given).
        sample_rate: Sample rate in Hz.
        channels: Number of channels.
        subtype: libsndfile subtype (``PCM_16``, ``PCM_24``, ``PCM_U8``, ``FLOAT``, ``VORBIS``...);
            None uses the format's default.
        format: libsndfile format name (``WAV``, ``FLAC``, ``OGG``...).
        frequency: Sine frequency in Hz.
        amplitude: Peak amplitude.
        seed: Noise seed.
        frames: Exact number of frames (overrides ``duration``).
        data: Samples to write as they are (overrides the synthetic signal).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        if frames is not None:
            duration = frames / sample_rate
        data = make_signal(duration=duration, sample_rate=sample_rate, channels=channels,
                           frequency=frequency, amplitude=amplitude, seed=seed)
    sf.write(str(path), data, sample_rate, subtype=subtype, format=format)
    return path


def build_ravdess_tree(root: str | Path, *, actors: tuple[int, ...] = (1, 2),
                       emotions: tuple[int, ...] = (1, 5), song: bool = True,
                       duration: float = 0.2, suffix: str = ".wav") -> list[Path]:
    """A tiny RAVDESS-like tree (``speech/Actor_NN``, ``song/Actor_NN``); returns the files."""
    root = Path(root)
    written = []
    for actor in actors:
        for channel, group in ((1, "speech"), (2, "song")):
            if channel == 2 and not song:
                continue
            for emotion in emotions:
                for intensity in (1,) if emotion == 1 else (1, 2):
                    name = f"03-{channel:02d}-{emotion:02d}-{intensity:02d}-01-01-{actor:02d}{suffix}"
                    written.append(write_audio(root / group / f"Actor_{actor:02d}" / name,
                                               duration=duration, seed=actor * 100 + emotion))
    return written


# Per dialog: (utterance suffix, label); the last id field's letter is who speaks.
_IEMOCAP_UTTERANCES = (("F000", "neu"), ("M000", "ang"), ("F001", "xxx"), ("M001", "exc"))


def build_iemocap_tree(root: str | Path, *, sessions: tuple[int, ...] = (1, 2),
                       dialogs: tuple[str, ...] = ("impro01", "script01_1"),
                       missing_audio: tuple[str, ...] = (), duration: float = 0.1) -> dict[str, dict[str, str]]:
    """A tiny IEMOCAP release tree: EmoEvaluation files plus ``sentences/wav`` audio.

    Session s has dialogs ``Ses0{s}F_<dialog>`` for odd s, ``Ses0{s}M_<dialog>`` for even s,
    each with four utterances (labels neu, ang, xxx, exc, speakers F, M, F, M).

    Args:
        root: Destination folder.
        sessions: Session numbers to create.
        dialogs: Dialog names (after the ``Ses0NX_`` prefix).
        missing_audio: Utterance ids to label but not write audio for.
        duration: Seconds per utterance.

    Returns:
        ``{utterance id: {"label", "speaker", "session", "gender", "dialog", "has_audio"}}``.
    """
    root = Path(root)
    expected: dict[str, dict[str, str]] = {}
    for s in sessions:
        lead = "F" if s % 2 else "M"
        session = root / f"Session{s}"
        evaluation = session / "dialog" / "EmoEvaluation"
        evaluation.mkdir(parents=True, exist_ok=True)
        (evaluation / "Categorical").mkdir(exist_ok=True)  # real releases have subfolders
        for dialog_name in dialogs:
            dialog = f"Ses0{s}{lead}_{dialog_name}"
            lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            for k, (suffix, label) in enumerate(_IEMOCAP_UTTERANCES):
                uid = f"{dialog}_{suffix}"
                start = 1.5 * k
                lines += [
                    f"[{start:.4f} - {start + 1.2:.4f}]\t{uid}\t{label}\t[2.5000, 3.0000, 3.5000]",
                    "C-E1:\tNeutral;\t()",
                    "A-E1:\tval 3; act 3; dom  3;\t()",
                    "",
                ]
                has_audio = uid not in missing_audio
                if has_audio:
                    write_audio(session / "sentences" / "wav" / dialog / f"{uid}.wav",
                                duration=duration, seed=s * 10 + k)
                expected[uid] = {
                    "label": label,
                    "speaker": f"Ses0{s}{suffix[0]}",
                    "session": f"Session{s}",
                    "gender": "female" if suffix[0] == "F" else "male",
                    "dialog": dialog,
                    "has_audio": str(has_audio),
                }
            (evaluation / f"{dialog}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return expected
