"""Who did something reads as a name on the office's pages and the person's own data page, not
as the stored actor string ("office:buero", "cli:root (liste.csv)")."""

from __future__ import annotations

import getpass
import re
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from notifier.actors import actor_label

from .conftest import EXAMPLE, Project, Web

USER, PASSWORD = "buero", "ein-langes-passwort"


def test_announcements_and_subscribers_show_their_authors_by_name(
    web: Callable[..., Web], project: Project
) -> None:
    site = web()
    project.cli("users", "add", USER, "--password", PASSWORD)
    token = site.csrf("/buero/anmelden")
    login = site.client.post(
        "/buero/anmelden", data={"name": USER, "password": PASSWORD, "csrf_token": token}
    )
    assert login.status_code == 303, login.text

    later = (datetime.now(ZoneInfo("Europe/Berlin")) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    form = "/buero/mitteilungen/neu"
    scheduled = site.client.post(
        form,
        data={
            "subject": "Sprechstunden der Kümmerer",
            "body": "Ab Montag auch in Prüm.",
            "topics": ["mobilitaet"],
            "send_at": later,
            "action": "planen",
            "csrf_token": site.csrf(form),
        },
    )
    assert scheduled.status_code == 303, scheduled.text
    detail = site.client.get(scheduled.headers["location"])
    assert re.search(r"<dt>Geschrieben von</dt><dd>buero am \w", detail.text), detail.text
    assert "office:" not in detail.text

    # A subscriber from the import of `notifier subscribers import` (project.seed()).
    with sqlite3.connect(project.root / "var" / "test.db") as db:
        (sub_id, stored) = db.execute("SELECT id, actor FROM subscribers ORDER BY id").fetchone()
    assert stored == f"cli:{getpass.getuser()} ({EXAMPLE.name})"
    page = site.client.get(f"/buero/abonnenten/{sub_id}")
    assert page.status_code == 200
    label = f"Kommandozeile ({getpass.getuser()}), Import aus {EXAMPLE.name}"
    assert f'<dd id="eingetragen-durch">{label}</dd>' in page.text
    assert "cli:" not in page.text


@pytest.mark.parametrize(
    ("actor", "label"),
    [
        ("office:buero", "buero"),
        ("office:Anna Schmitz", "Anna Schmitz"),
        ("api:kreis-crm", "API (kreis-crm)"),
        ("cli:root", "Kommandozeile (root)"),
        ("cli", "Kommandozeile"),
        ("cli:root (abonnenten.csv)", "Kommandozeile (root), Import aus abonnenten.csv"),
        ("office:buero (liste 2.csv)", "buero, Import aus liste 2.csv"),
        ("web", "die Person selbst (Website)"),
        ("bounces", "System (Bounce-Verarbeitung)"),
        ("retention", "System (Löschfristen)"),
        ("delivery", "System (Versand)"),
        ("source:Pressemeldungen", "Quelle Pressemeldungen"),
        ("", "unbekannt"),
        (None, "unbekannt"),
        ("etwas:anderes", "etwas:anderes"),
    ],
)
def test_actors_read_as_names(actor: str | None, label: str) -> None:
    assert actor_label(actor) == label
