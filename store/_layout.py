"""On-disk layout of a w2v2ser store: names, dtypes, codecs and root-attribute checks."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore

from ._errors import StoreError, StoreIncompleteError, StoreVersionError
from ._types import FeatureSpec

FORMAT_VERSION = 1
ATTRS_KEY = "w2v2ser"
ROW_CHUNK = 4096  # rows per chunk of the 1-D table columns

# column -> (dtype, fill value). Strings use Zarr 3's variable-length UTF-8 dtype.
UTTERANCE_COLUMNS: dict[str, tuple[Any, Any]] = {
    "id": (str, ""),
    "path": (str, ""),
    "speaker": (str, ""),
    "label": (str, ""),
    "session": (str, ""),
    "split": (str, ""),
    "gender": (str, ""),
    "corpus": (str, ""),
    "extra": (str, "{}"),
    "duration": ("float64", float("nan")),
    "num_samples": ("int64", -1),
    "audio_sha256": (str, ""),
    "status": (str, "pending"),
}
FAILURE_COLUMNS = ("id", "path", "feature", "reason")
STATUSES = ("done", "failed", "pending")

# Per-row arrays of each feature group: name -> (dtype, fill value).
ROW_ARRAYS: dict[str, tuple[str, Any]] = {
    "offset": ("int64", -1),
    "capacity": ("int64", 0),
    "length": ("int64", -1),
    "crc32": ("uint32", 0),
}


def default_chunk_frames(spec: FeatureSpec) -> int:
    """128 frames for 3-D features (2.6 s of wav2vec2), 512 for 2-D ones (5 s at 100 fps)."""
    return 128 if spec.layers is not None else 512


def data_compressor() -> BloscCodec:
    """Light codec: lz4 is fast enough to keep up with extraction; shuffle makes zero padding ~free."""
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def open_root(path: Path, *, mode: str) -> zarr.Group:
    """Open the root group of an existing store directory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zarr.open_group(store=LocalStore(path, read_only=(mode == "r")), mode=mode)


def read_meta(path: Path) -> tuple[zarr.Group, dict[str, Any]]:
    """Open `path` read-only and return its group and the ``w2v2ser`` root attributes.

    Raises:
        StoreError: the directory is missing or is not a w2v2ser store.
    """
    path = Path(path)
    if not (path / "zarr.json").is_file():
        what = "does not exist" if not path.exists() else "has no zarr.json"
        raise StoreError(
            f"{path} is not a w2v2ser store: the directory {what}. Expected a Zarr v3 directory "
            f"written by `w2v2ser extract`; check the path or run the extraction first."
        )
    try:
        group = open_root(path, mode="r")
    except Exception as exc:  # zarr raises several types for a non-group zarr.json
        raise StoreError(
            f"{path} is not a w2v2ser store: cannot open its zarr.json as a Zarr v3 group "
            f"({type(exc).__name__}: {exc}). Check the path."
        ) from None
    meta = group.attrs.asdict().get(ATTRS_KEY)
    if not isinstance(meta, dict) or "format_version" not in meta:
        raise StoreError(
            f"{path} is a Zarr group but not a w2v2ser store: root attribute {ATTRS_KEY!r} with "
            f"a format_version is missing. Point to a store written by `w2v2ser extract`."
        )
    return group, meta


def check_version(path: Path, meta: dict[str, Any]) -> None:
    """Refuse stores written in a newer format."""
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreVersionError(
            f"store {path} has format_version {version!r} (written by w2v2ser "
            f"{meta.get('tool_version', '?')}), but this w2v2ser reads format_version <= "
            f"{FORMAT_VERSION}. Upgrade w2v2ser (pip install -U w2v2ser) to read it."
        )


def check_complete(path: Path, meta: dict[str, Any]) -> None:
    """Refuse stores whose extraction has not finished."""
    if not meta.get("complete", False):
        raise StoreIncompleteError(
            f"store {path} is incomplete (root attribute {ATTRS_KEY}.complete is false): its "
            f"extraction was interrupted or some utterances are still pending. Rerun the "
            f"extraction with the same store path to finish it, or pass allow_incomplete=True "
            f"to inspect what is there."
        )


def specs_from_meta(meta: dict[str, Any]) -> dict[str, FeatureSpec]:
    """FeatureSpec per feature name from the root attributes."""
    return {name: FeatureSpec.from_dict(d) for name, d in meta.get("features", {}).items()}


def to_str_list(values: np.ndarray) -> list[str]:
    """Zarr string columns come back as numpy StringDType; make plain Python strings."""
    return [str(v) for v in values.tolist()]


def round_up(frames: int, chunk: int) -> int:
    """Smallest multiple of `chunk` that is >= `frames`."""
    return -(-int(frames) // chunk) * chunk
