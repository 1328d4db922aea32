"""One unit of work: extract and commit one shard of utterances (:func:`extract_shard`).

Decoding runs ahead of the model (worker processes, or one thread), CPU features run alongside it
in threads of their own, and a writer thread packs the utterances into the unit's own Zarr shards;
a file that cannot be decoded or extracted becomes a recorded failure, never a stopped shard.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from w2v2ser._common import check_stop
from w2v2ser.store import StoreLocation, StoreWriter, W2v2serError, WorkUnit

from ._audio import DecodedAudio, decode_audio, sha256_file
from ._rates import configured_rates, resample_for, run_extractor
from ._registry import UPSTREAMS, Extractor
from ._source import ModelLoadError

__all__ = ["GPU_FEATURES", "default_decode_workers", "extract_shard"]


# Features that profit from a GPU; everything else runs on CPU workers.
GPU_FEATURES = UPSTREAMS


@dataclass(frozen=True)
class _ShardItem:
    index: int
    path: str
    num_samples: int
    skip: tuple[str, ...] = ()  # features of the unit not extracted for it (already stored, or refused)
    kept: bool = False  # it has features stored before this run: a decode failure fails only the unit's others


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


def _decode(item: _ShardItem, rates: Sequence[int | str]) -> tuple[_ShardItem, DecodedAudio | None, str, str]:
    """Decode one file; errors become a reason string so one bad file never stops a shard."""
    try:
        audio = DecodedAudio(*decode_audio(item.path))
        resample_for(audio, rates)  # here, in the decode worker, ahead of extraction
        return item, audio, sha256_file(item.path), ""
    except W2v2serError as error:
        return item, None, "", str(error)
    except Exception as error:  # noqa: BLE001 - any decoder error is recorded, not raised
        return item, None, "", f"cannot decode {item.path}: {type(error).__name__}: {error}. Check the file is valid audio."


_Decoded = list[tuple[_ShardItem, "DecodedAudio | None", str, str]]


def _decode_batch(batch: Sequence[_ShardItem], rates: Sequence[int | str]) -> tuple[_Decoded, float]:
    """Decode (and resample to ``rates``) a batch; also returns the busy seconds (may run in a
    worker process, so it gets the extractors' configured rates, not the extractors)."""
    started = time.perf_counter()
    decoded = [_decode(item, rates) for item in batch]
    return decoded, time.perf_counter() - started


# Decode worker processes, kept for the life of this process (so across shards and runs).
_DECODE_POOLS: dict[int, ProcessPoolExecutor] = {}


def _decode_pool(workers: int) -> ProcessPoolExecutor:
    pool = _DECODE_POOLS.get(workers)
    if pool is None:
        # spawn: the parent holds torch and its threads; a forked child could deadlock.
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        _DECODE_POOLS[workers] = pool
    return pool


class _Decoder:
    """Decodes batches ahead of the model, in order: in `workers` processes, or one thread (0)."""

    def __init__(self, batches: Sequence[Sequence[_ShardItem]], workers: int, rates: Sequence[int | str]) -> None:
        self._batches, self._workers, self._rates = list(batches), workers, list(rates)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="w2v2ser-decode") if workers == 0 else None
        self._ahead = 2 if workers == 0 else workers + 1
        self._futures: deque[tuple[int, Future]] = deque()
        self._next = 0

    def _submit(self) -> None:
        while self._next < len(self._batches) and len(self._futures) < self._ahead:
            batch = self._batches[self._next]
            try:
                executor: Any = self._thread or _decode_pool(self._workers)
                future = executor.submit(_decode_batch, batch, self._rates)
            except (BrokenProcessPool, OSError, RuntimeError, AssertionError):
                # No worker processes here (a broken pool, or a daemonic process that may not
                # have children): decode in one thread of this process from now on.
                _DECODE_POOLS.pop(self._workers, None)
                self._workers, self._ahead = 0, 2
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="w2v2ser-decode")
                future = self._thread.submit(_decode_batch, batch, self._rates)
            self._futures.append((self._next, future))
            self._next += 1

    def __iter__(self) -> Iterator[tuple[_Decoded, float]]:
        self._submit()
        while self._futures:
            number, future = self._futures.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:  # a worker died (e.g. killed): decode this batch here
                _DECODE_POOLS.pop(self._workers, None)
                result = _decode_batch(self._batches[number], self._rates)
            self._submit()
            yield result

    def close(self) -> None:
        for _, future in self._futures:
            future.cancel()
        if self._thread is not None:
            self._thread.shutdown(wait=True)


# Copies of CPU extractors (each with its own openSMILE worker), kept across shards.
_CPU_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _CpuFeatures:
    """CPU features (eGeMAPS, spectrogram) computed alongside the model in background threads.

    Each feature has `copies` extractor instances, each called from one thread of its own
    (openSMILE runs in a worker process per instance), batches handed out round robin.
    """

    def __init__(self, extractors: Sequence[Extractor], copies: int) -> None:
        self._slots: dict[str, list[tuple[Extractor, ThreadPoolExecutor]]] = {}
        self._turn: dict[str, int] = {}
        for extractor in extractors:
            instances = [extractor]
            if copies > 1:
                try:
                    extra = _CPU_COPIES.setdefault(extractor, [])
                except TypeError:  # not weak-referenceable: no copies
                    extra = []
                try:
                    while len(extra) < copies - 1:
                        extra.append(copy.deepcopy(extractor))
                except Exception:  # noqa: BLE001 - an extractor that cannot be copied runs alone
                    extra = []
                instances += extra[: copies - 1]
            self._slots[extractor.name] = [
                (instance, ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"w2v2ser-{extractor.name}"))
                for instance in instances
            ]
            self._turn[extractor.name] = 0

    def submit(self, name: str, function: Callable[[Extractor], Any]) -> Future:
        slots = self._slots[name]
        turn = self._turn[name]
        self._turn[name] = (turn + 1) % len(slots)
        instance, executor = slots[turn]
        return executor.submit(function, instance)

    def close(self) -> None:
        for slots in self._slots.values():
            for _, executor in slots:
                executor.shutdown(wait=True)


def _uses_cuda(extractors: Sequence[Extractor]) -> bool:
    return any(bool(getattr(e, "uses_cuda", lambda: False)()) for e in extractors if e.name in GPU_FEATURES)


def default_decode_workers(extractors: Sequence[Extractor]) -> int:
    """Decode processes when none are asked for: a few on a GPU run (the model outruns one
    decoding thread there), none on CPU (processes would take the model's cores)."""
    if not _uses_cuda(extractors):
        return 0
    return max(1, min(4, (os.cpu_count() or 2) // 4))


def extract_shard(
    store_path: str | StoreLocation,
    items: Sequence[_ShardItem],
    *,
    extractors: Sequence[Extractor],
    journal: str,
    unit: WorkUnit,
    batch_seconds: float = 32.0,
    on_utterance: Callable[[float], None] | None = None,
    decode_workers: int | None = None,
    cpu_workers: int = 1,
    on_stage: Callable[[str, float], None] | None = None,
    silent: list[int] | None = None,
) -> tuple[int, float]:
    """Extract and commit one shard of utterances (one unit of work).

    Decoding runs ahead of the model (worker processes, or one thread), store writes run
    behind it (a writer thread), and with a GPU feature the CPU features run alongside in
    threads of their own, so neither stalls the model; bounded queues keep memory flat.
    The unit's utterances become visible together, when the unit commits at the end.

    Args:
        store_path: The store directory or location (already planned).
        items: The shard's utterances with their store rows.
        extractors: Extractors for the features this shard writes.
        journal: Commit journal name; one writer per journal at a time.
        unit: The unit's store space, from ``StoreWriter.plan_units`` for these items.
        batch_seconds: Audio seconds handed to the extractors at once.
        on_utterance: Called with the audio seconds of every utterance written.
        decode_workers: Decode processes (0 = one thread; None = `default_decode_workers`).
        cpu_workers: Instances of each CPU feature's extractor working in parallel.
        on_stage: Profiling callback, called with (stage, busy seconds): "decode",
            "store_write", "cpu_feature:NAME", and the model's own stages.
        silent: If given, the store rows of the committed utterances whose audio is digital
            silence after mixing to mono are appended to it (the caller records them in the store).

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
    unit_writer = writer.open_unit(unit)
    gpu = [e for e in extractors if e.name in GPU_FEATURES]
    background = [e for e in extractors if e.name not in GPU_FEATURES] if gpu or cpu_workers > 1 else []
    cpu_features = _CpuFeatures(background, max(1, cpu_workers)) if background else None
    if decode_workers is None:
        decode_workers = default_decode_workers(extractors)
    decoder = _Decoder(batches, decode_workers, configured_rates(extractors))
    stage = on_stage or (lambda name, seconds: None)
    profiled = [e for e in gpu if hasattr(e, "on_stage")]
    for extractor in profiled:
        extractor.on_stage = on_stage  # type: ignore[attr-defined]
    # Bounded: memory stays flat. One writer thread: utterances are packed in order (the
    # codec pipeline encodes a shard's chunks in parallel itself). One job per batch.
    write_queue: queue.Queue = queue.Queue(maxsize=3)
    write_error: list[BaseException] = []
    finished = False

    def write_loop() -> None:
        while True:
            job = write_queue.get()
            if job is None:
                return
            try:
                job()
            except BaseException as error:  # surfaced in the main thread below
                write_error.append(error)

    writer_thread = threading.Thread(target=write_loop, name="w2v2ser-store-writer", daemon=True)
    writer_thread.start()
    try:
        for decoded, decode_seconds in decoder:
            check_stop()  # a SIGTERM/Ctrl-C whose exception was lost inside C code stops here
            stage("decode", decode_seconds)
            if write_error:
                raise write_error[0]
            job = _extract_batch(writer, unit_writer, decoded, extractors, cpu_features, committed, on_utterance, stage)
            write_queue.put(job)
        finished = True
    finally:
        decoder.close()
        write_queue.put(None)
        writer_thread.join()
        if cpu_features is not None:
            cpu_features.close()
        for extractor in profiled:
            extractor.on_stage = None  # type: ignore[attr-defined]
        if finished and not write_error:
            started = time.perf_counter()
            unit_writer.commit()
            stage("store_write", time.perf_counter() - started)
        writer.close()
    if write_error:
        raise write_error[0]
    if silent is not None:
        silent.extend(committed.silent)
    return committed.utterances, committed.seconds


class _Committed:
    """Counts of committed utterances, updated by the writer thread."""

    def __init__(self) -> None:
        self.utterances = 0
        self.seconds = 0.0
        self.silent: list[int] = []  # store rows whose audio is digital silence
        self._lock = threading.Lock()

    def add(self, seconds: float, *, row: int | None = None) -> None:
        """Count one committed utterance; ``row``: its store row, when its audio is digital silence."""
        with self._lock:
            self.utterances += 1
            self.seconds += seconds
            if row is not None:
                self.silent.append(row)


# A failure to record: (store row, feature or None for all, reason).
_Failure = tuple[int, "str | None", str]


def _seconds_above(num_samples: int) -> int:
    """The whole ten seconds at least as long as `num_samples` 16 kHz samples (for advice)."""
    return -(-num_samples // (16000 * 10)) * 10


def _seconds_over(num_samples: int, limit: float) -> tuple[str, str]:
    """`num_samples` 16 kHz samples in seconds, and ``limit``, with the digits that show the length is
    over the limit (3.5001 over 3.5, not 3.5 over 3.5)."""
    seconds = num_samples / 16000
    length = next((text for digits in range(1, 8) if float(text := f"{seconds:.{digits}f}") > limit), repr(seconds))
    return length, f"{limit:g}" if float(f"{limit:g}") == limit else repr(limit)


def _features_of(
    extractor: Extractor, good: Sequence[tuple[_ShardItem, DecodedAudio, str]]
) -> tuple[list[np.ndarray | None], list[_Failure]]:
    """One feature of a batch; a failing batch is retried one by one to isolate the bad utterance.

    Returns failures instead of recording them: this may run on a background thread, and
    journal appends happen on the writer thread only.
    """
    failures: list[_Failure] = []
    limit = getattr(extractor.config, "max_seconds", None)
    wanted = [extractor.name not in item.skip for item, _, _ in good]
    allowed = [want and (limit is None or audio.num_samples <= limit * 16000)
               for (_, audio, _), want in zip(good, wanted)]
    for (item, audio, _), ok, want in zip(good, allowed, wanted):
        if want and not ok:
            length, shown = _seconds_over(audio.num_samples, limit)
            failures.append((item.index, extractor.name, (
                f"{item.path} is {length} s long, over {extractor.name}.max_seconds={shown} "
                f"(the whole file goes through the model at once, and its memory grows with the length squared); "
                f"split the file, or raise max_seconds: `w2v2ser extract` with --option {extractor.name}.max_seconds="
                f"{_seconds_above(audio.num_samples)} extracts it into the same store (in pipeline.yaml, a changed "
                f"max_seconds makes a new store folder)"
            )))
    audios = [audio for (_, audio, _), ok in zip(good, allowed) if ok]
    try:
        values = iter(run_extractor(extractor, audios))
    except ModelLoadError:  # not one file's fault: every file failed with it, each recorded on its own
        raise
    except Exception:  # noqa: BLE001 - retry one by one to isolate the bad utterance
        check_stop()  # an interrupt that surfaced as another error (SystemError from C code) is no failure
        singles = []
        for (item, audio, _), ok in zip(good, allowed):
            if not ok:
                continue
            try:
                singles.append(run_extractor(extractor, [audio])[0])
            except Exception as error:  # noqa: BLE001 - recorded per utterance, the shard goes on
                check_stop()
                failures.append((item.index, extractor.name,
                                 f"{extractor.name} failed on {item.path}: {type(error).__name__}: {error}"))
                singles.append(None)
        values = iter(singles)
    return [next(values) if ok else None for ok in allowed], failures


def _extract_batch(
    writer: StoreWriter,
    unit_writer: Any,
    decoded: _Decoded,
    extractors: Sequence[Extractor],
    cpu_features: _CpuFeatures | None,
    committed: _Committed,
    on_utterance: Callable[[float], None] | None,
    stage: Callable[[str, float], None],
) -> Callable[[], None]:
    """Run the batch's model features here, start its CPU features, and return the writer
    thread's job: wait for the CPU features, record failures, add utterances in order."""
    good = [(item, audio, digest) for item, audio, digest, reason in decoded if audio is not None]
    failures: list[_Failure] = [
        failure for item, _, _, reason in decoded if reason
        for failure in ([(item.index, e.name, reason) for e in extractors if e.name not in item.skip] if item.kept
                        else [(item.index, None, reason)])]
    results: dict[str, Any] = {}
    for extractor in extractors:
        if cpu_features is not None and extractor.name not in GPU_FEATURES:

            def timed(instance: Extractor, name: str = extractor.name) -> Any:
                started = time.perf_counter()
                try:
                    return _features_of(instance, good)
                finally:
                    stage(f"cpu_feature:{name}", time.perf_counter() - started)

            results[extractor.name] = cpu_features.submit(extractor.name, timed)
        else:
            results[extractor.name] = _features_of(extractor, good)

    def job() -> None:
        features: dict[str, list[np.ndarray | None]] = {}
        for name, result in results.items():
            values, errors = result.result() if isinstance(result, Future) else result
            features[name] = values
            failures.extend(errors)
        started = time.perf_counter()
        for index, feature, reason in failures:
            writer.record_failure(index, feature=feature, reason=reason)
        # (row, frames, digest, duration) of the utterances with some feature: a feature that failed
        # for a file (too long for the model, refused by openSMILE) is recorded as that feature's
        # failure, and the file's other features are kept.
        ready = []
        for position, (item, audio, digest) in enumerate(good):
            frames = {name: values[position] for name, values in features.items() if values[position] is not None}
            if frames:
                ready.append((item.index, frames, digest, audio.num_samples / 16000.0))
        silent = {item.index for item, audio, _ in good if audio.silent}
        # The batch at once: its checks, statistics and checksums run in parallel threads. Frames
        # the store refuses (a float16 overflow: inf) fail their feature of that file, not the work unit.
        indices, frame_sets, digests, durations = zip(*ready) if ready else ((), (), (), ())
        packed = set(unit_writer.add_many(
            indices, frame_sets, audio_sha256=digests, durations=durations,
            silent=[index in silent for index in indices],
            on_bad_frames=lambda index, error: writer.record_failure(
                index, feature=getattr(error, "feature", None), reason=str(error))))
        for index, duration in zip(indices, durations):
            if index in packed:
                committed.add(duration, row=index if index in silent else None)
                if on_utterance is not None:
                    on_utterance(duration)
        stage("store_write", time.perf_counter() - started)

    return job
