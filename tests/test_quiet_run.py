"""`w2v2ser run` on a machine without hub access: each skip reason once, no hub retries, no native logs
and no warnings a user cannot act on.

The pipeline's experiments read stores whose model is not cached, or a corpus without a path, except
one tiny spectrogram experiment (6 clips of 0.5-0.7 s, 1 seed, 1 epoch): it loads TensorFlow in the
main process, whose C++ start-up lines (printed there with --verbose) must not reach the terminal.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_audio import write_audio  # noqa: E402
from tiny_models import save_tiny_upstream  # noqa: E402

from w2v2ser._native_logs import is_native_log_line  # noqa: E402

W2V2SER = [sys.executable, "-m", "w2v2ser"]


def _pipeline(folder: Path) -> Path:
    rows = ["path,label,speaker,split"]
    for i, (speaker, split) in enumerate([("s1", "train"), ("s2", "validation"), ("s3", "test")] * 2):
        # Lengths differ, so a model batch is padded (WavLM's torch warning needs a padding mask).
        write_audio(folder / "audio" / f"{i}.wav", duration=0.5 + 0.1 * (i % 3), seed=i,
                    frequency=300.0 + 100 * (i // 3))
        rows.append(f"audio/{i}.wav,{'happy' if i // 3 else 'sad'},{speaker},{split}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    data = {
        "output": "out",
        "cluster": "none",
        "corpora": {"toy": {"kind": "csv", "path": "manifest.csv"}, "iemocap": {"kind": "iemocap", "path": None}},
        "extraction": {"stores": {
            "a": {"features": {"wav2vec2": {"model": "w2v2ser-tests/model-a-not-cached"}}},
            "b": {"features": {"wav2vec2": {"model": "w2v2ser-tests/model-b-not-cached"}}},
            "classic": {"corpora": ["toy"], "features": {"spectrogram": {"hop_ms": 20.0}}},
            "classic10": {"corpora": ["toy"], "features": {"spectrogram": {"hop_ms": 10.0}}},
            # A tiny random WavLM: torch warns at every padded batch, which the user cannot act on.
            "w": {"corpora": ["toy"], "features": {"wavlm": {"model": str(save_tiny_upstream(folder / "wavlm", "wavlm"))}}},
        }},
        "experiments": {"t": {"grid": {"corpus": ["toy", "iemocap"],
                                       "features": ["a/wav2vec2:all", "a/wav2vec2:local", "b/wav2vec2:all"]},
                              "seeds": 1},
                        "tiny": {"corpus": "toy", "features": "classic/spectrogram", "seeds": 1, "units": 4,
                                 "recipe_overrides": {"max_epochs": 1}, "run_eagerly": True}},
        "reports": {"r": {"experiments": ["*"]}},
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.slow  # about 30 s: a whole `w2v2ser run`, TensorFlow included
def test_offline_run_says_each_reason_once_and_hides_native_logs(tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path)
    data = yaml.safe_load(pipeline.read_text())  # a report against a skipped baseline names the reason once too
    data["reports"]["against"] = {"experiments": ["*"], "baseline": "t/toy/a-wav2vec2-all"}
    pipeline.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TF_CPP_MIN_LOG_LEVEL")}
    # A hub that refuses connections at once, whether or not this machine has network access.
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    # Bytes, decoded here: text=True would turn carriage returns into newlines.
    done = subprocess.run([*W2V2SER, "run", str(pipeline)], capture_output=True, env=env,
                          timeout=600, cwd=tmp_path)
    seconds = time.perf_counter() - started
    output = (done.stdout + done.stderr).decode("utf-8", errors="replace")
    assert done.returncode == 0, output[-3000:]

    for store in ("a", "b"):
        reason = f"model of store {store!r} cannot be loaded: cannot load hub model"
        assert output.count(reason) == 1, output
        assert output.count(f"the model of store {store!r} cannot be loaded; reason above") >= 1
    assert output.count("path not set") == 1, output
    assert "baseline t/toy/a-wav2vec2-all is skipped (reason in " in output
    assert output.count("Hugging Face hub http://127.0.0.1:9 cannot be reached") == 1, output  # probed once
    assert "Retrying" not in output and "Retry " not in output
    assert seconds < 120, f"{seconds:.0f} s: hub lookups were retried?"

    # Stores extracted one after another report in that order: each one's end before the next's start.
    assert output.index("extract classic on toy: 6 extracted") < output.index("extract classic10 on toy: 6 utterances")

    # Output to a file (a cluster job's log): progress bars print whole lines, never carriage returns
    # or cursor moves, which ran two extraction bars together into one unreadable line.
    assert "\r" not in output and "\x1b[" not in output, repr(output[-2000:])

    native = [line for line in output.splitlines() if is_native_log_line(line.encode())]
    assert not native, native
    for noise in ("oneDNN", "cpu_feature_guard", "absl::InitializeLog", "Memory patch applied",
                  "key_padding_mask"):  # the last: torch's warning in the spawned extraction process
        assert noise not in output
    assert "extract w on toy: 6 extracted" in output
    assert (tmp_path / "out" / "experiments" / "tiny" / "toy" / "results.json").exists()  # TensorFlow ran

    # The skipped rows are named by model, one row per model x selection with a column per corpus
    # (not by run directory, one row per corpus), as the rows of a run that trained.
    table = (tmp_path / "out" / "reports" / "r" / "report.md").read_text().split("## Run directories")[0]
    rows = [line for line in table.splitlines() if "not-cached" in line]
    assert len(rows) == 3 and not any("[" in row for row in rows), table
    for model, selection in (("a", "all layers"), ("a", "local encoder"), ("b", "all layers")):
        row = next(r for r in rows if f"| model-{model}-not-cached | {selection} |" in r)
        assert row.count("skipped") == 2, row  # IEMOCAP and CSV


def test_verbose_keeps_native_logs_and_filter_recognises_them() -> None:
    assert is_native_log_line(b"I0000 00:00:1796058843.910493    9010 port.cc:153] oneDNN custom operations are on.")
    assert is_native_log_line(b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")
    assert is_native_log_line(b"\rtrain runs:  50%|#####     | 1/2\rE0000 00:00:17.5 12 cuda_dnn.cc:8] x")
    assert is_native_log_line(b"\rtrain runs:   0%|   | 0/1 [00:00<?, ?run/s]WARNING: All log messages before "
                              b"absl::InitializeLog() is called are written to STDERR")
    assert not is_native_log_line(b"train t/toy/a-wav2vec2-all: skipped, corpus 'iemocap': path not set")
    assert not is_native_log_line(b"I0000 is not a log line")
    help_text = subprocess.run([*W2V2SER, "run", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "--verbose" in help_text and "--schema" in help_text


def test_every_command_takes_verbose() -> None:
    """The README says --verbose adds the traceback to any error; the store commands refused it."""
    import argparse

    from w2v2ser._cli_parser import build_parser

    def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path, parser
        for action in subs:
            for name, child in action.choices.items():
                yield from leaves(child, (*path, name))

    found = dict(leaves(build_parser()))
    assert ("store", "verify") in found and ("run",) in found
    lacking = [" ".join(path) for path, parser in found.items()
               if not any("--verbose" in a.option_strings for a in parser._actions)]
    assert lacking == []


def test_training_before_extraction_names_each_missing_store_once(tmp_path: Path, capsys) -> None:
    from w2v2ser._cli import main

    pipeline = _pipeline(tmp_path)
    extra = yaml.safe_load(pipeline.read_text())
    extra["experiments"]["tiny_again"] = {**extra["experiments"]["tiny"], "units": 8}
    pipeline.write_text(yaml.safe_dump(extra, sort_keys=False))
    assert main(["run", str(pipeline), "--stage", "train"]) == 1
    err = capsys.readouterr().err
    assert err.count("store 'classic' of corpus 'toy' has not been extracted") == 1, err
    assert "train tiny_again/toy: FAILED (store 'classic' of corpus 'toy' is not extracted; reason above)" in err
    assert "the same `w2v2ser run` command with --stage extract" in err
    assert "is not a w2v2ser store" not in err
    # The report says why they did not train, not "not trained yet ... train it first" (found by a trial).
    main(["run", str(pipeline), "--stage", "evaluate"])
    (report,) = tmp_path.rglob("report.md")
    text = report.read_text()
    assert "store 'classic' of corpus 'toy' is not extracted (fix that and rerun the same `w2v2ser run`" in text
    assert "not trained yet" not in text


def test_a_corpus_that_cannot_be_read_fails_its_stores_and_the_others_go_on(tmp_path: Path, capsys) -> None:
    """A CSV with a duplicate id stopped the whole extraction stage, with a traceback from the
    extraction child when `run` ran every stage; now that corpus's stores fail with one line and
    the other corpus is extracted."""
    from w2v2ser._cli import main

    pipeline = _pipeline(tmp_path)
    rows = (tmp_path / "manifest.csv").read_text().splitlines()
    (tmp_path / "dup.csv").write_text("\n".join([*rows, rows[1]]) + "\n")  # line 8 repeats line 2
    data = yaml.safe_load(pipeline.read_text())
    data["corpora"] = {"toy": data["corpora"]["toy"], "dup": {"kind": "csv", "path": "dup.csv"}}
    data["extraction"]["stores"] = {
        "classic": {"corpora": ["toy", "dup"], "features": {"spectrogram": {"hop_ms": 20.0}}},
        "classic10": {"corpora": ["dup"], "features": {"spectrogram": {"hop_ms": 10.0}}}}
    data["experiments"] = {"tiny": data["experiments"]["tiny"]}
    pipeline.write_text(yaml.safe_dump(data, sort_keys=False))

    assert main(["run", str(pipeline), "--stage", "extract"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    reason = "corpus 'dup' cannot be read: "
    assert err.count(reason) == 1 and "line 8, column 'path'" in err and "is also listed on line 2" in err, err
    assert "extract classic on dup: FAILED, corpus 'dup' cannot be read" in err
    assert "extract classic10 on dup: FAILED (corpus 'dup' cannot be read; reason above)" in err
    assert "extract classic on toy: 6 extracted" in err
    assert "FAILED: extract classic on dup, extract classic10 on dup" in err


def test_a_label_fixed_in_the_manifest_reaches_the_store(tmp_path: Path, capsys) -> None:
    """`run` took a complete store of the same ids as done, so a label or split corrected in the
    manifest never reached it: training went on with the old values in silence."""
    from w2v2ser._cli import main
    from w2v2ser.store import open_store

    pipeline = _pipeline(tmp_path)
    data = yaml.safe_load(pipeline.read_text())
    data["corpora"] = {"toy": data["corpora"]["toy"]}
    data["extraction"]["stores"] = {"classic": data["extraction"]["stores"]["classic"]}
    data["experiments"] = {"tiny": data["experiments"]["tiny"]}
    pipeline.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["run", str(pipeline), "--stage", "extract"]) == 0
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(manifest.read_text().replace("audio/0.wav,sad,", "audio/0.wav,happy,"))
    capsys.readouterr()
    assert main(["run", str(pipeline), "--stage", "extract"]) == 0
    err = capsys.readouterr().err
    assert "the CSV manifest changed the label of 1 utterance(s) (e.g. 0: label 'sad' -> 'happy')" in err, err
    (store,) = (tmp_path / "out" / "stores" / "toy").glob("classic-*.zarr")
    assert {r.id: r.label for r in open_store(store).list_utterances()}["0"] == "happy"
    # The audio copied elsewhere (a node's local disk): the same store, still complete.
    import shutil

    shutil.copytree(tmp_path / "audio", tmp_path / "local")
    manifest.write_text(manifest.read_text().replace("audio/", "local/"))
    assert main(["run", str(pipeline), "--stage", "extract"]) == 0
    assert "extract classic on toy: complete (6 utterances)" in capsys.readouterr().err


def test_errors_a_user_can_fix_are_one_line_with_their_exit_code() -> None:
    """The command line and `run`'s extraction child report these through one helper."""
    import errno

    from w2v2ser._common import EXIT_FAILED, EXIT_INPUT, ConfigError, describe_error

    assert describe_error(ConfigError("bad key")) == ("bad key", EXIT_INPUT)
    missing = describe_error(ModuleNotFoundError("No module named 'opensmile'", name="opensmile"))
    assert missing is not None and 'pip install "w2v2ser[extract]"' in missing[0] and missing[1] == EXIT_INPUT
    full = describe_error(OSError(errno.ENOSPC, "No space left on device", "/data/out"))
    assert full is not None and full[0].startswith("/data/out: No space left on device") and full[1] == EXIT_FAILED
    # lim trial: `predict RUN f.wav --work-dir ro/wd` on a read-only mount named every command's output but predict's
    read_only = describe_error(OSError(errno.EROFS, "Read-only file system", "ro/wd"))
    assert read_only is not None and "--work-dir" in read_only[0] and read_only[1] == EXIT_INPUT, read_only
    assert describe_error(ValueError("a bug")) is None  # its traceback is the report
    assert describe_error(ModuleNotFoundError("No module named 'numpyy'", name="numpyy")) is None


@pytest.mark.parametrize("argv", [["store", "info", "s.zarr"], ["store", "verify", "s.zarr"]])
def test_an_interrupted_read_of_a_store_does_not_speak_of_resuming(argv, monkeypatch, capsys) -> None:
    """Ctrl-C during `store info` or `store verify` said "finished work is kept, rerun the same command
    to resume", as for an extraction: these commands only read the store."""
    import w2v2ser.store
    from w2v2ser._cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(w2v2ser.store, "open_store", interrupted)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "w2v2ser: interrupted; the store is unchanged (this command only reads it)" in err and "resume" not in err


def test_a_worker_whose_scheduler_has_gone_logs_no_traceback() -> None:
    """Ctrl-C while `run`'s extraction child closed its local cluster: a worker logged "Failed to
    communicate with scheduler during heartbeat" with a CommClosedError traceback (CI, 71fb9a2)."""
    import logging

    from w2v2ser._cluster import quiet_scheduler_gone

    logger = logging.getLogger("distributed.worker")
    before = list(logger.filters)
    try:
        quiet_scheduler_gone()
        quiet_scheduler_gone()  # once per process, however many plugins call it
        assert len(logger.filters) == len(before) + 1

        def passes(message: str) -> bool:
            record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, message, (), None)
            return logger.filter(record)

        assert not passes("Failed to communicate with scheduler during heartbeat.")
        assert passes("Compute Failed")  # other worker errors still reach the log
    finally:
        logger.filters[:] = before


def test_progress_in_a_log_file_is_whole_lines(monkeypatch, capsys) -> None:
    """Not a terminal: a bar prints a line now and then once its work lasts, and one at the end."""
    import w2v2ser._common as common

    monkeypatch.setattr(common, "LOG_PROGRESS_SECONDS", 0.2)
    assert list(common.progress_bar(range(3), desc="short", unit="it")) == [0, 1, 2]
    for _ in common.progress_bar(range(8), desc="long", unit="it"):
        time.sleep(0.06)
    err = capsys.readouterr().err
    assert "short" not in err and "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert len(lines) >= 2 and all(line.startswith("long:") for line in lines), lines
    assert lines[-1].startswith("long: 100%") and "8/8" in lines[-1]
    assert len({line.split(" [")[0] for line in lines}) == len(lines)  # no count printed twice
    # a postfix (the sweep's "training=6/14 heads") is whole, not cut to a fixed width
    bar = common.progress_bar(desc="sweep 3/8 fold=session1 seed=0", unit="epoch", total=100)
    bar.set_postfix(training="6/14 heads", refresh=False)
    time.sleep(0.3)  # past the delay: work this short prints nothing
    bar.update(100)
    bar.close()
    assert capsys.readouterr().err.rstrip().endswith("training=6/14 heads]")


def _tensorflow_log_level() -> int:
    import logging

    return logging.getLogger("tensorflow").level


def test_dask_workers_are_as_quiet_as_the_driver() -> None:
    """The pipeline's local workers train many models each: TensorFlow's Python warnings (retracing)
    reached the log from them, while the driver had them off. With --verbose they stay on."""
    import logging

    from w2v2ser._cluster import open_cluster
    from w2v2ser._config_schema import ClusterConfig
    from w2v2ser._native_logs import hide_native_logs

    config = ClusterConfig(kind="local", workers=1, threads_per_worker=1, dashboard_address=":0")
    before = _tensorflow_log_level()
    try:
        for hidden in (True, False):
            with hide_native_logs(enabled=hidden), open_cluster(config, use_gpus=False) as handle:
                (level,) = handle.client.run(_tensorflow_log_level).values()
            assert (level == logging.ERROR) is hidden, (hidden, level)
    finally:
        logging.getLogger("tensorflow").setLevel(before)  # this test process's other tests see TF's warnings


def test_progress_bars_stay_live_on_a_terminal_behind_the_native_log_filter() -> None:
    """hide_native_logs points fd 2 at a pipe; the bars still ask whether the real stderr is a terminal."""
    import pty

    code = ("from w2v2ser._native_logs import hide_native_logs, stderr_is_terminal\n"
            "with hide_native_logs():\n    print(stderr_is_terminal())\n")
    main, secondary = pty.openpty()
    try:
        on_terminal = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=secondary,
                                     text=True, timeout=60).stdout.strip()
    finally:
        os.close(main)
        os.close(secondary)
    to_file = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()
    assert (on_terminal, to_file) == ("True", "False")


_INTERRUPTED_WHILE_READING = """
import asyncio, sys, time
from zarr.core.sync import _get_loop
import w2v2ser._cli as cli

async def reads():  # store reads in flight on zarr's event loop when Ctrl-C lands
    await asyncio.gather(asyncio.Event().wait(), asyncio.Event().wait())

def started():
    asyncio.run_coroutine_threadsafe(reads(), _get_loop()).exception(timeout=0.2)  # times out: it waits

def scheduled():  # zarr's loop stops at exit before the read's first step
    loop = _get_loop()
    loop.call_soon_threadsafe(lambda: (asyncio.ensure_future(reads()), loop.stop()))
    time.sleep(0.2)

def interrupted(args, verbose):
    try:
        {when}()
    except TimeoutError:
        pass
    raise KeyboardInterrupt

cli._run_command = interrupted
sys.exit(cli.main(["store", "info", "s.zarr"]))
"""


@pytest.mark.parametrize("when", ["started", "scheduled"])
def test_ctrl_c_during_store_reads_prints_one_line(when: str) -> None:
    """Ctrl-C during `w2v2ser train` printed the interrupt line, then asyncio's "Task was destroyed
    but it is pending!" with a 300-character task repr, twice: zarr's reads in flight were torn
    down at exit. A read scheduled but not yet started added "coroutine ... was never awaited"."""
    done = subprocess.run([sys.executable, "-c", _INTERRUPTED_WHILE_READING.replace("{when}", when)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == ("w2v2ser: interrupted; the store is unchanged (this command only reads it); "
                                   "rerun the same command"), done.stderr  # (`store info` runs it)



_INTERRUPT_WITH_A_HELPER = """
import subprocess, time
from w2v2ser._native_logs import hide_native_logs

try:
    with hide_native_logs():
        helper = subprocess.Popen(["sh", "-c", "echo helper-line >&2; exec sleep 30"])  # holds the stderr pipe
        time.sleep(0.5)
        interrupted = time.monotonic()
        raise KeyboardInterrupt
except KeyboardInterrupt:
    print(f"{time.monotonic() - interrupted:.2f}")
helper.kill()
"""


def test_an_interrupt_does_not_wait_for_helpers_that_hold_stderr() -> None:
    """On Ctrl-C or SIGTERM the native-log filter waited 5 s for helper processes (openSMILE workers,
    alive until exit) to close the stderr pipe: `w2v2ser run` with `cluster: none` printed its
    "terminated" line after SLURM's kill wait of a test cluster (5 s) had already killed it."""
    done = subprocess.run([sys.executable, "-c", _INTERRUPT_WITH_A_HELPER], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "helper-line" in done.stderr  # what the helper wrote before still reaches the terminal
    assert float(done.stdout) < 2.5, done.stdout  # at most 0.5 s of waiting (was 5 s)


def test_a_ctrl_c_while_the_command_line_starts_is_one_line(monkeypatch, capsys) -> None:
    """Found by fault injection: a Ctrl-C during the start-up imports printed a traceback (exit -2)."""
    from w2v2ser import _cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli, "build_parser", interrupted)
    assert _cli.main(["store", "info", "x"]) == 130
    assert capsys.readouterr().err == "w2v2ser: interrupted before the command started; nothing was done\n"


def test_the_train_header_comes_first_and_counts_every_experiment(tmp_path: Path, capsys) -> None:
    """Found by a pipeline trial: experiments failed at planning printed their lines before the stage
    header, which then counted only the planned ones ("7 experiment(s)" of the file's 10)."""
    from w2v2ser._cli import main

    assert main(["run", str(_pipeline(tmp_path)), "--stage", "train"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train")]
    assert lines[0] == "train: planning 7 experiment(s)", lines
    assert lines[-1] == ("train: 0 of 7 experiment(s) planned (3 skipped, 4 failed before training), "
                         "0 fold x seed runs, 0 to train"), lines
    assert len(lines) == 9  # each experiment's reason between the two
