"""upgrade_store: convert a format-1 store (a chunk file per 128 frames x layer) to format 2."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import shutil
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr

from w2v2ser._files import publish_directory
from w2v2ser._text import short_name

from ._errors import StoreError, StoreFullError
from ._layout import (ATTRS_KEY, FAILURE_COLUMNS, FORMAT_VERSION, UTTERANCE_COLUMNS, enclosing_store, quiet_zarr,
                      missing_chunk_keys, read_meta, specs_from_meta, to_str_list)
from ._location import is_store_url, local_zarr_store
from ._lock import lock_store
from ._types import Utterance
from ._writer import StoreWriter

__all__ = ["upgrade_store"]

UNIT_UTTERANCES = 64  # utterances per work unit of the converted store


class _FramesLost(StoreError):
    """Old frames that fail their crc32 (without skip_damaged): the partial new store is removed."""


def _open_v1(path: Path) -> tuple[zarr.Group, dict[str, Any]]:
    _, meta = read_meta(path)
    version = meta.get("format_version")
    if version != 1:
        raise StoreError(
            f"store {path} has format_version {version!r}; `store upgrade` converts format 1 stores "
            f"into format {FORMAT_VERSION}. A store of format 2 or later needs no upgrade."
        )
    with quiet_zarr():
        return zarr.open_group(store=local_zarr_store(path, read_only=True), mode="r"), meta


def _read_v1(group: zarr.Group, old: Path, key: str) -> np.ndarray:
    """All of a format-1 table or index array; an unreadable chunk is one StoreError naming it.

    Format-1 tables carry no checksum: a flipped byte that zstd notices raises here, one it does
    not notice (and a deleted chunk, read as the fill value) is left to :func:`_check_v1_tables`.
    """
    try:
        return group[key][:]
    except Exception as error:  # zstd "Data corruption detected", a truncated chunk, bad metadata
        raise StoreError(
            f"store {old} is damaged: its array {key} cannot be read ({type(error).__name__}: {error}). "
            f"Format-1 tables carry no checksum, so it cannot be repaired here: extract the corpus "
            f"again into a new store with this w2v2ser."
        ) from None


def _check_v1_tables(old: Path, group: zarr.Group, meta: dict[str, Any],
                     strs: dict[str, list[str]], index: dict[str, dict[str, np.ndarray]],
                     fail_cols: dict[str, list[str]], specs: list[Any], read: Any) -> None:
    """Refuse a format-1 store whose tables, index or failures lost a chunk or disagree.

    Format-1 arrays were written with ``write_empty_chunks=False``: a chunk holding only the fill
    value was never stored, so a missing chunk file is damage only where its rows must hold
    something else. The new store gets fresh checksums over what is read here, so damage missed
    here would from then on be called intact.
    """
    n = len(strs["id"])
    names = [s.name for s in specs]
    failed_pairs = {(u, f) for u, f in zip(fail_cols["id"], fail_cols["feature"])}
    failed_rows = set(fail_cols["id"])
    status = strs["status"]
    committed = np.zeros(n, bool)  # some feature of the row has frames recorded
    for f in names:
        committed |= index[f]["length"] >= 0
    speaker_names = {f: to_str_list(read(f"features/{f}/speaker_name")) for f in names}
    # An utterance without a speaker is refused by the manifest readers, but the API allowed one;
    # its finalize then listed the speaker "" (in the first chunk of speaker_name, sorted first).
    no_speaker_ok = any("" in v for f, v in speaker_names.items()
                        if not missing_chunk_keys(group[f"features/{f}/speaker_name"]))

    def damaged(why: str) -> StoreError:
        return StoreError(
            f"store {old} is damaged: {why}. Format-1 tables carry no checksum, so the new store would "
            f"carry fresh checksums over wrong values; nothing was written. Restore the old store from a "
            f"backup, or extract the corpus again into a new store with this w2v2ser."
        )

    def must_hold(array: str, rows: range) -> bool:
        """Whether the chunk of `array` over `rows` cannot have been all fill value."""
        col = array.rsplit("/", 1)[1]
        if array.startswith("failures/"):
            return col != "feature"  # "" for a whole-utterance failure; ids, paths and reasons are text
        if array.startswith("utterances/"):
            if col in ("id", "path", "label") or (col == "speaker" and not no_speaker_ok):
                return True
            if col == "status":  # fill "pending": only an incomplete store may lack a chunk of it
                return bool(meta.get("complete")) or any(strs["id"][r] in failed_rows or committed[r] for r in rows)
            if col in ("duration", "audio_sha256", "num_samples"):  # written with every commit
                return bool(committed[rows.start:rows.stop].any())
            return False  # session/split/gender/corpus may be all empty, extra all "{}"
        f = array.split("/")[1]
        if col == "speaker_name":
            return not no_speaker_ok
        length = index[f]["length"][rows.start:rows.stop]
        if col == "length":  # fill -1: a done utterance has frames of every feature that did not fail
            return any(status[r] == "done" and (strs["id"][r], f) not in failed_pairs for r in rows)
        if col == "offset":  # fill -1
            return bool((length >= 0).any())
        return bool((length > 0).any())  # capacity, crc32: fill 0

    arrays = [f"utterances/{c}" for c in UTTERANCE_COLUMNS] + [f"failures/{c}" for c in FAILURE_COLUMNS]
    arrays += [f"features/{f}/{k}" for f in names for k in ("offset", "capacity", "length", "crc32", "speaker_name")]
    for array in arrays:
        chunk = int(group[array].chunks[0])
        for key in missing_chunk_keys(group[array]):
            i = int(key.rsplit("/c/", 1)[1].split("/")[0])
            if must_hold(array, range(i * chunk, min((i + 1) * chunk, n))):
                raise damaged(f"its array {array} lacks chunk c/{i} (file {old / key}), which must hold "
                              f"values; zarr would read it as the fill value")
    # Cross-checks that catch a chunk rewritten with other values (or lost where fill was legal).
    for r in range(n):
        if status[r] not in ("done", "failed", "pending"):
            raise damaged(f"utterance row {r} has status {status[r]!r} in utterances/status")
        if status[r] == "done" or committed[r]:
            for col in ("id", "speaker", "label"):
                if not strs[col][r] and not (col == "speaker" and no_speaker_ok):
                    raise damaged(f"utterance row {r} (id {strs['id'][r]!r}) has frames but an empty "
                                      f"{col} in utterances/{col}")
        if status[r] == "done":
            for f in names:
                if (strs["id"][r], f) not in failed_pairs and index[f]["length"][r] < 0:
                    raise damaged(f"utterance {strs['id'][r]!r} is done in utterances/status but "
                                      f"features/{f}/length records no frames for it")
        try:
            json.loads(strs["extra"][r] or "{}")
        except ValueError:
            raise damaged(f"utterances/extra of utterance {strs['id'][r]!r} is not JSON") from None
    for f, spec in zip(names, specs):
        length, offset = index[f]["length"], index[f]["offset"]
        total = int(group[f"features/{f}/data"].shape[0])
        bad = np.flatnonzero((length >= 0) & ((offset < 0) | (offset + length > total)))
        if len(bad):
            r = int(bad[0])
            raise damaged(f"features/{f}/offset and length of utterance {strs['id'][r]!r} "
                              f"({int(offset[r])}, {int(length[r])}) lie outside features/{f}/data "
                              f"({total} frames)")
        # The per-speaker frame counts that the new store will recompose must be the old ones.
        # (Speakers without frames compare as absent: a store never finalized lists none.)
        counts: dict[str, int] = {}
        for r in range(n):
            if length[r] > 0:
                counts[strs["speaker"][r]] = counts.get(strs["speaker"][r], 0) + int(length[r])
        old_counts = {k: int(c) for k, c in zip(speaker_names[f], read(f"features/{f}/speaker_count")) if c > 0}
        if counts != old_counts:
            diff = sorted(k for k in set(counts) | set(old_counts) if counts.get(k) != old_counts.get(k))[:5]
            raise damaged(f"per-speaker frame counts of feature {f!r} from utterances/speaker and "
                              f"features/{f}/length differ from its features/{f}/speaker_name/speaker_count "
                              f"for speaker(s) {diff}: " + ", ".join(
                                  f"{k!r} {counts.get(k, 0)} vs {old_counts.get(k, 0)}" for k in diff))


# The old store's attributes that `store upgrade` records in NEW's ``upgraded_from``: who made it, and
# the state it was upgraded in (a format-1 store resumed by an older w2v2ser is finalized again).
_SOURCE_KEYS = ("format_version", "tool_version", "created", "finalized", "complete")


def _recorded_path_matches(recorded: str, old: Path) -> bool:
    """Whether NEW's recorded source path names ``old``, whatever the current folder.

    Paths are recorded resolved; an older w2v2ser recorded the path as given, relative to a
    folder it did not record, so such a record matches an ``old`` whose resolved path ends with it
    (the source's attributes are compared too, see :func:`_upgrade_of`).
    """
    target, path = old.resolve(), Path(os.path.normpath(recorded))
    if path.is_absolute():  # an older record holds the path as given: maybe through a symlink (/scratch)
        try:
            return path == target or path.resolve() == target
        except (OSError, RuntimeError):
            return False
    given = Path(os.path.abspath(old)).parts  # the tail as typed, before symlinks are followed
    return ".." not in path.parts and path.parts in (target.parts[-len(path.parts):], given[-len(path.parts):])


def _upgrade_of(new: Path, old: Path, old_meta: dict[str, Any]) -> str | None:
    """How ``new`` relates to the format-1 store ``old`` (whose attributes are ``old_meta``).

    Returns:
        None: ``new`` is not a finished upgrade of ``old``. "same": it is the upgrade of ``old`` as
        ``old`` is now. Otherwise the reason why it is the upgrade of an earlier state of ``old``.
    """
    try:
        _, meta = read_meta(new)
    except Exception:  # not a store, or not a readable one: the caller's "not empty" applies
        return None
    source = meta.get("upgraded_from")
    if not meta.get("complete") or not isinstance(source, dict) or not isinstance(source.get("path"), str):
        return None
    if not _recorded_path_matches(source["path"], old):
        return None
    if any(source.get(k) != old_meta.get(k) for k in ("format_version", "tool_version", "created")):
        return None  # another store now at that path
    changed = [f"{k} {source[k]!r}, now {old_meta.get(k)!r}" for k in ("finalized", "complete")
               if k in source and source[k] != old_meta.get(k)]  # (older records lack them: cannot tell)
    return "; ".join(changed) if changed else "same"


@contextlib.contextmanager
def _nothing_left_on_a_full_disk(new: Path, old: Path, final: Path) -> Iterator[None]:
    """A full disk or file-size limit anywhere in the upgrade (creating, writing or finalizing ``new``)
    removes ``new``, which holds the space it took, and says what to do (not the writer's message,
    which speaks of extraction resuming)."""
    try:
        yield
    except StoreFullError as error:
        shutil.rmtree(new, ignore_errors=True)
        raise StoreFullError(f"{str(error).split(': free disk space', 1)[0]}: free disk space or raise the "
                             f"limit (or write NEW to a larger disk), then rerun the same command; the old "
                             f"store {old} is unchanged and nothing of {final} was written.") from error


def upgrade_store(old_path: str | os.PathLike[str], new_path: str | os.PathLike[str], *,
                  progress: bool = False, allow_incomplete: bool = False, skip_damaged: bool = False) -> Path:
    """Convert a format-1 store into a new store of the current format; the old store is only read.

    The old tables, index and failures (which carry no checksum) are checked first: a chunk
    file missing where rows must hold values, or values that disagree (a done utterance without
    frames, per-speaker frame counts other than the old ones), refuses the upgrade before anything
    is written. Every finalized utterance is then copied after checking its frames against the
    old crc32; planned-but-unwritten utterances stay pending (rerun the extraction on the new
    store to finish them); failures are kept. Per-speaker statistics are recomposed.

    Args:
        old_path: the format-1 store directory.
        new_path: where to create the format-2 store (must not exist or be empty). It is written
            beside it as ``.NAME.upgrading`` and moved into place when finished.
        progress: show a progress bar.
        allow_incomplete: upgrade a store whose extraction never finished (root attribute
            ``complete`` false), keeping only what its last finalize recorded; refused otherwise,
            since the utterances its journal committed after that finalize would be lost.
        skip_damaged: an utterance whose old frames do not match their crc32 is not copied but
            left pending in the new store (listed in its ``upgraded_from["damaged"]``), so that
            the next ``w2v2ser extract`` into the new store extracts it again; refused otherwise.

    Returns:
        The new store's path.

    Raises:
        StoreError: `old_path` is not a format-1 store or is incomplete, `new_path` is not empty
            (and not already the upgrade of `old_path` as it is now, which is returned as it is) or
            lies inside `old_path`, an old table, index or failure array is damaged, or an old
            utterance's frames do not match their crc32 (without `skip_damaged`).
    """
    for given, role in ((old_path, "old store"), (new_path, "new store")):
        if is_store_url(given):  # Path() would turn s3://b/x into the local folder s3:/b/x
            raise StoreError(f"`store upgrade` works on local directories; the {role} {given} is a URL. Copy the "
                             f"old store to a local disk, upgrade it there, then copy the new store to object "
                             f"storage (e.g. `aws s3 sync NEW s3://bucket/x.zarr --exclude .lock --exclude .plan.lock`).")
    old, new = Path(old_path), Path(new_path).resolve()  # resolved: `upgrade OLD .` has a name to write beside
    group, meta = _open_v1(old)
    # The old store is only read, NEW inside it would alter it; inside another store, its tools would not expect it.
    inside = old.resolve() if new == old.resolve() else enclosing_store(new, itself=False)
    if inside is not None:
        where = ("is the old store, which `store upgrade` only reads" if new == inside else
                 f"is inside the old store {old}, which `store upgrade` only reads" if inside == old.resolve() else
                 f"is inside the feature store {inside}, whose own tools would not expect it there")
        raise StoreError(f"cannot upgrade into {new}: it {where}. Choose a new path outside {inside}.")
    if new.exists() and any(p.name != ".lock" for p in new.iterdir()):
        state = _upgrade_of(new, old, meta)
        if state == "same":  # the same command again, e.g. after a kill between the move and its summary
            return new
        if state is not None:
            raise StoreError(f"cannot upgrade into {new}: it holds the upgrade of {old} as it was then, and {old} "
                             f"changed since ({state}). Remove {new} (or choose another new path), then rerun "
                             f"to upgrade {old} as it is now.")
        raise StoreError(f"cannot upgrade into {new}: the directory is not empty. Choose a new path.")
    if not meta.get("complete", False) and not allow_incomplete:
        raise StoreError(
            f"store {old} is incomplete (root attribute {ATTRS_KEY}.complete is false): its extraction never "
            f"finished, and utterances it extracted after its last finalize are only in its journal, which "
            f"`store upgrade` does not read. Finish it first with the w2v2ser that wrote it "
            f"(version {meta.get('tool_version', '?')}: rerun the same `w2v2ser extract` command), then "
            f"upgrade; or extract the corpus again into a new store with this w2v2ser; or pass "
            f"--allow-incomplete (allow_incomplete=True) to upgrade only what its last finalize recorded, "
            f"the rest staying pending for `w2v2ser extract` into the new store."
        )
    # Written beside NEW and moved into place when finished: a killed upgrade leaves NEW as it was,
    # and the same command starts over (removing what the killed one left, under NEW's lock, which
    # refuses a second upgrade into NEW while one runs).
    final, new = new, new.with_name(f".{short_name(new.name)}.upgrading")  # (a 250-byte NEW is a valid name)
    specs = list(specs_from_meta(meta).values())
    read = functools.partial(_read_v1, group, old)
    cols = {c: read(f"utterances/{c}") for c in UTTERANCE_COLUMNS}
    strs = {c: to_str_list(v) for c, v in cols.items() if c not in ("duration", "num_samples")}
    n = len(strs["id"])
    index = {s.name: {k: read(f"features/{s.name}/{k}") for k in ("offset", "capacity", "length", "crc32")}
             for s in specs}
    fail_cols = {c: to_str_list(read(f"failures/{c}")) for c in FAILURE_COLUMNS}
    _check_v1_tables(old, group, meta, strs, index, fail_cols, specs, read)
    utterances = [Utterance(id=strs["id"][i], path=strs["path"][i], speaker=strs["speaker"][i],
                            label=strs["label"][i], session=strs["session"][i], split=strs["split"][i],
                            gender=strs["gender"][i], corpus=strs["corpus"][i],
                            extra=json.loads(strs["extra"][i] or "{}")) for i in range(n)]
    num_samples = [int(v) if v >= 0 else None for v in cols["num_samples"]]
    row_of = {uid: i for i, uid in enumerate(strs["id"])}
    row_failures = {row_of[u]: r for u, f, r in zip(fail_cols["id"], fail_cols["feature"], fail_cols["reason"])
                    if not f and u in row_of}
    with lock_store(final), _nothing_left_on_a_full_disk(new, old, final):
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
        damaged: list[dict[str, str]] = []
        try:
            for unit in units:
                with writer.open_unit(unit) as unit_writer:
                    for row in unit.rows:
                        frames = {}
                        for f in names:
                            off, length = int(index[f]["offset"][row]), int(index[f]["length"][row])
                            if length < 0:
                                continue
                            try:
                                x = np.asarray(data[f][off:off + length])
                                intact = zlib.crc32(np.ascontiguousarray(x).tobytes()) == int(index[f]["crc32"][row])
                            except Exception:  # a chunk blosc cannot decode
                                intact = False
                            if not intact:
                                if not skip_damaged:
                                    raise _FramesLost(
                                        f"store {old} is damaged: the frames of utterance {strs['id'][row]!r}, "
                                        f"feature {f!r} (features/{f}/data rows {off}..{off + length - 1}) do not "
                                        f"match their crc32; they are lost and nothing was written. Pass "
                                        f"--skip-damaged (skip_damaged=True) to upgrade the rest and leave every "
                                        f"utterance with damaged frames pending in {final}, then rerun "
                                        f"`w2v2ser extract` for that corpus with --store {shlex.quote(str(final))} to "
                                        f"extract "
                                        f"them again; or extract the whole corpus again into a new store."
                                    )
                                damaged.append({"id": strs["id"][row], "feature": f})
                                frames = None
                                break
                            frames[f] = x
                        if frames is not None:  # skipped: no commit, so the row stays pending
                            unit_writer.add(row, frames, audio_sha256=strs["audio_sha256"][row],
                                            duration=float(cols["duration"][row]))
                        if bar is not None:
                            bar.update(1)
        except (_FramesLost, StoreFullError):
            with contextlib.suppress(Exception):  # (a full disk may fail the close too)
                writer.close()
            shutil.rmtree(new, ignore_errors=True)  # nothing half-written stays: on a full disk it is what filled it
            raise
        if bar is not None:
            bar.close()
        writer.finalize()
        new_meta = dict(writer._group.attrs[ATTRS_KEY])
        new_meta["upgraded_from"] = {k: meta.get(k) for k in _SOURCE_KEYS}
        new_meta["upgraded_from"]["path"] = str(old.resolve())  # a rerun from another folder finds it the same
        if damaged:
            new_meta["upgraded_from"]["damaged"] = damaged
        writer._group.attrs[ATTRS_KEY] = new_meta
        writer.close()
        if any(p.name != ".lock" for p in final.iterdir()):
            raise StoreError(f"cannot upgrade into {final}: something was written there while the upgrade ran. "
                             f"The upgraded store is left in {new}; move it where you want it.")
        return publish_directory(new, final)
