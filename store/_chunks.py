"""A direct chunk-file path for the store's ragged data arrays.

Reading or writing one utterance touches a few dozen chunks; through zarr's async
machinery each chunk costs milliseconds of fixed overhead, which dominated store reads
and writes (tests/benchmarks). For the exact layout w2v2ser itself creates (a local
directory, regular chunks, default "/" chunk keys, little-endian bytes + Blosc) this module
reads and writes the chunk files directly, in the same on-disk format zarr uses, so zarr
reads what it writes and vice versa. Any other layout returns None and callers use zarr.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from numcodecs import blosc

__all__ = ["ChunkFiles", "open_chunk_files"]

_SHUFFLE = {"noshuffle": blosc.NOSHUFFLE, "shuffle": blosc.SHUFFLE, "bitshuffle": blosc.BITSHUFFLE}


class ChunkFiles:
    """Chunk files of one zarr v3 array with a regular grid and bytes(+Blosc) codecs.

    Chunks are whole along every axis but the first (time) and, for 3-D data, one layer
    thick: ``chunks = (chunk_frames, 1, dim)`` or ``(chunk_frames, dim)``.
    """

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.folder = folder
        self.shape = tuple(meta["shape"])
        self.chunks = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        self.fill_value = meta.get("fill_value", 0)
        blosc_codec = next((c for c in meta["codecs"] if c["name"] == "blosc"), None)
        self._blosc = None
        if blosc_codec is not None:
            conf = blosc_codec["configuration"]
            self._blosc = (conf["cname"].encode(), int(conf["clevel"]), _SHUFFLE[conf["shuffle"]],
                           int(conf.get("blocksize", 0)), int(conf.get("typesize") or self.dtype.itemsize))

    def _path(self, coords: tuple[int, ...]) -> Path:
        return self.folder.joinpath("c", *map(str, coords))

    def _decode(self, raw: bytes) -> np.ndarray:
        data = blosc.decompress(raw) if self._blosc is not None else raw
        return np.frombuffer(data, dtype=self.dtype).reshape(self.chunks)

    def read(self, start: int, stop: int, layers: list[int] | None) -> np.ndarray:
        """Frames ``[start, stop)``, all layers (None) or the given ones, in the stored dtype.

        Raises:
            OSError, ValueError, RuntimeError: a chunk file is unreadable or corrupt.
        """
        step = self.chunks[0]
        three_d = len(self.shape) == 3
        picked = (layers if layers is not None else list(range(self.shape[1]))) if three_d else [None]
        frame_shape = (len(picked), self.shape[2]) if three_d else (self.shape[1],)
        out = np.empty((stop - start, *frame_shape), dtype=self.dtype.newbyteorder("="))
        for first in range(start // step * step, stop, step):
            lo, hi = max(start, first), min(stop, first + step)
            for slot, layer in enumerate(picked):
                coords = (first // step, layer, 0) if three_d else (first // step, 0)
                try:
                    raw = self._path(coords).read_bytes()
                except FileNotFoundError:  # all-fill chunks are not written
                    block = None
                else:
                    block = self._decode(raw)
                target = out[lo - start : hi - start, slot] if three_d else out[lo - start : hi - start]
                if block is None:
                    target[...] = self.fill_value
                else:
                    target[...] = block[lo - first : hi - first, 0] if three_d else block[lo - first : hi - first]
        return out

    def write_region(self, start: int, region: np.ndarray) -> None:
        """Write a chunk-aligned region (``start`` and ``len(region)`` multiples of the chunk).

        Each chunk file is written to a temporary name and renamed, so a reader never sees
        half a chunk; all-zero chunks are removed instead (zarr's write_empty_chunks=False).
        """
        step = self.chunks[0]
        three_d = len(self.shape) == 3
        region = np.ascontiguousarray(region, dtype=self.dtype)
        for first in range(0, len(region), step):
            block = region[first : first + step]
            for layer in range(self.shape[1]) if three_d else [None]:
                coords = ((start + first) // step, layer, 0) if three_d else ((start + first) // step, 0)
                chunk = np.ascontiguousarray(block[:, layer : layer + 1]) if three_d else block
                path = self._path(coords)
                if not chunk.view(np.uint8).any():  # bitwise zero: -0.0 must be kept
                    path.unlink(missing_ok=True)
                    continue
                data = chunk.tobytes()
                if self._blosc is not None:
                    cname, clevel, shuffle, blocksize, typesize = self._blosc
                    data = blosc.compress(data, cname, clevel, shuffle, blocksize, typesize=typesize)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)


def open_chunk_files(folder: Path) -> ChunkFiles | None:
    """The direct path for the array in ``folder``, or None when its layout is not the one
    w2v2ser writes (then use zarr)."""
    try:
        meta = json.loads((folder / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    try:
        codecs = [c["name"] for c in meta["codecs"]]
        ok = (
            meta.get("zarr_format") == 3
            and meta["chunk_grid"]["name"] == "regular"
            and meta["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
            and codecs in (["bytes"], ["bytes", "blosc"])
            and meta["codecs"][0].get("configuration", {}).get("endian", "little") == "little"
            and not meta.get("storage_transformers")
        )
        shape, chunks = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
        ok = ok and len(shape) in (2, 3) and list(chunks[1:]) == ([1, shape[2]] if len(shape) == 3 else [shape[1]])
    except (KeyError, TypeError, IndexError):
        return None
    return ChunkFiles(folder, meta) if ok else None
