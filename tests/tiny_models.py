"""Tiny random wav2vec 2.0 models for fast, offline tests.

`save_tiny_wav2vec2` writes a Hugging Face `save_pretrained` directory shaped like
wav2vec2-base (group-norm CNN with the real kernels/strides, post-layer-norm transformer) but a
few thousand parameters wide. `save_tiny_fairseq_checkpoint` writes the same weights in the
original fairseq checkpoint format (pre-trained or CTC fine-tuned), built by inverting the
fairseq -> HF key mapping, so conversion can be tested without fairseq.
"""

from __future__ import annotations

import re
from argparse import Namespace
from pathlib import Path
from typing import Any

import torch

__all__ = ["FAMILY_VARIANTS", "save_tiny_upstream", "save_tiny_wav2vec2", "save_tiny_fairseq_checkpoint", "tiny_hf_model", "tiny_upstream_model"]

_CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)
_CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)


def tiny_hf_model(
    *,
    num_layers: int = 2,
    hidden: int = 32,
    heads: int = 2,
    intermediate: int = 48,
    conv_dim: int = 16,
    pos_kernel: int = 16,
    pos_groups: int = 4,
    feat_extract_norm: str = "group",
    stable_layer_norm: bool = False,
    seed: int = 0,
) -> Any:
    """A random `transformers.Wav2Vec2Model` (eval mode) with non-trivial norm parameters."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        conv_dim=[conv_dim] * len(_CONV_KERNEL),
        conv_kernel=list(_CONV_KERNEL),
        conv_stride=list(_CONV_STRIDE),
        conv_bias=feat_extract_norm == "layer",
        feat_extract_norm=feat_extract_norm,
        do_stable_layer_norm=stable_layer_norm,
        num_conv_pos_embeddings=pos_kernel,
        num_conv_pos_embedding_groups=pos_groups,
        layer_norm_eps=1e-5,
    )
    return _random_model(Wav2Vec2Model, config, seed)


def _random_model(model_class: Any, config: Any, seed: int) -> Any:
    """A seeded random model, eval mode, with perturbed norm (and WavLM position-bias) weights.

    Norm scales/shifts default to 1/0 and WavLM's gate to constants: perturbed, swapped or
    dropped weights show in the hidden states.
    """
    torch.manual_seed(seed)
    model = model_class(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
            elif "norm" in name and name.endswith("bias"):
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
            elif "rel_attn_embed" in name or "gru_rel_pos" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    return model


# (family, feature-encoder norm, stable layer norm): the shapes of every supported upstream
# (wav2vec2/HuBERT/WavLM base = group norm, post-LN; large = layer norm, pre-LN; data2vec-audio
# = layer norm always, with a stack of positional convolutions).
FAMILY_VARIANTS = (
    ("wav2vec2", "group", False),
    ("wav2vec2", "layer", True),
    ("hubert", "group", False),
    ("hubert", "layer", True),
    ("wavlm", "group", False),
    ("wavlm", "layer", True),
    ("data2vec", "layer", False),
)


def tiny_upstream_model(
    family: str,
    *,
    feat_extract_norm: str = "group",
    stable_layer_norm: bool = False,
    num_layers: int = 2,
    hidden: int = 32,
    seed: int = 0,
) -> Any:
    """A random model of one family (wav2vec2, hubert, wavlm, data2vec), eval mode.

    Norm scales and shifts are perturbed, and so are WavLM's relative-position-bias
    embeddings and gate, so that any dropped or mis-mapped weights change the hidden states.
    """
    import transformers

    common = dict(
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=48,
        conv_dim=[16] * len(_CONV_KERNEL),
        conv_kernel=list(_CONV_KERNEL),
        conv_stride=list(_CONV_STRIDE),
        conv_bias=feat_extract_norm == "layer",
        num_conv_pos_embedding_groups=4,
        layer_norm_eps=1e-5,
    )
    if family == "wav2vec2":
        return tiny_hf_model(num_layers=num_layers, hidden=hidden, feat_extract_norm=feat_extract_norm,
                             stable_layer_norm=stable_layer_norm, seed=seed)
    if family == "hubert":
        config = transformers.HubertConfig(**common, num_conv_pos_embeddings=16, feat_extract_norm=feat_extract_norm,
                                           do_stable_layer_norm=stable_layer_norm, feat_proj_layer_norm=True)
        model_class = transformers.HubertModel
    elif family == "wavlm":
        config = transformers.WavLMConfig(**common, num_conv_pos_embeddings=16, feat_extract_norm=feat_extract_norm,
                                          do_stable_layer_norm=stable_layer_norm, num_buckets=32, max_bucket_distance=64)
        model_class = transformers.WavLMModel
    elif family == "data2vec":
        # num_conv_pos_embeddings is the number of positional conv layers here (5 in the real models).
        config = transformers.Data2VecAudioConfig(**common, num_conv_pos_embeddings=3, conv_pos_kernel_size=5)
        model_class = transformers.Data2VecAudioModel
    else:
        raise ValueError(f"unknown family {family!r}")
    return _random_model(model_class, config, seed)


def save_tiny_upstream(directory: str | Path, family: str, **options: Any) -> Path:
    """Save a tiny random model of `family` with `save_pretrained` (see `tiny_upstream_model`).

    Returns:
        The directory.
    """
    directory = Path(directory)
    tiny_upstream_model(family, **options).save_pretrained(str(directory))
    return directory


def save_tiny_wav2vec2(directory: str | Path, *, num_layers: int = 2, hidden: int = 32, **options: Any) -> Path:
    """Save a tiny random HF Wav2Vec2Model (group-norm CNN like base) with `save_pretrained`.

    Args:
        directory: Output directory (created).
        num_layers: Transformer layers.
        hidden: Model width.
        **options: Further `tiny_hf_model` options (heads, conv_dim, feat_extract_norm, ...).

    Returns:
        The directory.
    """
    directory = Path(directory)
    model = tiny_hf_model(num_layers=num_layers, hidden=hidden, **options)
    model.save_pretrained(str(directory))
    return directory


def _fairseq_key(key: str, *, group_norm: bool) -> str | None:
    """fairseq Wav2Vec2Model key of an HF Wav2Vec2Model key (inverse of the converter)."""
    if key == "masked_spec_embed":
        return "mask_emb"
    if m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.conv\.(\w+)", key):
        return f"feature_extractor.conv_layers.{m[1]}.0.{m[2]}"
    if m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(\w+)", key):
        return f"feature_extractor.conv_layers.{m[1]}.2.{m[2]}" if group_norm else f"feature_extractor.conv_layers.{m[1]}.2.1.{m[2]}"
    if m := re.fullmatch(r"feature_projection\.projection\.(\w+)", key):
        return f"post_extract_proj.{m[1]}"
    if m := re.fullmatch(r"feature_projection\.layer_norm\.(\w+)", key):
        return f"layer_norm.{m[1]}"
    pos = {
        "encoder.pos_conv_embed.conv.parametrizations.weight.original0": "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv_embed.conv.parametrizations.weight.original1": "encoder.pos_conv.0.weight_v",
        "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv.0.weight_v",
        "encoder.pos_conv_embed.conv.bias": "encoder.pos_conv.0.bias",
    }
    if key in pos:
        return pos[key]
    if key.startswith("encoder.layer_norm."):
        return key
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
        rename = {
            "attention.q_proj": "self_attn.q_proj",
            "attention.k_proj": "self_attn.k_proj",
            "attention.v_proj": "self_attn.v_proj",
            "attention.out_proj": "self_attn.out_proj",
            "layer_norm": "self_attn_layer_norm",
            "feed_forward.intermediate_dense": "fc1",
            "feed_forward.output_dense": "fc2",
            "final_layer_norm": "final_layer_norm",
        }
        return f"encoder.layers.{m[1]}.{rename[m[2]]}.{m[3]}"
    raise KeyError(key)


def save_tiny_fairseq_checkpoint(
    path: str | Path,
    *,
    source_dir: str | Path | None = None,
    finetuned: bool = False,
    config_style: str = "args",
    extra: dict[str, Any] | None = None,
    normalize: bool | None = None,
    **options: Any,
) -> Path:
    """Write a fairseq-format wav2vec 2.0 checkpoint holding a tiny HF model's weights.

    Args:
        path: Output `.pt` file.
        source_dir: A `save_tiny_wav2vec2` directory whose weights to use; None builds a new
            tiny model from `options`.
        finetuned: Write a CTC fine-tuned checkpoint (keys under `w2v_encoder.w2v_model.`, a
            `w2v_encoder.proj` output layer, architecture in `w2v_args`).
        config_style: "args" (argparse.Namespace, old fairseq) or "cfg" (plain dict, hydra era).
        extra: More top-level entries for the checkpoint dict (e.g. an object to refuse).
        normalize: The training task's ``normalize`` (waveform normalisation) to record: in
            ``args`` (args style) or ``cfg.task`` (cfg style); None records none.
        **options: `tiny_hf_model` options when `source_dir` is None.

    Returns:
        The checkpoint path.
    """
    from transformers import Wav2Vec2Model

    model = Wav2Vec2Model.from_pretrained(str(source_dir)) if source_dir is not None else tiny_hf_model(**options)
    config = model.config
    group_norm = config.feat_extract_norm == "group"
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        state[_fairseq_key(key, group_norm=group_norm)] = value.clone()
    # Pre-training heads that the converter must ignore.
    state["quantizer.vars"] = torch.randn(1, 8, 4)
    state["project_q.weight"] = torch.randn(4, 4)
    state["final_proj.weight"] = torch.randn(4, config.hidden_size)
    layers = " + ".join(f"[({d}, {k}, {s})]" for d, k, s in zip(config.conv_dim, config.conv_kernel, config.conv_stride))
    arch = {
        "arch": "wav2vec2",
        "conv_feature_layers": layers,
        "extractor_mode": "default" if group_norm else "layer_norm",
        "encoder_layers": config.num_hidden_layers,
        "encoder_embed_dim": config.hidden_size,
        "encoder_ffn_embed_dim": config.intermediate_size,
        "encoder_attention_heads": config.num_attention_heads,
        "activation_fn": "gelu",
        "conv_pos": config.num_conv_pos_embeddings,
        "conv_pos_groups": config.num_conv_pos_embedding_groups,
        "conv_bias": bool(config.conv_bias),
        "layer_norm_first": bool(config.do_stable_layer_norm),
        "dropout": 0.1,
    }
    task = {} if normalize is None else {"normalize": normalize}
    if finetuned:
        state = {f"w2v_encoder.w2v_model.{k}": v for k, v in state.items() if not k.startswith(("quantizer", "project_q", "final_proj"))}
        state["w2v_encoder.proj.weight"] = torch.randn(30, config.hidden_size)
        state["w2v_encoder.proj.bias"] = torch.randn(30)
        if config_style == "args":
            meta: dict[str, Any] = {"args": Namespace(arch="wav2vec_ctc", w2v_path="/x/wav2vec_small.pt",
                                                      w2v_args=Namespace(**arch, **task), **task)}
        else:
            meta = {"cfg": {"model": {"_name": "wav2vec_ctc", "w2v_args": {"model": {"_name": "wav2vec2", **arch}}},
                            "task": task}}
    elif config_style == "args":
        meta = {"args": Namespace(**arch, **task)}
    else:
        meta = {"cfg": {"model": {"_name": "wav2vec2", **arch}, "task": {"sample_rate": 16000, **task}}}
    checkpoint = {
        **meta,
        "model": state,
        "optimizer_history": [{"criterion_name": "Wav2vecCriterion", "num_updates": 400000}],
        "extra_state": {"epoch": 10, "previous_training_time": 1.5},
        "last_optimizer_state": None,
        **(extra or {}),
    }
    path = Path(path)
    torch.save(checkpoint, str(path))
    return path
