"""Hidden states of self-supervised speech encoders with exact length-bucketed batching.

One extractor serves every supported family (wav2vec 2.0 incl. large and XLS-R, HuBERT, WavLM,
data2vec-audio): the model is loaded through its own config.json (`model_type` picks the
`transformers` class), and the feature is named after the family (`wav2vec2`, `hubert`,
`wavlm`, `data2vec`).

Layer index 0 is, for every family, the output of the feature projection (the CNN encoder's
features, layer-normed where the family does so, and projected to the model width): the
transformer's input *before* the positional convolution. Indices 1..L are the raw outputs of
transformer layers 1..L.

Note on `transformers` (checked in 5.24 source): `output_hidden_states=True` returns as
`hidden_states[0]` the input of the first transformer layer, which for post-layer-norm (base)
models is `LayerNorm(x + pos_conv(x))` and for stable-layer-norm (large) models `x + pos_conv(x)`,
where x is the feature projection output. `hidden_states[k]`, k >= 1, is the raw output of layer k
(for stable-layer-norm models the last one is *before* the encoder's final LayerNorm). We store x
at index 0 and the same raw layer outputs at 1..L.

Batching: GroupNorm feature encoders (wav2vec2/HuBERT/WavLM base) normalise the first CNN layer
over time and were trained without attention masks, so zero padding would change every frame.
The CNN is therefore run here over the HF module's weights with a *masked* GroupNorm (statistics
over each utterance's valid samples only, any number of groups); the unpadded convolutions make
valid outputs depend on valid inputs only, and LayerNorm encoders normalise per frame. The
transformer then runs with an attention mask and padded frames zeroed before the positional
convolution, so they act like that convolution's own zero padding; data2vec-audio's stack of
positional convolutions gets its padded frames zeroed again after every layer. WavLM's relative
position bias depends on frame distances only. Result: batched outputs equal one-at-a-time outputs
up to float rounding, for every family.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

import numpy as np
from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, WrapValidator

from w2v2ser._common import did_you_mean
from w2v2ser._schema import build_dataclass, check_dataclass, check_keywords
from w2v2ser.store import FeatureSpec

from ._audio import mono_signal
from ._encoder import _conv_lengths, _encode_audio, _run_encoder, _StageClock, _zero_mean_unit_var
from ._errors import ExtractorConfigError

from ._models import load_model, resolve_model
from ._source import ModelSource

__all__ = [
    "Data2VecConfig",
    "Data2VecExtractor",
    "ExtractorConfigError",
    "HubertConfig",
    "HubertExtractor",
    "WavLMConfig",
    "WavLMExtractor",
    "Wav2Vec2Config",
    "Wav2Vec2Extractor",
]

SAMPLE_RATE = 16000
# Choices and bounds of the options are their annotations, checked by w2v2ser._schema.
_Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_FAMILY_TITLES = {"wav2vec2": "wav2vec 2.0", "hubert": "HuBERT", "wavlm": "WavLM", "data2vec": "data2vec-audio"}


def device_problem(value: object) -> str | None:
    """Why ``value`` is not a speech-encoder device (auto, cpu, cuda, cuda:N), or None when it is one.

    One text for ``extract --device``, ``--option wav2vec2.device=`` and pipeline.yaml's ``device``
    keys alike: what was received, the accepted values, and for a GPU spelt otherwise (gpu, GPU:1,
    cuda1) the value to write.
    """
    if isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        return None
    text = str(value).strip().lower()
    gpu = re.fullmatch(r"(?:gpu|cuda|nvidia)s?\s*[:/_-]?\s*(\d*)", text)
    if gpu:
        hint = f" For a GPU write {'cuda:' + gpu.group(1) if gpu.group(1) else 'cuda'!r}."
    elif re.fullmatch(r"\d+", text):  # `device: 0` in YAML (an int), as torch numbers its GPUs
        hint = f" For a GPU write 'cuda:{int(text)}'."
    elif text in ("auto", "cpu"):
        hint = f" Did you mean {text!r}?"
    else:
        hint = did_you_mean(value, ["auto", "cpu", "cuda"])
    return (f"expected auto (CUDA when present, else the CPU), cpu, cuda or cuda:N (GPU N, e.g. cuda:1), "
            f"got {value!r}.{hint}")


def _explain_device(value: object, check: ValidatorFunctionWrapHandler) -> object:
    try:
        return check(value)
    except ValidationError:  # the annotation's check refused it: say why as device_problem does
        raise ValueError(device_problem(value)) from None


#: A speech-encoder device: auto, cpu, cuda or cuda:N (its refusal says which values are accepted). Checked once,
#: by the annotation (whose JSON schema ``w2v2ser run --schema`` exports); device_problem words a refusal.
Device = Annotated[Union[Literal["auto", "cpu", "cuda"], Annotated[str, Field(pattern=r"^cuda:\d+$")]],
                   WrapValidator(_explain_device)]


@check_keywords(error=ExtractorConfigError)
@dataclass
class Wav2Vec2Config:
    """Options of a speech-encoder extractor (the `wav2vec2:` section of pipeline.yaml; `hubert:`,
    `wavlm:` and `data2vec:` take the same keys).

    Attributes:
        model: Hugging Face hub id, local `save_pretrained` directory or (wav2vec 2.0 only)
            fairseq `.pt` checkpoint. Its config.json `model_type` must be this section's family.
        revision: Hub branch, tag or commit hash (hub ids only).
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        batch_seconds: Most padded audio seconds per forward batch.
        dtype: Dtype of the returned and stored features, "float16" or "float32". The hidden
            states are cast to it on the device, so float16 halves the device-to-host copy.
        precision: Compute precision: "auto" (bfloat16 autocast on CUDA devices that support it,
            float16 on older ones, float32 on CPU), "float32", "float16" or "bfloat16" (CUDA only).
        attention: Attention kernel: "sdpa" (PyTorch scaled-dot-product attention) or "eager".
            WavLM always uses its own (gated relative position bias).
        compile: `torch.compile` the transformer layers (dynamic shapes); first batches are slow.
        num_threads: CPU threads for torch (`torch.set_num_threads`); None leaves torch's default.
        max_seconds: Longest utterance extracted (self-attention memory grows with the square
            of the length); a longer file is recorded as a failure that says so. None = no limit.
        normalize_waveform: Normalise each utterance's waveform to zero mean and unit variance
            before the model, as its feature extractor does: "auto" follows the model's own files
            (preprocessor_config.json ``do_normalize``, a fairseq checkpoint's ``normalize``), else
            its feature encoder (LayerNorm encoders were pre-trained on normalised input, GroupNorm
            ones on the raw waveform); true or false force it.
    """

    section: ClassVar[str] = "wav2vec2"
    #: What an absent key meant in a config recorded by an older store (see build_extractor).
    RECORDED_DEFAULTS: ClassVar[dict[str, Any]] = {"normalize_waveform": False}

    model: Annotated[str, Field(min_length=1, pattern=r"\S")] = "facebook/wav2vec2-base"
    revision: Optional[str] = None
    device: Device = "auto"
    batch_seconds: _Seconds = 32.0
    dtype: Literal["float16", "float32"] = "float16"
    precision: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    attention: Literal["sdpa", "eager"] = "sdpa"
    compile: bool = False
    num_threads: Optional[Annotated[int, Field(ge=1)]] = None
    max_seconds: Optional[_Seconds] = 120.0
    normalize_waveform: Union[bool, Literal["auto"]] = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.model, os.PathLike):  # a local directory given as a Path, as other path arguments take
            self.model = os.fspath(self.model)
        check_dataclass(self, what=f"{self.section} config", error=ExtractorConfigError)  # the annotations
        self.batch_seconds = float(self.batch_seconds)
        self.max_seconds = None if self.max_seconds is None else float(self.max_seconds)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the options (pipeline.yaml keys)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Wav2Vec2Config:
        """Build from a dict, rejecting unknown keys with a did-you-mean suggestion.

        Args:
            data: Option name -> value, as in pipeline.yaml's section of this family.

        Raises:
            ExtractorConfigError: An unknown key or a value out of bounds.
        """
        return build_dataclass(cls, data, what=f"{cls.section} config", error=ExtractorConfigError)


@check_keywords(error=ExtractorConfigError)
@dataclass
class HubertConfig(Wav2Vec2Config):
    """Options of the HuBERT extractor (the `hubert:` section); keys as `Wav2Vec2Config`."""

    section: ClassVar[str] = "hubert"
    model: str = "facebook/hubert-base-ls960"


@check_keywords(error=ExtractorConfigError)
@dataclass
class WavLMConfig(Wav2Vec2Config):
    """Options of the WavLM extractor (the `wavlm:` section); keys as `Wav2Vec2Config`."""

    section: ClassVar[str] = "wavlm"
    model: str = "microsoft/wavlm-base-plus"


@check_keywords(error=ExtractorConfigError)
@dataclass
class Data2VecConfig(Wav2Vec2Config):
    """Options of the data2vec-audio extractor (the `data2vec:` section); keys as `Wav2Vec2Config`."""

    section: ClassVar[str] = "data2vec"
    model: str = "facebook/data2vec-audio-base"


# Config keys that change speed, not values (attention kernels and compilation change only
# float rounding, like the batch size does).
RUNTIME_KEYS = ("device", "batch_seconds", "num_threads", "attention", "compile")


class Wav2Vec2Extractor:
    """Speech-encoder hidden states: frames [T, L+1, hidden] at 50 frames per second.

    The class is the wav2vec 2.0 one (feature name `wav2vec2`); `HubertExtractor`,
    `WavLMExtractor` and `Data2VecExtractor` are the same code under their family's name. A model
    whose config.json names another family is refused with the feature name to use instead.

    The model is resolved (files, architecture, sha256) on the first call that needs it and
    loaded on the first `extract`, so construction is cheap and the object pickles small.

    Args:
        config: Model and runtime options; defaults to this family's base model on device "auto".
    """

    name = "wav2vec2"
    config_class: type[Wav2Vec2Config] = Wav2Vec2Config

    def __init__(self, config: Wav2Vec2Config | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        self._source: ModelSource | None = None
        self._model: Any = None
        self._stacked: Any = None  # the batch's [B, T, L+1, H] output buffer, filled by the hooks
        self._next_layer = 0
        self._frame_mask: Any = None  # [B, 1, T] 1/0 of valid frames while a ragged batch runs
        self._copy_stream: Any = None
        self._compute: Any = None  # resolved compute dtype, once the model is loaded
        # Profiling: called with (stage, seconds) for "host_to_device", "forward" and
        # "device_to_host"; the device is synchronised between stages while it is set.
        self.on_stage: Callable[[str, float], None] | None = None

    def __repr__(self) -> str:  # the config, not the default <... object at 0x...>
        return f"{type(self).__name__}({self.config!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Ship only the config and the resolved source to workers; they load the model themselves.
        state = dict(self.__dict__)
        state.update(_model=None, _stacked=None, _frame_mask=None, _copy_stream=None, _next_layer=0, on_stage=None,
                     _compute=None)
        return state

    @property
    def source(self) -> ModelSource:
        """The resolved model source (resolving it on first access).

        Raises:
            ExtractorConfigError: the model's family is not this extractor's (e.g. a HuBERT
                model given as `wav2vec2.model`).
        """
        if self._source is None:
            source = resolve_model(self.config.model, revision=self.config.revision)
            if source.family != self.name:
                # A fairseq checkpoint has no config.json: its family is that of the only one converted.
                said = ("a fairseq checkpoint, converted as wav2vec 2.0 only" if source.kind == "fairseq"
                        else f"config.json model_type {source.model_type!r}")
                raise ExtractorConfigError(
                    f"{self.name}.model {self.config.model!r} is a {_FAMILY_TITLES[source.family]} model "
                    f"({said}), not {_FAMILY_TITLES[self.name]}: the "
                    f"feature name must name the upstream. Extract it as feature {source.family!r} "
                    f"(--features {source.family} --model ..., or a `{source.family}:` section in pipeline.yaml)."
                )
            self._source = source
        return self._source

    def feature_spec(self) -> FeatureSpec:
        """Shape, rate, dtype and provenance of the features this extractor writes."""
        source = self.source
        hf = source.hf_config
        num_layers = int(hf.num_hidden_layers)
        names = ("local encoder output (after feature projection)",) + tuple(
            f"transformer layer {k}" for k in range(1, num_layers + 1)
        )
        title = _FAMILY_TITLES[self.name]
        return FeatureSpec(
            name=self.name,
            dim=int(hf.hidden_size),
            layers=num_layers + 1,
            frame_rate=SAMPLE_RATE / math.prod(int(s) for s in hf.conv_stride),
            dtype=self.config.dtype,
            config={**self._recorded_config(), "upstream": self._upstream(), "provenance": source.provenance()},
            layer_names=names,
            description=(
                f"{title} hidden states: index 0 = feature projection output (transformer input "
                "before the positional convolution), 1..L = transformer layer outputs"
            ),
        )

    def _upstream(self) -> dict[str, Any]:
        """The model facts stage 2 and the layer sweep read (`FeatureSpec.config["upstream"]`)."""
        source = self.source
        hf = source.hf_config
        return {
            "family": source.family,
            "model_type": source.model_type,
            "model": self._recorded_model(),
            "revision": source.revision,
            "commit_hash": source.commit_hash,
            "weights_sha256": dict(source.weights_sha256),
            "hidden_states": int(hf.num_hidden_layers) + 1,
            "width": int(hf.hidden_size),
        }

    def _recorded_config(self) -> dict[str, Any]:
        # Device, batch size, threads, kernels never change the values beyond rounding: kept
        # apart under "runtime" so that the store lets another machine resume the extraction.
        values = self.config.to_dict()
        runtime = {key: values.pop(key) for key in RUNTIME_KEYS if key in values}
        values["normalize_waveform"] = self.normalizes_waveform()  # what was done, not "auto"
        values["model"] = self._recorded_model()
        return {**values, "runtime": runtime}

    def _recorded_model(self) -> str:
        """The model as the store records it: a local folder or checkpoint as an absolute path (a
        relative ``--model tiny`` is found from any working directory: ``--like``, ``predict``), a hub
        id as given. ``provenance.requested`` keeps what was typed."""
        if self.source.kind in ("local", "fairseq"):
            return os.path.abspath(os.path.expanduser(self.config.model))
        return self.config.model

    def decided_options(self) -> dict[str, Any]:
        """Options whose "auto" this process resolved from the model's files, as values."""
        return {"normalize_waveform": self.normalizes_waveform()}

    def normalizes_waveform(self) -> bool:
        """Whether each utterance's waveform is normalised (zero mean, unit variance) before the
        model: the config's choice, or for "auto" what the model was pre-trained with."""
        wanted = self.config.normalize_waveform
        return wanted if isinstance(wanted, bool) else self.source.pretrained_normalize()

    def max_frames(self, num_samples: int) -> int:
        """Exact number of frames for `num_samples` 16 kHz samples (0 when shorter than one frame).

        Args:
            num_samples: Length of a 16 kHz signal in samples.
        """
        hf = self.source.hf_config
        return max(0, int(_conv_lengths(int(num_samples), hf.conv_kernel, hf.conv_stride)))

    # ------------------------------------------------------------------ model and device

    def _device(self) -> str:
        import torch

        wanted = self.config.device
        if wanted == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise ExtractorConfigError(
                f"{self.name}.device is {wanted!r} but torch reports no CUDA device (torch "
                f"{torch.__version__}); set device to 'cpu' or 'auto', or install a CUDA build of torch"
            )
        # cuda:N past the GPUs torch sees: said here, not as torch's "invalid device ordinal" in the first batch.
        if wanted.startswith("cuda:") and int(wanted[5:]) >= torch.cuda.device_count():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise ExtractorConfigError(
                f"{self.name}.device is {wanted!r} but torch sees {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
                + (f" (CUDA_VISIBLE_DEVICES={visible!r} numbers them from 0)" if visible else "")
                + "; set device to one of them, 'cuda' or 'auto'"
            )
        return wanted

    def check(self, *, local: bool = True) -> None:
        """Fail before any store is created: resolve the model and, when this process will run
        it (``local``), the device.

        Args:
            local: Whether this process runs the model (False for Dask workers, whose devices
                the driver does not see).

        Raises:
            ModelLoadError: the model cannot be found. ExtractorConfigError: another family's
                model, or ``device: cuda`` without a CUDA device here.
        """
        _ = self.source
        if local:
            self._device()

    def uses_cuda(self) -> bool:
        """Whether the model runs on a CUDA device (resolving "auto")."""
        return self._device().startswith("cuda")

    def compute_dtype(self) -> Any:
        """The torch dtype the forward runs in (autocast), after resolving "auto" for the device."""
        import torch

        device = self._device()
        precision = self.config.precision
        if precision == "auto":
            if not device.startswith("cuda"):
                return torch.float32
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if precision != "float32" and not device.startswith("cuda"):
            raise ExtractorConfigError(
                f"{self.name}.precision {precision!r} needs a CUDA device; use precision 'auto' or 'float32' on CPU"
            )
        return getattr(torch, precision)

    def _ensure_model(self) -> Any:
        if self._model is None:
            import torch

            if self.config.num_threads is not None:
                torch.set_num_threads(self.config.num_threads)
            device = self._device()
            self._compute = self.compute_dtype()  # refuses half precision on CPU before loading anything
            model = load_model(self.source, attention=self.config.attention).to(device)
            for layer in model.encoder.layers:
                if self.config.compile:
                    # The layer's forward only: the hooks stay outside the compiled graph.
                    layer.forward = torch.compile(layer.forward, dynamic=True)
                layer.register_forward_hook(self._capture)
            # data2vec-audio: a stack of positional convolutions; each one must see zeros at padded frames.
            for pos_layer in getattr(model.encoder.pos_conv_embed, "layers", ()):
                pos_layer.register_forward_hook(self._zero_padded_frames)
            if device.startswith("cuda"):
                self._copy_stream = torch.cuda.Stream(device=device)
            self._model = model
        return self._model

    def _capture(self, _module: Any, _inputs: Any, output: Any) -> None:
        # Cast each layer's output into the batch's stacked buffer at once: no list of
        # full-precision layer outputs is kept alive.
        self._next_layer += 1
        self._stacked[:, :, self._next_layer].copy_(output[0] if isinstance(output, tuple) else output)

    def _zero_padded_frames(self, _module: Any, _inputs: Any, output: Any) -> Any:
        return output if self._frame_mask is None else output * self._frame_mask.to(output.dtype)

    # ------------------------------------------------------------------ extraction

    def extract(self, signals: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Hidden states of every signal.

        Args:
            signals: 16 kHz mono float32 waveforms (1-D).

        Returns:
            Per signal an array [frames, L+1, hidden] of the config's `dtype` (frames =
            `max_frames(len)`; signals shorter than one frame give 0 frames), in input order.
            Signals of one batch are views into that batch's host buffer (pinned memory on CUDA).
        """
        arrays = [mono_signal(signal, what=self.name, index=index) for index, signal in enumerate(signals)]
        model = self._ensure_model()
        hf = model.config
        width = int(hf.num_hidden_layers) + 1
        results: list[np.ndarray | None] = [None] * len(arrays)
        runnable = []
        for index, array in enumerate(arrays):
            if self.max_frames(len(array)) > 0:
                runnable.append(index)
            else:
                results[index] = np.zeros((0, width, int(hf.hidden_size)), dtype=self.config.dtype)
        # Every batch is queued before any is waited for: on CUDA the copy of batch k to the
        # host overlaps the forward of batch k+1.
        pending = []
        for batch in self._plan_batches([len(arrays[i]) for i in runnable]):
            indices = [runnable[i] for i in batch]
            pending.append((indices, *self._forward([arrays[i] for i in indices])))
        for indices, host, done, valid in pending:
            if done is not None:
                done.synchronize()
            frames = host.numpy()
            # Views into one host array per batch: no per-utterance copies.
            for row, (index, count) in enumerate(zip(indices, valid)):
                results[index] = frames[row, :count]
        return results  # type: ignore[return-value]

    def _plan_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Group positions by similar length, longest first, so that padded size <= batch_seconds."""
        budget = self.config.batch_seconds * SAMPLE_RATE
        order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
        batches: list[list[int]] = []
        start = 0
        while start < len(order):
            longest = lengths[order[start]]  # sorted descending: the first is the batch's padded length
            size = max(1, int(budget // max(longest, 1)))
            batches.append(order[start : start + size])
            start += size
        return batches

    def _forward(self, signals: Sequence[np.ndarray]) -> tuple[Any, Any, list[int]]:
        """Queue one batch: pad, copy in, forward, stack in the output dtype, copy out.

        Returns:
            (host tensor [B, T, L+1, H], CUDA event that marks the copy done or None, valid frames).
        """
        import torch

        model = self._model
        device = next(model.parameters()).device
        cuda = device.type == "cuda"
        compute = self._compute
        out_dtype = torch.float16 if self.config.dtype == "float16" else torch.float32
        lengths = [len(s) for s in signals]
        hf = model.config
        valid = [max(0, int(_conv_lengths(n, hf.conv_kernel, hf.conv_stride))) for n in lengths]
        num_frames = max(valid)
        ragged = len(set(lengths)) > 1
        layers = int(hf.num_hidden_layers) + 1
        mark = _StageClock(self.on_stage, device if cuda else None)
        padded = torch.zeros(len(signals), max(lengths), dtype=torch.float32, pin_memory=cuda)
        normalize = self.normalizes_waveform()
        for row, signal in enumerate(signals):
            # Per utterance, over its own samples: batching never changes what one file gets.
            padded[row, : len(signal)] = torch.from_numpy(_zero_mean_unit_var(signal) if normalize else signal)
        autocast = torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32)
        with torch.inference_mode(), autocast:
            inputs = padded.to(device, non_blocking=True)
            mask = None
            if ragged:
                frame_valid = torch.tensor(valid, dtype=torch.long)
                mask = (torch.arange(num_frames)[None, :] < frame_valid[:, None]).to(device, non_blocking=True)
            mark("host_to_device")
            frames = _encode_audio(model, inputs, lengths, ragged)
            projected = model.feature_projection(frames)
            if isinstance(projected, tuple):  # wav2vec2, WavLM, data2vec return (projected, normed)
                projected = projected[0]
            self._stacked = stacked = torch.empty(
                (len(signals), num_frames, layers, projected.shape[-1]), dtype=out_dtype, device=device
            )
            stacked[:, :, 0].copy_(projected)
            self._next_layer = 0
            self._frame_mask = None if mask is None else mask[:, None, :]
            try:
                _run_encoder(model, projected, mask, compute)
            finally:
                self._stacked, self._frame_mask = None, None
            if self._next_layer != layers - 1:
                raise RuntimeError(
                    f"{self.name}: captured {self._next_layer} transformer layer outputs, expected {layers - 1}"
                )
            mark("forward")
            if not cuda:
                mark("device_to_host")  # the stacked CPU tensor is the host array
                return stacked, None, valid
            host = torch.empty(stacked.shape, dtype=out_dtype, pin_memory=True)
            stream = self._copy_stream
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                host.copy_(stacked, non_blocking=True)
                done = torch.cuda.Event()
                done.record(stream)
            stacked.record_stream(stream)  # the allocator keeps it until the copy is done
            if mark.enabled:
                done.synchronize()
                mark("device_to_host")
        return host, done, valid


class HubertExtractor(Wav2Vec2Extractor):
    """HuBERT hidden states (feature `hubert`); see `Wav2Vec2Extractor`."""

    name = "hubert"
    config_class = HubertConfig


class WavLMExtractor(Wav2Vec2Extractor):
    """WavLM hidden states (feature `wavlm`), with its own gated relative position bias."""

    name = "wavlm"
    config_class = WavLMConfig


class Data2VecExtractor(Wav2Vec2Extractor):
    """data2vec-audio hidden states (feature `data2vec`); see `Wav2Vec2Extractor`."""

    name = "data2vec"
    config_class = Data2VecConfig
