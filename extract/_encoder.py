"""The batched forward pass over a Hugging Face speech encoder's modules, padding made harmless.

The CNN feature encoder runs with a GroupNorm masked to each utterance's valid samples, the
transformer with an additive attention mask and padded frames zeroed before the positional
convolution (see `_wav2vec2` for why batched outputs then equal one-at-a-time outputs); also the
frame count of unpadded convolutions, the per-utterance input normalisation and a per-stage
clock for profiling.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def _conv_lengths(lengths: Any, kernels: Sequence[int], strides: Sequence[int]) -> Any:
    """Output length of unpadded convolutions (works on ints and integer tensors)."""
    for kernel, stride in zip(kernels, strides):
        lengths = (lengths - kernel) // stride + 1
    return lengths


def _zero_mean_unit_var(signal: np.ndarray) -> np.ndarray:
    """One utterance normalised as transformers' Wav2Vec2FeatureExtractor does (``do_normalize``)."""
    signal = np.asarray(signal, dtype=np.float32)
    return ((signal - signal.mean()) / np.sqrt(signal.var() + 1e-7)).astype(np.float32)


def _run_encoder(model: Any, hidden: Any, mask: Any, compute: Any) -> None:
    """The transformer encoder; the layers' outputs are captured by the hooks.

    The encoder's own forward turns a padding mask into a [B, 1, T, T] boolean mask, which
    PyTorch's attention kernels handle much slower than a [B, 1, 1, T] additive one (CPU: 80
    vs 60 ms per layer for 8 x 210 frames; no mask: 55). So for the families whose encoder is
    (zero padded frames) -> positional conv -> [LayerNorm] -> layers, the same steps run here
    with the additive mask; WavLM (its own attention with a key padding mask) runs its encoder.
    """
    import torch

    encoder = model.encoder
    if model.config.model_type == "wavlm":
        encoder(hidden, attention_mask=mask)
        return
    bias = None
    if mask is not None:
        hidden = hidden.masked_fill(~mask[:, :, None], 0.0)
        dtype = compute if compute != torch.float32 else hidden.dtype
        bias = torch.zeros(mask.shape, dtype=dtype, device=hidden.device)
        bias = bias.masked_fill_(~mask, torch.finfo(dtype).min)[:, None, None, :]
    hidden = hidden + encoder.pos_conv_embed(hidden)
    if not getattr(model.config, "do_stable_layer_norm", False):
        hidden = encoder.layer_norm(hidden)
    hidden = encoder.dropout(hidden)
    for layer in encoder.layers:
        hidden = layer(hidden, attention_mask=bias)
        if isinstance(hidden, tuple):
            hidden = hidden[0]


class _StageClock:
    """Busy seconds per stage for profiling; a no-op unless a callback is set."""

    def __init__(self, callback: Callable[[str, float], None] | None, device: Any) -> None:
        self.enabled = callback is not None
        self._callback, self._device = callback, device
        self._last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        if not self.enabled:
            return
        if self._device is not None:
            import torch

            torch.cuda.synchronize(self._device)
        now = time.perf_counter()
        self._callback(stage, now - self._last)  # type: ignore[misc]
        self._last = now


def _encode_audio(model: Any, inputs: Any, lengths: Sequence[int], ragged: bool) -> Any:
    """The HF CNN feature encoder with GroupNorm statistics over valid samples only.

    Returns:
        Features [batch, frames, conv_dim].
    """
    from torch import nn

    hidden = inputs[:, None, :]
    valid = list(lengths)
    for conv_layer in model.feature_extractor.conv_layers:
        norm = getattr(conv_layer, "layer_norm", None)
        kernel, stride = conv_layer.conv.kernel_size[0], conv_layer.conv.stride[0]
        valid = [(n - kernel) // stride + 1 for n in valid]
        if isinstance(norm, nn.GroupNorm) and ragged:
            hidden = conv_layer.conv(hidden)
            hidden = _masked_group_norm(hidden, valid, norm)
            hidden = conv_layer.activation(hidden)
        else:
            # LayerNorm over channels and no norm are per frame: padding cannot leak.
            hidden = conv_layer(hidden)
    return hidden.transpose(1, 2)


def _masked_group_norm(hidden: Any, valid: Sequence[int], norm: Any) -> Any:
    """GroupNorm with statistics over the first `valid[b]` frames of row b (any number of groups).

    Computed in float32 (as autocast does for group_norm): per row, two passes over its valid
    frames (mean, then the norm of the deviations: no cancellation), then one fused
    scale-and-shift over the whole batch. Padded frames get finite values that no valid output
    depends on.
    """
    import torch

    batch, channels, _ = hidden.shape
    groups = norm.num_groups
    values = hidden.float()
    means, deviations = [], []
    for b, count in enumerate(valid):
        rows = values[b, :, :count].reshape(groups, -1)
        mean = rows.mean(dim=-1, keepdim=True)
        means.append(mean[:, 0])
        deviations.append(torch.linalg.vector_norm(rows - mean, dim=-1))
    per_group = channels // groups
    counts = torch.tensor([count * per_group for count in valid], dtype=torch.float32, device=values.device)
    var = torch.stack(deviations).square() / counts[:, None]  # [batch, groups]
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(per_group, dim=1)  # [batch, channels]
    mean = torch.stack(means).repeat_interleave(per_group, dim=1)
    if norm.affine:
        scale = scale * norm.weight.float()[None, :]
        shift = norm.bias.float()[None, :] - mean * scale
    else:
        shift = -mean * scale
    return torch.addcmul(shift[:, :, None], values, scale[:, :, None])
