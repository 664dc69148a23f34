"""Starlette's English answers to broken or oversized forms, in German.

Starlette raises them as ``HTTPException(400, detail=…)`` while it parses a form (before any
handler of ours runs); the error page and the JSON API show these German sentences instead. A
message not listed keeps a general German sentence, never the English text."""

from __future__ import annotations

import re

_GENERAL = "Das Formular konnte nicht gelesen werden. Bitte laden Sie die Seite neu."
# Starlette 0.4x/0.5x (starlette/formparsers.py), first match wins.
_MESSAGES = (
    (
        re.compile(r"(?:Field|Part) exceeded maximum size of (\d+)KB\."),
        "Ein Feld des Formulars ist zu groß (höchstens {0} KB je Feld).",
    ),
    (
        re.compile(r"Too many fields\. Maximum number of fields is (\d+)\."),
        "Das Formular hat zu viele Felder (höchstens {0}).",
    ),
    (
        re.compile(r"Too many files\. Maximum number of files is (\d+)\."),
        "Das Formular enthält zu viele Dateien (höchstens {0}).",
    ),
    (re.compile(r"Missing boundary in multipart\."), _GENERAL),
    (re.compile(r"Invalid multipart data\."), _GENERAL),
    (re.compile(r'The Content-Disposition header field "name" must be provided\.'), _GENERAL),
)


def german_detail(detail: str) -> str:
    """The German sentence for one of Starlette's form messages; other text unchanged."""
    for pattern, german in _MESSAGES:
        found = pattern.fullmatch(detail.strip())
        if found:
            return german.format(*found.groups())
    return detail
