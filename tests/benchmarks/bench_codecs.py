"""Codec choice for the store's frame data, measured on real activations.

Data: hidden states of a full-size wav2vec2-base with random weights (``Wav2Vec2Config()``,
13 x 768, float16) on a few RAVDESS files, and eGeMAPS LLDs (25 float32) read from an existing
RAVDESS store. Each codec is written as the store writes data (Zarr v3 shards of 240 s, inner
chunks of one layer, crc32c after the codec) through zarr-python with the zarrs pipeline, then
read back whole. Reports write MB/s (incl. fsync), read MB/s (warm) and stored bytes per audio s.

    python3 tests/benchmarks/bench_codecs.py --ravdess ../shared/data/ravdess --files 6 --egemaps-store STORE
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np

from _common import bootstrap_w2v2ser, command_line, format_table, machine_info, make_workdir, write_results

bootstrap_w2v2ser()

import zarr  # noqa: E402
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec  # noqa: E402

from w2v2ser.store._layout import fast_pipeline  # noqa: E402

CODECS = {
    "none": [],
    "lz4": [BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")],
    "lz4+shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    "lz4+bitshuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")],
    "zstd": [ZstdCodec(level=3)],
    "zstd+shuffle": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
    "zstd+bitshuffle": [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")],
}


def wav2vec2_frames(folder: str, files: int) -> tuple[np.ndarray, float]:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from w2v2ser.extract import read_audio

    torch.manual_seed(0)
    model = Wav2Vec2Model(Wav2Vec2Config()).eval()
    paths = sorted(Path(folder).rglob("*.flac"))[:: max(1, len(list(Path(folder).rglob("*.flac"))) // files)][:files]
    out, seconds = [], 0.0
    with torch.inference_mode():
        for path in paths:
            x = read_audio(str(path))
            seconds += len(x) / 16000
            hidden = model(torch.from_numpy(x)[None], output_hidden_states=True).hidden_states
            out.append(torch.stack(hidden, 2)[0].numpy().astype(np.float16))  # [T, 13, 768]
    return np.concatenate(out), seconds


def egemaps_frames(store: str, utterances: int) -> tuple[np.ndarray, float]:
    g = zarr.open_group(store, mode="r")
    off, length = g["features/egemaps/offset"][:], g["features/egemaps/length"][:]
    rows = [i for i in range(len(off)) if length[i] > 0][:utterances]
    data = g["features/egemaps/data"]
    frames = np.concatenate([data[off[i]:off[i] + length[i]] for i in rows])
    return frames, len(frames) / 100.0


def measure(work: Path, frames: np.ndarray, codec: list, chunk: int, shard: int) -> dict:
    path = work / "a.zarr"
    shutil.rmtree(path, ignore_errors=True)
    one_layer = (chunk, 1, frames.shape[2]) if frames.ndim == 3 else (chunk, frames.shape[1])
    end = -(-len(frames) // shard) * shard
    with fast_pipeline():
        array = zarr.create_array(str(path), shape=(end, *frames.shape[1:]), chunks=one_layer,
                                  shards=(shard, *frames.shape[1:]), dtype=frames.dtype, fill_value=0,
                                  compressors=[*codec, Crc32cCodec()], config={"write_empty_chunks": False})
    padded = np.zeros((end, *frames.shape[1:]), frames.dtype)
    padded[: len(frames)] = frames
    t = time.perf_counter()
    for lo in range(0, end, shard):
        array[lo:lo + shard] = padded[lo:lo + shard]
    for p in path.rglob("*"):
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    write = time.perf_counter() - t
    with fast_pipeline():
        array = zarr.open_array(str(path), mode="r")
    t = time.perf_counter()
    back = array[: len(frames)]
    read = time.perf_counter() - t
    assert np.array_equal(back, frames)
    stored = sum(p.stat().st_size for p in (path / "c").rglob("*") if p.is_file())
    return {"write_mb_s": frames.nbytes / 1e6 / write, "read_mb_s": frames.nbytes / 1e6 / read, "bytes": stored}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ravdess", default="../shared/data/ravdess")
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--egemaps-store", required=True, help="a RAVDESS store with eGeMAPS (w2v2ser extract)")
    parser.add_argument("--egemaps-utterances", type=int, default=400)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--workdir")
    parser.add_argument("--out")
    args = parser.parse_args()
    if not (Path(args.egemaps_store) / "features" / "egemaps").is_dir():  # before minutes of model forward
        parser.error(f"--egemaps-store {args.egemaps_store} holds no eGeMAPS (no features/egemaps folder); give a "
                     "store written by `w2v2ser extract ravdess DIR --features egemaps`")
    t = time.perf_counter()
    w2v, w2v_s = wav2vec2_frames(args.ravdess, args.files)
    print(f"wav2vec2-base (random weights): {w2v.shape} from {w2v_s:.1f} audio s in {time.perf_counter() - t:.0f} s",
          flush=True)
    ege, ege_s = egemaps_frames(args.egemaps_store, args.egemaps_utterances)
    print(f"eGeMAPS: {ege.shape} ({ege_s:.0f} audio s)", flush=True)
    data = {"wav2vec2": (w2v, w2v_s, 128, 12032), "egemaps": (ege, ege_s, 512, 24064)}
    work = make_workdir(args.workdir, "w2v2ser-codecs-")
    rows, results = [], {}
    try:
        for feature, (frames, seconds, chunk, shard) in data.items():
            for name, codec in CODECS.items():
                runs = [measure(work, frames, codec, chunk, shard) for _ in range(args.reps)]
                r = {k: float(np.median([x[k] for x in runs])) for k in runs[0]}
                r["bytes_per_audio_s"] = r["bytes"] / seconds
                r["ratio"] = frames.nbytes / r["bytes"]
                results[f"{feature}/{name}"] = r
                rows.append([feature, name, round(r["write_mb_s"], 1), round(r["read_mb_s"], 1),
                             round(r["bytes_per_audio_s"]), round(r["ratio"], 3)])
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = format_table(["feature", "codec (+crc32c)", "write MB/s", "read MB/s", "bytes / audio s",
                          "compression ratio"], rows)
    print(table)
    best = max((k for k in results if k.startswith("wav2vec2/")), key=lambda k: results[k]["ratio"])
    headline = (f"wav2vec2 float16: best ratio {results[best]['ratio']:.3f} ({best}); none writes "
                f"{results['wav2vec2/none']['write_mb_s']:.0f} MB/s vs {results[best]['write_mb_s']:.0f}")
    write_results("bench_codecs", {"command": command_line(), "machine": machine_info(["zarr", "zarrs", "numcodecs"]),
                                   "audio_seconds": {"wav2vec2": w2v_s, "egemaps": ege_s}, "results": results},
                  table, out=args.out, headline=headline,
                  notes=["writes include fsync of every file; reads warm (page cache), whole array",
                         "wav2vec2-base has random weights: activations for size/speed only"])
    print(headline)


if __name__ == "__main__":
    main()
