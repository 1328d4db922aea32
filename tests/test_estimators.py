"""The heads are scikit-learn estimators: clone, get/set_params, score, GridSearchCV with speaker groups."""

from __future__ import annotations

import logging
import re
import warnings

import numpy as np
import pytest
from sklearn.base import clone, is_classifier
from sklearn.model_selection import GridSearchCV, GroupKFold

from stage2_fixtures import another_thread_drawing_random_numbers
from w2v2ser.train import ConfigError, DataError, DenseHead, FusionHead, LSTMHead, NotFittedHeadError, get_recipe

QUICK = get_recipe("paper", {"max_epochs": 2, "batch_size": 8})


def utterances(n: int = 48, *, dim: int = 5, speakers: int = 6, seed: int = 0):
    """Variable-length [frames, dim] utterances whose class shifts the mean of dimension 0."""
    rng = np.random.default_rng(seed)
    y = np.array(["angry", "happy", "sad"] * (n // 3))
    x = []
    for label in y:
        frames = rng.normal(size=(int(rng.integers(5, 20)), dim)).astype(np.float32)
        frames[:, 0] += {"angry": -2.0, "happy": 0.0, "sad": 2.0}[label]
        x.append(frames)
    groups = np.repeat([f"spk{k}" for k in range(speakers)], n // speakers)
    return x, y, groups


@pytest.mark.parametrize("cls", [DenseHead, LSTMHead, FusionHead])
def test_clone_and_params_round_trip(cls):
    head = cls(units=16, dropout=0.1, recipe=QUICK, seed=3)
    assert is_classifier(head)
    params = head.get_params()
    assert params["units"] == 16 and params["dropout"] == 0.1 and params["recipe"] == QUICK and params["seed"] == 3
    twin = clone(head)
    assert twin is not head and twin.get_params() == params
    assert twin.set_params(units=4, dropout=0.0) is twin and twin.units == 4 and head.units == 16
    assert "units=16" in repr(head)


def test_fit_predict_score_with_string_labels():
    x, y, _ = utterances()
    head = DenseHead(units=8, recipe=QUICK, seed=0, validation_fraction=0.25, run_eagerly=True).fit(x, y)
    assert head.classes_.tolist() == ["angry", "happy", "sad"]
    assert set(head.predict(x[:6])) <= set(head.classes_)
    assert head.predict_proba(x[:6]).shape == (6, 3)
    assert "val_loss" in head.history_  # the stratified hold-out drove early stopping
    score = head.score(x, y)
    assert 0.0 <= score <= 1.0
    assert clone(head).get_params() == head.get_params() and not hasattr(clone(head), "model_")


def test_grid_search_over_units_and_dropout_with_speaker_groups():
    x, y, groups = utterances()
    search = GridSearchCV(DenseHead(recipe=QUICK, seed=0, run_eagerly=True),
                          {"units": [4, 8], "dropout": [0.0, 0.3]}, cv=GroupKFold(n_splits=3))
    search.fit(x, y, groups=groups)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_params_["units"] in (4, 8) and search.best_params_["dropout"] in (0.0, 0.3)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_estimator_.units == search.best_params_["units"]
    assert search.predict(x[:3]).shape == (3,)
    # GroupKFold kept every speaker on one side of every split
    for train_idx, test_idx in GroupKFold(n_splits=3).split(x, y, groups):
        assert not set(groups[train_idx]) & set(groups[test_idx])


def test_readme_grid_search_on_a_store_partition(tmp_path):
    """The README example: partition_arrays from a store, GridSearchCV with GroupKFold over speakers."""
    from stage2_fixtures import build_store, ravdess_utterances
    from w2v2ser.train import ExperimentConfig, partition_arrays, plan_runs

    path = build_store(tmp_path / "rav.zarr", utterances=ravdess_utterances(per_actor=2), layers=3, dim=4)
    config = ExperimentConfig(stores=str(path), features="egemaps", norm="speaker")
    spec = plan_runs(config)[0]
    x, y, speakers = partition_arrays(config, spec)["train"]
    assert len(x) == len(y) == len(speakers) == 40 and set(speakers) == set(spec.train)
    assert x[0].ndim == 2 and x[0].shape[1] == 25
    search = GridSearchCV(DenseHead(recipe=QUICK, seed=0, validation_fraction=0.25, run_eagerly=True),
                          {"units": [4, 8]}, cv=GroupKFold(n_splits=2))
    search.fit(x, y, groups=speakers)
    assert 0.0 <= search.best_score_ <= 1.0


@pytest.mark.parametrize("cls", [DenseHead, LSTMHead, FusionHead])
def test_seeded_heads_do_not_depend_on_other_threads(cls):
    """Keras draws the seeds of initializers and dropout layers that get none from Python's global
    random, which every thread shares. In a Dask worker, whose other threads draw from it too, the
    same seeded run started from other weights than alone (first-epoch validation loss 1.874 or
    1.878 against 1.881). A seeded head builds and trains the same weights while a thread draws."""
    x, y, _ = utterances(12)
    if cls is FusionHead:
        x = {"main": x, "fusion": [f[:, :3] * 2 for f in x]}
    recipe = get_recipe("paper", {"max_epochs": 1, "batch_size": 4})

    def fitted_weights() -> list[np.ndarray]:
        head = cls(units=4, dropout=0.3, recipe=recipe, seed=7, validation_fraction=None, run_eagerly=True)
        return head.fit(x, y).model_.get_weights()

    alone = fitted_weights()
    with another_thread_drawing_random_numbers():
        beside_a_drawing_thread = fitted_weights()
    assert len(alone) == len(beside_a_drawing_thread)
    for a, b in zip(alone, beside_a_drawing_thread):
        np.testing.assert_array_equal(a, b)


def test_seed_draws_are_the_seeds_keras_draws_itself():
    """So seeded weights equal those of the models built before the heads drew their own seeds
    (the same sequence as Keras' own draws right after ``keras.utils.set_random_seed``)."""
    import keras
    from keras.src.random.seed_generator import make_default_seed

    from w2v2ser.train._layers import seed_draws

    draw = seed_draws(11)
    keras.utils.set_random_seed(11)
    assert [make_default_seed() for _ in range(5)] == [draw() for _ in range(5)]
    assert seed_draws(None)() is None


def test_predicting_inputs_of_many_lengths_prints_no_retracing_warning(caplog):
    """The README's grid search printed TensorFlow's "N out of the last M calls to <function ...>
    triggered tf.function retracing" warnings (twice, a dozen lines): every call pads to its own
    longest utterance, so a compiled head traces its predict step once per length, as intended."""
    x, y, _ = utterances(24)
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for seed in range(4):  # as in a grid search: several fitted heads, each predicting twice
            head = DenseHead(units=4, recipe=QUICK, seed=seed, validation_fraction=None).fit(x, y)
            for frames in (5, 9):  # a new padded length each call
                head.predict([f[:frames] for f in x[:5]])
        # TensorFlow's other warnings still reach the log (inside: an earlier test of this process
        # may have raised the logger's level, as the CLI and Dask workers do)
        logging.getLogger("tensorflow").warning("some other warning")
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
    assert [r for r in caplog.records if "some other warning" in r.getMessage()]


def test_validation_fraction_on_a_fold_too_small_to_stratify():
    """A GridSearchCV fold of one RAVDESS speaker (60 utterances, 8 classes) held out 6 utterances:
    scikit-learn's stratified split refused it ("test_size = 6 should be greater or equal to the
    number of classes = 8") and every fit of the search failed. It gets a plain random hold-out."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.array([f"c{k}" for k in range(8)]), [4, 8, 8, 8, 8, 8, 8, 8])
    x = [rng.normal(size=(int(rng.integers(5, 12)), 3)).astype(np.float32) for _ in y]
    head = DenseHead(units=4, recipe=QUICK, seed=0, validation_fraction=0.1, run_eagerly=True).fit(x, y)
    assert "val_loss" in head.history_ and head.classes_.tolist() == sorted(set(y))


@pytest.mark.parametrize("fraction, expected", [(1.5, "a value < 1.0, got 1.5"), (-0.1, "a value >= 0.0, got -0.1"),
                                                ("0.1", "a valid number, got string '0.1'"),
                                                (3, "a value < 1.0, got 3"),
                                                (True, "a valid number, got boolean True")])
def test_validation_fraction_out_of_range_names_the_parameter(fraction, expected):
    """scikit-learn's own error named its test_size; 3 (an int) was taken as three utterances."""
    x, y, _ = utterances(12)
    with pytest.raises(ConfigError, match=re.escape(f"DenseHead.validation_fraction: expected {expected}.")):
        DenseHead(units=4, recipe=QUICK, seed=0, validation_fraction=fraction, run_eagerly=True).fit(x, y)


@pytest.mark.parametrize("params, expected", [({"units": "64"}, "DenseHead.units: expected a valid integer, got string '64'."),
                                               ({"units": 0}, "DenseHead.units: expected a value >= 1, got 0."),
                                               ({"dropout": 1.5}, "DenseHead.dropout: expected a value < 1.0, got 1.5."),
                                               ({"seed": -1}, "DenseHead.seed: expected a value >= 0, got -1.")])
def test_hyperparameters_are_checked_by_fit_and_numpy_integers_taken(params, expected):
    """Found by a trial: Keras refused these with its own ValueError at graph build (after the data
    checks), a seed from np.arange with "Expected seed argument to be an integer", and fit([], [])
    raised IndexError. The values stay as given (get_params, clone), as scikit-learn expects."""
    x, y, _ = utterances(12)
    head = DenseHead(recipe=QUICK, run_eagerly=True, **{"units": 4, **params})
    with pytest.raises(ConfigError, match=re.escape(expected)):
        head.fit(x, y)
    assert clone(head).get_params() == head.get_params()
    numpy_head = DenseHead(units=np.int64(4), dropout=np.float32(0.1), seed=np.int64(3), recipe=QUICK,
                           run_eagerly=True).fit(x, y)
    assert type(numpy_head.get_params()["seed"]) is np.int64 and numpy_head.predict_proba(x[:2]).shape == (2, 3)
    with pytest.raises(DataError, match=r"DenseHead.fit\(x, y\): no utterances given"):
        DenseHead(units=4, recipe=QUICK).fit([], [])


def test_validation_data_without_labels_is_named():
    """Found by a trial: validation_data=x[:4] (labels forgotten) took the second utterance's frames
    as the labels: "labels [-2.106, ...] do not occur in the training labels"."""
    x, y, _ = utterances(12)
    head = DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True)
    with pytest.raises(ConfigError, match=r"DenseHead.fit: validation_data: expected a tuple \(arrays, labels\) or "
                                          r"FeatureBatches; got a list of 4 items"):
        head.fit(x, y, validation_data=x[:4])
    with pytest.raises(ConfigError, match=r"got a list of 2 items"):  # two utterances' frames, no labels
        head.fit(x, y, validation_data=x[:2])
    head.fit(x, y, validation_data=(x[:4], y[:4]))
    assert "val_loss" in head.history_
    head.fit(x, y, validation_data=[x[:4], list(y[:4])])  # a list (arrays, labels), as Keras takes it
    assert "val_loss" in head.history_


@pytest.mark.parametrize("labels, expected", [
    (["angry", 1, "sad"], r"y mixes string and number labels \(e\.g\. 'angry' and 1\); give labels of one type"),
    (["angry", None, "sad"], r"y\[1\] is None, a missing label; give every utterance a label"),
    ([0.0, float("nan"), 1.0], r"y\[1\] is nan, a missing label"),
    (np.array([0.0, np.nan, 1.0], dtype=np.float32), r"y\[1\] is (np\.float32\()?nan\)?, a missing label")])
def test_labels_of_mixed_types_or_missing_are_refused(labels, expected):
    """Found by a trial: ["a", 1, ...] was taken (numpy made every label a string, so predict gave
    '1'), and a None label raised TypeError from np.unique; scikit-learn refuses both."""
    x, _, _ = utterances(12)
    with pytest.raises(DataError, match=r"DenseHead\.fit\(x, y\): " + expected):
        DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(x, list(labels) * 4)


def test_score_and_validation_labels_of_mixed_kinds_are_refused():
    """Found by review: only the first label's kind was looked at, so [1, "a"] became the strings
    '1', 'a' and an int label 1 matched a class named '1' without a word (score, validation_data)."""
    x, _, _ = utterances(12)
    y = np.array(["1", "a"] * 6)
    head = DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(x, y)
    mixed = np.array([1, "a"] * 6, dtype=object)
    with pytest.raises(DataError, match=r"DenseHead\.score\(x, y\): y mixes string and number labels "
                                        r"\(e\.g\. 'a' and 1\)"):
        head.score(x, mixed)
    with pytest.raises(DataError, match=r"DenseHead\.fit: validation_data: y mixes string and number labels"):
        DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(x, y, validation_data=(x, mixed))


def test_validation_fraction_that_leaves_nothing_to_train_on():
    x, y, _ = utterances(12)
    with pytest.raises(DataError, match="of 12 training utterances holds out 12, leaving none"):
        DenseHead(units=4, recipe=QUICK, seed=0, validation_fraction=0.99, run_eagerly=True).fit(x, y)


@pytest.mark.parametrize("labels, expected", [
    ([0, 2], r"DenseHead\(classes=\['angry', 'sad'\]\) takes labels as class names or as integer indices 0\.\.1 "
             r"into classes; got 2"),
    (["angry", "calm"], r"DenseHead\.fit\(x, y\): got the label 'calm', which is not one of "
                        r"classes=\['angry', 'sad'\]; give labels as those class names \(or as integer indices 0\.\.1")])
def test_labels_that_are_neither_names_nor_indices_of_classes(labels, expected):
    """With classes= set, a name failed deep in numpy ("invalid literal for int()") and an index past
    the end reached Keras' loss."""
    x, _, _ = utterances(12)
    y = np.array(labels * 6)
    with pytest.raises(DataError, match=expected):
        DenseHead(units=4, recipe=QUICK, classes=["angry", "sad"], seed=0, run_eagerly=True).fit(x, y)


def test_a_head_with_classes_takes_their_names_as_labels_so_scikit_learn_scorers_work():
    """Found by a trial: with classes= set, fit and score took only indices while predict returned the
    names, so cross_val_score(head, x, names, scoring="accuracy") failed (the names were refused) and
    with indices scikit-learn refused a "Mix of label input types (string and number)"."""
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score

    x, y, _ = utterances(24)
    classes = ["sad", "angry", "happy"]  # not sorted: names map to their own positions
    head = DenseHead(units=4, recipe=QUICK, classes=classes, seed=0, run_eagerly=True)
    scores = cross_val_score(head, x, y, scoring="accuracy", cv=3, error_score="raise")
    predicted = cross_val_predict(head, x, y, cv=3)
    assert set(predicted) <= set(classes)
    folds = StratifiedKFold(3).split(x, y)  # cv=3's folds for a classifier
    assert np.allclose(scores, [accuracy_score(y[test], predicted[test]) for _, test in folds])
    indices = np.array([classes.index(label) for label in y])
    by_name = clone(head).fit(x, y)
    by_index = clone(head).fit(x, indices)  # indices into names that are not numbers still work
    assert by_name.classes_.tolist() == by_index.classes_.tolist() == classes
    assert np.array_equal(by_name.predict_proba(x), by_index.predict_proba(x))
    assert by_name.score(x, y) == by_name.score(x, indices) == by_index.score(x, y)


@pytest.mark.parametrize("classes, labels, expected", [
    ([1, 0], [0, 1], r"DenseHead\.fit\(x, y\): the labels \[0, 1\] are both names and indices of classes=\[1, 0\], "
                     r"which name other classes; give labels as class names and classes as strings"),
    ([3, 5], [0, 1], r"DenseHead\.fit\(x, y\): got the label 0, which is not one of classes=\[3, 5\]; give labels as "
                     r"those class names \(class names that are numbers take no indices\)")])
def test_number_classes_take_their_names_and_refuse_ambiguous_labels(classes, labels, expected):
    x, _, _ = utterances(12)
    with pytest.raises(DataError, match=expected):
        DenseHead(units=4, recipe=QUICK, classes=classes, seed=0, run_eagerly=True).fit(x, labels * 6)
    head = DenseHead(units=4, recipe=QUICK, classes=[3, 5], seed=0, run_eagerly=True).fit(x, [5, 3] * 6)
    assert set(head.predict(x)) <= {3, 5} and 0.0 <= head.score(x, [5, 3] * 6) <= 1.0


def test_stage2_functions_take_a_config_mapping_and_name_a_wrong_run_spec(tmp_path):
    """A train: entry loaded from YAML is a dict: plan_runs(dict) failed with "'dict' object has no
    attribute 'stores'", and partition_arrays(config, "split") with "'str' object has no attribute"."""
    from stage2_fixtures import build_store, ravdess_utterances
    from w2v2ser.train import ExperimentConfig, partition_arrays, plan_runs

    path = build_store(tmp_path / "rav.zarr", utterances=ravdess_utterances(per_actor=2), layers=3, dim=4)
    given = {"stores": str(path), "features": "egemaps", "norm": "speaker"}
    assert plan_runs(given) == plan_runs(ExperimentConfig(**given))
    with pytest.raises(ConfigError, match=r"run_spec: got 'split'; expected a RunSpec, one element of plan_runs"):
        partition_arrays(given, "split")
    with pytest.raises(ConfigError, match=r"config: got list; expected an ExperimentConfig or a mapping"):
        plan_runs([given])
    with pytest.raises(ConfigError, match=r"featurs.*Did you mean 'features'"):
        plan_runs({"stores": str(path), "featurs": "egemaps"})


def test_array_input_problems_are_named():
    """In-memory arrays: a NaN trained to a NaN loss without a word, an utterance of another width
    failed in numpy ("could not broadcast"), x and y of different lengths raised IndexError, an
    unfitted head's predict raised AttributeError on classes_, and predict([]) IndexError."""
    x, y, _ = utterances(12)
    head = DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="DenseHead is not fitted yet; call fit") as unfitted:
        head.predict(x)
    assert isinstance(unfitted.value, ConfigError)  # the command line's exit 2, one line
    with pytest.raises(DataError, match=r"utterance 3 holds 2 NaN or infinite values; every frame must be finite"):
        nan = x[3].copy()
        nan[0, :2] = np.nan
        DenseHead(units=4, recipe=QUICK, seed=0).fit([*x[:3], nan, *x[4:]], y)
    with pytest.raises(DataError, match=r"utterance 11 has shape \(4, 6\); expected \[frames, 5\] like utterance 0"):
        DenseHead(units=4, recipe=QUICK, seed=0).fit([*x[:11], np.zeros((4, 6), np.float32)], y)
    with pytest.raises(DataError, match=r"utterance 0 has shape \(5,\); expected a \[frames, features\] array"):
        DenseHead(units=4, recipe=QUICK, seed=0).fit([np.zeros(5, np.float32)] * 12, y)
    with pytest.raises(DataError, match="x holds 12 utterances but y 11 labels"):
        DenseHead(units=4, recipe=QUICK, seed=0).fit(x, y[:11])
    head.fit(x, y)
    assert head.predict([]).shape == (0,) and head.predict_proba([]).shape == (0, 3)


def test_mixed_float16_and_float32_utterances_train_in_float32_and_a_nan_loss_raises():
    """Found by a trial: utterance 0's dtype chose the dtype of all, so float32 frames above float16's
    range (raw spectrogram power) became inf in a float16 buffer and trained to a NaN model, and fit
    returned normally; a NaN loss from finite but huge float32 frames was silent too."""
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(20, 6)).astype(np.float32) * 1e5 + (i % 2) for i in range(16)]
    y = [i % 2 for i in range(16)]
    mixed = [np.clip(x[0], -6e4, 6e4).astype(np.float16), *x[1:]]
    head = DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(mixed, y)
    assert np.isfinite(head.history_["loss"]).all() and np.isfinite(head.predict_proba(mixed)).all()
    with pytest.raises(DataError, match=r"DenseHead.fit: the training loss became NaN or infinite at epoch \d+, "
                                        r"batch \d+, so training stopped; .*Normalise the features"):
        head.fit([a * np.float32(1e25) for a in x], y)  # refitting the head fitted above
    with pytest.raises(NotFittedHeadError):  # not the earlier fit's history beside the NaN model
        head.predict(mixed)
    assert not hasattr(head, "history_")


def test_predict_checks_the_frames_against_the_fitted_head_and_fit_refuses_an_unread_branch():
    """Found by a trial: frames of another width (or with a layer axis) at predict time ended in
    TensorFlow's "Graph execution error" or a Keras message, by call history; and a DenseHead fed
    {"main": ..., "fusion": ...} trained on main alone without a word."""
    x, y, _ = utterances(12)
    head = DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(x, y)
    head.predict(x)
    wider = [np.concatenate([a, a[:, :1]], axis=1) for a in x]
    width = x[0].shape[1]
    for wrong, shown in ((wider, f"[frames, {width + 1}]"), ([a[:, None, :] for a in x], f"[frames, 1, {width}]")):
        with pytest.raises(DataError, match=re.escape(f"frames are {shown}; the head was fitted on [frames, {width}]")):
            head.predict(wrong)
    with pytest.raises(DataError, match=r"DenseHead reads the branch\(es\) \['main'\]; x has \['main', 'fusion'\]; "
                                        r"FusionHead reads main and fusion"):
        DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit({"main": x, "fusion": x}, y)


def test_heads_agree_with_the_keras_free_head_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """HEADS and each head's branches are checked against the table configs and the CLI read."""
    from w2v2ser.train import _heads
    from w2v2ser.train._head_names import HEAD_BRANCHES

    assert set(_heads.HEADS) == set(HEAD_BRANCHES)
    assert all(cls._BRANCHES == HEAD_BRANCHES[name] for name, cls in _heads.HEADS.items())
    monkeypatch.setitem(HEAD_BRANCHES, "attention", ("main",))
    with pytest.raises(RuntimeError, match="register a head in both"):
        _heads._check_head_table()
    monkeypatch.delitem(HEAD_BRANCHES, "attention")
    monkeypatch.setitem(HEAD_BRANCHES, "lstm", ("main", "fusion"))
    with pytest.raises(RuntimeError, match="'lstm' \\(LSTMHead\\) reads the branches"):
        _heads._check_head_table()


def test_a_saved_model_loads_outside_w2v2ser_through_load_model(tmp_path):
    """Found by a correctness audit: keras.saving.load_model of a run's model.keras failed on
    MaskedMean unless a private module had been imported; load_model is the public way."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 6, 4)).astype("float32")
    head = DenseHead(units=4, recipe="official", seed=0, validation_fraction=None).fit(x, rng.integers(0, 2, 12))
    head.model_.save(tmp_path / "model.keras")
    code = ("import w2v2ser.train as t, numpy as np\n"
            f"m = t.load_model({str(tmp_path / 'model.keras')!r})\n"
            "print(sorted(i.name for i in m.inputs))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "main" in done.stdout


def test_score_after_a_fit_on_feature_batches_is_the_uar_of_predict(tmp_path):
    """Found by a notebook session: a head fitted on FeatureBatches takes the batches' classes in their
    own (protocol) order, unsorted, and score() mapped labels with searchsorted as if sorted: 0.333 for a
    true UAR of 0.143. Integer labels (the batches' own) matched no class and scored 0.0 without a word."""
    from sklearn.metrics import balanced_accuracy_score

    from stage2_fixtures import build_store, ravdess_utterances
    from w2v2ser.store import open_store
    from w2v2ser.train import FeatureBatches, Item, Source, build_normaliser, resolve_selection

    store = open_store(build_store(tmp_path / "rav.zarr", utterances=ravdess_utterances(per_actor=6, actors=4),
                                   layers=2, dim=4))
    classes = ["sad", "neutral", "angry"]  # not sorted, as a protocol's classes are
    selection = resolve_selection("egemaps", specs=store, alias="main")
    normaliser = build_normaliser(store, selection, "speaker", train_speakers=store.speakers(),
                                  speakers=store.speakers())
    items = [Item(r.id, r.speaker, i % 3, r.duration) for i, r in enumerate(store.list_utterances())]
    batches = FeatureBatches(items, [Source("main", store, selection, normaliser)], classes=classes,
                             batch_size=8, max_frames=20)
    head = DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(batches)
    assert head.classes_.tolist() == classes
    names = np.array(classes)[batches.labels]
    predicted = head.predict(batches)
    assert head.score(batches, names) == pytest.approx(balanced_accuracy_score(names, predicted))
    assert head.score(batches, predicted) == 1.0  # whichever classes it predicts
    with pytest.raises(DataError, match=r"got number labels \(e.g. 0\) but the classes_ are strings"):
        head.score(batches, batches.labels)
    other_order = FeatureBatches(items, [Source("main", store, selection, normaliser)], classes=sorted(classes),
                                 batch_size=8, max_frames=20)
    with pytest.raises(ConfigError, match=r"the training batches' classes are \['sad', 'neutral', 'angry'\] but the "
                                          r"validation batches' \['angry', 'neutral', 'sad'\]; build both"):
        DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(batches, validation_data=other_order)


@pytest.mark.parametrize("cls", [DenseHead, LSTMHead, FusionHead])
def test_help_of_a_head_documents_its_hyperparameters(cls):
    """Found by a notebook session: help(DenseHead) and DenseHead? showed one line; the hyperparameters
    were documented only on the private base class, which neither shows."""
    import pydoc

    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    for documented in ("units: Width of the Dense", "dropout: Dropout rate", "validation_fraction: Without",
                       "classes: Class names", "seed: Seed of weights"):
        assert documented in text


def test_fusion_head_given_one_list_of_arrays_says_how_to_give_two_branches():
    """Found by a notebook session: FusionHead().fit(x, y) with a plain list said "set fusion_features",
    a key of ExperimentConfig that fit does not take."""
    x, y, _ = utterances(12)
    with pytest.raises(ConfigError, match=re.escape("FusionHead needs a 'fusion' input branch; x has ['main']. Give "
                                                    "arrays as {'main': [...], 'fusion': [...]}")):
        FusionHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(x, y)


def test_labels_in_an_object_array_as_a_pandas_series_gives_them():
    """Found by review: np.asarray of a pandas Series of names or numbers is an object array of plain
    Python values, and the message for labels of the other kind than classes_ called .item() on them:
    AttributeError 'str' object has no attribute 'item'; valid indices into classes= were refused too."""
    x, y, _ = utterances(12)
    names = np.array(y.tolist(), dtype=object)
    numbers = np.array([{"angry": 0, "happy": 1, "sad": 2}[label] for label in y.tolist()], dtype=object)
    by_name = DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(x, names)
    assert by_name.classes_.tolist() == ["angry", "happy", "sad"]
    assert set(by_name.predict(x)) <= set(by_name.classes_)
    assert by_name.score(x, names) == by_name.score(x, y)
    by_number = DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(x, numbers)
    assert by_number.classes_.tolist() == [0, 1, 2] and 0.0 <= by_number.score(x, numbers) <= 1.0
    with pytest.raises(DataError, match=r"got string labels \(e\.g\. 'angry'\) but the classes_ are numbers "
                                        r"\[0, 1, 2\]; give labels as the numbers fit was given"):
        by_number.score(x, names)
    with pytest.raises(DataError, match=r"got number labels \(e\.g\. 0\) but the classes_ are strings "
                                        r"\['angry', 'happy', 'sad'\]; give labels as class names"):
        by_name.score(x, numbers)
    indexed = DenseHead(units=4, recipe=QUICK, classes=["angry", "happy", "sad"], seed=0, run_eagerly=True)
    assert indexed.fit(x, numbers).score(x, numbers) == indexed.score(x, numbers.astype(int))
    assert indexed.score(x, names) == indexed.score(x, numbers)  # the names, as scikit-learn takes labels


def test_fit_and_train_experiment_give_the_callers_random_streams_back(tmp_path):
    """A seeded fit (and every run of train_experiment) called keras.utils.set_random_seed, which
    reseeded the caller's np.random and random: a notebook drew the same numbers after every call."""
    import random

    from stage2_fixtures import build_store, ravdess_utterances
    from w2v2ser.train import ExperimentConfig, train_experiment

    def streams() -> tuple:
        return random.getstate(), np.random.get_state()[1].tolist(), np.random.get_state()[2]

    x, y, _ = utterances(12)
    random.seed(11)
    np.random.seed(11)
    before = streams()
    DenseHead(units=4, recipe=QUICK, seed=3, validation_fraction=None, run_eagerly=True).fit(x, y)
    assert streams() == before
    path = build_store(tmp_path / "rav.zarr", utterances=ravdess_utterances(per_actor=2), layers=3, dim=4)
    config = ExperimentConfig(stores=str(path), features="egemaps", norm="speaker", seeds=1,
                              recipe_overrides={"max_epochs": 1})
    train_experiment(config, out=tmp_path / "run", progress=False)
    assert streams() == before


def test_unseeded_fits_in_one_process_are_different_models():
    """An unseeded fit's layers take their seeds from Python's random: giving the caller's streams
    back after every fit (as a seeded fit does) made each unseeded fit in a process the same model."""
    import random

    x, y, _ = utterances(12)

    def weights(seed: int | None) -> list[np.ndarray]:
        head = DenseHead(units=4, recipe=QUICK, seed=seed, validation_fraction=None, run_eagerly=True)
        return head.fit(x, y).model_.get_weights()

    first, second = weights(None), weights(None)
    assert not all(np.array_equal(a, b) for a, b in zip(first, second))
    random.seed(5)
    np.random.seed(5)
    before = random.getstate(), np.random.get_state()[1].tolist()
    weights(3)  # a seeded fit still gives the caller's streams back
    assert (random.getstate(), np.random.get_state()[1].tolist()) == before


def test_a_refit_that_fails_leaves_the_head_unfitted_not_the_old_model_with_new_classes():
    """Found by a trial: a refit that raised after taking its labels (bad validation_data) kept the earlier
    fit's model_ beside the new classes_, so predict named the new classes from the old model's outputs."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    x, y, _ = utterances(12)
    head = DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(x, y)
    assert set(head.predict(x)) <= {"angry", "happy", "sad"}
    with pytest.raises(ConfigError, match="validation_data: expected a tuple"):
        head.fit(x, np.array(["calm", "fear", "joy"] * 4), validation_data=x[:2])
    with pytest.raises(NotFittedHeadError):
        head.predict(x)
    with pytest.raises(NotFittedError):  # no classes_ left either, which check_is_fitted would take as fitted
        check_is_fitted(head)


@pytest.mark.parametrize("classes, expected", [
    ("abc", r"DenseHead\.classes: expected a list of class names, or None; got 'abc'"),
    ([], r"DenseHead\.classes: expected distinct class names, or None \(the labels' sorted distinct values\); got \[\]"),
    (["angry", "angry", "sad"], r"got \['angry', 'angry', 'sad'\], which repeats \['angry'\]"),
    ({"angry", "happy", "sad"},
     r"DenseHead\.classes: expected a list of class names, or None; got \{.*\} \(set: pass a list, in the order of "
     r"the class indices\)"),
    ((c for c in ["angry", "happy", "sad"]), r"got <generator .*> \(generator: pass a list"),
    ({"angry": 0, "happy": 1, "sad": 2}, r"got \{'angry': 0, .*\} \(dict: pass a list")])
def test_classes_that_are_not_a_list_of_distinct_names_are_refused(classes, expected):
    """Found by a trial: classes="abc" became the classes a, b, c, classes=[] was taken as unset, and a
    repeated name gave two outputs of one name, all without a word. Found by a review: a set was taken in
    hash order (index k named another class in another process), and a generator was used up by fit's first
    read of it ("expected distinct class names ... got []")."""
    x, _, _ = utterances(12)
    with pytest.raises(ConfigError, match=expected):
        DenseHead(units=4, recipe=QUICK, classes=classes, seed=0, run_eagerly=True).fit(x, [0, 1, 2] * 4)


def test_classes_given_as_another_heads_classes_array():
    """Found by a trial: classes=np.array([...]) (e.g. another head's classes_) raised numpy's "truth value
    of an array with more than one element is ambiguous"."""
    x, y, _ = utterances(12)
    named = DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(x, y)
    indexed = DenseHead(units=4, recipe=QUICK, classes=named.classes_, seed=0, run_eagerly=True)
    indexed.fit(x, np.searchsorted(named.classes_, y))
    assert indexed.classes_.tolist() == ["angry", "happy", "sad"]
    assert set(indexed.predict(x)) <= {"angry", "happy", "sad"}
    assert 0.0 <= indexed.score(x, np.searchsorted(named.classes_, y)) <= 1.0


def _store_batches(tmp_path, classes):
    """FeatureBatches of a small RAVDESS-like store's eGeMAPS, labels i % 3 indexing ``classes``."""
    from stage2_fixtures import build_store, ravdess_utterances
    from w2v2ser.store import open_store
    from w2v2ser.train import FeatureBatches, Item, Source, build_normaliser, resolve_selection

    store = open_store(build_store(tmp_path / "rav.zarr", utterances=ravdess_utterances(per_actor=6, actors=4),
                                   layers=2, dim=4))
    selection = resolve_selection("egemaps", specs=store, alias="main")
    normaliser = build_normaliser(store, selection, "speaker", train_speakers=store.speakers(),
                                  speakers=store.speakers())
    items = [Item(r.id, r.speaker, i % 3, r.duration) for i, r in enumerate(store.list_utterances())]
    return FeatureBatches(items, [Source("main", store, selection, normaliser)], classes=classes,
                          batch_size=8, max_frames=20)


def test_classes_other_than_the_feature_batches_classes_are_refused(tmp_path):
    """Found by a trial: DenseHead(classes=C).fit(batches of the classes B) took classes_ = C while the
    batches' labels index B, so predict named every class after another one without a word."""
    batches = _store_batches(tmp_path, ["sad", "neutral", "angry"])
    with pytest.raises(ConfigError, match=r"DenseHead\(classes=\['angry', 'neutral', 'sad'\]\) was given "
                                          r"FeatureBatches of the classes \['sad', 'neutral', 'angry'\], whose labels"):
        DenseHead(units=4, recipe=QUICK, classes=["angry", "neutral", "sad"], seed=0, run_eagerly=True).fit(batches)
    head = DenseHead(units=4, recipe=QUICK, classes=("sad", "neutral", "angry"), seed=0, run_eagerly=True)
    assert head.fit(batches).classes_.tolist() == ["sad", "neutral", "angry"]  # the same classes: as train_run


def test_a_fit_on_feature_batches_refuses_what_it_cannot_use(tmp_path):
    """Found by a trial: fit(batches) with validation_fraction trained max_epochs with no hold-out and no
    early stopping, and a y given beside the batches was dropped, both without a word."""
    batches = _store_batches(tmp_path, ["sad", "neutral", "angry"])
    with pytest.raises(ConfigError, match=r"DenseHead\(validation_fraction=0\.25\) holds out part of in-memory "
                                          r"arrays, not of FeatureBatches; give validation_data="):
        DenseHead(units=4, recipe=QUICK, seed=0, validation_fraction=0.25, run_eagerly=True).fit(batches)
    with pytest.raises(ConfigError, match=r"x is FeatureBatches, which carry their own labels"):
        DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(batches, batches.labels)
    head = DenseHead(units=4, recipe=QUICK, seed=0, validation_fraction=0.25, run_eagerly=True)
    assert "val_loss" in head.fit(batches, validation_data=batches).history_


def test_a_recipe_that_is_not_a_recipe_is_named():
    """Found by a trial: recipe={"max_epochs": 20} failed inside fit with AttributeError "'dict' object has
    no attribute 'batch_size'"."""
    x, y, _ = utterances(12)
    with pytest.raises(ConfigError, match=r"DenseHead\.recipe: expected 'paper', 'official' or a Recipe; got "
                                          r"\{'max_epochs': 20\} \(dict\)\. For other hyperparameters, pass "
                                          r"get_recipe\('paper', \{'max_epochs': 20, \.\.\.\}\)"):
        DenseHead(units=4, recipe={"max_epochs": 20}, seed=0).fit(x, y)


def test_fusion_head_cross_validates_on_one_dict_of_branches_per_utterance():
    """Found by a trial: FusionHead's input, a dict branch -> list, cannot be split by scikit-learn
    (cross_val_score: "inconsistent numbers of samples: [2, 24]"); a list of one dict per utterance can."""
    from sklearn.model_selection import cross_val_score

    x, y, groups = utterances(24)
    rng = np.random.default_rng(1)
    per_utterance = [{"main": a, "fusion": rng.normal(size=(len(a), 3)).astype(np.float32)} for a in x]
    head = FusionHead(units=4, recipe=QUICK, seed=0, run_eagerly=True)
    scores = cross_val_score(head, per_utterance, y, groups=groups, cv=GroupKFold(n_splits=2), error_score="raise")
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    branches = {"main": x, "fusion": [u["fusion"] for u in per_utterance]}
    fitted = clone(head).fit(branches, y)
    np.testing.assert_array_equal(fitted.predict_proba(per_utterance), fitted.predict_proba(branches))
    with pytest.raises(DataError, match=r"utterance 1 has the branches \['main'\]; utterance 0 has \['fusion', 'main'\]"):
        clone(head).fit([per_utterance[0], {"main": x[1]}] + per_utterance[2:], y)
    # found by a review: a dict beside arrays was named as "utterance 0 has shape ()"
    with pytest.raises(DataError, match=r"utterance 1 is a ndarray, but utterance 0 is a dict of branches; give every "
                                        r"utterance as a dict \{branch: frames\}"):
        clone(head).fit([per_utterance[0], x[1]] + per_utterance[2:], y)


@pytest.mark.parametrize("params, expected", [
    ({"run_eagerly": "no"}, r"DenseHead\.run_eagerly: expected a valid boolean, got string 'no'"),
    ({"verbose": "x"}, r"DenseHead\.verbose: expected one of auto or a valid integer, got 'x'"),
    ({"verbose": 3}, r"DenseHead\.verbose: .*3")])
def test_verbose_and_run_eagerly_are_checked_by_fit(params, expected):
    """Found by a trial: run_eagerly="no" (truthy) ran eagerly and verbose="x" was passed on to Keras unchecked."""
    x, y, _ = utterances(12)
    with pytest.raises(ConfigError, match=expected):
        DenseHead(units=4, recipe=QUICK, seed=0, **params).fit(x, y)


def test_numpy_bools_and_ints_are_taken_for_run_eagerly_and_verbose():
    """Found by a review: run_eagerly=np.True_ (a GridSearchCV grid of np.array([True, False])) was refused
    with "expected a valid boolean, got bool np.True_"."""
    x, y, _ = utterances(12)
    head = DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=np.True_, verbose=np.int64(0)).fit(x, y)
    assert head.model_.run_eagerly is True and head.get_params()["run_eagerly"] is np.True_


def test_a_refit_interrupted_by_ctrl_c_leaves_the_head_unfitted():
    """Found by a review: the cleanup caught Exception only, so a refit stopped by KeyboardInterrupt (Ctrl-C
    in a notebook, a stop signal) kept its partly trained model_ and new classes_: predict ran without a word."""
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise KeyboardInterrupt

    x, y, _ = utterances(12)
    head = DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(x, y)
    with pytest.raises(KeyboardInterrupt):
        head.fit(x, np.array(["calm", "fear", "joy"] * 4), callbacks=[Interrupt()])
    with pytest.raises(NotFittedHeadError):
        head.predict(x)


def test_predicting_an_utterance_without_frames_warns_and_names_it():
    """Found by a trial: an utterance of 0 frames got the head's output for no input (a masked mean of
    nothing), near-uniform probabilities, without a word."""
    x, y, _ = utterances(12)
    head = DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(x, y)
    empty = [x[0], np.zeros((0, 5), np.float32), x[1]]
    with pytest.warns(UserWarning, match=r"DenseHead\.predict: 1 utterance\(s\) have no frames \(utterance 1\); their "
                                         r"probabilities are the head's output for no input"):
        assert head.predict(empty).shape == (3,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # utterances with frames: no warning
        head.predict_proba(x[:3])


def _batches_with_frameless(tmp_path, lengths: list[int]):
    """A store of egemaps-like utterances u0.. of the given frame counts (0: no frames), and a function
    of Items -> FeatureBatches over it (3 classes), for the frameless-utterance warnings."""
    from stage2_fixtures import feature_specs
    from w2v2ser.store import StoreWriter, Utterance, open_store
    from w2v2ser.train import FeatureBatches, Item, Normaliser, Source, resolve_selection

    n = len(lengths)
    spec = feature_specs(egemaps_dim=5, features=("egemaps",))[0]
    rows = [Utterance(id=f"u{i}", path=f"/audio/{i}.wav", speaker=f"s{i % 2}", label="x", corpus="csv")
            for i in range(n)]
    writer = StoreWriter(tmp_path / "s.zarr")
    index = writer.plan(rows, num_samples=[16000] * n, features=[spec], capacities={spec.name: lengths})
    rng = np.random.default_rng(0)
    for i, (row, frames) in enumerate(zip(index, lengths)):
        writer.write_utterance(row, {spec.name: rng.normal(size=(frames, 5)).astype(np.float32)},
                               audio_sha256=f"{i:064x}", duration=1.0)
    writer.finalize()
    store = open_store(tmp_path / "s.zarr")
    source = [Source("main", store, resolve_selection("egemaps", specs=store, alias="main"), Normaliser("none"))]
    items = [Item(f"u{i}", f"s{i % 2}", i % 3, 1.0) for i in range(n)]
    return items, lambda chosen: FeatureBatches(chosen, source, classes=["angry", "happy", "sad"], batch_size=4,
                                                max_frames=None)


def test_predicting_feature_batches_with_an_utterance_without_frames_warns_and_names_it(tmp_path):
    """The FeatureBatches side of the warning above: the utterance is named by its id, from the store's
    frame counts."""
    items, batches = _batches_with_frameless(tmp_path, [0 if i == 12 else 8 + i for i in range(13)])
    head = DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(batches(items[:12]))
    with pytest.warns(UserWarning, match=r"DenseHead\.predict: 1 utterance\(s\) have no frames \('u12'\)"):
        assert head.predict_proba(batches(items[10:])).shape == (3, 3)


def test_fitting_on_utterances_without_frames_warns_once_and_names_them():
    """Found by a trial: predict warned of utterances without frames, but fit trained on them without a
    word (each is the head's output for no input, pulled toward its label)."""
    x, y, _ = utterances(12)
    x[2], x[7] = np.zeros((0, 5), np.float32), np.zeros((0, 5), np.float32)
    val_x, val_y, _ = utterances(6, seed=1)
    val_x[4] = np.zeros((0, 5), np.float32)
    with pytest.warns(UserWarning) as caught:
        DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(x, y, validation_data=(val_x, val_y))
    said = [str(w.message) for w in caught if "without frames" in str(w.message)]
    assert said == ["DenseHead.fit: utterances without frames: 2 of x (utterance 2, utterance 7); 1 of "
                    "validation_data (utterance 4). The head sees each as no input (the same for each), so it "
                    "learns their labels for no input, not from speech. Leave them out, or give audio long enough "
                    "for one frame"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # utterances with frames: no warning
        x, y, _ = utterances(12)
        DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(x, y)


def test_fitting_feature_batches_with_an_utterance_without_frames_warns_naming_its_id(tmp_path):
    """The FeatureBatches side of fit's warning: training and validation utterances named by id, and the
    warning points at the caller's line."""
    items, batches = _batches_with_frameless(tmp_path, [0 if i in (3, 14) else 8 + i for i in range(16)])
    with pytest.warns(UserWarning, match=r"DenseHead\.fit: utterances without frames: 1 of x \('u3'\); 1 of "
                                         r"validation_data \('u14'\)\.") as caught:
        DenseHead(units=4, recipe=QUICK, seed=0, run_eagerly=True).fit(batches(items[:12]),
                                                                       validation_data=batches(items[12:]))
    assert [w.filename for w in caught if "without frames" in str(w.message)] == [__file__]
