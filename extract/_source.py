"""What a resolved speech encoder is: its family (``FAMILIES``), where its files are and what they hold
(:class:`ModelSource`, whose provenance a feature's config records, with the sha256 of each weight
file), and the error of a model that cannot be found, read or used (:class:`ModelLoadError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from w2v2ser._common import EXIT_INPUT
from w2v2ser._files import file_sha256
from w2v2ser.store import W2v2serError

__all__ = ["FAMILIES", "ModelLoadError", "ModelSource", "architecture_of"]


# config.json `model_type` -> (family = feature name, transformers model class). The family is
# the name the feature gets in the store and in selections (e.g. `hubert:all`).
FAMILIES: dict[str, tuple[str, str]] = {
    "wav2vec2": ("wav2vec2", "Wav2Vec2Model"),
    "hubert": ("hubert", "HubertModel"),
    "wavlm": ("wavlm", "WavLMModel"),
    "data2vec-audio": ("data2vec", "Data2VecAudioModel"),
}


class ModelLoadError(W2v2serError):
    """A speech encoder model could not be found, read or converted, or does not fit its class."""

    exit_code = EXIT_INPUT  # the model given cannot be used: nothing ran, pass another
    #: True when a hub model is not in the local cache and the hub cannot be reached: `w2v2ser run`
    #: skips its store; any other cause (a damaged local model, a wrong path or id) is the user's to fix.
    offline: bool = False


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, resolved to files on disk.

    Attributes:
        kind: "hub", "local" or "fairseq".
        model_type: config.json `model_type` ("wav2vec2", "hubert", "wavlm", "data2vec-audio").
        requested: the string the user passed (hub id or path).
        path: resolved local directory (hub/local) or checkpoint file (fairseq).
        revision: requested hub revision, if any.
        commit_hash: hub commit of the cached snapshot, if known.
        weights_sha256: file name -> sha256 hex digest of every weight file read.
        hf_config: the `transformers` config (of the family's own class) describing the architecture.
    """

    kind: str
    model_type: str
    requested: str
    path: str
    revision: str | None
    commit_hash: str | None
    weights_sha256: Mapping[str, str]
    hf_config: Any = field(repr=False, compare=False)
    #: What the model's own files say about its input: preprocessor_config.json ``do_normalize``
    #: (hub, local) or the checkpoint's ``normalize`` (fairseq); None when they say nothing.
    stated_normalize: bool | None = None

    @property
    def family(self) -> str:
        """Feature name of this model's family: wav2vec2, hubert, wavlm or data2vec."""
        return FAMILIES[self.model_type][0]

    @property
    def model_class(self) -> str:
        """The `transformers` class that loads it."""
        return FAMILIES[self.model_type][1]

    def pretrained_normalize(self) -> bool:
        """Whether the model was pre-trained on waveforms normalised to zero mean and unit variance
        per utterance: as its own files say, else as its feature encoder tells (fairseq pairs
        normalised input with a LayerNorm encoder, the raw waveform with a GroupNorm one)."""
        if self.stated_normalize is not None:
            return self.stated_normalize
        # data2vec-audio's config has no feat_extract_norm: its encoder is always LayerNorm.
        default = "layer" if self.model_type == "data2vec-audio" else "group"
        return str(getattr(self.hf_config, "feat_extract_norm", default)) == "layer"

    def provenance(self) -> dict[str, Any]:
        """JSON-ready description of the source for a feature's recorded config."""
        return {
            "source": self.kind,
            "family": self.family,
            "model_type": self.model_type,
            "model_class": self.model_class,
            "requested": self.requested,
            "resolved_path": self.path,
            "revision": self.revision,
            "commit_hash": self.commit_hash,
            "weights_sha256": dict(self.weights_sha256),
            "architecture": architecture_of(self.hf_config),
        }


def architecture_of(hf_config: Any) -> dict[str, Any]:
    """The architecture numbers of a speech encoder config that change the features.

    Common keys for every family, plus the family's own where it has them (HuBERT's
    feat_proj_layer_norm, WavLM's relative position buckets, data2vec-audio's positional
    conv kernel).
    """
    out: dict[str, Any] = {
        "model_type": str(getattr(hf_config, "model_type", "wav2vec2")),
        "hidden_size": int(hf_config.hidden_size),
        "num_hidden_layers": int(hf_config.num_hidden_layers),
        "num_attention_heads": int(hf_config.num_attention_heads),
        "intermediate_size": int(hf_config.intermediate_size),
        "conv_dim": [int(v) for v in hf_config.conv_dim],
        "conv_kernel": [int(v) for v in hf_config.conv_kernel],
        "conv_stride": [int(v) for v in hf_config.conv_stride],
        "conv_bias": bool(hf_config.conv_bias),
        "feat_extract_norm": str(getattr(hf_config, "feat_extract_norm", "layer")),
        "do_stable_layer_norm": bool(getattr(hf_config, "do_stable_layer_norm", False)),
        "num_conv_pos_embeddings": int(hf_config.num_conv_pos_embeddings),
        "num_conv_pos_embedding_groups": int(hf_config.num_conv_pos_embedding_groups),
        "hidden_act": str(hf_config.hidden_act),
    }
    for key in ("feat_proj_layer_norm", "num_buckets", "max_bucket_distance", "conv_pos_kernel_size"):
        if hasattr(hf_config, key):
            value = getattr(hf_config, key)
            out[key] = bool(value) if isinstance(value, bool) else int(value)
    return out


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def _weights_sha256(path: Path) -> str:
    """file_sha256 of a weight file, kept per (path, inode, size, mtime, ctime) for the process: `w2v2ser run`
    checks the weights of every complete store (once per store and corpus) on each rerun, and a large
    model's weights take seconds to hash. A file replaced or rewritten is hashed again (the ctime changes
    with any write, also one that keeps the size and sets the mtime back, as `rsync --inplace -t` does)."""
    info = path.stat()
    key = (str(path.resolve()), info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if key not in _DIGESTS:
        if path.suffix == ".safetensors":
            _check_safetensors(path)
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


def _check_safetensors(path: Path) -> None:
    """Read a .safetensors file's header (not its tensors): a truncated file failed only when the model
    was loaded, inside extraction, once per audio file, where it can fail once, before any store."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except Exception as error:  # noqa: BLE001 - safetensors' own SafetensorError, or an OSError
        raise ModelLoadError(
            f"model weight file {str(path)!r} cannot be read ({type(error).__name__}: {error}); it is damaged "
            f"or incomplete (an interrupted copy or download?). Copy or download the model again, or save it "
            f"again with save_pretrained()"
        ) from None
