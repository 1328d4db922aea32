"""Integrity of a finished run's files.

A run directory is published whole (``publish_directory``), and its ``metrics.json``, written
last, records the sha256 of every other file in it. A run whose files no longer match (a
truncated ``predictions.csv``, a damaged ``model.keras``) is found by :func:`damaged_run_files`:
training runs it again, and summaries and ``predict`` refuse it instead of reading other numbers.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from w2v2ser._files import file_sha256, owner_tag, remove_stale
from w2v2ser._text import short_name

__all__ = ["RUN_FILES_KEY", "damaged_run_files", "list_run_files", "record_run_files", "writing_run"]

#: Key of ``metrics.json`` that maps each other file of the run directory to its sha256.
RUN_FILES_KEY = "files_sha256"


def list_run_files(runs: Path, name: str = "metrics.json") -> list[Path]:
    """``runs/*/<name>`` in name order, leaving out the hidden folders of a run being written
    (``.<run>.tmp-PID-HOST.dir``) or replaced (``.<run>.old-PID-HOST.dir``), also when a killed
    process left them: they are not runs, and one may hold a whole run's files.

    Args:
        runs: An experiment's ``runs`` folder.
        name: The file to list in each run directory.
    """
    return sorted(p for p in Path(runs).glob(f"*/{name}") if not p.parent.name.startswith("."))


@contextmanager
def writing_run(runs: Path, name: str) -> Iterator[Path]:
    """A fresh hidden folder ``runs/.<name>.tmp-PID-HOST.dir`` to write a run into, then publish.

    Removed when writing fails (a full disk: the half-written run is what filled it). What a killed
    process left of this run (being written, or the old one being replaced) is removed first, when
    that process is gone (:func:`~w2v2ser._files.remove_stale`).
    """
    runs.mkdir(parents=True, exist_ok=True)
    for kind in ("tmp", "old"):
        remove_stale(runs, f".{short_name(name)}.{kind}-")
    tmp = runs / f".{short_name(name)}.tmp-{owner_tag()}.dir"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def record_run_files(folder: Path, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` with the sha256 of every file in ``folder`` (a run being written) but metrics.json."""
    files = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != "metrics.json"}
    return {**metrics, RUN_FILES_KEY: files}


def damaged_run_files(run_dir: Path, metrics: Mapping[str, Any], *, only: Collection[str] | None = None) -> list[str]:
    """What is wrong with the files of a finished run (empty when nothing is).

    Runs written before the hashes were recorded have their ``predictions.csv`` checked against
    the ``n_test`` of their metrics instead.

    Args:
        run_dir: ``runs/<fold>__seed<k>/`` of a run directory.
        metrics: Its ``metrics.json``.
        only: Check just these files (e.g. what ``predict`` reads: model.keras, normalisation.npz).
    """
    run_dir = Path(run_dir)
    recorded = metrics.get(RUN_FILES_KEY)
    if not isinstance(recorded, Mapping):
        if only is not None and "predictions.csv" not in only:
            return []
        return _check_predictions(run_dir / "predictions.csv", metrics.get("n_test"))
    problems = []
    for name, digest in sorted(recorded.items()):
        if only is not None and name not in only:
            continue
        path = run_dir / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif file_sha256(path) != digest:
            problems.append(f"{path} has changed since the run wrote it (sha256 differs from metrics.json's)")
    return problems


def _check_predictions(path: Path, n_test: Any) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return [f"{path} cannot be read ({exc})"]
    if any(None in row or None in row.values() or not row.get("label") or not row.get("predicted") for row in rows):
        return [f"{path} has rows with missing fields"]
    if isinstance(n_test, int) and len(rows) != n_test:
        return [f"{path} has {len(rows)} rows, but the run tested {n_test} utterances"]
    return []
