"""Cost growth: extraction wall time and training epoch time at 1x, 2x and 4x corpus size.

* Extraction: ``extract_corpus`` (wav2vec2, full-size random base model, CPU by default) over a
  base set of RAVDESS files listed 1, 2 and 4 times (distinct utterance ids), in that order, after
  one untimed run of the base set (the first run of a process also pays one-off start costs).
* Training: one Dense-head epoch on ``wav2vec2:all`` (after a first, compiling epoch) on synthetic
  RAVDESS-shaped stores of 1x, 2x and 4x the base audio seconds (generated once, cached; see
  bench_train.py), each size in a fresh process.

Per-unit cost = wall seconds per audio second; linear growth means the 2x/1x and 4x/1x per-unit
ratios stay near 1 (below 1 when fixed start-up costs are amortised).

    python3 tests/benchmarks/bench_scaling.py --quick

The last printed line is the headline (per-unit cost ratios at 4x).
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
import bench_train  # noqa: E402

FACTORS = (1, 2, 4)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 base file, 90 s base training store")
    p.add_argument("--files", type=int, default=4, help="base RAVDESS files for extraction")
    p.add_argument("--train-seconds", type=float, default=600.0, help="base audio seconds of the training store")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--audio-dir", default="/work/shared/data/ravdess")
    p.add_argument("--cache", default=str(bench_train.DEFAULT_CACHE))
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--out", default=None, help="results folder (default tests/benchmarks/results; with --quick a "
                                               "new temporary folder)")
    args = p.parse_args()
    if args.quick:
        args.files, args.train_seconds = 1, 90.0
    args.out = _common.quick_out(args.out, args.quick, "bench_scaling")
    return args


def main() -> None:
    args = parse_args()
    how = _common.bootstrap_w2v2ser()
    import numpy as np

    import bench_extract
    from w2v2ser.extract import Wav2Vec2Config, Wav2Vec2Extractor, extract_corpus

    cache = Path(args.cache)
    model_dir = bench_extract.make_random_base(cache / "w2v2base_random")
    base = bench_extract.select_files(args.audio_dir, args.files, args.quick)
    device = args.device
    extractor = Wav2Vec2Extractor(Wav2Vec2Config(model=str(model_dir), device=device))
    extractor.extract([np.zeros(32000, np.float32)])  # load and warm the model outside the timings
    work = Path(tempfile.mkdtemp(prefix="w2v2ser-bench-scaling-"))
    t0 = time.perf_counter()
    extract_corpus(base, work / "warm.zarr", extractors=[extractor], progress=False)
    warmup_s = time.perf_counter() - t0
    shutil.rmtree(work / "warm.zarr", ignore_errors=True)
    print(f"untimed warm-up run: {len(base)} utts, {warmup_s:.1f} s", flush=True)
    extraction = {}
    for factor in FACTORS:
        utts = bench_extract.repeat_utterances(base, factor)
        store = work / f"x{factor}.zarr"
        t0 = time.perf_counter()
        summary = extract_corpus(utts, store, extractors=[extractor], progress=False)
        wall = time.perf_counter() - t0
        shutil.rmtree(store, ignore_errors=True)
        extraction[factor] = {"utterances": len(utts), "audio_seconds": summary.audio_seconds, "wall_s": wall,
                              "s_per_audio_s": wall / summary.audio_seconds, "load_average": _common.load_average()}
        print(f"extract x{factor}: {len(utts)} utts, {summary.audio_seconds:.1f} audio s, {wall:.1f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    training = {}
    if not args.skip_train:
        for factor in FACTORS:
            seconds = args.train_seconds * factor
            path = bench_train.ensure_store(cache / ("quick" if args.quick else ""), seconds, 2)
            env = dict(os.environ, PYTHONPATH=str(_common.REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
            proc = subprocess.run([sys.executable, bench_train.__file__, "--child", str(path), "--epochs", "2"],
                                  capture_output=True, text=True, env=env)
            if proc.returncode:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"training child x{factor} failed")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            epoch = float(np.mean(r["epoch_seconds"][1:] or r["epoch_seconds"]))
            training[factor] = {"audio_seconds": seconds, "train_utterances": r["utterances_train"],
                                "epoch_s": epoch, "s_per_audio_s": epoch / seconds, "peak_rss_mb": r["peak_rss_mb"],
                                "load_average": r["load_average"]}
            print(f"train x{factor}: {seconds:.0f} audio s, epoch {epoch:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB",
                  flush=True)

    ratios = {}
    for name, data in (("extract", extraction), ("train_epoch", training)):
        if data:
            for f in FACTORS[1:]:
                ratios[f"{name}_per_unit_x{f}_vs_x1"] = data[f]["s_per_audio_s"] / data[1]["s_per_audio_s"]
    rows = [["extract", f, extraction[f]["audio_seconds"], extraction[f]["wall_s"], extraction[f]["s_per_audio_s"],
             extraction[f]["s_per_audio_s"] / extraction[1]["s_per_audio_s"]] for f in FACTORS]
    rows += [["train epoch", f, training[f]["audio_seconds"], training[f]["epoch_s"], training[f]["s_per_audio_s"],
              training[f]["s_per_audio_s"] / training[1]["s_per_audio_s"]] for f in FACTORS if training]
    table = _common.format_table(["stage", "size", "audio s", "wall s", "s per audio s", "per-unit vs 1x"], rows)
    info = _common.machine_info(["numpy", "torch", "zarr"])
    payload = {"benchmark": "bench_scaling", "command": _common.command_line(), "machine": info,
               "config": {"files": args.files, "train_seconds_base": args.train_seconds, "device": device,
                          "quick": args.quick, "w2v2ser": how, "extract_warmup_s": warmup_s,
                          "model": "random full-size wav2vec2-base"},
               "extraction": extraction, "training": training, "ratios": ratios}
    headline = ("headline: per-unit cost 4x/1x: extraction "
                f"{ratios.get('extract_per_unit_x4_vs_x1', float('nan')):.2f}, training epoch "
                f"{ratios.get('train_epoch_per_unit_x4_vs_x1', float('nan')):.2f} (linear = ~1)")
    print()
    print(table)
    notes = ["extraction sizes list the same base files 1, 2, 4 times (distinct ids); training stores are synthetic",
             "training epoch = mean of epochs 2.. (the first also compiles), includes the validation pass"]
    path = _common.write_results("bench_scaling_quick" if args.quick else "bench_scaling", payload, table,
                                 out=args.out, headline=headline, notes=notes)
    print(f"results: {path}")
    print(headline)


if __name__ == "__main__":
    main()
