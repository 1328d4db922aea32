"""``predict_audio(segment=...)`` on real audio: do windows of a long recording get the labels
their audio gets as files of its own?

One speaker's files (default RAVDESS actor 24, a test speaker of a RAVDESS run), each cut or
zero-padded to ``--seconds`` (so that windows of that length fall on file boundaries), are
predicted one by one and as recordings of ``--per-recording`` files back to back with
``segment=SECONDS``, all in one speaker group. Prints the largest difference in probability
between a window and its file, the UAR both ways (labels from the RAVDESS file names, calm
counted as neutral) and the one label each whole recording gets without ``segment``.

    python3 tests/benchmarks/predict_segments.py RUN_DIR [--audio ../shared/data/ravdess/speech/Actor_24]
        [--seconds 4] [--per-recording 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import bootstrap_w2v2ser, command_line, format_table, machine_info, write_results

bootstrap_w2v2ser()

import soundfile  # noqa: E402
from predict_speaker_groups import ACTOR_24, EMOTIONS  # noqa: E402
from sklearn.metrics import recall_score  # noqa: E402

from w2v2ser.evaluate import predict_audio  # noqa: E402


def _uar(truth: list[str], emotions: list[str | None]) -> float:
    return 100.0 * float(recall_score(truth, [e or "" for e in emotions], average="macro"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a RAVDESS run directory")
    parser.add_argument("--audio", type=Path, default=ACTOR_24)
    parser.add_argument("--seconds", type=float, default=4.0, help="each file cut or padded to this, the window")
    parser.add_argument("--per-recording", type=int, default=10, help="files back to back in one recording")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sources = sorted(p for p in args.audio.iterdir() if p.suffix.lower() in (".flac", ".wav"))
    with tempfile.TemporaryDirectory(prefix="predict-segments-") as tmp:
        files, truth = [], []
        for source in sources:
            audio, rate = soundfile.read(source, dtype="float32")
            n = round(args.seconds * rate)
            audio = audio[:n] if len(audio) >= n else np.pad(audio, [(0, n - len(audio))] + [(0, 0)] * (audio.ndim - 1))
            files.append(Path(tmp) / f"{source.stem}.wav")
            soundfile.write(files[-1], audio, rate, subtype="FLOAT")
            truth.append(EMOTIONS[source.name.split("-")[2]])
        order = np.random.default_rng(0).permutation(len(files))
        recordings = []
        for r, start in enumerate(range(0, len(files), args.per_recording)):
            members = order[start:start + args.per_recording]
            path = Path(tmp) / f"recording{r}.wav"
            soundfile.write(path, np.concatenate([soundfile.read(files[i], dtype="float32")[0] for i in members]),
                            rate, subtype="FLOAT")
            recordings.append((path, members))
        started = time.perf_counter()
        alone = predict_audio(args.run, files, speakers="speaker")
        seconds_alone = time.perf_counter() - started
        started = time.perf_counter()
        windows = predict_audio(args.run, [p for p, _ in recordings], speakers="speaker", segment=args.seconds)
        seconds_windows = time.perf_counter() - started
        whole = predict_audio(args.run, [p for p, _ in recordings], speakers="speaker")
    members = [i for _, m in recordings for i in m]
    if len(windows) != len(members):
        raise SystemExit(f"{len(windows)} windows for {len(members)} files: the windows do not fall on the files")
    diff = max(abs(w.probabilities[c] - alone[i].probabilities[c]) for w, i in zip(windows, members)
               for c in alone[i].probabilities)
    results = {"files": len(files), "recordings": len(recordings), "windows": len(windows),
               "max_abs_probability_difference": diff,
               "same_label": sum(w.emotion == alone[i].emotion for w, i in zip(windows, members)),
               "uar_files": _uar(truth, [p.emotion for p in alone]),
               "uar_windows": _uar([truth[i] for i in members], [w.emotion for w in windows]),
               "whole_recordings": [{"label": p.emotion, "seconds": p.seconds, "seconds_used": p.seconds_used}
                                    for p in whole],
               "seconds_files": seconds_alone, "seconds_windows": seconds_windows}
    rows = [["files one by one", len(files), f"{results['uar_files']:.1f}", f"{seconds_alone:.1f}"],
            [f"{len(recordings)} recordings, --segment {args.seconds:g}", len(windows),
             f"{results['uar_windows']:.1f}", f"{seconds_windows:.1f}"]]
    table = format_table(["predicted as", "labels", "UAR %", "seconds"], rows)
    print(table)
    write_results("predict_segments", {"command": command_line(), "run": str(args.run), "audio": str(args.audio),
                                       **results, "machine": machine_info()}, table, out=args.out,
                  headline=f"{len(windows)} windows vs their files: largest probability difference {diff:.2g}, "
                           f"{results['same_label']} of {len(windows)} labels the same; UAR "
                           f"{results['uar_files']:.1f} (files) vs {results['uar_windows']:.1f} (windows)")


if __name__ == "__main__":
    main()
