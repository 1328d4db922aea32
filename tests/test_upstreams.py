"""Every supported upstream (wav2vec2, HuBERT, WavLM, data2vec-audio) through the same extractor.

Each family is a tiny random model of that family saved locally (weights cannot be downloaded):
exact batching, equality with the family's own `transformers` class, feature names, the
recorded upstream facts, and refusals of mismatched models.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tiny_models import FAMILY_VARIANTS, save_tiny_upstream  # noqa: E402
from w2v2ser.extract import (  # noqa: E402
    EXTRACTORS,
    UPSTREAMS,
    ExtractorConfigError,
    ModelLoadError,
    build_extractor,
)

# Batched vs one-at-a-time, float32 on CPU: only summation order differs.
BATCH_TOLERANCE = 1e-4
LENGTHS = (16000, 8000, 23456, 12345, 4000, 400)
_HF_CLASS = {"wav2vec2": "Wav2Vec2Model", "hubert": "HubertModel", "wavlm": "WavLMModel", "data2vec": "Data2VecAudioModel"}


def _signals(lengths=LENGTHS, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def _variant_id(variant: tuple[str, str, bool]) -> str:
    family, norm, stable = variant
    return f"{family}-{norm}norm{'-stable' if stable else ''}"


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[tuple[str, str, bool], Path]:
    root = tmp_path_factory.mktemp("upstreams")
    return {
        variant: save_tiny_upstream(root / _variant_id(variant), variant[0], feat_extract_norm=variant[1],
                                    stable_layer_norm=variant[2])
        for variant in FAMILY_VARIANTS
    }


def _extractor(family: str, model: Path, **options):
    return build_extractor(family, {"model": str(model), "device": "cpu", "dtype": "float32", **options})


def test_every_family_has_a_feature_name() -> None:
    assert UPSTREAMS == {"wav2vec2", "hubert", "wavlm", "data2vec"} and UPSTREAMS <= set(EXTRACTORS)
    assert {family for family, _, _ in FAMILY_VARIANTS} == UPSTREAMS


@pytest.mark.parametrize("variant", FAMILY_VARIANTS, ids=_variant_id)
def test_batched_equals_one_at_a_time(variant, model_dirs) -> None:
    family = variant[0]
    signals = _signals()
    batched = _extractor(family, model_dirs[variant], batch_seconds=3.0).extract(signals)
    single = _extractor(family, model_dirs[variant], batch_seconds=0.01).extract(signals)
    extractor = _extractor(family, model_dirs[variant])
    for signal, many, one in zip(signals, batched, single):
        assert many.dtype == np.float32 and many.shape == (extractor.max_frames(len(signal)), 3, 32)
        assert np.abs(many - one).max() < BATCH_TOLERANCE


@pytest.mark.parametrize("variant", FAMILY_VARIANTS, ids=_variant_id)
def test_matches_the_familys_own_model(variant, model_dirs) -> None:
    """Index 0 = feature projection output; 1..L = the family's own hidden_states[1..L]."""
    family, directory = variant[0], model_dirs[variant]
    model = getattr(transformers, _HF_CLASS[family]).from_pretrained(str(directory)).eval()
    signals = _signals((16000, 5555))
    frames = _extractor(family, directory).extract(signals)
    # No preprocessor_config.json here: LayerNorm encoders get normalised waveforms (fairseq's pairing).
    processor = transformers.Wav2Vec2FeatureExtractor(do_normalize=variant[1] == "layer")
    for signal, ours in zip(signals, frames):
        x = processor(signal, sampling_rate=16000, return_tensors="pt").input_values
        with torch.no_grad():
            hidden = model(x, output_hidden_states=True).hidden_states
            projected = model.feature_projection(model.feature_extractor(x).transpose(1, 2))
            projected = projected[0] if isinstance(projected, tuple) else projected
        assert len(hidden) == ours.shape[1]
        np.testing.assert_allclose(ours[:, 0], projected[0].numpy(), atol=1e-5)
        for k in range(1, len(hidden)):
            np.testing.assert_allclose(ours[:, k], hidden[k][0].numpy(), atol=1e-4)


def test_wavlm_keeps_its_relative_position_bias(model_dirs) -> None:
    """What the old loader did: WavLM weights read by Wav2Vec2Model lose the position bias."""
    directory = model_dirs[("wavlm", "group", False)]
    signal = _signals((16000,))
    ours = _extractor("wavlm", directory).extract(signal)[0]
    as_wav2vec2 = transformers.Wav2Vec2Model.from_pretrained(str(directory)).eval()
    with torch.no_grad():
        dropped = as_wav2vec2(torch.from_numpy(signal[0])[None], output_hidden_states=True).hidden_states[-1][0]
    assert np.abs(ours[:, -1] - dropped.numpy()).max() > 1e-2


def test_data2vec_needs_padding_zeroed_between_positional_convs(model_dirs, monkeypatch) -> None:
    """Why the positional-conv hook exists: without it a padded batch drifts."""
    from w2v2ser.extract._wav2vec2 import Wav2Vec2Extractor

    directory = model_dirs[("data2vec", "layer", False)]
    signals = _signals((16000, 8000))
    single = _extractor("data2vec", directory, batch_seconds=0.01).extract(signals)
    monkeypatch.setattr(Wav2Vec2Extractor, "_zero_padded_frames", lambda self, m, i, output: output)
    leaky = _extractor("data2vec", directory, batch_seconds=3.0).extract(signals)
    assert np.abs(leaky[1] - single[1]).max() > 1e-3


@pytest.mark.parametrize("family", sorted(UPSTREAMS))
def test_feature_spec_names_and_records_the_upstream(family, model_dirs) -> None:
    variant = next(v for v in FAMILY_VARIANTS if v[0] == family)
    spec = _extractor(family, model_dirs[variant]).feature_spec()
    assert (spec.name, spec.layers, spec.dim) == (family, 3, 32)
    upstream = spec.config["upstream"]
    assert upstream["family"] == family and upstream["model"] == str(model_dirs[variant])
    assert upstream["hidden_states"] == 3 and upstream["width"] == 32
    assert upstream["model_type"] == ("data2vec-audio" if family == "data2vec" else family)
    assert len(upstream["weights_sha256"]["model.safetensors"]) == 64
    assert spec.config["provenance"]["model_class"] == _HF_CLASS[family]
    assert {"attention", "compile", "device", "batch_seconds"} <= set(spec.config["runtime"])


def test_large_shape_is_recorded(tmp_path) -> None:
    """Nothing assumes 13 x 768: the layer count and width come from the model's config."""
    directory = save_tiny_upstream(tmp_path / "hubert", "hubert", feat_extract_norm="layer", stable_layer_norm=True,
                                   num_layers=4, hidden=48)
    extractor = _extractor("hubert", directory)
    spec = extractor.feature_spec()
    assert (spec.layers, spec.dim) == (5, 48)
    assert (spec.config["upstream"]["hidden_states"], spec.config["upstream"]["width"]) == (5, 48)
    assert extractor.extract(_signals((8000,)))[0].shape == (extractor.max_frames(8000), 5, 48)


def test_another_familys_model_is_refused_with_the_name_to_use(model_dirs) -> None:
    with pytest.raises(ExtractorConfigError, match=r"HuBERT model.*--features hubert"):
        _extractor("wav2vec2", model_dirs[("hubert", "group", False)]).feature_spec()
    with pytest.raises(ExtractorConfigError, match=r"WavLM model.*feature 'wavlm'"):
        _extractor("hubert", model_dirs[("wavlm", "group", False)]).feature_spec()


def test_a_fairseq_checkpoint_given_as_another_family_is_refused_without_naming_a_config_json(tmp_path) -> None:
    from tiny_models import save_tiny_fairseq_checkpoint

    path = save_tiny_fairseq_checkpoint(tmp_path / "wav2vec_small.pt")
    with pytest.raises(ExtractorConfigError, match=r"wav2vec 2.0 model \(a fairseq checkpoint.*--features wav2vec2") as caught:
        _extractor("hubert", path).feature_spec()
    assert "config.json" not in str(caught.value)


def test_weights_that_do_not_fit_the_config_are_refused(model_dirs, tmp_path) -> None:
    """WavLM weights under a wav2vec2 config.json: loading would drop the position bias."""
    directory = shutil.copytree(model_dirs[("wavlm", "group", False)], tmp_path / "relabelled")
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="wav2vec2", architectures=["Wav2Vec2Model"])
    (directory / "config.json").write_text(json.dumps(config))
    extractor = _extractor("wav2vec2", directory)
    assert extractor.feature_spec().name == "wav2vec2"  # the config alone looks fine
    with pytest.raises(ModelLoadError, match=r"do not fit Wav2Vec2Model.*rel_attn_embed"):
        extractor.extract(_signals((800,)))


def test_unsupported_model_type_is_named(model_dirs, tmp_path) -> None:
    directory = shutil.copytree(model_dirs[("wav2vec2", "group", False)], tmp_path / "conformer")
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "wav2vec2-conformer"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"'wav2vec2-conformer'.*'hubert'.*'wavlm'.*'data2vec-audio'"):
        _extractor("wav2vec2", directory).feature_spec()


@pytest.mark.parametrize("family", ["hubert", "wavlm", "data2vec"])
def test_family_configs_take_the_same_keys(family) -> None:
    from w2v2ser.extract._registry import extractor_config_class

    config_class = extractor_config_class(family)
    config = config_class()
    assert family.replace("data2vec", "data2vec-audio") in config.model
    assert config_class.from_dict(config.to_dict()) == config
    with pytest.raises(ExtractorConfigError, match=rf"{family} config: batch_second: unknown key. Did you mean 'batch_seconds'"):
        config_class.from_dict({"batch_second": 3})
    with pytest.raises(ExtractorConfigError, match=rf"{family} config: precision: expected one of"):
        config_class(precision="int4")


def test_recorded_config_of_an_old_wav2vec2_store_still_builds(model_dirs) -> None:
    """A store written before upstream families (no 'upstream', 'attention', 'compile' keys)
    still gives its extractor back for `--like`."""
    old = {"model": str(model_dirs[("wav2vec2", "group", False)]), "revision": None, "dtype": "float16",
           "precision": "auto", "max_seconds": 120.0,
           "runtime": {"device": "cpu", "batch_seconds": 32.0, "num_threads": None},
           "provenance": {"source": "local"}}
    extractor = build_extractor("wav2vec2", old, recorded=True)
    assert extractor.name == "wav2vec2" and extractor.config.attention == "sdpa"
    assert extractor.feature_spec().config["upstream"]["family"] == "wav2vec2"


def test_a_wav2vec2_store_from_before_the_families_takes_new_files(model_dirs, tmp_path) -> None:
    """A store whose wav2vec2 config predates the upstream families (a format-1 store after `store
    upgrade`: no `upstream`, no family, model type or class in its provenance) resumes with the same
    model and keeps its recorded config. Found by a migration trial: it was refused as made with
    another config, so the pending rows `store upgrade --allow-incomplete` leaves could not be extracted."""
    import soundfile as sf
    import zarr

    from w2v2ser.extract import extract_corpus
    from w2v2ser.store import Utterance, open_store

    utterances = []
    for number, signal in enumerate(_signals((16000, 7000, 12000))):
        path = tmp_path / f"utt{number}.wav"
        sf.write(path, signal, 16000, subtype="FLOAT")
        utterances.append(Utterance(id=f"u{number}", path=str(path), speaker=f"spk{number % 2}",
                                    label=["angry", "sad"][number % 2]))
    model, store_path = model_dirs[("wav2vec2", "group", False)], tmp_path / "old.zarr"
    extract_corpus(utterances[:2], store_path, extractors=[_extractor("wav2vec2", model)], progress=False)
    group = zarr.open_group(str(store_path), mode="r+")
    meta = dict(group.attrs["w2v2ser"])
    config = meta["features"]["wav2vec2"]["config"]
    for key in ("upstream", "normalize_waveform"):
        del config[key]
    for key in ("family", "model_type", "model_class"):
        del config["provenance"][key]
    del config["provenance"]["architecture"]["model_type"]
    group.attrs["w2v2ser"] = meta
    recorded = open_store(store_path).features["wav2vec2"].config
    summary = extract_corpus(utterances, store_path, extractors=[_extractor("wav2vec2", model)], progress=False)
    assert summary.complete and summary.extracted == 1 and summary.skipped == 2
    store = open_store(store_path)
    assert store.features["wav2vec2"].config == recorded
    expected = _extractor("wav2vec2", model).extract([sf.read(utterances[2].path, dtype="float32")[0]])[0]
    np.testing.assert_allclose(store.read_utterance("u2", "wav2vec2"), expected, atol=1e-5)
    # Other weights are still refused.
    other = model_dirs[("wav2vec2", "layer", True)]
    with pytest.raises(Exception, match="made with another config"):
        extract_corpus(utterances, store_path, extractors=[_extractor("wav2vec2", other, normalize_waveform=False)],
                       progress=False)

@pytest.mark.slow
def test_compile_gives_the_same_states(model_dirs) -> None:
    """torch.compile of the transformer layers changes rounding only (CPU inductor)."""
    directory = model_dirs[("wav2vec2", "group", False)]
    signals = _signals((16000, 8000, 4000))
    plain = _extractor("wav2vec2", directory, batch_seconds=3.0).extract(signals)
    compiled = _extractor("wav2vec2", directory, batch_seconds=3.0, compile=True).extract(signals)
    for a, b in zip(plain, compiled):
        assert np.abs(a - b).max() < BATCH_TOLERANCE


def test_cli_extracts_two_upstreams_into_one_store_under_their_names(model_dirs, tmp_path, capfd) -> None:
    """`--features hubert --model DIR`, then wavlm into the same store; both read back as written.
    With --no-progress no progress bar shows, transformers' "Loading weights" included, and torch's
    note on WavLM's mask types (at every padded batch) does not reach the user."""
    import warnings

    import soundfile as sf

    from w2v2ser._cli import main
    from w2v2ser.store import open_store

    rows = ["path,label,speaker"]
    for number, signal in enumerate(_signals((16000, 7000, 12000))):
        path = tmp_path / f"utt{number}.wav"
        sf.write(path, signal, 16000, subtype="FLOAT")
        rows.append(f"{path},{['angry', 'sad'][number % 2]},spk{number % 2}")
    manifest = tmp_path / "corpus.csv"
    manifest.write_text("\n".join(rows) + "\n")
    store_path = tmp_path / "upstreams.zarr"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for family in ("hubert", "wavlm"):
            variant = next(v for v in FAMILY_VARIANTS if v[0] == family)
            code = main(["extract", "csv", str(manifest), "--store", str(store_path), "--features", family,
                         "--model", str(model_dirs[variant]), "--device", "cpu", "--no-progress"])
            assert code == 0
    assert "Loading weights" not in capfd.readouterr().err
    assert not [w for w in caught if "key_padding_mask" in str(w.message)]
    store = open_store(store_path)
    assert {"hubert", "wavlm"} <= set(store.features)
    assert store.features["wavlm"].config["upstream"]["family"] == "wavlm"
    for family in ("hubert", "wavlm"):
        variant = next(v for v in FAMILY_VARIANTS if v[0] == family)
        record = store.list_utterances()[0]
        stored = store.read_utterance(record.id, family)
        signal = sf.read(record.path, dtype="float32")[0]
        expected = build_extractor(family, {"model": str(model_dirs[variant]), "device": "cpu"}).extract([signal])[0]
        assert stored.dtype == np.float16 and stored.shape == expected.shape
        np.testing.assert_allclose(stored.astype(np.float32), expected.astype(np.float32), atol=2e-3)


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "data2vec"])
def test_fine_tuned_checkpoints_load_without_their_head(family, model_dirs, tmp_path) -> None:
    """A CTC fine-tuned save (encoder + lm_head, e.g. wav2vec2-base-960h) loads: the head is
    not part of the hidden states, so its weights are not a mismatch."""
    variant = next(v for v in FAMILY_VARIANTS if v[0] == family)
    head_class = getattr(transformers, _HF_CLASS[family].replace("Model", "ForCTC"))
    config = transformers.AutoConfig.from_pretrained(str(model_dirs[variant]))
    config.vocab_size = 12
    fine_tuned = head_class(config).eval()
    fine_tuned.base_model.load_state_dict(
        getattr(transformers, _HF_CLASS[family]).from_pretrained(str(model_dirs[variant])).state_dict())
    fine_tuned.save_pretrained(str(tmp_path / "ctc"))
    signals = _signals((9000, 4000))
    ours = _extractor(family, tmp_path / "ctc").extract(signals)
    for got, expected in zip(ours, _extractor(family, model_dirs[variant]).extract(signals)):
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_a_head_left_out_prints_no_transformers_load_report(model_dirs, tmp_path) -> None:
    """A CTC save's lm_head (or a pre-trained save's quantizer) is left out on purpose, and w2v2ser
    checks the encoder's weights itself: transformers' table of UNEXPECTED keys ("not ok if you expect
    identical arch") printed on every extraction of such a model, alarming and untrue there."""
    directory = model_dirs[("wav2vec2", "group", False)]
    config = transformers.AutoConfig.from_pretrained(str(directory))
    config.vocab_size = 12
    fine_tuned = transformers.Wav2Vec2ForCTC(config).eval()
    fine_tuned.base_model.load_state_dict(transformers.Wav2Vec2Model.from_pretrained(str(directory)).state_dict())
    fine_tuned.save_pretrained(str(tmp_path / "ctc"))
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    shown = logging.getLogger("transformers")  # transformers prints what reaches its library logger
    shown.addHandler(handler)
    try:
        ours = _extractor("wav2vec2", tmp_path / "ctc").extract(_signals((4000,)))
    finally:
        shown.removeHandler(handler)
    assert ours[0].shape[1:] == (config.num_hidden_layers + 1, config.hidden_size)
    assert not [r for r in records if "LOAD REPORT" in r.getMessage() or "lm_head" in r.getMessage()], records


@pytest.mark.parametrize("norm", ["group", "layer"])
@pytest.mark.parametrize("do_normalize", [True, False])
def test_waveform_normalisation_follows_the_models_preprocessor_config(model_dirs, tmp_path, norm: str,
                                                                         do_normalize: bool) -> None:
    """The model's own feature extractor (preprocessor_config.json) decides, as transformers'
    pipeline does: w2v2ser fed every model the raw waveform, although large wav2vec2, XLS-R,
    HuBERT/WavLM large and data2vec-audio were pre-trained on normalised input."""
    directory = shutil.copytree(model_dirs[("wav2vec2", norm, norm == "layer")], tmp_path / "model")
    transformers.Wav2Vec2FeatureExtractor(do_normalize=do_normalize).save_pretrained(str(directory))
    model = transformers.Wav2Vec2Model.from_pretrained(str(directory)).eval()
    processor = transformers.AutoFeatureExtractor.from_pretrained(str(directory))
    signals = _signals((16000, 5555, 12345))
    extractor = _extractor("wav2vec2", directory, batch_seconds=3.0)
    for signal, ours in zip(signals, extractor.extract(signals)):
        with torch.no_grad():
            inputs = processor(signal, sampling_rate=16000, return_tensors="pt").input_values
            hidden = model(inputs, output_hidden_states=True).hidden_states
        for k in range(1, len(hidden)):
            np.testing.assert_allclose(ours[:, k], hidden[k][0].numpy(), atol=1e-4)
    assert extractor.feature_spec().config["normalize_waveform"] is do_normalize  # what was done, not "auto"
    forced = _extractor("wav2vec2", directory, normalize_waveform=not do_normalize)
    assert forced.normalizes_waveform() is (not do_normalize)
    assert np.abs(forced.extract(signals[:1])[0] - extractor.extract(signals[:1])[0]).max() > 1e-3


@pytest.mark.parametrize("style", ["args", "cfg"])
@pytest.mark.parametrize("finetuned", [False, True])
def test_a_fairseq_checkpoint_says_whether_it_was_trained_on_normalised_waveforms(tmp_path, style: str,
                                                                                   finetuned: bool) -> None:
    from tiny_models import save_tiny_fairseq_checkpoint

    for normalize in (True, False, None):
        path = save_tiny_fairseq_checkpoint(tmp_path / f"{normalize}.pt", config_style=style, finetuned=finetuned,
                                            normalize=normalize, feat_extract_norm="group")
        extractor = _extractor("wav2vec2", path)
        # Without a recorded setting, the GroupNorm encoder of wav2vec_small means the raw waveform.
        assert extractor.normalizes_waveform() is bool(normalize), normalize


def test_stores_without_the_setting_are_raw_waveforms(model_dirs, tmp_path) -> None:
    """Stores written before the option never recorded it, and were fed raw waveforms: `--like`
    them does the same, they resume when the model's setting is the same, and a pipeline's store
    names (its identity hash) do not change for "auto"."""
    from w2v2ser._config import CorpusConfig, StoreConfig
    from w2v2ser.extract import configs_like
    from w2v2ser.extract._rates import feature_spec_for_store
    from w2v2ser.store import FeatureSpec

    def older_spec(model: Path) -> FeatureSpec:
        spec = _extractor("wav2vec2", model).feature_spec()
        config = {k: v for k, v in spec.config.items() if k != "normalize_waveform"}
        return FeatureSpec.from_dict({**spec.to_dict(), "config": config})

    group_model, layer_model = model_dirs[("wav2vec2", "group", False)], model_dirs[("wav2vec2", "layer", True)]
    options = configs_like({"wav2vec2": older_spec(layer_model)})["wav2vec2"]
    assert build_extractor("wav2vec2", options, recorded=True).normalizes_waveform() is False
    resumed = feature_spec_for_store(_extractor("wav2vec2", group_model), {}, {"wav2vec2": older_spec(group_model)})
    assert resumed.config == older_spec(group_model).config
    with pytest.raises(ExtractorConfigError, match="normalize_waveform: False"):
        feature_spec_for_store(_extractor("wav2vec2", layer_model), {}, {"wav2vec2": older_spec(layer_model)})

    class Before:  # an extractor config of the release before the option
        def to_dict(self) -> dict:
            options = _extractor("wav2vec2", layer_model).config.to_dict()
            del options["normalize_waveform"]
            return options

    corpus = CorpusConfig("ravdess", "ravdess", tmp_path)
    now = StoreConfig("w2v2", ("ravdess",), {"wav2vec2": _extractor("wav2vec2", layer_model).config})
    assert now.identity(corpus) == StoreConfig("w2v2", ("ravdess",), {"wav2vec2": Before()}).identity(corpus)
    forced = StoreConfig("w2v2", ("ravdess",), {"wav2vec2": _extractor("wav2vec2", layer_model,
                                                                        normalize_waveform=True).config})
    assert forced.identity(corpus) != now.identity(corpus)


def test_store_info_says_what_the_encoder_was_fed(model_dirs, tmp_path, capsys) -> None:
    from fixtures_audio import write_audio
    from w2v2ser._cli import main
    from w2v2ser.extract import extract_corpus
    from w2v2ser.store import Utterance

    utterances = [Utterance(id=f"u{k}", path=str(write_audio(tmp_path / f"u{k}.wav", duration=0.5, seed=k)),
                            label="a", speaker="s") for k in range(2)]
    for norm in ("group", "layer"):
        extractor = _extractor("wav2vec2", model_dirs[("wav2vec2", norm, norm == "layer")])
        extract_corpus(utterances, tmp_path / f"{norm}.zarr", extractors=[extractor], progress=False)
        assert main(["store", "info", str(tmp_path / f"{norm}.zarr")]) == 0
        fed = "normalised waveform" if norm == "layer" else "raw waveform"
        assert f", {fed}" in next(line for line in capsys.readouterr().out.splitlines() if "wav2vec2" in line)
