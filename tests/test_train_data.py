"""Stage 2 input paths: whole-partition arrays and streaming give the same frames, in the stored dtype."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from stage2_fixtures import build_store, ravdess_utterances
from w2v2ser.store import open_store
from w2v2ser.train import FeatureBatches, Item, LayerWeightedAverage, Source, build_normaliser, resolve_selection
from w2v2ser.train._dataset import read_frames
from w2v2ser.train._tfdata import block_shuffle, padded_dataset, split_batch


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = build_store(tmp_path_factory.mktemp("stores") / "rav.zarr",
                       utterances=ravdess_utterances(per_actor=3), layers=5, dim=4)
    return open_store(path)


class BatchedStore:
    """The store with a ``read_batch`` (the store format 2 API), counting calls."""

    def __init__(self, store):
        self._store, self.batch_calls, self.out_calls = store, 0, 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def read_batch(self, ids, feature, *, layers=None, out=None):
        self.batch_calls += 1
        if out is not None:  # read into the caller's arrays
            self.out_calls += 1
            return self._store.read_batch(ids, feature, layers=layers, out=out)
        return [self._store.read_utterance(i, feature, layers=layers) for i in ids]


def _batches(store, text, norm, *, fold=False, **kw):
    sel = resolve_selection(text, specs=store.features, alias="main")
    records = store.list_utterances()
    speakers = sorted({r.speaker for r in records})
    items = [Item(r.id, r.speaker, i % 7, float(r.duration)) for i, r in enumerate(records)]
    normaliser = build_normaliser(store, sel, norm, train_speakers=speakers, speakers=speakers)
    return FeatureBatches(items, [Source("main", store, sel, normaliser, fold=fold)], classes=list("abcdefg"),
                          batch_size=8, max_frames=30, **kw)


@pytest.mark.parametrize("text, norm, dtype", [("egemaps", "speaker", np.float32),
                                               ("wav2vec2:all", "global", np.float16),
                                               ("wav2vec2:2", "speaker", np.float16),
                                               ("spectrogram", "none", np.float32)])
def test_in_memory_and_streaming_give_the_same_frames(store, text, norm, dtype):
    mem = _batches(store, text, norm, cache="auto")
    stream = _batches(store, text, norm, cache="off")
    assert mem.in_memory and not stream.in_memory
    inputs, labels, lengths = mem.arrays()
    assert inputs["main"].dtype == dtype and inputs["main"].shape[1] == lengths.max() <= 30
    np.testing.assert_array_equal(labels, mem.labels)
    x, y = stream.load_batch(np.arange(len(stream.items)))
    assert x["main"].dtype == dtype
    np.testing.assert_array_equal(x["mask"], inputs["mask"])
    np.testing.assert_allclose(x["main"].astype(np.float32), inputs["main"].astype(np.float32),
                               rtol=1e-3 if dtype == np.float16 else 1e-6, atol=1e-3 if dtype == np.float16 else 1e-6)
    for k, it in enumerate(mem.items[:5]):  # and the same as the per-utterance reference path
        (ref,) = stream.load_item(it)
        np.testing.assert_allclose(inputs["main"][k, :lengths[k]].astype(np.float32), ref.astype(np.float32),
                                   rtol=1e-3, atol=1e-3)
        assert not inputs["main"][k, lengths[k]:].any()


def test_feature_batches_are_a_sequence_a_for_loop_can_walk(store):
    """Found by a trial: `for x, y in batches` ran past the last batch into a numpy ValueError
    (no __iter__, and no IndexError past the end), and batch_size=0 divided by zero."""
    from w2v2ser.train import ConfigError

    batches = _batches(store, "egemaps", "speaker", cache="off")
    walked = [y for _, y in batches]
    assert len(walked) == len(batches) and sum(len(y) for y in walked) == len(batches.items)
    np.testing.assert_array_equal(batches[-1][1], batches[len(batches) - 1][1])
    with pytest.raises(IndexError, match=f"batch {len(batches)} of"):
        batches[len(batches)]
    with pytest.raises(ConfigError, match="batch_size=0; expected a positive integer"):
        _batches(store, "egemaps", "speaker", cache="off").__class__(batches.items, batches.sources,
                                                                    classes=batches.classes, batch_size=0,
                                                                    max_frames=30)


def test_bad_arguments_of_the_stage2_api_raise_one_clear_error(store):
    """Found by an API trial: each of these ended in a numpy or Python error from deep inside, or a
    message that did not say what was wrong; each is now one error naming it (or simply works)."""
    from w2v2ser.store import StoreError
    from w2v2ser.train import DataError

    batches = _batches(store, "egemaps", "speaker", cache="off")
    named = [Item(it.id, it.speaker, batches.classes[it.label], it.duration) for it in batches.items]
    with pytest.raises(DataError, match=r"has label 'a'; expected an index into classes"):
        FeatureBatches(named, batches.sources, classes=batches.classes, batch_size=4, max_frames=30)
    # A selection's text and the store itself are taken where the resolved forms were expected.
    speakers = store.speakers()
    by_text = build_normaliser(store, "wav2vec2:2", "speaker", train_speakers=speakers, speakers=speakers)
    sel = resolve_selection("wav2vec2:2", specs=store, alias="main")
    resolved = build_normaliser(store, sel, "speaker", train_speakers=speakers, speakers=speakers)
    assert by_text.speaker_mean.keys() == resolved.speaker_mean.keys() == set(speakers)
    for speaker in speakers:
        np.testing.assert_array_equal(by_text.speaker_mean[speaker], resolved.speaker_mean[speaker])
        np.testing.assert_array_equal(by_text.speaker_std[speaker], resolved.speaker_std[speaker])
    # Statistics compare by value (the generated == asked numpy for an array's truth value).
    assert store.compose_statistics("egemaps") == store.compose_statistics("egemaps")
    assert store.compose_statistics("egemaps") != store.compose_statistics("egemaps", speakers=speakers[:1])
    with pytest.raises(StoreError, match=r"utterances=\[\] selects no frames"):
        store.compose_statistics("egemaps", utterances=[])
    uid = store.list_utterances()[0].id
    frames = store.num_frames(uid, "wav2vec2")
    strided = np.zeros((frames, 5, 8), np.float16)[:, :, ::2]
    with pytest.raises(StoreError, match=r", not C-contiguous; expected"):
        store.read_batch([uid], "wav2vec2", out=[strided])
    frozen = np.zeros((frames, 5, 4), np.float16)
    frozen.flags.writeable = False
    with pytest.raises(StoreError, match=r", read-only; expected"):
        store.read_batch([uid], "wav2vec2", out=[frozen])


def test_batched_reads_are_used_when_the_store_has_them(store):
    fake = BatchedStore(store)
    mem = _batches(fake, "egemaps", "speaker", cache="auto")
    mem.arrays()
    mem.arrays()  # read once per run
    assert fake.batch_calls == 1
    stream = _batches(fake, "egemaps", "speaker", cache="off", shuffle=True)
    n = sum(1 for _ in stream.iterate())
    assert fake.batch_calls == 1 + n == 1 + len(stream)


def test_a_batch_read_in_groups_is_the_same_batch(store, monkeypatch):
    """Batches are filled group by group (bounded reads beside the padded output): same frames."""
    import w2v2ser.train._dataset as dataset

    fake = BatchedStore(store)
    stream = _batches(fake, "wav2vec2:all", "speaker", cache="off")
    indices = np.arange(len(stream.items))
    whole, _ = stream.load_batch(indices)
    assert fake.batch_calls == 1
    monkeypatch.setattr(dataset, "READ_GROUP_MB", 1e-6)  # one utterance per read
    grouped, _ = stream.load_batch(indices)
    assert fake.batch_calls == 1 + len(indices)
    assert grouped.keys() == whole.keys()
    for key in whole:
        np.testing.assert_array_equal(grouped[key], whole[key])


def test_memory_dataset_is_static_and_reshuffles_each_epoch(store):
    mem = _batches(store, "egemaps", "speaker", cache="auto", shuffle=True, seed=3)
    ds = mem.as_tf_dataset()
    spec = ds.element_spec[0]["main"]
    assert spec.shape[1:] == mem.arrays()[0]["main"].shape[1:]  # frames and feature axes are static
    epochs = [np.concatenate([y.numpy() for _, y in ds]) for _ in range(2)]
    assert sorted(epochs[0].tolist()) == sorted(mem.labels.tolist())
    firsts = [np.concatenate([x["main"][:, 0, 0].numpy() for x, _ in ds]) for _ in range(2)]
    assert not np.array_equal(firsts[0], firsts[1])


@pytest.mark.parametrize("cache, bucket_waste", [("auto", None), ("auto", 0.0), ("off", None)])
def test_input_pipelines_have_no_autotuning_thread(store, cache, bucket_waste):
    """Keras drops the training iterator at every epoch; with tf.data autotuning on, that waits
    for the autotuning thread's next wake-up (seen as 7-18 s idle per epoch on a 10 GB store)."""
    batches = _batches(store, "wav2vec2:all", "speaker", cache=cache, shuffle=True, bucket_waste=bucket_waste)
    ds = batches.as_tf_dataset()
    assert ds.options().autotune.enabled is False
    assert sorted(np.concatenate([y.numpy() for _, y in ds]).tolist()) == sorted(batches.labels.tolist())


def test_length_buckets_cover_every_utterance_once():
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(2, 6, 60), rng.integers(90, 100, 4)])
    t = int(lengths.max())
    inputs = {"main": np.zeros((len(lengths), t, 3), np.float16),
              "mask": (np.arange(t)[None] < lengths[:, None]).astype(np.float32)}
    labels = np.arange(len(lengths), dtype=np.int32)
    ds = padded_dataset(inputs, labels, lengths, batch_size=8, shuffle=True, seed=0, bucket_waste=0.5)
    seen, widths = [], set()
    for x, y in ds:
        seen += y.numpy().tolist()
        widths.add(int(x["main"].shape[1]))
    assert sorted(seen) == labels.tolist() and len(widths) > 1 and min(widths) < 10
    plain = padded_dataset(inputs, labels, lengths, batch_size=8, shuffle=False, seed=0, bucket_waste=None)
    assert {int(x["main"].shape[1]) for x, _ in plain} == {t}


@pytest.mark.parametrize("n, block, buffer", [(100, 8, 4), (7, 32, 8), (64, 1, 1)])
def test_block_shuffle_is_a_bounded_permutation(n, block, buffer):
    order = block_shuffle(n, block, buffer, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(n))
    again = block_shuffle(n, block, buffer, np.random.default_rng(1))
    assert n < 8 * block or not np.array_equal(order, again)


@pytest.fixture(params=["xla", "ops"])
def layer_sum(request, monkeypatch):
    """Both forwards of the float16 layer average: XLA-compiled, and TensorFlow's ops where XLA is missing."""
    from w2v2ser.train import _layers

    if request.param == "xla":
        assert _layers._compiled_forward() is not None  # TensorFlow's wheels have XLA's CPU JIT
    else:
        monkeypatch.setattr(_layers, "_FORWARD", [None])
    return request.param


def test_layer_average_of_float16_frames_matches_float32(layer_sum):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 5, 4)).astype(np.float16)
    layer = LayerWeightedAverage()
    layer.build(x.shape)
    layer.alphas.assign(np.array([0.5, 1.0, 2.0, 0.0, 1.5], np.float32))
    half = keras.ops.convert_to_numpy(layer(keras.ops.convert_to_tensor(x)))
    full = keras.ops.convert_to_numpy(layer(keras.ops.convert_to_tensor(x.astype(np.float32))))
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("graph", [False, True])
def test_layer_average_gradient_of_float16_frames_matches_float32(graph, layer_sum):
    """The float16 path loops over layers with its own gradient; the weights learn the same."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 7, 5, 4)).astype(np.float16)
    upstream = tf.constant(rng.standard_normal((3, 7, 4)).astype(np.float32))
    layer = LayerWeightedAverage()
    layer.build(x.shape)
    layer.alphas.assign(np.array([0.5, 1.0, 2.0, 0.0, 1.5], np.float32))

    def grad(frames):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(frames) * upstream)
        return tape.gradient(loss, layer.alphas)

    grad = tf.function(grad) if graph else grad
    half = grad(tf.constant(x)).numpy()
    full = grad(tf.constant(x.astype(np.float32))).numpy()
    assert np.abs(full).max() > 1e-3
    np.testing.assert_allclose(half, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("graph", [False, True])
def test_layer_average_with_statistics_averages_the_normalised_frames(graph, layer_sum):
    """Frames as stored plus each utterance's mean and std: the output and the layer weights'
    gradient are those of the average of the normalised frames (the normalisation folded in)."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    x = (3 + 2 * rng.standard_normal((3, 7, 5, 4))).astype(np.float16)
    mean = rng.standard_normal((3, 5, 4)).astype(np.float32) + 3
    std = rng.uniform(0.5, 3.0, (3, 5, 4)).astype(np.float32)
    stats = np.stack([mean, std], axis=1)
    normalised = (x.astype(np.float32) - mean[:, None]) / std[:, None]
    upstream = tf.constant(rng.standard_normal((3, 7, 4)).astype(np.float32))
    layer = LayerWeightedAverage()
    layer.build(x.shape)
    layer.alphas.assign(np.array([0.5, 1.0, 2.0, 0.0, 1.5], np.float32))

    def run(*inputs):
        with tf.GradientTape() as tape:
            out = layer(*inputs)
            loss = tf.reduce_sum(out * upstream)
        return out, tape.gradient(loss, layer.alphas)

    run = tf.function(run) if graph else run
    folded, folded_grad = run(tf.constant(x), tf.constant(stats))
    plain, plain_grad = run(tf.constant(normalised))
    assert np.abs(plain_grad.numpy()).max() > 1e-2
    np.testing.assert_allclose(folded.numpy(), plain.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(folded_grad.numpy(), plain_grad.numpy(), rtol=1e-4, atol=1e-4)
    wide, wide_grad = run(tf.constant(x.astype(np.float32)), tf.constant(stats))  # float32 frames take stats too
    np.testing.assert_allclose(wide.numpy(), plain.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(wide_grad.numpy(), plain_grad.numpy(), rtol=1e-4, atol=1e-4)


def test_a_folded_branch_streams_frames_as_stored_with_their_statistics(store):
    """Source(fold=True): streamed batches carry the stored frames and each utterance's (mean, std);
    a model built for them predicts what the usual model predicts from normalised frames. In
    memory, the frames are normalised once at read, as before."""
    from w2v2ser.train import DenseHead, FusionHead, LSTMHead

    stream = _batches(store, "wav2vec2:all", "speaker", fold=True, cache="off")
    raw = _batches(store, "wav2vec2:all", "none", cache="off")
    usual = _batches(store, "wav2vec2:all", "speaker", cache="off")
    memory = _batches(store, "wav2vec2:all", "speaker", fold=True, cache="auto")
    assert stream.folded == ("main",) and memory.folded == () and usual.folded == ()
    idx = np.arange(len(stream.items))
    (x, _), (r, _), (u, _) = (b.load_batch(idx) for b in (stream, raw, usual))
    np.testing.assert_array_equal(x["main"], r["main"])
    # Uncropped utterances are read straight into the batch's rows, cropped ones read and copied.
    counted = BatchedStore(store)
    direct = _batches(counted, "wav2vec2:all", "speaker", fold=True, cache="off")
    stored = [store.num_frames(it.id, "wav2vec2") for it in direct.items]
    assert min(stored) <= direct.max_frames < max(stored)
    np.testing.assert_array_equal(direct.load_batch(idx)[0]["main"], r["main"])
    assert counted.out_calls == 1
    norm = stream.sources[0].normaliser
    for k, item in enumerate(stream.items):
        np.testing.assert_array_equal(x["main_stats"][k], np.stack(norm.moments(item.speaker)).astype(np.float32))
    assert "main_stats" not in u and "main_stats" not in memory.arrays()[0]
    np.testing.assert_array_equal(memory.arrays()[0]["main"], u["main"])
    ds_inputs, _ = next(iter(stream.as_tf_dataset()))
    assert ds_inputs["main_stats"].shape[1:] == (2, 5, 4)
    x = {k: v[:8] for k, v in x.items()}
    u = {k: v[:8] for k, v in u.items()}
    for head in (DenseHead, LSTMHead, FusionHead):  # every head takes a folded branch the same way
        shapes = {"main": ((5, 4), np.dtype(np.float16))}
        extra = {}
        if head is FusionHead:
            shapes["fusion"] = ((3,), np.dtype(np.float32))
            extra = {"fusion": np.random.default_rng(0).standard_normal((8, x["main"].shape[1], 3)).astype(np.float32)}
        folded_model = head(seed=0, dropout=0.0)._build(shapes, 7, folded=("main",))
        usual_model = head(seed=0, dropout=0.0)._build(shapes, 7)
        assert sorted(t.name for t in folded_model.inputs) == sorted(["main", "main_stats", *extra, "mask"])
        usual_model.set_weights(folded_model.get_weights())
        np.testing.assert_allclose(folded_model.predict_on_batch({**x, **extra}),
                                   usual_model.predict_on_batch({**u, **extra}), atol=2e-3)


def test_layer_average_forwards_agree_with_any_batch_shape(monkeypatch):
    """The compiled forward runs in a graph with unknown batch and frame counts (streamed batches),
    and differs from TensorFlow's ops only by rounding (fused multiply-adds)."""
    import tensorflow as tf

    from w2v2ser.train import _layers

    layer = LayerWeightedAverage()
    layer.build((None, None, 13, 24))
    layer.alphas.assign(np.linspace(0.1, 2.0, 13).astype(np.float32))
    call = tf.function(layer.call, input_signature=[tf.TensorSpec((None, None, 13, 24), tf.float16)])
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal((b, t, 13, 24)).astype(np.float16) for b, t in [(4, 9), (3, 17), (4, 9)]]
    compiled = [call(tf.constant(x)).numpy() for x in batches]
    monkeypatch.setattr(_layers, "_FORWARD", [None])
    ops = [tf.function(layer.call)(tf.constant(x)).numpy() for x in batches]
    for x, a, b in zip(batches, compiled, ops):
        assert a.shape == x.shape[:2] + (24,)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_one_memory_budget_for_the_whole_run(store):
    from w2v2ser.train._dataset import share_memory_budget

    parts = [_batches(store, "wav2vec2:all", "none", cache="auto") for _ in range(3)]
    one = parts[0].estimated_bytes()
    assert all(p.in_memory for p in parts)  # each fits the default budget alone
    budget_mb = 2.5 * one / 2**20  # two fit, three do not
    assert not share_memory_budget(parts, cache="auto", budget_mb=budget_mb)
    assert not any(p.in_memory for p in parts) and all(p.cache_bytes == 0 for p in parts)
    assert share_memory_budget(parts, cache="auto", budget_mb=3.5 * one / 2**20)
    assert not share_memory_budget(parts, cache="off", budget_mb=1e6)


def test_order_changes_every_epoch_even_with_the_global_seed_set():
    """Keras' own numpy input repeats one permutation per epoch once the global seed is set; ours must not."""
    keras.utils.set_random_seed(0)
    lengths = np.full(40, 3)
    inputs = {"main": np.zeros((40, 3, 2), np.float32), "mask": np.ones((40, 3), np.float32)}
    ds = padded_dataset(inputs, np.arange(40, dtype=np.int32), lengths, batch_size=8, shuffle=True, seed=0)
    orders = [tuple(int(v) for _, y in ds for v in y.numpy()) for _ in range(3)]
    assert len(set(orders)) == 3 and all(sorted(o) == list(range(40)) for o in orders)


def test_read_frames_into_given_arrays_with_or_without_a_batched_read(store):
    """read_frames(..., out=) fills the given arrays through the store's read_batch, or copies
    read_utterance's frames into them for a store that has no batched read."""

    class Plain:  # a store with read_utterance only
        def read_utterance(self, uid, feature, *, layers=None):
            return store.read_utterance(uid, feature, layers=layers)

    ids = [r.id for r in store.list_utterances()[:3]]
    want = [store.read_utterance(uid, "wav2vec2", layers=[1, 2]) for uid in ids]
    for source in (store, BatchedStore(store), Plain()):
        out = [np.zeros_like(w) for w in want]
        got = read_frames(source, ids, "wav2vec2", [1, 2], out=out)
        assert all(g is o for g, o in zip(got, out))
        for w, o in zip(want, out):
            np.testing.assert_array_equal(o, w)


def test_streaming_reads_ahead_at_most_the_byte_budget(store, monkeypatch):
    """With a tiny read-ahead budget one batch per worker is read ahead of the one being consumed
    (2 per worker within the budget); the batches (and their order) are those of the default."""
    import threading
    import time

    import w2v2ser.train._dataset as dataset

    class Counting(FeatureBatches):
        started = yielded = most = 0
        lock = threading.Lock()

        def load_batch(self, indices, **kw):
            with self.lock:
                type(self).started += 1
                type(self).most = max(type(self).most, type(self).started - type(self).yielded)
            return super().load_batch(indices, **kw)

    def run(**kw):
        Counting.started = Counting.yielded = Counting.most = 0
        b = _batches(store, "wav2vec2:all", "global", cache="off", workers=2, shuffle=True, seed=3)
        b.__class__ = Counting
        out = []
        for x, y in b.iterate():
            time.sleep(0.05)  # a slow step: the readers fill every slot ahead
            out.append((x["main"].copy(), y))
            Counting.yielded += 1
        return out, Counting.most

    free, most_free = run()
    monkeypatch.setattr(dataset, "STREAM_AHEAD_MB", 1e-6)
    bounded, most_bounded = run()
    assert most_bounded <= 3 < most_free  # the batch in hand + one per worker, against 2 per worker ahead
    assert len(bounded) == len(free) > 3
    for (a, ya), (b, yb) in zip(bounded, free):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype, blocks", [(np.float16, False), (np.float16, True), (np.float32, False)])
@pytest.mark.parametrize("source", ["in place", "reads", "aligned reads", "float32 reads", "read-only reads"])
def test_batch_normalisation_equals_the_per_utterance_arithmetic(dtype, blocks, source, monkeypatch):
    """The batched path (XLA-compiled TensorFlow for float16, one numpy buffer otherwise) gives
    exactly Normaliser.apply's values cast to the stored dtype, also across NORMALISE_MB steps and
    NORMALISE_CHUNK chunks, and leaves the padding at zero: normalising `out` in place, or from
    the reads (longer than the kept length; of the stored dtype, of float32 as pair averaging
    gives, or read-only, which TensorFlow cannot take without a copy)."""
    from w2v2ser.train import Normaliser
    from w2v2ser.train import _framenorm

    # 3 frames at a time (float32, or float16 one utterance at a time); or float16 in blocks of 3
    # utterances of 10 padded frames (the last block holds 1)
    monkeypatch.setattr(_framenorm, "NORMALISE_MB", (30 if blocks else 3) * 5 * 16 * 4 / 2**20)
    monkeypatch.setattr(_framenorm, "NORMALISE_BLOCK_MIN", 2)
    monkeypatch.setattr(_framenorm, "NORMALISE_CHUNK", 3)  # float16: whole chunks and a padded last one
    rng = np.random.default_rng(3)
    lengths = np.array([7, 1, 10, 4])
    out = np.zeros((4, 10, 5, 16), dtype=dtype)
    for k, n in enumerate(lengths):
        out[k, :n] = rng.standard_normal((n, 5, 16)) * 40 + 3
    raw = out.copy()
    norm = Normaliser("speaker", speaker_mean={s: rng.standard_normal((5, 16)) * 5 for s in "ab"},
                      speaker_std={s: rng.random((5, 16)) * 9 + 1e-3 for s in "ab"})
    speakers = ["a", "b", "b", "a"]
    if source == "in place":
        _framenorm._normalise_into(out, lengths, norm, speakers)
    else:
        reads = [np.concatenate([raw[k, :n], rng.standard_normal((2, 5, 16))]) for k, n in enumerate(lengths)]
        reads = [r.astype(np.float32 if source == "float32 reads" else dtype) for r in reads]
        if source == "aligned reads":  # handed to TensorFlow as they are
            aligned = [_framenorm.aligned_zeros(r.shape, r.dtype) for r in reads]
            for target, r in zip(aligned, reads):
                target[...] = r
            reads = aligned
        for r in reads:
            r.flags.writeable = source != "read-only reads"
        out = np.zeros_like(out)
        _framenorm._normalise_into(out, lengths, norm, speakers, frames=reads)
    for k, n in enumerate(lengths):
        np.testing.assert_array_equal(out[k, :n], norm.apply(raw[k, :n], speakers[k]).astype(dtype))
        assert not out[k, n:].any()


def test_float16_frames_reach_tensorflow_and_return_without_copies():
    """The float16 normalisation hands frames to TensorFlow and takes its result back as views
    (DLPack, memoryview): each copy cost more than the arithmetic. Frames TensorFlow cannot take
    as they are (not 64-byte aligned, where its kernels abort the process; read-only) are copied."""
    import tensorflow as tf

    from w2v2ser.train import _framenorm

    frames = _framenorm.aligned_zeros((2, 3, 4), np.float16)
    frames[...] = np.arange(24).reshape(2, 3, 4)
    view = _framenorm._tensor_view(frames)
    frames[0, 0, 0] = 99  # the tensor sees the array's own memory
    assert float(view[0, 0, 0]) == 99
    back = _framenorm._host_view(tf.identity(view))
    assert back.dtype == np.float16 and back.shape == (2, 3, 4) and not back.flags.writeable
    np.testing.assert_array_equal(back, frames)
    storage = _framenorm.aligned_zeros((25,), np.float16)
    unaligned = storage[1:].reshape(2, 3, 4)  # 2 bytes past the boundary
    locked = frames.copy()
    locked.flags.writeable = False
    for other in (unaligned, locked):
        tensor = _framenorm._tensor_view(other)
        expected = other.copy()
        if other.flags.writeable:
            other[0, 0, 0] = 7  # a copy: the tensor keeps the values it was given
        np.testing.assert_array_equal(tf.where(tensor > 0, tensor, 0).numpy(), np.where(expected > 0, expected, 0))


# ----------------------------------------------------------------------------- micro-batches
@pytest.mark.parametrize("n, parts", [(32, 4), (10, 4), (3, 4), (1, 2), (7, 1)])
def test_split_batch_weights_give_the_batch_mean(n, parts):
    """Keras averages the mean weighted loss of `parts` micro-batches: that must be the batch's mean."""
    losses = np.random.default_rng(n).random(n)
    split = split_batch(np.arange(n), parts)
    assert len(split) == parts
    assert sorted(i for idx, w in split for i, wi in zip(idx, w) if wi > 0) == list(range(n))
    accumulated = np.mean([np.sum(w * losses[idx]) / len(idx) for idx, w in split])
    np.testing.assert_allclose(accumulated, losses.mean(), rtol=1e-6)


@pytest.mark.parametrize("cache, bucket_waste", [("auto", None), ("auto", 0.0), ("off", None)])
def test_micro_batches_regroup_into_the_same_batches(store, cache, bucket_waste):
    """Every group of `accumulate` consecutive micro-batches is one batch of the plain pipeline."""
    kw = dict(cache=cache, shuffle=True, seed=5, bucket_waste=bucket_waste)
    whole = _batches(store, "wav2vec2:all", "speaker", **kw)
    whole.batch_size = 10  # 72 utterances: a last batch of 2, smaller than the 4 micro-batches
    micro = _batches(store, "wav2vec2:all", "speaker", accumulate=4, **kw)
    micro.batch_size = 10
    batches = [(x["main"].numpy(), y.numpy()) for x, y in whole.as_tf_dataset()]
    parts = list(micro.as_tf_dataset())
    assert len(parts) == 4 * len(batches) and micro.as_tf_dataset().cardinality() == len(parts)
    for (x, y), group in zip(batches, [parts[i:i + 4] for i in range(0, len(parts), 4)]):
        real = [(p[0]["main"].numpy()[p[2].numpy() > 0], p[1].numpy()[p[2].numpy() > 0]) for p in group]
        t = x.shape[1]
        frames = np.concatenate([np.pad(f, [(0, 0), (0, t - f.shape[1])] + [(0, 0)] * (f.ndim - 2)) for f, _ in real])
        np.testing.assert_array_equal(frames, x)
        np.testing.assert_array_equal(np.concatenate([labels for _, labels in real]), y)
        # each micro-batch's mean weight is its share of the batch, times 4
        np.testing.assert_allclose(sum(float(p[2].numpy().mean()) for p in group), 4.0, rtol=1e-6)


@pytest.mark.parametrize("cache", ["auto", "off"])
def test_training_on_micro_batches_takes_the_same_steps(store, cache):
    """Gradient accumulation over weighted micro-batches is the whole batch's step (no dropout:
    nothing else random), including the epochs' smaller last batches."""
    from w2v2ser.train import DenseHead, get_recipe

    recipe = get_recipe("official").with_overrides({"max_epochs": 4})  # its clipvalue clips the step's mean
    weights = []
    for accumulate in (1, 4):
        train = _batches(store, "wav2vec2:all", "speaker", cache=cache, shuffle=True, seed=1, accumulate=accumulate)
        val = _batches(store, "wav2vec2:all", "speaker", cache=cache)
        train.batch_size = 10
        head = DenseHead(units=8, dropout=0.0, seed=0, recipe=recipe, classes=list("abcdefg"))
        head.fit(train, validation_data=val)
        weights.append([w.numpy() for w in head.model_.weights])
        assert head.history_["epochs"] == 4
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)


def test_batch_buffers_recycle_only_memory_nothing_refers_to():
    """A batch's memory is handed out again once no array, view or TensorFlow tensor refers to it;
    a recycled array is zero past each row's length (the caller fills the rest)."""
    import tensorflow as tf

    from w2v2ser.train._buffers import RECYCLE_MIN_BYTES, TENSOR_ALIGNMENT, BatchBuffers

    pool = BatchBuffers(limit=3)
    rows = RECYCLE_MIN_BYTES // (64 * 13 * 768 * 2) + 1  # just large enough to be recycled
    shape = (rows, 64, 13, 768)
    first = pool.padded(shape, np.float16, [64] * rows)
    assert first.ctypes.data % TENSOR_ALIGNMENT == 0 and not first.any()
    first[...] = 7
    address = first.ctypes.data
    view = first[1:3, :5]  # a view keeps the memory in use
    del first
    second = pool.padded(shape, np.float16, [64] * rows)
    assert second.ctypes.data != address and pool.recycled == 0
    del view
    lengths = [10, 64] + [0] * (rows - 2)
    third = pool.padded(shape, np.float16, lengths)  # the first batch's memory again
    assert third.ctypes.data == address and pool.recycled == 1
    assert (third[0, :10] == 7).all() and not third[0, 10:].any() and (third[1] == 7).all()
    assert not third[2:].any()
    third[...] = 5
    tensor = tf.experimental.dlpack.from_dlpack(third.__dlpack__())  # TensorFlow aliases it
    del third
    fourth = pool.padded(shape, np.float16, [64] * rows)
    assert fourth.ctypes.data != address
    fourth[...] = 1
    assert float(tf.reduce_min(tensor)) == float(tf.reduce_max(tensor)) == 5.0  # untouched
    del tensor, fourth, second
    pool.padded(shape, np.float16, [64] * rows)
    assert pool.recycled == 2


@pytest.mark.parametrize("fold", [False, True])
def test_streamed_batches_recycled_through_tensorflow_are_the_batches_read(store, monkeypatch, fold):
    """Streamed batches recycle the memory of earlier ones (forced here for small batches), and
    what reaches TensorFlow through the prefetching tf.data pipeline, epoch after epoch, is the
    batch that was read: no batch is overwritten while TensorFlow holds it."""
    import w2v2ser.train._buffers as buffers

    monkeypatch.setattr(buffers, "RECYCLE_MIN_BYTES", 0)
    made = []

    class Recorded(buffers.BatchBuffers):
        def __init__(self, limit):
            super().__init__(limit)
            made.append(self)

    import w2v2ser.train._dataset as dataset

    monkeypatch.setattr(dataset, "BatchBuffers", Recorded)
    b = _batches(store, "wav2vec2:all", "speaker", fold=fold, cache="off", workers=2, shuffle=True, seed=5)
    ds = b.as_tf_dataset()
    reference = _batches(store, "wav2vec2:all", "speaker", fold=fold, cache="off", shuffle=True, seed=5)
    for _ in range(2):
        order = reference.new_epoch_order()
        chunks = [order[i * b.batch_size:(i + 1) * b.batch_size] for i in range(len(b))]
        got = [(x["main"].numpy(), y.numpy()) for x, y in ds]
        assert len(got) == len(chunks) > 3
        for (x, y), chunk in zip(got, chunks):
            want, want_y = reference.load_batch(chunk)
            np.testing.assert_array_equal(y, want_y)
            np.testing.assert_array_equal(x, want["main"])
    assert made and sum(p.recycled for p in made) > 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_pass_holds_no_batch_memory_once_its_last_batch_is_out(store, monkeypatch, workers):
    """Keras takes the known number of batches and leaves the generator suspended (during
    validation): by then it keeps neither a batch nor recycled memory."""
    import gc
    import itertools
    import weakref

    import w2v2ser.train._buffers as buffers

    monkeypatch.setattr(buffers, "RECYCLE_MIN_BYTES", 0)
    b = _batches(store, "wav2vec2:all", "speaker", cache="off", workers=workers, shuffle=True, seed=1)
    passing = b.iterate()
    memory = [weakref.ref(x["main"].base) for x, _ in itertools.islice(passing, len(b))]
    gc.collect()
    assert len(memory) == len(b) > 3 and not [m for m in memory if m() is not None]
    passing.close()


def test_padded_dataset_holds_one_copy_of_the_arrays(tmp_path):
    """An in-memory partition's dataset holds one copy of its arrays: Dataset.from_tensors kept two
    for the dataset's lifetime (a 935 MB training partition held 2.3 GB more), so in-memory training
    took 2-3x its cache_budget_mb. Measured in a fresh process, RSS after the numpy arrays are gone."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import gc, numpy as np
        from w2v2ser.train._tfdata import padded_dataset
        def rss():
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) * 1024
        import tensorflow as tf
        tf.constant(1.0)  # TensorFlow's own memory first
        n, t, d = 2000, 100, 384
        inputs = {"main": np.ones((n, t, d), np.float32), "mask": np.ones((n, t), np.float32)}
        before = rss()
        size = sum(v.nbytes for v in inputs.values())
        ds = padded_dataset(inputs, np.zeros(n, np.int32), np.full(n, t), batch_size=32, shuffle=True, seed=0)
        del inputs
        gc.collect()
        for _ in ds.take(3):
            pass
        print((rss() - before + size) / size)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    copies = float(done.stdout.split()[-1])
    assert copies < 1.5, f"the dataset holds {copies:.2f} copies of the arrays"
