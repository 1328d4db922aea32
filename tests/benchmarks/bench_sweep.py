"""Layer sweep cost: one sweep (L per-layer probes + weighted head, one pass) vs one single-layer run.

Problems (synthetic stores written with tests/stage2_fixtures.build_store, RAVDESS utterance
table: 24 actors, the RAVDESS protocol's split):

* ``tiny``: RAVDESS-eGeMAPS-sized, a tiny model's store: 13 layers x 32 dims, 2,448 utterances
  of 3-5 s (about RAVDESS's 10,000 audio s) at 50 frames/s;
* ``base``: wav2vec2-base shape, 13 x 768, ``--base-utterances`` utterances (RAVDESS has 2,452:
  scaled down to fit the shared 2-core machine; the size is printed);
* ``large``: a large model's shape, 25 x 1024, same utterances as ``base``.

Each measurement runs in a fresh process (peak RSS is its own; TensorFlow is imported before the
clock starts): one
(fold, seed) of ``train_run`` on layer 6 alone ("single"), of ``train_run`` on ``:all``
("all"), and of ``sweep_run`` ("sweep"). Early stopping is disabled (patience = max_epochs) so
every mode trains exactly ``--epochs`` epochs: the ratio compares equal work per head. Modes
alternate, their order rotating every repetition. The frame cache is off in every mode
(``--cache-mode off``, the default), so memory does not depend on how much of the store fits the
cache (the full-size stores do not); ``--cache-mode auto`` holds each run's partitions in memory
when they fit its budget, as ``w2v2ser train`` and ``sweep`` do by default.

    python3 tests/benchmarks/bench_sweep.py [--quick] [--problems tiny,base,large]

``--onednn`` runs every mode (and ``--steps``) with TensorFlow's oneDNN kernels off and on
(``TF_ENABLE_ONEDNN_OPTS=0`` / ``1``, alternating) and writes ``bench_sweep_onednn``: stage 2
turns them on where TensorFlow would not (w2v2ser._process.prefer_onednn).

``--allocator`` runs every mode with oneDNN's pooling allocator (TensorFlow's default with oneDNN
on; it keeps freed memory for reuse) and with the system allocator
(``TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1``), alternating, and writes ``bench_sweep_allocator``.

``--dropout`` runs the step, the single-layer run and the sweep with one dropout mask per probe
(as the sweep drew them until 9970cc9; ``BENCH_SWEEP_PER_PROBE_MASKS=1``) and with the shipped
mask shared by all probes, alternating, and writes ``bench_sweep_dropout``.

``--micro`` runs only the ``:all`` run through ``w2v2ser train`` with whole batches of the recipe's
size (``BENCH_SWEEP_TRAIN_MICRO_BATCH_MB=1e9``) and with the shipped micro-batches (batches over
``TRAIN_MICRO_BATCH_MB`` of frames are fed in parts whose gradients make one step), alternating,
and writes ``bench_sweep_micro``.

``--steps`` times only the sweep's training step instead (forward, backward and Adam of all
L + 1 heads on one synthetic batch of 32 utterances x 200 frames, median of 20 after 2 warm-up
steps; no store is read), for each problem's shape, and writes ``bench_sweep_steps``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import bootstrap_w2v2ser, command_line, format_table, machine_info, quick_out, write_results  # noqa: E402

SHAPES = {"tiny": (13, 32), "base": (13, 768), "large": (25, 1024)}


def build(cache: Path, problem: str, utterances: int) -> Path:
    from stage2_fixtures import build_store, ravdess_utterances

    layers, dim = SHAPES[problem]
    per_actor = max(4, round(utterances / 24))
    path = cache / f"sweep_{problem}_{per_actor * 24}.zarr"
    if not (path / "zarr.json").exists():
        t0 = time.perf_counter()
        build_store(path, utterances=ravdess_utterances(per_actor=per_actor), layers=layers, dim=dim,
                    features=("wav2vec2",), min_seconds=3.0, max_seconds=5.0,
                    layer_signal=[0.05 * k for k in range(layers)])
        print(f"built {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def _per_probe_dropout(self, h, training):  # type: ignore[no-untyped-def]
    """The sweep's probe dropout until 9970cc9: an independent mask for each probe."""
    import tensorflow as tf

    if not training or self.dropout == 0:
        return h
    n = tf.size(h)
    bits = self.rng.uniform_full_int([(n + 1) // 2], dtype=tf.uint32)
    bits = tf.reshape(tf.bitcast(bits, tf.uint16), [-1])[:n]
    keep = tf.reshape(bits, tf.shape(h)) >= tf.constant(self.keep_from, tf.uint16)
    return tf.where(keep, h * (1.0 / (1.0 - self.dropout)), tf.zeros_like(h))


def _select_dropout() -> None:
    if os.environ.get("BENCH_SWEEP_PER_PROBE_MASKS") == "1":
        from w2v2ser.train._sweepfit import _SweepHeads

        _SweepHeads.probe_dropout = _per_probe_dropout


def _select_micro_batches() -> None:
    if os.environ.get("BENCH_SWEEP_TRAIN_MICRO_BATCH_MB"):  # "1e9": whole batches, as before micro-batches
        import w2v2ser.train._experiment as experiment

        experiment.TRAIN_MICRO_BATCH_MB = float(os.environ["BENCH_SWEEP_TRAIN_MICRO_BATCH_MB"])


def child(mode: str, store: str, epochs: int, threads: int | None, cache_mode: str = "off") -> None:
    """Run one measurement in this (fresh) process and print its JSON as the last line."""
    bootstrap_w2v2ser()
    _select_dropout()
    _select_micro_batches()
    import resource

    from w2v2ser.train import ExperimentConfig, plan_runs, sweep_run, train_run

    features = {"single": "wav2vec2:6", "all": "wav2vec2:all", "sweep": "wav2vec2"}[mode]
    config = ExperimentConfig(stores=store, features=features, seeds=1, recipe="official", cache=cache_mode,
                              recipe_overrides={"max_epochs": epochs, "patience": epochs})
    spec = plan_runs(ExperimentConfig(stores=store, features="wav2vec2:all", seeds=1))[0]
    out = Path(store).parent / f"bench_sweep_out_{mode}_{time.time_ns()}"
    import keras  # noqa: F401 -- TensorFlow's import (tens of seconds here) is not part of either mode
    import tensorflow  # noqa: F401

    t0 = time.perf_counter()
    if mode == "sweep":
        res = sweep_run(config, spec, out=out, threads=threads)
        uar = {k: v["uar"] for k, v in res.items()}
    else:
        uar = {features: train_run(config, spec, out=out, threads=threads).uar}
    wall = time.perf_counter() - t0
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"mode": mode, "wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "uar": uar}))


def time_steps(problems: list[str], repeats: int = 20) -> dict[str, float]:
    """Median milliseconds of one sweep training step per problem shape (no store, no input)."""
    bootstrap_w2v2ser()
    _select_dropout()
    import w2v2ser.train  # noqa: F401 -- before TensorFlow, so its oneDNN choice applies as in a run
    import numpy as np
    import keras
    import tensorflow as tf

    from w2v2ser.train._sweepfit import _SweepHeads, _sparse_ce

    out = {}
    for problem in problems:
        layers, dim = SHAPES[problem]
        heads = _SweepHeads(layers, dim, 8, units=128, dropout=0.2, seed=0)
        rng = np.random.default_rng(0)
        x = tf.constant(rng.normal(size=(32, 200, layers, dim)).astype(np.float16))
        mask, y = tf.ones((32, 200)), tf.constant(rng.integers(0, 8, 32).astype(np.int32))
        opt = keras.optimizers.Adam(1e-3)
        opt.build(heads.variables)

        @tf.function
        def step(x: tf.Tensor, mask: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(_sparse_ce(y, heads(x, mask, True)))
            opt.apply(tape.gradient(loss, heads.variables), heads.variables)
            return loss

        times = []
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            step(x, mask, y).numpy()
            if i >= 2:
                times.append(1000 * (time.perf_counter() - t0))
        out[problem] = float(np.median(times))
        print(f"{problem} ({layers} x {dim}): {out[problem]:.1f} ms per step", flush=True)
    return out


def measure(mode: str, store: Path, epochs: int, threads: int | None, cache_mode: str = "off",
            env: dict[str, str] | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--store", str(store), "--epochs", str(epochs),
           "--cache-mode", cache_mode]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace, name: str, settings: dict[str, dict[str, str]], what: str,
            modes: tuple[str, ...] = ("single", "sweep", "all"), steps_too: bool = True) -> None:
    """Every mode of every problem, and the step alone, under each of two environments in alternation.

    ``settings``: label -> environment variables (two labels; the ratio is first / second).
    ``modes``: the runs compared (``all`` only where the problem is not tiny and ``--no-all`` is off).
    """
    first, second = settings

    def alternating(rep: int) -> list[str]:  # which setting runs first flips every repetition
        return [first, second] if rep % 2 == 0 else [second, first]

    envs = {k: dict(os.environ, **v) for k, v in settings.items()}
    scratch = tempfile.mkdtemp(prefix="bench_sweep_steps_")  # the step children's own result files
    rows, payload = [], {"command": command_line(), "machine": machine_info(["tensorflow", "keras"]),
                         "settings": settings, "runs": {}}
    for problem in args.problems.split(","):
        store = build(Path(args.cache), problem, args.tiny_utterances if problem == "tiny" else args.base_utterances)
        steps: dict[str, list[float]] = {k: [] for k in settings}
        for rep in range(args.repeats if steps_too else 0):
            for key in alternating(rep):
                out = subprocess.run([sys.executable, __file__, "--steps", "--problems", problem, "--out", scratch],
                                     capture_output=True, text=True, env=envs[key], check=True).stdout
                steps[key].append(float(re.search(r"([\d.]+) ms per step", out).group(1)))
        runs: dict[str, Any] = {"steps_ms": steps} if steps_too else {}
        for mode in [m for m in modes if m != "all" or (problem != "tiny" and args.all_mode)]:
            runs[mode] = {k: [] for k in settings}
            for rep in range(args.repeats):
                for key in alternating(rep):
                    r = measure(mode, store, args.epochs, args.threads, args.cache_mode, env=envs[key])
                    runs[mode][key].append(r)
                    print(f"{problem} {mode} {what} {key}: {r['wall_s']:.1f} s, {r['peak_rss_mb']:.0f} MB", flush=True)
        payload["runs"][problem] = runs
        if steps_too:
            best = {k: min(steps[k]) for k in settings}
            rows.append([problem, "step", f"{best[first]:.1f} ms", f"{best[second]:.1f} ms",
                         f"{best[first] / best[second]:.2f}", "", ""])
        for mode in [m for m in runs if m != "steps_ms"]:
            w = {k: min(r["wall_s"] for r in runs[mode][k]) for k in settings}
            m = {k: max(r["peak_rss_mb"] for r in runs[mode][k]) for k in settings}
            rows.append([problem, mode, f"{w[first]:.1f} s", f"{w[second]:.1f} s", f"{w[first] / w[second]:.2f}",
                         f"{m[first]:.0f}", f"{m[second]:.0f}"])
        for key in settings if {"sweep", "single"} <= set(runs) else ():
            ratio = min(r["wall_s"] for r in runs["sweep"][key]) / min(r["wall_s"] for r in runs["single"][key])
            payload["runs"][problem][f"sweep_over_single_{key}"] = ratio
            rows.append([problem, f"sweep / single, {key}", "", "", f"{ratio:.2f}", "", ""])
    table = format_table(["problem", "mode", f"{what} {first}", f"{what} {second}", f"{first} / {second}",
                          f"peak MB {first}", f"peak MB {second}"], rows)
    print(table)
    write_results(name, payload, table, out=args.out,
                  headline="; ".join(f"{r[0]} {r[1]} {r[4]}x" for r in rows),
                  notes=[f"{args.repeats} runs per setting, alternating; best wall time, highest peak; "
                         f"{args.epochs} epochs, cache {args.cache_mode}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", default="tiny,base,large")
    parser.add_argument("--tiny-utterances", type=int, default=2448)
    parser.add_argument("--base-utterances", type=int, default=2452)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--cache", default="/work/bench_cache")
    parser.add_argument("--out", help="results folder (default tests/benchmarks/results; with --quick a new "
                                      "temporary folder)")
    parser.add_argument("--quick", action="store_true", help="96/144 utterances, 2 epochs")
    parser.add_argument("--steps", action="store_true", help="time only the sweep's training step per shape")
    parser.add_argument("--onednn", action="store_true", help="every mode with oneDNN off and on (alternating)")
    parser.add_argument("--dropout", action="store_true",
                        help="step, single and sweep with per-probe and shared dropout masks (alternating)")
    parser.add_argument("--allocator", action="store_true",
                        help="every mode with oneDNN's pool allocator (TensorFlow's default) and the system "
                             "allocator (TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1), alternating")
    parser.add_argument("--micro", action="store_true",
                        help="the :all run with whole batches and with micro-batches (TRAIN_MICRO_BATCH_MB), "
                             "alternating")
    parser.add_argument("--no-all", dest="all_mode", action="store_false",
                        help="with --onednn/--dropout: leave out the :all run")
    parser.add_argument("--child")
    parser.add_argument("--store")
    parser.add_argument("--cache-mode", default="off", choices=["off", "auto"],
                        help="every run's cache setting (off: always stream; auto: in memory when it fits)")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.store, args.epochs, args.threads, args.cache_mode)
    if args.quick:
        args.tiny_utterances, args.base_utterances, args.epochs = 96, 144, 2
    args.out = quick_out(args.out, args.quick, "bench_sweep")
    if args.onednn:
        return compare(args, "bench_sweep_onednn", {"off": {"TF_ENABLE_ONEDNN_OPTS": "0"},
                                                    "on": {"TF_ENABLE_ONEDNN_OPTS": "1"}}, "oneDNN")
    if args.allocator:
        return compare(args, "bench_sweep_allocator", {"pool": {"TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "0"},
                                                       "system": {"TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "1"}},
                       "allocator")
    if args.dropout:
        return compare(args, "bench_sweep_dropout", {"per-probe": {"BENCH_SWEEP_PER_PROBE_MASKS": "1"},
                                                     "shared": {"BENCH_SWEEP_PER_PROBE_MASKS": "0"}}, "masks")
    if args.micro:
        return compare(args, "bench_sweep_micro", {"whole": {"BENCH_SWEEP_TRAIN_MICRO_BATCH_MB": "1e9"},
                                                   "micro": {"BENCH_SWEEP_TRAIN_MICRO_BATCH_MB": ""}},
                       "batches", modes=("all",), steps_too=False)
    if args.steps:
        problems = args.problems.split(",")
        ms = time_steps(problems)
        payload = {"command": command_line(), "machine": machine_info(["tensorflow", "keras"]), "ms_per_step": ms}
        table = format_table(["problem", "layers x dim", "ms per step"],
                             [[p, "x".join(map(str, SHAPES[p])), f"{ms[p]:.1f}"] for p in problems])
        write_results("bench_sweep_steps", payload, table, out=args.out,
                      headline="; ".join(f"{p}: {ms[p]:.1f} ms" for p in problems),
                      notes=["one sweep training step (L + 1 heads, forward + backward + Adam), batch of 32 x 200 "
                             "frames, units 128, dropout 0.2, median of 20"])
        return
    bootstrap_w2v2ser()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    rows, payload = [], {"command": command_line(), "machine": machine_info(["tensorflow", "keras"]), "problems": {}}
    for problem in args.problems.split(","):
        n = args.tiny_utterances if problem == "tiny" else args.base_utterances
        store = build(cache, problem, n)
        from w2v2ser.store import open_store

        st = open_store(store)
        audio_s = sum(r.duration for r in st.list_utterances())
        modes = ["single", "sweep"] + (["all"] if problem != "tiny" else [])
        results: dict[str, list[dict]] = {m: [] for m in modes}
        for rep in range(args.repeats):
            order = modes[rep % len(modes):] + modes[:rep % len(modes)]
            for mode in order:
                r = measure(mode, store, args.epochs, args.threads, args.cache_mode)
                results[mode].append(r)
                print(f"{problem} {mode}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        best = {m: min(results[m], key=lambda r: r["wall_s"]) for m in modes}
        ratio = best["sweep"]["wall_s"] / best["single"]["wall_s"]
        layers, dim = SHAPES[problem]
        payload["problems"][problem] = {"store": str(store), "utterances": len(st.list_utterances()),
                                        "audio_seconds": audio_s, "layers": layers, "dim": dim,
                                        "epochs": args.epochs, "results": results, "sweep_over_single": ratio}
        for m in modes:
            rows.append([problem, f"{len(st.list_utterances())} utt / {audio_s:.0f} s", f"{layers}x{dim}", m,
                         f"{best[m]['wall_s']:.1f}", f"{best[m]['peak_rss_mb']:.0f}",
                         f"{ratio:.2f}" if m == "sweep" else ""])
    headline = "; ".join(f"{p}: sweep/single {v['sweep_over_single']:.2f}x" for p, v in payload["problems"].items())
    if "base" in payload["problems"] and "large" in payload["problems"]:
        b, g = payload["problems"]["base"]["results"], payload["problems"]["large"]["results"]
        for m in ("all", "sweep"):
            r = max(x["peak_rss_mb"] for x in g[m]) / max(x["peak_rss_mb"] for x in b[m])
            payload[f"large_over_base_peak_rss_{m}"] = r
            headline += f"; large/base peak RSS ({m}) {r:.2f}x"
    table = format_table(["problem", "size", "layers x dim", "mode", "wall s", "peak RSS MB", "sweep/single"], rows)
    print(table)
    write_results("bench_sweep", payload, table, out=args.out, headline=headline,
                  notes=[f"{args.epochs} epochs in every mode (early stopping off), one (fold, seed), "
                         f"cache {args.cache_mode}",
                         "single = Dense head on layer 6 alone; all = Dense head on the weighted average; "
                         "sweep = every layer's probe + the weighted head in one pass"])
    print(headline)


if __name__ == "__main__":
    main()
