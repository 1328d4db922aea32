"""What an experiment's runs were trained on, and whether recorded runs are current.

The store and data fingerprints each run's metrics.json records, experiment.json's record of the
stores and configuration keys, and the checks of a run folder against them: which runs are complete
for this configuration and data, which results are stale, and the warnings when a folder holds runs
of another configuration or of other data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from w2v2ser._common import first_few

from ._config import RUNTIME_FIELDS, SEED_FIELDS, ExperimentConfig, as_experiment_config
from ._experiment_data import _Data, _prepare, log
from ._protocols import get_protocol
from ._runfiles import damaged_run_files, list_run_files

__all__ = ["key_fields", "data_fingerprint", "store_identities", "warn_if_replacing", "run_is_current"]

def _store_fingerprints(config: ExperimentConfig, data: _Data) -> tuple[str, str]:
    """Hash of the features the runs read (names and extractor settings, per store alias), and the
    one recorded up to 0.2, which also hashed the stores' paths (see ``config_keys``)."""
    found = []
    for with_path in (False, True):
        ident = {a: {**({"path": config.stores[a]} if with_path else {}),
                     "features": {s.feature: data.stores[a].features[s.feature].to_dict()
                                  for s in data.selections.values() if s.alias == a}}
                 for a in sorted({s.alias for s in data.selections.values()})}
        found.append(hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16])
    return found[0], found[1]


def key_fields(config: ExperimentConfig) -> dict[str, str]:
    """The configuration's keys as experiment.json records them (the current and the 0.2 one)."""
    key, legacy = config.config_keys()
    return {"config_key": key, "legacy_config_key": legacy}


def _data_fingerprint(data: _Data) -> str:
    """Hash of what the runs train and test on, ``UTTERANCES.FRAMES.STATISTICS``: UTTERANCES hashes
    the utterances an experiment splits (ids, speakers, labels, sessions, splits, audio sha256, in
    any order: a manifest that grew, a fixed audio file); FRAMES hashes their order in the store and
    the checksums recorded with each one's frames of every feature read (a store re-extracted from
    a reordered manifest, or with other torch threads or batches, whose speech-encoder frames differ
    in the last bits); STATISTICS hashes the other utterances whose frames the normalisation
    statistics are composed over (:func:`_statistics_part`). Any change retrains; runs recorded
    before a part was hashed count as current when the parts they have match (:func:`_same_data`)."""
    rows = sorted((r.id, r.speaker, label, r.session, r.split, r.audio_sha256)
                  for r, label in zip(data.records, data.labels))
    utterances = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    ids = [r.id for r in data.records]
    frames = hashlib.sha256(json.dumps(ids).encode())
    for alias, feature in sorted({(s.alias, s.feature) for s in data.selections.values()}):
        store = data.stores[alias]
        frames.update(f"\n{alias}/{feature}/{store.row_checksum}\n".encode())
        frames.update(store.frame_checksums(feature, ids).astype("<u4").tobytes())
    return f"{utterances}.{frames.hexdigest()[:16]}.{_statistics_part(data)}"


def _statistics_part(data: _Data) -> str:
    """Hash of the utterances outside the split ones whose frames the normalisation statistics
    compose (speaker or global: every utterance of the speakers trained and tested on that holds
    the feature, or a subset's own, of the labels the protocol keeps): their ids, speakers and
    frame checksums (none when the statistics compose the split utterances only). A store that re-extracted
    one of them with other frames changes what training sees, though not the split utterances."""
    if data.norm == "none":  # no statistics are read
        return hashlib.sha256(b"none").hexdigest()[:16]
    # Statistics left out the labels the protocol drops only since 2026-12-07: tagged, runs recorded
    # before (whose statistics composed every label) are not current (:func:`_same_data`).
    tag = _KEPT_LABELS_TAG if data.kept_labels else ""
    digest = hashlib.sha256()
    split = {r.id for r in data.records}
    speakers = {r.speaker for r in data.records}
    subset = None if data.statistics_ids is None else set(data.statistics_ids)
    for alias, feature in sorted({(s.alias, s.feature) for s in data.selections.values()}):
        store = data.stores[alias]
        # Any status: a row whose other feature failed still adds this feature's frames to the statistics.
        others = [r for r in store.list_utterances(status=None, feature=feature)
                  if r.id not in split and r.speaker in speakers and (subset is None or r.id in subset)]
        digest.update(json.dumps([alias, feature, [(r.id, r.speaker) for r in others]]).encode())
        if others:
            digest.update(store.frame_checksums(feature, [r.id for r in others]).astype("<u4").tobytes())
    return tag + digest.hexdigest()[:16]


_KEPT_LABELS_TAG = "kept-"  # a statistics part composed over the labels the protocol keeps


def _same_data(recorded: Any, data: str) -> bool:
    """Whether a run's recorded data fingerprint is ``data``; one recorded before a part was hashed
    (``UTTERANCES``, or ``UTTERANCES.FRAMES`` before the statistics' utterances) is when the parts it
    has match: it was never checked for the others. Not when the statistics now leave out labels
    the protocol drops (:func:`_statistics_rule_changed`): that run's composed every label."""
    if recorded == data:
        return True
    if not isinstance(recorded, str) or _statistics_rule_changed(recorded, data):
        return False
    parts, now = recorded.split("."), data.split(".")
    return len(parts) < len(now) and now[:len(parts)] == parts


def _statistics_rule_changed(recorded: Any, data: str) -> bool:
    """Whether a run recorded with fingerprint ``recorded`` read the same utterances and frames as
    ``data`` but composed its statistics over every label, where ``data``'s leave out the labels
    the protocol drops (IEMOCAP's xxx, fru...): a run trained before they were left out."""
    if not isinstance(recorded, str):
        return False
    parts, now = recorded.split("."), data.split(".")
    return (len(now) >= 3 and now[2].startswith(_KEPT_LABELS_TAG) and parts[:2] == now[:2]
            and (len(parts) < 3 or not parts[2].startswith(_KEPT_LABELS_TAG)))


def data_fingerprint(config: ExperimentConfig | Mapping[str, Any]) -> str:
    """The data fingerprint that ``train_run`` records in each run's ``metrics.json``."""
    config = as_experiment_config(config)
    return _data_fingerprint(_prepare(config))


def store_identities(config: ExperimentConfig, stores: Mapping[str, Any]) -> dict[str, Any]:
    """experiment.json's record of each store: its path and features (their extractor configs) and,
    per feature computed at each file's own rate (``native``), the rates of its audio. With them a
    run directory alone is enough for ``predict`` to extract new audio as training did."""
    def rates(store: Any, name: str) -> list[int] | None:
        found = set(store.sample_rates(name))
        return None if None in found else sorted(found)  # None: a store older than the record

    return {a: {"path": config.stores[a], "features": {n: s.to_dict() for n, s in st.features.items()},
                "audio_rates": {n: found for n, s in st.features.items()
                                if s.config.get("sample_rate") == "native" and (found := rates(st, n)) is not None}}
            for a, st in stores.items()}


def warn_if_replacing(out: Path, config: ExperimentConfig, *, shown: Path | None = None) -> None:
    """Say so when ``out`` holds runs of another configuration: the new runs replace them
    (``shown``: the folder to name, e.g. a sweep's, whose ``all`` head ``out`` is)."""
    try:
        old = json.loads((out / "experiment.json").read_text())
    except (OSError, ValueError):
        return
    key = config.config_key()
    if old.get("config_key") in (None, *config.config_keys()):
        return
    changed = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in config.to_dict().items()
               if k not in RUNTIME_FIELDS + SEED_FIELDS + ("stores",) and old.get(k) != v]  # paths: not in the key
    log.warning("%s holds runs of another configuration (%s); each run trained now replaces the old run of "
                "the same fold and seed, and the other old runs no longer count (results, evaluate, predict). "
                "Give another output folder to keep them.", shown or out,
                "; ".join(changed) or f"config key {old['config_key']} -> {key}")


def _warn_if_data_changed(out: Path, config: ExperimentConfig, data: str, prepared: _Data | None = None) -> None:
    """Say so when runs of this configuration in ``out`` were trained on other utterances than the
    stores now hold (``data``, their fingerprint; a manifest that grew, fixed audio): those runs are
    trained again. ``prepared``: the data, whose labels the protocol drops a warning names."""
    keys = config.config_keys()
    stale, rule = [], []
    for path in list_run_files(out / "runs"):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(metrics, dict) and metrics.get("config_key") in keys and not run_is_current(metrics, keys, data):
            (rule if _statistics_rule_changed(metrics.get("data_fingerprint"), data) else stale).append(path.parent.name)
    if rule:
        protocol = get_protocol(config.protocol)
        dropped = [] if prepared is None else sorted(
            {repr(str(r.label)) for r in prepared.stores[prepared.selections["main"].alias].list_utterances(status=None)
             if protocol.map_label(r.label) is None})
        log.warning("%d run(s) in %s composed their normalisation statistics over every utterance of their speakers, "
                    "also those of the labels protocol %s drops%s, as w2v2ser did before; they now leave those out, "
                    "as the protocol's released code does: %s; they are trained again", len(rule), out,
                    config.protocol, f" ({first_few(dropped, 5)})" if dropped else "", first_few(rule))
    if stale:
        log.warning("%d run(s) in %s were trained on other utterances or frames than the store now holds (it "
                    "has changed since: a manifest that grew or was reordered, a re-extraction whose frames "
                    "differ): %s; they are trained again", len(stale), out, first_few(stale))


def _complete(run_dir: Path, keys: Sequence[str], fingerprints: Sequence[str], data: str,
              split: Mapping[str, list[str]] | None = None) -> dict[str, Any] | None:
    """The run's metrics when it is complete for this configuration (any of ``keys``), store (any of
    ``fingerprints``), data and (when given) ``split`` of speakers, else None."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if not run_is_current(metrics, keys, data) or metrics.get("store_fingerprint") not in fingerprints:
        return None
    if split is not None and isinstance(metrics.get("split"), Mapping) and metrics["split"] != dict(split):
        # The fold's speakers changed (speaker folds now keep a shared session together): a run of
        # the old fold would be pooled with runs of the new ones.
        log.info("run %s was trained on another split of the speakers; training it again", run_dir)
        return None
    damaged = damaged_run_files(run_dir, metrics)
    if damaged:
        log.warning("run %s is damaged (%s); training it again", run_dir, "; ".join(damaged))
        return None
    return metrics


def run_is_current(metrics: Any, keys: str | Sequence[str], data: str) -> bool:
    """Whether a run's ``metrics.json`` is of this configuration (one of its ``config_keys()``) and
    these utterances, in this order, with these frames (``data``, :func:`_data_fingerprint`). Runs
    written before the data fingerprint was recorded count as current for any data."""
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    return (isinstance(metrics, dict) and metrics.get("config_key") in keys
            and _same_data(metrics.get("data_fingerprint", data), data))


def _drop_stale_results(out: Path, runs: Sequence[str], keys: Sequence[str], data: str) -> None:
    """Remove ``out/results.json`` when a planned run is still to train: interrupted, the folder
    must read as unfinished (a stale results.json of fewer seeds was reported as complete, while
    predict averaged the seeds finished since)."""
    for name in runs:
        try:
            metrics = json.loads((out / "runs" / name / "metrics.json").read_text())
        except (OSError, ValueError):
            metrics = None
        if not run_is_current(metrics, keys, data):
            (out / "results.json").unlink(missing_ok=True)
            return
