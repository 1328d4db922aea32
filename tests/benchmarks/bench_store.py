"""Feature store reads: Zarr store vs one .npy per utterance vs HDF5, random utterance order.

Synthetic wav2vec2-like data (float16 [T, 13, 768], T drawn like RAVDESS: 2-5 s at 50 frames/s)
plus eGeMAPS-like float32 [2T, 25] is written through ``StoreWriter`` (plan, work units of 64
utterances, finalize); the same arrays go to one ``.npy`` per utterance and feature, and to HDF5 via the
library's ``export_hdf5`` (frames back to back, chunks (128, 1, 768), as a user would get it).

Reads, each in a fresh random utterance order: all 13 layers, one layer (7), eGeMAPS; the
``_batch16`` rows read the store as stage 2 does (``read_batch`` of 16 utterances; the other
formats one file or slice per utterance, as in the rows without the suffix). Every read
pass runs cold (page cache dropped with /proc/sys/vm/drop_caches when permitted, else marked
warm) and then warm; formats are interleaved and the order rotates every repetition.

    python3 tests/benchmarks/bench_store.py --quick

The last printed line is the headline ratios.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

LAYER = 7
FORMATS = ("zarr_store", "npy_per_utterance", "hdf5_export")
READS = ("all_layers", "all_layers_batch16", "one_layer", "one_layer_batch16", "egemaps")
BATCH = 16


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="40 utterances, 1 repetition (< 60 s)")
    p.add_argument("--utterances", type=int, default=400)
    p.add_argument("--reads", type=int, default=None, help="utterances read per pass (default: all)")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--workdir", default=None, help="where the three copies are written (default: a temp dir)")
    p.add_argument("--out", default=None, help="results folder (default tests/benchmarks/results; with --quick a "
                                               "new temporary folder)")
    p.add_argument("--chunk-frames", type=int, default=None,
                   help="frames per inner chunk of the w2v2ser store (default: the store's default)")
    p.add_argument("--no-drop-cache", action="store_true", help="never drop the page cache (warm only)")
    args = p.parse_args()
    if args.quick:
        args.utterances, args.reps = 40, 1
    args.out = _common.quick_out(args.out, args.quick, "bench_store")
    return args


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    args = parse_args()
    how = _common.bootstrap_w2v2ser()
    import h5py
    import numpy as np

    from w2v2ser.store import FeatureSpec, StoreWriter, Utterance, export_hdf5, open_store

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="w2v2ser-bench-store-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = args.utterances
    frames = rng.integers(100, 251, size=n)  # 2-5 s at 50 fps, like RAVDESS
    audio_seconds = float(frames.sum() / 50.0)
    utts = [Utterance(id=f"utt{i:05d}", path=f"/synthetic/{i}.flac", speaker=f"Actor_{i % 24 + 1:02d}",
                      label="neutral", corpus="ravdess") for i in range(n)]
    w2v2 = FeatureSpec(name="wav2vec2", dim=768, layers=13, frame_rate=49.95, dtype="float16",
                       config={"synthetic": True})
    egemaps = FeatureSpec(name="egemaps", dim=25, layers=None, frame_rate=100.0, dtype="float32",
                          config={"synthetic": True})
    print(f"{n} utterances, {audio_seconds:.0f} audio s, w2v2ser {how}, workdir {work}", flush=True)

    def make(i: int) -> tuple:
        r = np.random.default_rng(1000 + i)
        # Smooth-ish frames (random walk over time) in a realistic range, not white noise.
        x = np.cumsum(r.standard_normal((int(frames[i]), 13, 768), dtype=np.float32) * 0.1, axis=0)
        return x.astype(np.float16), r.standard_normal((2 * int(frames[i]), 25), dtype=np.float32)

    store_path, npy_dir, h5_path = work / "store.zarr", work / "npy", work / "export.h5"
    for p in (store_path, npy_dir, h5_path):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    npy_dir.mkdir()
    writer = StoreWriter(store_path, chunk_frames={"wav2vec2": args.chunk_frames} if args.chunk_frames else None)
    rows = writer.plan(utts, num_samples=[int(t) * 320 + 80 for t in frames], features=[w2v2, egemaps],
                       capacities={"wav2vec2": [int(t) for t in frames], "egemaps": [2 * int(t) for t in frames]})
    write_s = {"zarr_store": 0.0, "npy_per_utterance": 0.0}
    units = writer.plan_units([rows[k:k + 64] for k in range(0, n, 64)], ["wav2vec2", "egemaps"])
    for unit in units:
        unit_writer = writer.open_unit(unit)
        for row in unit.rows:
            x, e = make(row)
            t0 = time.perf_counter()
            unit_writer.add(row, {"wav2vec2": x, "egemaps": e}, audio_sha256="0" * 64, duration=frames[row] / 50)
            t1 = time.perf_counter()
            np.save(npy_dir / f"{utts[row].id}.wav2vec2.npy", x)
            np.save(npy_dir / f"{utts[row].id}.egemaps.npy", e)
            write_s["npy_per_utterance"] += time.perf_counter() - t1
            write_s["zarr_store"] += t1 - t0
        t0 = time.perf_counter()
        unit_writer.commit()
        write_s["zarr_store"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    writer.finalize()
    writer.close()
    write_s["zarr_store_finalize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    export_hdf5(store_path, h5_path)
    write_s["hdf5_export"] = time.perf_counter() - t0
    store = open_store(store_path)
    ids = [u.id for u in utts]

    disk = {
        "zarr_store": {"wav2vec2": du(store_path / "features" / "wav2vec2" / "data"),
                       "egemaps": du(store_path / "features" / "egemaps" / "data"), "total": du(store_path)},
        "npy_per_utterance": {"wav2vec2": sum(du(p) for p in npy_dir.glob("*.wav2vec2.npy")),
                              "egemaps": sum(du(p) for p in npy_dir.glob("*.egemaps.npy")), "total": du(npy_dir)},
    }
    with h5py.File(h5_path, "r") as h5:
        h5_w = h5["features/wav2vec2/data"]
        h5_e = h5["features/egemaps/data"]
        disk["hdf5_export"] = {"wav2vec2": int(h5_w.id.get_storage_size()),
                               "egemaps": int(h5_e.id.get_storage_size()), "total": du(h5_path)}
    for fmt in disk:
        disk[fmt]["wav2vec2_bytes_per_audio_s"] = disk[fmt]["wav2vec2"] / audio_seconds
        disk[fmt]["total_bytes_per_audio_s"] = disk[fmt]["total"] / audio_seconds

    h5 = h5py.File(h5_path, "r")
    h5_off = {name: h5[f"features/{name}/offset"][:] for name in ("wav2vec2", "egemaps")}
    h5_len = {name: h5[f"features/{name}/length"][:] for name in ("wav2vec2", "egemaps")}
    row_of = {uid: i for i, uid in enumerate(h5["utterances/id"].asstr()[:])}

    def read(fmt: str, kind: str, uid: str):
        kind = kind.removesuffix("_batch16")
        if fmt == "zarr_store":
            if kind == "all_layers":
                return store.read_utterance(uid, "wav2vec2")
            if kind == "one_layer":
                return store.read_utterance(uid, "wav2vec2", layers=[LAYER])
            return store.read_utterance(uid, "egemaps")
        if fmt == "npy_per_utterance":
            if kind == "all_layers":
                return np.load(npy_dir / f"{uid}.wav2vec2.npy")
            if kind == "one_layer":
                return np.array(np.load(npy_dir / f"{uid}.wav2vec2.npy", mmap_mode="r")[:, LAYER:LAYER + 1])
            return np.load(npy_dir / f"{uid}.egemaps.npy")
        name = "egemaps" if kind == "egemaps" else "wav2vec2"
        r = row_of[uid]
        o, length = int(h5_off[name][r]), int(h5_len[name][r])
        data = h5[f"features/{name}/data"]
        if kind == "one_layer":
            return data[o:o + length, LAYER:LAYER + 1]
        return data[o:o + length]

    reads_per_pass = min(args.reads or n, n)
    cold_ok = not args.no_drop_cache and _common.drop_page_cache()
    results: list[dict] = []
    combos = [(k, f) for k in READS for f in FORMATS]
    for rep in range(args.reps):
        shift = rep % len(FORMATS)
        for kind in READS:
            fmts = FORMATS[shift:] + FORMATS[:shift]
            for cache in (("cold", "warm") if cold_ok else ("warm",)):
                for fmt in fmts:
                    if cache == "cold":
                        _common.drop_page_cache()
                    else:  # make sure the data is in the page cache
                        for uid in ids[:reads_per_pass]:
                            read(fmt, kind, uid)
                    order = rng.permutation(n)[:reads_per_pass]
                    nbytes = 0
                    t0 = time.perf_counter()
                    if kind.endswith("_batch16") and fmt == "zarr_store":
                        # Stage 2's path: read_batch of 16 random utterances (one event-loop hand-over each)
                        layers = [LAYER] if kind.startswith("one_layer") else None
                        for b in range(0, len(order), BATCH):
                            batch = store.read_batch([ids[j] for j in order[b:b + BATCH]], "wav2vec2", layers=layers)
                            nbytes += sum(x.nbytes for x in batch)
                    else:
                        for j in order:
                            nbytes += read(fmt, kind, ids[j]).nbytes
                    wall = time.perf_counter() - t0
                    results.append({"rep": rep, "read": kind, "format": fmt, "cache": cache, "wall_s": wall,
                                    "utterances": int(reads_per_pass), "mb": nbytes / 1e6,
                                    "utt_per_s": reads_per_pass / wall, "mb_per_s": nbytes / 1e6 / wall,
                                    "load_average": _common.load_average()})
                    print(f"rep {rep} {kind:10s} {cache:4s} {fmt:18s} {reads_per_pass / wall:9.1f} utt/s "
                          f"{nbytes / 1e6 / wall:9.1f} MB/s", flush=True)
    h5.close()
    del combos

    def med(kind: str, fmt: str, cache: str, key: str = "utt_per_s") -> float:
        vals = [r[key] for r in results if r["read"] == kind and r["format"] == fmt and r["cache"] == cache]
        return float(np.median(vals)) if vals else float("nan")

    caches = ("cold", "warm") if cold_ok else ("warm",)
    rows_out, summary = [], {}
    for cache in caches:
        for kind in READS:
            for fmt in FORMATS:
                u, m = med(kind, fmt, cache), med(kind, fmt, cache, "mb_per_s")
                summary[f"{cache}/{kind}/{fmt}"] = {"utt_per_s": u, "mb_per_s": m}
                rows_out.append([cache, kind, fmt, u, m])
    ratios = {}
    for cache in caches:
        zs = med("all_layers", "zarr_store", cache)
        ratios[f"{cache}_all_layers_zarr_vs_npy"] = zs / med("all_layers", "npy_per_utterance", cache)
        ratios[f"{cache}_all_layers_zarr_vs_hdf5"] = zs / med("all_layers", "hdf5_export", cache)
        zb = med("all_layers_batch16", "zarr_store", cache)
        ratios[f"{cache}_all_layers_batch16_zarr_vs_npy"] = zb / med("all_layers_batch16", "npy_per_utterance", cache)
        ratios[f"{cache}_all_layers_batch16_zarr_vs_hdf5"] = zb / med("all_layers_batch16", "hdf5_export", cache)
        ratios[f"{cache}_one_layer_vs_all_layers_zarr"] = med("one_layer", "zarr_store", cache) / zs
        ratios[f"{cache}_one_layer_zarr_vs_npy"] = med("one_layer", "zarr_store", cache) / med("one_layer", "npy_per_utterance", cache)
        ratios[f"{cache}_one_layer_zarr_vs_hdf5"] = med("one_layer", "zarr_store", cache) / med("one_layer", "hdf5_export", cache)
        ratios[f"{cache}_one_layer_batch16_zarr_vs_hdf5"] = (med("one_layer_batch16", "zarr_store", cache)
                                                         / med("one_layer_batch16", "hdf5_export", cache))
        ratios[f"{cache}_egemaps_zarr_vs_npy"] = med("egemaps", "zarr_store", cache) / med("egemaps", "npy_per_utterance", cache)
        ratios[f"{cache}_egemaps_zarr_vs_hdf5"] = med("egemaps", "zarr_store", cache) / med("egemaps", "hdf5_export", cache)
    table = _common.format_table(["cache", "read", "format", "utt/s (median)", "MB/s (median)"], rows_out)
    disk_table = _common.format_table(
        ["format", "wav2vec2 bytes/audio s", "all files bytes/audio s"],
        [[f, disk[f]["wav2vec2_bytes_per_audio_s"], disk[f]["total_bytes_per_audio_s"]] for f in FORMATS])
    info = _common.machine_info(["numpy", "zarr", "zarrs", "numcodecs", "h5py"])
    payload = {"benchmark": "bench_store", "command": _common.command_line(), "machine": info,
               "config": {"utterances": n, "audio_seconds": audio_seconds, "reads_per_pass": reads_per_pass,
                          "reps": args.reps, "layer": LAYER, "page_cache_dropped": cold_ok, "quick": args.quick,
                          "data": "float16 [T,13,768] random walk over time + float32 [2T,25] eGeMAPS-like"},
               "write_seconds": write_s, "disk_bytes": disk, "summary": summary, "ratios": ratios, "runs": results}
    c = caches[0]
    headline = (f"headline ({c} cache): all-layer reads zarr/npy = {ratios[f'{c}_all_layers_zarr_vs_npy']:.2f}, "
                f"zarr/hdf5 = {ratios[f'{c}_all_layers_zarr_vs_hdf5']:.2f} (goal > 1); with read_batch of {BATCH}: "
                f"{ratios[f'{c}_all_layers_batch16_zarr_vs_npy']:.2f} / {ratios[f'{c}_all_layers_batch16_zarr_vs_hdf5']:.2f}; one layer / all layers = "
                f"{ratios[f'{c}_one_layer_vs_all_layers_zarr']:.2f} (goal >= 5)")
    notes = [f"page cache {'dropped before every cold pass (root)' if cold_ok else 'NOT dropped: warm cache only'}",
             f"write seconds: {', '.join(f'{k} {v:.1f}' for k, v in write_s.items())}"]
    print()
    print(table)
    print()
    print(disk_table)
    for line in notes:
        print(line)
    path = _common.write_results("bench_store_quick" if args.quick else "bench_store", payload,
                                 table + "\n\n" + disk_table, out=args.out, headline=headline, notes=notes)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(f"results: {path}")
    print(headline)


if __name__ == "__main__":
    main()
