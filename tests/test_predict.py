"""predict_audio with a tiny run dir trained by w2v2ser.train on a random store.

The extraction subprocess is replaced by a fake that writes the temporary store directly with
StoreWriter (the real subprocess is covered by the slow end-to-end test at the bottom).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from stage2_fixtures import build_store
from w2v2ser.evaluate import PredictError, Prediction, RunDirError, predict_audio, write_report
from w2v2ser.evaluate import _extraction, _predict, _runplan
from w2v2ser.extract import features_like
from w2v2ser.store import AUDIO_RATE_KEY, StoreWriter, Utterance, open_store


def fake_extract(manifest: Path, store: Path, *, like: Path, features: list[str], model: str | None = None,
                 options: Sequence[str] = ()) -> None:
    """Stand-in for the stage 1 subprocess: random frames with the training store's specs.

    Files whose name contains "bad" fail the way undecodable audio does (failure row), those whose
    name contains "empty" get 0 frames; each file is recorded at 16 kHz, or 48 kHz when its name
    contains "48k".
    """
    specs = [features_like(like)[0][name] for name in features]  # a store or a run dir, as stage 1 reads it
    with open(manifest, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    utterances = [Utterance(id=r["id"], path=r["path"], speaker=r["speaker"], label=r["label"], corpus="csv",
                            extra={AUDIO_RATE_KEY: 48_000 if "48k" in Path(r["path"]).name else 16_000})
                  for r in rows]
    bad = {i: "AudioError: cannot decode (not an audio file)" for i, r in enumerate(rows) if "bad" in Path(r["path"]).name}
    seconds = [0.6 + 0.2 * i for i in range(len(rows))]
    empty = [i for i, r in enumerate(rows) if "empty" in Path(r["path"]).name]  # shorter than one frame
    frames = {s.name: [0 if i in empty else int(d * s.frame_rate) + 1 for i, d in enumerate(seconds)] for s in specs}
    writer = StoreWriter(store)
    index = writer.plan(utterances, num_samples=[None if i in bad else int(d * 16000) for i, d in enumerate(seconds)],
                        features=specs, capacities=frames, failures=bad)
    rng = np.random.default_rng(0)
    for i, row in enumerate(index):
        if i in bad:
            continue
        data = {s.name: rng.standard_normal((frames[s.name][i], *((s.layers, s.dim) if s.layers else (s.dim,))))
                .astype(s.dtype) for s in specs}
        writer.write_utterance(row, data, audio_sha256=f"{i:064x}", duration=seconds[i])
    writer.finalize()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run dir of 2 seeds (weighted-average head over 3 layers, speaker norm) on a random store."""
    from w2v2ser.train import ExperimentConfig, train_experiment

    root = tmp_path_factory.mktemp("predict")
    store = build_store(root / "train.zarr", layers=3, dim=4, features=("wav2vec2",))
    config = ExperimentConfig(stores={"main": str(store)}, features="wav2vec2:all", head="dense", norm="speaker",
                              protocol="ravdess", recipe="official", seeds=2, max_frames=40,
                              recipe_overrides={"max_epochs": 2}, workers=1)
    train_experiment(config, out=root / "run", progress=False, threads=1)
    return root / "run"


@pytest.fixture()
def audio_files(tmp_path: Path) -> list[Path]:
    files = [tmp_path / "a.wav", tmp_path / "b.wav", tmp_path / "bad.wav", tmp_path / "c.wav"]
    for f in files:
        f.write_bytes(b"RIFF")  # contents are never read by the fake extraction
    return files


def _check(pred: Prediction, classes: list[str]) -> None:
    assert pred.ok and pred.emotion in classes
    assert list(pred.probabilities) == classes
    assert abs(sum(pred.probabilities.values()) - 1.0) < 1e-6
    assert pred.emotion == max(pred.probabilities, key=pred.probabilities.get)


def test_predict_ensemble_bad_and_missing_files(trained: Path, audio_files: list[Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    classes = json.loads((trained / "results.json").read_text())["classes"]
    missing = tmp_path / "missing.wav"
    preds = predict_audio(trained, [*audio_files, missing], work_dir=tmp_path / "work")
    assert [p.path for p in preds] == [*audio_files, missing]
    for p in (preds[0], preds[1], preds[3]):
        _check(p, classes)
    assert preds[2].emotion is None and "cannot decode" in preds[2].error
    assert preds[4].emotion is None and "file not found" in preds[4].error
    assert len(list((tmp_path / "work").glob("predict-*/manifest.csv"))) == 1  # kept for inspection

    single = predict_audio(trained, audio_files[:1], run="split__seed0")
    _check(single[0], classes)
    assert json.loads(json.dumps(single[0].to_dict()))["emotion"] == single[0].emotion


def test_predict_with_speaker_groups(trained: Path, audio_files: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    classes = json.loads((trained / "results.json").read_text())["classes"]
    assert _predict.MIN_GROUP_FILES == 3
    files = [*audio_files, audio_files[0].with_name("d.wav")]
    files[-1].write_bytes(b"RIFF")
    preds = predict_audio(trained, files, speakers=["spk1", "spk1", "spk2", "spk2", "spk1"])
    _check(preds[0], classes)
    assert preds[0].speaker == "spk1" and not preds[2].ok
    assert [p.normalisation for p in preds] == ["speaker group", "speaker group", None, _predict.SMALL_GROUP,
                                                "speaker group"]
    # spk2 has a single usable file: its own statistics would remove what the models read (on
    # RAVDESS actor 24, 21.4 % UAR against 50.6 %), so it gets the global ones, as ungrouped files do
    _check(preds[3], classes)
    ungrouped = predict_audio(trained, files)
    assert ungrouped[3].normalisation == "global"
    assert preds[3].probabilities == ungrouped[3].probabilities
    assert preds[0].probabilities != ungrouped[0].probabilities


def test_predict_names_speaker_groups_too_small_for_their_own_statistics(
        trained: Path, audio_files: list[Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from w2v2ser.evaluate._cli import add_predict_arguments, predict_from_cli

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    files = [str(audio_files[k]) for k in (0, 1, 3)]
    assert predict_from_cli(parser.parse_args([str(trained), *files, "--speaker-groups", "A,B,B", "--json"])) == 0
    out = capsys.readouterr()
    assert [p["normalisation"] for p in json.loads(out.out)] == [_predict.SMALL_GROUP] * 3
    assert ("note: 3 of 3 files are in speaker groups of fewer than 3 predicted files (A, B); they were normalised "
            "with the run's global statistics instead") in out.err
    assert predict_from_cli(parser.parse_args([str(trained), *files, "--speaker-groups", "A,A,A"])) == 0
    assert "speaker groups of fewer" not in capsys.readouterr().err


def test_predict_takes_folders_of_audio(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder stands for the audio files below it, sorted; hidden files (macOS ``._`` forks) and
    other files are left out; a folder without audio is reported, not taken for a missing file."""
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    folder = tmp_path / "Ses02M_impro01"
    files = [folder / "b.wav", folder / "a.flac", folder / "sub" / "c.WAV"]
    for f in [*files, folder / "._a.flac", folder / "notes.txt", folder / ".cache" / "d.wav"]:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"RIFF")
    (tmp_path / "empty").mkdir()
    preds = predict_audio(trained, [folder, tmp_path / "empty"])
    assert [p.path for p in preds] == [folder / "a.flac", folder / "b.wav", folder / "sub" / "c.WAV",
                                       tmp_path / "empty"]
    assert all(p.ok for p in preds[:3])
    assert "folder" in preds[3].error and "holds no audio file" in preds[3].error
    with pytest.raises(PredictError, match="2 entries for 1 paths and 3 files \\(a folder counts as the audio files"):
        predict_audio(trained, [folder], speakers=["a", "b"])


def test_a_folder_lists_audio_it_cannot_decode(trained: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Phone recordings (.m4a) beside WAV files: they were left out of a folder without a word, and
    a folder of them alone was reported as holding no audio. Each is now a failed file with the fix."""
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    folder = tmp_path / "phone"
    for name in ("a.wav", "b.M4A", "c.wma", "notes.txt"):
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"RIFF")
    preds = predict_audio(trained, [folder, folder / "c.wma"])
    assert [p.path.name for p in preds] == ["a.wav", "b.M4A", "c.wma", "c.wma"]
    assert preds[0].ok
    for p in preds[1:]:
        assert p.error.startswith(f"{p.path}: {p.path.suffix} files cannot be decoded here")
        assert "ffmpeg -i IN -ac 1 -ar 16000 OUT.wav" in p.error


def test_a_folder_takes_one_speaker_for_all_its_files(trained: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """One speaker's recordings in a folder: one name for the folder (it needed one per file, 60
    names on the command line for a RAVDESS actor), or still one per file."""
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    folder = tmp_path / "actor24"
    files = [folder / f"{k}.wav" for k in range(3)]
    for f in [*files, tmp_path / "x.wav"]:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"RIFF")
    preds = predict_audio(trained, [folder, tmp_path / "x.wav"], speakers=["a24", "other"])
    assert [(p.path, p.speaker) for p in preds] == [(f, "a24") for f in files] + [(tmp_path / "x.wav", "other")]
    assert all(p.ok for p in preds)
    per_file = predict_audio(trained, [folder], speakers=["a", "a", "b"])
    assert [p.speaker for p in per_file] == ["a", "a", "b"]
    done = subprocess.run([sys.executable, "-m", "w2v2ser", "predict", str(trained), str(folder),
                           "--speaker-groups", "a24,b"], capture_output=True, text=True)
    assert done.returncode == 2 and "2 entries for 1 paths and 3 files" in done.stderr, done.stderr


def test_one_path_and_one_speaker_given_bare(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """predict_audio(run, "x.wav") iterated the string: one "path" per character, "/" among them, so
    it walked the whole file system for audio (minutes) and predicted whatever it found. A bare
    path is one path; a bare speaker name is every path's group."""
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    file = tmp_path / "clip.wav"
    file.write_bytes(b"RIFF")
    for given in (str(file), file):
        preds = predict_audio(trained, given, speakers="spk7")
        assert [(p.path, p.speaker, p.ok) for p in preds] == [(file, "spk7", True)]


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "16", True])
def test_predict_rejects_a_batch_size_that_is_not_a_positive_integer(trained: Path, audio_files: list[Path],
                                                                     batch_size) -> None:
    """batch_size=0 ended in ZeroDivisionError."""
    with pytest.raises(PredictError, match=r"^predict_audio\.batch_size: expected a (value >= 1|valid integer), got"):
        predict_audio(trained, audio_files, batch_size=batch_size)


def test_predicting_with_many_models_gives_no_retracing_warning(trained: Path, audio_files: list[Path],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Each loaded model traces its own predict step, by design: from the fifth on, TensorFlow's
    "triggered tf.function retracing" warning reached predict_audio's callers (a 5-seed run)."""
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    for _ in range(4):  # 2 models each
        assert all(p.ok for p in predict_audio(trained, audio_files[:1]))
    assert "retracing" not in caplog.text


def test_predict_rejects_bad_arguments(trained: Path, audio_files: list[Path], tmp_path: Path) -> None:
    with pytest.raises(PredictError, match="2 entries for 4 paths and 4 files"):
        predict_audio(trained, audio_files, speakers=["a", "b"])
    with pytest.raises(RunDirError, match="is not a trained run"):
        predict_audio(trained, audio_files, run="nope__seed9")
    with pytest.raises(RunDirError, match="does not exist"):
        predict_audio(tmp_path / "nothing", audio_files)
    (tmp_path / "model.keras").write_bytes(b"PK")
    with pytest.raises(RunDirError, match=r"model\.keras is a file; expected a folder written by `w2v2ser train`"):
        predict_audio(tmp_path / "model.keras", audio_files)
    with pytest.raises(PredictError, match="no audio paths"):
        predict_audio(trained, [])
    # the folder above run directories: they are named, so the user can pick one
    with pytest.raises(RunDirError, match=r"holds run directories, not one: run\. Pass one of them, e\.g\. .*run\."):
        predict_audio(trained.parent, audio_files)


def test_a_damaged_normalisation_file_is_named_not_a_traceback(trained: Path, audio_files: list[Path],
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A truncated normalisation.npz raised zipfile's BadZipFile through `w2v2ser predict`."""
    import shutil

    from w2v2ser import DataError
    from w2v2ser.train import load_normalisers

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    npz = run / "runs" / "split__seed0" / "normalisation.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(RunDirError, match=r"1 run\(s\) of .* are damaged: split__seed0: .*normalisation\.npz has "
                                          r"changed since the run wrote it.*or pass --run with an intact run "
                                          r"\(split__seed1\)"):
        predict_audio(run, audio_files[:1])
    with pytest.raises(DataError, match=r"cannot read normalisation statistics .*Retrain this run"):
        load_normalisers(npz)
    # A run written before metrics.json recorded its files' sha256: the reader's own error.
    metrics = run / "runs" / "split__seed0" / "metrics.json"
    metrics.write_text(json.dumps({k: v for k, v in json.loads(metrics.read_text()).items() if k != "files_sha256"}))
    with pytest.raises(RunDirError, match=r"cannot read the run's normalisation statistics .*normalisation\.npz"):
        predict_audio(run, audio_files[:1], run="split__seed0")


def test_a_model_changed_after_training_is_refused(trained: Path, audio_files: list[Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A flipped byte in model.keras is found from metrics.json's sha256 before any extraction, and
    the message names the intact runs (Keras's own zip CRC error came only after extraction)."""
    import shutil

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    model = run / "runs" / "split__seed1" / "model.keras"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(RunDirError, match=r"split__seed1: .*model\.keras has changed since the run wrote it"):
        predict_audio(run, audio_files[:1])
    assert predict_audio(run, audio_files[:1], run="split__seed0")[0].ok


def test_a_model_whose_layer_class_is_not_registered_is_not_called_corrupt(
        trained: Path, audio_files: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by an extension trial: a head whose Keras layer was defined outside train/_layers.py
    trained, but predict called the intact model.keras corrupt and said to retrain."""
    import keras

    def load_model(path, **kwargs):
        raise TypeError("<class 'x'> could not be deserialized properly. Exception encountered: Could not "
                        "locate class 'AttentionPooling'. Make sure custom classes are decorated")

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    monkeypatch.setattr(keras.saving, "load_model", load_model)
    with pytest.raises(RunDirError, match=r"uses the Keras class 'AttentionPooling', which this w2v2ser does "
                                          r"not define") as caught:
        predict_audio(trained, audio_files[:1])
    assert "corrupt" not in str(caught.value) and "Retrain" not in str(caught.value)


def test_report_on_a_real_run_dir(trained: Path, tmp_path: Path) -> None:
    md = write_report([trained], out=tmp_path / "report").read_text(encoding="utf-8")
    # the row is named by the store's upstream model (here the tiny local model's folder), selection and head
    assert re.search(r"^\| [\w.-]+ \| all layers \| dense \| speaker \| official \(max_epochs=2\) \|", md, re.M), md
    assert (tmp_path / "report" / "layer_weights.png").exists()
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["runs"][0]["n_runs"] == 2 and len(report["runs"][0]["layer_weights"]) == 2



def test_runs_of_an_older_configuration_left_in_the_folder_are_not_used(
        trained: Path, audio_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`train` into a folder of another configuration replaces only the runs of the same fold and
    seed; predict and the report use only the runs of the configuration experiment.json names
    (here the old seed-1 model takes 3 layers, the new selection gives one: it crashed Keras)."""
    import shutil

    from w2v2ser.train import ExperimentConfig, train_experiment

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    old = json.loads((run / "experiment.json").read_text())
    new = ExperimentConfig(stores=old["stores"], features="wav2vec2:2", head="dense", norm="speaker",
                           protocol="ravdess", recipe="official", seeds=1, max_frames=40,
                           recipe_overrides={"max_epochs": 2}, workers=1)
    train_experiment(new, out=run, progress=False, threads=1)
    assert (run / "runs" / "split__seed1" / "model.keras").exists()  # the old run stays on disk

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    preds = predict_audio(run, audio_files)
    _check(preds[0], json.loads((run / "results.json").read_text())["classes"])
    with pytest.raises(RunDirError, match=r"'split__seed1' is not a trained run of .* another configuration"):
        predict_audio(run, audio_files, run="split__seed1")
    # Found by a predict trial: a run without its metrics.json was called one of another configuration.
    (run / "runs" / "split__seed1" / "metrics.json").unlink()
    with pytest.raises(RunDirError, match=r"'split__seed1' is not a trained run of .* \(it has no metrics.json"):
        predict_audio(run, audio_files, run="split__seed1")
    (run / "results.json").unlink()  # as while that training is still going on
    write_report([run], out=tmp_path / "report")
    assert json.loads((tmp_path / "report" / "report.json").read_text())["runs"][0]["runs_finished"] == 1


def test_a_seed_the_configuration_no_longer_names_is_not_in_the_ensemble(
        trained: Path, audio_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found training seeds into one folder: `train --seeds 1` into a run directory of 2 seeds keeps seed 1's
    run with the same config_key (seeds are not part of it) and summarises seed 0 only; predict still
    averaged both models (on RAVDESS, 21.4 % UAR where the one seed results.json names gave 14.3)."""
    import shutil

    from w2v2ser.train import ExperimentConfig, train_experiment

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    old = json.loads((run / "experiment.json").read_text())
    fewer = ExperimentConfig(stores=old["stores"], features="wav2vec2:all", head="dense", norm="speaker",
                             protocol="ravdess", recipe="official", seeds=1, max_frames=40,
                             recipe_overrides={"max_epochs": 2}, workers=1)
    train_experiment(fewer, out=run, progress=False, threads=1)  # trains nothing: seed 0 is done
    assert json.loads((run / "results.json").read_text())["n_runs"] == 1
    assert (run / "runs" / "split__seed1" / "model.keras").exists()
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    with pytest.raises(RunDirError, match=r"'split__seed1' is not a trained run of .*it is a run of this "
                       r"configuration, but its seed 1 is not among the seeds"):
        predict_audio(run, audio_files, run="split__seed1")
    alone = predict_audio(run, audio_files, run="split__seed0")
    assert [p.probabilities for p in predict_audio(run, audio_files)] == [p.probabilities for p in alone]
    # Seed 1 is one of experiment.json's seeds again (an array task's results.json names its own seed
    # only): training with seeds that include 1 is not the step that helps, summarising all of them is.
    # A run written before config_key was recorded is one of this configuration's, not another's.
    experiment = json.loads((run / "experiment.json").read_text())
    (run / "experiment.json").write_text(json.dumps({**experiment, "seeds": 2}))
    metrics_path = run / "runs" / "split__seed1" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    for written in (metrics, {k: v for k, v in metrics.items() if k != "config_key"}):
        metrics_path.write_text(json.dumps(written))
        with pytest.raises(RunDirError, match=r"its seed 1 is one of experiment.json's seeds, but this run "
                           r"directory's results.json does not name it.*rerun `w2v2ser train` with every seed"):
            predict_audio(run, audio_files, run="split__seed1")


def test_folders_a_killed_training_left_behind_are_not_runs(
        trained: Path, audio_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run being replaced is renamed to .<run>.old-PID, then deleted; one being written is
    .<run>.tmp-PID. A kill can leave either, whole. Before, predict took them for runs (here seed 0
    counted twice in the ensemble) and the report counted them."""
    import shutil

    from w2v2ser.evaluate._rundir import current_runs

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = predict_audio(run, audio_files)
    shutil.copytree(run / "runs" / "split__seed0", run / "runs" / ".split__seed0.old-999")
    shutil.copytree(run / "runs" / "split__seed1", run / "runs" / ".split__seed1.tmp-998")
    experiment = json.loads((run / "experiment.json").read_text())
    assert [p.name for p in current_runs(run, experiment)] == ["split__seed0", "split__seed1"]
    assert [p.probabilities for p in predict_audio(run, audio_files)] == [p.probabilities for p in before]
    (run / "results.json").unlink()
    write_report([run], out=tmp_path / "report")
    assert json.loads((tmp_path / "report" / "report.json").read_text())["runs"][0]["runs_finished"] == 2


def test_predict_process_never_imports_torch(trained: Path, audio_files: list[Path], tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        "sys.path.insert(0, %r)\n"
        "from test_predict import fake_extract\n"
        "from w2v2ser.evaluate import _predict, predict_audio\n"
        "_predict.extract_features = fake_extract\n"
        "preds = predict_audio(%r, %r)\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'ok': sum(p.ok for p in preds)}))\n"
    ) % (str(Path(__file__).parent), str(trained), [str(p) for p in audio_files])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"torch": False, "ok": 3}


@pytest.mark.slow
def test_predict_end_to_end_with_real_extraction_subprocess(tmp_path: Path) -> None:
    """Stage 1 CLI builds the training store, train fits a head, predict re-extracts with --like."""
    import soundfile

    from w2v2ser.train import ExperimentConfig, train_experiment

    rng = np.random.default_rng(0)

    def tone(path: Path, freq: float, seconds: float = 0.8) -> Path:
        t = np.arange(int(seconds * 16000)) / 16000
        soundfile.write(path, (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size))
                        .astype(np.float32), 16000)
        return path

    audio = tmp_path / "audio"
    audio.mkdir()
    rows = []
    splits = {"s1": "train", "s2": "train", "s3": "validation", "s4": "test"}
    for speaker, split in splits.items():
        for label, freq in (("low", 220.0), ("high", 1760.0)):
            for k in range(2):
                path = tone(audio / f"{speaker}_{label}_{k}.wav", freq * (1 + 0.05 * k))
                rows.append([str(path), label, speaker, split])
    manifest = tmp_path / "train.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label", "speaker", "split"], *rows])
    store = tmp_path / "train.zarr"
    subprocess.run([sys.executable, "-m", "w2v2ser", "extract", "csv", str(manifest), "--store", str(store),
                    "--features", "spectrogram", "--no-progress"], check=True, capture_output=True)
    config = ExperimentConfig(stores={"main": str(store)}, features="spectrogram", head="dense", norm="global",
                              protocol="csv", seeds=1, recipe="official", recipe_overrides={"max_epochs": 2},
                              workers=1)
    train_experiment(config, out=tmp_path / "run", progress=False, threads=1)

    new = [tone(tmp_path / "new_low.wav", 230.0), tone(tmp_path / "new_high.wav", 1700.0)]
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_text("not audio")
    preds = predict_audio(tmp_path / "run", [*new, corrupt])
    for p in preds[:2]:
        _check(p, ["high", "low"])
    assert not preds[2].ok and preds[2].error
    # The two new files back to back, labelled in windows of 0.8 s: each window is labelled as its
    # file is alone (a window is extracted as a file of its own samples).
    both = tmp_path / "both.wav"
    soundfile.write(both, np.concatenate([soundfile.read(f, dtype="float32")[0] for f in new]), 16000)
    windows = predict_audio(tmp_path / "run", both, segment=0.8)
    assert [(w.start, w.end) for w in windows] == [(0.0, 0.8), (0.8, 1.6)]
    for window, alone in zip(windows, preds[:2]):
        assert window.probabilities == pytest.approx(alone.probabilities, abs=1e-6)
    # The run dir alone is enough: stage 1 extracts `--like RUN_DIR` with the settings it records.
    store.rename(tmp_path / "elsewhere.zarr")
    alone = predict_audio(tmp_path / "run", new)
    assert [p.probabilities for p in alone] == [p.probabilities for p in preds[:2]]


def _failing_extract(failures_of: Callable[[list[dict[str, str]]], dict[int, str]]) -> Callable[..., None]:
    """A stand-in for stage 1 that records the failures ``failures_of(manifest rows)`` gives
    (position -> reason) and extracts nothing else."""
    def extract(manifest: Path, store: Path, *, like: Path, features: list[str], model: str | None = None,
                options: Sequence[str] = ()) -> None:
        with open(manifest, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        specs = [features_like(like)[0][name] for name in features]
        utterances = [Utterance(id=r["id"], path=r["path"], speaker=r["speaker"], label=r["label"], corpus="csv")
                      for r in rows]
        writer = StoreWriter(store)
        writer.plan(utterances, num_samples=[None] * len(rows), features=specs,
                    capacities={s.name: [1] * len(rows) for s in specs}, failures=failures_of(rows))
        writer.finalize()

    return extract


def test_a_file_over_max_seconds_is_told_to_use_segment(
        trained: Path, audio_files: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 1's reason for a file over max_seconds advises an --option rerun, which predict has
    not: predict names --segment instead, and keeps the length and the limit."""
    from types import SimpleNamespace

    from w2v2ser.extract import _shard

    long_file = audio_files[0]
    extractor = SimpleNamespace(name="wav2vec2", config=SimpleNamespace(max_seconds=120.0))
    item, audio = SimpleNamespace(index=0, path=long_file, skip=()), SimpleNamespace(num_samples=200 * 16000)
    monkeypatch.setattr(_shard, "run_extractor", lambda extractor, audios: [])
    (_, _, stage1_reason), = _shard._features_of(extractor, [(item, audio, "")])[1]

    monkeypatch.setattr(_predict, "extract_features", _failing_extract(lambda rows: {0: stage1_reason}))
    (prediction,) = predict_audio(trained, [long_file])
    assert f"{long_file} is 200.0 s long, over wav2vec2.max_seconds=120" in prediction.error
    assert "--segment" in prediction.error and "--option" not in prediction.error


def test_predict_passes_a_moved_model_to_stage_1_only_for_a_speech_encoder(
        trained: Path, audio_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--model (model=) reaches the extraction of the run's speech-encoder feature; a run that reads
    no speech encoder refuses it rather than ignoring it."""
    import argparse

    from w2v2ser.evaluate._cli import add_predict_arguments, predict_from_cli
    from w2v2ser.train import ExperimentConfig, train_experiment

    seen = []

    def extract(manifest: Path, store: Path, *, like: Path, features: list[str], model: str | None = None,
                options: Sequence[str] = ()) -> None:
        seen.append((tuple(features), model))
        fake_extract(manifest, store, like=like, features=features)

    monkeypatch.setattr(_predict, "extract_features", extract)
    preds = predict_audio(trained, audio_files[:2], model=tmp_path / "moved-model")
    assert all(p.ok for p in preds) and seen == [(("wav2vec2",), str(tmp_path / "moved-model"))]
    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    assert predict_from_cli(parser.parse_args([str(trained), str(audio_files[0]), "--model", "elsewhere"])) == 0
    assert seen[-1] == (("wav2vec2",), "elsewhere")

    store = build_store(tmp_path / "egemaps.zarr", features=("egemaps",))
    config = ExperimentConfig(stores={"main": str(store)}, features="egemaps", head="dense", norm="global",
                              protocol="ravdess", recipe="official", seeds=1, recipe_overrides={"max_epochs": 1},
                              workers=1)
    train_experiment(config, out=tmp_path / "egemaps-run", progress=False, threads=1)
    with pytest.raises(PredictError, match=r"reads no speech-encoder features \(egemaps\); drop the model"):
        predict_audio(tmp_path / "egemaps-run", audio_files[:1], model="elsewhere")


def test_new_audio_takes_the_rate_of_the_training_audio_for_native_features(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A run trained on native-rate eGeMAPS of 16 kHz audio asks stage 1 for eGeMAPS at 16 kHz:
    before, a 48 kHz file got eGeMAPS at 48 kHz (on RAVDESS actor 24, 8 of 12 labels changed
    for a 48 kHz copy of the same audio). The files resampled are named; a store of mixed rates,
    or a feature at a fixed rate, gets no option."""
    import argparse
    from dataclasses import replace

    from stage2_fixtures import ravdess_utterances
    from w2v2ser.evaluate._cli import add_predict_arguments, predict_from_cli
    from w2v2ser.train import ExperimentConfig, train_experiment

    utterances = [replace(u, extra={**u.extra, AUDIO_RATE_KEY: 16_000}) for u in ravdess_utterances(per_actor=2)]
    store = build_store(tmp_path / "egemaps.zarr", utterances=utterances, features=("egemaps", "spectrogram"),
                        feature_configs={"egemaps": {"sample_rate": "native"}, "spectrogram": {"sample_rate": 16000}})
    config = ExperimentConfig(stores={"main": str(store)}, features="egemaps", head="dense", norm="global",
                              protocol="ravdess", recipe="official", seeds=1, recipe_overrides={"max_epochs": 1},
                              workers=1)
    train_experiment(config, out=tmp_path / "run", progress=False, threads=1)
    seen = []

    def extract(manifest: Path, store: Path, *, like: Path, features: list[str], model: str | None = None,
                options: Sequence[str] = ()) -> None:
        seen.append(list(options))
        fake_extract(manifest, store, like=like, features=features)

    monkeypatch.setattr(_predict, "extract_features", extract)
    files = [tmp_path / "a.wav", tmp_path / "b_48k.wav"]
    for file in files:
        file.write_bytes(b"RIFF")
    preds = predict_audio(tmp_path / "run", files)
    assert seen == [["egemaps.sample_rate=16000"]]
    assert [p.resampled_to for p in preds] == [None, 16_000]
    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    assert predict_from_cli(parser.parse_args([str(tmp_path / "run"), *map(str, files), "--json"])) == 0
    out = capsys.readouterr()
    assert [p["resampled_to"] for p in json.loads(out.out)] == [None, 16_000]
    assert "1 of 2 files were resampled to 16000 Hz, the rate of all the run's training audio" in out.err
    assert str(files[1]) in out.err

    # Found by a predict trial: with --segment the note said "files" and named the file once per window.
    import soundfile

    def windows_at_48k(manifest: Path, store: Path, *, like: Path, features: list[str], model: str | None = None,
                       options: Sequence[str] = ()) -> None:
        text = manifest.read_text(encoding="utf-8").replace(".wav,", "_48k.wav,")  # the fake reads rates from names
        renamed = manifest.with_name("renamed.csv")
        renamed.write_text(text, encoding="utf-8")
        fake_extract(renamed, store, like=like, features=features)

    monkeypatch.setattr(_predict, "extract_features", windows_at_48k)
    recording = tmp_path / "recording.wav"
    soundfile.write(recording, np.zeros(48_000 * 3, np.float32), 48_000)
    assert predict_from_cli(parser.parse_args([str(tmp_path / "run"), str(recording), "--segment", "1"])) == 0
    err = capsys.readouterr().err
    assert "3 of 3 windows were resampled to 16000 Hz" in err and err.count(str(recording)) == 1
    monkeypatch.setattr(_predict, "extract_features", extract)

    mixed = [replace(u, extra={**u.extra, AUDIO_RATE_KEY: 16_000 if k % 2 else 44_100})
             for k, u in enumerate(utterances)]
    store = build_store(tmp_path / "mixed.zarr", utterances=mixed, features=("egemaps",),
                        feature_configs={"egemaps": {"sample_rate": "native"}})
    train_experiment(replace(config, stores={"main": str(store)}), out=tmp_path / "mixed-run", progress=False,
                     threads=1)
    train_experiment(replace(config, features="spectrogram"), out=tmp_path / "fixed-run", progress=False, threads=1)
    seen.clear()
    assert all(p.resampled_to is None for p in predict_audio(tmp_path / "mixed-run", files))
    assert all(p.resampled_to is None for p in predict_audio(tmp_path / "fixed-run", files))
    assert seen == [[], []]


def _write_low_high_manifest(folder: Path, *, samples: int) -> Path:
    """folder/train.csv: classes 'low' and 'high', one noise WAV of ``samples`` at 16 kHz per class
    for speakers s1 and s2 (train), s3 (validation) and s4 (test)."""
    import soundfile

    rng = np.random.default_rng(0)
    rows = [["path", "label", "speaker", "split"]]
    for speaker, split in {"s1": "train", "s2": "train", "s3": "validation", "s4": "test"}.items():
        for label in ("low", "high"):
            path = folder / f"{speaker}_{label}.wav"
            soundfile.write(path, (0.1 * rng.standard_normal(samples)).astype(np.float32), 16000)
            rows.append([str(path), label, speaker, split])
    manifest = folder / "train.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return manifest


@pytest.mark.slow
def test_predict_finds_a_moved_speech_encoder_with_model(tmp_path: Path) -> None:
    """The training store records where its (local) speech encoder was; once moved, predict names
    --model, and with it extracts the new files from the same weights (stage 1 checks their sha256)."""
    import shutil

    from tiny_models import save_tiny_wav2vec2
    from w2v2ser.train import ExperimentConfig, train_experiment

    manifest = _write_low_high_manifest(tmp_path, samples=12000)
    model = save_tiny_wav2vec2(tmp_path / "model")
    store = tmp_path / "train.zarr"
    subprocess.run([sys.executable, "-m", "w2v2ser", "extract", "csv", str(manifest), "--store", str(store),
                    "--features", "wav2vec2", "--model", str(model), "--no-progress"], check=True, capture_output=True)
    config = ExperimentConfig(stores={"main": str(store)}, features="wav2vec2:all", head="dense", norm="global",
                              protocol="csv", seeds=1, recipe="official", recipe_overrides={"max_epochs": 1},
                              workers=1)
    train_experiment(config, out=tmp_path / "run", progress=False, threads=1)
    moved = shutil.move(model, tmp_path / "moved")
    new = [tmp_path / "s1_low.wav"]
    with pytest.raises(PredictError, match=r"pass their new location: w2v2ser predict --model PATH") as lost:
        predict_audio(tmp_path / "run", new)
    # A predict trial (s67): the message called the run dir "the training store".
    assert f"with the settings of run dir {tmp_path / 'run'}: " in str(lost.value)
    (pred,) = predict_audio(tmp_path / "run", new, model=moved)
    _check(pred, ["high", "low"])
    # Found by a predict trial: stage 1's refusal came as three lines, telling a predict user to
    # "drop --like" (predict has none) and to check that the training store exists.
    other = save_tiny_wav2vec2(tmp_path / "other", seed=5)
    with pytest.raises(PredictError) as refused:
        predict_audio(tmp_path / "run", new, model=other)
    message = str(refused.value)
    assert "model {!r} holds other weights than the store's".format(str(other)) in message
    assert message.endswith("pass the model the store was made with.")
    assert "\n" not in message and "drop --like" not in message and "Check that" not in message


def test_predict_cli_json(trained: Path, audio_files: list[Path], monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from w2v2ser.evaluate._cli import add_predict_arguments, predict_from_cli

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    args = parser.parse_args([str(trained), *map(str, audio_files), "--json", "--run", "split__seed1"])
    assert predict_from_cli(args) == 1  # bad.wav failed
    out = json.loads(capsys.readouterr().out)
    assert [Path(o["path"]).name for o in out] == ["a.wav", "b.wav", "bad.wav", "c.wav"]
    assert out[2]["error"] and out[0]["emotion"] in out[0]["probabilities"]
    # The run crops at 40 frames = 0.8 s; the fake files last 0.6, 0.8, (bad) and 1.2 s. The
    # 1.2 s file was labelled from its first 0.8 s: JSON says so, and one note on stderr names it.
    assert [(o["seconds"], o["seconds_used"]) for o in out] == [
        (pytest.approx(0.6), pytest.approx(0.6)), (pytest.approx(0.8), pytest.approx(0.8)), (None, None),
        (pytest.approx(1.2), pytest.approx(0.8))]
    args = parser.parse_args([str(trained), *map(str, audio_files)])
    assert predict_from_cli(args) == 1
    err = capsys.readouterr().err
    note = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and "1 of 4 files are longer than the first 0.8 s" in note[0]
    assert "c.wav (1.2 s)" in note[0] and "a.wav" not in note[0] and "pass --segment" in note[0]


@pytest.mark.parametrize("rate", [16_000, 44_100])
@pytest.mark.parametrize("seconds", [0.3, 2.0, 2.1, 2.25])
def test_cut_segments_covers_the_recording_once_in_order(tmp_path: Path, rate: int, seconds: float) -> None:
    """Windows of 0.5 s, back to back, hold every sample of the recording exactly once (float WAV,
    stereo kept for stage 1 to mix); a tail under a quarter window joins the last window."""
    import soundfile

    from w2v2ser.evaluate._segments import cut_segments

    audio = np.random.default_rng(1).uniform(-1, 1, (round(seconds * rate), 2)).astype(np.float32)
    source = tmp_path / "long.flac"
    soundfile.write(source, audio, rate, subtype="PCM_24")
    decoded = soundfile.read(source, dtype="float32")[0]
    windows = cut_segments(source, 0.5, tmp_path / "windows")
    expected = {0.3: [0.3], 2.0: [0.5, 0.5, 0.5, 0.5], 2.1: [0.5, 0.5, 0.5, 0.6], 2.25: [0.5, 0.5, 0.5, 0.5, 0.25]}
    assert [round(w.end - w.start, 3) for w in windows] == expected[seconds]
    assert windows[0].start == 0 and windows[-1].end == pytest.approx(seconds, abs=1 / rate)
    assert all(a.end == b.start for a, b in zip(windows, windows[1:]))
    if len(windows) == 1:
        assert windows[0].path == source  # nothing to cut: the recording itself
        return
    pieces = [soundfile.read(w.path, dtype="float32") for w in windows]
    assert {r for _, r in pieces} == {rate}
    np.testing.assert_array_equal(np.concatenate([x for x, _ in pieces]), decoded)


@pytest.mark.parametrize("seconds", [2.0, 2.1, 2.25])
def test_windows_of_the_crop_are_never_longer_than_the_crop(tmp_path: Path, seconds: float) -> None:
    """Found by a documentation audit: with --segment and no value (windows of the crop), a short
    tail joined the last window, which then ran past the crop, so its end went unseen and the note
    advised passing --segment without a value, as had been done. A last whole window ends the
    recording instead, overlapping the one before it."""
    import soundfile

    from w2v2ser.evaluate._segments import cut_segments

    rate = 16_000
    audio = np.random.default_rng(2).uniform(-1, 1, round(seconds * rate)).astype(np.float32)
    source = tmp_path / "long.wav"
    soundfile.write(source, audio, rate, subtype="FLOAT")
    windows = cut_segments(source, 0.5, tmp_path / "windows", within=True)
    expected = {2.0: [0.5] * 4, 2.1: [0.5] * 5, 2.25: [0.5] * 4 + [0.25]}
    assert [round(w.end - w.start, 3) for w in windows] == expected[seconds]
    assert windows[-1].end == pytest.approx(seconds, abs=1 / rate)
    for w in windows:  # each window holds the recording's samples of its span
        first = round(w.start * rate)
        np.testing.assert_array_equal(soundfile.read(w.path, dtype="float32")[0], audio[first:first + round(
            (w.end - w.start) * rate)])


@pytest.mark.parametrize("within", [False, True])
def test_a_recording_libsndfile_cannot_seek_is_cut_into_windows(trained: Path, tmp_path: Path, within: bool,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a code review: GSM 6.10 WAV (telephone calls) opens as not seekable, cutting it
    called seek()/tell(), which raised, and predict --segment 1 quietly gave one whole-file row.
    Its windows hold the samples of their span, the overlapping last one (within) included."""
    import soundfile

    from w2v2ser.evaluate._segments import cut_segments

    if "GSM610" not in soundfile.available_subtypes("WAV"):
        pytest.skip("libsndfile here cannot write GSM 6.10")
    rate = 8000
    call = tmp_path / "call.wav"
    tone = 0.3 * np.sin(2 * np.pi * 500 * np.arange(round(3.2 * rate)) / rate)  # whole GSM frames of 160
    soundfile.write(call, tone, rate, subtype="GSM610")
    with soundfile.SoundFile(call) as handle:
        assert not handle.seekable()
        decoded = handle.read(handle.frames, dtype="float32")
    windows = cut_segments(call, 1.0, tmp_path / "windows", within=within)
    assert [(w.start, round(w.end, 3)) for w in windows] == (
        [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (2.2, 3.2)] if within else [(0.0, 1.0), (1.0, 2.0), (2.0, 3.2)])
    for w in windows:
        first = round(w.start * rate)
        np.testing.assert_array_equal(soundfile.read(w.path, dtype="float32")[0],
                                      decoded[first:first + round((w.end - w.start) * rate)])
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    preds = predict_audio(trained, [call], segment=1.0)
    assert [(p.start, p.end) for p in preds] == [(0.0, 1.0), (1.0, 2.0), (2.0, pytest.approx(3.2))]


@pytest.mark.parametrize("suffix", [".wav", ".mp3"])
def test_a_truncated_recording_is_refused_with_segment_as_without(trained: Path, tmp_path: Path, suffix: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a long-recording trial: a 10-minute WAV cut at 6 minutes failed without --segment
    ("is truncated"), but --segment labelled its 45 windows without a word (the window WAVs are whole
    files); a cut MP3 (its header still gives the whole length) the same. Both are refused alike."""
    import soundfile

    if suffix == ".mp3" and "MP3" not in soundfile.available_formats():
        pytest.skip("libsndfile here cannot write MP3")
    full, cut = tmp_path / f"full{suffix}", tmp_path / f"cut{suffix}"
    tone = (0.3 * np.sin(2 * np.pi * 300 * np.arange(4 * 16000) / 16000)).astype(np.float32)
    soundfile.write(full, tone, 16000)
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    assert len(predict_audio(trained, [full], segment=1.0)) == 4
    preds = predict_audio(trained, [cut, full], segment=1.0)
    assert [(p.path.name, p.start) for p in preds] == [(cut.name, None)] + [(full.name, float(k)) for k in range(4)]
    assert re.search(r"cut\.(wav|mp3) is truncated: its header declares .*copy or export it again", preds[0].error)


def test_a_recording_corrupt_in_its_middle_keeps_its_windows_before(trained: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a long-recording trial: a 10-minute FLAC whose data was damaged at 5 minutes gave
    one failed row with --segment, the 37 windows before the damage lost with it. They are labelled;
    the rest is one failed row, from where decoding stopped to the end, with libsndfile's reason."""
    import soundfile

    rng = np.random.default_rng(0)
    flac = tmp_path / "interview.flac"
    soundfile.write(flac, (0.3 * rng.standard_normal(4 * 16000)).astype(np.float32), 16000)
    data = bytearray(flac.read_bytes())
    middle = slice(int(len(data) * 0.6), int(len(data) * 0.7))
    data[middle] = rng.integers(0, 256, middle.stop - middle.start, dtype=np.uint8).tobytes()
    flac.write_bytes(bytes(data))
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    preds = predict_audio(trained, [flac], segment=1.0)
    assert [(p.start, p.end, p.ok) for p in preds] == [(0.0, 1.0, True), (1.0, 2.0, True), (2.0, 4.0, False)]
    assert re.search(r"interview\.flac could not be decoded from 2\.00 s on \(libsndfile says .*lost sync", preds[2].error)


def test_segment_windows_stay_within_the_speech_encoders_max_seconds(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a long-recording trial: --segment 200 with a wav2vec2 run (max_seconds 120) failed
    every window in stage 1, each naming a deleted temp WAV and advising `w2v2ser extract --option`;
    and a short tail joined to the window before it made that one longer than max_seconds. Such a
    window is refused up front, and the tail ends a last whole window instead. (Review of 4623afd: the
    refusal said "segment=3 s" to a CLI user who typed --segment 3; it names both forms.)"""
    import soundfile

    from w2v2ser.train import ExperimentConfig, train_experiment

    store = build_store(tmp_path / "train.zarr", layers=3, dim=4, features=("wav2vec2",),
                        feature_configs={"wav2vec2": {"max_seconds": 2.0}})
    config = ExperimentConfig(stores={"main": str(store)}, features="wav2vec2:all", head="dense", norm="global",
                              protocol="ravdess", recipe="official", seeds=1, max_frames=40,
                              recipe_overrides={"max_epochs": 1}, workers=1)
    train_experiment(config, out=tmp_path / "run", progress=False, threads=1)
    recording = tmp_path / "interview.wav"
    soundfile.write(recording, np.zeros(round(3.9 * 16000), np.float32), 16000)
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    with pytest.raises(PredictError, match=r"^--segment 3 \(segment=3\): windows must be at most 2 s, the max_seconds"):
        predict_audio(tmp_path / "run", [recording], segment=3.0)
    preds = predict_audio(tmp_path / "run", [recording], segment=1.8)  # a 0.3 s tail: 1.8 + 0.3 > 2
    assert [(p.start, round(p.end, 3)) for p in preds] == [(0.0, 1.8), (1.8, 3.6), (2.1, 3.9)]


def test_a_failed_window_is_named_by_its_recording_and_span(trained: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a long-recording trial: a window that stage 1 refused (NaN samples at 20 s of a
    float WAV) was reported as "Audio file /tmp/w2v2ser-predict-.../segments/00000/00002.wav has 1
    samples that are not finite": a temp file deleted by then, not the recording and where in it."""
    import soundfile

    recording = tmp_path / "interview.wav"
    soundfile.write(recording, np.zeros(3 * 16000, np.float32), 16000, subtype="FLOAT")
    # Stage 1 refuses every window, naming the file it read.
    monkeypatch.setattr(_predict, "extract_features", _failing_extract(lambda rows: {
        k: f"Audio file {r['path']} has 1 samples that are not finite (NaN or Inf)" for k, r in enumerate(rows)}))
    preds = predict_audio(trained, [recording], segment=1.0)
    assert [p.error for p in preds] == [f"Audio file {recording} (window {k}.00-{k + 1}.00 s) has 1 samples that are "
                                        f"not finite (NaN or Inf)" for k in range(3)]


def test_a_window_shorter_than_any_audio_w2v2ser_takes_is_refused_up_front(trained: Path, audio_files: list[Path],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a predict trial: --segment 0.02 on a 3.8 s file printed 190 FAILED lines naming
    deleted temp files and telling the user to remove them from a manifest."""
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    with pytest.raises(PredictError, match=r"^--segment 0.02 \(segment=0.02\): windows must be at least 0.025 s"):
        predict_audio(trained, audio_files[:1], segment=0.02)


def test_predict_labels_long_recordings_window_by_window(trained: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """segment="crop" cuts each recording into windows of what the run's models see (40 frames at
    50 Hz = 0.8 s) and labels each; an undecodable file is reported once, as without segment."""
    import argparse

    import soundfile

    from w2v2ser.evaluate import predict_manifest
    from w2v2ser.evaluate._cli import add_predict_arguments, predict_from_cli

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    classes = json.loads((trained / "results.json").read_text())["classes"]
    long, short, bad = tmp_path / "long.wav", tmp_path / "short.wav", tmp_path / "bad.wav"
    soundfile.write(long, np.zeros(int(2.1 * 16000), np.float32), 16000)  # 0.8 + 0.8 + 0.5 s
    soundfile.write(short, np.zeros(8000, np.float32), 16000)
    bad.write_bytes(b"RIFF")
    preds = predict_audio(trained, [long, bad, short], segment="crop", speakers="rec1")
    assert [(p.path.name, p.start, p.end) for p in preds] == [
        ("long.wav", 0.0, 0.8), ("long.wav", 0.8, 1.6), ("long.wav", 1.6, pytest.approx(2.1)),
        ("bad.wav", None, None), ("short.wav", 0.0, 0.5)]
    for p in preds[:3] + preds[4:]:
        _check(p, classes)
    assert "cannot decode" in preds[3].error
    # The recording's windows are its speaker group's files: 4 windows, enough for its own statistics.
    assert {p.normalisation for p in preds if p.ok} == {"speaker group"}
    assert predict_audio(trained, [long], segment=5)[0].end == pytest.approx(2.1)  # one window: itself

    for wrong in (0, -1.0, float("nan"), "5", True, "all"):
        with pytest.raises(PredictError, match="predict_audio.segment"):
            predict_audio(trained, [long], segment=wrong)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label,speaker\n{long},neutral,rec1\n")
    with pytest.raises(PredictError, match="labels are per file"):
        predict_manifest(trained, manifest, segment=2.0)

    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    assert predict_from_cli(parser.parse_args([str(trained), str(long), "--segment"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [[str(long), "0.00-0.80"], [str(long), "0.80-1.60"],
                                                       [str(long), "1.60-2.10"]]
    assert predict_from_cli(parser.parse_args([str(trained), str(long), "--segment", "1.5", "--json"])) == 0
    out = capsys.readouterr()
    assert [(o["start"], o["end"]) for o in json.loads(out.out)] == [(0.0, 1.5), (1.5, pytest.approx(2.1))]
    with pytest.raises(SystemExit):
        parser.parse_args([str(trained), str(long), "--segment", "0"])
    assert "expected seconds > 0 (or crop), got '0'\n" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args([str(trained), "--segment", str(long)])
    assert f"got '{long}'; put the audio paths before --segment, or give it a value" in capsys.readouterr().err


def test_a_moved_store_is_taken_when_its_spec_records_a_config_key_the_run_does_not(
        trained: Path, audio_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s62: --store compared whole specs, so a config key one side records (a newer w2v2ser's)
    or another description refused the store that --from-store takes (_differs: keys both record)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    experiment = json.loads((run / "experiment.json").read_text())
    moved = shutil.copytree(experiment["stores"]["main"], tmp_path / "moved.zarr")
    experiment["stores"]["main"] = str(tmp_path / "gone.zarr")
    spec = experiment["stores_identity"]["main"]["features"]["wav2vec2"]
    spec["config"] = {k: v for k, v in spec["config"].items() if k != "model"} | {"older_key": 1}
    spec["description"] = "written by an older w2v2ser"
    (run / "experiment.json").write_text(json.dumps(experiment))
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    assert [p.emotion for p in predict_audio(run, audio_files, stores={None: moved})] == \
        [p.emotion for p in predict_audio(trained, audio_files)]
    spec["dim"] = 5
    (run / "experiment.json").write_text(json.dumps(experiment))
    with pytest.raises(PredictError, match=r"other settings \(dim: 4, not 5\)"):
        predict_audio(run, audio_files, stores={None: moved})


def test_a_moved_training_store_is_given_with_store(trained: Path, audio_files: list[Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A run dir whose training store has moved predicts with ``stores=`` (``--store [ALIAS=]PATH``),
    which must be that same store: same feature settings and same utterances."""
    import argparse
    import dataclasses
    import shutil

    from stage2_fixtures import ravdess_utterances
    from w2v2ser.evaluate._cli import add_predict_arguments

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    experiment = json.loads((run / "experiment.json").read_text())
    moved = shutil.copytree(experiment["stores"]["main"], tmp_path / "moved.zarr")
    experiment["stores"]["main"] = str(tmp_path / "gone.zarr")  # where training read it
    (run / "experiment.json").write_text(json.dumps(experiment))
    monkeypatch.setattr(_predict, "extract_features", fake_extract)

    preds = predict_audio(run, audio_files, stores={None: moved})
    _check(preds[0], json.loads((run / "results.json").read_text())["classes"])
    assert [p.emotion for p in preds] == [p.emotion for p in predict_audio(trained, audio_files)]
    with pytest.raises(PredictError, match=r"alias 'mian', but run dir .* reads main\. Did you mean 'main'\?"):
        predict_audio(run, audio_files, stores={"mian": moved})
    rows = ravdess_utterances()
    relabelled = [dataclasses.replace(rows[0], label=rows[1].label if rows[1].label != rows[0].label
                                      else rows[-1].label), *rows[1:]]
    assert relabelled[0].label != rows[0].label
    other = build_store(tmp_path / "other.zarr", layers=3, dim=4, features=("wav2vec2",), utterances=relabelled)
    with pytest.raises(PredictError, match=r"hold other utterances than run dir"):
        predict_audio(run, audio_files, stores={None: other})
    wider = build_store(tmp_path / "wider.zarr", layers=3, dim=5, features=("wav2vec2",))
    with pytest.raises(PredictError, match=r"holds 'wav2vec2' with other settings \(dim: 5, not 4\) than run dir"):
        predict_audio(run, audio_files, stores={"main": wider})
    # Found by a predict trial: the message printed the trained config as JSON cut at 300 characters
    # (mid-word) and never named the setting that differed.
    finetuned = build_store(tmp_path / "finetuned.zarr", layers=3, dim=4, features=("wav2vec2",),
                            config_tag="finetuned")
    with pytest.raises(PredictError, match=r"holds 'wav2vec2' with other settings \(model: 'finetuned', not "
                                           r"'pretrained'\) than run dir .*Pass the store the run was trained on"):
        predict_audio(run, audio_files, stores={"main": finetuned})
    lacking = build_store(tmp_path / "lacking.zarr", layers=3, dim=4, features=("egemaps",))
    with pytest.raises(PredictError, match=r"holds egemaps, not 'wav2vec2', which run dir .* was trained on"):
        predict_audio(run, audio_files, stores={"main": lacking})

    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    args = parser.parse_args([str(run), "a.wav", "--store", "main=/x.zarr", "--store", "s3://b/p?v=1"])
    from w2v2ser.evaluate._cli import _parse_stores
    assert _parse_stores(args.stores) == {"main": "/x.zarr", None: "s3://b/p?v=1"}


def test_a_moved_store_needs_only_the_features_the_run_reads(trained: Path, audio_files: list[Path],
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run records every feature of its training store (experiment.json's stores_identity); --store
    required them all, and refused a store of the run's own feature alone as not holding one the run
    "was trained on": a spectrogram run, moved to a copy without the store's eGeMAPS."""
    from stage2_fixtures import feature_specs

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    experiment = json.loads((run / "experiment.json").read_text())
    moved = shutil.copytree(experiment["stores"]["main"], tmp_path / "moved.zarr")
    experiment["stores"]["main"] = str(tmp_path / "gone.zarr")
    # As training on a store that also held eGeMAPS records it: the run reads wav2vec2 only.
    experiment["stores_identity"]["main"]["features"]["egemaps"] = feature_specs(features=("egemaps",))[0].to_dict()
    (run / "experiment.json").write_text(json.dumps(experiment))
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    assert [p.emotion for p in predict_audio(run, audio_files, stores={None: moved})] == \
        [p.emotion for p in predict_audio(trained, audio_files)]


def _as_older_run(run: Path) -> None:
    """Make a run dir look trained before experiment.json recorded the audio rates (and before
    normalisation.npz held a speaker-normalised run's global statistics): predict needs its store."""
    experiment = json.loads((run / "experiment.json").read_text())
    for entry in experiment["stores_identity"].values():
        del entry["audio_rates"]
    (run / "experiment.json").write_text(json.dumps(experiment))


def test_a_missing_training_store_names_the_store_option(trained: Path, audio_files: list[Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    _as_older_run(run)
    experiment = json.loads((run / "experiment.json").read_text())
    experiment["stores"]["main"] = str(tmp_path / "gone.zarr")  # moved away since training
    (run / "experiment.json").write_text(json.dumps(experiment))
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    with pytest.raises(PredictError, match=r"If the training store has moved, pass its new location: "
                                           r"w2v2ser predict --store PATH"):
        predict_audio(run, audio_files)


def test_a_reused_work_dir_never_labels_new_files_with_old_features(trained: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``work_dir`` reused across calls: each call extracts into its own new folder (the second call
    resumed into the first call's store, whose positional ids held the old files, and returned the
    old files' labels for the new ones)."""
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    first, second = tmp_path / "first.wav", tmp_path / "second.wav"
    for f in (first, second):
        f.write_bytes(b"RIFF")
    work = tmp_path / "work"
    predict_audio(trained, [first], work_dir=work)
    predict_audio(trained, [second], work_dir=work)
    manifests = sorted((p / "manifest.csv").read_text() for p in work.glob("predict-*"))
    assert len(manifests) == 2 and any(str(first) in m for m in manifests) and any(str(second) in m for m in manifests)
    stored = {r.path for p in work.glob("predict-*") for r in open_store(p / "features0.zarr").list_utterances()}
    assert stored == {str(first.resolve()), str(second.resolve())}


def test_extraction_refusing_its_input_raises_even_when_a_store_is_left(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "t.zarr").mkdir()
    (tmp_path / "t.zarr" / "zarr.json").write_text("{}")  # a store from before, complete or not

    def refused(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 2, "", "w2v2ser: error: plan: utterance 'predict00000' is already "
                                                        "in store t.zarr with path 'old.wav'")

    monkeypatch.setattr(_extraction.subprocess, "run", refused)
    with pytest.raises(PredictError, match=r"stage 1 could not extract .*: plan: utterance .* already in store"):
        _extraction.extract_features(tmp_path / "m.csv", tmp_path / "t.zarr", like=tmp_path / "s.zarr",
                                  features=["egemaps"])


def test_stage_1_stopped_by_a_full_temporary_disk_is_the_reason_given(trained: Path, audio_files: list[Path],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 1 ran out of space in TMPDIR (exit 1, its store left unfinished): every file was reported
    "not extracted (no reason recorded)", not the full disk, nor how to put the temporary store elsewhere."""
    import errno
    import os

    from w2v2ser.store import StoreFullError
    from w2v2ser.store._units import UnitWriter

    def full_disk(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        store = Path(command[command.index("--store") + 1])
        real, packed = UnitWriter._pack, []

        def pack(self: UnitWriter, *args: object, **kw: object) -> None:
            if packed:  # the second utterance meets a full disk
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(store / "features"))
            packed.append(1)
            real(self, *args, **kw)

        with monkeypatch.context() as patch:
            patch.setattr(UnitWriter, "_pack", pack)
            with pytest.raises(StoreFullError) as raised:
                fake_extract(Path(command[command.index("csv") + 1]), store,
                             like=Path(command[command.index("--like") + 1]),
                             features=command[command.index("--features") + 1].split(","))
        return subprocess.CompletedProcess(command, 1, "", f"w2v2ser: error: {raised.value}\n")

    monkeypatch.setattr(_extraction.subprocess, "run", full_disk)
    preds = predict_audio(trained, audio_files[:2])
    for pred in preds:
        assert pred.emotion is None and "no reason recorded" not in pred.error, pred.error
        assert os.strerror(errno.ENOSPC) in pred.error and "TMPDIR" in pred.error and "--work-dir" in pred.error
        # (lim trial: it also said extract's "extraction resumes where it stopped"; predict starts over)
        assert "resumes" not in pred.error and "committed so far are kept" not in pred.error, pred.error


def test_stage_1_stopped_by_a_memory_limit_is_said_in_predicts_terms(trained: Path, audio_files: list[Path],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`prlimit --as=2G w2v2ser predict RUN long.wav --segment`: every window's reason was extract's advice,
    options predict has not (--batch-seconds, --decode-workers, --threads) and "finished work is kept";
    under a lower limit stage 1 died before its store and predict said exit 2 (bad input), "pass --model"."""
    from w2v2ser._common import describe_error
    from w2v2ser.store._units import UnitWriter

    def out_of_memory(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        store = Path(command[command.index("--store") + 1])
        real, packed = UnitWriter._pack, []

        def pack(self: UnitWriter, *args: object, **kw: object) -> None:
            if packed:  # the second utterance meets the limit
                raise MemoryError
            packed.append(1)
            real(self, *args, **kw)

        with monkeypatch.context() as patch:
            patch.setattr(UnitWriter, "_pack", pack)
            with pytest.raises(MemoryError) as raised:
                fake_extract(Path(command[command.index("csv") + 1]), store,
                             like=Path(command[command.index("--like") + 1]),
                             features=command[command.index("--features") + 1].split(","))
        return subprocess.CompletedProcess(command, 1, "", f"w2v2ser: error: {describe_error(raised.value)[0]}\n")

    monkeypatch.setattr(_extraction.subprocess, "run", out_of_memory)
    failed = [pred for pred in predict_audio(trained, audio_files[:3]) if pred.error]
    assert failed
    for pred in failed:
        assert "out of memory" in pred.error and "predict starts over" in pred.error, pred.error
        assert "--batch-seconds" not in pred.error and "finished work is kept" not in pred.error, pred.error

    def died(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        from w2v2ser._native_logs import _ABRUPT, _RESUMES

        return subprocess.CompletedProcess(command, 134, "", (_ABRUPT + _RESUMES.encode()).decode() + "\n")

    monkeypatch.setattr(_extraction.subprocess, "run", died)
    with pytest.raises(PredictError) as raised:
        predict_audio(trained, audio_files[:1])
    assert raised.value.exit_code == 1 and "predict starts over" in str(raised.value), raised.value
    assert "--model" not in str(raised.value) and "finished work is kept" not in str(raised.value)


@pytest.mark.parametrize("wording", ["store", "path", "file size limit"])
def test_stage_1_that_found_the_work_folder_full_before_its_store_says_so_in_predicts_terms(
        trained: Path, audio_files: list[Path], monkeypatch: pytest.MonkeyPatch, wording: str) -> None:
    """lim trial: `predict RUN f.flac --work-dir full_tmpfs/wd` exited 2 (bad input) with extract's "extraction
    resumes where it stopped" and "pass --model" (an eGeMAPS run has no model) when stage 1 could not make its store.
    review4 #2: stage 1's line about a file it names (its lock) kept extract's advice before predict's own."""
    import errno
    import os

    from w2v2ser._common import describe_error

    code = errno.EFBIG if wording == "file size limit" else errno.ENOSPC

    def full(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        store = command[command.index("--store") + 1]
        said = (f"no space left on the device holding store {store} (No space left on device) during _create: free "
                f"disk space or raise the limit (or move the store to a larger disk) and rerun the same command; "
                f"utterances committed so far are kept and extraction resumes where it stopped." if wording == "store"
                else describe_error(OSError(code, os.strerror(code), f"{store}/.extract.lock"))[0])
        return subprocess.CompletedProcess(command, 1, "", f"w2v2ser: error: {said}\n")

    monkeypatch.setattr(_extraction.subprocess, "run", full)
    with pytest.raises(PredictError) as raised:
        predict_audio(trained, audio_files[:1])
    message = str(raised.value)
    assert raised.value.exit_code == 1 and os.strerror(code) in message and "--work-dir" in message, message
    assert "resumes" not in message and "--model" not in message, message
    # review6 #8: a per-file size limit keeps its only hint
    assert "`ulimit -f`" in message or code != errno.EFBIG, message
    # Predict's advice only, once: not extract's "finished work is kept" (predict starts over) nor its --out.
    assert "finished work is kept" not in message and "--out" not in message and message.count("rerun") == 1, message


def test_a_full_work_folder_at_the_manifest_is_one_error_naming_it(trained: Path, audio_files: list[Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """lim trial: `predict RUN f.flac --work-dir full_tmpfs/wd` said "No space left on device ... finished work
    is kept" with no path: the manifest's write raised ENOSPC without a file name."""
    import errno
    import os

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_predict, "_write_manifest", full)
    with pytest.raises(PredictError) as raised:
        predict_audio(trained, audio_files[:1], work_dir=audio_files[0].parent / "wd")
    message = str(raised.value)
    assert raised.value.exit_code == 1 and "manifest.csv: No space left on device" in message, message
    assert "--work-dir" in message and str(audio_files[0].parent / "wd") in message, message


def test_a_full_work_dir_is_predicts_own_error_naming_it(trained: Path, audio_files: list[Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`predict RUN f.flac --work-dir full/wd`: the new predict-* folder's mkdir raised ENOSPC, and
    predict_audio raised a bare OSError ("[Errno 28] ... wd/predict-x"; the command line added
    "finished work is kept", though predict keeps nothing and starts over)."""
    import errno
    import os
    import tempfile

    work_dir = audio_files[0].parent / "wd"

    def full(*args: object, dir: object = None, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(str(dir), "predict-abc"))

    monkeypatch.setattr(tempfile, "mkdtemp", full)
    with pytest.raises(PredictError) as raised:
        predict_audio(trained, audio_files[:1], work_dir=work_dir)
    message = str(raised.value)
    assert raised.value.exit_code == 1 and f"{work_dir}/predict-abc: No space left on device" in message, message
    assert f"Free space in the work folder {work_dir}, or pass another --work-dir" in message, message
    assert "finished work is kept" not in message, message


def test_an_unwritable_temporary_folder_is_named_with_how_to_choose_another(trained: Path, audio_files: list[Path],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/tmp/w2v2ser-predict-x")

    monkeypatch.setattr(_predict.tempfile, "TemporaryDirectory", refused)
    with pytest.raises(PredictError, match=r"cannot make predict's temporary folder in .*Permission denied.*TMPDIR.*"
                                           r"--work-dir"):
        predict_audio(trained, audio_files[:1])


def _train_fusion_run(tmp_path: Path) -> tuple[Path, Path]:
    """Train a one-seed fusion run into ``tmp_path/run`` from a wav2vec2 store ("main") and an
    eGeMAPS store ("fusion"); return the two stores."""
    from w2v2ser.train import ExperimentConfig, train_experiment

    main = build_store(tmp_path / "main.zarr", layers=3, dim=4, features=("wav2vec2",))
    fusion = build_store(tmp_path / "fusion.zarr", features=("egemaps",))
    config = ExperimentConfig(stores={"main": str(main), "fusion": str(fusion)}, features="wav2vec2:all",
                              head="fusion", protocol="ravdess", recipe="official", seeds=1, max_frames=40,
                              recipe_overrides={"max_epochs": 1}, workers=1)
    train_experiment(config, out=tmp_path / "run", progress=False, threads=1)
    return main, fusion


def test_a_fusion_run_whose_two_stores_moved(tmp_path: Path, audio_files: list[Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Both stores of a fusion run moved: each is given by its alias, and one left out is named."""
    import shutil

    main, fusion = _train_fusion_run(tmp_path)
    moved = {alias: str(shutil.move(path, tmp_path / f"moved-{alias}.zarr"))
             for alias, path in (("main", main), ("fusion", fusion))}
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    with pytest.raises(PredictError, match=r"reads 2 stores \(fusion, main\); give each moved one as ALIAS=PATH: "
                                           r"--store fusion=PATH --store main=PATH"):
        predict_audio(tmp_path / "run", audio_files, stores={None: moved["main"]})
    with pytest.raises(PredictError, match=r"store 'fusion' of run dir .* cannot be opened where training read it "
                                           r".*--store fusion=PATH"):
        predict_audio(tmp_path / "run", audio_files, stores={"main": moved["main"]})
    preds = predict_audio(tmp_path / "run", audio_files, stores=moved)
    assert preds[0].ok and not preds[2].ok  # bad.wav fails in the fake extraction


def test_predict_from_store_takes_a_store_per_alias_for_a_fusion_run(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`predict RUN --from-store STORE` of a fusion run (two stores) said to give
    {'fusion': PATH, 'main': PATH}, which only Python can: --from-store took one STORE."""
    import argparse

    from w2v2ser.evaluate._cli import add_predict_arguments, predict_from_cli

    main, fusion = _train_fusion_run(tmp_path)
    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    run = str(tmp_path / "run")
    with pytest.raises(PredictError, match=r"give the test store of each: --from-store fusion=PATH --from-store "
                                           r"main=PATH"):
        predict_from_cli(parser.parse_args([run, "--from-store", str(main)]))
    with pytest.raises(PredictError, match=r"--from-store is given twice for the store: "):
        predict_from_cli(parser.parse_args([run, "--from-store", str(main), "--from-store", str(fusion)]))
    with pytest.raises(PredictError, match=r"--store is given twice for store 'main': "):  # the last one won
        predict_from_cli(parser.parse_args([run, "a.wav", "--store", f"main={main}", "--store", f"main={fusion}"]))
    capsys.readouterr()
    assert predict_from_cli(parser.parse_args([run, "--from-store", f"main={main}", "--from-store",
                                               f"fusion={fusion}", "--json"])) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["score"]["uar"] is not None and len(out["predictions"]) == len(open_store(main).list_utterances())


def test_a_run_dir_alone_predicts_without_its_training_store(trained: Path, audio_files: list[Path],
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """experiment.json records each feature's settings and the rates of its audio, and
    normalisation.npz a speaker-normalised run's global statistics too, so a run dir copied to
    another machine predicts as it does beside its store (before: "the training store cannot be
    opened"). A store rebuilt at the training path with other settings changes nothing."""
    import shutil

    from w2v2ser.train import build_normaliser, load_normalisers, resolve_selection

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    expected = predict_audio(trained, audio_files)
    experiment = json.loads((trained / "experiment.json").read_text())
    training = open_store(experiment["stores"]["main"])
    assert features_like(trained)[0] == training.features
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for stores in ({"main": str(tmp_path / "gone.zarr")},
                   {"main": str(build_store(tmp_path / "rebuilt.zarr", layers=3, dim=4, features=("wav2vec2",),
                                            config_tag="finetuned"))}):
        experiment["stores"] = stores
        (run / "experiment.json").write_text(json.dumps(experiment))
        got = predict_audio(run, audio_files)
        assert [p.probabilities for p in got] == [p.probabilities for p in expected]

    # The saved fallback is the training speakers' global statistics, as composed from the store.
    model_dir = sorted((trained / "runs").iterdir())[0]
    split = json.loads((model_dir / "metrics.json").read_text())["split"]
    saved = load_normalisers(model_dir / "normalisation.npz", global_fallback=True)["main"]
    assert load_normalisers(model_dir / "normalisation.npz")["main"].mode == "speaker"
    composed = build_normaliser(training, resolve_selection("wav2vec2:all", specs=training.features, alias="main"), "global",
                                train_speakers=split["train"], speakers=[])
    np.testing.assert_allclose(saved.mean, composed.mean)
    np.testing.assert_allclose(saved.std, composed.std)


def test_an_older_run_refuses_a_store_rebuilt_with_other_settings(trained: Path, audio_files: list[Path],
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A run dir that does not record the audio rates extracts like its training store; one rebuilt
    at that path with other extractor settings gave other features without a word (on RAVDESS, a
    spectrogram store rebuilt with log=true changed all 3 predicted labels)."""
    import shutil

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    _as_older_run(run)
    experiment = json.loads((run / "experiment.json").read_text())
    experiment["stores"]["main"] = str(build_store(tmp_path / "rebuilt.zarr", layers=3, dim=4,
                                                   features=("wav2vec2",), config_tag="finetuned"))
    (run / "experiment.json").write_text(json.dumps(experiment))
    with pytest.raises(PredictError, match=r"rebuilt\.zarr now holds wav2vec2 with other settings than run dir"):
        predict_audio(run, audio_files)


def test_like_a_run_dir_of_two_stores_that_disagree_names_them(trained: Path, tmp_path: Path) -> None:
    import shutil

    from w2v2ser import ConfigError

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    experiment = json.loads((run / "experiment.json").read_text())
    other = json.loads(json.dumps(experiment["stores_identity"]["main"]))
    other["features"]["wav2vec2"]["config"]["model"] = "another"
    experiment["stores_identity"]["second"] = other
    # A fusion run that reads wav2vec2 from both stores.
    experiment.update(head="fusion", fusion_features="second/wav2vec2:all",
                      stores={**experiment["stores"], "second": other["path"]})
    (run / "experiment.json").write_text(json.dumps(experiment))
    with pytest.raises(ConfigError, match=r"read feature 'wav2vec2' from two stores with different settings "
                                          r"\('main' and 'second'\); pass the one store"):
        features_like(run)
    (run / "experiment.json").write_text("{")
    with pytest.raises(ConfigError, match=r"cannot read the feature settings that .*experiment\.json records"):
        features_like(run)



def test_like_a_run_dir_takes_only_the_features_the_run_read(trained: Path, tmp_path: Path) -> None:
    """experiment.json records every feature of each store: a wav2vec2 run on a store that also held
    eGeMAPS made `extract --like RUN_DIR` extract eGeMAPS too."""
    from stage2_fixtures import feature_specs

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    experiment = json.loads((run / "experiment.json").read_text())
    experiment["stores_identity"]["main"]["features"]["egemaps"] = feature_specs(features=("egemaps",))[0].to_dict()
    (run / "experiment.json").write_text(json.dumps(experiment))
    assert list(features_like(run)[0]) == ["wav2vec2"]


def test_like_a_fusion_run_dir_takes_egemaps_from_the_store_the_run_read_it_from(
        tmp_path: Path, audio_files: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A fusion run reads eGeMAPS from its fusion store; its main store also holding eGeMAPS with other
    settings made `--like RUN_DIR` refuse the run ("read feature 'egemaps' from two stores"), and
    predict need the training stores."""
    from stage2_fixtures import feature_specs

    _train_fusion_run(tmp_path)
    run = tmp_path / "run"
    experiment = json.loads((run / "experiment.json").read_text())
    other = feature_specs(features=("egemaps",), feature_configs={"egemaps": {"set": "ComParE_2016"}})[0]
    experiment["stores_identity"]["main"]["features"]["egemaps"] = other.to_dict()
    (run / "experiment.json").write_text(json.dumps(experiment))
    features = features_like(run)[0]
    assert features["egemaps"].to_dict() == experiment["stores_identity"]["fusion"]["features"]["egemaps"]
    assert features["wav2vec2"].to_dict() == experiment["stores_identity"]["main"]["features"]["wav2vec2"]
    for alias in ("main", "fusion"):  # the run dir alone gives the settings
        shutil.move(experiment["stores"][alias], tmp_path / f"gone-{alias}.zarr")
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    preds = predict_audio(run, audio_files)
    assert preds[0].ok and not preds[2].ok  # bad.wav fails in the fake extraction


@pytest.mark.parametrize("head", ["dense", "lstm", "fusion"])
@pytest.mark.parametrize("aliases", [("main",), ("w2v2",), ("main", "fusion"), ("main", "other")])
@pytest.mark.parametrize("fusion_features", [None, "egemaps", "main/spectrogram", "other/egemaps"])
def test_like_reads_a_run_dirs_selections_as_training_does(head: str, aliases: tuple[str, ...],
                                                           fusion_features: str | None) -> None:
    """Stage 1 reads which features a run read from experiment.json without stage 2's code: its
    reading must agree with ExperimentConfig.selections for every head."""
    from w2v2ser.extract._registry import _run_reads
    from w2v2ser.train import ExperimentConfig
    from w2v2ser.train._head_names import HEAD_BRANCHES

    assert set(HEAD_BRANCHES) == {"dense", "lstm", "fusion"}  # a new head: add it to the parametrisation
    features = "wav2vec2:all" if aliases != ("w2v2",) else "w2v2/wav2vec2:3"
    try:
        config = ExperimentConfig(stores={a: f"/s/{a}.zarr" for a in aliases}, features=features, head=head,
                                  fusion_features=fusion_features, protocol="ravdess")
        wanted: dict[str, set[str]] = {}
        for text in config.selections().values():
            wanted.setdefault(config.store_alias(text), set()).add(_runplan.resolve_feature(text))
    except Exception:  # noqa: BLE001 -- a configuration training refuses has no run dir
        return
    assert _run_reads(json.loads(json.dumps(config.to_dict()))) == wanted


def _copy_from(training_store: Path):
    """Stand-in for stage 1 that gives each file the frames the training store holds for the
    utterance of the same file name (another name: the first utterance's), so predict sees
    exactly what training tested on."""
    def extract(manifest: Path, store: Path, *, like: Path, features: list[str], model: str | None = None,
                options: Sequence[str] = ()) -> None:
        source = open_store(training_store)
        records = source.list_utterances()
        by_name = {Path(r.path).name: r for r in records}
        with open(manifest, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        found = [by_name.get(Path(r["path"]).name, records[0]) for r in rows]
        specs = [source.features[name] for name in features]
        writer = StoreWriter(store)
        index = writer.plan([Utterance(id=r["id"], path=r["path"], speaker=r["speaker"], label=r["label"],
                                       corpus="csv", extra={AUDIO_RATE_KEY: 16_000}) for r in rows],
                            num_samples=[f.num_samples for f in found], features=specs,
                            capacities={s.name: [len(source.read_utterance(f.id, s.name)) for f in found]
                                        for s in specs})
        for row, f in zip(index, found):
            writer.write_utterance(row, {s.name: source.read_utterance(f.id, s.name) for s in specs},
                                   audio_sha256=f.audio_sha256, duration=f.duration)
        writer.finalize()
    return extract


def test_predict_on_a_labelled_manifest_scores_it_as_training_tested(trained: Path, tmp_path: Path, capsys,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`predict --manifest` on the run's own test speakers gives its test UAR and confusion matrix
    exactly (on real RAVDESS: 64.88 for seed 0 of an eGeMAPS run, in both); labels that the protocol
    maps (calm -> neutral) are mapped, others are counted, not scored."""
    from w2v2ser._cli import main
    from w2v2ser.evaluate import predict_manifest

    store = trained.parent / "train.zarr"
    monkeypatch.setattr(_predict, "extract_features", _copy_from(store))
    split = json.loads((trained / "runs" / "split__seed0" / "metrics.json").read_text())
    test = [r for r in open_store(store).list_utterances() if r.speaker in split["split"]["test"]]
    assert "calm" in {r.label for r in test}  # mapped to neutral by the ravdess protocol
    lines = ["path,label,speaker"]
    for r in test:
        (tmp_path / Path(r.path).name).write_bytes(b"RIFF")
        lines.append(f"{tmp_path / Path(r.path).name},{r.label},{r.speaker}")
    (tmp_path / "other.wav").write_bytes(b"RIFF")
    manifest = tmp_path / "test.csv"
    manifest.write_text("\n".join(lines) + "\n")

    predictions, score = predict_manifest(trained, manifest, run="split__seed0")
    assert len(predictions) == len(test) and all(p.ok for p in predictions)
    assert score.scored == split["n_test"] == len(test)
    assert score.uar == pytest.approx(100 * split["uar"], abs=1e-9)
    assert score.confusion == split["confusion"]
    assert score.unscored_labels == {} and score.failed == 0

    assert score.seen_splits == {}

    # A label that is none of the run's classes is counted, not scored; the CLI prints the score.
    manifest.write_text("\n".join([*lines, f"{tmp_path / 'other.wav'},bored,{test[0].speaker}"]) + "\n")
    assert main(["predict", str(trained), "--manifest", str(manifest), "--run", "split__seed0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["predictions"]) == len(test) + 1 and out["score"]["unscored_labels"] == {"bored": 1}
    assert out["score"]["scored"] == len(test)
    assert main(["predict", str(trained), "--manifest", str(manifest)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1].startswith("score: UAR ") and f"over {len(test)} labelled files" in captured.out
    assert "1 file(s) have labels that are none of the run's classes" in captured.err and "bored (1)" in captured.err
    # Rows the manifest marks train or validation are scored, with a note: the run may have seen them.
    split_rows = ["path,label,speaker,split"] + [f"{line},{'train' if k < 2 else 'test'}"
                                                 for k, line in enumerate(lines[1:])]
    manifest.write_text("\n".join(split_rows) + "\n")
    assert main(["predict", str(trained), "--manifest", str(manifest)]) == 0
    assert "note: 2 scored file(s) are marked 2 train in the manifest's split column" in capsys.readouterr().err
    # Audio and a manifest, or neither, is bad input.
    assert main(["predict", str(trained), str(tmp_path / "other.wav"), "--manifest", str(manifest)]) == 2
    assert main(["predict", str(trained)]) == 2
    assert "takes audio files or folders, or --manifest CSV" in capsys.readouterr().err


def test_predict_store_scores_a_stored_corpus_without_extracting(trained: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """predict_store reads a store that holds the run's features with its settings: on the run's
    own test speakers it gives what training measured, with no extraction."""
    import argparse

    from stage2_fixtures import build_store
    from w2v2ser.evaluate import predict_store
    from w2v2ser.evaluate._cli import add_predict_arguments, predict_from_cli

    store = json.loads((trained / "experiment.json").read_text())["stores"]["main"]
    metrics = json.loads((trained / "runs" / "split__seed0" / "metrics.json").read_text())
    test = metrics["split"]["test"]
    preds, score = predict_store(trained, store, run="split__seed0", subset={"speaker": test})
    assert score.uar == pytest.approx(100 * metrics["uar"]) and score.confusion == metrics["confusion"]
    assert score.seen_speakers == 0 and {p.speaker for p in preds} == set(test)
    assert all(p.id and p.normalisation == "speaker group" for p in preds)
    everyone = predict_store(trained, store)[1]
    assert everyone.seen_speakers == everyone.scored - score.scored > 0  # training speakers: said, not hidden

    other = build_store(tmp_path / "other.zarr", layers=3, dim=4, features=("wav2vec2",), config_tag="finetuned")
    with pytest.raises(PredictError, match=r"holds 'wav2vec2' with other settings than run dir .*model: "
                                           r"'finetuned', not 'pretrained'.*--like"):
        predict_store(trained, other)
    # Found in review: --from-store named a dim change "frames of 3 x 5, not 3 x 4", predict --store
    # "dim: 5, not 4"; both use one text now.
    wider = build_store(tmp_path / "wider.zarr", layers=3, dim=5, features=("wav2vec2",))
    with pytest.raises(PredictError, match=r"with other settings than run dir .* \(dim: 5, not 4\)"):
        predict_store(trained, wider)
    lacking = build_store(tmp_path / "lacking.zarr", layers=3, dim=4, features=("egemaps",))
    with pytest.raises(PredictError, match="holds egemaps, not 'wav2vec2'"):
        predict_store(trained, lacking)

    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    args = [str(trained), "--from-store", store, "--run", "split__seed0", "--subset", f"speaker={','.join(test)}"]
    assert predict_from_cli(parser.parse_args(args)) == 0
    out = capsys.readouterr()
    assert f"score: UAR {100 * metrics['uar']:.1f} %" in out.out and "trained or validated on" not in out.err
    assert {line.split("\t")[0] for line in out.out.splitlines()[:-1]} == {p.id for p in preds}
    assert predict_from_cli(parser.parse_args([str(trained), "--from-store", store, "--json"])) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["score"]["seen_speakers"] == everyone.seen_speakers
    assert "speakers the run trained or validated on" in out.err
    for extra, problem in [(["--segment"], "--segment cuts audio files"),
                           (["--speaker-groups", "a"], "with --speaker-groups"),
                           (["--manifest", "m.csv"], "got --manifest and --from-store")]:
        with pytest.raises(PredictError, match=problem):
            predict_from_cli(parser.parse_args([str(trained), "--from-store", store, *extra]))
    with pytest.raises(PredictError, match="--subset selects utterances of --from-store"):
        predict_from_cli(parser.parse_args([str(trained), "x.wav", "--subset", "speaker=a"]))


def test_digitally_silent_files_are_named_not_labelled_in_silence(trained: Path, audio_files: list[Path],
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Found by a predict trial: a file of 1 s of zeros got "calm" like any other, with no note
    (extract names such files; predict's stage 1 recorded it in the temporary store, and predict
    dropped it). Now a note names it, and --json marks it; --from-store does the same."""
    import argparse

    from w2v2ser.evaluate import predict_store
    from w2v2ser.evaluate._cli import add_predict_arguments, predict_from_cli

    def extract(manifest: Path, store: Path, *, like: Path, features: list[str], model: str | None = None,
                options: Sequence[str] = ()) -> None:
        fake_extract(manifest, store, like=like, features=features)
        with open(manifest, newline="", encoding="utf-8") as handle:
            silent = [r["id"] for r in csv.DictReader(handle) if "silent" in Path(r["path"]).name]
        StoreWriter(store).record_silent_audio(silent)

    monkeypatch.setattr(_predict, "extract_features", extract)
    silent = tmp_path / "silent.wav"
    silent.write_bytes(b"RIFF")
    preds = predict_audio(trained, [audio_files[0], silent])
    assert [p.silent for p in preds] == [False, True] and all(p.ok for p in preds)
    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    assert predict_from_cli(parser.parse_args([str(trained), str(audio_files[0]), str(silent), "--json"])) == 0
    out = capsys.readouterr()
    assert [p["silent"] for p in json.loads(out.out)] == [False, True]
    assert "1 of 2 files are digital silence after mixing to mono (every sample is 0)" in out.err
    assert f"about emotion: {silent}." in out.err

    store = tmp_path / "stored.zarr"
    shutil.copytree(json.loads((trained / "experiment.json").read_text())["stores"]["main"], store)
    quiet = open_store(store).list_utterances()[0].id
    StoreWriter(store).record_silent_audio([quiet])
    preds, _ = predict_store(trained, store)
    assert [p.id for p in preds if p.silent] == [quiet]


def test_predict_store_names_audio_at_another_rate_for_native_features(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A store cannot be resampled as new audio is: utterances whose audio had another rate than
    all of the run's training audio, for eGeMAPS taken at each file's own rate, are counted and
    the CLI says to score them with --manifest (which resamples)."""
    import argparse
    from dataclasses import replace

    from stage2_fixtures import ravdess_utterances
    from w2v2ser.evaluate import predict_store
    from w2v2ser.evaluate._cli import add_predict_arguments, predict_from_cli
    from w2v2ser.train import ExperimentConfig, train_experiment

    rows = ravdess_utterances(per_actor=2)
    native = {"egemaps": {"sample_rate": "native"}}
    store = build_store(tmp_path / "train.zarr", features=("egemaps",), feature_configs=native,
                        utterances=[replace(u, extra={**u.extra, AUDIO_RATE_KEY: 16_000}) for u in rows])
    config = ExperimentConfig(stores={"main": str(store)}, features="egemaps", norm="global", protocol="ravdess",
                              recipe="official", seeds=1, recipe_overrides={"max_epochs": 1}, workers=1)
    train_experiment(config, out=tmp_path / "run", progress=False, threads=1)
    assert predict_store(tmp_path / "run", store)[1].other_rates == {}
    mixed = build_store(tmp_path / "mixed.zarr", features=("egemaps",), feature_configs=native,
                        utterances=[replace(u, extra={**u.extra, AUDIO_RATE_KEY: 44_100 if k % 3 == 0 else 16_000})
                                    for k, u in enumerate(rows)])
    _, score = predict_store(tmp_path / "run", mixed)
    assert score.other_rates == {"egemaps": len(range(0, len(rows), 3))} and score.training_rates == {"egemaps": 16_000}
    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    assert predict_from_cli(parser.parse_args([str(tmp_path / "run"), "--from-store", str(mixed)])) == 0
    assert (f"note: {score.other_rates['egemaps']} scored utterance(s) of the store have audio at another sample "
            f"rate than all of the run's training audio (16000 Hz)") in capsys.readouterr().err


def test_a_model_that_normalises_streamed_frames_itself_predicts_what_training_measured(tmp_path: Path) -> None:
    """A run trained on streamed float16 layers normalises them inside its model (input main_stats);
    prediction feeds that model the same way, and a run trained in memory the usual way."""
    import keras

    from stage2_fixtures import build_store
    from w2v2ser.evaluate import predict_store
    from w2v2ser.train import ExperimentConfig, train_experiment

    store = build_store(tmp_path / "train.zarr", layers=3, dim=4, features=("wav2vec2",))
    inputs = {}
    for cache in ("off", "auto"):
        config = ExperimentConfig(stores={"main": str(store)}, features="wav2vec2:all", head="dense", norm="speaker",
                                  protocol="ravdess", recipe="official", seeds=1, max_frames=40, cache=cache,
                                  recipe_overrides={"max_epochs": 2}, workers=1)
        run = tmp_path / f"run_{cache}"
        train_experiment(config, out=run, progress=False, threads=1)
        model = keras.saving.load_model(run / "runs" / "split__seed0" / "model.keras", compile=False)
        inputs[cache] = [t.name for t in model.inputs]
        metrics = json.loads((run / "runs" / "split__seed0" / "metrics.json").read_text())
        _, score = predict_store(run, str(store), run="split__seed0", subset={"speaker": metrics["split"]["test"]})
        assert score.uar == pytest.approx(100 * metrics["uar"]) and score.confusion == metrics["confusion"]
    assert inputs == {"off": ["main", "main_stats", "mask"], "auto": ["main", "mask"]}


def test_predict_and_evaluate_say_when_training_has_not_finished(
        trained: Path, audio_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """An interrupted `w2v2ser train` (1 of 2 seeds, no results.json): predict averaged the
    finished seed's model without a word, and evaluate did not say how to finish the run."""
    import logging
    import shutil

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    with caplog.at_level(logging.WARNING, logger="w2v2ser.evaluate"):
        predict_audio(run, audio_files)
    assert not caplog.records  # a finished run: nothing to say
    shutil.rmtree(run / "runs" / "split__seed1")
    (run / "results.json").unlink()
    with caplog.at_level(logging.WARNING, logger="w2v2ser.evaluate"):
        predictions = predict_audio(run, audio_files)
    assert any(p.ok for p in predictions)
    assert [r.getMessage() for r in caplog.records] == [
        f"{run}: training has not finished (no results.json): predicting with the 1 run(s) that have a model "
        f"(split__seed0). Rerun the same `w2v2ser train` command to finish it."]
    write_report([run], out=tmp_path / "report")
    reason = json.loads((tmp_path / "report" / "report.json").read_text())["runs"][0]["reason"]
    assert reason.endswith("1 run(s) finished; rerun the same `w2v2ser train` (or `w2v2ser run`) command to finish it")


def test_predict_removes_the_temp_folders_of_killed_predicts_only(trained: Path, audio_files: list[Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A predict killed with SIGKILL cannot delete its /tmp/w2v2ser-predict-* folder, and they piled
    up; a later predict removes those whose process is gone, not those of a live (concurrent) one."""
    import os
    import tempfile

    from w2v2ser._files import owner_tag

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    ended = subprocess.Popen(["true"])
    ended.wait()
    host = owner_tag().split("-", 1)[1]
    tmp = Path(tempfile.gettempdir())
    stale = tmp / f"w2v2ser-predict-{ended.pid}-{host}.k1lled00"
    live = tmp / f"w2v2ser-predict-{os.getppid()}-{host}.l1ve0000"  # pytest's parent: alive
    for folder in (stale, live):
        (folder / "store.zarr").mkdir(parents=True, exist_ok=True)
    try:
        preds = predict_audio(trained, audio_files[:1])
        assert preds[0].ok
        assert not stale.exists() and live.is_dir()
    finally:
        for folder in (stale, live):
            shutil.rmtree(folder, ignore_errors=True)


def test_a_window_that_cannot_be_written_is_an_error_not_a_whole_file_prediction(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: writing a window to a full TMPDIR raises libsndfile's RuntimeError, which
    predict took for an undecodable recording and quietly scored the whole file instead."""
    import soundfile

    from w2v2ser.evaluate import PredictError
    from w2v2ser.evaluate._predict import _windows

    source = tmp_path / "long.wav"
    soundfile.write(source, np.zeros(32_000, np.float32), 16_000)
    real = soundfile.write

    def full_disk(file, *args, **kwargs):
        if str(file).startswith(str(tmp_path / "segments")):
            raise soundfile.LibsndfileError(2, "Error opening {!r}: ".format(str(file)))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(soundfile, "write", full_disk)
    with pytest.raises(PredictError, match=r"cannot write window 0 of .*long\.wav.*Free space in") as caught:
        _windows([source], [0], 0.5, tmp_path / "segments")
    assert caught.value.exit_code == 1  # a failed run, not bad input
    (tmp_path / "afile").write_text("x")  # the window folder cannot be made either (here: a file in the way)
    with pytest.raises(PredictError, match=r"cannot write window 0 of .*long\.wav"):
        _windows([source], [0], 0.5, tmp_path / "afile" / "segments")


@pytest.mark.parametrize("code, stderr, expected", [
    (-9, "Extracting: 40%|####\n", "stage 1 was killed by SIGKILL (out of memory? see the system log)"),
    (1, "some log line\n", "stage 1 exited with status 1 without an error line"),
    (1, "w2v2ser: error: the disk is full\n", "the disk is full")])
def test_a_stage_1_that_stopped_is_named_by_its_error_line_or_its_signal(tmp_path: Path, monkeypatch, code, stderr,
                                                                        expected) -> None:
    """Found in review: a stage 1 killed by the OOM killer was reported by its last log line (a
    progress bar), or as "without a message"; the reason now comes from its error line or its signal."""
    import subprocess

    from w2v2ser.evaluate import _extraction

    store = tmp_path / "s.zarr"
    store.mkdir()
    (store / "zarr.json").write_text("{}")  # it left a store: its finished files can still be labelled
    monkeypatch.setattr(_extraction.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, code, stdout="", stderr=stderr))
    reason = _extraction.extract_features(tmp_path / "m.csv", store, like=tmp_path / "like.zarr", features=["egemaps"])
    assert reason.startswith(expected), reason


def test_the_silent_note_for_segment_windows_speaks_of_pauses(capsys: pytest.CaptureFixture[str]) -> None:
    """Found in review: a --segment window of exact zeros (a pause) got "a muted or zeroed recording
    is usually a broken file: replace it" and the stereo advice; only a file silent throughout is."""
    from w2v2ser.evaluate._cli import _note_silent

    def window(path: str, start: float, silent: bool) -> Prediction:
        return Prediction(path=Path(path), emotion="calm", seconds=2.0, start=start, end=start + 2, silent=silent)

    _note_silent([window("talk.wav", 0, False), window("talk.wav", 2, True), window("talk.wav", 4, False)])
    err = capsys.readouterr().err
    assert "1 of 3 windows are digital silence" in err and "talk.wav 2.0-4.0 s" in err
    assert "A silent window is a pause" in err and "broken file" not in err and "ffmpeg" not in err
    _note_silent([window("talk.wav", 0, False), window("mute.wav", 0, True), window("mute.wav", 2, True)])
    err = capsys.readouterr().err
    assert "Every window of mute.wav is silent, so the file is: A muted or zeroed recording" in err
    _note_silent([Prediction(path=Path("mute.wav"), emotion="calm", seconds=1.0, silent=True)])
    assert "1 of 1 files are digital silence" in capsys.readouterr().err


def test_setting_differences_name_a_key_one_side_lacks() -> None:
    """Found in review: a spec recorded without a key that the store now records as None read
    "(description: 'X', not 'X')", naming nothing that differs."""
    trained = {"name": "w", "dim": 4, "layers": 3, "config": {"model": "m", "old": 1}, "description": "X"}
    found = {**trained, "config": {"model": "m"}, "layer_names": None}
    assert _runplan._setting_differences(found, trained) == "old: (absent), not 1; layer_names: None, not (absent)"
    assert _runplan._setting_differences({**trained, "description": "Y"}, trained) == "description: 'Y', not 'X'"
    # --from-store refuses on dim/layers and shared config keys only (_differs): a key one version
    # records and another does not is no difference there, so it is not named first (second review).
    newer = {**found, "dim": 5}
    assert _runplan._setting_differences(newer, trained, absent_differs=False) == "dim: 5, not 4"


def test_predict_store_of_an_iemocap_run_gives_what_training_measured(tmp_path: Path) -> None:
    """Training composes a speaker's statistics over the labels the protocol keeps (IEMOCAP's xxx,
    fru... left out); predict_store composed them over all of the speaker's utterances, so on the
    run's own test session it no longer gave what training measured."""
    from stage2_fixtures import build_store
    from w2v2ser.evaluate import predict_store
    from w2v2ser.train import ExperimentConfig, train_experiment

    store = build_store(tmp_path / "iem.zarr", corpus="iemocap", layers=3, dim=4, features=("wav2vec2",))
    assert "fru" in {r.label for r in open_store(store).list_utterances()}  # a label the protocol drops
    config = ExperimentConfig(stores={"main": str(store)}, features="wav2vec2:all", head="dense", norm="speaker",
                              protocol="iemocap", recipe="official", seeds=1, max_frames=40,
                              recipe_overrides={"max_epochs": 1}, workers=1)
    train_experiment(config, out=tmp_path / "run", progress=False, threads=1)
    metrics = json.loads((tmp_path / "run" / "runs" / "session1__seed0" / "metrics.json").read_text())
    test = metrics["split"]["test"]
    preds, score = predict_store(tmp_path / "run", store, run="session1__seed0", subset={"speaker": test})
    assert score.uar == pytest.approx(100 * metrics["uar"]) and score.confusion == metrics["confusion"]
    expected = {row["id"]: float(row["p_neutral"]) for row in
                csv.DictReader(open(tmp_path / "run" / "runs" / "session1__seed0" / "predictions.csv"))}
    got = {p.id: p.probabilities["neutral"] for p in preds if p.id in expected}
    assert got.keys() == expected.keys()
    assert all(abs(got[k] - expected[k]) < 1e-4 for k in expected)


def test_predict_store_leaves_out_dropped_labels_per_speaker(tmp_path: Path, caplog) -> None:
    """Review of eb9945c: one speaker of the store without a label the protocol keeps (only xxx
    turns) sent every speaker back to statistics over all labels, without a word, so the run's own
    test speakers no longer got what training measured."""
    import dataclasses
    import logging

    from stage2_fixtures import iemocap_utterances
    from w2v2ser.evaluate import predict_store
    from w2v2ser.train import ExperimentConfig, plan_runs, train_run

    utts = iemocap_utterances(per_speaker=8)
    odd = [dataclasses.replace(utts[0], id=f"Ses01Z_xxx{k}", path=f"/fake/xxx{k}.wav", speaker="Ses01Z", label="xxx")
           for k in range(4)]
    store = build_store(tmp_path / "iem.zarr", utterances=[*utts, *odd], features=("egemaps",))
    config = ExperimentConfig(stores={"main": str(store)}, features="egemaps", norm="speaker", protocol="iemocap",
                              seeds=1, units=8, recipe_overrides={"max_epochs": 1}, workers=1)
    spec = plan_runs(config)[0]
    train_run(config, spec, out=tmp_path / "run")
    expected = {row["id"]: float(row["p_neutral"]) for row in
                csv.DictReader(open(tmp_path / "run" / "runs" / spec.name / "predictions.csv"))}
    with caplog.at_level(logging.WARNING, logger="w2v2ser.evaluate"):
        preds, _ = predict_store(tmp_path / "run", store, run=spec.name)
    got = {p.id: p.probabilities["neutral"] for p in preds if p.id in expected}
    assert got.keys() == expected.keys()
    assert all(abs(got[k] - expected[k]) < 1e-4 for k in expected)
    assert "Ses01Z" in caplog.text and "no label that protocol iemocap keeps" in caplog.text


def _train_iemocap_run(tmp_path: Path) -> tuple[Path, object, object]:
    """A one-epoch eGeMAPS run (speaker statistics, iemocap protocol) into tmp_path/run, on a
    synthetic IEMOCAP store of 6 turns per speaker: (store, config, run spec)."""
    from stage2_fixtures import iemocap_utterances
    from w2v2ser.train import ExperimentConfig, plan_runs, train_run

    store = build_store(tmp_path / "iem.zarr", utterances=iemocap_utterances(per_speaker=6), features=("egemaps",))
    config = ExperimentConfig(stores={"main": str(store)}, features="egemaps", norm="speaker", protocol="iemocap",
                              seeds=1, units=8, recipe_overrides={"max_epochs": 1}, workers=1)
    spec = plan_runs(config)[0]
    train_run(config, spec, out=tmp_path / "run")
    return store, config, spec


def test_predict_manifest_leaves_out_the_labels_the_protocol_drops(tmp_path: Path, monkeypatch, caplog) -> None:
    """Review of a9be973: training and --from-store compose a speaker's statistics over the labels
    the protocol keeps, but predict --manifest composed them over every file of the speaker, so a
    manifest of IEMOCAP turns normalised with its xxx and fru ones."""
    import logging

    from w2v2ser.evaluate import predict_manifest

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    store, config, spec = _train_iemocap_run(tmp_path)
    kept = [(f"k{i}.wav", label) for i, label in enumerate(["neu", "ang", "sad", "hap", "exc", "neu"])]
    found = []
    for dropped in (["fru", "xxx"], ["fru", "xxx", "oth"]):  # the kept files come first: the same frames
        rows = [*kept, *((f"d{i}.wav", label) for i, label in enumerate(dropped))]
        manifest = tmp_path / f"m{len(dropped)}.csv"
        manifest.write_text("path,label,speaker\n" + "".join(f"{tmp_path / name},{label},S\n" for name, label in rows)
                            + "".join(f"{tmp_path}/z{i}.wav,xxx,Z\n" for i in range(6)))
        for name in [name for name, _ in rows] + [f"z{i}.wav" for i in range(6)]:
            (tmp_path / name).write_bytes(b"RIFF")
        with caplog.at_level(logging.WARNING, logger="w2v2ser.evaluate"):
            preds, score = predict_manifest(tmp_path / "run", manifest, run=spec.name)
        assert all(p.ok and p.normalisation == "speaker group" for p in preds) and score.scored == len(kept)
        found.append([p.probabilities for p in preds[:len(kept)]])
    for a, b in zip(*found):  # the dropped files do not move the kept ones' statistics
        assert all(abs(a[c] - b[c]) < 1e-6 for c in a)
    assert "speaker group(s) Z have no label that protocol iemocap keeps" in caplog.text


def test_a_moved_store_of_a_run_older_than_kept_label_statistics_is_that_store(tmp_path: Path, audio_files,
                                                                                monkeypatch, caplog) -> None:
    """Review of a9be973 (item 1): an IEMOCAP run recorded before its statistics left out the
    labels the protocol drops ("U.F") no longer matches its store's fingerprint, and predict
    --store refused the very store the run was trained on as one holding other utterances."""
    import logging
    import shutil

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    store, config, spec = _train_iemocap_run(tmp_path)
    path = tmp_path / "run" / "runs" / spec.name / "metrics.json"
    metrics = json.loads(path.read_text())
    moved = shutil.move(str(store), tmp_path / "moved.zarr")
    with caplog.at_level(logging.WARNING, logger="w2v2ser.evaluate"):
        predict_audio(tmp_path / "run", audio_files, stores={None: moved}, run=spec.name)
    assert "retrain" not in caplog.text  # a run of this rule
    path.write_text(json.dumps({**metrics, "data_fingerprint": metrics["data_fingerprint"].rpartition(".")[0]}))
    with caplog.at_level(logging.WARNING, logger="w2v2ser.evaluate"):
        preds = predict_audio(tmp_path / "run", audio_files, stores={None: moved}, run=spec.name)
    assert sum(p.ok for p in preds) == 3  # bad.wav fails to decode
    # Review 3 (item 5): it composed its statistics over every label; predict now leaves some out.
    assert f"run(s) {spec.name} of {tmp_path / 'run'} composed their normalisation statistics over every label" \
        in caplog.text and "retrain them" in caplog.text


def test_a_speaker_group_qualifies_by_its_kept_label_files(tmp_path: Path, monkeypatch) -> None:
    """Review 3 (item 1): a group qualified for its own statistics by counting all its files, but
    they are composed over its kept-label files only, so a group of 3 files, 2 of them fru/xxx,
    was normalised by one file's statistics. It keeps the global ones, as a small group does."""
    from w2v2ser.evaluate import predict_manifest

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    store, config, spec = _train_iemocap_run(tmp_path)
    rows = [("s0.wav", "neu", "S"), ("s1.wav", "fru", "S"), ("s2.wav", "xxx", "S"),
            ("t0.wav", "neu", "T"), ("t1.wav", "ang", "T"), ("t2.wav", "sad", "T")]
    for name, _, _ in rows:
        (tmp_path / name).write_bytes(b"RIFF")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,speaker\n" + "".join(f"{tmp_path / n},{lab},{s}\n" for n, lab, s in rows))
    preds, _ = predict_manifest(tmp_path / "run", manifest, run=spec.name)
    assert [p.normalisation for p in preds] == [_predict.SMALL_GROUP] * 3 + ["speaker group"] * 3


def test_predict_store_subset_composes_the_statistics_training_did(tmp_path: Path) -> None:
    """Review 3 (item 4): with --subset, predict_store composed the statistics over the subset's done
    rows, while training composed them over rows of any status: a test speaker's row whose other
    feature failed (its egemaps frames stored) moved training's statistics but not predict's."""
    import dataclasses

    from stage2_fixtures import iemocap_utterances
    from test_train_experiment import _store_with_a_half_failed_utterance
    from w2v2ser.evaluate import predict_store
    from w2v2ser.train import ExperimentConfig, plan_runs, train_run

    utts = iemocap_utterances(per_speaker=6)
    kept = next(u for u in utts if u.label == "neu")
    extra = dataclasses.replace(kept, id=f"{kept.speaker}_half", path="/fake/half.wav")
    store = _store_with_a_half_failed_utterance(tmp_path / "iem.zarr", utts, extra, 5.0)
    config = ExperimentConfig(stores={"main": str(store)}, features="egemaps", norm="speaker", protocol="iemocap",
                              seeds=1, units=8, recipe_overrides={"max_epochs": 1}, workers=1)
    spec = next(s for s in plan_runs(config) if kept.speaker in s.test)
    train_run(config, spec, out=tmp_path / "run")
    expected = {row["id"]: float(row["p_neutral"]) for row in
                csv.DictReader(open(tmp_path / "run" / "runs" / spec.name / "predictions.csv"))}
    preds, _ = predict_store(tmp_path / "run", store, run=spec.name, subset={"speaker": list(spec.test)})
    got = {p.id: p.probabilities["neutral"] for p in preds if p.id in expected}
    assert got.keys() == expected.keys()
    assert all(abs(got[k] - expected[k]) < 1e-4 for k in expected)


def test_predict_audio_takes_one_label_for_every_path_and_refuses_none(tmp_path: Path, audio_files, monkeypatch,
                                                                       caplog) -> None:
    """Review 3 (item 7): labels="neu" was split into its characters (with 3 paths, silently: no
    file had a label the protocol keeps), where speakers="spk" is one name; None became "None"."""
    import logging


    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    good = [f for f in audio_files if "bad" not in f.name]
    with pytest.raises(PredictError, match=r"labels holds None at position\(s\) 1"):
        predict_audio(tmp_path / "nowhere", good, labels=["neu", None, "ang"])
    store, config, spec = _train_iemocap_run(tmp_path)
    with caplog.at_level(logging.INFO, logger="w2v2ser.evaluate"):
        preds = predict_audio(tmp_path / "run", good, speakers="S", labels="neu", run=spec.name)
    assert all(p.ok and p.normalisation == "speaker group" for p in preds)
    assert "no label that protocol iemocap keeps" not in caplog.text  # every file is "neu", which it keeps


def test_predict_json_of_labelled_files_gives_each_one_its_class(trained: Path, tmp_path: Path, capsys,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Found as a user reading `predict --json` with pandas: the rows of --from-store and --manifest had
    the predicted `emotion` but not the class it was scored against, so per-file errors needed the
    manifest (or the store) joined back and the protocol's mapping (calm -> neutral) redone by hand."""
    from w2v2ser._cli import main

    store = trained.parent / "train.zarr"
    metrics = json.loads((trained / "runs" / "split__seed0" / "metrics.json").read_text())
    test = metrics["split"]["test"]
    assert main(["predict", str(trained), "--from-store", str(store), "--run", "split__seed0", "--subset",
                 f"speaker={','.join(test)}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows, confusion = out["predictions"], out["score"]["confusion"]
    classes = out["score"]["classes"]
    assert all(r["label"] in classes for r in rows)
    counted = [[sum(r["label"] == t and r["emotion"] == p for r in rows) for p in classes] for t in classes]
    assert counted == confusion == metrics["confusion"]
    # A manifest's label that is none of the run's classes is unscored: its row says so with null.
    monkeypatch.setattr(_predict, "extract_features", _copy_from(store))
    record = next(r for r in open_store(store).list_utterances() if r.speaker in test)
    (tmp_path / Path(record.path).name).write_bytes(b"RIFF")
    (tmp_path / "other.wav").write_bytes(b"RIFF")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label,speaker\n{tmp_path / Path(record.path).name},{record.label},{record.speaker}\n"
                        f"{tmp_path / 'other.wav'},bored,{record.speaker}\n")
    assert main(["predict", str(trained), "--manifest", str(manifest), "--run", "split__seed0", "--json"]) == 0
    labels = [r["label"] for r in json.loads(capsys.readouterr().out)["predictions"]]
    assert labels[0] in classes and labels[1] is None


def test_a_manifest_label_that_is_a_csv_run_s_class_in_another_case_is_named_as_a_spelling(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A csv run's classes are taken as written, so 'LOW' beside the class 'low' was "none of the run's
    classes", as if it were a label of another corpus."""
    from w2v2ser._cli import main

    manifest = _write_low_high_manifest(tmp_path, samples=8000)
    store, run = str(tmp_path / "s.zarr"), str(tmp_path / "run")
    assert main(["extract", "csv", str(manifest), "--store", store, "--features", "spectrogram", "--no-progress"]) == 0
    assert main(["train", store, "--features", "spectrogram", "--norm", "global", "--seeds", "1", "--out", run,
                 "--set", "max_epochs=1", "--threads", "1", "--no-progress"]) == 0
    scored = tmp_path / "scored.csv"
    scored.write_text(f"path,label,speaker\n{tmp_path / 's1_low.wav'},LOW,x\n{tmp_path / 's1_high.wav'},high,x\n")
    capsys.readouterr()
    assert main(["predict", run, "--manifest", str(scored)]) == 0
    err = capsys.readouterr().err
    assert "none of the run's classes" in err and "'LOW' is the run's 'low' written another way (it differs only in case)" in err, err


def test_predict_store_takes_a_store_extracted_like_the_run_on_another_device_or_model_path(tmp_path: Path) -> None:
    """Found driving upstreams: a store extracted with `--like RUN --device cpu --batch-seconds 8` (or the
    same weights at another path), as the README allows, was refused by --from-store: "other settings"."""
    from stage2_fixtures import build_store, ravdess_utterances
    from w2v2ser.evaluate import predict_store
    from w2v2ser.train import ExperimentConfig, train_experiment

    def encoder(device: str, path: str, sha: str = "aa") -> dict:
        return {"wav2vec2": {"model": path, "max_seconds": 120.0 if device == "auto" else 300.0,
                             "runtime": {"device": device, "batch_seconds": 32.0 if device == "auto" else 8.0},
                             "upstream": {"model": path, "weights_sha256": {"model.safetensors": sha}},
                             "provenance": {"source": "local", "requested": path, "resolved_path": path,
                                            "weights_sha256": {"model.safetensors": sha}, "architecture": {"h": 4}}}}

    rows = ravdess_utterances(per_actor=2)
    store = build_store(tmp_path / "train.zarr", utterances=rows, layers=3, dim=4, features=("wav2vec2",),
                        feature_configs=encoder("auto", "tiny"))
    config = ExperimentConfig(stores=str(store), features="wav2vec2:all", seeds=1, max_frames=40,
                              recipe_overrides={"max_epochs": 1}, workers=1)
    train_experiment(config, out=tmp_path / "run", progress=False, threads=1)
    like = build_store(tmp_path / "like.zarr", utterances=rows, layers=3, dim=4, features=("wav2vec2",),
                       feature_configs=encoder("cpu", "/elsewhere/tiny"))
    assert predict_store(tmp_path / "run", like)[1].scored == len(rows)
    other = build_store(tmp_path / "other.zarr", utterances=rows, layers=3, dim=4, features=("wav2vec2",),
                        feature_configs=encoder("cpu", "/elsewhere/tiny", sha="bb"))
    with pytest.raises(PredictError, match="with other settings than run dir") as refused:
        predict_store(tmp_path / "run", other)
    # The reason is the weights, named first; not the keys a store extracted --like RUN may change.
    msg = str(refused.value)
    assert "runtime" not in msg and "max_seconds" not in msg
    assert msg.index("weights_sha256") < msg.index("model:"), msg


def test_a_training_store_extracted_again_on_another_device_is_the_same_store(tmp_path: Path, audio_files: list[Path],
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s62 (item 3): the training store re-extracted with --device cpu, another batch size or
    max_seconds, or the same weights at another path, is the store the run was trained on: an older
    run dir (no audio rates) reads it, and predict --store takes it moved (it compared exactly)."""
    from w2v2ser.train import ExperimentConfig, train_experiment

    def encoder(device: str, path: str) -> dict:
        return {"wav2vec2": {"model": path, "max_seconds": 120.0 if device == "auto" else 300.0,
                             "runtime": {"device": device, "batch_seconds": 32.0 if device == "auto" else 8.0},
                             "upstream": {"model": path, "weights_sha256": {"model.safetensors": "aa"}},
                             "provenance": {"source": "local", "requested": path, "resolved_path": path,
                                            "weights_sha256": {"model.safetensors": "aa"}, "architecture": {"h": 4}}}}

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    store = build_store(tmp_path / "train.zarr", layers=3, dim=4, features=("wav2vec2",),
                        feature_configs=encoder("auto", "tiny"))
    config = ExperimentConfig(stores={"main": str(store)}, features="wav2vec2:all", seeds=1, max_frames=40,
                              recipe_overrides={"max_epochs": 1}, workers=1)
    train_experiment(config, out=tmp_path / "run", progress=False, threads=1)
    again = build_store(tmp_path / "again.zarr", layers=3, dim=4, features=("wav2vec2",),
                        feature_configs=encoder("cpu", "/elsewhere/tiny"))
    good = sum("bad" not in f.name for f in audio_files)
    assert sum(p.ok for p in predict_audio(tmp_path / "run", audio_files, stores={"main": again})) == good
    older = tmp_path / "older"
    shutil.copytree(tmp_path / "run", older)
    _as_older_run(older)
    experiment = json.loads((older / "experiment.json").read_text())
    experiment["stores"]["main"] = str(again)  # rebuilt where training read it
    (older / "experiment.json").write_text(json.dumps(experiment))
    assert sum(p.ok for p in predict_audio(older, audio_files)) == good


def test_the_same_pt_under_another_file_name_is_the_same_weights() -> None:
    """Review s62 (item 4): "the same weights at another path" needed equal {file name: sha256}
    records, so wav2vec_small.pt copied as w2v.pt was other weights for --from-store and a store's resume."""
    from w2v2ser.extract._models import keep_recorded_location

    def config(name: str, sha: str) -> dict:
        return {"model": f"/w/{name}", "upstream": {"model": f"/w/{name}", "weights_sha256": {name: sha}},
                "provenance": {"source": "fairseq", "requested": f"/w/{name}", "resolved_path": f"/w/{name}",
                               "weights_sha256": {name: sha}, "architecture": {"h": 4}}}

    assert not _runplan._differs(config("w2v.pt", "aa"), config("wav2vec_small.pt", "aa"))
    assert keep_recorded_location(config("w2v.pt", "aa"), config("wav2vec_small.pt", "aa")) == \
        config("wav2vec_small.pt", "aa")
    assert _runplan._differs(config("w2v.pt", "bb"), config("wav2vec_small.pt", "aa"))


def test_differs_leaves_out_max_seconds_when_one_side_records_no_runtime() -> None:
    """Review s62: _differs stripped runtime and max_seconds only when both configs had runtime (the
    store's resume check strips them per side), so a config recorded before runtime was refused."""
    from w2v2ser.evaluate import _runplan

    older = {"model": "tiny", "max_seconds": 120.0}
    newer = {"model": "tiny", "max_seconds": 300.0, "runtime": {"device": "cpu"}}
    assert not _runplan._differs(newer, older)
    assert not _runplan._differs(older, newer)
    assert _runplan._differs({**newer, "model": "other"}, older)


def test_a_failed_files_label_is_null_as_it_is_not_scored(trained: Path, audio_files: list[Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a code review: the README says a prediction's label is null where it is not scored,
    but a file that failed (unreadable) kept its class, so filtering on label counted it as scored."""
    from w2v2ser.evaluate import predict_manifest

    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    manifest = audio_files[0].parent / "m.csv"
    manifest.write_text("path,label,speaker\n" + "".join(f"{f},angry,s1\n" for f in audio_files[:3]))
    predictions, score = predict_manifest(trained, manifest, run="split__seed0")
    assert [p.path.name for p in predictions] == ["a.wav", "b.wav", "bad.wav"] and score.failed == 1
    assert [p.label for p in predictions] == ["angry", "angry", None]


def test_from_store_alias_forms_refuse_an_empty_path_and_keep_an_existing_path_with_an_equals_sign(
        trained: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of 2f5c648/87a1f32: `--from-store main="$UNSET"` gave the path '' (the current folder),
    getting around the empty-path check, and an existing store `lr=3e-4.zarr` was split into alias 'lr'."""
    from w2v2ser._cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(trained), "--from-store", "main="]) == 2
    assert "--from-store main=: expected a path after main=, got ''" in capsys.readouterr().err
    (tmp_path / "lr=3e-4.zarr").symlink_to(trained.parent / "train.zarr")
    assert main(["predict", str(trained), "--from-store", "lr=3e-4.zarr", "--run", "split__seed0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"]
    # Review s63: a name over the file system's 255 bytes raised ENAMETOOLONG from the existence check.
    # Review s63: a name over the file system's 255 bytes raised ENAMETOOLONG from the existence check
    # of 'main=xxx...' itself, so the alias was never split off.
    assert main(["predict", str(trained), "--from-store", "main=" + "x" * 300]) in (1, 2)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "main=x" not in err and "255 bytes per name" in err, err


def test_predict_uses_only_public_names_of_extract() -> None:
    """Review of 354bccc: predict's windows imported the private `extract._audio._truncation`; what the
    evaluate package needs of extract is public there (as `truncated_error` is)."""
    import ast

    private = []
    for source in (Path(_predict.__file__).parent).glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("w2v2ser.extract"):
                private += [f"{source.name}: {alias.name}" for alias in node.names if alias.name.startswith("_")]
    assert not private


def test_a_negative_tensorflow_thread_count_in_the_environment_is_refused_not_a_process_abort(
        trained: Path, audio_files: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """review4 #3: `TF_NUM_INTRAOP_THREADS=-1 w2v2ser predict RUN x.wav` aborted the process (a notebook's
    kernel) in TensorFlow's "Check failed: num_threads >= 1"; train refused it, predict did not check."""
    from w2v2ser import ConfigError

    def extract(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        raise AssertionError("stage 1 ran before the check")

    import tensorflow as tf

    monkeypatch.setattr(_extraction.subprocess, "run", extract)
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "-2")
    # As in a fresh process (another test may have set this one's count, which takes the variable's place).
    monkeypatch.setattr(tf.config.threading, "get_inter_op_parallelism_threads", lambda: 0)
    with pytest.raises(ConfigError, match=r"TF_NUM_INTEROP_THREADS is '-2'.*Unset it") as raised:
        predict_audio(trained, audio_files[:1])
    assert "--threads" not in str(raised.value)  # predict has none


def test_a_file_without_frames_fails_with_its_reason_not_a_uniform_guess(trained: Path, audio_files: list[Path],
                                                                         tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a trial: a file whose feature has 0 frames (audio shorter than one frame) got the models'
    output for no input, near-uniform probabilities that are the same for any such file, as a prediction."""
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    files = [audio_files[0], audio_files[0].with_name("empty.wav"), audio_files[1]]
    files[1].write_bytes(b"RIFF")
    preds = predict_audio(trained, files, work_dir=tmp_path / "work")
    classes = json.loads((trained / "results.json").read_text())["classes"]
    _check(preds[0], classes)
    _check(preds[2], classes)
    assert preds[1].emotion is None and not preds[1].probabilities
    assert preds[1].error.startswith("no frames of feature 'wav2vec2': the audio is shorter than one of its frames")
    # The same store's utterances through predict_store: the frameless one fails with the same reason.
    from w2v2ser.evaluate import predict_store

    store = next((tmp_path / "work").glob("predict-*/features0.zarr"))
    stored, _ = predict_store(trained, store)
    assert [p.ok for p in stored] == [True, False, True] and stored[1].error == preds[1].error
    assert [p.probabilities for p in stored if p.ok] == [preds[0].probabilities, preds[2].probabilities]


def test_a_file_whose_name_is_not_utf8_gets_its_reason_and_the_others_go_on(
        trained: Path, audio_files: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder of Latin-1 names (byte \\xe9 for é) ended predict in a UnicodeEncodeError traceback while
    writing stage 1's manifest, and no file was predicted."""
    monkeypatch.setattr(_predict, "extract_features", fake_extract)
    odd = audio_files[0].parent / os.fsdecode(b"caf\xe9.wav")
    odd.write_bytes(b"RIFF")
    preds = predict_audio(trained, [audio_files[0], odd])
    assert preds[0].ok and preds[1].emotion is None, preds
    assert "caf\\xe9.wav: its name is not valid UTF-8" in preds[1].error, preds[1].error


def test_a_file_that_failed_one_feature_of_a_fusion_run_fails_alone(tmp_path: Path) -> None:
    """Stage 1 stores a file that failed one feature with its others (a done utterance without that
    feature): predict must report that file as failed, with the reason, not read frames it lacks."""
    from w2v2ser.train import ExperimentConfig, train_experiment

    store = build_store(tmp_path / "train.zarr", layers=3, dim=4, features=("wav2vec2", "egemaps"))
    config = ExperimentConfig(stores={"main": str(store)}, features="wav2vec2:all", head="fusion",
                              protocol="ravdess", recipe="official", seeds=1, max_frames=40,
                              recipe_overrides={"max_epochs": 1}, workers=1)
    train_experiment(config, out=tmp_path / "run", progress=False, threads=1)
    files = [tmp_path / "a.wav", tmp_path / "long.wav", tmp_path / "c.wav"]
    for f in files:
        f.write_bytes(b"RIFF")  # never read: the extraction below is a stand-in

    def extract_one_failing(manifest: Path, target: Path, *, like: Path, features: list[str], model: str | None = None,
                            options: Sequence[str] = ()) -> None:
        fake_extract(manifest, target, like=like, features=features, model=model, options=options)
        # long.wav: its wav2vec2 failed (over max_seconds), its eGeMAPS is stored, as stage 1 now keeps it.
        writer = StoreWriter(target)
        row = next(r.index for r in open_store(target).list_utterances() if Path(r.path).name == "long.wav")
        writer.record_failure(row, feature="wav2vec2", reason="long.wav is 200.0 s long, over wav2vec2.max_seconds=120")
        writer.finalize()
        reader = open_store(target)
        assert "long" in {Path(r.path).stem for r in reader.list_utterances()}
        assert "long" not in {Path(r.path).stem for r in reader.list_utterances(feature="wav2vec2")}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_predict, "extract_features", extract_one_failing)
        preds = predict_audio(tmp_path / "run", files)
    assert [p.ok for p in preds] == [True, False, True]
    assert "over wav2vec2.max_seconds=120" in preds[1].error
