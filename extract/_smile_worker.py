"""The openSMILE worker process (started by ``EgemapsExtractor`` through ``w2v2ser._process.python_command``).

openSMILE's native library runs here, apart from the extraction process: it can abort a
process that also holds torch or TensorFlow, and a crash on one input must not end a run.
Protocol on stdin/stdout, no pickle: an 8-byte little-endian length and a JSON header
(``{"meta": ..., "arrays": [[dtype, shape], ...]}``), then the arrays' raw bytes.
Requests carry ``{"function": name, "args": [feature_set, feature_level, rates]}`` with the
signals as arrays; replies carry ``{"status": "ok" | "error" | "missing", "value": ...}`` with
the frames as arrays ("missing": an optional dependency is not installed, value is the hint).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, BinaryIO

import numpy as np

__all__ = ["read_message", "write_message"]


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def read_message(stream: BinaryIO) -> tuple[Any, list[np.ndarray]] | None:
    """One message (JSON metadata and arrays), or None at end of stream."""
    header = _read_exact(stream, 8)
    head = header and _read_exact(stream, int.from_bytes(header, "little"))
    if not head:
        return None
    message = json.loads(head)
    arrays = []
    for dtype, shape in message["arrays"]:
        dtype = np.dtype(dtype)
        data = _read_exact(stream, dtype.itemsize * int(np.prod(shape, dtype=np.int64)))
        if data is None:
            return None
        arrays.append(np.frombuffer(data, dtype=dtype).reshape(shape))
    return message["meta"], arrays


def write_message(stream: BinaryIO, meta: Any, arrays: list[np.ndarray] = ()) -> None:
    """Write one message (JSON metadata, then the arrays' bytes) and flush."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    head = json.dumps({"meta": meta, "arrays": [[a.dtype.str, list(a.shape)] for a in arrays]}).encode()
    stream.write(len(head).to_bytes(8, "little") + head)
    for array in arrays:
        stream.write(array.tobytes())
    stream.flush()


def main() -> None:
    """Serve requests until the parent closes stdin (or is gone: then exit without a word)."""
    # Ctrl-C (and scancel's SIGTERM) reach the whole process group: the parent reports the
    # interrupt and closes the pipes, which ends this worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        _serve()
    except BrokenPipeError:  # the parent stopped (interrupted or killed) while a reply was written
        os._exit(0)  # not sys.exit: flushing the dead pipe at shutdown would print another traceback


def _serve() -> None:
    from w2v2ser._deps import missing_dependency_error
    from w2v2ser.extract._egemaps import WORKER_FUNCTIONS

    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library prints must not corrupt replies
    requests = sys.stdin.buffer
    while True:
        request = read_message(requests)
        if request is None:
            return
        meta, arrays = request
        try:
            value, out = WORKER_FUNCTIONS[meta["function"]](*meta["args"], arrays)
            write_message(replies, {"status": "ok", "value": value}, out)
        except ModuleNotFoundError as error:  # the parent raises the one-line install hint
            missing = missing_dependency_error(error)
            text = str(missing) if missing is not None else f"{type(error).__name__}: {error}"
            write_message(replies, {"status": "missing" if missing is not None else "error", "value": text})
        except BrokenPipeError:
            raise
        except Exception as error:  # noqa: BLE001 - sent back to the parent as text
            write_message(replies, {"status": "error", "value": f"{type(error).__name__}: {error}"})


if __name__ == "__main__":
    main()
