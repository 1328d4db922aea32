"""Feeding the model: decode processes ahead, CPU features alongside, store writes behind."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("torch")

from tiny_models import save_tiny_wav2vec2  # noqa: E402
from w2v2ser.extract import build_extractor, extract_corpus  # noqa: E402
from w2v2ser.store import FeatureSpec, Utterance, open_store  # noqa: E402

DURATIONS = (1.0, 0.6, 1.4, 0.8, 1.2, 0.5, 0.9, 1.1)


def _corpus(folder: Path, durations=DURATIONS, *, bad: int | None = None) -> list[Utterance]:
    rng = np.random.default_rng(0)
    utterances = []
    for number, duration in enumerate(durations):
        path = folder / f"utt{number:02d}.flac"
        if number == bad:
            path.write_bytes(b"fLaC" + bytes(200))  # a header, then garbage
        else:
            sf.write(path, (0.1 * rng.standard_normal(int(duration * 16000))).astype("float32"), 16000)
        utterances.append(Utterance(id=path.stem, path=str(path), speaker=f"spk{number % 2}", label="neutral"))
    return utterances


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_wav2vec2(tmp_path_factory.mktemp("tiny"))


def _extractors(model_dir: Path) -> list:
    return [build_extractor("wav2vec2", {"model": str(model_dir), "device": "cpu", "batch_seconds": 2.0}),
            build_extractor("spectrogram", {})]


def _read_all(store_path: Path, features=("wav2vec2", "spectrogram")) -> dict:
    store = open_store(store_path)
    return {(r.id, f): store.read_utterance(r.id, f) for r in store.list_utterances() for f in features}


def test_decode_processes_and_parallel_cpu_features_write_the_same_store(model_dir, tmp_path) -> None:
    utterances = _corpus(tmp_path)
    plain = extract_corpus(utterances, tmp_path / "plain.zarr", extractors=_extractors(model_dir), progress=False,
                           decode_workers=0, cpu_workers=1, shard_size=4)
    fed = extract_corpus(utterances, tmp_path / "fed.zarr", extractors=_extractors(model_dir), progress=False,
                         decode_workers=2, cpu_workers=2, shard_size=4)
    assert plain.complete and fed.complete and plain.extracted == fed.extracted == len(utterances)
    first, second = _read_all(tmp_path / "plain.zarr"), _read_all(tmp_path / "fed.zarr")
    assert first.keys() == second.keys() and len(first) == 2 * len(utterances)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_a_bad_file_in_a_decode_process_is_a_recorded_failure(model_dir, tmp_path) -> None:
    utterances = _corpus(tmp_path, bad=3)
    summary = extract_corpus(utterances, tmp_path / "s.zarr", extractors=_extractors(model_dir)[:1],
                             progress=False, decode_workers=2)
    assert summary.extracted == len(utterances) - 1
    assert [f[0] for f in summary.failed] == ["utt03"]


class _SlowFeature:
    """A CPU feature slower than the model; fails on one length to test isolation."""

    name = "slow"

    def __init__(self, fail_on: int | None = None, delay: float = 0.4, until: threading.Event | None = None) -> None:
        self.config = type("Config", (), {"to_dict": lambda self: {}})()
        self.fail_on, self.delay, self.until = fail_on, delay, until
        self.ends: list[float] = []

    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(name="slow", dim=1, layers=None, frame_rate=100.0, dtype="float32", config={})

    def max_frames(self, num_samples: int) -> int:
        return num_samples // 160

    def extract(self, signals):
        if self.until is not None:  # busy until that event (or 60 s): as slow as it takes
            self.until.wait(timeout=60)
        time.sleep(self.delay)
        if self.fail_on is not None and any(len(s) == self.fail_on for s in signals):
            raise RuntimeError("synthetic failure")
        self.ends.append(time.perf_counter())
        return [np.ones((len(s) // 160, 1), np.float32) for s in signals]


class _RecordingModel:
    """The tiny wav2vec2 extractor, recording when each batch starts and on which thread."""

    def __init__(self, inner, started: dict[int, threading.Event] | None = None) -> None:
        self.inner, self.name, self.config = inner, inner.name, inner.config
        self.starts: list[float] = []
        self.threads: set[int] = set()
        self.started = started or {}  # batch number -> event set when the model starts it

    def feature_spec(self):
        return self.inner.feature_spec()

    def max_frames(self, num_samples: int) -> int:
        return self.inner.max_frames(num_samples)

    def extract(self, signals):
        self.starts.append(time.perf_counter())
        self.threads.add(threading.get_ident())
        if len(self.starts) in self.started:
            self.started[len(self.starts)].set()
        return self.inner.extract(signals)


def test_cpu_features_never_stall_the_model(model_dir, tmp_path) -> None:
    """The model starts its later batches while the slow CPU feature is still on the first.

    The feature is busy until the model starts its third batch: a pipeline that kept the model
    waiting for it would stall for the feature's 60 s timeout, and start that batch after it ends.
    (A fixed 3 s delay failed on a loaded 2-core machine, where two batches took longer.)"""
    utterances = _corpus(tmp_path, (2.5,) * 36)  # 90 s: three 32 s batches of the pipeline
    third = threading.Event()
    model = _RecordingModel(_extractors(model_dir)[0], started={3: third})
    slow = _SlowFeature(delay=0.0, until=third)
    summary = extract_corpus(utterances, tmp_path / "s.zarr", extractors=[model, slow], progress=False,
                             decode_workers=0, shard_size=len(utterances))
    assert summary.complete and summary.extracted == len(utterances)
    assert len(model.starts) >= 3 and model.threads == {threading.get_ident()}
    assert model.starts[2] < slow.ends[0]  # two batches ahead of the CPU feature


def test_cpu_feature_failure_in_the_background_is_recorded_per_utterance(model_dir, tmp_path) -> None:
    utterances = _corpus(tmp_path)
    slow = _SlowFeature(fail_on=int(DURATIONS[2] * 16000), delay=0.0)
    summary = extract_corpus(utterances, tmp_path / "s.zarr", extractors=[_extractors(model_dir)[0], slow],
                             progress=False)
    assert summary.extracted == len(utterances)  # utt02 too, with its wav2vec2: only the failing feature lacks
    assert len(summary.failed) == 1 and summary.failed[0][0] == "utt02" and "synthetic failure" in summary.failed[0][2]
    assert "the file's other features are stored" in summary.failed[0][2]


def test_stage_profile_names_every_stage(model_dir, tmp_path) -> None:
    busy: dict[str, float] = {}
    lock = threading.Lock()

    def on_stage(name: str, seconds: float) -> None:
        with lock:
            busy[name] = busy.get(name, 0.0) + seconds

    extractors = _extractors(model_dir)
    extract_corpus(_corpus(tmp_path), tmp_path / "s.zarr", extractors=extractors, progress=False, on_stage=on_stage)
    assert {"decode", "host_to_device", "forward", "device_to_host", "store_write", "cpu_feature:spectrogram"} <= set(busy)
    assert all(seconds >= 0 for seconds in busy.values()) and busy["forward"] > 0
    assert extractors[0].on_stage is None  # profiling is switched off after the run
