"""Reading CSV files as people make them: UTF-8 (with or without BOM) or Windows-1252 from Excel,
separated by ',' or ';'."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, RowProblem


@dataclass(frozen=True)
class CsvTable:
    path: str
    header: list[str]
    rows: list[tuple[int, dict[str, str]]]  # (line number in the file, row)
    encoding: str
    delimiter: str
    # Rows with the wrong number of fields: left out of ``rows`` and reported here, so the
    # caller lists them together with the problems it finds in the other rows.
    problems: list[RowProblem]


def read_csv(path: Path, required: list[str], optional: tuple[str, ...] = ()) -> CsvTable:
    """Read a whole CSV file whose header must hold ``required`` columns (any order).

    Raises :class:`InputError` for an unreadable file or a missing or unknown column; rows with
    the wrong number of fields are returned in ``problems``.
    """
    shown = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(shown, [], f"{shown}: Datei nicht lesbar: {exc.strerror}") from exc
    try:
        text, encoding = data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        # Excel's "CSV (Trennzeichen-getrennt)" on German Windows writes Windows-1252.
        text, encoding = data.decode("cp1252", errors="replace"), "cp1252"
    first_line = text.split("\n", 1)[0]
    delimiter = ";" if first_line.count(";") > first_line.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records: list[tuple[int, list[str]]] = []
    start = 1  # the line a record starts on; a quoted field may span lines
    try:
        for record in reader:
            records.append((start, record))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise InputError(shown, [RowProblem(start, "-", f"kein gültiges CSV: {exc}")]) from exc
    if not records:
        raise InputError(shown, [RowProblem(1, "-", "die Datei ist leer")])
    header = [h.strip().lower() for h in records[0][1]]
    problems = [RowProblem(1, c, "Spalte fehlt") for c in required if c not in header]
    allowed = set(required) | set(optional)
    problems += [RowProblem(1, c, "unbekannte Spalte") for c in header if c and c not in allowed]
    if problems:
        raise InputError(shown, problems)
    rows: list[tuple[int, dict[str, str]]] = []
    for number, record in records[1:]:
        if not any(field.strip() for field in record):
            continue  # blank lines, as Excel leaves them at the end
        if len(record) != len(header):
            problems.append(RowProblem(number, "-", f"{len(record)} Felder statt {len(header)}"))
            continue
        rows.append((number, {h: v.strip() for h, v in zip(header, record, strict=True)}))
    return CsvTable(shown, header, rows, encoding, delimiter, problems)
