"""One entry point for every supported corpus layout."""

from __future__ import annotations

import dataclasses
import os
from enum import Enum
from typing import Callable

from w2v2ser._common import did_you_mean

from ._errors import ManifestError
from ._iemocap import read_iemocap
from ._manifest import Manifest, read_csv_manifest
from ._ravdess import read_ravdess

__all__ = ["CORPUS_READERS", "CorpusKind", "read_corpus"]


#: Reader per corpus kind (the name pipeline.yaml's ``corpus.kind`` and ``w2v2ser extract`` take):
#: ``path -> Manifest``. Registering a reader here is all a new corpus kind needs.
CORPUS_READERS: dict[str, Callable[[str | os.PathLike[str]], Manifest]] = {
    "ravdess": read_ravdess,
    "iemocap": read_iemocap,
    "csv": read_csv_manifest,
}

#: The corpus kinds registered when this module loaded, as an enum (``CorpusKind.RAVDESS``; values
#: match pipeline.yaml ``corpus.kind``); :func:`read_corpus` takes a member or the name.
CorpusKind = Enum("CorpusKind", [(name.upper(), name) for name in CORPUS_READERS], type=str,  # type: ignore[misc]
                  module=__name__)
CorpusKind.__doc__ = "Corpus layouts :func:`read_corpus` understands (values match pipeline.yaml ``corpus.kind``)."


def read_corpus(kind: str | CorpusKind, path: str | os.PathLike[str]) -> Manifest:
    """Read a corpus of the given kind.

    Args:
        kind: A name of :data:`CORPUS_READERS` (or a :class:`CorpusKind`): ``"ravdess"`` (folder),
            ``"iemocap"`` (folder), ``"csv"`` (manifest file) or a reader registered there.
        path: The corpus folder or the CSV manifest.

    Returns:
        The corpus :class:`Manifest`.

    Raises:
        ManifestError: Unknown kind, or the reader's own errors.
    """
    name = kind.value if isinstance(kind, Enum) else kind
    choices = list(CORPUS_READERS)
    reader = (CORPUS_READERS.get(name) or CORPUS_READERS.get(name.lower())) if isinstance(name, str) else None
    if reader is None:
        raise ManifestError(
            f"Unknown corpus kind {kind!r}; expected one of {', '.join(choices)}."
            f"{did_you_mean(str(kind).lower(), choices)} "
            "Use 'csv' with a path,label,speaker manifest for any other corpus."
        )
    return _utf8_paths_only(reader(path))


def _printable(path: str) -> str:
    """A path that is not valid UTF-8 (held with surrogate escapes), with its odd bytes as ``\\xff``."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _utf8_paths_only(manifest: Manifest) -> Manifest:
    """Move utterances whose path is not valid UTF-8 (a Latin-1 name on an old disk) to the problems:
    the store records paths as UTF-8 text, and libsndfile opens only UTF-8 names.

    Raises:
        ManifestError: No utterance is left (the corpus folder's own name is such a name).
    """
    bad = []
    for utterance in manifest.utterances:
        try:
            utterance.path.encode("utf-8")
        except UnicodeEncodeError:
            bad.append(utterance)
    if not bad:
        return manifest
    reason = ("its name is not valid UTF-8 (the bytes shown as \\x..); rename it, e.g. `convmv -f latin1 -t utf8 "
              "-r --notest FOLDER`, then rerun")
    problems = [(_printable(p), _printable(r)) for p, r in manifest.problems]
    problems += [(_printable(u.path), reason) for u in bad]
    bad_ids = {id(u) for u in bad}
    kept = [u for u in manifest.utterances if id(u) not in bad_ids]
    if not kept:
        raise ManifestError(f"The corpus at {_printable(manifest.source)}: no audio file path is valid UTF-8 (e.g. "
                            f"{problems[-1][0]}); the store records paths as UTF-8 text. Rename the folder (e.g. "
                            f"`convmv -f latin1 -t utf8 -r --notest FOLDER`), then rerun.")
    return dataclasses.replace(manifest, utterances=kept, problems=problems)
