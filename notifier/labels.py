"""German labels of roles, rhythms and states, shared by the command line and the web pages."""

from __future__ import annotations

from .db.models import ItemStatus, OutboxState, Rhythm, Role, SubscriberStatus

ROLE_LABELS = {
    Role.staff: "Mitarbeitende",
    Role.mayor: "Bürgermeister/innen",
    Role.deputy_mayor: "Beigeordnete",
    Role.council_member: "Ratsmitglieder",
    Role.project_office: "Projektbüro",
}
# One person's role, as a sign-up form asks for it.
ROLE_CHOICES = {
    Role.mayor: "Bürgermeister/in",
    Role.deputy_mayor: "Beigeordnete/r",
    Role.council_member: "Ratsmitglied",
    Role.staff: "Mitarbeiter/in der Verwaltung",
    Role.project_office: "Projektbüro",
}
STATE_LABELS = {
    OutboxState.queued: "wartend",
    OutboxState.sending: "im Versand",
    OutboxState.sent: "versandt",
    OutboxState.deferred: "zurückgestellt",
    OutboxState.failed: "fehlgeschlagen",
    OutboxState.cancelled: "abgesagt",
}
FINAL_STATES = (OutboxState.sent, OutboxState.failed, OutboxState.cancelled)
ITEM_LABELS = {
    ItemStatus.scheduled: "geplant",
    ItemStatus.routed: "versendet",
    ItemStatus.cancelled: "abgesagt",
    ItemStatus.recorded: "erfasst",
    ItemStatus.held: "zurückgehalten",
}
RHYTHM_LABELS = {
    Rhythm.immediate: "sofort (eine E-Mail je Nachricht)",
    Rhythm.daily: "täglich (ein Überblick pro Tag)",
    Rhythm.weekly: "wöchentlich (ein Überblick pro Woche)",
}
SUBSCRIBER_LABELS = {
    SubscriberStatus.active: "aktiv",
    SubscriberStatus.pending: "unbestätigt",
    SubscriberStatus.held: "wartet auf Freigabe",
    SubscriberStatus.paused: "pausiert",
    SubscriberStatus.unsubscribed: "abgemeldet",
    SubscriberStatus.suppressed: "gesperrt (unzustellbar)",
}


def smtp_state(reachable: bool, since: str, reason: str | None, waiting: int | None) -> str:
    """One sender's SMTP state as a German sentence (``since``: a date and time as shown)."""
    if reachable:
        return f"SMTP erreichbar seit {since}"
    text = f"SMTP nicht erreichbar seit {since}"
    if reason:
        text += f" ({reason})"
    if waiting is not None:
        text += f" – {waiting:,} Nachrichten warteten da".replace(",", ".")
    return text


BOUNCE_LABELS = {
    "hard": "harter Fehler",
    "soft": "weicher Fehler",
    "complaint": "Beschwerde",
    "unsubscribe": "Abmeldung per E-Mail",
    "ignored": "keine Fehlermeldung",
    "unparseable": "nicht auswertbar",
}
