"""The ``w2v2ser`` command line: parse arguments, build configs, call library functions.

Stage modules are imported inside each command so that ``w2v2ser store info`` never
loads torch or TensorFlow, and stage 2 commands never load torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from w2v2ser._common import (EXIT_FAILED, SHARD_SIZE, SHOWN_LINES, SILENCE_ADVICE, SPEAKER_CASE_ADVICE, case_variants,
                             first_few, format_size, merge_subset, or_list, path_argument, subset_condition,
                             variants_differ)
from w2v2ser._overrides import load_yaml

FEATURES = ("wav2vec2", "egemaps", "spectrogram")  # the default set
STORE_HELP = ("store directory or object-store URL (s3://bucket/prefix; endpoint and credentials from "
              "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION or "
              "W2V2SER_STORAGE_OPTIONS)")
PROTOCOL_HELP = ("evaluation protocol (default: the store's corpus, as recorded at extraction; of a store of several "
                 "corpora, the one --subset corpus=NAME keeps)")
FOLDS_HELP = ("cross-validate over K speaker groups instead of the protocol's split (RAVDESS: test actors 23-24): "
              "each group tests once, the next one validates, the rest train; results pool each seed's folds")
SUBSET_HELP = ("train and test on the utterances whose FIELD is one of the VALUEs, e.g. vocal_channel=speech "
               "(RAVDESS speech only) or method=improvised (IEMOCAP); FIELD is speaker, label, gender, session, "
               "split, corpus (ravdess, iemocap, csv, or a CSV manifest's own corpus column) or a key the corpus "
               "reader records (`w2v2ser store info`); repeatable, all must hold")


def _parse_option(text: str) -> tuple[str, str, Any]:
    """``feature.key=value`` -> (feature, key, YAML-parsed value)."""
    from w2v2ser._common import ConfigError

    name, sep, value = text.partition("=")
    feature, dot, key = name.partition(".")
    if not sep or not dot or not key:
        raise ConfigError(
            f"--option {text!r} is not of the form FEATURE.KEY=VALUE, e.g. --option spectrogram.hop_ms=20."
        )
    return feature, key, load_yaml(value)


def _extractor_configs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from w2v2ser._common import UPSTREAM_FEATURES, ConfigError
    from w2v2ser.extract import features_like

    like, like_rates = features_like(args.like) if args.like else (None, {})
    given = args.features if args.features is not None else ",".join(like or FEATURES)
    names = [f.strip() for f in given.split(",") if f.strip()]
    if not names:
        raise ConfigError(f"--features {args.features!r} names no feature; give e.g. --features egemaps,spectrogram, "
                          f"or leave it out for {','.join(like or FEATURES)}.")
    missing = [f for f in names if like is not None and f not in like]
    if missing:
        raise ConfigError(f"--like {args.like} has no feature(s) {', '.join(missing)}; it has {', '.join(like)}.")
    configs: dict[str, dict[str, Any]] = {name: {} for name in names}
    given_upstream = [f"--{key.replace('_', '-')}" for key in ("model", "revision", "device", "batch_seconds")
                      if getattr(args, key) is not None]
    if given_upstream and not any(name in UPSTREAM_FEATURES for name in configs):  # else dropped unsaid
        source = f"--features {given}" if args.features is not None else f"--like {args.like} (its features)"
        encoders = [name for name in (FEATURES if like is None else like) if name in UPSTREAM_FEATURES]
        fix = (f"add one to --features (e.g. --features {encoders[0]},{','.join(configs)}) or drop "
               f"{', '.join(given_upstream)}" if encoders else  # --like's store or run has none to add
               f"drop {', '.join(given_upstream)}, or use --like of a store or run that has a speech encoder")
        raise ConfigError(f"{', '.join(given_upstream)} set the speech encoder, but {source} extracts only "
                          f"{', '.join(configs)}; {fix}.")
    for upstream in (name for name in UPSTREAM_FEATURES if name in configs):  # --model etc. apply to them
        for key in ("model", "revision", "device", "batch_seconds"):
            value = getattr(args, key)
            if value is not None:
                configs[upstream][key] = value
    given_by: dict[tuple[str, str], str] = {(name, key): f"--{key.replace('_', '-')}" for name, config in configs.items()
                                            for key in config}
    for text in args.option:
        feature, key, value = _parse_option(text)
        if feature not in configs:
            raise ConfigError(
                f"--option {text!r} names feature {feature!r}, which is not extracted here "
                f"(features: {', '.join(configs)}); add it to --features."
            )
        if (feature, key) in given_by and configs[feature][key] != value:  # else the last one won unsaid
            raise ConfigError(f"{feature}.{key} is given twice, with {given_by[feature, key]} and with --option "
                              f"{text!r}; give it once.")
        configs[feature][key] = value
        given_by[feature, key] = f"--option {text!r}"
    if like is not None:
        from w2v2ser.extract import configs_like

        # The rates of the audio behind a feature, for a native sample_rate given a rate in Hz (predict).
        return configs_like({name: like[name] for name in names}, store=args.like, changes=configs,
                            audio_rates=like_rates)
    return configs


# --no-progress of extract, store upgrade, train and sweep (batch jobs whose logs want only the outcome).
_NO_PROGRESS_HELP = "no progress bars or per-run lines; the final summary still prints"


def _cmd_extract(args: argparse.Namespace) -> int:
    from w2v2ser.extract import build_extractor, extract_corpus, read_corpus

    _refuse_inside_store(args.store or f"stores/{args.corpus}.zarr", "--store", itself=False)
    manifest = read_corpus(args.corpus, args.path)
    for path, reason in manifest.problems[:SHOWN_LINES]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if len(manifest.problems) > SHOWN_LINES:  # a session without sentences/wav: 2,000 lines
        print(f"skipped ... and {len(manifest.problems) - SHOWN_LINES} more, recorded in the store (`w2v2ser "
              f"store info {shlex.quote(str(args.store or f'stores/{args.corpus}.zarr'))} --json`)", file=sys.stderr)
    sessions = sorted({u.session for u in manifest.utterances}) if manifest.corpus == "iemocap" else []
    if 0 < len(sessions) < 5:  # else told only by train, after a long extraction
        folds = (f"; or train these {len(sessions)} with `w2v2ser train ... --speaker-folds {len(sessions)}`, one "
                 f"session per fold" if len(sessions) >= 3 else "")
        print(f"note: IEMOCAP sessions found: {', '.join(sessions)}; the release has Session1..Session5, and the "
              f"iemocap protocol (leave one session out) needs all 5: check that the copy under {args.path} is "
              f"complete (a later extract of the whole folder adds the missing sessions to the store){folds}",
              file=sys.stderr)
    configs = _extractor_configs(args)
    extractors = [build_extractor(name, config, recorded=bool(args.like)) for name, config in configs.items()]
    from w2v2ser.store import locate_store

    location = locate_store(args.store or f"stores/{args.corpus}.zarr")
    store = location.display
    print(f"extracting {', '.join(configs)} for {len(manifest.utterances)} utterances into {store}")
    with contextlib.ExitStack() as stack:
        client = gpu_resource = None
        if args.workers:  # the pipeline's local cluster: GPU workers beside them where there are GPUs
            from w2v2ser._cluster import open_cluster
            from w2v2ser._config import ClusterConfig

            handle = stack.enter_context(open_cluster(ClusterConfig(kind="local", workers=args.workers,
                                                                    threads_per_worker=1)))
            client, gpu_resource = handle.client, handle.gpu_resource
            print(f"{handle.description}; Dask dashboard: {handle.dashboard}")
        summary = extract_corpus(
            manifest.utterances,
            location,
            extractors=extractors,
            shard_size=args.shard_size,
            progress=not args.no_progress,
            client=client,
            gpu_resource=gpu_resource,
            decode_workers=args.decode_workers,
            cpu_workers=args.cpu_workers,
            reader_skipped=manifest.problems,
            corpus=manifest.corpus,
        )
    # Object stores: the size would cost a listing of every object, so it is left out.
    size = (f"store {format_size(sum(p.stat().st_size for p in store.rglob('*') if p.is_file()))}, "
            if location.is_local else "")
    print(
        f"done: {summary.planned} utterances planned, {summary.extracted} extracted now, "
        f"{summary.skipped} already complete, {len(summary.failed)} failed; "
        f"{summary.audio_seconds:.1f} audio s in {summary.wall_seconds:.1f} s "
        f"({summary.realtime_factor:.1f}x real time); {size}"
        f"{'complete' if summary.complete else 'INCOMPLETE'}"
    )
    for note in summary.notes():
        print(f"note: {note}", file=sys.stderr)
    if summary.complete:
        _note_features_lacking(location, ", ".join(configs))
    for utterance_id, path, reason in summary.failed[:SHOWN_LINES]:
        print(f"failed {utterance_id} ({path}): {reason}", file=sys.stderr)
    if len(summary.failed) > SHOWN_LINES:
        print(f"... and {len(summary.failed) - SHOWN_LINES} more; see `w2v2ser store info "
              f"{shlex.quote(str(store))} --json`",
              file=sys.stderr)
    if not summary.complete:
        return 1
    nothing = summary.nothing_extracted(location, list(configs), str(store))
    if nothing:  # a job script must not go on to train on an empty store
        print(f"w2v2ser: error: {nothing}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _note_features_lacking(location: Any, asked: str) -> None:
    """After an extraction of some features: name the store's other features that the utterances
    it added lack (a store holds one set of utterances; each feature is planned when extracted)."""
    from w2v2ser.store import open_store

    store = open_store(location)  # the utterance table only: describe() would list every object of an S3 store
    done = len(store.list_utterances())
    for name in store.features:
        held = len(store.list_utterances(feature=name))
        if held < done:
            print(f"note: {done - held} of the store's {done} utterances have no {name} frames (this run extracted "
                  f"{asked}); training on {name} leaves them out until you extract it for them: add --features "
                  f"{name}", file=sys.stderr)


def _cmd_store_info(args: argparse.Namespace) -> int:
    from w2v2ser.store import open_store

    store = open_store(args.store, allow_incomplete=True)
    info = store.describe()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    status = ", ".join(f"{count} {name}" for name, count in info["status"].items() if count)
    print(f"store       {args.store} (format {info['format_version']}, written by w2v2ser {info['tool_version']})")
    total, committed = info["utterances"], info.get("committed")
    so_far = ", ".join(f"{name} {n} of {total}" for name, n in (committed or {}).items())
    if committed is not None and not total and not info["features"]:
        # Left by an extraction refused before it planned anything (older versions created the store first).
        print(f"complete    {info['complete']}: created empty, nothing was extracted into it; run `w2v2ser extract` "
              f"into it, or delete the folder")
    else:
        print(f"complete    {info['complete']}" + ("" if committed is None else
              f": extraction interrupted or still running; committed so far: {so_far} utterances, merged "
              f"when it finishes ({_resume_command(store)} to resume)"))
    print(f"corpus      {', '.join(info['corpus'] or []) or '(not recorded)'}")
    print(f"utterances  {info['utterances']}" + (f": {status}" if status else ""))
    print(f"speakers    {info['speakers']}")
    speaker_groups = case_variants(store.speakers())
    speakers = [" and ".join(map(repr, v)) for v in speaker_groups]
    if speakers:  # not refused at extraction: stores holding such pairs must keep resuming
        print(f"            {'; '.join(speakers)} differ only in {variants_differ(speaker_groups)}, so they are "
              f"separate speakers (folds, per-speaker normalisation); {SPEAKER_CASE_ADVICE}")
    print(f"labels      {', '.join(f'{label} {count}' for label, count in info['labels'].items()) or '(none done)'}")
    label_groups = case_variants(info["labels"])
    variants = [" and ".join(map(repr, v)) for v in label_groups]
    if variants:  # stores written before extract compared a manifest's labels with the store's
        print(f"            {'; '.join(variants)} differ only in {variants_differ(label_groups)}"
              f"{_label_case_note(info['corpus'] or [])}")
    for k, (field, found) in enumerate(info["fields"].items()):  # what `train --subset FIELD=VALUE` can name
        # repr for a value with a line break (a spreadsheet cell's Alt+Enter): it would break the table.
        values = (", ".join(f"{value if value.isprintable() else repr(value)} {n}"
                            for value, n in found["counts"].items()) if found["counts"]
                  else f"{found['distinct']} distinct values")
        name = field if field.isprintable() else repr(field)  # a header cell with a line break, too
        print(f"{'fields' if k == 0 else '':<12}{name:<18} {values}")
    for name, feature in info["features"].items():
        layers = feature.get("layers")
        shape = f"[frames, {layers}, {feature['dim']}]" if layers else f"[frames, {feature['dim']}]"
        model = feature["config"].get("model")
        if model:  # what the speech encoder was fed (stores from before the option: the raw waveform)
            model += ", normalised waveform" if feature["config"].get("normalize_waveform") else ", raw waveform"
        done = info["status"].get("done", 0)
        # An extraction of other features can add utterances that this feature lacks.
        lacking = (f", {feature['utterances']} of {done} done utterances (add the rest: extract "
                   f"--features {name})" if info["complete"] and feature["utterances"] < done else "")
        print(f"feature     {name:<12} {shape:<22} {feature['dtype']:<8} {feature['frame_rate']:g} frames/s, "
              f"{format_size(feature['bytes'])}" + (f", model {model}" if model else "") + lacking)
    copies = info["duplicate_audio"]
    if copies:  # the same recording twice: weighted double, or scored on what training saw
        label = {r.id: r.label for r in store.list_utterances(status="done")}
        conflicting = [ids for ids in copies if len({label[i] for i in ids}) > 1]
        print(f"duplicates  {len(copies)} groups of utterances have byte-identical audio (sha256)"
              + (f", {len(conflicting)} of them with different labels" if conflicting else "")
              + "; remove the copies from the manifest unless they are meant (below)")
        _print_some([", ".join(f"{i} ({label[i]})" for i in ids) for ids in conflicting + [c for c in copies
                                                                                         if c not in conflicting]],
                    args.store)
    silent = info["silent_audio"]
    if silent:  # a muted file, or stereo channels that cancel: valid input, but the user decides
        print(f"silence     {len(silent)} utterance(s) are digital silence after mixing to mono (every sample is 0) "
              f"(below). {SILENCE_ADVICE}")
        _print_some(silent, args.store)
    unlisted = set(info.get("unlisted_failures", []))

    def reasons(listed: bool) -> list[str]:
        return [f"{f['id']}{' [' + f['feature'] + ']' if f['feature'] else ''}: {f['reason']}"
                for f in info["failure_reasons"] if (f["id"] not in unlisted) is listed]

    failures = reasons(listed=True)
    print(f"failures    {len(failures)}" + (" (reasons below)" if failures else ""))
    _print_some(failures, args.store)
    removed = reasons(listed=False)
    if removed:  # failed rows the user left out of the manifest: not current, and never trained on
        print(f"not listed  {len(removed)} failure(s) of utterances that the last `w2v2ser extract` manifest no "
              f"longer lists; they were never extracted in full, and `w2v2ser train` does not use them (below)")
        _print_some(removed, args.store)
    skipped = info["reader_skipped"]
    if skipped:  # files or lines the corpus reader could not use: no store row, so not failures
        print(f"skipped     {len(skipped)} by the corpus reader (reasons below)")
        _print_some([f"{entry['path']}: {entry['reason']}" for entry in skipped], args.store)
    return 0


def _resume_command(store: Any) -> str:
    """How to finish an unfinished store: rerun the command that last worked on it (``last_argv``,
    recorded by each extraction's plan), else the one that created it (its provenance): a store made
    by `w2v2ser extract` and resumed by `w2v2ser run` is resumed by `run`."""
    provenance = store.attrs.get("provenance")
    last = store.attrs.get("last_argv")  # absent in stores of an earlier w2v2ser
    argv = last if isinstance(last, list) and last else (
        provenance.get("argv") if isinstance(provenance, dict) else None)
    argv = [str(arg) for arg in argv or [""]]
    ours = Path(argv[0]).name == "w2v2ser" or Path(argv[0]).parent.name == "w2v2ser"  # the script, or -m
    command = next((arg for arg in argv[1:] if not arg.startswith("-")), None) if ours else None
    if command == "run":
        try:  # the command's own parser: `run --stage extract p.yaml` names p.yaml, not "extract"
            pipeline = build_parser().parse_known_args(argv[1:])[0].pipeline or "PIPELINE"
        except SystemExit:  # a command line this version does not read
            pipeline = "PIPELINE"
        return (f"rerun `w2v2ser run {shlex.quote(pipeline)} --stage extract`, or the same `w2v2ser run` command, "
                f"which last worked on it")
    if command == "extract":
        return "rerun the same `w2v2ser extract` command"
    # The Python API (extract_corpus), or a store of a version before the command line was recorded.
    return "rerun the extraction that made it: the same `w2v2ser extract` or `w2v2ser run` command"


def _label_case_note(corpora: Sequence[str]) -> str:
    """What labels differing only in case mean for ``train`` on a store of ``corpora``: the
    protocol of RAVDESS and IEMOCAP reads labels in lower case (one label); CSV's keeps them apart."""
    from w2v2ser.train import PROTOCOLS, ProtocolError, protocol_of_corpora

    try:
        protocol = protocol_of_corpora(corpora, store="")
    except ProtocolError:  # several corpora, or none recorded: the user names --protocol
        protocol = "csv"
    fix = ("the line in the corpus's SessionN/dialog/EmoEvaluation/<dialog>.txt" if protocol == "iemocap"
           else "the manifest")
    rerun = (f"fix the spelling in {fix} and rerun the same `w2v2ser extract` (labels are updated in place, "
             f"nothing is extracted again)")
    if PROTOCOLS[protocol].label_map is None:
        return f", so `train` takes them as separate classes; if they mean one emotion, {rerun}"
    return (f"; `train`'s {protocol} protocol (the default for this store) reads labels in lower case, so "
            f"they are one label there (`--protocol csv` would take them as separate classes); to make the "
            f"store's spelling one, {rerun}")


def _print_some(lines: Sequence[str], store: str) -> None:
    """The first SHOWN_LINES lines, indented, then how many more `store info --json` has."""
    for line in lines[:SHOWN_LINES]:
        print(f"  {line}")
    if len(lines) > SHOWN_LINES:
        print(f"  ... and {len(lines) - SHOWN_LINES} more (`w2v2ser store info {shlex.quote(str(store))} --json`)")


def _cmd_store_verify(args: argparse.Namespace) -> int:
    from w2v2ser.store import StoreDamagedError

    try:
        return _verify_store(args)
    except StoreDamagedError as raised:  # found as it opens the store (a cut zarr.json, a lost table chunk):
        error = _verify_cannot_repair(raised) if args.repair else raised  # --repair's advice: --repair
        error.exit_code = EXIT_FAILED  # damage is verify's answer, exit 1, wherever in the store it is
        if args.json:  # a script parses stdout on exit 1: it gets the one object README promises
            print(json.dumps({
                "store": args.store, "intact": False, "unfinished": False, "checked": 0,
                "problems": [{"id": "*", "feature": "", "reason": str(error)}],
                "queued_for_reextraction": [],
            }, indent=2))
            return EXIT_FAILED
        raise error from None


def _verify_cannot_repair(error: Exception) -> Exception:
    """A reader's damage error whose advice is `store verify --repair`, rewritten for verify itself:
    verify and --repair stopped at that damage, so running them again would fail the same way."""
    from w2v2ser.store import StoreDamagedError

    damage = getattr(error, "damage", None)
    if damage is None:  # the damage of a metadata file: its message already says to restore it
        return error
    path, key, what = damage
    return StoreDamagedError(
        f"store {path} is damaged: array {key} {what}. `store verify` and its `--repair` cannot get past it, "
        f"so there is nothing they can list or queue. Copy {key}'s files "
        f"back from a backup or from the store this one was copied from if you have one; otherwise extract "
        f"the corpus into a new store with the options that made this one (`--like RUN_DIR` of a run "
        f"trained on it keeps its feature configs; `--like` this store stops at the same damage).")


def _verify_store(args: argparse.Namespace) -> int:
    from w2v2ser.store import StoreDamagedError, open_store, repair_store

    try:
        store = open_store(args.store, allow_incomplete=True)  # its completeness before any repair
    except StoreDamagedError as error:  # --repair opens the store the same way and would stop there too
        raise _verify_cannot_repair(error) from None
    pairs: list[tuple[str, str]] = []
    if args.repair:
        report, pairs = repair_store(args.store, progress=not args.no_progress)
    else:
        from w2v2ser.store import StoreLockedError
        from w2v2ser.store._lock import extraction_running

        running = extraction_running(store.location)
        if running is not None:  # --repair takes the lock itself, and is refused the same way
            raise StoreLockedError(
                f"{running}: verify would read tables and frames that extraction is rewriting and report its "
                f"changes as damage. Verify the store when that extraction has finished.")
        report = store.verify(progress=not args.no_progress)
    unfinished = not store.complete and not pairs  # only its last finalize's part can be checked
    intact = report.ok and not unfinished  # a script must not take an unfinished store for a verified one
    if args.json:  # the same checks and exit status, for a script
        print(json.dumps({
            "store": args.store, "intact": intact, "unfinished": unfinished,
            "checked": report.checked,
            "problems": [{"id": uid, "feature": feature, "reason": message}
                         for uid, feature, message in report.problems],
            "queued_for_reextraction": [{"id": uid, "feature": feature} for uid, feature in pairs],
        }, indent=2))
        return 0 if intact else 1
    for utterance_id, feature, message in report.problems:
        print(f"{utterance_id}\t{feature}\t{message}")
    print("intact" if intact else f"{len(report.problems)} problem(s) found" if not report.ok else
          "no problem found so far")
    if pairs:
        print(f"queued {len(pairs)} utterance x feature pair(s) with damaged frames for re-extraction; the store is "
              f"incomplete until you rerun the extraction that made it (the same `w2v2ser extract` or `w2v2ser "
              f"run` command), which extracts only those again")
    elif args.repair and not report.ok:
        print("none of these problems is one utterance's frames: --repair cannot queue them for re-extraction")
    if unfinished:
        print(f"the store is incomplete: {report.checked} utterance x feature regions of its last finalize were "
              f"checked; what the unfinished extraction committed since is checked once it finishes "
              f"({_resume_command(store)}, then verify again)")
    return 0 if intact else 1


def _cmd_store_export(args: argparse.Namespace) -> int:
    from w2v2ser.store import export_hdf5

    out = export_hdf5(args.store, args.out, progress=not args.no_progress)
    print(f"wrote {out}")
    return 0


def _cmd_store_upgrade(args: argparse.Namespace) -> int:
    from w2v2ser.store import open_store, upgrade_store

    # upgrade_store refuses a NEW that holds anything but this very upgrade: if NEW held files
    # before and the call returns, it was the finished upgrade already (a rerun), nothing written.
    new = Path(args.new)
    done_before = new.is_dir() and any(p.name != ".lock" for p in new.iterdir())
    out = upgrade_store(args.old, args.new, progress=not args.no_progress, allow_incomplete=args.allow_incomplete,
                        skip_damaged=args.skip_damaged)
    store = open_store(out, allow_incomplete=True)
    status = store.describe()["status"]
    what = f"{out} already holds the upgrade of {args.old}, nothing to do" if done_before else f"wrote {out}"
    print(f"{what} (format {store.format_version}): {status['done']} done, {status['failed']} failed, "
          f"{status['pending']} pending utterances; {args.old} is unchanged")
    damaged = store.attrs["upgraded_from"].get("damaged", [])
    if damaged:
        listed = ", ".join(f"{d['id']!r} ({d['feature']})" for d in damaged[:10])
        more = f" and {len(damaged) - 10} more" if len(damaged) > 10 else ""
        print(f"{len(damaged)} utterance(s) had damaged frames in {args.old} and were left pending: {listed}{more}. "
              f"Rerun `w2v2ser extract` for that corpus and features with --store {shlex.quote(str(out))} to extract "
              f"them again.")
    return 0


def _given_options(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The experiment keys given as options (they default to None; ExperimentConfig's defaults apply)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _apply_settings(values: dict[str, Any], settings: Sequence[str]) -> None:
    """``--set KEY=VALUE``: recipe keys go to ``recipe_overrides``, the rest are experiment keys."""
    from w2v2ser._common import ConfigError, did_you_mean
    from w2v2ser.train import ExperimentConfig, Recipe

    recipe_keys = set(Recipe.__dataclass_fields__) - {"name"}
    known = sorted(recipe_keys | set(ExperimentConfig.__dataclass_fields__) - {"stores", "recipe_overrides"})
    overrides: dict[str, Any] = {}
    options = set(values)  # options default to None: a key in values was given as an option
    for text in settings:
        key, sep, raw = text.partition("=")
        if not sep:
            raise ConfigError(f"--set {text!r} is not KEY=VALUE, e.g. --set learning_rate=3e-4 or --set units=64.")
        if key.removeprefix("recipe_overrides.") in recipe_keys:  # pipeline.yaml's spelling, taken as well
            key = key.removeprefix("recipe_overrides.")
        if key not in known:  # recipe and experiment keys together, as --set takes them
            raise ConfigError(f"--set {text!r}: unknown key {key!r}.{did_you_mean(key, known)} "
                              f"Valid keys: {', '.join(known)}.")
        if key in options:  # a second --set of the same key wins, as before
            raise ConfigError(f"{key} is given both with --{key.replace('_', '-')} and with --set {key}=...; "
                              f"give it once")
        (overrides if key in recipe_keys else values)[key] = load_yaml(raw)
    if overrides:
        values["recipe_overrides"] = overrides


def _default_protocol(values: dict[str, Any], store: str) -> None:
    """Without --protocol (or --set protocol=...), use the protocol of the store's corpus."""
    if values.get("protocol") is None:
        from w2v2ser.train import protocol_of_store

        subset = values.get("subset")
        # an unopenable or incomplete store: its own error; of several corpora, --subset corpus=NAME picks one
        values["protocol"] = protocol_of_store(store, subset=subset.get("corpus") if isinstance(subset, dict) else None)


def _refuse_inside_store(path: str, option: str, *, itself: bool = True) -> None:
    """:func:`w2v2ser.store._layout.refuse_inside_store`, imported when a command runs."""
    from w2v2ser.store._layout import refuse_inside_store

    refuse_inside_store(path, option, itself=itself)


def _cmd_train(args: argparse.Namespace) -> int:
    from w2v2ser._common import ConfigError
    from w2v2ser.train import ExperimentConfig, format_uar, train_experiment
    from w2v2ser.train._head_names import fusion_heads, reads_fusion

    _refuse_inside_store(args.out, "--out")
    stores = {"main": args.store, **({"fusion": args.fusion_store} if args.fusion_store else {})}
    values = _given_options(args, "features", "fusion_features", "head", "norm", "protocol", "recipe", "seeds")
    _apply_settings(values, args.set)
    values["stores"] = stores
    head = values.get("head", "dense")
    if args.fusion_store and not reads_fusion(head):
        heads = " or ".join(f"--head {name}" for name in fusion_heads() or ["fusion"])
        raise ConfigError(f"--fusion-store {args.fusion_store} is read only by {heads}, got --head {head}; "
                          f"add {heads} or drop --fusion-store")
    _add_data_options(values, args)
    _default_protocol(values, args.store)
    config = ExperimentConfig.from_dict(values)
    results = train_experiment(config, out=Path(args.out), progress=not args.no_progress, threads=args.threads)
    from w2v2ser.evaluate._rundir import data_text  # " (method=improvised; 4 speaker folds)", as the report names it

    print(f"{config.features} / {config.head} / {config.norm} / {config.recipe} / {config.protocol}"
          f"{data_text({'subset': config.subset, 'speaker_folds': config.speaker_folds})}: "
          f"{format_uar(results)} -> {args.out}/results.json")
    return _missing_runs(results, args.out, "train")


def _missing_runs(results: Mapping[str, Any], out: str, command: str) -> int:
    """Exit 1, saying so, when results.json lacks planned runs (see missing_runs_message)."""
    from w2v2ser.train import missing_runs_message

    message = missing_runs_message(results, out, command)
    if not message:
        return 0
    print(f"w2v2ser: error: {message}", file=sys.stderr)
    return EXIT_FAILED


def _same_sweep(a: str, b: str) -> bool:
    """Whether two --features selections of `sweep` name the same layers (``wav2vec2`` and ``wav2vec2:all``)."""
    from w2v2ser.train import SelectionError, parse_selection

    try:
        x, y = parse_selection(a), parse_selection(b)
    except SelectionError:  # reported with its reason when the sweep's config is built
        return a == b
    return (x.alias, x.feature, x.layers or "all") == (y.alias, y.feature, y.layers or "all")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from w2v2ser._common import ConfigError
    from w2v2ser.train import ALL_LAYERS_DIR, ExperimentConfig, describe_sweep, plan_runs, sweep_configs, sweep_experiment

    _refuse_inside_store(args.out, "--out")
    values = _given_options(args, "features", "head", "norm", "protocol", "recipe", "seeds")
    _apply_settings(values, args.set)
    values["stores"] = {"main": args.store}
    _add_data_options(values, args)
    _default_protocol(values, args.store)
    given = values.pop("features")
    upstreams = []
    for text in (f.strip() for f in given.split(",") if f.strip()):
        same = [u for u in upstreams if _same_sweep(u, text)]
        if same:  # wav2vec2 and wav2vec2:all sweep the same layers: train them once
            print(f"w2v2ser: note: {text!r} sweeps the same layers as {same[0]!r}; swept once", file=sys.stderr)
        else:
            upstreams.append(text)
    if not upstreams:
        raise ConfigError(f"--features {given!r} names no upstream to sweep; give one or more, e.g. "
                          f"--features wav2vec2 or --features hubert,wavlm:1-12")
    configs = {upstream: ExperimentConfig.from_dict({**values, "features": upstream}) for upstream in upstreams}
    for config in configs.values():  # every selection is checked before the first sweep trains
        plan_runs(sweep_configs(config)[ALL_LAYERS_DIR])
    code = 0
    for upstream, config in configs.items():
        out = Path(args.out) if len(upstreams) == 1 else Path(args.out) / upstream.replace("/", "_").replace(":", "_")
        summary = sweep_experiment(config, out=out, progress=not args.no_progress, threads=args.threads)
        print(f"{upstream}: {describe_sweep(summary)} -> {out}/sweep.json")
        # Every head has the same runs: the weighted average's results.json speaks for all.
        code = max(code, _missing_runs(json.loads((out / ALL_LAYERS_DIR / "results.json").read_text()),
                                       str(out / ALL_LAYERS_DIR), "sweep"))
    return code


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from w2v2ser._common import FULL_DISK_ERRNOS, did_you_mean
    from w2v2ser.evaluate import EvaluateError, write_report
    from w2v2ser.evaluate._sweep import SEARCH_DEPTH, _distinct, run_dirs_by_depth

    _refuse_inside_store(args.out, "--out")
    baselines = _distinct([Path(p) for p in args.baseline or []])  # one folder given twice is one baseline
    if len(baselines) > 1:  # argparse kept the last one only: the other comparisons were dropped unsaid
        raise EvaluateError(f"--baseline is given {len(baselines)} times ({', '.join(map(str, baselines))}); "
                            "expected one: a report compares every run directory with one baseline. Write one "
                            "report per baseline, each with its own --out.")
    # One walk per path, twice the search's depth: the run dirs below that depth are not in the report (said below)
    walked: dict[Path, list[tuple[Path, int]]] = {}
    for given in map(Path, args.run_dirs):  # a mistyped path is bad input, not an incomplete run
        if not given.is_dir():
            if given.exists():
                what, hint = "is a file", f" Pass its folder, {given.parent}."
            else:
                nearby = [p.name for p in given.parent.iterdir()] if given.parent.is_dir() else []
                what, hint = "does not exist", did_you_mean(given.name, nearby)
            raise EvaluateError(f"{given} {what}; expected a run directory (`w2v2ser train --out`), a sweep "
                                f"folder or a folder of them, e.g. a pipeline's output.{hint}")
        walked[given] = run_dirs_by_depth(given, depth=2 * SEARCH_DEPTH)
        if not any(level <= SEARCH_DEPTH for _, level in walked[given]):  # a folder of audio, models or nothing
            raise EvaluateError(f"{given} holds no run or sweep directory (no experiment.json or results.json in it "
                                f"or up to {SEARCH_DEPTH} folders below); expected a `w2v2ser train --out` or `w2v2ser sweep "
                                f"--out` folder, or a folder of them, e.g. a pipeline's output.")
    try:
        out = write_report([Path(p) for p in args.run_dirs], out=Path(args.out),
                           baseline=Path(baselines[0]) if baselines else None)
    except OSError as error:  # PIL's and matplotlib's writes name no file: the report folder is the disk to free
        if error.errno in FULL_DISK_ERRNOS and not error.filename:
            error.filename = args.out
        raise
    print(f"wrote {out}")
    # A run dir left out of the tables (unfinished, or a results.json that cannot be read) is said
    # here too, not only in the report: otherwise a damaged run vanishes from the tables unnoticed.
    runs = json.loads((out.parent / "report.json").read_text(encoding="utf-8"))["runs"]
    left_out: dict[str, list[str]] = {}  # reason -> run dirs: the heads of one unfinished sweep, said once
    for run in (r for r in runs if r["status"] == "incomplete"):
        left_out.setdefault(run["reason"], []).append(run["path"])
    for reason, paths in left_out.items():
        what = paths[0] if len(paths) == 1 else f"{len(paths)} run directories ({first_few(paths, 2)})"
        print(f"w2v2ser: warning: {what} {'is' if len(paths) == 1 else 'are'} not in the tables: {reason}",
              file=sys.stderr)
    # Run dirs below the search's depth are not in the report: say so, unless another path given names them.
    reported = {p.resolve() for found in walked.values() for p, level in found if level <= SEARCH_DEPTH}
    for given, found in walked.items():
        deeper = [str(p) for p, level in found if level > SEARCH_DEPTH and p.resolve() not in reported]
        if deeper:
            print(f"w2v2ser: warning: {len(deeper)} run director{'y lies' if len(deeper) == 1 else 'ies lie'} more "
                  f"than {SEARCH_DEPTH} folders below {given} and {'is' if len(deeper) == 1 else 'are'} not in the "
                  f"report ({first_few(deeper, 2)}); pass a folder nearer to them", file=sys.stderr)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from w2v2ser.evaluate import predict_from_cli

    return predict_from_cli(args)


def _cmd_run(args: argparse.Namespace) -> int:
    if args.schema:
        from w2v2ser._config import pipeline_json_schema

        print(json.dumps(pipeline_json_schema(), indent=2))
        return 0
    if args.pipeline is None:
        from w2v2ser._common import ConfigError

        raise ConfigError("w2v2ser run: give the pipeline file, e.g. `w2v2ser run pipeline.yaml` "
                          "(or --schema to print its JSON Schema)")
    from w2v2ser._run import run_pipeline

    return run_pipeline(Path(args.pipeline), stage=args.stage, overrides=args.set)


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum`` (argparse names the option, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def _add_data_options(values: dict[str, Any], args: argparse.Namespace) -> None:
    """``--subset`` conditions (a field given twice: one list) and ``--speaker-folds`` into the experiment."""
    from w2v2ser._common import ConfigError

    given: dict[str, Any] = {}
    if args.subset:
        given["subset"] = merge_subset(args.subset)
    if args.speaker_folds is not None:
        given["speaker_folds"] = args.speaker_folds
    clash = sorted(given.keys() & values.keys())
    if clash:
        raise ConfigError(f"{clash[0]} is given both with --{clash[0].replace('_', '-')} and with --set "
                          f"{clash[0]}=...; give it once")
    values.update(given)


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (checked even where no model uses it)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with a did-you-mean for a mistyped choice or subcommand (subparsers inherit the class)."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as exc:
            from w2v2ser._common import did_you_mean

            hint = did_you_mean(value, action.choices or ())
            if not hint:
                raise
            raise argparse.ArgumentError(action, f"{exc.message}.{hint}") from None

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        """argparse's, except that an unknown argument is reported by the (sub)command it was given to,
        with its usage and a did-you-mean (argparse named none, under the top-level usage)."""
        parsed, extras = self.parse_known_args(args, namespace)
        if not extras:
            return parsed
        parser: argparse.ArgumentParser = self
        while True:  # down to the subcommand that ran: `store info`, not `w2v2ser`
            chosen = next((action.choices.get(getattr(parsed, action.dest, None))  # type: ignore[union-attr]
                           for action in parser._actions if isinstance(action, argparse._SubParsersAction)), None)
            if chosen is None:
                break
            parser = chosen
        from w2v2ser._common import did_you_mean

        options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
        unknown = next((e.partition("=")[0] for e in extras if e.startswith("-")), None)
        if unknown in options:  # given before the subcommand: `w2v2ser --verbose train ...`
            hint = f" {unknown} is an option of `{parser.prog}`: put it after the command's name."
        else:
            hint = did_you_mean(unknown, options) if unknown else ""
        parser.error(f"unrecognized arguments: {' '.join(extras)}" + (f".{hint}" if hint else ""))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``w2v2ser`` command."""
    from w2v2ser import __version__
    from w2v2ser.extract._corpora import CORPUS_READERS
    from w2v2ser.extract._registry import EXTRACTORS, UPSTREAMS
    from w2v2ser.train import NORMALISATIONS, PROTOCOLS, RECIPES
    from w2v2ser.train._head_names import HEAD_BRANCHES

    # Choices and feature lists come from the registries: a registered reader, extractor, head,
    # normalisation, protocol or recipe is offered here without an edit.
    upstreams = [name for name in EXTRACTORS if name in UPSTREAMS]
    others = [name for name in EXTRACTORS if name not in UPSTREAMS]
    parser = _Parser(
        prog="w2v2ser", description="Speech emotion recognition with wav2vec 2.0 embeddings."
    )
    parser.add_argument("--version", action="version", version=f"w2v2ser {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("--verbose", action="store_true",
                         help="show TensorFlow/absl native log lines and error tracebacks")

    extract = commands.add_parser("extract", help="stage 1: extract features of a corpus into a store",
                                  parents=[verbose])
    extract.add_argument("corpus", choices=list(CORPUS_READERS), help="corpus reader")
    extract.add_argument("path", type=path_argument, help="corpus root folder, or the CSV manifest (path,label,speaker[,gender,session,split,id,corpus,...])")
    extract.add_argument("--store", type=path_argument, help="store directory or object-store URL, e.g. s3://bucket/ravdess.zarr "
                                              "(default: stores/CORPUS.zarr)")
    extract.add_argument(
        "--features",
        help=f"comma separated, from {','.join(EXTRACTORS)} (default: {','.join(FEATURES)}); "
        "the speech encoder's name is its family (config.json model_type), e.g. --features hubert",
    )
    extract.add_argument("--model", help="speech encoder model: hub id, local HF directory or fairseq .pt (wav2vec2) "
                                         "(default: the family's base model, e.g. facebook/wav2vec2-base)")
    extract.add_argument("--revision", help="hub revision (branch, tag or commit)")
    extract.add_argument("--device", choices=["auto", "cpu", "cuda"],
                         help="speech encoder device (default: auto, CUDA when present, else the CPU; one GPU of "
                              "several: --option wav2vec2.device=cuda:N)")
    extract.add_argument("--batch-seconds", dest="batch_seconds", type=_seconds,
                         help="padded audio seconds per model batch (default: 32)")
    extract.add_argument(
        "--option", action="append", default=[], metavar="FEATURE.KEY=VALUE",
        help="any extractor option, e.g. spectrogram.hop_ms=20 (repeatable)",
    )
    extract.add_argument("--like", metavar="STORE", type=path_argument,
                         help="reuse the feature configs recorded in STORE, or in a run directory of "
                              "`w2v2ser train` (its experiment.json)")
    extract.add_argument("--shard-size", dest="shard_size", type=_count(1), default=SHARD_SIZE,
                         help=f"utterances per unit of work (default {SHARD_SIZE})")
    extract.add_argument("--workers", type=_count(0), default=0, metavar="N",
                         help="run shards on a local Dask cluster of N CPU workers (and, as `w2v2ser run`, "
                              "one GPU worker per GPU) (default: 0, no cluster)")
    extract.add_argument("--decode-workers", dest="decode_workers", type=_count(0), metavar="N",
                         help="processes decoding audio ahead of the model (default: a few on CUDA, none on CPU)")
    extract.add_argument("--cpu-workers", dest="cpu_workers", type=_count(1), default=1, metavar="N",
                         help="parallel instances of each CPU feature (eGeMAPS, spectrogram) beside the model "
                              "(default: 1)")
    extract.add_argument("--no-progress", dest="no_progress", action="store_true", help=_NO_PROGRESS_HELP)
    extract.set_defaults(func=_cmd_extract)

    store = commands.add_parser("store", help="inspect, verify, export or upgrade a feature store")
    store_commands = store.add_subparsers(dest="store_command", required=True)
    info = store_commands.add_parser("info", aliases=["inspect"], help="utterances, speakers, features, failures",
                                     parents=[verbose])
    info.add_argument("store", type=path_argument, help=STORE_HELP)
    info.add_argument("--json", action="store_true", help="everything, every failure included, as one JSON document")
    info.set_defaults(func=_cmd_store_info)
    verify = store_commands.add_parser("verify", help="check every utterance against its checksum (exit 0 if intact)",
                                       parents=[verbose])
    verify.add_argument("store", type=path_argument, help=STORE_HELP)
    verify.add_argument("--repair", action="store_true",
                        help="queue the utterances whose frames are damaged for re-extraction: the next run of "
                             "the same extraction extracts only those again")
    verify.add_argument("--json", action="store_true",
                        help="the report as one JSON document: intact, unfinished (an extraction to resume), "
                             "checked, problems (id, feature, reason; id '*' for a whole feature or table), pairs "
                             "queued by --repair; same exit status")
    verify.add_argument("--no-progress", dest="no_progress", action="store_true", help=_NO_PROGRESS_HELP)
    verify.set_defaults(func=_cmd_store_verify)
    export = store_commands.add_parser("export", help="write an HDF5 copy",
                                       parents=[verbose])
    export.add_argument("store", type=path_argument, help=STORE_HELP)
    export.add_argument("out", type=path_argument, help="HDF5 file to write (replaced if it exists): utterances, failures and, per "
                                    "feature, frames back to back with offsets, checksums and statistics")
    export.add_argument("--no-progress", dest="no_progress", action="store_true", help=_NO_PROGRESS_HELP)
    export.set_defaults(func=_cmd_store_export)
    upgrade = store_commands.add_parser("upgrade", help="convert a format-1 store into a new store of the current format",
                                        parents=[verbose])
    upgrade.add_argument("old", type=path_argument, help="format-1 store (only read)")
    upgrade.add_argument("new", type=path_argument, help="new store directory")
    upgrade.add_argument("--no-progress", dest="no_progress", action="store_true", help=_NO_PROGRESS_HELP)
    upgrade.add_argument("--allow-incomplete", action="store_true",
                         help="upgrade an old store whose extraction never finished, keeping only what its last "
                              "finalize recorded (the rest stays pending); by default refused, since utterances "
                              "its journal committed after that finalize would be lost")
    upgrade.add_argument("--skip-damaged", action="store_true",
                         help="leave utterances whose old frames fail their crc32 pending in the new store (the "
                              "next `w2v2ser extract` into it extracts them again) instead of refusing")
    upgrade.set_defaults(func=_cmd_store_upgrade)

    train = commands.add_parser("train", help="stage 2: train heads over a protocol and seeds", parents=[verbose])
    train.add_argument("store", type=path_argument, help=f"feature store written by `w2v2ser extract`; {STORE_HELP}")
    train.add_argument(
        "--features", required=True,
        help=f"UPSTREAM:local|contextual|all|N|A-B (UPSTREAM: {', '.join(upstreams)}), {or_list(others)} "
             "(prefix alias/ for another store)",
    )
    train.add_argument("--fusion-store", dest="fusion_store", type=path_argument,
                       help="store the fusion branch reads its --fusion-features from (--head fusion)")
    train.add_argument("--fusion-features", dest="fusion_features", help="fusion branch selection (default egemaps)")
    train.add_argument("--head", choices=list(HEAD_BRANCHES),
                       help="the paper's heads (default: dense); fusion adds an eGeMAPS branch")
    train.add_argument("--norm", choices=list(NORMALISATIONS),
                       help="feature normalisation from the store's statistics (default: speaker)")
    train.add_argument("--protocol", choices=list(PROTOCOLS), help=PROTOCOL_HELP)
    train.add_argument("--recipe", choices=list(RECIPES),
                       help="training recipe: the paper's text or the authors' released code (default: paper)")
    train.add_argument("--seeds", type=_count(1), help="number of seeds (default: 5)")
    train.add_argument("--out", required=True, type=path_argument, help="run directory")
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="any recipe or experiment hyperparameter, e.g. learning_rate=3e-4, units=64 (repeatable)",
    )
    train.add_argument("--subset", action="append", type=subset_condition, metavar="FIELD=VALUE[,VALUE]",
                       help=SUBSET_HELP)
    train.add_argument("--speaker-folds", dest="speaker_folds", type=_count(3), metavar="K", help=FOLDS_HELP)
    train.add_argument("--threads", type=_count(1), help="TensorFlow threads (default: all cores)")
    train.add_argument("--no-progress", dest="no_progress", action="store_true", help=_NO_PROGRESS_HELP)
    train.set_defaults(func=_cmd_train)

    sweep = commands.add_parser("sweep", help="stage 2: Dense probe on every layer of an upstream + weighted average",
                                parents=[verbose])
    sweep.add_argument("store", type=path_argument, help=f"feature store written by `w2v2ser extract`; {STORE_HELP}")
    sweep.add_argument("--features", required=True,
                       help="upstream feature(s) in the store, comma separated (wav2vec2, hubert, ...); "
                            "FEATURE:A-B sweeps layers A..B only")
    sweep.add_argument("--head", help="only dense (the paper's probe)")
    sweep.add_argument("--norm", choices=list(NORMALISATIONS),
                       help="feature normalisation from the store's statistics (default: speaker)")
    sweep.add_argument("--protocol", choices=list(PROTOCOLS), help=PROTOCOL_HELP)
    sweep.add_argument("--recipe", choices=list(RECIPES),
                       help="training recipe: the paper's text or the authors' released code (default: paper)")
    sweep.add_argument("--seeds", type=_count(1), help="number of seeds (default: 5)")
    sweep.add_argument("--out", required=True, type=path_argument, help="output folder (a subfolder per upstream when several)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any recipe or experiment hyperparameter, e.g. learning_rate=3e-4 (repeatable)")
    sweep.add_argument("--subset", action="append", type=subset_condition, metavar="FIELD=VALUE[,VALUE]",
                       help=SUBSET_HELP)
    sweep.add_argument("--speaker-folds", dest="speaker_folds", type=_count(3), metavar="K", help=FOLDS_HELP)
    sweep.add_argument("--threads", type=_count(1), help="TensorFlow threads (default: all cores)")
    sweep.add_argument("--no-progress", dest="no_progress", action="store_true", help=_NO_PROGRESS_HELP)
    sweep.set_defaults(func=_cmd_sweep)

    evaluate = commands.add_parser("evaluate", help="Tables 1/2 report, confusion matrices, layer weights",
                                   parents=[verbose])
    evaluate.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", type=path_argument,
                          help="run or sweep directories of `w2v2ser train|sweep`, or folders holding them "
                               "(e.g. runs/, a pipeline's output)")
    evaluate.add_argument("--out", required=True, type=path_argument, help="report folder: report.md, report.json, report.csv, figures")
    evaluate.add_argument("--baseline", metavar="RUN_DIR", type=path_argument, action="append",
                          help="one of the run directories: the report adds each other one's difference in "
                               "mean UAR to it, with Welch's t-test over their seeds (one per report)")
    evaluate.set_defaults(func=_cmd_evaluate)

    predict = commands.add_parser("predict", help="emotion and class probabilities for new audio", parents=[verbose])
    from w2v2ser.evaluate._cli import add_predict_arguments

    add_predict_arguments(predict)
    predict.set_defaults(func=_cmd_predict)

    run = commands.add_parser("run", help="run pipeline.yaml: extract, train, evaluate (skips finished work)",
                              parents=[verbose])
    run.add_argument("pipeline", nargs="?", type=path_argument, help="the pipeline file, e.g. pipeline.yaml")
    run.add_argument("--stage", choices=["extract", "train", "evaluate"],
                     help="run this stage only (default: all three; finished work is skipped)")
    run.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a key of the file, e.g. experiments.table1.seeds=1 (repeatable)")
    run.add_argument("--schema", action="store_true",
                     help="print the JSON Schema of pipeline.yaml (for editors) and exit")
    run.set_defaults(func=_cmd_run)
    return parser


# Signals that end a command like SIGTERM, with why in the log: a closed terminal or ssh session
# (SIGHUP, without nohup) and SIGQUIT (Ctrl-\\) ended extract or train silently.
_TERMINATING = {"SIGTERM": "scancel, the job's time limit or kill",
                "SIGHUP": "the terminal or ssh session closed; run it under nohup, tmux or a batch job",
                "SIGQUIT": "Ctrl-\\ or kill -QUIT"}
_received: list[int] = []  # the terminating signal that stopped this command


def _terminate(signum: int, frame: Any) -> None:
    import signal

    from w2v2ser._common import Terminated, request_stop

    _received[:] = [signum]
    request_stop(terminated=True)
    signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once
    raise Terminated


def _interrupt(signum: int, frame: Any) -> None:
    from w2v2ser._common import request_stop

    request_stop()  # remembered in case the KeyboardInterrupt below is lost (see check_stop)
    raise KeyboardInterrupt


def _stop_in_callback_hook(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """``sys.unraisablehook`` that drops the KeyboardInterrupt or Terminated of a stop signal that
    landed in a weakref callback or ``__del__``: Python cannot raise it there and printed it as
    "Exception ignored in ..." with a traceback (a scancel during training). The stop is not lost:
    the handler requested it, and the loops' check_stop raises it again. Anything else goes on
    to ``previous``. A KeyboardInterrupt that no stop request stands behind (someone else's SIGINT
    handler raised it) requests the stop, so that this Ctrl-C is not lost either."""
    from w2v2ser._common import Terminated, request_stop, stop_requested

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous(unraisable)
        elif not stop_requested():  # someone else's SIGINT handler raised it: make that Ctrl-C count
            request_stop(terminated=isinstance(unraisable.exc_value, Terminated))

    return hook


@contextlib.contextmanager
def _sigterm_raises() -> Any:
    """SIGTERM raises :class:`Terminated`, and SIGINT KeyboardInterrupt, while a command runs (only
    where nobody else handles them); both also request a stop that loops check between runs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    from w2v2ser._common import clear_stop

    handle_int = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # SIGHUP and SIGQUIT where nobody else handles them (nohup ignores SIGHUP: it stays ignored).
    others = [getattr(signal, name) for name in ("SIGHUP", "SIGQUIT")
              if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) == signal.SIG_DFL]
    clear_stop()
    _received.clear()
    signal.signal(signal.SIGTERM, _terminate)
    for other in others:
        signal.signal(other, _terminate)
    if handle_int:
        signal.signal(signal.SIGINT, _interrupt)
    unraisable = sys.unraisablehook
    sys.unraisablehook = _stop_in_callback_hook(unraisable)
    try:
        yield
    finally:
        sys.unraisablehook = unraisable
        # A signal handled while the handlers are restored raises here: each restore and the
        # forgetting of the stop request still run, so neither our handlers nor a stop request
        # outlive the command and stop later library calls of this process.
        try:
            for other in others:
                signal.signal(other, signal.SIG_DFL)
        finally:
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            finally:
                try:
                    if handle_int:
                        signal.signal(signal.SIGINT, signal.default_int_handler)
                finally:
                    clear_stop()


# (A stop after the finished file or folder was moved into place leaves it complete: each line is true both ways.)
_STARTS_OVER = {
    _cmd_store_export: "OUT is either as it was before or the complete new export; rerun the same command to "
                       "export again",
    _cmd_store_upgrade: "the old store is unchanged, and NEW is either as it was before or the complete upgrade; "
                        "rerun the same command (it does nothing if NEW is complete)",
    _cmd_predict: "rerun the same command to predict again",
}


def _what_a_stop_keeps(args: argparse.Namespace) -> str:
    """The end of the line said when the command is stopped or killed: what of its work is kept."""
    func = getattr(args, "func", None)
    if func in (_cmd_store_info, _cmd_store_verify) and not getattr(args, "repair", False):
        return "the store is unchanged (this command only reads it); rerun the same command"  # nothing to resume
    return _STARTS_OVER.get(func, "finished work is kept, rerun the same command to resume")


def _open_closed_std_streams() -> None:
    """Point a closed standard stream (``2>&-``, ``>&-``: some daemons, cron and scheduler wrappers) at
    /dev/null. Python then sets ``sys.stderr``/``sys.stdout`` to None, and the first message or flush
    failed before any work was done (exit 1, nothing said): now the output is dropped and the command
    runs, with its own exit code."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        try:
            os.fstat(fd)
        except OSError:  # closed: the descriptor is free, so /dev/null takes it (native code writes there too)
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115 (process-long)
        else:  # open, but not as a standard stream (an embedding host): leave the descriptor alone
            setattr(sys, name, open(os.devnull, "r" if fd == 0 else "w"))  # noqa: SIM115


class _StdoutFailed(Exception):
    """Standard output cannot be written (``>/dev/full``, a full disk under a redirected log)."""


class _GuardedStdout:
    """``sys.stdout`` while a command runs: a failed write (other than a reader that left, which
    ``main`` reports as exit 141) raises :class:`_StdoutFailed`, so that it is one line on stderr
    rather than a traceback, and later writes (and Python's flush at exit) go to /dev/null."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _guarded(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except BrokenPipeError:
            raise
        except OSError as error:
            with contextlib.suppress(OSError, ValueError):  # the rest of the output, and the exit flush, dropped
                null = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(null, self._stream.fileno())
                finally:
                    os.close(null)
            raise _StdoutFailed(error.strerror or str(error)) from error

    def write(self, text: str) -> int:
        return self._guarded(lambda: self._stream.write(text))

    def flush(self) -> None:
        self._guarded(self._stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _guarded_stdout() -> Any:
    """:class:`_GuardedStdout` in place of ``sys.stdout`` while active."""
    stream = sys.stdout
    sys.stdout = _GuardedStdout(stream)
    try:
        yield
    finally:
        if isinstance(sys.stdout, _GuardedStdout):
            sys.stdout = stream


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``w2v2ser`` console script.

    Exit codes: 0 done; 1 a run failed (some unit of work failed, finished work is kept);
    2 bad input or configuration (nothing ran; the message says what to fix); 130 interrupted;
    141 the reader of standard output left (``| head``); 143 terminated (SIGTERM; 129 SIGHUP,
    131 SIGQUIT).
    """
    _open_closed_std_streams()
    try:  # the parser imports the stages' modules (numpy, ...): seconds in which a Ctrl-C may land
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("w2v2ser: interrupted before the command started; nothing was done", file=sys.stderr)
        return 130
    verbose = bool(getattr(args, "verbose", False))
    try:
        with _sigterm_raises(), _guarded_stdout():
            code = _run_command(args, verbose)
            sys.stdout.flush()  # a reader that left shows here, not as an error at interpreter exit
        return code
    except _StdoutFailed as error:  # at the final flush; one inside the command is reported by _run_command
        print(f"w2v2ser: error: {_stdout_failed_message(error)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as stop:  # here, not inside: a Ctrl-C can also land while the native-log filter closes
        import logging
        import warnings

        # Store reads in flight on zarr's event loop are torn down at exit; asyncio would log each
        # as "Task was destroyed but it is pending!" with its repr, and warn for each read that was
        # scheduled but had not started yet ("coroutine ... was never awaited").
        logging.getLogger("asyncio").disabled = True
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
        from w2v2ser._common import Terminated

        kept = _what_a_stop_keeps(args)
        if isinstance(stop, Terminated):  # in a job's log, the only word on why the run ended
            import signal

            signum = _received[0] if _received else int(signal.SIGTERM)
            name = signal.Signals(signum).name
            print(f"w2v2ser: terminated ({name}: {_TERMINATING.get(name, 'a signal')}); {kept}", file=sys.stderr)
            return 128 + signum  # 143 for SIGTERM, as a shell reports a command killed by it
        print(f"w2v2ser: interrupted; {kept}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `w2v2ser store info S | head`: the reader left; no traceback for that
        # Python flushes stdout again at exit, which would raise once more: point it at devnull.
        with contextlib.suppress(OSError, ValueError):  # a stdout without a file descriptor needs nothing
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it


def _stdout_failed_message(error: BaseException) -> str:
    """The one line for a standard output that cannot be written."""
    return (f"could not write to standard output ({error}); files the command wrote are kept. Point "
            f"standard output at a file or device with space, then rerun the same command.")


def _run_command(args: argparse.Namespace, verbose: bool) -> int:
    from w2v2ser._common import describe_error
    from w2v2ser._native_logs import hide_native_logs

    # A SIGKILL or native crash says the same as a Ctrl-C of what is kept (nothing of export, upgrade, predict).
    with hide_native_logs(enabled=not verbose, abrupt_end=_what_a_stop_keeps(args)):
        try:
            return int(args.func(args) or 0)
        except BaseException as error:  # w2v2ser's errors, a missing extra, an unusable path: one line
            if not isinstance(error, Exception) and type(error).__name__ != "PanicException":
                raise  # Ctrl-C, SIGTERM, exit: main() says those; a Rust panic is not an Exception either
            described = ((_stdout_failed_message(error), EXIT_FAILED) if isinstance(error, _StdoutFailed)
                         else describe_error(error))
            if described is None:
                raise
            if verbose:
                import traceback

                traceback.print_exc()
            print(f"w2v2ser: error: {described[0]}", file=sys.stderr)
            if type(error).__name__ == "StoreUnreachableError":  # (no store import here: it is slow)
                # Requests still in flight on zarr's event loop when the store went away are torn down
                # at exit: asyncio would warn for each ("coroutine ... was never awaited").
                import logging
                import warnings

                logging.getLogger("asyncio").disabled = True
                warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
            return described[1]
