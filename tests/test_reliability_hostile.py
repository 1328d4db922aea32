"""A hostile machine environment: closed or full standard streams, native crashes, full disks and
per-file size limits, odd names. Each is one clear line (or works), never a traceback or silence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_audio import write_audio  # noqa: E402

W2V2SER = f"{sys.executable} -m w2v2ser"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A 4-file spectrogram store, extracted through the CLI."""
    from w2v2ser._cli import main

    folder = tmp_path_factory.mktemp("hostile")
    rows = [f"{write_audio(folder / f'u{k}.wav', duration=0.5, seed=k)},{('angry', 'sad')[k % 2]},s{k % 2}"
            for k in range(4)]
    (folder / "corpus.csv").write_text("path,label,speaker\n" + "\n".join(rows) + "\n")
    path = folder / "s.zarr"
    assert main(["extract", "csv", str(folder / "corpus.csv"), "--store", str(path), "--features", "spectrogram",
                 "--no-progress"]) == 0
    return path


def _shell(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)


def test_closed_stderr_or_stdout_still_runs_the_command(store: Path) -> None:
    """With fd 2 closed (`2>&-`: daemons, cron wrappers) every command did nothing and exited 1
    (sys.stderr is None); with stdout closed, `store verify` of an intact store exited 1."""
    no_stderr = _shell(f"exec {W2V2SER} store verify '{store}' 2>&-")
    assert (no_stderr.returncode, no_stderr.stdout.strip()[-6:]) == (0, "intact"), no_stderr
    no_stdout = _shell(f"exec {W2V2SER} store verify '{store}' >&-")
    assert (no_stdout.returncode, no_stdout.stderr) == (0, ""), no_stdout


def test_a_full_standard_output_is_one_line(store: Path) -> None:
    """`store info S >/dev/full` printed a traceback (OSError ENOSPC from print)."""
    done = _shell(f"exec {W2V2SER} store info '{store}' >/dev/full")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("w2v2ser: error: could not write to standard output (No space left on device)")
    assert len(done.stderr.splitlines()) == 1, done.stderr


_NATIVE_CRASH = """
import os
from w2v2ser._native_logs import hide_native_logs

with hide_native_logs():
    os.write(2, b"I0000 00:00:1.5 123 cpu_feature_guard.cc:1] a start-up line, hidden\\n")
    os.write(2, b"LLVM ERROR: pthread_create failed: Resource temporarily unavailable\\n")
    os.abort()
"""


def test_a_native_crash_behind_the_log_filter_keeps_its_last_words() -> None:
    """`train` under `ulimit -v` exited 134 with nothing printed: the thread that forwards the
    filtered stderr died with the process, and the LLVM error line stayed in the pipe."""
    done = subprocess.run([sys.executable, "-c", _NATIVE_CRASH], capture_output=True, text=True, timeout=60)
    assert done.returncode < 0, done
    lines = done.stderr.splitlines()
    assert lines[0] == "LLVM ERROR: pthread_create failed: Resource temporarily unavailable", lines
    assert lines[1].startswith("w2v2ser: error: the process ended abruptly") and len(lines) == 2, lines


@pytest.mark.parametrize("short_kb", [8, 150])  # the frames fit (the write fails part-way), or not even they do
def test_export_over_the_file_size_limit_is_one_line_and_keeps_the_old_file(store: Path, tmp_path: Path,
                                                                          short_kb: int) -> None:
    """`store export` onto a full disk or over `ulimit -f` ended in a segmentation fault after two
    tracebacks: libhdf5 does not survive a failed write and close."""
    out = tmp_path / "x.h5"
    assert _shell(f"exec {W2V2SER} store export '{store}' '{out}'").returncode == 0
    size_kb = out.stat().st_size // 1024
    out.write_text("OLD")
    done = _shell(f"ulimit -f {size_kb - short_kb}; exec {W2V2SER} store export '{store}' '{out}'")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"w2v2ser: error: cannot write {out}: File too large"), done.stderr
    assert len(done.stderr.splitlines()) == 1 and "an earlier x.h5 is unchanged" in done.stderr, done.stderr
    assert out.read_text() == "OLD" and sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]
