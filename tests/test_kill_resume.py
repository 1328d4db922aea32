"""SIGKILL `w2v2ser run` at several points, rerun, and compare with an uninterrupted run.

Every unit of work is committed atomically and skipped once complete: utterances (journal
lines in the store), fold x seed runs (renamed run directories), the report. After a kill and a
rerun the stores must equal an uninterrupted run's utterance by utterance, no utterance may be
committed twice, and runs finished before a kill must not be trained again.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from test_run_pipeline import (
    W2V2SER, cli_env, journal_commits, make_tiny_corpus, make_tiny_model, needs_ravdess, run_cli, run_dirs,
    write_tiny_pipeline,
)

pytestmark = needs_ravdess


def _kill_when(pipeline: Path, args: list[str], condition: Callable[[], bool], *, timeout: float = 300) -> bool:
    """Start `w2v2ser run`, SIGKILL the driver process as soon as ``condition()`` holds.

    Only the driver is killed (not its process group): its extraction child and Dask workers
    must end by themselves. Returns False when the run finished before the condition held.
    """
    process = subprocess.Popen([str(W2V2SER), "run", str(pipeline), *args], env=cli_env(), cwd=pipeline.parent,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            if condition():
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
                return True
            time.sleep(0.05)
        raise AssertionError(f"condition not reached within {timeout} s")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _commit_count(out: Path) -> int:
    return sum(sum(journal_commits(store).values()) for store in out.glob("stores/*/*.zarr"))


def _assert_same_stores(ref: Path, out: Path) -> None:
    from w2v2ser.store import open_store

    ref_stores = sorted(p.relative_to(ref) for p in ref.glob("stores/*/*.zarr"))
    assert ref_stores and ref_stores == sorted(p.relative_to(out) for p in out.glob("stores/*/*.zarr"))
    for relative in ref_stores:
        expected, actual = open_store(ref / relative), open_store(out / relative)
        assert actual.complete and actual.verify().ok
        ids = sorted(u.id for u in expected.list_utterances())
        assert ids == sorted(u.id for u in actual.list_utterances())
        for feature in expected.features:
            for utterance_id in ids:
                np.testing.assert_array_equal(actual.read_utterance(utterance_id, feature),
                                              expected.read_utterance(utterance_id, feature))
        commits = journal_commits(out / relative)
        assert set(commits.values()) == {1}, f"utterances committed twice in {relative}: " + str(
            [k for k, v in commits.items() if v > 1][:5])


def _setup(tmp_path: Path, cluster: str) -> tuple[Path, Path, Path]:
    make_tiny_corpus(tmp_path / "data")
    make_tiny_model(tmp_path / "model")
    pipeline = write_tiny_pipeline(tmp_path, model=tmp_path / "model", cluster=cluster)
    return pipeline, tmp_path / "ref", tmp_path / "out"


@pytest.mark.slow  # about a minute: four CLI runs; the default suite kills extraction in test_reliability_kill.py
def test_extraction_resumes_after_sigkill(tmp_path: Path) -> None:
    """The pipeline driver's in-process extraction killed twice (after 1 and after ~half the commits)."""
    pipeline, ref, out = _setup(tmp_path, "none")
    done = run_cli(pipeline, "--stage", "extract", "--set", "output=ref")
    assert done.returncode == 0, done.stderr[-3000:]
    total = _commit_count(ref)
    assert total == 2 * 24 * 1  # two stores x 24 utterances x one feature each

    for threshold in (1, total // 2):
        killed = _kill_when(pipeline, ["--stage", "extract"], lambda: _commit_count(out) >= threshold)
        assert killed, "extraction finished before the kill point; the kill test needs a slower point"
        assert _commit_count(out) < total
    before = {store: journal_commits(store) for store in out.glob("stores/*/*.zarr")}
    final = run_cli(pipeline, "--stage", "extract")
    assert final.returncode == 0, final.stderr[-3000:]
    _assert_same_stores(ref, out)
    for store, commits in before.items():  # what was committed before the kills was kept, not redone
        after = journal_commits(store)
        assert all(after[key] == 1 for key in commits)


@pytest.mark.slow  # several minutes: TensorFlow and a Dask cluster start at every rerun
def test_pipeline_resumes_after_sigkill_on_dask(tmp_path: Path) -> None:
    """Full pipeline on a local Dask cluster, killed during extraction and during training."""
    pipeline, ref, out = _setup(tmp_path, "local")
    done = run_cli(pipeline, "--set", "output=ref")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _kill_when(pipeline, [], lambda: _commit_count(out) >= 6)
    assert _kill_when(pipeline, [], lambda: len(run_dirs(out)) >= 1)
    finished = run_dirs(out)
    assert 1 <= len(finished) < 4
    final = run_cli(pipeline)
    assert final.returncode == 0, final.stderr[-3000:]
    _assert_same_stores(ref, out)
    after = run_dirs(out)
    assert set(after) == set(run_dirs(ref)) and all(after[name] == mtime for name, mtime in finished.items())
    for results in ref.glob("experiments/**/results.json"):
        expected = json.loads(results.read_text())
        actual = json.loads((out / results.relative_to(ref)).read_text())
        assert {k: v for k, v in actual["config"].items() if k != "stores"} == {
            k: v for k, v in expected["config"].items() if k != "stores"}
        np.testing.assert_allclose(actual["uar_per_run"], expected["uar_per_run"], atol=1e-6)
    assert (out / "reports" / "tiny" / "report.md").exists()
