"""Store write throughput against the disk's raw sequential speed, measured side by side.

Writes the same float16 ``[T, 13, 768]`` frames (RAVDESS-like lengths) as work units through
``StoreWriter`` (plan_units / open_unit / add_many / commit: statistics, per-layer crc32, fsynced shards and
folders, fsynced journal) with each candidate Zarr implementation, and times
``dd if=/dev/zero of=FILE bs=4M conv=fsync`` of the same byte count on the same disk:

- ``w2v2ser``: what w2v2ser does: shards written through tensorstore's zarr3 driver when it is
  installed (else as ``w2v2ser_zarrs``);
- ``w2v2ser_zarrs``: shards written through zarr-python with the zarrs codec pipeline;
- ``w2v2ser_zarr_native``: zarr-python's own codec pipeline;
- ``raw_fsync``: the same frame bytes written to one file in 4 MiB writes, then fsynced (dd with
  the store's data instead of zeros, which a virtual disk may shortcut);
- ``baseline_zarrs`` (with ``--baseline-code DIR``): ``w2v2ser_zarrs`` with another source tree, in a
  fresh process; ``current_zarrs``: the same with this tree (the pair the headline compares);
- ``tensorstore_shards``: tensorstore's zarr3 driver writing the same sharded layout, whole
  shards, then every file fsynced (no statistics, crc32 or journal: the bare implementation).

Modes alternate order every repetition. MB/s counts stored frame bytes (about 1 MB per audio s).

    python3 tests/benchmarks/bench_store_write.py [--quick] [--utterances N] [--reps R] [--workdir DIR]

The last line is the headline ratio (w2v2ser / dd).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import (
    bootstrap_w2v2ser,
    command_line,
    format_table,
    load_average,
    machine_info,
    make_workdir,
    quick_out,
    write_results,
)

bootstrap_w2v2ser()

import w2v2ser.store._layout as layout  # noqa: E402
from w2v2ser.store import FeatureSpec, StoreWriter, Utterance  # noqa: E402

SPEC = FeatureSpec(name="wav2vec2", dim=768, layers=13, frame_rate=50.0, dtype="float16", config={})
UNIT = 64  # utterances per work unit, as `w2v2ser extract --shard-size`
BATCH = 8  # utterances per add_many call: a model batch of 32 s of RAVDESS-length audio


def _w2v2ser(root: Path, frames: list[np.ndarray], *, zarrs: bool, tensorstore: bool = True) -> float:
    """Seconds to write and commit every utterance into a fresh store (plan excluded)."""
    saved, saved_ts = layout._PIPELINE, list(layout._TENSORSTORE)
    layout._PIPELINE = saved if zarrs else {}
    if not tensorstore:
        layout._TENSORSTORE[:] = [None]  # shards through zarr, as without tensorstore installed
    try:
        utterances = [Utterance(id=f"u{i}", path=f"/x/{i}.wav", speaker=f"s{i % 4}", label="a")
                      for i in range(len(frames))]
        writer = StoreWriter(root)
        rows = writer.plan(utterances, num_samples=[len(f) * 320 for f in frames], features=[SPEC],
                           capacities={"wav2vec2": [len(f) for f in frames]})
        units_ = writer.plan_units([rows[k:k + UNIT] for k in range(0, len(rows), UNIT)], ["wav2vec2"])
        started = time.perf_counter()
        for unit in units_:
            with writer.open_unit(unit) as unit_writer:
                for lo in range(0, len(unit.rows), BATCH):  # as extraction adds a model batch at once
                    rows_ = unit.rows[lo:lo + BATCH]
                    unit_writer.add_many(rows_, [{"wav2vec2": frames[row]} for row in rows_],
                                         audio_sha256=["0"] * len(rows_),
                                         durations=[len(frames[row]) / 50 for row in rows_])
        seconds = time.perf_counter() - started
        writer.close()
        return seconds
    finally:
        layout._PIPELINE = saved
        layout._TENSORSTORE[:] = saved_ts


def _tensorstore(root: Path, frames: list[np.ndarray]) -> float:
    import tensorstore as ts

    shard = layout.default_shard_frames(SPEC, 128)
    total = sum(len(f) for f in frames)
    end = -(-total // shard) * shard
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(root)},
            "metadata": {"shape": [end, 13, 768], "data_type": "float16", "fill_value": 0,
                         "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [shard, 13, 768]}},
                         "codecs": [{"name": "sharding_indexed", "configuration": {
                             "chunk_shape": [128, 1, 768],
                             "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
                             "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                              {"name": "crc32c"}]}}]},
            "create": True, "delete_existing": True}
    started = time.perf_counter()
    array = ts.open(spec).result()
    buffer = np.concatenate(frames)
    for lo in range(0, total, shard):
        block = np.zeros((shard, 13, 768), np.float16)
        part = buffer[lo:lo + shard]
        block[: len(part)] = part
        array[lo:lo + shard].write(block).result()
    for path in root.rglob("*"):
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - started


_BASELINE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1] + "/tests/benchmarks")
import numpy as np
import bench_store_write as bench
import w2v2ser.store
assert w2v2ser.store.__file__.startswith(sys.argv[1]), w2v2ser.store.__file__
rng = np.random.default_rng(0)
frames = [rng.standard_normal((int(n), 13, 768)).astype("float16") for n in rng.integers(100, 251, int(sys.argv[3]))]
print(bench._w2v2ser(Path(sys.argv[2]), frames, zarrs=True))
"""


def _baseline(root: Path, code: str, count: int, python: str | None = None) -> float:
    """The zarrs mode with another w2v2ser source tree, in a fresh base-interpreter process
    (outside any virtual environment holding an installed w2v2ser); same frames (seed 0)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([python or getattr(sys, "_base_executable", sys.executable), "-c", _BASELINE, code, str(root),
                           str(count)], capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if done.returncode:
        raise SystemExit(done.stderr)
    return float(done.stdout.strip().splitlines()[-1])


def _raw(root: Path, frames: list[np.ndarray]) -> float:
    """The same frame bytes written sequentially to one file in 4 MiB writes, then fsynced:
    dd's measure with the store's data instead of zeros (a virtual disk may shortcut zeros)."""
    root.mkdir(parents=True, exist_ok=True)
    data = memoryview(np.concatenate(frames)).cast("B")
    started = time.perf_counter()
    fd = os.open(root / "raw.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for lo in range(0, len(data), 4 * 2**20):
            os.write(fd, data[lo:lo + 4 * 2**20])
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - started


def _dd(root: Path, megabytes: float) -> float:
    root.mkdir(parents=True, exist_ok=True)
    count = max(1, int(round(megabytes * 1e6 / 4 / 2**20)))
    started = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={root / 'dd.bin'}", "bs=4M", f"count={count}", "conv=fsync"],
                   check=True, capture_output=True)
    seconds = time.perf_counter() - started
    return seconds * megabytes / (count * 4 * 2**20 / 1e6)  # scaled to the same byte count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 utterances, 2 repetitions")
    parser.add_argument("--utterances", type=int, default=192)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", help="folder on the disk to measure (default: a temp dir)")
    parser.add_argument("--out", help="results folder (default tests/benchmarks/results; with --quick a new "
                                      "temporary folder)")
    parser.add_argument("--modes", default="dd,raw_fsync,w2v2ser,w2v2ser_zarrs,w2v2ser_zarr_native,tensorstore_shards",
                        help="comma-separated modes (dd and w2v2ser always run)")
    parser.add_argument("--baseline-code", help="source tree of another w2v2ser: adds mode baseline_zarrs")
    parser.add_argument("--baseline-python", help="interpreter for --baseline-code, with the dependencies but no "
                                                  "installed w2v2ser (default: the base interpreter)")
    args = parser.parse_args()
    args.out = quick_out(args.out, args.quick, "bench_store_write")
    count, reps = (64, 2) if args.quick else (args.utterances, args.reps)
    rng = np.random.default_rng(0)
    frames = [rng.standard_normal((int(n), 13, 768)).astype("float16") for n in rng.integers(100, 251, count)]
    megabytes = sum(f.nbytes for f in frames) / 1e6
    info = machine_info(["numpy", "zarr", "zarrs", "tensorstore"])
    modes = ["dd", "w2v2ser"] + [m for m in args.modes.split(",") if m and m not in ("dd", "w2v2ser")]
    if args.baseline_code:  # both trees in fresh processes of the same interpreter: a fair pair
        modes += ["baseline_zarrs", "current_zarrs"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    work = make_workdir(args.workdir, "w2v2ser-write-")
    try:
        for rep in range(reps):
            order = modes[rep % len(modes):] + modes[: rep % len(modes)]
            for mode in order:
                target = work / f"{mode}-{rep}"
                if mode == "dd":
                    seconds = _dd(target, megabytes)
                elif mode == "raw_fsync":
                    seconds = _raw(target, frames)
                elif mode in ("baseline_zarrs", "current_zarrs"):
                    code = args.baseline_code if mode == "baseline_zarrs" else str(Path(__file__).resolve().parents[2])
                    seconds = _baseline(target, code, count, args.baseline_python)
                elif mode == "tensorstore_shards":
                    seconds = _tensorstore(target, frames)
                else:
                    seconds = _w2v2ser(target, frames, zarrs=mode != "w2v2ser_zarr_native",
                                       tensorstore=mode == "w2v2ser")
                times[mode].append(seconds)
                shutil.rmtree(target, ignore_errors=True)
                print(f"rep {rep} {mode:<20} {megabytes / seconds:8.1f} MB/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rates = {mode: megabytes / statistics.median(values) for mode, values in times.items()}
    ratios = {mode: [d / t for d, t in zip(times["dd"], values)] for mode, values in times.items() if mode != "dd"}
    ratio = {mode: statistics.median(values) for mode, values in ratios.items()}
    table = format_table(["mode", "MB/s (median)", "ratio to dd (median of reps)"],
                         [[m, round(rates[m], 1), round(ratio.get(m, 1.0), 2)] for m in modes])
    print(table)
    headline = (f"StoreWriter (fsynced) / dd conv=fsync = {ratio['w2v2ser']:.2f}x "
                f"({rates['w2v2ser']:.0f} vs {rates['dd']:.0f} MB/s; goal >= 0.7)")
    if "raw_fsync" in times:
        to_raw = statistics.median(r / t for r, t in zip(times["raw_fsync"], times["w2v2ser"]))
        headline += f"; vs raw_fsync (same bytes, one file, fsync) {to_raw:.2f}x"
    if "baseline_zarrs" in ratio:
        speedup = statistics.median(b / t for b, t in zip(times["baseline_zarrs"], times["current_zarrs"]))
        headline += (f"; baseline code {ratio['baseline_zarrs']:.2f}x ({rates['baseline_zarrs']:.0f} MB/s), this code "
                     f"in the same kind of process {rates['current_zarrs']:.0f} MB/s: {speedup:.2f}x the baseline "
                     f"(median of per-rep ratios)")
    write_results(
        "bench_store_write" + ("_quick" if args.quick else ""),
        {"command": command_line(), "machine": {**info, "load_average_start": load_average()},
         "megabytes": megabytes, "utterances": count, "seconds": times, "mb_per_s": rates, "ratio_to_dd": ratios},
        table, out=args.out, headline=headline,
        notes=["float16 [T, 13, 768], T 100-250; shards of 240 s (12032 frames), inner chunks (128, 1, 768), "
               "no compression + crc32c; w2v2ser modes include per-utterance statistics, per-layer crc32, "
               f"fsync of shards, folders and journal; {UNIT} utterances per work unit"]
        + ([f"baseline_zarrs: w2v2ser_zarrs with the source tree {args.baseline_code}, in a fresh process; "
            "current_zarrs: the same with this source tree"]
           if args.baseline_code else []),
    )
    print(headline)


if __name__ == "__main__":
    main()
