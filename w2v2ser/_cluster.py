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

import logging
import os
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from w2v2ser._common import die_with_parent, usable_cores

from ._config_schema import ClusterConfig
from ._native_logs import native_logs_hidden, quiet_known_warnings, quiet_tensorflow_warnings
from ._slurm_jobs import (ClusterConfigError, ClusterError, _check_submittable, _keep_requeued_jobs, _replace_ended_jobs,
                          _say_while_no_worker)

__all__ = ["ClusterConfigError", "ClusterError", "ClusterHandle", "count_gpus", "die_with_parent", "open_cluster",
           "usable_cores"]

GPU_RESOURCE = "GPU"
# What to change when a worker died at every try of a task (KilledWorker), by cluster.kind.
_LOST_WORKER_FIX = {
    "local": "raise cluster.memory_limit, lower cluster.workers, or set cluster: none to see an error the worker "
             "could not report",
    "slurm": "raise cluster.slurm.memory (or its walltime, should the job have reached it), lower "
             "cluster.slurm.processes (a job's workers share its memory), or set cluster: none to see an error "
             "the worker could not report",
}


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


def _log_directives(log_directory: str) -> list[str]:
    """The worker jobs' ``-e``/``-o`` directives for ``cluster.slurm.log_directory``, made here.

    dask-jobqueue writes the folder into ``#SBATCH -e``/``-o`` as it is: sbatch refused a job whose
    folder had a space ("Invalid directive found in batch script") and read a ``%`` as a pattern
    (``logs%j`` became ``logs42``, a folder that is not there, and the job failed to launch). The
    name is quoted and ``%`` doubled; the schema refuses what cannot be escaped (backslash, ``"``).

    Raises:
        ClusterError: The folder cannot be made.
    """
    try:
        os.makedirs(log_directory, exist_ok=True)
    except OSError as error:
        raise ClusterError(f"cannot make cluster.slurm.log_directory {log_directory!r} ({error}); set it to a "
                           f"folder this user can write") from error
    folder = log_directory.replace("%", "%%")
    return [f'-e "{folder}/w2v2ser-worker-%J.err"', f'-o "{folder}/w2v2ser-worker-%J.out"']


def _slurm_cluster(config: ClusterConfig, *, use_gpus: bool) -> tuple[Any, int, str | None, str]:
    SLURMCluster = _import_slurm_cluster()
    slurm = config.slurm
    gpus = slurm.gpus if use_gpus else 0
    threads = max(1, slurm.cores // slurm.processes)
    # Before the user's directives, as dask-jobqueue's own -e/-o lines were: a user's -o still wins.
    directives = _log_directives(slurm.log_directory) if slurm.log_directory is not None else []
    directives += slurm.job_extra_directives
    extra_args: list[str] = []
    if gpus:
        directives.append(f"--gres=gpu:{gpus}")
        # Each worker process of a job advertises its share of the job's GPUs.
        extra_args += ["--resources", f"{GPU_RESOURCE}={max(1, gpus // slurm.processes)}"]
    prologue = [f"export {k}={v}" for k, v in _thread_env(threads).items()] + [
        "export DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE=False"] + list(slurm.job_script_prologue)  # as open_cluster
    skip: list[str] = []
    if slurm.log_directory is not None:
        # A site's dask config (jobqueue.slurm.log-directory) would still add its own unquoted -e/-o lines.
        import dask

        skip = [*(dask.config.get("jobqueue.slurm.job-directives-skip", None) or ()), "#SBATCH -e ", "#SBATCH -o "]
    kwargs: dict[str, Any] = {
        "queue": slurm.queue, "account": slurm.account, "cores": slurm.cores, "memory": slurm.memory,
        "processes": slurm.processes, "walltime": slurm.walltime, "job_extra_directives": directives,
        "job_script_prologue": prologue, "worker_extra_args": extra_args, "python": sys.executable,
        "local_directory": slurm.local_directory,
        "interface": slurm.interface, "job_name": "w2v2ser-worker",
        "scheduler_options": _dashboard(config), "job_directives_skip": skip or None,
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
