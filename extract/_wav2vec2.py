"""wav2vec 2.0 hidden-state extraction with exact length-bucketed batching.

Layer index 0 is the output of the feature projection (the local CNN encoder's features,
layer-normed and projected to the model width), i.e. the transformer's input *before* the
positional convolution. Indices 1..L are the outputs of transformer layers 1..L.

Note on `transformers` (checked in 5.24 source): `Wav2Vec2Model(..., output_hidden_states=True)`
returns as `hidden_states[0]` the input of the first transformer layer, which for base
(post-layer-norm) models is `LayerNorm(x + pos_conv(x))` and for stable-layer-norm (large)
models `x + pos_conv(x)`, where x is the feature projection output. `hidden_states[k]`, k >= 1,
is the raw output of layer k (for stable-layer-norm models the last one is *before* the
encoder's final LayerNorm). We store x at index 0 and the same raw layer outputs at 1..L.

Batching: base models normalise the first CNN layer with a GroupNorm over time and were trained
without attention masks, so zero padding would change every frame. The CNN is therefore run
here over the HF module's weights with a *masked* GroupNorm (statistics over each utterance's
valid samples only); the unpadded convolutions make valid outputs depend on valid inputs only.
The transformer then runs with an attention mask and padded frames zeroed before the
positional convolution, so they act like that convolution's own zero padding. Result: batched
outputs equal one-at-a-time outputs up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from w2v2ser.store import FeatureSpec, W2v2serError

from ._errors import ExtractorConfigError, reject_unknown_keys

from ._models import ModelSource, load_model, resolve_model

__all__ = ["Wav2Vec2Config", "Wav2Vec2Extractor", "ExtractorConfigError"]

SAMPLE_RATE = 16000
_DEVICES = ("auto", "cpu", "cuda")
_DTYPES = ("float16", "float32")
_PRECISIONS = ("auto", "float32", "float16")


@dataclass
class Wav2Vec2Config:
    """Options of the wav2vec 2.0 extractor (the `wav2vec2:` section of pipeline.yaml).

    Attributes:
        model: Hugging Face hub id, local `save_pretrained` directory or fairseq `.pt` checkpoint.
        revision: Hub branch, tag or commit hash (hub ids only).
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        batch_seconds: Most padded audio seconds per forward batch.
        dtype: Storage dtype of the features, "float16" or "float32".
        precision: Compute precision: "auto" (float16 autocast on CUDA, float32 on CPU),
            "float32" or "float16" (CUDA only).
        num_threads: CPU threads for torch (`torch.set_num_threads`); None leaves torch's default.
        max_seconds: Longest utterance extracted (self-attention memory grows with the square
            of the length); a longer file is recorded as a failure that says so. None = no limit.
    """

    model: str = "facebook/wav2vec2-base"
    revision: str | None = None
    device: str = "auto"
    batch_seconds: float = 32.0
    dtype: str = "float16"
    precision: str = "auto"
    num_threads: int | None = None
    max_seconds: float | None = 120.0

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ExtractorConfigError(f"wav2vec2.model must be a non-empty string, got {self.model!r}")
        if self.revision is not None and not isinstance(self.revision, str):
            raise ExtractorConfigError(f"wav2vec2.revision must be a string or null, got {self.revision!r}")
        if not isinstance(self.device, str) or not (
            self.device in _DEVICES or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        ):
            raise ExtractorConfigError(f"wav2vec2.device must be one of {list(_DEVICES)} or 'cuda:N', got {self.device!r}")
        try:
            seconds = float(self.batch_seconds)
        except (TypeError, ValueError):
            seconds = math.nan
        if isinstance(self.batch_seconds, bool) or not math.isfinite(seconds) or seconds <= 0:
            raise ExtractorConfigError(
                f"wav2vec2.batch_seconds must be a positive number of seconds (e.g. 32), got {self.batch_seconds!r}"
            )
        self.batch_seconds = seconds
        if self.max_seconds is not None:
            if isinstance(self.max_seconds, bool) or not isinstance(self.max_seconds, (int, float)) or not (
                math.isfinite(self.max_seconds) and self.max_seconds > 0
            ):
                raise ExtractorConfigError(
                    f"wav2vec2.max_seconds must be a positive number of seconds or null, got {self.max_seconds!r}"
                )
            self.max_seconds = float(self.max_seconds)
        if self.dtype not in _DTYPES:
            raise ExtractorConfigError(f"wav2vec2.dtype must be one of {list(_DTYPES)}, got {self.dtype!r}")
        if self.precision not in _PRECISIONS:
            raise ExtractorConfigError(f"wav2vec2.precision must be one of {list(_PRECISIONS)}, got {self.precision!r}")
        if self.num_threads is not None and (
            isinstance(self.num_threads, bool) or not isinstance(self.num_threads, int) or self.num_threads < 1
        ):
            raise ExtractorConfigError(f"wav2vec2.num_threads must be a positive integer or null, got {self.num_threads!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the options (pipeline.yaml keys)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Wav2Vec2Config:
        """Build from a dict, rejecting unknown keys with a did-you-mean suggestion."""
        reject_unknown_keys(data, [f.name for f in fields(cls)], what="wav2vec2")
        return cls(**data)


def _conv_lengths(lengths: Any, kernels: Sequence[int], strides: Sequence[int]) -> Any:
    """Output length of unpadded convolutions (works on ints and integer tensors)."""
    for kernel, stride in zip(kernels, strides):
        lengths = (lengths - kernel) // stride + 1
    return lengths


# Config keys that change speed, not values.
RUNTIME_KEYS = ("device", "batch_seconds", "num_threads")


class Wav2Vec2Extractor:
    """wav2vec 2.0 hidden states: frames [T, L+1, hidden] at 50 frames per second.

    The model is resolved (files, architecture, sha256) on the first call that needs it and
    loaded on the first `extract`, so construction is cheap and the object pickles small.
    """

    name = "wav2vec2"

    def __init__(self, config: Wav2Vec2Config | None = None) -> None:
        self.config = config if config is not None else Wav2Vec2Config()
        self._source: ModelSource | None = None
        self._model: Any = None
        self._captured: list[Any] = []
        self._staging: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # Ship only the config and the resolved source to workers; they load the model themselves.
        return {"config": self.config, "_source": self._source, "_model": None, "_captured": [], "_staging": None}

    @property
    def source(self) -> ModelSource:
        """The resolved model source (resolving it on first access)."""
        if self._source is None:
            self._source = resolve_model(self.config.model, revision=self.config.revision)
        return self._source

    def feature_spec(self) -> FeatureSpec:
        """Shape, rate, dtype and provenance of the features this extractor writes."""
        hf = self.source.hf_config
        num_layers = int(hf.num_hidden_layers)
        names = ("local encoder output (after feature projection)",) + tuple(
            f"transformer layer {k}" for k in range(1, num_layers + 1)
        )
        return FeatureSpec(
            name=self.name,
            dim=int(hf.hidden_size),
            layers=num_layers + 1,
            frame_rate=SAMPLE_RATE / math.prod(int(s) for s in hf.conv_stride),
            dtype=self.config.dtype,
            config={**self._recorded_config(), "provenance": self.source.provenance()},
            layer_names=names,
            description=(
                "wav2vec 2.0 hidden states: index 0 = feature projection output (transformer input "
                "before the positional convolution), 1..L = transformer layer outputs"
            ),
        )

    def _recorded_config(self) -> dict[str, Any]:
        # Device, batch size and threads never change the values: kept apart under
        # "runtime" so that the store lets another machine resume the extraction.
        values = self.config.to_dict()
        runtime = {key: values.pop(key) for key in RUNTIME_KEYS if key in values}
        return {**values, "runtime": runtime}

    def max_frames(self, num_samples: int) -> int:
        """Exact number of frames for `num_samples` 16 kHz samples (0 when shorter than one frame)."""
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
                f"wav2vec2.device is {wanted!r} but torch reports no CUDA device (torch "
                f"{torch.__version__}); set device to 'cpu' or 'auto', or install a CUDA build of torch"
            )
        return wanted

    def _ensure_model(self) -> Any:
        if self._model is None:
            import torch

            if self.config.num_threads is not None:
                torch.set_num_threads(self.config.num_threads)
            device = self._device()
            if self.config.precision == "float16" and not device.startswith("cuda"):
                raise ExtractorConfigError(
                    "wav2vec2.precision 'float16' needs a CUDA device; use precision 'auto' or 'float32' on CPU"
                )
            model = load_model(self.source).to(device)
            for layer in model.encoder.layers:
                layer.register_forward_hook(self._capture)
            self._model = model
        return self._model

    def _capture(self, _module: Any, _inputs: Any, output: Any) -> None:
        self._captured.append(output[0] if isinstance(output, tuple) else output)

    # ------------------------------------------------------------------ extraction

    def extract(self, signals: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Hidden states of every signal.

        Args:
            signals: 16 kHz mono float32 waveforms (1-D).

        Returns:
            Per signal a float32 array [frames, L+1, hidden] (frames = `max_frames(len)`; signals
            shorter than one frame give 0 frames), in input order.
        """
        arrays = []
        for index, signal in enumerate(signals):
            array = np.asarray(signal, dtype=np.float32)
            if array.ndim != 1:
                raise ExtractorConfigError(
                    f"wav2vec2 expects 1-D mono 16 kHz signals; signal {index} has shape {array.shape}"
                )
            arrays.append(array)
        model = self._ensure_model()
        hf = model.config
        width = int(hf.num_hidden_layers) + 1
        results: list[np.ndarray | None] = [None] * len(arrays)
        runnable = []
        for index, array in enumerate(arrays):
            if self.max_frames(len(array)) > 0:
                runnable.append(index)
            else:
                results[index] = np.zeros((0, width, int(hf.hidden_size)), dtype=np.float32)
        for batch in self._plan_batches([len(arrays[i]) for i in runnable]):
            indices = [runnable[i] for i in batch]
            for index, frames in zip(indices, self._forward([arrays[i] for i in indices])):
                results[index] = frames
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

    def _forward(self, signals: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        model = self._model
        device = next(model.parameters()).device
        cuda = device.type == "cuda"
        half = cuda and self.config.precision in ("auto", "float16")
        lengths = torch.tensor([len(s) for s in signals], dtype=torch.long)
        padded = torch.zeros(len(signals), int(lengths.max()), dtype=torch.float32)
        for row, signal in enumerate(signals):
            padded[row, : len(signal)] = torch.from_numpy(signal)
        autocast = torch.autocast("cuda", dtype=torch.float16) if half else nullcontext()
        with torch.inference_mode(), autocast:
            inputs = padded.to(device, non_blocking=True)
            frames, valid = self._encode_audio(model, inputs, lengths.to(device))
            projected, _ = model.feature_projection(frames)
            num_frames = projected.shape[1]
            mask = torch.arange(num_frames, device=device)[None, :] < valid[:, None]
            self._captured.clear()
            try:
                # The encoder zeroes padded frames in place; index 0 keeps its valid frames intact.
                model.encoder(projected, attention_mask=None if bool(mask.all()) else mask)
                layers = [projected, *self._captured]
            finally:
                self._captured.clear()
            transfer = torch.float16 if (cuda and self.config.dtype == "float16") else torch.float32
            stacked = torch.empty(
                (len(signals), num_frames, len(layers), projected.shape[-1]), dtype=transfer, device=device
            )
            for k, hidden in enumerate(layers):
                stacked[:, :, k] = hidden
            host = self._to_host(stacked)
        valid_host = valid.to("cpu").tolist()
        # Views into one host array per batch: no per-utterance copies.
        return [host[row, :count] for row, count in enumerate(valid_host)]

    def _to_host(self, stacked: Any) -> np.ndarray:
        """One device-to-host copy per batch, as float32 numpy.

        On CUDA with float16 transfer the copy lands in a reused pinned buffer (faster than
        pageable memory) and the float32 conversion makes the array that is returned.
        """
        import torch

        if stacked.device.type != "cuda" or stacked.dtype == torch.float32:
            return stacked.to("cpu").numpy()
        size = stacked.numel()
        if self._staging is None or self._staging.numel() < size:
            self._staging = torch.empty(size, dtype=stacked.dtype, pin_memory=True)
        staged = self._staging[:size].view(stacked.shape)
        staged.copy_(stacked, non_blocking=True)
        torch.cuda.current_stream(stacked.device).synchronize()
        return staged.to(torch.float32).numpy()

    @staticmethod
    def _encode_audio(model: Any, inputs: Any, lengths: Any) -> tuple[Any, Any]:
        """The HF CNN feature encoder with GroupNorm statistics over valid samples only.

        Returns:
            Features [batch, frames, conv_dim] and valid frames per row.
        """
        import torch
        from torch import nn

        hidden = inputs[:, None, :]
        valid = lengths
        ragged = bool((lengths != lengths[0]).any())
        for conv_layer in model.feature_extractor.conv_layers:
            norm = getattr(conv_layer, "layer_norm", None)
            valid = _conv_lengths(valid, conv_layer.conv.kernel_size, conv_layer.conv.stride)
            if isinstance(norm, nn.GroupNorm) and ragged:
                hidden = conv_layer.conv(hidden)
                hidden = _masked_group_norm(hidden, valid, norm)
                hidden = conv_layer.activation(hidden)
            else:
                # LayerNorm over channels and no norm are per frame: padding cannot leak.
                hidden = conv_layer(hidden)
        return hidden.transpose(1, 2), valid


def _masked_group_norm(hidden: Any, valid: Any, norm: Any) -> Any:
    """GroupNorm with one group per channel, statistics over the first `valid[b]` frames of row b.

    Computed in float32 (as autocast does for group_norm) with two passes, in place on a copy.
    """
    import torch

    if norm.num_groups != norm.num_channels:
        raise NotImplementedError("masked GroupNorm supports one group per channel (wav2vec 2.0 base) only")
    values = hidden.float() if hidden.dtype != torch.float32 else hidden.clone()
    pad = (torch.arange(values.shape[-1], device=values.device)[None, :] >= valid[:, None])[:, None, :]
    count = valid.to(torch.float32)[:, None, None]
    values.masked_fill_(pad, 0.0)
    mean = values.sum(-1, keepdim=True) / count
    values.sub_(mean).masked_fill_(pad, 0.0)
    var = torch.linalg.vector_norm(values, dim=-1, keepdim=True).square_() / count
    scale = torch.rsqrt(var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight.float()[None, :, None]
        return values.mul_(scale).add_(norm.bias.float()[None, :, None])
    return values.mul_(scale)
