"""Store write throughput: zarr's array API against the direct chunk-file path, side by side.

``StoreWriter.write_utterance`` writes an utterance's chunk-aligned region either through
``zarr.Array.__setitem__`` or, for the layout w2v2ser creates, straight to the chunk files
(``store/_chunks.py``). Both paths produce the same files. This script writes the same
float16 ``[T, 13, 768]`` frames (RAVDESS-like lengths) both ways, alternating the order on
every repetition, and prints MB/s of stored bytes (about 1 MB per audio second).

    python3 tests/benchmarks/bench_store_write.py [--quick] [--utterances N] [--reps R]

The last line is the headline ratio (direct / zarr).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import bootstrap_w2v2ser, command_line, format_table, load_average, machine_info, write_results

bootstrap_w2v2ser()

from w2v2ser.store import FeatureSpec, StoreWriter, Utterance  # noqa: E402
import w2v2ser.store._writer as writer_module  # noqa: E402


def _write_all(root: Path, frames: list[np.ndarray], *, direct: bool) -> float:
    """Seconds to write every utterance into a fresh store (plan excluded)."""
    utterances = [Utterance(id=f"u{i}", path=f"/x/{i}.wav", speaker=f"s{i % 4}", label="a") for i in range(len(frames))]
    spec = FeatureSpec(name="wav2vec2", dim=768, layers=13, frame_rate=50.0, dtype="float16", config={})
    writer = StoreWriter(root)
    rows = writer.plan(
        utterances,
        num_samples=[len(f) * 320 for f in frames],
        features=[spec],
        capacities={"wav2vec2": [len(f) for f in frames]},
    )
    if not direct:
        writer._direct_chunks = lambda name: None  # force the zarr.Array path
    started = time.perf_counter()
    for row, block in zip(rows, frames):
        writer.write_utterance(row, {"wav2vec2": block}, audio_sha256="0", duration=len(block) / 50)
    seconds = time.perf_counter() - started
    writer.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 utterances, 2 repetitions")
    parser.add_argument("--utterances", type=int, default=60)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", help="results folder (default tests/benchmarks/results)")
    args = parser.parse_args()
    count, reps = (12, 2) if args.quick else (args.utterances, args.reps)
    rng = np.random.default_rng(0)
    frames = [rng.standard_normal((int(n), 13, 768)).astype("float16") for n in rng.integers(150, 260, count)]
    megabytes = sum(f.nbytes for f in frames) / 1e6
    info = machine_info(["numpy", "zarr", "numcodecs"])
    times: dict[str, list[float]] = {"zarr": [], "direct": []}
    work = Path(tempfile.mkdtemp(prefix="w2v2ser-write-"))
    try:
        for rep in range(reps):
            order = ["zarr", "direct"] if rep % 2 == 0 else ["direct", "zarr"]
            for mode in order:
                times[mode].append(_write_all(work / f"{mode}-{rep}.zarr", frames, direct=mode == "direct"))
                print(f"rep {rep} {mode:<7} {megabytes / times[mode][-1]:8.1f} MB/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rates = {mode: megabytes / statistics.median(values) for mode, values in times.items()}
    ratios = [z / d for z, d in zip(times["zarr"], times["direct"])]
    ratio = statistics.median(ratios)
    table = format_table(
        ["path", "MB/s (median)", "audio s/s (~1 MB each)"],
        [[mode, round(rate, 1), round(rate, 1)] for mode, rate in rates.items()],
    )
    print(table)
    headline = f"store writes: direct chunk files / zarr array API = {ratio:.2f}x ({rates['direct']:.1f} vs {rates['zarr']:.1f} MB/s)"
    write_results(
        "bench_store_write" + ("_quick" if args.quick else ""),
        {"command": command_line(), "machine": {**info, "load_average_start": load_average()},
         "megabytes": megabytes, "utterances": count, "seconds": times, "mb_per_s": rates, "ratio_per_rep": ratios},
        table, out=args.out, headline=headline,
        notes=["one writer thread, float16 [T, 13, 768], chunks (128, 1, 768), Blosc lz4 + shuffle; "
               "statistics, crc32 and the fsynced journal line are included in both paths"],
    )
    print(headline)


if __name__ == "__main__":
    main()
