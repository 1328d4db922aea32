"""Exceptions raised by :mod:`w2v2ser.evaluate`."""

from __future__ import annotations

from w2v2ser._common import EXIT_INPUT, W2v2serError

__all__ = ["EvaluateError", "RunDirError", "PredictError"]


class EvaluateError(W2v2serError):
    """Base of every error raised while reporting or predicting (bad run dirs, audio, arguments)."""

    exit_code = EXIT_INPUT


class RunDirError(EvaluateError):
    """A run directory is missing, unreadable or lacks what the operation needs."""


class PredictError(EvaluateError):
    """Prediction could not run (feature extraction failed, model missing, bad arguments)."""
