"""decode_audio / read_audio / probe_audio / sha256_file on synthetic files of many formats and rates."""

from __future__ import annotations

import hashlib
import os
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from fixtures_audio import make_signal, write_audio

from w2v2ser.extract import (
    MIN_SAMPLES,
    AudioError,
    decode_audio,
    probe_audio,
    read_audio,
    resample_audio,
    sha256_file,
)
from w2v2ser.extract._audio import DecodedAudio, resampled_length
from w2v2ser.store import W2v2serError

RATES = [8_000, 11_025, 16_000, 22_050, 44_100, 48_000, 96_000]


@pytest.mark.parametrize("sample_rate", RATES)
@pytest.mark.parametrize("duration", [0.05, 0.3711, 1.0])
@pytest.mark.parametrize("channels", [1, 2])
def test_probe_length_equals_read_length(tmp_path, sample_rate, duration, channels):
    path = write_audio(tmp_path / "a.wav", duration=duration, sample_rate=sample_rate, channels=channels)
    info = probe_audio(path)
    signal = read_audio(path)
    assert signal.dtype == np.float32 and signal.ndim == 1 and signal.flags.c_contiguous
    assert info.num_samples == len(signal) == info.num_samples_16k
    assert info.sample_rate == sample_rate and info.channels == channels
    assert info.frames_at_source == round(duration * sample_rate)
    assert info.duration == pytest.approx(info.frames_at_source / sample_rate)
    assert len(signal) == pytest.approx(duration * 16_000, abs=1)


@pytest.mark.parametrize("sample_rate", RATES)
@pytest.mark.parametrize("channels", [1, 2])
def test_decode_keeps_the_files_own_rate_and_mixes_to_mono(tmp_path, sample_rate, channels):
    path = write_audio(tmp_path / "a.wav", duration=0.3711, sample_rate=sample_rate, channels=channels, subtype="FLOAT")
    signal, rate = decode_audio(path)
    written = make_signal(duration=0.3711, sample_rate=sample_rate, channels=channels)
    assert rate == sample_rate and signal.dtype == np.float32 and signal.ndim == 1
    assert len(signal) == probe_audio(path).frames_at_source
    np.testing.assert_allclose(signal, written if channels == 1 else written.mean(axis=1), atol=1e-7)
    np.testing.assert_array_equal(resample_audio(signal, rate, 16_000), read_audio(path))
    for target in (8_000, 16_000, 22_050, 48_000):
        assert len(resample_audio(signal, rate, target)) == resampled_length(len(signal), rate, target)
    audio = DecodedAudio(signal, rate)
    assert audio.at(None) is signal and audio.at(16_000) is audio.at(16_000)  # resampled once
    assert audio.num_samples == probe_audio(path).num_samples


@pytest.mark.parametrize("frames", [1201, 1203, 1205, 4803, 48_001, 95_999])
def test_probe_length_at_rounding_ties(tmp_path, frames):
    # 96 kHz -> 16 kHz: frames = 6k + 3 is exactly k + 0.5 output samples.
    path = write_audio(tmp_path / "a.wav", frames=frames, sample_rate=96_000)
    assert probe_audio(path, min_samples=0).num_samples == len(read_audio(path, min_samples=0))


@pytest.mark.parametrize(("suffix", "subtype", "tolerance"), [
    (".wav", "PCM_U8", 1 / 64),
    (".wav", "PCM_16", 1e-4),
    (".wav", "PCM_24", 1e-6),
    (".wav", "PCM_32", 1e-6),
    (".wav", "FLOAT", 0.0),
    (".wav", "DOUBLE", 1e-7),
    (".flac", "PCM_16", 1e-4),
    (".flac", "PCM_24", 1e-6),
    (".aiff", "PCM_16", 1e-4),
])
def test_lossless_formats_decode_to_the_written_samples(tmp_path, suffix, subtype, tolerance):
    expected = make_signal(duration=0.25, sample_rate=16_000)
    path = write_audio(tmp_path / f"a{suffix}", data=expected, subtype=subtype)
    signal = read_audio(path)
    assert len(signal) == len(expected) == probe_audio(path).num_samples
    np.testing.assert_allclose(signal, expected, atol=tolerance)


@pytest.mark.parametrize(("suffix", "subtype"), [(".ogg", "VORBIS"), (".mp3", "MPEG_LAYER_III")])
def test_lossy_formats_decode(tmp_path, suffix, subtype):
    fmt = "OGG" if suffix == ".ogg" else "MP3"
    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"libsndfile here cannot write {subtype}")
    path = write_audio(tmp_path / f"a{suffix}", duration=0.5, sample_rate=48_000, subtype=subtype,
                       frequency=1000.0)
    signal = read_audio(path)
    assert probe_audio(path).num_samples == len(signal)
    spectrum = np.abs(np.fft.rfft(signal))
    assert np.argmax(spectrum) * 16_000 / len(signal) == pytest.approx(1000.0, abs=5)


def test_gsm_wav_which_libsndfile_cannot_seek_decodes(tmp_path):
    """GSM 6.10 WAV (telephone corpora, Windows Sound Recorder) opens as not seekable: decoding
    failed with soundfile's "frames must be specified for non-seekable files" and "Check the file
    is valid audio", though the file was valid."""
    if "GSM610" not in sf.available_subtypes("WAV"):
        pytest.skip("libsndfile here cannot write GSM 6.10")
    path = write_audio(tmp_path / "call.wav", duration=1.0, sample_rate=8000, subtype="GSM610", frequency=500.0,
                       amplitude=0.3)
    signal = read_audio(path)
    assert probe_audio(path).num_samples == len(signal) >= 16_000
    spectrum = np.abs(np.fft.rfft(signal))
    assert np.argmax(spectrum) * 16_000 / len(signal) == pytest.approx(500.0, abs=10)


def test_channels_are_averaged(tmp_path):
    stereo = make_signal(duration=0.2, channels=2)  # channel 0 = half of channel 1
    path = write_audio(tmp_path / "s.wav", data=stereo, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(path), stereo.mean(axis=1), atol=1e-7)


def test_resampling_keeps_a_tone_at_its_frequency(tmp_path):
    path = write_audio(tmp_path / "t.wav", duration=1.0, sample_rate=44_100, frequency=1234.0, subtype="FLOAT")
    signal = read_audio(path)
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    assert np.argmax(spectrum) * 16_000 / len(signal) == pytest.approx(1234.0, abs=1.5)
    assert np.max(np.abs(signal)) == pytest.approx(0.5, abs=0.05)


def test_sha256_matches_hashlib(tmp_path):
    path = write_audio(tmp_path / "a.flac", duration=0.3)
    assert sha256_file(path, block_size=1000) == hashlib.sha256(path.read_bytes()).hexdigest()


def _message(excinfo) -> str:
    return str(excinfo.value)


def test_missing_file(tmp_path):
    for func in (read_audio, probe_audio, sha256_file):
        with pytest.raises(AudioError) as excinfo:
            func(tmp_path / "nope.wav")
        assert "nope.wav" in _message(excinfo) and "does not exist" in _message(excinfo)
    assert issubclass(AudioError, W2v2serError)


def test_unreadable_permission(tmp_path, monkeypatch):
    path = write_audio(tmp_path / "locked.wav", duration=0.1)
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: simulate the refusal the OS gives others
        import w2v2ser.extract._audiofile as audio_module

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(audio_module, "open", refuse, raising=False)
    with pytest.raises(AudioError) as excinfo:
        read_audio(path)
    assert "locked.wav" in _message(excinfo) and "permission denied" in _message(excinfo)
    assert "chmod" in _message(excinfo)


def test_empty_and_header_only_files(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav is empty \(0 bytes\)"):
        read_audio(empty)
    header_only = write_audio(tmp_path / "zero.wav", data=np.zeros(0, np.float32))
    for func in (read_audio, probe_audio):
        with pytest.raises(AudioError, match="contains no samples"):
            func(header_only)


def test_truncated_header_and_non_audio(tmp_path):
    good = write_audio(tmp_path / "good.wav", duration=0.1)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[:20])
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio, just text that happens to be named .wav\n" * 10)
    for path in (truncated, text):
        with pytest.raises(AudioError) as excinfo:
            probe_audio(path)
        message = _message(excinfo)
        assert path.name in message and "libsndfile" in message and "ffmpeg" in message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_wav(tmp_path, bad):
    data = make_signal(duration=0.1)
    data[[10, 500]] = bad
    path = write_audio(tmp_path / "nan.wav", data=data, subtype="FLOAT")
    with pytest.raises(AudioError) as excinfo:
        read_audio(path)
    assert "nan.wav" in _message(excinfo) and "2 samples that are not finite" in _message(excinfo)


def test_huge_but_finite_float_samples_are_accepted(tmp_path):
    # The fast check sums in float64; values near float32's max must not be mistaken for Inf.
    data = np.full(1000, 3e38, dtype=np.float32)
    path = write_audio(tmp_path / "loud.wav", data=data, subtype="FLOAT")
    assert np.isfinite(read_audio(path)).all()


@pytest.mark.parametrize(("sample_rate", "frames", "ok"), [
    (16_000, MIN_SAMPLES, True),
    (16_000, MIN_SAMPLES - 1, False),
    (8_000, 199, False),   # 398 samples after resampling
    (8_000, 200, True),
    (48_000, 1200, True),
    (48_000, 1198, False),  # 399.33 -> 399
])
def test_minimum_length(tmp_path, sample_rate, frames, ok):
    path = write_audio(tmp_path / "short.wav", frames=frames, sample_rate=sample_rate)
    if ok:
        assert len(read_audio(path)) >= MIN_SAMPLES
        return
    for func in (read_audio, probe_audio):
        with pytest.raises(AudioError) as excinfo:
            func(path)
        assert "short.wav" in _message(excinfo) and "at least 400 samples" in _message(excinfo)
    assert len(read_audio(path, min_samples=0)) == probe_audio(path, min_samples=0).num_samples


def test_long_multichannel_audio_needs_no_full_copies(tmp_path):
    frames = 48_000 * 60  # one minute of 48 kHz stereo
    rng = np.random.default_rng(0)
    data = (0.1 * rng.standard_normal((frames, 2))).astype(np.float32)
    path = write_audio(tmp_path / "long.wav", data=data, sample_rate=48_000, subtype="PCM_16")
    del data
    mono_bytes = frames * 4
    tracemalloc.start()
    signal = read_audio(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(signal) == frames // 3
    # Mono buffer (1x) + resampled output (1/3x) + one decode block; a naive
    # [frames, 2] read plus its mean would need >= 3x.
    assert peak < 1.5 * mono_bytes, peak / mono_bytes


def test_truncated_data_is_refused_by_probe_and_read_alike(tmp_path):
    # A copy cut short mid-data: libsndfile decodes what is there without an error, so its
    # features were extracted from part of the recording; both paths now refuse it, the same way.
    full = write_audio(tmp_path / "full.wav", duration=1.0, sample_rate=44_100)
    cut = tmp_path / "cut.wav"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2 + 1])
    for read in (probe_audio, read_audio):
        with pytest.raises(AudioError, match=r"cut\.wav is truncated: its header declares 88,200 bytes"):
            read(cut)
    assert probe_audio(full).num_samples == len(read_audio(full))


def test_a_wav_whose_header_was_never_closed_is_named_so(tmp_path):
    """Found by a long-recording trial: a 2-minute WAV whose recorder stopped before writing the
    data size (0 in the header) was refused as "contains no samples", which it does hold."""
    import struct

    full = write_audio(tmp_path / "full.wav", duration=1.0)
    data = bytearray(full.read_bytes())
    at = data.find(b"data")
    data[at + 4:at + 8] = struct.pack("<I", 0)
    unclosed = tmp_path / "unclosed.wav"
    unclosed.write_bytes(bytes(data))
    for read in (probe_audio, read_audio):
        with pytest.raises(AudioError, match=r"unclosed\.wav has a header that declares 0 bytes of audio data, yet the "
                                             r"file holds 32,044 bytes.*sox --ignore-length"):
            read(unclosed)
    # Review s63: WAVE_FORMAT_EXTENSIBLE (a 24-bit or multichannel recorder's WAV) is named so too.
    import soundfile

    extensible = tmp_path / "unclosed24.wav"
    soundfile.write(extensible, np.zeros((16000, 2), np.float32), 16000, subtype="PCM_24", format="WAVEX")
    data = bytearray(extensible.read_bytes())
    at = data.find(b"data")
    data[at + 4:at + 8] = struct.pack("<I", 0)
    extensible.write_bytes(bytes(data))
    with pytest.raises(AudioError, match=r"unclosed24\.wav has a header that declares 0 bytes of audio data"):
        read_audio(extensible)


def test_a_closed_empty_wav_with_metadata_is_not_called_never_closed(tmp_path):
    """Review of 7e085a0: a file over 1 kB was taken as audio after a header declaring 0 bytes, so a
    properly closed, empty BWF (metadata only) was called "never closed" (sox --ignore-length gives
    nothing), while a never-closed WAV with long metadata before its data (libsndfile's log cut short)
    was "contains no samples"."""
    import struct

    def wav(metadata: bytes, audio: bytes) -> bytes:
        chunks = (b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16) + metadata
                  + b"data" + struct.pack("<I", 0) + audio)
        return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks

    bext = b"bext" + struct.pack("<I", 602) + bytes(602) + b"iXML" + struct.pack("<I", 600) + b"<x/>".ljust(600)
    (tmp_path / "empty.wav").write_bytes(wav(bext, b""))
    comment = b"LIST" + struct.pack("<I", 2012) + b"INFOICMT" + struct.pack("<I", 2000) + b"x" * 2000
    (tmp_path / "unclosed.wav").write_bytes(wav(comment, bytes(32000)))
    for read in (probe_audio, read_audio):
        with pytest.raises(AudioError, match=r"empty\.wav contains no samples"):
            read(tmp_path / "empty.wav")
        with pytest.raises(AudioError, match=r"unclosed\.wav has a header that declares 0 bytes of audio data"):
            read(tmp_path / "unclosed.wav")


@pytest.mark.parametrize("odd", [False, True])
def test_a_closed_empty_wav_with_metadata_after_its_data_chunk_is_empty_not_never_closed(tmp_path, odd):
    """ffmpeg writes its LIST (INFO ISFT "Lavf...") after the data chunk: a closed, empty such WAV was
    called "never closed" (every byte after a 0-byte data header was taken as unclosed audio). A
    never-closed WAV whose writer appended a LIST after the audio is still named as never closed."""
    import struct

    def wav(audio: bytes, trailing: bytes) -> bytes:
        chunks = (b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
                  + b"data" + struct.pack("<I", 0) + audio + trailing)
        return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks

    text = b"Lavf61.1.100" + b"\0" * odd  # odd: an odd-sized last chunk, its pad byte left out
    listed = b"LIST" + struct.pack("<I", 12 + len(text)) + b"INFOISFT" + struct.pack("<I", len(text)) + text
    (tmp_path / "empty.wav").write_bytes(wav(b"", listed))
    (tmp_path / "unclosed.wav").write_bytes(wav(np.full(16000, 300, np.int16).tobytes(), listed))
    for read in (probe_audio, read_audio):
        with pytest.raises(AudioError, match=r"empty\.wav contains no samples"):
            read(tmp_path / "empty.wav")
        with pytest.raises(AudioError, match=r"unclosed\.wav has a header that declares 0 bytes of audio data"):
            read(tmp_path / "unclosed.wav")


@pytest.mark.parametrize("rates, expected", [((16000, 0), "target_rate=0; expected a rate in Hz"),
                                             ((-8000, 16000), "sample_rate=-8000; expected"),
                                             ((16000, 8000.5), "target_rate=8000.5; expected"),
                                             ((16000, "8000"), "target_rate='8000'; expected")])
def test_resample_audio_names_a_bad_rate(rates, expected):
    """soxr's own "Sample rate should be over 0" named neither argument; 8000.5 Hz was taken."""
    from w2v2ser.extract import ExtractorConfigError

    with pytest.raises(ExtractorConfigError, match=expected):
        resample_audio(np.zeros(100, np.float32), *rates)
    assert len(resample_audio(np.zeros(160, np.float32), 16000.0, 8000)) == 80
