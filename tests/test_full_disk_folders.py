"""A full disk (or quota, or file size limit) met while stage 2 writes a run, a summary or a report:
keras, PIL and zarr raise it without a file name. The Python API and the command line both name the
folder being written and say what to do, and a rerun once space is free finishes only what is missing."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from stage2_fixtures import build_store, ravdess_utterances  # noqa: E402
from test_run_pipeline import make_tiny_corpus, needs_ravdess, write_tiny_pipeline  # noqa: E402

FAST = {"max_epochs": 1}


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as keras, PIL and zarr raise it: no file name


def _denied(path: Path) -> None:
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))  # as root, chmod refuses nothing


def _fail_writes(patch: pytest.MonkeyPatch, module: Any, failing: Callable[[Path], bool],
                 fail: Callable[[Path], None]) -> None:
    """Patch ``module._write_json`` so that a write to a path that ``failing`` accepts calls ``fail(path)``
    (which raises, as the OS would); other writes go through."""
    write = module._write_json

    def patched(path, *args, **kwargs):
        if failing(Path(path)):
            fail(Path(path))
        return write(path, *args, **kwargs)

    patch.setattr(module, "_write_json", patched)


def _says_full(error: BaseException, folder: Path) -> None:
    """``error`` is the one a user can act on: an OSError with errno, naming ``folder``, with the fix."""
    from w2v2ser import W2v2serError

    text = str(error)
    assert isinstance(error, OSError) and isinstance(error, W2v2serError), repr(error)
    assert error.errno == errno.ENOSPC and error.filename == str(folder), repr(error)
    assert text.startswith(f"{folder}: No space left on device. Free space"), text
    assert text.endswith("then rerun the same command: finished work is kept."), text


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("full")
    return build_store(root / "rav.zarr", utterances=ravdess_utterances(per_actor=1), layers=2, dim=4)


def test_train_experiment_on_a_full_disk_names_its_folder_and_a_rerun_keeps_the_finished_run(
        store: Path, tmp_path: Path, monkeypatch) -> None:
    """keras's model.save filled the disk at the second run: train_experiment raised a bare
    "[Errno 28] No space left on device" naming no folder and no fix."""
    import keras

    from w2v2ser.train import ExperimentConfig, train_experiment

    config = ExperimentConfig(stores=str(store), features="egemaps", seeds=2, recipe_overrides=FAST)
    out = tmp_path / "run"
    save = keras.Model.save
    calls = []

    def full_at_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            _full()
        return save(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(keras.Model, "save", full_at_second)
        with pytest.raises(OSError) as raised:
            train_experiment(config, out=out, progress=False)
    _says_full(raised.value, out)
    first = out / "runs" / "split__seed0" / "metrics.json"
    kept = (first.stat().st_mtime_ns, first.read_bytes())
    assert not (out / "runs" / "split__seed1").exists()
    results = train_experiment(config, out=out, progress=False)  # space freed: only the missing run trains
    assert results["n_runs"] == 2 and (first.stat().st_mtime_ns, first.read_bytes()) == kept


def test_a_full_disk_at_results_json_names_the_experiment_folder(store: Path, tmp_path: Path, monkeypatch) -> None:
    from w2v2ser.train import ExperimentConfig, _experiment, train_experiment

    config = ExperimentConfig(stores=str(store), features="egemaps", seeds=1, recipe_overrides=FAST)
    out = tmp_path / "run"
    write = _experiment.write_atomically

    def full_at_results(path, *args, **kwargs):
        if Path(path).name == "results.json":
            _full()
        return write(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(_experiment, "write_atomically", full_at_results)
        with pytest.raises(OSError) as raised:
            train_experiment(config, out=out, progress=False)
    _says_full(raised.value, out)
    assert (out / "runs" / "split__seed0" / "metrics.json").is_file()  # the finished run is kept


def test_sweep_experiment_on_a_full_disk_names_its_folder(store: Path, tmp_path: Path, monkeypatch) -> None:
    from w2v2ser.train import ExperimentConfig, _sweep, sweep_experiment

    config = ExperimentConfig(stores=str(store), features="wav2vec2", seeds=1, recipe_overrides=FAST)
    out = tmp_path / "sweep"
    monkeypatch.setattr(_sweep, "_write_predictions", _full)
    with pytest.raises(OSError) as raised:
        sweep_experiment(config, out=out, progress=False)
    _says_full(raised.value, out)


def test_sweep_experiment_on_a_full_disk_at_its_recorded_seeds_names_its_folder(store: Path, tmp_path: Path,
                                                                                monkeypatch) -> None:
    """Fewer seeds over a finished sweep rewrite each head's experiment.json before any run: a full disk
    there raised a bare "[Errno 28] No space left on device" naming no folder."""
    from w2v2ser.train import ExperimentConfig, _experiment, sweep_experiment

    out = tmp_path / "sweep"
    sweep_experiment(ExperimentConfig(stores=str(store), features="wav2vec2", seeds=2, recipe_overrides=FAST),
                     out=out, progress=False)
    _fail_writes(monkeypatch, _experiment, lambda path: path.name == "experiment.json", _full)
    with pytest.raises(OSError) as raised:
        sweep_experiment(ExperimentConfig(stores=str(store), features="wav2vec2", seeds=1, recipe_overrides=FAST),
                         out=out, progress=False)
    _says_full(raised.value, out)


def test_sweep_command_on_a_full_disk_names_its_folder(store: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from w2v2ser._cli import main
    from w2v2ser.train import _sweep

    out = tmp_path / "sweep"
    monkeypatch.setattr(_sweep, "_write_predictions", _full)
    assert main(["sweep", str(store), "--features", "wav2vec2", "--seeds", "1", "--set", "max_epochs=1",
                 "--no-progress", "--out", str(out)]) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"w2v2ser: error: {out}: No space left on device. Free space"), last


def test_write_report_on_a_full_disk_names_the_report_folder(store: Path, tmp_path: Path, monkeypatch) -> None:
    """PIL's write of a figure filled the disk: write_report raised a bare OSError naming no folder."""
    from w2v2ser.evaluate import _figures, write_report
    from w2v2ser.train import ExperimentConfig, train_experiment

    run = tmp_path / "run"
    train_experiment(ExperimentConfig(stores=str(store), features="egemaps", seeds=1, recipe_overrides=FAST),
                     out=run, progress=False)
    monkeypatch.setattr(_figures, "write_atomically", _full)
    with pytest.raises(OSError) as raised:
        write_report([run], out=tmp_path / "rep")
    _says_full(raised.value, tmp_path / "rep")


def _spectrogram_pipeline(tmp_path: Path, monkeypatch, *, seeds: int, extra: dict | None = None
                          ) -> tuple[Path, Any, Any]:
    """A one-experiment pipeline.yaml (spectrogram, ``seeds`` seeds) over a built store, run from
    ``tmp_path``: (its path, the loaded config, its (first) experiment). ``extra``: further settings
    of write_tiny_pipeline (e.g. a second experiment)."""
    from w2v2ser._config import load_pipeline

    make_tiny_corpus(tmp_path / "data")
    pipeline = write_tiny_pipeline(tmp_path, model="facebook/wav2vec2-base", features=("classic/spectrogram",),
                                   extra={"experiments.t.seeds": seeds, "experiments.t.recipe_overrides": FAST,
                                          **(extra or {})})
    config = load_pipeline(pipeline)
    experiment = config.experiments[0]
    build_store(config.store_path("classic", "ravdess"), utterances=ravdess_utterances(per_actor=1),
                features=("spectrogram",))  # stands for the extracted store: only stage 2 is under test
    monkeypatch.chdir(tmp_path)
    return pipeline, config, experiment



def _two_experiments_pipeline(tmp_path: Path, monkeypatch) -> tuple[Path, Any, Any]:
    """:func:`_spectrogram_pipeline` with one seed and a second experiment `u` (a grid of one spectrogram
    run), which must train when the first fails."""
    second = {"corpus": "ravdess", "grid": {"features": ["classic/spectrogram"]}, "head": "dense", "norm": "speaker",
              "seeds": 1, "units": 8, "recipe_overrides": FAST, "run_eagerly": True}
    return _spectrogram_pipeline(tmp_path, monkeypatch, seeds=1, extra={"experiments.u": second})

@needs_ravdess
def test_run_pipeline_on_a_full_disk_names_the_experiment_and_report_folders(tmp_path: Path, monkeypatch,
                                                                              capsys) -> None:
    """`w2v2ser run`'s train stage said "OSError: [Errno 28] No space left on device" per run, and its
    evaluate stage "report tiny: FAILED: [Errno 28] ...": no folder, no fix."""
    import keras

    from w2v2ser._run import run_pipeline
    from w2v2ser.evaluate import _figures

    pipeline, config, experiment = _spectrogram_pipeline(tmp_path, monkeypatch, seeds=1)
    with monkeypatch.context() as patch:
        patch.setattr(keras.Model, "save", _full)
        assert run_pipeline(pipeline, stage="train") == 1
    err = capsys.readouterr().err
    assert f"{experiment.run_dir}: No space left on device. Free space" in err, err
    assert run_pipeline(pipeline, stage="train") == 0  # space freed: the run trains
    (report,) = config.reports
    with monkeypatch.context() as patch:
        patch.setattr(_figures, "write_atomically", _full)
        assert run_pipeline(pipeline, stage="evaluate") == 1
    err = capsys.readouterr().err
    assert f"report {report.name}: FAILED: {report.out}: No space left on device. Free space" in err, err
    assert json.loads((experiment.run_dir / "results.json").read_text())["n_runs"] == 1


@needs_ravdess
def test_run_pipeline_on_a_full_disk_at_experiment_json_fails_that_experiment_naming_its_folder(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """`w2v2ser run`'s train stage writes experiment.json while it plans: a full disk there said
    "No space left on device" with no folder, and stopped the whole train stage."""
    import w2v2ser._stage_train as stage_train
    from w2v2ser._run import run_pipeline

    pipeline, config, experiment = _spectrogram_pipeline(tmp_path, monkeypatch, seeds=1)
    with monkeypatch.context() as patch:
        _fail_writes(patch, stage_train, lambda path: path.name == "experiment.json", _full)
        assert run_pipeline(pipeline, stage="train") == 1
    err = capsys.readouterr().err
    assert (f"train {experiment.name}: FAILED before training: {experiment.run_dir}: No space left on device. "
            f"Free space") in err, err
    failed = json.loads((experiment.run_dir / "failed.json").read_text())  # the report names the reason
    assert str(experiment.run_dir) in failed["reason"], failed


@needs_ravdess
@pytest.mark.parametrize("blocked", ["no permission", "a folder in the way"])
def test_run_pipeline_fails_only_the_experiment_whose_folder_cannot_be_written(tmp_path: Path, monkeypatch, capsys,
                                                                               blocked: str) -> None:
    """`w2v2ser run`'s train stage writes experiment.json while it plans: a permission error there, or a
    folder in the way of that file, stopped the whole train stage with a traceback (only a full disk
    failed that experiment alone); the other experiment did not train."""
    import w2v2ser._stage_train as stage_train
    from w2v2ser._run import run_pipeline

    pipeline, config, experiment = _two_experiments_pipeline(tmp_path, monkeypatch)
    other = config.experiments[1]
    blocked_file = experiment.run_dir / "experiment.json"
    if blocked == "no permission":  # as root, chmod refuses nothing: the write is refused as the OS would
        _fail_writes(monkeypatch, stage_train, lambda path: path == blocked_file, _denied)
        fix = "Use a path this user may read and write"
    else:
        blocked_file.mkdir(parents=True)
        fix = "expected a file path there"
    assert run_pipeline(pipeline, stage="train") == 1
    err = capsys.readouterr().err
    assert f"train {experiment.name}: FAILED before training: {blocked_file}: " in err, err
    assert fix in err, err
    failed = json.loads((experiment.run_dir / "failed.json").read_text())  # the report names the reason
    assert str(blocked_file) in failed["reason"] and fix in failed["reason"], failed
    assert json.loads((other.run_dir / "results.json").read_text())["n_runs"] == 1  # the other one trained


@needs_ravdess
def test_run_pipeline_fails_only_the_experiment_whose_results_json_cannot_be_written(tmp_path: Path, monkeypatch,
                                                                                     capsys) -> None:
    """After its runs, the train stage summarises each experiment: a permission error at its results.json
    stopped the stage with a traceback, and the experiments after it were not summarised."""
    from w2v2ser._run import run_pipeline
    from w2v2ser.train import _experiment

    pipeline, config, experiment = _two_experiments_pipeline(tmp_path, monkeypatch)
    other = config.experiments[1]
    blocked = experiment.run_dir / "results.json"
    _fail_writes(monkeypatch, _experiment, lambda path: path == blocked, _denied)
    assert run_pipeline(pipeline, stage="train") == 1
    err = capsys.readouterr().err
    assert (f"train {experiment.name}: FAILED to summarise its runs: {blocked}: Permission denied. Use a path this "
            f"user may read and write") in err, err
    assert str(blocked) in json.loads((experiment.run_dir / "failed.json").read_text())["reason"]
    assert json.loads((other.run_dir / "results.json").read_text())["n_runs"] == 1  # the other one is summarised


@needs_ravdess
def test_run_pipeline_on_a_full_disk_stops_that_experiments_further_runs(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    """A full disk was an ordinary per-run failure in `w2v2ser run`'s train stage: every further run of
    the experiment trained in full, only to fail at its save on the same disk."""
    import keras

    from w2v2ser._run import run_pipeline

    pipeline, config, experiment = _spectrogram_pipeline(tmp_path, monkeypatch, seeds=2)
    saves = []

    def full(*args, **kwargs):
        saves.append(1)
        _full()

    with monkeypatch.context() as patch:
        patch.setattr(keras.Model, "save", full)
        assert run_pipeline(pipeline, stage="train") == 1
    err = capsys.readouterr().err
    assert len(saves) == 1, err  # the second run is not tried
    assert (f"train {experiment.name}: FAILED, stopped (no further run tried on a full disk): "
            f"{experiment.run_dir}: No space left on device. Free space") in err, err
    assert run_pipeline(pipeline, stage="train") == 0  # space freed: both runs train
    assert json.loads((experiment.run_dir / "results.json").read_text())["n_runs"] == 2
