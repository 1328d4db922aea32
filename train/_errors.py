"""Exceptions raised by stage 2 (training)."""

from __future__ import annotations

from w2v2ser.store import W2v2serError

__all__ = ["TrainError", "SelectionError", "ConfigError", "ProtocolError", "DataError"]


class TrainError(W2v2serError):
    """Base class of every user-facing training error."""


class SelectionError(TrainError):
    """A feature selection string is malformed or does not match the store."""


class ConfigError(TrainError):
    """An experiment configuration or recipe is invalid."""


class ProtocolError(TrainError):
    """A protocol cannot be applied to the store (labels, speakers, splits)."""


class DataError(TrainError):
    """Stored frames do not match what the selection expects (shape, length, ids)."""
