"""The benchmark scripts still run: each at its smallest size, results into a temporary folder.

They reach into private module state to compare variants (a codec pipeline, the tensorstore
writer), so a refactor can break them without any other test noticing: bench_store_write.py
failed with an AttributeError for several stops after tensorstore's handle moved modules.
The figures of these tiny runs mean nothing; only that every script finishes and writes its JSON.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.markers import Marker

BENCHMARKS = Path(__file__).parent / "benchmarks"
RAVDESS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ravdess"

CASES = {
    "bench_store_write": ["--quick"],
    "bench_store_index": ["--rows", "2000", "--speakers", "20"],
    "bench_store": ["--quick", "--no-drop-cache"],
    "bench_sweep": ["--steps", "--problems", "tiny"],
    "bench_ceiling": ["--files", "4", "--shard-size", "2", "--corpus", str(RAVDESS)],
    "bench_fork": ["--utterances", "8"],
    "bench_train": ["--quick"],  # its --quick stores once had a single label, which training refuses
    "bench_head_step": ["--shapes", "base", "--rounds", "2", "--steps", "1", "--frames", "20"],
    "bench_head_step --fold": ["--shapes", "base", "--rounds", "2", "--steps", "1", "--frames", "20", "--fold"],
    "compare_layer_forward": ["--seeds", "2", "--per-actor", "4"],
    "compare_layer_forward --change fold": ["--seeds", "2", "--per-actor", "4", "--change", "fold"],
}


@pytest.mark.slow  # bench_train --quick alone takes about 30 s
@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_script_runs_at_its_smallest_size(script: str, tmp_path: Path) -> None:
    if script == "bench_ceiling" and not RAVDESS.is_dir():
        pytest.skip(f"needs the shared RAVDESS copy at {RAVDESS}")
    args = [*CASES[script], "--out", str(tmp_path / "out")]
    script = script.split()[0]  # "NAME --option": the same script with another variant
    if script in ("bench_train", "compare_layer_forward"):  # generated stores go to its cache folder
        args += ["--cache", str(tmp_path / "work" / "not-yet-created")]
    elif script not in ("bench_sweep", "bench_head_step"):
        args += ["--workdir", str(tmp_path / "work" / "not-yet-created")]
    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    written = list((tmp_path / "out").glob("*.json"))
    assert written, done.stdout[-2000:]
    assert all(json.loads(p.read_text()).get("headline") for p in written)


# What the GPU machine's image ('cuda', Python 3.12; its package list as read on 2026-11-17) holds of stage 1's needs.
GPU_IMAGE = ("torch", "transformers", "tensorstore", "numpy", "h5py", "pyarrow", "pyyaml", "tqdm", "pandas",
             "packaging", "python-dateutil", "six", "typing-extensions")


def _words_after(text: str, start: str) -> list[str]:
    """The words after `start` up to the command's end (a shell line without a trailing backslash)."""
    lines = text[text.index(start) + len(start):].splitlines()
    words: list[str] = []
    for line in lines:
        words += line.replace("\\", " ").split()
        if not line.rstrip().endswith("\\"):
            break
    return words


def _names_in(text: str, start: str) -> set[str]:
    """Distribution names after `start` up to the command's end (a shell line without a trailing backslash)."""
    return {_canonical(w.split("==")[0]) for w in _words_after(text, start) if not w.startswith("-")}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_gpu_wheels_and_the_gpu_image_hold_every_dependency_of_stage_one() -> None:
    # gpu_figures.sh runs where only the image's packages and gpu_wheels.sh's wheels exist (no index):
    # a distribution stage 1 needs that is in neither fails every GPU step at its first import.
    script = (BENCHMARKS / "gpu_wheels.sh").read_text()
    image = set(GPU_IMAGE)
    wheels = _names_in(script, "-d build/gpu_wheels")
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    options = setup["options"]["install_requires"] + setup["options.extras_require"]["extract"]
    roots = {_canonical(re.split(r"[\s;<>=!~\[]", line.strip(), maxsplit=1)[0]) for line in options.splitlines()
             if line.strip() and not line.strip().startswith("#")}
    # Stage 2 and report dependencies, which stage 1 does not import (checked below).
    later = {"matplotlib": "matplotlib", "dask": "dask", "scikit-learn": "sklearn"}
    code = ("import sys, w2v2ser.extract, w2v2ser.store, opensmile; "
            f"print(sorted(m for m in {sorted(later.values())} if m in sys.modules))")
    imported = subprocess.run([sys.executable, "-c", code],
                              capture_output=True, text=True, check=True).stdout.strip()
    assert imported == "[]", f"stage 1 imports {imported}: add their wheels to gpu_wheels.sh"
    missing, seen, todo = {}, set(), sorted(roots - set(later))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in image | wheels:
            missing.setdefault(name, "stage 1")
        if name in image:
            continue  # the image's own packages bring their dependencies
        for requirement in importlib.metadata.requires(name) or []:
            marker = requirement.split(";", 1)[1] if ";" in requirement else None
            if marker and not Marker(marker).evaluate({"extra": ""}):
                continue
            needed = _canonical(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])
            if needed not in image | wheels:
                missing.setdefault(needed, name)
            todo.append(needed)
    assert not missing, f"neither in the GPU image nor in gpu_wheels.sh (needed by): {missing}"


def test_gpu_wheels_empties_its_folder_and_pins_every_wheel() -> None:
    # gpu_figures.sh installs build/gpu_wheels/*.whl: a wheel left from an earlier download beside another
    # version of the same package (an unpinned name moved on) stops the whole install on the device.
    # Pinned, not compared with this venv: setup.cfg takes ranges, so a fresh CI venv may hold newer versions.
    script = (BENCHMARKS / "gpu_wheels.sh").read_text()
    words = _words_after(script, "-d build/gpu_wheels")
    pins = dict(w.split("==", 1) if "==" in w else (w, None) for w in words if not w.startswith("-"))
    unpinned = sorted(name for name, pin in pins.items() if not pin)
    assert not unpinned, f"gpu_wheels.sh downloads these without a version (NAME==VERSION): {unpinned}"
    commands = [line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    download = next(i for i, line in enumerate(commands) if "download" in line)
    assert "rm -rf build/gpu_wheels" in commands[:download], "gpu_wheels.sh must empty build/gpu_wheels first"


def _gpu_figures(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHON")}
    return subprocess.run(["bash", str(BENCHMARKS / "gpu_figures.sh"), *args], env={**environment, **env},
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)


def test_gpu_figures_stops_before_its_steps_when_stage_one_cannot_be_imported(tmp_path: Path) -> None:
    # On the GPU machine a missing wheel (pydantic was one) failed every step in turn; stop at once instead.
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "pydantic.py").write_text("raise ImportError('pydantic is not installed here (test)')\n")
    out = tmp_path / "out"
    done = _gpu_figures(tmp_path, "--smoke", PYTHON=sys.executable, OUT=str(out), PYTHONPATH=str(blocked))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "pydantic MISSING" in done.stdout and "carry build/gpu_wheels" in done.stderr
    assert "FAILED" not in done.stdout and not list(out.iterdir())


def test_gpu_figures_works_in_a_folder_of_its_own_and_leaves_other_runs_alone(tmp_path: Path) -> None:
    # It removed a fixed /tmp/w2v2ser_gpu_work before its import check: a second run (or a test) on the
    # same machine deleted the work folder of a run in progress.
    other = Path("/tmp/w2v2ser_gpu_work")
    other.mkdir(exist_ok=True)
    marker = other / f"another-run-{os.getpid()}"
    marker.write_text("in progress\n")
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "pydantic.py").write_text("raise ImportError('pydantic is not installed here (test)')\n")
    (tmp_path / "tmp").mkdir()
    try:
        done = _gpu_figures(tmp_path, "--smoke", PYTHON=sys.executable, OUT=str(tmp_path / "out"),
                            PYTHONPATH=str(blocked), TMPDIR=str(tmp_path / "tmp"))
        assert done.returncode == 1, done.stdout + done.stderr
        assert marker.exists(), "gpu_figures.sh deleted another run's work folder"
    finally:
        marker.unlink(missing_ok=True)
    assert not list((tmp_path / "tmp").iterdir())  # its own folder is removed, even when it stops early


def test_gpu_figures_refuses_an_argument_it_does_not_know(tmp_path: Path) -> None:
    # A typo of --smoke once started the full GPU run (full-size model, 1,200 s of audio) on any machine.
    done = _gpu_figures(tmp_path, "--smok", PYTHON="false", OUT=str(tmp_path / "out"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "usage: bash tests/benchmarks/gpu_figures.sh [--smoke]" in done.stderr and "--smok" in done.stderr


def test_gpu_figures_smoke_keeps_its_figures_out_of_the_results_folder(tmp_path: Path) -> None:
    # Without OUT, the smoke run replaced results/bench_ceiling.{json,md}, which the README cites.
    done = _gpu_figures(tmp_path, "--smoke", PYTHON="false")
    where = [line for line in done.stdout.splitlines() if line.startswith("results: ")]
    assert where and "tests/benchmarks/results" not in where[0], done.stdout + done.stderr


def test_gpu_figures_keeps_the_eager_row_when_the_compile_step_fails(tmp_path: Path) -> None:
    # The compile step comes last and may time out on the GPU machine; what was measured before it stays.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(
        "import torch\n\n\ndef _compile(*args, **kwargs):\n    raise RuntimeError('torch.compile broken (test)')\n\n\n"
        "torch.compile = _compile\n")
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_figures.py"), "--smoke", "--compile", "yes",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(broken)}, check=False)
    assert done.returncode != 0 and "torch.compile broken (test)" in done.stderr, done.stderr[-2000:]
    rows = json.loads((tmp_path / "out" / "gpu_forward.json").read_text())["rows"]
    assert [r["label"] for r in rows if r["label"] != "sweep"] == ["eager"]


def test_bench_codecs_names_a_missing_egemaps_store_before_running_the_model(tmp_path: Path) -> None:
    # Its default store did not exist: the script ran the full-size model, then died in a zarr traceback.
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_codecs.py"), "--files", "1", "--egemaps-store",
                           str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 2, done.stdout + done.stderr[-2000:]
    assert "nope.zarr holds no eGeMAPS" in done.stderr and "Traceback" not in done.stderr
    assert "wav2vec2-base (random weights)" not in done.stdout


def _tiny_wav2vec2_store(tmp_path: Path, *, utterances: int) -> Path:
    """A store of a tiny random wav2vec2's layers for ``utterances`` 0.5 s files (two speakers)."""
    from fixtures_audio import write_audio
    from tiny_models import save_tiny_wav2vec2
    from w2v2ser.extract import build_extractor, extract_corpus
    from w2v2ser.store import Utterance

    model = save_tiny_wav2vec2(tmp_path / "tiny")
    items = [Utterance(id=f"u{i}", path=str(write_audio(tmp_path / f"{i}.wav", duration=0.5, seed=i)),
                       speaker=f"s{i % 2}", label="x") for i in range(utterances)]
    store = tmp_path / "w2v2.zarr"
    extract_corpus(items, store, extractors=[build_extractor("wav2vec2", {"model": str(model)})], progress=False)
    return store


@pytest.mark.slow  # about 40 s: a tiny wav2vec2 store, then TensorFlow's start
def test_bench_train_small_refuses_a_store_without_its_features_before_timing(tmp_path: Path) -> None:
    # --small read eGeMAPS and the spectrogram without checking: a store lacking one died in a traceback
    # after the other's figures were measured, and nothing was written.
    store = _tiny_wav2vec2_store(tmp_path, utterances=2)
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_train.py"), "--small", str(store), "--epochs", "2",
                           "--reps", "1", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 2, done.stdout + done.stderr[-2000:]
    assert "holds neither egemaps nor spectrogram (it holds ['wav2vec2'])" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow  # a full-size random wav2vec2-base on 3 s of audio, 4 times
def test_bench_scaling_times_its_sizes_after_an_untimed_run(tmp_path: Path) -> None:
    # The first extract_corpus of a process pays one-off start costs; timed as the 1x size, they made
    # "per-unit cost 4x/1x" 0.23 on a quick run: a warm-up figure, not a scaling one.
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_scaling.py"), "--quick", "--skip-train", "--cache",
                           str(tmp_path / "cache"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    warm = [i for i, line in enumerate(lines) if line.startswith("untimed warm-up run")]
    assert warm and warm[0] < min(i for i, line in enumerate(lines) if line.startswith("extract x1")), done.stdout
    result = json.loads((tmp_path / "out" / "bench_scaling_quick.json").read_text())
    assert result["config"]["extract_warmup_s"] > 0


def test_the_benchmarks_readme_installs_stage_one_on_the_gpu_from_gpu_wheels() -> None:
    # Its recipe for bench_extract.py on the GPU installed a hand list without zarrs and pydantic, which
    # stage 1 imports: it would have failed first time, on scarce GPU minutes.
    readme = (BENCHMARKS / "README.md").read_text()
    installs = [line for line in readme.splitlines() if "pip install" in line]
    assert installs and all("build/gpu_wheels" in line and "--no-index" in line for line in installs), installs
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_extract
    finally:
        sys.path.remove(str(BENCHMARKS))
    command = re.search(r"python3 tests/benchmarks/bench_extract\.py ((?:.*\\\n)*.*)", readme).group(1)
    args = bench_extract.parse_args(shlex.split(command.replace("\\\n", " ").replace('"$OUT"', "out")))
    assert args.device == "cuda" and args.synthetic and "write" in args.modes


def test_bench_store_s3_refuses_a_count_below_one(tmp_path: Path) -> None:
    # --utterances 0 ran, and wrote an all-zero table as results (by default over the README's figures).
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_store_s3.py"), "--utterances", "0", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stdout + done.stderr[-2000:]
    assert "argument --utterances: expected a whole number of at least 1, got 0" in done.stderr
    assert not (tmp_path / "out").exists()


def _speech_spectrogram_store(tmp_path: Path) -> Path:
    """A spectrogram store of two 0.3 s files (u0, u1; two speakers), both with vocal_channel = speech."""
    from fixtures_audio import write_audio
    from w2v2ser.extract import build_extractor, extract_corpus
    from w2v2ser.store import Utterance

    utterances = [Utterance(id=f"u{i}", path=str(write_audio(tmp_path / f"{i}.wav", duration=0.3, seed=i)),
                            speaker=f"s{i % 2}", label="x", extra={"vocal_channel": "speech"}) for i in range(2)]
    store = tmp_path / "s.zarr"
    extract_corpus(utterances, store, extractors=[build_extractor("spectrogram")], progress=False)
    return store


def test_compare_on_subset_names_a_subset_no_utterance_has(tmp_path: Path) -> None:
    # A misspelt field (vocal_chanel) kept no utterance and ended in scikit-learn's "Found empty input array".
    store = _speech_spectrogram_store(tmp_path)
    runs = [tmp_path / "run_a", tmp_path / "run_b"]
    done = subprocess.run([sys.executable, str(BENCHMARKS / "compare_on_subset.py"), str(store), *map(str, runs),
                           "--subset", "vocal_chanel=speech", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stdout + done.stderr[-2000:]
    assert "no utterance of" in done.stderr and "has vocal_chanel = 'speech'" in done.stderr
    assert "vocal_channel" in done.stderr.split("its fields are")[1] and "Traceback" not in done.stderr


def test_compare_on_subset_names_a_run_that_predicts_no_utterance_of_the_subset(tmp_path: Path) -> None:
    # A run of another store (or without the subset in its test folds) ended in scikit-learn's
    # "Found empty input array" traceback.
    store = _speech_spectrogram_store(tmp_path)
    runs = [tmp_path / "run_a", tmp_path / "run_b"]
    for run, ids in zip(runs, (["u0", "u1"], ["other1", "other2"])):
        (run / "runs" / "r0").mkdir(parents=True)
        (run / "runs" / "r0" / "predictions.csv").write_text(
            "id,label,predicted\n" + "".join(f"{i},x,x\n" for i in ids))
    done = subprocess.run([sys.executable, str(BENCHMARKS / "compare_on_subset.py"), str(store), *map(str, runs),
                           "--subset", "vocal_channel=speech", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stdout + done.stderr[-2000:]
    assert f"{runs[1] / 'runs' / 'r0' / 'predictions.csv'} predicts no utterance of the subset" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_bench_cold_read_runs_and_prints_its_headline_last(tmp_path: Path) -> None:
    # The benchmarks' README: every script prints its headline as the LAST line; this one printed its
    # results path after it. (Not in CASES: it needs a store of a 3-D feature.)
    store = _tiny_wav2vec2_store(tmp_path, utterances=3)
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_cold_read.py"), "--store", str(store),
                           "--utterances", "3", "--reps", "1", "--batch", "2", "--workdir", str(tmp_path / "work"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    headline = json.loads((tmp_path / "out" / "bench_cold_read.json").read_text())["headline"]
    assert done.stdout.strip().splitlines()[-1] == headline


def _tiny_bench_extract(tmp_path: Path, *, modes: str) -> subprocess.CompletedProcess:
    """bench_extract.py on CPU with a tiny model: 2 synthetic files, one rep of ``modes``, out/w.{json,md}."""
    return subprocess.run([sys.executable, str(BENCHMARKS / "bench_extract.py"), "--device", "cpu", "--tiny",
                           "--synthetic", "2", "--reps", "1", "--features", "wav2vec2", "--modes", modes,
                           "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--name", "w"],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "W2V2SER_BENCH_CACHE": str(tmp_path / "cache")})


@pytest.mark.slow  # torch and a tiny model's store writes: about 15 s, 40 s on the loaded box
def test_bench_extract_write_note_gives_the_models_own_bytes_per_audio_second(tmp_path: Path) -> None:
    # The note assumed 1 MB per audio second (13 x 768 float16): with the tiny model it said "~0 audio s/s"
    # beside a measured 19 audio s/s, and a large model's 2.6 MB would have made it 2.6x too high.
    done = _tiny_bench_extract(tmp_path, modes="write")
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "w.json").read_text())["summary"]["write"]
    note = re.search(r"raw store write \(write\): .*\(([\d.e-]+) MB per audio second -> ([\d.]+) audio s/s\)",
                     (tmp_path / "out" / "w.md").read_text())
    assert note, done.stdout
    assert float(note.group(1)) == pytest.approx(summary["mb_per_audio_s"], rel=1e-2)
    assert summary["mb_per_audio_s"] < 0.1  # the tiny model: 3 x 32 float16 per frame, not 13 x 768
    assert float(note.group(2)) == pytest.approx(summary["audio_s_per_s_median"], abs=0.05)


@pytest.mark.slow  # torch and a tiny model: about 15 s, 40 s on the loaded box
def test_bench_extract_warms_bare_and_extractor_at_the_timed_batch_shapes(tmp_path: Path) -> None:
    # The bare model was warmed on single signals only: rep 0 timed `bare` first at the real batch shapes,
    # paying its kernel choice and allocations there, which flattered pipeline/bare (1.21 in a CPU smoke).
    done = _tiny_bench_extract(tmp_path, modes="bare,extractor")
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "w.json").read_text())
    assert sorted(result.get("warmup_s", {})) == ["bare", "extractor"], done.stdout
    assert all(seconds > 0 for seconds in result["warmup_s"].values())
    assert [r["rep"] for r in result["runs"]["bare"]] == [0]  # the warm-up call is not among the timed runs


@pytest.mark.slow  # eGeMAPS of 12 RAVDESS files, a 1-epoch run, then predict: about a minute
def test_predict_speaker_groups_refuses_a_run_that_is_not_speaker_normalised(tmp_path: Path) -> None:
    # Its group figures were computed with whatever statistics predict used: for a run of global statistics
    # (or if predict stopped reading the MIN_GROUP_FILES it sets) every "group" row was the global figure.
    if not RAVDESS.is_dir():
        pytest.skip(f"needs the shared RAVDESS copy at {RAVDESS}")
    for actor in ("01", "21", "23"):  # the ravdess protocol's train, validation and test actors
        folder = tmp_path / "ravdess" / "speech" / f"Actor_{actor}"
        folder.mkdir(parents=True)
        for source in sorted((RAVDESS / "speech" / f"Actor_{actor}").iterdir())[::15]:
            (folder / source.name).symlink_to(source.resolve())
    cli = [sys.executable, "-m", "w2v2ser"]
    for command in (["extract", "ravdess", str(tmp_path / "ravdess"), "--store", str(tmp_path / "s.zarr"),
                     "--features", "egemaps", "--no-progress"],
                    ["train", str(tmp_path / "s.zarr"), "--features", "egemaps", "--norm", "global", "--seeds", "1",
                     "--out", str(tmp_path / "run"), "--threads", "1", "--set", "max_epochs=1", "--no-progress"]):
        made = subprocess.run(cli + command, capture_output=True, text=True, timeout=600, check=False)
        assert made.returncode == 0, made.stdout + made.stderr[-2000:]
    done = subprocess.run([sys.executable, str(BENCHMARKS / "predict_speaker_groups.py"), str(tmp_path / "run"),
                           "--audio", str(tmp_path / "ravdess" / "speech" / "Actor_23"), "--sizes", "1", "--reps", "1",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 2, done.stdout + done.stderr[-2000:]
    assert "normalised with ['global'], not their groups' own statistics" in done.stderr
    assert not (tmp_path / "out").exists()


def _benchmarks_copy(tmp_path: Path) -> Path:
    """The benchmark scripts copied under tmp_path, with a results/ folder holding one committed-looking file:
    a quick mode that (wrongly) writes into results/ changes the copy, never the repository."""
    copy = tmp_path / "repo" / "tests" / "benchmarks"
    copy.mkdir(parents=True)
    for script in BENCHMARKS.glob("*.py"):
        (copy / script.name).write_bytes(script.read_bytes())
    (copy / "results").mkdir()
    (copy / "results" / "committed.json").write_text("{}\n")
    return copy


def test_a_quick_benchmark_run_leaves_the_results_folder_untouched(tmp_path: Path) -> None:
    # bench_store_write --quick (and every other --quick) wrote results/<name>_quick.{json,md} over the
    # committed files, so a smoke run dirtied the repository.
    copy = _benchmarks_copy(tmp_path)
    (tmp_path / "tmp").mkdir()
    done = subprocess.run([sys.executable, str(copy / "bench_store_write.py"), "--quick", "--modes", "dd,w2v2ser",
                           "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=600,
                          check=False, env={**os.environ, "TMPDIR": str(tmp_path / "tmp")}, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert sorted(p.name for p in (copy / "results").iterdir()) == ["committed.json"], done.stdout[-2000:]
    where = re.search(r"quick run: results go to (\S+)", done.stdout)
    assert where and Path(where.group(1)).parent == tmp_path / "tmp", done.stdout[-2000:]
    assert json.loads((Path(where.group(1)) / "bench_store_write_quick.json").read_text())["headline"]


def test_every_quick_mode_writes_outside_the_results_folder_unless_given_out(tmp_path: Path) -> None:
    copy = _benchmarks_copy(tmp_path)
    (tmp_path / "tmp").mkdir()
    code = textwrap.dedent("""
        import importlib, json, sys
        sys.path.insert(0, sys.argv[1])
        outs = {}
        for name, argv in [("bench_store", ["--quick"]), ("bench_train", ["--quick"]), ("bench_scaling", ["--quick"]),
                           ("bench_extract", ["--quick"]), ("bench_extract", ["--tiny"]),
                           ("bench_store", ["--quick", "--out", "mine"]), ("bench_store", [])]:
            module = importlib.import_module(name)
            sys.argv = [name, *argv]
            outs[" ".join([name, *argv])] = (module.parse_args([*argv]) if name == "bench_extract"
                                             else module.parse_args()).out
        print(json.dumps(outs))
    """)
    done = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True, timeout=300,
                          check=False, env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    assert done.returncode == 0, done.stderr[-3000:]
    outs = json.loads(done.stdout.splitlines()[-1])
    assert outs.pop("bench_store --quick --out mine") == "mine" and outs.pop("bench_store") is None
    assert all(out and Path(out).parent == tmp_path / "tmp" for out in outs.values()), outs
    assert sorted(p.name for p in (copy / "results").iterdir()) == ["committed.json"]


def test_bench_fidelity_asks_for_its_store_instead_of_a_default_that_does_not_exist(tmp_path: Path) -> None:
    # Its default store (/work/scratch/ravdess-v1.zarr) no longer existed: a run died in a traceback.
    def fidelity(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(BENCHMARKS / "bench_fidelity.py"), *args, "--work",
                               str(tmp_path / "work")], capture_output=True, text=True, timeout=300, check=False)

    done = fidelity("--variant", "head")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "--variant head needs --store STORE: a w2v2ser store with eGeMAPS of RAVDESS" in done.stderr
    done = fidelity("--variant", "keras", "--store", str(tmp_path / "nope.zarr"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"--store {tmp_path / 'nope.zarr'}: no w2v2ser store there" in done.stderr
