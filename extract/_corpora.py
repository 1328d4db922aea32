"""One entry point for every supported corpus layout."""

from __future__ import annotations

import os
from enum import Enum
from typing import Callable

from w2v2ser._common import did_you_mean

from ._errors import ManifestError
from ._iemocap import read_iemocap
from ._manifest import Manifest, read_csv_manifest
from ._ravdess import read_ravdess

__all__ = ["CORPUS_READERS", "CorpusKind", "read_corpus"]


class CorpusKind(str, Enum):
    """Corpus layouts :func:`read_corpus` understands (values match pipeline.yaml ``corpus.kind``)."""

    RAVDESS = "ravdess"
    IEMOCAP = "iemocap"
    CSV = "csv"


#: Reader per corpus kind: ``path -> Manifest``.
CORPUS_READERS: dict[CorpusKind, Callable[[str | os.PathLike[str]], Manifest]] = {
    CorpusKind.RAVDESS: read_ravdess,
    CorpusKind.IEMOCAP: read_iemocap,
    CorpusKind.CSV: read_csv_manifest,
}


def read_corpus(kind: str | CorpusKind, path: str | os.PathLike[str]) -> Manifest:
    """Read a corpus of the given kind.

    Args:
        kind: ``"ravdess"`` (folder), ``"iemocap"`` (folder) or ``"csv"`` (manifest file).
        path: The corpus folder or the CSV manifest.

    Returns:
        The corpus :class:`Manifest`.

    Raises:
        ManifestError: Unknown kind, or the reader's own errors.
    """
    choices = [k.value for k in CorpusKind]
    try:
        corpus = CorpusKind(kind.lower() if isinstance(kind, str) else kind)
    except ValueError:
        raise ManifestError(
            f"Unknown corpus kind {kind!r}; expected one of {', '.join(choices)}."
            f"{did_you_mean(str(kind).lower(), choices)} "
            "Use 'csv' with a path,label,speaker manifest for any other corpus."
        ) from None
    return CORPUS_READERS[corpus](path)
