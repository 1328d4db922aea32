"""Reads in a forked child against its parent and a spawned child (warm page cache).

A PyTorch DataLoader worker is a fork of the process that opened the store. zarrs' thread pool does
not survive fork(), so a child forked after its parent read through zarrs reads through zarr's own
codec pipeline (w2v2ser.store._layout). This prints what that costs: the same ``read_batch`` calls
(all layers, batches of 16) timed in the parent, in a forked child and in a spawned child, best of
three passes each, after one warm-up pass in the parent.

    python3 tests/benchmarks/bench_fork.py [--utterances 96] [--workdir DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import time
from pathlib import Path

from _common import bootstrap_w2v2ser, command_line, format_table, machine_info, make_workdir, write_results

bootstrap_w2v2ser()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the synthetic store builder

_STORE: list = []  # the parent's reader, inherited by a forked child


def _time_reads(path: str | None = None, repeats: int = 3) -> float:
    """Best wall time of reading every utterance, all layers, in ``read_batch`` calls of 16."""
    from w2v2ser.store import open_store

    store = open_store(path) if path else _STORE[0]
    ids = [u.id for u in store.list_utterances()]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for k in range(0, len(ids), 16):
            store.read_batch(ids[k:k + 16], "wav2vec2")
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=96)
    parser.add_argument("--workdir")
    parser.add_argument("--out")
    args = parser.parse_args()

    from stage2_fixtures import build_store
    from w2v2ser.store import Utterance, open_store

    work = make_workdir(args.workdir, "bench_fork_")
    try:
        path = work / "base.zarr"
        utterances = [Utterance(id=f"u{i:05d}", path=f"u{i}.wav", speaker=f"s{i % 8}", label=f"c{i % 4}")
                      for i in range(args.utterances)]
        build_store(path, utterances=utterances, layers=13, dim=768, features=("wav2vec2",),
                    min_seconds=3.0, max_seconds=5.0)
        _STORE[:] = [open_store(path)]
        _time_reads(repeats=1)  # warm the page cache and start zarrs in the parent
        parent = _time_reads()
        with multiprocessing.get_context("fork").Pool(1) as pool:
            forked = pool.apply(_time_reads)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            spawned = pool.apply(_time_reads, (str(path),))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [["parent (zarrs)", f"{parent:.2f}", "1.00"],
            ["forked child (zarr's pipeline)", f"{forked:.2f}", f"{forked / parent:.2f}"],
            ["spawned child (zarrs)", f"{spawned:.2f}", f"{spawned / parent:.2f}"]]
    table = format_table(["process", "wall s", "/ parent"], rows)
    print(table)
    headline = f"forked child / parent {forked / parent:.2f}x; spawned child / parent {spawned / parent:.2f}x"
    write_results("bench_fork", {"command": command_line(), "machine": machine_info(),
                                 "utterances": args.utterances, "parent_s": parent, "forked_s": forked,
                                 "spawned_s": spawned}, table, out=args.out, headline=headline,
                  notes=[f"{args.utterances} synthetic utterances of 3-5 s, 13 x 768 float16; warm page cache; "
                         "read_batch of 16, all layers; best of 3 passes"])
    print(headline)


if __name__ == "__main__":
    main()
