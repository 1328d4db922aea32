"""Corpus readers: the real RAVDESS copy, a synthetic IEMOCAP tree, CSV manifests."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from fixtures_audio import build_iemocap_tree, build_ravdess_tree, write_audio

from w2v2ser.extract import (
    CorpusKind,
    Manifest,
    ManifestError,
    read_corpus,
    read_csv_manifest,
    read_iemocap,
    read_ravdess,
)
from w2v2ser.store import Utterance

RAVDESS = Path("/work/shared/data/ravdess")


# ---------------------------------------------------------------- RAVDESS (real copy)

def _expected_ravdess_counts() -> Counter:
    """Label counts from the naming rules, not from the files."""
    counts: Counter = Counter()
    speech_emotions = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    song_emotions = speech_emotions[:6]
    for actor in range(1, 25):
        for channel, emotions in (("speech", speech_emotions), ("song", song_emotions)):
            if channel == "song" and actor == 18:
                continue
            for emotion in emotions:
                intensities = 1 if emotion == "neutral" else 2
                counts[emotion] += intensities * 2 * 2  # x statements x repetitions
    return counts


@pytest.mark.skipif(not RAVDESS.is_dir(), reason="real RAVDESS copy not available")
def test_real_ravdess():
    manifest = read_corpus("ravdess", RAVDESS)
    utterances = manifest.utterances
    assert manifest.problems == [] and manifest.corpus == "ravdess"
    expected = _expected_ravdess_counts()
    assert sum(expected.values()) == 2452
    assert len(utterances) == 2452
    assert Counter(u.label for u in utterances) == expected
    assert Counter(u.label for u in utterances) == {
        "neutral": 188, "calm": 376, "happy": 376, "sad": 376, "angry": 376,
        "fearful": 376, "disgust": 192, "surprised": 192,
    }
    assert len({u.speaker for u in utterances}) == 24
    assert len({u.id for u in utterances}) == 2452
    assert Counter(u.extra["vocal_channel"] for u in utterances) == {"speech": 1440, "song": 1012}
    assert Counter(u.extra["intensity"] for u in utterances) == {"normal": 1320, "strong": 1132}
    # Odd actors male (12 x 104 files); even female, actor 18 without song (11 x 104 + 60).
    assert Counter(u.gender for u in utterances) == {"male": 1248, "female": 1204}
    by_speaker = Counter(u.speaker for u in utterances)
    assert by_speaker["Actor_18"] == 60 and by_speaker["Actor_01"] == 104
    first = next(u for u in utterances if u.id == "03-01-05-02-01-02-12")
    assert first.speaker == "Actor_12" and first.label == "angry" and first.gender == "female"
    assert first.path == str(RAVDESS / "speech" / "Actor_12" / "03-01-05-02-01-02-12.flac")
    assert dict(first.extra) == {"vocal_channel": "speech", "intensity": "strong", "statement": "01",
                                 "repetition": "02", "modality": "audio-only"}
    assert first.session == "" and first.split == "" and first.corpus == "ravdess"


# ---------------------------------------------------------------- RAVDESS (synthetic)

def test_ravdess_skips_and_reports_bad_names(tmp_path):
    files = build_ravdess_tree(tmp_path, actors=(3, 4), emotions=(1, 8), song=False)
    actor = tmp_path / "speech" / "Actor_03"
    write_audio(actor / "03-01-09-01-01-01-03.wav", duration=0.05)    # emotion 09
    write_audio(actor / "recording.wav", duration=0.05)                # not the convention
    write_audio(actor / "03-01-01-01-01-01-05.wav", duration=0.05)     # actor 05 in Actor_03
    write_audio(tmp_path / "song" / "Actor_03" / "03-01-01-01-01-02-03.wav", duration=0.05)  # speech under song/
    (actor / "README.txt").write_text("not audio")                     # ignored silently
    manifest = read_ravdess(tmp_path)
    assert len(manifest) == len(files) == 2 * (1 + 2)
    reasons = {Path(p).name: r for p, r in manifest.problems}
    assert set(reasons) == {"03-01-09-01-01-01-03.wav", "recording.wav", "03-01-01-01-01-01-05.wav",
                            "03-01-01-01-01-02-03.wav"}
    assert "emotion 09" in reasons["03-01-09-01-01-01-03.wav"]
    assert "MM-VC-EE-II-SS-RR-AA" in reasons["recording.wav"]
    assert all(r.endswith("rename the file or move it out of the corpus folder") for r in reasons.values())
    assert "Actor_03" in reasons["03-01-01-01-01-01-05.wav"]
    assert "song/" in reasons["03-01-01-01-01-02-03.wav"]
    genders = {u.speaker: u.gender for u in manifest.utterances}
    assert genders == {"Actor_03": "male", "Actor_04": "female"}
    assert {u.label for u in manifest.utterances} == {"neutral", "surprised"}


def test_the_repr_of_a_manifest_sums_it_up(tmp_path):
    """Found by a notebook session: a cell ending in `manifest` printed every utterance with its extra
    fields (240 files of 4 actors filled the screen; RAVDESS has 2,452)."""
    build_ravdess_tree(tmp_path, actors=(3, 4), emotions=(1, 8), song=False)
    write_audio(tmp_path / "speech" / "Actor_03" / "recording.wav", duration=0.05)
    manifest = read_ravdess(tmp_path)
    assert repr(manifest) == (f"Manifest(corpus='ravdess', source={manifest.source!r}, utterances=6, speakers=2, "
                              f"problems=1)")


def test_ravdess_original_zip_layout(tmp_path):
    write_audio(tmp_path / "Actor_07" / "03-01-02-02-02-01-07.wav", duration=0.05)
    manifest = read_ravdess(tmp_path)
    (utterance,) = manifest.utterances
    assert utterance.label == "calm" and utterance.extra["statement"] == "02"
    # One actor's folder passed as the corpus (new audio of one actor) said "No RAVDESS audio found".
    assert [u.id for u in read_ravdess(tmp_path / "Actor_07").utterances] == [utterance.id]


def test_ravdess_zips_unpacked_into_folders_of_their_own_name(tmp_path):
    """Found by a corpus trial: `unzip -d` and file managers put each zip's Actor_NN folders in a
    folder named after it, and the reader said "No RAVDESS audio found"; an .mp3 copy was ignored."""
    write_audio(tmp_path / "Audio_Speech_Actors_01-24" / "Actor_07" / "03-01-02-02-02-01-07.wav", duration=0.05)
    write_audio(tmp_path / "Audio_Song_Actors_01-24" / "Actor_08" / "03-02-03-01-01-01-08.wav", duration=0.05)
    write_audio(tmp_path / "Audio_Song_Actors_01-24" / "Actor_08" / "03-02-04-01-01-01-08.mp3", duration=0.05,
                format="MP3", subtype="MPEG_LAYER_III")
    manifest = read_ravdess(tmp_path)
    assert sorted(u.id for u in manifest.utterances) == ["03-01-02-02-02-01-07", "03-02-03-01-01-01-08"]
    ((path, reason),) = manifest.problems
    assert path.endswith(".mp3") and "not .mp3; convert it" in reason


def test_a_folder_of_the_ravdess_root_that_cannot_be_entered_is_passed_over(tmp_path, monkeypatch):
    """Review: reading every folder of the root for unpacked zips stopped the whole read at one the
    user may not enter (lost+found at the root of a data volume)."""
    write_audio(tmp_path / "Actor_07" / "03-01-02-02-02-01-07.wav", duration=0.05)
    (tmp_path / "lost+found").mkdir()
    iterdir = Path.iterdir

    def guarded(self):
        if self.name == "lost+found":
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", guarded)
    assert [u.id for u in read_ravdess(tmp_path).utterances] == ["03-01-02-02-02-01-07"]


@pytest.mark.parametrize("kind", ["ravdess", "iemocap"])
def test_a_corpus_path_with_dot_dot_gives_the_same_file_paths(tmp_path, kind):
    """`extract ravdess ../data` recorded /work/run/../data/... paths: resuming from another folder
    (or with the absolute path) then took every utterance for a moved file and rewrote its path."""
    root = tmp_path / "data"
    if kind == "ravdess":
        write_audio(root / "Actor_07" / "03-01-02-02-02-01-07.wav", duration=0.05)
    else:
        build_iemocap_tree(root)
    (tmp_path / "run").mkdir()
    direct = [u.path for u in read_corpus(kind, root).utterances]
    assert direct and [u.path for u in read_corpus(kind, tmp_path / "run" / ".." / "data").utterances] == direct
    assert all(".." not in Path(path).parts for path in direct)


def test_ravdess_empty_or_missing_folder(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_ravdess(tmp_path / "nope")
    (tmp_path / "ravdess.zip").write_bytes(b"PK")  # a file is not said to be missing
    for kind in ("ravdess", "iemocap"):
        with pytest.raises(ManifestError, match=r"folder .*ravdess\.zip is a file\. Pass the folder holding"):
            read_corpus(kind, tmp_path / "ravdess.zip")
    with pytest.raises(ManifestError, match="No RAVDESS audio found"):
        read_ravdess(tmp_path)


# ---------------------------------------------------------------- IEMOCAP (synthetic tree)

def test_iemocap_synthetic_tree(tmp_path):
    expected = build_iemocap_tree(tmp_path, missing_audio=("Ses02M_impro01_F001",))
    manifest = read_corpus(CorpusKind.IEMOCAP, tmp_path)
    assert manifest.corpus == "iemocap"
    got = {u.id: u for u in manifest.utterances}
    with_audio = {k for k, v in expected.items() if v["has_audio"] == "True"}
    assert set(got) == with_audio and len(got) == 2 * 2 * 4 - 1
    for uid, utterance in got.items():
        want = expected[uid]
        assert (utterance.label, utterance.speaker, utterance.session, utterance.gender) == (
            want["label"], want["speaker"], want["session"], want["gender"])
        assert utterance.extra["dialog"] == want["dialog"]
        assert Path(utterance.path) == tmp_path / want["session"] / "sentences" / "wav" / want["dialog"] / f"{uid}.wav"
    # The last id field's letter is the speaker, not the dialog's lead actor.
    assert got["Ses01F_impro01_M000"].speaker == "Ses01M"
    assert got["Ses01F_impro01_F000"].speaker == "Ses01F"
    assert got["Ses02M_script01_1_F000"].speaker == "Ses02F"
    assert got["Ses02M_script01_1_F000"].extra["method"] == "scripted"
    assert got["Ses01F_impro01_F000"].extra["valence"] == "2.5000"
    assert {u.label for u in got.values()} == {"neu", "ang", "xxx", "exc"}
    assert len(manifest.problems) == 1
    path, reason = manifest.problems[0]
    assert path.endswith("Ses02M_impro01_F001.wav") and "audio missing" in reason


def test_iemocap_reports_malformed_lines(tmp_path):
    build_iemocap_tree(tmp_path, sessions=(1,), dialogs=("impro02",))
    evaluation = tmp_path / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro02.txt"
    with open(evaluation, "a", encoding="utf-8") as f:
        f.write("[1.0 - 2.0]\tSes01F_impro02_F009\tneu\n")          # no V/A/D
        f.write("[1.0 - 2.0]\tSes03F_impro02_F009\tneu\t[1, 2, 3]\n")  # wrong session
    (evaluation.parent / "._Ses01F_impro02.txt").write_bytes(b"\x00\x05mac")
    manifest = read_iemocap(tmp_path)
    assert len(manifest) == 4
    reasons = [r for _, r in manifest.problems]
    assert any("not understood" in r for r in reasons)
    assert any("listed under Session1" in r for r in reasons)


def test_iemocap_reads_indented_and_bom_lines_and_reports_what_it_cannot_label(tmp_path):
    """An indented utterance line, or a file saved with a BOM whose first line is an utterance, was
    dropped without a word (only lines starting exactly with '[' were read); a line that lost its
    '[' and a wav that no line labels were dropped silently too. Now the first two are read and the
    others are reader problems naming the file (and line)."""
    build_iemocap_tree(tmp_path, sessions=(1, 2))
    evaluation = tmp_path / "Session1" / "dialog" / "EmoEvaluation"
    first = evaluation / "Ses01F_impro01.txt"
    lines = first.read_text(encoding="utf-8").split("\n")
    lines = [" " + line if "Ses01F_impro01_F000" in line else "\t" + line if "Ses01F_impro01_M000" in line
             else line[1:] if "Ses01F_impro01_M001" in line else line for line in lines]
    first.write_text("\n".join(lines), encoding="utf-8")
    bom = evaluation / "Ses01F_script01_1.txt"
    body = bom.read_text(encoding="utf-8").split("\n", 2)[2]  # the header and blank line removed
    assert body.startswith("[") and "Ses01F_script01_1_F000" in body.split("\n")[0]
    bom.write_bytes(b"\xef\xbb\xbf" + body.replace("\n", "\r\n").encode("utf-8"))
    wav = tmp_path / "Session2" / "sentences" / "wav"
    write_audio(wav / "Ses02M_impro01" / "Ses02M_impro01_F099.wav", duration=0.1)  # no line labels it
    (wav / "Ses02M_impro01" / "._Ses02M_impro01_F098.wav").write_bytes(b"\x00\x05mac")  # macOS fork: ignored
    write_audio(wav / "Ses02F_impro09" / "Ses02F_impro09_F000.wav", duration=0.1)  # no evaluation file at all
    write_audio(wav / "Ses02F_impro09" / "Ses02F_impro09_M000.wav", duration=0.1)

    manifest = read_iemocap(tmp_path)
    ids = {u.id for u in manifest.utterances}
    assert {"Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01F_script01_1_F000"} <= ids
    assert "Ses01F_impro01_M001" not in ids and len(ids) == 15
    problems = dict(manifest.problems)
    assert len(problems) == 3, manifest.problems
    line = problems[f"{first}:15"]
    assert "evaluation line of Ses01F_impro01_M001 not understood (it does not start with '[')" in line
    assert "restore the line from" in line
    unlisted = problems[str(wav / "Ses02M_impro01" / "Ses02M_impro01_F099.wav")]
    assert "no line of the EmoEvaluation files labels utterance Ses02M_impro01_F099" in unlisted
    assert str(tmp_path / "Session2" / "dialog" / "EmoEvaluation" / "Ses02M_impro01.txt") in unlisted
    dialog = problems[str(wav / "Ses02F_impro09")]
    assert dialog.startswith("2 wav file(s) (e.g. Ses02F_impro09_F000.wav) have no evaluation file") and \
        "Ses02F_impro09.txt" in dialog


def test_iemocap_without_sessions(tmp_path):
    with pytest.raises(ManifestError, match="Session1..Session5|No labelled IEMOCAP"):
        read_iemocap(tmp_path)


def test_iemocap_names_the_release_folder_one_level_down(tmp_path):
    """The release unpacks as IEMOCAP_full_release/Session1..5; passing its parent names it."""
    build_iemocap_tree(tmp_path / "IEMOCAP_full_release", sessions=(1,))
    (tmp_path / "notes").mkdir()
    with pytest.raises(ManifestError, match=r"pass .*IEMOCAP_full_release as the corpus path"):
        read_iemocap(tmp_path)
    assert len(read_iemocap(tmp_path / "IEMOCAP_full_release").utterances) == 8
    # A session folder itself said "No labelled IEMOCAP utterance ... (sessions found: [])".
    with pytest.raises(ManifestError, match=r"Session1 is one session's folder: pass its parent .*"
                                            r"IEMOCAP_full_release, the folder holding Session1..Session5"):
        read_iemocap(tmp_path / "IEMOCAP_full_release" / "Session1")


# ---------------------------------------------------------------- CSV manifests

def _write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_manifest_basic(tmp_path):
    absolute = write_audio(tmp_path / "elsewhere" / "z.wav", duration=0.05)
    manifest_path = _write_csv(tmp_path / "corpus" / "m.csv", (
        "\ufeffpath,label,speaker,session,split,gender,age,id\n"
        "audio/a.wav,happy,spk1,s1,train,F,31,\n"
        "audio/sub/b.flac,sad,spk2,,test,male,40,custom\n"
        f"{absolute},angry,spk1,,,,,\n"
        "\n"
    ))
    manifest = read_csv_manifest(manifest_path)
    assert isinstance(manifest, Manifest) and manifest.corpus == "csv" and manifest.problems == []
    a, b, z = manifest.utterances
    assert a == Utterance(id="a", path=str(tmp_path / "corpus" / "audio" / "a.wav"), speaker="spk1",
                          label="happy", session="s1", split="train", gender="female", corpus="csv",
                          extra={"age": "31"})
    assert b.id == "custom" and b.gender == "male" and b.split == "test"
    assert z.id == "z" and z.path == str(absolute)  # absolute paths allowed, missing files not checked here


def test_csv_manifest_split_aliases(tmp_path):
    aliases = {"train": "train", "Training": "train", "val": "validation", "VALID": "validation",
               "dev": "validation", "Development": "validation", "validation": "validation", "test": "test", "eval": "test", "": ""}
    rows = "".join(f"a{k}.wav,x,y,{given}\n" for k, given in enumerate(aliases))
    manifest = read_csv_manifest(_write_csv(tmp_path / "m.csv", "path,label,speaker,split\n" + rows))
    assert [u.split for u in manifest.utterances] == list(aliases.values())


def test_csv_manifest_colliding_stems_use_relative_paths(tmp_path):
    path = _write_csv(tmp_path / "m.csv", "path,label,speaker\nx/a.wav,l,s\ny/a.wav,l,s\nc.wav,l,s\n")
    assert [u.id for u in read_csv_manifest(path).utterances] == ["x/a", "y/a", "c"]


@pytest.mark.parametrize(("text", "needles"), [
    ("path,label,speakr\na.wav,x,y\n", ["line 1", "'speaker'", "Did you mean 'speakr'"]),
    ("Path,label,speaker\na.wav,x,y\n", ["'path'", "Did you mean 'Path'"]),
    ("path,label,speaker\na.wav,,y\n", ["line 2", "column 'label'", "empty"]),
    ("path,label,speaker\na.wav,x,y\nb.wav,x,\n", ["line 3", "column 'speaker'"]),
    ("path,label,speaker\na.wav,x,y\nsub/a.wav,x,y\nb.wav,x,y,extra\n", ["line 4", "number of fields"]),
    ("path,label,speaker,id\na.wav,x,y,u1\nb.wav,x,y,u1\n", ["line 3", "'u1'", "line 2", "unique"]),
    ("path,label,speaker,split\na.wav,x,y,trian\n", ["line 2", "split", "Did you mean 'train'"]),
    ("path,label,speaker,split\na.wav,x,y,holdout\n", ["line 2", "unknown split 'holdout'", "val/valid/dev"]),
    ("path,label,speaker,split\na.wav,x,y,validaton\n", ["Did you mean 'validation'"]),
    ("path,label,speaker,audio_sample_rate\na.wav,x,y,16000\n", ["line 1", "reserved", "sample rate"]),
    ("path,label,speaker,gender\na.wav,x,y,other\n", ["line 2", "gender"]),
    # Three spellings of one class would train as three classes.
    ("path,label,speaker\na.wav,Angry,y\nb.wav,sad,y\nc.wav,angry ,y\nd.wav,ANGRY,y\n",
     ["column 'label'", "'Angry' (line 2), 'angry' (line 4), 'ANGRY' (line 5)", "differ only in case"]),
    # Numeric class codes, one half saved by a spreadsheet that dropped the leading zeros.
    ("path,label,speaker\na.wav,01,y\nb.wav,1,y\nc.wav,02,y\n",
     ["column 'label'", "'01' (line 2), '1' (line 3)", "differ only in leading zeros"]),
    # 'colère' typed (one character) and pasted from a macOS file name (e + combining accent), and a
    # full-width '１' of a Chinese input method: they print alike but were two classes
    ("path,label,speaker\na.wav,col\u00e8re,y\nb.wav,cole\u0300re,y\n",
     ["column 'label'", "(line 2)", "(line 3)", "differ only in Unicode form"]),
    ("path,label,speaker\na.wav,1,y\nb.wav,\uff11,y\n", ["column 'label'", "differ only in Unicode form"]),
    # both ways at once: naming only the case, the next run refused the corrected labels again
    ("path,label,speaker\na.wav,Col\u00e8re,y\nb.wav,cole\u0300re,y\n",
     ["column 'label'", "differ only in case and Unicode form"]),
    ("path,label,speaker\na.wav,Happy,y\nb.wav,happy\u200b,y\n", ["differ only in case and Unicode form"]),
    ("path,label,speaker\na.wav,07,y\nb.wav,\uff17,y\n", ["differ only in leading zeros and Unicode form"]),
    # a ligature copied from a PDF in one, upper case in the other: naming only the case, the next
    # run refused 'ﬁne' beside 'fine' for the ligature
    ("path,label,speaker\na.wav,\ufb01ne,y\nb.wav,FINE,y\n", ["differ only in case and Unicode form"]),
    # a zero-width space pasted with a label from a web page or a document
    ("path,label,speaker\na.wav,happy\u200b,y\nb.wav,happy,y\n", ["column 'label'", "differ only in Unicode form"]),
    # the Arabic letter mark, the Arabic twin of the left-to-right and right-to-left marks
    ("path,label,speaker\na.wav,happy,y\nb.wav,happy\u061c,y\n", ["column 'label'", "differ only in Unicode form"]),
    ("path,label,speaker\n", ["no rows"]),
    ("", ["empty"]),
])
def test_csv_manifest_errors(tmp_path, text, needles):
    path = _write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(ManifestError) as excinfo:
        read_csv_manifest(path)
    message = str(excinfo.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, message


def test_labels_that_look_different_are_not_refused_as_unicode_variants(tmp_path):
    """Found by a code review: NFKC and dropping every format character refused labels that do not
    look alike: 'x²' beside 'x2', and Persian words with and without a zero-width non-joiner (U+200C),
    which changes how the letters are drawn. Look-alikes are still refused ('ﬁne' from a PDF)."""
    persian = ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "\u0645\u06cc\u062e\u0648\u0627\u0647\u0645")
    text = f"path,label,speaker\na.wav,x\u00b2,y\nb.wav,x2,y\nc.wav,{persian[0]},y\nd.wav,{persian[1]},y\n"
    manifest = read_csv_manifest(_write_csv(tmp_path / "m.csv", text))
    assert [u.label for u in manifest.utterances] == ["x\u00b2", "x2", *persian]
    with pytest.raises(ManifestError, match="differ only in Unicode form"):
        read_csv_manifest(_write_csv(tmp_path / "pdf.csv", "path,label,speaker\na.wav,\ufb01ne,y\nb.wav,fine,y\n"))


def test_csv_manifest_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_corpus("csv", tmp_path / "none.csv")


def test_read_corpus_unknown_kind(tmp_path):
    with pytest.raises(ManifestError) as excinfo:
        read_corpus("ravdes", tmp_path)
    message = str(excinfo.value)
    assert "'ravdes'" in message and "ravdess, iemocap, csv" in message and "Did you mean 'ravdess'" in message
    assert read_corpus("CSV", _write_csv(tmp_path / "m.csv", "path,label,speaker\na.wav,x,y\n")).corpus == "csv"


def test_a_reader_registered_in_corpus_readers_is_used_by_name(tmp_path, monkeypatch):
    """read_corpus looks the kind up in CORPUS_READERS: registering a reader there is enough."""
    from w2v2ser.extract._corpora import CORPUS_READERS

    seen = []
    manifest = Manifest(utterances=[], corpus="cremad")
    monkeypatch.setitem(CORPUS_READERS, "cremad", lambda path: seen.append(path) or manifest)
    assert read_corpus("cremad", tmp_path) is manifest and read_corpus("CremaD", tmp_path) is manifest
    assert seen == [tmp_path, tmp_path]
    with pytest.raises(ManifestError, match="expected one of ravdess, iemocap, csv, cremad. Did you mean 'cremad'"):
        read_corpus("cremd", tmp_path)


def test_iemocap_path_inside_a_session_names_the_release_folder(tmp_path):
    """A folder inside the release (sentences/wav, dialog/EmoEvaluation) said "No labelled IEMOCAP
    utterance ... (sessions found: [], 0 problems)", where Session1 itself names the release."""
    release = tmp_path / "IEMOCAP_full_release"
    build_iemocap_tree(release, sessions=(1,))
    for inner in ("Session1/sentences/wav", "Session1/dialog/EmoEvaluation", "Session1/sentences/wav/Ses01F_impro01"):
        with pytest.raises(ManifestError, match=rf"is inside the session folder {re.escape(str(release / 'Session1'))}"
                                                rf": pass {re.escape(str(release))}, the folder holding Session1"):
            read_iemocap(release / inner)


def test_iemocap_names_the_sessions_and_dialogs_an_incomplete_copy_lacks(tmp_path):
    """A copy missing a session's sentences/wav, a dialog's wav folder, or a whole dialog still has
    every speaker, so the speaker count (the only check) passed it; the first two were one "audio
    missing" line per utterance (2,000 for a session) and a whole missing dialog went unsaid."""
    import shutil

    build_iemocap_tree(tmp_path, sessions=(1, 2, 3, 4, 5))
    shutil.rmtree(tmp_path / "Session2" / "sentences" / "wav" / "Ses02M_impro01")  # one dialog's audio
    shutil.rmtree(tmp_path / "Session3" / "sentences")  # a whole session's audio
    # A dialog the copy missed entirely: only the session's transcriptions still name it.
    transcriptions = tmp_path / "Session4" / "dialog" / "transcriptions"
    transcriptions.mkdir(parents=True)
    for dialog in ("Ses04M_impro01", "Ses04M_script01_1", "Ses04M_script02_2"):
        (transcriptions / f"{dialog}.txt").write_text("Ses04M_x_F000 [0-1]: Hi.\n", encoding="utf-8")
    manifest = read_iemocap(tmp_path)
    assert {u.speaker for u in manifest.utterances} >= {f"Ses0{s}{g}" for s in (1, 2, 4, 5) for g in "FM"}
    problems = dict(manifest.problems)
    assert len(problems) == 3, manifest.problems
    dialog = problems[str(tmp_path / "Session2" / "sentences" / "wav" / "Ses02M_impro01")]
    assert "dialog folder missing" in dialog and "4 utterance(s) of Ses02M_impro01" in dialog, dialog
    session = problems[str(tmp_path / "Session3" / "sentences" / "wav")]
    assert "Session3's 8 labelled utterance(s), of 2 dialog(s) (Ses03F_impro01, Ses03F_script01_1)" in session
    whole = problems[str(tmp_path / "Session4" / "dialog" / "EmoEvaluation" / "Ses04M_script02_2.txt")]
    assert "dialog Ses04M_script02_2 is missing from this copy" in whole and "transcriptions" in whole, whole
