"""eGeMAPS low-level descriptors (openSMILE) as a frame-level baseline feature."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal, Mapping, Sequence

import numpy as np

from w2v2ser._process import python_command
from w2v2ser._schema import build_dataclass, check_dataclass, check_keywords
from w2v2ser.store import FeatureSpec

from ._audio import NATIVE, TARGET_SAMPLE_RATE, SampleRate, processing_rate, signals_at_rates
from ._errors import ExtractorConfigError

__all__ = ["EgemapsConfig", "EgemapsExtractor"]


# openSMILE's GeMAPS family frames audio with a 10 ms hop and a longest window of 60 ms, both
# rounded half up to whole samples. Measured at 8, 11.025, 12, 16, 22.05, 24, 32, 44.1, 48 and
# 96 kHz on lengths around the first frames and random lengths up to 6 s (up to 25 s at 16 kHz):
# frames = (n - window) // hop + 2. Below one window openSMILE emits a single all-NaN row;
# zero-padding the signal to one window yields two finite frames instead (NaN would poison
# store statistics).
def _hop(sample_rate: int) -> int:
    return math.floor(0.01 * sample_rate + 0.5)


def _min_signal(sample_rate: int) -> int:
    return math.floor(0.06 * sample_rate + 0.5)
# Sets whose low-level descriptors share the framing rule above (checked per set).
FeatureSet = Literal["eGeMAPSv02", "eGeMAPSv01b", "eGeMAPSv01a", "GeMAPSv01b", "GeMAPSv01a"]


@check_keywords(error=ExtractorConfigError)
@dataclass(frozen=True)
class EgemapsConfig:
    """openSMILE settings (keys of the ``egemaps`` section of pipeline.yaml).

    Attributes:
        feature_set: An openSMILE GeMAPS-family set; ``eGeMAPSv02`` gives 25 descriptors.
        feature_level: Only ``LowLevelDescriptors`` (frame-level, 100 frames/s) is supported.
        sample_rate: ``"native"`` (default): each file as decoded, mixed to mono, not
            resampled, as openSMILE's own ``Smile.process_file`` does; or a rate in Hz that
            every file is resampled to first (16000 is what w2v2ser did before this option).
    """

    feature_set: FeatureSet = "eGeMAPSv02"
    # The store keeps frames: functionals can be computed from the stored descriptors.
    feature_level: Literal["LowLevelDescriptors"] = "LowLevelDescriptors"
    sample_rate: SampleRate = NATIVE

    #: What an absent key meant in a config recorded by an older store (see build_extractor).
    RECORDED_DEFAULTS: ClassVar[dict[str, Any]] = {"sample_rate": TARGET_SAMPLE_RATE}

    def __post_init__(self) -> None:
        check_dataclass(self, what="egemaps config", error=ExtractorConfigError)  # the annotations

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with one key per field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EgemapsConfig":
        """Build from a dict, rejecting unknown keys with a did-you-mean hint.

        Args:
            data: Option name -> value, as in pipeline.yaml's ``egemaps:`` section.

        Raises:
            ExtractorConfigError: An unknown key or a value out of bounds.
        """
        return build_dataclass(cls, data, what="egemaps config", error=ExtractorConfigError)


def _smile_in_this_process(feature_set: str, feature_level: str) -> Any:
    global _SMILE
    key = (feature_set, feature_level)
    if _SMILE is None or _SMILE[0] != key:
        import opensmile  # heavy (pandas, audinterface): only when features are needed

        # No sampling_rate: openSMILE runs at each signal's own rate and never resamples
        # (a second resampler, different from ours, would change the values).
        _SMILE = (key, opensmile.Smile(feature_set=feature_set, feature_level=feature_level))
    return _SMILE[1]


_SMILE: tuple[tuple[str, str], Any] | None = None
_FULL_SCALE = np.float32(32767 / 32768)  # the largest sample openSMILE's int16 cast keeps


def _compute(
    feature_set: str, feature_level: str, rates: list[int], signals: list[np.ndarray]
) -> tuple[None, list[np.ndarray]]:
    """openSMILE on padded signals at the given rates (runs in the openSMILE worker process)."""
    smile = _smile_in_this_process(feature_set, feature_level)
    return None, [np.ascontiguousarray(smile(x, int(r))[0].T, dtype=np.float32) for x, r in zip(signals, rates)]


def _describe(feature_set: str, feature_level: str, _: list[int], __: list[np.ndarray]) -> tuple[list, list[np.ndarray]]:
    """Descriptor names and openSMILE version (runs in the openSMILE worker process)."""
    import opensmile

    names = list(_smile_in_this_process(feature_set, feature_level).feature_names)
    return [names, opensmile.__version__], []


# What the worker process may be asked to run.
WORKER_FUNCTIONS = {"compute": _compute, "describe": _describe}
_WORKER_MODULE = "w2v2ser.extract._smile_worker"


class EgemapsExtractor:
    """Frame-level eGeMAPS descriptors, [frames, 25] float32 at 100 frames/s.

    With ``sample_rate: native`` each signal is processed at its own rate, as openSMILE's
    ``Smile.process_file`` does; with a rate in Hz, signals at other rates are resampled to it
    first (soxr). openSMILE runs in a worker process of its own (``_smile_worker``, started
    once per extractor and reused). Its native library can abort a process that also holds
    torch or TensorFlow ("malloc(): invalid size"), and one bad input must never take the
    whole extraction down: when the worker dies, the batch raises, the driver retries
    utterance by utterance and records the one that fails, and the next call starts a fresh
    worker.
    """

    name = "egemaps"
    #: With ``sample_rate: native``, files below this rate (Hz) are noted by extract: see below.
    native_min_rate = 10900
    #: What such a file's frames hold, and what to do (extract's note).
    native_min_rate_why = (
        "eGeMAPS' configuration resamples to 11 kHz and searches formants F1-F3 up to 5.45 kHz, above these "
        "files' Nyquist frequency (half their rate; 4 kHz for 8 kHz telephone speech), so their formant columns "
        "can hold frequencies the audio cannot carry. Leave them out of the manifest, or keep them knowing that "
        "their formant columns are unreliable; resampling (`--option egemaps.sample_rate=16000`, in a new store) "
        "cannot restore the missing band")

    def __init__(self, config: EgemapsConfig | None = None) -> None:
        """Set up the extractor (openSMILE's worker process starts when first needed).

        Args:
            config: openSMILE settings; defaults to eGeMAPSv02 low-level descriptors at each file's own rate.

        Raises:
            MissingDependencyError: opensmile is not installed.
        """
        from w2v2ser._deps import require_modules

        require_modules("opensmile")
        self.config = config if config is not None else EgemapsConfig()
        self._worker: Any = None
        self._described: tuple[list[str], str] | None = None

    def __repr__(self) -> str:  # the config, not the default <... object at 0x...>
        return f"{type(self).__name__}({self.config!r})"

    def _call(
        self, function: str, arrays: Sequence[np.ndarray] = (), rates: Sequence[int] = ()
    ) -> tuple[Any, list[np.ndarray]]:
        import subprocess

        from w2v2ser._deps import MissingDependencyError

        from ._smile_worker import read_message, write_message

        if self._worker is None or self._worker.poll() is not None:
            self._worker = subprocess.Popen(python_command(_WORKER_MODULE), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        worker = self._worker
        request = {
            "function": function,
            "args": [self.config.feature_set, self.config.feature_level, [int(r) for r in rates]],
        }
        try:
            write_message(worker.stdin, request, list(arrays))
            reply = read_message(worker.stdout)
        except (OSError, ValueError):  # broken pipe, or a reply cut short by the worker's death
            reply = None
        if reply is None:  # the worker died: start a fresh one next time
            self.close()
            raise RuntimeError(
                f"the openSMILE worker process died (exit status {worker.returncode}) during {function!r}: a crash "
                "in openSMILE's native library on this input, or a worker that could not start (its error is "
                "printed above). It is restarted for the next call. If one file causes it every time, re-encode "
                "or exclude it."
            )
        meta, out = reply
        if meta["status"] == "missing":
            raise MissingDependencyError(meta["value"])
        if meta["status"] != "ok":
            raise RuntimeError(f"openSMILE failed: {meta['value']}")
        return meta["value"], out

    def close(self) -> None:
        """Stop the openSMILE worker process (it also stops when the extractor is collected)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            for stream in (worker.stdin, worker.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            try:
                worker.wait(timeout=5)
            except Exception:  # noqa: BLE001 - a stuck worker is killed
                worker.kill()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __getstate__(self) -> dict[str, Any]:
        # Sent to Dask workers: the worker process stays behind; each process starts its own.
        return {**self.__dict__, "_worker": None}

    def _description(self) -> tuple[list[str], str]:
        if self._described is None:
            names, version = self._call("describe")[0]
            self._described = (list(names), str(version))
        return self._described

    @property
    def feature_names(self) -> list[str]:
        """openSMILE's descriptor names, in column order."""
        return list(self._description()[0])

    def feature_spec(self) -> FeatureSpec:
        """Describe the stored feature, with the openSMILE version as provenance."""
        names, version = self._description()
        config = {**self.config.to_dict(), "opensmile_version": version, "feature_names": list(names)}
        rate = self.config.sample_rate
        at = "each file's own sample rate" if rate == NATIVE else f"{rate} Hz"
        return FeatureSpec(
            name=self.name,
            dim=len(names),
            layers=None,
            frame_rate=100.0,
            dtype="float32",
            config=config,
            description=(
                f"openSMILE {self.config.feature_set} {self.config.feature_level} "
                f"({len(names)} descriptors, 20/60 ms windows, 10 ms hop, at {at})"
            ),
        )

    def max_frames(self, num_samples: int, *, sample_rate: int | None = None) -> int:
        """Exact number of frames :meth:`extract` returns for one signal.

        Args:
            num_samples: Length of the signal at the rate it is processed at.
            sample_rate: That rate in Hz; None means 16 kHz for ``native``, else the configured rate.
        """
        rate = processing_rate(self.config.sample_rate, sample_rate)
        window = _min_signal(rate)
        return (max(num_samples, window) - window) // _hop(rate) + 2

    def extract(self, signals: Sequence[np.ndarray], *, sample_rates: Sequence[int] | None = None) -> list[np.ndarray]:
        """Compute descriptors for each mono signal.

        Args:
            signals: 1-D float32 arrays.
            sample_rates: Rate of each signal in Hz; None means every signal is at 16 kHz for
                ``native``, or already at the configured rate. With a configured rate,
                signals at another rate are resampled to it.

        Returns:
            One C-contiguous float32 array [frames, dim] per signal.
        """
        padded, rates = [], []
        for x, rate in signals_at_rates(signals, sample_rates, self.config.sample_rate, what="egemaps"):
            if x.shape[0] < _min_signal(rate):
                x = np.pad(x, (0, _min_signal(rate) - x.shape[0]))
            # openSMILE scales by 32768 and casts to int16: float audio at or beyond full scale
            # (+1.0 included) would wrap around to the other sign. Clipped, it saturates as 16-bit
            # audio would; samples inside full scale are passed unchanged.
            if x.size and (x.max() >= _FULL_SCALE or x.min() < -1.0):
                x = np.clip(x, -1.0, _FULL_SCALE)
            padded.append(x)
            rates.append(rate)
        return self._call("compute", padded, rates)[1] if padded else []
