"""Tests of w2v2ser.store: round trips, statistics, resumability, locking, verify, export."""

from __future__ import annotations

import json
import re
import multiprocessing
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from w2v2ser.store import (
    FeatureSpec,
    StoreError,
    StoreIncompleteError,
    StoreLockedError,
    StoreVersionError,
    StoreWriter,
    Utterance,
    W2v2serError,
    combine_statistics,
    export_hdf5,
    locate_store,
    lock_store,
    open_store,
)

# ---------------------------------------------------------------------------- helpers

W2V = FeatureSpec(name="w2v", dim=6, layers=4, frame_rate=50.0, dtype="float16",
                  config={"model": "tiny", "revision": "abc"},
                  layer_names=("proj", "t1", "t2", "t3"))
SPEC2D = FeatureSpec(name="lld", dim=5, layers=None, frame_rate=100.0, dtype="float32",
                     config={"set": "eGeMAPSv02"})
CHUNK = 8
SHARD = 16  # small shards, so that units span several and utterances cross shard boundaries


def make_utterances(n: int, speakers: list[str], prefix: str = "u") -> list[Utterance]:
    return [
        Utterance(id=f"{prefix}{i:03d}", path=f"/audio/{prefix}{i:03d}.flac",
                  speaker=speakers[i % len(speakers)], label=["angry", "calm", "sad"][i % 3],
                  session="S1", corpus="synthetic", extra={"i": str(i)})
        for i in range(n)
    ]


def random_frames(rng: np.random.Generator, spec: FeatureSpec, length: int) -> np.ndarray:
    # Offset and scale so float16 rounding and the mean both matter for the statistics test.
    return (rng.normal(3.0, 2.0, size=(length, *spec.frame_shape))).astype(np.float32)


@dataclass
class Built:
    path: Path
    utterances: list[Utterance]
    rows: list[int]
    frames: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def stored(self, feature: str, i: int) -> np.ndarray:
        spec = {W2V.name: W2V, SPEC2D.name: SPEC2D}[feature]
        return self.frames[feature][i].astype(spec.dtype)


def build_store(path: Path, *, lengths: list[int], speakers: list[str] | None = None,
                specs: tuple[FeatureSpec, ...] = (W2V, SPEC2D), seed: int = 0,
                finalize: bool = True, write: bool = True, prefix: str = "u",
                slack: int = 0, units: int = 1, batch: int = 0) -> Built:
    """Create a store with random frames of the given lengths (same length for every feature),
    written as `units` work units (0: one write_utterance call per utterance), their utterances
    added one by one or, with `batch`, that many at a time (add_many)."""
    rng = np.random.default_rng(seed)
    utts = make_utterances(len(lengths), speakers or ["A", "B"], prefix)
    writer = StoreWriter(path, chunk_frames={s.name: CHUNK for s in specs},
                         shard_frames={s.name: SHARD for s in specs})
    rows = writer.plan(utts, num_samples=[16000] * len(utts), features=list(specs),
                       capacities={s.name: [n + slack for n in lengths] for s in specs})
    built = Built(path, utts, rows, {s.name: [random_frames(rng, s, n) for n in lengths] for s in specs})
    if write and units == 0:
        for i, row in enumerate(rows):
            writer.write_utterance(row, {s.name: built.frames[s.name][i] for s in specs},
                                   audio_sha256=f"sha{i}", duration=lengths[i] / 50)
    elif write:
        groups = [list(range(len(rows)))[k::units] for k in range(units)]
        for unit in writer.plan_units([[rows[i] for i in g] for g in groups], [s.name for s in specs]):
            with writer.open_unit(unit) as unit_writer:
                for lo in range(0, len(unit.rows), batch or 1):
                    part = [rows.index(row) for row in unit.rows[lo:lo + (batch or 1)]]
                    frames = [{s.name: built.frames[s.name][i] for s in specs} for i in part]
                    if batch:
                        unit_writer.add_many([rows[i] for i in part], frames, audio_sha256=[f"sha{i}" for i in part],
                                             durations=[lengths[i] / 50 for i in part])
                    else:
                        unit_writer.add(rows[part[0]], frames[0], audio_sha256=f"sha{part[0]}",
                                        duration=lengths[part[0]] / 50)
    if finalize:
        writer.finalize()
    writer.close()
    return built


def count_store_reads(monkeypatch: pytest.MonkeyPatch, part: str) -> list[tuple[str, int]]:
    """Record every read of a key holding ``part`` through zarr's LocalStore, and every whole-shard
    read through zarrs (which bypasses LocalStore), as (key, bytes); ``monkeypatch.undo()`` stops it."""
    import zarr.storage

    from w2v2ser.store import _finalize, _verify

    reads: list[tuple[str, int]] = []
    get, whole = zarr.storage.LocalStore.get, _finalize.read_whole_shards

    async def counting_get(self, key, *args, **kwargs):
        buf = await get(self, key, *args, **kwargs)
        if part in key and not key.endswith("zarr.json") and buf is not None:
            reads.append((key, len(buf)))
        return buf

    def counting_whole(array, start, stop):
        block = whole(array, start, stop)
        if part in f"/{array.path}/":
            reads.append((f"{array.path}[{start}:{stop}]", block.nbytes))
        return block

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    for module in (_finalize, _verify):
        monkeypatch.setattr(module, "read_whole_shards", counting_whole)
    return reads


def flip_statistics_byte(path: Path, store: Any, *, row: int) -> None:
    """Flip one bit inside the stored statistics of the utterance in ``row`` (feature SPEC2D), in its shard file."""
    stats = store._array(SPEC2D.name, "stats")
    slot = int(store._per_row(SPEC2D.name)["slot"][row])
    key = stats.metadata.encode_chunk_key((slot // stats.shards[0],) + (0,) * (stats.ndim - 1))
    file = path / "features" / SPEC2D.name / "stats" / key
    raw = bytearray(file.read_bytes())
    at = bytes(raw).find(np.asarray(stats[slot, 0]).tobytes()[:8])
    raw[at + 5] ^= 0x10
    file.write_bytes(bytes(raw))


def shard_file(path: Path, store, feature: str, utterance_id: str) -> Path:
    """Path of the shard file holding the first frame of an utterance."""
    off = int(store._per_row(feature)["offset"][store._row(utterance_id)])
    data = store._array(feature, "data")
    coords = (off // data.shards[0],) + (0,) * (data.ndim - 1)
    return path / "features" / feature / "data" / data.metadata.encode_chunk_key(coords)


LENGTHS = [1, 8, 5, 16, 13, 0, 24, 3]  # 1 frame, chunk multiples, ragged, empty

# ---------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("spec", [W2V, SPEC2D], ids=["3d", "2d"])
def test_round_trip_ragged(tmp_path, spec):
    built = build_store(tmp_path / "s", lengths=LENGTHS, specs=(spec,), slack=3)
    store = open_store(built.path)
    assert store.complete and store.features[spec.name] == spec
    records = store.list_utterances()
    assert [r.id for r in records] == [u.id for u in built.utterances]
    assert records[0].extra == {"i": "0"} and records[2].audio_sha256 == "sha2"
    for i, u in enumerate(built.utterances):
        got = store.read_utterance(u.id, spec.name)
        assert got.dtype == np.dtype(spec.dtype)
        assert got.shape == (LENGTHS[i], *spec.frame_shape)
        np.testing.assert_array_equal(got, built.stored(spec.name, i))
        assert store.num_frames(u.id, spec.name) == LENGTHS[i]
    # One unit: its region starts on a shard boundary, utterances packed back to back.
    rows = store._per_row(spec.name)
    assert rows["offset"][0] % SHARD == 0
    np.testing.assert_array_equal(rows["offset"][1:], rows["offset"][:-1] + rows["length"][:-1])
    assert store.verify().ok


@pytest.mark.parametrize("units", [0, 3])
def test_units_and_single_writes_round_trip(tmp_path, units):
    built = build_store(tmp_path / "s", lengths=LENGTHS, units=units)
    store = open_store(built.path)
    rows = store._per_row("w2v")
    starts = {}
    for i, u in enumerate(built.utterances):
        np.testing.assert_array_equal(store.read_utterance(u.id, "w2v"), built.stored("w2v", i))
        np.testing.assert_array_equal(store.read_utterance(u.id, "lld"), built.stored("lld", i))
        if LENGTHS[i]:  # an empty utterance takes no space
            starts.setdefault(i % units if units else i, int(rows["offset"][i]))
    # Each unit (or single write) starts on its own shard: writers never share a shard file.
    assert all(o % SHARD == 0 for o in starts.values()) and len(set(v // SHARD for v in starts.values())) == len(starts)
    assert store.verify().ok


def _store_files(path: Path) -> dict[str, object]:
    """Every data file's bytes; the journals as records without their time and CRC (zarr.json and the
    Parquet copies hold times too)."""
    files: dict[str, object] = {}
    for p in sorted(path.rglob("*")):
        if not p.is_file() or p.suffix in (".parquet", ".lock") or p.name == "zarr.json":
            continue
        if p.suffix == ".jsonl":
            files[str(p.relative_to(path))] = [{k: v for k, v in json.loads(line).items() if k not in ("t", "crc")}
                                               for line in p.read_text().splitlines()]
        else:
            files[str(p.relative_to(path))] = p.read_bytes()
    return files


@pytest.mark.parametrize("threads", ["1", "4"])
def test_add_many_writes_what_add_writes(tmp_path, monkeypatch, threads):
    # Utterances prepared in parallel threads are packed in order: the same shards, statistics
    # and commit records, byte for byte, as adding them one by one (also with one thread: inline).
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    one = build_store(tmp_path / "one", lengths=LENGTHS * 3, units=2)
    many = build_store(tmp_path / "many", lengths=LENGTHS * 3, units=2, batch=5)
    files = _store_files(one.path)
    assert files == _store_files(many.path)
    assert any(name.startswith("features/w2v/data/") for name in files) and "_journal/main.jsonl" in files
    store = open_store(many.path)
    assert store.verify().ok
    for i, u in enumerate(many.utterances):
        np.testing.assert_array_equal(store.read_utterance(u.id, "w2v"), many.stored("w2v", i))


def test_add_many_packs_the_utterances_before_a_bad_one(tmp_path):
    built = build_store(tmp_path / "s", lengths=[3, 2, 4, 5], specs=(W2V,), write=False, finalize=False)
    writer = StoreWriter(built.path)
    (unit,) = writer.plan_units([built.rows], ["w2v"])
    frames = [{"w2v": built.frames["w2v"][i]} for i in range(4)]
    frames[2] = {"w2v": np.full((4, 4, 6), 1e6)}  # float16 overflow
    with writer.open_unit(unit) as unit_writer:
        with pytest.raises(StoreError, match=r"utterance 'u002', feature 'w2v': .* non-finite"):
            unit_writer.add_many(built.rows, frames, audio_sha256=["a", "b", "c", "d"], durations=[1.0] * 4)
        with pytest.raises(StoreError, match="3 indices, 4 feature sets"):
            unit_writer.add_many(built.rows[:3], frames, audio_sha256=["a"] * 4, durations=[1.0] * 4)
    writer.finalize()
    assert writer.pending(["w2v"]) == [2, 3]
    store = open_store(built.path, allow_incomplete=True)
    for i in (0, 1):
        np.testing.assert_array_equal(store.read_utterance(f"u00{i}", "w2v"), built.stored("w2v", i))

    # With on_bad_frames, the bad utterance is reported and left out; the rest is packed.
    (unit,) = writer.plan_units([[2, 3]], ["w2v"])
    bad: list[tuple[int, str]] = []
    with writer.open_unit(unit) as unit_writer:
        packed = unit_writer.add_many([2, 3], frames[2:], audio_sha256=["c", "d"], durations=[1.0, 1.0],
                                      on_bad_frames=lambda row, error: bad.append((row, str(error))))
    assert packed == [3] and [row for row, _ in bad] == [2]
    assert "float16 holds at most +-65504: extract w2v as float32 (--option w2v.dtype=float32)" in bad[0][1]
    writer.finalize()
    assert writer.pending(["w2v"]) == [2]
    np.testing.assert_array_equal(open_store(built.path, allow_incomplete=True).read_utterance("u003", "w2v"),
                                  built.stored("w2v", 3))


def test_add_many_packs_the_good_features_of_an_utterance_whose_other_feature_is_bad(tmp_path):
    """With on_bad_frames, a float16 overflow in one feature left out every feature of the utterance;
    now only that feature: the utterance is done with its other feature, the bad one listed as failed."""
    built = build_store(tmp_path / "s", lengths=[3, 2], write=False, finalize=False)
    writer = StoreWriter(built.path)
    (unit,) = writer.plan_units([built.rows], ["w2v", "lld"])
    frames = [{name: built.frames[name][i] for name in ("w2v", "lld")} for i in range(2)]
    frames[1]["w2v"] = np.full((2, 4, 6), 1e6)  # float16 overflow
    bad: list[tuple[int, str | None]] = []

    def record(row, error):
        bad.append((row, error.feature))
        writer.record_failure(row, feature=error.feature, reason=str(error))

    with writer.open_unit(unit) as unit_writer:
        assert unit_writer.add_many(built.rows, frames, audio_sha256=["a", "b"], durations=[1.0, 1.0],
                                    on_bad_frames=record) == built.rows
    writer.finalize()
    assert bad == [(built.rows[1], "w2v")]
    store = open_store(built.path)
    assert [r.id for r in store.list_utterances()] == ["u000", "u001"]
    assert [r.id for r in store.list_utterances(feature="w2v")] == ["u000"]
    np.testing.assert_array_equal(store.read_utterance("u001", "lld"), built.stored("lld", 1))
    assert [(f.id, f.feature) for f in store.list_failures()] == [("u001", "w2v")]
    assert store.verify().ok and writer.pending(["w2v", "lld"]) == [built.rows[1]]

def _build_batched(path: str) -> None:
    build_store(Path(path), lengths=LENGTHS, units=1, batch=4)


def test_add_many_in_a_forked_child(tmp_path, monkeypatch):
    # A child forked after the preparing threads started has none of them: it starts its own
    # instead of waiting forever on the parent's pool.
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    build_store(tmp_path / "parent", lengths=LENGTHS, units=1, batch=4)
    child = multiprocessing.get_context("fork").Process(target=_build_batched, args=(str(tmp_path / "child"),))
    child.start()
    child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0
    assert open_store(tmp_path / "child").verify().ok


@pytest.mark.parametrize("lets_go", [True, False], ids=["released", "kept"])
def test_a_shard_buffer_is_refilled_only_after_tensorstore_let_go(tmp_path, monkeypatch, lets_go):
    # tensorstore may read a shard's buffer until the write's commit (no copy is made): a writer
    # that refilled it before would store the next shard's frames. This stand-in reads the
    # buffer only when the commit is awaited and, when `lets_go` is False, keeps it for ever.
    import w2v2ser.store._units as units

    real, kept = units.open_tensorstore, []

    class Late:
        def __init__(self, target):
            self.target = target

        def __getitem__(self, key):
            return Late(self.target[key])

        def write(self, source, *, can_reference_source_data_indefinitely):
            assert can_reference_source_data_indefinitely
            target, pending = self.target, [source]
            if not lets_go:
                kept.append((source, np.array(source)))

            class Commit:
                def result(self):
                    if pending:
                        target.write(np.array(pending.pop())).result()

            return type("Futures", (), {"commit": Commit()})()

    def late(array, *, write):
        target = real(array, write=write)
        return None if target is None else Late(target)

    monkeypatch.setattr(units, "open_tensorstore", late)
    built = build_store(tmp_path / "s", lengths=LENGTHS * 4, units=2, batch=3)
    store = open_store(built.path)
    for i, u in enumerate(built.utterances):
        np.testing.assert_array_equal(store.read_utterance(u.id, "w2v"), built.stored("w2v", i))
        np.testing.assert_array_equal(store.read_utterance(u.id, "lld"), built.stored("lld", i))
    assert store.verify().ok and (lets_go or kept)
    assert all(np.array_equal(view, copy) for view, copy in kept)  # never refilled while held


@pytest.mark.parametrize("code", ["EIO", "EINVAL", "ENOSYS"])
def test_a_failed_fsync_of_the_data_keeps_the_unit_uncommitted(tmp_path, monkeypatch, code):
    # fsync errors were swallowed: after an EIO the commit record followed data that may never
    # reach the disk. EINVAL (a file system that cannot sync a folder) is still no error.
    import errno
    import os

    built = build_store(tmp_path / "s", lengths=[3, 4], specs=(W2V,), write=False, finalize=False)
    writer = StoreWriter(built.path)
    (unit,) = writer.plan_units([built.rows], ["w2v"])
    real = os.fsync

    def failing(fd):
        if "features" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))
        return real(fd)

    unit_writer = writer.open_unit(unit)
    unit_writer.add_many(built.rows, [{"w2v": f} for f in built.frames["w2v"]], audio_sha256=["a", "b"],
                         durations=[1.0, 1.0])
    monkeypatch.setattr(os, "fsync", failing)
    if code == "EIO":
        with pytest.raises(OSError, match="Input/output error"):
            unit_writer.commit()
        monkeypatch.undo()
        assert writer.pending(["w2v"]) == [0, 1]  # nothing committed: the next run redoes the unit
    else:
        unit_writer.commit()
        monkeypatch.undo()
        assert writer.pending(["w2v"]) == []


def test_prepare_threads_follow_the_cores_and_omp_num_threads(monkeypatch):
    from w2v2ser.store._units import prepare_threads

    monkeypatch.setattr("w2v2ser.store._units.usable_cores", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert prepare_threads() == 8  # at most 8
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a Dask worker's share of the cores
    assert prepare_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    assert prepare_threads() == 8


def test_read_batch_equals_read_utterance(tmp_path):
    built = build_store(tmp_path / "s", lengths=LENGTHS, units=2)
    store = open_store(built.path)
    ids = [u.id for u in built.utterances][::-1] + ["u001"]
    for feature, layers in (("w2v", None), ("w2v", [2]), ("w2v", [1, 2]), ("w2v", [3, 0]), ("lld", None)):
        got = store.read_batch(ids, feature, layers=layers)
        assert len(got) == len(ids)
        for uid, frames in zip(ids, got):
            want = store.read_utterance(uid, feature, layers=layers)
            assert frames.dtype == want.dtype
            np.testing.assert_array_equal(frames, want)
    assert store.read_batch([], "w2v") == []
    # A generator of ids (found by a trial: the second pass over it returned [] silently).
    got = store.read_batch((uid for uid in ids[:3]), "lld")
    assert len(got) == 3
    np.testing.assert_array_equal(got[2], store.read_utterance(ids[2], "lld"))
    with pytest.raises(StoreError, match="Did you mean"):
        store.read_batch(["u0000"], "w2v")
    # An id asked for twice gets two arrays (found by a trial: one object twice, so that normalising
    # one in place changed the other).
    first, again = store.read_batch(["u001", "u001"], "lld")
    assert first is not again and not np.shares_memory(first, again)
    with pytest.raises(StoreError, match=r"utterance ids are strings; got a UtteranceRecord \(pass its .id\)"):
        store.read_utterance(store.list_utterances()[0], "lld")


def test_a_store_path_given_as_bytes_opens(tmp_path, monkeypatch):
    """Found in review: open_store(b"s") (names from os.listdir(b".")) was refused as not a path."""
    import os

    build_store(tmp_path / "s", lengths=LENGTHS, units=2)
    monkeypatch.chdir(tmp_path)
    (name,) = os.listdir(b".")
    store = open_store(name)
    assert str(store.path) == "s" and len(store.list_utterances()) == len(LENGTHS)
    assert locate_store(os.fsencode(tmp_path / "s")).url == str(tmp_path / "s")


def test_a_file_url_with_localhost_is_the_local_path_and_another_host_is_refused(tmp_path):
    """Review3 item 13: `file://localhost/data/x` became the relative path `localhost/data/x`, and
    `file://host/x` the relative path `host/x`, with no word."""
    build_store(tmp_path / "s", lengths=LENGTHS, units=2)
    assert locate_store(f"file://localhost{tmp_path / 's'}").url == str(tmp_path / "s")
    assert len(open_store(f"file://localhost{tmp_path / 's'}").list_utterances()) == len(LENGTHS)
    assert locate_store(f"file://{tmp_path / 's'}").url == str(tmp_path / "s")
    with pytest.raises(StoreError, match=r"store: 'file://nas/data/x.zarr' names the host 'nas', but w2v2ser reads "
                                         r"file:// URLs on this machine only\. Write file:///path"):
        locate_store("file://nas/data/x.zarr")


def test_read_batch_into_given_arrays(tmp_path):
    """read_batch(..., out=): the frames land in the caller's arrays (e.g. rows of a padded batch),
    equal to read_utterance's; arrays of the wrong shape, dtype or count are refused by name."""
    built = build_store(tmp_path / "s", lengths=LENGTHS, units=2)
    store = open_store(built.path)
    ids = [u.id for u in built.utterances][::-1] + ["u001"]
    for feature, layers in (("w2v", None), ("w2v", [2]), ("w2v", [3, 0]), ("lld", None)):
        want = [store.read_utterance(uid, feature, layers=layers) for uid in ids]
        batch = np.full((len(ids), max(map(len, want)) + 2, *want[0].shape[1:]), 7, dtype=want[0].dtype)
        out = [batch[k, :len(w)] for k, w in enumerate(want)]
        got = store.read_batch(ids, feature, layers=layers, out=out)
        assert all(g is o for g, o in zip(got, out))
        for k, w in enumerate(want):
            np.testing.assert_array_equal(batch[k, :len(w)], w)
            assert (batch[k, len(w):] == 7).all()  # nothing written past the utterance
    want = store.read_batch(ids[:2], "w2v")
    bad = {"shape": [np.empty((len(want[0]) + 1, *want[0].shape[1:]), want[0].dtype), np.empty_like(want[1])],
           "dtype": [np.empty(want[0].shape, np.float64), np.empty_like(want[1])],
           "count": [np.empty_like(want[0])]}
    frozen = [np.empty_like(w) for w in want]
    frozen[1].flags.writeable = False
    bad["read-only"] = frozen
    for what, out in bad.items():
        with pytest.raises(StoreError, match=r"one per id" if what == "count" else ids[0 if what != "read-only" else 1]):
            store.read_batch(ids[:2], "w2v", out=out)


def test_store_path_with_parent_folder_parts(tmp_path, monkeypatch):
    # tensorstore's file driver refuses "../x.zarr"; the writer's shards go through it.
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    built = build_store(Path("../s.zarr"), lengths=LENGTHS, units=2)
    store = open_store("../s.zarr")
    ids = [u.id for u in built.utterances]
    for i, frames in enumerate(store.read_batch(ids, "w2v")):
        np.testing.assert_array_equal(frames, built.stored("w2v", i))
    assert store.verify().ok


def test_store_at_a_relative_path_that_recurs_in_its_keys(tmp_path, monkeypatch, capsys):
    """`extract --store data` then `store info data` was a FileNotFoundError traceback: zarr's
    LocalStore lists keys by deleting every "data/" from the file paths, so the frames array's
    "features/w2v/data/c/0/0" became "features/w2v/c/0/0". A local store is opened by its
    absolute path, which only the start of a file path holds."""
    from w2v2ser._cli import main

    monkeypatch.chdir(tmp_path)
    build_store(Path("data"), lengths=LENGTHS, units=2)
    relative, absolute = open_store("data").describe(), open_store(tmp_path / "data").describe()
    assert relative["features"]["w2v"]["bytes"] == absolute["features"]["w2v"]["bytes"] > 0
    assert main(["store", "info", "data"]) == 0
    assert "feature     w2v" in capsys.readouterr().out


@pytest.mark.parametrize("layers", [[2], [1, 2], [0, 1, 2, 3], [1, 3], [3, 0], [2, 2]])
def test_layer_read_equals_slice(tmp_path, layers):
    # Ascending runs are read as a slice, other selections by index: both give full[:, layers].
    built = build_store(tmp_path / "s", lengths=[17, 1], specs=(W2V,))
    store = open_store(built.path)
    full = store.read_utterance("u000", "w2v")
    np.testing.assert_array_equal(store.read_utterance("u000", "w2v", layers=layers), full[:, layers])
    np.testing.assert_array_equal(store.read_batch(["u001", "u000"], "w2v", layers=layers)[1], full[:, layers])
    with pytest.raises(StoreError, match="0..3"):
        store.read_utterance("u000", "w2v", layers=[4])


@pytest.mark.parametrize("layers", [[1.5], ["3"], [True], 3, "3", object(), {"a": 1}])
def test_layers_that_are_not_integer_indices_raise_on_every_read_path(tmp_path, layers):
    """int() was applied to each layer: layers=[1.5] read layer 1 and ["3"] layer 3, without a word."""
    store = open_store(build_store(tmp_path / "s", lengths=[5], specs=(W2V,)).path)
    for read in (lambda: store.read_utterance("u000", "w2v", layers=layers),
                 lambda: store.read_batch(["u000"], "w2v", layers=layers),
                 lambda: store.compose_statistics("w2v", layers=layers)):
        with pytest.raises(StoreError,
                           match=r"feature 'w2v': layers.*(integer indices in 0\.\.3|list of layer indices)"):
            read()
    np.testing.assert_array_equal(store.read_utterance("u000", "w2v", layers=np.array([3, 1])),
                                  store.read_utterance("u000", "w2v")[:, [3, 1]])


def test_layers_given_as_a_slice_or_range_read_those_layers(tmp_path):
    """layers=slice(0, 3) raised a bare TypeError ('slice' object is not iterable)."""
    store = open_store(build_store(tmp_path / "s", lengths=[5], specs=(W2V,)).path)
    full = store.read_utterance("u000", "w2v")
    for layers, want in ((slice(0, 3), [0, 1, 2]), (slice(2, None), [2, 3]), (range(1, 4, 2), [1, 3])):
        np.testing.assert_array_equal(store.read_utterance("u000", "w2v", layers=layers), full[:, want])
        np.testing.assert_array_equal(store.read_batch(["u000"], "w2v", layers=layers)[0], full[:, want])
    with pytest.raises(StoreError, match="non-empty"):
        store.read_utterance("u000", "w2v", layers=slice(5, 9))


def test_unknown_names_raise_with_suggestion(tmp_path):
    store = open_store(build_store(tmp_path / "s", lengths=[2]).path)
    with pytest.raises(StoreError, match="Did you mean 'u000'"):
        store.read_utterance("u00", "w2v")
    with pytest.raises(StoreError, match="Did you mean 'w2v'"):
        store.read_utterance("u000", "w2w")
    with pytest.raises(StoreError, match="layers=None"):
        store.read_utterance("u000", "lld", layers=[0])


# ---------------------------------------------------------------------------- statistics


def test_combine_statistics_matches_direct():
    rng = np.random.default_rng(1)
    x = rng.normal(1e3, 1.0, size=(1000, 3))  # large mean: naive sum-of-squares would lose digits
    parts = []
    for a, b in [(0, 1), (1, 400), (400, 401), (401, 1000)]:
        seg = x[a:b]
        parts.append((len(seg), seg.mean(0), ((seg - seg.mean(0)) ** 2).sum(0)))
    n, mean, m2 = combine_statistics(parts)
    assert n == 1000
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m2 / n, x.var(0), rtol=1e-9)


@pytest.mark.parametrize("spec", [W2V, SPEC2D], ids=["3d", "2d"])
def test_compose_statistics_equals_direct(tmp_path, spec):
    # Speaker "solo" has exactly one utterance of one frame: variance 0, not NaN.
    lengths = [1, 9, 30, 4, 17, 8]
    speakers = ["solo", "B", "C"]
    rng = np.random.default_rng(7)
    utts = [Utterance(id=f"u{i}", path=f"/a/{i}.wav", speaker=s, label="x")
            for i, s in enumerate(["solo", "B", "C", "B", "C", "C"])]
    writer = StoreWriter(tmp_path / "s", chunk_frames={spec.name: CHUNK})
    rows = writer.plan(utts, num_samples=[1] * 6, features=[spec],
                       capacities={spec.name: lengths})
    for row, n in zip(rows, lengths):
        writer.write_utterance(row, {spec.name: random_frames(rng, spec, n)}, audio_sha256="", duration=1.0)
    writer.finalize()
    store = open_store(tmp_path / "s")
    assert store.speakers() == sorted(speakers)

    def direct(spks, layers=None):
        frames = [store.read_utterance(u.id, spec.name, layers=layers) for u in utts if u.speaker in spks]
        x = np.concatenate(frames).astype(np.float64)
        return len(x), np.mean(x, axis=0), np.var(x, axis=0)

    for spks, layers in [(None, None), (["B", "C"], None), (["solo"], None), (["solo", "C"], None)] + (
        [(None, [1, 3]), (["B"], [0])] if spec.layers else []
    ):
        got = store.compose_statistics(spec.name, speakers=spks, layers=layers)
        n, mean, var = direct(spks or speakers, layers)
        assert got.count == n
        np.testing.assert_allclose(got.mean, mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.variance, var, rtol=1e-9, atol=1e-12)
        assert not np.isnan(got.std).any()
    solo = store.compose_statistics(spec.name, speakers=["solo"])
    assert solo.count == 1 and np.all(solo.variance == 0)
    with pytest.raises(StoreError, match="not in store"):
        store.compose_statistics(spec.name, speakers=["nobody"])

    # Over some utterances only (a run on a subset): their frames' statistics; over all of them,
    # exactly the speaker tables' figures (composed the same way).
    for spks, ids, layers in [(["C"], ["u2", "u5"], None), (["B", "C"], ["u1", "u2", "u4"], None),
                              (["B", "C", "solo"], ["u5", "u0", "u3"], [1, 3] if spec.layers else None)]:
        got = store.compose_statistics(spec.name, speakers=spks, layers=layers, utterances=ids)
        x = np.concatenate([store.read_utterance(u.id, spec.name, layers=layers) for u in utts
                            if u.id in ids and u.speaker in spks]).astype(np.float64)
        assert got.count == len(x)
        np.testing.assert_allclose(got.mean, x.mean(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.variance, x.var(0), rtol=1e-9, atol=1e-12)
    every = [u.id for u in utts]
    for spks in (["B"], ["B", "C"], None):
        table = store.compose_statistics(spec.name, speakers=spks)
        composed = store.compose_statistics(spec.name, speakers=spks, utterances=every)
        assert composed.count == table.count
        np.testing.assert_array_equal(composed.mean, table.mean)
        np.testing.assert_array_equal(composed.variance, table.variance)
    with pytest.raises(StoreError, match="expected a list of utterance ids"):
        store.compose_statistics(spec.name, utterances="u1")


def test_compose_statistics_over_utterances_reads_only_their_slots(tmp_path, monkeypatch):
    """Speaker normalisation of a subset composes each speaker from its utterances' statistics.
    With speakers interleaved in the store, one speaker's slots span the whole store: only its own
    slots are read, not every slot between its first and last (300 speakers of a 30,000-utterance
    store took 20-30 s each, per fold and seed). Slots of 4 KiB: small ones are read as whole shards,
    rightly. Reads through zarrs (whole shards) bypass LocalStore.get: they are counted too."""


    wide = FeatureSpec(name="lld", dim=256, layers=None, frame_rate=100.0, dtype="float32", config={"set": "x"})
    speakers = [f"s{k:02d}" for k in range(16)]
    built = build_store(tmp_path / "s", lengths=[4] * 256, speakers=speakers, specs=(wide,), units=1)
    store = open_store(built.path)
    every = [u.id for u in built.utterances]
    read = count_store_reads(monkeypatch, "/stats/")
    got = store.compose_statistics(wide.name, speakers=["s03"], utterances=every)
    monkeypatch.undo()
    table = store.compose_statistics(wide.name, speakers=["s03"])
    assert got.count == table.count
    np.testing.assert_array_equal(got.mean, table.mean)
    slot_bytes = 2 * wide.dim * 8
    # Its 16 slots (with their checksums) and the shard indexes, not the 256 slots of the store.
    assert sum(n for _, n in read) < 0.25 * 256 * slot_bytes, read


def test_statistics_of_many_utterances_are_read_by_whole_shards_and_stay_checked(tmp_path, monkeypatch):
    """Composing over many utterances (a subset's normalisation, finalize, verify) read their statistics
    one inner chunk (one slot) at a time through zarr's own pipeline, about 0.3 ms each: 75,000
    eGeMAPS utterances of a 150,000-utterance store took 50 s. Whole shards read through zarrs, which
    checks each inner chunk's crc32c there; a damaged shard still raises."""
    speakers = [f"s{k:02d}" for k in range(16)]
    built = build_store(tmp_path / "s", lengths=[4] * 300, speakers=speakers, specs=(SPEC2D,), units=3)
    store = open_store(built.path)
    every = [u.id for u in built.utterances]
    half = [uid for k, uid in enumerate(every) if k % 3]  # 200 of them, of every speaker
    reads = count_store_reads(monkeypatch, "/stats/")
    got = store.compose_speaker_statistics(SPEC2D.name, speakers=speakers, utterances=half)
    monkeypatch.undo()
    # 200 slots in 6 shards: at most a shard index and a shard per shard, not a read per slot.
    assert len(reads) <= 12, (len(reads), reads[:5])
    for spk in speakers[:4]:
        frames = np.concatenate([built.frames[SPEC2D.name][i] for i, u in enumerate(built.utterances)
                                 if u.speaker == spk and u.id in half]).astype(np.float64)
        assert got[spk].count == len(frames)
        np.testing.assert_allclose(got[spk].mean, frames.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(got[spk].variance, frames.var(axis=0), rtol=1e-9)
    # A flipped byte in a statistics shard: the composition raises, it never reads the damage silently.
    flip_statistics_byte(built.path, store, row=10)
    with pytest.raises(StoreError, match="stats cannot be read"):
        open_store(built.path).compose_speaker_statistics(SPEC2D.name, speakers=speakers, utterances=half)


def test_verify_reads_the_statistics_of_a_window_together_and_still_names_damage(tmp_path, monkeypatch):
    """verify read each utterance's statistics alone through zarr's pipeline: about a third of its
    time on a store of small features (30,000 eGeMAPS utterances: 49 s, then 20 s). A window's slots are
    read together as whole shards; a damaged slot is still named as its own utterance's problem."""
    built = build_store(tmp_path / "s", lengths=[4] * 300, speakers=["A", "B", "C"], specs=(SPEC2D,), units=3)
    reads = count_store_reads(monkeypatch, "/stats/")
    assert open_store(built.path).verify().ok
    monkeypatch.undo()
    assert len(reads) <= 2 * 6, (len(reads), reads[:5])  # 6 shards, not a read per utterance (300)
    store = open_store(built.path)
    victim = built.utterances[77]
    flip_statistics_byte(built.path, store, row=store._row(victim.id))
    report = open_store(built.path).verify()
    assert {(uid, feature) for uid, feature, _ in report.problems} == {(victim.id, SPEC2D.name)}, report.problems
    assert "statistics" in report.problems[0][2]


def test_small_statistics_of_a_sparse_subset_are_read_by_whole_shards(tmp_path, monkeypatch):
    """A subset whose utterances lie spread over the store (a third of the speakers) read each of
    their slots alone through zarr's pipeline: 50,000 eGeMAPS utterances of 1,000 speakers took 10 s.
    Slots that small are read as the whole shards that hold them (checked by zarrs); the figures
    are those of the speaker tables."""
    speakers = [f"s{k:02d}" for k in range(15)]
    built = build_store(tmp_path / "s", lengths=[4] * 384, speakers=speakers, specs=(SPEC2D,), units=3)
    store = open_store(built.path)
    kept = speakers[:5]
    subset = [u.id for u in built.utterances if u.speaker in kept]
    reads = count_store_reads(monkeypatch, "/stats/")
    got = store.compose_speaker_statistics(SPEC2D.name, speakers=kept, utterances=subset)
    monkeypatch.undo()
    assert len(reads) <= 2 * 6, (len(reads), reads[:5])  # 6 shards: not a read per slot (128)
    for spk in kept:
        table = store.compose_statistics(SPEC2D.name, speakers=[spk])
        assert got[spk].count == table.count
        np.testing.assert_array_equal(got[spk].mean, table.mean)
        np.testing.assert_array_equal(got[spk].variance, table.variance)


def test_speaker_normalisation_of_the_whole_store_reads_the_speaker_tables_once(tmp_path, monkeypatch):
    """build_normaliser's speaker mode without a subset composed speaker by speaker, each call reading
    the speaker names, counts and shapes again (about 17 ms): 3,000 speakers took 51 s per run; and
    the global statistics read each speaker's table rows alone (3 s). The speaker tables are now read
    a chunk of speakers at a time; the figures are compose_statistics' per speaker, to the bit."""
    from w2v2ser.train import build_normaliser

    speakers = [f"s{k:03d}" for k in range(100)]
    built = build_store(tmp_path / "s", lengths=[3 + k % 4 for k in range(300)], speakers=speakers,
                        specs=(W2V,), units=3)
    store = open_store(built.path)
    reads = count_store_reads(monkeypatch, "/speaker_")
    norm = build_normaliser(store, "w2v:1-2", "speaker", train_speakers=[], speakers=speakers)
    # speaker_name, speaker_count and speaker_crc32 once, speaker_mean and speaker_m2 once per chunk of 64 speakers.
    assert len(reads) <= 3 + 2 * 2, (len(reads), sorted(set(reads)))
    reads.clear()
    pooled = build_normaliser(store, "w2v:1-2", "global", train_speakers=speakers, speakers=speakers)
    assert len(reads) <= 3 + 2 * 2, (len(reads), sorted(set(reads)))
    monkeypatch.undo()
    frames = np.concatenate([f.astype(W2V.dtype) for f in built.frames[W2V.name]]).astype(np.float64)[:, 1:3]
    np.testing.assert_allclose(pooled.mean, frames.mean(axis=0), rtol=1e-12)
    tables = store.compose_speaker_statistics(W2V.name, speakers=speakers[::-1], layers=[1, 2], utterances=None)
    assert list(tables) == speakers
    for spk in speakers:
        one = store.compose_statistics(W2V.name, speakers=[spk], layers=[1, 2])
        assert tables[spk].count == one.count
        np.testing.assert_array_equal(tables[spk].mean, one.mean)
        np.testing.assert_array_equal(tables[spk].variance, one.variance)
        np.testing.assert_array_equal(norm.speaker_mean[spk], one.mean)
    assert store.compose_speaker_statistics(W2V.name, speakers=[], utterances=None) == {}


def test_an_emptied_statistics_shard_raises_on_every_composition_and_finalize(tmp_path):
    """zarr and zarrs read a statistics shard file cut to 0 bytes as zeros, checksums and all (no index
    to check): compose_statistics returned wrong figures and finalize wrote wrong speaker tables. Now
    statistics that read as zeros for an utterance whose frames are not all zero raise."""
    speakers = ["a", "b", "c"]
    built = build_store(tmp_path / "s", lengths=[4] * 150, speakers=speakers, specs=(SPEC2D,), units=1)
    every = [u.id for u in built.utterances]
    store = open_store(built.path)
    stats = store._array(SPEC2D.name, "stats")
    slot = int(store._per_row(SPEC2D.name)["slot"][70])
    key = stats.metadata.encode_chunk_key((slot // stats.shards[0],) + (0,) * (stats.ndim - 1))
    (built.path / "features" / SPEC2D.name / "stats" / key).write_bytes(b"")
    calls = {
        "all": lambda s: s.compose_statistics(SPEC2D.name, utterances=every),
        "one speaker": lambda s: s.compose_statistics(SPEC2D.name, speakers=["b"], utterances=every),
        "subset": lambda s: s.compose_statistics(SPEC2D.name, utterances=every[60:80]),
        "per speaker": lambda s: s.compose_speaker_statistics(SPEC2D.name, speakers=speakers, utterances=every[::2]),
    }
    for what, call in calls.items():
        with pytest.raises(StoreError, match="stats cannot be read") as caught:
            call(open_store(built.path))
        assert "zeros" in str(caught.value) or "checksum" in str(caught.value), (what, caught.value)
    with pytest.raises(StoreError, match="cannot be composed"):
        StoreWriter(built.path).finalize()
    assert not open_store(built.path).verify().ok
    # Digital silence reads as zeros too, rightly: its statistics compose (and verify) as before.
    quiet = StoreWriter(tmp_path / "q", chunk_frames={SPEC2D.name: CHUNK}, shard_frames={SPEC2D.name: SHARD})
    utts = make_utterances(3, speakers)
    rows = quiet.plan(utts, num_samples=[16000] * 3, features=[SPEC2D], capacities={SPEC2D.name: [4, 4, 4]})
    for row, value in zip(rows, (0.0, 0.0, 2.0)):
        quiet.write_utterance(row, {SPEC2D.name: np.full((4, 5), value, np.float32)}, audio_sha256="x", duration=1.0)
    quiet.finalize()
    quiet.close()
    got = open_store(tmp_path / "q").compose_statistics(SPEC2D.name, utterances=[u.id for u in utts])
    assert got.count == 12 and np.allclose(got.mean, 2 / 3)
    assert open_store(tmp_path / "q").verify().ok


def _replace_statistics_shard(path: Path, feature: str, *, source: int, target: int) -> None:
    """Overwrite statistics shard ``target`` of ``feature`` with a valid copy of shard ``source``."""
    folder = path / "features" / feature / "stats" / "c"
    shutil.copyfile(folder / str(source) / "0" / "0", folder / str(target) / "0" / "0")


def test_a_statistics_shard_replaced_by_another_raises_on_every_read_path(tmp_path):
    """Found by a follow-up: a statistics shard file replaced by a valid copy of another shard (every
    crc32c right) made compose_statistics, compose_speaker_statistics, finalize's speaker tables and
    export compose or copy other utterances' statistics without an error. Each commit now records the
    checksum of its statistics slot, and every read compares it."""
    speakers = ["a", "b", "c"]
    built = build_store(tmp_path / "s", lengths=[4] * 150, speakers=speakers, specs=(SPEC2D,), units=1)
    every = [u.id for u in built.utterances]
    _replace_statistics_shard(built.path, SPEC2D.name, source=0, target=1)
    calls = {
        "all": lambda s: s.compose_statistics(SPEC2D.name, utterances=every),
        "subset": lambda s: s.compose_statistics(SPEC2D.name, utterances=every[60:80]),
        "per speaker": lambda s: s.compose_speaker_statistics(SPEC2D.name, speakers=speakers, utterances=every[::2]),
    }
    for what, call in calls.items():
        with pytest.raises(StoreError, match="stats cannot be read.*not those their commit recorded"):
            call(open_store(built.path))
    with pytest.raises(StoreError, match=r"does not hold the statistics that the commit of utterance\(s\) 'u064'"):
        export_hdf5(built.path, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()
    with pytest.raises(StoreError, match="cannot be composed"):
        StoreWriter(built.path).finalize()
    assert not open_store(built.path).verify().ok
    # Utterances of the intact shards still compose.
    assert open_store(built.path).compose_statistics(SPEC2D.name, utterances=every[:60]).count == 240


def test_speaker_tables_replaced_by_other_valid_chunks_raise_on_every_read(tmp_path):
    """Found by a follow-up: a chunk file of speaker_mean/speaker_m2 replaced by a valid copy of another
    (another block of 64 speakers, or another store's tables) gave compose_statistics, the speaker tables
    that speaker normalisation reads and export other speakers' figures without an error. Finalize now
    records a CRC per speaker row (speaker_crc32), and every read of the tables compares it."""
    speakers = [f"s{i:03d}" for i in range(140)]
    base = build_store(tmp_path / "base", lengths=[4] * 150, speakers=speakers, specs=(SPEC2D,))
    other = build_store(tmp_path / "other", lengths=[4] * 150, speakers=speakers, specs=(SPEC2D,), seed=1)
    tables = Path("features") / SPEC2D.name
    for damage in ("another block", "another store"):
        path = tmp_path / damage.replace(" ", "_")
        shutil.copytree(base.path, path)
        if damage == "another block":
            shutil.copyfile(path / tables / "speaker_mean/c/0/0", path / tables / "speaker_mean/c/1/0")
        else:
            for arr in ("speaker_mean", "speaker_m2"):
                shutil.copytree(other.path / tables / arr / "c", path / tables / arr / "c", dirs_exist_ok=True)
        calls = {
            "pooled": lambda s: s.compose_statistics(SPEC2D.name, speakers=speakers[60:80]),
            "per speaker": lambda s: s.compose_speaker_statistics(SPEC2D.name, speakers=speakers, utterances=None),
            "export": lambda s: export_hdf5(path, tmp_path / f"{damage}.h5"),
        }
        for what, call in calls.items():
            with pytest.raises(StoreError, match="do not hold the figures that finalize recorded"):
                call(open_store(path))
        assert not open_store(path).verify().ok, damage
        StoreWriter(path).finalize()  # rerunning the extraction recomposes them
        assert open_store(path).compose_statistics(SPEC2D.name, speakers=speakers[60:80]).count == 80
    # Right figures with a wrong recorded CRC are refused by the reads, so verify names them too.
    import zarr

    zarr.open_array(str(path / tables / "speaker_crc32"), mode="r+")[70] = 12345
    with pytest.raises(StoreError, match="do not hold the figures that finalize recorded"):
        open_store(path).compose_statistics(SPEC2D.name, speakers=speakers[60:80])
    assert any("speaker_crc32" in reason for _, _, reason in open_store(path).verify().problems)


def test_a_store_finalized_without_statistics_checksums_reads_as_before(tmp_path, capsys):
    """A store whose last finalize recorded no statistics checksums (an earlier w2v2ser, or an older one
    that finalized it since) is read without them: same figures, verify intact; a new finalize records them."""
    import zarr

    built = build_store(tmp_path / "s", lengths=[4, 3, 5, 2], speakers=["a", "b"], specs=(SPEC2D,))
    every = [u.id for u in built.utterances]
    want = open_store(built.path).compose_statistics(SPEC2D.name, utterances=every)
    group = zarr.open_group(str(built.path), mode="r+")
    meta = dict(group.attrs["w2v2ser"])
    assert meta.pop("stats_checksums") == meta["finalized"]
    group.attrs["w2v2ser"] = meta
    del group[f"features/{SPEC2D.name}/stats_crc32"]
    store = open_store(built.path)
    assert (store._per_row(SPEC2D.name)["stats_crc32"] == -1).all()
    got = store.compose_statistics(SPEC2D.name, utterances=every)
    np.testing.assert_array_equal(got.mean, want.mean)
    assert store.verify().ok
    assert not open_store(built.path).describe()["statistics_checksums"]
    from w2v2ser._cli import main

    assert main(["store", "info", str(built.path)]) == 0
    assert "statistics  no checksums recorded" in capsys.readouterr().out
    StoreWriter(built.path).finalize()
    assert (open_store(built.path)._per_row(SPEC2D.name)["stats_crc32"] >= 0).all()
    assert open_store(built.path).describe()["statistics_checksums"]
    assert main(["store", "info", str(built.path)]) == 0
    assert "checksums" not in capsys.readouterr().out


def test_a_store_written_before_statistics_checksums_says_so_also_after_a_new_finalize(tmp_path, capsys):
    """Review s67 R3: a store really written by an earlier w2v2ser (commit records without a statistics CRC)
    was said to be checked once a newer finalize had run (it records -1 for those rows), and `store info`
    advised a rerun of its extraction, which records no CRC for work already done."""
    from w2v2ser._cli import main

    built = build_store(tmp_path / "s", lengths=[4, 3, 5, 2], speakers=["a", "b"], specs=(SPEC2D,))
    _as_written_before_statistics_checksums(built.path)
    StoreWriter(built.path).finalize()
    assert not open_store(built.path).describe()["statistics_checksums"]
    assert main(["store", "info", str(built.path)]) == 0
    out = capsys.readouterr().out
    assert "no checksums recorded for some or all utterances" in out and "rerun" not in out


def test_a_store_being_extended_is_read_without_its_last_statistics_checksums(tmp_path):
    """Review s67 R1/R2: planning a new feature or more utterances into a finalized store left its mark that
    the statistics CRCs are current, though the index array covered neither: `store info` called the sound
    store damaged mid-extraction (stats_crc32 of the new feature cannot be opened), and composing over a new
    row raised IndexError. Until the next finalize they are read without those CRCs."""
    from w2v2ser._cli import main

    built = build_store(tmp_path / "s", lengths=[4] * 10, speakers=["a", "b"], specs=(SPEC2D,))
    old_ids = [u.id for u in built.utterances]
    want = open_store(built.path).compose_statistics(SPEC2D.name, utterances=old_ids)
    more = built.utterances + make_utterances(20, ["a", "b"], prefix="v")
    writer = StoreWriter(built.path, chunk_frames={SPEC2D.name: CHUNK, W2V.name: CHUNK},
                         shard_frames={SPEC2D.name: SHARD, W2V.name: SHARD})
    writer.plan(more, num_samples=[16000] * len(more), features=[SPEC2D, W2V],
                capacities={SPEC2D.name: [4] * len(more), W2V.name: [4] * len(more)})
    writer.close()
    store = open_store(built.path, allow_incomplete=True)
    got = store.compose_statistics(SPEC2D.name, utterances=[*old_ids, "v000"])
    assert got.count == want.count
    np.testing.assert_array_equal(got.mean, want.mean)
    assert main(["store", "info", str(built.path)]) == 0


def test_frames_of_negative_zeros_are_digital_silence_too(tmp_path):
    """Found by a follow-up: an utterance whose frames are all -0.0 has all-zero statistics, as digital
    silence has, but the zero-shard check compared its CRCs with those of +0.0 zeros only (other bytes),
    so finalize called its statistics shard missing and refused the store. Per layer, too."""
    for spec, frames in ((SPEC2D, [np.full((4, 5), -0.0, np.float32), np.full((4, 5), 2.0, np.float32)]),
                         (W2V, [np.stack([np.full((4, 6), v, np.float16) for v in (-0.0, 0.0, -0.0, 0.0)], axis=1),
                                np.full((4, 4, 6), 2.0, np.float16)])):
        path = tmp_path / spec.name
        writer = StoreWriter(path, chunk_frames={spec.name: CHUNK}, shard_frames={spec.name: SHARD})
        utts = make_utterances(2, ["a"])
        rows = writer.plan(utts, num_samples=[16000] * 2, features=[spec], capacities={spec.name: [4, 4]})
        for row, x in zip(rows, frames):
            writer.write_utterance(row, {spec.name: x}, audio_sha256="x", duration=1.0)
        writer.finalize()
        writer.close()
        store = open_store(path)
        got = store.compose_statistics(spec.name, utterances=[u.id for u in utts])
        assert got.count == 8 and np.allclose(got.mean, 1.0), spec.name
        assert store.verify().ok, spec.name


def _as_written_before_statistics_checksums(path: Path) -> None:
    """Make a finalized store look as an earlier w2v2ser left it: commit records without ``stats_crc32``
    (each line's own CRC made anew, as that version wrote it), no index array, no root mark."""
    import zlib

    import zarr

    for journal in (path / "_journal").glob("*.jsonl"):
        lines = []
        for raw in journal.read_bytes().splitlines():
            rec = json.loads(raw)
            rec.pop("crc", None)
            rec.pop("stats_crc32", None)
            body = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
            lines.append(body[:-1] + b',"crc":"%08x"}\n' % zlib.crc32(body))
        journal.write_bytes(b"".join(lines))
    group = zarr.open_group(str(path), mode="r+")
    meta = dict(group.attrs["w2v2ser"])
    meta.pop("stats_checksums")
    group.attrs["w2v2ser"] = meta
    for feature in meta["features"]:
        del group[f"features/{feature}/stats_crc32"]


@pytest.mark.parametrize("array", ["stats_crc32", "speaker_crc32"])
def test_a_deleted_chunk_of_the_statistics_checksums_raises_also_after_an_older_finalize(tmp_path, array):
    """Found by a follow-up: where an older w2v2ser's finalize had left all_chunks_stored behind, a deleted
    chunk of the statistics' CRCs read as -1 ("none recorded") and a replaced statistics shard or speaker
    table was composed without a word. The finalize that marks stats_checksums writes them whole, so a
    missing chunk raises whatever all_chunks_stored says."""
    import zarr

    speakers = [f"s{i:03d}" for i in range(70)]
    built = build_store(tmp_path / "s", lengths=[4] * 150, speakers=speakers, specs=(SPEC2D,), units=1)
    group = zarr.open_group(str(built.path), mode="r+")
    meta = dict(group.attrs["w2v2ser"])
    group.attrs["w2v2ser"] = {**meta, "all_chunks_stored": "2020-01-01T00:00:00+00:00"}  # an older finalize's
    tables = built.path / "features" / SPEC2D.name
    if array == "stats_crc32":
        _replace_statistics_shard(built.path, SPEC2D.name, source=0, target=1)
    else:
        shutil.copyfile(tables / "speaker_mean/c/0/0", tables / "speaker_mean/c/1/0")
    (tables / array / "c" / "0").unlink()
    every = [u.id for u in built.utterances]
    with pytest.raises(StoreError, match=f"{array} lacks chunk files"):
        if array == "stats_crc32":
            open_store(built.path).compose_statistics(SPEC2D.name, utterances=every)
        else:
            open_store(built.path).compose_statistics(SPEC2D.name, speakers=speakers)


def test_frames_mixing_positive_and_negative_zeros_are_digital_silence_too(tmp_path):
    """Found by a follow-up: a layer whose frames mix 0.0 and -0.0 has all-zero statistics (unstored, read
    as zeros), but the CRCs of neither all-0.0 nor all--0.0 frames, so finalize called its statistics shard
    missing and refused a sound store, and reads called it damaged. New stores compare the statistics'
    own CRC; in stores without it, such rows are told from their (CRC-checked) frames."""
    for spec in (SPEC2D, W2V):
        mixed = np.zeros((4, *spec.frame_shape), np.float32)
        mixed[::2] = -0.0
        frames = [mixed.astype(spec.dtype), np.full((4, *spec.frame_shape), 2.0, spec.dtype)]
        path = tmp_path / spec.name
        writer = StoreWriter(path, chunk_frames={spec.name: CHUNK}, shard_frames={spec.name: SHARD})
        utts = make_utterances(2, ["a"])
        rows = writer.plan(utts, num_samples=[16000] * 2, features=[spec], capacities={spec.name: [4, 4]})
        for row, x in zip(rows, frames):  # a unit each: the first one's statistics shard holds only zeros
            writer.write_utterance(row, {spec.name: x}, audio_sha256="x", duration=1.0)
        writer.finalize()
        writer.close()
        for when in ("new", "earlier"):
            if when == "earlier":
                _as_written_before_statistics_checksums(path)
                StoreWriter(path).finalize()
                assert (open_store(path)._per_row(spec.name)["stats_crc32"] == -1).all()
            store = open_store(path)
            got = store.compose_statistics(spec.name, utterances=[u.id for u in utts])
            assert got.count == 8 and np.allclose(got.mean, 1.0), (spec.name, when)
            assert store.compose_speaker_statistics(spec.name, speakers=["a"], utterances=[utts[0].id])["a"].count == 4
            export_hdf5(path, tmp_path / f"{spec.name}-{when}.h5")
            assert store.verify().ok, (spec.name, when)


def test_export_of_an_emptied_statistics_shard_raises_instead_of_copying_zeros(tmp_path):
    """zarr reads a statistics shard file cut to 0 bytes as zeros (no shard index to check): export_hdf5
    copied them as the utterances' statistics. Now it raises, naming an utterance, and writes no file."""
    built = build_store(tmp_path / "s", lengths=[4] * 150, speakers=["a", "b"], specs=(SPEC2D,), units=1)
    store = open_store(built.path)
    stats = store._array(SPEC2D.name, "stats")
    slot = int(store._per_row(SPEC2D.name)["slot"][70])
    key = stats.metadata.encode_chunk_key((slot // stats.shards[0],) + (0,) * (stats.ndim - 1))
    (built.path / "features" / SPEC2D.name / "stats" / key).write_bytes(b"")
    with pytest.raises(StoreError, match=r"features/lld/stats reads as zeros for utterance\(s\) 'u\d+' and 63 more"):
        export_hdf5(built.path, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()
    # Digital silence has all-zero statistics, rightly: it exports.
    quiet = StoreWriter(tmp_path / "q", chunk_frames={SPEC2D.name: CHUNK}, shard_frames={SPEC2D.name: SHARD})
    utts = make_utterances(2, ["a"])
    rows = quiet.plan(utts, num_samples=[16000] * 2, features=[SPEC2D], capacities={SPEC2D.name: [4, 4]})
    for row, value in zip(rows, (0.0, 1.0)):
        quiet.write_utterance(row, {SPEC2D.name: np.full((4, 5), value, np.float32)}, audio_sha256="x", duration=1.0)
    quiet.finalize()
    quiet.close()
    export_hdf5(tmp_path / "q", tmp_path / "q.h5")
    with h5py.File(tmp_path / "q.h5") as h5:
        means = [h5[k][:] for k in ("features/lld/utt_mean", "lld/utt_mean") if k in h5]
    assert len(means) == 1 and sorted(means[0][:, 0].tolist()) == [0.0, 1.0]


def test_speaker_normalisation_of_a_subset_reads_the_statistics_once_and_keeps_nothing(tmp_path, monkeypatch):
    """build_normaliser's speaker mode on a subset needs every speaker's statistics over the same
    utterances: the figures equal compose_statistics' per speaker (and the speaker tables'), the
    statistics are read about once in all, not once per speaker (each speaker's slots lie in every
    shard), and nothing stays on the reader afterwards (it kept every speaker's float64 mean and
    M2 of every layer for its life: 2,000 speakers of 25 x 1024 held 820 MB)."""
    import gc
    import tracemalloc


    from w2v2ser.train import build_normaliser

    big = FeatureSpec(name="big", dim=64, layers=25, frame_rate=50.0, dtype="float16", config={"model": "tiny"})
    speakers = [f"s{k:03d}" for k in range(128)]
    built = build_store(tmp_path / "s", lengths=[4] * 256, speakers=speakers, specs=(big,), units=4)
    store = open_store(built.path)
    every = [u.id for u in built.utterances]
    store.compose_statistics("big", speakers=["s000"], layers=[3], utterances=every[:1])  # the reader's own caches
    read = count_store_reads(monkeypatch, "/stats/")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        norm = build_normaliser(store, "big:3", "speaker", train_speakers=[], speakers=speakers, utterances=every)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        monkeypatch.undo()
    # The normaliser's own tables: 128 speakers x 2 x 64 float64 = 131 KB; every layer of every
    # speaker would be 25 times that.
    assert held < 1_000_000, held
    assert sum(n for _, n in read) < 2 * 256 * 2 * 25 * 64 * 8, read
    for spk in speakers:
        one = store.compose_statistics("big", speakers=[spk], layers=[3], utterances=every)
        np.testing.assert_array_equal(norm.speaker_mean[spk], one.mean.reshape(64))
        table = store.compose_statistics("big", speakers=[spk], layers=[3])
        assert one.count == table.count
        np.testing.assert_array_equal(one.mean, table.mean)
        np.testing.assert_array_equal(one.variance, table.variance)
    got = store.compose_speaker_statistics("big", speakers=speakers[:3], layers=[1, 2], utterances=every)
    for spk, stats in got.items():
        one = store.compose_statistics("big", speakers=[spk], layers=[1, 2], utterances=every)
        assert stats.count == one.count
        np.testing.assert_array_equal(stats.mean, one.mean)
        np.testing.assert_array_equal(stats.variance, one.variance)
    with pytest.raises(StoreError, match="no frames of feature 'big' for speakers \\['s005'\\]"):
        store.compose_speaker_statistics("big", speakers=["s004", "s005"], utterances=every[4:5])


def test_finalize_refuses_journals_of_another_store(tmp_path):
    ours = build_store(tmp_path / "a", lengths=[3, 4], specs=(SPEC2D,), finalize=False)
    other = build_store(tmp_path / "b", lengths=[3, 4], specs=(SPEC2D,), prefix="x", finalize=False)
    for journal in (other.path / "_journal").iterdir():
        (ours.path / "_journal" / f"other-{journal.name}").write_bytes(journal.read_bytes())
    with pytest.raises(StoreError, match=r"names row 0 as utterance 'x000', but that row holds 'u000'.*does not belong"):
        StoreWriter(ours.path).finalize()

def test_speaker_statistics_combine_utterances_one_by_one_in_slot_order(tmp_path):
    # Finalize combines all speakers of a block of slots at once; the result must be what
    # combine_statistics gives when it folds each speaker's utterances in one by one (verify
    # and stores finalized before rely on that bit for bit).
    from w2v2ser.store._stats import utterance_statistics

    lengths = [int(n) for n in np.random.default_rng(3).integers(1, 12, 40)]
    speakers = ["A", "B", "C", "D", "E"]
    built = build_store(tmp_path / "s", lengths=lengths, speakers=speakers, specs=(W2V,), units=3)
    store = open_store(built.path)
    slot_order = [i for k in range(3) for i in range(len(lengths))[k::3]]  # units hold rows[k::3]
    for spk in speakers:
        parts = [utterance_statistics(built.stored("w2v", i)) for i in slot_order
                 if built.utterances[i].speaker == spk]
        n, mean, m2 = combine_statistics(parts[:1])
        for part in parts[1:]:
            n, mean, m2 = combine_statistics([(n, mean, m2), part])
        got = store.compose_statistics("w2v", speakers=[spk])
        assert got.count == n
        assert np.array_equal(got.mean, mean) and np.array_equal(got.variance, m2 / n)
    assert store.verify().ok

def test_statistics_of_a_long_layered_utterance_are_the_same_bits_in_bounded_memory(monkeypatch):
    # A long large-model utterance (here 600 frames x 25 x 1024, 123 MB in float64) is worked on
    # one layer at a time: the whole float64 copy of 120 s of it was 1.2 GB in the writer and in
    # verify. Stores written before compare their statistics bit for bit, so the values must not move.
    import tracemalloc

    import w2v2ser.store._stats as stats

    frames = (np.random.default_rng(5).standard_normal((600, 25, 1024)) * 3 + 1).astype(np.float16)
    tracemalloc.start()
    try:
        count, mean, m2 = stats.utterance_statistics(frames)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    monkeypatch.setattr(stats, "WHOLE_BYTES", 1 << 60)  # the whole-copy computation, as before
    whole = stats.utterance_statistics(frames)
    assert count == whole[0] == 600
    assert np.array_equal(mean, whole[1]) and np.array_equal(m2, whole[2])


# ---------------------------------------------------------------------------- plan / resume


def test_plan_idempotent_appends_and_adds_features(tmp_path):
    path = tmp_path / "s"
    built = build_store(path, lengths=[3, 9], specs=(W2V,))
    shape_before = open_store(path)._array("w2v", "data").shape
    writer = StoreWriter(path)
    rows = writer.plan(built.utterances, num_samples=[16000, 16000], features=[W2V],
                       capacities={"w2v": [3, 9]})
    assert rows == built.rows == [0, 1]
    assert open_store(path)._array("w2v", "data").shape == shape_before
    assert open_store(path).complete  # an idempotent plan leaves a finished store finished
    assert writer.pending(["w2v"]) == []
    # New utterances are appended; a new feature is added to the existing store.
    more = make_utterances(3, ["C"], prefix="v")
    rows = writer.plan(built.utterances + more, num_samples=[1] * 5, features=[W2V, SPEC2D],
                       capacities={"w2v": [3, 9, 2, 2, 2], "lld": [3, 9, 2, 2, 2]})
    assert rows == [0, 1, 2, 3, 4]
    assert open_store(path, allow_incomplete=True).complete is False
    assert writer.pending(["w2v"]) == [2, 3, 4]
    assert writer.pending(["w2v", "lld"]) == [0, 1, 2, 3, 4]
    rng = np.random.default_rng(3)
    for row in writer.pending(["w2v", "lld"]):
        feats = {"lld": random_frames(rng, SPEC2D, 2)}
        if row >= 2:
            feats["w2v"] = random_frames(rng, W2V, 2)
        writer.write_utterance(row, feats, audio_sha256="", duration=0.1)
    writer.finalize()
    store = open_store(path)
    assert store.complete and set(store.features) == {"w2v", "lld"}
    np.testing.assert_array_equal(store.read_utterance("u001", "w2v"), built.stored("w2v", 1))
    assert store.read_utterance("v002", "lld").shape == (2, 5)
    assert store.verify().ok


def test_plan_replaces_arrays_of_a_plan_killed_before_it_recorded_the_feature(tmp_path):
    # A SIGKILL inside plan can leave features/<name>/data/zarr.json written while the parent
    # group's zarr.json and the root attributes are not: the next plan must start the feature afresh.
    path = tmp_path / "s"
    built = build_store(path, lengths=[3, 9], specs=(W2V,))
    leftover = path / "features" / "lld" / "data"
    leftover.mkdir(parents=True)
    shutil.copy(path / "features" / "w2v" / "data" / "zarr.json", leftover / "zarr.json")
    assert not (path / "features" / "lld" / "zarr.json").exists()
    writer = StoreWriter(path)
    rows = writer.plan(built.utterances, num_samples=[16000, 16000], features=[W2V, SPEC2D],
                       capacities={"w2v": [3, 9], "lld": [3, 9]})
    rng = np.random.default_rng(1)
    for row in rows:
        writer.write_utterance(row, {"lld": random_frames(rng, SPEC2D, [3, 9][row])}, audio_sha256="", duration=0.1)
    writer.finalize()
    writer.close()
    store = open_store(path)
    assert store.read_utterance("u001", "lld").shape == (9, 5)
    assert store.verify().ok


def test_changed_feature_config_and_conflicting_ids_raise(tmp_path):
    path = tmp_path / "s"
    built = build_store(path, lengths=[3], specs=(W2V,))
    other = FeatureSpec(**{**W2V.__dict__, "config": {"model": "tiny", "revision": "def"}})
    writer = StoreWriter(path)
    with pytest.raises(StoreError, match="another config.*new store path") as error:
        writer.plan(built.utterances, num_samples=[1], features=[other], capacities={"w2v": [3]})
    # Only the differing leaf, by its key path: a whole recorded config is unreadable in one line.
    assert "config.revision: store has 'abc', given 'def'" in str(error.value)
    assert "tiny" not in str(error.value)
    moved = [Utterance(id="u000", path="/elsewhere.wav", speaker="A", label="angry")]
    with pytest.raises(StoreError, match="already in store"):
        writer.plan(moved, num_samples=[1], features=[W2V], capacities={"w2v": [3]})
    with pytest.raises(StoreError, match="duplicate"):
        writer.plan(built.utterances * 2, num_samples=[1, 1], features=[], capacities={})
    with pytest.raises(StoreError, match="capacities"):
        writer.plan(built.utterances, num_samples=[1], features=[W2V], capacities={})


def test_write_utterance_rejects_bad_frames(tmp_path):
    built = build_store(tmp_path / "s", lengths=[3], specs=(W2V,), write=False, finalize=False)
    writer = StoreWriter(built.path)
    with pytest.raises(StoreError, match="4 frames exceed the planned capacity of 3"):
        writer.write_utterance(0, {"w2v": np.zeros((4, 4, 6))}, audio_sha256="", duration=0)
    with pytest.raises(StoreError, match=r"expected \(frames, 4, 6\)"):
        writer.write_utterance(0, {"w2v": np.zeros((3, 6))}, audio_sha256="", duration=0)
    with pytest.raises(StoreError, match="non-finite"):
        writer.write_utterance(0, {"w2v": np.full((3, 4, 6), 1e6)}, audio_sha256="", duration=0)
    assert writer.pending(["w2v"]) == [0]


def test_journal_partial_last_line_is_ignored(tmp_path):
    built = build_store(tmp_path / "s", lengths=[3, 4], specs=(SPEC2D,), finalize=False)
    journal = built.path / "_journal" / "main.jsonl"
    good = journal.read_bytes()
    assert good.count(b"\n") == 2
    with open(journal, "ab") as f:  # crash mid-append: half a line, no newline
        f.write(b'{"event":"commit","index":0,"feat')
    writer = StoreWriter(built.path)  # reopening cuts the partial tail before appending
    assert journal.read_bytes() == good
    with open(journal, "ab") as f:
        f.write(b'{"event":"commit","ind')
    assert writer.pending(["lld"]) == []
    writer.finalize()
    store = open_store(built.path)
    np.testing.assert_array_equal(store.read_utterance("u001", "lld"), built.stored("lld", 1))


def test_a_journal_line_altered_into_other_valid_json_is_refused(tmp_path):
    """Found by fault injection: one flipped bit turned a commit's "slot":1 into "slot":0, still
    valid JSON; the next finalize gave two utterances one slot of statistics, and the speaker
    statistics that training normalises with came out wrong without a word. Each line carries
    its CRC-32; lines of older stores, without one, are still read."""
    built = build_store(tmp_path / "s", lengths=[3, 4], specs=(SPEC2D,), finalize=False)
    journal = built.path / "_journal" / "main.jsonl"
    good = journal.read_bytes()
    assert all(line.endswith(b'"}') and b',"crc":"' in line for line in good.splitlines())
    flipped = good.replace(b'"slot":1', b'"slot":0', 1)
    assert flipped != good
    journal.write_bytes(flipped)
    with pytest.raises(StoreError, match=r"journal .*main.jsonl line 2 is malformed \(it fails its CRC-32\)"):
        StoreWriter(built.path).finalize()
    # A store written before lines had a CRC: its lines are read as they are.
    import re

    old = re.sub(rb',"crc":"[0-9a-f]{8}"', b"", good)
    journal.write_bytes(old)
    StoreWriter(built.path).finalize()
    np.testing.assert_array_equal(open_store(built.path).read_utterance("u001", "lld"), built.stored("lld", 1))
    # ... and the same flip there is caught by finalize's check that no two utterances share a slot.
    journal.write_bytes(old.replace(b'"slot":1', b'"slot":0', 1))
    with pytest.raises(StoreError, match="give utterances 'u000' and 'u001' the same statistics slot"):
        StoreWriter(built.path).finalize()
    np.testing.assert_array_equal(open_store(built.path).read_utterance("u001", "lld"), built.stored("lld", 1))

    # The message gives the command that deletes both commit records (as for a line that fails its CRC).
    with pytest.raises(StoreError) as shared:
        StoreWriter(built.path).finalize()
    command = re.search(r"`(sed -i [^`]+)`", str(shared.value))
    assert command and command.group(1) == f"sed -i '1d;2d' {journal}", str(shared.value)
    subprocess.run(command.group(1), shell=True, check=True)
    assert journal.read_bytes() == b""  # (the journal held just these two commits)


def test_crash_before_journal_line_leaves_utterance_pending(tmp_path, monkeypatch):
    from w2v2ser.store import _journal

    built = build_store(tmp_path / "s", lengths=[3, 4], specs=(SPEC2D,), write=False, finalize=False)
    writer = StoreWriter(built.path)
    writer.write_utterance(0, {"lld": built.frames["lld"][0]}, audio_sha256="a", duration=1)

    def crash(self, records):
        raise KeyboardInterrupt("killed before the journal line")

    monkeypatch.setattr(_journal.Journal, "append", crash)
    with pytest.raises(KeyboardInterrupt):
        writer.write_utterance(1, {"lld": built.frames["lld"][1]}, audio_sha256="b", duration=1)
    monkeypatch.undo()
    writer = StoreWriter(built.path)
    assert writer.pending(["lld"]) == [1]  # data on disk, but not committed
    shards = built.path / "features" / "lld" / "data" / "c"
    assert len(list(shards.iterdir())) == 2
    writer.finalize()
    assert len(list(shards.iterdir())) == 1  # the uncommitted unit's shard is deleted
    with pytest.raises(StoreIncompleteError, match="allow_incomplete=True"):
        open_store(built.path)
    store = open_store(built.path, allow_incomplete=True)
    assert [r.id for r in store.list_utterances()] == ["u000"]
    assert [r.id for r in store.list_utterances(status="pending")] == ["u001"]
    with pytest.raises(StoreError, match="no frames"):
        store.read_utterance("u001", "lld")
    writer.write_utterance(1, {"lld": built.frames["lld"][1]}, audio_sha256="b", duration=1)
    writer.finalize()
    store = open_store(built.path)
    np.testing.assert_array_equal(store.read_utterance("u001", "lld"), built.stored("lld", 1))


# ---------------------------------------------------------------------------- failures


def test_failures_table_and_superseding_commit(tmp_path):
    path = tmp_path / "s"
    utts = make_utterances(3, ["A"])
    writer = StoreWriter(path, chunk_frames={"lld": CHUNK})
    rows = writer.plan(utts, num_samples=[100, None, 100], features=[SPEC2D],
                       capacities={"lld": [4, 0, 4]}, failures={1: "bad FLAC header"})
    assert writer.pending(["lld"]) == [0, 2]
    rng = np.random.default_rng(0)
    writer.write_utterance(rows[0], {"lld": random_frames(rng, SPEC2D, 4)}, audio_sha256="", duration=1)
    writer.record_failure(rows[2], reason="extractor crashed", feature="lld")
    writer.finalize()
    store = open_store(path)  # every planned pair is done or failed
    assert store.complete
    fails = {(f.id, f.feature): f.reason for f in store.list_failures()}
    assert fails == {("u001", None): "bad FLAC header", ("u002", "lld"): "extractor crashed"}
    assert [r.id for r in store.list_utterances(status="failed")] == ["u001", "u002"]
    assert store.describe()["failures"] == 2
    # Rerun: the failed pair is retried and its commit supersedes the failure; the unreadable
    # header now probes fine, so its region is allocated at the end.
    end = store._array("lld", "data").shape[0]
    rows = writer.plan(utts, num_samples=[100, 100, 100], features=[SPEC2D], capacities={"lld": [4, 4, 4]})
    assert writer.pending(["lld"]) == [1, 2]
    for row in (1, 2):
        writer.write_utterance(row, {"lld": random_frames(rng, SPEC2D, 3)}, audio_sha256="", duration=1)
    writer.finalize()
    assert int(open_store(path)._per_row("lld")["offset"][1]) == end  # appended at the end
    writer.finalize()
    store = open_store(path)
    assert store.list_failures() == []
    assert len(store.list_utterances()) == 3 and store.num_frames("u001", "lld") == 3
    assert store.list_utterances()[1].num_samples == 100
    assert store.verify().ok


def test_holds_any_tells_whether_a_feature_has_a_done_utterance(tmp_path, monkeypatch):
    path = tmp_path / "s"
    utts = make_utterances(2, ["A"])
    writer = StoreWriter(path, chunk_frames={"lld": CHUNK})
    rows = writer.plan(utts, num_samples=[100, 100], features=[SPEC2D], capacities={"lld": [4, 4]})
    for row in rows:
        writer.record_failure(row, reason="extractor crashed", feature="lld")
    writer.finalize()
    store = open_store(path)
    assert store.holds_any("lld") is False  # every utterance failed: no frames
    writer.plan(utts, num_samples=[100, 100], features=[SPEC2D], capacities={"lld": [4, 4]})
    writer.write_utterance(rows[1], {"lld": random_frames(np.random.default_rng(0), SPEC2D, 4)},
                           audio_sha256="", duration=1)
    writer.finalize()
    writer.close()
    store = open_store(path)
    # Answered without building the records (each `run` asks, of an IEMOCAP-size store too).
    monkeypatch.setattr(type(store), "list_utterances", lambda *a, **k: pytest.fail("lists the utterances"))
    assert store.holds_any("lld") is True
    with pytest.raises(StoreError, match="w2v"):
        store.holds_any("w2v")


# ---------------------------------------------------------------------------- opening


def test_open_store_refuses_incomplete_newer_and_foreign(tmp_path):
    import zarr

    built = build_store(tmp_path / "s", lengths=[2, 3], finalize=False)
    with pytest.raises(StoreIncompleteError, match="Rerun the extraction"):
        open_store(built.path)
    assert open_store(built.path, allow_incomplete=True).list_utterances() == []  # not finalized
    StoreWriter(built.path).finalize()
    store = open_store(built.path)
    assert store.attrs["tool_version"] and store.attrs["created"].endswith("+00:00")
    prov = store.attrs["provenance"]  # stage 1's packages, the command line and host it was created with
    assert prov["versions"]["w2v2ser"] == store.attrs["tool_version"] and prov["host"] and "argv" in prov
    assert {"numpy", "torch", "transformers", "opensmile"} <= set(prov["versions"])
    group = zarr.open_group(str(built.path), mode="r+")
    meta = dict(group.attrs["w2v2ser"])
    group.attrs["w2v2ser"] = {**meta, "format_version": meta["format_version"] + 1}
    with pytest.raises(StoreVersionError, match="Upgrade w2v2ser"):
        open_store(built.path)
    with pytest.raises(StoreVersionError):
        StoreWriter(built.path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not a w2v2ser store: the directory has no zarr.json"):
        open_store(tmp_path / "empty")
    (tmp_path / "corpus.csv").write_text("path,label,speaker\n")  # a manifest passed where the store goes
    with pytest.raises(StoreError, match="not a w2v2ser store: it is a file, not a directory"):
        open_store(tmp_path / "corpus.csv")
    with pytest.raises(StoreError, match="not a w2v2ser store: the directory does not exist"):
        open_store(tmp_path / "missing.zarr")
    with pytest.raises(StoreError, match=r"store: got int 3; expected a path \(str, bytes or Path\) or a URL"):
        open_store(3)  # found by a trial: os.fspath's TypeError
    zarr.open_group(str(tmp_path / "plain"), mode="w")
    with pytest.raises(StoreError, match="not a w2v2ser store"):
        open_store(tmp_path / "plain")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        StoreWriter(tmp_path / "busy")
    assert issubclass(StoreError, W2v2serError)


def test_describe_is_json(tmp_path):
    store = open_store(build_store(tmp_path / "s", lengths=[2, 9, 1], speakers=["A", "B", "C"]).path)
    info = json.loads(json.dumps(store.describe()))
    assert info["utterances"] == 3 and info["speakers"] == 3 and info["complete"] is True
    assert info["failures"] == 0
    w = info["features"]["w2v"]
    assert (w["dim"], w["layers"], w["dtype"], w["frame_rate"]) == (6, 4, "float16", 50.0)
    assert w["chunks"] == [CHUNK, 1, 6] and w["shards"] == [SHARD, 4, 6]
    assert w["frames"] == 12 and w["bytes"] > 0
    assert info["features"]["lld"]["layers"] is None


# ---------------------------------------------------------------------------- lock

_HOLDER = textwrap.dedent("""
    import sys, time
    from w2v2ser.store import lock_store
    with lock_store(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
""")


def test_info_of_an_interrupted_store_counts_its_journal_commits(tmp_path, capsys):
    """Killed before finalize, `store info` said "600 pending" while 64 were committed and would be
    skipped by a rerun: the commits are in the journal until finalize merges them."""
    from w2v2ser._cli import main

    build_store(tmp_path / "s", lengths=LENGTHS[:5], finalize=False, units=0)
    info = open_store(tmp_path / "s", allow_incomplete=True).describe()
    assert not info["complete"] and info["status"]["pending"] == 5
    assert info["committed"] == {"w2v": 5, "lld": 5}
    assert main(["store", "info", str(tmp_path / "s")]) == 0
    assert "committed so far: w2v 5 of 5, lld 5 of 5 utterances" in capsys.readouterr().out
    # Not "intact" and exit 0: nothing of the unfinished part was checked (a script went on to train).
    assert main(["store", "verify", str(tmp_path / "s")]) == 1
    out = capsys.readouterr().out
    assert "no problem found so far\nthe store is incomplete: 0 utterance x feature regions" in out
    assert "intact" not in out
    with pytest.raises(StoreIncompleteError, match=f"w2v2ser store info {tmp_path / 's'}"):
        open_store(tmp_path / "s")
    build_store(tmp_path / "done", lengths=[3])
    assert open_store(tmp_path / "done").describe()["committed"] is None


def test_info_gives_a_small_feature_size_in_kb_not_zero_mb(tmp_path, capsys):
    from w2v2ser._cli import main

    built = build_store(tmp_path / "s", lengths=[3, 4])
    size = open_store(built.path).describe()["features"]["lld"]["bytes"]
    assert 0 < size < 50_000
    assert main(["store", "info", str(built.path)]) == 0
    out = capsys.readouterr().out
    assert f"{size / 1e3:.1f} kB" in out and "0.0 MB" not in out, out


def test_lock_conflict_across_processes(tmp_path):
    path = tmp_path / "s"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError) as err:
            with lock_store(path):
                pass
        msg = str(err.value)
        assert str(path / ".lock") in msg and f"pid {holder.pid}" in msg
        assert "another extraction is running" in msg
    finally:
        holder.stdin.close()
        holder.wait(timeout=20)
    with lock_store(path):  # released when the holder exits
        pass


# ---------------------------------------------------------------------------- verify


def test_verify_names_corrupt_and_truncated_chunks(tmp_path):
    built = build_store(tmp_path / "s", lengths=[20, 9, 12, 5], units=0)
    store = open_store(built.path)
    assert store.verify().ok
    flipped = shard_file(built.path, store, "w2v", "u000")
    raw = bytearray(flipped.read_bytes())
    at = raw.find(built.stored("w2v", 0)[10:, 2].tobytes())  # frames of layer 2, second chunk
    raw[at + 3] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    truncated = shard_file(built.path, store, "lld", "u002")
    truncated.write_bytes(truncated.read_bytes()[:10])
    shard_file(built.path, store, "w2v", "u003").unlink()
    report = open_store(built.path).verify()
    assert not report.ok
    named = {(u, f) for u, f, _ in report.problems}
    assert named == {("u000", "w2v"), ("u002", "lld"), ("u003", "w2v")}
    assert "u000" in str(report)


def test_verify_of_a_complete_store_with_short_per_utterance_arrays_reports_them(tmp_path):
    import zarr

    built = build_store(tmp_path / "s", lengths=[20, 9, 12, 5], units=0)
    zarr.open_group(str(built.path), mode="r+")["features/w2v/offset"].resize((3,))
    report = open_store(built.path).verify()  # raised a broadcast ValueError
    assert not report.ok
    assert ("*", "w2v", "per-utterance arrays have 3 rows, table has 4") in report.problems


def test_finalizing_a_store_copied_as_links_leaves_the_source_store_alone(tmp_path):
    """`cp -rs SRC COPY`, then a write to COPY: its tables were written through the links into SRC."""
    built = build_store(tmp_path / "src", lengths=[5, 7])
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-rs", str(built.path), str(copy)], check=True)
    table = built.path / "utterances.parquet"
    before = table.stat()
    writer = StoreWriter(copy)
    writer.finalize()
    writer.close()
    after = table.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not (copy / "utterances.parquet").is_symlink()
    assert [r.id for r in open_store(copy).list_utterances()] == [u.id for u in built.utterances]


# ---------------------------------------------------------------------------- export


def test_export_hdf5_refuses_incomplete(tmp_path):
    built = build_store(tmp_path / "s", lengths=[2], finalize=False)
    with pytest.raises(StoreIncompleteError):
        export_hdf5(built.path, tmp_path / "x.h5")
    assert not list(tmp_path.glob("*.h5*"))


def test_export_into_a_folder_is_refused_before_the_work(tmp_path, capsys, monkeypatch):
    """`store export STORE some_folder` wrote the whole copy, then ended in a traceback
    (IsADirectoryError from os.replace)."""
    from w2v2ser._cli import main

    built = build_store(tmp_path / "s", lengths=[2])
    (tmp_path / "exports").mkdir()
    assert main(["store", "export", str(built.path), str(tmp_path / "exports")]) == 2
    err = capsys.readouterr().err
    assert "exports: Is a directory; expected a file path there. Give the file's own name" in err
    assert "Traceback" not in err and not list(tmp_path.glob(".exports.*"))
    # A URL: Path() made s3://feat/x.h5 the local file ./s3:/feat/x.h5 and said "wrote" (exit 0).
    monkeypatch.chdir(tmp_path)
    assert main(["store", "export", str(built.path), "s3://feat/x.h5"]) == 2
    assert "`store export` writes a local HDF5 file; got the URL s3://feat/x.h5" in capsys.readouterr().err
    assert not (tmp_path / "s3:").exists()


def test_export_to_a_folder_that_takes_no_files_or_through_a_broken_link_is_one_line(tmp_path, capsys):
    """Found by an export trial: /proc/x.h5 ended in a FileNotFoundError traceback from mkstemp, and a
    target under a dangling symlink was called a file."""
    from w2v2ser._cli import main

    built = build_store(tmp_path / "s", lengths=[2])
    assert main(["store", "export", str(built.path), "/proc/x.h5"]) == 2
    err = capsys.readouterr().err
    assert "/proc/x.h5: no new file can be created in this folder" in err and "Traceback" not in err
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    assert main(["store", "export", str(built.path), str(tmp_path / "gone" / "x.h5")]) == 2
    assert f"gone is a symbolic link to {tmp_path / 'nowhere'}, which does not exist" in capsys.readouterr().err


def test_export_onto_a_fifo_or_device_is_refused_and_leaves_it(tmp_path, capsys):
    """Found by an export trial: as root, `store export STORE /dev/null` said "wrote /dev/null" and
    renamed the HDF5 file over the device node, leaving a regular file in its place."""
    import os
    import stat

    from w2v2ser._cli import main

    built = build_store(tmp_path / "s", lengths=[2])
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    assert main(["store", "export", str(built.path), str(fifo)]) == 2
    err = capsys.readouterr().err
    assert f"{fifo} is not a regular file (a device, FIFO or socket)" in err and "Traceback" not in err
    assert stat.S_ISFIFO(fifo.stat().st_mode) and not list(tmp_path.glob(".pipe.h5.*"))


def test_an_interrupted_export_does_not_promise_to_resume(tmp_path, capsys, monkeypatch):
    """Found by an export trial: Ctrl-C of `store export` said "finished work is kept, rerun the same
    command to resume"; nothing of an export is kept, it starts over."""
    import w2v2ser.store as store_api
    from w2v2ser._cli import main

    built = build_store(tmp_path / "s", lengths=[2])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_api, "export_hdf5", interrupted)
    assert main(["store", "export", str(built.path), str(tmp_path / "x.h5")]) == 130
    err = capsys.readouterr().err
    assert "interrupted; OUT is either as it was before or the complete new export" in err and "resume" not in err


def test_export_and_verify_show_progress_per_feature(tmp_path, monkeypatch, capsys):
    """A store export or verify of a wav2vec2-base RAVDESS store (about 10 GB) printed nothing until done."""
    import w2v2ser._common as common
    from w2v2ser._cli import main

    monkeypatch.setattr(common, "LOG_PROGRESS_SECONDS", 0.0)
    built = build_store(tmp_path / "s", lengths=LENGTHS)
    assert main(["store", "export", str(built.path), str(tmp_path / "s.h5")]) == 0
    err = capsys.readouterr().err
    written = sum(n > 0 for n in LENGTHS)
    assert all(f"export {name}: 100%" in err and f"{written}/{written}" in err for name in ("w2v", "lld")), err
    assert main(["store", "export", str(built.path), str(tmp_path / "s.h5"), "--no-progress"]) == 0
    assert "export" not in capsys.readouterr().err
    for repair in ([], ["--repair"]):  # verify reads every frame too
        assert main(["store", "verify", str(built.path), *repair]) == 0
        captured = capsys.readouterr()
        assert "intact" in captured.out and all(f"verify {name}: 100%" in captured.err for name in ("w2v", "lld"))
        assert main(["store", "verify", str(built.path), "--no-progress", *repair]) == 0
        assert "verify" not in capsys.readouterr().err


def test_export_hdf5_round_trip(tmp_path):
    built = build_store(tmp_path / "s", lengths=LENGTHS, slack=2)
    store = open_store(built.path)
    out = export_hdf5(built.path, tmp_path / "out" / "s.h5")
    assert out == tmp_path / "out" / "s.h5" and sorted(p.name for p in out.parent.iterdir()) == ["s.h5"]
    with h5py.File(out, "r") as h5:
        ids = [x.decode() for x in h5["utterances/id"][:]]
        assert ids == [u.id for u in built.utterances]
        assert json.loads(h5.attrs["w2v2ser"])["complete"] is True
        for name in ("w2v", "lld"):
            g = h5[f"features/{name}"]
            for i, uid in enumerate(ids):
                o, n = int(g["offset"][i]), int(g["length"][i])
                np.testing.assert_array_equal(g["data"][o:o + n], store.read_utterance(uid, name))
            np.testing.assert_array_equal(g["speaker_count"][:], store._array(name, "speaker_count")[:])
            spec = store.features[name]  # README, "HDF5 export": what a reader needs sits beside the frames
            assert (g.attrs["frame_rate"], g.attrs["dim"], g.attrs["layers"]) == (
                spec.frame_rate, spec.dim, -1 if spec.layers is None else spec.layers)
            assert json.loads(g.attrs["spec"])["name"] == name
            assert set(g) == {"data", "offset", "length", "crc32", "utt_mean", "utt_m2", "speaker_name",
                              "speaker_count", "speaker_mean", "speaker_m2"}
        assert set(h5["utterances"]) == {"id", "path", "speaker", "label", "session", "split", "gender", "corpus",
                                         "status", "audio_sha256", "extra", "duration", "num_samples"}
        assert set(h5["failures"]) == {"id", "path", "feature", "reason"}
    # the export given where a store goes (train, store info) is named as what it is
    with pytest.raises(StoreError, match=r"it is a file, not a directory \(an HDF5 file, e\.g\. a `w2v2ser store "
                                         r"export` copy: read it with h5py"):
        open_store(out)


# ---------------------------------------------------------------------------- concurrency and imports


def _worker(path: str, journal: str, unit, lengths: list[int]) -> None:
    writer = StoreWriter(path, journal=journal)
    rng = np.random.default_rng(unit.rows[0])
    with writer.open_unit(unit) as unit_writer:
        for row in unit.rows:
            unit_writer.add(row, {"w2v": random_frames(rng, W2V, lengths[row])}, audio_sha256="", duration=1.0)


def test_concurrent_writers_with_distinct_journals(tmp_path):
    lengths = [5, 11, 8, 1, 16, 7]
    built = build_store(tmp_path / "s", lengths=lengths, specs=(W2V,), write=False, finalize=False)
    units = StoreWriter(built.path).plan_units([[0, 2, 4], [1, 3, 5]], ["w2v"])
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(built.path), f"worker-{k}", unit, lengths))
             for k, unit in enumerate(units)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    writer = StoreWriter(built.path)
    assert writer.pending(["w2v"]) == []
    writer.finalize()
    store = open_store(built.path)
    assert [store.num_frames(u.id, "w2v") for u in built.utterances] == lengths
    assert store.verify().ok


def _single_writer(path: str, journal: str, rows: list[int], lengths: list[int], start) -> None:
    writer = StoreWriter(path, journal=journal)
    start.wait(60)
    for row in rows:
        frames = random_frames(np.random.default_rng(row), W2V, lengths[row])
        writer.write_utterance(row, {"w2v": frames}, audio_sha256="", duration=1.0)


def test_processes_writing_utterances_at_once_get_separate_shards(tmp_path):
    """write_utterance from two processes at once: each grows the arrays under the plan lock,
    so no two utterances share a shard (without it both read the same end and overwrite)."""
    lengths = [3 + (7 * i) % 11 for i in range(48)]
    built = build_store(tmp_path / "s", lengths=lengths, specs=(W2V,), write=False, finalize=False)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_single_writer, args=(str(built.path), f"writer-{k}", built.rows[k::2], lengths, start))
             for k in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    writer = StoreWriter(built.path)
    writer.finalize()
    store = open_store(built.path)
    for row, u in zip(built.rows, built.utterances):
        want = random_frames(np.random.default_rng(row), W2V, lengths[row]).astype(W2V.dtype)
        np.testing.assert_array_equal(store.read_utterance(u.id, "w2v"), want)
    assert store.verify().ok


_FORKED_STORE: list = []  # the parent's open reader, inherited by a forked child


def _read_in_forked_child(ids: list[str]) -> list[np.ndarray]:
    store = _FORKED_STORE[0]
    return [store.read_utterance(ids[0], "w2v"), *store.read_batch(ids, "w2v", layers=[1, 3]),
            *store.read_batch(ids, "lld")]


def _write_in_forked_child(path: str) -> bool:
    build_store(Path(path), lengths=[5, 30, 12], units=2)
    return open_store(path).verify().ok


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork() here")
def test_a_forked_child_reads_and_writes_after_its_parent_did(tmp_path):
    """A PyTorch DataLoader worker is a fork of the process that opened the store. Its first read
    waited forever: zarrs decodes on rayon's global thread pool, whose threads a fork leaves behind.
    A child writing a store after its parent wrote one was aborted by tensorstore ("fork() use
    detected"). The pool's timeout turns either into a failure here."""
    built = build_store(tmp_path / "s", lengths=LENGTHS, units=2)
    store = open_store(built.path)
    ids = [u.id for u in built.utterances]
    want = [store.read_utterance(ids[0], "w2v"), *store.read_batch(ids, "w2v", layers=[1, 3]),
            *store.read_batch(ids, "lld")]
    _FORKED_STORE[:] = [store]
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_read_in_forked_child, (ids,)).get(timeout=60)
        assert pool.apply_async(_write_in_forked_child, (str(tmp_path / "child"),)).get(timeout=60)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(got) == 1 + 2 * len(ids)
    # The parent goes on reading through zarrs, and the child's store is whole.
    np.testing.assert_array_equal(store.read_utterance(ids[1], "w2v"), built.stored("w2v", 1))
    assert open_store(tmp_path / "child").verify().ok


def test_store_imports_neither_torch_nor_tensorflow():
    code = ("import sys, w2v2ser.store; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow', 'keras')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_feature_spec_round_trip_and_unknown_key():
    assert FeatureSpec.from_dict(W2V.to_dict()) == W2V
    with pytest.raises(StoreError, match="Did you mean 'frame_rate'"):
        FeatureSpec.from_dict({**W2V.to_dict(), "framerate": 50})


def test_zarrs_gets_a_thread_pool_of_at_least_eight_unless_the_user_sets_one():
    """rayon's default (one thread per core) kept 2 requests in flight on 2 cores: cold reads 1.3x slower."""
    import os

    code = "import os, w2v2ser.store; print(os.environ['RAYON_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "RAYON_NUM_THREADS"}
    ours = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(ours.stdout) >= 8
    theirs = subprocess.run([sys.executable, "-c", code], env={**env, "RAYON_NUM_THREADS": "3"},
                            capture_output=True, text=True, check=True)
    assert theirs.stdout.strip() == "3"


def test_a_plan_killed_between_growing_an_index_array_and_filling_it_leaves_no_missing_chunk(tmp_path, monkeypatch):
    """A kill after an index array was grown and before its new rows were stored left chunk files
    that no later write stored (rows whose header was unreadable have no planned size): the next
    plan found the array long enough, and readers took the missing chunk for a deleted one."""
    from w2v2ser.store import _writeplan, _writer

    monkeypatch.setattr(_writer, "ROW_CHUNK", 2)  # several row chunks for a few rows
    rng = np.random.default_rng(3)
    utts = [Utterance(id=f"u{i}", path=f"/a/{i}.wav", speaker="A", label="x") for i in range(6)]
    samples = [16000, 16000, None, None, None, None]  # the added rows' headers are unreadable
    plan = {"features": [SPEC2D], "capacities": {SPEC2D.name: [3] * 6}}
    with StoreWriter(tmp_path / "s") as writer:
        for row in writer.plan(utts[:2], num_samples=samples[:2], features=[SPEC2D],
                               capacities={SPEC2D.name: [3, 3]}):
            writer.write_utterance(row, {SPEC2D.name: random_frames(rng, SPEC2D, 3)}, audio_sha256="", duration=1.0)
        writer.finalize()
    fill = _writeplan._store_fill

    def killed(array, start):
        raise KeyboardInterrupt

    monkeypatch.setattr(_writeplan, "_store_fill", killed)
    with StoreWriter(tmp_path / "s") as writer, pytest.raises(KeyboardInterrupt):
        writer.plan(utts, num_samples=samples, **plan)
    monkeypatch.setattr(_writeplan, "_store_fill", fill)
    with StoreWriter(tmp_path / "s") as writer:  # the rerun
        writer.plan(utts, num_samples=samples, **plan)
        writer.finalize()
    store = open_store(tmp_path / "s")
    assert [u.status for u in store.list_utterances(status=None)] == ["done"] * 2 + ["failed"] * 4
    assert store.read_utterance("u1", SPEC2D.name).shape[0] == 3
    assert store.verify().ok


@pytest.mark.parametrize("argv, resume", [
    (["/venv/bin/w2v2ser", "run", "my pipeline.yaml", "--stage", "extract"],
     "rerun `w2v2ser run 'my pipeline.yaml' --stage extract`, or the same `w2v2ser run` command, which last worked on it"),
    # Options before the pipeline: their values are not the pipeline (found in review).
    (["/venv/bin/w2v2ser", "run", "--stage", "extract", "--set", "a.b=1", "p.yaml"],
     "rerun `w2v2ser run p.yaml --stage extract`, or the same `w2v2ser run` command, which last worked on it"),
    (["/venv/bin/w2v2ser", "extract", "csv", "m.csv"], "rerun the same `w2v2ser extract` command"),
    (["analysis.py", "run"], "rerun the extraction that made it: the same `w2v2ser extract` or `w2v2ser run` command"),
])
def test_info_of_an_interrupted_store_names_the_command_that_made_it(tmp_path, capsys, monkeypatch, argv, resume):
    """A store that `w2v2ser run` left unfinished: `store info` and `store verify` said to rerun "the same
    `w2v2ser extract` command", which the user never ran. The store records its command line."""
    from w2v2ser._cli import main

    monkeypatch.setattr(sys, "argv", argv)
    build_store(tmp_path / "s", lengths=LENGTHS[:2], finalize=False, units=0)
    monkeypatch.undo()
    assert main(["store", "info", str(tmp_path / "s")]) == 0
    assert f"merged when it finishes ({resume} to resume)" in capsys.readouterr().out
    assert main(["store", "verify", str(tmp_path / "s")]) == 1
    assert f"({resume}, then verify again)" in capsys.readouterr().out


@pytest.mark.parametrize("made, resumed, resume", [
    (["/venv/bin/w2v2ser", "extract", "csv", "m.csv"], ["/venv/bin/w2v2ser", "run", "p.yaml"],
     "rerun `w2v2ser run p.yaml --stage extract`, or the same `w2v2ser run` command, which last worked on it"),
    (["/venv/bin/w2v2ser", "run", "p.yaml"], ["/venv/bin/w2v2ser", "extract", "csv", "m.csv"],
     "rerun the same `w2v2ser extract` command"),
])
def test_info_of_a_resumed_store_names_the_command_that_last_worked_on_it(tmp_path, capsys, monkeypatch,
                                                                          made, resumed, resume):
    """A store that `extract` made and a `w2v2ser run` resumed (left unfinished) was to be resumed by
    `extract`, read from the creating command line of its provenance."""
    from w2v2ser._cli import main

    monkeypatch.setattr(sys, "argv", made)
    build_store(tmp_path / "s", lengths=LENGTHS[:2])
    monkeypatch.setattr(sys, "argv", resumed)
    with StoreWriter(tmp_path / "s") as writer:  # more utterances: unfinished until this run's finalize
        writer.plan(make_utterances(3, ["A", "B"]), num_samples=[16000] * 3, features=[W2V, SPEC2D],
                    capacities={s.name: [8] * 3 for s in (W2V, SPEC2D)})
    monkeypatch.undo()
    assert main(["store", "info", str(tmp_path / "s")]) == 0
    assert f"merged when it finishes ({resume} to resume)" in capsys.readouterr().out
    assert main(["store", "verify", str(tmp_path / "s")]) == 1
    assert f"({resume}, then verify again)" in capsys.readouterr().out


def test_export_through_a_link_into_a_missing_folder_of_a_store_is_refused_as_inside_it(tmp_path: Path) -> None:
    """Review: OUT a link to S/sub/x.h5 (sub missing) was told to create S/sub, a folder inside the store,
    after which the next export was refused as inside the store. A link into a loop elsewhere was said to
    lead "back to itself"."""
    import os

    from w2v2ser._common import ConfigError

    store = build_store(tmp_path / "S", lengths=[3, 4]).path
    link = tmp_path / "l.h5"
    link.symlink_to(store / "sub" / "x.h5")
    with pytest.raises(StoreError, match=rf"cannot export to {link} \(a link to {store / 'sub' / 'x.h5'}\): it is "
                                         rf"inside the store {store}, "):
        export_hdf5(store, link)
    assert not (store / "sub").exists()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    into_loop = tmp_path / "x.h5"
    into_loop.symlink_to("loop/f.h5")
    with pytest.raises(ConfigError, match=r"x.h5 is a symbolic link that loops \(through loop/f.h5\); remove"):
        export_hdf5(store, into_loop)
    assert os.readlink(into_loop) == "loop/f.h5"


def test_export_reads_statistics_and_frames_in_blocks_not_per_utterance(tmp_path, monkeypatch):
    """export_hdf5 read each utterance's statistics (and frames) with a call of its own: 3-4 ms per
    utterance, minutes for a store of 30,000 short ones. Now blocks of rows; the file is the same."""
    import h5py

    built = build_store(tmp_path / "s", lengths=[3, 0, 9, 4] * 64, speakers=[f"s{k}" for k in range(8)],
                        specs=(SPEC2D, W2V), units=4)
    gets = count_store_reads(monkeypatch, "/stats/")
    out = export_hdf5(built.path, tmp_path / "out.h5")
    monkeypatch.undo()
    assert len(gets) < 64, len(gets)  # 256 utterances x 2 features
    store = open_store(built.path)
    with h5py.File(out) as f:
        for spec in (SPEC2D, W2V):
            g = f["features"][spec.name]
            for i, u in enumerate(built.utterances):
                n = int(g["length"][i])
                np.testing.assert_array_equal(g["data"][g["offset"][i]:g["offset"][i] + n],
                                              store.read_utterance(u.id, spec.name))
                x = built.stored(spec.name, i).astype(np.float64)
                if n:
                    np.testing.assert_allclose(g["utt_mean"][i], x.mean(0), rtol=1e-9, atol=1e-12)
                    np.testing.assert_allclose(g["utt_m2"][i], ((x - x.mean(0)) ** 2).sum(0), rtol=1e-6, atol=1e-9)


def test_an_unknown_id_of_a_large_store_gets_a_did_you_mean_from_ids_near_it(tmp_path, monkeypatch):
    """Found by a 150,000-utterance trial: the did-you-mean of an unknown id compared it with every id
    (1.1 s per error). It now compares the ids beside it (by their start and by their end), which still
    finds a typo in the case, at the start or at the end."""
    import difflib

    ids = [f"Actor_{a:02d}/03-01-{e:02d}-{k:02d}" for a in range(1, 21) for e in range(1, 9) for k in range(6)]
    rows = [Utterance(id=i, path=f"/audio/{i}.wav", speaker=i[:8], label="x", corpus="csv") for i in ids]
    writer = StoreWriter(tmp_path / "s.zarr")
    writer.plan(rows, num_samples=[None] * len(rows), features=[SPEC2D], capacities={"lld": [0] * len(rows)},
                failures={k: "AudioError: cannot decode" for k in range(len(rows))})
    writer.finalize()
    store = open_store(tmp_path / "s.zarr")
    compared = []
    real = difflib.get_close_matches
    monkeypatch.setattr(difflib, "get_close_matches",
                        lambda word, possibilities, *a, **k: compared.append(len(possibilities)) or real(
                            word, possibilities, *a, **k))
    for typo, meant in [("actor_03/03-01-05-04", "Actor_03/03-01-05-04"),  # case
                        ("Actr_03/03-01-05-04", "Actor_03/03-01-05-04"),  # start: beside it by its end only
                        ("Actor_12/03-01-07-05.wav", "Actor_12/03-01-07-05"),
                        ("Actor_12/03-01-07-5", "Actor_12/03-01-07-05")]:
        with pytest.raises(StoreError, match=rf"utterance '{re.escape(typo)}' is not in store .* \(960 utterances\)\. "
                                             rf"Did you mean '{re.escape(meant)}'\?"):
            store.num_frames(typo, "lld")
    assert len(compared) == 4 and max(compared) <= 400  # not all 960
