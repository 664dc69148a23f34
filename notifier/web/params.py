"""Integer parameters that reach the database, bounded where they enter.

Python's ints have no limit, SQLite's INTEGER is 64-bit: a larger number in a path or query
string would raise ``OverflowError`` in the driver (a 500). Every route that takes a row id, an
offset or a page number uses these types instead of a bare ``int``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query
from pydantic import AfterValidator, BeforeValidator
from starlette.exceptions import HTTPException

DB_INT_MAX = 2**63 - 1
"""The largest value SQLite (and PostgreSQL's BIGINT) stores."""

LAST_PAGE = 10**9
"""Page numbers beyond this are read as this page (which is empty for any real list)."""

_DIGITS = 30  # longer strings are not parsed at all (int() of a huge string is slow)


def _row_id(value: Any) -> Any:
    # A number outside SQLite's range names no row: answered here with the 404 a missing row
    # gets, since the database cannot be asked. (Pydantic lets exceptions other than ValueError
    # pass, so the HTTPException reaches the app's handlers.) Anything that is not a number is
    # left to the int check, which answers 422.
    text = value.strip() if isinstance(value, str) else str(value)
    if not text.lstrip("+-").isdigit():
        return value
    if len(text) > _DIGITS or not -DB_INT_MAX - 1 <= int(text) <= DB_INT_MAX:
        shown = text if len(text) <= _DIGITS else text[:_DIGITS] + "…"
        raise HTTPException(404, f"Nr. {shown} gibt es nicht.")
    return value


def _page(number: int) -> int:
    return min(max(number, 1), LAST_PAGE)


RowId = Annotated[int, BeforeValidator(_row_id)]
"""A row id in a path: a number beyond the 64-bit range gives a 404, not an overflow."""

Offset = Annotated[int, Query(ge=0, le=DB_INT_MAX)]
"""An API list's offset: out of range is a 422 that names the field."""

PageNo = Annotated[int, AfterValidator(_page)]
"""An office page number (``seite``), clamped to 1 … :data:`LAST_PAGE`: a page past the end
shows an empty list, as for any page past the last."""
