"""export_hdf5: stream a store into one HDF5 file with the same layout (compact, no padding)."""

from __future__ import annotations

import errno
import io
import json
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from w2v2ser._common import FULL_DISK_ERRNOS, progress_bar
from w2v2ser._files import link_target, replacing
from w2v2ser._text import format_size

from ._errors import StoreDamagedError, StoreError, StoreFullError
from ._layout import (FAILURE_COLUMNS, UTTERANCE_COLUMNS, digital_silence, enclosing_store, mismatched_statistics,
                      to_str_list)
from ._location import is_store_url
from ._reader import FeatureStore, open_store
from ._types import FeatureSpec

__all__ = ["export_hdf5"]

_STR = h5py.string_dtype(encoding="utf-8")


EXPORT_BLOCK_BYTES = 16 * 2**20  # frames (or float64 statistics) read and written at once


def _write_strings(group: h5py.Group, name: str, values: list[str]) -> None:
    group.create_dataset(name, data=np.asarray(values, dtype=object), dtype=_STR)


_FULL = FULL_DISK_ERRNOS


def _full_message(out: Path, code: int) -> str:
    return (f"cannot write {out}: {os.strerror(code)} (the disk, quota or per-file size limit `ulimit -f` there "
            f"is full); nothing was written (an earlier {out.name} is unchanged). Free space or export elsewhere, "
            f"then rerun the same command.")


def _check_room(store: FeatureStore, out: Path) -> None:
    """Refuse before the work when the frames alone cannot fit under the per-file size limit
    (``ulimit -f``) or in the free space of the disk holding ``out`` (an export of a large store
    takes an hour, all of it lost at the end)."""
    need = 0
    for name, spec in store.features.items():
        length = store._per_row(name)["length"]
        frames = int(np.maximum(length, 0).sum())
        frame = int(np.prod(spec.frame_shape))
        need += frames * int(np.dtype(spec.dtype).itemsize) * frame + 2 * 8 * frame * len(length)  # + utt_mean/m2
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and need > limit:
        raise StoreFullError(_full_message(out, errno.EFBIG).replace(
            "(the disk", f"(the export needs at least {format_size(need)}, over `ulimit -f` of {format_size(limit)}; the disk",
            1))
    try:
        stat = os.statvfs(out.resolve().parent)  # (a link's target's disk)
    except OSError:
        return
    free = stat.f_bavail * stat.f_frsize
    if stat.f_blocks and need > free:  # (no blocks: /proc and kin, which refuse the file itself)
        raise StoreFullError(_full_message(out, errno.ENOSPC).replace(
            "(the disk", f"(the export needs at least {format_size(need)}, {format_size(free)} are free; the disk",
            1))


class _OutFile(io.FileIO):
    """The export's temp file, as HDF5 writes it: a full disk, quota or ``ulimit -f`` is recorded in
    ``failed`` and the bytes dropped, never reported to libhdf5, which does not survive a failed
    write cleanly (it crashed or aborted after the temp file was removed). The caller checks
    ``failed`` after closing, and the file is thrown away."""

    failed: int | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while self.failed is None and done < len(view):
            try:
                done += super().write(view[done:]) or 0
            except OSError as error:
                if error.errno not in _FULL:
                    raise
                self.failed = error.errno
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        if self.failed is None:
            try:
                return super().truncate(size)
            except OSError as error:
                if error.errno not in _FULL:
                    raise
                self.failed = error.errno
        return self.tell() if size is None else size


@contextmanager
def _hdf5_file(tmp: Path, out: Path) -> Iterator[h5py.File]:
    """``h5py.File`` writing ``tmp`` through :class:`_OutFile`, closed for sure on any error.

    Raises:
        StoreFullError: the disk, quota or per-file size limit filled up (one line: what to do).
    """
    handle = _OutFile(tmp, "w+b")
    try:
        h5 = h5py.File(handle, "w")
        try:
            yield h5
        finally:
            h5.close()
    except Exception as error:
        if handle.failed is None:
            raise
        raise StoreFullError(_full_message(out, handle.failed)) from error  # e.g. a read of a dropped write
    finally:
        handle.close()
    if handle.failed is not None:
        raise StoreFullError(_full_message(out, handle.failed))


def export_hdf5(store_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
                allow_incomplete: bool = False, storage_options: Mapping[str, Any] | None = None,
                progress: bool = False) -> Path:
    """Copy a store to HDF5, one utterance at a time; written to a temp name, then renamed.

    Layout (README, "HDF5 export"): ``utterances/<column>``, ``failures/<column>``, and per feature
    ``features/<name>/{data, offset, length, crc32, utt_mean, utt_m2, speaker_name,
    speaker_count, speaker_mean, speaker_m2}`` with attributes ``frame_rate``, ``dim``, ``layers``
    (-1: no layer axis) and ``spec`` (the FeatureSpec as JSON). ``data`` holds the frames of written
    utterances back to back (``offset`` and ``length`` -1 where not written); root attribute
    ``w2v2ser`` holds the store's root attributes as JSON.

    Args:
        store_path: store directory or object-store URL.
        out_path: local HDF5 file to create (replaced if it exists).
        allow_incomplete: export a store whose extraction has not finished.
        storage_options: fsspec options of a store URL (see :func:`locate_store`).
        progress: show a progress bar per feature (a wav2vec2-base store of RAVDESS is about 10 GB).

    Returns:
        The path of the written file.

    Raises:
        StoreError: the store cannot be read or is incomplete, ``out_path`` is a URL or lies inside a store,
            or the file cannot be written (``StoreFullError``: the disk or a size limit filled up).
        ConfigError: ``out_path`` is a symbolic link that loops or leads into a folder that does not
            exist, or is not a regular file (a device, FIFO or socket).
    """
    if is_store_url(out_path):  # Path() would turn s3://b/x.h5 into the local file s3:/b/x.h5
        raise StoreError(f"`store export` writes a local HDF5 file; got the URL {out_path}. Export to a local "
                         f"path, then copy the file (e.g. with `aws s3 cp`).")
    store = open_store(store_path, allow_incomplete=allow_incomplete, storage_options=storage_options)
    # Where a link leads, checked before link_target's check of its folder: a link into a missing folder of
    # a store was told to create that folder, then refused as inside the store.
    target = Path(os.path.realpath(out_path))
    inside = enclosing_store(target)
    if inside is not None:
        shown = f"{out_path} (a link to {target})" if Path(out_path).is_symlink() else f"{out_path}"
        raise StoreError(f"cannot export to {shown}: it is inside the store {inside}, which `store export` "
                         f"does not write (a file there is not part of the store, and an extraction or upgrade "
                         f"of it would not expect it). Choose a path outside {inside}.")
    out = link_target(out_path)  # a link: the file it points to is replaced (README)
    if out.parent.is_dir():  # else replacing makes it (or says why it cannot)
        _check_room(store, out)
    with replacing(out) as tmp, _hdf5_file(tmp, out) as h5:
        h5.attrs["w2v2ser"] = json.dumps(store.attrs, sort_keys=True)
        h5.attrs["exported_from"] = str(store.path)
        ut = h5.create_group("utterances")
        for col in UTTERANCE_COLUMNS:  # through the reader: a missing chunk raises, never exports ''
            values = store._read(f"utterances/{col}")
            if col in ("duration", "num_samples"):
                ut.create_dataset(col, data=values)
            else:
                _write_strings(ut, col, to_str_list(values))
        fl = h5.create_group("failures")
        for col in FAILURE_COLUMNS:
            _write_strings(fl, col, to_str_list(store._read(f"failures/{col}")))
        for name, spec in store.features.items():
            _export_feature(store, h5.create_group(f"features/{name}"), name, spec, progress=progress)
    return out


def _export_feature(store: FeatureStore, fg: h5py.Group, name: str, spec: FeatureSpec, *,
                    progress: bool) -> None:
    rows = store._per_row(name)
    src = store._array(name, "data")
    # What a reader of the file needs to use this feature, beside it (the root attribute has it too).
    fg.attrs.update(frame_rate=float(spec.frame_rate), dim=int(spec.dim), layers=-1 if spec.layers is None else
                    int(spec.layers), spec=json.dumps(spec.to_dict(), sort_keys=True, default=str))
    length = rows["length"]
    n = len(length)
    new_off = np.full(n, -1, dtype=np.int64)
    total = 0
    for i in range(n):
        if length[i] >= 0:
            new_off[i] = total
            total += int(length[i])
    shape = (total, *spec.frame_shape)
    chunks = None
    if total:
        chunks = (min(int(src.chunks[0]), total), *src.chunks[1:])
    data = fg.create_dataset("data", shape=shape, dtype=spec.dtype, chunks=chunks)
    data.attrs["chunk_frames"] = int(src.chunks[0])
    written = [i for i in range(n) if length[i] > 0]
    bar = progress_bar(desc=f"export {name}", unit="utt", total=len(written)) if progress else None
    frame_bytes = np.dtype(spec.dtype).itemsize * int(np.prod(spec.frame_shape))
    k = 0
    while k < len(written):
        # Neighbouring rows in one read_batch (their frames lie together in the file): one read per
        # utterance took 4 ms each, 2 minutes for 30,000 short utterances. At most EXPORT_BLOCK_BYTES
        # of frames (or one utterance) in memory at a time.
        j, size = k, 0
        while j < len(written) and (j == k or size + int(length[written[j]]) * frame_bytes <= EXPORT_BLOCK_BYTES):
            size += int(length[written[j]]) * frame_bytes
            j += 1
        rows_read = written[k:j]
        try:
            frames = store.read_batch([store._ids[i] for i in rows_read], name)
        except StoreDamagedError:
            if len(rows_read) == 1:
                raise
            # One read spans the gaps between neighbouring rows, where frames superseded by a repair
            # may lie damaged: one utterance at a time reads only theirs (damage there names it).
            frames = [store.read_utterance(store._ids[i], name) for i in rows_read]
        start = int(new_off[rows_read[0]])
        data[start:start + sum(len(f) for f in frames)] = frames[0] if len(frames) == 1 else np.concatenate(frames)
        if bar is not None:
            bar.update(len(rows_read))
        k = j
    if bar is not None:
        bar.close()
    fg.create_dataset("offset", data=new_off)
    fg.create_dataset("length", data=length)
    fg.create_dataset("crc32", data=rows["crc32"]).attrs["checksum"] = store.row_checksum  # crc32 or crc32c
    # Read through the store's checked reads: damaged statistics raise StoreError, never get copied.
    utt = [fg.create_dataset(arr, shape=(n, *spec.frame_shape), dtype="float64") for arr in ("utt_mean", "utt_m2")]
    per_block = max(1, EXPORT_BLOCK_BYTES // (16 * int(np.prod(spec.frame_shape))))
    for lo in range(0, n, per_block):  # per-utterance statistics by row (the store keeps them by slot)
        # A block of rows at a time, its slots in one read (one read per row: 3 ms each).
        held = lo + np.flatnonzero(length[lo:lo + per_block] >= 0)
        if not len(held):
            continue
        slots, where = np.unique(rows["slot"][held], return_inverse=True)
        block = store._values(name, "stats", slots)[where]
        # Statistics other than those their commit recorded (a shard file replaced by another) are refused.
        wrong = mismatched_statistics(block, rows["stats_crc32"][held], store.row_checksum)
        # An emptied shard file reads as zeros, checksums and all: only digital silence has such statistics
        # (the rule of a store whose commits recorded no statistics checksum).
        zeros = ~block.reshape(len(held), -1).any(axis=1) & (length[held] > 0)
        zero = held[zeros & (rows["stats_crc32"][held] < 0)]
        lost = zero[~digital_silence(zero, length=length, crc32=rows["crc32"], frame_shape=spec.frame_shape,
                                     dtype=spec.dtype, checksum=store.row_checksum,
                                     frames=store._frames_reader(name))] if len(zero) else zero
        lost = np.union1d(lost, held[zeros & wrong])
        if len(lost):
            raise store._damaged(f"features/{name}/stats", f"reads as zeros for utterance(s) {store._ids[int(lost[0])]!r}"
                                 f"{f' and {len(lost) - 1} more' if len(lost) > 1 else ''}, whose frames are not all "
                                 f"zero (an emptied shard file)")
        if wrong.any():
            wrong = held[wrong]
            raise store._damaged(f"features/{name}/stats", f"does not hold the statistics that the commit of "
                                 f"utterance(s) {store._ids[int(wrong[0])]!r}"
                                 f"{f' and {len(wrong) - 1} more' if len(wrong) > 1 else ''} recorded (their checksum "
                                 f"differs: a shard file replaced by another or altered)")
        mean = np.zeros((min(per_block, n - lo), *spec.frame_shape))
        m2 = np.zeros_like(mean)
        mean[held - lo], m2[held - lo] = block[:, 0], block[:, 1]
        utt[0][lo:lo + len(mean)], utt[1][lo:lo + len(mean)] = mean, m2
    names, counts = to_str_list(store._values(name, "speaker_name")), store._values(name, "speaker_count")
    for _ in store._speaker_rows(name, counts, list(range(len(names))), None, names=names):
        pass  # the speaker tables checked against their recorded CRCs first (a replaced chunk raises), kept nowhere
    for arr in ("speaker_mean", "speaker_m2"):
        a = store._array(name, arr)
        ds = fg.create_dataset(arr, shape=a.shape, dtype="float64")
        for i in range(a.shape[0]):
            ds[i] = store._values(name, arr, i)
    _write_strings(fg, "speaker_name", names)
    fg.create_dataset("speaker_count", data=counts)
