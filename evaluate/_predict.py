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
import os
import re
import tempfile
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import numpy as np
from pydantic import Field, Strict

from w2v2ser._common import EXIT_FAILED, FULL_DISK_ERRNOS, first_few
from w2v2ser._files import make_folder, owner_tag, remove_stale
from w2v2ser._process import check_thread_environment
from w2v2ser._text import as_paths
from w2v2ser._schema import validate
from w2v2ser.train._normalisation import MIN_SPEAKER_FILES

from ._ensemble import ensemble_probabilities, frameless
from ._errors import PredictError
from ._extraction import _stopped_reason, _write_manifest, extract_features
from ._runplan import (_check_model_option, _crop_seconds, _longest_seconds, _plan, _RunPlan, _training_rates,
                       _upstream_features, log, resolve_feature)
from ._segments import Segment, cut_segments

__all__ = ["Prediction", "predict_audio"]

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
        elif not _utf8_name(file):
            shown = os.fsencode(file.resolve()).decode("utf-8", "backslashreplace")
            errors[i] = (f"{shown}: its name is not valid UTF-8 (the bytes shown as \\x..), which stage 1 "
                         f"cannot open; rename it, e.g. `convmv -f latin1 -t utf8 -r --notest FOLDER`")
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
    try:
        work = Path(tempfile.mkdtemp(prefix="predict-", dir=make_folder(work_dir)))
    except OSError as exc:  # a full disk: predict's own advice (it keeps nothing), not "finished work is kept"
        if exc.errno not in FULL_DISK_ERRNOS:
            raise
        error = PredictError(_stopped_reason(f"{exc.filename or work_dir}: {exc.strerror}", Path(work_dir) / "predict-",
                                             temporary=False, what="could not make predict's work folder"))
        error.exit_code = EXIT_FAILED
        raise error from exc
    yield work


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


def _utf8_name(file: Path) -> bool:
    """Whether ``file``'s absolute name is UTF-8 (not a Latin-1 name on an old disk, held with surrogates)."""
    try:
        str(file.resolve()).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
        # A file done with some features and failed for another (stored without it) has no prediction.
        failed = {failure.id for failure in store.list_failures()}
        finished = {r.id for r in store.list_utterances(status="done")}
        done &= finished - failed
    if stopped:  # files without a failure record of their own were never reached
        for uid in ids:
            if uid not in done:
                errors.setdefault(position[uid], _stopped_reason(stopped[0], work, temporary=temporary))
    records = {r.id: r for r in next(iter(temp.values())).list_utterances(status="done")}
    items = [Item(uid, groups[position[uid]], 0, float(records[uid].duration)) for uid in ids if uid in done]
    empty = frameless(plan, temp, [it.id for it in items])  # failed, not given the output for no input
    for uid, reason in empty.items():
        errors.setdefault(position[uid], reason)
    items = [it for it in items if it.id not in empty]
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
