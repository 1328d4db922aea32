"""Stage 1 driver: plan a corpus into a store, extract shards of utterances, finalize.

The driver is the only process that plans and finalizes a store (under the store
lock). Shards of utterances are independent units: each is extracted by one worker
that writes its utterances' reserved, chunk-aligned regions and its own commit
journal, so shards can run in this process or as Dask tasks on many workers.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from w2v2ser.store import StoreWriter, Utterance, W2v2serError, lock_store, open_store

from ._audio import AudioInfo, DecodedAudio, decode_audio, probe_audio, sha256_file
from ._rates import capacity, feature_spec_for_store, resample_for, run_extractor, store_rates, with_rate
from ._registry import Extractor, build_extractor

__all__ = ["ExtractionSummary", "extract_corpus", "extract_shard"]

# Features that profit from a GPU; everything else runs on CPU workers.
GPU_FEATURES = frozenset({"wav2vec2"})


@dataclass
class ExtractionSummary:
    """What one call of :func:`extract_corpus` did.

    Attributes:
        store: The store path.
        planned: Utterances in the store after planning.
        extracted: Utterance x feature-group units extracted by this call.
        skipped: Utterances already complete before this call (resumed work).
        failed: Failures recorded in the store (all runs), as (id, path, reason).
        audio_seconds: Audio seconds extracted by this call.
        wall_seconds: Wall time of this call.
        complete: Whether the store is now marked complete.
    """

    store: Path
    planned: int = 0
    extracted: int = 0
    skipped: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    complete: bool = False

    @property
    def realtime_factor(self) -> float:
        """Audio seconds extracted per wall second."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass(frozen=True)
class _ShardItem:
    index: int
    path: str
    num_samples: int


def _probe_all(
    utterances: Sequence[Utterance], progress: bool
) -> tuple[list[AudioInfo | None], dict[int, str]]:
    """Read every file's header; unreadable ones become failures, not crashes."""
    infos: list[AudioInfo | None] = []
    failures: dict[int, str] = {}
    for position, utterance in enumerate(_progress(utterances, progress, "probe audio", "file")):
        try:
            infos.append(probe_audio(utterance.path))
        except W2v2serError as error:
            infos.append(None)
            failures[position] = str(error)
        except OSError as error:  # permissions, vanished files: record and go on
            infos.append(None)
            failures[position] = f"cannot read {utterance.path}: {error}. Check the file exists and is readable."
    return infos, failures


def _progress(items: Any, enabled: bool, desc: str, unit: str, total: int | None = None) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit, total=total, dynamic_ncols=True)


def extract_corpus(
    utterances: Sequence[Utterance],
    store_path: str | Path,
    *,
    extractors: Sequence[Extractor],
    shard_size: int = 64,
    progress: bool = True,
    client: Any = None,
    gpu_resource: str | None = None,
) -> ExtractionSummary:
    """Extract every feature of every utterance into a store, resumably.

    Reruns skip utterances whose features are committed; a file that cannot be read
    or extracted is recorded in the store's failures table and the run goes on.

    Args:
        utterances: The corpus manifest (from :func:`read_corpus`).
        store_path: The Zarr store directory (created if missing).
        extractors: Configured extractors, e.g. ``[build_extractor("egemaps", {})]``.
        shard_size: Utterances per unit of work (a Dask task when ``client`` is set).
        progress: Show progress bars.
        client: A ``distributed.Client``; None runs the shards in this process.
        gpu_resource: Worker resource name that marks GPU workers (e.g. ``"GPU"``):
            GPU features are then scheduled there, the other features on any worker
            at the same time.

    Returns:
        An :class:`ExtractionSummary`.
    """
    if not extractors:
        raise W2v2serError("extract_corpus got no extractors; pass at least one, e.g. build_extractor('egemaps', {}).")
    if shard_size < 1:
        raise W2v2serError(f"shard_size must be >= 1, got {shard_size}.")
    store_path = Path(store_path)
    started = time.perf_counter()
    summary = ExtractionSummary(store=store_path)
    with lock_store(store_path):
        writer = StoreWriter(store_path)
        infos, failures = _probe_all(utterances, progress)
        stored = open_store(store_path, allow_incomplete=True).features
        rates = store_rates(utterances, infos, failures, extractors, stored)
        num_samples = [info.num_samples if info is not None else None for info in infos]
        specs = [feature_spec_for_store(extractor, rates, stored) for extractor in extractors]
        capacities = {extractor.name: [capacity(extractor, info) for info in infos] for extractor in extractors}
        rows = writer.plan(
            [with_rate(u, info) for u, info in zip(utterances, infos)],
            num_samples=num_samples, features=specs, capacities=capacities, failures=failures,
        )
        summary.planned = len(rows)
        samples_by_row = {row: n for row, n in zip(rows, num_samples)}
        path_by_row = {row: u.path for row, u in zip(rows, utterances)}
        groups = _feature_groups(extractors, split_gpu=client is not None and gpu_resource is not None)
        tasks: list[tuple[list[str], list[_ShardItem]]] = []
        # A row lacks some feature exactly when it lacks one of some group's features.
        all_pending: set[int] = set()
        for group in groups:
            group_pending = writer.pending([e.name for e in group])
            all_pending.update(group_pending)
            pending = [row for row in group_pending if row in samples_by_row and samples_by_row[row]]
            # Similar lengths side by side: batches need little padding.
            pending.sort(key=lambda row: samples_by_row[row] or 0)
            items = [_ShardItem(row, path_by_row[row], int(samples_by_row[row] or 0)) for row in pending]
            for start in range(0, len(items), shard_size):
                tasks.append(([e.name for e in group], items[start : start + shard_size]))

        summary.skipped = sum(1 for row in rows if row not in all_pending and samples_by_row[row])
        configs = {e.name: e.config.to_dict() for e in extractors}
        total = sum(len(items) for _, items in tasks)
        if client is None:
            by_name = {e.name: e for e in extractors}
            bar = _progress(None, progress, "extract", "utt", total=total) if progress else None
            for group_names, items in tasks:
                done = extract_shard(
                    str(store_path),
                    items,
                    extractors=[by_name[n] for n in group_names],
                    journal="main",
                    on_utterance=(lambda seconds: bar.update(1)) if bar is not None else None,
                )
                summary.extracted += done[0]
                summary.audio_seconds += done[1]
            if bar is not None:
                bar.close()
        else:
            summary_parts = _run_on_dask(
                client, str(store_path), tasks, configs, gpu_resource=gpu_resource, progress=progress
            )
            summary.extracted += summary_parts[0]
            summary.audio_seconds += summary_parts[1]
        writer.finalize()
    store = open_store(store_path, allow_incomplete=True)
    summary.complete = store.complete
    summary.failed = [(f.id, f.path, f.reason) for f in store.list_failures()]
    summary.wall_seconds = time.perf_counter() - started
    return summary


def _feature_groups(extractors: Sequence[Extractor], *, split_gpu: bool) -> list[list[Extractor]]:
    """All features in one pass over the audio, or GPU and CPU features apart."""
    if not split_gpu:
        return [list(extractors)]
    gpu = [e for e in extractors if e.name in GPU_FEATURES]
    cpu = [e for e in extractors if e.name not in GPU_FEATURES]
    return [group for group in (gpu, cpu) if group]


def _batches(items: Sequence[_ShardItem], max_samples: int) -> Iterator[list[_ShardItem]]:
    batch: list[_ShardItem] = []
    used = 0
    for item in items:
        if batch and used + item.num_samples > max_samples:
            yield batch
            batch, used = [], 0
        batch.append(item)
        used += item.num_samples
    if batch:
        yield batch


def _decode(item: _ShardItem, extractors: Sequence[Extractor]) -> tuple[_ShardItem, DecodedAudio | None, str, str]:
    """Decode one file; errors become a reason string so one bad file never stops a shard."""
    try:
        audio = DecodedAudio(*decode_audio(item.path))
        resample_for(audio, extractors)  # here, in the decode thread, ahead of extraction
        return item, audio, sha256_file(item.path), ""
    except W2v2serError as error:
        return item, None, "", str(error)
    except Exception as error:  # noqa: BLE001 - any decoder error is recorded, not raised
        return item, None, "", f"cannot decode {item.path}: {type(error).__name__}: {error}. Check the file is valid audio."


def extract_shard(
    store_path: str,
    items: Sequence[_ShardItem],
    *,
    extractors: Sequence[Extractor],
    journal: str,
    batch_seconds: float = 32.0,
    write_threads: int = 2,
    on_utterance: Callable[[float], None] | None = None,
) -> tuple[int, float]:
    """Extract and commit one shard of utterances (one unit of work).

    Decoding of the next batch and store writes of the previous one overlap with
    feature extraction of the current batch (threads; the heavy parts release the GIL).

    Args:
        store_path: The store directory (already planned).
        items: The shard's utterances with their store rows.
        extractors: Extractors for the features this shard writes.
        journal: Commit journal name; one writer per journal at a time.
        batch_seconds: Audio seconds handed to the extractors at once.
        write_threads: Threads writing finished utterances to the store.
        on_utterance: Called with the audio seconds of every committed utterance.

    Returns:
        (utterances committed, audio seconds committed).
    """
    writer = StoreWriter(store_path, journal=journal)
    # The model's own batch size, when it has one, decides how much audio to decode ahead.
    batch_seconds = max(
        [float(getattr(e.config, "batch_seconds", 0) or 0) for e in extractors] + [batch_seconds]
    )
    batches = list(_batches(items, int(batch_seconds * 16000)))
    committed = _Committed()
    # Bounded: memory stays flat. Several writers: compression and chunk files of one
    # utterance overlap with those of the next (utterances never share a chunk).
    write_queue: queue.Queue = queue.Queue(maxsize=2 * write_threads)
    write_error: list[BaseException] = []

    def write_loop() -> None:
        while True:
            job = write_queue.get()
            if job is None:
                return
            try:
                job()
            except BaseException as error:  # surfaced in the main thread below
                write_error.append(error)

    writer_threads = [
        threading.Thread(target=write_loop, name=f"w2v2ser-store-writer-{n}", daemon=True)
        for n in range(write_threads)
    ]
    for thread in writer_threads:
        thread.start()
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="w2v2ser-decode") as decoder:
            upcoming = decoder.submit(lambda b=batches[0] if batches else []: [_decode(i, extractors) for i in b])
            for number in range(len(batches)):
                decoded = upcoming.result()
                if number + 1 < len(batches):
                    upcoming = decoder.submit(lambda b=batches[number + 1]: [_decode(i, extractors) for i in b])
                if write_error:
                    raise write_error[0]
                _extract_batch(writer, decoded, extractors, write_queue, committed, on_utterance)
    finally:
        for _ in writer_threads:
            write_queue.put(None)
        for thread in writer_threads:
            thread.join()
        writer.close()
    if write_error:
        raise write_error[0]
    return committed.utterances, committed.seconds


class _Committed:
    """Counts of committed utterances, updated by the writer threads."""

    def __init__(self) -> None:
        self.utterances = 0
        self.seconds = 0.0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self.utterances += 1
            self.seconds += seconds


def _extract_batch(
    writer: StoreWriter,
    decoded: Sequence[tuple[_ShardItem, DecodedAudio | None, str, str]],
    extractors: Sequence[Extractor],
    write_queue: queue.Queue,
    committed: _Committed,
    on_utterance: Callable[[float], None] | None,
) -> None:
    good = [(item, signal, digest) for item, signal, digest, reason in decoded if signal is not None]
    for item, _, _, reason in decoded:
        if reason:
            write_queue.put(lambda i=item.index, r=reason: writer.record_failure(i, reason=r))
    features: dict[str, list[np.ndarray | None]] = {}
    for extractor in extractors:
        limit = getattr(extractor.config, "max_seconds", None)
        allowed = [limit is None or audio.num_samples <= limit * 16000 for _, audio, _ in good]
        for (item, audio, _), ok in zip(good, allowed):
            if not ok:
                reason = (
                    f"{item.path} is {audio.num_samples / 16000:.0f} s long, over {extractor.name}.max_seconds={limit:g}; "
                    f"split the file, or raise {extractor.name}.max_seconds (memory grows with the length squared)"
                )
                write_queue.put(lambda i=item.index, r=reason, n=extractor.name: writer.record_failure(i, feature=n, reason=r))
        audios = [audio for (_, audio, _), ok in zip(good, allowed) if ok]
        try:
            values = iter(run_extractor(extractor, audios))
        except Exception:  # noqa: BLE001 - retry one by one to isolate the bad utterance
            values = iter(
                [_extract_one(extractor, item, s, write_queue, writer) for (item, s, _), ok in zip(good, allowed) if ok]
            )
        features[extractor.name] = [next(values) if ok else None for ok in allowed]
    for position, (item, audio, digest) in enumerate(good):
        frames = {name: values[position] for name, values in features.items() if values[position] is not None}
        if len(frames) != len(extractors):
            continue
        duration = audio.num_samples / 16000.0

        def commit(i: int = item.index, f: Mapping = frames, d: str = digest, s: float = duration) -> None:
            writer.write_utterance(i, f, audio_sha256=d, duration=s)
            committed.add(s)
            if on_utterance is not None:
                on_utterance(s)

        write_queue.put(commit)


def _extract_one(
    extractor: Extractor, item: _ShardItem, audio: DecodedAudio, write_queue: queue.Queue, writer: StoreWriter
) -> np.ndarray | None:
    try:
        return run_extractor(extractor, [audio])[0]
    except Exception as error:  # noqa: BLE001 - recorded per utterance, the shard goes on
        reason = f"{extractor.name} failed on {item.path}: {type(error).__name__}: {error}"
        # Journal appends happen on the writer thread only.
        write_queue.put(lambda: writer.record_failure(item.index, feature=extractor.name, reason=reason))
        return None


# --- Dask -----------------------------------------------------------------------------------

_WORKER_EXTRACTORS: dict[str, Extractor] = {}


def _dask_shard(store_path: str, items: list[_ShardItem], configs: dict[str, dict], journal: str) -> tuple[int, float]:
    """A Dask task: build (and cache per worker process) the extractors, run one shard."""
    import json

    extractors = []
    for name, config in configs.items():
        key = name + json.dumps(config, sort_keys=True)
        if key not in _WORKER_EXTRACTORS:
            _WORKER_EXTRACTORS[key] = build_extractor(name, config)
        extractors.append(_WORKER_EXTRACTORS[key])
    return extract_shard(store_path, items, extractors=extractors, journal=journal)


def _run_on_dask(
    client: Any,
    store_path: str,
    tasks: Sequence[tuple[list[str], list[_ShardItem]]],
    configs: Mapping[str, dict],
    *,
    gpu_resource: str | None,
    progress: bool,
) -> tuple[int, float]:
    from distributed import as_completed

    futures = []
    for number, (names, items) in enumerate(tasks):
        uses_gpu = gpu_resource is not None and any(name in GPU_FEATURES for name in names)
        futures.append(
            client.submit(
                _dask_shard,
                store_path,
                items,
                {name: configs[name] for name in names},
                f"shard-{'-'.join(names)}-{number:05d}",
                resources={gpu_resource: 1} if uses_gpu else None,
                pure=False,
                key=f"w2v2ser-extract-{'-'.join(names)}-{number:05d}-{time.time_ns()}",
            )
        )
    done = [0, 0.0]
    errors: list[str] = []
    bar = _progress(None, progress, "extract shards", "shard", total=len(futures)) if progress else None
    for future in as_completed(futures):
        try:
            count, seconds = future.result()
            done[0] += count
            done[1] += seconds
        except Exception as error:  # noqa: BLE001 - keep finished shards; report the rest
            errors.append(f"{future.key}: {type(error).__name__}: {error}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if errors:
        raise W2v2serError(
            f"{len(errors)} extraction shard(s) failed on Dask workers (finished shards are kept; rerun to retry):\n"
            + "\n".join(errors[:10])
        )
    return int(done[0]), float(done[1])
