"""Writing a store: :class:`StoreWriter`, its construction and the store's layout (created, completed,
features added); the driver plans rows and work units (single process; :mod:`._writeplan`), workers
fill units (any worker) and the driver finalizes (:mod:`._writeworkers`)."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from ._configdiff import _COMPARED, _SHOWN_DIFFERENCES, _comparable, _differences
from ._errors import StoreError
from ._journal import JOURNAL_DIR, open_journal
from ._layout import (
    quiet_zarr,
    ALL_CHUNKS_STORED,
    ATTRS_KEY,
    FAILURE_COLUMNS,
    FORMAT_VERSION,
    ROW_ARRAYS,
    ROW_CHECKSUM,
    ROW_CHUNK,
    STATS_SHARD,
    UTTERANCE_COLUMNS,
    check_version,
    create_array,
    default_chunk_frames,
    default_shard_frames,
    open_array,
    open_root,
    read_meta,
    row_checksum,
    specs_from_meta,
)
from ._location import StoreLocation, locate_store, remote_errors
from ._lock import LOCK_FILE, PLAN_LOCK_FILE
from ._types import FeatureSpec
from ._units import UnitWriter, WorkUnit
from ._writeerrors import _no_space_is_clear
from ._writeplan import _store_fill, _WritePlanMixin
from ._writeworkers import _WriteWorkersMixin

__all__ = ["StoreWriter", "WorkUnit", "UnitWriter"]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def data_codecs(spec: FeatureSpec) -> list[Any]:
    """Inner-chunk codecs of the frame data, chosen by tests/benchmarks/results/bench_codecs.md:
    float16 activations do not compress (zstd saves 9 % at 0.4x the read speed), so none;
    float32 LLDs and spectrograms shrink 1.3x with zstd at the same read speed. Every chunk
    ends with a crc32c checksum."""
    if spec.dtype == "float16":
        return [Crc32cCodec()]
    return [ZstdCodec(level=3), Crc32cCodec()]


class StoreWriter(_WritePlanMixin, _WriteWorkersMixin):
    """Writes one store; the driver plans and finalizes, workers fill work units.

    Args:
        path: store directory, or an object-store URL (``s3://bucket/prefix``); created (with
            an empty table) when missing.
        journal: name of this writer's commit journal; concurrent writers need distinct names.
        chunk_frames: frames per inner chunk by feature name, used when a feature is first
            added (default 128 for 3-D features, 512 for 2-D ones).
        shard_frames: frames per shard (one data file) by feature name, used when a feature is
            first added (default: 240 s of audio, at most 256 MiB; a multiple of the chunk).
        storage_options: fsspec options of a URL (see :func:`locate_store`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        journal: str = "main",
        chunk_frames: Mapping[str, int] | None = None,
        shard_frames: Mapping[str, int] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.location = locate_store(path, storage_options=storage_options)
        self.path: Path | str = self.location.display  # a Path, or the URL of a store on object storage
        with remote_errors(self.location):
            if not self.location.exists("zarr.json"):
                self._create()
        _, meta = read_meta(self.location)
        check_version(self.path, meta)
        self.row_checksum = row_checksum(self.path, meta)  # a resumed older store keeps its CRC
        self._group = open_root(self.location, mode="r+")
        self._complete_layout()
        self._journal = open_journal(self.location, journal)
        #: (id, column, old, new) of each label, speaker, split or session the last plan took from the manifest.
        self.relabelled: list[tuple[str, str, str, str]] = []
        #: Ids of the store's utterances that the last plan was not given (they stay in the store).
        self.absent: list[str] = []
        #: Those of ``absent`` that are not done (failed, or never extracted): stage 2 does not read them.
        self.absent_unfinished: list[str] = []
        #: (id, old path, new path) of each utterance the last plan took at a new path (``moved``).
        self.moved: list[tuple[str, str, str]] = []
        self._chunk_frames = dict(chunk_frames or {})
        self._shard_frames = dict(shard_frames or {})
        for kind, given in (("chunk_frames", self._chunk_frames), ("shard_frames", self._shard_frames)):
            for name, value in given.items():
                if not isinstance(value, int) or value < 1:
                    raise StoreError(f"{kind}[{name!r}] = {value!r}; expected an int >= 1.")
        # Array handles: opening one reads its metadata. Dropped whenever plan() reshapes arrays.
        self._arrays: dict[tuple[str, str], Any] = {}
        self._capacity: dict[str, np.ndarray] = {}
        self._ids: list[str] | None = None
        self._specs: dict[str, FeatureSpec] = specs_from_meta(self._meta)

    # ------------------------------------------------------------------ setup
    @staticmethod
    def check_creatable(location: StoreLocation) -> None:
        """Refuse a location that holds files other than a store's (one directory listing): a
        caller that creates the store later checks this before any slow work.

        Args:
            location: Where the store is to be.

        Raises:
            StoreError: The directory is not empty and is not a w2v2ser store.
        """
        if location.is_local:
            path = Path(location.display)
            top = set(os.listdir(path)) if path.is_dir() else set()
        else:
            top = {key.split("/", 1)[0] for key in location.list("")}
        # A process killed while writing zarr.json leaves Zarr's "*.partial" temp file behind.
        foreign = sorted(n for n in top - {LOCK_FILE, PLAN_LOCK_FILE, JOURNAL_DIR} if not n.endswith(".partial"))
        if foreign:
            raise StoreError(
                f"cannot create a store in {location.display}: the directory is not empty and is not a "
                f"w2v2ser store (found {foreign[:5]}). Choose a new or empty directory."
            )

    @_no_space_is_clear
    def _create(self) -> None:
        if self.location.is_local:
            self.path.mkdir(parents=True, exist_ok=True)
        self.check_creatable(self.location)
        import sys

        from w2v2ser import __version__
        from w2v2ser._common import STAGE1_PACKAGES, provenance

        torch = sys.modules.get("torch")  # loaded by a speech encoder's extraction; never imported here
        meta = {
            "format_version": FORMAT_VERSION,
            "tool_version": __version__,
            "created": _now(),
            # What the store was created with (versions, command line, host); a resume elsewhere keeps it.
            "provenance": provenance(STAGE1_PACKAGES, threads={"torch": torch.get_num_threads()} if torch else None),
            "complete": False,
            "features": {},
            "corpus": [],
            "layer_meaning": {},
            "row_checksum": ROW_CHECKSUM,
            ALL_CHUNKS_STORED: True,  # readers check that table, index and speaker chunks exist
        }
        with quiet_zarr():
            group = zarr.create_group(store=self.location.zarr_store(read_only=False), attributes={ATTRS_KEY: meta})
        for col, (dtype, fill) in UTTERANCE_COLUMNS.items():
            create_array(group, f"utterances/{col}", shape=(0,), chunks=(ROW_CHUNK,), dtype=dtype, fill_value=fill)
        for col in FAILURE_COLUMNS:
            create_array(group, f"failures/{col}", shape=(0,), chunks=(ROW_CHUNK,), dtype=str, fill_value="")

    @_no_space_is_clear
    def _complete_layout(self) -> None:
        """Create table columns missing after a crash inside :meth:`_create` (root written, arrays not all)."""
        missing = [f"utterances/{c}" for c in UTTERANCE_COLUMNS] + [f"failures/{c}" for c in FAILURE_COLUMNS]
        missing = [key for key in missing if key not in self._group]
        if not missing:
            return
        rows = int(self._group["utterances/id"].shape[0]) if "utterances/id" in self._group else 0
        for key in missing:
            group, col = key.split("/")
            dtype, fill = UTTERANCE_COLUMNS[col] if group == "utterances" else (str, "")
            create_array(self._group, key, shape=(rows if group == "utterances" else 0,),
                         chunks=(ROW_CHUNK,), dtype=dtype, fill_value=fill, overwrite=True)

    @property
    def _meta(self) -> dict[str, Any]:
        return dict(self._group.attrs[ATTRS_KEY])

    def _set_meta(self, meta: dict[str, Any]) -> None:
        if not meta.get("complete") and self._meta.get("complete"):
            # A finished store starts to change: readers opened before compare this count to tell
            # "changed since I opened it" from damage (see FeatureStore.changed_since_open).
            meta["revision"] = int(meta.get("revision", 0)) + 1
        self._group.attrs[ATTRS_KEY] = meta

    def _column(self, col: str) -> zarr.Array:
        return open_array(self._group, f"utterances/{col}", where=self.path)

    def _feature(self, name: str, array: str) -> zarr.Array:
        key = (name, array)
        if key not in self._arrays:
            self._arrays[key] = open_array(self._group, f"features/{name}/{array}", where=self.path)
        return self._arrays[key]

    def _num_rows(self) -> int:
        return int(self._column("id").shape[0])

    def _spec(self, name: str) -> FeatureSpec:
        if name not in self._specs:
            # Another process (the driver's plan) may have added the feature since we opened.
            self._group = open_root(self.location, mode="r+")
            self._specs = specs_from_meta(self._meta)
            self._arrays.clear()
        specs = self._specs
        if name not in specs:
            raise StoreError(
                f"feature {name!r} is not in store {self.path} (it has {sorted(specs)}); "
                f"add it with StoreWriter.plan(features=[...]) first."
            )
        return specs[name]

    def _create_feature(self, spec: FeatureSpec, rows: int) -> None:
        # Called only for features absent from the root attributes: anything stored under that
        # name is left over from a plan killed before it recorded the feature (no worker can have
        # written it, workers need the recorded spec), so it is replaced. Deleted by key prefix, not
        # through zarr: a kill can leave an array's zarr.json without its parent group's.
        self.location.delete_tree(f"features/{spec.name}")
        chunk = self._chunk_frames.get(spec.name, default_chunk_frames(spec))
        shard = self._shard_frames.get(spec.name, default_shard_frames(spec, chunk))
        if shard % chunk:
            raise StoreError(f"shard_frames[{spec.name!r}] = {shard} is not a multiple of the chunk ({chunk} frames).")
        shape, g = spec.frame_shape, f"features/{spec.name}"
        # Inner chunks hold one layer: a one-layer read is a byte range per chunk inside a shard.
        one_layer = (1, spec.dim) if spec.layers is not None else (spec.dim,)
        create_array(self._group, f"{g}/data", shape=(0, *shape), chunks=(chunk, *one_layer),
                     shards=(shard, *shape), dtype=spec.dtype, fill_value=0, compressors=data_codecs(spec))
        # float64 statistics hardly compress (their mantissas are noise): checksum only.
        create_array(self._group, f"{g}/stats", shape=(0, 2, *shape), chunks=(1, 2, *shape),
                     shards=(STATS_SHARD, 2, *shape), dtype="float64", fill_value=0.0, compressors=[Crc32cCodec()])
        for arr, (dtype, fill) in ROW_ARRAYS.items():
            _store_fill(create_array(self._group, f"{g}/{arr}", shape=(rows,), chunks=(ROW_CHUNK,), dtype=dtype,
                                     fill_value=-1 if arr == "capacity" else fill), 0)
        _store_fill(create_array(self._group, f"{g}/crc32", shape=(rows, spec.layers or 1),
                                 chunks=(ROW_CHUNK, spec.layers or 1), dtype="uint32", fill_value=0), 0)
        create_array(self._group, f"{g}/speaker_name", shape=(0,), chunks=(ROW_CHUNK,), dtype=str, fill_value="")
        create_array(self._group, f"{g}/speaker_count", shape=(0,), chunks=(ROW_CHUNK,), dtype="int64", fill_value=0)
        for arr in ("speaker_mean", "speaker_m2"):
            create_array(self._group, f"{g}/{arr}", shape=(0, *shape), chunks=(64, *shape),
                         dtype="float64", fill_value=0.0, compressors=[Crc32cCodec()])

    def _check_feature_config(self, spec: FeatureSpec, stored: dict[str, Any]) -> None:
        given = spec.to_dict()
        diff = [line for k in _COMPARED for line in _differences(_comparable(stored.get(k)), _comparable(given[k]), k)]
        if diff:
            detail = "; ".join(diff[:_SHOWN_DIFFERENCES]) + (
                f"; and {len(diff) - _SHOWN_DIFFERENCES} more" if len(diff) > _SHOWN_DIFFERENCES else "")
            raise StoreError(
                f"feature {spec.name!r} in store {self.path} was made with another config "
                f"({detail}). A store holds one config per feature: use a new store path for "
                f"this config (or delete the old store to re-extract)."
            )

    def close(self) -> None:
        """Close the journal file."""
        self._journal.close()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
