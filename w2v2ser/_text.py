"""Wording shared by messages: short lists, names that differ only in case or in invisible
characters, sizes, paths of ``file://`` URLs, and the ``--subset`` and path arguments of the
command line. Imports only the standard library and :mod:`w2v2ser._common`.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from w2v2ser._common import first_few

__all__ = [
    "as_paths",
    "case_variants",
    "file_url_path",
    "or_list",
    "short_name",
    "spelling_key",
    "subset_text",
    "variants_differ",
    "without_invisible",
]


def as_paths(value: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Paths from one path or an iterable of them: a bare string is one path, never one per
    character (iterating "runs/a" gives "/", and a walk of the whole file system)."""
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    return [Path(v) for v in value]


def file_url_path(text: str) -> str:
    """The local path of a ``file://`` URL (``file:///data/x`` and ``file://localhost/data/x`` are
    /data/x), any other text as it is. Raises ValueError for one that names another host (it was
    taken as the relative path ``host/x``). Percent escapes (``stores%20%C3%A9``, as ``Path.as_uri()``
    and file managers write them) are decoded, unless the path exists as written."""
    if not text.startswith("file://"):
        return text
    host, slash, path = text.removeprefix("file://").partition("/")
    if host not in ("", "localhost"):
        raise ValueError(f"{text!r} names the host {host!r}, but w2v2ser reads file:// URLs on this machine "
                         f"only. Write file:///path (three slashes: no host) or the path itself; for another "
                         f"machine's folder, give the path where it is mounted here")
    local = slash + path
    if re.search("%[0-9A-Fa-f]{2}", local) and not os.path.lexists(local):
        from urllib.parse import unquote

        return unquote(local, errors="surrogateescape")
    return local


def failures_by_error(failures: Sequence[tuple[str, str]], n: int = 3) -> list[str]:
    """``NAME: ERROR``, or ``COUNT x (first few names): ERROR``, for each distinct error of the failed tasks
    ``(name, error)``, in the order first seen: the work left that was cancelled at once (no SLURM worker
    left) is one entry, not one per task."""
    names: dict[str, list[str]] = {}
    for name, error in failures:
        names.setdefault(error, []).append(name)
    return [f"{those[0]}: {error}" if len(those) == 1 else f"{len(those)} x ({first_few(those, n)}): {error}"
            for error, those in names.items()]


def spelling_key(name: str) -> str:
    """The key under which two spellings of one label or speaker meet: case-folded, and a whole
    number without its leading zeros (``007`` and ``7``: a spreadsheet drops them when it opens a CSV),
    in one Unicode form (NFC: ``é`` typed as one character or as ``e`` + accent, as macOS file names
    give it; full-width ``１`` as ``1``: they look alike but were two classes), without invisible
    characters (:func:`without_invisible`: a zero-width space pasted from a web page or a document).
    Not NFKC as a whole, which made ``x²`` and ``x2`` one spelling (see :func:`_visible`)."""
    folded = _visible(name).casefold()
    if folded.isascii() and folded.isdigit():
        return folded.lstrip("0") or "0"
    return folded


# Invisible characters that are never part of a spelling: soft hyphen, Arabic letter mark, zero-width
# space, direction marks and embeddings, word joiner, BOM. Not the zero-width non-joiner and joiner U+200C/U+200D,
# which change how the letters beside them are drawn (Persian, Indic scripts, emoji): they are seen.
_INVISIBLE = frozenset("\u00ad\u061c\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069\ufeff")


def control_character(text: str) -> str | None:
    """The first line break, tab or other control character (NUL included) of ``text``, or None.

    An utterance id holding one cannot be shown in logs or ``predictions.csv``, nor matched by
    ``--subset id=...``: the CSV reader and :meth:`StoreWriter.plan` (every library path) refuse it.
    """
    return next((c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)


def without_invisible(text: str) -> str:
    """``text`` without the invisible characters that are never part of a spelling (a zero-width
    space pasted from a web page, the BOM of files joined with ``cat``, a soft hyphen)."""
    return "".join(c for c in text if c not in _INVISIBLE)


def _visible(name: str) -> str:
    """``name`` in Unicode form NFC, full-width forms (U+FF00-U+FFEF: ``１`` as ``1``) and Latin
    ligatures (U+FB00-U+FB06: ``ﬁ`` copied from a PDF as ``fi``) as their NFKC equivalents, without
    invisible characters (:func:`without_invisible`). Other compatibility forms look otherwise
    (``x²``, ``①``): NFKC as a whole made ``x²`` and ``x2`` one spelling."""
    text = "".join(unicodedata.normalize("NFKC", c) if "\uff00" <= c <= "\uffef" or "\ufb00" <= c <= "\ufb06" else c
                   for c in unicodedata.normalize("NFC", str(name)))
    return without_invisible(unicodedata.normalize("NFC", text))


def case_variants(names: Iterable[str]) -> list[list[str]]:
    """Groups of two or more of ``names`` that differ only in case (``Spk1``, ``spk1``) or, for
    numbers, in leading zeros (``07``, ``7``), each sorted, in the order of their first spelling: one
    label or speaker written two ways (see :func:`spelling_key`)."""
    spellings: dict[str, set[str]] = {}
    for name in sorted(set(names)):
        spellings.setdefault(spelling_key(name), set()).add(name)
    return [sorted(group) for group in spellings.values() if len(group) > 1]


def variants_differ(groups: Iterable[Sequence[str]]) -> str:
    """How the spellings of :func:`case_variants`' ``groups`` differ, for "differ only in ...":
    ``case``, ``leading zeros`` or ``case or leading zeros``; ``Unicode form`` for spellings that look
    alike (see :func:`spelling_key`). A group that differs in several ways names each (``case and
    Unicode form``): naming one, the next run refused the corrected names for the other."""
    def zeros(name: str) -> str:
        return (name.lstrip("0") or "0") if name.isascii() and name.isdigit() else name

    def fold(name: str) -> str:
        return "".join(c if "\ufb00" <= c <= "\ufb06" else c.casefold() for c in name)

    kinds = set()
    for group in groups:  # a kind of difference is there when the others alone do not make the names one
        visible = {_visible(name) for name in group}
        found = ["case"] if len({zeros(name) for name in visible}) > 1 else []
        found += ["leading zeros"] if len({name.casefold() for name in visible}) > 1 else []
        # casefold alone also joins some forms ('ﬁ' and 'fi'): fold the case but keep the ligatures, and
        # names that _visible joins differ in form too
        unicode = len({zeros(fold(name)) for name in group}) > 1 or len(visible) < len(set(group))
        found += ["Unicode form (an accent as its own character, full-width or invisible characters)"] * unicode
        kinds.add(" and ".join(found))
    return " or ".join(sorted(kinds - {""})) or "case"


def or_list(items: Sequence[str]) -> str:
    """``a, b or c`` (``a`` alone; empty for none): a registry's names in a message."""
    items = list(items)
    return " or ".join(filter(None, [", ".join(items[:-1]), items[-1]])) if items else ""


def short_name(name: str, limit: int = 200) -> str:
    """``name``, or when longer than ``limit`` bytes (UTF-8) its start and a hash of the whole: for a
    name derived from a user's name (``.NEW.upgrading``, ``confusion_RUN.png``), which must stay
    under the file system's 255 bytes when the user's name itself is a valid one. Deterministic:
    the same name gives the same short one. A suffix (``.png``) is kept."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) <= limit:
        return name
    stem, dot, suffix = name.rpartition(".")
    suffix = f".{suffix}" if dot and stem and len(suffix) <= 10 else ""
    digest = hashlib.sha256(encoded).hexdigest()[:12]
    room = limit - len(suffix.encode("utf-8", "surrogateescape")) - len(digest) - 1
    head = encoded[:room].decode("utf-8", "ignore")  # not cut inside a character
    return f"{head}-{digest}{suffix}"


def format_size(n: int) -> str:
    """Bytes in MB, or in kB below 0.1 MB (a small store or a `ulimit -f 20` read "0.0 MB")."""
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def subset_condition(text: str) -> tuple[str, list[str]]:
    """An argparse type: ``--subset FIELD=VALUE[,VALUE...]`` -> (field, values); a value holding a comma is
    quoted as a CSV cell is (``speaker="Smith, J."``)."""
    import argparse
    import csv

    key, sep, values = text.partition("=")
    try:  # strict: an unclosed quote or text after a closing one is refused, not read as another value
        names = [v.strip() for v in next(csv.reader([values], skipinitialspace=True, strict=True), []) if v.strip()]
    except csv.Error as error:  # csv's own words ("new-line character seen ...") advise on reading files
        what = ("a quote is not closed" if "end of data" in str(error) else "text follows a closing quote"
                if "expected after" in str(error) else "a line break is outside quotes")
        raise argparse.ArgumentTypeError(
            f"expected FIELD=VALUE[,VALUE...], a value holding a comma or a line break, or starting with a quote, "
            f"quoted whole as a CSV cell with its own quotes doubled (speaker=\"Smith, J.\"), got {text!r}: {what}"
        ) from None
    if not sep or not key.strip() or not names:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE[,VALUE...], e.g. vocal_channel=speech, got {text!r}")
    return key.strip(), names


def path_argument(text: str) -> str:
    """An argparse type: a path that is not empty. An empty one (``--out "$OUT"`` with OUT unset)
    was the current folder: train and evaluate wrote their files into it, extract read it."""
    import argparse

    if not str(text).strip():  # (a Path in a test's argv is taken as it is)
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r} (an unset or empty shell variable?)")
    return text


def merge_subset(conditions: Iterable[tuple[str, list[str]]]) -> dict[str, list[str]]:
    """``--subset`` conditions as a subset mapping; a field given twice takes the values of both."""
    subset: dict[str, list[str]] = {}
    for key, names in conditions:
        subset.setdefault(key, []).extend(names)
    return subset


def subset_text(subset: Mapping[str, str | Iterable[object]]) -> str:
    """``method=improvised; speaker=Ses01F,Ses01M``: a subset as messages and reports name it.

    A field's value may be one string or a list of values (a config file allows both).
    """
    return "; ".join(f"{key}={value if isinstance(value, str) else ','.join(map(str, value))}"
                     for key, value in sorted(subset.items()))
