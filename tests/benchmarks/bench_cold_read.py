"""Where cold all-layer reads of the store lose their time (issue 10's read target), per mode, one run.

For ``--utterances`` random utterances of a 3-D feature (default ``wav2vec2``) of an existing store,
each mode reads the same utterances (``--reps`` interleaved rounds, medians) with the page cache of the files it reads evicted first
(``posix_fadvise(DONTNEED)``, no root needed), and reports GB/s of utterance bytes:

- ``store cold`` / ``store warm``: ``read_utterance`` (zarr + zarrs, then the per-layer CRC check);
- ``crc check``: the per-layer CRC of the frames alone (``w2v2ser.store._layout.crc32_rows``, in memory);
  ``crc check, one transposed copy``: the same CRCs the way crc32_rows computed them up to 93cab92;
- ``store batch cold`` / ``warm``: ``read_batch`` of ``--batch`` utterances (stage 2's path, zarrs);
- ``tensorstore batch cold`` / ``warm``: the same slices through tensorstore's ``zarr3`` driver, one
  ``tensorstore.Batch`` of ``--batch`` utterances per call (its byte-range requests in flight
  together; no CRC check). Up to e1b254f ``read_batch`` took this path for features larger than
  the available memory;
- ``tensorstore cold``: the same slices through tensorstore's ``zarr3`` driver, one at a time;
- ``raw pread cold``: one ``os.pread`` per utterance of the byte range that holds its inner chunks
  (whole 128-frame blocks, all layers; offsets from the array's metadata, valid only while each
  shard holds its first blocks' inner chunks in order, which the script checks from the file sizes);
  the bytes counted are the utterance's, the bytes read include the blocks' edges;
- ``npy cold``: one ``.npy`` file per utterance (written once to ``--workdir``).

    python3 tests/benchmarks/bench_cold_read.py --store /work/bench_cache/train_store_625s.zarr
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def _timed(evict: Path | None, read) -> float:
    if evict is not None:
        _common.evict_page_cache(evict)
    start = time.perf_counter()
    read()
    return time.perf_counter() - start


def _raw_ranges(data: Path, meta: dict, regions: list[tuple[int, int]]) -> list[tuple[Path, int, int]] | None:
    """(shard file, offset, size) of each region's whole inner-chunk blocks, or None if the layout differs."""
    shard_frames = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    sharding = meta["codecs"][0]["configuration"]
    inner = sharding["chunk_shape"]
    layers, width = meta["shape"][1], meta["shape"][2]
    if inner[1:] != [1, width]:
        return None
    chunk_bytes = inner[0] * width * 2 + 4  # float16 frames + crc32c
    index_bytes = (shard_frames // inner[0]) * layers * 16 + 4
    out = []
    for off, length in regions:
        stop = off + length
        while off < stop:  # one range per shard the utterance touches
            shard = off // shard_frames
            end = min(stop, (shard + 1) * shard_frames)
            path = data / "c" / str(shard) / "0" / "0"
            # A work unit fills its shards from the start: blocks 0..n-1 present, all layers, in order.
            blocks, rest = divmod(path.stat().st_size - index_bytes, layers * chunk_bytes)
            first = (off - shard * shard_frames) // inner[0]
            last = (end - 1 - shard * shard_frames) // inner[0]
            if rest or last >= blocks:
                return None  # skipped empty chunks or another layout: offsets cannot be derived
            out.append((path, first * layers * chunk_bytes, (last - first + 1) * layers * chunk_bytes))
            off = end
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--feature", default="wav2vec2")
    p.add_argument("--utterances", type=int, default=150)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch", type=int, default=32, help="utterances per read_batch / tensorstore.Batch")
    p.add_argument("--reps", type=int, default=5, help="rounds of every mode, interleaved (medians reported)")
    p.add_argument("--workdir", default=None, help="folder for the .npy copies (default: a temporary one)")
    p.add_argument("--zarrs-threads", type=int, default=None,
                   help="zarr's threading.max_workers (zarrs' thread pool; default: one per core)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    how = _common.bootstrap_w2v2ser()
    if args.zarrs_threads:
        import zarr

        zarr.config.set({"threading.max_workers": args.zarrs_threads})
    from w2v2ser.store import open_store
    from w2v2ser.store._layout import ROW_CHECKSUMS, crc32_rows

    store_path = Path(args.store)
    store = open_store(store_path)
    ids = [u.id for u in store.list_utterances()]
    random.Random(args.seed).shuffle(ids)
    ids = ids[:args.utterances]
    frames = {uid: store.read_utterance(uid, args.feature) for uid in ids}
    nbytes = sum(f.nbytes for f in frames.values())
    modes: dict[str, tuple[Path | None, object]] = {}  # mode -> (folder to evict first, read)

    def read_store() -> None:
        for uid in ids:
            store.read_utterance(uid, args.feature)

    def read_store_batches() -> None:
        for k in range(0, len(ids), args.batch):
            store.read_batch(ids[k:k + args.batch], args.feature)

    modes["store cold"] = (store_path, read_store)
    modes["store warm"] = (None, read_store)
    modes["store batch cold"] = (store_path, read_store_batches)
    modes["store batch warm"] = (None, read_store_batches)
    modes["crc check"] = (None, lambda: [crc32_rows(f, store.row_checksum) for f in frames.values()])

    def crc_one_copy(f: np.ndarray) -> list[int]:  # crc32_rows up to 93cab92: one transposed copy
        by_layer = np.ascontiguousarray(np.swapaxes(f, 0, 1))
        return [ROW_CHECKSUMS[store.row_checksum](by_layer[k]) for k in range(f.shape[1])]

    if next(iter(frames.values())).ndim == 3:
        modes["crc check, one transposed copy"] = (None, lambda: [crc_one_copy(f) for f in frames.values()])

    data = store_path / "features" / args.feature / "data"
    meta = json.loads((data / "zarr.json").read_text())
    regions = [(int(off), int(length)) for _, off, length in (store._region(uid, args.feature) for uid in ids)]
    try:
        import tensorstore as ts

        array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(data)},
                         "context": {"cache_pool": {"total_bytes_limit": 0}}}, read=True).result()
        modes["tensorstore cold"] = (store_path, lambda: [array[a:a + n].read().result() for a, n in regions])

        def read_tensorstore_batches() -> None:
            for k in range(0, len(regions), args.batch):
                with ts.Batch() as batch:
                    futures = [array[a:a + n].read(batch=batch) for a, n in regions[k:k + args.batch]]
                [future.result() for future in futures]

        modes["tensorstore batch cold"] = (store_path, read_tensorstore_batches)
        modes["tensorstore batch warm"] = (None, read_tensorstore_batches)
    except ImportError:
        pass
    ranges = _raw_ranges(data, meta, regions)
    raw_bytes = 0
    if ranges is not None:
        raw_bytes = sum(size for _, _, size in ranges)

        def read_raw() -> None:
            for path, offset, size in ranges:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.pread(fd, size, offset)
                finally:
                    os.close(fd)

        modes["raw pread cold"] = (store_path, read_raw)
    if args.workdir is not None:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        npy = Path(tmp)
        for k, uid in enumerate(ids):
            np.save(npy / f"{k}.npy", frames[uid])
        os.sync()
        modes["npy cold"] = (npy, lambda: [np.load(npy / f"{k}.npy") for k in range(len(ids))])
        runs: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(args.reps):  # interleaved: this disk's speed drifts between minutes
            for mode, (evict, read) in modes.items():
                runs[mode].append(_timed(evict, read))
    seconds = {mode: float(np.median(values)) for mode, values in runs.items()}

    rate = {mode: nbytes / s / 1e9 for mode, s in seconds.items()}
    rows = [[mode, round(s, 3), f"{min(runs[mode]):.3f}-{max(runs[mode]):.3f}", round(rate[mode], 2),
             round(rate[mode] / rate["npy cold"], 2)] for mode, s in seconds.items()]
    table = _common.format_table(["mode", "median s", "range s", "GB/s of utterance bytes", "vs npy cold"], rows)
    notes = [f"medians of {args.reps} interleaved rounds", f"{len(ids)} utterances, {nbytes / 1e9:.3f} GB of {args.feature} frames; store {store_path}",
             f"raw pread read {raw_bytes / 1e9:.3f} GB (whole inner-chunk blocks) for those bytes" if ranges
             else "raw pread skipped: the shard files do not have the full-shard layout"]
    headline = (f"headline: cold store reads {rate['store cold']:.2f} GB/s, warm {rate['store warm']:.2f}, "
                f"npy cold {rate['npy cold']:.2f}; read_batch of {args.batch} cold / warm {rate['store batch cold']:.2f} / "
                f"{rate['store batch warm']:.2f} through zarrs" + (
                    f", {rate['tensorstore batch cold']:.2f} / {rate['tensorstore batch warm']:.2f} through "
                    f"tensorstore" if "tensorstore batch cold" in rate else "") + (f", raw pread of the same blocks cold "
                                                      f"{rate['raw pread cold']:.2f}" if ranges else ""))
    payload = {"benchmark": "bench_cold_read", "command": _common.command_line(),
               "machine": _common.machine_info(["numpy", "zarr", "zarrs", "tensorstore"]),
               "config": {**vars(args), "w2v2ser": how}, "bytes": nbytes, "raw_bytes_read": raw_bytes,
               "seconds": seconds, "runs": runs, "gb_per_s": rate}
    print(table)
    path = _common.write_results("bench_cold_read", payload, table, out=args.out, headline=headline, notes=notes)
    print(f"results: {path}")
    print(headline)


if __name__ == "__main__":
    main()
