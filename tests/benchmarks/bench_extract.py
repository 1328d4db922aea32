"""Stage 1 throughput: full extraction pipeline vs the bare wav2vec2 forward pass vs naive code.

All figures are audio seconds per wall second, measured in ONE process on the SAME audio, with the
modes interleaved (the order rotates every repetition) so machine load hits all of them alike:

* ``bare``       transformers ``Wav2Vec2Model(..., output_hidden_states=True)`` on pre-decoded,
                 length-sorted, padded batches of ``--batch-seconds`` (same batching as the extractor),
                 no host copy: the ceiling any pipeline can reach.
* ``extractor``  ``Wav2Vec2Extractor.extract`` on the same pre-decoded signals (masked GroupNorm,
                 all 13 layers copied to host): the library's model step alone.
* ``pipeline``   ``extract_corpus`` with wav2vec2 only: probe, plan, decode thread, model, writer
                 thread (float16 cast, statistics, crc32, Zarr writes, fsynced journal), finalize.
* ``pipeline_all`` the same with wav2vec2 + eGeMAPS + spectrogram.
* ``naive``      earlier research code: one utterance at a time (decode, forward, stack the 13
                 hidden states) and one ``.npy`` file (float32) per utterance.
* ``write``      raw store write throughput: ``StoreWriter.write_utterance`` of ready-made float32
                 [T, 13, 768] frames of the same lengths (MB/s of stored float16 bytes, audio s/s).
* ``profile``    (``--profile``) the pipeline with the chosen features once more, with the stage
                 callback on: busy seconds per stage (decode, host_to_device, forward,
                 device_to_host, store_write, cpu_feature:NAME) and their share of the wall time.
                 The device is synchronised between the model's stages while profiling, so its
                 wall time is not a throughput figure; the share says which stage bounds the run.

``--synthetic N`` replaces RAVDESS by N generated FLAC files (white noise, 2.8-5.2 s like RAVDESS):
for machines without the corpus. ``--tiny`` uses a tiny random model (smoke runs only).

The model is a FULL-SIZE randomly initialised wav2vec2-base (transformers ``Wav2Vec2Config()``
defaults, saved with ``save_pretrained``), i.e. exactly the compute of facebook/wav2vec2-base.

Run from the repo root (no install needed; the script maps ``w2v2ser.*`` onto the repo folders)::

    python3 tests/benchmarks/bench_extract.py --quick
    python3 tests/benchmarks/bench_extract.py --device cuda --files 60 --repeat 10 --features wav2vec2

The last printed line is the headline ratio (pipeline / bare).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ALL_MODES = ("bare", "extractor", "pipeline", "pipeline_all", "naive", "write", "profile")
FRAME_RATE = 50  # wav2vec2 frames per second (49.95)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run (< 60 s on 2 cores): 2 short files, 1 repetition")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--batch-seconds", type=float, default=32.0, help="padded audio seconds per forward batch")
    p.add_argument("--files", type=int, default=12, help="RAVDESS files (spread over actors and emotions)")
    p.add_argument("--repeat", type=int, default=1,
                   help="list every file this many times as distinct utterances (more audio without more files)")
    p.add_argument("--reps", type=int, default=2, help="repetitions of every mode (interleaved)")
    p.add_argument("--features", default="all",
                   help="'wav2vec2' (imports no opensmile), 'all' (wav2vec2, egemaps, spectrogram) or a comma "
                        "list starting with wav2vec2, e.g. wav2vec2,egemaps (the features of pipeline_all/profile)")
    p.add_argument("--precision", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                   help="compute precision of the extractor AND the bare forward (autocast)")
    p.add_argument("--attention", default="sdpa", choices=("sdpa", "eager"))
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer layers (extractor and bare)")
    p.add_argument("--decode-workers", type=int, default=None, help="pipeline decode processes (default: library's)")
    p.add_argument("--cpu-workers", type=int, default=1, help="parallel instances of each CPU feature in the pipeline")
    p.add_argument("--profile", action="store_true", help="add mode 'profile' (per-stage busy seconds)")
    p.add_argument("--synthetic", type=int, default=0, help="N generated FLAC files instead of RAVDESS")
    p.add_argument("--tiny", action="store_true", help="tiny random wav2vec2 (smoke runs; figures mean nothing)")
    p.add_argument("--modes", default=None, help=f"comma list out of {','.join(ALL_MODES)} (default: all that fit --features)")
    p.add_argument("--audio-dir", default="/work/shared/data/ravdess", help="RAVDESS root (speech/ and song/)")
    p.add_argument("--model", default=None, help="local save_pretrained wav2vec2 directory (default: a random full-size base)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--write-threads", default="1",
                   help="comma list of writer thread counts for mode 'write' (each thread its own StoreWriter "
                        "and journal, as parallel workers use the store), e.g. 1,4,8")
    p.add_argument("--workdir", default=None, help="where stores and .npy files are written (default: a temp dir)")
    p.add_argument("--out", default=None, help="results folder (default tests/benchmarks/results; with --quick "
                                               "or --tiny a new temporary folder)")
    p.add_argument("--name", default=None, help="result file name (default bench_extract[_quick|_<device>])")
    args = p.parse_args(argv)
    if args.quick:
        args.files, args.reps, args.repeat = 2, 1, 1
    args.out = _common.quick_out(args.out, args.quick or args.tiny, "bench_extract")
    return args


def select_files(root: str, count: int, quick: bool) -> list:
    """`count` RAVDESS utterances spread evenly over the sorted manifest (speech and song, all actors)."""
    from w2v2ser.extract import read_ravdess

    utterances = list(read_ravdess(root).utterances)
    if quick:  # the shortest files keep the smoke run short
        import soundfile as sf

        utterances = sorted(utterances[::50], key=lambda u: sf.info(u.path).frames)
        return utterances[:count]
    step = max(1, len(utterances) // count)
    return utterances[::step][:count]


def synthetic_utterances(folder: Path, count: int) -> list:
    """`count` FLAC files of white noise, 2.8-5.2 s (RAVDESS-like), 4 speakers."""
    import numpy as np
    import soundfile as sf

    from w2v2ser.store import Utterance

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for number in range(count):
        path = folder / f"syn{number:05d}.flac"
        if not path.exists():
            seconds = rng.uniform(2.8, 5.2)
            sf.write(path, (0.1 * rng.standard_normal(int(seconds * 16000))).astype("float32"), 16000)
        out.append(Utterance(id=path.stem, path=str(path), speaker=f"spk{number % 4}", label="neutral"))
    return out


def make_tiny(directory: Path) -> Path:
    """A tiny random wav2vec2 (tests/tiny_models.py) for smoke runs."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_models import save_tiny_wav2vec2

    if not (directory / "config.json").exists():
        save_tiny_wav2vec2(directory)
    return directory


def repeat_utterances(utterances: list, times: int) -> list:
    from dataclasses import replace

    if times <= 1:
        return list(utterances)
    return [replace(u, id=f"{u.id}-r{k}") for k in range(times) for u in utterances]


def make_random_base(directory: Path) -> Path:
    """A full-size wav2vec2-base with random weights (same FLOPs as the pre-trained one)."""
    import torch
    import transformers

    if not (directory / "config.json").exists():
        torch.manual_seed(0)
        model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config()).eval()
        model.save_pretrained(directory)
    return directory


class Busy:
    """Thread-safe accumulator of busy seconds per named stage (the pipeline's on_stage callback)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            self.calls[name] = self.calls.get(name, 0) + 1

    __call__ = add

    def reset(self) -> None:
        with self._lock:
            self.seconds.clear()
            self.calls.clear()


def batches_like_extractor(lengths: list[int], batch_seconds: float) -> list[list[int]]:
    """Same grouping as Wav2Vec2Extractor._plan_batches: longest first, padded size <= budget."""
    budget = batch_seconds * 16000
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    out, start = [], 0
    while start < len(order):
        size = max(1, int(budget // max(lengths[order[start]], 1)))
        out.append(order[start:start + size])
        start += size
    return out


def feature_names(text: str) -> list[str]:
    if text == "all":
        return ["wav2vec2", "egemaps", "spectrogram"]
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or names[0] != "wav2vec2" or any(n not in ("wav2vec2", "egemaps", "spectrogram") for n in names):
        sys.exit(f"--features must be 'wav2vec2', 'all' or a comma list starting with wav2vec2, got {text!r}")
    return names


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    how = _common.bootstrap_w2v2ser()
    import numpy as np
    import torch
    import transformers

    from w2v2ser.extract import Wav2Vec2Config, Wav2Vec2Extractor, build_extractor, extract_corpus, read_audio
    from w2v2ser.store import StoreWriter

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device.startswith("cuda")
    names = feature_names(args.features)
    several = len(names) > 1
    modes = [m.strip() for m in args.modes.split(",")] if args.modes else [
        m for m in ALL_MODES if (several or m != "pipeline_all") and m != "profile"]
    if args.profile and "profile" not in modes:
        modes.append("profile")
    unknown = [m for m in modes if m not in ALL_MODES]
    if unknown:
        sys.exit(f"unknown --modes {unknown}; expected some of {ALL_MODES}")
    if "pipeline_all" in modes and not several:
        sys.exit("mode pipeline_all needs several --features (e.g. all, or wav2vec2,egemaps)")

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="w2v2ser-bench-extract-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.get("W2V2SER_BENCH_CACHE", "/work/bench_cache" if Path("/work").is_dir() else work))
    if args.model:
        model_dir = Path(args.model)
    elif args.tiny:
        model_dir = make_tiny(cache / "w2v2tiny_random")
    else:
        model_dir = make_random_base(cache / "w2v2base_random")

    base = synthetic_utterances(work / "synthetic_audio", args.synthetic) if args.synthetic else \
        select_files(args.audio_dir, args.files, args.quick)
    utterances = repeat_utterances(base, args.repeat)
    signals = {u.path: read_audio(u.path) for u in base}
    lengths = [len(signals[u.path]) for u in utterances]
    audio_seconds = sum(lengths) / 16000.0
    print(f"{len(utterances)} utterances ({len(base)} files x {args.repeat}), {audio_seconds:.1f} audio s, "
          f"device {device}, batch {args.batch_seconds:g} s, modes {modes}, w2v2ser {how}", flush=True)

    busy = Busy()
    w2v2 = Wav2Vec2Extractor(Wav2Vec2Config(
        model=str(model_dir), device=device, batch_seconds=args.batch_seconds, precision=args.precision,
        attention=args.attention, compile=args.compile))
    compute = w2v2.compute_dtype()
    precision = f"{str(compute).replace('torch.', '')} {'autocast' if compute != torch.float32 else ''}".strip()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    extractors_all = [w2v2] + [build_extractor(n, {}) for n in names[1:]]

    hf = transformers.AutoModel.from_pretrained(str(model_dir), attn_implementation=args.attention).eval().to(device)
    if args.compile:
        for layer in hf.encoder.layers:
            layer.forward = torch.compile(layer.forward, dynamic=True)

    def autocast():
        return torch.autocast(device.split(":")[0], dtype=compute, enabled=compute != torch.float32)

    # Warm up both models (first-call allocations, kernel selection, compilation) before any timing.
    warm_rng = np.random.default_rng(0)
    warm = [(0.1 * warm_rng.standard_normal(16000 * s)).astype(np.float32) for s in (2, 3, 5)]
    w2v2.extract(warm)
    with torch.inference_mode(), autocast():
        for x in warm:
            hf(torch.from_numpy(x)[None].to(device), output_hidden_states=True)
    sync()

    def run_bare() -> dict:
        ordered = [signals[u.path] for u in utterances]
        t0 = time.perf_counter()
        for batch in batches_like_extractor(lengths, args.batch_seconds):
            longest = max(lengths[i] for i in batch)
            padded = torch.zeros(len(batch), longest, pin_memory=cuda)
            for r, i in enumerate(batch):
                padded[r, :lengths[i]] = torch.from_numpy(ordered[i])
            with torch.inference_mode(), autocast():
                out = hf(padded.to(device, non_blocking=True), output_hidden_states=True)
            del out
        sync()
        return {"wall_s": time.perf_counter() - t0}

    def run_extractor() -> dict:
        ordered = [signals[u.path] for u in utterances]
        t0 = time.perf_counter()
        # The pipeline hands the model ~batch_seconds of audio at a time, sorted by length.
        order = sorted(range(len(ordered)), key=lambda i: lengths[i])
        chunk, used = [], 0
        for i in order:
            if chunk and used + lengths[i] > args.batch_seconds * 16000:
                w2v2.extract([ordered[j] for j in chunk])
                chunk, used = [], 0
            chunk.append(i)
            used += lengths[i]
        if chunk:
            w2v2.extract([ordered[j] for j in chunk])
        sync()
        return {"wall_s": time.perf_counter() - t0}

    def run_pipeline(extractors: list, tag: str, profile: bool = False, subset: list | None = None) -> dict:
        store = work / f"{tag}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        busy.reset()
        chosen = utterances if subset is None else subset
        t0 = time.perf_counter()
        summary = extract_corpus(chosen, store, extractors=extractors, progress=False,
                                 decode_workers=args.decode_workers, cpu_workers=args.cpu_workers,
                                 on_stage=busy if profile else None)
        wall = time.perf_counter() - t0
        if summary.extracted != len(chosen) or not summary.complete:
            raise RuntimeError(f"pipeline {tag}: extracted {summary.extracted}/{len(utterances)}, "
                               f"failed {summary.failed[:3]}")
        size = _du(store)
        shutil.rmtree(store, ignore_errors=True)
        out = {"wall_s": wall, "store_bytes": size}
        if profile:
            out["busy_s"] = dict(busy.seconds)
            out["share_of_wall"] = {k: v / wall for k, v in busy.seconds.items()}
        return out

    def run_naive() -> dict:
        folder = work / "naive_npy"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        t0 = time.perf_counter()
        for u in utterances:
            x = read_audio(u.path)
            with torch.inference_mode(), autocast():
                out = hf(torch.from_numpy(x)[None].to(device), output_hidden_states=True)
            # Earlier research code: all hidden states stacked, one float32 .npy per utterance.
            frames = torch.stack(out.hidden_states, dim=0)[:, 0].float().cpu().numpy()
            np.save(folder / f"{u.id}.npy", frames)
        wall = time.perf_counter() - t0
        size = _du(folder)
        shutil.rmtree(folder, ignore_errors=True)
        return {"wall_s": wall, "store_bytes": size}

    # Frames of the write benchmark: random float32 like the extractor's output, made once.
    rng = np.random.default_rng(1)
    frame_counts = [w2v2.max_frames(n) for n in lengths]
    spec = w2v2.feature_spec()
    distinct = sorted(set(frame_counts))
    frames_by_count = {t: rng.standard_normal((t, spec.layers, spec.dim), dtype=np.float32) for t in distinct} \
        if "write" in modes else {}

    def run_write(threads: int = 1) -> dict:
        from concurrent.futures import ThreadPoolExecutor

        store = work / "write.zarr"
        shutil.rmtree(store, ignore_errors=True)
        writer = StoreWriter(store)
        rows = writer.plan(utterances, num_samples=lengths, features=[spec],
                           capacities={"wav2vec2": frame_counts})
        writers = [writer] + [StoreWriter(store, journal=f"bench-{k}") for k in range(1, threads)]
        jobs = list(zip(rows, frame_counts, lengths))

        def write_part(k: int) -> None:
            for row, t, n in jobs[k::threads]:
                writers[k].write_utterance(row, {"wav2vec2": frames_by_count[t]}, audio_sha256="0" * 64,
                                           duration=n / 16000)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(write_part, range(threads)))
        wall = time.perf_counter() - t0
        for w in writers:
            w.close()
        size = _du(store / "features" / "wav2vec2")
        shutil.rmtree(store, ignore_errors=True)
        stored_mb = sum(frame_counts) * spec.layers * spec.dim * 2 / 1e6
        return {"wall_s": wall, "stored_float16_mb": stored_mb, "mb_per_s": stored_mb / wall, "data_bytes_on_disk": size}

    runners = {
        "bare": run_bare,
        "extractor": run_extractor,
        "pipeline": lambda: run_pipeline([w2v2], "pipeline"),
        "pipeline_all": lambda: run_pipeline(extractors_all, "pipeline_all"),
        "profile": lambda: run_pipeline(extractors_all, "profile", profile=True),
        "naive": run_naive,
    }
    if any(m in modes for m in ("pipeline", "pipeline_all", "profile")):
        # Start the decode processes and openSMILE workers (kept for the process's life) untimed.
        run_pipeline(extractors_all, "warm", subset=utterances[:8])
    # One untimed call at the timed batch shapes (the warm-up above used single signals): otherwise rep 0's
    # first model mode pays for kernel choice and allocations at these shapes, which flattered pipeline/bare.
    warmup_s = {m: runners[m]()["wall_s"] for m in ("bare", "extractor") if m in modes}
    write_threads = [int(v) for v in args.write_threads.split(",")]
    if "write" in modes:
        position = modes.index("write")
        labels = [f"write_t{k}" if k != 1 else "write" for k in write_threads]
        modes = modes[:position] + labels + modes[position + 1:]
        for k, label in zip(write_threads, labels):
            runners[label] = (lambda k=k: run_write(k))
    results: dict[str, list[dict]] = {m: [] for m in modes}
    started = time.perf_counter()
    timed = [m for m in modes if m != "profile"]
    for rep in range(args.reps):
        order = timed[rep % len(timed):] + timed[:rep % len(timed)] if timed else []  # rotate: no mode always first
        if "profile" in modes and rep == 0:
            order.append("profile")  # once: its synchronisations make it no throughput figure
        for mode in order:
            gc_collect()
            r = runners[mode]()
            r["rep"], r["load_average"] = rep, _common.load_average()
            r["audio_s_per_s"] = audio_seconds / r["wall_s"]
            results[mode].append(r)
            print(f"rep {rep} {mode:13s} {r['wall_s']:8.2f} s  {r['audio_s_per_s']:8.2f} audio s/s  "
                  f"load {r['load_average'][0]}", flush=True)

    def median(mode: str, key: str = "audio_s_per_s") -> float:
        return float(np.median([r[key] for r in results[mode]])) if results.get(mode) else float("nan")

    def paired_ratio(a: str, b: str) -> float:
        """Median over repetitions of a/b throughput measured in the same repetition."""
        if not results.get(a) or not results.get(b):
            return float("nan")
        return float(np.median([x["audio_s_per_s"] / y["audio_s_per_s"] for x, y in zip(results[a], results[b])]))

    summary = {m: {"audio_s_per_s_median": median(m), "wall_s_median": median(m, "wall_s")} for m in modes}
    ratios = {
        "pipeline_w2v2_vs_bare": paired_ratio("pipeline", "bare"),
        "pipeline_all_vs_bare": paired_ratio("pipeline_all", "bare"),
        "extractor_vs_bare": paired_ratio("extractor", "bare"),
        "pipeline_w2v2_vs_extractor": paired_ratio("pipeline", "extractor"),
        "pipeline_w2v2_vs_naive": paired_ratio("pipeline", "naive"),
        "pipeline_all_vs_naive": paired_ratio("pipeline_all", "naive"),
        "naive_vs_bare": paired_ratio("naive", "bare"),
        "write_vs_bare": paired_ratio("write", "bare"),
        **{f"{m}_vs_bare": paired_ratio(m, "bare") for m in modes if m.startswith("write_t")},
    }
    for m in modes:
        if m.startswith("write"):
            summary[m]["mb_per_s_median"] = median(m, "mb_per_s")
            # MB of stored frames per audio second: 1.0 for wav2vec2-base's 13 x 768 float16, not for others
            summary[m]["mb_per_audio_s"] = results[m][0]["stored_float16_mb"] / audio_seconds
    profile = None
    if results.get("profile"):
        run = results["profile"][0]
        profile = {"features": names, "wall_s": run["wall_s"], "busy_s": run["busy_s"],
                   "share_of_wall": run["share_of_wall"],
                   "bound_by": max(run["busy_s"], key=run["busy_s"].get) if run["busy_s"] else None}

    gpu = None
    if cuda:
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": torch.cuda.get_device_name(0), "memory_gib": round(props.total_memory / 2**30, 1),
               "cuda": torch.version.cuda, "max_memory_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    info = _common.machine_info(["torch", "transformers", "numpy", "zarr", "numcodecs", "soundfile", "soxr", "opensmile"])
    info["torch_threads"] = torch.get_num_threads()
    payload = {
        "benchmark": "bench_extract",
        "command": _common.command_line(),
        "config": {"device": device, "gpu": gpu, "precision": precision, "attention": args.attention,
                   "compile": args.compile, "batch_seconds": args.batch_seconds,
                   "decode_workers": args.decode_workers, "cpu_workers": args.cpu_workers,
                   "files": len(base), "repeat": args.repeat, "utterances": len(utterances),
                   "audio_seconds": audio_seconds, "reps": args.reps, "features": names, "modes": modes,
                   "audio": f"synthetic {args.synthetic} FLAC" if args.synthetic else args.audio_dir,
                   "model": "tiny random wav2vec2 (smoke only)" if args.tiny and not args.model else (
                       str(model_dir) if args.model else
                       "random full-size wav2vec2-base (transformers Wav2Vec2Config() defaults)"),
                   "naive_format": "one float32 .npy [L+1, T, H] per utterance",
                   "quick": args.quick},
        "machine": info,
        "summary": summary,
        "ratios": ratios,
        "profile": profile,
        "runs": results,
        "warmup_s": warmup_s,
        "total_benchmark_seconds": time.perf_counter() - started,
    }
    rows = []
    for m in modes:
        row = [m, summary[m]["audio_s_per_s_median"], summary[m]["wall_s_median"],
               paired_ratio(m, "bare") if "bare" in modes and m != "profile" else float("nan")]
        rows.append(row)
    table = _common.format_table(["mode", "audio s/s (median)", "wall s (median)", "ratio vs bare (paired median)"], rows)
    extra = []
    for m in modes:
        if m.startswith("write"):
            extra.append(f"raw store write ({m}): {summary[m]['mb_per_s_median']:.1f} MB/s of float16 frames "
                         f"({summary[m]['mb_per_audio_s']:.3g} MB per audio second -> "
                         f"{summary[m]['audio_s_per_s_median']:.1f} audio s/s)")
    if profile:
        extra.append(f"profile ({'+'.join(names)}), wall {profile['wall_s']:.2f} s; busy seconds per stage "
                     f"(share of wall; stages overlap): " + ", ".join(
                         f"{k} {v:.2f} ({profile['share_of_wall'][k]:.0%})"
                         for k, v in sorted(profile["busy_s"].items(), key=lambda kv: -kv[1]))
                     + f"; bound by {profile['bound_by']}")
    extra.append(f"device {device}{' ' + gpu['name'] if gpu else ''}, precision {precision}, attention "
                 f"{args.attention}, compile {args.compile}, batch {args.batch_seconds:g} s")
    print()
    print(table)
    for line in extra:
        print(line)
    headline_mode = "pipeline" if "pipeline" in modes else modes[0]
    headline = (f"headline: wav2vec2-only pipeline / bare forward = {ratios['pipeline_w2v2_vs_bare']:.3f} "
                f"(goal >= 0.9; {summary.get(headline_mode, {}).get('audio_s_per_s_median', float('nan')):.2f} audio s/s, "
                f"{device}); extractor / bare = {ratios['extractor_vs_bare']:.3f}; all features / bare = "
                f"{ratios['pipeline_all_vs_bare']:.3f}; pipeline / naive = {ratios['pipeline_w2v2_vs_naive']:.2f}")
    name = args.name or ("bench_extract_quick" if args.quick else f"bench_extract_{device.split(':')[0]}")
    path = _common.write_results(name, payload, table, out=args.out, headline=headline, notes=extra)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(f"results: {path}")
    print(headline)
    return payload


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def gc_collect() -> None:
    import gc

    gc.collect()


def _du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


if __name__ == "__main__":
    main()
