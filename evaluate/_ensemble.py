"""Class probabilities of new audio from every model of a run: the normalisation statistics each file
gets (the run's saved global ones, or, in a speaker-normalised run, those composed over its speaker
group's new files when that group qualifies) and the mean of the models' probabilities.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from w2v2ser._process import check_thread_environment
from w2v2ser._native_logs import expected_retracing

from ._errors import PredictError, RunDirError
from ._runplan import _Branch, _read_json, _RunPlan, resolve_feature

__all__ = ["ensemble_probabilities", "frameless"]


class _GroupedNormaliser:
    """Per-speaker statistics for grouped speakers, the run's global statistics for the rest."""

    def __init__(self, speaker_norm: Any, fallback: Any) -> None:
        self.speaker_norm, self.fallback = speaker_norm, fallback

    def _for(self, speaker: str) -> Any:
        return self.speaker_norm if speaker in self.speaker_norm.speaker_mean else self.fallback

    def moments(self, speaker: str) -> tuple[np.ndarray, np.ndarray] | None:
        return self._for(speaker).moments(speaker)

    def apply(self, frames: np.ndarray, speaker: str) -> np.ndarray:
        return self._for(speaker).apply(frames, speaker)


def _global_normaliser(plan: _RunPlan, model: Path, branch: _Branch, selection: Any) -> Any:
    """The run's global statistics: ``normalisation.npz`` when it holds them, else composed from
    the training speakers of that run (metrics.json split) in the training store."""
    from w2v2ser import DataError
    from w2v2ser.store import open_store
    from w2v2ser.train import build_normaliser, load_normalisers

    for npz in (model.parent / "normalisation.npz", plan.run_dir / "normalisation.npz"):
        if npz.exists():
            try:  # a speaker-normalised run now saves the training speakers' global statistics too
                saved = load_normalisers(npz, global_fallback=True).get(branch.name)
            except DataError as exc:  # a truncated or damaged file
                raise RunDirError(f"cannot read the run's normalisation statistics in {npz.parent}: {exc} "
                                  "Or pass --run to use another one.") from None
            if saved is not None:  # global_fallback=True returns only global statistics
                return saved
            break
    metrics = model.parent / "metrics.json"
    split = _read_json(metrics, what="the run's metrics").get("split", {}) if metrics.exists() else {}
    train_speakers = list(split.get("train") or [])
    try:
        store = open_store(branch.store)
    except Exception as exc:  # noqa: BLE001 -- reported with the fix below
        raise PredictError(f"no saved global statistics for branch {branch.name!r} in {model.parent} and the "
                           f"training store {branch.store} cannot be opened ({exc}); restore the training "
                           "store, pass its new location (--store PATH), or retrain the run.") from exc
    return build_normaliser(store, selection, "global", train_speakers=train_speakers or store.speakers(),
                            speakers=[])


def _normaliser(plan: _RunPlan, model: Path, branch: _Branch, selection: Any, temp_store: Any,
                groups: Sequence[str], utterances: Sequence[str] | None = None) -> Any:
    from w2v2ser.train import Normaliser, build_normaliser

    mode = plan.config.norm
    if mode == "none":
        return Normaliser("none")
    fallback = _global_normaliser(plan, model, branch, selection)
    if mode == "speaker" and groups:
        per_speaker = build_normaliser(temp_store, selection, "speaker", train_speakers=[], speakers=groups,
                                       utterances=utterances)
        return _GroupedNormaliser(per_speaker, fallback)
    return fallback


def frameless(plan: _RunPlan, stores: Mapping[str, Any], ids: Sequence[str]) -> dict[str, str]:
    """Utterance id -> why it cannot be predicted, for those of ``ids`` with no frames of a feature the run
    reads (audio shorter than one of its frames): the models' masked mean of nothing gave them the same
    near-uniform probabilities whatever the audio, without a word."""
    out: dict[str, str] = {}
    for branch in plan.branches:
        name, store = resolve_feature(branch.selection), stores[branch.store]
        for uid in ids:
            if uid not in out and store.num_frames(uid, name) == 0:
                out[uid] = (f"no frames of feature {name!r}: the audio is shorter than one of its frames, so the "
                            f"models would see nothing (their output for no input is the same whatever the audio); "
                            f"give a longer recording")
    return out


def ensemble_probabilities(plan: _RunPlan, stores: Mapping[str, Any], items: Sequence[Any], *, batch_size: int,
                           grouped: Sequence[str], utterances: Sequence[str] | None = None) -> np.ndarray:
    """Class probabilities [items, classes] of ``items`` (``w2v2ser.train.Item``), averaged over every
    model of the run: each branch reads the store that ``stores`` gives for its training store.

    Args:
        grouped: Speakers normalised with their own statistics (speaker-normalised runs); the
            others get the run's global statistics.
        utterances: Compose those speakers' statistics over these utterances only (None: all).
    """
    check_thread_environment()  # before TensorFlow starts: it aborts the process on a negative count
    import keras

    # Registers the custom layers model.keras files use: those of train/_layers.py and any a head
    # module defines beside its head.
    import w2v2ser.train._heads  # noqa: F401

    from w2v2ser.train import FeatureBatches, Source, resolve_selection
    from w2v2ser.train._dataset import STATS_SUFFIX

    selections = {b.name: resolve_selection(b.selection, specs=stores[b.store].features, alias=b.alias)
                  for b in plan.branches}
    total = np.zeros((len(items), len(plan.classes)), dtype=np.float64)
    for model_path in plan.models:
        try:
            model = keras.saving.load_model(model_path, compile=False)
        except Exception as exc:  # noqa: BLE001 -- keras raises many types for a bad file
            unknown = re.search(r"Could not locate class '(\w+)'", str(exc))
            if unknown:  # an intact file whose layer class this w2v2ser does not register
                raise RunDirError(f"cannot load model {model_path}: it uses the Keras class {unknown[1]!r}, which "
                                  f"this w2v2ser does not define. Predict with the w2v2ser (and any extension "
                                  f"module) that trained the run, importing the module that registers "
                                  f"{unknown[1]!r} first.") from exc
            raise RunDirError(f"cannot load model {model_path} ({type(exc).__name__}: {exc}); the file is "
                              "corrupt or from another Keras version. Retrain this run or pass --run "
                              "to use another one.") from exc
        # A model trained on streamed batches may normalise a branch itself: it takes <branch>_stats.
        takes = {t.name for t in model.inputs}
        sources = [Source(b.name, stores[b.store], selections[b.name],
                          _normaliser(plan, model_path, b, selections[b.name], stores[b.store], grouped, utterances),
                          fold=b.name + STATS_SUFFIX in takes)
                   for b in plan.branches]
        batches = FeatureBatches(items, sources, classes=plan.classes, batch_size=batch_size,
                                 max_frames=plan.max_frames, shuffle=False, cache="off", workers=1)
        with expected_retracing():  # each loaded model traces its own step: by design, not a problem
            probs = np.concatenate([np.asarray(model.predict_on_batch(inputs), dtype=np.float64)
                                    for inputs, _ in batches.iterate()])
        if probs.shape != total.shape:
            raise RunDirError(f"model {model_path} outputs {probs.shape[1]} classes, but the run records "
                              f"{len(plan.classes)} ({', '.join(plan.classes)}); the run dir is inconsistent.")
        total += probs
    return total / total.sum(axis=1, keepdims=True)  # mean over models, renormalised against float32 rounding
