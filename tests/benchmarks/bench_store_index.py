"""Finalize of a synthetic 1,000,000-utterance index: wall time and peak memory.

Plans N utterances (one 2-D feature) through ``StoreWriter.plan``, writes one commit record per
utterance straight into a journal (as work units would, without frames), then times
``StoreWriter.finalize`` in a fresh process and reads its peak resident memory (VmHWM).
The index and the statistics are row-chunked arrays, so the file count stays bounded as the
corpus grows; finalize folds the journal events into numpy columns indexed by row, so its
memory grows by a few hundred bytes per utterance, not by the events' Python objects.

``--plain-tables`` also builds the same store with its table and index arrays uncompressed
(crc32c only, as before they were zstd-compressed) and finalizes both, alternating which goes first,
``--reps`` times: store bytes (journal excluded) and finalize seconds side by side.

``--baseline-code DIR`` also finalizes a copy of the same store with another w2v2ser source tree
(e.g. ``git archive <commit> | tar -x -C DIR``), one after the other in the same run, so the two
figures share the machine's load.

    python3 tests/benchmarks/bench_store_index.py --rows 100000 1000000 --baseline-code /tmp/w2v2ser-main
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
from typing import Any

from _common import (
    bootstrap_w2v2ser,
    command_line,
    format_table,
    machine_info,
    make_workdir,
    peak_rss_mb,
    write_results,
)

bootstrap_w2v2ser()

from w2v2ser.store import FeatureSpec, StoreWriter, Utterance  # noqa: E402

_FINALIZE = """
import json, resource, sys, time
if len(sys.argv) > 2:  # another source tree: import w2v2ser from it
    sys.path.insert(0, sys.argv[2] + "/tests/benchmarks")
    from _common import bootstrap_w2v2ser
    assert bootstrap_w2v2ser().startswith("bootstrapped"), "w2v2ser is installed: cannot load another tree"
import w2v2ser.store
from w2v2ser.store import StoreWriter, open_store
t = time.perf_counter()
w = StoreWriter(sys.argv[1]); w.finalize(); w.close()
wall = time.perf_counter() - t
# VmHWM: the peak of this process's own memory. ru_maxrss would also count the parent's
# peak, which Linux carries into a child started with vfork + exec (as subprocess does).
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        rss = int(line.split()[1]) / 1024
t = time.perf_counter()
s = open_store(sys.argv[1]); n = len(s.list_utterances())
print(json.dumps({"finalize_s": wall, "open_and_list_s": time.perf_counter() - t, "done": n,
                  "peak_rss_mb": rss, "code": w2v2ser.store.__file__}))
"""


def _plain_tables() -> Any:
    """A context in which new table and index arrays get no compressor (crc32c only)."""
    from unittest import mock

    from zarr.codecs import Crc32cCodec

    import w2v2ser.store._layout as layout
    import w2v2ser.store._writer as writer

    original = layout.create_array

    def create_array(group: Any, name: str, **kwargs: Any) -> Any:
        kwargs.setdefault("compressors", [Crc32cCodec()])
        return original(group, name, **kwargs)

    return mock.patch.object(writer, "create_array", create_array)


def _store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and "_journal" not in p.parts)


def _compare_tables(n: int, speakers: int, reps: int, workdir: str | None) -> list[dict]:
    """Finalize of the same store with zstd tables (today) and uncompressed ones, alternating."""
    out = []
    for rep in range(reps):
        for mode in (("zstd", "plain") if rep % 2 == 0 else ("plain", "zstd")):
            work = make_workdir(workdir, "w2v2ser-index-")
            try:
                path = work / "s.zarr"
                if mode == "plain":
                    with _plain_tables():
                        _build(path, n, speakers)
                else:
                    _build(path, n, speakers)
                result = _finalize(path, None)
                out.append({"rows": n, "rep": rep, "tables": mode, "bytes": _store_bytes(path), **result})
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return out


def _build(path: Path, n: int, speakers: int) -> tuple[float, float]:
    spec = FeatureSpec(name="egemaps", dim=25, layers=None, frame_rate=100.0, dtype="float32", config={})
    utts = [Utterance(id=f"utt{i:07d}", path=f"/corpus/{i}.flac", speaker=f"spk{i % speakers:04d}",
                      label="neutral") for i in range(n)]
    t = time.perf_counter()
    writer = StoreWriter(path)
    writer.plan(utts, num_samples=[48000] * n, features=[spec], capacities={"egemaps": [300] * n})
    units = writer.plan_units([list(range(k, min(k + 64, n))) for k in range(0, n, 64)], ["egemaps"])
    writer.close()
    plan_s = time.perf_counter() - t
    del utts
    # One commit record per utterance, as the units would append them (frames not written:
    # finalize reads only journals, the index and the statistics arrays). Their CRCs are those of
    # digital silence, whose statistics (zeros) are not stored: finalize refuses missing ones else.
    import numpy as np

    from w2v2ser.store._layout import crc32_rows, read_meta, row_checksum

    silence = [int(v) for v in crc32_rows(np.zeros((300, 25), np.float32), row_checksum(path, read_meta(path)[1]))]
    t = time.perf_counter()
    with open(path / "_journal" / "main.jsonl", "a") as f:
        stamp = time.time_ns()
        for unit in units:
            start, slot = unit.regions["egemaps"][0], unit.slots["egemaps"][0]
            for k, row in enumerate(unit.rows):
                f.write(json.dumps({"audio_sha256": "0" * 64, "crc32": silence, "duration": 3.0, "event": "commit",
                                    "feature": "egemaps", "id": f"utt{row:07d}", "index": row,
                                    "length": 300, "offset": start + 300 * k, "pid": 1, "slot": slot + k,
                                    "t": stamp}, separators=(",", ":")) + "\n")
    return plan_s, time.perf_counter() - t


def _finalize(path: Path, code: str | None) -> dict:
    if code is None:
        cmd, env = [sys.executable, "-c", _FINALIZE, str(path)], {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    else:  # the base interpreter (outside any virtual environment holding an installed w2v2ser)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        cmd = [getattr(sys, "_base_executable", sys.executable), "-c", _FINALIZE, str(path), code]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--speakers", type=int, default=1000)
    parser.add_argument("--baseline-code", help="source tree of another w2v2ser, finalized side by side")
    parser.add_argument("--plain-tables", action="store_true",
                        help="instead: zstd tables vs uncompressed ones, bytes and finalize seconds")
    parser.add_argument("--reps", type=int, default=2, help="--plain-tables: repetitions of each")
    parser.add_argument("--workdir")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.plain_tables:
        runs = [r for n in args.rows for r in _compare_tables(n, args.speakers, args.reps, args.workdir)]
        table = format_table(["utterances", "rep", "tables", "store MB (no journal)", "finalize s", "peak RSS MiB"],
                             [[f"{r['rows']:,}", r["rep"], r["tables"], round(r["bytes"] / 1e6, 1),
                               round(r["finalize_s"], 1), round(r["peak_rss_mb"], 0)] for r in runs])
        print(table)
        last = [r for r in runs if r["rows"] == args.rows[-1]]
        size = {m: max(r["bytes"] for r in last if r["tables"] == m) for m in ("zstd", "plain")}
        seconds = {m: [round(r["finalize_s"], 1) for r in last if r["tables"] == m] for m in ("zstd", "plain")}
        headline = (f"{args.rows[-1]:,} utterances: store {size['zstd'] / 1e6:.1f} MB with zstd tables vs "
                    f"{size['plain'] / 1e6:.1f} MB uncompressed ({size['plain'] / size['zstd']:.1f}x); finalize "
                    f"{seconds['zstd']} vs {seconds['plain']} s")
        write_results("bench_store_index_tables", {"command": command_line(),
                                                   "machine": machine_info(["numpy", "zarr"]), "runs": runs},
                      table, out=args.out, headline=headline,
                      notes=["one 2-D feature (25 float32), frames not written: the store is its tables, index "
                             "and statistics", "finalize in a fresh process; the order alternates every repetition"])
        print(headline)
        return
    runs, rows_out = [], []
    for n in args.rows:
        work = make_workdir(args.workdir, "w2v2ser-index-")
        try:
            path = work / "s.zarr"
            plan_s, journal_s = _build(path, n, args.speakers)
            if args.baseline_code:
                shutil.copytree(path, work / "baseline.zarr")
            result = _finalize(path, None)
            files = sum(1 for p in path.rglob("*") if p.is_file())
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            base = _finalize(work / "baseline.zarr", args.baseline_code) if args.baseline_code else None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        runs.append({"rows": n, "plan_s": plan_s, "journal_s": journal_s, **result, "files": files, "bytes": size,
                     "baseline": base})
        rows_out += [[f"{n:,}", "plan + plan_units (driver)", round(plan_s, 1), round(peak_rss_mb(), 0)],
                     [f"{n:,}", "write journal lines", round(journal_s, 1), ""],
                     [f"{n:,}", "finalize (fresh process)", round(result["finalize_s"], 1),
                      round(result["peak_rss_mb"], 0)]]
        if base:
            rows_out.append([f"{n:,}", "finalize, baseline code (fresh process)", round(base["finalize_s"], 1),
                             round(base["peak_rss_mb"], 0)])
        rows_out.append([f"{n:,}", "open_store + list_utterances", round(result["open_and_list_s"], 1), ""])
    table = format_table(["utterances", "step", "seconds", "peak RSS MiB"], rows_out)
    print(table)
    last = runs[-1]
    headline = (f"{last['rows']:,} utterances: finalize {last['finalize_s']:.0f} s, peak "
                f"{last['peak_rss_mb']:.0f} MiB; {last['files']} files in the store (index and tables)")
    if last["baseline"]:
        headline += (f"; baseline code: {last['baseline']['finalize_s']:.0f} s, "
                     f"{last['baseline']['peak_rss_mb']:.0f} MiB")
    notes = ["one 2-D feature (25 float32), 1000 speakers, work units of 64 utterances; frames not written",
             "peak RSS is the whole finalize process, imports (numpy, zarr, pyarrow) included"]
    if args.baseline_code:
        notes.append(f"baseline code: {args.baseline_code} (finalized on a copy of the same store, right after)")
    write_results("bench_store_index", {"command": command_line(), "machine": machine_info(["numpy", "zarr"]),
                                        "runs": runs, **{k: v for k, v in last.items() if k != "baseline"}},
                  table, out=args.out, headline=headline, notes=notes)
    print(headline)


if __name__ == "__main__":
    main()
