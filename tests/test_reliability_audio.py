"""Bad and unusual audio: every bad file fails alone with a clear reason, every good file is extracted.

Each bad case is checked twice: ``probe_audio``/``read_audio`` raise an ``AudioError`` that names
the file, what is wrong and what to do; and inside ``extract_corpus`` on a mixed corpus the file
becomes one row of the failures table while every good file is extracted exactly.
"""

from __future__ import annotations

import builtins
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fixtures_audio import write_audio
from w2v2ser.extract import (
    AudioError,
    build_extractor,
    decode_audio,
    extract_corpus,
    probe_audio,
    read_audio,
)
from w2v2ser.store import Utterance, open_store

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489") + b"\0" * 64


def _header_only_wav(path: Path) -> Path:
    write_audio(path, frames=0)
    return path


def _truncated_header(path: Path) -> Path:
    full = write_audio(path.with_suffix(".full.wav"), duration=0.5)
    path.write_bytes(full.read_bytes()[:22])
    return path


def _cut(fraction: float, **options):
    """A file cut inside its audio data (a copy that did not finish): libsndfile decodes what is there."""
    def make(path: Path) -> Path:
        full = write_audio(path.with_suffix(".full.wav"), duration=1.0, **options)
        data = full.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
        return path
    return make


def _float_wav_with(value: float):
    def make(path: Path) -> Path:
        data = np.full(16_000, 0.1, dtype=np.float32)
        data[1234] = value
        return write_audio(path, data=data, subtype="FLOAT")
    return make


def _write_bytes(content: bytes):
    def make(path: Path) -> Path:
        path.write_bytes(content)
        return path
    return make


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


def _dangling_link(path: Path) -> Path:
    path.symlink_to(path.with_name("moved-away.wav"))
    return path


# name -> (how to make it, words the AudioError must contain besides the file name)
BAD: dict[str, tuple] = {
    "empty": (_write_bytes(b""), ("empty", "0 bytes", "Re-export")),
    "zero_samples": (_header_only_wav, ("no samples", "replace the recording")),
    "truncated_header": (_truncated_header, ("header is damaged or truncated", "convert it")),
    "truncated_data": (_cut(0.5), ("is truncated", "bytes of audio data", "copy or export it again")),
    "truncated_data_24bit": (_cut(0.99, subtype="PCM_24"), ("is truncated",)),
    "truncated_aiff": (_cut(0.6, format="AIFF"), ("is truncated", "frames")),
    # Found by a corpus trial: these decoded without an error to what was left of them.
    "truncated_rf64": (_cut(0.6, format="RF64"), ("is truncated", "declares 16,000 frames")),
    "truncated_w64": (_cut(0.6, format="W64"), ("is truncated", "bytes, the file holds")),
    "truncated_au": (_cut(0.6, format="AU"), ("is truncated", "bytes of audio data")),
    "truncated_mp3": (_cut(0.5, format="MP3", subtype="MPEG_LAYER_III"), ("is truncated", "decodes to")),
    "text_named_wav": (_write_bytes(b"id,label\nthis is a CSV, not audio\n" * 20), ("not audio", "convert it")),
    "png_named_wav": (_write_bytes(PNG), ("not audio", "convert it")),
    "short_16k": (lambda p: write_audio(p, frames=399), ("too short", "399 samples", "at least 400")),
    "short_8k": (lambda p: write_audio(p, frames=199, sample_rate=8_000), ("too short", "398 samples")),
    "nan_float": (_float_wav_with(np.nan), ("not finite", "NaN")),
    "inf_float": (_float_wav_with(np.inf), ("not finite", "Inf")),
    "directory_named_wav": (_directory, ("not a regular file", "Replace it with an audio file")),
    # Found by a corpus trial: called "does not exist" while `ls` showed it (and "the manifest" of a folder corpus).
    "dangling_symlink": (_dangling_link, ("is a symbolic link to", "moved-away.wav, which does not exist")),
}
# Files that must decode: name -> write_audio options.
GOOD: dict[str, dict] = {
    "pcm_u8": {"subtype": "PCM_U8"},
    "pcm_24": {"subtype": "PCM_24"},
    "pcm_32": {"subtype": "PCM_32"},
    "float": {"subtype": "FLOAT"},
    "double": {"subtype": "DOUBLE"},
    "eight_channels": {"channels": 8},
    "rate_8k": {"sample_rate": 8_000},
    "rate_11k": {"sample_rate": 11_025},
    "rate_22k": {"sample_rate": 22_050},
    "rate_44k": {"sample_rate": 44_100},
    "rate_96k": {"sample_rate": 96_000},
    "flac_24": {"subtype": "PCM_24", "format": "FLAC"},
    "mp3": {"subtype": "MPEG_LAYER_III", "format": "MP3"},
    "rf64": {"format": "RF64"},
    "w64": {"format": "W64"},
    "au": {"format": "AU"},
    "exactly_400": {"frames": 400},
    "silence": {"data": np.zeros(12_000, dtype=np.float32)},
    "full_scale_square": {"data": np.sign(np.sin(np.arange(16_000) / 7)).astype(np.float32), "subtype": "FLOAT"},
}


def make_bad(folder: Path, name: str) -> Path:
    make, _ = BAD[name]
    return make(folder / f"{name}.wav")


def make_good(folder: Path, name: str) -> Path:
    options = dict(GOOD[name])
    suffix = ".flac" if options.get("format") == "FLAC" else ".wav"
    options.setdefault("duration", 0.7)
    return write_audio(folder / f"{name}{suffix}", seed=len(name), **options)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_audio_raises_a_clear_audio_error(tmp_path, name):
    path = make_bad(tmp_path, name)
    _, words = BAD[name]
    # Decoding problems show in probe_audio (header) or, for sample values, in read_audio.
    with pytest.raises(AudioError) as error:
        probe_audio(path)
        read_audio(path)
    message = str(error.value)
    assert str(path) in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("name", ["zero_samples", "short_16k", "nan_float"])
def test_a_bad_file_s_advice_does_not_assume_a_manifest(tmp_path, name):
    """Found by a predict trial: a too-short file given on predict's command line was told "remove it
    from the manifest"; a file of a RAVDESS or IEMOCAP folder has no manifest either."""
    path = make_bad(tmp_path, name)
    with pytest.raises(AudioError) as error:
        probe_audio(path)
        read_audio(path)
    message = str(error.value)
    assert "from the manifest" not in message and "the file out (of the manifest, corpus folder or command line " \
        "that names it)" in message, message


@pytest.mark.parametrize("size", [0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000])  # the last: sox writing to a pipe
def test_a_streamed_wav_whose_header_sizes_were_never_filled_in_still_decodes(tmp_path, size):
    """Writers that cannot seek back (a pipe) leave a placeholder data size: not a cut file."""
    path = write_audio(tmp_path / "s.wav", duration=0.7)
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at:at + 4] = size.to_bytes(4, "little")
    data[4:8] = size.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert len(read_audio(path)) == probe_audio(path).num_samples == int(0.7 * 16_000)


def test_an_aiff_with_more_data_than_its_header_says_is_not_called_truncated(tmp_path):
    """libsndfile logs the same "frame count ... not equal" line when the data is longer."""
    path = write_audio(tmp_path / "a.aiff", duration=0.5, format="AIFF")
    data = bytearray(path.read_bytes())
    at = data.index(b"COMM") + 10  # numSampleFrames, big-endian, after the chunk size and channel count
    frames = int.from_bytes(data[at:at + 4], "big")
    data[at:at + 4] = (frames - 100).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    assert probe_audio(path).num_samples > 0


@pytest.mark.parametrize("name", sorted(GOOD))
def test_unusual_but_valid_audio_decodes_to_the_probed_length(tmp_path, name):
    path = make_good(tmp_path, name)
    signal = read_audio(path)
    assert signal.dtype == np.float32 and signal.ndim == 1
    assert len(signal) == probe_audio(path).num_samples
    assert np.isfinite(signal).all()
    if name == "silence":
        assert not signal.any()


def test_missing_file_is_named(tmp_path):
    with pytest.raises(AudioError, match=r"gone\.wav does not exist\. Check the path"):
        probe_audio(tmp_path / "gone.wav")


def test_permission_denied_is_named_in_process(tmp_path, monkeypatch):
    """We run as root, so simulate an unreadable file with an open() that refuses it."""
    path = write_audio(tmp_path / "locked.wav", duration=0.5)
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if Path(str(file)) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(AudioError, match="permission denied. Grant read access"):
        probe_audio(path)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_permission_denied_for_a_real_unprivileged_user(tmp_path):
    """A real chmod 000 file, read by `nobody` (setpriv drops root) in a subprocess."""
    folder = Path("/tmp") / f"w2v2ser-perm-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    try:
        path = write_audio(folder / "private.wav", duration=0.5)
        path.chmod(0)
        folder.chmod(0o755)
        code = textwrap.dedent(f"""
            from w2v2ser.extract import AudioError, probe_audio
            try:
                probe_audio({str(path)!r})
            except AudioError as error:
                print("AudioError:", error)
        """)
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c"]
        importable = subprocess.run([*as_nobody, "import w2v2ser.extract"], capture_output=True, text=True, timeout=120)
        if importable.returncode != 0:  # e.g. packages installed under root's private home
            pytest.skip(f"user nobody cannot import w2v2ser with {sys.executable}: {importable.stderr.strip()[-200:]}")
        done = subprocess.run([*as_nobody, code], capture_output=True, text=True, timeout=120)
        assert "AudioError:" in done.stdout, done.stdout + done.stderr
        assert "permission denied" in done.stdout and f"chmod a+r {path}" in done.stdout
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_mixed_corpus_fails_each_bad_file_alone_and_extracts_every_good_one(tmp_path):
    """One extract_corpus run: bad files -> failure rows naming the file; good files -> exact frames."""
    audio = tmp_path / "audio"
    audio.mkdir()
    utterances, bad_ids = [], set()
    names = sorted(GOOD) + sorted(BAD) + ["missing"]
    for k, name in enumerate(names):
        if name in GOOD:
            path = make_good(audio, name)
        elif name in BAD:
            path = make_bad(audio, name)
            bad_ids.add(name)
        else:
            path = audio / "missing.wav"
            bad_ids.add(name)
        utterances.append(Utterance(id=name, path=str(path), speaker=f"spk{k % 3}", label=["angry", "sad"][k % 2]))
    spectrogram, egemaps = build_extractor("spectrogram"), build_extractor("egemaps")
    store_path = tmp_path / "mixed.zarr"
    summary = extract_corpus(utterances, store_path, extractors=[spectrogram, egemaps], shard_size=4, progress=False)

    assert summary.complete
    failed = {uid: reason for uid, _, reason in summary.failed}
    assert set(failed) == bad_ids
    for uid, reason in failed.items():
        assert f"{uid}.wav" in reason, reason  # names the file
        assert any(w in reason for w in ("Check", "Remove", "Re-export", "convert", "Fix", "Point", "Leave", "copy", "Replace")), reason
    store = open_store(store_path)
    assert [f.id for f in store.list_failures() if f.id in bad_ids]
    done = {r.id: r for r in store.list_utterances()}
    assert set(done) == set(GOOD)
    for name, record in done.items():
        signal = read_audio(record.path)
        own, rate = decode_audio(record.path)
        assert record.num_samples == len(signal) and record.extra["audio_sample_rate"] == rate
        np.testing.assert_array_equal(store.read_utterance(name, "spectrogram"), spectrogram.extract([signal])[0])
        # eGeMAPS runs at each file's own rate (sample_rate: native, the default).
        np.testing.assert_array_equal(store.read_utterance(name, "egemaps"),
                                      egemaps.extract([own], sample_rates=[rate])[0])
    for feature in ("spectrogram", "egemaps"):
        stats = store.compose_statistics(feature)
        assert np.isfinite(stats.mean).all() and np.isfinite(stats.variance).all()
    assert store.verify().ok


_MEMORY_PROBE = textwrap.dedent(
    """
    import gc, resource, sys
    from w2v2ser.extract import build_extractor, read_audio
    path, warm = sys.argv[1], sys.argv[2]
    spectrogram, egemaps = build_extractor("spectrogram"), build_extractor("egemaps")
    x = read_audio(warm); spectrogram.extract([x]); egemaps.extract([x]); del x; gc.collect()
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    before = peak()
    x = read_audio(path)
    a = spectrogram.extract([x])[0]
    b = egemaps.extract([x])[0]
    print(peak() - before, x.nbytes + a.nbytes + b.nbytes)
    """
)


def _write_long(path: Path, seconds: float, *, sample_rate: int = 44_100, channels: int = 2) -> Path:
    """Write in one-second blocks so the test itself never holds the whole signal."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", samplerate=sample_rate, channels=channels, subtype="PCM_16") as f:
        t = np.arange(sample_rate) / sample_rate
        tone = 0.3 * np.sin(2 * np.pi * 220 * t)[:, None]
        for _ in range(int(seconds)):
            f.write((tone + 0.05 * rng.standard_normal((sample_rate, channels))).astype(np.float32))
    return path


def _peak_growth(path: Path, warm: Path) -> tuple[int, int]:
    done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(path), str(warm)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    growth, output_bytes = map(int, done.stdout.split())
    return growth, output_bytes


def _check_linear_memory(tmp_path: Path, seconds: int) -> None:
    warm = _write_long(tmp_path / "warm.wav", 1)
    short_growth, _ = _peak_growth(_write_long(tmp_path / "short.wav", 10), warm)
    long_growth, long_output = _peak_growth(_write_long(tmp_path / "long.wav", seconds), warm)
    per_second = (long_growth - short_growth) / (seconds - 10)
    print(f"peak RSS growth: 10 s -> {short_growth / 1e6:.1f} MB, {seconds} s -> {long_growth / 1e6:.1f} MB "
          f"({per_second / 1e6:.2f} MB per audio second; results themselves {long_output / 1e6:.1f} MB)")
    assert per_second < 1.5e6, f"{per_second / 1e6:.2f} MB per audio second"
    assert long_growth < 10 * long_output


def test_one_minute_file_needs_memory_linear_in_its_length(tmp_path):
    """Fast variant of the 5-minute check below."""
    _check_linear_memory(tmp_path, 60)


@pytest.mark.slow
def test_five_minute_file_needs_memory_linear_in_its_length(tmp_path):
    """Peak RSS growth of read_audio + spectrogram + eGeMAPS: 5 min vs 10 s of 44.1 kHz stereo.

    Measured: ~0.65 MB per audio second (read_audio holds the 44.1 kHz mix and the 16 kHz
    result, the spectrogram its output plus 4096-frame blocks, openSMILE ~0.55 MB/s that it
    buffers internally), i.e. linear in the length; a quadratic step or a whole-file 2-D copy
    would break the bound.
    """
    _check_linear_memory(tmp_path, 300)


def test_a_missing_file_that_exists_under_another_spelling_is_named(tmp_path):
    """Found by a corpus trial: a manifest written on Windows (sub\\a.wav) or naming an accented file
    in NFC while macOS stored it in NFD read only "does not exist", while `ls` showed the file."""
    import unicodedata

    write_audio(tmp_path / "sub" / "a b.wav", duration=0.1)
    with pytest.raises(AudioError, match=r"It exists as .*/sub/a b\.wav: write / instead of \\ in the manifest"):
        probe_audio(Path(f"{tmp_path}/sub\\a b.wav"))
    write_audio(tmp_path / unicodedata.normalize("NFD", "café.wav"), duration=0.1)
    with pytest.raises(AudioError, match=r"same name in another Unicode form \(NFD\) exists"):
        probe_audio(tmp_path / unicodedata.normalize("NFC", "café.wav"))


def test_a_missing_file_is_named_also_when_the_current_folder_was_deleted(tmp_path, monkeypatch):
    """Found in review: the near-miss hint raised FileNotFoundError from Path.cwd() when the job's
    launch folder had been removed, and every missing file's reason became "cannot read ...: [Errno 2]"."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(AudioError, match=r"Audio file /nonexistent/corpus/a\.wav does not exist\. Check the path"):
        probe_audio(Path("/nonexistent/corpus/a.wav"))


def test_a_manifest_path_written_relative_to_the_current_folder_is_named(tmp_path, monkeypatch, capsys):
    """Paths generated from the folder above the manifest ('corpus/a.wav' in corpus/list.csv) all
    failed with "does not exist" at corpus/corpus/a.wav, with no word on where the file is."""
    from w2v2ser._cli import main

    write_audio(tmp_path / "corpus" / "audio" / "a.wav", duration=0.3)
    write_audio(tmp_path / "corpus" / "b.wav", duration=0.3)
    (tmp_path / "corpus" / "list.csv").write_text("path,label,speaker\ncorpus/audio/a.wav,sad,s1\nb.wav,sad,s1\n")
    monkeypatch.chdir(tmp_path)
    assert main(["extract", "csv", "corpus/list.csv", "--store", "s.zarr", "--features", "spectrogram",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "1 extracted now" in captured.out
    assert (f"corpus/corpus/audio/a.wav does not exist. Check the path (a CSV manifest's relative paths resolve "
            f"against the manifest's folder). It exists relative to the current folder, as "
            f"{tmp_path / 'corpus' / 'audio' / 'a.wav'}: write the manifest's paths relative to the manifest's own "
            f"folder, or absolute.") in captured.err
