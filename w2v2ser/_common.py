"""What every part of w2v2ser shares: the error hierarchy and exit codes, shared constants,
stop requests, the one-line description of an error, did-you-mean hints, provenance and the
cores available to this process, and progress bars. Wording of messages lives in
:mod:`w2v2ser._text`, atomic writes in :mod:`w2v2ser._files`, child processes and workers in
:mod:`w2v2ser._process` (except :func:`die_with_parent`: the child's command line that
:func:`~w2v2ser._process.python_command` builds imports it from this module).

This module imports only the standard library, so both stages (stage 1 never imports
TensorFlow, stage 2 never imports torch) and the store use it.
"""

from __future__ import annotations

import difflib
import errno
import functools
import inspect
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = [
    "FULL_DISK_ERRNOS",
    "ConfigError",
    "DataError",
    "DiskFullError",
    "EXIT_FAILED",
    "EXIT_INPUT",
    "SHARD_SIZE",
    "SHOWN_LINES",
    "SILENCE_ADVICE",
    "SPEAKER_CASE_ADVICE",
    "Terminated",
    "UPSTREAM_FEATURES",
    "W2v2serError",
    "describe_error",
    "describe_path_error",
    "die_with_parent",
    "did_you_mean",
    "error_text",
    "names_full_disk",
    "naming_full_disk",
    "first_few",
    "provenance",
    "stop_requested",
    "progress_bar",
    "usable_cores",
]


# Exit codes of the command line (README, "Errors and exit codes").
EXIT_FAILED = 1  # a run started and some unit of work failed
EXIT_INPUT = 2  # the input (arguments, pipeline.yaml, corpus, store) cannot be used: fix it, rerun


# What to do about files that are digital silence after mixing to mono (extract's note, `store info`).
SILENCE_ADVICE = (
    "They are extracted and trained on with their labels like any other file. A muted or zeroed "
    "recording is usually a broken file: replace it, or leave it out of the manifest and extract into a new "
    "store (`--like STORE` keeps the feature configs). A stereo file whose channels cancel (one is the other "
    "inverted; `audio_channels` in its extra says 2) holds speech in each channel: keep one, e.g. "
    "`ffmpeg -i IN -af 'pan=mono|c0=c0' OUT.wav`")


# What to do about speaker names that differ only in case (extract's note, `store info`).
SPEAKER_CASE_ADVICE = ("if they are one person, fix the spelling in the manifest and rerun the same `w2v2ser extract` "
                       "(speakers are updated in place, nothing is extracted again)")


# Feature names of the speech encoders (hidden states per layer), named after their family: the
# one list, Keras-, torch- and stage-free, that stage 2 reads; extract's registry derives UPSTREAMS
# from it (a new encoder: its name here and its line in EXTRACTORS).
UPSTREAM_FEATURES = ("wav2vec2", "hubert", "wavlm", "data2vec")


# Utterances per extraction work unit (`extract --shard-size`, pipeline.yaml's extraction.shard_size).
# Each unit writes its own shards and statistics shard and fsyncs once at commit, so larger units
# mean fewer files and syncs; a model batch never spans units, so a unit must hold more audio than
# batch_seconds; a killed run redoes at most the units in flight (64 RAVDESS utterances: about
# 4 minutes of audio).
SHARD_SIZE = 64

# Lines of a long list (failed utterances, skipped files) that a command prints before "... and N
# more"; `store info --json` has them all.
SHOWN_LINES = 20


class W2v2serError(Exception):
    """Base class of every user-facing w2v2ser error; ``exit_code`` is what the CLI returns."""

    exit_code: int = EXIT_FAILED


class ConfigError(W2v2serError, ValueError):
    """A configuration (pipeline.yaml, ``--set``, an extractor or experiment config) is invalid."""

    exit_code = EXIT_INPUT


class DataError(W2v2serError):
    """Input data cannot be used: audio, a corpus manifest, or stored frames that do not fit."""

    exit_code = EXIT_INPUT


# Set by the command line's SIGINT/SIGTERM handlers. The KeyboardInterrupt they raise can be lost:
# raised inside a weakref callback or a __del__ Python prints and drops it, and raised inside C code
# it can surface as a SystemError that a per-run handler records as an ordinary failure. Loops
# that go on after a failure check this flag too (check_stop).
_STOP_REQUESTED = threading.Event()
_TERMINATED = threading.Event()


def request_stop(*, terminated: bool = False) -> None:
    """Record that the user asked the command to stop (Ctrl-C; ``terminated``: SIGTERM)."""
    if terminated:
        _TERMINATED.set()
    _STOP_REQUESTED.set()


def clear_stop() -> None:
    """Forget a stop request (a command starts or has ended: the next one in this process runs)."""
    _STOP_REQUESTED.clear()
    _TERMINATED.clear()


def stop_requested() -> bool:
    """Whether the user asked the command to stop and it has not been cleared (see request_stop)."""
    return _STOP_REQUESTED.is_set()


def check_stop() -> None:
    """Raise KeyboardInterrupt if a stop was requested (see request_stop)."""
    if _STOP_REQUESTED.is_set():
        raise Terminated if _TERMINATED.is_set() else KeyboardInterrupt


class Terminated(KeyboardInterrupt):
    """SIGTERM (``scancel``, a SLURM job's time limit, ``kill``) while a command runs, raised in the
    main thread so that the same clean-up runs as for Ctrl-C: pipes and clusters are closed, and
    the job's log says why the run ended."""


# Each command names its output its own way; `store export` takes it as its second argument.
_OTHER_OUTPUT = ("another --out or --store, another --work-dir for `predict`, another OUT file for `store export`, "
                 "or another `output:` for `run`")


#: The errors of a full disk, a full quota and a per-file size limit (`ulimit -f`).
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def describe_path_error(error: OSError) -> tuple[str, int] | None:
    """Message and exit code for a permission, read-only, folder-in-the-way or disk-full error on a path.

    The command line prints these as one line instead of a traceback; other errors give None.
    A full disk, a file size limit or too many open files is described without a file name too
    (keras, PIL and zarr raise those without one).
    """
    kept = "rerun the same command: finished work is kept"
    where = f"{error.filename}: {error.strerror}" if error.filename else f"{error.strerror or error}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{where}. Free space (or raise the quota), or write elsewhere ({_OTHER_OUTPUT}), then {kept}.",
                EXIT_FAILED)
    if error.errno == errno.EFBIG:
        return (f"{where}: a per-file size limit was hit (`ulimit -f`, or a quota). Raise it, or write elsewhere, "
                f"then {kept}.", EXIT_FAILED)
    if error.errno in (errno.EMFILE, errno.ENFILE):
        return (f"{where}: this process may open no more files (`ulimit -n` is {_open_file_limit()}). Raise it "
                f"(e.g. `ulimit -n 4096`), or use fewer workers, then {kept}.", EXIT_FAILED)
    if error.errno == errno.ENAMETOOLONG:
        return (f"{where} (a file system allows 255 bytes per name and 4096 per path, and w2v2ser adds names of its "
                f"own inside a store or run folder). Give a shorter path, then rerun.", EXIT_INPUT)
    if not error.filename:
        return None
    where = f"{error.filename}: {error.strerror}"
    if error.errno == errno.EROFS:
        return (f"{where}. Write elsewhere ({_OTHER_OUTPUT}), then rerun.", EXIT_INPUT)
    if error.errno in (errno.EACCES, errno.EPERM):
        return (f"{where}. Use a path this user may read and write ({_OTHER_OUTPUT}), or fix its "
                f"permissions, then rerun.", EXIT_INPUT)
    if error.errno == errno.EEXIST and os.path.islink(error.filename) and not os.path.exists(error.filename):
        return (f"{error.filename} is a symbolic link to {os.readlink(error.filename)}, which does not exist. "
                f"Point the link at a folder, or give another path, then rerun.", EXIT_INPUT)
    if error.errno in (errno.EEXIST, errno.ENOTDIR) and not os.path.isdir(error.filename):
        # mkdir of an --out, --store or --work-dir that names a file, or a path through a file.
        return (f"{error.filename}: it, or a folder above it, is a file; expected a folder. Give another path, "
                f"or move the file, then rerun.", EXIT_INPUT)
    if error.errno == errno.EISDIR:
        return (f"{where}; expected a file path there. Give the file's own name (e.g. {error.filename}/"
                f"out.h5, or another name beside the folder), then rerun.", EXIT_INPUT)
    return None


class DiskFullError(W2v2serError, OSError):
    """A full disk, a full quota or a per-file size limit (``errno`` one of FULL_DISK_ERRNOS) hit while
    w2v2ser wrote into ``filename``: the file, or the folder being written where the library that
    wrote named none (keras, PIL and zarr raise these without a file name). An OSError still, with
    the original errno; its message says what to free, and that finished work is kept."""

    exit_code = EXIT_FAILED

    def __str__(self) -> str:
        described = describe_path_error(self)
        return described[0] if described else super().__str__()


@contextmanager
def naming_full_disk(folder: str | os.PathLike) -> Iterator[None]:
    """Raise a full disk, a full quota or a file size limit met inside as a :class:`DiskFullError`
    that names the file, or ``folder`` (the run or report folder being written) where the error
    named no file."""
    try:
        yield
    except OSError as error:
        if error.errno not in FULL_DISK_ERRNOS or isinstance(error, DiskFullError):
            raise
        raise DiskFullError(error.errno, error.strerror or os.strerror(error.errno),
                            error.filename or str(folder)) from error


def names_full_disk(argument: str = "out") -> Callable[[Callable], Callable]:
    """Decorator: the function's full disk errors name the folder it was given as ``argument``
    (see :func:`naming_full_disk`), for the API and the command line alike."""

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: object, **kwargs: object) -> object:
            with naming_full_disk(signature.bind(*args, **kwargs).arguments[argument]):
                return function(*args, **kwargs)

        return wrapper

    return decorate


def _open_file_limit() -> str:
    """This process's soft limit of open files, for a message."""
    try:
        import resource

        return str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    except (ImportError, OSError, ValueError):
        return "low"


def _library_did_not_fit(error: BaseException) -> bool:
    """Whether ``error`` is the dynamic loader's failure to map a shared library into memory:
    under `ulimit -v` / `prlimit --as`, ``import tensorflow`` raises ImportError("libtensorflow_cc.so.2:
    failed to map segment from shared object"), or "cannot allocate memory" (ENOMEM). Only while this
    process has a finite RLIMIT_AS or RLIMIT_DATA: glibc's "cannot allocate memory in static TLS block"
    (fixed with LD_PRELOAD) and a library on a noexec mount ("...: Operation not permitted") are not
    about memory, and keep their traceback."""
    if not isinstance(error, ImportError) or isinstance(error, ModuleNotFoundError):
        return False
    text = str(error).lower().rstrip(" .")
    if (not ("failed to map segment" in text or "cannot allocate memory" in text) or "static tls" in text
            or text.endswith(("operation not permitted", "permission denied"))):
        return False
    try:
        import resource

        return any(resource.getrlimit(limit)[0] != resource.RLIM_INFINITY
                   for limit in (resource.RLIMIT_AS, resource.RLIMIT_DATA))
    except (ImportError, AttributeError, OSError, ValueError):
        return False


def _thread_pool_did_not_start(error: BaseException) -> bool:
    """Whether ``error`` is a Rust library's panic for a thread pool it could not start: under
    `prlimit --as=1G`, opening a store raised zarrs' ``pyo3_runtime.PanicException("The global thread
    pool has not been initialized.: ThreadPoolBuildError { ... WouldBlock ... }")``, a BaseException."""
    text = str(error)  # rayon's GlobalPoolAlreadyInitialized is a ThreadPoolBuildError too, and no limit
    return (type(error).__name__ == "PanicException" and "ThreadPoolBuildError" in text
            and ("IOError" in text or "os error" in text))


def describe_error(error: BaseException) -> tuple[str, int] | None:
    """One-line message and exit code of an error that w2v2ser reports without a traceback: a
    ``W2v2serError``, a missing optional dependency, or a path that cannot be written. None for
    any other error (a bug: its traceback is the report)."""
    if isinstance(error, W2v2serError):
        return str(error), error.exit_code
    if isinstance(error, ModuleNotFoundError):
        from w2v2ser._deps import missing_dependency_error  # _deps imports this module

        missing = missing_dependency_error(error)
        return None if missing is None else (str(missing), missing.exit_code)
    if isinstance(error, OSError):
        return describe_path_error(error)
    if (isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and "can't start new thread" in str(error))
            or _library_did_not_fit(error) or _thread_pool_did_not_start(error)):
        # A memory limit (`ulimit -v`, a job's --mem) hits numpy allocations, thread stacks and the
        # mapping of a native library (TensorFlow's, torch's) alike.
        if isinstance(error, ImportError):  # an import, not a batch: only the limit is to change
            return (f"out of memory while loading a native library ({error}): raise the limit (`ulimit -v`, the "
                    f"job's --mem), then rerun the same command.", EXIT_FAILED)
        what = ("out of memory" if isinstance(error, MemoryError)
                else "no new thread could start (out of memory or threads)")
        return (f"{what}: raise the limit (`ulimit -v`, `ulimit -u`, the job's --mem) or use less (lower "
                f"--batch-seconds, --decode-workers or --cpu-workers for extract, --threads for train), then rerun "
                f"the same command: finished work is kept.", EXIT_FAILED)
    return None


def error_text(error: BaseException, *, otherwise: str | None = None) -> str:
    """The one-line message :func:`describe_error` gives ``error`` (a path error names the file and the
    fix), or ``otherwise`` (default: the error's own text) for an error it does not describe.

    Args:
        error: The error.
        otherwise: The text for an error :func:`describe_error` leaves alone.
    """
    described = describe_error(error)
    if described:
        return described[0]
    return str(error) if otherwise is None else otherwise

def did_you_mean(value: object, choices: Iterable[object], *, cutoff: float = 0.6,
                 canonical: Mapping[str, str] | None = None) -> str:
    """`` Did you mean 'x'?`` for the closest choice, or "" when none is close.

    ``canonical`` maps aliases among the choices to the name to suggest instead (e.g. val -> validation).
    """
    # Case-blind: 'RAVDESS' is close to 'ravdess' (difflib alone scores it 0).
    by_folded = {str(c).casefold(): str(c) for c in reversed(list(choices))}
    close = difflib.get_close_matches(str(value).casefold(), list(by_folded), n=1, cutoff=cutoff)
    if not close:
        return ""
    found = by_folded[close[0]]
    return f" Did you mean {(canonical or {}).get(found, found)!r}?"


def first_few(items: Sequence[str], n: int = 3) -> str:
    """The first ``n`` items, comma separated, then ", ..." if there are more: for a message that
    gives the count beside them."""
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask (containers, SLURM jobs whose tasks are
    bound to cores) and, inside a SLURM job, no more than the job was given (``SLURM_CPUS_PER_TASK``,
    else ``SLURM_CPUS_ON_NODE``). A SLURM without task binding (``TaskPlugin=task/none``) leaves the
    mask at the whole node: a 16-core job on a 128-core node started a local cluster for 128."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    if os.environ.get("SLURM_JOB_ID"):
        for name in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
            given = os.environ.get(name, "").strip()
            if given.isdigit() and int(given) > 0:
                cores = min(cores, int(given))
                break
    return max(1, cores)


# Packages whose versions change a stage's numbers; each name with its alternatives (the first installed counts).
STAGE1_PACKAGES = (("numpy",), ("torch",), ("transformers",), ("opensmile",), ("soundfile",))
STAGE2_PACKAGES = (("numpy",), ("tensorflow", "tensorflow-cpu", "tensorflow-macos"), ("keras",))
# Environment variables that change numbers or thread counts.
_PROVENANCE_ENV = ("TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "SLURM_CPUS_PER_TASK",
                   "CUDA_VISIBLE_DEVICES")


_SOURCE: list[dict | None] = []  # the git revision of w2v2ser's source, looked up once per process
_GIT_LOCAL_ENV = frozenset(  # `git rev-parse --local-env-vars` (git 2.39)
    "GIT_ALTERNATE_OBJECT_DIRECTORIES GIT_CONFIG GIT_CONFIG_PARAMETERS GIT_CONFIG_COUNT GIT_OBJECT_DIRECTORY "
    "GIT_DIR GIT_WORK_TREE GIT_IMPLICIT_WORK_TREE GIT_GRAFT_FILE GIT_INDEX_FILE GIT_NO_REPLACE_OBJECTS "
    "GIT_REPLACE_REF_BASE GIT_PREFIX GIT_INTERNAL_SUPER_PREFIX GIT_SHALLOW_FILE GIT_COMMON_DIR".split())


def source_revision() -> dict | None:
    """``{"commit": SHA, "dirty": bool}`` of the git checkout w2v2ser runs from (an editable install,
    where the version number alone does not name the code), or None: installed from a wheel, or
    no git. ``dirty``: tracked files differ from the commit."""
    import subprocess

    if _SOURCE:
        return _SOURCE[0]
    package = Path(__file__).resolve().parent
    # GIT_DIR, GIT_WORK_TREE or GIT_INDEX_FILE (set in a git hook, `git rebase -x`) override -C: another
    # repository's commit was recorded. Only the repository's own variables go (`git rev-parse
    # --local-env-vars`): GIT_CONFIG_GLOBAL (a container's safe.directory), GIT_EXEC_PATH and
    # GIT_CEILING_DIRECTORIES stay. No optional locks: `git status` took .git/index.lock to refresh
    # the index, so many jobs started from one checkout failed the user's own `git commit`.
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCAL_ENV}
    env["GIT_OPTIONAL_LOCKS"] = "0"  # --no-optional-locks, which a git before 2.15 refuses (this it ignores)
    found = None
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=10,
                                  check=True, stdin=subprocess.DEVNULL, env=env).stdout

        git("ls-files", "--error-unmatch", "__init__.py")  # tracked here, not a copy inside some work tree
        found = {"commit": git("rev-parse", "HEAD").strip(),
                 "dirty": bool(git("status", "--porcelain", "--untracked-files=no").strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    _SOURCE.append(found)
    return found


def provenance(packages: Sequence[Sequence[str]], *, threads: Mapping[str, object] | None = None) -> dict:
    """What a result was made with, to reproduce it: w2v2ser's and ``packages``' versions (read from
    their installed metadata, so nothing is imported: stage 2 never loads torch), the git commit of
    a checkout it runs from (:func:`source_revision`), Python, the
    command line, host, usable cores, ``threads`` (the thread counts the caller resolved) and the
    environment variables that change numbers (oneDNN, thread counts)."""
    import importlib.metadata
    import platform

    from w2v2ser import __version__

    versions: dict[str, str | None] = {"w2v2ser": __version__}
    for names in packages:
        versions[names[0]] = None
        for name in names:
            try:
                versions[names[0]] = importlib.metadata.version(name)
                break
            except (importlib.metadata.PackageNotFoundError, ValueError):
                continue
    return {"versions": versions, "source": source_revision(), "python": platform.python_version(),
            "argv": list(sys.argv),
            "host": platform.node(), "platform": platform.platform(), "usable_cores": usable_cores(),
            "threads": dict(threads or {}), "env": {k: os.environ[k] for k in _PROVENANCE_ENV if k in os.environ}}


def die_with_parent(signum: int = signal.SIGKILL, *, parent: int | None = None) -> None:
    """Ask Linux to send this process ``signum`` when its parent dies (no-op elsewhere), even when
    the parent is killed with SIGKILL and cannot stop its children itself.

    A killed `w2v2ser run` must not leave workers behind that keep writing into a store while a
    rerun plans the same work, nor a killed `predict` its extraction child.

    Args:
        signum: The signal to receive.
        parent: The parent's PID, when the caller knows it (else the parent seen just before the
            request: multiprocessing's parent is not the OS parent under forkserver). A parent
            that died before the request sent no signal, so the process then exits; comparing
            with the known parent (not with PID 1) keeps a child of PID 1 (a container's
            entrypoint) or of a subreaper alive.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    if parent is None:
        parent = os.getppid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signum))  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != parent:  # the parent died before prctl: nobody will send the signal
        os._exit(1)


# A progress bar in a log file (a cluster job's stderr) prints a line this often, in seconds; work
# that ends sooner prints none (its summary line says enough).
LOG_PROGRESS_SECONDS = 60.0


class _LogLines:
    """tqdm's output as whole lines, for a stream that is not a terminal: each refresh is one line;
    carriage returns and cursor moves (which run bars together in a job log) are dropped."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\x1b[A", "").replace("\r", "").strip()
        count = line.split(" [", 1)[0]  # description, bar and n/total: the closing refresh repeats them
        if line and count != self.last:
            self.stream.write(line + "\n")
            self.last = count

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Iterable | None = None, *, desc: str, unit: str, total: int | None = None,
                 leave: bool = True) -> object:
    """A tqdm bar on stderr: live on a terminal; in a log file, a line every LOG_PROGRESS_SECONDS and
    a last one at the end, for work that lasts that long. ``leave=False`` clears a terminal bar
    when it closes (a summary line follows)."""
    from tqdm.auto import tqdm

    from ._native_logs import stderr_is_terminal

    if stderr_is_terminal():
        return tqdm(iterable, desc=desc, unit=unit, total=total, dynamic_ncols=True, leave=leave)
    # No ncols: a fixed width cut the postfix mid-word in job logs ("training=6/14 hea").
    return tqdm(iterable, desc=desc, unit=unit, total=total, file=_LogLines(sys.stderr),
                mininterval=LOG_PROGRESS_SECONDS, maxinterval=LOG_PROGRESS_SECONDS * 2, delay=LOG_PROGRESS_SECONDS)
