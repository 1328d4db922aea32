"""SLURM worker jobs of a Dask cluster: the ``sbatch --test-only`` check before any job is submitted,
squeue's job states, jobs SLURM requeues, replacing worker jobs that ended (and giving up after repeated
failed starts), waiting for a first worker, and the cluster errors these raise."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any

from w2v2ser._common import ConfigError
from w2v2ser.store import W2v2serError

__all__ = ["ClusterConfigError", "ClusterError", "wait_for_a_worker"]

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
# sbatch's words for a controller it cannot reach or that timed out: a transient failure, not bad settings.
_CONTROLLER_DOWN = re.compile(r"unable to contact slurm controller|socket timed out|connection refused|"
                              r"slurm_persist_conn|temporarily unavailable", re.IGNORECASE)


class ClusterError(W2v2serError):
    """A Dask cluster could not be started (missing package, bad SLURM settings)."""


class ClusterConfigError(ClusterError, ConfigError):
    """SLURM refuses the worker job that ``cluster.slurm`` describes: nothing ran (exit 2)."""


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
