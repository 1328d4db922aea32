"""Exceptions raised by the feature store (and the base of every w2v2ser error)."""

from __future__ import annotations

__all__ = [
    "W2v2serError",
    "StoreError",
    "StoreIncompleteError",
    "StoreDamagedError",
    "StoreVersionError",
    "StoreLockedError",
    "StoreFullError",
    "StoreUnreachableError",
    "StoreChangedError",
]


from w2v2ser._common import EXIT_FAILED, EXIT_INPUT, W2v2serError  # the root lives with the shared helpers


class StoreError(W2v2serError):
    """The feature store is missing, malformed, inconsistent or used wrongly."""

    exit_code = EXIT_INPUT


class StoreIncompleteError(StoreError):
    """The store's extraction has not finished (root attribute ``complete`` is false)."""


class StoreDamagedError(StoreError):
    """A file of the store is damaged: a metadata file cut or unreadable, a table's or index's chunk
    file missing. Exit 2 for a command that reads the store (its input is bad), 1 for ``store
    verify``, whose answer it is: verify exits 1 for damage however early it is found."""


class StoreVersionError(StoreError):
    """The store was written by a newer w2v2ser with a format this version cannot read."""


class StoreLockedError(StoreError):
    """Another process holds the store's extraction lock."""


class StoreFullError(StoreError):
    """The disk or quota holding the store filled up while writing: the run failed part-way.

    What was committed before is kept, so the same command resumes once space is freed (the
    command line exits 1, a failed run, not 2: the input itself was fine).
    """

    exit_code = EXIT_FAILED


class StoreUnreachableError(StoreError):
    """An object store could not be reached or refused a request (endpoint down, credentials,
    permissions, no such bucket): the store itself is not known to be damaged.

    Exit 2 when nothing ran (a wrong URL, endpoint or credentials); a run that fails this way
    after it finished work (committed utterances, trained runs) sets ``exit_code`` 1 on the
    instance, as for :class:`StoreFullError`: rerunning resumes once the store is reachable.
    """


class StoreChangedError(StoreError):
    """An extraction changed the store after this reader opened it (it added, moved or re-extracted
    utterances): the reader's utterance list and index are those of the store as it was, so it
    stops instead of mixing old and new data. Open the store again (exit 1: nothing is damaged)."""

    exit_code = EXIT_FAILED


class StoreGoneError(StoreChangedError):
    """A local store was moved, renamed or deleted while a reader read it (its files read as fill
    values): nothing in it is known to be damaged; rerun with its new path (exit 1)."""
