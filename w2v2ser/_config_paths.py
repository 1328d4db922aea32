"""Paths and models named in pipeline.yaml: paths resolved against the file's folder (empty values,
URLs and Windows paths refused with a hint), a local ``model`` made absolute, and the layer count
of an upstream model (its config.json, the Hugging Face cache, or a table of well-known checkpoints)."""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from w2v2ser.store._location import is_store_url

from ._common import ConfigError
from ._text import file_url_path
from ._overrides import ENV_VARIABLE

# Transformer layers of well-known checkpoints, for checking layer selections before any download.
_KNOWN_TRANSFORMER_LAYERS = {"wav2vec2-base": 12, "wav2vec2-large": 24, "wav2vec2-xls-r-300m": 24}


def _resolve_path(value: Any, base: Path, where: str, *, must_exist: bool, written: Any = None) -> Path | None:
    """``value`` as an absolute path (None stays None); ``written`` is the value before ``${VAR}`` expansion."""
    # ${X:-} is the empty string, as in a shell (read as null when it is the whole value): an empty path took
    # the default output folder or skipped the corpus without a word; ${X:-null} still says null.
    names = ENV_VARIABLE.findall(written) if isinstance(written, str) else []
    if value is None and names and not ENV_VARIABLE.sub(lambda m: os.environ.get(m[1]) or m[2] or "", written).strip():
        value = ""
    if value is None:
        return None
    if isinstance(value, str) and not value.strip():  # Path("") is this file's folder: a corpus read from there
        via = (f" ({written!r} expands to the empty string: {', '.join(n for n, _ in names)} is empty or unset, "
               f"and so is its default)" if names else "")
        skip = "null to skip what needs it" if must_exist else "null for the default (runs beside this file)"
        skip += f" (${{{names[0][0]}:-null}})" if names else ""
        fix = f"set {names[0][0]}, or " if names else ""
        raise ConfigError(f"{where}: the path is empty{via}; {fix}give a path or {skip}.")
    if is_store_url(str(value)):  # Path("s3://b/x") is the folder s3:/b/x
        kept = ("its stores, run folders and reports" if where == "output" else "what it reads")
        raise ConfigError(f"{where}: {value!r} is a URL; `w2v2ser run` keeps {kept} in local folders. For "
                          f"stores on object storage run the stages as commands: `w2v2ser extract ... --store "
                          f"s3://bucket/x.zarr`, then `w2v2ser train s3://bucket/x.zarr ...`.")
    # file:///data/x is the local path /data/x, as store paths read it (not the folder file:/data/x).
    try:
        path = Path(file_url_path(value) if isinstance(value, str) else value).expanduser()
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}.") from None
    path = Path(os.path.normpath(base / path))  # an absolute path replaces base
    if not must_exist:
        return path
    try:
        os.stat(path)  # not os.path.exists: it says False for a folder this user may not look into too
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        if isinstance(exc, OSError) and exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
            raise ConfigError(f"{where}: {value!r} resolves to {path}, which cannot be read ({exc.filename or path}: "
                              f"{exc.strerror or exc}). Let this user read it and the folders above it (fix their "
                              f"permissions), or give another path.") from None
        raise ConfigError(f"{where}: {value!r} resolves to {path}, which does not exist. Fix the path "
                          f"(relative paths start at {base}) or set it to null to skip what needs it."
                          f"{_windows_path_hint(str(value), base)}") from None
    return path


def _windows_path_hint(value: str, base: Path) -> str:
    """What a missing path copied from Windows (``..\\data``, ``C:\\...``) or with a trailing space
    should be written as, where that is clear."""
    if re.match(r"^([A-Za-z]:[\\/]|\\\\)", value):
        return " It is a Windows path (C:\\..., \\\\server\\...), which this system cannot open: give this machine's path."
    for fixed, what in ((value.replace("\\", "/"), "write / instead of \\"), (value.strip(), "remove the spaces around it")):
        if fixed != value and os.path.exists(base / Path(fixed).expanduser()):
            return f" {fixed!r} exists: {what}."
    return ""


def _local_model(options: Any, base: Path) -> Any:
    """A ``model`` that names a folder or file beside the pipeline file becomes an absolute path.

    Hub ids (``facebook/wav2vec2-base``) stay as they are; a relative path is only rewritten
    when it exists relative to the pipeline file's folder.
    """
    if not isinstance(options, Mapping) or not isinstance(options.get("model"), str):
        return options
    model = options["model"]
    candidate = Path(model).expanduser()
    candidate = candidate if candidate.is_absolute() else base / candidate
    if os.path.exists(candidate):  # False too for a name longer than the system allows
        return {**options, "model": os.path.normpath(candidate)}
    if model.startswith((".", "/", "~")):
        raise ConfigError(f"model path {model!r} resolves to {candidate}, which does not exist; fix the path "
                          f"(relative paths start at {base}) or give a Hugging Face hub id")
    if "/" in model and candidate.parent.is_dir() and not _hub_model_known(model):
        # A mistyped `models/wav2vec2-typo` beside a folder `models` is a path too: resolving it fails it
        # as missing, wherever the run starts, instead of looking it up on the hub (offline: a skip). A hub
        # id in the Hugging Face cache or on the hub (`facebook/wav2vec2-base` beside a folder `facebook`,
        # a gated model) stays an id, as `--model` takes it.
        return {**options, "model": os.path.normpath(candidate)}
    return options


def _hub_model_known(model: str) -> bool | None:
    """:func:`w2v2ser.extract._models.hub_model_known` (cache, then hub), as ``--model`` decides;
    without stage 1's packages installed, the Hugging Face cache only."""
    if _hub_snapshots(model):
        return True
    try:
        from w2v2ser.extract._models import hub_model_known
    except ImportError:  # a stage-2-only install: nothing to look up the hub with
        return False
    return hub_model_known(model)


def _hub_snapshots(model: str) -> list[Path]:
    """The config.json of each snapshot of hub id ``model`` in the local Hugging Face cache."""
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    return sorted((hub.expanduser() / f"models--{model.replace('/', '--')}" / "snapshots").glob("*/config.json"))


def _layer_count(model: str) -> int | None:
    """Layer outputs (transformer layers + 1) of an upstream model, from its config.json if findable.

    Looks at a local ``save_pretrained`` folder, then the Hugging Face cache, then a table of
    well-known checkpoints; None when unknown (the selection is then checked at training time).
    """
    candidates = [Path(model).expanduser() / "config.json"]
    if "/" in model and not Path(model).exists():
        candidates += _hub_snapshots(model)
    for candidate in candidates:
        try:
            layers = json.loads(candidate.read_text()).get("num_hidden_layers")
        except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not a JSON object
            continue
        if isinstance(layers, int):
            return layers + 1
    base = model.rstrip("/").rsplit("/", 1)[-1]
    for prefix, layers in sorted(_KNOWN_TRANSFORMER_LAYERS.items(), key=lambda kv: -len(kv[0])):
        if base.startswith(prefix):
            return layers + 1
    return None
