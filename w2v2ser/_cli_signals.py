"""Stopping a command: SIGTERM, SIGHUP, SIGQUIT and SIGINT handlers that request a stop while
a command runs (:func:`_sigterm_raises`), and what a stopped command keeps of its work
(:func:`_what_a_stop_keeps`)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from typing import Any

from w2v2ser._cli_parser import _cmd_store_export, _cmd_store_info, _cmd_store_upgrade, _cmd_store_verify
from w2v2ser._cli_train import _cmd_predict


# Signals that end a command like SIGTERM, with why in the log: a closed terminal or ssh session
# (SIGHUP, without nohup) and SIGQUIT (Ctrl-\\) ended extract or train silently.
_TERMINATING = {"SIGTERM": "scancel, the job's time limit or kill",
                "SIGHUP": "the terminal or ssh session closed; run it under nohup, tmux or a batch job",
                "SIGQUIT": "Ctrl-\\ or kill -QUIT"}
_received: list[int] = []  # the terminating signal that stopped this command


def _terminate(signum: int, frame: Any) -> None:
    import signal

    from w2v2ser._common import Terminated, request_stop

    _received[:] = [signum]
    request_stop(terminated=True)
    signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once
    raise Terminated


def _interrupt(signum: int, frame: Any) -> None:
    from w2v2ser._common import request_stop

    request_stop()  # remembered in case the KeyboardInterrupt below is lost (see check_stop)
    raise KeyboardInterrupt


def _stop_in_callback_hook(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """``sys.unraisablehook`` that drops the KeyboardInterrupt or Terminated of a stop signal that
    landed in a weakref callback or ``__del__``: Python cannot raise it there and printed it as
    "Exception ignored in ..." with a traceback (a scancel during training). The stop is not lost:
    the handler requested it, and the loops' check_stop raises it again. Anything else goes on
    to ``previous``. A KeyboardInterrupt that no stop request stands behind (someone else's SIGINT
    handler raised it) requests the stop, so that this Ctrl-C is not lost either."""
    from w2v2ser._common import Terminated, request_stop, stop_requested

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous(unraisable)
        elif not stop_requested():  # someone else's SIGINT handler raised it: make that Ctrl-C count
            request_stop(terminated=isinstance(unraisable.exc_value, Terminated))

    return hook


@contextlib.contextmanager
def _sigterm_raises() -> Any:
    """SIGTERM raises :class:`Terminated`, and SIGINT KeyboardInterrupt, while a command runs (only
    where nobody else handles them); both also request a stop that loops check between runs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    from w2v2ser._common import clear_stop

    handle_int = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # SIGHUP and SIGQUIT where nobody else handles them (nohup ignores SIGHUP: it stays ignored).
    others = [getattr(signal, name) for name in ("SIGHUP", "SIGQUIT")
              if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) == signal.SIG_DFL]
    clear_stop()
    _received.clear()
    signal.signal(signal.SIGTERM, _terminate)
    for other in others:
        signal.signal(other, _terminate)
    if handle_int:
        signal.signal(signal.SIGINT, _interrupt)
    unraisable = sys.unraisablehook
    sys.unraisablehook = _stop_in_callback_hook(unraisable)
    try:
        yield
    finally:
        sys.unraisablehook = unraisable
        # A signal handled while the handlers are restored raises here: each restore and the
        # forgetting of the stop request still run, so neither our handlers nor a stop request
        # outlive the command and stop later library calls of this process.
        try:
            for other in others:
                signal.signal(other, signal.SIG_DFL)
        finally:
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            finally:
                try:
                    if handle_int:
                        signal.signal(signal.SIGINT, signal.default_int_handler)
                finally:
                    clear_stop()


# (A stop after the finished file or folder was moved into place leaves it complete: each line is true both ways.)
_STARTS_OVER = {
    _cmd_store_export: "OUT is either as it was before or the complete new export; rerun the same command to "
                       "export again",
    _cmd_store_upgrade: "the old store is unchanged, and NEW is either as it was before or the complete upgrade; "
                        "rerun the same command (it does nothing if NEW is complete)",
    _cmd_predict: "rerun the same command to predict again",
}


def _what_a_stop_keeps(args: argparse.Namespace) -> str:
    """The end of the line said when the command is stopped or killed: what of its work is kept."""
    func = getattr(args, "func", None)
    if func in (_cmd_store_info, _cmd_store_verify) and not getattr(args, "repair", False):
        return "the store is unchanged (this command only reads it); rerun the same command"  # nothing to resume
    return _STARTS_OVER.get(func, "finished work is kept, rerun the same command to resume")
