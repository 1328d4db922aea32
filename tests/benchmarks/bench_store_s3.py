"""Stage-2 reads of one store on object storage (a local moto S3 server) and on local disk, side by side.

One store of synthetic wav2vec2-like frames (float16 [T, 13, 768], T of 2-5 s at 50 frames/s,
a random walk over time as in bench_store.py) is written through ``StoreWriter`` into a local
directory, then uploaded as it is to a bucket of moto's S3 server (``ThreadedMotoServer`` on
127.0.0.1, started and stopped here). Both copies are read the way stage 2 reads them, in one
random utterance order per pass: one layer of every utterance (``read_utterance(..., layers=[7])``),
all layers, and ``read_batch`` of 16 utterances (one layer, all layers). Three readers in turn
(order rotating per repetition): the local copy; "S3 plain", the reader on zarr's FsspecStore as
it is (the reader before issue 10's read cache); "S3", the reader as shipped (ReadCacheStore:
shard indexes kept, each read's chunks fetched ahead). Every pass uses a fresh reader (its caches
start empty, as a new training run's do) and counts the requests its s3fs client sent.

moto answers every ranged GET by copying the whole object, so there a request costs in
proportion to the shard's size (a default 240 s shard of wav2vec2 is 240 MB); ``--shard-frames``
writes smaller shards, nearer to what a request costs on a real object store.

    python3 tests/benchmarks/bench_store_s3.py --utterances 240 --shard-frames 1024

Needs moto[server] and s3fs (the test extras). The last printed line is the headline.
"""

from __future__ import annotations

import argparse
import collections
import logging
import shutil
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

LAYER = 7
BATCH = 16
WHERE = ("local", "s3_plain", "s3")
READS = ("one_layer", "all_layers", "one_layer_batch16", "all_layers_batch16")
BUCKET = "w2v2ser-bench"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=_common.positive_int, default=240)
    p.add_argument("--reps", type=_common.positive_int, default=1)
    p.add_argument("--workdir", default=None, help="where the local copy is written (default: a temp dir)")
    p.add_argument("--out", default=None, help="results folder (default: tests/benchmarks/results)")
    p.add_argument("--name", default="bench_store_s3", help="results file name (without .json)")
    p.add_argument("--shard-frames", type=_common.positive_int, default=None,
                   help="frames per shard (default: the store's, 240 s of audio). moto copies a whole object "
                        "for every ranged GET, so its requests cost in proportion to the shard's size")
    p.add_argument("--profile", default=None, help="write a cProfile of the S3 all-layer pass to this file")
    return p.parse_args()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def count_requests() -> collections.Counter:
    """Count every request s3fs sends (by S3 operation): patches ``S3FileSystem._call_s3``."""
    import s3fs

    counts: collections.Counter = collections.Counter()
    original = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        counts[getattr(method, "__name__", str(method))] += 1
        return await original(self, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = counted
    return counts


def build(local: Path, utts: list, frames, spec, shard_frames: int | None) -> None:
    """Write the store through StoreWriter: plan, work units of 64 utterances, finalize."""
    import numpy as np

    from w2v2ser.store import StoreWriter

    n = len(utts)
    writer = StoreWriter(local, shard_frames={"wav2vec2": shard_frames} if shard_frames else None)
    rows = writer.plan(utts, num_samples=[int(t) * 320 + 80 for t in frames], features=[spec],
                       capacities={"wav2vec2": [int(t) for t in frames]})
    for unit in writer.plan_units([rows[k:k + 64] for k in range(0, n, 64)], ["wav2vec2"]):
        unit_writer = writer.open_unit(unit)
        for row in unit.rows:
            r = np.random.default_rng(1000 + row)
            x = np.cumsum(r.standard_normal((int(frames[row]), 13, 768), dtype=np.float32) * 0.1, axis=0)
            unit_writer.add(row, {"wav2vec2": x.astype(np.float16)}, audio_sha256="0" * 64,
                            duration=frames[row] / 50)
        unit_writer.commit()
    writer.finalize()
    writer.close()


def main() -> None:
    args = parse_args()
    how = _common.bootstrap_w2v2ser()
    import numpy as np
    import s3fs
    from moto.server import ThreadedMotoServer

    from w2v2ser.store import FeatureSpec, Utterance, open_store
    from w2v2ser.store._layout import open_root

    work = Path(args.workdir) if args.workdir else _common.make_workdir(None, "w2v2ser-bench-s3-")
    rng = np.random.default_rng(0)
    n = args.utterances
    frames = rng.integers(100, 251, size=n)
    audio_seconds = float(frames.sum() / 50.0)
    utts = [Utterance(id=f"utt{i:05d}", path=f"/synthetic/{i}.flac", speaker=f"Actor_{i % 24 + 1:02d}",
                      label="neutral", corpus="ravdess") for i in range(n)]
    spec = FeatureSpec(name="wav2vec2", dim=768, layers=13, frame_rate=49.95, dtype="float16",
                       config={"synthetic": True})
    local = work / "store.zarr"
    shards = args.shard_frames or ...
    if (args.workdir and (local / "zarr.json").exists() and len(open_store(local).list_utterances()) == n
            and (shards is ... or open_store(local).describe()["features"]["wav2vec2"]["shards"][0] == shards)):
        print(f"reusing {local}", flush=True)  # a finished store of an earlier run with --workdir
    else:
        shutil.rmtree(local, ignore_errors=True)
        build(local, utts, frames, spec, args.shard_frames)
    print(f"{n} utterances, {audio_seconds:.0f} audio s, w2v2ser {how}, workdir {work}", flush=True)

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
               "client_kwargs": {"region_name": "us-east-1"}}
    results: list[dict] = []
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        fs = s3fs.S3FileSystem(**options)
        fs.put(f"{local}/", f"{BUCKET}/store.zarr", recursive=True)
        url = f"s3://{BUCKET}/store.zarr"
        counts = count_requests()
        ids = [u.id for u in utts]
        # Check once that both copies read the same frames.
        a = open_store(local).read_batch(ids[:4], "wav2vec2")
        b = open_store(url, storage_options=options).read_batch(ids[:4], "wav2vec2")
        if not all(np.array_equal(x, y) for x, y in zip(a, b)):
            raise SystemExit("the S3 copy reads other frames than the local copy")

        def one_pass(where: str, kind: str, order: list[int]) -> tuple[float, int, collections.Counter]:
            store = open_store(local) if where == "local" else open_store(url, storage_options=options)
            if where == "s3_plain":  # the reader as it was: zarr's FsspecStore without ReadCacheStore
                store._group = open_root(store.location, mode="r")
                store._arrays.clear()
            layers = [LAYER] if kind.startswith("one_layer") else None
            counts.clear()
            nbytes = 0
            t0 = time.perf_counter()
            if kind.endswith("_batch16"):
                for k in range(0, len(order), BATCH):
                    nbytes += sum(x.nbytes for x in store.read_batch([ids[j] for j in order[k:k + BATCH]],
                                                                     "wav2vec2", layers=layers))
            else:
                for j in order:
                    nbytes += store.read_utterance(ids[j], "wav2vec2", layers=layers).nbytes
            return time.perf_counter() - t0, nbytes, collections.Counter(counts)

        for rep in range(args.reps):
            for kind in READS:
                order = [int(j) for j in rng.permutation(n)]
                for where in WHERE[rep % 3:] + WHERE[:rep % 3]:
                    if args.profile and where != "local" and kind == "all_layers" and rep == 0:
                        import cProfile

                        profiler = cProfile.Profile()
                        wall, nbytes, sent = profiler.runcall(one_pass, where, kind, order)
                        profiler.dump_stats(f"{args.profile}.{where}")
                    else:
                        wall, nbytes, sent = one_pass(where, kind, order)
                    total = sum(sent.values())
                    results.append({"rep": rep, "read": kind, "where": where, "wall_s": wall, "utterances": n,
                                    "mb": nbytes / 1e6, "utt_per_s": n / wall, "requests": total,
                                    "requests_by_operation": dict(sent), "load_average": _common.load_average()})
                    print(f"rep {rep} {kind:20s} {where:5s} {wall:7.2f} s {n / wall:8.1f} utt/s "
                          f"{nbytes / 1e6 / wall:8.1f} MB/s {total:6d} requests", flush=True)
    finally:
        server.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    def med(kind: str, where: str, key: str) -> float:
        return float(np.median([r[key] for r in results if r["read"] == kind and r["where"] == where]))

    rows_out, summary = [], {}
    for kind in READS:
        loc, plain, s3 = (med(kind, w, "wall_s") for w in WHERE)
        plain_reqs, reqs = med(kind, "s3_plain", "requests"), med(kind, "s3", "requests")
        summary[kind] = {"local_s": loc, "s3_plain_s": plain, "s3_s": s3, "s3_vs_local": s3 / loc,
                         "s3_plain_vs_s3": plain / s3, "s3_plain_requests": plain_reqs, "s3_requests": reqs}
        rows_out.append([kind, loc, plain, s3, s3 / loc, plain / s3, int(plain_reqs), int(reqs)])
    table = _common.format_table(["read", "local s", "S3 plain s", "S3 cached s", "S3 cached / local",
                                  "speed-up", "S3 plain requests", "S3 cached requests"], rows_out)
    info = _common.machine_info(["numpy", "zarr", "zarrs", "s3fs", "fsspec", "aiobotocore", "moto"])
    payload = {"benchmark": "bench_store_s3", "command": _common.command_line(), "machine": info,
               "config": {"utterances": n, "audio_seconds": audio_seconds, "reps": args.reps, "layer": LAYER,
                          "batch": BATCH, "shard_frames": args.shard_frames, "data": "float16 [T,13,768] random walk over time",
                          "server": "moto ThreadedMotoServer on 127.0.0.1 (page cache warm for local)"},
               "summary": summary, "runs": results}
    headline = (f"{n} utterances, seconds local / S3 plain / S3 with the read cache (requests plain -> cached): "
                + "; ".join(f"{k} {summary[k]['local_s']:.2f} / {summary[k]['s3_plain_s']:.2f} / "
                            f"{summary[k]['s3_s']:.2f} ({summary[k]['s3_plain_requests']:.0f} -> "
                            f"{summary[k]['s3_requests']:.0f})" for k in READS))
    print()
    print(table)
    path = _common.write_results(args.name, payload, table, out=args.out, headline=headline,
                                 notes=["S3 plain: the same reader with zarr's FsspecStore as it is (no ReadCacheStore), as before "
                                        "the read cache", "each pass opens a fresh reader (empty caches); its requests are counted at s3fs's "
                                        "_call_s3 from after open_store (index arrays read at first use included)"])
    print(f"results: {path}")
    print(headline)


if __name__ == "__main__":
    main()
