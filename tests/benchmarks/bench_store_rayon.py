"""zarrs' thread pool for store reads: ``bench_store.py`` with w2v2ser's default (at least 8 rayon
threads) against rayon's own default (one thread per core), fresh processes alternating.

zarrs runs its chunk reads on rayon's global pool, sized by ``RAYON_NUM_THREADS`` when the pool is
first built; w2v2ser sets it to max(8, cores) unless the user did (``store/_layout.py``). Each round
runs ``bench_store.py`` once per setting, in alternating order, and the table gives the medians over
rounds of the zarr store's utterances per second, cold and warm, with the ratio of the two settings.

    python3 tests/benchmarks/bench_store_rayon.py --rounds 3 --utterances 120 --workdir DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

READS = ("all_layers", "all_layers_batch16", "one_layer", "one_layer_batch16")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--utterances", type=int, default=120)
    p.add_argument("--workdir", default=None, help="folder for bench_store.py's copies (default: a temp dir)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    settings = {f"rayon default ({cores})": str(cores), "w2v2ser default": None}
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    if args.workdir is not None:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for round_ in range(args.rounds):
            order = list(settings) if round_ % 2 == 0 else list(settings)[::-1]
            for name in order:
                env = {k: v for k, v in os.environ.items() if k != "RAYON_NUM_THREADS"}
                if settings[name] is not None:
                    env["RAYON_NUM_THREADS"] = settings[name]
                out = Path(tmp) / f"{round_}_{len(runs[name])}_{settings[name] or 'w2v2ser'}"
                subprocess.run([sys.executable, str(Path(__file__).with_name("bench_store.py")), "--utterances",
                                str(args.utterances), "--reps", "1", "--workdir", tmp, "--out", str(out)],
                               check=True, env=env, stdout=subprocess.DEVNULL)
                result = json.loads((out / "bench_store.json").read_text())
                runs[name].append(result)
                print(f"round {round_} {name}: {result['headline']}", flush=True)
    rows, summary = [], {}
    (base, ours) = list(settings)
    for cache in ("cold", "warm"):
        for kind in READS:
            key = f"{cache}/{kind}/zarr_store"
            values = {name: float(np.median([r["summary"][key]["utt_per_s"] for r in runs[name]])) for name in settings}
            npy = float(np.median([r["summary"][f"{cache}/{kind}/npy_per_utterance"]["utt_per_s"]
                                   for name in settings for r in runs[name]]))
            summary[key] = {**values, "npy_per_utterance": npy, "ratio": values[ours] / values[base]}
            rows.append([cache, kind, values[base], values[ours], values[ours] / values[base],
                         values[base] / npy, values[ours] / npy])
    table = _common.format_table(["cache", "read", f"{base} utt/s", f"{ours} utt/s", "ours / rayon's",
                                  "rayon's / npy", "ours / npy"], rows)
    cold = summary["cold/all_layers/zarr_store"]["ratio"]
    batch = summary["cold/all_layers_batch16/zarr_store"]["ratio"]
    headline = (f"headline: cold all-layer reads {cold:.2f}x with w2v2ser's rayon threads, {batch:.2f}x through "
                f"read_batch of 16; warm {summary['warm/all_layers/zarr_store']['ratio']:.2f}x")
    payload = {"benchmark": "bench_store_rayon", "command": _common.command_line(),
               "machine": _common.machine_info(["zarr", "zarrs"]), "rounds": args.rounds,
               "utterances": args.utterances, "summary": summary,
               "runs": {name: [r["summary"] for r in rs] for name, rs in runs.items()}}
    print(table)
    notes = [f"{args.rounds} rounds, settings alternating; medians over rounds of bench_store.py's medians",
             "npy: one .npy per utterance, median over every run of both settings"]
    path = _common.write_results("bench_store_rayon", payload, table, out=args.out, headline=headline, notes=notes)
    print(f"results: {path}")
    print(headline)


if __name__ == "__main__":
    main()
