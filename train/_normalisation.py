"""Feature normalisation: per speaker, global (training speakers only), or none.

Statistics always come from the store's exact per-speaker parts
(``FeatureStore.compose_statistics``), so no pass over the frames is needed and global
statistics never see validation or test speakers.

eGeMAPS: statistics are those of the stored 10 ms frames. Normalisation is an affine map per
dimension, so normalising before or after pair averaging gives the same frames; the
pair-averaged frames therefore have mean ~0 but a variance somewhat below 1 (averaging two
correlated neighbours). This matches normalising the LLDs and then downsampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ._errors import ConfigError, DataError
from ._selection import ResolvedSelection

__all__ = ["NORMALISATIONS", "Normaliser", "build_normaliser", "load_normalisers", "save_normalisers", "STD_FLOOR",
           "MIN_SPEAKER_FILES"]

NORMALISATIONS = ("speaker", "global", "none")
# A standard deviation below this is treated as 1 (constant dimension -> zeros, never NaN/inf).
STD_FLOOR = 1e-6
# Fewest files whose own statistics can normalise a speaker. One file's own mean is its own
# content, which speaker normalisation then removes. RAVDESS eGeMAPS, speaker normalisation:
# `predict` on actor 24 in groups of one file gave 21.4 % UAR and of two 43.3 (3 groupings, each
# below, but one-sided t-test p = 0.10: 3 is the cautious side), against 50.6 with the global
# statistics, and of three 51.4 (tests/benchmarks/predict_speaker_groups.py); training with one
# speaker name per test file gave 21.7 ± 3.0 against 50.0 ± 0.9 with the test actors' names
# (3 seeds each, Welch p = 0.003).
MIN_SPEAKER_FILES = 3


def _floor(std: np.ndarray) -> np.ndarray:
    std = np.asarray(std, dtype=np.float64)
    return np.where(np.isfinite(std) & (std >= STD_FLOOR), std, 1.0)


@dataclass
class Normaliser:
    """Mean/std normalisation of one selection, per layer and dimension.

    Attributes:
        mode: "speaker", "global" or "none".
        mean: Global mean, shape ``selection.frame_shape`` (mode "global").
        std: Global std (floored), same shape.
        speaker_mean: Speaker -> mean (mode "speaker").
        speaker_std: Speaker -> floored std (mode "speaker").
    """

    mode: str
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    speaker_mean: dict[str, np.ndarray] = field(default_factory=dict)
    speaker_std: dict[str, np.ndarray] = field(default_factory=dict)

    def moments(self, speaker: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, std) that normalise frames of ``speaker``; None when frames stay as they are.

        Args:
            speaker: The utterance's speaker (used by speaker normalisation only).

        Raises:
            DataError: speaker normalisation, and the store holds no statistics of ``speaker``.
        """
        if self.mode == "none":
            return None
        if self.mode == "global":
            return self.mean, self.std
        if speaker not in self.speaker_mean:
            raise DataError(
                f"no statistics for speaker {speaker!r} (speaker normalisation); the store's per-speaker "
                f"statistics lack it: re-finalize the store or use norm='global'")
        return self.speaker_mean[speaker], self.speaker_std[speaker]

    def apply(self, frames: np.ndarray, speaker: str) -> np.ndarray:
        """Return float32 normalised frames ([T, ...]) of one utterance of ``speaker``.

        Args:
            frames: The utterance's frames as stored.
            speaker: The utterance's speaker.

        Raises:
            DataError: As :meth:`moments`.
        """
        x = frames.astype(np.float32, copy=True)
        moments = self.moments(speaker)
        if moments is not None:
            x -= moments[0].astype(np.float32)
            x /= moments[1].astype(np.float32)
        return x


def build_normaliser(store: Any, selection: ResolvedSelection | str, mode: str, *,
                     train_speakers: Sequence[str], speakers: Sequence[str],
                     utterances: Sequence[str] | None = None) -> Normaliser:
    """Compose the statistics a normaliser needs from the store's per-speaker parts.

    Args:
        store: Open FeatureStore holding ``selection.feature``.
        selection: The resolved selection (decides which layers are composed), or its text
            (e.g. ``"wav2vec2:all"``), resolved against ``store``.
        mode: "speaker", "global" or "none".
        train_speakers: Speakers of the training partition (global statistics use only these).
        speakers: Every speaker whose utterances will be normalised (speaker statistics).
        utterances: Compose over these utterances only (a run on a subset of the store); None:
            every utterance of the speakers.

    Raises:
        ConfigError: Unknown mode, or ``train_speakers``/``speakers`` given as one string.
        SelectionError: ``selection`` text that does not resolve against the store.
        StoreError: A speaker not in the store, or no frames to compose.
    """
    if mode not in NORMALISATIONS:
        raise ConfigError(f"unknown normalisation {mode!r}; expected one of {list(NORMALISATIONS)}")
    for name, given in (("train_speakers", train_speakers), ("speakers", speakers)):
        if isinstance(given, str):  # else split into characters: "speakers ['0', '1', 'A', ...] are not in store"
            raise ConfigError(f"build_normaliser: {name}={given!r} is a string; expected a list of speaker names, "
                              f"e.g. [{given!r}]")
    if mode == "none":
        return Normaliser("none")
    if isinstance(selection, str):
        from ._selection import resolve_selection

        selection = resolve_selection(selection, specs=store.features, alias="store", store=str(store.path))
    layers = list(selection.layers) if selection.layers is not None else None

    def moments(stats: Any) -> tuple[np.ndarray, np.ndarray]:
        mean = np.asarray(stats.mean, dtype=np.float64).reshape(selection.frame_shape)
        var = np.asarray(stats.variance, dtype=np.float64).reshape(selection.frame_shape)
        return mean, _floor(np.sqrt(np.maximum(var, 0.0)))

    if mode == "global":
        mean, std = moments(store.compose_statistics(selection.feature, speakers=sorted(set(train_speakers)),
                                                     layers=layers, utterances=utterances))
        return Normaliser("global", mean=mean, std=std)
    norm = Normaliser("speaker")
    # One pass for every speaker (their slots, or rows of the speaker tables), freed on return.
    per_speaker = store.compose_speaker_statistics(selection.feature, speakers=sorted(set(speakers)),
                                                   layers=layers, utterances=utterances)
    for spk, stats in per_speaker.items():
        norm.speaker_mean[spk], norm.speaker_std[spk] = moments(stats)
    return norm


def save_normalisers(path: Path, normalisers: dict[str, Normaliser], *,
                     global_fallback: Mapping[str, Normaliser] | None = None) -> None:
    """Write ``normalisation.npz``: global mean/std per branch, or a speaker-norm flag.

    Keys: ``<branch>__mode`` (string), ``<branch>__mean`` / ``<branch>__std`` for global mode,
    ``<branch>__speaker_norm`` (bool) — with speaker normalisation a new speaker's own
    statistics must be computed at prediction time. A speaker-normalised branch also gets the
    global statistics of ``global_fallback`` (the training speakers') as its mean/std, which
    ``predict`` uses for files of no known speaker without needing the training store.
    """
    arrays: dict[str, np.ndarray] = {}
    for branch, norm in normalisers.items():
        arrays[f"{branch}__mode"] = np.array(norm.mode)
        arrays[f"{branch}__speaker_norm"] = np.array(norm.mode == "speaker")
        saved = norm if norm.mode == "global" else (global_fallback or {}).get(branch)
        if saved is not None and saved.mode == "global":
            arrays[f"{branch}__mean"] = saved.mean
            arrays[f"{branch}__std"] = saved.std
    np.savez(path, **arrays)


def load_normalisers(path: Path, *, global_fallback: bool = False) -> dict[str, Normaliser]:
    """Read ``normalisation.npz`` back (speaker mode returns an empty speaker table).

    Args:
        path: A run's ``normalisation.npz`` (``runs/<fold>__seed<k>/normalisation.npz``).
        global_fallback: Return instead, per branch that has them, the global statistics of the
            training speakers (a global run's own; a speaker-normalised run's fallback).

    Raises:
        DataError: the file is missing, truncated or damaged (its zip CRC does not match).
    """
    out: dict[str, Normaliser] = {}
    try:
        with np.load(path) as data:
            branches = sorted({k.split("__")[0] for k in data.files})
            for b in branches:
                mode = str(data[f"{b}__mode"])
                if mode == "global" or (global_fallback and f"{b}__mean" in data.files):
                    out[b] = Normaliser("global", mean=data[f"{b}__mean"], std=data[f"{b}__std"])
                elif not global_fallback:
                    out[b] = Normaliser(mode)
    except Exception as exc:  # noqa: BLE001 -- zipfile/numpy raise many types for a damaged file
        raise DataError(f"cannot read normalisation statistics {path} ({type(exc).__name__}: {exc}); "
                        "expected the normalisation.npz that `w2v2ser train` writes. Retrain this run.") from None
    return out
