"""Stage 2 of w2v2ser: train shallow Keras heads on features read from the feature store.

Typical use::

    from w2v2ser.train import ExperimentConfig, train_experiment
    cfg = ExperimentConfig(stores={"main": "ravdess.zarr"}, features="wav2vec2:all",
                           head="dense", norm="speaker", protocol="ravdess", recipe="official")
    results = train_experiment(cfg, out="runs/ravdess_w2v2_all")

Never imports torch. Keras and TensorFlow load on first use of a head, a layer or a
training run, so configs and protocols are cheap to import.
"""

import importlib
from typing import Any

from w2v2ser._process import prefer_onednn

from ._config import ExperimentConfig
from ._dataset import FeatureBatches, Item, Source, clear_cache
from ._errors import ConfigError, DataError, ProtocolError, SelectionError, TrainError
from ._experiment import RunResult, summarize_runs, train_experiment, train_run
from ._metrics import accuracy, confusion_matrix, format_uar, headline_uar, missing_runs_message, per_class_report, uar
from ._normalisation import NORMALISATIONS, Normaliser, build_normaliser, load_normalisers
from ._planning import PartitionArrays, RunSpec, class_names, partition_arrays, plan_runs
from ._protocols import (
    PROTOCOLS, Fold, Protocol, check_disjoint, get_protocol, protocol_of_corpora, protocol_of_store, select_subset,
)
from ._recipes import RECIPES, Recipe, get_recipe
from ._runfiles import damaged_run_files, list_run_files
from ._selection import ResolvedSelection, Selection, parse_selection, resolve_selection
from ._sweep import ALL_LAYERS_DIR, describe_sweep, summarize_sweep, sweep_configs, sweep_experiment, sweep_run

prefer_onednn()  # TensorFlow loads lazily, after this: see prefer_onednn

__all__ = [
    "ExperimentConfig", "RunSpec", "RunResult", "plan_runs", "train_run", "summarize_runs", "train_experiment",
    "partition_arrays", "PartitionArrays", "class_names", "damaged_run_files", "list_run_files",
    "sweep_configs", "sweep_run", "summarize_sweep", "sweep_experiment", "describe_sweep", "ALL_LAYERS_DIR",
    "Recipe", "RECIPES", "get_recipe",
    "Protocol", "Fold", "PROTOCOLS", "get_protocol", "check_disjoint", "protocol_of_corpora", "protocol_of_store",
    "select_subset",
    "Selection", "ResolvedSelection", "parse_selection", "resolve_selection",
    "Normaliser", "NORMALISATIONS", "build_normaliser", "load_normalisers",
    "FeatureBatches", "Item", "Source", "clear_cache",
    "DenseHead", "LSTMHead", "FusionHead", "HEADS", "make_head", "NotFittedHeadError", "load_model",
    "LayerWeightedAverage", "MaskedMean", "FrameMask",
    "uar", "accuracy", "confusion_matrix", "per_class_report", "headline_uar", "format_uar", "missing_runs_message",
    "TrainError", "ConfigError", "SelectionError", "ProtocolError", "DataError",
]


# Names whose modules import Keras: loaded on first access.
_LAZY = {
    **{name: "w2v2ser.train._heads" for name in ("HEADS", "DenseHead", "FusionHead", "LSTMHead", "make_head",
                                                  "NotFittedHeadError", "load_model")},
    **{name: "w2v2ser.train._layers" for name in ("FrameMask", "LayerWeightedAverage", "MaskedMean")},
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'w2v2ser.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names with the lazily loaded ones, so that tab completion (IPython, Jupyter) offers them."""
    return sorted({*globals(), *__all__})
