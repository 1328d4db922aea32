"""wav2vec 2.0 extractor: config, exact batching, HF equivalence, model sources (hub/local/fairseq)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tiny_models import save_tiny_fairseq_checkpoint, save_tiny_wav2vec2  # noqa: E402
from w2v2ser.extract._source import ModelLoadError  # noqa: E402
from w2v2ser.extract._wav2vec2 import ExtractorConfigError, Wav2Vec2Config, Wav2Vec2Extractor  # noqa: E402
from w2v2ser.store import W2v2serError  # noqa: E402

# Batched vs one-at-a-time, float32 on CPU: only summation order differs.
BATCH_TOLERANCE = 1e-4
LENGTHS = (16000, 8000, 23456, 12345, 4000, 400)  # 1 s, 0.5 s, ..., exactly one frame


def _signals(lengths=LENGTHS, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_tiny_wav2vec2(tmp_path_factory.mktemp("tiny_base"), num_layers=2, hidden=32)


@pytest.fixture(scope="module")
def large_dir(tmp_path_factory) -> Path:
    return save_tiny_wav2vec2(
        tmp_path_factory.mktemp("tiny_large"), num_layers=2, hidden=32, feat_extract_norm="layer", stable_layer_norm=True
    )


def _extractor(model: Path | str, **options) -> Wav2Vec2Extractor:
    # float32 output: the exactness contract is checked on unrounded values.
    options.setdefault("dtype", "float32")
    return Wav2Vec2Extractor(Wav2Vec2Config(model=str(model), device="cpu", **options))


# ----------------------------------------------------------------------------- config


def test_config_round_trip_and_defaults() -> None:
    config = Wav2Vec2Config()
    assert config.model == "facebook/wav2vec2-base" and config.device == "auto" and config.dtype == "float16"
    again = Wav2Vec2Config.from_dict(config.to_dict())
    assert again == config
    assert Wav2Vec2Config.from_dict({"batch_seconds": 8}).batch_seconds == 8.0


def test_config_takes_a_path_as_model() -> None:
    """Found by a notebook trial: a local model directory given as a Path was refused ("expected a
    valid string"), though every other path argument takes one."""
    from w2v2ser.extract import HubertConfig

    assert Wav2Vec2Config(model=Path("models/tiny")).model == "models/tiny"
    assert HubertConfig(model=Path("models/tiny")).to_dict()["model"] == "models/tiny"


def test_config_unknown_key_suggests() -> None:
    with pytest.raises(ExtractorConfigError, match="Did you mean .batch_seconds."):
        Wav2Vec2Config.from_dict({"batch_second": 10})


@pytest.mark.parametrize(
    ("option", "value"),
    [("device", "gpu"), ("dtype", "int8"), ("precision", "int8"), ("attention", "flash"), ("compile", "yes"),
     ("batch_seconds", 0), ("batch_seconds", "x"), ("num_threads", 0)],
)
def test_config_rejects_invalid_choices(option: str, value) -> None:
    with pytest.raises(ExtractorConfigError, match=option):
        Wav2Vec2Config(**{option: value})
    assert issubclass(ExtractorConfigError, W2v2serError)


# ----------------------------------------------------------------------------- spec, frames


def test_feature_spec_and_max_frames(base_dir: Path) -> None:
    extractor = _extractor(base_dir, dtype="float16")
    spec = extractor.feature_spec()
    assert extractor._model is None  # resolving the spec does not build the model
    assert (spec.name, spec.dim, spec.layers, spec.frame_rate, spec.dtype) == ("wav2vec2", 32, 3, 50.0, "float16")
    assert spec.layer_names == ("local encoder output (after feature projection)", "transformer layer 1", "transformer layer 2")
    provenance = spec.config["provenance"]
    assert provenance["source"] == "local" and provenance["architecture"]["num_hidden_layers"] == 2
    assert len(provenance["weights_sha256"]["model.safetensors"]) == 64
    assert spec.config["model"] == str(base_dir)
    hf = transformers.Wav2Vec2Model.from_pretrained(str(base_dir))
    for n in (0, 399, 400, 720, 16000, 23456, 160000):
        expected = max(0, int(hf._get_feat_extract_output_lengths(torch.tensor(n))))
        assert extractor.max_frames(n) == expected


# ----------------------------------------------------------------------------- exact batching


@pytest.mark.parametrize("model_dir", ["base_dir", "large_dir"])
def test_batched_equals_one_at_a_time(model_dir: str, request) -> None:
    directory = request.getfixturevalue(model_dir)
    signals = _signals()
    batched = _extractor(directory, batch_seconds=3.0).extract(signals)  # several multi-utterance batches
    single = _extractor(directory, batch_seconds=0.01).extract(signals)  # one utterance per batch
    extractor = _extractor(directory)
    for signal, many, one in zip(signals, batched, single):
        assert many.dtype == np.float32 and many.shape == (extractor.max_frames(len(signal)), 3, 32)
        assert np.abs(many - one).max() < BATCH_TOLERANCE


def test_naive_zero_padding_would_differ(base_dir: Path) -> None:
    """Why the masked GroupNorm exists: HF's padded batch of a group-norm model drifts."""
    signals = _signals((16000, 8000))
    model = transformers.Wav2Vec2Model.from_pretrained(str(base_dir)).eval()
    padded = torch.zeros(2, 16000)
    padded[0], padded[1, :8000] = torch.from_numpy(signals[0]), torch.from_numpy(signals[1])
    with torch.no_grad():
        naive = model(padded, output_hidden_states=True).hidden_states[-1][1, :24].numpy()
    ours = _extractor(base_dir).extract(signals)[1][:, -1]
    assert np.abs(naive - ours).max() > 1e-2


@pytest.mark.parametrize("model_dir", ["base_dir", "large_dir"])
def test_matches_hf_hidden_states(model_dir: str, request) -> None:
    directory = request.getfixturevalue(model_dir)
    model = transformers.Wav2Vec2Model.from_pretrained(str(directory)).eval()
    signals = _signals((16000, 5555))
    frames = _extractor(directory).extract(signals)
    # No preprocessor_config.json: a LayerNorm (large) encoder gets the normalised waveform it was trained on.
    processor = transformers.Wav2Vec2FeatureExtractor(do_normalize=model.config.feat_extract_norm == "layer")
    for signal, ours in zip(signals, frames):
        x = processor(signal, sampling_rate=16000, return_tensors="pt").input_values
        with torch.no_grad():
            hidden = model(x, output_hidden_states=True).hidden_states
            projected = model.feature_projection(model.feature_extractor(x).transpose(1, 2))[0]
            transformer_input = projected + model.encoder.pos_conv_embed(projected)
            if not model.config.do_stable_layer_norm:
                transformer_input = model.encoder.layer_norm(transformer_input)
        assert len(hidden) == ours.shape[1]
        np.testing.assert_allclose(ours[:, 0], projected[0].numpy(), atol=1e-5)
        for k in range(1, len(hidden)):
            np.testing.assert_allclose(ours[:, k], hidden[k][0].numpy(), atol=1e-4)
        # Documented finding: HF hidden_states[0] is the first layer's input (after pos_conv), not index 0.
        np.testing.assert_allclose(hidden[0][0].numpy(), transformer_input[0].numpy(), atol=1e-5)


def test_short_and_invalid_signals(base_dir: Path) -> None:
    extractor = _extractor(base_dir)
    out = extractor.extract([np.zeros(399, np.float32), np.zeros(400, np.float32), np.zeros(0, np.float32)])
    assert [o.shape for o in out] == [(0, 3, 32), (1, 3, 32), (0, 3, 32)]
    assert extractor.extract([]) == []
    with pytest.raises(ExtractorConfigError, match="1-D"):
        extractor.extract([np.zeros((2, 800), np.float32)])


def test_output_dtype_is_the_storage_dtype(base_dir: Path) -> None:
    """float16 storage: the extractor hands back float16 (cast before the host copy), equal to
    the float32 output rounded to float16."""
    signals = _signals((16000, 5555))
    half = _extractor(base_dir, dtype="float16").extract(signals)
    full = _extractor(base_dir, dtype="float32").extract(signals)
    for h, f in zip(half, full):
        assert h.dtype == np.float16 and f.dtype == np.float32
        np.testing.assert_array_equal(h, f.astype(np.float16))


def test_pickles_without_model(base_dir: Path) -> None:
    extractor = _extractor(base_dir)
    first = extractor.extract(_signals((8000,)))[0]
    clone = pickle.loads(pickle.dumps(extractor))
    assert clone._model is None and clone.config == extractor.config
    np.testing.assert_array_equal(clone.extract(_signals((8000,)))[0], first)


@pytest.mark.skipif(torch.cuda.is_available(), reason="machine has CUDA")
def test_cuda_without_cuda_is_clear_error(base_dir: Path) -> None:
    extractor = Wav2Vec2Extractor(Wav2Vec2Config(model=str(base_dir), device="cuda"))
    with pytest.raises(ExtractorConfigError, match="no CUDA device"):
        extractor.extract(_signals((800,)))
    for precision in ("float16", "bfloat16"):
        with pytest.raises(ExtractorConfigError, match="needs a CUDA device"):
            _extractor(base_dir, precision=precision).extract(_signals((800,)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_index_beyond_the_visible_devices_is_a_clear_error_before_the_model_loads(base_dir: Path) -> None:
    """Found in review: cuda:N past the GPUs torch sees failed in the first batch with torch's
    "invalid device ordinal"; it is refused by the check that runs before any store is created."""
    count = torch.cuda.device_count()
    extractor = Wav2Vec2Extractor(Wav2Vec2Config(model=str(base_dir), device=f"cuda:{count}"))
    with pytest.raises(ExtractorConfigError, match=rf"device is 'cuda:{count}' but torch sees {count} CUDA device"):
        extractor.check()
    assert extractor._model is None
    Wav2Vec2Extractor(Wav2Vec2Config(model=str(base_dir), device=f"cuda:{count - 1}")).check()


# ----------------------------------------------------------------------------- model sources


@pytest.mark.parametrize("finetuned", [False, True], ids=["pretrained", "finetuned"])
@pytest.mark.parametrize("style", ["args", "cfg"])
@pytest.mark.parametrize("model_dir", ["base_dir", "large_dir"])
def test_fairseq_checkpoint_matches_hf(model_dir: str, style: str, finetuned: bool, request, tmp_path: Path) -> None:
    directory = request.getfixturevalue(model_dir)
    checkpoint = save_tiny_fairseq_checkpoint(
        tmp_path / "wav2vec_small.pt", source_dir=directory, finetuned=finetuned, config_style=style
    )
    signals = _signals((9000, 4321))
    expected = _extractor(directory).extract(signals)
    extractor = _extractor(checkpoint)
    for ours, theirs in zip(extractor.extract(signals), expected):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    provenance = extractor.feature_spec().config["provenance"]
    assert provenance["source"] == "fairseq" and set(provenance["weights_sha256"]) == {"wav2vec_small.pt"}
    assert provenance["architecture"] == _extractor(directory).feature_spec().config["provenance"]["architecture"]


class _Marker:
    """Unpickling this would create a file: a stand-in for code execution."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_fairseq_refuses_objects_outside_allow_list(base_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    checkpoint = save_tiny_fairseq_checkpoint(tmp_path / "evil.pt", source_dir=base_dir, extra={"x": _Marker(str(marker))})
    with pytest.raises(ModelLoadError, match="allow-list") as caught:
        _extractor(checkpoint).feature_spec()
    assert "open" in str(caught.value) and str(checkpoint) in str(caught.value)
    assert not marker.exists()


def test_fairseq_unexpected_keys_are_named(base_dir: Path, tmp_path: Path) -> None:
    checkpoint = save_tiny_fairseq_checkpoint(tmp_path / "odd.pt", source_dir=base_dir)
    content = torch.load(checkpoint, weights_only=False)
    content["model"]["encoder.mystery.weight"] = torch.zeros(2)
    del content["model"]["post_extract_proj.weight"]
    torch.save(content, checkpoint)
    with pytest.raises(ModelLoadError, match=r"encoder\.mystery\.weight.*feature_projection\.projection\.weight"):
        _extractor(checkpoint).extract(_signals((800,)))


@pytest.mark.parametrize(("top", "nested", "family"), [("hubert_ctc", "hubert", "HuBERT"),
                                                      ("wav2vec_ctc", "data2vec_audio", "data2vec-audio"),
                                                      ("hubert", None, "HuBERT")],
                         ids=["hubert-ft", "data2vec-ft", "hubert-pretrained"])
@pytest.mark.parametrize("style", ["args", "cfg"])
@pytest.mark.parametrize("arch_none", [False, True], ids=["name", "arch-none"])
def test_fairseq_checkpoint_of_another_family_is_refused(base_dir: Path, tmp_path: Path, style: str, top: str,
                                                         nested: str | None, family: str, arch_none: bool) -> None:
    # A fine-tuned fairseq HuBERT checkpoint has wav2vec 2.0's key names (its pre-training heads are
    # removed), so its weights fit a Wav2Vec2Model: it must not be stored as feature wav2vec2. A
    # data2vec fine-tune names its family only in w2v_args (top: wav2vec_ctc), a pre-trained model only
    # at the top; a recorded `arch: None` leaves the name to `_name` (review s62 items 6, 7).
    checkpoint = save_tiny_fairseq_checkpoint(tmp_path / "other_family.pt", source_dir=base_dir,
                                              finetuned=nested is not None, config_style=style)
    content = torch.load(checkpoint, weights_only=False)
    nodes = ([content["args"], getattr(content["args"], "w2v_args", None)] if style == "args" else
             [content["cfg"]["model"], (content["cfg"]["model"].get("w2v_args") or {}).get("model")])
    for node, name in zip(nodes, (top, nested)):
        if name is None:
            continue
        if style == "args":
            node.arch, node._name = (None, name) if arch_none else (name, None)
        else:  # a hydra-era cfg.model names its model in _name only (the fixture also writes arch)
            node["_name"] = name
            node["arch"] = None
            if not arch_none:
                del node["arch"]
    torch.save(content, checkpoint)
    other = nested if top.startswith("wav2vec") else top
    with pytest.raises(ModelLoadError, match=rf"is a {family} model \(fairseq architecture '{other}'\)") as caught:
        _extractor(checkpoint).feature_spec()
    assert str(checkpoint) in str(caught.value) and "save_pretrained" in str(caught.value)


def test_unilm_wavlm_checkpoint_is_named_wavlm(tmp_path: Path) -> None:
    """Review s62 (item 5): unilm's WavLM .pt ({"cfg": a flat WavLMConfig, "model": ...}) was told it
    "has neither 'args' nor 'cfg'", which it has, and no way on; a .pt without an architecture names none."""
    path = tmp_path / "WavLM-Base.pt"
    torch.save({"cfg": {"encoder_layers": 2, "relative_position_embedding": True, "num_buckets": 320}, "model": {}},
               path)
    with pytest.raises(ModelLoadError, match=r"is a WavLM model .*--features of its family"):
        _extractor(path).feature_spec()
    torch.save({"cfg": {"encoder_layers": 2}, "model": {}}, path)
    with pytest.raises(ModelLoadError, match=r"has no architecture in 'args' or 'cfg\.model'"):
        _extractor(path).feature_spec()


def test_not_a_fairseq_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "random.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ModelLoadError, match="not a fairseq checkpoint"):
        _extractor(path).feature_spec()


def test_hub_id_offline_is_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as caught:
        _extractor("nobody-w2v2ser/made-up-wav2vec2").feature_spec()
    message = str(caught.value)
    for needle in ("nobody-w2v2ser/made-up-wav2vec2", "not in the local Hugging Face cache", "save_pretrained", "wav2vec_small.pt", "HF_HOME"):
        assert needle in message


def test_missing_path_is_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        _extractor(tmp_path / "wav2vec_small.pt").feature_spec()
    with pytest.raises(ModelLoadError, match="no config.json"):
        _extractor(tmp_path).feature_spec()


@pytest.mark.parametrize("error", ["read-only cache", "connection"])
def test_only_network_errors_mark_a_hub_model_offline(monkeypatch, error: str) -> None:
    """Review: any OSError of the hub lookup marked the model `offline` (which `w2v2ser run` skips with
    exit 0), also a PermissionError of a read-only Hugging Face cache: a setup error, to fix."""
    import huggingface_hub
    import requests
    from w2v2ser.extract import resolve_model

    raised = (PermissionError(13, "Permission denied", "/ro/hub/.locks") if error == "read-only cache"
              else requests.ConnectionError("Connection refused"))

    def download(*args, **kwargs):
        raise raised

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no probe of the network
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(ModelLoadError) as caught:
        resolve_model("nobody-w2v2ser/made-up-wav2vec2")
    assert str(raised) in str(caught.value)
    assert caught.value.offline is (error == "connection")


@pytest.mark.parametrize("where", ["config.json", "model.safetensors"])
@pytest.mark.parametrize("error", ["ConnectError", "ProxyError", "ReadTimeout", "RemoteProtocolError"])
def test_httpx_network_errors_of_the_hub_mark_a_hub_model_offline(monkeypatch, error: str, where: str) -> None:
    """huggingface_hub 1.0 and later use httpx, whose errors are no OSError (requests' were): a hub
    dropping the connection, a proxy refusing it or a download timing out escaped the lookup as a
    raw traceback instead of an offline model (which `w2v2ser run` skips with exit 0)."""
    import importlib.util

    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError
    from w2v2ser.extract import resolve_model

    httpx = pytest.importorskip("httpx2" if importlib.util.find_spec("httpx2") else "httpx")
    request = httpx.Request("GET", f"https://huggingface.co/nobody-w2v2ser/made-up-wav2vec2/resolve/main/{where}")
    raised = getattr(httpx, error)("Server disconnected without sending a response.", request=request)

    def download(model_id, filename, **kwargs):
        if filename == where:
            raise raised
        if filename == "config.json":
            return str(config)
        raise EntryNotFoundError(f"{filename} not found")

    config = Path(huggingface_hub.constants.HF_HUB_CACHE) / "w2v2ser-test-config.json"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no probe of the network
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(ModelLoadError) as caught:
        resolve_model("nobody-w2v2ser/made-up-wav2vec2")
    assert "Server disconnected" in str(caught.value) and caught.value.offline is True
