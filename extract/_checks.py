"""What :func:`~w2v2ser.extract.extract_corpus` checks and compares before it plans a store.

Its options and utterances as given, every file's header, and the manifest against the utterances the
store already holds: changed, moved or vanished audio, label spellings, rows it no longer lists and
extra columns it gives otherwise. Bad input is refused here, before a store is created or changed.
"""

from __future__ import annotations

import gzip
import json
import os
import shlex
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Optional

from pydantic import Field

from w2v2ser._common import ConfigError, first_few, progress_bar
from w2v2ser._text import control_character, spelling_key, variants_differ
from w2v2ser._schema import StrictModel, validate
from w2v2ser.store import AUDIO_RATE_KEY, StoreError, Utterance, W2v2serError
from w2v2ser.store._types import _missing_as_none, extra_json

from ._audio import AudioInfo, probe_audio, sha256_file
from ._errors import AudioError, ManifestError
from ._rates import CHANNELS_KEY
from ._registry import Extractor

__all__ = [
    "_AudioStatCache", "_absent_by_corpus", "_check_extraction_options", "_check_label_spellings", "_check_recorded_audio",
    "_check_utterances", "_extra_kept", "_keep_vanished", "_probe_all", "_progress",
]


#: The store's file of what each audio file's header said and its sha256, by the file's stat (see _AudioStatCache).
AUDIO_CACHE_KEY = "audio_cache.json.gz"
# A file changed this recently when its stat was taken is checked again on the next run: a later
# write within the file system's timestamp granularity could keep its stat (git's "racy" entries).
_RACY_NS = 2_000_000_000


def _stat_key(path: str | os.PathLike) -> tuple[int, ...] | None:
    """(size, mtime_ns, ctime_ns, inode, device) of a file, or None when it cannot be stat'ed. Any write
    changes the ctime, also one that keeps the size and sets the mtime back (``touch -d``, ``rsync -t``);
    a file replaced by another (mv, a new copy) has another inode."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev)


class _AudioStatCache:
    """Per audio file, its header (:class:`AudioInfo`) and sha256 as read when its stat was ``stat``, kept
    in the store (``AUDIO_CACHE_KEY``) so that a rerun over finished work reads no audio: a file whose stat
    is unchanged is neither probed nor hashed again (what make and git's index do). A missing, damaged
    or foreign file is an empty cache: every file is read, as without one."""

    def __init__(self, location: Any = None) -> None:
        self.location = location
        self.entries: dict[str, dict[str, Any]] = {}
        self.taken: dict[str, tuple[tuple[int, ...] | None, int]] = {}  # path -> (stat key, when taken) this run
        self.dirty = False  # entries were added: save() writes them
        if location is None:
            return
        try:
            data = location.read_bytes(AUDIO_CACHE_KEY)
            loaded = json.loads(gzip.decompress(data)) if data is not None else {}
        except Exception:  # noqa: BLE001 - a cache that cannot be read costs reading the audio, nothing else
            loaded = {}
        if isinstance(loaded, dict) and loaded.get("version") == 1 and isinstance(loaded.get("files"), dict):
            self.entries = loaded["files"]

    @staticmethod
    def _name(path: str | os.PathLike) -> str:
        return os.path.abspath(os.fspath(path))

    def stat(self, path: str | os.PathLike) -> tuple[int, ...] | None:
        """The file's stat key now (remembered with the time it was taken)."""
        key = _stat_key(path)
        self.taken[self._name(path)] = (key, time.time_ns())
        return key

    def _entry(self, path: str | os.PathLike, key: tuple[int, ...] | None) -> dict[str, Any] | None:
        entry = self.entries.get(self._name(path))
        if key is None or not isinstance(entry, dict) or entry.get("stat") != list(key):
            return None
        return entry

    def info(self, path: str | os.PathLike, key: tuple[int, ...] | None) -> AudioInfo | None:
        """The cached header of a file whose stat key is still ``key``, else None."""
        entry = self._entry(path, key)
        try:
            return AudioInfo(**entry["info"]) if entry is not None else None
        except (KeyError, TypeError):
            return None

    def sha256(self, path: str | os.PathLike, key: tuple[int, ...] | None) -> str | None:
        """The cached sha256 of a file whose stat key is still ``key``, else None."""
        entry = self._entry(path, key)
        digest = entry.get("sha256") if entry is not None else None
        return digest if isinstance(digest, str) else None

    def digest(self, path: str | os.PathLike) -> str | None:
        """The file's sha256: the cached one while its stat is unchanged, else read (and cached when it was not
        written to while read); None when it cannot be read (missing, permissions, an I/O error)."""
        key, taken = _stat_key(path), time.time_ns()
        found = self.sha256(path, key)
        if found is not None:
            return found
        try:
            found = sha256_file(path)
        except (OSError, AudioError):  # sha256_file raises AudioError for a missing or unreadable file
            return None
        if _stat_key(path) == key:  # not written to while it was read
            self.put(path, key, taken_ns=taken, sha256=found)
        return found

    def put(self, path: str | os.PathLike, key: tuple[int, ...] | None, *, taken_ns: int,
            info: AudioInfo | None = None, sha256: str | None = None) -> None:
        """Record what was read from a file whose stat key was ``key`` at ``taken_ns`` (not a file
        changed just before: a write in the same timestamp tick could keep its stat)."""
        if key is None or key[1] > taken_ns - _RACY_NS or key[2] > taken_ns - _RACY_NS:
            return
        name = self._name(path)
        entry = self.entries.get(name)
        if not isinstance(entry, dict) or entry.get("stat") != list(key):
            entry = self.entries[name] = {"stat": list(key)}
        if info is not None:
            entry["info"] = {"num_samples": info.num_samples, "sample_rate": info.sample_rate,
                             "channels": info.channels, "duration": info.duration,
                             "frames_at_source": info.frames_at_source}
        if sha256 is not None:
            entry["sha256"] = sha256
        self.dirty = True

    def put_extracted(self, done: Sequence[Any]) -> None:
        """Record the sha256 that extraction recorded for each of the ``done`` records (UtteranceRecord) whose
        file has kept the stat it had when this run probed it (so the worker hashed that content)."""
        for record in done:
            name = self._name(record.path)
            if not record.audio_sha256 or name not in self.taken:
                continue
            key, taken = self.taken[name]
            if key is not None and self.sha256(record.path, key) is None and _stat_key(record.path) == key:
                self.put(record.path, key, taken_ns=taken, sha256=record.audio_sha256)

    def save(self, keep: set[str]) -> None:
        """Write the entries of the files named in ``keep`` into the store; one that cannot be written
        is no error (the next run reads the audio again)."""
        if self.location is None or not self.dirty:
            return
        kept = {self._name(p) for p in keep}
        files = {name: entry for name, entry in self.entries.items() if name in kept}
        data = gzip.compress(json.dumps({"version": 1, "files": files}).encode(), compresslevel=1, mtime=0)
        try:
            if self.location.is_local:
                from w2v2ser._files import write_atomically

                write_atomically(self.location.path / AUDIO_CACHE_KEY, data)
            else:
                self.location.write_bytes(AUDIO_CACHE_KEY, data)
        except Exception:  # noqa: BLE001 - only a cache: the store and its results are written
            pass


def _probe_all(
    utterances: Sequence[Utterance], progress: bool, cache: _AudioStatCache | None = None,
) -> tuple[list[AudioInfo | None], dict[int, str]]:
    """Read every file's header; unreadable ones become failures, not crashes. A file whose stat is
    that of ``cache``'s entry is not read: its header is the cached one."""
    cache = cache if cache is not None else _AudioStatCache()
    infos: list[AudioInfo | None] = []
    failures: dict[int, str] = {}
    for position, utterance in enumerate(_progress(utterances, progress, "probe audio", "file")):
        key = cache.stat(utterance.path)
        cached = cache.info(utterance.path, key)
        if cached is not None:
            infos.append(cached)
            continue
        try:
            infos.append(probe_audio(utterance.path))
        except W2v2serError as error:
            infos.append(None)
            failures[position] = str(error)
        except OSError as error:  # permissions, vanished files: record and go on
            infos.append(None)
            failures[position] = f"cannot read {utterance.path}: {error}. Check the file exists and is readable."
        else:
            cache.put(utterance.path, key, taken_ns=cache.taken[cache._name(utterance.path)][1], info=infos[-1])
    return infos, failures


def _keep_vanished(done: Mapping[str, Any], utterances: Sequence[Utterance], infos: list[AudioInfo | None],
                   failures: dict[int, str]) -> list[str]:
    """Extracted utterances whose file is gone since: their probe failure is dropped and their
    header taken from the store, so they keep their features instead of becoming failures.
    ``done``: id -> record of each utterance the store has finished.

    Returns:
        Their ids.
    """
    kept = []
    for position in sorted(failures):
        utterance = utterances[position]
        record = done.get(utterance.id)
        if record is None or record.path != utterance.path or record.sample_rate is None \
                or os.path.lexists(utterance.path):
            continue
        rate = record.sample_rate
        infos[position] = AudioInfo(num_samples=record.num_samples, sample_rate=rate, channels=1,
                                    duration=record.duration, frames_at_source=round(record.duration * rate))
        del failures[position]
        kept.append(utterance.id)
    return kept


def _check_label_spellings(store: Any, done: Mapping[str, Any], utterances: Sequence[Utterance]) -> None:
    """Refuse a manifest whose labels differ only in case (or, numbers, leading zeros) from those of the
    store's other done utterances ('Happy' given, 'happy' stored): training would take them as two classes. The
    manifest reader checks its own rows only; this compares them with the rows of earlier manifests."""
    given = {u.id for u in utterances}
    kept: dict[str, dict[str, str]] = {}  # spelling_key of a label -> stored spelling -> an utterance id
    for record in done.values():
        if record.id not in given:  # rows this manifest lists take its labels
            kept.setdefault(spelling_key(record.label), {}).setdefault(record.label, record.id)
    if not kept:
        return
    clashes: dict[tuple[str, str], Utterance] = {}
    for u in utterances:
        for spelling, uid in kept.get(spelling_key(u.label), {}).items():
            if spelling != u.label:
                clashes.setdefault((u.label, spelling), u)
    if not clashes:
        return
    pairs = "; ".join(f"{new!r} (this manifest, e.g. {u.id}: {u.path}) and {old!r} (in the store, e.g. "
                      f"{kept[spelling_key(old)][old]})" for (new, old), u in list(clashes.items())[:5])
    # A folder corpus's labels come from its reader (RAVDESS, IEMOCAP: lower case): only a CSV's can be respelt.
    new_fixed = sorted({u.corpus for u in clashes.values() if u.corpus and u.corpus != "csv"})
    old_fixed = sorted({done[kept[spelling_key(old)][old]].corpus for _, old in clashes} - {"csv", ""})
    if new_fixed:
        fix = (f"The {'/'.join(new_fixed)} reader's labels cannot be respelt: write the labels of the CSV manifest "
               f"that listed the store's utterances as this corpus spells them, rerun its `w2v2ser extract` "
               f"(labels are updated in place, nothing is extracted again), then this one.")
    elif old_fixed:
        fix = (f"The store's {'/'.join(old_fixed)} labels come from that corpus's reader: write this manifest's "
               f"labels as the store spells them and rerun the same `w2v2ser extract`.")
    else:
        fix = ("Fix the spelling in the manifest and rerun the same `w2v2ser extract`. To keep this manifest's "
               "spelling instead, first rerun the extract of the manifest that listed the store's utterances, "
               "with that spelling: labels are updated in place, nothing is extracted again.")
    raise ManifestError(
        f"labels of this manifest differ only in {variants_differ([[new, old] for new, old in clashes])} from "
        f"those of store {store}: {pairs}; each spelling would be a class of its own. {fix}"
    )


def _check_recorded_audio(store: Any, done: Mapping[str, Any], utterances: Sequence[Utterance],
                          progress: bool, cache: _AudioStatCache | None = None) -> set[str]:
    """Compare each extracted utterance's audio with the sha256 recorded when it was extracted.

    Refuses to resume when a file's audio has changed since: the finished utterance would be kept,
    with features that are no longer of its file. ``done``: id -> record of each utterance the
    store has finished (its path and sha256). A file whose stat is that of ``cache``'s entry is not
    read again: its sha256 is the cached one.

    Returns:
        Ids given at a new path whose file holds the same audio (a corpus moved or copied to
        another disk): the store takes the new path, and keeps their features.
    """
    cache = cache if cache is not None else _AudioStatCache()
    recorded = {r.id: (r.path, r.audio_sha256) for r in done.values() if r.audio_sha256}
    checked = [u for u in utterances if u.id in recorded]
    changed, moved = [], set()
    for u in _progress(checked, progress and bool(checked), "check audio", "file"):
        digest = cache.digest(u.path)
        if digest is None:
            continue  # a vanished file keeps its features; a moved one that cannot be read is refused by plan
        if recorded[u.id][0] == u.path and digest != recorded[u.id][1]:
            changed.append(u)
        elif recorded[u.id][0] != u.path and digest == recorded[u.id][1]:
            moved.add(u.id)
    if changed:
        named = first_few([f"{u.id!r} ({u.path})" for u in changed], 5)
        raise StoreError(f"the audio of {len(changed)} utterance(s) already extracted into store {store.path} "
                         f"has changed since (its sha256 differs from the one recorded): {named}. A store keeps "
                         f"what it extracted, and resuming would keep those features: extract into a new store "
                         f"path (`--like {shlex.quote(str(store.path))}` keeps the feature configs), or restore the files.")
    return moved


def _progress(items: Any, enabled: bool, desc: str, unit: str, total: int | None = None) -> Any:
    if not enabled:
        return items
    return progress_bar(items, desc=desc, unit=unit, total=total)


class _Counts(StrictModel):
    """extract_corpus's counts, bounded as the CLI's options are."""

    shard_size: Annotated[int, Field(ge=1)]
    decode_workers: Optional[Annotated[int, Field(ge=0)]]
    cpu_workers: Annotated[int, Field(ge=1)]



_TEXT_FIELDS = ("id", "path", "speaker", "label", "session", "split", "gender", "corpus")


def _check_utterances(utterances: Any) -> list[Utterance]:
    """The utterances as a list of Utterance objects, or a ConfigError that says how to get them: rows given as dicts (e.g. a
    DataFrame's ``to_dict("records")``) failed deep inside with "'dict' object has no attribute 'id'"."""
    example = ("expected a list of w2v2ser.store.Utterance, e.g. read_corpus(KIND, PATH).utterances, or "
               "Utterance(**row) for rows of your own (id, path, speaker, label, ...)")
    if isinstance(utterances, (str, bytes, os.PathLike, Utterance, Mapping)) or not hasattr(utterances, "__iter__"):
        raise ConfigError(f"extract_corpus: utterances is a {type(utterances).__name__}; {example}")
    utterances = list(utterances)  # a generator is read once, here
    for i, utterance in enumerate(utterances):
        if not isinstance(utterance, Utterance):
            raise ConfigError(f"extract_corpus: utterances[{i}] is a {type(utterance).__name__} "
                              f"({repr(utterance)[:80]}); {example}")
        # label=None was stored as the class 'None', speaker=5 failed in a sort with a raw TypeError
        for name in _TEXT_FIELDS:
            value = getattr(utterance, name)
            if not isinstance(value, str) and not (name == "path" and isinstance(value, os.PathLike)):
                raise ConfigError(f"extract_corpus: utterance {utterance.id!r} has {name}={value!r} "
                                  f"({type(value).__name__}); expected a string (e.g. str(value), or '' for none)")
        if not isinstance(utterance.extra, Mapping):
            raise ConfigError(f"extract_corpus: utterance {utterance.id!r} has extra={utterance.extra!r}; "
                              f"expected a mapping of field names to values")
        if not utterance.id.strip():  # StoreWriter.plan refused it only once the store folder was created
            raise ConfigError(f"extract_corpus: utterances[{i}] (path {str(utterance.path)!r}) has an empty id "
                              f"({utterance.id!r}); every utterance needs a unique id, the key of its frames in the "
                              f"store: give one, e.g. derived from the file name, as read_corpus derives one from the "
                              f"path where a row gives none")
        bad = control_character(utterance.id)
        if bad is not None:  # StoreWriter.plan's check, made before a new store is created (same error)
            raise StoreError(f"extract_corpus: utterances[{i}] has the id {utterance.id!r}, which holds the control "
                             f"character {bad!r} (a line break, tab, NUL or the like): logs and predictions.csv "
                             f"could not show it, nor --subset id=... match it. Give ids without control characters.")
        if not utterance.speaker.strip():  # per-speaker statistics and speaker splits group by it
            raise ConfigError(f"extract_corpus: utterance {utterance.id!r} has an empty speaker; every utterance "
                              f"needs one (speaker normalisation and the speaker splits group by it): give the "
                              f"speaker's name, or the utterance id for a corpus without speakers")
        for key, value in utterance.extra.items():  # stored as JSON: a date failed at write time with a raw TypeError
            try:
                if not isinstance(key, str):
                    raise TypeError(f"a key of type {type(key).__name__}")
                extra_json({key: value})  # NaN is stored as null; an infinite number is no JSON
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"extract_corpus: utterance {utterance.id!r} has extra[{key!r}]={value!r:.80} "
                                  f"({type(value).__name__}), which cannot be stored as JSON ({exc}); give text "
                                  f"keys and text, numbers, booleans, lists or mappings as values, e.g. "
                                  f"str(value)") from None
    seen: set[str] = set()
    duplicates = sorted({u.id for u in utterances if u.id in seen or seen.add(u.id)})  # type: ignore[func-returns-value]
    if duplicates:  # StoreWriter.plan's check, made before a new store is created (same error)
        raise StoreError(f"extract_corpus: duplicate utterance ids {duplicates[:5]}; ids must be unique within a "
                         f"store: give each utterance its own id (e.g. add the speaker or the folder to it).")
    return utterances


def _check_extraction_options(extractors: Any, *, shard_size: Any, decode_workers: Any,
                              cpu_workers: Any) -> list[Extractor]:
    """extract_corpus's options as the CLI checks them; one extractor may be given bare."""
    if hasattr(extractors, "feature_spec"):
        extractors = [extractors]
    extractors = list(extractors)
    if not extractors:
        raise ConfigError("extract_corpus got no extractors; pass at least one, e.g. [build_extractor('egemaps')].")
    for extractor in extractors:
        if not hasattr(extractor, "feature_spec"):
            example = extractor if isinstance(extractor, str) else "egemaps"
            raise ConfigError(f"extract_corpus: extractors holds {extractor!r}; expected extractors made by "
                              f"build_extractor, e.g. [build_extractor({example!r})]")
    # A feature given twice extracted nothing and left a store pending, with no error or reason.
    seen: dict[str, Any] = {}
    for extractor in extractors:
        name = str(getattr(extractor, "name", type(extractor).__name__))
        if name in seen:
            try:  # the options in which the two configs differ, e.g. " (hop_ms 10.0 and 20.0)"
                first, second = seen[name].config.to_dict(), extractor.config.to_dict()
                keys = [k for k in {**first, **second} if first.get(k) != second.get(k)]
                differ = f" ({', '.join(f'{k} {first.get(k)} and {second.get(k)}' for k in keys)})" if keys else ""
            except Exception:  # an extractor of its own whose config has no to_dict: name no options
                differ = ""
            raise ConfigError(f"extract_corpus: feature {name!r} is given twice{differ}; "
                              f"a store holds one config per feature: use one extractor per feature, or a second "
                              f"store for the other config")
        seen[name] = extractor
    # decode_workers=-1 decoded nothing: 0 utterances extracted, without an error.
    validate(_Counts, {"shard_size": shard_size, "decode_workers": decode_workers, "cpu_workers": cpu_workers},
             where="extract_corpus")
    return extractors


def _absent_by_corpus(absent: list[str], done: Mapping[str, Any], utterances: Sequence[Utterance],
                      kind: str | None, *, fresh: bool) -> tuple[list[str], dict[str, int], list[tuple[str, str]]]:
    """Split the done utterances a manifest does not list into its own corpus's (rows it dropped)
    and counts per other corpus, and find its speaker names that they share.

    When none of the manifest's utterances was in the store yet (``fresh``: a second CSV
    manifest, of the same kind ``csv``), every such utterance is another corpus's; else those of
    another corpus are (by name: a CSV manifest's own ``corpus`` column, else the kind). A resumed
    manifest that dropped some of a speaker's rows shares that name by design, so only other
    corpora's utterances count for shared names.

    Returns:
        (own absent ids, other corpus -> count, (shared speaker, one absent id of it) pairs).
    """
    # Corpora by name: a CSV manifest's own `corpus` column tells two CSV manifests apart.
    kinds = {u.corpus_name for u in utterances if u.corpus_name} or ({kind} if kind else set())
    # A row stored with no corpus column is named by its kind (`csv`): this manifest's own when the kinds
    # match, as one extracted before it gained a `corpus` column (that column is not updated in place).
    bare = {u.corpus for u in utterances if u.corpus} | ({kind} if kind else set())
    own: list[str] = []
    others: Counter[str] = Counter()
    speakers = {u.speaker for u in utterances}
    shared: dict[str, str] = {}
    for uid in absent:
        record = done.get(uid)
        name = record.corpus_name if record is not None else ""
        other = record is not None and (fresh or bool(kinds) and bool(name) and name not in kinds
                                        and not (name == record.corpus and name in bare))
        if other:
            others[name or "unnamed"] += 1
        else:
            own.append(uid)
        if other and record.speaker in speakers:
            shared.setdefault(record.speaker, uid)
    return own, dict(others), sorted(shared.items())


def _extra_kept(utterances: Sequence[Utterance], done: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(id, column, stored value, given value) of each extra column that a done utterance of the
    same corpus kind is given with another value than the store holds (see ExtractionSummary)."""
    recorded = {AUDIO_RATE_KEY, CHANNELS_KEY}  # extraction's own keys, not the manifest's
    kept = []
    for u in utterances:
        record = done.get(u.id)
        if record is None or record.corpus != u.corpus:  # another kind's id is refused by the plan
            continue
        for column, value in u.extra.items():
            old, value = record.extra.get(column), _missing_as_none(value)  # a NaN is stored as null
            old, value = ("" if old is None else str(old), "" if value is None else str(value)) \
                if column != "corpus" else (record.corpus_name, u.corpus_name)  # no corpus column (or ''): the kind
            if column not in recorded and old != value:
                kept.append((u.id, column, old, value))
    return kept
