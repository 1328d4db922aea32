"""Not a timing: what one flipped bit in a store's utterances.parquet does to its readers.

For N random single-bit flips (anywhere but the 4-byte magic at each end) in a copy of the
store's ``utterances.parquet``, it records what pandas' default ``read_parquet`` returns (the
same rows, other rows without an error, or an error), whether pyarrow with
``page_checksum_verification=True`` raises, and whether ``store verify``'s Parquet check (page
CRC32s, then every row against the Zarr table) names the file. The store itself is only read.

    python3 tests/benchmarks/parquet_flips.py STORE [--flips 300] [--seed 2] [--workdir DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
from collections import Counter
from pathlib import Path

from _common import bootstrap_w2v2ser, command_line, format_table, machine_info, make_workdir, write_results

bootstrap_w2v2ser()


def _pandas_outcome(raw: bytes, pristine: "object") -> str:
    import pandas as pd

    try:
        return "same rows" if pd.read_parquet(io.BytesIO(raw)).equals(pristine) else "other rows, no error"
    except Exception:  # pyarrow raises several types for damaged files
        return "raises"


def _verified_read_raises(raw: bytes) -> bool:
    import pyarrow.parquet as pq

    try:
        pq.read_table(io.BytesIO(raw), page_checksum_verification=True)
    except Exception:
        return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--flips", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--workdir")
    parser.add_argument("--out")
    args = parser.parse_args()

    import pandas as pd

    from w2v2ser.store import open_store
    from w2v2ser.store._layout import UTTERANCE_COLUMNS
    from w2v2ser.store._verify import _check_parquet  # the Parquet part of verify, without the frames

    source = Path(args.store)
    pristine_bytes = (source / "utterances.parquet").read_bytes()
    pristine = pd.read_parquet(io.BytesIO(pristine_bytes))
    work = make_workdir(args.workdir, "parquet_flips_")
    copy = work / "store.zarr"
    try:
        shutil.copytree(source, copy)
        rng = random.Random(args.seed)
        outcomes: Counter = Counter()
        for _ in range(args.flips):
            damaged = bytearray(pristine_bytes)
            damaged[rng.randrange(4, len(damaged) - 4)] ^= 1 << rng.randrange(8)
            raw = bytes(damaged)
            (copy / "utterances.parquet").write_bytes(raw)
            named = bool(_check_parquet(open_store(copy), "utterances", list(UTTERANCE_COLUMNS)))
            outcomes[(_pandas_outcome(raw, pristine), _verified_read_raises(raw), named)] += 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [[pandas, "yes" if raises else "no", "yes" if named else "no", count]
            for (pandas, raises, named), count in sorted(outcomes.items(), key=lambda kv: -kv[1])]
    table = format_table(["pandas default read", "pyarrow page_checksum_verification raises",
                          "store verify names the file", "flips"], rows)
    print(table)
    silent = sum(c for (p, _, _), c in outcomes.items() if p == "other rows, no error")
    missed = sum(c for (p, _, named), c in outcomes.items() if p != "same rows" and not named)
    headline = (f"{silent} of {args.flips} flips: pandas' default read returned other rows without an error; "
                f"store verify missed {missed} flips that changed what pandas reads")
    payload = {"command": command_line(), "store": str(source), "parquet_bytes": len(pristine_bytes),
               "flips": args.flips, "seed": args.seed,
               "outcomes": [{"pandas": p, "verified_read_raises": r, "verify_names": n, "count": c}
                            for (p, r, n), c in outcomes.items()],
               "machine": machine_info(["pandas", "pyarrow"])}
    write_results("parquet_flips", payload, table, out=args.out, headline=headline)
    print(headline)


if __name__ == "__main__":
    main()
