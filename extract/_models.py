"""Resolve and load self-supervised speech encoders (wav2vec 2.0, HuBERT, WavLM, data2vec-audio).

Models come from the Hugging Face hub, a local `save_pretrained` directory or (wav2vec 2.0 only)
an original fairseq checkpoint (read and converted in `_fairseq`). Resolution (`resolve_model`) reads
the architecture from the model's own config.json (`model_type` picks the family) and hashes the weight
files, so that a feature's provenance can be recorded before any forward pass (the resolved
`ModelSource`, in `_source`). Loading (`load_model`) builds the family's own `transformers` class in
float32, eval mode, and refuses weights that do not fit it (a WavLM checkpoint read by the wav2vec 2.0
class would silently drop its position bias). A store resumed with the same weights from another place
keeps the model location it recorded (`keep_recorded_location`).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ContextManager
from urllib.parse import urlparse

from w2v2ser._process import CountedScope

from ._fairseq import _load_fairseq_weights, _resolve_fairseq
from ._source import FAMILIES, ModelLoadError, ModelSource, _weights_sha256

__all__ = ["resolve_model", "load_model", "hub_model_known", "probe_hub", "hub_probe_scope", "keep_recorded_location",
           "same_weights"]


# Weights a bare encoder may lack or carry without changing its hidden states.
_IGNORABLE_KEYS = re.compile(r"^(masked_spec_embed|.*\.masked_spec_embed)$")

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PREPROCESSOR_FILE = "preprocessor_config.json"  # the feature extractor's settings (do_normalize)
_FAIRSEQ_SUFFIXES = (".pt", ".pth", ".ckpt")


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


def _fix_hint() -> str:
    return (
        "Pass instead a local directory written by `save_pretrained()` (Wav2Vec2Model, HubertModel, "
        "WavLMModel or Data2VecAudioModel), or the path "
        "of an original fairseq checkpoint (e.g. wav2vec_small.pt, wav2vec_small_960h.pt), or set "
        "HF_HOME to a Hugging Face cache that already holds the model."
    )


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


_HUB_PROBED: list[str | None] = []  # the probe's outcome, once per outermost hub_probe_scope
_OFF = object()  # HF_HUB_OFFLINE was not set


def _hub_setting() -> tuple[Any, bool | None]:
    """``HF_HUB_OFFLINE`` (or _OFF) and huggingface_hub's copy of it, as the outermost scope finds them."""
    return os.environ.get("HF_HUB_OFFLINE", _OFF), _hub_constant()


def _put_hub_setting_back(saved: tuple[Any, bool | None]) -> None:
    """Put back what :func:`_hub_setting` saved, and forget the probe's outcome."""
    variable, constant = saved
    if variable is _OFF:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = variable
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:  # imported inside the scope: what it reads from the environment now
        hub_constants.HF_HUB_OFFLINE = constant if constant is not None else (
            os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
        ).upper() in ("1", "ON", "YES", "TRUE")
    _HUB_PROBED.clear()


_HUB_SCOPE = CountedScope(_hub_setting, _put_hub_setting_back)  # open scopes (all threads), what the last restores


def hub_probe_scope() -> ContextManager[None]:
    """One hub probe for everything inside (nested scopes, in any thread, share it); a decorator too.

    When the last open scope ends, ``HF_HUB_OFFLINE`` (and huggingface_hub's copy of it) are put
    back as they were and the probe's outcome is forgotten: a notebook's second extraction, after
    the network came back, asks the hub again instead of staying offline for the rest of the
    process. Dask workers started inside a scope inherit the variable it set.
    """
    return _HUB_SCOPE()


def _hub_constant() -> bool | None:
    """huggingface_hub's HF_HUB_OFFLINE (read from the environment at its import); None when not imported."""
    constants = sys.modules.get("huggingface_hub.constants")
    return None if constants is None else bool(constants.HF_HUB_OFFLINE)


@hub_probe_scope()
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


def probe_hub() -> str | None:
    """One quick connection to the Hugging Face hub per :func:`hub_probe_scope` (per process
    outside any); None when it answers.

    When it fails, hub lookups use the local cache only (``HF_HUB_OFFLINE``, inherited by Dask
    workers started later) until the outermost scope ends: without this, each lookup on a machine
    without network retries five times with back-off, about 23 s and ten log lines per model,
    before failing the same way. Returns the failure, for the caller to report once.
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


@hub_probe_scope()
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


class _HeldLog(logging.Filter):
    """Holds back the records of one logger (from every handler, its parents' too) until
    ``hand_on`` passes them on as they would have gone, or ``close`` drops them. A filter, not a
    handler: it changes no setting of the logger that a concurrent load would have to restore."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self._logger = logger
        logger.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False

    def close(self) -> None:
        self._logger.removeFilter(self)

    def hand_on(self) -> None:
        self.close()
        for record in self.records:
            self._logger.handle(record)
        self.records = []


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
        # Its load report ("lm_head UNEXPECTED ... not ok if you expect identical arch") is held back:
        # heads outside the encoder are left out on purpose, and the encoder's weights are checked
        # below. It is shown when the load fails, whose error refers to it.
        report = _HeldLog(logging.getLogger("transformers.modeling_utils"))
        try:
            model, info = model_class.from_pretrained(
                source.path, dtype=torch.float32, attn_implementation=implementation, output_loading_info=True
            )
        except (OSError, ValueError, RuntimeError, SafetensorError) as error:
            report.hand_on()
            raise ModelLoadError(f"cannot load {source.model_class} weights from {source.path!r}: {error}. A damaged "
                                 f"or incomplete weight file (an interrupted copy or download?): copy or download "
                                 f"the model again") from error
        finally:
            report.close()
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
