"""``w2v2ser extract``: the extractor configs from ``--features``, ``--like`` and ``--option``,
and the command that extracts a corpus into a store."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from typing import Any

from w2v2ser._cli_train import _refuse_inside_store
from w2v2ser._common import EXIT_FAILED, SHOWN_LINES
from w2v2ser._text import format_size
from w2v2ser._overrides import load_value


FEATURES = ("wav2vec2", "egemaps", "spectrogram")  # the default set


def _parse_option(text: str) -> tuple[str, str, Any]:
    """``feature.key=value`` -> (feature, key, YAML-parsed value)."""
    from w2v2ser._common import ConfigError

    name, sep, value = text.partition("=")
    feature, dot, key = name.partition(".")
    if not sep or not dot or not key:
        raise ConfigError(
            f"--option {text!r} is not of the form FEATURE.KEY=VALUE, e.g. --option spectrogram.hop_ms=20."
        )
    return feature, key, load_value(value)


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
            from w2v2ser._config_schema import ClusterConfig

            _probe_hub_for_workers(stack, extractors)
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


def _probe_hub_for_workers(stack: contextlib.ExitStack, extractors: list[Any]) -> None:
    """Probe the hub before the Dask workers start, in a scope open until ``stack`` closes (the
    extraction's own scope nests in it): the workers inherit the ``HF_HUB_OFFLINE`` it decides. Started
    before the probe, each worker looked a model up on an unreachable hub, with retries and back-off."""
    from pathlib import Path

    from w2v2ser.extract._models import hub_probe_scope, probe_hub

    stack.enter_context(hub_probe_scope())
    models = [getattr(getattr(extractor, "config", None), "model", None) for extractor in extractors]
    if any(isinstance(model, str) and not Path(model).expanduser().exists() for model in models):
        probe_hub()


def _note_features_lacking(location: Any, asked: str) -> None:
    """After an extraction of some features: name the store's other features that the utterances
    it added lack (a store holds one set of utterances; each feature is planned when extracted)."""
    from w2v2ser.store import open_store

    store = open_store(location)  # the utterance table only: describe() would list every object of an S3 store
    done = [r.id for r in store.list_utterances()]
    failures = store.list_failures()
    for name in store.features:
        held = {r.id for r in store.list_utterances(feature=name)}
        failed = {f.id for f in failures if f.feature == name}  # files whose other features are stored
        added = [uid for uid in done if uid not in held and uid not in failed]
        if added:
            print(f"note: {len(added)} of the store's {len(done)} utterances have no {name} frames (this run "
                  f"extracted {asked}); training on {name} leaves them out until you extract it for them: add "
                  f"--features {name}", file=sys.stderr)
        failed_done = [uid for uid in done if uid not in held and uid in failed]
        if failed_done:
            print(f"note: {len(failed_done)} of the store's {len(done)} utterances failed {name} (reasons below) and "
                  f"are stored with their other features: training on {name} leaves them out, training on those "
                  f"uses them", file=sys.stderr)
