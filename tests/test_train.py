"""Unit tests of w2v2ser.train: selections, recipes, config keys, protocols, normalisation, heads."""

from __future__ import annotations

import contextlib
import json

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stage2_fixtures import build_store, ravdess_utterances
from w2v2ser.store import FeatureStatistics, W2v2serError, open_store
from w2v2ser.train import (
    ConfigError, DataError, DenseHead, ExperimentConfig, FeatureBatches, Fold, FusionHead, Item, LSTMHead,
    ProtocolError, SelectionError, Source, build_normaliser, check_disjoint, get_protocol, get_recipe,
    parse_selection, plan_runs, resolve_selection,
)
from w2v2ser.train._normalisation import Normaliser


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = build_store(tmp_path_factory.mktemp("stores") / "rav.zarr",
                       utterances=ravdess_utterances(per_actor=2), layers=13, dim=4)
    return open_store(path)


# ----------------------------------------------------------------------------- selections
@pytest.mark.parametrize("text, layers, weighted", [
    ("wav2vec2:local", (0,), False), ("wav2vec2:contextual", (12,), False),
    ("wav2vec2:all", tuple(range(13)), True), ("wav2vec2:6", (6,), False), ("wav2vec2:4-8", (4, 5, 6, 7, 8), True),
    ("egemaps", None, False), ("spectrogram", None, False)])
def test_resolve_selection_forms(store, text, layers, weighted):
    sel = resolve_selection(text, specs=store.features, alias="main")
    assert sel.layers == layers and sel.weighted == weighted
    assert sel.pair_average == (text == "egemaps")
    if text == "egemaps":
        assert sel.frame_rate == pytest.approx(50.0)


@pytest.mark.parametrize("text, fragment", [
    ("wav2vec2:13", "has 13 layers"), ("wav2vec2:4-20", "has 13 layers"), ("wav2vec2", "must say which"),
    ("egemaps:3", "has no layers"), ("mfcc", "holds"), ("egemap", "Did you mean .egemaps."),
    ("wav2vec2:8-4", "reversed")])
def test_resolve_selection_errors(store, text, fragment):
    with pytest.raises(SelectionError, match=fragment):
        resolve_selection(text, specs=store.features, alias="main")


@pytest.mark.parametrize("text", ["wav2vec2:first", "a/b/c", "", "wav2vec2:1:2"])
def test_parse_selection_rejects_garbage_listing_valid_forms(text):
    with pytest.raises(SelectionError, match="valid forms"):
        parse_selection(text)
    assert issubclass(SelectionError, W2v2serError)
    with pytest.raises(SelectionError, match="Did you mean 'contextual'"):
        parse_selection("wav2vec2:contxtual")


@pytest.mark.parametrize("text", ["hubert:-1", "ssl/wavlm:1:2", "data2vec:"])
def test_a_bad_selection_of_another_upstream_lists_that_upstreams_forms(text):
    upstream = text.partition(":")[0].rpartition("/")[2]
    with pytest.raises(SelectionError, match="valid forms") as caught:
        parse_selection(text)
    assert f"{upstream}:N (one layer)" in str(caught.value) and "wav2vec2:" not in str(caught.value)


def test_a_list_of_features_points_to_the_fusion_head():
    with pytest.raises(SelectionError, match="valid forms.*train the fusion head"):
        parse_selection("wav2vec2:all,egemaps")


# ----------------------------------------------------------------------------- recipes / config
def test_recipes_and_overrides():
    paper, official = get_recipe("paper"), get_recipe("official")
    assert (paper.learning_rate, paper.clipvalue, paper.batch_size, paper.patience) == (1e-3, None, 32, 4)
    assert (official.learning_rate, official.clipvalue, official.max_epochs) == (1e-4, 1.0, 100)
    assert get_recipe("official", {"batch_size": 8}).batch_size == 8
    with pytest.raises(ConfigError, match="learning_rate"):
        get_recipe("paper", {"learning_rat": 1.0})
    assert type(paper).from_dict(paper.to_dict()) == paper


def test_config_key_round_trip_and_changes(tmp_path):
    cfg = ExperimentConfig(stores=str(tmp_path), features="wav2vec2:all", protocol="ravdess")
    assert ExperimentConfig.from_dict(cfg.to_dict()).config_key() == cfg.config_key()
    key = cfg.config_key()
    assert ExperimentConfig(stores=str(tmp_path), features="wav2vec2:all", protocol="ravdess", workers=7).config_key() == key
    for change in ({"dropout": 0.3}, {"recipe_overrides": {"learning_rate": 5e-4}}, {"recipe": "official"},
                   {"norm": "global"}, {"max_frames": 100}, {"features": "wav2vec2:local"}, {"batch_size": 16}):
        assert ExperimentConfig(stores=str(tmp_path), **{"features": "wav2vec2:all", "protocol": "ravdess", **change}).config_key() != key
    with pytest.raises(ConfigError, match="(?i)did you mean 'seeds'"):
        ExperimentConfig.from_dict({"stores": str(tmp_path), "sedes": 3})
    with pytest.raises(ConfigError, match="store alias 'asr'"):
        ExperimentConfig(stores=str(tmp_path), features="asr/wav2vec2:all")
    with pytest.raises(ConfigError, match="head"):
        ExperimentConfig(stores=str(tmp_path), head="transformer")


def test_configs_and_recipes_take_numpy_numbers(tmp_path):
    """Found by a notebook session: a grid built with np.arange / np.linspace was refused ("seeds: expected a
    valid integer, got int64 np.int64(2)"), though the heads take numpy numbers; the values are kept as the
    Python numbers they hold, so the config key does not change with their type."""
    plain = ExperimentConfig(stores=str(tmp_path), features="egemaps", protocol="ravdess", seeds=2, units=64,
                             dropout=0.25, recipe_overrides={"max_epochs": 3, "learning_rate": 1e-4})
    given = {"seeds": np.int64(2), "units": np.int32(64), "dropout": np.float32(0.25),
             "recipe_overrides": {"max_epochs": np.int64(3), "learning_rate": np.float64(1e-4)}}
    cfg = ExperimentConfig(stores=str(tmp_path), features="egemaps", protocol="ravdess", **given)
    assert type(cfg.seeds) is int and type(cfg.dropout) is float and cfg.config_key() == plain.config_key()
    as_mapping = ExperimentConfig.from_dict({"stores": str(tmp_path), "features": "egemaps", "protocol": "ravdess",
                                             **given})
    assert as_mapping.config_key() == plain.config_key()
    assert get_recipe("paper", {"max_epochs": np.int64(3)}) == get_recipe("paper", {"max_epochs": 3})
    assert type(get_recipe("paper", {"batch_size": np.int64(8)}).batch_size) is int
    with pytest.raises(ConfigError, match="seeds: expected a value >= 1, got 0"):
        ExperimentConfig(stores=str(tmp_path), features="egemaps", protocol="ravdess", seeds=np.int64(0))


# ----------------------------------------------------------------------------- protocols
def test_protocol_guard_raises_on_overlap():
    with pytest.raises(ProtocolError, match="both train and test"):
        check_disjoint(Fold("f", ("a", "b"), ("c",), ("b",)))
    with pytest.raises(ProtocolError, match="validation partition has no speakers"):
        check_disjoint(Fold("f", ("a",), (), ("b",)))


def test_ravdess_protocol_split_and_labels(store, caplog):
    proto = get_protocol("ravdess")
    assert proto.map_label("calm") == "neutral" and len(proto.classes) == 7 and proto.max_frames == 250
    # IEMOCAP's spellings reach the same classes (an IEMOCAP-style manifest scored by a RAVDESS run).
    assert [proto.map_label(x) for x in ("neu", "Hap", "exc", "ang", "sadness", "fru")] == [
        "neutral", "happy", "happy", "angry", "sad", None]
    (fold,) = proto.make_folds(store.list_utterances(), 5)
    assert len(fold.train) == 20 and fold.validation == ("Actor_21", "Actor_22") and fold.test == ("Actor_23", "Actor_24")


def test_iemocap_protocol_folds_and_dropped_labels(caplog):
    from stage2_fixtures import iemocap_utterances
    from w2v2ser.train._protocols import select_utterances

    proto = get_protocol("iemocap")
    recs = iemocap_utterances()
    with caplog.at_level(logging.WARNING, logger="w2v2ser.train"):
        kept, labels, classes = select_utterances(proto, recs)
    assert "dropped" in caplog.text and set(labels) <= set(classes) and "happiness" in labels
    assert all(r.label not in ("fru", "xxx") for r in kept)
    folds = proto.make_folds(kept, 5)
    assert [f.name for f in folds] == [f"session{k}" for k in range(1, 6)]
    assert folds[0].validation == ("Ses02F", "Ses02M") and folds[4].validation == ("Ses01F", "Ses01M")
    for f in folds:
        check_disjoint(f)
        assert len(f.train) == 6


def test_iemocap_store_without_a_session_is_told_to_use_speaker_folds_not_protocol_csv(caplog):
    """A store without Session5 was told to "use protocol csv", which trains on the raw labels (16
    classes, exc apart); --speaker-folds 4 keeps the 4 classes with one session per fold. The csv
    protocol's warning about split sessions named speaker_folds though csv_folds had set the folds."""
    from stage2_fixtures import iemocap_utterances
    from w2v2ser.train._protocols import select_utterances, speaker_group_folds

    kept, _, _ = select_utterances(get_protocol("iemocap"), iemocap_utterances(), report=False)
    four = [r for r in kept if r.session != "Session5"]
    with pytest.raises(ProtocolError, match=r"no speaker of session\(s\) \[5\]; extract the whole corpus, or keep "
                                            r"this protocol's 4 classes and cross-validate over the 4 sessions "
                                            r"present, one session per fold: --speaker-folds 4 \(speaker_folds: 4\)"
                       ) as error:
        get_protocol("iemocap").make_folds(four, 5)
    assert "csv" not in str(error.value)
    folds = speaker_group_folds(four, 4)  # what --speaker-folds 4 runs
    assert [f.test for f in folds] == [(f"Ses0{s}F", f"Ses0{s}M") for s in range(1, 5)]
    two = [r for r in four if r.session in ("Session1", "Session2")]
    with pytest.raises(ProtocolError, match=r"extract the whole corpus, speaker folds need 3 groups"):
        get_protocol("iemocap").make_folds(two, 5)
    with caplog.at_level(logging.WARNING, logger="w2v2ser.train"):
        get_protocol("csv").make_folds(four, 5)
    assert "Choose csv_folds <= 4 to keep each session in one group" in caplog.text


def test_csv_protocol_split_column_overlap_raises():
    from w2v2ser.store import Utterance

    rows = [Utterance(f"u{i}", "/x", f"s{i % 3}", "a", split=("train", "validation", "test")[i % 3]) for i in range(6)]
    (fold,) = get_protocol("csv").make_folds(rows, 5)
    check_disjoint(fold)
    rows.append(Utterance("bad", "/x", "s0", "a", split="test"))
    with pytest.raises(ProtocolError, match=r"\['s0'\].*train and test"):
        check_disjoint(get_protocol("csv").make_folds(rows, 5)[0])
    # train and test only, as many corpora ship: the message says which partition is missing and the fix
    train_test = [Utterance(f"u{i}", "/x", f"s{i % 4}", "a", split="test" if i % 4 == 3 else "train") for i in range(8)]
    with pytest.raises(ProtocolError, match=r"no validation rows \(it has train, test\).*Mark some speakers' rows "
                                            r"validation.*leave the split column empty"):
        get_protocol("csv").make_folds(train_test, 5)


# ----------------------------------------------------------------------------- normalisation
def _frames(store, speakers, feature="wav2vec2", layers=(0, 12)):
    ids = [r.id for r in store.list_utterances() if r.speaker in speakers]
    return np.concatenate([store.read_utterance(i, feature, layers=list(layers)).astype(np.float64) for i in ids])


def test_global_statistics_use_train_speakers_only(store):
    sel = resolve_selection("wav2vec2:0-12", specs=store.features, alias="main")
    sel = type(sel)(**{**sel.__dict__, "layers": (0, 12)})
    train = [f"Actor_{a:02d}" for a in range(1, 21)]
    norm = build_normaliser(store, sel, "global", train_speakers=train, speakers=store.speakers())
    direct = _frames(store, set(train))
    np.testing.assert_allclose(norm.mean, direct.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(norm.std, direct.std(axis=0), rtol=1e-5)
    leaky = _frames(store, set(store.speakers()))
    assert not np.allclose(norm.mean, leaky.mean(axis=0), atol=1e-3)


def test_speaker_statistics_and_zero_variance_floor(store):
    sel = resolve_selection("egemaps", specs=store.features, alias="main")
    norm = build_normaliser(store, sel, "speaker", train_speakers=[], speakers=["Actor_03"])
    direct = _frames(store, {"Actor_03"}, "egemaps", layers=None) if False else np.concatenate(
        [store.read_utterance(r.id, "egemaps") for r in store.list_utterances() if r.speaker == "Actor_03"])
    np.testing.assert_allclose(norm.speaker_mean["Actor_03"], direct.mean(0), rtol=1e-5, atol=1e-5)

    class Flat:
        def compose_statistics(self, feature, *, speakers, layers, utterances=None):
            return FeatureStatistics(count=10, mean=np.ones(25), variance=np.zeros(25))

    # Found by a trial: a string was split into characters ("speakers ['0', '1', 'A', ...] are not in store").
    for keyword in ({"train_speakers": "Actor_03", "speakers": []}, {"train_speakers": [], "speakers": "Actor_03"}):
        with pytest.raises(ConfigError, match=r"build_normaliser: (train_)?speakers='Actor_03' is a string; expected a "
                                              r"list of speaker names, e.g\. \['Actor_03'\]"):
            build_normaliser(store, sel, "global", **keyword)
    flat = build_normaliser(Flat(), sel, "global", train_speakers=["x"], speakers=["x"])
    out = flat.apply(np.ones((5, 25), np.float32), "x")
    assert np.isfinite(out).all() and (out == 0).all()


# ----------------------------------------------------------------------------- batches
def _items(store, speakers):
    return [Item(r.id, r.speaker, 0, r.duration) for r in store.list_utterances() if r.speaker in speakers]


def test_batches_pair_average_crop_align_and_mask(store):
    sels = {b: resolve_selection(t, specs=store.features, alias="main")
            for b, t in (("main", "wav2vec2:4-8"), ("fusion", "egemaps"))}
    sources = [Source(b, store, s, Normaliser("none")) for b, s in sels.items()]
    items = _items(store, {"Actor_01", "Actor_02"})
    ds = FeatureBatches(items, sources, classes=["a"], batch_size=4, max_frames=20, cache="off")
    x, y = ds[0]
    assert x["main"].shape[2:] == (5, 4) and x["fusion"].shape[2] == 25 and x["main"].shape[1] <= 20
    first = items[0]
    ege = store.read_utterance(first.id, "egemaps").astype(np.float32)
    n = int(x["mask"][0].sum())
    expected = ege[: 2 * n].reshape(n, 2, 25).mean(1)
    np.testing.assert_allclose(x["fusion"][0, :n], expected, rtol=1e-6)
    w = store.read_utterance(first.id, "wav2vec2", layers=[4, 5, 6, 7, 8]).astype(np.float32)
    assert n == min(20, len(w), len(ege) // 2)
    np.testing.assert_array_equal(x["main"][0, :n], w[:n])
    assert (x["main"][0, n:] == 0).all() and (x["mask"][0, n:] == 0).all()


def test_cache_auto_respects_budget(store):
    sel = resolve_selection("egemaps", specs=store.features, alias="main")
    items = _items(store, {"Actor_01"})
    src = [Source("main", store, sel, Normaliser("none"))]
    assert FeatureBatches(items, src, classes=["a"], batch_size=2, max_frames=250).cache_bytes > 0
    assert FeatureBatches(items, src, classes=["a"], batch_size=2, max_frames=250, cache_budget_mb=1e-4).cache_bytes == 0


# ----------------------------------------------------------------------------- heads
@pytest.mark.parametrize("head_cls, shape", [(DenseHead, (3, 4)), (LSTMHead, (4,)), (DenseHead, (4,))])
def test_masked_pooling_ignores_padding(head_cls, shape):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, *shape)).astype(np.float32) for n in (7, 12, 30)]
    head = head_cls(units=8, recipe=get_recipe("paper", {"max_epochs": 1, "batch_size": 3}), seed=1).fit(xs, [0, 1, 0])
    alone = head.predict_proba([xs[0]])
    padded = head.predict_proba([xs[0], xs[2]])[0]  # padded to 30 frames
    np.testing.assert_allclose(alone[0], padded, rtol=1e-5, atol=1e-6)
    assert head.predict([xs[1]]).shape == (1,) and head.history_["epochs"] == 1
    if len(shape) == 2:
        assert len(head.layer_weights_["main"]) == 3 and min(head.layer_weights_["main"]) >= 0


def test_fusion_head_on_arrays():
    rng = np.random.default_rng(1)
    x = {"main": [rng.standard_normal((n, 4)).astype(np.float32) for n in (5, 9)],
         "fusion": [rng.standard_normal((n, 25)).astype(np.float32) for n in (6, 8)]}
    head = FusionHead(units=8, recipe=get_recipe("paper", {"max_epochs": 1}), classes=["a", "b"]).fit(x, [0, 1])
    assert set(head.predict(x)) <= {"a", "b"}
    assert any(layer.name == "fusion_block1_dense" for layer in head.model_.layers)


def test_stage2_never_imports_torch():
    code = "import sys, w2v2ser.train, w2v2ser.store; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent).returncode == 0
    # Nor stage 1's package (0.8 s of imports), also where stage 2 asks which features are upstreams.
    code = ("import sys, w2v2ser.train, w2v2ser.evaluate\n"
            "from w2v2ser.evaluate._paper import row_identity\n"
            "assert row_identity('w2v2/wav2vec2:all', 'facebook/wav2vec2-base')[1] == 'all layers'\n"
            "sys.exit(1 if 'w2v2ser.extract' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_dir_of_the_lazy_packages_lists_their_lazy_names():
    """Found by a notebook session: `w2v2ser.train.<TAB>` never offered DenseHead (nor extract's
    Wav2Vec2Config), which load on first access, since dir() left them out; dir() still imports nothing."""
    code = ("import sys, w2v2ser.train as t, w2v2ser.extract as e\n"
            "missing = [n for m in (t, e) for n in m.__all__ if n not in dir(m)]\n"
            "assert not missing, missing\n"
            "assert 'keras' not in sys.modules and 'torch' not in sys.modules\n"
            "import rlcompleter\n"
            "print(rlcompleter.Completer({'t': t}).complete('t.DenseH', 0))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "t.DenseHead("


# ----------------------------------------------------------------------------- protocol of a store
def test_protocol_of_corpora_takes_the_single_known_corpus():
    from w2v2ser.train import protocol_of_corpora

    assert [protocol_of_corpora([c], store="s") for c in ("ravdess", "iemocap", "csv")] == ["ravdess", "iemocap", "csv"]
    for corpora, shown in ((["csv", "ravdess"], r"it holds several corpora \(csv, ravdess\)"),
                           ([], "its corpus is not recorded"), (["emodb"], r"its corpus is \['emodb'\]")):
        with pytest.raises(ProtocolError, match=f"store s: {shown}.*pass --protocol"):
            protocol_of_corpora(corpora, store="s")
    # --subset corpus=X keeps one corpus kind, or names a CSV manifest's own corpus column (review M1: the
    # refusal told the user to do what they had just done).
    assert protocol_of_corpora(["csv", "ravdess"], store="s", subset="ravdess") == "ravdess"
    assert protocol_of_corpora(["csv", "iemocap", "ravdess"], store="s", subset=["crema"]) == "csv"
    with pytest.raises(ProtocolError, match="several corpora"):
        protocol_of_corpora(["iemocap", "ravdess"], store="s", subset=["crema"])


def test_ravdess_protocol_on_speakers_without_actors_23_24_names_them():
    from stage2_fixtures import iemocap_utterances

    with pytest.raises(ProtocolError, match=r"test speakers from actors 23-24.*'Ses01F'.*--protocol iemocap"):
        get_protocol("ravdess").make_folds(iemocap_utterances(), 5)


def test_train_command_takes_the_protocol_of_the_store(tmp_path, capsys):
    """An IEMOCAP store trains leave-one-session-out without --protocol; --protocol ravdess is a clear error."""
    import json

    from stage2_fixtures import build_store
    from w2v2ser._cli import main

    path = build_store(tmp_path / "iemocap.zarr", corpus="iemocap", layers=2, dim=4)
    common = ["train", str(path), "--features", "egemaps", "--seeds", "1", "--set", "max_epochs=1", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert sorted({r["fold"] for r in results["runs"]}) == [f"session{k}" for k in range(1, 6)]
    assert "/ iemocap: UAR" in capsys.readouterr().out
    # A run on a subset (or over speaker folds) says so, as the report's row does.
    assert main([*common, "--subset", "gender=female", "--speaker-folds", "5", "--out", str(tmp_path / "f")]) == 0
    assert "/ iemocap (gender=female; 5 speaker folds): UAR" in capsys.readouterr().out
    assert main([*common, "--protocol", "ravdess", "--out", str(tmp_path / "wrong")]) == 2
    assert "ravdess protocol takes its test speakers from actors 23-24" in capsys.readouterr().err
    assert not (tmp_path / "wrong").exists()  # a refused command leaves no empty run folder to confuse reports
    assert main(["sweep", str(path), "--features", "wav2vec2:9", "--out", str(tmp_path / "wrong")]) == 2
    assert "has 2 layers" in capsys.readouterr().err and not (tmp_path / "wrong").exists()


def test_a_store_of_one_class_is_refused_not_scored_100(tmp_path, capsys):
    """A CSV manifest whose rows all carry one label trained and reported UAR 100.0 (every
    prediction is right), with scikit-learn and Keras warnings on the way."""
    import dataclasses

    from stage2_fixtures import build_store
    from w2v2ser._cli import main

    rows = [dataclasses.replace(u, label="sad", corpus="csv", extra={}) for u in ravdess_utterances(per_actor=2)]
    path = build_store(tmp_path / "sad.zarr", utterances=rows, layers=2, dim=4)
    for command, features in (("train", "egemaps"), ("sweep", "wav2vec2")):
        code = main([command, str(path), "--features", features, "--protocol", "csv", "--seeds", "1",
                     "--set", "max_epochs=1", "--no-progress", "--out", str(tmp_path / command)])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "all 48 utterances of the store are labelled 'sad'; emotion recognition needs at least two" in err
        assert not (tmp_path / command).exists()
    with pytest.raises(DataError, match="every label in y is 'sad'; a classifier needs labels of at least two"):
        DenseHead(units=4).fit([np.zeros((3, 2), np.float32)] * 4, ["sad"] * 4)


def test_training_says_how_many_utterances_failed_extraction(tmp_path, caplog):
    """Utterances whose extraction failed were left out of training without a word, so the
    counts a user compares with a paper's were off for no visible reason."""
    from stage2_fixtures import build_store
    from w2v2ser._cli import main

    path = build_store(tmp_path / "some failed.zarr", utterances=ravdess_utterances(per_actor=2), layers=2, dim=4,
                       failures={0: "AudioError: cannot decode", 5: "AudioError: file not found"})
    with caplog.at_level(logging.WARNING, logger="w2v2ser.train"):
        code = main(["train", str(path), "--features", "egemaps", "--seeds", "1", "--set", "max_epochs=1",
                     "--no-progress", "--out", str(tmp_path / "run")])
    err = caplog.text
    assert code == 0, err
    ids = [u.id for u in ravdess_utterances(per_actor=2)]
    assert (f"2 utterance(s) failed extraction and are left out ({', '.join(sorted([ids[0], ids[5]]))}); "
            f"`w2v2ser store info '{path}'` gives the reasons") in err


def test_set_takes_recipe_and_experiment_keys_and_names_a_misspelt_one(tmp_path, capsys):
    from stage2_fixtures import build_store
    from w2v2ser._cli import main

    path = build_store(tmp_path / "rav.zarr", utterances=ravdess_utterances(per_actor=1), layers=2, dim=4)
    for command in ("train", "sweep"):
        features = "egemaps" if command == "train" else "wav2vec2"
        code = main([command, str(path), "--features", features, "--set", "max_epoch=3", "--out", str(tmp_path / "x")])
        assert code == 2
        err = capsys.readouterr().err
        assert "--set 'max_epoch=3': unknown key 'max_epoch'. Did you mean 'max_epochs'?" in err
        assert "learning_rate" in err and "units" in err  # both kinds of key are listed
    assert not (tmp_path / "x").exists()


def test_set_takes_the_pipeline_spelling_of_recipe_keys():
    """pipeline.yaml writes `recipe_overrides: {max_epochs: 2}`; `--set recipe_overrides.max_epochs=2`,
    copied from there, was an unknown key."""
    from w2v2ser._cli_train import _apply_settings
    from w2v2ser._common import ConfigError

    values: dict = {}
    _apply_settings(values, ["recipe_overrides.max_epochs=2", "learning_rate=3e-4", "units=64"])
    assert values == {"units": 64, "recipe_overrides": {"max_epochs": 2, "learning_rate": 3e-4}}
    with pytest.raises(ConfigError, match="unknown key 'recipe_overrides.units'"):
        _apply_settings({}, ["recipe_overrides.units=64"])  # not a recipe key


def test_subset_and_speaker_folds_on_the_command_line(tmp_path, capsys):
    """``--subset FIELD=V1,V2`` (repeatable) is the experiment's subset, and ``--speaker-folds K`` its
    speaker folds, for train and sweep alike."""
    from stage2_fixtures import build_store
    from w2v2ser._cli import main

    path = build_store(tmp_path / "rav.zarr", utterances=ravdess_utterances(per_actor=2), layers=2, dim=4)
    assert main(["train", str(path), "--features", "egemaps", "--seeds", "1", "--set", "max_epochs=1",
                 "--subset", "vocal_channel=speech", "--subset", "gender=female,male", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 0
    recorded = json.loads((tmp_path / "run" / "experiment.json").read_text())["subset"]
    assert recorded == {"gender": ["female", "male"], "vocal_channel": ["speech"]}
    assert main(["sweep", str(path), "--features", "wav2vec2", "--seeds", "1", "--set", "max_epochs=1",
                 "--subset", "vocal_channel=song", "--speaker-folds", "3", "--no-progress",
                 "--out", str(tmp_path / "sweep")]) == 0
    recorded = json.loads((tmp_path / "sweep" / "all" / "experiment.json").read_text())
    assert (recorded["subset"], recorded["speaker_folds"]) == ({"vocal_channel": ["song"]}, 3)
    from w2v2ser.evaluate import write_report

    write_report([tmp_path / "run", tmp_path / "sweep"], out=tmp_path / "report")
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [line["label"] for line in report["layer_sweep"]["series"]] == [
        "wav2vec2 (pretrained) (vocal_channel=song; 3 speaker folds)"]
    assert "| eGeMAPS (gender=female,male; vocal_channel=speech) |" in (tmp_path / "report" / "report.md").read_text()
    capsys.readouterr()
    for args, problem in [(["--subset", "vocal_channel"], "argument --subset: expected FIELD=VALUE[,VALUE...]"),
                          (["--subset", "vocal_channel=speech", "--set", "subset={gender: male}"],
                           "subset is given both with --subset and with --set subset"),
                          (["--subset", "channel=speech"], "records 'channel'; fields recorded: "),
                          (["--speaker-folds", "2"], "argument --speaker-folds: expected an integer >= 3, got 2"),
                          (["--speaker-folds", "4", "--set", "speaker_folds=3"],
                           "speaker_folds is given both with --speaker-folds and with --set speaker_folds"),
                          # An option and a --set of the same key: the --set won without a word.
                          (["--seeds", "1", "--set", "seeds=2"], "seeds is given both with --seeds and with --set"),
                          (["--protocol", "ravdess", "--set", "protocol=csv"],
                           "protocol is given both with --protocol and with --set protocol"),
                          (["--set", "features=spectrogram"], "features is given both with --features and with --set")]:
        with pytest.raises(SystemExit) if args[-1] in ("vocal_channel", "2") else contextlib.nullcontext():
            assert main(["train", str(path), "--features", "egemaps", *args, "--out", str(tmp_path / "x")]) == 2
        assert problem in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_output_folder_inside_a_store_is_refused(tmp_path, capsys):
    """`train S --out S` wrote experiment.json, results.json and runs/ among the store's arrays (exit 0),
    as `evaluate --out S` its report and `extract --store S/new.zarr` a store inside the store;
    `store export` already refused a path inside the store."""
    from w2v2ser._cli import main

    store = build_store(tmp_path / "s.zarr", utterances=ravdess_utterances(per_actor=2), layers=2, dim=4,
                        features=("wav2vec2",))
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    common = ["--seeds", "1", "--set", "max_epochs=1", "--no-progress"]
    for argv, said in [
        (["train", str(store), "--features", "wav2vec2:1", "--out", str(store), *common], "is the feature store"),
        (["train", str(store), "--features", "wav2vec2:1", "--out", f"file://{store}", *common],
         "is the feature store"),
        (["train", str(store), "--features", "wav2vec2:1", "--out", str(store / "runs" / "a"), *common],
         f"is inside the feature store {store.resolve()}"),
        (["sweep", str(store), "--features", "wav2vec2", "--out", str(store / "sweep"), *common],
         "is inside the feature store"),
        (["evaluate", str(tmp_path), "--out", str(store / "report")], "is inside the feature store"),
        (["extract", "csv", str(tmp_path / "m.csv"), "--store", str(store / "new.zarr"), "--features", "egemaps"],
         "is inside the feature store"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert said in err and "Choose a path outside" in err, err
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before


def test_the_python_api_refuses_an_output_folder_inside_a_store_as_the_cli_does(tmp_path):
    """train_experiment(out=S) and extract_corpus(..., S/new.zarr) wrote run files into the store and a
    store inside the store: only the CLI checked."""
    from w2v2ser.extract import build_extractor, extract_corpus
    from w2v2ser.train import ConfigError, train_experiment

    store = build_store(tmp_path / "s.zarr", utterances=ravdess_utterances(per_actor=2), layers=2, dim=4,
                        features=("wav2vec2",))
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    config = {"stores": {"main": str(store)}, "features": "wav2vec2:1", "seeds": 1,
              "recipe_overrides": {"max_epochs": 1}}
    with pytest.raises(ConfigError, match=f"out {store} is the feature store, .* Choose a path outside {store}"):
        train_experiment(config, out=store, progress=False)
    with pytest.raises(ConfigError, match=f"is inside the feature store {store.resolve()}"):
        train_experiment(config, out=store / "runs", progress=False)
    with pytest.raises(ConfigError, match=f"store_path {store / 'new.zarr'} is inside the feature store"):
        extract_corpus([], store / "new.zarr", extractors=[build_extractor("egemaps", {})], progress=False)
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_seeds_below_one_are_refused_by_the_parser(tmp_path, capsys, command):
    from w2v2ser._cli import main

    with pytest.raises(SystemExit) as stop:
        main([command, str(tmp_path / "s.zarr"), "--features", "egemaps", "--seeds", "0", "--out", str(tmp_path / "r")])
    assert stop.value.code == 2
    assert "argument --seeds: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_fusion_features_read_the_fusion_store_and_selection_errors_name_the_store(tmp_path, capsys):
    """`--fusion-store S --fusion-features egemaps` read eGeMAPS from the MAIN store (or failed on
    it), ignoring S; `--fusion-store` with another head was ignored without a word; a selection
    error named the store by the internal alias 'main'."""
    import json

    from stage2_fixtures import build_store
    from w2v2ser._cli import main

    rows = ravdess_utterances(per_actor=2)
    main_store = build_store(tmp_path / "w2v.zarr", utterances=rows, layers=3, dim=4, features=("wav2vec2", "egemaps"))
    fusion_store = build_store(tmp_path / "classic.zarr", utterances=rows, egemaps_dim=7, features=("egemaps",))
    common = ["train", str(main_store), "--seeds", "1", "--set", "max_epochs=1", "--no-progress"]
    out = tmp_path / "fusion"
    assert main([*common, "--features", "wav2vec2:all", "--head", "fusion", "--fusion-store", str(fusion_store),
                 "--fusion-features", "egemaps", "--out", str(out)]) == 0
    metrics = json.loads(next((out / "runs").glob("*/metrics.json")).read_text())
    fused = metrics["selections"]["fusion"]
    assert (fused["alias"], fused["dim"]) == ("fusion", 7)  # the fusion store's 7-dim eGeMAPS, not main's 25
    capsys.readouterr()

    assert main([*common, "--features", "egemaps", "--fusion-store", str(fusion_store),
                 "--out", str(tmp_path / "dense")]) == 2
    assert "--fusion-store" in capsys.readouterr().err and not (tmp_path / "dense").exists()

    assert main([*common, "--features", "hubert:all", "--out", str(tmp_path / "hubert")]) == 2
    err = capsys.readouterr().err
    assert f"is not in store {main_store}; it holds ['egemaps', 'wav2vec2']" in err
    assert "Did you mean 'wav2vec2:all'?" in err and "'main'" not in err


def test_fusion_of_a_feature_with_itself_is_refused(tmp_path):
    """`train --features egemaps --head fusion` fused eGeMAPS with itself and reported it as a Fusion result."""
    from w2v2ser._common import ConfigError
    from w2v2ser.train import ExperimentConfig

    with pytest.raises(ConfigError, match="read the same frames"):
        ExperimentConfig(stores=str(tmp_path / "s.zarr"), features="egemaps", head="fusion")
    with pytest.raises(ConfigError, match="read the same frames"):
        ExperimentConfig(stores={"main": str(tmp_path / "s.zarr"), "fusion": str(tmp_path / "s.zarr")},
                         features="main/egemaps", head="fusion")
    ExperimentConfig(stores=str(tmp_path / "s.zarr"), features="wav2vec2:all", head="fusion", protocol="ravdess")
    ExperimentConfig(stores=str(tmp_path / "s.zarr"), features="spectrogram", head="fusion", protocol="ravdess")


def test_experiment_config_takes_the_protocol_of_its_store_like_the_cli(tmp_path):
    """A researcher's ExperimentConfig without protocol reads the main store's corpus, as ``w2v2ser
    train`` without --protocol does (the default was "ravdess", which refused a CSV or IEMOCAP store)."""
    from dataclasses import replace

    from stage2_fixtures import build_store, iemocap_utterances, ravdess_utterances

    small = {"layers": 2, "dim": 4, "features": ("egemaps",)}
    iemocap = build_store(tmp_path / "iem.zarr", corpus="iemocap", **small)
    csv = build_store(tmp_path / "csv.zarr", utterances=[replace(u, corpus="csv") for u in ravdess_utterances(per_actor=1)],
                      **small)
    assert ExperimentConfig(stores=str(iemocap), features="egemaps").protocol == "iemocap"
    assert ExperimentConfig(stores=str(csv), features="egemaps").protocol == "csv"
    assert ExperimentConfig.from_dict({"stores": str(csv), "features": "egemaps", "protocol": None}).protocol == "csv"
    # given, it is kept (and no store is opened)
    assert ExperimentConfig(stores=str(tmp_path / "none.zarr"), features="egemaps", protocol="csv").protocol == "csv"
    with pytest.raises(ConfigError, match=r"protocol not given.*none\.zarr.*Pass protocol='ravdess', 'iemocap' or 'csv'"):
        ExperimentConfig(stores=str(tmp_path / "none.zarr"), features="egemaps")
    mixed = build_store(tmp_path / "mixed.zarr", utterances=[*ravdess_utterances(per_actor=1), *iemocap_utterances()[:4]],
                        **small)
    with pytest.raises(ProtocolError, match=r"cannot tell the protocol.*ExperimentConfig\(protocol=\.\.\.\)"):
        ExperimentConfig(stores=str(mixed), features="egemaps")


def test_speaker_folds_keep_the_speakers_of_a_session_together(caplog):
    """IEMOCAP's two speakers of a session record the same dialogs (each microphone picks up the
    partner). Cut over sorted speakers, 3 folds tested Ses04F while Ses04M trained; now sessions
    stay whole when there are enough of them, and a warning says when they cannot."""
    import logging
    from types import SimpleNamespace

    from w2v2ser.train._protocols import speaker_group_folds

    records = [SimpleNamespace(speaker=f"Ses{s:02d}{g}", session=f"Session{s}", id=f"Ses{s:02d}{g}_x")
               for s in range(1, 6) for g in "FM"]
    session_of = lambda speaker: speaker[:5]  # noqa: E731
    for k in (3, 4, 5):
        folds = speaker_group_folds(records, k)
        assert len(folds) == k
        for fold in folds:
            tested = {session_of(s) for s in fold.test}
            assert not tested & {session_of(s) for s in fold.train + fold.validation}, (k, fold)
    assert [f.test for f in speaker_group_folds(records, 3)] == [
        ("Ses01F", "Ses01M", "Ses02F", "Ses02M"), ("Ses03F", "Ses03M", "Ses04F", "Ses04M"), ("Ses05F", "Ses05M")]
    with caplog.at_level(logging.WARNING, logger="w2v2ser.train"):
        assert len(speaker_group_folds(records, 6)) == 6
    assert "6 speaker folds split sessions whose speakers were recorded together" in caplog.text
    # One speaker per session (or no sessions): the sorted speakers are cut, as before.
    alone = [SimpleNamespace(speaker=f"spk{k}", session=f"S{k}" if k % 2 else "", id=str(k)) for k in range(6)]
    assert [f.test for f in speaker_group_folds(alone, 3)] == [("spk0", "spk1"), ("spk2", "spk3"), ("spk4", "spk5")]


def test_csv_folds_say_what_they_did_with_a_partial_split_column_or_too_few_speakers(caplog):
    """A split column empty on some rows was refused as "split values [''] are not
    train/validation/test", naming no row; csv_folds above the number of speakers was lowered
    without a word, and csv_folds=2 passed the config check, then the protocol refused it."""
    import logging
    from types import SimpleNamespace

    from w2v2ser.train import ExperimentConfig
    from w2v2ser.train._protocols import get_protocol

    make_folds = get_protocol("csv").make_folds

    def rows(splits):
        return [SimpleNamespace(id=f"u{k}", speaker=f"spk{k % 4}", split=split, session="")
                for k, split in enumerate(splits)]

    with pytest.raises(ProtocolError, match=r"2 utterance\(s\) of the CSV manifest have no split \(e.g. \['u3', "
                                            r"'u7'\]; speakers \['spk3'\]\) while the others have one"):
        make_folds(rows(["train", "validation", "test", "", "train", "validation", "test", ""]), 5)
    with caplog.at_level(logging.WARNING, logger="w2v2ser.train"):
        assert len(make_folds(rows([""] * 8), 20)) == 4
    assert "csv_folds=20 but the utterances have 4 speakers: 4 folds of one speaker each" in caplog.text
    with pytest.raises(W2v2serError, match="csv_folds"):
        ExperimentConfig(stores="s.zarr", features="egemaps", csv_folds=2)


def test_a_key_set_twice_with_set_takes_the_last_value_as_before():
    """Found in review: refusing a key given both as an option and with --set also refused
    `--set units=64 --set units=128` (naming an option --units that does not exist)."""
    from w2v2ser._cli_train import _apply_settings

    values = {"seeds": 1}
    _apply_settings(values, ["units=64", "units=128", "max_epochs=2", "max_epochs=3"])
    assert values["units"] == 128 and values["recipe_overrides"] == {"max_epochs": 3}
    with pytest.raises(W2v2serError, match="seeds is given both with --seeds and with --set"):
        _apply_settings({"seeds": 1}, ["seeds=2"])


def test_a_run_of_another_split_of_the_speakers_is_trained_again(tmp_path):
    """Speaker folds that changed (sessions now kept together) must not pool a finished run of the
    old fold with runs of the new ones."""
    from w2v2ser.train._fingerprints import _complete

    run = tmp_path / "runs" / "group1__seed0"
    run.mkdir(parents=True)
    split = {"train": ["a", "b"], "validation": ["c"], "test": ["d"]}
    metrics = {"config_key": "k", "data_fingerprint": "d", "store_fingerprint": "f", "split": split,
               "n_test": 0}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "predictions.csv").write_text("id,label,predicted\n")
    assert _complete(run, ["k"], ["f"], "d", split) is not None
    assert _complete(run, ["k"], ["f"], "d", {**split, "test": ["e"]}) is None
    assert _complete(run, ["k"], ["f"], "d") is not None  # callers that do not know the split


def test_a_subset_without_test_speakers_is_named_not_the_store(tmp_path, capsys):
    """Found by a pipeline trial: a subset keeping Actor_01 only was refused with "the store has none
    of them; its 1 speakers are ['Actor_01']. Extract the whole RAVDESS corpus, or ... --protocol": the
    store had actors 23-24; the subset left them out."""
    from stage2_fixtures import build_store
    from w2v2ser._cli import main

    path = build_store(tmp_path / "rav.zarr", utterances=ravdess_utterances(per_actor=2), layers=2, dim=4)
    assert main(["train", str(path), "--features", "egemaps", "--subset", "speaker=Actor_01,Actor_02",
                 "--no-progress", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert ("subset speaker=Actor_01,Actor_02 leaves no test speaker (the ravdess protocol's test speakers are "
            "actors 23-24): it keeps 2 speaker(s) ['Actor_01', 'Actor_02'] of store ") in err
    assert "Widen the subset, or cross-validate over its speakers with speaker_folds" in err
    assert "Extract the whole" not in err and "--protocol" not in err
    # A store without them keeps the store's message, subset or not.
    small = build_store(tmp_path / "small.zarr", utterances=ravdess_utterances(per_actor=2, actors=22),
                        layers=2, dim=4)
    assert main(["train", str(small), "--features", "egemaps", "--subset", "speaker=Actor_01,Actor_22",
                 "--no-progress", "--out", str(tmp_path / "run")]) == 2
    assert "but the store has none of them" in capsys.readouterr().err


def test_a_fused_store_without_the_test_speakers_is_not_blamed_on_the_subset(tmp_path):
    """Found in review: only the main store was checked, so a fusion whose second store lacks actors
    23-24 was told to widen the subset, which could never help."""
    from stage2_fixtures import build_store
    from w2v2ser.train import ExperimentConfig, ProtocolError, plan_runs
    from w2v2ser._text import subset_text

    main = build_store(tmp_path / "main.zarr", utterances=ravdess_utterances(per_actor=2), layers=2, dim=4)
    part = build_store(tmp_path / "part.zarr", utterances=ravdess_utterances(per_actor=2, actors=22), layers=2,
                       dim=4)
    subset = {"speaker": ["Actor_01", "Actor_02"]}
    fused = ExperimentConfig(stores={"main": str(main), "b": str(part)}, features="egemaps", head="fusion",
                             fusion_features="b/wav2vec2:1", subset=subset)
    with pytest.raises(ProtocolError) as refused:
        plan_runs(fused)
    assert "Widen the subset" not in str(refused.value) and "none of them" in str(refused.value)
    # Both stores holding the test speakers: the subset is named, as the report names it.
    both = ExperimentConfig(stores={"main": str(main), "b": str(main)}, features="egemaps", head="fusion",
                            fusion_features="b/wav2vec2:1", subset=subset)
    with pytest.raises(ProtocolError, match="subset speaker=Actor_01,Actor_02 leaves no test speaker"):
        plan_runs(both)
    assert subset_text({"speaker": "Actor_01", "method": ["a", "b"]}) == "method=a,b; speaker=Actor_01"


def test_fusion_on_a_store_without_egemaps_says_how_to_name_the_store_that_has_it(tmp_path):
    """Found with a store of upstreams only: `train --head fusion` said to extract eGeMAPS into it, not to
    give the store that holds it (--fusion-store)."""
    store = build_store(tmp_path / "ssl.zarr", utterances=ravdess_utterances(per_actor=1), features=("wav2vec2",))
    config = ExperimentConfig(stores=str(store), features="wav2vec2:all", head="fusion", seeds=1)
    with pytest.raises(SelectionError, match="'egemaps'.*is not in") as caught:
        plan_runs(config)
    assert "--fusion-store STORE" in str(caught.value) and "fusion_features: STORE/FEATURE" in str(caught.value)


def test_planning_reads_the_utterance_table_into_records_once(store, monkeypatch):
    """plan_runs built every record of the utterance table twice (the done ones, then all of them for
    the statistics), both lists alive together: 440 MB of a 150,000-utterance store's 1.0 GB planning
    peak. The done records are now those of the one full read."""
    from w2v2ser.store import FeatureStore

    built: list[int] = []
    original = FeatureStore.list_utterances

    def counting(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if kwargs.get("feature") is None:  # a read of the whole table (not of the rows holding a feature)
            built.append(len(out))
        return out

    monkeypatch.setattr(FeatureStore, "list_utterances", counting)
    specs = plan_runs(ExperimentConfig(stores=str(store.path), features="egemaps", protocol="ravdess", seeds=1))
    monkeypatch.undo()
    assert built == [len(store.list_utterances(status=None))], built
    assert specs and {s.fold for s in specs} == {"split"}
