"""Pipeline ceiling without the model: decode + store only, against the disk's raw speed.

``extract_corpus`` runs on real audio files with the wav2vec2 model swapped for a generator of
random ``[T, 13, 768]`` float16 frames at zero cost (slices of one pre-generated block), so the
run measures what decoding, statistics, checksums and ``StoreWriter`` shard writes (fsynced)
sustain. The same run times ``dd if=/dev/zero bs=4M conv=fsync`` on the store's disk and
converts it to audio seconds per second at the store's bytes per audio second.

    python3 tests/benchmarks/bench_ceiling.py --corpus ../shared/data/ravdess --files 200

With ``--baseline-code DIR --reps R`` it runs this script R times for each of two source trees
(DIR and this one), alternating, each in a fresh process of ``--baseline-python`` (an
interpreter with the dependencies but without an installed w2v2ser), and compares them.

The last line is the headline: audio s/s of the pipeline and of the raw disk.
"""

from __future__ import annotations

import argparse
import json
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
    REPO_ROOT,
    bootstrap_w2v2ser,
    command_line,
    format_table,
    load_average,
    machine_info,
    make_workdir,
    write_results,
)

bootstrap_w2v2ser()

from w2v2ser.store import FeatureSpec, Utterance  # noqa: E402
from w2v2ser.extract import extract_corpus  # noqa: E402

LAYERS, DIM, HOP = 13, 768, 320


class _Config:
    batch_seconds = 32.0
    max_seconds = None

    def to_dict(self) -> dict:
        return {"generator": "random float16", "layers": LAYERS, "dim": DIM}


class RandomFrames:
    """Stands in for wav2vec2: same frame count and shape, no computation."""

    name = "wav2vec2"
    config = _Config()

    def __init__(self) -> None:
        self.pool = np.random.default_rng(0).standard_normal((3000, LAYERS, DIM)).astype(np.float16)

    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(name=self.name, dim=DIM, layers=LAYERS, frame_rate=16000 / HOP, dtype="float16",
                           config=self.config.to_dict())

    def max_frames(self, num_samples: int) -> int:
        return max(0, (num_samples - 400) // HOP + 1)

    def extract(self, signals):
        out = []
        for s in signals:
            n = self.max_frames(len(s))
            reps = -(-n // len(self.pool))
            out.append(np.concatenate([self.pool] * reps)[:n] if reps > 1 else self.pool[:n])
        return out


def _dd_mb_per_s(folder: Path, megabytes: int) -> float:
    target = folder / "dd.bin"
    started = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=4M", f"count={max(1, megabytes // 4)}",
                    "conv=fsync"], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    target.unlink()
    return max(1, megabytes // 4) * 4 * 2**20 / 1e6 / seconds


def _compare_codes(args: argparse.Namespace) -> None:
    """This script in fresh processes with the baseline tree and with this one, alternating."""
    trees = {"baseline": str(Path(args.baseline_code).resolve()), "current": str(REPO_ROOT)}
    python = args.baseline_python or getattr(sys, "_base_executable", sys.executable)
    rates: dict[str, list[float]] = {name: [] for name in trees}
    disk: dict[str, list[float]] = {name: [] for name in trees}
    for rep in range(args.reps):
        for name in (["baseline", "current"] if rep % 2 == 0 else ["current", "baseline"]):
            with tempfile.TemporaryDirectory() as out:
                env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
                env["W2V2SER_CODE"] = trees[name]
                command = [python, __file__, "--corpus", str(Path(args.corpus).resolve()), "--files", str(args.files),
                           "--shard-size", str(args.shard_size), "--out", out]
                if args.workdir:
                    command += ["--workdir", str(Path(args.workdir).resolve())]
                subprocess.run(command, check=True, env=env, cwd=tempfile.gettempdir(), capture_output=True)
                result = json.loads((Path(out) / "bench_ceiling.json").read_text())
            if not result["w2v2ser_from"].startswith(trees[name]):
                raise SystemExit(f"{name}: w2v2ser came from {result['w2v2ser_from']}, not {trees[name]}; give "
                                 f"--baseline-python an interpreter without an installed w2v2ser")
            rates[name].append(result["pipeline_audio_s_per_s"])
            disk[name].append(result["disk_audio_s_per_s"])
            print(f"rep {rep} {name:<8} {rates[name][-1]:7.1f} audio s/s (disk {disk[name][-1]:.0f})", flush=True)
    ratios = [c / b for c, b in zip(rates["current"], rates["baseline"])]
    table = format_table(["rep", "baseline audio s/s", "current audio s/s", "current / baseline", "disk audio s/s (b, c)"],
                         [[k, round(b, 1), round(c, 1), round(r, 2), f"{db:.0f}, {dc:.0f}"] for k, (b, c, r, db, dc)
                          in enumerate(zip(rates["baseline"], rates["current"], ratios, disk["baseline"], disk["current"]))])
    print(table)
    headline = (f"pipeline ceiling, this code / {args.baseline_code}: {statistics.median(ratios):.2f}x (median of "
                f"{args.reps} alternating pairs; medians {statistics.median(rates['current']):.0f} vs "
                f"{statistics.median(rates['baseline']):.0f} audio s/s, {args.files} files)")
    write_results("bench_ceiling_codes", {"command": command_line(), "machine": {
        **machine_info(["numpy", "zarr", "zarrs"]), "load_average_end": load_average()}, "trees": trees,
        "audio_s_per_s": rates, "disk_audio_s_per_s": disk, "ratios": ratios}, table, out=args.out, headline=headline)
    print(headline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="../shared/data/ravdess", help="folder of audio files (searched recursively)")
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--shard-size", type=int, default=64, help="utterances per work unit")
    parser.add_argument("--workdir", help="folder on the disk to measure (default: a temp dir)")
    parser.add_argument("--out", help="results folder (default tests/benchmarks/results)")
    parser.add_argument("--baseline-code", help="another source tree: compare the two (see above)")
    parser.add_argument("--baseline-python", help="interpreter for both trees' runs (default: the base interpreter)")
    parser.add_argument("--reps", type=int, default=3, help="runs per tree with --baseline-code")
    args = parser.parse_args()
    if args.baseline_code:
        _compare_codes(args)
        return
    files = sorted(p for p in Path(args.corpus).rglob("*") if p.suffix.lower() in (".flac", ".wav"))[: args.files]
    if not files:
        raise SystemExit(f"no .flac/.wav files under {args.corpus}")
    utterances = [Utterance(id=f"f{i:05d}", path=str(p), speaker=p.parent.name, label="x") for i, p in enumerate(files)]
    work = make_workdir(args.workdir, "w2v2ser-ceiling-")
    try:
        bytes_per_audio_s = 16000 / HOP * LAYERS * DIM * 2
        dd_before = _dd_mb_per_s(work, 512)
        store = work / "s.zarr"
        generator = RandomFrames()  # its frame pool is made before the clock starts
        started = time.perf_counter()
        summary = extract_corpus(utterances, store, extractors=[generator], shard_size=args.shard_size,
                                 progress=False)
        wall = time.perf_counter() - started
        dd_after = _dd_mb_per_s(work, 512)
        size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        files_written = sum(1 for p in store.rglob("*") if p.is_file())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    dd = (dd_before + dd_after) / 2
    audio_rate = summary.audio_seconds / wall
    disk_audio_rate = dd * 1e6 / bytes_per_audio_s
    table = format_table(
        ["what", "audio s/s", "MB/s"],
        [["pipeline: decode + random frames + store (fsynced)", round(audio_rate, 1),
          round(audio_rate * bytes_per_audio_s / 1e6, 1)],
         ["disk: dd conv=fsync (mean of before/after)", round(disk_audio_rate, 1), round(dd, 1)]])
    print(table)
    headline = (f"pipeline ceiling without the model: {audio_rate:.0f} audio s/s = {audio_rate / disk_audio_rate:.2f}x "
                f"the disk's raw {disk_audio_rate:.0f} audio s/s ({summary.audio_seconds:.0f} audio s, "
                f"{len(files)} files, wall {wall:.1f} s)")
    write_results(
        "bench_ceiling", {"command": command_line(), "machine": {**machine_info(["numpy", "zarr", "zarrs"]),
                                                                 "load_average_end": load_average()},
                          "files": len(files), "audio_seconds": summary.audio_seconds, "wall_seconds": wall,
                          "pipeline_audio_s_per_s": audio_rate, "dd_mb_per_s": [dd_before, dd_after],
                          "disk_audio_s_per_s": disk_audio_rate, "store_bytes": size, "store_files": files_written,
                          "complete": summary.complete, "w2v2ser_from": str(Path(extract_corpus.__code__.co_filename))},
        table, out=args.out, headline=headline,
        notes=[f"{bytes_per_audio_s / 1e6:.3f} MB per audio second (13 x 768 float16 at 50 frames/s); "
               f"work units of {args.shard_size} utterances; in-process (no Dask)"])
    print(headline)


if __name__ == "__main__":
    main()
