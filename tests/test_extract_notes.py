"""Valid but suspicious input at stage 1: extraction goes on, and a note (and `store info`) says what to check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures_audio import make_signal, write_audio
from w2v2ser._cli import main
from w2v2ser.store import open_store


def _manifest(folder: Path, rows: list[tuple[Path, str, str]]) -> str:
    manifest = folder / "m.csv"
    manifest.write_text("path,label,speaker\n" + "".join(f"{p},{label},{speaker}\n" for p, label, speaker in rows))
    return str(manifest)


def test_digital_silence_is_noted_at_extraction_and_in_store_info(tmp_path, capsys):
    """A muted file and a stereo file whose channels cancel when averaged were stored without a word."""
    speech = make_signal(duration=1.0, sample_rate=16_000, channels=1).reshape(-1)
    good = write_audio(tmp_path / "good.wav", duration=1.0)
    muted = write_audio(tmp_path / "muted.wav", data=np.zeros(16_000, dtype=np.float32))
    antiphase = write_audio(tmp_path / "antiphase.wav", data=np.stack([speech, -speech], axis=1),
                            channels=2, subtype="FLOAT")
    rows = [(good, "happy", "s1"), (muted, "sad", "s1"), (antiphase, "happy", "s2")]
    store = tmp_path / "s.zarr"
    args = ["--store", str(store), "--features", "spectrogram", "--no-progress"]
    assert main(["extract", "csv", _manifest(tmp_path, rows), *args]) == 0  # valid input: not a failure
    captured = capsys.readouterr()
    assert "0 failed" in captured.out
    assert ("note: 2 file(s) are digital silence after mixing to mono (every sample is 0): antiphase, muted. "
            "They are extracted and trained on") in captured.err
    assert "keep one, e.g. `ffmpeg" in captured.err
    records = {r.id: r for r in open_store(store).list_utterances()}
    assert set(records) == {"good", "muted", "antiphase"}
    assert records["antiphase"].extra["audio_channels"] == 2 and records["good"].extra["audio_channels"] == 1
    assert main(["store", "info", str(store)]) == 0
    shown = capsys.readouterr().out
    assert "silence     2 utterance(s) are digital silence after mixing to mono" in shown
    assert "  antiphase\n  muted\n" in shown
    # A resumed run extracts nothing, and still says so.
    assert main(["extract", "csv", str(tmp_path / "m.csv"), *args]) == 0
    captured = capsys.readouterr()
    assert "0 extracted now" in captured.out and "2 file(s) are digital silence" in captured.err


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after the raise point runs."""


def test_digital_silence_of_a_unit_killed_right_after_its_commit_is_recorded_by_the_rerun(tmp_path, monkeypatch):
    """The silence note was written after the work unit's commit: a kill between the two lost it, and
    the rerun found the unit done and never decoded the file again, so the store never said it."""
    from w2v2ser.extract import build_extractor, extract_corpus, read_csv_manifest
    from w2v2ser.store import StoreWriter

    good = write_audio(tmp_path / "good.wav", duration=1.0)
    muted = write_audio(tmp_path / "muted.wav", data=np.zeros(16_000, dtype=np.float32))
    utterances = read_csv_manifest(_manifest(tmp_path, [(good, "happy", "s1"), (muted, "sad", "s1")])).utterances
    store = tmp_path / "s.zarr"

    def killed(self, ids):
        raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(StoreWriter, "record_silent_audio", killed)
        with pytest.raises(_Killed):
            extract_corpus(utterances, store, extractors=[build_extractor("spectrogram")], progress=False)
    summary = extract_corpus(utterances, store, extractors=[build_extractor("spectrogram")], progress=False)
    assert summary.extracted == 0 and summary.complete  # the unit was committed before the kill
    assert summary.silent == ["muted"]
    assert open_store(store).describe()["silent_audio"] == ["muted"]


@pytest.mark.parametrize("column", ["audio_channels", "audio_sample_rate"])
def test_the_columns_extraction_records_are_reserved_in_a_manifest(tmp_path, capsys, column):
    good = write_audio(tmp_path / "good.wav", duration=1.0)
    (tmp_path / "m.csv").write_text(f"path,label,speaker,{column}\n{good},a,s1,1\n")
    assert main(["extract", "csv", str(tmp_path / "m.csv"), "--store", str(tmp_path / "s.zarr"),
                 "--features", "spectrogram", "--no-progress"]) == 2
    assert "reserved" in capsys.readouterr().err


def test_a_folder_of_other_files_is_refused_before_any_audio_is_read(tmp_path, capsys, monkeypatch):
    """`--store DIR` naming a non-empty folder that is not a store read every file's header first
    (minutes on a large corpus) and only then refused; now the folder is checked first."""
    import soundfile

    opened = []

    class Spy(soundfile.SoundFile):
        def __init__(self, file, *args, **kwargs):
            opened.append(file)
            super().__init__(file, *args, **kwargs)

    good = write_audio(tmp_path / "audio" / "good.wav", duration=1.0)
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    manifest = _manifest(tmp_path, [(good, "a", "s1")])
    monkeypatch.setattr(soundfile, "SoundFile", Spy)
    assert main(["extract", "csv", manifest, "--store", str(folder), "--features", "spectrogram"]) == 2
    err = capsys.readouterr().err
    assert f"cannot create a store in {folder}: the directory is not empty and is not a w2v2ser store" in err
    assert opened == [] and "Traceback" not in err  # refused before any header was read
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["notes.txt"]


def test_speakers_differing_only_in_case_are_noted_at_extraction_and_in_store_info(tmp_path, capsys):
    """'Spk1' and 'spk1' silently became two speakers, while labels differing in case are refused;
    a note (not a refusal: stores holding such pairs keep resuming) now names the pairs."""
    files = [write_audio(tmp_path / f"{k}.wav", duration=0.5, seed=k) for k in range(4)]
    rows = [(files[0], "happy", "Spk1"), (files[1], "sad", "spk1"), (files[2], "happy", "s2"), (files[3], "sad", "S2")]
    store = tmp_path / "s.zarr"
    args = ["--store", str(store), "--features", "spectrogram", "--no-progress"]
    assert main(["extract", "csv", _manifest(tmp_path, rows), *args]) == 0
    err = capsys.readouterr().err
    assert ("note: speaker names that differ only in case: 'S2' and 's2'; 'Spk1' and 'spk1'; each spelling is a "
            "speaker of its own") in err
    assert "fix the spelling in the manifest and rerun the same `w2v2ser extract`" in err
    assert main(["store", "info", str(store)]) == 0
    shown = capsys.readouterr().out
    assert "speakers    4\n            'S2' and 's2'; 'Spk1' and 'spk1' differ only in case, so they are separate " \
           "speakers" in shown
    # The fix the note gives: one spelling in the manifest, taken in place.
    rows = [(path, label, speaker.lower()) for path, label, speaker in rows]
    assert main(["extract", "csv", _manifest(tmp_path, rows), *args]) == 0
    captured = capsys.readouterr()
    assert "0 extracted now" in captured.out and "differ only in case" not in captured.err
    assert main(["store", "info", str(store)]) == 0
    assert "speakers    2\n" in capsys.readouterr().out


@pytest.mark.parametrize("rate", [4000, 8000])
def test_files_below_11_khz_for_native_egemaps_are_noted(tmp_path, capsys, rate):
    """A 4 kHz file at eGeMAPS' native rate stored formant frequencies above its Nyquist frequency
    without a word; it is still extracted (valid input), with a note that names it and what to do.
    8 kHz files too: eGeMAPS resamples to 11 kHz and searches formants up to 5.45 kHz (review)."""
    low = write_audio(tmp_path / "low.wav", duration=0.5, sample_rate=rate, frequency=300)
    good = write_audio(tmp_path / "good.wav", duration=0.5)
    store = tmp_path / "s.zarr"
    manifest = _manifest(tmp_path, [(low, "a", "s1"), (good, "b", "s1")])
    assert main(["extract", "csv", manifest, "--store", str(store), "--features", "egemaps", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "0 failed" in captured.out
    assert (f"note: 1 file(s) are below 10900 Hz while egemaps runs at each file's own rate (sample_rate: native): "
            f"{low} ({rate} Hz). eGeMAPS' configuration resamples to 11 kHz") in captured.err
    assert "formant columns are unreliable" in captured.err and str(good) not in captured.err
    assert len(open_store(store).list_utterances()) == 2
    # At a fixed rate the file is resampled first: no such note.
    assert main(["extract", "csv", manifest, "--store", str(tmp_path / "r.zarr"), "--features", "egemaps",
                 "--option", "egemaps.sample_rate=16000", "--no-progress"]) == 0
    assert "below 10900 Hz" not in capsys.readouterr().err


def test_speakers_differing_only_in_leading_zeros_are_noted_like_case(tmp_path, capsys):
    """'7' and '007' (a spreadsheet drops leading zeros) silently became two speakers, which splits
    one person's normalisation statistics and can put them in both train and test of speaker folds."""
    files = [write_audio(tmp_path / f"{k}.wav", duration=0.5, seed=k) for k in range(4)]
    rows = [(files[0], "happy", "007"), (files[1], "sad", "7"), (files[2], "happy", "Spk1"), (files[3], "sad", "spk1")]
    store = tmp_path / "s.zarr"
    args = ["--store", str(store), "--features", "spectrogram", "--no-progress"]
    assert main(["extract", "csv", _manifest(tmp_path, rows), *args]) == 0
    err = capsys.readouterr().err
    assert ("note: speaker names that differ only in case or leading zeros: '007' and '7'; 'Spk1' and 'spk1'; "
            "each spelling is a speaker of its own") in err
    assert main(["store", "info", str(store)]) == 0
    assert "'007' and '7'; 'Spk1' and 'spk1' differ only in case or leading zeros, so they are separate " \
           "speakers" in capsys.readouterr().out


def test_store_info_shows_a_field_value_with_a_line_break_on_one_line(tmp_path, capsys):
    """A spreadsheet cell with a line break (Alt+Enter, written quoted) split `store info`'s fields table."""
    audio = write_audio(tmp_path / "a.wav", duration=0.5)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f'path,label,speaker,notes,"date\r\nrecorded"\r\n{audio},sad,s1,"line one\r\nline two",'
                        f'2020\r\n', newline="")
    store = str(tmp_path / "s.zarr")
    assert main(["extract", "csv", str(manifest), "--store", store, "--features", "spectrogram", "--no-progress"]) == 0
    assert main(["store", "info", store]) == 0
    shown = capsys.readouterr().out
    assert "            notes              'line one\\r\\nline two' 1\n" in shown
    assert "            'date\\r\\nrecorded' 2020 1\n" in shown  # a header cell with a line break, too
