"""Bad manifests: duplicate ids, escaping paths, wrong columns, missing files, odd labels, lone speakers."""

from __future__ import annotations

import os

from pathlib import Path

import numpy as np
import pytest

from fixtures_audio import write_audio
from w2v2ser.extract import ManifestError, build_extractor, extract_corpus, read_csv_manifest
from w2v2ser.store import StoreError, Utterance, open_store


def _manifest(folder: Path, text: str) -> Path:
    path = folder / "manifest.csv"
    path.write_text(text)
    return path


def test_duplicate_ids_are_refused_with_both_lines(tmp_path):
    write_audio(tmp_path / "a.wav")
    path = _manifest(tmp_path, "id,path,label,speaker\nx,a.wav,angry,s1\ny,a.wav,sad,s1\nx,a.wav,sad,s2\n")
    with pytest.raises(ManifestError, match=r"line 4.*'x' is also used on line 2.*unique"):
        read_csv_manifest(path)


def test_ids_derived_from_paths_keep_a_suffix_that_alone_tells_two_files_apart(tmp_path):
    """Found by a corpus trial: x.wav and x.flac were refused as two rows of utterance id 'x', an
    id the user never wrote; one path listed twice was reported the same way."""
    path = _manifest(tmp_path, "path,label,speaker\nx.wav,angry,s1\nx.flac,sad,s1\ny.wav,sad,s2\n")
    assert [u.id for u in read_csv_manifest(path).utterances] == ["x.wav", "x.flac", "y"]
    twice = _manifest(tmp_path, "path,label,speaker\nx.wav,angry,s1\ny.wav,sad,s2\nx.wav,sad,s1\n")
    with pytest.raises(ManifestError, match=r"line 4, column 'path': audio file 'x.wav' is also listed on line 2"):
        read_csv_manifest(twice)
    named = _manifest(tmp_path, "id,path,label,speaker\nx,x.wav,angry,s1\nx2,x.wav,sad,s1\n")  # a meant copy
    assert [u.id for u in read_csv_manifest(named).utterances] == ["x", "x2"]


def test_duplicate_ids_given_to_extract_corpus_directly_are_refused_before_writing(tmp_path):
    """Refused by StoreWriter.plan, after extract_corpus had created the new store: an empty store
    skeleton was left behind. extract_corpus now checks the ids before it creates anything."""
    from w2v2ser.store import StoreWriter

    wav = str(write_audio(tmp_path / "a.wav"))
    utterances = [Utterance(id="x", path=wav, speaker="s", label="angry")] * 2
    with pytest.raises(StoreError, match=r"duplicate utterance ids \['x'\]"):
        extract_corpus(utterances, tmp_path / "s.zarr", extractors=[build_extractor("spectrogram")], progress=False)
    assert not (tmp_path / "s.zarr").exists()  # no empty store skeleton left behind
    spec = build_extractor("spectrogram").feature_spec()
    with StoreWriter(tmp_path / "w.zarr") as writer, pytest.raises(StoreError, match="duplicate utterance ids"):
        writer.plan(utterances, num_samples=[16000, 16000], features=[spec], capacities={spec.name: [100, 100]})


@pytest.mark.parametrize("uid", ["a\nb", "a\tb", "a\0b", "a\rb", "a\u2028b"])
def test_ids_with_control_characters_given_in_python_are_refused_as_the_csv_reader_refuses_them(tmp_path, uid):
    """The CSV reader refuses an id with a line break, tab or NUL; the same id given through the
    Python API (extract_corpus, StoreWriter) was stored as it was, and logs, predictions.csv and
    --subset id=... could not show or match it."""
    from w2v2ser.store import StoreWriter

    wav = str(write_audio(tmp_path / "a.wav"))
    utterances = [Utterance(id="fine", path=wav, speaker="s", label="angry"),
                  Utterance(id=uid, path=wav, speaker="s", label="sad")]
    with pytest.raises(StoreError, match=r"utterances\[1\] has the id .* control character"):
        extract_corpus(utterances, tmp_path / "s.zarr", extractors=[build_extractor("spectrogram")], progress=False)
    assert not (tmp_path / "s.zarr").exists()  # refused before the new store is created: no empty skeleton
    spec = build_extractor("spectrogram").feature_spec()
    with StoreWriter(tmp_path / "w.zarr") as writer, pytest.raises(StoreError, match="control character"):
        writer.plan(utterances, num_samples=[16000, 16000], features=[spec], capacities={spec.name: [100, 100]})
    with pytest.raises(ManifestError, match="control character|NUL byte"):  # the CSV reader's own checks
        read_csv_manifest(_manifest(tmp_path, f'id,path,label,speaker\nok,a.wav,angry,s\n"{uid}",a.wav,sad,s\n'))


@pytest.mark.parametrize("uid", ["", "  "])
def test_an_empty_id_given_in_python_is_refused_before_anything_is_written(tmp_path, uid):
    """Found in review: StoreWriter.plan refused an empty id only after extract_corpus had created the
    store folder (zarr.json, journal, lock files left behind). It is now refused first, naming the
    utterance's place and file; the CSV reader derives an id from the path for an empty cell."""
    from w2v2ser import ConfigError

    wav = str(write_audio(tmp_path / "a.wav"))
    utterances = [Utterance(id="fine", path=wav, speaker="s", label="angry"),
                  Utterance(id=uid, path=wav, speaker="s", label="sad")]
    store = tmp_path / "new" / "s.zarr"
    with pytest.raises(ConfigError, match=rf"utterances\[1\] \(path '{wav}'\) has an empty id") as raised:
        extract_corpus(utterances, store, extractors=[build_extractor("spectrogram")], progress=False)
    assert not store.parent.exists()  # nothing written: no folder, no store skeleton
    path = _manifest(tmp_path, "id,path,label,speaker\nfine,a.wav,angry,s\n,a.wav,sad,s\n")
    assert [u.id for u in read_csv_manifest(path).utterances] == ["fine", "a.wav"]  # derived from the path
    # The message said the derived id is "the file name without its extension": a CSV's is "a.wav".
    assert str(raised.value).endswith("e.g. derived from the file name, as read_corpus derives one from the path "
                                      "where a row gives none"), raised.value


@pytest.mark.parametrize("uid", ["  ", "\u00a0", "\u3000"])
def test_a_blank_id_given_to_store_writer_plan_is_refused_naming_its_row(tmp_path, uid):
    """StoreWriter.plan refused an empty id but stored one of whitespace only, which extract_corpus and
    the CSV reader refuse: no log line, predictions.csv row or --subset id=... could name it."""
    from w2v2ser.store import StoreWriter

    wav = str(write_audio(tmp_path / "a.wav"))
    utterances = [Utterance(id="fine", path=wav, speaker="s", label="angry"),
                  Utterance(id=uid, path=wav, speaker="s", label="sad")]
    spec = build_extractor("spectrogram").feature_spec()
    with StoreWriter(tmp_path / "w.zarr") as writer:
        with pytest.raises(StoreError, match=rf"plan: utterances\[1\] \(path '{wav}'\) has the blank id"):
            writer.plan(utterances, num_samples=[16000, 16000], features=[spec], capacities={spec.name: [100, 100]})
        assert writer.plan(utterances[:1], num_samples=[16000], features=[spec], capacities={spec.name: [100]}) == [0]
    assert [u.id for u in open_store(tmp_path / "w.zarr", allow_incomplete=True).list_utterances(status=None)] == \
        ["fine"]


@pytest.mark.parametrize("raw, expected", [("../audio/a.wav", "audio/a.wav"), ("sub/../../audio/a.wav", "audio/a.wav"),
                                           ("../../outside.wav", "../outside.wav")])
def test_relative_paths_leaving_the_manifest_folder_start_there(tmp_path, raw, expected):
    """`manifests/train.csv` listing `../audio/a.wav` is a common layout; it was refused for the whole
    manifest. A path that names no audio file is a failure of that file at extraction, not of the run."""
    (tmp_path / "manifests").mkdir()
    path = _manifest(tmp_path / "manifests", f"path,label,speaker\n{raw},angry,s1\n")
    (utterance,) = read_csv_manifest(path).utterances
    assert utterance.path == os.path.normpath(tmp_path / expected)


def test_colliding_stems_outside_the_manifest_folder_get_ids_below_their_common_folder(tmp_path):
    (tmp_path / "manifests").mkdir()
    path = _manifest(tmp_path / "manifests", "path,label,speaker\n../audio/A1/x.wav,angry,s1\n"
                     "../audio/A2/x.wav,sad,s2\n../audio/A2/y.wav,sad,s2\n")
    assert [u.id for u in read_csv_manifest(path).utterances] == ["A1/x", "A2/x", "y"]


@pytest.mark.parametrize("header,hint", [
    ("file,label,speaker", None),
    ("path,lable,speaker", "Did you mean 'lable'"),
    ("path,label,spekaer", "Did you mean 'spekaer'"),
    ("Path,Label,Speaker", "Did you mean 'Path'"),
])
def test_wrong_columns_name_the_missing_column(tmp_path, header, hint):
    path = _manifest(tmp_path, f"{header}\na.wav,angry,s1\n")
    with pytest.raises(ManifestError, match=r"line 1, column '(path|label|speaker)'.*required column") as error:
        read_csv_manifest(path)
    if hint:
        assert hint in str(error.value)


@pytest.mark.parametrize("column", ["Split", "ID", "Session", "GENDER"])
def test_an_optional_column_in_another_case_is_refused_not_kept_as_an_extra(tmp_path, column):
    """Found by a corpus trial: a 'Split' column landed in Utterance.extra without a word, so
    `train --protocol csv` fell back to speaker folds and tested every utterance, not the user's split."""
    path = _manifest(tmp_path, f"path,label,speaker,{column}\na.wav,angry,s1,train\n")
    with pytest.raises(ManifestError, match=rf"line 1, column '{column}': this column differs from the optional "
                                            rf"column '{column.lower()}' only in case.*Rename it to"):
        read_csv_manifest(path)


def test_a_path_starting_with_a_tilde_is_in_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = _manifest(tmp_path, "path,label,speaker\n~/data/a.wav,angry,s1\n")
    (utterance,) = read_csv_manifest(path).utterances
    assert utterance.path == str(tmp_path / "home" / "data" / "a.wav")


def test_an_unknown_gender_is_an_empty_one(tmp_path):
    """Found by a corpus trial: `Unknown` (MSP-Podcast's spelling) refused the whole manifest."""
    path = _manifest(tmp_path, "path,label,speaker,gender\na.wav,angry,s1,Unknown\nb.wav,sad,s2,F\nc.wav,sad,s3,\n")
    assert [u.gender for u in read_csv_manifest(path).utterances] == ["", "female", ""]
    with pytest.raises(ManifestError, match=r"line 2, column 'gender': unknown gender 'robot'"):
        read_csv_manifest(_manifest(tmp_path, "path,label,speaker,gender\na.wav,angry,s1,robot\n"))


def test_columns_without_a_name_are_ignored(tmp_path):
    """Excel writes 'a;b;c;;' when cells right of the table were ever touched: two such columns refused
    the manifest ('column appears more than once'). pandas' to_csv writes its index as one."""
    text = ("\ufeffpath;label;speaker;note;;\r\na.wav;angry;s1;\"x; y\";;\r\nb.wav;sad;s2;;\r\n;;;;;\r\n"
            "c.wav;sad;s2;;;;\r\n")
    manifest = read_csv_manifest(_manifest(tmp_path, text))
    assert [(u.id, u.label, u.extra) for u in manifest.utterances] == [
        ("a", "angry", {"note": "x; y"}), ("b", "sad", {"note": ""}), ("c", "sad", {"note": ""})]
    pandas = read_csv_manifest(_manifest(tmp_path, ",path,label,speaker\n0,a.wav,angry,1\n1,b.wav,sad,2\n"))
    assert [(u.id, u.speaker, u.extra) for u in pandas.utterances] == [("a", "1", {}), ("b", "2", {})]
    with pytest.raises(ManifestError, match=r"line 2: row has a different number of fields"):
        read_csv_manifest(_manifest(tmp_path, "path,label,speaker\na.wav,angry,s1,,loud\n"))



def test_lines_of_spaces_are_blank_lines(tmp_path):
    """A line of spaces or a tab, as hand-edited files often end, refused the manifest: "row has a
    different number of fields than the header"."""
    manifest = read_csv_manifest(_manifest(tmp_path, "path,label,speaker\na.wav,angry,s1\n   \n\t\nb.wav,sad,s2\n"))
    assert [u.id for u in manifest.utterances] == ["a", "b"]

@pytest.mark.parametrize("text", [
    "sep=;\r\npath;label;speaker;notes, misc\r\na.wav;angry;s1;x\r\n",  # Excel's separator line
    "path;label;speaker;notes, misc\na.wav;angry;s1;x\n",  # a comma inside a column name
])
def test_the_separator_is_the_one_that_gives_the_required_columns(tmp_path, text):
    """'sep=;' was read as the header ('path' is missing, header ['sep=', '']), and a semicolon file
    whose header holds a comma was split on commas."""
    (utterance,) = read_csv_manifest(_manifest(tmp_path, text)).utterances
    assert (utterance.label, utterance.speaker, utterance.extra) == ("angry", "s1", {"notes, misc": "x"})
    with pytest.raises(ManifestError, match=r"line 3, column 'speaker': speaker is empty"):
        read_csv_manifest(_manifest(tmp_path, "sep=,\npath,label,speaker\na.wav,angry,\n"))


def test_utf16_manifests_are_read_and_other_encodings_name_the_line(tmp_path):
    """Excel's 'Unicode Text' (UTF-16 with a BOM, tab-separated) was refused as 'not UTF-8'; a
    Windows-1252 file was refused with a byte position instead of a line."""
    path = tmp_path / "m.txt"
    path.write_text("path\tlabel\tspeaker\r\nété.wav\tangry\ts1\r\n", encoding="utf-16")
    (utterance,) = read_csv_manifest(path).utterances
    assert (Path(utterance.path).name, utterance.label) == ("été.wav", "angry")
    path.write_text("path,label,speaker\na.wav,angry,s1\nété.wav,sad,s1\n", encoding="cp1252")
    with pytest.raises(ManifestError, match=r"not UTF-8 text: line 3 holds byte 0xe9.*iconv -f cp1252"):
        read_csv_manifest(path)


@pytest.mark.parametrize("sep,bom,newline", [(",", "", "\n"), ("\t", "", "\n"), (";", "\ufeff", "\r\n"),
                                              (",", "\ufeff", "\r\n")])
def test_tab_and_semicolon_separated_manifests_read_like_csv(tmp_path, sep, bom, newline):
    """A TSV (Common Voice's lists) or a spreadsheet's semicolon CSV was refused: 'required column
    path is missing (header: ['path;label;speaker'])'. A value may still hold the other separators."""
    rows = [["path", "label", "speaker", "note"], ["a.wav", "angry", "s1", "loud, short"], ["b.wav", "sad", "s2", "x;y"]]
    quoted = [[f'"{v}"' if sep in v else v for v in row] for row in rows]  # as a spreadsheet writes them
    (tmp_path / "m.csv").write_text(bom + newline.join(sep.join(r) for r in quoted) + newline, newline="")
    manifest = read_csv_manifest(tmp_path / "m.csv")
    assert [(u.id, u.label, u.speaker) for u in manifest.utterances] == [("a", "angry", "s1"), ("b", "sad", "s2")]
    assert [u.extra["note"] for u in manifest.utterances] == ["loud, short", "x;y"]


def test_row_with_missing_fields_is_named(tmp_path):
    path = _manifest(tmp_path, "path,label,speaker\na.wav,angry\n")
    with pytest.raises(ManifestError, match=r"line 2.*different number of fields"):
        read_csv_manifest(path)


def test_missing_audio_file_becomes_one_failure_row(tmp_path):
    write_audio(tmp_path / "a.wav")
    path = _manifest(tmp_path, "path,label,speaker\na.wav,angry,s1\nnot_there.wav,sad,s2\n")
    summary = extract_corpus(read_csv_manifest(path).utterances, tmp_path / "s.zarr",
                             extractors=[build_extractor("spectrogram")], progress=False)
    assert summary.complete
    assert [(uid, reason.split(" does not exist")[0]) for uid, _, reason in summary.failed] == [
        ("not_there", f"Audio file {tmp_path / 'not_there.wav'}")]
    assert "Check the path" in summary.failed[0][2]
    assert [r.id for r in open_store(tmp_path / "s.zarr").list_utterances()] == ["a"]


def test_a_nul_byte_in_a_path_given_to_extract_corpus_is_a_failure_row_not_a_crash(tmp_path):
    """os.stat raised ValueError for it, which ended the whole extraction with a traceback."""
    write_audio(tmp_path / "a.wav")
    utterances = [Utterance(id=uid, path=str(tmp_path / name), speaker="s1", label="angry")
                  for uid, name in (("a", "a.wav"), ("b", "b\0.wav"))]
    summary = extract_corpus(utterances, tmp_path / "s.zarr", extractors=[build_extractor("spectrogram")],
                             progress=False)
    assert [(uid, "holds a NUL character" in reason) for uid, _, reason in summary.failed] == [("b", True)]
    assert [r.id for r in open_store(tmp_path / "s.zarr").list_utterances()] == ["a"]


def test_a_nul_byte_in_a_manifest_is_refused_with_its_line(tmp_path):
    """A NUL byte in a path raised ValueError from os.stat (a traceback); in an id or label the store
    cut the string there ('b\\0' read back as 'b')."""
    path = tmp_path / "manifest.csv"
    path.write_bytes(b"path,label,speaker\na.wav,angry,s1\nb\x00.wav,sad,s2\n")
    with pytest.raises(ManifestError, match=r"line 3: the line holds a NUL byte"):
        read_csv_manifest(path)
    path.write_bytes("path,label,speaker\na.wav,angry,s1\n".encode("utf-16-le"))  # UTF-16 without its BOM
    with pytest.raises(ManifestError, match=r"line 1: .*UTF-16 text without its byte order mark"):
        read_csv_manifest(path)
    # Found by a code review: with an accent the UTF-8 check failed first, advising to convert from
    # Windows-1252, which garbles a UTF-16 file.
    path.write_bytes("path,label,speaker\na.wav,col\u00e8re,s1\n".encode("utf-16-le"))
    with pytest.raises(ManifestError, match=r"line 1: .*UTF-16 text without its byte order mark") as excinfo:
        read_csv_manifest(path)
    assert "cp1252" not in str(excinfo.value) and "iconv -f utf-16le" in str(excinfo.value)
    # Found by a later review: big-endian UTF-16 (its first byte NUL) was told utf-16le, which garbles it
    path.write_bytes("path,label,speaker\na.wav,col\u00e8re,s1\n".encode("utf-16-be"))
    with pytest.raises(ManifestError, match=r"line 1: .*iconv -f utf-16be -t utf-8"):
        read_csv_manifest(path)


def test_a_missing_file_whose_path_holds_invisible_characters_says_so(tmp_path):
    """'a.wav' with a byte order mark or zero-width space (files joined with `cat`, a pasted path)
    printed like the path of the file that exists."""
    write_audio(tmp_path / "a.wav")
    write_audio(tmp_path / "b.wav")
    path = _manifest(tmp_path, "path,label,speaker\n\ufeffa.wav,angry,s1\nb\u200b.wav,sad,s2\n")
    summary = extract_corpus(read_csv_manifest(path).utterances, tmp_path / "s.zarr",
                             extractors=[build_extractor("spectrogram")], progress=False)
    reasons = [reason for _, _, reason in summary.failed]
    assert len(reasons) == 2 and "invisible characters (U+FEFF" in reasons[0] and "(U+200B" in reasons[1], reasons


def test_a_zero_width_non_joiner_in_a_path_is_not_called_invisible(tmp_path):
    """Found by a code review: the path hint dropped every format character, as labels then did; a
    zero-width non-joiner changes how Persian letters are drawn, so it is seen, and labels keep it. The
    file that exists without it is still named (a later review: that hint was lost)."""
    write_audio(tmp_path / "\u0645\u06cc\u062e\u0648\u0627\u0647\u0645.wav")
    path = _manifest(tmp_path, "path,label,speaker\n\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.wav,angry,s1\n")
    summary = extract_corpus(read_csv_manifest(path).utterances, tmp_path / "s.zarr",
                             extractors=[build_extractor("spectrogram")], progress=False)
    ((_, _, reason),) = summary.failed
    assert "does not exist" in reason and "invisible" not in reason, reason
    assert "without the zero-width (non-)joiner U+200C exists" in reason, reason


def test_a_missing_file_given_as_a_windows_path_says_so(tmp_path):
    """'C:\\corpus\\a.wav' of a manifest written on Windows was joined to the manifest's folder and
    reported as a missing relative path."""
    write_audio(tmp_path / "ok.wav")
    path = _manifest(tmp_path, "path,label,speaker\nok.wav,angry,s1\nC:\\corpus\\a.wav,sad,s1\n"
                     "D:/corpus/b.wav,sad,s2\n\\\\server\\share\\c.wav,angry,s2\n")
    summary = extract_corpus(read_csv_manifest(path).utterances, tmp_path / "s.zarr",
                             extractors=[build_extractor("spectrogram")], progress=False)
    reasons = [reason for _, _, reason in summary.failed]
    assert len(reasons) == 3 and all("gives a Windows path" in r for r in reasons), reasons


def test_a_wav_whose_header_declares_a_rate_of_1_hz_is_a_failure_row_not_a_crash(tmp_path):
    """eGeMAPS' hop at 1 Hz is 0 samples: planning the store raised ZeroDivisionError, a traceback
    that named no file, for the whole extraction."""
    import struct

    write_audio(tmp_path / "a.wav")
    damaged = bytearray(write_audio(tmp_path / "b.wav", sample_rate=4000).read_bytes())
    damaged[24:32] = struct.pack("<II", 1, 2)  # fmt chunk: sample rate, byte rate
    (tmp_path / "b.wav").write_bytes(bytes(damaged))
    path = _manifest(tmp_path, "path,label,speaker\na.wav,angry,s1\nb.wav,sad,s2\n")
    summary = extract_corpus(read_csv_manifest(path).utterances, tmp_path / "s.zarr",
                             extractors=[build_extractor("egemaps"), build_extractor("spectrogram")], progress=False)
    assert [(uid, "sample rate of 1 Hz" in reason) for uid, _, reason in summary.failed] == [("b", True)]
    assert [r.id for r in open_store(tmp_path / "s.zarr").list_utterances()] == ["a"]
    # Found by a code review: `ffmpeg -ar 16000` trusts the damaged rate and resamples from it.
    reason = summary.failed[0][2]
    assert "asetrate=TRUE_RATE" in reason and "-ar 16000" not in reason


def test_single_utterance_and_constant_speakers_give_finite_statistics(tmp_path):
    """A speaker with one utterance (and one of pure silence: zero variance) must not produce NaN."""
    rows = ["id,path,label,speaker"]
    for k in range(4):
        write_audio(tmp_path / f"m{k}.wav", duration=0.5 + 0.1 * k, seed=k)
        rows.append(f"m{k},m{k}.wav,angry,many")
    write_audio(tmp_path / "lone.wav", duration=0.6, seed=9)
    rows.append("lone,lone.wav,sad,lone_speaker")
    write_audio(tmp_path / "quiet.wav", data=np.zeros(9_600, dtype=np.float32))
    rows.append("quiet,quiet.wav,sad,silent_speaker")
    path = _manifest(tmp_path, "\n".join(rows) + "\n")
    extractors = [build_extractor("spectrogram"), build_extractor("egemaps")]
    summary = extract_corpus(read_csv_manifest(path).utterances, tmp_path / "s.zarr", extractors=extractors,
                             progress=False)
    assert summary.complete and not summary.failed
    store = open_store(tmp_path / "s.zarr")
    for feature in ("spectrogram", "egemaps"):
        for speaker in ("lone_speaker", "silent_speaker", "many"):
            stats = store.compose_statistics(feature, speakers=[speaker])
            assert np.isfinite(stats.mean).all() and np.isfinite(stats.variance).all(), (feature, speaker)
            assert (stats.variance >= 0).all()
        silent = store.compose_statistics("spectrogram", speakers=["silent_speaker"])
        assert not silent.variance.any()  # exactly zero, not NaN
        assert np.isfinite(store.compose_statistics(feature).variance).all()
    # Stage 2 normalisation floors a zero std instead of dividing by it.
    from w2v2ser.train import build_normaliser, resolve_selection

    selection = resolve_selection("spectrogram", specs=store.features, alias="s")
    norm = build_normaliser(store, selection, "speaker", train_speakers=store.speakers(), speakers=store.speakers())
    for speaker in store.speakers():
        record = next(r for r in store.list_utterances() if r.speaker == speaker)
        out = norm.apply(store.read_utterance(record.id, "spectrogram"), speaker)
        assert np.isfinite(out).all(), speaker


def test_labels_outside_the_protocol_are_dropped_with_a_count(caplog):
    """Stage 2 keeps only labels of the protocol's classes and logs how many of which it dropped."""
    import logging

    from w2v2ser.train import get_protocol
    from w2v2ser.train._protocols import select_utterances

    class Record:
        def __init__(self, label: str) -> None:
            self.label = label

    protocol = get_protocol("iemocap")
    records = [Record(x) for x in ["ang", "neu", "xxx", "xxx", "fru", "exc", "sad"]]
    with caplog.at_level(logging.WARNING):
        kept, labels, classes = select_utterances(protocol, records)
    assert len(kept) == 4 and len(labels) == 4
    assert "dropped 3 utterances" in caplog.text and "'xxx': 2" in caplog.text


def test_a_repeated_header_row_is_skipped_and_reported(tmp_path):
    """Two manifests joined with `cat` (the second with its BOM) left a row 'path,label,speaker': an
    utterance of a missing file 'path' labelled 'label'. It is now skipped, with a reason the store keeps."""
    text = "path,label,speaker\na.wav,angry,s1\n\ufeffPath,label,speaker\nb.wav,sad,s2\n"
    manifest = read_csv_manifest(_manifest(tmp_path, text))
    assert [u.id for u in manifest.utterances] == ["a", "b"]
    assert manifest.problems == [(f"{tmp_path / 'manifest.csv'}, line 3",
                                  "this row repeats the header (manifests joined with `cat`?), so it was skipped; "
                                  "delete it")]


def test_training_on_a_store_whose_every_file_failed_says_so(tmp_path, capsys):
    """Every file of a manifest failed extraction (Windows paths, say): train answered "protocol 'csv'
    kept no utterance: store labels [] match none of its classes []; pick the right --protocol"."""
    from w2v2ser._cli import main

    (tmp_path / "notes.wav").write_text("not audio")
    path = _manifest(tmp_path, "path,label,speaker\nsub\\a.wav,angry,s1\nnotes.wav,sad,s2\n")
    store = str(tmp_path / "s.zarr")
    assert main(["extract", "csv", str(path), "--store", store, "--features", "spectrogram", "--no-progress"]) == 1
    capsys.readouterr()
    assert main(["train", store, "--features", "spectrogram", "--seeds", "1", "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (f"store {store} holds no extracted utterance with spectrogram frames, so there is nothing to train on; 2 "
            f"utterance(s) failed extraction: `w2v2ser store info {store}` gives the reasons") in err
    assert "pick the right --protocol" not in err and "Traceback" not in err


def test_an_extraction_in_which_every_file_failed_exits_1(tmp_path, capsys):
    """Every path of a manifest missed: extract printed "... 2 failed ... complete" and exited 0, so a
    job script went on to train. Failures amid extracted files still exit 0, also when resumed."""
    from w2v2ser._cli import main

    path = _manifest(tmp_path, "path,label,speaker\nmissing/a.wav,angry,s1\nmissing/b.wav,sad,s2\n")
    store = str(tmp_path / "s.zarr")
    command = ["extract", "csv", str(path), "--store", store, "--features", "spectrogram", "--no-progress"]
    assert main(command) == 1
    err = capsys.readouterr().err
    assert (f"w2v2ser: error: nothing could be extracted: the store holds no utterance with spectrogram frames "
            f"and 2 utterance(s) failed; `w2v2ser store info {store}` lists the reasons") in err, err
    assert "Traceback" not in err
    assert main(command) == 1  # the rerun: still nothing
    capsys.readouterr()
    (tmp_path / "missing").mkdir()
    write_audio(tmp_path / "missing" / "a.wav")
    assert main(command) == 0  # one extracted, one failed: bad input does not stop a run
    assert "nothing could be extracted" not in capsys.readouterr().err
    assert main(command) == 0  # resumed: the earlier run's work counts


@pytest.mark.parametrize("cell, shown", [('"a\nb"', r"'a\\nb'"), ('"a\tb"', r"'a\\tb'"), ("a\x1bb", r"'a\\x1bb'")])
def test_an_id_holding_a_control_character_is_refused_with_its_line(tmp_path, cell, shown):
    """An id with a line break (a quoted cell spanning two lines), tab or escape was stored as given:
    logs, predictions.csv and `--subset id=` could not show or match it."""
    write_audio(tmp_path / "a.wav")
    path = _manifest(tmp_path, f"id,path,label,speaker\nok,a.wav,sad,s1\n{cell},a.wav,angry,s1\n")
    with pytest.raises(ManifestError, match=rf"line \d, column 'id': utterance id {shown} holds the control "
                       r"character.*Write the id without line breaks"):
        read_csv_manifest(path)


def test_a_row_spanning_lines_is_named_by_the_line_it_starts_on(tmp_path):
    """Review s63: the error named the record's last line ("line 4" for a row starting on line 3)."""
    write_audio(tmp_path / "a.wav")
    path = _manifest(tmp_path, 'id,path,label,speaker\nok,a.wav,sad,s1\n"a\nb",a.wav,angry,s1\n')
    with pytest.raises(ManifestError, match=r", line 3, column 'id'"):
        read_csv_manifest(path)
    # A later row after it is still named by its own line.
    path = _manifest(tmp_path, 'id,path,label,speaker\nok,a.wav,"sad\r\nvery",s1\nok,a.wav,sad,s1\n')
    with pytest.raises(ManifestError, match=r", line 4, column 'id': utterance id 'ok' is also used on line 2"):
        read_csv_manifest(path)


@pytest.mark.parametrize("uid", ["c\u200bd", "\u2060cd", "cd\u00ad"])
def test_an_id_holding_an_invisible_character_is_refused(tmp_path, uid):
    """Review s63: an id with a zero-width space (pasted from a web page) was stored as given, and
    `--subset id=cd` could not match it."""
    write_audio(tmp_path / "a.wav")
    path = _manifest(tmp_path, f"id,path,label,speaker\nok,a.wav,sad,s1\n{uid},a.wav,angry,s1\n")
    with pytest.raises(ManifestError, match=rf"line 3, column 'id': utterance id '.*' holds the invisible character "
                       rf"U\+{ord(next(c for c in uid if c not in 'cd')):04X}.*Delete it from the id"):
        read_csv_manifest(path)


def test_an_id_derived_from_a_path_holding_a_line_break_is_refused(tmp_path):
    path = _manifest(tmp_path, 'path,label,speaker\n"a\nb.wav",angry,s1\n')
    with pytest.raises(ManifestError, match=r"column 'path': the utterance id 'a\\nb' derived from the path.*"
                       r"Give the row an 'id'"):
        read_csv_manifest(path)


@pytest.mark.parametrize("deep", [Path("a.wav"), Path("Session1", "sentences", "wav", "dlg", "a.wav")])
def test_the_symlinked_manifest_hint_reaches_deep_files_and_links_made_later(tmp_path, deep):
    """Review s63: the hint looked for the link in the file's 4 nearest folders only (an IEMOCAP-like
    Session1/sentences/wav/<dialog>/x.wav got none), and it cached each folder's links for the whole
    process, so a link made after a first failure (a notebook session) was never seen."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "work").mkdir()
    write_audio(tmp_path / "corpus" / deep)
    text = f"path,label,speaker\n{deep.as_posix()},angry,s1\n"
    real = _manifest(tmp_path / "corpus", text)
    plain = tmp_path / "work" / "plain.csv"  # not a link: the file is plainly missing
    plain.write_text(text, encoding="utf-8")

    def reason_of(manifest):
        summary = extract_corpus(read_csv_manifest(manifest).utterances, tmp_path / "s.zarr",
                                 extractors=[build_extractor("spectrogram")], progress=False)
        ((_, _, reason),) = summary.failed
        return reason

    assert "symbolic link" not in reason_of(plain)
    link = tmp_path / "work" / "list.csv"
    link.symlink_to(real)
    reason = reason_of(link)
    assert f"The manifest {link} is a symbolic link to {real}" in reason, reason
    assert str(tmp_path / "corpus" / deep) in reason


def test_a_missing_file_beside_the_target_of_a_symlinked_manifest_says_so(tmp_path):
    """Leftover: a manifest named through a symbolic link resolves relative paths against the link's
    folder (README: the CSV's folder, as named); a file found only beside the link's target failed as
    plainly missing."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "work").mkdir()
    write_audio(tmp_path / "corpus" / "a.wav")
    real = _manifest(tmp_path / "corpus", "path,label,speaker\na.wav,angry,s1\n")
    link = tmp_path / "work" / "list.csv"
    link.symlink_to(real)
    (utterance,) = read_csv_manifest(link).utterances
    assert utterance.path == str(tmp_path / "work" / "a.wav")  # the link's folder, as the README says
    summary = extract_corpus([utterance], tmp_path / "s.zarr", extractors=[build_extractor("spectrogram")],
                             progress=False)
    (reason,) = [reason for _, _, reason in summary.failed]
    assert "does not exist" in reason and f"The manifest {link} is a symbolic link to {real}" in reason, reason
    assert str(tmp_path / "corpus" / "a.wav") in reason and "Name the manifest by its real path" in reason


def test_the_conversion_command_for_a_manifest_whose_path_has_a_space_is_quoted(tmp_path):
    """`iconv -f cp1252 -t utf-8 /my data/list.csv > utf8.csv`, pasted, converted two files that do not exist."""
    import re
    import shlex

    (tmp_path / "my data").mkdir()
    path = tmp_path / "my data" / "it's.csv"
    path.write_bytes("path,label,speaker\ncafé.wav,angry,s1\n".encode("cp1252"))
    with pytest.raises(ManifestError) as refused:
        read_csv_manifest(path)
    (command,) = re.findall(r"`(iconv [^`]*)`", str(refused.value))
    assert shlex.split(command)[:5] == ["iconv", "-f", "cp1252", "-t", "utf-8"] and shlex.split(command)[5] == str(path)
