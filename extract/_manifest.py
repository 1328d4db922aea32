"""The Manifest type returned by every corpus reader, and the generic CSV manifest reader."""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
import shlex
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from w2v2ser._common import did_you_mean
from w2v2ser._text import control_character, spelling_key, variants_differ, without_invisible
from w2v2ser.store import AUDIO_RATE_KEY, Utterance

from ._errors import ManifestError
from ._rates import CHANNELS_KEY

__all__ = ["Manifest", "read_csv_manifest"]

_REQUIRED = ("path", "label", "speaker")
_OPTIONAL = ("session", "split", "id", "gender")
_SPLITS = ("train", "validation", "test")
# Extra keys under which extraction records what each file's header says.
_RESERVED = {AUDIO_RATE_KEY: "sample rate", CHANNELS_KEY: "channel count"}
# Spellings of the splits in common corpus lists (case-insensitive) -> the stored name.
_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "validation": "validation", "val": "validation", "valid": "validation", "dev": "validation",
    "development": "validation",  # MSP-Podcast's Split_Set
    "test": "test", "eval": "test",
}
_GENDERS = {"female": "female", "f": "female", "male": "male", "m": "male",
            # "not known", as corpora such as MSP-Podcast write it: the same as an empty cell
            **dict.fromkeys(("unknown", "unk", "u", "x", "na", "n/a", "none", "?", "-"), "")}


@dataclass
class Manifest:
    """The utterances of one corpus, plus the files that could not be used.

    Attributes:
        utterances: One :class:`~w2v2ser.store.Utterance` per usable audio file (folder
            corpora: sorted by path; CSV: file order).
        problems: ``(path, reason)`` for every file that was skipped (unparsable name,
            missing audio for a labelled utterance, ...). Not fatal; report them to the user.
        corpus: ``"ravdess"``, ``"iemocap"`` or ``"csv"``.
        source: The folder or file the manifest was read from.
    """

    utterances: list[Utterance]
    problems: list[tuple[str, str]] = field(default_factory=list)
    corpus: str = ""
    source: str = ""

    def __repr__(self) -> str:
        # The default repr printed every utterance: 2,452 of them for RAVDESS, as a notebook cell's output.
        speakers = len({u.speaker for u in self.utterances})
        return (f"Manifest(corpus={self.corpus!r}, source={self.source!r}, utterances={len(self.utterances)}, "
                f"speakers={speakers}, problems={len(self.problems)})")

    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self) -> Iterator[Utterance]:
        # Lets callers written against "readers return list[Utterance]" keep working.
        return iter(self.utterances)


def _fail(path: Path, line: int | None, column: str | None, what: str, fix: str) -> ManifestError:
    where = f"{path}" + (f", line {line}" if line is not None else "") + (f", column {column!r}" if column else "")
    return ManifestError(f"{where}: {what}. {fix}")


def _check_header(path: Path, header: list[str] | None, line: int = 1) -> None:
    """Refuse a header without the required columns, with a near miss of an optional one, a
    duplicate or a reserved name. ``header``: the named columns; ``line``: the header's line."""
    if header is None:
        raise _fail(path, line, None, "the manifest is empty (no header row)",
                    "Write a header line 'path,label,speaker' followed by one row per utterance.")
    for column in _REQUIRED:
        if column not in header:
            hint = did_you_mean(column, header, cutoff=0.5) or did_you_mean(
                column, [h for h in header if h.strip().lower() == column], cutoff=0)
            raise _fail(path, line, column, f"required column {column!r} is missing (header: {header})",
                        f"Add or rename the column; required: {', '.join(_REQUIRED)}.{hint}")
    for column in _OPTIONAL:
        # 'Split' beside no 'split' was kept as an extra column: the user's split was silently not used.
        near = [h for h in header if h != column and h.strip().lower() == column]
        if near and column not in header:
            raise _fail(path, line, near[0], f"this column differs from the optional column {column!r} only in case "
                        f"or spaces, so it would not be read as {column!r}",
                        f"Rename it to {column!r}, or to another name to keep it as an extra column.")
    dupes = [c for c, n in Counter(header).items() if n > 1]
    if dupes:
        raise _fail(path, line, dupes[0], "column appears more than once in the header",
                    "Rename or drop the duplicate.")
    for key, what in _RESERVED.items():
        if key in header:
            raise _fail(path, line, key, f"this column name is reserved: extraction records each file's own "
                        f"{what} under it (read from the audio header)", "Rename or drop the column.")


def _resolve(path: Path, raw: str) -> str:
    """Absolute path of ``raw``: relative paths start at the manifest's folder (``../audio/a.wav``
    from ``manifests/train.csv`` included)."""
    given = Path(os.path.expanduser(raw))  # ~/data/a.wav, as hand-written manifests often say
    if given.is_absolute():
        return os.path.normpath(given)
    # normpath (not resolve): symlinked audio keeps the path the manifest gives.
    return os.path.normpath(os.path.join(path.parent.absolute(), raw))


def _default_ids(rows: list[dict[str, str]], base: Path) -> list[str]:
    """Path stems; where two stems collide, the path without suffix relative to the manifest's
    folder, or for files outside it, relative to the folder that holds every listed file."""
    stems = [PurePath(r["path"]).stem for r in rows]
    counts = Counter(stems)
    top = os.path.commonpath([r["_abs"] for r in rows]) if rows else ""
    ids = []
    for row, stem in zip(rows, stems):
        if counts[stem] == 1:
            ids.append(stem)
            continue
        full = Path(row["_abs"])
        try:
            rel = full.relative_to(os.path.normpath(base.absolute()))
        except ValueError:
            rel = full.relative_to(top) if top and full != Path(top) else full
        ids.append(rel.with_suffix("").as_posix())
    # x.wav beside x.flac: only the suffix tells them apart, so it stays in their ids.
    counts = Counter(ids)
    return [uid if counts[uid] == 1 or Path(row["_abs"]).suffix == "" else f"{uid}{Path(row['_abs']).suffix}"
            for uid, row in zip(ids, rows)]


def _delimiter(header: str) -> str:
    """The separator that splits the header line into the required columns (any case: a misspelt
    header is then refused by name): comma, tab (a TSV, e.g. Common Voice's lists) or semicolon
    (spreadsheets saved in locales with a decimal comma; a column name may hold a comma). A header
    without them all: comma, unless the line has no comma but tabs or semicolons."""
    for candidate in (",", "\t", ";"):
        names = {name.strip().lower() for name in next(csv.reader([header], delimiter=candidate), [])}
        if names.issuperset(_REQUIRED):
            return candidate
    if "," in header:
        return ","
    return "\t" if "\t" in header else ";" if ";" in header else ","


def _decode(path: Path, data: bytes) -> str:
    """The manifest's text: UTF-8 (a BOM is fine), or UTF-16 with its BOM (Excel's "Unicode Text").

    Raises:
        ManifestError: Another encoding (Excel's plain "CSV" in Western locales writes Windows-1252),
            naming the line of the first byte that is not UTF-8; a NUL byte (UTF-16 without its BOM).
    """
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise ManifestError(f"Manifest {path} starts like UTF-16 text but is not ({exc}). Save it as UTF-8 "
                                f"CSV.") from exc
    if b"\0" in data:  # before UTF-8: UTF-16 without its BOM, with an accent, failed as Windows-1252
        # big-endian text starts with NUL (ASCII's high byte first): utf-16le would garble it
        raise _nul_byte(path, data[:data.index(b"\0")].count(b"\n") + 1,
                        encoding="utf-16be" if data[:1] == b"\0" else "utf-16le")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ManifestError(
            f"Manifest {path} is not UTF-8 text: line {line} holds byte 0x{data[exc.start]:02x}, which UTF-8 does "
            f"not allow there (the file was likely saved as Windows-1252/Latin-1). Save it as UTF-8 CSV (Excel: "
            f"'CSV UTF-8'), or convert it, e.g. `iconv -f cp1252 -t utf-8 {shlex.quote(str(path))} > "
            f"utf8.csv`.") from exc


def _nul_byte(path: Path, line: int, *, encoding: str = "utf-16le") -> ManifestError:
    """A NUL character in a manifest: no path, id or label holds one; ``encoding`` is the UTF-16 the
    advice converts from."""
    return _fail(path, line, None, "the line holds a NUL byte (\\x00): the file is damaged, or is UTF-16 text "
                 "without its byte order mark", "Save the manifest again as UTF-8 CSV (UTF-16 without its mark: "
                 f"`iconv -f {encoding} -t utf-8 {shlex.quote(str(path))} > utf8.csv`), or delete the NUL bytes.")


_SEP_LINE = re.compile(r"sep=(.)\r?\n?\Z", re.IGNORECASE)  # Excel's first-line hint: 'sep=;'
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # as io.StringIO(newline="") splits the lines the reader counts


def read_csv_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read a CSV manifest with columns ``path,label,speaker`` (+ ``session,split,id,gender``).

    Other columns go into ``Utterance.extra``. Relative paths resolve against the CSV's
    folder; absolute paths are used as given. Audio files are not
    opened here: missing files become extraction failures later.

    Args:
        path: The CSV file (UTF-8, optional BOM; or UTF-16 with its BOM). Comma-, tab- or
            semicolon-separated: the separator that splits the header into the required columns,
            or the one an Excel ``sep=;`` first line names. Columns without a name (pandas'
            index, Excel's trailing ``;;``) and empty fields past the header's last column are ignored.

    Returns:
        The :class:`Manifest` (``corpus="csv"``).

    Raises:
        ManifestError: Unreadable file or encoding, missing required column, empty value in a
            required column, malformed row, bad split/gender, duplicate id, an id holding a
            line break, tab or other control character, an id column value holding an invisible one (U+200B...).

    A ``split`` of ``train``/``training``, ``validation``/``val``/``valid``/``dev``/``development`` or
    ``test``/``eval`` (any case) is stored as ``train``, ``validation`` or ``test``.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"Manifest {path} does not exist or is not a file. Check the path.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"Manifest {path} cannot be read ({exc}). Check its permissions.") from exc
    decoded = _decode(path, data)
    if "\0" in decoded:  # no path, id or label holds one; the store's strings would end there ('b\0' read as 'b')
        raise _nul_byte(path, decoded[:decoded.index("\0")].count("\n") + 1)
    text = io.StringIO(decoded, newline="")
    first = text.readline()
    sep_line = _SEP_LINE.match(first)
    if sep_line:  # Excel's 'sep=;' line names the separator; the header follows it
        delimiter, skipped = sep_line.group(1), 1
    else:
        delimiter, skipped = _delimiter(first), 0
        text.seek(0)
    try:
        reader = csv.DictReader(text, delimiter=delimiter)
        raw = [h.strip() for h in reader.fieldnames] if reader.fieldnames is not None else None
        header_line = 1 + skipped
        # Columns without a name are ignored: pandas' to_csv writes its index as one, and Excel
        # writes 'a;b;c;;' when cells right of the table were touched.
        unnamed = {f"\0{k}" for k, h in enumerate(raw or []) if not h}
        _check_header(path, None if raw is None else [h for h in raw if h], header_line)
        header = [h or f"\0{k}" for k, h in enumerate(raw or [])]
        reader.fieldnames = header
        rows = []
        problems: list[tuple[str, str]] = []
        named = {k: h for k, h in zip(header, raw or []) if h}
        for row in reader:
            # The line the record starts on: reader.line_num is its last one (a quoted cell may span lines).
            spans = sum(len(_LINE_BREAK.findall(v)) for v in [*row.values(), *(row.get(None) or ())]
                        if isinstance(v, str))
            line = reader.line_num + skipped - spans
            for key in unnamed:
                row.pop(key)
            # Empty fields beyond the header ('a;b;c;;') hold nothing to lose; values there do.
            beyond = row.pop(None, None) or ()
            if not any((v or "").strip() for v in [*row.values(), *beyond]):
                continue  # a blank line, or one of spaces (hand-edited files) or separators (Excel's ';;;')
            if any(v.strip() for v in beyond) or any(v is None for v in row.values()):
                raise _fail(path, line, None,
                            f"row has a different number of fields than the header ({len(header)})",
                            "Quote values that contain commas and fill every column.")
            row = {k: v.strip() for k, v in row.items()}
            if all(row[k].lstrip("\ufeff").lower() == h.lower() for k, h in named.items()):
                # The header again: two manifests joined with `cat`. It was a row whose file 'path' was missing.
                problems.append((f"{path}, line {line}", "this row repeats the header (manifests joined with "
                                 "`cat`?), so it was skipped; delete it"))
                continue
            for column in _REQUIRED:
                if not row[column]:
                    raise _fail(path, line, column, f"{column} is empty", f"Give every row a {column}.")
            row["_line"] = str(line)
            row["_abs"] = _resolve(path, row["path"])
            rows.append(row)
    except csv.Error as exc:
        raise ManifestError(f"Manifest {path} is not valid CSV ({exc}). Fix the quoting.") from exc
    if not rows:
        raise _fail(path, None, None, "the manifest has a header but no rows", "Add one row per utterance.")

    defaults = _default_ids(rows, path.parent)
    seen: dict[str, str] = {}
    paths: dict[str, str] = {}
    utterances = []
    extra_columns = [c for c in header if c not in unnamed and c not in _REQUIRED + _OPTIONAL]
    for row, default_id in zip(rows, defaults):
        line = int(row["_line"])
        uid = row.get("id") or default_id
        _check_id_characters(path, line, uid, derived=not row.get("id"))
        if uid in seen and not row.get("id") and paths[uid] == row["_abs"]:
            # Said as such, not as the clash of the ids derived from one path.
            raise _fail(path, line, "path", f"audio file {row['path']!r} is also listed on line {seen[uid]}",
                        "Remove the duplicate row, or give each row its own 'id' if the copy is meant.")
        if uid in seen:
            derived = "" if row.get("id") else " (derived from the path: the row gives no id)"
            raise _fail(path, line, "id", f"utterance id {uid!r}{derived} is also used on line {seen[uid]}",
                        "Ids must be unique: add an 'id' column with distinct values or fix the duplicate row.")
        seen[uid], paths[uid] = row["_line"], row["_abs"]
        split = row.get("split", "")
        if split and split.lower() not in _SPLIT_ALIASES:
            hint = did_you_mean(split.lower(), _SPLIT_ALIASES, cutoff=0.3, canonical=_SPLIT_ALIASES)
            raise _fail(path, line, "split", f"unknown split {split!r}",
                        f"Use one of {', '.join(_SPLITS)} (or train/training, val/valid/dev/development, test/eval), "
                        f"or leave it empty.{hint}")
        split = _SPLIT_ALIASES.get(split.lower(), "")
        gender = row.get("gender", "")
        if gender and gender.lower() not in _GENDERS:
            raise _fail(path, line, "gender", f"unknown gender {gender!r}",
                        "Use 'female', 'male' (or f/m), or leave it empty (or 'unknown').")
        utterances.append(Utterance(
            id=uid,
            path=row["_abs"],
            speaker=row["speaker"],
            label=row["label"],
            session=row.get("session", ""),
            split=split,
            gender=_GENDERS.get(gender.lower(), ""),
            corpus="csv",
            extra={c: row[c] for c in extra_columns},
        ))
    _check_label_spellings(path, rows)
    return Manifest(utterances=utterances, problems=problems, corpus="csv", source=str(path))


def _check_id_characters(path: Path, line: int, uid: str, *, derived: bool) -> None:
    """Refuse an id holding a line break, tab or other control character (a quoted cell spanning
    two lines), or a given id holding an invisible one (a zero-width space pasted from a web page): logs,
    ``predictions.csv`` and ``--subset id=...`` could not show or match it."""
    # Not an id derived from a path: a path holding one names a missing file, whose row fails alone with a hint.
    invisible = None if derived else next((c for c in uid if not without_invisible(c)), None)
    if invisible is not None:
        raise _fail(path, line, "id", f"utterance id {uid!r} holds the invisible character U+{ord(invisible):04X} "
                    f"({unicodedata.name(invisible, 'format character')})",
                    "Delete it from the id (`--subset id=...` could not match it).")
    bad = control_character(uid)
    if bad is None:
        return
    if derived:
        raise _fail(path, line, "path", f"the utterance id {uid!r} derived from the path (the row gives no id) "
                    f"holds the control character {bad!r}", "Give the row an 'id' without line breaks, tabs or "
                    "other control characters, or rename the file.")
    raise _fail(path, line, "id", f"utterance id {uid!r} holds the control character {bad!r} (a line break, tab "
                "or the like)", "Write the id without line breaks, tabs or other control characters (a quoted "
                "cell may span lines).")


def _check_label_spellings(path: Path, rows: list[dict[str, str]]) -> None:
    """Labels that differ only in case ('Angry', 'angry') or leading zeros ('01', '1') would become
    separate classes."""
    first: dict[str, dict[str, str]] = {}  # spelling_key of a label -> spelling -> first line
    for row in rows:
        first.setdefault(spelling_key(row["label"]), {}).setdefault(row["label"], row["_line"])
    for spellings in first.values():
        if len(spellings) > 1:
            listed = ", ".join(f"{label!r} (line {line})" for label, line in spellings.items())
            raise _fail(path, None, "label", f"labels differ only in {variants_differ([list(spellings)])}: {listed}; "
                        f"each spelling would be a class of its own", "Write every label of one class the same way.")
