"""What the stages of `w2v2ser run` share: their messages (each reason printed in full once, then
referred to), the JSON files they write and read, a store's skip marker, a stage's outcome counts and
the Dask cluster started on first use.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._files import write_atomically
from ._cluster import ClusterHandle, open_cluster
from ._slurm_jobs import wait_for_a_worker
from ._config import PipelineConfig


def _say(text: str) -> None:
    # tqdm.write takes tqdm's lock and lifts any progress bar off the line: stores extracting side by
    # side (threads) no longer run their lines together with each other or with a bar.
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)
    sys.stderr.flush()


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: readers see the old or the new file."""
    write_atomically(path, json.dumps(data, indent=2, default=str))


class _Reasons:
    """Prints each reason (a skip, or a failure before any work) in full the first time, then refers
    to it by a short topic."""

    def __init__(self, said: dict[str, str] | None = None) -> None:
        self.said: dict[str, str] = dict(said or {})  # reason -> topic

    def tell(self, label: str, reason: str, topic: str, *, outcome: str = "skipped") -> None:
        if reason in self.said:
            _say(f"{label}: {outcome} ({self.said[reason]}; reason above)")
        else:
            self.said[reason] = topic
            _say(f"{label}: {outcome}, {reason}")


def _corpus_topic(corpus: str) -> str:
    return f"corpus {corpus!r} has no path"


def _store_topic(store: str) -> str:
    return f"the model of store {store!r} cannot be loaded"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _skip_marker(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".skipped.json")


def _clear_skip_marker(store_path: Path) -> None:
    # Look first: unlinking even a missing file fails on a read-only mount of finished stores.
    marker = _skip_marker(store_path)
    if marker.exists():
        marker.unlink()


class _LazyCluster:
    """Starts the Dask cluster on first use only: a rerun with nothing left to do starts none."""

    def __init__(self, config: PipelineConfig, stack: ExitStack, *, use_gpus: bool) -> None:
        self._config, self._stack, self._use_gpus = config, stack, use_gpus
        self._handle: ClusterHandle | None = None

    def get(self) -> ClusterHandle:
        if self._handle is None:
            started = time.perf_counter()
            self._handle = self._stack.enter_context(open_cluster(self._config.cluster, use_gpus=self._use_gpus))
            _say(f"{self._handle.description} (started in {time.perf_counter() - started:.1f} s)")
            if self._handle.dashboard:
                _say(f"Dask dashboard: {self._handle.dashboard}")
            if self._config.cluster.kind == "slurm":  # after the lines above: the user sees what it waits for
                wait_for_a_worker(self._handle.client, self._config.cluster.slurm)
        return self._handle


@dataclass
class _Outcome:
    """Counts of one stage, for the closing summary and the exit status."""

    done: int = 0
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
