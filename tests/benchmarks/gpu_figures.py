"""GPU figures of the model step (issue 12): bare forward and extractor throughput over batch sizes,
precisions, attention kernels and torch.compile, plus the half-precision tolerance against float32.

Run by ``gpu_figures.sh`` (which also runs the pipeline and profile figures through
``bench_extract.py``). Everything is measured in ONE process on the SAME synthetic signals
(RAVDESS-like lengths, 2.8-5.2 s), modes interleaved, median of ``--reps``:

* ``bare``       transformers ``AutoModel(...)(x, output_hidden_states=True)`` under autocast on
                 length-sorted padded batches of ``batch_seconds``: states stay on the device.
* ``bare_cast``  the same with the model's weights cast to the half dtype (no autocast).
* ``extractor``  ``Wav2Vec2Extractor.extract`` on the same signals (masked GroupNorm, all layers
                 cast to float16 on the device, copied to pinned host memory): the library's model step.

Tolerance: the extractor in float32 vs bfloat16 / float16 autocast on the same device and signals,
per layer: max |diff|, and max |diff| / std of the float32 layer. The model has RANDOM weights
(no download is possible); trained weights have other activation ranges, so the figures describe
this code path, not a trained model's error.

``--smoke``: tiny random model, CPU, a few seconds of audio: checks the script runs, nothing more.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

BATCH_SECONDS = (32.0, 64.0, 128.0, 256.0)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny model on CPU, a few seconds of audio")
    p.add_argument("--audio-seconds", type=float, default=1200.0, help="synthetic audio per measurement")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--compile", default="auto", choices=("auto", "yes", "no"),
                   help="measure torch.compile (auto: on CUDA only)")
    p.add_argument("--out", default=None, help="results folder (default tests/benchmarks/results)")
    p.add_argument("--name", default="gpu_forward")
    args = p.parse_args()
    if args.smoke:
        args.audio_seconds, args.reps = 12.0, 1
    return args


def main() -> None:
    args = parse_args()
    how = _common.bootstrap_w2v2ser()
    import numpy as np
    import torch
    import transformers

    import bench_extract
    from w2v2ser.extract import Wav2Vec2Config, Wav2Vec2Extractor

    cuda = torch.cuda.is_available() and not args.smoke
    device = "cuda" if cuda else "cpu"
    cache = Path("/tmp/w2v2ser_gpu_figures")
    model_dir = bench_extract.make_tiny(cache / "tiny") if args.smoke else bench_extract.make_random_base(cache / "base")
    rng = np.random.default_rng(0)
    signals = []
    while sum(map(len, signals)) < args.audio_seconds * 16000:
        signals.append((0.1 * rng.standard_normal(int(rng.uniform(2.8, 5.2) * 16000))).astype(np.float32))
    lengths = [len(s) for s in signals]
    audio_seconds = sum(lengths) / 16000
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    half_dtypes = ["bfloat16", "float16"] if cuda else ["float32"]
    if cuda and not torch.cuda.is_bf16_supported():
        half_dtypes = ["float16"]
    batch_list = BATCH_SECONDS if not args.smoke else (4.0, 8.0)
    print(f"{len(signals)} signals, {audio_seconds:.0f} audio s, device {device}, w2v2ser {how}", flush=True)

    def bare_model(attention: str, cast: str | None = None, compiled: bool = False):
        model = transformers.AutoModel.from_pretrained(str(model_dir), attn_implementation=attention).eval().to(device)
        if cast:
            model = model.to(getattr(torch, cast))
        if compiled:
            for layer in model.encoder.layers:
                layer.forward = torch.compile(layer.forward, dynamic=True)
        return model

    def run_bare(model, batch_seconds: float, precision: str, cast: bool = False) -> float:
        dtype = getattr(torch, precision)
        t0 = time.perf_counter()
        for batch in bench_extract.batches_like_extractor(lengths, batch_seconds):
            padded = torch.zeros(len(batch), max(lengths[i] for i in batch), pin_memory=cuda)
            for row, i in enumerate(batch):
                padded[row, : lengths[i]] = torch.from_numpy(signals[i])
            inputs = padded.to(device, non_blocking=True)
            if cast:
                inputs = inputs.to(dtype)
            with torch.inference_mode(), torch.autocast(device, dtype=dtype,
                                                        enabled=not cast and precision != "float32"):
                out = model(inputs, output_hidden_states=True)
            del out
        sync()
        return audio_seconds / (time.perf_counter() - t0)

    def run_extractor(extractor) -> float:
        t0 = time.perf_counter()
        extractor.extract(signals)
        sync()
        return audio_seconds / (time.perf_counter() - t0)

    def extractor_for(batch_seconds: float, precision: str, attention: str = "sdpa", compiled: bool = False):
        return Wav2Vec2Extractor(Wav2Vec2Config(model=str(model_dir), device=device, batch_seconds=batch_seconds,
                                                precision=precision, attention=attention, compile=compiled))

    def warm(callables) -> float:
        t0 = time.perf_counter()
        for call in callables:
            call()
        return time.perf_counter() - t0

    rows: list[dict] = []

    def measure(label: str, batch_seconds: float, precision: str, attention: str, compiled: bool,
                modes: dict) -> None:
        """Interleave the modes (rotating order), `reps` times; record medians."""
        warm_s = warm(list(modes.values()))  # first call: kernel choice, allocations, compilation
        runs: dict[str, list[float]] = {m: [] for m in modes}
        names = list(modes)
        for rep in range(args.reps):
            for mode in names[rep % len(names):] + names[: rep % len(names)]:
                runs[mode].append(modes[mode]())
        row = {"label": label, "batch_seconds": batch_seconds, "precision": precision, "attention": attention,
               "compile": compiled, "warmup_s": warm_s, "runs": runs,
               **{f"{m}_audio_s_per_s": float(np.median(v)) for m, v in runs.items()}}
        if "bare" in runs and "extractor" in runs:
            row["extractor_vs_bare"] = float(np.median([e / b for e, b in zip(runs["extractor"], runs["bare"])]))
        rows.append(row)
        print(f"{label:10s} batch {batch_seconds:5.0f} s {precision:8s} {attention:5s} compile={compiled!s:5s} " +
              "  ".join(f"{m} {row[f'{m}_audio_s_per_s']:8.1f}" for m in runs) +
              (f"  extractor/bare {row['extractor_vs_bare']:.3f}" if "extractor_vs_bare" in row else ""), flush=True)
        if cuda:
            torch.cuda.empty_cache()

    started = time.perf_counter()
    sdpa = bare_model("sdpa")
    for precision in half_dtypes:
        cast = bare_model("sdpa", cast=precision) if precision != "float32" else None
        for batch_seconds in batch_list:
            extractor = extractor_for(batch_seconds, precision)
            modes = {"bare": lambda b=batch_seconds, p=precision: run_bare(sdpa, b, p),
                     "extractor": lambda e=extractor: run_extractor(e)}
            if cast is not None:
                modes["bare_cast"] = lambda b=batch_seconds, p=precision, m=cast: run_bare(m, b, p, cast=True)
            measure("sweep", batch_seconds, precision, "sdpa", False, modes)
            del extractor
        del cast
    tolerance: dict = {}

    def save(stage: str) -> None:
        """Write what is measured so far (a later stage may time out)."""
        gpu = None
        if cuda:
            props = torch.cuda.get_device_properties(0)
            gpu = {"name": torch.cuda.get_device_name(0), "memory_gib": round(props.total_memory / 2**30, 1),
                   "cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported(),
                   "max_memory_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        payload = {
            "benchmark": "gpu_forward",
            "command": _common.command_line(),
            "config": {"device": device, "gpu": gpu, "audio_seconds": audio_seconds, "signals": len(signals),
                       "reps": args.reps, "smoke": args.smoke,
                       "model": "tiny random wav2vec2 (smoke)" if args.smoke else
                       "random full-size wav2vec2-base (transformers Wav2Vec2Config() defaults)"},
            "machine": _common.machine_info(["torch", "transformers", "numpy"]),
            "rows": rows,
            "best_batch_seconds": best_batch,
            "best_precision": half_dtypes[0],
            "tolerance_vs_float32": tolerance,
            "total_benchmark_seconds": time.perf_counter() - started,
            "stages_done": stage,
        }
        table_rows = [[r["label"], r["batch_seconds"], r["precision"], r["attention"], r["compile"],
                       r.get("bare_audio_s_per_s", math.nan), r.get("bare_cast_audio_s_per_s", math.nan),
                       r.get("extractor_audio_s_per_s", math.nan), r.get("extractor_vs_bare", math.nan), r["warmup_s"]]
                      for r in rows]
        table = _common.format_table(["what", "batch s", "precision", "attention", "compile", "bare audio s/s",
                                      "bare_cast audio s/s", "extractor audio s/s", "extractor / bare", "warm-up s"],
                                     table_rows)
        headline = (f"headline: best bare {max(r.get('bare_audio_s_per_s', 0) for r in rows):.0f} audio s/s; at "
                    f"{best_batch:g} s {half_dtypes[0]}: extractor {best['extractor_audio_s_per_s']:.0f} audio s/s = "
                    f"{best['extractor_vs_bare']:.3f} of bare ({device})")
        notes = [f"tolerance {k}: worst layer max|diff|/std {v['worst_max_abs_over_std']:.4f}, "
                 f"mean|diff|/std {v['worst_mean_abs_over_std']:.5f}" for k, v in tolerance.items()]
        print()
        print(table)
        for line in notes:
            print(line)
        path = _common.write_results(args.name, payload, table, out=args.out, headline=headline, notes=notes)
        print(f"results: {path}")
        print(headline)

    best = max((r for r in rows if r["label"] == "sweep" and r["precision"] == half_dtypes[0]),
               key=lambda r: r["extractor_audio_s_per_s"])
    best_batch, precision = best["batch_seconds"], half_dtypes[0]
    save("sweep")
    # Half-precision tolerance against float32 on the same device and signals.
    probe = signals[: min(len(signals), 40)]
    reference = extractor_for(best_batch, "float32")
    reference.config.dtype = "float32"
    # True float32: cuDNN convolutions default to TF32 on Ampere and later.
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    full = reference.extract(probe)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    for precision_name in half_dtypes:
        if precision_name == "float32" and cuda:
            continue  # (the smoke run on CPU compares float32 with itself: it only checks the code runs)
        for out_dtype in ("float32", "float16"):
            other = extractor_for(best_batch, precision_name)
            other.config.dtype = out_dtype
            halves = other.extract(probe)
            layers = full[0].shape[1]
            per_layer = []
            for k in range(layers):
                a = np.concatenate([f[:, k].astype(np.float64) for f in full])
                b = np.concatenate([h[:, k].astype(np.float64) for h in halves])
                diff = np.abs(a - b)
                per_layer.append({"layer": k, "max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                                  "std_float32": float(a.std()), "max_abs_over_std": float(diff.max() / a.std()),
                                  "mean_abs_over_std": float(diff.mean() / a.std())})
            tolerance[f"{precision_name}_compute_{out_dtype}_output"] = {
                "worst_max_abs_over_std": max(p["max_abs_over_std"] for p in per_layer),
                "worst_mean_abs_over_std": max(p["mean_abs_over_std"] for p in per_layer),
                "per_layer": per_layer}
            print(f"tolerance {precision_name} compute, {out_dtype} output vs float32: worst layer max|diff|/std "
                  f"{tolerance[f'{precision_name}_compute_{out_dtype}_output']['worst_max_abs_over_std']:.4f}, "
                  f"mean|diff|/std {tolerance[f'{precision_name}_compute_{out_dtype}_output']['worst_mean_abs_over_std']:.5f}",
                  flush=True)
    save("tolerance")
    eager = bare_model("eager")
    measure("eager", best_batch, precision, "eager", False,
            {"bare": lambda m=eager: run_bare(m, best_batch, precision),
             "extractor": lambda e=extractor_for(best_batch, precision, "eager"): run_extractor(e)})
    del eager
    save("eager")  # torch.compile's warm-up may run past the step's timeout
    if args.compile == "yes" or (args.compile == "auto" and cuda):
        compiled = bare_model("sdpa", compiled=True)
        measure("compile", best_batch, precision, "sdpa", True,
                {"bare": lambda: run_bare(compiled, best_batch, precision),
                 "extractor": lambda e=extractor_for(best_batch, precision, compiled=True): run_extractor(e)})
        del compiled

    save("all")


if __name__ == "__main__":
    main()
