"""Training fidelity (issue #13, part 2): does the stage 2 loop score like a plain Keras fit?

Three ways of training the same Dense head (paper recipe: Adam 1e-3, batch 32, early stopping on
validation loss with patience 4 and the best weights restored) on the SAME frames: eGeMAPS read from
a w2v2ser store, pair-averaged, speaker-normalised and cropped to the protocol's 250 frames by the
stage 2 reader, RAVDESS split (actors 1-20 / 21-22 / 23-24):

* ``keras``: a plain ``keras.Model`` of the same layers, ``model.fit`` on numpy arrays padded to
  250 frames plus a mask, ``EarlyStopping(patience=4, restore_best_weights=True)``.
* ``head``: ``DenseHead(recipe="paper", seed=s).fit`` on the same arrays (list input).
* ``stage2``: the whole stage 2 path, ``w2v2ser train STORE --features egemaps --recipe paper``
  (a subprocess; its run folders are resumable, so an interrupted run loses nothing).

Every finished seed is appended to ``<out>/fidelity_<variant>.json`` at once, so the long runs can
go in the background (``nice``) and be resumed. ``--report`` prints the table: mean ± std (population)
of the test UAR, the epochs run, and two-sided Mann-Whitney U and Welch t-test p-values of each
variant against ``keras``.

    nice python3 tests/benchmarks/bench_fidelity.py --variant keras --store STORE --seeds 20 --threads 1
    nice python3 tests/benchmarks/bench_fidelity.py --variant head --store STORE --seeds 20 --threads 1
    nice python3 tests/benchmarks/bench_fidelity.py --variant stage2 --store STORE --seeds 20 --threads 1
    python3 tests/benchmarks/bench_fidelity.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

VARIANTS = ("keras", "keras_reshuffled", "head", "stage2")
LABELS = {"keras": "plain keras.Model.fit on padded numpy arrays + mask",
          "keras_reshuffled": "the same plain model, fit on the heads' tf.data pipeline (new order every epoch)",
          "head": 'DenseHead(recipe="paper").fit on the same arrays (list input)',
          "stage2": "w2v2ser train ... --recipe paper (the whole stage 2 path)"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default=None, help="w2v2ser store with eGeMAPS of RAVDESS (needed by --variant), e.g. "
                                                 "`w2v2ser extract ravdess DATA --store STORE --features egemaps`")
    p.add_argument("--variant", choices=VARIANTS)
    p.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1 (finished seeds are skipped)")
    p.add_argument("--first-seed", type=int, default=0, help="first seed (keras, keras_reshuffled, head)")
    p.add_argument("--threads", type=int, default=1, help="TensorFlow intra/inter-op threads")
    p.add_argument("--work", default=None, help="folder of per-seed JSON and stage 2 run folders")
    p.add_argument("--tag", default="", help="suffix of the result files (e.g. 'before' a fix)")
    p.add_argument("--report", action="store_true", help="print the table from the saved per-seed results")
    p.add_argument("--out", default=None, help="folder of the report's JSON/Markdown (default results/)")
    args = p.parse_args()
    if args.variant and not args.report:
        # The old default (/work/scratch/ravdess-v1.zarr, where the results were made) no longer exists.
        if not args.store:
            p.error(f"--variant {args.variant} needs --store STORE: a w2v2ser store with eGeMAPS of RAVDESS, "
                    "e.g. from `w2v2ser extract ravdess DATA --store STORE --features egemaps`")
        if not (Path(args.store) / "zarr.json").is_file() and "://" not in args.store:
            p.error(f"--store {args.store}: no w2v2ser store there (no zarr.json); give a store with eGeMAPS of "
                    "RAVDESS, e.g. from `w2v2ser extract ravdess DATA --store STORE --features egemaps`")
    return args


def _work(args: argparse.Namespace) -> Path:
    path = Path(args.work or os.environ.get("W2V2SER_BENCH_CACHE", "/work/bench_cache")) / "fidelity"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _results_path(args: argparse.Namespace, variant: str) -> Path:
    return _work(args) / f"fidelity_{variant}{'_' + args.tag if args.tag else ''}.json"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"runs": {}}


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _config(store: str):
    from w2v2ser.train import ExperimentConfig

    return ExperimentConfig(stores={"main": store}, features="egemaps", head="dense", norm="speaker",
                            protocol="ravdess", recipe="paper", seeds=1)


def load_arrays(store: str) -> dict[str, tuple[list, Any]]:
    """Per partition: (list of normalised [frames, 25] arrays, int labels), read by the stage 2 reader."""
    from w2v2ser.train import plan_runs
    from w2v2ser.train import partition_arrays

    config = _config(store)
    spec = plan_runs(config)[0]
    return partition_arrays(config, spec)


def pad_arrays(arrays: list, max_frames: int):
    import numpy as np

    x = np.zeros((len(arrays), max_frames, *arrays[0].shape[1:]), arrays[0].dtype)
    mask = np.zeros((len(arrays), max_frames), np.float32)
    for i, a in enumerate(arrays):
        x[i, :len(a)] = a
        mask[i, :len(a)] = 1.0
    return {"main": x, "mask": mask}


def plain_dense_model(frame_shape: tuple, n_classes: int, units: int = 128, dropout: float = 0.2):
    """DenseHead's layers as a plain compiled keras.Model (Adam 1e-3), inputs "main" and "mask"."""
    import keras

    from w2v2ser.train import MaskedMean

    inp, mask = keras.Input((None, *frame_shape), name="main"), keras.Input((None,), name="mask")
    h = keras.layers.Dropout(dropout)(keras.layers.Dense(units, activation="relu")(inp))
    h = keras.layers.Dropout(dropout)(keras.layers.Dense(units, activation="relu")(h))
    out = keras.layers.Dense(n_classes, activation="softmax")(MaskedMean()(h, mask))
    model = keras.Model({"main": inp, "mask": mask}, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    return model


def run_keras(parts: dict[str, tuple[list, Any]], seed: int) -> dict[str, Any]:
    """The plain-fit baseline: same layers as DenseHead, model.fit on arrays padded to 250 frames."""
    import keras
    import numpy as np
    from sklearn.metrics import recall_score

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    (xtr, ytr, _), (xva, yva, _), (xte, yte, _) = (parts[p] for p in ("train", "validation", "test"))
    t = 250
    model = plain_dense_model(xtr[0].shape[1:], int(max(ytr)) + 1)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True)
    hist = model.fit(pad_arrays(xtr, t), np.asarray(ytr), batch_size=32, epochs=100, verbose=0,
                     validation_data=(pad_arrays(xva, t), np.asarray(yva)), callbacks=[stop])
    pred = np.argmax(model.predict(pad_arrays(xte, t), batch_size=32, verbose=0), axis=1)
    return {"uar": float(recall_score(yte, pred, average="macro")), "epochs": len(hist.history["loss"])}


def run_keras_reshuffled(parts: dict[str, tuple[list, Any]], seed: int) -> dict[str, Any]:
    """The plain model and EarlyStopping of ``run_keras``, fed by the heads' pipeline (``padded_dataset``).

    Keras 3's array adapter, once ``keras.utils.set_random_seed`` ran, draws the SAME permutation at
    every epoch (its stateful ``tf.random.shuffle`` restarts from the same seed with each epoch's
    iterator), so ``run_keras`` trains on one fixed order. This variant reshuffles every epoch.
    """
    import keras
    import numpy as np
    from sklearn.metrics import recall_score

    from w2v2ser.train._tfdata import padded_dataset

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    (xtr, ytr, _), (xva, yva, _), (xte, yte, _) = (parts[p] for p in ("train", "validation", "test"))
    model = plain_dense_model(xtr[0].shape[1:], int(max(ytr)) + 1)

    def pipeline(x: list, y: Any, shuffle: bool) -> Any:
        lengths = np.array([len(a) for a in x])
        return padded_dataset(pad_arrays(x, int(lengths.max())), np.asarray(y, np.int32), lengths, batch_size=32,
                              shuffle=shuffle, seed=seed)

    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True)
    hist = model.fit(pipeline(xtr, ytr, True), epochs=100, verbose=0, validation_data=pipeline(xva, yva, False),
                     callbacks=[stop])
    pred = np.argmax(model.predict(pipeline(xte, yte, False), verbose=0), axis=1)
    return {"uar": float(recall_score(yte, pred, average="macro")), "epochs": len(hist.history["loss"])}


def run_head(parts: dict[str, tuple[list, Any]], seed: int) -> dict[str, Any]:
    import numpy as np
    from sklearn.metrics import recall_score

    from w2v2ser.train import DenseHead

    import keras

    keras.backend.clear_session()
    (xtr, ytr, _), (xva, yva, _), (xte, yte, _) = (parts[p] for p in ("train", "validation", "test"))
    head = DenseHead(recipe="paper", seed=seed).fit(xtr, ytr, validation_data=(xva, yva))
    pred = head.predict(xte)
    return {"uar": float(recall_score(yte, np.asarray(pred), average="macro")), "epochs": head.history_["epochs"]}


def run_stage2(args: argparse.Namespace, n_seeds: int, path: Path) -> None:
    """Run `w2v2ser train` for all seeds (resumable) and copy each finished run into the JSON."""
    out = _work(args) / f"stage2_runs{'_' + args.tag if args.tag else ''}"
    cmd = [sys.executable, "-m", "w2v2ser", "train", args.store, "--features", "egemaps", "--recipe", "paper",
           "--seeds", str(n_seeds), "--threads", str(args.threads), "--out", str(out)]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(_common.REPO_ROOT)})
    data = _load(path)
    for seed in range(n_seeds):
        m = json.loads((out / "runs" / f"split__seed{seed}" / "metrics.json").read_text())
        data["runs"][str(seed)] = {"uar": m["uar"], "epochs": m["epochs"]}
    data["command"] = " ".join(cmd)
    _save(path, data)


def train(args: argparse.Namespace) -> None:
    _common.bootstrap_w2v2ser()
    path = _results_path(args, args.variant)
    if args.variant == "stage2":
        run_stage2(args, args.seeds, path)
        return
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    parts = load_arrays(args.store)
    fn = {"keras": run_keras, "keras_reshuffled": run_keras_reshuffled, "head": run_head}[args.variant]
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        data = _load(path)
        if str(seed) in data["runs"]:
            continue
        t0 = time.perf_counter()
        res = fn(parts, seed)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        data = _load(path)
        data["runs"][str(seed)] = res
        data["command"] = _common.command_line()
        _save(path, data)
        print(f"{args.variant} seed {seed}: UAR {100 * res['uar']:.1f} epochs {res['epochs']} ({res['seconds']} s)",
              flush=True)


def report(args: argparse.Namespace) -> None:
    import numpy as np
    from scipy.stats import mannwhitneyu, ttest_ind

    rows, payload = [], {"command": _common.command_line(), "machine": _common.machine_info(), "variants": {}}
    found = {}
    for v in VARIANTS:
        for path in sorted(_work(args).glob(f"fidelity_{v}*.json")):
            found[path.stem.removeprefix("fidelity_")] = _load(path)
    base = found.get("keras")
    base_uar = None if base is None else np.array([r["uar"] for r in base["runs"].values()])
    for name, data in found.items():
        runs = data["runs"]
        if not runs:
            continue
        uar = np.array([r["uar"] for r in runs.values()])
        ep = [r["epochs"] for r in runs.values()]
        p_mw = p_t = float("nan")
        if base_uar is not None and name != "keras" and len(uar) > 1:
            p_mw = float(mannwhitneyu(uar, base_uar, alternative="two-sided").pvalue)
            p_t = float(ttest_ind(uar, base_uar, equal_var=False).pvalue)
        label = LABELS[name] if name in LABELS else LABELS.get(name.rsplit("_", 1)[0], name) + f" [{name}]"
        rows.append([label, f"{100 * uar.mean():.1f} ± {100 * uar.std():.1f}", len(uar),
                     f"{min(ep)}-{max(ep)} (mean {np.mean(ep):.1f})",
                     "" if np.isnan(p_mw) else f"{p_mw:.3f}", "" if np.isnan(p_t) else f"{p_t:.3f}"])
        payload["variants"][name] = {"uar": uar.tolist(), "epochs": ep, "uar_mean": float(uar.mean()),
                                     "uar_std": float(uar.std()), "p_mannwhitney_vs_keras": p_mw,
                                     "p_welch_t_vs_keras": p_t, "command": data.get("command")}
    table = _common.format_table(["training", "UAR (mean ± std)", "seeds", "epochs run",
                                  "Mann-Whitney p vs keras", "Welch t p vs keras"], rows)
    print(table)
    gaps = {n: 100 * (v["uar_mean"] - payload["variants"]["keras"]["uar_mean"])
            for n, v in payload["variants"].items() if n != "keras" and "keras" in payload["variants"]}
    headline = "UAR minus plain-fit baseline (points): " + ", ".join(f"{n} {g:+.1f}" for n, g in gaps.items())
    _common.write_results("bench_fidelity", payload, table, out=args.out, headline=headline)
    print(headline)


def main() -> None:
    args = parse_args()
    if args.report:
        report(args)
    elif args.variant:
        train(args)
    else:
        raise SystemExit("give --variant keras|head|stage2 or --report")


if __name__ == "__main__":
    main()
