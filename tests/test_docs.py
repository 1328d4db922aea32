"""The README says what the code does: each test pins one statement to the code or data behind it."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_audio import write_audio  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
BENCH_README = (REPO / "tests" / "benchmarks" / "README.md").read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def test_pipeline_section_states_the_shipped_spectrogram_settings() -> None:
    shipped = yaml.safe_load((REPO / "pipeline.yaml").read_text())
    spectrogram = shipped["extraction"]["stores"]["classic"]["features"]["spectrogram"]
    section = _section(README, "## Running the whole pipeline")
    stated = re.search(r"spectrogram: (\d+(?:\.\d+)?) ms window,\s+(\d+(?:\.\d+)?) ms hop", section)
    assert stated, "the pipeline.yaml section must state the shipped spectrogram window and hop"
    assert float(stated.group(1)) == spectrogram["window_ms"]
    assert float(stated.group(2)) == spectrogram["hop_ms"]
    if spectrogram.get("n_fft") is None:  # a 512-point FFT may be named only as the released code's option
        assert "spectrogram settings (25 ms / 20 ms" not in section


def test_performance_rows_cite_results_files_that_hold_their_figures() -> None:
    """Every results file the Performance section names exists; two rows said "same" for the command
    of the row above after rows were inserted between (their figures are in other files)."""
    section = _section(README, "## Performance")
    results = REPO / "tests" / "benchmarks" / "results"
    named = set(re.findall(r"`([a-z][a-z0-9_]*\.md)`", section))
    assert named and sorted(name for name in named if not (results / name).exists()) == []
    rows = {line.split(" | ")[0]: line for line in section.splitlines() if line.startswith("| ")}
    all_features = rows["| Extraction, CPU, wav2vec2 + eGeMAPS + spectrogram (before issue 12)"]
    assert "0.72 of the bare forward" in all_features and "`bench_extract_cpu.md`" in all_features
    assert re.search(r"\| pipeline_all +\| [\d.]+ +\| [\d.]+ +\| 0\.715 ", (results / "bench_extract_cpu.md").read_text())
    one_layer = rows["| One-layer reads vs all-layer reads, cold"]
    assert "(943 vs 99 utterances/s" in one_layer and "`bench_store.md`" in one_layer
    store = (results / "bench_store.md").read_text()
    assert re.search(r"cold +\| one_layer +\| zarr_store +\| 943\.", store)
    assert re.search(r"cold +\| all_layers +\| zarr_store +\| 99\.0", store)


def test_store_is_finalized_once_after_all_shards(tmp_path: Path, monkeypatch) -> None:
    from w2v2ser.extract import build_extractor, extract_corpus
    from w2v2ser.store import StoreWriter, Utterance

    assert "After every shard" not in README and "merged after every shard" not in README
    assert "finalizes the store once" in _section(README, "## The feature store")
    calls = []
    finalize = StoreWriter.finalize
    monkeypatch.setattr(StoreWriter, "finalize", lambda self: (calls.append(1), finalize(self))[1])
    utterances = [Utterance(id=f"u{i}", path=str(write_audio(tmp_path / f"{i}.wav", duration=0.3, seed=i)),
                            speaker=f"s{i % 2}", label="x") for i in range(4)]
    summary = extract_corpus(utterances, tmp_path / "s.zarr", extractors=[build_extractor("spectrogram")],
                             shard_size=1, progress=False)
    assert summary.complete and len(calls) == 1  # four shards, one finalize


def test_store_read_figures_agree_between_readmes_and_results() -> None:
    result = json.loads((REPO / "tests" / "benchmarks" / "results" / "bench_store.json").read_text())
    cold = {(r["read"], r["format"]): r for r in _rows(result) if r["cache"] == "cold"}
    zarr_all = cold[("all_layers", "zarr_store")]["utt_s"]
    npy_all = cold[("all_layers", "npy_per_utterance")]["utt_s"]
    one_over_all = cold[("one_layer", "zarr_store")]["utt_s"] / zarr_all
    for name, text in (("README.md", README), ("tests/benchmarks/README.md", BENCH_README)):
        assert f"{zarr_all:.1f}" in text, f"{name}: cold all-layer Zarr reads should read {zarr_all:.1f} utt/s"
        assert f"{one_over_all:.1f}" in text, f"{name}: one layer / all layers should read {one_over_all:.1f}x"
    assert f"npy {npy_all:.1f}" in BENCH_README
    assert "10.9 utt/s" not in BENCH_README  # the figure before the direct read path


def _rows(result: dict) -> list[dict]:
    """utt/s per (cache, read, format) from bench_store.json's summary (medians over repetitions)."""
    rows = []
    for key, entry in result["summary"].items():  # "cold/all_layers/zarr_store" -> {"utt_per_s": ...}
        cache, read, fmt = key.split("/")
        rows.append({"cache": cache, "read": read, "format": fmt, "utt_s": entry["utt_per_s"]})
    return rows


def test_heads_claim_matches_the_heads() -> None:
    heads = README[README.index("- **Heads**"):][:400]
    if "scikit-learn" in heads:  # only claimed once the heads are real scikit-learn estimators
        from sklearn.base import BaseEstimator

        from w2v2ser.train import DenseHead, FusionHead, LSTMHead

        assert all(issubclass(head, BaseEstimator) for head in (DenseHead, LSTMHead, FusionHead))


def test_exit_code_table_matches_the_command_line(monkeypatch, capsys) -> None:
    from w2v2ser import ConfigError, DataError, W2v2serError, _cli
    from w2v2ser._common import EXIT_FAILED, EXIT_INPUT, Terminated
    from w2v2ser.store import StoreError

    section = README[README.index("**Errors and exit codes.**"):]
    rows = section[:section.index("\n\n", section.index("\n| 0 |"))]  # the table, whatever its rows' lengths
    table = {int(code): meaning for code, meaning in re.findall(r"^\| (\d+) \| (.+?) \|$", rows, re.M)}
    assert set(table) == {0, EXIT_FAILED, EXIT_INPUT, 130, 141, 143}
    assert "failed" in table[EXIT_FAILED] and "configuration" in table[EXIT_INPUT]
    raised = [(W2v2serError("a unit failed"), EXIT_FAILED), (ConfigError("bad key"), EXIT_INPUT),
              (DataError("bad audio"), EXIT_INPUT), (StoreError("incomplete store"), EXIT_INPUT),
              (KeyboardInterrupt(), 130), (Terminated(), 143)]
    for error, code in raised:
        def command(args: argparse.Namespace, error: BaseException = error) -> int:
            raise error

        parser = argparse.ArgumentParser()
        parser.set_defaults(func=command)
        monkeypatch.setattr(_cli, "build_parser", lambda parser=parser: parser)
        assert _cli.main([]) == code, error
        err = capsys.readouterr().err
        assert err.startswith("w2v2ser: ") and "Traceback" not in err

    def closed_pipe(args: argparse.Namespace) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=closed_pipe)
    monkeypatch.setattr(_cli, "build_parser", lambda: parser)
    assert _cli.main([]) == 141 and capsys.readouterr().err == ""


def test_quick_start_test_command_is_what_ci_runs() -> None:
    # The README's second quick-start command, step by step, is what .ci/run runs (pip without -q).
    block = _section(README, "## Quick start")
    command = re.search(r"\*\*2\. Install and run the tests\.\*\*.*?```bash\n(.+?)\n```", block, re.S).group(1)
    def quiet(step: str) -> str:  # CI's pip is quiet; the README's is not
        return " ".join(word for word in step.split() if word != "-q" or "pytest" in step)

    readme_steps = [quiet(step) for step in command.split("&&")]
    ci_steps = [quiet(line)
                for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.startswith((".venv/bin/pip install", ".venv/bin/python -m", "python3 -m venv"))]
    # ... and after it, CI runs only the slow tests.
    assert ci_steps[:len(readme_steps)] == readme_steps
    assert ci_steps[len(readme_steps):] == [".venv/bin/python -m pytest -q -m slow"]


def test_every_command_line_option_says_what_it_does() -> None:
    """`w2v2ser CMD --help` describes every option (--no-progress had no text in four commands)."""
    from w2v2ser._cli_parser import build_parser

    def parsers(parser: argparse.ArgumentParser, name: str):
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    yield from parsers(child, f"{name} {sub}")

    silent = [f"{name} {'/'.join(action.option_strings) or action.dest}"
              for name, parser in parsers(build_parser(), "w2v2ser") for action in parser._actions
              if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()]
    assert silent == []


def test_readme_python_extraction_example_runs(tmp_path: Path, monkeypatch) -> None:
    """The README's stage 1 Python example, run as written on a tiny RAVDESS tree and a tiny model."""
    from fixtures_audio import build_ravdess_tree
    from tiny_models import save_tiny_wav2vec2

    section = _section(README, "## Stage 1: extract")
    code = re.search(r"\*\*In Python\*\*.*?```python\n(.*?)```", section, re.S).group(1)
    build_ravdess_tree(tmp_path / "data", actors=(1, 2), emotions=(1, 5), duration=0.4)
    model = save_tiny_wav2vec2(tmp_path / "model")
    for given, local in (("../shared/data/ravdess", tmp_path / "data"), ("facebook/wav2vec2-base", model),
                         ("stores/ravdess.zarr", tmp_path / "s.zarr")):
        assert f'"{given}"' in code
        code = code.replace(f'"{given}"', repr(str(local)))
    monkeypatch.setattr("sys.argv", ["example"])
    exec(compile(code, "README.md", "exec"), {})
    from w2v2ser.store import open_store

    store = open_store(tmp_path / "s.zarr")
    assert sorted(store.features) == ["egemaps", "spectrogram", "wav2vec2"]
    assert store.features["spectrogram"].to_dict()["config"]["hop_ms"] == 20.0
    assert len(store.list_utterances()) == 12


def test_benchmark_scripts_the_slow_suite_runs_are_the_ones_the_readmes_name() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from test_benchmarks import CASES

    scripts = sorted({case.split()[0] for case in CASES})
    intro = BENCH_README.split("\n\n", 2)[1]
    assert [s for s in scripts if f"`{s}" not in intro] == []
    words = {9: "nine", 11: "eleven"}
    assert f"runs {words[len(scripts)]} of the scripts" in README and f"{words[len(CASES)]} cases" in README


def test_the_exported_schema_describes_every_extractor_option_and_experiment_key() -> None:
    """Found by an extension trial: no extractor option carried a description in `run --schema`,
    so editors completed bare keys, though every config documents its fields in `Attributes:`."""
    from w2v2ser._config_schema import pipeline_json_schema

    definitions = pipeline_json_schema()["$defs"]
    described = ["SpectrogramConfigOptions", "EgemapsConfigOptions", "Wav2Vec2ConfigOptions", "HubertConfigOptions",
                 "RecipeOverrides", "Experiment"]
    for name in described:
        bare = [key for key, node in definitions[name]["properties"].items()
                if "description" not in node and key not in ("corpus", "grid", "recipe_overrides")]
        assert not bare, (name, bare)
    hop = definitions["SpectrogramConfigOptions"]["properties"]["hop_ms"]["description"]
    assert hop.startswith("Hop in milliseconds; 10 when neither it nor")


def test_reproducibility_section_names_what_changes_the_numbers() -> None:
    """README says what is bit-identical and what is not (speech-encoder frames across thread
    counts and batching, row order, repair, cache path), and names the switches that decide it."""
    import dataclasses

    from w2v2ser.train import ExperimentConfig

    section = _section(README, "## Reproducibility")
    for claim in ("deterministic", "num_threads", "--batch-seconds", "--shard-size", "cache_budget_mb",
                  "Row order", "Repaired stores", "model.keras", "provenance", "data_fingerprint"):
        assert claim in section, claim
    assert "deterministic" in {f.name for f in dataclasses.fields(ExperimentConfig)}  # the option it names
    guarantees = _section(README, "## Guarantees")
    assert "repaired utterances are not bit-identical" in guarantees  # not 'the frames equal' alone


def test_readme_grid_search_example_names_the_classes_of_its_labels(tmp_path: Path) -> None:
    """Found by a notebook session: the README called partition_arrays' y "labels", but they are indices
    into the protocol's classes (so a head fitted on them predicts 0..6) and nothing said where the names are."""
    from stage2_fixtures import build_store, ravdess_utterances
    from w2v2ser.store import open_store
    from w2v2ser.train import get_protocol

    section = _section(README, "## Stage 2: train, evaluate, predict")
    block = re.search(r"```python\n(from sklearn.model_selection import GridSearchCV.*?)```", section, re.S).group(1)
    code = block[:block.index("search = ")]  # up to the search, which trains 46 times
    path = build_store(tmp_path / "rav.zarr", utterances=ravdess_utterances(per_actor=2), layers=3, dim=4)
    assert '"stores/ravdess.zarr"' in code
    scope: dict = {}
    exec(compile(code.replace('"stores/ravdess.zarr"', repr(str(path))), "README.md", "exec"), scope)
    protocol = get_protocol("ravdess")
    label_of = {r.id: protocol.map_label(r.label) for r in open_store(path).list_utterances()}
    speakers_labels = sorted(label_of[r.id] for r in open_store(path).list_utterances()
                             if r.speaker in scope["spec"].train)
    assert sorted(scope["names"][k] for k in scope["y"]) == speakers_labels


def test_readme_grid_search_example_names_the_classes_of_a_csv_store(tmp_path: Path) -> None:
    """Found by review: the example took the names from get_protocol(config.protocol).classes, which is
    () for the csv protocol (its classes are the store's sorted labels): names[y[k]] raised IndexError."""
    from stage2_fixtures import build_store, ravdess_utterances
    from w2v2ser.store import Utterance, open_store

    section = _section(README, "## Stage 2: train, evaluate, predict")
    block = re.search(r"```python\n(from sklearn.model_selection import GridSearchCV.*?)```", section, re.S).group(1)
    code = block[:block.index("search = ")]  # up to the search, which trains 46 times
    rows = [Utterance(id=u.id, path=u.path, speaker=u.speaker, label=f"x{u.label}", corpus="csv")
            for u in ravdess_utterances(per_actor=2, actors=6)]
    path = build_store(tmp_path / "own.zarr", utterances=rows, layers=3, dim=4)
    scope: dict = {}
    exec(compile(code.replace('"stores/ravdess.zarr"', repr(str(path))), "README.md", "exec"), scope)
    assert scope["config"].protocol == "csv"
    label_of = {r.id: r.label for r in open_store(path).list_utterances()}
    assert tuple(scope["names"]) == tuple(sorted(set(label_of.values())))
    train_labels = sorted(label_of[r.id] for r in open_store(path).list_utterances()
                          if r.speaker in scope["spec"].train)
    assert sorted(scope["names"][k] for k in scope["y"]) == train_labels


def test_report_section_states_the_rule_of_the_paper_verdict() -> None:
    """The README said ✓ meant "within two standard deviations of the difference": the code also
    gives every row a margin of at least 1 point, which a row of small spreads depends on."""
    from w2v2ser.evaluate._paper import PaperValue, verdict

    section = _section(README, "## Stage 2: train, evaluate, predict")
    assert "✓ when |difference| ≤ max(2·√(s² + s_paper²), 1 point)" in " ".join(section.split())
    paper = PaperValue(57.0, 0.2, 1)
    assert verdict(57.9, 0.1, paper)[1] is True  # 2 x 0.22 < 0.9 < 1 point
    assert verdict(58.1, 0.1, paper)[1] is False
    assert verdict(61.0, 1.0, PaperValue(57.0, 1.0, 1))[1] is False  # 4.0 > 2 x 1.41
    assert verdict(59.5, 1.0, PaperValue(57.0, 1.0, 1))[1] is True


def test_history_keys_say_what_validation_they_are_on() -> None:
    """Review s63: README said val_loss/val_accuracy were "on the validation speakers", but a CSV
    manifest's split column and IEMOCAP's validation lists choose utterances, not speakers."""
    assert "`val_loss`, `val_accuracy` (on the validation part)" in README
    assert "validation speakers" not in README


def test_store_verify_json_has_the_keys_the_readme_lists(tmp_path: Path, capsys) -> None:
    """Review s63: the keys of `store verify --json` sat in a 160-character code comment; the prose
    now lists them and says the command exits as `store verify` does."""
    from fixtures_audio import build_ravdess_tree

    from w2v2ser._cli import main

    prose = " ".join(README[README.index("`store verify --json` prints"):][:400].split())
    listed = re.match(r"`store verify --json` prints one object with the keys (.*?) and exits as", prose).group(1)
    top = re.findall(r"`(\w+)`", re.sub(r" \(.*?\)", "", listed))  # the elements' keys are in parentheses
    build_ravdess_tree(tmp_path / "data", actors=(1,), emotions=(1, 5), duration=0.4)
    store = tmp_path / "s.zarr"
    assert main(["extract", "ravdess", str(tmp_path / "data"), "--store", str(store), "--features", "spectrogram",
                 "--no-progress"]) == 0
    capsys.readouterr()
    plain = main(["store", "verify", str(store), "--no-progress"])
    capsys.readouterr()
    code = main(["store", "verify", str(store), "--json", "--no-progress"])
    report = json.loads(capsys.readouterr().out)
    assert code == plain == 0 and sorted(report) == sorted(top), (top, report)
    assert "`problems` (a list of `id`, `feature`, `reason`)" in prose
    assert "`queued_for_reextraction` (`id`, `feature`)" in prose


def test_memory_bullet_counts_the_shard_buffers_a_writer_holds(tmp_path: Path, monkeypatch) -> None:
    """Review s67 (rd1): the Memory bullet said a writer holds one shard per feature, but with
    tensorstore one shard is written while the next fills: two buffers per feature, none larger
    than SHARD_BYTES."""
    from test_store import SHARD, build_store

    from w2v2ser.store import _layout, _units

    bullet = " ".join(README[README.index("- **Memory.**"):][:200].split())
    assert "one shard per feature" not in bullet
    assert f"up to two shards per feature, at most {_layout.SHARD_BYTES // 2**20} MiB each" in bullet
    taken: dict[tuple, set[int]] = {}
    take = _units._take_buffer

    def counted(shape: tuple[int, ...], dtype):
        buffer = take(shape, dtype)
        taken.setdefault((tuple(shape), str(dtype)), set()).add(id(buffer))
        return buffer

    _units.release_buffers()
    monkeypatch.setattr(_units, "_take_buffer", counted)
    build_store(tmp_path / "s.zarr", lengths=[40, 30, 50, 20])  # 140 frames: several 16-frame shards per feature
    expected = 2 if importlib.util.find_spec("tensorstore") else 1  # zarr's path writes from the one it fills
    data = {key: ids for key, ids in taken.items() if key[0][0] == SHARD}  # not the statistics' shards
    assert len(data) == 2 and all(len(ids) == expected for ids in data.values()), taken


def test_store_tree_names_the_root_attributes_a_store_has(tmp_path: Path) -> None:
    """Review s67 (rd1): the tree named "layer meaning" inside each feature's attributes, but the
    store keeps the layer names there (`layer_names`) and `layer_meaning` at the root, all under the
    root attribute `w2v2ser`."""
    from w2v2ser.extract import build_extractor, extract_corpus
    from w2v2ser.store import Utterance

    tree = _section(README, "## The feature store")
    head = tree[tree.index('attrs["w2v2ser"]:') + len('attrs["w2v2ser"]:'):tree.index("├── utterances/")]
    head = " ".join(head.replace("│", " ").split())
    root_part, feature_part = head.split("features {")
    root_names = [item.split()[0] for item in root_part.split(",") if item.strip()]
    feature_names = [item.strip() for item in feature_part.rstrip("} ").split(",")]
    audio = write_audio(tmp_path / "a.wav", duration=0.3, seed=0)
    extract_corpus([Utterance(id="u0", path=str(audio), speaker="s", label="x")], tmp_path / "s.zarr",
                   extractors=[build_extractor("spectrogram")], progress=False)
    attrs = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())["attributes"]["w2v2ser"]
    assert attrs["format_version"] == int(head.split("format_version ")[1].split(",")[0])
    assert attrs["row_checksum"] == head.split("row_checksum ")[1].split(",")[0]
    assert [name for name in root_names if name not in attrs] == []
    assert [name for name in feature_names if name not in attrs["features"]["spectrogram"]] == []


def test_the_commands_said_to_take_threads_are_those_that_do() -> None:
    """Review s67 (rd1): "Stage 2's commands take --threads N", but `run`, `evaluate` and
    `predict` have no such option (run takes cluster.threads_per_worker)."""
    from w2v2ser._cli_parser import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    taking = sorted(name for name, parser in subparsers.choices.items()
                    if any("--threads" in action.option_strings for action in parser._actions))
    said = " ".join(_section(README, "## Stage 1: extract").split())
    listed = re.search(r"\. ((?:`\w+`(?:, | and )?)+) take `--threads N`", said)
    assert listed, "the Other options bullet should name the commands that take --threads"
    assert sorted(re.findall(r"`(\w+)`", listed.group(1))) == taking


def test_normalisation_figures_say_what_the_named_tests_check() -> None:
    """Review s67 (rd1): the 180-file figures (1.1e-6, 2.6) came from a one-off check, yet the README
    named the pytest command as if it produced them; it checks synthetic signals to its own tolerance."""
    import inspect

    sys.path.insert(0, str(REPO / "tests"))
    import test_upstreams

    source = inspect.getsource(test_upstreams.test_waveform_normalisation_follows_the_models_preprocessor_config)
    tolerance = re.search(r"atol=([0-9.e-]+)", source).group(1)
    section = " ".join(_section(README, "## Stage 1: extract").split())
    paragraph = section[section.index("**Input normalisation.**"):section.index("**Layers.**")]
    assert "one-off check" in paragraph
    assert f"checks the same agreement on synthetic signals (within {tolerance})" in paragraph


def test_default_data_shards_stay_within_the_bytes_the_readme_states(tmp_path: Path) -> None:
    """Review s67 (rd1): a large model's shard (25 x 1024 float16) was rounded up to a whole chunk
    past the 256 MiB cap (5248 frames, 256.25 MiB); the base model keeps the tree's 12032 frames."""
    from w2v2ser.store import FeatureSpec, StoreWriter, Utterance

    cap = int(re.search(r"at most (\d+) MiB each", " ".join(README.split())).group(1)) * 2**20
    specs = [FeatureSpec(name=f"w{layers}", dim=dim, layers=layers, frame_rate=50.0, dtype="float16", config={})
             for layers, dim in ((13, 768), (25, 1024))]
    writer = StoreWriter(tmp_path / "s.zarr")
    writer.plan([Utterance(id="u", path="u.wav", speaker="s", label="x")], num_samples=[16000], features=specs,
                capacities={spec.name: [50] for spec in specs})
    writer.close()
    shards = {}
    for spec in specs:
        meta = json.loads((tmp_path / "s.zarr" / "features" / spec.name / "data" / "zarr.json").read_text())
        shards[spec.name] = meta["chunk_grid"]["configuration"]["chunk_shape"]
    assert shards["w13"] == [12032, 13, 768] and "shards (12032, 13, 768) = 240 s" in README
    assert all(frames * layers * dim * 2 <= cap for frames, layers, dim in shards.values()), shards


def test_few_files_bullet_gives_the_seconds_per_shard_of_base_and_large_models() -> None:
    """Review s67 (rd1): "about one file per 240 s of audio" held for base models only."""
    from w2v2ser.store._layout import default_chunk_frames, default_shard_frames

    from w2v2ser.store import FeatureSpec

    bullet = " ".join(README[README.index("- **Few files.**"):][:400].split())
    for layers, dim, said in ((13, 768, "one file per {:.0f} s of audio"), (25, 1024, "({:.0f} s for a large model")):
        spec = FeatureSpec(name="w", dim=dim, layers=layers, frame_rate=50.0, dtype="float16", config={})
        seconds = default_shard_frames(spec, default_chunk_frames(spec)) / spec.frame_rate
        assert said.format(seconds // 1) in bullet, (seconds, bullet)


def test_stage2_section_states_the_memory_and_search_constants() -> None:
    """The layer sweep's cost section said the reader "keeps at most 512 MB" of batches ahead, after
    the read-ahead became 400 MB (STREAM_AHEAD_MB): the figures the section states must be the code's."""
    from w2v2ser.evaluate._sweep import SEARCH_DEPTH
    from w2v2ser.train._dataset import STREAM_AHEAD_MB
    from w2v2ser.train._normalisation import MIN_SPEAKER_FILES
    from w2v2ser.train._sweep import MICRO_BATCH_MB
    from w2v2ser.train._tfdata import TRAIN_MICRO_BATCH_MB

    stage2 = " ".join(_section(README, "## Stage 2: train, evaluate, predict").split())
    assert f"two per worker within {STREAM_AHEAD_MB:g} MB" in stage2
    assert f"would exceed {TRAIN_MICRO_BATCH_MB:g} MB" in stage2
    assert f"micro-batches of at most {MICRO_BATCH_MB:g} MB" in stage2
    assert f"fewer than {MIN_SPEAKER_FILES} files" in stage2
    assert f"up to {SEARCH_DEPTH} folders down" in stage2
    for stated in re.findall(r"(?:keeps|reads) at most (\d+) MB of (?:them|batches) ahead", stage2):
        assert float(stated) == STREAM_AHEAD_MB, f"the README says the reader keeps {stated} MB ahead"
