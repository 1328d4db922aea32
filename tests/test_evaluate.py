"""Report over synthetic run directories written by hand in the documented run-dir format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from w2v2ser.evaluate import write_report

CLASSES = ["angry", "happy", "neutral", "sad"]
MODELS = {"pt": "facebook/wav2vec2-base", "ft": "facebook/wav2vec2-base-960h"}


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def make_run_dir(root: Path, name: str, *, corpus: str = "ravdess", features: object = "egemaps",
                 head: str = "dense", model: str | None = None, uars: tuple[float, ...] = (0.5, 0.6, 0.7),
                 alphas: bool = False, recipe: str = "official", normalisation: str = "speaker",
                 seed: int = 0, pooled: tuple[float, ...] | None = None, recipe_overrides: dict | None = None,
                 upstream: str = "wav2vec2") -> Path:
    """A finished run directory: experiment.json, runs/*/metrics.json (+layer_weights.json), results.json."""
    rng = np.random.default_rng(seed)
    run_dir = root / name
    store = {"path": str(root / "store.zarr"), "features": {}}
    if model:
        store["features"][upstream] = {"name": upstream, "dim": 768, "layers": 13,
                                         "config": {"model": model, "revision": None}}
    # ExperimentConfig.to_dict() fields + the identities train adds to experiment.json
    config = {"stores": {"main": store["path"]}, "features": features, "head": head, "norm": normalisation,
              "protocol": corpus, "recipe": recipe, "recipe_overrides": recipe_overrides or {}, "seeds": len(uars)}
    _write_json(run_dir / "experiment.json", {**config, "config_key": "0" * 16,
                                              "stores_identity": {"main": store}})
    confusion = np.zeros((4, 4), dtype=int)
    layer_weights: dict[str, object] = {}
    for seed_i, uar in enumerate(uars):
        conf = rng.integers(0, 5, size=(4, 4)) + np.eye(4, dtype=int) * 10
        confusion += conf
        _write_json(run_dir / "runs" / f"all__seed{seed_i}" / "metrics.json",
                    {"uar": uar, "accuracy": uar, "n_test": int(conf.sum()), "confusion": conf.tolist(),
                     "fold": "all", "seed": seed_i, "split": {}})
        if alphas:
            a = rng.normal(size=13) + (np.arange(13) if "960h" not in (model or "") else -np.arange(13)) / 4
            a = np.abs(a)
            entry = {"main": {"alphas": a.tolist(), "normalised": (a / a.sum()).tolist(),
                              "layers": list(range(13)), "store": "main", "selection": features}}
            _write_json(run_dir / "runs" / f"all__seed{seed_i}" / "layer_weights.json", entry)
            layer_weights[f"all__seed{seed_i}"] = entry
    results = {"uar_mean": float(np.mean(uars)), "uar_std": float(np.std(uars)), "uar_per_run": list(uars),
               "accuracy_mean": float(np.mean(uars)), "n_test": 208, "classes": CLASSES,  # per seed, as train writes
               "confusion": confusion.tolist(), "config": config, "recipe": {"name": recipe, "learning_rate": 1e-4},
               # pooled: several folds (IEMOCAP sessions), scored per seed over all folds' predictions
               "splits": {f"session{k}": {} for k in range(1, 6)} if pooled else {"all": {}},
               "uar_pooled_per_seed": {str(i): u for i, u in enumerate(pooled or uars)},
               "uar_pooled_mean": float(np.mean(pooled or uars)), "uar_pooled_std": float(np.std(pooled or uars)),
               "timing": {"seconds": 1.0}}
    if layer_weights:
        results["layer_weights"] = layer_weights
    _write_json(run_dir / "results.json", results)
    return run_dir


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100


@pytest.fixture()
def run_dirs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "runs"
    dirs = [
        make_run_dir(root, "egemaps_ravdess", features="egemaps", uars=(0.55, 0.60, 0.65)),
        make_run_dir(root, "egemaps_iemocap", corpus="iemocap", features="egemaps", uars=(0.4, 0.5, 0.6, 0.7),
                     pooled=(0.50, 0.52, 0.54)),
        make_run_dir(root, "w2v_pt_ravdess", features="wav2vec2:all", head="weighted_dense",
                     model=MODELS["pt"], uars=(0.80, 0.82, 0.84), alphas=True, seed=1),
        make_run_dir(root, "w2v_ft_ravdess", features="wav2vec2:all", head="weighted_dense",
                     model=MODELS["ft"], uars=(0.70, 0.71, 0.72), alphas=True, seed=2),
        make_run_dir(root, "egemaps_ravdess_lstm", features="egemaps", head="lstm", uars=(0.58, 0.60)),
    ]
    skipped = root / "w2v_large_ravdess"
    _write_json(skipped / "experiment.json", {"corpus": "ravdess", "features": "wav2vec2:all", "head": "dense",
                                              "norm": "speaker", "recipe": "official"})
    _write_json(skipped / "skipped.json", {"reason": "model facebook/wav2vec2-large could not be loaded"})
    skipped_too = root / "w2v_large_ravdess_lstm"
    _write_json(skipped_too / "experiment.json", {"corpus": "ravdess", "features": "wav2vec2:all", "head": "lstm",
                                                  "norm": "speaker", "recipe": "official"})
    _write_json(skipped_too / "skipped.json", {"reason": "model facebook/wav2vec2-large could not be loaded"})
    incomplete = root / "spectrogram_ravdess"
    _write_json(incomplete / "experiment.json", {"corpus": "ravdess", "features": "spectrogram", "head": "dense",
                                                 "norm": "speaker", "recipe": "official"})
    _write_json(incomplete / "runs" / "all__seed0" / "metrics.json", {"uar": 0.4})
    broken = root / "broken"
    broken.mkdir()
    (broken / "results.json").write_text("{not json", encoding="utf-8")
    return dirs + [skipped, skipped_too, incomplete, broken, root / "does_not_exist"]


def test_rows_of_other_upstreams_are_named_by_model_and_layers(tmp_path: Path) -> None:
    """HuBERT/WavLM/data2vec runs showed as '— | hubert' (no model, no layer text): only wav2vec2
    selections were recognised as upstreams."""
    runs = [make_run_dir(tmp_path / "runs", "hubert_all", features="hubert:all", model="facebook/hubert-base-ls960",
                         upstream="hubert", alphas=True),
            make_run_dir(tmp_path / "runs", "wavlm_6", features="wavlm:6", model="microsoft/wavlm-base-plus",
                         upstream="wavlm")]
    md = write_report(runs, out=tmp_path / "report").read_text(encoding="utf-8")
    assert "| hubert-base-ls960 | all layers | dense | speaker | official | 60.0 ± 8.2 (n=3) |" in md
    assert "| wavlm-base-plus | layer 6 | dense | speaker | official | 60.0 ± 8.2 (n=3) |" in md
    assert "| hubert_all | complete | RAVDESS | hubert PT all layers |" in md
    assert "| wavlm_6 | complete | RAVDESS | wavlm PT layer 6 |" in md


def test_report_model_ids_are_those_of_the_features_the_run_used(tmp_path: Path) -> None:
    """Leftover: report.json's model_ids of an eGeMAPS run on a store that also holds wav2vec2 frames
    listed that wav2vec2 model, which the run never read."""
    model = "facebook/wav2vec2-base"
    runs = [make_run_dir(tmp_path / "runs", "egemaps", features="egemaps", model=model),
            make_run_dir(tmp_path / "runs", "w2v2", features="wav2vec2:all", model=model),
            make_run_dir(tmp_path / "runs", "fusion", features="wav2vec2:all", head="fusion", model=model)]
    write_report(runs, out=tmp_path / "r")
    ids = {e["name"]: e["model_ids"] for e in json.loads((tmp_path / "r" / "report.json").read_text())["runs"]}
    assert ids == {"egemaps": [], "w2v2": [model], "fusion": [model]}


@pytest.mark.parametrize("features", ["wav2vec2:all", ["wav2vec2:all"]])  # a list: an older layout
def test_a_fusion_branch_without_prefix_is_looked_up_in_the_fusion_store(tmp_path: Path, features) -> None:
    """Review s63: with stores {main: wav2vec2, fusion: hubert} and fusion_features "hubert:all" (no
    prefix), the branch reads the fusion store (ExperimentConfig.selections), but the report looked
    it up in "main": model_ids lost the HuBERT model and the row read "hubert:all (wav2vec2-base)".
    Review 3: with `features` a list (an older layout), model_ids still lost the fusion branch's."""
    hubert = "facebook/hubert-base-ls960"
    run = make_run_dir(tmp_path / "runs", "fusion", features=features, head="fusion", model=MODELS["pt"])
    experiment = json.loads((run / "experiment.json").read_text(encoding="utf-8"))
    experiment["stores"]["fusion"] = str(tmp_path / "hubert.zarr")
    experiment["fusion_features"] = "hubert:all"
    experiment["stores_identity"]["fusion"] = {"path": str(tmp_path / "hubert.zarr"), "features": {
        "hubert": {"name": "hubert", "dim": 768, "layers": 13, "config": {"model": hubert, "revision": None}}}}
    _write_json(run / "experiment.json", experiment)
    write_report([run], out=tmp_path / "r")
    data = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert data["runs"][0]["model_ids"] == [MODELS["pt"], hubert]
    if isinstance(features, str):
        assert [r["selection"] for r in data["feature_table"]["rows"]] == ["all layers + hubert:all (hubert-base-ls960)"]


def test_rows_of_one_cell_are_told_apart_by_the_settings_that_differ(tmp_path: Path) -> None:
    """Two run dirs of one model x selection x head (a units study) were labelled by run-dir name only."""
    runs = [make_run_dir(tmp_path / "runs", name, uars=uars) for name, uars in
            (("study_a", (0.5, 0.6)), ("study_b", (0.6, 0.7)), ("study_c", (0.4, 0.5)))]
    for run, units in zip(runs, (128, 32, 128)):
        experiment = json.loads((run / "experiment.json").read_text())
        _write_json(run / "experiment.json", {**experiment, "units": units, "dropout": 0.2, "seeds": 2})
    md = write_report(runs, out=tmp_path / "report").read_text(encoding="utf-8")
    assert "| — | eGeMAPS | dense | speaker | official | 55.0 ± 5.0 (n=2) · paper" in md
    assert "| — | eGeMAPS [units=32] | dense | speaker | official | 65.0 ± 5.0 (n=2) · paper" in md
    # the settings of the plain row: named by its run dir (review s63: was diffed against the units=32 row)
    assert "| — | eGeMAPS [study_c] | dense | speaker | official | 45.0 ± 5.0 (n=2) · paper" in md
    # Table 2 with LSTM runs of both sizes: each size is its own row (the second dense and LSTM
    # runs were dropped, so only the first pair was compared)
    for units, uars in ((128, (0.3, 0.4)), (32, (0.2, 0.3))):
        lstm = make_run_dir(tmp_path / "runs", f"study_lstm{units}", head="lstm", uars=uars)
        experiment = json.loads((lstm / "experiment.json").read_text())
        _write_json(lstm / "experiment.json", {**experiment, "units": units, "dropout": 0.2, "seeds": 2})
        runs.append(lstm)
    md = write_report(runs, out=tmp_path / "report").read_text(encoding="utf-8")
    table2 = md.split("## Head comparison")[1].split("\n## ")[0]
    assert "| — | eGeMAPS | speaker | official | RAVDESS | 55.0 ± 5.0 (n=2) | 35.0 ± 5.0 (n=2) |" in table2
    assert "| — | eGeMAPS [units=32] | speaker | official | RAVDESS | 65.0 ± 5.0 (n=2) | 25.0 ± 5.0 (n=2) |" in table2


def test_a_third_row_is_labelled_by_what_differs_from_the_plain_row(tmp_path: Path) -> None:
    """Review s63: a new row's label was diffed against the last row, so a third run dir (units=128,
    dropout=0.5) after a units=32 one read "[dropout=0.5, units=128]", though units=128 is the plain row's."""
    runs = [make_run_dir(tmp_path / "runs", name, uars=uars) for name, uars in
            (("a", (0.5, 0.6)), ("b", (0.6, 0.7)), ("c", (0.4, 0.5)))]
    for run, (units, dropout) in zip(runs, ((128, 0.2), (32, 0.2), (128, 0.5))):
        experiment = json.loads((run / "experiment.json").read_text())
        _write_json(run / "experiment.json", {**experiment, "units": units, "dropout": dropout, "seeds": 2})
    for head in ("lstm",):  # the head table labels its rows the same way
        for run, (units, dropout) in zip(runs, ((128, 0.2), (32, 0.2), (128, 0.5))):
            lstm = make_run_dir(tmp_path / "runs", f"{run.name}_{head}", head=head, uars=(0.3, 0.4))
            experiment = json.loads((lstm / "experiment.json").read_text())
            _write_json(lstm / "experiment.json", {**experiment, "units": units, "dropout": dropout, "seeds": 2})
            runs.append(lstm)
    write_report(runs, out=tmp_path / "report")
    data = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    labels = ["eGeMAPS", "eGeMAPS [units=32]", "eGeMAPS [dropout=0.5]"]
    assert [r["selection"] for r in data["feature_table"]["rows"] if r["head"] == "dense"] == labels
    assert [r["selection"] for r in data["head_table"]["rows"]] == labels


def test_the_reports_verdict_follows_its_stated_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s63: the rule was tested on the private verdict() only. The rendered report states
    |d| <= max(2*sqrt(s^2 + s_paper^2), 1 point) and marks its cells by it (paper eGeMAPS: 57.0 ± 2.4)."""
    cases = {"inside": (0.617, 0.617), "outside": (0.619, 0.619),  # 2 x 2.4 = 4.8 points
             "spread": (0.60, 0.64)}  # d = 5.0, s = 2.0: 2 x sqrt(4 + 5.76) = 6.2 (the paper's std alone: ✗)
    runs = [make_run_dir(tmp_path / "runs", name, uars=uars, seed=k) for k, (name, uars) in enumerate(cases.items())]
    md = write_report(runs, out=tmp_path / "report").read_text(encoding="utf-8")
    assert "✓ when |difference| ≤ max(2·√(s_measured² + s_paper²), 1 point)" in md
    assert "| — | eGeMAPS | dense | speaker | official | 61.7 ± 0.0 (n=2) · paper 57.0 ± 2.4 (unchecked), +4.7 ✓ |" in md
    assert "| — | eGeMAPS [outside] | dense | speaker | official | 61.9 ± 0.0 (n=2) · paper 57.0 ± 2.4 (unchecked), +4.9 ✗ |" in md
    assert ("| — | eGeMAPS [spread] | dense | speaker | official | 62.0 ± 2.0 (n=2) · paper 57.0 ± 2.4 (unchecked), "
            "+5.0 ✓ |") in md
    # The floor: a published value of small spread still allows 1 point.
    from w2v2ser.evaluate import _paper

    data = json.loads(json.dumps(_paper._data()))
    data["rows"][0]["values"]["ravdess"]["std"] = 0.1
    monkeypatch.setattr(_paper, "_data", lambda: data)
    md = write_report(runs[:1], out=tmp_path / "floor").read_text(encoding="utf-8")
    assert "61.7 ± 0.0 (n=2) · paper 57.0 ± 0.1 (unchecked), +4.7 ✗ |" in md
    for k, (uars, mark) in enumerate((((0.579, 0.579), "+0.9 ✓"), ((0.581, 0.581), "+1.1 ✗"))):
        run = make_run_dir(tmp_path / "floor_runs", f"f{k}", uars=uars)
        assert mark in write_report([run], out=tmp_path / f"floor{k}").read_text(encoding="utf-8")


def test_a_corpus_cell_joins_the_row_of_its_own_settings(tmp_path: Path) -> None:
    """An IEMOCAP run (units=128) after two RAVDESS runs (units 128 and 32) landed in the row of the
    last one, labelled units=32, while the units=128 row showed no IEMOCAP figure."""
    runs = [make_run_dir(tmp_path / "runs", "a_ravdess", uars=(0.56, 0.57, 0.58)),
            make_run_dir(tmp_path / "runs", "b_ravdess_small", uars=(0.40, 0.41, 0.42)),
            make_run_dir(tmp_path / "runs", "c_iemocap", corpus="iemocap", uars=(0.5, 0.6) * 5, pooled=(0.55, 0.56))]
    for run, units in zip(runs, (128, 32, 128)):
        experiment = json.loads((run / "experiment.json").read_text())
        _write_json(run / "experiment.json", {**experiment, "units": units, "dropout": 0.2})
    md = write_report(runs, out=tmp_path / "report").read_text(encoding="utf-8")
    assert ("| — | eGeMAPS | dense | speaker | official | 57.0 ± 0.8 (n=3) · paper 57.0 ± 2.4 (unchecked), +0.0 ✓ "
            "| 55.5 ± 0.5 (n=2) |") in md
    assert ("| — | eGeMAPS [units=32] | dense | speaker | official | 41.0 ± 0.8 (n=3) · paper 57.0 ± 2.4 "
            "(unchecked), not compared (units=32) | — |") in md
    rows = json.loads((tmp_path / "report" / "report.json").read_text())["feature_table"]["rows"]
    assert [sorted(Path(p).name for p in row["run_dirs"].values()) for row in rows] == [
        ["a_ravdess", "c_iemocap"], ["b_ravdess_small"]]
    # Skipped by `w2v2ser run` on both corpora: their skipped.json name the experiment and its corpus,
    # which are not settings; one row, one cell per corpus.
    skipped = []
    for corpus in ("iemocap", "ravdess"):
        run_dir = tmp_path / "table1" / corpus / "w2v2-pt-all"
        _write_json(run_dir / "skipped.json", {
            "reason": "model offline", "name": f"table1/{corpus}/w2v2-pt-all", "corpus": corpus, "head": "dense",
            "norm": "speaker", "recipe": "official", "features": "w2v2_pt/wav2vec2:all", "units": 128,
            "stores": {"w2v2_pt": f"stores/{corpus}-w2v2.zarr"},
            "stores_identity": {"w2v2_pt": {"path": f"stores/{corpus}-w2v2.zarr",
                                            "features": {"wav2vec2": {"config": {"model": MODELS["pt"]}}}}}})
        skipped.append(run_dir)
    md = write_report(skipped, out=tmp_path / "report2").read_text(encoding="utf-8")
    assert "| wav2vec2-base | all layers | dense | speaker | official | skipped | skipped |" in md


def test_head_comparison_pairs_heads_of_the_same_settings(tmp_path: Path) -> None:
    """With a units=32 Dense run read before the units=128 one, the units=128 LSTM run was put beside
    the units=32 Dense run in the row named plain eGeMAPS; a Fusion run (its fusion_features set)
    still shares the row of the Dense and LSTM runs."""
    runs = []
    for name, head, units, uars in (("a_dense32", "dense", 32, (0.6, 0.7)), ("b_dense128", "dense", 128, (0.5, 0.6)),
                                    ("c_lstm128", "lstm", 128, (0.3, 0.4)), ("d_fusion128", "fusion", 128, (0.7, 0.8))):
        run = make_run_dir(tmp_path / "runs", name, head=head, uars=uars)
        experiment = json.loads((run / "experiment.json").read_text())
        fusion = "egemaps" if head == "fusion" else None
        _write_json(run / "experiment.json", {**experiment, "units": units, "dropout": 0.2, "fusion_features": fusion})
        runs.append(run)
    md = write_report(runs, out=tmp_path / "report").read_text(encoding="utf-8")
    table2 = md.split("## Head comparison")[1].split("\n## ")[0]
    assert "| — | eGeMAPS [units=128] | speaker | official | RAVDESS | 55.0 ± 5.0 (n=2) | 75.0 ± 5.0 (n=2) | 35.0 ± 5.0 (n=2) |" \
        in table2
    assert "65.0" not in table2  # the units=32 Dense run has no other head to be compared with


def test_report_tables_figures_and_problem_dirs(run_dirs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    md_path = write_report(run_dirs, out=out)
    assert md_path == out / "report.md"
    md = md_path.read_text(encoding="utf-8")
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Model | Selection | Head"))
    assert header.split("|")[6:] == [" RAVDESS ", " IEMOCAP ", ""]  # the paper's corpora; no run used a CSV corpus
    egemaps = next(line for line in lines if line.startswith("| — | eGeMAPS | dense | speaker | official |"))
    # np.std over (55, 60, 65) % = 4.08; IEMOCAP cell = pooled per-seed values (50, 52, 54).
    # The paper's RAVDESS eGeMAPS value (57.0 ± 2.4) sits beside the measured one, with the difference.
    assert "| 60.0 ± 4.1 (n=3) · paper 57.0 ± 2.4 (unchecked), +3.0 ✓ | 52.0 ± 1.6 (n=3) |" in egemaps and egemaps.endswith("(n=3) |")
    # wav2vec2 rows are named by the upstream model of their store, not by the run directory
    assert any(line.startswith("| wav2vec2-base | all layers | weighted_dense") and "82.0 ± 1.6 (n=3)" in line
               for line in lines)
    assert any(line.startswith("| wav2vec2-base-960h | all layers | weighted_dense") and "71.0 ± 0.8 (n=3)" in line
               for line in lines)
    assert not any("w2v_pt_ravdess" in line for line in lines if line.startswith("| wav2vec2-base"))
    assert "## Head comparison" in md
    head_header = next(line for line in lines if line.startswith("| Model | Selection | Normalisation | Recipe"))
    assert "lstm" in head_header and "dense" in head_header
    assert "| — | eGeMAPS | speaker | official | RAVDESS | 60.0 ± 4.1 (n=3) | 59.0 ± 1.0 (n=2) |" in md
    # skipped: its cell says so and the reason is listed
    assert any(line.startswith("| wav2vec2") and "| skipped |" in line for line in lines)
    # one line per reason, naming the experiments it skipped (a pipeline without hub access skips many)
    section = md.split("## Skipped experiments")[1].split("\n## ")[0]
    assert [line for line in section.splitlines() if line.startswith("- ")] == [
        "- model facebook/wav2vec2-large could not be loaded (2 experiments: `w2v_large_ravdess`, "
        "`w2v_large_ravdess_lstm`)"]
    # incomplete: listed with the reason, never crashing
    section = md.split("## Incomplete run directories")[1]
    assert "spectrogram_ravdess" in section and "1 run(s) finished" in section
    assert "broken" in section and "results.json is unreadable" in section
    assert "does_not_exist" in section
    assert "Spectrogram on RAVDESS" in md  # the 16 kHz note shows up with a spectrogram row
    assert "official" in md

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    statuses = {Path(e["path"]).name: e["status"] for e in report["runs"]}
    assert statuses["w2v_large_ravdess"] == "skipped" and statuses["broken"] == "incomplete"
    assert statuses["egemaps_ravdess"] == "complete"
    assert len(report["layer_weights"]["series"]) == 2
    for series in report["layer_weights"]["series"]:
        assert series["n"] == 3 and len(series["mean"]) == 13 and series["layers"] == list(range(13))
        assert abs(sum(series["mean"]) - 1.0) < 1e-6

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "layer_weights.png" in pngs
    assert len([p for p in pngs if p.startswith("confusion_")]) == 5
    for png in out.glob("*.png"):
        _assert_png(png)
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temp files


def test_one_run_directory_given_bare(tmp_path: Path, monkeypatch) -> None:
    """write_report("runs/x", ...) iterated the string per character: "/" made it search the whole
    file system for run directories until a PermissionError on /proc ended it."""
    far = make_run_dir(tmp_path, "far", features="classic/egemaps", uars=(0.80, 0.81, 0.79))
    monkeypatch.chdir(tmp_path)
    for given in ("far", far):
        write_report(given, out=tmp_path / "r")
        assert "80.0 ± 0.8 (n=3)" in (tmp_path / "r" / "report.md").read_text(encoding="utf-8")


def test_figures_draw_labels_with_dollars_and_characters_no_font_has(tmp_path: Path) -> None:
    """A class `jo$\\q$ie` ended evaluate in a ValueError (matplotlib read it as math; `5$ or 6$` was drawn as
    math), and 怒り, which DejaVu Sans lacks, was drawn as two boxes with a warning per glyph on stderr."""
    import warnings

    run = make_run_dir(tmp_path, "odd", uars=(0.5,))
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    results["classes"] = ["5$ or 6$", "jo$\\q$ie", "怒り", "colère"]
    (run / "results.json").write_text(json.dumps(results), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Glyph .* missing from font")
        write_report([run], out=tmp_path / "r")
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    _assert_png(tmp_path / "r" / report["runs"][0]["confusion_png"])


def test_a_run_directory_not_trained_yet_is_named_so() -> None:
    """A pipeline's report before its train stage listed each planned experiment as "... is not a
    directory": true of a file, misleading for a folder that training has not made yet."""
    from w2v2ser.evaluate._rundir import read_run_dir

    missing = read_run_dir(Path("/nonexistent/experiments/table1/ravdess/classic-egemaps"))
    assert missing.status == "incomplete"
    assert missing.reason.startswith("not trained yet: /nonexistent/experiments/table1/ravdess/classic-egemaps "
                                     "does not exist (train it first: `w2v2ser train ... --out")
    assert read_run_dir(Path(__file__)).reason.endswith("is a file, not a run directory")


def test_report_marks_rows_that_do_not_reproduce_the_paper(tmp_path: Path) -> None:
    far = make_run_dir(tmp_path, "far", features="classic/egemaps", uars=(0.80, 0.81, 0.79))
    write_report([far], out=tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "80.0 ± 0.8 (n=3) · paper 57.0 ± 2.4 (unchecked), +23.0 ✗" in md
    cell = json.loads((tmp_path / "r" / "report.json").read_text())["feature_table"]["rows"][0]["cells"]["RAVDESS"]
    assert cell["paper"]["table"] == 1 and abs(cell["paper"]["difference"] - 23.0) < 1e-9
    assert cell["paper"]["reproduces"] is False
    assert "Pepino" in md and "Interspeech 2021" in md  # the source is cited in the report


def test_runs_with_other_settings_than_the_paper_get_its_value_but_no_verdict(tmp_path: Path) -> None:
    # A 3-epoch eGeMAPS run (39.3 on the shared RAVDESS) was marked "paper 57.0 ± 2.4, -17.7 ✗", as if
    # it had failed to reproduce the paper; it never tried.
    short = make_run_dir(tmp_path, "short", features="classic/egemaps", uars=(0.39, 0.41, 0.37),
                         recipe_overrides={"max_epochs": 3})
    narrow = make_run_dir(tmp_path, "narrow", features="classic/egemaps", uars=(0.80, 0.81, 0.79))
    experiment = json.loads((narrow / "experiment.json").read_text())
    (narrow / "experiment.json").write_text(json.dumps({**experiment, "units": 64, "dropout": 0.2}))
    same = make_run_dir(tmp_path, "same", features="classic/egemaps", uars=(0.56, 0.57, 0.58))
    experiment = json.loads((same / "experiment.json").read_text())
    (same / "experiment.json").write_text(json.dumps({**experiment, "units": 128, "max_frames": None}))
    write_report([short, narrow, same], out=tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "39.0 ± 1.6 (n=3) · paper 57.0 ± 2.4 (unchecked), not compared (max_epochs=3) |" in md
    assert "80.0 ± 0.8 (n=3) · paper 57.0 ± 2.4 (unchecked), not compared (units=64) |" in md
    assert "57.0 ± 0.8 (n=3) · paper 57.0 ± 2.4 (unchecked), +0.0 ✓ |" in md
    cells = [r["cells"]["RAVDESS"]["paper"]
             for r in json.loads((tmp_path / "r" / "report.json").read_text())["feature_table"]["rows"]]
    assert [c.get("not_compared") for c in cells] == ["max_epochs=3", "units=64", None]
    assert "reproduces" not in cells[0] and "reproduces" not in cells[1] and cells[2]["reproduces"] is True


def test_paper_values_are_cited_data_shipped_with_the_package() -> None:
    from importlib import resources

    data = json.loads(resources.files("w2v2ser.evaluate").joinpath("data/pepino2021.json").read_text())
    assert "arXiv:2104.03502" in data["source"]["citation"]
    for row in data["rows"]:
        assert row["table"] in (1, 2) and row["head"] in ("dense", "lstm", "fusion")
        for corpus, cell in row["values"].items():
            assert corpus in ("ravdess", "iemocap")
            if cell is not None:  # every entered value says where it comes from
                assert isinstance(cell["mean"], float) and cell["from"]
                # ... and one not read from the paper itself is marked, so reports call it unchecked
                assert cell.get("checked", True) is not ("PDF" in cell["from"] and "not" in cell["from"]), cell
    setup = (Path(__file__).resolve().parents[1] / "setup.cfg").read_text()
    assert "w2v2ser.evaluate = data/*.json" in setup


def test_layer_weights_are_drawn_per_run_dir_at_the_layers_they_weight(tmp_path: Path) -> None:
    """Figure 2 pooled every run of a model: a dense and an LSTM head (other weights) became one
    mean ± std, and a `wav2vec2:1-12` run's 12 weights were dropped beside `:all` runs, or drawn at
    layers 0-11 without them."""
    root = tmp_path / "runs"
    dense = make_run_dir(root, "dense", features="wav2vec2:all", model=MODELS["pt"], alphas=True, seed=1)
    lstm = make_run_dir(root, "lstm", features="wav2vec2:all", head="lstm", normalisation="global",
                        model=MODELS["pt"], alphas=True, seed=2)
    contextual = make_run_dir(root, "contextual", features="wav2vec2:1-12", model=MODELS["pt"],
                              alphas=True, seed=3)
    results = json.loads((contextual / "results.json").read_text())
    for entry in results["layer_weights"].values():
        a = np.asarray(entry["main"]["alphas"][1:])
        entry["main"].update(alphas=a.tolist(), normalised=(a / a.sum()).tolist(), layers=list(range(1, 13)))
    _write_json(contextual / "results.json", results)
    for run_dir in (dense, lstm, contextual):
        for path in run_dir.glob("runs/*/layer_weights.json"):
            path.unlink()  # results.json is what counts

    out = tmp_path / "report"
    md = write_report([dense, lstm, contextual], out=out).read_text(encoding="utf-8")
    series = json.loads((out / "report.json").read_text())["layer_weights"]["series"]
    by_label = {s["label"]: s for s in series}
    assert sorted(by_label) == ["wav2vec2-base · all layers · dense · speaker · official",
                                "wav2vec2-base · all layers · lstm · global · official",
                                "wav2vec2-base · layers 1-12 · dense · speaker · official"]
    dense_series = by_label["wav2vec2-base · all layers · dense · speaker · official"]
    expected = np.asarray([v["main"]["normalised"] for v in json.loads(
        (dense / "results.json").read_text())["layer_weights"].values()])
    np.testing.assert_allclose(dense_series["mean"], expected.mean(axis=0))
    assert dense_series["n"] == 3 and dense_series["layers"] == list(range(13))
    assert by_label["wav2vec2-base · layers 1-12 · dense · speaker · official"]["layers"] == list(range(1, 13))
    # the table: layer 0 has no weight in the run of layers 1-12
    table = md.split("## Layer weights")[1].split("\n## ")[0]
    layer0 = next(line for line in table.splitlines() if line.startswith("| 0 |"))
    assert layer0.endswith("| — |") and layer0.count("±") == 2
    _assert_png(out / "layer_weights.png")


def test_report_without_layer_weights_has_no_figure(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, "a", uars=(0.5,))
    write_report([run], out=tmp_path / "r")
    assert not (tmp_path / "r" / "layer_weights.png").exists()
    md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "50.0 (n=1)" in md and "± 0.0" not in md  # one run has no spread to state
    assert "Head comparison" not in md


def test_report_rejects_bad_arguments(tmp_path: Path) -> None:
    from w2v2ser.evaluate import EvaluateError
    from w2v2ser.store import W2v2serError

    with pytest.raises(EvaluateError, match="no run directories"):
        write_report([], out=tmp_path / "r")
    (tmp_path / "file").write_text("x")
    with pytest.raises(W2v2serError, match="is a file"):
        write_report([tmp_path], out=tmp_path / "file")


def test_evaluate_command_refuses_a_mistyped_path(tmp_path: Path, capsys) -> None:
    """A typo gave a report of one 'incomplete' run and exit status 0; it is bad input (2)."""
    from w2v2ser._cli import main

    run = make_run_dir(tmp_path / "runs", "egemaps")
    assert main(["evaluate", str(tmp_path / "runs" / "egemap"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "egemap does not exist; expected a run directory" in err and "Did you mean 'egemaps'?" in err
    assert main(["evaluate", str(run / "results.json"), "--out", str(tmp_path / "r")]) == 2
    assert "results.json is a file; expected a run directory" in capsys.readouterr().err
    # A folder without any run (empty, the corpus, a model folder) gave an empty report and exit 0.
    for folder in (tmp_path / "empty", tmp_path / "audio" / "Actor_01"):
        folder.mkdir(parents=True)
    (tmp_path / "audio" / "Actor_01" / "a.wav").write_bytes(b"RIFF")
    for folder in (tmp_path / "empty", tmp_path / "audio"):
        assert main(["evaluate", str(folder), "--out", str(tmp_path / "r")]) == 2
        assert f"{folder} holds no run or sweep directory" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["evaluate", str(run), "--out", str(tmp_path / "r")]) == 0
    assert main(["evaluate", str(tmp_path / "runs"), "--out", str(tmp_path / "r")]) == 0


def test_evaluate_command_names_a_run_whose_results_cannot_be_read(tmp_path: Path, capsys) -> None:
    """A damaged results.json dropped its run from the tables with only a line deep in report.md;
    the terminal said just "wrote ...". The report still gets written, from the other runs."""
    from w2v2ser._cli import main

    good = make_run_dir(tmp_path / "runs", "egemaps")
    damaged = make_run_dir(tmp_path / "runs", "spectrogram", features="spectrogram")
    text = (damaged / "results.json").read_text()
    (damaged / "results.json").write_text(text[: len(text) // 2])
    assert main(["evaluate", str(good), str(damaged), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert f"warning: {damaged} is not in the tables: results.json is unreadable" in err
    assert str(good) not in err
    assert "| egemaps | complete |" in (tmp_path / "r" / "report.md").read_text()


def test_runs_of_a_pipeline_are_named_below_their_common_folder(tmp_path: Path) -> None:
    experiments = tmp_path / "experiments"
    first = make_run_dir(experiments / "table1" / "ravdess", "classic-egemaps", features="classic/egemaps")
    second = make_run_dir(experiments / "table2" / "ravdess", "classic-spectrogram", features="classic/spectrogram")
    out = tmp_path / "report"
    write_report([first, second], out=out)
    names = [e["name"] for e in json.loads((out / "report.json").read_text())["runs"]]
    assert names == ["table1/ravdess/classic-egemaps", "table2/ravdess/classic-spectrogram"]
    assert (out / "confusion_table1_ravdess_classic-egemaps.png").exists()
    # the folder that holds them gives the same report (`w2v2ser evaluate runs/`), even beside a
    # pipeline's default output folder `runs/`, which is not a run directory's runs/
    (tmp_path / "runs" / "stores").mkdir(parents=True)
    write_report([tmp_path], out=tmp_path / "whole")
    names = [e["name"] for e in json.loads((tmp_path / "whole" / "report.json").read_text())["runs"]]
    assert names == ["table1/ravdess/classic-egemaps", "table2/ravdess/classic-spectrogram"]
    # the same folder, rewritten over one run: the other run's figure goes with it
    write_report([first], out=out)
    assert sorted(p.name for p in out.glob("confusion_*.png")) == ["confusion_classic-egemaps.png"]


def test_runs_with_recipe_overrides_are_rows_of_their_own(tmp_path: Path) -> None:
    plain = make_run_dir(tmp_path, "plain", features="classic/egemaps", recipe="paper")
    patient = make_run_dir(tmp_path, "patient", features="classic/egemaps", recipe="paper",
                           recipe_overrides={"patience": 30, "max_epochs": 200})
    write_report([plain, patient], out=tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "| — | eGeMAPS | dense | speaker | paper | 60.0 ± 8.2 (n=3)" in md
    assert "| — | eGeMAPS | dense | speaker | paper (max_epochs=200, patience=30) | 60.0 ± 8.2 (n=3)" in md
    assert "[plain]" not in md and "[patient]" not in md  # told apart by their recipe, not by folder


def test_report_compares_run_dirs_with_a_baseline(tmp_path: Path, capsys) -> None:
    """`evaluate --baseline RUN`: each other finished run dir's difference in mean UAR with Welch's
    t-test over the two sets of seeds; other corpora and other scoring are not compared."""
    from scipy.stats import ttest_ind

    from w2v2ser._cli import main
    from w2v2ser.evaluate import EvaluateError

    runs = tmp_path / "runs"
    base = make_run_dir(runs, "base", uars=(0.50, 0.52, 0.51, 0.49, 0.50))
    better = make_run_dir(runs, "lstm", head="lstm", uars=(0.60, 0.61, 0.59, 0.62, 0.60))
    same = make_run_dir(runs, "units64", uars=(0.51, 0.49, 0.50, 0.52, 0.50))
    one = make_run_dir(runs, "oneseed", features="spectrogram", uars=(0.70,))
    make_run_dir(runs, "iemocap", corpus="iemocap", uars=(0.6,) * 25, pooled=(0.6, 0.62, 0.61))
    subset = make_run_dir(runs, "subset", uars=(0.6, 0.7))  # trained on a store of fewer files
    results = json.loads((subset / "results.json").read_text())
    (subset / "results.json").write_text(json.dumps({**results, "n_test": 12}))
    # --baseline alone puts its run dir in the report; the others come from the folder of runs.
    assert main(["evaluate", str(better), str(same), str(one), str(runs / "iemocap"), str(subset), "--out",
                 str(tmp_path / "r"),
                 "--baseline", str(base)]) == 0
    comparison = json.loads((tmp_path / "r" / "report.json").read_text())["comparison"]
    assert comparison["baseline"] == "base" and comparison["n"] == 5
    rows = {r["name"]: r for r in comparison["rows"]}
    assert set(rows) == {"lstm", "units64", "oneseed", "iemocap", "subset"}
    assert rows["lstm"]["difference"] == pytest.approx(10.0)
    expected = ttest_ind([60, 61, 59, 62, 60], [50, 52, 51, 49, 50], equal_var=False).pvalue
    assert rows["lstm"]["p_welch"] == pytest.approx(expected) and expected < 1e-4
    assert rows["units64"]["p_welch"] > 0.5
    assert rows["oneseed"]["difference"] == pytest.approx(19.6) and rows["oneseed"]["p_welch"] is None
    assert rows["iemocap"]["difference"] is None and rows["iemocap"]["not_compared"] == "corpus IEMOCAP, baseline RAVDESS"
    assert rows["subset"]["not_compared"].startswith("another test set: 12 test utterances, baseline ")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Against the baseline base" in md
    assert f"| lstm | 60.4 ± 1.0 (n=5) | +10.0 | {expected:.2g} |" in md
    assert "| oneseed | 70.0 (n=1) | +19.6 | — |" in md
    # A folder of several runs, or an unfinished run, is no baseline.
    with pytest.raises(EvaluateError, match="runs is a folder of 6 run directories; expected one run or sweep directory"):
        write_report([runs], out=tmp_path / "r2", baseline=runs)
    (tmp_path / "cut").mkdir()
    with pytest.raises(EvaluateError, match="is incomplete .*expected a finished run directory"):
        write_report([runs], out=tmp_path / "r2", baseline=tmp_path / "cut")


def test_a_run_on_part_of_the_corpus_gets_the_papers_value_but_no_verdict(tmp_path: Path) -> None:
    """A store of 8 of RAVDESS's 24 actors (52 of 208 test files) got "paper 57.0 ± 2.4, -8.5 ✗", as
    if it had failed to reproduce Table 1 on the whole corpus."""
    actors = lambda *numbers: [f"Actor_{n:02d}" for n in numbers]  # noqa: E731
    whole = {"split": {"train": actors(*range(1, 21)), "validation": actors(21, 22), "test": actors(23, 24)}}
    part = {"split": {"train": actors(1, 2, 19, 20), "validation": actors(21, 22), "test": actors(23, 24)}}
    runs = []
    for name, splits, n_test in (("whole", whole, 208), ("part", part, 52), ("fewer_files", whole, 104)):
        run = make_run_dir(tmp_path, name, features="classic/egemaps", uars=(0.48, 0.50, 0.49))
        results = json.loads((run / "results.json").read_text())
        (run / "results.json").write_text(json.dumps({**results, "splits": splits, "n_test": n_test}))
        runs.append(run)
    write_report(runs, out=tmp_path / "r")
    cells = [row["cells"]["RAVDESS"]["paper"]
             for row in json.loads((tmp_path / "r" / "report.json").read_text())["feature_table"]["rows"]]
    md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "paper 57.0 ± 2.4 (unchecked), -8.0 ✗" in md  # the whole corpus: a verdict
    assert "not compared (partial corpus: 8 of 24 speakers, 52 of 208 test utterances)" in md
    assert "not compared (partial corpus: 104 of 208 test utterances)" in md
    assert sorted(c.get("reproduces") is None for c in cells) == [False, True, True]


def test_the_spectrogram_note_gives_the_runs_own_frames(tmp_path: Path) -> None:
    """The note said "25 ms / 20 ms frames covering 5 s" whatever the store used (the shipped
    pipeline.yaml has a 10 ms hop: 2.5 s)."""
    run = make_run_dir(tmp_path, "spec", features="classic/spectrogram", uars=(0.50, 0.52))
    spec = {"name": "spectrogram", "frame_rate": 100.0,
            "description": "magnitude spectrogram: hann window of 400 samples (25 ms), hop 160 samples (10 ms)"}
    experiment = json.loads((run / "experiment.json").read_text())
    (run / "experiment.json").write_text(json.dumps({**experiment, "stores_identity": {
        "classic": {"path": "s.zarr", "features": {"spectrogram": spec}}}}))
    write_report([run], out=tmp_path / "r")
    note = next(line for line in (tmp_path / "r" / "report.md").read_text().splitlines()
                if line.startswith("- Spectrogram on RAVDESS"))
    assert "the runs here used the store's magnitude spectrogram: hann window of 400 samples (25 ms), hop 160 " \
           "samples (10 ms), so 250 frames cover 2.5 s." in note
    assert "20 ms" not in note


def test_welch_test_of_runs_without_spread_says_nothing_and_warns_nothing() -> None:
    """A baseline whose seeds all scored the same printed scipy's "catastrophic cancellation"
    RuntimeWarning with its source line in the terminal."""
    import warnings

    from w2v2ser.evaluate._compare import _welch_p

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _welch_p([0.5, 0.5], [0.6, 0.6]) is None
        assert 0 < _welch_p([0.5, 0.5, 0.5], [0.6, 0.61, 0.62]) < 0.05
        assert _welch_p([0.5], [0.6, 0.61]) is None


def test_a_run_is_named_after_the_upstream_it_selected_in_a_store_of_several(tmp_path: Path) -> None:
    """Found by a new-user trial: with hubert, wavlm and data2vec in one store (as the README
    suggests), every run was named after the store's first upstream, in the tables, the Figure 2
    legend and the paper lookup; a hubert run of a store that also held wav2vec2-base was
    reported as wav2vec2-base."""
    root = tmp_path / "runs"
    run = make_run_dir(root, "wavlm", features="wavlm:all", model="microsoft/wavlm-base-plus", upstream="wavlm",
                       alphas=True)
    experiment = json.loads((run / "experiment.json").read_text())
    features = experiment["stores_identity"]["main"]["features"]
    experiment["stores_identity"]["main"]["features"] = {
        "wav2vec2": {"name": "wav2vec2", "dim": 768, "layers": 13, "config": {"model": "facebook/wav2vec2-base"}},
        **features}
    (run / "experiment.json").write_text(json.dumps(experiment))
    md = write_report([run], out=tmp_path / "report").read_text(encoding="utf-8")
    assert "| wavlm-base-plus | all layers |" in md
    assert "wav2vec2-base" not in md


def test_layer_axes_of_a_large_model_label_every_other_layer() -> None:
    """At 25 layers the tick labels 10..24 ran together ("1011121314...") in both layer figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from w2v2ser.evaluate._figures import _label_layer_axes

    for layers, shown in ((13, [str(k) for k in range(13)]), (25, [str(k) if k % 2 == 0 else "" for k in range(25)])):
        fig, ax = plt.subplots()
        ax.plot(range(layers), range(layers), label="x")
        _label_layer_axes(ax, ticks=range(layers), ylabel="y", title="t", legend_size=7)
        assert list(ax.get_xticks()) == list(range(layers))
        assert [t.get_text() for t in ax.get_xticklabels()] == shown
        plt.close(fig)


def test_a_skipped_experiment_of_a_named_csv_corpus_sits_in_the_column_of_its_trained_runs(tmp_path: Path) -> None:
    """Found by a pipeline trial: a pipeline's skipped.json names the corpus as the file does
    ("mycsv"), trained runs by their protocol ("csv"): one corpus was split into two columns."""
    root = tmp_path / "runs"
    make_run_dir(root, "trained", corpus="csv")
    skipped = root / "skipped"
    _write_json(skipped / "skipped.json", {"reason": "model of store 'x' cannot be loaded", "corpus": "mycsv",
                                           "protocol": "csv", "features": "x/wav2vec2:all", "head": "dense",
                                           "norm": "speaker", "recipe": "official"})
    write_report([root], out=tmp_path / "report")
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {r["corpus"] for r in data["runs"]} == {"CSV"}


def test_a_failure_newer_than_the_results_shows_as_failed_not_with_the_old_uar(tmp_path: Path) -> None:
    """Found by a pipeline trial: `w2v2ser run --set ...subset...` failed three experiments before
    training, but the report of the same command showed them complete with the UARs of the earlier
    configuration (failed.json was read only when there was no results.json)."""
    import os

    root = tmp_path / "runs"
    failed = make_run_dir(root, "failed", uars=(0.179, 0.179))
    _write_json(failed / "failed.json", {"reason": "failed before training: subset speaker=Actor_01 leaves no test "
                                                   "speaker", "features": "egemaps", "head": "dense"})
    # A layer sweep failed the same way: its layers' results are of the earlier run too.
    sweep = root / "sweep"
    for layer in (0, 1):
        make_run_dir(sweep, f"layer_{layer:02d}", features=f"wav2vec2:{layer}", model=MODELS["pt"])
    make_run_dir(sweep, "all", features="wav2vec2:0-1", head="weighted_dense", model=MODELS["pt"])
    _write_json(sweep / "sweep.json", {"layers": [0, 1], "upstream": "wav2vec2", "protocol": "ravdess"})
    _write_json(sweep / "failed.json", {"reason": "store 'w2v' of corpus 'ravdess' is not extracted",
                                        "features": "wav2vec2:0-1", "head": "dense"})
    # `w2v2ser train` into a failed folder afterwards: its newer results are the current ones.
    retrained = make_run_dir(root, "retrained", uars=(0.4, 0.6))
    _write_json(retrained / "failed.json", {"reason": "an older failure"})
    old = (retrained / "failed.json").stat().st_mtime_ns - 10**9
    os.utime(retrained / "failed.json", ns=(old, old))

    write_report([root], out=tmp_path / "report")
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    status = {Path(r["path"]).name: (r["status"], r["reason"]) for r in data["runs"]}
    assert status["failed"][0] == "incomplete"
    assert "subset speaker=Actor_01 leaves no test speaker" in status["failed"][1]
    assert "results.json there is of an earlier run and is not shown" in status["failed"][1]
    assert status["sweep"][0] == "incomplete" and "is not extracted" in status["sweep"][1]
    assert "all" not in status and data["layer_sweep"]["series"] == []
    assert status["retrained"] == ("complete", "")
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "17.9" not in md and "leaves no test speaker" in md


def test_sweep_legend_names_the_store_and_stays_off_the_points(tmp_path: Path) -> None:
    """Found by a pipeline trial: layer_sweep.png's legend (labels with the models' absolute paths)
    sat in the lower left of the axes and hid hubert layer 0's error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from w2v2ser.evaluate._figures import _label_layer_axes

    sweep = tmp_path / "runs" / "sweep"
    for layer in (0, 1):
        make_run_dir(sweep, f"layer_{layer:02d}", features=f"hubert/hubert:{layer}", upstream="hubert",
                     model="/home/me/pipeline/models/hubert")
    _write_json(sweep / "sweep.json", {"layers": [0, 1], "upstream": "hubert", "alias": "hubert", "protocol": "ravdess",
                                       "feature_spec": {"config": {"model": "/home/me/pipeline/models/hubert"}}})
    local = tmp_path / "runs" / "local"
    make_run_dir(local, "layer_00", features="wav2vec2:0", model="/data/checkpoints/w2v2-ft-500/")
    _write_json(local / "sweep.json", {"layers": [0], "upstream": "wav2vec2", "alias": "main", "protocol": "ravdess",
                                       "feature_spec": {"config": {"model": "/data/checkpoints/w2v2-ft-500/"}}})
    write_report([sweep, local], out=tmp_path / "report")
    series = json.loads((tmp_path / "report" / "report.json").read_text())["layer_sweep"]["series"]
    assert sorted(s["label"] for s in series) == ["hubert/hubert", "wav2vec2 (w2v2-ft-500)"]
    # Two checkpoints of one last name (e.g. checkpoint-best of two trainings): their folders tell them apart.
    twins = []
    for org in ("a", "b"):
        twin = tmp_path / "runs" / org / "ckpt"
        make_run_dir(twin, "layer_00", features="wav2vec2:0", model=f"/data/{org}/checkpoint-best")
        _write_json(twin / "sweep.json", {"layers": [0], "upstream": "wav2vec2", "alias": "main", "protocol": "ravdess",
                                          "feature_spec": {"config": {"model": f"/data/{org}/checkpoint-best"}}})
        twins.append(twin)
    write_report(twins, out=tmp_path / "report2")
    series = json.loads((tmp_path / "report2" / "report.json").read_text())["layer_sweep"]["series"]
    assert sorted(s["label"] for s in series) == ["wav2vec2 (checkpoint-best) [a/ckpt]",
                                                  "wav2vec2 (checkpoint-best) [b/ckpt]"]

    fig, ax = plt.subplots()
    for k in range(4):  # lines over the whole panel: no spot inside it is free
        ax.errorbar(range(13), np.linspace(0, 1, 13)[::1 - 2 * (k % 2)], yerr=0.1, label=f"store{k}/wav2vec2")
    _label_layer_axes(ax, ticks=range(13), ylabel="y", title="t", legend_size=7)
    fig.canvas.draw()
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.y1 <= axes.y0  # below the axes, not over the points
    plt.close(fig)


def _make_sweep_missing_layer_1(tmp_path: Path) -> Path:
    """A three-layer sweep folder whose layer 1 has no results.json."""
    sweep = tmp_path / "runs" / "sweep"
    for layer in (0, 1, 2):
        make_run_dir(sweep, f"layer_{layer:02d}", features=f"wav2vec2:{layer}", model=MODELS["pt"], uars=(0.4, 0.5))
    make_run_dir(sweep, "all", features="wav2vec2:all", model=MODELS["pt"], uars=(0.5, 0.6))
    _write_json(sweep / "sweep.json", {"layers": [0, 1, 2], "upstream": "wav2vec2", "protocol": "ravdess"})
    (sweep / "layer_01" / "results.json").unlink()
    return sweep


def test_a_sweep_layer_that_is_not_complete_is_shown_as_such(tmp_path: Path) -> None:
    """Found as a paper author: a sweep layer whose results.json was missing dropped out of the sweep
    table (no row), its line joined its neighbours, and neither the report nor the command named it."""
    sweep = _make_sweep_missing_layer_1(tmp_path)

    write_report([sweep], out=tmp_path / "report")
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["layer_sweep"]["series"][0]["incomplete_layers"] == [1]
    listed = {r["name"]: r for r in data["runs"]}
    assert listed["sweep/layer_01"]["status"] == "incomplete"
    assert "results.json is missing" in listed["sweep/layer_01"]["reason"]
    assert "sweep/layer_00" not in listed  # complete layers stay out of the run list, as before
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "| 1 | incomplete |" in md
    assert f"`{sweep / 'layer_01'}`" in md.split("## Incomplete run directories")[1]
    _assert_png(tmp_path / "report" / "layer_sweep.png")
    # Named as its sweep's `all` head is, beside other run directories (paths below the folder they share).
    moved = tmp_path / "all_runs" / "w2v" / "sweep"
    sweep.rename(moved.parent.mkdir(parents=True) or moved)
    make_run_dir(tmp_path / "all_runs" / "classic", "eg")
    write_report([tmp_path / "all_runs"], out=tmp_path / "report2")
    names = {r["name"] for r in json.loads((tmp_path / "report2" / "report.json").read_text())["runs"]}
    assert names == {"classic/eg", "w2v/sweep/all", "w2v/sweep/layer_01"}


def test_report_reads_each_sweep_layer_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Left over by stop 60: the report read every layer run directory of a sweep twice (once for the
    plot line, once more for the layers that are not complete)."""
    import w2v2ser.evaluate._sweep as sweep_module

    sweep = _make_sweep_missing_layer_1(tmp_path)
    reads: list[str] = []
    real = sweep_module.read_run_dir
    monkeypatch.setattr(sweep_module, "read_run_dir", lambda path: reads.append(Path(path).name) or real(path))
    write_report([sweep], out=tmp_path / "report")
    assert sorted(r for r in reads if r.startswith("layer_")) == ["layer_00", "layer_01", "layer_02"]
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["layer_sweep"]["series"][0]["incomplete_layers"] == [1]
    assert "sweep/layer_01" in {r["name"] for r in data["runs"]}


@pytest.mark.parametrize("text, what", [("[0, 1]", "it holds a list"), ('{"layers": ["one"]}', "'layers' is ['one']"),
                                        ('{"layers": 3}', "'layers' is 3"), ('{"layers": "01"}', "'layers' is '01'"),
                                        ('{"layers": [0, 2.7]}', "'layers' is [0, 2.7]"),
                                        ('{"layers": [true]}', "'layers' is [True]"), ('{"upstream": "x"}', "is None"),
                                        ('{"layers": []}', "('layers' is []); expected 'layers' as a non-empty list"),
                                        ('{"layers": [0', "cannot be read as JSON")])
def test_a_damaged_sweep_json_does_not_stop_the_report(tmp_path: Path, text: str, what: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A sweep.json that is JSON but not a sweep summary (a list, a layer that is no number) stopped
    the whole report with a traceback; the sweep draws no line and its `all` head is still reported.
    Review s61: layers "01" were read as [0, 1], 2.7 as 2, true as 1, and a damaged sweep.json dropped
    the sweep without a word; it is now listed (and warned of) as damaged, naming the file and value.
    Leftover: layers [] was taken, drawing no line and listing nothing."""
    sweep = tmp_path / "runs" / "sweep"
    make_run_dir(sweep, "layer_00", features="wav2vec2:0", model=MODELS["pt"])
    make_run_dir(sweep, "layer_01", features="wav2vec2:1", model=MODELS["pt"])
    make_run_dir(sweep, "all", features="wav2vec2:all", model=MODELS["pt"])
    (sweep / "sweep.json").write_text(text, encoding="utf-8")
    write_report([sweep], out=tmp_path / "report")
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["layer_sweep"]["series"] == [] and [r["name"] for r in data["runs"]] == ["sweep/all", "sweep/sweep.json"]
    damaged = data["runs"][1]
    from w2v2ser._cli import main

    assert damaged["status"] == "incomplete" and damaged["path"] == str(sweep / "sweep.json")
    assert str(sweep / "sweep.json") in damaged["reason"] and what in damaged["reason"]
    assert main(["evaluate", str(sweep), "--out", str(tmp_path / "report2")]) == 0
    assert f"{sweep / 'sweep.json'} is not in the tables" in capsys.readouterr().err


def test_report_json_says_what_its_std_is_over(tmp_path: Path) -> None:
    """Found as a paper author: report.json's "std" said "over seeds × folds", but a run of several folds
    shows the population std over its seeds' pooled UARs (results.json uar_pooled_std), not over runs."""
    run = make_run_dir(tmp_path / "runs", "eg_iemocap", corpus="iemocap", uars=(0.4, 0.5, 0.6, 0.7, 0.3, 0.5),
                       pooled=(0.50, 0.54))
    write_report([run], out=tmp_path / "report")
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    entry = data["runs"][0]
    assert entry["uar_std"] == pytest.approx(100 * float(np.std([0.50, 0.54])))
    assert entry["uar_per_run"] == pytest.approx([50.0, 54.0]) and entry["scoring"] == "pooled over folds, per seed"
    assert data["std_ddof"] == 0 and "seeds × folds" not in data["std"] and "per seed" in data["std"]


def test_report_names_the_store_protocol_and_seeds_of_each_run_dir(tmp_path: Path) -> None:
    """Found as a paper author: nothing in report.md or report.json said which store or which seeds gave a
    figure (seeds 0-2 and, after `--seeds 4`, 0-3 differed only in n; `first_seed` moves them)."""
    run = make_run_dir(tmp_path / "runs", "eg", uars=(0.5, 0.6))
    results = json.loads((run / "results.json").read_text())
    results["runs"] = [{"name": f"all__seed{k}", "fold": "all", "seed": k, "uar": u} for k, u in ((5, 0.5), (6, 0.6))]
    results["provenance"] = {"versions": {"w2v2ser": "9.9.9"}}
    results["config"]["speaker_folds"] = 4
    _write_json(run / "results.json", results)
    write_report([run], out=tmp_path / "report")
    entry = json.loads((tmp_path / "report" / "report.json").read_text())["runs"][0]
    assert entry["sources"] == {"stores": {"main": str(tmp_path / "runs" / "store.zarr")},
                                "protocol": "ravdess (4 speaker folds)", "folds": ["all"], "seeds": [5, 6],
                                "w2v2ser": "9.9.9", "commit": None, "commits": [], "dirty": None}
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "| 2 | 5, 6 |" in md  # n and the seeds in the run directories table
    line = next(x for x in md.splitlines() if x.startswith("- **eg**"))
    assert f"store `{tmp_path / 'runs' / 'store.zarr'}`" in line and "protocol ravdess (4 speaker folds)" in line
    assert "seeds 5, 6" in line and "w2v2ser 9.9.9" in line


def test_rewritten_report_removes_its_old_weight_and_sweep_plots(tmp_path: Path) -> None:
    """Found as a paper author: `evaluate` of a sweep, then of an eGeMAPS run only, into the same folder
    left layer_weights.png and layer_sweep.png of the sweep beside a report.md that has neither."""
    sweep = tmp_path / "runs" / "sweep"
    make_run_dir(sweep, "layer_00", features="wav2vec2:0", model=MODELS["pt"])
    make_run_dir(sweep, "all", features="wav2vec2:all", model=MODELS["pt"], alphas=True)
    _write_json(sweep / "sweep.json", {"layers": [0], "upstream": "wav2vec2", "protocol": "ravdess"})
    other = make_run_dir(tmp_path / "runs", "eg")
    report = tmp_path / "report"
    write_report([sweep], out=report)
    assert (report / "layer_weights.png").is_file() and (report / "layer_sweep.png").is_file()
    (report / "my_notes.png").write_bytes(b"mine")  # not the report's: kept
    write_report([other], out=report)
    assert not (report / "layer_weights.png").exists() and not (report / "layer_sweep.png").exists()
    assert (report / "confusion_eg.png").is_file() and (report / "my_notes.png").is_file()


def test_report_csv_has_the_numbers_of_report_json_and_both_stds(tmp_path: Path) -> None:
    """Found as a paper author: the tables were Markdown only, with the paper comparison in the same cell as
    the UAR, and gave only the population std (results.json's); with 2-5 seeds the sample std is 10-30 % larger."""
    import csv

    runs = [make_run_dir(tmp_path / "runs", "eg", uars=(0.5, 0.6, 0.7)),
            make_run_dir(tmp_path / "runs", "lstm", head="lstm", uars=(0.4, 0.5))]
    _write_json(tmp_path / "runs" / "broken" / "experiment.json", {"corpus": "ravdess", "features": "egemaps"})
    write_report([*runs, tmp_path / "runs" / "broken"], out=tmp_path / "report")
    rows = {r["run_dir"]: r for r in csv.DictReader((tmp_path / "report" / "report.csv").open(encoding="utf-8"))}
    entries = {e["name"]: e for e in json.loads((tmp_path / "report" / "report.json").read_text())["runs"]}
    eg = rows["eg"]
    assert float(eg["uar_mean"]) == pytest.approx(60.0) == entries["eg"]["uar_mean"]
    assert float(eg["uar_std_population"]) == pytest.approx(100 * np.std([0.5, 0.6, 0.7]))
    assert float(eg["uar_std_sample"]) == pytest.approx(100 * np.std([0.5, 0.6, 0.7], ddof=1))
    assert entries["eg"]["uar_std_sample"] == pytest.approx(10.0)
    assert [float(v) for v in eg["uar_values"].split()] == pytest.approx([50.0, 60.0, 70.0])
    assert eg["n"] == "3" and eg["seeds"] == "0 1 2" and eg["head"] == "dense" and rows["lstm"]["head"] == "lstm"
    assert rows["broken"]["status"] == "incomplete" and rows["broken"]["uar_mean"] == "" and rows["broken"]["reason"]


def test_confusion_figure_says_its_counts_sum_every_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found as a paper author: a confusion PNG of 3 seeds showed 72 neutral utterances where the test set has 24,
    with nothing in the figure saying the counts add up every run's predictions."""
    from w2v2ser.evaluate import _figures
    from w2v2ser.evaluate._rundir import read_run_dir

    run = read_run_dir(make_run_dir(tmp_path / "runs", "eg", uars=(0.5, 0.6, 0.7)))
    titles: list[str] = []
    monkeypatch.setattr(_figures, "save_figure_atomically",
                        lambda fig, path, **_: titles.append(fig.axes[0].get_title()) or path)
    _figures.plot_confusion(run, tmp_path / "c.png")
    assert "test predictions of 3 runs summed" in titles[0]


def test_report_json_carries_precision_recall_and_f1_per_class(tmp_path: Path) -> None:
    """Found as a paper author: results.json has precision/recall/F1 per class, but the report gave recall only,
    so a per-class F1 table meant opening every run directory's results.json."""
    run = make_run_dir(tmp_path / "runs", "eg")
    results = json.loads((run / "results.json").read_text())
    results["per_class"] = {c: {"precision": 0.5, "recall": 0.25, "f1-score": 1 / 3, "support": 30.0} for c in CLASSES}
    _write_json(run / "results.json", results)
    write_report([run], out=tmp_path / "report")
    entry = json.loads((tmp_path / "report" / "report.json").read_text())["runs"][0]
    assert entry["per_class"]["angry"] == {"precision": 0.5, "recall": 0.25, "f1-score": 1 / 3, "support": 30.0}
    assert entry["recall_per_class"]["angry"] == 25.0


@pytest.mark.parametrize("incomplete", [False, True])
def test_recall_per_class_of_a_run_from_before_per_class_comes_from_its_confusion(tmp_path: Path,
                                                                                  incomplete: bool) -> None:
    """Found by a migration trial: a run directory an older w2v2ser trained (results.json without
    per_class) was left out of "Recall per class" and report.csv's recall columns without a word,
    though its pooled confusion matrix holds the same recalls."""
    run = make_run_dir(tmp_path / "runs", "old")
    results = json.loads((run / "results.json").read_text())
    confusion = np.asarray(results["confusion"], dtype=float)
    if incomplete:  # a per_class that lacks a class: the confusion still has them all (review2 #7)
        results["per_class"] = {CLASSES[0]: {"recall": float(confusion[0, 0] / confusion[0].sum()), "support": 1}}
        (run / "results.json").write_text(json.dumps(results))
    write_report([run], out=tmp_path / "report")
    entry = json.loads((tmp_path / "report" / "report.json").read_text())["runs"][0]
    expected = 100 * np.diag(confusion) / confusion.sum(axis=1)
    np.testing.assert_allclose([entry["recall_per_class"][c] for c in CLASSES], expected)
    assert "## Recall per class" in (tmp_path / "report" / "report.md").read_text()


def test_a_nan_run_is_left_out_of_the_mean_and_the_baseline_test(tmp_path: Path) -> None:
    """A run without test utterances scores NaN: it is left out of n, the mean and the std, and the
    other values stay fractions turned into percent (a NaN first once made them read as percent
    already, so the comparison set 0.5 against 50 and gave p < 0.001)."""
    from scipy.stats import ttest_ind

    base = make_run_dir(tmp_path, "base", uars=(0.50, 0.52, 0.51))
    nan = make_run_dir(tmp_path, "nan", uars=(float("nan"), 0.51, 0.49, 0.52))
    write_report([base, nan], out=tmp_path / "r", baseline=base)
    row = json.loads((tmp_path / "r" / "report.json").read_text())["comparison"]["rows"][0]
    assert row["n"] == 3 and row["uar_mean"] == pytest.approx(50.666666)
    assert row["uar_std"] == pytest.approx(np.std([51, 49, 52]))
    assert row["p_welch"] == pytest.approx(ttest_ind([51, 49, 52], [50, 52, 51], equal_var=False).pvalue)
    assert "| nan | 50.7 ± 1.2 (n=3) | -0.3 |" in (tmp_path / "r" / "report.md").read_text()


def test_nan_runs_leave_the_accuracy_and_an_all_nan_run_dir_says_why(tmp_path: Path) -> None:
    """Found by a code review: the NaN run's accuracy stayed in the accuracy mean, and a run dir whose
    every run scored NaN was said to have 'neither uar_mean nor uar_per_run'."""
    runs = make_run_dir(tmp_path, "some", uars=(float("nan"), 0.51, 0.49))
    results = json.loads((runs / "results.json").read_text())
    results["runs"] = [{"name": f"all__seed{i}", "fold": "all", "seed": i, "uar": u, "accuracy": a}
                       for i, (u, a) in enumerate([(float("nan"), 0.0), (0.51, 0.60), (0.49, 0.50)])]
    results["accuracy_mean"] = 0.3666  # as train averages it: over the NaN run's too
    _write_json(runs / "results.json", results)
    every = make_run_dir(tmp_path, "every", uars=(float("nan"), float("nan")))
    write_report([runs, every], out=tmp_path / "r")
    entries = {e["name"]: e for e in json.loads((tmp_path / "r" / "report.json").read_text())["runs"]}
    assert entries["some"]["accuracy_mean"] == pytest.approx(55.0)
    assert entries["every"]["status"] == "incomplete"
    assert "NaN" in entries["every"]["reason"] and "neither" not in entries["every"]["reason"]


def _write_test_ids(run_dir: Path, ids: list[str]) -> None:
    """The runs list of results.json and each run's predictions.csv, as train writes them."""
    results = json.loads((run_dir / "results.json").read_text())
    results["runs"] = [{"name": f"all__seed{i}", "fold": "all", "seed": i} for i in range(len(results["uar_per_run"]))]
    (run_dir / "results.json").write_text(json.dumps(results))
    for entry in results["runs"]:
        lines = ["id,speaker,label,predicted"] + [f"{i},Actor_23,neutral,neutral" for i in ids]
        (run_dir / "runs" / entry["name"] / "predictions.csv").write_text("\n".join(lines) + "\n")


def test_runs_on_other_test_utterances_of_the_same_number_are_not_compared(tmp_path: Path) -> None:
    """`--subset statement=01` against `statement=02` tests 30 other files each: the same count
    is not the same test set, so no difference or p is given (it was, as if on the same data)."""
    base = make_run_dir(tmp_path, "st01", uars=(0.50, 0.52, 0.51))
    other = make_run_dir(tmp_path, "st02", uars=(0.60, 0.61, 0.62))
    same = make_run_dir(tmp_path, "again", uars=(0.55, 0.56, 0.54))
    _write_test_ids(base, [f"03-01-01-01-01-{k:02d}-23" for k in range(30)])
    _write_test_ids(other, [f"03-01-01-01-02-{k:02d}-23" for k in range(30)])
    _write_test_ids(same, [f"03-01-01-01-01-{k:02d}-23" for k in reversed(range(30))])
    write_report([base, other, same], out=tmp_path / "r", baseline=base)
    rows = {r["name"]: r for r in json.loads((tmp_path / "r" / "report.json").read_text())["comparison"]["rows"]}
    assert rows["st02"]["difference"] is None and rows["st02"]["p_welch"] is None
    assert rows["st02"]["not_compared"] == (
        "another test set: 30 of its 30 test utterances are not among the baseline's 30 (03-01-01-01-02-00-23, "
        "03-01-01-01-02-01-23, 03-01-01-01-02-02-23, ...); 30 of the baseline's 30 test utterances are not among its "
        "30 (03-01-01-01-01-00-23, 03-01-01-01-01-01-23, 03-01-01-01-01-02-23, ...)")
    assert rows["again"]["difference"] == pytest.approx(4.0) and rows["again"]["not_compared"] == ""


def test_a_run_tested_on_part_of_the_baselines_utterances_names_the_ones_it_lacks(tmp_path: Path) -> None:
    """Found by a code review: the message counted only the run's ids missing from the baseline's,
    so a run tested on a subset of them read '0 of its 28 test utterances are not among ...'."""
    base = make_run_dir(tmp_path, "base", uars=(0.50, 0.52, 0.51))
    part = make_run_dir(tmp_path, "part", uars=(0.60, 0.61, 0.62))
    _write_test_ids(base, [f"u{k:02d}" for k in range(30)])
    _write_test_ids(part, [f"u{k:02d}" for k in range(28)])
    write_report([base, part], out=tmp_path / "r", baseline=base)
    (row,) = json.loads((tmp_path / "r" / "report.json").read_text())["comparison"]["rows"]
    assert row["difference"] is None
    assert row["not_compared"] == ("another test set: 2 of the baseline's 30 test utterances are not among its 28 "
                                   "(u28, u29)")


def test_report_sources_name_the_commit_that_trained_a_run_dir(tmp_path: Path) -> None:
    """An editable install's version (0.3.0) does not name the code: the commit its provenance
    recorded is in the sources, and whether tracked files differed from it."""
    run = make_run_dir(tmp_path / "runs", "eg", uars=(0.5, 0.6))
    results = json.loads((run / "results.json").read_text())
    results["provenance"] = {"versions": {"w2v2ser": "0.3.0"}, "source": {"commit": "7a15a28" + "0" * 33, "dirty": True}}
    _write_json(run / "results.json", results)
    write_report([run], out=tmp_path / "report")
    entry = json.loads((tmp_path / "report" / "report.json").read_text())["runs"][0]
    assert entry["sources"]["commit"] == "7a15a28" + "0" * 33 and entry["sources"]["dirty"] is True
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "w2v2ser 0.3.0; commit 7a15a2800000 with uncommitted changes" in md


def test_a_comparison_without_spread_says_why_it_has_no_p(tmp_path: Path) -> None:
    """Every seed of both run dirs scored alike (a small test set): the p column's — had no reason
    beside "at least 2 values on each side", which both sides had."""
    base = make_run_dir(tmp_path, "base", uars=(0.25, 0.25, 0.25))
    other = make_run_dir(tmp_path, "other", uars=(0.30, 0.30, 0.30))
    write_report([base, other], out=tmp_path / "r", baseline=base)
    md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "| other | 30.0 ± 0.0 (n=3) | +5.0 | — |" in md
    assert "— where a side has one value, or every value of both sides is the same" in md


def test_report_json_says_its_per_class_figures_are_fractions(tmp_path: Path) -> None:
    """Found as a user reading report.json with pandas: it says `"uar_unit": "percent"`, and its
    `recall_per_class` is in percent, but `per_class` (results.json's, copied) holds fractions, which
    nothing in the file said: a script took a 0.6 recall for 0.6 %."""
    run = make_run_dir(tmp_path / "runs", "eg", uars=(0.55, 0.60))
    write_report([run], out=tmp_path / "report")
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["uar_unit"] == "percent" and data["per_class_unit"].startswith("fraction (0-1)")
    assert "recall_per_class" in data["per_class_unit"] and "recall_per_class" in data["runs"][0]


def test_runs_whose_names_slug_alike_keep_their_own_confusion_figures(tmp_path: Path) -> None:
    # Non-ASCII run folders ('运行一', '运行二') and 'run 1' beside 'run_1' reduce to one file name.
    dirs = [make_run_dir(tmp_path / "runs", name, seed=k, uars=(0.3 + 0.1 * k,))
            for k, name in enumerate(["运行一", "运行二", "run 1", "run_1"])]
    out = tmp_path / "report"
    write_report(dirs, out=out)
    pngs = [e["confusion_png"] for e in json.loads((out / "report.json").read_text())["runs"]]
    assert len(set(pngs)) == 4, pngs
    for png in pngs:
        _assert_png(out / png)


def test_a_fusion_run_with_another_second_branch_is_not_shown_as_the_papers_fusion(tmp_path: Path) -> None:
    """Found driving other upstreams: a Fusion run whose second branch was HuBERT, not eGeMAPS, got the
    row of the paper's wav2vec2 + eGeMAPS Fusion, and the head table compared it with that selection's LSTM."""
    runs = tmp_path / "runs"
    make_run_dir(runs, "lstm", features="wav2vec2:all", head="lstm", model=MODELS["pt"])
    make_run_dir(runs, "fusion-egemaps", features="wav2vec2:all", head="fusion", model=MODELS["pt"], seed=1)
    other = make_run_dir(runs, "fusion-hubert", features="wav2vec2:all", head="fusion", model=MODELS["pt"], seed=2)
    experiment = json.loads((other / "experiment.json").read_text(encoding="utf-8"))
    (other / "experiment.json").write_text(json.dumps({**experiment, "fusion_features": "ssl/hubert:all"}),
                                           encoding="utf-8")
    write_report(runs, out=tmp_path / "report")
    data = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    selections = {(r["selection"], r["head"]) for r in data["feature_table"]["rows"]}
    assert selections == {("all layers", "lstm"), ("all layers", "fusion"), ("all layers + hubert:all", "fusion")}
    head_rows = data["head_table"]["rows"]
    assert [(r["selection"], sorted(r["cells"])) for r in head_rows] == [("all layers", ["fusion", "lstm"])]


def test_fusion_runs_whose_second_branches_have_other_models_get_their_own_rows(tmp_path: Path) -> None:
    """Review s62 (item 9): the fusion row named only the branch's feature (+ hubert:all), so runs whose
    second branch was hubert-base and hubert-large shared one row label and key."""
    runs = tmp_path / "runs"
    for seed, model in enumerate(("facebook/hubert-base-ls960", "facebook/hubert-large-ll60k")):
        run = make_run_dir(runs, f"fusion-{seed}", features="wav2vec2:all", head="fusion", model=MODELS["pt"],
                           seed=seed)
        experiment = json.loads((run / "experiment.json").read_text(encoding="utf-8"))
        experiment["fusion_features"] = "ssl/hubert:all"
        experiment["stores_identity"]["ssl"] = {"path": str(tmp_path / f"ssl{seed}.zarr"), "features": {
            "hubert": {"name": "hubert", "dim": 768, "layers": 13, "config": {"model": model, "revision": None}}}}
        (run / "experiment.json").write_text(json.dumps(experiment), encoding="utf-8")
    write_report(runs, out=tmp_path / "report")
    data = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    selections = sorted(r["selection"] for r in data["feature_table"]["rows"])
    assert selections == ["all layers + hubert:all (hubert-base-ls960)", "all layers + hubert:all (hubert-large-ll60k)"]


def test_report_sources_name_the_commits_of_the_runs_not_of_the_summary(tmp_path: Path) -> None:
    """Found by a code review: results.json's provenance is of its summary, so a resume or seeds
    added after a new commit (or an upgrade) put that commit and version on runs trained at others,
    and a mix went unsaid. Each run's metrics.json names the commit and version that trained it."""
    run = make_run_dir(tmp_path / "runs", "eg", uars=(0.5, 0.6))
    for name, commit, dirty, version in (("all__seed0", "a" * 40, False, "0.3.0"),
                                         ("all__seed1", "b" * 40, True, "0.4.0")):
        metrics = json.loads((run / "runs" / name / "metrics.json").read_text())
        metrics["provenance"] = {"versions": {"w2v2ser": version}, "source": {"commit": commit, "dirty": dirty}}
        _write_json(run / "runs" / name / "metrics.json", metrics)
    results = json.loads((run / "results.json").read_text())
    results["provenance"] = {"versions": {"w2v2ser": "0.5.0"}, "source": {"commit": "c" * 40, "dirty": False}}
    _write_json(run / "results.json", results)
    write_report([run], out=tmp_path / "report")
    sources = json.loads((tmp_path / "report" / "report.json").read_text())["runs"][0]["sources"]
    assert sources["commits"] == ["a" * 40, "b" * 40] and sources["commit"] is None and sources["dirty"] is True
    assert sources["w2v2ser"] == "0.3.0, 0.4.0"
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    line = next(x for x in md.splitlines() if x.startswith("- **eg**"))
    assert f"commits {'a' * 12}, {'b' * 12} (its runs were trained at different commits" in line and "c" * 12 not in line


def test_confusion_figure_counts_the_runs_its_results_summed_not_the_run_folders_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found over run directories copied from a cluster: with one seed's folder deleted after training, the
    figure of 3 runs' summed counts said "2 runs summed"; with runs/ not copied it said nothing at all."""
    import shutil

    from w2v2ser.evaluate import _figures
    from w2v2ser.evaluate._rundir import read_run_dir

    titles: list[str] = []
    monkeypatch.setattr(_figures, "save_figure_atomically",
                        lambda fig, path, **_: titles.append(fig.axes[0].get_title()) or path)
    for name, remove in (("one_gone", "runs/all__seed2"), ("all_gone", "runs")):
        run_dir = make_run_dir(tmp_path / "runs", name, uars=(0.5, 0.6, 0.7))
        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        _write_json(run_dir / "results.json", {**results, "n_runs": 3})  # as train writes it
        shutil.rmtree(run_dir / remove)
        _figures.plot_confusion(read_run_dir(run_dir), tmp_path / f"{name}.png")
    assert all("test predictions of 3 runs summed" in title for title in titles), titles


def test_evaluate_refuses_several_baselines_rather_than_keeping_the_last(tmp_path: Path, capsys) -> None:
    """Found comparing many run directories: `--baseline A --baseline B` wrote a report against B only, exit 0,
    and the comparison with A was dropped without a word."""
    from w2v2ser._cli import main

    runs = tmp_path / "runs"
    first, second = make_run_dir(runs, "base_a"), make_run_dir(runs, "base_b", uars=(0.4, 0.5, 0.6))
    assert main(["evaluate", str(runs), "--out", str(tmp_path / "r"), "--baseline", str(first),
                 "--baseline", str(second)]) == 2
    err = capsys.readouterr().err
    assert "--baseline is given 2 times" in err and str(first) in err and str(second) in err
    assert not (tmp_path / "r").exists()
    assert main(["evaluate", str(runs), "--out", str(tmp_path / "r"), "--baseline", str(second)]) == 0
    assert json.loads((tmp_path / "r" / "report.json").read_text())["comparison"]["baseline"] == "base_b"


def test_a_rewritten_report_keeps_the_confusion_figures_whose_inputs_did_not_change(tmp_path: Path) -> None:
    """Found over 300 run directories: `evaluate` took 10 min, 92 % of it drawing confusion matrices, and drew
    every one again at each rewrite of the report (a run added, a baseline changed)."""
    runs = tmp_path / "runs"
    make_run_dir(runs, "a")
    b = make_run_dir(runs, "b", uars=(0.4, 0.5, 0.6))
    write_report([runs], out=tmp_path / "r")
    figures = {name: tmp_path / "r" / f"confusion_{name}.png" for name in ("a", "b")}
    before = {name: (p.stat().st_ino, p.stat().st_mtime_ns) for name, p in figures.items()}
    results = json.loads((b / "results.json").read_text(encoding="utf-8"))
    confusion = np.asarray(results["confusion"])
    confusion[0, 0] += 1
    _write_json(b / "results.json", {**results, "confusion": confusion.tolist()})  # b retrained: new counts
    write_report([runs], out=tmp_path / "r", baseline=runs / "a")
    after = {name: (p.stat().st_ino, p.stat().st_mtime_ns) for name, p in figures.items()}
    assert after["a"] == before["a"]  # the same figure: not drawn again
    assert after["b"] != before["b"]  # other counts: drawn again
    _assert_png(figures["b"])
    figures["a"].write_bytes(b"not a png")  # damaged (or replaced) figure: drawn again
    write_report([runs], out=tmp_path / "r")
    _assert_png(figures["a"])


def test_evaluate_of_a_pipeline_output_reports_the_runs_of_grids_of_several_keys(tmp_path: Path, capsys) -> None:
    """Found on a pipeline.yaml with `grid: {corpus: [...], features: [...], units: [...]}`: its run dirs lie at
    out/experiments/grid1/ravdess/classic-egemaps/16, five folders below the output, and `w2v2ser evaluate out`
    (as its help suggests) wrote a report of the other experiments only, exit 0, without a word of the 12 grid runs."""
    from w2v2ser._cli import main

    experiments = tmp_path / "out" / "experiments"
    make_run_dir(experiments / "heads" / "ravdess", "dense")
    make_run_dir(experiments / "grid1" / "ravdess" / "classic-egemaps", "16")
    make_run_dir(experiments / "big" / "ravdess" / "a" / "b" / "c" / "d", "e")  # 5 grid keys beside corpus
    assert main(["evaluate", str(tmp_path / "out"), "--out", str(tmp_path / "r")]) == 0
    names = {e["name"] for e in json.loads((tmp_path / "r" / "report.json").read_text())["runs"]}
    assert names == {"heads/ravdess/dense", "grid1/ravdess/classic-egemaps/16", "big/ravdess/a/b/c/d/e"}


def test_runs_of_seeds_the_configuration_no_longer_names_are_not_current(tmp_path: Path) -> None:
    """Found training seeds into one folder: `train --seeds 1 --set first_seed=3` (or `--seeds 2`) into a run
    directory of seeds 0-2 keeps their runs, with the same config_key (seeds are not part of it); results.json
    then has the new seeds only, but predict averaged every seed's model and the report counted them all."""
    from w2v2ser.evaluate._rundir import current_runs

    run_dir = make_run_dir(tmp_path / "runs", "eg", uars=(0.5, 0.6, 0.7))
    experiment = json.loads((run_dir / "experiment.json").read_text(encoding="utf-8"))
    assert [p.name for p in current_runs(run_dir, experiment)] == ["all__seed0", "all__seed1", "all__seed2"]
    experiment = {**experiment, "seeds": 2, "first_seed": 1}  # what `train --seeds 2 --set first_seed=1` writes
    _write_json(run_dir / "experiment.json", experiment)
    assert [p.name for p in current_runs(run_dir, experiment)] == ["all__seed1", "all__seed2"]
    write_report([run_dir], out=tmp_path / "r")
    assert json.loads((tmp_path / "r" / "report.json").read_text())["runs"][0]["runs_finished"] == 2


def test_evaluate_names_run_directories_below_its_search_depth(tmp_path: Path, capsys) -> None:
    """A pipeline grid of more keys than the search reaches left its runs out of the report without a word."""
    from w2v2ser._cli import main

    out = tmp_path / "out"
    make_run_dir(out / "experiments" / "heads" / "ravdess", "dense")
    deep = make_run_dir(out / "experiments" / "big" / "ravdess" / "a" / "b" / "c" / "d" / "e", "f")
    assert main(["evaluate", str(out), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert f"1 run directory lies more than 8 folders below {out} and is not in the report ({deep})" in err
    assert main(["evaluate", str(out / "experiments"), "--out", str(tmp_path / "r")]) == 0
    assert "folders below" not in capsys.readouterr().err


def test_a_confusion_figure_drawn_in_another_style_is_drawn_again(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of the kept figures: their key covered counts, classes and title, not how plot_confusion draws
    them, so after an upgrade that changed the drawing (colours, texts, resolution) every report kept its
    old figures."""
    from w2v2ser.evaluate import _figures

    make_run_dir(tmp_path / "runs", "a")
    figure = tmp_path / "r" / "confusion_a.png"
    write_report([tmp_path / "runs"], out=tmp_path / "r")
    drawn = figure.stat().st_mtime_ns, figure.stat().st_ino
    write_report([tmp_path / "runs"], out=tmp_path / "r")
    assert (figure.stat().st_mtime_ns, figure.stat().st_ino) == drawn  # the same: kept
    monkeypatch.setattr(_figures, "_CONFUSION_STYLE", getattr(_figures, "_CONFUSION_STYLE", 1) + 1, raising=False)
    write_report([tmp_path / "runs"], out=tmp_path / "r")
    assert (figure.stat().st_mtime_ns, figure.stat().st_ino) != drawn  # another drawing: drawn again
    redrawn = figure.stat().st_mtime_ns, figure.stat().st_ino
    monkeypatch.setattr(_figures, "_CONFUSION_DPI", 200, raising=False)
    write_report([tmp_path / "runs"], out=tmp_path / "r")
    assert (figure.stat().st_mtime_ns, figure.stat().st_ino) != redrawn
    _assert_png(figure)


def test_evaluate_does_not_name_a_deep_run_directory_given_beside_its_folder(tmp_path: Path, capsys) -> None:
    """Review of the depth warning: `evaluate out out/.../f` (a deep run dir given too) warned that f "is not in
    the report" while the report had it; run dirs deep in a dot-folder (.git, .venv) or through a symbolic link
    (a link to a parent repeats the walk) were walked and named too."""
    from w2v2ser._cli import main

    out = tmp_path / "out"
    make_run_dir(out / "experiments" / "heads" / "ravdess", "dense")
    deep = make_run_dir(out / "experiments" / "big" / "ravdess" / "a" / "b" / "c" / "d" / "e", "f")
    make_run_dir(out / "experiments" / "x" / "a" / "b" / "c" / "d" / "e" / "f" / ".cache", "g")
    (out / "experiments" / "big" / "ravdess" / "a" / "b" / "c" / "d" / "e" / "up").symlink_to(out / "experiments")
    assert main(["evaluate", str(out), str(deep), "--out", str(tmp_path / "r")]) == 0
    assert "folders below" not in capsys.readouterr().err
    names = {e["name"] for e in json.loads((tmp_path / "r" / "report.json").read_text())["runs"]}
    assert any(name.endswith("/f") for name in names), names


def test_evaluate_takes_one_baseline_given_twice(tmp_path: Path, capsys) -> None:
    """Review: `--baseline A --baseline A` (a wrapper script adding its own) was refused as 2 baselines."""
    from w2v2ser._cli import main

    runs = tmp_path / "runs"
    base = make_run_dir(runs, "base_a")
    make_run_dir(runs, "b", uars=(0.4, 0.5, 0.6))
    assert main(["evaluate", str(runs), "--out", str(tmp_path / "r"), "--baseline", str(base),
                 "--baseline", f"{base}/"]) == 0
    assert json.loads((tmp_path / "r" / "report.json").read_text())["comparison"]["baseline"] == "base_a"


def test_report_md_shows_run_names_as_written_not_as_markdown(tmp_path: Path) -> None:
    """Found by a trial: report.md escaped only "|" in names, so a run directory named *c* showed as
    emphasis, `<br>` broke its row, backticks opened code and _x_ lost its underscores."""
    runs = [make_run_dir(tmp_path / "runs", name) for name in ("*c*", "_x_ <br> `b`", "wav2vec2_all")]
    write_report(runs, out=tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "| \\*c\\* | complete |" in md and "| \\_x\\_ \\<br\\> \\`b\\` | complete |" in md
    assert "| wav2vec2_all | complete |" in md  # an underscore inside a word is no emphasis: left as it is
    assert "- **\\*c\\***: " in md
    assert f"- **\\_x\\_ \\<br\\> \\`b\\`**: `` {runs[1]} ``; " in md  # its path: a code span of two backticks
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        return
    html = MarkdownIt("commonmark").enable("table").render(md)
    for shown in ("<td>*c*</td>", "<td>_x_ &lt;br&gt; `b`</td>", "<strong>*c*</strong>",
                  f"<code>{runs[1]}</code>".replace("<br>", "&lt;br&gt;")):
        assert shown in html
