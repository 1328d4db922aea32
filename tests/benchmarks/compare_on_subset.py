"""Two run directories scored on the same test utterances: those of a subset (issue: subsets).

A run trained on a whole store (RAVDESS speech and song) and a run trained on a subset of it
(``--subset vocal_channel=speech``) are tested on different files. This scores both on the test
utterances of the subset only, from their ``predictions.csv`` (per run: fold x seed, the UAR of
its predictions of those utterances), and compares them with Welch's t-test.

    python3 tests/benchmarks/compare_on_subset.py STORE RUN_A RUN_B --subset vocal_channel=speech [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from _common import bootstrap_w2v2ser, command_line, format_table, machine_info, write_results

bootstrap_w2v2ser()

from scipy import stats  # noqa: E402
from sklearn.metrics import recall_score  # noqa: E402

from w2v2ser.store import open_store  # noqa: E402


def _scores(run: Path, keep: set[str]) -> tuple[list[float], int]:
    """UAR % of each run of a run directory over the test utterances in ``keep``; their count."""
    scores, counted = [], 0
    for predictions in sorted(run.glob("runs/*/predictions.csv")):
        with open(predictions, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r["id"] in keep]
        if not rows:  # another store's run, or the subset not in this run's test utterances
            raise ValueError(f"{predictions} predicts no utterance of the subset; expected a run of the same "
                             "store whose test utterances include the subset")
        scores.append(100.0 * float(recall_score([r["label"] for r in rows], [r["predicted"] for r in rows],
                                                 average="macro")))
        counted = len(rows)
    return scores, counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="the store both runs were trained on")
    parser.add_argument("runs", nargs=2, type=Path, metavar="RUN_DIR")
    parser.add_argument("--subset", required=True, metavar="FIELD=VALUE", help="e.g. vocal_channel=speech")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    field, _, value = args.subset.partition("=")
    store = open_store(args.store)
    utterances = store.list_utterances()
    keep = {u.id for u in utterances
            if str(getattr(u, field) if field in ("speaker", "label", "gender", "session", "split")
                   else u.extra.get(field)) == value}
    if not keep:  # a misspelt field or value: say so, rather than score nothing
        fields = sorted({"speaker", "label", "gender", "session", "split"} | {k for u in utterances for k in u.extra})
        parser.error(f"--subset {args.subset}: no utterance of {args.store} has {field} = {value!r}; "
                     f"its fields are {', '.join(fields)}")
    for run in args.runs:
        if not any(run.glob("runs/*/predictions.csv")):
            parser.error(f"{run} holds no runs/*/predictions.csv; expected a run directory of `w2v2ser train`")
    rows, results = [], {}
    for run in args.runs:
        try:
            scores, counted = _scores(run, keep)
        except ValueError as error:
            parser.error(f"{run}: {error}")
        results[str(run)] = {"uar": scores, "test_utterances": counted}
        rows.append([str(run), counted, len(scores), f"{np.mean(scores):.1f} ± {np.std(scores):.1f}",
                     ", ".join(f"{s:.1f}" for s in scores)])
    a, b = (results[str(r)]["uar"] for r in args.runs)
    welch = stats.ttest_ind(a, b, equal_var=False)
    table = format_table(["run", f"test utterances with {args.subset}", "runs", "UAR % mean ± std", "each"], rows)
    print(table)
    print(f"Welch t-test: t = {welch.statistic:.2f}, p = {welch.pvalue:.3f}")
    write_results("compare_on_subset", {"command": command_line(), "subset": args.subset, "runs": results,
                                        "welch_t": float(welch.statistic), "welch_p": float(welch.pvalue),
                                        "machine": machine_info()}, table, out=args.out,
                  headline=f"on the {args.subset} test utterances: " + "; ".join(
                      f"{Path(r).name} {np.mean(v['uar']):.1f} ± {np.std(v['uar']):.1f}" for r, v in results.items())
                  + f" (Welch p = {welch.pvalue:.2f})")


if __name__ == "__main__":
    main()
