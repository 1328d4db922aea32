"""Argument wiring of ``w2v2ser predict`` (the root CLI owns the parser; this fills the subcommand)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from w2v2ser._common import first_few
from w2v2ser._text import merge_subset, path_argument, spelling_key, subset_condition, variants_differ

from ._errors import PredictError
from ._predict import predict_audio
from ._scoring import PredictionScore, predict_manifest, predict_store

__all__ = ["add_predict_arguments", "predict_from_cli"]


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``predict`` arguments to ``parser`` (the ``w2v2ser predict`` subparser)."""
    parser.add_argument("run_dir", type=path_argument, help="run directory written by `w2v2ser train`")
    parser.add_argument("audio", nargs="*", type=path_argument, help="audio files to label, or folders (their audio files, sorted)")
    parser.add_argument("--manifest", metavar="CSV", type=path_argument,
                        help="instead of audio: a labelled CSV manifest (path,label,speaker, as `w2v2ser extract "
                             "csv` reads), e.g. of another corpus; its files are predicted with their speakers as "
                             "speaker groups and scored against their labels (UAR, confusion)")
    parser.add_argument("--from-store", dest="from_store", metavar="[ALIAS=]STORE", type=path_argument,
                        action="append",
                        help="instead of audio: every done utterance of a store that holds the run's features "
                             "with its settings (`w2v2ser extract ... --like RUN_DIR`), e.g. another corpus; "
                             "predicted and scored against its labels without extracting again, each speaker "
                             "a speaker group (a run of several stores: one ALIAS=STORE each, e.g. main=... "
                             "and fusion=...; ./NAME=... is a path, not an alias)")
    parser.add_argument("--subset", action="append", type=subset_condition, metavar="FIELD=VALUE[,VALUE]",
                        help="with --from-store: only the utterances whose FIELD is one of the VALUEs "
                             "(repeatable), as `w2v2ser train --subset`")
    parser.add_argument("--speaker-groups", dest="speaker_groups", metavar="SPK1,SPK2,...",
                        help="speaker of each audio argument (a folder's applies to every file in it) or of "
                             "each file, comma separated, in order: files of one speaker are normalised with "
                             "their own statistics (speaker-normalised runs); default: the run's global "
                             "(training speakers) statistics")
    parser.add_argument("--run", help="use one run, e.g. split__seed0 (FOLD__seedK, a folder of RUN_DIR/runs; default: average every run's probabilities)")
    parser.add_argument("--work-dir", dest="work_dir", type=path_argument, help="keep the manifest and temporary feature stores here "
                                                           "(a new predict-* folder inside it per call)")
    parser.add_argument("--model", help="the speech encoder (hub id, local folder or fairseq .pt) when its weights "
                                         "are no longer where the training store recorded them; they must be "
                                         "the same weights")
    parser.add_argument("--store", action="append", dest="stores", metavar="[ALIAS=]PATH", type=path_argument,
                        help="the training store's new location when it has moved since training (ALIAS=PATH "
                             "for a run of several stores, e.g. fusion=...; ./NAME=... is a path; repeatable); it must hold the "
                             "run's features with the same settings")
    parser.add_argument("--segment", nargs="?", const="crop", type=_segment, metavar="SECONDS",
                        help="label long recordings window by window: cut each file into consecutive windows of "
                             "SECONDS (without a value: the run's crop, what its models see of an utterance) "
                             "and predict each; one line per window, with its start and end")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")


def _segment(text: str) -> float | str:
    """``--segment`` value: seconds > 0, or ``crop``."""
    if text == "crop":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        # `--segment a.wav` takes the path for the option's value: say where paths go.
        hint = "; put the audio paths before --segment, or give it a value" if Path(text).suffix else ""
        raise argparse.ArgumentTypeError(f"expected seconds > 0 (or crop), got {text!r}{hint}")
    return value


def _parse_stores(values: list[str] | None, option: str = "--store") -> dict[str | None, str] | None:
    """``--store [ALIAS=]PATH`` values; a URL's own ``=`` (s3://b/p?x=y) and an existing path's
    (``lr=3e-4.zarr``) are left alone. The same alias (or none) twice is refused: one of the two was
    dropped unsaid; so is an empty PATH (``main="$UNSET"``), which was the current folder."""
    out: dict[str | None, str] = {}
    for value in values or []:
        alias, sep, path = value.partition("=")
        key = alias if sep and alias.isidentifier() and not os.path.lexists(value) else None
        if key and not path.strip():
            raise PredictError(f"{option} {value}: expected a path after {alias}=, got {path!r} (an unset or "
                               f"empty shell variable?). Give {option} {alias}=STORE.")
        if key in out:
            raise PredictError(f"{option} is given twice for {'store ' + repr(key) if key else 'the store'}: "
                               f"{', '.join(values or [])}. Give one {option} STORE, or one {option} ALIAS=STORE "
                               f"per store of the run (e.g. main=... and fusion=...).")
        out[key] = path if key else value
    return out or None


def predict_from_cli(args: argparse.Namespace) -> int:
    """Run ``w2v2ser predict``; exit status 0 if every file was predicted, 1 if some failed."""
    manifest, from_store = getattr(args, "manifest", None), getattr(args, "from_store", None)
    inputs = [name for name, given in (("audio", args.audio), ("--manifest", manifest), ("--from-store", from_store))
              if given]
    if len(inputs) != 1 or (inputs != ["audio"] and getattr(args, "speaker_groups", None)):
        raise PredictError("w2v2ser predict takes audio files or folders, or --manifest CSV, or --from-store STORE "
                           f"(whose speakers give the speaker groups); got {' and '.join(inputs) or 'none'}"
                           f"{' with --speaker-groups' if inputs and args.speaker_groups else ''}. Pass one.")
    if getattr(args, "subset", None) and not from_store:
        raise PredictError("--subset selects utterances of --from-store STORE; for audio, pass the files you want.")
    if getattr(args, "segment", None) is not None and inputs != ["audio"]:
        raise PredictError(f"--segment cuts audio files into windows; {inputs[0]} gives utterances to score whole. "
                           "Drop --segment.")
    options = dict(run=getattr(args, "run", None), model=getattr(args, "model", None),
                   segment=getattr(args, "segment", None),
                   stores=_parse_stores(getattr(args, "stores", None)),
                   work_dir=Path(args.work_dir) if getattr(args, "work_dir", None) else None)
    score = None
    if from_store:
        given = _parse_stores(from_store, "--from-store") or {}
        test = given[None] if list(given) == [None] else {str(alias): path for alias, path in given.items()}
        predictions, score = predict_store(Path(args.run_dir), test, run=options["run"],
                                           subset=merge_subset(args.subset) if args.subset else None)
    elif manifest:
        predictions, score = predict_manifest(Path(args.run_dir), Path(manifest), **options)
    else:
        speakers = None
        if getattr(args, "speaker_groups", None):
            speakers = [s.strip() for s in args.speaker_groups.split(",")]
        predictions = predict_audio(Path(args.run_dir), [Path(p) for p in args.audio], speakers=speakers, **options)
    if getattr(args, "json", False):
        rows = [p.to_dict() for p in predictions]
        print(json.dumps(rows if score is None else {"predictions": rows, "score": score.to_dict()}, indent=2))
    else:
        for p in predictions:
            if p.ok:
                probs = "  ".join(f"{c}={v:.3f}" for c, v in sorted(p.probabilities.items(), key=lambda kv: -kv[1]))
                print(f"{p.id or p.path}{_window(p)}\t{p.emotion}\t{probs}")
            else:
                print(f"{p.id or p.path}{_window(p)}\tFAILED\t{p.error}", file=sys.stderr)
        if score is not None:
            print(_describe_score(score))
    if inputs == ["audio"]:  # utterances of a manifest or a store are scored whole, cropped as in training
        _note_cropped(predictions)
    _note_resampled(predictions)
    _note_small_groups(predictions)
    _note_silent(predictions)
    if score is not None and score.unscored_labels:
        shown = first_few([f"{label} ({n})" for label, n in score.unscored_labels.items()], 5)
        # 'Happy' beside a csv run's 'happy' read as a label of another corpus; say it is a spelling.
        alike = [f"{label!r} is the run's {c!r} written another way (it differs only in {variants_differ([[label, c]])})"
                 for label in score.unscored_labels for c in score.classes if spelling_key(label) == spelling_key(c)]
        hint = f"; {'; '.join(alike[:5])}: write it as the run does in the manifest to score it" if alike else ""
        print(f"note: {sum(score.unscored_labels.values())} file(s) have labels that are none of the run's classes "
              f"({', '.join(score.classes)}) under its protocol, and are not scored: {shown}{hint}.", file=sys.stderr)
    if score is not None and score.seen_speakers:
        print(f"note: {score.seen_speakers} scored utterance(s) are of speakers the run trained or validated on; "
              f"the score overstates how it does on unseen speakers. For a held-out figure, score its test "
              f"speakers only (--subset speaker=...).", file=sys.stderr)
    for feature, count in (score.other_rates.items() if score is not None else ()):
        print(f"note: {count} scored utterance(s) of the store have audio at another sample rate than all of the "
              f"run's training audio ({score.training_rates[feature]} Hz), and {feature} was taken at each file's "
              f"own rate, so its values differ from what training saw. Score their audio with --manifest "
              f"instead, which resamples it to {score.training_rates[feature]} Hz first.", file=sys.stderr)
    if score is not None and score.seen_splits:
        counts = ", ".join(f"{n} {split}" for split, n in score.seen_splits.items())
        print(f"note: {sum(score.seen_splits.values())} scored file(s) are marked {counts} in the manifest's split "
              f"column; if the run trained on them, the score overstates how it does on unseen audio. Score test "
              f"rows only for a held-out figure.", file=sys.stderr)
    return 0 if all(p.ok for p in predictions) else 1


def _window(prediction: Any) -> str:
    """A tab and ``START-END`` (seconds) for a window of ``--segment``; nothing for a whole file."""
    return "" if prediction.start is None else f"\t{prediction.start:.2f}-{prediction.end:.2f}"


def _describe_score(score: PredictionScore) -> str:
    """The score line printed after the predictions of ``--manifest``."""
    if score.uar is None:
        return f"score: no labelled file could be scored ({score.failed} failed)"
    failed = f"; {score.failed} labelled file(s) failed and are not scored" if score.failed else ""
    return (f"score: UAR {score.uar:.1f} %, accuracy {score.accuracy:.1f} %, over {score.scored} labelled files "
            f"({len(score.present)} of the run's {len(score.classes)} classes present){failed}; --json gives the "
            f"confusion matrix")


def _note_cropped(predictions: list) -> None:
    """Say on stderr when files (or windows) were longer than what the models see: only their start was labelled."""
    cropped = [p for p in predictions if p.ok and p.seconds_used is not None and p.seconds - p.seconds_used > 0.05]
    if not cropped:
        return
    shown = first_few([f"{p.path}{'' if p.start is None else f' {p.start:.1f}-{p.end:.1f} s'} ({p.seconds:.1f} s)"
                       for p in cropped])
    what, fix = ("files", "pass --segment") if cropped[0].start is None else (
        "windows", "pass --segment without a value (windows of the crop's length)")
    print(f"note: {len(cropped)} of {len(predictions)} {what} are longer than the first "
          f"{cropped[0].seconds_used:.1f} s "
          f"that the run's models see of an utterance (the protocol's crop, as in training), so only their start "
          f"was labelled: {shown}. To label a whole recording window by window, {fix}.",
          file=sys.stderr)


def _note_small_groups(predictions: list) -> None:
    """Say on stderr which speaker groups were too small for their own statistics."""
    from ._predict import MIN_GROUP_FILES, SMALL_GROUP

    small = [p for p in predictions if p.ok and p.normalisation == SMALL_GROUP]
    if not small:
        return
    shown = first_few(sorted({str(p.speaker) for p in small}), 5)
    print(f"note: {len(small)} of {len(predictions)} files are in speaker groups of fewer than {MIN_GROUP_FILES} "
          f"predicted files ({shown}); they were normalised with the run's global statistics instead, because "
          f"a file's own statistics remove what the models read. Give each speaker group all of its files.",
          file=sys.stderr)


def _note_silent(predictions: list) -> None:
    """Say on stderr which files (or ``--segment`` windows) are digital silence: they got a label, which says
    nothing of emotion. A silent window is a pause; only a file silent throughout gets the broken-file advice."""
    silent = [p for p in predictions if p.ok and p.silent]
    if not silent:
        return
    shown = first_few([f"{p.id or p.path}{'' if p.start is None else f' {p.start:.1f}-{p.end:.1f} s'}" for p in silent])
    fix = ("A muted or zeroed recording is usually a broken file: replace it. A stereo file whose channels cancel (one "
           "is the other inverted) holds speech in each channel: keep one, e.g. `ffmpeg -i IN -af 'pan=mono|c0=c0' "
           "OUT.wav`.")
    if silent[0].start is None:
        what, advice = "files", fix
    else:  # a window of exact zeros is a pause in digitally produced or edited audio, not a broken file
        what, advice = "windows", "A silent window is a pause (digitally produced or edited audio): ignore its label."
        windows: dict[Path, list[bool]] = {}
        for p in predictions:
            if p.ok:
                windows.setdefault(p.path, []).append(p.silent)
        whole = [str(path) for path, flags in windows.items() if all(flags)]
        if whole:
            advice += f" Every window of {first_few(whole)} is silent, so the file is: {fix}"
    print(f"note: {len(silent)} of {len(predictions)} {what} are digital silence after mixing to mono (every sample "
          f"is 0), so their labels say nothing about emotion: {shown}. {advice}", file=sys.stderr)


def _note_resampled(predictions: list) -> None:
    """Say on stderr which files were resampled to the training audio's rate, and why."""
    resampled = [p for p in predictions if p.ok and p.resampled_to is not None]
    if not resampled:
        return
    shown = first_few(list(dict.fromkeys(str(p.path) for p in resampled)))  # a file once, not once per window
    what = "files" if resampled[0].start is None else "windows"
    print(f"note: {len(resampled)} of {len(predictions)} {what} were resampled to {resampled[0].resampled_to} Hz, "
          f"the rate of all the run's training audio, before features that training took at each file's own "
          f"rate (eGeMAPS changes with the rate): {shown}.", file=sys.stderr)
