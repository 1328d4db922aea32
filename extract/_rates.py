"""Sample rates in stage 1: which rate each extractor gets, and what the store records.

wav2vec2 (and any extractor without a ``sample_rate`` option) gets 16 kHz. eGeMAPS and the
spectrogram get each file at their configured rate, or at its own rate for ``native``. Each
utterance's own rate goes into its ``extra`` under ``audio_sample_rate``; the mode is in the
feature's recorded config. A native spectrogram store takes one rate: that of its first file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from w2v2ser.store import AUDIO_RATE_KEY, FeatureSpec, Utterance

from ._audio import NATIVE, TARGET_SAMPLE_RATE, AudioInfo, DecodedAudio, resampled_length
from ._errors import ExtractorConfigError
from ._models import keep_recorded_location
from ._registry import Extractor

__all__ = [
    "CHANNELS_KEY", "RATE_KEY", "below_native_minimum", "capacity", "configured_rates", "feature_spec_for_store", "resample_for", "run_extractor", "store_rates", "with_rate",
]

#: Key of ``Utterance.extra`` under which each file's own sample rate (Hz, from its header) is stored.
RATE_KEY = AUDIO_RATE_KEY
#: Key of ``Utterance.extra`` under which each file's channel count (from its header) is stored:
#: the file was mixed to mono by averaging its channels.
CHANNELS_KEY = "audio_channels"


def _native(extractor: Extractor) -> bool:
    return getattr(extractor.config, "sample_rate", TARGET_SAMPLE_RATE) == NATIVE


def _wanted_rate(extractor: Extractor, own_rate: int) -> int:
    rate = getattr(extractor.config, "sample_rate", TARGET_SAMPLE_RATE)
    return own_rate if rate == NATIVE else int(rate)


def _one_rate(extractor: Extractor) -> bool:
    """A native extractor whose store must hold files of a single rate (the spectrogram)."""
    return _native(extractor) and getattr(extractor, "native_needs_one_rate", False)


def store_rates(
    utterances: Sequence[Utterance], infos: list[AudioInfo | None], failures: dict[int, str],
    extractors: Sequence[Extractor], stored: Mapping[str, FeatureSpec], *,
    refused: dict[int, dict[str, str]] | None = None, kept: frozenset[int] | set[int] = frozenset(),
) -> dict[str, int]:
    """The rate of each one-rate native feature: recorded in the store, else the first file's.

    Files at another rate become failures that name both rates, and the run goes on: with
    ``refused``, a failure of that feature only (position -> feature -> reason; the file's other
    features are extracted), unless it is every feature of ``extractors`` and the file has none stored
    (``kept``: positions of files with features stored before, which keep them); else, or without
    ``refused``, of the whole file (``infos`` entry set to None: the row is planned without
    regions, as for an unreadable header, and a manifest row pointing at a resampled copy replaces it).
    """
    refused_here: dict[int, dict[str, str]] = {}
    rates: dict[str, int] = {}
    for extractor in extractors:
        if not _one_rate(extractor):
            continue
        spec = stored.get(extractor.name)
        rate = spec.config.get("native_sample_rate") if spec is not None else None
        if rate is None:
            first = next((position for position, info in enumerate(infos) if info is not None), None)
            if first is None:
                continue
            rate = infos[first].sample_rate  # type: ignore[union-attr]
            _check_first_rate(extractor, rate, utterances[first].path, infos)
        rates[extractor.name] = int(rate)
        for position, info in enumerate(infos):
            if info is not None and info.sample_rate != rate:
                refused_here.setdefault(position, {})[extractor.name] = (
                    f"{utterances[position].path} is {info.sample_rate} Hz, but {extractor.name}.sample_rate is "
                    f"native and this store's {extractor.name} runs at {rate} Hz (the rate of its first file): "
                    f"a window at mixed rates gives frames of different lengths. Resample the file to {rate} Hz"
                )
    for position, reasons in refused_here.items():
        if refused is not None and (len(reasons) < len(extractors) or position in kept):
            # Its other features are extracted from this file: a resampled copy would be another file.
            refused[position] = {name: f"{reason} and extract the copy into another store, set {name}.sample_rate "
                                       f"to a rate in Hz, or extract files of this rate into another store."
                                 for name, reason in reasons.items()}
        else:  # nothing of the file is extracted
            name, reason = next(iter(reasons.items()))
            infos[position] = None
            failures[position] = (f"{reason}, set {name}.sample_rate to a rate in Hz, or extract files of this rate "
                                  f"into another store.")
    return rates


def below_native_minimum(utterances: Sequence[Utterance], infos: Sequence[AudioInfo | None],
                         extractors: Sequence[Extractor]) -> dict[str, list[tuple[str, int]]]:
    """(path, rate) of each file below a native extractor's lowest sensible rate
    (``native_min_rate``), by extractor name: valid input, but the user should know."""
    found: dict[str, list[tuple[str, int]]] = {}
    for extractor in extractors:
        lowest = getattr(extractor, "native_min_rate", None)
        if lowest is None or not _native(extractor):
            continue
        low = [(u.path, info.sample_rate) for u, info in zip(utterances, infos)
               if info is not None and info.sample_rate < lowest]
        if low:
            found[extractor.name] = low
    return found


def _check_first_rate(extractor: Extractor, rate: int, path: str, infos: Sequence[AudioInfo | None]) -> None:
    """Refuse, before the store is made, a native rate (that of the first file) at which the
    extractor's window or hop is no whole number of samples: every file of the run would depend
    on one file's rate, and the message of the config alone names no file."""
    try:
        extractor.feature_spec(sample_rate=rate)
    except ExtractorConfigError as error:
        others = Counter(info.sample_rate for info in infos if info is not None and info.sample_rate != rate)
        seen = (f"; the other files are at {', '.join(f'{r} Hz ({n})' for r, n in sorted(others.items()))}"
                if others else "; every file is at that rate")
        name = extractor.name
        raise ExtractorConfigError(
            f"{name}.sample_rate is native, so the store's {name} takes the rate of its first file, {path}: "
            f"{rate} Hz{seen}. At {rate} Hz: {error} Or set {name}.sample_rate to a rate in Hz, e.g. "
            f"{_where_to_set(name, 'sample_rate', 16000)}: every file is then resampled to it. Nothing was extracted."
        ) from None


def _where_to_set(name: str, key: str, value: Any, *, like: bool = False) -> str:
    """An extractor option in each front end's words: ``w2v2ser run`` takes ``--set`` (no ``--option``)."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return (f"in pipeline.yaml `{key}: {text}` under the store's `features: {name}:` (`w2v2ser run --set "
            f"extraction.stores.STORE.features.{name}.{key}={text}`); with `w2v2ser extract`, "
            f"`--option {name}.{key}={text}`" + (" or `--like STORE`" if like else ""))


def feature_spec_for_store(
    extractor: Extractor, rates: Mapping[str, int], stored: Mapping[str, FeatureSpec]
) -> FeatureSpec:
    """The extractor's FeatureSpec, in the form a store written before its newest options has.

    A stored config without an option the extractor now records (``RECORDED_DEFAULTS`` of
    its config class, e.g. ``sample_rate``) was made with that option's old value: the same
    value resumes the store (its recorded config is kept as it is), another is refused. The
    same model weights found at another path resume it too (:func:`keep_recorded_location`).
    """
    if extractor.name in rates:
        spec = extractor.feature_spec(sample_rate=rates[extractor.name])
        spec = replace(spec, config={**spec.config, "native_sample_rate": rates[extractor.name]})
    else:
        spec = extractor.feature_spec()
    old = stored.get(extractor.name)
    if old is not None:
        spec = replace(spec, config=keep_recorded_location(spec.config, old.config))
    defaults = getattr(type(extractor.config), "RECORDED_DEFAULTS", {})
    if old is None or not defaults:
        return spec
    config = dict(spec.config)
    for key, value in defaults.items():
        if key in config and key not in old.config:
            if config[key] != value:
                raise ExtractorConfigError(
                    f"The store's {extractor.name} features were extracted before the {extractor.name}.{key} "
                    f"option existed, i.e. with {key}: {value!r}, but {key}: {config[key]!r} is configured now. "
                    f"Set {extractor.name}.{key}: {value!r} to resume this store "
                    f"({_where_to_set(extractor.name, key, value, like=True)}), or extract into a new store."
                )
            del config[key]
    return replace(spec, config=config)


def capacity(extractor: Extractor, info: AudioInfo | None) -> int:
    """Frames to reserve for one file (0 when its header is unreadable or it is refused)."""
    if info is None:
        return 0
    rate = _wanted_rate(extractor, info.sample_rate)
    samples = resampled_length(info.frames_at_source, info.sample_rate, rate)
    # Only native extractors take the rate: the others count samples at their own fixed rate.
    return extractor.max_frames(samples, sample_rate=rate) if _native(extractor) else extractor.max_frames(samples)


def with_rate(utterance: Utterance, info: AudioInfo | None) -> Utterance:
    """The utterance with its file's own rate and channel count in ``extra`` (unchanged when the
    header is unreadable)."""
    if info is None:
        return utterance
    return replace(utterance, extra={**utterance.extra, RATE_KEY: info.sample_rate, CHANNELS_KEY: info.channels})


def configured_rates(extractors: Sequence[Extractor]) -> list[int | str]:
    """Each extractor's ``sample_rate`` option (16 kHz for those without one): all a decode
    worker process needs to know, so it never gets the extractors themselves."""
    return [getattr(extractor.config, "sample_rate", TARGET_SAMPLE_RATE) for extractor in extractors]


def resample_for(audio: DecodedAudio, rates: Sequence[int | str]) -> None:
    """Compute (and keep) the file at every rate of ``configured_rates``, and no other."""
    for rate in rates:
        audio.at(audio.sample_rate if rate == NATIVE else int(rate))


def run_extractor(extractor: Extractor, audios: Sequence[DecodedAudio]) -> list[np.ndarray]:
    """Run the extractor on every file, each at the rate it asks for."""
    rates = [_wanted_rate(extractor, audio.sample_rate) for audio in audios]
    signals = [audio.at(rate) for audio, rate in zip(audios, rates)]
    return extractor.extract(signals, sample_rates=rates) if _native(extractor) else extractor.extract(signals)
