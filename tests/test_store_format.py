"""Format 2 on disk: upgrade of format-1 stores, a second Zarr implementation, Parquet tables, file count."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from w2v2ser.store import FORMAT_VERSION, StoreError, StoreVersionError, StoreWriter, open_store, upgrade_store

FORMAT1 = Path(__file__).parent / "data" / "format1.zarr"  # made by tests/data/make_format1_store.py
W2V2SER = Path(sys.executable).parent / "w2v2ser"


@pytest.fixture()
def upgraded(tmp_path) -> Path:
    old = tmp_path / "old.zarr"
    shutil.copytree(FORMAT1, old)
    return upgrade_store(old, tmp_path / "new.zarr")


def _v1_frames(path: Path, feature: str) -> dict[str, np.ndarray]:
    import zarr

    g = zarr.open_group(str(path), mode="r")
    ids = [str(x) for x in g["utterances/id"][:]]
    off, length = g[f"features/{feature}/offset"][:], g[f"features/{feature}/length"][:]
    return {uid: g[f"features/{feature}/data"][off[i]:off[i] + length[i]] for i, uid in enumerate(ids) if length[i] >= 0}


def test_opening_a_format1_store_names_the_upgrade_command(tmp_path):
    for opener in (open_store, StoreWriter):
        with pytest.raises(StoreVersionError, match="w2v2ser store upgrade"):
            opener(FORMAT1)
    done = subprocess.run([str(W2V2SER), "store", "info", str(FORMAT1)], capture_output=True, text=True)
    assert done.returncode == 2 and "w2v2ser store upgrade" in done.stderr


def test_upgrade_keeps_frames_table_failures_and_statistics(upgraded):
    new = open_store(upgraded)
    assert new.format_version == FORMAT_VERSION == 3 and new.complete and new.verify().ok
    assert new.attrs["upgraded_from"]["format_version"] == 1
    assert [r.id for r in new.list_utterances(status=None)] == ["u0", "u1", "u2", "u3", "u4"]
    assert {(f.id, f.feature, f.reason) for f in new.list_failures()} == {
        ("u3", None, "bad header"), ("u4", "lld", "lld crashed")}
    assert new.list_utterances(status=None)[1].extra == {"i": "1"}
    # u4 failed lld only: it is done with its w2v (format 1 called the whole utterance failed).
    assert "u4" in {r.id for r in new.list_utterances(feature="w2v")} - {r.id for r in new.list_utterances(feature="lld")}
    for feature in ("w2v", "lld"):
        old = _v1_frames(FORMAT1, feature)
        for uid, frames in old.items():
            np.testing.assert_array_equal(new.read_utterance(uid, feature), frames)
        assert new.num_frames("u1", feature) == 17
    # Speaker statistics recomposed from the same frames (composition order may differ: 1e-12).
    frames = np.concatenate([old_frames for uid, old_frames in _v1_frames(FORMAT1, "w2v").items()
                             if uid in ("u1",)]).astype(np.float64)
    stats = new.compose_statistics("w2v", speakers=["B"])
    np.testing.assert_allclose(stats.mean, frames.mean(0), rtol=1e-12)


def _digest(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_upgrade_from_the_cli_and_refusals(tmp_path):
    before = _digest(FORMAT1)
    new = tmp_path / "cli.zarr"
    done = subprocess.run([str(W2V2SER), "store", "upgrade", str(FORMAT1), str(new), "--no-progress"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # u4's lld failed and its w2v is stored: done without lld (a file that fails one feature keeps the others).
    assert "4 done, 1 failed" in done.stdout and open_store(new).verify().ok
    again = subprocess.run([str(W2V2SER), "store", "upgrade", str(new), str(tmp_path / "x.zarr")],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "needs no upgrade" in again.stderr
    # Found by a kill trial: an upgrade killed after it had moved NEW into place said "rerun the same
    # command", and the rerun was refused "the directory is not empty". It has nothing to do now.
    finished = _digest(new)
    rerun = subprocess.run([str(W2V2SER), "store", "upgrade", str(FORMAT1), str(new)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{new} already holds the upgrade of {FORMAT1}, nothing to do" in rerun.stdout
    assert _digest(new) == finished
    other = tmp_path / "other.zarr"
    (other / "notes").mkdir(parents=True)
    busy = subprocess.run([str(W2V2SER), "store", "upgrade", str(FORMAT1), str(other)], capture_output=True, text=True)
    assert busy.returncode == 2 and "not empty" in busy.stderr
    upgraded_elsewhere = shutil.copytree(FORMAT1, tmp_path / "copy.zarr")
    busy = subprocess.run([str(W2V2SER), "store", "upgrade", str(upgraded_elsewhere), str(new)], capture_output=True,
                          text=True)
    assert busy.returncode == 2 and "not empty" in busy.stderr  # NEW is the upgrade of another old store
    # Object-store URLs: Path() made s3://feat/new.zarr the local folder ./s3:/feat/new.zarr (exit 0).
    for args in ([str(FORMAT1), "s3://feat/new.zarr"], ["s3://feat/old.zarr", str(tmp_path / "y.zarr")]):
        url = subprocess.run([str(W2V2SER), "store", "upgrade", *args], capture_output=True, text=True, cwd=tmp_path)
        assert url.returncode == 2 and "works on local directories" in url.stderr and "s3://feat/" in url.stderr
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "y.zarr").exists()
    assert _digest(FORMAT1) == before  # the old store is only read


def _arrays(root: Path) -> list[str]:
    out = []
    for meta in sorted(root.rglob("zarr.json")):
        if json.loads(meta.read_text()).get("node_type") == "array":
            out.append(str(meta.parent.relative_to(root)))
    return out


def test_every_array_opens_in_tensorstore_and_tables_in_parquet(upgraded):
    ts = pytest.importorskip("tensorstore")
    pq = pytest.importorskip("pyarrow.parquet")
    store = open_store(upgraded)
    strings = []
    for key in _arrays(upgraded):
        dtype = json.loads((upgraded / key / "zarr.json").read_text())["data_type"]
        if dtype == "string":  # zarr-python's variable-length string extension: the tables go to Parquet
            strings.append(key)
            continue
        array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(upgraded / key)}}).result()
        got = array.read().result()
        np.testing.assert_array_equal(got, store._array(*key.split("/")[1:]) [:] if key.startswith("features/")
                                      else store._read(key))
    assert strings and all(k.split("/")[0] in ("utterances", "failures") or k.endswith("speaker_name") for k in strings)
    # Frames read by tensorstore equal w2v2ser's, byte for byte.
    rows = store._per_row("w2v")
    data = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(upgraded / "features/w2v/data")}}).result()
    for r in store.list_utterances():
        o, n = int(rows["offset"][r.index]), int(rows["length"][r.index])
        np.testing.assert_array_equal(data[o:o + n].read().result(), store.read_utterance(r.id, "w2v"))
    table = pq.read_table(upgraded / "utterances.parquet").to_pydict()
    assert table["id"] == ["u0", "u1", "u2", "u3", "u4"]
    assert table["status"] == [r.status for r in store.list_utterances(status=None)]
    assert table["speaker"] == [r.speaker for r in store.list_utterances(status=None)]
    failures = pq.read_table(upgraded / "failures.parquet").to_pydict()
    assert sorted(zip(failures["id"], failures["feature"])) == [("u3", ""), ("u4", "lld")]


def _per_layer_crc(frames: np.ndarray, crc) -> list[int]:
    return [crc(np.ascontiguousarray(frames[:, k])) for k in range(frames.shape[1])]


def test_new_stores_record_crc32c_per_layer(tmp_path):
    import google_crc32c
    from stage2_fixtures import build_store, ravdess_utterances

    store = open_store(build_store(tmp_path / "s.zarr", utterances=ravdess_utterances(per_actor=1)[:4],
                                   layers=3, dim=4, features=("wav2vec2",)))
    assert store.attrs["row_checksum"] == store.row_checksum == "crc32c" == store.describe()["row_checksum"]
    uid = store.list_utterances()[0].id
    frames = store.read_utterance(uid, "wav2vec2")
    assert list(store._per_row("wav2vec2")["crc32"][store._row(uid)]) == _per_layer_crc(frames, google_crc32c.value)


def test_format2_stores_keep_zlib_crc32(tmp_path, monkeypatch):
    """A format-2 store (zlib CRC-32, no row_checksum attribute) reads, verifies and resumes with
    zlib's CRC and stays format 2; an unknown CRC name is refused with the upgrade to make, and a
    format-3 store without the attribute is damaged."""
    import zarr
    import zlib

    from stage2_fixtures import build_store, ravdess_utterances
    from w2v2ser.store import _writer

    monkeypatch.setattr(_writer, "ROW_CHECKSUM", "crc32")
    path = build_store(tmp_path / "old.zarr", utterances=ravdess_utterances(per_actor=1)[:4], layers=3, dim=4,
                       features=("wav2vec2",))
    monkeypatch.undo()
    group = zarr.open_group(str(path), mode="r+")
    meta = dict(group.attrs["w2v2ser"])
    del meta["row_checksum"]
    meta["format_version"] = 2
    group.attrs["w2v2ser"] = meta
    assert StoreWriter(path).row_checksum == "crc32"
    store = open_store(path)
    assert store.row_checksum == "crc32" and store.format_version == 2
    uid = store.list_utterances()[1].id
    frames = store.read_utterance(uid, "wav2vec2")  # checked against zlib's CRC: crc32c would raise
    assert list(store._per_row("wav2vec2")["crc32"][store._row(uid)]) == _per_layer_crc(frames, zlib.crc32)
    assert store.read_batch([uid], "wav2vec2", layers=[2])[0].shape[1] == 1 and store.verify().ok
    group.attrs["w2v2ser"] = {**meta, "row_checksum": "xxhash"}
    with pytest.raises(StoreVersionError, match="row_checksum 'xxhash'.*pip install -U w2v2ser"):
        open_store(path)
    group.attrs["w2v2ser"] = {**meta, "format_version": 3}
    with pytest.raises(StoreError, match="format_version 3 but no row_checksum"):
        open_store(path)


def test_tables_and_index_of_a_small_store_take_little_space(tmp_path):
    """Tables and index arrays hold ROW_CHUNK (65,536) rows per chunk whatever the store's size:
    uncompressed, those of a store of 4 utterances took 8 MB. They are zstd-compressed, and
    every chunk still ends with its crc32c."""
    from stage2_fixtures import build_store, ravdess_utterances

    path = build_store(tmp_path / "s.zarr", utterances=ravdess_utterances(per_actor=1)[:4], features=("egemaps",))
    feature = path / "features" / "egemaps"
    sizes = {str(f.relative_to(path)): f.stat().st_size for f in path.rglob("*")
             if f.is_file() and not {feature / "data", feature / "stats"} & set(f.parents)}
    assert sum(sizes.values()) < 256 * 1024, sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
    for array in ("utterances/id", "utterances/duration", "features/egemaps/offset"):
        codecs = [c["name"] for c in json.loads((path / array / "zarr.json").read_text())["codecs"]]
        assert codecs[-2:] == ["zstd", "crc32c"], (array, codecs)
    store = open_store(path)
    assert store.verify().ok and len(store.list_utterances()) == 4


def test_a_killed_upgrade_is_finished_by_the_same_command(tmp_path, monkeypatch):
    """Found by fault injection: an upgrade killed at its finalize left a half-written NEW store;
    the same command was refused ("not empty") until the user deleted it by hand, and verify of
    it said to rerun an extraction that never made it. It is written beside NEW now, and moved
    into place when finished."""
    old = tmp_path / "old.zarr"
    shutil.copytree(FORMAT1, old)
    new = tmp_path / "new.zarr"

    def killed(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(StoreWriter, "finalize", killed)
    with pytest.raises(KeyboardInterrupt):
        upgrade_store(old, new)
    monkeypatch.undo()
    assert not new.exists()
    assert upgrade_store(old, new) == new
    assert not list(tmp_path.glob(".*upgrading*"))
    store = open_store(new)
    assert store.verify().ok and store.attrs["upgraded_from"]["format_version"] == 1
    for uid, frames in _v1_frames(old, "w2v").items():
        np.testing.assert_array_equal(store.read_utterance(uid, "w2v"), frames)
    # A second upgrade into a NEW that one is writing is refused, and leaves that one's work alone.
    from w2v2ser.store import StoreLockedError
    from w2v2ser.store._lock import lock_store

    busy, partial = tmp_path / "busy.zarr", tmp_path / ".busy.zarr.upgrading"
    (partial / "half").mkdir(parents=True)
    with lock_store(busy), pytest.raises(StoreLockedError):
        upgrade_store(old, busy)
    assert (partial / "half").is_dir()
    # `store upgrade OLD .` writes beside the (empty) current folder.
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert upgrade_store(old, ".") == here and open_store(here).verify().ok


def test_upgrade_or_extract_into_a_folder_that_takes_no_folders_is_one_line(tmp_path):
    """Found by an upgrade trial: `store upgrade OLD /proc/x.zarr` (and `extract --store /proc/x.zarr`)
    ended in a FileNotFoundError traceback from the lock's mkdir, exit 1."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,speaker\n/nowhere/a.wav,angry,A\n")
    for args in (["store", "upgrade", str(FORMAT1), "/proc/x.zarr"],
                 ["extract", "csv", str(manifest), "--features", "egemaps", "--store", "/proc/x.zarr"]):
        done = subprocess.run([str(W2V2SER), *args], capture_output=True, text=True)
        assert done.returncode == 2, done.stderr
        assert "cannot write to store /proc/x.zarr: no folder can be created there" in done.stderr
        # (Found in review: it went on with read-only advice, "copy the store somewhere writable", for no store.)
        assert "Choose a store path on a normal file system" in done.stderr and "cp -r" not in done.stderr
        assert "Traceback" not in done.stderr


def _old_copy(tmp_path: Path) -> Path:
    old = tmp_path / "old.zarr"
    shutil.copytree(FORMAT1, old)
    return old


def _refused(old: Path, new: Path, *parts: str, **kwargs) -> str:
    """upgrade_store(old, new) raises one StoreError naming every part; nothing is written."""
    with pytest.raises(StoreError) as caught:
        upgrade_store(old, new, **kwargs)
    message = str(caught.value)
    for part in parts:
        assert part in message, (part, message)
    assert not new.exists() and not list(new.parent.glob(f".{new.name}.*")), message
    return message


# Every table/index/failure chunk of the fixture that holds values other than the fill value.
_V1_CHUNKS = ["utterances/id", "utterances/path", "utterances/speaker", "utterances/label", "utterances/status",
              "utterances/audio_sha256", "utterances/duration", "utterances/num_samples",
              "failures/id", "failures/path", "failures/reason",
              *(f"features/{f}/{a}" for f in ("w2v", "lld") for a in ("offset", "capacity", "length", "crc32",
                                                                        "speaker_name"))]


def test_upgrade_refuses_a_format1_table_index_or_failure_chunk_that_is_missing(tmp_path):
    """Found by a trial: format-1 tables carry no checksum, and a deleted chunk reads as its fill
    value, so `store upgrade` wrote a "complete, intact" store with empty labels, speakers,
    reasons or lost failures, its fresh checksums laundering the damage."""
    for array in _V1_CHUNKS:
        old = _old_copy(tmp_path / array.replace("/", "_"))
        (old / array / "c" / "0").unlink()
        _refused(old, old.parent / "new.zarr", str(old), f"{array} lacks chunk c/0", "nothing was written")


def test_upgrade_cross_checks_the_format1_tables(tmp_path):
    """Values rewritten without a trace (or a chunk lost where the fill value was legal) are
    caught by what the old store says elsewhere: a done utterance has frames of every feature
    that did not fail, and the per-speaker frame counts are the old store's."""
    import zarr

    old = _old_copy(tmp_path / "spk")
    zarr.open_group(str(old), mode="r+")["utterances/speaker"][:] = np.asarray(["A"] * 5, dtype=str)
    _refused(old, tmp_path / "spk" / "new.zarr", "per-speaker frame counts of feature", "speaker_count", "'B'")
    old = _old_copy(tmp_path / "len")
    zarr.open_group(str(old), mode="r+")["features/lld/length"][1] = -1
    _refused(old, tmp_path / "len" / "new.zarr", "'u1' is done", "features/lld/length")


def test_upgrade_of_an_unreadable_format1_table_chunk_is_one_store_error(tmp_path):
    """Found by a trial: a flipped byte that zstd notices ended the upgrade in a traceback
    (RuntimeError: Zstd decompression error), exit 1."""
    old = _old_copy(tmp_path)
    chunk = old / "utterances/label/c/0"
    chunk.write_bytes(chunk.read_bytes()[:-3])  # what zstd then reads is not a frame
    message = _refused(old, tmp_path / "new.zarr", str(old), "utterances/label cannot be read")
    done = subprocess.run([str(W2V2SER), "store", "upgrade", str(old), str(tmp_path / "new.zarr")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "utterances/label" in done.stderr, message


def test_damaged_format1_frames_name_what_is_lost_and_skip_damaged_queues_them(tmp_path):
    """Found by a trial: the message for frames that fail their crc32 said to run `store verify OLD`,
    which refuses a format-1 store (and names `store upgrade`): a loop. It names the lost frames
    and --skip-damaged, which upgrades the rest and leaves them pending for `extract`."""
    old = _old_copy(tmp_path)
    import zarr

    offset = int(zarr.open_group(str(old), mode="r")["features/w2v/offset"][1])  # u1: 17 frames, chunks of 8
    chunk = old / f"features/w2v/data/c/{offset // 8}/2/0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    message = _refused(old, tmp_path / "new.zarr", "do not match their crc32", "--skip-damaged", "w2v2ser extract")
    assert "store verify" not in message
    uid = message.split("utterance ", 1)[1].split(",", 1)[0].strip("'")
    new = upgrade_store(old, tmp_path / "new.zarr", skip_damaged=True)
    store = open_store(new, allow_incomplete=True)
    assert store.attrs["upgraded_from"]["damaged"] == [{"id": uid, "feature": "w2v"}]
    status = {r.id: r.status for r in store.list_utterances(status=None)}
    assert status[uid] == "pending" and not store.complete
    for other, frames in _v1_frames(FORMAT1, "w2v").items():
        if other != uid and status[other] == "done":
            np.testing.assert_array_equal(store.read_utterance(other, "w2v"), frames)


def test_upgrade_refuses_an_incomplete_format1_store(tmp_path):
    """Found by a trial: a format-1 store killed before its finalize upgraded to "0 done, N pending"
    with exit 0, dropping the utterances its journal had committed."""
    old = _old_copy(tmp_path)
    meta = json.loads((old / "zarr.json").read_text())
    meta["attributes"]["w2v2ser"]["complete"] = False
    (old / "zarr.json").write_text(json.dumps(meta))
    _refused(old, tmp_path / "new.zarr", str(old), "is incomplete", "w2v2ser that wrote it", "--allow-incomplete")
    new = upgrade_store(old, tmp_path / "new.zarr", allow_incomplete=True)
    assert len(open_store(new, allow_incomplete=True).list_utterances()) == 4  # u4 with its w2v, without lld


def test_upgrade_and_export_refuse_an_output_inside_the_source_store(tmp_path, upgraded):
    """Found by a trial: `store upgrade OLD OLD/sub` wrote the new store inside the old one (then
    said OLD is unchanged) and `store export STORE STORE/x.h5` wrote into the store folder."""
    from w2v2ser.store import export_hdf5

    old = _old_copy(tmp_path / "o")
    for new in (old / "sub", old):
        with pytest.raises(StoreError, match="old store"):
            upgrade_store(old, new)
    assert not (old / "sub").exists()
    with pytest.raises(StoreError, match="inside the store"):
        export_hdf5(upgraded, upgraded / "x.h5")
    assert not list(upgraded.glob("*.h5")) and not list(upgraded.glob(".x.h5*"))
    # ... or inside another store (found in review: only the source store was checked).
    with pytest.raises(StoreError, match=f"is inside the feature store {upgraded.resolve()}, whose own tools"):
        upgrade_store(old, upgraded / "sub.zarr")
    other = _old_copy(tmp_path / "p")
    with pytest.raises(StoreError, match=f"inside the store {other.resolve()}"):
        export_hdf5(upgraded, other / "x.h5")
    assert not (upgraded / "sub.zarr").exists() and not list(other.glob("*x.h5*"))


def _edit_meta(store: Path, **changes) -> None:
    """Change attributes of a store's root (``None`` removes one)."""
    path = store / "zarr.json"
    doc = json.loads(path.read_text())
    meta = doc["attributes"]["w2v2ser"]
    for key, value in changes.items():
        if isinstance(value, dict):
            meta[key] = {k: v for k, v in {**meta[key], **value}.items() if v is not None}
        elif value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    path.write_text(json.dumps(doc))


def test_an_upgrade_rerun_is_recognised_from_any_folder_and_only_for_its_own_source(tmp_path, monkeypatch):
    """Found in review: the recorded OLD path was relative to the first run's folder, so a rerun
    from another folder took a different OLD of the same name for the source ("nothing to do", NEW
    holding other data), and the true rerun given OLD's absolute path was refused "not empty"."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(FORMAT1, a / "old.zarr")
    shutil.copytree(FORMAT1, b / "old.zarr")
    _edit_meta(b / "old.zarr", created="2026-12-01T09:00:00+00:00")  # another store, same name
    new = tmp_path / "new.zarr"
    monkeypatch.chdir(a)
    assert upgrade_store("old.zarr", new) == new
    assert Path(open_store(new).attrs["upgraded_from"]["path"]) == (a / "old.zarr").resolve()
    monkeypatch.chdir(b)
    with pytest.raises(StoreError, match="not empty"):
        upgrade_store("old.zarr", new)
    monkeypatch.chdir(tmp_path)
    assert upgrade_store(a / "old.zarr", new) == new
    # A record of an older w2v2ser holds the path as it was given, relative to an unrecorded folder.
    _edit_meta(new, upgraded_from={"path": "old.zarr", "finalized": None})
    assert upgrade_store(a / "old.zarr", new) == new
    with pytest.raises(StoreError, match="not empty"):
        upgrade_store(b / "old.zarr", new)
    # ... possibly through a symlink (a cluster's /scratch -> /lustre/...), absolute or relative (found in review).
    (tmp_path / "link").symlink_to(a)
    for recorded, given in ((str(tmp_path / "link" / "old.zarr"), tmp_path / "link" / "old.zarr"),
                            ("link/old.zarr", Path("link/old.zarr"))):
        _edit_meta(new, upgraded_from={"path": recorded})
        assert upgrade_store(given, new) == new
        with pytest.raises(StoreError, match="not empty"):
            upgrade_store(b / "old.zarr", new)


def test_an_upgrade_rerun_after_old_changed_is_refused_with_what_to_do(tmp_path):
    """Found in review: a rerun compared only OLD's path, so an OLD that an older w2v2ser resumed
    (finalized again, more utterances) after the upgrade was reported "nothing to do", NEW stale."""
    old, new = tmp_path / "old.zarr", tmp_path / "new.zarr"
    shutil.copytree(FORMAT1, old)
    upgrade_store(old, new)
    assert upgrade_store(old, new) == new
    _edit_meta(old, finalized="2026-12-02T10:00:00+00:00")
    with pytest.raises(StoreError, match=r"changed since \(finalized .*\)\. Remove .*new\.zarr"):
        upgrade_store(old, new)
    done = subprocess.run([str(W2V2SER), "store", "upgrade", str(old), str(new)], capture_output=True, text=True)
    assert done.returncode == 2 and "changed since" in done.stderr and "nothing to do" not in done.stdout
