"""Resolve and load self-supervised speech encoders (wav2vec 2.0, HuBERT, WavLM, data2vec-audio).

Models come from the Hugging Face hub, a local `save_pretrained` directory or (wav2vec 2.0 only)
an original fairseq checkpoint. Resolution (`resolve_model`) reads the architecture from the
model's own config.json (`model_type` picks the family) and hashes the weight files, so that a
feature's provenance can be recorded before any forward pass. Loading (`load_model`) builds the
family's own `transformers` class in float32, eval mode, and refuses weights that do not fit it
(a WavLM checkpoint read by the wav2vec 2.0 class would silently drop its position bias).
"""

from __future__ import annotations

import argparse
import ast
import os
import pickle
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from w2v2ser._common import EXIT_INPUT, file_sha256
from w2v2ser.store import W2v2serError

__all__ = ["FAMILIES", "ModelLoadError", "ModelSource", "resolve_model", "load_model", "architecture_of"]

# config.json `model_type` -> (family = feature name, transformers model class). The family is
# the name the feature gets in the store and in selections (e.g. `hubert:all`).
FAMILIES: dict[str, tuple[str, str]] = {
    "wav2vec2": ("wav2vec2", "Wav2Vec2Model"),
    "hubert": ("hubert", "HubertModel"),
    "wavlm": ("wavlm", "WavLMModel"),
    "data2vec-audio": ("data2vec", "Data2VecAudioModel"),
}
# Weights a bare encoder may lack or carry without changing its hidden states.
_IGNORABLE_KEYS = re.compile(r"^(masked_spec_embed|.*\.masked_spec_embed)$")

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PREPROCESSOR_FILE = "preprocessor_config.json"  # the feature extractor's settings (do_normalize)
_FAIRSEQ_SUFFIXES = (".pt", ".pth", ".ckpt")
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


# Where a model's files were found, not what they hold: config keys (by section) that name its location
# (``weights_sha256`` for its file names: the same digests, see ``same_weights``).
_LOCATION_KEYS = {"": ("model", "revision"), "upstream": ("model", "revision", "commit_hash", "weights_sha256"),
                  "provenance": ("source", "requested", "resolved_path", "revision", "commit_hash", "weights_sha256")}


def same_weights(mine: Any, theirs: Any) -> bool:
    """Whether two ``weights_sha256`` records (file name -> sha256) hold the same weights: equal, or
    one file each with the same digest (a fairseq .pt copied under another name)."""
    if not isinstance(mine, Mapping) or not isinstance(theirs, Mapping) or not mine:
        return False
    if len(mine) == len(theirs) == 1:
        return list(mine.values()) == list(theirs.values())
    return dict(mine) == dict(theirs)


def _as_before_families(config: Mapping[str, Any], recorded: Mapping[str, Any]) -> Mapping[str, Any]:
    """``config`` without the keys a wav2vec2 config gained with the upstream families, when
    ``recorded`` predates them (a format-1 store, upgraded): ``upstream``, and ``family``,
    ``model_type``, ``model_class`` and ``architecture.model_type`` of ``provenance``.

    Such a store could only hold wav2vec 2.0, so only a wav2vec2 model drops them; its weights and
    the rest of its architecture are still compared.
    """
    mine, theirs = config.get("provenance"), recorded.get("provenance")
    if ("upstream" in recorded or not isinstance(mine, Mapping) or not isinstance(theirs, Mapping)
            or "family" in theirs or mine.get("family") != "wav2vec2" or mine.get("model_type") != "wav2vec2"):
        return config
    provenance = {k: v for k, v in mine.items() if k not in _FAMILY_KEYS}
    if isinstance(mine.get("architecture"), Mapping) and "model_type" not in (theirs.get("architecture") or {}):
        provenance["architecture"] = {k: v for k, v in mine["architecture"].items() if k != "model_type"}
    return {**{k: v for k, v in config.items() if k != "upstream"}, "provenance": provenance}


# What a wav2vec2 config's provenance gained with the upstream families (see _as_before_families).
_FAMILY_KEYS = ("family", "model_type", "model_class")


def keep_recorded_location(config: Mapping[str, Any], recorded: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with the model location of ``recorded`` when both name the same weights.

    The same weights (equal sha256 and architecture) given by another spelling or from
    another folder (``tiny`` vs ``/abs/tiny``, a copy on the GPU machine) resume a store,
    which keeps the location it was made with; other weights keep theirs, and are refused.
    A wav2vec2 config is first put in the form of a ``recorded`` one written before the upstream
    families (:func:`_as_before_families`).
    """
    config = _as_before_families(config, recorded)
    mine, theirs = config.get("provenance") or {}, recorded.get("provenance") or {}
    same = (same_weights(mine.get("weights_sha256"), theirs.get("weights_sha256"))
            and mine.get("architecture") == theirs.get("architecture"))
    if not same:
        return dict(config)
    out = dict(config)
    for section, keys in _LOCATION_KEYS.items():
        source = recorded.get(section) if section else recorded
        if not isinstance(source, Mapping):
            continue
        values = {key: source[key] for key in keys if key in source}
        if section:
            out[section] = {**(out.get(section) or {}), **values}
        else:
            out.update(values)
    return out


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


def _fix_hint() -> str:
    return (
        "Pass instead a local directory written by `save_pretrained()` (Wav2Vec2Model, HubertModel, "
        "WavLMModel or Data2VecAudioModel), or the path "
        "of an original fairseq checkpoint (e.g. wav2vec_small.pt, wav2vec_small_960h.pt), or set "
        "HF_HOME to a Hugging Face cache that already holds the model."
    )


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


def resolve_model(model: str, *, revision: str | None = None) -> ModelSource:
    """Find a model's files, family and architecture without building it.

    Args:
        model: Hugging Face hub id, local `save_pretrained` directory or fairseq `.pt` file
            (wav2vec 2.0 only).
        revision: Hub branch, tag or commit (hub ids only).

    Returns:
        The resolved `ModelSource`.

    Raises:
        ModelLoadError: the model cannot be found, read or understood.
    """
    candidate = Path(model).expanduser()
    if candidate.is_dir():
        return _resolve_directory(candidate, requested=model, kind="local", revision=revision, commit=None)
    if candidate.is_file():
        return _resolve_fairseq(candidate, requested=model)
    looks_like_path = model.startswith(("/", ".", "~")) or model.endswith(_FAIRSEQ_SUFFIXES) or "\\" in model
    if looks_like_path or model.count("/") > 1:
        if candidate.parent.is_dir():
            raise _missing_in_folder(model, candidate)
        raise ModelLoadError(
            f"model {model!r} does not exist: expected a Hugging Face hub id such as "
            f"'facebook/wav2vec2-base', a local model directory or a fairseq checkpoint file. {_fix_hint()}"
        )
    if "/" not in model or not candidate.parent.is_dir():
        return _resolve_hub(model, revision=revision)
    # `facebook/wav2vec2-base` beside a folder `facebook` (`hf download ... --local-dir facebook/x`): the hub
    # id is looked up first. Only when it is neither cached nor on the hub is it a mistyped path
    # (`models/wav2vec2-typo` beside a folder `models`): it fails as missing, not as offline (a skip).
    # A gated model is on the hub: it is loaded, or its error says how to get access.
    if not hub_model_known(model):
        raise _missing_in_folder(model, candidate, hub=True)
    return _resolve_hub(model, revision=revision)


def hub_model_known(model_id: str) -> bool | None:
    """Whether ``model_id`` is a Hugging Face hub model: in the local cache, or on the hub (a gated
    one included: it is there, behind its terms). None when it is not cached and the hub cannot be
    asked (offline). ``--model`` and pipeline.yaml's ``model:`` both take a value whose folder part
    is a local folder (``facebook/x`` beside a folder ``facebook``) for a hub id only when this is True."""
    import huggingface_hub
    import huggingface_hub.constants as hub_constants
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        if isinstance(huggingface_hub.try_to_load_from_cache(model_id, "config.json"), str):
            return True
    except (HFValidationError, ValueError):  # not a valid repository id: a path
        return False
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    if offline or hub_constants.HF_HUB_OFFLINE or probe_hub() is not None:
        return None
    try:
        huggingface_hub.model_info(model_id)
    except GatedRepoError:
        return True
    except (RepositoryNotFoundError, HFValidationError):
        return False
    except Exception:  # noqa: BLE001 - no connection, a timeout, a server error: cannot tell
        return None
    return True


def _missing_in_folder(model: str, candidate: Path, *, hub: bool = False) -> ModelLoadError:
    """The error for a model path whose folder exists but has no such model (a typo)."""
    also = (" (nor is it a Hugging Face hub id found in the local cache or on the hub)" if hub else "")
    return ModelLoadError(
        f"model {model!r} does not exist: folder {str(candidate.parent)!r} has no {candidate.name!r}"
        f"{_folder_models(candidate.parent)}{also}. Fix the path. {_fix_hint()}"
    )


def _folder_models(folder: Path) -> str:
    """`` (it holds the models 'a', 'b')``: the model folders in ``folder``, where a typo is made."""
    try:
        names = sorted(p.name for p in folder.iterdir() if (p / "config.json").is_file() or p.suffix in _FAIRSEQ_SUFFIXES)
    except OSError:
        return ""
    shown = ", ".join(repr(name) for name in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f" (it holds the models {shown})" if names else " (it holds no model)"


_HUB_PROBED: list[str | None] = []  # the probe's outcome, once per process


def probe_hub() -> str | None:
    """One quick connection to the Hugging Face hub per process; None when it answers.

    When it fails, hub lookups use the local cache only (``HF_HUB_OFFLINE``, inherited by Dask
    workers started later): without this, each lookup on a machine without network retries
    five times with back-off, about 23 s and ten log lines per model, before failing the same
    way. Returns the failure, for the caller to report once.
    """
    if _HUB_PROBED:
        return _HUB_PROBED[0]
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        _HUB_PROBED.append(None)
        return None
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=5).close()
        _HUB_PROBED.append(None)
        return None
    except OSError as error:
        _HUB_PROBED.append(f"Hugging Face hub {endpoint} cannot be reached ({error})")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True  # already imported: it read the variable at import
    except ImportError:
        pass
    return _HUB_PROBED[0]


def _resolve_hub(model_id: str, *, revision: str | None) -> ModelSource:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    asked = f"hub model {model_id!r}" + (f" at revision {revision!r}" if revision else "")
    probe_hub()
    network = _network_error_types()  # httpx's are no OSError: they escaped as a raw traceback
    try:
        config_file = Path(hf_hub_download(model_id, "config.json", revision=revision))
    except LocalEntryNotFoundError as error:
        raise _offline(ModelLoadError(
            f"cannot load {asked}: it is not in the local Hugging Face cache and the hub "
            f"cannot be reached (offline, or HF_HUB_OFFLINE=1). {_fix_hint()} ({type(error).__name__})"
        )) from error
    except GatedRepoError as error:  # (a RepositoryNotFoundError: "no such model" sent users to check the id)
        raise ModelLoadError(
            f"cannot load {asked}: it is gated on the hub, which gives its files only to an account that has "
            f"accepted its terms. Accept them at https://huggingface.co/{model_id} (logged in), give this machine "
            f"that account's token (`hf auth login`, or the HF_TOKEN variable), then rerun. "
            f"({type(error).__name__}: {error})"
        ) from error
    except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as error:
        raise ModelLoadError(
            f"cannot load {asked}: the hub has no such model or revision. Check the id "
            f"(e.g. 'facebook/wav2vec2-base'). {_fix_hint()} ({type(error).__name__}: {error})"
        ) from error
    except (OSError, *network) as error:  # network failures (requests: OSError; httpx: not), a read-only cache
        failure = ModelLoadError(f"cannot load {asked}: {error}. {_fix_hint()}")
        raise (_offline(failure) if _network_error(error) else failure) from error
    weights: Path | None = None
    not_cached = False
    for name in _WEIGHT_FILES:
        try:
            weights = Path(hf_hub_download(model_id, name, revision=revision))
            break
        except LocalEntryNotFoundError:
            not_cached = True
        except EntryNotFoundError:
            continue
        except (OSError, *network) as error:  # the connection lost while the weights download, say
            failure = ModelLoadError(f"cannot load {asked}: {name}: {error}. {_fix_hint()}")
            raise (_offline(failure) if _network_error(error) else failure) from error
    if weights is None:
        error = ModelLoadError(
            f"cannot load {asked}: neither of {list(_WEIGHT_FILES)} is cached or "
            f"downloadable (sharded or TensorFlow-only repositories are not supported). {_fix_hint()}"
        )
        raise _offline(error) if not_cached else error
    try:  # the feature extractor's settings (waveform normalisation), when the repository has them
        hf_hub_download(model_id, PREPROCESSOR_FILE, revision=revision)
    except (EntryNotFoundError, LocalEntryNotFoundError):
        pass
    snapshot = config_file.parent
    return _resolve_directory(snapshot, requested=model_id, kind="hub", revision=revision, commit=snapshot.name)


def _network_error_types() -> tuple[type[BaseException], ...]:
    """The errors of a failed connection or transfer of the HTTP clients huggingface_hub uses:
    requests (before huggingface_hub 1.0; OSError subclasses) and httpx (since; not OSError)."""
    import importlib

    found: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    for module, names in (("requests", ("ConnectionError", "Timeout")), ("httpx", ("TransportError",)),
                          ("httpx2", ("TransportError",))):
        try:
            client = importlib.import_module(module)
        except ImportError:
            continue
        found += [getattr(client, name) for name in names if isinstance(getattr(client, name, None), type)]
    return tuple(found)


def _network_error(error: BaseException) -> bool:
    """Whether a hub lookup failed on the network (no connection, a timeout, a proxy or a server
    dropping it, a server error): the model is offline. A local cause (a read-only or full Hugging
    Face cache: PermissionError, ...) or a refusal (401, 403, 404) is the user's to fix."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    return isinstance(error, _network_error_types())


def _offline(error: ModelLoadError) -> ModelLoadError:
    """``error``, marked as a hub model that is neither cached nor reachable (see ``ModelLoadError.offline``)."""
    error.offline = True
    return error


def _resolve_directory(
    directory: Path, *, requested: str, kind: str, revision: str | None, commit: str | None
) -> ModelSource:
    if not (directory / "config.json").is_file():
        raise ModelLoadError(
            f"model directory {str(directory)!r} has no config.json: expected a directory "
            f"written by `save_pretrained()`. {_fix_hint()}"
        )
    weight_files = sorted(
        p for p in directory.iterdir() if p.name in _WEIGHT_FILES or re.match(r"^model-\d+-of-\d+\.safetensors$", p.name)
    )
    if not weight_files:
        raise ModelLoadError(
            f"model directory {str(directory)!r} has no weights: expected one of "
            f"{list(_WEIGHT_FILES)}. Save the model with `save_pretrained()`."
        )
    hf_config = read_hf_config(directory)
    # model.safetensors is preferred by from_pretrained, so hash only what it will read: it alone beside
    # stale shards (a folder saved over), whose clean copy was other weights; else the shards.
    safetensors = [p for p in weight_files if p.suffix == ".safetensors"]
    used = [p for p in safetensors if p.name == "model.safetensors"] or safetensors or weight_files
    return ModelSource(
        kind=kind,
        model_type=str(hf_config.model_type),
        requested=requested,
        path=str(directory.resolve()),
        revision=revision,
        commit_hash=commit,
        weights_sha256={p.name: _weights_sha256(p) for p in used},
        hf_config=hf_config,
        stated_normalize=_stated_normalize(directory / PREPROCESSOR_FILE),
    )


def _stated_normalize(file: Path) -> bool | None:
    """``do_normalize`` of a preprocessor_config.json (the feature extractor's default, True, when
    the file leaves it out); None without a readable file."""
    import json

    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = settings.get("do_normalize", True) if isinstance(settings, dict) else None
    return value if isinstance(value, bool) else None


def read_hf_config(directory: Path) -> Any:
    """The family's own config class, picked by config.json's `model_type`.

    Raises:
        ModelLoadError: unreadable config, or a model type outside `FAMILIES`.
    """
    import json

    import transformers

    path = directory / "config.json"
    cache = directory.parent.parent  # a hub model's snapshot: <cache>/models--org--name/snapshots/<commit>
    if directory.parent.name == "snapshots" and cache.name.startswith("models--"):
        model_id = cache.name[len("models--"):].replace("--", "/")
        damaged = (f"; it is damaged (an interrupted or edited download?). It is in the Hugging Face cache: "
                   f"download it again with `hf download {model_id} --force-download`, or delete the model's "
                   f"cache folder {str(cache)!r} (its snapshot {directory.name} links to the files in its "
                   f"blobs/) and load {model_id!r} again with network access")
    else:
        damaged = ("; it is damaged or not the JSON save_pretrained() writes (an interrupted copy?). Copy the "
                   "model again, or save it again with save_pretrained()")
    try:
        model_type = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as error:
        raise ModelLoadError(f"cannot read {str(path)!r}: {error}{damaged}") from error
    if model_type not in FAMILIES:
        raise ModelLoadError(
            f"{str(path)!r} has model_type {model_type!r}; supported speech encoders are "
            f"{', '.join(repr(t) for t in FAMILIES)} (wav2vec 2.0 incl. large and XLS-R, HuBERT, WavLM, "
            f"data2vec-audio). Pass a directory saved from one of those model classes."
        )
    try:
        return transformers.AutoConfig.from_pretrained(str(directory))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read {str(path)!r}: {error}{damaged}") from error


def load_model(source: ModelSource, *, attention: str = "sdpa") -> Any:
    """Build the family's own `transformers` model of a resolved source (float32, eval, on CPU).

    Args:
        source: From `resolve_model`.
        attention: `attn_implementation` ("sdpa" or "eager"); families without SDPA support
            (WavLM, whose attention adds a gated relative position bias) always use their own.

    Raises:
        ModelLoadError: the weights cannot be read or do not fit the family's class (missing
            or unexpected weights: e.g. WavLM weights under a wav2vec2 config.json).
    """
    import torch
    import transformers
    from safetensors import SafetensorError

    model_class = getattr(transformers, source.model_class)
    if getattr(source.hf_config, "add_adapter", False):
        raise ModelLoadError(f"model {source.requested!r} has an adapter (add_adapter=True); not supported")
    implementation = attention if getattr(model_class, "_supports_sdpa", False) else "eager"
    if source.kind == "fairseq":
        source.hf_config._attn_implementation = implementation
        model = model_class(source.hf_config)
        _load_fairseq_weights(model, Path(source.path))
    else:
        # transformers' "Loading weights" bar is noise beside w2v2ser's own progress (and it ignored
        # --no-progress); the files are local by now, so no download bar is lost.
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()
        try:
            model, info = model_class.from_pretrained(
                source.path, dtype=torch.float32, attn_implementation=implementation, output_loading_info=True
            )
        except (OSError, ValueError, RuntimeError, SafetensorError) as error:
            raise ModelLoadError(f"cannot load {source.model_class} weights from {source.path!r}: {error}. A damaged "
                                 f"or incomplete weight file (an interrupted copy or download?): copy or download "
                                 f"the model again") from error
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        missing = sorted(k for k in info.get("missing_keys", ()) if not _IGNORABLE_KEYS.match(k))
        # Task heads outside the encoder (a CTC lm_head, pre-training quantizer and projections)
        # are not part of the hidden states; unexpected weights inside the encoder are.
        parts = {name for name, _ in model.named_children()}
        unexpected = sorted(
            k for k in info.get("unexpected_keys", ()) if k.split(".")[0] in parts and not _IGNORABLE_KEYS.match(k)
        )
        mismatched = [str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys", ())]
        if missing or unexpected or mismatched:
            raise ModelLoadError(
                f"the weights in {source.path!r} do not fit {source.model_class} (config.json model_type "
                f"{source.model_type!r}): missing {missing[:6]}{' ...' if len(missing) > 6 else ''}, unexpected "
                f"{unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}, wrong shape {mismatched[:6]}. "
                f"Loading them anyway would silently change the hidden states (e.g. a WavLM checkpoint read "
                f"as wav2vec2 loses its relative position bias). Check that config.json's model_type names "
                f"the model the weights come from."
            )
    return model.float().eval()


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
