"""Opening an experiment's stores and reading the utterances it trains on.

:func:`_prepare` resolves the selections, applies the protocol's labels, checks that fused stores
agree, and reports (once per store and protocol in a process) the utterances left out: failed
extractions, frames of a feature missing, a feature computed at several sample rates.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from w2v2ser._common import first_few

from ._config import ExperimentConfig
from ._errors import DataError, SelectionError
from ._protocols import get_protocol, select_subset, select_utterances, statistics_utterances
from ._selection import ResolvedSelection, parse_selection, resolve_selection

__all__ = ["FRAME_RATE_TOLERANCE"]

log = logging.getLogger("w2v2ser.train")
FRAME_RATE_TOLERANCE = 0.05  # fused branches must run at the same frame rate within 5 %


@dataclass
class _Data:
    stores: dict[str, Any]
    selections: dict[str, ResolvedSelection]
    records: list[Any]
    labels: list[str]
    classes: tuple[str, ...]
    # The utterances normalisation statistics are composed over: a subset's own (song files do
    # not move a speech-only run's speaker means) whose labels the protocol keeps; None: all of
    # each speaker's, the store's tables.
    statistics_ids: list[str] | None = None
    norm: str = "speaker"  # the normalisation, which decides whether statistics are read at all
    kept_labels: bool = False  # the protocol drops labels, which the statistics leave out (fingerprinted)


def _open_stores(config: ExperimentConfig, opened: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each alias's store reader; ``opened`` (path -> reader) shares one reader per store among views."""
    from w2v2ser.store import open_store

    if opened is None:
        return {alias: open_store(path) for alias, path in config.stores.items()}
    for path in config.stores.values():
        if str(path) not in opened:
            opened[str(path)] = open_store(path)
    return {alias: opened[str(path)] for alias, path in config.stores.items()}


# (store, protocol) pairs whose dropped labels this process has reported: planning reports them
# once, not every run of every experiment on the store (a pipeline plans many in one process).
_REPORTED_DROPS: set[tuple[str, ...]] = set()


def _prepare(config: ExperimentConfig, *, report: bool = False, revisions: Mapping[str, Any] | None = None,
             opened: dict[str, Any] | None = None) -> _Data:
    """Open stores, resolve selections, apply the protocol's labels, check fused stores agree.

    ``report``: log the labels the protocol drops, once per store and protocol in this process.
    ``revisions``: the stores' revisions in the view this opening must repeat (:func:`reopen_view`).
    ``opened``: readers already open, by store path, to share (see :func:`open_view`).
    """
    stores = _open_stores(config, opened)
    for alias, revision in (revisions or {}).items():
        stores[alias].require_revision(revision)  # an extraction changed it since the plan was made: stop
    protocol = get_protocol(config.protocol)
    selections = config.selections()
    aliases = {branch: config.store_alias(text) for branch, text in selections.items()}
    sels = {}
    for branch, text in selections.items():
        specs = stores[aliases[branch]].features
        try:
            sels[branch] = resolve_selection(text, specs=specs, alias=aliases[branch],
                                             store=_store_label(config, aliases[branch]))
        except SelectionError as error:
            if branch == "main" or parse_selection(text).feature in specs:
                raise
            # The Fusion head's eGeMAPS branch reads the main store unless told: say how to point it elsewhere.
            raise SelectionError(
                f"{error} The {config.head} head's second branch ({text!r}, fusion_features) reads store "
                f"{aliases[branch]!r}: name a store that holds it, `w2v2ser train --fusion-store STORE` (or "
                f"`fusion_features: STORE/FEATURE` in pipeline.yaml, `stores={{'fusion': PATH}}` in Python)"
            ) from None
    main_alias = sels["main"].alias
    main_features = {s.feature for s in sels.values() if s.alias == main_alias}
    drops = (str(config.stores[main_alias]), protocol.name)
    # Which utterances lack frames or failed extraction depends on the features too (a file can fail one only).
    feature_drops = (*drops, *sorted(main_features))
    # Any status: frames of a row whose other feature failed still count (and so does its label). The
    # table read once, the done records being its own: two copies held 440 MB of a 150,000-row store.
    rows = stores[main_alias].list_utterances(status=None)
    done = [r for r in rows if r.status == "done"]
    for feature in sorted(main_features):
        # An extraction of other features can add utterances without this one: leave them out.
        held = {r.id for r in stores[main_alias].list_utterances(status="done", feature=feature)}
        # Those whose extraction of this feature failed (their other features are stored) are counted
        # by _report_failed_extractions, with the reasons' advice.
        failed = {f.id for f in stores[main_alias].list_failures() if f.feature == feature}
        lacking = [r.id for r in done if r.id not in held and r.id not in failed]
        if lacking and report and feature_drops not in _REPORTED_DROPS:
            path = str(config.stores[main_alias])
            log.warning("store %s: %d utterance(s) have no %s frames and are left out (%s); they were added by an "
                        "extraction of other features: `w2v2ser extract ... --store %s --features %s` adds them",
                        path, len(lacking), feature, first_few(lacking), shlex.quote(path), feature)
        done = [r for r in done if r.id in held]
    if not done:
        # Else the protocol's "kept no utterance: store labels [] match none of its classes []",
        # which points at --protocol when every file of the manifest failed extraction.
        path = str(config.stores[main_alias])
        failed = len({f.id for f in stores[main_alias].list_failures()})
        why = (f"; {failed} utterance(s) failed extraction: `w2v2ser store info {shlex.quote(path)}` gives the "
               f"reasons. Fix the files or the manifest and rerun the same `w2v2ser extract`" if failed else
               ". Extract them into it first")
        raise DataError(f"store {path} holds no extracted utterance with {', '.join(sorted(main_features))} "
                        f"frames, so there is nothing to train on{why}")
    statistics_ids = None
    if config.subset:
        done = select_subset(done, config.subset, store=str(config.stores[main_alias]))
        rows = select_subset(rows, config.subset, store=str(config.stores[main_alias]))
        statistics_ids = [r.id for r in rows]
    records, labels, classes = select_utterances(protocol, done, report=report and drops not in _REPORTED_DROPS)
    # Labels the protocol drops (IEMOCAP's xxx, fru...) do not move the statistics either: the
    # released code filters the 4 classes before it computes them, as a subset's are its own. The
    # rows predict_store passes (one rule): a subset's, or all.
    kept, _ = statistics_utterances(protocol, rows)  # speakers without a kept label are not trained on
    statistics_ids = kept if kept is not None else statistics_ids
    if report and feature_drops not in _REPORTED_DROPS:
        _report_failed_extractions(stores[main_alias], str(config.stores[main_alias]), main_features)
    if report and drops not in _REPORTED_DROPS:
        _report_mixed_rates(config, stores, sels, {r.id for r in records})
    if report:
        _REPORTED_DROPS.update((drops, feature_drops))
    for branch, sel in sels.items():
        if sel.alias == main_alias:
            continue
        other = {r.id: r for r in stores[sel.alias].list_utterances(status="done", feature=sel.feature)}
        missing = [r.id for r in records if r.id not in other]
        # Utterances whose extraction of this feature failed in that store are left out, as a failure in the
        # main store is; only others missing there mean stores of different manifests (or an unfinished one).
        failed_there = {f.id for f in stores[sel.alias].list_failures() if f.feature in (None, sel.feature)}
        left_out = sorted(set(missing) & failed_there)
        if left_out:
            if report:
                path = str(config.stores[sel.alias])
                log.warning("store %s: %d utterance(s) failed extraction of %s and are left out (%s); `w2v2ser "
                            "store info %s` gives the reasons", path, len(left_out), sel.feature, first_few(left_out),
                            shlex.quote(path))
            keep = [k for k, r in enumerate(records) if r.id not in failed_there]
            records, labels = [records[k] for k in keep], [labels[k] for k in keep]
            missing = [uid for uid in missing if uid not in failed_there]
        if missing:
            raise DataError(f"store {sel.alias!r} ({config.stores[sel.alias]}) lacks {len(missing)} of the "
                            f"{len(records)} utterances of store {main_alias!r}, e.g. {missing[:3]}; fused stores "
                            f"must be extracted from the same manifest (finish or rerun that extraction)")
        bad = [r.id for r in records if (other[r.id].speaker, other[r.id].label) != (r.speaker, r.label)]
        if bad:
            raise DataError(f"stores {main_alias!r} and {sel.alias!r} disagree on speaker/label of {bad[:3]}; "
                            f"they were extracted from different manifests")
    if "fusion" in sels:
        a, b = sels["main"].frame_rate, sels["fusion"].frame_rate
        if abs(a - b) > FRAME_RATE_TOLERANCE * max(a, b):
            raise SelectionError(f"fused selections run at different frame rates: {sels['main'].text!r} "
                                 f"{a:g} fps, {sels['fusion'].text!r} {b:g} fps (after pair averaging); fuse "
                                 f"features with matching rates (wav2vec2 ~50 fps with egemaps)")
    return _Data(stores, sels, records, labels, classes, statistics_ids, config.norm, len(records) < len(done))


def _store_label(config: ExperimentConfig, alias: str) -> str:
    """How messages name a store: its path, and its alias when the experiment reads several."""
    path = config.stores[alias]
    return f"store {path}" if len(config.stores) == 1 else f"store {alias!r} ({path})"


def _report_failed_extractions(store: Any, path: str, features: set[str]) -> None:
    """Say how many utterances are left out because their extraction failed: the counts a user
    compares with a paper's depend on it, and the reasons are in the store."""
    failed = sorted({f.id for f in store.list_failures() if f.feature is None or f.feature in features})
    if failed:
        log.warning("store %s: %d utterance(s) failed extraction and are left out (%s); `w2v2ser store info %s` "
                    "gives the reasons", path, len(failed), first_few(failed), shlex.quote(path))


def _report_mixed_rates(config: ExperimentConfig, stores: dict[str, Any], sels: dict[str, ResolvedSelection],
                        ids: set[str]) -> None:
    """Warn when a feature computed at each file's own rate (``sample_rate: native``) comes from files
    of several rates: its values move with the rate, which can then stand in for a corpus or speaker."""
    for sel in sels.values():
        store = stores[sel.alias]
        if store.features[sel.feature].config.get("sample_rate") != "native":
            continue
        rates = store.sample_rates(sel.feature, ids=ids)
        rates.pop(None, None)
        if len(rates) > 1:
            log.warning("%s: %s was computed at each file's own sample rate, and the utterances trained on have %d "
                        "rates (%s); its values change with the rate (eGeMAPS' formant columns most), so the rate "
                        "can stand in for a corpus or speaker. For one rate, extract into a new store with "
                        "--option %s.sample_rate=16000 (pipeline.yaml: %s: {sample_rate: 16000})",
                        _store_label(config, sel.alias), sel.feature, len(rates),
                        ", ".join(f"{rate} Hz: {n}" for rate, n in sorted(rates.items())), sel.feature, sel.feature)
