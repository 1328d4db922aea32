"""Does a change of the layer average's arithmetic change what ``:all`` heads learn? Seeds decide.

``--change forward`` (default): the float16 layer average's forward is one XLA-compiled pass
(train/_layers.py). It rounds differently from the sequential TensorFlow ops it replaced (fused
multiply-adds: one rounding per layer instead of two).

``--change fold``: streamed float16 layers are normalised inside the layer average (frames as
stored, each utterance's mean and std as an input; :class:`Source` ``fold``) instead of by the
input pipeline, which rounds the normalised frames to float16. Both variants stream (``cache=off``).

Either way a seeded run no longer repeats the old one bit for bit. This trains the same ``:all``
experiment with each variant over the same seeds and compares the UARs seed by seed (paired
t-test and Wilcoxon signed-rank test).

The store is synthetic (tests/stage2_fixtures.build_store, RAVDESS utterance table, 13 x 768
float16 frames): layer l carries a label-specific direction of scale ``signal[l]``, so the layer
weights have something to learn and the UAR is far from both chance and 100 %. Its UAR says nothing
about emotion: it only compares the two forwards.

    python3 tests/benchmarks/compare_layer_forward.py [--change forward|fold] [--seeds 8] [--per-actor 20] [--cache DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import bootstrap_w2v2ser, command_line, format_table, machine_info, write_results  # noqa: E402

# Label signal per layer: weak in most layers, strongest in the middle (as emotion is in wav2vec2).
SIGNAL = [0.0, 0.002, 0.004, 0.006, 0.008, 0.012, 0.016, 0.012, 0.008, 0.006, 0.004, 0.002, 0.0]


# change -> (old variant, new variant), with the labels of the table
CHANGES = {"forward": (("ops", "TensorFlow ops"), ("xla", "XLA forward")),
           "fold": (("input", "normalised by the input"), ("model", "normalised in the model"))}


def child(variant: str, store: str, out: str, seeds: int) -> None:
    """One ``w2v2ser train`` of ``:all`` with the given variant (see CHANGES)."""
    bootstrap_w2v2ser()
    from w2v2ser import _cli
    from w2v2ser.train import _layers, _planning

    extra = []
    if variant == "ops":
        _layers._FORWARD[:] = [None]  # the sequential TensorFlow ops (the path where XLA is missing)
    if variant in ("input", "model"):
        extra = ["--set", "cache=off"]
        if variant == "input":
            _planning.foldable = lambda *args: False  # normalised by the input pipeline (code before the fold)
    code = _cli.main(["train", store, "--features", "wav2vec2:all", "--seeds", str(seeds), "--out", out,
                      "--no-progress", *extra])
    if variant == "ops" and _layers._FORWARD != [None] or variant == "xla" and _layers._FORWARD[0] is None or code:
        raise SystemExit(f"{variant}: exit code {code}, forward {_layers._FORWARD}")
    if variant in ("input", "model"):  # each variant fed its models as it says
        import keras

        for model in Path(out).glob("runs/*/model.keras"):
            names = [t.name for t in keras.saving.load_model(model, compile=False).inputs]
            if ("main_stats" in names) != (variant == "model"):
                raise SystemExit(f"{variant}: {model} takes inputs {names}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--change", choices=sorted(CHANGES), default="forward")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--per-actor", type=int, default=12, help="utterances per actor (24 actors)")
    parser.add_argument("--cache", default=None, help="folder of the synthetic store (reused)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "STORE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.seeds)
        return
    bootstrap_w2v2ser()
    import numpy as np
    from scipy import stats
    from stage2_fixtures import build_store, ravdess_utterances

    cache = Path(args.cache or tempfile.mkdtemp(prefix="w2v2ser-forward-"))
    cache.mkdir(parents=True, exist_ok=True)
    store = cache / f"forward-{args.per_actor}.zarr"
    if not (store / "zarr.json").exists():
        build_store(store, utterances=ravdess_utterances(per_actor=args.per_actor), dim=768,
                    features=("wav2vec2",), min_seconds=0.8, max_seconds=2.0, layer_signal=SIGNAL)
    uar, loss, epochs, walls = {}, {}, {}, {}
    (old, old_label), (new, new_label) = CHANGES[args.change]
    for variant in (old, new):
        out = Path(tempfile.mkdtemp(prefix=f"forward-{variant}-", dir=cache))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--seeds", str(args.seeds), "--child", variant, str(store), str(out)],
                       check=True)
        walls[variant] = time.perf_counter() - t0
        runs = json.loads((out / "results.json").read_text())["runs"]
        uar[variant] = {r["seed"]: 100.0 * r["uar"] for r in runs}
        metrics = {r["seed"]: json.loads((out / "runs" / r["name"] / "metrics.json").read_text()) for r in runs}
        loss[variant] = {s: m["best_val_loss"] for s, m in metrics.items()}
        epochs[variant] = {s: m["epochs"] for s, m in metrics.items()}
    seeds = sorted(uar[old])
    a, b = np.array([uar[old][s] for s in seeds]), np.array([uar[new][s] for s in seeds])
    differ = len(seeds) >= 2 and bool(np.any(a != b))
    paired = stats.ttest_rel(b, a) if differ else None
    wilcoxon = stats.wilcoxon(b, a) if differ else None
    rows = [[s, round(uar[old][s], 2), round(uar[new][s], 2), round(uar[new][s] - uar[old][s], 2),
             f"{epochs[old][s]} / {epochs[new][s]}", f"{loss[old][s]:.4f} / {loss[new][s]:.4f}"] for s in seeds]
    rows.append(["mean ± std", f"{a.mean():.2f} ± {a.std(ddof=1):.2f}", f"{b.mean():.2f} ± {b.std(ddof=1):.2f}",
                 f"{(b - a).mean():.2f} ± {(b - a).std(ddof=1):.2f}", "", ""])
    table = format_table(["seed", f"UAR % ({old_label})", f"UAR % ({new_label})", f"{new} - {old}",
                          f"epochs ({old} / {new})", f"best validation loss ({old} / {new})"], rows)
    headline = (f"n={len(seeds)} seeds: {old_label} {a.mean():.2f} ± {a.std(ddof=1):.2f}, {new_label} "
                f"{b.mean():.2f} ± {b.std(ddof=1):.2f} % UAR; "
                + (f"paired t-test p={paired.pvalue:.3g}, Wilcoxon p={wilcoxon.pvalue:.3g}" if differ
                   else "every seed the same UAR" if np.all(a == b) else "too few seeds for a test")
                + f"; wall {walls[old]:.0f} s vs {walls[new]:.0f} s")
    print(table, "\n" + headline)
    payload = {"command": command_line(), "machine": machine_info(["numpy", "scipy"]), "signal": SIGNAL,
               "utterances": 24 * args.per_actor, "uar": uar, "best_val_loss": loss, "epochs": epochs, "wall_s": walls,
               "paired_t_p": float(paired.pvalue) if differ else None,
               "wilcoxon_p": float(wilcoxon.pvalue) if differ else None}
    payload["change"] = args.change
    write_results("compare_layer_forward" if args.change == "forward" else f"compare_layer_{args.change}", payload,
                  table, out=args.out, headline=headline,
                  notes=["synthetic store: the UAR compares the two variants only; it is not an emotion result",
                         "each variant: one `w2v2ser train STORE --features wav2vec2:all --seeds N` in its own process"
                         + (" --set cache=off" if args.change == "fold" else "")])


if __name__ == "__main__":
    main()
