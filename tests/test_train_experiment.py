"""End-to-end tests of w2v2ser.train on tiny random stores (1 epoch, tiny widths)."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from stage2_fixtures import another_thread_drawing_random_numbers, build_store, ravdess_utterances
from w2v2ser.store import open_store
from w2v2ser.train import (
    ConfigError, DataError, ExperimentConfig, SelectionError, load_normalisers, plan_runs, summarize_runs, train_experiment,
    train_run,
)

FAST = {"recipe_overrides": {"max_epochs": 1}, "units": 8, "seeds": 1, "workers": 2, "run_eagerly": True}


@pytest.fixture(scope="module")
def rav(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    utts = ravdess_utterances(per_actor=2)
    main = build_store(root / "pre.zarr", utterances=utts, layers=13, dim=4)
    asr = build_store(root / "asr.zarr", utterances=utts, layers=13, dim=4, seed=1, config_tag="asr",
                      features=("wav2vec2",))
    return {"main": str(main), "asr": str(asr)}


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory):
    return str(build_store(tmp_path_factory.mktemp("stores") / "iem.zarr", corpus="iemocap", layers=3, dim=4,
                           features=("wav2vec2", "egemaps")))


@pytest.mark.parametrize("head, features, norm", [
    ("dense", "wav2vec2:local", "speaker"), ("dense", "wav2vec2:contextual", "global"),
    ("dense", "wav2vec2:all", "none"), ("dense", "wav2vec2:4-8", "speaker"), ("dense", "egemaps", "global"),
    ("dense", "spectrogram", "speaker"), ("lstm", "wav2vec2:all", "global"), ("lstm", "egemaps", "none"),
    ("fusion", "wav2vec2:all", "speaker"), ("fusion", "asr/wav2vec2:6", "global")])
def test_train_run_every_head_selection_norm(rav, tmp_path, head, features, norm):
    cfg = ExperimentConfig(stores=rav, features=features, head=head, norm=norm, **FAST)
    (spec,) = plan_runs(cfg)
    res = train_run(cfg, spec, out=tmp_path, threads=1)
    run = tmp_path / "runs" / "split__seed0"
    assert not res.skipped and 0.0 <= res.uar <= 1.0 and res.n_test == 4
    for name in ("model.keras", "predictions.csv", "history.json", "metrics.json", "normalisation.npz"):
        assert (run / name).exists(), name
    weighted = features.endswith((":all", ":4-8"))
    assert (run / "layer_weights.json").exists() == weighted
    hist = json.loads((run / "history.json").read_text())
    assert len(hist["epoch_seconds"]) == len(hist["input_seconds"]) == 1
    model = keras.saving.load_model(run / "model.keras")
    assert model.output_shape[-1] == 7
    norms = load_normalisers(run / "normalisation.npz")
    assert norms["main"].mode == norm
    if norm == "global":  # stats of the training speakers, composed from the store
        st = open_store(rav["asr" if features.startswith("asr/") else "main"])
        sel_feature = features.split("/")[-1].split(":")[0]
        layers = {"wav2vec2:contextual": [12], "asr/wav2vec2:6": [6], "wav2vec2:all": None}.get(features)
        ref = st.compose_statistics(sel_feature, speakers=list(spec.train), layers=layers
                                    if sel_feature == "wav2vec2" else None)
        np.testing.assert_allclose(norms["main"].mean.ravel(), np.asarray(ref.mean).ravel(), rtol=1e-6)


def test_a_fusion_store_whose_extraction_failed_for_an_utterance_leaves_it_out(tmp_path, caplog):
    """Review s67: a file done in the fusion store without the fused feature (its extraction failed there)
    refused the whole experiment ("fused stores must be extracted from the same manifest"); a failure in the
    main store leaves the utterance out with a warning, and now one in the fusion store does too."""
    from w2v2ser.store import StoreWriter
    from w2v2ser.train import plan_runs

    main = build_store(tmp_path / "w.zarr", layers=3, dim=4, features=("wav2vec2",))
    fused = build_store(tmp_path / "e.zarr", features=("egemaps", "spectrogram"))
    row = open_store(fused).list_utterances()[0]
    writer = StoreWriter(fused)
    writer.record_failure(row.index, feature="egemaps", reason="openSMILE refused it")
    writer.finalize()
    assert row.id not in {r.id for r in open_store(fused).list_utterances(feature="egemaps")}
    cfg = ExperimentConfig(stores={"main": str(main), "fusion": str(fused)}, features="wav2vec2:all", head="fusion",
                           fusion_features="fusion/egemaps", protocol="ravdess", seeds=1)
    with caplog.at_level(logging.WARNING):
        runs = plan_runs(cfg)
    assert runs and "1 utterance(s) failed extraction of egemaps and are left out" in caplog.text, caplog.text
    assert row.id in caplog.text


def test_fusion_frame_rate_mismatch_raises(rav):
    cfg = ExperimentConfig(stores=rav, features="wav2vec2:all", head="fusion", fusion_features="spectrogram", **FAST)
    with pytest.raises(SelectionError, match="frame rates"):
        plan_runs(cfg)


def test_iemocap_five_folds_results_and_resume(iemocap, tmp_path, capsys, caplog):
    cfg = ExperimentConfig(stores=iemocap, features="wav2vec2:all", protocol="iemocap", norm="global", **FAST)
    with caplog.at_level(logging.WARNING, logger="w2v2ser.train"):
        results = train_experiment(cfg, out=tmp_path)
    for key in ("uar_mean", "uar_std", "uar_per_run", "accuracy_mean", "n_test", "classes", "confusion", "config",
                "splits", "layer_weights", "timing", "uar_pooled_per_seed", "uar_pooled_mean"):
        assert key in results, key
    assert len(results["uar_per_run"]) == 5 and results["classes"] == ["neutral", "happiness", "anger", "sadness"]
    assert results["splits"]["session3"]["validation"] == ["Ses04F", "Ses04M"]
    assert np.sum(results["confusion"]) == results["n_test"]
    assert {"epoch_seconds_mean", "input_share", "peak_rss_mb"} <= set(results["timing"])
    assert json.loads((tmp_path / "results.json").read_text())["uar_mean"] == results["uar_mean"]
    assert "run 5/5 fold=session5" in capsys.readouterr().out
    # The labels outside the protocol are reported once, not once per run (7 times before).
    assert caplog.text.count("dropped") == 1 and "'fru'" in caplog.text

    mtime = (tmp_path / "runs" / "session1__seed0" / "model.keras").stat().st_mtime_ns
    again = train_experiment(cfg, out=tmp_path)
    assert capsys.readouterr().out.count("already complete") == 5
    assert again["uar_per_run"] == results["uar_per_run"]
    assert (tmp_path / "runs" / "session1__seed0" / "model.keras").stat().st_mtime_ns == mtime

    assert caplog.text.count("dropped") == 1  # resuming, or planning again in this process: not again
    changed = ExperimentConfig.from_dict({**cfg.to_dict(), "dropout": 0.1})
    assert changed.config_key() != cfg.config_key()
    spec = plan_runs(changed)[0]
    assert not train_run(changed, spec, out=tmp_path).skipped
    assert summarize_runs(changed, tmp_path)["n_runs"] == 1  # the four stale runs are not mixed in


def test_runs_and_results_record_what_they_were_made_with(tmp_path):
    """metrics.json and results.json name the package versions (read without importing torch),
    the command line, host and TensorFlow's thread counts, to reproduce a run."""
    import sys

    import w2v2ser

    store = build_store(tmp_path / "s.zarr", utterances=ravdess_utterances(per_actor=2), features=("egemaps",))
    cfg = ExperimentConfig(stores={"main": str(store)}, features="egemaps", **FAST)
    results = train_experiment(cfg, out=tmp_path / "run", progress=False)
    (spec,) = plan_runs(cfg)
    metrics = json.loads((tmp_path / "run" / "runs" / spec.name / "metrics.json").read_text())
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    for prov in (metrics["provenance"], results["provenance"], on_disk["provenance"]):
        versions = prov["versions"]
        assert versions["w2v2ser"] == w2v2ser.__version__
        assert versions["numpy"] == np.__version__ and versions["keras"] == keras.__version__
        assert versions["tensorflow"] and "torch" not in versions  # stage 2's packages only
        assert prov["argv"] == sys.argv and prov["host"] and prov["usable_cores"] >= 1
    assert metrics["provenance"]["threads"]["tensorflow_intra_op"] >= 0


def test_a_store_that_gained_utterances_retrains_its_runs(tmp_path, caplog):
    """A manifest that grew adds utterances to the same store (same path, same feature configs):
    the finished runs were reused as if trained on the new data, by `train` and by `run`."""
    import shutil

    from w2v2ser.train import DataError
    from w2v2ser.train._fingerprints import data_fingerprint, run_is_current

    store = tmp_path / "s.zarr"
    build_store(store, utterances=ravdess_utterances(per_actor=2), features=("egemaps",))
    cfg = ExperimentConfig(stores={"main": str(store)}, features="egemaps", **FAST)
    (spec,) = plan_runs(cfg)
    first = train_run(cfg, spec, out=tmp_path / "run")
    assert first.n_test == 4 and train_run(cfg, spec, out=tmp_path / "run").skipped  # same data: reused
    metrics = json.loads((tmp_path / "run" / "runs" / spec.name / "metrics.json").read_text())
    assert run_is_current(metrics, cfg.config_key(), data_fingerprint(cfg))

    shutil.rmtree(store)
    build_store(store, utterances=ravdess_utterances(per_actor=3), features=("egemaps",))
    assert not run_is_current(metrics, cfg.config_key(), data_fingerprint(cfg))  # what `run` plans with
    with pytest.raises(DataError, match="no complete run"):  # the old run is not summarised as the new data's
        summarize_runs(cfg, tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        results = train_experiment(cfg, out=tmp_path / "run", progress=False)
    assert "1 run(s) in" in caplog.text and "trained on other utterances or frames than the store now holds" in caplog.text
    assert results["n_test"] == 6 and train_run(cfg, spec, out=tmp_path / "run").skipped
    # Runs written before the data fingerprint was recorded are kept (not retrained by an upgrade).
    del metrics["data_fingerprint"]
    assert run_is_current(metrics, cfg.config_key(), data_fingerprint(cfg))


@pytest.mark.parametrize("change", ["frames", "order"])
def test_a_store_with_other_frames_or_row_order_retrains_its_runs(tmp_path, caplog, change):
    """A store re-extracted with other frames (wav2vec2 with another torch thread count differs in
    the last bits) or from a reordered manifest (training shuffles from store order) has the same
    utterances, paths and feature configs; its finished runs were reused as already complete."""
    import dataclasses
    import shutil

    from w2v2ser.train._experiment_data import _prepare
    from w2v2ser.train._fingerprints import _data_fingerprint, data_fingerprint, run_is_current

    utts = ravdess_utterances(per_actor=2)
    sha = {u.id: f"{i:064x}" for i, u in enumerate(utts)}  # each file's audio hash, whatever its row
    store = tmp_path / "s.zarr"
    build_store(store, utterances=utts, features=("egemaps",), audio_sha256=[sha[u.id] for u in utts])
    cfg = ExperimentConfig(stores={"main": str(store)}, features="egemaps", **FAST)
    (spec,) = plan_runs(cfg)
    train_run(cfg, spec, out=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "runs" / spec.name / "metrics.json").read_text())
    before = data_fingerprint(cfg)
    data = _prepare(cfg)
    reordered = dataclasses.replace(data, records=data.records[::-1], labels=data.labels[::-1])
    assert _data_fingerprint(reordered) != before  # row order alone changes it

    shutil.rmtree(store)
    again = utts[::-1] if change == "order" else utts
    build_store(store, utterances=again, features=("egemaps",), audio_sha256=[sha[u.id] for u in again],
                seed=0 if change == "order" else 1)
    after = data_fingerprint(cfg)
    assert after.partition(".")[0] == before.partition(".")[0]  # the same utterances
    assert not run_is_current(metrics, cfg.config_key(), after)
    with caplog.at_level(logging.WARNING):
        assert not train_run(cfg, spec, out=tmp_path / "run").skipped
    assert train_run(cfg, spec, out=tmp_path / "run").skipped
    # A run recorded before the frames were fingerprinted (the utterances' hash alone) is kept.
    metrics["data_fingerprint"] = before.partition(".")[0]
    assert run_is_current(metrics, cfg.config_key(), after)


@pytest.mark.parametrize("norm", ["speaker", "global", "none"])
def test_utterances_the_protocol_drops_do_not_move_the_statistics(tmp_path, norm):
    """IEMOCAP's released code filters the 4 classes before it computes the statistics (per subject,
    global over the training partition), and a subset's statistics are composed over its own
    utterances: so are the protocol's. Speaker and global statistics composed every utterance of
    a speaker, also those whose labels the protocol drops (xxx, fru...: 45 % of IEMOCAP), which
    moved the speaker means by up to 42 in an eGeMAPS column of a synthetic release tree. Frames
    of dropped utterances changed what training sees (and so the data fingerprint)."""
    import dataclasses

    from stage2_fixtures import iemocap_utterances
    from w2v2ser.train import partition_arrays
    from w2v2ser.train._fingerprints import data_fingerprint

    utts = iemocap_utterances(per_speaker=6)
    speaker = utts[0].speaker
    # Two utterances of one speaker with labels the protocol drops; the second store swaps their
    # labels, so their frames differ (the fixture shifts frames by label) and nothing else does.
    dropped = [dataclasses.replace(utts[0], id=f"{speaker}_extra{k}", path=f"/fake/extra{k}.wav", label=label)
               for k, label in enumerate(("fru", "xxx"))]
    swapped = [dataclasses.replace(u, label=label) for u, label in zip(dropped, ("xxx", "fru"))]
    fingerprints, frames = [], []
    for name, extra in (("a", dropped), ("b", swapped)):
        store = build_store(tmp_path / f"{name}.zarr", utterances=[*utts, *extra], features=("egemaps",))
        cfg = ExperimentConfig(stores={"main": str(store)}, features="egemaps", protocol="iemocap", norm=norm, **FAST)
        spec = next(s for s in plan_runs(cfg) if speaker in s.train)
        fingerprints.append(data_fingerprint(cfg))
        arrays = partition_arrays(cfg, spec)["train"]
        frames.append(np.concatenate([x for x, g in zip(arrays.x, arrays.groups) if g == speaker]))
    np.testing.assert_array_equal(frames[0], frames[1])  # the dropped utterances' frames are never read
    assert fingerprints[0] == fingerprints[1]  # so the runs of one store stay current for the other


def test_runs_whose_statistics_composed_the_labels_the_protocol_drops_are_trained_again(tmp_path, caplog):
    """Review of a9be973: statistics now leave out the labels the protocol drops (IEMOCAP's xxx,
    fru...), but a run recorded before the statistics part was fingerprinted ("U.F") still matched
    "U.F.S", so a run whose statistics composed every label was reused and reported with new ones."""
    from stage2_fixtures import iemocap_utterances
    from w2v2ser.train._fingerprints import data_fingerprint, run_is_current

    store = build_store(tmp_path / "iem.zarr", utterances=iemocap_utterances(per_speaker=6), features=("egemaps",))
    assert {u.label for u in iemocap_utterances(per_speaker=6)} & {"fru", "xxx", "oth"}  # labels dropped
    cfg = ExperimentConfig(stores={"main": str(store)}, features="egemaps", protocol="iemocap", **FAST)
    spec = plan_runs(cfg)[0]
    train_run(cfg, spec, out=tmp_path / "run")
    assert train_run(cfg, spec, out=tmp_path / "run").skipped  # current: reused
    path = tmp_path / "run" / "runs" / spec.name / "metrics.json"
    metrics = json.loads(path.read_text())
    utterances, frames, statistics = metrics["data_fingerprint"].split(".")
    for old in (f"{utterances}.{frames}", f"{utterances}.{frames}.{statistics[-16:]}"):  # before the tag
        path.write_text(json.dumps({**metrics, "data_fingerprint": old}))
        assert not train_run(cfg, spec, out=tmp_path / "run").skipped
    path.write_text(json.dumps({**metrics, "data_fingerprint": f"{utterances}.{frames}"}))
    with caplog.at_level(logging.WARNING):
        train_experiment(cfg, out=tmp_path / "run", progress=False)
    assert "1 run(s) in" in caplog.text and "also those of the labels protocol iemocap drops" in caplog.text
    assert "than the store now holds" not in caplog.text  # the store has not changed
    # A protocol that drops no label (RAVDESS) keeps its fingerprints: runs recorded before stay current.
    rav = build_store(tmp_path / "rav.zarr", utterances=ravdess_utterances(per_actor=2), features=("egemaps",))
    fingerprint = data_fingerprint(ExperimentConfig(stores={"main": str(rav)}, features="egemaps", **FAST))
    assert "kept" not in fingerprint
    assert run_is_current({"config_key": "k", "data_fingerprint": fingerprint.rpartition(".")[0]}, "k", fingerprint)


def _store_with_a_half_failed_utterance(path, utterances, extra, shift: float):
    """A store of ``utterances`` (egemaps and spectrogram) and ``extra``, whose egemaps frames (+ ``shift``)
    were extracted after the whole file had failed, its spectrogram never: its status is failed, its egemaps
    frames are stored. (A file that fails its spectrogram alone is done with its egemaps.)"""
    from stage2_fixtures import EGEMAPS_RATE, SPEC_RATE, feature_specs
    from w2v2ser.store import StoreWriter

    specs = {s.name: s for s in feature_specs(features=("egemaps", "spectrogram"))}
    rows = [*utterances, extra]
    writer = StoreWriter(path)
    planned = writer.plan(rows, num_samples=[16000] * len(rows), features=list(specs.values()),
                          capacities={"egemaps": [int(EGEMAPS_RATE) + 1] * len(rows),
                                      "spectrogram": [int(SPEC_RATE)] * len(rows)})
    rng = np.random.default_rng(0)
    for utterance, row in zip(rows, planned):
        frames = {name: (rng.standard_normal((int(EGEMAPS_RATE) + 1 if name == "egemaps" else int(SPEC_RATE),
                                              spec.dim)) + utterances.index(utterance) % 3
                         if utterance is not extra else
                         np.full((int(EGEMAPS_RATE) + 1, spec.dim), shift)).astype(spec.dtype)
                  for name, spec in specs.items()}
        if utterance is extra:
            writer.record_failure(row, reason="cannot decode")
            writer.write_utterance(row, {"egemaps": frames["egemaps"]}, audio_sha256=f"{row:064x}", duration=1.0)
        else:
            writer.write_utterance(row, frames, audio_sha256=f"{row:064x}", duration=1.0)
    writer.finalize()
    return path


def test_an_utterance_of_any_status_whose_frames_statistics_read_is_fingerprinted(tmp_path):
    """The fingerprint's third part hashes the utterances outside the split whose frames the
    statistics compose, of any status: one whose spectrogram failed still adds its egemaps frames to
    its speaker's means. Re-extracting its egemaps with other frames makes earlier runs stale."""
    import dataclasses

    from stage2_fixtures import iemocap_utterances
    from w2v2ser.train._fingerprints import data_fingerprint, run_is_current

    utts = iemocap_utterances(per_speaker=6)
    kept = next(u for u in utts if u.label == "neu")  # a label the protocol keeps: only its status leaves it out
    extra = dataclasses.replace(kept, id=f"{kept.speaker}_half", path="/fake/half.wav")
    fingerprints = []
    for name, shift in (("a", 0.0), ("b", 5.0)):
        store = _store_with_a_half_failed_utterance(tmp_path / f"{name}.zarr", utts, extra, shift)
        assert open_store(store).describe()  # complete and readable
        assert {r.id: r.status for r in open_store(store).list_utterances(status=None)}[extra.id] != "done"
        cfg = ExperimentConfig(stores={"main": str(store)}, features="egemaps", protocol="iemocap", norm="speaker",
                               **FAST)
        fingerprints.append(data_fingerprint(cfg))
    a, b = fingerprints
    assert a.split(".")[:2] == b.split(".")[:2]  # the split utterances and their frames are the same
    assert a != b  # the statistics' frames are not: the runs are trained again
    key = cfg.config_key()
    assert not run_is_current({"config_key": key, "data_fingerprint": a}, key, b)


def test_statistics_leave_out_a_dropped_label_when_every_done_row_is_kept(tmp_path):
    """Review 3 (item 4): training left out the labels the protocol drops only when some done row
    had one, while predict_store always did, over rows of any status: a failed row with frames and
    a dropped label moved training's statistics but not predict's. Its frames are no longer read."""
    import dataclasses

    from stage2_fixtures import iemocap_utterances
    from w2v2ser.train._fingerprints import data_fingerprint

    utts = [u for u in iemocap_utterances(per_speaker=6) if u.label in ("neu", "ang", "sad", "hap", "exc")]
    extra = dataclasses.replace(utts[0], id=f"{utts[0].speaker}_half", path="/fake/half.wav", label="fru")
    fingerprints = []
    for name, shift in (("a", 0.0), ("b", 5.0)):
        store = _store_with_a_half_failed_utterance(tmp_path / f"{name}.zarr", utts, extra, shift)
        cfg = ExperimentConfig(stores={"main": str(store)}, features="egemaps", protocol="iemocap", norm="speaker",
                               **FAST)
        fingerprints.append(data_fingerprint(cfg))
    assert fingerprints[0] == fingerprints[1]  # the fru row's frames do not count


def test_the_statistics_rule_warning_names_the_labels_the_store_drops(tmp_path, caplog):
    """Review 3 (item 11): the warning said "(xxx, fru...)" and a date, whatever labels the store's
    protocol drops; and the rule was off for a fingerprint of more than 3 parts."""
    import dataclasses

    from stage2_fixtures import iemocap_utterances
    from w2v2ser.train._experiment_data import _prepare
    from w2v2ser.train._fingerprints import _statistics_rule_changed, _warn_if_data_changed, data_fingerprint

    relabel = {"fru": "dis", "xxx": "sur"}
    utts = [dataclasses.replace(u, label=relabel.get(u.label, u.label)) for u in iemocap_utterances(per_speaker=6)]
    store = build_store(tmp_path / "iem.zarr", utterances=utts, features=("egemaps",))
    cfg = ExperimentConfig(stores={"main": str(store)}, features="egemaps", protocol="iemocap", **FAST)
    data = _prepare(cfg)
    fingerprint = data_fingerprint(cfg)
    run = tmp_path / "out" / "runs" / "session1__seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"config_key": cfg.config_key(),
                                                  "data_fingerprint": fingerprint.rpartition(".")[0]}))
    with caplog.at_level(logging.WARNING):
        _warn_if_data_changed(tmp_path / "out", cfg, fingerprint, data)
    named = ", ".join(repr(label) for label in sorted({u.label for u in utts} & {"dis", "sur"}))
    assert named and f"labels protocol iemocap drops ({named})" in caplog.text and "fru" not in caplog.text
    assert "2026" not in caplog.text
    assert _statistics_rule_changed(fingerprint.rpartition(".")[0], f"{fingerprint}.another-part")


def test_class_names_of_a_protocol_with_fixed_classes_opens_no_store(tmp_path):
    """Review 3 (item 12): class_names ran the whole preparation (every store opened, utterances
    listed per feature, fusion checked) also for a protocol whose classes are fixed."""
    from w2v2ser.train import class_names
    from w2v2ser.train._protocols import get_protocol

    missing = str(tmp_path / "not-extracted-yet.zarr")
    for protocol in ("ravdess", "iemocap"):
        cfg = ExperimentConfig(stores={"main": missing}, features="egemaps", protocol=protocol, **FAST)
        assert class_names(cfg) == get_protocol(protocol).classes
    store = build_store(tmp_path / "rav.zarr", utterances=ravdess_utterances(per_actor=2), features=("egemaps",))
    cfg = ExperimentConfig(stores={"main": str(store)}, features="egemaps", protocol="csv", **FAST)
    assert class_names(cfg) == tuple(sorted({u.label for u in ravdess_utterances(per_actor=2)}))  # the store's


def test_train_and_sweep_show_their_epochs(rav, tmp_path, monkeypatch, capsys):
    """A run can train for minutes before its summary line: a bar counts its epochs on stderr."""
    from w2v2ser import _common
    from w2v2ser.train import sweep_experiment

    monkeypatch.setattr("w2v2ser._native_logs.stderr_is_terminal", lambda: True)
    real_bar = _common.progress_bar

    def unthrottled_bar(*args: Any, **kwargs: Any) -> Any:
        # tqdm draws at most every 0.1 s, and these epochs can be faster: draw each one, so that
        # the count asserted below does not depend on the host's speed.
        bar = real_bar(*args, **kwargs)
        bar.mininterval = 0
        return bar

    monkeypatch.setattr(_common, "progress_bar", unthrottled_bar)
    monkeypatch.setattr("w2v2ser.train._sweep.progress_bar", unthrottled_bar)
    cfg = ExperimentConfig(stores=rav, features="wav2vec2:all", **{**FAST, "recipe_overrides": {"max_epochs": 2}})
    train_experiment(cfg, out=tmp_path / "t")
    err = capsys.readouterr().err
    assert "run 1/1 fold=split seed=0" in err and "2/2" in err and "val_loss=" in err
    sweep_experiment(ExperimentConfig.from_dict({**cfg.to_dict(), "features": "wav2vec2"}), out=tmp_path / "s")
    err = capsys.readouterr().err
    assert "sweep 1/1 fold=split seed=0" in err and "2/2" in err and "heads" in err


def test_label_problems_of_a_csv_store_are_reported_once(tmp_path, caplog):
    from w2v2ser.store import Utterance

    def row(k: int, speaker: str, split: str, label: str) -> Utterance:
        return Utterance(id=f"u{k:03d}", path=f"/fake/{k}.wav", speaker=speaker, label=label, split=split,
                         corpus="csv")

    parts = {"s1": "train", "s2": "train", "s3": "train", "s4": "validation", "s5": "test"}
    utts = [row(3 * i + j, spk, split, label) for i, (spk, split) in enumerate(parts.items())
            for j, label in enumerate(("calm", "tense"))]
    utts.append(row(99, "s5", "test", "bored"))  # a label only the test speaker has
    utts.append(row(98, "s1", "train", "Calm"))  # a second spelling of 'calm': a class of its own
    utts.append(row(97, "s5", "test", "tense"))  # a copy of s1's first file under the test speaker's name
    hashes = [f"{k:064x}" for k in range(len(utts))]
    hashes[-1] = hashes[0]
    store = build_store(tmp_path / "csv.zarr", utterances=utts, layers=3, dim=4, features=("egemaps",),
                        audio_sha256=hashes)
    cfg = ExperimentConfig(stores={"main": str(store)}, features="egemaps", protocol="csv", **FAST)
    with caplog.at_level(logging.WARNING, logger="w2v2ser.train"):
        plan_runs(cfg)
        plan_runs(cfg)
    assert caplog.text.count("fold split: no training speaker has an utterance labelled 'bored'") == 1
    assert "no utterance of the store is labelled" not in caplog.text
    assert caplog.text.count("labels 'Calm' and 'calm' differ only in case, so they are 2 separate classes") == 1
    # What works: a relabel in place (extracting again was never needed).
    assert ("fix the spelling in the manifest and rerun the same `w2v2ser extract` (labels are updated in place, "
            "nothing is extracted again)") in caplog.text
    assert caplog.text.count("fold split: 1 test utterance(s) have the same audio (sha256) as a training "
                             "utterance (u097), so the test scores are not speaker-independent") == 1
    assert "validation utterance(s) have the same audio" not in caplog.text
    assert caplog.text.count("1 recording(s) are in the store more than once with different labels (same audio "
                             "sha256: u000 = u097)") == 1


def test_speaker_normalisation_of_speakers_with_too_few_files_is_reported(tmp_path, caplog):
    """A manifest that gives each test file its own speaker name: speaker normalisation then
    removes what the heads read (RAVDESS: 21.7 % UAR against 50.0 % with the actors' names), and
    nothing said so."""
    from dataclasses import replace

    from stage2_fixtures import ravdess_utterances
    from w2v2ser.train._normalisation import MIN_SPEAKER_FILES

    rows = ravdess_utterances(per_actor=MIN_SPEAKER_FILES)
    rows = [replace(r, speaker=r.id) if r.speaker == "Actor_24" else r for r in rows]
    store = build_store(tmp_path / "s.zarr", utterances=rows, layers=3, dim=4, features=("egemaps",))
    message = (f"speaker normalisation: {MIN_SPEAKER_FILES} of {23 + MIN_SPEAKER_FILES} speakers have fewer than "
               f"{MIN_SPEAKER_FILES} utterances ({', '.join(sorted(r.id for r in rows if r.speaker == r.id))})")
    for norm, expected in (("global", 0), ("speaker", 1), ("speaker", 0)):  # once per store
        caplog.clear()
        cfg = ExperimentConfig(stores={"main": str(store)}, features="egemaps", protocol="csv", norm=norm, **FAST)
        with caplog.at_level(logging.WARNING, logger="w2v2ser.train"):
            plan_runs(cfg)
        assert caplog.text.count(message) == expected, caplog.text
    # Every speaker that small is per-utterance normalisation, alike in training and test: no warning.
    alike = build_store(tmp_path / "alike.zarr", utterances=[replace(r, speaker=r.id) for r in rows], layers=3, dim=4,
                        features=("egemaps",))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="w2v2ser.train"):
        plan_runs(ExperimentConfig(stores={"main": str(alike)}, features="egemaps", protocol="csv", **FAST))
    assert "speaker normalisation:" not in caplog.text


@pytest.mark.parametrize("cache", ["auto", "off"])
def test_wide_batches_train_in_micro_batches_with_the_same_result(rav, tmp_path, monkeypatch, cache):
    """A batch over TRAIN_MICRO_BATCH_MB (a large model's all layers) is fed in micro-batches whose
    gradients make one step: the same model (no dropout), the memory of a smaller batch."""
    import w2v2ser.train._dataset as dataset

    cfg = ExperimentConfig(stores=rav, features="wav2vec2:all", dropout=0.0, cache=cache,
                           **{**FAST, "recipe_overrides": {"max_epochs": 3, "batch_size": 16}})
    (spec,) = plan_runs(cfg)
    train_run(cfg, spec, out=tmp_path / "whole")
    utterance = 250 * 13 * 4 * 2  # RAVDESS's max_frames x layers x dim, float16
    monkeypatch.setattr("w2v2ser.train._experiment.TRAIN_MICRO_BATCH_MB", 5 * utterance / 2**20)
    fed = []
    monkeypatch.setattr(dataset, "split_batch", lambda idx, parts, _f=dataset.split_batch: fed.append(parts)
                        or _f(idx, parts))
    train_run(cfg, spec, out=tmp_path / "micro")
    metrics = {k: json.loads((tmp_path / k / "runs" / spec.name / "metrics.json").read_text())
               for k in ("whole", "micro")}
    assert (metrics["whole"]["micro_batch_size"], metrics["micro"]["micro_batch_size"]) == (16, 4)
    assert fed == [] if cache == "auto" else set(fed) == {4}  # in memory, TensorFlow splits the batches
    probabilities = [np.loadtxt(tmp_path / k / "runs" / spec.name / "predictions.csv", delimiter=",", skiprows=1,
                                usecols=range(4, 11)) for k in ("whole", "micro")]
    np.testing.assert_allclose(*probabilities, atol=2e-4)


def test_runs_are_repeatable(rav, tmp_path):
    cfg = ExperimentConfig(stores=rav, features="egemaps", **FAST)
    (spec,) = plan_runs(cfg)
    a = train_run(cfg, spec, out=tmp_path / "a")
    b = train_run(cfg, spec, out=tmp_path / "b")
    pa = (tmp_path / "a" / "runs" / spec.name / "predictions.csv").read_text()
    assert pa == (tmp_path / "b" / "runs" / spec.name / "predictions.csv").read_text() and a.uar == b.uar


def test_runs_are_repeatable_beside_threads_that_draw_random_numbers(rav, tmp_path):
    """A Dask worker runs train_run in one thread while its others draw from Python's global
    random, from which Keras draws the seeds of layers that get none: the same run gave other
    first-epoch losses in a worker than alone. The run's seed now reaches every layer."""
    cfg = ExperimentConfig(stores=rav, features="egemaps", dropout=0.3, **FAST)
    (spec,) = plan_runs(cfg)
    train_run(cfg, spec, out=tmp_path / "alone")
    with another_thread_drawing_random_numbers():
        train_run(cfg, spec, out=tmp_path / "beside")
    read = lambda name: (tmp_path / name / "runs" / spec.name / "predictions.csv").read_text()  # noqa: E731
    assert read("alone") == read("beside")


def test_training_another_configuration_into_the_same_folder_says_so(rav, tmp_path, caplog):
    import logging

    cfg = ExperimentConfig(stores=rav, features="egemaps", **FAST)
    with caplog.at_level(logging.WARNING, logger="w2v2ser.train"):
        train_experiment(cfg, out=tmp_path, progress=False)
        train_experiment(cfg, out=tmp_path, progress=False)  # the same configuration: nothing to say
        assert "another configuration" not in caplog.text
        changed = ExperimentConfig.from_dict({**cfg.to_dict(), "dropout": 0.1, "workers": 1})
        train_experiment(changed, out=tmp_path, progress=False)
    (record,) = [r for r in caplog.records if "another configuration" in r.getMessage()]
    message = record.getMessage()
    assert f"{tmp_path} holds runs of another configuration (dropout {cfg.dropout!r} -> 0.1)" in message
    assert "workers" not in message and "another output folder" in message


def test_a_moved_store_keeps_its_runs_and_old_run_dirs_are_still_reused(tmp_path, caplog):
    """Where a store lies is not part of a run's key: a store moved, or staged to a node's local disk,
    keeps its finished runs (all were trained again). Run dirs keyed as 0.2 keyed them (with the
    stores' paths) are still this configuration's runs, for train, summarize, run and evaluate."""
    import shutil

    from w2v2ser._config import ExperimentSpec
    from w2v2ser._stage_train import _prepare_experiment
    from w2v2ser.evaluate import write_report
    from w2v2ser.train._fingerprints import data_fingerprint, run_is_current

    store = tmp_path / "s.zarr"
    build_store(store, utterances=ravdess_utterances(per_actor=2), features=("egemaps",))
    cfg = ExperimentConfig(stores={"main": str(store)}, features="egemaps", **FAST)
    (spec,) = plan_runs(cfg)
    run = tmp_path / "run"
    first = train_run(cfg, spec, out=run)
    moved = ExperimentConfig(**{**cfg.to_dict(), "stores": {"main": str(shutil.move(store, tmp_path / "m.zarr"))}})
    assert moved.config_key() == cfg.config_key()
    again = train_run(moved, spec, out=run)
    assert again.skipped and again.uar == first.uar
    with caplog.at_level(logging.WARNING):
        assert train_experiment(moved, out=run, progress=False)["n_runs"] == 1
    assert "another configuration" not in caplog.text

    # A run dir as 0.2 wrote it: metrics and experiment.json keyed with the stores' paths.
    key, legacy = moved.config_keys()
    assert key != legacy
    metrics_path = run / "runs" / spec.name / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    from w2v2ser.train._experiment_data import _prepare
    from w2v2ser.train._fingerprints import _store_fingerprints
    metrics.update(config_key=legacy, store_fingerprint=_store_fingerprints(moved, _prepare(moved))[1])
    metrics_path.write_text(json.dumps(metrics))
    experiment = json.loads((run / "experiment.json").read_text())
    del experiment["legacy_config_key"]
    (run / "experiment.json").write_text(json.dumps({**experiment, "config_key": legacy}))
    (run / "results.json").unlink()
    assert run_is_current(metrics, moved.config_keys(), data_fingerprint(moved))
    assert train_run(moved, spec, out=run).skipped
    spec_of_run = ExperimentSpec(name="t", corpus="ravdess", stores={"main": "s"}, config=moved.to_dict(),
                                 run_dir=run, where="experiments.t")
    with contextlib.ExitStack() as locks:
        assert _prepare_experiment(spec_of_run, locks)[1] == []  # `w2v2ser run` submits nothing
    assert summarize_runs(moved, run)["n_runs"] == 1
    assert json.loads((run / "experiment.json").read_text())["config_key"] == key  # recorded anew by run
    write_report([run], out=tmp_path / "report")
    assert json.loads((tmp_path / "report" / "report.json").read_text())["runs"][0]["n_runs"] == 1


def test_more_seeds_interrupted_leave_the_folder_unfinished_not_the_fewer_seeds_complete(rav, tmp_path,
                                                                                          monkeypatch):
    """Found by a predict trial: 2 seeds finished, rerun with 5 and stopped after the third: the
    2-seed results.json stayed, evaluate called the folder complete (n=2) and predict averaged 3
    seeds without the warning it gives for unfinished training."""
    from w2v2ser.evaluate._rundir import read_run_dir
    from w2v2ser.train import _experiment

    base = {"stores": rav["main"], "features": "egemaps", **FAST}
    train_experiment(ExperimentConfig(**base), out=tmp_path, progress=False)
    assert read_run_dir(tmp_path).status == "complete"
    real = _experiment._train_run

    def stopped_after_the_first(config, spec, *args, **kwargs):
        if spec.seed > 0:
            raise KeyboardInterrupt
        return real(config, spec, *args, **kwargs)

    monkeypatch.setattr(_experiment, "_train_run", stopped_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        train_experiment(ExperimentConfig(**{**base, "seeds": 2}), out=tmp_path, progress=False)
    assert not (tmp_path / "results.json").exists()
    summary = read_run_dir(tmp_path)
    assert summary.status == "incomplete" and "rerun the same `w2v2ser train`" in summary.reason
    # `w2v2ser run` plans the same way: a stale results.json goes before runs are submitted.
    from w2v2ser._config import ExperimentSpec
    from w2v2ser._stage_train import _prepare_experiment

    (tmp_path / "results.json").write_text("{}")
    spec = ExperimentSpec(name="t", corpus="ravdess", stores={"main": "s"}, config={**base, "seeds": 2},
                          run_dir=tmp_path, where="experiments.t")
    with contextlib.ExitStack() as locks:
        assert [run.seed for run in _prepare_experiment(spec, locks)[1]] == [1]
    assert not (tmp_path / "results.json").exists()


def test_fewer_seeds_in_a_pipeline_drop_the_results_of_the_seeds_no_longer_planned(rav, tmp_path):
    """`w2v2ser run` with the seeds cut (2 -> 1, nothing to train): results.json of both seeds stayed
    until the train stage summarised again, so a stage stopped before that left evaluate and predict
    using 2 seeds while experiment.json said 1."""
    from w2v2ser._config import ExperimentSpec
    from w2v2ser._stage_train import _prepare_experiment

    base = {"stores": rav["main"], "features": "egemaps", **FAST}
    train_experiment(ExperimentConfig(**{**base, "seeds": 2}), out=tmp_path, progress=False)
    assert json.loads((tmp_path / "results.json").read_text())["n_runs"] == 2

    def prepare(seeds: int) -> list:
        spec = ExperimentSpec(name="t", corpus="ravdess", stores={"main": "s"}, config={**base, "seeds": seeds},
                              run_dir=tmp_path, where="experiments.t")
        with contextlib.ExitStack() as locks:
            return _prepare_experiment(spec, locks)[1]

    assert prepare(2) == [] and (tmp_path / "results.json").exists()  # the same seeds: kept
    assert prepare(1) == []
    assert not (tmp_path / "results.json").exists()
    assert json.loads((tmp_path / "experiment.json").read_text())["seeds"] == 1


def test_seeds_spread_over_an_array_job_then_one_call_aggregates(rav, tmp_path):
    """The README's SLURM array recipe: each task trains its own seed into one run dir (its
    results.json holds only that seed); a final call with every seed trains none and aggregates."""
    base = {"stores": rav["main"], "features": "egemaps", **FAST}
    for seed in (1, 0):  # array tasks finish in any order
        task = ExperimentConfig(**{**base, "first_seed": seed, "seeds": 1})
        assert train_experiment(task, out=tmp_path / "run", progress=False)["n_runs"] == 1
    trained = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "runs").glob("*/metrics.json")}
    final = ExperimentConfig(**{**base, "seeds": 2})
    results = train_experiment(final, out=tmp_path / "run", progress=False)
    assert results["n_runs"] == 2 and len(trained) == 2
    assert {p: p.stat().st_mtime_ns for p in trained} == trained  # no run trained again


def test_a_damaged_run_is_trained_again_never_summarised(rav, tmp_path, caplog):
    """metrics.json records the sha256 of the run's other files. Before, a truncated predictions.csv
    of a finished run was read as it was: resuming skipped the run, and results.json's n_test,
    confusion-derived scores and pooled UAR (the IEMOCAP headline) silently changed."""
    from w2v2ser.train import damaged_run_files

    cfg = ExperimentConfig(stores=rav["main"], features="egemaps", **FAST)
    first = train_experiment(cfg, out=tmp_path, progress=False)
    run = tmp_path / "runs" / plan_runs(cfg)[0].name
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["files_sha256"]) == {"history.json", "model.keras", "normalisation.npz", "predictions.csv"}
    assert damaged_run_files(run, metrics) == []
    predictions = (run / "predictions.csv").read_text().splitlines(keepends=True)
    (run / "predictions.csv").write_text("".join(predictions[:3]))  # a file cut short
    assert damaged_run_files(run, metrics) == [f"{run / 'predictions.csv'} has changed since the run wrote it "
                                               "(sha256 differs from metrics.json's)"]
    assert damaged_run_files(run, metrics, only=("model.keras",)) == []
    with pytest.raises(DataError, match=r"is damaged .*predictions.csv has changed.*train the experiment again"):
        summarize_runs(cfg, tmp_path)
    with caplog.at_level(logging.WARNING, logger="w2v2ser.train"):
        again = train_experiment(cfg, out=tmp_path, progress=False)
    assert f"run {run} is damaged" in caplog.text and "training it again" in caplog.text
    assert again["n_test"] == first["n_test"] and again["uar_pooled_per_seed"] == first["uar_pooled_per_seed"]
    assert (run / "predictions.csv").read_text() == "".join(predictions)

    # A run written before the hashes: its predictions.csv is checked against n_test.
    del metrics["files_sha256"]
    assert damaged_run_files(run, metrics) == []
    (run / "predictions.csv").write_text("".join(predictions[:3]))
    assert damaged_run_files(run, metrics) == [f"{run / 'predictions.csv'} has 2 rows, but the run tested "
                                               f"{metrics['n_test']} utterances"]


def test_a_native_rate_feature_of_files_at_several_rates_is_reported_once(tmp_path, caplog):
    """eGeMAPS at each file's own rate differs with the rate: a store of 16 and 44.1 kHz files
    says so once (nothing before), a store of one rate or a fixed-rate feature says nothing."""
    from dataclasses import replace

    from w2v2ser.store import AUDIO_RATE_KEY

    utts = ravdess_utterances(per_actor=2)
    mixed = [replace(u, extra={**u.extra, AUDIO_RATE_KEY: 44_100 if k % 3 == 0 else 16_000})
             for k, u in enumerate(utts)]
    native = {"egemaps": {"sample_rate": "native"}, "spectrogram": {"sample_rate": 16_000}}
    for name, rows in (("mixed", mixed), ("one", [replace(u, extra={**u.extra, AUDIO_RATE_KEY: 16_000})
                                                  for u in utts])):
        build_store(tmp_path / f"{name}.zarr", utterances=rows, layers=3, dim=4, features=("egemaps", "spectrogram"),
                    feature_configs=native)
    with caplog.at_level(logging.WARNING, logger="w2v2ser.train"):
        for store, features in (("mixed", "egemaps"), ("mixed", "egemaps"), ("mixed", "spectrogram"),
                                ("one", "egemaps")):
            plan_runs(ExperimentConfig(stores=str(tmp_path / f"{store}.zarr"), features=features, **FAST))
    assert caplog.text.count("egemaps was computed at each file's own sample rate, and the utterances trained on "
                             "have 2 rates (16000 Hz: ") == 1
    assert "44100 Hz: " in caplog.text and "--option egemaps.sample_rate=16000" in caplog.text
    assert "spectrogram was computed" not in caplog.text


def test_a_subset_trains_and_tests_on_its_utterances_only(rav, tmp_path):
    """subset={"vocal_channel": "speech"} (RAVDESS speech only) keeps the song files out of every
    partition; the runs of the whole store keep their key (and so their finished runs)."""
    from w2v2ser.evaluate import write_report

    config = ExperimentConfig(stores=rav["main"], features="egemaps", protocol="ravdess",
                              subset={"vocal_channel": "speech"}, **FAST)
    assert config.subset == {"vocal_channel": ["speech"]}
    assert ExperimentConfig.from_dict({**config.to_dict(), "subset": {"vocal_channel": ["speech"]}}).config_key() \
        == config.config_key()
    # Keys written before subset existed: the same configuration must still find its runs.
    assert ExperimentConfig(stores="/data/s.zarr", features="egemaps", protocol="ravdess").config_key() \
        == "6de03fd3ad4d7a05"
    assert config.config_key() != ExperimentConfig(**{**config.to_dict(), "subset": {}}).config_key()

    train_experiment(config, out=tmp_path / "speech", progress=False)
    song = {u.id for u in open_store(rav["main"]).list_utterances() if u.extra["vocal_channel"] == "song"}
    metrics = json.loads(next((tmp_path / "speech" / "runs").glob("*/metrics.json")).read_text())
    predicted = [line.split(",")[0] for line in
                 next((tmp_path / "speech" / "runs").glob("*/predictions.csv")).read_text().splitlines()[1:]]
    assert predicted and not song & set(predicted)
    assert metrics["n_test"] == len(predicted)
    # Normalisation statistics come from the subset's utterances: song files do not move them.
    store = open_store(rav["main"])
    speech = [u.id for u in store.list_utterances() if u.id not in song]
    train_speakers = metrics["split"]["train"]
    saved = load_normalisers(next((tmp_path / "speech" / "runs").glob("*/normalisation.npz")),
                             global_fallback=True)["main"]
    subset_stats = store.compose_statistics("egemaps", speakers=train_speakers, utterances=speech)
    np.testing.assert_allclose(saved.mean.reshape(-1), subset_stats.mean.reshape(-1), rtol=1e-6)
    assert not np.allclose(saved.mean.reshape(-1),
                           store.compose_statistics("egemaps", speakers=train_speakers).mean.reshape(-1))
    write_report([tmp_path / "speech"], out=tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "(vocal_channel=speech)" in report

    for subset, problem in [({"vocal_chanel": "speech"}, "records 'vocal_chanel'.* Did you mean 'vocal_channel'"),
                            ({"vocal_channel": ["speech", "speach"]}, r"has song \(\d+\), speech \(\d+\)\. Did you "
                                                                       r"mean 'speech'"),
                            ({"vocal_channel": "song", "speaker": "Actor_99"}, "no utterance of .* has speaker")]:
        with pytest.raises(ConfigError, match=problem):
            train_experiment(ExperimentConfig(**{**config.to_dict(), "subset": subset}), out=tmp_path / "bad",
                             progress=False)


def test_speaker_folds_cross_validate_over_speaker_groups(rav, tmp_path):
    """speaker_folds=k replaces the protocol's split (RAVDESS: 2 test actors) with k speaker
    groups, each tested once: every utterance is predicted once per seed, with the protocol's
    classes; the run key of a configuration without it does not change."""
    from w2v2ser.evaluate import write_report
    from w2v2ser.train import ProtocolError

    config = ExperimentConfig(stores=rav["main"], features="egemaps", protocol="ravdess", speaker_folds=6, **FAST)
    specs = plan_runs(config)
    assert [s.fold for s in specs] == [f"group{k}" for k in range(1, 7)]
    actors = [f"Actor_{a:02d}" for a in range(1, 25)]
    assert [s.test for s in specs] == [tuple(actors[4 * k:4 * k + 4]) for k in range(6)]
    assert [s.validation for s in specs] == [tuple(actors[4 * k:4 * k + 4]) for k in (1, 2, 3, 4, 5, 0)]
    assert all(not set(s.train) & (set(s.test) | set(s.validation)) and len(s.train) == 16 for s in specs)

    results = train_experiment(config, out=tmp_path / "cv", progress=False)
    predicted = [line.split(",")[0] for p in sorted((tmp_path / "cv" / "runs").glob("*/predictions.csv"))
                 for line in p.read_text().splitlines()[1:]]
    classes = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
    assert sorted(predicted) == sorted(u.id for u in open_store(rav["main"]).list_utterances())
    assert tuple(results["classes"]) == classes and len(results["uar_pooled_per_seed"]) == 1
    write_report([tmp_path / "cv"], out=tmp_path / "report")
    assert "| eGeMAPS (6 speaker folds) |" in (tmp_path / "report" / "report.md").read_text()
    # The report's recall per class (all test predictions pooled) averages to the pooled UAR.
    recall = json.loads((tmp_path / "report" / "report.json").read_text())["runs"][0]["recall_per_class"]
    present = [c for c in classes if results["per_class"][c]["support"] > 0]
    assert list(recall) == list(classes)
    assert np.mean([recall[c] for c in present]) == pytest.approx(100 * results["uar_pooled_per_seed"]["0"])
    assert "## Recall per class" in (tmp_path / "report" / "report.md").read_text()
    # Found by a correctness audit: the row's accuracy was the mean over fold x seed runs beside a
    # UAR pooled over folds; both are now scored the same way.
    pairs = [line.split(",")[2:4] for p in sorted((tmp_path / "cv" / "runs").glob("*/predictions.csv"))
             for line in p.read_text().splitlines()[1:]]
    pooled_accuracy = np.mean([true == predicted for true, predicted in pairs])
    assert results["accuracy_pooled_mean"] == pytest.approx(pooled_accuracy)
    row = json.loads((tmp_path / "report" / "report.json").read_text())["runs"][0]
    assert row["accuracy_mean"] == pytest.approx(100 * pooled_accuracy)
    # A class without test utterances has no recall (it read 0.0, like a class never recognised).
    results_path = tmp_path / "cv" / "results.json"
    stored = json.loads(results_path.read_text())
    stored["per_class"]["disgust"] = {**stored["per_class"]["disgust"], "support": 0, "recall": 0.0}
    results_path.write_text(json.dumps(stored))
    write_report([tmp_path / "cv"], out=tmp_path / "report0")
    assert json.loads((tmp_path / "report0" / "report.json").read_text())["runs"][0]["recall_per_class"]["disgust"] \
        is None
    row = next(line for line in (tmp_path / "report0" / "report.md").read_text().splitlines()
               if line.startswith("| cv |") and line.count("|") == len(classes) + 2)
    assert row.split("|")[1 + 1 + classes.index("disgust")].strip() == "—"

    with pytest.raises(ProtocolError, match="25 speaker folds need at least 25 speakers; the utterances trained "
                                            "on have 24"):
        plan_runs(ExperimentConfig(**{**config.to_dict(), "speaker_folds": 25}))
    with pytest.raises(ConfigError, match="speaker_folds: expected a value >= 3, got 2"):
        ExperimentConfig(**{**config.to_dict(), "speaker_folds": 2})


def _extend_store(path, utterances) -> None:
    """What a rerun of the extraction with a grown manifest does: plan the new rows, write, finalize."""
    from stage2_fixtures import EGEMAPS_RATE, feature_specs
    from w2v2ser.store import StoreWriter

    specs = feature_specs(features=("egemaps",))
    writer = StoreWriter(path)
    known = {r.id: r.num_samples for r in open_store(path).list_utterances()}
    samples = [known.get(u.id, 16000) for u in utterances]
    rows = writer.plan(list(utterances), num_samples=samples, features=specs,
                       capacities={"egemaps": [int(n / 16000 * EGEMAPS_RATE) + 1 for n in samples]})
    rng = np.random.default_rng(7)
    for row in writer.pending(["egemaps"]):
        frames = rows.index(row)
        writer.write_utterance(row, {"egemaps": rng.standard_normal((int(samples[frames] / 16000 * EGEMAPS_RATE) + 1,
                                                                     25)).astype("float32")},
                               audio_sha256=f"{row:064x}", duration=samples[frames] / 16000)
    writer.finalize()


def test_store_extended_between_runs_stops_train_keeping_finished_runs(tmp_path, monkeypatch, capsys):
    """Found by a concurrency audit: an extraction added utterances while `train` ran; the runs after
    it trained on other data, results.json pooled 2 of 4 folds, and train printed a 'folds pooled'
    UAR with exit 0. One view of the store per invocation: the change is said, exit 1, run 1 kept."""
    from w2v2ser._cli import main
    from w2v2ser.evaluate._rundir import read_run_dir
    from w2v2ser.train import _experiment

    utts = ravdess_utterances(per_actor=2, actors=8)
    store = build_store(tmp_path / "grow.zarr", utterances=utts[:-2], features=("egemaps",))
    real, calls = _experiment._train_run, []

    def extraction_after_the_first_run(config, spec, *args, **kwargs):
        if calls:
            _extend_store(store, utts)  # the two missing files of the last actor
        calls.append(spec.name)
        return real(config, spec, *args, **kwargs)

    monkeypatch.setattr(_experiment, "_train_run", extraction_after_the_first_run)
    out = tmp_path / "runs"
    code = main(["train", str(store), "--features", "egemaps", "--speaker-folds", "4", "--set", "max_epochs=1",
                 "--set", "units=8", "--out", str(out), "--no-progress", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "changed by an extraction since it was opened" in err and "1 finished run(s)" in err, err
    assert len(calls) == 2 and not (out / "results.json").exists()
    assert len(list((out / "runs").glob("*/metrics.json"))) == 1
    assert read_run_dir(out).status == "incomplete"
    # The rerun trains on the grown store, all folds on the same utterances.
    monkeypatch.setattr(_experiment, "_train_run", real)
    results = train_experiment(ExperimentConfig(stores=str(store), features="egemaps", speaker_folds=4, **FAST),
                               out=out, progress=False)
    assert results["n_runs"] == results["n_runs_planned"] == 4 and not results["missing_runs"]


def test_results_lacking_planned_runs_are_not_called_complete(rav, tmp_path, capsys):
    """A run replaced by another job's (another configuration into the same --out): results.json
    lacks it; the summary line, train's exit code and evaluate's status say so."""
    from w2v2ser._cli_train import _missing_runs
    from w2v2ser.evaluate._rundir import read_run_dir
    from w2v2ser.train import format_uar

    config = ExperimentConfig(stores=rav["main"], features="egemaps", **{**FAST, "seeds": 2})
    train_experiment(config, out=tmp_path, progress=False)
    metrics = tmp_path / "runs" / "split__seed1" / "metrics.json"
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "config_key": "another"}))
    results = summarize_runs(config, tmp_path)
    assert results["missing_runs"] == ["split__seed1"]
    assert "only 1 of 2 planned runs" in format_uar(results)
    assert _missing_runs(results, str(tmp_path), "train") == 1
    assert "covers only 1 of 2 planned runs" in capsys.readouterr().err
    summary = read_run_dir(tmp_path)
    assert summary.status == "incomplete" and "1 of 2 planned runs" in summary.reason


def test_an_out_that_is_a_file_is_a_config_error_in_python(rav, tmp_path):
    """Found by a trial: train_experiment(cfg, out=<a file>) raised a raw FileExistsError from mkdir;
    the command line said what was wrong (exit 2), the Python API did not."""
    from w2v2ser import ConfigError

    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file")
    config = ExperimentConfig(stores=rav["main"], features="egemaps", **FAST)
    for out in (blocker, blocker / "run"):
        with pytest.raises(ConfigError, match=f"{out}: it, or a folder above it, is a file; expected a folder"):
            train_experiment(config, out=out, progress=False)
    assert blocker.read_text() == "a file"


def test_a_layer_sweep_folder_is_refused_as_out_of_train_experiment(rav, tmp_path):
    """Found by a notebook trial: train_experiment(out=<a sweep's folder>) trained beside sweep.json
    without a word, and the report of that folder showed the sweep only: the runs were in no table."""
    from w2v2ser import ConfigError

    (tmp_path / "sweep.json").write_text("{}")
    config = ExperimentConfig(stores=rav["main"], features="egemaps", **FAST)
    with pytest.raises(ConfigError) as refused:
        train_experiment(config, out=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.json"]
    # One message for train_experiment and `w2v2ser run` (found in review: two wordings): what, where, the fix.
    assert str(refused.value) == (
        f"{tmp_path} is a layer-sweep folder (it holds sweep.json of an earlier sweep): a plain experiment's runs "
        f"there would be in no report table. Give train_experiment another out (`w2v2ser train --out`), or move "
        f"that folder away to keep the sweep (rerun it as a sweep: `w2v2ser sweep`, `sweep: true`)")


def test_a_stale_pipeline_failure_marker_is_removed_by_a_train_into_its_folder(rav, tmp_path):
    """Found in review: the report prefers a failed.json newer than results.json (by mtime), and
    `train` into a folder a pipeline had failed left that failed.json: a copy that did not keep
    times (cp -r) could show the finished experiment as failed."""
    from types import SimpleNamespace

    from w2v2ser import ConfigError
    from w2v2ser._stage_train import _prepare_experiment

    (tmp_path / "failed.json").write_text('{"reason": "store gone"}')
    (tmp_path / "skipped.json").write_text('{"reason": "model offline"}')
    config = ExperimentConfig(stores=rav["main"], features="egemaps", **FAST)
    train_experiment(config, out=tmp_path, progress=False)
    assert not (tmp_path / "failed.json").exists() and not (tmp_path / "skipped.json").exists()
    # `w2v2ser run`: a plain experiment whose folder holds an earlier sweep is refused, not mixed in.
    swept = tmp_path / "swept"
    swept.mkdir()
    (swept / "sweep.json").write_text("{}")
    with pytest.raises(ConfigError) as refused:
        _prepare_experiment(SimpleNamespace(config=config.to_dict(), run_dir=swept, sweep=False), None)
    assert str(refused.value).startswith(f"{swept} is a layer-sweep folder (it holds sweep.json of an earlier sweep)")
    assert "Give this experiment another name, or move that folder away to keep the sweep" in str(refused.value)


def test_a_job_of_another_configuration_into_the_same_out_is_refused(rav, tmp_path, capsys):
    """Found by a concurrency audit: two `train` jobs of different configs into one --out replaced
    each other's runs one by one, both exit 0. Jobs of one configuration still share it (the
    README's array job); one of another configuration stops at once, naming the other."""
    import os

    from w2v2ser._cli import main
    from w2v2ser.train._out_folder import share_out_folder

    config = ExperimentConfig(stores=rav["main"], features="egemaps", **FAST)
    other = ExperimentConfig(stores=rav["main"], features="egemaps", norm="global", **FAST)
    with share_out_folder(tmp_path, other.config_key(), "train"):  # the other job, running
        code = main(["train", rav["main"], "--features", "egemaps", "--set", "max_epochs=1", "--out", str(tmp_path),
                     "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"pid {os.getpid()}" in err and other.config_key() in err and "another configuration" in err, err
        assert not (tmp_path / "runs").exists()
    with share_out_folder(tmp_path, config.config_key(), "train"):  # a job of the same configuration
        results = train_experiment(config, out=tmp_path, progress=False)
    assert results["n_runs"] == 1
    # Both have ended: the other configuration may now use the folder (replacing, with its warning).
    train_experiment(other, out=tmp_path, progress=False)
    # A held folder keeps one descriptor open (its key's lock), not two: `w2v2ser run` holds one per
    # experiment of its grid for the whole train stage, under the usual limit of 1024.
    before = len(os.listdir("/proc/self/fd"))
    with share_out_folder(tmp_path, config.config_key(), "train"):
        assert len(os.listdir("/proc/self/fd")) == before + 1


def test_a_job_refused_for_another_configurations_lock_does_not_warn_of_replacing(rav, tmp_path, capsys, caplog):
    """Found by a concurrency audit: the refused job first warned "each run trained now replaces the
    old run of the same fold and seed", then stopped (exit 2) and replaced nothing."""
    from w2v2ser._cli import main
    from w2v2ser.train._out_folder import share_out_folder

    other = ExperimentConfig(stores=rav["main"], features="egemaps", norm="global", **FAST)
    train_experiment(other, out=tmp_path, progress=False)  # the folder holds the other's runs
    capsys.readouterr()
    caplog.set_level(logging.WARNING)
    with share_out_folder(tmp_path, other.config_key(), "train"):  # and its job runs again
        code = main(["train", rav["main"], "--features", "egemaps", "--set", "max_epochs=1", "--out", str(tmp_path),
                     "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and "is being written by another job of another configuration" in err, err
        assert "replaces the old run" not in err + caplog.text, err + caplog.text


def test_another_users_job_in_a_shared_out_folder_is_refused_too(rav, tmp_path, monkeypatch):
    """Found by a sharing audit: in a group-writable --out, a job of user A held OUT/.lock-KEY made
    0o644; user B could not open it (or OUT/.lock) for writing, so B's job of another configuration
    skipped every check and replaced A's runs one by one. The locks are now made with the umask's
    mode, and another user's lock is read-only flocked (flock needs no write access)."""
    import errno
    import os
    from pathlib import Path

    from w2v2ser.train._out_folder import share_out_folder

    config = ExperimentConfig(stores=rav["main"], features="egemaps", **FAST)
    other = ExperimentConfig(stores=rav["main"], features="egemaps", norm="global", **FAST)
    old = os.umask(0o002)
    try:
        with share_out_folder(tmp_path, other.config_key(), "train"):  # user A's job, running
            locks = [tmp_path / ".lock", tmp_path / f".lock-{other.config_key()}"]
            assert all(lock.stat().st_mode & 0o020 for lock in locks)  # the group may take them
            real_open = os.open

            def as_another_user(path, flags, *args, **kwargs):  # A's lock files are not B's to write
                if Path(path).name.startswith(".lock") and flags & (os.O_WRONLY | os.O_RDWR):
                    raise PermissionError(errno.EACCES, "Permission denied", str(path))
                return real_open(path, flags, *args, **kwargs)

            monkeypatch.setattr(os, "open", as_another_user)
            with pytest.raises(ConfigError) as refused:
                with share_out_folder(tmp_path, config.config_key(), "train"):
                    pass
            assert other.config_key() in str(refused.value) and "another configuration" in str(refused.value)
            with share_out_folder(tmp_path, other.config_key(), "train"):  # B's job of A's configuration shares it
                pass
            monkeypatch.undo()
    finally:
        os.umask(old)
    with share_out_folder(tmp_path, config.config_key(), "train"):  # A's job has ended: B's may write now
        pass


def test_a_lock_this_user_cannot_read_or_lock_refuses_rather_than_lets_in(rav, tmp_path, monkeypatch):
    """Second review: another user's lock opened read-only was taken as free where flock refuses a
    read-only descriptor (NFS answers EBADF: H1), and one this user cannot read at all let a second
    writer in (M1). Both now refuse, naming the lock and what to do; this user's own lock is opened
    read-write, so on NFS its own jobs are still told apart."""
    import errno
    import fcntl
    import os
    from pathlib import Path

    from w2v2ser.train._out_folder import share_out_folder

    config = ExperimentConfig(stores=rav["main"], features="egemaps", **FAST)
    other = ExperimentConfig(stores=rav["main"], features="egemaps", norm="global", **FAST)
    with share_out_folder(tmp_path, other.config_key(), "train"):  # a job of another configuration, running
        lock = tmp_path / f".lock-{other.config_key()}"
        real_open, real_flock = os.open, fcntl.flock
        read_only: set[int] = set()

        def not_writable(path, flags, *args, **kwargs):
            if Path(path) == lock and flags & (os.O_WRONLY | os.O_RDWR):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            fd = real_open(path, flags, *args, **kwargs)
            if Path(path) == lock:
                read_only.add(fd)
            return fd

        def nfs_flock(fd, operation):  # NFSv4: an exclusive lock needs a descriptor open for writing
            if fd in read_only and operation & fcntl.LOCK_EX:
                raise OSError(errno.EBADF, "Bad file descriptor")
            return real_flock(fd, operation)

        monkeypatch.setattr(os, "open", not_writable)
        monkeypatch.setattr(fcntl, "flock", nfs_flock)
        with pytest.raises(ConfigError, match=r"cannot lock, so whether that job still runs cannot be told.*chmod g\+rw"):
            with share_out_folder(tmp_path, config.config_key(), "train"):
                pass

        def not_readable(path, flags, *args, **kwargs):
            if Path(path) == lock:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", not_readable)
        with pytest.raises(ConfigError, match=f"cannot read.*{other.config_key()}.*rm "):
            with share_out_folder(tmp_path, config.config_key(), "train"):
                pass
        monkeypatch.undo()


def test_the_commands_for_a_lock_this_user_cannot_read_quote_its_path(tmp_path, monkeypatch):
    """Found in review: "(chmod g+rw LOCK)" and "(rm LOCK)" gave the lock's path unquoted, and it lies
    under --out, which may hold a space; braces in it made the message itself fail (str.format)."""
    import errno
    import os
    import shlex
    from pathlib import Path

    from w2v2ser.train._out_folder import share_out_folder

    out = tmp_path / "my runs {seed}"
    with share_out_folder(out, "other-key", "train"):  # a job of another configuration, running
        lock = out / ".lock-other-key"
        real_open = os.open

        def not_readable(path, flags, *args, **kwargs):
            if Path(path) == lock:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", not_readable)
        with pytest.raises(ConfigError, match="cannot read") as refused:
            with share_out_folder(out, "this-key", "train"):
                pass
        monkeypatch.undo()
    message = str(refused.value)
    for command in ("chmod g+rw", "rm"):
        assert f"`{command} {shlex.quote(str(lock))}`" in message, message


def test_an_extraction_running_during_train_is_named_and_finished_runs_kept(tmp_path, monkeypatch, capsys):
    """Found by a concurrency audit: an extraction starting while `train` ran made the next run fail
    with exit 2 and 'interrupted ... rerun the extraction' (that rerun would only meet its lock)."""
    import contextlib
    import os

    from stage2_fixtures import EGEMAPS_RATE, feature_specs
    from w2v2ser._cli import main
    from w2v2ser.store import StoreIncompleteError, StoreWriter, lock_store
    from w2v2ser.train import _experiment

    utts = ravdess_utterances(per_actor=2, actors=8)
    store = build_store(tmp_path / "busy.zarr", utterances=utts[:-2], features=("egemaps",))
    real, calls = _experiment._train_run, []
    extraction = contextlib.ExitStack()

    def extraction_starts_after_the_first_run(config, spec, *args, **kwargs):
        if calls and not extraction._exit_callbacks:
            extraction.enter_context(lock_store(store))  # as `w2v2ser extract` holds it, then plans
            StoreWriter(store).plan(utts, num_samples=[16000] * len(utts), features=feature_specs(features=("egemaps",)),
                                    capacities={"egemaps": [int(EGEMAPS_RATE) + 1] * len(utts)})
        calls.append(spec.name)
        return real(config, spec, *args, **kwargs)

    monkeypatch.setattr(_experiment, "_train_run", extraction_starts_after_the_first_run)
    out = tmp_path / "runs"
    with extraction:
        code = main(["train", str(store), "--features", "egemaps", "--speaker-folds", "4", "--set", "max_epochs=1",
                     "--set", "units=8", "--out", str(out), "--no-progress", "--threads", "1"])
        err = capsys.readouterr().err
        assert code == 1, err
        assert f"an extraction (pid {os.getpid()} " in err and "is running on it now" in err, err
        assert "1 finished run(s)" in err and "once that extraction has finished" in err, err
        assert "Rerun the extraction" not in err
        assert len(list((out / "runs").glob("*/metrics.json"))) == 1
        # A command that starts meanwhile says the same, not 'interrupted'.
        with pytest.raises(StoreIncompleteError, match=rf"being extracted now .*pid {os.getpid()} "):
            open_store(store)
    with pytest.raises(StoreIncompleteError, match="interrupted"):  # its holder gone: interrupted indeed
        open_store(store)


def _fake_git(tmp_path, monkeypatch, *, status: str = "") -> Path:
    """A `git` first on PATH that logs its arguments and GIT_* environment, answers as a checkout whose
    HEAD is 'a' * 40 (and 'e' * 40 where GIT_DIR names another repository), and, as git does, refreshes
    the index under .git/index.lock in `status` unless optional locks are off; w2v2ser's cache reset."""
    from w2v2ser import _common

    bin_dir, log = tmp_path / "fake-bin", tmp_path / "git.log"
    bin_dir.mkdir()
    script = bin_dir / "git"
    script.write_text(f"""#!/bin/sh
echo "args: $*" >> {log}
env | grep '^GIT_' | sed 's/^/env: /' >> {log}
case " $* " in
  *" ls-files "*) exit 0 ;;
  *" rev-parse "*) if [ -n "$GIT_DIR" ]; then echo {"e" * 40}; else echo {"a" * 40}; fi ;;
  *" status "*)
    case " $* " in *" --no-optional-locks "*) ;; *) [ "$GIT_OPTIONAL_LOCKS" = 0 ] || echo "took index.lock" >> {log} ;; esac
    printf '%s' '{status}' ;;
esac
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(_common, "_SOURCE", [])
    return log


def test_runs_record_the_git_commit_of_the_code_that_trained_them(tmp_path, monkeypatch):
    """From a git checkout (an editable install), the version number does not name the code: the
    commit, and whether tracked files differed from it, are in each run's provenance."""
    _fake_git(tmp_path, monkeypatch, status=" M train/_experiment.py")
    store = build_store(tmp_path / "s.zarr", utterances=ravdess_utterances(per_actor=2), features=("egemaps",))
    cfg = ExperimentConfig(stores={"main": str(store)}, features="egemaps", **FAST)
    results = train_experiment(cfg, out=tmp_path / "run", progress=False)
    (spec,) = plan_runs(cfg)
    metrics = json.loads((tmp_path / "run" / "runs" / spec.name / "metrics.json").read_text())
    for prov in (metrics["provenance"], results["provenance"]):
        assert prov["source"] == {"commit": "a" * 40, "dirty": True}


def test_the_git_commit_is_w2v2sers_own_and_read_without_taking_the_index_lock(tmp_path, monkeypatch):
    """Found by a code review: GIT_DIR (a git hook, `git rebase -x`) overrode -C, so another repository's
    commit was recorded; `git status` took .git/index.lock, so many jobs from one checkout could fail
    the user's own `git commit`. Without git (a wheel, no git installed) the source is None."""
    import subprocess

    from w2v2ser import _common

    log = _fake_git(tmp_path, monkeypatch)
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere" / ".git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "elsewhere" / "index"))
    # a later review: every GIT_* went, also a container's GIT_CONFIG_GLOBAL (its safe.directory)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    assert _common.source_revision() == {"commit": "a" * 40, "dirty": False}
    calls = log.read_text()
    assert f"env: GIT_CONFIG_GLOBAL={tmp_path / 'gitconfig'}" in calls, calls
    assert "args: -C" in calls and "status" in calls
    assert "GIT_DIR" not in calls and "GIT_INDEX_FILE" not in calls and "took index.lock" not in calls, calls

    def no_git(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "git")

    monkeypatch.setattr(_common, "_SOURCE", [])
    monkeypatch.setattr(subprocess, "run", no_git)
    assert _common.source_revision() is None


def test_seeds_added_with_another_cache_setting_are_named_as_fed_otherwise(tmp_path, caplog):
    """`cache` is not in a run's key, but streamed and in-memory runs of one seed differ: seeds added
    in memory to streamed ones gave a results.json of mixed runs without a word."""
    store = build_store(tmp_path / "s.zarr", utterances=ravdess_utterances(per_actor=2), features=("egemaps",))
    cfg = {"stores": {"main": str(store)}, "features": "egemaps", **FAST}
    train_experiment(ExperimentConfig(**{**cfg, "cache": "off"}), out=tmp_path / "run", progress=False)
    with caplog.at_level(logging.WARNING, logger="w2v2ser.train"):
        results = train_experiment(ExperimentConfig(**{**cfg, "seeds": 2}), out=tmp_path / "run", progress=False)
    assert results["cached_in_memory"] == {"split__seed0": False, "split__seed1": True}
    assert "mixes runs fed two ways: split__seed1 in memory, split__seed0 streamed" in caplog.text
    assert json.loads((tmp_path / "run" / "results.json").read_text())["cached_in_memory"]["split__seed1"] is True


def test_a_streamed_run_gives_the_same_predictions_with_any_number_of_workers(tmp_path):
    """`workers` is a runtime setting, left out of the run's key: the reading threads of a streamed
    run must not change which utterances form a batch, or a seed's result (README, Reproducibility)."""
    store = build_store(tmp_path / "s.zarr", utterances=ravdess_utterances(per_actor=4), features=("egemaps",))
    fast = {**FAST, "recipe_overrides": {"max_epochs": 2, "batch_size": 4}}
    got = []
    for workers in (1, 3):
        cfg = ExperimentConfig(stores={"main": str(store)}, features="egemaps", cache="off",
                               **{**fast, "workers": workers})
        train_experiment(cfg, out=tmp_path / f"w{workers}", progress=False)
        (spec,) = plan_runs(cfg)
        metrics = json.loads((tmp_path / f"w{workers}" / "runs" / spec.name / "metrics.json").read_text())
        assert metrics["cached_in_memory"] is False
        got.append((tmp_path / f"w{workers}" / "runs" / spec.name / "predictions.csv").read_bytes())
    assert got[0] == got[1]


def test_predictions_files_concatenated_keep_their_fold_and_seed(rav, tmp_path):
    """Found as a user reading every run's predictions.csv with pandas: the rows named no fold and no
    seed, so the concatenated files could not be grouped per run, nor pooled per seed, without parsing
    the folder names; and metrics.json named neither the protocol nor the head."""
    import pandas as pd

    cfg = ExperimentConfig(stores=rav, features="egemaps", speaker_folds=3, **{**FAST, "seeds": 2})
    results = train_experiment(cfg, out=tmp_path, progress=False)
    rows = pd.concat([pd.read_csv(p) for p in sorted((tmp_path / "runs").glob("*/predictions.csv"))])
    uar = {(r["fold"], r["seed"]): r["uar"] for r in results["runs"]}
    grouped = rows.groupby(["fold", "seed"])
    assert set(grouped.groups) == set(uar) and len(uar) == 6
    for (fold, seed), part in grouped:
        recalls = part.assign(hit=part.label == part.predicted).groupby("label").hit.mean()
        assert recalls.mean() == pytest.approx(uar[fold, seed])
    # each metrics.json names its protocol and head too (the store's corpus, taken when none is given)
    for path in (tmp_path / "runs").glob("*/metrics.json"):
        metrics = json.loads(path.read_text())
        assert (metrics["protocol"], metrics["head"]) == ("ravdess", "dense") == (
            results["config"]["protocol"], results["config"]["head"])


def test_every_history_json_field_is_documented_and_best_epoch_counts_from_1(rav, tmp_path):
    """Leftover: history.json's best_epoch is 1-based, and neither it nor the other fields were described
    in README (it said "epoch, input and compute seconds")."""
    cfg = ExperimentConfig(stores=rav, features="egemaps", head="dense", norm="global",
                           **{**FAST, "recipe_overrides": {"max_epochs": 3, "patience": 5}})
    (spec,) = plan_runs(cfg)
    train_run(cfg, spec, out=tmp_path, threads=1)
    hist = json.loads((tmp_path / "runs" / "split__seed0" / "history.json").read_text())
    assert hist["epochs"] == len(hist["val_loss"]) == 3
    assert hist["best_epoch"] == int(np.argmin(hist["val_loss"])) + 1  # 1 is the first epoch
    assert hist["best_val_loss"] == min(hist["val_loss"])
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    described = readme[readme.index("`history.json` holds"):][:1200]
    assert "counted from 1" in described
    assert [key for key in hist if f"`{key}`" not in described] == []


def test_a_negative_thread_count_is_refused_not_a_process_abort(tmp_path, monkeypatch):
    """`train_experiment(cfg, threads=-1)` (or a cluster script's TF_NUM_INTRAOP_THREADS=-1) aborted the
    whole process, a notebook's kernel too: TensorFlow's "Check failed: num_threads >= 1 (-1 vs. 1)"."""
    from w2v2ser import ConfigError

    store = build_store(tmp_path / "s.zarr", utterances=ravdess_utterances(per_actor=2), features=("egemaps",))
    cfg = ExperimentConfig(stores={"main": str(store)}, features="egemaps", **FAST)
    with pytest.raises(ConfigError, match=r"threads: got -1; expected .* at least 1"):
        train_experiment(cfg, out=tmp_path / "run", progress=False, threads=-1)
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "-1")
    import tensorflow as tf

    with monkeypatch.context() as fresh:  # as in a fresh process: other tests set this one's count (threads=1)
        fresh.setattr(tf.config.threading, "get_intra_op_parallelism_threads", lambda: 0)
        with pytest.raises(ConfigError, match=r"TF_NUM_INTRAOP_THREADS is '-1'.*Unset it"):
            train_experiment(cfg, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "runs").exists()
    # review4 #4: "--1" was a ValueError traceback; threads=4.0 (YAML, a notebook) was accepted before the check.
    # TensorFlow reads a value that is no number as 0, its default.
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "--1")
    train_experiment(cfg, out=tmp_path / "run", progress=False)
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS")
    train_experiment(cfg, out=tmp_path / "run2", progress=False, threads=4.0)
    assert (tmp_path / "run" / "results.json").exists() and (tmp_path / "run2" / "results.json").exists()


def test_a_deterministic_run_gives_op_determinism_back(rav, tmp_path):
    """Found in review: a deterministic run enabled TensorFlow's op determinism for the rest of the
    process, so a notebook's later `deterministic=False` run (and its own TensorFlow work) stayed on
    the deterministic kernels. It is given back as it was when the call ends; runs stay repeatable."""
    from tensorflow.python.framework import config as tf_config

    tf_config.disable_op_determinism()
    cfg = ExperimentConfig(stores=rav, features="egemaps", deterministic=True, **FAST)
    (spec,) = plan_runs(cfg)
    train_experiment(cfg, out=tmp_path / "a", progress=False)
    assert not tf_config.is_op_determinism_enabled()
    train_run(cfg, spec, out=tmp_path / "b")
    assert not tf_config.is_op_determinism_enabled()
    read = lambda name: (tmp_path / name / "runs" / spec.name / "predictions.csv").read_text()  # noqa: E731
    assert read("a") == read("b")
    tf_config.enable_op_determinism()  # on before the call: left on
    train_run(cfg, spec, out=tmp_path / "c")
    assert tf_config.is_op_determinism_enabled() and read("c") == read("a")
    tf_config.disable_op_determinism()


def test_predictions_with_accented_labels_are_utf8_under_an_ascii_locale(tmp_path):
    """predictions.csv was written in the locale's encoding: under LC_ALL=C PYTHONUTF8=0 a label colère
    ended the run in a UnicodeEncodeError (and a Latin-1 locale wrote Latin-1 bytes, which the
    report, reading UTF-8, took for other labels)."""
    import dataclasses
    import subprocess
    import sys

    names = ("colère", "怒り", "joie")
    utts = [dataclasses.replace(u, id=f"u{k}", speaker=f"Zoë{k % 3}", label=names[k % 3], corpus="csv")
            for k, u in enumerate(ravdess_utterances(per_actor=4, actors=6))]
    store = build_store(tmp_path / "s.zarr", utterances=utts, features=("egemaps",))
    code = ("import sys; from w2v2ser.train import ExperimentConfig, train_experiment; "
            "train_experiment(ExperimentConfig(stores={'main': sys.argv[1]}, features='egemaps', speaker_folds=3, "
            "units=8, seeds=1, recipe_overrides={'max_epochs': 1}), out=sys.argv[2], progress=False)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUTF8", "PYTHONIOENCODING")}
    done = subprocess.run([sys.executable, "-c", code, str(store), str(tmp_path / "run")], capture_output=True,
                          text=True, env={**env, "LC_ALL": "C", "PYTHONUTF8": "0"}, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    paths = sorted((tmp_path / "run" / "runs").glob("*/predictions.csv"))
    assert len(paths) == 3, paths
    for path in paths:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert {r["label"] for r in rows} <= set(names) and "p_怒り" in rows[0], rows[0]
