"""One step of the heads on float16 all-layer frames: the layer average's forward compiled by XLA vs TensorFlow's ops.

Times, on one synthetic batch of 32 utterances x 250 frames (no store is read), for the base
(13 x 768) and the large (25 x 1024) shape:

* ``train``: one ``train_on_batch`` of the paper's Dense head on ``:all`` (LayerWeightedAverage ->
  Dense), compiled as ``w2v2ser train`` compiles it (Adam, sparse cross-entropy);
* ``predict``: one ``predict_on_batch`` of the same model;
* ``sweep``: one training step of the layer sweep (L probes + the weighted-average head).

Both variants live in one process: each model is traced once with its forward (the XLA-compiled
pass, or ``_FORWARD = [None]``: the sequential loop of TensorFlow ops that runs where XLA is
missing), then the variants are timed in alternating rounds. Prints the medians and writes
``bench_head_step.json`` / ``.md``.

``--fold`` instead times the Dense head's train step and prediction (XLA forward) fed normalised
frames ("plain") against frames as stored plus each utterance's mean and std, normalised inside
the layer average ("fold": a streamed branch with Source ``fold``); writes ``bench_head_step_fold``.

    python3 tests/benchmarks/bench_head_step.py [--rounds 5] [--steps 6] [--shapes base,large] [--fold]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bootstrap_w2v2ser, command_line, format_table, machine_info, write_results  # noqa: E402

SHAPES = {"base": (13, 768), "large": (25, 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="base,large")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of each variant")
    parser.add_argument("--steps", type=int, default=6, help="timed calls per round (after one warm-up)")
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--fold", action="store_true", help="normalised frames vs normalisation in the model")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    bootstrap_w2v2ser()
    import w2v2ser.train  # noqa: F401 -- before TensorFlow, so its oneDNN choice applies as in a run
    import keras
    import numpy as np
    import tensorflow as tf

    from w2v2ser.train import DenseHead, _layers
    from w2v2ser.train._sweepfit import _SweepHeads, _sparse_ce

    def with_forward(variant: str, build):  # the forward is chosen when a model is traced
        _layers._FORWARD[:] = [None] if variant == "ops" else []
        return build()

    def dense_calls(layers: int, dim: int, x, mask, y, stats=None):
        folded = () if stats is None else ("main",)
        model = DenseHead(seed=0)._build({"main": ((layers, dim), np.dtype(np.float16))}, 8, folded=folded)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        inputs = {"main": x, "mask": mask, **({} if stats is None else {"main_stats": stats})}
        model.train_on_batch(inputs, y)
        model.predict_on_batch(inputs)
        return {"train": lambda: model.train_on_batch(inputs, y), "predict": lambda: model.predict_on_batch(inputs)}

    def sweep_call(layers: int, dim: int, x, mask, y):
        heads = _SweepHeads(layers, dim, 8, units=128, dropout=0.2, seed=0)
        opt = keras.optimizers.Adam(1e-3)
        opt.build(heads.variables)

        @tf.function
        def step(x, mask, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(_sparse_ce(y, heads(x, mask, True)))
            opt.apply(tape.gradient(loss, heads.variables), heads.variables)
            return loss

        step(x, mask, y).numpy()
        return {"sweep": lambda: step(x, mask, y).numpy()}

    rows, results = [], {}
    for shape in args.shapes.split(","):
        layers, dim = SHAPES[shape]
        rng = np.random.default_rng(0)
        x = tf.constant(rng.standard_normal((32, args.frames, layers, dim)).astype(np.float16))
        mask, y = tf.ones((32, args.frames)), tf.constant(rng.integers(0, 8, 32).astype(np.int32))
        if args.fold:
            stats = tf.constant(np.stack([rng.standard_normal((32, layers, dim)),
                                          rng.uniform(0.5, 2.0, (32, layers, dim))], axis=1).astype(np.float32))
            calls = {"plain": dense_calls(layers, dim, x, mask, y), "fold": dense_calls(layers, dim, x, mask, y, stats)}
        else:
            calls = {v: {**with_forward(v, lambda: dense_calls(layers, dim, x, mask, y)),
                         **with_forward(v, lambda: sweep_call(layers, dim, x, mask, y))} for v in ("ops", "xla")}
        old, new = ("plain", "fold") if args.fold else ("ops", "xla")
        times: dict[str, dict[str, list[float]]] = {v: {k: [] for k in calls[v]} for v in calls}
        for r in range(args.rounds):
            for variant in ((old, new) if r % 2 == 0 else (new, old)):
                for what, call in calls[variant].items():
                    call()
                    for _ in range(args.steps):
                        t0 = time.perf_counter()
                        call()
                        times[variant][what].append(1000 * (time.perf_counter() - t0))
        results[shape] = {v: {k: float(np.median(t)) for k, t in per.items()} for v, per in times.items()}
        for what in times[old]:
            a, b = results[shape][old][what], results[shape][new][what]
            rows.append([f"{shape} ({layers} x {dim})", what, round(a, 1), round(b, 1), round(b / a, 2)])
            print(f"{shape} {what}: {old} {a:.1f} ms, {new} {b:.1f} ms, {new}/{old} {b / a:.2f}", flush=True)
        del calls
    labels = (["normalised frames (ms)", "normalised in the model (ms)", "fold / plain"] if args.fold
              else ["TensorFlow ops (ms)", "XLA forward (ms)", "XLA / ops"])
    table = format_table(["shape", "call", *labels], rows)
    payload = {"command": command_line(), "machine": machine_info(["numpy", "tensorflow", "keras"]),
               "batch": [32, args.frames], "rounds": args.rounds, "steps": args.steps, "median_ms": results}
    headline = "; ".join(f"{r[0]} {r[1]} {r[4]}x" for r in rows)
    write_results("bench_head_step_fold" if args.fold else "bench_head_step", payload, table, out=args.out,
                  headline=f"{labels[2]}: " + headline,
                  notes=[f"medians of {args.rounds} x {args.steps} calls per variant, alternating rounds, one process"])


if __name__ == "__main__":
    main()
