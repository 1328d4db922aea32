"""What every part of w2v2ser shares: the error hierarchy, did-you-mean hints, atomic writes,
the command line of a child Python process and the memory available to this process.

This module imports only the standard library, so both stages (stage 1 never imports
TensorFlow, stage 2 never imports torch) and the store use it.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "FULL_DISK_ERRNOS",
    "ConfigError",
    "DataError",
    "EXIT_FAILED",
    "EXIT_INPUT",
    "LOST_WORKER_FIX",
    "SHARD_SIZE",
    "SHOWN_LINES",
    "SILENCE_ADVICE",
    "SPEAKER_CASE_ADVICE",
    "Terminated",
    "UPSTREAM_FEATURES",
    "W2v2serError",
    "as_paths",
    "case_variants",
    "describe_error",
    "describe_path_error",
    "die_with_parent",
    "did_you_mean",
    "file_sha256",
    "file_url_path",
    "first_few",
    "or_list",
    "owner_tag",
    "provenance",
    "short_name",
    "stop_requested",
    "spelling_key",
    "subset_text",
    "python_command",
    "remove_stale",
    "fsync_path",
    "prefer_onednn",
    "progress_bar",
    "publish_directory",
    "replacing",
    "usable_cores",
    "variants_differ",
    "without_invisible",
    "write_atomically",
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


def make_folder(path: str | os.PathLike) -> Path:
    """``mkdir -p`` of a folder w2v2ser writes into (an ``--out``, an output file's folder).

    Raises:
        ConfigError: no folder can be made there: the file system takes none (/proc, /sys, an
            automount path) or the current folder was deleted. mkdir says "No such file or
            directory" then, which is no fix. Other errors (permission, a file in the way) are
            raised as they are: the command line describes them (:func:`describe_path_error`).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileNotFoundError as error:
        raise ConfigError(f"cannot create the folder {path}: no folder can be made at {error.filename} (a virtual "
                          f"file system such as /proc or /sys, an automount path, or a current folder that was "
                          f"deleted). Give a path on a normal disk ({_OTHER_OUTPUT}), then rerun.") from None
    return path


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


def as_paths(value: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Paths from one path or an iterable of them: a bare string is one path, never one per
    character (iterating "runs/a" gives "/", and a walk of the whole file system)."""
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    return [Path(v) for v in value]


def file_url_path(text: str) -> str:
    """The local path of a ``file://`` URL (``file:///data/x`` and ``file://localhost/data/x`` are
    /data/x), any other text as it is. Raises ValueError for one that names another host (it was
    taken as the relative path ``host/x``)."""
    if not text.startswith("file://"):
        return text
    host, slash, path = text.removeprefix("file://").partition("/")
    if host not in ("", "localhost"):
        raise ValueError(f"{text!r} names the host {host!r}, but w2v2ser reads file:// URLs on this machine "
                         f"only. Write file:///path (three slashes: no host) or the path itself; for another "
                         f"machine's folder, give the path where it is mounted here")
    return slash + path


def first_few(items: Sequence[str], n: int = 3) -> str:
    """The first ``n`` items, comma separated, then ", ..." if there are more: for a message that
    gives the count beside them."""
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def failures_by_error(failures: Sequence[tuple[str, str]], n: int = 3) -> list[str]:
    """``NAME: ERROR``, or ``COUNT x (first few names): ERROR``, for each distinct error of the failed tasks
    ``(name, error)``, in the order first seen: the work left that was cancelled at once (no SLURM worker
    left) is one entry, not one per task."""
    names: dict[str, list[str]] = {}
    for name, error in failures:
        names.setdefault(error, []).append(name)
    return [f"{those[0]}: {error}" if len(those) == 1 else f"{len(those)} x ({first_few(those, n)}): {error}"
            for error, those in names.items()]


def spelling_key(name: str) -> str:
    """The key under which two spellings of one label or speaker meet: case-folded, and a whole
    number without its leading zeros (``007`` and ``7``: a spreadsheet drops them when it opens a CSV),
    in one Unicode form (NFC: ``é`` typed as one character or as ``e`` + accent, as macOS file names
    give it; full-width ``１`` as ``1``: they look alike but were two classes), without invisible
    characters (:func:`without_invisible`: a zero-width space pasted from a web page or a document).
    Not NFKC as a whole, which made ``x²`` and ``x2`` one spelling (see :func:`_visible`)."""
    folded = _visible(name).casefold()
    if folded.isascii() and folded.isdigit():
        return folded.lstrip("0") or "0"
    return folded


# Invisible characters that are never part of a spelling: soft hyphen, Arabic letter mark, zero-width
# space, direction marks and embeddings, word joiner, BOM. Not the zero-width non-joiner and joiner U+200C/U+200D,
# which change how the letters beside them are drawn (Persian, Indic scripts, emoji): they are seen.
_INVISIBLE = frozenset("\u00ad\u061c\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069\ufeff")


def control_character(text: str) -> str | None:
    """The first line break, tab or other control character (NUL included) of ``text``, or None.

    An utterance id holding one cannot be shown in logs or ``predictions.csv``, nor matched by
    ``--subset id=...``: the CSV reader and :meth:`StoreWriter.plan` (every library path) refuse it.
    """
    return next((c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)


def without_invisible(text: str) -> str:
    """``text`` without the invisible characters that are never part of a spelling (a zero-width
    space pasted from a web page, the BOM of files joined with ``cat``, a soft hyphen)."""
    return "".join(c for c in text if c not in _INVISIBLE)


def _visible(name: str) -> str:
    """``name`` in Unicode form NFC, full-width forms (U+FF00-U+FFEF: ``１`` as ``1``) and Latin
    ligatures (U+FB00-U+FB06: ``ﬁ`` copied from a PDF as ``fi``) as their NFKC equivalents, without
    invisible characters (:func:`without_invisible`). Other compatibility forms look otherwise
    (``x²``, ``①``): NFKC as a whole made ``x²`` and ``x2`` one spelling."""
    text = "".join(unicodedata.normalize("NFKC", c) if "\uff00" <= c <= "\uffef" or "\ufb00" <= c <= "\ufb06" else c
                   for c in unicodedata.normalize("NFC", str(name)))
    return without_invisible(unicodedata.normalize("NFC", text))


def case_variants(names: Iterable[str]) -> list[list[str]]:
    """Groups of two or more of ``names`` that differ only in case (``Spk1``, ``spk1``) or, for
    numbers, in leading zeros (``07``, ``7``), each sorted, in the order of their first spelling: one
    label or speaker written two ways (see :func:`spelling_key`)."""
    spellings: dict[str, set[str]] = {}
    for name in sorted(set(names)):
        spellings.setdefault(spelling_key(name), set()).add(name)
    return [sorted(group) for group in spellings.values() if len(group) > 1]


def variants_differ(groups: Iterable[Sequence[str]]) -> str:
    """How the spellings of :func:`case_variants`' ``groups`` differ, for "differ only in ...":
    ``case``, ``leading zeros`` or ``case or leading zeros``; ``Unicode form`` for spellings that look
    alike (see :func:`spelling_key`). A group that differs in several ways names each (``case and
    Unicode form``): naming one, the next run refused the corrected names for the other."""
    def zeros(name: str) -> str:
        return (name.lstrip("0") or "0") if name.isascii() and name.isdigit() else name

    def fold(name: str) -> str:
        return "".join(c if "\ufb00" <= c <= "\ufb06" else c.casefold() for c in name)

    kinds = set()
    for group in groups:  # a kind of difference is there when the others alone do not make the names one
        visible = {_visible(name) for name in group}
        found = ["case"] if len({zeros(name) for name in visible}) > 1 else []
        found += ["leading zeros"] if len({name.casefold() for name in visible}) > 1 else []
        # casefold alone also joins some forms ('ﬁ' and 'fi'): fold the case but keep the ligatures, and
        # names that _visible joins differ in form too
        unicode = len({zeros(fold(name)) for name in group}) > 1 or len(visible) < len(set(group))
        found += ["Unicode form (an accent as its own character, full-width or invisible characters)"] * unicode
        kinds.add(" and ".join(found))
    return " or ".join(sorted(kinds - {""})) or "case"


def or_list(items: Sequence[str]) -> str:
    """``a, b or c`` (``a`` alone; empty for none): a registry's names in a message."""
    items = list(items)
    return " or ".join(filter(None, [", ".join(items[:-1]), items[-1]])) if items else ""


def short_name(name: str, limit: int = 200) -> str:
    """``name``, or when longer than ``limit`` bytes (UTF-8) its start and a hash of the whole: for a
    name derived from a user's name (``.NEW.upgrading``, ``confusion_RUN.png``), which must stay
    under the file system's 255 bytes when the user's name itself is a valid one. Deterministic:
    the same name gives the same short one. A suffix (``.png``) is kept."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) <= limit:
        return name
    stem, dot, suffix = name.rpartition(".")
    suffix = f".{suffix}" if dot and stem and len(suffix) <= 10 else ""
    digest = hashlib.sha256(encoded).hexdigest()[:12]
    room = limit - len(suffix.encode("utf-8", "surrogateescape")) - len(digest) - 1
    head = encoded[:room].decode("utf-8", "ignore")  # not cut inside a character
    return f"{head}-{digest}{suffix}"


def file_sha256(path: str | os.PathLike, *, block_size: int = 1 << 22) -> str:
    """Lowercase hex SHA-256 of a file's bytes, read in blocks (constant memory).

    Raises:
        OSError: The file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_size):
            digest.update(block)
    return digest.hexdigest()


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


def fsync_path(path: str | os.PathLike) -> None:
    """fsync one file or folder: a folder's fsync makes a rename or new file inside it durable
    (a no-op where folders cannot be opened, or the file system cannot sync them).

    Raises:
        OSError: the fsync failed otherwise (EIO, ENOSPC...): what was written may be lost.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as error:
        # EINVAL / ENOTSUP / ENOSYS: a file system that cannot sync a folder (or a special file, or
        # a FUSE file system without fsync); nothing to make durable there. Anything else must not
        # let a commit record follow the data.
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def _new_file_mode() -> int:
    """Mode of a file made with open(): 0o666 less the umask (mkstemp's 0o600 would hide the
    stores and runs of one user from the rest of a group on a shared file system)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:  # reads the umask without setting it
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)  # elsewhere: the classic read-by-setting
    os.umask(umask)
    return 0o666 & ~umask


def owner_tag() -> str:
    """``PID-HOST``, this process and a hash of this host's name and PID namespace, for the name of
    a temp file or folder that a killed process leaves behind: :func:`remove_stale` removes it once
    that process is gone. The namespace is part of it because containers may share a host name
    while each has its own PIDs: a PID not seen from here is then no proof that its owner is gone."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux, or /proc not mounted
        namespace = 0
    return f"{os.getpid()}-{zlib.crc32(f'{socket.gethostname()} {namespace}'.encode()):08x}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (EPERM): alive
        return True
    return True


def remove_stale(folder: str | os.PathLike, prefix: str, suffix: str = "") -> int:
    """Remove the entries of ``folder`` named ``prefix + owner_tag() + "." + random + suffix`` (as
    :func:`replacing` and predict name their temp files and folders) whose process is gone: left by
    one killed with SIGKILL. Entries of live processes (a concurrent run), of other hosts (a shared
    file system), of other PID namespaces (containers) and of other names are kept. Returns how
    many were removed."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)-([0-9a-f]{8})\.[A-Za-z0-9_]+" + re.escape(suffix))
    host = owner_tag().split("-", 1)[1]
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        found = pattern.fullmatch(name)
        if found is None or found[2] != host or _alive(int(found[1])):
            continue
        stale = Path(folder, name)
        try:
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()
            removed += 1
        except OSError:  # gone meanwhile, or not ours to remove
            pass
    return removed


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


def format_size(n: int) -> str:
    """Bytes in MB, or in kB below 0.1 MB (a small store or a `ulimit -f 20` read "0.0 MB")."""
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def link_target(path: str | os.PathLike) -> Path:
    """The file a user's output path names: the file a symbolic link points to, as `>` writes it.

    Raises:
        ConfigError: ``path`` is a link that loops, or points into a folder that does not exist
            (`>` fails there too; making that folder would build a tree the user never asked for).
    """
    path = Path(path)
    if not path.is_symlink():
        return path
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ConfigError(f"{path} is a symbolic link that loops (through {os.readlink(path)}); remove or "
                              f"fix the link, or give another path, then rerun.") from None
    target = Path(os.path.realpath(path))
    if not target.parent.is_dir():
        raise ConfigError(f"{path} is a symbolic link to {target}, whose folder {target.parent} does not exist. "
                          f"Create that folder, point the link elsewhere, or give another path, then rerun.")
    return target


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is fsynced and renamed over ``path``.

    The one fsync-and-rename path: readers see the old file or the new one, never half. On
    any error the temp file is removed and ``path`` is untouched.

    Args:
        path: Destination file; its folder is created if needed. It gets the mode of the file it
            replaces, or that of a new file (0o666 less the umask). A symbolic link there is
            replaced itself (a store's own files: a store copied as links leaves its source
            alone); to write the file it points to, pass :func:`link_target` of it.
        durable: fsync the file and its folder (off only for throwaway files).
    """
    path = Path(path)
    if path.is_dir():  # before any work: os.replace would refuse it only at the end
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    if path.exists() and not path.is_file():
        # os.replace would swap a device, FIFO or socket for a regular file: as root,
        # `store export STORE /dev/null` replaced the system's /dev/null.
        raise ConfigError(f"{path} is not a regular file (a device, FIFO or socket); w2v2ser writes a new file and "
                          f"renames it over the old one, which would remove it. Give the path of a regular file "
                          f"(or a new one), then rerun.")
    make_folder(path.parent)
    # The temp files of writers of this path killed with SIGKILL (a big export's partial copy).
    # At most 200 bytes of the name: with the tag and mkstemp's letters the temp name stays
    # within NAME_MAX (255 bytes) for every valid target name.
    prefix = f".{short_name(path.name, 200)}."
    remove_stale(path.parent, prefix, ".tmp")
    try:
        fd, name = tempfile.mkstemp(prefix=f"{prefix}{owner_tag()}.", suffix=".tmp", dir=path.parent)
    except FileNotFoundError as error:  # a folder that takes no new files (/proc, /sys): say so, one line
        raise PermissionError(errno.EACCES, "no new file can be created in this folder", str(path)) from error
    except OSError as error:  # no permission, a read-only mount: name the file meant, not the temp name
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise type(error)(error.errno, error.strerror, str(path)) from error
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with contextlib.suppress(OSError):  # keep a replaced file's mode, else what open() would give
            os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else _new_file_mode())
        if durable:
            fsync_path(tmp)
        try:
            os.replace(tmp, path)
        except OSError as error:  # name the file meant, not the temp file (removed below) the user never made
            raise type(error)(error.errno, _replace_refused(error, path), str(path)) from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(path.parent)


def _replace_refused(error: OSError, path: Path) -> str:
    """The reason a rename over ``path`` failed, with why when it is another user's file in a
    folder with the sticky bit (/tmp, a shared scratch folder): only its owner may replace it."""
    reason = error.strerror or str(error)
    if error.errno in (errno.EPERM, errno.EACCES):
        with contextlib.suppress(OSError):
            if path.parent.stat().st_mode & 0o1000 and path.stat().st_uid != os.geteuid():
                reason += (" (it is another user's file in a folder with the sticky bit, like /tmp: only its owner "
                           "may replace it; give another file name)")
    return reason


def publish_directory(tmp: Path, target: Path) -> Path:
    """Move a finished folder into place, replacing an older one (e.g. a stale run directory).

    The old folder is renamed aside first and then deleted, so ``target`` is at every moment
    either the old complete folder, absent, or the new complete one.
    """
    if target.exists():
        # (a 250-byte name is valid); a killed process's leftover goes with remove_stale(..., ".NAME.old-")
        trash = target.with_name(f".{short_name(target.name)}.old-{owner_tag()}.dir")
        os.rename(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.rename(tmp, target)
    fsync_path(target.parent)
    return target


def write_atomically(path: str | os.PathLike, data: str | bytes | Callable[[IO[bytes]], None], *,
                     durable: bool = True) -> Path:
    """Replace ``path`` with new content so that readers see the old file or the new one, never half.

    The content goes to a temp file in the same folder, is flushed and fsynced, then renamed over
    ``path`` (and the folder fsynced, when ``durable``). On any error the temp file is removed.

    Args:
        path: Destination file; its folder is created if needed.
        data: Text (written as UTF-8), bytes, or a function that writes into a binary file object
            (e.g. ``lambda f: fig.savefig(f, format="png")``).
        durable: fsync the file and its folder (off only for throwaway files).

    Returns:
        ``path`` as a Path.
    """
    with replacing(path, durable=durable) as tmp, open(tmp, "wb") as handle:
        if callable(data):
            data(handle)
        else:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


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


def subset_condition(text: str) -> tuple[str, list[str]]:
    """An argparse type: ``--subset FIELD=VALUE[,VALUE...]`` -> (field, values)."""
    import argparse

    key, sep, values = text.partition("=")
    names = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not names:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE[,VALUE...], e.g. vocal_channel=speech, got {text!r}")
    return key.strip(), names


def path_argument(text: str) -> str:
    """An argparse type: a path that is not empty. An empty one (``--out "$OUT"`` with OUT unset)
    was the current folder: train and evaluate wrote their files into it, extract read it."""
    import argparse

    if not str(text).strip():  # (a Path in a test's argv is taken as it is)
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r} (an unset or empty shell variable?)")
    return text


def merge_subset(conditions: Iterable[tuple[str, list[str]]]) -> dict[str, list[str]]:
    """``--subset`` conditions as a subset mapping; a field given twice takes the values of both."""
    subset: dict[str, list[str]] = {}
    for key, names in conditions:
        subset.setdefault(key, []).extend(names)
    return subset


def subset_text(subset: Mapping[str, str | Iterable[object]]) -> str:
    """``method=improvised; speaker=Ses01F,Ses01M``: a subset as messages and reports name it.

    A field's value may be one string or a list of values (a config file allows both).
    """
    return "; ".join(f"{key}={value if isinstance(value, str) else ','.join(map(str, value))}"
                     for key, value in sorted(subset.items()))
