"""Stage 1: read corpora, extract speech-encoder (wav2vec 2.0, HuBERT, WavLM, data2vec-audio) /
eGeMAPS / spectrogram features into a store.

Quick use::

    from w2v2ser.extract import build_extractor, extract_corpus, read_corpus

    manifest = read_corpus("ravdess", "data/ravdess")
    extract_corpus(manifest.utterances, "ravdess.zarr",
                   extractors=[build_extractor("egemaps"), build_extractor("spectrogram")])

The speech-encoder names (``Wav2Vec2Config``, ``Wav2Vec2Extractor``, ``HubertExtractor``, ...,
``ModelLoadError``) load torch on first access only, so eGeMAPS and spectrogram extraction never import it.
"""

from __future__ import annotations

import importlib
from typing import Any

from w2v2ser._deps import MissingDependencyError

from ._audio import (
    MIN_SAMPLES,
    NATIVE,
    TARGET_SAMPLE_RATE,
    AudioInfo,
    decode_audio,
    probe_audio,
    read_audio,
    resample_audio,
    sha256_file,
)
from ._corpora import CORPUS_READERS, CorpusKind, read_corpus
from ._egemaps import EgemapsConfig, EgemapsExtractor
from ._errors import AudioError, ExtractorConfigError, ManifestError
from ._iemocap import read_iemocap
from ._manifest import Manifest, read_csv_manifest
from ._pipeline import ExtractionSummary, extract_corpus
from ._ravdess import read_ravdess
from ._registry import (EXTRACTORS, UPSTREAMS, Extractor, UnknownFeatureError, build_extractor, configs_like,
                        features_like)
from ._spectrogram import SpectrogramConfig, SpectrogramExtractor

_LAZY = {
    "Wav2Vec2Config": "w2v2ser.extract._wav2vec2",
    "Wav2Vec2Extractor": "w2v2ser.extract._wav2vec2",
    "HubertConfig": "w2v2ser.extract._wav2vec2",
    "HubertExtractor": "w2v2ser.extract._wav2vec2",
    "WavLMConfig": "w2v2ser.extract._wav2vec2",
    "WavLMExtractor": "w2v2ser.extract._wav2vec2",
    "Data2VecConfig": "w2v2ser.extract._wav2vec2",
    "Data2VecExtractor": "w2v2ser.extract._wav2vec2",
    "FAMILIES": "w2v2ser.extract._source",
    "ModelLoadError": "w2v2ser.extract._source",
    "resolve_model": "w2v2ser.extract._models",
}

__all__ = [
    "EXTRACTORS",
    "FAMILIES",
    "MIN_SAMPLES",
    "NATIVE",
    "TARGET_SAMPLE_RATE",
    "AudioError",
    "AudioInfo",
    "CorpusKind",
    "CORPUS_READERS",
    "Data2VecConfig",
    "Data2VecExtractor",
    "EgemapsConfig",
    "EgemapsExtractor",
    "ExtractionSummary",
    "Extractor",
    "ExtractorConfigError",
    "HubertConfig",
    "HubertExtractor",
    "Manifest",
    "ManifestError",
    "MissingDependencyError",
    "ModelLoadError",
    "SpectrogramConfig",
    "SpectrogramExtractor",
    "UPSTREAMS",
    "UnknownFeatureError",
    "WavLMConfig",
    "WavLMExtractor",
    "Wav2Vec2Config",
    "Wav2Vec2Extractor",
    "build_extractor",
    "configs_like",
    "features_like",
    "decode_audio",
    "extract_corpus",
    "probe_audio",
    "read_audio",
    "read_corpus",
    "read_csv_manifest",
    "read_iemocap",
    "read_ravdess",
    "resample_audio",
    "resolve_model",
    "sha256_file",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'w2v2ser.extract' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names with the lazily loaded ones, so that tab completion (IPython, Jupyter) offers them."""
    return sorted({*globals(), *__all__})
