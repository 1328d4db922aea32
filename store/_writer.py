"""Writing a store: plan rows and work units (single process), fill units (any worker), finalize."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from w2v2ser._text import control_character

from ._configdiff import _COMPARED, _SHOWN_DIFFERENCES, _comparable, _differences
from ._errors import StoreError
from ._finalize import finalize_store
from ._journal import JOURNAL_DIR, fsync_path, open_journal, resolve_events
from ._layout import (
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
    round_up,
    row_checksum,
    rows_of_missing_data_shards,
    specs_from_meta,
    to_str_list,
)
from ._location import StoreLocation, locate_store, remote_errors
from ._lock import LOCK_FILE, PLAN_LOCK_FILE, hold_plan_lock
from ._types import FeatureSpec, Utterance
from ._units import UnitWriter, WorkUnit, release_buffers
from ._writeerrors import _no_space_is_clear

__all__ = ["StoreWriter", "WorkUnit", "UnitWriter"]

# Utterance columns that a resumed plan takes from a changed manifest in place: no frame depends
# on them, and finalize composes the per-speaker statistics from the per-utterance ones and the
# table's speakers. A changed path is refused (the frames were made from the old file), unless
# the caller checked that the new file holds the same audio (plan's ``moved``).
RELABELLED_COLUMNS = ("label", "speaker", "session", "split")


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


def _all_finite(x: np.ndarray) -> bool:
    """np.isfinite(x).all(); for float16 from the bits (exponent all ones: inf or NaN), since
    numpy converts every float16 element to float32 for isfinite (10x slower on [T, 13, 768])."""
    if x.dtype == np.float16:
        return x.size == 0 or int((x.view(np.uint16) & 0x7FFF).max()) < 0x7C00
    return bool(np.isfinite(x).all())


def _store_fill(array: zarr.Array, start: int) -> None:
    """Store rows ``start:`` of a new or grown index array as its fill value: rows no later write
    touches (a row that failed before it was planned) must still have their chunks (see
    ALL_CHUNKS_STORED: readers take a missing chunk for a deleted one)."""
    if array.shape[0] > start:
        array[start:] = array.fill_value


class StoreWriter:
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
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

    # ------------------------------------------------------------------ plan
    @_no_space_is_clear
    def plan(
        self,
        utterances: Sequence[Utterance],
        *,
        num_samples: Sequence[int | None],
        features: Sequence[FeatureSpec],
        capacities: Mapping[str, Sequence[int]],
        failures: Mapping[int, str] | None = None,
        reader_skipped: Sequence[tuple[str, str]] | None = None,
        moved: Collection[str] = (),
    ) -> list[int]:
        """Add utterances and features and record each utterance's planned frame count (single process).

        Args:
            utterances: manifest rows; ids must be unique.
            num_samples: 16 kHz sample count per utterance, None when its header is unreadable
                (the row is then recorded as failed and re-probed by a later plan call).
            features: feature specs; new ones are added, known ones must match the stored config.
            capacities: per feature name, the maximum frame count of each utterance.
            failures: reason per position in `utterances` (e.g. why probing failed).
            reader_skipped: (path, reason) of every file or line the corpus reader could not use
                (``Manifest.problems``); replaces the recorded list (None keeps it).
            moved: Ids whose new path the caller has checked holds the same audio as the stored
                one (same sha256): the path is taken in place. Any other changed path is refused.

        Returns:
            The store row index of every given utterance, in the same order.
        """
        failures = dict(failures or {})
        n = len(utterances)
        if len(num_samples) != n:
            raise StoreError(f"plan: {len(num_samples)} num_samples for {n} utterances; give one per utterance.")
        ids = [u.id for u in utterances]
        if len(set(ids)) != n:
            seen: set[str] = set()
            dup = sorted({i for i in ids if i in seen or seen.add(i)})[:5]  # type: ignore[func-returns-value]
            raise StoreError(f"plan: duplicate utterance ids {dup}; ids must be unique within a store.")
        for spec in features:
            caps = capacities.get(spec.name)
            if caps is None or len(caps) != n:
                got = "none" if caps is None else f"{len(caps)}"
                raise StoreError(
                    f"plan: capacities[{spec.name!r}] has {got} entries; expected one max frame "
                    f"count per utterance ({n})."
                )
            for pos, cap in enumerate(caps):
                if not isinstance(cap, (int, np.integer)) or cap < 0:
                    raise StoreError(f"plan: capacities[{spec.name!r}][{pos}] = {cap!r}; expected an int >= 0.")
        meta = self._meta
        changed = False
        # -- utterance rows
        stored_ids = to_str_list(self._column("id")[:])
        # Ids are never empty, so an empty id marks a row whose plan was killed before it wrote
        # the id column (resized, values not yet written): that row and all after it are redone.
        old_rows = stored_ids.index("") if "" in stored_ids else len(stored_ids)
        existing = {uid: i for i, uid in enumerate(stored_ids[:old_rows])}
        if len(stored_ids) > old_rows:
            # Blank the leftovers so that no stale id can reappear when the column grows again.
            self._column("id")[old_rows:] = np.asarray([""] * (len(stored_ids) - old_rows), dtype=str)
        rows: list[int] = []
        new: list[int] = []
        reprobed: list[int] = []
        relabelled: list[int] = []
        self.relabelled = []
        self.moved = []
        moved = set(moved)
        stored_ns = self._column("num_samples")[:] if old_rows else np.zeros(0, np.int64)
        # What stage 2 reads from the store (audio, class, protocol partitions) must match the
        # manifest of a resumed run: a changed split or speaker would otherwise be ignored silently.
        checked = ("path", "label", "speaker", "session", "split")
        stored = {col: to_str_list(self._column(col)[:]) for col in checked} if old_rows else {}
        state = resolve_events(self.location)  # the journals' state: plan appends to them only at its end
        if old_rows:
            self._refuse_ids_of_other_corpora(utterances, existing, stored["path"])
        for pos, u in enumerate(utterances):
            if not isinstance(u, Utterance) or not isinstance(u.id, str) or not u.id:
                raise StoreError(f"plan: utterances[{pos}] = {u!r}; expected an Utterance with a non-empty id.")
            bad = control_character(u.id)
            if bad is not None:  # as the CSV reader refuses it; a Python caller's ids were stored as given
                raise StoreError(f"plan: utterances[{pos}] has the id {u.id!r}, which holds the control character "
                                 f"{bad!r} (a line break, tab, NUL or the like): logs and predictions.csv could not "
                                 f"show it, nor --subset id=... match it. Give ids without control characters.")
            row = existing.get(u.id)
            if row is None:
                row = old_rows + len(new)
                new.append(pos)
            else:
                differ = [(col, stored[col][row], self._cell(col, u, None, "")) for col in checked
                          if stored[col][row] != self._cell(col, u, None, "")]
                if stored_ns[row] < 0 or (differ and not self._extracted(row, state)):
                    # Nothing of it was extracted (its audio failed to probe or to decode): a fixed
                    # manifest row (a converted file, a corrected label) replaces it whole.
                    if differ or num_samples[pos] is not None:
                        reprobed.append(pos)
                    rows.append(row)
                    continue
                in_place = RELABELLED_COLUMNS + (("path",) if u.id in moved else ())
                fixed = [d for d in differ if d[0] not in in_place]
                if fixed:
                    was = ", ".join(f"{col} {old!r}" for col, old, _ in fixed)
                    now = ", ".join(f"{col} {new!r}" for col, _, new in fixed)
                    raise StoreError(
                        f"plan: utterance {u.id!r} is already in store {self.path} with {was}, but was "
                        f"given {now}. Its frames were made from that file: extract into a new store path "
                        f"(`--like {shlex.quote(str(self.path))}` keeps the feature configs), or restore the "
                        f"manifest's old "
                        f"values. (A changed label, speaker, split or session is taken in place, and so is a "
                        f"changed path whose file holds the same audio.)"
                    )
                if differ:  # label, speaker, split, session (no frame depends on them), a moved file
                    relabelled.append(pos)
                    self.relabelled += [(u.id, col, old, now) for col, old, now in differ if col != "path"]
                    self.moved += [(u.id, old, now) for col, old, now in differ if col == "path"]
            rows.append(row)
        given = {u.id for u in utterances}
        self.known = len(utterances) - len(new)  # given ids already in the store, any status
        self.absent = [uid for uid in stored_ids[:old_rows] if uid not in given]
        if self.absent:
            status = to_str_list(self._column("status")[:old_rows])
            self.absent_unfinished = [uid for uid, st in zip(stored_ids[:old_rows], status)
                                      if uid not in given and st != "done"]
        else:
            self.absent_unfinished = []
        # Refuse a changed feature config before anything is written.
        for spec in features:
            if spec.name in meta["features"]:
                self._check_feature_config(spec, meta["features"][spec.name])
        new_features = [spec for spec in features if spec.name not in meta["features"]]
        if (new or reprobed or relabelled or new_features) and meta.get("complete"):
            # Flag the store unfinished before touching it: a plan killed half-way must not
            # leave a store that still claims to be complete.
            meta["complete"] = False
            self._set_meta(meta)
        total = old_rows + len(new)
        replaced = np.asarray([rows[p] for p in reprobed], dtype=np.int64)
        # The id column defines the rows and is written last: a plan killed while adding rows
        # leaves other columns longer than `id`, and the next plan rewrites those rows.
        for col, (_, fill) in sorted(UTTERANCE_COLUMNS.items(), key=lambda item: item[0] == "id"):
            arr = self._column(col)
            kind = {"duration": np.float64, "num_samples": np.int64}.get(col, str)
            if new:
                values = [self._cell(col, utterances[p], num_samples[p], fill) for p in new]
                arr.resize((total,))
                arr[old_rows:total] = np.asarray(values, dtype=kind)
            elif arr.shape[0] != total:  # leftovers of a plan killed while adding rows
                arr.resize((total,))
            if reprobed and col != "id":  # replaced rows keep their id; one write per column
                arr.vindex[replaced] = np.asarray([self._cell(col, utterances[p], num_samples[p], fill)
                                                   for p in reprobed], dtype=kind)
            if relabelled and col in RELABELLED_COLUMNS + ("path",):
                arr.vindex[np.asarray([rows[p] for p in relabelled], dtype=np.int64)] = np.asarray(
                    [self._cell(col, utterances[p], None, fill) for p in relabelled], dtype=kind)
        if new or reprobed or relabelled:
            changed = True
        total = self._num_rows()
        # -- features
        for spec in features:
            if spec.name not in meta["features"]:
                self._create_feature(spec, total)
                meta["features"][spec.name] = spec.to_dict()
                if spec.layer_names:
                    meta["layer_meaning"][spec.name] = list(spec.layer_names)
                changed = True
        self._arrays.clear()
        for name in meta["features"]:
            self._grow_rows(name, total)
        # -- planned frame counts (sizes the work units)
        for spec in features:
            changed |= self._set_capacity(spec.name, rows, num_samples, capacities[spec.name], state)
        # -- failures known at plan time (unreadable headers)
        events = []
        reset = set(reprobed)
        for pos, u in enumerate(utterances):
            row = rows[pos]
            if pos in reset:
                events.append({"event": "reset", "index": row, "id": u.id, "feature": None})
            if num_samples[pos] is None or pos in failures:
                reason = failures.get(pos, "audio header unreadable (num_samples unknown)")
                # A reset row has lost its old failure: record it again even when the reason is the same.
                if pos in reset or state.row_failure_reason(row) != str(reason):
                    events.append({"event": "failure", "index": row, "id": u.id,
                                   "feature": None, "reason": str(reason)})
        if events:
            self._journal.append(events)
            changed = True
        corpora = sorted(set(meta.get("corpus", [])) | {u.corpus for u in utterances if u.corpus})
        if corpora != meta.get("corpus"):
            meta["corpus"], changed = corpora, True
        # Failed rows that this manifest no longer lists (the user removed a bad recording):
        # their failures stay in the table, but `store info` shows them apart from current ones.
        unlisted = sorted(set(self.absent_unfinished))
        if unlisted != meta.get("unlisted_failures", []):
            meta["unlisted_failures"], changed = unlisted, True
        if reader_skipped is not None:
            skipped = [{"path": str(path), "reason": str(reason)} for path, reason in reader_skipped]
            if skipped != meta.get("reader_skipped", []):
                meta["reader_skipped"], changed = skipped, True
        if changed:
            meta["complete"] = False
        # The command working on an unfinished store now: its resume advice (`store info`, `store
        # verify`) names it, not the creating one of provenance (a store `extract` made and `run` resumes).
        argv = [str(arg) for arg in sys.argv]
        if not meta.get("complete") and meta.get("last_argv") != argv:
            meta["last_argv"], changed = argv, True
        if changed:
            self._set_meta(meta)
        self._arrays.clear()
        self._capacity.clear()
        self._ids = None
        self._specs = specs_from_meta(self._meta)
        return rows

    def _refuse_ids_of_other_corpora(self, utterances: Sequence[Utterance], existing: Mapping[str, int],
                                     paths: Sequence[str]) -> None:
        """Raise StoreError when a given id is already a row of another corpus of the store.

        Such a row would be taken as the same utterance: its label and speaker replaced in place
        (same audio) under the other corpus's name, or its path refused as a changed file.
        """
        corpus = to_str_list(self._column("corpus")[:len(paths)])
        clash = [(u.id, corpus[existing[u.id]], u.corpus, paths[existing[u.id]]) for u in utterances
                 if isinstance(u, Utterance) and isinstance(u.id, str) and u.id in existing and u.corpus
                 and corpus[existing[u.id]] and corpus[existing[u.id]] != u.corpus]
        if clash:
            uid, old, new, path = clash[0]
            # Only a CSV manifest chooses its ids; a corpus folder's reader makes them (review L3).
            fix = (f"Give the CSV manifest an 'id' column of ids of its own (e.g. with a corpus prefix, "
                   f"'{new}/{uid}'), or extract" if new == "csv" else "Extract")
            raise StoreError(
                f"plan: {len(clash)} utterance id(s) of this {new} corpus are already in store {self.path} as "
                f"utterances of corpus {old} (e.g. {uid!r}, of {path}); a store's ids must be unique across its "
                f"corpora, else the new rows would take the other corpus's place. {fix} this corpus into a new "
                f"store (`--like {shlex.quote(str(self.path))}` keeps the feature configs).")

    def _extracted(self, row: int, state: Any) -> bool:
        """Whether any feature of `row` is committed (its frames may have entered statistics)."""
        return any(state.committed(row, name) for name in self._meta["features"])

    @staticmethod
    def _cell(col: str, u: Utterance, ns: int | None, fill: Any) -> Any:
        if col == "num_samples":
            return -1 if ns is None else int(ns)
        if col == "extra":
            return json.dumps(dict(u.extra), sort_keys=True)
        if hasattr(u, col):
            return str(getattr(u, col))
        return fill

    def _grow_rows(self, name: str, total: int) -> None:
        for arr in (*ROW_ARRAYS, "crc32"):
            a = self._feature(name, arr)
            if a.shape[0] != total:  # longer only after a plan killed while adding rows
                before = a.shape[0]
                a.resize((total, *a.shape[1:]))
                _store_fill(a, before)

    def _set_capacity(self, name: str, rows: list[int], num_samples: Sequence[int | None],
                      caps: Sequence[int], state: Any) -> bool:
        capacity = self._feature(name, "capacity")[:]
        before = capacity.copy()
        for pos, row in enumerate(rows):
            if num_samples[pos] is None:
                continue
            if not state.committed(row, name) or capacity[row] < 0:
                capacity[row] = max(int(caps[pos]), 0)
        if np.array_equal(before, capacity):
            return False
        self._feature(name, "capacity")[:] = capacity
        return True

    def _planned(self, name: str) -> np.ndarray:
        if name not in self._capacity:
            self._capacity[name] = self._feature(name, "capacity")[:]
        return self._capacity[name]

    @_no_space_is_clear
    def plan_units(self, units: Sequence[Sequence[int]], features: Sequence[str]) -> list[WorkUnit]:
        """Give each group of rows its own whole shards of every feature.

        Each unit's region starts on a shard boundary at the end of the data and holds the
        planned frame counts of its rows back to back. Regions of units that never commit are
        left unused (their shards are never made visible). Processes of one machine may plan
        at the same time on a local store (a file lock serialises them); on object storage
        only one process (the driver) may plan.

        Args:
            units: store rows per work unit.
            features: feature names the units write.

        Returns:
            One :class:`WorkUnit` per group, in the same order.
        """
        names = list(features)
        for name in names:
            self._spec(name)
        with hold_plan_lock(self.location):
            for name in names:  # another process may have grown the arrays since they were opened
                self._arrays.pop((name, "data"), None)
                self._arrays.pop((name, "stats"), None)
            return self._plan_regions(units, names)

    def _plan_regions(self, units: Sequence[Sequence[int]], names: list[str]) -> list[WorkUnit]:
        regions: list[dict[str, tuple[int, int]]] = [{} for _ in units]
        slots: list[dict[str, tuple[int, int]]] = [{} for _ in units]
        for name in names:
            capacity = self._planned(name)
            data, stats = self._feature(name, "data"), self._feature(name, "stats")
            shard, stat_shard = int(data.shards[0]), int(stats.shards[0])
            end, slot_end = round_up(data.shape[0], shard), round_up(stats.shape[0], stat_shard)
            for k, rows in enumerate(units):
                bad = [r for r in rows if not 0 <= int(r) < len(capacity) or capacity[int(r)] < 0]
                if bad:
                    raise StoreError(
                        f"plan_units: rows {bad[:5]} have no planned frames of feature {name!r} in store "
                        f"{self.path}; plan them with StoreWriter.plan(...) first."
                    )
                need = int(sum(int(capacity[int(r)]) for r in rows))
                regions[k][name] = (end, end + need)
                slots[k][name] = (slot_end, slot_end + len(rows))
                end += round_up(need, shard)
                slot_end += round_up(len(rows), stat_shard)
            if end != data.shape[0]:
                data.resize((end, *data.shape[1:]))
            if slot_end != stats.shape[0]:
                stats.resize((slot_end, *stats.shape[1:]))
            # The new shapes must survive a power loss before any unit commits inside them (an
            # object store has them durable once the PUT of zarr.json returned).
            for arr in ("data", "stats") if self.location.is_local else ():
                fsync_path(self.path / "features" / name / arr / "zarr.json")
                fsync_path(self.path / "features" / name / arr)
        return [WorkUnit(rows=tuple(int(r) for r in rows), regions=regions[k], slots=slots[k])
                for k, rows in enumerate(units)]

    def open_unit(self, unit: WorkUnit) -> UnitWriter:
        """A writer for one work unit (any process); commit it when its utterances are added."""
        for name in unit.regions:
            self._spec(name)
        return UnitWriter(self, unit)

    # ------------------------------------------------------------------ workers
    def pending(self, features: Sequence[str]) -> list[int]:
        """Row indices that still lack a committed frame set for any of `features`.

        Rows failed earlier are included (a rerun retries them); rows with an unreadable
        header (nothing planned) are not.
        """
        names = list(features)
        for name in names:
            self._spec(name)
        state = resolve_events(self.location)
        num_samples = self._column("num_samples")[:]
        planned = {name: self._feature(name, "capacity")[:] for name in names}
        n = len(num_samples)
        missing = np.zeros(n, bool)
        for f in names:
            committed = state.committed_rows(f, n)
            missing |= (planned[f][:n] >= 0) & ~committed
            if self.location.is_local:  # committed into a shard file that is gone: extracted again
                pair = state.pair(f)
                missing[rows_of_missing_data_shards(
                    self._feature(f, "data"), rows=np.flatnonzero(committed), offset=pair.column("offset", n),
                    length=pair.column("length", n), crc32=pair.column("crc32", n), checksum=self.row_checksum)] = True
        return np.flatnonzero(missing & (num_samples >= 0)).tolist()

    def _row_id(self, index: int) -> str:
        if self._ids is None or index >= len(self._ids):
            self._ids = to_str_list(self._column("id")[:])
        if not 0 <= index < len(self._ids):
            raise StoreError(f"row index {index} is out of range for store {self.path} ({len(self._ids)} rows).")
        return self._ids[index]

    def _check_frames(self, uid: str, index: int, name: str, frames: np.ndarray) -> np.ndarray:
        """Frames cast to the stored dtype, after checking shape, planned size and finiteness."""
        spec = self._spec(name)
        x = np.asarray(frames)
        if x.ndim != 1 + len(spec.frame_shape) or x.shape[1:] != spec.frame_shape:
            raise StoreError(
                f"utterance {uid!r}, feature {name!r}: frames have shape {x.shape}; expected "
                f"(frames, {', '.join(map(str, spec.frame_shape))}). Check the extractor output."
            )
        cap = int(self._planned(name)[index]) if index < len(self._planned(name)) else -1
        if cap < 0:
            self._capacity.pop(name, None)
            cap = int(self._planned(name)[index]) if index < len(self._planned(name)) else -1
        if cap < 0:
            raise StoreError(
                f"utterance {uid!r} (row {index}) has no planned frames for feature {name!r}; plan it "
                f"with StoreWriter.plan(...) including this feature before writing."
            )
        if x.shape[0] > cap:
            raise StoreError(
                f"utterance {uid!r}, feature {name!r}: {x.shape[0]} frames exceed the planned "
                f"capacity of {cap}; the extractor's max_frames underestimates. Fix max_frames "
                f"and rerun the same extraction (failed utterances are extracted again)."
            )
        with np.errstate(over="ignore", invalid="ignore"):  # reported below as non-finite
            stored = np.ascontiguousarray(x.astype(spec.dtype, copy=False))
        if not _all_finite(stored):
            bad = int(np.size(stored) - np.count_nonzero(np.isfinite(stored)))
            hint = (f"float16 holds at most +-65504: extract {name} as float32 (--option {name}.dtype=float32) "
                    f"into a new store to keep this file" if spec.dtype == "float16" else
                    "the extractor returned NaN or inf for this file: check its audio")
            raise StoreError(
                f"utterance {uid!r}, feature {name!r}: {bad} non-finite values after casting to {spec.dtype}; {hint}."
            )
        return stored

    def write_utterance(self, index: int, features: Mapping[str, np.ndarray], *,
                        audio_sha256: str, duration: float) -> None:
        """Write and commit one utterance as a work unit of its own (in the planning process).

        Several processes may call it on one local store if each has its own ``journal``
        (the data arrays grow under a file lock); on object storage only one process may.
        Extraction workers use :meth:`plan_units` / :meth:`open_unit`, which batch many rows.

        Args:
            index: store row (as returned by :meth:`plan`).
            features: frames per feature name, ``[frames, dim]`` or ``[frames, layers, dim]``.
            audio_sha256: hex digest of the audio file.
            duration: audio duration in seconds.
        """
        uid = self._row_id(index)
        for name, frames in features.items():  # refuse bad frames before space is taken
            self._check_frames(uid, index, name, frames)
        (unit,) = self.plan_units([[index]], list(features))
        with self.open_unit(unit) as writer:
            writer.add(index, features, audio_sha256=audio_sha256, duration=duration)

    @_no_space_is_clear
    def record_failure(self, index: int, *, reason: str, feature: str | None = None) -> None:
        """Record that an utterance (or one feature of it) could not be extracted."""
        uid = self._row_id(index)
        if feature is not None:
            self._spec(feature)
        self._journal.append([{"event": "failure", "index": int(index), "id": uid,
                               "feature": feature, "reason": str(reason)}])

    @_no_space_is_clear
    def record_silent_audio(self, ids: Sequence[str]) -> None:
        """Record utterances whose audio is digital silence after mixing to mono (every sample 0),
        for ``store info`` and extract's note (single process: the planning driver)."""
        meta = self._meta
        known = list(meta.get("silent_audio", []))
        merged = sorted(set(known) | {str(uid) for uid in ids})
        if merged != known:
            meta["silent_audio"] = merged
            self._set_meta(meta)

    @_no_space_is_clear
    def finalize(self) -> None:
        """Merge journals into lengths, crc32, status, failures and per-speaker statistics.

        Sets ``complete`` only when every planned utterance x feature is done or failed.
        """
        release_buffers()
        finalize_store(self.location, self._group)

    def close(self) -> None:
        """Close the journal file."""
        self._journal.close()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
