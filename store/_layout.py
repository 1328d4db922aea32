"""On-disk layout of a w2v2ser store (format 2): names, dtypes, codecs and root-attribute checks.

Every array is a plain Zarr v3 array written and read through zarr-python; the ``zarrs``
codec pipeline (Rust) is used when installed, since it writes whole shards near disk speed.
It serves local stores only: for an ``FsspecStore`` (object storage) zarrs hands arrays to
zarr-python's own codec pipeline.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shlex
import threading
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore

from w2v2ser._common import ConfigError
from w2v2ser._text import file_url_path

from ._errors import StoreDamagedError, StoreError, StoreIncompleteError, StoreVersionError
from ._location import STORAGE_OPTIONS_ENV, StoreLocation, is_store_url, locate_store, remote_errors
from ._readcache import ReadCacheStore
from ._types import FeatureSpec

# The format written. 3 is format 2's layout with CRC-32C per-layer checksums (row_checksum):
# an older w2v2ser must refuse it ("upgrade w2v2ser") rather than call its checksums damaged.
FORMAT_VERSION = 3
OLDEST_READABLE = 2  # format 2 (zlib CRC-32 checksums) is read as it is; format 1 needs `store upgrade`
ATTRS_KEY = "w2v2ser"
ROW_CHUNK = 65536  # rows per chunk of the 1-D table columns and per-utterance index arrays
STATS_SHARD = 64  # utterance slots per shard of the per-utterance statistics
SHARD_SECONDS = 240.0  # audio seconds per data shard (file count: < 1 file per 60 s)
SHARD_BYTES = 256 * 2**20  # ... but at most this many bytes (a writer holds two: one filling, one being written)
PARQUET_TABLES = ("utterances", "failures")

# column -> (dtype, fill value). Strings use Zarr 3's variable-length UTF-8 dtype, which
# other Zarr implementations may not read: finalize also writes both tables as Parquet.
UTTERANCE_COLUMNS: dict[str, tuple[Any, Any]] = {
    "id": (str, ""),
    "path": (str, ""),
    "speaker": (str, ""),
    "label": (str, ""),
    "session": (str, ""),
    "split": (str, ""),
    "gender": (str, ""),
    "corpus": (str, ""),
    "extra": (str, "{}"),
    "duration": ("float64", float("nan")),
    "num_samples": ("int64", -1),
    "audio_sha256": (str, ""),
    "status": (str, "pending"),
}
FAILURE_COLUMNS = ("id", "path", "feature", "reason")
STATUSES = ("done", "failed", "pending")

# Per-row index arrays of each feature, written by finalize from the commit records (except
# ``capacity``, the planned maximum frame count, written by plan): name -> (dtype, fill value).
ROW_ARRAYS: dict[str, tuple[str, Any]] = {
    "capacity": ("int64", 0),
    "offset": ("int64", -1),
    "length": ("int64", -1),
    "slot": ("int64", -1),
}


# zarrs reads and writes inner chunks on rayon's global thread pool, which has one thread per core:
# on 2 cores, 2 requests in flight leave a cold disk idle. 8 threads read cold all-layer utterances
# 1.3x faster here, with warm reads unchanged (tests/benchmarks/results/bench_store_rayon.md). Set
# before zarrs first runs (rayon reads it once); a value the user exported wins.
os.environ.setdefault("RAYON_NUM_THREADS", str(max(8, os.cpu_count() or 1)))


def _zarrs_available() -> bool:
    try:
        import zarrs  # noqa: F401
    except ImportError:  # pragma: no cover - zarrs is a dependency; zarr's own pipeline also works
        return False
    return True


_ZARRS_PATH = "zarrs.ZarrsCodecPipeline"
_PIPELINE = {"codec_pipeline.path": _ZARRS_PATH} if _zarrs_available() else {}


# zarr's own pipeline, named explicitly: it checks every chunk's crc32c.
_CHECKING_PIPELINE = {"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}
# zarr.config is process-wide: two threads entering and leaving config.set in interleaved order
# (stage 2's parallel readers) can leave the zarrs pipeline set for good, and the small arrays
# then lose their checksum check. One lock makes every set-open-restore happen in one piece.
_PIPELINE_LOCK = threading.RLock()


# rayon's global thread pool, on which zarrs decodes, does not survive fork(): a child forked after
# its parent read through zarrs (a PyTorch DataLoader worker, a multiprocessing "fork" pool) waited
# forever on its first read. Such a child opens every array with zarr's own pipeline (slower; a
# "spawn" or "forkserver" child starts afresh and keeps zarrs), and readers reopen the arrays they
# had cached (fork_count() changes). tensorstore aborts a forked child that uses it after its parent
# did ("fork() use detected"): such a child writes shards through zarr.
_ZARRS_USED = [False]
_FORKS = [0]


def _after_fork_in_child() -> None:
    global _PIPELINE_LOCK
    _PIPELINE_LOCK = threading.RLock()  # another thread of the parent may have held it
    _FORKS[0] += 1
    if _ZARRS_USED[0]:
        _PIPELINE.clear()
        _PIPELINE.update(_CHECKING_PIPELINE)
    if _TENSORSTORE and _TENSORSTORE[0] is not None:
        _TENSORSTORE[:] = [None]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def fork_count() -> int:
    """How many fork()s lie between this process and the one that imported w2v2ser.store."""
    return _FORKS[0]


# zarr's own warning categories (e.g. UnstableSpecificationWarning of its string arrays): what quiet_zarr drops.
_ZARR_WARNINGS: tuple[type[Warning], ...] = tuple(
    getattr(zarr.errors, name) for name in ("ZarrFutureWarning", "ZarrDeprecationWarning", "ZarrUserWarning",
                                            "ZarrRuntimeWarning") if hasattr(zarr.errors, name)) or (Warning,)


@contextlib.contextmanager
def quiet_zarr(categories: tuple[type[Warning], ...] = _ZARR_WARNINGS) -> Iterator[None]:
    """``categories`` of warnings off inside (zarr's own, on its format), under the one lock of _codec_pipeline.
    ``catch_warnings`` is process-wide and restores on exit what it saw on entry: two threads inside at once
    (stage 2's readers, Dask tasks opening stores) left ``ignore`` installed for good, and every later warning
    of the process was lost; and while one thread was inside, the warnings of every other thread were."""
    with _PIPELINE_LOCK, warnings.catch_warnings():
        for category in categories:
            warnings.filterwarnings("ignore", category=category)
        yield


@contextlib.contextmanager
def _codec_pipeline(config: dict[str, str]) -> Iterator[None]:
    """Arrays opened inside use the pipeline `config` names (chosen when an array is opened)."""
    with quiet_zarr(), zarr.config.set(config):
        if config.get("codec_pipeline.path") == _ZARRS_PATH:
            _ZARRS_USED[0] = True
        yield


def fast_pipeline() -> contextlib.AbstractContextManager[None]:
    """Arrays opened inside use the zarrs codec pipeline."""
    return _codec_pipeline(_PIPELINE)


# The tables, the index and the speaker statistics store every chunk a write touches, also one
# that holds only fill values: zarr reads a missing chunk as the fill value, so only then can a
# reader tell a deleted chunk (read back as zeros or empty strings) from one never stored. Stores
# written so record ALL_CHUNKS_STORED, and their readers check that those chunks are there. The
# sharded arrays (frames, per-utterance statistics) keep leaving out the zero tail of a work unit's
# last shard: frames are checked by their CRCs, and statistics by the shards of the slots in use.
_STORE_EMPTY_CHUNKS = {"array.write_empty_chunks": True}
ALL_CHUNKS_STORED = "all_chunks_stored"  # True at creation; each finalize sets it to its "finalized" time
SHARDED_ARRAYS = ("data", "stats")


def all_chunks_stored(meta: dict[str, Any]) -> bool:
    """Whether a store's last finalize was one that stores every chunk (see _STORE_EMPTY_CHUNKS):
    an older w2v2ser that finalized it since leaves the mark behind its own "finalized" time, and
    it may have let go of chunks that held only fill values."""
    mark = meta.get(ALL_CHUNKS_STORED)
    return bool(mark) and mark == meta.get("finalized")


_TENSORSTORE: list[Any] = []  # [(module, context)] once imported, or [None] without tensorstore


def open_tensorstore(array: zarr.Array, *, write: bool = False) -> Any:
    """`array` opened with tensorstore's zarr3 driver (the same Zarr v3 format, through its own
    zarr.json); None without tensorstore or when the store is not a local directory.

    Writers use it for whole shards: the writer ran 1.3x faster than through zarr + zarrs
    (tests/benchmarks/bench_store_write.py); they open it per shard, since the array may have
    grown. Readers go through zarr + zarrs (read_batch was as fast or faster, cold and warm,
    tests/benchmarks/bench_cold_read.py).
    """
    if not _TENSORSTORE:
        try:
            import tensorstore as ts
        except ImportError:  # pragma: no cover - optional; zarr reads and writes the same shards
            _TENSORSTORE.append(None)
        else:
            _TENSORSTORE.append((ts, ts.Context()))
    if _TENSORSTORE[0] is None or not isinstance(array.store, LocalStore):
        return None
    ts, context = _TENSORSTORE[0]
    # tensorstore's file driver refuses relative paths with ".." ("../stores/x.zarr").
    folder = os.path.abspath(Path(array.store.root) / array.path)
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": folder}, "open": True}
    return ts.open(spec, read=True, write=write, context=context).result()


def default_chunk_frames(spec: FeatureSpec) -> int:
    """Frames per inner chunk: 128 for 3-D features (2.6 s of wav2vec2), 512 for 2-D ones."""
    return 128 if spec.layers is not None else 512


def default_shard_frames(spec: FeatureSpec, chunk: int) -> int:
    """Frames per shard: SHARD_SECONDS of audio, at most SHARD_BYTES, a multiple of `chunk`."""
    frame_bytes = int(np.dtype(spec.dtype).itemsize) * int(np.prod(spec.frame_shape))
    by_time = chunk * math.ceil(SHARD_SECONDS * float(spec.frame_rate) / chunk)
    by_bytes = chunk * (SHARD_BYTES // frame_bytes // chunk)  # rounded down: never over SHARD_BYTES
    return max(chunk, min(by_time, by_bytes))


# Every utterance's frames carry one CRC per layer (features/<name>/crc32), recorded at commit and
# checked on every read. The root attribute ``row_checksum`` names the CRC: new stores use CRC-32C
# (google_crc32c, a zarr dependency, is hardware-accelerated: 7x zlib's CRC-32 here, which was a
# third of a warm all-layer read); format-2 stores record none and use zlib's CRC-32.
ROW_CHECKSUMS: dict[str, Callable[[Any], int]] = {"crc32": zlib.crc32, "crc32c": google_crc32c.value}
ROW_CHECKSUM = "crc32c"


def row_checksum(path: Path | str, meta: dict[str, Any]) -> str:
    """The CRC of a store's per-layer checksums (``crc32`` for format 2, which records none)."""
    name = meta.get("row_checksum", "crc32" if meta.get("format_version") == 2 else None)
    if name is None:
        raise StoreDamagedError(
            f"store {path} is damaged: its root attribute {ATTRS_KEY!r} has format_version "
            f"{meta.get('format_version')!r} but no row_checksum. Re-extract into a new store."
        )
    if name not in ROW_CHECKSUMS:
        raise StoreVersionError(
            f"store {path} records row_checksum {name!r}, which this w2v2ser does not know (it knows "
            f"{', '.join(ROW_CHECKSUMS)}). Upgrade w2v2ser (pip install -U w2v2ser) to read it."
        )
    return name


def crc32_rows(frames: np.ndarray, checksum: str) -> np.ndarray:
    """One CRC (``checksum``: a key of ROW_CHECKSUMS) per layer (3-D frames) or one for all (2-D)."""
    crc = ROW_CHECKSUMS[checksum]
    if frames.ndim == 3:
        # Each layer is strided in [frames, layers, dim]: copy one layer at a time into a reused
        # buffer, which stays in the CPU cache. One transposed copy of all layers took 1.2x as
        # long for utterances of 3.5 s (bench_cold_read.py's "crc check" rows).
        layer = np.empty((frames.shape[0], frames.shape[2]), dtype=frames.dtype)
        out = np.empty(frames.shape[1], dtype=np.uint32)
        for k in range(frames.shape[1]):
            np.copyto(layer, frames[:, k])
            out[k] = crc(layer)
        return out
    return np.asarray([crc(np.ascontiguousarray(frames))], dtype=np.uint32)


def create_array(group: zarr.Group, name: str, **kwargs: Any) -> zarr.Array:
    """A table or index array: zstd, then a crc32c checksum on every chunk.

    zstd because a chunk holds ROW_CHUNK rows whatever the store's size: uncompressed, the tables
    and index of a store of 4 utterances took 8 MB; offsets, lengths and repeated strings
    compress well, and these arrays are small next to the frames."""
    kwargs.setdefault("config", {"write_empty_chunks": "shards" not in kwargs})  # see _STORE_EMPTY_CHUNKS
    kwargs.setdefault("compressors", [ZstdCodec(level=3), Crc32cCodec()])
    return group.create_array(name, **kwargs)


def open_root(path: Path | StoreLocation, *, mode: str, read_cache: bool = False) -> zarr.Group:
    """Open the root group of an existing store (directory or URL); ``read_cache``: a store on
    object storage is read through a :class:`ReadCacheStore` (a reader's)."""
    location = locate_store(path)
    store = location.zarr_store(read_only=(mode == "r"))
    if read_cache and not location.is_local:
        store = ReadCacheStore(store)
    with quiet_zarr():
        return zarr.open_group(store=store, mode=mode)


# The frames, whose reads w2v2ser checks itself (per-layer crc32 of each utterance). zarrs skips
# the crc32c of inner chunks it reads from part of a shard: a flipped byte in a shard of the
# per-utterance statistics read back silently through zarrs, and raised through zarr's pipeline.
FAST_ARRAYS = ("data",)


def open_array(group: zarr.Group, key: str, *, where: Path | str | None) -> zarr.Array:
    """An array of the store: the frames with the fast codec pipeline, every other array with
    zarr's own, which checks every inner chunk's crc32c. (Local writers write whole shards of the
    frames and statistics through tensorstore either way.) ``where``: the store as the user gave
    it (its location's display), named by the error for a missing array: required, so that no
    caller names ``s3a://b/x`` as ``s3://b/x`` (None: the store's root folder, or its store path)."""
    name = key.rsplit("/", 1)[-1]
    config = _PIPELINE if name in FAST_ARRAYS else _CHECKING_PIPELINE
    with _codec_pipeline(config if name in SHARDED_ARRAYS else {**config, **_STORE_EMPTY_CHUNKS}):
        try:
            return group[key]
        except (KeyError, ValueError, TypeError) as exc:  # missing, or unparseable (JSON, metadata) zarr.json;
            # an I/O, network or permission error (OSError) is not damage and goes on as it is.
            # Not repairable by re-extracting utterances: the array itself cannot be found.
            where = where or getattr(group.store_path.store, "root", None) or str(group.store_path)
            raise StoreDamagedError(
                f"store {where} is damaged: array {key} cannot be opened, its metadata file {key}/zarr.json is "
                f"missing or unreadable ({type(exc).__name__}: {exc}). Copy that file back from a backup or an "
                f"earlier copy of the store if you have one; otherwise extract into a new store "
                f"(`store verify --repair` re-extracts utterances, it cannot restore an array).") from None


def read_whole_shards(array: zarr.Array, start: int, stop: int) -> np.ndarray:
    """``array[start:stop]`` of a sharded local array (the per-utterance statistics), the shards that
    hold it read whole through zarrs, which checks every inner chunk's crc32c when it decodes a whole
    shard (not from part of one, nor in a shard cut by the array's end: that goes through ``array``,
    opened with zarr's own pipeline). zarr's pipeline costs about 0.3 ms per inner chunk, one slot of
    eGeMAPS statistics: composing 75,000 utterances' took 50 s, and zarrs reads 150,000 whole in 0.4 s.
    Any error reading through zarrs reads again through ``array``, whose error (a ValueError for a bad
    crc32c) is raised."""
    shard = int(array.shards[0]) if array.shards is not None else 0
    whole = array.shape[0] // shard * shard if shard else 0  # shards not cut by the array's end
    lo, hi = (start // shard * shard, min(-(-stop // shard) * shard, whole)) if shard else (0, 0)
    if (hi <= lo or _PIPELINE.get("codec_pipeline.path") != _ZARRS_PATH
            or not isinstance(array.store, LocalStore)):
        return np.asarray(array[start:stop])
    try:
        with _codec_pipeline(_PIPELINE):
            fast = zarr.open_array(store=array.store_path, mode="r")
        middle = np.asarray(fast[lo:hi])
    except Exception:  # noqa: BLE001 -- zarrs raises RuntimeError for a bad checksum: zarr's own error instead
        return np.asarray(array[start:stop])
    if hi >= stop:
        return middle[start - lo:stop - lo]
    return np.concatenate([middle[start - lo:], np.asarray(array[hi:stop])])


def missing_chunk_keys(array: zarr.Array, *, rows: np.ndarray | None = None) -> list[str]:
    """Keys of `array`'s chunk files (shards, for a sharded array) that are not in its store.

    ``rows``: check only the files that hold these indices of the first axis (the slots in use
    of a statistics array, whose unused tail a killed work unit may never have written).
    """
    grid = [int(c) for c in array.metadata.chunk_grid.chunk_shape]
    counts = [-(-int(n) // c) for n, c in zip(array.shape, grid)]
    if not all(counts):
        return []
    first = range(counts[0]) if rows is None else np.unique(np.asarray(rows, np.int64) // grid[0]).tolist()
    prefix = f"{array.path}/" if array.path else ""

    async def listed() -> set[str]:
        return {key async for key in array.store.list_prefix(f"{prefix}c/")}

    from zarr.core.sync import sync

    try:
        present = sync(listed())
    except Exception:  # a store that cannot be listed (read-only credentials, HTTP): nothing to tell
        return []
    wanted = (prefix + array.metadata.encode_chunk_key((i, *rest))
              for i in first for rest in itertools.product(*map(range, counts[1:])))
    missing = [key for key in wanted if key not in present]
    try:  # a listing is not the last word: ask for each missing key (only on the rare damaged path)
        return [key for key in missing if not sync(array.store.exists(key))]
    except Exception:
        return missing


def rows_of_missing_data_shards(data: zarr.Array, *, rows: np.ndarray, offset: np.ndarray, length: np.ndarray,
                                crc32: np.ndarray, checksum: str) -> np.ndarray:
    """Those of ``rows`` (with frames) whose first or last frame lies in a data shard file that is not
    in the store (a store copied while it was written, a deleted file), except digital silence: a
    shard of all-zero frames is not stored."""
    rows = np.asarray(rows, np.int64)
    rows = rows[np.asarray(length)[rows] > 0]
    if not len(rows):
        return rows
    first, last = np.asarray(offset)[rows], np.asarray(offset)[rows] + np.asarray(length)[rows] - 1
    missing = set(missing_chunk_keys(data, rows=np.concatenate([first, last])))
    if not missing:
        return rows[:0]
    shard = int(data.metadata.chunk_grid.chunk_shape[0])
    prefix = f"{data.path}/" if data.path else ""
    gone = [k for k in np.unique(np.concatenate([first, last]) // shard).tolist()
            if prefix + data.metadata.encode_chunk_key((int(k),) + (0,) * (data.ndim - 1)) in missing]
    lost = rows[np.isin(first // shard, gone) | np.isin(last // shard, gone)]
    frame_shape, dtype = tuple(data.shape[1:]), data.dtype
    silent = np.zeros(len(lost), bool)
    for n in np.unique(np.asarray(length)[lost]):
        zeros = crc32_rows(np.zeros((int(n), *frame_shape), dtype=dtype), checksum)
        same = np.asarray(length)[lost] == n
        silent[same] = (np.asarray(crc32)[lost[same]].reshape(int(same.sum()), -1) == zeros.reshape(1, -1)).all(axis=1)
    return lost[~silent]


def overlapping_regions(offset: np.ndarray, length: np.ndarray, rows: np.ndarray) -> list[tuple[int, int]]:
    """(row, next row) of each pair of ``rows`` whose frame regions overlap, neighbours in the order
    of (offset, length, row): ``store verify`` lists them, finalize refuses them."""
    offset, length, rows = np.asarray(offset), np.asarray(length), np.asarray(rows, np.int64)
    order = rows[np.lexsort((rows, length[rows], offset[rows]))]
    ends = offset[order] + length[order]
    return [(int(order[k]), int(order[k + 1])) for k in np.flatnonzero(ends[:-1] > offset[order][1:])]


def missing_statistics_shards(stats: zarr.Array, *, length: np.ndarray, slot: np.ndarray, crc32: np.ndarray,
                              frame_shape: tuple[int, ...], dtype: Any, checksum: str,
                              recorded: np.ndarray | None = None,
                              frames: Callable[[int], np.ndarray | None] | None = None) -> dict[str, list[int]]:
    """Statistics shards that hold slots in use (``length > 0``) but are not in the store: key -> rows.

    A shard whose every utterance is digital silence (all-zero frames, as their CRCs show) holds
    only zeros, which zarr does not store: it is not missing. A killed work unit's slots have no
    committed length, so its unwritten shards are not asked for. ``recorded``: the statistics CRC of
    each row's commit (-1: none); a row whose recorded statistics are all zeros is not missing either.
    ``frames``: see :func:`digital_silence`.
    """
    length, slot, crc32 = np.asarray(length), np.asarray(slot), np.asarray(crc32)
    used = np.flatnonzero((length > 0) & (slot >= 0))
    missing = set(missing_chunk_keys(stats, rows=slot[used]))
    if not missing:
        return {}
    shard = int(stats.metadata.chunk_grid.chunk_shape[0])
    prefix = f"{stats.path}/" if stats.path else ""
    shard_of = slot[used] // shard
    keys = {int(k): prefix + stats.metadata.encode_chunk_key((int(k),) + (0,) * (stats.ndim - 1))
            for k in np.unique(shard_of)}
    keys = {k: key for k, key in keys.items() if key in missing}
    inside = np.isin(shard_of, list(keys))
    rows, shard_of = used[inside], shard_of[inside]
    silent = digital_silence(rows, length=length, crc32=crc32, frame_shape=frame_shape, dtype=dtype, checksum=checksum,
                             frames=frames)
    if recorded is not None:
        zeros = statistics_crc(np.zeros((1, 2, *frame_shape)), checksum)[0]
        silent |= np.asarray(recorded, np.int64)[rows] == zeros
    return {key: rows[shard_of == k].tolist() for k, key in keys.items() if not silent[shard_of == k].all()}


def digital_silence(rows: np.ndarray, *, length: np.ndarray, crc32: np.ndarray, frame_shape: tuple[int, ...],
                    dtype: Any, checksum: str,
                    frames: Callable[[int], np.ndarray | None] | None = None) -> np.ndarray:
    """Whether each of ``rows`` (with frames) holds only zero frames: the only utterances whose statistics
    are all zeros, as a missing or empty statistics shard reads. Told from the CRCs where each layer is all
    0.0 or all -0.0 (its statistics are zeros, its bytes, so its CRC, differ); a layer that mixes 0.0 and
    -0.0 has zero statistics too but the CRC of neither, so those rows are told from their frames
    (``frames``: row -> its CRC-checked frames, None when they cannot be read; without it, not silent).
    After the first row found not silent so, the rest are taken as not silent unread (one is enough to
    call the statistics damaged: an emptied shard of real utterances reads one, not all)."""
    rows, length, crc32 = np.asarray(rows, np.int64), np.asarray(length), np.asarray(crc32)
    silent = np.zeros(len(rows), bool)  # vectorised: a million silent rows take a CRC per distinct length
    signs = (0.0, -0.0) if np.issubdtype(np.dtype(dtype), np.floating) else (0,)
    for n in np.unique(length[rows]):
        same = length[rows] == n
        got = crc32[rows[same]].reshape(int(same.sum()), -1)
        zero = np.zeros(got.shape, bool)
        for value in signs:
            zero |= got == crc32_rows(np.full((int(n), *frame_shape), value, dtype=dtype), checksum).reshape(1, -1)
        silent[same] = zero.all(axis=1)
    if frames is not None and len(signs) > 1:
        for k in np.flatnonzero(~silent & (length[rows] > 0)):
            x = frames(int(rows[k]))
            if x is None or np.asarray(x).any():  # (-0.0 counts as zero: .any() is False for it)
                break
            silent[k] = True
    return silent


def frames_reader(data: zarr.Array, *, offset: np.ndarray, length: np.ndarray, crc32: np.ndarray,
                  checksum: str) -> Callable[[int], np.ndarray | None]:
    """Row -> its frames read from ``data``, None when they cannot be read or fail their CRCs (for
    :func:`digital_silence`, on the rare rows whose CRCs do not tell)."""
    def read(row: int) -> np.ndarray | None:
        start, count = int(offset[row]), int(length[row])
        try:
            x = np.asarray(data[start:start + count])
        except Exception:  # noqa: BLE001 -- damaged or unreadable: not known to be silent
            return None
        return x if np.array_equal(crc32_rows(x, checksum), np.asarray(crc32[row]).reshape(-1)) else None
    return read


# Each utterance's statistics slot also carries a CRC (``row_checksum``), in its commit record and in
# the index array ``features/<name>/stats_crc32`` (-1: committed before this was recorded), so that a
# statistics shard replaced by a valid copy of another one (every crc32c right) is not read as this
# utterance's. The root attribute STATS_CHECKSUMS holds the "finalized" time of the last finalize that
# wrote that array: a store finalized since by an older w2v2ser (which leaves the array stale) and older
# stores (without it) are read as before, with the digital-silence rule only.
STATS_CHECKSUMS = "stats_checksums"


def statistics_checked(meta: dict[str, Any]) -> bool:
    """Whether the store's index array ``stats_crc32`` is current (written by its last finalize)."""
    mark = meta.get(STATS_CHECKSUMS)
    return bool(mark) and mark == meta.get("finalized")


def statistics_crc(slots: np.ndarray, checksum: str, *, at: np.ndarray | None = None,
                   as_written: bool = True) -> np.ndarray:
    """One CRC (``checksum``: a key of ROW_CHECKSUMS) per statistics slot of ``[slots, 2, *frame_shape]``
    (``at``: of those slots only), over its float64 bytes; ``as_written``: with -0.0 taken as 0.0, as the
    writer records it (an implementation that leaves out a chunk equal to the fill value 0.0 by value, not
    by bits, reads a slot of -0.0 back as 0.0), else over the bytes as they are (no copy)."""
    crc = ROW_CHECKSUMS[checksum]
    slots = np.asarray(slots)
    picks = range(len(slots)) if at is None else np.asarray(at, np.int64).tolist()
    out = np.empty(len(picks), np.int64)
    for k, i in enumerate(picks):
        one = np.ascontiguousarray(slots[i], np.float64)
        out[k] = crc(one + 0.0 if as_written else one)  # + 0.0: a copy with -0.0 made 0.0
    return out


def speaker_crc(names: list[str], counts: np.ndarray, means: np.ndarray, m2s: np.ndarray, checksum: str) -> np.ndarray:
    """One CRC per row of the speaker tables (``features/<name>/speaker_crc32``, written by finalize with the
    tables): over the speaker's name (UTF-8), count (int64) and float64 mean and M2 (-0.0 as 0.0), so that a
    chunk of the tables replaced by a valid copy of another (another block of speakers, another store's) is
    not read as these speakers' figures."""
    crc = ROW_CHECKSUMS[checksum]
    out = np.empty(len(names), np.int64)
    for k, name in enumerate(names):
        moments = np.stack([np.asarray(means[k], np.float64), np.asarray(m2s[k], np.float64)]) + 0.0
        out[k] = crc(str(name).encode("utf-8") + np.int64(counts[k]).tobytes() + moments.tobytes())
    return out


def mismatched_statistics(block: np.ndarray, recorded: np.ndarray, checksum: str, *,
                          at: np.ndarray | None = None) -> np.ndarray:
    """Whether each slot of ``block`` (``at``: those slots of it) differs from the CRC its commit recorded
    (``recorded``, one per slot compared; -1: none recorded, never a mismatch)."""
    recorded = np.asarray(recorded, np.int64)
    at = np.arange(len(recorded)) if at is None else np.asarray(at, np.int64)
    bad = np.zeros(len(recorded), bool)
    known = np.flatnonzero(recorded >= 0)
    if len(known):  # the bytes as read first (no copy); a slot holding -0.0 is compared as written
        bad[known] = statistics_crc(block, checksum, at=at[known], as_written=False) != recorded[known]
        again = known[bad[known]]
        if len(again):
            bad[again] = statistics_crc(block, checksum, at=at[again]) != recorded[again]
    return bad


def _starts_with(path: Path, signature: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(signature)) == signature
    except OSError:
        return False


def enclosing_store(path: str | os.PathLike[str], *, itself: bool = True) -> Path | None:
    """The w2v2ser store that the local ``path`` lies inside (or is, when ``itself``), or None.

    An output put there (`train --out S`, `store export S S/x.h5`, `extract --store S/new.zarr`,
    `store upgrade OLD S/new.zarr`) lands among the store's own files, which its tools do not
    expect. A URL gives None (an object store has no folders to be inside).
    """
    given = _local_absolute(path)
    if given is None:
        return None
    for folder in [given, *given.parents][0 if itself else 1:]:
        if not (folder / "zarr.json").is_file():
            continue
        try:
            read_meta(folder)
        except StoreError:  # another Zarr group, or a store's unreadable root: look further up
            continue
        return folder
    return None


def refuse_inside_store(path: str | os.PathLike[str], option: str, *, itself: bool = True) -> None:
    """Refuse an output ``path`` inside a w2v2ser store (or the store itself, when ``itself``): `train
    S --out S` wrote its run files among the store's arrays, and `extract --store S/new.zarr` a store
    inside another, files the store's own tools do not expect (`store export` refuses the same).

    Args:
        path: The output folder (a URL or another host's file:// URL passes: checked by its user).
        option: How the user gave it, for the message (``--out``, ``out``).
        itself: Refuse the store's own folder too.

    Raises:
        ConfigError: ``path`` is inside a store (or is one).
    """
    given = _local_absolute(path)
    folder = None if given is None else enclosing_store(given, itself=itself)
    if folder is not None:
        where = "is the feature store" if folder == given else f"is inside the feature store {folder}"
        raise ConfigError(f"{option} {path} {where}, which w2v2ser reads and writes only through its own "
                          f"layout; files put there are not part of it. Choose a path outside {folder}.")


def _local_absolute(path: str | os.PathLike[str]) -> Path | None:
    """``path`` (a ``file://`` URL too) as an absolute local path without links; None for a URL."""
    if is_store_url(path):
        return None
    try:
        return Path(file_url_path(os.fspath(path))).expanduser().resolve()
    except (ValueError, OSError, RuntimeError):  # another host's file:// URL, a link loop: refused by their command
        return None


def read_meta(path: Path | StoreLocation) -> tuple[zarr.Group, dict[str, Any]]:
    """Open `path` read-only and return its group and the ``w2v2ser`` root attributes.

    Raises:
        StoreError: the directory is missing or is not a w2v2ser store.
    """
    location = locate_store(path)
    path = location.display
    if location.is_local and not (location.path / "zarr.json").is_file():
        what = ("the directory does not exist" if not location.path.exists() else
                "it is a file, not a directory" if not location.path.is_dir() else "the directory has no zarr.json")
        if location.path.is_file() and _starts_with(location.path, b"\x89HDF\r\n\x1a\n"):
            what += (" (an HDF5 file, e.g. a `w2v2ser store export` copy: read it with h5py; w2v2ser reads "
                     "the store it was exported from)")
        raise StoreError(
            f"{path} is not a w2v2ser store: {what}. Expected a Zarr v3 directory "
            f"written by `w2v2ser extract`; check the path or run the extraction first."
        )
    if not location.is_local and not _exists(location, "zarr.json"):
        raise StoreError(
            f"{path} is not a w2v2ser store: there is no object {path}/zarr.json. Expected a Zarr v3 "
            f"store written by `w2v2ser extract`; check the URL, the endpoint and the credentials "
            f"(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... or {STORAGE_OPTIONS_ENV}), or run the extraction first."
        )
    try:
        group = open_root(location, mode="r")
    except Exception as exc:  # zarr raises several types for a non-group zarr.json
        if _cut_store_root(location):
            raise StoreDamagedError(
                f"store {path} is damaged: its root metadata file {path}/zarr.json is cut or not JSON "
                f"({type(exc).__name__}: {exc}; a full disk or quota while it was rewritten, or a copy that "
                f"stopped part-way). It holds the store's format, extractor configs and completeness, so the "
                f"store cannot be read. Copy zarr.json back from a backup or from the store this one was "
                f"copied from; otherwise extract into a new store."
            ) from None
        raise StoreError(
            f"{path} is not a w2v2ser store: cannot open its zarr.json as a Zarr v3 group "
            f"({type(exc).__name__}: {exc}). Check the path."
        ) from None
    meta = group.attrs.asdict().get(ATTRS_KEY)
    if not isinstance(meta, dict) or "format_version" not in meta:
        raise StoreError(
            f"{path} is a Zarr group but not a w2v2ser store: root attribute {ATTRS_KEY!r} with "
            f"a format_version is missing. Point to a store written by `w2v2ser extract`."
        )
    return group, meta


def _cut_store_root(location: StoreLocation) -> bool:
    """Whether the root zarr.json is not JSON while the store's folders are there: damage to a
    w2v2ser store, not a path that names something else."""
    try:
        raw = (location.path / "zarr.json").read_bytes() if location.is_local else location.read_bytes("zarr.json")
        json.loads(raw or b"")
        return False
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        pass
    except Exception:  # unreadable: say what the caller says
        return False
    with contextlib.suppress(Exception):
        return any(location.exists(f"{key}/zarr.json") for key in ("utterances", "features"))
    return False


def _exists(location: StoreLocation, key: str) -> bool:
    with remote_errors(location):  # no such bucket, refused credentials, unreachable endpoint
        return location.exists(key)


def check_version(path: Path | str, meta: dict[str, Any]) -> None:
    """Refuse stores written in a newer format, and name the upgrade of older ones."""
    version = meta.get("format_version")
    if isinstance(version, int) and version < OLDEST_READABLE:
        raise StoreVersionError(
            f"store {path} has format_version {version} (written by w2v2ser "
            f"{meta.get('tool_version', '?')}); this w2v2ser reads format_version {OLDEST_READABLE} to "
            f"{FORMAT_VERSION}. "
            f"Convert it once with `w2v2ser store upgrade {shlex.quote(str(path))} NEW_PATH` and use NEW_PATH."
        )
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreVersionError(
            f"store {path} has format_version {version!r} (written by w2v2ser "
            f"{meta.get('tool_version', '?')}), but this w2v2ser reads format_version <= "
            f"{FORMAT_VERSION}. Upgrade w2v2ser (pip install -U w2v2ser) to read it."
        )


def check_complete(path: Path | str, meta: dict[str, Any]) -> None:
    """Refuse stores whose extraction has not finished."""
    if not meta.get("complete", False):
        raise StoreIncompleteError(
            f"store {path} is incomplete (root attribute {ATTRS_KEY}.complete is false): its "
            f"extraction was interrupted or some utterances are still pending. Rerun the "
            f"extraction with the same store path to finish it; `w2v2ser store info {shlex.quote(str(path))}` (or "
            f"open_store(..., allow_incomplete=True)) shows what is there."
        )


def specs_from_meta(meta: dict[str, Any]) -> dict[str, FeatureSpec]:
    """FeatureSpec per feature name from the root attributes."""
    return {name: FeatureSpec.from_dict(d) for name, d in meta.get("features", {}).items()}


def to_str_list(values: np.ndarray) -> list[str]:
    """Zarr string columns come back as numpy StringDType; make plain Python strings."""
    return [str(v) for v in values.tolist()]


def round_up(frames: int, chunk: int) -> int:
    """Smallest multiple of `chunk` that is >= `frames`."""
    return -(-int(frames) // chunk) * chunk
