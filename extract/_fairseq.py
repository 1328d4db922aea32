"""Original fairseq wav2vec 2.0 checkpoints: read safely (``weights_only`` with an allow-list of what they
pickle), their architecture converted to a ``Wav2Vec2Config`` and their weights mapped onto the
``transformers`` ``Wav2Vec2Model``. A checkpoint of another family, or whose weights do not fit the
architecture it records, is refused.
"""

from __future__ import annotations

import argparse
import ast
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._source import ModelLoadError, ModelSource, _weights_sha256

__all__ = ["map_fairseq_key", "read_fairseq_checkpoint"]


_FINETUNED_PREFIX = "w2v_encoder.w2v_model."
# Keys of fairseq checkpoints that have no counterpart in a bare Wav2Vec2Model: pre-training heads
# (quantiser, target projections) and the CTC output layer of ASR fine-tuned models.
_IGNORED_FAIRSEQ = re.compile(r"^(quantizer\.|project_q\.|final_proj\.|project_inp\.|target_glu\.|w2v_encoder\.proj\.)")
_FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2",
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "conv_bias": False,
    "layer_norm_first": False,
}


# --------------------------------------------------------------------------- fairseq checkpoints


def _fairseq_safe_globals() -> list[Any]:
    """What fairseq checkpoints pickle besides tensors and containers: the argparse arguments and
    numpy scalars in training statistics. Nothing that can run code on load."""
    import numpy as np

    allowed: list[Any] = [argparse.Namespace, np.dtype, np.ndarray]
    core = getattr(np, "_core", None) or np.core
    allowed += [core.multiarray.scalar, core.multiarray._reconstruct]
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(np, "dtypes") and hasattr(np.dtypes, name):
            allowed.append(getattr(np.dtypes, name))
    return allowed


def read_fairseq_checkpoint(path: Path) -> dict[str, Any]:
    """`torch.load` a fairseq checkpoint with `weights_only=True` and an explicit allow-list.

    Raises:
        ModelLoadError: unreadable file, or it pickles an object outside the allow-list.
    """
    import torch

    try:
        with torch.serialization.safe_globals(_fairseq_safe_globals()):
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelLoadError(
            f"refusing to load fairseq checkpoint {str(path)!r}: it contains a Python object outside "
            f"the allow-list (argparse.Namespace, numpy scalars/arrays, tensors, containers), and "
            f"unpickling arbitrary objects could run code. Convert it with a trusted tool to a "
            f"`save_pretrained` directory instead.{_unsafe_globals_hint(path, error)}"
        ) from error
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise ModelLoadError(f"cannot read fairseq checkpoint {str(path)!r}: {error}") from error
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
        raise ModelLoadError(
            f"{str(path)!r} is not a fairseq checkpoint: expected a dict with a 'model' state dict "
            f"and 'args' or 'cfg'. Pass a Hugging Face directory or hub id instead."
        )
    return dict(checkpoint)


def _unsafe_globals_hint(path: Path, error: Exception) -> str:
    """Name the offending globals (torch's own message is long and generic)."""
    import torch

    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _fairseq_safe_globals()}
    try:
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if n not in allowed]
    except Exception:  # best effort: fall back to torch's own words
        names = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    return f" Objects outside the allow-list: {names}." if names else ""


def _as_mapping(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, argparse.Namespace):
        return vars(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    return {}


def _fairseq_arch(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture options from `args` (old Namespace) or `cfg` (dict); fine-tuned models keep
    the pre-training options in `w2v_args`."""
    top = _as_mapping(checkpoint.get("args")) or _as_mapping(_as_mapping(checkpoint.get("cfg")).get("model"))
    nested = top.get("w2v_args")
    if nested is not None:
        nested_map = _as_mapping(nested)
        top = {**top, **(_as_mapping(nested_map.get("model")) or nested_map)}
    return {key: top.get(key, default) for key, default in _FAIRSEQ_DEFAULTS.items()} | {
        "_found": bool(top)
    }


def _fairseq_arch_names(checkpoint: Mapping[str, Any]) -> list[str]:
    """The architecture names a fairseq checkpoint records (`args.arch`, `cfg.model._name`, and
    those of a fine-tuned model's pre-trained `w2v_args`), e.g. ["wav2vec_ctc", "wav2vec2"]."""
    top = _as_mapping(checkpoint.get("args")) or _as_mapping(_as_mapping(checkpoint.get("cfg")).get("model"))
    nested = _as_mapping(top.get("w2v_args"))
    nested = _as_mapping(nested.get("model")) or nested
    names = [node.get("arch") or node.get("_name") for node in (top, nested)]  # a None arch names nothing
    return [name for name in names if isinstance(name, str) and name]


def _parse_conv_layers(spec: str, path: Path) -> list[tuple[int, int, int]]:
    """Evaluate fairseq's `conv_feature_layers` expression (lists, tuples, ints, + and *) safely."""

    def evaluate(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return evaluate(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.List | ast.Tuple):
            items = [evaluate(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            left, right = evaluate(node.left), evaluate(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported syntax {ast.dump(node)[:60]}")

    try:
        layers = evaluate(ast.parse(str(spec), mode="eval"))
        return [(int(d), int(k), int(s)) for d, k, s in layers]
    except (SyntaxError, ValueError, TypeError) as error:
        raise ModelLoadError(
            f"fairseq checkpoint {str(path)!r}: cannot parse conv_feature_layers={spec!r} ({error}); "
            f"expected e.g. '[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2'"
        ) from error


def _hf_config_from_fairseq(arch: Mapping[str, Any], path: Path) -> Any:
    from transformers import Wav2Vec2Config as HFConfig

    conv = _parse_conv_layers(arch["conv_feature_layers"], path)
    mode = str(arch["extractor_mode"])
    if mode not in ("default", "layer_norm"):
        raise ModelLoadError(f"fairseq checkpoint {str(path)!r}: unknown extractor_mode {mode!r}")
    stable = bool(arch["layer_norm_first"])
    return HFConfig(
        hidden_size=int(arch["encoder_embed_dim"]),
        num_hidden_layers=int(arch["encoder_layers"]),
        num_attention_heads=int(arch["encoder_attention_heads"]),
        intermediate_size=int(arch["encoder_ffn_embed_dim"]),
        hidden_act=str(arch["activation_fn"]),
        conv_dim=[d for d, _, _ in conv],
        conv_kernel=[k for _, k, _ in conv],
        conv_stride=[s for _, _, s in conv],
        conv_bias=bool(arch["conv_bias"]),
        feat_extract_norm="group" if mode == "default" else "layer",
        do_stable_layer_norm=stable,
        num_conv_pos_embeddings=int(arch["conv_pos"]),
        num_conv_pos_embedding_groups=int(arch["conv_pos_groups"]),
        layer_norm_eps=1e-5,  # fairseq's torch LayerNorm default
    )


# Keys of WavLM's own config (relative position buckets, gated relative position bias).
_WAVLM_CONFIG_KEYS = ("relative_position_embedding", "num_buckets", "gru_rel_pos")


def _resolve_fairseq(path: Path, *, requested: str) -> ModelSource:
    checkpoint = read_fairseq_checkpoint(path)
    arch = _fairseq_arch(checkpoint)
    names = _fairseq_arch_names(checkpoint)
    if not arch.pop("_found"):
        if any(key in _as_mapping(checkpoint.get("cfg")) for key in _WAVLM_CONFIG_KEYS):
            names = ["wavlm"]  # unilm's WavLM .pt: {"cfg": a flat WavLMConfig, "model": state dict}
        else:
            raise ModelLoadError(
                f"fairseq checkpoint {str(path)!r} has no architecture in 'args' or 'cfg.model': it is "
                f"not a wav2vec 2.0 checkpoint as fairseq saves one. Pass a wav2vec 2.0 checkpoint such as "
                f"wav2vec_small.pt, or a `save_pretrained` directory or Hugging Face hub id as --model."
            )
    other = next((name for name in names if not name.startswith("wav2vec")), None)
    if other is not None:
        family = next((label for mark, label in (("hubert", "HuBERT"), ("data2vec", "data2vec-audio"),
                                                 ("wavlm", "WavLM")) if mark in other), other)
        raise ModelLoadError(
            f"fairseq checkpoint {str(path)!r} is a {family} model (fairseq architecture {other!r}), not "
            f"wav2vec 2.0: only wav2vec 2.0 fairseq checkpoints are converted (its weights would be read as "
            f"wav2vec 2.0 and stored under the wrong family). Convert it to a `save_pretrained` directory "
            f"with transformers' conversion script for that family, or use its Hugging Face hub id, and "
            f"pass that as --model with --features of its family (hubert, wavlm, data2vec)."
        )
    return ModelSource(
        kind="fairseq",
        model_type="wav2vec2",
        requested=requested,
        path=str(path.resolve()),
        revision=None,
        commit_hash=None,
        weights_sha256={path.name: _weights_sha256(path)},
        hf_config=_hf_config_from_fairseq(arch, path),
        stated_normalize=_fairseq_normalize(checkpoint),
    )


def _fairseq_normalize(checkpoint: Mapping[str, Any]) -> bool | None:
    """The ``normalize`` setting a fairseq checkpoint was trained with: ``cfg.task`` (hydra),
    ``args`` (older Namespace), or the pre-training's ``w2v_args`` of a fine-tuned model."""
    cfg = _as_mapping(checkpoint.get("cfg"))
    args = _as_mapping(checkpoint.get("args"))
    nested = _as_mapping(args.get("w2v_args") or _as_mapping(cfg.get("model")).get("w2v_args"))
    for place in (_as_mapping(cfg.get("task")), args, _as_mapping(nested.get("task")), nested):
        value = place.get("normalize")
        if isinstance(value, bool):
            return value
    return None


_LAYER_RULES: tuple[tuple[str, str], ...] = (
    ("self_attn.q_proj.", "attention.q_proj."),
    ("self_attn.k_proj.", "attention.k_proj."),
    ("self_attn.v_proj.", "attention.v_proj."),
    ("self_attn.out_proj.", "attention.out_proj."),
    ("self_attn_layer_norm.", "layer_norm."),
    ("fc1.", "feed_forward.intermediate_dense."),
    ("fc2.", "feed_forward.output_dense."),
    ("final_layer_norm.", "final_layer_norm."),
)


def map_fairseq_key(key: str, *, group_norm: bool, pos_conv_keys: Mapping[str, str]) -> str | None:
    """HF `Wav2Vec2Model` state-dict key for a fairseq key (prefix already removed).

    Returns None for keys that are deliberately ignored; raises KeyError for unknown keys.
    """
    if _IGNORED_FAIRSEQ.match(key):
        return None
    if key == "mask_emb":
        return "masked_spec_embed"
    if match := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(0|2|2\.1)\.(weight|bias)", key):
        layer, part, kind = match.groups()
        if part == "0":
            return f"feature_extractor.conv_layers.{layer}.conv.{kind}"
        if (part == "2" and group_norm and layer == "0") or (part == "2.1" and not group_norm):
            return f"feature_extractor.conv_layers.{layer}.layer_norm.{kind}"
        raise KeyError(key)
    if match := re.fullmatch(r"(post_extract_proj|layer_norm)\.(weight|bias)", key):
        module = "projection" if match.group(1) == "post_extract_proj" else "layer_norm"
        return f"feature_projection.{module}.{match.group(2)}"
    if match := re.fullmatch(r"encoder\.pos_conv\.0\.(.+)", key):
        return pos_conv_keys[match.group(1)]
    if match := re.fullmatch(r"encoder\.layer_norm\.(weight|bias)", key):
        return key
    if match := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key):
        layer, rest = match.groups()
        for old, new in _LAYER_RULES:
            if rest.startswith(old) and rest[len(old):] in ("weight", "bias"):
                return f"encoder.layers.{layer}.{new}{rest[len(old):]}"
    raise KeyError(key)


def _pos_conv_keys(model_keys: set[str]) -> dict[str, str]:
    """fairseq's weight-normed positional conv (old weight_g/weight_v or new parametrizations)
    -> whichever naming this transformers/torch version uses."""
    base = "encoder.pos_conv_embed.conv."
    if f"{base}parametrizations.weight.original0" in model_keys:
        g, v = f"{base}parametrizations.weight.original0", f"{base}parametrizations.weight.original1"
    else:
        g, v = f"{base}weight_g", f"{base}weight_v"
    return {
        "weight_g": g,
        "weight_v": v,
        "parametrizations.weight.original0": g,
        "parametrizations.weight.original1": v,
        "bias": f"{base}bias",
    }


def _load_fairseq_weights(model: Any, path: Path) -> None:
    state = read_fairseq_checkpoint(path)["model"]
    finetuned = any(key.startswith(_FINETUNED_PREFIX) for key in state)
    target = model.state_dict()
    pos_conv = _pos_conv_keys(set(target))
    group_norm = model.config.feat_extract_norm == "group"
    mapped: dict[str, Any] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        short = key[len(_FINETUNED_PREFIX):] if finetuned and key.startswith(_FINETUNED_PREFIX) else key
        if finetuned and short == key and not _IGNORED_FAIRSEQ.match(key):
            unexpected.append(key)
            continue
        try:
            new = map_fairseq_key(short, group_norm=group_norm, pos_conv_keys=pos_conv)
        except KeyError:
            unexpected.append(key)
            continue
        if new is None or (new == "masked_spec_embed" and new not in target):
            continue
        if new not in target or tuple(target[new].shape) != tuple(value.shape):
            expected = tuple(target[new].shape) if new in target else "no such parameter"
            raise ModelLoadError(
                f"fairseq checkpoint {str(path)!r}: {key} has shape {tuple(value.shape)} but the "
                f"architecture read from its args/cfg expects {new} {expected}; the args do not match the weights"
            )
        mapped[new] = value.float()
    missing = sorted(k for k in target if k not in mapped and k != "masked_spec_embed")
    if unexpected or missing:
        raise ModelLoadError(
            f"fairseq checkpoint {str(path)!r} does not fit a wav2vec 2.0 model: "
            f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}, "
            f"missing weights {missing[:8]}{' ...' if len(missing) > 8 else ''}. Expected a wav2vec 2.0 "
            f"pre-trained or CTC fine-tuned checkpoint (keys like feature_extractor.conv_layers.*, "
            f"post_extract_proj.*, encoder.layers.*, optionally prefixed {_FINETUNED_PREFIX!r})."
        )
    model.load_state_dict(mapped, strict=False)
