"""``w2v2ser predict``: emotion and class probabilities of new audio files with a trained run dir.

Features are extracted exactly as for training by running stage 1 in a subprocess
(``w2v2ser extract csv MANIFEST --store TMP --like RUN_DIR``: the feature settings the run dir
recorded; ``--like TRAINING_STORE`` for a run dir older than that record. Started with this
process's ``sys.path`` so that an uninstalled source tree works too), so this process
never imports torch; the frames are then read back with ``open_store`` and fed through the same
batching code as training (:class:`w2v2ser.train` ``FeatureBatches``: crop, pair averaging,
padding, mask).

Normalisation of an unseen speaker: by default the run's saved global statistics
(``normalisation.npz``, training speakers only) are used, also for runs trained with speaker
normalisation, because one file says nothing reliable about its speaker. When the caller groups
files by speaker (``speakers=[...]``), speaker-normalised runs use per-speaker statistics composed
from that speaker's new files (``compose_statistics`` on the temporary store); a group of fewer
than ``MIN_GROUP_FILES`` predicted files keeps the global statistics.

Ensembling: by default every model of the run dir (every fold × seed) predicts and the class
probabilities are averaged (arithmetic mean), which is more stable than any single seed; pass
``run="<fold>__seed<k>"`` to use one model.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import json
import logging
import os
import re
import shlex
import subprocess
import tempfile
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import numpy as np
from pydantic import Field, Strict

from w2v2ser._common import (EXIT_FAILED, FULL_DISK_ERRNOS, W2v2serError, as_paths, check_thread_environment,
                             did_you_mean, first_few, make_folder, owner_tag, python_command, remove_stale)
from w2v2ser._native_logs import expected_retracing
from w2v2ser._schema import validate
from w2v2ser.train import damaged_run_files, list_run_files
from w2v2ser.train._normalisation import MIN_SPEAKER_FILES

from ._errors import PredictError, RunDirError
from ._rundir import _configured_seeds, current_runs
from ._segments import Segment, cut_segments
from ._sweep import find_run_dirs

__all__ = ["Prediction", "predict_audio", "extract_features"]

# Speaker name given to files the caller did not group (global statistics are used for them).
UNGROUPED = "__ungrouped__"
# Fewest files of a speaker group normalised with their own statistics (why: MIN_SPEAKER_FILES).
MIN_GROUP_FILES = MIN_SPEAKER_FILES
SMALL_GROUP = "global (too few files in its speaker group)"
# What a folder passed to predict_audio contributes: the files with these suffixes below it.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au")
# Audio and video containers that libsndfile does not decode: inside a folder they are listed as
# failed files with the fix, not left out in silence.
UNREADABLE_SUFFIXES = (".m4a", ".m4b", ".aac", ".mp4", ".wma", ".webm", ".amr", ".3gp", ".mka", ".mkv", ".mov")
log = logging.getLogger("w2v2ser.evaluate")


@dataclass(frozen=True)
class Prediction:
    """Prediction for one audio file, or for one window of it (``segment``).

    Attributes:
        path: the audio file as given.
        emotion: most probable class, or None when the file could not be processed.
        probabilities: class name -> probability (sums to 1); empty on error.
        speaker: the speaker group given by the caller, or None.
        error: why the file could not be processed, or None.
        seconds: the file's duration, or None on error.
        seconds_used: how much of it, from its start, the models saw (the run's crop: the
            protocol's ``max_frames``); less than ``seconds`` for a file longer than the crop.
        resampled_to: the rate (Hz) the file was resampled to for a feature that training took at
            each file's own rate (eGeMAPS), because all the training audio had that rate and this
            file has another; None when it was not.
        normalisation: the statistics its features were normalised with: ``"speaker group"``
            (its group's new files), ``"global"`` (the run's training speakers),
            ``SMALL_GROUP`` (the same, for a file of a speaker group of fewer than
            ``MIN_GROUP_FILES`` predicted files in a speaker-normalised run) or ``"none"``; None on error.
        start: with ``segment``, where the window starts in the file (seconds); else None.
        end: with ``segment``, where it ends; else None. ``seconds`` is then the window's length.
        id: the utterance's id, for a prediction of a store's utterance (``predict_store``); else None.
        silent: the audio is digital silence after mixing to mono (every sample 0: a muted or
            zeroed recording, or stereo channels that cancel); its label says nothing of emotion.
        label: for a scored file (``predict_manifest``, ``predict_store``), the run's class its label
            maps to, the one ``emotion`` is compared with (``predictions.csv``'s ``label``); None for
            unlabelled audio, a label the run's protocol does not keep, or a file that failed.
    """

    path: Path
    emotion: str | None
    probabilities: Mapping[str, float] = field(default_factory=dict)
    speaker: str | None = None
    error: str | None = None
    seconds: float | None = None
    seconds_used: float | None = None
    resampled_to: int | None = None
    normalisation: str | None = None
    start: float | None = None
    end: float | None = None
    id: str | None = None
    silent: bool = False
    label: str | None = None

    @property
    def ok(self) -> bool:
        """True when the file was predicted."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (used by ``w2v2ser predict --json``)."""
        return {"path": str(self.path), "emotion": self.emotion, "probabilities": dict(self.probabilities),
                "speaker": self.speaker, "error": self.error, "seconds": self.seconds,
                "seconds_used": self.seconds_used, "resampled_to": self.resampled_to,
                "normalisation": self.normalisation, "start": self.start, "end": self.end, "id": self.id,
                "silent": self.silent, "label": self.label}


# extract's MIN_SAMPLES (400) at 16 kHz: stage 1's shortest audio (not imported: stage 2 needs no extract).
_SHORTEST_SECONDS = 0.025


def extract_features(manifest: Path, store: Path, *, like: str | Path, features: Sequence[str],
                     model: str | None = None, options: Sequence[str] = ()) -> str | None:
    """Run stage 1 in a subprocess: extract ``features`` of the manifest's files like ``like``.

    Kept as one small function so tests can replace it with a direct store writer.

    Args:
        model: Where the speech encoder's weights are now (``--model``), when not where ``like``
            recorded them; stage 1 checks they are the recorded weights.
        options: ``FEATURE.KEY=VALUE`` options that ``--like`` accepts (``egemaps.sample_rate=16000``).

    Returns:
        None when stage 1 finished; else the error it stopped with (exit 1) when it left a store
        whose finished files can still be labelled (the reason for the others).

    Raises:
        PredictError: the subprocess failed and left no readable store.
    """
    args = ["extract", "csv", str(manifest), "--store", str(store), "--like", str(like),
            "--features", ",".join(features), "--no-progress", *(["--model", model] if model else []),
            *(arg for option in options for arg in ("--option", option))]
    # follow_parent: a predict killed with SIGKILL takes its extraction child with it (Linux).
    proc = subprocess.run(python_command("w2v2ser._cli", *args, follow_parent=True), capture_output=True, text=True,
                          check=False)
    # Exit 1 leaves an incomplete store whose finished files can still be labelled; exit 2 (bad
    # input, e.g. a store that holds other files under the same ids) leaves nothing to trust.
    lines = [line for line in (proc.stderr or proc.stdout or "").splitlines() if line.strip()]
    said = [_in_predict_terms(line.split("error: ", 1)[1]) for line in lines if line.startswith("w2v2ser: error: ")]
    full = bool(said) and any(os.strerror(code) in said[-1] for code in FULL_DISK_ERRNOS)
    if full and not (Path(store) / "zarr.json").exists():  # not extract's "resumes where it stopped", nor --model
        error = PredictError(f"stage 1 could not extract the new audio's features: "
                             f"{_without_advice(said[-1])}. Free space there, or set "
                             f"TMPDIR or pass --work-dir DIR (work_dir=DIR) on a disk with room, then rerun")
        error.exit_code = EXIT_FAILED
        raise error
    if said and said[-1].endswith(_LIMIT_ADVICE) and not (Path(store) / "zarr.json").exists():
        error = PredictError(f"stage 1 could not extract the new audio's features: {said[-1]}")
        error.exit_code = EXIT_FAILED  # a limit, not bad input: the same command runs with more memory
        raise error
    if proc.returncode == 2 or (proc.returncode != 0 and not (Path(store) / "zarr.json").exists()):
        moved = "" if model else (" If the speech encoder's weights have moved since training, pass their new "
                                  "location: w2v2ser predict --model PATH (predict_audio(model=PATH)).")
        if said:  # stage 1's own one-line error, in predict's terms: predict has no --like to drop
            reason = re.sub(r"(; drop --like to extract with other options, or drop the option|, or drop --like)",
                            "", said[-1]).replace(f"--like {like}: ", "").replace(f"--like {like}", f"the training store {like}")
            raise PredictError(f"stage 1 could not extract the new audio's features as the training store {like} "
                               f"was made: {reason}{'' if reason.endswith('.') else '.'}{moved}")
        tail = "\n".join(lines)[-2000:]
        raise PredictError(f"feature extraction failed (exit {proc.returncode}) for manifest {manifest} "
                           f"like store {like}:\n{tail}\nCommand: w2v2ser {' '.join(args)}. Check that stage 1 "
                           f"is installed (pip install 'w2v2ser[extract]').{moved}")
    if proc.returncode == 0:
        return None
    # Only stage 1's own error line: the last line of a killed child (OOM, signal) may be any log line.
    if said:
        return said[-1].strip()
    if proc.returncode < 0:  # e.g. SIGKILL from the out-of-memory killer
        import signal

        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return f"stage 1 was killed by {name} (out of memory? see the system log) before it said why"
    return f"stage 1 exited with status {proc.returncode} without an error line"


_LIMIT_ADVICE = ("raise the limit (`ulimit -v`, `ulimit -u`, the job's --mem), then rerun the same command; predict "
                 "starts over, it keeps no part of a stopped run")


def _in_predict_terms(said: str) -> str:
    """Stage 1's error line, a memory limit's said in predict's terms: extract's advice names options
    predict does not have (--batch-seconds, --decode-workers, --threads) and says its finished work is
    kept, where predict keeps no part of a stopped run."""
    if said.startswith("the process ended abruptly"):
        return (f"stage 1 ended abruptly (killed, or a crash in native code; running out of memory or threads is "
                f"the usual cause): {_LIMIT_ADVICE}")
    what, sep, _ = said.partition(": raise the limit")
    if not sep or not what.startswith(("out of memory", "no new thread could start")):
        return said
    return f"{what}: {_LIMIT_ADVICE}"


# Where stage 1's advice on a full disk starts: StoreFullError's, then describe_path_error's (ENOSPC/EDQUOT, EFBIG).
# EFBIG's cut keeps "a per-file size limit was hit (`ulimit -f`, or a quota)": the only hint for such a limit.
_FULL_DISK_ADVICE = (": free disk space", ". Free space (or raise the quota)", ". Raise it, or write elsewhere")


def _without_advice(said: str) -> str:
    """Stage 1's full-disk error line without extract's advice ("another --out ...", "finished work is
    kept"), which predict replaces with its own: only what was full, e.g. "PATH: No space left on device"."""
    cut = min((said.find(marker) for marker in _FULL_DISK_ADVICE if marker in said), default=len(said))
    return said[:cut].rstrip(".")


def _stopped_reason(said: str, work: Path, *, temporary: bool,
                    what: str = "not extracted: stage 1 stopped before this file") -> str:
    """Why a file has no features when stage 1 stopped (``said``) before extracting it (or ``what`` else
    failed); a full disk names where predict keeps its temporary store and how to put it elsewhere."""
    reason = f"{what} ({said.rstrip('.')})"
    if not any(os.strerror(code) in said for code in FULL_DISK_ERRNOS) and "no space left" not in said.lower():
        return reason
    # Not extract's advice ("extraction resumes where it stopped"): predict starts over; its own follows.
    reason = f"{what} ({_without_advice(said)})"
    if temporary:
        return (f"{reason}. Predict extracts into a temporary folder ({work}, in {work.parent}, which TMPDIR "
                f"chooses): free space there, or set TMPDIR to a folder on a disk with room, or pass "
                f"--work-dir DIR (work_dir=DIR), then rerun")
    return f"{reason}. Free space in the work folder {work.parent}, or pass another --work-dir (work_dir=), then rerun"


@dataclass(frozen=True)
class _Branch:
    """One model input: which training store and selection feed it."""

    name: str
    alias: str
    store: str  # a local path or an object-store URL
    selection: str


@dataclass(frozen=True)
class _Like:
    """Where stage 1 takes one training store's feature settings from (``--like``)."""

    source: str  # the run dir (its experiment.json records them) or the training store
    features: Mapping[str, Any]  # feature name -> FeatureSpec
    rates: Mapping[str, set]  # feature name -> rates of the training audio behind it


@dataclass(frozen=True)
class _RunPlan:
    run_dir: Path
    config: Any  # w2v2ser.train ExperimentConfig
    classes: tuple[str, ...]
    models: tuple[Path, ...]
    branches: tuple[_Branch, ...]
    max_frames: int | None
    likes: Mapping[str, _Like]  # training store path (a branch's store) -> its feature settings


def _read_json(path: Path, *, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing; expected {what}. Pass a run directory written by "
                          "`w2v2ser train` whose training finished.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path} is unreadable ({exc}); expected {what} as JSON. Re-run `w2v2ser train` "
                          "for this experiment.") from exc


def _experiment_config(experiment: Mapping[str, Any], path: Path) -> Any:
    """ExperimentConfig from experiment.json (its own fields; store identities are ignored)."""
    import dataclasses

    from w2v2ser.train import ExperimentConfig

    source = experiment.get("config") if isinstance(experiment.get("config"), Mapping) else experiment
    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    try:
        return ExperimentConfig.from_dict({k: v for k, v in source.items() if k in names})
    except Exception as exc:  # noqa: BLE001 -- any config problem is a run-dir problem here
        raise RunDirError(f"{path}: cannot rebuild the experiment configuration ({exc}); the run dir was "
                          "written by another w2v2ser version. Retrain it with this version.") from exc


def _classes(run_dir: Path, results: Mapping[str, Any] | None, runs: Sequence[Path]) -> tuple[str, ...]:
    if results and results.get("classes"):
        return tuple(str(c) for c in results["classes"])
    for predictions in (run / "predictions.csv" for run in runs if (run / "predictions.csv").exists()):
        with open(predictions, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
        classes = tuple(h[2:] for h in header if h.startswith("p_"))
        if classes:
            return classes
    raise RunDirError(f"{run_dir}: no class names found (results.json 'classes' or runs/*/predictions.csv "
                      "p_<class> columns); the run dir is incomplete. Finish training first.")


def _plan(run_dir: Path, run: str | None, stores: Mapping[str | None, str] | None = None) -> _RunPlan:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "does not exist"
        raise RunDirError(f"run directory {run_dir} {what}; expected a folder written by `w2v2ser train`.")
    if (run_dir / "sweep.json").exists():
        raise RunDirError(f"{run_dir} is a layer-sweep folder (`w2v2ser sweep`), and a sweep saves no models. "
                          "To predict, train the selection you want with `w2v2ser train STORE --features "
                          "UPSTREAM:N` (or UPSTREAM:all) and pass that run directory.")
    if (run_dir / "skipped.json").exists():
        reason = _read_json(run_dir / "skipped.json", what="the skip reason").get("reason", "?")
        raise RunDirError(f"{run_dir} holds a skipped experiment ({reason}); it has no model to predict with.")
    if not (run_dir / "experiment.json").exists():  # a folder of run directories (runs/, experiments/)?
        inside = [found.relative_to(run_dir).as_posix() for found in find_run_dirs([run_dir]) if found != run_dir]
        trained = [name for name in inside if list_run_files(run_dir / name / "runs", "model.keras")]
        inside = trained or inside  # a sweep folder holds no models
        if inside:
            raise RunDirError(f"{run_dir} holds run directories, not one: {first_few(inside, 10)}. Pass one of "
                              f"them, e.g. "
                              f"{run_dir / inside[0]}.")
    experiment = _read_json(run_dir / "experiment.json", what="the experiment configuration")
    config = _experiment_config(experiment, run_dir / "experiment.json")
    results = None
    if (run_dir / "results.json").exists():
        results = _read_json(run_dir / "results.json", what="the aggregated results")
    # Runs of an older configuration that a later `train` into this folder did not replace are not
    # this run directory's models (current_runs).
    current = current_runs(run_dir, experiment)
    available = [r.name for r in current if (r / "model.keras").exists()]
    stale = sorted({p.parent.name for p in list_run_files(run_dir / "runs", "model.keras")} - set(available))
    if run is None and results is None and available:  # training stopped before all its runs had finished
        log.warning("%s: training has not finished (no results.json): predicting with the %d run(s) that have a "
                    "model (%s). Rerun the same `w2v2ser train` command to finish it.", run_dir, len(available),
                    first_few(available, 5))
    if run is not None:
        if run not in available:
            unfinished = run in stale and not (run_dir / "runs" / run / "metrics.json").exists()
            metrics = _read_json(run_dir / "runs" / run / "metrics.json", what="a run's metrics") if (
                run in stale and not unfinished) else None
            keys = {experiment.get(k) for k in ("config_key", "legacy_config_key")} - {None} if isinstance(
                experiment, dict) else set()
            # current_runs leaves out runs of this configuration's key whose seed is no longer one of its seeds
            # (a run without a config_key, written before it was recorded, counts as this configuration's)
            seed = metrics.get("seed") if isinstance(metrics, dict) and (
                not keys or metrics.get("config_key") in keys | {None}) else None
            configured = _configured_seeds(experiment)
            why = (" (it has no metrics.json: its training did not finish, or the file was lost; rerun the same "
                   "`w2v2ser train` command to train it again)" if unfinished else
                   f" (it is a run of this configuration, and its seed {seed} is one of experiment.json's seeds, "
                   f"but this run directory's results.json does not name it: a training of fewer seeds wrote it, "
                   f"such as one task of a SLURM array, or it was written while this run was unfinished; rerun "
                   f"`w2v2ser train` with every seed, which trains none that are finished, to write the "
                   f"results.json of all)" if isinstance(seed, int) and results is not None
                   and configured is not None and seed in configured else
                   f" (it is a run of this configuration, but its seed {seed} is not among the seeds of this run "
                   f"directory's results.json, or without one its experiment.json's first_seed and seeds: a later "
                   f"training with fewer or other seeds left it there; train with seeds that include {seed} to use "
                   f"it again)" if isinstance(seed, int) else
                   " (it is a run of another configuration than experiment.json's, left by an earlier "
                   "`w2v2ser train` into this folder)" if run in stale else "")
            raise RunDirError(f"--run {run!r} is not a trained run of {run_dir}{why}; expected one of "
                              f"{available or '(none: training has not finished a run)'}.")
        available = [run]
    if not available:
        metrics = [_read_json(r / "metrics.json", what="a run's metrics") for r in current]
        swept = any(isinstance(m, dict) and m.get("trained_by") == "sweep" for m in metrics)
        if swept:
            raise RunDirError(f"{run_dir} was trained by `w2v2ser sweep`, which saves no models. To predict with "
                              f"{config.features!r}, train it with `w2v2ser train STORE --features "
                              f"{config.features}` and pass that run directory.")
        if stale:
            raise RunDirError(f"{run_dir} holds only runs of another configuration than its experiment.json "
                              f"({first_few(stale, 5)}): `w2v2ser train` "
                              "was started there with new settings and has not finished a run yet. Run it "
                              "to completion first.")
        raise RunDirError(f"{run_dir} has no runs/*/model.keras; training has not finished any run. "
                          "Run `w2v2ser train` to completion first.")
    # The files predict reads; a changed predictions.csv does not change the predictions.
    damaged = [f"{name}: {'; '.join(problems)}" for name in available
               if (problems := damaged_run_files(run_dir / "runs" / name,
                                                 _read_json(run_dir / "runs" / name / "metrics.json",
                                                            what="a run's metrics"),
                                                 only=("model.keras", "normalisation.npz")))]
    if damaged:
        good = [name for name in available if not any(d.startswith(f"{name}: ") for d in damaged)]
        raise RunDirError(f"{len(damaged)} run(s) of {run_dir} are damaged: {' | '.join(damaged)}. Train the "
                          f"experiment again into this folder (`w2v2ser train ... --out {shlex.quote(str(run_dir))}` "
                          f"trains them "
                          f"again)" + (f", or pass --run with an intact run ({', '.join(good[:5])})." if good else "."))
    aliases = {name: config.store_alias(text) for name, text in config.selections().items()}
    paths = _moved_stores(run_dir, experiment, config, sorted(set(aliases.values())), current, stores) if stores else {}
    branches = tuple(_Branch(name, aliases[name], paths.get(aliases[name], config.stores[aliases[name]]), text)
                     for name, text in config.selections().items())
    max_frames = config.max_frames
    if max_frames is None:
        from w2v2ser.train import get_protocol

        max_frames = get_protocol(config.protocol).max_frames
    likes = {b.store: _like(run_dir, experiment, b.alias, b.store) for b in branches}
    return _RunPlan(run_dir, config, _classes(run_dir, results, current),
                    tuple(run_dir / "runs" / name / "model.keras" for name in available), branches, max_frames,
                    likes)


def _like(run_dir: Path, experiment: Mapping[str, Any], alias: str, store_path: str) -> _Like:
    """The feature settings new audio is extracted with: the run dir's record when it has the whole
    of it (runs since the record holds the audio rates), so the training store need not exist and a
    store rebuilt at its path with other settings cannot change them; else the training store, which
    must still hold the recorded settings."""
    from w2v2ser._common import ConfigError
    from w2v2ser.extract import features_like

    identity = experiment.get("stores_identity")
    entry = identity.get(alias) if isinstance(identity, Mapping) else None
    entry = entry if isinstance(entry, Mapping) else {}
    if "audio_rates" in entry:
        try:
            features, rates = features_like(run_dir)
        except ConfigError:  # one feature read from two stores with different settings: its store decides
            pass
        else:
            return _Like(str(run_dir), features, rates)
    try:  # the training store's own features and audio rates
        features, rates = features_like(store_path)
    except W2v2serError as exc:
        raise PredictError(f"the training store {store_path} cannot be opened ({exc}). If the training store "
                           f"has moved, pass its new location: w2v2ser predict --store PATH "
                           f"(predict_audio(stores={{None: PATH}})). A run directory that this version of w2v2ser "
                           f"trains needs no store: it records the feature settings and statistics itself.") from None
    recorded = entry.get("features") if isinstance(entry.get("features"), Mapping) else {}
    changed = sorted(name for name, spec in recorded.items() if name in features and isinstance(spec, Mapping)
                     and _differs(features[name].config, spec.get("config")))
    if changed:
        raise PredictError(f"the training store {store_path} now holds {', '.join(changed)} with other settings than "
                           f"run dir {run_dir} was trained with (its experiment.json), so new audio would not get "
                           "the training features. Restore the store the run was trained on, or train the run "
                           "again on this store.")
    return _Like(store_path, features, rates)


def _comparable_configs(config: Mapping[str, Any], recorded: Mapping[str, Any]) -> tuple[Any, Any]:
    """Two extractor configs as a store's own resume check compares them: the model location of
    ``recorded`` kept when both name the same weights (sha256), and a speech encoder's ``runtime``
    and ``max_seconds`` left out on each side (they change no value; ``extract --like`` takes them)."""
    from w2v2ser.extract._models import keep_recorded_location  # no torch
    from w2v2ser.store._writer import _comparable

    return _comparable(keep_recorded_location(config, recorded)), _comparable(dict(recorded))


def _differs(config: Mapping[str, Any], recorded: Any) -> bool:
    """Whether an extractor config differs from the recorded one in a key both have (a key one
    version of w2v2ser records and another not is no change of the features), compared as
    ``_comparable_configs`` gives them."""
    if not isinstance(recorded, Mapping):
        return False
    mine, theirs = _comparable_configs(config, recorded)
    return any(json.dumps(mine[k], sort_keys=True, default=str) != json.dumps(theirs[k], sort_keys=True, default=str)
               for k in set(mine) & set(theirs))


def _moved_stores(run_dir: Path, experiment: Mapping[str, Any], config: Any, aliases: Sequence[str],
                  runs: Sequence[Path], stores: Mapping[str | None, str]) -> dict[str, str]:
    """New locations of training stores (``stores=``: alias -> path, or None -> path for a run of one
    store), each checked to be the store the run was trained on: the same features with the same
    settings, and the same utterances (the runs' data fingerprint)."""
    import dataclasses

    from w2v2ser.store import open_store
    from w2v2ser.train._experiment import _same_data, _statistics_rule_changed, data_fingerprint

    out: dict[str, str] = {}
    for alias, path in stores.items():
        if alias is None:
            if len(aliases) != 1:
                raise PredictError(f"run dir {run_dir} reads {len(aliases)} stores ({', '.join(aliases)}); give "
                                   f"each moved one as ALIAS=PATH: "
                                   f"{' '.join(f'--store {a}=PATH' for a in aliases)}.")
            alias = aliases[0]
        if alias not in aliases:
            raise PredictError(f"--store names store alias {alias!r}, but run dir {run_dir} reads "
                               f"{', '.join(aliases)}.{did_you_mean(alias, aliases)}")
        out[alias] = str(path)
    recorded = experiment.get("stores_identity") if isinstance(experiment.get("stores_identity"), Mapping) else {}
    for alias, path in out.items():
        specs = open_store(path).features  # raises StoreError naming the path when it is not a store
        trained = (recorded.get(alias) or {}).get("features") or {}
        for name, spec in trained.items():
            found = specs[name].to_dict() if name in specs else None
            configs = found is not None and isinstance(found.get("config"), Mapping) and isinstance(spec.get("config"), Mapping)
            if configs:
                # As --from-store and a store's resume: runtime, max_seconds and the same weights' location may
                # change, and a key one side records (another w2v2ser version's) or the description is no change.
                mine, theirs = _comparable_configs(found["config"], spec["config"])
                found, spec = {**found, "config": mine}, {**spec, "config": theirs}
            if found is None or (any(found.get(k) != spec.get(k) for k in ("dim", "layers", "frame_rate", "dtype"))
                                 or _differs(found["config"], spec["config"]) if configs else found != spec):
                # The keys that differ, as --from-store names them (the whole config was cut at 300 characters).
                why = (f"holds {', '.join(specs) or 'no feature'}, not {name!r}, which run dir {run_dir} was "
                       f"trained on" if found is None else
                       f"holds {name!r} with other settings "
                       f"({_setting_differences(found, spec, absent_differs=not configs)}) than run dir "
                       f"{run_dir} was trained with")
                raise PredictError(f"store {path} (given for {alias!r}) {why}, from "
                                   f"{recorded[alias].get('path', '?')}. Pass the store the run was trained on, "
                                   "at its new location.")
    for alias in sorted(set(aliases) - set(out)):  # the fingerprint reads every store of the run
        try:
            open_store(config.stores[alias])
        except W2v2serError as exc:
            raise PredictError(f"store {alias!r} of run dir {run_dir} cannot be opened where training read it "
                               f"({exc}); if it has moved too, give it as well: --store {alias}=PATH.") from None
    fingerprints = {r.name: m.get("data_fingerprint") for r in runs
                    if isinstance(m := _read_json(r / "metrics.json", what="a run's metrics"), Mapping)}
    recorded_data = set(fingerprints.values()) - {None}
    given = data_fingerprint(dataclasses.replace(config, stores={**config.stores, **out})) if recorded_data else ""
    # A run trained before its statistics left out the labels the protocol drops read this same store.
    if recorded_data and not any(_same_data(r, given) or _statistics_rule_changed(r, given) for r in recorded_data):
        raise PredictError(f"the store(s) given with --store ({', '.join(out.values())}) hold other utterances "
                           f"than run dir {run_dir} was trained on (ids, speakers, labels, audio, their order or their "
                           "frames differ), so its statistics would not be the training ones. Pass the store the run was trained "
                           "on, at its new location.")
    older = [name for name, recorded in fingerprints.items()
             if not _same_data(recorded, given) and _statistics_rule_changed(recorded, given)]
    if older:
        log.warning("run(s) %s of %s composed their normalisation statistics over every label, and predict now "
                    "leaves out the labels protocol %s drops, so their predictions differ from what they measured: "
                    "retrain them (the same `w2v2ser train` with --out %s trains them again)", first_few(older), run_dir,
                    config.protocol, run_dir)
    return out


_ABSENT = object()  # a key one side does not record (told apart from a recorded None)


def _setting_differences(found: Mapping[str, Any], trained: Mapping[str, Any], *, width: int = 80,
                         absent_differs: bool = True) -> str:
    """``key: FOUND, not TRAINED`` for each setting of two feature specs (``FeatureSpec.to_dict()``
    form) that differs, values shortened to ``width`` characters (an extractor config holds long
    lists and provenance). The one text of predict's --store and --from-store refusals.

    Extractor config keys come first (a section's, such as ``provenance``, key by key, and other
    weights' ``weights_sha256`` before all), then the spec's own keys; a key one side lacks reads
    ``(absent)``, or is left out with ``absent_differs=False`` (a refusal that, as ``_differs``,
    takes a key one version records and another does not for no change). The description follows
    the config, so it is named only when nothing else differs.
    """
    def brief(value: Any) -> str:
        text = "(absent)" if value is _ABSENT else repr(value)
        return text if len(text) <= width else f"{text[:width - 3]}..."

    def differing(a: Mapping[str, Any], b: Mapping[str, Any], skip: tuple[str, ...] = ()) -> list[tuple]:
        def same(k: str) -> bool:
            if (k in a) != (k in b):
                return not absent_differs
            return json.dumps(a[k], sort_keys=True, default=str) == json.dumps(b[k], sort_keys=True, default=str)

        return [(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b), key=str)
                if k not in skip and not same(k)]

    found_config, trained_config = found.get("config"), trained.get("config")
    found_config = found_config if isinstance(found_config, Mapping) else {}
    trained_config = trained_config if isinstance(trained_config, Mapping) else {}
    pairs = []
    for k, a, b in differing(found_config, trained_config):  # a section's keys by name (provenance.weights_sha256)
        pairs += ([(f"{k}.{key}", *rest) for key, *rest in differing(a, b)] if isinstance(a, Mapping)
                  and isinstance(b, Mapping) else [(k, a, b)])
    pairs.sort(key=lambda pair: not pair[0].endswith("weights_sha256"))  # other weights: the reason, first
    pairs += differing(found, trained, skip=("config", "description"))
    if not pairs:
        pairs = [("description", found.get("description", _ABSENT), trained.get("description", _ABSENT))]
    return "; ".join(f"{k}: {brief(a)}, not {brief(b)}" for k, a, b in pairs)


def _write_manifest(path: Path, files: Sequence[Path], speakers: Sequence[str]) -> list[str]:
    """CSV manifest for stage 1; ids are positional so results map back without path games."""
    ids = [f"predict{i:05d}" for i in range(len(files))]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "speaker", "id"])
        for uid, file, speaker in zip(ids, files, speakers):
            writer.writerow([str(file), "unknown", speaker, uid])
    return ids


class _GroupedNormaliser:
    """Per-speaker statistics for grouped speakers, the run's global statistics for the rest."""

    def __init__(self, speaker_norm: Any, fallback: Any) -> None:
        self.speaker_norm, self.fallback = speaker_norm, fallback

    def _for(self, speaker: str) -> Any:
        return self.speaker_norm if speaker in self.speaker_norm.speaker_mean else self.fallback

    def moments(self, speaker: str) -> tuple[np.ndarray, np.ndarray] | None:
        return self._for(speaker).moments(speaker)

    def apply(self, frames: np.ndarray, speaker: str) -> np.ndarray:
        return self._for(speaker).apply(frames, speaker)


def _global_normaliser(plan: _RunPlan, model: Path, branch: _Branch, selection: Any) -> Any:
    """The run's global statistics: ``normalisation.npz`` when it holds them, else composed from
    the training speakers of that run (metrics.json split) in the training store."""
    from w2v2ser import DataError
    from w2v2ser.store import open_store
    from w2v2ser.train import build_normaliser, load_normalisers

    for npz in (model.parent / "normalisation.npz", plan.run_dir / "normalisation.npz"):
        if npz.exists():
            try:  # a speaker-normalised run now saves the training speakers' global statistics too
                saved = load_normalisers(npz, global_fallback=True).get(branch.name)
            except DataError as exc:  # a truncated or damaged file
                raise RunDirError(f"cannot read the run's normalisation statistics in {npz.parent}: {exc} "
                                  "Or pass --run to use another one.") from None
            if saved is not None:  # global_fallback=True returns only global statistics
                return saved
            break
    metrics = model.parent / "metrics.json"
    split = _read_json(metrics, what="the run's metrics").get("split", {}) if metrics.exists() else {}
    train_speakers = list(split.get("train") or [])
    try:
        store = open_store(branch.store)
    except Exception as exc:  # noqa: BLE001 -- reported with the fix below
        raise PredictError(f"no saved global statistics for branch {branch.name!r} in {model.parent} and the "
                           f"training store {branch.store} cannot be opened ({exc}); restore the training "
                           "store, pass its new location (--store PATH), or retrain the run.") from exc
    return build_normaliser(store, selection, "global", train_speakers=train_speakers or store.speakers(),
                            speakers=[])


def _normaliser(plan: _RunPlan, model: Path, branch: _Branch, selection: Any, temp_store: Any,
                groups: Sequence[str], utterances: Sequence[str] | None = None) -> Any:
    from w2v2ser.train import Normaliser, build_normaliser

    mode = plan.config.norm
    if mode == "none":
        return Normaliser("none")
    fallback = _global_normaliser(plan, model, branch, selection)
    if mode == "speaker" and groups:
        per_speaker = build_normaliser(temp_store, selection, "speaker", train_speakers=[], speakers=groups,
                                       utterances=utterances)
        return _GroupedNormaliser(per_speaker, fallback)
    return fallback


def ensemble_probabilities(plan: _RunPlan, stores: Mapping[str, Any], items: Sequence[Any], *, batch_size: int,
                           grouped: Sequence[str], utterances: Sequence[str] | None = None) -> np.ndarray:
    """Class probabilities [items, classes] of ``items`` (``w2v2ser.train.Item``), averaged over every
    model of the run: each branch reads the store that ``stores`` gives for its training store.

    Args:
        grouped: Speakers normalised with their own statistics (speaker-normalised runs); the
            others get the run's global statistics.
        utterances: Compose those speakers' statistics over these utterances only (None: all).
    """
    check_thread_environment()  # before TensorFlow starts: it aborts the process on a negative count
    import keras

    # Registers the custom layers model.keras files use: those of train/_layers.py and any a head
    # module defines beside its head.
    import w2v2ser.train._heads  # noqa: F401

    from w2v2ser.train import FeatureBatches, Source, resolve_selection
    from w2v2ser.train._dataset import STATS_SUFFIX

    selections = {b.name: resolve_selection(b.selection, specs=stores[b.store].features, alias=b.alias)
                  for b in plan.branches}
    total = np.zeros((len(items), len(plan.classes)), dtype=np.float64)
    for model_path in plan.models:
        try:
            model = keras.saving.load_model(model_path, compile=False)
        except Exception as exc:  # noqa: BLE001 -- keras raises many types for a bad file
            unknown = re.search(r"Could not locate class '(\w+)'", str(exc))
            if unknown:  # an intact file whose layer class this w2v2ser does not register
                raise RunDirError(f"cannot load model {model_path}: it uses the Keras class {unknown[1]!r}, which "
                                  f"this w2v2ser does not define. Predict with the w2v2ser (and any extension "
                                  f"module) that trained the run, importing the module that registers "
                                  f"{unknown[1]!r} first.") from exc
            raise RunDirError(f"cannot load model {model_path} ({type(exc).__name__}: {exc}); the file is "
                              "corrupt or from another Keras version. Retrain this run or pass --run "
                              "to use another one.") from exc
        # A model trained on streamed batches may normalise a branch itself: it takes <branch>_stats.
        takes = {t.name for t in model.inputs}
        sources = [Source(b.name, stores[b.store], selections[b.name],
                          _normaliser(plan, model_path, b, selections[b.name], stores[b.store], grouped, utterances),
                          fold=b.name + STATS_SUFFIX in takes)
                   for b in plan.branches]
        batches = FeatureBatches(items, sources, classes=plan.classes, batch_size=batch_size,
                                 max_frames=plan.max_frames, shuffle=False, cache="off", workers=1)
        with expected_retracing():  # each loaded model traces its own step: by design, not a problem
            probs = np.concatenate([np.asarray(model.predict_on_batch(inputs), dtype=np.float64)
                                    for inputs, _ in batches.iterate()])
        if probs.shape != total.shape:
            raise RunDirError(f"model {model_path} outputs {probs.shape[1]} classes, but the run records "
                              f"{len(plan.classes)} ({', '.join(plan.classes)}); the run dir is inconsistent.")
        total += probs
    return total / total.sum(axis=1, keepdims=True)  # mean over models, renormalised against float32 rounding


def predict_audio(run_dir: str | Path, paths: str | Path | Sequence[str | Path], *,
                  speakers: str | Sequence[str] | None = None,
                  work_dir: Path | None = None, run: str | None = None,
                  batch_size: int = 16, model: str | Path | None = None,
                  stores: Mapping[str | None, str | Path] | None = None,
                  segment: float | Literal["crop"] | None = None,
                  labels: Sequence[str] | None = None) -> list[Prediction]:
    """Predict the emotion of audio files with the models of a trained run directory.

    Features are extracted in a subprocess with the training store's recorded extractor
    configuration (this process never imports torch). Every model of the run dir (folds × seeds)
    predicts and the class probabilities are averaged, unless ``run`` picks one model.

    Args:
        run_dir: run directory written by ``w2v2ser train``.
        paths: audio files (any format stage 1 reads), or folders, or one file or folder: the
            audio files below a folder (``AUDIO_SUFFIXES``; hidden files left out), sorted, take
            its place. Files of formats stage 1 cannot decode (``UNREADABLE_SUFFIXES``: m4a, aac,
            wma, mp4, ...) are returned as failed, with the conversion to make.
        speakers: optional speaker group per path (a folder's applies to every file in it) or
            per file, or one name for every path; with a speaker-normalised run, each group is
            normalised with statistics of its own new files (a group of fewer than
            ``MIN_GROUP_FILES`` predicted files keeps the global ones). Without it, the run's
            global (training speakers) statistics are used. With ``segment``, a group's windows
            count as its files: one long recording given a group gets statistics of its own.
        work_dir: keep the manifest and temporary stores there, in a new ``predict-*`` folder per
            call (default: a deleted temp folder).
        run: one run of the run dir, e.g. ``"split__seed0"`` (``FOLD__seedK``, a folder of ``runs/``) (default: all, probabilities averaged).
        batch_size: utterances per model call.
        model: the speech encoder (hub id, local folder or fairseq checkpoint) when its weights
            are no longer where the training store recorded them; they must be the same weights
            (stage 1 compares their sha256 with the recorded ones).
        stores: new locations of training stores that have moved since training: store alias ->
            path or URL (``{None: path}`` for a run of one store). Each must hold the run's
            features with the settings recorded in ``experiment.json``.
        segment: label long recordings window by window: each file is cut into consecutive
            windows of this many seconds (``"crop"``: the run's crop, what its models see of an
            utterance), each predicted on its own; a last window shorter than a quarter of a
            window joins the one before it (with ``"crop"``: a last window of the crop's length
            ends the recording, overlapping the one before it, so every window is seen whole; so does a tail whose
            joined window would be longer than the run's speech-encoder ``max_seconds``, and a longer window is
            refused). Default: one prediction per file, of its start.
        labels: the files' labels when known, one per path (a folder's applies to every file in
            it) or per file, or one label for every path: a speaker group's statistics are composed over its files whose labels
            the run's protocol keeps (IEMOCAP's xxx, fru... left out, as in training); a group
            with none of them, over all its files, with a note. Default: over all of them.

    Returns:
        One :class:`Prediction` per file, in order (with ``segment``, one per window, in order,
        with ``start`` and ``end``); files that failed carry ``error``.

    Raises:
        RunDirError: the run dir lacks a configuration, classes or models.
        PredictError: bad arguments or feature extraction failed as a whole.
    """
    paths = as_paths(paths)
    validate(Annotated[int, Strict(), Field(ge=1)], batch_size, where="predict_audio.batch_size", error=PredictError)
    validate(Optional[Union[Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)], Literal["crop"]]], segment,
             where="predict_audio.segment", error=PredictError)
    files, origin = _expand_folders(paths)
    if not files:
        raise PredictError("predict_audio received no audio paths; expected at least one file.")
    check_thread_environment()  # now, not after stage 1's extraction
    if speakers is not None:
        speakers = [speakers] * len(paths) if isinstance(speakers, str) else [str(s) for s in speakers]
        if len(speakers) == len(paths) != len(files):  # one per path: a folder's speaker for each file in it
            speakers = [speakers[k] for k in origin]
        if len(speakers) != len(files) or not all(s.strip() for s in speakers):
            raise PredictError(f"speakers has {len(speakers)} entries for {len(paths)} paths and {len(files)} files "
                               f"(a folder counts as the audio files inside it; or an empty entry was given); "
                               "expected one non-empty speaker name per path (a folder's applies to every file "
                               "in it) or per file, in the same order.")
    if labels is not None:
        labels = [labels] * len(paths) if isinstance(labels, str) else list(labels)  # one str: every path's
        missing = [k for k, label in enumerate(labels) if label is None]
        if missing:
            raise PredictError(f"labels holds None at position(s) {first_few([str(k) for k in missing])}; expected a label per path "
                               "or per file (an empty string for a file without one).")
        labels = [str(label) for label in labels]
        if len(labels) == len(paths) != len(files):
            labels = [labels[k] for k in origin]
        if len(labels) != len(files):
            raise PredictError(f"labels has {len(labels)} entries for {len(paths)} paths and {len(files)} files; "
                               "expected one label per path or per file, in the same order.")
    plan = _plan(Path(run_dir), run, {k: str(v) for k, v in stores.items()} if stores else None)
    if model is not None:
        _check_model_option(plan, str(model))
    groups = list(speakers) if speakers is not None else [UNGROUPED] * len(files)
    errors: dict[int, str] = {}
    for i, file in enumerate(files):
        if file.is_dir():
            errors[i] = (f"folder {file} holds no audio file ({', '.join(AUDIO_SUFFIXES)}); pass audio files "
                         f"or folders that hold them")
        elif not file.is_file():
            errors[i] = f"file not found: {file}"
        elif file.suffix.lower() in UNREADABLE_SUFFIXES:
            errors[i] = (f"{file}: {file.suffix} files cannot be decoded here (libsndfile reads "
                         f"{', '.join(AUDIO_SUFFIXES)}); convert it, e.g. `ffmpeg -i IN -ac 1 -ar 16000 OUT.wav`")
    todo = [i for i in range(len(files)) if i not in errors]
    seconds = _crop_seconds(plan) if segment == "crop" else segment
    # The window as the CLI's option and as this function's keyword give it (a message reaches both users).
    given = (f"--segment without a value (segment='crop', the run's crop: {seconds:g} s)" if segment == "crop"
             else f"--segment {seconds:g} (segment={seconds:g})") if seconds is not None else ""
    if seconds is not None and seconds < _SHORTEST_SECONDS:  # every window would fail in stage 1, one by one
        raise PredictError(f"{given}: windows must be at least {_SHORTEST_SECONDS:g} s (400 samples at "
                           f"16 kHz, the shortest audio w2v2ser takes); give a longer window, e.g. 2")
    if segment == "crop" and seconds is None:
        raise PredictError(f"segment='crop' takes the window length from the run's crop, but run dir {run_dir} "
                           f"trained on whole utterances (no max_frames); give the window in seconds, e.g. 5.")
    longest = _longest_seconds(plan)
    if seconds is not None and longest is not None and seconds > longest:  # every window would fail in stage 1
        crop = "" if segment == "crop" else ", or --segment without a value (the run's crop)"
        raise PredictError(f"{given}: windows must be at most {longest:g} s, the max_seconds the run's "
                           f"speech encoder was extracted with (the longest audio it takes at once); give a shorter "
                           f"window{crop}")
    windows: list[tuple[int, Segment | None]] = []  # (file position, its window; None: the whole file)
    found: dict[int, tuple[np.ndarray, float, float, int | None, str, bool]] = {}
    failed: dict[int, str] = {}  # window position -> why
    if todo:
        with _work_folder(work_dir) as work:
            windows = _windows(files, todo, seconds, work / "segments", within=segment == "crop", errors=errors,
                               longest=longest)
            failed.update({k: w.error for k, (_, w) in enumerate(windows) if w is not None and w.error})
            found = _predict_files(plan, [files[i] if w is None else w.path for i, w in windows],
                                   [groups[i] for i, _ in windows], [k for k in range(len(windows)) if k not in failed],
                                   failed, work,
                                   batch_size, model=model, temporary=work_dir is None,
                                   labels=None if labels is None else [labels[i] for i, _ in windows])
    out = []
    by_file = collections.defaultdict(list)
    for k, (i, window) in enumerate(windows):
        by_file[i].append(k)
    for i, file in enumerate(files):
        speaker = speakers[i] if speakers is not None else None
        if i not in by_file:
            out.append(Prediction(file, None, {}, speaker, errors.get(i, "not extracted (no reason recorded)")))
        for k in by_file.get(i, []):
            window = windows[k][1]
            where = {} if window is None else {"start": window.start, "end": window.end}
            if k not in found:
                reason = failed.get(k, "not extracted (no reason recorded)")
                if window is not None and window.path != file:  # stage 1 named the window's WAV, deleted by now
                    for written in {str(window.path.resolve()), str(window.path)}:
                        reason = reason.replace(written, f"{file} (window {window.start:.2f}-{window.end:.2f} s)")
                out.append(Prediction(file, None, {}, speaker, reason if window else _too_long_advice(reason),
                                      **where))
                continue
            values, length, seconds_used, resampled_to, normalisation, silent = found[k]
            probs = {c: float(p) for c, p in zip(plan.classes, values)}
            out.append(Prediction(file, max(probs, key=probs.__getitem__), probs, speaker,
                                  seconds=length, seconds_used=seconds_used, resampled_to=resampled_to,
                                  normalisation=normalisation, silent=silent, **where))
    return out


def _too_long_advice(reason: str) -> str:
    """Stage 1's reason for a file over a speech encoder's ``max_seconds``, with predict's advice:
    its ``--option`` rerun does not exist here, where ``--segment`` labels such a file in windows."""
    found = re.match(r"(.* s long, over \w+\.max_seconds=\S+) \(", reason)
    if found is None:
        return reason
    return (f"{found.group(1)} (the run's extraction settings); label a long recording window by window with "
            f"--segment [SECONDS] (predict_audio(..., segment=SECONDS)), or split the file")


@contextlib.contextmanager
def _work_folder(work_dir: Path | None) -> Iterator[Path]:
    """A new ``predict-*`` folder inside ``work_dir`` (kept), or a temporary one (deleted)."""
    if work_dir is None:
        # Those of earlier predicts killed with SIGKILL (which cannot clean up); not those of live ones.
        remove_stale(tempfile.gettempdir(), "w2v2ser-predict-")
        try:
            made = tempfile.TemporaryDirectory(prefix=f"w2v2ser-predict-{owner_tag()}.")
        except OSError as exc:  # TMPDIR unwritable or full: say which folder and how to choose another
            raise PredictError(f"cannot make predict's temporary folder in {tempfile.gettempdir()} ({exc.strerror}); "
                               f"set TMPDIR to a writable folder with free space, or pass --work-dir DIR "
                               f"(work_dir=DIR)") from None
        with made as tmp:
            yield Path(tmp)
        return
    # A new folder per call: a store left by an earlier call holds other files under the same
    # positional ids, and resuming into it returned their predictions for the new files.
    make_folder(work_dir)
    yield Path(tempfile.mkdtemp(prefix="predict-", dir=work_dir))


def _windows(files: Sequence[Path], todo: Sequence[int], seconds: float | None,
             folder: Path, *, within: bool = False, errors: dict[int, str] | None = None,
             longest: float | None = None) -> list[tuple[int, Segment | None]]:
    """(file position, window) of every file to predict: the whole file (None) without ``seconds``
    (``within``, ``longest``: see cut_segments); a truncated file gets no window and its reason in ``errors``."""
    from w2v2ser.extract import AudioError

    out: list[tuple[int, Segment | None]] = []
    for i in todo:
        if seconds is None:
            out.append((i, None))
            continue
        try:
            out += [(i, window) for window in cut_segments(files[i], seconds, folder / f"{i:05d}", within=within,
                                                                longest=longest)]
        except AudioError as error:  # truncated: refused as stage 1 refuses the whole file
            if errors is None:
                raise
            errors[i] = str(error)
        except (RuntimeError, TypeError):  # not decodable: stage 1 reports the file with its reason
            out.append((i, None))
    return out


def _longest_seconds(plan: _RunPlan) -> float | None:
    """The shortest ``max_seconds`` of the run's speech encoders (the longest audio stage 1 extracts
    for them); None when the run reads none, or none has a limit."""
    limits = [plan.likes[b.store].features[name].config.get("max_seconds") for b in plan.branches
              for name in _upstream_features(plan.likes[b.store], [resolve_feature(b.selection)])]
    return min((float(limit) for limit in limits if limit is not None), default=None)


def _crop_seconds(plan: _RunPlan) -> float | None:
    """Seconds of an utterance the run's models see: the protocol's ``max_frames`` at the features'
    rate (after pair averaging); None when the run trained on whole utterances."""
    from w2v2ser.train import resolve_selection

    if plan.max_frames is None:
        return None
    rate = min(resolve_selection(b.selection, specs=plan.likes[b.store].features, alias=b.alias).frame_rate
               for b in plan.branches)
    return plan.max_frames / rate


def _upstream_features(like: _Like, features: Sequence[str]) -> list[str]:
    """The speech-encoder features (hidden states of a ``model``) among ``features`` of a training store."""
    specs = like.features
    return [name for name in features if name in specs and "model" in specs[name].config]


def _check_model_option(plan: _RunPlan, model: str) -> None:
    """``model=`` replaces the location of exactly one speech encoder of the run's stores."""
    stores = sorted({b.store for b in plan.branches})
    found = {(store, name) for store in stores
             for name in _upstream_features(plan.likes[store], [resolve_feature(b.selection) for b in plan.branches
                                                                if b.store == store])}
    if len(found) != 1:
        what = ("reads no speech-encoder features (" + ", ".join(b.selection for b in plan.branches) + ")"
                if not found else f"reads {len(found)} speech encoders ({', '.join(n for _, n in sorted(found))})")
        raise PredictError(f"the model option ({model!r}) gives the location of the run's speech encoder, but run dir "
                           f"{plan.run_dir} {what}; drop the model option"
                           + (" (its features need no model)." if not found else ", or move the weights back."))


def _expand_folders(paths: list[Path]) -> tuple[list[Path], list[int]]:
    """Each folder becomes the audio files below it, sorted, those in formats that cannot be decoded
    included, to be reported (hidden files such as macOS ``._`` forks left out); a folder without
    any stays, to be reported. Also returns, per file, the
    position of the path it came from."""
    out: list[Path] = []
    origin: list[int] = []
    for k, path in enumerate(paths):
        found: list[Path] = []
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES + UNREADABLE_SUFFIXES
                           and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
        entries = found or [path]
        out += entries
        origin += [k] * len(entries)
    return out, origin


def _predict_files(plan: _RunPlan, files: list[Path], groups: list[str], todo: list[int],
                   errors: dict[int, str], work: Path, batch_size: int, *,
                   model: str | Path | None = None, temporary: bool = False,
                   labels: Sequence[str] | None = None) -> dict[int, tuple[np.ndarray, float, float, int | None, str, bool]]:
    """Extract, read back and predict the files at positions ``todo``; fills ``errors``
    (``temporary``: ``work`` is a temporary folder, which TMPDIR places; ``labels``: the files',
    for the utterances a group's statistics compose).

    Returns:
        position -> (class probabilities, file seconds, seconds the models saw, rate resampled to,
        normalisation used, whether the audio is digital silence).
    """
    from w2v2ser.store import open_store
    from w2v2ser.train import Item

    manifest = work / "manifest.csv"
    try:
        ids = _write_manifest(manifest, [files[i].resolve() for i in todo], [groups[i] for i in todo])
    except OSError as exc:  # a full disk names no file here: say which folder, and predict's own advice
        if exc.errno not in FULL_DISK_ERRNOS:
            raise
        error = PredictError(_stopped_reason(f"{manifest}: {exc.strerror}", work, temporary=temporary,
                                             what="could not write predict's manifest"))
        error.exit_code = EXIT_FAILED
        raise error from exc
    position = dict(zip(ids, todo))
    # One temporary store per training store: the fusion head may read two stores.
    temp: dict[str, Any] = {}
    resampled: dict[str, int] = {}  # utterance id -> rate it was resampled to
    stopped: list[str] = []  # the errors stage 1 stopped with, leaving unextracted files
    for k, store_path in enumerate(sorted({b.store for b in plan.branches})):
        like = plan.likes[store_path]
        features = sorted({resolve_feature(b.selection) for b in plan.branches if b.store == store_path})
        target = work / f"features{k}.zarr"
        moved = str(model) if model is not None and _upstream_features(like, features) else None
        rates = _training_rates(like, features)
        said = extract_features(manifest, target, like=like.source, features=features, model=moved,
                                options=[f"{name}.sample_rate={rate}" for name, rate in rates.items()])
        if said:
            stopped.append(said)
        temp[store_path] = open_store(target, allow_incomplete=True)
        if rates:
            resampled.update({r.id: next(rate for rate in rates.values() if rate != r.sample_rate)
                              for r in temp[store_path].list_utterances()
                              if r.sample_rate is not None and set(rates.values()) - {r.sample_rate}})
    done = set(ids)
    # Stage 1 records digitally silent files (all samples 0) in the store; its note went to our pipe.
    silent = {uid for store in temp.values() for uid in store.attrs.get("silent_audio", [])}
    for store in temp.values():
        for failure in store.list_failures():
            if failure.id in position:
                errors.setdefault(position[failure.id], f"{failure.reason}"
                                  + (f" (feature {failure.feature})" if failure.feature else ""))
        finished = {r.id for r in store.list_utterances(status="done")}
        done &= finished
    if stopped:  # files without a failure record of their own were never reached
        for uid in ids:
            if uid not in done:
                errors.setdefault(position[uid], _stopped_reason(stopped[0], work, temporary=temporary))
    records = {r.id: r for r in next(iter(temp.values())).list_utterances(status="done")}
    items = [Item(uid, groups[position[uid]], 0, float(records[uid].duration)) for uid in ids if uid in done]
    if not items:
        return {}
    statistics, apart = None, []
    if labels is not None:  # as training composed them: IEMOCAP's xxx, fru... left out
        from w2v2ser.train import get_protocol
        from w2v2ser.train._protocols import statistics_utterances

        rows = [types.SimpleNamespace(id=it.id, speaker=it.speaker, label=labels[position[it.id]]) for it in items]
        statistics, apart = statistics_utterances(get_protocol(plan.config.protocol), rows)
    # A group qualifies by the files its statistics compose (its kept labels), not by all of its files.
    counted = None if statistics is None else set(statistics)
    grouped = speaker_groups(it.speaker for it in items if counted is None or it.id in counted)
    if labels is not None:
        apart = [g for g in apart if g in grouped]
        if apart and plan.config.norm == "speaker":
            log.warning("speaker group(s) %s have no label that protocol %s keeps: their statistics are composed over "
                        "all their files", first_few(apart), plan.config.protocol)
    total = ensemble_probabilities(plan, temp, items, batch_size=batch_size, grouped=grouped, utterances=statistics)
    # FeatureBatches keeps the first max_frames frames of the (pair-averaged) feature, as in training.
    crop = _crop_seconds(plan) or float("inf")
    return {position[it.id]: (total[k], it.duration, min(it.duration, crop), resampled.get(it.id),
                              normalisation_used(plan, it.speaker, grouped), it.id in silent)
            for k, it in enumerate(items)}


def speaker_groups(speakers: Iterable[str]) -> list[str]:
    """The speaker groups with enough predicted files for their own statistics (one speaker per
    file the statistics compose): a group of too few keeps the global statistics, since its own
    would remove what the models read."""
    sizes = collections.Counter(speakers)
    return sorted(s for s, n in sizes.items() if s != UNGROUPED and n >= MIN_GROUP_FILES)


def normalisation_used(plan: _RunPlan, speaker: str, grouped: Sequence[str]) -> str:
    """``Prediction.normalisation`` of a file of ``speaker``'s group."""
    return {"none": "none", "global": "global"}.get(plan.config.norm) or (
        "speaker group" if speaker in grouped else "global" if speaker == UNGROUPED else SMALL_GROUP)


def _training_rates(like: _Like, features: Sequence[str]) -> dict[str, int]:
    """Feature -> rate, for each feature that training computed at each file's own rate (``native``)
    when all the training audio had that one rate: new files at another rate are resampled to it,
    since the features of one recording differ with its rate (eGeMAPS' formant columns most)."""
    out = {}
    for name in features:
        rates = set(like.rates.get(name) or ())
        if like.features[name].config.get("sample_rate") == "native" and len(rates) == 1 and None not in rates:
            out[name] = int(rates.pop())
    return out


def resolve_feature(selection: str) -> str:
    """Stored feature name of a selection string ``[ALIAS/]FEATURE[:LAYERS]``."""
    return selection.rpartition("/")[2].partition(":")[0]
