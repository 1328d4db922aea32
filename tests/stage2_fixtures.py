"""Small random feature stores for stage 2 tests (shared by train and evaluate tests).

``build_store(path, corpus="ravdess"|"iemocap", ...)`` writes a complete store with
StoreWriter: wav2vec2-like [frames, layers, dim] float16 at 50 fps, eGeMAPS-like [frames, 25]
float32 at 100 fps (twice as many frames), spectrogram-like [frames, bins] float32 at 100 fps,
and a RAVDESS-like (Actor_01..Actor_24, 8 raw emotions incl. calm) or IEMOCAP-like
(Ses01F..Ses05M, Session1..5, raw labels neu/hap/exc/ang/sad/fru/xxx) utterance table.
Frames carry a weak label-dependent offset so heads can learn something.
"""

from __future__ import annotations

import contextlib
import random
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from w2v2ser.store import FeatureSpec, StoreWriter, Utterance

RAVDESS_LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
IEMOCAP_LABELS = ("neu", "hap", "exc", "ang", "sad", "fru", "xxx")
W2V2_RATE, EGEMAPS_RATE, SPEC_RATE = 50.0, 100.0, 100.0


@contextlib.contextmanager
def another_thread_drawing_random_numbers() -> Iterator[None]:
    """A thread that keeps drawing from Python's global ``random``, as a Dask worker's threads do."""
    stop = threading.Event()

    def draw() -> None:
        while not stop.is_set():
            random.random()

    thread = threading.Thread(target=draw)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def ravdess_utterances(*, per_actor: int = 4, actors: int = 24, seed: int = 0) -> list[Utterance]:
    """RAVDESS-like rows: speech and song, every raw emotion, actors Actor_01..Actor_NN."""
    rng = np.random.default_rng(seed)
    out = []
    for a in range(1, actors + 1):
        for k in range(per_actor):
            emo = int(rng.integers(1, 9))
            channel = 1 + k % 2
            uid = f"03-{channel:02d}-{emo:02d}-01-{1 + k % 2:02d}-{1 + k // 2:02d}-{a:02d}"
            out.append(Utterance(id=uid, path=f"/fake/Actor_{a:02d}/{uid}.flac", speaker=f"Actor_{a:02d}",
                                 label=RAVDESS_LABELS[emo - 1], gender="female" if a % 2 == 0 else "male",
                                 corpus="ravdess", extra={"vocal_channel": "speech" if channel == 1 else "song"}))
    return out


def iemocap_utterances(*, per_speaker: int = 6, seed: int = 0) -> list[Utterance]:
    """IEMOCAP-like rows: 5 sessions x 2 speakers, raw labels incl. ones the protocol drops."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(1, 6):
        for g in "FM":
            for k in range(per_speaker):
                label = IEMOCAP_LABELS[k % 5] if k < 5 else IEMOCAP_LABELS[int(rng.integers(0, 7))]
                uid = f"Ses{s:02d}{g}_impro0{k % 3 + 1}_{g}{k:03d}"
                out.append(Utterance(id=uid, path=f"/fake/Session{s}/{uid}.wav", speaker=f"Ses{s:02d}{g}",
                                     label=label, session=f"Session{s}",
                                     gender="female" if g == "F" else "male", corpus="iemocap"))
    return out


def feature_specs(*, layers: int = 13, dim: int = 8, egemaps_dim: int = 25, spec_bins: int = 9,
                  features: Sequence[str] = ("wav2vec2", "egemaps", "spectrogram"),
                  config_tag: str = "pretrained",
                  feature_configs: Mapping[str, Mapping[str, Any]] | None = None) -> list[FeatureSpec]:
    """FeatureSpecs of the fake features (config_tag distinguishes e.g. an ASR-finetuned store;
    feature_configs adds keys to a feature's recorded config, e.g. {"egemaps": {"sample_rate": "native"}})."""
    specs = {
        "wav2vec2": FeatureSpec("wav2vec2", dim, layers, W2V2_RATE, "float16", {"model": config_tag}),
        "egemaps": FeatureSpec("egemaps", egemaps_dim, None, EGEMAPS_RATE, "float32", {"set": "eGeMAPSv02"}),
        "spectrogram": FeatureSpec("spectrogram", spec_bins, None, SPEC_RATE, "float32", {"hop_ms": 10}),
    }
    extra = feature_configs or {}
    return [FeatureSpec(**{**vars(specs[f]), "config": {**specs[f].config, **extra.get(f, {})}}) for f in features]


def build_store(path: Path, *, corpus: str = "ravdess", utterances: Sequence[Utterance] | None = None,
                layers: int = 13, dim: int = 8, egemaps_dim: int = 25, spec_bins: int = 9,
                features: Sequence[str] = ("wav2vec2", "egemaps", "spectrogram"),
                min_seconds: float = 0.4, max_seconds: float = 1.6, seed: int = 0,
                config_tag: str = "pretrained", speaker_offset: float = 0.5,
                layer_signal: Sequence[float] | None = None, failures: dict[int, str] | None = None,
                feature_configs: Mapping[str, Mapping[str, Any]] | None = None,
                audio_sha256: Sequence[str] | None = None) -> Path:
    """Write a complete random store and return its path.

    Args:
        path: Store directory to create.
        corpus: "ravdess" or "iemocap" utterance table (ignored when ``utterances`` is given).
        utterances: Explicit rows.
        layers, dim: wav2vec2-like layer count and dimension.
        egemaps_dim, spec_bins: Dimensions of the other features.
        features: Which features to write.
        min_seconds, max_seconds: Utterance duration range.
        seed: Random seed (frames and durations).
        config_tag: Recorded as the wav2vec2 "model" (a second store can differ).
        speaker_offset: Per-speaker mean shift, so speaker and global statistics differ.
        layer_signal: Per wav2vec2 layer, the scale of a label-specific random direction added
            to that layer's frames instead of the scalar label shift (e.g. one 1.0 and zeros
            elsewhere: only that layer carries the label); None = the scalar shift in every layer.
        failures: Reason per position in the utterance table: these rows are recorded as failed
            extractions (no frames), as audio that cannot be decoded is.
        feature_configs: Keys added to features' recorded configs (see :func:`feature_specs`).
        audio_sha256: Each row's recorded audio hash (default: distinct ones).
    """
    if utterances is None:
        utterances = ravdess_utterances() if corpus == "ravdess" else iemocap_utterances()
    rng = np.random.default_rng(seed)
    # Durations depend only on the utterance table, so stores built from it with different seeds
    # (e.g. a pretrained and an ASR-finetuned one) have matching frame counts, as real ones do.
    durations = np.random.default_rng(len(utterances)).uniform(min_seconds, max_seconds, size=len(utterances))
    specs = feature_specs(layers=layers, dim=dim, egemaps_dim=egemaps_dim, spec_bins=spec_bins,
                          features=features, config_tag=config_tag, feature_configs=feature_configs)
    frames = {
        "wav2vec2": [int(d * W2V2_RATE) for d in durations],
        "egemaps": [int(d * EGEMAPS_RATE) + 1 for d in durations],
        "spectrogram": [int(d * SPEC_RATE) for d in durations],
    }
    writer = StoreWriter(path)
    failures = failures or {}
    rows = writer.plan(list(utterances), num_samples=[None if i in failures else int(d * 16000)
                                                      for i, d in enumerate(durations)],
                       features=specs, capacities={s.name: frames[s.name] for s in specs}, failures=failures)
    labels = sorted({u.label for u in utterances})
    speakers = sorted({u.speaker for u in utterances})
    for u, row, d, i in zip(utterances, rows, durations, range(len(utterances))):
        if i in failures:
            continue
        label_shift = 0.3 * labels.index(u.label)
        shift = speaker_offset * speakers.index(u.speaker) + label_shift
        data = {}
        for s in specs:
            shape = (frames[s.name][i], *((s.layers, s.dim) if s.layers else (s.dim,)))
            if s.layers and layer_signal is not None:
                # each label has its own direction; layer l carries it scaled by layer_signal[l]
                pattern = np.random.default_rng(1000 + labels.index(u.label)).standard_normal(s.dim)
                per_layer = np.asarray(layer_signal, dtype=np.float64)[:, None] * pattern[None, :]
                data[s.name] = (rng.standard_normal(shape) + per_layer
                                + speaker_offset * speakers.index(u.speaker)).astype(s.dtype)
                continue
            data[s.name] = (rng.standard_normal(shape) + shift).astype(s.dtype)
        writer.write_utterance(row, data, audio_sha256=audio_sha256[i] if audio_sha256 else f"{i:064x}",
                               duration=float(d))
    writer.finalize()
    return Path(path)
