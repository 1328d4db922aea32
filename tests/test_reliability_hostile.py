"""A hostile machine environment: closed or full standard streams, native crashes, full disks and
per-file size limits, odd names. Each is one clear line (or works), never a traceback or silence."""

from __future__ import annotations

import errno
import os
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


_FATAL_CHECK = """
import os
from w2v2ser._native_logs import hide_native_logs

with hide_native_logs():
    os.write(2, b"F0000 00:00:1796652244.540334   25992 threadpool.cc:127] Check failed: num_threads >= 1 (-1 vs. 1) \\n")
    os.write(2, b"*** Check failure stack trace: ***\\n")
    os.abort()
"""


def test_a_fatal_native_check_keeps_its_reason() -> None:
    """`TF_NUM_INTRAOP_THREADS=-1 w2v2ser train ...` (a cluster script's value) aborted with "the lines
    above say which" after only "*** Check failure stack trace: ***": the filter had dropped TensorFlow's
    fatal "Check failed: num_threads >= 1 (-1 vs. 1)" line with the start-up log lines."""
    done = subprocess.run([sys.executable, "-c", _FATAL_CHECK], capture_output=True, text=True, timeout=60)
    assert done.returncode < 0, done
    lines = done.stderr.splitlines()
    assert lines[0].endswith("threadpool.cc:127] Check failed: num_threads >= 1 (-1 vs. 1) "), lines
    assert lines[-1].startswith("w2v2ser: error: the process ended abruptly"), lines


def test_a_killed_export_does_not_promise_that_a_rerun_resumes(tmp_path: Path) -> None:
    """Found by a kill trial: `store export` (and `store upgrade`, `predict`) killed with SIGKILL
    said "finished work is kept, rerun the same command to resume"; they keep nothing and start over."""
    code = ("import os, sys\n"
            "import w2v2ser.store as store\n"
            "store.export_hdf5 = lambda *args, **kwargs: os.abort()\n"
            "from w2v2ser._cli import main\n"
            "sys.exit(main(['store', 'export', sys.argv[1], sys.argv[2]]))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.zarr"), str(tmp_path / "x.h5")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode < 0, done
    last = done.stderr.splitlines()[-1]
    assert last.startswith("w2v2ser: error: the process ended abruptly"), done.stderr
    # (Found in review: the line said "nothing was written" also for a kill after OUT was moved into place.)
    assert last.endswith("OUT is either as it was before or the complete new export; rerun the same command to "
                         "export again") and "resume" not in last


def test_a_killed_store_info_or_verify_says_the_store_is_unchanged(tmp_path: Path) -> None:
    """Review of f7bf5a9: a Ctrl-C of `store info`/`store verify` says the store is unchanged, but the
    same commands killed outright (a native crash, SIGKILL) still said "finished work is kept ... resume"."""
    code = ("import os, sys\n"
            "import w2v2ser.store as store\n"
            "store.open_store = lambda *args, **kwargs: os.abort()\n"
            "from w2v2ser._cli import main\n"
            "sys.exit(main(['store', sys.argv[1], sys.argv[2]]))\n")
    for command in ("info", "verify"):
        done = subprocess.run([sys.executable, "-c", code, command, str(tmp_path / "s.zarr")],
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode < 0, done
        last = done.stderr.splitlines()[-1]
        assert last.startswith("w2v2ser: error: the process ended abruptly"), done.stderr
        assert last.endswith("the store is unchanged (this command only reads it); rerun the same command"), last


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


@pytest.mark.parametrize(("code", "words", "exit_code"), [
    (errno.ENOSPC, "No space left on device. Free space", 1),
    (errno.EFBIG, "File too large: a per-file size limit was hit (`ulimit -f`", 1),
    (errno.EMFILE, "Too many open files: this process may open no more files (`ulimit -n` is", 1),
    (errno.ENAMETOOLONG, "File name too long (a file system allows 255 bytes per name", 2),
])
def test_an_os_error_without_a_file_name_is_one_line(monkeypatch, capsys, code: int, words: str,
                                                     exit_code: int) -> None:
    """keras (model.save), PIL (figures) and zarr raise a full disk, a file size limit or too many
    open files as an OSError without a file name: train, sweep, evaluate and extract printed a traceback."""
    import argparse

    from w2v2ser import _cli

    def command(args: argparse.Namespace) -> int:
        raise OSError(code, os.strerror(code))

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=command)
    monkeypatch.setattr(_cli, "build_parser", lambda: parser)
    assert _cli.main([]) == exit_code
    err = capsys.readouterr().err
    assert err.startswith(f"w2v2ser: error: {words}") and len(err.splitlines()) == 1, err


def test_evaluate_on_a_full_disk_names_the_report_folder(tmp_path, monkeypatch, capsys) -> None:
    """`w2v2ser evaluate RUNS --out small/rep` on a full tmpfs said "No space left on device." and no path:
    PIL's write of a confusion matrix raises ENOSPC without a file name."""
    import w2v2ser.evaluate._report as report
    from stage2_fixtures import build_store, ravdess_utterances

    from w2v2ser._cli import main

    path = build_store(tmp_path / "rav.zarr", utterances=ravdess_utterances(per_actor=1), layers=2, dim=4)
    assert main(["train", str(path), "--features", "egemaps", "--seeds", "1", "--set", "max_epochs=1",
                 "--no-progress", "--out", str(tmp_path / "run")]) == 0

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    capsys.readouterr()
    monkeypatch.setattr(report, "write_atomically", full)
    assert main(["evaluate", str(tmp_path / "run"), "--out", str(tmp_path / "rep")]) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"w2v2ser: error: {tmp_path / 'rep'}: No space left on device. Free space"), last


def test_train_on_a_full_disk_is_one_line_and_leaves_no_half_written_run(tmp_path, monkeypatch, capsys) -> None:
    """keras's model.save raised ENOSPC without a file name: a traceback, and the hidden
    `.RUN.tmp-PID` folder stayed on the full disk forever (it is what filled it)."""
    import keras
    from stage2_fixtures import build_store, ravdess_utterances

    from w2v2ser._cli import main

    path = build_store(tmp_path / "rav.zarr", utterances=ravdess_utterances(per_actor=1), layers=2, dim=4)
    train = ["train", str(path), "--features", "egemaps", "--seeds", "1", "--set", "max_epochs=1", "--no-progress",
             "--out", str(tmp_path / "run")]

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(keras.Model, "save", full)
        assert main(train) == 1
    # The run folder whose disk is full is named (before: "No space left on device." and no path).
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"w2v2ser: error: {tmp_path / 'run'}: No space left on device. Free space"), last
    runs = tmp_path / "run" / "runs"
    assert not [p.name for p in runs.iterdir() if p.name.startswith(".")]
    # A killed process's leftovers (its pid gone from this host), written or replaced, go with the next run.
    from w2v2ser._files import owner_tag

    gone = subprocess.Popen(["true"])
    gone.wait()
    tag = f"{gone.pid}-{owner_tag().split('-', 1)[1]}"
    leftovers = [runs / f".split__seed0.{kind}-{tag}.dir" for kind in ("tmp", "old")]
    for leftover in leftovers:
        leftover.mkdir()
    assert main(train) == 0
    leftover = leftovers[0]
    assert not leftover.exists() and [p.name for p in runs.iterdir() if p.name.startswith(".")] == []



def _panic(message: str) -> BaseException:
    """An error like pyo3's ``pyo3_runtime.PanicException`` (a BaseException), which zarrs raises."""
    panic = type("PanicException", (BaseException,), {"__module__": "pyo3_runtime"})
    return panic(message)


@pytest.mark.parametrize(("error", "words"), [
    (MemoryError(), "out of memory: raise the limit"),
    (RuntimeError("can't start new thread"), "no new thread could start (out of memory or threads)"),
    # `prlimit --as=1G w2v2ser train ...`: `import tensorflow` cannot map its library (a traceback before).
    (ImportError("libtensorflow_cc.so.2: failed to map segment from shared object"),
     "out of memory while loading a native library (libtensorflow_cc.so.2: failed to map segment"),
    # `prlimit --as=1G w2v2ser extract ...`: zarrs' rayon pool could not start its threads (a traceback before).
    (_panic('The global thread pool has not been initialized.: ThreadPoolBuildError { kind: IOError(Os { code: 11, '
            'kind: WouldBlock, message: "Resource temporarily unavailable" }) }'),
     "no new thread could start (out of memory or threads)"),
])
def test_a_memory_limit_is_one_line(monkeypatch, capsys, error: BaseException, words: str) -> None:
    """Under `ulimit -v` extract ended in a traceback (numpy's MemoryError, or "can't start new thread")."""
    import argparse

    from w2v2ser import _cli

    def command(args: argparse.Namespace) -> int:
        raise error

    import resource

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=command)
    monkeypatch.setattr(_cli, "build_parser", lambda: parser)
    monkeypatch.setattr(resource, "getrlimit", lambda limit: (1 << 30, resource.RLIM_INFINITY))  # `ulimit -v`
    assert _cli.main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"w2v2ser: error: {words}") and len(err.splitlines()) == 1, err
    # An import is no batch: only the limit is named there.
    assert ("--batch-seconds" in err) != isinstance(error, ImportError), err


@pytest.mark.parametrize("error", [
    # glibc on aarch64 (the fix is LD_PRELOAD, not memory), a venv on a noexec mount, a plain import error.
    ImportError("/lib/aarch64-linux-gnu/libgomp.so.1: cannot allocate memory in static TLS block"),
    ImportError("libfoo.so: failed to map segment from shared object: Operation not permitted"),
    ImportError("cannot import name 'Model' from 'keras'"),
    ModuleNotFoundError("No module named 'w2v2ser_not_a_module'", name="w2v2ser_not_a_module"),
    _panic("called `Option::unwrap()` on a `None` value"),
    # review4 #7: rayon's other ThreadPoolBuildError, a pool started twice, is no resource limit.
    _panic("The global thread pool has not been initialized.: ThreadPoolBuildError { kind: GlobalPoolAlreadyInitialized }"),
])
def test_an_error_that_is_no_memory_limit_keeps_its_traceback(monkeypatch, error: BaseException) -> None:
    """"cannot allocate memory in static TLS block" and a noexec mount read as "out of memory, raise the limit"."""
    import resource

    from w2v2ser._common import describe_error

    monkeypatch.setattr(resource, "getrlimit", lambda limit: (1 << 30, resource.RLIM_INFINITY))
    assert describe_error(error) is None


def test_a_library_that_did_not_map_without_a_memory_limit_keeps_its_traceback(monkeypatch) -> None:
    """Without a finite RLIMIT_AS or RLIMIT_DATA, "failed to map segment" is no memory limit to raise."""
    import resource

    from w2v2ser._common import describe_error

    monkeypatch.setattr(resource, "getrlimit", lambda limit: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert describe_error(ImportError("libtensorflow_cc.so.2: failed to map segment from shared object")) is None


def test_a_folder_name_that_is_not_utf8_is_skipped_with_a_reason(tmp_path, capsys) -> None:
    """A corpus folder named with byte \\xff (a Latin-1 name on an old disk) crashed extract with a
    UnicodeEncodeError traceback from libsndfile's strict UTF-8 file names."""
    from w2v2ser._cli import main

    corpus = tmp_path / "corpus"
    write_audio(corpus / "speech" / "Actor_01" / "03-01-01-01-01-01-01.wav", duration=0.5, seed=1)
    write_audio(corpus / "speech" / "Actor_01" / "03-01-04-01-01-01-01.wav", duration=0.5, seed=2)
    odd = corpus / os.fsdecode(b"old\xffnames")
    write_audio(corpus / "old" / "Actor_02" / "03-01-05-01-01-01-02.wav", duration=0.5, seed=3)
    os.rename(corpus / "old", odd)  # (soundfile itself cannot write there)
    store = tmp_path / "s.zarr"
    assert main(["extract", "ravdess", str(corpus), "--store", str(store), "--features", "spectrogram",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "old\\xffnames/Actor_02/03-01-05-01-01-01-02.wav: its name is not valid UTF-8" in err, err
    assert "Traceback" not in err
    # The corpus folder's own name: one line, nothing written.
    assert main(["extract", "ravdess", str(odd), "--store", str(tmp_path / "t.zarr"), "--features", "spectrogram",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("w2v2ser: error: The corpus at ") and "no audio file path is valid UTF-8" in err, err
    assert len(err.splitlines()) == 1 and not (tmp_path / "t.zarr").exists()


def test_long_valid_names_work_for_upgrade_and_evaluate(tmp_path, capsys) -> None:
    """A 250-byte name (under NAME_MAX, 255) failed in a traceback ([Errno 36] File name too long):
    `store upgrade` wrote beside it `.NAME.upgrading`, and evaluate named a figure `confusion_NAME.png`."""
    from stage2_fixtures import build_store, ravdess_utterances

    from w2v2ser._cli import main

    new = tmp_path / ("a" * 247 + ".zr")
    assert main(["store", "upgrade", str(Path(__file__).parent / "data" / "format1.zarr"), str(new),
                 "--no-progress"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [new.name]
    store = build_store(tmp_path / "rav.zarr", utterances=ravdess_utterances(per_actor=1), layers=2, dim=4)
    run = tmp_path / ("b" * 245)
    assert main(["train", str(store), "--features", "egemaps", "--seeds", "1", "--set", "max_epochs=1",
                 "--no-progress", "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--out", str(tmp_path / "rep")]) == 0, capsys.readouterr().err
    (figure,) = (tmp_path / "rep").glob("confusion_*.png")
    assert figure.name.startswith("confusion_bbbb") and len(figure.name) <= 200


def test_upgrade_onto_a_full_disk_says_so_in_its_terms_and_leaves_nothing(tmp_path) -> None:
    """`store upgrade` onto a full disk spoke of extraction resuming, and left `.NEW.upgrading`
    (what filled the disk) behind."""
    old, new = Path(__file__).parent / "data" / "format1.zarr", tmp_path / "new.zarr"
    done = _shell(f"ulimit -f 16; exec {W2V2SER} store upgrade '{old}' '{new}' --no-progress")
    assert done.returncode == 1, done.stderr
    assert f"the old store {old} is unchanged and nothing of {new} was written" in done.stderr, done.stderr
    assert "extraction resumes" not in done.stderr and len(done.stderr.splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".upgrading")] == []


_HANGUP = """
import argparse, os, signal, sys
import w2v2ser._cli as cli

def command(args):
    os.kill(os.getpid(), signal.SIG{name})
    signal.pause()  # (the handler raises first)

parser = argparse.ArgumentParser()
parser.set_defaults(func=command)
cli.build_parser = lambda: parser
sys.exit(cli.main([]))
"""


@pytest.mark.parametrize(("name", "code"), [("HUP", 129), ("QUIT", 131)])
def test_sighup_and_sigquit_stop_a_command_with_a_line_like_sigterm(name: str, code: int) -> None:
    """A closed ssh session (SIGHUP, without nohup) or SIGQUIT ended extract or train silently."""
    done = subprocess.run([sys.executable, "-c", _HANGUP.replace("{name}", name)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == code, done.stderr
    assert done.stderr.startswith(f"w2v2ser: terminated (SIG{name}: ") and len(done.stderr.splitlines()) == 1
    assert "finished work is kept" in done.stderr


def test_the_native_log_filter_drains_its_pipe_when_the_real_stderr_fails() -> None:
    """The filter stopped at its first failed write (a closed terminal, a full log disk): the pipe
    then had no reader, so every later stderr write of the command failed (or blocked) and native
    threads and child processes died of SIGPIPE."""
    import threading

    from w2v2ser._native_logs import _pump

    source_read, source_write = os.pipe()
    sink_read, sink_write = os.pipe()
    os.close(sink_read)  # the real stderr is gone: writes to it fail with EPIPE

    def command() -> None:  # writes far more than a pipe holds, then ends
        with os.fdopen(source_write, "wb") as stderr:
            for k in range(20000):
                stderr.write(b"line %d of a long run\n" % k)

    writer = threading.Thread(target=command, daemon=True)
    writer.start()
    _pump(source_read, sink_write)  # must neither raise nor stop reading
    writer.join(timeout=30)
    assert not writer.is_alive()
    os.close(sink_write)


def test_export_over_a_tiny_file_size_limit_names_the_limit_in_readable_units(store: Path, tmp_path: Path) -> None:
    """Under `ulimit -f 20` the refusal said "over `ulimit -f` of 0.0 MB", which reads as no limit at all."""
    done = _shell(f"ulimit -f 20; exec {W2V2SER} store export '{store}' '{tmp_path / 'x.h5'}'")
    assert done.returncode == 1 and "`ulimit -f` of 20.5 kB" in done.stderr, done.stderr


def test_a_memory_limit_in_run_s_extraction_child_is_one_line(monkeypatch, capsys) -> None:
    """review4 #8: `w2v2ser run`'s extraction child caught Exception only: zarrs' PanicException (a
    BaseException) under `prlimit --as` ended in a traceback there, one line in `w2v2ser extract`."""
    from w2v2ser import _cluster, _stage_extract

    def stopped(*args: object, **kwargs: object) -> None:
        raise _panic('The global thread pool has not been initialized.: ThreadPoolBuildError { kind: IOError(Os { '
                     'code: 11, kind: WouldBlock, message: "Resource temporarily unavailable" }) }')

    monkeypatch.setattr(_cluster, "die_with_parent", lambda: None)  # this is no child process
    monkeypatch.setattr(_stage_extract, "load_pipeline", lambda *args, **kwargs: object())
    monkeypatch.setattr(_stage_extract, "_run_extract", stopped)
    with pytest.raises(SystemExit) as raised:
        _stage_extract._extract_child("pipeline.yaml", [], results=None)
    assert raised.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("w2v2ser: error: no new thread could start") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("value", ["-0", "-00", " -0 "])
def test_a_thread_count_of_minus_zero_is_taken_as_tensorflows_default(monkeypatch, value) -> None:
    """Review6 #7: TF_NUM_INTRAOP_THREADS=-0, which TensorFlow reads as 0 (its default), was refused as a
    negative count it aborts on; -1 still is."""
    from w2v2ser import ConfigError
    from w2v2ser._process import check_thread_environment

    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)  # as before TensorFlow is imported
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", value)
    check_thread_environment()
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "-01")
    with pytest.raises(ConfigError, match="TF_NUM_INTRAOP_THREADS is '-01'"):
        check_thread_environment()


@pytest.fixture(scope="module")
def accented_store(tmp_path_factory) -> Path:
    """A 4-file spectrogram store under `données é/ストア.zarr`, labelled colère and 怒り."""
    from w2v2ser._cli import main

    folder = tmp_path_factory.mktemp("accented") / "données é"
    rows = [f"{write_audio(folder / f'é{k}.wav', duration=0.5, seed=k)},{('colère', '怒り')[k % 2]},Zoë{k % 2}"
            for k in range(4)]
    (folder / "corpus.csv").write_text("path,label,speaker\n" + "\n".join(rows) + "\n", encoding="utf-8")
    path = folder / "ストア.zarr"
    assert main(["extract", "csv", str(folder / "corpus.csv"), "--store", str(path), "--features", "spectrogram",
                 "--no-progress"]) == 0
    return path


def _in_locale(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONUTF8", "PYTHONIOENCODING")}
    return subprocess.run([sys.executable, "-m", "w2v2ser", *args], env={**environment, **env},
                          capture_output=True, timeout=300, check=False)


def test_a_store_at_an_accented_path_reads_under_a_locale_that_is_not_utf8(accented_store: Path) -> None:
    """Under LANG=en_US.ISO-8859-1 (or LC_ALL=C PYTHONUTF8=0) Python decoded `données` with the locale's
    codec and zarrs got the name back as UTF-8 of that: `store verify` called every utterance corrupt
    (advising --repair) and `train` called the store damaged."""
    done = _in_locale(["store", "verify", str(accented_store)], LC_ALL="C", PYTHONUTF8="0")
    assert done.returncode == 0 and done.stdout.strip() == b"intact", done.stdout + done.stderr
    done = _in_locale(["store", "info", str(accented_store)], LC_ALL="C", PYTHONUTF8="0")
    assert done.returncode == 0, done.stderr
    assert b"labels      col\\xe8re 2, \\u6012\\u308a 2" in done.stdout, done.stdout


def test_an_output_that_cannot_encode_a_label_escapes_it(accented_store: Path) -> None:
    """With PYTHONIOENCODING=ascii (or a Latin-1 terminal and a label 怒り) `store info` ended in a
    UnicodeEncodeError traceback."""
    done = _in_locale(["store", "info", str(accented_store)], PYTHONIOENCODING="ascii")
    assert done.returncode == 0, done.stderr
    assert b"labels      col\\xe8re 2, \\u6012\\u308a 2" in done.stdout and not done.stderr, done.stdout + done.stderr


def test_a_subset_value_holding_a_comma_is_quoted_as_a_csv_cell() -> None:
    """A speaker `spk,3 "q"` (a manifest's quoted cell) could not be selected: `--subset speaker=...` split it
    at its comma, and the error's did-you-mean named a value that could not be typed."""
    from w2v2ser._cli_parser import build_parser

    args = build_parser().parse_args(["train", "s.zarr", "--features", "egemaps", "--out", "o",
                                      "--subset", 'speaker="spk,3 ""q""", Zoë', "--subset", "label=colère,怒り"])
    assert args.subset == [("speaker", ['spk,3 "q"', "Zoë"]), ("label", ["colère", "怒り"])]


def test_a_percent_encoded_file_url_names_the_store(accented_store: Path) -> None:
    """`Path.as_uri()` (and a file manager's "copy location") writes `données é` as `donn%C3%A9es%20%C3%A9`:
    such a `file://` URL was taken as written, a folder that does not exist."""
    from w2v2ser.store import open_store

    url = accented_store.as_uri()
    assert "%C3%A9" in url
    assert {u.label for u in open_store(url).list_utterances()} == {"colère", "怒り"}


def test_python_code_under_a_locale_that_is_not_utf8_is_told_to_use_utf8_mode(accented_store: Path) -> None:
    """From Python (not the command, which restarts in UTF-8 mode) under LC_ALL=C PYTHONUTF8=0, a store at
    `données é/` read as missing chunks: every utterance was called damaged, with `store verify --repair`
    (re-extraction of all) as the advice."""
    code = ("import sys\nfrom w2v2ser.store import StoreError, open_store\ntry:\n"
            "    store = open_store(sys.argv[1])\n    store.read_batch([store.list_utterances()[0].id], 'spectrogram')\n"
            "except StoreError as error:\n    print(error)\n")
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONUTF8", "PYTHONIOENCODING")}
    done = subprocess.run([sys.executable, "-c", code, str(accented_store)], capture_output=True, text=True,
                          env={**environment, "LC_ALL": "C", "PYTHONUTF8": "0"}, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "reads file names as ascii" in done.stdout and "PYTHONUTF8=1" in done.stdout, done.stdout
    assert "damaged" not in done.stdout and "--repair" not in done.stdout


def test_predict_reads_its_extraction_s_error_naming_an_accented_path_whatever_the_output_encoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Predict's stage 1 child inherits PYTHONIOENCODING, which the command's restart in UTF-8 mode sets to a
    Latin-1 locale's encoding (a Latin-1 terminal sets it too): its error line naming `données/` came in Latin-1,
    and predict, reading it as UTF-8, ended in a UnicodeDecodeError instead of saying what stage 1 said."""
    import re

    from w2v2ser.evaluate import PredictError
    from w2v2ser.evaluate._extraction import extract_features

    folder = tmp_path / "données"
    folder.mkdir()
    manifest = folder / "manifest.csv"
    manifest.write_text("path,label\n/nowhere.wav,a\n", encoding="utf-8")
    monkeypatch.setenv("PYTHONIOENCODING", "latin-1")
    with pytest.raises(PredictError, match=re.escape(f"{manifest}, line 1, column 'speaker'")):
        extract_features(manifest, folder / "new.zarr", like=folder / "old.zarr", features=["spectrogram"])


@pytest.mark.parametrize(("value", "what"), [('label="happy', "a quote is not closed"),
                                             ('label="a"b', "text follows a closing quote"),
                                             ("label=a\nb", "a line break is outside quotes")])
def test_a_subset_value_that_is_no_csv_cell_is_refused_not_read_as_another(capsys, value: str, what: str) -> None:
    """Read as a CSV cell, `label="happy` (an unclosed quote) selected the label `happy` and `"a"b` the label `ab`,
    both silently, and a label with a line break ended the command in a csv.Error traceback. Values that were
    never quoted (a quote or '=' inside) still mean what they meant."""
    from w2v2ser._cli_parser import build_parser

    train = ["train", "s.zarr", "--features", "egemaps", "--out", "o", "--subset"]
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([*train, value])
    assert stop.value.code == 2 and what in capsys.readouterr().err
    args = build_parser().parse_args([*train, 'label=O"Brien,5",a=b', "--subset", 'speaker="a\nb"'])
    assert args.subset == [("label", ['O"Brien', '5"', "a=b"]), ("speaker", ["a\nb"])]


def test_a_program_calling_main_under_a_locale_that_is_not_utf8_runs_once(tmp_path: Path) -> None:
    """The command's restart in UTF-8 mode ran the process's command line again: a program piped to `python -` was
    gone by then, so the command silently did nothing (exit 0), and a script calling main() ran twice from its
    start. Such programs now run on as Python code does; the command itself still restarts."""
    program = ('import sys\nprint("started")\nfrom w2v2ser._cli import main\n'
               'sys.argv = ["w2v2ser", "store", "info", "/nowhere/store.zarr"]\nraise SystemExit(main())\n')
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONUTF8", "PYTHONIOENCODING")}
    environment.update(LC_ALL="C", PYTHONUTF8="0")
    script = tmp_path / "wrapper.py"
    script.write_text(program, encoding="utf-8")
    for command, given in (([sys.executable, "-"], program.encode()), ([sys.executable, str(script)], None)):
        done = subprocess.run(command, input=given, env=environment, capture_output=True, timeout=300, check=False)
        assert done.returncode == 2 and b"is not a w2v2ser store" in done.stderr, done.stdout + done.stderr
        assert done.stdout.count(b"started") == 1, done.stdout
