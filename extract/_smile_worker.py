"""The openSMILE worker process (``python -m w2v2ser.extract._smile_worker``).

openSMILE's native library runs here, apart from the extraction process: it can abort a
process that also holds torch or TensorFlow, and a crash on one input must not end a run.
Protocol on stdin/stdout: an 8-byte little-endian length, then a pickled message; requests
are ``(function name, args)``, replies ``("ok", value)`` or ``("error", text)``. Only the
parent that started this process writes to it.
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import Any, BinaryIO

__all__ = ["read_message", "write_message"]


def read_message(stream: BinaryIO) -> Any:
    """One length-prefixed pickled message, or None at end of stream."""
    header = stream.read(8)
    if len(header) < 8:
        return None
    size = int.from_bytes(header, "little")
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


def write_message(stream: BinaryIO, message: Any) -> None:
    """Write one length-prefixed pickled message and flush."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(8, "little") + data)
    stream.flush()


def main() -> None:
    """Serve requests until the parent closes stdin."""
    from w2v2ser.extract._egemaps import WORKER_FUNCTIONS

    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library prints must not corrupt replies
    requests = sys.stdin.buffer
    while True:
        request = read_message(requests)
        if request is None:
            return
        name, args = request
        try:
            reply = ("ok", WORKER_FUNCTIONS[name](*args))
        except Exception as error:  # noqa: BLE001 - sent back to the parent as text
            reply = ("error", f"{type(error).__name__}: {error}")
        write_message(replies, reply)


if __name__ == "__main__":
    main()
