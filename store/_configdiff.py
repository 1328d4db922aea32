"""Comparison of the feature specs a store records with those an extraction is given: which
fields are compared, which config keys change no stored value, and each differing leaf."""

from __future__ import annotations

import json
from typing import Any, Mapping

_COMPARED = ("dim", "layers", "frame_rate", "dtype", "config")


# Keys of a speech encoder's recorded config that change no stored value: its ``runtime`` part
# (device or batch size: a store may be resumed on another machine) and ``max_seconds``, a guard
# that only turns longer files into failures, so a rerun may raise it to extract them.
_NOT_VALUES = ("runtime", "max_seconds")


def _comparable(value: Any) -> Any:
    """A config without the keys that change no stored value (``_NOT_VALUES``)."""
    if isinstance(value, Mapping) and "runtime" in value:
        return {k: v for k, v in value.items() if k not in _NOT_VALUES}
    return value


_SHOWN_DIFFERENCES = 6


def _differences(stored: Any, given: Any, key: str) -> list[str]:
    """``key.path: store has X, given Y`` for each differing leaf of two JSON-like values."""
    if isinstance(stored, Mapping) and isinstance(given, Mapping):
        return [line for k in sorted(set(stored) | set(given), key=str)
                for line in _differences(stored.get(k), given.get(k), f"{key}.{k}")]
    if json.dumps(stored, sort_keys=True, default=str) == json.dumps(given, sort_keys=True, default=str):
        return []
    return [f"{key}: store has {stored!r}, given {given!r}"]
