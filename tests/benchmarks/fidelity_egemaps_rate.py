"""eGeMAPS at each file's own sample rate (``native``) against resampling to 16 kHz first.

Two parts, one run:

1. A real corpus (default: RAVDESS in ../shared/data/ravdess): the same N files extracted
   into a ``native`` store and a ``sample_rate: 16000`` store; counts files whose frames are
   identical, the largest difference, and the wall time of each. On 16 kHz audio both
   modes must agree exactly.
2. Synthetic harmonic tones at 22.05, 44.1 and 48 kHz: how much resampling to 16 kHz moves
   each descriptor (largest absolute difference per column over frames both have). This is
   a property of the signal path, not an accuracy figure.

    python3 tests/benchmarks/fidelity_egemaps_rate.py [--corpus ravdess PATH] [--files N] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import REPO_ROOT, bootstrap_w2v2ser, command_line, format_table, machine_info, write_results

bootstrap_w2v2ser()

import soundfile as sf  # noqa: E402

from w2v2ser.extract import build_extractor, extract_corpus, read_corpus  # noqa: E402
from w2v2ser.store import Utterance, open_store  # noqa: E402


def _stores(utterances: list[Utterance], root: Path) -> tuple[dict[str, object], dict[str, float]]:
    stores, seconds = {}, {}
    for mode in ("native", 16000):
        started = time.perf_counter()
        summary = extract_corpus(utterances, root / f"{mode}.zarr", progress=False,
                                 extractors=[build_extractor("egemaps", {"sample_rate": mode})])
        seconds[str(mode)] = time.perf_counter() - started
        if summary.failed:
            raise SystemExit(f"{len(summary.failed)} files failed in mode {mode}: {summary.failed[:3]}")
        stores[str(mode)] = open_store(root / f"{mode}.zarr")
    return stores, seconds


def _harmonic(rate: int, seconds: float, f0: float, seed: int) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 30) if k * f0 < rate / 2)
    noise = 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * voice / np.abs(voice).max() + noise).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", nargs=2, default=["ravdess", str(REPO_ROOT / ".." / "shared" / "data" / "ravdess")],
                        metavar=("KIND", "PATH"))
    parser.add_argument("--files", type=int, default=24, help="files spread evenly over the corpus")
    parser.add_argument("--out", help="results folder (default tests/benchmarks/results)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="w2v2ser-egemaps-rate-"))
    try:
        manifest = read_corpus(args.corpus[0], args.corpus[1])
        step = max(1, len(manifest.utterances) // args.files)
        picked = manifest.utterances[::step][: args.files]
        rates = sorted({sf.info(u.path).samplerate for u in picked})
        stores, seconds = _stores(picked, work / "real")
        identical, largest = 0, 0.0
        for u in picked:
            a, b = (stores[m].read_utterance(u.id, "egemaps") for m in ("native", "16000"))
            identical += int(a.shape == b.shape and np.array_equal(a, b))
            n = min(len(a), len(b))
            largest = max(largest, float(np.abs(a[:n] - b[:n]).max()))
        real = {"corpus": args.corpus, "files": len(picked), "file_rates": rates, "identical_files": identical,
                "max_abs_difference": largest, "seconds": seconds}

        names = build_extractor("egemaps").feature_names
        synthetic = []
        for k, rate in enumerate((22_050, 44_100, 48_000)):
            path = work / f"tone{rate}.wav"
            sf.write(str(path), _harmonic(rate, 2.0, 120.0 + 40 * k, k), rate, subtype="PCM_16")
            u = Utterance(id=f"tone{rate}", path=str(path), speaker="s", label="a")
            tone_stores, _ = _stores([u], work / f"tone{rate}")
            a, b = (tone_stores[m].read_utterance(u.id, "egemaps") for m in ("native", "16000"))
            n = min(len(a), len(b))
            diff = np.abs(a[:n] - b[:n]).max(axis=0)
            top = np.argsort(diff)[::-1][:3]
            synthetic.append({"rate": rate, "frames": [len(a), len(b)],
                              "largest": {names[i]: float(diff[i]) for i in top}})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [["real: " + ", ".join(map(str, rates)) + " Hz", f"{identical}/{len(picked)} identical",
             f"{largest:g}", f"{seconds['native']:.1f} / {seconds['16000']:.1f}"]]
    rows += [[f"synthetic {s['rate']} Hz", f"frames {s['frames'][0]} / {s['frames'][1]}",
              "; ".join(f"{k} {v:.3g}" for k, v in s["largest"].items()), ""] for s in synthetic]
    table = format_table(["audio", "native vs 16 kHz", "largest abs difference", "seconds native / 16 kHz"], rows)
    print(table)
    headline = (f"{identical}/{len(picked)} real files give identical eGeMAPS in native and 16 kHz mode "
                f"(file rates {rates})")
    print(headline)
    write_results("fidelity_egemaps_rate", {"command": command_line(), "machine": machine_info(["opensmile"]),
                                            "real": real, "synthetic": synthetic},
                  table, out=args.out, headline=headline,
                  notes=["Synthetic rows show how far resampling moves the descriptors, not accuracy."])


if __name__ == "__main__":
    main()
