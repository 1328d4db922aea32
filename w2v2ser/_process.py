"""Child processes and workers: the command line of a child Python process, the thread
settings it inherits, oneDNN, the caller's random state, and what a lost Dask worker means.
Imports only the standard library and :mod:`w2v2ser._common`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from w2v2ser._common import ConfigError

__all__ = [
    "LOST_WORKER_FIX",
    "python_command",
    "prefer_onednn",
]


def check_thread_environment(*, instead: str = "") -> None:
    """Refuse a negative ``TF_NUM_INTRAOP_THREADS``/``TF_NUM_INTEROP_THREADS`` (a cluster script's) before
    TensorFlow is imported: TensorFlow aborts the whole process (a notebook's kernel) on it, "Check
    failed: num_threads >= 1". ``instead``: the option that takes its place, for the message.

    Raises:
        ConfigError: one of them is a negative whole number.
    """
    tf = sys.modules.get("tensorflow")
    for name, kind in (("TF_NUM_INTRAOP_THREADS", "intra"), ("TF_NUM_INTEROP_THREADS", "inter")):
        value = os.environ.get(name, "").strip()
        configured = getattr(getattr(tf, "config", None), "threading", None)
        if configured is not None and getattr(configured, f"get_{kind}_op_parallelism_threads")():
            continue  # set in this process (train's --threads N before a `run`'s scoring): it takes its place
        if re.fullmatch(r"-0*[1-9]\d*", value):  # "-0" is 0 to TensorFlow, its default
            raise ConfigError(f"the environment variable {name} is {value!r}, which TensorFlow aborts on; expected "
                              f"a number of threads, at least 1. Unset it or set it to a positive number"
                              f"{f' (or pass {instead}, which takes its place)' if instead else ''}, then rerun")


# What to change when a Dask worker died at every try of a task, where the caller does not say (the
# settings of `w2v2ser extract --workers` and of a library user's own client).
LOST_WORKER_FIX = ("give each Dask worker more memory or run fewer of them (`w2v2ser extract --workers N`), or run "
                   "without a Dask cluster (no --workers; client=None) to see an error the worker could not report")


def task_error(error: BaseException, *, fix: str = LOST_WORKER_FIX) -> str:
    """``Type: message`` of a Dask task's error; a KilledWorker (its worker process died at every
    try) says the likely cause and what to do instead of Dask's "inspecting worker logs": ``fix``,
    which names the settings the caller's user has (those of ``cluster:`` for `w2v2ser run`)."""
    if type(error).__name__ == "FutureCancelledError":  # the same for every task cancelled at once: without its key
        reason, msg = getattr(error, "reason", None), getattr(error, "msg", None)  # Dask's reason None: "unknown"
        if reason and reason != "unknown":
            return f"cancelled: {reason}" + (f" ({msg})" if msg else "")
        if msg:  # e.g. "Scheduler has restarted. Please re-run your work."
            return f"cancelled: {msg}"
        return "cancelled (Dask gave no reason)"
    if type(error).__name__ != "KilledWorker":
        return f"{type(error).__name__}: {error}"
    try:
        import dask

        tries = f" {int(dask.config.get('distributed.scheduler.allowed-failures')) + 1}"
    except Exception:  # noqa: BLE001 - the count is only a detail
        tries = ""
    return (f"KilledWorker: the Dask worker process running it died at each of its{tries} tries, most often for "
            f"lack of memory (the worker's memory limit or the machine's memory); {fix}")


def python_command(module: str, *args: str, follow_parent: bool = False) -> list[str]:
    """This interpreter running ``module.main()`` with ``args`` as its command line (its return
    value is the exit status), with w2v2ser importable exactly as it is here.

    ``follow_parent``: the child gets SIGTERM when this process dies, even by SIGKILL (Linux), so
    it never runs on as an orphan (see :func:`die_with_parent`).

    ``python -m module`` only works when w2v2ser is installed. A source tree put on the path by
    hand (the benchmarks do this on machines without an install) maps the subpackages through
    ``w2v2ser.__path__``, so the child gets this process's ``sys.path`` and ``w2v2ser.__path__``.
    """
    import w2v2ser

    follow = ("import signal; from w2v2ser._common import die_with_parent; "
              f"die_with_parent(signal.SIGTERM, parent={os.getpid()}); " if follow_parent else "")
    code = ("import importlib, json, sys; sys.path[:0] = json.loads(sys.argv[1]); import w2v2ser; "
            "w2v2ser.__path__[:] = json.loads(sys.argv[2]); module = sys.argv[3]; " + follow +
            "sys.argv[:] = [module, *sys.argv[4:]]; raise SystemExit(importlib.import_module(module).main())")
    return [sys.executable, "-c", code, json.dumps(sys.path), json.dumps(list(w2v2ser.__path__)), module, *args]


def prefer_onednn() -> None:
    """Have TensorFlow use its oneDNN CPU kernels on every CPU, unless the user chose otherwise.

    TensorFlow turns them on by default only on CPUs with AVX-512 VNNI/BF16 or AMX; on others
    (AVX2 machines such as many AMD EPYC nodes) it leaves them off, though on such a machine stage
    2 ran 1.15-1.72x faster with them, and a sweep's training step 1.6-2.3x
    (tests/benchmarks/bench_sweep.py --onednn). TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` when it
    loads, so this must run before: it sets "1" when the variable is unset and TensorFlow is not
    yet imported. Set ``TF_ENABLE_ONEDNN_OPTS=0`` to keep TensorFlow's own kernels.
    """
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


@contextlib.contextmanager
def caller_random_kept() -> Iterator[None]:
    """Give Python's and NumPy's global random streams back as they were once the block ends.

    A seeded run calls ``keras.utils.set_random_seed``, which seeds both streams: a notebook that
    trained, then drew ``np.random.permutation`` or a shuffled ``KFold`` split, got the same draws
    after every call. The block itself sees the seeded streams, so its results do not change. Also a
    decorator (``@caller_random_kept()``). Given back for the calling thread only: the streams are
    process-wide, so blocks running at once in several threads rewind them under each other.
    """
    import random

    numpy = sys.modules.get("numpy")
    kept = random.getstate(), None if numpy is None else numpy.random.get_state()
    try:
        yield
    finally:
        random.setstate(kept[0])
        if kept[1] is not None:
            numpy.random.set_state(kept[1])


class CountedScope:
    """A process-wide setting saved when the first scope opens and put back when the last one closes.

    Scopes are counted over threads and may nest: ``save()`` runs when the count goes from 0 to 1, and
    ``restore(saved)`` when it goes back to 0, each under one lock, so a block never sees the setting
    put back under it while another block (a Dask worker's other thread) is still inside.
    ``scope()`` is a context manager, and a decorator (``@scope()``). Library-free: stage 1 and
    stage 2 both use it (the hub's offline setting, TensorFlow's op determinism).

    Args:
        save: Returns the setting as it is when the first scope opens.
        restore: Puts back what ``save`` returned, when the last scope closes.
    """

    def __init__(self, save: Callable[[], Any], restore: Callable[[Any], None]) -> None:
        self._save, self._restore = save, restore
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: Any = None

    @property
    def depth(self) -> int:
        """How many scopes are open now (all threads)."""
        return self._depth

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._saved = self._save()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    saved, self._saved = self._saved, None
                    self._restore(saved)
