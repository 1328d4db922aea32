"""The ``w2v2ser`` command line: parse arguments, build configs, call library functions.

Stage modules are imported inside each command so that ``w2v2ser store info`` never
loads torch or TensorFlow, and stage 2 commands never load torch. This module is the entry
point (:func:`main`): it runs the parsed command, guards standard output and turns errors,
stops and signals into one line and an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from w2v2ser._cli_parser import build_parser
from w2v2ser._cli_signals import _TERMINATING, _received, _sigterm_raises, _what_a_stop_keeps
from w2v2ser._common import EXIT_FAILED


def _open_closed_std_streams() -> None:
    """Point a closed standard stream (``2>&-``, ``>&-``: some daemons, cron and scheduler wrappers) at
    /dev/null. Python then sets ``sys.stderr``/``sys.stdout`` to None, and the first message or flush
    failed before any work was done (exit 1, nothing said): now the output is dropped and the command
    runs, with its own exit code."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        try:
            os.fstat(fd)
        except OSError:  # closed: the descriptor is free, so /dev/null takes it (native code writes there too)
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115 (process-long)
        else:  # open, but not as a standard stream (an embedding host): leave the descriptor alone
            setattr(sys, name, open(os.devnull, "r" if fd == 0 else "w"))  # noqa: SIM115


def _restart_in_utf8_mode() -> None:
    """Run the command again in Python's UTF-8 mode when the locale's encoding is not UTF-8
    (``LANG=en_US.ISO-8859-1``, ``LC_ALL=C PYTHONUTF8=0``).

    Python decodes arguments and file names with that encoding, while zarrs, tensorstore and
    pyarrow encode the names they are given as UTF-8: a store under ``données/`` then read as
    missing chunks ("damaged"), an extraction into it failed at its end, and ``--subset
    label=colère`` matched no label. The standard streams keep the locale's encoding."""
    encoding = sys.getfilesystemencoding().lower().replace("-", "").replace("_", "")
    orig_argv = getattr(sys, "orig_argv", None)
    if sys.flags.utf8_mode or encoding == "utf8" or not orig_argv or not _reruns_as_the_command():
        return
    os.environ["PYTHONUTF8"] = "1"  # child processes (eGeMAPS, Dask workers) read names as UTF-8 too
    if sys.stdout is not None:
        os.environ.setdefault("PYTHONIOENCODING", sys.stdout.encoding)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    os.execv(sys.executable, [sys.executable, "-X", "utf8", *orig_argv[1:]])


def _reruns_as_the_command() -> bool:
    """Whether running this process's command line again runs this command and nothing else: the console script,
    ``python -m w2v2ser`` or predict's stage 1 child. Not a program read from standard input (gone: the command
    silently did not run) or typed at the prompt, nor a script of the user's that calls ``main()`` (what it did
    before would be done twice); these run on in the locale's encoding, as Python code does."""
    program = sys.modules.get("__main__")
    if getattr(getattr(program, "__spec__", None), "name", None) == "w2v2ser.__main__":
        return True
    file = getattr(program, "__file__", None)  # the console script's own file; sys.argv[0] may be set by a script
    if file is None:  # python -c: predict's child names its module as sys.argv[0] (w2v2ser._process.python_command)
        return sys.argv[0] == "w2v2ser._cli"
    return os.path.basename(file).startswith("w2v2ser")


def _unencodable_escaped() -> None:
    """Standard output and error write a character their encoding lacks (``PYTHONIOENCODING=ascii``,
    a Latin-1 terminal and a label ``怒り``) as ``\\u6012``, instead of ending the command with a
    traceback."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(OSError, ValueError):
                stream.reconfigure(errors="backslashreplace")


class _StdoutFailed(Exception):
    """Standard output cannot be written (``>/dev/full``, a full disk under a redirected log)."""


class _GuardedStdout:
    """``sys.stdout`` while a command runs: a failed write (other than a reader that left, which
    ``main`` reports as exit 141) raises :class:`_StdoutFailed`, so that it is one line on stderr
    rather than a traceback, and later writes (and Python's flush at exit) go to /dev/null."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _guarded(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except BrokenPipeError:
            raise
        except OSError as error:
            with contextlib.suppress(OSError, ValueError):  # the rest of the output, and the exit flush, dropped
                null = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(null, self._stream.fileno())
                finally:
                    os.close(null)
            raise _StdoutFailed(error.strerror or str(error)) from error

    def write(self, text: str) -> int:
        return self._guarded(lambda: self._stream.write(text))

    def flush(self) -> None:
        self._guarded(self._stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _guarded_stdout() -> Any:
    """:class:`_GuardedStdout` in place of ``sys.stdout`` while active."""
    stream = sys.stdout
    sys.stdout = _GuardedStdout(stream)
    try:
        yield
    finally:
        if isinstance(sys.stdout, _GuardedStdout):
            sys.stdout = stream


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``w2v2ser`` console script.

    Exit codes: 0 done; 1 a run failed (some unit of work failed, finished work is kept);
    2 bad input or configuration (nothing ran; the message says what to fix); 130 interrupted;
    141 the reader of standard output left (``| head``); 143 terminated (SIGTERM; 129 SIGHUP,
    131 SIGQUIT).
    """
    _open_closed_std_streams()
    if argv is None:  # the command itself, not a call from Python code
        _restart_in_utf8_mode()
    _unencodable_escaped()
    try:  # the parser imports the stages' modules (numpy, ...): seconds in which a Ctrl-C may land
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("w2v2ser: interrupted before the command started; nothing was done", file=sys.stderr)
        return 130
    verbose = bool(getattr(args, "verbose", False))
    try:
        with _sigterm_raises(), _guarded_stdout():
            code = _run_command(args, verbose)
            sys.stdout.flush()  # a reader that left shows here, not as an error at interpreter exit
        return code
    except _StdoutFailed as error:  # at the final flush; one inside the command is reported by _run_command
        print(f"w2v2ser: error: {_stdout_failed_message(error)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as stop:  # here, not inside: a Ctrl-C can also land while the native-log filter closes
        import logging
        import warnings

        # Store reads in flight on zarr's event loop are torn down at exit; asyncio would log each
        # as "Task was destroyed but it is pending!" with its repr, and warn for each read that was
        # scheduled but had not started yet ("coroutine ... was never awaited").
        logging.getLogger("asyncio").disabled = True
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
        from w2v2ser._common import Terminated

        kept = _what_a_stop_keeps(args)
        if isinstance(stop, Terminated):  # in a job's log, the only word on why the run ended
            import signal

            signum = _received[0] if _received else int(signal.SIGTERM)
            name = signal.Signals(signum).name
            print(f"w2v2ser: terminated ({name}: {_TERMINATING.get(name, 'a signal')}); {kept}", file=sys.stderr)
            return 128 + signum  # 143 for SIGTERM, as a shell reports a command killed by it
        print(f"w2v2ser: interrupted; {kept}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `w2v2ser store info S | head`: the reader left; no traceback for that
        # Python flushes stdout again at exit, which would raise once more: point it at devnull.
        with contextlib.suppress(OSError, ValueError):  # a stdout without a file descriptor needs nothing
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it


def _stdout_failed_message(error: BaseException) -> str:
    """The one line for a standard output that cannot be written."""
    return (f"could not write to standard output ({error}); files the command wrote are kept. Point "
            f"standard output at a file or device with space, then rerun the same command.")


def _run_command(args: argparse.Namespace, verbose: bool) -> int:
    from w2v2ser._common import describe_error
    from w2v2ser._native_logs import hide_native_logs

    # A SIGKILL or native crash says the same as a Ctrl-C of what is kept (nothing of export, upgrade, predict).
    with hide_native_logs(enabled=not verbose, abrupt_end=_what_a_stop_keeps(args)):
        try:
            return int(args.func(args) or 0)
        except BaseException as error:  # w2v2ser's errors, a missing extra, an unusable path: one line
            if not isinstance(error, Exception) and type(error).__name__ != "PanicException":
                raise  # Ctrl-C, SIGTERM, exit: main() says those; a Rust panic is not an Exception either
            described = ((_stdout_failed_message(error), EXIT_FAILED) if isinstance(error, _StdoutFailed)
                         else describe_error(error))
            if described is None:
                raise
            if verbose:
                import traceback

                traceback.print_exc()
            print(f"w2v2ser: error: {described[0]}", file=sys.stderr)
            if type(error).__name__ == "StoreUnreachableError":  # (no store import here: it is slow)
                # Requests still in flight on zarr's event loop when the store went away are torn down
                # at exit: asyncio would warn for each ("coroutine ... was never awaited").
                import logging
                import warnings

                logging.getLogger("asyncio").disabled = True
                warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
            return described[1]
