"""Dask clusters for `w2v2ser run`: in-process, a local (CPU + GPU) cluster, or SLURM jobs.

A local cluster on a GPU box holds two kinds of workers behind one scheduler: one worker per
GPU (pinned with ``CUDA_VISIBLE_DEVICES``, resource ``GPU=1``; wav2vec2 shards go there) and
CPU workers for eGeMAPS and spectrogram shards, so both run at the same time. It is built as a
:class:`distributed.SpecCluster` with heterogeneous worker specs because
``dask_cuda.LocalCUDACluster`` cannot host CPU-only workers under the same scheduler; the GPU
pinning is the same (dask_cuda's rotated device list is used when dask_cuda is installed).

Every worker gets ``OMP_NUM_THREADS`` (and MKL/OpenBLAS) equal to its thread count, and training
runs are told the same count for TensorFlow, so parallel tasks never oversubscribe the cores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from w2v2ser._common import ConfigError, die_with_parent, usable_cores
from w2v2ser.store import W2v2serError

from ._config_schema import ClusterConfig
from ._native_logs import native_logs_hidden, quiet_known_warnings, quiet_tensorflow_warnings

__all__ = ["ClusterConfigError", "ClusterError", "ClusterHandle", "count_gpus", "die_with_parent", "open_cluster",
           "usable_cores", "wait_for_a_worker"]

GPU_RESOURCE = "GPU"
# How long `run` waits for a first SLURM worker before it says what the worker jobs are doing, and
# again after each such period: a job pending for hours, or one that started but whose worker never
# reached the scheduler, otherwise looked like a hang.
WORKER_WAIT_NOTE_S = 300.0
# `run` checks for SLURM worker jobs that ended (their walltime, a node failure, preemption, a scancel) and
# submits new ones every cluster.slurm.job_check s: dask-jobqueue submits jobs only when the cluster is
# scaled, so the work of a run outliving its workers' walltime waited for ever. wait_for_a_worker looks
# whether the worker jobs failed at start as often.
# A worker job that ended within FAILED_START_S of running (or never ran) failed to start: a bad
# environment or a crash at import. After MAX_FAILED_STARTS of them per job in a row, no new ones are
# submitted (each would fail too, every cluster.slurm.job_check, on a shared cluster) and the work left fails.
FAILED_START_S = 120.0
MAX_FAILED_STARTS = 3
# squeue's states of a job that is over; a job squeue no longer lists is over too.
_ENDED_STATES = frozenset({"ENDED", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "BOOT_FAIL", "DEADLINE",
                           "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT"})
# squeue's states of a job that is ending but may come back: SLURM requeues a preempted job (PreemptMode=REQUEUE)
# or one whose node failed under the same id, PENDING again. Such a job is over once it has stayed so ENDING_S.
# HELD is w2v2ser's name for a held job (REQUEUE_HOLD, RESV_DEL_HOLD, or PENDING for JobHeldAdmin, JobHeldUser,
# "job requeued in held state" or "launch failed requeued held"): it runs only after `scontrol release`, so it is replaced after ENDING_S too.
_HELD = "HELD"
_ENDING_STATES = frozenset({"COMPLETING", "PREEMPTED", "NODE_FAIL", "STAGE_OUT", "SIGNALING", _HELD})
_HELD_STATES = frozenset({"REQUEUE_HOLD", "RESV_DEL_HOLD"})
# A PENDING job's whole reason (lower case, "_" as " "), not "held" anywhere: ReqNodeNotAvail lists node names
_HELD_REASON = re.compile(r"jobheld\w*|.*\sheld( state)?")
ENDING_S = 120.0
# squeue's states of a job that SLURM is to run (again): a requeued job among them is left alone.
_WAITING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "CONFIGURING", "SUSPENDED", "STOPPED",
                             "RESIZING"})
# squeue's states of a job that SLURM is to start again: its next start is timed afresh. A SUSPENDED (gang
# scheduling, PreemptMode=SUSPEND), STOPPED or RESIZING job goes on running under its first start.
_REQUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", _HELD})
# What to change when a worker died at every try of a task (KilledWorker), by cluster.kind.
_LOST_WORKER_FIX = {
    "local": "raise cluster.memory_limit, lower cluster.workers, or set cluster: none to see an error the worker "
             "could not report",
    "slurm": "raise cluster.slurm.memory (or its walltime, should the job have reached it), lower "
             "cluster.slurm.processes (a job's workers share its memory), or set cluster: none to see an error "
             "the worker could not report",
}
# sbatch's words for a controller it cannot reach or that timed out: a transient failure, not bad settings.
_CONTROLLER_DOWN = re.compile(r"unable to contact slurm controller|socket timed out|connection refused|"
                              r"slurm_persist_conn|temporarily unavailable", re.IGNORECASE)


class ClusterError(W2v2serError):
    """A Dask cluster could not be started (missing package, bad SLURM settings)."""


class ClusterConfigError(ClusterError, ConfigError):
    """SLURM refuses the worker job that ``cluster.slurm`` describes: nothing ran (exit 2)."""


@dataclass
class ClusterHandle:
    """A running cluster as the stages need it.

    Attributes:
        client: The ``distributed.Client``; None runs work in this process.
        threads: Threads each task may use (TensorFlow / torch thread count).
        gpu_resource: Worker resource name that marks GPU workers, or None when there are none.
        description: One line saying what was started (printed by `w2v2ser run`).
        dashboard: Dask dashboard link, or "".
        lost_worker_fix: What to change when a worker died at every try of a task (the
            ``cluster:`` settings of this kind), for :func:`task_error`.
    """

    client: Any
    threads: int
    gpu_resource: str | None
    description: str
    dashboard: str = ""
    lost_worker_fix: str = ""


def count_gpus() -> int:
    """Visible NVIDIA GPUs, without importing torch (stage 2 never imports it)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return len(entries)
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


class _SchedulerGone(logging.Filter):
    """Drops a worker's "Failed to communicate with scheduler during heartbeat" error (with its
    traceback): it is logged when the driver closes or is interrupted before the worker ends,
    so it reports the shutdown, not a failure."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102 - logging.Filter hook
        return not str(record.msg).startswith("Failed to communicate with scheduler during heartbeat")


def quiet_scheduler_gone() -> None:
    """Install :class:`_SchedulerGone` on this process's ``distributed.worker`` logger (once)."""
    logger = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _SchedulerGone) for f in logger.filters):
        logger.addFilter(_SchedulerGone())


class _DieWithDriver(WorkerPlugin):
    """Worker plugin: local worker processes end when the driver process is killed, and leave
    Ctrl-C to it (the terminal sends SIGINT to the whole process group; each worker printed a
    KeyboardInterrupt traceback while the driver closed the cluster)."""

    name = "w2v2ser-die-with-driver"

    def setup(self, worker: Any) -> None:  # noqa: D102 - WorkerPlugin hook
        import signal
        import threading

        die_with_parent()
        quiet_scheduler_gone()
        if threading.current_thread() is threading.main_thread():  # signal.signal's condition
            signal.signal(signal.SIGINT, signal.SIG_IGN)


class _QuietTensorFlow(WorkerPlugin):
    """Worker plugin: TensorFlow's Python-side warnings and the known warnings of other libraries
    stay out of the log, as in the driver (each worker trains many models; without it every one
    printed retracing warnings; an extraction worker, torch's WavLM note at every batch)."""

    name = "w2v2ser-quiet-tensorflow"

    def setup(self, worker: Any) -> None:  # noqa: D102 - WorkerPlugin hook
        quiet_tensorflow_warnings()
        quiet_known_warnings()


def _thread_env(threads: int) -> dict[str, str]:
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def _gpu_visible(index: int, total: int) -> str:
    """CUDA_VISIBLE_DEVICES of GPU worker ``index``: its device first, as LocalCUDACluster does."""
    try:
        from dask_cuda.utils import cuda_visible_devices

        return str(cuda_visible_devices(index))
    except ImportError:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(total)]
        return ",".join(devices[index:] + devices[:index])


def _local_cluster(config: ClusterConfig, *, use_gpus: bool) -> tuple[Any, int, str | None, str]:
    from distributed import Nanny, Scheduler, SpecCluster

    from distributed.worker_memory import parse_memory_limit

    try:
        parse_memory_limit(config.memory_limit, 1, logger=logging.getLogger("distributed.worker.memory"))
    except ValueError as error:  # raised in the cluster's start-up: a traceback, exit 1
        raise ClusterConfigError(f"cluster.memory_limit: expected a size per worker with its unit (4GB, 500MB), "
                                 f"auto, or 0 for no limit, got {config.memory_limit!r} ({error})") from None
    cores = usable_cores()
    gpus = (count_gpus() if config.gpus is None else config.gpus) if use_gpus else 0
    threads = config.threads_per_worker or (1 if cores <= 4 else 2)
    threads = min(threads, cores)
    # GPU workers mostly wait on the device; give them one thread each and the rest to CPU workers.
    cpu_workers = config.workers or max(1, (cores - gpus) // threads)
    common = {"memory_limit": config.memory_limit, "silence_logs": logging.ERROR}
    workers: dict[str, dict] = {
        f"cpu-{i}": {"cls": Nanny, "options": {**common, "nthreads": threads, "env": _thread_env(threads)}}
        for i in range(cpu_workers)
    }
    for i in range(gpus):
        env = {**_thread_env(threads), "CUDA_VISIBLE_DEVICES": _gpu_visible(i, gpus)}
        workers[f"gpu-{i}"] = {"cls": Nanny, "options": {**common, "nthreads": 1, "env": env,
                                                          "resources": {GPU_RESOURCE: 1}}}
    scheduler = {"cls": Scheduler, "options": _dashboard(config)}
    cluster = SpecCluster(workers=workers, scheduler=scheduler, name="w2v2ser", silence_logs=logging.ERROR)
    text = f"local Dask cluster: {cpu_workers} CPU worker(s) x {threads} thread(s)" + (
        f" + {gpus} GPU worker(s)" if gpus else "")
    return cluster, threads, GPU_RESOURCE if gpus else None, text


def _dashboard(config: ClusterConfig) -> dict[str, Any]:
    """The scheduler's dashboard options: ``dashboard_address: null`` turns the dashboard off."""
    return {"dashboard_address": config.dashboard_address, "dashboard": config.dashboard_address is not None}


def _import_slurm_cluster() -> Any:
    """dask_jobqueue's SLURMCluster, imported without its side effect on Ctrl-C.

    Importing dask_jobqueue sets a SIGINT handler that calls sys.exit(): Ctrl-C then ended
    `w2v2ser run` with exit 0 and no word. The command's own handler is put back.
    """
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as error:
        raise ClusterError("cluster.kind is slurm but dask-jobqueue is not installed; "
                           "pip install 'w2v2ser[cluster]' (or dask-jobqueue), or set cluster: local") from error
    finally:
        if main and handler is not None and signal.getsignal(signal.SIGINT) is not handler:
            signal.signal(signal.SIGINT, handler)
    return SLURMCluster


def _slurm_cluster(config: ClusterConfig, *, use_gpus: bool) -> tuple[Any, int, str | None, str]:
    SLURMCluster = _import_slurm_cluster()
    slurm = config.slurm
    gpus = slurm.gpus if use_gpus else 0
    threads = max(1, slurm.cores // slurm.processes)
    directives = list(slurm.job_extra_directives)
    extra_args: list[str] = []
    if gpus:
        directives.append(f"--gres=gpu:{gpus}")
        # Each worker process of a job advertises its share of the job's GPUs.
        extra_args += ["--resources", f"{GPU_RESOURCE}={max(1, gpus // slurm.processes)}"]
    prologue = [f"export {k}={v}" for k, v in _thread_env(threads).items()] + [
        "export DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE=False"] + list(slurm.job_script_prologue)  # as open_cluster
    kwargs: dict[str, Any] = {
        "queue": slurm.queue, "account": slurm.account, "cores": slurm.cores, "memory": slurm.memory,
        "processes": slurm.processes, "walltime": slurm.walltime, "job_extra_directives": directives,
        "job_script_prologue": prologue, "worker_extra_args": extra_args, "python": sys.executable,
        "log_directory": slurm.log_directory, "local_directory": slurm.local_directory,
        "interface": slurm.interface, "job_name": "w2v2ser-worker",
        "scheduler_options": _dashboard(config),
    }
    try:
        cluster = SLURMCluster(**{k: v for k, v in kwargs.items() if v is not None})
    except (ValueError, TypeError, OSError) as error:
        raise ClusterError(f"cannot start a SLURMCluster from cluster.slurm ({error}); check cluster.slurm "
                           f"settings (queue, cores, memory, walltime)") from error
    _keep_requeued_jobs(cluster)
    try:
        _check_submittable(cluster.job_script())
    except BaseException:
        cluster.close()
        raise
    cluster.scale(jobs=slurm.jobs)
    text = (f"SLURM Dask cluster: {slurm.jobs} job(s) x {slurm.processes} worker(s) x {threads} thread(s)"
            f" on partition {slurm.queue or '(default)'}" + (f", --gres=gpu:{gpus}" if gpus else ""))
    return cluster, threads, GPU_RESOURCE if gpus else None, text


def _check_submittable(script: str) -> None:
    """Ask SLURM whether it would accept a worker job (``sbatch --test-only``), before any is submitted.

    dask-jobqueue submits its jobs in the background and only logs a refusal (a walltime such as
    "4h", an unknown partition or account, more memory or cores than any node has): the run then
    waited forever for workers that never came.

    Raises:
        ClusterConfigError: sbatch is missing, or refuses the job; the message carries its reason.
    """
    import tempfile

    file = None
    try:
        with tempfile.NamedTemporaryFile("w", prefix="w2v2ser-worker-", suffix=".sh", delete=False) as file:
            file.write(script)
    except OSError as error:
        if file is not None:  # made, then the write failed (a full TMPDIR): leave nothing behind
            with contextlib.suppress(OSError):
                os.unlink(file.name)
        raise ClusterError(f"cannot write the Dask worker's job script to check it with sbatch --test-only: "
                           f"{error}. Point TMPDIR at a writable folder") from error
    try:
        checked = subprocess.run(["sbatch", "--test-only", file.name], capture_output=True, text=True,
                                 timeout=60, check=False)
    except FileNotFoundError:
        raise ClusterConfigError("cluster.kind is slurm but the sbatch command is not found: run w2v2ser where "
                                 "SLURM's commands are (a login node or a job), or set cluster: local") from None
    except OSError as error:
        raise ClusterError(f"cannot run sbatch to check the Dask worker job: {error}") from error
    except subprocess.TimeoutExpired:
        return  # a slow controller says nothing either way: the real submission goes ahead
    finally:
        os.unlink(file.name)
    if checked.returncode != 0:
        reason = "; ".join(line.strip() for line in (checked.stderr + checked.stdout).splitlines() if line.strip())
        if _CONTROLLER_DOWN.search(reason):  # the settings may be right: this is no configuration error
            raise ClusterError(f"SLURM's controller did not answer sbatch --test-only ({reason}); nothing was "
                               "submitted. Try again when `sinfo` answers")
        raise ClusterConfigError(
            f"SLURM refuses the Dask worker job of cluster.slurm: {reason or f'exit code {checked.returncode}'}. "
            "Fix cluster.slurm (queue is the partition; walltime as HH:MM:SS or D-HH:MM:SS; memory and cores "
            "that a node of the partition has; gpus; job_extra_directives)")


def _job_states(ids: list[str]) -> str:
    """``job 42 PENDING (Resources)``, as squeue says it, for each job id (or why squeue cannot say)."""
    if not ids:
        return "no job id known yet: sbatch has not answered"
    try:
        listed = subprocess.run(["squeue", "-h", "-o", "%i %T %r", "-j", ",".join(ids)], capture_output=True,
                                text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"job(s) {', '.join(ids)}; squeue cannot say their state ({error})"
    states = []
    for line in listed.stdout.splitlines():
        job, _, rest = line.strip().partition(" ")
        state, _, reason = rest.partition(" ")
        if job:
            states.append(f"job {job} {state}" + (f" ({reason})" if reason and reason != "None" else ""))
    return "; ".join(states) or f"job(s) {', '.join(ids)}, which squeue no longer lists (ended)"


def _say_while_no_worker(client: Any, cluster: Any, log_directory: str | None, stop: threading.Event) -> None:
    """Every WORKER_WAIT_NOTE_S while no worker has connected, say what SLURM says of the worker jobs."""
    from tqdm import tqdm

    waited = 0.0
    while not stop.wait(WORKER_WAIT_NOTE_S):
        waited += WORKER_WAIT_NOTE_S
        try:
            if client.nthreads():
                return
            ids = [str(job.job_id) for job in list(cluster.workers.values()) if getattr(job, "job_id", None)]
        except Exception:  # noqa: BLE001 - the client is closing: nothing to say
            return
        logs = log_directory or "slurm-JOBID.out in the folder run was started from"
        tqdm.write(f"cluster: no Dask worker has connected {waited / 60:.0f} min after the SLURM worker job(s) were "
                   f"submitted ({_job_states(ids)}). A PENDING job waits for its partition (its reason says why; "
                   "smaller cluster.slurm cores, memory or walltime, or another queue, start sooner); a RUNNING job "
                   f"whose worker never connects says why in its log ({logs}), e.g. this Python missing on the "
                   "compute node or no route to this host (set cluster.slurm.interface). Finished work is kept if "
                   "you stop here (Ctrl-C, or scancel this run's own job; scancelled worker jobs are replaced).",
                   file=sys.stderr)
        sys.stderr.flush()


def _squeue_states(ids: list[str]) -> dict[str, str] | None:
    """squeue's state (RUNNING, PENDING, TIMEOUT, ...) of each job id it still lists, HELD for a held job; None
    when squeue cannot say."""
    # --states=all: an ended job stays listed with its end state for a while (MinJobAge). A user's
    # SQUEUE_STATES/SQUEUE_PARTITION would hide our jobs; a job never listed is not taken as ended.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUEUE_")}
    try:
        listed = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i %T %r", "-j", ",".join(ids)],
                                capture_output=True, text=True, timeout=20, check=False, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:  # the ids SLURM has forgotten (ended long ago): "Invalid job id specified"
        return {} if "invalid job id" in listed.stderr.lower() else None
    states = {}
    for line in listed.stdout.splitlines():
        job, _, rest = line.strip().partition(" ")
        state, _, reason = rest.strip().partition(" ")
        if job:
            reason = reason.strip().lower().replace("_", " ")
            # JobHeldAdmin, JobHeldUser, "job requeued in held state" (scontrol requeuehold, SLURM 22.05),
            # "launch failed requeued held"
            held = state in _HELD_STATES or (state == "PENDING" and _HELD_REASON.fullmatch(reason) is not None)
            states[job] = _HELD if held else state
    return states


def _keep_requeued_jobs(cluster: Any) -> None:
    """Dask scancels a worker job once its worker has been gone for lost-worker-timeout. A job SLURM requeued
    (preemption with PreemptMode=REQUEUE, a node failure, ``scontrol requeue``) is PENDING again under the same
    id and starts the same worker later: it is kept (and was scancelled before); the watchdog,
    :func:`_replace_ended_jobs`, replaces it once squeue says it is over."""
    import asyncio

    from distributed.core import Status

    class _WorkerJob(cluster.job_cls):
        async def close(self) -> None:
            if getattr(self, "w2v2ser_closed", False):  # scancelled already (the cluster closed during squeue)
                return
            job_id = str(self.job_id or "")
            # Dask's lost-worker removal keeps the job's spec; a scale-down or close() does not
            if (job_id and cluster.status == Status.running and self.name in cluster.worker_spec
                    and not getattr(self, "w2v2ser_ended", False)):
                # Dask dropped it from cluster.workers: its name stays taken while squeue is asked, or a
                # scale() meanwhile submits a new job under it, which replaces this one there (never scancelled)
                cluster.workers.setdefault(self.name, self)
                states = await asyncio.get_running_loop().run_in_executor(None, _squeue_states, [job_id])
                state = (states or {}).get(job_id)
                # squeue took a while: the cluster may be closing (its last look at the jobs is over, this job
                # would stay queued after the run), or the name dropped or in use again; then it is scancelled
                async with cluster._lock:  # a scale() under way has put its new jobs in cluster.workers
                    if (state in _WAITING_STATES | _ENDING_STATES and cluster.status == Status.running
                            and self.name in cluster.worker_spec and cluster.workers.get(self.name) is self):
                        return  # SLURM runs it again
                    if cluster.workers.get(self.name) is self:
                        del cluster.workers[self.name]
                if getattr(self, "w2v2ser_closed", False):  # the cluster's close scancelled it meanwhile
                    return
                if state not in _ENDED_STATES:  # it ran on without its worker: CANCELLED by us, not by its user
                    cluster.w2v2ser_scancelled.add(job_id)
            self.w2v2ser_closed = True
            await super().close()

    cluster.job_cls = cluster.new_spec["cls"] = _WorkerJob
    cluster.w2v2ser_scancelled = set()


async def _drop_jobs(cluster: Any, names: list[str]) -> None:
    """Forget the ended worker jobs ``names`` (scancel each, should it linger), so that scale() submits new
    ones under new names: a name used again could be closed by Dask's own late removal of the old job."""
    for name in names:
        cluster.worker_spec.pop(name, None)
        # SpecCluster names a new job by its lowest number not in worker_spec: the name just dropped, whose
        # late removal (lost-worker-timeout after its worker left) then scancelled the new job.
        cluster._i = getattr(cluster, "_i", 0) + 1
        job = cluster.workers.pop(name, None)
        if job is not None:
            job.w2v2ser_ended = True  # squeue said so: scancel it without asking again
            with contextlib.suppress(Exception):
                await job.close()


def _jobs_to_come(cluster: Any) -> bool:
    """Whether squeue says a worker job of ``cluster`` is pending (or requeued) or running: its worker is to come.
    True too when squeue cannot say now (a timeout, a controller hiccup): look again later."""
    ids = [str(job.job_id) for job in list(cluster.workers.values()) if getattr(job, "job_id", None)]
    if not ids:
        return False
    states = _squeue_states(ids)
    return states is None or any(state in _WAITING_STATES or state == "RUNNING" for state in states.values())


def _replace_ended_jobs(client: Any, cluster: Any, slurm: Any, stop: threading.Event) -> None:
    """Every ``slurm.job_check`` s, submit a new worker job for each one that ended (squeue says so, or Dask
    saw its worker leave). After MAX_FAILED_STARTS x jobs ended jobs in a row that ran under FAILED_START_S, submit
    no more (a job its user scancelled counts neither way); once no worker is left nor a job pending, cancel
    the work, with a reason that says what to check (workers still running go on with it)."""
    from distributed import Future
    from tqdm import tqdm

    def say(text: str) -> None:
        tqdm.write(f"cluster: {text}", file=sys.stderr)
        sys.stderr.flush()

    seen: dict[str, Any] = {}  # name -> Job at the last check
    running_since: dict[str, float] = {}  # job id -> when squeue first said RUNNING
    ending_since: dict[str, float] = {}  # job id -> when squeue first said it is ending (_ENDING_STATES)
    listed: set[str] = set()  # job ids squeue has listed: only those count as ended once it stops listing them
    failed_starts: list[str] = []  # ids of the ended jobs in a row that ran under FAILED_START_S
    given_up = ""
    warned = False
    while not stop.wait(slurm.job_check):
        try:
            if given_up:  # once no worker is left nor to come, the work (and any submitted later) fails at once
                keys = list(client.futures)
                if keys and not client.nthreads() and not _jobs_to_come(cluster):
                    client.cancel([Future(key, client) for key in keys], reason=given_up)
                continue
            workers = dict(list(cluster.workers.items()))
            # Dask removes a job whose only worker left (processes: 1), and keeps it if SLURM requeued it
            # (_keep_requeued_jobs); squeue sees every job end.
            gone = {name: job for name, job in seen.items() if name not in workers and name in cluster.worker_spec}
            jobs = {**gone, **workers}
            ids = {str(job.job_id): name for name, job in jobs.items() if getattr(job, "job_id", None)}
            states = _squeue_states(list(ids)) if ids else {}
            now = time.monotonic()
            ended = {name: job for name, job in gone.items() if not getattr(job, "job_id", None)}
            held = []  # ids of the ended jobs that were held
            kept = {}  # gone from Dask, but requeued or still ending: looked at again
            for job_id, name in ids.items():
                # A job squeue never listed (another cluster's -M, a hidden partition) is left to Dask.
                state = None if states is None else states.get(job_id, "ENDED" if job_id in listed else None)
                listed.update([job_id] if states and job_id in states else [])
                if state == "RUNNING":
                    running_since.setdefault(job_id, now)
                elif state in _REQUEUED_STATES:  # requeued: its next start is timed afresh (not when SUSPENDED)
                    running_since.pop(job_id, None)
                if state in _ENDING_STATES:
                    ending = ending_since.setdefault(job_id, now)
                else:
                    ending = ending_since.pop(job_id, now)
                over = state in _ENDED_STATES or (state in _ENDING_STATES and now - ending >= ENDING_S)
                if over or (name in gone and state is None):
                    ended[name] = jobs[name]
                    held += [job_id] if state == _HELD else []
                    ending_since.pop(job_id, None)
                elif name in gone:
                    kept[name] = gone[name]
            seen = {**workers, **kept}
            if not ended or stop.is_set():  # the cluster is closing: nothing to replace
                continue
            for job in ended.values():
                started = running_since.pop(str(job.job_id), None)
                if str(job.job_id) in held or ((states or {}).get(str(job.job_id)) == "CANCELLED"
                                               and str(job.job_id) not in getattr(cluster, "w2v2ser_scancelled", ())):
                    continue  # held, or its user's scancel: no failed start, nor a start that went well
                if started is None or now - started < FAILED_START_S:
                    failed_starts.append(str(job.job_id))
                else:
                    failed_starts.clear()
            cluster.sync(_drop_jobs, cluster, list(ended))
            if held:
                say(f"SLURM worker job(s) {', '.join(held)} held for {ENDING_S:.0f} s (squeue: REQUEUE_HOLD, or "
                    "PENDING with a held reason such as JobHeldAdmin or JobHeldUser; such a job runs only "
                    "after `scontrol release`) are scancelled and replaced")
            logs = slurm.log_directory or "slurm-JOBID.out in the folder run was started from"
            if len(failed_starts) >= MAX_FAILED_STARTS * slurm.jobs:
                given_up = (f"{len(failed_starts)} SLURM worker jobs in a row ended within {FAILED_START_S:.0f} s "
                            f"of starting (last: {', '.join(failed_starts[-3:])}); no more are submitted and the "
                            f"work left fails once no worker is left nor a job pending. Their output ({logs}) says why: "
                            "e.g. this Python missing on the "
                            "compute node, an import error, too little cluster.slurm.memory. Fix cluster.slurm "
                            "(memory, job_script_prologue, interface) and rerun: finished work is kept")
                cluster.w2v2ser_gave_up = given_up  # wait_for_a_worker stops waiting
                say(given_up)
                continue
            others = len(ended) - len(held)  # the held ones are said above
            if others and failed_starts:
                say(f"{others} SLURM worker job(s) ended within {FAILED_START_S:.0f} s of starting "
                    f"({len(failed_starts)} in a row; after {MAX_FAILED_STARTS * slurm.jobs} no more are submitted); "
                    f"submitting new one(s). Their output ({logs}) says why")
            elif others:
                say(f"{others} SLURM worker job(s) ended (cluster.slurm.walltime reached, a node failure, "
                    "preemption or scancel); submitting new one(s). Tasks the job was running start again on "
                    "another worker")
            cluster.scale(jobs=slurm.jobs)
        except Exception as error:  # noqa: BLE001 - e.g. the cluster changed while read: try again
            if stop.is_set():  # the cluster is closing
                return
            if not warned:
                warned = True
                say(f"checking the SLURM worker jobs failed ({type(error).__name__}: {error}); trying again "
                    f"every {slurm.job_check:g} s")


def _slurm_seconds(value: str) -> float | None:
    """Seconds of a SLURM time as ``cluster.slurm`` takes it (MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]);
    None for UNLIMITED, INFINITE or zero, which SLURM reads as no limit (distributed would too: a
    timeout of 0 waits for ever, so the limit must be None, not 0)."""
    text = value.strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    if days:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    else:  # sbatch reads one number as minutes, two as minutes:seconds
        hours, minutes, seconds = {1: [0, *parts, 0], 2: [0, *parts]}.get(len(parts), parts)
    total = float(((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds)
    return total or None


def wait_for_a_worker(client: Any, slurm: Any) -> None:
    """Wait until a first Dask worker of a SLURM cluster connects, at most ``slurm.worker_wait``.

    Raises:
        ClusterError: none connected in time (exit 1); the message names the setting and what
            squeue says of the worker jobs. Or the worker jobs failed at start too often, no
            more are submitted (see _replace_ended_jobs) and none is pending or running. Nothing
            was submitted to the cluster yet.
    """
    limit = None if slurm.worker_wait is None else _slurm_seconds(slurm.worker_wait)
    if limit is None:
        return
    from distributed.exceptions import WorkerStartTimeoutError

    cluster = getattr(client, "cluster", None)
    deadline = time.monotonic() + limit
    while True:
        try:
            client.wait_for_workers(1, timeout=max(0.1, min(slurm.job_check, deadline - time.monotonic())))
            return
        except WorkerStartTimeoutError:
            gave_up = getattr(cluster, "w2v2ser_gave_up", "")
            # the worker jobs fail at start: no more are submitted (_replace_ended_jobs); one still pending may work
            if gave_up and not _jobs_to_come(cluster):
                raise ClusterError(gave_up) from None
            if time.monotonic() >= deadline:
                break
    ids = [str(job.job_id) for job in list(getattr(cluster, "workers", {}).values()) if getattr(job, "job_id", None)]
    logs = slurm.log_directory or "slurm-JOBID.out in the folder run was started from"
    raise ClusterError(
        f"no Dask worker connected within cluster.slurm.worker_wait={slurm.worker_wait} after the SLURM worker "
        f"job(s) were submitted ({_job_states(ids)}); the run stops, finished work is kept. Raise "
        f"cluster.slurm.worker_wait (null: no limit) for a partition that starts jobs late, or see the job "
        f"log ({logs}) when a job ran")


@contextmanager
def open_cluster(config: ClusterConfig, *, use_gpus: bool = True) -> Iterator[ClusterHandle]:
    """Start the cluster described by ``cluster:`` and close it afterwards.

    Args:
        config: The pipeline's cluster settings.
        use_gpus: Start GPU workers where the config allows (the extract stage); training
            (TensorFlow on CPU) passes False.

    Yields:
        A :class:`ClusterHandle`; its ``client`` is None for ``kind: none``.
    """
    if config.kind == "none":
        threads = config.threads_per_worker or usable_cores()
        yield ClusterHandle(None, threads, None, f"no Dask cluster: work runs in this process ({threads} threads)")
        return
    import dask
    from distributed import Client

    # Workers must not inherit an OMP_NUM_THREADS=1 pre-spawn default when they own several cores.
    # No pausing at 80% of memory_limit: what a worker holds is TensorFlow / torch and a model, which
    # pausing never frees, so a paused worker took no task again and the run waited for ever (a
    # training run with memory_limit 1GB hung). Past 95% it is still restarted.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {"MALLOC_TRIM_THRESHOLD_": 65536},
                          "distributed.worker.memory.pause": False,
                          "distributed.admin.system-monitor.gil.enabled": False}):
        build = _slurm_cluster if config.kind == "slurm" else _local_cluster
        with warnings.catch_warnings():  # a busy dashboard port: Dask takes another, and the link says which
            warnings.filterwarnings("ignore", message=r"Port \d+ is already in use")
            cluster, threads, gpu_resource, text = build(config, use_gpus=use_gpus)
        try:
            client = Client(cluster)
            if config.kind == "local":
                client.register_plugin(_DieWithDriver())
            if native_logs_hidden():  # not with --verbose
                client.register_plugin(_QuietTensorFlow())
        except BaseException:
            cluster.close()
            raise
        stop = threading.Event()
        watchdog = None
        try:
            if config.kind == "slurm":
                try:
                    threading.Thread(target=_say_while_no_worker, name="w2v2ser-worker-wait", daemon=True,
                                     args=(client, cluster, config.slurm.log_directory, stop)).start()
                    watchdog = threading.Thread(target=_replace_ended_jobs, name="w2v2ser-worker-jobs", daemon=True,
                                                args=(client, cluster, config.slurm, stop))
                    watchdog.start()
                except RuntimeError:  # can't start new thread (ulimit -u): the note is optional
                    pass
            # Without a dashboard the scheduler still serves its health routes, so Dask's link would lead nowhere.
            link = getattr(client, "dashboard_link", "") if config.dashboard_address is not None else ""
            yield ClusterHandle(client, threads, gpu_resource, text, link or "", _LOST_WORKER_FIX[config.kind])
        finally:
            stop.set()
            if watchdog is not None:  # a check under way ends first: a job it submitted during close() stayed running
                watchdog.join(timeout=60)  # squeue's and sbatch's timeouts
            client.close()
            cluster.close()
