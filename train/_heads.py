"""Classification heads of Figure 1 (Pepino et al., 2021) as scikit-learn estimators.

Each head is a ``sklearn.base.BaseEstimator`` and ``ClassifierMixin``: hyperparameters go to
``__init__`` (so ``get_params``/``set_params``/``clone`` and ``GridSearchCV`` work), ``fit`` returns
self, learned state ends in ``_`` (``model_``, ``history_``, ``layer_weights_``, ``classes_``), and
``score`` is the UAR (balanced accuracy), the paper's metric. Inputs are a :class:`FeatureBatches`
(streaming from the store) or, in memory, a list of [frames, ...] arrays (a dict branch -> list for
the fusion head) plus labels.

* Dense:  [weighted average of layers] -> Dense(128, relu) -> Dropout(0.2) -> Dense(128, relu)
  -> Dropout(0.2), applied per frame -> masked mean over time -> softmax.
* LSTM:   the second pointwise block replaced by LSTM(128) over the masked frames (final state).
* Fusion: a second branch (eGeMAPS) through its own first Dense block; both first-block
  outputs are concatenated per frame, then the second block, masked mean and softmax.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from typing import Annotated, Any, Literal, Mapping, Optional, Sequence, Union

import keras
import numpy as np
from pydantic import Field, Strict
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

from w2v2ser._common import check_stop, first_few
from w2v2ser._process import caller_random_kept
from w2v2ser._native_logs import expected_retracing
from w2v2ser._schema import StrictModel, validate

from ._dataset import STATS_SUFFIX
from ._errors import ConfigError, DataError
from ._head_names import HEAD_BRANCHES
from ._headinputs import (_ArrayBatches, _branch_lists, _check_label_kinds, _count_utterances, _frame_shapes, _hold_out,
                          _label_kind, _labelled_pair, _shapes_text)
from ._layers import FrameMask, LayerWeightedAverage, MaskedMean, seed_draws, seeded_dense
from ._recipes import Recipe, get_recipe, plain_scalar

__all__ = ["DenseHead", "LSTMHead", "FusionHead", "HEADS", "make_head", "EpochProgress", "NotFittedHeadError",
           "load_model"]


class NotFittedHeadError(ConfigError, NotFittedError):
    """A head used before ``fit``: a w2v2ser ConfigError that scikit-learn's tools also recognise."""


class _Timing(keras.callbacks.Callback):
    """Per-epoch wall time, time spent reading input, and time in training steps."""

    def __init__(self, datasets: Sequence[Any]) -> None:
        super().__init__()
        self.datasets = [d for d in datasets if d is not None]
        self.epoch_seconds: list[float] = []
        self.input_seconds: list[float] = []
        self.compute_seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._t0 = time.perf_counter()
        self._in0 = sum(d.input_seconds for d in self.datasets)
        self._compute = 0.0

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self._b0 = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._compute += time.perf_counter() - self._b0
        check_stop()  # a Ctrl-C lost inside TensorFlow stops the fit here (this hook runs anyway)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._t0)
        self.input_seconds.append(sum(d.input_seconds for d in self.datasets) - self._in0)
        self.compute_seconds.append(self._compute)


class _StopOnNaN(keras.callbacks.Callback):
    """Stop at the first batch whose training loss is NaN or infinite (Keras' TerminateOnNaN,
    without its print): ``fit`` then raises a DataError instead of returning a NaN model."""

    def __init__(self) -> None:
        super().__init__()
        self.where: tuple[int, int] | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.where is None:
            self.where = (self._epoch + 1, batch + 1)
            self.model.stop_training = True


class EpochProgress(keras.callbacks.Callback):
    """A progress bar over a fit's epochs (w2v2ser._common.progress_bar), with the last losses:
    a run of the paper's recipe can train for minutes before its summary line."""

    def __init__(self, desc: str) -> None:
        super().__init__()
        self.desc = desc
        self._bar: Any = None

    def on_train_begin(self, logs: Any = None) -> None:
        from w2v2ser._common import progress_bar

        self._bar = progress_bar(desc=self.desc, unit="epoch", total=self.params.get("epochs"), leave=False)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        logs = logs or {}
        self._bar.set_postfix({k: f"{logs[k]:.4f}" for k in ("loss", "val_loss") if k in logs}, refresh=False)
        self._bar.update(1)

    def on_train_end(self, logs: Any = None) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _HeadParams(StrictModel):
    """The hyperparameters ``fit`` checks (bounds as ExperimentConfig's): Keras refused a string
    ``units``, ``units=0`` or ``dropout=1.5`` with its own ValueError, only when building the graph."""

    units: Annotated[int, Field(ge=1)]
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    seed: Optional[Annotated[int, Field(ge=0)]]
    verbose: Union[Literal["auto"], Annotated[int, Field(ge=0, le=2)]]  # Keras fit's values
    run_eagerly: bool  # run_eagerly="no" is truthy: it ran eagerly


def _plain_number(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (seeds from ``np.arange``, GridSearchCV grids of numpy values)."""
    if isinstance(value, np.bool_):  # run_eagerly=np.True_ was refused: "expected a valid boolean, got bool"
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    return float(value) if isinstance(value, np.floating) else value


def _seeded_random_kept(fit: Any) -> Any:
    """Decorate ``fit``: a seeded fit gives the caller's np.random and random streams back (seeding
    reseeds them). An unseeded one leaves them drawn on: its layers take their seeds from them, and
    rewinding made every unseeded fit in a process the same model."""
    @functools.wraps(fit)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        seeded = getattr(self, "seed", None) is not None
        with caller_random_kept() if seeded else contextlib.nullcontext():
            return fit(self, *args, **kwargs)
    return wrapper


def _unfitted_if_failed(fit: Any) -> Any:
    """Decorate ``fit``: it starts unfitted, and one that raises leaves the head unfitted. A refit that
    failed after taking its labels kept the earlier fit's ``model_`` beside its own ``classes_``, so
    ``predict`` named the new classes from the old model's outputs."""
    @functools.wraps(fit)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        self._forget_fit()
        try:
            return fit(self, *args, **kwargs)
        except BaseException:  # KeyboardInterrupt too (Ctrl-C, a stop signal): it kept a partly trained model_
            self._forget_fit()
            raise
    return wrapper


class _BaseHead(ClassifierMixin, BaseEstimator):
    """Shared fit/predict logic; subclasses build the Keras graph (hyperparameters: ``__init__``)."""

    _BRANCHES: tuple[str, ...] = ("main",)  # the input branches the head's graph reads

    def __init__(self, *, units: int = 128, dropout: float = 0.2, recipe: Recipe | str = "paper",
                 classes: Sequence[str] | None = None, seed: int | None = None,
                 validation_fraction: float | None = None, verbose: int = 0, run_eagerly: bool = False) -> None:
        """Store the hyperparameters as given (``fit`` checks them; ``clone``/``set_params`` keep them).

        Here, not on the private base class, so that ``help(DenseHead)`` and ``DenseHead?`` show them.

        Args:
            units: Width of the Dense (and LSTM) blocks.
            dropout: Dropout rate after each pointwise block.
            recipe: "paper", "official" or a :class:`Recipe` (optimiser, batch size, epochs, patience).
            classes: Class names (a list, tuple, array or pandas Index; not a set), the order of the
                outputs; ``predict`` returns them. Labels (``fit``, ``score``) are these names, as in
                scikit-learn (then every scikit-learn scorer and ``cross_val_predict`` compare
                ``predict``'s names with them), or integer indices into the names when these are not
                numbers (FeatureBatches give indices). None: the classes are the sorted distinct
                labels seen by ``fit`` (any type, as in scikit-learn).
            seed: Seed of weights, dropout and shuffling (None: not seeded).
            validation_fraction: Without ``validation_data``, hold out this fraction of the training
                utterances (stratified, drawn with ``seed``) for early stopping; None trains
                ``recipe.max_epochs`` epochs without early stopping. Arrays only: a fit on
                FeatureBatches without ``validation_data`` refuses it.
            verbose: Keras fit verbosity.
            run_eagerly: Skip tf.function tracing (tests and tiny data).
        """
        self.units = units
        self.dropout = dropout
        self.recipe = recipe
        self.classes = classes
        self.seed = seed
        self.validation_fraction = validation_fraction
        self.verbose = verbose
        self.run_eagerly = run_eagerly

    # -- graph -------------------------------------------------------------------------------
    def _branch_input(self, branch: str, shape: tuple[int, ...], dtype: Any = "float32",
                      folded: bool = False) -> tuple[list[Any], Any]:
        # A float16 input stays float16 into the graph: the layer average / first Dense cast it.
        inp = [keras.Input(shape=(None, *shape), name=branch, dtype=str(np.dtype(dtype)))]
        if folded:  # frames as stored, normalised by the layer average with each utterance's statistics
            inp.append(keras.Input(shape=(2, *shape), name=branch + STATS_SUFFIX, dtype="float32"))
        x = LayerWeightedAverage(name=f"{branch}_layer_weights")(*inp) if len(shape) == 2 else inp[0]
        return inp, x

    def _block(self, x: Any, name: str) -> Any:
        x = seeded_dense(self._params.units, "relu", f"{name}_dense", self._draw)(x)
        # A dropout layer of rate 0 has no seed generator (and Keras draws no seed for it).
        return keras.layers.Dropout(self._params.dropout, name=f"{name}_dropout",
                                    seed=self._draw() if self._params.dropout > 0 else None)(x)

    def _body(self, branches: dict[str, Any], mask: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _build(self, shapes: Mapping[str, tuple[tuple[int, ...], Any]], n_classes: int, *,
               folded: Sequence[str] = ()) -> keras.Model:
        """The Keras model; ``folded`` branches take ``<branch>_stats`` too (:class:`Source` ``fold``)."""
        self._params = self._hyperparameters()
        self._draw = seed_draws(self._params.seed)  # every random layer gets its seed from here, in build order
        try:
            inputs, branches = {}, {}
            for branch, (shape, dtype) in shapes.items():
                branch_inputs, branches[branch] = self._branch_input(branch, shape, dtype, branch in folded)
                inputs.update(zip([branch, branch + STATS_SUFFIX], branch_inputs))
            inputs["mask"] = keras.Input(shape=(None,), name="mask")
            pooled = self._body(branches, inputs["mask"])
            out = seeded_dense(n_classes, "softmax", "classifier", self._draw)(pooled)
            return keras.Model(inputs=inputs, outputs=out, name=type(self).__name__)
        finally:
            del self._draw, self._params  # a closure: the fitted estimator stays picklable

    # -- sklearn-like API ----------------------------------------------------------------------
    def _hyperparameters(self) -> _HeadParams:
        """units, dropout, seed, verbose and run_eagerly, checked here, not in __init__: scikit-learn's clone and
        set_params store them unchanged."""
        return validate(_HeadParams, {k: _plain_number(getattr(self, k))
                                      for k in ("units", "dropout", "seed", "verbose", "run_eagerly")},
                        where=type(self).__name__)

    def _given_classes(self) -> list[Any] | None:
        """``classes`` as a list (a tuple, or another head's ``classes_`` array, too), or None when unset."""
        if self.classes is None:
            return None
        name = type(self).__name__
        # a list, tuple, array or pandas Index; a set has hash order (index k named another class in another
        # process) and an iterator was used up by the first of fit's two reads
        ordered = hasattr(self.classes, "__getitem__") and hasattr(self.classes, "__len__") \
            and not isinstance(self.classes, (str, bytes, Mapping)) \
            and (not isinstance(self.classes, np.ndarray) or self.classes.ndim == 1)
        if not ordered:
            raise ConfigError(f"{name}.classes: expected a list of class names, or None; got {self.classes!r}"
                              + ("" if isinstance(self.classes, (str, bytes)) else
                                 f" ({type(self.classes).__name__}: pass a list, in the order of the class indices)"))
        classes = [plain_scalar(c) for c in self.classes]  # np.str_ of an array as the str it holds
        repeated = sorted({str(c) for c in classes if classes.count(c) > 1})
        if not classes or repeated:  # [] was taken as None; a repeated name made two outputs one class
            raise ConfigError(f"{name}.classes: expected distinct class names, or None (the labels' sorted distinct "
                              f"values); got {classes!r}" + (f", which repeats {repeated}" if repeated else ""))
        return classes

    def _resolved_recipe(self) -> Recipe:
        if isinstance(self.recipe, str):
            return get_recipe(self.recipe)
        if not isinstance(self.recipe, Recipe):  # a mapping failed as "'dict' object has no attribute 'batch_size'"
            raise ConfigError(f"{type(self).__name__}.recipe: expected 'paper', 'official' or a Recipe; got "
                              f"{self.recipe!r} ({type(self.recipe).__name__}). For other hyperparameters, pass "
                              f"get_recipe('paper', {{'max_epochs': 20, ...}})")
        return self.recipe

    def _data(self, x: Any, y: Any, *, shuffle: bool, seed: int) -> Any:
        if hasattr(x, "as_tf_dataset"):
            return x
        return _ArrayBatches(x, y, batch_size=self._resolved_recipe().batch_size, shuffle=shuffle, seed=seed)

    def _encode(self, y: Any, *, unseen: int | None = None, call: str = "fit(x, y)") -> np.ndarray:
        """Labels -> integer indices into ``classes_`` (names or indices when ``classes`` is set).

        Labels not in ``classes_`` raise, or become ``unseen`` when given (scoring: never predicted).
        """
        # every element's kind: [1, "a"] became the strings '1', 'a', so 1 matched a class '1' silently
        _check_label_kinds(y, type(self).__name__, call)
        y = np.asarray(y)
        if y.dtype.kind == "O" and y.size and _label_kind(y) == "number":
            y = np.array(y.tolist())  # Python ints of an object array (a pandas Series): the numbers they are
        classes = self._given_classes()
        if classes is not None:
            return self._given_indices(y, classes, call)
        if y.size and _label_kind(y) != _label_kind(self.classes_):
            # integer labels against class names matched nothing: score() gave 0.0 with only sklearn's warning
            hint = ("class names, as predict returns them (class indices k of FeatureBatches: classes_[k])"
                    if _label_kind(self.classes_) == "string" else
                    "the numbers fit was given, as predict returns them (or fit the head on the names)")
            raise DataError(f"{type(self).__name__}: got {_label_kind(y)} labels (e.g. {plain_scalar(y.ravel()[0])!r}) "
                            f"but the classes_ are {_label_kind(self.classes_)}s {self.classes_.tolist()}; give "
                            f"labels as {hint}")
        # classes_ need not be sorted (a FeatureBatches fit takes its classes in their own order):
        # searchsorted on the unsorted array gave wrong indices, so a wrong score without a word
        order = np.argsort(self.classes_, kind="stable")
        unknown = ~np.isin(y, self.classes_)
        if unknown.any() and unseen is not None:
            out = np.full(len(y), unseen, dtype=np.int32)
            out[~unknown] = order[np.searchsorted(self.classes_[order], y[~unknown])]
            return out
        if unknown.any():
            raise DataError(f"labels {sorted(set(y[unknown].tolist()))[:5]} do not occur in the training labels "
                            f"{self.classes_.tolist()}; every class must be seen by fit")
        return order[np.searchsorted(self.classes_[order], y)].astype(np.int32)

    def _given_indices(self, y: np.ndarray, classes: list[Any], call: str) -> np.ndarray:
        """Labels -> indices into the given ``classes``: their names (as scikit-learn takes labels, so that
        predict's names compare equal to them), or integer indices when the names are not numbers."""
        name, n = type(self).__name__, len(classes)
        if not y.size:
            return y.astype(np.int32)
        numbered = all(isinstance(c, (int, float, np.number)) and not isinstance(c, (bool, np.bool_)) for c in classes)
        lookup = {c: k for k, c in enumerate(classes)}  # plain scalars (_given_classes)
        labels = [plain_scalar(v) for v in y.ravel()]
        # a name is looked up among names of its own kind: the label 1 never matched a class '1'
        named = numbered == (_label_kind(y) == "number") and all(v in lookup for v in labels)
        indexed = y.dtype.kind in "iu" and y.min() >= 0 and y.max() < n
        if named and indexed and numbered and any(classes[k] != k for k in np.unique(y)):
            raise DataError(f"{name}.{call}: the labels {np.unique(y)[:5].tolist()} are both names and indices of "
                            f"classes={classes!r}, which name other classes; give labels as class names and classes "
                            f"as strings (e.g. {[str(c) for c in classes]!r}), or leave classes unset")
        if named:
            return np.array([lookup[v] for v in labels], dtype=np.int32)
        if indexed and not numbered:
            return y.astype(np.int32)
        if numbered or _label_kind(y) == "string":
            unknown = [v for v in labels if v not in lookup]
            raise DataError(f"{name}.{call}: got the label {unknown[0]!r}, which is not one of classes={classes!r}; "
                            f"give labels as those class names"
                            + (" (class names that are numbers take no indices)" if numbered
                               else f" (or as integer indices 0..{n - 1} into them)"))
        bad = y[0] if y.dtype.kind not in "iu" else y[(y < 0) | (y >= n)][0]
        raise DataError(f"{name}(classes={classes!r}) takes labels as class names or as integer indices "
                        f"0..{n - 1} into classes; got {plain_scalar(bad)!r}. Give the names, map the labels to "
                        f"indices, or leave classes unset to take any labels (classes_ are then their sorted "
                        f"distinct values)")

    def _forget_fit(self) -> None:
        """Drop what a fit learned, so that the head is unfitted (``predict`` raises NotFittedHeadError)."""
        for name in ("model_", "history_", "layer_weights_", "classes_", "_stopper"):
            self.__dict__.pop(name, None)

    @_unfitted_if_failed
    @_seeded_random_kept
    def fit(self, x: Any, y: Sequence[Any] | None = None, *, validation_data: Any = None,
            callbacks: Sequence[keras.callbacks.Callback] = ()) -> "_BaseHead":
        """Train on ``x`` with early stopping on ``validation_data`` (or a ``validation_fraction`` hold-out).

        Args:
            x: FeatureBatches, or a list of [frames, ...] arrays (for fusion: a dict branch -> list, or a
                list of one dict branch -> frames per utterance, which GridSearchCV can split).
            y: Labels when ``x`` holds arrays: names of ``classes`` (or integer indices into them)
                when that is set, else any labels (``classes_`` = their sorted distinct values).
            validation_data: FeatureBatches, or a tuple (arrays, labels).
            callbacks: Extra Keras callbacks.

        Returns:
            self, with ``model_``, ``history_``, ``layer_weights_``, ``classes_`` set.
        """
        params = self._hyperparameters()  # first: a bad value fails before the data is read
        recipe = self._resolved_recipe()
        given = self._given_classes()
        if params.seed is not None:
            keras.utils.set_random_seed(params.seed)
        seed = 0 if params.seed is None else params.seed
        streaming = hasattr(x, "as_tf_dataset")
        empty: list[str] = []  # utterances without frames, of x and of validation_data: one warning below
        val_empty: list[str] = []
        if streaming:
            if y is not None:  # it was dropped without a word
                raise ConfigError(f"{type(self).__name__}.fit(x, y): x is FeatureBatches, which carry their own labels "
                                  f"(Item.label); call fit(x) without y")
            if self.validation_fraction and validation_data is None:  # it trained max_epochs, no early stopping
                raise ConfigError(f"{type(self).__name__}(validation_fraction={self.validation_fraction!r}) holds out "
                                  f"part of in-memory arrays, not of FeatureBatches; give validation_data= "
                                  f"FeatureBatches of other utterances, or validation_fraction=None")
            if given is not None and given != list(x.classes):
                # the batches' labels index their own classes: predict named them after the head's
                raise ConfigError(f"{type(self).__name__}(classes={given!r}) was given FeatureBatches of the classes "
                                  f"{list(x.classes)}, whose labels index those; give the head the same classes, in "
                                  f"the same order, or leave classes unset (it then takes the batches')")
            self.classes_ = np.array(list(x.classes))
            empty = _empty_utterances(x)
            given = getattr(validation_data, "classes", None)
            if given is not None and list(given) != list(x.classes):
                # their labels are indices into their own classes: early stopping scored the wrong ones
                raise ConfigError(f"{type(self).__name__}.fit: the training batches' classes are {list(x.classes)} "
                                  f"but the validation batches' {list(given)}; build both FeatureBatches with the "
                                  f"same classes, in the same order")
        else:
            if y is None:
                raise ConfigError(f"{type(self).__name__}.fit(x, y) needs labels y when x holds arrays")
            x = _branch_lists(x)
            n_utterances = _count_utterances(x)
            if n_utterances == 0 and len(y) == 0:
                raise DataError(f"{type(self).__name__}.fit(x, y): no utterances given; expected a list of "
                                f"[frames, ...] arrays and one label per utterance")
            if len(y) != n_utterances:
                raise DataError(f"{type(self).__name__}.fit(x, y): x holds {n_utterances} utterances but y "
                                f"{len(y)} labels; expected one label per utterance")
            _check_label_kinds(y, type(self).__name__)
            labels = np.unique(np.asarray(y))
            if len(labels) < 2:
                raise DataError(f"{type(self).__name__}.fit(x, y): every label in y is {labels[:1].tolist()[0]!r}; "
                                f"a classifier needs labels of at least two classes")
            self.classes_ = np.array(given) if given is not None else labels
            y = self._encode(y)
            fraction = validate(Optional[Annotated[float, Strict(), Field(ge=0, lt=1)]], self.validation_fraction,
                                where=f"{type(self).__name__}.validation_fraction")
            empty = _frameless_positions(x)  # before the hold-out: positions in x as given
            if validation_data is not None and not hasattr(validation_data, "as_tf_dataset") \
                    and _labelled_pair(validation_data):
                val_empty = _frameless_positions(_branch_lists(validation_data[0]))
            if validation_data is None and fraction:
                x, y, validation_data = _hold_out(x, y, self.validation_fraction, seed)
            elif validation_data is not None and not hasattr(validation_data, "as_tf_dataset"):
                if not _labelled_pair(validation_data):
                    # A list of arrays (labels forgotten) took its second utterance's frames as the labels.
                    got = (f"a {type(validation_data).__name__} of {len(validation_data)} items"
                           if isinstance(validation_data, (list, tuple)) else type(validation_data).__name__)
                    raise ConfigError(f"{type(self).__name__}.fit: validation_data: expected a tuple (arrays, labels) "
                                      f"or FeatureBatches; got {got}")
                validation_data = (_branch_lists(validation_data[0]),
                                   self._encode(validation_data[1], call="fit: validation_data"))
        train = self._data(x, y, shuffle=True, seed=seed)
        val = None
        if validation_data is not None:
            val = validation_data if hasattr(validation_data, "as_tf_dataset") else self._data(
                validation_data[0], validation_data[1], shuffle=False, seed=seed)
        if val is not None and hasattr(validation_data, "as_tf_dataset"):
            val_empty = _empty_utterances(val)
        if empty or val_empty:  # each trained as the head's output for no input, toward its label, without a word
            warnings.warn(_frameless_fit_message(f"{type(self).__name__}.fit", (empty, "of x"),
                                                 (val_empty, "of validation_data")), UserWarning, stacklevel=4)
        folded = tuple(getattr(train, "folded", ()))
        if val is not None and tuple(getattr(val, "folded", ())) != folded:
            raise ConfigError(f"the training batches feed branches {list(folded)} with their statistics (streamed, "
                              f"Source fold=True) but the validation batches {list(getattr(val, 'folded', ()))}; "
                              f"give both the same sources and the same cache mode (share_memory_budget)")
        shapes = _frame_shapes(train)
        if set(shapes) - set(self._BRANCHES):  # a branch the head does not read would be dropped without a word
            raise DataError(f"{type(self).__name__} reads the branch(es) {list(self._BRANCHES)}; x has {list(shapes)}"
                            + ("; FusionHead reads main and fusion" if "fusion" in shapes else ""))
        self.model_ = self._build(shapes, len(self.classes_), folded=folded)
        # FeatureBatches(accumulate=k) feeds each batch as k weighted micro-batches: one step per k.
        steps = int(getattr(train, "accumulate", 1))
        self.model_.compile(optimizer=keras.optimizers.Adam(learning_rate=recipe.learning_rate,
                                                            clipvalue=recipe.clipvalue,
                                                            gradient_accumulation_steps=steps if steps > 1 else None),
                            loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                            run_eagerly=params.run_eagerly)
        timing, nan_stop = _Timing([train, val]), _StopOnNaN()
        cbs: list[keras.callbacks.Callback] = [timing, nan_stop, *callbacks]
        if val is not None:
            self._stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=recipe.patience,
                                                          restore_best_weights=recipe.restore_best)
            cbs.append(self._stopper)
        with expected_retracing():
            hist = self.model_.fit(train.as_tf_dataset(), epochs=recipe.max_epochs, callbacks=cbs,
                                   validation_data=None if val is None else val.as_tf_dataset(),
                                   verbose=params.verbose, shuffle=False)  # the data shuffles itself, per epoch
        if nan_stop.where is not None:
            epoch, batch = nan_stop.where
            raise DataError(f"{type(self).__name__}.fit: the training loss became NaN or infinite at epoch {epoch}, "
                            f"batch {batch}, so training stopped; the frames are probably too large (e.g. raw "
                            f"spectrogram power, or float16 values near its limit 65504). Normalise the features "
                            f"(build_normaliser, or a norm setting), or lower the learning rate")
        h = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        h.update(epoch_seconds=timing.epoch_seconds, input_seconds=timing.input_seconds,
                 compute_seconds=timing.compute_seconds, epochs=len(timing.epoch_seconds))
        if "val_loss" in h:
            h["best_epoch"] = int(np.argmin(h["val_loss"])) + 1
            h["best_val_loss"] = float(np.min(h["val_loss"]))
        self.history_ = h
        self.layer_weights_ = {
            layer.name.removesuffix("_layer_weights"): [float(a) for a in keras.ops.convert_to_numpy(layer.alphas)]
            for layer in self.model_.layers if isinstance(layer, LayerWeightedAverage)}
        return self

    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities [utterances, classes] in the order of ``x`` (never shuffled).

        Args:
            x: As in :meth:`fit`: FeatureBatches (unshuffled) or arrays of the features it was fitted on.
        """
        if not hasattr(self, "model_"):
            raise NotFittedHeadError(f"{type(self).__name__} is not fitted yet; call fit(...) first")
        x = _branch_lists(x)
        if not hasattr(x, "as_tf_dataset") and not _count_utterances(x):
            return np.zeros((0, len(self.classes_)), np.float32)  # as scikit-learn's predict of no samples
        data = self._data(x, None, shuffle=False, seed=0)
        if getattr(data, "shuffle", False):
            raise ConfigError("predict_proba needs an unshuffled FeatureBatches (shuffle=False) to keep the order")
        fitted = {name: tuple(t.shape[2:]) for name, t in self.model_.input.items()
                  if name != "mask" and not name.endswith(STATS_SUFFIX)}
        given = {name: tuple(shape) for name, shape in data.frame_shapes.items()}
        if given != fitted:  # else TensorFlow's "Graph execution error" or Keras's, by call history
            raise DataError(f"{type(self).__name__}.predict: the utterances' frames are {_shapes_text(given)}; the "
                            f"head was fitted on {_shapes_text(fitted)}. Give frames of the features it was fitted on")
        empty = _empty_utterances(data)
        if empty:  # the masked mean of nothing: the head's output for no input, near-uniform, without a word
            warnings.warn(f"{type(self).__name__}.predict: {len(empty)} utterance(s) have no frames ({first_few(empty)}"
                          f"); their probabilities are the head's output for no input (the same for each), not a "
                          f"prediction. Leave them out, or give audio long enough for one frame", UserWarning,
                          stacklevel=3)
        with expected_retracing():
            return np.asarray(self.model_.predict(data.as_tf_dataset(), verbose=0))

    def predict(self, x: Any) -> np.ndarray:
        """Predicted classes (elements of ``classes_``).

        Args:
            x: As in :meth:`predict_proba`.
        """
        probabilities = self.predict_proba(x)  # first: an unfitted head has no classes_ either
        return self.classes_[np.argmax(probabilities, axis=1)]

    def score(self, x: Any, y: Sequence[Any], sample_weight: Any = None) -> float:
        """UAR (unweighted average recall = balanced accuracy) of ``predict(x)`` against ``y``.

        The paper's metric, not ClassifierMixin's accuracy, so ``GridSearchCV`` selects on UAR.
        ``y`` uses the same labels as ``fit`` (names of ``classes`` or indices into them). A class
        that ``fit`` never saw (a small cross-validation fold) counts with recall 0.

        Args:
            x: As in :meth:`predict_proba`.
            y: True labels of the utterances of ``x``.
            sample_weight: Per-utterance weights, or None.
        """
        from sklearn.metrics import balanced_accuracy_score

        pred = np.argmax(self.predict_proba(x), axis=1)
        return float(balanced_accuracy_score(self._encode(y, unseen=-1, call="score(x, y)"), pred,
                                             sample_weight=sample_weight))


def _empty_utterances(data: Any) -> list[str]:
    """The utterances of ``data`` without frames (after the crop): in-memory arrays by position,
    FeatureBatches' items by id (from the stores' frame counts; no frames are read)."""
    if isinstance(data, _ArrayBatches):
        return [f"utterance {k}" for k in np.flatnonzero(data.lengths == 0)]
    return [repr(uid) for uid in data.frameless_ids()]


def _frameless_fit_message(who: str, *found: tuple[list[str], str]) -> str:
    """fit's warning of utterances without frames: ``found`` is (their names, of what) per part (the layer
    sweep, which trains without fit, says the same)."""
    where = [f"{len(e)} {what} ({first_few(e)})" for e, what in found if e]
    return (f"{who}: utterances without frames: {'; '.join(where)}. The head sees each as no input (the same for "
            f"each), so it learns their labels for no input, not from speech. Leave them out, or give audio long "
            f"enough for one frame")


def _frameless_positions(x: Any) -> list[str]:
    """In-memory utterances (a list of arrays, or a dict branch -> list) of which a branch has no
    frames, by position (anything not sized is left to the checks of the arrays)."""
    branches = list(x.values()) if isinstance(x, Mapping) else [x]
    n = _count_utterances(x)
    return [f"utterance {k}" for k in range(n) if any(_sized(v[k]) == 0 for v in branches if k < len(v))]


def _sized(frames: Any) -> int | None:
    try:
        return len(frames)
    except TypeError:
        return None


class DenseHead(_BaseHead):
    """Two pointwise Dense blocks, masked mean over time, softmax."""

    def _body(self, branches: dict[str, Any], mask: Any) -> Any:
        x = self._block(self._block(branches["main"], "block1"), "block2")
        return MaskedMean(name="masked_mean")(x, mask)


class LSTMHead(_BaseHead):
    """First pointwise Dense block, then LSTM(units) over the masked frames (final state)."""

    def _body(self, branches: dict[str, Any], mask: Any) -> Any:
        x = self._block(branches["main"], "block1")
        # Keras' own order of draws: the cell's kernel, recurrent kernel, then its dropout seed.
        lstm = keras.layers.LSTM(self._params.units, name="lstm",
                                 kernel_initializer=keras.initializers.GlorotUniform(seed=self._draw()),
                                 recurrent_initializer=keras.initializers.Orthogonal(seed=self._draw()),
                                 seed=self._draw())
        return lstm(x, mask=FrameMask(name="frame_mask")(mask))


class FusionHead(_BaseHead):
    """Main branch and a second (eGeMAPS) branch, each through its own first block, concatenated per frame."""

    _BRANCHES = ("main", "fusion")

    def _body(self, branches: dict[str, Any], mask: Any) -> Any:
        if "fusion" not in branches:
            # a list of arrays was told to "set fusion_features", a key of ExperimentConfig, not of fit
            raise ConfigError(f"FusionHead needs a 'fusion' input branch; x has {sorted(branches)}. Give arrays as "
                              f"{{'main': [...], 'fusion': [...]}} (one array per utterance in each), or "
                              f"FeatureBatches with a 'fusion' Source (in an ExperimentConfig: fusion_features, "
                              f"e.g. 'egemaps')")
        a = self._block(branches["main"], "block1")
        b = self._block(branches["fusion"], "fusion_block1")
        x = keras.layers.Concatenate(axis=-1, name="concat")([a, b])
        x = self._block(x, "block2")
        return MaskedMean(name="masked_mean")(x, mask)


HEADS: dict[str, type[_BaseHead]] = {"dense": DenseHead, "lstm": LSTMHead, "fusion": FusionHead}


def _check_head_table() -> None:
    """HEADS and each head's branches must match the Keras-free table the configs and CLI read."""
    if set(HEADS) != set(HEAD_BRANCHES):
        raise RuntimeError(f"w2v2ser.train._heads.HEADS has {sorted(HEADS)} but w2v2ser.train._head_names."
                          f"HEAD_BRANCHES has {sorted(HEAD_BRANCHES)}; register a head in both")
    for name, cls in HEADS.items():
        if tuple(cls._BRANCHES) != tuple(HEAD_BRANCHES[name]):
            raise RuntimeError(f"head {name!r} ({cls.__name__}) reads the branches {cls._BRANCHES}, but "
                              f"w2v2ser.train._head_names.HEAD_BRANCHES[{name!r}] is {HEAD_BRANCHES[name]}; "
                              f"make them agree")


_check_head_table()


def make_head(name: str, **kwargs: Any) -> _BaseHead:
    """Instantiate a head by name ("dense", "lstm", "fusion").

    Args:
        name: A key of :data:`HEADS`.
        **kwargs: The head's hyperparameters (see :class:`DenseHead`).

    Raises:
        ConfigError: No head has that name.
    """
    if name not in HEADS:
        raise ConfigError(f"unknown head {name!r}; expected one of {sorted(HEADS)}")
    return HEADS[name](**kwargs)


def load_model(path: str | Any) -> keras.Model:
    """Load a run's ``model.keras`` outside w2v2ser (its custom layers are registered by this module).

    Plain ``keras.saving.load_model`` fails on w2v2ser's layers (``MaskedMean``...) unless this
    module was imported first. The model takes the inputs of its branches (``main``, ``mask``,
    ...), normalised as the run's ``normalisation.npz`` says.

    Args:
        path: The ``model.keras`` file.
    """
    return keras.saving.load_model(path, compile=False)
