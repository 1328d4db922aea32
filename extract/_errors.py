"""Errors raised by stage 1 input handling (audio files, corpus manifests, extractor configs)."""

from __future__ import annotations

from w2v2ser._common import ConfigError, DataError

__all__ = ["AudioError", "ExtractorConfigError", "ManifestError"]


class AudioError(DataError):
    """An audio file cannot be used: missing, unreadable, not audio, empty, too short or not finite."""


class ManifestError(DataError):
    """A corpus folder or manifest file is malformed (missing columns, duplicate ids, bad paths)."""


class ExtractorConfigError(ConfigError):
    """An extractor configuration is invalid (unknown key, impossible window/FFT sizes)."""
