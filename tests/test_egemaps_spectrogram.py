"""eGeMAPS (openSMILE) and spectrogram extractors: shapes, frame counts, reference values."""

from __future__ import annotations

import json

import subprocess
import sys
import warnings

import numpy as np
import pytest
from fixtures_audio import make_signal

from w2v2ser.extract import (
    EgemapsConfig,
    EgemapsExtractor,
    ExtractorConfigError,
    SpectrogramConfig,
    SpectrogramExtractor,
)
from w2v2ser.store import W2v2serError

# ---------------------------------------------------------------- eGeMAPS


@pytest.fixture(scope="module")
def egemaps() -> EgemapsExtractor:
    return EgemapsExtractor(EgemapsConfig())


def test_egemaps_config_round_trip_and_rejections():
    config = EgemapsConfig()
    assert EgemapsConfig.from_dict(config.to_dict()) == config
    assert config.to_dict() == {"feature_set": "eGeMAPSv02", "feature_level": "LowLevelDescriptors",
                                "sample_rate": "native"}
    with pytest.raises(ExtractorConfigError, match="Did you mean 'feature_set'"):
        EgemapsConfig.from_dict({"featureset": "eGeMAPSv02"})
    with pytest.raises(ExtractorConfigError, match="eGeMAPSv02"):
        EgemapsConfig(feature_set="ComParE_2016")
    with pytest.raises(ExtractorConfigError, match="LowLevelDescriptors"):
        EgemapsConfig(feature_level="Functionals")
    assert issubclass(ExtractorConfigError, W2v2serError)


def test_egemaps_feature_spec(egemaps):
    import opensmile

    spec = egemaps.feature_spec()
    assert (spec.name, spec.dim, spec.layers, spec.frame_rate, spec.dtype) == ("egemaps", 25, None, 100.0, "float32")
    assert spec.config["opensmile_version"] == opensmile.__version__
    assert spec.config["feature_set"] == "eGeMAPSv02" and len(spec.config["feature_names"]) == 25
    assert spec.description


def test_egemaps_max_frames_bounds_opensmile(egemaps):
    rng = np.random.default_rng(0)
    lengths = [400, 401, 799, 800, 959, 960, 961, 1119, 1120, 1121, 1279, 1280, 16_000, 16_159, 16_160]
    lengths += [int(n) for n in rng.integers(400, 40_000, 12)]
    signals = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Segment too short, filling with NaN"
        outputs = egemaps.extract(signals)
    for n, frames in zip(lengths, outputs):
        bound = egemaps.max_frames(n)
        assert frames.shape[1] == 25 and frames.dtype == np.float32 and frames.flags.c_contiguous
        assert bound - 2 <= frames.shape[0] <= bound, (n, frames.shape[0], bound)
        assert np.isfinite(frames).all(), n
    assert outputs[lengths.index(16_000)].shape[0] == 96


def test_egemaps_matches_opensmile_dataframe(egemaps, tmp_path):
    import subprocess
    import sys

    signal = make_signal(duration=1.5, frequency=220.0)
    np.save(tmp_path / "signal.npy", signal)
    # The reference runs openSMILE's DataFrame path in a clean interpreter: its native
    # library must not share a process with torch or TensorFlow (see EgemapsExtractor).
    script = (
        "import json, sys, numpy as np, opensmile\n"
        "smile = opensmile.Smile(feature_set='eGeMAPSv02', feature_level='LowLevelDescriptors')\n"
        "x = np.load(sys.argv[1])\n"
        "np.save(sys.argv[2], smile.process_signal(x, 16000).to_numpy(dtype=np.float32))\n"
        "print(json.dumps(list(smile.feature_names)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "signal.npy"), str(tmp_path / "ref.npy")],
                          capture_output=True, text=True, check=True)
    reference = np.load(tmp_path / "ref.npy")
    (frames,) = egemaps.extract([signal])
    np.testing.assert_array_equal(frames, reference)
    assert egemaps.feature_names == json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- spectrogram


def _scipy_reference(x: np.ndarray, config: SpectrogramConfig) -> np.ndarray:
    from scipy.signal import get_window, stft

    win, hop, n_fft = config.win_length, config.hop_length, config.fft_size
    if config.center:
        x = np.pad(x, (win // 2, win // 2))
    _, _, z = stft(x.astype(np.float64), fs=16_000, window=config.window, nperseg=win, noverlap=win - hop,
                   nfft=n_fft, detrend=False, return_onesided=True, boundary=None, padded=False,
                   scaling="spectrum")
    magnitude = np.abs(z).T * get_window(config.window, win).sum()  # undo 'spectrum' scaling
    return magnitude ** config.power


@pytest.mark.parametrize("config", [
    SpectrogramConfig(),
    SpectrogramConfig(window_ms=25, hop_ms=20, n_fft=512),
    SpectrogramConfig(window_ms=32, hop_ms=8, n_fft=1024, window="hamming", power=2.0),
    SpectrogramConfig(center=True, window="blackman"),
])
def test_spectrogram_matches_scipy_stft(config):
    x = make_signal(duration=0.73, frequency=700.0)
    extractor = SpectrogramExtractor(config)
    (spec,) = extractor.extract([x])
    reference = _scipy_reference(x, config)
    assert spec.dtype == np.float32 and spec.shape == reference.shape
    assert spec.shape == (extractor.max_frames(len(x)), config.fft_size // 2 + 1)
    np.testing.assert_allclose(spec, reference, rtol=2e-4, atol=2e-4 * reference.max())


def test_spectrogram_sine_peak_bin():
    config = SpectrogramConfig(window_ms=25, hop_ms=20, n_fft=512)
    x = (0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(16_000) / 16_000)).astype(np.float32)
    (spec,) = SpectrogramExtractor(config).extract([x])
    assert spec.shape == (1 + (16_000 - 400) // 320, 257)
    assert set(np.argmax(spec, axis=1)) == {32}  # 1000 Hz * 512 / 16000


def test_spectrogram_log_and_spec():
    config = SpectrogramConfig(log=True)
    extractor = SpectrogramExtractor(config)
    x = make_signal(duration=0.2)
    (log_spec,) = extractor.extract([x])
    (lin,) = SpectrogramExtractor(SpectrogramConfig()).extract([x])
    np.testing.assert_allclose(log_spec, np.log(lin + 1e-6), rtol=1e-5, atol=1e-5)
    spec = SpectrogramExtractor(SpectrogramConfig(window_ms=25, hop_ms=20, n_fft=512)).feature_spec()
    assert (spec.name, spec.dim, spec.layers, spec.frame_rate, spec.dtype) == ("spectrogram", 257, None, 50.0, "float32")
    assert extractor.feature_spec().dim == 201 and extractor.feature_spec().frame_rate == 100.0


@pytest.mark.parametrize("center", [False, True])
def test_spectrogram_max_frames_exact(center):
    extractor = SpectrogramExtractor(SpectrogramConfig(center=center, window_ms=30, hop_ms=12.5))
    for n in [1, 399, 479, 480, 481, 679, 680, 681, 5000, 16_001]:
        (spec,) = extractor.extract([np.ones(n, dtype=np.float32)])
        assert spec.shape[0] == extractor.max_frames(n), n


def test_spectrogram_config_errors():
    with pytest.raises(ExtractorConfigError, match=r"n_fft=256 is smaller than the window .*400 samples.*n_fft >= 400"):
        SpectrogramConfig(n_fft=256)
    with pytest.raises(ExtractorConfigError, match="whole number of samples"):
        SpectrogramConfig(hop_ms=10.01)
    with pytest.raises(ExtractorConfigError, match="window 'hanning'"):
        SpectrogramConfig(window="hanning")
    with pytest.raises(ExtractorConfigError, match="Did you mean 'hop_ms'"):
        SpectrogramConfig.from_dict({"hop": 10})
    config = SpectrogramConfig(window_ms=25, hop_ms=20, n_fft=512)
    assert SpectrogramConfig.from_dict(config.to_dict()) == config


def test_extract_modules_do_not_import_tensorflow_or_torch():
    code = (
        "import sys\n"
        "import w2v2ser.extract._audio, w2v2ser.extract._corpora, w2v2ser.extract._egemaps, "
        "w2v2ser.extract._spectrogram\n"
        "from w2v2ser.extract._egemaps import EgemapsExtractor\n"
        "EgemapsExtractor().extract([__import__('numpy').zeros(2000, 'float32')])\n"
        "bad = [m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
