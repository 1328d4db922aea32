"""The parser of the ``w2v2ser`` command line (:func:`build_parser`), and the ``store``
commands (info, verify, export, upgrade). They live together because they call each other:
the parser names the commands, and ``store info`` and ``store verify`` read a store's recorded
command line with the parser to say how to resume it (:func:`_resume_command`)."""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from w2v2ser._cli_arguments import (_NO_PROGRESS_HELP, FOLDS_HELP, PROTOCOL_HELP, STORE_HELP, SUBSET_HELP, _count,
                                    _device, _Parser, _seconds)
from w2v2ser._cli_extract import FEATURES, _cmd_extract
from w2v2ser._cli_train import _cmd_evaluate, _cmd_predict, _cmd_run, _cmd_sweep, _cmd_train
from w2v2ser._common import EXIT_FAILED, SHARD_SIZE, SHOWN_LINES, SILENCE_ADVICE, SPEAKER_CASE_ADVICE
from w2v2ser._text import case_variants, format_size, or_list, path_argument, subset_condition, variants_differ


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
    if info["complete"] and info["features"] and not info["statistics_checksums"]:
        print("statistics  no checksums recorded for some or all utterances (written or finalized by an earlier "
              "w2v2ser): reads cannot tell a replaced statistics shard, `store verify` can; a store extracted "
              "anew records them")
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
        # An extraction of other features can add utterances that this feature lacks, and this feature
        # can fail for a file whose other features are stored.
        lacking = ""
        if info["complete"] and feature["utterances"] < done:
            held = {r.id for r in store.list_utterances(feature=name)}
            without = [r.id for r in store.list_utterances() if r.id not in held]
            failed = {f["id"] for f in info["failure_reasons"] if f["feature"] == name}
            failed_n = sum(uid in failed for uid in without)
            why = ([f"{failed_n} failed for it, reasons below"] if failed_n else []) + (
                [f"add the rest: extract --features {name}" if not failed_n else
                 f"{len(without) - failed_n} added without it: extract --features {name}"]
                if len(without) > failed_n else [])
            lacking = f", {feature['utterances']} of {done} done utterances ({'; '.join(why)})"
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


def _add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """train's and sweep's --norm, --protocol, --recipe and --seeds (one text for both commands)."""
    from w2v2ser.train import NORMALISATIONS, PROTOCOLS, RECIPES  # as build_parser: not at import

    parser.add_argument("--norm", choices=list(NORMALISATIONS),
                       help="feature normalisation from the store's statistics (default: speaker)")
    parser.add_argument("--protocol", choices=list(PROTOCOLS), help=PROTOCOL_HELP)
    parser.add_argument("--recipe", choices=list(RECIPES),
                       help="training recipe: the paper's text or the authors' released code (default: paper)")
    parser.add_argument("--seeds", type=_count(1), help="number of seeds (default: 5)")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    """train's and sweep's --subset, --speaker-folds, --threads and --no-progress."""
    parser.add_argument("--subset", action="append", type=subset_condition, metavar="FIELD=VALUE[,VALUE]",
                       help=SUBSET_HELP)
    parser.add_argument("--speaker-folds", dest="speaker_folds", type=_count(3), metavar="K", help=FOLDS_HELP)
    parser.add_argument("--threads", type=_count(1), help="TensorFlow threads (default: all cores)")
    parser.add_argument("--no-progress", dest="no_progress", action="store_true", help=_NO_PROGRESS_HELP)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``w2v2ser`` command."""
    from w2v2ser import __version__
    from w2v2ser.extract._corpora import CORPUS_READERS
    from w2v2ser.extract._registry import EXTRACTORS, UPSTREAMS
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
    extract.add_argument("--device", type=_device, metavar="{auto,cpu,cuda,cuda:N}",
                         help="speech encoder device (default: auto, CUDA when present, else the CPU; cuda:N: "
                              "GPU N of several)")
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
    _add_recipe_options(train)
    train.add_argument("--out", required=True, type=path_argument, help="run directory")
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="any recipe or experiment hyperparameter, e.g. learning_rate=3e-4, units=64 (repeatable)",
    )
    _add_data_options(train)
    train.set_defaults(func=_cmd_train)

    sweep = commands.add_parser("sweep", help="stage 2: Dense probe on every layer of an upstream + weighted average",
                                parents=[verbose])
    sweep.add_argument("store", type=path_argument, help=f"feature store written by `w2v2ser extract`; {STORE_HELP}")
    sweep.add_argument("--features", required=True,
                       help="upstream feature(s) in the store, comma separated (wav2vec2, hubert, ...); "
                            "FEATURE:A-B sweeps layers A..B only")
    sweep.add_argument("--head", help="only dense (the paper's probe)")
    _add_recipe_options(sweep)
    sweep.add_argument("--out", required=True, type=path_argument, help="output folder (a subfolder per upstream when several)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any recipe or experiment hyperparameter, e.g. learning_rate=3e-4 (repeatable)")
    _add_data_options(sweep)
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
    run.add_argument("--no-progress", dest="no_progress", action="store_true", help=_NO_PROGRESS_HELP)
    run.set_defaults(func=_cmd_run)
    return parser
