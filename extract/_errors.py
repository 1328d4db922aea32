"""Errors raised by stage 1 input handling (audio files, corpus manifests, extractor configs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from w2v2ser._common import ConfigError, DataError, did_you_mean

__all__ = ["AudioError", "ExtractorConfigError", "ManifestError", "reject_unknown_keys"]


class AudioError(DataError):
    """An audio file cannot be used: missing, unreadable, not audio, empty, too short or not finite."""


class ManifestError(DataError):
    """A corpus folder or manifest file is malformed (missing columns, duplicate ids, bad paths)."""


class ExtractorConfigError(ConfigError):
    """An extractor configuration is invalid (unknown key, impossible window/FFT sizes)."""


def reject_unknown_keys(data: object, allowed: Sequence[str], *, what: str) -> None:
    """Raise ExtractorConfigError unless ``data`` is a mapping whose keys are all in ``allowed``.

    Args:
        data: The mapping given to a config's ``from_dict``.
        allowed: Field names the config accepts.
        what: Name of the config section for the message, e.g. ``"egemaps"``.
    """
    if not isinstance(data, Mapping):
        raise ExtractorConfigError(
            f"The {what} config must be a mapping of option names to values, got {type(data).__name__}: {data!r}."
        )
    for key in data:
        if key not in allowed:
            raise ExtractorConfigError(
                f"Unknown option {key!r} in the {what} config.{did_you_mean(key, allowed)} "
                f"Valid options: {', '.join(allowed)}."
            )
