"""A real single-node SLURM: the job script's extract -> (afterok) train + evaluate chain, and
`cluster: slurm` (dask-jobqueue workers as SLURM jobs).

Needs root (slurmd runs jobs as root) and slurm-wlm/munge (installed by tests/slurm/start_slurm.sh
when missing). Run with: ``pytest -m "slow and slurm" tests/test_slurm.py -s``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from test_run_pipeline import (
    REPO, W2V2SER, cli_env, make_tiny_corpus, make_tiny_model, needs_ravdess, run_cli, write_tiny_pipeline,
)

pytestmark = [pytest.mark.slow, pytest.mark.slurm, needs_ravdess]

HARNESS = REPO / "tests" / "slurm"
JOB_SCRIPT = REPO / "slurm" / "extract_then_train.sh"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Start slurmctld + slurmd for this module; yields the environment that reaches them."""
    if os.geteuid() != 0:
        pytest.skip("a throwaway SLURM needs root (daemons and jobs run as root)")
    state = tmp_path_factory.mktemp("slurm-state")
    started = subprocess.run(["bash", str(HARNESS / "start_slurm.sh"), str(state)], capture_output=True, text=True,
                             timeout=600)
    if started.returncode != 0:
        pytest.fail(f"start_slurm.sh failed:\n{started.stderr[-3000:]}")
    conf = re.search(r"export SLURM_CONF=(\S+)", started.stdout)
    assert conf, started.stdout
    env = {**cli_env(), "SLURM_CONF": conf.group(1)}
    yield env
    subprocess.run(["bash", str(HARNESS / "stop_slurm.sh"), str(state)], capture_output=True, timeout=120)


def _job_state(job: str, env: dict[str, str]) -> str:
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env)
    match = re.search(r"JobState=(\S+)", shown.stdout)
    return match.group(1) if match else "UNKNOWN"


def _wait_for_jobs(jobs: list[str], env: dict[str, str], *, timeout: float) -> dict[str, str]:
    """Poll squeue until the jobs left the queue (no sacct here); returns their final states."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", ",".join(jobs), "-o", "%i"], capture_output=True, text=True,
                                env=env).stdout.split()
        if not queued:
            return {job: _job_state(job, env) for job in jobs}
        time.sleep(1)
    subprocess.run(["scancel", *jobs], env=env)
    raise AssertionError(f"jobs {jobs} still queued after {timeout} s")


def test_job_script_chains_extraction_and_training(slurm: dict[str, str], tmp_path: Path) -> None:
    make_tiny_corpus(tmp_path / "data")
    make_tiny_model(tmp_path / "model")
    pipeline = write_tiny_pipeline(tmp_path, model=tmp_path / "model")
    cores = str(min(2, os.cpu_count() or 1))
    env = {**slurm, "GPU_PARTITION": "gpu", "CPU_PARTITION": "debug", "GPU_GRES": "", "EXTRACT_CPUS": cores,
           "TRAIN_CPUS": cores, "EXTRACT_MEM": "4G", "TRAIN_MEM": "6G", "EXTRACT_TIME": "00:20:00",
           "TRAIN_TIME": "00:30:00", "LOG_DIR": str(tmp_path / "logs"), "W2V2SER": str(W2V2SER)}
    started = time.monotonic()
    submitted = subprocess.run(["bash", str(JOB_SCRIPT), str(pipeline)], capture_output=True, text=True, env=env,
                               timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    jobs = submitted.stdout.split()
    assert len(jobs) == 2 and all(job.isdigit() for job in jobs), submitted.stdout
    dependency = subprocess.run(["scontrol", "show", "job", jobs[1]], capture_output=True, text=True, env=env).stdout
    assert f"afterok:{jobs[0]}" in dependency

    states = _wait_for_jobs(jobs, env, timeout=1200)
    elapsed = time.monotonic() - started
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((tmp_path / "logs").glob("*.out")))
    assert states == {jobs[0]: "COMPLETED", jobs[1]: "COMPLETED"}, f"{states}\n{logs}"
    report = (tmp_path / "out" / "reports" / "tiny" / "report.md").read_text()
    assert re.search(r"\d+\.\d ± \d+\.\d", report), report[:2000]
    print(f"\nSLURM extract -> train+evaluate chain finished in {elapsed:.0f} s (jobs {jobs})")


def test_slurm_cluster_runs_extraction_shards_as_jobs(slurm: dict[str, str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`cluster: slurm`: the driver runs here, its Dask workers are SLURM jobs of the same node."""
    pytest.importorskip("dask_jobqueue")
    make_tiny_corpus(tmp_path / "data")
    make_tiny_model(tmp_path / "model")
    pipeline = write_tiny_pipeline(tmp_path, model=tmp_path / "model", cluster="slurm", extra={
        "cluster.slurm": {"queue": "debug", "cores": 1, "memory": "3GB", "processes": 1, "jobs": 2,
                          "walltime": "00:20:00", "log_directory": str(tmp_path / "worker-logs")},
    })
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    started = time.monotonic()
    done = run_cli(pipeline, "--stage", "extract", timeout=900)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SLURM Dask cluster: 2 job(s)" in done.stderr
    assert len(list((tmp_path / "out" / "stores" / "ravdess").glob("*.zarr"))) == 2
    journals = [p.name for p in (tmp_path / "out" / "stores" / "ravdess").glob("*.zarr/_journal/*.jsonl")]
    assert any(name.startswith("shard-") for name in journals), journals  # written by the SLURM workers
    print(f"\ncluster: slurm extraction (2 worker jobs) finished in {elapsed:.0f} s")
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


def test_worker_logs_go_to_a_log_directory_with_a_space_and_a_percent(slurm: dict[str, str], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """cluster.slurm.log_directory went into the worker jobs' #SBATCH -o/-e lines as it was: sbatch
    refused a folder with a space ("Invalid directive found in batch script") and read ``%j`` as the
    job id (the logs' folder was not there: the job failed to launch, no worker ever came)."""
    pytest.importorskip("dask_jobqueue")
    from w2v2ser._cluster import open_cluster
    from w2v2ser._config_schema import ClusterConfig

    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    logs = tmp_path / "worker logs 100%j"
    config = ClusterConfig.model_validate({"kind": "slurm", "dashboard_address": None, "slurm": {
        "queue": "debug", "cores": 1, "memory": "2GB", "walltime": "00:10:00", "log_directory": str(logs)}})
    with open_cluster(config, use_gpus=False) as handle:
        handle.client.wait_for_workers(1, timeout=180)
        assert handle.client.submit(sum, [1, 2]).result(timeout=60) == 3
    names = sorted(p.name for p in logs.iterdir())
    assert any(re.fullmatch(r"w2v2ser-worker-\d+\.err", name) for name in names), names
    assert list(tmp_path.iterdir()) == [logs]  # nothing beside it (a folder named after the job id)


def _cancel_own_jobs(slurm: dict[str, str]) -> list[str]:
    """Cancel the queued jobs this test's script or cluster made (by their names, not the other tests'
    jobs); returns their ids."""
    names = "w2v2ser-extract,w2v2ser-train,w2v2ser-worker"
    queued = subprocess.run(["squeue", "-h", "-n", names, "-o", "%i"], capture_output=True, text=True,
                            env=slurm).stdout.split()
    if queued:
        subprocess.run(["scancel", *queued], env=slurm)
    return queued


def test_scancel_of_an_extraction_job_keeps_its_work_and_says_why(slurm: dict[str, str], tmp_path: Path) -> None:
    """scancel (and a job's time limit) sends SIGTERM: the job's log said nothing about why the
    extraction ended. It now has the command line's line; the committed utterances stay and a
    rerun extracts only the rest."""
    from test_run_pipeline import TERMINATED_LINE, journal_commits, wait_for_first_commit, write_csv_extraction

    pipeline = write_csv_extraction(tmp_path)
    log = tmp_path / "job.out"
    job = subprocess.run(["sbatch", "--parsable", "--output", str(log), "--chdir", str(tmp_path), "--wrap",
                          f"{W2V2SER} run {pipeline} --stage extract"], capture_output=True, text=True, env=slurm,
                         check=True).stdout.strip().split(";")[0]
    wait_for_first_commit(tmp_path, lambda: _job_state(job, slurm) in ("PENDING", "RUNNING"))
    subprocess.run(["scancel", job], env=slurm, check=True)
    assert _wait_for_jobs([job], slurm, timeout=120) == {job: "CANCELLED"}
    text = log.read_text()
    assert TERMINATED_LINE in text and "Traceback" not in text, text
    store = next((tmp_path / "out" / "stores" / "mine").glob("classic-*.zarr"))
    kept = journal_commits(store)
    assert 0 < len(kept) < 120, text
    rerun = run_cli(pipeline, "--stage", "extract")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{120 - len(kept)} extracted, {len(kept)} already done" in rerun.stdout + rerun.stderr


def test_job_script_and_slurm_cluster_refuse_what_no_node_holds(slurm: dict[str, str], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """SLURM accepts a job that asks for more cores than any node has, and keeps it pending forever
    (Reason=PartitionConfig): the job script left such an extraction job queued, and `cluster:
    slurm` waited for its workers forever. Both now ask `sbatch --test-only` first and stop with its
    reason."""
    pytest.importorskip("dask_jobqueue")
    too_many = str(4 * (os.cpu_count() or 1))
    make_tiny_corpus(tmp_path / "data")
    make_tiny_model(tmp_path / "model")
    pipeline = write_tiny_pipeline(tmp_path, model=tmp_path / "model", cluster="slurm", extra={
        "cluster.slurm": {"queue": "debug", "cores": int(too_many), "memory": "2GB", "walltime": "00:20:00"}})
    env = {**slurm, "GPU_PARTITION": "gpu", "CPU_PARTITION": "debug", "GPU_GRES": "", "EXTRACT_CPUS": too_many,
           "EXTRACT_MEM": "2G", "LOG_DIR": str(tmp_path / "logs"), "W2V2SER": str(W2V2SER)}
    submitted = subprocess.run(["bash", str(JOB_SCRIPT), str(pipeline)], capture_output=True, text=True, env=env,
                               timeout=60)
    queued = _cancel_own_jobs(slurm)
    assert submitted.returncode == 2, submitted.stderr
    assert "SLURM refuses the extraction job" in submitted.stderr and "nothing was submitted" in submitted.stderr
    assert not queued, queued
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    try:
        done = run_cli(pipeline, "--stage", "extract", timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("w2v2ser run waited for SLURM workers that no node can hold")
    finally:
        _cancel_own_jobs(slurm)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "SLURM refuses the Dask worker job of cluster.slurm: " in done.stderr
    assert "Requested node configuration is not available" in done.stderr and "Traceback" not in done.stderr


def test_a_scancelled_worker_job_of_two_processes_is_replaced_and_the_run_finishes(
        slurm: dict[str, str], tmp_path: Path) -> None:
    """A worker job that ends mid-run (scancel here; its walltime, a node failure or preemption alike)
    was never replaced, so the tasks left waited for ever; with `processes: 2` Dask never even sees
    the job end (its workers are JOB-0 and JOB-1). The watchdog reads squeue and submits a new job."""
    pytest.importorskip("dask_jobqueue")
    make_tiny_corpus(tmp_path / "data")
    make_tiny_model(tmp_path / "model")
    pipeline = write_tiny_pipeline(tmp_path, model=tmp_path / "model", features=("classic/spectrogram",))
    extracted = run_cli(pipeline, "--stage", "extract")
    assert extracted.returncode == 0, extracted.stderr[-3000:]
    pipeline = write_tiny_pipeline(tmp_path, model=tmp_path / "model", features=("classic/spectrogram",),
                                   cluster="slurm", extra={
        "experiments.t.seeds": 6, "experiments.t.recipe_overrides": {"max_epochs": 3},
        "cluster.slurm": {"queue": "debug", "cores": 2, "memory": "6GB", "processes": 2, "jobs": 1,
                          "walltime": "00:20:00", "log_directory": str(tmp_path / "worker-logs"), "job_check": 5}})
    run = subprocess.Popen([str(W2V2SER), "run", str(pipeline), "--stage", "train"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**cli_env(), **slurm}, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "out").rglob("metrics.json")) and time.monotonic() < deadline:
            time.sleep(1)  # a first seed finished on the first job's workers: it is doing work
        cancelled = _cancel_own_jobs(slurm)
        assert cancelled, "no worker job was running"
        stdout, stderr = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
        _cancel_own_jobs(slurm)
    assert run.returncode == 0, stderr[-3000:]
    assert "SLURM worker job(s) ended" in stderr and "submitting new one(s)" in stderr, stderr[-3000:]
    assert len(list((tmp_path / "out").rglob("metrics.json"))) == 6 and "Traceback" not in stderr
