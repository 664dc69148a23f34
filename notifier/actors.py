"""Who did something, as people read it: the audit log, the items and the subscribers keep an
actor string (``office:buero``, ``api:crm``, ``cli:root``, ``web``, ``source:Pressemeldungen``,
``retention`` …); pages show it by :func:`actor_label`."""

from __future__ import annotations

import re

# The actors that are the service itself or the person concerned, in German.
_FIXED = {
    "web": "die Person selbst (Website)",
    "bounces": "System (Bounce-Verarbeitung)",
    "retention": "System (Löschfristen)",
    "delivery": "System (Versand)",
    "doctor": "System (Prüfung)",
    "scheduler": "System (Planer)",
    "cli": "Kommandozeile",
}
# A kind of actor with a name after the colon.
_NAMED = {
    "office": "{}",
    "api": "API ({})",
    "cli": "Kommandozeile ({})",
    "source": "Quelle {}",
}
# An import names its file after the actor: "office:buero (liste.csv)".
_WITH_FILE = re.compile(r"^(?P<actor>\S+) \((?P<file>.+)\)$")


def actor_label(actor: str | None) -> str:
    """``actor`` as people read it: an office user by their name, the API, the command line,
    a source or the service itself in German; an unknown actor string as it is."""
    if not actor:
        return "unbekannt"
    with_file = _WITH_FILE.match(actor)
    if with_file:
        who = actor_label(with_file.group("actor"))
        return f"{who}, Import aus {with_file.group('file')}"
    if actor in _FIXED:
        return _FIXED[actor]
    kind, colon, name = actor.partition(":")
    if colon and name and kind in _NAMED:
        return _NAMED[kind].format(name)
    return actor
