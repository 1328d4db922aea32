"""Evaluation protocols: classes, label merging, speaker splits, crop length.

* ``ravdess``: speech and song, 7 classes (calm merged into neutral); actors 1-20 train,
  21-22 validation, 23-24 test; one fold named ``split``; 250 frames at most.
* ``iemocap``: neutral, happiness (excitement merged), anger, sadness, other labels dropped;
  leave-one-session-out, 5 folds named ``session1``..``session5`` after the test session; the
  validation (early-stopping) session is the NEXT session cyclically (test 5 -> validation 1),
  the remaining three train; 400 frames at most (8 s of 20 ms frames; the store keeps whole utterances).
* ``csv``: classes are the manifest's labels; the ``split`` column (train/validation/test) gives
  one fold named ``split``; without it, speakers are sorted and cut into ``csv_folds``
  contiguous groups (speakers of a shared session stay together, see speaker_group_folds),
  leave-one-group-out (folds ``group1``..), validation = next group cyclically; 400 frames at most.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from w2v2ser._common import did_you_mean, first_few
from w2v2ser._text import or_list

from ._errors import ConfigError, ProtocolError

__all__ = ["Protocol", "Fold", "PROTOCOLS", "get_protocol", "check_disjoint", "select_utterances",
           "statistics_utterances", "select_subset", "speaker_group_folds", "protocol_of_corpora", "protocol_of_store"]

log = logging.getLogger("w2v2ser.train")


@dataclass(frozen=True)
class Fold:
    """Speakers of the three partitions of one fold.

    Attributes:
        name: Fold name (part of each run directory's name).
        train: Speakers of the training partition.
        validation: Speakers of the validation partition.
        test: Speakers of the test partition.
    """

    name: str
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready split description."""
        return {"fold": self.name, "train": list(self.train), "validation": list(self.validation),
                "test": list(self.test)}


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol.

    Attributes:
        name: Registry key.
        classes: Class names in output order (empty: taken from the data, CSV).
        label_map: Raw label (lower case) -> class name; None keeps raw labels (CSV).
        max_frames: Longest input in frames of the (pair-averaged) feature; longer ones keep
            their first ``max_frames`` frames.
        make_folds: Function (records, csv_folds) -> list of Fold.
    """

    name: str
    classes: tuple[str, ...]
    label_map: dict[str, str] | None
    max_frames: int
    make_folds: Callable[[Sequence[Any], int], list[Fold]]

    def map_label(self, raw: str) -> str | None:
        """Class of a raw label, or None when the protocol drops it.

        Args:
            raw: A label as stored.
        """
        if self.label_map is None:
            return raw if raw else None
        return self.label_map.get(str(raw).strip().lower())

    def class_names(self, records: Sequence[Any]) -> tuple[str, ...]:
        """Output classes (CSV: sorted distinct labels of the records).

        Args:
            records: The utterance records read (used only when the protocol lists no classes).
        """
        if self.classes:
            return self.classes
        return tuple(sorted({r.label for r in records if r.label}))


def check_disjoint(fold: Fold) -> None:
    """Raise ProtocolError unless train/validation/test speakers are disjoint and non-empty.

    Args:
        fold: The fold to check.
    """
    parts = {"train": set(fold.train), "validation": set(fold.validation), "test": set(fold.test)}
    for name, speakers in parts.items():
        if not speakers:
            raise ProtocolError(f"fold {fold.name!r}: the {name} partition has no speakers; "
                                f"check the store's speaker/split/session columns")
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        both = parts[a] & parts[b]
        if both:
            raise ProtocolError(
                f"fold {fold.name!r}: speakers {sorted(both)} are in both {a} and {b}; speaker-independent "
                f"evaluation needs disjoint partitions (fix the manifest's split column)")


def _actor_number(speaker: str) -> int:
    digits = re.findall(r"\d+", speaker)
    if not digits:
        raise ProtocolError(f"RAVDESS speaker {speaker!r} has no actor number; expected e.g. 'Actor_12'")
    return int(digits[-1])


def _one_corpus(records: Sequence[Any], protocol: str, how: str) -> None:
    """Raise ProtocolError when ``records`` hold several corpora: ``protocol`` reads a partition
    from each speaker's name (``how``), which other corpora's names only seem to give."""
    corpora = Counter(str(getattr(r, "corpus", "") or "") for r in records)
    named = {c: n for c, n in corpora.items() if c}
    if len(named) > 1:
        counts = ", ".join(f"{c} {n}" for c, n in sorted(named.items()))
        raise ProtocolError(f"the {protocol} protocol takes its partitions from {how}, but the utterances trained "
                            f"on are of several corpora ({counts}), whose speaker names would be read the same "
                            f"way; train on one corpus (--subset corpus=NAME), or cross-validate over all of them "
                            f"with this protocol's classes (--speaker-folds K; pipeline.yaml: speaker_folds: K)")


def _ravdess_folds(records: Sequence[Any], csv_folds: int) -> list[Fold]:
    _one_corpus(records, "ravdess", "the actor number in each speaker's name ('Ses01F' would be actor 1)")
    speakers = sorted({r.speaker for r in records})
    # PredefinedSplit: fold 0 = test actors 23-24, fold 1 = validation actors 21-22, -1 = always train.
    code = {s: 0 if n in (23, 24) else 1 if n in (21, 22) else -1 if 1 <= n <= 20 else -2
            for s, n in ((s, _actor_number(s)) for s in speakers)}
    used = [s for s in speakers if code[s] != -2]  # actors beyond 24 belong to no partition
    for part, codes, actors in (("test", {0}, "23-24"), ("validation", {1}, "21-22"), ("train", {-1}, "1-20")):
        if not any(code[s] in codes for s in used):
            raise _short(
                f"the ravdess protocol takes its {part} speakers from actors {actors} (train 1-20, validation "
                f"21-22, test 23-24), but the store has none of them; its {len(speakers)} speakers are "
                f"{_sample(speakers)}. Extract the whole RAVDESS corpus, or pick the protocol of the store's "
                f"corpus (--protocol iemocap or csv; w2v2ser train picks it from the store when --protocol is "
                f"not given)", f"no {part} speaker (the ravdess protocol's {part} speakers are actors {actors})")
    from sklearn.model_selection import PredefinedSplit  # on first use: importing stage 2 stays cheap

    (_, test), (_, val) = PredefinedSplit([code[s] for s in used]).split()
    held = set(test) | set(val)
    return [Fold("split", tuple(s for i, s in enumerate(used) if i not in held),
                 tuple(used[i] for i in val), tuple(used[i] for i in test))]


def _short(message: str, shortfall: str) -> ProtocolError:
    """A ProtocolError for utterances too few for the folds; ``shortfall`` (e.g. "no test speaker
    (...)") lets a caller whose subset caused it say so instead of blaming the store."""
    error = ProtocolError(message)
    error.shortfall = shortfall
    return error


def _sample(names: Sequence[str], limit: int = 6) -> str:
    """A short list of names for an error message."""
    return f"[{first_few([repr(n) for n in names], limit)}]"


def protocol_of_corpora(corpora: Sequence[str], *, store: str, subset: str | Sequence[str] | None = None) -> str:
    """The protocol of a store's corpus (its ``corpus`` attribute: a protocol's name, e.g. ravdess).

    Args:
        corpora: The store's corpus kinds.
        store: The store, as messages name it.
        subset: The values a ``--subset corpus=...`` keeps: of a store of several corpora, these
            decide (when the store has any of them; else they name a CSV manifest's own corpus
            column, so the protocol is csv).

    Raises:
        ProtocolError: the store (or the subset) holds several corpora, or one without a protocol.
    """
    found = sorted(set(corpora))
    wanted = [subset] if isinstance(subset, str) else list(subset or [])
    if any(name in found for name in wanted):
        found = sorted(name for name in found if name in wanted)
    elif wanted and "csv" in found:  # values of a CSV manifest's own corpus column keep CSV rows only
        found = ["csv"]
    if len(found) == 1 and found[0] in PROTOCOLS:
        return found[0]
    if len(found) > 1:
        raise ProtocolError(f"cannot tell the protocol of store {store}: it holds several corpora ({', '.join(found)}); "
                            f"pass --protocol ({or_list(list(PROTOCOLS))}; in Python ExperimentConfig(protocol=...)), "
                            f"or keep one corpus with --subset corpus=NAME, whose protocol is then taken")
    raise ProtocolError(f"cannot tell the protocol of store {store}: its corpus is {found or 'not recorded'}, "
                        f"expected one of {sorted(PROTOCOLS)}; pass --protocol ({or_list(list(PROTOCOLS))}; "
                        f"in Python ExperimentConfig(protocol=...))")


def protocol_of_store(path: str, *, allow_incomplete: bool = False, subset: str | Sequence[str] | None = None) -> str:
    """The protocol of the corpus a store was extracted from, as recorded in the store (of a store of
    several corpora: of the one ``subset``, the corpus kinds a ``--subset corpus=...`` keeps, names).

    Args:
        path: The store (folder or URL).
        allow_incomplete: Also read a store whose extraction has not finished.
        subset: Corpus kind(s) a ``--subset corpus=...`` keeps, for a store of several corpora.

    Raises:
        StoreError: the store cannot be opened (see ``open_store``).
        ProtocolError: the store holds several corpora, or one without a protocol.
    """
    from w2v2ser.store import open_store  # on first use: importing the protocols stays cheap

    return protocol_of_corpora(open_store(path, allow_incomplete=allow_incomplete).attrs.get("corpus", []), store=path,
                               subset=subset)


def _leave_one_group_out(speakers: Sequence[str], groups: Sequence[Any], names: Sequence[str]) -> list[Fold]:
    """One fold per group (sorted): that group tests, the NEXT group (cyclically) validates, the rest train."""
    speakers = np.asarray(speakers, dtype=object)
    order = sorted(set(groups))
    members = {g: tuple(sorted(speakers[np.asarray(groups, dtype=object) == g])) for g in order}
    from sklearn.model_selection import LeaveOneGroupOut  # on first use: importing stage 2 stays cheap

    folds = []
    for (_, test_idx), name in zip(LeaveOneGroupOut().split(speakers, groups=list(groups)), names):
        test_group = groups[test_idx[0]]
        val_group = order[(order.index(test_group) + 1) % len(order)]
        train = tuple(sorted(s for g in order if g not in (test_group, val_group) for s in members[g]))
        folds.append(Fold(name, train, members[val_group], tuple(sorted(speakers[test_idx]))))
    return folds


def session_of(record: Any) -> int:
    """IEMOCAP session number (1-5) from the session column, the speaker, or the id."""
    for text in (record.session, record.speaker, record.id):
        m = re.search(r"Ses(?:sion)?0*(\d)", str(text))
        if m:
            return int(m.group(1))
    raise ProtocolError(f"cannot tell the IEMOCAP session of utterance {record.id!r} (session={record.session!r}, "
                        f"speaker={record.speaker!r}); expected 'Session1' or a 'Ses01F' speaker")


def _iemocap_folds(records: Sequence[Any], csv_folds: int) -> list[Fold]:
    _one_corpus(records, "iemocap", "the session of each speaker ('Ses01F', 'Session1')")
    session = {r.speaker: session_of(r) for r in records}
    speakers = sorted(s for s, k in session.items() if 1 <= k <= 5)
    missing = sorted(set(range(1, 6)) - set(session.values()))
    if missing:
        # Not protocol csv: it keeps the raw labels (16 classes, exc not merged) instead of the 4 classes.
        present = len(set(range(1, 6)) & set(session.values()))
        instead = (f"or keep this protocol's 4 classes and cross-validate over the {present} sessions present, "
                   f"one session per fold: --speaker-folds {present} (speaker_folds: {present})" if present >= 3
                   else f"speaker folds need 3 groups, so with {present} session(s) they would split a session's "
                        f"two speakers between training and test")
        raise _short(f"IEMOCAP leave-one-session-out needs all 5 sessions; the store has no speaker of "
                     f"session(s) {missing}; extract the whole corpus, {instead}",
                     f"no speaker of IEMOCAP session(s) {missing} (leave-one-session-out needs all 5)")
    return _leave_one_group_out(speakers, [session[s] for s in speakers], [f"session{k}" for k in range(1, 6)])


_SAID: set[tuple[int, tuple[str, ...]]] = set()  # warnings given (csv_folds, speakers)


def _csv_folds(records: Sequence[Any], csv_folds: int) -> list[Fold]:
    splits = {r.split for r in records}
    if splits - {""}:
        unsplit = [r for r in records if not r.split]
        if unsplit:  # the split column is all or nothing
            speakers = sorted({r.speaker for r in unsplit})
            raise ProtocolError(f"{len(unsplit)} utterance(s) of the CSV manifest have no split (e.g. "
                                f"{_sample([r.id for r in unsplit])}; speakers {_sample(speakers)}) while the "
                                f"others have one; give every row a split (train, validation or test), or none "
                                f"for speaker-group folds, and extract the manifest again")
        bad = splits - {"train", "validation", "test"}
        if bad:
            raise ProtocolError(f"CSV manifest split values {sorted(bad)} are not train/validation/test; "
                                f"fix the split column (or leave it empty everywhere for speaker-group folds)")
        part: dict[str, set[str]] = {"train": set(), "validation": set(), "test": set()}
        for r in records:
            if r.split:
                part[r.split].add(r.speaker)
        empty = [name for name, speakers in part.items() if not speakers]
        if empty:
            given = ", ".join(name for name in part if name not in empty)
            raise _short(
                f"the CSV manifest's split column has no {' and no '.join(empty)} rows (it has {given}); the "
                f"heads need all three partitions (validation for early stopping). Mark some speakers' rows "
                f"{' / '.join(empty)} in the manifest and extract again, or leave the split column empty "
                f"everywhere for leave-one-speaker-group-out folds",
                f"no {' and no '.join(empty)} rows of the CSV manifest's split column")
        return [Fold("split", *(tuple(sorted(part[p])) for p in ("train", "validation", "test")))]
    speakers = sorted({r.speaker for r in records})
    k = min(int(csv_folds), len(speakers))
    if k < int(csv_folds) and k >= 3 and (int(csv_folds), tuple(speakers)) not in _SAID:
        _SAID.add((int(csv_folds), tuple(speakers)))  # once per process: a sweep plans each head's runs
        log.warning("csv_folds=%d but the utterances have %d speakers: %d folds of one speaker each",
                    csv_folds, len(speakers), k)
    if k < 3:
        raise _short(f"leave-one-speaker-group-out needs at least 3 speaker groups, got {k} "
                     f"({len(speakers)} speakers, csv_folds={csv_folds}); add a split column instead",
                     f"{len(speakers)} speaker(s), fewer than the 3 speaker groups leave-one-speaker-group-out needs")
    return speaker_group_folds(records, k, setting="csv_folds")


def speaker_group_folds(records: Sequence[Any], k: int, *, setting: str = "speaker_folds") -> list[Fold]:
    """Leave-one-speaker-group-out: the sorted speakers cut into ``k`` contiguous groups; each
    group tests once, the next group (cyclically) validates, the rest train.

    Speakers recorded together (one session holding several speakers, as IEMOCAP's dyadic
    dialogs, where each microphone also picks up the partner) stay in one group: the sorted
    sessions are cut into the groups instead, when there are at least ``k`` of them; else a
    warning names the sessions that the folds split.

    Args:
        records: The utterance records trained on.
        k: How many groups.
        setting: The setting that chose ``k``, named in the messages (``csv_folds`` for the csv protocol).

    Raises:
        ProtocolError: fewer speakers than groups.
    """
    speakers = sorted({r.speaker for r in records})
    if len(speakers) < k:
        raise ProtocolError(f"{k} speaker folds need at least {k} speakers; the utterances trained on have "
                            f"{len(speakers)} ({_sample(speakers)}); lower {setting}")
    unit = {s: s for s in speakers}  # what stays in one group: the speaker, or its session
    session = _shared_sessions(records)
    if session and len(set(session.values())) >= k:
        unit = session
    elif session:
        together = sorted(set(session.values()), key=_natural)
        log.warning("%d speaker folds split sessions whose speakers were recorded together (the utterances "
                    "have %d sessions: %s): a fold may test one speaker of a session and train on its "
                    "partner. Choose %s <= %d to keep each session in one group.", k,
                    len(together), first_few(together, 5), setting, len(together))
    keys = sorted(set(unit.values()), key=_natural if unit is session else None)
    group_of = {u: i for i, g in enumerate(np.array_split(np.arange(len(keys)), k)) for u in (keys[j] for j in g)}
    group = {s: group_of[unit[s]] for s in speakers}
    return _leave_one_group_out(speakers, [group[s] for s in speakers], [f"group{i + 1}" for i in range(k)])


def _shared_sessions(records: Sequence[Any]) -> dict[str, str]:
    """Speaker -> session when every speaker has one session and some session has several
    speakers (recorded together); else {}."""
    sessions: dict[str, set[str]] = {}
    for r in records:
        sessions.setdefault(r.speaker, set()).add(str(getattr(r, "session", "") or ""))
    if any(len(v) != 1 or "" in v for v in sessions.values()):
        return {}
    session = {s: next(iter(v)) for s, v in sessions.items()}
    return session if len(set(session.values())) < len(session) else {}


def _natural(text: str) -> tuple[Any, ...]:
    """Sort key: Session2 before Session10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


_RAVDESS = {"neutral": "neutral", "calm": "neutral", "happy": "happy", "sad": "sad", "angry": "angry",
            "fearful": "fearful", "fear": "fearful", "disgust": "disgust", "disgusted": "disgust",
            "surprised": "surprised", "surprise": "surprised",
            "01": "neutral", "02": "neutral", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
            "07": "disgust", "08": "surprised",
            # IEMOCAP's codes and nouns, so that an IEMOCAP-style manifest scores a RAVDESS run
            # (`predict --manifest`); excited is merged into happy, as the iemocap protocol does.
            "neu": "neutral", "hap": "happy", "happiness": "happy", "exc": "happy", "excited": "happy",
            "ang": "angry", "anger": "angry", "sadness": "sad", "fea": "fearful", "dis": "disgust",
            "sur": "surprised"}
_IEMOCAP = {"neu": "neutral", "neutral": "neutral", "hap": "happiness", "happy": "happiness",
            "happiness": "happiness", "exc": "happiness", "excited": "happiness", "excitement": "happiness",
            "ang": "anger", "angry": "anger", "anger": "anger", "sad": "sadness", "sadness": "sadness"}

PROTOCOLS: dict[str, Protocol] = {
    "ravdess": Protocol("ravdess", ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised"),
                        _RAVDESS, 250, _ravdess_folds),
    "iemocap": Protocol("iemocap", ("neutral", "happiness", "anger", "sadness"), _IEMOCAP, 400, _iemocap_folds),
    "csv": Protocol("csv", (), None, 400, _csv_folds),
}


def get_protocol(name: str) -> Protocol:
    """Return the protocol registered under ``name``.

    Args:
        name: A key of :data:`PROTOCOLS`.

    Raises:
        ConfigError: No protocol has that name.
    """
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def select_utterances(protocol: Protocol, records: Sequence[Any], *,
                      report: bool = True) -> tuple[list[Any], list[str], tuple[str, ...]]:
    """Keep the records whose label maps to a protocol class.

    Args:
        protocol: The protocol whose classes decide.
        records: The store's utterance records.
        report: Log the dropped labels with their counts.

    Returns:
        (kept records, their class names, all class names).
    """
    kept, labels, dropped = [], [], Counter()
    for r in records:
        cls = protocol.map_label(r.label)
        if cls is None:  # counted as the protocol reads it: 'FRU' and 'fru' are one label of IEMOCAP's
            dropped[r.label if protocol.label_map is None else str(r.label).strip().lower()] += 1
        else:
            kept.append(r)
            labels.append(cls)
    if dropped and report:
        log.warning("protocol %s: dropped %d utterances whose labels are outside its classes: %s",
                    protocol.name, sum(dropped.values()), dict(sorted(dropped.items())))
    if not kept:
        raise ProtocolError(f"protocol {protocol.name!r} kept no utterance: store labels {sorted(dropped)} "
                            f"match none of its classes {list(protocol.classes)}; pick the right --protocol")
    classes = protocol.classes or tuple(sorted(set(labels)))
    return kept, labels, classes


def statistics_utterances(protocol: Protocol, records: Sequence[Any]) -> tuple[list[str] | None, list[str]]:
    """The utterances of ``records`` that normalisation statistics are composed over: those whose
    labels the protocol keeps (IEMOCAP's xxx, fru... left out, as its released code filters the 4
    classes first), and every one of a speaker with no kept label (a store of another corpus or
    unlabelled: its own statistics, not none). One rule for training and ``predict``.

    Returns:
        (their ids, None when the protocol keeps every label of ``records``; the speakers whose
        utterances all count since none of their labels is kept).
    """
    keeps = [protocol.map_label(r.label) is not None for r in records]
    if all(keeps):
        return None, []
    speakers = {r.speaker for r, keep in zip(records, keeps) if keep}
    ids = [r.id for r, keep in zip(records, keeps) if keep or r.speaker not in speakers]
    return ids, sorted({r.speaker for r in records} - speakers)


# Utterance fields a subset may name besides the reader's own ``extra`` keys.
_SUBSET_FIELDS = ("speaker", "label", "gender", "session", "split", "corpus")


def _field(record: Any, key: str) -> str | None:
    value = getattr(record, key) if key in _SUBSET_FIELDS else record.extra.get(key)
    return None if value is None else str(value)


def _values(record: Any, key: str) -> list[str]:
    """The values of ``key`` a subset matches: for ``corpus``, the corpus kind and a CSV manifest's own
    ``corpus`` column (every CSV is kind csv: the column tells two CSV corpora of one store apart)."""
    value = _field(record, key)
    values = [] if value is None else [value]
    if key == "corpus" and record.extra.get("corpus") not in (None, "", value):
        values.append(str(record.extra["corpus"]))
    return values


def select_subset(records: Sequence[Any], subset: Mapping[str, str | Sequence[str]], *, store: str) -> list[Any]:
    """The records whose field has one of the subset's values (a value or a list of them), for
    every field of the subset.

    Args:
        records: The store's utterance records.
        subset: Field -> the value (or values) to keep.
        store: The store as the user named it (in the errors).

    Raises:
        ConfigError: A field no record has, or a value no record has (a misspelling would
            otherwise leave utterances out without a word); the message lists what the store has.
    """
    for key, values in subset.items():
        wanted = [values] if isinstance(values, str) else list(values)
        found = Counter(v for r in records for v in _values(r, key))
        if not found:
            keys = sorted(set(_SUBSET_FIELDS) | {k for r in records for k in r.extra})
            raise ConfigError(f"subset {key}={','.join(wanted)}: no utterance of {store} records {key!r}; fields "
                              f"recorded: {', '.join(keys)}.{did_you_mean(key, keys)}")
        for value in wanted:
            if value not in found:
                have = first_few([f"{v} ({n})" for v, n in sorted(found.items())], 20)
                raise ConfigError(f"subset {key}={value}: no utterance of {store} has {key} {value!r}; it has "
                                  f"{have}.{did_you_mean(value, found)}")
        keep = set(wanted)  # a list: 3,000 speakers x 150,000 rows took 2.5 s
        records = [r for r in records if any(v in keep for v in _values(r, key))]
    if not records:
        raise ConfigError(f"subset {subset} keeps no utterance of {store}: no utterance has all of these values; "
                          f"drop a condition")
    return records
