"""Layer sweep: per-layer Dense probes and the weighted-average head trained in one pass."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from stage2_fixtures import build_store, ravdess_utterances
from w2v2ser.train import (ConfigError, ExperimentConfig, FeatureBatches, Item, SelectionError, Source,
                           build_normaliser, plan_runs, resolve_selection, sweep_experiment, train_experiment)

FAST = {"max_epochs": 20, "patience": 3}


def _store(path: Path, signal: list[float], *, dim: int = 8, per_actor: int = 8, seed: int = 0) -> Path:
    return build_store(path, utterances=ravdess_utterances(per_actor=per_actor, seed=seed), layers=len(signal),
                       dim=dim, features=("wav2vec2",), layer_signal=signal, seed=seed)


@pytest.fixture(scope="module")
def peaked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A 6-layer store where only layer 4 carries the label, swept over 2 seeds."""
    root = tmp_path_factory.mktemp("sweep")
    store = _store(root / "peak.zarr", [0, 0, 0, 0, 1.5, 0])
    config = ExperimentConfig(stores=str(store), features="wav2vec2", seeds=2, recipe_overrides=FAST,
                              run_eagerly=False)
    out = root / "sweep"
    return store, out, sweep_experiment(config, out=out, progress=False)


def test_sweep_peaks_at_the_only_layer_carrying_the_label(peaked: tuple) -> None:
    _, out, summary = peaked
    uars = {row["layer"]: row["uar_mean"] for row in summary["per_layer"]}
    assert summary["layers"] == [0, 1, 2, 3, 4, 5]
    assert summary["best_layer"] == 4
    others = [u for k, u in uars.items() if k != 4]
    assert uars[4] > max(others) + 0.3, uars
    assert max(others) < 0.45, uars  # 7 classes: chance is 1/7
    # the weighted head finds the layer: its weight dominates and its UAR is near the probe's
    weights = np.asarray(summary["weighted_average"]["layer_weights_mean"])
    assert int(np.argmax(weights)) == 4, weights
    assert summary["weighted_average"]["uar_mean"] > max(others) + 0.2


def test_each_head_is_an_ordinary_run_directory(peaked: tuple) -> None:
    from w2v2ser.evaluate._rundir import read_run_dir

    _, out, summary = peaked
    heads = [f"layer_{k:02d}" for k in range(6)] + ["all"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(heads)
    for name in heads:
        results = json.loads((out / name / "results.json").read_text())
        experiment = json.loads((out / name / "experiment.json").read_text())
        assert results["n_runs"] == 2 and results["config_key"] == experiment["config_key"]
        run = read_run_dir(out / name)
        assert run.status == "complete", run.reason
        layers = results["config"]["features"].split(":")[1]
        assert layers == ("all" if name == "all" else str(int(name[-2:])))
        for r in results["runs"]:
            metrics = json.loads((out / name / "runs" / r["name"] / "metrics.json").read_text())
            assert metrics["trained_by"] == "sweep"
            assert metrics["provenance"]["versions"]["tensorflow"]  # what the sweep was made with
            assert metrics["cached_in_memory"] is False  # the sweep streams, small as this store is
            assert metrics["selections"]["main"]["layers"] == (list(range(6)) if name == "all" else [int(name[-2:])])
    assert len(read_run_dir(out / "all").layer_weights) == 2


def test_each_head_writes_the_run_files_of_train(peaked: tuple) -> None:
    """Found as a user reading every run's files with pandas: a sweep head's metrics.json had no
    `per_class` and its history.json no `compute_seconds` (README: "epoch, input and compute seconds"),
    which train's have, so a script over all run directories failed on the sweep's."""
    _, out, _ = peaked
    for name in ("layer_04", "all"):
        for run in sorted((out / name / "runs").iterdir()):
            metrics = json.loads((run / "metrics.json").read_text())
            history = json.loads((run / "history.json").read_text())
            per_class = metrics["per_class"]
            assert set(metrics["classes"]) <= set(per_class)
            assert per_class["macro avg"]["recall"] == pytest.approx(metrics["uar"])
            assert sum(per_class[c]["support"] for c in metrics["classes"]) == metrics["n_test"]
            assert len(history["compute_seconds"]) == len(history["epoch_seconds"])
            assert all(0 <= c <= e for c, e in zip(history["compute_seconds"], history["epoch_seconds"]))
            with open(run / "predictions.csv", newline="") as fh:
                rows = list(csv.DictReader(fh))
            assert {(r["fold"], int(r["seed"])) for r in rows} == {(metrics["fold"], metrics["seed"])}
            config = json.loads((out / name / "results.json").read_text())["config"]
            assert (metrics["protocol"], metrics["head"]) == (config["protocol"], config["head"]) == ("ravdess", "dense")


def test_a_head_stopped_early_has_a_history_of_its_own_epochs(peaked: tuple) -> None:
    """Found by a code review: an early-stopped head's history.json had loss for its own epochs but
    epoch, input and compute seconds for all the sweep's, where train's history.json has one length."""
    _, out, _ = peaked
    stopped = 0
    for run in sorted(out.glob("*/runs/*")):
        metrics = json.loads((run / "metrics.json").read_text())
        history = json.loads((run / "history.json").read_text())
        lengths = {key: len(history[key]) for key in ("loss", "val_loss", "epoch_seconds", "input_seconds",
                                                      "compute_seconds")}
        assert set(lengths.values()) == {history["epochs"]}, (run, lengths)
        stopped += history["epochs"] < metrics["timing"]["sweep_epochs"]
    assert stopped  # the fixture has heads that stopped before the sweep's last epoch


def test_a_finished_sweep_is_not_retrained(peaked: tuple, capsys: pytest.CaptureFixture) -> None:
    store, out, summary = peaked
    config = ExperimentConfig(stores=str(store), features="wav2vec2", seeds=2, recipe_overrides=FAST)
    again = sweep_experiment(config, out=out, progress=True)
    assert capsys.readouterr().out.count("already complete") == 2
    assert again["per_layer"] == summary["per_layer"]


def test_report_plots_the_sweep_and_the_layer_weights(peaked: tuple, tmp_path: Path) -> None:
    from w2v2ser.evaluate import write_report

    _, out, _ = peaked
    report = write_report([out], out=tmp_path / "report")
    text = report.read_text()
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert "## Layer sweep" in text and "![layer sweep](layer_sweep.png)" in text
    assert re.search(r"\| 4 \| \d+\.\d ± \d+\.\d \(n=2\) \|", text)  # two seeds: mean ± std
    assert (tmp_path / "report" / "layer_sweep.png").stat().st_size > 1000
    assert (tmp_path / "report" / "layer_weights.png").exists()
    (line,) = data["layer_sweep"]["series"]
    assert line["layers"] == list(range(6)) and len(line["uar_std"]) == 6 and line["n"] == [2] * 6
    assert np.argmax(line["uar_mean"]) == 4
    (entry,) = data["runs"]  # the weighted-average head, named with its sweep folder
    assert entry["name"] == f"{out.name}/all" and f"| {out.name}/all | complete |" in text
    # The same folder named twice (a shell glob, a trailing slash, its `all` head): reported once.
    write_report([out, Path(f"{out}/"), out / "all"], out=tmp_path / "twice")
    twice = json.loads((tmp_path / "twice" / "report.json").read_text())
    assert [r["name"] for r in twice["runs"]] == [entry["name"]] and len(twice["layer_sweep"]["series"]) == 1


def test_predict_from_a_sweep_says_that_a_sweep_saves_no_models(peaked: tuple, tmp_path: Path, capsys) -> None:
    from fixtures_audio import write_audio
    from w2v2ser._cli import main

    _, out, _ = peaked
    audio = str(write_audio(tmp_path / "a.wav", duration=0.5))
    assert main(["predict", str(out), audio]) == 2
    assert "is a layer-sweep folder (`w2v2ser sweep`), and a sweep saves no models" in capsys.readouterr().err
    assert main(["predict", str(out / "layer_01"), audio]) == 2
    assert ("was trained by `w2v2ser sweep`, which saves no models. To predict with 'wav2vec2:1', train it with "
            "`w2v2ser train STORE --features wav2vec2:1`") in capsys.readouterr().err


def test_sweep_of_a_layer_range_and_bad_requests(peaked: tuple, tmp_path: Path) -> None:
    store, _, _ = peaked
    config = ExperimentConfig(stores=str(store), features="wav2vec2:3-5", seeds=1,
                              recipe_overrides={"max_epochs": 2})
    summary = sweep_experiment(config, out=tmp_path / "range", progress=False)
    assert summary["layers"] == [3, 4, 5]
    assert sorted(p.name for p in (tmp_path / "range").iterdir() if p.is_dir()) == [
        "all", "layer_03", "layer_04", "layer_05"]
    with pytest.raises(ConfigError, match="head"):
        sweep_experiment(ExperimentConfig(stores=str(store), features="wav2vec2", head="lstm"), out=tmp_path / "x")
    with pytest.raises(SelectionError, match="several layers"):
        sweep_experiment(ExperimentConfig(stores=str(store), features="wav2vec2:2"), out=tmp_path / "y")
    classic = build_store(tmp_path / "classic.zarr", utterances=ravdess_utterances(per_actor=1), features=("egemaps",))
    with pytest.raises(SelectionError, match="several layers; 'egemaps' resolves to no layer axis"):
        sweep_experiment(ExperimentConfig(stores=str(classic), features="egemaps"), out=tmp_path / "z")


@pytest.mark.parametrize("features, wider", [("wav2vec2:2-2", "wav2vec2:1-2"), ("wav2vec2:0", "wav2vec2:0-1"),
                                             ("ssl/wav2vec2:2-2", "ssl/wav2vec2:1-2")])
def test_a_sweep_of_one_layer_says_to_widen_the_range(tmp_path: Path, features: str, wider: str) -> None:
    """Found driving upstreams: `sweep --features hubert:2-2` said to name an upstream such as hubert;
    review s62 (item 8): the suggestions dropped the store alias of `ssl/hubert:2-2`."""
    store = build_store(tmp_path / "s.zarr", utterances=ravdess_utterances(per_actor=1), features=("wav2vec2",))
    layer = features.partition(":")[2].partition("-")[0]
    named = features.partition(":")[0]
    stores = {"ssl": str(store)} if "/" in features else str(store)
    with pytest.raises(SelectionError, match="several layers") as caught:
        sweep_experiment(ExperimentConfig(stores=stores, features=features), out=tmp_path / "out")
    assert f"sweep a wider range (e.g. {wider})" in str(caught.value)
    assert f"the whole upstream ({named})" in str(caught.value)
    assert f"w2v2ser train --features {named}:{layer}" in str(caught.value)


def test_each_probe_is_the_dense_head_of_its_layer() -> None:
    """Probe l of the stacked heads computes the paper's Dense head on layer l alone (inference)."""
    from w2v2ser.train._sweepfit import _SweepHeads

    rng = np.random.default_rng(3)
    n_layers, dim, classes = 3, 8, 4
    heads = _SweepHeads(n_layers, dim, classes, units=6, dropout=0.2, seed=1)
    for var in heads.stacked[1::2]:  # non-zero biases, so a wrong broadcast cannot hide
        var.assign(rng.normal(size=var.shape).astype(np.float32))
    x = rng.normal(size=(5, 7, n_layers, dim)).astype(np.float16)
    mask = np.ones((5, 7), np.float32)
    mask[1, 4:] = mask[3, 2:] = 0.0  # padded frames must not count
    probs = np.asarray(heads(x, mask, False))
    assert probs.shape == (5, n_layers + 1, classes)
    k1, b1, k2, b2, kc, bc = (np.asarray(v.numpy(), np.float64) for v in heads.stacked)
    for layer in range(n_layers):
        h = np.maximum(x[:, :, layer].astype(np.float64) @ k1[layer] + b1[layer], 0)
        h = np.maximum(h @ k2[layer] + b2[layer], 0)
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        logits = pooled @ kc[layer] + bc[layer]
        want = np.exp(logits - logits.max(1, keepdims=True))
        want /= want.sum(1, keepdims=True)
        np.testing.assert_allclose(probs[:, layer], want, rtol=1e-4, atol=1e-6)


def _probabilities(run: Path) -> dict[str, np.ndarray]:
    import csv

    (pred,) = (run / "runs").glob("*/predictions.csv")
    with open(pred, newline="") as fh:
        return {row["id"]: np.array([float(v) for k, v in row.items() if k.startswith("p_")])
                for row in csv.DictReader(fh)}


def test_a_probe_follows_the_path_of_train_on_its_layer_alone(peaked: tuple, tmp_path: Path) -> None:
    """Without dropout (no random draws while training) probe l of the sweep starts from the weights
    `train --features wav2vec2:l` starts from with the same seed, so it predicts what that run predicts."""
    store, _, _ = peaked
    fixed = {"max_epochs": 3, "patience": 10}
    common = dict(stores=str(store), seeds=1, dropout=0.0, recipe_overrides=fixed)
    sweep_experiment(ExperimentConfig(features="wav2vec2:0-2", **common), out=tmp_path / "sweep", progress=False)
    for layer in (1, 2):
        alone = tmp_path / f"layer{layer}"
        # cache off: the sweep streams, and the in-memory path shuffles otherwise (README "Input")
        train_experiment(ExperimentConfig(features=f"wav2vec2:{layer}", cache="off", **common), out=alone,
                         progress=False)
        swept, single = _probabilities(tmp_path / "sweep" / f"layer_{layer:02d}"), _probabilities(alone)
        assert swept.keys() == single.keys()
        diff = max(float(np.abs(swept[k] - single[k]).max()) for k in single)
        assert diff < 2e-3, (layer, diff)


def test_probes_and_weighted_head_start_from_the_dense_heads_weights_with_dropout() -> None:
    """With dropout the Dense head draws a seed for each Dropout layer between its kernels;
    the sweep's heads skip the same draws, so their kernels are still those of `train`."""
    from w2v2ser.train import DenseHead
    from w2v2ser.train._sweepfit import _SweepHeads

    n_layers, dim, units, classes = 3, 8, 6, 4
    heads = _SweepHeads(n_layers, dim, classes, units=units, dropout=0.2, seed=5)
    model = DenseHead(units=units, dropout=0.2, seed=5)._build({"main": ((dim,), "float32")}, classes)
    want = [np.asarray(w) for w in model.get_weights()]  # k1, b1, k2, b2, kc, bc
    for layer in range(n_layers):
        for got, w in zip(heads.get_head(layer), want):
            np.testing.assert_array_equal(got, w)
    weighted = heads.get_head(n_layers)  # alphas, then the same Dense weights
    for got, w in zip(weighted[1:], want):
        np.testing.assert_array_equal(got, w)


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_probe_dropout_drops_at_the_recipe_rate_and_scales_the_rest(rate: float) -> None:
    """The probes' 16-bit dropout: drop rate within binomial noise of the recipe's, kept units
    scaled by 1 / (1 - rate), masks that differ between calls, one mask for all probes (common
    random numbers), off at inference."""
    from w2v2ser.train._sweepfit import _SweepHeads

    heads = _SweepHeads(3, 8, 4, units=6, dropout=rate, seed=1)
    h = np.ones((3, 101, 333), np.float32)  # an odd unit count: the bits are not a whole number of draws
    first, second = (np.asarray(heads.probe_dropout(h, True)) for _ in range(2))
    n = h[0].size  # one mask for all probes
    for out in (first, second):
        assert set(np.unique(out).round(5)) == {0.0, round(1 / (1 - rate), 5)}
        dropped = float((out == 0).mean())
        assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / n)  # 5 sigma
    assert (first != second).mean() > 0.2  # a fresh mask each step
    np.testing.assert_array_equal(first[0], first[1])  # the same draws for every probe
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(np.asarray(heads.probe_dropout(h, False)), h)
    again = _SweepHeads(3, 8, 4, units=6, dropout=rate, seed=1)  # the run's seed fixes the draws
    np.testing.assert_array_equal(np.asarray(again.probe_dropout(h, True)), first)


def test_stopped_heads_stay_frozen_while_the_others_train(tmp_path: Path) -> None:
    """Per-head early stopping: a stopped head never changes again, and it stops no other head."""
    from w2v2ser.store import open_store
    from w2v2ser.train import get_recipe
    from w2v2ser.train._sweepfit import fit_sweep_heads

    store_path = _store(tmp_path / "graded.zarr", [0.0, 0.0, 0.2, 0.5, 1.5])
    store = open_store(store_path)
    sel = resolve_selection("wav2vec2:all", specs=store.features, alias="main")
    spec = plan_runs(ExperimentConfig(stores=str(store_path), features="wav2vec2:all", seeds=1))[0]
    records = {r.id: r for r in store.list_utterances()}
    from w2v2ser.train import get_protocol

    protocol = get_protocol("ravdess")
    classes = protocol.classes
    norm = build_normaliser(store, sel, "global", train_speakers=spec.train, speakers=[])
    parts = {}
    for part, speakers in spec.split().items():
        parts[part] = [Item(r.id, r.speaker, classes.index(protocol.map_label(r.label)), r.duration)
                       for r in records.values() if r.speaker in speakers and protocol.map_label(r.label)]
    common = dict(sources=[Source("main", store, sel, norm)], classes=classes, batch_size=16, max_frames=50)
    train = FeatureBatches(parts["train"], shuffle=True, seed=0, **common)
    val = FeatureBatches(parts["validation"], **common)
    snapshots: list[tuple[np.ndarray, list[list[np.ndarray]]]] = []

    def watch(epoch: int, heads, active: np.ndarray) -> None:
        snapshots.append((active, [heads.get_head(h) for h in range(len(active))]))

    recipe = get_recipe("paper", {"max_epochs": 25, "patience": 1})
    heads, hist = fit_sweep_heads(train, val, n_classes=len(classes), recipe=recipe, units=16, dropout=0.2,
                                  seed=0, epoch_end=watch)
    epochs = hist["epochs"]
    assert len(epochs) == 6 and len(set(epochs)) > 1, epochs  # heads stopped at different epochs
    final = [heads.get_head(h) for h in range(6)]
    for h in range(6):
        stop = epochs[h] - 1  # 0-based epoch after which head h was frozen (or the last epoch)
        for epoch in range(stop, len(snapshots)):
            assert all(np.array_equal(a, b) for a, b in zip(snapshots[epoch][1][h], final[h])), (h, epoch)
        for epoch in range(1, stop):  # while active (and before any restore) it kept training
            assert not all(np.array_equal(a, b) for a, b in zip(snapshots[epoch - 1][1][h], snapshots[epoch][1][h]))
    longest = int(np.argmax(epochs))
    assert epochs[longest] == len(snapshots)


def test_sweep_command_line(peaked: tuple, tmp_path: Path) -> None:
    from w2v2ser._cli import main

    store, _, _ = peaked
    out = tmp_path / "cli"
    code = main(["sweep", str(store), "--features", "wav2vec2:0-1", "--seeds", "1", "--out", str(out),
                 "--set", "max_epochs=2", "--no-progress"])
    assert code == 0
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["layers"] == [0, 1] and summary["upstream"] == "wav2vec2"
    assert main(["sweep", str(store), "--features", "wav2vec2", "--head", "lstm", "--out", str(out)]) == 2


@pytest.mark.slow
def test_sweep_matches_separate_runs_within_seed_noise(tmp_path: Path) -> None:
    """Same UAR as `w2v2ser train` on each layer alone and on :all, over 10 seeds (Welch t-test).

    Layer 1's weak signal gives a per-seed std of about 0.1: with 5 seeds one outlying seed
    (0.69 against 0.29-0.53) moved the mean difference to the 0.1 bound (0.098 with one
    dropout mask per probe, 0.101 with the shared one; 0.056 over 10 seeds)."""
    from scipy.stats import ttest_ind

    store = _store(tmp_path / "graded.zarr", [0.0, 0.1, 0.25, 1.0], per_actor=10)
    seeds = 10
    config = ExperimentConfig(stores=str(store), features="wav2vec2", seeds=seeds, recipe_overrides=FAST)
    summary = sweep_experiment(config, out=tmp_path / "sweep", progress=False)
    swept = {f"wav2vec2:{r['layer']}": r["uar_per_run"] for r in summary["per_layer"]}
    swept["wav2vec2:all"] = summary["weighted_average"]["uar_per_run"]
    for features in ("wav2vec2:1", "wav2vec2:2", "wav2vec2:all"):
        single = ExperimentConfig(stores=str(store), features=features, seeds=seeds, recipe_overrides=FAST)
        alone = train_experiment(single, out=tmp_path / features.replace(":", "_"), progress=False)["uar_per_run"]
        print(features, "sweep", np.round(swept[features], 3), "separate", np.round(alone, 3))
        p = ttest_ind(swept[features], alone, equal_var=False).pvalue
        assert abs(np.mean(swept[features]) - np.mean(alone)) < 0.1, (features, swept[features], alone)
        assert not p < 0.01, (features, swept[features], alone, p)
    # the graded signal shows: separate runs and the sweep agree that layer 3 beats layer 0
    assert np.mean(swept["wav2vec2:3"]) > np.mean(swept["wav2vec2:0"]) + 0.1


def _sweep_pipeline(tmp_path: Path, **sweep: object) -> Path:
    from test_run_pipeline import make_tiny_corpus, make_tiny_model, write_tiny_pipeline

    make_tiny_corpus(tmp_path / "data")
    model = make_tiny_model(tmp_path / "model")
    return write_tiny_pipeline(tmp_path, model=model, features=("w2v2/wav2vec2:local",), extra={
        "experiments.sweep": {"corpus": "ravdess", "features": "w2v2/wav2vec2", "sweep": True, "seeds": 1,
                              "units": 8, "recipe_overrides": {"max_epochs": 2}, **sweep}})


def test_pipeline_reads_a_sweep_experiment(tmp_path: Path) -> None:
    from test_run_pipeline import needs_ravdess
    from w2v2ser._config import ConfigError, load_pipeline

    if needs_ravdess.args[0]:
        pytest.skip(needs_ravdess.kwargs["reason"])
    config = load_pipeline(_sweep_pipeline(tmp_path))
    (spec,) = [e for e in config.experiments if e.sweep]
    assert spec.name == "sweep/ravdess" and spec.config["features"] == "w2v2/wav2vec2"
    assert not any(e.sweep for e in config.experiments if e is not spec)
    with pytest.raises(ConfigError, match="experiments.sweep.head"):
        load_pipeline(_sweep_pipeline(tmp_path, head="lstm"))
    with pytest.raises(ConfigError, match="experiments.sweep.sweep"):
        load_pipeline(_sweep_pipeline(tmp_path, sweep="yes"))


@pytest.mark.slow
def test_pipeline_runs_a_sweep_experiment(tmp_path: Path) -> None:
    """`sweep: true` in pipeline.yaml: extract a tiny model's store, sweep it, report it."""
    from test_run_pipeline import needs_ravdess
    from w2v2ser._config import load_pipeline
    from w2v2ser._run import run_pipeline

    if needs_ravdess.args[0]:
        pytest.skip(needs_ravdess.kwargs["reason"])
    path = _sweep_pipeline(tmp_path)
    (spec,) = [e for e in load_pipeline(path).experiments if e.sweep]
    assert run_pipeline(path) == 0
    summary = json.loads((spec.run_dir / "sweep.json").read_text())
    assert summary["layers"] == [0, 1, 2] and summary["feature_spec"]["dim"] == 32  # tiny model: 2 layers, width 32
    report = tmp_path / "out" / "reports" / "tiny"
    assert "## Layer sweep" in (report / "report.md").read_text() and (report / "layer_sweep.png").exists()


def test_a_sweep_into_the_folder_of_another_sweep_says_what_it_replaces(peaked: tuple, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Found by a new-user trial: a sweep of another configuration (another normalisation, fewer
    layers) replaced the finished runs of the one before without a word, as `train` warns."""
    store, _, _ = peaked
    out = tmp_path / "shared"
    first = ExperimentConfig(stores=str(store), features="wav2vec2:3-5", seeds=1, recipe_overrides={"max_epochs": 1})
    sweep_experiment(first, out=out, progress=False)
    caplog.clear()
    sweep_experiment(first, out=out, progress=False)  # the same sweep again: nothing to say
    assert "another configuration" not in caplog.text and "earlier sweep" not in caplog.text
    second = ExperimentConfig(stores=str(store), features="wav2vec2:3-4", seeds=1, norm="global",
                              recipe_overrides={"max_epochs": 1})
    sweep_experiment(second, out=out, progress=False)
    assert f"{out} holds runs of another configuration (" in caplog.text and "norm 'speaker' -> 'global'" in caplog.text
    assert f"{out} holds layer_05 of an earlier sweep over other layers" in caplog.text


def test_sweep_command_line_checks_every_upstream_before_training(peaked: tuple, tmp_path: Path, capsys) -> None:
    """`sweep --features ""` exited 0 having done nothing, and a misspelt second upstream was found
    only after the first one's whole sweep had trained (then exit 2, "nothing ran")."""
    from w2v2ser._cli import main

    store, _, _ = peaked
    for empty in ("", " ", ","):
        assert main(["sweep", str(store), "--features", empty, "--out", str(tmp_path / "e")]) == 2
        assert "names no upstream to sweep" in capsys.readouterr().err
    out = tmp_path / "two"
    assert main(["sweep", str(store), "--features", "wav2vec2:0-1,hubrt", "--seeds", "1", "--out", str(out),
                 "--set", "max_epochs=1", "--no-progress"]) == 2
    assert "hubrt" in capsys.readouterr().err and not out.exists()
    # One sweep named twice (wav2vec2 and wav2vec2:all are the same layers) is trained once.
    from w2v2ser._cli_train import _same_sweep

    assert _same_sweep("wav2vec2", "wav2vec2:all") and not _same_sweep("wav2vec2", "main/wav2vec2")
    assert main(["sweep", str(store), "--features", "wav2vec2:0-1,wav2vec2:0-1", "--seeds", "1", "--out", str(out),
                 "--set", "max_epochs=1", "--no-progress"]) == 0
    assert "'wav2vec2:0-1' sweeps the same layers as 'wav2vec2:0-1'; swept once" in capsys.readouterr().err
    assert (out / "sweep.json").is_file()  # one upstream: its sweep is the folder itself


def test_evaluate_of_an_unfinished_sweep_says_once_to_rerun_the_sweep(peaked: tuple, tmp_path: Path, capsys) -> None:
    """A sweep stopped before its summary: evaluate printed one warning per head (14 for a base
    model), each saying to rerun `w2v2ser train`, which would put another kind of run there."""
    import shutil

    from w2v2ser._cli import main

    _, out, _ = peaked
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    (cut / "sweep.json").unlink()
    for results in cut.glob("*/results.json"):
        results.unlink()
    assert main(["evaluate", str(cut), "--out", str(tmp_path / "report")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert f"7 run directories ({cut}/all, {cut}/layer_00, ...) are not in the tables: part of the unfinished layer sweep {cut}; rerun the same `w2v2ser sweep`" in warnings[0]
    assert "w2v2ser train" not in warnings[0]


def test_a_sweep_given_more_seeds_reads_as_unfinished_until_they_are_trained(peaked: tuple, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Found as a paper author: `w2v2ser sweep --seeds 3` into a 2-seed sweep kept every head's results.json of
    2 seeds while it trained the third, so evaluate reported the sweep complete (and stopped midway, it stayed
    so); `w2v2ser train` drops a stale results.json the same way."""
    import shutil

    from w2v2ser.evaluate import write_report
    from w2v2ser.train import _sweep

    store, out, _ = peaked
    more = tmp_path / "more"
    shutil.copytree(out, more)
    real = _sweep._sweep_run

    def stop_at_the_new_seed(config, configs, spec, *args, **kwargs):  # noqa: ANN001, ANN202
        if spec.seed == 2:
            raise RuntimeError("stopped")
        return real(config, configs, spec, *args, **kwargs)

    monkeypatch.setattr(_sweep, "_sweep_run", stop_at_the_new_seed)
    config = ExperimentConfig(stores=str(store), features="wav2vec2", seeds=3, recipe_overrides=FAST,
                              run_eagerly=False)
    with pytest.raises(RuntimeError, match="stopped"):
        sweep_experiment(config, out=more, progress=False)
    assert not list(more.glob("*/results.json"))
    write_report([more], out=tmp_path / "report")
    runs = json.loads((tmp_path / "report" / "report.json").read_text())["runs"]
    assert runs and all(r["status"] == "incomplete" for r in runs)


def test_a_sweep_rerun_with_fewer_seeds_records_them_in_every_head(peaked: tuple, tmp_path: Path) -> None:
    """Found in review: a layer sweep re-run whose runs were all done (here: fewer seeds, all trained
    before) kept the old seeds in each head's experiment.json, from which evaluate and predict take
    the seeds where results.json does not name them. `train` rewrote it; the sweep now does too, in
    `w2v2ser sweep` and in `w2v2ser run`'s layer-sweep experiments alike."""
    import shutil

    store, out, _ = peaked
    fewer = tmp_path / "fewer"
    shutil.copytree(out, fewer)
    config = ExperimentConfig(stores=str(store), features="wav2vec2", seeds=1, recipe_overrides=FAST,
                              run_eagerly=False)
    sweep_experiment(config, out=fewer, progress=False)
    heads = [f"layer_{k:02d}" for k in range(6)] + ["all"]
    for name in heads:
        experiment = json.loads((fewer / name / "experiment.json").read_text())
        assert experiment["seeds"] == 1, (name, experiment["seeds"])
        assert json.loads((fewer / name / "results.json").read_text())["n_runs"] == 1


def test_a_pipeline_sweep_rerun_with_fewer_seeds_records_them_in_every_head(tmp_path: Path) -> None:
    """The same in `w2v2ser run`: its train stage does not call a sweep's done runs, so no head's
    experiment.json got the seeds of a rerun with fewer of them."""
    from test_run_pipeline import make_tiny_corpus, make_tiny_model, needs_ravdess, write_tiny_pipeline
    from w2v2ser._config import load_pipeline
    from w2v2ser._run import run_pipeline

    if needs_ravdess.args[0]:
        pytest.skip(needs_ravdess.kwargs["reason"])
    make_tiny_corpus(tmp_path / "data")
    path = write_tiny_pipeline(tmp_path, model=make_tiny_model(tmp_path / "model"), extra={"experiments": {
        "sweep": {"corpus": "ravdess", "features": "w2v2/wav2vec2", "sweep": True, "seeds": 2, "units": 8,
                  "recipe_overrides": {"max_epochs": 1}}}})
    assert run_pipeline(path, stage="extract") == 0
    assert run_pipeline(path, stage="train") == 0
    fewer = ["experiments.sweep.seeds=1"]
    assert run_pipeline(path, stage="train", overrides=fewer) == 0
    (spec,) = load_pipeline(path, overrides=fewer).experiments
    heads = sorted(p for p in spec.run_dir.iterdir() if (p / "experiment.json").exists())
    assert [p.name for p in heads] == ["all", "layer_00", "layer_01", "layer_02"]
    for head in heads:
        assert json.loads((head / "experiment.json").read_text())["seeds"] == 1, head.name
        assert json.loads((head / "results.json").read_text())["n_runs"] == 1, head.name


def test_describe_sweep_names_the_layers_tied_for_best() -> None:
    """Found as a paper author: a sweep whose probes all scored 14.3 (chance) said "best layer 0", as if
    layer 0 were better than the others."""
    from w2v2ser.train import describe_sweep

    def row(layer: int | None, uar: float) -> dict:
        return {"layer": layer, "uar_mean": uar, "uar_std": 0.0, "uar_per_run": [uar, uar], "n_runs": 2, "splits": {"all": {}}}

    summary = {"per_layer": [row(0, 0.143), row(1, 0.143), row(2, 0.143), row(3, 0.1)], "best_layer": 0,
               "weighted_average": row(None, 0.143)}
    assert describe_sweep(summary).startswith("best layer 0 (tied with layers 1, 2) UAR 14.3")
    summary["per_layer"][1]["uar_mean"] = 0.12
    assert describe_sweep(summary).startswith("best layer 0 (tied with layer 2) UAR 14.3")
    summary["per_layer"][2]["uar_mean"] = 0.12
    assert describe_sweep(summary).startswith("best layer 0 UAR 14.3")
    # Equal UARs reached through different sums differ in the last digit (review L5).
    summary["per_layer"][0]["uar_mean"], summary["per_layer"][3]["uar_mean"] = 0.1 + 0.2, 0.3
    assert describe_sweep(summary).startswith("best layer 0 (tied with layer 3) UAR 30.0")


def test_a_sweep_warns_once_per_run_of_utterances_without_frames(tmp_path: Path) -> None:
    """Found by a follow-up: a head's fit (so each `train` run) warned of utterances without frames, but
    the sweep, which trains without fit, trained on them without a word."""
    import warnings

    utterances = ravdess_utterances(per_actor=4)
    # durations depend only on the table's length: with these, rows 21 and 52 get 0 wav2vec2 frames
    store = build_store(tmp_path / "short.zarr", utterances=utterances, layers=3, dim=4, features=("wav2vec2",),
                        min_seconds=0.0)
    empty = {utterances[21].id: utterances[21].speaker, utterances[52].id: utterances[52].speaker}
    config = ExperimentConfig(stores=str(store), features="wav2vec2:all", seeds=1, recipe_overrides={"max_epochs": 1})
    expected = []
    for spec in plan_runs(config):
        parts = spec.split()
        where = [f"{len(ids)} of its {part} part ({', '.join(repr(i) for i in ids)})"
                 for part, ids in (("training", [i for i, s in empty.items() if s in parts["train"]]),
                                   ("validation", [i for i, s in empty.items() if s in parts["validation"]])) if ids]
        if where:
            expected.append(f"layer sweep run {spec.name}: utterances without frames: {'; '.join(where)}. The head "
                            f"sees each as no input (the same for each), so it learns their labels for no input, not "
                            f"from speech. Leave them out, or give audio long enough for one frame")
    assert expected  # the empty rows train in some run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sweep_experiment(config, out=tmp_path / "sweep", progress=False)
    assert [str(w.message) for w in caught if "without frames" in str(w.message)] == expected
