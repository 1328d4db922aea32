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
