"""Damaged stores: corrupt, truncated or deleted shard files, newer formats, reuse with another config.

Every damage is either named by ``verify`` (and ``w2v2ser store verify`` exits non-zero) with the
affected utterances, or refused on open with a StoreError that names the array and the fix.
Never is damaged data returned as if it were intact.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures_audio import write_audio
from w2v2ser.extract import build_extractor, extract_corpus, read_audio
from w2v2ser.store import (
    FeatureSpec,
    StoreError,
    StoreVersionError,
    StoreWriter,
    Utterance,
    open_store,
)

W2V2SER = Path(sys.executable).parent / "w2v2ser"


class LayeredConfig:
    def to_dict(self) -> dict:
        return {"kind": "layered", "version": 1}


class LayeredExtractor:
    """A cheap 3-D feature [frames, 3 layers, 4] stored as float16, chunked per layer like wav2vec2."""

    name = "layered"
    config = LayeredConfig()

    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(name="layered", dim=4, layers=3, frame_rate=50.0, dtype="float16",
                           config=self.config.to_dict(), layer_names=("a", "b", "c"))

    def max_frames(self, num_samples: int) -> int:
        return num_samples // 320

    def extract(self, signals):
        out = []
        for s in signals:
            frames = s[: len(s) // 320 * 320].reshape(-1, 320)
            base = np.stack([frames.mean(1), frames.std(1), np.abs(frames).max(1), frames[:, 0]], 1)
            out.append(np.stack([base, 2 * base + 1, base**2], 1).astype(np.float32))
        return out


def _corpus(folder: Path, n: int = 6) -> list[Utterance]:
    utterances = []
    for k in range(n):
        path = write_audio(folder / f"u{k}.wav", duration=0.4 + 0.35 * k, seed=k)
        utterances.append(Utterance(id=f"u{k}", path=str(path), speaker=f"spk{k % 2}", label="angry"))
    return utterances


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, list[Utterance]]:
    folder = tmp_path_factory.mktemp("store_corpus")
    utterances = _corpus(folder)
    store = folder / "pristine.zarr"
    summary = extract_corpus(utterances, store, extractors=[build_extractor("spectrogram"), LayeredExtractor()],
                             progress=False)
    assert summary.complete and not summary.failed
    return store, utterances


@pytest.fixture()
def store(pristine, tmp_path) -> Path:
    copy = tmp_path / "s.zarr"
    shutil.copytree(pristine[0], copy)
    return copy


def _shard_files(store: Path, feature: str) -> list[Path]:
    return sorted(p for p in (store / "features" / feature / "data" / "c").rglob("*") if p.is_file())


def _owners(store: Path, feature: str, shard_file: Path) -> set[str]:
    """Utterances with frames in the shard file (first index of the shard key = shard number)."""
    s = open_store(store)
    shard = s._array(feature, "data").shards[0]
    first = int(shard_file.relative_to(store / "features" / feature / "data" / "c").parts[0]) * shard
    rows = s._per_row(feature)
    return {r.id for r in s.list_utterances() if rows["length"][r.index] > 0
            and rows["offset"][r.index] < first + shard and rows["offset"][r.index] + rows["length"][r.index] > first}


def _frame_bytes(store: Path, feature: str, uid: str, layer: int | None) -> tuple[Path, int]:
    """Shard file and byte position of an utterance's first stored frame (of one layer): the
    data is uncompressed, so the stored bytes are found by search, without parsing the shard."""
    s = open_store(store)
    frames = s.read_utterance(uid, feature)
    row = s._row(uid)
    data = s._array(feature, "data")
    off = int(s._per_row(feature)["offset"][row])
    key = data.metadata.encode_chunk_key((off // data.shards[0],) + (0,) * (data.ndim - 1))
    file = store / "features" / feature / "data" / key
    chunk = data.chunks[0]
    take = min(len(frames), chunk - off % chunk)  # frames up to the end of the inner chunk
    needle = (frames[:take, layer] if layer is not None else frames[:take]).tobytes()
    at = file.read_bytes().find(needle)
    assert at >= 0 and len(needle) >= 8
    return file, at


def _chunk_files(store: Path, array: str) -> list[Path]:
    return sorted(p for p in (store / array / "c").rglob("*") if p.is_file())


def _frames_like(store, ids: list[str], feature: str) -> list[np.ndarray]:
    """Empty arrays shaped like each utterance's frames, for read_batch(..., out=)."""
    spec = store.features[feature]
    return [np.empty((store.num_frames(u, feature), *spec.frame_shape), spec.dtype) for u in ids]


def _flip(path: Path, position: int) -> bytes:
    raw = path.read_bytes()
    damaged = bytearray(raw)
    damaged[position % len(raw)] ^= 0x5A
    path.write_bytes(bytes(damaged))
    return raw


def _verify_cli(store: Path, *options: str) -> subprocess.CompletedProcess:
    """`w2v2ser store verify STORE [OPTIONS]` in-process (the real subprocess is run once, below)."""
    import contextlib
    import io

    from w2v2ser._cli import main

    argv = ["store", "verify", str(store), *options]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return subprocess.CompletedProcess(["w2v2ser", *argv], code, out.getvalue(), err.getvalue())


def test_verify_and_every_read_name_the_owner_of_flipped_frames(store):
    """A flipped byte inside an utterance's frames (float16, stored uncompressed): verify names
    exactly that utterance, and every read path (whole, one layer, batch) raises a StoreError
    naming it."""
    feature = "layered"
    s = open_store(store)
    ids = [r.id for r in s.list_utterances()]
    layered = s.features[feature].layers is not None
    for uid in ids[::2]:
        layer = 1 if layered else None
        file, at = _frame_bytes(store, feature, uid, layer)
        raw = _flip(file, at + 3)
        try:
            report = open_store(store).verify()
            assert {(u, f) for u, f, _ in report.problems} == {(uid, feature)}, report.problems
            fresh = open_store(store)
            with pytest.raises(StoreError, match=uid):
                fresh.read_utterance(uid, feature)
            if layered:
                with pytest.raises(StoreError, match=uid):
                    fresh.read_utterance(uid, feature, layers=[layer])
                fresh.read_utterance(uid, feature, layers=[0])  # another layer is intact
            with pytest.raises(StoreError, match=uid):
                fresh.read_batch(ids, feature)
            with pytest.raises(StoreError, match=uid):  # read into the caller's arrays
                fresh.read_batch(ids, feature, out=_frames_like(fresh, ids, feature))
        finally:
            file.write_bytes(raw)
    assert open_store(store).verify().ok


@pytest.mark.parametrize("position", [0.1, 0.3, 0.5, 0.7, 0.9, 0.97])
def test_flipped_bytes_in_a_compressed_shard_are_never_returned(store, position):
    """Spectrogram shards are zstd-compressed: a flipped byte anywhere in one either leaves the
    frames exact, or verify and every read path refuse the utterances it touches, by name."""
    s = open_store(store)
    ids = [r.id for r in s.list_utterances()]
    clean = {uid: s.read_utterance(uid, "spectrogram") for uid in ids}
    (file,) = _shard_files(store, "spectrogram")
    _flip(file, int(len(file.read_bytes()) * position))
    report = open_store(store).verify()
    named = {u for u, _, _ in report.problems}
    fresh = open_store(store)
    for uid in ids:
        try:
            frames = fresh.read_utterance(uid, "spectrogram")
        except StoreError as error:
            assert uid in str(error) and uid in named
        else:
            np.testing.assert_array_equal(frames, clean[uid])
            assert uid not in named
    try:
        batch = fresh.read_batch(ids, "spectrogram")
    except StoreError as error:
        assert named and "damaged" in str(error)
    else:
        assert not named and all(np.array_equal(b, clean[u]) for u, b in zip(ids, batch))


def test_store_verify_cli_exit_code_and_names(store):
    uid = open_store(store).list_utterances()[2].id
    file, at = _frame_bytes(store, "layered", uid, 0)
    assert _verify_cli(store).returncode == 0
    _flip(file, at + 1)
    done = subprocess.run([str(W2V2SER), "store", "verify", str(store)], capture_output=True, text=True)
    assert done.returncode == 1
    assert uid in done.stdout and "problem(s) found" in done.stdout
    assert f"`w2v2ser store verify {store} --repair`" in done.stdout  # the store's own path, not "STORE"


def test_store_verify_json_is_a_report_with_the_same_exit_codes(store):
    """Leftover: `store info` had --json, `store verify` did not; a script had to parse its tab lines."""
    import contextlib
    import io
    import json

    from w2v2ser._cli import main

    def verify_json() -> tuple[int, dict]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["store", "verify", str(store), "--json", "--no-progress"])
        return code, json.loads(out.getvalue())

    code, report = verify_json()
    assert code == 0 and report["intact"] and not report["unfinished"] and report["problems"] == []
    assert report["checked"] > 0
    uid = open_store(store).list_utterances()[2].id
    file, at = _frame_bytes(store, "layered", uid, 0)
    _flip(file, at + 1)
    code, report = verify_json()
    assert code == 1 and not report["intact"]
    assert {(p["id"], p["feature"]) for p in report["problems"]} == {(uid, "layered")}
    assert all(p["reason"] for p in report["problems"]) and report["queued_for_reextraction"] == []


def test_store_verify_repair_json_lists_the_queued_pairs_then_the_store_is_unfinished(store):
    """Review: no test covered `--repair --json` with queued pairs, nor `unfinished: true`. The JSON's
    keys, `intact` and the exit status agree with each other and with the text report."""
    import contextlib
    import io

    from w2v2ser._cli import main

    def verify(*options: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["store", "verify", str(store), "--no-progress", *options])
        return code, out.getvalue()

    victim = _shard_files(store, "layered")[-1]
    owners = _owners(store, "layered", victim)
    victim.unlink()
    code, out = verify("--repair", "--json")
    report = json.loads(out)
    assert set(report) == {"store", "intact", "unfinished", "checked", "problems", "queued_for_reextraction"}
    assert code == 1 and report["store"] == str(store) and not report["intact"] and not report["unfinished"]
    assert {(p["id"], p["feature"]) for p in report["problems"]} == {(uid, "layered") for uid in owners}
    assert sorted((q["id"], q["feature"]) for q in report["queued_for_reextraction"]) == sorted(
        (uid, "layered") for uid in owners)
    code, out = verify("--json")  # queued: incomplete until the extraction reruns
    report = json.loads(out)
    assert code == 1 and report["unfinished"] and not report["intact"], report
    assert report["queued_for_reextraction"] == []
    code, out = verify()
    assert code == 1 and "the store is incomplete: " in out and "intact" not in out.splitlines()[-2:], out


@pytest.mark.parametrize("damage", ["truncate", "delete", "empty"])
def test_verify_and_reads_name_utterances_of_truncated_or_deleted_shards(store, damage):
    files = _shard_files(store, "layered")
    victim = files[-1]
    owners = _owners(store, "layered", victim)
    assert owners
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 3])
    elif damage == "delete":
        victim.unlink()
    else:
        victim.write_bytes(b"")
    report = open_store(store).verify()
    assert {uid for uid, _, _ in report.problems} == owners
    done = _verify_cli(store)
    assert done.returncode == 1 and all(uid in done.stdout for uid in owners)
    s = open_store(store)
    for uid in owners:
        for layers in (None, [2]):
            with pytest.raises(StoreError, match=uid):
                s.read_utterance(uid, "layered", layers=layers)
        with pytest.raises(StoreError, match="damaged"):
            s.read_batch(sorted(owners), "layered", layers=[0])
        with pytest.raises(StoreError, match=uid):
            s.read_batch([uid], "layered", out=_frames_like(s, [uid], "layered"))


def test_verify_repair_queues_damaged_utterances_and_the_next_extraction_restores_them(store, pristine):
    """A deleted shard: the way out was to delete journal lines by hand or extract a new store.
    `store verify --repair` queues exactly its owners; rerunning the extraction re-extracts only
    them (the other features and utterances are kept) and the store is intact, with the same frames."""
    victim = _shard_files(store, "layered")[-1]
    owners = _owners(store, "layered", victim)
    clean = {uid: open_store(pristine[0]).read_utterance(uid, "layered") for uid in owners}
    victim.unlink()
    done = subprocess.run([str(W2V2SER), "store", "verify", str(store), "--repair"], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert f"queued {len(owners)} utterance x feature pair(s) with damaged frames for re-extraction" in done.stdout
    assert "--repair`, then rerun the extraction" in done.stdout
    with pytest.raises(StoreError, match="incomplete"):
        open_store(store)  # refused until the re-extraction finalizes it
    summary = extract_corpus(pristine[1], store, extractors=[build_extractor("spectrogram"), LayeredExtractor()],
                             progress=False)
    assert summary.complete and summary.extracted == len(owners) and summary.skipped == len(pristine[1]) - len(owners)
    repaired = open_store(store)
    assert repaired.verify().ok
    for uid, frames in clean.items():
        np.testing.assert_array_equal(repaired.read_utterance(uid, "layered"), frames)
    # An intact store: nothing queued, still complete.
    assert subprocess.run([str(W2V2SER), "store", "verify", str(store), "--repair"], capture_output=True,
                          text=True).stdout.strip() == "intact"
    assert open_store(store).complete


def _flip_utterance_statistics(store: Path, feature: str, index: int) -> None:
    s = open_store(store)
    slot = int(s._per_row(feature)["slot"][index])
    stats = s._array(feature, "stats")  # float64, uncompressed
    key = stats.metadata.encode_chunk_key((slot // stats.shards[0],) + (0,) * (stats.ndim - 1))
    file = store / "features" / feature / "stats" / key
    at = file.read_bytes().find(np.asarray(stats[slot, 0]).tobytes()[:8])
    assert at >= 0
    _flip(file, at + 5)


def test_verify_detects_damaged_per_utterance_statistics(store):
    victim = open_store(store).list_utterances()[3]
    _flip_utterance_statistics(store, "spectrogram", victim.index)
    report = open_store(store).verify()
    assert not report.ok
    assert {(uid, f) for uid, f, _ in report.problems} == {(victim.id, "spectrogram")}, report.problems
    assert "statistics" in str(report.problems)


def test_verify_repair_of_damaged_per_utterance_statistics_completes(store, pristine):
    """Found by an object-storage trial (local too): the re-extracted utterance took a new slot, but
    finalize read the statistics of every slot between the first and last in use, the damaged
    superseded one included, so every rerun failed in finalize and the store never completed."""
    victim = open_store(store).list_utterances()[3]
    _flip_utterance_statistics(store, "spectrogram", victim.index)
    done = subprocess.run([str(W2V2SER), "store", "verify", str(store), "--repair"], capture_output=True, text=True)
    assert done.returncode == 1 and "queued 1 utterance x feature pair(s)" in done.stdout, done
    summary = extract_corpus(pristine[1], store, extractors=[build_extractor("spectrogram"), LayeredExtractor()],
                             progress=False)
    assert summary.complete and summary.extracted == 1
    repaired = open_store(store)
    assert repaired.verify().ok
    want = open_store(pristine[0]).compose_statistics("spectrogram")
    got = repaired.compose_statistics("spectrogram")
    assert got.count == want.count
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-12)


@pytest.mark.parametrize("array", ["features/spectrogram/data", "features/layered/stats"])
def test_a_missing_array_metadata_file_is_one_error_that_does_not_send_the_user_in_a_loop(store, pristine, array):
    """Found by an object-storage trial (local too): with an array's zarr.json deleted, extract ended
    in a KeyError traceback, and verify told the user to run verify --repair, which said the same."""
    (store / array / "zarr.json").unlink()
    with pytest.raises(StoreError, match=rf"array {array} cannot be opened, its metadata file {array}/zarr.json "
                                         r"is missing") as refused:
        open_store(store, allow_incomplete=True).verify()
    assert "cannot restore an array" in str(refused.value)
    with pytest.raises(StoreError, match=rf"array {array} cannot be opened"):
        extract_corpus(pristine[1], store, extractors=[build_extractor("spectrogram"), LayeredExtractor()],
                       progress=False)
    done = _verify_cli(store)  # damage is verify's answer: exit 1, as for a table's missing zarr.json (below)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "--repair` to list" not in done.stderr


def test_a_missing_table_column_is_named_by_verify_and_rebuilt_from_the_manifest(store, pristine):
    """The manifest's columns (label here) are written again by the rerun that verify's damage calls for."""
    (store / "utterances" / "label" / "zarr.json").unlink()
    report = open_store(store).verify()
    assert [problem for _, _, problem in report.problems] == [
        problem for _, _, problem in report.problems if "array utterances/label cannot be opened" in problem]
    assert report.problems and _verify_cli(store).returncode == 1
    extract_corpus(pristine[1], store, extractors=[build_extractor("spectrogram"), LayeredExtractor()], progress=False)
    assert open_store(store).verify().ok
    assert [u.label for u in open_store(store).list_utterances()] == [u.label for u in pristine[1]]


def test_damaged_per_utterance_statistics_are_never_read_as_intact(store, pristine, tmp_path):
    """Export and a resumed extraction's finalize read the per-utterance statistics one inner chunk
    at a time; through zarrs that skipped the chunk's crc32c, so the damage went into the HDF5
    copy and into the recomposed speaker statistics without a word."""
    from w2v2ser.store import export_hdf5

    _flip_utterance_statistics(store, "layered", 3)
    with pytest.raises(StoreError, match="features/layered/stats cannot be read"):
        export_hdf5(store, tmp_path / "copy.h5")
    with pytest.raises(StoreError, match=r"statistics of feature 'layered' cannot be read.*store verify"):
        extract_corpus(pristine[1], store, extractors=[build_extractor("spectrogram"), LayeredExtractor()],
                       progress=False)


def test_damaged_speaker_statistics_raise_when_stage_2_composes_them(store):
    """compose_statistics (stage 2's normalisation) read speaker_mean outside the reader's
    damage check: a flipped byte raised zarr's bare ValueError through `w2v2ser train`."""
    (file,) = _chunk_files(store, "features/layered/speaker_mean")
    _flip(file, len(file.read_bytes()) // 2)
    with pytest.raises(StoreError, match="features/layered/speaker_mean cannot be read.*store verify"):
        open_store(store).compose_statistics("layered", speakers=["spk0", "spk1"])


@pytest.mark.parametrize("global_pipeline", [None, "zarrs.ZarrsCodecPipeline"])
def test_verify_detects_damaged_speaker_statistics(store, global_pipeline):
    # Also with the zarrs pipeline set process-wide (as an interleaved config.set in two threads
    # used to leave it): the small arrays are still opened with zarr's checking pipeline.
    import zarr

    (file,) = _chunk_files(store, "features/layered/speaker_mean")
    _flip(file, len(file.read_bytes()) // 2)
    with zarr.config.set({"codec_pipeline.path": global_pipeline or zarr.config.get("codec_pipeline.path")}):
        report = open_store(store).verify()
    assert not report.ok and "speaker_mean" in str(report.problems), report.problems


@pytest.mark.parametrize("column", ["id", "label", "duration"])
def test_parquet_tables_carry_page_checksums_that_verify_checks(store, column):
    """One flipped byte in a page of utterances.parquet: pandas' default read returned wrong rows
    without an error for most such flips, and verify said "intact" (it did not look at Parquet)."""
    pq = pytest.importorskip("pyarrow.parquet")
    table = store / "utterances.parquet"
    assert open_store(store).verify().ok
    meta = pq.ParquetFile(table).metadata
    chunk = meta.row_group(0).column(meta.schema.names.index(column))
    end = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size
    _flip(table, end - 1)  # the last byte of the column's data page, inside its CRC32
    with pytest.raises(OSError, match="CRC"):
        pq.read_table(table, page_checksum_verification=True)
    report = open_store(store).verify()
    assert not report.ok and "utterances.parquet cannot be read" in str(report), report


@pytest.mark.parametrize("damage", ["delete", "stale"])
def test_verify_names_a_missing_or_stale_parquet_table(store, damage):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    table = store / "utterances.parquet"
    if damage == "delete":
        table.unlink()
    else:  # a valid file whose rows are not the store's (copied from elsewhere, or edited by a tool)
        rows = pq.read_table(table)
        labels = rows.column("label").to_pylist()
        labels[3] = "happy" if labels[3] != "happy" else "sad"
        pq.write_table(rows.set_column(rows.schema.get_field_index("label"), "label", pa.array(labels)), table)
    report = open_store(store).verify()
    want = "utterances.parquet is missing" if damage == "delete" else "column 'label' differs"
    assert not report.ok and want in str(report) and "rerun the same extraction" in str(report), report


def test_opening_arrays_from_many_threads_leaves_the_zarr_config_as_it_was(store):
    import threading

    import zarr

    before = zarr.config.get("codec_pipeline.path")
    s = open_store(store)

    def open_many() -> None:
        for _ in range(200):
            s._array("layered", "data")
            s._array("layered", "speaker_mean")

    threads = [threading.Thread(target=open_many) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert zarr.config.get("codec_pipeline.path") == before


@pytest.mark.parametrize("array,axis", [("failures/id", 0), ("features/spectrogram/speaker_name", 0),
                                        ("features/layered/speaker_mean", 0), ("features/layered/speaker_m2", 2)])
def test_a_damaged_array_shape_raises_store_error_not_a_numpy_error(store, array, axis):
    """A digit changed in an array's zarr.json shape (still valid JSON): reads raised IndexError or
    a numpy broadcast error, which the command line shows as a traceback."""
    meta = store / array / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][axis] += 1
    meta.write_text(json.dumps(doc))
    s = open_store(store)
    with pytest.raises(StoreError, match="damaged"):
        s.list_failures() if array.startswith("failures") else s.compose_statistics(array.split("/")[1])


def _everything_read(path: Path) -> dict[str, object]:
    """What each read path of the store returns (tables, frames whole, by layer and batched, statistics)."""
    s = open_store(path)
    ids = [r.id for r in s.list_utterances()]
    out: dict[str, object] = {"utterances": [(r.id, r.speaker, r.label, r.duration) for r in s.list_utterances()],
                              "failures": s.list_failures(), "speakers": s.speakers()}
    for name, spec in s.features.items():
        out[name] = [s.read_utterance(i, name) for i in ids] + s.read_batch(ids, name)
        if spec.layers:
            out[f"{name}:1"] = [s.read_utterance(i, name, layers=[1]) for i in ids] + s.read_batch(ids, name, layers=[1])
        for speakers in (None, s.speakers()[:1]):
            stats = s.compose_statistics(name, speakers=speakers)
            out[f"{name} stats {speakers}"] = [stats.count, stats.mean, stats.variance]
    import h5py

    from w2v2ser.store import export_hdf5

    with h5py.File(export_hdf5(path, path.with_suffix(".h5")), "r") as h5:  # per-utterance statistics too
        out["hdf5"] = {name: {key: h5[f"features/{name}/{key}"][()] for key in h5[f"features/{name}"]}
                       for name in s.features}
    return out


def _same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and np.array_equal(a, b, equal_nan=True))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.slow
def test_a_flipped_byte_anywhere_in_any_chunk_file_never_reads_back_as_data(pristine, tmp_path):
    """Every chunk and shard file of the store, a byte flipped at its start, a third, the middle
    and its end: every read path either raises StoreError or returns exactly the pristine values
    (the flip hit bytes no read uses). Nothing else: no wrong value, no other exception."""
    reference = _everything_read(pristine[0])
    files = sorted(p for p in pristine[0].rglob("*") if p.is_file() and "c" in p.relative_to(pristine[0]).parts)
    assert len(files) > 20
    outcomes = {"raised": 0, "unchanged": 0}
    for file in files:
        size = file.stat().st_size
        for position in sorted({0, size // 3, size // 2, size - 1}):
            copy = tmp_path / f"c{sum(outcomes.values())}.zarr"
            shutil.copytree(pristine[0], copy)
            _flip(copy / file.relative_to(pristine[0]), position)
            try:
                got = _everything_read(copy)
            except StoreError:
                outcomes["raised"] += 1
            else:
                assert _same(got, reference), f"{file.relative_to(pristine[0])} byte {position}: wrong data read back"
                outcomes["unchanged"] += 1
            shutil.rmtree(copy)
            copy.with_suffix(".h5").unlink(missing_ok=True)
    assert outcomes["raised"] > 3 * outcomes["unchanged"], outcomes


@pytest.mark.parametrize("array,damage", [
    ("features/spectrogram/offset", "truncate"), ("features/spectrogram/offset", "delete"),
    ("features/spectrogram/length", "delete"), ("features/spectrogram/crc32", "truncate"),
    ("features/layered/capacity", "delete"), ("features/layered/length", "truncate"),
])
def test_damaged_index_arrays_never_return_wrong_frames(store, pristine, array, damage):
    """offset/length/crc32/capacity chunks: reads refuse with a clear StoreError, verify names the utterances."""
    (file,) = _chunk_files(store, array)
    if damage == "truncate":
        file.write_bytes(file.read_bytes()[:5])
    else:
        file.unlink()
    feature = array.split("/")[1]
    ids = [u.id for u in pristine[1]]
    # Either open/read refuses with a message naming the damaged array, or it returns the right frames.
    good = open_store(pristine[0])
    for uid in ids:
        try:
            frames = open_store(store).read_utterance(uid, feature)
        except StoreError as error:
            message = str(error)
            assert array in message or "damaged" in message, message
            assert "verify" in message or "new store" in message or "re-extract" in message.lower(), message
        else:
            np.testing.assert_array_equal(frames, good.read_utterance(uid, feature))
    try:
        report = open_store(store).verify()
    except StoreError as error:  # the array holding all regions is unreadable: refuse, naming it
        assert array in str(error)
        done = _verify_cli(store)
        assert done.returncode != 0 and array in done.stderr
        return
    assert not report.ok
    named = {uid for uid, _, _ in report.problems}
    assert named - {"*"} in (set(ids), set()) and named, report.problems
    assert _verify_cli(store).returncode == 1


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_utterance_id_column_is_refused_by_name(store, damage):
    (file,) = _chunk_files(store, "utterances/id")
    if damage == "truncate":
        file.write_bytes(file.read_bytes()[:7])
    else:
        file.unlink()
    with pytest.raises(StoreError, match="utterances/id") as error:
        open_store(store).list_utterances()
    assert "damaged" in str(error.value)
    done = _verify_cli(store)
    assert done.returncode != 0 and "utterances/id" in done.stderr


def test_store_from_a_newer_format_is_refused_by_readers_and_writers(store, pristine):
    meta_file = store / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["w2v2ser"]["format_version"] = 99
    meta["attributes"]["w2v2ser"]["tool_version"] = "9.0.0"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(StoreVersionError, match=r"format_version 99.*9\.0\.0.*Upgrade w2v2ser"):
        open_store(store)
    with pytest.raises(StoreVersionError):
        StoreWriter(store)
    with pytest.raises(StoreVersionError):
        extract_corpus(pristine[1], store, extractors=[build_extractor("spectrogram")], progress=False)
    done = subprocess.run([str(W2V2SER), "store", "info", str(store)], capture_output=True, text=True)
    assert done.returncode == 2 and "Upgrade w2v2ser" in done.stderr


def _tree_digest(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("options", [{"hop_ms": 20.0}, {"n_fft": 512}, {"log": True}])
def test_rerun_with_another_feature_config_is_refused_and_overwrites_nothing(store, pristine, options, tmp_path):
    before = _tree_digest(store)
    more = _corpus(tmp_path / "more", n=2)
    more = [Utterance(id=f"new{u.id}", path=u.path, speaker="spk9", label="sad") for u in more]
    with pytest.raises(StoreError, match="another config") as error:
        extract_corpus(pristine[1] + more, store, extractors=[build_extractor("spectrogram", options)],
                       progress=False)
    message = str(error.value)
    assert "'spectrogram'" in message and "new store path" in message
    assert _tree_digest(store) == before  # nothing written, not even the new utterances
    assert open_store(store).complete and open_store(store).verify().ok


def test_rerun_with_another_feature_config_from_the_cli_exits_2(store, pristine, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path,label,speaker\n" + "".join(
        f"{u.id},{u.path},{u.label},{u.speaker}\n" for u in pristine[1]))
    before = _tree_digest(store)
    done = subprocess.run([str(W2V2SER), "extract", "csv", str(manifest), "--store", str(store),
                           "--features", "spectrogram", "--option", "spectrogram.hop_ms=20", "--no-progress"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "another config" in done.stderr and "hop_ms" in done.stderr
    assert _tree_digest(store) == before


def test_frames_read_back_equal_the_extractor_output(store, pristine):
    """Sanity anchor for the damage tests: the pristine copy is exact."""
    s = open_store(store)
    for u in pristine[1]:
        expected = LayeredExtractor().extract([read_audio(u.path)])[0].astype(np.float16)
        np.testing.assert_array_equal(s.read_utterance(u.id, "layered"), expected)


def test_a_deleted_chunk_file_of_any_table_index_or_statistics_array_never_reads_back_as_data(pristine, tmp_path):
    """zarr reads a missing chunk as its fill value (empty strings, zeros). Every chunk file outside
    the frames, deleted in turn: every read path, export included, raises StoreError or returns
    exactly the pristine values. A deleted frame shard is covered by the CRC tests above."""
    reference = _everything_read(pristine[0])
    files = sorted(p for p in pristine[0].rglob("*") if p.is_file() and "c" in p.relative_to(pristine[0]).parts
                   and "data" not in p.relative_to(pristine[0]).parts)
    assert any("stats" in f.parts for f in files) and any("speaker_mean" in f.parts for f in files)
    raised = []
    for k, file in enumerate(files):
        copy = tmp_path / f"d{k}.zarr"
        shutil.copytree(pristine[0], copy)
        (copy / file.relative_to(pristine[0])).unlink()
        try:
            got = _everything_read(copy)
        except StoreError as error:
            assert "damaged" in str(error) and "verify" in str(error), error
            raised.append(file)
        else:
            assert _same(got, reference), f"{file.relative_to(pristine[0])} deleted: wrong data read back"
        shutil.rmtree(copy)
        copy.with_suffix(".h5").unlink(missing_ok=True)
    assert len(raised) == len(files), sorted(set(files) - set(raised))


def test_a_deleted_statistics_shard_is_listed_by_utterance_and_repaired(store, pristine):
    """Readers refuse a store whose statistics shard is gone (it would read as zeros); verify lists
    the utterances whose statistics it held, so that --repair can queue them, as for frames."""
    s = open_store(store)
    rows = s._per_row("spectrogram")
    owners = {r.id for r in s.list_utterances() if rows["length"][r.index] > 0}  # one shard of 64 slots
    (shard,) = _chunk_files(store, "features/spectrogram/stats")
    shard.unlink()
    with pytest.raises(StoreError, match="features/spectrogram/stats lacks chunk files"):
        open_store(store).compose_statistics("spectrogram", utterances=sorted(owners))
    report = open_store(store).verify()
    assert {uid for uid, feature, _ in report.problems if feature == "spectrogram" and uid != "*"} == owners
    assert all(f"statistics are missing (shard file {shard.relative_to(store)} is gone)" in problem
               for uid, feature, problem in report.problems if uid != "*"), report.problems
    done = subprocess.run([str(W2V2SER), "store", "verify", str(store), "--repair"], capture_output=True, text=True)
    assert done.returncode == 1 and f"queued {len(owners)} utterance x feature pair(s)" in done.stdout, done
    extract_corpus(pristine[1], store, extractors=[build_extractor("spectrogram"), LayeredExtractor()], progress=False)
    repaired = open_store(store)
    assert repaired.verify().ok
    want = open_store(pristine[0]).compose_statistics("spectrogram", utterances=sorted(owners))
    got = repaired.compose_statistics("spectrogram", utterances=sorted(owners))
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-12)


def test_a_rerun_without_repair_never_composes_speaker_statistics_from_a_deleted_shard(store, pristine):
    """An extraction rerun found every utterance finished and finalized again: zarr read the deleted
    statistics shard as zeros, and the speaker statistics were composed from them without a word.
    The finalize refuses now, saying how to repair; the repair then restores the statistics."""
    s = open_store(store)
    rows = s._per_row("spectrogram")
    owners = sorted(r.id for r in s.list_utterances() if rows["length"][r.index] > 0)
    (shard,) = _chunk_files(store, "features/spectrogram/stats")
    shard.unlink()
    extractors = [build_extractor("spectrogram"), LayeredExtractor()]
    tables = {key: (store / key).read_bytes() for key in ("utterances.parquet", "zarr.json")}
    with pytest.raises(StoreError, match=r"lack the shard.* verify --repair"):
        extract_corpus(pristine[1], store, extractors=extractors, progress=False)
    assert tables == {key: (store / key).read_bytes() for key in tables}  # refused before anything was written
    done = subprocess.run([str(W2V2SER), "store", "verify", str(store), "--repair"], capture_output=True, text=True)
    assert done.returncode == 1 and f"queued {len(owners)} utterance x feature pair(s)" in done.stdout, done
    assert extract_corpus(pristine[1], store, extractors=extractors, progress=False).complete
    repaired, want = open_store(store), open_store(pristine[0])
    assert repaired.verify().ok
    for speaker in sorted({u.speaker for u in pristine[1]}):
        got, expected = (r.compose_statistics("spectrogram", speakers=[speaker]) for r in (repaired, want))
        np.testing.assert_array_equal(got.mean, expected.mean)


def test_a_repair_killed_before_it_marked_the_store_incomplete_is_finished_by_the_rerun(store, pristine,
                                                                                       monkeypatch):
    """Found by fault injection: `verify --repair` killed after it marked the store incomplete and
    before it queued the damaged utterances: the rerun it asks for redid nothing and called the
    damaged store complete. The queue is written first now."""
    from w2v2ser.store import StoreWriter as Writer

    s = open_store(store)
    rows = s._per_row("spectrogram")
    owners = {r.id for r in s.list_utterances() if rows["length"][r.index] > 0}
    (shard,) = _chunk_files(store, "features/spectrogram/stats")
    shard.unlink()

    def killed(self, meta):
        raise KeyboardInterrupt

    monkeypatch.setattr(Writer, "_set_meta", killed)
    from w2v2ser.store import _repair

    with pytest.raises(KeyboardInterrupt):
        _repair.repair_store(store)
    monkeypatch.undo()
    summary = extract_corpus(pristine[1], store, extractors=[build_extractor("spectrogram"), LayeredExtractor()],
                             progress=False)
    assert summary.complete and summary.extracted == len(owners)
    assert open_store(store).verify().ok


def test_verify_repair_of_a_read_only_store_verifies_and_refuses_only_a_repair(store, monkeypatch):
    """On a read-only mount, `store verify --repair` of an intact store exited 2 ("cannot write
    to store"): it took the extraction lock before verifying. It verifies first now."""
    import contextlib

    from w2v2ser.store import _repair

    @contextlib.contextmanager
    def read_only(location):
        raise StoreError(f"cannot write to store {location}: Read-only file system")
        yield

    monkeypatch.setattr(_repair, "lock_store", read_only)
    done = _verify_cli(store)  # plain verify never locks
    assert done.returncode == 0
    report, pairs = _repair.repair_store(store)
    assert report.ok and pairs == []
    file, at = _frame_bytes(store, "layered", open_store(store).list_utterances()[1].id, 0)
    _flip(file, at + 1)
    with pytest.raises(StoreError, match="Read-only file system"):
        _repair.repair_store(store)
    assert open_store(store).complete  # nothing was queued


def test_the_missing_chunk_check_raises_no_false_alarm(store, pristine, monkeypatch):
    """Found in review: the check must not call an intact store damaged when (a) the store cannot
    be listed (read-only object-storage credentials, an HTTP store), (b) an older w2v2ser finalized
    it since (it lets go of chunks of only fill values), or (c) a statistics shard is missing
    because all its utterances are digital silence (zeros are not stored)."""
    import json

    import zarr.storage

    def refuse(self, prefix):
        raise PermissionError("s3:ListBucket denied")

    with monkeypatch.context() as patched:
        patched.setattr(zarr.storage.LocalStore, "list_prefix", refuse)
        s = open_store(store)
        assert len(s.list_utterances()) == len(pristine[1]) and s.compose_statistics("spectrogram").count > 0
    # (b) a finalize by an older w2v2ser: its "finalized" time is not the mark's
    attrs = json.loads((store / "zarr.json").read_text())
    assert attrs["attributes"]["w2v2ser"]["all_chunks_stored"] == attrs["attributes"]["w2v2ser"]["finalized"]
    older = store.parent / "older.zarr"
    shutil.copytree(store, older)
    attrs["attributes"]["w2v2ser"]["finalized"] = "2026-01-01T00:00:00+00:00"
    (older / "zarr.json").write_text(json.dumps(attrs))
    (spectrogram_mean,) = _chunk_files(older, "features/spectrogram/speaker_mean")
    spectrogram_mean.unlink()
    open_store(older).compose_statistics("spectrogram")  # read as before (verify's business), no alarm
    # (c) a statistics shard whose utterances are all silent
    silent = store.parent / "silent"
    silent.mkdir()
    rows = [Utterance(id=f"z{k}", path=str(write_audio(silent / f"z{k}.wav", data=np.zeros(8000, np.float32))),
                      speaker="spk0", label="angry") for k in range(3)]
    path = silent / "s.zarr"
    extract_corpus(rows, path, extractors=[build_extractor("spectrogram")], progress=False)
    for shard in _chunk_files(path, "features/spectrogram/stats"):
        shard.unlink()  # as tensorstore leaves out a shard of zeros
    assert open_store(path).compose_statistics("spectrogram", utterances=["z0", "z1"]).count > 0
    # ... but not when one of them has sound
    mixed = silent / "m.zarr"
    loud = Utterance(id="loud", path=str(write_audio(silent / "loud.wav", duration=0.5)), speaker="spk0", label="sad")
    extract_corpus([*rows, loud], mixed, extractors=[build_extractor("spectrogram")], progress=False)
    for shard in _chunk_files(mixed, "features/spectrogram/stats"):
        shard.unlink()
    with pytest.raises(StoreError, match="features/spectrogram/stats lacks chunk files"):
        open_store(mixed).compose_statistics("spectrogram", utterances=["z0", "loud"])


@pytest.mark.parametrize("mark", ["finalized", "unfinished"])
def test_a_store_an_older_w2v2ser_finalized_stays_readable_after_this_one_adds_to_it(store, pristine, mark):
    """Found by a migration trial: an older w2v2ser (before every chunk was stored) resumed a store,
    letting go of utterances/session's chunk (all empty), then this version added a feature. Its
    finalize renewed the all-chunks mark, so every read called the store damaged ("utterances/session
    lacks chunk files"), and `store verify` sent the user to re-extract intact utterances. The older
    version may also have finished a store this one created and never finalized (its mark still true)."""
    from dataclasses import replace

    attrs = json.loads((store / "zarr.json").read_text())
    attrs["attributes"]["w2v2ser"]["finalized"] = "2026-01-01T00:00:00+00:00"  # an older w2v2ser's finalize
    if mark == "unfinished":
        attrs["attributes"]["w2v2ser"]["all_chunks_stored"] = True
    (store / "zarr.json").write_text(json.dumps(attrs))
    for chunk in _chunk_files(store, "utterances/session"):  # which kept no chunk of only empty values
        chunk.unlink()

    class Other(LayeredExtractor):
        name = "other"

        def feature_spec(self) -> FeatureSpec:
            return replace(super().feature_spec(), name="other")

    summary = extract_corpus(pristine[1], store, extractors=[Other()], progress=False)
    assert summary.complete and summary.extracted == len(pristine[1])
    s = open_store(store)
    assert [r.session for r in s.list_utterances()] == [""] * len(pristine[1])
    assert s.verify().ok and _verify_cli(store).returncode == 0


def test_a_store_this_version_finalized_keeps_its_chunk_checks_after_this_one_adds_to_it(store, pristine):
    """The positive case beside the one above: created and finalized by this version, then extracted
    into again, the store keeps its all-chunks mark, so a deleted table chunk still fails the read."""
    from dataclasses import replace

    class Other(LayeredExtractor):
        name = "other"

        def feature_spec(self) -> FeatureSpec:
            return replace(super().feature_spec(), name="other")

    summary = extract_corpus(pristine[1], store, extractors=[Other()], progress=False)
    assert summary.complete and summary.extracted == len(pristine[1])
    meta = json.loads((store / "zarr.json").read_text())["attributes"]["w2v2ser"]
    assert meta["all_chunks_stored"] == meta["finalized"]
    (chunk,) = _chunk_files(store, "utterances/label")
    chunk.unlink()
    with pytest.raises(StoreError, match="utterances/label lacks chunk files"):
        open_store(store).list_utterances()


def test_export_after_a_repair_skips_the_damaged_frames_the_repair_superseded(tmp_path):
    """export read neighbouring utterances with one read spanning the gap between them: after
    `verify --repair` and the re-extraction, the damaged frames of the old slot lay in such a gap
    (one whole zstd chunk here, one that cannot be decompressed), and export and read_batch
    (training's reads) failed on a store verify calls intact, naming the neighbours."""
    from w2v2ser.store import export_hdf5

    utterances = []
    for k in range(3):  # spectrogram: 512 frames a chunk, each utterance exactly one
        path = write_audio(tmp_path / f"u{k}.wav", frames=400 + 511 * 160, seed=k)
        utterances.append(Utterance(id=f"u{k}", path=str(path), speaker=f"spk{k % 2}", label="angry"))
    store = tmp_path / "s.zarr"
    extractors = [build_extractor("spectrogram")]
    assert extract_corpus(utterances, store, extractors=extractors, progress=False).complete
    s = open_store(store)
    offsets = list(s._per_row("spectrogram")["offset"])
    assert sorted(offsets) == [0, 512, 1024] and s._array("spectrogram", "data").chunks[0] == 512
    (file,) = _shard_files(store, "spectrogram")
    # The shard's index (at its end: offset and size of each inner chunk, then a CRC32C): the middle chunk.
    n_chunks = s._array("spectrogram", "data").shards[0] // 512
    index = np.frombuffer(file.read_bytes()[-(16 * n_chunks + 4):-4], "<u8").reshape(-1, 2)
    _flip(file, int(index[1, 0]))  # its zstd frame header: the chunk cannot be decompressed
    done = subprocess.run([str(W2V2SER), "store", "verify", str(store), "--repair"], capture_output=True, text=True)
    assert done.returncode == 1 and "queued 1 utterance x feature pair(s)" in done.stdout, done
    assert extract_corpus(utterances, store, extractors=extractors, progress=False).extracted == 1
    repaired = open_store(store)
    assert repaired.verify().ok
    # read_batch (training's reads) spans the same gap: each utterance read back as read_utterance gives it.
    for got, uid in zip(repaired.read_batch(["u0", "u1", "u2"], "spectrogram"), ["u0", "u1", "u2"]):
        np.testing.assert_array_equal(got, repaired.read_utterance(uid, "spectrogram"))
    out = export_hdf5(store, tmp_path / "s.h5")
    import h5py

    with h5py.File(out, "r") as h5:
        data, offset, length = (h5[f"features/spectrogram/{k}"][()] for k in ("data", "offset", "length"))
    for row, uid in enumerate(["u0", "u1", "u2"]):
        np.testing.assert_array_equal(data[offset[row]:offset[row] + length[row]],
                                      repaired.read_utterance(uid, "spectrogram"))


def test_export_refuses_a_table_with_a_deleted_chunk(store, tmp_path):
    """store export read the utterance and failure tables past the reader's checks."""
    from w2v2ser.store import export_hdf5

    (chunk,) = _chunk_files(store, "utterances/label")
    chunk.unlink()
    with pytest.raises(StoreError, match="utterances/label lacks chunk files"):
        export_hdf5(store, tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("array", ["utterances/label", "features/spectrogram/offset"])
def test_verify_advises_the_rerun_that_restores_a_table_with_a_deleted_chunk(store, pristine, array):
    """verify said to run `store verify --repair` first, and --repair then said it could queue nothing:
    only the rerun of the same extraction writes a table (or a per-row index array) again."""
    _chunk_files(store, array)[0].unlink()
    for options in ((), ("--repair",)):
        done = _verify_cli(store, *options)
        assert done.returncode == 1 and f"array {array} lacks chunk files" in done.stdout, done
        assert "--repair` to list" not in done.stdout and "Rerun the same extraction on this store" in done.stdout
    summary = extract_corpus(pristine[1], store, extractors=[build_extractor("spectrogram"), LayeredExtractor()],
                             progress=False)
    assert summary.complete and summary.extracted == 0 and _verify_cli(store).returncode == 0


def test_rerunning_the_extraction_rewrites_a_table_with_a_deleted_chunk(store, pristine):
    """Found in review: readers refuse a store whose label column lost its chunk and say to rerun
    the extraction, but the rerun itself stopped on that check before it could rewrite the table."""
    (chunk,) = _chunk_files(store, "utterances/label")
    chunk.unlink()
    with pytest.raises(StoreError, match="utterances/label lacks chunk files"):
        open_store(store).list_utterances()
    summary = extract_corpus(pristine[1], store, extractors=[build_extractor("spectrogram"), LayeredExtractor()],
                             progress=False)
    assert summary.complete and summary.extracted == 0
    assert [(r.id, r.label) for r in open_store(store).list_utterances()] == \
        [(r.id, r.label) for r in open_store(pristine[0]).list_utterances()]
    assert open_store(store).verify().ok


def test_parquet_tables_carry_no_statistics_and_verify_catches_lying_ones(store, tmp_path):
    """Found by fault injection: one bit flipped in utterances.parquet's footer statistics (which no
    checksum covers) passed verify, and a filtered read (pyarrow, duckdb, polars prune row groups
    on min/max) returned no rows instead of the matching ones. New tables carry no statistics;
    verify checks those of older stores against the rows."""
    import pyarrow.parquet as pq

    path = store / "utterances.parquet"
    table = pq.read_table(path)
    meta = pq.ParquetFile(path).metadata
    assert all(meta.row_group(0).column(j).statistics is None for j in range(meta.num_columns))
    labels = table.column("label").to_pylist()
    # An older store's table, with statistics, and one bit of the label column's max flipped.
    pq.write_table(table, path, write_page_checksum=True, write_statistics=True)
    assert _verify_cli(store).returncode == 0
    raw = path.read_bytes()
    footer = len(raw) - 8 - int.from_bytes(raw[-8:-4], "little")
    biggest = max(labels).encode()
    damaged = bytearray(raw)
    at = footer
    while (at := raw.find(biggest, at)) >= 0:  # the label column's max (and its min, when they are equal)
        damaged[at] ^= 0x20  # 'a' -> 'A': sorts before every value the row group holds
        at += 1
    path.write_bytes(bytes(damaged))
    assert pq.read_table(path).equals(table)  # every page passes its checksum
    assert pq.read_table(path, filters=[("label", "==", max(labels))]).num_rows == 0  # rows lost to pruning
    done = _verify_cli(store)
    assert done.returncode == 1 and "utterances.parquet: the footer's min/max of column 'label'" in done.stdout, done


def test_an_array_that_cannot_be_reached_is_not_called_damaged(monkeypatch):
    """Review: open_array turned every error into "damaged: restore zarr.json", a network or
    permission error of an object store included, hiding the unreachable-store message."""
    from w2v2ser.store._layout import open_array

    class Unreachable:
        store_path = None

        def __getitem__(self, key):
            raise ConnectionError("endpoint down")

    with pytest.raises(ConnectionError, match="endpoint down"):
        open_array(Unreachable(), "features/x/data", where=None)


def test_compose_statistics_takes_an_iterator_of_utterances(store):
    s = open_store(store)
    ids = [u.id for u in s.list_utterances()[:3]]
    assert s.compose_statistics("spectrogram", utterances=iter(ids)) == s.compose_statistics("spectrogram",
                                                                                            utterances=ids)


@pytest.mark.parametrize("damage", ["delete", "cut"])
def test_verify_names_journals_that_no_longer_hold_the_commits_of_the_index(store, pristine, damage):
    """The journals are what the next extraction rebuilds the index from: a store copied without its
    _journal folder (a Zarr copy tool copies only arrays) or with a truncated journal reads fine,
    but its next extraction silently extracts those utterances again, so verify must not call it
    intact."""
    journals = sorted((store / "_journal").glob("*.jsonl"))
    if damage == "delete":
        shutil.rmtree(store / "_journal")
    else:  # cut at a line boundary: the last commit records are gone, no torn line is left
        lines = journals[-1].read_bytes().splitlines(keepends=True)
        journals[-1].write_bytes(b"".join(lines[:len(lines) // 2]))
    report = open_store(store).verify()
    assert not report.ok and "_journal" in str(report) and "extracts them again" in str(report), report
    done = _verify_cli(store)
    assert done.returncode == 1 and "_journal" in done.stdout + done.stderr


@pytest.mark.parametrize("damage", ["cut", "empty"])
def test_a_damaged_root_zarr_json_is_named_as_damage_not_as_a_wrong_path(store, damage):
    """A cut root zarr.json (a full disk while it was rewritten, a partial copy) was reported as
    "not a w2v2ser store ... Check the path", which sends the user looking for another store."""
    meta = store / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:100] if damage == "cut" else b"")
    with pytest.raises(StoreError) as raised:
        open_store(store)
    message = str(raised.value)
    assert "damaged" in message and "zarr.json" in message and "Check the path" not in message, message
    assert "backup" in message, message
    done = _verify_cli(store)
    assert done.returncode != 0 and "damaged" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("damaged", ["zarr.json", "features/spectrogram/data/zarr.json", "utterances/id/zarr.json",
                                     "features/spectrogram/offset/zarr.json", "utterances/id/c/0"])
def test_verify_exits_1_for_damage_wherever_it_is(store, damaged):
    """README: `store verify` exits 0 only if intact and 1 for damage. A cut data/zarr.json (or root
    zarr.json, a table's zarr.json or lost chunk file) is found as the store opens and exited 2, as
    bad input, while the same cut in offset/zarr.json exited 1: a script read one as "wrong command"."""
    file = store / damaged
    if file.name == "zarr.json":
        file.write_bytes(file.read_bytes()[:20])
    else:
        file.unlink()
    done = _verify_cli(store)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "damaged" in done.stdout + done.stderr and "Traceback" not in done.stderr
    with pytest.raises(StoreError):  # a command that reads the store is refused: its input is bad (exit 2)
        open_store(store).read_utterance("u0", "spectrogram")


@pytest.mark.parametrize("damaged", ["zarr.json", "utterances/id/c/0"])
def test_verify_json_prints_its_object_for_damage_found_as_the_store_opens(store, damaged):
    """README: `store verify --json` prints one object and exits as `store verify` does. Damage found
    as the store opens exited 1 with nothing on stdout, so a script parsing the report on exit 1
    (damage found) got no JSON at all."""
    import json

    file = store / damaged
    if file.name == "zarr.json":
        file.write_bytes(file.read_bytes()[:20])
    else:
        file.unlink()
    done = _verify_cli(store, "--json")
    assert done.returncode == 1, (done.returncode, done.stderr)
    report = json.loads(done.stdout)
    assert report["intact"] is False and report["store"] == str(store), report
    assert set(report) == {"store", "intact", "unfinished", "checked", "problems", "queued_for_reextraction"}
    assert len(report["problems"]) == 1 and "damaged" in report["problems"][0]["reason"], report


@pytest.mark.parametrize("options", [(), ("--repair",)])
def test_verify_stopped_by_a_lost_table_chunk_does_not_advise_itself(store, options):
    """A lost table chunk (utterances/id) stops `store verify` and `--repair` as they open the store;
    both advised `store verify --repair`, which fails the same way: the advice went round in a
    circle. Verify now says to restore the file from a copy or extract into a new store."""
    (store / "utterances/id/c/0").unlink()
    done = _verify_cli(store, *options)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "utterances/id" in done.stderr and "--repair` to list" not in done.stderr, done.stderr
    assert "backup" in done.stderr and "new store" in done.stderr, done.stderr
    report = json.loads(_verify_cli(store, "--json", *options).stdout)
    assert "--repair` to list" not in report["problems"][0]["reason"], report


def test_a_damaged_journal_line_is_named_with_the_command_that_removes_it(pristine, tmp_path):
    """A journal line that fails its CRC stops every extraction and verify; the message said "Delete
    that line", leaving the user to find an editor for a JSON-lines file on a cluster (and to quote
    a store path with spaces). It now gives the command; after it, the rerun extracts that utterance
    again and the store is intact."""
    import re

    store = tmp_path / "shared stores" / "s.zarr"
    shutil.copytree(pristine[0], store)
    journal = sorted((store / "_journal").glob("*.jsonl"))[0]
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"length":', b'"length":1', 1)
    journal.write_bytes(b"".join(lines))
    done = _verify_cli(store)
    assert done.returncode == 1 and "line 4 is malformed" in done.stdout, done.stdout
    command = re.search(r"`(sed -i [^`]+)`", done.stdout)
    assert command, done.stdout
    subprocess.run(command.group(1), shell=True, check=True)
    summary = extract_corpus(pristine[1], store, extractors=[build_extractor("spectrogram"), LayeredExtractor()],
                             progress=False)
    assert summary.complete and summary.extracted == 1, summary
    repaired = open_store(store)
    assert repaired.verify().ok
    for feature in repaired.features:
        for u in pristine[1]:
            np.testing.assert_array_equal(repaired.read_utterance(u.id, feature),
                                          open_store(pristine[0]).read_utterance(u.id, feature))


def test_a_resumed_extraction_extracts_again_what_lost_its_data_shard(pristine, tmp_path):
    """Found by a disk trial: a store copied with `cp -r` while it was written (the journal line
    copied, its shard file not) or a deleted shard of an unfinished store resumed to a store called
    complete whose reads of those utterances raised; `verify --repair` of the unfinished store could
    not see them (its index predates those commits)."""
    store = tmp_path / "s.zarr"
    shutil.copytree(pristine[0], store)
    victim = _shard_files(store, "layered")[-1]
    owners = _owners(store, "layered", victim)
    victim.unlink()
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["w2v2ser"]["complete"] = False  # as if the extraction had stopped before its finalize
    (store / "zarr.json").write_text(json.dumps(meta))
    summary = extract_corpus(pristine[1], store, extractors=[build_extractor("spectrogram"), LayeredExtractor()],
                             progress=False)
    assert summary.complete and summary.extracted == len(owners), summary
    resumed = open_store(store)
    assert resumed.verify().ok
    for uid in owners:
        np.testing.assert_array_equal(resumed.read_utterance(uid, "layered"),
                                      open_store(pristine[0]).read_utterance(uid, "layered"))


def _suggested_commands(message: str) -> list[list[str]]:
    """The commands in backticks that a message tells the user to run, split as a shell would."""
    import re
    import shlex

    return [shlex.split(span) for span in re.findall(r"`([^`]*)`", message) if span.startswith("w2v2ser ")]


def test_a_store_path_with_a_space_or_quote_is_quoted_in_the_commands_messages_suggest(pristine, tmp_path):
    """Messages put the store path unquoted into the commands they suggest ("run `w2v2ser store
    verify /a b/s.zarr --repair`"): pasted, the shell split a path with a space in two."""
    store = tmp_path / "my stores" / "it's.zarr"
    shutil.copytree(pristine[0], store)
    _flip(*_frame_bytes(store, "layered", "u1", 1))
    problems = " ".join(reason for _, _, reason in open_store(store).verify().problems)
    assert ["w2v2ser", "store", "verify", str(store), "--repair"] in _suggested_commands(problems), problems
    (store / "utterances" / "id" / "c" / "0").unlink()
    with pytest.raises(StoreError) as damaged:
        open_store(store)
    assert ["w2v2ser", "store", "verify", str(store), "--repair"] in _suggested_commands(str(damaged.value))
    shutil.rmtree(store)
    shutil.copytree(pristine[0], store)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["w2v2ser"]["complete"] = False
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError) as unfinished:
        open_store(store)
    assert ["w2v2ser", "store", "info", str(store)] in _suggested_commands(str(unfinished.value)), unfinished.value
