"""What a process killed with SIGKILL leaves behind: temp files, temp folders, child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from w2v2ser._process import python_command

# A writer of TARGET killed (SIGKILL) inside the atomic write, as a killed `store export` is.
KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from w2v2ser._files import replacing
    with replacing(sys.argv[1]) as tmp:
        tmp.write_bytes(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)
""")
# A writer of TARGET still at work (a concurrent export): its temp file must be kept.
LIVE_WRITER = textwrap.dedent("""
    import sys, time
    from w2v2ser._files import replacing
    with replacing(sys.argv[1]) as tmp:
        tmp.write_bytes(b"partial")
        print(tmp.name, flush=True)
        time.sleep(120)
""")


def _temps(folder: Path, name: str) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp")}


def test_a_later_export_removes_the_temp_files_of_killed_exports_but_not_of_a_live_one(tmp_path, capsys):
    """SIGKILL of `store export` left a hidden `.<name>.h5.XXXX.tmp` beside the target, one more per
    kill; the next export kept them all."""
    from stage2_fixtures import build_store

    from w2v2ser._cli import main

    store = build_store(tmp_path / "s.zarr", layers=2, dim=4, features=("egemaps",))
    out = tmp_path / "h5" / "out.h5"
    out.parent.mkdir()
    for _ in range(2):
        killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out)], check=False)
        assert killed.returncode == -signal.SIGKILL
    assert len(_temps(out.parent, out.name)) == 1  # the second killed writer removed the first's
    # Another target's, of a process gone from this host: only the name keeps this export off it.
    from w2v2ser._files import owner_tag
    other = out.parent / f".other.h5.{2 ** 22 + 12345}-{owner_tag().split('-', 1)[1]}.abcd1234.tmp"
    other.write_bytes(b"x")
    live = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        live_temp = live.stdout.readline().strip()
        assert live_temp in _temps(out.parent, out.name)
        assert main(["store", "export", str(store), str(out), "--no-progress"]) == 0
        assert _temps(out.parent, out.name) == {live_temp}  # the dead ones are gone, the live one kept
        assert other.exists() and out.is_file()
    finally:
        live.kill()
        live.wait()


SLEEPER = textwrap.dedent("""
    import os, sys, time
    def main():
        open(os.environ["READY"], "w").close()
        time.sleep(120)
        return 0
""")
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    sys.path.insert(0, sys.argv[1])
    from w2v2ser._process import python_command
    child = subprocess.Popen(python_command("sleeper_module", follow_parent=True))
    print(child.pid, flush=True)
    time.sleep(120)
""")


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie that no init reaps here has ended


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_started_to_follow_its_parent_ends_when_the_parent_is_killed(tmp_path):
    """SIGKILL of `predict` left its extraction subprocess running as an orphan until it finished."""
    (tmp_path / "sleeper_module.py").write_text(SLEEPER)
    ready = tmp_path / "ready"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "READY": str(ready)})
    child = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists() and _running(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 20
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(child)
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)


def test_python_command_without_follow_parent_is_unchanged():
    assert "die_with_parent" not in " ".join(python_command("w2v2ser._cli"))


def _in_new_pid_namespace(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -c code`` as PID 1 of a new PID namespace (a container's entrypoint); skip where
    unshare is not allowed."""
    command = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code, *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=90, env=env)
    except FileNotFoundError:
        pytest.skip("unshare is not installed")
    if "unshare failed" in done.stderr or "Operation not permitted" in done.stderr:
        pytest.skip(f"no PID namespaces here: {done.stderr.strip()}")
    return done


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PID namespaces are Linux's")
def test_a_follow_parent_child_of_pid_1_starts(tmp_path):
    """predict run as a container's entrypoint (PID 1): its extraction child took "my parent is PID 1"
    for "my parent has died" and exited 1 before doing anything."""
    (tmp_path / "sleeper_module.py").write_text(SLEEPER.replace("time.sleep(120)", "pass"))
    ready = tmp_path / "ready"
    parent = textwrap.dedent("""
        import os, subprocess, sys
        sys.path.insert(0, sys.argv[1])
        from w2v2ser._process import python_command
        print(os.getpid(), subprocess.run(python_command("sleeper_module", follow_parent=True)).returncode)
    """)
    done = _in_new_pid_namespace(parent, str(tmp_path), env={**os.environ, "READY": str(ready)})
    assert done.stdout.split() == ["1", "0"], done.stderr
    assert ready.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PID namespaces are Linux's")
def test_temp_files_of_another_pid_namespace_are_kept(tmp_path):
    """Containers that share a host name but not their PIDs removed each other's live temp files:
    a PID not seen from here was taken for a dead owner."""
    from w2v2ser._files import owner_tag, remove_stale

    done = _in_new_pid_namespace("from w2v2ser._files import owner_tag; print(owner_tag())")
    pid, tag = done.stdout.strip().split("-")
    assert pid == "1" and tag != owner_tag().split("-", 1)[1], done.stderr
    # A PID that no process here has: the file's owner, in its own namespace, may well be alive.
    theirs = tmp_path / f".out.h5.{2 ** 22 + 12345}-{tag}.abcd1234.tmp"
    theirs.write_bytes(b"partial")
    assert remove_stale(tmp_path, ".out.h5.", ".tmp") == 0
    assert theirs.exists()


def test_an_atomic_write_to_a_long_valid_name_works(tmp_path):
    """The temp name (name + PID-HOST tag + random letters) passed NAME_MAX for target names of 227
    characters and more, which were written before the tag was added."""
    from w2v2ser._files import replacing

    for length, letter in ((227, "x"), (240, "x"), (255, "x"), (252, "é")):  # bytes: é is two
        target = tmp_path / (letter * ((length - 3) // len(letter.encode())) + ".h5")
        with replacing(target) as tmp:
            tmp.write_bytes(b"data")
        assert target.read_bytes() == b"data"
