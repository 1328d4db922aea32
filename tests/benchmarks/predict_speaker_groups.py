"""UAR of ``predict_audio`` on one speaker's files, split into speaker groups of k files each.

With a speaker-normalised run, each ``speakers=`` group is normalised with the statistics of its
own new files. This measures how that depends on the group size, against the run's global
statistics (no groups), on a real run directory and a real speaker's files. Groups are drawn at
random (one permutation per repetition); the files' true labels come from RAVDESS file names
(emotion code; calm counted as neutral, as in training). Every group is normalised with its own
statistics here, whatever its size (``MIN_GROUP_FILES`` set to 1): these figures are what
``MIN_GROUP_FILES`` is chosen from; below it, ``predict`` gives a group the global statistics.

    python3 tests/benchmarks/predict_speaker_groups.py RUN_DIR [--audio ../shared/data/ravdess/speech/Actor_24]
        [--sizes 1,2,3,5,10] [--reps 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _common import REPO_ROOT, bootstrap_w2v2ser, command_line, format_table, machine_info, write_results

bootstrap_w2v2ser()

from sklearn.metrics import recall_score  # noqa: E402

from w2v2ser.evaluate import _predict, predict_audio  # noqa: E402

# RAVDESS emotion codes -> the class names of a RAVDESS run (calm merged into neutral).
EMOTIONS = {"01": "neutral", "02": "neutral", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
            "07": "disgust", "08": "surprised"}
# A test speaker of the RAVDESS protocol (actors 23-24), in the shared copy.
ACTOR_24 = REPO_ROOT / ".." / "shared" / "data" / "ravdess" / "speech" / "Actor_24"


def _uar(files: list[Path], emotions: list[str | None]) -> float:
    truth = [EMOTIONS[f.name.split("-")[2]] for f in files]
    return 100.0 * float(recall_score(truth, [e or "" for e in emotions], average="macro"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a speaker-normalised RAVDESS run directory")
    parser.add_argument("--audio", type=Path, default=ACTOR_24)
    parser.add_argument("--sizes", default="1,2,3,5,10", help="group sizes, comma separated")
    parser.add_argument("--reps", type=int, default=3, help="random groupings per size")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    files = sorted(p for p in args.audio.iterdir() if p.suffix.lower() in (".flac", ".wav"))
    _predict.MIN_GROUP_FILES = 1  # every group its own statistics: the effect of the group size alone
    rows, results = [], {"global": _uar(files, [p.emotion for p in predict_audio(args.run, files)])}
    rows.append(["none (global statistics)", 1, f"{results['global']:.1f}", ""])
    for size in (int(s) for s in args.sizes.split(",")):
        values = []
        for rep in range(args.reps):
            order = np.random.default_rng(100 + rep).permutation(len(files))
            speakers = [""] * len(files)
            for position, index in enumerate(order):
                speakers[index] = f"group{position // size}"
            preds = predict_audio(args.run, files, speakers=speakers)
            used = sorted({p.normalisation for p in preds if p.ok})
            if used != ["speaker group"]:  # a run of global statistics, or the patch above no longer reaches
                print(f"groups of {size}: the files were normalised with {used}, not their groups' own statistics; "
                      f"{args.run} must be a speaker-normalised run, and predict must still read "
                      "w2v2ser.evaluate._predict.MIN_GROUP_FILES", file=sys.stderr)
                raise SystemExit(2)
            values.append(_uar(files, [p.emotion for p in preds]))
            print(f"groups of {size}, grouping {rep}: UAR {values[-1]:.1f}", flush=True)
        results[str(size)] = values
        rows.append([f"{size} files", len(values), f"{np.mean(values):.1f} ± {np.std(values):.1f}",
                     ", ".join(f"{v:.1f}" for v in values)])
    table = format_table(["speaker groups of", "groupings", "UAR % mean ± std", "each"], rows)
    print(table)
    headline = f"{len(files)} files of {args.audio.name}: global {results['global']:.1f} % UAR; " + "; ".join(
        f"groups of {k}: {np.mean(v):.1f}" for k, v in results.items() if k != "global")
    write_results("predict_speaker_groups", {"command": command_line(), "run": str(args.run),
                                             "audio": str(args.audio), "files": len(files), "uar": results,
                                             "machine": machine_info()}, table, out=args.out, headline=headline)
    print(headline)


if __name__ == "__main__":
    main()
