"""Reading CSV files as people make them: UTF-8 (with or without BOM) or Windows-1252 from Excel,
separated by ',' or ';'. Rows are read one at a time, so a file of any size takes little memory.
Writing CSV for spreadsheets, with formulas neutralised (:func:`csv_text`).
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import MAX_LISTED, InputError, RowProblem

CHUNK = 1 << 20

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a cell as a formula (OWASP, CSV injection)."""


def neutralised(value: str) -> str:
    r"""``value`` as a cell spreadsheets show as text: with a ``'`` in front if it starts with a
    :data:`FORMULA_STARTS` character, OWASP's rule. A value that already starts with ``'``\s
    before such a character gets one more, so that :func:`restored` gives back every value."""
    return "'" + value if value.lstrip("'").startswith(FORMULA_STARTS) else value


def restored(value: str) -> str:
    r"""The value a cell written by :func:`neutralised` had: one ``'`` before a formula character
    (after any further ``'``\s) is dropped. A ``'`` before anything else is kept."""
    if value.startswith("'") and value[1:].lstrip("'").startswith(FORMULA_STARTS):
        return value[1:]
    return value


def csv_text(rows: Iterable[Sequence[str]], *, excel: bool = False) -> str:
    """Rows as CSV text, every cell :func:`neutralised`: ``,``-separated UTF-8 lines, or with
    ``excel``, the form German Excel opens with a double click: ``;``-separated, CRLF lines,
    starting with a byte order mark (without it Excel reads the file as Windows-1252)."""
    out = io.StringIO()
    if excel:
        out.write("\ufeff")
    writer = csv.writer(
        out, delimiter=";" if excel else ",", lineterminator="\r\n" if excel else "\n"
    )
    writer.writerows([neutralised(cell) for cell in row] for row in rows)
    return out.getvalue()


class CsvTable:
    """An open CSV file: its header, and its rows as iterating reads them, in order, as
    ``(line, row)`` (line numbers count lines of the file, from 1 for the header; a quoted field
    may span lines), or a :class:`RowProblem` for a row with the wrong number of fields. Blank
    rows are skipped. Iterate once."""

    def __init__(self, path: str, lines: Iterator[str], delimiter: str, encoding: str) -> None:
        self.path = path
        self.delimiter = delimiter
        self.encoding = encoding
        self._reader = csv.reader(lines, delimiter=delimiter, strict=True)
        try:
            header = next(self._reader, None)
        except csv.Error as exc:
            raise InputError(path, [RowProblem(1, "-", f"kein gültiges CSV: {exc}")]) from exc
        if header is None:
            raise InputError(path, [RowProblem(1, "-", "die Datei ist leer")])
        self.header = [h.strip().lower() for h in header]

    def __iter__(self) -> Iterator[tuple[int, dict[str, str]] | RowProblem]:
        start = self._reader.line_num + 1  # the line the next record starts on
        width = len(self.header)
        try:
            for record in self._reader:
                line, start = start, self._reader.line_num + 1
                if not any(field.strip() for field in record):
                    continue  # blank lines, as Excel leaves them at the end
                if len(record) != width:
                    yield RowProblem(line, "-", f"{len(record)} Felder statt {width}")
                    continue
                cells = zip(self.header, record, strict=True)
                yield line, {h: restored(v).strip() for h, v in cells}
        except csv.Error as exc:
            problem = RowProblem(start, "-", f"kein gültiges CSV: {exc}")
            raise InputError(self.path, [problem]) from exc
        except (OSError, UnicodeDecodeError) as exc:  # changed or damaged while being read
            problem = RowProblem(start, "-", f"Datei nicht lesbar: {exc}")
            raise InputError(self.path, [problem]) from exc


def _encoding(data: BinaryIO) -> str:
    """UTF-8 if the whole file decodes as UTF-8, else Windows-1252 (Excel's "CSV
    (Trennzeichen-getrennt)" on German Windows). Reads the file in chunks and rewinds it."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        while chunk := data.read(CHUNK):
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "cp1252"
    finally:
        data.seek(0)
    return "utf-8"


@contextmanager
def read_csv(path: Path, required: list[str], optional: tuple[str, ...] = ()) -> Iterator[CsvTable]:
    """Open a CSV file whose header must hold ``required`` columns (any order) and give its
    rows as they are read.

    Raises :class:`InputError` for an unreadable or empty file, a missing or unknown column,
    and (while iterating) for a file that is not valid CSV.
    """
    shown = str(path)
    try:
        data = path.open("rb")
    except OSError as exc:
        raise InputError(shown, [], f"{shown}: Datei nicht lesbar: {exc.strerror}") from exc
    with data:
        try:
            encoding = _encoding(data)
        except OSError as exc:
            raise InputError(shown, [], f"{shown}: Datei nicht lesbar: {exc.strerror}") from exc
        text = io.TextIOWrapper(
            data,
            encoding="utf-8-sig" if encoding == "utf-8" else encoding,
            errors="strict" if encoding == "utf-8" else "replace",
            newline="",
        )
        first_line = text.readline()
        delimiter = ";" if first_line.count(";") > first_line.count(",") else ","
        table = CsvTable(shown, itertools.chain([first_line], text), delimiter, encoding)
        problems = [RowProblem(1, c, "Spalte fehlt") for c in required if c not in table.header]
        allowed = set(required) | set(optional)
        problems += [
            RowProblem(1, c, "unbekannte Spalte") for c in table.header if c and c not in allowed
        ]
        if problems:
            raise InputError(shown, problems)
        yield table


class Problems:
    """The problems found in a file, in the order found: the first :data:`MAX_LISTED` are kept,
    the others only counted."""

    def __init__(self) -> None:
        self.listed: list[RowProblem] = []
        self.count = 0

    def add(self, problem: RowProblem) -> None:
        self.count += 1
        if len(self.listed) < MAX_LISTED:
            self.listed.append(problem)

    def __len__(self) -> int:
        return self.count

    def raise_if_any(self, path: str) -> None:
        """Raises :class:`InputError` listing the problems, if there are any."""
        if self.count:
            raise InputError(path, self.listed, total=self.count)


class FirstLines:
    """The line on which each key (an address …) first appeared in a file, for finding
    duplicates. Kept in a temporary SQLite file that is deleted on close, so memory stays flat
    however many rows a file has (a dict of 500,000 addresses takes some 75 MB)."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("")  # "": a private temporary file
        self._db.execute("CREATE TABLE seen (key TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID")

    def __enter__(self) -> FirstLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self._db.close()

    def note(self, key: str, line: int) -> int | None:
        """Remember ``key`` at ``line``; returns the earlier line if it was seen before."""
        cursor = self._db.execute(
            "INSERT INTO seen VALUES (?, ?) ON CONFLICT DO NOTHING", (key, line)
        )
        if cursor.rowcount:
            return None
        with closing(self._db.execute("SELECT line FROM seen WHERE key = ?", (key,))) as found:
            first: int = found.fetchone()[0]
        return first
