"""Finalize of a synthetic 1,000,000-utterance index: wall time and peak memory.

Plans N utterances (one 2-D feature) through ``StoreWriter.plan``, writes one commit record per
utterance straight into a journal (as work units would, without frames), then times
``StoreWriter.finalize`` in a fresh process and reads its peak resident memory (ru_maxrss).
The index and the statistics are row-chunked arrays, so the file count stays bounded as the
corpus grows; memory does not yet (the resolved journal events are held in memory).

    python3 tests/benchmarks/bench_store_index.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import bootstrap_w2v2ser, command_line, format_table, machine_info, peak_rss_mb, write_results

bootstrap_w2v2ser()

from w2v2ser.store import FeatureSpec, StoreWriter, Utterance  # noqa: E402

_FINALIZE = """
import json, resource, sys, time
from w2v2ser.store import StoreWriter, open_store
t = time.perf_counter()
w = StoreWriter(sys.argv[1]); w.finalize(); w.close()
wall = time.perf_counter() - t
t = time.perf_counter()
s = open_store(sys.argv[1]); n = len(s.list_utterances())
print(json.dumps({"finalize_s": wall, "open_and_list_s": time.perf_counter() - t, "done": n,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--speakers", type=int, default=1000)
    parser.add_argument("--workdir")
    parser.add_argument("--out")
    args = parser.parse_args()
    n = args.rows
    work = Path(tempfile.mkdtemp(prefix="w2v2ser-index-", dir=args.workdir))
    try:
        path = work / "s.zarr"
        spec = FeatureSpec(name="egemaps", dim=25, layers=None, frame_rate=100.0, dtype="float32", config={})
        utts = [Utterance(id=f"utt{i:07d}", path=f"/corpus/{i}.flac", speaker=f"spk{i % args.speakers:04d}",
                          label="neutral") for i in range(n)]
        t = time.perf_counter()
        writer = StoreWriter(path)
        writer.plan(utts, num_samples=[48000] * n, features=[spec], capacities={"egemaps": [300] * n})
        units = writer.plan_units([list(range(k, min(k + 64, n))) for k in range(0, n, 64)], ["egemaps"])
        writer.close()
        plan_s = time.perf_counter() - t
        del utts
        # One commit record per utterance, as the units would append them (frames not written:
        # finalize reads only journals, the index and the statistics arrays).
        t = time.perf_counter()
        journal = path / "_journal" / "main.jsonl"
        with open(journal, "a") as f:
            stamp = time.time_ns()
            for unit in units:
                start, slot = unit.regions["egemaps"][0], unit.slots["egemaps"][0]
                for k, row in enumerate(unit.rows):
                    f.write(json.dumps({"audio_sha256": "0" * 64, "crc32": [0], "duration": 3.0, "event": "commit",
                                        "feature": "egemaps", "id": f"utt{row:07d}", "index": row,
                                        "length": 300, "offset": start + 300 * k, "pid": 1, "slot": slot + k,
                                        "t": stamp}, separators=(",", ":")) + "\n")
        journal_s = time.perf_counter() - t
        del units
        done = subprocess.run([sys.executable, "-c", _FINALIZE, str(path)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        if done.returncode:
            raise SystemExit(done.stderr)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        files = sum(1 for p in path.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = format_table(["step", "seconds", "peak RSS MiB"], [
        ["plan + plan_units (driver)", round(plan_s, 1), round(peak_rss_mb(), 0)],
        ["write journal lines", round(journal_s, 1), ""],
        ["finalize (fresh process)", round(result["finalize_s"], 1), round(result["peak_rss_mb"], 0)],
        ["open_store + list_utterances", round(result["open_and_list_s"], 1), ""]])
    print(table)
    headline = (f"{n:,} utterances: finalize {result['finalize_s']:.0f} s, peak {result['peak_rss_mb']:.0f} MiB; "
                f"{files} files in the store (index and tables)")
    write_results("bench_store_index", {"command": command_line(), "machine": machine_info(["numpy", "zarr"]),
                                        "rows": n, "plan_s": plan_s, "journal_s": journal_s, **result,
                                        "files": files, "bytes": size}, table, out=args.out, headline=headline,
                  notes=["one 2-D feature (25 float32), 1000 speakers, work units of 64 utterances; frames not written"])
    print(headline)


if __name__ == "__main__":
    main()
