"""The paper's published UAR values (a cited data file) and how a measured row is matched to them.

A report row is named by model x selection x head (plus normalisation and recipe). The values of
Pepino, Riera & Ferrer (Interspeech 2021), Tables 1 and 2, live in ``data/pepino2021.json`` with
their source; a null value there means the figure has not been entered, never zero.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Mapping

from w2v2ser._common import UPSTREAM_FEATURES

__all__ = ["PaperValue", "paper_source", "paper_value", "row_identity", "verdict"]


@dataclass(frozen=True)
class PaperValue:
    """One published cell: UAR mean and std in percent, and its table; ``checked``: taken from the
    paper itself (False: from another source, named in ``provenance``)."""

    mean: float
    std: float | None
    table: int
    provenance: str = ""
    checked: bool = True


@cache
def _data() -> dict[str, Any]:
    text = resources.files("w2v2ser.evaluate").joinpath("data/pepino2021.json").read_text(encoding="utf-8")
    return json.loads(text)


def paper_source() -> str:
    """The citation of the published values."""
    return str(_data()["source"]["citation"])


def _model_name(model_id: str) -> str:
    """``facebook/wav2vec2-base-960h`` -> ``wav2vec2-base-960h``; a local path -> its folder name."""
    return model_id.rstrip("/").rsplit("/", 1)[-1] if model_id else ""


_LAYER_NAMES = {"local": "local encoder", "contextual": "contextual (last layer)", "all": "all layers"}
_FEATURE_NAMES = {"egemaps": "eGeMAPS", "spectrogram": "spectrogram"}


def row_identity(selection: Any, model_id: str) -> tuple[str, str, str]:
    """(model shown, selection shown, selection key) of one run's main feature selection.

    Args:
        selection: The experiment's ``features`` (``[STORE/]FEATURE[:LAYERS]``).
        model_id: The upstream model (wav2vec2, HuBERT, ...) behind that selection's store ("" when
            the feature has no model or it is unknown).
    """
    if not isinstance(selection, str):
        return "", str(selection), str(selection)
    _, _, rest = selection.rpartition("/")
    feature, _, layers = rest.partition(":")
    if feature in UPSTREAM_FEATURES:
        layers = layers or "all"
        shown = _LAYER_NAMES.get(layers, ("layers " if "-" in layers else "layer ") + layers)
        return _model_name(model_id) or f"{feature} (model unknown)", shown, f"{feature}:{layers}"
    return "—", _FEATURE_NAMES.get(feature, feature), feature


def paper_value(*, model: str, selection: str, head: str, norm: str, corpus: str) -> PaperValue | None:
    """The published value of the matching row and corpus, or None (no such row, or not entered)."""
    for row in _data()["rows"]:
        if (row.get("model") or "—") != model or row["selection"] != selection or row["head"] != head:
            continue
        if row.get("norm") not in (None, norm):
            continue
        cell = (row.get("values") or {}).get(corpus.lower())
        if isinstance(cell, Mapping) and isinstance(cell.get("mean"), (int, float)):
            return PaperValue(float(cell["mean"]), cell.get("std"), int(row["table"]), str(cell.get("from", "")),
                              cell.get("checked", True) is not False)
    return None


def verdict(measured_mean: float, measured_std: float | None, paper: PaperValue) -> tuple[float, bool]:
    """(difference in points, reproduces?): within two standard deviations of the difference."""
    difference = measured_mean - paper.mean
    spread = math.sqrt((measured_std or 0.0) ** 2 + (paper.std or 0.0) ** 2)
    return difference, abs(difference) <= max(2.0 * spread, 1.0)
