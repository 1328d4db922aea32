"""Several corpora in one store: ids, speakers and notes across corpora, protocols on a mixed store."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures_audio import write_audio
from w2v2ser.extract import build_extractor, extract_corpus
from w2v2ser.store import StoreError, Utterance, open_store


def _corpus(folder: Path, kind: str, speakers: tuple[str, ...], *, per_speaker: int = 2, seed: int = 0,
            ids: str = "{speaker}_{k}") -> list[Utterance]:
    """``per_speaker`` short files per speaker, labels alternating angry/sad, of corpus ``kind``."""
    utterances = []
    for s, speaker in enumerate(speakers):
        for k in range(per_speaker):
            uid = ids.format(speaker=speaker, k=k)
            path = write_audio(folder / f"{uid}.wav", duration=0.3, seed=seed + 10 * s + k)
            utterances.append(Utterance(id=uid, path=str(path), speaker=speaker, label=("angry", "sad")[k % 2],
                                        corpus=kind))
    return utterances


def _extract(utterances: list[Utterance], store: Path):
    return extract_corpus(utterances, store, extractors=[build_extractor("spectrogram")], progress=False)


def test_an_id_of_another_corpus_is_refused_not_relabelled_in_place(tmp_path):
    """Found by a multi-corpus trial: a CSV manifest listing files whose stems were ids of the store's
    RAVDESS utterances (same audio) rewrote their labels and speakers in place, leaving rows of corpus
    ravdess with the CSV's labels; with other audio, the refusal spoke of a changed path."""
    store = tmp_path / "s.zarr"
    ravdess = _corpus(tmp_path / "a", "ravdess", ("Actor_01",))
    _extract(ravdess, store)
    same_audio = [Utterance(id=u.id, path=u.path, speaker="e1", label="neu", corpus="csv") for u in ravdess]
    with pytest.raises(StoreError, match=r"2 utterance id\(s\) of this csv corpus are already in store .* as "
                                         r"utterances of corpus ravdess \(e.g. 'Actor_01_0'.*'id' column"):
        _extract(same_audio, store)
    other_audio = _corpus(tmp_path / "b", "csv", ("Actor_01",), seed=5)
    with pytest.raises(StoreError, match="of this csv corpus are already in store"):
        _extract(other_audio, store)
    rows = open_store(store).list_utterances()
    assert {(r.corpus, r.speaker, r.label) for r in rows} == {("ravdess", "Actor_01", "angry"),
                                                              ("ravdess", "Actor_01", "sad")}
    # The fix the message gives: ids of their own.
    renamed = [Utterance(id=f"csv/{u.id}", path=u.path, speaker=u.speaker, label=u.label, corpus="csv")
               for u in other_audio]
    assert _extract(renamed, store).planned == 2
    assert len(open_store(store).list_utterances()) == 4
    # A corpus folder's ids come from its reader: no 'id' column to give (review L3).
    folder = [Utterance(id=u.id, path=u.path, speaker="Ses01F", label="neu", corpus="iemocap") for u in renamed]
    with pytest.raises(StoreError, match=r"of this iemocap corpus .* Extract this corpus into a new store") as refused:
        _extract(folder, store)
    assert "'id' column" not in str(refused.value)


def test_extending_a_store_names_other_corpora_and_speaker_names_they_share(tmp_path):
    """Found by a multi-corpus trial: a second corpus extracted into a store was told that the first
    corpus's utterances "are not in this CSV manifest ... extract this CSV manifest into a new store"
    to leave them out, and a second CSV corpus whose speakers were also named '1' and '2' was merged
    with the first one's speakers (statistics, folds) without a word."""
    store = tmp_path / "s.zarr"
    _extract(_corpus(tmp_path / "a", "ravdess", ("Actor_01", "Actor_02")), store)
    first = _corpus(tmp_path / "b", "csv", ("1", "2", "3"), ids="b{speaker}_{k}")
    summary = _extract(first, store)
    assert summary.absent == [] and summary.other_corpora == {"ravdess": 4} and summary.shared_speakers == []
    assert summary.notes() == [f"store {store} also holds 4 utterance(s) of other corpora or manifests (by corpus: "
                               f"ravdess 4); `w2v2ser train` reads them too, unless `--subset corpus=NAME` selects "
                               f"one corpus"]
    second = _corpus(tmp_path / "c", "csv", ("1", "2"), ids="c{speaker}_{k}", seed=50)
    summary = _extract(second, store)
    assert summary.other_corpora == {"ravdess": 4, "csv": 6}
    assert summary.shared_speakers == [("1", "b1_0"), ("2", "b2_0")]
    note = summary.notes()[1]
    assert note.startswith("2 speaker name(s) of this manifest also name utterances of the store that it does not "
                           "list: '1' (e.g. b1_0), '2' (e.g. b2_0). Each name is one speaker"), note
    assert "give them names of their own" in note
    # The fix the note gives: other names, taken in place (nothing extracted again).
    renamed = [Utterance(id=u.id, path=u.path, speaker=f"c{u.speaker}", label=u.label, corpus="csv") for u in second]
    summary = _extract(renamed, store)
    assert summary.extracted == 0 and summary.shared_speakers == []
    assert sorted(open_store(store).speakers()) == ["1", "2", "3", "Actor_01", "Actor_02", "c1", "c2"]
    # A resumed manifest that dropped rows of a speaker keeps the old note, and shares no name. (The
    # other CSV manifest's rows are of its kind too: a resumed CSV cannot tell them from dropped rows.)
    summary = _extract(renamed[1:], store)
    assert renamed[0].id in summary.absent and summary.other_corpora == {"ravdess": 4}
    assert summary.shared_speakers == []


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> str:
    """A store of RAVDESS (24 actors), IEMOCAP (5 sessions) and a CSV corpus whose speakers are named
    '3' and 'Actor_05' (the latter like a RAVDESS actor)."""
    from stage2_fixtures import build_store, iemocap_utterances, ravdess_utterances

    csv = [Utterance(id=f"csv{k}", path=f"/fake/csv/{k}.wav", speaker=("3", "Actor_05")[k % 2],
                     label=("angry", "sad", "neutral")[k % 3], corpus="csv") for k in range(12)]
    rows = ravdess_utterances(per_actor=2) + iemocap_utterances(per_speaker=4) + csv
    return str(build_store(tmp_path_factory.mktemp("stores") / "mixed.zarr", utterances=rows, layers=3, dim=4,
                           features=("egemaps",)))


@pytest.mark.parametrize("protocol, how", [("ravdess", "the actor number"), ("iemocap", "the session")])
def test_a_corpus_protocol_refuses_utterances_of_several_corpora(mixed, tmp_path, protocol, how):
    """Found by a multi-corpus trial: the ravdess protocol on a store of RAVDESS, IEMOCAP and a CSV
    corpus trained on CSV speaker '3' and IEMOCAP's 'Ses01F'..'Ses05M' as RAVDESS actors 1-5 (a CSV
    speaker '23' would have been a test actor); the iemocap protocol failed on a RAVDESS speaker's
    session without saying why."""
    from w2v2ser.train import ExperimentConfig, ProtocolError, train_experiment

    config = ExperimentConfig(stores={"main": mixed}, features="egemaps", protocol=protocol, seeds=1)
    with pytest.raises(ProtocolError, match=rf"the {protocol} protocol takes its partitions from {how}.*several "
                                            rf"corpora \(csv 12, iemocap 40, ravdess \d+\).*--subset corpus=NAME"
                                            rf".*--speaker-folds K"):
        train_experiment(config, out=tmp_path / "run", progress=False)


def test_training_warns_of_a_speaker_name_in_several_corpora(mixed, tmp_path, caplog):
    """A CSV speaker named 'Actor_05' is one speaker with RAVDESS's actor 5 (statistics, folds): say so."""
    from w2v2ser.train import ExperimentConfig, train_experiment

    config = ExperimentConfig(stores={"main": mixed}, features="egemaps", protocol="csv", speaker_folds=3,
                              seeds=1, units=8, recipe_overrides={"max_epochs": 1}, workers=1)
    with caplog.at_level("WARNING", logger="w2v2ser"):
        train_experiment(config, out=tmp_path / "run", progress=False)
    warned = [r.getMessage() for r in caplog.records if "several corpora" in r.getMessage()]
    assert warned == ["speaker name(s) 'Actor_05' have utterances of several corpora ('Actor_05': csv, ravdess); "
                      "each name is one speaker, for speaker normalisation and folds alike. If they are different "
                      "people, give them names of their own in the manifest and rerun the same `w2v2ser extract` "
                      "(speakers are updated in place, nothing is extracted again)"]


def test_a_subset_of_one_corpus_picks_its_protocol(mixed, tmp_path, capsys):
    """Found by a multi-corpus trial: `train --subset corpus=ravdess` without --protocol was refused with
    "its corpus is ['csv', 'iemocap', 'ravdess'], expected one of ['csv', 'iemocap', 'ravdess']"."""
    from w2v2ser.__main__ import main
    from w2v2ser.train import ExperimentConfig

    config = ExperimentConfig(stores={"main": mixed}, features="egemaps", subset={"corpus": "iemocap"})
    assert config.protocol == "iemocap"
    assert main(["train", mixed, "--features", "egemaps", "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "it holds several corpora (csv, iemocap, ravdess); pass --protocol" in error, error
    assert "or keep one corpus with --subset corpus=NAME, whose protocol is then taken" in error
    assert main(["train", mixed, "--features", "egemaps", "--subset", "corpus=ravdess", "--seeds", "1",
                 "--set", "max_epochs=1", "--set", "units=8", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    assert "/ ravdess (corpus=ravdess): UAR" in capsys.readouterr().out


def test_a_csv_manifest_s_corpus_column_selects_its_rows(tmp_path):
    """Found by a multi-corpus trial: a CSV manifest's `corpus` column was listed by `store info` as the
    field corpus (corpusC 28), but `--subset corpus=corpusC` found none, every CSV being corpus csv: two
    CSV corpora of one store could not be told apart."""
    from stage2_fixtures import build_store, ravdess_utterances
    from w2v2ser.train import ConfigError, select_subset

    rows = [Utterance(id=f"{name}{k}", path=f"/fake/{name}/{k}.wav", speaker=f"{name}{k % 3}", label="angry",
                      corpus="csv", extra={"corpus": name} if name != "b" else {}) for name in ("b", "c") for k in range(6)]
    store = build_store(tmp_path / "s.zarr", utterances=rows + ravdess_utterances(per_actor=1, actors=3),
                        features=("egemaps",))
    records = open_store(store).list_utterances()
    assert [r.id for r in select_subset(records, {"corpus": "c"}, store="s")] == [f"c{k}" for k in range(6)]
    assert len(select_subset(records, {"corpus": "csv"}, store="s")) == 12
    assert len(select_subset(records, {"corpus": ["ravdess", "c"]}, store="s")) == 9
    with pytest.raises(ConfigError, match=r"no utterance of s has corpus 'd'; it has c \(6\), csv \(12\), ravdess \(3\)"):
        select_subset(records, {"corpus": "d"}, store="s")


def _named(utterances: list[Utterance], name: str) -> list[Utterance]:
    """The utterances as rows of a CSV manifest whose `corpus` column says ``name``."""
    return [Utterance(id=u.id, path=u.path, speaker=u.speaker, label=u.label, corpus="csv", extra={"corpus": name})
            for u in utterances]


def test_two_csv_manifests_are_told_apart_by_their_corpus_column(tmp_path):
    """Left over by stop 60 (review L1): two CSV manifests were both corpus `csv`, so extracting the
    second one again counted the first one's rows as rows it had dropped ("not in this CSV manifest
    ... extract it into a new store") and named no speaker they share, though each has a `corpus` column."""
    store = tmp_path / "s.zarr"
    _extract(_named(_corpus(tmp_path / "b", "csv", ("1", "2"), ids="b{speaker}_{k}"), "b"), store)
    second = _named(_corpus(tmp_path / "c", "csv", ("1",), ids="c{speaker}_{k}", seed=50), "c")
    first_time = _extract(second, store)
    assert first_time.other_corpora == {"b": 4} and first_time.shared_speakers == [("1", "b1_0")]
    again = _extract(second, store)  # resumed: its ids are known now
    assert again.absent == [] and again.other_corpora == {"b": 4} and again.shared_speakers == [("1", "b1_0")]
    assert "(by corpus: b 4)" in again.notes()[0] and again.notes()[1].startswith("1 speaker name(s) of this")


def test_a_csv_manifest_that_gained_a_corpus_column_owns_its_earlier_rows(tmp_path):
    """Review s61: a CSV manifest extracted again after it gained a `corpus` column (its stored rows still
    named `csv`: that column is not updated in place) counted the rows it dropped as "another corpus csv"
    and named its own speakers as shared with another corpus."""
    store = tmp_path / "s.zarr"
    plain = _corpus(tmp_path / "b", "csv", ("1", "2"))
    _extract(plain, store)
    named = _named(plain, "b")
    again = _extract(named[:3], store)  # the corpus column added, speaker 2's second row dropped
    assert again.absent == ["2_1"] and again.other_corpora == {} and again.shared_speakers == []
    notes = again.notes()
    assert notes[0].startswith(f"1 utterance(s) of store {store} are not in this manifest (2_1)"), notes
    assert not any("of other corpora" in n or "speaker name(s) of this" in n for n in notes), notes


def test_training_warns_of_a_speaker_name_in_two_corpora_of_one_csv_manifest(tmp_path, caplog):
    """Left over by stop 60: a CSV manifest whose `corpus` column names two corpora with a speaker '1'
    each was one corpus `csv` for the training warning, which then said nothing."""
    from stage2_fixtures import build_store
    from w2v2ser.train import ExperimentConfig, train_experiment

    rows = [Utterance(id=f"{name}{k}", path=f"/fake/{name}/{k}.wav", speaker=str(k % 3),
                      label=("angry", "sad")[k % 2], corpus="csv", extra={"corpus": name})
            for name in ("b", "c") for k in range(6)]
    store = str(build_store(tmp_path / "s.zarr", utterances=rows, layers=3, dim=4, features=("egemaps",)))
    config = ExperimentConfig(stores={"main": store}, features="egemaps", protocol="csv", speaker_folds=3,
                              seeds=1, units=8, recipe_overrides={"max_epochs": 1}, workers=1)
    with caplog.at_level("WARNING", logger="w2v2ser"):
        train_experiment(config, out=tmp_path / "run", progress=False)
    warned = [r.getMessage() for r in caplog.records if "several corpora" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("speaker name(s) '0', '1', '2' have utterances of several "
                                                     "corpora ('0': b, c)"), warned


def test_ids_of_another_csv_corpus_are_noted_not_taken_silently(tmp_path):
    """Left over by stop 60 (review L4): a second CSV manifest (`corpus` column c) listing the ids and
    audio of the first one's rows (corpus b) relabelled them in place without a word about the
    corpus: they stay rows of corpus b (and so does an edited `corpus` column); say so, with the fix."""
    store = tmp_path / "s.zarr"
    first = _named(_corpus(tmp_path / "b", "csv", ("1", "2")), "b")
    _extract(first, store)
    again = [Utterance(id=u.id, path=u.path, speaker=u.speaker, label="neu", corpus="csv", extra={"corpus": "c"})
             for u in first[:3]]
    summary = _extract(again, store)
    assert summary.extra_kept == [(u.id, "corpus", "b", "c") for u in first[:3]]
    note = next(n for n in summary.notes() if "given as corpus" in n)
    assert note.startswith(f"3 utterance id(s) of this manifest are already in store {store} as utterances of "
                           f"corpus b (e.g. 1_0, given as corpus 'c'); they stay of corpus b"), note
    assert "'c/1_0'" in note
    rows = {r.id: r for r in open_store(store).list_utterances()}
    assert {rows[u.id].corpus_name for u in first} == {"b"} and rows["1_0"].label == "neu"  # as the note says
    assert _extract(first, store).extra_kept == []


def test_an_edited_extra_column_is_noted_not_taken_silently(tmp_path):
    """An edited value of a CSV manifest's own column (read by `--subset FIELD=VALUE`) was dropped
    without a word on the rerun of extract, though edited labels and speakers are taken in place."""
    store = tmp_path / "s.zarr"
    first = [Utterance(id=u.id, path=u.path, speaker=u.speaker, label=u.label, corpus="csv",
                       extra={"dialect": "north", "note": ""})
             for u in _corpus(tmp_path / "a", "csv", ("1", "2"))]
    _extract(first, store)
    edited = [Utterance(id=u.id, path=u.path, speaker=u.speaker, label=u.label, corpus="csv",
                        extra={"dialect": "south" if u.speaker == "1" else "north", "note": ""}) for u in first]
    summary = _extract(edited, store)
    assert summary.extra_kept == [("1_0", "dialect", "north", "south"), ("1_1", "dialect", "north", "south")]
    assert summary.notes() == [f"2 value(s) of this manifest's own columns (dialect) differ from what store {store} "
                               f"holds (e.g. 1_0: dialect 'north' -> 'south'); such columns are not updated in place "
                               f"(labels and speakers are), so `--subset dialect=...` still reads the stored values. "
                               f"To use the new ones, extract this manifest into a new store (`--like {store}` keeps "
                               f"the feature configs)"]
    assert {r.extra["dialect"] for r in open_store(store).list_utterances()} == {"north"}  # as the note says


def test_a_subset_of_many_values_keeps_the_records_that_have_one_in_their_order():
    """select_subset over many speakers (its values are looked up in a set, not a list): the records kept are
    those with one of the values of every field, in the store's order, whatever the order of the values."""
    from types import SimpleNamespace

    from w2v2ser.train import select_subset

    records = [SimpleNamespace(id=f"u{k}", speaker=f"spk{k % 300}", label=("angry", "sad", "calm")[k % 3], gender=None,
                               session=None, split=None, corpus="csv", extra={}) for k in range(3000)]
    speakers = [f"spk{k}" for k in range(299, 0, -2)]  # odd speakers, in reverse order
    kept = select_subset(records, {"speaker": speakers, "label": ["sad", "angry"]}, store="s")
    assert [r.id for r in kept] == [r.id for r in records if r.speaker in speakers and r.label in ("sad", "angry")]
    assert len(kept) == 1000 and kept[0].id == "u1"
    one = select_subset(records, {"speaker": "spk7"}, store="s")
    assert [r.id for r in one] == [f"u{k}" for k in range(7, 3000, 300)]
