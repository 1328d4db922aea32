"""pipeline.yaml loading: grid expansion, overrides, env vars, and errors that name the key path."""

from __future__ import annotations

import argparse
import codecs
import json
import re
import shlex
import textwrap
from pathlib import Path

import pytest
import yaml

from w2v2ser._config import ConfigError, apply_overrides, load_pipeline
from w2v2ser.store import W2v2serError
from w2v2ser.train._head_names import HEAD_BRANCHES

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, data: dict, name: str = "pipeline.yaml") -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _base() -> dict:
    return {
        "corpora": {"ravdess": {"kind": "ravdess", "path": "data"}},
        "extraction": {"stores": {
            "classic": {"features": {"egemaps": {}, "spectrogram": {"hop_ms": 20.0}}},
            "w2v2_pt": {"features": {"wav2vec2": {"model": "facebook/wav2vec2-base"}}},
        }},
        "experiments": {"t1": {"grid": {"features": ["classic/egemaps", "w2v2_pt/wav2vec2:all"]},
                               "head": "dense", "norm": "speaker", "seeds": 2}},
    }


@pytest.mark.parametrize("validate_experiments", [False, True])
def test_extract_stage_loads_the_pipeline_without_stage2_libraries(tmp_path: Path, validate_experiments: bool) -> None:
    """Stage 1 checks every selection with stage 2's grammar, and `run --stage extract` every
    experiment setting, yet loads neither TensorFlow, Keras, torch nor scikit-learn (its import
    alone took about 1 s)."""
    import subprocess
    import sys

    path = _write(tmp_path, _base())
    code = ("import sys\n"
            "from w2v2ser._config import load_pipeline\n"
            f"config = load_pipeline({str(path)!r}, validate_experiments={validate_experiments})\n"
            "assert [e.config['features'] for e in config.experiments] == "
            "['classic/egemaps', 'w2v2_pt/wav2vec2:all'], config.experiments\n"
            "bad = [m for m in ('tensorflow', 'keras', 'torch', 'sklearn') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_stage_extract_refuses_a_bad_experiment_before_extracting(tmp_path: Path) -> None:
    """A typo in `experiments:` was found only by the training job of slurm/extract_then_train.sh,
    after the extraction job had run (hours on a GPU); `run --stage extract` now refuses it first."""
    from w2v2ser._run import run_pipeline

    data = _base()
    data["output"] = "out"
    data["experiments"]["t1"]["epochs"] = 3
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=r"experiments\.t1\.epochs: unknown key\. Did you mean "
                                          r"'experiments\.t1\.recipe_overrides\.max_epochs'"):
        run_pipeline(path, stage="extract")
    assert not (tmp_path / "out").exists()


def test_shipped_pipeline_reproduces_both_tables() -> None:
    config = load_pipeline(REPO / "pipeline.yaml")
    names = [e.name for e in config.experiments]
    assert "table1/ravdess/classic-egemaps" in names
    assert "table1/ravdess/w2v2_ft-wav2vec2-contextual" in names
    assert {"table2/ravdess/dense", "table2/ravdess/lstm", "table2_fusion/ravdess"} <= set(names)
    assert config.corpora["iemocap"].path is None
    assert config.corpora["iemocap"].skip_reason and "path not set" in config.corpora["iemocap"].skip_reason
    # Resolve both sides: ../shared may be a symlink, and the loader keeps the path as written.
    assert config.corpora["ravdess"].path.resolve() == (REPO.parent / "shared" / "data" / "ravdess").resolve()
    assert config.output == REPO / "runs"
    fusion = next(e for e in config.experiments if e.name == "table2_fusion/ravdess")
    assert fusion.config["head"] == "fusion" and set(fusion.stores) == {"w2v2_pt", "classic"}
    models = {s.name: getattr(s.features.get("wav2vec2"), "model", None) for s in config.stores.values()}
    assert models["w2v2_pt"] == "facebook/wav2vec2-base" and models["w2v2_ft"] == "facebook/wav2vec2-base-960h"
    assert [r.name for r in config.reports] == ["paper"]
    assert len(config.report_experiments(config.reports[0])) == len(config.experiments)


def test_the_shipped_pipelines_commented_experiments_load_when_uncommented(tmp_path: Path) -> None:
    """The commented examples of pipeline.yaml (a layer sweep, RAVDESS speech only) are what a
    user uncomments: they must load as they stand."""
    lines = (REPO / "pipeline.yaml").read_text().splitlines()
    for block in ("layer_sweep:", "ravdess_speech:"):
        start = next(k for k, line in enumerate(lines) if line.strip() == f"# {block}")
        end = start + 1
        while end < len(lines) and lines[end].startswith("  #   "):
            end += 1
        lines[start:end] = [line.replace("  # ", "  ", 1) for line in lines[start:end]]
    path = tmp_path / "pipeline.yaml"
    path.write_text("\n".join(lines).replace("../shared", str(REPO.parent / "shared")) + "\n")
    config = load_pipeline(path)
    speech = [e for e in config.experiments if e.name.startswith("ravdess_speech/")]
    assert [e.config["subset"] for e in speech] == [{"vocal_channel": "speech"}] * 2
    assert any(e.sweep for e in config.experiments if e.name.startswith("layer_sweep/"))


def test_pipeline_and_extract_cut_work_units_alike(tmp_path: Path) -> None:
    # The main job once wrote 16-utterance units while `extract` wrote 64: four times the shard
    # and statistics files (849 against 320 for the full RAVDESS eGeMAPS + spectrogram store).
    import inspect

    from w2v2ser._cli_parser import build_parser
    from w2v2ser.extract import extract_corpus

    parser_default = build_parser().parse_args(["extract", "csv", "m.csv", "--store", "s.zarr"]).shard_size
    library_default = inspect.signature(extract_corpus).parameters["shard_size"].default
    shipped = load_pipeline(REPO / "pipeline.yaml").shard_size
    omitted = load_pipeline(_write(tmp_path, _base())).shard_size
    assert shipped == omitted == parser_default == library_default == 64


def test_grid_expands_and_paths_resolve(tmp_path: Path) -> None:
    config = load_pipeline(_write(tmp_path, _base()))
    assert [e.name for e in config.experiments] == ["t1/ravdess/classic-egemaps", "t1/ravdess/w2v2_pt-wav2vec2-all"]
    first = config.experiments[0]
    assert first.config["protocol"] == "ravdess" and first.config["norm"] == "speaker"
    assert first.config["stores"] == {"classic": str(config.store_path("classic", "ravdess"))}
    assert first.run_dir == tmp_path / "runs" / "experiments" / "t1" / "ravdess" / "classic-egemaps"
    assert config.corpora["ravdess"].path == tmp_path / "data"
    assert config.cluster.kind == "local"


def test_protocol_null_means_the_corpus_protocol(tmp_path: Path) -> None:
    """``protocol: null`` is "not given": the corpus's own protocol, not a config that cannot train
    (the experiment's config would have opened the not yet extracted store to find one)."""
    data = _base()
    data["experiments"]["t1"]["protocol"] = None
    config = load_pipeline(_write(tmp_path, data))
    assert [e.config["protocol"] for e in config.experiments] == ["ravdess", "ravdess"]


def test_selection_without_store_prefix_is_resolved(tmp_path: Path) -> None:
    data = _base()
    data["experiments"]["t1"]["grid"]["features"] = ["egemaps", "wav2vec2:local"]
    config = load_pipeline(_write(tmp_path, data))
    assert [e.config["features"] for e in config.experiments] == ["classic/egemaps", "w2v2_pt/wav2vec2:local"]


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d["extraction"]["stores"]["w2v2_pt"]["features"]["wav2vec2"].update(modle="x"),
         "extraction.stores.w2v2_pt.features.wav2vec2.modle"),
        (lambda d: d.update(experiment={}), "Did you mean 'experiments'"),
        (lambda d: d["experiments"]["t1"].update(haed="dense"), "experiments.t1.haed"),
        (lambda d: d["experiments"]["t1"].update(seeds="five"), "experiments.t1"),
        (lambda d: d["extraction"].update(shard_size="big"), "extraction.shard_size"),
        (lambda d: d["extraction"].update(shard_size=True), "extraction.shard_size"),
        (lambda d: d["corpora"]["ravdess"].update(path="missing"), "corpora.ravdess.path"),
        (lambda d: d["corpora"]["ravdess"].update(kind="ravdes"), "Did you mean 'ravdess'"),
        (lambda d: d.update(cluster="slurmm"), "cluster.kind"),
        (lambda d: d.update(cluster={"slurm": {"cores": 0}}), "cluster.slurm.cores"),
        # Refused by SLURMCluster only after planning (exit 1), and by sbatch only at submission (a hang).
        (lambda d: d.update(cluster={"slurm": {"memory": "lots"}}),
         "cluster.slurm.memory: expected a size such as 16GB or 500MB, got 'lots'"),
        (lambda d: d.update(cluster={"slurm": {"memory": 16}}),  # 16 bytes to Dask: SLURMCluster failed after planning
         "cluster.slurm.memory: '16' is 16 bytes: write the size with its unit, e.g. 16GB"),
        (lambda d: d.update(cluster={"slurm": {"walltime": "4h"}}), "cluster.slurm.walltime: expected a SLURM time"),
        (lambda d: d.update(cluster={"slurm": {"partition": "gpu"}}), "write queue: gpu instead of partition: gpu"),
        # A backslash is an escape in #SBATCH lines, and in a log's name keeps SLURM from filling in %J.
        (lambda d: d.update(cluster={"slurm": {"log_directory": "C:\\logs"}}),
         "cluster.slurm.log_directory: 'C:\\\\logs' holds a backslash, a double quote or a line break"),
        (lambda d: d["experiments"]["t1"].update(features="classic/egemaps"), "set both in the grid"),
        (lambda d: d["experiments"]["t1"]["grid"].update(features=["clasic/egemaps"]), "Did you mean 'classic'"),
        (lambda d: d["experiments"]["t1"]["grid"].update(features=["classic/wav2vec2:all"]), "holds egemaps"),
        (lambda d: d["experiments"]["t1"]["grid"].update(features=["w2v2_pt/wav2vec2:13"]), "layer 13"),
        (lambda d: d["experiments"]["t1"]["grid"].update(features=["w2v2_pt/wav2vec2:2-14"]), "0..12"),
        (lambda d: d["extraction"]["stores"]["classic"]["features"].update(spectrogram={"hop_ms": -1}),
         "extraction.stores.classic.features.spectrogram"),
        (lambda d: d["extraction"]["stores"]["classic"]["features"].update(mfcc={}),
         "extraction.stores.classic.features.mfcc"),
        (lambda d: d.update(reports={"r": {"experiments": ["t2/*"]}}), "matches no experiment"),
        (lambda d: d.update(reports={"r": {"experiments": ["t11/ravdess/*"]}}), "Did you mean 't1/ravdess/*'?"),
        # A group alone matches none of its experiments ('t1/ravdess/...'): the suggestion adds the '/*'.
        (lambda d: d.update(reports={"r": {"experiments": ["t1"]}}), "Did you mean 't1/*'?"),
        (lambda d: d["experiments"]["t1"]["grid"].update(features="classic/egemaps"),
         "experiments.t1.grid.features: expected a valid list, got string 'classic/egemaps'. A grid axis lists its "
         "values: write [classic/egemaps]."),
        # A recipe key beside recipe_overrides, as `w2v2ser train --set max_epochs=3` takes it.
        (lambda d: d["experiments"]["t1"].update(max_epochs=3),
         "experiments.t1.max_epochs: unknown key. Did you mean 'experiments.t1.recipe_overrides.max_epochs'?"),
        # ... and misspelt there: max_epocs was matched only against this level's keys (max_frames).
        (lambda d: d["experiments"]["t1"].update(max_epocs=3),
         "experiments.t1.max_epocs: unknown key. Did you mean 'experiments.t1.recipe_overrides.max_epochs'?"),
        (lambda d: d["experiments"]["t1"].update(dropuot=0.1),
         "experiments.t1.dropuot: unknown key. Did you mean 'experiments.t1.dropout'?"),
        (lambda d: d["experiments"]["t1"].update(recipe_overrides={"learning_rat": 1e-4}),
         "experiments.t1.recipe_overrides.learning_rat: unknown key. Did you mean "
         "'experiments.t1.recipe_overrides.learning_rate'?"),
        (lambda d: d["experiments"]["t1"].update(recipe_overrides={"patience": -1}),
         "experiments.t1.recipe_overrides.patience"),
    ],
)
def test_invalid_files_name_the_key(tmp_path: Path, mutate, fragment: str) -> None:
    data = _base()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        load_pipeline(_write(tmp_path, data))
    assert fragment in str(info.value)
    assert isinstance(info.value, W2v2serError)


def test_layer_count_of_a_local_model(tmp_path: Path) -> None:
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    data = _base()
    data["extraction"]["stores"]["w2v2_pt"]["features"]["wav2vec2"]["model"] = "tiny"
    data["experiments"]["t1"]["grid"]["features"] = ["w2v2_pt/wav2vec2:2"]
    config = load_pipeline(_write(tmp_path, data))
    assert config.stores["w2v2_pt"].features["wav2vec2"].model == str(model)  # made absolute
    data["experiments"]["t1"]["grid"]["features"] = ["w2v2_pt/wav2vec2:3"]
    with pytest.raises(ConfigError, match="has 3 layer outputs"):
        load_pipeline(_write(tmp_path, data))


def test_a_path_longer_than_the_system_allows_is_a_config_error(tmp_path: Path) -> None:
    """A corpus path or local model name over the system's name limit (ENAMETOOLONG) escaped load_pipeline as a
    bare OSError, without the key that holds it; the corpus path is now a missing path at its key, the model
    name a hub id (as a name that is not a folder here)."""
    data = _base()
    data["corpora"]["ravdess"]["path"] = "x" * 5000
    with pytest.raises(ConfigError, match=r"^corpora\.ravdess\.path: 'x+' resolves to .*, which does not exist"):
        load_pipeline(_write(tmp_path, data))
    data = _base()
    data["extraction"]["stores"]["w2v2_pt"]["features"]["wav2vec2"]["model"] = "org/" + "x" * 5000
    config = load_pipeline(_write(tmp_path, data))
    assert config.stores["w2v2_pt"].features["wav2vec2"].model == "org/" + "x" * 5000


def test_a_number_as_an_option_key_names_what_is_expected(tmp_path: Path) -> None:
    """A YAML number used as a key of a section's options (`spectrogram: {1: 2}`) read "expected Keys should be
    strings, got 1": pydantic's own text pasted after "expected"."""
    data = _base()
    data["extraction"]["stores"]["classic"]["features"]["spectrogram"] = {1: 2}
    with pytest.raises(ConfigError, match=r"^extraction\.stores\.classic\.features\.spectrogram\[1\]: expected a text "
                                          r"key, got 1\.$"):
        load_pipeline(_write(tmp_path, data))


def test_a_number_as_a_key_of_from_dict_or_overrides_names_what_is_expected() -> None:
    """ExperimentConfig.from_dict({1: 2}) and get_recipe's overrides {1: 2} read "[1]: expected a valid string":
    a key, not a value, is wrong, as the file's `spectrogram: {1: 2}` says."""
    from w2v2ser.train import ExperimentConfig, get_recipe

    with pytest.raises(ConfigError, match=r"^ExperimentConfig: \[1\]: expected a text key, got integer 1\.$"):
        ExperimentConfig.from_dict({1: 2})
    with pytest.raises(ConfigError, match=r"^recipe override: \[1\]: expected a text key, got integer 1\.$"):
        get_recipe("paper", {1: 2})


@pytest.mark.parametrize("given", [None, [1], "x"])
def test_from_dict_of_something_else_than_a_mapping_is_a_config_error(given) -> None:
    """ExperimentConfig.from_dict, Recipe.from_dict, FeatureSpec.from_dict and get_recipe's overrides raised a bare
    TypeError for None, a list or a string (dict() of it), where the extractor configs' from_dict name it."""
    from w2v2ser.store import FeatureSpec, StoreError
    from w2v2ser.train import ExperimentConfig, Recipe, get_recipe

    got = "null" if given is None else f"{type(given).__name__.replace('str', 'string')} {given!r}"
    with pytest.raises(ConfigError, match=rf"^ExperimentConfig: the top level: expected a mapping, got {re.escape(got)}\."):
        ExperimentConfig.from_dict(given)
    with pytest.raises(ConfigError, match=rf"^recipe: the top level: expected a mapping, got {re.escape(got)}\."):
        Recipe.from_dict(given)
    with pytest.raises(StoreError, match=rf"^FeatureSpec: the top level: expected a mapping, got {re.escape(got)}\."):
        FeatureSpec.from_dict(given)
    if given is not None:  # None: no overrides
        with pytest.raises(ConfigError, match=rf"^recipe override: the top level: expected a mapping, got "
                                              rf"{re.escape(got)}\."):
            get_recipe("paper", given)


def test_an_infinite_learning_rate_or_clipvalue_is_refused(tmp_path: Path) -> None:
    """recipe_overrides: {learning_rate: .inf} was accepted and trained to NaN weights; clipvalue: .inf clipped
    nothing (null is the documented "no clipping")."""
    from w2v2ser.train import get_recipe

    for key in ("learning_rate", "clipvalue"):
        with pytest.raises(ConfigError, match=rf"^recipe override: {key}: expected a finite number, got inf\."):
            get_recipe("paper", {key: float("inf")})
    data = _base()
    data["experiments"]["t1"]["recipe_overrides"] = {"learning_rate": float("inf")}
    with pytest.raises(ConfigError, match=r"experiments\.t1\.recipe_overrides\.learning_rate: expected a finite number, "
                                          r"got inf\."):
        load_pipeline(_write(tmp_path, data))


def test_a_misspelt_keyword_of_any_config_dataclass_is_its_error_with_a_did_you_mean() -> None:
    """As ExperimentConfig(unts=64): SpectrogramConfig(hop_msx=...), HubertConfig(modle=...), Recipe(max_epoch=...)
    and FeatureSpec(dimm=...) raised the generated __init__'s plain TypeError."""
    from w2v2ser.extract import ExtractorConfigError, SpectrogramConfig
    from w2v2ser.extract._wav2vec2 import HubertConfig
    from w2v2ser.store import FeatureSpec, StoreError
    from w2v2ser.train import Recipe

    with pytest.raises(ExtractorConfigError, match=r"^SpectrogramConfig: hop_msx: unknown key\. Did you mean 'hop_ms'\? "
                                                   r"Valid keys: window_ms, hop_ms, "):
        SpectrogramConfig(hop_msx=20.0)
    with pytest.raises(ExtractorConfigError, match=r"^HubertConfig: modle: unknown key\. Did you mean 'model'\?"):
        HubertConfig(modle="x")
    with pytest.raises(ConfigError, match=r"^Recipe: max_epoch: unknown key\. Did you mean 'max_epochs'\?"):
        Recipe(max_epoch=3)
    with pytest.raises(StoreError, match=r"^FeatureSpec: dimm: unknown key\. Did you mean 'dim'\?"):
        FeatureSpec(name="x", dimm=3)


def test_from_dict_takes_any_mapping() -> None:
    """SpectrogramConfig.from_dict(MappingProxyType(...)) was refused as "expected a mapping, got mappingproxy"."""
    from types import MappingProxyType

    from w2v2ser.extract import SpectrogramConfig
    from w2v2ser.train import Recipe

    assert SpectrogramConfig.from_dict(MappingProxyType({"hop_ms": 20.0})) == SpectrogramConfig(hop_ms=20.0)
    assert Recipe.from_dict(MappingProxyType({"max_epochs": 3})) == Recipe(max_epochs=3)


def test_a_path_in_a_folder_that_cannot_be_read_says_so_not_that_it_is_missing(tmp_path: Path, monkeypatch) -> None:
    """Found by a follow-up: a corpus path inside a folder this user may not look into (permission
    denied) was reported as a path that does not exist. The tests run as root, which may read any
    folder: the denial is simulated."""
    import errno
    import os

    corpus = tmp_path / "locked" / "ravdess"
    corpus.mkdir(parents=True)
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "locked") + os.sep):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    data = _base()
    data["corpora"]["ravdess"]["path"] = str(corpus)
    pipeline = _write(tmp_path, data)
    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(ConfigError, match=rf"^corpora\.ravdess\.path: .* resolves to {re.escape(str(corpus))}, which "
                                          rf"cannot be read \({re.escape(str(corpus))}: Permission denied\)\. Let this "
                                          rf"user read it and the folders above it") as caught:
        load_pipeline(pipeline)
    assert "does not exist" not in str(caught.value)


def test_layer_count_of_a_model_whose_config_json_is_not_a_mapping(tmp_path: Path) -> None:
    """A local model whose config.json holds a JSON list crashed load_pipeline with an AttributeError
    ('list' object has no attribute 'get'); its layer count is unknown, as for an unreadable file, so the
    selection is checked when the model is loaded."""
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text("[]")
    data = _base()
    data["extraction"]["stores"]["w2v2_pt"]["features"]["wav2vec2"]["model"] = "tiny"
    data["experiments"]["t1"]["grid"]["features"] = ["w2v2_pt/wav2vec2:3"]
    config = load_pipeline(_write(tmp_path, data))
    assert config.experiments[0].config["features"] == "w2v2_pt/wav2vec2:3"


def test_overrides_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _base()
    data["corpora"]["iemocap"] = {"kind": "iemocap", "path": None}
    data["output"] = "${W2V2SER_TEST_OUT:-out}"
    path = _write(tmp_path, data)
    (tmp_path / "iemo").mkdir()
    config = load_pipeline(path, overrides=["corpora.iemocap.path=iemo", "cluster=none", "extraction.shard_size=3",
                                            "experiments.t1.seeds=1", "cluster.threads_per_worker=2",
                                            "experiments.t1.corpus=ravdess"])
    assert config.corpora["iemocap"].path == tmp_path / "iemo"
    assert config.cluster.kind == "none" and config.cluster.threads_per_worker == 2
    assert config.shard_size == 3 and config.output == tmp_path / "out"
    assert all(e.config["seeds"] == 1 for e in config.experiments)
    # grid without corpus and two corpora: the experiment must say which.
    with pytest.raises(ConfigError, match="experiments.t1.corpus"):
        load_pipeline(path, overrides=["corpora.iemocap.path=iemo"], validate_experiments=False)
    monkeypatch.setenv("W2V2SER_TEST_OUT", "elsewhere")
    config = load_pipeline(path, overrides=["experiments.t1.corpus=ravdess"])
    assert config.output == tmp_path / "elsewhere"
    assert all(e.config["seeds"] == 2 for e in config.experiments)
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_pipeline(path, overrides=["cluster"])
    with pytest.raises(ConfigError, match="experiments.t1.sedes"):
        load_pipeline(path, overrides=["experiments.t1.sedes=1", "experiments.t1.corpus=ravdess"])


def test_apply_overrides_parses_yaml_scalars() -> None:
    raw = {"a": {"b": 1}, "l": [1, 2]}
    apply_overrides(raw, ["a.b=2.5", "a.c=null", "a.d=true", "a.e=hello", "l.1=7", "n.m=[1, 2]"])
    assert raw == {"a": {"b": 2.5, "c": None, "d": True, "e": "hello"}, "l": [1, 7], "n": {"m": [1, 2]}}


def test_a_set_value_with_a_hash_is_taken_whole(tmp_path: Path) -> None:
    """`--set "output=runs #2"` wrote into the folder `runs`: YAML read ` #2` as a comment. The same cut
    `--option wav2vec2.model=models/tiny #1` and train's --set values."""
    from w2v2ser._cli_extract import _parse_option

    config = load_pipeline(_write(tmp_path, _base()), overrides=["output=sorties é #2"])
    assert config.output == tmp_path / "sorties é #2"
    raw: dict = {}
    apply_overrides(raw, ["a=#1", "b='x #y'", "c=7  # seven", "d=a#b", "e=[1, 2] # two"])
    assert raw == {"a": "#1", "b": "x #y", "c": "7  # seven", "d": "a#b", "e": "[1, 2] # two"}
    assert _parse_option("wav2vec2.model=models/tiny #1") == ("wav2vec2", "model", "models/tiny #1")


def test_numbers_are_read_as_yaml_1_2_numbers(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) read `learning_rate: 3e-4` as a string, which was refused, and an unquoted
    `walltime: 10:00:00` as the base-60 integer 36000, which became the walltime "36000"."""
    path = tmp_path / "pipeline.yaml"
    (tmp_path / "data").mkdir()
    path.write_text(yaml.safe_dump(_base(), sort_keys=False)
                    + "cluster: {kind: slurm, slurm: {walltime: 10:00:00, memory: 16GB}}\n")
    path.write_text(path.read_text().replace("seeds: 2", "seeds: 2\n    recipe_overrides: {learning_rate: 3e-4}"))
    config = load_pipeline(path)
    assert config.cluster.slurm.walltime == "10:00:00"
    assert {e.config["recipe_overrides"]["learning_rate"] for e in config.experiments} == {3e-4}
    config = load_pipeline(path, overrides=["cluster.slurm.walltime=1:30:00", "experiments.t1.recipe_overrides.learning_rate=1E-5"])
    assert config.cluster.slurm.walltime == "1:30:00"
    assert {e.config["recipe_overrides"]["learning_rate"] for e in config.experiments} == {1e-5}
    raw: dict = {}
    apply_overrides(raw, ["a=2e-3", "b=-1.5e+2", "c=1e", "d=007", "e=0x10", "f=.5", "g=v1e3"])
    assert raw == {"a": 2e-3, "b": -150.0, "c": "1e", "d": 7, "e": 16, "f": 0.5, "g": "v1e3"}


def test_a_number_with_a_leading_zero_is_decimal_as_in_yaml_1_2(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) read `seeds: 010` as the octal 8, so 8 seeds trained where the file said 10;
    YAML 1.2, which the README promises, reads ten (its octal is written 0o10)."""
    path = _write(tmp_path, _base())
    path.write_text(path.read_text().replace("seeds: 2", "seeds: 010"))
    assert {e.config["seeds"] for e in load_pipeline(path).experiments} == {10}
    config = load_pipeline(_write(tmp_path, _base()), overrides=["experiments.t1.seeds=012"])
    assert {e.config["seeds"] for e in config.experiments} == {12}
    raw: dict = {}
    apply_overrides(raw, ["a=0100", "b=0o10", "c=-010", "d=1_000", "e=0b11"])
    assert raw == {"a": 100, "b": 8, "c": -10, "d": "1_000", "e": "0b11"}
    # review s67 R2: an explicit tag on text that is no YAML 1.2 integer ended in a ValueError traceback
    path.write_text(path.read_text().replace("seeds: 2", "seeds: !!int 0b11"))
    with pytest.raises(ConfigError, match=r"!!int '0b11' is not a YAML 1\.2 integer"):
        load_pipeline(path)
    # review s67 R3: `speaker: 08` (text under YAML 1.1) is the number 8 now; the refusal says to quote it
    path.write_text(path.read_text().replace("seeds: !!int 0b11", "seeds: 2\n    subset: {speaker: 08}"))
    with pytest.raises(ConfigError, match=r'got integer 8\. Write it in quotes to keep it text, leading zeros'):
        load_pipeline(path)


def test_booleans_are_yaml_1_2_booleans_so_cache_off_is_the_word_off(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) read `cache: off` (a documented value) as False, so the file and
    `--set cache=off` were refused with "expected one of auto, off, got False"."""
    path = _write(tmp_path, _base())
    path.write_text(path.read_text().replace("seeds: 2", "seeds: 2\n    cache: off"))
    assert {e.config["cache"] for e in load_pipeline(path).experiments} == {"off"}
    config = load_pipeline(_write(tmp_path, _base()), overrides=["experiments.t1.cache=off"])
    assert {e.config["cache"] for e in config.experiments} == {"off"}
    raw: dict = {}
    apply_overrides(raw, ["a=off", "b=on", "c=yes", "d=no", "e=y", "f=true", "g=False", "h=TRUE"])
    assert raw == {"a": "off", "b": "on", "c": "yes", "d": "no", "e": "y", "f": True, "g": False, "h": True}
    path.write_text(path.read_text().replace("seeds: 2", "seeds: 2\n    sweep: yes"))
    with pytest.raises(ConfigError, match=r"experiments\.t1\.sweep: expected a valid boolean, got string 'yes'\. Write true or false\."):
        load_pipeline(path)


def test_missing_env_variable_is_an_error(tmp_path: Path) -> None:
    data = _base()
    data["output"] = "${W2V2SER_SURELY_UNSET_VAR}"
    with pytest.raises(ConfigError, match="W2V2SER_SURELY_UNSET_VAR"):
        load_pipeline(_write(tmp_path, data))


def test_store_path_changes_with_feature_options(tmp_path: Path) -> None:
    path = _write(tmp_path, _base())
    before = load_pipeline(path, validate_experiments=False)
    after = load_pipeline(path, overrides=["extraction.stores.classic.features.spectrogram.hop_ms=10.0"],
                          validate_experiments=False)
    model = load_pipeline(path, overrides=["extraction.stores.w2v2_pt.features.wav2vec2.model=facebook/wav2vec2-base-960h"],
                          validate_experiments=False)
    assert before.store_path("classic", "ravdess") != after.store_path("classic", "ravdess")
    assert before.store_path("w2v2_pt", "ravdess") == after.store_path("w2v2_pt", "ravdess")
    assert before.store_path("w2v2_pt", "ravdess") != model.store_path("w2v2_pt", "ravdess")


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("corpora: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(path)


def test_a_pipeline_saved_as_utf16_or_windows_1252_is_read_or_named(tmp_path: Path) -> None:
    """Windows editors save "Unicode" (UTF-16 with its BOM, which YAML allows) or Windows-1252: both
    raised a bare UnicodeDecodeError traceback (exit 1) from read_text(encoding="utf-8")."""
    text = "# Versuch \u2014 caf\u00e9\n" + yaml.safe_dump(_base(), sort_keys=False)
    plain = _write(tmp_path, _base())
    for name, data in [("utf16.yaml", text.replace("\n", "\r\n").encode("utf-16")),
                       ("bom.yaml", codecs.BOM_UTF8 + text.replace("\n", "\r\n").encode("utf-8"))]:
        (tmp_path / name).write_bytes(data)
        assert load_pipeline(tmp_path / name).raw == load_pipeline(plain).raw
    (tmp_path / "cp1252.yaml").write_bytes(text.encode("cp1252"))
    with pytest.raises(ConfigError, match=r"cp1252.yaml is not UTF-8 text: line 1 holds byte 0x97.*Save it as UTF-8"):
        load_pipeline(tmp_path / "cp1252.yaml")
    spaced = tmp_path / "my data" / "pipeline.yaml"  # the iconv command, pasted, converts this file
    spaced.parent.mkdir()
    spaced.write_bytes(text.encode("cp1252"))
    with pytest.raises(ConfigError) as refused:
        load_pipeline(spaced)
    (command,) = re.findall(r"`(iconv [^`]*)`", str(refused.value))
    assert shlex.split(command)[:6] == ["iconv", "-f", "cp1252", "-t", "utf-8", str(spaced)]


@pytest.mark.parametrize("written, hint", [
    ("data\\", r"'data/' exists: write / instead of \\\."),
    ("data ", r"'data' exists: remove the spaces around it\."),
    ("C:\\Users\\me\\ravdess", r"It is a Windows path \(C:\\\.\.\., .*give this machine's path\."),
])
def test_a_corpus_path_written_as_on_windows_says_how_to_write_it(tmp_path: Path, written: str, hint: str) -> None:
    """A pipeline edited on Windows: 'data\\' or a trailing space only said the path does not exist."""
    data = _base()
    data["corpora"]["ravdess"]["path"] = written
    with pytest.raises(ConfigError, match=r"corpora\.ravdess\.path: .*which does not exist\..* " + hint):
        load_pipeline(_write(tmp_path, data))


def test_schema_is_derived_from_the_config_dataclasses() -> None:
    from dataclasses import fields

    from w2v2ser._config_schema import pipeline_json_schema
    from w2v2ser.extract._registry import EXTRACTORS, extractor_config_class
    from w2v2ser.train import ExperimentConfig

    schema = pipeline_json_schema()
    defs = schema["$defs"]
    assert set(schema["properties"]) == {"output", "cluster", "corpora", "extraction", "experiments", "reports"}
    assert schema["additionalProperties"] is False
    for name in EXTRACTORS:  # every extractor option is in the schema, without a schema edit
        config_class = extractor_config_class(name)
        options = defs[f"{config_class.__name__}Options"]
        assert {f.name for f in fields(config_class)} == set(options["properties"]), name
        assert options["additionalProperties"] is False
    experiment = set(defs["Experiment"]["properties"])
    assert {f.name for f in fields(ExperimentConfig)} - {"stores"} | {"corpus", "grid", "sweep"} == experiment
    assert defs["Experiment"]["properties"]["head"]["anyOf"][0]["enum"] == list(HEAD_BRANCHES)


def _cli_choices(parser, command: str, dest: str) -> list:
    import argparse

    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(next(a for a in commands.choices[command]._actions if a.dest == dest).choices)


def test_every_choice_list_is_its_registry() -> None:
    """The CLI's choices, the configs' Literals and the shared name lists are the registries, not copies."""
    import typing

    from w2v2ser import _common
    from w2v2ser._cli_parser import build_parser
    from w2v2ser._config_schema import CORPUS_KINDS, CorpusEntry
    from w2v2ser.extract._corpora import CORPUS_READERS
    from w2v2ser.extract._registry import EXTRACTORS, UPSTREAMS
    from w2v2ser.train import NORMALISATIONS, PROTOCOLS, RECIPES, ExperimentConfig
    from w2v2ser.train._dataset import CACHE_MODES

    parser = build_parser()
    assert _cli_choices(parser, "extract", "corpus") == list(CORPUS_READERS)
    assert _cli_choices(parser, "train", "head") == list(HEAD_BRANCHES)
    for command in ("train", "sweep"):
        assert _cli_choices(parser, command, "norm") == list(NORMALISATIONS)
        assert _cli_choices(parser, command, "protocol") == list(PROTOCOLS)
        assert _cli_choices(parser, command, "recipe") == list(RECIPES)

    def literal(annotation) -> tuple:  # Literal[...] or Optional[Literal[...]]
        return next(typing.get_args(a) for a in (annotation, *typing.get_args(annotation))
                    if typing.get_origin(a) is typing.Literal)

    hints = typing.get_type_hints(ExperimentConfig)
    assert literal(hints["head"]) == tuple(HEAD_BRANCHES)
    assert literal(hints["protocol"]) == tuple(PROTOCOLS)
    assert literal(hints["norm"]) == tuple(NORMALISATIONS)
    assert literal(hints["recipe"]) == tuple(RECIPES)
    assert literal(hints["cache"]) == tuple(CACHE_MODES)
    assert CORPUS_KINDS == tuple(CORPUS_READERS)
    assert literal(typing.get_type_hints(CorpusEntry)["kind"]) == tuple(CORPUS_READERS)
    assert _common.UPSTREAM_FEATURES == tuple(name for name in EXTRACTORS if name in UPSTREAMS)


def test_a_head_or_protocol_registered_in_its_registry_is_accepted_everywhere(tmp_path: Path) -> None:
    """Registering a head (in the Keras-free head table) or a protocol is all it takes: the config,
    the pipeline schema and loader, and the command line take the new names, and a new two-branch
    head gets a fusion branch as the fusion head does. The entries are added as the registry
    modules load, as a line in their source would add them."""
    import subprocess
    import sys

    path = _write(tmp_path, {**_base(), "experiments": {"t1": {"features": "w2v2_pt/wav2vec2:all", "head": "fusion2",
                                                               "protocol": "ravdess4", "seeds": 1}}})
    code = textwrap.dedent(f"""
        import importlib.machinery, sys

        ADD = {{"w2v2ser.train._head_names": lambda m: m.HEAD_BRANCHES.update(
                   attention=("main",), fusion2=("main", "fusion")),
               "w2v2ser.train._protocols": lambda m: m.PROTOCOLS.update(ravdess4=m.PROTOCOLS["ravdess"])}}

        class Register:
            def find_spec(self, name, path, target=None):
                if name not in ADD:
                    return None
                spec = importlib.machinery.PathFinder.find_spec(name, path)
                run = spec.loader.exec_module
                spec.loader.exec_module = lambda module: (run(module), ADD[name](module))
                return spec

        sys.meta_path.insert(0, Register())
        from w2v2ser._cli_parser import build_parser
        from w2v2ser._config import load_pipeline
        from w2v2ser._config_schema import pipeline_json_schema
        from w2v2ser.train import ExperimentConfig

        config = ExperimentConfig(stores="s.zarr", features="egemaps", head="attention", protocol="ravdess4")
        assert config.selections() == {{"main": "egemaps"}}, config.selections()
        config = ExperimentConfig.from_dict({{"stores": "s.zarr", "features": "wav2vec2:all", "head": "fusion2",
                                             "protocol": "ravdess4"}})
        assert config.selections() == {{"main": "wav2vec2:all", "fusion": "egemaps"}}, config.selections()
        experiment = pipeline_json_schema()["$defs"]["Experiment"]["properties"]
        assert {{"attention", "fusion2"}} <= set(experiment["head"]["anyOf"][0]["enum"]), experiment["head"]
        assert "ravdess4" in experiment["protocol"]["anyOf"][0]["enum"], experiment["protocol"]
        [spec] = load_pipeline({str(path)!r}, validate_experiments=False).experiments
        assert set(spec.stores) == {{"w2v2_pt", "classic"}} and "egemaps" in spec.config["fusion_features"], spec
        args = build_parser().parse_args(["train", "s.zarr", "--features", "egemaps", "--out", "r",
                                          "--head", "attention", "--protocol", "ravdess4"])
        assert (args.head, args.protocol) == ("attention", "ravdess4")
        bad = [m for m in ("tensorflow", "keras", "torch") if m in sys.modules]
        assert not bad, bad
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("change", [
    "cluster: none", "cluster: local", "cluster: null", "cluster: '${CLUSTER:-none}'", "cluster: {slurm: null}", "cluster: {slurm: {memory: 17179869184}}",
    "reports: {paper: {experiments: 'table1/*'}}", "experiments: {t: {features: classic/egemaps, seeds: '${SEEDS:-2}'}}",
    "experiments: {t: {features: classic/egemaps, head: '${HEAD:-dense}', deterministic: '${DET:-true}'}}",
])
def test_the_exported_schema_accepts_what_the_loader_accepts(tmp_path: Path, change: str) -> None:
    """Found by a documentation audit: `w2v2ser run --schema` rejected the README's `cluster: none`,
    a single report pattern, a number given as `${VAR:-2}`, so an editor marked a working file wrong."""
    jsonschema = pytest.importorskip("jsonschema")
    from w2v2ser._config_schema import pipeline_json_schema

    text = textwrap.dedent("""\
        corpora: {mine: {kind: csv, path: m.csv}}
        extraction: {stores: {classic: {features: {egemaps: {}}}}}
        """) + change + "\n"
    (tmp_path / "m.csv").write_text("path,label,speaker\n")
    (tmp_path / "pipeline.yaml").write_text(text)
    load_pipeline(tmp_path / "pipeline.yaml")  # the loader takes it ...
    validator = jsonschema.Draft202012Validator(pipeline_json_schema())
    assert [e.message for e in validator.iter_errors(yaml.safe_load(text))] == []  # ... and so does the schema
    for wrong in ("cluster: cloud", "experiments: {t: {features: classic/egemaps, seeds: two}}"):
        assert list(validator.iter_errors(yaml.safe_load(text.replace(change, wrong)))), wrong


def test_cli_prints_the_schema_and_maps_errors_to_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from w2v2ser._cli import main

    assert main(["run", "--schema"]) == 0
    assert "extraction" in json.loads(capsys.readouterr().out)["properties"]
    data = _base()
    data["extraction"]["shard_size"] = "big"
    data["experiments"]["t1"]["norm"] = "globl"
    assert main(["run", str(_write(tmp_path, data))]) == 2  # bad configuration: nothing ran
    err = capsys.readouterr().err
    assert err.startswith("w2v2ser: error: 2 problems:") and "Traceback" not in err
    assert "extraction.shard_size: expected a valid integer, got string 'big'" in err
    assert "experiments.t1.norm: expected one of speaker, global, none, got 'globl'. Did you mean 'global'?" in err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2


def test_auto_values_and_their_suggestion(tmp_path: Path) -> None:
    data = _base()
    data["cluster"] = {"workers": "auto", "threads_per_worker": 2, "gpus": 0}
    cluster = load_pipeline(_write(tmp_path, data), validate_experiments=False).cluster
    assert (cluster.workers, cluster.threads_per_worker, cluster.gpus) == (None, 2, 0)
    data["cluster"] = {"workers": "aut"}
    with pytest.raises(ConfigError, match="cluster.workers: expected .*one of auto.*Did you mean 'auto'"):
        load_pipeline(_write(tmp_path, data), validate_experiments=False)


def test_one_error_hierarchy_with_exit_codes() -> None:
    import w2v2ser
    from w2v2ser.evaluate import EvaluateError
    from w2v2ser.extract import AudioError, ExtractorConfigError, ManifestError
    from w2v2ser.store import StoreError, StoreFullError, StoreLockedError
    from w2v2ser.train import ConfigError as TrainConfigError, DataError as TrainDataError, SelectionError

    assert TrainConfigError is w2v2ser.ConfigError is ConfigError and TrainDataError is w2v2ser.DataError
    for error, code in ((ExtractorConfigError, 2), (SelectionError, 2), (AudioError, 2), (ManifestError, 2),
                        (StoreLockedError, 2), (StoreError, 2), (EvaluateError, 2), (StoreFullError, 1)):
        assert issubclass(error, w2v2ser.W2v2serError) and error.exit_code == code, error


def test_names_outside_the_file_get_the_same_message() -> None:
    """Names given to the Python API (a feature, a recipe) and references inside the file (a corpus)
    are checked through the schema module: one message format, with a did-you-mean."""
    from w2v2ser.extract import build_extractor
    from w2v2ser.train import get_recipe

    with pytest.raises(ConfigError, match=r"^feature: expected one of .*egemaps.*, got 'egemap'\. Did you mean 'egemaps'\?"):
        build_extractor("egemap")
    with pytest.raises(ConfigError, match=r"^recipe: expected one of paper, official, got 'papr'\. Did you mean 'paper'\?"):
        get_recipe("papr")


def test_build_extractor_takes_its_config_dataclass() -> None:
    """The config dataclass is the documented way to configure an extractor; build_extractor took
    only a mapping and failed with "TypeError: 'SpectrogramConfig' object is not iterable"."""
    from w2v2ser.extract import EgemapsConfig, SpectrogramConfig, build_extractor

    config = SpectrogramConfig(hop_ms=20.0)
    assert build_extractor("spectrogram", config).config == config
    assert build_extractor("spectrogram", {"hop_ms": 20.0}).config == config
    with pytest.raises(ConfigError, match=r"got config of type EgemapsConfig; expected a SpectrogramConfig or a "
                                          r"mapping of its keys"):
        build_extractor("spectrogram", EgemapsConfig())


@pytest.mark.parametrize("argv, hint", [
    (["trian", "s.zarr"], "invalid choice: 'trian' (choose from 'extract', 'store', "),
    (["train", "s.zarr", "--features", "egemaps", "--out", "r", "--head", "dnese"], "Did you mean 'dense'?"),
    (["store", "verfy", "s.zarr"], "Did you mean 'verify'?"),
    (["extract", "ravdes", "data"], "Did you mean 'ravdess'?"),
    (["extract", "RAVDESS", "data"], "Did you mean 'ravdess'?"),  # difflib alone is case-sensitive
    (["train", "s.zarr", "--features", "egemaps", "--out", "r", "--norm", "Global"], "Did you mean 'global'?"),
])
def test_a_mistyped_command_or_choice_gets_a_did_you_mean(argv: list[str], hint: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from w2v2ser._cli_parser import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and hint in err and err.count("Did you mean") == 1, err


@pytest.mark.parametrize("argv", [
    ["train", "s.zarr", "--features", "egemaps", "--out", ""],
    ["train", "", "--features", "egemaps", "--out", "r"],
    ["sweep", "s.zarr", "--features", "wav2vec2", "--out", " "],
    ["evaluate", "runs/a", "--out", ""],
    ["evaluate", "", "--out", "reports"],
    ["extract", "ravdess", ""],
    ["extract", "ravdess", "data", "--store", ""],
    ["store", "info", ""],
    ["store", "export", "s.zarr", ""],
    ["predict", "", "a.wav"],
    ["predict", "runs/a", "--work-dir", ""],
    ["run", ""],
])
def test_an_empty_path_argument_is_refused(argv: list[str], tmp_path: Path, monkeypatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """An empty path (`--out "$OUT"` with OUT unset) was the current folder: `train --out ''` and
    `evaluate --out ''` wrote their run files and report into it and exited 0, `extract ravdess ''`
    read it as the corpus, `extract --store ''` took the default store."""
    from w2v2ser._cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "expected a path, got '" in err and "unset or empty shell variable" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, usage, hint", [
    (["store", "info", "s.zarr", "--jsn"], "usage: w2v2ser store info ", "Did you mean '--json'?"),
    (["train", "s.zarr", "--features", "egemaps", "--out", "r", "--sed", "3"], "usage: w2v2ser train ",
     "Did you mean '--seeds'?"),
    (["extract", "ravdess", "data", "--optoin", "spectrogram.hop_ms=20"], "usage: w2v2ser extract ",
     "Did you mean '--option'?"),
    (["--verbose", "store", "info", "s.zarr"], "usage: w2v2ser store info ",
     "--verbose is an option of `w2v2ser store info`: put it after the command's name."),
])
def test_an_unknown_option_is_reported_by_its_command_with_a_did_you_mean(argv: list[str], usage: str, hint: str,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """argparse reported `store info S --jsn` under the top-level usage (`w2v2ser: error:
    unrecognized arguments: --jsn`), with no hint of --json."""
    from w2v2ser._cli_parser import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and usage in err and "unrecognized arguments: " in err and hint in err, err


def test_extract_help_names_the_default_of_each_setting() -> None:
    """`w2v2ser extract --help` gave no default for --model, --device, --batch-seconds, --workers
    and --cpu-workers: a newcomer could not tell what an extraction without them uses."""
    from w2v2ser._cli_parser import build_parser

    parser = build_parser()
    extract = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["extract"]
    helps = {o: a.help for a in extract._actions for o in a.option_strings}
    for option in ("--store", "--features", "--model", "--device", "--batch-seconds", "--shard-size", "--workers",
                   "--decode-workers", "--cpu-workers"):
        assert "default" in helps[option], (option, helps[option])
    assert "32" in helps["--batch-seconds"] and "facebook/wav2vec2-base" in helps["--model"]


def test_store_inspect_is_store_info() -> None:
    from w2v2ser._cli_parser import build_parser

    parser = build_parser()
    assert parser.parse_args(["store", "inspect", "s.zarr"]).func is parser.parse_args(["store", "info", "s.zarr"]).func


def test_a_report_takes_a_baseline_experiment(tmp_path: Path, capsys) -> None:
    """reports.NAME.baseline: the pipeline's report compares the other experiments with it
    (`evaluate --baseline`); a baseline that has not finished leaves the comparison out, said once."""
    from test_evaluate import make_run_dir

    from w2v2ser._stage_evaluate import _run_evaluate

    data = _base()
    data["experiments"]["t1"]["seeds"] = 3  # as many as make_run_dir's runs
    data["reports"] = {"r": {"experiments": ["t1/*"], "baseline": "t1/ravdess/classic-egemap"}}
    with pytest.raises(ConfigError, match=r"reports.r.baseline: 't1/ravdess/classic-egemap' is not an experiment of "
                                          r"this report; expected one of t1/ravdess/classic-egemaps, "
                                          r"t1/ravdess/w2v2_pt-wav2vec2-all\. Did you mean 't1/ravdess/classic-egemaps'"):
        load_pipeline(_write(tmp_path, data))
    data["reports"]["r"]["baseline"] = "t1/ravdess/w2v2_pt-wav2vec2-all"
    config = load_pipeline(_write(tmp_path, data))
    assert config.reports[0].baseline == "t1/ravdess/w2v2_pt-wav2vec2-all"
    egemaps, w2v2 = (e.run_dir for e in config.experiments)

    def of_this_configuration(experiment) -> None:  # the report shows no results of another configuration
        from w2v2ser.train import ExperimentConfig

        results = json.loads((experiment.run_dir / "results.json").read_text())
        results["config_key"] = ExperimentConfig.from_dict(experiment.config).config_key()
        (experiment.run_dir / "results.json").write_text(json.dumps(results))

    make_run_dir(egemaps.parent, egemaps.name, uars=(0.5, 0.52, 0.51))
    of_this_configuration(config.experiments[0])
    w2v2.mkdir(parents=True)
    (w2v2 / "skipped.json").write_text('{"reason": "model offline"}')
    assert _run_evaluate(config).done == 1
    out = capsys.readouterr()
    assert (f"report r: baseline t1/ravdess/w2v2_pt-wav2vec2-all is skipped (reason in {w2v2 / 'skipped.json'}); "
            "the report is written without the comparison") in out.out + out.err
    assert "Against the baseline" not in (config.reports[0].out / "report.md").read_text()
    make_run_dir(w2v2.parent, w2v2.name, uars=(0.6, 0.62, 0.61))
    of_this_configuration(config.experiments[1])
    (w2v2 / "skipped.json").unlink()
    assert _run_evaluate(config).done == 1
    report = (config.reports[0].out / "report.md").read_text()
    assert "## Against the baseline w2v2_pt-wav2vec2-all" in report
    assert "| classic-egemaps | 51.0 ± 0.8 (n=3) | -10.0 |" in report


def test_an_unquoted_variable_inside_a_flow_mapping_is_explained(tmp_path: Path, monkeypatch) -> None:
    """`path: ${DATA}` inside `{...}` (the shipped file's style) is a YAML syntax error that named
    only "expected ',' or '}'"; the quoted form is expanded."""
    monkeypatch.setenv("DATA", str(tmp_path))
    path = tmp_path / "pipeline.yaml"
    path.write_text("output: out\ncorpora:\n  ravdess: {kind: ravdess, path: ${DATA}}\n")
    with pytest.raises(ConfigError, match=r"not valid YAML(.|\n)*unquoted \$\{\.\.\.\} inside a \{\.\.\.\} mapping"):
        load_pipeline(path, validate_experiments=False)
    path.write_text("output: out\ncorpora: [1, 2\n")  # another syntax error: no such hint
    with pytest.raises(ConfigError, match="not valid YAML") as error:
        load_pipeline(path, validate_experiments=False)
    assert "inside a {...} mapping" not in str(error.value)


def test_an_empty_environment_variable_is_refused_or_takes_its_default(tmp_path: Path, monkeypatch) -> None:
    """DATA="" made a corpus path empty: the corpus read as "path not set", everything was skipped
    and the run exited 0. ${VAR:-default} also stands for an empty VAR, as in a shell."""
    from w2v2ser._overrides import expand_env

    monkeypatch.setenv("DATA", "")
    with pytest.raises(ConfigError, match=r"corpora.ravdess.path: environment variable DATA is empty"):
        expand_env({"corpora": {"ravdess": {"path": "${DATA}"}}})
    assert expand_env({"path": "${DATA:-data/ravdess}"}) == {"path": "data/ravdess"}
    monkeypatch.delenv("DATA")
    with pytest.raises(ConfigError, match="environment variable DATA is not set"):
        expand_env({"path": "${DATA}/x"})
    monkeypatch.setenv("DATA", "/d")
    assert expand_env({"path": "${DATA}/x", "other": "${DATA:-y}"}) == {"path": "/d/x", "other": "/d"}


def test_an_empty_default_is_the_empty_string_and_an_empty_path_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Leftover: output: ${OUTDIR:-} (OUTDIR unset) read as null, so the run wrote to the default
    folder without a word, and corpora.X.path: ${DATA:-} skipped the corpus; a literal path "" read
    the pipeline's own folder as the corpus. ${X:-} is the empty string, as in a shell, and an empty
    path is refused, naming the key and the variable; ${X:-null} is null, and other keys read a
    whole value ${X:-} as null, as an empty YAML value (queue: ${PARTITION:-} keeps the default)."""
    from w2v2ser._overrides import expand_env

    monkeypatch.delenv("OUTDIR", raising=False)
    monkeypatch.delenv("DATA", raising=False)
    assert expand_env({"queue": "${OUTDIR:-}", "n": "${OUTDIR:-3}"}) == {"queue": None, "n": 3}  # as YAML's empty
    for key, value, expected in (
            ("output", "${OUTDIR:-}", r"output: the path is empty \('\$\{OUTDIR:-\}' expands to the empty string: "
                                      r"OUTDIR is empty or unset, and so is its default\); set OUTDIR, or give a "
                                      r"path or null for the default"),
            ("output", "", r"output: the path is empty; give a path or null for the default"),
            ("corpora.ravdess.path", "${DATA:-}", r"corpora\.ravdess\.path: the path is empty \('\$\{DATA:-\}' "
                                                  r"expands to the empty string: DATA is empty .*; set DATA, or give a "
                                                  r"path or null to skip what needs it"),
            ("corpora.ravdess.path", "", r"corpora\.ravdess\.path: the path is empty; give a path or null")):
        data = _base()
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
        with pytest.raises(ConfigError, match=expected):
            load_pipeline(_write(tmp_path, data), validate_experiments=False)
    data = {**_base(), "output": "${OUTDIR:-null}"}
    assert load_pipeline(_write(tmp_path, data), validate_experiments=False).output == tmp_path / "runs"
    data["corpora"]["ravdess"]["path"] = "${DATA:-null}"
    assert load_pipeline(_write(tmp_path, data), validate_experiments=False).corpora["ravdess"].path is None


def test_a_shell_variable_in_a_default_gets_a_hint_that_parses_and_dollar_dollar_is_a_dollar(monkeypatch) -> None:
    """`${X:-$HOME}` was refused with "write ${HOME}", but `${X:-${HOME}}` does not parse (a stray `}`
    was left); and a literal `$NAME` with NAME set (a folder really named `$RECYCLE`) could not be written."""
    from w2v2ser._overrides import expand_env

    monkeypatch.setenv("W2V2SER_TEST_HOME", "/h")
    monkeypatch.delenv("W2V2SER_TEST_X", raising=False)
    with pytest.raises(ConfigError, match=r"output: .*\$W2V2SER_TEST_HOME in a default.*write the value itself") as error:
        expand_env({"output": "${W2V2SER_TEST_X:-$W2V2SER_TEST_HOME/out}"})
    assert "${W2V2SER_TEST_HOME}" not in str(error.value)
    assert expand_env({"a": "d/$$W2V2SER_TEST_HOME", "b": "$${W2V2SER_TEST_HOME}", "c": "${W2V2SER_TEST_X:-x$$y}",
                       "d": "$$$$${W2V2SER_TEST_HOME}"}) == {"a": "d/$W2V2SER_TEST_HOME", "b": "${W2V2SER_TEST_HOME}",
                                                            "c": "x$y", "d": "$$/h"}
    with pytest.raises(ConfigError, match=r"taken as it is.*write \$\{W2V2SER_TEST_HOME\}"):
        expand_env({"output": "$$$W2V2SER_TEST_HOME"})  # a literal $, then the shell's form


def test_an_experiment_that_did_not_train_is_reported_with_its_default_head(tmp_path: Path) -> None:
    """Found by a pipeline trial: a skipped layer sweep (whose file sets no head) read Head "?" in
    the report, while its trained runs read "dense"."""
    from w2v2ser._stage_train import _mark_not_trained
    from w2v2ser.evaluate._rundir import read_run_dir

    data = _base()
    data["experiments"] = {"sw": {"features": "w2v2_pt/wav2vec2:all", "sweep": True}}
    config = load_pipeline(_write(tmp_path, data))
    experiment, = config.experiments
    _mark_not_trained(config, experiment, "model of store 'w2v2_pt' cannot be loaded")
    summary = read_run_dir(experiment.run_dir)
    assert summary.status == "skipped"
    assert (summary.head, summary.normalisation, summary.recipe) == ("dense", "speaker", "paper")


def test_dashboard_address_null_turns_the_dask_dashboard_off(tmp_path: Path) -> None:
    """Found by a pipeline trial: `dashboard_address: null` was refused, with no other way to run
    without a dashboard; it now means none, and no dashboard link is printed."""
    import urllib.request

    from w2v2ser._cluster import open_cluster

    data = _base()
    data["cluster"] = {"kind": "local", "workers": 1, "threads_per_worker": 1, "dashboard_address": None}
    config = load_pipeline(_write(tmp_path, data), validate_experiments=False)
    assert config.cluster.dashboard_address is None
    with open_cluster(config.cluster, use_gpus=False) as handle:
        assert handle.dashboard == ""
        port = handle.client.scheduler_info()["services"]["dashboard"]  # Dask's health routes stay
        host = handle.client.scheduler.address.split("://")[1].rsplit(":", 1)[0]
        with pytest.raises(OSError):  # 404 (an HTTPError) where the dashboard would be
            urllib.request.urlopen(f"http://{host}:{port}/status", timeout=10)


def test_empty_stores_and_a_string_of_layer_names_are_refused_with_the_fix():
    """Review of the schema reduction: an empty ExperimentConfig.stores lost its 'give ...' fix, and a
    FeatureSpec's layer_names given as one string was taken as one name per character."""
    from w2v2ser.store import FeatureSpec, StoreError
    from w2v2ser.train import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError, match=r"stores is empty; give \{'main': '/path/to/store'\}"):
        ExperimentConfig(stores={})
    with pytest.raises(ConfigError, match=r"ExperimentConfig.stores: got a list; give a path or \{alias: path\}"):
        ExperimentConfig(stores=["stores/ravdess.zarr"], features="egemaps")  # found by a trial: AttributeError
    for make in (lambda: FeatureSpec(name="x", dim=4, layers=2, frame_rate=50.0, dtype="float16", config={},
                                     layer_names="ab"),
                 lambda: FeatureSpec.from_dict({"name": "x", "dim": 4, "layers": 2, "frame_rate": 50.0,
                                                "dtype": "float16", "config": {}, "layer_names": "ab"})):
        with pytest.raises(StoreError, match="layer_names: expected a list of strings, got 'ab'"):
            make()


def test_a_misspelt_experiment_config_keyword_is_a_config_error_with_a_did_you_mean(tmp_path: Path):
    """Leftover: ExperimentConfig(unts=64) raised the generated __init__'s plain TypeError ("unexpected
    keyword argument"), where the same key in pipeline.yaml gets a did-you-mean and the valid keys."""
    from w2v2ser.train import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError, match=r"^ExperimentConfig: unts: unknown key\. Did you mean 'units'\? "
                                          r"Valid keys: stores, features, .*, units, "):
        ExperimentConfig(stores=str(tmp_path), protocol="ravdess", unts=64)
    with pytest.raises(ConfigError, match=r"^ExperimentConfig: 2 problems:\n  seed: unknown key\. Did you mean "
                                          r"'seeds'\?\n  hed: unknown key\. Did you mean 'head'\? Valid keys: "):
        ExperimentConfig(stores=str(tmp_path), protocol="ravdess", seed=1, hed="lstm")
    assert ExperimentConfig(stores=str(tmp_path), protocol="ravdess", units=64).units == 64


def test_every_experiment_group_s_reference_problem_is_reported_in_one_run(tmp_path: Path) -> None:
    """Found by a user of `w2v2ser run`: a bad store in one experiment and an unknown feature in
    another took two runs to see, one problem each, while schema problems came all at once."""
    data = _base()
    data["experiments"]["t2"] = {"features": "nowhere/egemaps"}
    data["experiments"]["t3"] = {"features": "classic/mfcc"}
    with pytest.raises(ConfigError) as caught:
        load_pipeline(_write(tmp_path, data), validate_experiments=False)
    message = str(caught.value)
    assert message.startswith("2 problems:\n  experiments.t2.features:"), message
    assert "\n  experiments.t3.features: " in message and "'mfcc'" in message
    data["experiments"].pop("t3")  # one problem: one line, as before
    with pytest.raises(ConfigError, match=r"^experiments\.t2\.features: selection 'nowhere/egemaps'"):
        load_pipeline(_write(tmp_path, data), validate_experiments=False)


@pytest.mark.parametrize(("memory", "walltime"), [("32gb", "90"), ("500 MB", "1-12"), ("1MB", "10"), ("16GiB", "2-00:30:00"),
                                                  ("64G", "UNLIMITED"), ("1TB", "45:00")])
def test_slurm_sizes_and_times_in_every_form_dask_and_sbatch_read(tmp_path: Path, memory: str, walltime: str) -> None:
    data = _base()
    data["cluster"] = {"kind": "slurm", "slurm": {"memory": memory, "walltime": walltime}}
    slurm = load_pipeline(_write(tmp_path, data), validate_experiments=False).cluster.slurm
    assert (slurm.memory, slurm.walltime) == (memory, walltime)


def test_extraction_defaults_and_local_model_paths_reach_each_extractor(tmp_path: Path) -> None:
    """extraction.device/batch_seconds go to every extractor that has the option (its own value
    wins); a model folder beside the pipeline file becomes absolute; `egemaps: null` is `{}`."""
    data = _base()
    (tmp_path / "mymodel").mkdir()
    data["extraction"].update(device="cpu", batch_seconds=4.0)
    data["extraction"]["stores"]["classic"]["features"]["egemaps"] = None
    data["extraction"]["stores"]["w2v2_pt"]["features"]["wav2vec2"] = {"model": "mymodel"}
    data["extraction"]["stores"]["own"] = {"features": {"wav2vec2": {"device": "cuda:1", "model": "mymodel"}}}
    config = load_pipeline(_write(tmp_path, data), validate_experiments=False)
    classic, w2v2, own = (config.stores[name].feature_dicts() for name in ("classic", "w2v2_pt", "own"))
    assert list(classic) == ["egemaps", "spectrogram"] and "device" not in classic["egemaps"]
    assert (w2v2["wav2vec2"]["device"], w2v2["wav2vec2"]["batch_seconds"]) == ("cpu", 4.0)
    assert (own["wav2vec2"]["device"], own["wav2vec2"]["batch_seconds"]) == ("cuda:1", 4.0)
    assert w2v2["wav2vec2"]["model"] == str(tmp_path / "mymodel")
    data["extraction"]["stores"]["w2v2_pt"]["features"]["wav2vec2"] = {"model": "./missing"}
    with pytest.raises(ConfigError, match=r"model path './missing' resolves to .*missing, which does not exist"):
        load_pipeline(_write(tmp_path, data), validate_experiments=False)
    data["extraction"]["stores"]["w2v2_pt"]["features"]["wav2vec2"] = {"model": "facebook/wav2vec2-base"}
    data["extraction"]["batch_seconds"] = 0
    with pytest.raises(ConfigError, match=r"extraction.batch_seconds: expected a value > 0.0, got 0.\n  "
                       r"extraction.stores.w2v2_pt.features.wav2vec2.batch_seconds: expected a value > 0.0, got 0."):
        load_pipeline(_write(tmp_path, data), validate_experiments=False)


@pytest.mark.parametrize("key", ["output", "corpus"])
def test_a_url_as_output_or_corpus_path_is_refused_not_made_a_local_folder(tmp_path: Path, key: str) -> None:
    """`output: s3://feat/pipe` wrote every store into a local folder `s3:/feat/pipe` beside the
    pipeline file, with no word: the user believed the stores were on object storage."""
    from w2v2ser._config import load_pipeline

    data = _base()
    if key == "output":
        data["output"] = "s3://feat/pipe"
    else:
        data["corpora"]["ravdess"]["path"] = "s3://feat/audio"
    where = "output" if key == "output" else r"corpora\.ravdess\.path"
    with pytest.raises(ConfigError, match=rf"{where}: 's3://feat/.*' is a URL; `w2v2ser run` keeps .* local "
                                          r"folders.*--store s3://bucket/x\.zarr"):
        load_pipeline(_write(tmp_path, data))
    assert not (tmp_path / "s3:").exists()


def test_a_file_url_as_output_or_corpus_path_is_that_local_path(tmp_path: Path) -> None:
    """Review2 item 4: `output: file:///data/x` became the local folder `file:/data/x` beside the
    pipeline file (and the corpus path one that did not exist); `--store file:///data/x` is /data/x."""
    data = _base()
    corpus = load_pipeline(_write(tmp_path, data)).corpora["ravdess"].path
    data["output"] = f"file://{tmp_path / 'out'}"
    data["corpora"]["ravdess"]["path"] = f"file://{corpus}"
    config = load_pipeline(_write(tmp_path, data))
    assert config.output == tmp_path / "out"
    assert config.corpora["ravdess"].path == corpus
    # Review3 item 13: `file://localhost/x` became the relative folder `localhost/x`; another host is refused
    data["output"] = f"file://localhost{tmp_path / 'out'}"
    assert load_pipeline(_write(tmp_path, data)).output == tmp_path / "out"
    data["output"] = "file://nas/data/out"
    with pytest.raises(ConfigError, match=r"output: 'file://nas/data/out' names the host 'nas', but w2v2ser reads "
                                          r"file:// URLs on this machine only"):
        load_pipeline(_write(tmp_path, data))


def test_set_takes_a_list_item_as_the_errors_name_it() -> None:
    """Errors name a list's item `reports.paper.experiments[1]`; that path given to --set became a key
    `experiments[1]`, refused as "reports.paper: unknown key. Valid keys here: ." """
    raw = {"reports": {"paper": {"experiments": ["a/*", "b/*"]}}, "x": [[1, 2], [3, 4]]}
    apply_overrides(raw, ["reports.paper.experiments[1]=c/*", "x[1][0]=5", "x.0.1=6"])
    assert raw == {"reports": {"paper": {"experiments": ["a/*", "c/*"]}}, "x": [[1, 6], [5, 4]]}
    with pytest.raises(ConfigError, match=r"indexes a list of 2 items"):
        apply_overrides(raw, ["reports.paper.experiments[2]=d/*"])


def test_a_shell_style_variable_that_is_set_is_refused(tmp_path: Path, monkeypatch) -> None:
    """`output: $OUTDIR/x` (a shell's form) with OUTDIR set made a folder literally named `$OUTDIR`."""
    monkeypatch.setenv("W2V2SER_TEST_OUT", str(tmp_path / "o"))
    data = _base()
    data["output"] = "$W2V2SER_TEST_OUT/runs"
    with pytest.raises(ConfigError, match=r"output: .*taken as it is.*write \$\{W2V2SER_TEST_OUT\}"):
        load_pipeline(_write(tmp_path, data), validate_experiments=False)
    data["output"] = "${W2V2SER_TEST_OUT}/runs"
    assert load_pipeline(_write(tmp_path, data), validate_experiments=False).output == tmp_path / "o" / "runs"
    data["cluster"] = {"kind": "slurm", "slurm": {"job_script_prologue": ["cd $W2V2SER_TEST_OUT"]}}  # the job's shell's
    assert load_pipeline(_write(tmp_path, data), validate_experiments=False).cluster.slurm.job_script_prologue == (
        "cd $W2V2SER_TEST_OUT",)
    data["cluster"]["slurm"]["local_directory"] = "$W2V2SER_TEST_OUT/dask"
    assert load_pipeline(_write(tmp_path, data), validate_experiments=False).cluster.slurm.local_directory == (
        "$W2V2SER_TEST_OUT/dask")
    # Not through a shell: dask-jobqueue makes that folder itself, and sbatch does not expand #SBATCH lines.
    for key, value in (("log_directory", "$W2V2SER_TEST_OUT/logs"), ("job_extra_directives", ["-o $W2V2SER_TEST_OUT"])):
        bad = {**data, "cluster": {"kind": "slurm", "slurm": {key: value}}}
        with pytest.raises(ConfigError, match=rf"cluster\.slurm\.{key}.*taken as it is"):
            load_pipeline(_write(tmp_path, bad), validate_experiments=False)
    monkeypatch.delenv("W2V2SER_TEST_OUT")
    data["output"] = "a$W2V2SER_TEST_OUT"  # not set: a name with a $ in it, as before
    assert load_pipeline(_write(tmp_path, data), validate_experiments=False).output == tmp_path / "a$W2V2SER_TEST_OUT"


def test_a_job_script_prologue_given_as_one_string_keeps_the_shells_variables(tmp_path: Path, monkeypatch) -> None:
    """`job_script_prologue: "export A=$HOME/x"` (one line as a string, which the setting accepts)
    was refused with "write ${HOME}", while the same line in a list went to the job's shell."""
    monkeypatch.setenv("W2V2SER_TEST_OUT", str(tmp_path / "o"))
    data = _base()
    data["cluster"] = {"kind": "slurm", "slurm": {"job_script_prologue": "export A=$W2V2SER_TEST_OUT/x"}}
    assert load_pipeline(_write(tmp_path, data), validate_experiments=False).cluster.slurm.job_script_prologue == (
        "export A=$W2V2SER_TEST_OUT/x",)


def test_dollar_dollar_goes_to_the_jobs_shell_as_written(monkeypatch) -> None:
    """f0fa2ca made `$$` a literal `$` everywhere, so an existing prologue line `mkdir -p /tmp/w2v2ser-$$`
    (the shell's process id: one folder per job) silently became `/tmp/w2v2ser-$`, one folder shared
    by every job. The lines the job's shell expands keep `$$`; `${VAR}` is still expanded there."""
    from w2v2ser._overrides import expand_env

    monkeypatch.setenv("W2V2SER_TEST_HOME", "/h")
    monkeypatch.delenv("W2V2SER_TEST_X", raising=False)
    slurm = {"job_script_prologue": ["mkdir -p /tmp/w2v2ser-$$", "cd ${W2V2SER_TEST_HOME}/$$"],
             "local_directory": "${W2V2SER_TEST_X:-/scratch/$$}/dask", "log_directory": "logs-$$"}
    assert expand_env({"cluster": {"slurm": slurm}, "output": "out/$$x"}) == {
        "cluster": {"slurm": {"job_script_prologue": ["mkdir -p /tmp/w2v2ser-$$", "cd /h/$$"],
                              "local_directory": "/scratch/$$/dask", "log_directory": "logs-$"}},
        "output": "out/$x"}
    assert expand_env({"cluster": {"slurm": {"job_script_prologue": "echo $$"}}}) == {
        "cluster": {"slurm": {"job_script_prologue": "echo $$"}}}


def test_an_escaped_dollar_brace_is_no_default(monkeypatch) -> None:
    """`a$${X:-$HOME}` is the literal text `a${X:-` then `$HOME`: it was refused as "$HOME in a default",
    whose hint (write the value, or set X) does not apply; `${HOME}` there is expanded."""
    from w2v2ser._overrides import expand_env

    monkeypatch.setenv("W2V2SER_TEST_HOME", "/h")
    with pytest.raises(ConfigError, match=r"taken as it is.*write \$\{W2V2SER_TEST_HOME\}") as error:
        expand_env({"output": "a$${W2V2SER_TEST_X:-$W2V2SER_TEST_HOME}"})
    assert "in a default" not in str(error.value)
    assert expand_env({"output": "a$${W2V2SER_TEST_X:-${W2V2SER_TEST_HOME}}"}) == {"output": "a${W2V2SER_TEST_X:-/h}"}


def test_a_store_path_or_recipe_overrides_of_the_wrong_type_is_a_config_error_naming_the_key(tmp_path: Path):
    """Review of b0f20e8 (from_dict is cls(**d)): a store path given as a number or null, and
    recipe_overrides given as a list, raised TypeErrors from the path/dict conversions, not ConfigErrors."""
    from w2v2ser.train import ConfigError, ExperimentConfig

    for stores, match in (({"main": 5}, r"stores\.main: expected a valid string, got integer 5"),
                          ({"main": None}, r"stores\.main: expected a valid string, got null")):
        with pytest.raises(ConfigError, match=match):
            ExperimentConfig.from_dict({"stores": stores, "protocol": "ravdess"})
    with pytest.raises(ConfigError, match=r"recipe_overrides: expected a mapping, got list \[1\]"):
        ExperimentConfig.from_dict({"stores": str(tmp_path), "protocol": "ravdess", "recipe_overrides": [1]})
    config = ExperimentConfig(stores={"main": tmp_path, "x": "s3://b/x.zarr"}, protocol="ravdess",
                              recipe_overrides=None)  # paths and None still converted
    assert config.stores == {"main": str(tmp_path), "x": "s3://b/x.zarr"} and config.recipe_overrides == {}
    # Review s63: any mapping (a MappingProxyType, a Hydra sweep's DictConfig) is taken, as before 4ca9a6a.
    from types import MappingProxyType

    config = ExperimentConfig(stores=str(tmp_path), protocol="ravdess",
                              recipe_overrides=MappingProxyType({"max_epochs": 2}))
    assert config.recipe_overrides == {"max_epochs": 2}


def test_config_fields_assigned_after_construction_are_checked(tmp_path):
    """Found by a trial: ExperimentConfig fields set by assignment skipped every check and conversion:
    cfg.stores = "path" failed in plan_runs with AttributeError, cfg.seeds = 0 planned no run."""
    from stage2_fixtures import build_store, ravdess_utterances
    from w2v2ser.train import ExperimentConfig, plan_runs

    path = build_store(tmp_path / "rav.zarr", utterances=ravdess_utterances(per_actor=2), layers=3, dim=4)
    config = ExperimentConfig(stores=str(path), features="egemaps", seeds=1)
    config.stores = str(path)  # a path, as the constructor takes it
    config.seeds = 2
    assert [spec.seed for spec in plan_runs(config)] == [0, 1]
    config.seeds = 0
    with pytest.raises(ConfigError, match=r"seeds: expected a value >= 1, got 0"):
        plan_runs(config)


def test_a_protocol_read_from_the_store_follows_stores_assigned_afterwards(tmp_path):
    """ExperimentConfig(stores=<a RAVDESS store>) took protocol 'ravdess' from the store; assigning an IEMOCAP
    store afterwards kept it, and the runs planned the RAVDESS protocol's classes and split on IEMOCAP."""
    from stage2_fixtures import build_store
    from w2v2ser.train import ExperimentConfig, class_names, plan_runs

    ravdess = build_store(tmp_path / "rav.zarr", corpus="ravdess", layers=2, dim=4, features=("egemaps",))
    iemocap = build_store(tmp_path / "iem.zarr", corpus="iemocap", layers=2, dim=4, features=("egemaps",))
    fresh = ExperimentConfig(stores=str(iemocap), features="egemaps", seeds=1)
    config = ExperimentConfig(stores=str(ravdess), features="egemaps", seeds=1)
    assert config.protocol == "ravdess"
    config.stores = str(iemocap)
    assert class_names(config) == class_names(fresh)
    assert [run.name for run in plan_runs(config)] == [run.name for run in plan_runs(fresh)]
    given = ExperimentConfig(stores=str(ravdess), features="egemaps", seeds=1, protocol="ravdess")
    given.stores = str(iemocap)  # a protocol given by hand is the user's: kept
    assert given.protocol == "ravdess"


def test_a_config_shows_the_protocol_its_new_store_gives_after_an_assignment(tmp_path):
    """After config.stores = <an IEMOCAP store>, config.protocol, repr and to_dict() showed None until the config
    was used (a user printing or saving it saw no protocol), while config_key() hashed the new store's."""
    from stage2_fixtures import build_store
    from w2v2ser.train import ExperimentConfig

    ravdess = build_store(tmp_path / "rav.zarr", corpus="ravdess", layers=2, dim=4, features=("egemaps",))
    iemocap = build_store(tmp_path / "iem.zarr", corpus="iemocap", layers=2, dim=4, features=("egemaps",))
    fresh = ExperimentConfig(stores=str(iemocap), features="egemaps", seeds=1)
    config = ExperimentConfig(stores=str(ravdess), features="egemaps", seeds=1)
    config.stores = {"main": str(iemocap)}
    assert config.protocol == "iemocap" and "protocol='iemocap'" in repr(config)
    assert config.to_dict()["protocol"] == "iemocap" and config.config_key() == fresh.config_key()
    config.stores = {"main": str(tmp_path / "not-yet.zarr")}  # no store there yet: read when the config is used
    assert config.protocol is None
    config.subset = {"speaker": ["1"]}
    config.stores = {"main": str(iemocap)}  # read again once it can be
    assert config.protocol == "iemocap" and config.to_dict()["protocol"] == "iemocap"
    config.protocol = "ravdess"  # assigned by hand: the user's, kept
    config.stores = {"main": str(iemocap)}
    assert config.protocol == "ravdess"


def test_a_config_whose_store_was_assigned_again_keeps_the_key_of_a_new_config(tmp_path):
    """Assigning stores (even the same one back) forgot the protocol read from the store, and config_key() hashed
    that None: the key differed from a new config's of the same store, so its finished runs were not found."""
    from stage2_fixtures import build_store
    from w2v2ser.train import ExperimentConfig

    ravdess = build_store(tmp_path / "rav.zarr", corpus="ravdess", layers=2, dim=4, features=("egemaps",))
    iemocap = build_store(tmp_path / "iem.zarr", corpus="iemocap", layers=2, dim=4, features=("egemaps",))
    fresh = ExperimentConfig(stores=str(ravdess), features="egemaps", seeds=1)
    config = ExperimentConfig(stores=str(ravdess), features="egemaps", seeds=1)
    config.stores = {"main": str(iemocap)}
    assert config.config_key() == ExperimentConfig(stores=str(iemocap), features="egemaps", seeds=1).config_key()
    config.stores = {"main": str(ravdess)}
    assert config.config_keys() == fresh.config_keys()
    config.features = "egemaps"
    assert config.config_key() == fresh.config_key()


def test_a_config_assigned_a_path_string_or_a_lone_subset_value_keeps_the_key_of_a_new_config(tmp_path):
    """config.stores = "<path>" (the shorthand ExperimentConfig takes) made config_key() hash the path's characters,
    and config.subset = {"speaker": "01"} hashed the lone value, not the list a new config spells it as: the keys
    differed from a new config's of the same settings, so a script matching runs by config_key() found none."""
    from stage2_fixtures import build_store
    from w2v2ser.train import ExperimentConfig

    first = build_store(tmp_path / "a.zarr", corpus="ravdess", layers=2, dim=4, features=("egemaps",))
    second = build_store(tmp_path / "b.zarr", corpus="ravdess", layers=2, dim=4, features=("egemaps",))
    config = ExperimentConfig(stores=str(first), features="egemaps", seeds=1, protocol="ravdess")
    config.stores = str(second)
    assert config.config_keys() == ExperimentConfig(stores=str(second), features="egemaps", seeds=1,
                                                    protocol="ravdess").config_keys()
    config.subset = {"speaker": "01"}
    assert config.config_key() == ExperimentConfig(stores=str(second), features="egemaps", seeds=1, protocol="ravdess",
                                                   subset={"speaker": ["01"]}).config_key()
    config.seeds = 0  # checked when the key is asked for, as when the config is used
    with pytest.raises(ConfigError, match="seeds"):
        config.config_key()

def test_a_subset_given_as_a_tuple_or_set_of_values_is_that_list():
    """ExperimentConfig(subset={"speaker": ("01", "02")}) was refused with "expected a valid string or a valid list,
    got list ('01', '02')": a tuple (or set) of values, as Python code writes them, is the list of those values."""
    from w2v2ser.train import ExperimentConfig

    def config(values):
        return ExperimentConfig(stores={"main": "s3://bucket/ravdess.zarr"}, features="egemaps", protocol="ravdess",
                                subset={"speaker": values})

    listed = config(["02", "01"])
    for values in (("01", "02"), {"02", "01"}, frozenset({"01", "02"})):
        assert config(values).subset == {"speaker": ["01", "02"]} and config(values).config_key() == listed.config_key()
    with pytest.raises(ConfigError, match=r"subset\.speaker: expected a valid string or at least 1 item"):
        config(())

def test_a_copy_given_other_stores_reads_their_protocol(tmp_path):
    """dataclasses.replace(config, stores=<an IEMOCAP store>) passed on the protocol 'ravdess' read from the first
    store as if it had been given: the copy planned the RAVDESS classes and split on IEMOCAP."""
    import copy
    import dataclasses
    import pickle

    from stage2_fixtures import build_store
    from w2v2ser.train import ExperimentConfig, class_names

    ravdess = build_store(tmp_path / "rav.zarr", corpus="ravdess", layers=2, dim=4, features=("egemaps",))
    iemocap = build_store(tmp_path / "iem.zarr", corpus="iemocap", layers=2, dim=4, features=("egemaps",))
    config = ExperimentConfig(stores=str(ravdess), features="egemaps", seeds=1)
    fresh = ExperimentConfig(stores=str(iemocap), features="egemaps", seeds=1)
    moved = dataclasses.replace(config, stores=str(iemocap))
    assert moved.protocol == "iemocap" and moved.config_key() == fresh.config_key()
    assert class_names(moved) == class_names(fresh)
    assert dataclasses.replace(config).protocol == "ravdess"
    for copied in (copy.copy(config), copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert copied.protocol == "ravdess" and copied.config_key() == config.config_key()
        copied.stores = {"main": str(iemocap)}
        assert copied.config_key() == fresh.config_key()
    assert config.to_dict()["protocol"] == "ravdess" and type(config.to_dict()["protocol"]) is str
    given = dataclasses.replace(ExperimentConfig(stores=str(ravdess), features="egemaps", seeds=1, protocol="ravdess"),
                                stores=str(iemocap))
    assert given.protocol == "ravdess"  # given by hand: the user's
