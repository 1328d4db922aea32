"""upgrade_store: convert a format-1 store (a chunk file per 128 frames x layer) to format 2."""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from w2v2ser._common import publish_directory

from ._errors import StoreError
from ._layout import ATTRS_KEY, FORMAT_VERSION, UTTERANCE_COLUMNS, read_meta, specs_from_meta, to_str_list
from ._location import is_store_url, local_zarr_store
from ._lock import lock_store
from ._types import Utterance
from ._writer import StoreWriter

__all__ = ["upgrade_store"]

UNIT_UTTERANCES = 64  # utterances per work unit of the converted store


def _open_v1(path: Path) -> tuple[zarr.Group, dict[str, Any]]:
    _, meta = read_meta(path)
    version = meta.get("format_version")
    if version != 1:
        raise StoreError(
            f"store {path} has format_version {version!r}; `store upgrade` converts format 1 stores "
            f"into format {FORMAT_VERSION}. A store of format 2 or later needs no upgrade."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zarr.open_group(store=local_zarr_store(path, read_only=True), mode="r"), meta


def upgrade_store(old_path: str | os.PathLike[str], new_path: str | os.PathLike[str], *,
                  progress: bool = False) -> Path:
    """Convert a format-1 store into a new format-2 store; the old store is only read.

    Every finalized utterance is copied after checking its frames against the old crc32;
    planned-but-unwritten utterances stay pending (rerun the extraction on the new store to
    finish them); failures are kept. Per-speaker statistics are recomposed.

    Args:
        old_path: the format-1 store directory.
        new_path: where to create the format-2 store (must not exist or be empty). It is written
            beside it as ``.NAME.upgrading`` and moved into place when finished.
        progress: show a progress bar.

    Returns:
        The new store's path.

    Raises:
        StoreError: `old_path` is not a format-1 store, `new_path` is not empty, or an old
            utterance's frames do not match their crc32 (the old store is damaged).
    """
    for given, role in ((old_path, "format-1 store"), (new_path, "new store")):
        if is_store_url(given):  # Path() would turn s3://b/x into the local folder s3:/b/x
            raise StoreError(f"`store upgrade` works on local directories; the {role} {given} is a URL. Copy the "
                             f"old store to a local disk, upgrade it there, then copy the new store to object "
                             f"storage (e.g. with `aws s3 sync`).")
    old, new = Path(old_path), Path(new_path).resolve()  # resolved: `upgrade OLD .` has a name to write beside
    group, meta = _open_v1(old)
    if new.exists() and any(p.name != ".lock" for p in new.iterdir()):
        raise StoreError(f"cannot upgrade into {new}: the directory is not empty. Choose a new path.")
    # Written beside NEW and moved into place when finished: a killed upgrade leaves NEW as it was,
    # and the same command starts over (removing what the killed one left, under NEW's lock, which
    # refuses a second upgrade into NEW while one runs).
    final, new = new, new.with_name(f".{new.name}.upgrading")
    specs = list(specs_from_meta(meta).values())
    cols = {c: group[f"utterances/{c}"][:] for c in UTTERANCE_COLUMNS}
    strs = {c: to_str_list(v) for c, v in cols.items() if c not in ("duration", "num_samples")}
    n = len(strs["id"])
    utterances = [Utterance(id=strs["id"][i], path=strs["path"][i], speaker=strs["speaker"][i],
                            label=strs["label"][i], session=strs["session"][i], split=strs["split"][i],
                            gender=strs["gender"][i], corpus=strs["corpus"][i],
                            extra=json.loads(strs["extra"][i] or "{}")) for i in range(n)]
    num_samples = [int(v) if v >= 0 else None for v in cols["num_samples"]]
    index = {s.name: {k: group[f"features/{s.name}/{k}"][:] for k in ("offset", "capacity", "length", "crc32")}
             for s in specs}
    fail_cols = {c: to_str_list(group[f"failures/{c}"][:]) for c in ("id", "feature", "reason")}
    row_of = {uid: i for i, uid in enumerate(strs["id"])}
    row_failures = {row_of[u]: r for u, f, r in zip(fail_cols["id"], fail_cols["feature"], fail_cols["reason"])
                    if not f and u in row_of}
    with lock_store(final):
        if new.exists():
            shutil.rmtree(new)
        writer = StoreWriter(new, chunk_frames={s.name: int(group[f"features/{s.name}/data"].chunks[0]) for s in specs})
        capacities = {s.name: [max(int(index[s.name]["capacity"][i]), int(index[s.name]["length"][i]), 0)
                               for i in range(n)] for s in specs}
        rows = writer.plan(utterances, num_samples=num_samples, features=specs, capacities=capacities,
                           failures=row_failures)
        if rows != list(range(n)):
            raise StoreError(f"cannot upgrade into {new}: it already holds other utterances. Choose a new path.")
        for uid, feature, reason in zip(fail_cols["id"], fail_cols["feature"], fail_cols["reason"]):
            if feature and uid in row_of:
                writer.record_failure(row_of[uid], reason=reason, feature=feature)
        names = [s.name for s in specs]
        done = [i for i in range(n) if any(index[f]["length"][i] >= 0 for f in names)]
        groups = [done[k:k + UNIT_UTTERANCES] for k in range(0, len(done), UNIT_UTTERANCES)]
        units = writer.plan_units(groups, names)
        data = {f: group[f"features/{f}/data"] for f in names}
        bar = None
        if progress:
            from w2v2ser._common import progress_bar

            bar = progress_bar(desc="upgrade", unit="utt", total=len(done))
        for unit in units:
            with writer.open_unit(unit) as unit_writer:
                for row in unit.rows:
                    frames = {}
                    for f in names:
                        off, length = int(index[f]["offset"][row]), int(index[f]["length"][row])
                        if length < 0:
                            continue
                        x = np.asarray(data[f][off:off + length])
                        if zlib.crc32(np.ascontiguousarray(x).tobytes()) != int(index[f]["crc32"][row]):
                            raise StoreError(
                                f"store {old} is damaged: frames of utterance {strs['id'][row]!r}, feature "
                                f"{f!r} do not match their crc32. Run `w2v2ser store verify {old}`; re-extract "
                                f"that utterance (or the store) before upgrading."
                            )
                        frames[f] = x
                    unit_writer.add(row, frames, audio_sha256=strs["audio_sha256"][row],
                                    duration=float(cols["duration"][row]))
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        writer.finalize()
        new_meta = dict(writer._group.attrs[ATTRS_KEY])
        new_meta["upgraded_from"] = {k: meta.get(k) for k in ("format_version", "tool_version", "created")}
        new_meta["upgraded_from"]["path"] = str(old)
        writer._group.attrs[ATTRS_KEY] = new_meta
        writer.close()
        if any(p.name != ".lock" for p in final.iterdir()):
            raise StoreError(f"cannot upgrade into {final}: something was written there while the upgrade ran. "
                             f"The upgraded store is left in {new}; move it where you want it.")
        return publish_directory(new, final)
