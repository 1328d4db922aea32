"""Shards of an extraction run as Dask tasks: each worker process builds (and keeps) its own
extractors from their configs, and a failed shard is reported while finished shards are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from w2v2ser._common import check_stop
from w2v2ser._process import LOST_WORKER_FIX, task_error
from w2v2ser._text import failures_by_error
from w2v2ser.store import StoreLocation, W2v2serError, WorkUnit

from ._checks import _progress
from ._registry import Extractor, build_extractor
from ._shard import GPU_FEATURES, _ShardItem, extract_shard

__all__ = ["_run_on_dask"]


# --- Dask -----------------------------------------------------------------------------------

_WORKER_EXTRACTORS: dict[str, Extractor] = {}


def _dask_shard(store_path: str | StoreLocation, items: list[_ShardItem], configs: dict[str, dict], journal: str,
                unit: WorkUnit) -> tuple[int, float, list[int]]:
    """A Dask task: build (and cache per worker process) the extractors, run one shard.

    Returns:
        (utterances committed, audio seconds committed, store rows of those that are digital silence).
    """
    import json

    extractors = []
    for name, config in configs.items():
        key = name + json.dumps(config, sort_keys=True)
        if key not in _WORKER_EXTRACTORS:
            _WORKER_EXTRACTORS[key] = build_extractor(name, config)
        extractors.append(_WORKER_EXTRACTORS[key])
    # Dask already runs shards in parallel worker processes (which may not start children).
    silent: list[int] = []
    count, seconds = extract_shard(store_path, items, extractors=extractors, journal=journal, unit=unit,
                                   decode_workers=0, silent=silent)
    return count, seconds, silent


def _run_on_dask(
    client: Any,
    store_path: str | StoreLocation,
    tasks: Sequence[tuple[list[str], list[_ShardItem], WorkUnit]],
    configs: Mapping[str, dict],
    *,
    gpu_resource: str | None,
    progress: bool,
    on_silent: Callable[[list[int]], None] | None = None,
    lost_worker_fix: str = LOST_WORKER_FIX,
) -> tuple[int, float]:
    """Run the shards as Dask tasks; ``on_silent`` gets each finished shard's rows of digital silence."""
    from distributed import as_completed

    futures = []
    for number, (names, items, unit) in enumerate(tasks):
        uses_gpu = gpu_resource is not None and any(name in GPU_FEATURES for name in names)
        futures.append(
            client.submit(
                _dask_shard,
                store_path,
                items,
                {name: configs[name] for name in names},
                f"shard-{'-'.join(names)}-{number:05d}",
                unit,
                resources={gpu_resource: 1} if uses_gpu else None,
                pure=False,
                key=f"w2v2ser-extract-{'-'.join(names)}-{number:05d}-{time.time_ns()}",
            )
        )
    done = [0, 0.0]
    errors: list[tuple[str, str]] = []
    bar = _progress(None, progress, "extract shards", "shard", total=len(futures)) if progress else None
    for future in as_completed(futures):
        check_stop()
        try:
            count, seconds, silent = future.result()
            done[0] += count
            done[1] += seconds
            if silent and on_silent is not None:
                on_silent(silent)
        except Exception as error:  # noqa: BLE001 - keep finished shards; report the rest
            errors.append((str(future.key), task_error(error, fix=lost_worker_fix)))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if errors:
        raise W2v2serError(
            f"{len(errors)} extraction shard(s) failed on Dask workers (finished shards are kept; rerun to retry):\n"
            + "\n".join(failures_by_error(errors)[:10])
        )
    return int(done[0]), float(done[1])
