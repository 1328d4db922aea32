"""Planning a store's writes: :class:`StoreWriter`'s plan of the utterance rows and feature
capacities from a manifest (resumed plans included) and its plan of the work units that workers
fill (``_WritePlanMixin``), with the fill of grown index arrays."""

from __future__ import annotations

import shlex
import sys
from typing import Any, Collection, Mapping, Sequence

import numpy as np
import zarr

from w2v2ser._text import control_character

from ._errors import StoreError
from ._journal import fsync_path, resolve_events
from ._layout import ROW_ARRAYS, STATS_CHECKSUMS, UTTERANCE_COLUMNS, round_up, specs_from_meta, to_str_list
from ._lock import hold_plan_lock
from ._types import FeatureSpec, Utterance, extra_json
from ._units import UnitWriter, WorkUnit
from ._writeerrors import _no_space_is_clear

# Utterance columns that a resumed plan takes from a changed manifest in place: no frame depends
# on them, and finalize composes the per-speaker statistics from the per-utterance ones and the
# table's speakers. A changed path is refused (the frames were made from the old file), unless
# the caller checked that the new file holds the same audio (plan's ``moved``).
RELABELLED_COLUMNS = ("label", "speaker", "session", "split")


def _store_fill(array: zarr.Array, start: int) -> None:
    """Store rows ``start:`` of a new or grown index array as its fill value: rows no later write
    touches (a row that failed before it was planned) must still have their chunks (see
    ALL_CHUNKS_STORED: readers take a missing chunk for a deleted one)."""
    if array.shape[0] > start:
        array[start:] = array.fill_value


class _WritePlanMixin:
    """StoreWriter's plan of rows and work units."""

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
            utterances: manifest rows; ids must be unique and not blank (nor hold control characters).
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
            if not u.id.strip():  # as extract_corpus and the CSV reader refuse it: no log or --subset could name it
                raise StoreError(f"plan: utterances[{pos}] (path {str(u.path)!r}) has the blank id {u.id!r} (only "
                                 f"whitespace); every utterance needs a unique id, the key of its frames in the "
                                 f"store: give one, e.g. derived from the file name.")
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
        if (new or reprobed or relabelled or new_features) and (meta.get("complete") or STATS_CHECKSUMS in meta):
            # Flag the store unfinished before touching it: a plan killed half-way must not
            # leave a store that still claims to be complete. Its statistics' CRCs (index array
            # stats_crc32) cover neither new rows nor a new feature until the next finalize writes them.
            meta["complete"] = False
            meta.pop(STATS_CHECKSUMS, None)
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
            try:
                return extra_json(u.extra)
            except ValueError as exc:  # an infinite number: "Infinity" was written, which is no JSON
                raise StoreError(f"plan: utterance {u.id!r} has extra={dict(u.extra)!r:.120}, which cannot be "
                                 f"stored as JSON ({exc}); give finite numbers, text or None for a missing "
                                 f"value") from None
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
        """A writer for one work unit (any process); commit it when its utterances are added.

        Args:
            unit: One of the work units the plan made.
        """
        for name in unit.regions:
            self._spec(name)
        return UnitWriter(self, unit)
