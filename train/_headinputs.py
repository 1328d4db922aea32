"""The heads' inputs: lists of arrays padded for Keras, checks of frames and labels, the hold-out.

:class:`_ArrayBatches` pads a list (or branch dict) of [frames, ...] arrays once and feeds them
like FeatureBatches; the checks refuse frames and labels that would fail deep inside Keras or
numpy, or train silently to NaN; :func:`_hold_out` holds out the early-stopping utterances.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ._errors import DataError
from ._tfdata import padded_dataset

__all__ = ["_labelled_pair", "_ArrayBatches", "_count_utterances", "_check_frames", "_label_kind",
           "_check_label_kinds", "_hold_out", "_shapes_text", "_frame_shapes", "_branch_lists"]


def _labelled_pair(data: Any) -> bool:
    """Whether ``validation_data`` is (arrays, labels): a 2-tuple, or a 2-list whose second item holds
    one scalar label per item of the first (as Keras takes it), not a list of two utterances' frames."""
    if isinstance(data, tuple):
        return len(data) == 2
    if not (isinstance(data, list) and len(data) == 2):
        return False
    try:
        return len(data[1]) == len(data[0]) and all(np.ndim(label) == 0 for label in data[1])
    except TypeError:
        return False


class _ArrayBatches:
    """In-memory counterpart of FeatureBatches for lists of [frames, ...] arrays: padded once to the
    longest utterance and fed with static shapes (``padded_dataset``), like the store path."""

    def __init__(self, x: Any, y: Sequence[int] | None, *, batch_size: int, shuffle: bool, seed: int) -> None:
        arrays = {"main": list(x)} if not isinstance(x, Mapping) else {k: list(v) for k, v in x.items()}
        n = {len(v) for v in arrays.values()}
        if len(n) != 1:
            raise DataError(f"branches have different numbers of utterances: { {k: len(v) for k, v in arrays.items()} }")
        self.n = n.pop()
        self.y = np.zeros(self.n, np.int32) if y is None else np.asarray(y, dtype=np.int32)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        if self.n == 0:
            raise DataError("no utterances given; expected a list of [frames, ...] arrays")
        first = {k: np.asarray(v[0]) for k, v in arrays.items()}
        self.frame_shapes = {k: tuple(a.shape[1:]) for k, a in first.items()}
        _check_frames(arrays, self.frame_shapes)
        # float16 only when every utterance of the branch is: a float32 utterance cast into a float16
        # buffer (because utterance 0 happened to be float16) overflowed to inf and trained to NaN.
        self.dtypes = {k: np.dtype(np.float16) if all(np.asarray(a).dtype == np.float16 for a in arrays[k])
                       else np.dtype(np.float32) for k in first}
        self.lengths = np.array([min(len(arrays[k][i]) for k in arrays) for i in range(self.n)], dtype=np.int64)
        t = max(1, int(self.lengths.max()))
        self.inputs: dict[str, np.ndarray] = {}
        for k, arrs in arrays.items():
            out = np.zeros((self.n, t, *self.frame_shapes[k]), self.dtypes[k])
            for i, a in enumerate(arrs):
                out[i, :self.lengths[i]] = np.asarray(a)[:self.lengths[i]]
            self.inputs[k] = out
        self.inputs["mask"] = (np.arange(t)[None, :] < self.lengths[:, None]).astype(np.float32)
        self.input_seconds = 0.0

    def as_tf_dataset(self) -> Any:
        return padded_dataset(self.inputs, self.y, self.lengths, batch_size=self.batch_size, shuffle=self.shuffle,
                              seed=self.seed)


def _branch_lists(x: Any) -> Any:
    """A list of per-utterance mappings {branch: frames} as one mapping branch -> list of frames, anything
    else as given: scikit-learn's splitters (GridSearchCV, cross_val_score) index a list, not a dict of lists."""
    if not (isinstance(x, (list, tuple)) and x and any(isinstance(u, Mapping) for u in x)):
        return x
    # a list mixing dicts and arrays failed as "utterance 0 has shape (); expected a [frames, features] array"
    i = next((k for k, u in enumerate(x) if not isinstance(u, Mapping)), None)
    if i is not None:
        j = next(k for k, u in enumerate(x) if isinstance(u, Mapping))
        raise DataError(f"utterance {i} is a {type(x[i]).__name__}, but utterance {j} is a dict of branches; give "
                        f"every utterance as a dict {{branch: frames}} (e.g. {{'main': frames, 'fusion': frames}})")
    branches = sorted(x[0])
    for i, utterance in enumerate(x):
        if sorted(utterance) != branches:
            raise DataError(f"utterance {i} has the branches {sorted(utterance)}; utterance 0 has {branches}. Give "
                            f"every utterance the same branches (e.g. {{'main': frames, 'fusion': frames}})")
    return {b: [u[b] for u in x] for b in branches}


def _count_utterances(x: Any) -> int:
    """Utterances in a list of arrays, or in the first branch of a dict branch -> list."""
    if isinstance(x, Mapping):
        return len(next(iter(x.values()))) if x else 0
    return len(x)


def _check_frames(arrays: Mapping[str, Sequence[Any]], frame_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Every utterance is [frames, *frame shape] of finite values: a NaN trained to a NaN loss
    without a word, and another width failed deep in numpy ("could not broadcast")."""
    for branch, arrs in arrays.items():
        where = "" if branch == "main" else f" of branch {branch!r}"
        for i, a in enumerate(arrs):
            a = np.asarray(a)
            if a.ndim < 2:
                raise DataError(f"utterance {i}{where} has shape {a.shape}; expected a [frames, features] array "
                                f"(or [frames, layers, width]) per utterance")
            if a.shape[1:] != frame_shapes[branch]:
                raise DataError(f"utterance {i}{where} has shape {a.shape}; expected [frames, "
                                f"{', '.join(map(str, frame_shapes[branch]))}] like utterance 0")
            if a.dtype.kind not in "fiub":
                raise DataError(f"utterance {i}{where} holds {a.dtype} values; expected numbers")
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise DataError(f"utterance {i}{where} holds {int((~np.isfinite(a)).sum())} NaN or infinite "
                                f"values; every frame must be finite (impute or drop them first)")


def _label_kind(labels: np.ndarray) -> str:
    """"string" or "number": the kind of a label array (as :func:`_check_label_kinds` tells them apart)."""
    if labels.dtype.kind in "USO":
        return "string" if isinstance(labels.ravel()[0], (str, bytes)) else "number"
    return "number"


def _check_label_kinds(y: Any, head: str, call: str = "fit(x, y)") -> None:
    """Labels of one kind, none missing (scikit-learn's classifiers refuse the same): numpy turned
    ``["a", 1]`` into the strings "a", "1" (so predict gave '1'), and None failed in np.unique.
    ``call`` names the method and argument in the message."""
    kinds: dict[str, Any] = {}
    for i, value in enumerate(np.asarray(y, dtype=object).ravel()):
        # float32 NaN is no float; pandas' NA is "missing" by its own type, not by NaN
        if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)) \
                or type(value).__name__ in ("NAType", "NaTType"):
            raise DataError(f"{head}.{call}: y[{i}] is {value!r}, a missing label; give every utterance a "
                            f"label, or leave out the unlabelled ones")
        kinds.setdefault("string" if isinstance(value, (str, bytes)) else "number", value)
    if len(kinds) > 1:
        raise DataError(f"{head}.{call}: y mixes string and number labels (e.g. {kinds['string']!r} and "
                        f"{kinds['number']!r}); give labels of one type (e.g. all strings)")


def _hold_out(x: Any, y: np.ndarray, fraction: float, seed: int) -> tuple[Any, np.ndarray, tuple[Any, np.ndarray]]:
    """Hold-out of ``fraction`` of the utterances for early stopping, stratified where it can be.

    Stratifying needs at least two utterances of every class and at least one per class on each
    side; a small training fold (one speaker of RAVDESS in a GridSearchCV fold: 60 utterances, 8
    classes, 6 held out) cannot have that, and gets a plain random hold-out instead of an error.
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    counts = np.bincount(y)
    n_classes = int((counts > 0).sum())
    n_held = math.ceil(fraction * len(y))  # how train_test_split rounds a float test_size
    if n_held >= len(y):
        raise DataError(f"validation_fraction={fraction} of {len(y)} training utterances holds out {n_held}, "
                        f"leaving none to train on; give a smaller fraction or validation_data")
    stratifiable = counts[counts > 0].min() >= 2 and min(n_held, len(y) - n_held) >= n_classes
    strat = y if stratifiable else None
    fit_idx, val_idx = train_test_split(idx, test_size=fraction, random_state=seed, stratify=strat)
    take = (lambda v, ii: [v[i] for i in ii])
    if isinstance(x, Mapping):
        return ({k: take(v, fit_idx) for k, v in x.items()}, y[fit_idx],
                ({k: take(v, val_idx) for k, v in x.items()}, y[val_idx]))
    return take(x, fit_idx), y[fit_idx], (take(x, val_idx), y[val_idx])


def _shapes_text(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """``[frames, 13, 768]`` (one branch) or ``main [frames, 13, 768], fusion [frames, 25]``."""
    text = {k: f"[frames, {', '.join(map(str, v))}]" for k, v in shapes.items()}
    return text["main"] if list(text) == ["main"] else ", ".join(f"{k} {v}" for k, v in text.items())


def _frame_shapes(data: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Branch -> (frame shape, dtype fed to the model)."""
    dtypes = getattr(data, "dtypes", {})
    return {k: (shape, dtypes.get(k, np.dtype(np.float32))) for k, shape in data.frame_shapes.items()}
