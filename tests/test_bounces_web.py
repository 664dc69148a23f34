"""The office's Bounces page in a real browser, against a real ``notifier run``: a DSN sent to
the service's bounce listener suppresses the address; the page lists it (latest, by domain, per
address) and un-suppresses it with a reason (CSRF, audited); the announcement page counts the
bounce; every state passes axe-core."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from notifier.db import Database
from notifier.db.models import AuditEntry, Subscriber, SubscriberStatus

from . import bouncemail
from .browser import assert_accessible, browser_page
from .conftest import Project, Web, free_port, run_coroutine

__all__ = ["browser_page"]

USER, PASSWORD = "buero", "ein-langes-passwort"
NOTE = '+++\nsubject = "Hinweis"\nsend_at = "now"\n+++\nText.\n'


def _status_of(project: Project, email: str) -> tuple[SubscriberStatus, list[dict[str, Any]]]:
    async def read() -> tuple[SubscriberStatus, list[dict[str, Any]]]:
        async with Database(project.settings.database_url) as db, db.reading() as session:
            sub = (await session.scalars(select(Subscriber).where(Subscriber.email == email))).one()
            audit = await session.scalars(
                select(AuditEntry).where(
                    AuditEntry.entity_id == str(sub.id), AuditEntry.entity == "subscriber"
                )
            )
            return sub.status, [{"action": a.action, "actor": a.actor, **a.details} for a in audit]

    return run_coroutine(read)


def test_bounces_page_lists_and_unsuppresses(
    web: Callable[..., Web], project: Project, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    port = free_port()
    site = web(
        {
            "bounces": {
                "return_path": "bounces+{token}@eifelkreis-verbindet.example",
                "listen": f"127.0.0.1:{port}",
            },
            "delivery": {"suppress_after_hard_failures": 1},
        }
    )
    site.running.wait_for_line(f"bounce listener on 127.0.0.1:{port}")
    project.cli("users", "add", USER, "--password", PASSWORD)
    project.cli("announce", project.write("a.md", NOTE))
    sent = project.smtp.wait_for(1)[0]
    email = sent.rcpt_tos[0]
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail(
            "",
            [sent.mail_from],
            bouncemail.dsn(sent.mail_from, email, "5.1.1", str(sent.message["Message-ID"])),
        )
    deadline = time.monotonic() + 10
    while _status_of(project, email)[0] is not SubscriberStatus.suppressed:
        assert time.monotonic() < deadline, site.running.output[-3000:]
        time.sleep(0.1)

    page = browser_page
    page.goto(site.url("/buero"))
    page.get_by_label("Benutzername").fill(USER)
    page.get_by_label("Passwort").fill(PASSWORD)
    page.get_by_role("button", name="Anmelden").click()
    page.get_by_role("link", name="Bounces", exact=True).click()
    expect(page.get_by_role("heading", name="Bounces und Beschwerden")).to_be_visible()
    latest = page.get_by_role("table", name="Neueste Bounces")
    expect(latest).to_contain_text("harter Fehler")
    expect(latest).to_contain_text("5.1.1")
    expect(page.get_by_role("table", name="Nach Domain (letzte 30 Tage)")).to_contain_text(
        email.rpartition("@")[2]
    )
    assert_accessible(page, "Bounces")

    # Per address, also from the person's page.
    page.get_by_label("Adresse", exact=True).fill(email)
    page.get_by_role("button", name="Anzeigen").click()
    expect(page.get_by_role("heading", name=f"Bounces von {email}")).to_be_visible()
    page.goto(site.url("/buero/abonnenten?status=suppressed"))
    page.get_by_role("link", name=email).click()
    page.get_by_role("link", name="Bounces dieser Adresse ansehen").click()
    expect(page.get_by_role("heading", name=f"Bounces von {email}")).to_be_visible()

    # A reason is required (blanks are no reason).
    reason = page.get_by_label(f"Grund für {email}")
    reason.fill("   ")
    page.get_by_role("button", name="Wieder aktivieren").click()
    expect(page.get_by_text("Bitte geben Sie einen Grund an")).to_be_visible()
    assert_accessible(page, "Bounces mit Fehler")
    assert _status_of(project, email)[0] is SubscriberStatus.suppressed

    page.get_by_label(f"Grund für {email}").fill("Postfach laut Telefonat wieder eingerichtet")
    page.get_by_role("button", name="Wieder aktivieren").click()
    expect(page.get_by_role("status")).to_contain_text(f"{email} ist wieder aktiv.")
    expect(page.get_by_text("Keine Adresse ist gesperrt.")).to_be_visible()
    assert_accessible(page, "Bounces nach dem Entsperren")
    status, audit = _status_of(project, email)
    assert status is SubscriberStatus.active
    assert {
        "action": "subscriber.unsuppressed",
        "actor": f"office:{USER}",
        "reason": "Postfach laut Telefonat wieder eingerichtet",
    } in audit
    assert any(a["action"] == "subscriber.suppressed" and a["actor"] == "bounces" for a in audit)

    # Logged in, but without the session's CSRF token: refused, nothing changes.
    token = site.csrf("/buero/anmelden")
    site.client.post(
        "/buero/anmelden", data={"name": USER, "password": PASSWORD, "csrf_token": token}
    )
    for extra in ({}, {"csrf_token": "falsch"}):
        refused = site.client.post(
            "/buero/bounces/entsperren/1", data={"reason": "ohne Token", **extra}
        )
        assert refused.status_code == 403
    assert len(_status_of(project, email)[1]) == len(audit)

    # The announcement's page counts what came back.
    page.goto(site.url("/buero/mitteilungen/1"))
    expect(page.get_by_role("list", name="Zurückgekommen")).to_contain_text("1 harter Fehler")
    assert_accessible(page, "Mitteilung mit Bounces")
