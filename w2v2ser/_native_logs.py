"""Keep TensorFlow's and absl's native (C++) start-up log lines out of the user's terminal.

Those lines (oneDNN, cpu_feature_guard, "All log messages before absl::InitializeLog()") are
written by C++ straight to file descriptor 2, before ``TF_CPP_MIN_LOG_LEVEL`` is read, by the
main process and by every Dask worker it starts. :func:`hide_native_logs` therefore points fd 2
at a pipe, which child processes inherit, and a small process (this file run as a script)
forwards everything except those lines. A process, not a thread: when native code aborts or
segfaults (out of memory or threads under ``ulimit -v``), its last words ("LLVM ERROR:
pthread_create failed", "terminate called ...") are still in the pipe, and a thread would die
with them unread. The forwarder then adds one line saying that the process ended abruptly.
``--verbose`` turns this off.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress

__all__ = ["expected_retracing", "hide_native_logs", "is_native_log_line", "native_logs_hidden",
           "quiet_known_warnings", "quiet_tensorflow_warnings", "stderr_is_terminal"]

_hidden = False  # hide_native_logs is active in this process: start Dask workers quiet too
_terminal: bool | None = None  # whether the real stderr (behind the pipe, while hidden) is a terminal

_NATIVE = re.compile(
    # absl / TF C++ log prefix; not F (fatal): a check failure's line is the reason of the abort that follows
    rb"(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+\s+\S+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow"  # cpu_feature_guard's 2nd line
    rb"|.*Memory patch applied)"
)


def _native_start(line: bytes) -> int:
    """Where a native log line starts in ``line`` (after a progress bar's text, if any), or -1."""
    tail_start = line.rfind(b"\r") + 1
    match = _NATIVE.match(line, tail_start)
    if match is None:
        match = _NATIVE.search(line, tail_start)  # glued to an unfinished progress-bar line
        if match is None or not line[match.start() - 1:match.start()].endswith((b"|", b"]", b" ")):
            return -1
    return match.start()


def is_native_log_line(line: bytes) -> bool:
    """True when ``line`` holds a TensorFlow/absl C++ log line (progress-bar text before it ignored)."""
    return _native_start(line) >= 0


def _pump(read_fd: int, write_fd: int) -> None:
    """Copy the pipe to the real stderr, line by line, dropping native log lines.

    The pipe is drained to its end even when the real stderr fails (a closed terminal, a full log
    disk): a pipe without a reader would fail every later stderr write of the command, and kill
    its native threads and child processes with SIGPIPE.
    """
    pending = b""
    writable = True

    def write(data: bytes) -> None:
        nonlocal writable
        if writable and data:
            try:
                os.write(write_fd, data)
            except OSError:
                writable = False  # nowhere to write: drop the rest, keep reading

    while True:
        try:
            chunk = os.read(read_fd, 1 << 16)
        except OSError:
            break
        if not chunk:
            break
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        out = []
        for line in lines:
            start = _native_start(line)
            out.append(line + b"\n" if start < 0 else line[:start])  # keep a progress bar's text
        redraw = pending.rfind(b"\r")  # progress bars redraw with \r and no newline: pass them on now
        if redraw >= 0:
            out.append(pending[: redraw + 1])
            pending = pending[redraw + 1:]
        write(b"".join(out))
    if pending:
        start = _native_start(pending)
        write(pending if start < 0 else pending[:start])
    os.close(read_fd)


# Said by the forwarding process when the pipe closed without the command's normal end.
_ABRUPT = (b"w2v2ser: error: the process ended abruptly (killed, or a crash in native code: the lines above say "
           b"which; running out of memory or threads is the usual cause: raise `ulimit -v`/`ulimit -u` or the "
           b"job's --mem, or lower --threads, --batch-seconds or the workers); ")
_RESUMES = "finished work is kept, rerun the same command to resume"

_lingering: list[subprocess.Popen] = []  # forwarders still draining helpers' lines: never reaped mid-run


def _forward(done_fd: int, after: str = _RESUMES) -> None:
    """The forwarding process: the pipe is its stdin, the real stderr its stdout. It outlives a
    crashed parent, drains the pipe to its end, and says so when the parent never sent "done",
    ending with ``after`` (what of the command's work is kept)."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"):  # ends with the pipe, never before
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    _pump(0, 1)
    if os.read(done_fd, 1) != b".":  # the parent closed its end without writing: it died
        with suppress(OSError):
            os.write(1, _ABRUPT + after.encode("utf-8", "replace") + b"\n")


def _start_forwarder(read_fd: int, real: int,
                     after: str = _RESUMES) -> tuple[subprocess.Popen | threading.Thread, int]:
    """The forwarding process (or, where none can start, a thread) and the fd to write "done" to."""
    done_read, done_write = os.pipe()
    try:
        process = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), str(done_read), after],
                                   stdin=read_fd, stdout=real, stderr=real, pass_fds=(done_read,),
                                   start_new_session=True)  # a terminal's Ctrl-C does not reach it
    except (OSError, ValueError, subprocess.SubprocessError):  # no process to spare (ulimit -u, no executable)
        os.close(done_write)
        thread = threading.Thread(target=_pump, args=(read_fd, real), name="w2v2ser-stderr", daemon=True)
        thread.start()
        return thread, -1
    finally:
        os.close(done_read)
    os.close(read_fd)
    return process, done_write


def quiet_tensorflow_warnings() -> None:
    """TensorFlow's Python-side warnings off in this process, e.g. "triggered tf.function retracing":
    every length bucket and every seed's model traces its own predict step, as intended."""
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


# Other libraries' warnings that say nothing a w2v2ser user can act on, as (message regex, category).
_KNOWN_WARNINGS = (
    # torch, at every WavLM batch with padding: transformers' WavLM attention passes a boolean key
    # padding mask beside its float position bias. A deprecation note for transformers; the
    # hidden states are right (tests/test_upstreams.py compares them with WavLM's own).
    (r"Support for mismatched key_padding_mask and attn_mask is deprecated", UserWarning),
)


def quiet_known_warnings() -> None:
    """Drop :data:`_KNOWN_WARNINGS` in this process (the CLI's and its Dask workers', not --verbose).

    Process-wide filters, installed before any thread starts: a filter set inside a worker thread
    with ``warnings.catch_warnings`` would not be thread safe. Without them, such a warning came
    back at every store write (each ``catch_warnings`` resets Python's shown-once registry).
    """
    for message, category in _KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


class _DropRetracing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


@contextmanager
def expected_retracing() -> Iterator[None]:
    """Drop TensorFlow's "triggered tf.function retracing" warning while active, and nothing else.

    For library calls (a head's fit and predict) whose retracing is by design: each call pads to
    its own longest utterance, and each fitted model traces its own steps.
    """
    logger, drop = logging.getLogger("tensorflow"), _DropRetracing()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def native_logs_hidden() -> bool:
    """Whether :func:`hide_native_logs` is active (Dask workers started now should be quiet too)."""
    return _hidden


def stderr_is_terminal() -> bool:
    """Whether this process's stderr reaches a terminal (the real one, while native logs are hidden)."""
    return _terminal if _terminal is not None else sys.stderr.isatty()


@contextmanager
def hide_native_logs(enabled: bool = True, *, abrupt_end: str = _RESUMES) -> Iterator[None]:
    """Filter native log lines out of fd 2 (this process and the processes it starts) while active.

    Args:
        enabled: False (``--verbose``) leaves fd 2 alone.
        abrupt_end: the end of the line said when the process dies without its normal end (what of
            its work is kept); by default, that finished work is kept for a rerun to resume.
    """
    if not enabled or sys.stderr is None:  # no stderr (closed, an embedding host): nothing to filter
        yield
        return
    global _hidden, _terminal
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # what TF does read, once absl is up
    quiet_tensorflow_warnings()
    quiet_known_warnings()
    sys.stderr.flush()
    real = os.dup(2)
    read_fd, write_fd = os.pipe()
    pump, done = _start_forwarder(read_fd, real, abrupt_end)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    _hidden, _terminal = True, os.isatty(real)
    wait = 5.0
    try:
        yield
    except BaseException:
        # Interrupted or failed: helper processes (openSMILE workers) may hold the pipe until this
        # process exits; the pump (a daemon) still passes their lines on until then, so do not wait
        # for them. A job's time limit leaves seconds between SIGTERM and SIGKILL.
        wait = 0.5
        raise
    finally:
        _hidden, _terminal = False, None
        sys.stderr.flush()
        if done >= 0:
            os.write(done, b".")  # a normal end: the forwarder adds no "ended abruptly" line
            os.close(done)
        os.dup2(real, 2)  # closes this process's write end; the pump ends when children close theirs
        if isinstance(pump, threading.Thread):
            pump.join(timeout=wait)
            if not pump.is_alive():
                os.close(real)
        else:
            os.close(real)  # the forwarder holds its own copy
            try:
                pump.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                _lingering.append(pump)


if __name__ == "__main__":  # the forwarding process of hide_native_logs
    _forward(int(sys.argv[1]), *sys.argv[2:3])
