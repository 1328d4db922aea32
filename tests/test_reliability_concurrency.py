"""Two extraction processes on one store: the second stops at once, naming the lock; the store stays intact."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures_audio import write_audio
from w2v2ser.extract import build_extractor, extract_corpus
from w2v2ser.store import StoreLockedError, open_store

W2V2SER = Path(sys.executable).parent / "w2v2ser"

# A real extraction process whose spectrogram extractor waits for a "release" file, so the test
# controls exactly how long it holds the store lock.
_HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from w2v2ser.extract import SpectrogramExtractor, extract_corpus, read_csv_manifest

    class Waiting(SpectrogramExtractor):
        def extract(self, signals):
            open(sys.argv[3] + ".waiting", "w").close()
            while not os.path.exists(sys.argv[3]):
                time.sleep(0.02)
            return super().extract(signals)

    manifest = read_csv_manifest(sys.argv[1])
    summary = extract_corpus(manifest.utterances, sys.argv[2], extractors=[Waiting()], progress=False)
    sys.exit(0 if summary.complete else 3)
    """
)


@pytest.fixture()
def manifest(tmp_path) -> Path:
    rows = ["id,path,label,speaker"]
    for k in range(6):
        write_audio(tmp_path / "audio" / f"u{k}.wav", duration=0.5 + 0.1 * k, seed=k)
        rows.append(f"u{k},audio/u{k}.wav,angry,spk{k % 2}")
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _wait_for_lock(store: Path, pid: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lock = store / ".lock"
        if lock.exists() and f"pid {pid} " in lock.read_text(errors="replace"):
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never took {store / '.lock'}")


def test_second_extraction_process_stops_at_once_naming_the_lock(tmp_path, manifest):
    store, release = tmp_path / "s.zarr", tmp_path / "release"
    first = subprocess.Popen([sys.executable, "-c", _HOLDER, str(manifest), str(store), str(release)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock(store, first.pid)
        deadline = time.monotonic() + 120
        while not Path(f"{release}.waiting").exists():  # planned, now inside extraction
            assert time.monotonic() < deadline and first.poll() is None, first.stderr.read()
            time.sleep(0.02)
        before = sorted(p.relative_to(store) for p in store.rglob("*"))
        # The second process: the real command line, same store, another feature even.
        started = time.perf_counter()
        second = subprocess.run([str(W2V2SER), "extract", "csv", str(manifest), "--store", str(store),
                                 "--features", "spectrogram", "--no-progress"],
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        message = second.stderr
        assert "is locked" in message and str(store / ".lock") in message
        assert f"pid {first.pid}" in message and "another extraction is running" in message
        assert first.poll() is None  # the first one is still running, untouched
        # Nothing was written by the loser (it stopped before opening the store for writing).
        assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
        # In-process too: the library raises StoreLockedError before touching anything.
        with pytest.raises(StoreLockedError, match=r"\.lock"):
            extract_corpus([], store, extractors=[build_extractor("spectrogram")], progress=False)
        print(f"second process refused after {time.perf_counter() - started:.1f} s (mostly imports)")
    finally:
        release.touch()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    s = open_store(store)
    assert s.complete and len(s.list_utterances()) == 6 and s.verify().ok
    # The lock is free again: a rerun finds everything done.
    summary = extract_corpus(open_store(store).list_utterances(), store,
                             extractors=[build_extractor("spectrogram")], progress=False)
    assert summary.extracted == 0 and summary.complete


def test_two_processes_racing_for_a_fresh_store_never_corrupt_it(tmp_path, manifest):
    """Both start together on a store that does not exist yet: one wins, the other is refused."""
    store = tmp_path / "race.zarr"
    command = [str(W2V2SER), "extract", "csv", str(manifest), "--store", str(store),
               "--features", "spectrogram", "--no-progress"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    # Usually one is refused (2); if the first finished before the second started, both succeed.
    assert codes in ([0, 2], [0, 0]), results
    for code, err in results:
        if code == 2:
            assert "is locked" in err and ".lock" in err
    s = open_store(store)
    assert s.complete and s.verify().ok
    assert len(s.list_utterances()) == 6
    for record in s.list_utterances():
        assert np.isfinite(s.read_utterance(record.id, "spectrogram")).all()
    assert os.path.exists(store / ".lock")


def _spectrogram_store(tmp_path: Path, manifest: Path, rows: int) -> tuple[Path, list]:
    from w2v2ser.extract import read_csv_manifest

    utterances = read_csv_manifest(manifest).utterances
    store = tmp_path / "open.zarr"
    extract_corpus(utterances[:rows], store, extractors=[build_extractor("spectrogram")], progress=False)
    return store, utterances


def test_open_reader_after_a_rerun_added_utterances_says_the_store_changed(tmp_path, manifest):
    """A reader keeps the utterance list of open time; the speaker tables a rerun rewrote cover
    utterances it cannot list: it raises StoreChangedError, not statistics of other utterances."""
    from w2v2ser.store import StoreChangedError

    store, utterances = _spectrogram_store(tmp_path, manifest, rows=4)
    old = open_store(store)
    before = old.compose_statistics("spectrogram", speakers=["spk0"])
    extract_corpus(utterances, store, extractors=[build_extractor("spectrogram")], progress=False)
    assert len(old.list_utterances()) == 4  # its snapshot of the ids
    with pytest.raises(StoreChangedError, match="changed by an extraction since it was opened.*Open it again"):
        old.compose_statistics("spectrogram", speakers=["spk0"])
    fresh = open_store(store)
    assert fresh.compose_statistics("spectrogram", speakers=["spk0"]).count > before.count
    # A process repeating the old reader's view (a `w2v2ser run` task) is told, by the public check.
    fresh.require_revision(fresh.revision)
    with pytest.raises(StoreChangedError, match="changed by an extraction since it was opened.*Open it again"):
        fresh.require_revision(old.revision)
    # A rerun that changes nothing does not count as a change.
    extract_corpus(utterances, store, extractors=[build_extractor("spectrogram")], progress=False)
    assert fresh.compose_statistics("spectrogram", speakers=["spk0"]).count > before.count


def test_reader_whose_frame_index_loads_after_a_rerun_added_utterances_says_the_store_changed(tmp_path, manifest):
    """A reader loads a feature's frame index (offset, length, crc32 per row) at its first use: one
    opened before a rerun extended the store mixed its old utterance list with the new index (describe
    gave 4 utterances, 6 of them with frames) instead of saying the store changed."""
    from w2v2ser.store import StoreChangedError

    store, utterances = _spectrogram_store(tmp_path, manifest, rows=4)
    old = open_store(store)  # the utterance list is read; the frame index is not yet
    first = old.list_utterances()[0].id
    extract_corpus(utterances, store, extractors=[build_extractor("spectrogram")], progress=False)
    with pytest.raises(StoreChangedError, match="changed by an extraction since it was opened.*Open it again"):
        old.describe()
    with pytest.raises(StoreChangedError, match="Open it again"):
        old.read_utterance(first, "spectrogram")
    fresh = open_store(store)
    assert fresh.describe()["features"]["spectrogram"]["utterances"] == len(fresh.list_utterances()) == 6


def test_open_reader_asked_for_an_utterance_a_rerun_added_says_the_store_changed(tmp_path, manifest):
    """A notebook kept a reader open while another process extracted more rows: reading a new id
    said "utterance ... is not in store (4 utterances)", though the store holds it."""
    from w2v2ser.store import StoreChangedError, StoreError

    store, utterances = _spectrogram_store(tmp_path, manifest, rows=4)
    old = open_store(store)
    extract_corpus(utterances, store, extractors=[build_extractor("spectrogram")], progress=False)
    added = next(u.id for u in utterances if u.id not in {r.id for r in old.list_utterances()})
    with pytest.raises(StoreChangedError, match="changed by an extraction since it was opened.*Open it again"):
        old.read_utterance(added, "spectrogram")
    assert open_store(store).read_utterance(added, "spectrogram").shape[0] > 0
    with pytest.raises(StoreError, match="'nothing' is not in store") as typo:  # as after reopening it
        old.read_utterance("nothing", "spectrogram")
    assert not isinstance(typo.value, StoreChangedError)
    with pytest.raises(StoreError, match="'nothing' is not in store"):
        open_store(store).read_utterance("nothing", "spectrogram")


def test_open_reader_after_repair_and_reextraction_is_not_told_to_repair(tmp_path, manifest):
    """verify --repair + the rerun re-extracted an utterance the open reader had indexed: its crc32
    no longer matches the reader's old index. That is a changed store, not a damaged one."""
    from w2v2ser.store import StoreChangedError, repair_store

    store, utterances = _spectrogram_store(tmp_path, manifest, rows=6)
    old = open_store(store)
    ids = [r.id for r in old.list_utterances()]
    want = {uid: old.read_utterance(uid, "spectrogram") for uid in ids}  # index loaded
    chunks = sorted(p for p in (store / "features/spectrogram/data").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunks[0].unlink()
    _, pairs = repair_store(store)
    assert pairs
    extract_corpus(utterances, store, extractors=[build_extractor("spectrogram")], progress=False)
    assert open_store(store).verify().ok
    raised = 0
    for uid in ids:
        try:
            assert np.array_equal(old.read_utterance(uid, "spectrogram"), want[uid])
        except StoreChangedError as error:
            assert "--repair" not in str(error) and "is damaged" not in str(error)
            raised += 1
    assert raised  # the re-extracted utterances moved


def test_verify_while_an_extraction_runs_is_refused_not_reported_as_damage(tmp_path, manifest, capsys):
    """Found by a concurrency audit: a plain `store verify` that opened the store just before an
    extraction rewrote its table in place reported 'column path differs ... rerun the extraction',
    exit 1, on an intact store."""
    from w2v2ser._cli import main
    from w2v2ser.store import StoreChangedError, StoreWriter, lock_store

    store, utterances = _spectrogram_store(tmp_path, manifest, rows=4)
    opened = open_store(store)  # the verify that started just before the extraction
    with lock_store(store):
        assert main(["store", "verify", str(store), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "is being extracted now" in err and f"pid {os.getpid()} " in err and "problem" not in err, err
        # The extraction's plan (a label fixed in place, new rows) lands while `opened` verifies.
        changed = [dataclasses.replace(u, label="sad") if k == 0 else u for k, u in enumerate(utterances)]
        known = {r.id: r.num_samples for r in opened.list_utterances()}
        samples = [known.get(u.id, 8000) for u in changed]
        StoreWriter(store).plan(changed, num_samples=samples, features=[opened.features["spectrogram"]],
                                capacities={"spectrogram": [n // 160 + 2 for n in samples]})
        with pytest.raises(StoreChangedError, match="changed by an extraction since it was opened.*is running"):
            opened.verify()
    assert main(["store", "verify", str(store), "--no-progress"]) == 1  # incomplete now, said as such
    assert "the store is incomplete" in capsys.readouterr().out


def test_an_extraction_starting_while_a_reader_glimpses_the_lock_is_not_refused(tmp_path):
    """Readers (train, verify, an open store) take the extraction lock shared for an instant to see
    whether an extraction runs; an extraction starting in that instant was refused as 'locked'."""
    import fcntl
    import threading

    from w2v2ser.store import lock_store

    store = tmp_path / "s.zarr"
    with lock_store(store):
        pass  # creates nothing but the folder and its lock file
    store.mkdir(exist_ok=True)
    (store / ".lock").touch()
    fd = os.open(store / ".lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a reader's glimpse, held a little longer than usual
    threading.Timer(0.3, lambda: (fcntl.flock(fd, fcntl.LOCK_UN), os.close(fd))).start()
    with lock_store(store):
        assert (store / ".lock").read_text().startswith(f"pid {os.getpid()} ")


def test_a_store_moved_or_deleted_while_read_is_not_called_damaged(tmp_path, manifest):
    """Found by a sharing audit: `mv STORE NEW` while `train` read it ended with "store STORE is
    damaged ... do not match their crc32. Run `w2v2ser store verify STORE --repair`" (exit 2), a
    path that no longer held anything; the store at NEW was intact."""
    from w2v2ser.store import StoreChangedError

    store, _ = _spectrogram_store(tmp_path, manifest, rows=4)
    reader = open_store(store)
    ids = [r.id for r in reader.list_utterances()]
    reader.read_utterance(ids[0], "spectrogram")  # its frame index is loaded
    moved = store.rename(tmp_path / "moved.zarr")
    for read in (lambda: reader.read_utterance(ids[1], "spectrogram"),
                 lambda: reader.read_batch(ids[1:], "spectrogram")):
        with pytest.raises(StoreChangedError, match="is no longer there: it was moved, renamed or deleted") as gone:
            read()
        assert "damaged" not in str(gone.value).replace("known to be damaged", "")
        assert gone.value.exit_code == 1  # a failed run: the input was fine
    assert open_store(moved).verify().ok
    # `train` keeps its finished runs and says how to go on: not "once that extraction has finished".
    from w2v2ser.train._experiment import store_lost_note

    assert store_lost_note(tmp_path, 2, "train", gone.value).endswith(
        "rerun the same `w2v2ser train` command with the store's new path to train the rest.")


def test_a_store_gone_before_an_array_was_opened_and_damage_after_chdir_are_told_apart(
        tmp_path, manifest, monkeypatch):
    """Second review M3: arrays are opened lazily, so a read of a feature or table not yet opened
    after the move said "damaged ... copy zarr.json back from a backup"; M4: a store opened by a
    relative path, then chdir, called real damage "no longer there"."""
    from w2v2ser.store import StoreError, StoreGoneError

    store, _ = _spectrogram_store(tmp_path, manifest, rows=4)
    reader = open_store(store)
    ids = [r.id for r in reader.list_utterances()]
    store.rename(tmp_path / "moved.zarr")
    for read in (lambda: reader.read_utterance(ids[0], "spectrogram"), lambda: reader.read_batch(ids, "spectrogram"),
                 lambda: reader.compose_statistics("spectrogram")):
        with pytest.raises(StoreGoneError, match="is no longer there"):
            read()
    (tmp_path / "moved.zarr").rename(store)
    monkeypatch.chdir(tmp_path)
    relative = open_store(store.name)
    (store / "features" / "spectrogram" / "offset" / "zarr.json").unlink()  # real damage
    monkeypatch.chdir(tmp_path.parent)
    with pytest.raises(StoreError, match="is damaged") as damaged:
        relative.read_utterance(ids[0], "spectrogram")
    assert not isinstance(damaged.value, StoreGoneError)


@pytest.mark.parametrize("when", ["between units", "inside a unit", "folder left"])
def test_a_store_moved_while_extracted_is_not_called_damaged_and_resumes_at_its_new_path(tmp_path, when):
    """Found by a disk trial: `mv STORE NEW` while `extract` wrote it stopped with "store STORE is
    damaged ... Copy that file back from a backup ... otherwise extract into a new store" (or a raw
    tensorstore NOT_FOUND), advice that throws the committed work away; the store at NEW was intact."""
    from test_store import SPEC2D, W2V, build_store

    from w2v2ser.store import StoreGoneError, StoreWriter

    built = build_store(tmp_path / "a.zarr", lengths=[30, 40, 50, 60], finalize=False, write=False)
    writer = StoreWriter(built.path)
    specs = (W2V, SPEC2D)
    first, second = writer.plan_units([[0, 1], [2, 3]], [s.name for s in specs])

    def write(unit, move: bool) -> None:
        with writer.open_unit(unit) as unit_writer:
            if move:
                built.path.rename(tmp_path / "b.zarr")
            for row in unit.rows:
                unit_writer.add(row, {s.name: built.frames[s.name][row] for s in specs}, audio_sha256=f"sha{row}",
                                duration=1.0)

    write(first, False)
    if when != "inside a unit":
        built.path.rename(tmp_path / "b.zarr")
    if when == "folder left":  # (as writes in flight can make)
        built.path.mkdir()
    with pytest.raises(StoreGoneError, match="is no longer there") as gone:
        write(second, when == "inside a unit")
    assert "damaged" not in str(gone.value).replace("known to be damaged", "") and "new path" in str(gone.value)
    # "A folder ... left there ... delete it" only when writes made one (it was said of nothing too).
    assert ("left there" in str(gone.value)) == built.path.exists(), (str(gone.value), built.path.exists())
    writer.close()
    resumed = StoreWriter(tmp_path / "b.zarr")
    assert resumed.pending([s.name for s in specs]) == [2, 3]  # the first unit is kept
    resumed.close()


def test_a_counted_scope_puts_the_setting_back_only_when_the_last_thread_leaves():
    """CountedScope (hub_probe_scope, _op_determinism_kept): a process-wide setting saved when the first
    scope opens, in any thread, and put back only when the last one closes, never under a block still inside."""
    import threading

    from w2v2ser._process import CountedScope

    setting = {"value": "before", "saves": 0, "restores": 0}

    def save() -> str:
        setting["saves"] += 1
        return setting["value"]

    def restore(saved: str) -> None:
        setting["restores"] += 1
        setting["value"] = saved

    scope = CountedScope(save, restore)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first() -> None:
        with scope():
            setting["value"] = "changed"
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with scope():
            with scope():  # nested in one thread
                second_in.set()
                first_out.wait(10)
                seen["inside"] = setting["value"], scope.depth  # the first thread has left: still changed
        seen["after"] = setting["value"]

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert seen == {"inside": ("changed", 2), "after": "before"}
    assert (setting["saves"], setting["restores"], scope.depth) == (1, 1, 0)

    @scope()  # a decorator too; an error inside still puts the setting back
    def failing() -> None:
        setting["value"] = "changed again"
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        failing()
    assert (setting["value"], setting["saves"], setting["restores"], scope.depth) == ("before", 2, 2, 0)

    def busy() -> None:  # many threads at once: the count never goes wrong
        for _ in range(200):
            with scope():
                setting["value"] = "busy"

    many = [threading.Thread(target=busy) for _ in range(8)]
    for thread in many:
        thread.start()
    for thread in many:
        thread.join(60)
    assert setting["value"] == "before" and scope.depth == 0 and setting["saves"] == setting["restores"]
