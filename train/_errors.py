"""Exceptions raised by stage 2 (training); ConfigError and DataError are the shared ones."""

from __future__ import annotations

from w2v2ser._common import ConfigError, DataError, W2v2serError

__all__ = ["TrainError", "SelectionError", "ConfigError", "ProtocolError", "DataError", "FolderBusyError"]


class TrainError(W2v2serError):
    """Base class of every user-facing training error."""


class SelectionError(TrainError, ConfigError):
    """A feature selection string is malformed or does not match the store."""


class ProtocolError(TrainError, DataError):
    """A protocol cannot be applied to the store (labels, speakers, splits)."""


class FolderBusyError(TrainError, ConfigError):
    """An output folder is being written by a running job of another configuration."""
