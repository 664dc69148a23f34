"""End to end: `notifier announce` → `notifier run` → a real SMTP server's inbox."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import time
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo

from notifier.clock import utcnow
from notifier.db import Database
from notifier.scheduling import Scheduler

from .conftest import Project

BERLIN = ZoneInfo("Europe/Berlin")

SUBSCRIBERS = """email,name,role,organisation,topics,rhythm
kreis.staff@kreis.example,Karin Kreis,staff,07232,,immediate
vg.mayor@vg-pruem.example,Thomas Becker,mayor,Verbandsgemeinde Prüm,,immediate
og.mayor@og-schoenecken.example,Josef Thiel,mayor,Schönecken,eifelleben,immediate
og.deputy@og-pruem.example,Maria Lenz,deputy_mayor,Prüm,mobilitaet,immediate
bitburg.mayor@bitburg.example,Peter Meyer,mayor,Bitburg,,immediate
arzfeld.mayor@og-arzfeld.example,Jürgen Größ,mayor,Arzfeld,eifelleben,immediate
"""


def announcement(
    send_at: str, *, subject: str = "Digitale Kümmerer: Sprechstunden in Prüm", extra: str = ""
) -> str:
    return f'''+++
subject = "{subject}"
topics = ["eifelleben"]
scope = ["Verbandsgemeinde Prüm"]
roles = ["mayor", "deputy_mayor"]
send_at = "{send_at}"
{extra}
+++
Die **Digitalen Kümmerer** bieten neue Sprechstunden an:

- Prüm, Rathaus: dienstags 10–12 Uhr
- Schönecken, Bürgerhaus: donnerstags 15–17 Uhr

Mehr unter <https://www.eifelkreis-verbindet.de/> & bei <b>uns</b>.
'''


def local_iso(delta: timedelta) -> str:
    return (datetime.now(BERLIN) + delta).strftime("%Y-%m-%dT%H:%M:%S")


def outbox_states(project: Project) -> list[tuple[str, str]]:
    with sqlite3.connect(project.root / "var" / "test.db") as db:
        return db.execute(
            "SELECT s.email, o.state FROM outbox o JOIN subscribers s ON s.id = o.subscriber_id "
            "ORDER BY s.email"
        ).fetchall()


def test_scheduled_announcement_reaches_exactly_the_audience(project: Project, service) -> None:
    project.seed(project.write("people.csv", SUBSCRIBERS))
    send_at = datetime.now(BERLIN).replace(microsecond=0) + timedelta(seconds=4)
    file = project.write("a.md", announcement(send_at.strftime("%Y-%m-%dT%H:%M:%S")))
    running = service()

    result = project.cli("announce", file)
    # Topic eifelleben (or all topics), inside VG Prüm, mayors and deputies:
    # the VG's mayor (all topics) and Schönecken's mayor; not Prüm's deputy (mobilität only),
    # not the Kreis staff (role), not Bitburg (scope), not Arzfeld (scope).
    assert "Empfänger: 2" in result.output
    assert "Verbandsgemeinde 1, Ortsgemeinde 1" in result.output
    assert "Bürgermeister/innen 2" in result.output

    messages = project.smtp.wait_for(2)
    time.sleep(1)  # nothing more may arrive
    messages = project.smtp.messages()
    assert sorted(r for m in messages for r in m.rcpt_tos) == [
        "og.mayor@og-schoenecken.example",
        "vg.mayor@vg-pruem.example",
    ]
    first_arrival = min(m.at for m in messages)
    assert first_arrival >= send_at.timestamp() - 0.01, "sent before its time"
    assert first_arrival - send_at.timestamp() < 5

    msg = next(m for m in messages if m.rcpt_tos == ["og.mayor@og-schoenecken.example"]).message
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["Subject"] == "Digitale Kümmerer: Sprechstunden in Prüm"
    assert msg["From"].addresses[0].display_name == "EIFELKREIS VERBINDET"
    assert msg["From"].addresses[0].addr_spec == "newsletter@eifelkreis-verbindet.example"
    assert msg["To"].addresses[0].display_name == "Josef Thiel"
    assert msg["Reply-To"] == "projektbuero@eifelkreis-verbindet.example"
    assert re.fullmatch(r"<[\w.]+@eifelkreis-verbindet\.example>", msg["Message-ID"])
    assert msg["List-Id"] == "EIFELKREIS VERBINDET <newsletter.eifelkreis-verbindet.example>"
    assert abs(parsedate_to_datetime(msg["Date"]).timestamp() - first_arrival) < 5
    raw_headers = messages[0].data.split(b"\r\n\r\n", 1)[0]
    assert b"=?utf-8?" in raw_headers.lower(), "umlaut subject must be encoded"

    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "Guten Tag Josef Thiel," in text
    weekday = ["Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag"]
    assert f"{weekday[send_at.weekday()]}, {send_at.day}. " in text
    assert "Schönecken, Bürgerhaus" in text and "Schönecken, Bürgerhaus" in html
    assert "<strong>Digitalen Kümmerer</strong>" in html
    assert "<b>uns</b>" not in html and "&lt;b&gt;uns&lt;/b&gt;" in html  # raw HTML is escaped
    assert "Impressum" in text and "https://www.eifelkreis-verbindet.de/impressum/" in html
    assert "für Schönecken zum Thema Eifelleben" in text
    assert 'style="' in html and "<style" not in html  # CSS inlined
    assert 'lang="de"' in html

    assert outbox_states(project) == [
        ("og.mayor@og-schoenecken.example", "sent"),
        ("vg.mayor@vg-pruem.example", "sent"),
    ]
    assert running.stop() == 0
    listing = project.cli("announcements", "list").output
    assert "versendet" in listing and "versandt 2" in listing


async def test_item_is_routed_at_its_send_time_not_at_the_next_check(project: Project) -> None:
    # Checks every 30 s: the check at the start sees the item due in 4 s and times it.
    project.write_config({"scheduler": {"poll_seconds": 30}})
    project.seed(project.write("people.csv", SUBSCRIBERS))
    send_at = datetime.now(BERLIN).replace(microsecond=0) + timedelta(seconds=4)
    project.cli("announce", project.write("a.md", announcement(send_at.isoformat()[:19])))
    released = asyncio.Event()
    async with Database(project.settings.database_url) as db:
        scheduler = Scheduler(db, project.settings, utcnow, released.set)
        scheduler.start()
        try:
            await asyncio.wait_for(released.wait(), 15)
        finally:
            await scheduler.aclose()
    late = time.time() - send_at.timestamp()
    assert 0 <= late < 0.5, f"routed {late:.2f} s after its send time"


def test_cancelled_announcement_sends_nothing(project: Project, service) -> None:
    project.seed(project.write("people.csv", SUBSCRIBERS))
    # The service runs before the announcement exists, so the time between scheduling and
    # cancelling is two in-process commands, not a process start (slow on a loaded machine).
    service()
    send_at = datetime.now(BERLIN).replace(microsecond=0) + timedelta(seconds=5)
    file = project.write("a.md", announcement(send_at.strftime("%Y-%m-%dT%H:%M:%S")))
    assert "Geplant als Mitteilung Nr. 1" in project.cli("announce", file).output
    assert "abgesagt" in project.cli("announcements", "cancel", "1").output
    assert time.time() < send_at.timestamp(), "cancelled only after the send time"
    time.sleep(send_at.timestamp() + 2.5 - time.time())
    assert project.smtp.messages() == []
    assert outbox_states(project) == []
    again = project.cli("announcements", "cancel", "1", ok=False)
    assert again.exit_code == 1 and "schon abgesagt" in again.output
    missing = project.cli("announcements", "cancel", "99", ok=False)
    assert missing.exit_code == 1 and "keine Mitteilung" in missing.output


def test_missed_send_time_goes_out_once_after_restart(project: Project, service) -> None:
    project.seed(project.write("people.csv", SUBSCRIBERS))
    # Scheduled while the service is down; its time passes before the service starts.
    project.cli("announce", project.write("a.md", announcement(local_iso(timedelta(seconds=1)))))
    time.sleep(1.5)
    first = service()
    project.smtp.wait_for(2)
    assert first.stop() == 0
    second = service()
    time.sleep(2)
    assert second.stop() == 0
    assert len(project.smtp.messages()) == 2
    assert [s for _, s in outbox_states(project)] == ["sent", "sent"]


def test_sigterm_returns_what_was_not_sent_and_exits_quickly(project: Project, service) -> None:
    rows = ["email,name,role,organisation,topics,rhythm"]
    rows += [
        f"p{i}@vg-pruem.example,P {i},mayor,Verbandsgemeinde Prüm,,immediate" for i in range(300)
    ]
    project.seed(project.write("many.csv", "\n".join(rows) + "\n"))
    project.smtp.delay = 0.05  # slow: most messages are still waiting at the stop
    project.cli("announce", project.write("a.md", announcement("now")))
    running = service()
    project.smtp.wait_for(20)
    started = time.monotonic()
    assert running.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert "notifier stopped" in running.output
    states = [s for _, s in outbox_states(project)]
    assert "sending" not in states
    received = len(project.smtp.messages())
    assert states.count("sent") == received
    assert states.count("queued") == 300 - received


def test_catcher_stores_and_shows_messages(project: Project, service) -> None:
    project.write_config({"smtp": {"catcher": True}})
    project.seed(project.write("people.csv", SUBSCRIBERS))
    project.cli("announce", project.write("a.md", announcement("now")))
    running = service()
    deadline = time.monotonic() + 20
    while "og.mayor" not in (listing := project.cli("mails").output) or "vg.mayor" not in listing:
        assert time.monotonic() < deadline, listing
        time.sleep(0.2)
    assert running.stop() == 0
    assert "Digitale Kümmerer: Sprechstunden in Prüm" in listing
    number = re.search(r"^\s*(\d+)\s", listing, re.M)
    assert number
    shown = project.cli("mails", "show", number.group(1)).output
    assert "Subject: Digitale Kümmerer: Sprechstunden in Prüm" in shown
    assert "Guten Tag" in shown and "Impressum" in shown
    raw = project.cli("mails", "show", "--raw", number.group(1)).output
    assert "Content-Type: multipart/alternative" in raw
    assert project.smtp.messages() == []  # nothing went to a real server
    assert project.cli("mails", "show", "999", ok=False).exit_code == 1
