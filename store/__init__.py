"""Feature store of w2v2ser: a Zarr v3 directory holding ragged frames per feature.

Stage 1 writes it (:class:`StoreWriter`, under :func:`lock_store`); stage 2 reads it
(:func:`open_store`). Format 3 (format 2's layout with CRC-32C checksums): one Zarr v3
sharded array per feature, whose shards each belong to one work unit (utterances packed back
to back, written once, then committed); an utterance table and a failures table (also as
Parquet); row-chunked index and statistics arrays; fsynced commit journals that make writes
resumable. A store is a local directory or an object-store URL (``s3://bucket/prefix``, any
fsspec URL; :func:`locate_store`).
"""

from ._errors import (
    StoreChangedError,
    StoreDamagedError,
    StoreError,
    StoreFullError,
    StoreGoneError,
    StoreIncompleteError,
    StoreLockedError,
    StoreUnreachableError,
    StoreVersionError,
    W2v2serError,
)
from ._export import export_hdf5
from ._layout import FORMAT_VERSION
from ._location import StoreLocation, locate_store
from ._lock import lock_store
from ._reader import FeatureStore, open_store
from ._repair import repair_store
from ._stats import combine_statistics
from ._types import (
    AUDIO_RATE_KEY,
    Failure,
    FeatureSpec,
    FeatureStatistics,
    Utterance,
    UtteranceRecord,
    VerifyReport,
)
from ._upgrade import upgrade_store
from ._writer import StoreWriter, UnitWriter, WorkUnit

__all__ = [
    "FORMAT_VERSION",
    "AUDIO_RATE_KEY",
    "W2v2serError",
    "StoreError",
    "StoreIncompleteError",
    "StoreDamagedError",
    "StoreVersionError",
    "StoreLockedError",
    "StoreFullError",
    "StoreUnreachableError",
    "StoreChangedError",
    "StoreGoneError",
    "Utterance",
    "UtteranceRecord",
    "FeatureSpec",
    "FeatureStatistics",
    "Failure",
    "VerifyReport",
    "StoreWriter",
    "WorkUnit",
    "UnitWriter",
    "lock_store",
    "StoreLocation",
    "locate_store",
    "open_store",
    "FeatureStore",
    "combine_statistics",
    "export_hdf5",
    "upgrade_store",
    "repair_store",
]
