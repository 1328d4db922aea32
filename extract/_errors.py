"""Errors raised by stage 1 input handling (audio files, corpus manifests, extractor configs)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

from w2v2ser.store import W2v2serError

__all__ = ["AudioError", "ExtractorConfigError", "ManifestError", "reject_unknown_keys"]


class AudioError(W2v2serError):
    """An audio file cannot be used: missing, unreadable, not audio, empty, too short or not finite."""


class ManifestError(W2v2serError):
    """A corpus folder or manifest file is malformed (missing columns, duplicate ids, bad paths)."""


class ExtractorConfigError(W2v2serError, ValueError):
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
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ExtractorConfigError(
                f"Unknown option {key!r} in the {what} config.{hint} Valid options: {', '.join(allowed)}."
            )
