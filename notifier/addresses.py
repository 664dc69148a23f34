"""E-mail addresses: checked and normalised where they come in, shown as people read them.

An address is stored in one form: ASCII and lower case, its domain IDNA-encoded
(``info@xn--brgermeister-dlb.de``). The part before the @ must be ASCII: notifier does not use
SMTPUTF8 (RFC 6531), so a message to ``jürgen@…`` could never be sent, and such an address is
refused wherever it comes in (CSV import, sign-up, the office's forms, the API, the CLI).
Domains may be international; people see them in Unicode (:func:`display_email`).
"""

from __future__ import annotations

import re
import unicodedata

import idna
from email_validator import EmailNotValidError, validate_email

from .errors import FieldError, NotifierError

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]")
_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})
_INVALID = "Keine gültige E-Mail-Adresse"
# email_validator's English reasons (2.x) and what people read instead, first match wins. A
# reason not listed here gets the general sentence, never the English text.
_REASONS = (
    ("must have an @-sign", "das @-Zeichen fehlt"),
    ("instead of a regular at-sign", "statt des @ steht ein ähnliches Zeichen"),
    ("something before the @-sign", "vor dem @ steht nichts"),
    ("something after the @-sign", "nach dem @ fehlt die Domain (z. B. @bitburg-pruem.de)"),
    ("display name", "bitte nur die Adresse angeben, ohne Namen und spitze Klammern"),
    ("angle bracket", "bitte nur die Adresse angeben, ohne Namen und spitze Klammern"),
    ("anything after the email address", "nach der Adresse darf nichts folgen"),
    ("quot", "Anführungszeichen sind nicht möglich"),
    ("two periods in a row", "zwei Punkte hintereinander sind nicht möglich"),
    ("period immediately before the @-sign", "direkt vor dem @ darf kein Punkt stehen"),
    ("period immediately after the @-sign", "direkt nach dem @ darf kein Punkt stehen"),
    ("start with a period", "am Anfang darf kein Punkt stehen"),
    ("end with a period", "am Ende darf kein Punkt stehen"),
    ("hyphen", "die Domain nach dem @ darf nicht mit einem Bindestrich beginnen oder enden"),
    ("two dashes", "die Domain nach dem @ ist ungültig"),
    ("so many characters", "ein Teil der Domain ist zu lang (höchstens 63 Zeichen je Teil)"),
    ("too long", "die Adresse ist zu lang"),
    ("should have a period", "die Domain nach dem @ braucht einen Punkt (z. B. @bitburg-pruem.de)"),
    ("top-level domain", "die Domain nach dem @ hat keine gültige Endung (wie .de)"),
    ("special-use or reserved", "die Domain nach dem @ ist reserviert und empfängt keine E-Mails"),
    ("bracket", "eine IP-Adresse nach dem @ ist nicht möglich"),
    ("before the @-sign", "vor dem @ stehen unzulässige Zeichen"),
    ("after the @-sign", "die Domain nach dem @ enthält unzulässige Zeichen"),
    ("character", "die Adresse enthält unzulässige Zeichen"),
)


class AddressError(NotifierError, ValueError):
    """An address was refused; the message is the German reason."""


def _german(exc: EmailNotValidError) -> str:
    english = str(exc)
    for phrase, reason in _REASONS:
        if phrase in english:
            return f"{_INVALID}: {reason}."
    return f"{_INVALID}."


def _not_ascii(local: str, domain: str) -> str:
    chars = ", ".join(dict.fromkeys(c for c in local if not c.isascii()))
    plain = unicodedata.normalize("NFKD", local.lower().translate(_UMLAUTS))
    plain = "".join(c for c in plain if not unicodedata.combining(c))
    example = f", z. B. {plain}@{domain.lower()}" if plain.isascii() and domain else ""
    return (
        f"Umlaute und andere Sonderzeichen sind vor dem @ nicht möglich ({chars}); "
        f"bitte eine Adresse ohne Umlaute verwenden{example}."
    )


def normalise_email(value: str) -> str:
    """Check an address and return its stored form: ASCII, lower case, IDNA domain.

    Raises :class:`AddressError` with the German reason: syntax errors, line breaks, and any
    character outside ASCII before the @.
    """
    if _CONTROL.search(value):
        raise AddressError(
            "Die E-Mail-Adresse darf keine Zeilenumbrüche oder Steuerzeichen enthalten."
        )
    text = value.strip()
    if not text:
        raise AddressError("Bitte eine E-Mail-Adresse angeben.")
    local, at, domain = text.partition("@")
    if at and not local.isascii():
        raise AddressError(_not_ascii(local, domain))
    try:
        result = validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise AddressError(_german(exc)) from exc
    return (result.ascii_email or result.normalized).lower()


def check_email(field: str, value: str) -> str:
    """:func:`normalise_email` for an input field; raises :class:`FieldError` naming it."""
    try:
        return normalise_email(value)
    except AddressError as exc:
        raise FieldError(field, str(exc)) from exc


def display_email(stored: str) -> str:
    """A stored address as people read it: an IDNA domain in Unicode
    (``info@bürgermeister.de``). Anything that does not decode is shown as stored."""
    local, at, domain = stored.rpartition("@")
    if not at or "xn--" not in domain:
        return stored
    try:
        return f"{local}@{idna.decode(domain)}"
    except (idna.IDNAError, UnicodeError):
        return stored
