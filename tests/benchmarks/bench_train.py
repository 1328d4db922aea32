"""Stage 2 epoch time and peak memory: Dense head on ``wav2vec2:all`` streaming from the store.

Two synthetic RAVDESS-shaped stores (24 actors, RAVDESS labels, 2-5 s utterances, wav2vec2
float16 [T, 13, 768] at 50 frames/s) are generated once through ``StoreWriter`` into a cache
folder outside the repo and reused: the full size (default 10,000 audio seconds ~ 10 GB, RAVDESS)
and a quarter of it. Each size is trained in a FRESH subprocess (so ru_maxrss is that size's
peak) with the train package's public API (``ExperimentConfig``, ``plan_runs``, ``train_run``;
protocol ravdess, recipe paper, speaker normalisation, one seed, ``--epochs`` epochs without early
stopping). Reported per size: epoch seconds, the library's own input/compute split, and an
input-only pass over the training partition (``FeatureBatches.iterate``, same readers) timed in
the same process right after training, so input share = input-only pass / epoch.

    python3 tests/benchmarks/bench_train.py --quick          # tiny stores, < 60 s
    python3 tests/benchmarks/bench_train.py                  # 10,000 s and 2,500 s stores

``--baseline-code DIR`` (another w2v2ser source tree, e.g. ``git archive`` of an older commit)
also trains each size with that code, right after this code's run of the same size, in the base
interpreter with DIR on its path: memory and speed side by side in one run. Both codes must read
the cached stores: code older than store format 3 (CRC-32C) refuses the stores this code
generates, so generate the cache with the older code first (its own bench_train.py, same --cache).

``--small STORE --baseline-code DIR`` instead trains eGeMAPS and the spectrogram of STORE with
each code, fresh processes alternating, ``--reps`` runs each (median epoch seconds per code).

``--input-only REPS --baseline-code DIR`` times only the input pass (fresh processes, TensorFlow
loaded, one warm-up pass first), alternating the two codes REPS times on the full-size store:

    python3 tests/benchmarks/bench_train.py --seconds 2500 --cache-mode off --input-only 3 --baseline-code DIR

``--cold`` evicts the store's page cache before each timed pass. Up to e1b254f, ``read_batch``
read features larger than the available memory through tensorstore; ``--baseline-code`` with a
copy of e1b254f (and ``--cache-mode off``) compares that path with today's, zarrs for every feature:

    python3 tests/benchmarks/bench_train.py --seconds 10000 --cache-mode off --input-only 3 --cold --baseline-code DIR

The last printed line is the headline (peak RSS ratio full/quarter, input share).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
BASELINE_PYTHON: list[str | None] = [None]  # --baseline-python
DEFAULT_CACHE = Path(os.environ.get("W2V2SER_BENCH_CACHE", "/work/bench_cache"))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="stores of 360 and 90 audio s, 2 epochs")
    p.add_argument("--seconds", type=float, default=10000.0, help="audio seconds of the full-size store")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="folder of the generated stores (reused)")
    p.add_argument("--out", default=None, help="results folder (default tests/benchmarks/results; with --quick a "
                                               "new temporary folder)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-input", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-small", nargs=2, default=None, metavar=("STORE", "FEATURE"), help=argparse.SUPPRESS)
    p.add_argument("--input-only", type=int, default=0, metavar="REPS",
                   help="instead: only the input pass on the full-size store, REPS fresh processes per code, "
                        "alternating with --baseline-code")
    p.add_argument("--rayon-threads", type=int, default=None, metavar="N",
                   help="--input-only: compare this code with its own zarrs thread pool and with RAYON_NUM_THREADS=N")
    p.add_argument("--features", default="wav2vec2:all",
                   help="--input-only: the selection read (e.g. wav2vec2:6 for one layer)")
    p.add_argument("--cold", action="store_true",
                   help="--input-only: evict the store's page cache before each timed pass")
    p.add_argument("--baseline-code", default=None, metavar="DIR",
                   help="source tree of another w2v2ser, trained on each size right after this code")
    p.add_argument("--baseline-python", default=None, metavar="PYTHON",
                   help="interpreter of --baseline-code's children, with the dependencies but no installed w2v2ser "
                        "(default: the base interpreter)")
    p.add_argument("--gen-workers", type=int, default=2, help="processes generating a store")
    p.add_argument("--small", default=None, metavar="STORE",
                   help="instead: eGeMAPS and spectrogram of this (RAVDESS) store, w2v2ser epoch vs model.fit(numpy)")
    p.add_argument("--reps", type=int, default=2, help="--small: repetitions of each mode (interleaved)")
    p.add_argument("--cache-mode", default="auto", choices=["auto", "off"],
                   help="scaling: the stores' cache setting (off = always stream)")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.epochs = 360.0, 2
    args.out = _common.quick_out(args.out, args.quick, "bench_train")
    return args


# ------------------------------------------------------------------------------ store generation
def plan_utterances(seconds: float):
    """RAVDESS-like manifest with `seconds` of audio: durations 2-5 s, 24 actors, all emotions."""
    import numpy as np

    from w2v2ser.store import Utterance

    rng = np.random.default_rng(0)
    utts, durations, total, i = [], [], 0.0, 0
    while total < seconds:
        d = float(rng.uniform(2.0, 5.0))
        actor = i % 24 + 1
        # each round of the 24 actors covers every emotion (so --quick's 26 utterances have more than one)
        emotion = EMOTIONS[(i // 24 + i % 24) % len(EMOTIONS)]
        utts.append(Utterance(id=f"syn-{i:06d}", path=f"/synthetic/{i}.flac", speaker=f"Actor_{actor:02d}",
                              label=emotion, corpus="ravdess", gender="male" if actor % 2 else "female"))
        durations.append(d)
        total += d
        i += 1
    return utts, durations


def _write_part(path: str, part: int, unit, positions: list, frames: list, labels: list) -> None:
    import numpy as np

    from w2v2ser.store import StoreWriter

    rng = np.random.default_rng(100 + part)
    pool = rng.standard_normal((800, 13, 768), dtype=np.float32).astype(np.float16)
    class_shift = rng.standard_normal((len(EMOTIONS), 13, 768), dtype=np.float32).astype(np.float16) * 0.5
    writer = StoreWriter(path, journal=f"gen-{part}")
    # One work unit per process, planned by the parent: only the planning process grows arrays
    # (write_utterance does, so it must not run in several processes at once).
    with writer.open_unit(unit) as unit_writer:
        for row, k in zip(unit.rows, positions):
            t = frames[k]
            start = int(rng.integers(0, 800 - t))
            x = pool[start:start + t] + class_shift[labels[k]]
            unit_writer.add(row, {"wav2vec2": x}, audio_sha256="0" * 64, duration=t / 50.0)
    writer.close()


def ensure_store(cache: Path, seconds: float, workers: int) -> Path:
    """Generate (once) a synthetic wav2vec2 store of `seconds` audio seconds; return its path."""
    from multiprocessing import get_context

    from w2v2ser.store import FeatureSpec, StoreWriter, open_store

    path = cache / f"train_store_{int(seconds)}s.zarr"
    try:
        if open_store(path).complete:
            return path
    except Exception:  # noqa: BLE001 - missing or unfinished: (re)generate
        shutil.rmtree(path, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    utts, durations = plan_utterances(seconds)
    spec = FeatureSpec(name="wav2vec2", dim=768, layers=13, frame_rate=49.95, dtype="float16",
                       config={"synthetic": "bench_train"})
    frames = [int(d * 50) for d in durations]
    t0 = time.perf_counter()
    writer = StoreWriter(path)
    rows = writer.plan(utts, num_samples=[int(d * 16000) for d in durations], features=[spec],
                       capacities={"wav2vec2": frames})
    labels = [EMOTIONS.index(u.label) for u in utts]
    ctx = get_context("spawn")
    positions = [list(range(k, len(rows), workers)) for k in range(workers)]
    units = writer.plan_units([[rows[i] for i in pos] for pos in positions], ["wav2vec2"])
    procs = [ctx.Process(target=_write_part, args=(str(path), k, units[k], positions[k], frames, labels))
             for k in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"store generation worker failed ({p.exitcode})")
    writer.finalize()
    print(f"generated {path} ({len(utts)} utterances, {sum(durations):.0f} s) in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return path


# ------------------------------------------------------------------------------ child: one size
def _train_peak(run: dict) -> float:
    """Training's peak RSS (MB); results of older code lack it and give the process's final peak."""
    return run.get("peak_rss_train_mb", run["peak_rss_mb"])


def child(store_path: str, epochs: int, cache_mode: str = "auto") -> None:
    _common.bootstrap_w2v2ser()

    from w2v2ser.train import ExperimentConfig, plan_runs, train_run

    rss0 = _common.peak_rss_mb()
    config = ExperimentConfig(stores={"main": store_path}, features="wav2vec2:all", head="dense", norm="speaker",
                              protocol="ravdess", recipe="paper", seeds=1, deterministic=False, cache=cache_mode,
                              recipe_overrides={"max_epochs": epochs, "patience": epochs + 1})
    spec = plan_runs(config)[0]
    out = Path(tempfile.mkdtemp(prefix="w2v2ser-bench-train-"))
    t0 = time.perf_counter()
    result = train_run(config, spec, out=out)
    run_wall = time.perf_counter() - t0
    rss_train = _common.peak_rss_mb()  # training's own peak, before the input-only pass adds its batches
    history = json.loads((Path(result.path) / "history.json").read_text())
    metrics = result.metrics

    # Input-only pass over the same training partition with the same readers (no model).
    input_pass, nbatches, read_s, items = _input_pass(store_path, config, spec)
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({
        "store": store_path, "utterances_train": len(items), "batches": nbatches,
        "epochs": history["epochs"], "epoch_seconds": history["epoch_seconds"],
        "input_seconds_threads": history["input_seconds"], "compute_seconds": history["compute_seconds"],
        "input_only_pass_seconds": input_pass, "train_run_wall_s": run_wall,
        "cache_used": bool(metrics.get("cached_in_memory")), "partition_read_seconds": read_s,
        "peak_rss_mb": _common.peak_rss_mb(), "peak_rss_train_mb": rss_train, "rss_before_mb": rss0,
        "uar": result.uar, "load_average": _common.load_average(),
        "w2v2ser_code": str(Path(sys.modules["w2v2ser.train"].__file__).resolve().parents[1]),
    }))


def _input_pass(store_path: str, config, spec) -> tuple[float, int, float, list]:
    """Seconds of one pass over the training batches with the training's readers, no model."""
    from w2v2ser.store import open_store
    from w2v2ser.train import FeatureBatches, Item, Source, build_normaliser, get_protocol, resolve_selection

    store = open_store(store_path)
    sel = resolve_selection(config.features, specs=store.features, alias="main")
    protocol = get_protocol(config.protocol)
    records = [r for r in store.list_utterances() if r.speaker in set(spec.train)]
    norm = build_normaliser(store, sel, config.norm, train_speakers=spec.train,
                            speakers=sorted(set(spec.train) | set(spec.validation) | set(spec.test)))
    items = [Item(r.id, r.speaker, 0, float(r.duration)) for r in records]
    source = Source("main", store, sel, norm)
    try:  # as train_run's sources: streamed float16 layers normalised in the model (code from 2026-12-05 on)
        from w2v2ser.train._dataset import foldable
        source.fold = foldable(sel, source.dtype, norm)
    except ImportError:
        pass
    batches = FeatureBatches(items, [source], classes=protocol.classes,
                             batch_size=config.resolved_recipe().batch_size, max_frames=protocol.max_frames,
                             shuffle=True, cache=config.cache, cache_budget_mb=config.cache_budget_mb,
                             workers=config.workers)
    t0 = time.perf_counter()
    if batches.in_memory:  # one read of the partition, then one pass of the tf.data pipeline
        batches.arrays()
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        nbatches = sum(1 for _ in batches.as_tf_dataset())
    else:
        read_s = 0.0
        nbatches = sum(1 for _ in batches.iterate())
    return time.perf_counter() - t0, nbatches, read_s, items


def input_child(store_path: str, cache_mode: str, *, cold: bool = False, features: str = "wav2vec2:all") -> None:
    """--input-only child: TensorFlow loaded (as in training), one warm-up pass, then one timed pass
    (after evicting the store's page cache when `cold`)."""
    _common.bootstrap_w2v2ser()
    import tensorflow  # noqa: F401 - training processes have it loaded; the first pass must not pay its import

    from w2v2ser.train import ExperimentConfig, plan_runs

    config = ExperimentConfig(stores={"main": store_path}, features=features, head="dense", norm="speaker",
                              protocol="ravdess", recipe="paper", seeds=1, cache=cache_mode)
    spec = plan_runs(config)[0]
    _input_pass(store_path, config, spec)
    if cold:
        _common.evict_page_cache(store_path)
    seconds, nbatches, _, items = _input_pass(store_path, config, spec)
    print(json.dumps({"input_only_pass_seconds": seconds, "batches": nbatches, "utterances_train": len(items),
                      "peak_rss_mb": _common.peak_rss_mb(),
                      "w2v2ser_code": str(Path(sys.modules["w2v2ser.train"].__file__).resolve().parents[1])}))


def input_only(args: argparse.Namespace) -> None:
    """This code and --baseline-code alternately, --input-only times each, on the full-size store."""
    import numpy as np

    how = _common.bootstrap_w2v2ser()
    store = ensure_store(Path(args.cache), args.seconds, args.gen_workers)
    # name -> (code, extra child arguments, RAYON_NUM_THREADS of the child: None = the code's own choice)
    if args.rayon_threads:
        codes = {"this code": (None, [], None), f"RAYON_NUM_THREADS={args.rayon_threads}": (None, [], args.rayon_threads)}
    else:
        codes = {"this code": (None, [], None), "baseline code": (args.baseline_code, [], None)}
    times: dict[str, list[float]] = {name: [] for name, (code, *_) in codes.items() if name != "baseline code" or code}
    for rep in range(args.input_only):
        for name in times:
            code, extra, rayon = codes[name]
            env, exe = _child_env(code)
            # This process imported the store, which set RAYON_NUM_THREADS: each child chooses its own.
            env.pop("RAYON_NUM_THREADS", None)
            if rayon is not None:
                env["RAYON_NUM_THREADS"] = str(rayon)
            print(f"input-only pass, {name}, repetition {rep + 1} ...", flush=True)
            cmd = [exe, __file__, "--child-input", str(store), "--cache-mode", args.cache_mode, "--features",
                   args.features, *extra]
            times[name].append(_run_child(cmd + (["--cold"] if args.cold else []), env, name)["input_only_pass_seconds"])
    rows = [[name, len(t), float(np.median(t)), float(np.min(t)), float(np.max(t))] for name, t in times.items()]
    table = _common.format_table(["code", "passes", "median s", "min s", "max s"], rows)
    ratios = ({"input_pass_vs_baseline_median": rows[0][2] / rows[1][2]} if len(rows) == 2 else {})
    payload = {"benchmark": "bench_train_input", "command": _common.command_line(),
               "machine": _common.machine_info(["numpy", "zarr", "zarrs", "tensorstore"]), "store": str(store),
               "seconds": times, "baseline_code": args.baseline_code, "cold": args.cold, "ratios": ratios, "w2v2ser": how}
    first, second = list(times)[0], list(times)[-1]
    headline = (f"headline: input-only pass{' (cold)' if args.cold else ''}, {first} / {second} (median of "
                f"{args.input_only}) = {ratios['input_pass_vs_baseline_median']:.2f}" if ratios
                else "headline: no baseline given")
    print()
    print(table)
    notes = ["each pass: a fresh process with TensorFlow loaded, one warm-up pass, then the timed pass over the "
             f"training partition of the first fold ({args.features}, speaker normalisation, streaming when "
             "--cache-mode off); the two codes (or read_batch paths) alternate"]
    if args.cold:
        notes.append("--cold: the store's page cache evicted (posix_fadvise DONTNEED) right before each timed pass")
    path = _common.write_results("bench_train_input", payload, table, out=args.out, headline=headline, notes=notes)
    print(f"results: {path}")
    print(headline)



# ------------------------------------------------------------------------------ small selections
def _epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._t0)

    return EpochTimer()


def small_selections(args: argparse.Namespace) -> None:
    """w2v2ser's stage 2 epoch vs the same Keras model on the same normalised arrays via model.fit(numpy)."""
    how = _common.bootstrap_w2v2ser()
    import keras
    import numpy as np
    import tensorflow as tf

    from bench_fidelity import pad_arrays, plain_dense_model
    from w2v2ser.train import partition_arrays, plan_runs

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    epochs = args.epochs
    rows, runs = [], {}
    for feature in _small_features(args.small):
        config = _small_config(args.small, feature, epochs)
        spec = plan_runs(config)[0]
        t0 = time.perf_counter()
        parts = partition_arrays(config, spec)
        arrays_s = time.perf_counter() - t0
        (xtr, ytr, _), (xva, yva, _) = parts["train"], parts["validation"]
        t = max(len(a) for a in xtr + xva)
        train_np, val_np = pad_arrays(xtr, t), pad_arrays(xva, t)
        times: dict[str, list[float]] = {"w2v2ser": [], "model.fit(numpy)": []}
        first: dict[str, list[float]] = {"w2v2ser": [], "model.fit(numpy)": []}
        for rep in range(args.reps):
            order = ("w2v2ser", "model.fit(numpy)") if rep % 2 == 0 else ("model.fit(numpy)", "w2v2ser")
            for mode in order:
                keras.backend.clear_session()
                keras.utils.set_random_seed(rep)
                if mode == "w2v2ser":
                    secs = _train_epoch_seconds(config, spec)
                else:
                    model = plain_dense_model(xtr[0].shape[1:], int(max(ytr)) + 1)
                    timer = _epoch_timer()
                    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=epochs + 1,
                                                         restore_best_weights=True)
                    model.fit(train_np, np.asarray(ytr), batch_size=32, epochs=epochs, verbose=0,
                              validation_data=(val_np, np.asarray(yva)), callbacks=[timer, stop])
                    secs = timer.seconds
                first[mode].append(secs[0])
                times[mode] += secs[1:]  # epoch 1 also traces the step
        ours, plain = float(np.mean(times["w2v2ser"])), float(np.mean(times["model.fit(numpy)"]))
        runs[feature] = {"epoch_seconds": times, "first_epoch_seconds": first, "partition_arrays_seconds": arrays_s,
                         "frames": t, "train_utterances": len(xtr), "ratio": ours / plain}
        rows.append([feature, len(xtr), t, ours, plain, ours / plain, float(np.mean(first["w2v2ser"])),
                     float(np.mean(first["model.fit(numpy)"]))])
        print(f"{feature}: w2v2ser {ours:.2f} s/epoch, model.fit(numpy) {plain:.2f} s/epoch, ratio {ours / plain:.2f}",
              flush=True)
    table = _common.format_table(["selection", "train utts", "frames", "w2v2ser epoch s", "model.fit(numpy) epoch s",
                                  "ratio", "w2v2ser 1st epoch s", "numpy 1st epoch s"], rows)
    payload = {"benchmark": "bench_train_small", "command": _common.command_line(),
               "machine": _common.machine_info(["numpy", "tensorflow", "keras"]),
               "config": {"store": args.small, "epochs": epochs, "reps": args.reps, "head": "dense",
                          "norm": "speaker", "recipe": "paper", "threads": 1, "w2v2ser": how}, "runs": runs}
    notes = ["epoch s = mean over epochs 2..N of every repetition (epoch 1 also traces); each epoch includes "
             "the validation pass; modes interleaved, order alternating per repetition",
             "w2v2ser = train_run (whole stage 2 path: store read, normalisation, tf.data, DenseHead); "
             "model.fit(numpy) = the same layers fed partition_arrays' frames padded once"]
    headline = "headline: w2v2ser epoch / model.fit(numpy) epoch = " + ", ".join(
        f"{f} {r['ratio']:.2f}" for f, r in runs.items()) + " (target <= 1.1)"
    print()
    print(table)
    path = _common.write_results("bench_train_small", payload, table, out=args.out, headline=headline, notes=notes)
    print(f"results: {path}")
    print(headline)


def _small_features(store: str) -> list[str]:
    """eGeMAPS and the spectrogram, those of them the store holds (checked before anything is timed)."""
    _common.bootstrap_w2v2ser()
    from w2v2ser.store import open_store

    held = open_store(store).features
    features = [f for f in ("egemaps", "spectrogram") if f in held]
    if not features:
        print(f"--small {store}: the store holds neither egemaps nor spectrogram (it holds {sorted(held)})",
              file=sys.stderr)
        raise SystemExit(2)
    for feature in sorted({"egemaps", "spectrogram"} - set(features)):
        print(f"--small: store {store} holds no {feature}; measuring {', '.join(features)} only", flush=True)
    return features


def _small_config(store: str, feature: str, epochs: int):
    """The --small experiment: paper recipe on `feature`; patience > epochs, so every run trains
    exactly `epochs` epochs, each with its validation pass."""
    from w2v2ser.train import ExperimentConfig

    return ExperimentConfig(stores=store, features=feature, recipe="paper", seeds=1,
                            recipe_overrides={"max_epochs": epochs, "patience": epochs + 1})


def _train_epoch_seconds(config, spec) -> list[float]:
    """Epoch seconds of one train_run (whole stage 2 path) into a temporary folder."""
    from w2v2ser.train import train_run

    out = Path(tempfile.mkdtemp(prefix="w2v2ser-bench-small-"))
    try:
        res = train_run(config, spec, out=out)
        return json.loads((Path(res.path) / "history.json").read_text())["epoch_seconds"]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def small_child(store: str, feature: str, epochs: int) -> None:
    """--small --baseline-code child: one paper-recipe train_run of `feature`, default threads."""
    _common.bootstrap_w2v2ser()
    from w2v2ser.train import plan_runs

    config = _small_config(store, feature, epochs)
    secs = _train_epoch_seconds(config, plan_runs(config)[0])
    print(json.dumps({"epoch_seconds": secs, "load_average": _common.load_average(),
                      "w2v2ser_code": str(Path(sys.modules["w2v2ser.train"].__file__).resolve().parents[1])}))


def small_codes(args: argparse.Namespace) -> None:
    """--small with --baseline-code: w2v2ser epochs of this code vs the baseline code, fresh
    processes alternating, on eGeMAPS and the spectrogram of the given store."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    codes = {"this code": None, "baseline code": args.baseline_code}
    runs: dict[str, dict[str, list]] = {}
    trees: dict[str, str] = {}  # the source tree each code's children imported w2v2ser from
    rows = []
    for feature in _small_features(args.small):
        per_code: dict[str, list[float]] = {name: [] for name in codes}
        epochs: dict[str, list[list[float]]] = {name: [] for name in codes}
        for rep in range(args.reps):
            for name in (list(codes) if rep % 2 == 0 else list(codes)[::-1]):
                env, exe = _child_env(codes[name])
                print(f"{feature}, {name}, repetition {rep + 1} ...", flush=True)
                cmd = [exe, __file__, "--child-small", args.small, feature, "--epochs", str(args.epochs)]
                child = _run_child(cmd, env, name)
                secs = child["epoch_seconds"]
                trees.setdefault(name, child["w2v2ser_code"])
                epochs[name].append(secs)
                per_code[name].append(float(np.mean(secs[1:])))  # epoch 1 also traces the step
        med = {name: float(np.median(v)) for name, v in per_code.items()}
        test = mannwhitneyu(per_code["this code"], per_code["baseline code"], alternative="two-sided")
        runs[feature] = {"mean_epoch_seconds_per_run": per_code, "epoch_seconds": epochs,
                         "ratio_of_medians": med["this code"] / med["baseline code"],
                         "mann_whitney_p": float(test.pvalue)}
        rows.append([feature, args.reps, med["this code"], med["baseline code"], runs[feature]["ratio_of_medians"],
                     float(test.pvalue)])
    table = _common.format_table(["selection", "runs per code", "this code: median epoch s",
                                  "baseline: median epoch s", "ratio", "Mann-Whitney p"], rows)
    payload = {"benchmark": "bench_train_small_codes", "command": _common.command_line(),
               "machine": _common.machine_info(["numpy", "tensorflow", "keras"]),
               "config": {"store": args.small, "epochs": args.epochs, "reps": args.reps, "recipe": "paper",
                          "baseline_code": args.baseline_code, "imported_from": trees}, "runs": runs}
    notes = ["each run: a fresh process, train_run of the paper recipe (Dense head, speaker norm, in memory), "
             "TensorFlow's default threads; its epoch s = mean over epochs 2..N (epoch 1 also traces); "
             "the two codes alternate, order swapped every repetition",
             "Mann-Whitney p: two-sided U test of the per-run means of the two codes"]
    headline = "headline: epoch, this code / baseline code (median of runs) = " + ", ".join(
        f"{f} {r['ratio_of_medians']:.2f}" for f, r in runs.items())
    print()
    print(table)
    path = _common.write_results("bench_train_small_codes", payload, table, out=args.out, headline=headline,
                                 notes=notes)
    print(f"results: {path}")
    print(headline)


def _child_env(code: str | None) -> tuple[dict[str, str], str]:
    """(environment, interpreter) of a child running this tree's code, or the source tree ``code``
    in ``--baseline-python`` (default: the base interpreter, outside any environment with w2v2ser
    installed)."""
    if code is None:
        path = os.pathsep.join(filter(None, [str(_common.REPO_ROOT), os.environ.get("PYTHONPATH")]))
        return dict(os.environ, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="2"), sys.executable
    code = str(Path(code).resolve())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=code, W2V2SER_CODE=code, TF_CPP_MIN_LOG_LEVEL="2")
    return env, BASELINE_PYTHON[0] or getattr(sys, "_base_executable", sys.executable)


def _run_child(cmd: list[str], env: dict[str, str], name: str) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"child for {name} failed ({proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    BASELINE_PYTHON[0] = args.baseline_python
    if args.child_small:
        small_child(*args.child_small, args.epochs)
        return
    if args.small and args.baseline_code:
        small_codes(args)
        return
    if args.small:
        small_selections(args)
        return
    if args.child:
        child(args.child, args.epochs, args.cache_mode)
        return
    if args.child_input:
        input_child(args.child_input, args.cache_mode, cold=args.cold,
                    features=args.features)
        return
    if args.input_only:
        input_only(args)
        return
    how = _common.bootstrap_w2v2ser()
    cache = Path(args.cache)
    sizes = {"full": args.seconds, "quarter": args.seconds / 4}
    paths = {name: ensure_store(cache, s, args.gen_workers) for name, s in sizes.items()}
    runs, baseline = {}, {}
    for name in ("quarter", "full"):
        env, exe = _child_env(None)
        cmd = [exe, __file__, "--child", str(paths[name]), "--epochs", str(args.epochs),
               "--cache-mode", args.cache_mode]
        print(f"training on {name} store ({sizes[name]:.0f} audio s) in a fresh process ...", flush=True)
        runs[name] = _run_child(cmd, env, name)
        runs[name]["audio_seconds"] = sizes[name]
        runs[name]["store_gb"] = sum(f.stat().st_size for f in Path(paths[name]).rglob("*") if f.is_file()) / 1e9
        if args.baseline_code:
            env, exe = _child_env(args.baseline_code)
            print(f"training on {name} store with the baseline code {args.baseline_code} ...", flush=True)
            baseline[name] = _run_child([exe, *cmd[1:]], env, name)
    import numpy as np

    rows = []
    for name in ("quarter", "full"):
        r = runs[name]
        # The first epoch also traces and compiles the Keras step: report the later ones.
        steady = r["epoch_seconds"][1:] or r["epoch_seconds"]
        epoch = float(np.mean(steady))
        r["first_epoch_seconds"] = r["epoch_seconds"][0]
        r["compute_seconds_steady"] = float(np.mean(r["compute_seconds"][1:] or r["compute_seconds"]))
        r["epoch_seconds_mean"] = epoch
        r["input_share_input_only_pass"] = r["input_only_pass_seconds"] / epoch
        r["input_share_library_threads"] = float(np.sum(r["input_seconds_threads"]) / np.sum(r["epoch_seconds"]))
        rows.append([name, r["audio_seconds"], r["store_gb"], r["utterances_train"], epoch,
                     r["input_only_pass_seconds"], r["compute_seconds_steady"],
                     r["input_share_input_only_pass"], _train_peak(r), r["peak_rss_mb"], r["cache_used"]])
        if name in baseline:
            b = baseline[name]
            b_epoch = float(np.mean(b["epoch_seconds"][1:] or b["epoch_seconds"]))
            b["epoch_seconds_mean"] = b_epoch
            rows.append([f"{name} (baseline code)", r["audio_seconds"], r["store_gb"], b["utterances_train"], b_epoch,
                         b["input_only_pass_seconds"], float(np.mean(b["compute_seconds"][1:] or b["compute_seconds"])),
                         b["input_only_pass_seconds"] / b_epoch, _train_peak(b), b["peak_rss_mb"], b["cache_used"]])
    ratios = {
        "peak_rss_full_vs_quarter": _train_peak(runs["full"]) / _train_peak(runs["quarter"]),
        "epoch_full_vs_quarter": runs["full"]["epoch_seconds_mean"] / runs["quarter"]["epoch_seconds_mean"],
        "input_share_full": runs["full"]["input_share_input_only_pass"],
    }
    table = _common.format_table(["store", "audio s", "store GB", "train utts", "epoch s (after 1st)", "input-only pass s",
                                  "keras step s", "input share", "peak RSS training MB", "peak RSS MB", "frame cache"], rows)
    info = _common.machine_info(["numpy"])
    payload = {"benchmark": "bench_train", "command": _common.command_line(), "machine": info,
               "config": {"sizes_audio_seconds": sizes, "epochs": args.epochs, "features": "wav2vec2:all",
                          "head": "dense", "norm": "speaker", "protocol": "ravdess", "recipe": "paper",
                          "stores": {k: str(v) for k, v in paths.items()}, "quick": args.quick, "w2v2ser": how},
               "runs": runs, "ratios": ratios}
    if baseline:
        payload["baseline"] = {"code": args.baseline_code, "runs": baseline}
        ratios.update({f"peak_rss_{k}_vs_baseline": _train_peak(runs[k]) / _train_peak(baseline[k]) for k in baseline})
        ratios.update({f"epoch_{k}_vs_baseline": runs[k]["epoch_seconds_mean"] / baseline[k]["epoch_seconds_mean"]
                       for k in baseline})
    notes = ["'keras step s' is the library's compute_seconds (train-batch begin->end, includes waiting for input "
             "when the readers fall behind); 'input-only pass' iterates the same training batches without a model.",
             "peak RSS from ru_maxrss of a fresh process per store size: 'training' right after train_run, "
             "'peak RSS MB' at the end, after the input-only pass too (the ratios use training's)",
             "epoch s = mean of epochs 2..N (epoch 1 also compiles); every epoch includes the validation pass"]
    headline = (f"headline: training peak RSS full/quarter = {ratios['peak_rss_full_vs_quarter']:.2f} (goal ~1: memory flat), "
                f"epoch full/quarter = {ratios['epoch_full_vs_quarter']:.2f} (4x data), input-only pass / epoch "
                f"(full) = {ratios['input_share_full']:.2f}")
    if baseline:
        headline += "; vs baseline code: " + ", ".join(
            f"{k} peak RSS {ratios[f'peak_rss_{k}_vs_baseline']:.2f}x, epoch {ratios[f'epoch_{k}_vs_baseline']:.2f}x"
            for k in baseline)
    print()
    print(table)
    path = _common.write_results("bench_train_quick" if args.quick else "bench_train", payload, table,
                                 out=args.out, headline=headline, notes=notes)
    print(f"results: {path}")
    print(headline)


if __name__ == "__main__":
    main()
